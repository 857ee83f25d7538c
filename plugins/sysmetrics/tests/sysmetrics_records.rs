//! `herd-sysmetrics` as a real child process.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use herd_plugin::testing::PluginProcess;
use herd_plugin::{Task, TaskStatus};
use herd_plugin_sysmetrics::{CPU, DISK, LOAD, MEMORY, NETWORK};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const WAIT: Duration = Duration::from_secs(10);

fn start(args: &[&str]) -> Result<PluginProcess, Box<dyn std::error::Error>> {
    Ok(PluginProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_herd-sysmetrics")).args(args),
    )?)
}

#[test]
fn every_metric_is_reported_with_numeric_fields() -> TestResult {
    let mut plugin = start(&["--interval-secs", "60"])?;
    let wanted: BTreeSet<u32> = [CPU, MEMORY, DISK, NETWORK, LOAD].into();
    let mut seen = BTreeSet::new();
    while seen != wanted {
        let record = plugin.next_record(WAIT)?;
        assert!(wanted.contains(&record.data_type), "unexpected {record:?}");
        assert!(record.timestamp_ms > 0);
        let number = |key: &str| -> f64 {
            record.fields[key]
                .parse()
                .unwrap_or_else(|_| panic!("{key} of {record:?} is not a number"))
        };
        match record.data_type {
            CPU => {
                assert!(number("cores") >= 1.0);
                assert!((0.0..=100.0).contains(&number("usage_percent")));
                assert!(record.fields.contains_key("core0_percent"));
            }
            MEMORY => {
                assert!(number("total_bytes") > 0.0);
                assert!(number("used_bytes") <= number("total_bytes"));
            }
            DISK => {
                assert!(!record.fields["mount"].is_empty());
                assert!(number("available_bytes") <= number("total_bytes"));
            }
            NETWORK => {
                assert!(!record.fields["interface"].is_empty());
                assert!(number("rx_bytes") >= number("rx_bytes_delta"));
            }
            _ => {
                assert!(number("load1") >= 0.0);
                assert!(number("uptime_secs") > 0.0);
            }
        }
        seen.insert(record.data_type);
    }
    let finished = plugin.finish(WAIT)?;
    assert!(finished.status.success(), "{}", finished.status);
    Ok(())
}

#[test]
fn disabled_metrics_stay_silent_and_intervals_repeat() -> TestResult {
    let mut plugin = start(&[
        "--interval-secs",
        "60",
        "--every",
        "memory=0.05",
        "--disable",
        "cpu",
        "--disable",
        "disk",
        "--disable",
        "network",
        "--disable",
        "load",
    ])?;
    let first = plugin.next_record(WAIT)?;
    let second = plugin.next_record(WAIT)?;
    assert_eq!((first.data_type, second.data_type), (MEMORY, MEMORY));
    assert!(second.timestamp_ms >= first.timestamp_ms);

    let task = Task {
        id: "t".into(),
        data_type: 2010,
        ..Task::default()
    };
    let result = plugin.call(task, WAIT)?;
    assert_eq!(result.status(), TaskStatus::Rejected);
    assert!(result.error.contains("no tasks"), "{}", result.error);

    let finished = plugin.finish(WAIT)?;
    assert!(finished.status.success());
    assert!(
        finished.records.iter().all(|r| r.data_type == MEMORY),
        "{:?}",
        finished.records
    );
    Ok(())
}
