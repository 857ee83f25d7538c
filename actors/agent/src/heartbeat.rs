//! The HeartbeatReporter actor: every interval one 1000 record (host and agent
//! process stats) and one 1001 record per plugin (process stats and state).
//!
//! Values are strings in `Record.fields`: sizes in bytes, CPU in percent of
//! one core (so a process may exceed 100), load as the kernel reports it.
//! CPU figures are averages since the previous heartbeat.
//!
//! Isolation: the 1000 record says how plugins are isolated
//! (`agent.plugin_isolation` = `cgroup`, `process_group`, or `unavailable`
//! when cgroups are required and cannot be used; `agent.plugin_isolation_reason`
//! says why not `cgroup`), the cgroup directory and the controllers enabled
//! for plugins (`agent.cgroup_dir`, `agent.cgroup_controllers`) and which
//! limits can be in force (`agent.plugin_limits`, e.g. `memory_max cpu_max`).
//! Each 1001 record says which of the plugin's limits are in force:
//! `memory_max` (bytes) / `cpu_max` (e.g. `10%`), empty when not configured,
//! `memory_max_in_force` / `cpu_max_in_force` (`true` only when written to
//! the cgroup of its running process), `limits_error` (why a configured
//! limit is not in force) and `cgroup`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use herd_codec::data_type;
use herd_codec::proto::Record;
use sysinfo::{Disks, Networks, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::batcher::Batcher;
use crate::cgroup::{Isolation, LimitState};
use crate::messages::{
    BatcherStats, GetBatcherStats, GetPluginInfo, Ingest, SetHeartbeatInterval, Stop,
};
use crate::plugin_manager::{GetIsolation, IsolationReport, PluginConfinement, PluginManager};
use crate::report::{ConnectorStats, PluginInfo, ProcessStats, plugin_record, record};

/// Emits heartbeats; see the module docs.
#[derive(Debug)]
pub(crate) struct HeartbeatReporter {
    interval: Duration,
    timer: Option<SpawnHandle>,
    system: System,
    networks: Networks,
    disks: Disks,
    own_pid: Option<Pid>,
    batcher: Addr<Batcher>,
    plugins: Addr<PluginManager>,
    connector: Arc<ConnectorStats>,
}

impl HeartbeatReporter {
    /// A heartbeat every `interval` (until the hub sets another).
    pub(crate) fn new(
        interval: Duration,
        batcher: Addr<Batcher>,
        plugins: Addr<PluginManager>,
        connector: Arc<ConnectorStats>,
    ) -> Self {
        Self {
            interval,
            timer: None,
            system: System::new(),
            networks: Networks::new(),
            disks: Disks::new(),
            own_pid: sysinfo::get_current_pid().ok(),
            batcher,
            plugins,
            connector,
        }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        self.timer = Some(ctx.run_interval(self.interval, |act, ctx| act.beat(ctx)));
    }

    fn beat(&mut self, ctx: &mut Context<Self>) {
        let batcher = self.batcher.clone();
        let plugins = self.plugins.clone();
        let gather = async move {
            let stats = batcher.send(GetBatcherStats).await.ok();
            let isolation = plugins.send(GetIsolation).await.ok();
            let plugins = plugins.send(GetPluginInfo).await.ok();
            (stats, plugins, isolation)
        };
        ctx.spawn(
            gather
                .into_actor(self)
                .map(|(stats, plugins, isolation), act, _| {
                    let (Some(stats), Some(plugins), Some(isolation)) = (stats, plugins, isolation)
                    else {
                        return; // the agent is stopping
                    };
                    let records = act.records(&stats, &plugins, &isolation);
                    act.batcher.do_send(Ingest(records));
                }),
        );
    }

    fn process_stats(&self, pid: u32) -> Option<ProcessStats> {
        self.system
            .process(Pid::from_u32(pid))
            .map(|p| ProcessStats {
                cpu: p.cpu_usage(),
                rss: p.memory(),
            })
    }

    fn records(
        &mut self,
        stats: &BatcherStats,
        plugins: &[PluginInfo],
        isolation: &IsolationReport,
    ) -> Vec<Record> {
        let pids: Vec<Pid> = plugins
            .iter()
            .filter_map(|p| p.pid.map(Pid::from_u32))
            .chain(self.own_pid)
            .collect();
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&pids),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        self.networks.refresh(true);
        self.disks.refresh(true);

        let mut agent = self.agent_record(stats);
        agent.fields.extend(isolation_fields(&isolation.isolation));
        let mut records = vec![agent];
        records.extend(plugins.iter().map(|info| {
            let mut record = plugin_record(info, info.pid.and_then(|pid| self.process_stats(pid)));
            if let Some(confinement) = isolation.plugins.get(&info.name) {
                record.fields.extend(confinement_fields(confinement));
            }
            record
        }));
        records
    }

    fn agent_record(&self, stats: &BatcherStats) -> Record {
        let system = &self.system;
        let load = System::load_average();
        let mut fields: HashMap<String, String> = HashMap::new();
        let mut put = |key: &str, value: String| {
            fields.insert(key.to_owned(), value);
        };
        put("hostname", System::host_name().unwrap_or_default());
        put("cpu", format!("{:.2}", system.global_cpu_usage()));
        put("cpu_cores", system.cpus().len().to_string());
        put("mem_total", system.total_memory().to_string());
        put("mem_used", system.used_memory().to_string());
        put("mem_available", system.available_memory().to_string());
        put("swap_total", system.total_swap().to_string());
        put("swap_used", system.used_swap().to_string());
        put("load1", format!("{:.2}", load.one));
        put("load5", format!("{:.2}", load.five));
        put("load15", format!("{:.2}", load.fifteen));
        put("boot_time", System::boot_time().to_string());
        put("uptime", System::uptime().to_string());
        if let Some(count) = count_processes() {
            put("processes", count.to_string());
        }
        for disk in self.disks.list() {
            if disk.total_space() == 0 {
                continue;
            }
            let mount = disk.mount_point().display();
            put(
                &format!("disk.{mount}.total"),
                disk.total_space().to_string(),
            );
            put(
                &format!("disk.{mount}.available"),
                disk.available_space().to_string(),
            );
        }
        for (name, data) in self.networks.iter() {
            put(
                &format!("net.{name}.rx_bytes"),
                data.total_received().to_string(),
            );
            put(
                &format!("net.{name}.tx_bytes"),
                data.total_transmitted().to_string(),
            );
        }

        if let Some(own) = self
            .own_pid
            .and_then(|pid| self.process_stats(pid.as_u32()))
        {
            put("agent.cpu", format!("{:.2}", own.cpu));
            put("agent.rss", own.rss.to_string());
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            put("agent.fds", fds.count().to_string());
        }
        if let Some(threads) = own_threads() {
            put("agent.threads", threads.to_string());
        }
        let connector = &self.connector;
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        put(
            "agent.connected",
            connector.connected.load(Ordering::Relaxed).to_string(),
        );
        put("agent.reconnects", load(&connector.reconnects).to_string());
        put(
            "agent.failed_connects",
            load(&connector.failed_attempts).to_string(),
        );
        put(
            "agent.batches_sent",
            load(&connector.batches_sent).to_string(),
        );
        put("agent.bytes_sent", load(&connector.bytes_sent).to_string());
        put("agent.records_in", stats.records_in.to_string());
        put("agent.pending_records", stats.pending_records.to_string());
        put("agent.last_seq", stats.last_seq.to_string());
        let spool = &stats.spool;
        put("agent.last_acked_seq", spool.acked_seq.to_string());
        put("agent.unacked_batches", spool.depth_records.to_string());
        put("agent.unacked_bytes", spool.depth_bytes.to_string());
        put("agent.spool_disk_bytes", spool.disk_bytes.to_string());
        let oldest_age_ms = spool
            .oldest_created
            .and_then(|created| created.elapsed().ok())
            .map_or(0, |age| age.as_millis());
        put("agent.spool_oldest_age_ms", oldest_age_ms.to_string());
        put("agent.stalled_batches", stats.stalled_batches.to_string());
        put(
            "agent.spool_error",
            stats.spool_error.clone().unwrap_or_default(),
        );
        // Persisted in the spool's ledger: they survive restarts.
        put("agent.dropped_batches", spool.dropped_records.to_string());
        put("agent.dropped_bytes", spool.dropped_bytes.to_string());
        put("agent.corrupt_bytes_cut", spool.corrupt_bytes.to_string());
        put(
            "agent.oversized_records",
            stats.oversized_records.to_string(),
        );
        record(data_type::AGENT_HEARTBEAT, "agent", fields)
    }
}

/// The 1000 record's isolation fields (see the module docs).
fn isolation_fields(isolation: &Isolation) -> Vec<(String, String)> {
    let tree = isolation.tree();
    let controllers = tree.map(|t| t.controllers()).unwrap_or_default();
    let limits: Vec<&str> = controllers
        .iter()
        .map(|c| match *c {
            "memory" => "memory_max",
            _ => "cpu_max",
        })
        .collect();
    [
        ("agent.plugin_isolation", isolation.name().to_owned()),
        (
            "agent.plugin_isolation_reason",
            isolation.reason().to_owned(),
        ),
        (
            "agent.cgroup_dir",
            tree.map(|t| t.dir().display().to_string())
                .unwrap_or_default(),
        ),
        ("agent.cgroup_controllers", controllers.join(" ")),
        ("agent.plugin_limits", limits.join(" ")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A 1001 record's limit fields (see the module docs).
fn confinement_fields(confinement: &PluginConfinement) -> Vec<(String, String)> {
    let limits = &confinement.limits;
    let status = &confinement.status;
    let in_force = |state: &LimitState| (*state == LimitState::InForce).to_string();
    let errors: Vec<String> = [("memory_max", &status.memory), ("cpu_max", &status.cpu)]
        .into_iter()
        .filter_map(|(limit, state)| match state {
            LimitState::NotInForce(why) => Some(format!("{limit}: {why}")),
            _ => None,
        })
        .collect();
    [
        (
            "cgroup",
            confinement
                .cgroup
                .as_ref()
                .map(|c| c.display().to_string())
                .unwrap_or_default(),
        ),
        (
            "memory_max",
            limits
                .memory_max
                .map(|m| m.bytes().to_string())
                .unwrap_or_default(),
        ),
        ("memory_max_in_force", in_force(&status.memory)),
        (
            "cpu_max",
            limits.cpu_max.map(|c| c.to_string()).unwrap_or_default(),
        ),
        ("cpu_max_in_force", in_force(&status.cpu)),
        ("limits_error", errors.join("; ")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Number of processes on the host (Linux: entries of /proc).
fn count_processes() -> Option<usize> {
    let entries = std::fs::read_dir("/proc").ok()?;
    Some(
        entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            })
            .count(),
    )
}

/// Threads of this process (Linux: /proc/self/status).
fn own_threads() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

impl Actor for HeartbeatReporter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.beat(ctx);
        self.schedule(ctx);
    }
}

impl Handler<Stop> for HeartbeatReporter {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<SetHeartbeatInterval> for HeartbeatReporter {
    type Result = ();

    fn handle(
        &mut self,
        SetHeartbeatInterval(interval): SetHeartbeatInterval,
        ctx: &mut Context<Self>,
    ) {
        if interval != self.interval && !interval.is_zero() {
            tracing::info!(?interval, "heartbeat interval set by the hub");
            self.interval = interval;
            self.schedule(ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_counters_are_readable() {
        assert!(count_processes().is_some_and(|n| n > 0));
        assert!(own_threads().is_some_and(|n| n > 0));
    }

    #[test]
    fn process_group_isolation_is_reported_with_its_reason() {
        let isolation = Isolation::ProcessGroup {
            reason: "the agent runs in the root cgroup".to_owned(),
        };
        let fields: HashMap<_, _> = isolation_fields(&isolation).into_iter().collect();
        assert_eq!(fields["agent.plugin_isolation"], "process_group");
        assert_eq!(
            fields["agent.plugin_isolation_reason"],
            "the agent runs in the root cgroup"
        );
        assert_eq!(fields["agent.cgroup_dir"], "");
        assert_eq!(fields["agent.plugin_limits"], "");
    }

    #[test]
    fn limits_are_reported_in_force_only_when_they_are() {
        use crate::cgroup::LimitStatus;
        use crate::config::PluginLimits;
        let confinement = PluginConfinement {
            cgroup: Some("/cg/plugins/p".into()),
            limits: PluginLimits {
                memory_max: Some("250M".parse().unwrap()),
                cpu_max: Some("10%".parse().unwrap()),
            },
            status: LimitStatus {
                memory: LimitState::NotInForce("no memory controller".to_owned()),
                cpu: LimitState::InForce,
            },
        };
        let fields: HashMap<_, _> = confinement_fields(&confinement).into_iter().collect();
        assert_eq!(fields["cgroup"], "/cg/plugins/p");
        assert_eq!(fields["memory_max"], "262144000");
        assert_eq!(fields["memory_max_in_force"], "false");
        assert_eq!(fields["cpu_max"], "10%");
        assert_eq!(fields["cpu_max_in_force"], "true");
        assert_eq!(fields["limits_error"], "memory_max: no memory controller");

        let unset = PluginConfinement {
            cgroup: None,
            limits: PluginLimits::default(),
            status: LimitStatus {
                memory: LimitState::Unset,
                cpu: LimitState::Unset,
            },
        };
        let fields: HashMap<_, _> = confinement_fields(&unset).into_iter().collect();
        assert_eq!(fields["memory_max"], "");
        assert_eq!(fields["memory_max_in_force"], "false");
        assert_eq!(fields["limits_error"], "");
    }
}
