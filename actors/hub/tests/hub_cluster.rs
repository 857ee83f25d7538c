//! Hubs on a 3-node NATS cluster: the data stream replicated three times
//! keeps every acked record when the node leading it is killed mid-ingest,
//! with the presence bucket replicated too.

mod hub_support;

use std::time::Duration;

use herd_codec::proto::{Batch, Record};
use herd_hub::{AGENTS_BUCKET, AckMode, DataStreamConfig, Hub, HubConfig};
use herd_tests::nats::NatsCluster;
use herd_tests::script::TOKEN;
use hub_support::{ScriptedAgent, within};

/// Batches of this many records.
const RECORDS: usize = 10;

fn batch(seq: u64) -> Batch {
    Batch {
        seq,
        records: (0..RECORDS)
            .map(|index| Record {
                data_type: 2000,
                fields: [("n".to_owned(), format!("{seq}.{index}"))].into(),
                ..Record::default()
            })
            .collect(),
    }
}

/// How long an ack may take while the stream elects a new leader (about
/// 5 s here, once 8.4 s).
const FAILOVER: Duration = Duration::from_secs(30);

#[actix::test]
async fn a_replicated_stream_keeps_every_acked_record_when_its_leader_node_dies() {
    let mut cluster = NatsCluster::start(3).await.expect("a 3-node cluster");
    let mut config = HubConfig::for_tests(cluster.urls());
    config.tokens = vec![TOKEN.into()];
    config.ack_mode = AckMode::Jetstream;
    config.stream = DataStreamConfig {
        replicas: 3,
        ..DataStreamConfig::default()
    };
    config.kv_replicas = 3;
    let hub = within("hub start", Hub::start(config))
        .await
        .expect("hub starts");
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "web-1").await;
    for seq in 1..=20 {
        agent.send_acked(batch(seq)).await;
    }

    let jetstream = async_nats::jetstream::new(cluster.client().await.expect("client"));
    let mut stream = jetstream.get_stream("HERD_DATA").await.expect("the stream");
    let info = stream.info().await.expect("stream info").clone();
    assert_eq!(info.config.num_replicas, 3);
    let leader = info
        .cluster
        .and_then(|cluster| cluster.leader)
        .expect("a stream leader");
    // Presence is replicated too.
    let presence = jetstream
        .get_stream(format!("KV_{AGENTS_BUCKET}"))
        .await
        .expect("the presence bucket")
        .info()
        .await
        .expect("its info")
        .config
        .num_replicas;
    assert_eq!(presence, 3);
    let leader = cluster.index_of(&leader).expect("the leader is a node");
    cluster.node_mut(leader).stop();

    // The hub republishes what was not acked; the agent gets every ack.
    for seq in 21..=40 {
        agent.send(batch(seq)).await;
        let acked = tokio::time::timeout(FAILOVER, agent.expect()).await;
        match acked {
            Ok(herd_codec::proto::hub_message::Kind::Ack(ack)) => assert_eq!(ack.seq, seq),
            other => panic!("batch {seq}: expected its ack, got {other:?}"),
        }
    }
    let stored = tokio::time::timeout(FAILOVER, async {
        loop {
            if let Ok(info) = stream.info().await {
                return info.state.messages;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the stream answers");
    // Resends are stored once (Nats-Msg-Id within the duplicate window).
    assert_eq!(stored, 40 * RECORDS as u64);
    hub.shutdown().await;
}
