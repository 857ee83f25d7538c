//! Records to NATS: subjects, envelopes, headers, order, acks, NATS outages.

mod hub_support;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use herd_codec::proto::hub_message::Kind;
use herd_codec::proto::{Batch, Envelope, EnvelopeBatch, Record};
use herd_hub::{AckMode, DataForm, HEADER_MSG_ID};
use hub_support::{ScriptedAgent, WAIT, hub_with, within};
use prost::Message as _;

fn batch(seq: u64, agent: &str) -> Batch {
    Batch {
        seq,
        records: (0..2)
            .map(|index| Record {
                data_type: 2000 + index,
                timestamp_ms: 1_700_000_000_000,
                source: "test".into(),
                fields: HashMap::from([
                    ("agent".into(), agent.into()),
                    ("seq".into(), seq.to_string()),
                ]),
                body: vec![index as u8; 3].into(),
            })
            .collect(),
    }
}

async fn expect_ack(agent: &mut ScriptedAgent, seq: u64) {
    match agent.expect().await {
        Kind::Ack(ack) => assert_eq!(ack.seq, seq),
        other => panic!("expected Ack{{{seq}}}, got {other:?}"),
    }
}

#[actix::test]
async fn records_of_several_agents_arrive_in_order_as_envelopes_with_only_a_message_id() {
    let (nats, hub) = hub_with(|_| {}).await;
    let mut data = hub_support::subscribe(&nats, "herd.data.>").await;
    let mut agents = Vec::new();
    for id in ["alpha", "beta"] {
        agents.push((id, ScriptedAgent::online(hub.listen_addr(), id).await));
    }
    for seq in 1..=3 {
        for (id, agent) in &mut agents {
            agent.send(batch(seq, id)).await;
        }
    }
    for (_, agent) in &mut agents {
        for seq in 1..=3 {
            expect_ack(agent, seq).await;
        }
    }
    let mut seen: HashMap<String, Vec<(u64, u32)>> = HashMap::new();
    for _ in 0..12 {
        let message = within("a data message", data.next())
            .await
            .expect("subscription open");
        let envelope = Envelope::decode(message.payload).expect("an Envelope");
        let record = envelope.record.expect("record");
        assert_eq!(
            message.subject.as_str(),
            format!("herd.data.{}.{}", envelope.agent_id, record.data_type)
        );
        assert_eq!(record.fields["agent"], envelope.agent_id);
        assert_eq!(envelope.hostname, format!("host-{}", envelope.agent_id));
        assert_eq!(envelope.hub_id, hub.hub_id());
        // JetStream mode (the default): the dedupe id is the only header.
        let headers = message.headers.expect("headers");
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert_eq!(
            headers.get(HEADER_MSG_ID).map(|v| v.as_str().to_owned()),
            Some(format!(
                "{}.{}.{}",
                envelope.agent_id, envelope.seq, envelope.index
            ))
        );
        seen.entry(envelope.agent_id)
            .or_default()
            .push((envelope.seq, envelope.index));
    }
    let in_order: Vec<(u64, u32)> = (1..=3).flat_map(|seq| [(seq, 0), (seq, 1)]).collect();
    assert_eq!(seen["alpha"], in_order);
    assert_eq!(seen["beta"], in_order);
    hub.shutdown().await;
}

#[actix::test]
async fn in_flush_mode_records_carry_no_headers_and_the_envelope_says_who_and_which() {
    let (nats, hub) = hub_with(|config| config.ack_mode = AckMode::Flush).await;
    let mut data = hub_support::subscribe(&nats, "herd.data.>").await;
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "plain").await;
    agent.send(batch(1, "plain")).await;
    expect_ack(&mut agent, 1).await;
    for index in 0..2 {
        let message = within("a data message", data.next())
            .await
            .expect("subscription open");
        assert!(message.headers.is_none(), "{:?}", message.headers);
        let envelope = Envelope::decode(message.payload).expect("an Envelope");
        assert_eq!(
            (envelope.agent_id.as_str(), envelope.seq, envelope.index),
            ("plain", 1, index)
        );
        assert_eq!(
            envelope.record,
            Some(batch(1, "plain").records[index as usize].clone())
        );
    }
    hub.shutdown().await;
}

#[actix::test]
async fn nats_restart_mid_stream_loses_no_acked_record_and_stops_reading_meanwhile() {
    let (mut nats, hub) = hub_with(|config| {
        config.ack_mode = AckMode::Jetstream;
        config.max_in_flight_batches = 2;
        config.publish_timeout_ms = 500;
    })
    .await;
    // The hub created its data stream (HERD_DATA) at start.
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "steady").await;
    for seq in 1..=3 {
        agent.send(batch(seq, "steady")).await;
        expect_ack(&mut agent, seq).await;
    }

    nats.stop();
    for seq in 4..=7 {
        agent.send(batch(seq, "steady")).await;
    }
    // No ack while NATS is down, and only the in-flight bound (2 batches) is read.
    let early = tokio::time::timeout(Duration::from_millis(500), agent.next()).await;
    assert!(early.is_err(), "got {early:?} while NATS was down");
    assert!(
        hub.metrics()
            .render()
            .contains("herd_hub_records_in_total 10\n"),
        "hub read past its in-flight bound:\n{}",
        hub.metrics().render()
    );

    within("nats restart", nats.restart())
        .await
        .expect("restart");
    for seq in 4..=7 {
        tokio::time::timeout(WAIT * 2, expect_ack(&mut agent, seq))
            .await
            .expect("acks after the restart");
    }
    // Every acked record is stored once (duplicates dropped by Nats-Msg-Id).
    let client = nats.client().await.expect("client");
    let mut stream = async_nats::jetstream::new(client)
        .get_stream("HERD_DATA")
        .await
        .expect("stream");
    let info = within("stream info", stream.info()).await.expect("info");
    assert_eq!(info.state.messages, 14, "7 batches of 2 records");
    hub.shutdown().await;
}

/// One grouped message from `herd.batch.>`: its subject, `Nats-Msg-Id` and
/// decoded `EnvelopeBatch`.
async fn next_group(data: &mut async_nats::Subscriber) -> (String, Option<String>, EnvelopeBatch) {
    let message = within("a grouped message", data.next())
        .await
        .expect("subscription open");
    let id = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(HEADER_MSG_ID))
        .map(|id| id.as_str().to_owned());
    let group = EnvelopeBatch::decode(message.payload).expect("an EnvelopeBatch");
    (message.subject.to_string(), id, group)
}

#[actix::test]
async fn grouped_form_publishes_one_message_per_batch_and_data_type_into_the_stream() {
    let (nats, hub) = hub_with(|config| config.data_form = DataForm::Batch).await;
    let mut data = hub_support::subscribe(&nats, "herd.batch.>").await;
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "grouper").await;
    let mut records = batch(1, "grouper").records;
    records.push(Record {
        data_type: 2000,
        source: "third".into(),
        ..Record::default()
    });
    // Types in the batch: 2000, 2001, 2000.
    agent
        .send(Batch {
            seq: 1,
            records: records.clone(),
        })
        .await;
    // Acked after the PubAcks: the stream stores `herd.batch.>` too.
    expect_ack(&mut agent, 1).await;

    let (subject, id, first) = next_group(&mut data).await;
    assert_eq!(subject, "herd.batch.grouper.2000");
    assert_eq!(id.as_deref(), Some("grouper.1.0.g"));
    assert_eq!(
        (first.agent_id.as_str(), first.seq, first.hub_id.as_str()),
        ("grouper", 1, hub.hub_id())
    );
    assert_eq!(first.hostname, "host-grouper");
    assert_eq!(first.index, vec![0, 2]);
    assert_eq!(first.records, vec![records[0].clone(), records[2].clone()]);

    let (subject, id, second) = next_group(&mut data).await;
    assert_eq!(subject, "herd.batch.grouper.2001");
    assert_eq!(id.as_deref(), Some("grouper.1.1.g"));
    assert_eq!(second.index, vec![1]);
    assert_eq!(second.records, vec![records[1].clone()]);
    assert_eq!(second.received_at_ms, first.received_at_ms);

    let client = nats.client().await.expect("client");
    let mut stream = async_nats::jetstream::new(client)
        .get_stream("HERD_DATA")
        .await
        .expect("the hub's data stream");
    let info = stream.info().await.expect("stream info");
    // The two groups, and the probe that proved the subscription live.
    assert_eq!(info.state.messages, 3);
    assert!(info.config.subjects.contains(&"herd.batch.>".to_owned()));
    hub.shutdown().await;
}

#[actix::test]
async fn a_group_over_max_payload_is_split_and_nothing_is_lost() {
    let (nats, hub) = hub_with(|config| {
        config.data_form = DataForm::Batch;
        config.ack_mode = AckMode::Flush;
    })
    .await;
    let mut data = hub_support::subscribe(&nats, "herd.batch.>").await;
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "bulky").await;
    // Three 400 KB records of one type: 1.2 MB, over NATS' 1 MiB max_payload.
    let records: Vec<Record> = (0..3u8)
        .map(|n| Record {
            data_type: 2000,
            body: vec![n; 400_000].into(),
            ..Record::default()
        })
        .collect();
    agent
        .send(Batch {
            seq: 1,
            records: records.clone(),
        })
        .await;
    expect_ack(&mut agent, 1).await;
    let (_, id, first) = next_group(&mut data).await;
    let (_, _, second) = next_group(&mut data).await;
    assert_eq!(id, None, "flush mode sets no header");
    assert_eq!((first.index, second.index), (vec![0, 1], vec![2]));
    let mut received = first.records;
    received.extend(second.records);
    assert_eq!(received, records);
    let metrics = hub.metrics().render();
    assert!(
        metrics.contains("herd_hub_oversize_records_total 0\n"),
        "{metrics}"
    );
    hub.shutdown().await;
}
