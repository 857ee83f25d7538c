//! The Connector: the agent's one connection to a hub.
//!
//! It dials the hub list in order; on the first that answers it sends
//! `Hello` (host facts, plugins, last acked seq), takes the `Welcome`
//! (persisting the assigned id, applying the pushed configuration and the
//! heartbeat interval, following a redirect), then sends every unacked batch
//! in order followed by new ones as the batcher cuts them. It answers
//! `Ping`, forwards `Ack`s to the batcher and runs `Command`s (tasks are
//! routed by target: the agent itself or a plugin; configuration goes to the
//! plugin manager).
//!
//! When the connection dies the next attempt waits an exponential backoff
//! (the supervision runtime's
//! [`ExponentialBackoff`](herd_supervision::ExponentialBackoff) through a
//! [`Retry`](herd_supervision::Retry): 1 s doubling up to 60 s by default,
//! each delay shortened by a random fraction of up to a half, never longer
//! than the cap), reset after a session that stayed up `reset_after_ms`. A round tries every hub once; the next round
//! starts again from the first, so the list is a failover order.
//!
//! Writes go through a [`FrameWriter`] (bounded queue, own task): a slow
//! hub makes the session wait instead of buffering without bound; batches
//! it has not taken yet stay in the batcher's unacked window.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use bytes::Bytes;
use futures::StreamExt;
use herd_codec::proto::{
    AgentMessage, CertificateRequest, CloseReason, Hello, HubMessage, Pong, Task, TaskResult,
    TaskStatus, hub_message,
};
use herd_codec::{AgentCodec, Encoded, PROTOCOL_VERSION, data_type};
use herd_tls::rustls::pki_types::ServerName;
use herd_tls::{AgentKey, EnrolledIdentity, HubTrust};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::batcher::Batcher;
use crate::config::{AgentConfig, AgentTlsConfig};
use crate::error::AgentError;
use crate::heartbeat::HeartbeatReporter;
use crate::hostinfo;
use crate::messages::{
    Acked, ApplyHubConfig, ListPlugins, ReadDurable, RunTask, SetHeartbeatInterval, SetRecordLimit,
    Stop, WatchDurable,
};
use crate::plugin::agent_result;
use crate::plugin_manager::PluginManager;
use crate::report::ConnectorStats;
use crate::state::StateDir;
use herd_supervision::io::{FrameSender, FrameWriter};
use herd_supervision::{Backoff, Retry};

/// Bytes of batches read from the spool at a time while sending.
const READ_CHUNK_BYTES: usize = 1024 * 1024;
/// Frames queued for the socket before the session waits for the writer.
const WRITE_QUEUE: usize = 256;
/// Reconnect delays are shortened by a random fraction of up to this, so that
/// agents cut off together do not come back together.
const RECONNECT_JITTER: f64 = 0.5;
/// A chain of redirects longer than this falls back to the configured list.
const MAX_REDIRECTS: usize = 4;

/// The other actors a session talks to.
#[derive(Debug, Clone)]
pub(crate) struct Peers {
    /// Unacked window and feed of batches.
    pub batcher: Addr<Batcher>,
    /// Tasks for plugins, configuration pushes.
    pub plugins: Addr<PluginManager>,
    /// Interval changes from `Welcome`.
    pub heartbeat: Addr<HeartbeatReporter>,
    /// Cancelled when a task asks the agent to shut down.
    pub shutdown_requested: CancellationToken,
}

/// The connection actor; see the module docs.
#[derive(Debug)]
pub(crate) struct Connector {
    /// The connection loop, taken when the actor starts.
    dialer: Option<Dialer>,
    cancel: CancellationToken,
    done: CancellationToken,
}

impl Connector {
    /// A connector for `config.hubs`. `agent_id` holds the persisted id (empty
    /// if none yet); the connector is the one writer: it adopts the id a
    /// hub assigns, persists it, and every reader sees it.
    pub(crate) fn new(
        config: Arc<AgentConfig>,
        tls: Option<HubTls>,
        state: StateDir,
        agent_id: Arc<watch::Sender<String>>,
        peers: Peers,
        stats: Arc<ConnectorStats>,
    ) -> Self {
        let cancel = CancellationToken::new();
        Self {
            dialer: Some(Dialer {
                config,
                tls,
                pending_key: Mutex::new(None),
                state,
                agent_id,
                peers,
                stats,
                cancel: cancel.clone(),
            }),
            cancel,
            done: CancellationToken::new(),
        }
    }
}

impl Actor for Connector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(dialer) = self.dialer.take() else {
            return;
        };
        ctx.spawn(dialer.run().into_actor(self).map(|(), act, ctx| {
            act.done.cancel();
            ctx.stop();
        }));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.cancel.cancel();
        self.done.cancel();
    }
}

/// Ends the session (queued frames, such as a last task result, are still
/// written, for at most a second) and resolves once the connection is closed.
impl Handler<Stop> for Connector {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Stop, _: &mut Context<Self>) -> Self::Result {
        self.cancel.cancel();
        let done = self.done.clone();
        Box::pin(async move { done.cancelled().await })
    }
}

/// How a session ended.
#[derive(Debug)]
enum SessionEnd {
    /// The agent is stopping.
    Cancelled,
    /// The hub sent us elsewhere.
    Redirect(Vec<String>),
    /// Anything else; `established` says whether the handshake succeeded.
    Lost { established: bool, reason: String },
}

/// The connection loop, owned by the Connector actor.
/// The read side of a hub connection: the socket's or its TLS session's.
type HubReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write side of a hub connection.
type HubWriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// The TLS client side of the hub link, and the agent's enrolled identity.
#[derive(Clone)]
pub(crate) struct HubTls {
    trust: HubTrust,
    /// `tls.server_name`, else the host of the hub address dialled.
    server_name: Option<ServerName<'static>>,
    /// The certificate the hub issued and the agent's key; shared by every
    /// incarnation of the Connector, replaced at enrollment and renewal.
    identity: Arc<Mutex<Option<Arc<EnrolledIdentity>>>>,
    state: StateDir,
}

impl std::fmt::Debug for HubTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl HubTls {
    /// TLS as `config` says, with the identity kept in `state`; `None`
    /// (with a WARN) for a plaintext link.
    pub(crate) fn from_config(
        config: &AgentTlsConfig,
        state: &StateDir,
    ) -> Result<Option<Self>, AgentError> {
        let Some(trust) = config.trust()? else {
            tracing::warn!(
                "hub link is PLAINTEXT (tls.insecure = true): anyone on the path can read \
                 the records and pose as the hub"
            );
            return Ok(None);
        };
        let server_name = config
            .server_name
            .as_deref()
            .map(herd_tls::server_name)
            .transpose()?;
        // Checked now, so a bad trust setting stops the start.
        herd_tls::client_config(&trust)?;
        let identity = match state.load_identity() {
            Ok(identity) => identity,
            // An unreadable identity must not keep the agent from running:
            // it is set aside, and the agent enrolls again (given a token).
            Err(error) => {
                let aside = state.set_identity_aside();
                tracing::warn!(%error, aside = ?aside, "identity unusable; set aside, the agent enrolls again");
                None
            }
        };
        if let Some(identity) = &identity {
            let certificate = identity.certificate();
            tracing::info!(agent_id = %certificate.agent_id, "enrolled identity loaded");
        }
        Ok(Some(Self {
            trust,
            server_name,
            identity: Arc::new(Mutex::new(identity.map(Arc::new))),
            state: state.clone(),
        }))
    }

    /// The identity to present, unless it has expired.
    fn identity(&self) -> Option<Arc<EnrolledIdentity>> {
        let identity = self
            .identity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        if identity.certificate().expired(SystemTime::now()) {
            tracing::warn!(agent_id = %identity.certificate().agent_id,
                "the agent's certificate has expired; it enrolls again with its token, if it has one");
            return None;
        }
        Some(identity)
    }

    /// Persists `identity` and presents it from the next connection on.
    fn adopt(&self, identity: EnrolledIdentity) -> Result<(), String> {
        self.state
            .store_identity(&identity)
            .map_err(|error| format!("cannot persist the agent certificate: {error}"))?;
        *self.identity.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(identity));
        Ok(())
    }

    async fn connect(
        &self,
        hub: &str,
        stream: TcpStream,
        within: Duration,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => herd_tls::server_name(hub).map_err(|error| error.to_string())?,
        };
        let identity = self.identity().map(|identity| identity.identity());
        let connector = herd_tls::client_config_with_identity(&self.trust, identity)
            .map(TlsConnector::from)
            .map_err(|error| format!("TLS configuration: {error}"))?;
        match tokio::time::timeout(within, connector.connect(name, stream)).await {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => Err(format!(
                "TLS handshake with {hub}: the hub closed the connection (is it set to \
                 tls.insecure = true?)"
            )),
            Ok(Err(error)) => Err(format!("TLS handshake with {hub}: {error}")),
            Err(_) => Err(format!("no TLS handshake with {hub} within {within:?}")),
        }
    }
}

#[derive(Debug)]
struct Dialer {
    config: Arc<AgentConfig>,
    tls: Option<HubTls>,
    /// The key of an enrollment or renewal request awaiting its certificate.
    pending_key: Mutex<Option<AgentKey>>,
    state: StateDir,
    agent_id: Arc<watch::Sender<String>>,
    peers: Peers,
    stats: Arc<ConnectorStats>,
    cancel: CancellationToken,
}

impl Dialer {
    fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.config.handshake_timeout_ms)
    }

    async fn run(self) {
        let reconnect = &self.config.reconnect;
        let reset_after = Duration::from_millis(reconnect.reset_after_ms);
        // The configuration was validated (min > 0, min <= max).
        let mut retry = Retry::new(
            Backoff::exponential(
                Duration::from_millis(reconnect.min_backoff_ms),
                Duration::from_millis(reconnect.max_backoff_ms),
                RECONNECT_JITTER,
            )
            .unwrap_or_default(),
        );
        let mut redirect: Vec<String> = Vec::new();
        let mut redirects = 0;
        loop {
            let round = if redirect.is_empty() {
                redirects = 0;
                self.config.hubs.clone()
            } else {
                std::mem::take(&mut redirect)
            };
            for hub in round {
                let started = Instant::now();
                match self.session(&hub).await {
                    SessionEnd::Cancelled => return,
                    SessionEnd::Redirect(to) => {
                        tracing::info!(%hub, redirect = ?to, "hub redirected the agent");
                        redirects += 1;
                        if redirects <= MAX_REDIRECTS {
                            redirect = to;
                        }
                        break;
                    }
                    SessionEnd::Lost {
                        established,
                        reason,
                    } => {
                        if established {
                            tracing::warn!(%hub, %reason, "hub connection lost");
                            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                            if started.elapsed() >= reset_after {
                                retry.succeeded();
                            }
                            // Start over from the first hub after the delay.
                            break;
                        }
                        tracing::info!(%hub, %reason, "cannot connect to hub");
                        self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if !redirect.is_empty() {
                continue;
            }
            let delay = retry.next_delay();
            tracing::debug!(?delay, "waiting before the next connection round");
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn session(&self, hub: &str) -> SessionEnd {
        let end = self.connect_and_serve(hub).await;
        self.stats.connected.store(false, Ordering::Relaxed);
        end
    }

    async fn connect_and_serve(&self, hub: &str) -> SessionEnd {
        let connect_timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let connect = tokio::time::timeout(connect_timeout, TcpStream::connect(hub));
        let stream = tokio::select! {
            () = self.cancel.cancelled() => return SessionEnd::Cancelled,
            connected = connect => match connected {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return SessionEnd::Lost { established: false, reason: e.to_string() },
                Err(_) => return SessionEnd::Lost {
                    established: false,
                    reason: format!("no connection within {connect_timeout:?}"),
                },
            },
        };
        let _ = stream.set_nodelay(true);
        let (read, write): (HubReadHalf, HubWriteHalf) = match &self.tls {
            None => {
                let (read, write) = stream.into_split();
                (Box::new(read), Box::new(write))
            }
            Some(tls) => {
                let session = tokio::select! {
                    () = self.cancel.cancelled() => return SessionEnd::Cancelled,
                    session = tls.connect(hub, stream, self.handshake_timeout()) => session,
                };
                match session {
                    Ok(session) => {
                        let (read, write) = tokio::io::split(session);
                        (Box::new(read), Box::new(write))
                    }
                    Err(reason) => {
                        return SessionEnd::Lost {
                            established: false,
                            reason,
                        };
                    }
                }
            }
        };
        let mut frames = FramedRead::new(
            read,
            AgentCodec::with_max_frame_length(self.config.max_frame_length),
        );
        let codec = AgentCodec::with_max_frame_length(self.config.max_frame_length);
        let writer = FrameWriter::new(write, codec, WRITE_QUEUE);
        let end = tokio::select! {
            () = self.cancel.cancelled() => SessionEnd::Cancelled,
            end = self.handshake_and_serve(hub, &mut frames, writer.sender()) => end,
        };
        // Queued frames (a last task result, say) are still written, for at
        // most a second.
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(1), writer.close()).await {
            tracing::debug!(error = %e, "hub writer failed");
        }
        end
    }

    async fn handshake_and_serve(
        &self,
        hub: &str,
        frames: &mut FramedRead<HubReadHalf, AgentCodec>,
        out: FrameSender<Encoded<AgentMessage>>,
    ) -> SessionEnd {
        let lost = |established, reason: String| SessionEnd::Lost {
            established,
            reason,
        };
        let hello = match self.hello().await {
            Ok(hello) => hello,
            Err(reason) => return lost(false, reason),
        };
        if out.send(encode(hello)).await.is_err() {
            return lost(false, "connection closed while sending Hello".into());
        }
        let handshake_timeout = self.handshake_timeout();
        let welcome = match tokio::time::timeout(handshake_timeout, frames.next()).await {
            Err(_) => return lost(false, format!("no Welcome within {handshake_timeout:?}")),
            Ok(None) => return lost(false, "hub closed the connection before Welcome".into()),
            Ok(Some(Err(e))) => return lost(false, format!("bad frame before Welcome: {e}")),
            Ok(Some(Ok(HubMessage {
                kind: Some(hub_message::Kind::Welcome(welcome)),
            }))) => welcome,
            Ok(Some(Ok(other))) => {
                return lost(false, format!("expected Welcome, got {other:?}"));
            }
        };
        if !welcome.redirect.is_empty() {
            return SessionEnd::Redirect(welcome.redirect);
        }
        if !welcome.ok {
            return lost(false, format!("hub refused the agent: {}", welcome.message));
        }
        if !welcome.certificate.is_empty()
            && let Err(reason) = self.adopt_certificate(&welcome.certificate)
        {
            return lost(false, reason);
        }
        if let Err(reason) = self.adopt_id(&welcome.agent_id) {
            return lost(false, reason);
        }
        tracing::info!(%hub, hub_id = %welcome.hub_id, agent_id = %welcome.agent_id, "connected to hub");
        *self.stats.hub.lock().unwrap_or_else(|e| e.into_inner()) = hub.to_owned();
        self.stats.connected.store(true, Ordering::Relaxed);
        self.peers
            .batcher
            .do_send(SetRecordLimit(welcome.max_record_bytes));
        if welcome.heartbeat_interval_secs > 0 {
            self.peers
                .heartbeat
                .do_send(SetHeartbeatInterval(Duration::from_secs(u64::from(
                    welcome.heartbeat_interval_secs,
                ))));
        }
        if let Some(config) = welcome.config {
            self.peers.plugins.do_send(ApplyHubConfig(config));
        }
        let Ok(durable) = self.peers.batcher.send(WatchDurable).await else {
            return SessionEnd::Cancelled;
        };
        self.serve(frames, out, durable).await
    }

    /// Reads the hub's frames while the batches go out: everything unacked
    /// in the spool first (from its acked seq on), then each batch as it
    /// becomes durable. Both run at once, so acks are read while sending.
    async fn serve(
        &self,
        frames: &mut FramedRead<HubReadHalf, AgentCodec>,
        out: FrameSender<Encoded<AgentMessage>>,
        durable: watch::Receiver<u64>,
    ) -> SessionEnd {
        let lost = |reason: String| SessionEnd::Lost {
            established: true,
            reason,
        };
        let sending = self.send_from_spool(&out, durable);
        tokio::pin!(sending);
        let mut renew_at = self.renewal().map(|(due, _)| due);
        loop {
            let renewal = async {
                match renew_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = renewal => renew_at = self.renew_if_due(&out).await,
                frame = frames.next() => match frame {
                    None => return lost("hub closed the connection".into()),
                    Some(Err(e)) => return lost(format!("bad frame from hub: {e}")),
                    Some(Ok(message)) => {
                        if let Some(end) = self.on_message(message, &out).await {
                            return end;
                        }
                    }
                },
                end = &mut sending => return end,
            }
        }
    }

    /// Sends the spool's durable unacked batches in seq order, a chunk at a
    /// time (memory stays bounded by the chunk and the write queue), then
    /// waits for more to become durable. Returns only when it cannot go on.
    async fn send_from_spool(
        &self,
        out: &FrameSender<Encoded<AgentMessage>>,
        mut durable: watch::Receiver<u64>,
    ) -> SessionEnd {
        let mut next = 0;
        loop {
            let read = self.peers.batcher.send(ReadDurable {
                from: next,
                max_bytes: READ_CHUNK_BYTES,
            });
            let chunk = match read.await {
                Ok(Ok(chunk)) => chunk,
                Ok(Err(error)) => {
                    return SessionEnd::Lost {
                        established: true,
                        reason: format!("cannot read the spool: {error}"),
                    };
                }
                Err(_) => return SessionEnd::Cancelled, // the batcher is gone
            };
            // Everything up to the acked seq is gone from the spool anyway.
            next = next.max(chunk.acked + 1);
            let Some(&(last, _)) = chunk.batches.last() else {
                // Nothing durable beyond `next` yet: wait for the next sync.
                let wanted = next;
                if durable.wait_for(|seq| *seq >= wanted).await.is_err() {
                    return SessionEnd::Cancelled;
                }
                continue;
            };
            for (seq, records) in &chunk.batches {
                if !self.send_batch(out, Encoded::batch(*seq, records)).await {
                    return SessionEnd::Lost {
                        established: true,
                        reason: "connection closed while sending".into(),
                    };
                }
            }
            next = last + 1;
        }
    }

    /// Queues one batch frame (waiting while the socket is backed up).
    async fn send_batch(
        &self,
        out: &FrameSender<Encoded<AgentMessage>>,
        frame: Encoded<AgentMessage>,
    ) -> bool {
        let len = frame.len() as u64;
        if out.send(frame).await.is_err() {
            return false;
        }
        self.stats.batches_sent.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_sent.fetch_add(len, Ordering::Relaxed);
        true
    }

    async fn on_message(
        &self,
        message: HubMessage,
        out: &FrameSender<Encoded<AgentMessage>>,
    ) -> Option<SessionEnd> {
        match message.kind? {
            hub_message::Kind::Ack(ack) => self.peers.batcher.do_send(Acked(ack.seq)),
            hub_message::Kind::Ping(ping) => {
                if out.send(encode(Pong { nonce: ping.nonce })).await.is_err() {
                    return Some(SessionEnd::Lost {
                        established: true,
                        reason: "connection closed while answering Ping".into(),
                    });
                }
            }
            hub_message::Kind::Command(command) => {
                if let Some(config) = command.config {
                    self.peers.plugins.do_send(ApplyHubConfig(config));
                }
                if let Some(task) = command.task {
                    let peers = self.peers.clone();
                    let out = out.clone();
                    actix::spawn(async move {
                        let shutdown =
                            is_agent_task(&task) && task.data_type == data_type::SHUTDOWN;
                        let result = run_task(task, &peers).await;
                        if out.send(encode(result)).await.is_err() {
                            tracing::warn!("task result lost: the hub connection closed");
                        }
                        // Only now: the answer is queued ahead of the goodbye.
                        if shutdown {
                            peers.shutdown_requested.cancel();
                        }
                    });
                }
            }
            hub_message::Kind::Goodbye(goodbye) => {
                let reason =
                    CloseReason::try_from(goodbye.reason).map_or("unknown", |r| r.as_str_name());
                return Some(SessionEnd::Lost {
                    established: true,
                    reason: format!("hub said goodbye ({reason}): {}", goodbye.message),
                });
            }
            hub_message::Kind::Welcome(_) => {
                tracing::warn!("ignoring a second Welcome from the hub");
            }
            hub_message::Kind::IssuedCertificate(issued) => {
                let adopted = match issued.error.as_str() {
                    "" => self.adopt_certificate(&issued.certificate),
                    error => Err(format!("the hub refused: {error}")),
                };
                if let Err(reason) = adopted {
                    tracing::warn!(%reason, "certificate not renewed; asking again later");
                }
            }
        }
        None
    }

    async fn hello(&self) -> Result<Hello, String> {
        let plugins = self
            .peers
            .plugins
            .send(ListPlugins)
            .await
            .map_err(|e| format!("plugin manager unavailable: {e}"))?;
        let last_acked_seq = self
            .peers
            .batcher
            .send(super::messages::GetBatcherStats)
            .await
            .map_err(|e| format!("batcher unavailable: {e}"))?
            .spool
            .acked_seq;
        let mut hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_id: self.agent_id.borrow().clone(),
            token: self.config.token.clone(),
            product: "herd-agent".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            plugins,
            last_acked_seq,
            ..Hello::default()
        };
        hostinfo::fill_hello(&mut hello);
        if let Some(tls) = &self.tls
            && tls.identity().is_none()
            && !self.config.token.is_empty()
        {
            hello.csr = self.new_request()?;
            tracing::info!("enrolling: asking the hub for a certificate");
        }
        Ok(hello)
    }

    /// A request for a fresh key, kept until its certificate comes.
    fn new_request(&self) -> Result<Bytes, String> {
        let key = AgentKey::generate().map_err(|error| error.to_string())?;
        let request = key.request().map_err(|error| error.to_string())?;
        *self.pending_key.lock().unwrap_or_else(|e| e.into_inner()) = Some(key);
        Ok(Bytes::from(request))
    }

    /// Takes a certificate the hub issued for the pending key.
    fn adopt_certificate(&self, certificate: &[u8]) -> Result<(), String> {
        let (Some(tls), Some(key)) = (
            &self.tls,
            self.pending_key
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        ) else {
            return Err("the hub sent a certificate the agent did not ask for".to_owned());
        };
        let identity = EnrolledIdentity::new(key, certificate.to_vec())
            .map_err(|error| format!("the hub's certificate: {error}"))?;
        let issued = identity.certificate().clone();
        tls.adopt(identity)?;
        tracing::info!(agent_id = %issued.agent_id, renew_at = ?issued.renew_at(), "certificate stored");
        Ok(())
    }

    /// When the certificate is due for renewal, and how long to wait before
    /// asking again when an answer does not come; `None` without one.
    fn renewal(&self) -> Option<(tokio::time::Instant, Duration)> {
        let identity = self.tls.as_ref()?.identity()?;
        let certificate = identity.certificate();
        let lifetime = certificate
            .not_after
            .duration_since(certificate.issued_at)
            .unwrap_or_default();
        let retry = (lifetime / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let wait = certificate
            .renew_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Some((tokio::time::Instant::now() + wait, retry))
    }

    /// Asks for a new certificate when the current one is due; returns when
    /// to look again.
    async fn renew_if_due(
        &self,
        out: &FrameSender<Encoded<AgentMessage>>,
    ) -> Option<tokio::time::Instant> {
        let (due, retry) = self.renewal()?;
        let now = tokio::time::Instant::now();
        if due > now {
            return Some(due);
        }
        match self.new_request() {
            Ok(csr) => {
                tracing::info!("asking the hub to renew the agent certificate");
                // A closed writer ends the session elsewhere.
                let _ = out.send(encode(CertificateRequest { csr })).await;
            }
            Err(reason) => tracing::warn!(%reason, "cannot make a renewal request"),
        }
        Some(now + retry)
    }

    /// Takes the id from `Welcome`, persisting it when it is new.
    fn adopt_id(&self, id: &str) -> Result<(), String> {
        let current = self.agent_id.borrow().clone();
        if id.is_empty() || current == id {
            return if current.is_empty() {
                Err("Welcome carries no agent id and none is configured".into())
            } else {
                Ok(())
            };
        }
        herd_codec::validate_agent_id(id)
            .map_err(|e| format!("hub assigned agent id {id:?}: {e}"))?;
        self.state
            .store_agent_id(id)
            .map_err(|e| format!("cannot persist the assigned agent id: {e}"))?;
        tracing::info!(agent_id = id, "agent id assigned by the hub and persisted");
        self.agent_id.send_replace(id.to_owned());
        Ok(())
    }
}

/// Runs a task from the hub: the agent's own tasks here, the rest by the
/// plugin named in `target`.
async fn run_task(task: Task, peers: &Peers) -> TaskResult {
    if !is_agent_task(&task) {
        return match peers.plugins.send(RunTask(task.clone())).await {
            Ok(result) => result,
            Err(_) => agent_result(
                &task.id,
                &task.target,
                TaskStatus::Failed,
                "the plugin manager is stopping".into(),
            ),
        };
    }
    if task.data_type == data_type::SHUTDOWN {
        tracing::info!(task_id = %task.id, "shutdown requested by the hub");
        let mut result = agent_result(&task.id, "agent", TaskStatus::Ok, String::new());
        result.output = Bytes::from_static(b"shutting down");
        return result;
    }
    agent_result(
        &task.id,
        "agent",
        TaskStatus::Rejected,
        format!("the agent has no task with data type {}", task.data_type),
    )
}

fn is_agent_task(task: &Task) -> bool {
    task.target.is_empty() || task.target == "agent"
}

fn encode(message: impl Into<AgentMessage>) -> Encoded<AgentMessage> {
    Encoded::new(&message.into())
}
