//! The NATS side of the hub: one shared client, its connection state, and the
//! publish path of agent batches.
//!
//! [`NatsLink`] is a cloneable handle rather than an actor with a mailbox:
//! every Connection publishes its own batches from its own arbiter, and
//! funnelling all of them through one mailbox would serialise the whole hub
//! on one thread. The client itself is shared by async-nats' design.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use bytes::Bytes;
use herd_codec::proto::{Batch, Envelope, Hello};
use prost::Message as _;
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
                reason: source.to_string(),
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
                reason: source.to_string(),
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

    /// Publishes every record of `batch` and returns once the sink accepted
    /// all of them (see [`AckMode`]). A failed or stalled attempt is
    /// re-published whole (JetStream drops the duplicates by `Nats-Msg-Id`),
    /// so this only returns when the batch is safe; drop the future to give
    /// up (the agent then re-sends the batch after it reconnects).
    pub async fn publish_batch(
        &self,
        identity: &AgentIdentity,
        batch: Batch,
        mode: AckMode,
        timeout: Duration,
        metrics: &HubMetrics,
    ) {
        let messages = identity.envelopes(batch);
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

/// One record, encoded and addressed, ready to (re-)publish.
#[derive(Debug)]
struct OutMessage {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

/// Who an agent is, as copied into every [`Envelope`] it causes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentIdentity {
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
    pub fn from_hello(agent_id: String, hello: &Hello, hub_id: String) -> Self {
        Self {
            agent_id,
            hostname: hello.hostname.clone(),
            intranet_ipv4: hello.intranet_ipv4.clone(),
            intranet_ipv6: hello.intranet_ipv6.clone(),
            agent_version: hello.version.clone(),
            hub_id,
        }
    }

    /// `herd.data.<agent_id>.<data_type>`.
    pub fn data_subject(&self, data_type: u32) -> String {
        format!("herd.data.{}.{data_type}", self.agent_id)
    }

    fn envelopes(&self, batch: Batch) -> Vec<OutMessage> {
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
                headers.insert(HEADER_MSG_ID, format!("{}.{seq}.{index}", self.agent_id));
                let subject = self.data_subject(record.data_type);
                let envelope = Envelope {
                    agent_id: self.agent_id.clone(),
                    hostname: self.hostname.clone(),
                    intranet_ipv4: self.intranet_ipv4.clone(),
                    intranet_ipv6: self.intranet_ipv6.clone(),
                    agent_version: self.agent_version.clone(),
                    received_at_ms,
                    seq,
                    // A batch has far fewer than 2^32 records: the frame cap bounds it.
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    record: Some(record),
                    hub_id: self.hub_id.clone(),
                };
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
