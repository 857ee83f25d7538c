//! Restart intensity: escalation stops children in reverse start order and fails the
//! supervisor upward; the parent handles a child supervisor's escalation.

mod support;

use std::time::Duration;

use herd_supervision::{Backoff, ChildSpec, ExitReason, Intensity, Supervisor, SupervisorSpec};
use support::{Exit, Probes, expect_events, probe, restarted, start};

const ESCALATED: &str = "more than 2 restarts within 10s";

#[actix::test]
async fn exceeding_intensity_stops_children_in_reverse_order_and_fails() {
    let probes = Probes::default();
    let spec = SupervisorSpec::new("t")
        .intensity(Intensity::new(2, Duration::from_secs(10)).unwrap())
        .backoff(Backoff::none())
        .child(probes.spec("a"))
        .child(probes.spec("b"))
        .child(probes.spec("c"));
    let (sup, mut rx) = start(spec, &["t: a started", "t: b started", "t: c started"]).await;
    let reg = sup.registry();

    for _ in 0..2 {
        probe(reg, "t/a").do_send(Exit::Abnormal("x"));
        expect_events(&mut rx, &restarted("t", "a", "abnormal: x")).await;
    }
    probe(reg, "t/a").do_send(Exit::Abnormal("x"));
    expect_events(
        &mut rx,
        &[
            "t: a exited (abnormal: x)",
            &format!("t: escalated ({ESCALATED})"),
            &format!("t: shutdown started (escalated: {ESCALATED})"),
            "t: c stopping",
            "t: c exited (shutdown)",
            "t: b stopping",
            "t: b exited (shutdown)",
            &format!("t: stopped (escalated: {ESCALATED})"),
        ],
    )
    .await;
    assert_eq!(sup.wait().await, ExitReason::Escalated(ESCALATED.into()));
    assert_eq!(sup.stats().get("t").unwrap().escalations, 1);
    assert!(reg.paths().is_empty());
}

#[actix::test]
async fn restarts_spread_over_more_than_the_period_do_not_escalate() {
    tokio::time::pause();
    let probes = Probes::default();
    let spec = SupervisorSpec::new("t")
        .intensity(Intensity::new(1, Duration::from_secs(1)).unwrap())
        .backoff(Backoff::none())
        .child(probes.spec("a"));
    let (sup, mut rx) = start(spec, &["t: a started"]).await;
    let reg = sup.registry();
    for _ in 0..3 {
        probe(reg, "t/a").do_send(Exit::Panic("p"));
        expect_events(&mut rx, &restarted("t", "a", "panic: p")).await;
        // Virtual time: the restart leaves the 1 s window before the next failure.
        tokio::time::advance(Duration::from_millis(1001)).await;
    }
    assert_eq!(sup.shutdown().await, ExitReason::Shutdown);
}

fn inner() -> SupervisorSpec {
    SupervisorSpec::new("unused-name")
        .intensity(Intensity::new(0, Duration::from_secs(10)).unwrap())
        .backoff(Backoff::none())
        .child(Probes::default().spec("w"))
}

#[actix::test]
async fn escalation_is_handled_by_the_parent_then_fails_the_root() {
    let spec = SupervisorSpec::new("top")
        .intensity(Intensity::new(1, Duration::from_secs(10)).unwrap())
        .backoff(Backoff::none())
        .child(ChildSpec::supervisor("workers", inner));
    let (sup, mut rx) = start(spec, &["top: workers started", "top/workers: w started"]).await;
    let reg = sup.registry();
    let inner_escalation = "more than 0 restarts within 10s";
    let inner_fails = [
        "top/workers: w exited (abnormal: x)".to_string(),
        format!("top/workers: escalated ({inner_escalation})"),
        format!("top/workers: shutdown started (escalated: {inner_escalation})"),
        format!("top/workers: stopped (escalated: {inner_escalation})"),
        format!("top: workers exited (escalated: {inner_escalation})"),
    ];

    // First escalation: the root restarts the inner supervisor, which starts a fresh w.
    let old_inner = sup.where_is::<Supervisor>("workers").await.unwrap();
    probe(reg, "top/workers/w").do_send(Exit::Abnormal("x"));
    expect_events(&mut rx, &inner_fails).await;
    expect_events(
        &mut rx,
        &[
            "top: workers restarting in 0ns (attempt 0)",
            "top: workers started",
            "top/workers: w started",
        ],
    )
    .await;
    let new_inner = sup.where_is::<Supervisor>("workers").await.unwrap();
    assert!(!old_inner.connected() && new_inner.connected());

    // Second escalation exceeds the root's intensity too: the root fails.
    probe(reg, "top/workers/w").do_send(Exit::Abnormal("x"));
    expect_events(&mut rx, &inner_fails).await;
    let root_escalation = "more than 1 restarts within 10s";
    expect_events(
        &mut rx,
        &[
            &format!("top: escalated ({root_escalation})"),
            &format!("top: shutdown started (escalated: {root_escalation})"),
            &format!("top: stopped (escalated: {root_escalation})"),
        ],
    )
    .await;
    assert_eq!(
        sup.wait().await,
        ExitReason::Escalated(root_escalation.into())
    );
    let stats = sup.stats();
    assert_eq!(stats.get("top/workers").unwrap().escalations, 2);
    assert_eq!(stats.get("top").unwrap().escalations, 1);
    assert_eq!(stats.get("top/workers").unwrap().starts, 2);
}
