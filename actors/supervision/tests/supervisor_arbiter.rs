//! Children on other arbiters (threads) are supervised the same way.

mod support;

use std::time::Duration;

use actix::Arbiter;
use herd_supervision::{Backoff, ChildSpec, Intensity, SupervisorSpec};
use support::{
    Exit, Probes, WAIT, WhichThread, expect_events, incarnation, probe, restarted, shutdown_events,
    start,
};

#[actix::test]
async fn panic_on_another_arbiter_is_seen_and_restarted_there() {
    let arbiter = Arbiter::new();
    let probes = Probes::default();
    let spec = SupervisorSpec::new("t")
        .backoff(Backoff::none())
        .child(probes.spec("local"))
        .child(probes.spec("remote").arbiter(arbiter.handle()));
    let (sup, mut rx) = start(spec, &["t: local started", "t: remote started"]).await;
    let reg = sup.registry();

    let here = std::thread::current().id();
    let there = probe(reg, "t/remote").send(WhichThread).await.unwrap();
    assert_ne!(there, here);
    assert_eq!(probe(reg, "t/local").send(WhichThread).await.unwrap(), here);

    probe(reg, "t/remote").do_send(Exit::Panic("remote boom"));
    expect_events(&mut rx, &restarted("t", "remote", "panic: remote boom")).await;
    assert_eq!(incarnation(reg, "t/remote").await, 1);
    assert_eq!(
        probe(reg, "t/remote").send(WhichThread).await.unwrap(),
        there
    );
    assert_eq!(incarnation(reg, "t/local").await, 0);

    // The arbiter thread survived the panic and still runs other work.
    let (tx, done) = tokio::sync::oneshot::channel();
    assert!(arbiter.spawn(async move {
        let _ = tx.send(std::thread::current().id());
    }));
    assert_eq!(
        tokio::time::timeout(WAIT, done).await.unwrap().unwrap(),
        there
    );

    sup.shutdown().await;
    expect_events(&mut rx, &shutdown_events("t", &["remote", "local"])).await;
    arbiter.stop();
    arbiter.join().unwrap();
}

#[actix::test]
async fn nested_supervisor_on_another_arbiter() {
    let arbiter = Arbiter::new();
    let probes = Probes::default();
    let inner = probes.clone();
    let spec = SupervisorSpec::new("t").backoff(Backoff::none()).child(
        ChildSpec::supervisor("far", move || {
            SupervisorSpec::new("far")
                .backoff(Backoff::none())
                .child(inner.spec("w"))
        })
        .arbiter(arbiter.handle()),
    );
    let (sup, mut rx) = start(spec, &["t: far started", "t/far: w started"]).await;
    let reg = sup.registry();
    let here = std::thread::current().id();
    assert_ne!(probe(reg, "t/far/w").send(WhichThread).await.unwrap(), here);

    probe(reg, "t/far/w").do_send(Exit::Abnormal("x"));
    expect_events(&mut rx, &restarted("t/far", "w", "abnormal: x")).await;
    sup.shutdown().await;
    expect_events(
        &mut rx,
        &[
            "t: shutdown started (shutdown)",
            "t: far stopping",
            "t/far: shutdown started (shutdown)",
            "t/far: w stopping",
            "t/far: w exited (shutdown)",
            "t/far: stopped (shutdown)",
            "t: far exited (shutdown)",
            "t: stopped (shutdown)",
        ],
    )
    .await;
    arbiter.stop();
    arbiter.join().unwrap();
}

#[actix::test]
async fn a_stopped_arbiter_is_an_abnormal_exit_not_a_silent_death() {
    let arbiter = Arbiter::new();
    let probes = Probes::default();
    let spec = SupervisorSpec::new("t")
        .intensity(Intensity::new(1, Duration::from_secs(10)).unwrap())
        .backoff(Backoff::none())
        .child(probes.spec("remote").arbiter(arbiter.handle()));
    let (sup, mut rx) = start(spec, &["t: remote started"]).await;
    assert_eq!(incarnation(sup.registry(), "t/remote").await, 0);

    arbiter.stop();
    arbiter.join().unwrap();
    let gone = "abnormal: child task dropped before the actor stopped (its arbiter is gone)";
    expect_events(
        &mut rx,
        &[
            &format!("t: remote exited ({gone})"),
            "t: remote restarting in 0ns (attempt 0)",
            "t: remote started",
            &format!("t: remote exited ({gone})"),
            "t: escalated (more than 1 restarts within 10s)",
            "t: shutdown started (escalated: more than 1 restarts within 10s)",
            "t: stopped (escalated: more than 1 restarts within 10s)",
        ],
    )
    .await;
}
