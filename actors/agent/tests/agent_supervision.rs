//! The agent's own actors under its `agent` supervisor (rest-for-one:
//! batcher -> plugins -> heartbeat -> connector): an exited child comes back
//! as a fresh actor, the children after it restart too, the ones before it
//! do not, and the agent keeps delivering to the hub.

use std::time::Duration;

use actix::prelude::*;
use futures::{SinkExt, StreamExt};
use herd_agent::batcher::Batcher;
use herd_agent::config::AgentConfig;
use herd_agent::heartbeat::HeartbeatReporter;
use herd_agent::messages::Stop;
use herd_agent::{self as agent, ids};
use herd_codec::HubCodec;
use herd_codec::proto::{Ack, HubMessage, Record, Welcome, agent_message};
use herd_supervision::{ExitReason, SupervisionEvent};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_util::codec::Framed;

const WAIT: Duration = Duration::from_secs(10);

/// What the in-test hub saw.
#[derive(Debug)]
enum Seen {
    Hello,
    Record(Record),
}

/// A minimal hub: welcomes every connection, acks every batch, reports
/// Hellos and records.
async fn test_hub() -> (String, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (seen, rx) = mpsc::unbounded_channel();
    actix::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let seen = seen.clone();
            actix::spawn(async move {
                let mut framed = Framed::new(socket, HubCodec::new());
                while let Some(Ok(message)) = framed.next().await {
                    let reply = match message.kind {
                        Some(agent_message::Kind::Hello(_)) => {
                            let _ = seen.send(Seen::Hello);
                            HubMessage::from(Welcome {
                                ok: true,
                                agent_id: "supervised".into(),
                                ..Welcome::default()
                            })
                        }
                        Some(agent_message::Kind::Batch(batch)) => {
                            for record in batch.records {
                                let _ = seen.send(Seen::Record(record));
                            }
                            HubMessage::from(Ack { seq: batch.seq })
                        }
                        _ => continue,
                    };
                    if framed.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn next_hello(seen: &mut mpsc::UnboundedReceiver<Seen>) {
    loop {
        match tokio::time::timeout(WAIT, seen.recv()).await {
            Ok(Some(Seen::Hello)) => return,
            Ok(Some(_)) => {}
            other => panic!("no Hello in time: {other:?}"),
        }
    }
}

async fn next_host_heartbeat(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Record {
    loop {
        match tokio::time::timeout(WAIT, seen.recv()).await {
            Ok(Some(Seen::Record(record))) if record.data_type == 1000 => return record,
            Ok(Some(_)) => {}
            other => panic!("no 1000 record in time: {other:?}"),
        }
    }
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
    let (hub, mut seen) = test_hub().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = AgentConfig {
        hubs: vec![hub],
        state_dir: dir.path().to_owned(),
        heartbeat_interval_secs: 1,
        ..AgentConfig::default()
    };
    config.reconnect.min_backoff_ms = 50;
    config.reconnect.max_backoff_ms = 200;
    let agent = agent::start(config).unwrap();
    let tree = agent.supervisor().clone();
    let path = |id: &str| format!("{}/{id}", agent::ROOT);

    next_hello(&mut seen).await;
    assert_eq!(next_host_heartbeat(&mut seen).await.source, "agent");

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
    next_hello(&mut seen).await;
    let record = next_host_heartbeat(&mut seen).await;
    assert_eq!(record.source, "agent");

    let report = agent.shutdown().await;
    assert_eq!(report.unacked_batches, 0, "{report:?}");
    assert!(report.last_seq > 0);
    assert_eq!(tree.exit_reason(), Some(ExitReason::Shutdown));
}
