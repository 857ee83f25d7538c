//! Typed errors of logtail.

use std::io;
use std::path::PathBuf;

use herd_plugin::PluginError;

/// What can stop logtail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogtailError {
    /// Talking to the agent failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The state file exists but cannot be read.
    #[error("cannot read the state file {path}: {source}")]
    ReadState {
        /// The state file.
        path: PathBuf,
        /// Why it cannot be read.
        source: io::Error,
    },
    /// The state file is not valid JSON of the expected shape. It is left
    /// alone for inspection; remove it to start over.
    #[error("the state file {path} is corrupt (remove it to start over): {source}")]
    CorruptState {
        /// The state file.
        path: PathBuf,
        /// What the JSON parser found.
        source: serde_json::Error,
    },
    /// The state file cannot be written.
    #[error("cannot write the state file {path}: {source}")]
    WriteState {
        /// The state file.
        path: PathBuf,
        /// Why it cannot be written.
        source: io::Error,
    },
    /// A path could not be made absolute.
    #[error("cannot resolve the path {path}: {source}")]
    Path {
        /// The path as given.
        path: PathBuf,
        /// Why it cannot be resolved.
        source: io::Error,
    },
}
