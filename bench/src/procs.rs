//! Child processes (hub, baseline server, agent) and what `/proc` says about them.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::BenchError;

/// The binaries the bench drives, as (binary, package).
const BINARIES: [(&str, &str); 4] = [
    ("herd-hub", "herd-hub-bin"),
    ("herd-agent", "herd-agent-bin"),
    ("herd-sysmetrics", "herd-plugin-sysmetrics"),
    ("herd-logtail", "herd-plugin-logtail"),
];
/// Built together with the others; listed apart to keep the table above short.
const EXEC: (&str, &str) = ("herd-exec", "herd-plugin-exec");

/// Where the workspace binaries live: next to this executable, built with the
/// same profile so a release bench never measures a debug hub.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// Finds the binaries, building them with `cargo` (same profile and
    /// target directory as this executable) when one is missing, or always
    /// when `rebuild` is set so a stale one is never measured.
    pub(crate) fn locate(rebuild: bool) -> Result<Self, BenchError> {
        let exe = std::env::current_exe().map_err(BenchError::io("locating herd-bench"))?;
        let dir = exe
            .parent()
            .ok_or_else(|| BenchError::Process(format!("{} has no directory", exe.display())))?
            .to_path_buf();
        let all = BINARIES.iter().chain(std::iter::once(&EXEC));
        let missing = all.clone().any(|(bin, _)| !dir.join(bin).exists());
        if rebuild || missing {
            let target = dir
                .parent()
                .ok_or_else(|| BenchError::Process(format!("{} has no parent", dir.display())))?;
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut command = Command::new(cargo);
            command
                .args(["build", "--quiet"])
                .env("CARGO_TARGET_DIR", target);
            if dir.file_name().is_some_and(|name| name == "release") {
                command.arg("--release");
            }
            for (bin, package) in all {
                command.args(["-p", package, "--bin", bin]);
            }
            eprintln!("herd-bench: building the hub, agent and plugins ({command:?})");
            let status = command
                .status()
                .map_err(BenchError::io("running cargo build"))?;
            if !status.success() {
                return Err(BenchError::Process(format!("cargo build failed: {status}")));
            }
        }
        Ok(Self { dir })
    }

    /// The path of binary `name`.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A loopback port nothing listens on right now.
pub(crate) fn free_port() -> Result<u16, BenchError> {
    herd_tests::nats::free_loopback_port().map_err(BenchError::io("probing a free port"))
}

/// A TCP server run as a child process on a fixed loopback port, so it can be
/// killed and started again where its clients expect it.
#[derive(Debug)]
pub(crate) struct Server {
    name: String,
    command: Vec<std::ffi::OsString>,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Server {
    /// Starts `program args...` (which must listen on `port`) and waits until
    /// it accepts connections. Its stderr goes to `log`.
    pub(crate) fn start(
        name: &str,
        program: &Path,
        args: Vec<String>,
        port: u16,
        log: PathBuf,
    ) -> Result<Self, BenchError> {
        let mut command = vec![program.as_os_str().to_owned()];
        command.extend(args.into_iter().map(Into::into));
        let mut server = Self {
            name: name.to_owned(),
            command,
            log,
            port,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Where clients connect.
    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The process id, while running.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `SIGKILL`, as in a crash, and reap.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already exited is fine: the point is that it is gone.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub(crate) fn restart(&mut self) -> Result<(), BenchError> {
        self.kill();
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), BenchError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(BenchError::io(format!("opening {}", self.log.display())))?;
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(BenchError::io(format!("starting the {}", self.name)))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect(self.addr()).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(BenchError::Process(format!(
                    "the {} exited at start ({status}); its log: {}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )));
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout {
                    what: format!("the {} to listen on port {}", self.name, self.port),
                    after: Duration::from_secs(15),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A child process killed and reaped when dropped.
#[derive(Debug)]
pub(crate) struct Reaped(pub(crate) Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `VmRSS` of `pid` in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<u64, BenchError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(BenchError::io(format!("reading /proc/{pid}/status")))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| BenchError::Process(format!("no VmRSS in /proc/{pid}/status")))
}

/// Connections the kernel dropped because a listen queue was full, machine
/// wide (`ListenOverflows` of `TcpExt` in `/proc/net/netstat`).
pub(crate) fn listen_overflows() -> Result<u64, BenchError> {
    let netstat = std::fs::read_to_string("/proc/net/netstat")
        .map_err(BenchError::io("reading /proc/net/netstat"))?;
    // Each group is two lines: "TcpExt: Name1 Name2 ..." then "TcpExt: 1 2 ...".
    let mut tcp_ext = netstat.lines().filter(|line| line.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (tcp_ext.next(), tcp_ext.next()) else {
        return Err(BenchError::Process("no TcpExt in /proc/net/netstat".into()));
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .ok_or_else(|| BenchError::Process("no ListenOverflows in /proc/net/netstat".into()))
}

/// The fields of `/proc/<pid>/stat` after the command name, starting with state.
fn stat_fields(pid: u32) -> Result<Vec<String>, BenchError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(BenchError::io(format!("reading /proc/{pid}/stat")))?;
    // The command name may hold spaces and parentheses; it ends at the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| BenchError::Process(format!("malformed /proc/{pid}/stat")))?;
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

/// User plus system CPU time of `pid`, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64, BenchError> {
    let fields = stat_fields(pid)?;
    // utime and stime are fields 14 and 15 of stat(5); state is field 3.
    let tick = |index: usize| {
        fields
            .get(index)
            .and_then(|value| value.parse::<u64>().ok())
    };
    match (tick(11), tick(12)) {
        (Some(user), Some(system)) => Ok(user + system),
        _ => Err(BenchError::Process(format!("malformed /proc/{pid}/stat"))),
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub(crate) fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |ticks| ticks as f64)
}

/// The direct children of `parent`, as (pid, command name).
pub(crate) fn children(parent: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between listing and reading; skip it.
        let Ok(fields) = stat_fields(pid) else {
            continue;
        };
        if fields.get(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(parent) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_owned()));
        }
    }
    found
}

/// Raises the soft open-files limit to the hard one (children inherit it);
/// returns the soft limit now in force.
pub(crate) fn raise_nofile() -> Result<u64, BenchError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|errno| BenchError::Process(format!("getrlimit(NOFILE): {errno}")))?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(|errno| BenchError::Process(format!("setrlimit(NOFILE, {hard}): {errno}")))?;
    }
    Ok(hard.max(soft))
}
