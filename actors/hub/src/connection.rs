//! One agent socket: handshake, records to NATS, acks, liveness, commands.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::BytesMut;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use herd_codec::proto::agent_message::Kind;
use herd_codec::proto::{
    Ack, CloseReason, ConfigSet, Goodbye, Hello, HubMessage, IssuedCertificate, Ping, Welcome,
};
use herd_codec::{
    AgentFrame, CodecError, Encoded, HubForwardCodec, PROTOCOL_VERSION, RawBatch, data_type,
    validate_agent_id,
};
use herd_tls::AgentCertificate;
use prost::Message as _;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::{Encoder, FramedRead};

use crate::Services;
use crate::agent_info::AgentInfo;
use crate::config::AgentAuth;
use crate::messages::{
    AgentGone, AgentLink, CheckCertificate, Close, CloseKind, CommandRefused, Enroll, GetConfig,
    HeartbeatReceived, Register, RenewCertificate, SendCommand, TaskDone, Unregister,
};
use crate::metrics::HubMetrics;
use crate::pending::HandshakePermit;
use crate::sink::{AgentIdentity, BatchPublisher, LossKind};
use crate::tls::TLS_HANDSHAKE_RECORD;
use herd_supervision::io::{FrameSender, FrameWriter, TrySendError};

/// One frame read from the socket with the in-flight permit taken before it
/// was read: reading stops while every permit is out.
type Gated = (Result<AgentFrame, CodecError>, OwnedSemaphorePermit);

/// The first capacity of a connection's read buffer; it grows to the
/// largest frame in flight.
const INITIAL_READ_BUFFER: usize = 512;
/// The first capacity of a connection's encode buffer.
const INITIAL_WRITE_BUFFER: usize = 256;

/// A frame for the writer. A task's frame carries its requester's deadline:
/// past it the router has answered TIMEOUT, and the frame is dropped unwritten.
#[derive(Debug)]
struct Outgoing {
    frame: Encoded<HubMessage>,
    deadline: Option<Instant>,
}

impl From<HubMessage> for Outgoing {
    fn from(message: HubMessage) -> Self {
        Self {
            // Encoded here, so the queues hold bytes rather than message trees.
            frame: Encoded::new(&message),
            deadline: None,
        }
    }
}

/// The tasks of one connection accepted but not yet written (in the
/// connection's outbox or the writer's queue), shared with its encoder.
#[derive(Debug)]
struct TaskBacklog {
    unwritten: AtomicUsize,
    /// `herd_hub_expired_tasks_total` alone: one per connection, so not the
    /// whole metrics set.
    expired: prometheus_client::metrics::counter::Counter,
}

impl TaskBacklog {
    fn unwritten(&self) -> usize {
        self.unwritten.load(Ordering::Relaxed)
    }

    fn accepted(&self) {
        self.unwritten.fetch_add(1, Ordering::Relaxed);
    }

    fn written(&self) {
        self.unwritten.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether a task with `deadline` is past it; if so it leaves the backlog
    /// as dropped.
    fn drop_if_expired(&self, deadline: Instant) -> bool {
        let expired = Instant::now() >= deadline;
        if expired {
            self.unwritten.fetch_sub(1, Ordering::Relaxed);
            self.expired.inc();
        }
        expired
    }
}

/// The hub's frame encoder, dropping task frames whose requester gave up:
/// the last check before a task is written, so one that waited behind a
/// stalled socket is never delivered late.
#[derive(Debug)]
struct OutgoingCodec {
    frames: HubForwardCodec,
    tasks: Arc<TaskBacklog>,
}

impl Encoder<Outgoing> for OutgoingCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Outgoing, dst: &mut bytes::BytesMut) -> Result<(), CodecError> {
        if let Some(deadline) = item.deadline {
            if self.tasks.drop_if_expired(deadline) {
                return Ok(());
            }
            self.tasks.written();
        }
        self.frames.encode(item.frame, dst)
    }
}

/// What the socket's write half has done, for telling a peer that stopped
/// reading from one that is merely sent a lot.
#[derive(Debug, Default)]
struct WriteProgress {
    /// Bytes the socket took.
    written: AtomicU64,
    /// The last write found the socket full (the peer's window is closed).
    blocked: AtomicBool,
}

/// A write half recording its [`WriteProgress`].
#[derive(Debug)]
struct Watched<W> {
    io: W,
    progress: Arc<WriteProgress>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Watched<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        let progress = &self.progress;
        if let Poll::Ready(Ok(written)) = polled {
            progress
                .written
                .fetch_add(written as u64, Ordering::Relaxed);
        }
        progress
            .blocked
            .store(polled.is_pending(), Ordering::Relaxed);
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A batch on its way to NATS, holding one in-flight permit until acked.
#[derive(Debug)]
struct InFlight {
    batch: RawBatch,
    permit: OwnedSemaphorePermit,
}

#[derive(Debug)]
enum Phase {
    Handshake,
    /// `Hello` accepted; waiting for the Registry and the config.
    Registering,
    Ready {
        identity: AgentIdentity,
        publishing: Publishing,
    },
}

/// The ordered publisher of a connection's batches, started by the first
/// batch: an agent that only holds its connection open costs no publisher.
#[derive(Debug)]
enum Publishing {
    /// No batch yet; `resume_after` is the last seq the agent knows acked.
    NotStarted { resume_after: u64 },
    Running {
        batches: mpsc::UnboundedSender<InFlight>,
        task: tokio::task::JoinHandle<()>,
    },
    /// Shutting down: batches are no longer taken (the agent re-sends them
    /// to the next hub).
    Stopped,
}

impl Publishing {
    fn abort(&self) {
        if let Self::Running { task, .. } = self {
            task.abort();
        }
    }
}

/// The actor owning one agent's TCP connection.
///
/// The read half is an actix stream gated by a semaphore of
/// `max_in_flight_batches` permits: a permit is taken before each frame is
/// read and a batch keeps it until its ack is queued, so a slow NATS stops the
/// socket from being read instead of growing memory. Batches are published in
/// order by one task per connection, which acks each `seq` after the sink
/// accepted it.
///
/// The write half belongs to a bounded writer task. Frames that do not fit
/// its queue wait in the connection's outbox, fed to the writer in order by
/// one future at a time. At most `max_queued_tasks` tasks wait unwritten
/// (outbox and writer queue together); the router rejects more. A socket
/// that takes no byte for `write_stall_timeout_ms` while frames wait closes
/// the connection.
#[derive(Debug)]
pub(crate) struct Connection {
    services: Services,
    conn_id: u64,
    peer: SocketAddr,
    socket: Option<std::net::TcpStream>,
    writer: Option<FrameWriter<Outgoing>>,
    /// Frames waiting for room in the writer's queue, oldest first.
    outbox: VecDeque<Outgoing>,
    /// The future feeding the outbox's head to the writer, while one runs.
    feeding: Option<SpawnHandle>,
    /// The frame to write before the socket closes (a refusal or Goodbye).
    last_frame: Option<Outgoing>,
    tasks: Arc<TaskBacklog>,
    progress: Arc<WriteProgress>,
    /// Bytes written when the socket was first seen blocked, and when.
    blocked_since: Option<(u64, Instant)>,
    /// Closed for a write stall: nothing more can be written.
    stalled: bool,
    permits: Arc<Semaphore>,
    phase: Phase,
    /// Held from the accept until the `Hello` is handled (or the actor goes).
    pending: Option<HandshakePermit>,
    /// The agent's certificate: the one it connected with, or the one it
    /// got enrolling on this connection.
    certificate: Option<AgentCertificate>,
    last_heard: Instant,
    nonce: u64,
    closing: bool,
    close_reason: String,
}

impl Connection {
    /// A connection actor for an accepted socket, holding its pending
    /// handshake's place. The socket is converted to tokio's type in
    /// `started`, on the arbiter the actor runs on.
    pub(crate) fn new(
        services: Services,
        conn_id: u64,
        peer: SocketAddr,
        socket: std::net::TcpStream,
        pending: HandshakePermit,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(services.config.max_in_flight_batches));
        let tasks = Arc::new(TaskBacklog {
            unwritten: AtomicUsize::new(0),
            expired: services.metrics.expired_tasks.clone(),
        });
        Self {
            services,
            conn_id,
            peer,
            socket: Some(socket),
            writer: None,
            outbox: VecDeque::new(),
            feeding: None,
            last_frame: None,
            tasks,
            progress: Arc::default(),
            blocked_since: None,
            stalled: false,
            permits,
            phase: Phase::Handshake,
            pending: Some(pending),
            certificate: None,
            last_heard: Instant::now(),
            nonce: 0,
            closing: false,
            close_reason: "connection closed by the agent".to_owned(),
        }
    }

    fn agent_id(&self) -> Option<&str> {
        match &self.phase {
            Phase::Ready { identity, .. } => Some(&identity.agent_id),
            _ => None,
        }
    }

    /// Queues a frame behind those already waiting.
    fn send_frame(&mut self, ctx: &mut Context<Self>, frame: impl Into<Outgoing>) {
        self.outbox.push_back(frame.into());
        if self.feeding.is_none() {
            self.feed_writer(ctx);
        }
    }

    /// Moves the outbox into the writer's queue while it has room, dropping
    /// tasks whose requester gave up; at a full queue one future waits for
    /// room with the head frame and carries on from there.
    fn feed_writer(&mut self, ctx: &mut Context<Self>) {
        let Some(writer) = &self.writer else { return };
        while let Some(frame) = self.outbox.pop_front() {
            if frame
                .deadline
                .is_some_and(|deadline| self.tasks.drop_if_expired(deadline))
            {
                continue;
            }
            match writer.try_send(frame) {
                Ok(()) => {}
                Err(TrySendError::Full(frame)) => {
                    let sender = writer.sender();
                    let fed = async move { sender.send(frame).await.is_ok() }
                        .into_actor(self)
                        .map(|open, act, ctx| {
                            act.feeding = None;
                            if open {
                                act.feed_writer(ctx);
                            }
                        });
                    self.feeding = Some(ctx.spawn(fed));
                    return;
                }
                // The writer failed; the read side ends the connection.
                Err(TrySendError::Closed(_)) => return self.outbox.clear(),
            }
        }
    }

    /// Takes a task for the agent unless `max_queued_tasks` already wait.
    fn queue_task(
        &mut self,
        ctx: &mut Context<Self>,
        frame: Outgoing,
        deadline: Instant,
    ) -> Result<(), CommandRefused> {
        let tasks = &self.tasks;
        // Tasks nobody waits for leave before they are counted against the bound.
        self.outbox.retain(|queued| {
            !queued
                .deadline
                .is_some_and(|deadline| tasks.drop_if_expired(deadline))
        });
        let queued = tasks.unwritten();
        if queued >= self.services.config.max_queued_tasks {
            return Err(CommandRefused::Backlog { queued });
        }
        tasks.accepted();
        self.send_frame(
            ctx,
            Outgoing {
                deadline: Some(deadline),
                ..frame
            },
        );
        Ok(())
    }

    /// Closes the connection when its socket has taken nothing for
    /// `write_stall_timeout_ms` while frames wait: the agent stopped reading.
    fn check_write_stall(&mut self, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        let written = self.progress.written.load(Ordering::Relaxed);
        let blocked = self.progress.blocked.load(Ordering::Relaxed);
        let limit = self.services.config.write_stall_timeout();
        match self.blocked_since {
            Some((at, since)) if blocked && at == written => {
                if since.elapsed() >= limit {
                    let message = format!(
                        "the agent read nothing for {} ms with {} tasks queued",
                        since.elapsed().as_millis(),
                        self.tasks.unwritten()
                    );
                    tracing::warn!(peer = %self.peer, agent_id = ?self.agent_id(), %message, "closing agent connection: write stall");
                    self.services.metrics.close("write_stall");
                    self.stalled = true;
                    self.close(ctx, None, message);
                }
            }
            _ => self.blocked_since = blocked.then(|| (written, Instant::now())),
        }
    }

    /// Refuses the handshake with `Welcome{ok: false}` and closes.
    fn refuse(&mut self, ctx: &mut Context<Self>, outcome: &'static str, message: String) {
        tracing::info!(peer = %self.peer, outcome, %message, "handshake refused");
        self.services.metrics.handshake(outcome);
        let welcome = Welcome {
            ok: false,
            message: message.clone(),
            hub_id: self.services.hub_id.to_string(),
            ..Welcome::default()
        };
        self.close(ctx, Some(welcome.into()), message);
    }

    /// Says goodbye after the handshake and closes.
    fn goodbye(
        &mut self,
        ctx: &mut Context<Self>,
        reason: CloseReason,
        outcome: &'static str,
        message: String,
    ) {
        tracing::info!(peer = %self.peer, agent_id = ?self.agent_id(), outcome, %message, "closing agent connection");
        self.services.metrics.close(outcome);
        let goodbye = Goodbye {
            reason: reason as i32,
            message: message.clone(),
        };
        self.close(ctx, Some(goodbye.into()), message);
    }

    /// Stops; `stopping` writes `last` after what the writer holds and closes
    /// the socket. What waits in the outbox is dropped: the router answers
    /// its tasks OFFLINE.
    fn close(&mut self, ctx: &mut Context<Self>, last: Option<HubMessage>, reason: String) {
        if self.closing {
            return;
        }
        self.closing = true;
        // A refused handshake is over, even while its last frame is flushed.
        self.pending = None;
        self.close_reason = reason;
        self.outbox.clear();
        self.last_frame = last.map(Outgoing::from);
        ctx.stop();
    }

    fn on_hello(&mut self, ctx: &mut Context<Self>, hello: Hello) {
        if hello.protocol_version != PROTOCOL_VERSION {
            return self.refuse(
                ctx,
                "bad_version",
                format!(
                    "protocol version {} is not supported; this hub speaks {PROTOCOL_VERSION}",
                    hello.protocol_version
                ),
            );
        }
        if self.services.config.agent_auth() == AgentAuth::Certificate {
            return self.identify(ctx, hello);
        }
        if !self.token_ok(&hello.token) {
            return self.refuse(ctx, "bad_token", "enrollment token is not valid".to_owned());
        }
        let agent_id = if hello.agent_id.is_empty() {
            format!("{:032x}", rand::random::<u128>())
        } else {
            if let Err(error) = validate_agent_id(&hello.agent_id) {
                return self.refuse(
                    ctx,
                    "bad_id",
                    format!("agent id {:?} is not valid: {error}", hello.agent_id),
                );
            }
            hello.agent_id.clone()
        };
        self.register(ctx, hello, agent_id, bytes::Bytes::new());
    }

    /// The agent's id from its certificate (checked against revocations),
    /// or from a new one when it enrolls now; the id it declares does not
    /// count.
    fn identify(&mut self, ctx: &mut Context<Self>, hello: Hello) {
        let Some(identities) = self.services.directory.identities() else {
            return self.refuse(
                ctx,
                "unavailable",
                "the hub's enrollment is restarting; connect again".to_owned(),
            );
        };
        self.phase = Phase::Registering;
        if let Some(certificate) = self.certificate.clone() {
            if !hello.agent_id.is_empty() && hello.agent_id != certificate.agent_id {
                tracing::warn!(peer = %self.peer, declared = %hello.agent_id, agent_id = %certificate.agent_id,
                    "the agent declared another id than its certificate's; the certificate's counts");
            }
            let agent_id = certificate.agent_id.clone();
            ctx.wait(
                identities
                    .send(CheckCertificate(certificate))
                    .into_actor(self)
                    .map(move |checked, act, ctx| match checked {
                        Ok(Ok(())) => act.register(ctx, hello, agent_id, bytes::Bytes::new()),
                        Ok(Err(refusal)) => act.refuse(ctx, "certificate_refused", refusal),
                        Err(error) => act.refuse(
                            ctx,
                            "unavailable",
                            format!("the hub's enrollment is unavailable: {error}"),
                        ),
                    }),
            );
            return;
        }
        if hello.csr.is_empty() {
            return self.refuse(ctx, "not_enrolled", NOT_ENROLLED.to_owned());
        }
        let enroll = Enroll {
            token: hello.token.clone(),
            csr: hello.csr.clone(),
            requested_id: hello.agent_id.clone(),
            address: self.peer,
        };
        ctx.wait(
            identities.send(enroll).into_actor(self).map(
                move |enrolled, act, ctx| match enrolled {
                    Ok(Ok(issued)) => {
                        let agent_id = issued.parsed.agent_id.clone();
                        act.certificate = Some(issued.parsed);
                        act.register(ctx, hello, agent_id, issued.certificate);
                    }
                    Ok(Err(refusal)) => act.refuse(ctx, "enroll_refused", refusal.to_string()),
                    Err(error) => act.refuse(
                        ctx,
                        "unavailable",
                        format!("the hub's enrollment is unavailable: {error}"),
                    ),
                },
            ),
        );
    }

    /// Registers the connection for `agent_id` and welcomes the agent,
    /// handing it `certificate` (DER) when it enrolled now.
    fn register(
        &mut self,
        ctx: &mut Context<Self>,
        hello: Hello,
        agent_id: String,
        certificate: bytes::Bytes,
    ) {
        let identity =
            AgentIdentity::from_hello(agent_id.clone(), &hello, self.services.hub_id.to_string());
        let resume_after = hello.last_acked_seq;
        let info = AgentInfo::from_hello(&agent_id, &hello, self.peer);
        let directory = &self.services.directory;
        let Some(registry) = directory.registry() else {
            return self.refuse(
                ctx,
                "unavailable",
                "the hub's registry is restarting; connect again".to_owned(),
            );
        };
        let config = directory
            .configs()
            .map(|configs| configs.send(GetConfig(agent_id)));
        self.phase = Phase::Registering;
        let register = registry.send(Register {
            link: AgentLink::new(self.conn_id, ctx.address()),
            info,
        });
        // `wait` holds every other message (commands, takeover) until the
        // Welcome is queued, so the agent always sees Welcome first.
        ctx.wait(
            async move {
                let registered = register.await;
                // Without the config watcher the agent is welcomed without config.
                let config = match config {
                    Some(config) => config.await.ok().flatten(),
                    None => None,
                };
                (registered, config)
            }
            .into_actor(self)
            .map(move |(registered, config), act, ctx| match registered {
                Ok(Ok(())) => act.welcome(ctx, identity, config, resume_after, certificate),
                Ok(Err(refusal)) => act.refuse(ctx, "full", refusal.to_string()),
                Err(error) => act.refuse(
                    ctx,
                    "unavailable",
                    format!("hub registry unavailable: {error}"),
                ),
            }),
        );
    }

    /// Answers an enrolled agent's `CertificateRequest` with a certificate
    /// for its new key, on this connection, which goes on meanwhile.
    fn renew(&mut self, ctx: &mut Context<Self>, csr: bytes::Bytes) {
        let refused = |error: String| IssuedCertificate {
            certificate: bytes::Bytes::new(),
            error,
        };
        let (Some(current), Some(identities)) = (
            self.certificate.clone(),
            self.services.directory.identities(),
        ) else {
            let answer = match self.certificate {
                None => refused("this connection has no certificate to renew".to_owned()),
                Some(_) => refused("the hub's enrollment is restarting; ask again".to_owned()),
            };
            return self.send_frame(ctx, HubMessage::from(answer));
        };
        ctx.spawn(
            identities
                .send(RenewCertificate { current, csr })
                .into_actor(self)
                .map(move |renewed, act, ctx| {
                    let answer = match renewed {
                        Ok(Ok(issued)) => IssuedCertificate {
                            certificate: issued.certificate,
                            error: String::new(),
                        },
                        Ok(Err(refusal)) => refused(refusal),
                        Err(error) => {
                            refused(format!("the hub's enrollment is unavailable: {error}"))
                        }
                    };
                    act.services
                        .metrics
                        .certificate_renewal(answer.error.is_empty());
                    act.send_frame(ctx, HubMessage::from(answer));
                }),
        );
    }

    fn not_hello(&mut self, ctx: &mut Context<Self>, name: &str) {
        self.refuse(
            ctx,
            "not_hello",
            format!("the first frame must be Hello, got {name}"),
        );
    }

    fn token_ok(&self, token: &str) -> bool {
        let tokens = &self.services.config.tokens;
        // Every token is compared, in constant time each, so timing tells
        // nothing about which one (or which prefix) matched.
        tokens.is_empty()
            || tokens
                .iter()
                .fold(subtle::Choice::from(0), |found, known| {
                    found | known.as_bytes().ct_eq(token.as_bytes())
                })
                .into()
    }

    /// Welcomes the agent, telling it the limits it must honour, and starts
    /// the connection's ordered publisher; `resume_after` is the last seq the
    /// agent knows acked.
    fn welcome(
        &mut self,
        ctx: &mut Context<Self>,
        identity: AgentIdentity,
        config: Option<ConfigSet>,
        resume_after: u64,
        certificate: bytes::Bytes,
    ) {
        let services = &self.services;
        services.metrics.handshake("ok");
        services.metrics.connections.inc();
        tracing::info!(peer = %self.peer, agent_id = %identity.agent_id, "agent connected");
        let clamp = |value: usize| u32::try_from(value).unwrap_or(u32::MAX);
        let welcome = Welcome {
            ok: true,
            agent_id: identity.agent_id.clone(),
            heartbeat_interval_secs: services.config.heartbeat_interval_secs,
            config,
            hub_id: services.hub_id.to_string(),
            redirect: Vec::new(),
            message: String::new(),
            max_record_bytes: services
                .link
                .max_record_bytes(
                    &identity,
                    services.config.data_form,
                    services.config.ack_mode,
                )
                .map_or(0, clamp),
            max_frame_bytes: clamp(services.config.max_frame_length),
            ping_interval_ms: u32::try_from(services.config.ping_interval_ms).unwrap_or(u32::MAX),
            ping_misses: services.config.ping_misses,
            certificate,
        };
        ctx.run_interval(services.config.ping_interval(), Self::check_liveness);
        ctx.run_interval(
            services.config.write_stall_timeout() / 4,
            Self::check_write_stall,
        );
        self.send_frame(ctx, HubMessage::from(welcome));
        self.pending = None;
        self.phase = Phase::Ready {
            identity,
            publishing: Publishing::NotStarted { resume_after },
        };
        self.last_heard = Instant::now();
    }

    /// Reads frames from `read_half` and writes through a writer task on
    /// `write_half`: the socket itself or its TLS session.
    fn serve<R, W>(&mut self, ctx: &mut Context<Self>, read_half: R, write_half: W)
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let config = &self.services.config;
        let codec = HubForwardCodec::with_max_frame_length(config.max_frame_length);
        let write_half = Watched {
            io: write_half,
            progress: self.progress.clone(),
        };
        let encoder = OutgoingCodec {
            frames: codec.clone(),
            tasks: self.tasks.clone(),
        };
        // Small buffers that grow when a frame needs it: most of a hub's
        // connections are idle most of the time.
        self.writer = Some(FrameWriter::with_buffer(
            write_half,
            encoder,
            config.write_queue,
            INITIAL_WRITE_BUFFER,
        ));
        let frames = FramedRead::with_capacity(read_half, codec, INITIAL_READ_BUFFER);
        let permits = self.permits.clone();
        let gated =
            futures::stream::unfold((frames, permits), |(mut frames, permits)| async move {
                let permit = permits.clone().acquire_owned().await.ok()?;
                let frame = frames.next().await?;
                Some(((frame, permit), (frames, permits)))
            });
        ctx.add_stream(gated);
    }

    fn check_liveness(&mut self, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        // A connection we stopped reading (in-flight bound reached) is not
        // silent; it is waiting for NATS.
        if self.permits.available_permits() == 0 {
            self.last_heard = Instant::now();
        }
        let silent = self.last_heard.elapsed();
        let dead_after = self.services.config.dead_after();
        if silent >= dead_after {
            return self.goodbye(
                ctx,
                CloseReason::Idle,
                "dead",
                format!(
                    "no frame for {} ms (limit {} ms)",
                    silent.as_millis(),
                    dead_after.as_millis()
                ),
            );
        }
        self.nonce += 1;
        self.send_frame(ctx, HubMessage::from(Ping { nonce: self.nonce }));
    }

    fn on_batch(&mut self, ctx: &mut Context<Self>, batch: RawBatch, permit: OwnedSemaphorePermit) {
        let Phase::Ready { identity, .. } = &self.phase else {
            return;
        };
        if batch.seq == 0 {
            return self.goodbye(
                ctx,
                CloseReason::ProtocolError,
                "protocol_error",
                "a batch with seq 0 (seqs start at 1)".to_owned(),
            );
        }
        let metrics = &self.services.metrics;
        metrics.records_in.inc_by(batch.records.len() as u64);
        metrics.bytes_in.inc_by(batch.frame_bytes as u64);
        // Framework records are the only ones the hub reads itself.
        if let Some(tracker) = self.services.directory.tracker() {
            let heartbeats = batch.records.iter().filter(|record| {
                matches!(
                    record.data_type,
                    data_type::AGENT_HEARTBEAT | data_type::PLUGIN_HEARTBEAT
                )
            });
            for raw in heartbeats {
                match raw.decode() {
                    Ok(record) => tracker.do_send(HeartbeatReceived {
                        agent_id: identity.agent_id.clone(),
                        record,
                    }),
                    // The forwarding walk accepted it, so prost does too.
                    Err(error) => {
                        tracing::warn!(agent_id = %identity.agent_id, %error, "heartbeat record not readable")
                    }
                }
            }
        }
        self.publish(InFlight { batch, permit });
    }

    /// Hands a batch to the connection's publisher, starting it for the
    /// first batch. While shutting down the batch is not acked and the agent
    /// re-sends it to the next hub.
    fn publish(&mut self, batch: InFlight) {
        let Phase::Ready {
            identity,
            publishing,
        } = &mut self.phase
        else {
            return;
        };
        if let Publishing::NotStarted { resume_after } = *publishing {
            let services = &self.services;
            let publisher = services.link.publisher(
                identity.clone(),
                services.config.ack_mode,
                services.config.data_form,
                services.config.publish_timeout(),
                services.metrics.clone(),
            );
            let (batches, queue) = mpsc::unbounded_channel();
            let task = actix::spawn(publish_in_order(
                queue,
                publisher,
                services.metrics.clone(),
                self.writer.as_ref().map(FrameWriter::sender),
                resume_after,
            ));
            *publishing = Publishing::Running { batches, task };
        }
        if let Publishing::Running { batches, .. } = publishing {
            let _ = batches.send(batch);
        }
    }

    fn on_ready_message(&mut self, ctx: &mut Context<Self>, kind: Kind) {
        let Phase::Ready { identity, .. } = &self.phase else {
            return;
        };
        match kind {
            // The forwarding codec delivers batches as `AgentFrame::Batch`.
            Kind::Batch(_) => {}
            Kind::TaskResult(result) => {
                let done = TaskDone {
                    agent_id: identity.agent_id.clone(),
                    result,
                };
                let directory = &self.services.directory;
                if let Some(batcher) = directory.batcher() {
                    batcher.do_send(done.clone());
                }
                match directory.router() {
                    Some(router) => router.do_send(done),
                    None => {
                        tracing::warn!(agent_id = %done.agent_id, "command router is down; task result only batched")
                    }
                }
            }
            Kind::Pong(_) => {}
            Kind::CertificateRequest(request) => self.renew(ctx, request.csr),
            Kind::Hello(_) => self.goodbye(
                ctx,
                CloseReason::ProtocolError,
                "protocol_error",
                "Hello sent twice on one connection".to_owned(),
            ),
        }
    }
}

/// Publishes the connection's batches in order and acks each once NATS
/// accepted it and every batch before it. Runs until the connection drops
/// its sender (or aborts the task when it stops: what was not acked is
/// re-sent by the agent).
///
/// In JetStream mode the PubAcks of several batches (up to the in-flight
/// bound, which the read permits enforce) are awaited at once, so the agent
/// link is not idle for a round trip per batch; acks still go out in seq
/// order.
///
/// Acks never go down: a batch at or below the highest seq seen is a resend,
/// published again (JetStream drops the duplicates) and acked with the last
/// acked seq. A batch beyond the next seq means the ones between never came:
/// they are counted and reported as a loss event.
async fn publish_in_order(
    mut batches: mpsc::UnboundedReceiver<InFlight>,
    mut publisher: BatchPublisher,
    metrics: HubMetrics,
    writer: Option<FrameSender<Outgoing>>,
    resume_after: u64,
) {
    let Some(writer) = writer else { return };
    let mut highest_seen = resume_after;
    let mut last_acked = resume_after;
    let mut accepting = FuturesOrdered::new();
    let mut open = true;
    while open || !accepting.is_empty() {
        tokio::select! {
            biased;
            Some((seq, permit)) = accepting.next(), if !accepting.is_empty() => {
                last_acked = std::cmp::max(last_acked, seq);
                let ack = HubMessage::from(Ack { seq: last_acked });
                if writer.send(Outgoing::from(ack)).await.is_err() {
                    return;
                }
                drop::<OwnedSemaphorePermit>(permit);
                metrics.acks.inc();
            }
            next = batches.recv(), if open => {
                let Some(InFlight { batch, permit }) = next else {
                    open = false;
                    continue;
                };
                let seq = batch.seq;
                if seq <= highest_seen {
                    metrics.resent_batches.inc();
                } else if seq > highest_seen + 1 {
                    metrics.gap_batches.inc_by(seq - highest_seen - 1);
                    publisher
                        .report_loss(publisher.loss(LossKind::SeqGap, highest_seen + 1, seq - 1))
                        .await;
                }
                highest_seen = highest_seen.max(seq);
                let prepared = publisher.prepare(batch).await;
                let accepted = publisher.send(prepared).await;
                accepting.push_back(async move {
                    accepted.await;
                    (seq, permit)
                });
            }
        }
    }
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(socket) = self.socket.take() else {
            return ctx.stop();
        };
        let socket = match TcpStream::from_std(socket) {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!(peer = %self.peer, %error, "cannot adopt accepted socket");
                return ctx.stop();
            }
        };
        let _ = socket.set_nodelay(true);
        // From the first byte on: a TLS handshake that never ends is as
        // silent as a Hello that never comes.
        ctx.run_later(self.services.config.handshake_timeout(), |act, ctx| {
            if matches!(act.phase, Phase::Handshake) {
                let timeout = act.services.config.handshake_timeout_ms;
                act.refuse(ctx, "timeout", format!("no Hello within {timeout} ms"));
            }
        });
        // A plaintext hub reads frames at once; a TLS client is recognised
        // by what its first record looks like as a frame length.
        let Some(acceptor) = self
            .services
            .tls
            .as_ref()
            .map(|tls| tls.now().acceptor.clone())
        else {
            let (read, write) = socket.into_split();
            return self.serve(ctx, read, write);
        };
        let (hub_id, max_frame_length) = (
            self.services.hub_id.clone(),
            self.services.config.max_frame_length,
        );
        let refusal = move || plaintext_refusal(&hub_id, max_frame_length);
        ctx.spawn(
            open(socket, acceptor, refusal)
                .into_actor(self)
                .map(|opened, act, ctx| match opened {
                    Opened::Tls(stream) => {
                        let certificate = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(<[_]>::first)
                            .map(|der| AgentCertificate::parse(der));
                        let (read, write) = tokio::io::split(*stream);
                        act.serve(ctx, read, write);
                        match certificate {
                            Some(Ok(certificate)) => act.certificate = Some(certificate),
                            Some(Err(error)) => act.refuse(
                                ctx,
                                "certificate_refused",
                                format!("the agent certificate is not readable: {error}"),
                            ),
                            None => {}
                        }
                    }
                    Opened::Closed => {
                        act.services.metrics.handshake("closed");
                        act.closing = true;
                        ctx.stop();
                    }
                    Opened::Refused { outcome, message } => {
                        tracing::info!(peer = %act.peer, outcome, %message, "handshake refused");
                        act.services.metrics.handshake(outcome);
                        act.closing = true;
                        act.close_reason = message;
                        ctx.stop();
                    }
                }),
        );
    }

    fn stopping(&mut self, ctx: &mut Context<Self>) -> Running {
        // The publisher holds a sender of the writer; without it the writer
        // can flush what is queued (the Goodbye) and close.
        if let Phase::Ready { publishing, .. } = &self.phase {
            publishing.abort();
        }
        // The feeding future holds a sender too, and its frame is not wanted now.
        if let Some(feeding) = self.feeding.take() {
            ctx.cancel_future(feeding);
        }
        let Some(writer) = self.writer.take() else {
            return Running::Stop;
        };
        let abort = writer.abort_handle();
        if self.stalled {
            // Nothing queued will ever be written; dropping the write half
            // lets the socket close.
            abort.abort();
            return Running::Stop;
        }
        let last = self.last_frame.take();
        // Bounded: a peer that reads nothing must not keep the actor (or the
        // writer task and its socket) alive.
        let timeout = self.services.config.shutdown_timeout();
        let close = async move {
            if let Some(last) = last {
                writer.send(last).await?;
            }
            writer.close().await
        };
        ctx.wait(
            async move { tokio::time::timeout(timeout, close).await }
                .into_actor(self)
                .map(move |closed, act, ctx| {
                    if !matches!(closed, Ok(Ok(()))) {
                        abort.abort();
                        tracing::debug!(peer = %act.peer, ?closed, "last frames not written");
                    }
                    ctx.stop();
                }),
        );
        Running::Continue
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if let Phase::Ready {
            identity,
            publishing,
        } = &self.phase
        {
            publishing.abort();
            self.services.metrics.connections.dec();
            // A registry that is down lost its map anyway (rest-for-one
            // restarts the connections after it).
            let directory = &self.services.directory;
            if let Some(registry) = directory.registry() {
                registry.do_send(Unregister {
                    agent_id: identity.agent_id.clone(),
                    conn_id: self.conn_id,
                    reason: self.close_reason.clone(),
                });
            }
            // A router that is down lost its pending tasks with it.
            if let Some(router) = directory.router() {
                router.do_send(AgentGone {
                    agent_id: identity.agent_id.clone(),
                    conn_id: self.conn_id,
                });
            }
            tracing::info!(peer = %self.peer, agent_id = %identity.agent_id, reason = %self.close_reason, "agent disconnected");
        }
    }
}

impl StreamHandler<Gated> for Connection {
    fn handle(&mut self, (frame, permit): Gated, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.last_heard = Instant::now();
        let frame = match frame {
            Ok(frame) => frame,
            Err(CodecError::FrameTooLarge { length, .. })
                if matches!(self.phase, Phase::Handshake)
                    && length >> 24 == u64::from(TLS_HANDSHAKE_RECORD) =>
            {
                // A TLS record header read as a frame length: it cannot read a Welcome.
                let message = "the agent speaks TLS; this hub's agent link is plaintext \
                               (tls.insecure = true)";
                tracing::info!(peer = %self.peer, outcome = "tls_on_plaintext", message, "handshake refused");
                self.services.metrics.handshake("tls_on_plaintext");
                self.closing = true;
                self.close_reason = message.to_owned();
                return ctx.stop();
            }
            Err(error) => {
                let message = format!("bad frame: {error}");
                return match self.phase {
                    Phase::Ready { .. } => {
                        self.goodbye(ctx, CloseReason::ProtocolError, "protocol_error", message)
                    }
                    _ => self.refuse(ctx, "bad_frame", message),
                };
            }
        };
        match (&self.phase, frame) {
            (Phase::Ready { .. }, AgentFrame::Batch(batch)) => self.on_batch(ctx, batch, permit),
            (_, AgentFrame::Other(kind)) => {
                self.services
                    .metrics
                    .bytes_in
                    .inc_by(kind_len(&kind) as u64);
                match (&self.phase, *kind) {
                    (Phase::Handshake, Kind::Hello(hello)) => self.on_hello(ctx, hello),
                    (Phase::Handshake, other) => self.not_hello(ctx, kind_name(&other)),
                    // `wait` in on_hello keeps frames from arriving while registering.
                    (Phase::Registering, _) => {}
                    (Phase::Ready { .. }, kind) => self.on_ready_message(ctx, kind),
                }
            }
            (Phase::Handshake, AgentFrame::Batch(_)) => self.not_hello(ctx, "Batch"),
            (Phase::Registering, AgentFrame::Batch(_)) => {}
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        if !self.closing {
            if matches!(self.phase, Phase::Handshake) {
                self.services.metrics.handshake("closed");
            } else {
                self.services.metrics.close("eof");
            }
            self.close(ctx, None, "connection closed by the agent".to_owned());
        }
    }
}

/// The encoded length of a decoded frame's message (the frame's length but
/// for the wrapper's own few bytes).
fn kind_len(kind: &Kind) -> usize {
    match kind {
        Kind::Hello(hello) => hello.encoded_len(),
        Kind::Batch(batch) => batch.encoded_len(),
        Kind::TaskResult(result) => result.encoded_len(),
        Kind::Pong(pong) => pong.encoded_len(),
        Kind::CertificateRequest(request) => request.encoded_len(),
    }
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Hello(_) => "Hello",
        Kind::Batch(_) => "Batch",
        Kind::TaskResult(_) => "TaskResult",
        Kind::Pong(_) => "Pong",
        Kind::CertificateRequest(_) => "CertificateRequest",
    }
}

/// What a plaintext agent is told on the TLS port.
/// Why an agent without a certificate, asking for no enrollment, is refused.
const NOT_ENROLLED: &str = "this hub identifies agents by the certificate it issues them at \
     enrollment: give the agent an enrollment token (`herd-hub token create`; `token` in \
     herd-agent.toml) and it enrolls at its next connection";

const PLAINTEXT_ON_TLS: &str = "this hub's agent link is TLS; give the agent tls.ca_fingerprint \
     (logged by the hub at start) or tls.ca_file, or set tls.insecure = true on both sides";
/// How long a refused plaintext client's bytes are read after the refusal,
/// so closing with unread data does not reset the connection before the
/// client read it.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The frame a plaintext client on the TLS port gets: a refusing `Welcome`
/// it can read and show.
fn plaintext_refusal(hub_id: &str, max_frame_length: usize) -> BytesMut {
    let welcome = Welcome {
        ok: false,
        message: PLAINTEXT_ON_TLS.to_owned(),
        hub_id: hub_id.to_owned(),
        ..Welcome::default()
    };
    let mut frame = BytesMut::new();
    let mut codec = HubForwardCodec::with_max_frame_length(max_frame_length);
    // Encoding into memory cannot fail; a Welcome is far below any frame limit.
    let _ = codec.encode(Encoded::new(&HubMessage::from(welcome)), &mut frame);
    frame
}

/// A socket of the TLS port after its first byte told which protocol the
/// peer speaks.
enum Opened {
    /// The peer closed before sending anything (a port check, say).
    Closed,
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Refused {
        outcome: &'static str,
        message: String,
    },
}

/// Looks at the first byte (a TLS record starts with 0x16, a frame's length
/// with 0x00) and runs the TLS handshake, or refuses a plaintext peer with a
/// `Welcome` it can read.
async fn open(
    socket: TcpStream,
    acceptor: TlsAcceptor,
    refusal: impl FnOnce() -> BytesMut,
) -> Opened {
    let mut first = [0u8; 1];
    if !matches!(socket.peek(&mut first).await, Ok(1)) {
        return Opened::Closed;
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        refuse_plaintext(socket, &refusal()).await;
        return Opened::Refused {
            outcome: "plaintext",
            message: "a plaintext agent on the TLS port".to_owned(),
        };
    }
    match acceptor.accept(socket).await {
        Ok(stream) => Opened::Tls(Box::new(stream)),
        Err(error) => Opened::Refused {
            outcome: "tls_failed",
            message: format!("TLS handshake failed: {error}"),
        },
    }
}

async fn refuse_plaintext(mut socket: TcpStream, refusal: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if socket.write_all(refusal).await.is_err() || socket.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

impl Handler<Close> for Connection {
    type Result = ();

    fn handle(&mut self, close: Close, ctx: &mut Context<Self>) {
        match close.kind {
            CloseKind::Superseded => {
                self.goodbye(ctx, CloseReason::Superseded, "superseded", close.message);
            }
            CloseKind::Unavailable => {
                self.goodbye(ctx, CloseReason::Shutdown, "unavailable", close.message);
            }
            CloseKind::Revoked { revoked_at_ms } => {
                // A certificate issued after the revocation is a new enrollment.
                if self.certificate.as_ref().is_some_and(|certificate| {
                    crate::enrollment::unix_ms(certificate.issued_at) <= revoked_at_ms
                }) {
                    self.goodbye(ctx, CloseReason::Revoked, "revoked", close.message);
                }
            }
            CloseKind::Shutdown => {
                let message = close.message;
                let Phase::Ready { publishing, .. } = &mut self.phase else {
                    return self.goodbye(ctx, CloseReason::Shutdown, "shutdown", message);
                };
                // Let the acks of what is already in flight go out first, within bounds.
                let Publishing::Running { mut task, .. } =
                    std::mem::replace(publishing, Publishing::Stopped)
                else {
                    return self.goodbye(ctx, CloseReason::Shutdown, "shutdown", message);
                };
                let timeout = self.services.config.shutdown_timeout();
                let drain = async move {
                    if tokio::time::timeout(timeout, &mut task).await.is_err() {
                        task.abort();
                    }
                };
                ctx.wait(drain.into_actor(self).map(move |(), act, ctx| {
                    act.goodbye(ctx, CloseReason::Shutdown, "shutdown", message);
                }));
            }
        }
    }
}

impl Handler<SendCommand> for Connection {
    type Result = Result<(), CommandRefused>;

    fn handle(&mut self, send: SendCommand, ctx: &mut Context<Self>) -> Self::Result {
        if self.closing {
            return Err(CommandRefused::Closing);
        }
        let frame = Outgoing::from(HubMessage::from(send.command));
        match send.deadline {
            Some(deadline) => self.queue_task(ctx, frame, deadline),
            None => {
                self.send_frame(ctx, frame);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_encoder_drops_a_task_past_its_deadline_and_writes_the_rest() {
        let metrics = HubMetrics::new();
        let tasks = Arc::new(TaskBacklog {
            unwritten: AtomicUsize::new(0),
            expired: metrics.expired_tasks.clone(),
        });
        let mut codec = OutgoingCodec {
            frames: HubForwardCodec::new(),
            tasks: tasks.clone(),
        };
        let task = |deadline| Outgoing {
            deadline: Some(deadline),
            ..Outgoing::from(HubMessage::from(Ping { nonce: 1 }))
        };
        tasks.accepted();
        tasks.accepted();
        let mut written = bytes::BytesMut::new();
        let gave_up = Instant::now();
        codec.encode(task(gave_up), &mut written).expect("encodes");
        assert!(written.is_empty());
        codec
            .encode(task(gave_up + Duration::from_secs(60)), &mut written)
            .expect("encodes");
        let one_frame = written.len();
        assert!(one_frame > 0);
        codec
            .encode(
                Outgoing::from(HubMessage::from(Ping { nonce: 2 })),
                &mut written,
            )
            .expect("encodes");
        assert_eq!(written.len(), 2 * one_frame);
        assert_eq!(tasks.unwritten(), 0);
        assert_eq!(metrics.expired_tasks.get(), 1);
    }
}
