//! NATS down for a while with the hub up: a real `nats-server` (JetStream,
//! file store), a real `herd-hub` acking on JetStream `PubAck`s (the
//! default), and a real `herd-agent` whose counter plugin writes a record
//! every 5 ms. While NATS is away nothing is acked, so the agent keeps every
//! batch in its disk spool: its memory must stay bounded and flat. When the
//! same server comes back (same port, same store), every counter number must
//! reach the stream, no batch seq may be missing, and neither the agent's
//! heartbeat nor the hub may count a loss that did not happen.
//!
//! The outage lasts `HERD_SOAK_SECS` seconds (default 15). The 2-minute run:
//!
//! ```sh
//! HERD_SOAK_SECS=120 cargo test -p herd-tests --test e2e_nats_outage
//! ```
//!
//! Like every end-to-end test it runs the workspace binaries from the target
//! directory: `cargo build -p herd-agent-bin -p herd-hub-bin` first.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use herd_agent::AgentConfig;
use herd_codec::proto::Envelope;
use herd_hub::{AckMode, HubConfig, HubTlsConfig};
use herd_tests::agent::{AgentProcess, counter_plugin, quick_config};
use herd_tests::collector::{Collector, Tally, create_data_stream};
use herd_tests::counter::CounterFile;
use herd_tests::hub::HubProcess;
use herd_tests::nats::NatsServer;
use herd_tests::process::rss_bytes;
use prost::Message as _;
use tokio::time::Instant;

const AGENT: &str = "agent-1";
const COUNTER_PLUGIN: &str = "counter";
/// Bound on starting things.
const WAIT: Duration = Duration::from_secs(20);
/// The agent's resident memory must stay below this during the outage.
const RSS_BOUND: u64 = 64 * 1024 * 1024;
/// How much more the last third of the outage may peak than the first third.
const RSS_GROWTH_MARGIN: u64 = 4 * 1024 * 1024;
/// Counter numbers that must arrive after NATS is back, beyond what was
/// produced during the outage: records flow again, not only the old ones.
const FRESH: u64 = 25;

fn soak() -> Duration {
    let secs = std::env::var("HERD_SOAK_SECS")
        .ok()
        .map(|secs| {
            secs.parse::<u64>()
                .unwrap_or_else(|_| panic!("HERD_SOAK_SECS={secs:?} is not a number of seconds"))
        })
        .unwrap_or(15);
    Duration::from_secs(secs)
}

fn agent_config(hub: &HubProcess) -> AgentConfig {
    AgentConfig {
        token: hub.enrollment_token(1).expect("an enrollment token"),
        plugins: vec![counter_plugin(COUNTER_PLUGIN, 5).expect("herd-test-counter is built")],
        ..quick_config(
            vec![hub.listen_addr().to_string()],
            hub.agent_tls().expect("the hub's TLS"),
        )
    }
}

/// Counts every message on `herd.loss.>` (the client resubscribes by itself
/// after the server comes back).
async fn count_losses(client: &async_nats::Client) -> Arc<AtomicU64> {
    let mut losses = client.subscribe("herd.loss.>").await.expect("subscribe");
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Some(message) = losses.next().await {
            eprintln!("loss event: {}", String::from_utf8_lossy(&message.payload));
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    count
}

fn describe(tally: &Tally, target: u64) -> String {
    match tally.agents.get(AGENT) {
        None => "nothing from the agent".to_owned(),
        Some(agent) => {
            let missing = agent.counter_missing(COUNTER_PLUGIN, target);
            format!(
                "counter up to {} of {target}, {} missing {:?}, batches missing {:?}",
                agent.counter_max(COUNTER_PLUGIN),
                missing.len(),
                &missing[..missing.len().min(20)],
                agent.missing_batches()
            )
        }
    }
}

/// Waits until counter numbers 1..=`target` and every batch seq up to the
/// highest seen are in the stream.
async fn delivered(collector: &Collector, target: u64, within: Duration) -> Tally {
    collector
        .wait_for(
            "every counter number in the stream",
            within,
            |tally| {
                tally.agents.get(AGENT).is_some_and(|agent| {
                    agent.counter_missing(COUNTER_PLUGIN, target).is_empty()
                        && agent.missing_batches().is_empty()
                })
            },
            |tally| describe(tally, target),
        )
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_for_a_while_keeps_agent_memory_flat_and_loses_nothing() {
    let soak = soak();
    let dir = tempfile::Builder::new()
        .prefix("herd-e2e-nats-outage-")
        .tempdir()
        .unwrap();
    let mut nats = NatsServer::start().await.expect("nats-server");
    let client = nats.client().await.expect("a NATS client");
    create_data_stream(&client).await.expect("the data stream");
    let collector = Collector::start(client.clone());
    let losses = count_losses(&client).await;
    // TLS and an enrolled agent, as the hub runs by default.
    let config = HubConfig {
        ack_mode: AckMode::Jetstream,
        tls: HubTlsConfig::default(),
        ..HubConfig::for_tests(nats.url())
    };
    let mut hub = HubProcess::start_ready(config, dir.path(), WAIT)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let mut agent = AgentProcess::start(AGENT, agent_config(&hub), dir.path())
        .unwrap_or_else(|error| panic!("{error}"));
    hub.wait_agents(&[AGENT], WAIT)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let counter = CounterFile::new(&agent.plugin_state_dir(COUNTER_PLUGIN));
    delivered(&collector, FRESH, WAIT).await;

    // The outage: sample the agent's memory while it spools.
    nats.stop();
    let pid = agent.process().pid().expect("the agent runs");
    let produced_before = counter.load().unwrap();
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < soak {
        samples.push(rss_bytes(pid).expect("the agent runs through the outage"));
        // Sampling period, not synchronisation.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let produced_during = counter.load().unwrap() - produced_before;
    // The spool (read-only, as `herd-agent spool verify` does) holds what
    // the hub could not ack meanwhile.
    let unacked = herd_agent::verify_spool(agent.config())
        .expect("the spool is readable")
        .unacked_records;
    nats.restart()
        .await
        .expect("nats-server back on its port and store");
    hub.wait_ready(WAIT)
        .await
        .unwrap_or_else(|error| panic!("{error}"));

    let third = samples.len() / 3;
    let peak = |part: &[u64]| part.iter().copied().max().unwrap_or(0);
    let (first, last) = (
        peak(&samples[..third]),
        peak(&samples[samples.len() - third..]),
    );
    let max = peak(&samples);
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    eprintln!(
        "agent RSS over a {soak:?} NATS outage ({} samples, {produced_during} records in \
         {unacked} unacked batches spooled): min {:.1} MiB, max {:.1} MiB, first-third peak \
         {:.1} MiB, last-third peak {:.1} MiB",
        samples.len(),
        mib(samples.iter().copied().min().unwrap_or(0)),
        mib(max),
        mib(first),
        mib(last),
    );
    assert!(
        produced_during > 0,
        "the plugin kept producing into the spool"
    );
    // A batch at least every flush interval (50 ms) while records come.
    assert!(
        unacked >= 10 * soak.as_secs(),
        "only {unacked} batches waited unacked through the outage"
    );
    assert!(
        max < RSS_BOUND,
        "agent RSS {:.1} MiB over the {:.0} MiB bound",
        mib(max),
        mib(RSS_BOUND)
    );
    assert!(
        last <= first + RSS_GROWTH_MARGIN,
        "agent RSS keeps growing: first third peaked at {:.1} MiB, last third at {:.1} MiB",
        mib(first),
        mib(last)
    );

    // Everything spooled arrives, and the flow goes on.
    let target = counter
        .load()
        .unwrap()
        .max(produced_before + produced_during + FRESH);
    let drained = Instant::now();
    let tally = delivered(&collector, target, WAIT + soak).await;
    eprintln!(
        "{target} counter numbers delivered {:?} after NATS came back",
        drained.elapsed()
    );
    let agent_tally = &tally.agents[AGENT];
    assert_eq!(tally.malformed, 0, "malformed messages in the stream");
    assert_eq!(tally.duplicate_ids, 0, "a Nats-Msg-Id stored twice");
    assert!(
        agent_tally.gapped_batches().is_empty(),
        "batches with records missing: {:?}",
        agent_tally.gapped_batches()
    );

    // No false loss: the agent's heartbeat counts no drop, the hub no gap.
    let mut heartbeats = client
        .subscribe(format!("herd.data.{AGENT}.1000"))
        .await
        .expect("subscribe to heartbeats");
    let message = tokio::time::timeout(WAIT, heartbeats.next())
        .await
        .expect("a heartbeat after the outage")
        .expect("the subscription is open");
    let heartbeat = Envelope::decode(message.payload)
        .expect("an envelope")
        .record
        .expect("a record");
    for field in [
        "agent.dropped_batches",
        "agent.dropped_bytes",
        "agent.oversized_records",
        "agent.corrupt_bytes_cut",
    ] {
        assert_eq!(
            heartbeat.fields[field], "0",
            "{field}: {:?}",
            heartbeat.fields
        );
    }
    assert_eq!(
        heartbeat.fields["agent.spool_error"], "",
        "{:?}",
        heartbeat.fields
    );
    assert_eq!(
        losses.load(Ordering::SeqCst),
        0,
        "the hub published loss events"
    );

    let mut killed = agent.process().kill();
    killed.extend(hub.kill());
    nats.stop();
    herd_tests::process::wait_gone(&killed, Duration::from_secs(5))
        .unwrap_or_else(|error| panic!("processes left behind: {error}"));
}
