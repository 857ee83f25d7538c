//! Messages between the hub's actors.

use std::net::SocketAddr;
use std::time::Instant;

use actix::dev::{RecipientRequest, ToEnvelope};
use actix::{Actor, Addr, Handler, Message, Recipient};
use herd_codec::proto::{Command, ConfigSet, Record, TaskResult};

use herd_tls::AgentCertificate;

use crate::agent_info::AgentInfo;
use crate::enrollment::EnrollRefusal;

/// Why the hub closes an agent connection (its `Goodbye`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseKind {
    /// Another connection took the agent id over.
    Superseded,
    /// The hub is shutting down.
    Shutdown,
    /// The hub can no longer defend the agent's fleet-wide claim (cut off
    /// from NATS): the agent should connect again, here or elsewhere.
    Unavailable,
    /// The agent id was revoked: certificates issued up to `revoked_at_ms`
    /// (ms since the epoch) no longer count.
    Revoked {
        /// When.
        revoked_at_ms: u64,
    },
}

/// Ask a Connection to say goodbye and close.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Close {
    /// Why.
    pub kind: CloseKind,
    /// Human-readable detail for the agent and the logs.
    pub message: String,
}

/// Send a command (task and/or configuration) to the agent of a Connection.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), CommandRefused>")]
pub(crate) struct SendCommand {
    /// What to send.
    pub command: Command,
    /// For a task: when its requester stops waiting. A task still unwritten
    /// then is dropped (the router has answered TIMEOUT), and only tasks
    /// count against the connection's queue bound.
    pub deadline: Option<Instant>,
}

/// Why a Connection did not queue a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CommandRefused {
    /// `max_queued_tasks` tasks wait to be written: the agent is not reading.
    #[error("{queued} tasks queued")]
    Backlog {
        /// Tasks not yet written to the socket.
        queued: usize,
    },
    /// The connection is closing.
    #[error("the connection is closing")]
    Closing,
}

/// How the other actors reach one agent's Connection: they can close it or send it a
/// command, nothing else.
#[derive(Debug, Clone)]
pub(crate) struct AgentLink {
    conn_id: u64,
    close: Recipient<Close>,
    command: Recipient<SendCommand>,
}

impl AgentLink {
    /// The link to the connection actor at `addr`, connection `conn_id`.
    pub(crate) fn new<A>(conn_id: u64, addr: Addr<A>) -> Self
    where
        A: Actor + Handler<Close> + Handler<SendCommand>,
        A::Context: ToEnvelope<A, Close> + ToEnvelope<A, SendCommand>,
    {
        Self {
            conn_id,
            close: addr.clone().recipient(),
            command: addr.recipient(),
        }
    }

    /// The connection's id (unique per hub process).
    pub(crate) fn conn_id(&self) -> u64 {
        self.conn_id
    }

    /// Asks the connection to say goodbye and close.
    pub(crate) fn close(&self, kind: CloseKind, message: String) {
        self.close.do_send(Close { kind, message });
    }

    /// Queues a configuration push for the agent.
    pub(crate) fn command(&self, command: Command) {
        self.command.do_send(SendCommand {
            command,
            deadline: None,
        });
    }

    /// Queues a task for the agent, unless its queue is full; `deadline` is
    /// when the requester gives up.
    pub(crate) fn task(
        &self,
        command: Command,
        deadline: Instant,
    ) -> RecipientRequest<SendCommand> {
        self.command.send(SendCommand {
            command,
            deadline: Some(deadline),
        })
    }
}

/// AgentRegistry: a connection finished its handshake for `info.agent_id`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), RegisterError>")]
pub(crate) struct Register {
    /// The connection actor (and its id).
    pub link: AgentLink,
    /// What the agent told about itself.
    pub info: AgentInfo,
}

/// Why the AgentRegistry refused a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum RegisterError {
    /// The connection cap is reached.
    #[error("hub is full: {connected} agents connected, the cap is {cap}")]
    Full {
        /// Agents connected now.
        connected: usize,
        /// The configured cap.
        cap: usize,
    },
}

/// AgentRegistry: a registered connection has closed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Unregister {
    /// The agent id it was registered for.
    pub agent_id: String,
    /// Its connection id; ignored when another connection took over since.
    pub conn_id: u64,
    /// Why it closed (for the offline presence event).
    pub reason: String,
}

/// AgentRegistry: the Connection of an agent, if connected.
#[derive(Debug, Message)]
#[rtype(result = "Option<AgentLink>")]
pub(crate) struct Lookup(pub String);

/// AgentRegistry: every connected agent id with its Connection.
#[derive(Debug, Message)]
#[rtype(result = "Vec<(String, AgentLink)>")]
pub(crate) struct Connected;

/// AgentRegistry: close every connection with `Goodbye{SHUTDOWN}`; answers how
/// many were asked.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub(crate) struct CloseAll;

/// AgentRegistry: answers once no agent is connected any more.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct WhenAllClosed;

/// HeartbeatTracker: an agent came online (after a takeover too).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Online(pub AgentInfo);

/// HeartbeatTracker: an agent went offline or was superseded.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Offline {
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
pub(crate) struct HeartbeatReceived {
    /// The agent.
    pub agent_id: String,
    /// The record.
    pub record: Record,
}

/// HeartbeatTracker: the detail of every connected agent.
#[derive(Debug, Message)]
#[rtype(result = "Vec<AgentInfo>")]
pub(crate) struct ListAgents;

/// CommandRouter and TaskBatcher: an agent answered a task.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub(crate) struct TaskDone {
    /// The agent.
    pub agent_id: String,
    /// Its answer.
    pub result: TaskResult,
}

/// CommandRouter: a registered connection has ended; every task it was given
/// and has not answered gets OFFLINE.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct AgentGone {
    /// The agent it served.
    pub agent_id: String,
    /// The connection; tasks sent to a later connection of the agent stay.
    pub conn_id: u64,
}

/// ConfigWatcher: the desired configuration of an agent, if any.
#[derive(Debug, Message)]
#[rtype(result = "Option<ConfigSet>")]
pub(crate) struct GetConfig(pub String);

/// ConfigWatcher, AgentIdentities: whether the initial load (of `herd_config`,
/// of the revocations) is done.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub(crate) struct IsLoaded;

/// AgentIdentities: enroll an agent that has no certificate yet.
#[derive(Debug, Message)]
#[rtype(result = "Result<Issued, EnrollRefusal>")]
pub(crate) struct Enroll {
    /// The enrollment token from `Hello`.
    pub token: String,
    /// The agent's certificate signing request (DER).
    pub csr: bytes::Bytes,
    /// The id the agent asks for; empty: the hub picks one.
    pub requested_id: String,
    /// Where the agent connects from (recorded with the enrollment).
    pub address: SocketAddr,
}

/// AgentIdentities: a new certificate for an enrolled agent.
#[derive(Debug, Message)]
#[rtype(result = "Result<Issued, String>")]
pub(crate) struct RenewCertificate {
    /// The certificate the agent connected with.
    pub current: AgentCertificate,
    /// The request for its new key (DER).
    pub csr: bytes::Bytes,
}

/// A certificate AgentIdentities issued.
#[derive(Debug)]
pub(crate) struct Issued {
    /// DER.
    pub certificate: bytes::Bytes,
    /// What it says.
    pub parsed: AgentCertificate,
}

/// AgentIdentities: may an agent connect with this certificate (not revoked,
/// revocations loaded)?
#[derive(Debug, Message)]
#[rtype(result = "Result<(), String>")]
pub(crate) struct CheckCertificate(pub AgentCertificate);

/// AgentRegistry: close the session of a revoked agent id, if its
/// certificate is one the revocation covers.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct RevokeAgent {
    /// The id.
    pub agent_id: String,
    /// When it was revoked (ms since the epoch).
    pub revoked_at_ms: u64,
    /// The operator's reason.
    pub reason: String,
}

/// FleetClaims: this hub serves `agent_id` on `link` now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Claim {
    /// The id.
    pub agent_id: String,
    /// The connection (closed when the claim is lost).
    pub link: AgentLink,
    /// Where the agent connects from.
    pub address: SocketAddr,
}

/// FleetClaims: connection `conn_id` of `agent_id` has ended.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Release {
    /// The id.
    pub agent_id: String,
    /// The connection that ended.
    pub conn_id: u64,
}
