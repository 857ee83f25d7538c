//! The agent's configuration: hubs, credentials, state directory, timings,
//! bounds and locally declared plugins.
//!
//! Every field has a default, so an empty TOML document is a valid (if
//! useless, having no hub) configuration. Durations are integers with their
//! unit in the name (`_ms`, `_secs`) so a TOML file needs no duration syntax.
//! How plugins are isolated (`plugin_isolation`, `cgroup_dir`) and the
//! resource caps of each (`[plugin_limits.<name>]`) are the host's own
//! policy: they hold for a plugin of that name whether it is declared here
//! or pushed by the hub.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use herd_codec::DEFAULT_MAX_FRAME_LENGTH;
use herd_codec::proto::{PluginConfig, RestartPolicy};
use serde::{Deserialize, Serialize};

pub use herd_spool::SpoolConfig;

use crate::cgroup::{CpuMax, MemoryMax};
use crate::error::AgentConfigError;

/// Everything the agent needs to run.
///
/// ```
/// use herd_agent::AgentConfig;
///
/// let config = AgentConfig::from_toml_str(r#"
///     hubs = ["hub-a:7400", "hub-b:7400"]
///     tls.ca_file = "/etc/herd/hub-ca.pem"
///     token = "secret"
///     state_dir = "/var/lib/herd-agent"
///
///     [[plugins]]
///     name = "sysmetrics"
///     path = "/usr/lib/herd/plugins/sysmetrics"
/// "#)?;
/// assert_eq!(config.hubs.len(), 2);
/// assert_eq!(config.heartbeat_interval_secs, 60);
/// assert_eq!(config.plugins[0].restart.max_restarts, 5);
/// assert_eq!(config.plugin_isolation, herd_agent::PluginIsolation::Auto);
/// # Ok::<(), herd_agent::AgentConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Hub addresses (`host:port`), tried in this order.
    pub hubs: Vec<String>,
    /// Enrollment token: with it, an agent without a certificate enrolls
    /// (and keeps the certificate in `state_dir`); a hub identifying agents
    /// by token takes it as the fleet token.
    pub token: String,
    /// How the agent trusts its hubs (`[tls]`).
    pub tls: AgentTlsConfig,
    /// Directory for the agent id, the sequence number and plugin state.
    pub state_dir: PathBuf,
    /// Heartbeat interval in seconds until the hub's `Welcome` says otherwise.
    pub heartbeat_interval_secs: u64,
    /// Largest frame sent or accepted, in bytes (hub socket and plugin pipes).
    pub max_frame_length: usize,
    /// Time allowed to open a TCP connection to one hub, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Time allowed for the hub's `Welcome` after `Hello`, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// Timeout of a task whose `timeout_ms` is 0, in milliseconds.
    pub task_timeout_ms: u64,
    /// On shutdown, how long to wait for the hub to ack what is still
    /// unacked (only while connected), in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Record batching.
    pub batch: BatchConfig,
    /// The unacked window.
    pub spool: SpoolConfig,
    /// Reconnection backoff.
    pub reconnect: ReconnectConfig,
    /// How plugin processes are isolated.
    pub plugin_isolation: PluginIsolation,
    /// The cgroup v2 directory plugins' cgroups go under (`<dir>/plugins/<name>`,
    /// the agent itself moving to `<dir>/agent`); default: the agent's own
    /// cgroup (`/proc/self/cgroup`), when it is delegated to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_dir: Option<PathBuf>,
    /// Resource caps by plugin name, for local and hub-pushed plugins alike
    /// (in force only with cgroup isolation and the controllers they need).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub plugin_limits: BTreeMap<String, PluginLimits>,
    /// Plugins declared locally (standalone use); the hub's configuration
    /// wins for the plugins it names.
    pub plugins: Vec<PluginSpec>,
}

/// TLS of the link to the hubs: on unless `insecure`, trusting the hub by
/// its CA's fingerprint or by a CA file.
///
/// ```
/// use herd_agent::AgentConfig;
///
/// let config = AgentConfig::from_toml_str(r#"
///     hubs = ["hub.example:7400"]
///     [tls]
///     ca_fingerprint = "sha256:4f0a7b2c9d1e3f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c"
/// "#)?;
/// assert!(config.tls.trust()?.is_some());
///
/// let error = AgentConfig::from_toml_str(r#"hubs = ["hub.example:7400"]"#).unwrap_err();
/// assert!(error.to_string().contains("tls.ca_fingerprint"));
/// # Ok::<(), herd_agent::AgentConfigError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentTlsConfig {
    /// Plaintext: only for a hub with `tls.insecure = true` too. Anyone on
    /// the path can read the records and pose as the hub.
    pub insecure: bool,
    /// The SHA-256 fingerprint of the hub's CA certificate (the hub logs it
    /// at start; `openssl x509 -noout -fingerprint -sha256` prints it too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
    /// A PEM file with the hub's CA certificate(s), instead of a fingerprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The name the hub's certificate is checked against; default: the
    /// host part of the hub address dialled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl AgentTlsConfig {
    /// A plaintext link (`insecure = true`), for a hub that speaks plaintext.
    pub fn insecure() -> Self {
        Self {
            insecure: true,
            ..Self::default()
        }
    }

    /// What the agent trusts its hubs by; `None` for a plaintext link.
    pub fn trust(&self) -> Result<Option<herd_tls::HubTrust>, AgentConfigError> {
        match (self.insecure, &self.ca_fingerprint, &self.ca_file) {
            (true, None, None) => Ok(None),
            (true, _, _) => Err(AgentConfigError::Tls(
                "tls.insecure = true turns TLS off, yet tls.ca_fingerprint or tls.ca_file is set; remove one".into(),
            )),
            (false, Some(_), Some(_)) => Err(AgentConfigError::Tls(
                "set tls.ca_fingerprint or tls.ca_file, not both".into(),
            )),
            (false, Some(fingerprint), None) => fingerprint
                .parse()
                .map(|fingerprint| Some(herd_tls::HubTrust::Fingerprint(fingerprint)))
                .map_err(|error| AgentConfigError::Tls(format!("tls.ca_fingerprint: {error}"))),
            (false, None, Some(file)) => Ok(Some(herd_tls::HubTrust::CaFile(file.clone()))),
            (false, None, None) => Err(AgentConfigError::Tls(
                "the hub link is TLS: set tls.ca_fingerprint (the hub logs it at start) or \
                 tls.ca_file, or tls.insecure = true for a plaintext hub"
                    .into(),
            )),
        }
    }
}

/// How plugin processes are isolated from each other and from the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginIsolation {
    /// cgroups when a writable cgroup v2 subtree is delegated to the agent
    /// (or `cgroup_dir` names one), else process groups (logged at INFO
    /// with the reason).
    #[default]
    Auto,
    /// Each plugin in a cgroup of its own; without a usable subtree no
    /// plugin is started (each is reported failed with the reason).
    Cgroup,
    /// Process groups and the parent-death signal only.
    ProcessGroup,
}

/// A plugin's resource caps (`[plugin_limits.<name>]`), written to its
/// cgroup: `memory.max` and `cpu.max`.
///
/// ```
/// use herd_agent::AgentConfig;
///
/// let config = AgentConfig::from_toml_str(r#"
///     hubs = ["hub:7400"]
///     tls.ca_file = "/etc/herd/hub-ca.pem"
///     [plugin_limits.sysmetrics]
///     memory_max = "250M"
///     cpu_max = "10%"
/// "#)?;
/// let limits = config.limits_of("sysmetrics");
/// assert_eq!(limits.memory_max.unwrap().bytes(), 250 << 20);
/// assert_eq!(limits.cpu_max.unwrap().cpu_max_line(), "10000 100000");
/// assert_eq!(config.limits_of("other"), Default::default());
/// # Ok::<(), herd_agent::AgentConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginLimits {
    /// Memory cap: bytes, or a string with K, M, G or T (binary), e.g. "250M".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<MemoryMax>,
    /// CPU cap in percent of one CPU, e.g. "10%".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<CpuMax>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            hubs: Vec::new(),
            token: String::new(),
            tls: AgentTlsConfig::default(),
            state_dir: PathBuf::from("/var/lib/herd-agent"),
            heartbeat_interval_secs: 60,
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
            connect_timeout_ms: 5_000,
            handshake_timeout_ms: 10_000,
            task_timeout_ms: 30_000,
            shutdown_timeout_ms: 10_000,
            batch: BatchConfig::default(),
            spool: SpoolConfig::default(),
            reconnect: ReconnectConfig::default(),
            plugin_isolation: PluginIsolation::default(),
            cgroup_dir: None,
            plugin_limits: BTreeMap::new(),
            plugins: Vec::new(),
        }
    }
}

/// When the batcher cuts a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Flush pending records at least this often, in milliseconds.
    pub flush_interval_ms: u64,
    /// Flush as soon as this many records are pending.
    pub max_records: usize,
    /// Flush as soon as the pending records encode to this many bytes.
    pub max_bytes: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            flush_interval_ms: 100,
            max_records: 1_000,
            max_bytes: 1024 * 1024,
        }
    }
}

/// Exponential backoff with jitter between connection attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconnectConfig {
    /// First delay, in milliseconds.
    pub min_backoff_ms: u64,
    /// Largest delay, in milliseconds.
    pub max_backoff_ms: u64,
    /// A session that stayed up this long resets the backoff, in milliseconds.
    pub reset_after_ms: u64,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        Self {
            min_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            reset_after_ms: 30_000,
        }
    }
}

/// One plugin: what to run and how to restart it. The agent-side form of
/// the protocol's `PluginConfig`, with the defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// Unique name; becomes `Record.source` of its records.
    pub name: String,
    /// Free-form version; a change restarts the plugin.
    #[serde(default)]
    pub version: String,
    /// Lower-case hex SHA-256 of the executable, checked before every start
    /// (empty: no check).
    #[serde(default)]
    pub sha256: String,
    /// Path of the executable.
    pub path: PathBuf,
    /// Command-line arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Restart behaviour.
    #[serde(default)]
    pub restart: PluginRestart,
    /// After stdin is closed, how long the plugin has to exit before SIGTERM
    /// (and as long again before SIGKILL), in milliseconds.
    #[serde(default = "default_stop_grace_ms")]
    pub stop_grace_ms: u64,
}

fn default_stop_grace_ms() -> u64 {
    3_000
}

/// How a plugin is restarted after it exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginRestart {
    /// First delay before a restart, in milliseconds.
    pub min_backoff_ms: u64,
    /// Largest delay between restarts, in milliseconds.
    pub max_backoff_ms: u64,
    /// More than this many restarts within `period_secs` marks the plugin
    /// failed: it is reported and no longer restarted.
    pub max_restarts: u32,
    /// Window for `max_restarts`, in seconds.
    pub period_secs: u64,
}

impl Default for PluginRestart {
    fn default() -> Self {
        Self {
            min_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            max_restarts: 5,
            period_secs: 60,
        }
    }
}

impl From<Option<RestartPolicy>> for PluginRestart {
    fn from(policy: Option<RestartPolicy>) -> Self {
        let defaults = Self::default();
        let policy = policy.unwrap_or_default();
        let or = |value: u32, default: u64| {
            if value == 0 {
                default
            } else {
                u64::from(value)
            }
        };
        Self {
            min_backoff_ms: or(policy.min_backoff_ms, defaults.min_backoff_ms),
            max_backoff_ms: or(policy.max_backoff_ms, defaults.max_backoff_ms),
            max_restarts: if policy.max_restarts == 0 {
                defaults.max_restarts
            } else {
                policy.max_restarts
            },
            period_secs: or(policy.period_secs, defaults.period_secs),
        }
    }
}

impl From<PluginConfig> for PluginSpec {
    fn from(config: PluginConfig) -> Self {
        Self {
            name: config.name,
            version: config.version,
            sha256: config.sha256.to_ascii_lowercase(),
            path: PathBuf::from(config.path),
            args: config.args,
            env: config.env.into_iter().collect(),
            restart: config.restart.into(),
            stop_grace_ms: default_stop_grace_ms(),
        }
    }
}

impl PluginSpec {
    /// A spec with defaults for everything but the name and the path.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            version: String::new(),
            sha256: String::new(),
            path: path.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            restart: PluginRestart::default(),
            stop_grace_ms: default_stop_grace_ms(),
        }
    }

    /// Checks the name, the hash format and the restart bounds.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        herd_codec::validate_name(&self.name).map_err(|source| AgentConfigError::PluginName {
            name: self.name.clone(),
            source,
        })?;
        if !self.sha256.is_empty()
            && (self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(AgentConfigError::PluginSha256 {
                name: self.name.clone(),
                value: self.sha256.clone(),
            });
        }
        if self.path.as_os_str().is_empty() {
            return Err(AgentConfigError::PluginPath {
                name: self.name.clone(),
            });
        }
        check_range(
            &format!("plugin {:?} restart backoff", self.name),
            self.restart.min_backoff_ms,
            self.restart.max_backoff_ms,
        )
    }

    /// The restart window as a duration.
    pub fn restart_period(&self) -> Duration {
        Duration::from_secs(self.restart.period_secs)
    }

    /// The stop grace period as a duration.
    pub fn stop_grace(&self) -> Duration {
        Duration::from_millis(self.stop_grace_ms)
    }
}

fn check_range(what: &str, min: u64, max: u64) -> Result<(), AgentConfigError> {
    if min == 0 || min > max {
        return Err(AgentConfigError::Range {
            what: what.to_owned(),
            min,
            max,
        });
    }
    Ok(())
}

fn check_positive(what: &'static str, value: u64) -> Result<(), AgentConfigError> {
    if value == 0 {
        return Err(AgentConfigError::Zero { what });
    }
    Ok(())
}

impl AgentConfig {
    /// Parses and validates a TOML document.
    pub fn from_toml_str(text: &str) -> Result<Self, AgentConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| AgentConfigError::Toml(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that the values can work together; says which one cannot.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        if self.hubs.is_empty() {
            return Err(AgentConfigError::NoHub);
        }
        if let Some(hub) = self.hubs.iter().find(|h| !is_host_port(h)) {
            return Err(AgentConfigError::HubAddress { value: hub.clone() });
        }
        self.tls.trust()?;
        check_positive("heartbeat_interval_secs", self.heartbeat_interval_secs)?;
        check_positive("connect_timeout_ms", self.connect_timeout_ms)?;
        check_positive("handshake_timeout_ms", self.handshake_timeout_ms)?;
        check_positive("task_timeout_ms", self.task_timeout_ms)?;
        check_positive("batch.flush_interval_ms", self.batch.flush_interval_ms)?;
        check_positive("batch.max_records", self.batch.max_records as u64)?;
        self.spool.validate()?;
        if self.batch.max_bytes == 0 || self.batch.max_bytes >= self.max_frame_length {
            return Err(AgentConfigError::BatchBytes {
                max_bytes: self.batch.max_bytes,
                max_frame_length: self.max_frame_length,
            });
        }
        if self.spool.max_record_bytes() < self.batch.max_bytes as u64 {
            return Err(AgentConfigError::SpoolBytes {
                spool: self.spool.max_record_bytes(),
                batch: self.batch.max_bytes,
            });
        }
        check_range(
            "reconnect backoff",
            self.reconnect.min_backoff_ms,
            self.reconnect.max_backoff_ms,
        )?;
        for name in self.plugin_limits.keys() {
            herd_codec::validate_name(name).map_err(|source| AgentConfigError::PluginName {
                name: name.clone(),
                source,
            })?;
        }
        let mut names = std::collections::HashSet::new();
        for plugin in &self.plugins {
            plugin.validate()?;
            if !names.insert(plugin.name.as_str()) {
                return Err(AgentConfigError::DuplicatePlugin {
                    name: plugin.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// The heartbeat interval as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_secs)
    }

    /// The resource caps configured for plugin `name` (none by default).
    pub fn limits_of(&self, name: &str) -> PluginLimits {
        self.plugin_limits.get(name).copied().unwrap_or_default()
    }
}

/// `host:port` with a non-empty host and a numeric port.
fn is_host_port(value: &str) -> bool {
    match value.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> AgentConfig {
        AgentConfig {
            hubs: vec!["127.0.0.1:7400".into()],
            tls: AgentTlsConfig::insecure(),
            ..AgentConfig::default()
        }
    }

    #[test]
    fn defaults_follow_the_design() {
        let config = AgentConfig::from_toml_str("hubs = [\"h:1\"]\ntls.insecure = true").unwrap();
        assert_eq!(config.heartbeat_interval(), Duration::from_secs(60));
        assert_eq!(config.batch.flush_interval_ms, 100);
        assert_eq!(config.reconnect.min_backoff_ms, 1_000);
        assert_eq!(config.reconnect.max_backoff_ms, 60_000);
        assert_eq!(config.max_frame_length, DEFAULT_MAX_FRAME_LENGTH);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err =
            AgentConfig::from_toml_str("hubs = [\"h:1\"]\ntls.insecure = true\nhaertbeat = 3")
                .unwrap_err();
        assert!(err.to_string().contains("haertbeat"), "{err}");
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        assert!(matches!(
            AgentConfig::default().validate(),
            Err(AgentConfigError::NoHub)
        ));
        let mut config = minimal();
        config.hubs.push("nohost".into());
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "hub address \"nohost\" is not host:port"
        );

        let mut config = minimal();
        config.reconnect.min_backoff_ms = 5_000;
        config.reconnect.max_backoff_ms = 1_000;
        assert!(config.validate().unwrap_err().to_string().contains("5000"));

        let mut config = minimal();
        config.batch.max_bytes = config.max_frame_length;
        assert!(matches!(
            config.validate(),
            Err(AgentConfigError::BatchBytes { .. })
        ));
    }

    #[test]
    fn plugins_are_checked() {
        let mut config = minimal();
        config.plugins = vec![
            PluginSpec::new("a", "/bin/a"),
            PluginSpec::new("a", "/bin/b"),
        ];
        assert!(matches!(
            config.validate(),
            Err(AgentConfigError::DuplicatePlugin { name }) if name == "a"
        ));
        config.plugins = vec![PluginSpec::new("bad.name", "/bin/a")];
        assert!(matches!(
            config.validate(),
            Err(AgentConfigError::PluginName { .. })
        ));
        let mut spec = PluginSpec::new("p", "/bin/p");
        spec.sha256 = "abc".into();
        config.plugins = vec![spec];
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("\"abc\"")
        );
    }

    #[test]
    fn isolation_and_limits_parse_and_are_checked() {
        let config = AgentConfig::from_toml_str(
            "hubs = [\"h:1\"]\ntls.insecure = true\nplugin_isolation = \"cgroup\"\n\
             cgroup_dir = \"/sys/fs/cgroup/herd\"\n\
             [plugin_limits.p]\nmemory_max = 262144000\ncpu_max = \"12.5%\"\n",
        )
        .unwrap();
        assert_eq!(config.plugin_isolation, PluginIsolation::Cgroup);
        assert_eq!(
            config.cgroup_dir.as_deref(),
            Some(std::path::Path::new("/sys/fs/cgroup/herd"))
        );
        let limits = config.limits_of("p");
        assert_eq!(limits.memory_max.map(MemoryMax::bytes), Some(250 << 20));
        assert_eq!(limits.cpu_max.map(CpuMax::quota_us), Some(12_500));
        // Printed and read back unchanged.
        let printed = toml::to_string(&config).unwrap();
        assert_eq!(AgentConfig::from_toml_str(&printed).unwrap(), config);
        // The default prints neither cgroup_dir nor limits.
        let printed = toml::to_string(&minimal()).unwrap();
        assert!(printed.contains("plugin_isolation = \"auto\""), "{printed}");
        assert!(!printed.contains("cgroup_dir") && !printed.contains("plugin_limits"));

        let error = |toml: &str| {
            AgentConfig::from_toml_str(&format!("hubs = [\"h:1\"]\ntls.insecure = true\n{toml}"))
                .unwrap_err()
                .to_string()
        };
        let bad_mode = error("plugin_isolation = \"cgroups\"");
        assert!(bad_mode.contains("process_group"), "{bad_mode}");
        let bad_memory = error("[plugin_limits.p]\nmemory_max = \"250X\"");
        assert!(bad_memory.contains("memory_max \"250X\""), "{bad_memory}");
        let bad_cpu = error("[plugin_limits.p]\ncpu_max = \"10\"");
        assert!(bad_cpu.contains("cpu_max \"10\""), "{bad_cpu}");
        let unknown = error("[plugin_limits.p]\nmemory = \"1G\"");
        assert!(unknown.contains("memory"), "{unknown}");
        let bad_name = error("[plugin_limits.\"a.b\"]\nmemory_max = \"1G\"");
        assert!(bad_name.contains("a.b"), "{bad_name}");
    }

    #[test]
    fn protocol_config_fills_defaults() {
        let spec = PluginSpec::from(PluginConfig {
            name: "p".into(),
            sha256: "AB".repeat(32),
            path: "/bin/p".into(),
            restart: Some(RestartPolicy {
                max_restarts: 2,
                ..RestartPolicy::default()
            }),
            ..PluginConfig::default()
        });
        assert_eq!(spec.sha256, "ab".repeat(32));
        assert_eq!(spec.restart.max_restarts, 2);
        assert_eq!(spec.restart.min_backoff_ms, 1_000);
        assert_eq!(spec.restart.period_secs, 60);
        spec.validate().unwrap();
    }
}
