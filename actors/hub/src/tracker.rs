//! Last-seen and detail per agent; presence and heartbeat events on NATS.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use actix::prelude::*;
use bytes::Bytes;
use herd_codec::data_type;
use herd_codec::proto::Hello;
use serde::{Deserialize, Serialize};

use crate::messages::{Heartbeat, ListAgents, Offline, Online, PresenceEvent};
use crate::sink::{NatsLink, now_ms};

/// What the hub knows about one connected agent (`/agents`, `herd.heartbeat.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The agent id.
    pub agent_id: String,
    /// Peer address of its connection.
    pub address: SocketAddr,
    /// Hostname from `Hello`.
    pub hostname: String,
    /// Agent version from `Hello`.
    pub version: String,
    /// Operating system and platform from `Hello`, e.g. `linux debian 12`.
    pub platform: String,
    /// When the handshake finished, ms since the Unix epoch.
    pub connected_since_ms: i64,
    /// When the last heartbeat (1000) arrived, ms since the Unix epoch.
    pub last_heartbeat_ms: Option<i64>,
    /// Fields of the last agent heartbeat record.
    pub heartbeat: BTreeMap<String, String>,
    /// Per plugin: fields of its last plugin heartbeat (1001), or the state
    /// reported in `Hello` until one arrives.
    pub plugins: BTreeMap<String, BTreeMap<String, String>>,
}

impl AgentInfo {
    /// The detail `hello` gives about agent `agent_id` connected from `address`.
    pub fn from_hello(agent_id: &str, hello: &Hello, address: SocketAddr) -> Self {
        let plugins = hello
            .plugins
            .iter()
            .map(|plugin| {
                let detail = BTreeMap::from([
                    ("version".to_owned(), plugin.version.clone()),
                    ("pid".to_owned(), plugin.pid.to_string()),
                    ("state".to_owned(), plugin.state.clone()),
                ]);
                (plugin.name.clone(), detail)
            })
            .collect();
        Self {
            agent_id: agent_id.to_owned(),
            address,
            hostname: hello.hostname.clone(),
            version: hello.version.clone(),
            platform: [&hello.os, &hello.platform, &hello.platform_version]
                .into_iter()
                .filter(|part| !part.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join(" "),
            connected_since_ms: now_ms(),
            last_heartbeat_ms: None,
            heartbeat: BTreeMap::new(),
            plugins,
        }
    }
}

/// A presence event as published on `herd.presence.<agent_id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The agent.
    pub agent_id: String,
    /// What happened.
    pub event: PresenceEvent,
    /// Why (empty for `online`).
    pub reason: String,
    /// When, ms since the Unix epoch.
    pub at: i64,
    /// The hub that saw it.
    pub hub_id: String,
}

/// Keeps the detail of connected agents and publishes presence and
/// heartbeat events.
#[derive(Debug)]
pub struct HeartbeatTracker {
    link: NatsLink,
    hub_id: String,
    agents: HashMap<String, AgentInfo>,
}

impl HeartbeatTracker {
    /// A tracker publishing through `link` in the name of `hub_id`.
    pub fn new(link: NatsLink, hub_id: String) -> Self {
        Self {
            link,
            hub_id,
            agents: HashMap::new(),
        }
    }

    fn publish(&self, subject: String, payload: Vec<u8>) {
        let client = self.link.client().clone();
        actix::spawn(async move {
            if let Err(error) = client.publish(subject, Bytes::from(payload)).await {
                tracing::warn!(%error, "presence/heartbeat publish failed");
            }
        });
    }

    fn presence(&self, agent_id: &str, event: PresenceEvent, reason: String) {
        let presence = Presence {
            agent_id: agent_id.to_owned(),
            event,
            reason,
            at: now_ms(),
            hub_id: self.hub_id.clone(),
        };
        match serde_json::to_vec(&presence) {
            Ok(json) => self.publish(format!("herd.presence.{agent_id}"), json),
            Err(error) => tracing::error!(%error, "cannot encode presence"),
        }
    }
}

impl Actor for HeartbeatTracker {
    type Context = Context<Self>;
}

impl Handler<Online> for HeartbeatTracker {
    type Result = ();

    fn handle(&mut self, Online(info): Online, _ctx: &mut Context<Self>) {
        self.presence(&info.agent_id, PresenceEvent::Online, String::new());
        self.agents.insert(info.agent_id.clone(), info);
    }
}

impl Handler<Offline> for HeartbeatTracker {
    type Result = ();

    fn handle(&mut self, offline: Offline, _ctx: &mut Context<Self>) {
        // A superseded agent is online again through its new connection.
        if offline.event == PresenceEvent::Offline {
            self.agents.remove(&offline.agent_id);
        }
        self.presence(&offline.agent_id, offline.event, offline.reason);
    }
}

impl Handler<Heartbeat> for HeartbeatTracker {
    type Result = ();

    fn handle(&mut self, heartbeat: Heartbeat, _ctx: &mut Context<Self>) {
        let Some(info) = self.agents.get_mut(&heartbeat.agent_id) else {
            return;
        };
        let record = heartbeat.record;
        if record.data_type == data_type::AGENT_HEARTBEAT {
            info.last_heartbeat_ms = Some(now_ms());
            info.heartbeat = record.fields.into_iter().collect();
        } else {
            let plugin = record
                .fields
                .get("name")
                .cloned()
                .unwrap_or_else(|| record.source.clone());
            info.plugins
                .insert(plugin, record.fields.into_iter().collect());
        }
        match serde_json::to_vec(&*info) {
            Ok(json) => self.publish(format!("herd.heartbeat.{}", heartbeat.agent_id), json),
            Err(error) => tracing::error!(%error, "cannot encode heartbeat"),
        }
    }
}

impl Handler<ListAgents> for HeartbeatTracker {
    type Result = Vec<AgentInfo>;

    fn handle(&mut self, _: ListAgents, _ctx: &mut Context<Self>) -> Vec<AgentInfo> {
        let mut agents: Vec<_> = self.agents.values().cloned().collect();
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        agents
    }
}
