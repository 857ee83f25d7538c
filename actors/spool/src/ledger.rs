//! The ledger: the spool's few persistent numbers, written atomically.
//!
//! 72 bytes, little-endian: magic `HERDSPLG`, format version `u32` (1), then `u64`s
//! next_seq, acked_seq, dropped_records, dropped_bytes, corrupt_records, corrupt_bytes,
//! ledger_rebuilds, then a crc32c `u32` over everything before it. It is replaced by
//! writing `ledger.tmp`, fsyncing it, renaming it over `ledger` and fsyncing the
//! directory, so a reader sees the old or the new ledger, never a mix.
//!
//! On a full disk (`ENOSPC`, `EDQUOT`) the temporary file cannot get a block, and a spool
//! that cannot write its ledger cannot persist the acks that would free the disk. Then the
//! ledger is overwritten in place instead: 72 bytes at offset 0, inside one sector and one
//! page, in blocks the file already has, so a crash leaves the old or the new ledger, and
//! the checksum catches a sector torn by a power loss (the spool then rebuilds the ledger
//! from its segments and counts the rebuild).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

/// File name of the ledger inside the spool directory.
pub(crate) const LEDGER_FILE: &str = "ledger";
/// File name the next ledger is written to before it is renamed over the old one.
pub(crate) const LEDGER_TMP: &str = "ledger.tmp";
const MAGIC: &[u8; 8] = b"HERDSPLG";
const VERSION: u32 = 1;
const LEN: usize = 8 + 4 + 7 * 8 + 4;

/// Why a ledger file could not be used (it is then rebuilt from the segments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The file does not have the ledger's size.
    #[error("ledger has {0} bytes, expected {LEN}")]
    WrongLength(u64),
    /// The file does not start with the ledger magic.
    #[error("ledger has no HERDSPLG magic")]
    BadMagic,
    /// The ledger was written by a newer format.
    #[error("ledger format version {0} is not supported")]
    UnsupportedVersion(u32),
    /// The checksum does not match.
    #[error("ledger checksum mismatch")]
    CrcMismatch,
    /// The numbers contradict each other: seqs start at 1 and nothing at or above
    /// `next_seq` can have been acked.
    #[error("ledger is inconsistent: next seq {next_seq}, acked seq {acked_seq}")]
    Inconsistent {
        /// The stored next seq.
        next_seq: u64,
        /// The stored acked seq.
        acked_seq: u64,
    },
}

/// The persisted numbers. `next_seq` is a reservation: no seq at or above it has been
/// handed out, and every seq below it may have been.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ledger {
    pub(crate) next_seq: u64,
    pub(crate) acked_seq: u64,
    pub(crate) dropped_records: u64,
    pub(crate) dropped_bytes: u64,
    pub(crate) corrupt_records: u64,
    pub(crate) corrupt_bytes: u64,
    pub(crate) ledger_rebuilds: u64,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            next_seq: 1,
            acked_seq: 0,
            dropped_records: 0,
            dropped_bytes: 0,
            corrupt_records: 0,
            corrupt_bytes: 0,
            ledger_rebuilds: 0,
        }
    }
}

impl Ledger {
    fn fields(&self) -> [u64; 7] {
        [
            self.next_seq,
            self.acked_seq,
            self.dropped_records,
            self.dropped_bytes,
            self.corrupt_records,
            self.corrupt_bytes,
            self.ledger_rebuilds,
        ]
    }

    pub(crate) fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        for (i, value) in self.fields().iter().enumerate() {
            out[12 + i * 8..20 + i * 8].copy_from_slice(&value.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out[..LEN - 4]);
        out[LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Ledger, LedgerError> {
        if bytes.len() != LEN {
            return Err(LedgerError::WrongLength(bytes.len() as u64));
        }
        if &bytes[..8] != MAGIC {
            return Err(LedgerError::BadMagic);
        }
        let crc = u32::from_le_bytes(bytes[LEN - 4..].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[..LEN - 4]) != crc {
            return Err(LedgerError::CrcMismatch);
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(LedgerError::UnsupportedVersion(version));
        }
        let field = |i: usize| {
            u64::from_le_bytes(bytes[12 + i * 8..20 + i * 8].try_into().expect("8 bytes"))
        };
        let ledger = Ledger {
            next_seq: field(0),
            acked_seq: field(1),
            dropped_records: field(2),
            dropped_bytes: field(3),
            corrupt_records: field(4),
            corrupt_bytes: field(5),
            ledger_rebuilds: field(6),
        };
        if ledger.next_seq == 0 || ledger.acked_seq >= ledger.next_seq {
            return Err(LedgerError::Inconsistent {
                next_seq: ledger.next_seq,
                acked_seq: ledger.acked_seq,
            });
        }
        Ok(ledger)
    }
}

/// Reads the ledger of `dir`: `None` if there is none, the reason if it is unusable.
/// Only I/O errors other than "not found" are errors.
pub(crate) fn read(dir: &Path) -> io::Result<Option<Result<Ledger, LedgerError>>> {
    let file = match File::open(dir.join(LEDGER_FILE)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // Read one byte more than a ledger so an oversized file is told apart without
    // reading all of it.
    let mut bytes = Vec::with_capacity(LEN + 1);
    file.take(LEN as u64 + 1).read_to_end(&mut bytes)?;
    Ok(Some(Ledger::decode(&bytes)))
}

/// Replaces the ledger of `dir` atomically and durably; on a full disk, in place (see the
/// module docs).
pub(crate) fn write(dir: &Path, ledger: &Ledger) -> io::Result<()> {
    let tmp = dir.join(LEDGER_TMP);
    match replace(dir, &tmp, ledger) {
        Err(error) if is_disk_full(&error) => {
            // Whatever the failed attempt left takes blocks the disk does not have.
            let _ = fs::remove_file(&tmp);
            overwrite(dir, ledger).map_err(|_| error)
        }
        result => result,
    }
}

fn replace(dir: &Path, tmp: &Path, ledger: &Ledger) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    file.write_all(&ledger.encode())?;
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, dir.join(LEDGER_FILE))?;
    sync_dir(dir)
}

/// Overwrites an existing ledger of exactly [`LEN`] bytes in place, needing no new block.
fn overwrite(dir: &Path, ledger: &Ledger) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new().write(true).open(dir.join(LEDGER_FILE))?;
    if file.metadata()?.len() != LEN as u64 {
        return Err(io::Error::other("no ledger of the right size to overwrite"));
    }
    file.write_all_at(&ledger.encode(), 0)?;
    file.sync_data()
}

/// Whether `error` says the file system has no room (`ENOSPC`, or a quota: `EDQUOT`).
fn is_disk_full(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Fsyncs a directory, making creations, renames and removals in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ledger {
        Ledger {
            next_seq: 2048,
            acked_seq: 1000,
            dropped_records: 3,
            dropped_bytes: 300,
            corrupt_records: 1,
            corrupt_bytes: 17,
            ledger_rebuilds: 2,
        }
    }

    #[test]
    fn round_trips() {
        assert_eq!(Ledger::decode(&sample().encode()), Ok(sample()));
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let good = sample().encode();
        for at in 0..good.len() {
            let mut bad = good;
            bad[at] ^= 0x10;
            assert!(
                Ledger::decode(&bad).is_err(),
                "flip at byte {at} went unnoticed"
            );
        }
    }

    #[test]
    fn short_long_and_inconsistent_ledgers_are_rejected() {
        let good = sample().encode();
        assert_eq!(
            Ledger::decode(&good[..10]),
            Err(LedgerError::WrongLength(10))
        );
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(Ledger::decode(&long), Err(LedgerError::WrongLength(73)));
        let ahead = Ledger {
            acked_seq: 2048,
            ..sample()
        };
        assert!(matches!(
            Ledger::decode(&ahead.encode()),
            Err(LedgerError::Inconsistent { .. })
        ));
    }
}
