//! Delivery, identity and shutdown of the real agent binary against an
//! in-test hub: buffering and resending across a hub outage, the persisted
//! id and sequence numbers, SIGTERM and the 1060 shutdown task.

mod support;

use std::collections::BTreeSet;

use herd_codec::proto::{Task, TaskStatus};
use support::*;

/// The `n` counters of the stream plugin's records in a batch.
fn counters(batch: &herd_codec::proto::Batch) -> Vec<u64> {
    batch
        .records
        .iter()
        .filter(|r| r.source == "counter" && r.data_type == 2001)
        .map(|r| r.fields["n"].parse().unwrap())
        .collect()
}

#[tokio::test]
async fn hub_outage_buffers_reconnects_and_resends_everything() {
    let mut hub = ScriptedHub::start().await;
    let addr = hub.addr;
    // Only the first batch is acked before the outage.
    hub.max_ack.store(1, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let config = one_plugin_config(addr, dir.path(), "counter", "stream");
    let agent = AgentProcess::start(dir.path(), &config);

    let first_hello = hub.hello().await;
    assert_eq!(first_hello.agent_id, "");
    let mut acked = BTreeSet::new();
    let mut last_before = 0;
    while last_before < 5 {
        let batch = hub.batch().await;
        if batch.seq == 1 {
            acked.extend(counters(&batch));
        }
        last_before = batch.seq;
    }
    hub.stop().await;
    // The hub stays away for several failed attempts (backoff 100..400 ms)
    // while the plugin keeps producing: each attempt is accepted and closed
    // before any Welcome, and counted.
    let refuser = tokio::net::TcpListener::bind(addr).await.unwrap();
    for attempt in 1..=3 {
        let (socket, _) = tokio::time::timeout(WAIT, refuser.accept())
            .await
            .unwrap_or_else(|_| panic!("reconnect attempt {attempt} within {WAIT:?}"))
            .unwrap();
        drop(socket);
    }
    drop(refuser);

    let mut hub = ScriptedHub::bind(addr, "unused").await;
    let hello = hub.hello().await;
    assert_eq!(
        hello.agent_id, "assigned-agent",
        "id from the first Welcome"
    );
    assert_eq!(hello.last_acked_seq, 1);
    let mut seqs = Vec::new();
    let mut resent = BTreeSet::new();
    // Until well past what was produced during the outage.
    while resent.last().is_none_or(|n| *n < 200) {
        let batch = hub.batch().await;
        seqs.push(batch.seq);
        resent.extend(counters(&batch));
    }
    assert_eq!(seqs[0], 2, "resending starts right after the last ack");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "batches in order, none missing: {seqs:?}"
    );
    assert!(*seqs.last().unwrap() > last_before);
    let all: BTreeSet<u64> = acked.union(&resent).copied().collect();
    let max = *all.last().unwrap();
    assert_eq!(
        all.len() as u64,
        max + 1,
        "no record lost: counters 0..={max}"
    );
    assert_no_zombies(agent.pid);
    assert!(agent.stop().await.success());
}

#[tokio::test]
async fn unacked_batches_survive_a_sigterm_while_the_hub_is_down() {
    let mut hub = ScriptedHub::start().await;
    let addr = hub.addr;
    hub.max_ack.store(1, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let config = one_plugin_config(addr, dir.path(), "counter", "stream");
    let agent = AgentProcess::start(dir.path(), &config);
    let mut acked = BTreeSet::new();
    let mut seen_max = 0;
    let mut last_seq = 0;
    while last_seq < 4 {
        let batch = hub.batch().await;
        if batch.seq == 1 {
            acked.extend(counters(&batch));
        }
        seen_max = seen_max.max(counters(&batch).into_iter().max().unwrap_or(0));
        last_seq = batch.seq;
    }
    // The hub goes away; the agent is stopped while it cannot deliver.
    hub.stop().await;
    assert!(agent.stop().await.success());

    // A new run against a hub that is back: the first run's unacked batches
    // come from the disk spool, in order, before anything of the new run.
    let first_run = starts(dir.path(), "counter");
    let mut hub = ScriptedHub::bind(addr, "unused").await;
    let agent = AgentProcess::start(dir.path(), &config);
    assert_eq!(hub.hello().await.last_acked_seq, 1);
    let mut seqs = Vec::new();
    let mut resent = BTreeSet::new();
    loop {
        let batch = hub.batch().await;
        seqs.push(batch.seq);
        let second_run_started = batch
            .records
            .iter()
            .any(|r| is_start(r, "counter") && !first_run.contains(&r.fields["pid"]));
        if second_run_started {
            break; // the first run's batches all came before it
        }
        resent.extend(counters(&batch));
    }
    assert_eq!(seqs[0], 2, "resending starts right after the last ack");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "batches in order, none missing or reused: {seqs:?}"
    );
    let all: BTreeSet<u64> = acked.union(&resent).copied().collect();
    let max = *all.last().unwrap();
    assert!(
        max >= seen_max,
        "the first run's records up to {seen_max} are back"
    );
    assert_eq!(all.len() as u64, max + 1, "no record of the first run lost");
    assert!(agent.stop().await.success());
}

/// `herd-agent --config <dir>/agent.toml spool verify`: status and stdout.
fn spool_verify(dir: &std::path::Path) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herd-agent"))
        .arg("--config")
        .arg(dir.join("agent.toml"))
        .args(["spool", "verify"])
        .output()
        .expect("herd-agent runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test]
async fn a_corrupt_spool_tail_is_reported_by_verify_then_cut_and_counted_at_start() {
    let mut hub = ScriptedHub::start().await;
    hub.max_ack.store(0, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let config = one_plugin_config(hub.addr, dir.path(), "counter", "stream");
    let agent = AgentProcess::start(dir.path(), &config);
    while hub.batch().await.seq < 3 {}
    assert!(agent.stop().await.success());

    let (status, report) = spool_verify(dir.path());
    assert_eq!(status, 0, "{report}");
    assert!(report.trim_end().ends_with("ok"), "{report}");

    // A torn write at the end of the newest segment.
    let newest = std::fs::read_dir(dir.path().join("spool"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .expect("a segment");
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes.extend_from_slice(&[0x2a; 37]);
    std::fs::write(&newest, bytes).unwrap();
    let (status, report) = spool_verify(dir.path());
    assert_eq!(status, 1, "{report}");
    assert!(report.contains("corrupt:"), "{report}");

    // The agent starts anyway, cuts the tail, counts it, and goes on.
    let agent = AgentProcess::start(dir.path(), &config);
    let heartbeat = hub
        .record("a heartbeat counting the cut", |r| {
            r.data_type == 1000
                && r.fields
                    .get("agent.corrupt_bytes_cut")
                    .is_some_and(|b| b != "0")
        })
        .await;
    assert_eq!(heartbeat.fields["agent.corrupt_bytes_cut"], "37");
    assert!(agent.stop().await.success());
    assert_eq!(spool_verify(dir.path()).0, 0, "repaired at start");
}

#[tokio::test]
async fn a_plugin_is_told_which_of_its_records_are_durable() {
    let mut hub = ScriptedHub::start().await;
    // Durable means in the spool, not acked: the hub acks nothing here.
    hub.max_ack.store(0, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let config = one_plugin_config(hub.addr, dir.path(), "checker", "checkpoint");
    let agent = AgentProcess::start(dir.path(), &config);
    let durable_file = dir.path().join("plugins/checker/durable");
    // The start record and 50 more: 51 records in the plugin's numbering.
    // The plugin rewrites a file; there is no event to await.
    herd_tests::script::poll_until("the plugin hearing all its records are durable", || {
        let told: u64 = std::fs::read_to_string(&durable_file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        assert!(told <= 51, "told {told} of 51 records");
        told == 51
    })
    .await;
    // What it was told is durable is in the spool: the hub gets all of it.
    let mut seen = BTreeSet::new();
    while seen.len() < 50 {
        let record = hub
            .record("the checker's records", |r| {
                r.source == "checker" && r.data_type == 2001
            })
            .await;
        seen.insert(record.fields["n"].clone());
    }
    assert!(agent.stop().await.success());
}

#[tokio::test]
async fn id_and_seq_survive_restarts_and_sigterm_exits_cleanly() {
    let mut hub = ScriptedHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = agent_toml(hub.addr, dir.path(), "");

    let agent = AgentProcess::start(dir.path(), &config);
    assert_eq!(hub.hello().await.agent_id, "");
    let heartbeat = hub
        .record("a 1000 heartbeat", |r| r.data_type == 1000)
        .await;
    for key in [
        "cpu",
        "mem_total",
        "load1",
        "boot_time",
        "processes",
        "agent.rss",
        "agent.fds",
    ] {
        assert!(heartbeat.fields.contains_key(key), "heartbeat lacks {key}");
    }
    assert_eq!(heartbeat.source, "agent");
    let first_run_seq = hub.batch().await.seq;
    let status = agent.stop().await;
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    let persisted = std::fs::read_to_string(dir.path().join("agent_id")).unwrap();
    assert_eq!(persisted.trim(), "assigned-agent");

    hub.clear();
    let agent = AgentProcess::start(dir.path(), &config);
    let hello = hub.hello().await;
    assert_eq!(hello.agent_id, "assigned-agent");
    assert!(hello.last_acked_seq >= first_run_seq);
    let batch = hub.batch().await;
    assert!(
        batch.seq > hello.last_acked_seq,
        "seq {} continues after {}",
        batch.seq,
        hello.last_acked_seq
    );
    assert!(agent.stop().await.success());
    assert_no_zombies(std::process::id());
}

#[tokio::test]
async fn shutdown_task_stops_plugins_flushes_and_exits_zero() {
    let mut hub = ScriptedHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = one_plugin_config(hub.addr, dir.path(), "worker", "serve");
    let mut agent = AgentProcess::start(dir.path(), &config);
    let start = hub.record("worker starts", |r| is_start(r, "worker")).await;
    let plugin_pid: u32 = start.fields["pid"].parse().unwrap();
    assert!(alive(plugin_pid));

    hub.send_task(Task {
        id: "bye".into(),
        data_type: herd_codec::data_type::SHUTDOWN,
        target: "agent".into(),
        ..Task::default()
    });
    let result = hub.task_result("bye").await;
    assert_eq!(result.status, TaskStatus::Ok as i32);
    let status = agent.exit_status().await;
    assert!(status.success(), "1060 exits 0: {status:?}");
    assert!(!alive(plugin_pid), "plugin {plugin_pid} was stopped");
    assert!(
        proc_stat(plugin_pid).is_none(),
        "plugin {plugin_pid} was reaped"
    );
    assert_no_zombies(std::process::id());
}

#[tokio::test]
async fn hubs_are_tried_in_order_and_redirects_and_goodbyes_are_honoured() {
    // A port nobody listens on any more: the first hub is down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut target = ScriptedHub::start().await;
    let mut redirector = ScriptedHub::redirecting(vec![target.addr.to_string()]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = agent_toml(dead, dir.path(), "").replace(
        &format!("hubs = [\"{dead}\"]"),
        &format!("hubs = [\"{dead}\", \"{}\"]", redirector.addr),
    );
    let agent = AgentProcess::start(dir.path(), &config);

    redirector.hello().await;
    let hello = target.hello().await;
    assert_eq!(hello.agent_id, "", "the redirecting hub assigned nothing");
    target
        .record("a heartbeat at the redirect target", |r| {
            r.data_type == 1000
        })
        .await;

    target.send(herd_codec::proto::Goodbye {
        reason: herd_codec::proto::CloseReason::Shutdown as i32,
        message: "hub restarting".into(),
    });
    // After the goodbye the agent starts over: dead hub, redirector, target.
    redirector.hello().await;
    let again = target.hello().await;
    assert_eq!(again.agent_id, "assigned-agent");
    assert!(agent.stop().await.success());
}

#[tokio::test]
async fn during_a_hub_outage_attempts_come_at_most_the_backoff_cap_apart() {
    let hub = ScriptedHub::start().await;
    let addr = hub.addr;
    let dir = tempfile::tempdir().unwrap();
    // A 1 s cap, so the bound is well above scheduling noise.
    let config = one_plugin_config(addr, dir.path(), "counter", "stream")
        .replace("max_backoff_ms = 400", "max_backoff_ms = 1000");
    let _agent = AgentProcess::start(dir.path(), &config);
    let mut hub = hub;
    hub.hello().await;
    hub.stop().await;
    // Each attempt is accepted and dropped before any Welcome: a hub that
    // is down for as long as the test looks.
    let refuser = tokio::net::TcpListener::bind(addr).await.unwrap();
    let mut attempts = Vec::new();
    for attempt in 1..=9 {
        let (socket, _) = tokio::time::timeout(WAIT, refuser.accept())
            .await
            .unwrap_or_else(|_| panic!("reconnect attempt {attempt} within {WAIT:?}"))
            .unwrap();
        attempts.push(std::time::Instant::now());
        drop(socket);
    }
    let gaps: Vec<u128> = attempts
        .windows(2)
        .map(|pair| (pair[1] - pair[0]).as_millis())
        .collect();
    // Jitter only shortens a delay: once at the cap, attempts are at most
    // the cap apart (plus the time to fail one), never 1.5 times it.
    assert!(
        gaps.iter().all(|gap| *gap <= 1_300),
        "gaps between attempts (ms): {gaps:?}"
    );
    // And the backoff is real: the later gaps are at the cap's scale.
    assert!(
        gaps[4..].iter().all(|gap| *gap >= 400),
        "gaps between attempts (ms): {gaps:?}"
    );
}
