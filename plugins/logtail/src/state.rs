//! What logtail remembers across restarts, in the state directory.
//!
//! Two files:
//!
//! - [`STATE_FILE`] (JSON): the files added and removed by tasks, the slot
//!   of every path in the offsets file, and a snapshot of the positions.
//!   Replaced atomically (temporary file + rename) when a task changes the
//!   set of files, when a new path gets a slot, and at shutdown (then also
//!   synced to disk). A rename costs milliseconds on ext4, too slow for
//!   every line.
//! - [`OFFSETS_FILE`]: one fixed 64-byte slot per path, overwritten in place
//!   with one `pwrite` after every line sent (microseconds). A slot is
//!   64-byte aligned, so it never straddles a page and a crashed process
//!   leaves it either old or new, never torn; a checksum catches the rest
//!   (torn sectors after a power loss), and a bad slot falls back to the
//!   snapshot in the JSON file.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::LogtailError;

/// Name of the JSON state file inside the plugin's state directory.
pub const STATE_FILE: &str = "logtail-state.json";
/// Name of the offsets file inside the plugin's state directory.
pub const OFFSETS_FILE: &str = "logtail-offsets.bin";

/// Length of one slot in [`OFFSETS_FILE`]: path hash, dev, inode, offset,
/// checksum (5 × u64, little endian), zero padding.
const SLOT_LEN: usize = 64;
const SLOT_DATA: usize = 32;

/// Where reading stopped in one file: the identity of the file and the byte
/// offset of the first line not yet sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Device of the file that was being read.
    pub dev: u64,
    /// Inode of the file that was being read; another inode at the same path
    /// means the file was rotated while logtail was not looking.
    pub inode: u64,
    /// Byte offset of the first line not yet written to stdout.
    pub offset: u64,
}

/// The JSON part of the state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Files added by task 2110 (on top of `--file`).
    #[serde(default)]
    pub added: BTreeSet<PathBuf>,
    /// Files removed by task 2111 (even if `--file` names them).
    #[serde(default)]
    pub removed: BTreeSet<PathBuf>,
    /// Slot of each path in the offsets file.
    #[serde(default)]
    pub slots: BTreeMap<PathBuf, u32>,
    /// Positions as of the last save of this file; the offsets file has the
    /// newer ones. Kept when a file is removed, so re-adding it resumes.
    #[serde(default)]
    pub positions: BTreeMap<PathBuf, Position>,
}

impl State {
    fn load(dir: &Path) -> Result<Self, LogtailError> {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| LogtailError::CorruptState { path, source }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(LogtailError::ReadState { path, source }),
        }
    }

    fn save(&self, dir: &Path, durable: bool) -> io::Result<()> {
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer(&mut file, self)?;
        file.flush()?;
        if durable {
            file.as_file().sync_all()?;
        }
        file.persist(dir.join(STATE_FILE))
            .map_err(|error| error.error)?;
        Ok(())
    }
}

/// The persisted state, kept in step with both files.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    state: State,
    offsets: File,
    /// The JSON file differs from `state`.
    dirty: bool,
    /// The last write failed; logged once until one succeeds again.
    failing: bool,
}

impl Store {
    /// Loads both files from `dir` (empty state when they do not exist yet).
    pub fn open(dir: &Path) -> Result<Self, LogtailError> {
        let mut state = State::load(dir)?;
        let offsets_path = dir.join(OFFSETS_FILE);
        let offsets = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&offsets_path)
            .map_err(|source| LogtailError::ReadState {
                path: offsets_path,
                source,
            })?;
        for (path, slot) in &state.slots {
            if let Some(position) = read_slot(&offsets, *slot, path) {
                state.positions.insert(path.clone(), position);
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            state,
            offsets,
            dirty: false,
            failing: false,
        })
    }

    /// The saved position of `path`.
    pub fn position(&self, path: &Path) -> Option<Position> {
        self.state.positions.get(path).copied()
    }

    /// Records that everything before `position` in `path` was sent; written
    /// to the offsets file at once.
    pub fn set_position(&mut self, path: &Path, position: Position) {
        if self.state.positions.get(path) == Some(&position) {
            return;
        }
        self.state.positions.insert(path.to_owned(), position);
        let slot = self.slot(path);
        let written = write_slot(&self.offsets, slot, path, position);
        self.outcome(written, OFFSETS_FILE);
        if self.failing {
            // The JSON snapshot is the fallback while the offsets file fails.
            self.dirty = true;
        }
    }

    /// The slot of `path` in the offsets file, assigned on first use. A new
    /// slot is only known after the next [`save`](Self::save): call this when
    /// a file starts being followed, and save, before its first line is sent.
    pub fn slot(&mut self, path: &Path) -> u32 {
        let next = u32::try_from(self.state.slots.len()).unwrap_or(u32::MAX);
        *self.state.slots.entry(path.to_owned()).or_insert_with(|| {
            self.dirty = true;
            next
        })
    }

    /// Files added by tasks.
    pub fn added(&self) -> &BTreeSet<PathBuf> {
        &self.state.added
    }

    /// Files removed by tasks.
    pub fn removed(&self) -> &BTreeSet<PathBuf> {
        &self.state.removed
    }

    /// Remembers that a task added `path`.
    pub fn add(&mut self, path: &Path) {
        self.state.removed.remove(path);
        self.state.added.insert(path.to_owned());
        self.dirty = true;
    }

    /// Remembers that a task removed `path`. Recorded even for a file a task
    /// added: `--file` may name it by the next restart, and the task's word
    /// stands until another task.
    pub fn remove(&mut self, path: &Path) {
        self.state.added.remove(path);
        self.state.removed.insert(path.to_owned());
        self.dirty = true;
    }

    /// Writes the JSON file if it changed; `durable` writes it in any case
    /// and syncs both files to disk (at shutdown). Failures are logged once
    /// and retried on the next call.
    pub fn save(&mut self, durable: bool) {
        if !self.dirty && !durable {
            return;
        }
        let saved = self.state.save(&self.dir, durable).and_then(|()| {
            if durable {
                self.offsets.sync_data()?;
            }
            Ok(())
        });
        if saved.is_ok() {
            self.dirty = false;
        }
        self.outcome(saved, STATE_FILE);
    }

    fn outcome(&mut self, result: io::Result<()>, file: &str) {
        match result {
            Ok(()) => self.failing = false,
            Err(error) => {
                if !self.failing {
                    eprintln!(
                        "logtail: cannot write {}: {error}; will retry (a restart before then repeats lines)",
                        self.dir.join(file).display()
                    );
                }
                self.failing = true;
            }
        }
    }
}

fn slot_offset(slot: u32) -> u64 {
    u64::from(slot) * SLOT_LEN as u64
}

fn write_slot(file: &File, slot: u32, path: &Path, position: Position) -> io::Result<()> {
    let mut bytes = [0_u8; SLOT_LEN];
    for (index, value) in [
        path_hash(path),
        position.dev,
        position.inode,
        position.offset,
    ]
    .into_iter()
    .enumerate()
    {
        bytes[index * 8..index * 8 + 8].copy_from_slice(&value.to_le_bytes());
    }
    let checksum = fnv1a(&bytes[..SLOT_DATA]);
    bytes[SLOT_DATA..SLOT_DATA + 8].copy_from_slice(&checksum.to_le_bytes());
    file.write_all_at(&bytes, slot_offset(slot))
}

/// The position in `slot`, if the slot is complete, intact and `path`'s.
fn read_slot(file: &File, slot: u32, path: &Path) -> Option<Position> {
    let mut bytes = [0_u8; SLOT_LEN];
    file.read_exact_at(&mut bytes, slot_offset(slot)).ok()?;
    let word = |index: usize| {
        let mut word = [0_u8; 8];
        word.copy_from_slice(&bytes[index * 8..index * 8 + 8]);
        u64::from_le_bytes(word)
    };
    (word(4) == fnv1a(&bytes[..SLOT_DATA]) && word(0) == path_hash(path)).then(|| Position {
        dev: word(1),
        inode: word(2),
        offset: word(3),
    })
}

fn path_hash(path: &Path) -> u64 {
    fnv1a(path.as_os_str().as_bytes())
}

/// 64-bit FNV-1a: enough to tell a slot from a torn or foreign one.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_survive_a_reopen_without_a_json_save() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (a, b) = (Path::new("/var/log/a.log"), Path::new("/var/log/b.log"));
        let mut store = Store::open(dir.path())?;
        store.set_position(
            a,
            Position {
                dev: 1,
                inode: 2,
                offset: 3,
            },
        );
        store.set_position(
            b,
            Position {
                dev: 1,
                inode: 5,
                offset: 6,
            },
        );
        store.save(false); // assigns the slots in the JSON file
        store.set_position(
            a,
            Position {
                dev: 1,
                inode: 2,
                offset: 99,
            },
        ); // offsets file only
        drop(store);

        let store = Store::open(dir.path())?;
        assert_eq!(store.position(a).map(|p| p.offset), Some(99));
        assert_eq!(store.position(b).map(|p| p.inode), Some(5));
        Ok(())
    }

    #[test]
    fn a_torn_slot_falls_back_to_the_snapshot() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let a = Path::new("/var/log/a.log");
        let mut store = Store::open(dir.path())?;
        store.set_position(
            a,
            Position {
                dev: 1,
                inode: 2,
                offset: 3,
            },
        );
        store.save(true);
        store.set_position(
            a,
            Position {
                dev: 1,
                inode: 2,
                offset: 50,
            },
        );
        drop(store);
        // Corrupt the offset bytes of slot 0.
        let file = OpenOptions::new()
            .write(true)
            .open(dir.path().join(OFFSETS_FILE))?;
        file.write_all_at(&[0xff; 4], 24)?;

        let store = Store::open(dir.path())?;
        assert_eq!(store.position(a).map(|p| p.offset), Some(3));
        Ok(())
    }
}
