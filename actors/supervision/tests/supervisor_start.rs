//! How children start: a fallible factory's error is an abnormal exit with its reason,
//! one-shot children take a resource once and are never restarted, and options only a
//! root has are refused on nested supervisors instead of being ignored.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herd_supervision::{
    Backoff, ChildSpec, ConfigError, ExitReason, Intensity, Registry, Restart, StartError,
    SupervisorSpec,
};
use support::{Log, Ping, Probe, expect_events, start};

fn probe(id: &'static str, incarnation: usize) -> Probe {
    Probe {
        id,
        incarnation,
        log: Log::default(),
        panic_on_start: Vec::new(),
        stubborn: false,
    }
}

#[actix::test]
async fn a_failed_start_is_an_abnormal_exit_that_is_restarted_with_backoff() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let flaky = ChildSpec::try_new("db", move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        if n < 2 {
            Err(format!("connection refused (attempt {n})"))
        } else {
            Ok(probe("db", n))
        }
    });
    let backoff = Backoff::exponential(Duration::from_millis(1), Duration::from_millis(1), 0.0)
        .expect("valid backoff");
    let spec = SupervisorSpec::new("app").backoff(backoff).child(flaky);
    let (sup, mut rx) = start(spec, &["app: db started"]).await;
    expect_events(
        &mut rx,
        &[
            "app: db exited (start failed: connection refused (attempt 0))",
            "app: db restarting in 1ms (attempt 0)",
            "app: db started",
            "app: db exited (start failed: connection refused (attempt 1))",
            "app: db restarting in 1ms (attempt 1)",
            "app: db started",
        ],
    )
    .await;
    let db = sup.registry().get::<Probe>("app/db").expect("db runs");
    assert_eq!(db.send(Ping).await.unwrap(), 2);
    let stats = sup.stats().get("app/db").unwrap();
    assert_eq!(
        (stats.starts, stats.exits_abnormal, stats.panics),
        (3, 2, 0)
    );
    sup.shutdown().await;
}

#[actix::test]
async fn a_start_that_always_fails_escalates_through_the_intensity() {
    let never = ChildSpec::try_new("db", || Err::<Probe, _>("no such database"));
    let spec = SupervisorSpec::new("app")
        .backoff(Backoff::none())
        .intensity(Intensity::new(2, Duration::from_secs(60)).unwrap())
        .child(never);
    let sup = spec.start().unwrap();
    let reason = tokio::time::timeout(support::WAIT, sup.wait())
        .await
        .expect("the supervisor gives up");
    assert_eq!(
        reason,
        ExitReason::Escalated("more than 2 restarts within 60s".into())
    );
    assert_eq!(sup.stats().get("app/db").unwrap().starts, 3);
}

#[actix::test]
async fn a_one_shot_child_takes_its_resource_once_and_is_never_restarted() {
    let sup = SupervisorSpec::dynamic("conns").start().unwrap();
    let resource = String::from("socket-7");
    let conn = sup
        .start_child(ChildSpec::once("c7", move || probe("c7", resource.len())))
        .await
        .unwrap();
    let addr = conn.addr().expect("running");
    assert_eq!(addr.send(Ping).await.unwrap(), "socket-7".len());
    addr.do_send(support::Exit::Panic("peer vanished"));
    assert_eq!(
        tokio::time::timeout(support::WAIT, conn.wait())
            .await
            .unwrap(),
        ExitReason::Panic("peer vanished".into())
    );
    assert!(conn.addr().is_none());

    let refused = sup
        .start_child(ChildSpec::once("c8", || probe("c8", 0)).restart(Restart::Permanent))
        .await;
    assert_eq!(
        refused.unwrap_err(),
        StartError::OneShotRestart("c8".into())
    );
    sup.shutdown().await;

    let static_tree = SupervisorSpec::new("app")
        .child(ChildSpec::once("job", || probe("job", 0)).restart(Restart::Transient))
        .start();
    assert_eq!(
        static_tree.unwrap_err(),
        ConfigError::OneShotRestart { id: "job".into() }
    );
}

#[actix::test]
async fn root_only_options_on_a_nested_supervisor_are_refused() {
    let spec = SupervisorSpec::new("app")
        .backoff(Backoff::none())
        .intensity(Intensity::new(0, Duration::from_secs(60)).unwrap())
        .child(
            ChildSpec::supervisor("inner", || {
                SupervisorSpec::new("inner").registry(Registry::new())
            })
            .restart(Restart::Transient),
        );
    let mut rx = spec.subscribe();
    let sup = spec.start().unwrap();
    expect_events(
        &mut rx,
        &[
            "app: inner started",
            "app: inner exited (abnormal: supervisor \"app/inner\" is nested: \
             registry can only be set on the root of a tree)",
        ],
    )
    .await;
    sup.shutdown().await;
}
