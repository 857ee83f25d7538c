//! A whole herd deployment for one test: `nats-server` with a stream on
//! `herd.data.>`, a collector reading it, a `herd-hub`, a [`TcpProxy`] in
//! front of it, and agents each running the counter plugin plus the real
//! `sysmetrics`, `logtail` and `exec` plugins — all with short intervals so
//! faults heal within a second or two.
//!
//! The binaries (`herd-hub`, `herd-agent`, the plugins) are taken from the
//! target directory of the running test: `cargo test --workspace` builds
//! them first; with `cargo test -p herd-tests`, run `cargo build --workspace`
//! before, or the test runs stale binaries (or says which one is missing).
//!
//! Dropping a deployment kills every process it started (hub, agents,
//! plugins, scripts, nats-server); when the test is failing it prints the
//! tail of every log and keeps the directory for a look.

use std::path::{Path, PathBuf};
use std::time::Duration;

use herd_agent::{AgentConfig, AgentTlsConfig};
use herd_hub::{AckMode, HubConfig, HubTlsConfig};

use crate::agent::AgentProcess;
use crate::collector::{Collector, Tally, create_data_stream};
use crate::counter::CounterFile;
use crate::hub::HubProcess;
use crate::nats::NatsServer;
use crate::process::{E2eError, io_error, wait_gone};
use crate::proxy::TcpProxy;

/// Name of the deterministic counter plugin on every agent.
pub const COUNTER_PLUGIN: &str = "counter";
/// The real plugins every agent runs besides the counter.
pub const REAL_PLUGINS: [&str; 3] = ["sysmetrics", "logtail", "exec"];
/// Lines in each agent's followed log file at start.
pub const LOG_LINES: u64 = 20;
/// Bound for starting things and for recovery after a fault.
pub const WAIT: Duration = Duration::from_secs(20);

/// Everything one end-to-end test runs.
#[derive(Debug)]
pub struct Deployment {
    /// The agents, in id order (`agent-1`, `agent-2`, ...).
    pub agents: Vec<AgentProcess>,
    /// The hub.
    pub hub: HubProcess,
    /// The proxy every agent connects through.
    pub proxy: TcpProxy,
    /// What reached the stream.
    pub collector: Collector,
    /// The NATS server (the hub uses it through `nats_url`).
    pub nats: NatsServer,
    dir: Option<tempfile::TempDir>,
}

impl Deployment {
    /// Starts NATS, the stream, the collector, the hub, the proxy and
    /// `agent_count` agents, and waits until every agent is connected.
    pub async fn start(agent_count: usize) -> Result<Self, E2eError> {
        let dir = tempfile::Builder::new()
            .prefix("herd-e2e-")
            .tempdir()
            .map_err(io_error("creating the test directory"))?;
        let nats = NatsServer::start().await.map_err(|error| E2eError::Nats {
            what: "starting nats-server".to_owned(),
            reason: error.to_string(),
        })?;
        let client = nats.client().await.map_err(|error| E2eError::Nats {
            what: "connecting the collector".to_owned(),
            reason: error.to_string(),
        })?;
        create_data_stream(&client).await?;
        let collector = Collector::start(client);
        let hub = HubProcess::start_ready(hub_config(&nats), dir.path(), WAIT).await?;
        let proxy = TcpProxy::start(hub.listen_addr()).await?;
        let mut agents = Vec::with_capacity(agent_count);
        let token = hub.enrollment_token(u32::try_from(agent_count).unwrap_or(u32::MAX))?;
        for index in 1..=agent_count {
            let id = format!("agent-{index}");
            let config = agent_config(&proxy, hub.agent_tls()?, &token, &dir.path().join(&id))?;
            agents.push(AgentProcess::start(&id, config, dir.path())?);
        }
        let mut deployment = Self {
            agents,
            hub,
            proxy,
            collector,
            nats,
            dir: Some(dir),
        };
        if let Err(error) = deployment.wait_connected().await {
            deployment.print_logs();
            return Err(error);
        }
        Ok(deployment)
    }

    /// The directory holding every configuration, state and log.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |dir| dir.path())
    }

    /// The agent ids.
    pub fn agent_ids(&self) -> Vec<&str> {
        self.agents.iter().map(AgentProcess::id).collect()
    }

    /// Waits until the hub lists every agent as connected.
    pub async fn wait_connected(&self) -> Result<(), E2eError> {
        self.hub
            .wait_agents(&self.agent_ids(), WAIT)
            .await
            .map(drop)
    }

    /// The highest counter number each agent's counter plugin has produced
    /// (saved) so far, in agent order.
    pub fn produced(&self) -> Result<Vec<u64>, E2eError> {
        self.agents
            .iter()
            .map(|agent| {
                CounterFile::new(&agent.plugin_state_dir(COUNTER_PLUGIN))
                    .load()
                    .map_err(io_error(format!("reading the counter of {}", agent.id())))
            })
            .collect()
    }

    /// Waits until every counter number each agent produced up to now — and
    /// at least `at_least` more per agent than `since` — is in the stream,
    /// with no batch sequence number missing, every line of the followed
    /// log file, and records from every plugin and the agent itself.
    /// Returns the tally.
    pub async fn wait_all_delivered(
        &self,
        since: &[u64],
        at_least: u64,
    ) -> Result<Tally, E2eError> {
        let targets: Vec<u64> = self
            .produced()?
            .iter()
            .zip(since.iter().chain(std::iter::repeat(&0)))
            .map(|(&produced, &since)| produced.max(since + at_least))
            .collect();
        let ids: Vec<String> = self.agent_ids().iter().map(|id| (*id).to_owned()).collect();
        let sources: Vec<&str> = REAL_PLUGINS
            .iter()
            .copied()
            .chain([COUNTER_PLUGIN, "agent"])
            .collect();
        let complete = |tally: &Tally| {
            ids.iter().zip(&targets).all(|(id, &target)| {
                tally.agents.get(id).is_some_and(|agent| {
                    agent.counter_missing(COUNTER_PLUGIN, target).is_empty()
                        && agent.missing_batches().is_empty()
                        && agent.log_lines.len() as u64 >= LOG_LINES
                        && sources
                            .iter()
                            .all(|source| agent.by_source.contains_key(*source))
                })
            })
        };
        let describe = |tally: &Tally| describe(tally, &ids, &targets);
        self.collector
            .wait_for(
                "every produced record in the stream",
                WAIT,
                complete,
                describe,
            )
            .await
    }

    /// Kills every process and checks that none is left, including the
    /// plugins and scripts the agents started.
    pub fn shutdown(mut self) -> Result<(), E2eError> {
        let mut killed = Vec::new();
        for agent in &mut self.agents {
            killed.extend(agent.process().kill());
        }
        killed.extend(self.hub.kill());
        self.nats.stop();
        wait_gone(&killed, Duration::from_secs(5))
    }

    fn print_logs(&mut self) {
        let mut logs: Vec<(String, PathBuf)> = vec![(
            "herd-hub".to_owned(),
            self.hub.process().log_path().to_path_buf(),
        )];
        for agent in &mut self.agents {
            logs.push((
                agent.id().to_owned(),
                agent.process().log_path().to_path_buf(),
            ));
        }
        logs.push((
            "nats-server".to_owned(),
            self.nats.store_dir().join("nats-server.log"),
        ));
        for (name, path) in logs {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "---- {name}: last 60 lines of {} ----\n{}",
                path.display(),
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            agent.process().kill();
        }
        self.hub.kill();
        if std::thread::panicking() {
            self.print_logs();
            if let Some(dir) = self.dir.take() {
                eprintln!("---- kept {} for inspection ----", dir.keep().display());
            }
        }
    }
}

fn describe(tally: &Tally, ids: &[String], targets: &[u64]) -> String {
    let mut out = format!(
        "{} messages, {} duplicate ids, {} malformed",
        tally.messages, tally.duplicate_ids, tally.malformed
    );
    for (id, &target) in ids.iter().zip(targets) {
        let Some(agent) = tally.agents.get(id) else {
            out.push_str(&format!("\n{id}: nothing"));
            continue;
        };
        let missing = agent.counter_missing(COUNTER_PLUGIN, target);
        out.push_str(&format!(
            "\n{id}: counter up to {} of {target}, {} missing {:?}, batches missing {:?}, {} log lines, sources {:?}",
            agent.counter_max(COUNTER_PLUGIN),
            missing.len(),
            &missing[..missing.len().min(20)],
            agent.missing_batches(),
            agent.log_lines.len(),
            agent.by_source,
        ));
    }
    out
}

/// The hub: TLS with its own CA and agents enrolled with a token (as it
/// runs by default), JetStream acks
/// (nothing acked is lost when NATS restarts), pings every 200 ms,
/// heartbeats every second.
fn hub_config(nats: &NatsServer) -> HubConfig {
    HubConfig {
        ack_mode: AckMode::Jetstream,
        tls: HubTlsConfig::default(),
        ..HubConfig::for_tests(nats.url())
    }
}

/// An agent connecting through `proxy`, with the counter and the three real
/// plugins, quick reconnects and quick plugin restarts, trusting the hub by
/// `tls`, enrolling with `token`.
fn agent_config(
    proxy: &TcpProxy,
    tls: AgentTlsConfig,
    token: &str,
    home: &Path,
) -> Result<AgentConfig, E2eError> {
    std::fs::create_dir_all(home).map_err(io_error(format!("creating {}", home.display())))?;
    let log = home.join("followed.log");
    let lines: String = (1..=LOG_LINES).map(|n| format!("line {n}\n")).collect();
    std::fs::write(&log, lines).map_err(io_error(format!("writing {}", log.display())))?;
    let script = home.join("probe.sh");
    std::fs::write(&script, "#!/bin/sh\necho probe=ok\n")
        .map_err(io_error(format!("writing {}", script.display())))?;
    make_executable(&script)?;
    let plugin = crate::agent::plugin_spec;
    Ok(AgentConfig {
        token: token.to_owned(),
        plugins: vec![
            plugin(
                COUNTER_PLUGIN,
                "herd-test-counter",
                vec!["--interval-ms".into(), "20".into()],
            )?,
            plugin(
                "sysmetrics",
                "herd-sysmetrics",
                vec!["--interval-secs".into(), "0.5".into()],
            )?,
            plugin(
                "logtail",
                "herd-logtail",
                vec![
                    "--file".into(),
                    log.display().to_string(),
                    "--poll-ms".into(),
                    "50".into(),
                ],
            )?,
            plugin(
                "exec",
                "herd-exec",
                vec!["--script".into(), format!("probe={}:0.5", script.display())],
            )?,
        ],
        ..crate::agent::quick_config(vec![proxy.addr().to_string()], tls)
    })
}

fn make_executable(path: &Path) -> Result<(), E2eError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(io_error(format!("making {} executable", path.display())))
}
