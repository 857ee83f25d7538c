//! Record frames and segment files: encoding, naming and the scan that recovery and
//! `verify` share.
//!
//! A frame is a 24-byte little-endian header followed by the payload:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | payload length (`u32`) |
//! | 4..8 | crc32c over bytes 8..24 and the payload |
//! | 8..16 | seq (`u64`) |
//! | 16..24 | creation time, ms since the Unix epoch (`u64`) |
//! | 24.. | payload |
//!
//! The length is outside the checksum because it is needed to find the checksummed
//! bytes; a garbled length shows up as a short payload or a checksum mismatch.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes of a frame header.
pub(crate) const HEADER_LEN: usize = 24;
/// A sparse index entry is kept for the first record at or after every this many bytes of
/// a segment, so finding a seq reads at most this much of headers.
pub(crate) const INDEX_STEP: u64 = 64 * 1024;
/// Read buffer for scans.
const READ_BUF: usize = 64 * 1024;
const SEGMENT_SUFFIX: &str = ".seg";

/// What is wrong with a frame found by recovery or [`verify`](crate::verify).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameProblem {
    /// Fewer bytes than a frame header are left in the file (a torn write).
    ShortHeader {
        /// Bytes left.
        available: u64,
    },
    /// The header claims more payload than the file holds (a torn write or a garbled
    /// length).
    ShortPayload {
        /// The claimed payload length.
        len: u32,
        /// Payload bytes left in the file.
        available: u64,
    },
    /// The checksum does not match the seq, time and payload.
    CrcMismatch {
        /// The seq the header claims.
        seq: u64,
    },
    /// The seq is not above the previous record's (or below the segment's first seq).
    SeqOutOfOrder {
        /// The seq found.
        seq: u64,
        /// The smallest seq that would have been in order.
        min: u64,
    },
}

impl fmt::Display for FrameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameProblem::ShortHeader { available } => {
                write!(f, "torn header ({available} of {HEADER_LEN} bytes)")
            }
            FrameProblem::ShortPayload { len, available } => {
                write!(f, "torn payload ({available} of {len} bytes)")
            }
            FrameProblem::CrcMismatch { seq } => write!(f, "checksum mismatch (seq {seq})"),
            FrameProblem::SeqOutOfOrder { seq, min } => {
                write!(f, "seq {seq} out of order (expected at least {min})")
            }
        }
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub(crate) len: u32,
    pub(crate) crc: u32,
    pub(crate) seq: u64,
    pub(crate) time_ms: u64,
}

impl Header {
    pub(crate) fn decode(bytes: &[u8; HEADER_LEN]) -> Self {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Header {
            len: u32_at(0),
            crc: u32_at(4),
            seq: u64_at(8),
            time_ms: u64_at(16),
        }
    }

    /// Bytes of the whole frame.
    pub(crate) fn frame_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.len)
    }

    /// The checksum's running value over the header fields it covers.
    fn crc_start(&self) -> u32 {
        let crc = crc32c::crc32c(&self.seq.to_le_bytes());
        crc32c::crc32c_append(crc, &self.time_ms.to_le_bytes())
    }

    /// Whether `payload` is the payload this header was written with.
    pub(crate) fn matches(&self, payload: &[u8]) -> bool {
        crc32c::crc32c_append(self.crc_start(), payload) == self.crc
    }
}

/// Appends one frame to `out`. The caller has checked that `payload` fits a `u32`.
pub(crate) fn encode(out: &mut Vec<u8>, seq: u64, time_ms: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payload length checked against segment_bytes");
    let mut header = Header {
        len,
        crc: 0,
        seq,
        time_ms,
    };
    header.crc = crc32c::crc32c_append(header.crc_start(), payload);
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.len.to_le_bytes());
    out.extend_from_slice(&header.crc.to_le_bytes());
    out.extend_from_slice(&header.seq.to_le_bytes());
    out.extend_from_slice(&header.time_ms.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The file name of the segment whose first record has seq `first_seq`.
pub(crate) fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The first seq encoded in a segment file name, or `None` for any other file.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files of `dir`, sorted by first seq.
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(first_seq) = entry.file_name().to_str().and_then(parse_segment_name) else {
            continue;
        };
        segments.push((first_seq, entry.path()));
    }
    segments.sort_unstable_by_key(|(first_seq, _)| *first_seq);
    Ok(segments)
}

/// A sparse index entry: where a record starts in its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) seq: u64,
    pub(crate) offset: u64,
    /// How many records of the segment come before this one.
    pub(crate) ordinal: u64,
}

/// Adds an index entry for a record at `offset` if the last one is far enough behind.
pub(crate) fn maybe_index(index: &mut Vec<IndexEntry>, entry: IndexEntry) {
    if index
        .last()
        .is_none_or(|last| entry.offset >= last.offset + INDEX_STEP)
    {
        index.push(entry);
    }
}

/// The index entry to start from to find the first record with seq `>= seq`: the last
/// entry at or below it (records before it are all below `seq`), or the segment start.
pub(crate) fn start_for(index: &[IndexEntry], seq: u64) -> (u64, u64) {
    match index
        .partition_point(|entry| entry.seq <= seq)
        .checked_sub(1)
    {
        Some(at) => (index[at].offset, index[at].ordinal),
        None => (0, 0),
    }
}

/// The first bad frame of a segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BadFrame {
    pub(crate) offset: u64,
    pub(crate) problem: FrameProblem,
    /// Best-effort count of the frames from `offset` to the end of the file: the bad one
    /// plus those that can still be walked by their length fields.
    pub(crate) records: u64,
}

/// What a scan of one segment file found.
#[derive(Debug, Clone)]
pub(crate) struct Scan {
    pub(crate) records: u64,
    pub(crate) first_seq: Option<u64>,
    pub(crate) last_seq: Option<u64>,
    /// Bytes of good frames from the start: where the file must be cut if `bad` is set.
    pub(crate) good_len: u64,
    pub(crate) file_len: u64,
    pub(crate) index: Vec<IndexEntry>,
    pub(crate) bad: Option<BadFrame>,
    /// Good records with seq above the scan's `count_above`.
    pub(crate) records_above: u64,
}

/// Reads into `buf` until it is full or the reader ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Scans a segment file frame by frame, checking lengths, checksums and that seqs are
/// strictly increasing from `min_seq`, and counts the good records above `count_above`.
/// Stops at the first bad frame. Only I/O errors are errors; bad content is reported in
/// [`Scan::bad`].
pub(crate) fn scan(path: &Path, min_seq: u64, count_above: u64) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(READ_BUF, file);
    let mut chunk = vec![0u8; READ_BUF];
    let mut scan = Scan {
        records: 0,
        first_seq: None,
        last_seq: None,
        good_len: 0,
        file_len,
        index: Vec::new(),
        bad: None,
        records_above: 0,
    };
    let mut min = min_seq;
    let mut offset = 0u64;
    let bad = loop {
        let available = file_len - offset;
        if available == 0 {
            break None;
        }
        let mut bytes = [0u8; HEADER_LEN];
        let got = read_full(&mut reader, &mut bytes)?;
        if got < HEADER_LEN {
            // The file may have shrunk since its length was taken; count what was there.
            let available = available.min(got as u64);
            break Some((FrameProblem::ShortHeader { available }, None));
        }
        let header = Header::decode(&bytes);
        let payload_available = available - HEADER_LEN as u64;
        if u64::from(header.len) > payload_available {
            break Some((
                FrameProblem::ShortPayload {
                    len: header.len,
                    available: payload_available,
                },
                None,
            ));
        }
        // Checksum the payload in chunks: a frame can be as large as a segment and need
        // not be held in memory to be checked.
        let mut crc = header.crc_start();
        let mut left = u64::from(header.len);
        let mut torn = false;
        while left > 0 {
            let want = usize::try_from(left.min(READ_BUF as u64)).expect("bounded by READ_BUF");
            let got = read_full(&mut reader, &mut chunk[..want])?;
            crc = crc32c::crc32c_append(crc, &chunk[..got]);
            left -= got as u64;
            if got < want {
                torn = true;
                break;
            }
        }
        if torn {
            let available = u64::from(header.len) - left;
            break Some((
                FrameProblem::ShortPayload {
                    len: header.len,
                    available,
                },
                None,
            ));
        }
        if crc != header.crc {
            let problem = FrameProblem::CrcMismatch { seq: header.seq };
            break Some((problem, Some(header.frame_len())));
        }
        if header.seq < min {
            let problem = FrameProblem::SeqOutOfOrder {
                seq: header.seq,
                min,
            };
            break Some((problem, Some(header.frame_len())));
        }
        maybe_index(
            &mut scan.index,
            IndexEntry {
                seq: header.seq,
                offset,
                ordinal: scan.records,
            },
        );
        scan.records += 1;
        scan.records_above += u64::from(header.seq > count_above);
        scan.first_seq.get_or_insert(header.seq);
        scan.last_seq = Some(header.seq);
        min = header.seq.saturating_add(1);
        offset += header.frame_len();
        scan.good_len = offset;
    };
    if let Some((problem, frame_len)) = bad {
        let records = match frame_len {
            Some(frame_len) => count_frames(reader.get_mut(), offset + frame_len, file_len)? + 1,
            None => 1,
        };
        scan.bad = Some(BadFrame {
            offset,
            problem,
            records,
        });
    }
    Ok(scan)
}

/// Best-effort count of the frames from `pos` to `file_len`, walking length fields
/// without checking anything else; a torn remainder counts as one.
fn count_frames(file: &mut File, mut pos: u64, file_len: u64) -> io::Result<u64> {
    let mut count = 0;
    while pos < file_len {
        count += 1;
        if file_len - pos < HEADER_LEN as u64 {
            break;
        }
        file.seek(SeekFrom::Start(pos))?;
        let mut bytes = [0u8; HEADER_LEN];
        if read_full(file, &mut bytes)? < HEADER_LEN {
            break;
        }
        pos += Header::decode(&bytes).frame_len();
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_reject_strangers() {
        assert_eq!(segment_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("ledger"), None);
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000042.seg.tmp"), None);
    }

    #[test]
    fn frame_checksum_covers_seq_time_and_payload() {
        let mut out = Vec::new();
        encode(&mut out, 7, 1_700_000_000_000, b"hello");
        assert_eq!(out.len(), HEADER_LEN + 5);
        let header = Header::decode(out[..HEADER_LEN].try_into().expect("header"));
        assert_eq!(
            (header.len, header.seq, header.time_ms),
            (5, 7, 1_700_000_000_000)
        );
        assert!(header.matches(b"hello"));
        assert!(!header.matches(b"hellO"));
        let mut other_seq = header;
        other_seq.seq = 8;
        assert!(!other_seq.matches(b"hello"));
        let mut other_time = header;
        other_time.time_ms += 1;
        assert!(!other_time.matches(b"hello"));
    }

    #[test]
    fn start_for_picks_the_last_entry_at_or_below() {
        let index = [
            IndexEntry {
                seq: 10,
                offset: 0,
                ordinal: 0,
            },
            IndexEntry {
                seq: 20,
                offset: 70_000,
                ordinal: 10,
            },
        ];
        assert_eq!(start_for(&index, 5), (0, 0));
        assert_eq!(start_for(&index, 19), (0, 0));
        assert_eq!(start_for(&index, 20), (70_000, 10));
        assert_eq!(start_for(&index, 99), (70_000, 10));
    }
}
