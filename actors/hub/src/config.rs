//! Hub configuration: every knob of the hub, with the defaults of the design.
//!
//! Durations are plain integers with their unit in the name (`*_ms`,
//! `*_secs`) so a TOML file reads without a duration syntax to learn.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::stream::DataStreamConfig;

/// When the hub tells an agent its batch is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// Core NATS: ack after async-nats `flush()` wrote the batch to the
    /// hub's socket to the server, with no reconnect in between. That is no
    /// server round trip: a NATS crash can lose acked batches the server had
    /// not processed. For core-NATS deployments that accept that.
    Flush,
    /// JetStream (the default): ack after every record of the batch got its
    /// `PubAck`, i.e. it is stored in the data stream (see
    /// [`DataStreamConfig`]). Nothing acked is lost.
    #[default]
    Jetstream,
}

/// How the hub publishes an agent's records to NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataForm {
    /// One message per record on `herd.data.<agent_id>.<data_type>`: an
    /// `Envelope` (the default).
    #[default]
    Record,
    /// One message per batch and data type on
    /// `herd.batch.<agent_id>.<data_type>`: an `EnvelopeBatch`, the agent's
    /// identity once and the records. Far fewer messages for NATS and the
    /// subscribers; a subscriber takes the records apart itself.
    Batch,
}

/// Everything the hub needs to run. Every field has a default; see
/// `hub-bin/herd-hub.example.toml` for the documented file form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Identity of this hub process (in `Welcome`, envelopes and logs).
    /// Empty: `hub-<random>` at start.
    pub hub_id: String,
    /// Where agents connect.
    pub listen: SocketAddr,
    /// Connections the kernel queues for the hub to accept (capped by
    /// `net.core.somaxconn`). A reconnect storm beyond it drops SYNs, and
    /// each costs its agent a retransmit (1 s on Linux).
    pub listen_backlog: u32,
    /// Where the admin HTTP server listens; `None` disables it. Its `GET`
    /// endpoints (`/metrics`, `/healthz`, `/agents`, `/fleet`) are open to whoever
    /// reaches the address: they change nothing, and the default address is
    /// loopback. Every other request (`POST /enrollment-tokens`,
    /// `POST /agents/{id}/revoke`) needs `Authorization: Bearer <admin
    /// token>` (see `admin_token_file`).
    pub admin: Option<SocketAddr>,
    /// A file holding the admin token (surrounding white space ignored;
    /// empty or unreadable: the hub does not start). `None`: the hub creates
    /// `<state_dir>/admin.token` (a random token, mode 0600) on first start
    /// and reuses it afterwards. Read only with the admin server enabled;
    /// the hub logs the file's path at start, never the token.
    pub admin_token_file: Option<PathBuf>,
    /// NATS server URL(s), comma separated. `None`: start and supervise a
    /// local `nats-server` under `state_dir`.
    pub nats_url: Option<String>,
    /// How the hub authenticates to the NATS of `nats_url` (`[nats]`); only
    /// for an external server: the embedded one uses the NKeys the hub
    /// generates in `<state_dir>/nats-credentials`.
    pub nats: NatsClientConfig,
    /// Directory for the hub's state (the embedded NATS store).
    pub state_dir: PathBuf,
    /// Fleet-wide tokens, only with `tls.agent_auth = "token"` (or a
    /// plaintext link): an agent must present one, and may then claim any
    /// agent id; empty: no token is needed. Agents of a hub that identifies
    /// them by certificate enroll with tokens from `herd-hub token create`.
    pub tokens: Vec<String>,
    /// TLS of the agent link (`[tls]`): on by default.
    pub tls: HubTlsConfig,
    /// How long a new connection has to send `Hello`.
    pub handshake_timeout_ms: u64,
    /// Sockets accepted whose `Hello` is not handled yet, at most; a socket
    /// beyond it is closed at once, before anything is spent on it.
    pub max_pending_handshakes: usize,
    /// Pending handshakes from one source (an IPv4 address, or an IPv6 /64),
    /// at most; so one peer cannot take all of `max_pending_handshakes`.
    pub max_pending_handshakes_per_source: usize,
    /// Sockets one source (as for `max_pending_handshakes_per_source`) may
    /// open per second, sustained; a socket beyond it and the burst is
    /// closed at once. Catches what the pending bounds cannot: sockets that
    /// each finish their handshake quickly (a reconnect loop, a flood of
    /// cheap connections). 0: no rate.
    ///
    /// 100 by default: agents back off from 1 s, doubling, so a source's
    /// legitimate load is a wave now and then, not a stream; at 100 a second
    /// an emptied burst refills in about 5 s, and the agents refused
    /// meanwhile come back spread out by their backoff. One peer's reconnect
    /// loop is held to 100 handshakes a second, a small share of what a hub
    /// takes (docs/benchmarks.md: some 2,300 TLS handshakes a second on 2
    /// cores).
    pub accept_rate_per_source: u32,
    /// Sockets one source may open at once beyond the rate (the bucket's
    /// size); at least 1 when `accept_rate_per_source` is set.
    ///
    /// 512 by default: twice the 256 agents of a reconnect wave behind one
    /// NAT (the number `max_pending_handshakes_per_source` is sized for), so
    /// the wave and a retry of all of it pass without a refusal.
    pub accept_burst_per_source: u32,
    /// Largest frame accepted from an agent, in bytes (4-byte header excluded).
    pub max_frame_length: usize,
    /// Heartbeat interval told to agents in `Welcome`, in seconds.
    pub heartbeat_interval_secs: u32,
    /// Fleet-wide presence (KV `herd_agents`): a hub rewrites each claim
    /// every third of this; a claim not rewritten for this long is gone (a
    /// dead hub's), and a hub that cannot rewrite one for this long (cut
    /// off from NATS) closes that agent's connection. Every hub on a NATS
    /// cluster should use the same value; the first creates the bucket.
    pub presence_ttl_secs: u64,
    /// Replicas of the KV buckets the hub creates when they are missing
    /// (presence, enrollment, revocations, configuration): 3 on a 3-node
    /// cluster, so losing a node pauses none of them. Buckets that exist are
    /// used as they are.
    pub kv_replicas: usize,
    /// How often the hub pings each agent.
    pub ping_interval_ms: u64,
    /// A connection silent for this many ping intervals is closed as dead.
    pub ping_misses: u32,
    /// Most agents connected at once; beyond it `Welcome{ok: false}`.
    pub max_connections: usize,
    /// Batches of one connection that may be in flight to NATS at once;
    /// at the bound the hub stops reading that socket.
    pub max_in_flight_batches: usize,
    /// Frames queued for writing to one agent before senders wait.
    pub write_queue: usize,
    /// Tasks of one agent accepted but not yet written to its socket; a task
    /// beyond them is answered at once with `REJECTED` (the agent is not
    /// reading). Bounds the hub memory a stalled agent holds to this many
    /// task bodies.
    pub max_queued_tasks: usize,
    /// A connection whose socket takes no byte for this long while frames
    /// wait is closed (the agent stopped reading); checked every quarter of it.
    pub write_stall_timeout_ms: u64,
    /// When an ack is sent: after a flush (core NATS) or after JetStream
    /// `PubAck`s.
    pub ack_mode: AckMode,
    /// The stream records are stored in with `ack_mode = "jetstream"`.
    pub stream: DataStreamConfig,
    /// One NATS message per record, or per batch and data type.
    pub data_form: DataForm,
    /// Longest wait for a flush / `PubAck`s before the batch is re-published.
    pub publish_timeout_ms: u64,
    /// Timeout of a task request when the task does not set one.
    pub task_timeout_ms: u64,
    /// Task results batched to `herd.task.results`: flush at this many.
    pub task_batch_size: usize,
    /// ... or this long after the first result of a batch.
    pub task_batch_interval_ms: u64,
    /// Worker arbiters (threads) for connections; 0: one per core.
    pub workers: usize,
    /// Longest orderly shutdown before the hub gives up waiting.
    pub shutdown_timeout_ms: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            hub_id: String::new(),
            listen: SocketAddr::from(([0, 0, 0, 0], 7400)),
            listen_backlog: 1024,
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 7401))),
            admin_token_file: None,
            nats_url: None,
            nats: NatsClientConfig::default(),
            state_dir: PathBuf::from("/var/lib/herd-hub"),
            tokens: Vec::new(),
            tls: HubTlsConfig::default(),
            handshake_timeout_ms: 10_000,
            max_pending_handshakes: 1024,
            max_pending_handshakes_per_source: 256,
            accept_rate_per_source: 100,
            accept_burst_per_source: 512,
            max_frame_length: herd_codec::DEFAULT_MAX_FRAME_LENGTH,
            heartbeat_interval_secs: 30,
            presence_ttl_secs: 90,
            kv_replicas: 1,
            ping_interval_ms: 15_000,
            ping_misses: 3,
            max_connections: 10_000,
            max_in_flight_batches: 16,
            write_queue: 64,
            max_queued_tasks: 64,
            write_stall_timeout_ms: 30_000,
            ack_mode: AckMode::Jetstream,
            stream: DataStreamConfig::default(),
            data_form: DataForm::Record,
            publish_timeout_ms: 5_000,
            task_timeout_ms: 30_000,
            task_batch_size: 100,
            task_batch_interval_ms: 1_000,
            workers: 0,
            shutdown_timeout_ms: 5_000,
        }
    }
}

impl HubConfig {
    /// A configuration for tests: loopback on port 0, no admin server,
    /// short intervals, and a plaintext agent link (the suites about the
    /// protocol speak it; the TLS suites turn TLS on).
    pub fn for_tests(nats_url: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            nats_url: Some(nats_url.into()),
            tls: HubTlsConfig {
                insecure: true,
                ..HubTlsConfig::default()
            },
            handshake_timeout_ms: 1_000,
            heartbeat_interval_secs: 1,
            ping_interval_ms: 200,
            ping_misses: 3,
            publish_timeout_ms: 1_000,
            task_timeout_ms: 2_000,
            task_batch_interval_ms: 100,
            workers: 2,
            shutdown_timeout_ms: 2_000,
            ..Self::default()
        }
    }

    /// Checks the values that would make the hub misbehave.
    pub fn validate(&self) -> Result<(), HubConfigError> {
        let positive = [
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("max_pending_handshakes", self.max_pending_handshakes as u64),
            (
                "max_pending_handshakes_per_source",
                self.max_pending_handshakes_per_source as u64,
            ),
            ("ping_interval_ms", self.ping_interval_ms),
            ("presence_ttl_secs", self.presence_ttl_secs),
            ("stream.replicas", self.stream.replicas as u64),
            ("kv_replicas", self.kv_replicas as u64),
            ("listen_backlog", u64::from(self.listen_backlog)),
            ("ping_misses", u64::from(self.ping_misses)),
            ("max_frame_length", self.max_frame_length as u64),
            ("max_connections", self.max_connections as u64),
            ("max_in_flight_batches", self.max_in_flight_batches as u64),
            ("write_queue", self.write_queue as u64),
            ("max_queued_tasks", self.max_queued_tasks as u64),
            ("write_stall_timeout_ms", self.write_stall_timeout_ms),
            ("publish_timeout_ms", self.publish_timeout_ms),
            ("task_timeout_ms", self.task_timeout_ms),
            ("task_batch_size", self.task_batch_size as u64),
            ("task_batch_interval_ms", self.task_batch_interval_ms),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(HubConfigError::Zero { field });
        }
        // The burst matters only with a rate; with one, 0 would refuse every socket.
        if self.accept_rate_per_source > 0 && self.accept_burst_per_source == 0 {
            return Err(HubConfigError::Zero {
                field: "accept_burst_per_source",
            });
        }
        if let Some(position) = self.tokens.iter().position(String::is_empty) {
            return Err(HubConfigError::EmptyToken { position });
        }
        if self.agent_auth() == AgentAuth::Certificate && !self.tokens.is_empty() {
            return Err(HubConfigError::FleetTokensWithCertificates);
        }
        self.tls.validate()?;
        self.nats.validate(self.nats_url.is_some())
    }

    /// How agents prove who they are: `tls.agent_auth`, but always by token
    /// on a plaintext link.
    pub fn agent_auth(&self) -> AgentAuth {
        if self.tls.insecure {
            AgentAuth::Token
        } else {
            self.tls.agent_auth
        }
    }

    /// [`Self::handshake_timeout_ms`] as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// [`Self::presence_ttl_secs`] as a duration.
    pub fn presence_ttl(&self) -> Duration {
        Duration::from_secs(self.presence_ttl_secs)
    }

    /// [`Self::ping_interval_ms`] as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    /// How long a connection may stay silent before it is closed as dead.
    pub fn dead_after(&self) -> Duration {
        self.ping_interval() * self.ping_misses
    }

    /// [`Self::publish_timeout_ms`] as a duration.
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    /// [`Self::write_stall_timeout_ms`] as a duration.
    pub fn write_stall_timeout(&self) -> Duration {
        Duration::from_millis(self.write_stall_timeout_ms)
    }

    /// [`Self::task_timeout_ms`] as a duration.
    pub fn task_timeout(&self) -> Duration {
        Duration::from_millis(self.task_timeout_ms)
    }

    /// [`Self::task_batch_interval_ms`] as a duration.
    pub fn task_batch_interval(&self) -> Duration {
        Duration::from_millis(self.task_batch_interval_ms)
    }

    /// [`Self::shutdown_timeout_ms`] as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// The number of worker arbiters to run: [`Self::workers`], or one per core.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }
}

/// How agents prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentAuth {
    /// By the certificate the hub's CA issued them at enrollment (the
    /// default): its subject is the agent id, whatever `Hello` says. An
    /// agent without one can only enroll, with a token from
    /// `herd-hub token create`.
    #[default]
    Certificate,
    /// By the fleet-wide `tokens` and the id the agent declares: any token
    /// holder can speak for any agent id. Also what a plaintext hub does.
    Token,
}

/// TLS of the agent link.
///
/// By default the hub keeps its own CA in `<state_dir>/tls` (created on
/// first start, key 0600) and issues itself a server certificate at every
/// start; agents trust it by the CA's fingerprint, which the hub logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubTlsConfig {
    /// Plaintext agent link: anyone on the network can read the records and
    /// speak for any agent. The hub WARNs at start.
    pub insecure: bool,
    /// An operator's CA certificate (PEM), with `ca_key`, instead of the
    /// hub's own.
    pub ca_cert: Option<PathBuf>,
    /// The key of `ca_cert` (PEM, PKCS#8).
    pub ca_key: Option<PathBuf>,
    /// An operator's server certificate chain (PEM, end entity first), with
    /// `key`, instead of one the hub issues itself.
    pub cert: Option<PathBuf>,
    /// The key of `cert` (PEM).
    pub key: Option<PathBuf>,
    /// DNS names and IP addresses agents dial this hub by, for the
    /// certificate the hub issues itself. Empty: `localhost`, `127.0.0.1`,
    /// `::1`, the host name, and the listen address when it is not a
    /// wildcard.
    pub names: Vec<String>,
    /// How agents prove who they are; with `insecure = true` always by token.
    pub agent_auth: AgentAuth,
    /// How long the certificates the hub issues agents are valid; agents
    /// renew theirs two thirds into it, over their live connection.
    pub agent_cert_validity_secs: u64,
}

impl Default for HubTlsConfig {
    fn default() -> Self {
        Self {
            insecure: false,
            ca_cert: None,
            ca_key: None,
            cert: None,
            key: None,
            names: Vec::new(),
            agent_auth: AgentAuth::Certificate,
            agent_cert_validity_secs: 30 * 24 * 3600,
        }
    }
}

impl HubTlsConfig {
    fn validate(&self) -> Result<(), HubConfigError> {
        incomplete_pair(("tls.ca_cert", &self.ca_cert), ("tls.ca_key", &self.ca_key))?;
        incomplete_pair(("tls.cert", &self.cert), ("tls.key", &self.key))?;
        if self.insecure
            && let Some(field) = [
                ("tls.ca_cert", self.ca_cert.is_some()),
                ("tls.cert", self.cert.is_some()),
                ("tls.names", !self.names.is_empty()),
            ]
            .into_iter()
            .find_map(|(field, set)| set.then_some(field))
        {
            return Err(HubConfigError::InsecureWith { field });
        }
        if self.agent_cert_validity_secs < MIN_AGENT_CERT_VALIDITY_SECS {
            return Err(HubConfigError::ShortAgentCertificates {
                secs: self.agent_cert_validity_secs,
            });
        }
        // Issuing agent certificates takes a CA key: the hub's own CA, or
        // the operator's with its key.
        if !self.insecure
            && self.agent_auth == AgentAuth::Certificate
            && self.cert.is_some()
            && self.ca_key.is_none()
        {
            return Err(HubConfigError::CertificatesWithoutCa);
        }
        Ok(())
    }
}

/// The shortest agent certificate validity: renewal runs at two thirds, and
/// certificates carry whole seconds.
pub const MIN_AGENT_CERT_VALIDITY_SECS: u64 = 30;
/// How the hub authenticates to an external NATS server (`nats_url`) and
/// whether it speaks TLS to it. Every field is unset by default: no
/// credentials, TLS only when the URL or the server asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsClientConfig {
    /// A JWT credentials file (`.creds`: the user JWT and its NKey seed), for
    /// a server run in operator mode.
    pub creds_file: Option<PathBuf>,
    /// A file holding an NKey user seed (one line `SU...`), for a server
    /// that lists the user's public key.
    pub nkey_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) the server's certificate is checked against,
    /// instead of the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate (PEM), with `tls_key_file`, for a server that
    /// verifies clients.
    pub tls_cert_file: Option<PathBuf>,
    /// The key of `tls_cert_file` (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// Refuse to talk to the server without TLS, even when it does not ask for it.
    pub tls_required: bool,
}

impl NatsClientConfig {
    fn validate(&self, external: bool) -> Result<(), HubConfigError> {
        if !external
            && let Some(field) = [
                ("nats.creds_file", self.creds_file.is_some()),
                ("nats.nkey_file", self.nkey_file.is_some()),
                ("nats.tls_ca_file", self.tls_ca_file.is_some()),
                ("nats.tls_cert_file", self.tls_cert_file.is_some()),
                ("nats.tls_key_file", self.tls_key_file.is_some()),
                ("nats.tls_required", self.tls_required),
            ]
            .into_iter()
            .find_map(|(field, set)| set.then_some(field))
        {
            return Err(HubConfigError::EmbeddedNatsWith { field });
        }
        if self.creds_file.is_some() && self.nkey_file.is_some() {
            return Err(HubConfigError::Exclusive {
                first: "nats.creds_file",
                second: "nats.nkey_file",
            });
        }
        incomplete_pair(
            ("nats.tls_cert_file", &self.tls_cert_file),
            ("nats.tls_key_file", &self.tls_key_file),
        )
    }
}

/// `Incomplete` when exactly one of two settings that only work together is set.
fn incomplete_pair(
    (first, first_value): (&'static str, &Option<PathBuf>),
    (second, second_value): (&'static str, &Option<PathBuf>),
) -> Result<(), HubConfigError> {
    match (first_value.is_some(), second_value.is_some()) {
        (true, false) => Err(HubConfigError::Incomplete {
            set: first,
            missing: second,
        }),
        (false, true) => Err(HubConfigError::Incomplete {
            set: second,
            missing: first,
        }),
        _ => Ok(()),
    }
}

/// A configuration value the hub cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubConfigError {
    /// A count or duration that must be positive is 0.
    #[error("`{field}` is 0; it must be at least 1")]
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// An enrollment token is the empty string.
    #[error("token #{position} is empty; remove it or give it a value")]
    EmptyToken {
        /// Its position in `tokens`.
        position: usize,
    },
    /// One of two settings that only work together is set.
    #[error("`{set}` is set but `{missing}` is not; set both or neither")]
    Incomplete {
        /// The one that is set.
        set: &'static str,
        /// The one that is missing.
        missing: &'static str,
    },
    /// Fleet tokens on a hub that identifies agents by certificate.
    #[error(
        "`tokens` (fleet-wide tokens) only apply with `tls.agent_auth = \"token\"`; agents of this \
         hub enroll with tokens from `herd-hub token create`"
    )]
    FleetTokensWithCertificates,
    /// Agent certificates valid too briefly to be renewed.
    #[error(
        "`tls.agent_cert_validity_secs` is {secs}; it must be at least {MIN_AGENT_CERT_VALIDITY_SECS}"
    )]
    ShortAgentCertificates {
        /// The configured validity.
        secs: u64,
    },
    /// Agents identified by certificate, with an operator's server
    /// certificate and no CA key to issue theirs.
    #[error(
        "`tls.agent_auth = \"certificate\"` needs a CA key to issue agent certificates: with \
         `tls.cert`, set `tls.ca_cert` and `tls.ca_key` too, or set `tls.agent_auth = \"token\"`"
    )]
    CertificatesWithoutCa,
    /// A TLS setting next to `tls.insecure = true`, which turns TLS off.
    #[error("`tls.insecure = true` turns TLS off, yet `{field}` is set; remove one")]
    InsecureWith {
        /// The TLS setting.
        field: &'static str,
    },
    /// Two settings of which at most one may be set.
    #[error("`{first}` and `{second}` are both set; set one of them")]
    Exclusive {
        /// The first.
        first: &'static str,
        /// The second.
        second: &'static str,
    },
    /// A `[nats]` client setting without `nats_url`: it is for an external
    /// server, and the embedded one uses the credentials the hub generates.
    #[error(
        "`{field}` is set but `nats_url` is not: `[nats]` is for an external NATS server; \
         the embedded server uses the NKeys the hub generates in <state_dir>/nats-credentials"
    )]
    EmbeddedNatsWith {
        /// The `[nats]` setting.
        field: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let config = HubConfig::default();
        assert_eq!(config.handshake_timeout(), Duration::from_secs(10));
        assert_eq!(config.max_frame_length, 4 * 1024 * 1024);
        assert_eq!(config.dead_after(), Duration::from_secs(45));
        assert_eq!(config.max_pending_handshakes, 1024);
        assert_eq!(config.max_pending_handshakes_per_source, 256);
        assert_eq!(config.accept_rate_per_source, 100);
        assert_eq!(config.accept_burst_per_source, 512);
        assert_eq!(config.max_queued_tasks, 64);
        assert_eq!(config.write_stall_timeout(), Duration::from_secs(30));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn zero_values_and_empty_tokens_are_refused_by_name() {
        let config = HubConfig {
            ping_misses: 0,
            ..HubConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "`ping_misses` is 0; it must be at least 1"
        );
        let config = HubConfig {
            max_pending_handshakes_per_source: 0,
            ..HubConfig::default()
        };
        assert_eq!(
            config.validate(),
            Err(HubConfigError::Zero {
                field: "max_pending_handshakes_per_source"
            })
        );
        let config = HubConfig {
            accept_burst_per_source: 0,
            ..HubConfig::default()
        };
        assert_eq!(
            config.validate(),
            Err(HubConfigError::Zero {
                field: "accept_burst_per_source"
            })
        );
        let config = HubConfig {
            accept_rate_per_source: 0,
            accept_burst_per_source: 0,
            ..HubConfig::default()
        };
        assert_eq!(config.validate(), Ok(()), "no rate, no burst needed");
        let config = HubConfig {
            tokens: vec!["a".into(), String::new()],
            ..HubConfig::default()
        };
        assert_eq!(
            config.validate(),
            Err(HubConfigError::EmptyToken { position: 1 })
        );
    }

    #[test]
    fn partial_toml_keeps_defaults_and_unknown_keys_are_errors() {
        let config: HubConfig =
            toml_like(r#"{"listen": "127.0.0.1:9000", "ack_mode": "jetstream"}"#);
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert_eq!(config.ack_mode, AckMode::Jetstream);
        assert_eq!(config.ping_misses, 3);
        let error = serde_json::from_str::<HubConfig>(r#"{"listne": "x"}"#).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `listne`"),
            "{error}"
        );
    }

    #[test]
    fn nats_client_settings_are_checked() {
        let external = |nats: NatsClientConfig| HubConfig {
            nats_url: Some("tls://nats.example:4222".into()),
            nats,
            ..HubConfig::default()
        };
        let full = NatsClientConfig {
            nkey_file: Some("hub.nk".into()),
            tls_ca_file: Some("ca.pem".into()),
            tls_cert_file: Some("client.pem".into()),
            tls_key_file: Some("client.key".into()),
            tls_required: true,
            ..NatsClientConfig::default()
        };
        assert_eq!(external(full.clone()).validate(), Ok(()));
        let error = external(NatsClientConfig {
            tls_key_file: None,
            ..full.clone()
        })
        .validate()
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "`nats.tls_cert_file` is set but `nats.tls_key_file` is not; set both or neither"
        );
        assert_eq!(
            external(NatsClientConfig {
                creds_file: Some("hub.creds".into()),
                ..full.clone()
            })
            .validate(),
            Err(HubConfigError::Exclusive {
                first: "nats.creds_file",
                second: "nats.nkey_file"
            })
        );
        let embedded = HubConfig {
            nats: NatsClientConfig {
                tls_required: true,
                ..NatsClientConfig::default()
            },
            ..HubConfig::default()
        };
        let error = embedded.validate().unwrap_err();
        assert_eq!(
            error,
            HubConfigError::EmbeddedNatsWith {
                field: "nats.tls_required"
            }
        );
        assert!(
            error.to_string().contains("<state_dir>/nats-credentials"),
            "{error}"
        );
        let parsed: HubConfig = toml_like(r#"{"nats": {"creds_file": "/etc/herd/hub.creds"}}"#);
        assert_eq!(
            parsed.nats.creds_file,
            Some(PathBuf::from("/etc/herd/hub.creds"))
        );
        assert!(serde_json::from_str::<HubConfig>(r#"{"nats": {"nkey": "x"}}"#).is_err());
    }

    fn toml_like(json: &str) -> HubConfig {
        serde_json::from_str(json).expect("valid config")
    }
}
