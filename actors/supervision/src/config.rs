//! Supervision policy types: restart types, strategies, intensity and backoff.

use std::fmt;
use std::time::Duration;

use crate::error::ConfigError;

/// When a child is restarted after it exits (OTP `restart` child spec key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Restart {
    /// Always restarted, whatever the exit reason (OTP `permanent`).
    Permanent,
    /// Restarted only after an abnormal exit: a panic, [`stop_abnormal`](super::stop_abnormal),
    /// a force-kill or an escalation (OTP `transient`).
    Transient,
    /// Never restarted; removed from the supervisor when it exits (OTP `temporary`).
    Temporary,
}

impl Restart {
    /// Whether a child of this restart type is restarted after exiting with `reason`.
    pub fn should_restart(self, reason: &super::ExitReason) -> bool {
        match self {
            Restart::Permanent => true,
            Restart::Transient => reason.is_abnormal(),
            Restart::Temporary => false,
        }
    }
}

/// What else a supervisor restarts when one child must be restarted (OTP `strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Strategy {
    /// Only the child that exited is restarted (OTP `one_for_one`).
    #[default]
    OneForOne,
    /// All other children are stopped in reverse start order, then all are restarted in
    /// start order (OTP `one_for_all`).
    OneForAll,
    /// The children started after the one that exited are stopped in reverse start order,
    /// then it and they are restarted in start order (OTP `rest_for_one`).
    RestForOne,
}

/// Restart intensity: more than `max_restarts` restarts within `period` make the supervisor
/// give up, stop all its children and fail upward (OTP `intensity` and `period`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    max_restarts: u32,
    period: Duration,
}

impl Intensity {
    /// Allows `max_restarts` restarts within any window of `period`; the next one escalates.
    ///
    /// `max_restarts` may be zero (the first restart escalates); `period` must be non-zero.
    pub fn new(max_restarts: u32, period: Duration) -> Result<Self, ConfigError> {
        if period.is_zero() {
            return Err(ConfigError::ZeroPeriod { max_restarts });
        }
        Ok(Self {
            max_restarts,
            period,
        })
    }

    /// The number of restarts allowed within [`period`](Self::period).
    pub fn max_restarts(&self) -> u32 {
        self.max_restarts
    }

    /// The sliding window restarts are counted in.
    pub fn period(&self) -> Duration {
        self.period
    }
}

impl Default for Intensity {
    /// 3 restarts within 5 seconds (Elixir's default).
    fn default() -> Self {
        Self {
            max_restarts: 3,
            period: Duration::from_secs(5),
        }
    }
}

/// How long to wait before restarting a child. Implement it to plug in another policy.
///
/// `attempt` counts restarts of one child since it last stayed up for at least
/// [`reset_after`](Self::reset_after): the first restart is attempt 0.
pub trait BackoffPolicy: fmt::Debug + Send + Sync + 'static {
    /// The delay before restart number `attempt`.
    fn delay(&self, attempt: u32) -> Duration;
    /// After a child has been up this long, its next restart counts as attempt 0 again.
    fn reset_after(&self) -> Duration;
}

/// Constructors for the built-in backoff policies.
#[derive(Debug, Clone, Copy)]
pub struct Backoff;

impl Backoff {
    /// Exponential backoff from `min` doubling up to `max`, each delay shortened by a random
    /// fraction of up to `random_factor` (but never below `min`). The jitter stays inside
    /// the cap: no delay is ever longer than `max`, and delays at the cap still spread over
    /// `[max * (1 - random_factor), max]`, so many peers failing together do not retry in
    /// lockstep.
    ///
    /// The attempt counter resets once the child stays up for `max` (change it with
    /// [`ExponentialBackoff::reset_after`]).
    ///
    /// # Errors
    /// `min` must be non-zero, `max >= min`, and `random_factor` within `[0, 1]`.
    pub fn exponential(
        min: Duration,
        max: Duration,
        random_factor: f64,
    ) -> Result<ExponentialBackoff, ConfigError> {
        if min.is_zero() {
            return Err(ConfigError::ZeroMinBackoff);
        }
        if max < min {
            return Err(ConfigError::MaxBelowMin { min, max });
        }
        if !(0.0..=1.0).contains(&random_factor) {
            return Err(ConfigError::RandomFactor(random_factor));
        }
        Ok(ExponentialBackoff {
            min,
            max,
            random_factor,
            reset_after: max,
        })
    }

    /// Restart immediately (plain OTP behaviour; the intensity limit still applies).
    pub fn none() -> NoBackoff {
        NoBackoff
    }
}

/// Exponential backoff with jitter; build it with [`Backoff::exponential`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialBackoff {
    min: Duration,
    max: Duration,
    random_factor: f64,
    reset_after: Duration,
}

impl ExponentialBackoff {
    /// Resets the attempt counter once a child has stayed up for `uptime`.
    pub fn reset_after(mut self, uptime: Duration) -> Self {
        self.reset_after = uptime;
        self
    }

    /// The delay before `attempt` without jitter: `min * 2^attempt`, capped at `max`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.checked_pow(attempt).unwrap_or(u32::MAX);
        self.min
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

impl BackoffPolicy for ExponentialBackoff {
    fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        if self.random_factor == 0.0 {
            return base;
        }
        let jitter = 1.0 - rand::random::<f64>() * self.random_factor;
        base.mul_f64(jitter).max(self.min)
    }

    fn reset_after(&self) -> Duration {
        self.reset_after
    }
}

impl Default for ExponentialBackoff {
    /// 100 ms doubling up to 10 s, 20 % jitter, reset after 10 s up.
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_secs(10),
            random_factor: 0.2,
            reset_after: Duration::from_secs(10),
        }
    }
}

/// No delay between restarts; build it with [`Backoff::none`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoBackoff;

impl BackoffPolicy for NoBackoff {
    fn delay(&self, _attempt: u32) -> Duration {
        Duration::ZERO
    }

    fn reset_after(&self) -> Duration {
        Duration::ZERO
    }
}

/// Checks a child id or supervisor name: non-empty, no `/` (paths are joined with `/`).
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_doubles_and_caps() {
        let b =
            Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1), 0.0).unwrap();
        let delays: Vec<_> = (0..6).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_factor() {
        let b =
            Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1), 0.5).unwrap();
        for attempt in 0..5 {
            let base = b.base_delay(attempt);
            for _ in 0..50 {
                let d = b.delay(attempt);
                let floor = base.mul_f64(0.5).max(Duration::from_millis(100));
                assert!(d >= floor && d <= base, "{d:?} vs {base:?}");
            }
        }
    }

    #[test]
    fn jitter_never_exceeds_the_cap_and_still_spreads_there() {
        let max = Duration::from_secs(1);
        let b = Backoff::exponential(Duration::from_millis(100), max, 1.0).unwrap();
        let at_cap: Vec<Duration> = (0..200).map(|_| b.delay(30)).collect();
        assert!(at_cap.iter().all(|d| *d <= max), "{at_cap:?}");
        let distinct: std::collections::HashSet<_> = at_cap.iter().collect();
        assert!(distinct.len() > 100, "delays at the cap are not spread");
    }

    #[test]
    fn invalid_parameters_are_errors() {
        let s = Duration::from_secs(1);
        assert_eq!(
            Backoff::exponential(Duration::ZERO, s, 0.1),
            Err(ConfigError::ZeroMinBackoff)
        );
        assert_eq!(
            Backoff::exponential(s * 2, s, 0.1),
            Err(ConfigError::MaxBelowMin { min: s * 2, max: s })
        );
        for f in [-0.1, 1.5, f64::NAN] {
            assert!(matches!(
                Backoff::exponential(s, s, f),
                Err(ConfigError::RandomFactor(_))
            ));
        }
        assert_eq!(
            Intensity::new(3, Duration::ZERO),
            Err(ConfigError::ZeroPeriod { max_restarts: 3 })
        );
        assert_eq!(Intensity::new(0, s).unwrap().max_restarts(), 0);
    }

    #[test]
    fn restart_types_follow_otp() {
        use super::super::ExitReason;
        let abnormal = ExitReason::Panic("boom".into());
        let cases = [
            (Restart::Permanent, true, true),
            (Restart::Transient, false, true),
            (Restart::Temporary, false, false),
        ];
        for (restart, on_normal, on_abnormal) in cases {
            assert_eq!(restart.should_restart(&ExitReason::Normal), on_normal);
            assert_eq!(restart.should_restart(&ExitReason::Shutdown), on_normal);
            assert_eq!(restart.should_restart(&abnormal), on_abnormal);
        }
    }
}
