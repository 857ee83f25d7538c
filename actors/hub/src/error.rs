//! What can stop a hub from starting or running.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::HubConfigError;

/// Why the hub could not start (or had to stop).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The configuration has a value the hub cannot run with.
    #[error("invalid hub configuration: {0}")]
    Config(#[from] HubConfigError),
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        /// `agents` or `admin`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A NATS URL does not parse.
    #[error("invalid NATS URL {url:?}")]
    NatsUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        source: std::io::Error,
    },
    /// The NATS client could not be created.
    #[error("cannot connect to NATS at {url}")]
    NatsConnect {
        /// The URL.
        url: String,
        /// The client's error.
        source: async_nats::ConnectError,
    },
    /// A NATS credentials file (an NKey seed, a JWT `.creds` file, or their
    /// directory) could not be read, written or created.
    #[error("cannot {action} NATS credentials {path:?}: {source}")]
    NatsCredentialsFile {
        /// `read`, `write` or `create`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error (or what is wrong with a `.creds` file).
        source: std::io::Error,
    },
    /// An NKey seed file does not hold a user seed.
    #[error("{path:?} holds no NATS user NKey seed (one line `SU...`): {reason}")]
    NatsSeed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The embedded server's URL file could not be read: its hub is not
    /// running, or runs with another state directory.
    #[error(
        "cannot read the embedded NATS server's URL from {path:?} (is the hub running?): {source}"
    )]
    NatsUrlFile {
        /// `<state_dir>/nats.url`.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No NATS URL was configured and `nats-server` is not installed.
    #[error(
        "no NATS URL configured and `nats-server` was not found on PATH, /usr/sbin or /usr/bin; \
         install it (`apt-get install nats-server`) or pass an existing server with \
         `--nats-url nats://host:4222`"
    )]
    NatsServerMissing,
    /// The embedded `nats-server` could not be started.
    #[error("embedded nats-server (store {store:?}): {reason}")]
    Embedded {
        /// Its store directory.
        store: PathBuf,
        /// What went wrong, with its log when there is one.
        reason: String,
    },
    /// The admin token file could not be read or written.
    #[error("cannot {action} the admin token file {path:?}: {source}")]
    AdminTokenFile {
        /// `read` or `write`.
        action: &'static str,
        /// `admin_token_file`, or `<state_dir>/admin.token`.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The admin token file holds nothing but white space.
    #[error(
        "the admin token file {path:?} is empty; put a token in it or remove `admin_token_file`"
    )]
    EmptyAdminToken {
        /// The file.
        path: PathBuf,
    },
    /// The agent link's TLS could not be set up.
    #[error("agent link TLS: {0}")]
    Tls(#[from] herd_tls::TlsError),
    /// The supervision tree could not start.
    #[error("cannot start the hub's supervision tree")]
    Supervision(#[from] herd_supervision::ConfigError),
}
