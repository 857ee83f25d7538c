//! The spool itself: open and recover, append, sync, read unacked, ack, bounds.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{SpoolConfig, WhenFull};
use crate::error::SpoolError;
use crate::frame::{self, FrameProblem, HEADER_LEN, Header, IndexEntry};
use crate::ledger::{self, LEDGER_FILE, LEDGER_TMP, Ledger};

/// Appended frames are kept in memory up to this many bytes before they are written to
/// the segment file (still without fsync): one `write` per batch instead of per record.
/// A record larger than this is buffered alone.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// File name of the lock that keeps two spools out of one directory.
const LOCK_FILE: &str = "lock";
/// Segment size while the disk has less room than `segment_bytes` (see
/// [`Spool::reclaim_acked_active`]): acked segments then give their room back in steps of
/// this size instead of only once a whole segment is full.
const SHORT_SEGMENT_BYTES: u64 = 64 * 1024;

/// What [`Spool::open`] found and repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Unacked records recovered, all durable and readable with [`Spool::unacked`].
    pub records: u64,
    /// Frame bytes (headers and payloads) of those records.
    pub bytes: u64,
    /// Best-effort count of the frames cut from corrupt or torn segment tails.
    pub corrupt_records_cut: u64,
    /// Bytes cut from corrupt or torn segment tails.
    pub corrupt_bytes_cut: u64,
    /// Segment files kept (including the one appends go to).
    pub segments: usize,
    /// Whether the ledger was missing or unusable and was rebuilt from the segments; its
    /// counters then start again from zero.
    pub ledger_rebuilt: bool,
    /// The seq the next append gets.
    pub next_seq: u64,
    /// The acked seq from the ledger.
    pub acked_seq: u64,
}

/// A snapshot of the spool's counters, cheap to take (no I/O).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records on disk (or buffered for it) that are not acked yet.
    pub depth_records: u64,
    /// Frame bytes of those records.
    pub depth_bytes: u64,
    /// The seq of the oldest unacked record, if any.
    pub oldest_seq: Option<u64>,
    /// When the oldest unacked record was appended (its frame's timestamp), if any.
    pub oldest_created: Option<SystemTime>,
    /// The seq the next append gets.
    pub next_seq: u64,
    /// Every seq up to this one is acked (or dropped).
    pub acked_seq: u64,
    /// Every record up to this seq is durable.
    pub durable_seq: u64,
    /// Bytes of segment files on disk (acked records wait for their whole segment to be
    /// acked), plus buffered frames: what counts against `max_disk_bytes`.
    pub disk_bytes: u64,
    /// Segment files on disk.
    pub segments: usize,
    /// Records removed unacked by [`WhenFull::DropOldest`], since the spool was created.
    pub dropped_records: u64,
    /// Frame bytes of those records.
    pub dropped_bytes: u64,
    /// Records cut by recovery as corrupt or torn (best effort), since the spool was created.
    pub corrupt_records: u64,
    /// Bytes cut by recovery.
    pub corrupt_bytes: u64,
    /// How often the ledger had to be rebuilt from the segments (counters before the last
    /// rebuild are lost).
    pub ledger_rebuilds: u64,
}

/// One segment file, as far as the spool knows it.
struct Segment {
    path: PathBuf,
    /// Bytes of frames, including those still buffered in memory for the active segment.
    len: u64,
    records: u64,
    last_seq: Option<u64>,
    index: Vec<IndexEntry>,
}

impl Segment {
    fn is_acked(&self, acked_seq: u64) -> bool {
        self.last_seq.is_none_or(|last| last <= acked_seq)
    }
}

/// The segment appends go to.
struct Active {
    file: File,
    /// Bytes handed to the file (not necessarily fsynced).
    written: u64,
    /// Frames not handed to the file yet.
    pending: Vec<u8>,
}

/// Where the first unacked record is in the oldest segment.
#[derive(Debug, Clone, Copy, Default)]
struct Head {
    seq: Option<u64>,
    time_ms: Option<u64>,
    /// Records of the oldest segment before it (all acked).
    ordinal: u64,
    /// Bytes of the oldest segment before it.
    offset: u64,
}

/// The agent's durable spool of records. See the [crate docs](crate) for the contract.
///
/// Not thread-safe by design: one owner (the agent's spool actor) calls it.
///
/// Dropping a `Spool` without [`close`](Spool::close) behaves like a crash for what was
/// not synced: buffered records are discarded (they were never reported durable, so no
/// source was told they were safe, and [`Spool::unacked`] never returned them) and their
/// seqs are handed out again after the reopen.
pub struct Spool {
    dir: PathBuf,
    config: SpoolConfig,
    /// Held (with an exclusive `flock`) for as long as the spool is open.
    _lock: File,
    /// Oldest first; never empty; the last one is the active segment. Invariant: every
    /// segment but the active one holds at least one unacked record (fully acked ones are
    /// removed as soon as they are both acked and closed).
    segments: VecDeque<Segment>,
    active: Active,
    /// What the ledger file says now; the acked seq and counters are read from here.
    ledger: Ledger,
    next_seq: u64,
    durable_seq: u64,
    disk_bytes: u64,
    total_records: u64,
    head: Head,
    unsynced_since: Option<Instant>,
    poisoned: bool,
    /// A write to the active segment failed (the disk is full) and the segment files have
    /// not grown to two segments since: the disk has less room than a segment. Segments are
    /// then closed at [`SHORT_SEGMENT_BYTES`], and an active segment whose frames on file
    /// are all acked is given up as soon as an ack says so; see
    /// [`Spool::reclaim_acked_active`].
    short_of_room: bool,
}

impl fmt::Debug for Spool {
    /// The numbers, not the buffered bytes or the index.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("next_seq", &self.next_seq)
            .field("durable_seq", &self.durable_seq)
            .field("acked_seq", &self.ledger.acked_seq)
            .field("segments", &self.segments.len())
            .field("disk_bytes", &self.disk_bytes)
            .field("buffered_bytes", &self.active.pending.len())
            .field("poisoned", &self.poisoned)
            .field("short_of_room", &self.short_of_room)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` and recovers it.
    ///
    /// Segments are scanned in seq order. A bad frame (torn header or payload, checksum
    /// mismatch, seq not increasing) ends its segment: the file is truncated after the
    /// last good frame and the cut is counted. Later segments are kept if their own frames
    /// are good. A missing or unusable ledger is rebuilt from the segments: everything on
    /// disk is treated as unacked (resent, never lost) and the next seq continues after
    /// the highest seq any segment shows. The result is written to the ledger.
    ///
    /// Fails only for an invalid config, a directory another spool holds, or I/O errors.
    pub fn open(
        dir: impl AsRef<Path>,
        config: SpoolConfig,
    ) -> Result<(Spool, Recovery), SpoolError> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(SpoolError::io("create spool directory", &dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(SpoolError::io("open lock file", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(SpoolError::Locked { path: dir }),
            Err(TryLockError::Error(e)) => {
                return Err(SpoolError::io("lock", &lock_path)(e));
            }
        }
        // A crash between writing and renaming the next ledger leaves this behind.
        let tmp = dir.join(LEDGER_TMP);
        remove_if_present(&tmp).map_err(SpoolError::io("remove", &tmp))?;
        let stored = ledger::read(&dir).map_err(SpoolError::io("read", dir.join(LEDGER_FILE)))?;
        let listed = frame::list_segments(&dir).map_err(SpoolError::io("list", &dir))?;

        let mut dir_changed = false;
        let (mut cut_records, mut cut_bytes) = (0u64, 0u64);
        // A frame damaged otherwise than by a truncated end (a torn write of
        // a crash) may have been durable.
        let mut damaged_durable = false;
        let mut segments = VecDeque::with_capacity(listed.len());
        let mut prev_last: Option<u64> = None;
        let mut highest_name = 0;
        for (first_seq, path) in listed {
            highest_name = first_seq;
            let min_seq = prev_last.map_or(first_seq, |last| first_seq.max(last.saturating_add(1)));
            let scan = frame::scan(&path, min_seq, u64::MAX)
                .map_err(SpoolError::io("read segment", &path))?;
            if let Some(bad) = scan.bad {
                let cut = scan.file_len - scan.good_len;
                tracing::warn!(
                    segment = %path.display(),
                    offset = bad.offset,
                    problem = %bad.problem,
                    bytes_cut = cut,
                    records_cut = bad.records,
                    "spool: cutting corrupt segment tail"
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(SpoolError::io("open segment", &path))?;
                file.set_len(scan.good_len)
                    .and_then(|()| file.sync_all())
                    .map_err(SpoolError::io("truncate segment", &path))?;
                cut_records += bad.records;
                cut_bytes += cut;
                damaged_durable |= !matches!(
                    bad.problem,
                    FrameProblem::ShortHeader { .. } | FrameProblem::ShortPayload { .. }
                );
            }
            prev_last = scan.last_seq.or(prev_last);
            segments.push_back(Segment {
                path,
                len: scan.good_len,
                records: scan.records,
                last_seq: scan.last_seq,
                index: scan.index,
            });
        }
        let first_on_disk = segments.iter().find_map(|s| s.index.first().map(|e| e.seq));
        let last_on_disk = prev_last;

        let had_ledger = matches!(stored, Some(Ok(_)));
        let (mut ledger, rebuilt) = match stored {
            Some(Ok(ledger)) => (ledger, false),
            None if segments.is_empty() => (Ledger::default(), false),
            unusable => {
                if let Some(Err(reason)) = unusable {
                    tracing::warn!(%reason, dir = %dir.display(), "spool: rebuilding an unusable ledger from the segments");
                } else {
                    tracing::warn!(dir = %dir.display(), "spool: ledger missing, rebuilding it from the segments");
                }
                let next_seq = last_on_disk
                    .map_or(1, |last| last + 1)
                    .max(highest_name)
                    .max(1);
                // Everything on disk counts as unacked: resending is safe, skipping is not.
                let acked_seq = first_on_disk.unwrap_or(next_seq).saturating_sub(1);
                let ledger = Ledger {
                    next_seq,
                    acked_seq,
                    ledger_rebuilds: 1,
                    ..Ledger::default()
                };
                (ledger, true)
            }
        };
        // Never reuse the seq of a record that was ever durable (and so may have been
        // read and sent): not one a segment shows, not one already acked, not the first
        // seq the newest segment was named for. Seqs the ledger reserved beyond that were
        // given to records lost before they became durable (a truncated tail is a crash's
        // torn write: nothing after the last sync), never readable, so nobody has seen
        // them: they are handed out again and a receiver sees no gap after a crash. Only
        // damage inside durable data (a bad checksum) keeps the whole reservation skipped.
        let on_disk = (last_on_disk.map_or(0, |last| last + 1))
            .max(ledger.acked_seq + 1)
            .max(highest_name);
        let next_seq = if damaged_durable {
            on_disk.max(ledger.next_seq)
        } else {
            on_disk
        };
        let before = ledger;
        ledger.next_seq = next_seq;
        ledger.corrupt_records += cut_records;
        ledger.corrupt_bytes += cut_bytes;
        if (!had_ledger || ledger != before)
            && let Err(error) = ledger::write(&dir, &ledger)
        {
            // The agent never refuses to start because of its spool (a full disk, say):
            // go on with what the ledger file still says. Its reservation still covers the
            // seqs below it; without one the first append tries to reserve and, while the
            // ledger cannot be written, fails with `SpoolError::Ledger`.
            tracing::warn!(dir = %dir.display(), %error,
                "spool: cannot write the ledger at open; going on with the old one");
            ledger.next_seq = if had_ledger && before.next_seq >= next_seq {
                before.next_seq
            } else {
                next_seq
            };
        }

        // Closed segments with nothing left to send: acked ones (a crash came between the
        // ledger write and the unlink) and empty ones (cut to nothing).
        let keep_last = segments.len().saturating_sub(1);
        let mut kept = VecDeque::with_capacity(segments.len());
        for (i, segment) in segments.into_iter().enumerate() {
            if i < keep_last && segment.is_acked(ledger.acked_seq) {
                remove_if_present(&segment.path)
                    .map_err(SpoolError::io("remove", &segment.path))?;
                dir_changed = true;
            } else {
                kept.push_back(segment);
            }
        }
        let mut segments = kept;

        // Skipping seqs after damage: a fresh segment named for the next seq keeps
        // that floor on disk for every later open.
        let keep_floor = next_seq > on_disk;
        let active = match segments.back() {
            Some(last) if !keep_floor => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&last.path)
                    .map_err(SpoolError::io("open segment", &last.path))?;
                // What a previous process wrote may still be only in the page cache.
                file.sync_data()
                    .map_err(SpoolError::io("fsync segment", &last.path))?;
                Active {
                    file,
                    written: last.len,
                    pending: Vec::new(),
                }
            }
            _ => {
                let (segment, active) = create_segment(&dir, next_seq)?;
                segments.push_back(segment);
                dir_changed = true;
                active
            }
        };
        if dir_changed {
            ledger::sync_dir(&dir).map_err(SpoolError::io("fsync", &dir))?;
        }

        let mut spool = Spool {
            disk_bytes: segments.iter().map(|s| s.len).sum(),
            total_records: segments.iter().map(|s| s.records).sum(),
            dir,
            config,
            _lock: lock,
            segments,
            active,
            ledger,
            next_seq,
            durable_seq: next_seq - 1,
            head: Head::default(),
            unsynced_since: None,
            poisoned: false,
            short_of_room: false,
        };
        spool.refresh_head()?;
        let stats = spool.stats();
        let recovery = Recovery {
            records: stats.depth_records,
            bytes: stats.depth_bytes,
            corrupt_records_cut: cut_records,
            corrupt_bytes_cut: cut_bytes,
            segments: stats.segments,
            ledger_rebuilt: rebuilt,
            next_seq,
            acked_seq: spool.ledger.acked_seq,
        };
        tracing::debug!(dir = %spool.dir.display(), ?recovery, "spool: opened");
        Ok((spool, recovery))
    }

    /// Appends a record and returns its seq. The record is buffered: it is durable (and
    /// readable with [`unacked`](Spool::unacked)) only after a [`sync`](Spool::sync).
    ///
    /// On any error nothing was written and no seq was assigned:
    /// [`SpoolError::Full`] under [`WhenFull::Block`], [`SpoolError::RecordTooLarge`],
    /// [`SpoolError::Ledger`] if a new block of seqs could not be reserved, or an I/O error.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, SpoolError> {
        if self.poisoned {
            return Err(SpoolError::Poisoned);
        }
        let max_record = self.config.max_record_bytes();
        if payload.len() as u64 > max_record {
            return Err(SpoolError::RecordTooLarge {
                len: payload.len(),
                max: max_record,
            });
        }
        let frame_len = (HEADER_LEN + payload.len()) as u64;
        let active_len = self.active_segment().len;
        if self.short_of_room && self.disk_bytes >= 2 * self.config.segment_bytes {
            // Room for whole segments after all.
            self.short_of_room = false;
        }
        let segment_bytes = if self.short_of_room {
            SHORT_SEGMENT_BYTES.min(self.config.segment_bytes)
        } else {
            self.config.segment_bytes
        };
        let rotate = active_len > 0 && active_len + frame_len > segment_bytes;
        // Closing a fully acked active segment frees it at once: count that before deciding
        // the spool is full.
        let reclaim = if rotate && self.active_segment().is_acked(self.ledger.acked_seq) {
            active_len
        } else {
            0
        };
        let full = self.disk_bytes - reclaim + frame_len > self.config.max_disk_bytes;
        if full && self.config.when_full == WhenFull::Block {
            return Err(SpoolError::Full {
                needed: frame_len,
                disk_bytes: self.disk_bytes,
                max_disk_bytes: self.config.max_disk_bytes,
            });
        }
        if self.next_seq >= self.ledger.next_seq {
            // Persist the reservation before any seq of it is handed out, so that a crash
            // can skip seqs but never hand one out twice.
            let reserved = Ledger {
                next_seq: self.next_seq.saturating_add(self.config.seq_reservation),
                ..self.ledger
            };
            self.persist(reserved)?;
        }
        if rotate {
            self.rotate()?;
        }
        if self.config.when_full == WhenFull::DropOldest
            && self.disk_bytes + frame_len > self.config.max_disk_bytes
        {
            self.drop_oldest(frame_len)?;
        }
        if !self.active.pending.is_empty()
            && self.active.pending.len() + HEADER_LEN + payload.len() > WRITE_BUFFER_BYTES
        {
            self.flush_pending()?;
        }

        let seq = self.next_seq;
        let time_ms = now_ms();
        let offset = self.active.written + self.active.pending.len() as u64;
        frame::encode(&mut self.active.pending, seq, time_ms, payload);
        let single = self.segments.len() == 1;
        let segment = self.segments.back_mut().expect("an active segment");
        frame::maybe_index(
            &mut segment.index,
            IndexEntry {
                seq,
                offset,
                ordinal: segment.records,
            },
        );
        segment.len += frame_len;
        segment.records += 1;
        segment.last_seq = Some(seq);
        if self.head.seq.is_none() {
            // Nothing was unacked, so by the invariant the active segment is the only one
            // and the head already points at its end, where this record starts.
            debug_assert!(single, "a closed segment without unacked records was kept");
            self.head.seq = Some(seq);
            self.head.time_ms = Some(time_ms);
        }
        self.disk_bytes += frame_len;
        self.total_records += 1;
        self.next_seq = seq + 1;
        self.unsynced_since.get_or_insert_with(Instant::now);
        Ok(seq)
    }

    /// Writes and fsyncs what was appended and returns the highest durable seq: every
    /// record up to it survives a crash, so its source may be told it is safe.
    ///
    /// When not everything can be written (a full disk), what did reach the file is still
    /// made durable before the error is returned, so it can be sent, acked and give its
    /// room back: [`durable_seq`](Spool::durable_seq) tells how far.
    pub fn sync(&mut self) -> Result<u64, SpoolError> {
        if self.poisoned {
            return Err(SpoolError::Poisoned);
        }
        if self.unsynced_since.is_some() {
            self.sync_active()?;
        }
        Ok(self.durable_seq)
    }

    /// Every record up to this seq is durable.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// Whether a write failed (a full disk) and the disk is taken to have less room than a
    /// segment (see the crate docs): the owner should then apply acks as they come, since
    /// only acks give the room back.
    pub fn is_short_of_room(&self) -> bool {
        self.short_of_room
    }

    /// Whether records have been waiting unsynced for at least the fsync interval at `now`.
    /// The caller's timer asks; the spool keeps no timer of its own.
    pub fn needs_sync(&self, now: Instant) -> bool {
        self.sync_due().is_some_and(|due| now >= due)
    }

    /// When [`needs_sync`](Spool::needs_sync) turns true, if anything is unsynced: lets the
    /// caller arm its timer exactly.
    pub fn sync_due(&self) -> Option<Instant> {
        self.unsynced_since
            .map(|since| since + self.config.fsync_interval())
    }

    /// Durable unacked records with seq `>= from_seq`, in seq order, until their payloads
    /// add up to `max_bytes`; at least one record if there is any, even if it alone is
    /// larger. Records at or below the acked seq are never returned. Reads from disk.
    pub fn unacked(
        &self,
        from_seq: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        let from = from_seq.max(self.ledger.acked_seq + 1);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if from > self.durable_seq {
            return Ok(out);
        }
        let last = self.segments.len() - 1;
        for (i, segment) in self.segments.iter().enumerate() {
            if segment.last_seq.is_none_or(|seq| seq < from) {
                continue;
            }
            // Only bytes handed to the file can be read from it; durable ones always are.
            let end = if i == last {
                self.active.written
            } else {
                segment.len
            };
            let (mut offset, _) = frame::start_for(&segment.index, from);
            if offset >= end {
                break;
            }
            let file =
                File::open(&segment.path).map_err(SpoolError::io("open segment", &segment.path))?;
            let mut reader = BufReader::new(file);
            reader
                .seek(SeekFrom::Start(offset))
                .map_err(SpoolError::io("read segment", &segment.path))?;
            while offset < end {
                let header = read_header(&mut reader)
                    .map_err(SpoolError::io("read segment", &segment.path))?;
                if header.seq > self.durable_seq {
                    return Ok(out);
                }
                let len = header.len as usize;
                if header.seq >= from {
                    if !out.is_empty() && bytes + len > max_bytes {
                        return Ok(out);
                    }
                    let mut payload = vec![0u8; len];
                    reader
                        .read_exact(&mut payload)
                        .map_err(SpoolError::io("read segment", &segment.path))?;
                    if !header.matches(&payload) {
                        return Err(SpoolError::Corrupt {
                            path: segment.path.clone(),
                            offset,
                            problem: frame::FrameProblem::CrcMismatch { seq: header.seq },
                        });
                    }
                    out.push((header.seq, payload));
                    bytes += len;
                } else {
                    reader
                        .seek_relative(i64::from(header.len))
                        .map_err(SpoolError::io("read segment", &segment.path))?;
                }
                offset += header.frame_len();
            }
        }
        Ok(out)
    }

    /// Acks every record up to `seq`. Cumulative and monotonic: an ack at or below the
    /// current acked seq is ignored. The acked seq is persisted in the ledger first; only
    /// then are closed segments whose records are all acked unlinked.
    ///
    /// Fails with [`SpoolError::AckAhead`] (changing nothing) for a seq that is not
    /// durable yet, since such a record was never handed out for sending.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq <= self.ledger.acked_seq {
            return Ok(());
        }
        if seq > self.durable_seq {
            return Err(SpoolError::AckAhead {
                seq,
                durable_seq: self.durable_seq,
            });
        }
        self.persist(Ledger {
            acked_seq: seq,
            ..self.ledger
        })?;
        self.remove_acked_segments()?;
        if self.short_of_room {
            self.reclaim_acked_active()?;
        }
        self.refresh_head()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            depth_records: self.total_records - self.head.ordinal,
            depth_bytes: self.disk_bytes - self.head.offset,
            oldest_seq: self.head.seq,
            oldest_created: self
                .head
                .time_ms
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
            next_seq: self.next_seq,
            acked_seq: self.ledger.acked_seq,
            durable_seq: self.durable_seq,
            disk_bytes: self.disk_bytes,
            segments: self.segments.len(),
            dropped_records: self.ledger.dropped_records,
            dropped_bytes: self.ledger.dropped_bytes,
            corrupt_records: self.ledger.corrupt_records,
            corrupt_bytes: self.ledger.corrupt_bytes,
            ledger_rebuilds: self.ledger.ledger_rebuilds,
        }
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration the spool was opened with.
    pub fn config(&self) -> &SpoolConfig {
        &self.config
    }

    /// Syncs everything and records the exact next seq in the ledger (giving back the
    /// unused part of the reservation).
    pub fn close(mut self) -> Result<(), SpoolError> {
        self.sync()?;
        if self.ledger.next_seq != self.next_seq {
            self.persist(Ledger {
                next_seq: self.next_seq,
                ..self.ledger
            })?;
        }
        Ok(())
    }

    fn active_segment(&self) -> &Segment {
        self.segments.back().expect("an active segment")
    }

    /// Writes the ledger; the in-memory copy changes only once it is on disk.
    fn persist(&mut self, ledger: Ledger) -> Result<(), SpoolError> {
        ledger::write(&self.dir, &ledger).map_err(|source| SpoolError::Ledger {
            path: self.dir.join(LEDGER_FILE),
            source,
        })?;
        self.ledger = ledger;
        Ok(())
    }

    /// Hands buffered frames to the file (no fsync). When the write fails, an active
    /// segment whose frames on file are all acked is given up (see
    /// [`reclaim_acked_active`](Self::reclaim_acked_active)) and the write tried once more.
    fn flush_pending(&mut self) -> Result<(), SpoolError> {
        if self.active.pending.is_empty() {
            return Ok(());
        }
        match self.write_pending() {
            Err(error) => {
                self.short_of_room = true;
                if self.reclaim_acked_active()? {
                    self.write_pending().map_err(|_| error)
                } else {
                    Err(error)
                }
            }
            ok => ok,
        }
    }

    fn write_pending(&mut self) -> Result<(), SpoolError> {
        if let Err(e) = self.active.file.write_all(&self.active.pending) {
            // Take back a partial write so the next one does not land after half a frame;
            // if even that fails the file's tail is unknown.
            if self.active.file.set_len(self.active.written).is_err() {
                self.poisoned = true;
            }
            return Err(SpoolError::io("write segment", &self.active_segment().path)(e));
        }
        self.active.written += self.active.pending.len() as u64;
        self.active.pending.clear();
        Ok(())
    }

    /// The last seq handed to the active segment's file (not necessarily synced): buffered
    /// frames are always the newest ones.
    fn written_seq(&self) -> u64 {
        buffered_headers(&self.active.pending)
            .next()
            .map_or(self.next_seq, |(_, first)| first.seq)
            - 1
    }

    /// On a disk with less room than a segment: when every frame of the active segment that
    /// reached its file is acked, the file holds disk space for nothing, and nothing else
    /// frees it — the active segment is only closed once it is full, and its buffered
    /// frames (not durable, so not acked) keep it from being fully acked. Closes it early:
    /// with nothing buffered it is rotated (and, fully acked, unlinked at once); otherwise
    /// the buffered frames move to a new active segment named for the first of them and the
    /// old file is unlinked (its frames are acked in the ledger already). Returns whether it
    /// did either.
    fn reclaim_acked_active(&mut self) -> Result<bool, SpoolError> {
        if self.poisoned || self.active.written == 0 {
            return Ok(false);
        }
        if self.active.pending.is_empty() {
            if !self.active_segment().is_acked(self.ledger.acked_seq) {
                return Ok(false);
            }
            self.rotate()?;
            return Ok(true);
        }
        let pending = &self.active.pending;
        let (_, first) = buffered_headers(pending).next().expect("a buffered frame");
        // Seqs in a segment are consecutive: all on file are below the first buffered one.
        if first.seq > self.ledger.acked_seq + 1 {
            return Ok(false);
        }
        let mut index = Vec::new();
        let mut records = 0u64;
        for (offset, header) in buffered_headers(pending) {
            frame::maybe_index(
                &mut index,
                IndexEntry {
                    seq: header.seq,
                    offset: offset as u64,
                    ordinal: records,
                },
            );
            records += 1;
        }
        let (mut segment, mut active) = create_segment(&self.dir, first.seq)?;
        let old = self.segments.pop_back().expect("an active segment");
        segment.len = pending.len() as u64;
        segment.records = records;
        segment.last_seq = old.last_seq;
        segment.index = index;
        active.pending = std::mem::take(&mut self.active.pending);
        let old_active = std::mem::replace(&mut self.active, active);
        self.disk_bytes -= old_active.written;
        self.total_records -= old.records - records;
        drop(old_active);
        if self.segments.is_empty() {
            // The old segment was the oldest: the head is the first buffered frame.
            self.head = Head {
                seq: Some(first.seq),
                time_ms: Some(first.time_ms),
                ordinal: 0,
                offset: 0,
            };
        }
        self.segments.push_back(segment);
        remove_if_present(&old.path).map_err(SpoolError::io("remove segment", &old.path))?;
        ledger::sync_dir(&self.dir).map_err(SpoolError::io("fsync", &self.dir))?;
        tracing::debug!(dir = %self.dir.display(), acked = %old.path.display(), next = first.seq,
            "spool: the disk is short of room; an acked active segment was split off and removed");
        Ok(true)
    }

    fn sync_active(&mut self) -> Result<(), SpoolError> {
        // What reached the file becomes durable even when the rest cannot be written: on a
        // full disk, frames written but never synced would never be sent, so never acked,
        // and never give their room back.
        let flushed = self.flush_pending();
        if let Err(e) = self.active.file.sync_data() {
            self.poisoned = true;
            return Err(SpoolError::io("fsync segment", &self.active_segment().path)(e));
        }
        self.durable_seq = self.durable_seq.max(self.written_seq());
        flushed?;
        self.unsynced_since = None;
        Ok(())
    }

    /// Closes the active segment (synced, so only the active segment is ever not durable)
    /// and starts a new one named for the next seq.
    fn rotate(&mut self) -> Result<(), SpoolError> {
        self.sync_active()?;
        let (segment, active) = create_segment(&self.dir, self.next_seq)?;
        ledger::sync_dir(&self.dir).map_err(SpoolError::io("fsync", &self.dir))?;
        self.segments.push_back(segment);
        self.active = active;
        self.remove_acked_segments()?;
        self.refresh_head()
    }

    /// Unlinks closed segments whose records are all acked; the acked seq is already in
    /// the ledger.
    fn remove_acked_segments(&mut self) -> Result<(), SpoolError> {
        while self.segments.len() > 1 && self.segments[0].is_acked(self.ledger.acked_seq) {
            let segment = self.segments.pop_front().expect("checked len");
            self.forget(&segment);
            remove_if_present(&segment.path)
                .map_err(SpoolError::io("remove segment", &segment.path))?;
        }
        Ok(())
    }

    fn forget(&mut self, segment: &Segment) {
        self.disk_bytes -= segment.len;
        self.total_records -= segment.records;
        self.head = Head::default();
    }

    /// [`WhenFull::DropOldest`]: removes the oldest closed segments until a frame of
    /// `frame_len` bytes fits, counting their unacked records as dropped and moving the
    /// acked seq past them. The ledger is written before anything is unlinked.
    fn drop_oldest(&mut self, frame_len: u64) -> Result<(), SpoolError> {
        let mut ledger = self.ledger;
        let mut freed = 0;
        let mut count = 0;
        while count + 1 < self.segments.len()
            && self.disk_bytes - freed + frame_len > self.config.max_disk_bytes
        {
            let segment = &self.segments[count];
            let (acked_records, acked_bytes) = if count == 0 {
                (self.head.ordinal, self.head.offset)
            } else {
                (0, 0)
            };
            ledger.dropped_records += segment.records - acked_records;
            ledger.dropped_bytes += segment.len - acked_bytes;
            if let Some(last) = segment.last_seq {
                ledger.acked_seq = ledger.acked_seq.max(last);
            }
            freed += segment.len;
            count += 1;
        }
        if count == 0 {
            return Ok(());
        }
        tracing::warn!(
            dir = %self.dir.display(),
            records = ledger.dropped_records - self.ledger.dropped_records,
            bytes = ledger.dropped_bytes - self.ledger.dropped_bytes,
            acked_seq = ledger.acked_seq,
            "spool full: dropping the oldest unacked records"
        );
        self.persist(ledger)?;
        for _ in 0..count {
            let segment = self.segments.pop_front().expect("counted");
            self.forget(&segment);
            remove_if_present(&segment.path)
                .map_err(SpoolError::io("remove segment", &segment.path))?;
        }
        self.refresh_head()
    }

    /// Finds the first unacked record of the oldest segment, reading headers from the
    /// nearest index entry.
    fn refresh_head(&mut self) -> Result<(), SpoolError> {
        let acked = self.ledger.acked_seq;
        let segment = &self.segments[0];
        let mut head = Head {
            seq: None,
            time_ms: None,
            ordinal: segment.records,
            offset: segment.len,
        };
        if !segment.is_acked(acked) {
            let (mut offset, mut ordinal) = frame::start_for(&segment.index, acked);
            // The record looked for may still be in the write buffer, which is not written
            // here: on a full disk that write fails, and an ack must not.
            let on_file = if self.segments.len() == 1 {
                self.active.written
            } else {
                segment.len
            };
            let read = SpoolError::io("read segment", &segment.path);
            let found = (|| {
                if offset < on_file {
                    let mut reader = BufReader::new(File::open(&segment.path)?);
                    reader.seek(SeekFrom::Start(offset))?;
                    while offset < on_file {
                        let header = read_header(&mut reader)?;
                        if header.seq > acked {
                            return Ok(header);
                        }
                        reader.seek_relative(i64::from(header.len))?;
                        offset += header.frame_len();
                        ordinal += 1;
                    }
                }
                let at = usize::try_from(offset - on_file).map_err(io::Error::other)?;
                let pending = self.active.pending.get(at..).unwrap_or_default();
                for (_, header) in buffered_headers(pending) {
                    if header.seq > acked {
                        return Ok(header);
                    }
                    offset += header.frame_len();
                    ordinal += 1;
                }
                Err(io::Error::other("unacked record not found"))
            })()
            .map_err(read)?;
            head = Head {
                seq: Some(found.seq),
                time_ms: Some(found.time_ms),
                ordinal,
                offset,
            };
        }
        self.head = head;
        Ok(())
    }
}

/// Creates the segment file for records from `first_seq` on. The caller fsyncs the
/// directory.
fn create_segment(dir: &Path, first_seq: u64) -> Result<(Segment, Active), SpoolError> {
    let path = dir.join(frame::segment_name(first_seq));
    // create_new: a segment of that name would mean a seq handed out twice.
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(SpoolError::io("create segment", &path))?;
    let segment = Segment {
        path,
        len: 0,
        records: 0,
        last_seq: None,
        index: Vec::new(),
    };
    let active = Active {
        file,
        written: 0,
        pending: Vec::new(),
    };
    Ok((segment, active))
}

/// The frames of a write buffer (whole frames, as [`frame::encode`] put them): the offset
/// in `pending` and the header of each.
fn buffered_headers(pending: &[u8]) -> impl Iterator<Item = (usize, Header)> + '_ {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let bytes = pending.get(offset..offset + HEADER_LEN)?;
        let header = Header::decode(bytes.try_into().expect("a header"));
        let at = offset;
        offset += usize::try_from(header.frame_len()).expect("a buffered frame");
        Some((at, header))
    })
}

fn read_header(reader: &mut impl Read) -> io::Result<Header> {
    let mut bytes = [0u8; HEADER_LEN];
    reader.read_exact(&mut bytes)?;
    Ok(Header::decode(&bytes))
}
