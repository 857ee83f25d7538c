//! End to end, with real processes: a `nats-server`, a `herd-hub`, a proxy
//! and three `herd-agent`s, each running the counting test plugin and the
//! real `sysmetrics`, `logtail` and `exec` plugins. Every test injects one
//! fault while records flow, lets the deployment heal on its own, and then
//! checks that every counter number every agent produced reached the
//! JetStream stream on `herd.data.>` (duplicates allowed and counted), that
//! no batch sequence number is missing, and that no process is left behind.

use std::time::Duration;

use herd_tests::collector::Tally;
use herd_tests::deploy::{COUNTER_PLUGIN, Deployment, LOG_LINES, WAIT};
use herd_tests::process::{E2eError, is_alive};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;

const AGENTS: usize = 3;
/// Counter numbers each agent must deliver after a fault before the test
/// looks at the whole record: proves records flow again, not just that the
/// old ones arrived.
const FRESH: u64 = 25;
/// Bound of one whole test.
const TEST_BOUND: Duration = Duration::from_secs(60);

/// Runs `test` on a fresh deployment within [`TEST_BOUND`], then kills the
/// deployment and checks nothing is left. The deployment outlives a failing
/// test's panic, so its drop prints every log.
async fn with_deployment(test: impl AsyncFnOnce(&mut Deployment) -> Result<(), E2eError>) {
    let mut deployment = Deployment::start(AGENTS)
        .await
        .unwrap_or_else(|error| panic!("starting the deployment: {error}"));
    match tokio::time::timeout(TEST_BOUND, test(&mut deployment)).await {
        Ok(Ok(())) => deployment
            .shutdown()
            .unwrap_or_else(|error| panic!("processes left behind: {error}")),
        Ok(Err(error)) => panic!("{error}"),
        Err(_) => panic!("the test did not finish within {TEST_BOUND:?}"),
    }
}

/// Checks what holds after any fault, and reports the duplicates.
fn check(tally: &Tally, fault: &str) {
    assert_eq!(
        tally.malformed, 0,
        "{fault}: malformed messages in the stream"
    );
    // Resends carry the same Nats-Msg-Id, so the stream drops them.
    assert_eq!(
        tally.duplicate_ids, 0,
        "{fault}: the stream holds a Nats-Msg-Id twice"
    );
    for (id, agent) in &tally.agents {
        assert!(
            agent.gapped_batches().is_empty(),
            "{fault}: {id}: batches with missing records: {:?}",
            agent.gapped_batches()
        );
        assert_eq!(
            agent.log_lines.len() as u64,
            LOG_LINES,
            "{fault}: {id}: every line of the followed file, once: {:?}",
            agent.log_lines
        );
        eprintln!(
            "{fault}: {id}: counter delivered 1..={} with {} duplicates; {} batches; records by source {:?}",
            agent.counter_max(COUNTER_PLUGIN),
            agent.counter_duplicates(COUNTER_PLUGIN),
            agent.batches.len(),
            agent.by_source,
        );
    }
}

/// Polls `condition` every 50 ms until it holds, at most [`WAIT`].
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) -> Result<(), E2eError> {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        if Instant::now() >= deadline {
            return Err(E2eError::Timeout {
                what: what.to_owned(),
                waited: WAIT,
                detail: "condition still false".to_owned(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits until every agent's counter has produced ten more records, so the
/// agents hold unacked batches across the outage in progress.
async fn produce_more(deployment: &Deployment, when: &str) -> Result<(), E2eError> {
    let since = deployment.produced()?;
    wait_until(&format!("agents to produce {when}"), || {
        deployment
            .produced()
            .is_ok_and(|now| now.iter().zip(&since).all(|(now, then)| *now >= then + 10))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_three_agents_deliver_every_record() {
    with_deployment(async |deployment| {
        let tally = deployment.wait_all_delivered(&[], FRESH).await?;
        check(&tally, "no fault");
        assert_eq!(tally.agents.len(), AGENTS, "records from every agent");
        for agent in &deployment.agents {
            let delivered = &tally.agents[agent.id()];
            assert_eq!(
                delivered.counter_duplicates(COUNTER_PLUGIN),
                0,
                "no fault, no duplicate"
            );
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_plugin_killed_is_restarted_and_nothing_is_lost() {
    with_deployment(async |deployment| {
        deployment.wait_all_delivered(&[], FRESH).await?;
        let before = deployment.produced()?;
        let mut victims = Vec::new();
        for agent in &deployment.agents {
            let pid = agent
                .plugin_pid(COUNTER_PLUGIN)
                .expect("the counter plugin runs");
            victims.push(pid);
            kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGKILL).unwrap();
        }
        // And one real plugin, which must come back too.
        let sysmetrics = deployment.agents[0]
            .plugin_pid("sysmetrics")
            .expect("sysmetrics runs");
        kill(
            Pid::from_raw(i32::try_from(sysmetrics).unwrap()),
            Signal::SIGKILL,
        )
        .unwrap();
        victims.push(sysmetrics);
        wait_until("every killed plugin replaced by a new process", || {
            victims.iter().all(|&pid| !is_alive(pid))
                && deployment.agents.iter().all(|agent| {
                    [COUNTER_PLUGIN, "sysmetrics"].iter().all(|name| {
                        agent
                            .plugin_pid(name)
                            .is_some_and(|pid| !victims.contains(&pid))
                    })
                })
        })
        .await?;
        let sysmetrics_before =
            deployment.collector.snapshot().agents["agent-1"].by_source["sysmetrics"];
        let tally = deployment.wait_all_delivered(&before, FRESH).await?;
        check(&tally, "plugin kill");
        deployment
            .collector
            .wait_for(
                "sysmetrics records after its restart",
                WAIT,
                |tally| tally.agents["agent-1"].by_source["sysmetrics"] > sysmetrics_before,
                |tally| format!("{:?}", tally.agents["agent-1"].by_source),
            )
            .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_agent_killed_with_kill_9_loses_nothing_and_leaves_no_plugin() {
    with_deployment(async |deployment| {
        deployment.wait_all_delivered(&[], FRESH).await?;
        for agent in &mut deployment.agents {
            let started = agent.descendants();
            let pid = agent.process().pid().expect("the agent runs");
            // Only the agent: its plugins must go by their parent-death signal.
            kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGKILL).unwrap();
            wait_until("the agent and every process it started gone", || {
                !is_alive(pid) && started.iter().all(|&child| !is_alive(child))
            })
            .await?;
            agent.process().restart()?;
        }
        deployment.wait_connected().await?;
        // Records in the pipes, in agent memory and not yet synced when the
        // agents died come again from their sources (logtail, the counter
        // commit on the agent's confirmations); the spools resend the rest.
        let before = deployment.produced()?;
        let tally = deployment.wait_all_delivered(&before, FRESH).await?;
        check(&tally, "agent kill -9");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_connection_cut_mid_stream_resends_what_was_unacked() {
    with_deployment(async |deployment| {
        deployment.wait_all_delivered(&[], FRESH).await?;
        let accepted = deployment.proxy.accepted();
        // Cut while batches are in flight, and keep the door shut until the
        // hub has seen every connection go.
        deployment.proxy.refuse();
        deployment.proxy.cut();
        deployment.hub.wait_agents(&[], WAIT).await?;
        let before = deployment.produced()?;
        deployment.proxy.accept();
        deployment.wait_connected().await?;
        assert!(
            deployment.proxy.accepted() >= accepted + AGENTS as u64,
            "every agent reconnected through the proxy"
        );
        let tally = deployment.wait_all_delivered(&before, FRESH).await?;
        check(&tally, "connection cut");

        // Then three cuts in quick succession with the door open: agents
        // reconnect at once, possibly while the hub still holds the old
        // session of their id (the takeover path).
        for _ in 0..3 {
            // Every agent connected through the proxy, so the cut hits each
            // one (an agent still in its backoff would not be cut).
            wait_until("every agent connected through the proxy", || {
                deployment.proxy.live() >= AGENTS as u64
            })
            .await?;
            let accepted = deployment.proxy.accepted();
            deployment.proxy.cut();
            wait_until("every agent reconnected after the cut", || {
                deployment.proxy.accepted() >= accepted + AGENTS as u64
            })
            .await?;
        }
        deployment.wait_connected().await?;
        let before = deployment.produced()?;
        let tally = deployment.wait_all_delivered(&before, FRESH).await?;
        check(&tally, "repeated connection cuts");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_hub_killed_and_restarted_loses_nothing() {
    with_deployment(async |deployment| {
        deployment.wait_all_delivered(&[], FRESH).await?;
        let old_pid = deployment.hub.process().pid();
        deployment.hub.kill();
        // Agents keep producing into their spools while the hub is gone.
        produce_more(deployment, "while the hub is down").await?;
        deployment.hub.restart()?;
        assert_ne!(deployment.hub.process().pid(), old_pid);
        deployment.hub.wait_ready(WAIT).await?;
        deployment.wait_connected().await?;
        let before = deployment.produced()?;
        let tally = deployment.wait_all_delivered(&before, FRESH).await?;
        check(&tally, "hub restart");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_nats_killed_and_restarted_loses_nothing() {
    with_deployment(async |deployment| {
        deployment.wait_all_delivered(&[], FRESH).await?;
        deployment.nats.stop();
        produce_more(deployment, "while NATS is down").await?;
        let (status, _) = deployment.hub.admin_get("/healthz").await?;
        assert_eq!(status, 503, "the hub reports NATS unreachable");
        deployment
            .nats
            .restart()
            .await
            .map_err(|error| E2eError::Nats {
                what: "restarting nats-server".to_owned(),
                reason: error.to_string(),
            })?;
        deployment.hub.wait_ready(WAIT).await?;
        let before = deployment.produced()?;
        let tally = deployment.wait_all_delivered(&before, FRESH).await?;
        check(&tally, "nats restart");
        Ok(())
    })
    .await;
}
