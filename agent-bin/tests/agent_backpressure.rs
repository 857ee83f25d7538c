//! A plugin that writes as fast as it can against a spool that fills up (the
//! hub acks nothing): with `when_full = "block"` the agent stops reading the
//! plugin's stdout, the plugin waits on its pipe, and agent memory stays
//! bounded; with `"drop_oldest"` the oldest batches go and every one of them
//! is counted.

mod support;

use std::path::Path;
use std::time::Duration;

use herd_tests::script::poll_until;
use support::{AgentProcess, ScriptedHub, agent_toml, plugin_toml, write_plugin};

/// Bytes of the agent's segment files.
fn spool_bytes(state: &Path) -> u64 {
    std::fs::read_dir(state.join("spool"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Records the flood plugin says it has written.
fn written(state: &Path) -> u64 {
    std::fs::read_to_string(state.join("plugins/flood/written"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_full_spool_slows_an_unthrottled_plugin_and_memory_stays_bounded() {
    let hub = ScriptedHub::start().await;
    // The hub never acks: the spool only fills.
    hub.max_ack.store(0, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let plugin = write_plugin(dir.path());
    let state = dir.path().to_owned();
    let max_disk = 2 * 1024 * 1024;
    let config = agent_toml(
        hub.addr,
        &state,
        &plugin_toml("flood", &plugin, "flood", ""),
    ) + &format!(
        "[batch]\nmax_bytes = 65536\n[spool]\nmax_disk_bytes = {max_disk}\n\
             segment_bytes = 262144\nwhen_full = \"block\"\n"
    );
    let agent = AgentProcess::start(dir.path(), &config);

    // There is no event for "the disk is full"; poll it, bounded.
    poll_until("the spool filling up", || {
        spool_bytes(&state) >= max_disk - 262_144
    })
    .await;
    let full_at = written(&state);
    // A measurement window, not a synchronization: unthrottled, the plugin
    // writes tens of thousands of records per second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = written(&state);
    assert!(
        after - full_at < 5_000,
        "the plugin kept writing at full speed: {full_at} -> {after}"
    );
    let rss = herd_tests::process::rss_bytes(agent.pid).expect("the agent runs");
    assert!(rss < 64 * 1024 * 1024, "agent RSS {rss} bytes");
    assert!(
        spool_bytes(&state) <= max_disk,
        "the spool stays within its bound"
    );
    assert!(agent.stop().await.success());
}

#[tokio::test]
async fn drop_oldest_counts_every_dropped_batch_exactly() {
    let mut hub = ScriptedHub::start().await;
    hub.max_ack.store(0, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let plugin = write_plugin(dir.path());
    let state = dir.path().to_owned();
    let config = agent_toml(
        hub.addr,
        &state,
        &plugin_toml("flood", &plugin, "flood", ""),
    ) + "[batch]\nmax_bytes = 65536\n[spool]\nmax_disk_bytes = 1048576\n\
           segment_bytes = 262144\nwhen_full = \"drop_oldest\"\n";
    let agent = AgentProcess::start(dir.path(), &config);
    // Nothing is acked: every batch ever cut is on disk or dropped.
    let heartbeat = hub
        .record("a heartbeat after drops", |r| {
            r.data_type == 1000
                && r.fields
                    .get("agent.dropped_batches")
                    .and_then(|d| d.parse::<u64>().ok())
                    .is_some_and(|d| d > 0)
        })
        .await;
    let field = |name: &str| -> u64 { heartbeat.fields[name].parse().unwrap() };
    assert_eq!(
        field("agent.last_seq"),
        field("agent.dropped_batches") + field("agent.unacked_batches"),
        "{:?}",
        heartbeat.fields
    );
    assert!(field("agent.spool_disk_bytes") <= 1_048_576);
    assert_eq!(heartbeat.fields["agent.plugin_isolation"], "process_group");
    assert!(agent.stop().await.success());
}
