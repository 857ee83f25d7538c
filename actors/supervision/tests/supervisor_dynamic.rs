//! Dynamic children: added and removed at run time, temporary by default, and one's crash
//! leaves its siblings untouched.

mod support;

use herd_supervision::{
    Backoff, ChildInfo, ChildSpec, Restart, StartChild, StartError, Supervisor, SupervisorSpec,
    TerminateChild, TerminateError, WhichChildren,
};
use support::{Exit, Ping, Probes, expect_events, restarted, start};

#[actix::test]
async fn dynamic_children_come_and_go_without_touching_siblings() {
    let probes = Probes::default();
    let spec = SupervisorSpec::dynamic("conns").backoff(Backoff::none());
    let mut rx = spec.subscribe();
    let sup = spec.start().unwrap();

    let a = sup.start_child(probes.spec("a")).await.unwrap();
    let b = sup
        .addr()
        .send(StartChild(probes.spec("b")))
        .await
        .unwrap()
        .unwrap();
    let c = sup.start_child(probes.spec("c")).await.unwrap();
    expect_events(
        &mut rx,
        &["conns: a started", "conns: b started", "conns: c started"],
    )
    .await;
    assert_eq!(b.send(Ping).await.unwrap(), 0);

    // A crash of b: temporary by default, so it is gone; a and c keep running as before.
    b.do_send(Exit::Panic("bad frame"));
    expect_events(&mut rx, &["conns: b exited (panic: bad frame)"]).await;
    assert_eq!(a.send(Ping).await.unwrap(), 0);
    assert_eq!(c.send(Ping).await.unwrap(), 0);
    assert!(!b.connected());

    // Removal at run time replies once the child has stopped.
    sup.terminate_child("c").await.unwrap();
    expect_events(
        &mut rx,
        &["conns: c stopping", "conns: c exited (shutdown)"],
    )
    .await;
    assert!(!c.connected());
    assert_eq!(
        sup.addr().send(WhichChildren).await.unwrap(),
        vec![ChildInfo {
            id: "a".into(),
            running: true
        }]
    );

    // Ids are unique; a terminated id can be reused; a transient child is restarted.
    assert_eq!(
        sup.start_child(probes.spec("a")).await.unwrap_err(),
        StartError::DuplicateId {
            supervisor: "conns".into(),
            id: "a".into()
        }
    );
    assert_eq!(
        sup.start_child(probes.spec("x/y")).await.unwrap_err(),
        StartError::InvalidId("x/y".into())
    );
    assert_eq!(
        sup.addr()
            .send(TerminateChild("nope".into()))
            .await
            .unwrap()
            .unwrap_err(),
        TerminateError::NotFound {
            supervisor: "conns".into(),
            id: "nope".into()
        }
    );
    let d = sup
        .start_child(probes.spec("d").restart(Restart::Transient))
        .await
        .unwrap();
    expect_events(&mut rx, &["conns: d started"]).await;
    d.do_send(Exit::Abnormal("reset by peer"));
    expect_events(&mut rx, &restarted("conns", "d", "abnormal: reset by peer")).await;
    let d2 = sup.registry().get::<support::Probe>("conns/d").unwrap();
    assert_eq!(d2.send(Ping).await.unwrap(), 1);
    assert_eq!(a.send(Ping).await.unwrap(), 0);

    sup.shutdown().await;
    expect_events(
        &mut rx,
        &[
            "conns: shutdown started (shutdown)",
            "conns: d stopping",
            "conns: d exited (shutdown)",
            "conns: a stopping",
            "conns: a exited (shutdown)",
            "conns: stopped (shutdown)",
        ],
    )
    .await;
    assert!(matches!(
        sup.start_child(probes.spec("late")).await,
        Err(StartError::Mailbox(_))
    ));
}

#[actix::test]
async fn a_nested_dynamic_supervisor_is_found_through_the_registry() {
    let probes = Probes::default();
    let spec = SupervisorSpec::new("hub").child(ChildSpec::supervisor("conns", || {
        SupervisorSpec::dynamic("conns")
    }));
    let (sup, mut rx) = start(spec, &["hub: conns started"]).await;
    let conns = sup.registry().get::<Supervisor>("hub/conns").unwrap();
    let c1 = conns
        .send(StartChild(probes.spec("c1")))
        .await
        .unwrap()
        .unwrap();
    expect_events(&mut rx, &["hub/conns: c1 started"]).await;
    assert_eq!(c1.send(Ping).await.unwrap(), 0);
    assert_eq!(sup.registry().paths(), ["hub/conns", "hub/conns/c1"]);
    sup.shutdown().await;
    assert!(sup.registry().paths().is_empty());
}
