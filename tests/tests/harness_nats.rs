//! The harness's nats-server: starts, serves, survives a restart with its store.

use std::time::Duration;

use futures::StreamExt;
use herd_tests::nats::NatsServer;
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
