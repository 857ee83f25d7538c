//! A harness for tests that run a plugin as a real child process.
//!
//! [`PluginProcess`] plays the agent: it spawns the plugin with piped stdin
//! and stdout, decodes every frame the plugin writes on a reader thread, and
//! offers waits that are bounded by a timeout, so a test awaits records and
//! task results instead of sleeping. Any byte on stdout that is not a valid
//! `PluginMessage` frame surfaces as [`HarnessError::Garbage`].

use std::collections::VecDeque;
use std::io::{self, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use herd_codec::DEFAULT_MAX_FRAME_LENGTH;
use herd_codec::blocking::{read_frame, write_frame};
use herd_codec::proto::{
    Durable, PluginCommand, PluginMessage, Record, Task, TaskResult, plugin_message,
};

/// What went wrong while driving a plugin process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// The plugin could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program that was run.
        program: String,
        /// Why it could not be started.
        source: io::Error,
    },
    /// Nothing matching arrived in time.
    #[error("no {what} from the plugin within {timeout:?}")]
    Timeout {
        /// What the test waited for.
        what: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The plugin closed stdout (usually: it exited) before sending it.
    #[error("the plugin closed stdout while the test waited for {what}")]
    Closed {
        /// What the test waited for.
        what: String,
    },
    /// The plugin wrote something on stdout that is not a frame.
    #[error("the plugin wrote garbage on stdout: {0}")]
    Garbage(String),
    /// Writing a task to the plugin's stdin failed.
    #[error("cannot send a task to the plugin: {0}")]
    Send(#[source] herd_codec::CodecError),
    /// Stdin was already closed by [`PluginProcess::close_stdin`].
    #[error("the plugin's stdin is already closed")]
    StdinClosed,
    /// Waiting for the process failed.
    #[error("cannot wait for the plugin process: {0}")]
    Wait(#[source] io::Error),
}

/// Everything a plugin wrote after its stdin was closed, and how it exited.
#[derive(Debug)]
pub struct Finished {
    /// The exit status.
    pub status: ExitStatus,
    /// Records that were not consumed before the plugin ended.
    pub records: Vec<Record>,
    /// Task results that were not consumed before the plugin ended.
    pub results: Vec<TaskResult>,
}

/// A plugin running as a child process, driven like the agent drives it.
///
/// Like an agent with an instant spool, it confirms every record as durable
/// (a `Durable` command) as soon as it has read it, unless built
/// [`without_acks`](Self::without_acks).
///
/// Dropping it kills and reaps the process, so a failing test leaves no
/// zombie and no stray plugin behind.
#[derive(Debug)]
pub struct PluginProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: Receiver<Result<PluginMessage, String>>,
    reader: Option<JoinHandle<()>>,
    records: VecDeque<Record>,
    results: VecDeque<TaskResult>,
    records_received: u64,
    acknowledge: bool,
}

impl PluginProcess {
    /// Starts `command` with piped stdin and stdout (stderr is inherited, so
    /// the plugin's logs show up in the test output).
    pub fn spawn(command: &mut Command) -> Result<Self, HarnessError> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                program: command.get_program().to_string_lossy().into_owned(),
                source,
            })?;
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().ok_or_else(|| HarnessError::Spawn {
            program: command.get_program().to_string_lossy().into_owned(),
            source: io::Error::other("stdout was not piped"),
        })?;
        let (sender, frames) = mpsc::channel();
        let reader = thread::spawn(move || {
            loop {
                let frame = read_frame::<PluginMessage>(&mut stdout, DEFAULT_MAX_FRAME_LENGTH);
                let stop = !matches!(frame, Ok(Some(_)));
                let message = match frame {
                    Ok(Some(message)) => Ok(message),
                    Ok(None) => break,
                    Err(error) => Err(error.to_string()),
                };
                if sender.send(message).is_err() || stop {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            frames,
            reader: Some(reader),
            records: VecDeque::new(),
            results: VecDeque::new(),
            records_received: 0,
            acknowledge: true,
        })
    }

    /// Never confirms records durable: like an agent whose spool never
    /// syncs (to test what a plugin does without confirmations).
    #[must_use]
    pub fn without_acks(mut self) -> Self {
        self.acknowledge = false;
        self
    }

    /// The plugin's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes one task to the plugin's stdin.
    pub fn send_task(&mut self, task: Task) -> Result<(), HarnessError> {
        let stdin = self.stdin.as_mut().ok_or(HarnessError::StdinClosed)?;
        write_frame(stdin, &PluginCommand::from(task)).map_err(HarnessError::Send)?;
        stdin
            .flush()
            .map_err(|error| HarnessError::Send(error.into()))
    }

    /// Closes stdin: the agent's way of asking the plugin to exit.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next record, waiting at most `timeout`; task results that arrive
    /// meanwhile are kept for [`task_result`](Self::task_result).
    pub fn next_record(&mut self, timeout: Duration) -> Result<Record, HarnessError> {
        self.next_record_where(timeout, "a record", |_| true)
    }

    /// The next record of `data_type`; records of other types are dropped.
    pub fn next_record_of(
        &mut self,
        data_type: u32,
        timeout: Duration,
    ) -> Result<Record, HarnessError> {
        self.next_record_where(timeout, &format!("a record of type {data_type}"), |r| {
            r.data_type == data_type
        })
    }

    /// The next record for which `wanted` holds; others are dropped.
    pub fn next_record_where(
        &mut self,
        timeout: Duration,
        what: &str,
        mut wanted: impl FnMut(&Record) -> bool,
    ) -> Result<Record, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(record) = self.records.pop_front() {
                if wanted(&record) {
                    return Ok(record);
                }
            }
            self.receive_one(deadline, timeout, what)?;
        }
    }

    /// The result of task `task_id`, waiting at most `timeout`; records that
    /// arrive meanwhile are kept for [`next_record`](Self::next_record).
    pub fn task_result(
        &mut self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<TaskResult, HarnessError> {
        let deadline = Instant::now() + timeout;
        let what = format!("a result for task {task_id:?}");
        loop {
            if let Some(index) = self.results.iter().position(|r| r.task_id == task_id)
                && let Some(result) = self.results.remove(index)
            {
                return Ok(result);
            }
            self.receive_one(deadline, timeout, &what)?;
        }
    }

    /// Sends `task` and waits for its result.
    pub fn call(&mut self, task: Task, timeout: Duration) -> Result<TaskResult, HarnessError> {
        let id = task.id.clone();
        self.send_task(task)?;
        self.task_result(&id, timeout)
    }

    fn receive_one(
        &mut self,
        deadline: Instant,
        timeout: Duration,
        what: &str,
    ) -> Result<(), HarnessError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.frames.recv_timeout(left) {
            Ok(Ok(message)) => {
                match message.kind {
                    Some(plugin_message::Kind::Record(record)) => {
                        self.records.push_back(record);
                        self.records_received += 1;
                        if self.acknowledge
                            && let Some(stdin) = self.stdin.as_mut()
                        {
                            let durable = PluginCommand::from(Durable {
                                through: self.records_received,
                            });
                            // A plugin that is exiting may have closed its stdin.
                            let _ = write_frame(stdin, &durable)
                                .and_then(|()| stdin.flush().map_err(herd_codec::CodecError::Io));
                        }
                    }
                    Some(plugin_message::Kind::TaskResult(result)) => {
                        self.results.push_back(result);
                    }
                    None => {}
                }
                Ok(())
            }
            Ok(Err(garbage)) => Err(HarnessError::Garbage(garbage)),
            Err(RecvTimeoutError::Timeout) => Err(HarnessError::Timeout {
                what: what.to_owned(),
                timeout,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(HarnessError::Closed {
                what: what.to_owned(),
            }),
        }
    }

    /// Closes stdin, collects everything the plugin still writes until it
    /// closes stdout, and waits for it to exit, all within `timeout`. Fails
    /// if stdout held anything but whole frames.
    pub fn finish(mut self, timeout: Duration) -> Result<Finished, HarnessError> {
        self.close_stdin();
        let deadline = Instant::now() + timeout;
        loop {
            match self.receive_one(deadline, timeout, "the end of stdout") {
                Ok(()) => {}
                Err(HarnessError::Closed { .. }) => break,
                Err(error) => return Err(error),
            }
        }
        if let Some(reader) = self.reader.take() {
            // The channel is closed, so the reader thread has returned.
            let _ = reader.join();
        }
        let status = self.wait_until(deadline, timeout)?;
        Ok(Finished {
            status,
            records: self.records.drain(..).collect(),
            results: self.results.drain(..).collect(),
        })
    }

    /// Waits for the process to exit; stdout is already closed, so it is
    /// exiting, and the deadline only guards against a plugin that hangs
    /// after closing it.
    fn wait_until(
        &mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<ExitStatus, HarnessError> {
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = self.child.try_wait().map_err(HarnessError::Wait)? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: "process exit".to_owned(),
                    timeout,
                });
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
