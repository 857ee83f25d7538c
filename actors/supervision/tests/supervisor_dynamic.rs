//! Dynamic children: added and removed at run time, temporary by default, and one's crash
//! leaves its siblings untouched.

mod support;

use herd_supervision::{
    Backoff, ChildInfo, ChildSpec, ExitReason, Restart, StartChild, StartError, Supervisor,
    SupervisorSpec, TerminateChild, TerminateError, WhichChildren,
};
use support::{Exit, Ping, Probes, expect_events, next_events, restarted, start};

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
    let (a_addr, c_addr) = (a.addr().unwrap(), c.addr().unwrap());
    assert_eq!(b.path(), "conns/b");
    assert_eq!(b.addr().unwrap().send(Ping).await.unwrap(), 0);

    // A crash of b: temporary by default, so it is gone; a and c keep running as before.
    b.addr().unwrap().do_send(Exit::Panic("bad frame"));
    expect_events(&mut rx, &["conns: b exited (panic: bad frame)"]).await;
    assert_eq!(b.wait().await, ExitReason::Panic("bad frame".into()));
    assert!(b.addr().is_none());
    assert_eq!(a_addr.send(Ping).await.unwrap(), 0);
    assert_eq!(c_addr.send(Ping).await.unwrap(), 0);
    assert_eq!(a.exit_reason(), None);

    // Removal at run time replies once the child has stopped.
    sup.terminate_child("c").await.unwrap();
    expect_events(
        &mut rx,
        &["conns: c stopping", "conns: c exited (shutdown)"],
    )
    .await;
    assert_eq!(c.exit_reason(), Some(ExitReason::Shutdown));
    assert!(!c_addr.connected());
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
    d.addr().unwrap().do_send(Exit::Abnormal("reset by peer"));
    expect_events(&mut rx, &restarted("conns", "d", "abnormal: reset by peer")).await;
    // The handle follows the restart: its address is the new incarnation's.
    assert_eq!(d.addr().unwrap().send(Ping).await.unwrap(), 1);
    assert_eq!(d.exit_reason(), None);
    assert_eq!(a_addr.send(Ping).await.unwrap(), 0);

    // A dynamic supervisor asks every child to stop at once (newest first), then waits for
    // all of them; the exits come in whatever order the children finish.
    sup.shutdown().await;
    let mut events = next_events(&mut rx, 6).await;
    assert_eq!(
        events[..3],
        [
            "conns: shutdown started (shutdown)",
            "conns: d stopping",
            "conns: a stopping",
        ]
    );
    assert_eq!(events[5], "conns: stopped (shutdown)");
    events[3..5].sort();
    assert_eq!(
        events[3..5],
        ["conns: a exited (shutdown)", "conns: d exited (shutdown)"]
    );
    assert_eq!(d.wait().await, ExitReason::Shutdown);
    assert_eq!(a.wait().await, ExitReason::Shutdown);
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
    assert_eq!(c1.addr().unwrap().send(Ping).await.unwrap(), 0);
    assert_eq!(sup.registry().paths(), ["hub/conns", "hub/conns/c1"]);
    sup.shutdown().await;
    assert!(sup.registry().paths().is_empty());
}
