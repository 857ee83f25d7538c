//! The batcher: collects records, cuts batches and owns the agent's disk
//! spool ([`herd_spool::Spool`] under `<state_dir>/spool`).
//!
//! A batch is cut when the oldest pending record is `flush_interval` old or
//! as soon as the count or byte bound is reached; the flush timer only runs
//! while records are pending, so an idle agent does not wake up for it. A cut
//! batch is appended to the spool, which gives it its seq (from its ledger:
//! never reused, across restarts and crashes); the spool is synced on its
//! fsync interval, and only synced batches are sent. A batch leaves the spool
//! when the hub's ack covers it, so unacked batches survive a stop, a crash or
//! a hub outage of any length the disk bound allows.
//!
//! When the spool refuses a batch (full with `when_full = "block"`, or the
//! disk cannot take it), the batch waits in order and is retried after every
//! ack and every flush interval; a sync that fails is retried every flush
//! interval too. The reason is logged once per episode (one ERROR, however
//! long the disk stays full) and reported in the heartbeat
//! (`agent.spool_error`). An episode ends once syncs have succeeded with no
//! batch waiting for [`REFUSAL_SETTLE`]: an append that only lands in the
//! spool's write buffer does not end it, and a disk that is freed and filled
//! again and again (acks racing a fast source on a nearly full disk) makes
//! one episode, not one ERROR per flap. While the disk is short of room acks
//! are applied as they come, not once per fsync interval.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use herd_codec::BatchRecords;
use herd_codec::proto::Record;
use herd_spool::{Spool, SpoolError};
use prost::Message as _;
use tokio::sync::{oneshot, watch};

use crate::config::AgentConfig;
use crate::messages::{
    Acked, BatcherStats, DurableBatches, Flush, GetBatcherStats, Ingest, NotifyDurable,
    ReadDurable, RecordsDurable, SetRecordLimit, WatchDurable, WhenDrained,
};
use crate::state::StateDir;

/// Bytes a record adds to a batch on top of its own encoding (field tag and
/// length prefix).
const RECORD_OVERHEAD: usize = 6;
/// How long the spool must take everything before a refusal episode ends.
const REFUSAL_SETTLE: Duration = Duration::from_secs(2);

/// Collects records into batches; see the module docs.
#[derive(Debug)]
pub(crate) struct Batcher {
    flush_interval: Duration,
    max_records: usize,
    max_bytes: usize,
    pending: Vec<Record>,
    pending_bytes: usize,
    flush_timer: Option<SpawnHandle>,
    /// `None` only once the batcher has stopped and closed it.
    spool: Option<Spool>,
    /// Batches cut but refused by the spool, oldest first, each with the
    /// ingest count at its end.
    stalled: VecDeque<(BatchRecords, u64)>,
    /// Records ingested so far (taken or refused).
    ingested: u64,
    /// Appended batches not yet known durable: `(seq, ingest count at its end)`.
    appended: VecDeque<(u64, u64)>,
    /// Ingest count up to which everything is durable or refused.
    durable_count: u64,
    /// Waiting for `durable_count` to reach a count.
    durable_waiters: Vec<(u64, NotifyDurable)>,
    retry_timer: Option<SpawnHandle>,
    sync_timer: Option<SpawnHandle>,
    /// The last sync failed: the next one waits a flush interval.
    sync_failing: bool,
    /// The hub's latest ack, applied to the spool at most once per fsync
    /// interval: each applied ack rewrites and fsyncs the ledger.
    ack_to: u64,
    ack_timer: Option<SpawnHandle>,
    ack_interval: Duration,
    /// Why the spool refused the last batch or sync, until the episode ends
    /// (see the module docs).
    spool_error: Option<String>,
    /// During an episode: since when the spool has taken everything.
    settling_since: Option<Instant>,
    /// The last ack could not be applied (logged once until one is).
    ack_failing: bool,
    durable: watch::Sender<u64>,
    drained: Vec<oneshot::Sender<()>>,
    /// Senders waiting for the spool to take batches again.
    room_waiters: Vec<oneshot::Sender<()>>,
    records_in: u64,
    oversized_records: u64,
    /// The connected hub's record limit (from `Welcome`), if it told one.
    hub_record_limit: Option<usize>,
}

impl Batcher {
    /// A batcher over the spool in `state` (recovered, a torn tail cut).
    pub(crate) fn new(config: &AgentConfig, state: StateDir) -> Result<Self, SpoolError> {
        let (spool, recovery) = Spool::open(state.spool_dir(), config.spool.clone())?;
        if recovery.corrupt_bytes_cut > 0 || recovery.ledger_rebuilt {
            tracing::warn!(?recovery, "spool recovered with damage (cut and counted)");
        } else {
            tracing::info!(
                unacked_batches = recovery.records,
                next_seq = recovery.next_seq,
                "spool opened"
            );
        }
        let durable = watch::Sender::new(spool.durable_seq());
        Ok(Self {
            flush_interval: Duration::from_millis(config.batch.flush_interval_ms),
            max_records: config.batch.max_records,
            max_bytes: config.batch.max_bytes,
            pending: Vec::new(),
            pending_bytes: 0,
            flush_timer: None,
            spool: Some(spool),
            stalled: VecDeque::new(),
            ingested: 0,
            appended: VecDeque::new(),
            durable_count: 0,
            durable_waiters: Vec::new(),
            retry_timer: None,
            sync_timer: None,
            sync_failing: false,
            ack_to: 0,
            ack_timer: None,
            ack_interval: config.spool.fsync_interval(),
            spool_error: None,
            settling_since: None,
            ack_failing: false,
            durable,
            drained: Vec::new(),
            room_waiters: Vec::new(),
            records_in: 0,
            oversized_records: 0,
            hub_record_limit: None,
        })
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.flush_timer.take() {
            ctx.cancel_future(timer);
        }
        if self.pending.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.stalled
            .push_back((BatchRecords::new(records), self.ingested));
        self.append_stalled(ctx);
    }

    /// Appends the waiting batches in order until the spool refuses one.
    fn append_stalled(&mut self, ctx: &mut Context<Self>) {
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        while let Some((batch, end)) = self.stalled.front() {
            match spool.append(batch.bytes()) {
                Ok(seq) => {
                    self.appended.push_back((seq, *end));
                    self.stalled.pop_front();
                }
                Err(error) => {
                    self.refused(
                        &error,
                        "the spool refuses batches; they wait (in memory) and are retried",
                    );
                    if self.retry_timer.is_none() {
                        self.retry_timer = Some(ctx.run_later(self.flush_interval, |act, ctx| {
                            act.retry_timer = None;
                            act.append_stalled(ctx);
                        }));
                    }
                    break;
                }
            }
        }
        if self.stalled.is_empty() {
            for waiter in self.room_waiters.drain(..) {
                // The sender may have stopped waiting.
                let _ = waiter.send(());
            }
        }
        self.arm_sync(ctx);
    }

    /// Syncs when the spool's fsync interval says so; after a failed sync,
    /// a flush interval later (not at once, over and over).
    fn arm_sync(&mut self, ctx: &mut Context<Self>) {
        if self.sync_timer.is_some() {
            return;
        }
        let Some(due) = self.spool.as_ref().and_then(Spool::sync_due) else {
            return;
        };
        let wait = if self.sync_failing {
            self.flush_interval
        } else {
            due.saturating_duration_since(Instant::now())
        };
        self.sync_timer = Some(ctx.run_later(wait, |act, ctx| {
            act.sync_timer = None;
            act.sync();
            act.arm_sync(ctx);
        }));
    }

    /// Makes what was appended durable and tells the sender.
    fn sync(&mut self) {
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        let synced = spool.sync();
        self.sync_failing = synced.is_err();
        // Even a failed sync (a full disk) may have made part of it durable:
        // that part is sent, so its acks can free the disk.
        let durable = spool.durable_seq();
        self.durable.send_if_modified(|seen| {
            let newer = durable > *seen;
            *seen = (*seen).max(durable);
            newer
        });
        while let Some(&(seq, end)) = self.appended.front()
            && seq <= durable
        {
            self.durable_count = self.durable_count.max(end);
            self.appended.pop_front();
        }
        self.notify_durable();
        match synced {
            Ok(_) if self.stalled.is_empty() => self.settle(),
            Ok(_) => {}
            Err(error) => self.refused(&error, "cannot make the spool durable"),
        }
    }

    /// The spool refused a batch or a sync: logged at the start of an episode.
    fn refused(&mut self, error: &SpoolError, what: &str) {
        if self.spool_error.is_none() {
            tracing::error!(%error, waiting = self.stalled.len(), "{what}");
        }
        self.spool_error = Some(error.to_string());
        self.settling_since = None;
    }

    /// The spool took everything: the episode ends once that lasted.
    fn settle(&mut self) {
        if self.spool_error.is_none() {
            return;
        }
        let since = *self.settling_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= REFUSAL_SETTLE
            && let Some(error) = self.spool_error.take()
        {
            self.settling_since = None;
            tracing::info!(%error, "the spool takes batches again");
        }
    }

    /// Everything ingested so far is durable or was refused once nothing is
    /// pending, waiting or unsynced.
    fn settled_count(&self) -> u64 {
        if self.pending.is_empty() && self.stalled.is_empty() && self.appended.is_empty() {
            self.ingested
        } else {
            self.durable_count
        }
    }

    fn notify_durable(&mut self) {
        let settled = self.settled_count();
        self.durable_waiters.retain(|(count, waiter)| {
            if *count > settled {
                return true;
            }
            waiter.to.do_send(RecordsDurable(waiter.through));
            false
        });
    }

    fn is_drained(&self) -> bool {
        self.pending.is_empty()
            && self.stalled.is_empty()
            && self
                .spool
                .as_ref()
                .is_none_or(|spool| spool.stats().depth_records == 0)
    }

    fn notify_drained(&mut self) {
        if self.is_drained() {
            self.drained.drain(..).for_each(|tx| {
                let _ = tx.send(());
            });
        }
    }
}

impl Actor for Batcher {
    type Context = Context<Self>;

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        // Whatever is pending still goes to disk; what was acked leaves it.
        self.flush(ctx);
        self.sync();
        self.apply_ack(ctx);
        Running::Stop
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if !self.stalled.is_empty() {
            tracing::warn!(
                batches = self.stalled.len(),
                reason = ?self.spool_error,
                "batches the spool refused are lost with this stop"
            );
        }
        // Closing syncs what is left and records the exact next seq.
        if let Some(spool) = self.spool.take()
            && let Err(error) = spool.close()
        {
            tracing::error!(%error, "cannot close the spool");
        }
    }
}

impl Handler<SetRecordLimit> for Batcher {
    type Result = ();

    fn handle(&mut self, SetRecordLimit(limit): SetRecordLimit, _: &mut Context<Self>) {
        self.hub_record_limit = (limit > 0).then_some(limit as usize);
    }
}

impl Handler<Ingest> for Batcher {
    /// Resolves once the records are taken: at once, or — while the spool
    /// refuses batches — when it takes them again. Senders that wait for it
    /// (the plugins) are slowed to what the spool takes.
    type Result = ResponseFuture<()>;

    fn handle(&mut self, Ingest(records): Ingest, ctx: &mut Context<Self>) -> Self::Result {
        for record in records {
            self.records_in += 1;
            self.ingested += 1;
            let size = record.encoded_len() + RECORD_OVERHEAD;
            let hub_limit = self.hub_record_limit.unwrap_or(usize::MAX);
            if size > self.max_bytes || record.encoded_len() > hub_limit {
                self.oversized_records += 1;
                // Logged with decaying frequency: a plugin that only makes
                // oversize records must not flood the log; the count is exact.
                if self.oversized_records.is_power_of_two() {
                    tracing::warn!(
                        source = %record.source,
                        data_type = record.data_type,
                        size,
                        batch_max = self.max_bytes,
                        hub_max = ?self.hub_record_limit,
                        refused = self.oversized_records,
                        "refusing a record larger than batch.max_bytes or than the hub can forward"
                    );
                }
                continue;
            }
            if self.pending_bytes + size > self.max_bytes {
                self.flush(ctx);
            }
            self.pending.push(record);
            self.pending_bytes += size;
            if self.pending.len() >= self.max_records {
                self.flush(ctx);
            }
        }
        if !self.pending.is_empty() && self.flush_timer.is_none() {
            self.flush_timer = Some(ctx.run_later(self.flush_interval, |act, ctx| {
                act.flush_timer = None;
                act.flush(ctx);
            }));
        }
        if self.stalled.is_empty() {
            return Box::pin(async {});
        }
        let (room, taken) = oneshot::channel();
        self.room_waiters.push(room);
        Box::pin(async move {
            let _ = taken.await;
        })
    }
}

impl Handler<NotifyDurable> for Batcher {
    type Result = ();

    fn handle(&mut self, notify: NotifyDurable, _: &mut Context<Self>) {
        self.durable_waiters.push((self.ingested, notify));
        self.notify_durable();
    }
}

impl Handler<Flush> for Batcher {
    type Result = ();

    /// Cuts what is pending, makes everything durable and applies the
    /// latest ack, now.
    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.flush(ctx);
        self.sync();
        self.apply_ack(ctx);
    }
}

impl Handler<WatchDurable> for Batcher {
    type Result = MessageResult<WatchDurable>;

    fn handle(&mut self, _: WatchDurable, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.durable.subscribe())
    }
}

impl Handler<ReadDurable> for Batcher {
    type Result = MessageResult<ReadDurable>;

    fn handle(&mut self, read: ReadDurable, _: &mut Context<Self>) -> Self::Result {
        let Some(spool) = self.spool.as_ref() else {
            return MessageResult(Err("the spool is closed".to_owned()));
        };
        MessageResult(
            spool
                .unacked(read.from, read.max_bytes)
                .map(|batches| DurableBatches {
                    batches: batches
                        .into_iter()
                        .map(|(seq, bytes)| (seq, BatchRecords::from_stored(bytes)))
                        .collect(),
                    acked: spool.stats().acked_seq,
                })
                .map_err(|error| error.to_string()),
        )
    }
}

impl Batcher {
    /// Applies the latest ack to the spool (deleting what it covers).
    fn apply_ack(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.ack_timer.take() {
            ctx.cancel_future(timer);
        }
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        if self.ack_to <= spool.stats().acked_seq {
            return;
        }
        if let Err(error) = spool.ack(self.ack_to) {
            // Once per episode: acks come one per batch.
            if !self.ack_failing {
                tracing::warn!(seq = self.ack_to, %error,
                    "cannot apply the hub's ack; the next one tries again");
            }
            self.ack_failing = true;
            return;
        }
        if self.ack_failing {
            tracing::info!(seq = self.ack_to, "acks are applied again");
            self.ack_failing = false;
        }
        // An ack may have made room.
        self.append_stalled(ctx);
        self.notify_drained();
    }
}

impl Handler<Acked> for Batcher {
    type Result = ();

    /// Acks come one per batch; they are applied together at most once per
    /// fsync interval, and at once while batches wait for room or the disk
    /// is short of it.
    fn handle(&mut self, Acked(seq): Acked, ctx: &mut Context<Self>) {
        self.ack_to = self.ack_to.max(seq);
        let short_of_room = self.spool.as_ref().is_some_and(Spool::is_short_of_room);
        if !self.stalled.is_empty() || self.ack_interval.is_zero() || short_of_room {
            return self.apply_ack(ctx);
        }
        if self.ack_timer.is_none() {
            self.ack_timer = Some(ctx.run_later(self.ack_interval, |act, ctx| {
                act.ack_timer = None;
                act.apply_ack(ctx);
            }));
        }
    }
}

impl Handler<WhenDrained> for Batcher {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: WhenDrained, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.drained.push(tx);
        self.notify_drained();
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<GetBatcherStats> for Batcher {
    type Result = MessageResult<GetBatcherStats>;

    fn handle(&mut self, _: GetBatcherStats, _: &mut Context<Self>) -> Self::Result {
        let spool = self.spool.as_ref().map(Spool::stats).unwrap_or_default();
        MessageResult(BatcherStats {
            records_in: self.records_in,
            pending_records: self.pending.len(),
            stalled_batches: self.stalled.len(),
            last_seq: spool.next_seq.saturating_sub(1),
            oversized_records: self.oversized_records,
            spool_error: self.spool_error.clone(),
            spool,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_codec::Encoded;
    use herd_codec::proto::agent_message::Kind;
    use herd_codec::proto::{AgentMessage, Batch};

    fn record(n: usize) -> Record {
        Record {
            data_type: 2000,
            source: "test".into(),
            body: vec![0; n].into(),
            ..Record::default()
        }
    }

    fn decode(seq: u64, records: &BatchRecords) -> Batch {
        let frame = Encoded::batch(seq, records);
        match AgentMessage::decode(frame.body().clone()).unwrap().kind {
            Some(Kind::Batch(batch)) => batch,
            other => panic!("not a batch: {other:?}"),
        }
    }

    fn config() -> AgentConfig {
        let mut config = AgentConfig::default();
        config.batch.max_records = 3;
        config.batch.max_bytes = 1000;
        config
    }

    async fn durable(batcher: &Addr<Batcher>, from: u64) -> Vec<Batch> {
        let read = batcher
            .send(ReadDurable {
                from,
                max_bytes: usize::MAX,
            })
            .await
            .unwrap()
            .unwrap();
        read.batches
            .iter()
            .map(|(seq, records)| decode(*seq, records))
            .collect()
    }

    #[actix::test]
    async fn batches_are_cut_by_count_numbered_by_the_spool_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let batcher = Batcher::new(&config(), state.clone()).unwrap().start();
        let mut watch = batcher.send(WatchDurable).await.unwrap();
        batcher
            .send(Ingest((0..7).map(|_| record(1)).collect()))
            .await
            .unwrap();
        // Two batches of three are cut; they become durable at the next sync.
        watch.wait_for(|durable| *durable >= 2).await.unwrap();
        let batches = durable(&batcher, 1).await;
        let shape: Vec<_> = batches.iter().map(|b| (b.seq, b.records.len())).collect();
        assert_eq!(shape, [(1, 3), (2, 3)]);
        // The seventh record waits for the timer; an explicit flush cuts and syncs it.
        batcher.send(Flush).await.unwrap();
        assert_eq!(*watch.borrow(), 3);
        batcher.send(Acked(1)).await.unwrap();
        batcher.send(Acked(2)).await.unwrap();
        // Acks are applied together, once per fsync interval (or at a flush).
        let stats = batcher.send(GetBatcherStats).await.unwrap();
        assert_eq!(stats.spool.acked_seq, 0);
        batcher.send(Flush).await.unwrap();
        let stats = batcher.send(GetBatcherStats).await.unwrap();
        assert_eq!((stats.spool.depth_records, stats.spool.acked_seq), (1, 2));
        drop(watch);
        // The last address gone, the batcher stops and closes its spool.
        drop(batcher);

        // A stop closes the spool; a new batcher finds the unacked batch and
        // numbering goes on without a gap.
        let dir_state = StateDir::open(dir.path()).unwrap();
        let restarted = loop {
            match Batcher::new(&config(), dir_state.clone()) {
                Ok(batcher) => break batcher.start(),
                // The old one may still hold the spool's lock for a moment.
                Err(SpoolError::Locked { .. }) => tokio::task::yield_now().await,
                Err(error) => panic!("{error}"),
            }
        };
        let left = durable(&restarted, 1).await;
        assert_eq!(left.iter().map(|b| b.seq).collect::<Vec<_>>(), [3]);
        restarted.send(Ingest(vec![record(1)])).await.unwrap();
        restarted.send(Flush).await.unwrap();
        let all: Vec<u64> = durable(&restarted, 1).await.iter().map(|b| b.seq).collect();
        assert_eq!(all, [3, 4]);
        let stats = restarted.send(GetBatcherStats).await.unwrap();
        assert_eq!(stats.spool.acked_seq, 2);
    }

    #[actix::test]
    async fn byte_bound_and_oversized_records() {
        let dir = tempfile::tempdir().unwrap();
        let batcher = Batcher::new(&config(), StateDir::open(dir.path()).unwrap())
            .unwrap()
            .start();
        batcher
            .send(Ingest(vec![record(600), record(600), record(5000)]))
            .await
            .unwrap();
        let stats = batcher.send(GetBatcherStats).await.unwrap();
        assert_eq!(stats.oversized_records, 1);
        assert_eq!(stats.pending_records, 1);
        batcher.send(Flush).await.unwrap();
        let batches = durable(&batcher, 1).await;
        let sizes: Vec<usize> = batches.iter().map(|b| b.records.len()).collect();
        assert_eq!(sizes, [1, 1], "600 + 600 bytes exceed 1000");
    }

    #[actix::test]
    async fn records_over_the_hubs_limit_are_refused_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let batcher = Batcher::new(&config(), StateDir::open(dir.path()).unwrap())
            .unwrap()
            .start();
        batcher.send(SetRecordLimit(300)).await.unwrap();
        batcher
            .send(Ingest(vec![record(200), record(400), record(100)]))
            .await
            .unwrap();
        let stats = batcher.send(GetBatcherStats).await.unwrap();
        assert_eq!(stats.oversized_records, 1, "only the 400-byte record");
        assert_eq!(stats.pending_records, 2);
        // 0 means the hub does not know its limit: only batch.max_bytes applies.
        batcher.send(SetRecordLimit(0)).await.unwrap();
        batcher.send(Ingest(vec![record(400)])).await.unwrap();
        let stats = batcher.send(GetBatcherStats).await.unwrap();
        assert_eq!(stats.oversized_records, 1);
    }

    #[actix::test]
    async fn drain_resolves_once_everything_is_acked() {
        let dir = tempfile::tempdir().unwrap();
        let batcher = Batcher::new(&config(), StateDir::open(dir.path()).unwrap())
            .unwrap()
            .start();
        batcher.send(Ingest(vec![record(1)])).await.unwrap();
        batcher.send(Flush).await.unwrap();
        let drained = batcher.send(WhenDrained);
        batcher.send(Acked(1)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .expect("drained after the ack")
            .unwrap();
    }

    #[actix::test]
    async fn a_full_spool_keeps_batches_waiting_and_takes_them_after_an_ack() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config();
        config.spool.segment_bytes = 1024;
        config.spool.max_disk_bytes = 2048;
        config.batch.max_records = 1;
        let batcher = Batcher::new(&config, StateDir::open(dir.path()).unwrap())
            .unwrap()
            .start();
        // The sender is answered only once the spool took its records.
        let mut taken = Box::pin(batcher.send(Ingest((0..8).map(|_| record(400)).collect())));
        batcher.send(Flush).await.unwrap();
        assert!(
            futures::poll!(taken.as_mut()).is_pending(),
            "a full spool holds its senders back"
        );
        let stats = batcher.send(GetBatcherStats).await.unwrap();
        assert!(stats.stalled_batches > 0, "{stats:?}");
        assert!(stats.spool_error.is_some());
        let on_disk = stats.spool.depth_records;
        // Acks free room: the waiting batches go to disk, none is lost, and
        // the sender goes on.
        batcher.send(Acked(on_disk as u64)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), taken)
            .await
            .expect("answered once there is room")
            .unwrap();
        batcher.send(Flush).await.unwrap();
        let stats = batcher.send(GetBatcherStats).await.unwrap();
        assert_eq!(
            stats.spool.depth_records as u64 + stats.spool.acked_seq + stats.stalled_batches as u64,
            8
        );
        assert_eq!(stats.spool.dropped_records, 0);
    }
}
