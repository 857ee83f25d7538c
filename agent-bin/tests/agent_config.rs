//! Configuration pushed by the hub: plugins added, upgraded and removed
//! without touching the unchanged ones; the hub wins for the names it
//! pushes, local declarations stay; pushed plugins need a sha256.

mod support;

use std::path::Path;

use herd_codec::proto::PluginConfig;
use support::*;

fn pushed(name: &str, version: &str, path: &Path, sha256: &str) -> PluginConfig {
    PluginConfig {
        name: name.into(),
        version: version.into(),
        sha256: sha256.into(),
        path: path.display().to_string(),
        args: vec!["serve".into()],
        ..PluginConfig::default()
    }
}

#[tokio::test]
async fn config_sync_adds_upgrades_and_removes_only_what_changed() {
    let mut hub = ScriptedHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = write_plugin(dir.path());
    let sha = herd_agent::sha256_file(&plugin).unwrap();
    let local = plugin_toml("steady", &plugin, "serve", "")
        + &plugin_toml("shadowed", &plugin, "serve", "version = \"local\"\n");
    let agent = AgentProcess::start(dir.path(), &agent_toml(hub.addr, dir.path(), &local));
    hub.record("steady starts", |r| is_start(r, "steady")).await;
    hub.record("shadowed starts", |r| is_start(r, "shadowed"))
        .await;

    // Push 1: a new plugin, an override of a local one, and one without sha256.
    hub.send_config(vec![
        pushed("added", "1", &plugin, &sha),
        pushed("shadowed", "hub-1", &plugin, &sha),
        pushed("unsigned", "1", &plugin, ""),
    ]);
    hub.record("added starts", |r| is_start(r, "added")).await;
    hub.record("shadowed restarts", |r| is_start(r, "shadowed"))
        .await;
    let states = hub
        .plugin_states_until("the first push applied", |states| {
            states
                .get("shadowed")
                .is_some_and(|s| s["version"] == "hub-1")
                && states.get("added").is_some_and(|s| s["state"] == "running")
        })
        .await;
    assert!(
        !states.contains_key("unsigned"),
        "unsigned push ignored: {states:?}"
    );
    assert!(starts(dir.path(), "unsigned").is_empty());

    // Push 2: upgrade `added`, drop the override of `shadowed` (back to local).
    let added_pid = states["added"]["pid"].clone();
    hub.send_config(vec![pushed("added", "2", &plugin, &sha)]);
    let states = hub
        .plugin_states_until("the second push applied", |states| {
            states
                .get("added")
                .is_some_and(|s| s["version"] == "2" && s["state"] == "running")
                && states
                    .get("shadowed")
                    .is_some_and(|s| s["version"] == "local")
        })
        .await;
    assert_ne!(
        states["added"]["pid"], added_pid,
        "upgrade started a new process"
    );
    assert!(!alive(added_pid.parse().unwrap()), "old process stopped");

    // Push 3: nothing pushed; `added` is removed.
    let added_pid: u32 = states["added"]["pid"].parse().unwrap();
    hub.send_config(Vec::new());
    hub.plugin_states_until("`added` removed", |states| !states.contains_key("added"))
        .await;
    assert!(!alive(added_pid), "removed plugin stopped");
    assert_eq!(
        starts(dir.path(), "steady").len(),
        1,
        "untouched throughout"
    );
    assert_eq!(starts(dir.path(), "added").len(), 2);
    assert_eq!(starts(dir.path(), "shadowed").len(), 3);
    assert_no_zombies(agent.pid);
    assert!(agent.stop().await.success());
}
