//! TLS between the real binaries: an agent that pins the fingerprint of the
//! CA a `herd-hub` created for itself is served over TLS; agents configured
//! the wrong way are not served and their log says why.
//!
//! Like every end-to-end test it runs the workspace binaries from the target
//! directory: `cargo build -p herd-agent-bin -p herd-hub-bin` first.

use std::path::Path;
use std::time::Duration;

use herd_agent::{AgentConfig, AgentTlsConfig, ReconnectConfig};
use herd_hub::{HubConfig, HubTlsConfig};
use herd_tests::agent::AgentProcess;
use herd_tests::hub::HubProcess;
use herd_tests::nats::NatsServer;
use herd_tests::script::poll_until;
use herd_tls::CertificateAuthority;

const WAIT: Duration = Duration::from_secs(20);

fn agent_config(hub: &HubProcess, tls: AgentTlsConfig) -> AgentConfig {
    AgentConfig {
        hubs: vec![hub.listen_addr().to_string()],
        tls,
        heartbeat_interval_secs: 1,
        connect_timeout_ms: 1_000,
        handshake_timeout_ms: 2_000,
        shutdown_timeout_ms: 500,
        reconnect: ReconnectConfig {
            min_backoff_ms: 50,
            max_backoff_ms: 500,
            reset_after_ms: 1_000,
        },
        ..AgentConfig::default()
    }
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

    let pinned = agent_config(&hub, hub.agent_tls().expect("the hub's CA"));
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
