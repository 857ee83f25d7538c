//! The set of followed files and the tasks that change it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use herd_plugin::{Emitter, PluginError};
use serde::Serialize;

use crate::LINE;
use crate::error::LogtailError;
use crate::follow::{Follower, Line, Start, StartAt};
use crate::state::{Position, Store};

/// Lines read from one file before the others get their turn.
const LINES_PER_TURN: usize = 1024;
/// Lines sent but not yet confirmed durable by the agent; at this many the
/// tailer stops reading until confirmations come (bounded memory, and no
/// runaway ahead of an agent that cannot keep up).
const MAX_UNCOMMITTED: u64 = 64 * 1024;

/// Tuning of the tailer, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct TailOptions {
    /// Where files without a saved position start.
    pub start_at: StartAt,
    /// Longer lines are sent in pieces of this many bytes.
    pub max_line_bytes: usize,
}

/// One followed file, as task 2112 lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileStatus {
    /// The path being followed.
    pub path: PathBuf,
    /// Whether the file is open (false while it does not exist).
    pub open: bool,
    /// Byte offset of the next line to send.
    pub offset: Option<u64>,
    /// Byte offset up to which the agent confirmed the lines durable (what a
    /// restart resumes from).
    pub committed: Option<u64>,
    /// Inode of the open file.
    pub inode: Option<u64>,
}

/// All followed files and the persisted state behind them.
#[derive(Debug)]
pub struct Tailer {
    store: Store,
    followers: BTreeMap<PathBuf, Follower>,
    options: TailOptions,
    /// Positions to save once the record numbered `.0` is durable, in order.
    uncommitted: VecDeque<(u64, PathBuf, Position)>,
    /// Number of the last record sent (0: none).
    last_sent: u64,
}

impl Tailer {
    /// Loads the state from `state_dir` and follows `files` plus the files
    /// added by tasks, minus the files removed by tasks.
    pub fn new(
        state_dir: &Path,
        files: &[PathBuf],
        options: TailOptions,
    ) -> Result<Self, LogtailError> {
        let store = Store::open(state_dir)?;
        let mut wanted: BTreeSet<PathBuf> = files.iter().cloned().collect();
        wanted.extend(store.added().iter().cloned());
        wanted.retain(|path| !store.removed().contains(path));
        let mut tailer = Self {
            store,
            followers: BTreeMap::new(),
            options,
            uncommitted: VecDeque::new(),
            last_sent: 0,
        };
        for path in wanted {
            tailer.follow(path);
        }
        tailer.store.save(false);
        Ok(tailer)
    }

    /// Starts following `path`; the caller saves the store next, so the
    /// path's slot is on disk before its first line is sent.
    fn follow(&mut self, path: PathBuf) {
        self.store.slot(&path);
        let start = self
            .store
            .position(&path)
            .map_or(Start::Fresh(self.options.start_at), Start::Resume);
        self.followers
            .insert(path.clone(), Follower::new(path, start));
    }

    /// Saves the positions of the lines the agent confirmed durable: the
    /// first `durable` records sent (see [`Checkpoint`](herd_plugin::Checkpoint)).
    pub fn commit(&mut self, durable: u64) {
        while let Some((number, _, _)) = self.uncommitted.front()
            && *number <= durable
        {
            if let Some((_, path, position)) = self.uncommitted.pop_front() {
                self.store.set_position(&path, position);
            }
        }
        self.store.save(false);
    }

    /// Sends the new lines of every file. A line's position is saved only
    /// once the agent confirmed its record durable ([`commit`](Self::commit)
    /// with the checkpoint, called here first), so a crash of the agent or of
    /// logtail re-reads, never skips. Returns whether a file has more lines
    /// waiting (it had used up its turn), so the caller polls again at once.
    pub fn poll(&mut self, emitter: &Emitter, durable: u64) -> Result<bool, PluginError> {
        self.commit(durable);
        // Records are numbered in send order, so this many lines wait for
        // their confirmation (a checkpoint never runs ahead of what was sent).
        let waiting = self.last_sent.saturating_sub(durable);
        let mut budget = MAX_UNCOMMITTED.saturating_sub(waiting);
        let Self {
            followers,
            options,
            uncommitted,
            last_sent,
            ..
        } = self;
        let mut more = false;
        for (path, follower) in followers.iter_mut() {
            if budget == 0 {
                break;
            }
            let turn = usize::try_from(budget).map_or(LINES_PER_TURN, |b| b.min(LINES_PER_TURN));
            let mut queued = follower.position();
            let sent = follower.poll(turn, options.max_line_bytes, &mut |line| {
                *last_sent = send_line(emitter, path, &line)?;
                uncommitted.push_back((*last_sent, path.clone(), line.next));
                queued = Some(line.next);
                Ok(())
            });
            // Also covers a position that moved without a line (a file opened
            // at its end, a truncation, a rotation): saved once what was sent
            // before it is durable. A poll that found nothing queues nothing.
            if let Some(position) = follower.position()
                && queued != Some(position)
            {
                uncommitted.push_back((*last_sent, path.clone(), position));
            }
            let sent = sent? as u64;
            budget -= sent;
            more |= sent == turn as u64;
        }
        self.commit(durable);
        Ok(more)
    }

    /// Saves the state; `durable` also syncs it to disk (at shutdown).
    pub fn save(&mut self, durable: bool) {
        self.store.save(durable);
    }

    /// Starts following `path` (task 2110); false if it was followed already.
    pub fn add(&mut self, path: PathBuf) -> bool {
        if self.followers.contains_key(&path) {
            return false;
        }
        self.store.add(&path);
        self.follow(path);
        self.store.save(false);
        true
    }

    /// Stops following `path` (task 2111); false if it was not followed. Its
    /// position is kept, so adding it again resumes where it stopped.
    pub fn remove(&mut self, path: &Path) -> bool {
        if self.followers.remove(path).is_none() {
            return false;
        }
        self.store.remove(path);
        self.store.save(false);
        true
    }

    /// The followed files (task 2112).
    pub fn list(&self) -> Vec<FileStatus> {
        self.followers
            .values()
            .map(|follower| {
                let position = follower.position();
                FileStatus {
                    path: follower.path().to_owned(),
                    open: position.is_some(),
                    offset: position.map(|p| p.offset),
                    committed: self.store.position(follower.path()).map(|p| p.offset),
                    inode: position.map(|p| p.inode),
                }
            })
            .collect()
    }
}

/// One line as a 2100 record: `path`, `offset`, `inode`, `line`, and the raw
/// bytes as the body when they are not UTF-8.
/// Returns the record's number.
fn send_line(emitter: &Emitter, path: &Path, line: &Line<'_>) -> Result<u64, PluginError> {
    let record = emitter
        .record(LINE)
        .field("path", path.display())
        .field("offset", line.offset)
        .field("inode", line.next.inode);
    let record = match std::str::from_utf8(line.bytes) {
        Ok(text) => record.field("line", text),
        Err(_) => record
            .field("line", String::from_utf8_lossy(line.bytes))
            .body(line.bytes.to_vec()),
    };
    let record = if line.partial {
        record.field("partial", true)
    } else {
        record
    };
    record.send()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> TailOptions {
        TailOptions {
            start_at: StartAt::Beginning,
            max_line_bytes: 1024,
        }
    }

    #[test]
    fn task_changes_survive_a_restart() -> Result<(), Box<dyn std::error::Error>> {
        let state = tempfile::tempdir()?;
        let from_args = PathBuf::from("/var/log/args.log");
        let from_task = PathBuf::from("/var/log/task.log");
        let mut tailer = Tailer::new(state.path(), std::slice::from_ref(&from_args), options())?;
        assert!(tailer.add(from_task.clone()));
        assert!(!tailer.add(from_task.clone()));
        assert!(tailer.remove(&from_args));
        assert!(!tailer.remove(&from_args));

        let restarted = Tailer::new(state.path(), std::slice::from_ref(&from_args), options())?;
        let paths: Vec<PathBuf> = restarted.list().into_iter().map(|f| f.path).collect();
        assert_eq!(paths, vec![from_task]);
        Ok(())
    }
}
