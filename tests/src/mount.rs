//! A filesystem mounted for one test (a small tmpfs to fill, a cgroup2
//! hierarchy), unmounted when dropped.
//!
//! Mounting needs root: [`Mount::new`] says "skipped: needs root" and returns
//! `None` otherwise, so a test can return early; as root a failed mount
//! fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mount made by [`Mount::new`]; dropping it unmounts it (lazily when
/// something still uses it).
#[derive(Debug)]
pub struct Mount {
    path: PathBuf,
}

impl Mount {
    /// Mounts a `fstype` filesystem (`-o options` unless empty) on `path`,
    /// creating the directory.
    pub fn new(fstype: &str, options: &str, path: &Path) -> Option<Self> {
        if !effective_uid_is_root() {
            eprintln!("skipped: needs root to mount {fstype}");
            return None;
        }
        std::fs::create_dir_all(path)
            .unwrap_or_else(|error| panic!("mount point {}: {error}", path.display()));
        let mut mount = Command::new("mount");
        mount.args(["-t", fstype]);
        if !options.is_empty() {
            mount.args(["-o", options]);
        }
        let output = mount
            .arg(fstype)
            .arg(path)
            .output()
            .unwrap_or_else(|error| panic!("running mount: {error}"));
        assert!(
            output.status.success(),
            "mount -t {fstype} on {} as root failed: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Some(Self {
            path: path.to_owned(),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Whether this process runs as root (effective uid 0).
pub fn effective_uid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status.lines().find(|line| line.starts_with("Uid:"))?;
            // Real, effective, saved, filesystem.
            uids.split_whitespace().nth(2).map(|uid| uid == "0")
        })
        .unwrap_or(false)
}
