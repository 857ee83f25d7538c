//! herd-supervision against kameo 0.22 and ractor 0.16 (with ractor-supervisor 0.2):
//! messages through a supervised actor, restart latency after a panic and after an error
//! exit, and spawning and stopping 10,000 dynamic children under one supervisor (time and
//! resident memory per child).
//!
//! Run with `cargo bench -p herd-bench --bench frameworks` (about 40 s after the build);
//! `HERD_BENCH_QUICK=1 cargo bench -p herd-bench --bench frameworks` uses small counts and
//! finishes in seconds. `HERD_BENCH_ROUNDS=N` overrides the number of rounds.
//!
//! The bench re-runs its own executable once per framework and round (a role in the
//! environment variable `HERD_BENCH_ROLE`) so that every framework starts with a fresh
//! heap: memory freed by one framework's children would otherwise be reused by the next
//! and hide its growth. Roles run round-robin and the table shows the median over rounds.
//!
//! Runtimes: herd runs in one actix `System` (a current-thread tokio runtime with a
//! `LocalSet`); kameo and ractor run on a current-thread tokio runtime (the comparable
//! setting, columns `kameo` and `ractor`) and on a 2-worker multi-thread tokio runtime
//! (columns `kameo mt` and `ractor mt`, their usual setting).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any single wait in a role may take before the role fails.
const WAIT: Duration = Duration::from_secs(30);

/// Counts for one run.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    /// Asks per batch (each awaited before the next is sent).
    asks: u64,
    /// Tells per batch (then one ask to wait for them).
    tells: u64,
    /// Batches per throughput figure (median).
    batches: usize,
    /// Restarts per restart figure.
    restarts: usize,
    /// Dynamic children.
    children: usize,
}

impl Sizes {
    fn from_env() -> Self {
        if std::env::var_os("HERD_BENCH_QUICK").is_some_and(|v| v != "0") {
            Self {
                asks: 2_000,
                tells: 10_000,
                batches: 3,
                restarts: 50,
                children: 500,
            }
        } else {
            Self {
                asks: 50_000,
                tells: 200_000,
                batches: 5,
                restarts: 1_000,
                children: 10_000,
            }
        }
    }
}

/// State shared by the bench and every incarnation of a measured actor.
#[derive(Debug, Default)]
struct Shared {
    /// Incarnations started so far (the next one gets this plus one).
    incarnations: AtomicU64,
    /// When a `Ping` was last handled.
    pinged_at: Mutex<Option<Instant>>,
}

impl Shared {
    fn next_incarnation(&self) -> u64 {
        self.incarnations.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn mark_ping(&self) {
        *self.pinged_at.lock().unwrap() = Some(Instant::now());
    }

    fn take_ping(&self) -> Instant {
        self.pinged_at.lock().unwrap().take().expect("ping handled")
    }
}

/// How a failing message makes its actor exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FailKind {
    Panic,
    Error,
}

/// What one role measured; printed as `METRIC name value` lines for the parent.
#[derive(Debug, Default)]
struct Report(Vec<(&'static str, f64)>);

impl Report {
    fn put(&mut self, name: &'static str, value: f64) {
        self.0.push((name, value));
    }

    fn print(&self) {
        for (name, value) in &self.0 {
            println!("METRIC {name} {value}");
        }
    }
}

/// Resident set size of this process in bytes.
fn rss_bytes() -> f64 {
    herd_tests::process::rss_bytes(std::process::id()).expect("VmRSS of this process") as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Nearest-rank percentile of sorted latencies, in seconds.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64()
}

fn put_latencies(report: &mut Report, kind: FailKind, mut lat: Vec<Duration>) {
    lat.sort();
    let (p50, p99) = match kind {
        FailKind::Panic => ("restart_panic_p50", "restart_panic_p99"),
        FailKind::Error => ("restart_error_p50", "restart_error_p99"),
    };
    report.put(p50, percentile(&lat, 0.50));
    report.put(p99, percentile(&lat, 0.99));
}

/// Runs `f` with the panic hook silenced (thousands of expected panics).
async fn quietly<T>(f: impl AsyncFnOnce() -> T) -> T {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = f().await;
    std::panic::set_hook(default_hook);
    out
}

async fn bounded<T>(what: &str, f: impl IntoFuture<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Two spawn + stop cycles of the dynamic children: the first gives the times and the
/// memory per child; the second shows what a cycle leaves behind once the allocator has
/// the first cycle's freed memory to reuse.
struct Cycles {
    children: f64,
    cycle: usize,
    rss_before: f64,
    rss_after_first: f64,
    spawn: f64,
    live: f64,
    stop: f64,
}

impl Cycles {
    /// Call with the supervisor running and nothing spawned yet.
    fn new(sizes: Sizes) -> Self {
        Self {
            children: sizes.children as f64,
            cycle: 0,
            rss_before: rss_bytes(),
            rss_after_first: 0.0,
            spawn: 0.0,
            live: 0.0,
            stop: 0.0,
        }
    }

    /// Every child answered; the bench still holds its handle on each.
    fn spawned(&mut self, start: Instant) {
        self.spawn = start.elapsed().as_secs_f64();
        self.live = rss_bytes();
    }

    /// Every child's exit was observed.
    fn stopped(&mut self, start: Instant) {
        self.stop = start.elapsed().as_secs_f64();
    }

    /// The bench dropped its handles; give the supervisor a moment to settle, then read the
    /// memory left.
    async fn settled(&mut self, report: &mut Report) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rss = rss_bytes();
        if self.cycle == 0 {
            report.put("spawn_all", self.spawn);
            report.put("stop_all", self.stop);
            report.put("rss_live", (self.live - self.rss_before) / self.children);
            report.put("rss_after_stop", (rss - self.rss_before) / self.children);
            self.rss_after_first = rss;
        } else {
            report.put("rss_cycle", (rss - self.rss_after_first) / self.children);
        }
        self.cycle += 1;
    }
}

mod herd {
    //! herd-supervision on actix.

    use super::*;
    use actix::prelude::*;
    use herd_supervision::{
        Backoff, ChildHandle, ChildSpec, EventKind, Intensity, Restart, SupervisorSpec,
        stop_abnormal,
    };

    struct Counter {
        count: u64,
        incarnation: u64,
        shared: Arc<Shared>,
    }

    impl Counter {
        fn new(shared: &Arc<Shared>) -> Self {
            Self {
                count: 0,
                incarnation: shared.next_incarnation(),
                shared: shared.clone(),
            }
        }
    }

    impl Actor for Counter {
        type Context = Context<Self>;
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Inc;

    impl Handler<Inc> for Counter {
        type Result = ();
        fn handle(&mut self, _: Inc, _: &mut Context<Self>) {
            self.count += 1;
        }
    }

    #[derive(Message)]
    #[rtype(result = "u64")]
    struct Get;

    impl Handler<Get> for Counter {
        type Result = u64;
        fn handle(&mut self, _: Get, _: &mut Context<Self>) -> u64 {
            self.count
        }
    }

    #[derive(Message)]
    #[rtype(result = "u64")]
    struct Ping;

    impl Handler<Ping> for Counter {
        type Result = u64;
        fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> u64 {
            self.shared.mark_ping();
            self.incarnation
        }
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Fail(FailKind);

    impl Handler<Fail> for Counter {
        type Result = ();
        fn handle(&mut self, Fail(kind): Fail, ctx: &mut Context<Self>) {
            match kind {
                FailKind::Panic => panic!("bench"),
                FailKind::Error => stop_abnormal(ctx, "bench"),
            }
        }
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Stop;

    impl Handler<Stop> for Counter {
        type Result = ();
        fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }

    fn unlimited() -> Intensity {
        Intensity::new(u32::MAX, Duration::from_secs(1)).unwrap()
    }

    async fn throughput(sizes: Sizes, report: &mut Report) {
        let shared = Arc::new(Shared::default());
        let factory_shared = shared.clone();
        let sup = SupervisorSpec::new("tp")
            .child(ChildSpec::new("c", move || Counter::new(&factory_shared)))
            .start()
            .unwrap();
        let addr = bounded("throughput child", async {
            loop {
                if let Some(addr) = sup.where_is::<Counter>("c").await {
                    break addr;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        let (mut asks, mut tells) = (Vec::new(), Vec::new());
        for _ in 0..=sizes.batches {
            let start = Instant::now();
            for _ in 0..sizes.asks {
                addr.send(Get).await.unwrap();
            }
            asks.push(sizes.asks as f64 / start.elapsed().as_secs_f64());

            let before = addr.send(Get).await.unwrap();
            let start = Instant::now();
            for _ in 0..sizes.tells {
                addr.do_send(Inc);
            }
            let after = addr.send(Get).await.unwrap();
            tells.push(sizes.tells as f64 / start.elapsed().as_secs_f64());
            assert_eq!(after - before, sizes.tells);
        }
        // The first batch of each is a warm-up.
        report.put("ask_rate", median(asks.split_off(1)));
        report.put("tell_rate", median(tells.split_off(1)));
        sup.shutdown().await;
    }

    async fn restarts(sizes: Sizes, kind: FailKind, report: &mut Report) {
        let shared = Arc::new(Shared::default());
        let factory_shared = shared.clone();
        let spec = SupervisorSpec::new("rs")
            .intensity(unlimited())
            .backoff(Backoff::none())
            .child(
                ChildSpec::new("c", move || Counter::new(&factory_shared))
                    .restart(Restart::Permanent),
            );
        let mut events = spec.subscribe();
        let sup = spec.start().unwrap();
        let mut started = async || {
            bounded("a child start", async {
                while !matches!(events.recv().await.unwrap().kind, EventKind::Started { .. }) {}
            })
            .await;
            sup.registry().get::<Counter>("rs/c").unwrap()
        };
        let mut addr = started().await;
        let mut latencies = Vec::with_capacity(sizes.restarts);
        for i in 0..sizes.restarts {
            let failed_at = Instant::now();
            addr.do_send(Fail(kind));
            addr = started().await;
            let incarnation = addr.send(Ping).await.unwrap();
            assert_eq!(incarnation, i as u64 + 2, "a new incarnation answered");
            latencies.push(shared.take_ping() - failed_at);
        }
        put_latencies(report, kind, latencies);
        sup.shutdown().await;
    }

    async fn dynamic(sizes: Sizes, report: &mut Report) {
        let shared = Arc::new(Shared::default());
        let sup = SupervisorSpec::dynamic("dyn").start().unwrap();
        // The supervisor is running once it answers.
        let _ = sup.where_is::<Counter>("none").await;
        let mut cycles = Cycles::new(sizes);
        for cycle in 0..2 {
            let start = Instant::now();
            let mut handles: Vec<ChildHandle<Counter>> = Vec::with_capacity(sizes.children);
            for i in 0..sizes.children {
                let child_shared = shared.clone();
                let handle = sup
                    .start_child(ChildSpec::new(format!("w{cycle}-{i}"), move || {
                        Counter::new(&child_shared)
                    }))
                    .await
                    .unwrap();
                handle.addr().unwrap().send(Get).await.unwrap();
                handles.push(handle);
            }
            cycles.spawned(start);

            let start = Instant::now();
            for handle in &handles {
                handle.addr().unwrap().do_send(Stop);
            }
            for handle in &handles {
                bounded("a child exit", handle.wait()).await;
            }
            cycles.stopped(start);
            drop(handles);
            cycles.settled(report).await;
        }
        sup.shutdown().await;
    }

    pub(super) fn run(sizes: Sizes) -> Report {
        System::new().block_on(async {
            let mut report = Report::default();
            throughput(sizes, &mut report).await;
            quietly(async || restarts(sizes, FailKind::Panic, &mut report).await).await;
            restarts(sizes, FailKind::Error, &mut report).await;
            dynamic(sizes, &mut report).await;
            report
        })
    }
}

mod kam {
    //! kameo: a plain supervisor actor, children spawned with `supervise_with`.

    use super::*;
    use kameo::actor::{Actor, ActorRef, Spawn};
    use kameo::error::Infallible;
    use kameo::mailbox;
    use kameo::message::{Context, Message};
    use kameo::supervision::RestartPolicy;

    struct Sup;

    impl Actor for Sup {
        type Args = ();
        type Error = Infallible;
        async fn on_start(_: (), _: ActorRef<Self>) -> Result<Self, Infallible> {
            Ok(Sup)
        }
    }

    struct Counter {
        count: u64,
        incarnation: u64,
        shared: Arc<Shared>,
    }

    impl Actor for Counter {
        type Args = Arc<Shared>;
        type Error = Infallible;
        async fn on_start(shared: Arc<Shared>, _: ActorRef<Self>) -> Result<Self, Infallible> {
            Ok(Counter {
                count: 0,
                incarnation: shared.next_incarnation(),
                shared,
            })
        }
    }

    struct Inc;
    impl Message<Inc> for Counter {
        type Reply = ();
        async fn handle(&mut self, _: Inc, _: &mut Context<Self, ()>) {
            self.count += 1;
        }
    }

    struct Get;
    impl Message<Get> for Counter {
        type Reply = u64;
        async fn handle(&mut self, _: Get, _: &mut Context<Self, u64>) -> u64 {
            self.count
        }
    }

    struct Ping;
    impl Message<Ping> for Counter {
        type Reply = u64;
        async fn handle(&mut self, _: Ping, _: &mut Context<Self, u64>) -> u64 {
            self.shared.mark_ping();
            self.incarnation
        }
    }

    struct Fail(FailKind);
    impl Message<Fail> for Counter {
        type Reply = Result<(), String>;
        async fn handle(
            &mut self,
            Fail(kind): Fail,
            _: &mut Context<Self, Result<(), String>>,
        ) -> Result<(), String> {
            match kind {
                FailKind::Panic => panic!("bench"),
                // A `tell` whose handler returns `Err` goes to `on_panic`, which stops the
                // actor by default; its supervisor restarts it.
                FailKind::Error => Err("bench".into()),
            }
        }
    }

    struct Stop;
    impl Message<Stop> for Counter {
        type Reply = ();
        async fn handle(&mut self, _: Stop, ctx: &mut Context<Self, ()>) {
            ctx.stop();
        }
    }

    async fn supervised(
        sup: &ActorRef<Sup>,
        shared: &Arc<Shared>,
        policy: RestartPolicy,
    ) -> ActorRef<Counter> {
        let shared = shared.clone();
        let child = Counter::supervise_with(sup, move || shared.clone())
            .restart_policy(policy)
            .restart_limit(u32::MAX, Duration::from_secs(1))
            // Unbounded, like actix's `do_send` and ractor's `cast`.
            .spawn_with_mailbox(mailbox::unbounded())
            .await;
        child.wait_for_startup().await;
        child
    }

    async fn throughput(sizes: Sizes, report: &mut Report) {
        let shared = Arc::new(Shared::default());
        let sup = Sup::spawn(());
        let addr = supervised(&sup, &shared, RestartPolicy::Permanent).await;
        let (mut asks, mut tells) = (Vec::new(), Vec::new());
        for _ in 0..=sizes.batches {
            let start = Instant::now();
            for _ in 0..sizes.asks {
                addr.ask(Get).await.unwrap();
            }
            asks.push(sizes.asks as f64 / start.elapsed().as_secs_f64());

            let before = addr.ask(Get).await.unwrap();
            let start = Instant::now();
            for _ in 0..sizes.tells {
                addr.tell(Inc).try_send().unwrap();
            }
            let after = addr.ask(Get).await.unwrap();
            tells.push(sizes.tells as f64 / start.elapsed().as_secs_f64());
            assert_eq!(after - before, sizes.tells);
        }
        report.put("ask_rate", median(asks.split_off(1)));
        report.put("tell_rate", median(tells.split_off(1)));
        sup.stop_gracefully().await.unwrap();
        sup.wait_for_shutdown().await;
    }

    async fn restarts(sizes: Sizes, kind: FailKind, report: &mut Report) {
        let shared = Arc::new(Shared::default());
        let sup = Sup::spawn(());
        let addr = supervised(&sup, &shared, RestartPolicy::Permanent).await;
        let mut latencies = Vec::with_capacity(sizes.restarts);
        for i in 0..sizes.restarts {
            let failed_at = Instant::now();
            addr.tell(Fail(kind)).try_send().unwrap();
            // kameo restarts the actor behind the same reference and mailbox: the `Ping`
            // waits there for the next incarnation.
            let incarnation = bounded("a restarted child", addr.ask(Ping)).await.unwrap();
            assert_eq!(incarnation, i as u64 + 2, "a new incarnation answered");
            latencies.push(shared.take_ping() - failed_at);
        }
        put_latencies(report, kind, latencies);
        sup.stop_gracefully().await.unwrap();
        sup.wait_for_shutdown().await;
    }

    async fn dynamic(sizes: Sizes, report: &mut Report) {
        let shared = Arc::new(Shared::default());
        let sup = Sup::spawn(());
        sup.wait_for_startup().await;
        let mut cycles = Cycles::new(sizes);
        for _ in 0..2 {
            let start = Instant::now();
            let mut children = Vec::with_capacity(sizes.children);
            for _ in 0..sizes.children {
                // `Never` is kameo's temporary child.
                let child = supervised(&sup, &shared, RestartPolicy::Never).await;
                child.ask(Get).await.unwrap();
                children.push(child);
            }
            cycles.spawned(start);

            let start = Instant::now();
            for child in &children {
                child.tell(Stop).try_send().unwrap();
            }
            for child in &children {
                bounded("a child exit", child.wait_for_shutdown()).await;
            }
            cycles.stopped(start);
            drop(children);
            cycles.settled(report).await;
        }
        sup.stop_gracefully().await.unwrap();
        sup.wait_for_shutdown().await;
    }

    pub(super) fn run(sizes: Sizes, runtime: tokio::runtime::Runtime) -> Report {
        runtime.block_on(async {
            let mut report = Report::default();
            throughput(sizes, &mut report).await;
            quietly(async || restarts(sizes, FailKind::Panic, &mut report).await).await;
            restarts(sizes, FailKind::Error, &mut report).await;
            dynamic(sizes, &mut report).await;
            report
        })
    }
}

mod rac {
    //! ractor with ractor-supervisor: a static `Supervisor` (one-for-one) for throughput
    //! and restarts, a `DynamicSupervisor` for the dynamic children.

    use super::*;
    use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, call};
    use ractor_supervisor::{
        ChildSpec, DynamicSupervisor, DynamicSupervisorOptions, Restart, SpawnFn, Supervisor,
        SupervisorArguments, SupervisorOptions, SupervisorStrategy,
    };
    use tokio::sync::mpsc;

    enum Msg {
        Inc,
        Get(RpcReplyPort<u64>),
        Ping(RpcReplyPort<u64>),
        Fail(FailKind),
        Stop,
    }

    struct Args {
        shared: Arc<Shared>,
        /// Told each new incarnation's reference (the bench's "child started" signal).
        started: Option<mpsc::UnboundedSender<ActorRef<Msg>>>,
    }

    struct State {
        count: u64,
        incarnation: u64,
        shared: Arc<Shared>,
    }

    struct Counter;

    impl Actor for Counter {
        type Msg = Msg;
        type State = State;
        type Arguments = Args;

        async fn pre_start(
            &self,
            myself: ActorRef<Msg>,
            args: Args,
        ) -> Result<State, ActorProcessingErr> {
            if let Some(started) = args.started {
                let _ = started.send(myself);
            }
            Ok(State {
                count: 0,
                incarnation: args.shared.next_incarnation(),
                shared: args.shared,
            })
        }

        async fn handle(
            &self,
            myself: ActorRef<Msg>,
            msg: Msg,
            state: &mut State,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                Msg::Inc => state.count += 1,
                Msg::Get(reply) => reply.send(state.count)?,
                Msg::Ping(reply) => {
                    state.shared.mark_ping();
                    reply.send(state.incarnation)?;
                }
                Msg::Fail(FailKind::Panic) => panic!("bench"),
                Msg::Fail(FailKind::Error) => return Err("bench".into()),
                Msg::Stop => myself.stop(None),
            }
            Ok(())
        }
    }

    fn spawn_fn(
        shared: &Arc<Shared>,
        started: Option<mpsc::UnboundedSender<ActorRef<Msg>>>,
    ) -> SpawnFn {
        let shared = shared.clone();
        SpawnFn::new(move |supervisor, id| {
            let args = Args {
                shared: shared.clone(),
                started: started.clone(),
            };
            async move {
                let (child, _) = Supervisor::spawn_linked(id, Counter, args, supervisor).await?;
                Ok(child.get_cell())
            }
        })
    }

    fn child_spec(id: &str, restart: Restart, spawn_fn: SpawnFn) -> ChildSpec {
        ChildSpec {
            id: id.into(),
            restart,
            spawn_fn,
            backoff_fn: None,
            reset_after: None,
        }
    }

    async fn supervisor(
        name: &str,
        shared: &Arc<Shared>,
    ) -> (
        ActorRef<ractor_supervisor::SupervisorMsg>,
        mpsc::UnboundedReceiver<ActorRef<Msg>>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let child_id = format!("{name}-c");
        let args = SupervisorArguments {
            child_specs: vec![child_spec(
                &child_id,
                Restart::Permanent,
                spawn_fn(shared, Some(tx)),
            )],
            options: SupervisorOptions {
                strategy: SupervisorStrategy::OneForOne,
                max_restarts: usize::MAX,
                max_window: Duration::from_secs(1),
                reset_after: None,
            },
        };
        let (sup, _) = Supervisor::spawn(name.into(), args).await.unwrap();
        (sup, rx)
    }

    async fn throughput(sizes: Sizes, report: &mut Report) {
        let shared = Arc::new(Shared::default());
        let (sup, mut started) = supervisor("tp", &shared).await;
        let addr = bounded("throughput child", started.recv()).await.unwrap();
        let (mut asks, mut tells) = (Vec::new(), Vec::new());
        for _ in 0..=sizes.batches {
            let start = Instant::now();
            for _ in 0..sizes.asks {
                call!(addr, Msg::Get).unwrap();
            }
            asks.push(sizes.asks as f64 / start.elapsed().as_secs_f64());

            let before = call!(addr, Msg::Get).unwrap();
            let start = Instant::now();
            for _ in 0..sizes.tells {
                addr.cast(Msg::Inc).unwrap();
            }
            let after = call!(addr, Msg::Get).unwrap();
            tells.push(sizes.tells as f64 / start.elapsed().as_secs_f64());
            assert_eq!(after - before, sizes.tells);
        }
        report.put("ask_rate", median(asks.split_off(1)));
        report.put("tell_rate", median(tells.split_off(1)));
        sup.stop_and_wait(None, Some(WAIT)).await.unwrap();
    }

    async fn restarts(sizes: Sizes, kind: FailKind, report: &mut Report) {
        let shared = Arc::new(Shared::default());
        let name = match kind {
            FailKind::Panic => "rs-panic",
            FailKind::Error => "rs-error",
        };
        let (sup, mut started) = supervisor(name, &shared).await;
        let mut addr = bounded("a child start", started.recv()).await.unwrap();
        let mut latencies = Vec::with_capacity(sizes.restarts);
        for i in 0..sizes.restarts {
            let failed_at = Instant::now();
            addr.cast(Msg::Fail(kind)).unwrap();
            addr = bounded("a child restart", started.recv()).await.unwrap();
            let incarnation = call!(addr, Msg::Ping).unwrap();
            assert_eq!(incarnation, i as u64 + 2, "a new incarnation answered");
            latencies.push(shared.take_ping() - failed_at);
        }
        put_latencies(report, kind, latencies);
        sup.stop_and_wait(None, Some(WAIT)).await.unwrap();
    }

    async fn dynamic(sizes: Sizes, report: &mut Report) {
        let shared = Arc::new(Shared::default());
        let options = DynamicSupervisorOptions {
            max_children: None,
            max_restarts: usize::MAX,
            max_window: Duration::from_secs(1),
            reset_after: None,
        };
        let (sup, _) = DynamicSupervisor::spawn("dyn".into(), options)
            .await
            .unwrap();
        let spawn = spawn_fn(&shared, None);
        let mut cycles = Cycles::new(sizes);
        for cycle in 0..2 {
            let start = Instant::now();
            let mut children = Vec::with_capacity(sizes.children);
            for i in 0..sizes.children {
                let id = format!("w{cycle}-{i}");
                let spec = child_spec(&id, Restart::Temporary, spawn.clone());
                DynamicSupervisor::spawn_child(sup.clone(), spec)
                    .await
                    .unwrap();
                let child = ActorRef::<Msg>::where_is(&id).unwrap();
                call!(child, Msg::Get).unwrap();
                children.push(child);
            }
            cycles.spawned(start);

            let start = Instant::now();
            for child in &children {
                child.cast(Msg::Stop).unwrap();
            }
            for child in &children {
                child.wait(Some(WAIT)).await.unwrap();
            }
            cycles.stopped(start);
            drop(children);
            cycles.settled(report).await;
        }
        sup.stop_and_wait(None, Some(WAIT)).await.unwrap();
    }

    pub(super) fn run(sizes: Sizes, runtime: tokio::runtime::Runtime) -> Report {
        runtime.block_on(async {
            let mut report = Report::default();
            throughput(sizes, &mut report).await;
            quietly(async || restarts(sizes, FailKind::Panic, &mut report).await).await;
            restarts(sizes, FailKind::Error, &mut report).await;
            dynamic(sizes, &mut report).await;
            report
        })
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The columns of the table, each a role run in its own process.
const ROLES: [(&str, &str); 5] = [
    ("herd", "herd"),
    ("kameo", "kameo"),
    ("ractor", "ractor"),
    ("kameo-mt", "kameo mt"),
    ("ractor-mt", "ractor mt"),
];

fn run_role(role: &str, sizes: Sizes) {
    let report = match role {
        "herd" => herd::run(sizes),
        "kameo" => kam::run(sizes, current_thread()),
        "ractor" => rac::run(sizes, current_thread()),
        "kameo-mt" => kam::run(sizes, multi_thread()),
        "ractor-mt" => rac::run(sizes, multi_thread()),
        other => panic!("unknown role {other}"),
    };
    report.print();
}

/// Runs one role in a child process and parses its metrics.
fn measure(role: &str) -> BTreeMap<String, f64> {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .env("HERD_BENCH_ROLE", role)
        .output()
        .expect("run a bench role");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        panic!(
            "role {role} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("METRIC "))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Unit {
    Rate,
    Seconds,
    Bytes,
}

impl Unit {
    fn format(self, v: f64) -> String {
        match self {
            Unit::Rate => format!("{:.0}/s", v),
            Unit::Seconds if v < 1e-3 => format!("{:.1} µs", v * 1e6),
            Unit::Seconds if v < 1.0 => format!("{:.2} ms", v * 1e3),
            Unit::Seconds => format!("{v:.2} s"),
            Unit::Bytes => format!("{:.2} KiB", v / 1024.0),
        }
    }

    /// Rates: higher is better; times and memory: lower is better.
    fn best(self, values: impl Iterator<Item = f64>) -> f64 {
        match self {
            Unit::Rate => values.fold(f64::MIN, f64::max),
            _ => values.fold(f64::MAX, f64::min),
        }
    }
}

fn main() {
    let sizes = Sizes::from_env();
    if let Ok(role) = std::env::var("HERD_BENCH_ROLE") {
        run_role(&role, sizes);
        return;
    }
    let quick = sizes.children < 10_000;
    let rounds: usize = std::env::var("HERD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 5 });
    let wall = Instant::now();

    let mut samples: BTreeMap<(&str, String), Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for (role, _) in ROLES {
            let started = Instant::now();
            for (name, value) in measure(role) {
                samples.entry((role, name)).or_default().push(value);
            }
            eprintln!(
                "round {}/{rounds}: {role} done in {:.1} s",
                round + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let value =
        |role: &str, metric: &str| -> f64 { median(samples[&(role, metric.to_string())].clone()) };

    let n = sizes.children;
    let rows: Vec<(String, &str, Unit)> = vec![
        (
            format!("ask, awaited one at a time (msgs/s, {})", sizes.asks),
            "ask_rate",
            Unit::Rate,
        ),
        (
            format!("tell x {} then one ask (msgs/s)", sizes.tells),
            "tell_rate",
            Unit::Rate,
        ),
        (
            "restart after panic, p50".into(),
            "restart_panic_p50",
            Unit::Seconds,
        ),
        (
            "restart after panic, p99".into(),
            "restart_panic_p99",
            Unit::Seconds,
        ),
        (
            "restart after error exit, p50".into(),
            "restart_error_p50",
            Unit::Seconds,
        ),
        (
            "restart after error exit, p99".into(),
            "restart_error_p99",
            Unit::Seconds,
        ),
        (
            format!("spawn {n} children (each answered)"),
            "spawn_all",
            Unit::Seconds,
        ),
        (
            format!("stop {n} children (each exit seen)"),
            "stop_all",
            Unit::Seconds,
        ),
        ("RSS per live child".into(), "rss_live", Unit::Bytes),
        (
            "RSS per child after all stopped".into(),
            "rss_after_stop",
            Unit::Bytes,
        ),
        (
            "RSS growth per child, 2nd spawn + stop cycle".into(),
            "rss_cycle",
            Unit::Bytes,
        ),
    ];

    let mut table: Vec<Vec<String>> = vec![
        std::iter::once("metric".to_string())
            .chain(ROLES.iter().map(|(_, col)| col.to_string()))
            .chain(std::iter::once("herd/best".to_string()))
            .collect(),
    ];
    for (label, metric, unit) in &rows {
        let herd = value("herd", metric);
        let best = unit.best(ROLES[1..].iter().map(|(role, _)| value(role, metric)));
        let mut row = vec![label.clone()];
        row.extend(
            ROLES
                .iter()
                .map(|(role, _)| unit.format(value(role, metric))),
        );
        row.push(if best > 0.0 && herd >= 0.0 {
            format!("{:.2}", herd / best)
        } else {
            "-".into()
        });
        table.push(row);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    println!();
    for (i, row) in table.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                if c == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        println!("| {} |", cells.join(" | "));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("|-{}-|", rule.join("-|-"));
        }
    }
    println!();
    println!(
        "herd/best = herd / the best of the kameo and ractor columns (higher is better for \
         msgs/s, lower for times and memory)"
    );
    println!(
        "runtimes: herd = one actix System (current-thread tokio + LocalSet); kameo, ractor = \
         current-thread tokio; kameo mt, ractor mt = multi-thread tokio, 2 workers"
    );
    println!(
        "restart = from sending the failing message to the new incarnation handling its first \
         message ({} restarts each)",
        sizes.restarts
    );
    println!(
        "spawn = start request + one ask answered by the child, one child at a time; stop = a \
         Stop message to every child, then until every exit was observed; RSS = VmRSS growth / \
         {n}, supervisor alive"
    );
    println!(
        "median of {rounds} round(s), each framework in a fresh process; total {:.1} s",
        wall.elapsed().as_secs_f64()
    );
}
