//! The two processes of an ingest run that herd-bench itself provides, each
//! run as its own child process (hidden subcommands) so that its CPU time is
//! its own: the subscriber that counts the records on `herd.data.>`, and the
//! load generator (simulated agents, or a publisher of pre-encoded envelopes).
//!
//! Both talk to the bench one line at a time over their pipes: they print
//! `ready` once prepared (connected, handshaken, envelopes encoded), the load
//! generator starts on a `go` line, both print `done` (the subscriber with its
//! counts), then wait for stdin to close. Stdin closing earlier ends them
//! too: the bench is gone.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use herd_codec::proto::{AgentMessage, Envelope, EnvelopeBatch, Hello, Pong, hub_message};
use herd_codec::{AgentCodec, BatchRecords, Encoded};
use herd_tests::script::{self, AgentIo};
use herd_tls::rustls::ClientConfig;
use herd_tls::tokio_rustls::TlsConnector;
use herd_tls::{Fingerprint, HubTrust};
use prost::Message as _;
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::codec::Framed;

use crate::error::{BenchError, within};
use crate::wire::{self, DATA_TYPE, TOKEN};

/// Bound of connecting and welcoming every simulated agent.
const HANDSHAKES: Duration = Duration::from_secs(30);

/// How the load generator produces the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LoadMode {
    /// Simulated agents: real TCP (TLS with `--hub-ca`), Hello/Welcome,
    /// pre-encoded `Batch` frames, a window of unacked batches each.
    Agents,
    /// Pre-encoded envelopes published to core NATS, then one flush.
    Core,
    /// Pre-encoded envelopes published to JetStream (with `Nats-Msg-Id`),
    /// PubAcks awaited in a bounded window.
    Jetstream,
}

impl LoadMode {
    /// The value of `--mode`.
    pub(crate) fn arg(self) -> &'static str {
        match self {
            Self::Agents => "agents",
            Self::Core => "core",
            Self::Jetstream => "jetstream",
        }
    }
}

/// The records of one run, as both the subscriber and the load generator
/// know them: agent `<prefix>-<n>` for n < agents sends batches with seq
/// 1..=batches of `per_batch` records each.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Records {
    /// Agent ids are `<prefix>-<n>`.
    #[arg(long)]
    pub(crate) prefix: String,
    /// Agents.
    #[arg(long)]
    pub(crate) agents: u64,
    /// Batches per agent.
    #[arg(long)]
    pub(crate) batches: u64,
    /// Records per batch.
    #[arg(long)]
    pub(crate) per_batch: u64,
}

impl Records {
    /// Records of the run.
    pub(crate) fn total(&self) -> u64 {
        self.agents * self.batches * self.per_batch
    }

    /// These records as command-line arguments.
    pub(crate) fn args(&self) -> Vec<String> {
        vec![
            format!("--prefix={}", self.prefix),
            format!("--agents={}", self.agents),
            format!("--batches={}", self.batches),
            format!("--per-batch={}", self.per_batch),
        ]
    }

    fn agent_id(&self, n: u64) -> String {
        format!("{}-{n}", self.prefix)
    }

    /// The agent number in `agent_id`, when it is one of this run's agents.
    fn agent_number(&self, agent_id: &str) -> Option<u64> {
        let n = agent_id
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()?;
        (n < self.agents).then_some(n)
    }

    /// The records of batch `seq` (the same for every agent).
    fn batch(&self, seq: u64) -> Vec<herd_codec::proto::Record> {
        (0..self.per_batch)
            .map(|index| wire::record(seq * self.per_batch + index))
            .collect()
    }
}

/// Arguments of the subscriber role.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SubscriberArgs {
    /// The NATS server.
    #[arg(long)]
    pub(crate) nats_url: String,
    #[command(flatten)]
    pub(crate) records: Records,
}

/// Arguments of the load generator role.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LoadArgs {
    #[arg(long, value_enum)]
    pub(crate) mode: LoadMode,
    /// The server's address (agents) or the NATS URL (core, jetstream).
    #[arg(long)]
    pub(crate) target: String,
    #[command(flatten)]
    pub(crate) records: Records,
    /// Unacked batches each simulated agent keeps in flight.
    #[arg(long, default_value_t = 8)]
    pub(crate) window: u64,
    /// PubAcks the JetStream publisher awaits at most at once.
    #[arg(long, default_value_t = 1000)]
    pub(crate) pub_acks: usize,
    /// Agents speak TLS, trusting the CA with this fingerprint (the hub's
    /// own); plaintext without.
    #[arg(long, value_name = "FINGERPRINT")]
    pub(crate) hub_ca: Option<Fingerprint>,
}

/// Lines from the bench on stdin.
struct Control(Lines<BufReader<Stdin>>);

impl Control {
    fn new() -> Self {
        Self(BufReader::new(tokio::io::stdin()).lines())
    }

    /// Waits for a line `expected`; an error if stdin closes first.
    async fn expect(&mut self, expected: &str) -> Result<(), BenchError> {
        loop {
            match self.0.next_line().await {
                Ok(Some(line)) if line.trim() == expected => return Ok(()),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Err(closed()),
            }
        }
    }

    /// Returns when stdin closes.
    async fn closed(&mut self) {
        while let Ok(Some(_)) = self.0.next_line().await {}
    }
}

fn closed() -> BenchError {
    BenchError::Process("the bench closed stdin".into())
}

/// Tells the bench something; stdout is line buffered.
fn say(line: &str) {
    println!("{line}");
}

/// Which records arrived, read from each Envelope's `agent_id`, `seq` and
/// `index` (never from NATS headers).
struct Tally {
    seen: Vec<u64>,
    unique: u64,
    duplicates: u64,
    stray: u64,
}

impl Tally {
    fn new(records: &Records) -> Self {
        let bits = usize::try_from(records.total()).unwrap_or(usize::MAX);
        Self {
            seen: vec![0; bits.div_ceil(64)],
            unique: 0,
            duplicates: 0,
            stray: 0,
        }
    }

    /// Counts the records of one message: an `Envelope` from
    /// `herd.data.*`, or an `EnvelopeBatch` (grouped form) from `herd.batch.*`.
    fn add(&mut self, records: &Records, subject: &str, payload: &[u8]) {
        if !subject.starts_with("herd.batch.") {
            match Envelope::decode(payload) {
                Ok(envelope) => {
                    self.add_one(records, &envelope.agent_id, envelope.seq, envelope.index)
                }
                Err(_) => self.stray += 1,
            }
            return;
        }
        match EnvelopeBatch::decode(payload) {
            Ok(group) if group.index.len() == group.records.len() => {
                for index in group.index {
                    self.add_one(records, &group.agent_id, group.seq, index);
                }
            }
            _ => self.stray += 1,
        }
    }

    fn add_one(&mut self, records: &Records, agent_id: &str, seq: u64, index: u32) {
        let index = u64::from(index);
        let Some(agent) = records.agent_number(agent_id) else {
            self.stray += 1;
            return;
        };
        if seq == 0 || seq > records.batches || index >= records.per_batch {
            self.stray += 1;
            return;
        }
        let bit = (agent * records.batches + seq - 1) * records.per_batch + index;
        let (word, mask) = ((bit / 64) as usize, 1_u64 << (bit % 64));
        if self.seen[word] & mask == 0 {
            self.seen[word] |= mask;
            self.unique += 1;
        } else {
            self.duplicates += 1;
        }
    }
}

/// The subscriber: counts the run's records on `herd.data.>` until every one
/// arrived, then prints `done <unique> <duplicates> <stray> <slow-consumer events>`.
pub(crate) async fn subscriber(args: SubscriberArgs) -> Result<(), BenchError> {
    let records = args.records;
    let expected = records.total();
    let slow = Arc::new(AtomicU64::new(0));
    let events = slow.clone();
    let client = async_nats::ConnectOptions::new()
        // Never drop in the client: a full buffer would be a slow consumer.
        .subscription_capacity(
            usize::try_from(expected)
                .unwrap_or(usize::MAX)
                .saturating_add(1024),
        )
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                if let async_nats::Event::SlowConsumer(_) = event {
                    events.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .connect(&args.nats_url)
        .await
        .map_err(BenchError::nats("subscriber connect"))?;
    let records_subscription = client
        .subscribe("herd.data.>")
        .await
        .map_err(BenchError::nats("subscribe"))?;
    // The grouped form (a hub with `data_form = "batch"`).
    let groups = client
        .subscribe("herd.batch.>")
        .await
        .map_err(BenchError::nats("subscribe"))?;
    let mut subscription = futures::stream::select(records_subscription, groups);
    // A probe sent on the same connection proves the SUB is in place.
    client
        .publish("herd.data.probe.0", "probe".into())
        .await
        .map_err(BenchError::nats("probe"))?;
    let probe = within(
        "the subscription probe",
        Duration::from_secs(5),
        subscription.next(),
    )
    .await?;
    if probe.is_none() {
        return Err(BenchError::Protocol("the subscription closed".into()));
    }
    let mut control = Control::new();
    say("ready");
    let mut tally = Tally::new(&records);
    let counting = async {
        while tally.unique < expected {
            let Some(message) = subscription.next().await else {
                break;
            };
            tally.add(&records, &message.subject, &message.payload);
        }
    };
    tokio::select! {
        () = counting => {}
        () = control.closed() => return Err(closed()),
    }
    if tally.unique < expected {
        return Err(BenchError::Protocol(format!(
            "subscription ended after {} of {expected} records",
            tally.unique
        )));
    }
    say(&format!(
        "done {} {} {} {}",
        tally.unique,
        tally.duplicates,
        tally.stray,
        slow.load(Ordering::Relaxed)
    ));
    control.closed().await;
    drop(client);
    Ok(())
}

/// The load generator: prepares everything, waits for `go`, sends every
/// record and prints `done` once all are acked (agents: every batch; core:
/// the flush; JetStream: every PubAck).
pub(crate) async fn load(args: LoadArgs) -> Result<(), BenchError> {
    let mut control = Control::new();
    let records = &args.records;
    let run = match args.mode {
        LoadMode::Agents => {
            let addr: SocketAddr = args.target.parse().map_err(|error| {
                BenchError::Process(format!("--target {:?}: {error}", args.target))
            })?;
            // One configuration for every agent, built before `ready` like
            // the rest of the handshake work.
            let tls = args
                .hub_ca
                .map(|fingerprint| herd_tls::client_config(&HubTrust::Fingerprint(fingerprint)))
                .transpose()
                .map_err(|error| BenchError::Process(format!("--hub-ca: {error}")))?;
            let frames = Arc::new(batch_frames(records));
            let agents = connect_agents(addr, records, tls).await?;
            say("ready");
            control.expect("go").await?;
            let window = args.window;
            let mut tasks = JoinSet::new();
            for agent in agents {
                tasks.spawn(agent.send(frames.clone(), window));
            }
            tokio::select! {
                result = join_all(tasks) => result,
                () = control.closed() => Err(closed()),
            }
        }
        LoadMode::Core | LoadMode::Jetstream => {
            let messages = Messages::encode(records);
            let client = async_nats::connect(&args.target)
                .await
                .map_err(BenchError::nats("publisher connect"))?;
            say("ready");
            control.expect("go").await?;
            let publishing = async {
                if args.mode == LoadMode::Core {
                    messages.publish(&client).await
                } else {
                    let jetstream = async_nats::jetstream::ContextBuilder::new()
                        .max_ack_inflight(args.pub_acks.max(1))
                        .build(client.clone());
                    messages.publish_jetstream(&jetstream, args.pub_acks).await
                }
            };
            tokio::select! {
                result = publishing => result,
                () = control.closed() => Err(closed()),
            }
        }
    };
    run?;
    say("done");
    control.closed().await;
    Ok(())
}

async fn join_all(mut tasks: JoinSet<Result<(), BenchError>>) -> Result<(), BenchError> {
    while let Some(result) = tasks.join_next().await {
        result.map_err(|error| BenchError::Process(format!("agent task: {error}")))??;
    }
    Ok(())
}

/// Every batch frame, encoded once (seq n at index n - 1) the way the agent
/// sends from its spool: the records stored encoded, the seq written around
/// them. All agents send the same frames.
fn batch_frames(records: &Records) -> Vec<Encoded<AgentMessage>> {
    (1..=records.batches)
        .map(|seq| Encoded::batch(seq, &BatchRecords::new(records.batch(seq))))
        .collect()
}

/// Connects and welcomes every agent of `records`, over TLS with `tls`.
async fn connect_agents(
    addr: SocketAddr,
    records: &Records,
    tls: Option<Arc<ClientConfig>>,
) -> Result<Vec<Agent>, BenchError> {
    let mut handshakes = JoinSet::new();
    for n in 0..records.agents {
        let agent_id = records.agent_id(n);
        let tls = tls.clone();
        handshakes.spawn(async move { Agent::connect(addr, &agent_id, tls).await });
    }
    let mut agents = Vec::new();
    within("every agent's handshake", HANDSHAKES, async {
        while let Some(result) = handshakes.join_next().await {
            agents.push(
                result
                    .map_err(|error| BenchError::Process(format!("handshake task: {error}")))??,
            );
        }
        Ok::<_, BenchError>(())
    })
    .await??;
    Ok(agents)
}

/// A simulated agent that sends pre-encoded batch frames.
struct Agent {
    agent_id: String,
    /// A socket or a TLS session: boxed, as the cost of the indirection is
    /// the load generator's, not the hub's.
    framed: Framed<Box<dyn AgentIo>, AgentCodec>,
}

impl Agent {
    /// Connects (over TLS with `tls`) and waits for an accepting `Welcome`.
    async fn connect(
        addr: SocketAddr,
        agent_id: &str,
        tls: Option<Arc<ClientConfig>>,
    ) -> Result<Self, BenchError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(BenchError::io(format!("{agent_id}: connecting to {addr}")))?;
        stream
            .set_nodelay(true)
            .map_err(BenchError::io("setting TCP_NODELAY"))?;
        let io: Box<dyn AgentIo> = match tls {
            Some(config) => {
                let name = herd_tls::server_name(&addr.to_string())
                    .map_err(|error| BenchError::Process(format!("{addr}: {error}")))?;
                let session = TlsConnector::from(config)
                    .connect(name, stream)
                    .await
                    .map_err(BenchError::io(format!(
                        "{agent_id}: TLS handshake with {addr}"
                    )))?;
                Box::new(session)
            }
            None => Box::new(stream),
        };
        let mut agent = Self {
            agent_id: agent_id.to_owned(),
            framed: Framed::new(io, AgentCodec::new()),
        };
        let hello = Hello {
            version: "bench".into(),
            ..script::hello(agent_id, TOKEN)
        };
        agent
            .framed
            .send(AgentMessage::from(hello))
            .await
            .map_err(|error| agent.failed("sending Hello", error))?;
        loop {
            match agent.next().await? {
                hub_message::Kind::Welcome(welcome) if welcome.ok => return Ok(agent),
                hub_message::Kind::Welcome(welcome) => {
                    return Err(BenchError::Protocol(format!(
                        "{agent_id}: refused: {}",
                        welcome.message
                    )));
                }
                _ => {}
            }
        }
    }

    fn failed(&self, what: &str, error: impl std::fmt::Display) -> BenchError {
        BenchError::Protocol(format!("{}: {what}: {error}", self.agent_id))
    }

    /// The next frame other than `Ping` (which is answered).
    async fn next(&mut self) -> Result<hub_message::Kind, BenchError> {
        loop {
            let kind = match self.framed.next().await {
                Some(Ok(message)) => message.kind,
                Some(Err(error)) => return Err(self.failed("reading", error)),
                None => return Err(self.failed("reading", "the server closed the connection")),
            };
            match kind {
                Some(hub_message::Kind::Ping(ping)) => {
                    let pong = AgentMessage::from(Pong { nonce: ping.nonce });
                    if let Err(error) = self.framed.send(pong).await {
                        return Err(self.failed("answering a ping", error));
                    }
                }
                Some(kind) => return Ok(kind),
                None => {}
            }
        }
    }

    /// Sends every frame, keeping at most `window` unacked like the real
    /// agent's spool; returns when the last one is acked.
    async fn send(
        mut self,
        frames: Arc<Vec<Encoded<AgentMessage>>>,
        window: u64,
    ) -> Result<(), BenchError> {
        let batches = frames.len() as u64;
        let (mut sent, mut acked) = (0_u64, 0_u64);
        while acked < batches {
            if sent < batches && sent - acked < window {
                let frame = frames[sent as usize].clone();
                if let Err(error) = self.framed.feed(frame).await {
                    return Err(self.failed("sending a batch", error));
                }
                sent += 1;
                if (sent - acked == window || sent == batches)
                    && let Err(error) =
                        SinkExt::<Encoded<AgentMessage>>::flush(&mut self.framed).await
                {
                    return Err(self.failed("flushing", error));
                }
                continue;
            }
            // Acks are per batch and in order; taking the highest also copes
            // with a cumulative one.
            if let hub_message::Kind::Ack(ack) = self.next().await? {
                acked = acked.max(ack.seq);
            }
        }
        Ok(())
    }
}

/// Every record of the run as the hub would publish it: its `Envelope`,
/// encoded before the clock starts, in batch order across agents (batch 1 of
/// every agent, then batch 2, ...), as concurrent agents arrive.
struct Messages {
    subjects: Vec<async_nats::Subject>,
    agent_ids: Vec<String>,
    /// (agent number, seq, index, encoded envelope).
    all: Vec<(usize, u64, u32, Bytes)>,
}

impl Messages {
    fn encode(records: &Records) -> Self {
        let agent_ids: Vec<String> = (0..records.agents).map(|n| records.agent_id(n)).collect();
        let subjects = agent_ids
            .iter()
            .map(|agent_id| format!("herd.data.{agent_id}.{DATA_TYPE}").into())
            .collect();
        let mut all = Vec::with_capacity(usize::try_from(records.total()).unwrap_or(0));
        let mut buffer = BytesMut::new();
        for seq in 1..=records.batches {
            let batch = records.batch(seq);
            for (agent, agent_id) in agent_ids.iter().enumerate() {
                for (index, record) in batch.iter().enumerate() {
                    let index = index as u32;
                    let envelope = wire::envelope(agent_id, "direct", seq, index, record.clone());
                    if buffer.capacity() - buffer.len() < envelope.encoded_len() {
                        buffer.reserve(1 << 20);
                    }
                    envelope
                        .encode(&mut buffer)
                        .expect("the buffer was reserved");
                    all.push((agent, seq, index, buffer.split().freeze()));
                }
            }
        }
        Self {
            subjects,
            agent_ids,
            all,
        }
    }

    /// Core NATS: publish all, then one flush.
    async fn publish(&self, client: &async_nats::Client) -> Result<(), BenchError> {
        for (agent, _, _, payload) in &self.all {
            client
                .publish(self.subjects[*agent].clone(), payload.clone())
                .await
                .map_err(BenchError::nats("publish"))?;
        }
        client.flush().await.map_err(BenchError::nats("flush"))
    }

    /// JetStream: publish with `Nats-Msg-Id` (`<agent>.<seq>.<index>`, as
    /// the hub sets it), at most `window` PubAcks outstanding, then the rest
    /// of the acks.
    async fn publish_jetstream(
        &self,
        jetstream: &async_nats::jetstream::Context,
        window: usize,
    ) -> Result<(), BenchError> {
        let mut pending = VecDeque::with_capacity(window);
        for (agent, seq, index, payload) in &self.all {
            if pending.len() >= window.max(1)
                && let Some(ack) = pending.pop_front()
            {
                check(ack).await?;
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("{}.{seq}.{index}", self.agent_ids[*agent]),
            );
            let ack = jetstream
                .publish_with_headers(self.subjects[*agent].clone(), headers, payload.clone())
                .await
                .map_err(BenchError::nats("JetStream publish"))?;
            pending.push_back(ack);
        }
        for ack in pending {
            check(ack).await?;
        }
        Ok(())
    }
}

async fn check(ack: async_nats::jetstream::context::PublishAckFuture) -> Result<(), BenchError> {
    let ack = ack.await.map_err(BenchError::nats("PubAck"))?;
    if ack.duplicate {
        return Err(BenchError::Protocol(format!(
            "PubAck seq {} says duplicate: message ids are not unique",
            ack.sequence
        )));
    }
    Ok(())
}
