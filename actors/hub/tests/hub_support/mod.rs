//! Test support for the hub suites: a hub on a real nats-server, and a test
//! agent speaking the wire protocol over a real TCP socket.
#![allow(dead_code, unreachable_pub)] // each suite uses a different part

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herd_codec::proto::hub_message::Kind;
use herd_codec::proto::{AgentMessage, Batch, Hello, HubMessage, Pong, Welcome};
use herd_codec::{AgentCodec, CodecError, PROTOCOL_VERSION};
use herd_hub::{Hub, HubConfig};
use herd_tests::nats::NatsServer;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Upper bound of every wait in the hub suites.
pub const WAIT: Duration = Duration::from_secs(5);

/// Awaits `future`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

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

/// `Hello` for `agent_id` with `token`.
pub fn hello(agent_id: &str, token: &str) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_id: agent_id.into(),
        token: token.into(),
        hostname: format!("host-{agent_id}"),
        version: "0.1.0-test".into(),
        ..Hello::default()
    }
}

/// An agent over a real socket, driven step by step by the test.
#[derive(Debug)]
pub struct TestAgent {
    framed: Framed<TcpStream, AgentCodec>,
    /// Answer pings automatically in [`TestAgent::next`].
    pub answer_pings: bool,
}

impl TestAgent {
    /// Connects to the hub.
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = within("connect", TcpStream::connect(addr))
            .await
            .expect("connects");
        Self {
            framed: Framed::new(stream, AgentCodec::new()),
            answer_pings: true,
        }
    }

    /// Connects and sends `Hello`; returns the agent and the hub's `Welcome`.
    pub async fn handshake(addr: SocketAddr, hello: Hello) -> (Self, Welcome) {
        let mut agent = Self::connect(addr).await;
        agent.send(hello).await;
        let welcome = agent.welcome().await;
        (agent, welcome)
    }

    /// Like [`TestAgent::handshake`] and asserts the hub accepted.
    pub async fn online(addr: SocketAddr, agent_id: &str) -> Self {
        let (agent, welcome) = Self::handshake(addr, hello(agent_id, "secret")).await;
        assert!(welcome.ok, "refused: {}", welcome.message);
        agent
    }

    /// Sends one message.
    pub async fn send(&mut self, message: impl Into<AgentMessage>) {
        within("send", self.framed.send(message.into()))
            .await
            .expect("send");
    }

    /// Sends `batch` and asserts the next frame acks its seq.
    pub async fn send_acked(&mut self, batch: Batch) {
        let seq = batch.seq;
        self.send(batch).await;
        match self.expect().await {
            Kind::Ack(ack) => assert_eq!(ack.seq, seq),
            other => panic!("expected Ack{{{seq}}}, got {other:?}"),
        }
    }

    /// Writes raw bytes on the socket (for garbage and oversize frames).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        within("raw write", self.framed.get_mut().write_all(bytes))
            .await
            .expect("raw write");
    }

    /// The next frame other than `Ping` (answered when `answer_pings`);
    /// `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Result<Kind, CodecError>> {
        loop {
            let frame = within("a frame from the hub", self.framed.next()).await?;
            match frame {
                Ok(HubMessage {
                    kind: Some(Kind::Ping(ping)),
                }) => {
                    if self.answer_pings {
                        self.send(Pong { nonce: ping.nonce }).await;
                    }
                }
                Ok(HubMessage { kind: Some(kind) }) => return Some(Ok(kind)),
                Ok(HubMessage { kind: None }) => {
                    unreachable!("the codec refuses frames without a kind")
                }
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// The next frame, which must be `Welcome`.
    pub async fn welcome(&mut self) -> Welcome {
        match self.next().await {
            Some(Ok(Kind::Welcome(welcome))) => welcome,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// The next non-ping frame, which must exist.
    pub async fn expect(&mut self) -> Kind {
        match self.next().await {
            Some(Ok(kind)) => kind,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Reads until the hub closes the connection; returns what came before.
    pub async fn until_closed(&mut self) -> Vec<Kind> {
        let mut seen = Vec::new();
        while let Some(frame) = self.next().await {
            match frame {
                Ok(kind) => seen.push(kind),
                // A reset after the hub closed counts as closed.
                Err(_) => break,
            }
        }
        seen
    }
}
