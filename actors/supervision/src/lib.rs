//! OTP-style supervision for actix actors.
//!
//! A two-level tree: a root with a worker and a nested one-for-all supervisor. A worker
//! panics, is seen, and is restarted (with its sibling) as a fresh actor; the registry
//! hands out the new address; then the tree shuts down in order.
//!
//! ```
//! use std::time::Duration;
//!
//! use actix::prelude::*;
//! use herd_supervision::{
//!     Backoff, ChildSpec, ExitReason, Intensity, Restart, Strategy, SupervisorSpec,
//! };
//!
//! struct Worker;
//! impl Actor for Worker {
//!     type Context = Context<Self>;
//! }
//!
//! #[derive(Message)]
//! #[rtype(result = "String")]
//! struct Ping;
//! impl Handler<Ping> for Worker {
//!     type Result = String;
//!     fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> String {
//!         "pong".into()
//!     }
//! }
//!
//! #[derive(Message)]
//! #[rtype(result = "()")]
//! struct Crash;
//! impl Handler<Crash> for Worker {
//!     type Result = ();
//!     fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
//!         panic!("worker crashed");
//!     }
//! }
//!
//! /// Built afresh every time the subtree (re)starts.
//! fn workers() -> SupervisorSpec {
//!     SupervisorSpec::new("workers")
//!         .strategy(Strategy::OneForAll)
//!         .backoff(Backoff::none())
//!         .child(ChildSpec::new("w1", || Worker))
//!         .child(ChildSpec::new("w2", || Worker))
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     System::new().block_on(async {
//!         let root = SupervisorSpec::new("app")
//!             .intensity(Intensity::new(5, Duration::from_secs(10))?)
//!             .backoff(Backoff::exponential(
//!                 Duration::from_millis(10),
//!                 Duration::from_secs(1),
//!                 0.2,
//!             )?)
//!             .child(ChildSpec::new("pinger", || Worker).restart(Restart::Transient))
//!             .child(ChildSpec::supervisor("workers", workers))
//!             .start()?;
//!         let mut events = root.subscribe();
//!         let mut wait_for = async |line: &str| -> Result<(), Box<dyn std::error::Error>> {
//!             let deadline = Duration::from_secs(10);
//!             while tokio::time::timeout(deadline, events.recv()).await??.to_string() != line {}
//!             Ok(())
//!         };
//!
//!         wait_for("app/workers: w2 started").await?;
//!         let w1: Addr<Worker> = root.registry().get("app/workers/w1").ok_or("no w1")?;
//!         assert_eq!(w1.send(Ping).await?, "pong");
//!
//!         w1.do_send(Crash);
//!         wait_for("app/workers: w1 exited (panic: worker crashed)").await?;
//!         wait_for("app/workers: w2 started").await?; // one-for-all: w2 restarted too
//!         let w1: Addr<Worker> = root.registry().get("app/workers/w1").ok_or("no w1")?;
//!         assert_eq!(w1.send(Ping).await?, "pong");
//!
//!         assert_eq!(root.shutdown().await, ExitReason::Shutdown);
//!         assert_eq!(root.stats().get("app/workers/w1").map(|s| s.panics), Some(1));
//!         Ok(())
//!     })
//! }
//! ```
//!
//! # OTP semantics on actix
//!
//! | OTP / Akka | here |
//! |---|---|
//! | child spec `#{id, start, restart, shutdown}` | [`ChildSpec`]: id, a factory building a **fresh** actor value on every start, [`Restart`], shutdown timeout, optional [`ArbiterHandle`](actix::ArbiterHandle) |
//! | `permanent` / `transient` / `temporary` | [`Restart::Permanent`] (always), [`Restart::Transient`] (only after an abnormal exit), [`Restart::Temporary`] (never; removed) |
//! | exit reason `normal` / `shutdown` / other | [`ExitReason::Normal`] (`ctx.stop()`), [`ExitReason::Shutdown`] (asked to stop), anything else is abnormal: [`stop_abnormal`], [`ExitReason::Panic`], [`ExitReason::Killed`], [`ExitReason::Escalated`] |
//! | `one_for_one` / `one_for_all` / `rest_for_one` | [`Strategy`]: group restarts stop the others one at a time in reverse start order, wait out the failed child's backoff, then start the group in start order; a temporary sibling stopped this way stays stopped |
//! | `simple_one_for_one`, `DynamicSupervisor` | [`SupervisorSpec::dynamic`] + [`StartChild`] (typed `Addr<A>` back) / [`TerminateChild`] |
//! | `intensity` / `period` | [`Intensity`]: more than `max_restarts` restarts in `period` stop all children in reverse start order and the supervisor exits with [`ExitReason::Escalated`]; its parent handles that like any abnormal exit |
//! | `shutdown => Timeout` then `brutal_kill` | the child is asked to stop (`ctx.stop()`: `stopping`/`stopped` run, buffered output can be flushed); after its timeout its task drops the actor ([`EventKind::Killing`], then [`ExitReason::Killed`]) |
//! | Akka `BackoffSupervisor` | [`Backoff::exponential`] (validated) or any [`BackoffPolicy`]; attempts reset after the child stayed up `reset_after` |
//! | `whereis` / `which_children` | [`Registry`] (tree-wide, by path, always the current incarnation) and [`WhereIs`]; [`WhichChildren`] |
//! | the supervisor of a subtree | a nested supervisor is a `ChildSpec<Supervisor>`: reach it (e.g. a dynamic one, to [`StartChild`]) with `registry.get::<Supervisor>("hub/conns")` |
//!
//! # Finding siblings
//!
//! Create a [`Registry`] first, hand it to the root with [`SupervisorSpec::registry`], and
//! let factories capture clones of it: a child then looks a sibling up by path whenever it
//! needs it (`registry.get::<HeartbeatTracker>("hub/heartbeat")`) and always gets the
//! current incarnation, or `None` while that sibling is down. The address of a child exists
//! before the child runs and is published before its `Started` event, so a sibling started
//! later in the same supervisor finds it. [`WhereIs`] asks one supervisor directly.
//!
//! # How children run
//!
//! actix's own `Supervisor` is not used. A child's mailbox is created first (so its
//! address exists before the actor does), then on the child's arbiter the factory builds
//! the actor and its `ContextFut` is driven by a small task that catches panics from every
//! poll — handlers, `started`, `stopping`, `stopped`, futures spawned on the context — and
//! reports exactly one [`ExitReason`] to the supervisor by message. If the arbiter drops
//! the task (it was stopped), the report still happens. A panic therefore never leaves a
//! silent dead mailbox. The supervisor holds each child's address, so children do not
//! stop just because nobody else holds one. Backoff delays are actor timers
//! (`run_later`), never a loop. Supervisors are actors too and run the same way, which
//! makes trees and failing upward uniform.
//!
//! Every start, exit (with reason), restart with its backoff, kill and escalation is a
//! `tracing` event, a [`SupervisionEvent`] for subscribers, and a counter in
//! [`SupervisionStats`].

pub mod io;

/// The README's supervision example and the examples of `docs/supervision.md`, run as
/// doctests so the documentation stays what the code does.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
#[doc = include_str!("../../../docs/supervision.md")]
struct DocumentedExamples;

mod actor;
mod child;
mod config;
mod error;
mod events;
mod handle;
mod messages;
mod monitor;
mod registry;
mod retry;
mod tree;

pub use actor::{DEFAULT_EVENT_CAPACITY, Supervisor, SupervisorSpec};
pub use child::{
    ChildSpec, DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_SUPERVISOR_SHUTDOWN_TIMEOUT, stop_abnormal,
};
pub use config::{
    Backoff, BackoffPolicy, ExponentialBackoff, Intensity, NoBackoff, Restart, Strategy,
};
pub use error::{ConfigError, StartError, TerminateError};
pub use events::{ChildStats, EventKind, ExitReason, SupervisionEvent, SupervisionStats};
pub use handle::SupervisorHandle;
pub use messages::{ChildInfo, StartChild, TerminateChild, WhereIs, WhichChildren};
pub use monitor::ChildHandle;
pub use registry::Registry;
pub use retry::Retry;
