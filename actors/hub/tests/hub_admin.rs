//! Admin HTTP (`/metrics` checked by promtool, `/healthz`, `/agents`; the
//! admin token and the endpoints it opens) and the embedded nats-server.

mod hub_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use actix::prelude::*;
use herd_codec::proto::hub_message::Kind;
use herd_codec::proto::{Batch, CloseReason};
use herd_hub::{AckMode, AgentInfo, Hub, HubConfig, HubTlsConfig, NatsState};
use herd_supervision::ChildSpec;
use hub_support::{
    ScriptedAgent, enroll, get, hello, hub_with, post, welcome_for, with_admin, within,
};
use serde_json::json;

#[actix::test]
async fn metrics_pass_promtool_and_agents_and_health_are_served() {
    let state = tempfile::tempdir().expect("state dir");
    let (mut nats, hub) = hub_with(|config| with_admin(config, state.path())).await;
    let admin = hub.admin_addr().expect("admin enabled");
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "seen").await;
    agent
        .send(Batch {
            seq: 1,
            records: vec![Default::default()],
        })
        .await;
    assert!(matches!(agent.expect().await, Kind::Ack(_)));

    let (status, _, metrics) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "herd_hub_connections 1",
        r#"herd_hub_handshakes_total{outcome="ok"} 1"#,
        "herd_hub_records_in_total 1",
        "herd_hub_records_published_total 1",
        "herd_hub_acks_total 1",
        "herd_hub_publish_latency_seconds_count 1",
        "herd_hub_nats_connected 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &metrics).expect("write");
    let check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(file.path()).expect("open"))
        .output()
        .expect("promtool runs (Debian package prometheus)");
    assert!(
        check.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let (status, _, agents) = get(admin, "/agents").await;
    assert_eq!(status, 200);
    let agents: Vec<AgentInfo> = serde_json::from_str(&agents).expect("agents JSON");
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].agent_id, "seen");
    assert_eq!(agents[0].hostname, "host-seen");

    assert_eq!(get(admin, "/healthz").await.0, 200);
    nats.stop();
    assert!(
        hub.nats()
            .wait_for_state(|state| state != NatsState::Connected, hub_support::WAIT)
            .await,
        "NATS loss noticed"
    );
    let (status, _, body) = get(admin, "/healthz").await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with(&format!("NATS at {} is not reachable", nats.url())),
        "{body}"
    );
    hub.shutdown().await;
}

#[actix::test]
async fn jetstream_mode_stores_records_in_the_data_stream_it_creates() {
    let state = tempfile::tempdir().expect("state dir");
    let (nats, hub) = hub_with(|config| {
        assert_eq!(config.ack_mode, AckMode::Jetstream, "the default");
        with_admin(config, state.path());
    })
    .await;
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "stored").await;
    agent
        .send_acked(Batch {
            seq: 1,
            records: vec![Default::default(), Default::default()],
        })
        .await;
    // Acked means stored: the stream holds both records already.
    let jetstream = async_nats::jetstream::new(nats.client().await.expect("client"));
    let mut stream = jetstream
        .get_stream("HERD_DATA")
        .await
        .expect("the hub created HERD_DATA");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.state.messages, 2);
    assert_eq!(info.config.subjects, ["herd.data.>", "herd.batch.>"]);
    assert_eq!(
        get(hub.admin_addr().expect("admin"), "/healthz").await.0,
        200
    );
    hub.shutdown().await;
}

#[actix::test]
async fn healthz_is_unhealthy_while_the_data_stream_is_missing() {
    let state = tempfile::tempdir().expect("state dir");
    let (nats, hub) = hub_with(|config| {
        config.stream.create = false;
        with_admin(config, state.path());
    })
    .await;
    let admin = hub.admin_addr().expect("admin");
    let (status, _, body) = get(admin, "/healthz").await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with("JetStream data stream is not in place"),
        "{body}"
    );
    // Created by the operator: the hub finds it on its next check.
    let client = nats.client().await.expect("client");
    herd_tests::collector::create_data_stream(&client)
        .await
        .expect("stream");
    within("healthz turning ok", async {
        while get(admin, "/healthz").await.0 != 200 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    hub.shutdown().await;
}

/// The admin token the hub created in `state_dir`, after checking only
/// its owner can read it.
fn admin_token(state_dir: &Path) -> String {
    let path = state_dir.join(herd_hub::ADMIN_TOKEN_FILE);
    let mode = std::fs::metadata(&path)
        .expect("the hub created admin.token")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{path:?}");
    let token = std::fs::read_to_string(&path).expect("admin.token");
    let token = token.trim();
    assert_eq!(token.len(), 64, "32 random bytes, hex");
    token.to_owned()
}

#[actix::test]
async fn changing_state_takes_the_admin_token_and_reading_does_not() {
    let state = tempfile::tempdir().expect("state dir");
    let (_nats, hub) = hub_with(|config| {
        // Enrollment: TLS and certificate identities, as a hub runs by default.
        config.tls = HubTlsConfig::default();
        config.tokens.clear();
        with_admin(config, state.path());
    })
    .await;
    let admin = hub.admin_addr().expect("admin");
    let token = admin_token(state.path());
    let request = json!({"ttl_secs": 600, "uses": 2, "description": "rack 4"});

    let missing = post(admin, "/enrollment-tokens", None, &request).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    let wrong = post(admin, "/enrollment-tokens", Some("not-the-token"), &request).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));
    assert_eq!(
        wrong.body, missing.body,
        "no hint whether the token was wrong"
    );
    assert!(missing.json()["error"].is_string(), "{}", missing.body);
    // By method, not by route: a POST anywhere meets the check first.
    assert_eq!(post(admin, "/metrics", None, &json!({})).await.status, 401);
    assert_eq!(post(admin, "/nowhere", None, &json!({})).await.status, 401);
    // Reading needs nothing.
    assert_eq!(get(admin, "/metrics").await.0, 200);
    assert_eq!(get(admin, "/agents").await.0, 200);

    for (body, field) in [
        (json!({"uses": 0}), "`uses`"),
        (json!({"ttl_secs": 0}), "`ttl_secs`"),
        (json!({"usse": 3}), "usse"),
    ] {
        let refused = post(admin, "/enrollment-tokens", Some(&token), &body).await;
        assert_eq!(refused.status, 400, "{body}");
        let error = refused.json()["error"]
            .as_str()
            .expect("an error")
            .to_owned();
        assert!(error.contains(field), "{body}: {error}");
    }

    let before = now_ms();
    let created = post(admin, "/enrollment-tokens", Some(&token), &request).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let created = created.json();
    assert_eq!(created["uses"], 2);
    let expires = created["expires_at_ms"].as_u64().expect("expires_at_ms");
    assert!((before + 600_000..=now_ms() + 600_000).contains(&expires));
    assert_eq!(
        created["ca_fingerprint"],
        hub.ca_fingerprint().expect("the hub's CA").to_string()
    );
    // The token is a real one: an agent enrolls with it.
    let enrollment_token = created["token"].as_str().expect("token");
    let (identity, _) = enroll(&hub, "web-1", enrollment_token).await;
    let (mut session, welcome) = welcome_for(&hub, Some(&identity), hello("", "")).await;
    assert!(welcome.ok, "{}", welcome.message);

    let bad_id = post(admin, "/agents/web.1/revoke", Some(&token), &json!({})).await;
    assert_eq!(bad_id.status, 400, "{}", bad_id.body);
    let revoked = post(
        admin,
        "/agents/web-1/revoke",
        Some(&token),
        &json!({"reason": "host decommissioned"}),
    )
    .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let revoked = revoked.json();
    assert_eq!(revoked["agent_id"], "web-1");
    assert!(revoked["revoked_at_ms"].as_u64().expect("revoked_at_ms") >= before);
    let goodbye = hub_support::goodbye(&mut session).await;
    assert_eq!(goodbye.reason(), CloseReason::Revoked);
    assert!(
        goodbye.message.contains("host decommissioned"),
        "{}",
        goodbye.message
    );
    hub.shutdown().await;
}

#[actix::test]
async fn without_nats_state_changes_are_unavailable() {
    let state = tempfile::tempdir().expect("state dir");
    let (mut nats, hub) = hub_with(|config| with_admin(config, state.path())).await;
    let (admin, token) = (hub.admin_addr().expect("admin"), admin_token(state.path()));
    nats.stop();
    assert!(
        hub.nats()
            .wait_for_state(|state| state != NatsState::Connected, hub_support::WAIT)
            .await,
        "NATS loss noticed"
    );
    for path in ["/enrollment-tokens", "/agents/web-1/revoke"] {
        let refused = post(admin, path, Some(&token), &json!({})).await;
        assert_eq!(refused.status, 503, "{path}: {}", refused.body);
        assert!(refused.json()["error"].is_string(), "{}", refused.body);
    }
    hub.shutdown().await;
}

#[actix::test]
async fn the_admin_token_is_kept_across_starts_and_a_configured_one_must_not_be_empty() {
    let state = tempfile::tempdir().expect("state dir");
    let (nats, hub) = hub_with(|config| with_admin(config, state.path())).await;
    let first = admin_token(state.path());
    let config = hub.config().clone();
    hub.shutdown().await;
    let hub = within("second start", Hub::start(config.clone()))
        .await
        .expect("hub starts again");
    assert_eq!(admin_token(state.path()), first, "reused");
    let revoked = post(
        hub.admin_addr().expect("admin"),
        "/agents/web-1/revoke",
        Some(&first),
        &json!({}),
    )
    .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    hub.shutdown().await;

    let empty = state.path().join("empty.token");
    std::fs::write(&empty, " \n").expect("write");
    let mut configured = HubConfig {
        admin_token_file: Some(empty.clone()),
        ..HubConfig::for_tests(nats.url())
    };
    with_admin(&mut configured, state.path());
    let error = within("a refused start", Hub::start(configured))
        .await
        .expect_err("an empty admin token file stops the start");
    assert!(error.to_string().contains(&format!("{empty:?}")), "{error}");
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits")
}

/// A hub without a NATS URL (so it runs its own server) in a fresh state dir.
async fn hub_with_embedded_nats() -> (tempfile::TempDir, Hub) {
    let state = tempfile::tempdir().expect("state dir");
    let config = HubConfig {
        nats_url: None,
        state_dir: state.path().to_owned(),
        ..HubConfig::for_tests("unused")
    };
    let hub = within("hub with embedded NATS", Hub::start(config))
        .await
        .expect("hub");
    (state, hub)
}

#[actix::test]
async fn without_a_nats_url_the_hub_runs_its_own_nats_server() {
    let (state, hub) = hub_with_embedded_nats().await;
    let url = hub.nats().url().to_owned();
    assert!(url.starts_with("nats://127.0.0.1:"), "{url}");
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "local").await;
    agent
        .send_acked(Batch {
            seq: 1,
            records: vec![Default::default()],
        })
        .await;
    assert!(
        state.path().join("nats").join("jetstream").is_dir(),
        "JetStream store under the state dir"
    );
    let url_file = state.path().join(herd_hub::NATS_URL_FILE);
    assert_eq!(
        std::fs::read_to_string(&url_file).expect("nats.url while running"),
        format!("{url}\n")
    );
    // The hub's own user: a refused login would not tell a stopped server.
    let seed = std::fs::read_to_string(
        state
            .path()
            .join(herd_hub::NATS_CREDENTIALS_DIR)
            .join(herd_hub::HUB_NKEY_FILE),
    )
    .expect("the hub's seed");
    let as_hub = || async_nats::ConnectOptions::new().nkey(seed.trim().to_owned());
    as_hub()
        .connect(&url)
        .await
        .expect("the hub's user reaches the running server");
    within("shutdown", hub.shutdown()).await;
    assert!(
        as_hub().connect(&url).await.is_err(),
        "embedded server still running after shutdown"
    );
    assert!(!url_file.exists(), "nats.url removed after shutdown");
}

/// The pid of the `nats-server` whose command line names `store`.
fn nats_server_pid(store: &std::path::Path) -> Option<i32> {
    let store = store.to_str()?;
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_server = args.first()?.ends_with(b"nats-server");
            (is_server && args.contains(&store.as_bytes())).then_some(pid)
        })
}

/// Waits for a `nats-server` process on `store` other than `old`; a process
/// shows up in /proc only once it has exec'd, so this polls.
async fn server_process(store: &std::path::Path, old: Option<i32>) -> i32 {
    let mut found = None;
    herd_tests::script::poll_until("the nats-server process", || {
        found = nats_server_pid(store).filter(|pid| Some(*pid) != old);
        found.is_some()
    })
    .await;
    found.expect("checked above")
}

#[actix::test]
async fn a_killed_embedded_nats_server_is_restarted_by_the_tree_on_the_same_port() {
    let (state, hub) = hub_with_embedded_nats().await;
    let url = hub.nats().url().to_owned();
    let store = state.path().join("nats");
    let first = server_process(&store, None).await;
    let mut events = hub.supervisor().subscribe();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    within("the server's restart", async {
        let mut exited = false;
        loop {
            let event = events.recv().await.expect("events").to_string();
            exited |= event.starts_with(
                "hub/nats: server exited (abnormal: nats-server exited with signal: 9",
            );
            if exited && event == "hub/nats: server started" {
                break;
            }
        }
    })
    .await;
    // Only the server restarted: the hub's own children kept running.
    assert_eq!(
        hub.supervisor().stats().get("hub/tracker").unwrap().starts,
        1
    );
    let second = server_process(&store, Some(first)).await;
    assert_ne!(first, second);
    assert_eq!(hub.nats().url(), url, "same port after the restart");
    // The hub acks again once its client is back on the restarted server.
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "after-restart").await;
    agent
        .send_acked(Batch {
            seq: 1,
            records: vec![Default::default()],
        })
        .await;
    within("shutdown", hub.shutdown()).await;
    assert_eq!(nats_server_pid(&store), None, "server stopped with the hub");
}

struct Crashy;

impl Actor for Crashy {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
struct Crash;

impl Handler<Crash> for Crashy {
    type Result = ();

    fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
        panic!("crashy crashed on purpose");
    }
}

#[actix::test]
async fn an_embedders_actor_is_supervised_and_its_restarts_are_metrics() {
    let (_nats, hub) = hub_with(|_| {}).await;
    let mut events = hub.supervisor().subscribe();
    let crashy = within(
        "start_child",
        hub.supervisor()
            .start_child(ChildSpec::new("crashy", || Crashy)),
    )
    .await
    .expect("started");
    crashy.addr().expect("running").do_send(Crash);
    within("the restart", async {
        let mut exited = false;
        loop {
            let event = events.recv().await.expect("events").to_string();
            exited |= event.starts_with("hub: crashy exited (panic: crashy crashed on purpose");
            if exited && event == "hub: crashy started" {
                break;
            }
        }
    })
    .await;
    let metrics = hub.metrics().render();
    assert!(
        metrics.contains(r#"herd_hub_actor_restarts_total{actor="hub/crashy"} 1"#),
        "{metrics}"
    );
    let again: Option<Addr<Crashy>> = hub.supervisor().registry().get("hub/crashy");
    assert!(
        again.is_some_and(|addr| addr.connected()),
        "the new incarnation is registered"
    );
    hub.shutdown().await;
}

#[actix::test]
async fn a_batch_form_hub_adds_its_subject_to_a_stream_made_without_it() {
    let nats = herd_tests::nats::NatsServer::start()
        .await
        .expect("nats-server starts");
    // A stream made by an older hub (or by hand) for per-record data only.
    let client = nats.client().await.expect("client");
    herd_tests::collector::create_data_stream(&client)
        .await
        .expect("stream");
    let mut config = HubConfig::for_tests(nats.url());
    config.data_form = herd_hub::DataForm::Batch;
    let hub = within("hub start", Hub::start(config)).await.expect("hub");
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "grouped").await;
    // Acked only once stored: the hub added `herd.batch.>` to the stream.
    agent
        .send_acked(Batch {
            seq: 1,
            records: vec![Default::default()],
        })
        .await;
    let info = async_nats::jetstream::new(client)
        .get_stream("HERD_DATA")
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .clone();
    assert_eq!(info.config.subjects, ["herd.data.>", "herd.batch.>"]);
    assert_eq!(info.state.messages, 1);
    hub.shutdown().await;
}
