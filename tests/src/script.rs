//! The one scripted fake of each end of the agent protocol, on real sockets:
//! [`ScriptedAgent`] (a test drives it frame by frame, or lets it serve
//! tasks in the background with [`ScriptedAgent::serve_echo`]) and
//! [`ScriptedHub`] (welcomes agents, acks batches, forwards commands, reports
//! everything it saw). The hub, agent, bench and examples suites all use
//! these two.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herd_codec::proto::hub_message::Kind;
use herd_codec::proto::{
    Ack, AgentMessage, Batch, Command, ConfigSet, Hello, HubMessage, PluginConfig, Pong, Record,
    Task, TaskResult, TaskStatus, Welcome, agent_message,
};
use herd_codec::{AgentCodec, CodecError, HubCodec, PROTOCOL_VERSION};
use herd_tls::HubTrust;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::Framed;

/// Upper bound of every wait of the panicking (test) methods.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// Polls `condition` every 20 ms until it holds, failing the test after
/// [`WAIT`]; for state that announces no event (a process appearing in
/// /proc, a file a plugin rewrites, bytes on disk).
pub async fn poll_until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Why a scripted exchange failed (the fallible methods, for the bench).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScriptError {
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame could not be encoded or decoded.
    #[error("protocol error: {0}")]
    Codec(#[from] CodecError),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// The hub answered `Hello` with a refusal.
    #[error("refused: {0}")]
    Refused(String),
    /// A frame came that the script did not expect.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What the script waited for.
        expected: &'static str,
        /// What came instead.
        got: String,
    },
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

/// The token [`ScriptedAgent::online`] presents.
pub const TOKEN: &str = "secret";

/// The bytes of a scripted connection: a plain socket or a TLS session.
pub trait AgentIo: AsyncRead + AsyncWrite + Send + Unpin + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + std::fmt::Debug> AgentIo for T {}

/// An agent over a real socket, driven step by step.
#[derive(Debug)]
pub struct ScriptedAgent {
    framed: Framed<Box<dyn AgentIo>, AgentCodec>,
    /// Answer pings automatically while reading.
    pub answer_pings: bool,
}

impl ScriptedAgent {
    /// Connects to the hub at `addr` (no delay on the socket).
    pub async fn try_connect(addr: SocketAddr) -> Result<Self, ScriptError> {
        Self::adopt(TcpStream::connect(addr).await?)
    }

    fn adopt(stream: TcpStream) -> Result<Self, ScriptError> {
        stream.set_nodelay(true)?;
        Ok(Self::over(Box::new(stream)))
    }

    /// Connects to the hub at `addr` over TLS, trusting it by `trust` and
    /// checking its certificate against the address's IP.
    pub async fn try_connect_tls(addr: SocketAddr, trust: &HubTrust) -> Result<Self, ScriptError> {
        let config = herd_tls::client_config(trust).map_err(std::io::Error::other)?;
        Self::try_connect_tls_with(addr, config).await
    }

    /// Like [`try_connect_tls`](Self::try_connect_tls) with a client
    /// configuration built once for many connections.
    pub async fn try_connect_tls_with(
        addr: SocketAddr,
        config: Arc<herd_tls::rustls::ClientConfig>,
    ) -> Result<Self, ScriptError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let name = herd_tls::server_name(&addr.to_string()).map_err(std::io::Error::other)?;
        let session = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await?;
        Ok(Self::over(Box::new(session)))
    }

    fn over(io: Box<dyn AgentIo>) -> Self {
        Self {
            framed: Framed::new(io, AgentCodec::new()),
            answer_pings: true,
        }
    }

    /// Like [`online`](Self::online), with the socket's receive buffer set to
    /// `bytes` before connecting, so the window stays small: once the agent
    /// stops reading, the hub's writes stall after a few KiB.
    pub async fn online_with_receive_buffer(addr: SocketAddr, agent_id: &str, bytes: u32) -> Self {
        let connect = async {
            let socket = match addr {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.set_recv_buffer_size(bytes)?;
            Self::adopt(socket.connect(addr).await?)
        };
        let mut agent: Self = within("connect", connect).await.expect("connects");
        agent.send(hello(agent_id, TOKEN)).await;
        let welcome = agent.welcome().await;
        assert!(welcome.ok, "refused: {}", welcome.message);
        agent
    }

    /// Connects, sends `hello` and returns the hub's `Welcome`, whatever it says.
    pub async fn try_handshake(
        addr: SocketAddr,
        hello: Hello,
    ) -> Result<(Self, Welcome), ScriptError> {
        Self::try_connect(addr).await?.try_hello(hello).await
    }

    /// Sends `hello` on this connection and returns the hub's `Welcome`,
    /// whatever it says.
    pub async fn try_hello(self, hello: Hello) -> Result<(Self, Welcome), ScriptError> {
        let mut agent = self;
        agent.try_send(hello).await?;
        match agent.read().await {
            Some(Ok(Kind::Welcome(welcome))) => Ok((agent, welcome)),
            Some(Ok(other)) => Err(ScriptError::Unexpected {
                expected: "Welcome",
                got: format!("{other:?}"),
            }),
            Some(Err(error)) => Err(error.into()),
            None => Err(ScriptError::Closed),
        }
    }

    /// Like [`try_handshake`](Self::try_handshake), and a refusal is an error.
    pub async fn try_online(addr: SocketAddr, hello: Hello) -> Result<Self, ScriptError> {
        match Self::try_handshake(addr, hello).await? {
            (agent, welcome) if welcome.ok => Ok(agent),
            (_, welcome) => Err(ScriptError::Refused(welcome.message)),
        }
    }

    /// Sends one message.
    pub async fn try_send(&mut self, message: impl Into<AgentMessage>) -> Result<(), ScriptError> {
        Ok(self.framed.send(message.into()).await?)
    }

    /// Queues one message without flushing (pipelining).
    pub async fn try_feed(&mut self, message: impl Into<AgentMessage>) -> Result<(), ScriptError> {
        Ok(self.framed.feed(message.into()).await?)
    }

    /// Flushes what was fed.
    pub async fn try_flush(&mut self) -> Result<(), ScriptError> {
        Ok(SinkExt::<AgentMessage>::flush(&mut self.framed).await?)
    }

    /// The next frame other than `Ping` (answered when `answer_pings`),
    /// without a time bound; `None` at the end of the stream.
    pub async fn read(&mut self) -> Option<Result<Kind, CodecError>> {
        loop {
            match self.framed.next().await? {
                Ok(HubMessage {
                    kind: Some(Kind::Ping(ping)),
                }) => {
                    if self.answer_pings
                        && let Err(error) = self
                            .framed
                            .send(AgentMessage::from(Pong { nonce: ping.nonce }))
                            .await
                    {
                        return Some(Err(error));
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

    /// Connects to the hub.
    pub async fn connect(addr: SocketAddr) -> Self {
        within("connect", Self::try_connect(addr))
            .await
            .expect("connects")
    }

    /// Connects and sends `Hello`; returns the agent and the hub's `Welcome`.
    pub async fn handshake(addr: SocketAddr, hello: Hello) -> (Self, Welcome) {
        within("the handshake", Self::try_handshake(addr, hello))
            .await
            .expect("handshake")
    }

    /// Connects as `agent_id` with [`TOKEN`] and asserts the hub accepted.
    pub async fn online(addr: SocketAddr, agent_id: &str) -> Self {
        let (agent, welcome) = Self::handshake(addr, hello(agent_id, TOKEN)).await;
        assert!(welcome.ok, "refused: {}", welcome.message);
        agent
    }

    /// Sends one message.
    pub async fn send(&mut self, message: impl Into<AgentMessage>) {
        within("send", self.try_send(message)).await.expect("send");
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

    /// The next frame other than `Ping`, within [`WAIT`]; `None` at the end
    /// of the stream.
    pub async fn next(&mut self) -> Option<Result<Kind, CodecError>> {
        within("a frame from the hub", self.read()).await
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

    /// Serves the connection in the background until the hub closes it:
    /// answers pings, echoes every task back (`OK`, output = the task's body,
    /// fields = the task's fields), and hands acks and configuration pushes
    /// to the returned [`EchoAgent`].
    pub fn serve_echo(mut self) -> EchoAgent {
        let (configs_in, configs) = mpsc::unbounded_channel();
        let (acks_in, acks) = mpsc::unbounded_channel();
        let (outbox, mut outgoing) = mpsc::unbounded_channel::<AgentMessage>();
        tokio::spawn(async move {
            loop {
                let reply: AgentMessage = tokio::select! {
                    Some(message) = outgoing.recv() => message,
                    frame = self.read() => match frame {
                        Some(Ok(Kind::Ack(ack))) => {
                            let _ = acks_in.send(ack.seq);
                            continue;
                        }
                        Some(Ok(Kind::Command(command))) => {
                            if let Some(config) = command.config {
                                let _ = configs_in.send(config);
                            }
                            let Some(task) = command.task else { continue };
                            echo(task).into()
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => break,
                    },
                };
                if self.try_send(reply).await.is_err() {
                    break;
                }
            }
        });
        EchoAgent {
            configs,
            acks,
            outbox,
            seq: 0,
        }
    }
}

fn echo(task: Task) -> TaskResult {
    TaskResult {
        task_id: task.id,
        status: TaskStatus::Ok as i32,
        output: task.body,
        source: task.target,
        fields: task.fields,
        ..TaskResult::default()
    }
}

/// A [`ScriptedAgent`] serving its connection in the background.
#[derive(Debug)]
pub struct EchoAgent {
    /// Configuration pushes, in order.
    pub configs: mpsc::UnboundedReceiver<ConfigSet>,
    acks: mpsc::UnboundedReceiver<u64>,
    outbox: mpsc::UnboundedSender<AgentMessage>,
    seq: u64,
}

impl EchoAgent {
    /// Sends one batch of `records` and waits until the hub acked it.
    pub async fn send_batch(&mut self, records: Vec<Record>) {
        self.seq += 1;
        let seq = self.seq;
        self.outbox
            .send(Batch { seq, records }.into())
            .expect("connection open");
        within("the ack", async {
            while let Some(acked) = self.acks.recv().await {
                if acked >= seq {
                    return;
                }
            }
            panic!("connection closed before the ack of batch {seq}");
        })
        .await;
    }
}

/// What the in-test hub saw.
#[derive(Debug, Clone)]
pub enum HubEvent {
    /// An agent's `Hello`.
    Hello(Box<Hello>),
    /// A batch, as it came.
    Batch(Batch),
    /// Each record of a batch, after its `Batch` event.
    Record(Record),
    /// A task result.
    TaskResult(TaskResult),
    /// A connection ended.
    Closed,
}

/// The scripted hub: accepts agents, answers Hello with Welcome (assigning
/// `assign_id` when the agent has none), acks batches up to `max_ack`,
/// forwards commands to the latest connection, reports everything.
#[derive(Debug)]
pub struct ScriptedHub {
    /// Where agents connect.
    pub addr: SocketAddr,
    events: mpsc::UnboundedReceiver<HubEvent>,
    /// Events no `expect` has taken yet, oldest first.
    backlog: VecDeque<HubEvent>,
    commands: Arc<Mutex<Option<mpsc::UnboundedSender<HubMessage>>>>,
    /// Batches with a higher seq are not acked (default: all are).
    pub max_ack: Arc<AtomicU64>,
    tasks: JoinSet<()>,
}

impl ScriptedHub {
    /// A hub on a free loopback port, assigning `assigned-agent`.
    pub async fn start() -> Self {
        Self::bind("127.0.0.1:0".parse().unwrap(), "assigned-agent").await
    }

    /// A hub whose every Welcome sends the agent to `redirect`.
    pub async fn redirecting(redirect: Vec<String>) -> Self {
        Self::bind_with("127.0.0.1:0".parse().unwrap(), "assigned-agent", redirect).await
    }

    /// A hub on `addr`, assigning `assign_id` to agents that have none.
    pub async fn bind(addr: SocketAddr, assign_id: &str) -> Self {
        Self::bind_with(addr, assign_id, Vec::new()).await
    }

    async fn bind_with(addr: SocketAddr, assign_id: &str, redirect: Vec<String>) -> Self {
        // Re-binding a port another test's outgoing connection happens to hold
        // for a moment fails with AddrInUse: retry, bounded.
        let deadline = tokio::time::Instant::now() + WAIT;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(error)
                    if error.kind() == std::io::ErrorKind::AddrInUse
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("bind the test hub on {addr}: {error}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let (events_tx, events) = mpsc::unbounded_channel();
        let commands = Arc::new(Mutex::new(None));
        let max_ack = Arc::new(AtomicU64::new(u64::MAX));
        let mut tasks = JoinSet::new();
        let accept = {
            let commands = commands.clone();
            let max_ack = max_ack.clone();
            let assign_id = assign_id.to_owned();
            async move {
                let mut connections = JoinSet::new();
                while let Ok((socket, _)) = listener.accept().await {
                    let (tx, rx) = mpsc::unbounded_channel();
                    *commands.lock().unwrap() = Some(tx);
                    connections.spawn(serve(
                        Framed::new(socket, HubCodec::new()),
                        events_tx.clone(),
                        rx,
                        max_ack.clone(),
                        assign_id.clone(),
                        redirect.clone(),
                    ));
                }
            }
        };
        tasks.spawn(accept);
        Self {
            addr,
            events,
            backlog: VecDeque::new(),
            commands,
            max_ack,
            tasks,
        }
    }

    /// Closes the listener and every connection.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }

    /// Sends a message to the latest agent connection.
    pub fn send(&self, message: impl Into<HubMessage>) {
        self.commands
            .lock()
            .unwrap()
            .as_ref()
            .expect("an agent is connected")
            .send(message.into())
            .expect("connection alive");
    }

    /// Pushes a plugin configuration to the latest connection.
    pub fn send_config(&self, plugins: Vec<PluginConfig>) {
        self.send(Command {
            task: None,
            config: Some(ConfigSet { plugins }),
        });
    }

    /// Takes the next heartbeat batch (the one holding a 1000 record) and
    /// returns its 1001 records' fields by plugin name.
    pub async fn plugin_states(&mut self) -> HashMap<String, HashMap<String, String>> {
        self.expect("a heartbeat batch", |e| match e {
            HubEvent::Batch(batch) if batch.records.iter().any(|r| r.data_type == 1000) => Some(
                batch
                    .records
                    .iter()
                    .filter(|r| r.data_type == 1001)
                    .map(|r| (r.source.clone(), r.fields.clone()))
                    .collect(),
            ),
            _ => None,
        })
        .await
    }

    /// Takes heartbeat batches until one's plugin states satisfy `done`
    /// (bounded by [`WAIT`] overall).
    pub async fn plugin_states_until(
        &mut self,
        what: &str,
        mut done: impl FnMut(&HashMap<String, HashMap<String, String>>) -> bool,
    ) -> HashMap<String, HashMap<String, String>> {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let states = self.plugin_states().await;
                if done(&states) {
                    return states;
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
    }

    /// Sends a task to the latest connection.
    pub fn send_task(&self, task: Task) {
        self.send(Command {
            task: Some(task),
            config: None,
        });
    }

    /// Forgets every event received so far.
    pub fn clear(&mut self) {
        self.backlog.clear();
        while self.events.try_recv().is_ok() {}
    }

    /// Takes the oldest event `pick` accepts, waiting (bounded by [`WAIT`])
    /// for it if none has arrived yet. Other events stay for later calls.
    pub async fn expect<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&HubEvent) -> Option<T>,
    ) -> T {
        for (index, event) in self.backlog.iter().enumerate() {
            if let Some(found) = pick(event) {
                self.backlog.remove(index);
                return found;
            }
        }
        let (events, backlog) = (&mut self.events, &mut self.backlog);
        let found = tokio::time::timeout(WAIT, async {
            while let Some(event) = events.recv().await {
                if let Some(found) = pick(&event) {
                    return Some(found);
                }
                backlog.push_back(event);
            }
            None
        })
        .await;
        match found {
            Ok(Some(found)) => found,
            Ok(None) => panic!("hub event stream ended while waiting for {what}"),
            Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
        }
    }

    /// The next `Hello`.
    pub async fn hello(&mut self) -> Hello {
        self.expect("Hello", |e| match e {
            HubEvent::Hello(hello) => Some(hello.as_ref().clone()),
            _ => None,
        })
        .await
    }

    /// Takes the oldest record that `pick` accepts (see [`Self::expect`]).
    pub async fn record(&mut self, what: &str, mut pick: impl FnMut(&Record) -> bool) -> Record {
        self.expect(what, |e| match e {
            HubEvent::Record(record) if pick(record) => Some(record.clone()),
            _ => None,
        })
        .await
    }

    /// Takes the oldest batch.
    pub async fn batch(&mut self) -> Batch {
        self.expect("a batch", |e| match e {
            HubEvent::Batch(batch) => Some(batch.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for a plugin's 1001 record satisfying `pick`.
    pub async fn plugin_heartbeat(
        &mut self,
        plugin: &str,
        what: &str,
        mut pick: impl FnMut(&HashMap<String, String>) -> bool,
    ) -> HashMap<String, String> {
        self.record(what, |r| {
            r.data_type == 1001 && r.source == plugin && pick(&r.fields)
        })
        .await
        .fields
    }

    /// The result of task `task_id`.
    pub async fn task_result(&mut self, task_id: &str) -> TaskResult {
        self.expect(&format!("result of task {task_id}"), |e| match e {
            HubEvent::TaskResult(result) if result.task_id == task_id => Some(result.clone()),
            _ => None,
        })
        .await
    }
}

async fn serve(
    mut framed: Framed<tokio::net::TcpStream, HubCodec>,
    events: mpsc::UnboundedSender<HubEvent>,
    mut commands: mpsc::UnboundedReceiver<HubMessage>,
    max_ack: Arc<AtomicU64>,
    assign_id: String,
    redirect: Vec<String>,
) {
    let Some(Ok(message)) = framed.next().await else {
        return;
    };
    let Some(agent_message::Kind::Hello(hello)) = message.kind else {
        return;
    };
    let agent_id = if hello.agent_id.is_empty() {
        assign_id
    } else {
        hello.agent_id.clone()
    };
    let _ = events.send(HubEvent::Hello(Box::new(hello)));
    let welcome = Welcome {
        ok: true,
        agent_id,
        hub_id: "test-hub".into(),
        redirect,
        ..Welcome::default()
    };
    if framed.send(HubMessage::from(welcome)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            message = framed.next() => match message.map(|m| m.map(|m| m.kind)) {
                Some(Ok(Some(agent_message::Kind::Batch(batch)))) => {
                    let seq = batch.seq;
                    let records = batch.records.clone();
                    let _ = events.send(HubEvent::Batch(batch));
                    for record in records {
                        let _ = events.send(HubEvent::Record(record));
                    }
                    if seq <= max_ack.load(Ordering::SeqCst)
                        && framed.send(HubMessage::from(Ack { seq })).await.is_err()
                    {
                        break;
                    }
                }
                Some(Ok(Some(agent_message::Kind::TaskResult(result)))) => {
                    let _ = events.send(HubEvent::TaskResult(result));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            command = commands.recv() => match command {
                Some(command) => if framed.send(command).await.is_err() { break },
                None => break,
            },
        }
    }
    let _ = events.send(HubEvent::Closed);
}
