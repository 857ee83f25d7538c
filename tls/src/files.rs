//! Writing the files a hub keeps secrets in, so a crash never leaves half of
//! one and a reader never sees one with looser permissions than asked.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` with permissions `mode`, through
/// `<path>.tmp` renamed over `path`: readers see the old file or the whole
/// new one, never a part.
///
/// ```
/// use std::os::unix::fs::PermissionsExt;
///
/// let dir = tempfile::tempdir().unwrap();
/// let seed = dir.path().join("secret");
/// herd_tls::write_file_atomically(&seed, b"SU...\n", 0o600).unwrap();
/// let mode = std::fs::metadata(&seed).unwrap().permissions().mode() & 0o777;
/// assert_eq!(mode, 0o600);
/// ```
pub fn write_file_atomically(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let temporary = PathBuf::from(format!("{}.tmp", path.display()));
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .and_then(|mut file| {
            // `mode` applies only to a file created now; a leftover keeps its own.
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            file.write_all(contents)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temporary, path))
}
