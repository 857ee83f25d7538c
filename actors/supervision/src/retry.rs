//! Backoff for retry loops that are not child restarts.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{BackoffPolicy, ExponentialBackoff};

/// The delays of one retry loop (reconnecting, republishing, re-reading a file), taken
/// from the same [`BackoffPolicy`] supervisors use for restarts, so every wait in a tree
/// follows one validated policy.
///
/// Each failure asks for the next delay; a success resets the attempt count.
///
/// ```
/// use std::time::Duration;
/// use herd_supervision::{Backoff, Retry};
///
/// # fn main() -> Result<(), herd_supervision::ConfigError> {
/// let policy = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1), 0.0)?;
/// let mut retry = Retry::new(policy);
/// assert_eq!(retry.next_delay(), Duration::from_millis(100));
/// assert_eq!(retry.next_delay(), Duration::from_millis(200));
/// retry.succeeded();
/// assert_eq!(retry.next_delay(), Duration::from_millis(100));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Retry {
    policy: Arc<dyn BackoffPolicy>,
    attempt: u32,
}

impl Retry {
    /// A retry loop following `policy`.
    pub fn new(policy: impl BackoffPolicy) -> Self {
        Self::shared(Arc::new(policy))
    }

    /// A retry loop following a policy shared with other loops.
    pub fn shared(policy: Arc<dyn BackoffPolicy>) -> Self {
        Self { policy, attempt: 0 }
    }

    /// The delay before the next attempt; counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.policy.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Sleeps for [`next_delay`](Self::next_delay) (on the tokio clock).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Failures counted since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Resets the attempt count: the next failure waits the shortest delay again.
    pub fn succeeded(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Retry {
    /// [`ExponentialBackoff::default`]: 100 ms doubling up to 10 s, 20 % jitter.
    fn default() -> Self {
        Self::new(ExponentialBackoff::default())
    }
}

impl fmt::Debug for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("policy", &self.policy)
            .field("attempt", &self.attempt)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backoff;

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_the_policy_delay_and_success_resets() {
        let policy =
            Backoff::exponential(Duration::from_millis(50), Duration::from_millis(150), 0.0)
                .unwrap();
        let mut retry = Retry::new(policy);
        let mut slept = Vec::new();
        for _ in 0..4 {
            let before = tokio::time::Instant::now();
            retry.wait().await;
            slept.push(before.elapsed().as_millis());
        }
        assert_eq!(slept, [50, 100, 150, 150]);
        assert_eq!(retry.attempt(), 4);
        retry.succeeded();
        assert_eq!(retry.next_delay(), Duration::from_millis(50));
    }
}
