//! Ingest: records/s from simulated agents through a server to a NATS
//! subscriber, and the same records published directly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use prost::Message as _;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::error::{BenchError, within};
use crate::wire::{self, DATA_TYPE};

/// Sizes of one ingest run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IngestSize {
    /// Simulated agents.
    pub(crate) agents: u64,
    /// Batches each agent sends.
    pub(crate) batches: u64,
    /// Records in a batch.
    pub(crate) per_batch: u64,
    /// Unacked batches an agent keeps in flight.
    pub(crate) window: u64,
    /// Bound of one run.
    pub(crate) timeout: Duration,
}

impl IngestSize {
    fn total(&self) -> u64 {
        self.agents * self.batches * self.per_batch
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Throughput {
    /// Records per second, from the start signal to the last record counted.
    pub(crate) per_second: f64,
    /// Slow-consumer events the subscriber's client reported (drops).
    pub(crate) slow_consumer: u64,
}

/// A subscriber on `herd.data.>` that counts `expected` messages.
struct Counter {
    done: tokio::task::JoinHandle<Result<Instant, BenchError>>,
    slow: Arc<AtomicU64>,
}

impl Counter {
    async fn start(nats_url: &str, expected: u64, timeout: Duration) -> Result<Self, BenchError> {
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
            .connect(nats_url)
            .await
            .map_err(BenchError::nats("subscriber connect"))?;
        let mut subscriber = client
            .subscribe("herd.data.>")
            .await
            .map_err(BenchError::nats("subscribe"))?;
        // A probe sent on the same connection proves the SUB is in place.
        client
            .publish("herd.data.probe.0", "probe".into())
            .await
            .map_err(BenchError::nats("probe"))?;
        let probe = within(
            "the subscription probe",
            Duration::from_secs(5),
            subscriber.next(),
        )
        .await?;
        if probe.is_none() {
            return Err(BenchError::Protocol("the subscription closed".into()));
        }
        let done = tokio::spawn(async move {
            let _client = client;
            let mut count = 0;
            let counting = async {
                while count < expected {
                    if subscriber.next().await.is_none() {
                        break;
                    }
                    count += 1;
                }
            };
            within("records at the subscriber", timeout, counting)
                .await
                .map_err(|error| {
                    BenchError::Protocol(format!("{error} ({count} of {expected})"))
                })?;
            if count < expected {
                return Err(BenchError::Protocol(format!(
                    "subscription ended after {count} of {expected} records"
                )));
            }
            Ok(Instant::now())
        });
        Ok(Self { done, slow })
    }

    async fn finish(self, started: Instant, total: u64) -> Result<Throughput, BenchError> {
        let ended = self
            .done
            .await
            .map_err(|error| BenchError::Process(format!("counter task: {error}")))??;
        Ok(Throughput {
            per_second: total as f64 / ended.duration_since(started).as_secs_f64(),
            slow_consumer: self.slow.load(Ordering::Relaxed),
        })
    }
}

/// Records sent by `size.agents` simulated agents to the server at `addr`
/// (the hub or the baseline forwarder), counted at the subscriber.
pub(crate) async fn through_server(
    nats_url: &str,
    addr: SocketAddr,
    prefix: &str,
    size: IngestSize,
) -> Result<Throughput, BenchError> {
    let counter = Counter::start(nats_url, size.total(), size.timeout).await?;
    let start = Arc::new(Barrier::new(size.agents as usize + 1));
    let mut agents = JoinSet::new();
    for n in 0..size.agents {
        let (start, agent_id) = (start.clone(), format!("{prefix}-{n}"));
        agents.spawn(async move {
            let socket = wire::handshake(addr, &agent_id).await;
            // Every agent reaches the barrier, even a failed one, so none waits forever.
            start.wait().await;
            wire::send_batches(socket?, size.batches, size.per_batch, size.window).await
        });
    }
    start.wait().await;
    let started = Instant::now();
    while let Some(result) = agents.join_next().await {
        result.map_err(|error| BenchError::Process(format!("agent task: {error}")))??;
    }
    counter.finish(started, size.total()).await
}

/// The same records published straight to NATS by one client.
pub(crate) async fn direct(nats_url: &str, size: IngestSize) -> Result<Throughput, BenchError> {
    let counter = Counter::start(nats_url, size.total(), size.timeout).await?;
    let client = async_nats::connect(nats_url)
        .await
        .map_err(BenchError::nats("publisher connect"))?;
    let started = Instant::now();
    let publishing = async {
        for agent in 0..size.agents {
            let agent_id = format!("direct-{agent}");
            let subject = format!("herd.data.{agent_id}.{DATA_TYPE}");
            for seq in 1..=size.batches {
                for index in 0..size.per_batch {
                    let record = wire::record(seq * size.per_batch + index);
                    let envelope = wire::envelope(&agent_id, "direct", seq, index as u32, record);
                    client
                        .publish(subject.clone(), envelope.encode_to_vec().into())
                        .await
                        .map_err(BenchError::nats("publish"))?;
                }
            }
        }
        client.flush().await.map_err(BenchError::nats("flush"))
    };
    within("the direct publisher", size.timeout, publishing).await??;
    counter.finish(started, size.total()).await
}
