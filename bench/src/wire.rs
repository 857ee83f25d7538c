//! Both ends of the agent protocol as the bench needs them: idle simulated
//! agents (the ingest load lives in `ingest_roles`), records and envelopes,
//! and the baseline server (a plain tokio accept loop that forwards batches
//! to NATS, no actors).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use herd_codec::HubCodec;
use herd_codec::proto::{
    Ack, AgentMessage, Envelope, Hello, HubMessage, Record, Welcome, agent_message, hub_message,
};
use herd_tests::script::{self, ScriptedAgent};
use herd_tls::rustls::ClientConfig;
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::codec::Framed;

use crate::error::{BenchError, within};

/// Token the hub is started with and every simulated agent presents.
pub(crate) const TOKEN: &str = "bench-secret";
/// Data type of the simulated records (sysmetrics cpu).
pub(crate) const DATA_TYPE: u32 = 2001;
/// Bound of one connect + handshake.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(20);

/// A connected, welcomed agent: the one scripted agent of the test harness.
pub(crate) type AgentSocket = ScriptedAgent;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// One simulated record, the size of a small sysmetrics sample.
pub(crate) fn record(n: u64) -> Record {
    Record {
        data_type: DATA_TYPE,
        timestamp_ms: now_ms(),
        source: "bench".into(),
        fields: HashMap::from([
            ("usage_percent".into(), format!("{}", n % 100)),
            ("cores".into(), "2".into()),
            ("n".into(), n.to_string()),
        ]),
        body: Default::default(),
    }
}

/// The envelope the hub (or a direct publisher) puts on NATS for `record`.
pub(crate) fn envelope(
    agent_id: &str,
    hub_id: &str,
    seq: u64,
    index: u32,
    record: Record,
) -> Envelope {
    Envelope {
        agent_id: agent_id.into(),
        hostname: format!("host-{agent_id}"),
        agent_version: "bench".into(),
        received_at_ms: now_ms(),
        seq,
        index,
        record: Some(record),
        hub_id: hub_id.into(),
        ..Envelope::default()
    }
}

/// Connects to `addr`, sends `Hello` as `agent_id` and waits for an accepting
/// `Welcome` (answering pings meanwhile), over TLS with `tls`, else plaintext.
pub(crate) async fn handshake(
    addr: SocketAddr,
    agent_id: &str,
    tls: Option<Arc<ClientConfig>>,
) -> Result<AgentSocket, BenchError> {
    let hello = Hello {
        version: "bench".into(),
        ..script::hello(agent_id, TOKEN)
    };
    let online = async {
        let agent = match tls {
            Some(config) => ScriptedAgent::try_connect_tls_with(addr, config).await?,
            None => ScriptedAgent::try_connect(addr).await?,
        };
        match agent.try_hello(hello).await? {
            (agent, welcome) if welcome.ok => Ok(agent),
            (_, welcome) => Err(script::ScriptError::Refused(welcome.message)),
        }
    };
    within("connect + handshake", HANDSHAKE_WAIT, online)
        .await?
        .map_err(|error| BenchError::Protocol(format!("{agent_id}: {error}")))
}

/// The next frame other than `Ping` (which is answered).
async fn next(socket: &mut AgentSocket) -> Result<hub_message::Kind, BenchError> {
    match socket.read().await {
        Some(Ok(kind)) => Ok(kind),
        Some(Err(error)) => Err(BenchError::Protocol(format!("reading: {error}"))),
        None => Err(BenchError::Protocol(
            "the server closed the connection".into(),
        )),
    }
}

/// Counts agents welcomed (again) and wakes whoever waits for a total.
#[derive(Debug, Default)]
pub(crate) struct Welcomes {
    count: AtomicU64,
    changed: Notify,
}

impl Welcomes {
    /// Waits until `total` welcomes were counted, at most `after`.
    pub(crate) async fn reach(&self, total: u64, after: Duration) -> Result<(), BenchError> {
        within(&format!("{total} welcomes"), after, async {
            loop {
                let changed = self.changed.notified();
                if self.count.load(Ordering::Relaxed) >= total {
                    return;
                }
                changed.await;
            }
        })
        .await
        .map_err(|error| {
            BenchError::Protocol(format!(
                "{error} (got {})",
                self.count.load(Ordering::Relaxed)
            ))
        })
    }
}

/// An idle agent: connects (at most `gate` handshakes at once, like agents
/// spread over time), answers pings, and after losing the connection
/// reconnects every `retry`, counting each welcome in `welcomes`.
pub(crate) async fn idle_agent(
    addr: SocketAddr,
    agent_id: String,
    tls: Option<Arc<ClientConfig>>,
    gate: Arc<Semaphore>,
    welcomes: Arc<Welcomes>,
    retry: Duration,
) {
    loop {
        let socket = {
            let Ok(_permit) = gate.acquire().await else {
                return;
            };
            handshake(addr, &agent_id, tls.clone()).await
        };
        if let Ok(mut socket) = socket {
            welcomes.count.fetch_add(1, Ordering::Relaxed);
            welcomes.changed.notify_waiters();
            while next(&mut socket).await.is_ok() {}
        }
        tokio::time::sleep(retry).await;
    }
}

/// A listener with the hub's default backlog: `TcpListener::bind` asks for
/// 128, and a shorter queue would measure dropped SYNs rather than servers.
fn listen_like_the_hub(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(herd_hub::HubConfig::default().listen_backlog)
}

/// The baseline server: accepts agents, welcomes them, decodes each `Batch`
/// and publishes each of its records as an `Envelope` (no NATS headers, as
/// the hub publishes with `ack_mode = "flush"`), flushes, acks. No actors,
/// no supervision, no presence, no pings.
pub(crate) async fn serve_baseline(listen: SocketAddr, nats_url: &str) -> Result<(), BenchError> {
    let client = async_nats::connect(nats_url)
        .await
        .map_err(BenchError::nats("connect"))?;
    let listener =
        listen_like_the_hub(listen).map_err(BenchError::io(format!("binding {listen}")))?;
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .map_err(BenchError::io("accepting"))?;
        let client = client.clone();
        // A connection's failure ends that connection only.
        tokio::spawn(async move { forward(stream, client).await });
    }
}

async fn forward(stream: TcpStream, client: async_nats::Client) -> Result<(), BenchError> {
    stream
        .set_nodelay(true)
        .map_err(BenchError::io("setting TCP_NODELAY"))?;
    let mut socket = Framed::new(stream, HubCodec::new());
    let hello = match socket.next().await {
        Some(Ok(AgentMessage {
            kind: Some(agent_message::Kind::Hello(hello)),
        })) => hello,
        other => {
            return Err(BenchError::Protocol(format!(
                "expected Hello, got {other:?}"
            )));
        }
    };
    let welcome = Welcome {
        ok: true,
        agent_id: hello.agent_id.clone(),
        heartbeat_interval_secs: 30,
        hub_id: "baseline".into(),
        ..Welcome::default()
    };
    let reply = |error: herd_codec::CodecError| {
        BenchError::Protocol(format!("writing to the agent: {error}"))
    };
    socket
        .send(HubMessage::from(welcome))
        .await
        .map_err(reply)?;
    while let Some(Ok(message)) = socket.next().await {
        let Some(agent_message::Kind::Batch(batch)) = message.kind else {
            continue;
        };
        for (index, record) in batch.records.into_iter().enumerate() {
            let subject = format!("herd.data.{}.{}", hello.agent_id, record.data_type);
            let envelope = envelope(&hello.agent_id, "baseline", batch.seq, index as u32, record);
            client
                .publish(subject, envelope.encode_to_vec().into())
                .await
                .map_err(BenchError::nats("publish"))?;
        }
        client.flush().await.map_err(BenchError::nats("flush"))?;
        socket
            .send(HubMessage::from(Ack { seq: batch.seq }))
            .await
            .map_err(reply)?;
    }
    Ok(())
}
