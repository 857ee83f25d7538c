//! Messages between the hub's actors.

use actix::{Addr, Message};
use herd_codec::proto::{Command, ConfigSet, Record, TaskResult};

use crate::connection::Connection;
use crate::tracker::AgentInfo;

/// Why the hub closes an agent connection (its `Goodbye`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// Another connection took the agent id over.
    Superseded,
    /// The hub is shutting down.
    Shutdown,
}

/// Ask a Connection to say goodbye and close.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Close {
    /// Why.
    pub kind: CloseKind,
    /// Human-readable detail for the agent and the logs.
    pub message: String,
}

/// Send a command (task and/or configuration) to the agent of a Connection.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SendCommand(pub Command);

/// Registry: a connection finished its handshake for `info.agent_id`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), RegisterError>")]
pub struct Register {
    /// Unique id of the connection (per hub process).
    pub conn_id: u64,
    /// The connection actor.
    pub addr: Addr<Connection>,
    /// What the agent told about itself.
    pub info: AgentInfo,
}

/// Why the Registry refused a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The connection cap is reached.
    #[error("hub is full: {connected} agents connected, the cap is {cap}")]
    Full {
        /// Agents connected now.
        connected: usize,
        /// The configured cap.
        cap: usize,
    },
}

/// Registry: a registered connection has closed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Unregister {
    /// The agent id it was registered for.
    pub agent_id: String,
    /// Its connection id; ignored when another connection took over since.
    pub conn_id: u64,
    /// Why it closed (for the offline presence event).
    pub reason: String,
}

/// Registry: the Connection of an agent, if connected.
#[derive(Debug, Message)]
#[rtype(result = "Option<Addr<Connection>>")]
pub struct Lookup(pub String);

/// Registry: every connected agent id with its Connection.
#[derive(Debug, Message)]
#[rtype(result = "Vec<(String, Addr<Connection>)>")]
pub struct Connected;

/// Registry: close every connection with `Goodbye{SHUTDOWN}`; answers how
/// many were asked.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct CloseAll;

/// HeartbeatTracker: an agent came online (after a takeover too).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Online(pub AgentInfo);

/// HeartbeatTracker: an agent went offline or was superseded.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Offline {
    /// The agent.
    pub agent_id: String,
    /// `offline` or `superseded`.
    pub event: PresenceEvent,
    /// Why.
    pub reason: String,
}

/// A presence event kind, as published in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceEvent {
    /// Handshake done.
    Online,
    /// Connection closed.
    Offline,
    /// Another connection took the agent id over.
    Superseded,
}

/// HeartbeatTracker: a heartbeat record (data type 1000 or 1001) arrived.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Heartbeat {
    /// The agent.
    pub agent_id: String,
    /// The record.
    pub record: Record,
}

/// HeartbeatTracker: the detail of every connected agent.
#[derive(Debug, Message)]
#[rtype(result = "Vec<AgentInfo>")]
pub struct ListAgents;

/// CommandRouter and TaskBatcher: an agent answered a task.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct TaskDone {
    /// The agent.
    pub agent_id: String,
    /// Its answer.
    pub result: TaskResult,
}

/// ConfigWatcher: the desired configuration of an agent, if any.
#[derive(Debug, Message)]
#[rtype(result = "Option<ConfigSet>")]
pub struct GetConfig(pub String);

/// ConfigWatcher: whether the initial load of `herd_config` is done.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct IsLoaded;
