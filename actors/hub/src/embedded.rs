//! The embedded NATS server: when no URL is configured, the hub runs its own
//! `nats-server` (JetStream on, store under the state directory, loopback
//! only) as a supervised child of its tree, `hub/nats/server`, restarted with
//! the tree's backoff whenever it dies. Its client URL is written to
//! `<state_dir>/nats.url` while the hub runs, so tools on the same host (the
//! demo, a subscriber, an operator) can find the free port it was given.
//!
//! Only the hub's two NKey users may connect (see [`crate::nats_auth`]); the
//! server reads them from `<state_dir>/nats/server.conf`, rewritten at every
//! start.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use actix::prelude::*;
use herd_supervision::{Backoff, ChildSpec, Intensity, Supervisor, SupervisorSpec, stop_abnormal};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::error::HubError;
use crate::nats_auth::{EmbeddedUsers, reader_nkey_file};

/// File in the hub's state directory holding the embedded server's client
/// URL (one line) while it runs.
pub const NATS_URL_FILE: &str = "nats.url";

/// The server's configuration file in its store directory.
const SERVER_CONFIG_FILE: &str = "server.conf";

/// Child id of the embedded server's supervisor under the hub's root.
pub(crate) const NATS: &str = "nats";
/// Child id of the server process under [`NATS`].
const SERVER: &str = "server";

/// How long the server gets to stop after SIGTERM (JetStream flushes its
/// store) before the supervisor kills it.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how the embedded server runs; fixed for the life of the hub, so
/// a restarted server has the same port and store and clients reconnect to it.
#[derive(Debug, Clone)]
pub(crate) struct EmbeddedNats {
    binary: PathBuf,
    store: PathBuf,
    server_config: PathBuf,
    port: u16,
    url_file: PathBuf,
}

impl EmbeddedNats {
    /// Finds `nats-server`, creates its store in `<state_dir>/nats`, its
    /// users (once) and configuration (letting the read-only user consume
    /// `stream`), picks a free loopback port and publishes the URL in
    /// `<state_dir>/nats.url`.
    pub(crate) fn prepare(state_dir: &Path, stream: &str) -> Result<Self, HubError> {
        let binary = find_nats_server().ok_or(HubError::NatsServerMissing)?;
        let store = state_dir.join("nats");
        let embedded_error = |reason: String| HubError::Embedded {
            store: store.clone(),
            reason,
        };
        std::fs::create_dir_all(&store)
            .map_err(|error| embedded_error(format!("cannot create the store: {error}")))?;
        let users = EmbeddedUsers::load_or_create(state_dir)?;
        let server_config = store.join(SERVER_CONFIG_FILE);
        herd_tls::write_file_atomically(
            &server_config,
            users.server_config(stream).as_bytes(),
            0o600,
        )
        .map_err(|error| {
            embedded_error(format!("cannot write {}: {error}", server_config.display()))
        })?;
        tracing::info!(
            "subscribers connect with the read-only NKey in {}",
            reader_nkey_file(state_dir).display()
        );
        let port = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .and_then(|probe| probe.local_addr())
            .map(|addr| addr.port())
            .map_err(|error| embedded_error(format!("no free loopback port: {error}")))?;
        let embedded = Self {
            binary,
            store: store.clone(),
            server_config,
            port,
            url_file: state_dir.join(NATS_URL_FILE),
        };
        // Written aside and renamed, so a reader never sees half a URL.
        let partial = state_dir.join(format!("{NATS_URL_FILE}.partial"));
        std::fs::write(&partial, format!("{}\n", embedded.url()))
            .and_then(|()| std::fs::rename(&partial, &embedded.url_file))
            .map_err(|error| {
                embedded_error(format!(
                    "cannot write {}: {error}",
                    embedded.url_file.display()
                ))
            })?;
        Ok(embedded)
    }

    /// The server's client URL.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The error for a server that did not come up: `reason` and its log.
    pub(crate) fn start_error(&self, reason: String) -> HubError {
        HubError::Embedded {
            store: self.store.clone(),
            reason: format!("{reason}; {}", self.log_tail()),
        }
    }

    /// The `nats` supervisor with the server process as its one child. It
    /// keeps restarting the server (same port, same store) with a backoff
    /// up to 10 s; the restarts never add up to its intensity, so a server
    /// that cannot run is retried, not given up on.
    pub(crate) fn child_spec(&self, client: async_nats::Client) -> ChildSpec<Supervisor> {
        let server = self.clone();
        ChildSpec::supervisor(NATS, move || {
            let (server, client) = (server.clone(), client.clone());
            SupervisorSpec::new(NATS)
                .backoff(
                    Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10), 0.2)
                        .expect("constant backoff parameters are valid"),
                )
                .intensity(
                    Intensity::new(20, Duration::from_secs(60))
                        .expect("constant intensity parameters are valid"),
                )
                .child(
                    ChildSpec::try_new(SERVER, move || {
                        server.spawn().map(|child| NatsServer {
                            child: Some(child),
                            pid: None,
                            exited: false,
                            log: server.store.join("nats-server.log"),
                            client: client.clone(),
                        })
                    })
                    .shutdown_timeout(STOP_TIMEOUT),
                )
        })
    }

    fn spawn(&self) -> Result<Child, String> {
        let log = std::fs::File::create(self.store.join("nats-server.log"))
            .map_err(|error| format!("cannot create its log: {error}"))?;
        Command::new(&self.binary)
            .arg("-c")
            .arg(&self.server_config)
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
            .map_err(|error| format!("cannot run {}: {error}", self.binary.display()))
    }

    fn log_tail(&self) -> String {
        log_tail(&self.store.join("nats-server.log"))
    }

    /// Removes the URL file when dropped.
    pub(crate) fn url_file_guard(&self) -> UrlFile {
        UrlFile(self.url_file.clone())
    }
}

/// Removes `nats.url` when the hub goes: the URL stops being valid with the
/// server, and a stale file would send tools to a port someone else may own
/// by now.
#[derive(Debug)]
pub(crate) struct UrlFile(PathBuf);

impl Drop for UrlFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn log_tail(log: &Path) -> String {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(5).collect();
    format!(
        "its log ends with: {}",
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    )
}

/// The running `nats-server` process, owned by this actor alone. It exits
/// abnormally (and is restarted) when the process dies; asked to stop, it
/// flushes the hub's client, sends SIGTERM and waits for the process.
#[derive(Debug)]
struct NatsServer {
    child: Option<Child>,
    pid: Option<Pid>,
    exited: bool,
    log: PathBuf,
    client: async_nats::Client,
}

impl Actor for NatsServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        self.pid = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw);
        tracing::info!(pid = ?self.pid, "embedded nats-server running");
        // The wait owns the process: if this actor is killed, dropping the
        // future kills the process too.
        ctx.spawn(
            async move { child.wait().await }
                .into_actor(self)
                .map(|status, act, ctx| {
                    act.exited = true;
                    let status = match status {
                        Ok(status) => status.to_string(),
                        Err(error) => format!("unknown status ({error})"),
                    };
                    if act.pid.take().is_some() {
                        let reason =
                            format!("nats-server exited with {status}; {}", log_tail(&act.log));
                        stop_abnormal(ctx, reason);
                    } else {
                        ctx.stop();
                    }
                }),
        );
    }

    fn stopping(&mut self, ctx: &mut Context<Self>) -> Running {
        if self.exited {
            return Running::Stop;
        }
        if let Some(pid) = self.pid.take() {
            // What the hub published last reaches the server before it stops.
            let client = self.client.clone();
            ctx.spawn(
                async move {
                    let _ = tokio::time::timeout(STOP_TIMEOUT / 2, client.flush()).await;
                }
                .into_actor(self)
                .map(move |(), _, _| {
                    if let Err(error) = kill(pid, Signal::SIGTERM) {
                        tracing::warn!(%error, "cannot signal the embedded nats-server");
                    }
                }),
            );
        }
        Running::Continue
    }
}

/// `nats-server` on `PATH`, or where Debian installs it (`/usr/sbin`, which is
/// not on every user's `PATH`): the binary the embedded server runs.
pub fn find_nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}
