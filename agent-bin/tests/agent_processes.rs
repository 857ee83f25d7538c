//! No plugin and nothing a plugin started outlives the agent: an orderly stop
//! kills the plugin's whole process group; after a kill -9 of the agent the
//! plugin dies of its parent-death signal, and the next agent clears what is
//! left of its group before starting it again.

mod support;

use std::path::{Path, PathBuf};

use herd_tests::script::poll_until;
use support::{AgentProcess, ScriptedHub, agent_toml, alive};

/// A plugin that ignores stdin, starts a grandchild in its process group and
/// writes both pids to its state directory.
fn write_forking_plugin(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("forker.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\nsleep 600 &\necho \"$$ $!\" > \"$HERD_PLUGIN_STATE_DIR/pids.partial\"\n\
         mv \"$HERD_PLUGIN_STATE_DIR/pids.partial\" \"$HERD_PLUGIN_STATE_DIR/pids\"\n\
         exec sleep 600\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn config(hub: &ScriptedHub, dir: &Path, plugin: &Path) -> String {
    let plugins = format!(
        "[[plugins]]\nname = \"forker\"\npath = \"{}\"\nstop_grace_ms = 300\n",
        plugin.display()
    );
    agent_toml(hub.addr, &dir.join("state"), &plugins)
}

/// The `(plugin, grandchild)` pids the plugin wrote, once a fresh file with a
/// plugin pid other than `old` is there.
async fn pids(dir: &Path, old: Option<u32>) -> (u32, u32) {
    let file = dir.join("state/plugins/forker/pids");
    let mut found = None;
    poll_until("the plugin's pids", || {
        let parsed = std::fs::read_to_string(&file).ok().and_then(|text| {
            let mut pids = text.split_whitespace().map(|p| p.parse::<u32>().ok());
            Some((pids.next()??, pids.next()??))
        });
        found = parsed.filter(|(plugin, _)| Some(*plugin) != old);
        found.is_some()
    })
    .await;
    found.expect("checked above")
}

#[tokio::test]
async fn an_orderly_stop_kills_the_plugins_whole_process_group() {
    let hub = ScriptedHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = write_forking_plugin(dir.path());
    let agent = AgentProcess::start(dir.path(), &config(&hub, dir.path(), &plugin));
    let (plugin_pid, grandchild) = pids(dir.path(), None).await;
    assert!(alive(plugin_pid) && alive(grandchild));
    assert!(agent.stop().await.success());
    assert!(!alive(plugin_pid), "the plugin survived the agent's stop");
    poll_until("the grandchild's end", || !alive(grandchild)).await;
}

#[tokio::test]
async fn after_a_kill_9_the_plugin_dies_and_the_next_agent_clears_its_group() {
    let hub = ScriptedHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = write_forking_plugin(dir.path());
    let config = config(&hub, dir.path(), &plugin);
    let mut agent = AgentProcess::start(dir.path(), &config);
    let (plugin_pid, grandchild) = pids(dir.path(), None).await;
    agent.sigkill();
    agent.exit_status().await;
    poll_until("the plugin's parent-death signal", || !alive(plugin_pid)).await;

    // The grandchild is not the agent's child; the next agent finds its group
    // recorded and clears it before it starts the plugin again.
    let agent = AgentProcess::start(dir.path(), &config);
    let (new_plugin, new_grandchild) = pids(dir.path(), Some(plugin_pid)).await;
    poll_until("the old grandchild's end", || !alive(grandchild)).await;
    assert!(alive(new_plugin) && alive(new_grandchild));
    assert!(agent.stop().await.success());
    poll_until("the new group's end", || {
        !alive(new_plugin) && !alive(new_grandchild)
    })
    .await;
}
