//! Reading the metrics with `sysinfo` and shaping them into records.

use std::collections::HashMap;
use std::time::Instant;

use herd_plugin::Record;
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, Networks, RefreshKind, System};

use crate::{CPU, DISK, LOAD, MEMORY, Metric, NETWORK};

/// Holds the `sysinfo` handles between samples: cpu usage and network
/// deltas are measured against the previous refresh.
#[derive(Debug)]
pub struct Collector {
    system: System,
    disks: Disks,
    networks: Networks,
    networks_refreshed: Instant,
}

impl Default for Collector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector {
    /// Takes the first samples; cpu usage is meaningful from
    /// [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`] later.
    pub fn new() -> Self {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::everything()),
        );
        Self {
            system,
            disks: Disks::new_with_refreshed_list(),
            networks: Networks::new_with_refreshed_list(),
            networks_refreshed: Instant::now(),
        }
    }

    /// The records of one metric right now: one for cpu, memory and load,
    /// one per mount for disk, one per interface for network.
    pub fn collect(&mut self, metric: Metric) -> Vec<Record> {
        match metric {
            Metric::Cpu => vec![self.cpu()],
            Metric::Memory => vec![self.memory()],
            Metric::Disk => self.disks(),
            Metric::Network => self.networks(),
            Metric::Load => vec![load()],
        }
    }

    fn cpu(&mut self) -> Record {
        self.system.refresh_cpu_usage();
        let cpus = self.system.cpus();
        let mut fields = vec![
            (
                "usage_percent".to_owned(),
                percent(self.system.global_cpu_usage()),
            ),
            ("cores".to_owned(), cpus.len().to_string()),
        ];
        if let Some(physical) = System::physical_core_count() {
            fields.push(("physical_cores".to_owned(), physical.to_string()));
        }
        fields.extend(
            cpus.iter()
                .enumerate()
                .map(|(index, cpu)| (format!("core{index}_percent"), percent(cpu.cpu_usage()))),
        );
        record(CPU, fields)
    }

    fn memory(&mut self) -> Record {
        self.system.refresh_memory();
        let system = &self.system;
        let total = system.total_memory();
        let used = system.used_memory();
        record(
            MEMORY,
            [
                ("total_bytes", total.to_string()),
                ("used_bytes", used.to_string()),
                ("available_bytes", system.available_memory().to_string()),
                ("free_bytes", system.free_memory().to_string()),
                ("used_percent", ratio(used, total)),
                ("swap_total_bytes", system.total_swap().to_string()),
                ("swap_used_bytes", system.used_swap().to_string()),
                ("swap_free_bytes", system.free_swap().to_string()),
            ],
        )
    }

    fn disks(&mut self) -> Vec<Record> {
        self.disks.refresh(true);
        self.disks
            .list()
            .iter()
            .map(|disk| {
                let total = disk.total_space();
                let used = total.saturating_sub(disk.available_space());
                record(
                    DISK,
                    [
                        ("mount", disk.mount_point().display().to_string()),
                        ("device", disk.name().to_string_lossy().into_owned()),
                        ("fs", disk.file_system().to_string_lossy().into_owned()),
                        ("total_bytes", total.to_string()),
                        ("available_bytes", disk.available_space().to_string()),
                        ("used_bytes", used.to_string()),
                        ("used_percent", ratio(used, total)),
                        ("removable", disk.is_removable().to_string()),
                        ("read_only", disk.is_read_only().to_string()),
                    ],
                )
            })
            .collect()
    }

    fn networks(&mut self) -> Vec<Record> {
        self.networks.refresh(true);
        let interval_ms = self.networks_refreshed.elapsed().as_millis().to_string();
        self.networks_refreshed = Instant::now();
        let mut interfaces: Vec<_> = self.networks.list().iter().collect();
        interfaces.sort_by(|a, b| a.0.cmp(b.0));
        interfaces
            .into_iter()
            .map(|(name, data)| {
                record(
                    NETWORK,
                    [
                        ("interface", name.clone()),
                        ("rx_bytes", data.total_received().to_string()),
                        ("tx_bytes", data.total_transmitted().to_string()),
                        ("rx_packets", data.total_packets_received().to_string()),
                        ("tx_packets", data.total_packets_transmitted().to_string()),
                        ("rx_errors", data.total_errors_on_received().to_string()),
                        ("tx_errors", data.total_errors_on_transmitted().to_string()),
                        ("rx_bytes_delta", data.received().to_string()),
                        ("tx_bytes_delta", data.transmitted().to_string()),
                        ("interval_ms", interval_ms.clone()),
                    ],
                )
            })
            .collect()
    }
}

fn load() -> Record {
    let load = System::load_average();
    record(
        LOAD,
        [
            ("load1", format!("{:.2}", load.one)),
            ("load5", format!("{:.2}", load.five)),
            ("load15", format!("{:.2}", load.fifteen)),
            ("uptime_secs", System::uptime().to_string()),
            ("boot_time", System::boot_time().to_string()),
        ],
    )
}

fn record<K: Into<String>>(
    data_type: u32,
    fields: impl IntoIterator<Item = (K, String)>,
) -> Record {
    Record {
        data_type,
        fields: fields
            .into_iter()
            .map(|(key, value)| (key.into(), value))
            .collect::<HashMap<_, _>>(),
        ..Record::default()
    }
}

fn percent(value: f32) -> String {
    format!("{value:.1}")
}

#[allow(clippy::cast_precision_loss)] // a percentage needs no more than f64's 52 bits
fn ratio(part: u64, whole: u64) -> String {
    if whole == 0 {
        "0.0".to_owned()
    } else {
        format!("{:.1}", part as f64 * 100.0 / whole as f64)
    }
}
