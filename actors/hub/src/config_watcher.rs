//! Desired plugin configuration from the NATS KV bucket `herd_config`.
//!
//! Keys: `fleet` (every agent) and `agent.<agent_id>` (one agent). Values are
//! a `ConfigSet` as JSON (an object, for humans and `nats kv put`) or as
//! protobuf (anything that does not start with `{`). An agent's desired set is
//! the fleet's plugins with its own key's plugins added, replacing fleet
//! plugins of the same name. It is sent in `Welcome` and, when a key changes,
//! pushed as `Command{config}` to the connected agents it affects.

use std::collections::{BTreeMap, HashMap};

use actix::prelude::*;
use async_nats::jetstream::kv;
use herd_codec::proto::{Command, ConfigSet, PluginConfig, RestartPolicy};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::directory::HubDirectory;
use crate::messages::{AgentLink, Connected, GetConfig, IsLoaded, Lookup};
use crate::sink::NatsLink;

/// The KV bucket of desired configuration.
pub const CONFIG_BUCKET: &str = "herd_config";
/// The key of the fleet-wide configuration.
pub const FLEET_KEY: &str = "fleet";
/// Prefix of per-agent keys: `agent.<agent_id>`.
pub const AGENT_KEY_PREFIX: &str = "agent.";

/// A `ConfigSet` in its JSON form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSetJson {
    /// The plugins.
    #[serde(default)]
    pub plugins: Vec<PluginConfigJson>,
}

/// A `PluginConfig` in its JSON form; see `herd.proto` for the meaning of
/// each field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct PluginConfigJson {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub path: String,
    pub source: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub restart: Option<RestartPolicyJson>,
}

/// A `RestartPolicy` in its JSON form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RestartPolicyJson {
    pub min_backoff_ms: u32,
    pub max_backoff_ms: u32,
    pub max_restarts: u32,
    pub period_secs: u32,
}

impl From<ConfigSetJson> for ConfigSet {
    fn from(json: ConfigSetJson) -> Self {
        Self {
            plugins: json
                .plugins
                .into_iter()
                .map(|plugin| PluginConfig {
                    name: plugin.name,
                    version: plugin.version,
                    sha256: plugin.sha256,
                    path: plugin.path,
                    source: plugin.source,
                    args: plugin.args,
                    env: plugin.env.into_iter().collect(),
                    restart: plugin.restart.map(|restart| RestartPolicy {
                        min_backoff_ms: restart.min_backoff_ms,
                        max_backoff_ms: restart.max_backoff_ms,
                        max_restarts: restart.max_restarts,
                        period_secs: restart.period_secs,
                    }),
                })
                .collect(),
        }
    }
}

/// Decodes a KV value: JSON when it starts with `{`, protobuf otherwise.
pub fn parse_config(value: &[u8]) -> Result<ConfigSet, String> {
    if value.trim_ascii_start().starts_with(b"{") {
        serde_json::from_slice::<ConfigSetJson>(value)
            .map(ConfigSet::from)
            .map_err(|error| format!("invalid JSON ConfigSet: {error}"))
    } else {
        ConfigSet::decode(value).map_err(|error| format!("invalid protobuf ConfigSet: {error}"))
    }
}

/// Which agents a key is about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    Fleet,
    Agent(String),
}

fn scope(key: &str) -> Option<Scope> {
    if key == FLEET_KEY {
        Some(Scope::Fleet)
    } else {
        key.strip_prefix(AGENT_KEY_PREFIX)
            .map(|agent_id| Scope::Agent(agent_id.to_owned()))
    }
}

/// Watches `herd_config` and serves each agent's desired configuration.
#[derive(Debug)]
pub(crate) struct ConfigWatcher {
    link: NatsLink,
    directory: HubDirectory,
    fleet: Option<ConfigSet>,
    agents: HashMap<String, ConfigSet>,
    loaded: bool,
}

impl ConfigWatcher {
    /// A watcher pushing changes to the agents the Registry in `directory` knows.
    pub(crate) fn new(link: NatsLink, directory: HubDirectory) -> Self {
        Self {
            link,
            directory,
            fleet: None,
            agents: HashMap::new(),
            loaded: false,
        }
    }

    /// The desired set of `agent_id`: fleet plugins, overridden and extended
    /// by the agent's own. `None` when neither key exists.
    fn desired(&self, agent_id: &str) -> Option<ConfigSet> {
        let own = self.agents.get(agent_id);
        if self.fleet.is_none() && own.is_none() {
            return None;
        }
        let mut plugins: Vec<PluginConfig> = self
            .fleet
            .iter()
            .flat_map(|set| set.plugins.clone())
            .collect();
        for plugin in own.iter().flat_map(|set| &set.plugins) {
            plugins.retain(|existing| existing.name != plugin.name);
            plugins.push(plugin.clone());
        }
        Some(ConfigSet { plugins })
    }

    /// Applies one KV entry; returns the scope it changed.
    fn apply(&mut self, key: &str, value: Option<&[u8]>) -> Option<Scope> {
        let scope = scope(key)?;
        let config = match value.map(parse_config) {
            None => None,
            Some(Ok(config)) => Some(config),
            Some(Err(error)) => {
                tracing::warn!(key, %error, "ignoring configuration value; keeping the previous one");
                return None;
            }
        };
        match (&scope, config) {
            (Scope::Fleet, config) => self.fleet = config,
            (Scope::Agent(agent_id), Some(config)) => {
                self.agents.insert(agent_id.clone(), config);
            }
            (Scope::Agent(agent_id), None) => {
                self.agents.remove(agent_id);
            }
        }
        Some(scope)
    }

    fn push(&self, scope: Scope, ctx: &mut Context<Self>) {
        let Some(registry) = self.directory.registry() else {
            // Nobody is connected through a registry that is down.
            return;
        };
        match scope {
            Scope::Agent(agent_id) => {
                let lookup = registry.send(Lookup(agent_id.clone()));
                ctx.spawn(lookup.into_actor(self).map(move |connection, act, _ctx| {
                    if let Ok(Some(connection)) = connection {
                        act.send_config(&agent_id, &connection);
                    }
                }));
            }
            Scope::Fleet => {
                let connected = registry.send(Connected);
                ctx.spawn(connected.into_actor(self).map(|connected, act, _ctx| {
                    for (agent_id, connection) in connected.unwrap_or_default() {
                        act.send_config(&agent_id, &connection);
                    }
                }));
            }
        }
    }

    fn send_config(&self, agent_id: &str, connection: &AgentLink) {
        tracing::info!(agent_id, "pushing configuration");
        connection.command(Command {
            task: None,
            // No key left: an empty set removes what the hub pushed before.
            config: Some(self.desired(agent_id).unwrap_or_default()),
        });
    }
}

/// Opens (creating it when missing) the bucket, starts watching it, and
/// reads its current values. Retries until NATS answers.
async fn open(link: NatsLink) -> crate::kv::Snapshot {
    crate::kv::retrying("cannot read the configuration bucket yet", || async {
        let bucket = open_config_bucket(link.jetstream(), link.kv_replicas()).await?;
        crate::kv::watch_and_read(&bucket).await
    })
    .await
}

/// Opens the `herd_config` bucket, creating it when missing.
pub async fn config_bucket(
    jetstream: &async_nats::jetstream::Context,
) -> Result<kv::Store, async_nats::Error> {
    open_config_bucket(jetstream, 1).await
}

async fn open_config_bucket(
    jetstream: &async_nats::jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, async_nats::Error> {
    crate::kv::open_bucket(
        jetstream,
        CONFIG_BUCKET,
        "herd desired plugin configuration",
        5,
        replicas,
    )
    .await
}

impl Actor for ConfigWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.load(ctx);
    }
}

impl ConfigWatcher {
    /// Reads the bucket and starts watching it (again after a watch ended).
    fn load(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(
            open(self.link.clone())
                .into_actor(self)
                .map(|(watch, values), act, ctx| {
                    for (key, value) in values {
                        act.apply(&key, value.as_deref());
                    }
                    act.loaded = true;
                    tracing::info!(
                        fleet = act.fleet.is_some(),
                        agents = act.agents.len(),
                        "configuration loaded from {CONFIG_BUCKET}"
                    );
                    ctx.add_stream(watch);
                }),
        );
    }
}

impl StreamHandler<Result<kv::Entry, kv::WatcherError>> for ConfigWatcher {
    fn handle(&mut self, entry: Result<kv::Entry, kv::WatcherError>, ctx: &mut Context<Self>) {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(%error, "configuration watch error");
                return;
            }
        };
        let value = match entry.operation {
            kv::Operation::Put => Some(&entry.value[..]),
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        if let Some(scope) = self.apply(&entry.key, value) {
            self.push(scope, ctx);
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        tracing::warn!("configuration watch ended; re-opening");
        self.loaded = false;
        self.load(ctx);
    }
}

impl Handler<GetConfig> for ConfigWatcher {
    type Result = Option<ConfigSet>;

    fn handle(
        &mut self,
        GetConfig(agent_id): GetConfig,
        _ctx: &mut Context<Self>,
    ) -> Option<ConfigSet> {
        self.desired(&agent_id)
    }
}

impl Handler<IsLoaded> for ConfigWatcher {
    type Result = bool;

    fn handle(&mut self, _: IsLoaded, _ctx: &mut Context<Self>) -> bool {
        self.loaded
    }
}

impl HubDirectory {
    /// The ConfigWatcher.
    pub(crate) fn configs(&self) -> Option<Addr<ConfigWatcher>> {
        self.get(crate::directory::ids::CONFIGS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_protobuf_values_decode_to_the_same_set() {
        let json = br#"{"plugins": [{"name": "sys", "version": "1", "args": ["-v"], "restart": {"max_restarts": 3}}]}"#;
        let set = parse_config(json).expect("json");
        assert_eq!(set.plugins[0].name, "sys");
        assert_eq!(set.plugins[0].restart.unwrap().max_restarts, 3);
        assert_eq!(parse_config(&set.encode_to_vec()), Ok(set));
        let error = parse_config(br#"{"plugins": [{"nmae": "x"}]}"#).unwrap_err();
        assert!(error.contains("unknown field `nmae`"), "{error}");
    }

    #[test]
    fn keys_map_to_scopes() {
        assert_eq!(scope("fleet"), Some(Scope::Fleet));
        assert_eq!(scope("agent.web-1"), Some(Scope::Agent("web-1".into())));
        assert_eq!(scope("other"), None);
    }
}
