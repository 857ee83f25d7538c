//! Orderly shutdown: reverse start order, hooks run, timeouts force-terminate, and nested
//! supervisors stop their own children first.

mod support;

use std::time::Duration;

use herd_supervision::{Backoff, ChildSpec, ExitReason, SupervisorSpec};
use support::{Probes, expect_events, start};

#[actix::test]
async fn children_stop_in_reverse_order_and_a_stuck_one_is_killed() {
    tokio::time::pause();
    let probes = Probes::default();
    let spec = SupervisorSpec::new("t")
        .backoff(Backoff::none())
        .child(probes.spec("a"))
        .child(probes.spec("b"))
        .child(
            probes
                .spec_with("c", Vec::new(), true)
                .shutdown_timeout(Duration::from_millis(200)),
        );
    let (sup, mut rx) = start(spec, &["t: a started", "t: b started", "t: c started"]).await;
    probes.log.take();

    let asked = tokio::time::Instant::now();
    assert_eq!(sup.shutdown().await, ExitReason::Shutdown);
    // c ignores the stop request and is killed after exactly its timeout (virtual time).
    let elapsed = asked.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(250),
        "{elapsed:?}"
    );
    expect_events(
        &mut rx,
        &[
            "t: shutdown started (shutdown)",
            "t: c stopping",
            "t: c killing after 200ms",
            "t: c exited (killed)",
            "t: b stopping",
            "t: b exited (shutdown)",
            "t: a stopping",
            "t: a exited (shutdown)",
            "t: stopped (shutdown)",
        ],
    )
    .await;
    // a and b ran their stop hooks in order; the killed c never finished stopping.
    assert_eq!(probes.log.take(), ["b stopped", "a stopped"]);
    assert_eq!(sup.stats().get("t/c").unwrap().kills, 1);
    assert!(sup.registry().paths().is_empty());
}

#[actix::test]
async fn nested_supervisor_stops_its_children_before_its_parent_continues() {
    let probes = Probes::default();
    let inner_probes = probes.clone();
    let spec = SupervisorSpec::new("top")
        .child(probes.spec("a"))
        .child(ChildSpec::supervisor("workers", move || {
            SupervisorSpec::new("workers")
                .child(inner_probes.spec("w1"))
                .child(inner_probes.spec("w2"))
        }))
        .child(probes.spec("b"));
    let started = [
        "top: a started",
        "top: workers started",
        "top: b started",
        "top/workers: w1 started",
        "top/workers: w2 started",
    ];
    let (sup, mut rx) = start(spec, &started).await;
    probes.log.take();

    assert_eq!(sup.shutdown().await, ExitReason::Shutdown);
    expect_events(
        &mut rx,
        &[
            "top: shutdown started (shutdown)",
            "top: b stopping",
            "top: b exited (shutdown)",
            "top: workers stopping",
            "top/workers: shutdown started (shutdown)",
            "top/workers: w2 stopping",
            "top/workers: w2 exited (shutdown)",
            "top/workers: w1 stopping",
            "top/workers: w1 exited (shutdown)",
            "top/workers: stopped (shutdown)",
            "top: workers exited (shutdown)",
            "top: a stopping",
            "top: a exited (shutdown)",
            "top: stopped (shutdown)",
        ],
    )
    .await;
    assert_eq!(
        probes.log.take(),
        ["b stopped", "w2 stopped", "w1 stopped", "a stopped"]
    );
}

#[actix::test]
async fn start_outside_an_actix_system_is_an_error() {
    let result = std::thread::spawn(|| SupervisorSpec::new("t").start().map(|_| ()))
        .join()
        .unwrap();
    assert_eq!(result, Err(herd_supervision::ConfigError::NoArbiter));
}

#[actix::test]
async fn invalid_specs_are_errors() {
    use herd_supervision::ConfigError;
    let probes = Probes::default();
    let dup = SupervisorSpec::new("t")
        .child(probes.spec("a"))
        .child(probes.spec("a"))
        .start()
        .map(|_| ());
    assert_eq!(
        dup,
        Err(ConfigError::DuplicateChildId {
            supervisor: "t".into(),
            id: "a".into()
        })
    );
    let bad = SupervisorSpec::new("a/b").start().map(|_| ());
    assert_eq!(bad, Err(ConfigError::InvalidName("a/b".into())));
}
