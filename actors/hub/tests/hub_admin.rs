//! Admin HTTP (`/metrics` checked by promtool, `/healthz`, `/agents`) and the
//! embedded nats-server.

mod hub_support;

use std::net::SocketAddr;

use actix::prelude::*;
use herd_codec::proto::Batch;
use herd_codec::proto::hub_message::Kind;
use herd_hub::{AckMode, AgentInfo, Hub, HubConfig, NatsState};
use herd_supervision::ChildSpec;
use hub_support::{ScriptedAgent, get, hub_with, within};

#[actix::test]
async fn metrics_pass_promtool_and_agents_and_health_are_served() {
    let (mut nats, hub) =
        hub_with(|config| config.admin = Some(SocketAddr::from(([127, 0, 0, 1], 0)))).await;
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
    let (nats, hub) = hub_with(|config| {
        assert_eq!(config.ack_mode, AckMode::Jetstream, "the default");
        config.admin = Some(([127, 0, 0, 1], 0).into());
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
    let (nats, hub) = hub_with(|config| {
        config.stream.create = false;
        config.admin = Some(([127, 0, 0, 1], 0).into());
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
