//! `herd-logtail` as a real child process: lines, rotation, truncation,
//! restarts without loss or repetition, tasks.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use herd_plugin::testing::PluginProcess;
use herd_plugin::{Record, Task, TaskStatus};
use herd_plugin_logtail::{LINE, TASK_ADD_FILE, TASK_LIST_FILES, TASK_REMOVE_FILE};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const WAIT: Duration = Duration::from_secs(10);

fn start(state_dir: &Path, files: &[&Path]) -> Result<PluginProcess, Box<dyn std::error::Error>> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herd-logtail"));
    command
        .env_remove(herd_plugin::ENV_STATE_DIR)
        .arg("--state-dir")
        .arg(state_dir)
        .args(["--poll-ms", "20"]);
    for file in files {
        command.arg("--file").arg(file);
    }
    Ok(PluginProcess::spawn(&mut command)?)
}

fn append(path: &Path, text: &[u8]) -> std::io::Result<()> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(text)
}

/// The next `expected.len()` lines, in order.
fn expect_lines(
    plugin: &mut PluginProcess,
    expected: &[&str],
) -> Result<Vec<Record>, Box<dyn std::error::Error>> {
    let mut records = Vec::new();
    for line in expected {
        let record = plugin.next_record_of(LINE, WAIT)?;
        assert_eq!(record.fields["line"], *line, "record {record:?}");
        records.push(record);
    }
    Ok(records)
}

/// Stops the plugin the agent's way (stdin EOF) and checks it sent nothing
/// more and exited 0.
fn stop(plugin: PluginProcess) -> TestResult {
    let finished = plugin.finish(WAIT)?;
    assert!(finished.status.success(), "exit status {}", finished.status);
    assert!(
        finished.records.is_empty(),
        "unexpected records: {:?}",
        finished.records
    );
    Ok(())
}

fn task(id: &str, data_type: u32, path: Option<&Path>) -> Task {
    let mut task = Task {
        id: id.into(),
        data_type,
        ..Task::default()
    };
    if let Some(path) = path {
        task.fields
            .insert("path".into(), path.display().to_string());
    }
    task
}

#[test]
fn restart_neither_loses_nor_repeats_lines() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (state, log) = (dir.path().join("state"), dir.path().join("app.log"));
    append(&log, b"a\nb\nc\n")?;

    let mut plugin = start(&state, &[&log])?;
    let records = expect_lines(&mut plugin, &["a", "b", "c"])?;
    let offsets: Vec<&str> = records
        .iter()
        .map(|r| r.fields["offset"].as_str())
        .collect();
    assert_eq!(offsets, ["0", "2", "4"]);
    assert_eq!(records[0].fields["path"], log.display().to_string());
    stop(plugin)?;

    // Written while the plugin is down: sent after the restart, once.
    append(&log, b"d\ne\n")?;
    let mut plugin = start(&state, &[&log])?;
    expect_lines(&mut plugin, &["d", "e"])?;
    // A line written now comes right after "e": nothing was sent twice.
    append(&log, b"f\n")?;
    expect_lines(&mut plugin, &["f"])?;
    stop(plugin)?;

    let mut plugin = start(&state, &[&log])?;
    append(&log, b"g\n")?;
    expect_lines(&mut plugin, &["g"])?;
    stop(plugin)
}

#[test]
fn rotation_finishes_the_old_file_then_follows_the_new_one_from_zero() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (state, log) = (dir.path().join("state"), dir.path().join("app.log"));
    let rotated = dir.path().join("app.log.1");
    append(&log, b"a\nb\n")?;
    let mut plugin = start(&state, &[&log])?;
    expect_lines(&mut plugin, &["a", "b"])?;

    // The writer still holds the old file after the rename and finishes with
    // an unterminated line; then the new file appears.
    fs::rename(&log, &rotated)?;
    append(&rotated, b"c\nunfinished")?;
    append(&log, b"d\ne\n")?;

    let records = expect_lines(&mut plugin, &["c", "unfinished", "d", "e"])?;
    assert_eq!(
        records[1].fields.get("partial").map(String::as_str),
        Some("true")
    );
    assert_eq!(records[2].fields["offset"], "0");
    assert_ne!(records[0].fields["inode"], records[2].fields["inode"]);
    stop(plugin)
}

#[test]
fn truncation_restarts_at_zero() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (state, log) = (dir.path().join("state"), dir.path().join("app.log"));
    append(&log, b"a fairly long first line\nsecond\n")?;
    let mut plugin = start(&state, &[&log])?;
    expect_lines(&mut plugin, &["a fairly long first line", "second"])?;

    File::create(&log)?.write_all(b"x\n")?; // truncate, then write less than before
    let records = expect_lines(&mut plugin, &["x"])?;
    assert_eq!(records[0].fields["offset"], "0");
    stop(plugin)
}

#[test]
fn tasks_add_remove_and_list_files_across_restarts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (state, log) = (dir.path().join("state"), dir.path().join("added.log"));
    append(&log, b"a\n")?;
    let mut plugin = start(&state, &[])?;

    let added = plugin.call(task("add", TASK_ADD_FILE, Some(&log)), WAIT)?;
    assert_eq!(added.status(), TaskStatus::Ok, "{added:?}");
    expect_lines(&mut plugin, &["a"])?;

    let listed = plugin.call(task("list", TASK_LIST_FILES, None), WAIT)?;
    assert_eq!(listed.fields["count"], "1");
    let files: serde_json::Value = serde_json::from_slice(&listed.output)?;
    assert_eq!(files[0]["path"], log.display().to_string());
    assert_eq!(files[0]["offset"], 2);

    let relative = plugin.call(task("rel", TASK_ADD_FILE, Some(Path::new("x.log"))), WAIT)?;
    assert_eq!(relative.status(), TaskStatus::Rejected);
    assert!(
        relative.error.contains("not absolute"),
        "{}",
        relative.error
    );
    let unknown = plugin.call(task("what", 2199, None), WAIT)?;
    assert_eq!(unknown.status(), TaskStatus::Rejected);

    stop(plugin)?;

    // The added file is remembered across a restart, at its offset.
    let mut plugin = start(&state, &[])?;
    append(&log, b"b\n")?;
    expect_lines(&mut plugin, &["b"])?;
    let removed = plugin.call(task("rm", TASK_REMOVE_FILE, Some(&log)), WAIT)?;
    assert_eq!(removed.status(), TaskStatus::Ok, "{removed:?}");
    let again = plugin.call(task("rm2", TASK_REMOVE_FILE, Some(&log)), WAIT)?;
    assert_eq!(again.status(), TaskStatus::Rejected);
    stop(plugin)?;

    // The removal is remembered too, even against `--file`.
    let mut plugin = start(&state, &[&log])?;
    let listed = plugin.call(task("list2", TASK_LIST_FILES, None), WAIT)?;
    assert_eq!(
        listed.fields["count"],
        "0",
        "{}",
        String::from_utf8_lossy(&listed.output)
    );
    // Re-adding resumes at the saved offset: "b" is not sent again.
    append(&log, b"c\n")?;
    let added = plugin.call(task("add2", TASK_ADD_FILE, Some(&log)), WAIT)?;
    assert_eq!(added.status(), TaskStatus::Ok);
    expect_lines(&mut plugin, &["c"])?;
    stop(plugin)
}

#[test]
fn invalid_utf8_lines_carry_the_raw_bytes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (state, log) = (dir.path().join("state"), dir.path().join("bin.log"));
    append(&log, b"ok\n\xff\xfeok\r\n")?;
    let mut plugin = start(&state, &[&log])?;
    let first = plugin.next_record_of(LINE, WAIT)?;
    assert_eq!((first.fields["line"].as_str(), first.body.len()), ("ok", 0));
    let second = plugin.next_record_of(LINE, WAIT)?;
    assert_eq!(&second.body[..], b"\xff\xfeok");
    assert_eq!(second.fields["line"], "\u{fffd}\u{fffd}ok");
    stop(plugin)
}

#[test]
fn a_missing_file_is_followed_once_it_appears() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (state, log) = (dir.path().join("state"), dir.path().join("later.log"));
    let mut plugin = start(&state, &[&log])?;
    let listed = plugin.call(task("list", TASK_LIST_FILES, None), WAIT)?;
    let files: serde_json::Value = serde_json::from_slice(&listed.output)?;
    assert_eq!(files[0]["open"], false);
    append(&log, b"hello\n")?;
    expect_lines(&mut plugin, &["hello"])?;
    stop(plugin)
}

/// The committed offset of `log` as task 2112 lists it.
fn committed(
    plugin: &mut PluginProcess,
    log: &Path,
) -> Result<Option<u64>, Box<dyn std::error::Error>> {
    let listed = plugin.call(task("list", TASK_LIST_FILES, None), WAIT)?;
    let files: Vec<serde_json::Value> = serde_json::from_slice(&listed.output)?;
    Ok(files
        .iter()
        .find(|f| f["path"] == log.display().to_string())
        .and_then(|f| f["committed"].as_u64()))
}

#[test]
fn a_crash_after_the_confirmations_repeats_nothing_and_loses_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (state, log) = (dir.path().join("state"), dir.path().join("app.log"));
    let lines: Vec<String> = (1..=10).map(|n| format!("line {n}")).collect();
    let text = format!("{}\n", lines.join("\n"));
    append(&log, text.as_bytes())?;

    let mut plugin = start(&state, &[&log])?;
    let expected: Vec<&str> = lines.iter().map(String::as_str).collect();
    expect_lines(&mut plugin, &expected)?; // each confirmed durable as it is read
    // The positions are saved once the confirmations are in (no event for it).
    let end = text.len() as u64;
    let deadline = std::time::Instant::now() + WAIT;
    while committed(&mut plugin, &log)? != Some(end) {
        assert!(
            std::time::Instant::now() < deadline,
            "offsets never committed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(plugin); // SIGKILL: no chance to save on the way out

    append(&log, b"after the crash\n")?;
    let mut plugin = start(&state, &[&log])?;
    expect_lines(&mut plugin, &["after the crash"])?;
    stop(plugin)
}

#[test]
fn lines_never_confirmed_durable_are_sent_again() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (state, log) = (dir.path().join("state"), dir.path().join("app.log"));
    append(&log, b"one\ntwo\nthree\n")?;

    // An agent that never confirms: even an orderly stop commits nothing.
    let mut plugin = start(&state, &[&log])?.without_acks();
    expect_lines(&mut plugin, &["one", "two", "three"])?;
    assert_eq!(committed(&mut plugin, &log)?, None);
    stop(plugin)?;

    let mut plugin = start(&state, &[&log])?;
    expect_lines(&mut plugin, &["one", "two", "three"])?;
    stop(plugin)
}

/// logtail on raw pipes, for what [`PluginProcess`] does not offer: a test
/// that decides when (and up to where) records are confirmed durable.
struct RawPlugin {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    frames: std::sync::mpsc::Receiver<herd_codec::proto::PluginMessage>,
}

impl RawPlugin {
    fn spawn(command: &mut Command) -> Result<Self, Box<dyn std::error::Error>> {
        use std::process::Stdio;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().ok_or("stdout not piped")?;
        let (sender, frames) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            while let Ok(Some(message)) =
                herd_codec::blocking::read_frame(&mut stdout, herd_codec::DEFAULT_MAX_FRAME_LENGTH)
            {
                if sender.send(message).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            frames,
        })
    }

    fn send(
        &mut self,
        command: impl Into<herd_codec::proto::PluginCommand>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        herd_codec::blocking::write_frame(stdin, &command.into())?;
        stdin.flush()?;
        Ok(())
    }

    /// Confirms the first `through` records durable, as the agent does.
    fn confirm(&mut self, through: u64) -> Result<(), Box<dyn std::error::Error>> {
        self.send(herd_codec::proto::Durable { through })
    }

    /// The next frame, if one comes within `timeout`.
    fn next(&mut self, timeout: Duration) -> Option<herd_codec::proto::PluginMessage> {
        self.frames.recv_timeout(timeout).ok()
    }

    /// The next line record (nothing else may come), within [`WAIT`].
    fn line(&mut self) -> Result<Record, Box<dyn std::error::Error>> {
        use herd_codec::proto::plugin_message::Kind;
        match self.next(WAIT).and_then(|m| m.kind) {
            Some(Kind::Record(record)) if record.data_type == LINE => Ok(record),
            other => Err(format!("expected a line record, got {other:?}").into()),
        }
    }

    /// Sends task 2112 and returns the listed files; fails if a record
    /// comes first.
    fn list(&mut self) -> Result<Vec<serde_json::Value>, Box<dyn std::error::Error>> {
        use herd_codec::proto::plugin_message::Kind;
        self.send(task("list", TASK_LIST_FILES, None))?;
        match self.next(WAIT).and_then(|m| m.kind) {
            Some(Kind::TaskResult(result)) => Ok(serde_json::from_slice(&result.output)?),
            other => Err(format!("expected the list, got {other:?}").into()),
        }
    }

    /// Closes stdin and waits (bounded) for a clean exit.
    fn finish(mut self) -> TestResult {
        self.stdin = None;
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                assert!(status.success(), "exit status {status}");
                return Ok(());
            }
            assert!(std::time::Instant::now() < deadline, "logtail did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RawPlugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The documented bound on lines sent but not yet confirmed durable.
const UNCONFIRMED_CAP: u64 = 65_536;

#[test]
fn at_most_65536_lines_wait_for_confirmation_and_the_rest_follow_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (state, log) = (dir.path().join("state"), dir.path().join("app.log"));
    // Fixed-width lines: line n (from 1) starts at byte (n - 1) * 12.
    let text =
        |from: u64, to: u64| -> String { (from..=to).map(|n| format!("line {n:06}\n")).collect() };
    let total = UNCONFIRMED_CAP + 4_464;
    append(&log, text(1, 1).as_bytes())?;
    let mut command = Command::new(env!("CARGO_BIN_EXE_herd-logtail"));
    command
        .env_remove(herd_plugin::ENV_STATE_DIR)
        .arg("--state-dir")
        .arg(&state)
        .args(["--poll-ms", "20", "--file"])
        .arg(&log);
    let mut plugin = RawPlugin::spawn(&mut command)?;
    let mut lines = vec![plugin.line()?];
    // Polls that find nothing new must not use up the budget: idle for
    // about 25 polls with one line unconfirmed, then the flood.
    std::thread::sleep(Duration::from_millis(500));
    append(&log, text(2, total).as_bytes())?;
    while (lines.len() as u64) < UNCONFIRMED_CAP {
        lines.push(plugin.line()?);
    }
    // Held at the cap: nothing more within 15 polls, and the next line to
    // send is the one after the cap; nothing is committed.
    assert!(
        plugin.next(Duration::from_millis(300)).is_none(),
        "more than {UNCONFIRMED_CAP} lines sent without a confirmation"
    );
    let files = plugin.list()?;
    assert_eq!(files[0]["offset"], UNCONFIRMED_CAP * 12, "{files:?}");
    assert_eq!(files[0]["committed"], serde_json::Value::Null, "{files:?}");

    // The confirmation lets the rest through, in order, none skipped.
    plugin.confirm(UNCONFIRMED_CAP)?;
    while (lines.len() as u64) < total {
        lines.push(plugin.line()?);
    }
    for (record, n) in lines.iter().zip(1u64..) {
        assert_eq!(record.fields["line"], format!("line {n:06}"), "{record:?}");
        assert_eq!(record.fields["offset"], ((n - 1) * 12).to_string());
    }
    plugin.confirm(total)?;
    let deadline = std::time::Instant::now() + WAIT;
    while plugin.list()?[0]["committed"] != total * 12 {
        assert!(
            std::time::Instant::now() < deadline,
            "offsets never committed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    plugin.finish()
}
