//! Running one script with a timeout, killing and reaping its whole process
//! group.

use std::collections::HashSet;
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// How long a killed script's process may take to die before exec gives up
/// waiting for it (it can only hang in the kernel, in uninterruptible sleep).
const KILL_GRACE: Duration = Duration::from_secs(5);

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The exit code, when the script exited by itself.
    pub exit_code: Option<i32>,
    /// The signal that ended the script, if one did.
    pub signal: Option<i32>,
    /// The script overran its timeout and was killed.
    pub timed_out: bool,
    /// From start to exit.
    pub duration: Duration,
    /// Stdout, up to the output limit.
    pub stdout: Vec<u8>,
    /// Stderr, up to the output limit.
    pub stderr: Vec<u8>,
    /// Stdout or stderr went over the output limit; the rest was discarded.
    pub truncated: bool,
    /// Something went wrong collecting the result (the process could not be
    /// waited for, or its pipes stayed open after it was killed).
    pub problem: Option<String>,
}

impl Outcome {
    /// Whether the script exited by itself with code 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// Why a script could not be run at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot start {path}: {source}")]
pub struct SpawnError {
    /// The script's path.
    pub path: String,
    /// What `exec` reported.
    pub source: io::Error,
}

/// Runs scripts, each in its own process group, and remembers the groups
/// that are running so they can all be killed at shutdown.
#[derive(Debug, Clone)]
pub struct Runner {
    max_output_bytes: usize,
    groups: Arc<Mutex<Groups>>,
}

#[derive(Debug, Default)]
struct Groups {
    running: HashSet<i32>,
    /// Set by `kill_all`: a script started afterwards is killed at once.
    stopped: bool,
}

impl Runner {
    /// Keeps at most `max_output_bytes` of each of stdout and stderr.
    pub fn new(max_output_bytes: usize) -> Self {
        Self {
            max_output_bytes,
            groups: Arc::default(),
        }
    }

    /// Makes this process the reaper of its orphaned descendants, so the
    /// children a killed script leaves behind are reaped here (see
    /// in `run`) instead of lingering as zombies under an init that may
    /// not reap them.
    pub fn become_subreaper() -> nix::Result<()> {
        nix::sys::prctl::set_child_subreaper(true)
    }

    /// Runs `path` with stdin closed, and waits at most `timeout` for it.
    ///
    /// The script leads a new process group. When its main process exits, or
    /// when the timeout expires, the whole group is killed with `SIGKILL` and
    /// every member that is a child of this process is reaped before this
    /// returns; a script's background processes do not outlive its run.
    pub fn run(&self, path: &Path, timeout: Duration) -> Result<Outcome, SpawnError> {
        let started = Instant::now();
        let child = Command::new(path)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| SpawnError {
                path: path.display().to_string(),
                source,
            })?;
        // The child's pid is its process group id, and it stays reserved
        // until the group is reaped below.
        let group = i32::try_from(child.id()).unwrap_or(i32::MAX);
        {
            let mut groups = self.lock();
            groups.running.insert(group);
            if groups.stopped {
                kill_group(group);
            }
        }
        let events = self.watch(child);

        let mut timed_out = false;
        let exit = match events.recv_timeout(timeout) {
            Ok(Event::Exited(exit)) => exit,
            Ok(Event::Output(..)) | Err(RecvTimeoutError::Disconnected) => {
                Err("the watcher thread ended early".to_owned())
            }
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                kill_group(group);
                match events.recv_timeout(KILL_GRACE) {
                    Ok(Event::Exited(exit)) => exit,
                    _ => Err(format!(
                        "the script did not die within {KILL_GRACE:?} of SIGKILL"
                    )),
                }
            }
        };
        let duration = started.elapsed();
        reap_group(group);
        self.lock().running.remove(&group);

        let mut outcome = Outcome {
            exit_code: None,
            signal: None,
            timed_out,
            duration,
            stdout: Vec::new(),
            stderr: Vec::new(),
            truncated: false,
            problem: None,
        };
        match exit {
            Ok(status) => {
                outcome.exit_code = status.code();
                outcome.signal = status.signal();
            }
            Err(problem) => outcome.problem = Some(problem),
        }
        // The group is dead, so the pipes are closed unless a process that
        // left the group (setsid) still holds them.
        match events.recv_timeout(KILL_GRACE) {
            Ok(Event::Output(stdout, stderr)) => {
                outcome.truncated = stdout.truncated || stderr.truncated;
                outcome.stdout = stdout.bytes;
                outcome.stderr = stderr.bytes;
            }
            _ => {
                outcome.problem.get_or_insert_with(|| {
                    "the script's output pipes stayed open after it ended \
                     (a process left its process group and holds them)"
                        .to_owned()
                });
            }
        }
        Ok(outcome)
    }

    /// Kills every script that is running, and every script started from
    /// now on (at shutdown). Their runs end with the signal and without
    /// `timed_out`.
    pub fn kill_all(&self) {
        let mut groups = self.lock();
        groups.stopped = true;
        for group in &groups.running {
            kill_group(*group);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Groups> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the child's pipes and waits for it on threads: first reports
    /// the exit (as soon as the main process is reaped), then the output
    /// (when both pipes are closed).
    fn watch(&self, mut child: Child) -> Receiver<Event> {
        let (sender, events) = mpsc::channel();
        let limit = self.max_output_bytes;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        thread::spawn(move || {
            let stdout = thread::spawn(move || capture(stdout, limit));
            let stderr = thread::spawn(move || capture(stderr, limit));
            let exit = child
                .wait()
                .map_err(|error| format!("cannot wait: {error}"));
            // The receiver may be gone (run gave up); nothing to do then.
            let _ = sender.send(Event::Exited(exit));
            let stdout = stdout.join().unwrap_or_default();
            let stderr = stderr.join().unwrap_or_default();
            let _ = sender.send(Event::Output(stdout, stderr));
        });
        events
    }
}

enum Event {
    Exited(Result<ExitStatus, String>),
    Output(Captured, Captured),
}

#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Reads a pipe to its end, keeping the first `limit` bytes.
fn capture(pipe: Option<impl Read>, limit: usize) -> Captured {
    let Some(mut pipe) = pipe else {
        return Captured::default();
    };
    let mut captured = Captured::default();
    // A read error ends the capture early; what was read is still reported.
    let _ = pipe
        .by_ref()
        .take(limit as u64)
        .read_to_end(&mut captured.bytes);
    // Drain the rest so the script does not block on a full pipe.
    captured.truncated = io::copy(&mut pipe, &mut io::sink()).is_ok_and(|rest| rest > 0);
    captured
}

fn kill_group(group: i32) {
    // ESRCH: the group is already gone, which is what we want.
    let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
}

/// Kills what is left of a process group and reaps every member that is a
/// child of this process (with [`Runner::become_subreaper`], all of them).
fn reap_group(group: i32) {
    kill_group(group);
    loop {
        match waitpid(Pid::from_raw(-group), None) {
            Ok(_) | Err(Errno::EINTR) => {}
            // ECHILD: no child of ours is left in the group.
            Err(_) => return,
        }
    }
}
