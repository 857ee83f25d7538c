//! `herd-bench`: herd's performance figures, each next to a baseline measured
//! in the same run, printed as one table (see `docs/benchmarks.md`).
//!
//! - ingest: simulated agents -> hub -> NATS subscriber, against a plain
//!   tokio forwarder (no actors) and a publisher of pre-encoded envelopes,
//!   with core NATS and with JetStream, and the hub over TLS against the
//!   plaintext one; wall rates and CPU seconds per million records of every
//!   process, each run repeated (min/median/max);
//! - connections: accept + handshake of K idle agents, hub RSS per idle
//!   connection, and time until all are back after `kill -9` and restart;
//! - tasks: NATS request -> hub -> real `herd-agent` -> logtail plugin ->
//!   reply, against a trivial NATS responder;
//! - agent footprint: idle RSS and CPU of the agent and its three plugins,
//!   against a `sleep` process.
//!
//! `--quick` runs small sizes for CI; without it the full sizes.

mod agent;
mod connections;
mod error;
mod ingest;
mod ingest_roles;
mod procs;
mod wire;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use herd_tls::rustls::ClientConfig;
use herd_tls::{Fingerprint, HubTrust};

use crate::error::BenchError;
use crate::procs::{Binaries, Server};

/// Measures herd against baselines run in the same process tree and prints one table.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Small sizes (CI smoke test, well under a minute).
    #[arg(long)]
    quick: bool,
    /// Simulated agents of the ingest run (default 100, quick 10).
    #[arg(long)]
    agents: Option<u64>,
    /// Idle agents of the connections run (default 10000, quick 500).
    #[arg(long)]
    connections: Option<u64>,
    /// Runs of every ingest case; the table shows min / median / max
    /// (default 3, quick 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    repeat: Option<u64>,
    /// PubAcks the direct JetStream publisher awaits at most at once.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub_acks: u64,
    /// Only these sections (repeatable; default all).
    #[arg(long, value_enum, value_name = "SECTION")]
    only: Vec<Section>,
    /// Keep the work directory (every process's log) and print its path.
    #[arg(long)]
    keep: bool,
    /// Rebuild the hub, agent and plugin binaries even when present.
    #[arg(long)]
    rebuild: bool,
    /// Only find (or build) the binaries, then exit.
    #[arg(long, hide = true)]
    prepare: bool,
    #[command(subcommand)]
    role: Option<Role>,
}

/// A part of the bench that runs on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    /// The ingest cases (wall rate and CPU per record).
    Ingest,
    /// Accept + handshake, RSS per idle connection, back after restart.
    Connections,
    /// Task latency and rate, and the idle agent's footprint.
    Agent,
}

impl Cli {
    fn runs(&self, section: Section) -> bool {
        self.only.is_empty() || self.only.contains(&section)
    }
}

#[derive(Debug, Subcommand)]
enum Role {
    /// Run the baseline tokio forwarder (used by the bench itself).
    #[command(hide = true)]
    ServeBaseline {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        nats_url: String,
    },
    /// Count an ingest run's records on `herd.data.>` (used by the bench itself).
    #[command(hide = true)]
    IngestSubscriber(ingest_roles::SubscriberArgs),
    /// Send an ingest run's records (used by the bench itself).
    #[command(hide = true)]
    IngestLoad(ingest_roles::LoadArgs),
}

/// Every size of one run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    ingest: ingest::IngestSize,
    connections: u64,
    agent: agent::AgentSize,
}

impl Sizes {
    fn new(cli: &Cli) -> Self {
        let (ingest, connections, agent) = if cli.quick {
            (
                ingest::IngestSize {
                    agents: 10,
                    batches: 50,
                    per_batch: 100,
                    window: 8,
                    pub_acks: 1000,
                    repeat: 1,
                    timeout: Duration::from_secs(30),
                },
                500,
                agent::AgentSize {
                    sequential: 50,
                    concurrent: 200,
                    concurrency: 8,
                    window: Duration::from_secs(5),
                },
            )
        } else {
            (
                ingest::IngestSize {
                    agents: 100,
                    batches: 100,
                    per_batch: 100,
                    window: 8,
                    pub_acks: 1000,
                    repeat: 3,
                    timeout: Duration::from_secs(300),
                },
                10_000,
                agent::AgentSize {
                    sequential: 1_000,
                    concurrent: 5_000,
                    concurrency: 32,
                    window: Duration::from_secs(60),
                },
            )
        };
        Self {
            ingest: ingest::IngestSize {
                agents: cli.agents.unwrap_or(ingest.agents),
                repeat: cli
                    .repeat
                    .map_or(ingest.repeat, |n| usize::try_from(n).unwrap_or(usize::MAX)),
                pub_acks: usize::try_from(cli.pub_acks).unwrap_or(usize::MAX),
                ..ingest
            },
            connections: cli.connections.unwrap_or(connections),
            agent,
        }
    }
}

/// One line of the table: herd's figure, the baseline's, herd ÷ baseline.
#[derive(Debug)]
struct Row {
    what: String,
    herd: String,
    baseline: String,
    ratio: Result<f64, String>,
}

impl Row {
    fn new(what: impl Into<String>, herd: String, baseline: String, ratio: f64) -> Self {
        Self {
            what: what.into(),
            herd,
            baseline,
            ratio: Ok(ratio),
        }
    }

    fn failed(what: &str, error: &BenchError) -> Self {
        Self::failed_with(what, error.to_string())
    }

    fn failed_with(what: &str, error: String) -> Self {
        Self {
            what: what.to_owned(),
            herd: "FAILED".into(),
            baseline: "-".into(),
            ratio: Err(error),
        }
    }
}

/// The rows of a section, or each of its rows marked failed.
fn rows_or_failed(labels: &[&str], result: Result<Vec<Row>, BenchError>) -> Vec<Row> {
    result.unwrap_or_else(|error| {
        labels
            .iter()
            .map(|label| Row::failed(label, &error))
            .collect()
    })
}

fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

fn seconds(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}

fn ratio(herd: Duration, baseline: Duration) -> f64 {
    herd.as_secs_f64() / baseline.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// A `nats-server` on a free loopback port, logging to `<name>.log`: core
/// NATS (the hub acks after a flush), or with JetStream storing under
/// `jetstream` (as the hub's embedded server runs).
fn start_nats(
    dir: &tempfile::TempDir,
    name: &str,
    jetstream: Option<&std::path::Path>,
) -> Result<Server, BenchError> {
    let binary = herd_hub::find_nats_server().ok_or_else(|| {
        BenchError::Process("nats-server not found; run scripts/ensure-deps".into())
    })?;
    let port = procs::free_port()?;
    let mut args = vec![
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
    ];
    if let Some(store) = jetstream {
        args.extend(["--jetstream".into(), "--store_dir".into()]);
        args.push(store.display().to_string());
    }
    Server::start(
        name,
        &binary,
        args,
        port,
        dir.path().join(format!("{name}.log")),
    )
}

fn nats_url(nats: &Server) -> String {
    format!("nats://{}", nats.addr())
}

/// The bench hubs' settings file, in the work directory.
const HUB_FILE: &str = "herd-hub.toml";
/// See [`Setup::hub_file`].
const HUB_SETTINGS: &str = "accept_rate_per_source = 0\n[tls]\nagent_auth = \"token\"\n";

/// What the bench runs against.
struct Setup {
    binaries: Binaries,
    nats: Server,
    dir: tempfile::TempDir,
}

impl Setup {
    /// A hub on the core nats-server, acking after a flush.
    fn hub(&self, name: &str) -> Result<Server, BenchError> {
        self.hub_with(name, &nats_url(&self.nats), "flush", "record")
    }

    /// A hub on the nats-server at `nats_url` with `ack_mode` (`flush`, or
    /// `jetstream` on a server with JetStream).
    fn hub_with(
        &self,
        name: &str,
        nats_url: &str,
        ack_mode: &str,
        data_form: &str,
    ) -> Result<Server, BenchError> {
        let port = procs::free_port()?;
        let mut args = self.hub_args(name, port, nats_url, ack_mode, data_form);
        // The baselines speak plaintext; so does the hub they are compared with.
        args.push("--insecure".into());
        self.start_hub(name, port, args)
    }

    /// A hub on the core nats-server speaking TLS with the CA it creates,
    /// and a client configuration pinning that CA.
    fn hub_tls(&self, name: &str) -> Result<(Server, Arc<ClientConfig>), BenchError> {
        let (server, fingerprint) = self.hub_tls_pinned(name)?;
        let tls = herd_tls::client_config(&HubTrust::Fingerprint(fingerprint))
            .map_err(|error| BenchError::Process(format!("the TLS hub's CA: {error}")))?;
        Ok((server, tls))
    }

    /// Like [`hub_tls`](Self::hub_tls), with the fingerprint of the hub's CA
    /// instead of a client configuration, for agents in another process
    /// (which build their own from it, as a real agent does).
    fn hub_tls_pinned(&self, name: &str) -> Result<(Server, Fingerprint), BenchError> {
        let port = procs::free_port()?;
        let args = self.hub_args(name, port, &nats_url(&self.nats), "flush", "record");
        let server = self.start_hub(name, port, args)?;
        let ca = self
            .hub_state(name)
            .join(herd_hub::TLS_DIR)
            .join(herd_tls::CA_CERT_FILE);
        let fingerprint = Fingerprint::of_pem_file(&ca)
            .map_err(|error| BenchError::Process(format!("the TLS hub's CA: {error}")))?;
        Ok((server, fingerprint))
    }

    /// The settings the flags do not cover: load from one address (the
    /// bench's agents all connect from 127.0.0.1, which the per-source
    /// accept rate would hold back), and agents identified by the fleet
    /// token, as the baselines have no enrollment.
    fn hub_file(&self) -> std::path::PathBuf {
        self.dir.path().join(HUB_FILE)
    }

    fn hub_state(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{name}-state"))
    }

    fn start_hub(&self, name: &str, port: u16, args: Vec<String>) -> Result<Server, BenchError> {
        Server::start(
            "hub",
            &self.binaries.path("herd-hub"),
            args,
            port,
            self.log(name),
        )
    }

    fn hub_args(
        &self,
        name: &str,
        port: u16,
        nats_url: &str,
        ack_mode: &str,
        data_form: &str,
    ) -> Vec<String> {
        let state = self.hub_state(name);
        vec![
            format!("--config={}", self.hub_file().display()),
            format!("--listen=127.0.0.1:{port}"),
            "--admin=off".into(),
            format!("--nats-url={nats_url}"),
            format!("--state-dir={}", state.display()),
            format!("--token={}", wire::TOKEN),
            format!("--hub-id=bench-{name}"),
            format!("--ack-mode={ack_mode}"),
            format!("--data-form={data_form}"),
        ]
    }

    fn baseline(&self, name: &str) -> Result<Server, BenchError> {
        let port = procs::free_port()?;
        let exe = std::env::current_exe().map_err(BenchError::io("locating herd-bench"))?;
        let args = vec![
            "serve-baseline".into(),
            format!("--listen=127.0.0.1:{port}"),
            format!("--nats-url={}", nats_url(&self.nats)),
        ];
        Server::start("baseline server", &exe, args, port, self.log(name))
    }

    async fn client(&self) -> Result<async_nats::Client, BenchError> {
        async_nats::connect(nats_url(&self.nats))
            .await
            .map_err(BenchError::nats("connect"))
    }

    fn log(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }
}

/// The ingest section: every case `size.repeat` times, round-robin so that a
/// change of load on the machine hits every case alike.
async fn ingest_rows(
    setup: &Setup,
    size: ingest::IngestSize,
    table: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Vec<Row> {
    use ingest::{Case, Targets};
    let targets = Targets {
        core: &setup.nats,
        jetstream: ingest::jetstream_target(setup)
            .await
            .map_err(|error| error.to_string()),
    };
    let mut results = ingest::Results(
        Case::ALL
            .iter()
            .map(|case| (*case, Ok(Vec::new())))
            .collect(),
    );
    for repeat in 1..=size.repeat {
        for (case, result) in &mut results.0 {
            let Ok(samples) = result else {
                continue;
            };
            match ingest::run(setup, &targets, *case, repeat, size).await {
                Ok(sample) => samples.push(sample),
                // A failed case is not run again; the others go on.
                Err(error) => *result = Err(error),
            }
        }
    }
    *table = results.table(size);
    notes.push(format!(
        "ingest: {} agents x {} batches x {} records ({} records) per run, window {} unacked batches per agent, \
         JetStream publisher at most {} PubAcks outstanding; ratios divide medians; \
         subscriber duplicates/slow-consumer events over all runs: {}",
        size.agents,
        size.batches,
        size.per_batch,
        size.agents * size.batches * size.per_batch,
        size.window,
        size.pub_acks,
        results.counts()
    ));
    results.rows()
}

fn connection_labels(agents: u64) -> [String; 7] {
    [
        format!("accept + handshake {agents} agents: hub vs tokio loop"),
        "RSS per idle connection: hub vs tokio loop".into(),
        format!("all {agents} back after kill -9 + restart: hub vs tokio loop"),
        format!("accept + TLS handshake {agents} agents: hub TLS vs plaintext"),
        "RSS per idle TLS connection: hub TLS vs plaintext".into(),
        format!("accept + handshake {agents} agents: hub claiming in KV vs core NATS"),
        "RSS per idle connection: hub claiming in KV vs core NATS".into(),
    ]
}

async fn connection_rows(
    setup: &Setup,
    agents: u64,
    notes: &mut Vec<String>,
) -> Result<Vec<Row>, BenchError> {
    let timeout = Duration::from_secs(120);
    let baseline = {
        let mut server = setup.baseline("connections-baseline")?;
        connections::measure(&mut server, "idle-base", agents, None, timeout).await?
    };
    let hub = {
        let mut server = setup.hub("connections-hub")?;
        connections::measure(&mut server, "idle-hub", agents, None, timeout).await?
    };
    let tls = {
        let (mut server, tls) = setup.hub_tls("connections-hub-tls")?;
        connections::measure(&mut server, "idle-tls", agents, Some(tls), timeout).await?
    };
    // On a NATS with JetStream the hub claims every agent in KV
    // herd_agents (fleet-wide presence); on core NATS it cannot.
    let claiming = {
        let store = setup.dir.path().join("connections-jetstream");
        let nats = start_nats(&setup.dir, "connections-nats-jetstream", Some(&store))?;
        let mut server =
            setup.hub_with("connections-hub-kv", &nats_url(&nats), "flush", "record")?;
        connections::measure(&mut server, "idle-kv", agents, None, timeout).await?
    };
    notes.push(format!(
        "connections: at most 256 handshakes in flight; agents retry every {} ms after losing the server; \
         SYNs dropped by a full listen queue (each costs a 1 s retransmit): hub {}, hub TLS {}, tokio loop {}; \
         TLS: the hub's own CA pinned by fingerprint, one client configuration for all agents",
        connections::RETRY.as_millis(),
        hub.listen_overflows,
        tls.listen_overflows,
        baseline.listen_overflows
    ));
    let [accept, rss, back, tls_accept, tls_rss, kv_accept, kv_rss] = connection_labels(agents);
    let kib = |bytes: f64| format!("{:.1} KiB", bytes / 1024.0);
    Ok(vec![
        Row::new(
            accept,
            seconds(hub.accept),
            seconds(baseline.accept),
            ratio(hub.accept, baseline.accept),
        ),
        Row::new(
            rss,
            kib(hub.rss_per_connection),
            kib(baseline.rss_per_connection),
            hub.rss_per_connection / baseline.rss_per_connection.max(1.0),
        ),
        Row::new(
            back,
            seconds(hub.back),
            seconds(baseline.back),
            ratio(hub.back, baseline.back),
        ),
        Row::new(
            tls_accept,
            seconds(tls.accept),
            seconds(hub.accept),
            ratio(tls.accept, hub.accept),
        ),
        Row::new(
            tls_rss,
            kib(tls.rss_per_connection),
            kib(hub.rss_per_connection),
            tls.rss_per_connection / hub.rss_per_connection.max(1.0),
        ),
        Row::new(
            kv_accept,
            seconds(claiming.accept),
            seconds(hub.accept),
            ratio(claiming.accept, hub.accept),
        ),
        Row::new(
            kv_rss,
            kib(claiming.rss_per_connection),
            kib(hub.rss_per_connection),
            claiming.rss_per_connection / hub.rss_per_connection.max(1.0),
        ),
    ])
}

const TASKS: [&str; 3] = [
    "task latency p50: agent/logtail vs NATS echo",
    "task latency p99: agent/logtail vs NATS echo",
    "tasks/s: agent/logtail vs NATS echo",
];

fn footprint_labels() -> Vec<String> {
    std::iter::once("agent")
        .chain(agent::PLUGINS)
        .map(|name| format!("idle {name}: RSS (CPU) vs sleep"))
        .collect()
}

async fn agent_rows(
    setup: &Setup,
    size: agent::AgentSize,
    notes: &mut Vec<String>,
) -> Result<Vec<Row>, BenchError> {
    let hub = setup.hub("agent-hub")?;
    let client = setup.client().await?;
    let agent = agent::Agent::start(&setup.binaries, hub.addr(), &client).await?;
    let footprint = agent.footprint(size.window).await?;
    let sleep = footprint
        .iter()
        .find(|process| process.name == "sleep")
        .ok_or_else(|| BenchError::Process("sleep not measured".into()))?;
    let mut rows = Vec::new();
    for label in footprint_labels() {
        let name = label
            .trim_start_matches("idle ")
            .split(':')
            .next()
            .unwrap_or_default();
        let process = footprint
            .iter()
            .find(|process| process.name == name)
            .ok_or_else(|| BenchError::Process(format!("{name} is not running under the agent")))?;
        rows.push(Row::new(
            label.clone(),
            format!(
                "{:.1} MiB ({:.2}% cpu)",
                process.rss_kib as f64 / 1024.0,
                process.cpu_percent
            ),
            format!("{:.1} MiB", sleep.rss_kib as f64 / 1024.0),
            process.rss_kib as f64 / sleep.rss_kib.max(1) as f64,
        ));
    }
    notes.push(format!(
        "footprint: {:.0} s window, CPU in % of one core from /proc/<pid>/stat utime+stime",
        size.window.as_secs_f64()
    ));
    let tasks = agent::tasks(&client, size).await?;
    let responder = agent::echo_responder(client.clone()).await?;
    let echo = agent::echo(&client, size).await;
    responder.abort();
    let echo = echo?;
    notes.push(format!(
        "tasks: task 2112 (logtail: list files); {} sequential requests for the percentiles, {} with {} in flight for the rate",
        size.sequential, size.concurrent, size.concurrency
    ));
    let rate = |value: f64| format!("{value:.0}");
    rows.splice(
        0..0,
        [
            Row::new(
                TASKS[0],
                millis(tasks.p50),
                millis(echo.p50),
                ratio(tasks.p50, echo.p50),
            ),
            Row::new(
                TASKS[1],
                millis(tasks.p99),
                millis(echo.p99),
                ratio(tasks.p99, echo.p99),
            ),
            Row::new(
                TASKS[2],
                rate(tasks.per_second),
                rate(echo.per_second),
                tasks.per_second / echo.per_second,
            ),
        ],
    );
    drop(agent);
    Ok(rows)
}

fn print_table(preface: &[String], rows: &[Row], notes: &[String], elapsed: Duration) {
    for line in preface {
        println!("{line}");
    }
    if !preface.is_empty() {
        println!();
    }
    let width = rows.iter().map(|row| row.what.len()).max().unwrap_or(0);
    let herd_width = rows
        .iter()
        .map(|row| row.herd.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let base_width = rows
        .iter()
        .map(|row| row.baseline.len())
        .max()
        .unwrap_or(0)
        .max(8);
    println!(
        "{:width$} | {:>herd_width$} | {:>base_width$} | ratio",
        "benchmark", "herd", "baseline"
    );
    println!("{}", "-".repeat(width + herd_width + base_width + 14));
    for row in rows {
        let ratio = match &row.ratio {
            Ok(ratio) => format!("{ratio:.2}"),
            Err(_) => "FAILED".into(),
        };
        println!(
            "{:width$} | {:>herd_width$} | {:>base_width$} | {ratio}",
            row.what, row.herd, row.baseline
        );
    }
    println!();
    println!("ratio = herd / baseline (higher is better for rates, worse for times and memory)");
    for note in notes {
        println!("- {note}");
    }
    for row in rows {
        if let Err(error) = &row.ratio {
            println!("- FAILED {}: {error}", row.what);
        }
    }
    println!("- total time: {:.0} s", elapsed.as_secs_f64());
}

async fn bench(cli: &Cli) -> Result<bool, BenchError> {
    let started = Instant::now();
    let mut sizes = Sizes::new(cli);
    let mut notes = Vec::new();
    let nofile = procs::raise_nofile()?;
    // Each idle agent costs a descriptor here and one in the server.
    let room = nofile.saturating_sub(200);
    if sizes.connections > room {
        notes.push(format!(
            "connections: open-files hard limit {nofile} allows {room} agents, not {}",
            sizes.connections
        ));
        sizes.connections = room;
    }
    let mut dir = tempfile::Builder::new()
        .prefix("herd-bench-")
        .tempdir()
        .map_err(BenchError::io("creating the work directory"))?;
    if cli.keep {
        dir.disable_cleanup(true);
        notes.push(format!("logs kept in {}", dir.path().display()));
    }
    std::fs::write(dir.path().join(HUB_FILE), HUB_SETTINGS)
        .map_err(BenchError::io("writing the hub's settings"))?;
    let setup = Setup {
        binaries: Binaries::locate(cli.rebuild)?,
        nats: start_nats(&dir, "nats", None)?,
        dir,
    };
    let mut table = Vec::new();
    let mut rows = Vec::new();
    if cli.runs(Section::Ingest) {
        rows.extend(ingest_rows(&setup, sizes.ingest, &mut table, &mut notes).await);
    }
    if cli.runs(Section::Connections) {
        let labels = connection_labels(sizes.connections);
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        rows.extend(rows_or_failed(
            &labels,
            connection_rows(&setup, sizes.connections, &mut notes).await,
        ));
    }
    if cli.runs(Section::Agent) {
        let mut labels: Vec<String> = TASKS.iter().map(|label| (*label).to_owned()).collect();
        labels.extend(footprint_labels());
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        rows.extend(rows_or_failed(
            &labels,
            agent_rows(&setup, sizes.agent, &mut notes).await,
        ));
    }
    print_table(&table, &rows, &notes, started.elapsed());
    Ok(rows.iter().all(|row| row.ratio.is_ok()))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.role {
        Some(Role::ServeBaseline { listen, nats_url }) => {
            wire::serve_baseline(*listen, nats_url).await.map(|()| true)
        }
        Some(Role::IngestSubscriber(args)) => {
            ingest_roles::subscriber(args.clone()).await.map(|()| true)
        }
        Some(Role::IngestLoad(args)) => ingest_roles::load(args.clone()).await.map(|()| true),
        None if cli.prepare => Binaries::locate(cli.rebuild).map(|_| true),
        None => bench(&cli).await,
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("herd-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
