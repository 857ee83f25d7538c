//! A dynamic supervisor that starts and ends many temporary children keeps constant
//! bookkeeping: ended children leave the registry and the per-path counters, and only the
//! tree's totals remember them.

mod support;

use futures::future::join_all;
use herd_supervision::{ChildSpec, ExitReason, SupervisorSpec, WhichChildren};
use support::{Exit, Log, Probe};

const CHILDREN: usize = 20_000;
const WAVE: usize = 1_000;

#[actix::test]
async fn ended_temporary_children_leave_no_trace_but_the_totals() {
    let sup = SupervisorSpec::dynamic("conns").start().unwrap();
    for wave in 0..CHILDREN / WAVE {
        let mut handles = Vec::with_capacity(WAVE);
        for i in 0..WAVE {
            let spec = ChildSpec::new(format!("c{}", wave * WAVE + i), || Probe {
                id: "conn",
                incarnation: 0,
                log: Log::default(),
                panic_on_start: Vec::new(),
                stubborn: false,
            });
            handles.push(sup.start_child(spec).await.unwrap());
        }
        for handle in &handles {
            handle.addr().expect("running").do_send(Exit::Normal);
        }
        let exits = tokio::time::timeout(
            support::WAIT,
            join_all(handles.iter().map(|handle| handle.wait())),
        )
        .await
        .expect("every child ends");
        assert!(exits.iter().all(|reason| *reason == ExitReason::Normal));
        // Bounded at every point, not only at the end.
        assert!(sup.stats().len() <= 1, "{} paths kept", sup.stats().len());
    }
    assert!(sup.registry().paths().is_empty());
    assert!(sup.addr().send(WhichChildren).await.unwrap().is_empty());
    let totals = sup.stats().totals();
    assert_eq!(totals.starts, CHILDREN as u64);
    assert_eq!(totals.exits_normal, CHILDREN as u64);
    sup.shutdown().await;
}
