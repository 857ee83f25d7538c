//! Ingest: records from a load generator through a server (the hub or the
//! tokio forwarder), or published straight to NATS, to a subscriber; the wall
//! rate and, per process involved, CPU seconds per million records.
//!
//! Every process of a run is its own: the server (when there is one), the
//! nats-server, and the subscriber and load generator, which are this
//! binary's hidden `ingest-subscriber` and `ingest-load` roles
//! (see [`crate::ingest_roles`]). CPU time is utime + stime from
//! `/proc/<pid>/stat` read right before the load generator is told to go and
//! right after both it and the subscriber said they are done; everything
//! prepared before (connections, handshakes, encoded envelopes) is outside
//! both the clock and the CPU figures.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::error::{BenchError, within};
use crate::ingest_roles::{LoadMode, Records};
use crate::procs::{self, Server};
use crate::{Row, Setup, nats_url};

/// Bound of a role getting ready (connected, handshaken, envelopes encoded).
const READY: Duration = Duration::from_secs(120);

/// Sizes of the ingest runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IngestSize {
    /// Simulated agents.
    pub(crate) agents: u64,
    /// Batches each agent sends.
    pub(crate) batches: u64,
    /// Records in a batch.
    pub(crate) per_batch: u64,
    /// Unacked batches an agent keeps in flight.
    pub(crate) window: u64,
    /// PubAcks the direct JetStream publisher awaits at most at once.
    pub(crate) pub_acks: usize,
    /// Runs of every case.
    pub(crate) repeat: usize,
    /// Bound of one run.
    pub(crate) timeout: Duration,
}

impl IngestSize {
    fn total(&self) -> u64 {
        self.agents * self.batches * self.per_batch
    }
}

/// One way of moving the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Case {
    /// Simulated agents -> herd-hub (`ack_mode = "flush"`) -> core NATS.
    HubFlush,
    /// [`HubFlush`](Self::HubFlush) with the agents speaking TLS, pinning
    /// the hub's own CA by fingerprint and identified by the fleet token.
    HubTls,
    /// Simulated agents -> herd-hub (`data_form = "batch"`, flush) -> core
    /// NATS, one message per batch and data type.
    HubGrouped,
    /// Simulated agents -> the tokio forwarder -> core NATS.
    Forwarder,
    /// Pre-encoded envelopes -> core NATS.
    CorePublisher,
    /// Simulated agents -> herd-hub (`ack_mode = "jetstream"`) -> JetStream.
    HubJetstream,
    /// Pre-encoded envelopes -> JetStream, PubAcks pipelined.
    JetstreamPublisher,
}

impl Case {
    /// Every case, in the order runs go round.
    pub(crate) const ALL: [Self; 7] = [
        Self::HubFlush,
        Self::HubTls,
        Self::HubGrouped,
        Self::Forwarder,
        Self::CorePublisher,
        Self::HubJetstream,
        Self::JetstreamPublisher,
    ];

    /// The case's line in the ingest table.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::HubFlush => "herd-hub, ack_mode flush",
            Self::HubTls => "herd-hub over TLS, ack_mode flush",
            Self::HubGrouped => "herd-hub, data_form batch (flush)",
            Self::Forwarder => "tokio forwarder (flush)",
            Self::CorePublisher => "pre-encoded publisher, core NATS",
            Self::HubJetstream => "herd-hub, ack_mode jetstream",
            Self::JetstreamPublisher => "pre-encoded publisher, JetStream",
        }
    }

    /// Agent ids of a run are `<prefix>-r<repeat>-<n>`.
    fn prefix(self) -> &'static str {
        match self {
            Self::HubFlush => "hub",
            Self::HubTls => "hubtls",
            Self::HubGrouped => "hubgr",
            Self::Forwarder => "fwd",
            Self::CorePublisher => "pub",
            Self::HubJetstream => "hubjs",
            Self::JetstreamPublisher => "pubjs",
        }
    }

    fn jetstream(self) -> bool {
        matches!(self, Self::HubJetstream | Self::JetstreamPublisher)
    }

    fn load(self) -> LoadMode {
        match self {
            Self::HubFlush
            | Self::HubTls
            | Self::HubGrouped
            | Self::Forwarder
            | Self::HubJetstream => LoadMode::Agents,
            Self::CorePublisher => LoadMode::Core,
            Self::JetstreamPublisher => LoadMode::Jetstream,
        }
    }
}

/// The processes of a run, in the columns of the ingest table.
pub(crate) const PROCESSES: [&str; 4] = ["server", "nats-server", "subscriber", "load gen"];

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// Records per second, from `go` to the later of the subscriber having
    /// counted the last record and the load generator having its last ack.
    pub(crate) per_second: f64,
    /// CPU seconds per million records of each of [`PROCESSES`]; `None`
    /// when the case has no such process (no server for a publisher).
    pub(crate) cpu: [Option<f64>; 4],
    /// Records the subscriber saw twice (a re-published batch).
    pub(crate) duplicates: u64,
    /// Slow-consumer events of the subscriber's client (drops).
    pub(crate) slow_consumer: u64,
}

impl Sample {
    /// CPU of every process of the run together.
    pub(crate) fn total_cpu(&self) -> f64 {
        self.cpu.iter().flatten().sum()
    }
}

/// The nats-servers the cases publish to: core NATS, and one with JetStream
/// and the `HERD_DATA` stream (or why it is not there).
pub(crate) struct Targets<'a> {
    pub(crate) core: &'a Server,
    pub(crate) jetstream: Result<(Server, async_nats::jetstream::stream::Stream), String>,
}

/// A JetStream nats-server (configured like the hub's embedded one: `-js`
/// with a store directory) with the stream the hub keeps in place, created
/// here with the hub's default configuration.
pub(crate) async fn jetstream_target(
    setup: &Setup,
) -> Result<(Server, async_nats::jetstream::stream::Stream), BenchError> {
    let store = setup.dir.path().join("jetstream");
    let server = crate::start_nats(&setup.dir, "nats-jetstream", Some(&store))?;
    let client = async_nats::connect(nats_url(&server))
        .await
        .map_err(BenchError::nats("connect"))?;
    let jetstream = async_nats::jetstream::new(client);
    let hub = herd_hub::DataStreamConfig::default();
    let config = async_nats::jetstream::stream::Config {
        name: hub.name,
        subjects: vec!["herd.data.>".to_owned()],
        max_bytes: hub.max_bytes,
        max_age: Duration::from_secs(hub.max_age_secs),
        duplicate_window: Duration::from_secs(hub.duplicate_window_secs),
        discard: async_nats::jetstream::stream::DiscardPolicy::Old,
        ..Default::default()
    };
    // JetStream may still be starting after the port opened.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match jetstream.get_or_create_stream(config.clone()).await {
            Ok(stream) => return Ok((server, stream)),
            Err(error) if Instant::now() > deadline => {
                return Err(BenchError::Nats {
                    what: "creating the HERD_DATA stream",
                    message: error.to_string(),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Runs `case` once (repeat number `repeat`) with its own server, subscriber
/// and load generator.
pub(crate) async fn run(
    setup: &Setup,
    targets: &Targets<'_>,
    case: Case,
    repeat: usize,
    size: IngestSize,
) -> Result<Sample, BenchError> {
    let name = format!("{}-r{repeat}", case.prefix());
    let nats = if case.jetstream() {
        let (server, stream) = targets
            .jetstream
            .as_ref()
            .map_err(|error| BenchError::Process(format!("no JetStream nats-server: {error}")))?;
        // Each run starts from an empty stream.
        stream
            .purge()
            .await
            .map_err(BenchError::nats("purging HERD_DATA"))?;
        server
    } else {
        targets.core
    };
    let url = nats_url(nats);
    // The fingerprint of the TLS hub's CA, which its agents pin.
    let mut hub_ca = None;
    let server = match case {
        Case::HubFlush => {
            Some(setup.hub_with(&format!("ingest-{name}"), &url, "flush", "record")?)
        }
        Case::HubTls => {
            let (server, fingerprint) = setup.hub_tls_pinned(&format!("ingest-{name}"))?;
            hub_ca = Some(fingerprint);
            Some(server)
        }
        Case::HubGrouped => {
            Some(setup.hub_with(&format!("ingest-{name}"), &url, "flush", "batch")?)
        }
        Case::HubJetstream => {
            Some(setup.hub_with(&format!("ingest-{name}"), &url, "jetstream", "record")?)
        }
        Case::Forwarder => Some(setup.baseline(&format!("ingest-{name}"))?),
        Case::CorePublisher | Case::JetstreamPublisher => None,
    };
    let records = Records {
        prefix: name.clone(),
        agents: size.agents,
        batches: size.batches,
        per_batch: size.per_batch,
    };
    let mut args = vec!["ingest-subscriber".to_owned(), format!("--nats-url={url}")];
    args.extend(records.args());
    let mut subscriber = Role::spawn("subscriber", args, setup.log(&format!("{name}-subscriber")))?;
    within(
        "the subscriber to be ready",
        READY,
        subscriber.line("ready"),
    )
    .await??;
    let target = server
        .as_ref()
        .map_or_else(|| url.clone(), |server| server.addr().to_string());
    let mut args = vec![
        "ingest-load".to_owned(),
        format!("--mode={}", case.load().arg()),
        format!("--target={target}"),
        format!("--window={}", size.window),
        format!("--pub-acks={}", size.pub_acks),
    ];
    args.extend(records.args());
    args.extend(hub_ca.map(|fingerprint| format!("--hub-ca={fingerprint}")));
    let mut load = Role::spawn("load generator", args, setup.log(&format!("{name}-load")))?;
    within("the load generator to be ready", READY, load.line("ready")).await??;

    let pids = [
        server.as_ref().and_then(Server::pid),
        nats.pid(),
        Some(subscriber.pid()?),
        Some(load.pid()?),
    ];
    let before = ticks(&pids)?;
    let started = Instant::now();
    load.say("go").await?;
    let ((counted, line), (acked, _)) = within("the run", size.timeout, async {
        tokio::try_join!(timed(subscriber.line("done")), timed(load.line("done")))
    })
    .await??;
    let after = ticks(&pids)?;
    let elapsed = counted.max(acked).duration_since(started);
    subscriber.finish().await;
    load.finish().await;

    let counts: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|value| value.parse().unwrap_or(0))
        .collect();
    let [_unique, duplicates, _stray, slow_consumer] = counts[..] else {
        return Err(BenchError::Protocol(format!(
            "the subscriber said {line:?}"
        )));
    };
    let per_million = 1e6 / size.total() as f64 / procs::ticks_per_second();
    let cpu = std::array::from_fn(|n| match (before[n], after[n]) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before) as f64 * per_million),
        _ => None,
    });
    Ok(Sample {
        per_second: size.total() as f64 / elapsed.as_secs_f64(),
        cpu,
        duplicates,
        slow_consumer,
    })
}

async fn timed<T>(
    future: impl Future<Output = Result<T, BenchError>>,
) -> Result<(Instant, T), BenchError> {
    let value = future.await?;
    Ok((Instant::now(), value))
}

fn ticks(pids: &[Option<u32>; 4]) -> Result<[Option<u64>; 4], BenchError> {
    let mut ticks = [None; 4];
    for (tick, pid) in ticks.iter_mut().zip(pids) {
        if let Some(pid) = pid {
            *tick = Some(procs::cpu_ticks(*pid)?);
        }
    }
    Ok(ticks)
}

/// A role of this binary run as a child process, spoken to line by line.
struct Role {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
}

impl Role {
    fn spawn(name: &'static str, args: Vec<String>, log: PathBuf) -> Result<Self, BenchError> {
        let exe = std::env::current_exe().map_err(BenchError::io("locating herd-bench"))?;
        let stderr = std::fs::File::create(&log)
            .map_err(BenchError::io(format!("creating {}", log.display())))?;
        let mut child = Command::new(exe)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(BenchError::io(format!("starting the {name}")))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(BenchError::Process(format!("the {name} has no pipes")));
        };
        Ok(Self {
            name,
            child,
            stdin: Some(stdin),
            lines: BufReader::new(stdout).lines(),
            log,
        })
    }

    fn pid(&self) -> Result<u32, BenchError> {
        self.child
            .id()
            .ok_or_else(|| BenchError::Process(format!("the {} exited", self.name)))
    }

    /// The next line, which must start with `word`.
    async fn line(&mut self, word: &str) -> Result<String, BenchError> {
        match self.lines.next_line().await {
            Ok(Some(line)) if line.split_whitespace().next() == Some(word) => Ok(line),
            Ok(Some(line)) => Err(BenchError::Protocol(format!(
                "the {} said {line:?}, not {word:?}",
                self.name
            ))),
            Ok(None) | Err(_) => Err(BenchError::Process(format!(
                "the {} ended before {word:?}; its log: {}",
                self.name,
                std::fs::read_to_string(&self.log)
                    .unwrap_or_default()
                    .trim()
            ))),
        }
    }

    async fn say(&mut self, line: &str) -> Result<(), BenchError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| BenchError::Process(format!("the {} has no stdin", self.name)))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(BenchError::io(format!("telling the {}", self.name)))?;
        stdin
            .flush()
            .await
            .map_err(BenchError::io(format!("telling the {}", self.name)))
    }

    /// Closes its stdin (it exits) and reaps it, killing it after a bound.
    async fn finish(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Min, median and max of `values` (empty: `None`).
fn spread(mut values: Vec<f64>) -> Option<[f64; 3]> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    };
    Some([values[0], median, values[n - 1]])
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    spread(values.collect()).map(|[_, median, _]| median)
}

/// The results of every case.
pub(crate) struct Results(pub(crate) Vec<(Case, Result<Vec<Sample>, BenchError>)>);

impl Results {
    fn samples(&self, case: Case) -> Result<&[Sample], String> {
        match self.0.iter().find(|(c, _)| *c == case) {
            Some((_, Ok(samples))) if !samples.is_empty() => Ok(samples),
            Some((_, Err(error))) => Err(format!("{}: {error}", case.label())),
            _ => Err(format!("{}: not measured", case.label())),
        }
    }

    fn median(&self, case: Case, figure: impl Fn(&Sample) -> Option<f64>) -> Result<f64, String> {
        let samples = self.samples(case)?;
        median(samples.iter().filter_map(figure))
            .ok_or_else(|| format!("{}: no figure", case.label()))
    }

    /// The table of every case: min / median / max of the rate and of each
    /// process's CPU seconds per million records.
    pub(crate) fn table(&self, size: IngestSize) -> Vec<String> {
        let mut header = vec!["case".to_owned(), "records/s".to_owned()];
        header.extend(PROCESSES.iter().map(|name| format!("{name} CPU s/1M")));
        header.push("all CPU s/1M".to_owned());
        let mut lines = vec![header];
        for (case, result) in &self.0 {
            let mut cells = vec![case.label().to_owned()];
            match result {
                Ok(samples) => {
                    let triple = |values: Vec<f64>, digits: usize| {
                        spread(values).map_or_else(
                            || "-".to_owned(),
                            |[min, median, max]| {
                                format!("{min:.digits$} / {median:.digits$} / {max:.digits$}")
                            },
                        )
                    };
                    cells.push(triple(samples.iter().map(|s| s.per_second).collect(), 0));
                    for n in 0..PROCESSES.len() {
                        cells.push(triple(samples.iter().filter_map(|s| s.cpu[n]).collect(), 2));
                    }
                    cells.push(triple(samples.iter().map(Sample::total_cpu).collect(), 2));
                }
                Err(_) => {
                    cells.push("FAILED".to_owned());
                    cells.extend(std::iter::repeat_n("-".to_owned(), PROCESSES.len() + 1));
                }
            }
            lines.push(cells);
        }
        let widths: Vec<usize> = (0..lines[0].len())
            .map(|column| {
                lines
                    .iter()
                    .map(|cells| cells[column].len())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let render = |cells: &[String]| {
            cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(column, (cell, width))| {
                    if column == 0 {
                        format!("{cell:width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                })
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let mut out = vec![format!(
            "ingest: {} records per run, {} run(s) per case; each cell min / median / max; \
             CPU = utime+stime seconds per 1M records",
            size.total(),
            size.repeat
        )];
        out.push(render(&lines[0]));
        out.push("-".repeat(out[1].len()));
        out.extend(lines[1..].iter().map(|cells| render(cells)));
        for (case, result) in &self.0 {
            if let Err(error) = result {
                out.push(format!("FAILED {}: {error}", case.label()));
            }
        }
        out
    }

    /// Duplicates and slow-consumer events seen, per case.
    pub(crate) fn counts(&self) -> String {
        self.0
            .iter()
            .filter_map(|(case, result)| {
                let samples = result.as_ref().ok()?;
                Some(format!(
                    "{} {}/{}",
                    case.prefix(),
                    samples.iter().map(|s| s.duplicates).sum::<u64>(),
                    samples.iter().map(|s| s.slow_consumer).sum::<u64>()
                ))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The rows of the main table: herd ÷ baseline, of medians.
    pub(crate) fn rows(&self) -> Vec<Row> {
        let pairs = [
            (ROWS[0], Case::HubFlush, Case::Forwarder, Figure::ServerCpu),
            (ROWS[1], Case::HubFlush, Case::Forwarder, Figure::Rate),
            (ROWS[2], Case::HubFlush, Case::CorePublisher, Figure::Rate),
            (
                ROWS[3],
                Case::HubJetstream,
                Case::JetstreamPublisher,
                Figure::Rate,
            ),
            (
                ROWS[4],
                Case::HubGrouped,
                Case::Forwarder,
                Figure::ServerCpu,
            ),
            (ROWS[5], Case::HubTls, Case::HubFlush, Figure::ServerCpu),
        ];
        pairs
            .into_iter()
            .map(|(label, herd, baseline, figure)| {
                match (
                    self.median(herd, |sample| figure.of(sample)),
                    self.median(baseline, |sample| figure.of(sample)),
                ) {
                    (Ok(herd), Ok(baseline)) => Row::new(
                        label,
                        figure.show(herd),
                        figure.show(baseline),
                        herd / baseline.max(f64::MIN_POSITIVE),
                    ),
                    (Err(error), _) | (_, Err(error)) => Row::failed_with(label, error),
                }
            })
            .collect()
    }
}

/// What a row of the main table compares.
#[derive(Debug, Clone, Copy)]
enum Figure {
    /// Records per second.
    Rate,
    /// CPU seconds per million records of the server process.
    ServerCpu,
}

impl Figure {
    fn of(self, sample: &Sample) -> Option<f64> {
        match self {
            Self::Rate => Some(sample.per_second),
            Self::ServerCpu => sample.cpu[0],
        }
    }

    fn show(self, value: f64) -> String {
        match self {
            Self::Rate => format!("{value:.0}"),
            Self::ServerCpu => format!("{value:.2} s"),
        }
    }
}

/// The ingest rows of the main table.
pub(crate) const ROWS: [&str; 6] = [
    "ingest CPU s/1M records: hub vs tokio forwarder",
    "ingest records/s: hub vs tokio forwarder",
    "ingest records/s: hub vs pre-encoded NATS publisher",
    "ingest records/s: hub jetstream vs JetStream publisher",
    "ingest CPU s/1M records: hub grouped vs tokio forwarder",
    "ingest CPU s/1M records: hub TLS vs plaintext (flush)",
];
