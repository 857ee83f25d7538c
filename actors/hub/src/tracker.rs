//! Last-seen and detail per agent; presence and heartbeat events on NATS.

use std::collections::HashMap;

use actix::prelude::*;
use bytes::Bytes;
use herd_codec::data_type;
use serde::{Deserialize, Serialize};

use crate::agent_info::AgentInfo;
use crate::directory::HubDirectory;
use crate::messages::{HeartbeatReceived, ListAgents, Offline, Online, PresenceEvent};
use crate::sink::{NatsLink, now_ms};

/// A presence event as published (JSON) on `herd.presence.<agent_id>`
/// (docs/protocol.md, "`herd.presence.<agent_id>`").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The agent.
    pub agent_id: String,
    /// What happened.
    pub event: PresenceEvent,
    /// Why (empty for `online`).
    pub reason: String,
    /// When the hub saw it, ms since the Unix epoch.
    pub at_ms: i64,
    /// The hub that saw it.
    pub hub_id: String,
}

/// Keeps the detail of connected agents and publishes presence and
/// heartbeat events.
#[derive(Debug)]
pub(crate) struct HeartbeatTracker {
    link: NatsLink,
    hub_id: String,
    agents: HashMap<String, AgentInfo>,
}

impl HeartbeatTracker {
    /// A tracker publishing through `link` in the name of `hub_id`.
    pub(crate) fn new(link: NatsLink, hub_id: String) -> Self {
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
            at_ms: now_ms(),
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

impl Handler<HeartbeatReceived> for HeartbeatTracker {
    type Result = ();

    fn handle(&mut self, heartbeat: HeartbeatReceived, _ctx: &mut Context<Self>) {
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

impl HubDirectory {
    /// The HeartbeatTracker.
    pub(crate) fn tracker(&self) -> Option<Addr<HeartbeatTracker>> {
        self.get(crate::directory::ids::TRACKER)
    }
}
