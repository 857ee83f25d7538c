//! The herd-hub binary: configuration precedence, the example file, errors,
//! and an orderly exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const HUB: &str = env!("CARGO_BIN_EXE_herd-hub");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/herd-hub.example.toml");

fn hub() -> Command {
    let mut command = Command::new(HUB);
    for (key, _) in std::env::vars().filter(|(key, _)| key.starts_with("HERD_HUB_")) {
        command.env_remove(key);
    }
    command
}

fn printed(command: &mut Command) -> String {
    let output = command
        .arg("--print-config")
        .output()
        .expect("herd-hub runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

#[test]
fn the_example_file_documents_exactly_the_defaults() {
    assert_eq!(
        printed(hub().args(["--config", EXAMPLE])),
        printed(&mut hub())
    );
}

#[test]
fn flags_beat_environment_beat_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("hub.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1001\"\ntokens = [\"from-file\"]\nping_misses = 5\n",
    )
    .expect("write");
    let from_file = printed(hub().arg("--config").arg(&file));
    assert!(
        from_file.contains("listen = \"127.0.0.1:1001\""),
        "{from_file}"
    );
    assert!(from_file.contains("ping_misses = 5"), "{from_file}");

    let from_env = printed(
        hub()
            .arg("--config")
            .arg(&file)
            .env("HERD_HUB_LISTEN", "127.0.0.1:1002")
            .env("HERD_HUB_TOKEN", "a,b"),
    );
    assert!(
        from_env.contains("listen = \"127.0.0.1:1002\""),
        "{from_env}"
    );
    assert!(from_env.contains("tokens = [\"a\", \"b\"]"), "{from_env}");
    assert!(from_env.contains("ping_misses = 5"), "{from_env}");

    let from_flag = printed(
        hub()
            .arg("--config")
            .arg(&file)
            .env("HERD_HUB_LISTEN", "127.0.0.1:1002")
            .args(["--listen", "127.0.0.1:1003", "--admin", "off"]),
    );
    assert!(
        from_flag.contains("listen = \"127.0.0.1:1003\""),
        "{from_flag}"
    );
    assert!(!from_flag.contains("admin ="), "{from_flag}");
}

#[test]
fn a_bad_file_is_refused_with_its_path_and_the_problem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("hub.toml");
    std::fs::write(&file, "listne = \"x\"\n").expect("write");
    let output = hub().arg("--config").arg(&file).output().expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("invalid configuration file {}", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("unknown field `listne`"), "{stderr}");
}

#[tokio::test]
async fn sigterm_shuts_the_hub_down_in_order() {
    let nats = herd_tests::nats::NatsServer::start()
        .await
        .expect("nats-server");
    let mut child = hub()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--log-format",
            "json",
        ])
        .args(["--nats-url", &nats.url()])
        .stderr(Stdio::piped())
        .spawn()
        .expect("herd-hub starts");
    let stderr = child.stderr.take().expect("stderr");
    // The reader keeps draining stderr so the hub never writes to a closed pipe.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let reader = std::thread::spawn(move || {
        let mut started_tx = Some(started_tx);
        let mut log = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("hub started")
                && let Some(tx) = started_tx.take()
            {
                let _ = tx.send(line.clone());
            }
            log.push(line);
        }
        log
    });
    let started = tokio::time::timeout(Duration::from_secs(10), started_rx)
        .await
        .expect("hub started within 10 s")
        .expect("a start line");
    let json: serde_json::Value = serde_json::from_str(&started).expect("JSON log line");
    assert_eq!(json["fields"]["message"], "hub started");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .expect("exited within 10 s")
    .expect("joined")
    .expect("wait");
    let log = reader.join().expect("reader").join("\n");
    assert!(status.success(), "{status:?}; log:\n{log}");
    assert!(log.contains("hub shut down"), "{log}");
}

#[test]
fn the_data_form_flag_sets_it_and_a_wrong_value_is_named() {
    let printed = printed(hub().args(["--data-form", "batch"]));
    assert!(printed.contains("data_form = \"batch\""), "{printed}");
    let output = hub()
        .args(["--data-form", "grouped", "--print-config"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("expected `record` or `batch`, not \"grouped\""),
        "{stderr}"
    );
}
