//! `herd-logtail`: a herd plugin that follows log files and sends each new
//! line as a record.
//!
//! - Follows every `--file` (and files added by task), polling every
//!   `--poll-ms`.
//! - **Rotation** (the file is renamed and a new one created at the path):
//!   the old file is read to its end, then the new one is followed from 0.
//! - **Truncation** (the file is shorter than the read offset): reading
//!   restarts at 0.
//! - **Offsets**: a line's position is saved only once the agent confirmed
//!   its record durable (the SDK's [`Checkpoint`](herd_plugin::Checkpoint),
//!   fed by the agent's `Durable` commands), never when it is merely
//!   written: one in-place `pwrite` of a 64-byte slot in [`OFFSETS_FILE`] per
//!   line (see [`Store`] for the layout and why it cannot tear). The agent
//!   confirms everything before it closes stdin, and on that normal stop the
//!   state is synced to disk, so a restart neither loses nor repeats a line.
//!   A crash (of logtail or of the agent) repeats the lines not yet confirmed,
//!   and loses none; a power loss can also repeat the lines whose positions
//!   the kernel had not yet written back. Each record carries `path`, `inode`
//!   and `offset`, so a consumer can drop such repeats. At most 65,536 lines
//!   wait for confirmation; then logtail stops reading until more come.
//!
//! Data types: [`LINE`] records, [`TASK_ADD_FILE`], [`TASK_REMOVE_FILE`] and
//! [`TASK_LIST_FILES`] tasks.

mod error;
mod follow;
mod state;
mod tailer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use clap::Parser;
use herd_plugin::PluginEnv;
use herd_plugin::prelude::*;

pub use error::LogtailError;
pub use follow::StartAt;
pub use state::{OFFSETS_FILE, Position, STATE_FILE, State, Store};
pub use tailer::{FileStatus, TailOptions, Tailer};

/// Record: one line of a followed file. Fields: `path`, `offset` (byte offset
/// of the line's start), `inode`, `line` (the text without its line ending;
/// invalid UTF-8 replaced), and `partial` = `true` for a piece of a line
/// longer than `--max-line-bytes` or the unfinished last line of a rotated
/// file. The body holds the raw bytes when the line is not valid UTF-8, and is
/// empty otherwise.
pub const LINE: u32 = 2100;
/// Task: start following the file in field `path` (absolute). Persisted.
pub const TASK_ADD_FILE: u32 = 2110;
/// Task: stop following the file in field `path`. Persisted.
pub const TASK_REMOVE_FILE: u32 = 2111;
/// Task: list the followed files; the output is a JSON array of
/// `{path, open, offset, committed, inode}` and field `count` says how many.
pub const TASK_LIST_FILES: u32 = 2112;

/// Command-line arguments of `herd-logtail`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "herd-logtail",
    version,
    about = "herd plugin: follow log files, one record per line"
)]
pub struct Args {
    /// A file to follow (repeatable). Tasks 2110/2111 add and remove files on top.
    #[arg(long = "file", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Directory for the saved offsets and task changes [default: the agent's
    /// per-plugin directory, else `$TMPDIR/herd-plugin-NAME`].
    #[arg(long, env = herd_plugin::ENV_STATE_DIR, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How often files are checked for new lines, in milliseconds.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub poll_ms: u64,
    /// Where a file with no saved offset starts.
    #[arg(long, value_enum, default_value_t = StartAt::Beginning)]
    pub start_at: StartAt,
    /// Lines longer than this are sent in pieces (marked `partial`).
    #[arg(long, default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(1..=1024 * 1024))]
    pub max_line_bytes: u32,
}

/// Runs the plugin on its real pipes until stdin closes.
pub fn run(args: Args) -> Result<(), LogtailError> {
    let mut env = PluginEnv::from_env();
    if let Some(state_dir) = &args.state_dir {
        env.state_dir.clone_from(state_dir);
    }
    let plugin = Plugin::stdio(env)?;
    let files = args
        .files
        .iter()
        .map(|path| {
            std::path::absolute(path).map_err(|source| LogtailError::Path {
                path: path.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = TailOptions {
        start_at: args.start_at,
        max_line_bytes: args.max_line_bytes as usize,
    };
    let tailer = Arc::new(Mutex::new(Tailer::new(
        plugin.state_dir(),
        &files,
        options,
    )?));

    let worker = {
        let (tailer, emitter, shutdown) = (tailer.clone(), plugin.emitter(), plugin.shutdown());
        let checkpoint = plugin.checkpoint();
        let poll = Duration::from_millis(args.poll_ms);
        thread::spawn(move || -> Result<(), PluginError> {
            loop {
                let more = lock(&tailer).poll(&emitter, checkpoint.durable())?;
                let stop = if more {
                    shutdown.is_triggered()
                } else {
                    shutdown.wait_timeout(poll)
                };
                if stop {
                    return Ok(());
                }
            }
        })
    };
    let checkpoint = plugin.checkpoint();
    let served = plugin.run(|task| handle_task(&tailer, &task));
    let worked = match worker.join() {
        Ok(Err(PluginError::Disconnected)) | Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error),
        Err(_) => {
            eprintln!("logtail: the tail worker panicked");
            Ok(())
        }
    };
    // What the agent confirmed before closing stdin is committed; the rest
    // is read again next time. Synced before exiting.
    let mut tailer = lock(&tailer);
    tailer.commit(checkpoint.durable());
    tailer.save(true);
    drop(tailer);
    served?;
    Ok(worked?)
}

fn lock(tailer: &Mutex<Tailer>) -> std::sync::MutexGuard<'_, Tailer> {
    // A panic in the worker leaves a consistent tailer (positions only move
    // after a send), so the state is still worth saving.
    tailer.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Answers tasks 2110, 2111 and 2112.
fn handle_task(tailer: &Mutex<Tailer>, task: &Task) -> TaskResult {
    let path = || -> Result<PathBuf, String> {
        match task.fields.get("path").map(PathBuf::from) {
            None => Err("missing field `path`".to_owned()),
            Some(path) if path.is_absolute() => Ok(path),
            Some(path) => Err(format!("path {} is not absolute", path.display())),
        }
    };
    match task.data_type {
        TASK_ADD_FILE => match path() {
            Ok(path) => {
                let added = lock(tailer).add(path.clone());
                let output = if added {
                    "following"
                } else {
                    "already following"
                };
                TaskResult::ok(task, format!("{output} {}", path.display()))
            }
            Err(error) => TaskResult::rejected(task, error),
        },
        TASK_REMOVE_FILE => match path() {
            Ok(path) if lock(tailer).remove(&path) => {
                TaskResult::ok(task, format!("stopped following {}", path.display()))
            }
            Ok(path) => TaskResult::rejected(task, format!("not following {}", path.display())),
            Err(error) => TaskResult::rejected(task, error),
        },
        TASK_LIST_FILES => {
            let files = lock(tailer).list();
            match serde_json::to_vec(&files) {
                Ok(json) => TaskResult::ok(task, json).with_field("count", files.len().to_string()),
                Err(error) => TaskResult::failed(task, format!("cannot encode the list: {error}")),
            }
        }
        other => TaskResult::rejected(
            task,
            format!(
                "logtail has no task of data type {other}; it knows {TASK_ADD_FILE} (add file), \
                 {TASK_REMOVE_FILE} (remove file) and {TASK_LIST_FILES} (list files)"
            ),
        ),
    }
}
