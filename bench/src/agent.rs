//! A real `herd-agent` with the sysmetrics, logtail and exec plugins: its
//! idle footprint, and the latency and rate of tasks sent to it through NATS.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herd_codec::proto::{Task, TaskResult, TaskStatus};
use prost::Message as _;
use tokio::task::JoinSet;

use crate::error::{BenchError, within};
use crate::procs::{self, Binaries, Reaped};

/// The agent id written to its state directory before it starts.
const AGENT_ID: &str = "bench-agent";
/// logtail's "list the followed files": answered in-process by the plugin,
/// so the figure is the task path, not a script's fork and exec.
const LIST_FILES: u32 = 2112;
/// Subject of the baseline responder.
const ECHO: &str = "bench.echo";
/// Plugins of the agent, by name.
pub(crate) const PLUGINS: [&str; 3] = ["sysmetrics", "logtail", "exec"];

/// Sizes of the task and footprint runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AgentSize {
    /// Sequential requests for the latency percentiles.
    pub(crate) sequential: usize,
    /// Requests for the rate, `concurrency` at a time.
    pub(crate) concurrent: usize,
    /// Requests in flight during the rate run.
    pub(crate) concurrency: usize,
    /// Footprint window.
    pub(crate) window: Duration,
}

/// Latency and rate of one request path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskFigures {
    /// Median round trip.
    pub(crate) p50: Duration,
    /// 99th percentile round trip.
    pub(crate) p99: Duration,
    /// Requests per second with `concurrency` in flight.
    pub(crate) per_second: f64,
}

/// One process's idle cost.
#[derive(Debug, Clone)]
pub(crate) struct Footprint {
    /// What it is (`agent`, a plugin name, `sleep`).
    pub(crate) name: String,
    /// Resident set at the end of the window, KiB.
    pub(crate) rss_kib: u64,
    /// CPU over the window, percent of one core.
    pub(crate) cpu_percent: f64,
}

/// A running agent connected to the hub at `hub`.
#[derive(Debug)]
pub(crate) struct Agent {
    process: Reaped,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `herd-agent` with the three plugins and waits until a task
    /// reaches logtail through `client` (the whole path is up).
    pub(crate) async fn start(
        binaries: &Binaries,
        hub: std::net::SocketAddr,
        client: &async_nats::Client,
    ) -> Result<Self, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix("herd-bench-agent-")
            .tempdir()
            .map_err(BenchError::io("creating the agent directory"))?;
        let state = dir.path().join("state");
        let write = |path: &Path, text: &str| {
            std::fs::write(path, text)
                .map_err(BenchError::io(format!("writing {}", path.display())))
        };
        std::fs::create_dir_all(&state).map_err(BenchError::io("creating the state directory"))?;
        write(&state.join("agent_id"), AGENT_ID)?;
        let log = dir.path().join("app.log");
        write(&log, "started\n")?;
        let script = dir.path().join("hello.sh");
        write(&script, "#!/bin/sh\necho ok=1\n")?;
        let plugin = |name: &str, binary: &str, args: &[String]| {
            format!(
                "[[plugins]]\nname = \"{name}\"\npath = {:?}\nargs = {args:?}\n",
                binaries.path(binary)
            )
        };
        let config = format!(
            "hubs = [\"{hub}\"]\ntoken = \"{}\"\nstate_dir = {state:?}\n[tls]\ninsecure = true\n{}{}{}",
            crate::wire::TOKEN,
            plugin("sysmetrics", "herd-sysmetrics", &[]),
            plugin(
                "logtail",
                "herd-logtail",
                &["--file".into(), log.display().to_string()]
            ),
            plugin(
                "exec",
                "herd-exec",
                &["--script".into(), format!("hello={}", script.display())]
            ),
        );
        let config_path = dir.path().join("agent.toml");
        write(&config_path, &config)?;
        let stderr = std::fs::File::create(dir.path().join("agent.log"))
            .map_err(BenchError::io("creating the agent log"))?;
        let child = Command::new(binaries.path("herd-agent"))
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(BenchError::io("starting herd-agent"))?;
        let agent = Self {
            process: Reaped(child),
            _dir: dir,
        };
        let ready = async {
            loop {
                if matches!(agent_task(client, 0).await, Ok(result) if result.status == TaskStatus::Ok as i32)
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        within(
            "the agent's first task answer",
            Duration::from_secs(30),
            ready,
        )
        .await
        .map_err(|error| {
            let log =
                std::fs::read_to_string(agent._dir.path().join("agent.log")).unwrap_or_default();
            BenchError::Process(format!("{error}; agent log: {log}"))
        })?;
        Ok(agent)
    }

    /// Idle RSS and CPU of the agent and each plugin over `window`, with a
    /// `sleep` process measured alongside as the floor.
    pub(crate) async fn footprint(&self, window: Duration) -> Result<Vec<Footprint>, BenchError> {
        let agent_pid = self.process.0.id();
        let mut sleeper = Reaped(
            Command::new("sleep")
                .arg("3600")
                .spawn()
                .map_err(BenchError::io("starting sleep"))?,
        );
        let mut processes = vec![("agent".to_owned(), agent_pid)];
        processes.extend(procs::children(agent_pid).into_iter().map(|(pid, comm)| {
            let name = PLUGINS
                .iter()
                .find(|plugin| comm.contains(*plugin))
                .map_or(comm, |plugin| (*plugin).to_owned());
            (name, pid)
        }));
        processes.push(("sleep".to_owned(), sleeper.0.id()));
        let before = processes
            .iter()
            .map(|(_, pid)| procs::cpu_ticks(*pid))
            .collect::<Result<Vec<_>, _>>()?;
        tokio::time::sleep(window).await;
        let ticks = procs::ticks_per_second();
        let mut figures = Vec::new();
        for ((name, pid), before) in processes.iter().zip(before) {
            let used = procs::cpu_ticks(*pid)?.saturating_sub(before) as f64 / ticks;
            figures.push(Footprint {
                name: name.clone(),
                rss_kib: procs::rss_kib(*pid)?,
                cpu_percent: 100.0 * used / window.as_secs_f64(),
            });
        }
        let _ = sleeper.0.kill();
        Ok(figures)
    }
}

/// One task to logtail on the agent, through the hub.
async fn agent_task(client: &async_nats::Client, n: usize) -> Result<TaskResult, BenchError> {
    let task = Task {
        id: format!("bench-{n}"),
        data_type: LIST_FILES,
        target: "logtail".into(),
        timeout_ms: 5_000,
        ..Task::default()
    };
    let reply = client
        .request(format!("herd.cmd.{AGENT_ID}"), task.encode_to_vec().into())
        .await
        .map_err(BenchError::nats("task request"))?;
    TaskResult::decode(reply.payload)
        .map_err(|error| BenchError::Protocol(format!("a reply that is not a TaskResult: {error}")))
}

/// A trivial responder on [`ECHO`], answering with the request's payload.
pub(crate) async fn echo_responder(
    client: async_nats::Client,
) -> Result<tokio::task::JoinHandle<()>, BenchError> {
    let mut requests = client
        .subscribe(ECHO)
        .await
        .map_err(BenchError::nats("subscribe"))?;
    client.flush().await.map_err(BenchError::nats("flush"))?;
    let responder = client.clone();
    let task = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                // A lost reply shows up as the requester's timeout.
                let _ = responder.publish(reply, request.payload).await;
            }
        }
    });
    // Answered once before it is measured: the subscription is live.
    let ready = async {
        while client.request(ECHO, Vec::new().into()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    within("the echo responder", Duration::from_secs(10), ready).await?;
    Ok(task)
}

/// Latency and rate of tasks to the agent.
pub(crate) async fn tasks(
    client: &async_nats::Client,
    size: AgentSize,
) -> Result<TaskFigures, BenchError> {
    measure(client, size, |client, n| async move {
        let result = agent_task(&client, n).await?;
        if result.status == TaskStatus::Ok as i32 {
            Ok(())
        } else {
            Err(BenchError::Protocol(format!(
                "task {n} answered {result:?}"
            )))
        }
    })
    .await
}

/// Latency and rate of requests to [`echo_responder`].
pub(crate) async fn echo(
    client: &async_nats::Client,
    size: AgentSize,
) -> Result<TaskFigures, BenchError> {
    let payload = Task {
        id: "bench".into(),
        data_type: LIST_FILES,
        target: "logtail".into(),
        ..Task::default()
    }
    .encode_to_vec();
    measure(client, size, move |client, _| {
        let payload = payload.clone();
        async move {
            client
                .request(ECHO, payload.into())
                .await
                .map(drop)
                .map_err(BenchError::nats("echo request"))
        }
    })
    .await
}

async fn measure<F, Fut>(
    client: &async_nats::Client,
    size: AgentSize,
    request: F,
) -> Result<TaskFigures, BenchError>
where
    F: Fn(async_nats::Client, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), BenchError>> + Send,
{
    let mut latencies = Vec::with_capacity(size.sequential);
    for n in 0..size.sequential {
        let sent = Instant::now();
        request(client.clone(), n).await?;
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    let percentile = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    let started = Instant::now();
    let mut workers = JoinSet::new();
    let per_worker = size.concurrent / size.concurrency;
    for worker in 0..size.concurrency {
        let (client, request) = (client.clone(), request.clone());
        workers.spawn(async move {
            for n in 0..per_worker {
                request(client.clone(), worker * per_worker + n).await?;
            }
            Ok::<_, BenchError>(())
        });
    }
    while let Some(result) = workers.join_next().await {
        result.map_err(|error| BenchError::Process(format!("request task: {error}")))??;
    }
    Ok(TaskFigures {
        p50: percentile(50),
        p99: percentile(99),
        per_second: (per_worker * size.concurrency) as f64 / started.elapsed().as_secs_f64(),
    })
}
