//! Two real `herd-hub`s on one NATS, sharing a CA, and real agents that
//! list both: when one hub is killed (-9), its agents are back on the other
//! within their reconnect backoff, the fleet-wide presence claim moves with
//! them, tasks reach them there, and no record is lost or held twice.
//!
//! Like every end-to-end test it runs the workspace binaries from the target
//! directory: `cargo build -p herd-agent-bin -p herd-hub-bin` first.

use std::time::Duration;

use herd_agent::{AgentConfig, AgentTlsConfig};
use herd_codec::proto::{Task, TaskResult, TaskStatus};
use herd_hub::{AGENTS_BUCKET, AckMode, AgentClaim, HubConfig, HubTlsConfig};
use herd_tests::agent::{AgentProcess, counter_plugin, quick_config};
use herd_tests::collector::{Collector, create_data_stream};
use herd_tests::counter::CounterFile;
use herd_tests::hub::HubProcess;
use herd_tests::nats::NatsServer;
use herd_tests::script::poll_until;
use herd_tls::{CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority};
use prost::Message as _;

const WAIT: Duration = Duration::from_secs(20);
const COUNTER: &str = "counter";
const AGENTS: [&str; 3] = ["fleet-1", "fleet-2", "fleet-3"];
/// Counter records each agent sends through hub A before it is killed.
const RECORDS_BEFORE: u64 = 50;

/// Waits until the claim of `agent_id` names `hub_id`.
async fn claimed_by(store: &async_nats::jetstream::kv::Store, agent_id: &str, hub_id: &str) {
    tokio::time::timeout(WAIT, async {
        loop {
            let claim = store
                .get(agent_id)
                .await
                .ok()
                .flatten()
                .and_then(|value| serde_json::from_slice::<AgentClaim>(&value).ok());
            if claim.is_some_and(|claim| claim.hub == hub_id) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{agent_id} claimed by {hub_id} within {WAIT:?}"));
}

/// Waits until every counter has produced `count` records.
async fn produced_at_least(counters: &[CounterFile], count: u64) {
    poll_until(&format!("every counter at {count}"), || {
        counters
            .iter()
            .all(|counter| counter.load().is_ok_and(|n| n >= count))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_hub_is_killed_its_agents_serve_from_the_other_with_nothing_lost() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let client = nats.client().await.expect("a NATS client");
    create_data_stream(&client).await.expect("the data stream");
    let collector = Collector::start(client.clone());
    let dir = tempfile::tempdir().unwrap();
    // One CA for both hubs: an agent enrolled on one is known to the other.
    let ca_dir = dir.path().join("ca");
    let (ca, _) = CertificateAuthority::load_or_create(&ca_dir).unwrap();
    let hub_config = |hub_id: &str| HubConfig {
        hub_id: hub_id.to_owned(),
        ack_mode: AckMode::Jetstream,
        tls: HubTlsConfig {
            ca_cert: Some(ca_dir.join(CA_CERT_FILE)),
            ca_key: Some(ca_dir.join(CA_KEY_FILE)),
            ..HubTlsConfig::default()
        },
        ..HubConfig::for_tests(nats.url())
    };
    let start = |hub_id: &str| {
        let (config, home) = (hub_config(hub_id), dir.path().join(hub_id));
        std::fs::create_dir_all(&home).unwrap();
        async move { HubProcess::start_ready(config, &home, WAIT).await }
    };
    let mut first = start("hub-a")
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let second = start("hub-b")
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let token = first.enrollment_token(AGENTS.len() as u32).unwrap();
    let hubs = vec![
        first.listen_addr().to_string(),
        second.listen_addr().to_string(),
    ];
    let tls = AgentTlsConfig {
        ca_fingerprint: Some(ca.fingerprint().to_string()),
        ..AgentTlsConfig::default()
    };
    let config = AgentConfig {
        token,
        plugins: vec![counter_plugin(COUNTER, 10).expect("herd-test-counter is built")],
        ..quick_config(hubs, tls)
    };
    let agents: Vec<AgentProcess> = AGENTS
        .iter()
        .map(|id| AgentProcess::start(id, config.clone(), dir.path()).unwrap())
        .collect();
    first
        .wait_agents(&AGENTS, WAIT)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let jetstream = async_nats::jetstream::new(client.clone());
    let store = jetstream
        .get_key_value(AGENTS_BUCKET)
        .await
        .expect("the presence bucket");
    for id in AGENTS {
        claimed_by(&store, id, "hub-a").await;
    }

    // Records flowing through hub A, and then through hub B after the kill.
    let counters: Vec<CounterFile> = agents
        .iter()
        .map(|agent| CounterFile::new(&agent.plugin_state_dir(COUNTER)))
        .collect();
    produced_at_least(&counters, RECORDS_BEFORE).await;
    first.kill();
    let moved = second
        .wait_agents(&AGENTS, WAIT)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(moved.len(), AGENTS.len(), "one session each: {moved:?}");
    for id in AGENTS {
        claimed_by(&store, id, "hub-b").await;
    }
    // A task reaches an agent through the hub that holds it now.
    let task = Task {
        id: "after-failover".into(),
        data_type: herd_codec::data_type::SHUTDOWN + 1,
        target: "agent".into(),
        timeout_ms: 5_000,
        ..Task::default()
    };
    let reply = tokio::time::timeout(
        WAIT,
        client.request(
            format!("herd.cmd.{}", AGENTS[0]),
            task.encode_to_vec().into(),
        ),
    )
    .await
    .expect("a reply in time")
    .expect("a hub serves the agent");
    let result = TaskResult::decode(reply.payload).expect("a TaskResult");
    assert_ne!(result.status(), TaskStatus::Offline, "{result:?}");
    assert_eq!(result.source, "agent", "{result:?}");

    produced_at_least(&counters, RECORDS_BEFORE * 2).await;
    // Every number each counter produced reaches the stream, once.
    for agent in &agents {
        let produced = CounterFile::new(&agent.plugin_state_dir(COUNTER))
            .load()
            .expect("the counter's state");
        collector
            .wait_for(
                "every counter number in the stream",
                WAIT,
                |tally| {
                    tally.agents.get(agent.id()).is_some_and(|tally| {
                        tally.counter_missing(COUNTER, produced).is_empty()
                            && tally.missing_batches().is_empty()
                    })
                },
                |tally| {
                    format!(
                        "{:?}",
                        tally.agents.get(agent.id()).map(|a| a.counter_max(COUNTER))
                    )
                },
            )
            .await
            .unwrap_or_else(|error| panic!("{error}"));
    }
}
