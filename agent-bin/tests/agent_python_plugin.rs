//! The Python example plugin (`examples/python_plugin/plugin.py`) under the
//! real agent binary: its records reach the hub with the configured name as
//! `source`, and a task to it comes back as its echo `TaskResult`.

mod support;

use std::collections::HashMap;

use herd_codec::proto::{Task, TaskStatus};
use support::*;

const PLUGIN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/python_plugin/plugin.py"
);

#[tokio::test]
async fn python_plugin_runs_under_the_agent() {
    let mut hub = ScriptedHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    // `python3` is looked up on PATH by the agent, like any plugin command.
    let plugins = format!(
        "[[plugins]]\nname = \"py-echo\"\npath = \"python3\"\n\
         args = [\"{PLUGIN}\", \"--interval-secs\", \"0.2\"]\nstop_grace_ms = 2000\n"
    );
    let agent = AgentProcess::start(dir.path(), &agent_toml(hub.addr, dir.path(), &plugins));

    let first = hub
        .record("a 2900 record of the python plugin", |r| {
            r.data_type == 2900
        })
        .await;
    assert_eq!(first.source, "py-echo", "source is the configured name");
    assert_eq!(first.fields["language"], "python");
    let next = hub
        .record("a second 2900 record", |r| {
            r.data_type == 2900 && r.fields["counter"] != first.fields["counter"]
        })
        .await;
    assert_eq!(next.source, "py-echo");

    hub.send_task(Task {
        id: "py-1".into(),
        data_type: 2910,
        target: "py-echo".into(),
        fields: HashMap::from([("greeting".to_owned(), "hello".to_owned())]),
        body: b"\x00echo me\xff".to_vec().into(),
        ..Task::default()
    });
    let echo = hub.task_result("py-1").await;
    assert_eq!(echo.status, TaskStatus::Ok as i32, "{echo:?}");
    assert_eq!(&echo.output[..], b"\x00echo me\xff");
    assert_eq!(echo.fields["greeting"], "hello");
    assert_eq!(echo.source, "py-echo");

    hub.send_task(Task {
        id: "py-2".into(),
        data_type: 2911,
        target: "py-echo".into(),
        ..Task::default()
    });
    let rejected = hub.task_result("py-2").await;
    assert_eq!(rejected.status, TaskStatus::Rejected as i32, "{rejected:?}");
    assert!(rejected.error.contains("2911"), "{}", rejected.error);

    assert_no_zombies(agent.pid);
    assert!(agent.stop().await.success());
    assert_no_zombies(std::process::id());
}
