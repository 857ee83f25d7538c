//! Workspace binaries as child processes owned by a test: each in its own
//! process group, its output appended to a log file, killed with everything
//! it started (`SIGKILL`, as in a crash) on [`Process::kill`] and on drop.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// What went wrong while running the deployment under test.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum E2eError {
    /// A workspace binary has not been built.
    #[error("{name} not found at {}; run `cargo build --workspace` first", path.display())]
    BinaryMissing {
        /// The binary's name.
        name: String,
        /// Where it was expected.
        path: PathBuf,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the harness was doing.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A condition did not hold in time.
    #[error("{what}: not reached within {waited:?}; last seen: {detail}")]
    Timeout {
        /// The awaited condition.
        what: String,
        /// How long the harness waited.
        waited: Duration,
        /// The last observed state.
        detail: String,
    },
    /// A configuration could not be written.
    #[error("encoding a configuration: {0}")]
    Config(#[from] toml::ser::Error),
    /// The hub's TLS material could not be read.
    #[error("the hub's TLS: {0}")]
    Tls(#[from] herd_tls::TlsError),
    /// A NATS operation failed.
    #[error("{what}: {reason}")]
    Nats {
        /// What the harness was doing.
        what: String,
        /// The client's error.
        reason: String,
    },
}

/// Wraps an I/O error with what the harness was doing.
pub(crate) fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> E2eError {
    let what = what.into();
    move |source| E2eError::Io { what, source }
}

/// The path of workspace binary `name`, next to the running test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`).
pub fn workspace_binary(name: &str) -> Result<PathBuf, E2eError> {
    let exe = std::env::current_exe().map_err(io_error("locating the test executable"))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(E2eError::BinaryMissing {
            name: name.to_owned(),
            path,
        })
    }
}

/// A child process in its own process group, restartable with the same
/// command line, logging stdout and stderr to one file.
#[derive(Debug)]
pub struct Process {
    name: String,
    binary: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// Starts `binary` with `args` and `env`, appending its output to `log`.
    pub fn spawn(
        name: &str,
        binary: PathBuf,
        args: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        log: PathBuf,
    ) -> Result<Self, E2eError> {
        let mut process = Self {
            name: name.to_owned(),
            binary,
            args,
            env,
            log,
            child: None,
        };
        process.start()?;
        Ok(process)
    }

    /// The name given at spawn (used in logs and errors).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The log file (stdout and stderr of every run, appended).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills the process and every process it started (`SIGKILL`), reaps it,
    /// and returns the ids of everything that was killed. Idempotent.
    pub fn kill(&mut self) -> Vec<u32> {
        let Some(mut child) = self.child.take() else {
            return Vec::new();
        };
        let killed = kill_tree(child.id());
        // Already-exited is fine: the point is that it is gone.
        let _ = child.kill();
        let _ = child.wait();
        self.note(&format!("killed (SIGKILL): {killed:?}"));
        killed
    }

    /// Kills the process (as [`Process::kill`]) and starts it again with the
    /// same command line.
    pub fn restart(&mut self) -> Result<Vec<u32>, E2eError> {
        let killed = self.kill();
        self.start()?;
        Ok(killed)
    }

    fn start(&mut self) -> Result<(), E2eError> {
        self.note(&format!("starting {}", self.binary.display()));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io_error(format!("opening {}", self.log.display())))?;
        let log_err = log
            .try_clone()
            .map_err(io_error(format!("opening {}", self.log.display())))?;
        let child = Command::new(&self.binary)
            .args(&self.args)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own group, so killing it never reaches the test runner.
            .process_group(0)
            .spawn()
            .map_err(io_error(format!("spawning {}", self.binary.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// A harness line in the log, so a reader sees where each run begins.
    fn note(&self, line: &str) {
        if let Ok(mut log) = OpenOptions::new().create(true).append(true).open(&self.log) {
            let _ = writeln!(log, "==== herd-tests: {}: {line}", self.name);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `(parent pid, process group)` of `pid` from `/proc/<pid>/stat`; `None`
/// when it does not exist or is a zombie (dead, only waiting to be reaped).
fn proc_stat(pid: u32) -> Option<(u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: parse after the last ')'.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let ppid = rest.next()?.parse().ok()?;
    let pgid = rest.next()?.parse().ok()?;
    Some((ppid, pgid))
}

/// Whether `pid` is a live (not zombie) process.
pub fn is_alive(pid: u32) -> bool {
    proc_stat(pid).is_some()
}

/// Every live descendant of `root` (children, their children, ...).
pub fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| proc_stat(pid).map(|(ppid, _)| (pid, ppid)))
        .collect();
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        found.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        next += 1;
    }
    found.remove(0);
    found
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            String::from_utf8_lossy(&raw)
                .replace('\0', " ")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// Kills `root` and all its descendants, also those in process groups of
/// their own (plugins, scripts). Everything is stopped first (`SIGSTOP`) so
/// nothing can start new processes between the look-up and the kill.
fn kill_tree(root: u32) -> Vec<u32> {
    let mut pids: BTreeSet<u32> = BTreeSet::from([root]);
    loop {
        for &pid in &pids {
            signal_group_and_process(pid, Signal::SIGSTOP);
        }
        let before = pids.len();
        pids.extend(descendants(root));
        if pids.len() == before {
            break;
        }
    }
    for &pid in &pids {
        signal_group_and_process(pid, Signal::SIGKILL);
    }
    pids.into_iter().collect()
}

/// Sends `signal` to `pid` and, when it leads a process group, to the group.
fn signal_group_and_process(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if proc_stat(pid).is_some_and(|(_, pgid)| pgid == pid) {
        let _ = killpg(Pid::from_raw(raw), signal);
    }
    let _ = kill(Pid::from_raw(raw), signal);
}

/// Waits until none of `pids` is alive, at most `timeout`.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> Result<(), E2eError> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<String> = pids
            .iter()
            .filter(|&&pid| is_alive(pid))
            .map(|&pid| format!("{pid} ({})", cmdline(pid)))
            .collect();
        if alive.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(E2eError::Timeout {
                what: "killed processes to be gone".to_owned(),
                waited: timeout,
                detail: alive.join(", "),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Resident set size of process `pid` in bytes (`VmRSS` in `/proc/<pid>/status`),
/// if it runs.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use super::{E2eError, Process, descendants, is_alive, wait_gone, workspace_binary};

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let error = workspace_binary("herd-no-such-binary").unwrap_err();
        assert!(matches!(error, E2eError::BinaryMissing { .. }));
        assert!(
            error.to_string().contains("cargo build --workspace"),
            "{error}"
        );
    }

    #[test]
    fn kill_reaches_grandchildren_in_their_own_process_group() {
        let dir = tempfile::tempdir().unwrap();
        // The grandchild leaves the group with setsid, as plugins and exec
        // scripts do with their own process groups.
        let mut process = Process::spawn(
            "sh",
            PathBuf::from("/bin/sh"),
            vec!["-c".into(), "setsid sleep 30 & exec sleep 30".into()],
            Vec::new(),
            dir.path().join("sh.log"),
        )
        .unwrap();
        let root = process.pid().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while descendants(root).is_empty() {
            assert!(Instant::now() < deadline, "the grandchild never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        let grandchild = descendants(root)[0];
        let killed = process.kill();
        assert!(
            killed.contains(&root) && killed.contains(&grandchild),
            "{killed:?}"
        );
        wait_gone(&killed, Duration::from_secs(5)).unwrap();
        assert!(!is_alive(grandchild));
        assert!(!process.is_running());
        assert!(process.log_tail(5).contains("killed (SIGKILL)"));
    }
}
