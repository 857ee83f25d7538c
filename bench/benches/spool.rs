//! The agent's disk spool (`herd-spool`) against the in-memory unacked window it replaced,
//! measured in the same run on the same encoded batches.
//!
//! Every case moves the same number of records, in batches of 100 sysmetrics-like records
//! of about 150 encoded bytes each (`herd_codec::proto::Record`, encoded once with
//! `herd_codec::BatchRecords` before the clock starts):
//!
//! - **memory**: the old path. Each batch is copied into a fresh buffer (as the old batcher
//!   encoded into a fresh one), pushed onto a bounded `VecDeque` (10,000 batches, the old
//!   default), read back at once (a `Bytes` clone, as the old connector sent it) and popped
//!   when acked, batch by batch.
//! - **spool**: the agent's path today. Each batch is appended to a `Spool` (default
//!   config) in a temporary directory under `/tmp`; when the fsync interval is due (100 ms,
//!   the default, and 10 ms and 0 = after every batch; armed like the agent's sync timer)
//!   it is synced, what became durable is read back with `unacked` in 1 MiB chunks and
//!   acked: one cumulative ack per chunk, and in one case an ack per batch, which is how
//!   the hub acks. If the producer fills `max_disk_bytes` before the interval is due, the
//!   spool is synced and drained at once (counted as `full`).
//!
//! Reported per case: records/s and CPU seconds (user + sys, `getrusage(RUSAGE_SELF)`) per
//! million records, each also as a ratio to the memory case; the system share of that CPU
//! time; the peak `VmRSS` growth over the run; and for the spool the share of wall time
//! spent in `append`, `sync`, `unacked` and `ack`.
//!
//! Run with `cargo bench -p herd-bench --bench spool` (2,000,000 records per case, a tenth
//! for the two cases that fsync per batch, 5 rounds, medians; about 25 s after the build);
//! `HERD_BENCH_QUICK=1 cargo bench -p herd-bench --bench spool` moves 100,000 records once
//! per case and takes about a second. `HERD_BENCH_ROUNDS=N` and `HERD_BENCH_RECORDS=N`
//! override the rounds and the records.
//!
//! Each case and round runs in a fresh copy of this executable (the environment variable
//! `HERD_BENCH_ROLE` names the case), so its CPU time and RSS are its own and no case
//! reuses memory another one freed.

use std::collections::{BTreeMap, VecDeque};
use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herd_codec::BatchRecords;
use herd_codec::proto::Record;
use herd_spool::{Spool, SpoolConfig, SpoolError};
use nix::sys::resource::{UsageWho, getrusage};

/// Records per batch, as the agent's batcher cuts them for a busy source.
const RECORDS_PER_BATCH: usize = 100;
/// Distinct pre-encoded batches the cases cycle through.
const POOL_BATCHES: usize = 256;
/// Bytes per `unacked` read, as the agent's connector reads.
const READ_CHUNK_BYTES: usize = 1024 * 1024;
/// The old window's default bound in batches (`spool.max_batches` before the disk spool).
const WINDOW_MAX_BATCHES: usize = 10_000;
/// `VmRSS` is sampled every this many batches (and after every read-back).
const RSS_EVERY: usize = 16;

/// One measured case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// The in-memory window.
    Memory,
    /// The disk spool with this fsync interval (ms); `ack_each` acks every batch.
    Spool { interval_ms: u64, ack_each: bool },
}

impl Case {
    const ALL: [Case; 5] = [
        Case::Memory,
        Case::Spool {
            interval_ms: 100,
            ack_each: false,
        },
        Case::Spool {
            interval_ms: 10,
            ack_each: false,
        },
        Case::Spool {
            interval_ms: 0,
            ack_each: false,
        },
        Case::Spool {
            interval_ms: 100,
            ack_each: true,
        },
    ];

    fn role(self) -> String {
        match self {
            Case::Memory => "memory".to_owned(),
            Case::Spool {
                interval_ms,
                ack_each,
            } => format!(
                "spool-{interval_ms}-{}",
                if ack_each { "each" } else { "chunk" }
            ),
        }
    }

    fn from_role(role: &str) -> Option<Case> {
        Case::ALL.into_iter().find(|case| case.role() == role)
    }

    fn label(self) -> String {
        match self {
            Case::Memory => "memory: VecDeque window (old path)".to_owned(),
            Case::Spool {
                interval_ms: 0,
                ack_each,
            } => format!("spool: fsync every batch, {}", ack_label(ack_each)),
            Case::Spool {
                interval_ms,
                ack_each,
            } => format!("spool: fsync {interval_ms} ms, {}", ack_label(ack_each)),
        }
    }

    /// Every batch pays an fsync (two more for a ledger write per ack): these cases move a
    /// tenth of the records so the bench stays short; the figures are per record anyway.
    fn scale(self) -> u64 {
        match self {
            Case::Spool {
                interval_ms: 0,
                ack_each: _,
            }
            | Case::Spool { ack_each: true, .. } => 10,
            _ => 1,
        }
    }
}

fn ack_label(each: bool) -> &'static str {
    if each {
        "ack per batch"
    } else {
        "ack per 1 MiB read"
    }
}

/// What one case measured.
#[derive(Debug, Default, Clone, Copy)]
struct Measured {
    records: f64,
    wall_s: f64,
    cpu_s: f64,
    user_s: f64,
    rss_growth: f64,
    append_s: f64,
    sync_s: f64,
    read_s: f64,
    ack_s: f64,
    syncs: f64,
    full: f64,
}

impl Measured {
    const FIELDS: [&'static str; 11] = [
        "records",
        "wall_s",
        "cpu_s",
        "user_s",
        "rss_growth",
        "append_s",
        "sync_s",
        "read_s",
        "ack_s",
        "syncs",
        "full",
    ];

    fn values(&self) -> [f64; 11] {
        [
            self.records,
            self.wall_s,
            self.cpu_s,
            self.user_s,
            self.rss_growth,
            self.append_s,
            self.sync_s,
            self.read_s,
            self.ack_s,
            self.syncs,
            self.full,
        ]
    }

    fn from_values(v: &[f64]) -> Self {
        Self {
            records: v[0],
            wall_s: v[1],
            cpu_s: v[2],
            user_s: v[3],
            rss_growth: v[4],
            append_s: v[5],
            sync_s: v[6],
            read_s: v[7],
            ack_s: v[8],
            syncs: v[9],
            full: v[10],
        }
    }

    fn print(&self) {
        for (name, value) in Self::FIELDS.iter().zip(self.values()) {
            println!("METRIC {name} {value}");
        }
    }

    fn parse(stdout: &str) -> Self {
        let metrics: BTreeMap<&str, f64> = stdout
            .lines()
            .filter_map(|line| line.strip_prefix("METRIC "))
            .filter_map(|line| line.split_once(' '))
            .map(|(name, value)| (name, value.parse().expect("a number")))
            .collect();
        let values: Vec<f64> = Self::FIELDS
            .iter()
            .map(|name| *metrics.get(name).unwrap_or_else(|| panic!("no {name}")))
            .collect();
        Self::from_values(&values)
    }

    fn records_per_s(&self) -> f64 {
        self.records / self.wall_s
    }

    fn cpu_per_million(&self) -> f64 {
        self.cpu_s / self.records * 1e6
    }
}

/// User plus system and user-only CPU seconds of this process so far.
fn cpu_seconds() -> (f64, f64) {
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let user = secs(usage.user_time());
    (user + secs(usage.system_time()), user)
}

/// Resident set size of this process in bytes.
fn rss_bytes() -> f64 {
    herd_tests::process::rss_bytes(std::process::id()).expect("VmRSS of this process") as f64
}

/// Highest `VmRSS` seen since the start of a run.
struct PeakRss {
    start: f64,
    peak: f64,
}

impl PeakRss {
    fn start() -> Self {
        let start = rss_bytes();
        Self { start, peak: start }
    }

    fn sample(&mut self) {
        self.peak = self.peak.max(rss_bytes());
    }

    fn growth(&self) -> f64 {
        self.peak - self.start
    }
}

/// A sysmetrics-like sample (a load record with a host tag), about 150 bytes encoded.
fn record(n: u64) -> Record {
    let fields = [
        ("host", "web-01.example.internal".to_owned()),
        ("load1", format!("{:.2}", (n % 400) as f64 / 100.0)),
        ("load5", format!("{:.2}", (n % 300) as f64 / 100.0)),
        ("load15", format!("{:.2}", (n % 200) as f64 / 100.0)),
        ("uptime_secs", (86_400 + n).to_string()),
        ("boot_time", "1795000000".to_owned()),
    ];
    Record {
        data_type: 2003,
        timestamp_ms: 1_796_000_000_000 + n as i64,
        source: "sysmetrics".to_owned(),
        fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        body: Default::default(),
    }
}

/// The pre-encoded batches every case cycles through.
fn pool() -> Vec<BatchRecords> {
    (0..POOL_BATCHES)
        .map(|b| {
            let first = (b * RECORDS_PER_BATCH) as u64;
            BatchRecords::new(
                (first..first + RECORDS_PER_BATCH as u64)
                    .map(record)
                    .collect(),
            )
        })
        .collect()
}

/// The old path: a bounded window of encoded batches, read by cloning, popped on ack.
struct Window {
    batches: VecDeque<(u64, BatchRecords)>,
    max_batches: usize,
    next_seq: u64,
    dropped: u64,
}

impl Window {
    fn new(max_batches: usize) -> Self {
        Self {
            batches: VecDeque::with_capacity(max_batches.min(1024)),
            max_batches,
            next_seq: 1,
            dropped: 0,
        }
    }

    fn push(&mut self, batch: BatchRecords) -> u64 {
        if self.batches.len() == self.max_batches {
            self.batches.pop_front();
            self.dropped += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.batches.push_back((seq, batch));
        seq
    }

    /// Batches with seq `>= from` until their bytes reach `max_bytes` (at least one).
    fn unacked(&self, from: u64, max_bytes: usize) -> Vec<(u64, Bytes)> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (seq, batch) in self.batches.iter().filter(|(seq, _)| *seq >= from) {
            let len = batch.bytes().len();
            if !out.is_empty() && bytes + len > max_bytes {
                break;
            }
            bytes += len;
            out.push((*seq, batch.bytes().clone()));
        }
        out
    }

    fn ack(&mut self, seq: u64) {
        while self.batches.front().is_some_and(|(s, _)| *s <= seq) {
            self.batches.pop_front();
        }
    }
}

fn run_memory(pool: &[BatchRecords], batches: usize) -> Measured {
    let mut window = Window::new(WINDOW_MAX_BATCHES);
    let mut next = 1;
    let mut read = 0usize;
    let mut rss = PeakRss::start();
    let cpu = cpu_seconds();
    let start = Instant::now();
    for i in 0..batches {
        // The old batcher encoded every batch into a buffer of its own.
        let fresh = BatchRecords::from_stored(Bytes::copy_from_slice(pool[i % pool.len()].bytes()));
        window.push(fresh);
        // Sent at once and acked by the hub batch by batch.
        loop {
            let chunk = window.unacked(next, READ_CHUNK_BYTES);
            let Some(&(last, _)) = chunk.last() else {
                break;
            };
            read += chunk.len();
            if i % RSS_EVERY == 0 {
                rss.sample();
            }
            black_box(&chunk);
            next = last + 1;
            window.ack(last);
        }
    }
    let wall_s = start.elapsed().as_secs_f64();
    let (cpu_s, user_s) = {
        let (total, user) = cpu_seconds();
        (total - cpu.0, user - cpu.1)
    };
    rss.sample();
    assert_eq!(read, batches, "every batch read back once");
    assert_eq!(window.dropped, 0);
    Measured {
        records: (batches * RECORDS_PER_BATCH) as f64,
        wall_s,
        cpu_s,
        user_s,
        rss_growth: rss.growth(),
        ..Measured::default()
    }
}

/// Time spent in the spool's calls, and what was read back.
#[derive(Default)]
struct SpoolTimes {
    append: Duration,
    sync: Duration,
    read: Duration,
    ack: Duration,
    syncs: u64,
    batches_read: usize,
}

/// Syncs, then reads everything durable from `next` in 1 MiB chunks and acks it.
fn sync_and_drain(
    spool: &mut Spool,
    next: &mut u64,
    ack_each: bool,
    times: &mut SpoolTimes,
    rss: &mut PeakRss,
) {
    let t = Instant::now();
    spool.sync().expect("sync");
    times.sync += t.elapsed();
    times.syncs += 1;
    loop {
        let t = Instant::now();
        let chunk = spool.unacked(*next, READ_CHUNK_BYTES).expect("unacked");
        times.read += t.elapsed();
        let Some(&(last, _)) = chunk.last() else {
            break;
        };
        times.batches_read += chunk.len();
        rss.sample();
        let t = Instant::now();
        for (seq, bytes) in chunk {
            // What the connector frames and sends.
            black_box(BatchRecords::from_stored(bytes));
            if ack_each {
                spool.ack(seq).expect("ack");
            }
        }
        if !ack_each {
            spool.ack(last).expect("ack");
        }
        times.ack += t.elapsed();
        *next = last + 1;
    }
}

fn run_spool(pool: &[BatchRecords], batches: usize, interval_ms: u64, ack_each: bool) -> Measured {
    let dir = tempfile::Builder::new()
        .prefix("herd-spool-bench-")
        .tempdir_in("/tmp")
        .expect("temp dir under /tmp");
    let config = SpoolConfig {
        fsync_interval_ms: interval_ms,
        ..SpoolConfig::default()
    };
    let mut rss = PeakRss::start();
    let cpu = cpu_seconds();
    let start = Instant::now();
    let (mut spool, recovery) = Spool::open(dir.path(), config).expect("open the spool");
    assert_eq!(recovery.records, 0);
    let mut times = SpoolTimes::default();
    let mut next = 1;
    let mut full = 0u64;
    let mut due: Option<Instant> = None;
    for i in 0..batches {
        let batch = pool[i % pool.len()].bytes();
        let t = Instant::now();
        let appended = spool.append(batch);
        times.append += t.elapsed();
        match appended {
            Ok(_) => {}
            Err(SpoolError::Full { .. }) => {
                // The producer outran the fsync interval and filled `max_disk_bytes`: the
                // agent stalls its sources until acks free space; here that is at once.
                full += 1;
                sync_and_drain(&mut spool, &mut next, ack_each, &mut times, &mut rss);
                spool
                    .append(batch)
                    .expect("append after the spool was drained");
            }
            Err(error) => panic!("append: {error}"),
        }
        // The agent arms its sync timer at `sync_due` and keeps it armed even when a
        // segment rotation synced in between (rotations reset `needs_sync`): do the same.
        if due.is_none() {
            due = spool.sync_due();
        }
        if due.is_some_and(|due| Instant::now() >= due) {
            due = None;
            sync_and_drain(&mut spool, &mut next, ack_each, &mut times, &mut rss);
        }
        if i % RSS_EVERY == 0 {
            rss.sample();
        }
    }
    sync_and_drain(&mut spool, &mut next, ack_each, &mut times, &mut rss);
    spool.close().expect("close");
    let wall_s = start.elapsed().as_secs_f64();
    let (cpu_s, user_s) = {
        let (total, user) = cpu_seconds();
        (total - cpu.0, user - cpu.1)
    };
    rss.sample();
    assert_eq!(times.batches_read, batches, "every batch read back once");
    Measured {
        records: (batches * RECORDS_PER_BATCH) as f64,
        wall_s,
        cpu_s,
        user_s,
        rss_growth: rss.growth(),
        append_s: times.append.as_secs_f64(),
        sync_s: times.sync.as_secs_f64(),
        read_s: times.read.as_secs_f64(),
        ack_s: times.ack.as_secs_f64(),
        syncs: times.syncs as f64,
        full: full as f64,
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

/// Runs one case in this process and prints its `METRIC` lines.
fn child(case: Case) {
    let records = env_u64("HERD_BENCH_RECORDS").expect("HERD_BENCH_RECORDS");
    let batches = (records as usize).div_ceil(RECORDS_PER_BATCH);
    let pool = pool();
    let measured = match case {
        Case::Memory => run_memory(&pool, batches),
        Case::Spool {
            interval_ms,
            ack_each,
        } => run_spool(&pool, batches, interval_ms, ack_each),
    };
    measured.print();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

fn main() {
    if let Ok(role) = std::env::var("HERD_BENCH_ROLE") {
        child(Case::from_role(&role).unwrap_or_else(|| panic!("unknown role {role:?}")));
        return;
    }
    let quick = std::env::var_os("HERD_BENCH_QUICK").is_some_and(|v| v != "0");
    let records = env_u64("HERD_BENCH_RECORDS").unwrap_or(if quick { 100_000 } else { 2_000_000 });
    let rounds = env_u64("HERD_BENCH_ROUNDS")
        .unwrap_or(if quick { 1 } else { 5 })
        .max(1);

    let pool = pool();
    let batch_bytes: usize = pool.iter().map(|b| b.bytes().len()).sum::<usize>() / pool.len();
    let encode = {
        let input: Vec<Vec<Record>> = (0..POOL_BATCHES)
            .map(|b| {
                let first = (b * RECORDS_PER_BATCH) as u64;
                (first..first + RECORDS_PER_BATCH as u64)
                    .map(record)
                    .collect()
            })
            .collect();
        let start = Instant::now();
        for records in input {
            black_box(BatchRecords::new(records));
        }
        start.elapsed().as_secs_f64() / (POOL_BATCHES * RECORDS_PER_BATCH) as f64 * 1e6
    };
    println!(
        "herd-spool against the in-memory window: batches of {RECORDS_PER_BATCH} records, \
         {batch_bytes} bytes per encoded batch ({:.0} bytes per record); {records} records per \
         case (a tenth for the cases marked *), {rounds} round(s), medians",
        batch_bytes as f64 / RECORDS_PER_BATCH as f64
    );
    println!(
        "(for scale: encoding the records with BatchRecords::new, not part of any case, takes \
         {encode:.2} s per million records)"
    );

    let exe = std::env::current_exe().expect("current exe");
    let mut results: BTreeMap<String, Vec<Measured>> = BTreeMap::new();
    for _ in 0..rounds {
        for case in Case::ALL {
            let output = Command::new(&exe)
                .env("HERD_BENCH_ROLE", case.role())
                .env("HERD_BENCH_RECORDS", (records / case.scale()).to_string())
                .output()
                .expect("run a case");
            assert!(
                output.status.success(),
                "case {} failed: {}",
                case.role(),
                String::from_utf8_lossy(&output.stderr)
            );
            let measured = Measured::parse(&String::from_utf8_lossy(&output.stdout));
            results.entry(case.role()).or_default().push(measured);
        }
    }
    let medians: Vec<(Case, Measured)> = Case::ALL
        .into_iter()
        .map(|case| {
            let runs = &results[&case.role()];
            let values: Vec<f64> = (0..Measured::FIELDS.len())
                .map(|i| median(runs.iter().map(|m| m.values()[i]).collect()))
                .collect();
            (case, Measured::from_values(&values))
        })
        .collect();
    let base = medians[0].1;

    let header = [
        "case",
        "records",
        "records/s",
        "rate ×",
        "CPU s/M",
        "CPU ×",
        "sys",
        "peak RSS+",
        "in append",
        "in sync",
        "in read",
        "in ack",
        "syncs",
    ];
    let mut rows = Vec::new();
    for (case, m) in medians {
        let spool_only = |text: String| {
            if case == Case::Memory {
                "-".to_owned()
            } else {
                text
            }
        };
        let share = |s: f64| spool_only(format!("{:.0} %", s / m.wall_s * 100.0));
        let star = if case.scale() > 1 { " *" } else { "" };
        rows.push(vec![
            format!("{}{star}", case.label()),
            format!("{}", m.records),
            format!("{:.0}", m.records_per_s()),
            format!("{:.4}", m.records_per_s() / base.records_per_s()),
            format!("{:.3}", m.cpu_per_million()),
            format!("{:.1}", m.cpu_per_million() / base.cpu_per_million()),
            spool_only(format!("{:.0} %", (m.cpu_s - m.user_s) / m.cpu_s * 100.0)),
            mib(m.rss_growth),
            share(m.append_s),
            share(m.sync_s),
            share(m.read_s),
            share(m.ack_s),
            spool_only(if m.full > 0.0 {
                format!("{} ({} full)", m.syncs, m.full)
            } else {
                m.syncs.to_string()
            }),
        ]);
    }
    println!();
    print_table(&header, &rows);
}

/// Prints a Markdown table, the first column left-aligned and the others right-aligned.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|row| row[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, &w))| {
                if c == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        println!("| {} |", cells.join(" | "));
    };
    line(header.to_vec());
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
