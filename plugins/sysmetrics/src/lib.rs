//! `herd-sysmetrics`: a herd plugin that reports cpu, memory, disk, network
//! and load of its host at configurable intervals, read with `sysinfo`.
//!
//! Every metric runs on its own interval (`--interval-secs`, overridden per
//! metric with `--every METRIC=SECS`) and can be turned off with
//! `--disable METRIC`. The first samples are sent
//! [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`] after start (cpu usage needs two
//! readings). The plugin has no tasks; every task is rejected.
//!
//! | data type | record | fields |
//! |---|---|---|
//! | [`CPU`] 2001 | one per sample | `usage_percent` (all cores), `cores`, `physical_cores`, `core<N>_percent` |
//! | [`MEMORY`] 2002 | one per sample | `total_bytes`, `used_bytes`, `available_bytes`, `free_bytes`, `used_percent`, `swap_total_bytes`, `swap_used_bytes`, `swap_free_bytes` |
//! | [`DISK`] 2003 | one per mount | `mount`, `device`, `fs`, `total_bytes`, `available_bytes`, `used_bytes`, `used_percent`, `removable`, `read_only` |
//! | [`NETWORK`] 2004 | one per interface | `interface`, `rx_bytes`, `tx_bytes`, `rx_packets`, `tx_packets`, `rx_errors`, `tx_errors` (totals since boot), `rx_bytes_delta`, `tx_bytes_delta` (since the previous sample), `interval_ms` |
//! | [`LOAD`] 2005 | one per sample | `load1`, `load5`, `load15`, `uptime_secs`, `boot_time` (Unix seconds) |

mod collect;

use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use herd_plugin::prelude::*;

pub use collect::Collector;

/// Record: cpu usage.
pub const CPU: u32 = 2001;
/// Record: memory and swap.
pub const MEMORY: u32 = 2002;
/// Record: one mounted file system.
pub const DISK: u32 = 2003;
/// Record: one network interface.
pub const NETWORK: u32 = 2004;
/// Record: load averages and uptime.
pub const LOAD: u32 = 2005;

/// The metrics sysmetrics knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Metric {
    /// Cpu usage (data type 2001).
    Cpu,
    /// Memory and swap (data type 2002).
    Memory,
    /// File systems (data type 2003).
    Disk,
    /// Network interfaces (data type 2004).
    Network,
    /// Load averages (data type 2005).
    Load,
}

impl Metric {
    /// Every metric, in the order they are sent when due together.
    pub const ALL: [Metric; 5] = [
        Metric::Cpu,
        Metric::Memory,
        Metric::Disk,
        Metric::Network,
        Metric::Load,
    ];
}

/// `--every METRIC=SECS`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Every {
    /// The metric.
    pub metric: Metric,
    /// Its interval.
    pub interval: Duration,
}

impl FromStr for Every {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (metric, seconds) = value
            .split_once('=')
            .ok_or_else(|| format!("`{value}` is not METRIC=SECS"))?;
        Ok(Self {
            metric: Metric::from_str(metric, true)?,
            interval: herd_plugin::cli::positive_seconds(seconds)?,
        })
    }
}

/// Command-line arguments of `herd-sysmetrics`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "herd-sysmetrics",
    version,
    about = "herd plugin: cpu, memory, disk, network and load records"
)]
pub struct Args {
    /// Seconds between two samples of every metric (fractions allowed).
    #[arg(long, default_value = "10", value_parser = herd_plugin::cli::positive_seconds)]
    pub interval_secs: Duration,
    /// Another interval for one metric, e.g. `disk=60` (repeatable).
    #[arg(long, value_name = "METRIC=SECS")]
    pub every: Vec<Every>,
    /// Do not report this metric (repeatable).
    #[arg(long, value_enum, value_name = "METRIC")]
    pub disable: Vec<Metric>,
}

impl Args {
    /// The enabled metrics with their intervals.
    pub fn schedule(&self) -> Vec<(Metric, Duration)> {
        Metric::ALL
            .into_iter()
            .filter(|metric| !self.disable.contains(metric))
            .map(|metric| {
                let interval = self
                    .every
                    .iter()
                    .rev()
                    .find(|every| every.metric == metric)
                    .map_or(self.interval_secs, |every| every.interval);
                (metric, interval)
            })
            .collect()
    }
}

/// Runs the plugin on its real pipes until stdin closes.
pub fn run(args: &Args) -> Result<(), PluginError> {
    let plugin = Plugin::from_env()?;
    let schedule = args.schedule();
    let (emitter, shutdown) = (plugin.emitter(), plugin.shutdown());
    let worker = std::thread::spawn(move || sample(&schedule, &emitter, &shutdown));
    let served = plugin.run(|task| {
        TaskResult::rejected(
            &task,
            format!("sysmetrics has no tasks (got data type {})", task.data_type),
        )
    });
    let sampled = worker.join().unwrap_or(Ok(()));
    served?;
    match sampled {
        Err(PluginError::Disconnected) => Ok(()),
        other => other,
    }
}

/// Sends each metric when it is due until shutdown.
fn sample(
    schedule: &[(Metric, Duration)],
    emitter: &Emitter,
    shutdown: &Shutdown,
) -> Result<(), PluginError> {
    let mut collector = Collector::new();
    let first = Instant::now() + sysinfo::MINIMUM_CPU_UPDATE_INTERVAL;
    let mut due: Vec<(Metric, Duration, Instant)> = schedule
        .iter()
        .map(|&(metric, interval)| (metric, interval, first))
        .collect();
    loop {
        let Some(next) = due.iter().map(|&(_, _, at)| at).min() else {
            // Every metric is disabled: nothing to do but wait for the end.
            shutdown.wait();
            return Ok(());
        };
        if shutdown.wait_timeout(next.saturating_duration_since(Instant::now())) {
            return Ok(());
        }
        let now = Instant::now();
        for (metric, interval, at) in &mut due {
            if *at > now {
                continue;
            }
            for record in collector.collect(*metric) {
                emitter.send_record(record)?;
            }
            // Skip missed slots instead of sending a burst after a stall.
            *at = (*at + *interval).max(now);
        }
    }
}

/// The binary's `main`: parse, run, report.
pub fn main() -> ExitCode {
    herd_plugin::cli::exit_code("sysmetrics", run(&Args::parse()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_metric_intervals_and_disabled_metrics() {
        let args = Args::parse_from([
            "herd-sysmetrics",
            "--interval-secs",
            "5",
            "--every",
            "disk=60",
            "--disable",
            "network",
        ]);
        let schedule = args.schedule();
        assert_eq!(
            schedule,
            vec![
                (Metric::Cpu, Duration::from_secs(5)),
                (Metric::Memory, Duration::from_secs(5)),
                (Metric::Disk, Duration::from_secs(60)),
                (Metric::Load, Duration::from_secs(5)),
            ]
        );
    }

    #[test]
    fn bad_intervals_are_refused() {
        assert!(Args::try_parse_from(["x", "--interval-secs", "0"]).is_err());
        let error = Args::try_parse_from(["x", "--every", "gpu=1"]).unwrap_err();
        assert!(error.to_string().contains("gpu"), "{error}");
    }
}
