//! Supervision overhead: message throughput through a supervised actor against a bare
//! actix actor (same run, interleaved rounds), and restart latency (from the failing
//! handler to the new incarnation handling its first message), p50/p99.
//!
//! Run with `cargo bench -p herd-actors --bench supervision`; prints a table.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use herd_supervision::{
    Backoff, ChildSpec, EventKind, Intensity, Restart, SupervisorSpec, stop_abnormal,
};

const BATCH: u64 = 20_000;
const ROUNDS: usize = 30;
const RESTARTS: usize = 2_000;

struct Counter {
    count: u64,
    /// Set by `Fail` just before exiting, read by the next incarnation's first `Ping`.
    marks: Arc<Mutex<Marks>>,
    first_ping_seen: bool,
}

#[derive(Default)]
struct Marks {
    failed_at: Option<Instant>,
    latencies: Vec<Duration>,
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
#[rtype(result = "()")]
enum Fail {
    Abnormal,
    Panic,
}

impl Handler<Fail> for Counter {
    type Result = ();
    fn handle(&mut self, how: Fail, ctx: &mut Context<Self>) {
        self.marks.lock().unwrap().failed_at = Some(Instant::now());
        match how {
            Fail::Abnormal => stop_abnormal(ctx, "bench"),
            Fail::Panic => panic!("bench"),
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Ping;

impl Handler<Ping> for Counter {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {
        if !self.first_ping_seen {
            self.first_ping_seen = true;
            let mut marks = self.marks.lock().unwrap();
            if let Some(at) = marks.failed_at.take() {
                marks.latencies.push(at.elapsed());
            }
        }
    }
}

fn counter(marks: &Arc<Mutex<Marks>>) -> Counter {
    Counter {
        count: 0,
        marks: marks.clone(),
        first_ping_seen: false,
    }
}

/// Messages per second through `addr` for one batch: fire-and-forget, then a round trip.
async fn batch_rate(addr: &Addr<Counter>) -> f64 {
    let before = addr.send(Get).await.unwrap();
    let start = Instant::now();
    for _ in 0..BATCH {
        addr.do_send(Inc);
    }
    let after = addr.send(Get).await.unwrap();
    assert_eq!(after - before, BATCH);
    BATCH as f64 / start.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn restart_latency(how: fn() -> Fail) -> Vec<Duration> {
    let marks = Arc::new(Mutex::new(Marks::default()));
    let child_marks = marks.clone();
    let spec = SupervisorSpec::new("bench")
        .intensity(Intensity::new(u32::MAX, Duration::from_secs(1)).unwrap())
        .backoff(Backoff::none())
        .child(ChildSpec::new("c", move || counter(&child_marks)).restart(Restart::Permanent));
    let mut events = spec.subscribe();
    let sup = spec.start().unwrap();
    for _ in 0..=RESTARTS {
        // Wait for the (re)start, then talk to the new incarnation at once.
        loop {
            let event = events.recv().await.unwrap();
            if matches!(event.kind, EventKind::Started { .. }) {
                break;
            }
        }
        let addr = sup.registry().get::<Counter>("bench/c").unwrap();
        addr.do_send(Ping);
        addr.do_send(how());
    }
    sup.shutdown().await;
    let mut latencies = std::mem::take(&mut marks.lock().unwrap().latencies);
    latencies.sort();
    latencies
}

fn main() {
    System::new().block_on(async {
        let marks = Arc::new(Mutex::new(Marks::default()));
        let bare = counter(&marks).start();
        let child_marks = marks.clone();
        let sup = SupervisorSpec::new("bench")
            .child(ChildSpec::new("c", move || counter(&child_marks)))
            .start()
            .unwrap();
        let supervised = loop {
            if let Some(addr) = sup.where_is::<Counter>("c").await {
                break addr;
            }
        };

        // Warm up, then interleave rounds so drift affects both alike.
        batch_rate(&bare).await;
        batch_rate(&supervised).await;
        let (mut bare_rates, mut sup_rates) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            bare_rates.push(batch_rate(&bare).await);
            sup_rates.push(batch_rate(&supervised).await);
        }
        let (bare_rate, sup_rate) = (median(&mut bare_rates), median(&mut sup_rates));
        sup.shutdown().await;

        let abnormal = restart_latency(|| Fail::Abnormal).await;
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {})); // thousands of expected panics
        let panics = restart_latency(|| Fail::Panic).await;
        std::panic::set_hook(default_hook);

        println!();
        println!("| measurement | value |");
        println!("|---|---|");
        println!("| bare actix actor, msgs/s (median of {ROUNDS} x {BATCH}) | {bare_rate:.0} |");
        println!("| supervised actor, msgs/s | {sup_rate:.0} |");
        println!("| supervised / bare | {:.3}x |", sup_rate / bare_rate);
        for (name, lat) in [("stop_abnormal", &abnormal), ("panic", &panics)] {
            println!(
                "| restart latency after {name} (n={}), p50 / p99 | {:?} / {:?} |",
                lat.len(),
                percentile(lat, 0.50),
                percentile(lat, 0.99)
            );
        }
    });
}
