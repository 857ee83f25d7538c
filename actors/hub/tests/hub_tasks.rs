//! Tasks: NATS request -> agent -> reply; offline and timeout replies; batching.

mod hub_support;

use futures::StreamExt;
use herd_codec::proto::hub_message::Kind;
use herd_codec::proto::{Task, TaskResult, TaskStatus};
use herd_hub::{TASK_RESULTS_SUBJECT, TaskResultRecord};
use hub_support::{ScriptedAgent, hub_with, within};
use prost::Message as _;

async fn request(client: &async_nats::Client, agent_id: &str, task: Task) -> TaskResult {
    let reply = within(
        "the task reply",
        client.request(format!("herd.cmd.{agent_id}"), task.encode_to_vec().into()),
    )
    .await
    .expect("a reply");
    TaskResult::decode(reply.payload).expect("a TaskResult")
}

#[actix::test]
async fn a_task_goes_to_the_agent_and_its_result_comes_back_and_is_batched() {
    let (nats, hub) = hub_with(|_| {}).await;
    let client = nats.client().await.expect("client");
    let mut batches = hub_support::subscribe(&nats, TASK_RESULTS_SUBJECT).await;
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "worker").await;
    let task = Task {
        id: "t-1".into(),
        data_type: 2000,
        target: "exec".into(),
        ..Task::default()
    };
    let requester = tokio::spawn({
        let client = client.clone();
        let task = task.clone();
        async move { request(&client, "worker", task).await }
    });
    match agent.expect().await {
        Kind::Command(command) => assert_eq!(command.task, Some(task)),
        other => panic!("expected a Command, got {other:?}"),
    }
    let result = TaskResult {
        task_id: "t-1".into(),
        status: TaskStatus::Ok as i32,
        output: b"done\xff".to_vec().into(),
        source: "exec".into(),
        ..TaskResult::default()
    };
    agent.send(result.clone()).await;
    assert_eq!(
        within("requester", requester).await.expect("joined"),
        result
    );

    let batch = within("a task result batch", batches.next())
        .await
        .expect("open");
    let json: serde_json::Value = serde_json::from_slice(&batch.payload).expect("JSON");
    // Output bytes (not UTF-8 here) travel as a padded standard base64 string.
    assert_eq!(json[0]["output"], "ZG9uZf8=", "{json}");
    let records: Vec<TaskResultRecord> =
        serde_json::from_slice(&batch.payload).expect("JSON array");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].agent_id, "worker");
    assert_eq!(records[0].status, "TASK_STATUS_OK");
    assert_eq!(records[0].output, b"done\xff");
    assert!(
        hub.metrics()
            .render()
            .contains(r#"herd_hub_tasks_total{outcome="ok"} 1"#)
    );
    hub.shutdown().await;
}

#[actix::test]
async fn an_offline_agent_gets_an_immediate_offline_reply() {
    let (nats, hub) = hub_with(|_| {}).await;
    let client = nats.client().await.expect("client");
    let started = std::time::Instant::now();
    let result = request(
        &client,
        "nobody",
        Task {
            id: "t-2".into(),
            ..Task::default()
        },
    )
    .await;
    assert_eq!(result.status(), TaskStatus::Offline);
    assert_eq!(result.task_id, "t-2");
    assert_eq!(result.error, "agent nobody is not connected");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    hub.shutdown().await;
}

#[actix::test]
async fn a_task_without_a_result_in_time_gets_a_timeout_reply() {
    let (nats, hub) = hub_with(|_| {}).await;
    let client = nats.client().await.expect("client");
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "slow").await;
    let task = Task {
        id: "t-3".into(),
        timeout_ms: 300,
        ..Task::default()
    };
    let requester = tokio::spawn(async move { request(&client, "slow", task).await });
    assert!(matches!(agent.expect().await, Kind::Command(_)));
    let result = within("requester", requester).await.expect("joined");
    assert_eq!(result.status(), TaskStatus::Timeout);
    assert_eq!(result.error, "no result from agent slow within 300 ms");
    // A late answer is dropped, not sent anywhere.
    agent
        .send(TaskResult {
            task_id: "t-3".into(),
            status: TaskStatus::Ok as i32,
            ..TaskResult::default()
        })
        .await;
    hub.shutdown().await;
}

#[actix::test]
async fn a_request_that_is_not_a_task_is_rejected() {
    let (nats, hub) = hub_with(|_| {}).await;
    let client = nats.client().await.expect("client");
    let reply = within(
        "reply",
        client.request("herd.cmd.x", vec![0xff, 0xff].into()),
    )
    .await
    .expect("reply");
    let result = TaskResult::decode(reply.payload).expect("TaskResult");
    assert_eq!(result.status(), TaskStatus::Rejected);
    assert!(
        result
            .error
            .starts_with("request body is not a herd.v1.Task"),
        "{}",
        result.error
    );
    hub.shutdown().await;
}
