//! The harness's nats-server: starts, serves, survives a restart with its store;
//! and the harness's 3-node cluster: forms, keeps an R3 stream acking with a
//! node killed, takes the node back.

use std::time::Duration;

use futures::StreamExt;
use herd_tests::nats::{HarnessError, NatsCluster, NatsServer};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn publish_reaches_a_subscriber() {
    let nats = timeout(LIMIT, NatsServer::start()).await.unwrap().unwrap();
    let client = nats.client().await.unwrap();
    let mut sub = client.subscribe("herd.test").await.unwrap();
    client.publish("herd.test", "hi".into()).await.unwrap();
    client.flush().await.unwrap();
    let msg = timeout(LIMIT, sub.next()).await.unwrap().unwrap();
    assert_eq!(&msg.payload[..], b"hi");
    assert!(nats.url().ends_with(&nats.port().to_string()));
}

#[tokio::test]
async fn two_servers_get_different_ports() {
    let (a, b) = tokio::join!(NatsServer::start(), NatsServer::start());
    assert_ne!(a.unwrap().port(), b.unwrap().port());
}

#[tokio::test]
async fn restart_keeps_port_and_jetstream_store() {
    let mut nats = timeout(LIMIT, NatsServer::start()).await.unwrap().unwrap();
    let port = nats.port();
    {
        let js = async_nats::jetstream::new(nats.client().await.unwrap());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "KEEP".into(),
            subjects: vec!["keep.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        js.publish("keep.one", "1".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    nats.stop();
    assert!(!nats.is_running());
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "a stopped server refuses connections"
    );

    timeout(LIMIT, nats.restart()).await.unwrap().unwrap();
    assert_eq!(nats.port(), port);
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let mut stream = js.get_stream("KEEP").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

/// Forming a cluster: routes retried about every second, then a meta-leader
/// election; bounded well above what it takes on a loaded machine.
const FORM_LIMIT: Duration = Duration::from_secs(40);

#[tokio::test]
async fn cluster_of_three_forms() {
    let started = std::time::Instant::now();
    let cluster = timeout(FORM_LIMIT, NatsCluster::start(3))
        .await
        .unwrap()
        .unwrap();
    eprintln!("3 nodes formed in {:?}", started.elapsed());
    let urls = cluster.urls();
    assert_eq!(urls.split(',').count(), 3, "{urls}");
    for (i, node) in cluster.nodes().iter().enumerate() {
        assert!(urls.contains(&node.url()), "{urls} lacks node {i}");
        assert_eq!(node.server_name(), Some(format!("herd-test-{i}").as_str()));
        assert_eq!(cluster.index_of(&format!("herd-test-{i}")), Some(i));
    }
    // A message crosses the routes: published on one node, received on another.
    let subscriber = cluster.node(0).client().await.unwrap();
    let mut sub = subscriber.subscribe("herd.test").await.unwrap();
    subscriber.flush().await.unwrap();
    let publisher = cluster.node(2).client().await.unwrap();
    // Interest crosses the route asynchronously: publish until it arrives.
    let received = timeout(LIMIT, async {
        loop {
            publisher.publish("herd.test", "hi".into()).await.unwrap();
            publisher.flush().await.unwrap();
            if let Ok(Some(msg)) = timeout(Duration::from_millis(200), sub.next()).await {
                break msg;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&received.payload[..], b"hi");
}

/// How long publishing may go unacked after a stream's leader dies: 2.9's
/// RAFT waits a randomized election timeout (seconds, up to about 9) before a
/// follower stands, and the meta group may have to elect too.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn cluster_without_a_majority_is_not_waited_for() {
    let mut cluster = timeout(FORM_LIMIT, NatsCluster::start(3))
        .await
        .unwrap()
        .unwrap();
    cluster.node_mut(0).stop();
    cluster.node_mut(1).stop();
    let error = timeout(LIMIT, cluster.wait_formed(FORM_LIMIT))
        .await
        .expect("no quorum is reported at once")
        .unwrap_err();
    assert!(
        matches!(error, HarnessError::NoQuorum { up: 1, nodes: 3 }),
        "{error}"
    );
}

/// Publishes until JetStream acks (a failover needs a new leader first), and
/// returns the stream sequence of the acked message.
async fn publish_acked(js: &async_nats::jetstream::Context, payload: String) -> u64 {
    let mut failures = 0;
    let mut last_error = String::new();
    let sequence = timeout(FAILOVER_LIMIT, async {
        loop {
            // Without a stream leader nobody answers: "no stream found for
            // given subject" (no responders) or an ack timeout.
            match js.publish("rep.one", payload.clone().into()).await {
                Ok(ack) => match ack.await {
                    Ok(ack) => break ack.sequence,
                    Err(error) => last_error = error.to_string(),
                },
                Err(error) => last_error = error.to_string(),
            }
            failures += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{payload} not acked within {FAILOVER_LIMIT:?}: {last_error}"));
    if failures > 0 {
        eprintln!("{payload}: acked after {failures} failed tries, the last: {last_error}");
    }
    sequence
}

#[tokio::test]
async fn replicated_stream_survives_losing_its_leader_node() {
    let mut cluster = timeout(FORM_LIMIT, NatsCluster::start(3))
        .await
        .unwrap()
        .unwrap();
    let js = async_nats::jetstream::new(cluster.client().await.unwrap());
    let mut stream = timeout(
        LIMIT,
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "REP".into(),
            subjects: vec!["rep.>".into()],
            num_replicas: 3,
            ..Default::default()
        }),
    )
    .await
    .unwrap()
    .unwrap();
    let mut acked = vec![(
        publish_acked(&js, "before".into()).await,
        "before".to_owned(),
    )];

    // Kill the node that leads the stream: the hardest loss, it needs an
    // election among the other two before anything is acked again.
    let info = stream.info().await.unwrap();
    let cluster_info = info
        .cluster
        .clone()
        .expect("an R3 stream reports its cluster");
    assert_eq!(cluster_info.replicas.len(), 2, "{cluster_info:?}");
    let leader = cluster_info.leader.expect("the stream has a leader");
    let killed = cluster.index_of(&leader).expect("the leader is a node");
    cluster.node_mut(killed).stop();
    assert!(!cluster.node_mut(killed).is_running());

    let outage = std::time::Instant::now();
    for i in 0..5 {
        let payload = format!("during-{i}");
        acked.push((publish_acked(&js, payload.clone()).await, payload));
        if i == 0 {
            eprintln!("first ack with a node down after {:?}", outage.elapsed());
        }
    }

    // The two left are a cluster of their own: a quorum with a meta leader.
    cluster.wait_formed(FORM_LIMIT).await.unwrap();
    eprintln!("2 of 3 formed {:?} after the kill", outage.elapsed());

    // Every acked message is there, read through a node that stayed up.
    let survivor = (0..3).find(|&i| i != killed).unwrap();
    let js_survivor = async_nats::jetstream::new(cluster.node(survivor).client().await.unwrap());
    let stream_survivor = js_survivor.get_stream("REP").await.unwrap();
    for (sequence, payload) in &acked {
        let message = timeout(LIMIT, stream_survivor.get_raw_message(*sequence))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            &message.payload[..],
            payload.as_bytes(),
            "sequence {sequence}"
        );
    }
    let new_leader = stream.info().await.unwrap().cluster.clone().unwrap().leader;
    assert_ne!(new_leader.as_deref(), Some(leader.as_str()));

    // The killed node comes back on its port and store and rejoins.
    let rejoin = std::time::Instant::now();
    timeout(LIMIT, cluster.node_mut(killed).restart())
        .await
        .unwrap()
        .unwrap();
    cluster.wait_formed(FORM_LIMIT).await.unwrap();
    eprintln!("{leader} rejoined in {:?}", rejoin.elapsed());
    // Its replica of the stream catches up: all replicas current again.
    let returned = cluster.node(killed).server_name().unwrap().to_owned();
    timeout(LIMIT, async {
        loop {
            let info = stream.info().await.unwrap().cluster.clone().unwrap();
            let all_in = info.leader.as_deref() == Some(&returned)
                || info
                    .replicas
                    .iter()
                    .any(|peer| peer.name == returned && peer.current && !peer.offline);
            if all_in && info.replicas.iter().all(|peer| peer.current) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the restarted node's replica catches up");
    eprintln!("its replica current after {:?}", rejoin.elapsed());
    let after = publish_acked(&js, "after".into()).await;
    assert!(after > acked.last().unwrap().0);
}
