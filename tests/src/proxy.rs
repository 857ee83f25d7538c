//! A TCP proxy between agents and the hub that a test controls: it can cut
//! every connection mid-stream and refuse new ones, to simulate a network
//! that fails under a live session.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::process::{E2eError, io_error};

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    accepting: AtomicBool,
    accepted: AtomicU64,
    /// Connections being forwarded now.
    live: AtomicU64,
    /// Bumped by `cut`: every connection opened before the bump closes.
    generation: watch::Sender<u64>,
}

/// Forwards every connection to its loopback listen address to `upstream`.
///
/// ```no_run
/// # async fn demo() -> Result<(), herd_tests::process::E2eError> {
/// let proxy = herd_tests::proxy::TcpProxy::start("127.0.0.1:7400".parse().unwrap()).await?;
/// // Point agents at proxy.addr(); later:
/// proxy.cut();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self, E2eError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(io_error("binding the proxy"))?;
        let addr = listener
            .local_addr()
            .map_err(io_error("reading the proxy address"))?;
        let shared = Arc::new(Shared {
            upstream,
            accepting: AtomicBool::new(true),
            accepted: AtomicU64::new(0),
            live: AtomicU64::new(0),
            generation: watch::Sender::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self {
            addr,
            shared,
            accept_task,
        })
    }

    /// Where agents should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every connection open now, in both directions, whatever is in
    /// flight. New connections are still accepted (see [`TcpProxy::refuse`]).
    pub fn cut(&self) {
        self.shared
            .generation
            .send_modify(|generation| *generation += 1);
    }

    /// From now on, closes new connections as soon as they are accepted.
    pub fn refuse(&self) {
        self.shared.accepting.store(false, Ordering::SeqCst);
    }

    /// From now on, forwards new connections again.
    pub fn accept(&self) {
        self.shared.accepting.store(true, Ordering::SeqCst);
    }

    /// Connections forwarded so far (refused ones not counted).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open through the proxy right now (to the upstream too).
    pub fn live(&self) -> u64 {
        self.shared.live.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every
        // connection task and closes their sockets.
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                if !shared.accepting.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let generation = shared.generation.subscribe();
                connections.spawn(forward(client, shared.clone(), generation));
            }
            // Reap finished connection tasks so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn forward(mut client: TcpStream, shared: Arc<Shared>, mut generation: watch::Receiver<u64>) {
    generation.mark_unchanged();
    let Ok(mut server) = TcpStream::connect(shared.upstream).await else {
        // Upstream down: the client sees its connection close, as it would
        // with a hub that is not there.
        return;
    };
    shared.live.fetch_add(1, Ordering::SeqCst);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = generation.changed() => {}
    }
    shared.live.fetch_sub(1, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::TcpProxy;

    const WAIT: Duration = Duration::from_secs(5);

    /// An echo server; returns its address.
    async fn echo_server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn echo_once(stream: &mut TcpStream) -> std::io::Result<[u8; 4]> {
        stream.write_all(b"ping").await?;
        let mut answer = [0u8; 4];
        tokio::time::timeout(WAIT, stream.read_exact(&mut answer))
            .await
            .expect("bounded read")?;
        Ok(answer)
    }

    /// Reads until the peer closes; `true` when it did within [`WAIT`].
    async fn closed_by_peer(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(WAIT, stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn forwards_cuts_refuses_and_accepts_again() {
        let proxy = TcpProxy::start(echo_server().await).await.unwrap();
        let mut first = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(&echo_once(&mut first).await.unwrap(), b"ping");
        assert_eq!(proxy.accepted(), 1);

        proxy.cut();
        assert!(
            closed_by_peer(&mut first).await,
            "cut closes a live connection"
        );

        proxy.refuse();
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(
            closed_by_peer(&mut refused).await,
            "a refused connection is closed"
        );
        assert_eq!(proxy.accepted(), 1, "refused connections are not counted");

        proxy.accept();
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(&echo_once(&mut again).await.unwrap(), b"ping");
        assert_eq!(proxy.accepted(), 2);
    }

    #[tokio::test]
    async fn closes_clients_when_upstream_is_down() {
        let upstream = crate::hub::free_loopback_addr().unwrap();
        let proxy = TcpProxy::start(upstream).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(closed_by_peer(&mut client).await);
    }
}
