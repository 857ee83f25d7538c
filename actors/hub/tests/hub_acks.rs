//! Acks and losses as the hub sees them: acks never go down, a resend is acked
//! again, a seq gap and a record NATS cannot take are counted and published as
//! loss events, `Welcome` tells the agent its limits, and none of it jams the
//! connection.

mod hub_support;

use futures::StreamExt;
use herd_codec::proto::hub_message::Kind;
use herd_codec::proto::{Batch, CloseReason, Envelope, Hello, Record};
use herd_hub::{LossEvent, LossKind};
use hub_support::{ScriptedAgent, hub_with, within};
use prost::Message as _;

fn batch(seq: u64, body: usize) -> Batch {
    Batch {
        seq,
        records: vec![Record {
            data_type: 2000,
            source: "test".into(),
            body: vec![7; body].into(),
            ..Record::default()
        }],
    }
}

async fn expect_ack(agent: &mut ScriptedAgent, seq: u64) {
    match agent.expect().await {
        Kind::Ack(ack) => assert_eq!(ack.seq, seq),
        other => panic!("expected Ack{{{seq}}}, got {other:?}"),
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[actix::test]
async fn acks_never_go_down_and_a_resend_is_published_and_acked_again() {
    let (nats, hub) = hub_with(|_| {}).await;
    let mut data = hub_support::subscribe(&nats, "herd.data.>").await;
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "replayer").await;
    for seq in 1..=3 {
        agent.send(batch(seq, 3)).await;
        expect_ack(&mut agent, seq).await;
    }
    // A replay of seq 2 (say, after a reconnect that lost the ack): published
    // again for dedupe, and the ack stays at 3.
    agent.send(batch(2, 3)).await;
    expect_ack(&mut agent, 3).await;
    agent.send(batch(4, 3)).await;
    expect_ack(&mut agent, 4).await;
    let mut seqs = Vec::new();
    for _ in 0..5 {
        let message = within("a data message", data.next()).await.expect("open");
        let envelope = Envelope::decode(message.payload).expect("an Envelope");
        seqs.push(envelope.seq);
    }
    assert_eq!(seqs, [1, 2, 3, 2, 4]);
    let metrics = hub.metrics().render();
    assert_eq!(metric(&metrics, "herd_hub_resent_batches_total"), 1);
    assert_eq!(metric(&metrics, "herd_hub_gap_batches_total"), 0);
    hub.shutdown().await;
}

#[actix::test]
async fn a_seq_gap_is_counted_and_published_as_a_loss_event() {
    let (nats, hub) = hub_with(|_| {}).await;
    let mut losses = hub_support::subscribe(&nats, "herd.loss.>").await;
    // The agent says seq 10 was acked before; its first batch now is 11.
    let hello = Hello {
        last_acked_seq: 10,
        ..hub_support::hello("gappy", "secret")
    };
    let (mut agent, welcome) = ScriptedAgent::handshake(hub.listen_addr(), hello).await;
    assert!(welcome.ok, "{}", welcome.message);
    agent.send(batch(11, 3)).await;
    expect_ack(&mut agent, 11).await;
    // 12 to 14 never come (dropped by a full window, say).
    agent.send(batch(15, 3)).await;
    expect_ack(&mut agent, 15).await;
    let message = within("the loss event", losses.next()).await.expect("open");
    assert_eq!(&*message.subject, "herd.loss.gappy");
    let event: LossEvent = serde_json::from_slice(&message.payload).expect("LossEvent JSON");
    assert_eq!(
        (
            event.kind,
            event.from_seq,
            event.to_seq,
            event.agent_id.as_str()
        ),
        (LossKind::SeqGap, 12, 14, "gappy")
    );
    let metrics = hub.metrics().render();
    assert_eq!(metric(&metrics, "herd_hub_gap_batches_total"), 3);
    hub.shutdown().await;
}

#[actix::test]
async fn a_record_over_nats_max_payload_is_refused_reported_and_the_connection_flows_on() {
    let (nats, hub) = hub_with(|_| {}).await;
    let mut losses = hub_support::subscribe(&nats, "herd.loss.>").await;
    let mut data = hub_support::subscribe(&nats, "herd.data.>").await;
    let (mut agent, welcome) =
        ScriptedAgent::handshake(hub.listen_addr(), hub_support::hello("big", "secret")).await;
    // nats-server's default max_payload is 1 MiB; the envelope takes some of it.
    let limit = welcome.max_record_bytes as usize;
    assert!(limit > 1_000_000 && limit < 1_048_576, "{limit}");
    assert_eq!(welcome.max_frame_bytes, 4 * 1024 * 1024);
    assert!(welcome.ping_interval_ms > 0 && welcome.ping_misses > 0);

    // 1.5 MiB: a legal frame, but more than NATS takes.
    agent.send(batch(1, 1_572_864)).await;
    expect_ack(&mut agent, 1).await;
    let message = within("the loss event", losses.next()).await.expect("open");
    let event: LossEvent = serde_json::from_slice(&message.payload).expect("LossEvent JSON");
    assert_eq!(
        (event.kind, event.from_seq, event.index),
        (LossKind::Oversize, 1, Some(0))
    );
    assert!(event.bytes.unwrap_or_default() > 1_572_864);

    // The connection keeps flowing.
    agent.send(batch(2, 3)).await;
    expect_ack(&mut agent, 2).await;
    let message = within("the next record", data.next()).await.expect("open");
    assert_eq!(&*message.subject, "herd.data.big.2000");
    let metrics = hub.metrics().render();
    assert_eq!(metric(&metrics, "herd_hub_oversize_records_total"), 1);
    hub.shutdown().await;
}

#[actix::test]
async fn a_batch_with_seq_zero_is_a_protocol_error() {
    let (_nats, hub) = hub_with(|_| {}).await;
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "zero").await;
    agent.send(batch(0, 3)).await;
    let seen = agent.until_closed().await;
    let goodbye = seen.iter().find_map(|kind| match kind {
        Kind::Goodbye(goodbye) => Some(goodbye.clone()),
        _ => None,
    });
    let goodbye = goodbye.expect("a Goodbye before the close");
    assert_eq!(goodbye.reason, CloseReason::ProtocolError as i32);
    assert!(goodbye.message.contains("seq 0"), "{}", goodbye.message);
    assert!(!seen.iter().any(|kind| matches!(kind, Kind::Ack(_))));
    hub.shutdown().await;
}

#[actix::test]
async fn many_pipelined_batches_in_jetstream_mode_are_all_acked() {
    // 8 agents x 16 batches x 500 records in flight at once: more unacked
    // publishes than async-nats allows by default (5,000), whose permits come
    // back only when the hub awaits each ack in turn.
    let (_nats, hub) = hub_with(|config| config.max_in_flight_batches = 16).await;
    let addr = hub.listen_addr();
    let bursts = (0..8).map(|n| async move {
        let mut agent = ScriptedAgent::online(addr, &format!("burst-{n}")).await;
        for seq in 1..=16 {
            let batch = Batch {
                seq,
                records: vec![Record::default(); 500],
            };
            within("feed", agent.try_feed(batch)).await.expect("feed");
        }
        within("flush", agent.try_flush()).await.expect("flush");
        let mut last = 0;
        while last < 16 {
            match agent.expect().await {
                Kind::Ack(ack) => last = ack.seq,
                other => panic!("expected acks, got {other:?}"),
            }
        }
    });
    futures::future::join_all(bursts).await;
    hub.shutdown().await;
}

#[actix::test]
async fn a_record_of_exactly_the_announced_limit_is_published_in_both_data_forms() {
    for form in [herd_hub::DataForm::Record, herd_hub::DataForm::Batch] {
        let (_nats, hub) = hub_with(|config| config.data_form = form).await;
        let (mut agent, welcome) =
            ScriptedAgent::handshake(hub.listen_addr(), hub_support::hello("edge", "secret")).await;
        let limit = welcome.max_record_bytes as usize;
        // The body that makes the encoded record exactly `limit` bytes.
        let body = (limit - 16..limit)
            .rev()
            .find(|body| batch(1, *body).records[0].encoded_len() == limit)
            .expect("a body size for the limit");
        agent.send(batch(1, body)).await;
        expect_ack(&mut agent, 1).await;
        let metrics = hub.metrics().render();
        assert_eq!(
            metric(&metrics, "herd_hub_oversize_records_total"),
            0,
            "{form:?}"
        );
        assert_eq!(
            metric(&metrics, "herd_hub_records_published_total"),
            1,
            "{form:?}"
        );
        hub.shutdown().await;
    }
}
