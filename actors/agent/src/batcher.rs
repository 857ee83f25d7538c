//! The batcher: collects records, cuts numbered batches and owns the unacked
//! window ([`UnackedWindow`]).
//!
//! A batch is cut when the oldest pending record is `flush_interval` old or
//! as soon as the count or byte bound is reached; the flush timer only runs
//! while records are pending, so an idle agent does not wake up for it.
//! Every seq is persisted when assigned, so numbering continues across
//! restarts.

use std::time::Duration;

use actix::prelude::*;
use herd_codec::Encoded;
use herd_codec::proto::{AgentMessage, Batch, Record};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};

use crate::config::AgentConfig;
use crate::error::StateError;
use crate::messages::{
    Acked, Attach, Attachment, BatcherStats, Flush, GetBatcherStats, Ingest, SetRecordLimit,
    WhenDrained,
};
use crate::state::{SeqState, StateDir};
use crate::window::{UnackedBatch, UnackedWindow};

/// Bytes a record adds to a batch on top of its own encoding (field tag and
/// length prefix).
const RECORD_OVERHEAD: usize = 6;

/// Collects records into batches; see the module docs.
#[derive(Debug)]
pub(crate) struct Batcher {
    state: StateDir,
    flush_interval: Duration,
    max_records: usize,
    max_bytes: usize,
    pending: Vec<Record>,
    pending_bytes: usize,
    flush_timer: Option<SpawnHandle>,
    seq: SeqState,
    spool: UnackedWindow,
    feed: Option<mpsc::UnboundedSender<Encoded<AgentMessage>>>,
    drained: Vec<oneshot::Sender<()>>,
    records_in: u64,
    oversized_records: u64,
    /// The connected hub's record limit (from `Welcome`), if it told one.
    hub_record_limit: Option<usize>,
}

impl Batcher {
    /// A batcher that continues the numbering persisted in `state`.
    pub(crate) fn new(config: &AgentConfig, state: StateDir) -> Result<Self, StateError> {
        let seq = state.load_seq()?;
        Ok(Self {
            flush_interval: Duration::from_millis(config.batch.flush_interval_ms),
            max_records: config.batch.max_records,
            max_bytes: config.batch.max_bytes,
            pending: Vec::new(),
            pending_bytes: 0,
            flush_timer: None,
            spool: UnackedWindow::new(
                config.spool.max_batches,
                config.spool.max_bytes,
                seq.last_acked,
            ),
            seq,
            state,
            feed: None,
            drained: Vec::new(),
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
        self.seq.last_assigned += 1;
        let seq = self.seq.last_assigned;
        let records = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let count = records.len();
        let frame = Encoded::new(&AgentMessage::from(Batch { seq, records }));
        self.persist_seq();
        if let Some(feed) = &self.feed
            && feed.send(frame.clone()).is_err()
        {
            self.feed = None;
        }
        self.spool.push(UnackedBatch {
            seq,
            records: count,
            frame,
        });
    }

    fn persist_seq(&mut self) {
        self.seq.last_acked = self.spool.last_acked().min(self.seq.last_assigned);
        if let Err(e) = self.state.store_seq(self.seq) {
            // Numbering goes on in memory; only a restart could reuse seqs.
            tracing::error!(error = %e, "cannot persist the batch sequence number");
        }
    }

    fn is_drained(&self) -> bool {
        self.pending.is_empty() && self.spool.is_empty()
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
        // Whatever is pending still gets a seq and a place in the window.
        self.flush(ctx);
        Running::Stop
    }
}

impl Handler<SetRecordLimit> for Batcher {
    type Result = ();

    fn handle(&mut self, SetRecordLimit(limit): SetRecordLimit, _: &mut Context<Self>) {
        self.hub_record_limit = (limit > 0).then_some(limit as usize);
    }
}

impl Handler<Ingest> for Batcher {
    type Result = ();

    fn handle(&mut self, Ingest(records): Ingest, ctx: &mut Context<Self>) {
        for record in records {
            self.records_in += 1;
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
    }
}

impl Handler<Flush> for Batcher {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.flush(ctx);
    }
}

impl Handler<Attach> for Batcher {
    type Result = MessageResult<Attach>;

    fn handle(&mut self, _: Attach, _: &mut Context<Self>) -> Self::Result {
        let (tx, live) = mpsc::unbounded_channel();
        self.feed = Some(tx);
        MessageResult(Attachment {
            backlog: self.spool.iter().map(|b| b.frame.clone()).collect(),
            live,
        })
    }
}

impl Handler<Acked> for Batcher {
    type Result = ();

    fn handle(&mut self, Acked(seq): Acked, _: &mut Context<Self>) {
        if seq > self.seq.last_assigned {
            tracing::warn!(
                seq,
                last_assigned = self.seq.last_assigned,
                "hub acked a seq this agent never assigned; ignoring it"
            );
            return;
        }
        if seq > self.spool.last_acked() {
            self.spool.ack(seq);
            self.persist_seq();
            self.notify_drained();
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
        MessageResult(BatcherStats {
            records_in: self.records_in,
            pending_records: self.pending.len(),
            last_seq: self.seq.last_assigned,
            oversized_records: self.oversized_records,
            spool: self.spool.stats(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_codec::proto::agent_message::Kind;

    fn record(n: usize) -> Record {
        Record {
            data_type: 2000,
            source: "test".into(),
            body: vec![0; n].into(),
            ..Record::default()
        }
    }

    fn decode(frame: &Encoded<AgentMessage>) -> Batch {
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

    #[actix::test]
    async fn count_bound_cuts_batches_and_seq_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let batcher = Batcher::new(&config(), state.clone()).unwrap().start();
        let mut attachment = batcher.send(Attach).await.unwrap();
        assert!(attachment.backlog.is_empty());
        batcher
            .send(Ingest((0..7).map(|_| record(1)).collect()))
            .await
            .unwrap();
        let first = decode(&attachment.live.recv().await.unwrap());
        let second = decode(&attachment.live.recv().await.unwrap());
        assert_eq!((first.seq, first.records.len()), (1, 3));
        assert_eq!((second.seq, second.records.len()), (2, 3));
        // The seventh record waits for the timer; an explicit flush cuts it.
        batcher.send(Flush).await.unwrap();
        assert_eq!(decode(&attachment.live.recv().await.unwrap()).seq, 3);
        batcher.send(Acked(2)).await.unwrap();
        let stats = batcher.send(GetBatcherStats).await.unwrap();
        assert_eq!(stats.spool.batches, 1);
        assert_eq!(stats.spool.last_acked, 2);

        let restarted = Batcher::new(&config(), state).unwrap().start();
        restarted.send(Ingest(vec![record(1)])).await.unwrap();
        restarted.send(Flush).await.unwrap();
        let backlog = restarted.send(Attach).await.unwrap().backlog;
        assert_eq!(decode(&backlog[0]).seq, 4);
        let stats = restarted.send(GetBatcherStats).await.unwrap();
        assert_eq!(stats.spool.last_acked, 2);
    }

    #[actix::test]
    async fn byte_bound_and_oversized_records() {
        let dir = tempfile::tempdir().unwrap();
        let batcher = Batcher::new(&config(), StateDir::open(dir.path()).unwrap())
            .unwrap()
            .start();
        let mut attachment = batcher.send(Attach).await.unwrap();
        batcher
            .send(Ingest(vec![record(600), record(600), record(5000)]))
            .await
            .unwrap();
        let first = decode(&attachment.live.recv().await.unwrap());
        assert_eq!(first.records.len(), 1, "600 + 600 bytes exceed 1000");
        let stats = batcher.send(GetBatcherStats).await.unwrap();
        assert_eq!(stats.oversized_records, 1);
        assert_eq!(stats.pending_records, 1);
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
    async fn timer_flushes_and_drain_resolves_on_ack() {
        tokio::time::pause();
        let dir = tempfile::tempdir().unwrap();
        let batcher = Batcher::new(&config(), StateDir::open(dir.path()).unwrap())
            .unwrap()
            .start();
        let mut attachment = batcher.send(Attach).await.unwrap();
        batcher.send(Ingest(vec![record(1)])).await.unwrap();
        let started = tokio::time::Instant::now();
        let batch = decode(&attachment.live.recv().await.unwrap());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_millis(110),
            "{waited:?}"
        );
        let drained = batcher.send(WhenDrained);
        batcher.do_send(Acked(batch.seq));
        tokio::time::timeout(Duration::from_secs(1), drained)
            .await
            .unwrap()
            .unwrap();
    }
}
