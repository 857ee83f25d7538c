//! Enrollment and mutual TLS: an agent enrolls with a token and from then on
//! its certificate is its identity; tokens run out and expire; revocation
//! closes the live session and refuses the next handshake; renewal happens
//! on the live connection.

mod hub_support;

use std::path::Path;
use std::time::Duration;

use herd_codec::proto::hub_message::Kind;
use herd_codec::proto::{Batch, CertificateRequest, CloseReason};
use herd_hub::{AgentAuth, Hub, HubConfig, HubTlsConfig, TLS_DIR};
use herd_tests::nats::NatsServer;
use herd_tls::{AgentKey, CertificateAuthority, EnrolledIdentity};
use hub_support::{
    ScriptedAgent, enroll, enrolling, hello, poll_until, trust, welcome_for, within,
};

/// A hub with TLS and certificate identities, as it runs by default.
async fn hub(state: &Path) -> (NatsServer, Hub) {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let hub = start(&nats, state, HubTlsConfig::default()).await;
    (nats, hub)
}

async fn start(nats: &NatsServer, state: &Path, tls: HubTlsConfig) -> Hub {
    let config = HubConfig {
        tls,
        state_dir: state.to_owned(),
        ..HubConfig::for_tests(nats.url())
    };
    assert_eq!(config.agent_auth(), AgentAuth::Certificate);
    within("hub start", Hub::start(config))
        .await
        .expect("hub starts")
}

async fn token(hub: &Hub, uses: u32, ttl: Duration) -> String {
    herd_hub::enrollment::create_token(hub.nats().jetstream(), ttl, uses, "test")
        .await
        .expect("token created")
        .token
}

const HOUR: Duration = Duration::from_secs(3600);

fn counted(hub: &Hub, outcome: &str, times: u32) -> bool {
    hub.metrics().render().contains(&format!(
        r#"herd_hub_handshakes_total{{outcome="{outcome}"}} {times}"#
    ))
}

#[actix::test]
async fn an_agent_enrolls_with_a_token_and_then_its_certificate_is_its_identity() {
    let state = tempfile::tempdir().unwrap();
    let (_nats, hub) = hub(state.path()).await;
    let token = token(&hub, 1, HOUR).await;
    let (identity, mut first) = enroll(&hub, "web-1", &token).await;
    // The enrolling session is a session like any other.
    first
        .send_acked(Batch {
            seq: 1,
            records: vec![],
        })
        .await;
    drop(first);

    // With its certificate it needs no token, and the id it declares does not count.
    let (mut agent, welcome) = welcome_for(&hub, Some(&identity), hello("", "")).await;
    assert!(welcome.ok, "{}", welcome.message);
    assert_eq!(welcome.agent_id, "web-1");
    assert!(welcome.certificate.is_empty(), "no new certificate");
    agent
        .send_acked(Batch {
            seq: 2,
            records: vec![],
        })
        .await;
    assert!(counted(&hub, "ok", 2));
    hub.shutdown().await;
}

#[actix::test]
async fn a_certificate_cannot_claim_another_agents_id() {
    let state = tempfile::tempdir().unwrap();
    let (_nats, hub) = hub(state.path()).await;
    let token = token(&hub, 2, HOUR).await;
    let (web, _) = enroll(&hub, "web-1", &token).await;
    let (db, _) = enroll(&hub, "db-1", &token).await;
    let (mut db_session, welcome) = welcome_for(&hub, Some(&db), hello("db-1", "")).await;
    assert!(welcome.ok, "{}", welcome.message);

    // web-1's certificate, declaring db-1: it is web-1, db-1 stays connected.
    let (_web_session, welcome) = welcome_for(&hub, Some(&web), hello("db-1", "")).await;
    assert!(welcome.ok, "{}", welcome.message);
    assert_eq!(welcome.agent_id, "web-1");
    db_session
        .send_acked(Batch {
            seq: 1,
            records: vec![],
        })
        .await;
    let mut ids: Vec<String> = hub.agents().await.into_iter().map(|a| a.agent_id).collect();
    ids.sort();
    assert_eq!(ids, ["db-1", "web-1"]);

    // Nor can a token holder enroll an id that is someone's already.
    let other = self::token(&hub, 1, HOUR).await;
    let (hello, _) = enrolling("db-1", &other);
    let (_, welcome) = welcome_for(&hub, None, hello).await;
    assert!(!welcome.ok);
    assert!(
        welcome.message.contains("enrolled already"),
        "{}",
        welcome.message
    );
    // ... and that refusal spent nothing: the token still enrolls a new id.
    let (identity, _) = enroll(&hub, "", &other).await;
    assert_eq!(identity.certificate().agent_id.len(), 32);
    hub.shutdown().await;
}

#[actix::test]
async fn tokens_are_refused_past_their_uses_after_their_ttl_and_when_unknown() {
    let state = tempfile::tempdir().unwrap();
    let (_nats, hub) = hub(state.path()).await;
    let once = token(&hub, 1, HOUR).await;
    enroll(&hub, "first", &once).await;
    let expired = token(&hub, 5, Duration::ZERO).await;
    for (token, id, refusal) in [
        (once.as_str(), "second", "used 1 times"),
        (expired.as_str(), "third", "expired"),
        ("herd-not-a-token", "fourth", "not valid"),
    ] {
        let (hello, _) = enrolling(id, token);
        let (_, welcome) = welcome_for(&hub, None, hello).await;
        assert!(!welcome.ok, "{id} enrolled");
        assert!(welcome.message.contains(refusal), "{}", welcome.message);
        assert!(welcome.certificate.is_empty());
    }
    assert!(counted(&hub, "enroll_refused", 3));
    // Without a certificate and without asking to enroll, the agent is told how.
    let (_, welcome) = welcome_for(&hub, None, hello("fifth", "")).await;
    assert!(!welcome.ok);
    assert!(
        welcome.message.contains("herd-hub token create"),
        "{}",
        welcome.message
    );
    hub.shutdown().await;
}

#[actix::test]
async fn revocation_closes_the_live_session_refuses_the_next_and_frees_the_id() {
    let state = tempfile::tempdir().unwrap();
    let (_nats, hub) = hub(state.path()).await;
    let token = token(&hub, 2, HOUR).await;
    let (identity, _) = enroll(&hub, "web-1", &token).await;
    let (mut session, welcome) = welcome_for(&hub, Some(&identity), hello("", "")).await;
    assert!(welcome.ok, "{}", welcome.message);

    herd_hub::enrollment::revoke_agent(hub.nats().jetstream(), "web-1", "host decommissioned")
        .await
        .expect("revoked");
    let goodbye = hub_support::goodbye(&mut session).await;
    assert_eq!(goodbye.reason(), CloseReason::Revoked);
    assert!(
        goodbye.message.contains("host decommissioned"),
        "{}",
        goodbye.message
    );
    let (_, welcome) = welcome_for(&hub, Some(&identity), hello("", "")).await;
    assert!(!welcome.ok);
    assert!(welcome.message.contains("revoked"), "{}", welcome.message);

    // The id is free again: enrolled anew, the new certificate works.
    let (renewed, _) = enroll(&hub, "web-1", &token).await;
    let (_, welcome) = welcome_for(&hub, Some(&renewed), hello("", "")).await;
    assert!(welcome.ok, "{}", welcome.message);
    hub.shutdown().await;
}

#[actix::test]
async fn certificates_of_another_ca_or_past_their_time_do_not_get_in() {
    let (state, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_nats, hub) = hub(state.path()).await;
    let key = AgentKey::generate().unwrap();
    let (stranger, _) = CertificateAuthority::load_or_create(other.path()).unwrap();
    let foreign = stranger
        .issue_agent(&key.request().unwrap(), "web-1", HOUR)
        .unwrap();
    let foreign = EnrolledIdentity::new(key, foreign.to_vec()).unwrap();
    assert!(refused_in_the_handshake(&hub, &foreign).await);

    // The hub's own CA, a certificate that expires at once.
    let (own, _) = CertificateAuthority::load_or_create(&state.path().join(TLS_DIR)).unwrap();
    let key = AgentKey::generate().unwrap();
    let expiring = own
        .issue_agent(&key.request().unwrap(), "web-1", Duration::ZERO)
        .unwrap();
    let expiring = EnrolledIdentity::new(key, expiring.to_vec()).unwrap();
    let mut expired = false;
    for _ in 0..30 {
        if refused_in_the_handshake(&hub, &expiring).await {
            expired = true;
            break;
        }
        // Certificates carry whole seconds: the refusal comes within two.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(expired, "an expired certificate was accepted");
    poll_until("the failures counted", || {
        hub.metrics()
            .render()
            .contains(r#"herd_hub_handshakes_total{outcome="tls_failed"}"#)
    })
    .await;
    hub.shutdown().await;
}

/// Whether the hub refuses `identity` (TLS 1.3 reports a refused client
/// certificate after the client's side finished: the session then ends
/// without a Welcome).
async fn refused_in_the_handshake(hub: &Hub, identity: &EnrolledIdentity) -> bool {
    let config = herd_tls::client_config_with_identity(&trust(hub), Some(identity.identity()))
        .expect("client config");
    let Ok(agent) = within(
        "the TLS handshake",
        ScriptedAgent::try_connect_tls_with(hub.listen_addr(), config),
    )
    .await
    else {
        return true;
    };
    within("the answer", agent.try_hello(hello("", "")))
        .await
        .is_err()
}

#[actix::test]
async fn a_certificate_is_renewed_on_the_live_connection() {
    let state = tempfile::tempdir().unwrap();
    let (_nats, hub) = hub(state.path()).await;
    let token = token(&hub, 1, HOUR).await;
    let (identity, _) = enroll(&hub, "web-1", &token).await;
    let (mut session, welcome) = welcome_for(&hub, Some(&identity), hello("", "")).await;
    assert!(welcome.ok, "{}", welcome.message);

    let key = AgentKey::generate().unwrap();
    session
        .send(CertificateRequest {
            csr: key.request().unwrap().into(),
        })
        .await;
    let issued = match within("the renewal", session.expect()).await {
        Kind::IssuedCertificate(issued) => issued,
        other => panic!("expected IssuedCertificate, got {other:?}"),
    };
    assert_eq!(issued.error, "");
    let renewed = EnrolledIdentity::new(key, issued.certificate.to_vec()).expect("for the new key");
    assert_eq!(renewed.certificate().agent_id, "web-1");
    assert!(renewed.certificate().not_after >= identity.certificate().not_after);
    // The session went on meanwhile, and the new certificate opens the next.
    session
        .send_acked(Batch {
            seq: 1,
            records: vec![],
        })
        .await;
    let (_, welcome) = welcome_for(&hub, Some(&renewed), hello("", "")).await;
    assert!(welcome.ok, "{}", welcome.message);
    assert!(
        hub.metrics()
            .render()
            .contains(r#"herd_hub_certificate_renewals_total{outcome="issued"} 1"#)
    );
    hub.shutdown().await;
}
