//! A real `herd-hub` process with a generated configuration, and waits on
//! its admin server (`/healthz`, `/agents`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use herd_agent::AgentTlsConfig;
use herd_hub::{AgentInfo, HubConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::process::{E2eError, Process, io_error, workspace_binary};

/// Starts of a hub that exited at once before giving up.
const START_ATTEMPTS: u32 = 3;

/// How often waits poll.
pub const POLL: Duration = Duration::from_millis(50);

/// A `herd-hub` child process. It keeps its ports across restarts, so agents
/// (and a [`crate::proxy::TcpProxy`] in front of it) find it again.
#[derive(Debug)]
pub struct HubProcess {
    process: Process,
    config: HubConfig,
    config_file: std::path::PathBuf,
}

impl HubProcess {
    /// Writes `config` to `<dir>/herd-hub.toml` and starts the hub with it.
    /// A `listen` or `admin` port of 0 is replaced by a free port first (the
    /// admin server is always on: the waits need it). The state directory is
    /// `<dir>/hub-state`.
    pub fn start(mut config: HubConfig, dir: &Path) -> Result<Self, E2eError> {
        if config.listen.port() == 0 {
            config.listen = free_loopback_addr()?;
        }
        match config.admin {
            Some(addr) if addr.port() != 0 => {}
            _ => config.admin = Some(free_loopback_addr()?),
        }
        config.state_dir = dir.join("hub-state");
        let path = dir.join("herd-hub.toml");
        std::fs::write(&path, toml::to_string(&config)?)
            .map_err(io_error(format!("writing {}", path.display())))?;
        let process = Process::spawn(
            "herd-hub",
            workspace_binary("herd-hub")?,
            vec!["--config".into(), path.clone().into()],
            vec![(
                "RUST_LOG".into(),
                "info,herd_hub=debug,herd_agent=debug,herd_supervision=debug".into(),
            )],
            dir.join("herd-hub.log"),
        )?;
        Ok(Self {
            process,
            config,
            config_file: path,
        })
    }

    /// An enrollment token for `uses` agents, valid for an hour, made as an
    /// operator makes one: `herd-hub --config FILE token create --quiet`.
    pub fn enrollment_token(&self, uses: u32) -> Result<String, E2eError> {
        let binary = workspace_binary("herd-hub")?;
        let output = std::process::Command::new(&binary)
            .arg("--config")
            .arg(&self.config_file)
            .args(["token", "create", "--ttl", "1h", "--quiet"])
            .arg(format!("--uses={uses}"))
            .output()
            .map_err(io_error("running herd-hub token create"))?;
        let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !output.status.success() || token.is_empty() {
            return Err(E2eError::Io {
                what: "herd-hub token create".to_owned(),
                source: std::io::Error::other(String::from_utf8_lossy(&output.stderr).into_owned()),
            });
        }
        Ok(token)
    }

    /// How an agent trusts this hub: by the fingerprint of the CA the hub
    /// created in its state directory, or plaintext for an insecure hub.
    /// Call it once the hub is ready (the CA exists from then on).
    pub fn agent_tls(&self) -> Result<AgentTlsConfig, E2eError> {
        if self.config.tls.insecure {
            return Ok(AgentTlsConfig::insecure());
        }
        let ca = self
            .config
            .state_dir
            .join(herd_hub::TLS_DIR)
            .join(herd_tls::CA_CERT_FILE);
        let fingerprint = herd_tls::Fingerprint::of_pem_file(&ca)?;
        Ok(AgentTlsConfig {
            ca_fingerprint: Some(fingerprint.to_string()),
            ..AgentTlsConfig::default()
        })
    }

    /// [`HubProcess::start`], then [`HubProcess::wait_ready`]. A hub that
    /// exits before it is ready (another process took one of its ports
    /// between the probe and the bind) is started again on new ports, up to
    /// three times.
    pub async fn start_ready(
        config: HubConfig,
        dir: &Path,
        timeout: Duration,
    ) -> Result<Self, E2eError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut hub = Self::start(config.clone(), dir)?;
            match hub.wait_ready(timeout).await {
                Ok(()) => return Ok(hub),
                Err(_) if attempts < START_ATTEMPTS && !hub.process.is_running() => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// The configuration it runs with (ports filled in).
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Where agents connect.
    pub fn listen_addr(&self) -> SocketAddr {
        self.config.listen
    }

    /// The admin server's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.config
            .admin
            .expect("start() always sets the admin address")
    }

    /// The process, for its pid, log and liveness.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// `kill -9`.
    pub fn kill(&mut self) -> Vec<u32> {
        self.process.kill()
    }

    /// `kill -9`, then the same hub again on the same ports.
    pub fn restart(&mut self) -> Result<(), E2eError> {
        self.process.restart().map(drop)
    }

    /// `GET path` on the admin server: the status code and the body.
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String), E2eError> {
        http_get(self.admin_addr(), path).await
    }

    /// Waits until `/healthz` answers 200 (the hub is up and reaches NATS).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), E2eError> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if !self.process.is_running() {
                last = "the hub exited".to_owned();
                break;
            }
            match self.admin_get("/healthz").await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => last = format!("{status} {}", body.trim()),
                Err(error) => last = error.to_string(),
            }
            tokio::time::sleep(POLL).await;
        }
        Err(E2eError::Timeout {
            what: "herd-hub /healthz to answer 200".to_owned(),
            waited: timeout,
            detail: format!("{last}; log:\n{}", self.process.log_tail(40)),
        })
    }

    /// The agents connected now, from `/agents`.
    pub async fn agents(&self) -> Result<Vec<AgentInfo>, E2eError> {
        let (status, body) = self.admin_get("/agents").await?;
        if status != 200 {
            return Err(E2eError::Io {
                what: format!("GET /agents answered {status}: {}", body.trim()),
                source: std::io::ErrorKind::Other.into(),
            });
        }
        serde_json::from_str(&body).map_err(|error| E2eError::Io {
            what: format!("decoding /agents ({body})"),
            source: error.into(),
        })
    }

    /// Waits until `/agents` lists exactly the agents `ids` (in any order).
    pub async fn wait_agents(
        &self,
        ids: &[&str],
        timeout: Duration,
    ) -> Result<Vec<AgentInfo>, E2eError> {
        let deadline = Instant::now() + timeout;
        let mut wanted: Vec<&str> = ids.to_vec();
        wanted.sort_unstable();
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            match self.agents().await {
                Ok(agents) => {
                    let mut connected: Vec<&str> =
                        agents.iter().map(|agent| agent.agent_id.as_str()).collect();
                    connected.sort_unstable();
                    if connected == wanted {
                        return Ok(agents);
                    }
                    last = format!("connected: {connected:?}");
                }
                Err(error) => last = error.to_string(),
            }
            tokio::time::sleep(POLL).await;
        }
        Err(E2eError::Timeout {
            what: format!("agents {wanted:?} connected to the hub"),
            waited: timeout,
            detail: format!("{last}; hub log:\n{}", self.process.log_tail(40)),
        })
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_loopback_addr() -> Result<SocketAddr, E2eError> {
    crate::nats::free_loopback_port()
        .map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .map_err(io_error("probing for a free port"))
}

/// A minimal HTTP/1.0 GET (the server closes after the answer), bounded by
/// two seconds.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), E2eError> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: hub\r\n\r\n").as_bytes())
            .await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let what = format!("GET http://{addr}{path}");
    let answer = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| E2eError::Io {
            what: what.clone(),
            source: std::io::ErrorKind::TimedOut.into(),
        })?
        .map_err(io_error(what.clone()))?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| E2eError::Io {
            what: format!("{what}: no status line in {answer:?}"),
            source: std::io::ErrorKind::InvalidData.into(),
        })?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default();
    Ok((status, body.to_owned()))
}
