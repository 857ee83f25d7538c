//! Test support for the agent's integration tests: the scripted hub (from
//! `herd-tests`), the agent binary as a child process, a test plugin, and
//! /proc checks for zombies.
#![allow(dead_code, unreachable_pub, unused_imports)] // each test file uses a different part

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use herd_codec::proto::Record;
use tokio::process::{Child, Command as Process};

pub use herd_tests::script::{ScriptedHub, WAIT};

/// The test plugin script, copied into `dir`.
pub fn write_plugin(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("plugin.py");
    std::fs::write(&path, include_str!("plugin.py")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A `[[plugins]]` table for the test plugin.
pub fn plugin_toml(name: &str, path: &Path, mode: &str, extra: &str) -> String {
    format!(
        "[[plugins]]\nname = \"{name}\"\npath = \"{}\"\nargs = [\"{mode}\"]\nstop_grace_ms = 1000\n{extra}\n",
        path.display()
    )
}

/// An agent configuration with one test plugin `name` in `mode`, the
/// plugin script written into `dir`, which is also the state directory.
pub fn one_plugin_config(hub: SocketAddr, dir: &Path, name: &str, mode: &str) -> String {
    let plugin = write_plugin(dir);
    agent_toml(hub, dir, &plugin_toml(name, &plugin, mode, ""))
}

/// An agent configuration for tests: fast heartbeats and reconnects.
pub fn agent_toml(hub: SocketAddr, state_dir: &Path, plugins: &str) -> String {
    format!(
        "hubs = [\"{hub}\"]\nstate_dir = \"{}\"\nheartbeat_interval_secs = 1\n\
         shutdown_timeout_ms = 3000\n\
         [reconnect]\nmin_backoff_ms = 100\nmax_backoff_ms = 400\n\
         [tls]\ninsecure = true\n{plugins}",
        state_dir.display()
    )
}

/// The agent binary running as a child of the test.
pub struct AgentProcess {
    child: Child,
    pub pid: u32,
}

impl AgentProcess {
    /// Writes `config` to `<dir>/agent.toml` and starts the agent with it.
    pub fn start(dir: &Path, config: &str) -> Self {
        Self::spawn(dir, config, "warn", Stdio::inherit())
    }

    /// Like [`start`](Self::start), with the agent's log (stderr, level
    /// `info`) appended to `log` instead of the test's output.
    pub fn start_logged(dir: &Path, config: &str, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|error| panic!("open {}: {error}", log.display()));
        Self::spawn(dir, config, "info", Stdio::from(file))
    }

    fn spawn(dir: &Path, config: &str, level: &str, stderr: Stdio) -> Self {
        let path = dir.join("agent.toml");
        std::fs::write(&path, config).unwrap();
        let child = Process::new(env!("CARGO_BIN_EXE_herd-agent"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn herd-agent");
        let pid = child.id().unwrap();
        Self { child, pid }
    }

    pub fn sigterm(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    /// kill -9: the agent gets no chance to stop anything.
    pub fn sigkill(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }

    /// Waits (bounded) for the agent to exit on its own.
    pub async fn exit_status(&mut self) -> ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("agent exits in time")
            .unwrap()
    }

    /// SIGTERM, then the exit status.
    pub async fn stop(mut self) -> ExitStatus {
        self.sigterm();
        self.exit_status().await
    }
}

/// `(pid, state, ppid)` of a process from /proc, if it exists.
pub fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Children of `parent` that are zombies.
pub fn zombies_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|(state, ppid)| state == 'Z' && ppid == parent))
        .collect()
}

pub fn assert_no_zombies(parent: u32) {
    let zombies = zombies_of(parent);
    assert!(
        zombies.is_empty(),
        "zombie children of {parent}: {zombies:?}"
    );
}

/// Whether `pid` is a live (non-zombie) process.
pub fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z')
}

/// Lines of a plugin's `started` file (one pid per start).
pub fn starts(state_dir: &Path, plugin: &str) -> Vec<String> {
    std::fs::read_to_string(state_dir.join("plugins").join(plugin).join("started"))
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A 2000 "start" record of `plugin`.
pub fn is_start(record: &Record, plugin: &str) -> bool {
    record.source == plugin
        && record.data_type == 2000
        && record.fields.get("event").map(String::as_str) == Some("start")
}
