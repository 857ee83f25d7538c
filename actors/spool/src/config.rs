//! Spool configuration: disk bound, segment size, fsync interval, what to do when full.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::frame::HEADER_LEN;

/// Default bound on the bytes of segment files on disk: 256 MiB.
pub const DEFAULT_MAX_DISK_BYTES: u64 = 256 * 1024 * 1024;
/// Default size at which the current segment is closed and a new one started: 8 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Default fsync interval: 100 ms (the design asks for at most 200 ms).
pub const DEFAULT_FSYNC_INTERVAL_MS: u64 = 100;
/// Default number of seqs reserved in the ledger at a time.
pub const DEFAULT_SEQ_RESERVATION: u64 = 1024;
/// Smallest accepted `segment_bytes`: a segment must hold a frame header and some payload.
pub const MIN_SEGMENT_BYTES: u64 = 256;
/// Largest accepted `segment_bytes`: a frame's payload length is a `u32`, and one segment
/// is read back record by record, so 1 GiB keeps both far from their limits.
pub const MAX_SEGMENT_BYTES: u64 = 1024 * 1024 * 1024;

/// What [`Spool::append`](crate::Spool::append) does when a record would take the segment
/// files over [`SpoolConfig::max_disk_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Refuse the record with [`SpoolError::Full`](crate::SpoolError::Full) and write
    /// nothing: the caller applies backpressure to its sources until acks free space.
    #[default]
    Block,
    /// Remove the oldest segment files, even if their records were never acked, until the
    /// record fits. Their unacked records are counted as dropped in the ledger and the
    /// acked seq moves past them, so the seq line stays consistent.
    DropOldest,
}

/// Configuration of a [`Spool`](crate::Spool), deserializable from the agent's config file
/// (every field optional, unknown fields rejected).
///
/// ```
/// use herd_spool::{SpoolConfig, WhenFull};
///
/// let config: SpoolConfig = toml::from_str(
///     r#"
///     max_disk_bytes = 67108864
///     when_full = "drop_oldest"
///     "#,
/// )?;
/// config.validate()?;
/// assert_eq!(config.when_full, WhenFull::DropOldest);
/// assert_eq!(config.segment_bytes, herd_spool::DEFAULT_SEGMENT_BYTES);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Bound on the bytes of all segment files together (the ledger's few bytes are not
    /// counted). Must be at least twice `segment_bytes`, so that one full segment can be
    /// closed while the next one starts.
    pub max_disk_bytes: u64,
    /// Size at which the current segment is closed and a new one started. A record's frame
    /// (24 header bytes plus the payload) must fit in one segment.
    pub segment_bytes: u64,
    /// How long appended records may stay unsynced before [`Spool::needs_sync`] says so.
    /// Zero means "as soon as anything is unsynced" (every timer tick syncs).
    ///
    /// [`Spool::needs_sync`]: crate::Spool::needs_sync
    pub fsync_interval_ms: u64,
    /// What to do when a record does not fit under `max_disk_bytes`.
    pub when_full: WhenFull,
    /// How many seqs are reserved in the ledger at once (one ledger write per this many
    /// appends); only damage inside durable data makes a reopen skip the rest of a
    /// reservation. Not read from config files: it is
    /// a tuning knob for tests and benchmarks.
    #[serde(skip)]
    pub seq_reservation: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            max_disk_bytes: DEFAULT_MAX_DISK_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            fsync_interval_ms: DEFAULT_FSYNC_INTERVAL_MS,
            when_full: WhenFull::default(),
            seq_reservation: DEFAULT_SEQ_RESERVATION,
        }
    }
}

impl SpoolConfig {
    /// The fsync interval as a [`Duration`].
    pub fn fsync_interval(&self) -> Duration {
        Duration::from_millis(self.fsync_interval_ms)
    }

    /// The largest payload a single record may have with this configuration.
    pub fn max_record_bytes(&self) -> u64 {
        self.segment_bytes.saturating_sub(HEADER_LEN as u64)
    }

    /// Checks the values for zeros and inconsistencies; [`Spool::open`](crate::Spool::open)
    /// calls it too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_disk_bytes == 0 {
            return Err(ConfigError::Zero("max_disk_bytes"));
        }
        if self.segment_bytes == 0 {
            return Err(ConfigError::Zero("segment_bytes"));
        }
        if self.seq_reservation == 0 {
            return Err(ConfigError::Zero("seq_reservation"));
        }
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(ConfigError::SegmentBytes(self.segment_bytes));
        }
        if self.max_disk_bytes / 2 < self.segment_bytes {
            return Err(ConfigError::DiskBelowTwoSegments {
                max_disk_bytes: self.max_disk_bytes,
                segment_bytes: self.segment_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = SpoolConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.fsync_interval(), Duration::from_millis(100));
        assert_eq!(config.when_full, WhenFull::Block);
    }

    #[test]
    fn zero_and_inconsistent_values_are_rejected() {
        let zero_disk = SpoolConfig {
            max_disk_bytes: 0,
            ..SpoolConfig::default()
        };
        assert_eq!(
            zero_disk.validate(),
            Err(ConfigError::Zero("max_disk_bytes"))
        );
        let zero_segment = SpoolConfig {
            segment_bytes: 0,
            ..SpoolConfig::default()
        };
        assert_eq!(
            zero_segment.validate(),
            Err(ConfigError::Zero("segment_bytes"))
        );
        let tiny_segment = SpoolConfig {
            segment_bytes: 100,
            ..SpoolConfig::default()
        };
        assert_eq!(tiny_segment.validate(), Err(ConfigError::SegmentBytes(100)));
        let one_segment = SpoolConfig {
            max_disk_bytes: DEFAULT_SEGMENT_BYTES,
            ..SpoolConfig::default()
        };
        assert!(matches!(
            one_segment.validate(),
            Err(ConfigError::DiskBelowTwoSegments { .. })
        ));
        let zero_reservation = SpoolConfig {
            seq_reservation: 0,
            ..SpoolConfig::default()
        };
        assert_eq!(
            zero_reservation.validate(),
            Err(ConfigError::Zero("seq_reservation"))
        );
    }

    #[test]
    fn unknown_fields_and_bad_policies_do_not_parse() {
        assert!(toml::from_str::<SpoolConfig>("max_disk = 1").is_err());
        assert!(toml::from_str::<SpoolConfig>("when_full = \"drop_newest\"").is_err());
        let parsed: SpoolConfig =
            toml::from_str("when_full = \"block\"\nfsync_interval_ms = 0").expect("valid config");
        assert_eq!(parsed.fsync_interval(), Duration::ZERO);
        assert_eq!(parsed.seq_reservation, DEFAULT_SEQ_RESERVATION);
    }
}
