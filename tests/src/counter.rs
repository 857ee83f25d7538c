//! The state of the `herd-test-counter` plugin: the last number it sent,
//! shared by the plugin (which writes it) and the tests (which read it to
//! learn what was produced).

use std::io;
use std::path::{Path, PathBuf};

/// Data type of the counter plugin's records; field `n` holds the number.
pub const COUNTER: u32 = 2990;

/// `<plugin state dir>/counter`: the last number sent, as decimal text.
#[derive(Debug, Clone)]
pub struct CounterFile {
    path: PathBuf,
}

impl CounterFile {
    /// The counter file in the plugin state directory `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("counter"),
        }
    }

    /// The last number saved (0 when none was).
    pub fn load(&self) -> io::Result<u64> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text.trim().parse().map_err(|error| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {text:?} is not a number: {error}", self.path.display()),
                )
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(error) => Err(error),
        }
    }

    /// Saves `n` atomically (temporary file, then rename), so a killed
    /// plugin leaves the old or the new number, never a torn one.
    pub fn save(&self, n: u64) -> io::Result<()> {
        let temporary = self.path.with_extension("tmp");
        std::fs::write(&temporary, n.to_string())?;
        std::fs::rename(&temporary, &self.path)
    }
}
