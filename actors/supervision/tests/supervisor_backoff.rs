//! Backoff between restarts, measured in paused (virtual) time.

mod support;

use std::time::Duration;

use herd_supervision::{
    Backoff, EventKind, ExponentialBackoff, Intensity, SupervisionEvent, SupervisorHandle,
    SupervisorSpec,
};
use support::{Exit, Probes, next_event, probe, start};
use tokio::sync::broadcast;

/// Fails the child, then returns the delay the supervisor announced and the virtual time
/// that passed between the exit and the restart.
async fn fail_and_measure(
    rx: &mut broadcast::Receiver<SupervisionEvent>,
    registry: &herd_supervision::Registry,
) -> (Duration, Duration, u32) {
    probe(registry, "t/a").do_send(Exit::Abnormal("x"));
    let exited = next_event(rx).await;
    assert!(matches!(exited.kind, EventKind::Exited { .. }), "{exited}");
    let restarting = next_event(rx).await;
    let EventKind::Restarting { delay, attempt, .. } = restarting.kind else {
        panic!("expected a restart, got {restarting}");
    };
    let started = next_event(rx).await;
    assert_eq!(started.to_string(), "t: a started");
    (delay, started.at - exited.at, attempt)
}

/// Starts `t` with one permanent child `a` under `backoff` (in paused time), a lenient
/// intensity, and waits for the start.
async fn start_with(
    backoff: ExponentialBackoff,
) -> (SupervisorHandle, broadcast::Receiver<SupervisionEvent>) {
    tokio::time::pause();
    let spec = SupervisorSpec::new("t")
        .intensity(Intensity::new(100, Duration::from_secs(60)).unwrap())
        .backoff(backoff)
        .child(Probes::default().spec("a"));
    start(spec, &["t: a started"]).await
}

fn exponential(random_factor: f64) -> ExponentialBackoff {
    Backoff::exponential(
        Duration::from_millis(100),
        Duration::from_secs(1),
        random_factor,
    )
    .unwrap()
}

#[actix::test]
async fn exponential_backoff_grows_to_max_and_resets_after_stable_uptime() {
    let (sup, mut rx) = start_with(exponential(0.0).reset_after(Duration::from_secs(5))).await;
    let reg = sup.registry();

    let expected_ms = [100, 200, 400, 800, 1000, 1000];
    for (attempt, ms) in expected_ms.into_iter().enumerate() {
        let (delay, waited, got_attempt) = fail_and_measure(&mut rx, reg).await;
        assert_eq!(delay, Duration::from_millis(ms));
        assert_eq!(got_attempt, attempt as u32);
        // Timers have millisecond resolution; nothing else may run down the clock.
        assert!(
            waited >= delay && waited < delay + Duration::from_millis(5),
            "attempt {attempt}: waited {waited:?} for a {delay:?} backoff"
        );
    }

    // Up for longer than reset_after: the next restart is attempt 0 again.
    tokio::time::advance(Duration::from_secs(5)).await;
    let (delay, waited, attempt) = fail_and_measure(&mut rx, reg).await;
    assert_eq!((delay, attempt), (Duration::from_millis(100), 0));
    assert!(waited >= delay);
    assert_eq!(
        sup.stats().get("t/a").unwrap().last_backoff,
        Duration::from_millis(100)
    );
    sup.shutdown().await;
}

#[actix::test]
async fn random_factor_shortens_each_delay_within_bounds_and_never_past_the_cap() {
    let base = exponential(0.5).reset_after(Duration::from_secs(60));
    let (sup, mut rx) = start_with(base).await;
    let reg = sup.registry();
    for attempt in 0..6 {
        let (delay, waited, got) = fail_and_measure(&mut rx, reg).await;
        assert_eq!(got, attempt);
        let capped = base.base_delay(attempt);
        let floor = capped.mul_f64(0.5).max(base.base_delay(0));
        assert!(delay >= floor && delay <= capped, "{delay:?} vs {capped:?}");
        assert!(waited >= delay && waited < delay + Duration::from_millis(5));
    }
    sup.shutdown().await;
}
