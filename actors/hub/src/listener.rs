//! Accepts agent sockets and starts one Connection per socket under the
//! connections supervisor, on the worker arbiters round-robin.

use std::sync::Arc;

use actix::prelude::*;
use tokio::net::TcpListener;

use crate::Services;
use crate::connection::Connection;
use herd_supervision::{ChildSpec, StartChild};

/// Accepts TCP connections and hands each socket to a new [`Connection`],
/// a temporary child of the connections supervisor on the next worker arbiter.
#[derive(Debug)]
pub(crate) struct Listener {
    /// Shared with the child spec, so a restarted Listener keeps the port.
    socket: Arc<std::net::TcpListener>,
    services: Services,
    workers: Arc<[ArbiterHandle]>,
    next_worker: usize,
}

impl Listener {
    /// A listener on an already bound socket, spreading connections over `workers`.
    pub(crate) fn new(
        socket: Arc<std::net::TcpListener>,
        services: Services,
        workers: Arc<[ArbiterHandle]>,
    ) -> Self {
        Self {
            socket,
            services,
            workers,
            next_worker: 0,
        }
    }

    fn start_connection(&mut self, socket: tokio::net::TcpStream, peer: std::net::SocketAddr) {
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
            Connection::new(services, conn_id, peer, socket)
        })
        .shutdown_timeout(self.services.config.shutdown_timeout())
        .arbiter(worker);
        connections.do_send(StartChild(spec));
    }
}

type Accepted = std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>;

impl Actor for Listener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let listener = self.socket.try_clone().and_then(|socket| {
            socket.set_nonblocking(true)?;
            TcpListener::from_std(socket)
        });
        let listener = match listener {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "cannot listen on the agent socket");
                return herd_supervision::stop_abnormal(ctx, format!("agent socket: {error}"));
            }
        };
        ctx.add_stream(futures::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await;
            Some((accepted, listener))
        }));
    }
}

impl StreamHandler<Accepted> for Listener {
    fn handle(&mut self, accepted: Accepted, _ctx: &mut Context<Self>) {
        match accepted {
            Ok((socket, peer)) => {
                self.services.metrics.sockets_accepted.inc();
                self.start_connection(socket, peer);
            }
            // EMFILE and friends: that socket is lost, the listener is not.
            Err(error) => tracing::warn!(%error, "accept failed"),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
