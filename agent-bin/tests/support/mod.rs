//! Test support for the agent's integration tests: a minimal in-test hub
//! (TCP + HubCodec: Welcome, Ack, Command), the agent binary as a child
//! process, a test plugin, and /proc checks for zombies.
#![allow(dead_code, unreachable_pub)] // each test file uses a different part

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herd_codec::HubCodec;
use herd_codec::proto::{
    Ack, Batch, Command, ConfigSet, Hello, HubMessage, PluginConfig, Record, Task, TaskResult,
    Welcome, agent_message,
};
use tokio::net::TcpListener;
use tokio::process::{Child, Command as Process};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::Framed;

/// Bound for every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// What the in-test hub saw.
#[derive(Debug, Clone)]
pub enum HubEvent {
    Hello(Box<Hello>),
    Batch(Batch),
    /// Each record of a batch, after its `Batch` event.
    Record(Record),
    TaskResult(TaskResult),
    Closed,
}

/// A minimal hub: accepts agents, answers Hello with Welcome (assigning
/// `assign_id` when the agent has none), acks batches up to `max_ack`,
/// forwards commands to the latest connection, reports everything.
pub struct TestHub {
    pub addr: SocketAddr,
    events: mpsc::UnboundedReceiver<HubEvent>,
    /// Events no `expect` has taken yet, oldest first.
    backlog: VecDeque<HubEvent>,
    commands: Arc<Mutex<Option<mpsc::UnboundedSender<HubMessage>>>>,
    pub max_ack: Arc<AtomicU64>,
    tasks: JoinSet<()>,
}

impl TestHub {
    pub async fn start() -> Self {
        Self::bind("127.0.0.1:0".parse().unwrap(), "assigned-agent").await
    }

    /// A hub whose every Welcome sends the agent to `redirect`.
    pub async fn redirecting(redirect: Vec<String>) -> Self {
        Self::bind_with("127.0.0.1:0".parse().unwrap(), "assigned-agent", redirect).await
    }

    pub async fn bind(addr: SocketAddr, assign_id: &str) -> Self {
        Self::bind_with(addr, assign_id, Vec::new()).await
    }

    async fn bind_with(addr: SocketAddr, assign_id: &str, redirect: Vec<String>) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind the test hub");
        let addr = listener.local_addr().unwrap();
        let (events_tx, events) = mpsc::unbounded_channel();
        let commands = Arc::new(Mutex::new(None));
        let max_ack = Arc::new(AtomicU64::new(u64::MAX));
        let mut tasks = JoinSet::new();
        let accept = {
            let commands = commands.clone();
            let max_ack = max_ack.clone();
            let assign_id = assign_id.to_owned();
            async move {
                let mut connections = JoinSet::new();
                while let Ok((socket, _)) = listener.accept().await {
                    let (tx, rx) = mpsc::unbounded_channel();
                    *commands.lock().unwrap() = Some(tx);
                    connections.spawn(serve(
                        Framed::new(socket, HubCodec::new()),
                        events_tx.clone(),
                        rx,
                        max_ack.clone(),
                        assign_id.clone(),
                        redirect.clone(),
                    ));
                }
            }
        };
        tasks.spawn(accept);
        Self {
            addr,
            events,
            backlog: VecDeque::new(),
            commands,
            max_ack,
            tasks,
        }
    }

    /// Closes the listener and every connection.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }

    /// Sends a message to the latest agent connection.
    pub fn send(&self, message: impl Into<HubMessage>) {
        self.commands
            .lock()
            .unwrap()
            .as_ref()
            .expect("an agent is connected")
            .send(message.into())
            .expect("connection alive");
    }

    pub fn send_config(&self, plugins: Vec<PluginConfig>) {
        self.send(Command {
            task: None,
            config: Some(ConfigSet { plugins }),
        });
    }

    /// Takes the next heartbeat batch (the one holding a 1000 record) and
    /// returns its 1001 records' fields by plugin name.
    pub async fn plugin_states(&mut self) -> HashMap<String, HashMap<String, String>> {
        self.expect("a heartbeat batch", |e| match e {
            HubEvent::Batch(batch) if batch.records.iter().any(|r| r.data_type == 1000) => Some(
                batch
                    .records
                    .iter()
                    .filter(|r| r.data_type == 1001)
                    .map(|r| (r.source.clone(), r.fields.clone()))
                    .collect(),
            ),
            _ => None,
        })
        .await
    }

    /// Takes heartbeat batches until one's plugin states satisfy `done`
    /// (bounded by [`WAIT`] overall).
    pub async fn plugin_states_until(
        &mut self,
        what: &str,
        mut done: impl FnMut(&HashMap<String, HashMap<String, String>>) -> bool,
    ) -> HashMap<String, HashMap<String, String>> {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let states = self.plugin_states().await;
                if done(&states) {
                    return states;
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
    }

    pub fn send_task(&self, task: Task) {
        self.send(Command {
            task: Some(task),
            config: None,
        });
    }

    /// Forgets every event received so far.
    pub fn clear(&mut self) {
        self.backlog.clear();
        while self.events.try_recv().is_ok() {}
    }

    /// Takes the oldest event `pick` accepts, waiting (bounded by [`WAIT`])
    /// for it if none has arrived yet. Other events stay for later calls.
    pub async fn expect<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&HubEvent) -> Option<T>,
    ) -> T {
        for (index, event) in self.backlog.iter().enumerate() {
            if let Some(found) = pick(event) {
                self.backlog.remove(index);
                return found;
            }
        }
        let (events, backlog) = (&mut self.events, &mut self.backlog);
        let found = tokio::time::timeout(WAIT, async {
            while let Some(event) = events.recv().await {
                if let Some(found) = pick(&event) {
                    return Some(found);
                }
                backlog.push_back(event);
            }
            None
        })
        .await;
        match found {
            Ok(Some(found)) => found,
            Ok(None) => panic!("hub event stream ended while waiting for {what}"),
            Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
        }
    }

    pub async fn hello(&mut self) -> Hello {
        self.expect("Hello", |e| match e {
            HubEvent::Hello(hello) => Some(hello.as_ref().clone()),
            _ => None,
        })
        .await
    }

    /// Takes the oldest record that `pick` accepts (see [`Self::expect`]).
    pub async fn record(&mut self, what: &str, mut pick: impl FnMut(&Record) -> bool) -> Record {
        self.expect(what, |e| match e {
            HubEvent::Record(record) if pick(record) => Some(record.clone()),
            _ => None,
        })
        .await
    }

    /// Takes the oldest batch.
    pub async fn batch(&mut self) -> Batch {
        self.expect("a batch", |e| match e {
            HubEvent::Batch(batch) => Some(batch.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for a plugin's 1001 record satisfying `pick`.
    pub async fn plugin_heartbeat(
        &mut self,
        plugin: &str,
        what: &str,
        mut pick: impl FnMut(&HashMap<String, String>) -> bool,
    ) -> HashMap<String, String> {
        self.record(what, |r| {
            r.data_type == 1001 && r.source == plugin && pick(&r.fields)
        })
        .await
        .fields
    }

    pub async fn task_result(&mut self, task_id: &str) -> TaskResult {
        self.expect(&format!("result of task {task_id}"), |e| match e {
            HubEvent::TaskResult(result) if result.task_id == task_id => Some(result.clone()),
            _ => None,
        })
        .await
    }
}

async fn serve(
    mut framed: Framed<tokio::net::TcpStream, HubCodec>,
    events: mpsc::UnboundedSender<HubEvent>,
    mut commands: mpsc::UnboundedReceiver<HubMessage>,
    max_ack: Arc<AtomicU64>,
    assign_id: String,
    redirect: Vec<String>,
) {
    let Some(Ok(message)) = framed.next().await else {
        return;
    };
    let Some(agent_message::Kind::Hello(hello)) = message.kind else {
        return;
    };
    let agent_id = if hello.agent_id.is_empty() {
        assign_id
    } else {
        hello.agent_id.clone()
    };
    let _ = events.send(HubEvent::Hello(Box::new(hello)));
    let welcome = Welcome {
        ok: true,
        agent_id,
        hub_id: "test-hub".into(),
        redirect,
        ..Welcome::default()
    };
    if framed.send(HubMessage::from(welcome)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            message = framed.next() => match message.map(|m| m.map(|m| m.kind)) {
                Some(Ok(Some(agent_message::Kind::Batch(batch)))) => {
                    let seq = batch.seq;
                    let records = batch.records.clone();
                    let _ = events.send(HubEvent::Batch(batch));
                    for record in records {
                        let _ = events.send(HubEvent::Record(record));
                    }
                    if seq <= max_ack.load(Ordering::SeqCst)
                        && framed.send(HubMessage::from(Ack { seq })).await.is_err()
                    {
                        break;
                    }
                }
                Some(Ok(Some(agent_message::Kind::TaskResult(result)))) => {
                    let _ = events.send(HubEvent::TaskResult(result));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            command = commands.recv() => match command {
                Some(command) => if framed.send(command).await.is_err() { break },
                None => break,
            },
        }
    }
    let _ = events.send(HubEvent::Closed);
}

/// The test plugin script, copied into `dir`.
pub fn write_plugin(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("plugin.py");
    std::fs::write(&path, include_str!("plugin.py")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A `[[plugins]]` table for the test plugin.
pub fn plugin_toml(name: &str, path: &Path, mode: &str, extra: &str) -> String {
    format!(
        "[[plugins]]\nname = \"{name}\"\npath = \"{}\"\nargs = [\"{mode}\"]\nstop_grace_ms = 1000\n{extra}\n",
        path.display()
    )
}

/// An agent configuration for tests: fast heartbeats and reconnects.
pub fn agent_toml(hub: SocketAddr, state_dir: &Path, plugins: &str) -> String {
    format!(
        "hubs = [\"{hub}\"]\nstate_dir = \"{}\"\nheartbeat_interval_secs = 1\n\
         shutdown_timeout_ms = 3000\n\
         [reconnect]\nmin_backoff_ms = 100\nmax_backoff_ms = 400\n{plugins}",
        state_dir.display()
    )
}

/// The agent binary running as a child of the test.
pub struct AgentProcess {
    child: Child,
    pub pid: u32,
}

impl AgentProcess {
    /// Writes `config` to `<dir>/agent.toml` and starts the agent with it.
    pub fn start(dir: &Path, config: &str) -> Self {
        let path = dir.join("agent.toml");
        std::fs::write(&path, config).unwrap();
        let child = Process::new(env!("CARGO_BIN_EXE_herd-agent"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn herd-agent");
        let pid = child.id().unwrap();
        Self { child, pid }
    }

    pub fn sigterm(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    /// Waits (bounded) for the agent to exit on its own.
    pub async fn exit_status(&mut self) -> ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("agent exits in time")
            .unwrap()
    }

    /// SIGTERM, then the exit status.
    pub async fn stop(mut self) -> ExitStatus {
        self.sigterm();
        self.exit_status().await
    }
}

/// `(pid, state, ppid)` of a process from /proc, if it exists.
pub fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Children of `parent` that are zombies.
pub fn zombies_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|(state, ppid)| state == 'Z' && ppid == parent))
        .collect()
}

pub fn assert_no_zombies(parent: u32) {
    let zombies = zombies_of(parent);
    assert!(
        zombies.is_empty(),
        "zombie children of {parent}: {zombies:?}"
    );
}

/// Whether `pid` is a live (non-zombie) process.
pub fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z')
}

/// Lines of a plugin's `started` file (one pid per start).
pub fn starts(state_dir: &Path, plugin: &str) -> Vec<String> {
    std::fs::read_to_string(state_dir.join("plugins").join(plugin).join("started"))
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A 2000 "start" record of `plugin`.
pub fn is_start(record: &Record, plugin: &str) -> bool {
    record.source == plugin
        && record.data_type == 2000
        && record.fields.get("event").map(String::as_str) == Some("start")
}
