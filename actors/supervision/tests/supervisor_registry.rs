//! Siblings find each other through the registry, and always get the current incarnation.

mod support;

use actix::prelude::*;
use herd_supervision::{Backoff, ChildSpec, Registry, SupervisorSpec};
use support::{Exit, Ping, Probe, Probes, WAIT, expect_events, restarted, start};
use tokio::sync::mpsc;

/// Looks its sibling up in `started()` and reports what it found.
struct Finder {
    registry: Registry,
    found: mpsc::UnboundedSender<Option<Addr<Probe>>>,
}

impl Actor for Finder {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        let _ = self.found.send(self.registry.get::<Probe>("t/first"));
    }
}

#[actix::test]
async fn a_child_finds_an_earlier_sibling_and_its_restarted_address() {
    let registry = Registry::new();
    let (found_tx, mut found) = mpsc::unbounded_channel();
    let finder_registry = registry.clone();
    let spec = SupervisorSpec::new("t")
        .registry(registry.clone())
        .backoff(Backoff::none())
        .child(Probes::default().spec("first"))
        .child(ChildSpec::new("finder", move || Finder {
            registry: finder_registry.clone(),
            found: found_tx.clone(),
        }));
    let (sup, mut rx) = start(spec, &["t: first started", "t: finder started"]).await;
    let first = tokio::time::timeout(WAIT, found.recv())
        .await
        .unwrap()
        .unwrap()
        .expect("finder saw no sibling");
    assert_eq!(first.send(Ping).await.unwrap(), 0);

    first.do_send(Exit::Panic("gone"));
    expect_events(&mut rx, &restarted("t", "first", "panic: gone")).await;
    let again = registry.get::<Probe>("t/first").unwrap();
    assert_eq!(again.send(Ping).await.unwrap(), 1);
    assert_eq!(
        sup.where_is::<Probe>("first")
            .await
            .unwrap()
            .send(Ping)
            .await
            .unwrap(),
        1
    );
    // Wrong type or unknown id: nothing.
    assert!(registry.get::<Finder>("t/first").is_none());
    assert!(sup.where_is::<Probe>("nope").await.is_none());
    sup.shutdown().await;
}
