//! The plugin's side of the pipes: identity, stdin loop, task dispatch.

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use herd_codec::DEFAULT_MAX_FRAME_LENGTH;
use herd_codec::blocking::read_frame;
use herd_codec::proto::{PluginCommand, Task, TaskResult, plugin_command};

use crate::checkpoint::Checkpoint;
use crate::emitter::Emitter;
use crate::error::PluginError;
use crate::shutdown::Shutdown;

/// Environment variable holding the plugin's configured name.
pub const ENV_NAME: &str = "HERD_PLUGIN_NAME";
/// Environment variable holding the plugin's state directory, which survives
/// restarts and is created by the agent.
pub const ENV_STATE_DIR: &str = "HERD_PLUGIN_STATE_DIR";
/// Environment variable holding the agent's id (may be empty).
pub const ENV_AGENT_ID: &str = "HERD_AGENT_ID";

/// Who the plugin is and where it keeps state, as the agent announces it in
/// the environment ([`ENV_NAME`], [`ENV_STATE_DIR`], [`ENV_AGENT_ID`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginEnv {
    /// The configured name; outside an agent, the executable's file name.
    pub name: String,
    /// Directory for state that must survive restarts; outside an agent,
    /// `<temp dir>/herd-plugin-<name>`. Plugins with a `--state-dir` flag
    /// overwrite this field with it.
    pub state_dir: PathBuf,
    /// The agent's id; empty when unknown or outside an agent.
    pub agent_id: String,
}

impl PluginEnv {
    /// Reads the environment, with standalone defaults for what is unset.
    pub fn from_env() -> Self {
        let name = non_empty_var(ENV_NAME)
            .or_else(|| {
                std::env::args_os().next().and_then(|arg0| {
                    Path::new(&arg0)
                        .file_name()
                        .map(|name| name.to_string_lossy().into_owned())
                })
            })
            .unwrap_or_else(|| "plugin".to_owned());
        let state_dir = non_empty_var(ENV_STATE_DIR).map_or_else(
            || std::env::temp_dir().join(format!("herd-plugin-{name}")),
            PathBuf::from,
        );
        Self {
            name,
            state_dir,
            agent_id: non_empty_var(ENV_AGENT_ID).unwrap_or_default(),
        }
    }
}

fn non_empty_var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|value| !value.is_empty())
}

/// A running plugin: reads tasks from the agent and hands out [`Emitter`]s
/// for records.
///
/// Build it with [`Plugin::from_env`] (the real pipes) or [`Plugin::new`]
/// (any reader and writer, for tests), start worker threads with
/// [`emitter`](Self::emitter) and [`shutdown`](Self::shutdown), then call
/// [`run`](Self::run) on the main thread.
pub struct Plugin {
    reader: Box<dyn Read + Send>,
    emitter: Emitter,
    checkpoint: Checkpoint,
    shutdown: Shutdown,
    env: PluginEnv,
    max_frame_length: usize,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("env", &self.env)
            .field("max_frame_length", &self.max_frame_length)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// The plugin on its real pipes, with identity from [`PluginEnv::from_env`].
    pub fn from_env() -> Result<Self, PluginError> {
        Self::stdio(PluginEnv::from_env())
    }

    /// The plugin on its real pipes with the given identity; creates the
    /// state directory if it is missing.
    ///
    /// Frames go to a private duplicate of stdout, and file descriptor 1 is
    /// then pointed at stderr: a stray `println!` (from the plugin or a
    /// library) becomes a log line instead of corrupting the frame stream.
    pub fn stdio(env: PluginEnv) -> Result<Self, PluginError> {
        std::fs::create_dir_all(&env.state_dir).map_err(|source| PluginError::StateDir {
            path: env.state_dir.clone(),
            source,
        })?;
        let frames = io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(PluginError::Stdio)?;
        nix::unistd::dup2_stdout(io::stderr().as_fd())
            .map_err(|errno| PluginError::Stdio(errno.into()))?;
        Ok(Self::with_writer(
            io::stdin(),
            BufWriter::new(File::from(frames)),
            env,
        ))
    }

    /// A plugin over any reader (commands in) and writer (messages out).
    /// Nothing is created on disk.
    ///
    /// ```
    /// use herd_codec::blocking::{read_frame, write_frame};
    /// use herd_codec::proto::{plugin_message::Kind, PluginCommand, PluginMessage, Task};
    /// use herd_codec::DEFAULT_MAX_FRAME_LENGTH;
    /// use herd_plugin::prelude::*;
    ///
    /// // What the agent would write to stdin: one task, then EOF.
    /// let mut stdin = Vec::new();
    /// let task = Task { id: "t-1".into(), data_type: 2999, ..Default::default() };
    /// write_frame(&mut stdin, &PluginCommand::from(task))?;
    ///
    /// // Stdout is collected in a pipe so the test can read it back.
    /// let (mut stdout, out_writer) = std::io::pipe()?;
    /// let plugin = Plugin::new(std::io::Cursor::new(stdin), out_writer, "demo", "/nonexistent");
    /// plugin.emitter().record(2999).field("answer", 42).send()?;
    /// plugin.run(|task| TaskResult::ok(&task, "done"))?; // returns at EOF
    ///
    /// let first: PluginMessage = read_frame(&mut stdout, DEFAULT_MAX_FRAME_LENGTH)?.unwrap();
    /// let Some(Kind::Record(record)) = first.kind else { panic!("{first:?}") };
    /// assert_eq!(record.fields["answer"], "42");
    /// let second: PluginMessage = read_frame(&mut stdout, DEFAULT_MAX_FRAME_LENGTH)?.unwrap();
    /// let Some(Kind::TaskResult(result)) = second.kind else { panic!("{second:?}") };
    /// assert_eq!((result.task_id.as_str(), &result.output[..]), ("t-1", &b"done"[..]));
    /// // Every emitter is gone with the plugin, so the stream ends cleanly.
    /// assert_eq!(read_frame::<PluginMessage>(&mut stdout, DEFAULT_MAX_FRAME_LENGTH)?, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
        name: impl Into<String>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        let env = PluginEnv {
            name: name.into(),
            state_dir: state_dir.into(),
            agent_id: String::new(),
        };
        Self::with_writer(reader, writer, env)
    }

    fn with_writer(
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
        env: PluginEnv,
    ) -> Self {
        let shutdown = Shutdown::new();
        Self {
            reader: Box::new(reader),
            emitter: Emitter::new(Box::new(writer), shutdown.clone(), DEFAULT_MAX_FRAME_LENGTH),
            checkpoint: Checkpoint::default(),
            shutdown,
            env,
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
        }
    }

    /// Caps the length of incoming command frames (default
    /// [`DEFAULT_MAX_FRAME_LENGTH`]); a longer frame ends [`run`](Self::run)
    /// with an error.
    #[must_use]
    pub fn with_max_frame_length(mut self, max_frame_length: usize) -> Self {
        self.max_frame_length = max_frame_length;
        self
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.env.name
    }

    /// The directory for state that must survive restarts.
    pub fn state_dir(&self) -> &Path {
        &self.env.state_dir
    }

    /// The agent's id (empty when unknown).
    pub fn agent_id(&self) -> &str {
        &self.env.agent_id
    }

    /// A handle for sending records from any thread.
    pub fn emitter(&self) -> Emitter {
        self.emitter.clone()
    }

    /// What the agent has made durable of the records sent; [`run`](Self::run)
    /// keeps it up to date.
    pub fn checkpoint(&self) -> Checkpoint {
        self.checkpoint.clone()
    }

    /// The signal [`run`](Self::run) triggers when it returns.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Reads tasks from the agent until stdin ends, answering each with
    /// `handler`'s result (its `task_id` is filled in if left empty), and
    /// moves the [`Checkpoint`] on at each `Durable` command.
    ///
    /// Returns `Ok(())` when stdin ends (the agent asks the plugin to exit) or
    /// stdout breaks (the agent is gone), and an error when a command frame is
    /// malformed or an answer cannot be written. Either way the
    /// [`Shutdown`] is triggered on return, so workers can be joined next.
    /// Tasks are handled one at a time on the calling thread.
    pub fn run<F>(mut self, mut handler: F) -> Result<(), PluginError>
    where
        F: FnMut(Task) -> TaskResult,
    {
        let _trigger_on_return = TriggerOnDrop(self.shutdown.clone());
        loop {
            let command: Option<PluginCommand> =
                read_frame(&mut self.reader, self.max_frame_length).map_err(PluginError::Read)?;
            let task = match command.and_then(|command| command.kind) {
                Some(plugin_command::Kind::Task(task)) => task,
                Some(plugin_command::Kind::Durable(durable)) => {
                    self.checkpoint.advance(durable.through);
                    continue;
                }
                // End of stdin. A command without a kind is refused by the
                // codec, so nothing else reaches this point.
                None => return Ok(()),
            };
            let task_id = task.id.clone();
            let mut result = handler(task);
            if result.task_id.is_empty() {
                result.task_id = task_id;
            }
            match self.emitter.send_result(result) {
                Ok(()) => {}
                Err(PluginError::Disconnected) => return Ok(()),
                Err(error) => return Err(error),
            }
        }
    }
}

/// Triggers the shutdown however `run` ends, a panicking handler included.
struct TriggerOnDrop(Shutdown);

impl Drop for TriggerOnDrop {
    fn drop(&mut self) {
        self.0.trigger();
    }
}
