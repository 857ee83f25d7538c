//! Tasks: NATS request -> agent -> reply; offline and timeout replies; batching.

mod hub_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herd_codec::proto::hub_message::Kind;
use herd_codec::proto::{Task, TaskResult, TaskStatus};
use herd_hub::{HubMetrics, TASK_RESULTS_SUBJECT, TaskResultRecord};
use hub_support::{ScriptedAgent, hub_with, poll_until, within};
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

/// A task of `id` whose body is `bytes` long, with a timeout.
fn big_task(id: String, bytes: usize, timeout_ms: u32) -> Task {
    Task {
        id,
        timeout_ms,
        body: vec![7; bytes].into(),
        ..Task::default()
    }
}

/// Sends `task` to `agent_id` in the background; the reply and how long it took.
fn spawn_request(
    client: &async_nats::Client,
    agent_id: &'static str,
    task: Task,
) -> tokio::task::JoinHandle<(TaskResult, Duration)> {
    let client = client.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let result = request(&client, agent_id, task).await;
        (result, started.elapsed())
    })
}

/// The task ids of the Commands the agent reads up to and including `last`,
/// counting them in `seen` as they come.
async fn commands_until(agent: &mut ScriptedAgent, last: &str, seen: &AtomicUsize) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        match agent.expect().await {
            Kind::Command(command) => {
                let id = command.task.expect("a task").id;
                if id == last {
                    ids.push(id);
                    return ids;
                }
                ids.push(id);
                seen.fetch_add(1, Ordering::SeqCst);
            }
            other => panic!("expected a Command, got {other:?}"),
        }
    }
}

/// Tasks the hub dropped unwritten because their requester had given up.
fn expired(metrics: &HubMetrics) -> usize {
    usize::try_from(metrics.expired_tasks.get()).expect("fits")
}

/// The agent's socket window is small, so what it does not read waits in the hub.
const SMALL_RECEIVE_BUFFER: u32 = 4096;
/// Tasks this big fill the socket buffers after a few.
const TASK_BODY: usize = 900_000;

#[actix::test]
async fn tasks_beyond_the_queue_bound_are_rejected_at_once_and_timed_out_ones_never_written() {
    let (nats, hub) = hub_with(|config| {
        config.max_queued_tasks = 3;
        config.write_queue = 2;
        // Neither liveness nor the stall check may close the connection here.
        config.ping_interval_ms = 60_000;
        config.write_stall_timeout_ms = 60_000;
    })
    .await;
    let client = nats.client().await.expect("client");
    let mut agent =
        ScriptedAgent::online_with_receive_buffer(hub.listen_addr(), "flood", SMALL_RECEIVE_BUFFER)
            .await;
    // The agent reads nothing while these come.
    let requesters: Vec<_> = (0..16)
        .map(|n| {
            spawn_request(
                &client,
                "flood",
                big_task(format!("t-{n:02}"), TASK_BODY, 2_000),
            )
        })
        .collect();
    let mut rejected = 0;
    let mut timed_out = HashSet::new();
    for requester in requesters {
        let (result, took) = within("a requester", requester).await.expect("joined");
        match result.status() {
            TaskStatus::Rejected => {
                assert_eq!(result.error, "agent flood is not reading; 3 tasks queued");
                assert!(
                    took < Duration::from_millis(1_500),
                    "rejected after {took:?}"
                );
                rejected += 1;
            }
            TaskStatus::Timeout => {
                assert_eq!(result.error, "no result from agent flood within 2000 ms");
                timed_out.insert(result.task_id);
            }
            other => panic!("{}: {other:?} {}", result.task_id, result.error),
        }
    }
    assert!(rejected > 0, "no task was rejected");
    assert_eq!(rejected + timed_out.len(), 16);

    // The agent reads again: it gets the tasks the socket took before the
    // stall; the ones still queued in the hub (at most the bound) timed out
    // there and are dropped unwritten. Until then they fill the queue, so
    // the fresh task goes once every accepted task is delivered or dropped.
    let seen = Arc::new(AtomicUsize::new(0));
    let reading = tokio::spawn({
        let seen = seen.clone();
        async move {
            let delivered = commands_until(&mut agent, "fresh", &seen).await;
            (agent, delivered)
        }
    });
    let metrics = hub.metrics().clone();
    let accepted = timed_out.len();
    poll_until("every accepted task delivered or dropped", || {
        expired(&metrics) + seen.load(Ordering::SeqCst) == accepted
    })
    .await;
    let fresh = spawn_request(&client, "flood", big_task("fresh".into(), 10, 10_000));
    let (mut agent, delivered) = within("the agent reading", reading).await.expect("joined");
    let stale = &delivered[..delivered.len() - 1];
    assert!(stale.iter().all(|id| timed_out.contains(id)), "{stale:?}");
    let dropped = expired(&metrics);
    assert!((1..=3).contains(&dropped), "{dropped} dropped");
    assert_eq!(
        stale.len() + dropped,
        accepted,
        "{stale:?} of {timed_out:?}"
    );
    let metrics = metrics.render();
    assert!(
        metrics.contains(&format!(
            r#"herd_hub_tasks_total{{outcome="rejected"}} {rejected}"#
        )),
        "{metrics}"
    );
    agent
        .send(TaskResult {
            task_id: "fresh".into(),
            status: TaskStatus::Ok as i32,
            ..TaskResult::default()
        })
        .await;
    let (result, _) = within("the fresh task", fresh).await.expect("joined");
    assert_eq!(result.status(), TaskStatus::Ok);
    hub.shutdown().await;
}

#[actix::test]
async fn a_peer_that_stops_reading_is_closed_after_a_write_stall() {
    let (nats, hub) = hub_with(|config| {
        config.write_stall_timeout_ms = 400;
        config.ping_interval_ms = 60_000;
    })
    .await;
    let client = nats.client().await.expect("client");
    let mut agent =
        ScriptedAgent::online_with_receive_buffer(hub.listen_addr(), "stuck", SMALL_RECEIVE_BUFFER)
            .await;
    let requesters: Vec<_> = (0..6)
        .map(|n| {
            spawn_request(
                &client,
                "stuck",
                big_task(format!("s-{n}"), TASK_BODY, 30_000),
            )
        })
        .collect();
    for (n, requester) in requesters.into_iter().enumerate() {
        let (result, took) = within("a requester", requester).await.expect("joined");
        assert_eq!(result.status(), TaskStatus::Offline, "{}", result.error);
        assert_eq!(
            result.error,
            format!("agent stuck disconnected before answering task s-{n}")
        );
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
    }
    let metrics = hub.metrics().render();
    assert!(
        metrics.contains(r#"herd_hub_connection_closes_total{outcome="write_stall"} 1"#),
        "{metrics}"
    );
    let result = request(&client, "stuck", big_task("late".into(), 10, 1_000)).await;
    assert_eq!(result.status(), TaskStatus::Offline);
    assert_eq!(result.error, "agent stuck is not connected");
    // The socket is closed: reading what the kernel still held ends.
    agent.until_closed().await;
    hub.shutdown().await;
}

#[actix::test]
async fn an_agent_that_disconnects_mid_task_gets_its_requester_offline_at_once() {
    let (nats, hub) = hub_with(|_| {}).await;
    let client = nats.client().await.expect("client");
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "gone").await;
    let requester = spawn_request(&client, "gone", big_task("t-9".into(), 10, 30_000));
    assert!(matches!(agent.expect().await, Kind::Command(_)));
    drop(agent);
    let (result, took) = within("the requester", requester).await.expect("joined");
    assert_eq!(result.status(), TaskStatus::Offline);
    assert_eq!(result.task_id, "t-9");
    assert_eq!(
        result.error,
        "agent gone disconnected before answering task t-9"
    );
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    hub.shutdown().await;
}

#[actix::test]
async fn a_takeover_answers_the_old_connections_tasks_offline_and_keeps_the_new_ones() {
    let (nats, hub) = hub_with(|_| {}).await;
    let client = nats.client().await.expect("client");
    let mut old = ScriptedAgent::online(hub.listen_addr(), "twin").await;
    let first = spawn_request(&client, "twin", big_task("t-old".into(), 10, 30_000));
    assert!(matches!(old.expect().await, Kind::Command(_)));
    let mut new = ScriptedAgent::online(hub.listen_addr(), "twin").await;
    // Sent while the old connection may still be ending: its end must not
    // answer this one.
    let second = spawn_request(&client, "twin", big_task("t-new".into(), 10, 30_000));
    let (result, took) = within("the old task", first).await.expect("joined");
    assert_eq!(result.status(), TaskStatus::Offline);
    assert_eq!(
        result.error,
        "agent twin disconnected before answering task t-old"
    );
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    match new.expect().await {
        Kind::Command(command) => assert_eq!(command.task.expect("a task").id, "t-new"),
        other => panic!("expected a Command, got {other:?}"),
    }
    new.send(TaskResult {
        task_id: "t-new".into(),
        status: TaskStatus::Ok as i32,
        ..TaskResult::default()
    })
    .await;
    let (result, _) = within("the new task", second).await.expect("joined");
    assert_eq!(result.status(), TaskStatus::Ok, "{}", result.error);
    hub.shutdown().await;
}
