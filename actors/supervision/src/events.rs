//! Exit reasons, supervision events and counters.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

/// Why a child (or a supervisor) stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The actor stopped itself (`ctx.stop()`) or all its addresses were dropped.
    Normal,
    /// Its supervisor (or the embedder) asked it to stop and it did within its timeout.
    Shutdown,
    /// The actor declared an abnormal exit with [`stop_abnormal`](super::stop_abnormal).
    Abnormal(String),
    /// A handler, lifecycle hook or the child's factory panicked; the panic message.
    Panic(String),
    /// The child's fallible factory ([`ChildSpec::try_new`](super::ChildSpec::try_new))
    /// returned an error; its message. The actor never ran.
    StartFailed(String),
    /// It did not stop within its shutdown timeout and was force-terminated.
    Killed,
    /// A supervisor exceeded its restart intensity, stopped its children and failed.
    Escalated(String),
}

impl ExitReason {
    /// Whether this exit is abnormal in the OTP sense (restarts a [`Transient`] child).
    ///
    /// [`Transient`]: super::Restart::Transient
    pub fn is_abnormal(&self) -> bool {
        !matches!(self, ExitReason::Normal | ExitReason::Shutdown)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("normal"),
            ExitReason::Shutdown => f.write_str("shutdown"),
            ExitReason::Abnormal(why) => write!(f, "abnormal: {why}"),
            ExitReason::Panic(msg) => write!(f, "panic: {msg}"),
            ExitReason::StartFailed(why) => write!(f, "start failed: {why}"),
            ExitReason::Killed => f.write_str("killed"),
            ExitReason::Escalated(why) => write!(f, "escalated: {why}"),
        }
    }
}

/// One thing a supervisor did or saw. Subscribe with
/// [`SupervisorHandle::subscribe`](super::SupervisorHandle::subscribe); every event is
/// also a `tracing` event and updates [`SupervisionStats`].
///
/// Its `Display` form (without the timestamp) is stable and meant for logs and tests, e.g.
/// `hub/workers: conn-1 exited (panic: boom)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisionEvent {
    /// Path of the supervisor that emitted it, e.g. `hub/workers`.
    pub supervisor: Arc<str>,
    /// When it happened (tokio clock, so paused-time tests see virtual time).
    pub at: Instant,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of [`SupervisionEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A child was started (a fresh actor value, a fresh mailbox).
    Started {
        /// The child id.
        child: String,
    },
    /// A child exited.
    Exited {
        /// The child id.
        child: String,
        /// Why it exited.
        reason: ExitReason,
    },
    /// A child will be restarted after `delay` (its backoff).
    Restarting {
        /// The child id.
        child: String,
        /// The backoff delay before the restart.
        delay: Duration,
        /// The restart attempt since the child last stayed up (0 is the first).
        attempt: u32,
    },
    /// The supervisor asked a child to stop (shutdown, a group restart or a termination).
    Stopping {
        /// The child id.
        child: String,
    },
    /// A child did not stop within its shutdown timeout and is being force-terminated.
    Killing {
        /// The child id.
        child: String,
        /// The timeout it exceeded.
        timeout: Duration,
    },
    /// The supervisor exceeded its restart intensity and fails upward.
    Escalated {
        /// Which limit was exceeded.
        reason: String,
    },
    /// The supervisor began stopping all its children (reverse start order).
    ShutdownStarted {
        /// The reason it will exit with.
        reason: ExitReason,
    },
    /// All children are stopped; the supervisor exits with `reason`.
    Stopped {
        /// The reason it exits with.
        reason: ExitReason,
    },
}

impl fmt::Display for SupervisionEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.supervisor)?;
        match &self.kind {
            EventKind::Started { child } => write!(f, "{child} started"),
            EventKind::Exited { child, reason } => write!(f, "{child} exited ({reason})"),
            EventKind::Restarting {
                child,
                delay,
                attempt,
            } => write!(f, "{child} restarting in {delay:?} (attempt {attempt})"),
            EventKind::Stopping { child } => write!(f, "{child} stopping"),
            EventKind::Killing { child, timeout } => {
                write!(f, "{child} killing after {timeout:?}")
            }
            EventKind::Escalated { reason } => write!(f, "escalated ({reason})"),
            EventKind::ShutdownStarted { reason } => write!(f, "shutdown started ({reason})"),
            EventKind::Stopped { reason } => write!(f, "stopped ({reason})"),
        }
    }
}

/// Counters for one child (keyed by its path) or one supervisor (its own path).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChildStats {
    /// Times it was started, restarts included.
    pub starts: u64,
    /// Restarts scheduled (backoff included).
    pub restarts: u64,
    /// Exits with reason `Normal` or `Shutdown`.
    pub exits_normal: u64,
    /// Abnormal exits (panics, kills and escalations included).
    pub exits_abnormal: u64,
    /// Exits caused by a panic.
    pub panics: u64,
    /// Force-terminations after a shutdown timeout.
    pub kills: u64,
    /// Times this supervisor exceeded its restart intensity (supervisors only).
    pub escalations: u64,
    /// The last backoff delay scheduled before a restart.
    pub last_backoff: Duration,
}

/// Supervision counters shared by a whole tree, cheap to clone and easy to export
/// (e.g. one Prometheus counter family per field, labelled by path).
///
/// The map holds the children a supervisor still knows: when a child is removed for good
/// (a temporary child exited, a child was terminated), its counters move into
/// [`totals`](Self::totals) and its path is dropped, so a dynamic supervisor that starts
/// and ends millions of children keeps constant bookkeeping.
#[derive(Debug, Clone, Default)]
pub struct SupervisionStats {
    inner: Arc<Mutex<StatsMap>>,
}

#[derive(Debug, Default)]
struct StatsMap {
    live: BTreeMap<String, ChildStats>,
    /// Sum of the counters of paths that were removed.
    retired: ChildStats,
}

impl ChildStats {
    fn add(&mut self, other: &ChildStats) {
        self.starts += other.starts;
        self.restarts += other.restarts;
        self.exits_normal += other.exits_normal;
        self.exits_abnormal += other.exits_abnormal;
        self.panics += other.panics;
        self.kills += other.kills;
        self.escalations += other.escalations;
    }
}

impl SupervisionStats {
    /// The counters of one child or supervisor by path (`hub/heartbeat`), if it ever ran.
    pub fn get(&self, path: &str) -> Option<ChildStats> {
        self.lock().live.get(path).copied()
    }

    /// The counters of every path still supervised, by path.
    pub fn snapshot(&self) -> BTreeMap<String, ChildStats> {
        self.lock().live.clone()
    }

    /// Number of paths with counters (children still supervised, and supervisors).
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// Whether no path has counters yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sum over every path, removed children included (`last_backoff` is zero).
    pub fn totals(&self) -> ChildStats {
        let map = self.lock();
        map.live.values().fold(map.retired, |mut t, s| {
            t.add(s);
            t
        })
    }

    /// Moves the counters of `path` and everything below it into the retired sum.
    pub(crate) fn retire(&self, path: &str) {
        let mut map = self.lock();
        let below = format!("{path}/");
        let gone: Vec<String> = std::iter::once(path.to_owned())
            .filter(|p| map.live.contains_key(p))
            .chain(
                map.live
                    .range(below.clone()..)
                    .take_while(|(p, _)| p.starts_with(&below))
                    .map(|(p, _)| p.clone()),
            )
            .collect();
        for path in gone {
            if let Some(stats) = map.live.remove(&path) {
                map.retired.add(&stats);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatsMap> {
        // The map holds plain counters; a panic elsewhere cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, path: String, f: impl FnOnce(&mut ChildStats)) {
        f(self.lock().live.entry(path).or_default());
    }
}

/// Records an event: a `tracing` event, the counters, and the broadcast to subscribers.
pub(crate) fn record(
    events: &broadcast::Sender<SupervisionEvent>,
    stats: &SupervisionStats,
    supervisor: &Arc<str>,
    kind: EventKind,
) {
    let child_path = |child: &str| format!("{supervisor}/{child}");
    match &kind {
        EventKind::Started { child } => {
            tracing::info!(supervisor = %supervisor, child = %child, "child started");
            stats.update(child_path(child), |s| s.starts += 1);
        }
        EventKind::Exited { child, reason } => {
            if reason.is_abnormal() {
                tracing::warn!(supervisor = %supervisor, child = %child, %reason, "child exited");
            } else {
                tracing::info!(supervisor = %supervisor, child = %child, %reason, "child exited");
            }
            stats.update(child_path(child), |s| {
                if reason.is_abnormal() {
                    s.exits_abnormal += 1;
                } else {
                    s.exits_normal += 1;
                }
                match reason {
                    ExitReason::Panic(_) => s.panics += 1,
                    ExitReason::Killed => s.kills += 1,
                    _ => {}
                }
            });
        }
        EventKind::Restarting {
            child,
            delay,
            attempt,
        } => {
            tracing::info!(supervisor = %supervisor, child = %child, ?delay, attempt, "child restarting after backoff");
            stats.update(child_path(child), |s| {
                s.restarts += 1;
                s.last_backoff = *delay;
            });
        }
        EventKind::Stopping { child } => {
            tracing::debug!(supervisor = %supervisor, child = %child, "stopping child");
        }
        EventKind::Killing { child, timeout } => {
            tracing::warn!(supervisor = %supervisor, child = %child, ?timeout, "child did not stop in time; killing it");
        }
        EventKind::Escalated { reason } => {
            tracing::error!(supervisor = %supervisor, %reason, "restart intensity exceeded; escalating");
            stats.update(supervisor.to_string(), |s| s.escalations += 1);
        }
        EventKind::ShutdownStarted { reason } => {
            tracing::info!(supervisor = %supervisor, %reason, "supervisor shutting down");
        }
        EventKind::Stopped { reason } => {
            tracing::info!(supervisor = %supervisor, %reason, "supervisor stopped");
        }
    }
    // No subscribers is fine: events are optional for embedders.
    let _ = events.send(SupervisionEvent {
        supervisor: supervisor.clone(),
        at: Instant::now(),
        kind,
    });
}
