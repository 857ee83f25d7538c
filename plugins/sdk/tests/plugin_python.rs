//! The Python example plugin (`examples/python_plugin/plugin.py`) as a real
//! child process, driven with `herd-codec` frames like the agent drives it.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use herd_plugin::testing::PluginProcess;
use herd_plugin::{Task, TaskStatus};

/// Generous: the plugin compiles the .proto with grpc_tools at start.
const WAIT: Duration = Duration::from_secs(30);

const PLUGIN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/python_plugin/plugin.py"
);

#[test]
fn python_plugin_emits_records_and_echoes_tasks() -> Result<(), Box<dyn std::error::Error>> {
    let mut plugin = PluginProcess::spawn(
        Command::new("python3")
            .arg(PLUGIN)
            .args(["--interval-secs", "0.1"])
            .env("HERD_PLUGIN_NAME", "py"),
    )?;

    let first = plugin.next_record_of(2900, WAIT)?;
    let second = plugin.next_record_of(2900, WAIT)?;
    assert_eq!(first.fields["language"], "python");
    assert_eq!(first.fields["counter"], "1");
    assert_eq!(second.fields["counter"], "2");
    assert!(first.timestamp_ms > 0);

    let echo = Task {
        id: "echo-1".into(),
        data_type: 2910,
        fields: HashMap::from([("greeting".to_owned(), "hello".to_owned())]),
        body: b"\x00binary body\xff".to_vec().into(),
        ..Task::default()
    };
    let result = plugin.call(echo, WAIT)?;
    assert_eq!(result.status(), TaskStatus::Ok, "{result:?}");
    assert_eq!(&result.output[..], b"\x00binary body\xff");
    assert_eq!(result.fields["greeting"], "hello");

    let other = Task {
        id: "other".into(),
        data_type: 2911,
        ..Task::default()
    };
    let refused = plugin.call(other, WAIT)?;
    assert_eq!(refused.status(), TaskStatus::Rejected);
    assert!(refused.error.contains("2910"), "{}", refused.error);

    // EOF on stdin: the plugin exits 0, and stdout held nothing but frames.
    let finished = plugin.finish(WAIT)?;
    assert!(finished.status.success(), "{}", finished.status);
    Ok(())
}
