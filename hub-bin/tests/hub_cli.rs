//! The herd-hub binary: configuration precedence, the example file, errors,
//! and an orderly exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use herd_tests::script::{ScriptedAgent, hello, within};
use nix::sys::resource::{Resource, setrlimit};
use tokio::sync::mpsc;

const HUB: &str = env!("CARGO_BIN_EXE_herd-hub");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/herd-hub.example.toml");

/// A hub child killed (and reaped) if the test ends before it exited: a
/// failed assertion must not leave a hub running that holds the test's pipes.
struct HubChild(Option<std::process::Child>);

impl HubChild {
    fn spawn(command: &mut Command) -> Self {
        Self(Some(command.spawn().expect("herd-hub starts")))
    }

    fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("the hub has not been waited for")
    }

    fn wait(mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = self.child().wait();
        self.0 = None;
        status
    }
}

impl Drop for HubChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

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
fn print_config_shows_the_nats_client_section() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("hub.toml");
    std::fs::write(
        &file,
        "nats_url = \"tls://nats.internal:4222\"\n[nats]\nnkey_file = \"/etc/herd/hub.nk\"\n",
    )
    .expect("write");
    let printed = printed(hub().arg("--config").arg(&file));
    assert!(
        printed.contains("[nats]\nnkey_file = \"/etc/herd/hub.nk\"\ntls_required = false\n"),
        "{printed}"
    );
}

#[test]
fn flags_beat_environment_beat_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("hub.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1001\"\ntokens = [\"from-file\"]\nping_misses = 5\n\
         [tls]\nagent_auth = \"token\"\n",
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
fn fleet_tokens_on_a_hub_that_enrolls_agents_are_refused_with_what_to_do() {
    let output = hub()
        .args(["--token", "secret", "--print-config"])
        .output()
        .expect("herd-hub runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("herd-hub token create"), "{stderr}");
}

#[test]
fn operator_commands_without_a_running_hub_say_where_they_looked() {
    let state = tempfile::tempdir().expect("temp dir");
    let output = hub()
        .arg("--state-dir")
        .arg(state.path())
        .args(["token", "create", "--uses", "3"])
        .output()
        .expect("herd-hub runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nats.url"), "{stderr}");
    assert!(stderr.contains("is the hub running?"), "{stderr}");
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
async fn sighup_reloads_the_certificates_and_sigterm_shuts_the_hub_down_in_order() {
    let nats = herd_tests::nats::NatsServer::start()
        .await
        .expect("nats-server");
    // The hub's CA goes to its state directory.
    let state = tempfile::tempdir().expect("a state directory");
    let mut child = HubChild::spawn(
        hub()
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "off",
                "--log-format",
                "json",
            ])
            .args(["--nats-url", &nats.url()])
            .arg("--state-dir")
            .arg(state.path())
            .stderr(Stdio::piped()),
    );
    let stderr = child.child().stderr.take().expect("stderr");
    // The reader keeps draining stderr so the hub never writes to a closed pipe.
    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    let reader = std::thread::spawn(move || {
        let mut log = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("hub started") || line.contains("SIGHUP") {
                let _ = lines_tx.send(line.clone());
            }
            log.push(line);
        }
        log
    });
    let mut next_line = async |what: &str| {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.recv())
            .await
            .unwrap_or_else(|_| panic!("{what} within 10 s"))
            .unwrap_or_else(|| panic!("{what}: the hub's log ended"));
        let json: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        json["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(next_line("the start").await, "hub started");
    let pid = nix::unistd::Pid::from_raw(child.child().id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("signal");
    assert_eq!(
        next_line("the reload").await,
        "SIGHUP: TLS certificates reloaded"
    );

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
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

/// The hub's log lines as they come, and all of them so far.
struct Log {
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<serde_json::Value>,
}

impl Log {
    /// Reads `stderr` (JSON lines) on a thread, which also keeps the hub
    /// from writing into a full pipe.
    fn follow(stderr: std::process::ChildStderr) -> Self {
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line whose message is `message`, within [`herd_tests::script::WAIT`].
    async fn until(&mut self, message: &str) -> serde_json::Value {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
                self.seen.push(json.clone());
                if json["fields"]["message"] == message {
                    return Some(json);
                }
            }
            None
        };
        match within(message, wait).await {
            Some(json) => json,
            None => panic!(
                "the hub exited before logging {message:?}; log: {:#?}",
                self.seen
            ),
        }
    }

    /// Every line to the end of the log.
    async fn read_to_end(&mut self) {
        while let Some(line) = within("the end of the log", self.lines.recv()).await {
            self.seen
                .push(serde_json::from_str(&line).expect("a JSON line"));
        }
    }
}

/// CPU time the process `pid` used so far (user + system).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a command name")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line, 1-based; 3 is the first after the name.
    let ticks: u64 = fields[11..=12]
        .iter()
        .map(|field| field.parse::<u64>().expect("clock ticks"))
        .sum();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .expect("sysconf")
        .expect("a clock tick rate");
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

#[tokio::test]
async fn out_of_descriptors_the_hub_pauses_accepting_instead_of_spinning_and_recovers() {
    // The hub at rest holds about 25 descriptors; the soft limit is raised
    // to the hard one at start.
    const SOFT: u64 = 32;
    const HARD: u64 = 48;
    // More than the hub has descriptors for, fewer than its descriptors
    // and the listen backlog (128) hold together.
    const CLIENTS: usize = 80;
    let nats = herd_tests::nats::NatsServer::start()
        .await
        .expect("nats-server");
    let mut command = hub();
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--log-format",
            "json",
            // The scripted agent speaks plaintext.
            "--insecure",
        ])
        .args(["--nats-url", &nats.url()])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before `exec`; it makes
    // one async-signal-safe `setrlimit` system call and allocates nothing.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| Ok(setrlimit(Resource::RLIMIT_NOFILE, SOFT, HARD)?));
    }
    let mut child = HubChild::spawn(&mut command);
    let pid = child.child().id();
    let mut log = Log::follow(child.child().stderr.take().expect("stderr"));
    let limit = log.until("open file descriptor limit").await;
    assert_eq!(limit["fields"]["limit"], HARD, "{limit}");
    assert_eq!(limit["fields"]["was"], SOFT, "{limit}");
    let started = log.until("hub started").await;
    let addr: SocketAddr = started["fields"]["listen_addr"]
        .as_str()
        .and_then(|addr| addr.parse().ok())
        .expect("the listen address");

    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let client = within("connect", tokio::net::TcpStream::connect(addr)).await;
        clients.push(client.expect("the kernel completes the connect"));
    }
    log.until(
        "accept failed for lack of descriptors or memory; pausing accepts until it works again",
    )
    .await;
    // A bound over a window, not a benchmark: a spinning accept loop burns
    // a whole core in it.
    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_time(pid) - before;
    assert!(
        used < Duration::from_millis(500),
        "{used:?} of CPU in 2 s while out of descriptors"
    );

    drop(clients);
    let (_agent, welcome) = within(
        "an agent handshake after the descriptors came back",
        ScriptedAgent::try_handshake(addr, hello("after", "")),
    )
    .await
    .expect("handshake");
    assert!(welcome.ok, "{}", welcome.message);
    let recovered = log.until("accepting agent sockets again").await;
    let failures = recovered["fields"]["failures"].as_u64().expect("failures");
    // 10 ms doubling to 1 s: at most 7 pauses to reach the cap, then one a second.
    assert!((1..=20).contains(&failures), "{recovered}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    log.read_to_end().await;
    let status = within(
        "the hub's exit",
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .expect("joined")
    .expect("wait");
    assert!(status.success(), "{status:?}");
    let accept_warnings = log
        .seen
        .iter()
        .filter(|line| {
            line["level"] == "WARN"
                && line["fields"]["message"]
                    .as_str()
                    .is_some_and(|message| message.contains("accept"))
        })
        .count();
    assert_eq!(accept_warnings, 1, "{:#?}", log.seen);
}
