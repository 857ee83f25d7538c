//! Messages between the agent's actors.

use std::time::Duration;

use actix::{Message, Recipient};
use herd_codec::BatchRecords;
use herd_codec::proto::{ConfigSet, PluginStatus, Record, Task, TaskResult};
use herd_spool::SpoolStats;
use tokio::sync::watch;

use crate::report::PluginInfo;

/// Records for the batcher (from plugins, the heartbeat, the agent).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Ingest(pub Vec<Record>);

/// Asks the batcher for the highest durable seq, as a watch: the connector
/// sends batches up to it and waits for it to grow.
#[derive(Debug, Message)]
#[rtype(result = "watch::Receiver<u64>")]
pub(crate) struct WatchDurable;

/// Reads durable unacked batches from the spool, from seq `from` on, about
/// `max_bytes` of them (at least one).
#[derive(Debug, Message)]
#[rtype(result = "Result<DurableBatches, String>")]
pub(crate) struct ReadDurable {
    /// The first seq wanted.
    pub from: u64,
    /// Roughly how many bytes to read.
    pub max_bytes: usize,
}

/// What [`ReadDurable`] returns.
#[derive(Debug)]
pub(crate) struct DurableBatches {
    /// `(seq, records)`, in seq order.
    pub batches: Vec<(u64, BatchRecords)>,
    /// The spool's acked seq when they were read.
    pub acked: u64,
}

/// Batcher: tell `to` once every record ingested before this message is
/// durable in the spool (or was refused), answering with `through`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct NotifyDurable {
    /// Who to tell.
    pub to: Recipient<RecordsDurable>,
    /// What to tell it: the sender's own count of the records it ingested.
    pub through: u64,
}

/// The first `.0` records a plugin process sent are durable (see
/// [`NotifyDurable`]); the Plugin actor passes it on to its process.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct RecordsDurable(pub u64);

/// The largest record the connected hub can forward (`Welcome.max_record_bytes`;
/// 0: not known). Larger records are refused at the source and counted.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct SetRecordLimit(pub u32);

/// The hub acked everything up to `seq`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Acked(pub u64);

/// Cut a batch from the pending records now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Flush;

/// Resolves once nothing is pending or unacked.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct WhenDrained;

/// Asks the batcher for its counters.
#[derive(Debug, Message)]
#[rtype(result = "BatcherStats")]
pub(crate) struct GetBatcherStats;

/// The batcher's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BatcherStats {
    /// Records received.
    pub records_in: u64,
    /// Records not yet in a batch.
    pub pending_records: usize,
    /// Highest seq assigned.
    pub last_seq: u64,
    /// Batches cut but refused by the spool (full, or its disk failing), waiting.
    pub stalled_batches: usize,
    /// Records refused because one alone exceeds the batch size bound.
    pub oversized_records: u64,
    /// Why the spool refuses batches, while it does.
    pub spool_error: Option<String>,
    /// The disk spool.
    pub spool: SpoolStats,
}

/// The full desired plugin set pushed by the hub.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct ApplyHubConfig(pub ConfigSet);

/// A task for a plugin; answered with its result (or REJECTED / TIMEOUT /
/// FAILED from the agent).
#[derive(Debug, Message)]
#[rtype(result = "TaskResult")]
pub(crate) struct RunTask(pub Task);

/// The plugins as reported in `Hello`.
#[derive(Debug, Message)]
#[rtype(result = "Vec<PluginStatus>")]
pub(crate) struct ListPlugins;

/// Per-plugin details for the 1001 heartbeat records.
#[derive(Debug, Message)]
#[rtype(result = "Vec<PluginInfo>")]
pub(crate) struct GetPluginInfo;

/// Stop every plugin (stdin closed, then SIGTERM, then SIGKILL) and resolve
/// once all of them are reaped. Nothing is restarted afterwards.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct StopPlugins;

/// The heartbeat interval from the hub's `Welcome`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct SetHeartbeatInterval(pub Duration);

/// Stop the actor now (the orderly part is done by the caller).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Stop;
