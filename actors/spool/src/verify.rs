//! Read-only inspection of a spool directory (`herd-agent spool verify`).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::SpoolError;
use crate::frame::{self, FrameProblem};
use crate::ledger::{self, LEDGER_FILE, LedgerError};

/// The ledger's numbers, as [`verify`] read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerSummary {
    /// No seq at or above this one has been handed out.
    pub next_seq: u64,
    /// Every seq up to this one is acked (or dropped).
    pub acked_seq: u64,
    /// Records dropped unacked by `drop_oldest`.
    pub dropped_records: u64,
    /// Frame bytes of those records.
    pub dropped_bytes: u64,
    /// Records cut by recovery (best effort).
    pub corrupt_records: u64,
    /// Bytes cut by recovery.
    pub corrupt_bytes: u64,
    /// Times the ledger was rebuilt from the segments.
    pub ledger_rebuilds: u64,
}

/// The state of the ledger file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerStatus {
    /// There is no ledger (a spool never opened, or one whose ledger was deleted).
    Missing,
    /// The ledger cannot be used; opening the spool rebuilds it from the segments.
    Unusable(LedgerError),
    /// The ledger is good.
    Ok(LedgerSummary),
}

/// One segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    /// The file.
    pub path: PathBuf,
    /// The first seq its name announces.
    pub first_seq: u64,
    /// Good records in it (up to the first bad frame).
    pub records: u64,
    /// The file's size.
    pub bytes: u64,
    /// The seq of its last good record.
    pub last_seq: Option<u64>,
}

/// A bad frame: opening the spool cuts the segment here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptFrame {
    /// The segment file.
    pub segment: PathBuf,
    /// Where the bad frame starts.
    pub offset: u64,
    /// What is wrong with it.
    pub problem: FrameProblem,
    /// Bytes from the bad frame to the end of the file.
    pub bytes_cut: u64,
    /// Best-effort count of frames in those bytes.
    pub records_cut: u64,
}

/// What [`verify`] found. Its `Display` is a short human summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The spool directory.
    pub dir: PathBuf,
    /// The ledger.
    pub ledger: LedgerStatus,
    /// The segment files, in seq order.
    pub segments: Vec<SegmentReport>,
    /// Good records in all segments.
    pub records: u64,
    /// Bytes of all segment files.
    pub bytes: u64,
    /// The lowest seq of a good record.
    pub first_seq: Option<u64>,
    /// The highest seq of a good record.
    pub last_seq: Option<u64>,
    /// Good records above the ledger's acked seq (all of them without a usable ledger).
    pub unacked_records: u64,
    /// Bad frames, at most one per segment (a segment is not read past its first).
    pub corrupt: Vec<CorruptFrame>,
}

impl VerifyReport {
    /// Whether nothing needs repair: no bad frame and a usable ledger (or an empty spool
    /// without one).
    pub fn is_clean(&self) -> bool {
        let ledger_fine = match self.ledger {
            LedgerStatus::Ok(_) => true,
            LedgerStatus::Missing => self.segments.is_empty(),
            LedgerStatus::Unusable(_) => false,
        };
        ledger_fine && self.corrupt.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spool {}: {} segments, {} records, {} bytes",
            self.dir.display(),
            self.segments.len(),
            self.records,
            self.bytes
        )?;
        match (self.first_seq, self.last_seq) {
            (Some(first), Some(last)) => writeln!(f, ", seqs {first}..={last}")?,
            _ => writeln!(f)?,
        }
        match &self.ledger {
            LedgerStatus::Missing => writeln!(f, "ledger: missing")?,
            LedgerStatus::Unusable(reason) => {
                writeln!(f, "ledger: unusable ({reason}); opening rebuilds it")?;
            }
            LedgerStatus::Ok(l) => writeln!(
                f,
                "ledger: next seq {}, acked seq {} ({} records unacked), dropped {} records ({} bytes), \
                 corrupt {} records ({} bytes), rebuilt {} times",
                l.next_seq,
                l.acked_seq,
                self.unacked_records,
                l.dropped_records,
                l.dropped_bytes,
                l.corrupt_records,
                l.corrupt_bytes,
                l.ledger_rebuilds
            )?,
        }
        for bad in &self.corrupt {
            let name = bad
                .segment
                .file_name()
                .unwrap_or_default()
                .to_string_lossy();
            writeln!(
                f,
                "corrupt: {name} at byte {}: {}; opening cuts {} bytes (~{} records)",
                bad.offset, bad.problem, bad.bytes_cut, bad.records_cut
            )?;
        }
        if self.is_clean() {
            write!(f, "ok")
        } else {
            let problems =
                self.corrupt.len() + usize::from(!matches!(self.ledger, LedgerStatus::Ok(_)));
            write!(f, "{problems} problem(s); opening the spool repairs them")
        }
    }
}

/// Inspects the spool in `dir` without changing anything: the ledger, every segment,
/// every frame's length, checksum and seq order. Run it on a spool that is not open (an
/// open one may be mid-write, which shows as a torn tail).
///
/// Fails only on I/O errors (a missing directory, permissions); bad content is reported.
pub fn verify(dir: impl AsRef<Path>) -> Result<VerifyReport, SpoolError> {
    let dir = dir.as_ref();
    let ledger = match ledger::read(dir).map_err(SpoolError::io("read", dir.join(LEDGER_FILE)))? {
        None => LedgerStatus::Missing,
        Some(Err(reason)) => LedgerStatus::Unusable(reason),
        Some(Ok(l)) => LedgerStatus::Ok(LedgerSummary {
            next_seq: l.next_seq,
            acked_seq: l.acked_seq,
            dropped_records: l.dropped_records,
            dropped_bytes: l.dropped_bytes,
            corrupt_records: l.corrupt_records,
            corrupt_bytes: l.corrupt_bytes,
            ledger_rebuilds: l.ledger_rebuilds,
        }),
    };
    let acked_seq = match &ledger {
        LedgerStatus::Ok(l) => l.acked_seq,
        _ => 0,
    };
    let mut report = VerifyReport {
        dir: dir.to_path_buf(),
        ledger,
        segments: Vec::new(),
        records: 0,
        bytes: 0,
        first_seq: None,
        last_seq: None,
        unacked_records: 0,
        corrupt: Vec::new(),
    };
    // The same scan as recovery, so verify reports exactly what opening would cut.
    let mut prev_last: Option<u64> = None;
    for (first_seq, path) in frame::list_segments(dir).map_err(SpoolError::io("list", dir))? {
        let min_seq = prev_last.map_or(first_seq, |last| first_seq.max(last.saturating_add(1)));
        let scan = frame::scan(&path, min_seq, acked_seq)
            .map_err(SpoolError::io("read segment", &path))?;
        if let Some(bad) = scan.bad {
            report.corrupt.push(CorruptFrame {
                segment: path.clone(),
                offset: bad.offset,
                problem: bad.problem,
                bytes_cut: scan.file_len - scan.good_len,
                records_cut: bad.records,
            });
        }
        report.records += scan.records;
        report.bytes += scan.file_len;
        report.unacked_records += scan.records_above;
        if report.first_seq.is_none() {
            report.first_seq = scan.first_seq;
        }
        prev_last = scan.last_seq.or(prev_last);
        report.last_seq = prev_last;
        report.segments.push(SegmentReport {
            path,
            first_seq,
            records: scan.records,
            bytes: scan.file_len,
            last_seq: scan.last_seq,
        });
    }
    Ok(report)
}
