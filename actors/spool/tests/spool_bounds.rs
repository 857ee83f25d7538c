//! The disk bound: `block` refuses, `drop_oldest` drops and counts exactly.

use std::fs;
use std::path::Path;

use herd_spool::{Spool, SpoolConfig, SpoolError, WhenFull};

const FRAME: u64 = 124; // 24-byte header + 100-byte payload; 8 frames per 1 KiB segment

fn config(when_full: WhenFull) -> SpoolConfig {
    SpoolConfig {
        segment_bytes: 1024,
        max_disk_bytes: 4096,
        when_full,
        ..SpoolConfig::default()
    }
}

fn segment_bytes_on_disk(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .map(|p| fs::metadata(p).expect("metadata").len())
        .sum()
}

#[test]
fn block_refuses_with_full_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(dir.path(), config(WhenFull::Block)).expect("open");
    let mut accepted = 0u64;
    let err = loop {
        match spool.append(&[b'b'; 100]) {
            Ok(seq) => accepted = seq,
            Err(e) => break e,
        }
        assert!(accepted < 1000, "never became full");
    };
    // 33 frames of 124 bytes fit in 4096 bytes (the 33rd alone in a fifth segment).
    assert_eq!(accepted, 33);
    match err {
        SpoolError::Full {
            needed,
            disk_bytes,
            max_disk_bytes,
        } => {
            assert_eq!(
                (needed, disk_bytes, max_disk_bytes),
                (FRAME, 33 * FRAME, 4096)
            );
        }
        other => panic!("expected Full, got {other:?}"),
    }
    spool.sync().expect("sync");
    let stats = spool.stats();
    let on_disk = segment_bytes_on_disk(dir.path());
    assert_eq!(on_disk, 33 * FRAME);
    for _ in 0..3 {
        assert!(matches!(
            spool.append(b"still full"),
            Err(SpoolError::Full { .. })
        ));
    }
    assert_eq!(spool.stats(), stats, "a refused append changes nothing");
    assert_eq!(segment_bytes_on_disk(dir.path()), on_disk);
    assert_eq!(spool.stats().dropped_records, 0);

    // Acks free whole segments, and appends go on with the next seq.
    spool.ack(8).expect("ack");
    assert_eq!(spool.append(&[b'b'; 100]).expect("append after ack"), 34);
    assert!(segment_bytes_on_disk(dir.path()) <= 4096);
}

#[test]
fn drop_oldest_counts_exactly_the_unacked_records_it_removes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(dir.path(), config(WhenFull::DropOldest)).expect("open");
    for _ in 0..20 {
        spool.append(&[b'd'; 100]).expect("append");
    }
    spool.sync().expect("sync");
    spool.ack(3).expect("ack"); // 3 of the first segment's 8 records are acked
    for _ in 20..100 {
        spool.append(&[b'd'; 100]).expect("append never blocks");
        assert!(segment_bytes_on_disk(dir.path()) <= 4096, "the bound holds");
    }
    spool.sync().expect("sync");

    let stats = spool.stats();
    let records = spool.unacked(0, usize::MAX).expect("unacked");
    let first_left = records[0].0;
    assert_eq!(records.last().map(|r| r.0), Some(100));
    assert_eq!(
        records.len() as u64,
        100 - first_left + 1,
        "no hole in what is left"
    );
    assert_eq!(stats.depth_records, records.len() as u64);
    // Every one of seqs 1..=100 is acked, dropped or still there, exactly once.
    assert_eq!(3 + stats.dropped_records + stats.depth_records, 100);
    assert_eq!(stats.dropped_bytes, stats.dropped_records * FRAME);
    assert_eq!(
        stats.acked_seq,
        first_left - 1,
        "the acked seq moved past the drops"
    );
    assert_eq!(first_left % 8, 1, "whole segments were dropped");
    assert!(stats.dropped_records > 0);
    drop(spool);

    let (spool, recovery) = Spool::open(dir.path(), config(WhenFull::DropOldest)).expect("reopen");
    assert_eq!(
        spool.stats().dropped_records,
        stats.dropped_records,
        "persisted"
    );
    assert_eq!(recovery.acked_seq, first_left - 1);
    assert_eq!(recovery.records, stats.depth_records);
}

#[test]
fn a_fully_acked_closed_segment_does_not_count_against_the_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(dir.path(), config(WhenFull::Block)).expect("open");
    for _ in 0..8 {
        spool.append(&[b'a'; 100]).expect("append");
    }
    spool.sync().expect("sync");
    spool.ack(8).expect("ack"); // the only segment, full and fully acked, stays for now
    for _ in 0..32 {
        spool.append(&[b'a'; 100]).expect("its space is reused");
    }
    assert_eq!(spool.stats().disk_bytes, 32 * FRAME);
}

#[test]
fn a_record_larger_than_a_segment_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(dir.path(), config(WhenFull::Block)).expect("open");
    match spool.append(&[0u8; 1001]) {
        Err(SpoolError::RecordTooLarge { len, max }) => assert_eq!((len, max), (1001, 1000)),
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    assert_eq!(spool.stats().next_seq, 1);
    assert_eq!(spool.append(&[0u8; 1000]).expect("exactly the largest"), 1);
    assert_eq!(spool.append(b"small").expect("next segment"), 2);
    spool.sync().expect("sync");
    assert_eq!(spool.stats().segments, 2);
    assert_eq!(spool.unacked(0, 1).expect("unacked")[0].1.len(), 1000);
}
