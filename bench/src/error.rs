//! What can stop one benchmark section.

use std::time::Duration;

/// Why a benchmark section could not produce its figure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    /// A local I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the bench was doing.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// NATS refused or failed an operation.
    #[error("NATS {what}: {message}")]
    Nats {
        /// What the bench was doing.
        what: &'static str,
        /// The client's error, as text (its error types are generic).
        message: String,
    },
    /// Something did not happen within its bound.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The bound.
        after: Duration,
    },
    /// A peer said something the bench did not expect.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A child process misbehaved or could not be built.
    #[error("process: {0}")]
    Process(String),
}

impl BenchError {
    /// An [`BenchError::Io`] for `what`.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// A [`BenchError::Nats`] for `what`.
    pub(crate) fn nats<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Self {
        move |error| Self::Nats {
            what,
            message: error.to_string(),
        }
    }
}

/// Awaits `future` for at most `after`, naming `what` when it does not finish.
pub(crate) async fn within<F: Future>(
    what: &str,
    after: Duration,
    future: F,
) -> Result<F::Output, BenchError> {
    tokio::time::timeout(after, future)
        .await
        .map_err(|_| BenchError::Timeout {
            what: what.to_owned(),
            after,
        })
}
