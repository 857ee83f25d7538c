//! The herd agent: runs plugins as child processes and ships their records,
//! plus its own heartbeats, to a hub.
//!
//! ```text
//! agent  (supervisor, rest-for-one)
//! ├── batcher     Batcher: records -> batches in the disk spool (numbered by it), acks
//! ├── plugins     dynamic supervisor of the plugins' supervisors
//! │   └── <name> × N  one per plugin (backoff, crash-loop intensity -> failed)
//! │       └── process  Plugin: one child process: pipes, frames, sha256 check, reaping
//! ├── plugin-manager  PluginManager: desired plugin set; starts, upgrades and
//! │                   removes the plugins' supervisors under `plugins`
//! ├── heartbeat   HeartbeatReporter: 1000 (host + agent) and 1001 (per plugin) records
//! └── connector   Connector: hub list in failover order, handshake, resend, commands
//! ```
//!
//! [`start`] starts the tree on the current actix system and returns an
//! [`AgentHandle`]; [`AgentHandle::shutdown`] stops everything in order
//! (plugins first, then a last flush, then — while a hub is connected — a
//! bounded wait for the acks, then the connection, then the tree). A 1060
//! task from the hub asks for the same thing through
//! [`AgentHandle::shutdown_requested`]. [`AgentHandle::supervisor`] exposes
//! the tree's events, restart counters and current addresses.
//!
//! Rest-for-one, in the order above, keeps state right: each child depends
//! only on the ones before it and looks their current addresses up in the
//! tree's registry when it is built, and a restart of a child restarts
//! everything after it, so no actor ever talks to a dead incarnation. A
//! restarted Batcher reloads the persisted seq (numbering continues); its
//! unacked window is lost as on an agent restart, and the Connector
//! restarted after it resends from the hub's last ack. A restarted
//! PluginManager terminates the plugin supervisors its predecessor left and
//! reconciles the plugin set again, and the Connector after it handshakes again, which re-pushes
//! the hub's config and the agent id. The Connector is transient: its `Stop`
//! (close the session after its last frames) is the orderly shutdown path,
//! which the supervisor must not undo; the others are permanent. More than
//! 10 restarts within a minute stop the tree instead of spinning.
//!
//! Delivery is at least once: a batch is appended to the disk spool
//! (`<state_dir>/spool`, `[spool]`) when it is cut, sent once it is durable
//! (synced on the spool's fsync interval) and deleted only when the hub's
//! `Ack` covers it, so unacked batches survive a stop, a crash and a hub
//! outage. Seqs come from the spool's ledger and are never reused. When the
//! spool is full (`when_full = "block"`, the default) or its disk fails,
//! batches wait and the reason is reported (`agent.spool_error`); with
//! `"drop_oldest"` the oldest batches are dropped and counted
//! (`agent.dropped_batches`, persisted across restarts).
//!
//! No plugin outlives the agent. Each runs as the leader of its own process
//! group with a parent-death signal; where a cgroup v2 subtree is delegated
//! to the agent (`plugin_isolation`, `cgroup_dir`), the plugin manager moves
//! the agent into `<dir>/agent` when it starts and puts each plugin, before
//! it execs, into `<dir>/plugins/<name>` with the `memory.max` / `cpu.max`
//! of its `[plugin_limits.<name>]`; stopping it ends with `cgroup.kill`, and
//! the cgroups a killed agent left are killed and removed by the next one.
//! The heartbeat reports the mode (`agent.plugin_isolation`) and, per
//! plugin, which limits are in force.

mod batcher;
mod cgroup;
mod config;
mod connector;
mod error;
mod heartbeat;
mod hostinfo;
mod messages;
mod plugin;
mod plugin_manager;
mod report;
mod state;
#[cfg(test)]
mod tree_tests;

pub use cgroup::{CPU_PERIOD_US, CpuMax, LimitError, MemoryMax};
pub use config::{
    AgentConfig, AgentTlsConfig, BatchConfig, PluginIsolation, PluginLimits, PluginRestart,
    PluginSpec, ReconnectConfig, SpoolConfig,
};
pub use error::{AgentConfigError, AgentError, PluginError, StateError};
pub use herd_spool::{SpoolError, VerifyReport};
pub use plugin::sha256_file;
pub use report::{ConnectorStats, PluginInfo, PluginState};

/// Inspects the spool of the agent configured by `config` without changing
/// it (run it while that agent is stopped): segments, records, the ledger,
/// and every damaged frame that the next start would cut.
pub fn verify_spool(config: &AgentConfig) -> Result<VerifyReport, SpoolError> {
    herd_spool::verify(config.state_dir.join("spool"))
}

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::batcher::Batcher;
use self::connector::{Connector, Peers};
use self::heartbeat::HeartbeatReporter;
use self::messages::{Flush, GetBatcherStats, StopPlugins, WhenDrained};
use self::plugin_manager::PluginManager;
use self::state::StateDir;
use herd_supervision::{
    ChildSpec, Intensity, Registry, Restart, Strategy, SupervisorHandle, SupervisorSpec,
};

/// Longest wait for all plugins to be stopped and reaped on shutdown, on
/// top of their own grace periods.
const PLUGIN_STOP_SLACK: Duration = Duration::from_secs(5);
/// Longest wait for the connection to close after its last frames.
const CONNECTOR_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Name of the agent's root supervisor; its children's paths start with it.
pub const ROOT: &str = "agent";

/// Child ids under [`ROOT`], in start order (the strategy is rest-for-one).
pub mod ids {
    /// The batcher: records into numbered batches, the unacked window.
    pub const BATCHER: &str = "batcher";
    /// The dynamic supervisor of the plugins' supervisors.
    pub const PLUGINS: &str = "plugins";
    /// The plugin manager: the desired plugin set.
    pub const PLUGIN_MANAGER: &str = "plugin-manager";
    /// The heartbeat reporter: 1000 and 1001 records.
    pub const HEARTBEAT: &str = "heartbeat";
    /// The connector: the hub connection.
    pub const CONNECTOR: &str = "connector";
}

/// The running agent's supervision tree.
#[derive(Debug)]
pub struct AgentHandle {
    config: Arc<AgentConfig>,
    agent_id: watch::Receiver<String>,
    supervisor: SupervisorHandle,
    connector_stats: Arc<ConnectorStats>,
    shutdown_requested: CancellationToken,
}

/// What was left when the agent stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Batches the hub had not acked (lost with this process).
    pub unacked_batches: usize,
    /// The last seq assigned.
    pub last_seq: u64,
    /// The last seq acked.
    pub last_acked: u64,
}

/// The current incarnation of the sibling `id`. Under rest-for-one every
/// child started before the one being built is running (its address is
/// published before the later ones start), so a miss is a broken invariant,
/// which the supervisor sees as a failed start.
fn sibling<A: Actor>(registry: &Registry, id: &str) -> Addr<A> {
    registry
        .get(&format!("{ROOT}/{id}"))
        .unwrap_or_else(|| panic!("{ROOT}/{id} is not running"))
}

/// The agent's tree (see the module documentation for the strategy).
fn tree(
    config: &Arc<AgentConfig>,
    state: &StateDir,
    agent_id: &Arc<watch::Sender<String>>,
    registry: &Registry,
    stats: &Arc<ConnectorStats>,
    shutdown_requested: &CancellationToken,
    tls: Option<&connector::HubTls>,
) -> SupervisorSpec {
    let batcher = {
        let (config, state) = (config.clone(), state.clone());
        ChildSpec::try_new(ids::BATCHER, move || Batcher::new(&config, state.clone()))
    };
    let plugins = {
        let (config, state, registry) = (config.clone(), state.clone(), registry.clone());
        let agent_id = agent_id.subscribe();
        ChildSpec::new(ids::PLUGIN_MANAGER, move || {
            PluginManager::new(
                &config,
                sibling(&registry, ids::PLUGINS),
                state.clone(),
                agent_id.clone(),
                sibling::<Batcher>(&registry, ids::BATCHER).recipient(),
                sibling::<Batcher>(&registry, ids::BATCHER).recipient(),
            )
        })
    };
    let heartbeat = {
        let (config, registry, stats) = (config.clone(), registry.clone(), stats.clone());
        ChildSpec::new(ids::HEARTBEAT, move || {
            HeartbeatReporter::new(
                config.heartbeat_interval(),
                sibling(&registry, ids::BATCHER),
                sibling(&registry, ids::PLUGIN_MANAGER),
                stats.clone(),
            )
        })
    };
    let connector = {
        let (config, state, registry, stats) = (
            config.clone(),
            state.clone(),
            registry.clone(),
            stats.clone(),
        );
        let (agent_id, shutdown_requested) = (agent_id.clone(), shutdown_requested.clone());
        let tls = tls.cloned();
        ChildSpec::new(ids::CONNECTOR, move || {
            Connector::new(
                config.clone(),
                tls.clone(),
                state.clone(),
                agent_id.clone(),
                Peers {
                    batcher: sibling(&registry, ids::BATCHER),
                    plugins: sibling(&registry, ids::PLUGIN_MANAGER),
                    heartbeat: sibling(&registry, ids::HEARTBEAT),
                    shutdown_requested: shutdown_requested.clone(),
                },
                stats.clone(),
            )
        })
        .restart(Restart::Transient)
        .shutdown_timeout(CONNECTOR_STOP_TIMEOUT)
    };
    SupervisorSpec::new(ROOT)
        .strategy(Strategy::RestForOne)
        .intensity(
            // More than this many restarts within a minute means the agent
            // itself is broken: the tree stops instead of spinning.
            Intensity::new(10, Duration::from_secs(60)).expect("a non-zero period"),
        )
        .registry(registry.clone())
        .child(batcher)
        .child(
            // Stops every plugin subtree at once; each has its own bound.
            ChildSpec::supervisor(ids::PLUGINS, || SupervisorSpec::dynamic(ids::PLUGINS)),
        )
        .child(plugins)
        .child(heartbeat)
        .child(connector)
}

/// How long stopping the plugins may take: twice the longest grace period,
/// plus slack for reaping.
fn plugin_stop_bound(config: &AgentConfig) -> Duration {
    config
        .plugins
        .iter()
        .map(|p| p.stop_grace() * 2)
        .max()
        .unwrap_or_default()
        + PLUGIN_STOP_SLACK
}

/// Validates `config`, opens the state directory and starts the agent's
/// supervision tree on the current actix system.
pub fn start(config: AgentConfig) -> Result<AgentHandle, AgentError> {
    config.validate()?;
    let config = Arc::new(config);
    let state = StateDir::open(&config.state_dir)?;
    let tls = connector::HubTls::from_config(&config.tls, &state)?;
    let initial_id = state.load_agent_id()?.unwrap_or_default();
    tracing::info!(agent_id = %initial_id, hubs = ?config.hubs, plugins = config.plugins.len(),
        "agent starting");
    // The connector owns the id (it adopts what a hub assigns); everyone else reads it.
    let agent_id = Arc::new(watch::Sender::new(initial_id));
    let connector_stats = Arc::new(ConnectorStats::default());
    let shutdown_requested = CancellationToken::new();
    let supervisor = tree(
        &config,
        &state,
        &agent_id,
        &Registry::new(),
        &connector_stats,
        &shutdown_requested,
        tls.as_ref(),
    )
    .start()?;

    Ok(AgentHandle {
        config,
        agent_id: agent_id.subscribe(),
        supervisor,
        connector_stats,
        shutdown_requested,
    })
}

impl AgentHandle {
    /// Cancelled when the hub sent a shutdown task (1060); the owner should
    /// then call [`AgentHandle::shutdown`].
    pub fn shutdown_requested(&self) -> CancellationToken {
        self.shutdown_requested.clone()
    }

    /// The agent id now: the persisted one, or the one a hub assigned since
    /// (empty until a hub assigned one).
    pub fn agent_id(&self) -> String {
        self.agent_id.borrow().clone()
    }

    /// Connection counters.
    pub fn connector_stats(&self) -> Arc<ConnectorStats> {
        self.connector_stats.clone()
    }

    /// The agent's root supervisor: events, restart counters, and the
    /// current address of each child (`registry().get("agent/batcher")`).
    pub fn supervisor(&self) -> &SupervisorHandle {
        &self.supervisor
    }

    fn child<A: Actor>(&self, id: &str) -> Option<Addr<A>> {
        self.supervisor.registry().get(&format!("{ROOT}/{id}"))
    }

    /// Stops the agent in order: heartbeat, plugins (stdin closed, then
    /// SIGTERM, then SIGKILL; all reaped), a last flush, then — while a hub
    /// is connected — waits up to `shutdown_timeout_ms` for the acks, then
    /// closes the connection and stops the tree.
    pub async fn shutdown(self) -> ShutdownReport {
        tracing::info!("agent shutting down");
        if let Err(error) = self.supervisor.terminate_child(ids::HEARTBEAT).await {
            tracing::debug!(%error, "heartbeat already gone");
        }
        let plugin_bound = plugin_stop_bound(&self.config);
        if let Some(plugins) = self.child::<PluginManager>(ids::PLUGIN_MANAGER)
            && tokio::time::timeout(plugin_bound, plugins.send(StopPlugins))
                .await
                .is_err()
        {
            tracing::error!(?plugin_bound, "plugins did not stop in time");
        }
        let batcher = self.child::<Batcher>(ids::BATCHER);
        if let Some(batcher) = &batcher {
            let _ = batcher.send(Flush).await;
            if self.connector_stats.connected.load(Ordering::Relaxed) {
                let wait = Duration::from_millis(self.config.shutdown_timeout_ms);
                if tokio::time::timeout(wait, batcher.send(WhenDrained))
                    .await
                    .is_err()
                {
                    tracing::warn!(?wait, "hub did not ack everything before shutdown");
                }
            }
        }
        if let Some(connector) = self.child::<Connector>(ids::CONNECTOR) {
            let _ =
                tokio::time::timeout(CONNECTOR_STOP_TIMEOUT, connector.send(messages::Stop)).await;
        }
        let stats = match &batcher {
            Some(batcher) => batcher.send(GetBatcherStats).await.unwrap_or_default(),
            None => Default::default(),
        };
        self.supervisor.shutdown().await;
        let report = ShutdownReport {
            unacked_batches: stats.spool.depth_records as usize,
            last_seq: stats.last_seq,
            last_acked: stats.spool.acked_seq,
        };
        tracing::info!(?report, "agent stopped");
        report
    }
}
