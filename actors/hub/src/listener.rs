//! Accepts agent sockets and starts one Connection per socket under the
//! connections supervisor, on the worker arbiters round-robin.
//!
//! Hostile peers: a socket over its source's accept rate or the
//! pending-handshake bounds is closed at once, before a Connection exists
//! for it; when `accept` fails for lack of descriptors or memory, accepting
//! pauses with a backoff instead of retrying the failing call in a loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use nix::errno::Errno;
use tokio::net::{TcpListener, TcpStream};

use crate::Services;
use crate::accept_rate::AcceptRate;
use crate::connection::Connection;
use crate::pending::HandshakePermit;
use herd_supervision::{Backoff, ChildSpec, Retry, StartChild};

/// The first pause after `accept` ran out of resources; it doubles with
/// each failure up to [`ACCEPT_PAUSE_MAX`].
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
/// The longest pause: how late, at worst, accepting resumes after resources
/// came back.
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// At most one WARN about refused sockets, and one about running out of
/// resources, per interval: a flood must not turn into a flood of log lines.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Accepts TCP connections and hands each socket to a new [`Connection`],
/// a temporary child of the connections supervisor on the next worker arbiter.
#[derive(Debug)]
pub(crate) struct Listener {
    /// Shared with the child spec, so a restarted Listener keeps the port.
    socket: Arc<std::net::TcpListener>,
    /// The socket in tokio's form, from `started` on.
    listener: Option<Arc<TcpListener>>,
    services: Services,
    workers: Arc<[ArbiterHandle]>,
    next_worker: usize,
    /// Pauses while `accept` runs out of resources; its attempt count is the
    /// failures of the current episode.
    exhausted: Retry,
    /// Near the limit, episodes come and go with every socket; only some
    /// are logged, and only those say when they end.
    episodes: LogThrottle,
    episode_logged: bool,
    refusals: LogThrottle,
    accept_rate: AcceptRate,
}

impl Listener {
    /// A listener on an already bound socket, spreading connections over `workers`.
    pub(crate) fn new(
        socket: Arc<std::net::TcpListener>,
        services: Services,
        workers: Arc<[ArbiterHandle]>,
    ) -> Self {
        let pauses = Backoff::exponential(ACCEPT_PAUSE_MIN, ACCEPT_PAUSE_MAX, 0.0)
            .expect("the constant pauses are a valid backoff");
        let accept_rate = AcceptRate::new(
            services.config.accept_rate_per_source,
            services.config.accept_burst_per_source,
        );
        Self {
            socket,
            listener: None,
            services,
            workers,
            next_worker: 0,
            exhausted: Retry::new(pauses),
            episodes: LogThrottle::default(),
            episode_logged: false,
            refusals: LogThrottle::default(),
            accept_rate,
        }
    }

    /// Waits for the next socket; one accept at a time, so a pause is
    /// simply not asking for the next one yet.
    fn accept_next(&mut self, ctx: &mut Context<Self>) {
        let Some(listener) = self.listener.clone() else {
            return;
        };
        ctx.spawn(
            async move { listener.accept().await }
                .into_actor(self)
                .map(|accepted, act, ctx| act.on_accepted(accepted, ctx)),
        );
    }

    fn on_accepted(
        &mut self,
        accepted: std::io::Result<(TcpStream, SocketAddr)>,
        ctx: &mut Context<Self>,
    ) {
        let metrics = &self.services.metrics;
        match accepted {
            Ok((socket, peer)) => {
                let failures = self.exhausted.attempt();
                if failures > 0 {
                    if std::mem::take(&mut self.episode_logged) {
                        tracing::info!(failures, "accepting agent sockets again");
                    }
                    self.exhausted.succeeded();
                }
                metrics.sockets_accepted.inc();
                self.admit(socket, peer);
                self.accept_next(ctx);
            }
            Err(error) if out_of_resources(&error) => {
                metrics.accept_error("out_of_resources");
                // One line per episode at most; its end says how many
                // failures it took. `held_back`: episodes since the last line.
                if self.exhausted.attempt() == 0
                    && let Some(held_back) = self.episodes.allow(Instant::now())
                {
                    self.episode_logged = true;
                    tracing::warn!(%error, held_back, "accept failed for lack of descriptors or memory; pausing accepts until it works again");
                }
                // The pending connection stays in the backlog, so an
                // immediate retry would fail the same way, in a hot loop.
                let pause = self.exhausted.next_delay();
                ctx.run_later(pause, Self::accept_next);
            }
            // A peer gone before its accept (ECONNABORTED, a network error
            // passed on): that socket is lost, the listener is not.
            Err(error) => {
                metrics.accept_error("other");
                tracing::debug!(%error, "accept failed");
                self.accept_next(ctx);
            }
        }
    }

    /// Starts a Connection for the socket if its source is within its
    /// accept rate and it gets a pending handshake's place; otherwise drops
    /// it, which closes it before it cost anything. The rate comes first: a
    /// socket it refuses never takes a place, even for a moment.
    fn admit(&mut self, socket: TcpStream, peer: SocketAddr) {
        if let Err(refusal) = self.accept_rate.try_accept(peer.ip()) {
            return self.refused(peer, refusal.reason(), &refusal);
        }
        match self.services.pending.try_acquire(peer.ip()) {
            Ok(permit) => self.start_connection(socket, peer, permit),
            Err(refusal) => self.refused(peer, refusal.reason(), &refusal),
        }
    }

    fn refused(&mut self, peer: SocketAddr, reason: &'static str, refusal: &dyn std::fmt::Display) {
        self.services.metrics.refused_socket(reason);
        // `held_back`: the refusals since the last line, counted but not
        // logged, whatever their reason: one line for all the bounds.
        if let Some(held_back) = self.refusals.allow(Instant::now()) {
            tracing::warn!(%peer, reason, %refusal, held_back, "closing sockets over the accept rate or the pending-handshake bounds");
        }
    }

    fn start_connection(&mut self, socket: TcpStream, peer: SocketAddr, permit: HandshakePermit) {
        // The socket moves to another arbiter's runtime as a std socket.
        let socket = match socket.into_std() {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!(%peer, %error, "cannot hand over accepted socket");
                return;
            }
        };
        let Some(connections) = self.services.directory.connections() else {
            tracing::warn!(%peer, "connections supervisor is restarting; socket dropped");
            return;
        };
        let worker = self.workers[self.next_worker % self.workers.len()].clone();
        self.next_worker = self.next_worker.wrapping_add(1);
        let conn_id = self.services.next_conn_id();
        let services = self.services.clone();
        let spec = ChildSpec::once(format!("conn-{conn_id}"), move || {
            Connection::new(services, conn_id, peer, socket, permit)
        })
        .shutdown_timeout(self.services.config.shutdown_timeout())
        .arbiter(worker);
        connections.do_send(StartChild(spec));
    }
}

/// Whether a failed `accept` means the process or the kernel ran out of
/// something (descriptors, buffers, memory), which lasts until something is
/// released, rather than one peer's trouble.
fn out_of_resources(error: &std::io::Error) -> bool {
    error.raw_os_error().is_some_and(|code| {
        matches!(
            Errno::from_raw(code),
            Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM
        )
    })
}

/// Lets one log line through per [`LOG_INTERVAL`] and counts the
/// ones it held back.
#[derive(Debug, Default)]
struct LogThrottle {
    last: Option<Instant>,
    held_back: u64,
}

impl LogThrottle {
    /// `Some(lines held back since the last one)` when a line may go out now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < LOG_INTERVAL => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

impl Actor for Listener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let listener = self.socket.try_clone().and_then(|socket| {
            socket.set_nonblocking(true)?;
            TcpListener::from_std(socket)
        });
        match listener {
            Ok(listener) => self.listener = Some(Arc::new(listener)),
            Err(error) => {
                tracing::error!(%error, "cannot listen on the agent socket");
                return herd_supervision::stop_abnormal(ctx, format!("agent socket: {error}"));
            }
        }
        self.accept_next(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_resources_is_descriptors_buffers_and_memory_only() {
        for errno in [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM] {
            let error = std::io::Error::from_raw_os_error(errno as i32);
            assert!(out_of_resources(&error), "{errno}");
        }
        for errno in [Errno::ECONNABORTED, Errno::EPROTO, Errno::EPERM] {
            let error = std::io::Error::from_raw_os_error(errno as i32);
            assert!(!out_of_resources(&error), "{errno}");
        }
        assert!(!out_of_resources(&std::io::ErrorKind::Other.into()));
    }

    #[test]
    fn the_throttle_lets_one_line_per_interval_through_and_counts_the_rest() {
        let mut throttle = LogThrottle::default();
        let start = Instant::now();
        assert_eq!(throttle.allow(start), Some(0));
        assert_eq!(throttle.allow(start + Duration::from_secs(1)), None);
        assert_eq!(throttle.allow(start + Duration::from_secs(9)), None);
        assert_eq!(throttle.allow(start + LOG_INTERVAL), Some(2));
        assert_eq!(throttle.allow(start + LOG_INTERVAL), None);
    }
}
