//! Test support for the hub suites: a hub on a real nats-server; the agent
//! side is the scripted agent from `herd-tests`.
#![allow(dead_code, unreachable_pub, unused_imports)] // each suite uses a different part

use std::net::SocketAddr;
use std::path::Path;

use futures::StreamExt;
use herd_codec::proto::Hello;
use herd_hub::{Hub, HubConfig};
use herd_tests::nats::NatsServer;
use herd_tls::{AgentKey, EnrolledIdentity, HubTrust};
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

/// Trust in `hub`'s own CA, by its fingerprint.
pub fn trust(hub: &Hub) -> HubTrust {
    HubTrust::Fingerprint(hub.ca_fingerprint().expect("the hub's CA"))
}

/// A TLS connection presenting `identity` (none: not enrolled yet).
pub async fn connect(hub: &Hub, identity: Option<&EnrolledIdentity>) -> ScriptedAgent {
    let config = herd_tls::client_config_with_identity(&trust(hub), identity.map(|i| i.identity()))
        .expect("client config");
    within(
        "the TLS handshake",
        ScriptedAgent::try_connect_tls_with(hub.listen_addr(), config),
    )
    .await
    .expect("the TLS handshake succeeds")
}

/// A Hello asking to enroll as `agent_id` (empty: any id) with `token`.
pub fn enrolling(agent_id: &str, token: &str) -> (Hello, AgentKey) {
    let key = AgentKey::generate().unwrap();
    let hello = Hello {
        csr: key.request().unwrap().into(),
        ..hello(agent_id, token)
    };
    (hello, key)
}

/// Enrolls as `agent_id`; returns the identity and the open session.
pub async fn enroll(hub: &Hub, agent_id: &str, token: &str) -> (EnrolledIdentity, ScriptedAgent) {
    let (hello, key) = enrolling(agent_id, token);
    let (agent, welcome) = within("the Welcome", connect(hub, None).await.try_hello(hello))
        .await
        .expect("a Welcome");
    assert!(welcome.ok, "{}", welcome.message);
    let identity = EnrolledIdentity::new(key, welcome.certificate.to_vec())
        .expect("a certificate for the agent's key");
    assert_eq!(identity.certificate().agent_id, welcome.agent_id);
    if !agent_id.is_empty() {
        assert_eq!(welcome.agent_id, agent_id);
    }
    (identity, agent)
}

/// The Welcome an agent gets for `hello` over a connection with `identity`.
pub async fn welcome_for(
    hub: &Hub,
    identity: Option<&EnrolledIdentity>,
    hello: Hello,
) -> (ScriptedAgent, herd_codec::proto::Welcome) {
    within("the Welcome", connect(hub, identity).await.try_hello(hello))
        .await
        .expect("a Welcome")
}

/// A hub's admin server on a free loopback port, with its state (and so
/// its admin token) in `state_dir`.
pub fn with_admin(config: &mut HubConfig, state_dir: &Path) {
    config.admin = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.state_dir = state_dir.to_owned();
}

/// An HTTP response: the status code, the head's header lines and the body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }
}

/// Sends `request` (HTTP/1.0: the server closes after the response) and
/// reads the response.
async fn http(addr: SocketAddr, request: String) -> HttpResponse {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("response");
        response
    };
    let response = within("an HTTP response", exchange).await;
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.to_owned(), value.trim().to_owned()))
        })
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A plain HTTP/1.0 GET; returns the status code, the content type and the body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let response = http(addr, format!("GET {path} HTTP/1.0\r\nHost: hub\r\n\r\n")).await;
    let content_type = response
        .header("content-type")
        .unwrap_or_default()
        .to_owned();
    (response.status, content_type, response.body)
}

/// A plain HTTP/1.0 POST of `body` as JSON, with `Authorization: Bearer
/// <bearer>` when given.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    body: &serde_json::Value,
) -> HttpResponse {
    let body = body.to_string();
    let authorization = bearer
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    http(
        addr,
        format!(
            "POST {path} HTTP/1.0\r\nHost: hub\r\n{authorization}Content-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

/// The Goodbye the hub sends last before it closes `agent`'s connection.
pub async fn goodbye(agent: &mut ScriptedAgent) -> herd_codec::proto::Goodbye {
    use herd_codec::proto::hub_message::Kind;
    match &within("the Goodbye", agent.until_closed()).await[..] {
        [.., Kind::Goodbye(goodbye)] => goodbye.clone(),
        other => panic!("expected a Goodbye, got {other:?}"),
    }
}
