//! An orderly stop of the real agent binary tells each plugin, before its
//! stdin closes, that its last records are durable: a plugin that commits on
//! `Durable` (logtail) then neither repeats nor loses anything across a
//! restart. The test plugin writes a record every 5 ms and logs every
//! `Durable` it receives, and stdin EOF, to a file; the hub acks everything.
//!
//! Today the Plugin actor keeps reading (and ingesting) records while it
//! waits for the final confirmation, so the last `Durable` misses the records
//! read meanwhile, which were delivered all the same: a logtail restarted
//! after a normal stop sends them again. Ignored until that is fixed.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herd_tests::script::HubEvent;
use support::{AgentProcess, ScriptedHub, WAIT, one_plugin_config};

/// The plugin's log: every `Durable` count in order, then what it had sent
/// when stdin closed, with the time of each line.
struct DurableLog {
    durables: Vec<(u64, f64)>,
    eof: (u64, f64),
}

fn read_log(path: &std::path::Path) -> DurableLog {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    let mut durables = Vec::new();
    let mut eof = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (count, at) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
        assert!(eof.is_none(), "a line after stdin EOF: {line:?}\n{text}");
        match fields[0] {
            "durable" => durables.push((count, at)),
            "eof" => eof = Some((count, at)),
            other => panic!("unexpected line {other:?} in\n{text}"),
        }
    }
    DurableLog {
        durables,
        eof: eof.unwrap_or_else(|| panic!("the plugin never saw stdin EOF:\n{text}")),
    }
}

#[tokio::test]
async fn sigterm_confirms_every_durable_record_to_the_plugin_before_closing_its_stdin() {
    let mut hub = ScriptedHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = one_plugin_config(hub.addr, dir.path(), "durable", "durable-log");
    let mut agent = AgentProcess::start(dir.path(), &config);
    // Everything the hub receives from this plugin, by the plugin's own
    // record numbers (the start record is number 1).
    let mut received = BTreeSet::new();
    let mut note = |event: &HubEvent| match event {
        HubEvent::Record(r) if r.source == "durable" && r.data_type == 2001 => {
            received.insert(r.fields["k"].parse::<u64>().unwrap());
        }
        HubEvent::Record(r) if r.source == "durable" && r.data_type == 2000 => {
            received.insert(1);
        }
        _ => {}
    };
    // Records flow and are acked for a while.
    loop {
        let event = hub
            .expect("the plugin's records", |e| Some(e.clone()))
            .await;
        note(&event);
        if matches!(&event, HubEvent::Record(r) if r.fields.get("k").is_some_and(|k| k == "50")) {
            break;
        }
    }
    let sigterm_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    agent.sigterm();
    let status = agent.exit_status().await;
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    loop {
        let event = hub
            .expect("the end of the connection", |e| Some(e.clone()))
            .await;
        note(&event);
        if matches!(event, HubEvent::Closed) {
            break;
        }
    }
    let log = read_log(&dir.path().join("plugins/durable/durable.log"));
    let &(last, told_at) = log.durables.last().expect("at least one Durable");
    let (sent, eof_at) = log.eof;
    eprintln!(
        "plugin sent {sent} records, the last Durable said {last}, the hub has {}; \
         EOF {:.0} ms after SIGTERM, the last Durable {:.0} ms before EOF",
        received.len(),
        (eof_at - sigterm_at.as_secs_f64()) * 1000.0,
        (eof_at - told_at) * 1000.0,
    );
    assert!(
        log.durables.windows(2).all(|w| w[0].0 <= w[1].0),
        "Durable never goes down: {:?}",
        log.durables
    );
    // What reached the hub was durable before it was sent, so the plugin
    // heard of all of it before its stdin closed...
    let max = *received.last().unwrap();
    assert!(
        last >= max,
        "the last Durable before EOF said {last}, but the hub has records up to {max}"
    );
    // ...and what the plugin heard is durable reached the hub: the agent
    // waited for the acks before it exited.
    let missing: Vec<u64> = (1..=last).filter(|k| !received.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "confirmed durable but never delivered: {missing:?}"
    );
    assert!(last <= sent, "confirmed {last} of {sent} sent");
    // The final confirmation is bounded: stdin closes within about a second
    // of the plugins being stopped (plus the agent's own reaction time).
    let eof_after = Duration::from_secs_f64((eof_at - sigterm_at.as_secs_f64()).max(0.0));
    assert!(
        eof_after < WAIT / 2,
        "stdin closed {eof_after:?} after SIGTERM"
    );
}
