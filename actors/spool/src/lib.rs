//! The agent's durable disk spool of records (DESIGN.md, "Data path and delivery
//! contract (v2)", point 2).
//!
//! Records are appended, made durable by a periodic [`Spool::sync`], read back for sending
//! with [`Spool::unacked`] and deleted only once the hub acked them with [`Spool::ack`]. A
//! reopen after a crash recovers every synced record, cuts (and counts) a torn tail and
//! never hands out a seq twice.
//!
//! ```
//! use herd_spool::{Spool, SpoolConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let (mut spool, recovery) = Spool::open(dir.path(), SpoolConfig::default())?;
//! assert_eq!(recovery.records, 0);
//!
//! let first = spool.append(b"cpu=0.42")?;
//! let second = spool.append(b"cpu=0.40")?;
//! assert!(spool.unacked(first, usize::MAX)?.is_empty()); // buffered, not durable yet
//! assert_eq!(spool.sync()?, second); // now a source may be told its records are safe
//!
//! let batch = spool.unacked(first, 64 * 1024)?;
//! assert_eq!(batch, vec![(first, b"cpu=0.42".to_vec()), (second, b"cpu=0.40".to_vec())]);
//! spool.ack(first)?; // the hub acked the first record
//! drop(spool);
//!
//! // After a restart (or a crash) only the unacked record is left, and seqs go on.
//! let (mut spool, recovery) = Spool::open(dir.path(), SpoolConfig::default())?;
//! assert_eq!(recovery.records, 1);
//! assert_eq!(spool.unacked(0, usize::MAX)?, vec![(second, b"cpu=0.40".to_vec())]);
//! assert!(spool.append(b"cpu=0.39")? > second);
//! println!("{}", herd_spool::verify(dir.path())?);
//! # Ok(())
//! # }
//! ```
//!
//! # Contract
//!
//! - **Seqs** start at 1 and strictly increase; the seq of a record that was ever durable
//!   (and so could have been read and sent) is never handed out again. Seqs of records
//!   lost in a crash before they became durable were never readable, so after the reopen
//!   they are handed out again: a receiver that saw only durable records sees no gap. The
//!   ledger reserves seqs in blocks of [`SpoolConfig::seq_reservation`], persisted before
//!   any seq of a block is handed out; if a block cannot be reserved (disk full),
//!   [`Spool::append`] fails with [`SpoolError::Ledger`] and assigns nothing.
//! - **Durability**: appends are buffered in memory (up to 64 KiB, then handed to the
//!   file) and become durable at [`Spool::sync`], which the owner calls when
//!   [`Spool::needs_sync`] says so ([`SpoolConfig::fsync_interval`]); closing a segment
//!   syncs it too. Only durable records are returned by [`Spool::unacked`], so nothing
//!   that a crash can lose is ever sent. A failed fsync poisons the spool
//!   ([`SpoolError::Poisoned`]): after one, the kernel's page state is unknown and only a
//!   reopen (which rescans the files) tells what is really on disk.
//! - **Acks** are cumulative and monotonic; the acked seq is persisted in the ledger before
//!   a fully acked segment is unlinked. The segment appends go to is kept even when fully
//!   acked, so its name keeps a lower bound for the next seq on disk.
//! - **Bounds**: segment files never exceed [`SpoolConfig::max_disk_bytes`] together. When
//!   a record does not fit, [`WhenFull::Block`] refuses it ([`SpoolError::Full`], nothing
//!   written) and [`WhenFull::DropOldest`] removes the oldest segments, counting their
//!   unacked records as dropped and moving the acked seq past them. Memory is bounded by
//!   the write buffer and a sparse index (one entry per 64 KiB of segment).
//! - **Recovery** never fails because of file contents: see [`Spool::open`]. Every cut
//!   and rebuild is logged with `tracing`, returned in [`Recovery`] and added to the
//!   persisted counters in [`SpoolStats`].
//! - **A full disk** (the kernel's `ENOSPC`, before `max_disk_bytes`) makes appends and
//!   syncs fail with [`SpoolError::Io`]; nothing beyond what reached the files is
//!   assigned or durable, and what did reach them is still made durable by the failing
//!   sync, so it can be sent and acked. Acks keep working: the ledger is then overwritten
//!   in place, in the blocks it has. Once a write has failed, the disk is taken to have
//!   less room than a segment: segments are closed at 64 KiB, and an active segment whose
//!   written frames are all acked is given up at once (its buffered frames move to a new
//!   one), so acks give the room back; this ends when the segment files grow to two
//!   segments again. Opening on a full disk works too: a ledger that cannot be rewritten
//!   keeps its old reservation.
//!
//! # On disk
//!
//! A spool directory holds:
//!
//! - `<first seq, 20 digits>.seg`: segment files, a sequence of frames. A frame is a
//!   24-byte little-endian header — payload length `u32`, crc32c `u32`, seq `u64`,
//!   creation time in ms since the Unix epoch `u64` — then the payload. The crc32c covers
//!   the seq, the time and the payload. A segment is closed when the next frame would take
//!   it over [`SpoolConfig::segment_bytes`]; its name is the seq its first record got.
//! - `ledger`: 72 bytes — magic `HERDSPLG`, version `u32`, then `u64`s next seq (the
//!   reservation), acked seq, dropped records and bytes, corrupt records and bytes, ledger
//!   rebuilds, and a crc32c `u32` of the rest. Replaced atomically (`ledger.tmp`, fsync,
//!   rename, directory fsync); on a full disk overwritten in place (one sector: a crash
//!   leaves the old or the new one, a torn sector fails the crc and is rebuilt).
//! - `lock`: an empty file holding an exclusive `flock` while a [`Spool`] is open.
//!
//! [`verify`] inspects a directory without changing it.

mod config;
mod error;
mod frame;
mod ledger;
mod spool;
mod verify;

pub use config::{
    DEFAULT_FSYNC_INTERVAL_MS, DEFAULT_MAX_DISK_BYTES, DEFAULT_SEGMENT_BYTES,
    DEFAULT_SEQ_RESERVATION, MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES, SpoolConfig, WhenFull,
};
pub use error::{ConfigError, SpoolError};
pub use frame::FrameProblem;
pub use ledger::LedgerError;
pub use spool::{Recovery, Spool, SpoolStats};
pub use verify::{CorruptFrame, LedgerStatus, LedgerSummary, SegmentReport, VerifyReport, verify};
