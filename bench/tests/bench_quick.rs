//! Smoke test: `herd-bench --quick` finishes in time and prints every row with
//! a numeric ratio, and the ingest table with a numeric rate and CPU seconds
//! per million records for each process of every case, so the benchmarks keep
//! working.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Beginnings of every row of the table.
const ROWS: [&str; 16] = [
    "ingest CPU s/1M records: hub vs tokio forwarder",
    "ingest records/s: hub vs tokio forwarder",
    "ingest records/s: hub vs pre-encoded NATS publisher",
    "ingest records/s: hub jetstream vs JetStream publisher",
    "ingest CPU s/1M records: hub grouped vs tokio forwarder",
    "ingest CPU s/1M records: hub TLS vs plaintext (flush)",
    "accept + handshake",
    "RSS per idle connection",
    "back after kill -9 + restart",
    "task latency p50",
    "task latency p99",
    "tasks/s",
    "idle agent",
    "idle sysmetrics",
    "idle logtail",
    "idle exec",
];
/// The cases of the ingest table, and whether each has a server process.
const INGEST_CASES: [(&str, bool); 7] = [
    ("herd-hub, ack_mode flush", true),
    ("herd-hub over TLS, ack_mode flush", true),
    ("herd-hub, data_form batch (flush)", true),
    ("tokio forwarder (flush)", true),
    ("pre-encoded publisher, core NATS", false),
    ("herd-hub, ack_mode jetstream", true),
    ("pre-encoded publisher, JetStream", false),
];
/// Its columns after the case.
const INGEST_COLUMNS: [&str; 6] = [
    "records/s",
    "server CPU s/1M",
    "nats-server CPU s/1M",
    "subscriber CPU s/1M",
    "load gen CPU s/1M",
    "all CPU s/1M",
];
const LIMIT: Duration = Duration::from_secs(55);

/// The cells after the first of the table line starting with `first`.
fn cells<'a>(stdout: &'a str, first: &str) -> Vec<&'a str> {
    let line = stdout
        .lines()
        .find(|line| line.split('|').next().map(str::trim) == Some(first))
        .unwrap_or_else(|| panic!("no line {first:?} in:\n{stdout}"));
    line.split('|').skip(1).map(str::trim).collect()
}

/// A cell `min / median / max`, each a finite number, min <= median <= max.
fn triple(cell: &str, what: &str) -> [f64; 3] {
    let values: Vec<f64> = cell
        .split(" / ")
        .map(|value| {
            value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{what}: {cell:?} is not min / median / max"))
        })
        .collect();
    let [min, median, max] = values[..] else {
        panic!("{what}: {cell:?} is not min / median / max");
    };
    assert!(
        min.is_finite() && min >= 0.0 && min <= median && median <= max && max.is_finite(),
        "{what}: {cell:?}"
    );
    [min, median, max]
}

#[test]
fn bench_quick_prints_every_row_with_a_ratio() {
    // The hub, agent and plugins it drives: built here, outside the timed run
    // (already there after `cargo test --workspace`).
    let prepared = Command::new(env!("CARGO_BIN_EXE_herd-bench"))
        .arg("--prepare")
        .status()
        .expect("herd-bench --prepare runs");
    assert!(
        prepared.success(),
        "building the binaries failed: {prepared}"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_herd-bench"))
        .arg("--quick")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herd-bench starts");
    let started = Instant::now();
    // Polled rather than waited on so a hang is killed and fails fast.
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herd-bench --quick still running after {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "herd-bench failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    assert_eq!(
        cells(&stdout, "case"),
        INGEST_COLUMNS,
        "ingest table header"
    );
    for (case, has_server) in INGEST_CASES {
        let cells = cells(&stdout, case);
        assert_eq!(cells.len(), INGEST_COLUMNS.len(), "{case}: {cells:?}");
        let [_, rate, _] = triple(cells[0], &format!("{case} records/s"));
        assert!(rate > 0.0, "{case}: rate {rate}");
        for (cell, column) in cells.iter().zip(INGEST_COLUMNS).skip(1) {
            if column == "server CPU s/1M" && !has_server {
                assert_eq!(*cell, "-", "{case} has no server: {cells:?}");
            } else {
                triple(cell, &format!("{case} {column}"));
            }
        }
    }
    for row in ROWS {
        let line = stdout
            .lines()
            .find(|line| line.contains(row))
            .unwrap_or_else(|| panic!("no row {row:?} in:\n{stdout}"));
        let ratio = line.rsplit('|').next().unwrap_or_default().trim();
        let value: f64 = ratio
            .parse()
            .unwrap_or_else(|_| panic!("row {row:?} has no numeric ratio: {line}"));
        assert!(
            value.is_finite() && value > 0.0,
            "row {row:?} ratio {value}: {line}"
        );
    }
}
