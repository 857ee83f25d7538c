//! `herd-exec` as a real child process: parsing, timeouts that kill and reap
//! the whole process group, tasks.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use herd_plugin::testing::PluginProcess;
use herd_plugin::{Task, TaskStatus};
use herd_plugin_exec::{RUN, TASK_RUN_SCRIPT};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const WAIT: Duration = Duration::from_secs(10);

fn script(dir: &Path, name: &str, body: &str) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n"))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

fn start(args: &[String]) -> Result<PluginProcess, Box<dyn std::error::Error>> {
    Ok(PluginProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_herd-exec")).args(args),
    )?)
}

fn spec(name: &str, path: &Path, interval: &str) -> [String; 2] {
    [
        "--script".into(),
        format!("{name}={}:{interval}", path.display()),
    ]
}

fn run_task(id: &str, script: &str) -> Task {
    let mut task = Task {
        id: id.into(),
        data_type: TASK_RUN_SCRIPT,
        ..Task::default()
    };
    task.fields.insert("script".into(), script.into());
    task
}

fn stop(plugin: PluginProcess) -> TestResult {
    let finished = plugin.finish(WAIT)?;
    assert!(finished.status.success(), "exit status {}", finished.status);
    Ok(())
}

/// Whether `pid` still exists, zombie or not.
fn exists(pid: &str) -> bool {
    Path::new("/proc").join(pid.trim()).exists()
}

#[test]
fn key_value_lines_become_fields() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = script(
        dir.path(),
        "kv.sh",
        "printf 'queue=12\\n# comment\\nstate = ok\\nnoise\\n'; echo oops >&2",
    )?;
    let mut plugin = start(&spec("kv", &path, "60"))?;
    let record = plugin.next_record_of(RUN, WAIT)?;
    let fields = &record.fields;
    assert_eq!(fields["queue"], "12");
    assert_eq!(fields["state"], "ok");
    assert_eq!(fields["script"], "kv");
    assert_eq!(fields["exit_code"], "0");
    assert_eq!(fields["timed_out"], "false");
    assert_eq!(fields["stderr"], "oops");
    assert!(fields["duration_ms"].parse::<u64>().is_ok(), "{fields:?}");
    assert!(fields["parse_error"].contains("1 line(s)"), "{fields:?}");
    assert!(record.body.starts_with(b"queue=12"));
    stop(plugin)
}

#[test]
fn a_json_object_becomes_fields() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = script(
        dir.path(),
        "json.sh",
        r#"echo '{"queue": 12, "up": true, "name": "db", "exit_code": "spoofed"}'"#,
    )?;
    let mut plugin = start(&spec("json", &path, "60"))?;
    let record = plugin.next_record_of(RUN, WAIT)?;
    assert_eq!(record.fields["queue"], "12");
    assert_eq!(record.fields["up"], "true");
    assert_eq!(record.fields["name"], "db");
    // The framework's fields win over the script's.
    assert_eq!(record.fields["exit_code"], "0");
    assert!(!record.fields.contains_key("parse_error"));
    assert!(record.body.is_empty());
    stop(plugin)
}

#[test]
fn scheduled_scripts_run_again_after_their_interval() -> TestResult {
    let dir = tempfile::tempdir()?;
    let count = dir.path().join("count");
    let path = script(
        dir.path(),
        "tick.sh",
        &format!("echo x >> {0}; echo runs=$(wc -l < {0})", count.display()),
    )?;
    let mut plugin = start(&spec("tick", &path, "0.05"))?;
    let first = plugin.next_record_of(RUN, WAIT)?;
    let second = plugin.next_record_of(RUN, WAIT)?;
    assert_eq!(first.fields["runs"].trim(), "1");
    assert_eq!(second.fields["runs"].trim(), "2");
    stop(plugin)
}

#[test]
fn a_timeout_kills_and_reaps_the_whole_process_group() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (script_pid, child_pid) = (dir.path().join("script.pid"), dir.path().join("child.pid"));
    let path = script(
        dir.path(),
        "hang.sh",
        &format!(
            "sleep 60 &\necho $! > {}\necho $$ > {}\necho started=yes\nwait",
            child_pid.display(),
            script_pid.display()
        ),
    )?;
    let mut args = spec("hang", &path, "60").to_vec();
    args.extend(["--timeout-secs".into(), "1".into()]);
    let mut plugin = start(&args)?;

    let record = plugin.next_record_of(RUN, WAIT)?;
    assert_eq!(record.fields["timed_out"], "true");
    assert_eq!(record.fields["signal"], "9");
    assert_eq!(record.fields["exit_code"], "");
    assert_eq!(record.fields["started"], "yes");
    let elapsed: u64 = record.fields["duration_ms"].parse()?;
    assert!((1000..5000).contains(&elapsed), "duration {elapsed} ms");
    // The record is sent after the group was reaped: neither the script nor
    // its background child exists any more, not even as a zombie.
    for pid_file in [&script_pid, &child_pid] {
        let pid = fs::read_to_string(pid_file)?;
        assert!(
            !exists(&pid),
            "process {} from {} still exists",
            pid.trim(),
            pid_file.display()
        );
    }
    stop(plugin)
}

#[test]
fn task_runs_a_script_now_and_answers_with_its_outcome() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ok = script(dir.path(), "ok.sh", "echo answer=42")?;
    let fail = script(dir.path(), "fail.sh", "echo why=disk; exit 3")?;
    let slow = script(dir.path(), "slow.sh", "exec sleep 60")?;
    let mut args = Vec::new();
    args.extend(spec("ok", &ok, "0"));
    args.extend(spec("fail", &fail, "0"));
    args.extend(spec("slow", &slow, "0"));
    let mut plugin = start(&args)?;

    let done = plugin.call(run_task("1", "ok"), WAIT)?;
    assert_eq!(done.status(), TaskStatus::Ok, "{done:?}");
    assert_eq!(done.fields["answer"], "42");
    assert_eq!(&done.output[..], b"answer=42\n");

    let failed = plugin.call(run_task("2", "fail"), WAIT)?;
    assert_eq!(failed.status(), TaskStatus::Failed);
    assert_eq!(failed.error, "exit code 3");
    assert_eq!(failed.fields["why"], "disk");

    let mut hurried = run_task("3", "slow");
    hurried.timeout_ms = 200;
    let timed_out = plugin.call(hurried, WAIT)?;
    assert_eq!(timed_out.status(), TaskStatus::Timeout);
    assert_eq!(timed_out.fields["timed_out"], "true");

    let unknown = plugin.call(run_task("4", "nope"), WAIT)?;
    assert_eq!(unknown.status(), TaskStatus::Rejected);
    assert!(
        unknown.error.contains("known: fail, ok, slow"),
        "{}",
        unknown.error
    );

    // On-demand scripts never produce scheduled records.
    let finished = plugin.finish(WAIT)?;
    assert!(finished.status.success());
    assert!(finished.records.is_empty(), "{:?}", finished.records);
    Ok(())
}

#[test]
fn a_script_that_cannot_start_is_reported() -> TestResult {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("missing.sh");
    let mut plugin = start(&spec("gone", &missing, "60"))?;
    let record = plugin.next_record_of(RUN, WAIT)?;
    assert_eq!(record.fields["script"], "gone");
    assert!(
        record.fields["error"].contains("No such file"),
        "{:?}",
        record.fields
    );
    stop(plugin)
}

#[test]
fn a_bad_script_spec_is_refused_with_a_clear_error() -> TestResult {
    let output = PluginProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_herd-exec")).args(["--script", "x=/a:soon"]),
    )?
    .finish(WAIT)?;
    assert_eq!(output.status.code(), Some(2));
    Ok(())
}

#[test]
fn stopping_the_plugin_kills_running_scripts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let fifo = dir.path().join("started");
    assert!(Command::new("mkfifo").arg(&fifo).status()?.success());
    let path = script(
        dir.path(),
        "long.sh",
        &format!("echo $$ > {}\nexec sleep 60", fifo.display()),
    )?;
    let plugin = start(&spec("long", &path, "60"))?;

    // Opening the FIFO for reading returns once the script opened it for
    // writing, so the script is known to run; read on a thread to bound it.
    let (sender, started) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(fs::read_to_string(&fifo));
    });
    let pid = started.recv_timeout(WAIT)??;

    let begun = std::time::Instant::now();
    let finished = plugin.finish(WAIT)?;
    assert!(finished.status.success(), "{}", finished.status);
    assert!(
        begun.elapsed() < Duration::from_secs(5),
        "took {:?}",
        begun.elapsed()
    );
    assert!(finished.records.is_empty(), "{:?}", finished.records);
    assert!(!exists(&pid), "script {} outlived the plugin", pid.trim());
    Ok(())
}
