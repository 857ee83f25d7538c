//! Who may use the hub's NATS: the embedded server admits only the hub's two
//! NKey users (the hub, and a read-only user for subscribers), and a hub
//! logs in to an external server with the `[nats]` credentials.

mod hub_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use herd_codec::proto::Batch;
use herd_hub::{
    HUB_NKEY_FILE, Hub, HubConfig, HubConfigError, HubError, NATS_CREDENTIALS_DIR,
    NatsClientConfig, READER_NKEY_FILE,
};
use herd_tests::nats::NatsServer;
use hub_support::{ScriptedAgent, within};
use tokio::sync::mpsc;

/// A hub running its own nats-server with its state in `state`.
async fn embedded_hub(state: &Path) -> Hub {
    let config = HubConfig {
        nats_url: None,
        state_dir: state.to_owned(),
        ..HubConfig::for_tests("unused")
    };
    within("hub with embedded NATS", Hub::start(config))
        .await
        .expect("hub")
}

fn seed_file(state: &Path, name: &str) -> PathBuf {
    state.join(NATS_CREDENTIALS_DIR).join(name)
}

/// A client logged in with the seed in `seed`, and the server errors it is told.
async fn client_with_seed(
    url: &str,
    seed: &Path,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let seed = std::fs::read_to_string(seed).expect("seed file");
    let (errors_tx, errors) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .nkey(seed.trim().to_owned())
        .event_callback(move |event| {
            let errors_tx = errors_tx.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = errors_tx.send(error.to_string());
                }
            }
        })
        .connect(url)
        .await
        .expect("a client with the seed connects");
    (client, errors)
}

/// The next server error, which must be a permissions violation naming `subject`.
async fn expect_violation(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let error = within("a permissions violation", errors.recv())
        .await
        .expect("the client is still there");
    let lower = error.to_lowercase();
    assert!(
        lower.contains("permissions violation") && error.contains(subject),
        "{error}"
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("file exists")
        .permissions()
        .mode()
        & 0o777
}

#[actix::test]
async fn the_embedded_server_admits_the_hub_user_and_a_read_only_user_only() {
    let state = tempfile::tempdir().expect("state dir");
    let hub = embedded_hub(state.path()).await;
    let url = hub.nats().url().to_owned();
    let (hub_seed, reader_seed) = (
        seed_file(state.path(), HUB_NKEY_FILE),
        seed_file(state.path(), READER_NKEY_FILE),
    );

    assert!(
        async_nats::connect(&url).await.is_err(),
        "a client without credentials is refused"
    );

    for file in [&hub_seed, &reader_seed] {
        assert_eq!(mode(file), 0o600, "{}", file.display());
        let seed = std::fs::read_to_string(file).expect("seed");
        assert!(
            seed.starts_with("SU") && seed.lines().count() == 1,
            "{seed}"
        );
    }
    assert_eq!(mode(&state.path().join(NATS_CREDENTIALS_DIR)), 0o700);
    assert_eq!(mode(&state.path().join("nats").join("server.conf")), 0o600);

    let (reader, mut reader_errors) = client_with_seed(&url, &reader_seed).await;
    let mut records = reader
        .subscribe("herd.data.>")
        .await
        .expect("the reader subscribes to records");
    reader.flush().await.expect("flush");
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "watched").await;
    agent
        .send_acked(Batch {
            seq: 1,
            records: vec![Default::default()],
        })
        .await;
    let record = within("the record reaches the reader", records.next())
        .await
        .expect("a record");
    assert!(
        record.subject.starts_with("herd.data.watched."),
        "{}",
        record.subject
    );

    // The data stream, read as a consumer: stream info, an ephemeral
    // consumer, a pull and its ack.
    let jetstream = async_nats::jetstream::new(reader.clone());
    let stream = jetstream
        .get_stream("HERD_DATA")
        .await
        .expect("the reader reads the stream's info");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .expect("the reader creates a consumer of the stream");
    let mut stored = consumer
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect("the reader pulls");
    let stored = within("the stored record", stored.next())
        .await
        .expect("a stored record")
        .expect("no pull error");
    stored.ack().await.expect("the reader acks");
    assert!(
        jetstream
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: "reader_bucket".into(),
                ..Default::default()
            })
            .await
            .is_err(),
        "the reader cannot create a KV bucket"
    );
    reader
        .publish("herd.cmd.watched", "task".into())
        .await
        .expect("queued");
    expect_violation(&mut reader_errors, "herd.cmd.watched").await;
    reader
        .publish("$KV.herd_config.fleet", "{}".into())
        .await
        .expect("queued");
    expect_violation(&mut reader_errors, "$KV.herd_config.fleet").await;
    let _tasks = reader.subscribe("herd.cmd.>").await.expect("queued");
    expect_violation(&mut reader_errors, "herd.cmd.>").await;

    let (operator, mut operator_errors) = client_with_seed(&url, &hub_seed).await;
    let mut tasks = operator
        .subscribe("herd.cmd.>")
        .await
        .expect("the hub user subscribes to tasks");
    operator.flush().await.expect("flush");
    operator
        .publish("herd.cmd.somebody", "task".into())
        .await
        .expect("published");
    let task = within("the hub user's own task", tasks.next())
        .await
        .expect("a task");
    assert_eq!(task.subject.as_str(), "herd.cmd.somebody");
    assert!(operator_errors.try_recv().is_err(), "no violation");
    assert!(
        async_nats::jetstream::new(operator)
            .get_stream("KV_reader_bucket")
            .await
            .is_err(),
        "the reader's bucket was not created"
    );

    within("shutdown", hub.shutdown()).await;
}

#[actix::test]
async fn a_second_start_reuses_the_seeds_and_operator_tools_connect_as_the_hub() {
    let state = tempfile::tempdir().expect("state dir");
    let hub = embedded_hub(state.path()).await;
    let seeds = |state: &Path| {
        [HUB_NKEY_FILE, READER_NKEY_FILE]
            .map(|name| std::fs::read_to_string(seed_file(state, name)).expect("seed"))
    };
    let first = seeds(state.path());
    assert_ne!(first[0], first[1], "two users");
    within("shutdown", hub.shutdown()).await;

    let hub = embedded_hub(state.path()).await;
    assert_eq!(seeds(state.path()), first, "the same users after a restart");
    let config = HubConfig {
        nats_url: None,
        state_dir: state.path().to_owned(),
        ..HubConfig::default()
    };
    let operator = herd_hub::connect_nats(&config, "operator")
        .await
        .expect("an operator tool reaches the embedded server as the hub");
    operator
        .publish("herd.cmd.nobody", "task".into())
        .await
        .expect("published");
    operator.flush().await.expect("flushed");
    within("shutdown", hub.shutdown()).await;

    let error = herd_hub::connect_nats(&config, "operator")
        .await
        .expect_err("no URL without a running hub");
    assert!(matches!(error, HubError::NatsUrlFile { .. }), "{error}");
}

#[actix::test]
async fn a_bad_seed_is_reported_by_its_path() {
    let state = tempfile::tempdir().expect("state dir");
    let dir = state.path().join(NATS_CREDENTIALS_DIR);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join(HUB_NKEY_FILE), "not a seed\n").expect("file");
    let config = HubConfig {
        nats_url: None,
        state_dir: state.path().to_owned(),
        ..HubConfig::for_tests("unused")
    };
    let error = Hub::start(config).await.expect_err("a bad seed");
    assert!(
        matches!(&error, HubError::NatsSeed { path, .. } if *path == dir.join(HUB_NKEY_FILE)),
        "{error}"
    );
}

#[actix::test]
async fn nats_client_settings_need_an_external_server() {
    let state = tempfile::tempdir().expect("state dir");
    let config = HubConfig {
        nats_url: None,
        state_dir: state.path().to_owned(),
        nats: NatsClientConfig {
            nkey_file: Some("/etc/herd/hub.nk".into()),
            ..NatsClientConfig::default()
        },
        ..HubConfig::for_tests("unused")
    };
    let error = Hub::start(config).await.expect_err("refused");
    assert!(
        matches!(
            error,
            HubError::Config(HubConfigError::EmbeddedNatsWith {
                field: "nats.nkey_file"
            })
        ),
        "{error}"
    );
    assert!(
        !state.path().join(NATS_CREDENTIALS_DIR).exists(),
        "refused before anything is written"
    );
}

/// A nats-server that knows one NKey user, whose seed is in the returned file.
async fn nats_with_nkey_user(dir: &Path) -> (NatsServer, PathBuf) {
    let user = nkeys::KeyPair::new_user();
    let config = serde_json::json!({
        "authorization": { "users": [{ "nkey": user.public_key() }] }
    });
    let nats = NatsServer::start_with_config(&config.to_string())
        .await
        .expect("nats-server with an nkey user");
    let seed = dir.join("hub.nk");
    std::fs::write(&seed, user.seed().expect("seed")).expect("seed file");
    (nats, seed)
}

#[actix::test]
async fn a_hub_logs_in_to_an_external_server_with_its_nkey_file() {
    let dir = tempfile::tempdir().expect("dir");
    let (nats, seed) = nats_with_nkey_user(dir.path()).await;
    assert!(
        async_nats::connect(nats.url()).await.is_err(),
        "the server wants credentials"
    );
    let mut config = HubConfig::for_tests(nats.url());
    config.nats.nkey_file = Some(seed);
    let hub = within("hub start", Hub::start(config))
        .await
        .expect("hub starts");
    assert!(
        hub.nats().wait_connected(Duration::from_secs(5)).await,
        "connected with the seed"
    );
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "external").await;
    agent
        .send_acked(Batch {
            seq: 1,
            records: vec![Default::default()],
        })
        .await;
    within("shutdown", hub.shutdown()).await;

    let missing = dir.path().join("missing");
    for (nkey_file, creds_file) in [(Some(missing.clone()), None), (None, Some(missing.clone()))] {
        let mut config = HubConfig::for_tests(nats.url());
        config.nats.nkey_file = nkey_file;
        config.nats.creds_file = creds_file;
        let error = Hub::start(config).await.expect_err("no credentials file");
        assert!(
            matches!(&error, HubError::NatsCredentialsFile { action: "read", path, .. } if *path == missing),
            "{error}"
        );
    }
}
