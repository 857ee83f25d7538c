//! The embedded NATS server: when no URL is configured, the hub runs its own
//! `nats-server` child (JetStream on, store under the state directory,
//! loopback only) and restarts it if it dies. Its client URL is written to
//! `<state_dir>/nats.url` while it runs, so tools on the same host (the demo,
//! a subscriber, an operator) can find the free port it was given.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::error::HubError;

/// File in the hub's state directory holding the embedded server's client
/// URL (one line) while it runs.
pub const NATS_URL_FILE: &str = "nats.url";

/// How long a fresh server gets to accept clients.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A supervised `nats-server` child. Dropping it (or [`EmbeddedNats::stop`])
/// kills the server.
#[derive(Debug)]
pub struct EmbeddedNats {
    url: String,
    url_file: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EmbeddedNats {
    /// Starts `nats-server` with its store in `<state_dir>/nats` on a free
    /// loopback port and waits until it accepts clients.
    pub async fn start(state_dir: &Path) -> Result<Self, HubError> {
        let binary = find_nats_server().ok_or(HubError::NatsServerMissing)?;
        let store = state_dir.join("nats");
        let embedded_error = |reason: String| HubError::Embedded {
            store: store.clone(),
            reason,
        };
        std::fs::create_dir_all(&store)
            .map_err(|error| embedded_error(format!("cannot create the store: {error}")))?;
        let port = free_loopback_port()
            .map_err(|error| embedded_error(format!("no free loopback port: {error}")))?;
        let server = Server {
            binary,
            store: store.clone(),
            port,
        };
        let child = server.spawn().await.map_err(embedded_error)?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.supervise(child, stopped));
        let url = format!("nats://127.0.0.1:{port}");
        let url_file = state_dir.join(NATS_URL_FILE);
        // Written aside and renamed, so a reader never sees half a URL.
        let partial = state_dir.join(format!("{NATS_URL_FILE}.partial"));
        std::fs::write(&partial, format!("{url}\n"))
            .and_then(|()| std::fs::rename(&partial, &url_file))
            .map_err(|error| {
                embedded_error(format!("cannot write {}: {error}", url_file.display()))
            })?;
        tracing::info!(port, store = %store.display(), url_file = %url_file.display(), "embedded nats-server running");
        Ok(Self {
            url,
            url_file,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The server's client URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server and waits until it is gone.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EmbeddedNats {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The URL stops being valid with the server; a stale file would send
        // tools to a port someone else may own by now.
        let _ = std::fs::remove_file(&self.url_file);
    }
}

#[derive(Debug)]
struct Server {
    binary: PathBuf,
    store: PathBuf,
    port: u16,
}

impl Server {
    async fn spawn(&self) -> Result<Child, String> {
        let log = std::fs::File::create(self.store.join("nats-server.log"))
            .map_err(|error| format!("cannot create its log: {error}"))?;
        let mut child = Command::new(&self.binary)
            .args([
                "--addr",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--jetstream",
            ])
            .arg("--store_dir")
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: a Ctrl-C in the hub's terminal must reach
            // only the hub, which then stops the server in order, instead of
            // killing the server mid-shutdown and having it "restarted".
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| format!("cannot run {}: {error}", self.binary.display()))?;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "exited at start with {status}; {}",
                    self.log_tail()
                ));
            }
            if accepts_clients(self.port).await {
                return Ok(child);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!(
            "not ready after {READY_TIMEOUT:?}; {}",
            self.log_tail()
        ))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.store.join("nats-server.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        format!(
            "its log ends with: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    }

    /// Restarts the server (same port, same store) whenever it exits, with
    /// a growing delay, until told to stop.
    async fn supervise(self, mut child: Child, mut stop: oneshot::Receiver<()>) {
        let mut delay = Duration::from_millis(100);
        loop {
            tokio::select! {
                _ = &mut stop => {
                    let _ = child.kill().await;
                    return;
                }
                status = child.wait() => {
                    tracing::error!(?status, "embedded nats-server exited; restarting in {delay:?}");
                }
            }
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
                match self.spawn().await {
                    Ok(restarted) => {
                        child = restarted;
                        break;
                    }
                    Err(error) => tracing::error!(%error, "embedded nats-server restart failed"),
                }
            }
        }
    }
}

/// Whether a `nats-server` on this loopback port is ready: it greets a new
/// connection with its `INFO` line within a second. Test harnesses use it too.
pub async fn accepts_clients(port: u16) -> bool {
    let greeting = async {
        let mut stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .ok()?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.ok()?;
        Some(buf)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), greeting).await,
        Ok(Some(buf)) if &buf == b"INFO"
    )
}

/// A loopback port that was free a moment ago (the OS picks it; another
/// process may still take it before the caller binds). Test harnesses and the
/// benchmarks use it too.
pub fn free_loopback_port() -> std::io::Result<u16> {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|probe| probe.local_addr())
        .map(|addr| addr.port())
}

/// `nats-server` on `PATH`, or where Debian installs it (`/usr/sbin`, which is
/// not on every user's `PATH`).
pub fn find_nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}
