//! Every start, exit, restart with its backoff, kill and escalation is a `tracing` event and
//! a counter.
//!
//! The only test in this binary: `tracing` caches per-callsite interest process-wide, so a
//! parallel test without a subscriber could hide these events from the scoped one.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_supervision::{Backoff, ChildStats, Intensity, SupervisorSpec};
use support::{Exit, Probes, expect_events, probe, start};

/// Collects formatted `tracing` output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[actix::test]
async fn supervision_is_traced_and_counted() {
    tokio::time::pause();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .without_time()
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let probes = Probes::default();
    let spec = SupervisorSpec::new("t")
        .intensity(Intensity::new(1, Duration::from_secs(10)).unwrap())
        .backoff(
            Backoff::exponential(Duration::from_millis(50), Duration::from_secs(1), 0.0).unwrap(),
        )
        .child(probes.spec("a"));
    let (sup, mut rx) = start(spec, &["t: a started"]).await;
    probe(sup.registry(), "t/a").do_send(Exit::Panic("one"));
    expect_events(
        &mut rx,
        &[
            "t: a exited (panic: one)",
            "t: a restarting in 50ms (attempt 0)",
            "t: a started",
        ],
    )
    .await;
    probe(sup.registry(), "t/a").do_send(Exit::Abnormal("two"));
    sup.wait().await;

    let lines = captured.lines();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    for needle in [
        "child started supervisor=t child=a",
        "child exited supervisor=t child=a reason=panic: one",
        "child restarting after backoff supervisor=t child=a delay=50ms attempt=0",
        "child exited supervisor=t child=a reason=abnormal: two",
        "restart intensity exceeded; escalating supervisor=t reason=more than 1 restarts within 10s",
        "supervisor stopped supervisor=t reason=escalated: more than 1 restarts within 10s",
    ] {
        assert!(has(needle), "no log line with {needle:?} in {lines:#?}");
    }

    let stats = sup.stats();
    assert_eq!(
        stats.get("t/a").unwrap(),
        ChildStats {
            starts: 2,
            restarts: 1,
            exits_normal: 0,
            exits_abnormal: 2,
            panics: 1,
            kills: 0,
            escalations: 0,
            last_backoff: Duration::from_millis(50),
        }
    );
    assert_eq!(stats.get("t").unwrap().escalations, 1);
    assert_eq!(
        stats.snapshot().keys().cloned().collect::<Vec<_>>(),
        ["t", "t/a"]
    );
    assert_eq!(stats.totals().exits_abnormal, 2);
}
