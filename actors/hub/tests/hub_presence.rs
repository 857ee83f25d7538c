//! Presence: takeover, dead (half-open) connections, offline events, heartbeats.

mod hub_support;

use std::collections::HashMap;

use futures::StreamExt;
use herd_codec::data_type;
use herd_codec::proto::hub_message::Kind;
use herd_codec::proto::{Batch, CloseReason, Record};
use herd_hub::{AgentInfo, Presence, PresenceEvent};
use hub_support::{ScriptedAgent, hub_with, within};

async fn next_presence(presence: &mut async_nats::Subscriber) -> Presence {
    let message = within("a presence event", presence.next())
        .await
        .expect("subscription open");
    serde_json::from_slice(&message.payload).expect("presence JSON")
}

#[actix::test]
async fn takeover_supersedes_the_old_connection_and_says_so() {
    let (nats, hub) = hub_with(|_| {}).await;
    let mut presence = hub_support::subscribe(&nats, "herd.presence.dup").await;

    let mut old = ScriptedAgent::online(hub.listen_addr(), "dup").await;
    let online = next_presence(&mut presence).await;
    assert_eq!(online.event, PresenceEvent::Online);
    assert_eq!(online.reason, "");
    let new = ScriptedAgent::online(hub.listen_addr(), "dup").await;
    match &old.until_closed().await[..] {
        [Kind::Goodbye(goodbye)] => {
            assert_eq!(goodbye.reason(), CloseReason::Superseded);
            assert!(
                goodbye
                    .message
                    .starts_with("agent dup connected again from 127.0.0.1:"),
                "{}",
                goodbye.message
            );
        }
        other => panic!("expected Goodbye{{SUPERSEDED}}, got {other:?}"),
    }
    let superseded = next_presence(&mut presence).await;
    assert_eq!(superseded.event, PresenceEvent::Superseded);
    assert_eq!(
        next_presence(&mut presence).await.event,
        PresenceEvent::Online
    );

    drop(new);
    let offline = next_presence(&mut presence).await;
    assert_eq!(offline.event, PresenceEvent::Offline);
    assert_eq!(offline.reason, "connection closed by the agent");
    assert_eq!(offline.hub_id, hub.hub_id());
    assert!(
        online.at_ms > 0 && superseded.at_ms >= online.at_ms && offline.at_ms >= superseded.at_ms,
        "{online:?} {superseded:?} {offline:?}"
    );
    hub.shutdown().await;
}

#[actix::test]
async fn a_silent_half_open_connection_is_closed_as_dead() {
    let (nats, hub) = hub_with(|_| {}).await;
    let mut presence = hub_support::subscribe(&nats, "herd.presence.mute").await;

    let mut mute = ScriptedAgent::online(hub.listen_addr(), "mute").await;
    mute.answer_pings = false;
    assert_eq!(
        next_presence(&mut presence).await.event,
        PresenceEvent::Online
    );
    match &mute.until_closed().await[..] {
        [Kind::Goodbye(goodbye)] => assert_eq!(goodbye.reason(), CloseReason::Idle),
        other => panic!("expected Goodbye{{IDLE}}, got {other:?}"),
    }
    let offline = next_presence(&mut presence).await;
    assert_eq!(offline.event, PresenceEvent::Offline);
    assert!(
        offline.reason.starts_with("no frame for "),
        "{}",
        offline.reason
    );
    assert!(
        hub.metrics()
            .render()
            .contains(r#"herd_hub_connection_closes_total{outcome="dead"} 1"#)
    );
    hub.shutdown().await;
}

#[actix::test]
async fn a_responsive_agent_stays_connected_past_the_dead_line() {
    let (_nats, hub) = hub_with(|_| {}).await;
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "chatty").await;
    // 1 s is more than ping_interval (200 ms) x ping_misses (3); pings are answered.
    let frame = tokio::time::timeout(std::time::Duration::from_secs(1), agent.next()).await;
    assert!(frame.is_err(), "unexpected frame or close: {frame:?}");
    agent
        .send_acked(Batch {
            seq: 1,
            records: vec![],
        })
        .await;
    hub.shutdown().await;
}

#[actix::test]
async fn heartbeats_update_the_agent_detail_and_are_published() {
    let (nats, hub) = hub_with(|_| {}).await;
    let mut heartbeats = hub_support::subscribe(&nats, "herd.heartbeat.beat").await;
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "beat").await;
    let record = |data_type, source: &str, key: &str| Record {
        data_type,
        source: source.into(),
        fields: HashMap::from([(key.into(), "42".into())]),
        ..Record::default()
    };
    agent
        .send_acked(Batch {
            seq: 1,
            records: vec![
                record(data_type::AGENT_HEARTBEAT, "agent", "cpu_percent"),
                record(data_type::PLUGIN_HEARTBEAT, "sysmetrics", "rss_bytes"),
            ],
        })
        .await;
    let mut last = None;
    for _ in 0..2 {
        let message = within("a heartbeat", heartbeats.next())
            .await
            .expect("open");
        last = Some(serde_json::from_slice::<AgentInfo>(&message.payload).expect("AgentInfo JSON"));
    }
    let detail = last.expect("two heartbeats");
    assert_eq!(detail.heartbeat["cpu_percent"], "42");
    assert_eq!(detail.plugins["sysmetrics"]["rss_bytes"], "42");
    assert!(detail.last_heartbeat_ms.is_some());
    assert_eq!(hub.agents().await, vec![detail]);
    hub.shutdown().await;
}
