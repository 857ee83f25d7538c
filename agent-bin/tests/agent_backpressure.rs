//! A plugin that writes as fast as it can is slowed to what the spool takes:
//! when the spool is full (no hub acks, `when_full = "block"`) the agent stops
//! reading the plugin's stdout, the plugin waits on its pipe, and agent memory
//! stays bounded instead of growing with the plugin's output.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{AgentProcess, ScriptedHub, WAIT, agent_toml, plugin_toml, write_plugin};

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

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
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
    tokio::time::timeout(WAIT, async {
        while spool_bytes(&state) < max_disk - 262_144 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the spool fills up");
    let full_at = written(&state);
    // A measurement window, not a synchronization: unthrottled, the plugin
    // writes tens of thousands of records per second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = written(&state);
    assert!(
        after - full_at < 5_000,
        "the plugin kept writing at full speed: {full_at} -> {after}"
    );
    let rss = rss_bytes(agent.pid);
    assert!(rss < 64 * 1024 * 1024, "agent RSS {rss} bytes");
    assert!(
        spool_bytes(&state) <= max_disk,
        "the spool stays within its bound"
    );
    assert!(agent.stop().await.success());
}
