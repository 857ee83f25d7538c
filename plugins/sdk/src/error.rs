//! Typed errors of the SDK.

use std::io;
use std::path::PathBuf;

use herd_codec::CodecError;

/// Everything that can go wrong while a plugin talks to its agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The agent closed the plugin's stdout (broken pipe): nobody reads the
    /// frames any more, so the plugin should stop. [`Plugin::run`] treats this
    /// as a clean end.
    ///
    /// [`Plugin::run`]: crate::Plugin::run
    #[error("the agent closed the plugin's stdout (broken pipe); the plugin should exit")]
    Disconnected,
    /// Writing a frame to stdout failed for another reason than a closed pipe,
    /// or the message did not fit in one frame.
    #[error("cannot write a {what} frame to stdout: {source}")]
    Write {
        /// `"record"` or `"task result"`.
        what: &'static str,
        /// What the codec or the pipe reported.
        source: CodecError,
    },
    /// A frame on stdin could not be read or decoded: the stream is out of
    /// step and the plugin must exit.
    #[error("cannot read a command frame from stdin: {0}")]
    Read(#[source] CodecError),
    /// The state directory does not exist and could not be created.
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        /// The directory that was asked for.
        path: PathBuf,
        /// Why it could not be created.
        source: io::Error,
    },
    /// Stdout could not be set up for frames (duplicating or redirecting the
    /// file descriptor failed).
    #[error("cannot set up stdout for frames: {0}")]
    Stdio(#[source] io::Error),
    /// Another thread panicked while it held the writer, possibly in the
    /// middle of a frame, so the stream can no longer be trusted.
    #[error("a thread panicked while writing a frame; the frame stream is no longer usable")]
    Poisoned,
}
