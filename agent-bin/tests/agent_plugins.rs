//! Plugin processes under the real agent binary: restarts with backoff,
//! crash loops, protocol errors, sha256 checks, tasks, and reaping.

mod support;

use std::time::{Duration, Instant};

use herd_codec::proto::{Task, TaskStatus};
use support::*;

const FAST_RESTART: &str =
    "[plugins.restart]\nmin_backoff_ms = 200\nmax_backoff_ms = 2000\nmax_restarts = 50\n";

#[tokio::test]
async fn crashing_plugin_restarts_after_backoff() {
    let mut hub = ScriptedHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = write_plugin(dir.path());
    let config = agent_toml(
        hub.addr,
        dir.path(),
        &plugin_toml("crasher", &plugin, "crash", FAST_RESTART),
    );
    let agent = AgentProcess::start(dir.path(), &config);

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let record = hub
            .record("a start of crasher", |r| is_start(r, "crasher"))
            .await;
        seen.push((Instant::now(), record.fields["pid"].clone()));
    }
    // Delays of at least 100 ms then 200 ms (200 and 400 ms with jitter x0.5..1),
    // minus up to one 100 ms batching delay.
    let spread = seen[2].0 - seen[0].0;
    assert!(
        spread >= Duration::from_millis(200),
        "restarted too fast: {spread:?}"
    );
    assert!(
        seen[0].1 != seen[1].1 && seen[1].1 != seen[2].1,
        "new process each time"
    );
    let status = hub
        .plugin_heartbeat("crasher", "a 1001 showing restarts", |f| {
            f["restarts"].parse::<u64>().unwrap() >= 2
        })
        .await;
    assert!(
        status["last_error"].contains("exited with status 3"),
        "{status:?}"
    );
    assert_no_zombies(agent.pid);
    assert!(agent.stop().await.success());
    assert_no_zombies(std::process::id());
}

#[tokio::test]
async fn crash_loop_marks_the_plugin_failed() {
    let mut hub = ScriptedHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = write_plugin(dir.path());
    let restart = "[plugins.restart]\nmin_backoff_ms = 20\nmax_backoff_ms = 50\nmax_restarts = 2\nperiod_secs = 60\n";
    let config = agent_toml(
        hub.addr,
        dir.path(),
        &plugin_toml("looper", &plugin, "crash", restart),
    );
    let agent = AgentProcess::start(dir.path(), &config);

    let failed = hub
        .plugin_heartbeat("looper", "looper reported failed", |f| {
            f["state"] == "failed"
        })
        .await;
    assert!(failed["last_error"].contains("crash loop"), "{failed:?}");
    assert_eq!(failed["restarts"], "2");
    assert_eq!(failed["pid"], "0");
    // One start plus two restarts, and nothing after it was marked failed:
    // the next heartbeat still says failed with the same count.
    assert_eq!(starts(dir.path(), "looper").len(), 3);
    hub.clear();
    let again = hub
        .plugin_heartbeat("looper", "a later 1001 of looper", |_| true)
        .await;
    assert_eq!(
        (again["state"].as_str(), again["restarts"].as_str()),
        ("failed", "2")
    );
    assert_eq!(starts(dir.path(), "looper").len(), 3);
    assert_no_zombies(agent.pid);
    assert!(agent.stop().await.success());
}

#[tokio::test]
async fn garbage_on_stdout_restarts_only_that_plugin() {
    let mut hub = ScriptedHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = write_plugin(dir.path());
    let plugins = plugin_toml("garbler", &plugin, "garbage", FAST_RESTART)
        + &plugin_toml("steady", &plugin, "serve", "");
    let agent = AgentProcess::start(dir.path(), &agent_toml(hub.addr, dir.path(), &plugins));

    let mut garbler_starts = 0;
    while garbler_starts < 2 {
        hub.record("a start of garbler", |r| is_start(r, "garbler"))
            .await;
        garbler_starts += 1;
    }
    hub.plugin_heartbeat(
        "garbler",
        "garbler restarted after its protocol error",
        |f| f["last_error"].contains("protocol error") && f["restarts"] != "0",
    )
    .await;

    hub.send_task(Task {
        id: "t-steady".into(),
        data_type: 2000,
        target: "steady".into(),
        body: "ping".into(),
        ..Task::default()
    });
    let result = hub.task_result("t-steady").await;
    assert_eq!(result.status, TaskStatus::Ok as i32, "{result:?}");
    assert_eq!(&result.output[..], b"echo:ping");
    // Heartbeats cut before its process reported in say "backoff"; the first
    // one after says "running", and it never restarted.
    let steady = hub
        .plugin_heartbeat("steady", "steady running", |f| f["state"] == "running")
        .await;
    assert_eq!(steady["restarts"], "0");
    assert_eq!(
        starts(dir.path(), "steady").len(),
        1,
        "steady was never restarted"
    );
    assert_no_zombies(agent.pid);
    assert!(agent.stop().await.success());
}

#[tokio::test]
async fn sha256_mismatch_refuses_the_start() {
    let mut hub = ScriptedHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = write_plugin(dir.path());
    let actual = herd_agent::sha256_file(&plugin).unwrap();
    let expected = "0".repeat(64);
    let pinned = format!("sha256 = \"{expected}\"\n");
    let plugins = plugin_toml("tampered", &plugin, "serve", &pinned)
        + &plugin_toml(
            "genuine",
            &plugin,
            "serve",
            &format!("sha256 = \"{actual}\"\n"),
        );
    let agent = AgentProcess::start(dir.path(), &agent_toml(hub.addr, dir.path(), &plugins));

    let failed = hub
        .plugin_heartbeat("tampered", "tampered reported failed", |f| {
            f["state"] == "failed"
        })
        .await;
    let error = &failed["last_error"];
    assert!(
        error.contains("sha256") && error.contains(&expected) && error.contains(&actual),
        "{error}"
    );
    hub.record("genuine starts", |r| is_start(r, "genuine"))
        .await;
    assert!(starts(dir.path(), "tampered").is_empty(), "never executed");
    assert!(agent.stop().await.success());
}

#[tokio::test]
async fn tasks_are_routed_answered_rejected_and_timed_out() {
    let mut hub = ScriptedHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = write_plugin(dir.path());
    let plugins = plugin_toml("worker", &plugin, "serve", "");
    let agent = AgentProcess::start(dir.path(), &agent_toml(hub.addr, dir.path(), &plugins));
    hub.record("worker starts", |r| is_start(r, "worker")).await;

    let task = |id: &str, target: &str, data_type: u32, timeout_ms: u32| Task {
        id: id.into(),
        data_type,
        target: target.into(),
        body: id.to_owned().into(),
        timeout_ms,
        ..Task::default()
    };
    hub.send_task(task("ok", "worker", 2000, 0));
    hub.send_task(task("slow", "worker", 2099, 300));
    hub.send_task(task("nobody", "no-such-plugin", 2000, 0));
    hub.send_task(task("self", "agent", 1234, 0));

    let ok = hub.task_result("ok").await;
    assert_eq!(
        (ok.status, &ok.output[..]),
        (TaskStatus::Ok as i32, &b"echo:ok"[..])
    );
    assert_eq!(ok.source, "worker");
    let unknown = hub.task_result("nobody").await;
    assert_eq!(unknown.status, TaskStatus::Rejected as i32);
    assert!(
        unknown.error.contains("no-such-plugin"),
        "{}",
        unknown.error
    );
    let agent_task = hub.task_result("self").await;
    assert_eq!(agent_task.status, TaskStatus::Rejected as i32);
    let slow = hub.task_result("slow").await;
    assert_eq!(slow.status, TaskStatus::Timeout as i32, "{slow:?}");
    assert!(agent.stop().await.success());
}
