//! The supervisor actor and its specification.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use actix::{
    Actor, ActorContext, AsyncContext, Context, Handler, ResponseFuture, Running, SpawnHandle,
};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::Instant;

use crate::child::{
    AnyAddr, ChildEnv, ChildSpec, Control, DEFAULT_SUPERVISOR_SHUTDOWN_TIMEOUT, ErasedSpec,
    ExitReporter, prepare_child, set_exit_reason,
};
use crate::config::{BackoffPolicy, ExponentialBackoff, Intensity, Restart, Strategy, valid_name};
use crate::error::{ConfigError, StartError, TerminateError};
use crate::events::{EventKind, ExitReason, SupervisionEvent, SupervisionStats, record};
use crate::handle::SupervisorHandle;
use crate::messages::{ChildExited, ChildInfo, StartChild, TerminateChild, WhereIs, WhichChildren};
use crate::registry::Registry;

/// Default capacity of a tree's event channel; slower subscribers see `Lagged`.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// What every supervisor of one tree shares: events, counters, the registry.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) events: broadcast::Sender<SupervisionEvent>,
    pub(crate) stats: SupervisionStats,
    pub(crate) registry: Registry,
}

impl Shared {
    fn new(capacity: usize) -> Self {
        Self {
            events: broadcast::channel(capacity.max(1)).0,
            stats: SupervisionStats::default(),
            registry: Registry::new(),
        }
    }
}

/// How to build a supervisor: name, strategy, intensity, backoff and children (in start
/// order). Start the root of a tree with [`start`](Self::start); nest one with
/// [`ChildSpec::supervisor`].
pub struct SupervisorSpec {
    name: String,
    strategy: Strategy,
    intensity: Intensity,
    backoff: Arc<dyn BackoffPolicy>,
    dynamic: bool,
    children: Vec<ErasedSpec>,
    shared: Shared,
}

impl SupervisorSpec {
    /// A supervisor named `name` (no `/`): [`Strategy::OneForOne`], [`Intensity::default`],
    /// [`ExponentialBackoff::default`], children [`Restart::Permanent`] unless they say
    /// otherwise.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            strategy: Strategy::OneForOne,
            intensity: Intensity::default(),
            backoff: Arc::new(ExponentialBackoff::default()),
            dynamic: false,
            children: Vec::new(),
            shared: Shared::new(DEFAULT_EVENT_CAPACITY),
        }
    }

    /// A dynamic supervisor (OTP `simple_one_for_one`, Elixir `DynamicSupervisor`): children
    /// are added with [`StartChild`] and removed with [`TerminateChild`] at run time, are
    /// [`Restart::Temporary`] unless they say otherwise, and one's exit never touches its
    /// siblings (the strategy stays [`Strategy::OneForOne`] unless changed).
    pub fn dynamic(name: impl Into<String>) -> Self {
        Self {
            dynamic: true,
            ..Self::new(name)
        }
    }

    /// Sets the restart strategy.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the restart intensity.
    pub fn intensity(mut self, intensity: Intensity) -> Self {
        self.intensity = intensity;
        self
    }

    /// Sets the backoff policy between a child's exit and its restart.
    pub fn backoff(mut self, backoff: impl BackoffPolicy) -> Self {
        self.backoff = Arc::new(backoff);
        self
    }

    /// Adds a child; children start in the order they are added and stop in reverse.
    pub fn child<A: Actor<Context = Context<A>>>(mut self, spec: ChildSpec<A>) -> Self {
        self.children.push(spec.erase());
        self
    }

    /// Publishes the tree's running children in `registry` (default: a fresh one).
    /// Ignored for nested supervisors, which share their root's.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.shared.registry = registry;
        self
    }

    /// Sets the event channel capacity (default [`DEFAULT_EVENT_CAPACITY`]); drops current
    /// subscriptions. Ignored for nested supervisors.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.shared.events = broadcast::channel(capacity.max(1)).0;
        self
    }

    /// Subscribes to the events of the tree this spec will root, before it starts, so
    /// no event is missed.
    pub fn subscribe(&self) -> broadcast::Receiver<SupervisionEvent> {
        self.shared.events.subscribe()
    }

    /// Starts this supervisor as the root of a tree on the current arbiter.
    ///
    /// # Errors
    /// [`ConfigError::NoArbiter`] outside an actix system; [`ConfigError::InvalidName`] or
    /// [`ConfigError::DuplicateChildId`] for a bad name or id (nested specs are checked when
    /// they start; a bad one exits abnormally).
    pub fn start(self) -> Result<SupervisorHandle, ConfigError> {
        if actix::Arbiter::try_current().is_none() {
            return Err(ConfigError::NoArbiter);
        }
        if !valid_name(&self.name) {
            return Err(ConfigError::InvalidName(self.name));
        }
        self.validate(&self.name)?;
        let path: Arc<str> = self.name.as_str().into();
        let shared = self.shared.clone();
        let control = Arc::new(Control::default());
        let (exit_tx, exit_rx) = watch::channel(None);
        let reporter = ExitReporter::new(move |reason| {
            // Nobody may be waiting for the root's exit.
            let _ = exit_tx.send(Some(reason));
        });
        let root_path = path.clone();
        let (addr, launch) = prepare_child(
            move || Supervisor::from_spec(self, root_path, None),
            control.clone(),
            reporter,
            None,
        );
        launch();
        Ok(SupervisorHandle::new(addr, path, shared, control, exit_rx))
    }

    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        for child in &self.children {
            if !valid_name(&child.id) {
                return Err(ConfigError::InvalidName(child.id.clone()));
            }
            if !ids.insert(child.id.as_str()) {
                return Err(ConfigError::DuplicateChildId {
                    supervisor: path.to_owned(),
                    id: child.id.clone(),
                });
            }
        }
        Ok(())
    }
}

impl fmt::Debug for SupervisorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorSpec")
            .field("name", &self.name)
            .field("strategy", &self.strategy)
            .field("intensity", &self.intensity)
            .field("backoff", &self.backoff)
            .field("dynamic", &self.dynamic)
            .field("children", &self.children)
            .finish()
    }
}

impl ChildSpec<Supervisor> {
    /// A nested supervisor as a child: `factory` builds its spec on every (re)start, so a
    /// restarted subtree starts fresh. It shares the root's events, counters and registry;
    /// its path is the parent's path plus `/id` (the nested spec's own name is not used).
    /// Defaults: [`Restart::Permanent`], shutdown timeout
    /// [`DEFAULT_SUPERVISOR_SHUTDOWN_TIMEOUT`] (time to stop its own children).
    pub fn supervisor(
        id: impl Into<String>,
        factory: impl Fn() -> SupervisorSpec + Send + Sync + 'static,
    ) -> Self {
        ChildSpec::with_env(id, move |env: &ChildEnv| {
            Supervisor::from_spec(factory(), env.path.clone(), Some(env.shared.clone()))
        })
        .shutdown_timeout(DEFAULT_SUPERVISOR_SHUTDOWN_TIMEOUT)
    }
}

/// A supervisor: an actix actor that starts its children, watches their exits and applies
/// its strategy, intensity and backoff. Build one with [`SupervisorSpec`].
///
/// Handles [`WhereIs`], [`StartChild`], [`TerminateChild`] and [`WhichChildren`]. Stopping
/// it in any way (its handle's `shutdown`, its parent, dropping every address) first stops
/// its children in reverse start order.
pub struct Supervisor {
    path: Arc<str>,
    strategy: Strategy,
    intensity: Intensity,
    backoff: Arc<dyn BackoffPolicy>,
    default_restart: Restart,
    initial: Vec<ErasedSpec>,
    invalid: Option<ConfigError>,
    children: Vec<Child>,
    shared: Shared,
    restarts: VecDeque<Instant>,
    next_generation: u64,
    plans: VecDeque<Plan>,
    exiting: Option<ExitReason>,
    finished: bool,
    /// Its own address: a supervisor stops when told to, not when nobody holds its address.
    keepalive: Option<actix::Addr<Supervisor>>,
}

struct Child {
    spec: ErasedSpec,
    path: Arc<str>,
    running: Option<RunningChild>,
    /// Backoff attempt of the next restart.
    attempt: u32,
}

struct RunningChild {
    generation: u64,
    control: Arc<Control>,
    addr: AnyAddr,
    started_at: Instant,
    stop_requested: bool,
    kill_timer: Option<SpawnHandle>,
}

/// A queued group operation: stop these children one at a time (each waits for the
/// previous one's exit), then do `then`.
struct Plan {
    to_stop: VecDeque<String>,
    then: Then,
}

enum Then {
    Restart {
        ids: Vec<String>,
        delay: Duration,
    },
    Remove {
        id: String,
        reply: oneshot::Sender<()>,
    },
    Exit,
}

impl Plan {
    fn covers(&self, id: &str) -> bool {
        self.to_stop.iter().any(|s| s == id)
            || match &self.then {
                Then::Restart { ids, .. } => ids.iter().any(|s| s == id),
                Then::Remove { id: removed, .. } => removed == id,
                Then::Exit => false,
            }
    }
}

impl Supervisor {
    fn from_spec(spec: SupervisorSpec, path: Arc<str>, shared: Option<Shared>) -> Self {
        let invalid = spec.validate(&path).err();
        Self {
            strategy: spec.strategy,
            intensity: spec.intensity,
            backoff: spec.backoff,
            default_restart: if spec.dynamic {
                Restart::Temporary
            } else {
                Restart::Permanent
            },
            initial: spec.children,
            invalid,
            children: Vec::new(),
            shared: shared.unwrap_or(spec.shared),
            restarts: VecDeque::new(),
            next_generation: 0,
            plans: VecDeque::new(),
            exiting: None,
            finished: false,
            keepalive: None,
            path,
        }
    }

    /// This supervisor's path in its tree, e.g. `hub/workers`.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn emit(&self, kind: EventKind) {
        record(&self.shared.events, &self.shared.stats, &self.path, kind);
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.children.iter().position(|c| c.spec.id == id)
    }

    fn add_child(&mut self, spec: ErasedSpec) -> usize {
        let path: Arc<str> = format!("{}/{}", self.path, spec.id).into();
        self.children.push(Child {
            spec,
            path,
            running: None,
            attempt: 0,
        });
        self.children.len() - 1
    }

    fn start_child(&mut self, index: usize, ctx: &mut Context<Self>) -> AnyAddr {
        let generation = self.next_generation;
        self.next_generation += 1;
        let control = Arc::new(Control::default());
        let child = &mut self.children[index];
        let me = ctx.address();
        let id = child.spec.id.clone();
        let reporter = ExitReporter::new(move |reason| {
            me.do_send(ChildExited {
                id,
                generation,
                reason,
            })
        });
        let env = ChildEnv {
            path: child.path.clone(),
            shared: self.shared.clone(),
        };
        let (addr, launch) =
            child
                .spec
                .starter
                .prepare(env, control.clone(), reporter, child.spec.arbiter.clone());
        self.shared
            .registry
            .insert(child.path.clone(), addr.clone());
        child.running = Some(RunningChild {
            generation,
            control,
            addr: addr.clone(),
            started_at: Instant::now(),
            stop_requested: false,
            kill_timer: None,
        });
        let child = child.spec.id.clone();
        // Announced before the child runs, so the start precedes anything it does.
        self.emit(EventKind::Started { child });
        launch();
        addr
    }

    /// Asks a running child to stop and arms its kill timer.
    fn request_stop(&mut self, index: usize, ctx: &mut Context<Self>) {
        let child = &mut self.children[index];
        let Some(running) = child.running.as_mut() else {
            return;
        };
        if running.stop_requested {
            return;
        }
        running.stop_requested = true;
        let control = running.control.clone();
        let timeout = child.spec.shutdown_timeout;
        let id = child.spec.id.clone();
        let generation = running.generation;
        running.kill_timer = Some(ctx.run_later(timeout, move |act, _| {
            act.kill_child(&id, generation, timeout)
        }));
        let child = child.spec.id.clone();
        // Announced first: a child on another thread may react (and emit) at once.
        self.emit(EventKind::Stopping { child });
        control.stop();
    }

    fn kill_child(&mut self, id: &str, generation: u64, timeout: Duration) {
        let Some(running) = self
            .children
            .iter()
            .find(|c| c.spec.id == id)
            .and_then(|c| c.running.as_ref())
            .filter(|r| r.generation == generation)
        else {
            return;
        };
        let control = running.control.clone();
        self.emit(EventKind::Killing {
            child: id.to_owned(),
            timeout,
        });
        control.kill();
    }

    /// Runs queued plans until one has to wait for a child's exit.
    fn advance(&mut self, ctx: &mut Context<Self>) {
        loop {
            let Some(plan) = self.plans.front_mut() else {
                return;
            };
            if let Some(id) = plan.to_stop.front() {
                let running = self
                    .children
                    .iter()
                    .position(|c| c.spec.id == *id && c.running.is_some());
                match running {
                    Some(index) => {
                        self.request_stop(index, ctx);
                        return;
                    }
                    None => {
                        plan.to_stop.pop_front();
                        continue;
                    }
                }
            }
            let Some(plan) = self.plans.pop_front() else {
                return;
            };
            match plan.then {
                Then::Restart { ids, delay } => {
                    // OTP: a temporary sibling stopped by a group restart stays stopped.
                    let default = self.default_restart;
                    self.children.retain(|c| {
                        c.running.is_some()
                            || !ids.contains(&c.spec.id)
                            || c.spec.restart.unwrap_or(default) != Restart::Temporary
                    });
                    self.schedule_restart(ids, delay, ctx);
                }
                Then::Remove { id, reply } => {
                    if let Some(index) = self.index_of(&id) {
                        self.children.remove(index);
                    }
                    // The requester may have given up waiting.
                    let _ = reply.send(());
                }
                Then::Exit => {
                    let reason = self.exiting.clone().unwrap_or(ExitReason::Shutdown);
                    self.finished = true;
                    self.keepalive = None;
                    self.emit(EventKind::Stopped {
                        reason: reason.clone(),
                    });
                    set_exit_reason(reason);
                    ctx.stop();
                    return;
                }
            }
        }
    }

    fn push_plan(&mut self, plan: Plan, ctx: &mut Context<Self>) {
        self.plans.push_back(plan);
        if self.plans.len() == 1 {
            self.advance(ctx);
        }
    }

    /// Stops every child in reverse start order, then the supervisor itself.
    fn begin_exit(&mut self, reason: ExitReason, ctx: &mut Context<Self>) {
        if self.exiting.is_some() {
            return;
        }
        self.exiting = Some(reason.clone());
        self.emit(EventKind::ShutdownStarted { reason });
        // Pending terminations are abandoned: their requesters see `SupervisorGone`.
        self.plans.clear();
        let to_stop = self
            .children
            .iter()
            .rev()
            .map(|c| c.spec.id.clone())
            .collect();
        self.push_plan(
            Plan {
                to_stop,
                then: Then::Exit,
            },
            ctx,
        );
    }

    fn schedule_restart(&mut self, ids: Vec<String>, delay: Duration, ctx: &mut Context<Self>) {
        if delay.is_zero() {
            self.restart_now(&ids, ctx);
        } else {
            ctx.run_later(delay, move |act, ctx| act.restart_now(&ids, ctx));
        }
    }

    /// Starts the listed children that still exist and are not running, in order.
    fn restart_now(&mut self, ids: &[String], ctx: &mut Context<Self>) {
        if self.exiting.is_some() {
            return;
        }
        for id in ids {
            if let Some(index) = self.index_of(id)
                && self.children[index].running.is_none()
            {
                self.start_child(index, ctx);
            }
        }
    }

    /// Counts a restart; true if that exceeds the intensity.
    fn intensity_exceeded(&mut self, now: Instant) -> bool {
        self.restarts.push_back(now);
        let period = self.intensity.period();
        while let Some(&first) = self.restarts.front() {
            if now.duration_since(first) >= period {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        self.restarts.len() > self.intensity.max_restarts() as usize
    }

    fn child_exited(&mut self, msg: ChildExited, ctx: &mut Context<Self>) {
        let Some(index) = self.children.iter().position(|c| {
            c.spec.id == msg.id
                && c.running
                    .as_ref()
                    .is_some_and(|r| r.generation == msg.generation)
        }) else {
            return;
        };
        let child = &mut self.children[index];
        let Some(running) = child.running.take() else {
            return;
        };
        if let Some(timer) = running.kill_timer {
            ctx.cancel_future(timer);
        }
        self.shared.registry.remove(&child.path, &running.addr);
        let restart = child.spec.restart.unwrap_or(self.default_restart);
        let id = msg.id;
        self.emit(EventKind::Exited {
            child: id.clone(),
            reason: msg.reason.clone(),
        });

        // Exits the supervisor asked for, or that a pending group operation already covers,
        // only move that operation along.
        if running.stop_requested
            || self.exiting.is_some()
            || self.plans.iter().any(|p| p.covers(&id))
        {
            self.advance(ctx);
            return;
        }
        if !restart.should_restart(&msg.reason) {
            self.children.remove(index);
            return;
        }
        let now = Instant::now();
        if self.intensity_exceeded(now) {
            let reason = format!(
                "more than {} restarts within {:?}",
                self.intensity.max_restarts(),
                self.intensity.period()
            );
            self.emit(EventKind::Escalated {
                reason: reason.clone(),
            });
            self.begin_exit(ExitReason::Escalated(reason), ctx);
            return;
        }
        let child = &mut self.children[index];
        if now.duration_since(running.started_at) >= self.backoff.reset_after() {
            child.attempt = 0;
        }
        let attempt = child.attempt;
        child.attempt = attempt.saturating_add(1);
        let delay = self.backoff.delay(attempt);
        self.emit(EventKind::Restarting {
            child: id.clone(),
            delay,
            attempt,
        });
        let ids_from = |from: usize| -> Vec<String> {
            self.children[from..]
                .iter()
                .map(|c| c.spec.id.clone())
                .collect()
        };
        let group = match self.strategy {
            Strategy::OneForOne => {
                self.schedule_restart(vec![id], delay, ctx);
                return;
            }
            Strategy::OneForAll => ids_from(0),
            Strategy::RestForOne => ids_from(index),
        };
        let to_stop = group.iter().rev().filter(|s| **s != id).cloned().collect();
        self.push_plan(
            Plan {
                to_stop,
                then: Then::Restart { ids: group, delay },
            },
            ctx,
        );
    }
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("path", &self.path)
            .field("strategy", &self.strategy)
            .field("children", &self.children.len())
            .field("exiting", &self.exiting)
            .finish()
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.keepalive = Some(ctx.address());
        if let Some(err) = self.invalid.take() {
            tracing::error!(supervisor = %self.path, error = %err, "invalid supervisor spec");
            self.finished = true;
            set_exit_reason(ExitReason::Abnormal(err.to_string()));
            ctx.stop();
            return;
        }
        for spec in std::mem::take(&mut self.initial) {
            let index = self.add_child(spec);
            self.start_child(index, ctx);
        }
    }

    fn stopping(&mut self, ctx: &mut Context<Self>) -> Running {
        if !self.finished {
            self.begin_exit(ExitReason::Shutdown, ctx);
        }
        if self.finished {
            Running::Stop
        } else {
            Running::Continue
        }
    }
}

impl Handler<ChildExited> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildExited, ctx: &mut Context<Self>) {
        self.child_exited(msg, ctx);
    }
}

impl<A: Actor> Handler<WhereIs<A>> for Supervisor {
    type Result = Option<actix::Addr<A>>;

    fn handle(&mut self, msg: WhereIs<A>, _: &mut Context<Self>) -> Self::Result {
        let index = self.index_of(msg.id())?;
        let running = self.children[index].running.as_ref()?;
        running.addr.downcast_ref::<actix::Addr<A>>().cloned()
    }
}

impl<A: Actor<Context = Context<A>>> Handler<StartChild<A>> for Supervisor {
    type Result = Result<actix::Addr<A>, StartError>;

    fn handle(&mut self, msg: StartChild<A>, ctx: &mut Context<Self>) -> Self::Result {
        let spec = msg.0;
        if self.exiting.is_some() {
            return Err(StartError::ShuttingDown(self.path.to_string()));
        }
        if !valid_name(spec.id()) {
            return Err(StartError::InvalidId(spec.id().to_owned()));
        }
        if self.index_of(spec.id()).is_some() {
            return Err(StartError::DuplicateId {
                supervisor: self.path.to_string(),
                id: spec.id().to_owned(),
            });
        }
        let index = self.add_child(spec.erase());
        let addr = self.start_child(index, ctx);
        Ok(addr
            .downcast_ref::<actix::Addr<A>>()
            .cloned()
            .expect("a ChildSpec<A> always starts an Addr<A>"))
    }
}

impl Handler<TerminateChild> for Supervisor {
    type Result = ResponseFuture<Result<(), TerminateError>>;

    fn handle(&mut self, msg: TerminateChild, ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        if self.index_of(&id).is_none() {
            let err = TerminateError::NotFound {
                supervisor: self.path.to_string(),
                id,
            };
            return Box::pin(async move { Err(err) });
        }
        let (reply, done) = oneshot::channel();
        self.push_plan(
            Plan {
                to_stop: VecDeque::from([id.clone()]),
                then: Then::Remove { id, reply },
            },
            ctx,
        );
        Box::pin(async move { done.await.map_err(|_| TerminateError::SupervisorGone) })
    }
}

impl Handler<WhichChildren> for Supervisor {
    type Result = Vec<ChildInfo>;

    fn handle(&mut self, _: WhichChildren, _: &mut Context<Self>) -> Vec<ChildInfo> {
        self.children
            .iter()
            .map(|c| ChildInfo {
                id: c.spec.id.clone(),
                running: c.running.is_some(),
            })
            .collect()
    }
}
