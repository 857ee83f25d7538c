//! TLS between the real binaries: an agent that pins the fingerprint of the
//! CA a `herd-hub` created for itself enrolls with a token from `herd-hub
//! token create` and is served over mutual TLS, keeps its certificate across
//! restarts and renews it while records flow; agents configured the wrong
//! way are not served and their log says why.
//!
//! Like every end-to-end test it runs the workspace binaries from the target
//! directory: `cargo build -p herd-agent-bin -p herd-hub-bin` first.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use herd_agent::{AgentConfig, AgentTlsConfig};
use herd_hub::{AckMode, HubConfig, HubTlsConfig, MIN_AGENT_CERT_VALIDITY_SECS};
use herd_tests::agent::{AgentProcess, counter_plugin, quick_config};
use herd_tests::collector::{Collector, create_data_stream};
use herd_tests::counter::CounterFile;
use herd_tests::hub::HubProcess;
use herd_tests::nats::NatsServer;
use herd_tests::script::poll_until;
use herd_tls::CertificateAuthority;

const WAIT: Duration = Duration::from_secs(20);

fn agent_config(hub: &HubProcess, tls: AgentTlsConfig) -> AgentConfig {
    quick_config(vec![hub.listen_addr().to_string()], tls)
}

async fn hub(nats: &NatsServer, tls: HubTlsConfig, dir: &Path) -> HubProcess {
    let config = HubConfig {
        tls,
        ..HubConfig::for_tests(nats.url())
    };
    HubProcess::start_ready(config, dir, WAIT)
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Waits until the agent's log holds `text`.
async fn logged(agent: &mut AgentProcess, text: &str) {
    let log = agent.process().log_path().to_owned();
    poll_until(&format!("{:?} in {}", text, log.display()), || {
        std::fs::read_to_string(&log).is_ok_and(|log| log.contains(text))
    })
    .await;
}

#[tokio::test]
async fn only_an_agent_pinning_the_hubs_own_ca_is_served_and_the_others_say_why() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let dir = tempfile::tempdir().unwrap();
    let mut hub = hub(&nats, HubTlsConfig::default(), dir.path()).await;

    let pinned = AgentConfig {
        token: hub.enrollment_token(1).expect("an enrollment token"),
        ..agent_config(&hub, hub.agent_tls().expect("the hub's CA"))
    };
    assert!(pinned.tls.ca_fingerprint.is_some());
    let _served = AgentProcess::start("pinned", pinned, dir.path()).unwrap();
    hub.wait_agents(&["pinned"], WAIT)
        .await
        .unwrap_or_else(|error| panic!("{error}"));

    let other = tempfile::tempdir().unwrap();
    let (stranger, _) = CertificateAuthority::load_or_create(other.path()).unwrap();
    let wrong_pin = AgentTlsConfig {
        ca_fingerprint: Some(stranger.fingerprint().to_string()),
        ..AgentTlsConfig::default()
    };
    let mut wrong =
        AgentProcess::start("wrong-pin", agent_config(&hub, wrong_pin), dir.path()).unwrap();
    logged(&mut wrong, "the hub's CA is not the pinned one").await;

    let mut plaintext = AgentProcess::start(
        "plaintext",
        agent_config(&hub, AgentTlsConfig::insecure()),
        dir.path(),
    )
    .unwrap();
    logged(
        &mut plaintext,
        "hub refused the agent: this hub's agent link is TLS",
    )
    .await;

    // Each has tried at least once by now; only the pinned agent is served.
    hub.wait_agents(&["pinned"], WAIT)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let log = std::fs::read_to_string(hub.process().log_path()).unwrap();
    assert!(
        log.contains("agents trust the hub by this CA fingerprint"),
        "the hub logs the fingerprint"
    );
}

#[tokio::test]
async fn a_tls_agent_facing_a_plaintext_hub_asks_whether_the_hub_is_insecure() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(
        &nats,
        HubTlsConfig {
            insecure: true,
            ..HubTlsConfig::default()
        },
        dir.path(),
    )
    .await;
    let other = tempfile::tempdir().unwrap();
    let (ca, _) = CertificateAuthority::load_or_create(other.path()).unwrap();
    let tls = AgentTlsConfig {
        ca_fingerprint: Some(ca.fingerprint().to_string()),
        ..AgentTlsConfig::default()
    };
    let mut agent = AgentProcess::start("tls-agent", agent_config(&hub, tls), dir.path()).unwrap();
    logged(&mut agent, "is it set to tls.insecure = true?").await;
    assert!(hub.agents().await.unwrap().is_empty());
}

/// Waits until counter numbers 1..=`target` from `agent` are in the stream.
async fn delivered(collector: &Collector, agent: &str, target: u64) {
    collector
        .wait_for(
            "every counter number in the stream",
            WAIT,
            |tally| {
                tally.agents.get(agent).is_some_and(|agent| {
                    agent.counter_missing(COUNTER, target).is_empty()
                        && agent.missing_batches().is_empty()
                })
            },
            |tally| {
                format!(
                    "{:?}",
                    tally.agents.get(agent).map(|a| a.counter_max(COUNTER))
                )
            },
        )
        .await
        .unwrap_or_else(|error| panic!("{error}"));
}

const COUNTER: &str = "counter";
/// Renewal comes two thirds into a 30 s certificate.
const RENEWAL_WAIT: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_agent_keeps_its_certificate_and_renews_it_while_losing_no_record() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let client = nats.client().await.expect("a NATS client");
    create_data_stream(&client).await.expect("the data stream");
    let collector = Collector::start(client);
    let dir = tempfile::tempdir().unwrap();
    let config = HubConfig {
        ack_mode: AckMode::Jetstream,
        tls: HubTlsConfig {
            agent_cert_validity_secs: MIN_AGENT_CERT_VALIDITY_SECS,
            ..HubTlsConfig::default()
        },
        ..HubConfig::for_tests(nats.url())
    };
    let mut hub = HubProcess::start_ready(config, dir.path(), WAIT)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let config = AgentConfig {
        token: hub.enrollment_token(1).expect("an enrollment token"),
        plugins: vec![counter_plugin(COUNTER, 20).expect("herd-test-counter is built")],
        ..agent_config(&hub, hub.agent_tls().expect("the hub's CA"))
    };
    let mut agent = AgentProcess::start("enrolled", config.clone(), dir.path()).unwrap();
    hub.wait_agents(&["enrolled"], WAIT)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let identity = agent.config().state_dir.join("identity.pem");
    let mode = std::fs::metadata(&identity)
        .expect("identity.pem")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the agent's key is readable by others");
    let counter = CounterFile::new(&agent.plugin_state_dir(COUNTER));

    // Restarted without its token (spent: it allowed one enrollment), the
    // agent connects with its certificate.
    agent.process().kill();
    let without_token = AgentConfig {
        token: String::new(),
        ..config
    };
    let mut agent = AgentProcess::start("enrolled", without_token, dir.path()).unwrap();
    hub.wait_agents(&["enrolled"], WAIT)
        .await
        .unwrap_or_else(|error| panic!("{error}"));

    // Two thirds into its 30 s it renews on the live connection, records flowing.
    let renewed = r#"herd_hub_certificate_renewals_total{outcome="issued"} 1"#;
    tokio::time::timeout(RENEWAL_WAIT, async {
        while !hub
            .admin_get("/metrics")
            .await
            .is_ok_and(|(_, metrics)| metrics.contains(renewed))
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the certificate renewed within its validity");
    logged(&mut agent, "certificate stored").await;
    let produced = counter.load().expect("the counter's state");
    delivered(&collector, "enrolled", produced).await;
    let log = std::fs::read_to_string(hub.process().log_path()).unwrap();
    assert_eq!(log.matches("agent enrolled").count(), 1, "enrolled once");
}
