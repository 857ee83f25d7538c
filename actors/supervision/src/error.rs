//! Errors of the supervision runtime.

use std::time::Duration;

/// A supervision parameter or specification was invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// `Intensity::new` was given a zero period.
    #[error("restart intensity period must be longer than zero (max_restarts {max_restarts})")]
    ZeroPeriod {
        /// The `max_restarts` that came with the zero period.
        max_restarts: u32,
    },
    /// The minimum backoff delay was zero.
    #[error("backoff minimum must be longer than zero")]
    ZeroMinBackoff,
    /// The maximum backoff delay was below the minimum.
    #[error("backoff maximum {max:?} is below the minimum {min:?}")]
    MaxBelowMin {
        /// The minimum delay given.
        min: Duration,
        /// The maximum delay given.
        max: Duration,
    },
    /// The random factor was outside `[0, 1]` (or not a number).
    #[error("backoff random factor {0} is outside [0, 1]")]
    RandomFactor(f64),
    /// Two children of one supervisor share an id.
    #[error("supervisor {supervisor:?} has two children with id {id:?}")]
    DuplicateChildId {
        /// The supervisor's path.
        supervisor: String,
        /// The repeated child id.
        id: String,
    },
    /// A child id or supervisor name was empty or contained `/` (the path separator).
    #[error("invalid name {0:?}: it must be non-empty and must not contain '/'")]
    InvalidName(String),
    /// A [`ChildSpec::once`](crate::ChildSpec::once) child was given a restart type other
    /// than `Temporary`: its resource is gone after the first start.
    #[error("one-shot child {id:?} cannot be restarted; its restart type must be Temporary")]
    OneShotRestart {
        /// The child id.
        id: String,
    },
    /// An option that only the root of a tree has (its registry, its event capacity) was
    /// set on a nested supervisor, which shares its root's.
    #[error("supervisor {supervisor:?} is nested: {option} can only be set on the root of a tree")]
    RootOnlyOption {
        /// The nested supervisor's path.
        supervisor: String,
        /// The option that was set.
        option: &'static str,
    },
    /// `SupervisorSpec::start` was called outside a running actix system.
    #[error("no actix arbiter is running on this thread; start supervisors inside an actix System")]
    NoArbiter,
}

/// Why a dynamically added child could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// A child with the same id is already supervised.
    #[error("supervisor {supervisor:?} already has a child with id {id:?}")]
    DuplicateId {
        /// The supervisor's path.
        supervisor: String,
        /// The id that was requested.
        id: String,
    },
    /// The child id was empty or contained `/`.
    #[error("invalid child id {0:?}: it must be non-empty and must not contain '/'")]
    InvalidId(String),
    /// A [`ChildSpec::once`](crate::ChildSpec::once) child was given a restart type other
    /// than `Temporary`.
    #[error("one-shot child {0:?} cannot be restarted; its restart type must be Temporary")]
    OneShotRestart(String),
    /// The supervisor is shutting down and accepts no new children.
    #[error("supervisor {0:?} is shutting down")]
    ShuttingDown(String),
    /// The supervisor has stopped (its mailbox is closed).
    #[error("supervisor is not running: {0}")]
    Mailbox(#[from] actix::MailboxError),
}

/// Why a child could not be terminated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TerminateError {
    /// No child with this id is supervised.
    #[error("supervisor {supervisor:?} has no child with id {id:?}")]
    NotFound {
        /// The supervisor's path.
        supervisor: String,
        /// The id that was requested.
        id: String,
    },
    /// The supervisor stopped before the child's termination completed.
    #[error("supervisor stopped before the child was terminated")]
    SupervisorGone,
    /// The supervisor has stopped (its mailbox is closed).
    #[error("supervisor is not running: {0}")]
    Mailbox(#[from] actix::MailboxError),
}
