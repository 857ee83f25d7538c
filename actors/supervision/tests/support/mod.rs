//! Shared test actors and event assertions for the supervision tests.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use herd_supervision::{
    Backoff, ChildSpec, Registry, SupervisionEvent, SupervisorHandle, SupervisorSpec, stop_abnormal,
};
use tokio::sync::broadcast;

/// Upper bound for any single wait in a test; a hang fails instead of blocking CI.
pub const WAIT: Duration = Duration::from_secs(10);

/// A shared, ordered log of lifecycle hooks (`"a started"`, `"a stopped"`).
#[derive(Clone, Default, Debug)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A test child: answers [`Ping`] with its incarnation number and exits on [`Exit`].
#[derive(Debug)]
pub struct Probe {
    pub id: &'static str,
    pub incarnation: usize,
    pub log: Log,
    /// Panic in `started()` on these incarnations.
    pub panic_on_start: Vec<usize>,
    /// Refuse to stop when asked (for kill tests).
    pub stubborn: bool,
}

impl Actor for Probe {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.log.push(format!("{} started", self.id));
        if self.panic_on_start.contains(&self.incarnation) {
            panic!("{} failed to start", self.id);
        }
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        if self.stubborn {
            Running::Continue
        } else {
            Running::Stop
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.log.push(format!("{} stopped", self.id));
    }
}

/// Answers with the incarnation number (0 for the first start).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Ping;

impl Handler<Ping> for Probe {
    type Result = usize;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> usize {
        self.incarnation
    }
}

/// How a probe should exit.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum Exit {
    Normal,
    Abnormal(&'static str),
    Panic(&'static str),
}

impl Handler<Exit> for Probe {
    type Result = ();

    fn handle(&mut self, msg: Exit, ctx: &mut Context<Self>) {
        match msg {
            Exit::Normal => ctx.stop(),
            Exit::Abnormal(why) => stop_abnormal(ctx, why),
            Exit::Panic(msg) => panic!("{msg}"),
        }
    }
}

/// Builds probe specs that count incarnations per id.
#[derive(Clone, Default, Debug)]
pub struct Probes {
    pub log: Log,
}

impl Probes {
    pub fn spec(&self, id: &'static str) -> ChildSpec<Probe> {
        self.spec_with(id, Vec::new(), false)
    }

    pub fn spec_with(
        &self,
        id: &'static str,
        panic_on_start: Vec<usize>,
        stubborn: bool,
    ) -> ChildSpec<Probe> {
        let log = self.log.clone();
        let count = Arc::new(AtomicUsize::new(0));
        ChildSpec::new(id, move || Probe {
            id,
            incarnation: count.fetch_add(1, Ordering::SeqCst),
            log: log.clone(),
            panic_on_start: panic_on_start.clone(),
            stubborn,
        })
    }
}

/// Receives the next `n` events (each within [`WAIT`]) as their `Display` lines.
pub async fn next_events(rx: &mut broadcast::Receiver<SupervisionEvent>, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let event = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for event; got so far: {out:#?}"))
            .expect("event channel closed or lagged");
        out.push(event.to_string());
    }
    out
}

/// Asserts that the next events are exactly `expected`, in order.
pub async fn expect_events(
    rx: &mut broadcast::Receiver<SupervisionEvent>,
    expected: &[impl AsRef<str>],
) {
    let got = next_events(rx, expected.len()).await;
    let expected: Vec<&str> = expected.iter().map(AsRef::as_ref).collect();
    assert_eq!(got, expected);
}

/// A tree `t` without backoff holding `children` (in start order).
pub fn tree(children: impl IntoIterator<Item = ChildSpec<Probe>>) -> SupervisorSpec {
    children.into_iter().fold(
        SupervisorSpec::new("t").backoff(Backoff::none()),
        |spec, child| spec.child(child),
    )
}

/// The events of an orderly shutdown of a flat supervisor whose running children are
/// `ids`, in the order they must stop.
pub fn shutdown_events(supervisor: &str, ids: &[&str]) -> Vec<String> {
    let mut events = vec![format!("{supervisor}: shutdown started (shutdown)")];
    for id in ids {
        events.push(format!("{supervisor}: {id} stopping"));
        events.push(format!("{supervisor}: {id} exited (shutdown)"));
    }
    events.push(format!("{supervisor}: stopped (shutdown)"));
    events
}

/// Subscribes to `spec`, starts it and waits for the `started` events (in order).
pub async fn start(
    spec: SupervisorSpec,
    started: &[&str],
) -> (SupervisorHandle, broadcast::Receiver<SupervisionEvent>) {
    let mut rx = spec.subscribe();
    let sup = spec.start().expect("valid spec");
    expect_events(&mut rx, started).await;
    (sup, rx)
}

/// The events of an immediate (no backoff) restart of `child` after exiting with `reason`.
pub fn restarted(supervisor: &str, child: &str, reason: &str) -> [String; 3] {
    [
        format!("{supervisor}: {child} exited ({reason})"),
        format!("{supervisor}: {child} restarting in 0ns (attempt 0)"),
        format!("{supervisor}: {child} started"),
    ]
}

/// Receives the next event (within [`WAIT`]).
pub async fn next_event(rx: &mut broadcast::Receiver<SupervisionEvent>) -> SupervisionEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for an event")
        .expect("event channel closed or lagged")
}

/// The running probe at `path`.
pub fn probe(registry: &Registry, path: &str) -> Addr<Probe> {
    registry.get::<Probe>(path).unwrap_or_else(|| {
        panic!(
            "no running probe at {path}; running: {:?}",
            registry.paths()
        )
    })
}

/// Pings the probe at `path` and returns its incarnation.
pub async fn incarnation(registry: &Registry, path: &str) -> usize {
    tokio::time::timeout(WAIT, probe(registry, path).send(Ping))
        .await
        .expect("ping timed out")
        .expect("probe mailbox closed")
}

/// Answers with the thread the probe runs on.
#[derive(Message)]
#[rtype(result = "std::thread::ThreadId")]
pub struct WhichThread;

impl Handler<WhichThread> for Probe {
    type Result = MessageResult<WhichThread>;

    fn handle(&mut self, _: WhichThread, _: &mut Context<Self>) -> Self::Result {
        MessageResult(std::thread::current().id())
    }
}
