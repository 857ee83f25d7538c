//! Smoke test: `herd-bench --quick` finishes in time and prints every row with
//! a numeric ratio, so the benchmarks keep working.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Beginnings of every row of the table.
const ROWS: [&str; 12] = [
    "ingest records/s: hub vs direct NATS publish",
    "ingest records/s: hub vs tokio forwarder",
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
const LIMIT: Duration = Duration::from_secs(55);

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
