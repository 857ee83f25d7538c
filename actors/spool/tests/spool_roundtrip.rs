//! Append, sync, read, ack and reopen on real files.

use std::time::{Duration, Instant, SystemTime};

use herd_spool::{Spool, SpoolConfig, SpoolError};

mod common;

use common::{payload, segment_files, small};

fn append_n(spool: &mut Spool, n: u64) -> Vec<u64> {
    (0..n)
        .map(|i| spool.append(&payload(i)).expect("append"))
        .collect()
}

#[test]
fn round_trip_across_segment_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, recovery) = Spool::open(dir.path(), small()).expect("open");
    assert_eq!(recovery.records, 0);
    assert_eq!(recovery.next_seq, 1);
    let seqs = append_n(&mut spool, 100);
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    assert_eq!(spool.sync().expect("sync"), 100);

    let files = segment_files(dir.path());
    assert_eq!(files.len(), 13, "100 records at 8 per segment");
    assert_eq!(spool.stats().segments, 13);
    assert!(
        files
            .iter()
            .all(|f| std::fs::metadata(f).expect("metadata").len() <= 1024)
    );
    // Each segment is named after the seq of its first record.
    assert_eq!(
        files[1].file_name().and_then(|n| n.to_str()),
        Some("00000000000000000009.seg")
    );

    let records = spool.unacked(0, usize::MAX).expect("unacked");
    assert_eq!(records.len(), 100);
    for (i, (seq, data)) in records.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(*data, payload(i as u64));
    }
    let stats = spool.stats();
    assert_eq!(stats.depth_records, 100);
    assert_eq!(stats.depth_bytes, 100 * 124);
    assert_eq!(stats.disk_bytes, 100 * 124);
    assert_eq!(stats.oldest_seq, Some(1));
}

#[test]
fn unacked_honours_from_seq_and_max_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(dir.path(), small()).expect("open");
    append_n(&mut spool, 30);
    let big = spool.append(&[7u8; 900]).expect("append big");
    spool.sync().expect("sync");

    let batch = spool.unacked(12, 350).expect("unacked");
    assert_eq!(
        batch.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![12, 13, 14],
        "three 100-byte payloads fit in 350 bytes, the fourth does not"
    );
    let alone = spool.unacked(big, 10).expect("unacked big");
    assert_eq!(
        alone.len(),
        1,
        "a record larger than max_bytes still comes alone"
    );
    assert_eq!(alone[0], (big, vec![7u8; 900]));
    assert!(
        spool
            .unacked(big + 1, usize::MAX)
            .expect("past the end")
            .is_empty()
    );
}

#[test]
fn only_synced_records_are_readable_and_needs_sync_follows_the_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(dir.path(), small()).expect("open");
    assert!(!spool.needs_sync(Instant::now() + Duration::from_secs(3600)));
    assert_eq!(spool.sync_due(), None);

    let before = Instant::now();
    let seq = spool.append(b"hello").expect("append");
    assert_eq!(spool.durable_seq(), 0);
    assert!(spool.unacked(0, usize::MAX).expect("unacked").is_empty());
    let due = spool.sync_due().expect("something is unsynced");
    assert!(due >= before + Duration::from_millis(100));
    assert!(!spool.needs_sync(due - Duration::from_millis(1)));
    assert!(spool.needs_sync(due));

    assert_eq!(spool.sync().expect("sync"), seq);
    assert_eq!(spool.durable_seq(), seq);
    assert!(!spool.needs_sync(due + Duration::from_secs(3600)));
    assert_eq!(
        spool.unacked(0, usize::MAX).expect("unacked"),
        vec![(seq, b"hello".to_vec())]
    );
    // A sync with nothing new is a no-op that still answers.
    assert_eq!(spool.sync().expect("sync again"), seq);
}

#[test]
fn reopen_recovers_every_synced_unacked_record_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut spool, _) = Spool::open(dir.path(), small()).expect("open");
        append_n(&mut spool, 50);
        spool.sync().expect("sync");
        spool.ack(10).expect("ack");
    } // dropped without close
    let (spool, recovery) = Spool::open(dir.path(), small()).expect("reopen");
    assert_eq!(recovery.records, 40);
    assert_eq!(recovery.bytes, 40 * 124);
    assert_eq!(recovery.acked_seq, 10);
    assert_eq!(recovery.corrupt_bytes_cut, 0);
    assert!(!recovery.ledger_rebuilt);
    let records = spool.unacked(0, usize::MAX).expect("unacked");
    assert_eq!(
        records.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (11..=50).collect::<Vec<_>>()
    );
    assert!(records.iter().all(|(s, d)| *d == payload(s - 1)));
    assert_eq!(spool.stats().oldest_seq, Some(11));
    assert_eq!(spool.durable_seq(), spool.stats().next_seq - 1);
}

#[test]
fn ack_unlinks_only_fully_acked_segments_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(dir.path(), small()).expect("open");
    append_n(&mut spool, 40); // segments start at 1, 9, 17, 25, 33
    spool.sync().expect("sync");
    assert_eq!(segment_files(dir.path()).len(), 5);

    spool.ack(20).expect("ack");
    let names: Vec<String> = segment_files(dir.path())
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [17, 25, 33].map(|s| format!("{s:020}.seg")),
        "segments 1..=8 and 9..=16 are gone, 17..=24 is half acked and stays"
    );
    let stats = spool.stats();
    assert_eq!(stats.acked_seq, 20);
    assert_eq!(stats.depth_records, 20);
    assert_eq!(stats.depth_bytes, 20 * 124);
    assert_eq!(stats.disk_bytes, 24 * 124);
    assert_eq!(stats.oldest_seq, Some(21));
    assert_eq!(spool.unacked(0, 250).expect("unacked")[0].0, 21);
    drop(spool);

    let (mut spool, recovery) = Spool::open(dir.path(), small()).expect("reopen");
    assert_eq!(recovery.acked_seq, 20);
    assert_eq!(recovery.records, 20);
    assert_eq!(spool.unacked(0, 1).expect("unacked")[0].0, 21);

    // Acking everything keeps only the segment appends go to.
    spool.ack(40).expect("ack all");
    assert_eq!(segment_files(dir.path()).len(), 1);
    let stats = spool.stats();
    assert_eq!((stats.depth_records, stats.depth_bytes), (0, 0));
    assert_eq!(stats.oldest_seq, None);
    assert!(spool.unacked(0, usize::MAX).expect("unacked").is_empty());
}

#[test]
fn ack_below_acked_is_ignored_and_ack_ahead_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(dir.path(), small()).expect("open");
    append_n(&mut spool, 20);
    spool.sync().expect("sync");
    spool.ack(15).expect("ack");
    spool.ack(3).expect("an older ack is not an error");
    assert_eq!(spool.stats().acked_seq, 15);
    assert_eq!(spool.unacked(0, usize::MAX).expect("unacked")[0].0, 16);

    spool.append(b"not yet durable").expect("append");
    match spool.ack(21) {
        Err(SpoolError::AckAhead { seq, durable_seq }) => assert_eq!((seq, durable_seq), (21, 20)),
        other => panic!("expected AckAhead, got {other:?}"),
    }
    assert_eq!(spool.stats().acked_seq, 15);
    drop(spool);
    let (spool, _) = Spool::open(dir.path(), small()).expect("reopen");
    assert_eq!(spool.stats().acked_seq, 15);
}

#[test]
fn large_segments_use_the_sparse_index_correctly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = SpoolConfig {
        segment_bytes: 4 * 1024 * 1024,
        max_disk_bytes: 16 * 1024 * 1024,
        ..SpoolConfig::default()
    };
    let (mut spool, _) = Spool::open(dir.path(), config.clone()).expect("open");
    append_n(&mut spool, 3000); // 372 KB in one segment: several index entries
    spool.sync().expect("sync");
    assert_eq!(spool.stats().segments, 1);
    for from in [1, 527, 528, 529, 1999, 3000] {
        let batch = spool.unacked(from, 300).expect("unacked");
        assert_eq!(batch[0], (from, payload(from - 1)), "from {from}");
    }
    spool.ack(1234).expect("ack");
    let stats = spool.stats();
    assert_eq!(stats.oldest_seq, Some(1235));
    assert_eq!(stats.depth_records, 3000 - 1234);
    assert_eq!(stats.depth_bytes, (3000 - 1234) * 124);
    drop(spool);
    let (spool, recovery) = Spool::open(dir.path(), config).expect("reopen");
    assert_eq!(recovery.records, 3000 - 1234);
    assert_eq!(spool.unacked(0, 1).expect("unacked")[0].0, 1235);
}

#[test]
fn oldest_created_is_the_append_time_of_the_oldest_unacked_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(dir.path(), small()).expect("open");
    assert_eq!(spool.stats().oldest_created, None);
    let before = SystemTime::now() - Duration::from_millis(1);
    spool.append(b"a").expect("append");
    let after = SystemTime::now() + Duration::from_millis(1);
    let created = spool.stats().oldest_created.expect("an unacked record");
    assert!(before <= created && created <= after);
    spool.sync().expect("sync");
    spool.ack(1).expect("ack");
    assert_eq!(spool.stats().oldest_created, None);
}

#[test]
fn a_directory_is_opened_by_one_spool_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(dir.path(), small()).expect("open");
    assert!(matches!(
        Spool::open(dir.path(), small()),
        Err(SpoolError::Locked { .. })
    ));
    drop(spool);
    Spool::open(dir.path(), small()).expect("open after the first one is gone");
}

#[test]
fn an_invalid_config_is_refused_before_touching_the_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool_dir = dir.path().join("spool");
    let config = SpoolConfig {
        segment_bytes: 0,
        ..SpoolConfig::default()
    };
    assert!(matches!(
        Spool::open(&spool_dir, config),
        Err(SpoolError::Config(_))
    ));
    assert!(!spool_dir.exists());
}
