//! A real `nats-server` for one test: free loopback port, JetStream on, its own
//! store directory, killed when dropped. [`NatsCluster`] is several of them
//! routed into one cluster with clustered JetStream.

mod cluster;

pub use cluster::NatsCluster;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a freshly spawned server gets to accept clients.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The `cluster { name }` of every [`NatsCluster`].
const CLUSTER_NAME: &str = "herd-test";
/// Attempts at finding a free port (another process can take the one we picked
/// between our probe and the server's bind).
const START_ATTEMPTS: usize = 3;

/// What went wrong while starting or reaching the test `nats-server`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// The binary is not installed.
    #[error(
        "nats-server not found on PATH, /usr/sbin or /usr/bin; run scripts/ensure-deps \
         (or `apt-get install nats-server`)"
    )]
    NatsServerMissing,
    /// Spawning or talking to the process failed.
    #[error("{what}: {source}")]
    Io {
        /// What the harness was doing.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The server did not accept clients in time.
    #[error("nats-server on port {port} not ready after {timeout:?}; its log:\n{log}")]
    NotReady {
        /// The port it was started on.
        port: u16,
        /// How long we waited.
        timeout: Duration,
        /// The server's own output.
        log: String,
    },
    /// A [`NatsCluster`] did not form in time: not every running node had
    /// routes to all the others, agreed on a JetStream meta leader and
    /// answered JetStream requests.
    #[error(
        "nats cluster not formed after {timeout:?}; last seen:\n{status}\nnode logs (tail):\n{logs}"
    )]
    ClusterNotFormed {
        /// How long we waited.
        timeout: Duration,
        /// What each node reported last (routes, meta leader, JetStream).
        status: String,
        /// The end of each node's log.
        logs: String,
    },
    /// Too few nodes of a [`NatsCluster`] are up for its JetStream to have a
    /// quorum (a majority), so it cannot form.
    #[error("only {up} of the {nodes} nats cluster nodes are up: no quorum")]
    NoQuorum {
        /// Nodes started and not stopped.
        up: usize,
        /// Nodes in the cluster.
        nodes: usize,
    },
    /// The client could not connect.
    #[error("connecting a client to {url}: {source}")]
    Connect {
        /// The server URL.
        url: String,
        /// The client's error.
        source: async_nats::ConnectError,
    },
}

/// A `nats-server` child process owned by a test.
///
/// The server keeps its port and store across [`NatsServer::stop`] and
/// [`NatsServer::restart`], so tests can simulate an outage and a recovery the
/// way clients see it.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    /// The configuration file the server reads (`-c`), when it has one.
    config: Option<PathBuf>,
    /// How this server joins a [`NatsCluster`], when it is a node of one.
    cluster: Option<ClusterRole>,
    child: Option<Child>,
}

/// A cluster node's settings on top of a lone server's: they end up in its
/// configuration file, the rest (client port, JetStream, store) is the same
/// command line as for any [`NatsServer`].
#[derive(Debug, Clone)]
struct ClusterRole {
    /// Unique per node: clustered JetStream names its RAFT peers by it.
    server_name: String,
    route_port: u16,
    monitor_port: u16,
    /// The route ports of all the other nodes.
    peer_route_ports: Vec<u16>,
}

impl ClusterRole {
    fn config_text(&self) -> String {
        let routes = self
            .peer_route_ports
            .iter()
            .map(|port| format!("\"nats-route://127.0.0.1:{port}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "server_name: \"{name}\"\n\
             http: \"127.0.0.1:{monitor}\"\n\
             cluster {{\n  name: \"{CLUSTER_NAME}\"\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n",
            name = self.server_name,
            monitor = self.monitor_port,
            route = self.route_port,
        )
    }
}

impl NatsServer {
    /// Starts a server with JetStream on a free loopback port and waits until
    /// it accepts clients.
    pub async fn start() -> Result<Self, HarnessError> {
        Self::start_inner(None).await
    }

    /// Like [`NatsServer::start`], with `config` as its configuration file
    /// (nats-server's format, or JSON), e.g. an `authorization` block. The
    /// port, JetStream and the store stay the harness's; [`NatsServer::client`]
    /// connects without credentials, so a test of a server that asks for them
    /// connects its own clients.
    pub async fn start_with_config(config: &str) -> Result<Self, HarnessError> {
        Self::start_inner(Some(config)).await
    }

    async fn start_inner(config: Option<&str>) -> Result<Self, HarnessError> {
        let binary = find_nats_server()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_loopback_port()
                .map_err(|source| io_error("probing for a free port", source))?;
            match Self::start_once(&binary, port, config.map(str::to_owned), None).await {
                Ok(server) => return Ok(server),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.expect("at least one attempt ran"))
    }

    /// One attempt at a server on `port`: a fresh store directory, `config`
    /// (or the cluster role's) written there, spawned, waited for. A lone
    /// server and a cluster node differ only in the configuration text.
    async fn start_once(
        binary: &Path,
        port: u16,
        config: Option<String>,
        cluster: Option<ClusterRole>,
    ) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("herd-nats-")
            .tempdir()
            .map_err(|source| io_error("creating the store directory", source))?;
        let text = config.or_else(|| cluster.as_ref().map(ClusterRole::config_text));
        let config = match text {
            Some(text) => {
                let path = dir.path().join("server.conf");
                std::fs::write(&path, text)
                    .map_err(|source| io_error("writing the server configuration", source))?;
                Some(path)
            }
            None => None,
        };
        let mut server = Self {
            binary: binary.to_owned(),
            port,
            dir,
            config,
            cluster,
            child: None,
        };
        server.spawn_and_wait().await?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `server_name` of a [`NatsCluster`] node (what JetStream reports
    /// as a stream's leader or replica); `None` for a lone server.
    pub fn server_name(&self) -> Option<&str> {
        self.cluster.as_ref().map(|role| role.server_name.as_str())
    }

    /// The route (cluster) port of a [`NatsCluster`] node.
    pub fn route_port(&self) -> Option<u16> {
        self.cluster.as_ref().map(|role| role.route_port)
    }

    /// The HTTP monitoring port (`/routez`, `/jsz`) of a [`NatsCluster`] node.
    pub fn monitor_port(&self) -> Option<u16> {
        self.cluster.as_ref().map(|role| role.monitor_port)
    }

    /// The last `lines` lines of the server's output (of its current run:
    /// a restart starts a new log).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A connected client.
    pub async fn client(&self) -> Result<async_nats::Client, HarnessError> {
        let url = self.url();
        async_nats::connect(&url)
            .await
            .map_err(|source| HarnessError::Connect { url, source })
    }

    /// Kills the server (`SIGKILL`, as in a crash) and reaps it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already-exited is fine: the point is that it is gone.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        self.spawn_and_wait().await
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Whether the test has the server up: started and not [`stop`]ped
    /// (unlike [`NatsServer::is_running`], a crash does not count, and it
    /// needs no `&mut`).
    ///
    /// [`stop`]: NatsServer::stop
    fn is_started(&self) -> bool {
        self.child.is_some()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    async fn spawn_and_wait(&mut self) -> Result<(), HarnessError> {
        let log = std::fs::File::create(self.log_path())
            .map_err(|source| io_error("creating the server log", source))?;
        let log_err = log
            .try_clone()
            .map_err(|source| io_error("creating the server log", source))?;
        let mut command = Command::new(&self.binary);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args(["--addr", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--jetstream")
            .arg("--store_dir")
            .arg(self.dir.path().join("jetstream"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| io_error("spawning nats-server", source))?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if !self.is_running() {
                break;
            }
            if accepts_clients(self.port).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop();
        Err(HarnessError::NotReady {
            port: self.port,
            timeout: READY_TIMEOUT,
            log: std::fs::read_to_string(self.log_path()).unwrap_or_default(),
        })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds `nats-server` on `PATH`, then where Debian installs it.
pub fn find_nats_server() -> Result<PathBuf, HarnessError> {
    herd_hub::find_nats_server().ok_or(HarnessError::NatsServerMissing)
}

/// A loopback port that was free a moment ago (the OS picks it; another
/// process may still take it before the caller binds).
pub fn free_loopback_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|probe| probe.local_addr())
        .map(|addr| addr.port())
}

/// Whether a `nats-server` on this loopback port is ready: it greets a new
/// connection with its `INFO` line within a second.
pub async fn accepts_clients(port: u16) -> bool {
    use tokio::io::AsyncReadExt;
    let greeting = async {
        let mut stream = tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
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

fn io_error(what: &str, source: std::io::Error) -> HarnessError {
    HarnessError::Io {
        what: what.to_owned(),
        source,
    }
}
