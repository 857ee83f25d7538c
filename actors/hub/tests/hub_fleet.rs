//! Fleet-wide presence: hubs on one NATS hold one session per agent id
//! between them through KV `herd_agents`, and a hub cut off from NATS lets
//! its agents go instead of keeping claims it cannot defend.

mod hub_support;

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use herd_codec::proto::hub_message::Kind;
use herd_codec::proto::{Batch, CloseReason, Task, TaskResult, TaskStatus};
use herd_hub::{AGENTS_BUCKET, AgentClaim, FleetAgent, Hub, HubConfig};
use herd_tests::nats::NatsServer;
use herd_tests::script::TOKEN;
use hub_support::{ScriptedAgent, WAIT, goodbye, within};
use prost::Message as _;

async fn hub(nats: &NatsServer, tweak: impl FnOnce(&mut HubConfig)) -> Hub {
    let mut config = HubConfig::for_tests(nats.url());
    config.tokens = vec![TOKEN.into()];
    tweak(&mut config);
    within("hub start", Hub::start(config))
        .await
        .expect("hub starts")
}

async fn bucket(nats: &NatsServer) -> kv::Store {
    let client = nats.client().await.expect("client");
    let jetstream = async_nats::jetstream::new(client);
    let mut attempts = 0;
    loop {
        match jetstream.get_key_value(AGENTS_BUCKET).await {
            Ok(store) => return store,
            // The hubs create it as they start.
            Err(_) if attempts < 100 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("no {AGENTS_BUCKET} bucket: {error}"),
        }
    }
}

/// Polls the claim of `agent_id` until `condition` holds of it.
async fn claim_until(
    store: &kv::Store,
    agent_id: &str,
    what: &str,
    condition: impl Fn(Option<&AgentClaim>) -> bool,
) -> Option<AgentClaim> {
    within(what, async {
        loop {
            let claim = store
                .get(agent_id)
                .await
                .expect("KV readable")
                .map(|value| serde_json::from_slice::<AgentClaim>(&value).expect("a claim"));
            if condition(claim.as_ref()) {
                return claim;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[actix::test]
async fn an_agent_id_has_one_session_across_the_hubs() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let (a, b) = (hub(&nats, |_| {}).await, hub(&nats, |_| {}).await);
    let store = bucket(&nats).await;
    let mut on_a = ScriptedAgent::online(a.listen_addr(), "web-1").await;
    let claim = claim_until(&store, "web-1", "hub A's claim", |claim| {
        claim.is_some_and(|claim| claim.hub == a.hub_id())
    })
    .await
    .unwrap();
    assert!(claim.session.starts_with(a.hub_id()), "{claim:?}");

    // The agent shows up on hub B: its session on A is closed, B's stays.
    let mut on_b = ScriptedAgent::online(b.listen_addr(), "web-1").await;
    let goodbye = goodbye(&mut on_a).await;
    assert_eq!(goodbye.reason(), CloseReason::Superseded);
    assert!(goodbye.message.contains(b.hub_id()), "{}", goodbye.message);
    claim_until(&store, "web-1", "hub B's claim", |claim| {
        claim.is_some_and(|claim| claim.hub == b.hub_id())
    })
    .await;
    on_b.send_acked(Batch {
        seq: 1,
        records: vec![],
    })
    .await;
    assert!(a.agents().await.is_empty());
    assert_eq!(b.agents().await.len(), 1);

    // Gone from B: the claim goes with it.
    drop(on_b);
    claim_until(&store, "web-1", "the claim released", |claim| {
        claim.is_none()
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[actix::test]
async fn a_task_is_answered_by_the_agents_hub_and_an_unknown_agent_is_offline() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let (a, b) = (hub(&nats, |_| {}).await, hub(&nats, |_| {}).await);
    let store = bucket(&nats).await;
    let _agent = ScriptedAgent::online(b.listen_addr(), "web-1")
        .await
        .serve_echo();
    claim_until(&store, "web-1", "hub B's claim", |claim| {
        claim.is_some_and(|claim| claim.hub == b.hub_id())
    })
    .await;
    let client = nats.client().await.expect("client");
    let request = |agent_id: &str, id: &str| {
        let task = Task {
            id: id.to_owned(),
            data_type: 2000,
            target: "exec".into(),
            ..Task::default()
        };
        let request = client.request(format!("herd.cmd.{agent_id}"), task.encode_to_vec().into());
        async move {
            let reply = within("the task reply", request).await.expect("a reply");
            TaskResult::decode(reply.payload).expect("a TaskResult")
        }
    };
    // Hub A, which does not serve web-1, leaves the answer to hub B.
    for n in 0..10 {
        let result = request("web-1", &format!("t-{n}")).await;
        assert_eq!(result.status(), TaskStatus::Ok, "{result:?}");
    }
    let result = request("nobody", "t-x").await;
    assert_eq!(result.status(), TaskStatus::Offline);
    assert_eq!(result.error, "agent nobody is not connected");
    a.shutdown().await;
    b.shutdown().await;
}

#[actix::test]
async fn any_hubs_fleet_view_lists_the_agents_of_every_hub() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = hub(&nats, |config| {
        hub_support::with_admin(config, state_a.path())
    })
    .await;
    let b = hub(&nats, |config| {
        hub_support::with_admin(config, state_b.path())
    })
    .await;
    let store = bucket(&nats).await;
    let _on_a = ScriptedAgent::online(a.listen_addr(), "web-1").await;
    let _on_b = ScriptedAgent::online(b.listen_addr(), "db-1").await;
    for (agent_id, hub) in [("web-1", &a), ("db-1", &b)] {
        claim_until(&store, agent_id, "the claim", |claim| {
            claim.is_some_and(|claim| claim.hub == hub.hub_id())
        })
        .await;
    }
    let (status, content_type, body) =
        hub_support::get(a.admin_addr().expect("admin"), "/fleet").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let fleet: Vec<FleetAgent> = serde_json::from_str(&body).expect("a fleet list");
    let seen: Vec<(&str, &str)> = fleet
        .iter()
        .map(|agent| (agent.agent_id.as_str(), agent.claim.hub.as_str()))
        .collect();
    assert_eq!(seen, [("db-1", b.hub_id()), ("web-1", a.hub_id())]);
    // Its own `/agents` stays this hub's connections.
    let (_, _, own) = hub_support::get(a.admin_addr().expect("admin"), "/agents").await;
    assert!(own.contains("web-1") && !own.contains("db-1"), "{own}");
    a.shutdown().await;
    b.shutdown().await;
}

#[actix::test]
async fn two_hubs_taking_one_id_at_once_leave_exactly_one_session() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let (a, b) = (hub(&nats, |_| {}).await, hub(&nats, |_| {}).await);
    let store = bucket(&nats).await;
    for round in 0..5 {
        let agent_id = format!("race-{round}");
        let (mut first, mut second) = tokio::join!(
            ScriptedAgent::online(a.listen_addr(), &agent_id),
            ScriptedAgent::online(b.listen_addr(), &agent_id),
        );
        // One of the two sessions is closed; the claim is the other's.
        let (winner, winner_hub, goodbye) = tokio::select! {
            goodbye = goodbye(&mut first) => (&mut second, b.hub_id(), goodbye),
            goodbye = goodbye(&mut second) => (&mut first, a.hub_id(), goodbye),
        };
        assert_eq!(goodbye.reason(), CloseReason::Superseded);
        claim_until(&store, &agent_id, "the winner's claim", |claim| {
            claim.is_some_and(|claim| claim.hub == winner_hub)
        })
        .await;
        winner
            .send_acked(Batch {
                seq: 1,
                records: vec![],
            })
            .await;
        let sessions = a.agents().await.len() + b.agents().await.len();
        assert_eq!(sessions, 1, "round {round}: {sessions} sessions for one id");
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[actix::test]
async fn a_hub_cut_off_from_nats_lets_its_agents_go_after_the_presence_ttl() {
    let mut nats = NatsServer::start().await.expect("nats-server starts");
    let ttl = Duration::from_secs(3);
    let a = hub(&nats, |config| config.presence_ttl_secs = ttl.as_secs()).await;
    let store = bucket(&nats).await;
    let mut agent = ScriptedAgent::online(a.listen_addr(), "web-1").await;
    claim_until(&store, "web-1", "the claim", |claim| claim.is_some()).await;

    let cut = Instant::now();
    nats.stop();
    let goodbye = tokio::time::timeout(ttl + WAIT, agent.until_closed())
        .await
        .expect("the hub let the agent go");
    let cut_off_for = cut.elapsed();
    match &goodbye[..] {
        [.., Kind::Goodbye(goodbye)] => {
            assert_eq!(goodbye.reason(), CloseReason::Shutdown);
            assert!(
                goodbye.message.contains("could not renew its claim"),
                "{}",
                goodbye.message
            );
        }
        other => panic!("expected a Goodbye, got {other:?}"),
    }
    // Not before the claim could have expired for the other hubs.
    assert!(cut_off_for >= ttl * 2 / 3, "closed after {cut_off_for:?}");
    a.shutdown().await;
}
