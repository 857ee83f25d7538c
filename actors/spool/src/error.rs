//! Errors of the spool.

use std::io;
use std::path::PathBuf;

use crate::frame::FrameProblem;

/// A [`SpoolConfig`](crate::SpoolConfig) value was zero or inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field that must be positive was zero.
    #[error("spool {0} must be greater than zero")]
    Zero(&'static str),
    /// `segment_bytes` was outside the accepted range.
    #[error(
        "spool segment_bytes {0} is outside {min}..={max}",
        min = crate::MIN_SEGMENT_BYTES,
        max = crate::MAX_SEGMENT_BYTES
    )]
    SegmentBytes(u64),
    /// `max_disk_bytes` cannot hold two segments.
    #[error(
        "spool max_disk_bytes {max_disk_bytes} must be at least twice segment_bytes {segment_bytes}"
    )]
    DiskBelowTwoSegments {
        /// The configured disk bound.
        max_disk_bytes: u64,
        /// The configured segment size.
        segment_bytes: u64,
    },
}

/// Why a spool operation failed.
///
/// Opening never fails because of what the spool files *contain* (that is cut, rebuilt and
/// counted); it fails only for a bad config, a directory already in use, or a real I/O
/// error such as a permission denied or a full disk.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The configuration was rejected by [`SpoolConfig::validate`](crate::SpoolConfig::validate).
    #[error("invalid spool configuration: {0}")]
    Config(#[from] ConfigError),
    /// A file system operation on a spool file failed.
    #[error("spool: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("open segment", "fsync segment", ...).
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The error from the operating system.
        #[source]
        source: io::Error,
    },
    /// The ledger could not be written (typically a full disk). No seq beyond the ones
    /// already reserved is handed out and no ack is persisted until it can be: the agent
    /// must stop accepting records and say so.
    #[error("spool: cannot write the ledger {}: {source}", path.display())]
    Ledger {
        /// The ledger's path.
        path: PathBuf,
        /// The error from the operating system.
        #[source]
        source: io::Error,
    },
    /// Another [`Spool`](crate::Spool) (in this or another process) has the directory open.
    #[error("spool directory {} is already in use by another spool", path.display())]
    Locked {
        /// The spool directory.
        path: PathBuf,
    },
    /// [`WhenFull::Block`](crate::WhenFull::Block): the record does not fit under
    /// `max_disk_bytes` until acks free space. Nothing was written and no seq assigned.
    #[error(
        "spool is full: a {needed}-byte frame does not fit ({disk_bytes} of {max_disk_bytes} bytes used)"
    )]
    Full {
        /// The frame size of the refused record (payload plus header).
        needed: u64,
        /// Bytes of segment files on disk.
        disk_bytes: u64,
        /// The configured bound.
        max_disk_bytes: u64,
    },
    /// The record cannot fit in one segment whatever the spool holds.
    #[error("record of {len} bytes exceeds the spool's largest record of {max} bytes")]
    RecordTooLarge {
        /// The payload length.
        len: usize,
        /// [`SpoolConfig::max_record_bytes`](crate::SpoolConfig::max_record_bytes).
        max: u64,
    },
    /// An ack named a seq that is not durable yet: records are only handed out for sending
    /// once durable, so the acker is confused. Nothing was changed.
    #[error("ack of seq {seq} is ahead of the durable seq {durable_seq}")]
    AckAhead {
        /// The acked seq.
        seq: u64,
        /// The highest durable seq.
        durable_seq: u64,
    },
    /// A record read back for sending failed its checksum (the file changed under the spool
    /// since it was opened). Reopening the spool cuts it.
    #[error("spool segment {} is corrupt at byte {offset}: {problem}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Where the bad frame starts.
        offset: u64,
        /// What is wrong with it.
        problem: FrameProblem,
    },
    /// An earlier fsync or write failed in a way that leaves the segment's state unknown
    /// (after a failed fsync the kernel may drop the dirty pages and report success on the
    /// next one). Appends and syncs are refused; reopen the spool to recover what is on disk.
    #[error("spool is poisoned by an earlier failed fsync or write; reopen it")]
    Poisoned,
}

impl SpoolError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| SpoolError::Io { op, path, source }
    }
}
