//! The unacked window: every batch sent (or waiting to be sent) to the hub
//! until an `Ack` covers its seq.
//!
//! Batches are kept already encoded (one `AgentMessage` protobuf body each),
//! so the bound is on real bytes and a resend after a reconnect hands out
//! reference-counted copies instead of re-encoding. The window lives in
//! memory only: when it is full the *oldest* batches are dropped (the newest
//! data is usually the most useful) and counted, and the counts go into the
//! agent heartbeat. Unacked batches do not survive an agent restart; the
//! sequence numbers do (see [`super::state`]).

use std::collections::VecDeque;

use herd_codec::Encoded;
use herd_codec::proto::AgentMessage;

/// One encoded batch waiting for its ack.
#[derive(Debug, Clone)]
pub(crate) struct UnackedBatch {
    /// Its `Batch.seq`.
    pub seq: u64,
    /// How many records it holds.
    pub records: usize,
    /// The encoded `AgentMessage { batch }`, framed by the codec when sent.
    pub frame: Encoded<AgentMessage>,
}

/// Counters the heartbeat reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WindowStats {
    /// Batches held.
    pub batches: usize,
    /// Bytes held.
    pub bytes: usize,
    /// Highest acked seq.
    pub last_acked: u64,
    /// Batches dropped because the window was full.
    pub dropped_batches: u64,
    /// Records in those batches.
    pub dropped_records: u64,
}

/// Bounded, in-order store of unacked batches: beyond its bounds the oldest
/// batches are dropped and counted; acks are cumulative and never go back.
#[derive(Debug)]
pub(crate) struct UnackedWindow {
    batches: VecDeque<UnackedBatch>,
    bytes: usize,
    max_batches: usize,
    max_bytes: usize,
    last_acked: u64,
    dropped_batches: u64,
    dropped_records: u64,
}

impl UnackedWindow {
    /// An empty window holding at most `max_batches` batches and `max_bytes`
    /// bytes; `last_acked` is the persisted ack from a previous run.
    pub(crate) fn new(max_batches: usize, max_bytes: usize, last_acked: u64) -> Self {
        Self {
            batches: VecDeque::new(),
            bytes: 0,
            max_batches: max_batches.max(1),
            max_bytes,
            last_acked,
            dropped_batches: 0,
            dropped_records: 0,
        }
    }

    /// Appends a batch (seqs must increase), dropping the oldest batches
    /// while the bounds are exceeded. The new batch itself is always kept.
    pub(crate) fn push(&mut self, batch: UnackedBatch) {
        debug_assert!(self.batches.back().is_none_or(|b| b.seq < batch.seq));
        self.bytes += batch.frame.len();
        self.batches.push_back(batch);
        while self.batches.len() > 1
            && (self.batches.len() > self.max_batches || self.bytes > self.max_bytes)
        {
            if let Some(old) = self.batches.pop_front() {
                self.bytes -= old.frame.len();
                self.dropped_batches += 1;
                self.dropped_records += old.records as u64;
            }
        }
    }

    /// Forgets every batch up to and including `seq` (acks are cumulative)
    /// and returns how many were removed. An ack below the last one changes
    /// nothing.
    pub(crate) fn ack(&mut self, seq: u64) -> usize {
        self.last_acked = self.last_acked.max(seq);
        let mut removed = 0;
        while self.batches.front().is_some_and(|b| b.seq <= seq) {
            if let Some(old) = self.batches.pop_front() {
                self.bytes -= old.frame.len();
                removed += 1;
            }
        }
        removed
    }

    /// The unacked batches, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &UnackedBatch> {
        self.batches.iter()
    }

    /// Whether nothing is waiting for an ack.
    pub(crate) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Highest acked seq.
    pub(crate) fn last_acked(&self) -> u64 {
        self.last_acked
    }

    /// Current counters.
    pub(crate) fn stats(&self) -> WindowStats {
        WindowStats {
            batches: self.batches.len(),
            bytes: self.bytes,
            last_acked: self.last_acked,
            dropped_batches: self.dropped_batches,
            dropped_records: self.dropped_records,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use herd_codec::proto::{Batch, Record};

    /// A batch whose frame is exactly `len` bytes (`len` >= 16).
    fn batch(seq: u64, len: usize) -> UnackedBatch {
        let message = |body: usize| {
            AgentMessage::from(Batch {
                seq,
                records: vec![Record {
                    body: vec![0; body].into(),
                    ..Record::default()
                }],
            })
        };
        let overhead = Encoded::new(&message(0)).len();
        let frame = (0..len)
            .map(|body| Encoded::new(&message(body)))
            .find(|frame| frame.len() == len)
            .unwrap_or_else(|| panic!("no frame of {len} bytes (overhead {overhead})"));
        UnackedBatch {
            seq,
            records: 2,
            frame,
        }
    }

    #[test]
    fn acks_are_cumulative_and_monotonic() {
        let mut spool = UnackedWindow::new(10, 1000, 0);
        (1..=5).for_each(|seq| spool.push(batch(seq, 20)));
        assert_eq!(spool.ack(3), 3);
        assert_eq!(spool.stats().bytes, 40);
        assert_eq!(spool.ack(2), 0);
        assert_eq!(spool.last_acked(), 3);
        assert_eq!(spool.ack(9), 2);
        assert!(spool.is_empty());
        assert_eq!(spool.last_acked(), 9);
    }

    #[test]
    fn byte_bound_drops_oldest_and_counts() {
        let mut spool = UnackedWindow::new(100, 50, 0);
        (1..=4).for_each(|seq| spool.push(batch(seq, 20)));
        let stats = spool.stats();
        assert_eq!(stats.batches, 2);
        assert_eq!(stats.bytes, 40);
        assert_eq!(stats.dropped_batches, 2);
        assert_eq!(stats.dropped_records, 4);
        assert_eq!(spool.iter().map(|b| b.seq).collect::<Vec<_>>(), [3, 4]);
    }

    #[test]
    fn an_oversized_batch_is_still_kept() {
        let mut spool = UnackedWindow::new(100, 5, 0);
        spool.push(batch(1, 60));
        assert_eq!(spool.stats().batches, 1);
        assert_eq!(spool.stats().dropped_batches, 0);
    }
}
