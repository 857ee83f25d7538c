//! Recovery from torn and corrupt segments and garbled ledgers, and `verify`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use herd_spool::{FrameProblem, LedgerStatus, Spool, SpoolError, verify};

mod common;

use common::{FRAME, payload, segment_files, small};

/// A spool holding seqs 1..=n, synced, then dropped.
fn spool_with(dir: &Path, n: u64) {
    let (mut spool, _) = Spool::open(dir, small()).expect("open");
    for i in 0..n {
        spool.append(&payload(i)).expect("append");
    }
    spool.sync().expect("sync");
}

fn seqs(spool: &Spool) -> Vec<u64> {
    spool
        .unacked(0, usize::MAX)
        .expect("unacked")
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = fs::read(path).expect("read segment");
    bytes[at as usize] ^= 0x01;
    fs::write(path, bytes).expect("write segment");
}

/// After a repair the spool must keep working: append, sync, read, reopen cleanly.
fn still_works(dir: &Path, expect_above: u64) {
    let (mut spool, _) = Spool::open(dir, small()).expect("open");
    let seq = spool.append(b"after repair").expect("append");
    assert!(
        seq > expect_above,
        "seq {seq} reuses one at or below {expect_above}"
    );
    spool.sync().expect("sync");
    assert_eq!(seqs(&spool).last(), Some(&seq));
    drop(spool);
    let report = verify(dir).expect("verify");
    assert!(report.is_clean(), "{report}");
}

#[test]
fn a_frame_truncated_mid_payload_is_cut_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    spool_with(dir.path(), 5);
    let segment = &segment_files(dir.path())[0];
    let file = OpenOptions::new().write(true).open(segment).expect("open");
    file.set_len(5 * FRAME - 10).expect("truncate");
    drop(file);

    let (spool, recovery) = Spool::open(dir.path(), small()).expect("open never fails on content");
    assert_eq!(recovery.corrupt_records_cut, 1);
    assert_eq!(recovery.corrupt_bytes_cut, FRAME - 10);
    assert_eq!(recovery.records, 4);
    assert_eq!(seqs(&spool), vec![1, 2, 3, 4]);
    assert_eq!(fs::metadata(segment).expect("metadata").len(), 4 * FRAME);
    let stats = spool.stats();
    assert_eq!(
        (stats.corrupt_records, stats.corrupt_bytes),
        (1, FRAME - 10)
    );
    drop(spool);

    // A truncated tail is what a crash's torn write leaves: nothing after the
    // last sync, so its seq was never readable and comes again.
    still_works(dir.path(), 4);
    let (spool, recovery) = Spool::open(dir.path(), small()).expect("open");
    assert_eq!(recovery.corrupt_bytes_cut, 0, "the repair is not repeated");
    assert_eq!(spool.stats().corrupt_records, 1, "the counter is persisted");
}

#[test]
fn a_torn_header_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    spool_with(dir.path(), 3);
    let segment = &segment_files(dir.path())[0];
    let file = OpenOptions::new().write(true).open(segment).expect("open");
    file.set_len(2 * FRAME + 7).expect("truncate");
    drop(file);
    let (spool, recovery) = Spool::open(dir.path(), small()).expect("open");
    assert_eq!(
        (recovery.corrupt_records_cut, recovery.corrupt_bytes_cut),
        (1, 7)
    );
    assert_eq!(seqs(&spool), vec![1, 2]);
}

#[test]
fn a_flipped_payload_byte_cuts_the_segment_from_that_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    spool_with(dir.path(), 6);
    let segment = &segment_files(dir.path())[0];
    flip_byte(segment, 3 * FRAME + 24 + 50); // payload of seq 4

    let (spool, recovery) = Spool::open(dir.path(), small()).expect("open");
    assert_eq!(seqs(&spool), vec![1, 2, 3]);
    assert_eq!(recovery.corrupt_bytes_cut, 3 * FRAME);
    assert_eq!(
        recovery.corrupt_records_cut, 3,
        "the bad frame and the two behind it, walked by their lengths"
    );
    drop(spool);
    still_works(dir.path(), 6);
}

#[test]
fn garbage_appended_to_a_segment_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    spool_with(dir.path(), 4);
    let segment = &segment_files(dir.path())[0];
    let mut file = OpenOptions::new().append(true).open(segment).expect("open");
    file.write_all(&[0xAB; 37]).expect("garbage");
    drop(file);

    let (spool, recovery) = Spool::open(dir.path(), small()).expect("open");
    assert_eq!(seqs(&spool), vec![1, 2, 3, 4]);
    assert_eq!(recovery.corrupt_bytes_cut, 37);
    assert_eq!(recovery.corrupt_records_cut, 1);
    drop(spool);
    still_works(dir.path(), 4);
}

#[test]
fn corruption_in_a_closed_segment_keeps_the_later_good_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    spool_with(dir.path(), 24); // segments 1..=8, 9..=16, 17..=24
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 3);
    flip_byte(&files[1], 5 * FRAME + 30); // seq 14

    let (spool, recovery) = Spool::open(dir.path(), small()).expect("open");
    let expected: Vec<u64> = (1..=13).chain(17..=24).collect();
    assert_eq!(seqs(&spool), expected);
    assert_eq!(recovery.corrupt_records_cut, 3);
    assert_eq!(recovery.corrupt_bytes_cut, 3 * FRAME);
    // Damage inside durable data: the reserved seqs stay skipped, kept on disk
    // by a fresh segment named for the next one.
    assert_eq!(recovery.segments, 4);
}

#[test]
fn a_segment_whose_seqs_go_backwards_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    spool_with(dir.path(), 8); // exactly one full segment: 1..=8
    // A later segment whose name is in order but whose frames repeat seqs 1..=8.
    let files = segment_files(dir.path());
    fs::copy(&files[0], dir.path().join(format!("{:020}.seg", 9))).expect("copy");

    let (spool, recovery) = Spool::open(dir.path(), small()).expect("open");
    assert_eq!(seqs(&spool), (1..=8).collect::<Vec<_>>());
    assert_eq!(recovery.corrupt_bytes_cut, 8 * FRAME);
    assert_eq!(recovery.corrupt_records_cut, 8);
    let mut spool = spool;
    assert!(spool.append(b"next").expect("append") > 9);
}

#[test]
fn a_garbled_ledger_is_rebuilt_from_the_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut spool, _) = Spool::open(dir.path(), small()).expect("open");
        for i in 0..20 {
            spool.append(&payload(i)).expect("append");
        }
        spool.sync().expect("sync");
        spool.ack(12).expect("ack"); // segment 1..=8 unlinked, 9..=20 left
    }
    fs::write(dir.path().join("ledger"), b"this is not a ledger at all").expect("garble");
    let report = verify(dir.path()).expect("verify");
    assert!(matches!(report.ledger, LedgerStatus::Unusable(_)));
    assert!(!report.is_clean());

    let (mut spool, recovery) = Spool::open(dir.path(), small()).expect("open");
    assert!(recovery.ledger_rebuilt);
    // Everything still on disk is unacked again: resent, never lost.
    assert_eq!(recovery.acked_seq, 8);
    assert_eq!(seqs(&spool), (9..=20).collect::<Vec<_>>());
    assert_eq!(spool.stats().ledger_rebuilds, 1);
    assert!(spool.append(b"next").expect("append") > 20);
    spool.sync().expect("sync");
    drop(spool);
    assert!(verify(dir.path()).expect("verify").is_clean());

    // A missing ledger is rebuilt the same way.
    fs::remove_file(dir.path().join("ledger")).expect("remove ledger");
    let (spool, recovery) = Spool::open(dir.path(), small()).expect("open");
    assert!(recovery.ledger_rebuilt);
    assert_eq!(seqs(&spool).first(), Some(&9));
}

#[test]
fn verify_reports_corruption_without_repairing_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    spool_with(dir.path(), 12);
    let clean = verify(dir.path()).expect("verify");
    assert!(clean.is_clean(), "{clean}");
    assert_eq!((clean.records, clean.segments.len()), (12, 2));
    assert_eq!((clean.first_seq, clean.last_seq), (Some(1), Some(12)));
    assert_eq!(clean.unacked_records, 12);
    assert!(clean.to_string().ends_with("ok"), "{clean}");

    let last = segment_files(dir.path())[1].clone();
    flip_byte(&last, FRAME + 24 + 1); // seq 10
    let size = fs::metadata(&last).expect("metadata").len();
    let report = verify(dir.path()).expect("verify");
    assert!(!report.is_clean());
    assert_eq!(report.corrupt.len(), 1);
    let bad = &report.corrupt[0];
    assert_eq!(bad.segment, last);
    assert_eq!(bad.offset, FRAME);
    assert_eq!(bad.problem, FrameProblem::CrcMismatch { seq: 10 });
    assert_eq!((bad.bytes_cut, bad.records_cut), (3 * FRAME, 3));
    assert_eq!(report.records, 9);
    let text = report.to_string();
    assert!(
        text.contains("00000000000000000009.seg at byte 124: checksum mismatch (seq 10)"),
        "{text}"
    );
    assert!(text.contains("1 problem(s)"), "{text}");
    assert_eq!(
        fs::metadata(&last).expect("metadata").len(),
        size,
        "verify is read-only"
    );

    let (_spool, recovery) = Spool::open(dir.path(), small()).expect("open");
    assert_eq!(
        recovery.corrupt_bytes_cut, bad.bytes_cut,
        "verify predicts the cut"
    );
}

#[test]
fn open_fails_for_real_io_errors_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_a_dir = dir.path().join("file");
    fs::write(&not_a_dir, b"x").expect("write");
    assert!(matches!(
        Spool::open(&not_a_dir, small()),
        Err(SpoolError::Io { .. })
    ));
    assert!(matches!(
        verify(dir.path().join("missing")),
        Err(SpoolError::Io { .. })
    ));

    // Strange but harmless content is not an error: an empty segment, a stray file.
    let spool_dir = dir.path().join("spool");
    fs::create_dir(&spool_dir).expect("mkdir");
    fs::write(spool_dir.join(format!("{:020}.seg", 5)), b"").expect("empty segment");
    fs::write(spool_dir.join("notes.txt"), b"hello").expect("stray file");
    let (mut spool, recovery) = Spool::open(&spool_dir, small()).expect("open");
    assert!(recovery.ledger_rebuilt);
    assert!(
        spool.append(b"x").expect("append") >= 5,
        "the segment name bounds the seq"
    );
}
