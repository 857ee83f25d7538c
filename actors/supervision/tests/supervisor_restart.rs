//! Restart types after normal and abnormal exits, and panics in handlers, `started()` and
//! the factory.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix::MailboxError;
use herd_supervision::{ChildSpec, ExitReason, Restart, WhichChildren};
use support::{
    Exit, Ping, Probe, Probes, expect_events, incarnation, probe, restarted, shutdown_events,
    start, tree,
};

#[actix::test]
async fn permanent_restarts_after_normal_and_abnormal_exits() {
    let probes = Probes::default();
    let spec = tree([probes.spec("a").restart(Restart::Permanent)]);
    let (sup, mut rx) = start(spec, &["t: a started"]).await;
    let reg = sup.registry();
    assert_eq!(incarnation(reg, "t/a").await, 0);

    probe(reg, "t/a").do_send(Exit::Normal);
    expect_events(&mut rx, &restarted("t", "a", "normal")).await;
    assert_eq!(incarnation(reg, "t/a").await, 1);

    probe(reg, "t/a").do_send(Exit::Abnormal("bad input"));
    expect_events(&mut rx, &restarted("t", "a", "abnormal: bad input")).await;
    assert_eq!(incarnation(reg, "t/a").await, 2);

    assert_eq!(sup.shutdown().await, ExitReason::Shutdown);
    expect_events(&mut rx, &shutdown_events("t", &["a"])).await;
    let stats = sup.stats().get("t/a").unwrap();
    assert_eq!((stats.starts, stats.restarts), (3, 2));
    assert_eq!((stats.exits_normal, stats.exits_abnormal), (2, 1));
}

#[actix::test]
async fn transient_restarts_only_after_abnormal_exit() {
    let probes = Probes::default();
    let spec = tree([probes.spec("a").restart(Restart::Transient)]);
    let (sup, mut rx) = start(spec, &["t: a started"]).await;
    let reg = sup.registry();

    probe(reg, "t/a").do_send(Exit::Abnormal("lost peer"));
    expect_events(&mut rx, &restarted("t", "a", "abnormal: lost peer")).await;
    assert_eq!(incarnation(reg, "t/a").await, 1);

    probe(reg, "t/a").do_send(Exit::Normal);
    expect_events(&mut rx, &["t: a exited (normal)"]).await;
    assert!(!reg.contains("t/a"));
    assert_eq!(sup.addr().send(WhichChildren).await.unwrap(), vec![]);

    // Nothing was restarted in between: the next events are the shutdown's.
    sup.shutdown().await;
    expect_events(&mut rx, &shutdown_events("t", &[])).await;
}

#[actix::test]
async fn temporary_is_never_restarted() {
    let probes = Probes::default();
    let spec = tree([
        probes.spec("a").restart(Restart::Temporary),
        probes.spec("b").restart(Restart::Temporary),
    ]);
    let (sup, mut rx) = start(spec, &["t: a started", "t: b started"]).await;
    let reg = sup.registry();

    probe(reg, "t/a").do_send(Exit::Normal);
    expect_events(&mut rx, &["t: a exited (normal)"]).await;
    probe(reg, "t/b").do_send(Exit::Abnormal("oops"));
    expect_events(&mut rx, &["t: b exited (abnormal: oops)"]).await;
    assert!(reg.paths().is_empty());

    sup.shutdown().await;
    expect_events(&mut rx, &shutdown_events("t", &[])).await;
}

#[actix::test]
async fn panic_in_handler_is_an_abnormal_exit_and_restarts() {
    let probes = Probes::default();
    let spec = tree([probes.spec("a").restart(Restart::Transient)]);
    let (sup, mut rx) = start(spec, &["t: a started"]).await;
    let reg = sup.registry();

    let old = probe(reg, "t/a");
    old.do_send(Exit::Panic("handler blew up"));
    expect_events(&mut rx, &restarted("t", "a", "panic: handler blew up")).await;
    // The dead incarnation's mailbox is closed, not silently swallowing messages.
    assert!(!old.connected());
    assert_eq!(old.send(Ping).await, Err(MailboxError::Closed));
    assert_eq!(incarnation(reg, "t/a").await, 1);
    assert_eq!(sup.stats().get("t/a").unwrap().panics, 1);
    sup.shutdown().await;
}

#[actix::test]
async fn panic_in_started_is_an_abnormal_exit_and_restarts() {
    let probes = Probes::default();
    let spec = tree([probes.spec_with("a", vec![1], false)]);
    let (sup, mut rx) = start(spec, &["t: a started"]).await;
    let reg = sup.registry();

    probe(reg, "t/a").do_send(Exit::Panic("first"));
    expect_events(&mut rx, &restarted("t", "a", "panic: first")).await;
    expect_events(&mut rx, &restarted("t", "a", "panic: a failed to start")).await;
    assert_eq!(incarnation(reg, "t/a").await, 2);
    sup.shutdown().await;
}

#[actix::test]
async fn panic_in_factory_is_an_abnormal_exit() {
    let fail = Arc::new(AtomicBool::new(true));
    let log = Probes::default().log;
    let child = ChildSpec::new("a", move || {
        if fail.swap(false, Ordering::SeqCst) {
            panic!("cannot build a");
        }
        Probe {
            id: "a",
            incarnation: 7,
            log: log.clone(),
            panic_on_start: Vec::new(),
            stubborn: false,
        }
    });
    let (sup, mut rx) = start(tree([child]), &["t: a started"]).await;
    expect_events(&mut rx, &restarted("t", "a", "panic: cannot build a")).await;
    assert_eq!(incarnation(sup.registry(), "t/a").await, 7);
    sup.shutdown().await;
}
