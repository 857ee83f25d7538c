//! A real disk that fills up under the agent: its state directory is a small
//! tmpfs, the hub stops acking, and a fast plugin fills the spool until the
//! kernel says ENOSPC (long before the spool's own `max_disk_bytes`, which is
//! set larger than the disk). The agent must stay up, stop taking records
//! (the plugin blocks on its pipe), say why once — in its log and, as soon as
//! heartbeats can leave again, in `agent.spool_error` — take records again
//! when acks free space, start on a full disk without a crash loop, and never
//! give one batch seq to two different sets of records.
//!
//! Needs root (it mounts a tmpfs); as another user it prints why it skips.

mod support;

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use herd_codec::proto::{Batch, CloseReason, Goodbye, Record};
use herd_tests::mount::Mount;
use herd_tests::script::{HubEvent, poll_until, within};
use support::{AgentProcess, ScriptedHub, agent_toml, alive, plugin_toml, write_plugin};

/// The disk: room for a few hundred KiB of segments.
const DISK: &str = "512k";
/// What the agent logs when the disk refuses its spool.
const NO_SPACE: &str = "No space left on device";

/// Prints the agent logs when the test fails.
struct PrintLogsOnFailure(Vec<PathBuf>);

impl Drop for PrintLogsOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in &self.0 {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "---- last 40 lines of {} ----\n{}",
                    log.display(),
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
        }
    }
}

/// What the hub saw, checked as it comes.
#[derive(Default)]
struct Seen {
    /// The content of every batch seq seen: a seq must never name two
    /// different sets of records (a resend carries the same ones).
    content: HashMap<u64, u64>,
    /// The `n` of every record of the fast plugin, by the plugin's pid.
    by_pid: BTreeMap<String, BTreeSet<u64>>,
    /// Resends: batches seen again with the same seq and content.
    resent: u64,
}

impl Seen {
    fn note(&mut self, batch: &Batch) {
        let hash = content_hash(&batch.records);
        match self.content.entry(batch.seq) {
            Entry::Occupied(known) => {
                assert_eq!(
                    *known.get(),
                    hash,
                    "seq {} came again with different records",
                    batch.seq
                );
                self.resent += 1;
            }
            Entry::Vacant(new) => {
                new.insert(hash);
            }
        }
        for record in batch.records.iter().filter(|r| is_fast(r)) {
            self.by_pid
                .entry(record.fields["pid"].clone())
                .or_default()
                .insert(record.fields["n"].parse().unwrap());
        }
    }

    fn max_seq(&self) -> u64 {
        self.content.keys().copied().max().unwrap_or(0)
    }
}

/// The records in a canonical form (fields sorted), hashed.
fn content_hash(records: &[Record]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for record in records {
        record.data_type.hash(&mut hasher);
        record.timestamp_ms.hash(&mut hasher);
        record.source.hash(&mut hasher);
        let fields: BTreeMap<_, _> = record.fields.iter().collect();
        fields.hash(&mut hasher);
        record.body.hash(&mut hasher);
    }
    hasher.finish()
}

fn is_fast(record: &Record) -> bool {
    record.source == "fast" && record.data_type == 2001
}

fn heartbeat(record: &Record) -> Option<&HashMap<String, String>> {
    (record.data_type == 1000).then_some(&record.fields)
}

/// Takes the hub's events in order, noting every batch, until `pick`
/// returns something (bounded).
async fn until<T>(
    hub: &mut ScriptedHub,
    seen: &mut Seen,
    what: &str,
    mut pick: impl FnMut(&HubEvent) -> Option<T>,
) -> T {
    within(what, async {
        loop {
            let event = hub.expect(what, |event| Some(event.clone())).await;
            if let HubEvent::Batch(batch) = &event {
                seen.note(batch);
            }
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    })
    .await
}

/// The ERROR lines of an agent log.
fn errors(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(" ERROR "))
        .map(str::to_owned)
        .collect()
}

/// How many records the fast plugin says it wrote.
fn written(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system, in clock ticks) `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is the
    // first, utime and stime the 12th and 13th.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Waits until the plugin's count of written records stays the same for
/// 200 ms: what it wrote before the agent stopped taking records has landed.
async fn writes_settle(path: &Path) {
    const QUIET: Duration = Duration::from_millis(200);
    within("the plugin's writes settling", async {
        let (mut last, mut since) = (written(path), std::time::Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = written(path);
            if now != last {
                (last, since) = (now, std::time::Instant::now());
            } else if since.elapsed() >= QUIET {
                return;
            }
        }
    })
    .await;
}

/// Waits until the agent logs its `count`th ERROR, which must be about the
/// full disk.
async fn refusal_logged(log: &Path, count: usize) {
    poll_until("the agent logging that the disk refuses its spool", || {
        errors(log).len() >= count
    })
    .await;
    let errors = errors(log);
    assert!(
        errors[count - 1].contains(NO_SPACE),
        "the error says why: {errors:#?}"
    );
}

/// The hub closes the connection; the agent comes back and resends every
/// unacked batch, which is now acked as it arrives.
async fn ack_everything(hub: &mut ScriptedHub, seen: &mut Seen) {
    hub.max_ack.store(u64::MAX, Ordering::SeqCst);
    hub.send(Goodbye {
        reason: CloseReason::Shutdown as i32,
        message: "acking again".into(),
    });
    until(hub, seen, "the agent to reconnect", |event| {
        matches!(event, HubEvent::Hello(_)).then_some(())
    })
    .await;
}

/// Records of `pid` so far are 0..=max with none missing.
fn assert_contiguous(seen: &Seen, pid: &str) -> u64 {
    let numbers = &seen.by_pid[pid];
    let max = *numbers.last().unwrap();
    assert_eq!(
        numbers.len() as u64,
        max + 1,
        "records of plugin {pid} went missing: {} of 0..={max}",
        numbers.len()
    );
    max
}

#[tokio::test]
async fn a_full_disk_blocks_the_plugin_reports_why_and_never_reuses_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let Some(_disk) = Mount::new("tmpfs", &format!("size={DISK}"), &state) else {
        return;
    };
    let mut hub = ScriptedHub::start().await;
    hub.max_ack.store(0, Ordering::SeqCst);
    let plugin = write_plugin(dir.path());
    let written_file = dir.path().join("written");
    // Segments larger than the disk and a disk bound far above it: only the
    // kernel says "full" here, and acked frames sit in the one active segment.
    let config = agent_toml(
        hub.addr,
        &state,
        &plugin_toml(
            "fast",
            &plugin,
            "fast",
            &format!(
                "env = {{ HERD_TEST_WRITTEN = \"{}\" }}",
                written_file.display()
            ),
        ),
    ) + "[batch]\nmax_bytes = 16384\n\
         [spool]\nsegment_bytes = 1048576\nmax_disk_bytes = 8388608\n";
    let (log1, log2) = (
        dir.path().join("agent-1.log"),
        dir.path().join("agent-2.log"),
    );
    let _logs = PrintLogsOnFailure(vec![log1.clone(), log2.clone()]);
    let mut seen = Seen::default();

    // 1. The disk fills: the agent stays up, the plugin is held back, the
    //    reason is logged once.
    let agent = AgentProcess::start_logged(dir.path(), &config, &log1);
    until(&mut hub, &mut seen, "the fast plugin's records", |event| {
        matches!(event, HubEvent::Record(r) if is_fast(r)).then_some(())
    })
    .await;
    refusal_logged(&log1, 1).await;
    writes_settle(&written_file).await;
    let held_at = written(&written_file);
    let cpu_before = cpu_ticks(agent.pid);
    // A measurement window, not synchronisation: a plugin that is not held
    // back writes thousands of records a second, a spinning agent burns
    // ticks.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = written(&written_file);
    let busy = cpu_ticks(agent.pid) - cpu_before;
    eprintln!("agent CPU on a full disk: {busy} ticks in 1 s");
    // Retries come a flush interval apart, not in a loop.
    assert!(
        busy < 8,
        "the agent spins on a full disk: {busy} ticks in 1 s"
    );
    assert!(
        later - held_at <= 200,
        "the plugin kept writing on a full disk: {held_at} -> {later}"
    );
    assert!(alive(agent.pid), "the agent survives a full disk");
    assert_eq!(
        errors(&log1).len(),
        1,
        "one ERROR for the whole episode, not one per flush or retry"
    );

    // 2. Acks free the disk: the waiting batches go out, the heartbeats from
    //    the full period tell why they waited, and records flow again.
    ack_everything(&mut hub, &mut seen).await;
    let reason = until(
        &mut hub,
        &mut seen,
        "a heartbeat naming the full disk",
        |event| {
            let HubEvent::Record(record) = event else {
                return None;
            };
            heartbeat(record)
                .map(|fields| fields["agent.spool_error"].clone())
                .filter(|error| error.contains(NO_SPACE))
        },
    )
    .await;
    eprintln!("agent.spool_error while the disk was full: {reason}");
    let recovered = until(
        &mut hub,
        &mut seen,
        "a heartbeat without spool error",
        |event| {
            let HubEvent::Record(record) = event else {
                return None;
            };
            heartbeat(record)
                .filter(|fields| fields["agent.spool_error"].is_empty())
                .cloned()
        },
    )
    .await;
    for counter in ["agent.dropped_batches", "agent.oversized_records"] {
        assert_eq!(recovered[counter], "0", "{counter}: {recovered:?}");
    }
    let first_pid = until(
        &mut hub,
        &mut seen,
        "records well past the full disk",
        |event| {
            let HubEvent::Record(record) = event else {
                return None;
            };
            (is_fast(record) && record.fields["n"].parse::<u64>().unwrap() > later + 1000)
                .then(|| record.fields["pid"].clone())
        },
    )
    .await;
    // Nothing was refused silently while the disk was full: every record the
    // agent read from the plugin arrived.
    assert_contiguous(&seen, &first_pid);
    // The disk is smaller than a segment, yet while acks come they keep
    // giving the room back: no new episode.
    assert_eq!(errors(&log1).len(), 1, "the disk filled again under acks");

    // 3. Full again, then a restart on the full disk: the agent comes up,
    //    resends what was durable with the same seqs and records, and says
    //    once why it takes nothing new.
    hub.max_ack.store(0, Ordering::SeqCst);
    refusal_logged(&log1, 2).await;
    assert_eq!(errors(&log1).len(), 2, "one ERROR per episode");
    let status = agent.stop().await;
    assert!(
        status.success(),
        "SIGTERM on a full disk exits 0: {status:?}"
    );

    let agent = AgentProcess::start_logged(dir.path(), &config, &log2);
    let hello = until(
        &mut hub,
        &mut seen,
        "Hello from the agent started on a full disk",
        |event| match event {
            HubEvent::Hello(hello) => Some(hello.as_ref().clone()),
            _ => None,
        },
    )
    .await;
    // Everything the first run sent came before this Hello.
    let before_restart = seen.max_seq();
    let resent_before = seen.resent;
    assert!(
        hello.last_acked_seq < before_restart,
        "batches of the first run wait unacked: last acked {}, sent {before_restart}",
        hello.last_acked_seq
    );
    let first = until(
        &mut hub,
        &mut seen,
        "the first resent batch",
        |event| match event {
            HubEvent::Batch(batch) => Some(batch.seq),
            _ => None,
        },
    )
    .await;
    assert_eq!(
        first,
        hello.last_acked_seq + 1,
        "resending starts after the last ack"
    );
    assert!(
        seen.resent > resent_before,
        "the unacked batches came again, unchanged"
    );
    refusal_logged(&log2, 1).await;
    assert!(alive(agent.pid), "no crash loop on a full disk");

    // 4. Acks again: the new run's records flow.
    ack_everything(&mut hub, &mut seen).await;
    let second_pid = until(
        &mut hub,
        &mut seen,
        "records of the restarted plugin",
        |event| {
            let HubEvent::Record(record) = event else {
                return None;
            };
            (is_fast(record) && record.fields["pid"] != first_pid)
                .then(|| record.fields["pid"].clone())
        },
    )
    .await;
    until(
        &mut hub,
        &mut seen,
        "a heartbeat of the new run without spool error",
        |event| {
            let HubEvent::Record(record) = event else {
                return None;
            };
            heartbeat(record)
                .filter(|fields| fields["agent.spool_error"].is_empty())
                .map(drop)
        },
    )
    .await;
    assert_eq!(
        errors(&log2).len(),
        1,
        "one ERROR for the episode of the new run"
    );
    assert!(alive(agent.pid));
    let status = agent.stop().await;
    assert!(status.success(), "{status:?}");

    // Seqs were never skipped either: the hub saw 1..=max, no gap to count.
    let seqs: BTreeSet<u64> = seen.content.keys().copied().collect();
    let max = seen.max_seq();
    assert_eq!(seqs.len() as u64, max, "seqs 1..={max} without a gap");
    eprintln!(
        "disk full: {max} batches, {} resent unchanged, plugin runs {first_pid} and {second_pid}",
        seen.resent
    );
}
