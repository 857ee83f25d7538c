//! What the agent has made durable of this plugin's records.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How many of the records this process sent the agent has made durable in
/// its spool (the agent's `Durable` commands, counted from 1 in send order:
/// the number [`RecordBuilder::send`](crate::RecordBuilder::send) returns).
///
/// A source that can re-read its input (a file offset, a queue position)
/// should commit its position only up to what is durable here: after a crash
/// of the agent or the plugin it re-reads and re-sends, never skips.
///
/// ```
/// use std::time::Duration;
/// use herd_plugin::Checkpoint;
///
/// let checkpoint = Checkpoint::default();
/// assert_eq!(checkpoint.durable(), 0);
/// assert!(!checkpoint.wait_for(1, Duration::from_millis(1)));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    inner: Arc<(Mutex<u64>, Condvar)>,
}

impl Checkpoint {
    /// Records made durable so far (0: none yet, or no agent).
    pub fn durable(&self) -> u64 {
        *self.inner.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until at least `count` records are durable, at most `timeout`;
    /// whether they are.
    pub fn wait_for(&self, count: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, changed) = &*self.inner;
        let mut durable = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while *durable < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            durable = changed
                .wait_timeout(durable, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// The agent said the first `through` records are durable.
    pub(crate) fn advance(&self, through: u64) {
        let (lock, changed) = &*self.inner;
        let mut durable = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if through > *durable {
            *durable = through;
            changed.notify_all();
        }
    }
}
