//! What the spool suites share: a small config, fixed-size payloads, the
//! segment files on disk.
#![allow(dead_code, unreachable_pub)] // each suite uses a different part

use std::path::{Path, PathBuf};

use herd_spool::SpoolConfig;

/// 24-byte header + 100-byte payload: 8 frames to a 1 KiB segment.
pub const FRAME: u64 = 124;

/// 1 KiB segments, 1 MiB on disk.
pub fn small() -> SpoolConfig {
    SpoolConfig {
        segment_bytes: 1024,
        max_disk_bytes: 1024 * 1024,
        ..SpoolConfig::default()
    }
}

/// A 100-byte payload naming `i`.
pub fn payload(i: u64) -> Vec<u8> {
    let mut p = format!("record {i:06} ").into_bytes();
    p.resize(100, b'.');
    p
}

/// The segment files in `dir`, in seq order.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read spool dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}
