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

use async_nats::HeaderMap;
use bytes::Bytes;
use herd_codec::proto::{Batch, Envelope, Hello, Record};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::AckMode;
use crate::error::HubError;
use crate::metrics::HubMetrics;
use herd_supervision::{Backoff, BackoffPolicy, Retry};

/// Header carrying the agent id of a published record.
pub const HEADER_AGENT_ID: &str = "Herd-Agent-Id";
/// Header carrying the batch sequence number of a published record.
pub const HEADER_SEQ: &str = "Herd-Seq";
/// JetStream's de-duplication header: `<agent_id>.<seq>.<index>`.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";

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
}

impl NatsLink {
    /// Connects to `url` (comma-separated list allowed). Returns at once even
    /// when no server is reachable yet: the client keeps retrying forever,
    /// and [`NatsLink::state`] says when it is connected.
    pub async fn connect(url: &str, name: &str) -> Result<Self, HubError> {
        let (state_tx, state) = watch::channel(NatsState::Connecting);
        let epoch = Arc::new(AtomicU64::new(0));
        let callback_epoch = epoch.clone();
        let state_tx = Arc::new(state_tx);
        let servers = url
            .split(',')
            .map(|server| server.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| HubError::NatsUrl {
                url: url.to_owned(),
                source,
            })?;
        let reconnect =
            Backoff::exponential(Duration::from_millis(50), Duration::from_secs(2), 0.2)
                .expect("constant backoff parameters are valid");
        let client = async_nats::ConnectOptions::new()
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
                        other => tracing::debug!(event = %other, "nats event"),
                    }
                }
            })
            .connect(servers)
            .await
            .map_err(|source| HubError::NatsConnect {
                url: url.to_owned(),
                source,
            })?;
        let jetstream = async_nats::jetstream::new(client.clone());
        Ok(Self {
            client,
            jetstream,
            state,
            epoch,
            url: url.to_owned(),
        })
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

    /// The publisher of one agent connection's batches: its identity,
    /// subjects and settings, built once for the connection.
    pub(crate) fn publisher(
        &self,
        identity: AgentIdentity,
        mode: AckMode,
        timeout: Duration,
        metrics: HubMetrics,
    ) -> BatchPublisher {
        BatchPublisher {
            link: self.clone(),
            subjects: Subjects::new(&identity.agent_id),
            identity,
            mode,
            timeout,
            metrics,
            max_payload: OnceLock::new(),
        }
    }

    /// Publishes every record of `batch` and returns once the sink accepted
    /// all of them (see [`AckMode`]). A failed or stalled attempt is
    /// re-published whole (JetStream drops the duplicates by `Nats-Msg-Id`),
    /// so this only returns when the batch is safe; drop the future to give
    /// up (the agent then re-sends the batch after it reconnects).
    async fn publish_batch(&self, publisher: &BatchPublisher, batch: Batch) {
        let (identity, mode, timeout, metrics) = (
            &publisher.identity,
            publisher.mode,
            publisher.timeout,
            &publisher.metrics,
        );
        let seq = batch.seq;
        let mut messages = identity.envelopes(&publisher.subjects, batch);
        if let Some(max_payload) = publisher.max_payload() {
            let mut index = 0u32;
            let mut refused = Vec::new();
            messages.retain(|message| {
                let fits = message.payload.len() <= max_payload;
                if !fits {
                    refused.push((index, message.payload.len()));
                }
                index += 1;
                fits
            });
            for (index, bytes) in refused {
                metrics.oversize_records.inc();
                publisher
                    .report_loss(LossEvent {
                        records: 1,
                        index: Some(index),
                        bytes: Some(bytes as u64),
                        ..publisher.loss(LossKind::Oversize, seq, seq)
                    })
                    .await;
            }
        }
        let mut retry = Retry::new(
            Backoff::exponential(Duration::from_millis(20), Duration::from_secs(1), 0.2)
                .expect("constant backoff parameters are valid"),
        );
        loop {
            let attempt = retry.attempt() + 1;
            let started = Instant::now();
            // Publishing while async-nats reconnects only fills its buffers.
            if !self.wait_connected(timeout).await {
                tracing::debug!(agent_id = %identity.agent_id, "waiting for NATS before publishing");
                continue;
            }
            let epoch = self.epoch.load(Ordering::SeqCst);
            let accepted = match mode {
                AckMode::Flush => self.publish_flush(&messages, timeout).await,
                AckMode::Jetstream => self.publish_jetstream(&messages, timeout).await,
            };
            match accepted {
                Ok(()) if self.epoch.load(Ordering::SeqCst) == epoch => {
                    let bytes = messages.iter().map(|message| message.payload.len()).sum();
                    metrics.observe_publish(started.elapsed(), messages.len(), bytes);
                    return;
                }
                Ok(()) => {
                    tracing::warn!(agent_id = %identity.agent_id, attempt, "NATS reconnected during the publish; publishing the batch again");
                }
                Err(reason) => {
                    tracing::warn!(agent_id = %identity.agent_id, attempt, %reason, "publish failed; retrying");
                }
            }
            metrics.publish_retries.inc();
            retry.wait().await;
        }
    }

    async fn publish_flush(
        &self,
        messages: &[OutMessage],
        timeout: Duration,
    ) -> Result<(), String> {
        let publish = async {
            for message in messages {
                self.client
                    .publish_with_headers(
                        message.subject.clone(),
                        message.headers.clone(),
                        message.payload.clone(),
                    )
                    .await
                    .map_err(|error| error.to_string())?;
            }
            self.client.flush().await.map_err(|error| error.to_string())
        };
        tokio::time::timeout(timeout, publish)
            .await
            .map_err(|_| format!("no flush within {timeout:?}"))?
    }

    async fn publish_jetstream(
        &self,
        messages: &[OutMessage],
        timeout: Duration,
    ) -> Result<(), String> {
        let publish = async {
            let mut acks = Vec::with_capacity(messages.len());
            for message in messages {
                acks.push(
                    self.jetstream
                        .publish_with_headers(
                            message.subject.clone(),
                            message.headers.clone(),
                            message.payload.clone(),
                        )
                        .await
                        .map_err(|error| error.to_string())?,
                );
            }
            for ack in acks {
                ack.await.map_err(|error| error.to_string())?;
            }
            Ok(())
        };
        tokio::time::timeout(timeout, publish)
            .await
            .map_err(|_| format!("no PubAck within {timeout:?}"))?
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
    link: NatsLink,
    identity: AgentIdentity,
    subjects: Subjects,
    mode: AckMode,
    timeout: Duration,
    metrics: HubMetrics,
    /// The server's `max_payload`, once known (it does not change).
    max_payload: OnceLock<usize>,
}

impl BatchPublisher {
    /// Publishes `batch`; returns once NATS accepted all of it.
    pub(crate) async fn publish(&self, batch: Batch) {
        self.link.publish_batch(self, batch).await;
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
        if let Err(error) = self.link.client.publish(subject, payload.into()).await {
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
        let max_payload = self.link.client.server_info().max_payload;
        (max_payload > 0).then(|| *self.max_payload.get_or_init(|| max_payload))
    }

    /// The largest record NATS takes from this agent: `max_payload` minus
    /// its envelope; `None` while the server's limit is not known.
    pub(crate) fn max_record_bytes(&self) -> Option<usize> {
        self.max_payload()
            .map(|max_payload| max_payload.saturating_sub(self.identity.envelope_overhead()))
    }
}

/// The subject and message-id prefixes of one agent, built once.
#[derive(Debug, Clone)]
struct Subjects {
    /// `herd.data.<agent_id>.`
    data: String,
    /// `<agent_id>.`
    msg_id: String,
}

impl Subjects {
    fn new(agent_id: &str) -> Self {
        Self {
            data: format!("herd.data.{agent_id}."),
            msg_id: format!("{agent_id}."),
        }
    }
}

/// One record, encoded and addressed, ready to (re-)publish.
#[derive(Debug)]
struct OutMessage {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
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

    /// Bytes an envelope adds around a record, with room for the largest
    /// seq, index and timestamp.
    fn envelope_overhead(&self) -> usize {
        // The record's field tag and length prefix (at most 1 + 5 bytes).
        self.envelope(i64::MAX, u64::MAX, u32::MAX, None)
            .encoded_len()
            + 6
    }

    /// This agent's envelope around `record`.
    fn envelope(
        &self,
        received_at_ms: i64,
        seq: u64,
        index: u32,
        record: Option<Record>,
    ) -> Envelope {
        Envelope {
            agent_id: self.agent_id.clone(),
            hostname: self.hostname.clone(),
            intranet_ipv4: self.intranet_ipv4.clone(),
            intranet_ipv6: self.intranet_ipv6.clone(),
            agent_version: self.agent_version.clone(),
            received_at_ms,
            seq,
            index,
            record,
            hub_id: self.hub_id.clone(),
        }
    }

    fn envelopes(&self, subjects: &Subjects, batch: Batch) -> Vec<OutMessage> {
        let received_at_ms = now_ms();
        let seq = batch.seq;
        batch
            .records
            .into_iter()
            .enumerate()
            .map(|(index, record)| {
                let mut headers = HeaderMap::new();
                headers.insert(HEADER_AGENT_ID, self.agent_id.as_str());
                headers.insert(HEADER_SEQ, seq.to_string());
                headers.insert(HEADER_MSG_ID, format!("{}{seq}.{index}", subjects.msg_id));
                let subject = format!("{}{}", subjects.data, record.data_type);
                // A batch has far fewer than 2^32 records: the frame cap bounds it.
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                let envelope = self.envelope(received_at_ms, seq, index, Some(record));
                OutMessage {
                    subject,
                    headers,
                    payload: envelope.encode_to_vec().into(),
                }
            })
            .collect()
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
