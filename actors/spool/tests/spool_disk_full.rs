//! A real full disk (a small tmpfs) under the spool, with segments larger
//! than the disk: the kernel's ENOSPC, not the spool's own bound, stops it.
//! What reached the file is still made durable, acks are persisted and free
//! the room although nothing new fits, appends go on afterwards, a reopen on
//! the full disk works, and no durable seq is ever handed out twice.
//!
//! Needs root (it mounts a tmpfs); as another user it prints why it skips.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use herd_spool::{Spool, SpoolConfig, SpoolError};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).expect("mount point");
        if std::fs::metadata("/proc/self").expect("/proc/self").uid() != 0 {
            eprintln!("skipped: needs root to mount tmpfs");
            return None;
        }
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "mount -t tmpfs on {} as root failed: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Some(Self(path.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// 1 MiB segments on a 256 KiB disk, an 8 MiB bound that is never reached.
fn config() -> SpoolConfig {
    SpoolConfig {
        segment_bytes: 1024 * 1024,
        max_disk_bytes: 8 * 1024 * 1024,
        seq_reservation: 16,
        ..SpoolConfig::default()
    }
}

fn is_disk_full(error: &SpoolError) -> bool {
    matches!(error, SpoolError::Io { source, .. } if source.kind() == ErrorKind::StorageFull)
}

/// Appends 1000-byte records named by their seq, syncing every ten, until
/// the disk refuses; returns the error.
fn fill(spool: &mut Spool) -> SpoolError {
    for i in 0..10_000u64 {
        let seq = spool.stats().next_seq;
        if let Err(error) = spool.append(&record(seq)) {
            return error;
        }
        if i % 10 == 9
            && let Err(error) = spool.sync()
        {
            return error;
        }
    }
    panic!("a 256 KiB disk took 10 MB");
}

fn record(seq: u64) -> Vec<u8> {
    let mut payload = format!("record {seq} ").into_bytes();
    payload.resize(1000, b'.');
    payload
}

/// Every unacked durable record carries the payload of its own seq: no seq
/// was given to two records.
fn check_unacked(spool: &Spool) -> Vec<u64> {
    let records = spool.unacked(0, usize::MAX).expect("unacked");
    for (seq, payload) in &records {
        assert_eq!(payload, &record(*seq), "seq {seq} holds another record");
    }
    records.into_iter().map(|(seq, _)| seq).collect()
}

#[test]
fn a_full_disk_stops_appends_until_acks_free_it_and_a_reopen_still_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk");
    let Some(_tmpfs) = Tmpfs::mount(&disk, "256k") else {
        return;
    };
    let (mut spool, _) = Spool::open(&disk, config()).expect("open");

    let error = fill(&mut spool);
    assert!(is_disk_full(&error), "the disk is full: {error}");
    // Syncs keep failing until acks come.
    let stuck = spool.stats();
    assert!(spool.sync().is_err_and(|error| is_disk_full(&error)));
    assert_eq!(spool.stats().next_seq, stuck.next_seq, "nothing assigned");
    // What reached the file is durable even though the rest could not be
    // written: it can be sent, and its acks give the room back.
    let first_durable = spool.durable_seq();
    assert!(first_durable > 100, "durable {first_durable}");
    assert_eq!(
        check_unacked(&spool),
        (1..=first_durable).collect::<Vec<_>>()
    );

    // The ack is persisted on the full disk and frees it: the buffered
    // records are written and synced, and appends go on.
    spool.ack(first_durable).expect("an ack on a full disk");
    spool.sync().expect("the buffered records fit now");
    let next = spool.stats().next_seq;
    for seq in next..next + 50 {
        assert_eq!(spool.append(&record(seq)).expect("append"), seq);
    }
    spool.sync().expect("sync");
    check_unacked(&spool);

    // Full again, and dropped like a crash (nothing closed): the reopen on
    // the full disk works, keeps every durable record and its seq, and the
    // acked ones stay acked.
    let error = fill(&mut spool);
    assert!(is_disk_full(&error), "{error}");
    let durable = spool.durable_seq();
    drop(spool);
    let (mut spool, recovery) = Spool::open(&disk, config()).expect("open on a full disk");
    assert_eq!(recovery.acked_seq, first_durable, "the ack was persisted");
    assert_eq!(
        check_unacked(&spool),
        (first_durable + 1..=durable).collect::<Vec<_>>()
    );
    assert_eq!(recovery.next_seq, durable + 1, "{recovery:?}");

    // Acks free it again, and numbering goes on above every durable seq.
    spool.ack(durable).expect("ack");
    let seq = spool.append(&record(recovery.next_seq)).expect("append");
    assert_eq!(seq, recovery.next_seq);
    spool.sync().expect("sync");
    assert_eq!(check_unacked(&spool), [seq]);
    spool.close().expect("close");
}
