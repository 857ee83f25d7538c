//! The herd agent: runs plugins as child processes and ships their records,
//! plus its own heartbeats, to a hub.
//!
//! ```text
//! agent  (supervisor, rest-for-one)
//! ├── batcher     Batcher: records -> numbered batches; owns the unacked window (UnackedWindow)
//! ├── plugins     PluginManager: desired plugin set; one supervisor per plugin
//! │   │           (backoff, crash-loop intensity -> failed)
//! │   └── Plugin × N  one child process each: pipes, frames, sha256 check, reaping
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
//! PluginManager stops the old plugin processes and reconciles the plugin
//! set again, and the Connector after it handshakes again, which re-pushes
//! the hub's config and the agent id. The Connector is transient: its `Stop`
//! (close the session after its last frames) is the orderly shutdown path,
//! which the supervisor must not undo; the others are permanent. More than
//! 10 restarts within a minute stop the tree instead of spinning.
//!
//! Delivery is at least once: a batch stays in the unacked window until the
//! hub's `Ack` covers it and is resent after every reconnect. The window is
//! bounded in memory (`[spool]`); beyond it the oldest batches are dropped
//! and counted (`agent.dropped_records` in the heartbeat). There is no disk
//! spool: unacked batches do not survive an agent restart, but sequence
//! numbers do, so the hub sees the gap.

pub mod batcher;
pub mod config;
pub mod connector;
pub mod error;
pub mod heartbeat;
pub mod hostinfo;
pub mod messages;
pub mod plugin;
pub mod plugin_manager;
pub mod report;
pub mod state;
pub mod window;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use tokio_util::sync::CancellationToken;

use self::batcher::Batcher;
use self::config::AgentConfig;
use self::connector::{Connector, Peers};
use self::error::AgentError;
use self::heartbeat::HeartbeatReporter;
use self::messages::{Flush, GetBatcherStats, StopPlugins, WhenDrained};
use self::plugin_manager::PluginManager;
use self::report::ConnectorStats;
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
    /// The [`Batcher`](super::batcher::Batcher).
    pub const BATCHER: &str = "batcher";
    /// The [`PluginManager`](super::plugin_manager::PluginManager).
    pub const PLUGINS: &str = "plugins";
    /// The [`HeartbeatReporter`](super::heartbeat::HeartbeatReporter).
    pub const HEARTBEAT: &str = "heartbeat";
    /// The [`Connector`](super::connector::Connector).
    pub const CONNECTOR: &str = "connector";
}

/// The running agent's supervision tree.
#[derive(Debug)]
pub struct AgentHandle {
    config: Arc<AgentConfig>,
    agent_id: String,
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

/// The id persisted in `state`, else `fallback` (the one read at start).
fn persisted_id(state: &StateDir, fallback: &str) -> String {
    match state.load_agent_id() {
        Ok(id) => id.unwrap_or_else(|| fallback.to_owned()),
        Err(error) => {
            tracing::warn!(%error, "cannot re-read the agent id; using the one read at start");
            fallback.to_owned()
        }
    }
}

/// The agent's tree (see the module documentation for the strategy).
fn tree(
    config: &Arc<AgentConfig>,
    state: &StateDir,
    agent_id: &str,
    first_batcher: Batcher,
    registry: &Registry,
    stats: &Arc<ConnectorStats>,
    shutdown_requested: &CancellationToken,
) -> SupervisorSpec {
    let batcher = {
        let (config, state) = (config.clone(), state.clone());
        // The first incarnation was built (and its errors reported) by `start`.
        let first = Mutex::new(Some(first_batcher));
        ChildSpec::new(ids::BATCHER, move || {
            let first = first.lock().unwrap_or_else(|e| e.into_inner()).take();
            first.unwrap_or_else(|| {
                Batcher::new(&config, state.clone())
                    .unwrap_or_else(|error| panic!("cannot restart the batcher: {error}"))
            })
        })
    };
    let plugins = {
        let (config, state, registry) = (config.clone(), state.clone(), registry.clone());
        let agent_id = agent_id.to_owned();
        let plugin_bound = plugin_stop_bound(&config);
        ChildSpec::new(ids::PLUGINS, move || {
            PluginManager::new(
                &config,
                state.clone(),
                persisted_id(&state, &agent_id),
                sibling::<Batcher>(&registry, ids::BATCHER).recipient(),
            )
        })
        .shutdown_timeout(plugin_bound)
    };
    let heartbeat = {
        let (config, registry, stats) = (config.clone(), registry.clone(), stats.clone());
        ChildSpec::new(ids::HEARTBEAT, move || {
            HeartbeatReporter::new(
                config.heartbeat_interval(),
                sibling(&registry, ids::BATCHER),
                sibling(&registry, ids::PLUGINS),
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
        let (agent_id, shutdown_requested) = (agent_id.to_owned(), shutdown_requested.clone());
        ChildSpec::new(ids::CONNECTOR, move || {
            Connector::new(
                config.clone(),
                state.clone(),
                persisted_id(&state, &agent_id),
                Peers {
                    batcher: sibling(&registry, ids::BATCHER),
                    plugins: sibling(&registry, ids::PLUGINS),
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
    let agent_id = state.load_agent_id()?.unwrap_or_default();
    let first_batcher = Batcher::new(&config, state.clone())?;
    let connector_stats = Arc::new(ConnectorStats::default());
    let shutdown_requested = CancellationToken::new();
    let supervisor = tree(
        &config,
        &state,
        &agent_id,
        first_batcher,
        &Registry::new(),
        &connector_stats,
        &shutdown_requested,
    )
    .start()?;
    tracing::info!(agent_id = %agent_id, hubs = ?config.hubs, plugins = config.plugins.len(),
        "agent started");
    Ok(AgentHandle {
        config,
        agent_id,
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

    /// The agent id persisted when the agent started (empty if the hub has
    /// not assigned one yet).
    pub fn initial_agent_id(&self) -> &str {
        &self.agent_id
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
        if let Some(plugins) = self.child::<PluginManager>(ids::PLUGINS)
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
            unacked_batches: stats.spool.batches,
            last_seq: stats.last_seq,
            last_acked: stats.spool.last_acked,
        };
        tracing::info!(?report, "agent stopped");
        report
    }
}
