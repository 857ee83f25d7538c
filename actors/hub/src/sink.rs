//! The NATS side of the hub: one shared client, its connection state, and the
//! publish path of agent batches.
//!
//! [`NatsLink`] is a cloneable handle rather than an actor with a mailbox:
//! every Connection publishes its own batches from its own arbiter, and
//! funnelling all of them through one mailbox would serialise the whole hub
//! on one thread. The client itself is shared by async-nats' design.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::future::Future;
use std::pin::Pin;

use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::{HeaderMap, Subject};
use bytes::{Bytes, BytesMut};
use herd_codec::proto::{Envelope, Hello};
use herd_codec::{EnvelopeIdentity, RawBatch};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{AckMode, DataForm, HubConfig};
use crate::error::HubError;
use crate::metrics::HubMetrics;
use crate::nats_auth::{hub_connect_options, hub_nats_url, parse_servers};
use herd_supervision::{Backoff, BackoffPolicy, Retry};

/// JetStream's de-duplication header, `<agent_id>.<seq>.<index>`: the only
/// header the hub sets, and only in [`AckMode::Jetstream`]. Everything else a
/// consumer needs (agent id, seq, index) is in the [`Envelope`].
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";

/// What a header block with `Nats-Msg-Id` takes on the wire besides the
/// id: `NATS/1.0\r\n`, `Nats-Msg-Id: `, the line end and the blank line.
/// NATS counts headers against `max_payload`.
const MSG_ID_BLOCK: usize = 10 + HEADER_MSG_ID.len() + 2 + 2 + 2;

/// The longest `Nats-Msg-Id` after the agent's prefix:
/// `<seq>.<index>.g` with the widest numbers.
const MAX_MSG_ID_SUFFIX: usize = 20 + 1 + 10 + 2;

/// Unacked JetStream publishes async-nats may have at once: in effect no
/// bound (see [`NatsLink::connect`]); at most `u32::MAX`, which async-nats
/// counts in.
const UNBOUNDED_ACKS: usize = 1 << 31;

/// Whether the hub currently has a NATS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsState {
    /// Not connected yet, or connecting for the first time.
    Connecting,
    /// Connected to a server.
    Connected,
    /// Lost the server; async-nats is reconnecting.
    Disconnected,
}

/// Shared handle on the hub's NATS client.
#[derive(Debug, Clone)]
pub struct NatsLink {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    state: watch::Receiver<NatsState>,
    /// Bumped on every disconnect: a flush that succeeded across a reconnect
    /// may have lost what sat in the old connection's buffer.
    epoch: Arc<AtomicU64>,
    url: String,
    /// Replicas of the KV buckets the hub creates (`kv_replicas`).
    kv_replicas: usize,
}

impl NatsLink {
    /// Connects to the hub's NATS as the hub (see [`crate::connect_nats`]
    /// for the URL and credentials `config` stands for). Returns at once even
    /// when no server is reachable yet: the client keeps retrying forever,
    /// and [`NatsLink::state`] says when it is connected.
    pub async fn connect(config: &HubConfig, name: &str) -> Result<Self, HubError> {
        let url = hub_nats_url(config)?;
        let servers = parse_servers(&url)?;
        let (state_tx, state) = watch::channel(NatsState::Connecting);
        let epoch = Arc::new(AtomicU64::new(0));
        let callback_epoch = epoch.clone();
        let state_tx = Arc::new(state_tx);
        let reconnect =
            Backoff::exponential(Duration::from_millis(50), Duration::from_secs(2), 0.2)
                .expect("constant backoff parameters are valid");
        let client = hub_connect_options(config)
            .await?
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            // Reconnect quickly after a NATS restart; agents are waiting for acks.
            .reconnect_delay_callback(move |attempt| {
                reconnect.delay(u32::try_from(attempt).unwrap_or(u32::MAX))
            })
            .event_callback(move |event| {
                let state_tx = state_tx.clone();
                let epoch = callback_epoch.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            state_tx.send_replace(NatsState::Connected);
                        }
                        async_nats::Event::Disconnected => {
                            epoch.fetch_add(1, Ordering::SeqCst);
                            state_tx.send_replace(NatsState::Disconnected);
                        }
                        // Refused credentials or a permission: the operator's to fix.
                        async_nats::Event::ServerError(error) => {
                            tracing::warn!(%error, "NATS server error");
                        }
                        other => tracing::debug!(event = %other, "nats event"),
                    }
                }
            })
            .connect(servers)
            .await
            .map_err(|source| HubError::NatsConnect {
                url: url.clone(),
                source,
            })?;
        // async-nats bounds unacked publishes (5,000 by default) with
        // permits that only come back when their ack future is polled; the
        // hub awaits the acks of several batches in order, so a shared
        // bound could be held whole by futures waiting their turn, with no
        // one left to publish. The hub bounds what is in flight itself
        // (batches per connection, frame size, connections).
        let jetstream = async_nats::jetstream::context::ContextBuilder::new()
            .max_ack_inflight(UNBOUNDED_ACKS)
            .build(client.clone());
        Ok(Self {
            client,
            jetstream,
            state,
            epoch,
            url,
            kv_replicas: config.kv_replicas,
        })
    }

    /// How many replicas the KV buckets this hub creates get.
    pub(crate) fn kv_replicas(&self) -> usize {
        self.kv_replicas
    }

    /// The client, for subscribers (command router, config watcher) and for
    /// embedders.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context on the same client.
    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        &self.jetstream
    }

    /// The server URL(s) this link uses.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The current connection state.
    pub fn state(&self) -> NatsState {
        *self.state.borrow()
    }

    /// Waits until the client is connected, at most `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        self.wait_for_state(|state| state == NatsState::Connected, timeout)
            .await
    }

    /// Waits until the connection state satisfies `condition` (checked on the
    /// current state first, then on every change), at most `timeout`.
    pub async fn wait_for_state(
        &self,
        mut condition: impl FnMut(NatsState) -> bool,
        timeout: Duration,
    ) -> bool {
        let mut state = self.state.clone();
        tokio::time::timeout(timeout, state.wait_for(|state| condition(*state)))
            .await
            .is_ok_and(|result| result.is_ok())
    }

    /// The largest record NATS takes from the agent `identity`: the
    /// server's `max_payload` minus the most the data form's message adds
    /// around one record; `None` while the server's limit is not known.
    pub(crate) fn max_record_bytes(
        &self,
        identity: &AgentIdentity,
        form: DataForm,
        mode: AckMode,
    ) -> Option<usize> {
        let max_payload = self.client.server_info().max_payload;
        let prefix = identity.envelope_identity();
        let envelope = match form {
            DataForm::Record => prefix.max_envelope_overhead(),
            DataForm::Batch => {
                prefix.max_group_overhead() + EnvelopeIdentity::max_group_record_cost(u32::MAX, 0)
            }
        };
        let header = match mode {
            AckMode::Jetstream => MSG_ID_BLOCK + identity.agent_id.len() + 1 + MAX_MSG_ID_SUFFIX,
            AckMode::Flush => 0,
        };
        (max_payload > 0).then(|| max_payload.saturating_sub(envelope + header))
    }

    /// The publisher of one agent connection's batches: its identity,
    /// subjects and settings, built once for the connection.
    pub(crate) fn publisher(
        &self,
        identity: AgentIdentity,
        mode: AckMode,
        form: DataForm,
        timeout: Duration,
        metrics: HubMetrics,
    ) -> BatchPublisher {
        BatchPublisher {
            prefix: identity.envelope_identity(),
            subjects: Subjects::new(&identity.agent_id, form),
            form,
            delivery: Arc::new(Delivery {
                link: self.clone(),
                agent_id: identity.agent_id.clone(),
                mode,
                timeout,
                metrics,
            }),
            identity,
            max_payload: OnceLock::new(),
        }
    }
}

/// What the hub publishes on `herd.loss.<agent_id>` when data is known to be
/// lost: batches missing from an agent's seq order, or a record NATS cannot
/// take (over its `max_payload`). Counted in `/metrics` too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossEvent {
    /// The agent.
    pub agent_id: String,
    /// The hub that saw it.
    pub hub_id: String,
    /// `seq_gap` or `oversize`.
    pub kind: LossKind,
    /// First seq concerned (for `oversize`: the batch's seq).
    pub from_seq: u64,
    /// Last seq concerned (inclusive).
    pub to_seq: u64,
    /// Records lost (0 when unknown: a missing batch's size is not known).
    pub records: u64,
    /// For `oversize`: the record's index in its batch and its envelope size.
    pub index: Option<u32>,
    /// For `oversize`: the envelope's size in bytes.
    pub bytes: Option<u64>,
    /// When the hub saw it, ms since the Unix epoch.
    pub at_ms: i64,
}

/// The kinds of [`LossEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Batches between the last acked seq and the one received never came.
    SeqGap,
    /// A record larger than NATS accepts.
    Oversize,
}

/// Publishes one agent connection's batches (see [`NatsLink::publisher`]).
#[derive(Debug)]
pub(crate) struct BatchPublisher {
    identity: AgentIdentity,
    /// The identity fields of every envelope, encoded once.
    prefix: EnvelopeIdentity,
    subjects: Subjects,
    form: DataForm,
    delivery: Arc<Delivery>,
    /// The server's `max_payload`, once known (it does not change).
    max_payload: OnceLock<usize>,
}

/// A future that resolves once NATS accepted a batch (see
/// [`BatchPublisher::send`]).
pub(crate) type Accepted = Pin<Box<dyn Future<Output = ()> + Send>>;

impl BatchPublisher {
    /// Turns `batch` into NATS messages around the records' bytes as the
    /// agent sent them: one envelope per record, or one `EnvelopeBatch` per
    /// data type (split where NATS' `max_payload` needs it). A record NATS
    /// cannot take is left out, counted and reported as a loss event.
    pub(crate) async fn prepare(&mut self, batch: RawBatch) -> PreparedBatch {
        let seq = batch.seq;
        let received_at_ms = now_ms();
        let max_payload = self.max_payload().unwrap_or(usize::MAX);
        let mut out = Built::default();
        match self.form {
            DataForm::Record => self.per_record(&batch, received_at_ms, max_payload, &mut out),
            DataForm::Batch => self.grouped(&batch, received_at_ms, max_payload, &mut out),
        }
        for (index, bytes) in out.refused {
            self.delivery.metrics.oversize_records.inc();
            self.report_loss(LossEvent {
                records: 1,
                index: Some(index),
                bytes: Some(bytes as u64),
                ..self.loss(LossKind::Oversize, seq, seq)
            })
            .await;
        }
        PreparedBatch {
            messages: out.messages,
            records: batch.records.len(),
        }
    }

    fn per_record(
        &mut self,
        batch: &RawBatch,
        received_at_ms: i64,
        max_payload: usize,
        out: &mut Built,
    ) {
        let seq = batch.seq;
        let total = batch
            .records
            .iter()
            .enumerate()
            .map(|(index, record)| {
                self.prefix
                    .encoded_len(received_at_ms, seq, index_of(index), record.bytes.len())
            })
            .sum();
        // One allocation for the whole batch; each payload is a slice of it.
        let mut buffer = BytesMut::with_capacity(total);
        out.messages.reserve(batch.records.len());
        for (index, record) in batch.records.iter().enumerate() {
            let index = index_of(index);
            self.prefix
                .encode(received_at_ms, seq, index, &record.bytes, &mut buffer);
            let payload = buffer.split().freeze();
            let message_id = self.message_id(format_args!("{seq}.{index}"));
            let size = payload.len() + header_wire_len(message_id.as_ref());
            if size > max_payload {
                out.refused.push((index, size));
                continue;
            }
            out.messages.push(OutMessage {
                subject: self.subjects.subject(record.data_type),
                message_id,
                payload,
            });
        }
    }

    fn grouped(
        &mut self,
        batch: &RawBatch,
        received_at_ms: i64,
        max_payload: usize,
        out: &mut Built,
    ) {
        let seq = batch.seq;
        // Data types in the order they first appear; few per batch.
        let mut groups: Vec<(u32, Vec<u32>)> = Vec::new();
        for (index, record) in batch.records.iter().enumerate() {
            let index = index_of(index);
            match groups
                .iter_mut()
                .find(|(data_type, _)| *data_type == record.data_type)
            {
                Some((_, indexes)) => indexes.push(index),
                None => groups.push((record.data_type, vec![index])),
            }
        }
        // Upper bounds, so a chunk never exceeds max_payload.
        let header = match self.delivery.mode {
            AckMode::Jetstream => MSG_ID_BLOCK + self.subjects.msg_id.len() + MAX_MSG_ID_SUFFIX,
            AckMode::Flush => 0,
        };
        let fixed = self.prefix.max_group_overhead() + header;
        let cost = EnvelopeIdentity::max_group_record_cost;
        let mut buffer = BytesMut::with_capacity(batch.frame_bytes + groups.len() * fixed);
        for (data_type, indexes) in groups {
            let mut chunk: Vec<(u32, &[u8])> = Vec::new();
            let mut size = fixed;
            for index in indexes {
                let record = &batch.records[index as usize].bytes[..];
                let record_cost = cost(index, record.len());
                if fixed + record_cost > max_payload {
                    out.refused.push((index, fixed + record_cost));
                    continue;
                }
                if size + record_cost > max_payload {
                    self.push_group(data_type, seq, received_at_ms, &chunk, &mut buffer, out);
                    chunk.clear();
                    size = fixed;
                }
                chunk.push((index, record));
                size += record_cost;
            }
            self.push_group(data_type, seq, received_at_ms, &chunk, &mut buffer, out);
        }
    }

    fn push_group(
        &mut self,
        data_type: u32,
        seq: u64,
        received_at_ms: i64,
        chunk: &[(u32, &[u8])],
        buffer: &mut BytesMut,
        out: &mut Built,
    ) {
        let Some((first, _)) = chunk.first() else {
            return;
        };
        self.prefix.encode_group(received_at_ms, seq, chunk, buffer);
        out.messages.push(OutMessage {
            subject: self.subjects.subject(data_type),
            // `.g`: never the id of a per-record message of the same batch.
            message_id: self.message_id(format_args!("{seq}.{first}.g")),
            payload: buffer.split().freeze(),
        });
    }

    /// `Nats-Msg-Id` = `<agent_id>.<rest>`, in JetStream mode only.
    fn message_id(&self, rest: std::fmt::Arguments<'_>) -> Option<HeaderMap> {
        (self.delivery.mode == AckMode::Jetstream).then(|| {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_MSG_ID, format!("{}{rest}", self.subjects.msg_id));
            headers
        })
    }

    /// Hands `batch` to NATS and returns what confirms it: with
    /// [`AckMode::Jetstream`] the PubAcks are awaited by the returned future,
    /// so the next batch can be published while this one's acks are on their
    /// way; with [`AckMode::Flush`] the flush is done before this returns.
    /// A failed or stalled attempt is re-published whole (JetStream drops
    /// the duplicates by `Nats-Msg-Id`), so the future only resolves when the
    /// batch is safe; drop it to give up (the agent then re-sends the batch
    /// after it reconnects).
    pub(crate) async fn send(&self, batch: PreparedBatch) -> Accepted {
        let delivery = self.delivery.clone();
        let first = delivery.start(&batch.messages).await;
        match delivery.mode {
            // A flushed batch is confirmed; a retried one must be, before
            // the next is published, or core NATS would see them reordered.
            AckMode::Flush => {
                delivery.deliver(batch, first).await;
                Box::pin(std::future::ready(()))
            }
            AckMode::Jetstream => Box::pin(async move { delivery.deliver(batch, first).await }),
        }
    }

    /// Publishes a loss event (best effort: a failure is logged, the data is
    /// counted in `/metrics` either way).
    pub(crate) async fn report_loss(&self, event: LossEvent) {
        tracing::warn!(agent_id = %event.agent_id, kind = ?event.kind, from_seq = event.from_seq,
            to_seq = event.to_seq, "data lost");
        let subject = format!("herd.loss.{}", event.agent_id);
        let payload = match serde_json::to_vec(&event) {
            Ok(payload) => payload,
            Err(error) => return tracing::error!(%error, "cannot encode a loss event"),
        };
        if let Err(error) = self
            .delivery
            .link
            .client
            .publish(subject, payload.into())
            .await
        {
            tracing::warn!(%error, "cannot publish a loss event");
        }
    }

    /// A loss event of this agent, now, with nothing known about its records.
    pub(crate) fn loss(&self, kind: LossKind, from_seq: u64, to_seq: u64) -> LossEvent {
        LossEvent {
            agent_id: self.identity.agent_id.clone(),
            hub_id: self.identity.hub_id.clone(),
            kind,
            from_seq,
            to_seq,
            records: 0,
            index: None,
            bytes: None,
            at_ms: now_ms(),
        }
    }

    /// The server's `max_payload`; `None` until the client has heard it.
    /// Read from the client once, not per batch.
    fn max_payload(&self) -> Option<usize> {
        if let Some(known) = self.max_payload.get() {
            return Some(*known);
        }
        let max_payload = self.delivery.link.client.server_info().max_payload;
        (max_payload > 0).then(|| *self.max_payload.get_or_init(|| max_payload))
    }
}

/// One batch's records as NATS messages, ready to (re-)publish.
#[derive(Debug)]
pub(crate) struct PreparedBatch {
    messages: Vec<OutMessage>,
    /// Records in the messages (with grouping, more than messages).
    records: usize,
}

/// What [`BatchPublisher::prepare`] builds: the messages, and the records
/// refused for their size (index in the batch, bytes).
#[derive(Debug, Default)]
struct Built {
    messages: Vec<OutMessage>,
    refused: Vec<(u32, usize)>,
}

/// What `headers` (at most a `Nats-Msg-Id`) take on the wire.
fn header_wire_len(headers: Option<&HeaderMap>) -> usize {
    headers
        .and_then(|headers| headers.get(HEADER_MSG_ID))
        .map_or(0, |id| MSG_ID_BLOCK + id.as_str().len())
}

/// A record's index in its batch; a batch has far fewer than 2^32 records
/// (the frame cap bounds it).
fn index_of(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// One record, encoded and addressed.
#[derive(Debug)]
struct OutMessage {
    subject: Subject,
    /// `Nats-Msg-Id`, in JetStream mode only.
    message_id: Option<HeaderMap>,
    payload: Bytes,
}

/// What one connection's publishes share with the futures confirming them.
#[derive(Debug)]
struct Delivery {
    link: NatsLink,
    agent_id: String,
    mode: AckMode,
    timeout: Duration,
    metrics: HubMetrics,
}

/// How far one attempt got: handed to the client (and flushed, in flush
/// mode), or JetStream PubAcks still to come.
enum Sent {
    Flushed,
    Acks(Vec<PublishAckFuture>),
}

/// One publish attempt of a batch.
struct Attempt {
    epoch: u64,
    started: Instant,
    sent: Result<Sent, String>,
}

impl Delivery {
    /// Publishes `messages` once, after waiting for a connection (publishing
    /// while async-nats reconnects only fills its buffers).
    async fn start(&self, messages: &[OutMessage]) -> Attempt {
        while !self.link.wait_connected(self.timeout).await {
            tracing::debug!(agent_id = %self.agent_id, "waiting for NATS before publishing");
        }
        let epoch = self.link.epoch.load(Ordering::SeqCst);
        let started = Instant::now();
        let sent = match self.mode {
            AckMode::Flush => self.publish_flush(messages).await,
            AckMode::Jetstream => self.publish_jetstream(messages).await,
        };
        Attempt {
            epoch,
            started,
            sent,
        }
    }

    /// Waits for what confirms `attempt`; `true` once the batch is safe.
    async fn finish(&self, attempt: Attempt, batch: &PreparedBatch) -> bool {
        let confirmed = match attempt.sent {
            Ok(Sent::Flushed) => Ok(()),
            Ok(Sent::Acks(acks)) => {
                let confirm = async {
                    for ack in acks {
                        ack.await.map_err(|error| error.to_string())?;
                    }
                    Ok(())
                };
                tokio::time::timeout(self.timeout, confirm)
                    .await
                    .unwrap_or_else(|_| Err(format!("no PubAck within {:?}", self.timeout)))
            }
            Err(reason) => Err(reason),
        };
        match confirmed {
            Ok(()) if self.link.epoch.load(Ordering::SeqCst) == attempt.epoch => {
                let bytes = batch
                    .messages
                    .iter()
                    .map(|message| message.payload.len())
                    .sum();
                self.metrics
                    .observe_publish(attempt.started.elapsed(), batch.records, bytes);
                return true;
            }
            Ok(()) => {
                tracing::warn!(agent_id = %self.agent_id, "NATS reconnected during the publish; publishing the batch again");
            }
            Err(reason) => {
                tracing::warn!(agent_id = %self.agent_id, %reason, "publish failed; retrying");
            }
        }
        false
    }

    /// Confirms `first`, re-publishing the batch until it is accepted.
    async fn deliver(&self, batch: PreparedBatch, first: Attempt) {
        let mut retry = Retry::new(
            Backoff::exponential(Duration::from_millis(20), Duration::from_secs(1), 0.2)
                .expect("constant backoff parameters are valid"),
        );
        let mut attempt = first;
        while !self.finish(attempt, &batch).await {
            self.metrics.publish_retries.inc();
            retry.wait().await;
            attempt = self.start(&batch.messages).await;
        }
    }

    async fn publish_flush(&self, messages: &[OutMessage]) -> Result<Sent, String> {
        let client = &self.link.client;
        let publish = async {
            for message in messages {
                client
                    .publish(message.subject.clone(), message.payload.clone())
                    .await
                    .map_err(|error| error.to_string())?;
            }
            client.flush().await.map_err(|error| error.to_string())
        };
        tokio::time::timeout(self.timeout, publish)
            .await
            .map_err(|_| format!("no flush within {:?}", self.timeout))??;
        Ok(Sent::Flushed)
    }

    async fn publish_jetstream(&self, messages: &[OutMessage]) -> Result<Sent, String> {
        let jetstream = &self.link.jetstream;
        let publish = async {
            let mut acks = Vec::with_capacity(messages.len());
            for message in messages {
                let publish =
                    jetstream::message::PublishMessage::build().payload(message.payload.clone());
                let publish = match &message.message_id {
                    Some(headers) => publish.headers(headers.clone()),
                    None => publish,
                };
                acks.push(
                    jetstream
                        .send_publish(message.subject.clone(), publish)
                        .await
                        .map_err(|error| error.to_string())?,
                );
            }
            Ok(Sent::Acks(acks))
        };
        tokio::time::timeout(self.timeout, publish)
            .await
            .map_err(|_| format!("JetStream took no publish within {:?}", self.timeout))?
    }
}

/// The subjects and message-id prefix of one agent, built once.
#[derive(Debug, Clone)]
struct Subjects {
    /// `herd.data.<agent_id>.` or `herd.batch.<agent_id>.`
    prefix: String,
    /// The subjects of the data types seen so far.
    known: Vec<(u32, Subject)>,
    /// `<agent_id>.`
    msg_id: String,
}

impl Subjects {
    /// Data types whose subjects are kept; an agent sends a handful, and one
    /// that sends thousands gets its subjects built per message.
    const KEPT: usize = 64;

    fn new(agent_id: &str, form: DataForm) -> Self {
        let root = match form {
            DataForm::Record => "herd.data",
            DataForm::Batch => "herd.batch",
        };
        Self {
            prefix: format!("{root}.{agent_id}."),
            known: Vec::new(),
            msg_id: format!("{agent_id}."),
        }
    }

    fn subject(&mut self, data_type: u32) -> Subject {
        if let Some((_, subject)) = self.known.iter().find(|(known, _)| *known == data_type) {
            return subject.clone();
        }
        let subject = Subject::from(format!("{}{data_type}", self.prefix));
        if self.known.len() < Self::KEPT {
            self.known.push((data_type, subject.clone()));
        }
        subject
    }
}

/// Who an agent is, as copied into every [`Envelope`] it causes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct AgentIdentity {
    /// The validated agent id.
    pub agent_id: String,
    /// Hostname from `Hello`.
    pub hostname: String,
    /// Intranet IPv4 addresses from `Hello`.
    pub intranet_ipv4: Vec<String>,
    /// Intranet IPv6 addresses from `Hello`.
    pub intranet_ipv6: Vec<String>,
    /// Agent version from `Hello`.
    pub agent_version: String,
    /// The hub's id.
    pub hub_id: String,
}

impl AgentIdentity {
    /// The identity of the agent that sent `hello`, known as `agent_id`.
    pub(crate) fn from_hello(agent_id: String, hello: &Hello, hub_id: String) -> Self {
        Self {
            agent_id,
            hostname: hello.hostname.clone(),
            intranet_ipv4: hello.intranet_ipv4.clone(),
            intranet_ipv6: hello.intranet_ipv6.clone(),
            agent_version: hello.version.clone(),
            hub_id,
        }
    }

    /// The identity fields of this agent's envelopes, encoded.
    fn envelope_identity(&self) -> EnvelopeIdentity {
        EnvelopeIdentity::new(&Envelope {
            agent_id: self.agent_id.clone(),
            hostname: self.hostname.clone(),
            intranet_ipv4: self.intranet_ipv4.clone(),
            intranet_ipv6: self.intranet_ipv6.clone(),
            agent_version: self.agent_version.clone(),
            hub_id: self.hub_id.clone(),
            ..Envelope::default()
        })
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}
