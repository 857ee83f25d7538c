//! Seqs are never reused: across reopens, crashes, full acks and lost ledgers.

use std::fs;
use std::path::Path;

use herd_spool::{Spool, SpoolConfig, SpoolError};

fn config(seq_reservation: u64) -> SpoolConfig {
    SpoolConfig {
        segment_bytes: 1024,
        max_disk_bytes: 1024 * 1024,
        seq_reservation,
        ..SpoolConfig::default()
    }
}

fn fill(spool: &mut Spool, n: u64) -> u64 {
    let mut last = 0;
    for _ in 0..n {
        last = spool.append(&[b'x'; 100]).expect("append");
    }
    last
}

fn seg_count(dir: &Path) -> usize {
    fs::read_dir(dir)
        .expect("read dir")
        .filter(|e| {
            e.as_ref()
                .expect("entry")
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count()
}

#[test]
fn seqs_go_on_after_every_record_was_acked_and_its_segment_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(dir.path(), config(1024)).expect("open");
    let last = fill(&mut spool, 30);
    spool.sync().expect("sync");
    spool.ack(last).expect("ack");
    assert_eq!(
        seg_count(dir.path()),
        1,
        "only the segment appends go to is left"
    );
    drop(spool);

    let (mut spool, recovery) = Spool::open(dir.path(), config(1024)).expect("reopen");
    assert_eq!(recovery.records, 0);
    assert!(spool.append(b"next").expect("append") > last);
    drop(spool);

    // Even without the ledger the newest segment's name and records bound the next seq.
    fs::remove_file(dir.path().join("ledger")).expect("remove ledger");
    let (mut spool, recovery) = Spool::open(dir.path(), config(1024)).expect("reopen");
    assert!(recovery.ledger_rebuilt);
    assert!(spool.append(b"after rebuild").expect("append") > last);
}

#[test]
fn a_crash_before_sync_reuses_only_seqs_that_were_never_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(dir.path(), config(4)).expect("open");
    let synced = fill(&mut spool, 3);
    spool.sync().expect("sync");
    // 4..=7, buffered only (all in the first segment: closing a segment would sync it).
    let unsynced = fill(&mut spool, 4);
    assert_eq!(unsynced, 7);
    // Never readable, so never sent.
    assert_eq!(
        spool.unacked(synced + 1, usize::MAX).expect("unacked"),
        vec![]
    );
    drop(spool); // a crash: the buffer is gone

    let (mut spool, recovery) = Spool::open(dir.path(), config(4)).expect("reopen");
    assert_eq!(recovery.records, synced);
    let next = spool.append(b"after crash").expect("append");
    assert_eq!(
        next,
        synced + 1,
        "right after the last durable record: no gap"
    );
    spool.sync().expect("sync");
    let seqs: Vec<u64> = spool
        .unacked(0, usize::MAX)
        .expect("unacked")
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, next]);
}

#[test]
fn a_clean_close_skips_no_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(dir.path(), config(1024)).expect("open");
    let last = fill(&mut spool, 10);
    spool.close().expect("close");
    let (mut spool, recovery) = Spool::open(dir.path(), config(1024)).expect("reopen");
    assert_eq!(recovery.records, 10, "close syncs");
    assert_eq!(spool.append(b"next").expect("append"), last + 1);
}

#[test]
fn many_reopens_never_hand_out_a_durable_seq_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut highest_durable = 0;
    for round in 0..5 {
        let (mut spool, _) = Spool::open(dir.path(), config(3)).expect("open");
        let mut last = 0;
        for _ in 0..7 {
            let seq = spool.append(b"r").expect("append");
            assert!(
                seq > highest_durable && seq > last,
                "round {round}: seq {seq} after durable {highest_durable}, last {last}"
            );
            last = seq;
        }
        if round % 2 == 0 {
            highest_durable = spool.sync().expect("sync");
        }
    }
}

#[test]
fn an_unwritable_ledger_stops_appends_without_assigning_a_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(dir.path(), config(2)).expect("open");
    assert_eq!(fill(&mut spool, 2), 2); // uses up the first reservation
    spool.sync().expect("sync");
    let before = spool.stats();

    // A directory where the next ledger is written makes every ledger write fail, as a
    // full disk would.
    let obstacle = dir.path().join("ledger.tmp");
    fs::create_dir(&obstacle).expect("obstacle");
    assert!(matches!(
        spool.append(b"no seq for me"),
        Err(SpoolError::Ledger { .. })
    ));
    assert_eq!(spool.stats(), before, "nothing assigned, nothing written");
    // Acks cannot be persisted either, so nothing is unlinked.
    assert!(matches!(spool.ack(2), Err(SpoolError::Ledger { .. })));
    assert_eq!(spool.stats().acked_seq, 0);

    fs::remove_dir(&obstacle).expect("remove obstacle");
    assert_eq!(spool.append(b"now").expect("append"), 3);
}
