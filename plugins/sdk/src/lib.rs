//! The herd plugin SDK.
//!
//! A plugin is a child process of the agent. This crate hides the pipes so a
//! plugin emits records and answers tasks in a few lines; the real plugins
//! (`sysmetrics`, `logtail`, `exec`) live beside it under `plugins/`, and
//! `docs/plugins.md` describes the contract for plugins in any language.
//!
//! # The contract
//!
//! - **stdin** carries `PluginCommand` frames (a task each) from the agent.
//!   Every frame is a 4-byte big-endian length and one protobuf message, as
//!   in `herd-codec`. **EOF on stdin means "exit now, cleanly"**: finish what
//!   is in flight, flush, exit 0.
//! - **stdout** is for `PluginMessage` frames only (a `Record` or a
//!   `TaskResult` each). [`Plugin::from_env`] writes frames to a private copy
//!   of stdout and points file descriptor 1 at stderr, so a stray `println!`
//!   cannot corrupt the stream.
//! - **stderr** lines are logs; the agent rate-limits them.
//! - **environment**: [`ENV_NAME`] (the configured name), [`ENV_STATE_DIR`]
//!   (a directory that persists across restarts, created by the agent) and
//!   [`ENV_AGENT_ID`] (may be empty). Outside an agent they are unset and
//!   [`PluginEnv::from_env`] falls back to standalone defaults.
//! - **configuration** comes as command-line arguments (and environment) from
//!   the agent's `PluginConfig`; a change restarts the plugin with new ones.
//! - **data types**: plugins use 2000 and up (1000-1999 is the framework's).
//! - **broken stdout** (the agent is gone): sends fail with
//!   [`PluginError::Disconnected`], the [`Shutdown`] is triggered and
//!   [`Plugin::run`] returns `Ok(())`.
//!
//! # A plugin in a few lines
//!
//! ```no_run
//! use std::time::Duration;
//! use herd_plugin::prelude::*;
//!
//! fn main() -> Result<(), PluginError> {
//!     let plugin = Plugin::from_env()?;              // stdio, name, state dir
//!     let (emitter, shutdown) = (plugin.emitter(), plugin.shutdown());
//!     let worker = std::thread::spawn(move || -> Result<(), PluginError> {
//!         while !shutdown.wait_timeout(Duration::from_secs(10)) {
//!             emitter.record(2999).field("uptime_ok", true).send()?;
//!         }
//!         Ok(())
//!     });
//!     plugin.run(|task| TaskResult::ok(&task, "done"))?; // until stdin EOF
//!     worker.join().expect("worker panicked")
//! }
//! ```
//!
//! [`Plugin::new`] takes any reader and writer instead of the real pipes; its
//! documentation has a runnable round trip. [`testing::PluginProcess`] runs
//! a plugin binary as a child process and plays the agent, for integration
//! tests.

mod checkpoint;
pub mod cli;
mod emitter;
mod error;
mod plugin;
mod result;
mod shutdown;
pub mod testing;

pub use checkpoint::Checkpoint;
pub use emitter::{Emitter, RecordBuilder};
pub use error::PluginError;
pub use herd_codec::proto::{Record, Task, TaskResult, TaskStatus};
pub use plugin::{ENV_AGENT_ID, ENV_NAME, ENV_STATE_DIR, Plugin, PluginEnv};
pub use result::TaskResultExt;
pub use shutdown::Shutdown;

/// Everything a plugin usually needs: `use herd_plugin::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Checkpoint, Emitter, Plugin, PluginError, Record, Shutdown, Task, TaskResult,
        TaskResultExt, TaskStatus,
    };
}
