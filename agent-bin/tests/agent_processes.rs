//! No plugin and nothing a plugin started outlives the agent: an orderly stop
//! kills the plugin's whole process group; after a kill -9 of the agent the
//! plugin dies of its parent-death signal, and the next agent clears what is
//! left of its group before starting it again. With cgroup isolation (on a
//! cgroup2 hierarchy the tests mount, as root) the same holds for a
//! grandchild that left the process group with `setsid`: it is in the
//! plugin's cgroup, which `cgroup.kill` empties.

mod support;

use herd_tests::mount::Mount;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// The `count` pids plugin `name` wrote (its own first), once a fresh file
/// with a plugin pid other than `old` is there.
async fn pid_list(dir: &Path, name: &str, count: usize, old: Option<u32>) -> Vec<u32> {
    let file = dir.join("state/plugins").join(name).join("pids");
    let mut found = None;
    poll_until("the plugin's pids", || {
        let parsed = std::fs::read_to_string(&file).ok().and_then(|text| {
            let pids: Option<Vec<u32>> = text.split_whitespace().map(|p| p.parse().ok()).collect();
            pids.filter(|pids| pids.len() == count)
        });
        found = parsed.filter(|pids| Some(pids[0]) != old);
        found.is_some()
    })
    .await;
    found.expect("checked above")
}

/// The `(plugin, grandchild)` pids the forking plugin wrote.
async fn pids(dir: &Path, old: Option<u32>) -> (u32, u32) {
    let pids = pid_list(dir, "forker", 2, old).await;
    (pids[0], pids[1])
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

// ------------------------------------------------------------ cgroup mode

/// A cgroup2 hierarchy mounted on a temporary directory, and a cgroup
/// `herd-test-<unique>` in it whose child `delegated` is the agent's
/// `cgroup_dir`. `herd-test-…` enables no controller for its children, so
/// `delegated` has none: the memory and cpu limits cannot be in force,
/// whatever the host offers. Dropping it kills whatever is left in
/// `herd-test-…`, removes every cgroup below the mount and unmounts it.
struct Cgroup2 {
    base: PathBuf,
    // Dropped in this order after `drop`: unmount, then the mount point.
    _mount: Mount,
    _mount_point: tempfile::TempDir,
}

impl Cgroup2 {
    /// `None` (and "skipped: needs root" on stderr) when not root; a
    /// failing mount as root fails the test.
    fn mount(test: &str) -> Option<Self> {
        let mount_point = tempfile::tempdir().unwrap();
        let Some(mount) = Mount::new("cgroup2", "", mount_point.path()) else {
            eprintln!("{test}: skipped");
            return None;
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let base = mount
            .path()
            .join(format!("herd-test-{}-{nanos}", std::process::id()));
        let cgroups = Self {
            base,
            _mount: mount,
            _mount_point: mount_point,
        };
        std::fs::create_dir(&cgroups.base).unwrap();
        std::fs::create_dir(cgroups.delegated()).unwrap();
        Some(cgroups)
    }

    /// The agent's `cgroup_dir`.
    fn delegated(&self) -> PathBuf {
        self.base.join("delegated")
    }

    /// The cgroup of plugin `name`.
    fn plugin(&self, name: &str) -> PathBuf {
        self.delegated().join("plugins").join(name)
    }
}

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        // After a failed test processes may be left: kill them all (the
        // agent included), wait for the cgroups to empty (bounded), remove
        // them deepest first.
        if self.base.is_dir() {
            let _ = std::fs::write(self.base.join("cgroup.kill"), "1");
            let deadline = Instant::now() + Duration::from_secs(10);
            while populated(&self.base) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            remove_cgroups(&self.base);
        }
    }
}

fn populated(cgroup: &Path) -> bool {
    std::fs::read_to_string(cgroup.join("cgroup.events"))
        .is_ok_and(|events| events.lines().any(|l| l == "populated 1"))
}

fn remove_cgroups(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroups(&entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The pids in a cgroup (empty when it does not exist).
fn cgroup_procs(cgroup: &Path) -> Vec<u32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.parse().ok()).collect())
        .unwrap_or_default()
}

/// The process group of `pid`.
fn pgid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// A plugin that ignores stdin and starts two grandchildren: one in its
/// process group, one that leaves it (and its session) with `setsid`; it
/// writes `plugin group-child escaped` to its state directory.
fn write_escaping_plugin(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("escaper.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\nsleep 600 &\ngroup=$!\nsetsid sleep 600 &\nescaped=$!\n\
         echo \"$$ $group $escaped\" > \"$HERD_PLUGIN_STATE_DIR/pids.partial\"\n\
         mv \"$HERD_PLUGIN_STATE_DIR/pids.partial\" \"$HERD_PLUGIN_STATE_DIR/pids\"\n\
         exec sleep 600\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// cgroup isolation under `cgroups.delegated()`, and the escaping plugin
/// with a 250M memory cap and a 10 % CPU cap.
fn cgroup_config(hub: &ScriptedHub, dir: &Path, plugin: &Path, cgroups: &Cgroup2) -> String {
    let plugins = format!(
        "[plugin_limits.escaper]\nmemory_max = \"250M\"\ncpu_max = \"10%\"\n\
         [[plugins]]\nname = \"escaper\"\npath = \"{}\"\nstop_grace_ms = 300\n",
        plugin.display()
    );
    format!(
        "plugin_isolation = \"cgroup\"\ncgroup_dir = \"{}\"\n{}",
        cgroups.delegated().display(),
        agent_toml(hub.addr, &dir.join("state"), &plugins)
    )
}

/// The escaping plugin's `[plugin, group child, escaped]` pids, once the
/// escaped one has left the plugin's process group.
async fn escaping_pids(dir: &Path, old: Option<u32>) -> [u32; 3] {
    let pids = pid_list(dir, "escaper", 3, old).await;
    let [plugin, group, escaped] = [pids[0], pids[1], pids[2]];
    poll_until("the grandchild's setsid", || {
        pgid(escaped).is_some_and(|g| g != plugin)
    })
    .await;
    assert_eq!(
        pgid(group),
        Some(plugin),
        "the other grandchild stays in the group"
    );
    [plugin, group, escaped]
}

fn assert_in(cgroup: &Path, pids: &[u32]) {
    let procs = cgroup_procs(cgroup);
    for pid in pids {
        assert!(
            procs.contains(pid),
            "{pid} not in {}: {procs:?}",
            cgroup.display()
        );
    }
}

#[tokio::test]
async fn in_cgroup_mode_a_plugin_and_all_it_starts_live_and_end_in_its_cgroup() {
    let Some(cgroups) = Cgroup2::mount("cgroup mode") else {
        return;
    };
    let mut hub = ScriptedHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = write_escaping_plugin(dir.path());
    let config = cgroup_config(&hub, dir.path(), &plugin, &cgroups);
    let agent = AgentProcess::start(dir.path(), &config);

    // (a) The heartbeat says cgroup, and that no limit can be in force here.
    let heartbeat = hub.record("a heartbeat", |r| r.data_type == 1000).await;
    let field = |name: &str| heartbeat.fields.get(name).cloned().unwrap_or_default();
    assert_eq!(
        field("agent.plugin_isolation"),
        "cgroup",
        "{:?}",
        heartbeat.fields
    );
    assert_eq!(field("agent.plugin_isolation_reason"), "");
    assert_eq!(
        field("agent.cgroup_dir"),
        cgroups.delegated().display().to_string()
    );
    assert_eq!(field("agent.cgroup_controllers"), "");
    assert_eq!(field("agent.plugin_limits"), "");

    // (b) The agent is in its leaf; the plugin and both grandchildren —
    // the one that left the process group too — are in the plugin's cgroup.
    let [plugin_pid, group, escaped] = escaping_pids(dir.path(), None).await;
    let cgroup = cgroups.plugin("escaper");
    assert_in(&cgroups.delegated().join("agent"), &[agent.pid]);
    assert_in(&cgroup, &[plugin_pid, group, escaped]);

    // (e) Limits whose controllers are missing: reported as not in force,
    // and the plugin runs anyway.
    let plugin_pid_text = plugin_pid.to_string();
    let status = hub
        .plugin_heartbeat("escaper", "a heartbeat of the running plugin", |f| {
            f.get("pid") == Some(&plugin_pid_text)
        })
        .await;
    assert_eq!(status["state"], "running", "{status:?}");
    assert_eq!(status["cgroup"], cgroup.display().to_string());
    assert_eq!(status["memory_max"], "262144000");
    assert_eq!(status["memory_max_in_force"], "false");
    assert_eq!(status["cpu_max"], "10%");
    assert_eq!(status["cpu_max_in_force"], "false");
    assert!(
        status["limits_error"].contains("no memory controller")
            && status["limits_error"].contains("no cpu controller"),
        "{status:?}"
    );
    assert!(alive(plugin_pid), "the plugin runs without its limits");

    // (c) An orderly stop ends everything in the cgroup (setsid or not)
    // and removes it before the agent exits.
    assert!(agent.stop().await.success());
    assert!(!cgroup.exists(), "the plugin's cgroup was not removed");
    poll_until("every process of the plugin's cgroup gone", || {
        [plugin_pid, group, escaped].iter().all(|pid| !alive(*pid))
    })
    .await;
}

#[tokio::test]
async fn in_cgroup_mode_the_next_agent_kills_what_a_killed_agents_plugin_left_in_its_cgroup() {
    let Some(cgroups) = Cgroup2::mount("cgroup leftovers") else {
        return;
    };
    let hub = ScriptedHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = write_escaping_plugin(dir.path());
    let config = cgroup_config(&hub, dir.path(), &plugin, &cgroups);
    let mut agent = AgentProcess::start(dir.path(), &config);
    let [plugin_pid, group, escaped] = escaping_pids(dir.path(), None).await;
    let cgroup = cgroups.plugin("escaper");
    let old_cgroup = std::fs::metadata(&cgroup).unwrap().ino();

    // (d) kill -9: the plugin dies of its parent-death signal; its
    // grandchildren live on in its cgroup.
    agent.sigkill();
    agent.exit_status().await;
    poll_until("the plugin's parent-death signal", || !alive(plugin_pid)).await;
    assert!(alive(group) && alive(escaped), "nothing else killed them");
    assert_in(&cgroup, &[group, escaped]);

    // The next agent kills them (the escaped one is out of reach of the
    // process-group clean-up) and removes that cgroup before it starts the
    // plugin again in a new one.
    let agent = AgentProcess::start(dir.path(), &config);
    poll_until("the left grandchildren's end", || {
        !alive(group) && !alive(escaped)
    })
    .await;
    let new = escaping_pids(dir.path(), Some(plugin_pid)).await;
    assert_ne!(
        std::fs::metadata(&cgroup).unwrap().ino(),
        old_cgroup,
        "the leftover cgroup was removed, the plugin runs in a new one"
    );
    assert_in(&cgroup, &new);
    let procs = cgroup_procs(&cgroup);
    assert!(
        !procs.contains(&group) && !procs.contains(&escaped),
        "{procs:?}"
    );

    assert!(agent.stop().await.success());
    assert!(!cgroup.exists(), "the plugin's cgroup was not removed");
    poll_until("the new plugin's processes gone", || {
        new.iter().all(|pid| !alive(*pid))
    })
    .await;
}
