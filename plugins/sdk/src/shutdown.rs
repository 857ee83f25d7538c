//! A shutdown signal that worker threads can wait on.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

/// Tells worker threads that the plugin is stopping.
///
/// [`Plugin::run`](crate::Plugin::run) triggers it when it returns (stdin
/// closed, the agent gone, or an error), and the [`Emitter`](crate::Emitter)
/// triggers it when stdout breaks. Periodic workers use
/// [`wait_timeout`](Self::wait_timeout) as their interval timer, so they stop
/// at once instead of finishing a sleep.
///
/// ```
/// use std::time::Duration;
/// let shutdown = herd_plugin::Shutdown::new();
/// let worker = {
///     let shutdown = shutdown.clone();
///     std::thread::spawn(move || {
///         let mut ticks = 0;
///         while !shutdown.wait_timeout(Duration::from_millis(1)) {
///             ticks += 1;
///         }
///         ticks
///     })
/// };
/// shutdown.trigger();
/// let _ticks = worker.join().unwrap();
/// assert!(shutdown.is_triggered());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl Shutdown {
    /// A signal that has not been triggered yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Triggers the signal and wakes every waiter. Idempotent.
    pub fn trigger(&self) {
        let (flag, condvar) = &*self.inner;
        *flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
        condvar.notify_all();
    }

    /// Whether the signal has been triggered.
    pub fn is_triggered(&self) -> bool {
        *self.inner.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits up to `timeout` for the signal; returns `true` when it was
    /// triggered (now or before), `false` when the time ran out.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let (flag, condvar) = &*self.inner;
        let guard = flag.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = condvar
            .wait_timeout_while(guard, timeout, |triggered| !*triggered)
            .unwrap_or_else(PoisonError::into_inner);
        *guard
    }

    /// Blocks until the signal is triggered.
    pub fn wait(&self) {
        let (flag, condvar) = &*self.inner;
        let guard = flag.lock().unwrap_or_else(PoisonError::into_inner);
        drop(
            condvar
                .wait_while(guard, |triggered| !*triggered)
                .unwrap_or_else(PoisonError::into_inner),
        );
    }
}
