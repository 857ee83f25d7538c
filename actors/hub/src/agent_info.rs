//! What the hub knows about one connected agent.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use herd_codec::proto::Hello;
use serde::{Deserialize, Serialize};

use crate::sink::now_ms;

/// What the hub knows about one connected agent: the JSON published on
/// `herd.heartbeat.<agent_id>` and the elements of the admin `GET /agents`
/// array (docs/protocol.md documents both).
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
