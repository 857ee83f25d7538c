//! The herd agent: runs plugins as child processes and ships their records,
//! plus its own heartbeats, to a hub.
//!
//! ```text
//! Agent
//! ├── Batcher        records -> numbered batches; owns the unacked window (Spool)
//! ├── PluginManager  desired plugin set; one supervisor per plugin (backoff,
//! │   │              crash-loop intensity -> failed)
//! │   └── Plugin × N one child process each: pipes, frames, sha256 check, reaping
//! ├── Heartbeat      1000 (host + agent) and 1001 (per plugin) records
//! └── Connector      hub list in failover order, handshake, resend, commands
//! ```
//!
//! [`start`] wires the actors on the current actix system and returns an
//! [`AgentHandle`]; [`AgentHandle::shutdown`] stops everything in order
//! (plugins first, then a last flush, then — while a hub is connected — a
//! bounded wait for the acks, then the connection). A 1060 task from the hub
//! asks for the same thing through [`AgentHandle::shutdown_requested`].
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
pub mod spool;
pub mod state;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use tokio_util::sync::CancellationToken;

use self::batcher::Batcher;
use self::config::AgentConfig;
use self::connector::{Connector, ConnectorStats, Peers};
use self::error::AgentError;
use self::heartbeat::Heartbeat;
use self::messages::{Flush, GetBatcherStats, StopPlugins, WhenDrained};
use self::plugin_manager::PluginManager;
use self::state::StateDir;

/// Longest wait for all plugins to be stopped and reaped on shutdown, on
/// top of their own grace periods.
const PLUGIN_STOP_SLACK: Duration = Duration::from_secs(5);
/// Longest wait for the connection to close after its last frames.
const CONNECTOR_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// The running agent's actors.
#[derive(Debug)]
pub struct AgentHandle {
    config: Arc<AgentConfig>,
    agent_id: String,
    batcher: Addr<Batcher>,
    plugins: Addr<PluginManager>,
    heartbeat: Addr<Heartbeat>,
    connector: Addr<Connector>,
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

/// Validates `config`, opens the state directory and starts the agent's
/// actors on the current actix system.
pub fn start(config: AgentConfig) -> Result<AgentHandle, AgentError> {
    config.validate()?;
    let config = Arc::new(config);
    let state = StateDir::open(&config.state_dir)?;
    let agent_id = state.load_agent_id()?.unwrap_or_default();
    let batcher = Batcher::new(&config, state.clone())?.start();
    let plugins = PluginManager::new(
        &config,
        state.clone(),
        agent_id.clone(),
        batcher.clone().recipient(),
    )
    .start();
    let connector_stats = Arc::new(ConnectorStats::default());
    let heartbeat = Heartbeat::new(
        config.heartbeat_interval(),
        batcher.clone(),
        plugins.clone(),
        connector_stats.clone(),
    )
    .start();
    let shutdown_requested = CancellationToken::new();
    let connector = Connector::new(
        config.clone(),
        state,
        agent_id.clone(),
        Peers {
            batcher: batcher.clone(),
            plugins: plugins.clone(),
            heartbeat: heartbeat.clone(),
            shutdown_requested: shutdown_requested.clone(),
        },
        connector_stats.clone(),
    )
    .start();
    tracing::info!(agent_id = %agent_id, hubs = ?config.hubs, plugins = config.plugins.len(),
        "agent started");
    Ok(AgentHandle {
        config,
        agent_id,
        batcher,
        plugins,
        heartbeat,
        connector,
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

    /// Stops the agent in order: heartbeat, plugins (stdin closed, then
    /// SIGTERM, then SIGKILL; all reaped), a last flush, then — while a hub
    /// is connected — waits up to `shutdown_timeout_ms` for the acks, then
    /// closes the connection.
    pub async fn shutdown(self) -> ShutdownReport {
        tracing::info!("agent shutting down");
        self.heartbeat.do_send(messages::Stop);
        let plugin_bound = self
            .config
            .plugins
            .iter()
            .map(|p| p.stop_grace() * 2)
            .max()
            .unwrap_or_default()
            + PLUGIN_STOP_SLACK;
        if tokio::time::timeout(plugin_bound, self.plugins.send(StopPlugins))
            .await
            .is_err()
        {
            tracing::error!(?plugin_bound, "plugins did not stop in time");
        }
        let _ = self.batcher.send(Flush).await;
        if self.connector_stats.connected.load(Ordering::Relaxed) {
            let wait = Duration::from_millis(self.config.shutdown_timeout_ms);
            if tokio::time::timeout(wait, self.batcher.send(WhenDrained))
                .await
                .is_err()
            {
                tracing::warn!(?wait, "hub did not ack everything before shutdown");
            }
        }
        let _ =
            tokio::time::timeout(CONNECTOR_STOP_TIMEOUT, self.connector.send(messages::Stop)).await;
        let stats = self.batcher.send(GetBatcherStats).await.unwrap_or_default();
        let report = ShutdownReport {
            unacked_batches: stats.spool.batches,
            last_seq: stats.last_seq,
            last_acked: stats.spool.last_acked,
        };
        tracing::info!(?report, "agent stopped");
        report
    }
}
