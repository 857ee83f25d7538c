//! The agent's typed errors.

use std::path::PathBuf;

use herd_codec::NameError;

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    /// The TOML document did not parse (the message names the key and line).
    #[error("invalid agent configuration: {0}")]
    Toml(#[source] Box<toml::de::Error>),
    /// The TLS settings do not say how to trust the hub, or contradict
    /// each other.
    #[error("{0}")]
    Tls(String),
    /// No hub address was given.
    #[error("no hub address configured (hubs = [\"host:port\", ...] or --hub)")]
    NoHub,
    /// A hub address is not `host:port`.
    #[error("hub address {value:?} is not host:port")]
    HubAddress {
        /// The address as given.
        value: String,
    },
    /// A value that must be positive is 0.
    #[error("{what} must be greater than 0")]
    Zero {
        /// The setting's name.
        what: &'static str,
    },
    /// A min/max pair is out of order or starts at 0.
    #[error("{what}: min {min} ms must be > 0 and <= max {max} ms")]
    Range {
        /// The setting's name.
        what: String,
        /// The minimum given.
        min: u64,
        /// The maximum given.
        max: u64,
    },
    /// A batch could not fit in one frame.
    #[error(
        "batch.max_bytes {max_bytes} must be > 0 and below max_frame_length {max_frame_length}"
    )]
    BatchBytes {
        /// The batch bound given.
        max_bytes: usize,
        /// The frame bound given.
        max_frame_length: usize,
    },
    /// The `[spool]` section is invalid.
    #[error("invalid [spool] configuration")]
    Spool(#[from] herd_spool::ConfigError),
    /// The spool could not hold even one full batch.
    #[error(
        "a spool segment holds batches of at most {spool} bytes; batch.max_bytes {batch} is larger (raise spool.segment_bytes)"
    )]
    SpoolBytes {
        /// The largest batch the spool takes (its segment size, less a header).
        spool: u64,
        /// The batch bound given.
        batch: usize,
    },
    /// A plugin name is not a valid name.
    #[error("plugin name {name:?}: {source}")]
    PluginName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        source: NameError,
    },
    /// A plugin's sha256 is not 64 hex digits.
    #[error("plugin {name:?}: sha256 {value:?} is not 64 hex digits")]
    PluginSha256 {
        /// The plugin.
        name: String,
        /// The value given.
        value: String,
    },
    /// A plugin has no executable path.
    #[error("plugin {name:?}: path is empty")]
    PluginPath {
        /// The plugin.
        name: String,
    },
    /// Two plugins have the same name.
    #[error("plugin {name:?} is declared twice")]
    DuplicatePlugin {
        /// The name.
        name: String,
    },
}

/// Reading or writing the agent's state directory failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file could not be read, written or created.
    #[error("state file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A state file holds something the agent did not write.
    #[error("state file {path} holds {content:?}, expected {expected}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was found (truncated).
        content: String,
        /// What should be there.
        expected: &'static str,
    },
    /// The identity file holds no usable certificate and key.
    #[error("identity file {path}: {reason}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why a plugin process could not be started or was stopped.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The executable's hash is not the configured one; the start is refused.
    #[error("refusing to start plugin {name:?}: sha256 of {path} is {actual}, expected {expected}")]
    Sha256Mismatch {
        /// The plugin.
        name: String,
        /// The executable.
        path: PathBuf,
        /// The configured hash.
        expected: String,
        /// The hash of the file on disk.
        actual: String,
    },
    /// The executable could not be read (for hashing) or spawned.
    #[error("plugin {name:?}: cannot start {path}: {source}")]
    Spawn {
        /// The plugin.
        name: String,
        /// The executable.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The plugin's state directory could not be created.
    #[error("plugin {name:?}: {source}")]
    State {
        /// The plugin.
        name: String,
        /// What failed.
        source: StateError,
    },
}

/// Starting the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] AgentConfigError),
    /// The state directory is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The hub link's TLS could not be set up (an unreadable CA file, say).
    #[error("hub link TLS: {0}")]
    Tls(#[from] herd_tls::TlsError),
    /// The supervision tree could not be started.
    #[error("cannot start the agent's supervision tree: {0}")]
    Supervisor(#[from] herd_supervision::ConfigError),
}
