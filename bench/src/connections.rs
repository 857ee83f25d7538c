//! Connections: accept + handshake of K idle agents, the server's RSS per
//! idle connection, and how long until all are back after a kill -9 and restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_tls::rustls::ClientConfig;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::BenchError;
use crate::procs::{self, Server};
use crate::wire::{self, Welcomes};

/// Handshakes in progress at once (a burst of 10,000 SYNs would overflow the
/// listen backlog and measure SYN retransmission instead).
const GATE: usize = 256;
/// Pause between an agent's reconnection attempts.
pub(crate) const RETRY: Duration = Duration::from_millis(100);

/// What one server measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionFigures {
    /// Time from the first connect to the K-th welcome.
    pub(crate) accept: Duration,
    /// RSS growth of the server per idle connection, in bytes.
    pub(crate) rss_per_connection: f64,
    /// Time from the kill to the K-th welcome of the restarted server.
    pub(crate) back: Duration,
    /// SYNs dropped by a full listen queue over both (machine wide).
    pub(crate) listen_overflows: u64,
}

/// Runs the three measurements against `server` with `agents` idle agents,
/// over TLS with `tls`.
pub(crate) async fn measure(
    server: &mut Server,
    prefix: &str,
    agents: u64,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
) -> Result<ConnectionFigures, BenchError> {
    let pid = server
        .pid()
        .ok_or_else(|| BenchError::Process("server not running".into()))?;
    let before = procs::rss_kib(pid)?;
    let overflows_before = procs::listen_overflows()?;
    let welcomes = Arc::new(Welcomes::default());
    let gate = Arc::new(Semaphore::new(GATE));
    let addr = server.addr();
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for n in 0..agents {
        let (gate, welcomes) = (gate.clone(), welcomes.clone());
        tasks.spawn(wire::idle_agent(
            addr,
            format!("{prefix}-{n}"),
            tls.clone(),
            gate,
            welcomes,
            RETRY,
        ));
    }
    welcomes.reach(agents, timeout).await?;
    let accept = started.elapsed();
    let after = procs::rss_kib(pid)?;
    let killed = Instant::now();
    server.restart()?;
    welcomes.reach(2 * agents, timeout).await?;
    let back = killed.elapsed();
    let listen_overflows = procs::listen_overflows()?.saturating_sub(overflows_before);
    tasks.shutdown().await;
    Ok(ConnectionFigures {
        accept,
        rss_per_connection: after.saturating_sub(before) as f64 * 1024.0 / agents as f64,
        back,
        listen_overflows,
    })
}
