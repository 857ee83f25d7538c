//! The agent's own actors under its `agent` supervisor (rest-for-one:
//! batcher -> plugins -> heartbeat -> connector): an exited child comes back
//! as a fresh actor, the children after it restart too, the ones before it
//! do not, and the agent keeps delivering to the hub.

use std::time::Duration;

use crate::batcher::Batcher;
use crate::config::AgentConfig;
use crate::heartbeat::HeartbeatReporter;
use crate::messages::Stop;
use crate::{self as agent, ids};
use actix::prelude::*;
use herd_codec::proto::Record;
use herd_supervision::{ExitReason, SupervisionEvent};
use herd_tests::script::ScriptedHub;
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(10);

/// The next host heartbeat (1000) record the hub receives.
async fn next_host_heartbeat(hub: &mut ScriptedHub) -> Record {
    hub.record("a 1000 record", |record| record.data_type == 1000)
        .await
}

async fn wait_for(events: &mut broadcast::Receiver<SupervisionEvent>, line: &str) {
    loop {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no `{line}` in time"))
            .expect("event stream open");
        if event.to_string() == line {
            return;
        }
    }
}

#[actix::test]
async fn an_exited_child_restarts_with_the_ones_after_it_and_delivery_goes_on() {
    let mut hub = ScriptedHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = AgentConfig {
        hubs: vec![hub.addr.to_string()],
        tls: crate::AgentTlsConfig::insecure(),
        state_dir: dir.path().to_owned(),
        heartbeat_interval_secs: 1,
        ..AgentConfig::default()
    };
    config.reconnect.min_backoff_ms = 50;
    config.reconnect.max_backoff_ms = 200;
    let agent = agent::start(config).unwrap();
    let tree = agent.supervisor().clone();
    let path = |id: &str| format!("{}/{id}", agent::ROOT);

    hub.hello().await;
    assert_eq!(next_host_heartbeat(&mut hub).await.source, "agent");

    let mut events = tree.subscribe();
    let batcher: Addr<Batcher> = tree.registry().get(&path(ids::BATCHER)).unwrap();
    let heartbeat: Addr<HeartbeatReporter> = tree.registry().get(&path(ids::HEARTBEAT)).unwrap();
    // A permanent child exiting on its own is restarted like after a crash.
    heartbeat.do_send(Stop);
    wait_for(&mut events, "agent: heartbeat exited (normal)").await;
    wait_for(&mut events, "agent: heartbeat started").await;
    wait_for(&mut events, "agent: connector started").await;

    let restarted: Addr<HeartbeatReporter> = tree.registry().get(&path(ids::HEARTBEAT)).unwrap();
    assert!(restarted != heartbeat, "a fresh heartbeat actor");
    assert!(!heartbeat.connected(), "the old incarnation is gone");
    let again: Addr<Batcher> = tree.registry().get(&path(ids::BATCHER)).unwrap();
    assert!(again == batcher, "the batcher, before it, kept running");
    let starts = |id: &str| tree.stats().get(&path(id)).map(|s| s.starts);
    assert_eq!(starts(ids::BATCHER), Some(1));
    assert_eq!(starts(ids::PLUGINS), Some(1));
    assert_eq!(starts(ids::HEARTBEAT), Some(2));
    assert_eq!(starts(ids::CONNECTOR), Some(2));

    // The new connector handshakes again and the new heartbeat's records
    // reach the hub through it.
    // Only what came after the new Hello counts.
    hub.clear();
    hub.hello().await;
    hub.clear();
    let record = next_host_heartbeat(&mut hub).await;
    assert_eq!(record.source, "agent");

    let report = agent.shutdown().await;
    assert_eq!(report.unacked_batches, 0, "{report:?}");
    assert!(report.last_seq > 0);
    assert_eq!(tree.exit_reason(), Some(ExitReason::Shutdown));
}
