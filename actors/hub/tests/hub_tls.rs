//! TLS on the agent link: the hub's own CA, an operator's CA, agents that
//! pin the CA, and peers that speak the wrong protocol.

mod hub_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use herd_codec::proto::Batch;
use herd_hub::{AgentAuth, Hub, HubConfig, HubTlsConfig, TLS_DIR};
use herd_tests::nats::NatsServer;
use herd_tests::script::poll_until;
use herd_tls::{CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority, Fingerprint, HubTrust};
use hub_support::{ScriptedAgent, hello, hub_with, within};

/// `config` with TLS as the hub runs by default, its state in `state`;
/// agents identified by the fleet token (enrollment has its own suite).
fn tls_on(config: &mut HubConfig, state: &Path) {
    config.tls = HubTlsConfig {
        agent_auth: AgentAuth::Token,
        ..HubTlsConfig::default()
    };
    config.state_dir = state.to_owned();
}

fn counted(hub: &Hub, outcome: &str) -> bool {
    hub.metrics().render().contains(&format!(
        r#"herd_hub_handshakes_total{{outcome="{outcome}"}} 1"#
    ))
}

async fn tls_agent(hub: &Hub, trust: &HubTrust, agent_id: &str) -> ScriptedAgent {
    let agent = within(
        "the TLS handshake",
        ScriptedAgent::try_connect_tls(hub.listen_addr(), trust),
    )
    .await
    .expect("the TLS handshake succeeds");
    let (agent, welcome) = within("the Welcome", agent.try_hello(hello(agent_id, "secret")))
        .await
        .expect("a Welcome");
    assert!(welcome.ok, "{}", welcome.message);
    agent
}

#[actix::test]
async fn an_agent_pinning_the_hubs_own_ca_is_served_and_the_ca_outlives_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let (nats, hub) = hub_with(|config| tls_on(config, state.path())).await;
    let fingerprint = hub.ca_fingerprint().expect("a CA fingerprint");
    let dir = state.path().join(TLS_DIR);
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
    assert_eq!(
        Fingerprint::of_pem_file(&dir.join(CA_CERT_FILE)).unwrap(),
        fingerprint
    );

    let trust = HubTrust::Fingerprint(fingerprint);
    let mut agent = tls_agent(&hub, &trust, "web-1").await;
    agent
        .send_acked(Batch {
            seq: 1,
            records: vec![],
        })
        .await;
    assert!(counted(&hub, "ok"));
    hub.shutdown().await;

    // The next start finds the same CA: agents keep trusting it.
    let mut config = HubConfig::for_tests(nats.url());
    config.tokens = vec!["secret".into()];
    tls_on(&mut config, state.path());
    let hub = within("hub restart", Hub::start(config)).await.unwrap();
    assert_eq!(hub.ca_fingerprint(), Some(fingerprint));
    tls_agent(&hub, &trust, "web-1").await;
    hub.shutdown().await;
}

#[actix::test]
async fn an_agent_pinning_another_ca_does_not_connect_and_the_failure_is_counted() {
    let (state, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_nats, hub) = hub_with(|config| tls_on(config, state.path())).await;
    let (stranger, _) = CertificateAuthority::load_or_create(other.path()).unwrap();
    let refused = within(
        "the TLS handshake",
        ScriptedAgent::try_connect_tls(
            hub.listen_addr(),
            &HubTrust::Fingerprint(stranger.fingerprint()),
        ),
    )
    .await
    .expect_err("a hub with another CA is not trusted");
    assert!(
        refused.to_string().contains("not the pinned one"),
        "{refused}"
    );
    poll_until("the failed handshake counted", || {
        counted(&hub, "tls_failed")
    })
    .await;
    hub.shutdown().await;
}

#[actix::test]
async fn a_plaintext_agent_on_the_tls_port_is_told_why_in_a_welcome_it_can_read() {
    let state = tempfile::tempdir().unwrap();
    let (_nats, hub) = hub_with(|config| tls_on(config, state.path())).await;
    let (mut agent, welcome) =
        ScriptedAgent::handshake(hub.listen_addr(), hello("old-agent", "secret")).await;
    assert!(!welcome.ok);
    assert!(
        welcome.message.contains("agent link is TLS")
            && welcome.message.contains("tls.ca_fingerprint"),
        "{}",
        welcome.message
    );
    assert!(agent.until_closed().await.is_empty());
    drop(agent);
    poll_until("the plaintext agent counted", || counted(&hub, "plaintext")).await;
    hub.shutdown().await;
}

#[actix::test]
async fn a_tls_agent_on_a_plaintext_hub_is_recognised_and_counted() {
    let state = tempfile::tempdir().unwrap();
    let (_nats, hub) = hub_with(|_| {}).await;
    let (ca, _) = CertificateAuthority::load_or_create(state.path()).unwrap();
    let refused = within(
        "the TLS handshake",
        ScriptedAgent::try_connect_tls(hub.listen_addr(), &HubTrust::Fingerprint(ca.fingerprint())),
    )
    .await;
    assert!(
        refused.is_err(),
        "a plaintext hub cannot complete a TLS handshake"
    );
    poll_until("the TLS client counted", || {
        counted(&hub, "tls_on_plaintext")
    })
    .await;
    assert_eq!(hub.ca_fingerprint(), None);
    hub.shutdown().await;
}

#[actix::test]
async fn an_operators_ca_signs_the_hubs_certificate_and_no_ca_of_its_own_is_made() {
    let (state, operator) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ca, _) = CertificateAuthority::load_or_create(operator.path()).unwrap();
    let (_nats, hub) = hub_with(|config| {
        tls_on(config, state.path());
        config.tls.ca_cert = Some(operator.path().join(CA_CERT_FILE));
        config.tls.ca_key = Some(operator.path().join(CA_KEY_FILE));
    })
    .await;
    assert_eq!(hub.ca_fingerprint(), Some(ca.fingerprint()));
    assert!(!state.path().join(TLS_DIR).exists());
    tls_agent(
        &hub,
        &HubTrust::CaFile(operator.path().join(CA_CERT_FILE)),
        "web-2",
    )
    .await;
    hub.shutdown().await;
}

#[actix::test]
async fn a_reload_takes_up_new_certificates_and_sessions_that_are_up_keep_going() {
    let (state, first, second) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (old_ca, _) = CertificateAuthority::load_or_create(first.path()).unwrap();
    let (new_ca, _) = CertificateAuthority::load_or_create(second.path()).unwrap();
    let (cert, key) = (state.path().join("ca.pem"), state.path().join("ca.key"));
    let install = |from: &Path| {
        std::fs::copy(from.join(CA_CERT_FILE), &cert).unwrap();
        std::fs::copy(from.join(CA_KEY_FILE), &key).unwrap();
    };
    install(first.path());
    let (_nats, hub) = hub_with(|config| {
        tls_on(config, state.path());
        config.tls.ca_cert = Some(cert.clone());
        config.tls.ca_key = Some(key.clone());
    })
    .await;
    let (old, new) = (
        HubTrust::Fingerprint(old_ca.fingerprint()),
        HubTrust::Fingerprint(new_ca.fingerprint()),
    );
    let mut up = tls_agent(&hub, &old, "web-1").await;

    // An unreadable file: the hub says why and keeps what it had.
    std::fs::write(&cert, "not a certificate").unwrap();
    let error = hub.reload_tls().expect_err("nothing usable to reload");
    assert!(error.to_string().contains("ca.pem"), "{error}");
    tls_agent(&hub, &old, "web-2").await;

    install(second.path());
    hub.reload_tls().expect("the new CA is taken up");
    assert_eq!(hub.ca_fingerprint(), Some(new_ca.fingerprint()));
    tls_agent(&hub, &new, "web-3").await;
    let refused = within(
        "the TLS handshake",
        ScriptedAgent::try_connect_tls(hub.listen_addr(), &old),
    )
    .await;
    assert!(
        refused.is_err(),
        "the old CA still signs the hub's certificate"
    );
    // The session from before the reload goes on.
    up.send_acked(Batch {
        seq: 1,
        records: vec![],
    })
    .await;
    hub.shutdown().await;
}

#[actix::test]
async fn unusable_tls_settings_stop_the_start_with_the_reason() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let state = tempfile::tempdir().unwrap();
    let mut config = HubConfig::for_tests(nats.url());
    tls_on(&mut config, state.path());
    config.tls.ca_cert = Some(state.path().join("missing.pem"));
    config.tls.ca_key = Some(state.path().join("missing.key"));
    let error = Hub::start(config).await.expect_err("no CA to read");
    let message = error.to_string();
    assert!(
        message.contains("agent link TLS") && message.contains("missing.pem"),
        "{message}"
    );

    let mut config = HubConfig::for_tests(nats.url());
    config.tls.cert = Some(state.path().join("hub.pem"));
    let error = Hub::start(config).await.expect_err("half a pair");
    assert!(
        error
            .to_string()
            .contains("`tls.cert` is set but `tls.key` is not"),
        "{error}"
    );
}
