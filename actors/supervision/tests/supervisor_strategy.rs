//! OneForOne, OneForAll and RestForOne: who is stopped (reverse start order) and who is
//! restarted (start order).

mod support;

use herd_supervision::{Restart, Strategy};
use support::{
    Exit, Probes, expect_events, incarnation, probe, restarted, shutdown_events, start, tree,
};

#[actix::test]
async fn one_for_one_restarts_only_the_failed_child() {
    let probes = Probes::default();
    let spec = tree(["a", "b", "c"].map(|id| probes.spec(id))).strategy(Strategy::OneForOne);
    let (sup, mut rx) = start(spec, &["t: a started", "t: b started", "t: c started"]).await;
    let reg = sup.registry();
    probes.log.take();

    probe(reg, "t/b").do_send(Exit::Abnormal("x"));
    expect_events(&mut rx, &restarted("t", "b", "abnormal: x")).await;
    assert_eq!(incarnation(reg, "t/a").await, 0);
    assert_eq!(incarnation(reg, "t/b").await, 1);
    assert_eq!(incarnation(reg, "t/c").await, 0);
    assert_eq!(probes.log.take(), ["b stopped", "b started"]);
    sup.shutdown().await;
}

#[actix::test]
async fn one_for_all_stops_others_in_reverse_then_restarts_all_in_order() {
    let probes = Probes::default();
    let spec = tree(["a", "b", "c"].map(|id| probes.spec(id))).strategy(Strategy::OneForAll);
    let (sup, mut rx) = start(spec, &["t: a started", "t: b started", "t: c started"]).await;
    let reg = sup.registry();
    probes.log.take();

    probe(reg, "t/b").do_send(Exit::Panic("b broke"));
    expect_events(
        &mut rx,
        &[
            "t: b exited (panic: b broke)",
            "t: b restarting in 0ns (attempt 0)",
            "t: c stopping",
            "t: c exited (shutdown)",
            "t: a stopping",
            "t: a exited (shutdown)",
            "t: a started",
            "t: b started",
            "t: c started",
        ],
    )
    .await;
    for id in ["a", "b", "c"] {
        assert_eq!(incarnation(reg, &format!("t/{id}")).await, 1, "{id}");
    }
    assert_eq!(
        probes.log.take(),
        [
            "b stopped",
            "c stopped",
            "a stopped",
            "a started",
            "b started",
            "c started"
        ]
    );
    sup.shutdown().await;
}

#[actix::test]
async fn rest_for_one_restarts_the_failed_child_and_those_started_after_it() {
    let probes = Probes::default();
    let spec = tree(["a", "b", "c", "d"].map(|id| probes.spec(id))).strategy(Strategy::RestForOne);
    let started = [
        "t: a started",
        "t: b started",
        "t: c started",
        "t: d started",
    ];
    let (sup, mut rx) = start(spec, &started).await;
    let reg = sup.registry();

    probe(reg, "t/b").do_send(Exit::Abnormal("x"));
    expect_events(
        &mut rx,
        &[
            "t: b exited (abnormal: x)",
            "t: b restarting in 0ns (attempt 0)",
            "t: d stopping",
            "t: d exited (shutdown)",
            "t: c stopping",
            "t: c exited (shutdown)",
            "t: b started",
            "t: c started",
            "t: d started",
        ],
    )
    .await;
    assert_eq!(incarnation(reg, "t/a").await, 0);
    for id in ["b", "c", "d"] {
        assert_eq!(incarnation(reg, &format!("t/{id}")).await, 1, "{id}");
    }
    sup.shutdown().await;
    expect_events(&mut rx, &shutdown_events("t", &["d", "c", "b", "a"])).await;
}

#[actix::test]
async fn a_temporary_sibling_stopped_by_a_group_restart_stays_stopped() {
    let probes = Probes::default();
    let spec = tree([
        probes.spec("a"),
        probes.spec("tmp").restart(Restart::Temporary),
        probes.spec("c").restart(Restart::Transient),
    ])
    .strategy(Strategy::OneForAll);
    let (sup, mut rx) = start(spec, &["t: a started", "t: tmp started", "t: c started"]).await;

    probe(sup.registry(), "t/a").do_send(Exit::Abnormal("x"));
    expect_events(
        &mut rx,
        &[
            "t: a exited (abnormal: x)",
            "t: a restarting in 0ns (attempt 0)",
            "t: c stopping",
            "t: c exited (shutdown)",
            "t: tmp stopping",
            "t: tmp exited (shutdown)",
            "t: a started",
            "t: c started",
        ],
    )
    .await;
    assert_eq!(sup.registry().paths(), ["t/a", "t/c"]);
    sup.shutdown().await;
    expect_events(&mut rx, &shutdown_events("t", &["c", "a"])).await;
}
