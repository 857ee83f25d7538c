//! Test support for the hub suites: a hub on a real nats-server; the agent
//! side is the scripted agent from `herd-tests`.
#![allow(dead_code, unreachable_pub, unused_imports)] // each suite uses a different part

use std::net::SocketAddr;

use futures::StreamExt;
use herd_hub::{Hub, HubConfig};
use herd_tests::nats::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use herd_tests::script::{WAIT, poll_until, within};

/// A nats-server and a hub using it with test intervals; `tweak` adjusts the config.
pub async fn hub_with(tweak: impl FnOnce(&mut HubConfig)) -> (NatsServer, Hub) {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let mut config = HubConfig::for_tests(nats.url());
    config.tokens = vec!["secret".into()];
    tweak(&mut config);
    let hub = within("hub start", Hub::start(config))
        .await
        .expect("hub starts");
    (nats, hub)
}

/// A subscription on `subject`, live in the server before it returns.
///
/// A flush only puts the SUB on the wire; the server may still process a
/// hub publish from its own connection first. A probe published on this
/// connection and received back proves the subscription is in place.
pub async fn subscribe(nats: &NatsServer, subject: &str) -> async_nats::Subscriber {
    let client = nats.client().await.expect("client");
    let mut subscriber = client
        .subscribe(subject.to_owned())
        .await
        .expect("subscribe");
    let probe: String = subject
        .split('.')
        .map(|token| {
            if token == "*" || token == ">" {
                "probe"
            } else {
                token
            }
        })
        .collect::<Vec<_>>()
        .join(".");
    client.publish(probe, "probe".into()).await.expect("probe");
    let echoed = within("the subscription probe", subscriber.next())
        .await
        .expect("open");
    assert_eq!(&echoed.payload[..], b"probe");
    subscriber
}

pub use herd_tests::script::{ScriptedAgent, hello};

/// A plain HTTP/1.0 GET; returns the status code, the content type and the body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: hub\r\n\r\n").as_bytes())
            .await
            .expect("request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("response");
        response
    };
    let response = within("an HTTP response", exchange).await;
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status");
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}
