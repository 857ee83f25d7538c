//! Who the hub is to NATS, and how anyone acting as the hub gets there.
//!
//! An external server (`nats_url`) is reached with the `[nats]` settings:
//! a JWT credentials file or an NKey seed, and TLS. The embedded server
//! knows two NKey users, generated once in `<state_dir>/nats-credentials`
//! and written into the server's configuration at every start: the hub's own
//! ([`HUB_NKEY_FILE`], every subject) and a read-only one for subscribers
//! ([`READER_NKEY_FILE`]), which may read what the hub publishes for
//! consumers and the data stream, but neither send tasks nor change
//! configuration or streams. Nothing else can connect to it.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nkeys::{KeyPair, KeyPairType};
use serde_json::json;

use crate::config::HubConfig;
use crate::embedded::NATS_URL_FILE;
use crate::error::HubError;

/// The directory of `state_dir` holding the embedded server's NKey seeds
/// (mode 0700).
pub const NATS_CREDENTIALS_DIR: &str = "nats-credentials";
/// The hub user's seed file in [`NATS_CREDENTIALS_DIR`] (mode 0600): may
/// publish and subscribe to everything. For the hub and operator tools.
pub const HUB_NKEY_FILE: &str = "hub.nk";
/// The read-only user's seed file in [`NATS_CREDENTIALS_DIR`] (mode 0600):
/// for subscribers.
pub const READER_NKEY_FILE: &str = "reader.nk";

/// What the read-only user may subscribe to: everything the hub publishes
/// for consumers, and the inboxes its requests are answered on. Not
/// `herd.cmd.>`: tasks carry bodies.
const READER_SUBSCRIBE: [&str; 7] = [
    "herd.data.>",
    "herd.batch.>",
    "herd.presence.>",
    "herd.heartbeat.>",
    "herd.loss.>",
    crate::batcher::TASK_RESULTS_SUBJECT,
    "_INBOX.>",
];

/// The embedded server's two users, by public key.
#[derive(Debug)]
pub(crate) struct EmbeddedUsers {
    hub: String,
    reader: String,
}

impl EmbeddedUsers {
    /// The users whose seeds are in `<state_dir>/nats-credentials`; a seed
    /// that is missing is generated and stored, so later starts (and clients
    /// holding the files) keep the same users.
    pub(crate) fn load_or_create(state_dir: &Path) -> Result<Self, HubError> {
        let dir = credentials_dir(state_dir);
        let dir_error = |source| HubError::NatsCredentialsFile {
            action: "create",
            path: dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(dir_error)?;
        // `mode` applies only to what was created now.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(dir_error)?;
        Ok(Self {
            hub: load_or_create_seed(&dir.join(HUB_NKEY_FILE))?.public_key(),
            reader: load_or_create_seed(&dir.join(READER_NKEY_FILE))?.public_key(),
        })
    }

    /// The `authorization` block of the server's configuration (JSON, which
    /// nats-server reads as its own format). `stream` is the data stream the
    /// reader may consume.
    pub(crate) fn server_config(&self, stream: &str) -> String {
        let api = |rest: &str| format!("$JS.API.{rest}");
        // Enough to bind a consumer to the data stream and read it: account
        // and stream info, consumer create (ephemeral, named with a filter,
        // and durable as older clients ask), info and pull, acks and the
        // flow control replies of push consumers. Nothing that changes a
        // stream or a KV bucket.
        let reader_publish = [
            api("INFO"),
            api(&format!("STREAM.INFO.{stream}")),
            api(&format!("CONSUMER.CREATE.{stream}")),
            api(&format!("CONSUMER.CREATE.{stream}.>")),
            api(&format!("CONSUMER.DURABLE.CREATE.{stream}.*")),
            api(&format!("CONSUMER.INFO.{stream}.*")),
            api(&format!("CONSUMER.MSG.NEXT.{stream}.*")),
            format!("$JS.ACK.{stream}.>"),
            format!("$JS.FC.{stream}.>"),
        ];
        let config = json!({
            "authorization": {
                "users": [
                    {
                        "nkey": self.hub,
                        "permissions": { "publish": ">", "subscribe": ">" },
                    },
                    {
                        "nkey": self.reader,
                        "permissions": {
                            "publish": { "allow": reader_publish },
                            "subscribe": {
                                "allow": READER_SUBSCRIBE,
                                "deny": ["herd.cmd.>"],
                            },
                        },
                    },
                ],
            },
        });
        format!("{config:#}\n")
    }
}

/// `<state_dir>/nats-credentials`.
fn credentials_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(NATS_CREDENTIALS_DIR)
}

/// Where subscribers of the embedded server of `state_dir` find their seed.
pub(crate) fn reader_nkey_file(state_dir: &Path) -> PathBuf {
    credentials_dir(state_dir).join(READER_NKEY_FILE)
}

fn load_or_create_seed(path: &Path) -> Result<KeyPair, HubError> {
    match fs::read_to_string(path) {
        Ok(text) => parse_seed(path, &text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let user = KeyPair::new_user();
            let seed = user.seed().map_err(|error| HubError::NatsSeed {
                path: path.to_owned(),
                reason: error.to_string(),
            })?;
            herd_tls::write_file_atomically(path, format!("{seed}\n").as_bytes(), 0o600).map_err(
                |source| HubError::NatsCredentialsFile {
                    action: "write",
                    path: path.to_owned(),
                    source,
                },
            )?;
            Ok(user)
        }
        Err(source) => Err(read_error(path, source)),
    }
}

/// The user seed in `path` (one line `SU...`), checked.
fn read_seed(path: &Path) -> Result<String, HubError> {
    let text = fs::read_to_string(path).map_err(|source| read_error(path, source))?;
    parse_seed(path, &text)?;
    Ok(text.trim().to_owned())
}

fn parse_seed(path: &Path, text: &str) -> Result<KeyPair, HubError> {
    let bad = |reason: String| HubError::NatsSeed {
        path: path.to_owned(),
        reason,
    };
    let user = KeyPair::from_seed(text.trim()).map_err(|error| bad(error.to_string()))?;
    match user.key_pair_type() {
        KeyPairType::User => Ok(user),
        other => Err(bad(format!("a {other:?} seed, not a user's"))),
    }
}

fn read_error(path: &Path, source: std::io::Error) -> HubError {
    HubError::NatsCredentialsFile {
        action: "read",
        path: path.to_owned(),
        source,
    }
}

/// The URL(s) of the hub's NATS: `nats_url`, or for the embedded server the
/// one its running hub wrote to `<state_dir>/nats.url`.
pub fn hub_nats_url(config: &HubConfig) -> Result<String, HubError> {
    match &config.nats_url {
        Some(url) => Ok(url.clone()),
        None => {
            let path = config.state_dir.join(NATS_URL_FILE);
            fs::read_to_string(&path)
                .map(|url| url.trim().to_owned())
                .map_err(|source| HubError::NatsUrlFile { path, source })
        }
    }
}

/// The client options that log in to the hub's NATS as the hub, before any
/// behaviour (name, reconnects, callbacks) is added.
///
/// For an external server (`nats_url` set): the `[nats]` settings, i.e. the
/// JWT credentials file or the NKey seed file, the CA, the client
/// certificate and `tls_required`. For the embedded server: the hub user's
/// seed in `<state_dir>/nats-credentials/hub.nk`.
///
/// Files are read now, so a missing or malformed one is reported by path
/// ([`HubError::NatsCredentialsFile`], [`HubError::NatsSeed`]); the TLS
/// files are read when connecting.
pub async fn hub_connect_options(
    config: &HubConfig,
) -> Result<async_nats::ConnectOptions, HubError> {
    let options = async_nats::ConnectOptions::new();
    if config.nats_url.is_none() {
        let seed = read_seed(&credentials_dir(&config.state_dir).join(HUB_NKEY_FILE))?;
        return Ok(options.nkey(seed));
    }
    let nats = &config.nats;
    let mut options = match (&nats.creds_file, &nats.nkey_file) {
        (Some(creds), _) => options
            .credentials_file(creds)
            .await
            .map_err(|source| read_error(creds, source))?,
        (None, Some(nkey)) => options.nkey(read_seed(nkey)?),
        (None, None) => options,
    };
    if let Some(ca) = &nats.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&nats.tls_cert_file, &nats.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options.require_tls(nats.tls_required))
}

/// The servers of a comma-separated URL list.
pub(crate) fn parse_servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, HubError> {
    url.split(',')
        .map(|server| server.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| HubError::NatsUrl {
            url: url.to_owned(),
            source,
        })
}

/// Connects to the hub's NATS as the hub, under the client name `name`:
/// the URL of [`hub_nats_url`] with the options of [`hub_connect_options`].
/// For operator tools that act for the hub (issue tokens, write
/// configuration, send tasks) from the hub's own configuration file; with
/// the embedded server, its hub must be running.
///
/// Unlike the hub's own link ([`crate::NatsLink::connect`], which uses the
/// same options), it fails at once when no server answers.
///
/// ```no_run
/// # async fn run() -> Result<(), herd_hub::HubError> {
/// let config = herd_hub::HubConfig {
///     state_dir: "/var/lib/herd-hub".into(),
///     ..herd_hub::HubConfig::default()
/// };
/// let client = herd_hub::connect_nats(&config, "herd-hub token create").await?;
/// # drop(client);
/// # Ok(()) }
/// ```
pub async fn connect_nats(config: &HubConfig, name: &str) -> Result<async_nats::Client, HubError> {
    let url = hub_nats_url(config)?;
    let servers = parse_servers(&url)?;
    hub_connect_options(config)
        .await?
        .name(name)
        .connect(servers)
        .await
        .map_err(|source| HubError::NatsConnect { url, source })
}
