//! The library behind the `send_task`, `set_config` and `embed_hub`
//! examples, against a real nats-server and an in-process hub, with a
//! scripted agent on a real TCP socket at the other end.

use std::net::SocketAddr;
use std::time::Duration;

use herd_codec::proto::{Record, Task, TaskStatus};
use herd_examples::{ConfigScope, Counts, ExampleError, RecordCounter, RecordCounts};
use herd_hub::{Hub, HubConfig, config_bucket};
use herd_supervision::ChildSpec;
use herd_tests::nats::NatsServer;
use herd_tests::script::{EchoAgent, ScriptedAgent, WAIT, hello, within};

async fn hub() -> (NatsServer, Hub, async_nats::Client) {
    let nats = within("nats-server", NatsServer::start())
        .await
        .expect("nats-server starts");
    let hub = within("hub", Hub::start(HubConfig::for_tests(nats.url())))
        .await
        .expect("hub starts");
    let client = nats.client().await.expect("client");
    (nats, hub, client)
}

/// Connects `agent_id` (no token: the test hub has none) and serves its
/// connection in the background, echoing tasks back.
async fn echo_agent(hub: SocketAddr, agent_id: &str) -> EchoAgent {
    let (agent, welcome) = ScriptedAgent::handshake(hub, hello(agent_id, "")).await;
    assert!(welcome.ok, "refused: {}", welcome.message);
    agent.serve_echo()
}

fn record(data_type: u32) -> Record {
    Record {
        data_type,
        ..Record::default()
    }
}

fn task(id: &str) -> Task {
    Task {
        id: id.into(),
        data_type: 2210,
        target: "exec".into(),
        fields: [("script".to_string(), "hello".to_string())].into(),
        body: b"ping".to_vec().into(),
        timeout_ms: 2_000,
    }
}

#[actix::test]
async fn a_task_reaches_the_agent_and_its_result_comes_back() {
    let (_nats, hub, client) = hub().await;
    let _agent = echo_agent(hub.listen_addr(), "echo-1").await;

    let result = within(
        "the task result",
        herd_examples::send_task(&client, "echo-1", &task("t-1")),
    )
    .await
    .expect("a TaskResult");

    assert_eq!(result.task_id, "t-1");
    assert_eq!(result.status(), TaskStatus::Ok);
    assert_eq!(&result.output[..], b"ping");
    assert_eq!(
        result.fields.get("script").map(String::as_str),
        Some("hello")
    );
    assert_eq!(result.source, "exec");
    hub.shutdown().await;
}

#[actix::test]
async fn a_task_for_an_absent_agent_is_answered_offline_until_the_agent_connects() {
    let (_nats, hub, client) = hub().await;

    let offline = within(
        "the hub's answer",
        herd_examples::send_task(&client, "late", &task("t-2")),
    )
    .await
    .expect("a TaskResult");
    assert_eq!(offline.status(), TaskStatus::Offline, "{offline:?}");

    let patient = tokio::spawn({
        let client = client.clone();
        async move {
            herd_examples::send_task_when_online(
                &client,
                "late",
                &task("t-3"),
                WAIT,
                Duration::from_millis(50),
            )
            .await
        }
    });
    let _agent = echo_agent(hub.listen_addr(), "late").await;
    let result = within("the retried task", patient)
        .await
        .expect("joined")
        .expect("a TaskResult");
    assert_eq!(result.status(), TaskStatus::Ok, "{result:?}");
    assert_eq!(result.task_id, "t-3");

    let refused = herd_examples::send_task(&client, "no.dots", &task("t-4")).await;
    assert!(
        matches!(refused, Err(ExampleError::AgentId { .. })),
        "{refused:?}"
    );
    hub.shutdown().await;
}

#[actix::test]
async fn configuration_reaches_the_connected_agent_and_bad_values_are_refused() {
    let (_nats, hub, client) = hub().await;
    let mut agent = echo_agent(hub.listen_addr(), "cfg-1").await;
    let scope = ConfigScope::Agent("cfg-1".into());
    let good = br#"{"plugins": [{"name": "uptime", "path": "/usr/bin/herd-exec",
        "args": ["--script", "uptime=/usr/bin/uptime:30"], "sha256": "00"}]}"#;

    let (revision, written) = within(
        "the KV write",
        herd_examples::set_config(&client, &scope, good),
    )
    .await
    .expect("written");
    assert!(revision >= 1, "revision {revision}");
    assert_eq!(written.plugins.len(), 1);

    let pushed = within("the configuration push", agent.configs.recv())
        .await
        .expect("the agent is connected");
    assert_eq!(pushed, written);
    assert_eq!(pushed.plugins[0].name, "uptime");
    assert_eq!(
        pushed.plugins[0].args,
        ["--script", "uptime=/usr/bin/uptime:30"]
    );

    for (bad_scope, bad_value) in [
        (scope.clone(), &br#"{"plugins": [{"nmae": "typo"}]}"#[..]),
        (scope.clone(), br#"{"plugins": [{"name": "has space"}]}"#),
        (ConfigScope::Agent("a.b".into()), good),
    ] {
        let refused = herd_examples::set_config(&client, &bad_scope, bad_value).await;
        assert!(
            matches!(
                refused,
                Err(ExampleError::Config { .. } | ExampleError::AgentId { .. })
            ),
            "{bad_scope:?} {refused:?}"
        );
    }
    let bucket = config_bucket(&async_nats::jetstream::new(client.clone()))
        .await
        .expect("bucket");
    let stored = bucket
        .entry("agent.cfg-1")
        .await
        .expect("read")
        .expect("key");
    assert_eq!(stored.revision, revision, "a refused value was written");
    assert_eq!(&stored.value[..], good);
    hub.shutdown().await;
}

#[actix::test]
async fn an_actor_added_to_the_hubs_tree_counts_the_records_it_publishes() {
    let (_nats, hub, _client) = hub().await;
    let nats = hub.nats().client().clone();
    let counter = within(
        "the counter's start",
        hub.supervisor()
            .start_child(ChildSpec::new("record-counter", move || {
                RecordCounter::new(nats.clone(), Duration::from_secs(60))
            })),
    )
    .await
    .expect("started")
    .addr()
    .expect("running");
    // Answered only once the subscription is live (it subscribes before it
    // handles messages).
    let before = within("the counts", counter.send(Counts))
        .await
        .expect("alive");
    assert_eq!(before, RecordCounts::default());

    let mut agent = echo_agent(hub.listen_addr(), "counted").await;
    agent
        .send_batch(vec![record(2001), record(2100), record(2100)])
        .await;
    let expected = RecordCounts {
        total: 3,
        by_type: [("2001".to_string(), 1), ("2100".to_string(), 2)].into(),
    };
    // The hub acked, so NATS has the records. The counts are the actor's
    // state, so the test asks until they arrived (bounded).
    let counted = within("the counter to see 3 records", async {
        loop {
            let counts = counter.send(Counts).await.expect("alive");
            if counts.total >= 3 {
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(counted, expected);
    hub.shutdown().await;
}
