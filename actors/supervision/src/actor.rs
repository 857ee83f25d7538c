//! The supervisor actor and its specification.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use actix::{
    Actor, ActorContext, AsyncContext, Context, Handler, ResponseFuture, Running, SpawnHandle,
};
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;

use crate::child::{
    ChildEnv, ChildSpec, Control, DEFAULT_SUPERVISOR_SHUTDOWN_TIMEOUT, ErasedSpec, ExitReporter,
    set_exit_reason,
};
use crate::config::{BackoffPolicy, ExponentialBackoff, Intensity, Restart, Strategy, valid_name};
use crate::error::{ConfigError, StartError, TerminateError};
use crate::events::{EventKind, ExitReason, SupervisionEvent, record};
use crate::messages::{ChildExited, ChildInfo, StartChild, TerminateChild, WhereIs, WhichChildren};
use crate::monitor::{ChildHandle, ExitSender};
use crate::registry::{AnyAddr, Registry};
use crate::tree::Shared;

/// Default capacity of a tree's event channel; slower subscribers see `Lagged`.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// How to build a supervisor: name, strategy, intensity, backoff and children (in start
/// order). Start the root of a tree with [`start`](Self::start); nest one with
/// [`ChildSpec::supervisor`].
pub struct SupervisorSpec {
    pub(crate) name: String,
    strategy: Strategy,
    intensity: Intensity,
    backoff: Arc<dyn BackoffPolicy>,
    dynamic: bool,
    children: Vec<ErasedSpec>,
    pub(crate) shared: Shared,
    /// Root-only options that were set (refused on a nested supervisor).
    root_options: Vec<&'static str>,
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
            root_options: Vec::new(),
        }
    }

    /// A dynamic supervisor (OTP `simple_one_for_one`, Elixir `DynamicSupervisor`): children
    /// are added with [`StartChild`] and removed with [`TerminateChild`] at run time, are
    /// [`Restart::Temporary`] unless they say otherwise, and one's exit never touches its
    /// siblings (the strategy stays [`Strategy::OneForOne`] unless changed). When it stops,
    /// it asks all its children to stop at once and waits for every one (OTP does the same
    /// for `simple_one_for_one`), instead of one after the other.
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
    /// Root only: a nested supervisor shares its root's, and one given its own exits with
    /// [`ConfigError::RootOnlyOption`].
    pub fn registry(mut self, registry: Registry) -> Self {
        self.shared.registry = registry;
        self.root_options.push("registry");
        self
    }

    /// Sets the event channel capacity (default [`DEFAULT_EVENT_CAPACITY`]); drops current
    /// subscriptions. Root only, like [`registry`](Self::registry).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.shared.events = broadcast::channel(capacity.max(1)).0;
        self.root_options.push("event_capacity");
        self
    }

    /// Subscribes to the events of the tree this spec will root, before it starts, so
    /// no event is missed.
    pub fn subscribe(&self) -> broadcast::Receiver<SupervisionEvent> {
        self.shared.events.subscribe()
    }

    pub(crate) fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        let default = self.default_restart();
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
            if child.one_shot && child.restart.unwrap_or(default) != Restart::Temporary {
                return Err(ConfigError::OneShotRestart {
                    id: child.id.clone(),
                });
            }
        }
        Ok(())
    }

    fn default_restart(&self) -> Restart {
        if self.dynamic {
            Restart::Temporary
        } else {
            Restart::Permanent
        }
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
            Ok(Supervisor::from_spec(
                factory(),
                env.path.clone(),
                Some(env.shared.clone()),
            ))
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
    dynamic: bool,
    initial: Vec<ErasedSpec>,
    invalid: Option<ConfigError>,
    /// Children by id (O(1) lookup) ...
    children: HashMap<String, Child>,
    /// ... and their ids in start order, keyed by the sequence number they were added with.
    order: BTreeMap<u64, String>,
    next_seq: u64,
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
    seq: u64,
    running: Option<RunningChild>,
    /// Backoff attempt of the next restart.
    attempt: u32,
    last_exit: Option<ExitReason>,
    /// Set for children added with [`StartChild`]: told the last exit when the child leaves.
    monitor: Option<ExitSender>,
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(monitor) = self.monitor.take() {
            monitor.send_replace(Some(self.last_exit.take().unwrap_or(ExitReason::Shutdown)));
        }
    }
}

struct RunningChild {
    generation: u64,
    control: Arc<Control>,
    addr: AnyAddr,
    started_at: Instant,
    stop_requested: bool,
    kill_timer: Option<SpawnHandle>,
}

/// A queued group operation: stop these children — one at a time, each waiting for the
/// previous one's exit, or all at once — then do `then`.
struct Plan {
    to_stop: VecDeque<String>,
    order: StopOrder,
    then: Then,
}

enum StopOrder {
    OneByOne,
    /// All stops requested together; `awaiting` exits are still outstanding.
    AllAtOnce {
        requested: bool,
        awaiting: usize,
    },
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
    fn one_by_one(to_stop: VecDeque<String>, then: Then) -> Self {
        Self {
            to_stop,
            order: StopOrder::OneByOne,
            then,
        }
    }

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
    pub(crate) fn from_spec(spec: SupervisorSpec, path: Arc<str>, shared: Option<Shared>) -> Self {
        let invalid = spec.validate(&path).err().or_else(|| {
            let option = spec.root_options.first().filter(|_| shared.is_some())?;
            Some(ConfigError::RootOnlyOption {
                supervisor: path.to_string(),
                option,
            })
        });
        Self {
            strategy: spec.strategy,
            intensity: spec.intensity,
            backoff: spec.backoff.clone(),
            default_restart: spec.default_restart(),
            dynamic: spec.dynamic,
            initial: spec.children,
            invalid,
            children: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
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

    fn add_child(&mut self, spec: ErasedSpec) -> String {
        let path: Arc<str> = format!("{}/{}", self.path, spec.id).into();
        let id = spec.id.clone();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, id.clone());
        self.children.insert(
            id.clone(),
            Child {
                spec,
                path,
                seq,
                running: None,
                attempt: 0,
                last_exit: None,
                monitor: None,
            },
        );
        id
    }

    /// Removes a child for good; its counters move into the tree's totals.
    fn remove_child(&mut self, id: &str) {
        if let Some(child) = self.children.remove(id) {
            self.order.remove(&child.seq);
            self.shared.stats.retire(&child.path);
        }
    }

    /// Ids in start order.
    fn ids_from(&self, seq: u64) -> Vec<String> {
        self.order.range(seq..).map(|(_, id)| id.clone()).collect()
    }

    fn start_child(&mut self, id: &str, ctx: &mut Context<Self>) -> Option<AnyAddr> {
        let generation = self.next_generation;
        self.next_generation += 1;
        let control = Arc::new(Control::default());
        let me = ctx.address();
        let env_shared = self.shared.clone();
        let child = self.children.get_mut(id)?;
        let reported_id = child.spec.id.clone();
        let reporter = ExitReporter::new(move |reason| {
            me.do_send(ChildExited {
                id: reported_id,
                generation,
                reason,
            })
        });
        let env = ChildEnv {
            path: child.path.clone(),
            shared: env_shared,
        };
        let arbiter = child.spec.arbiter.clone();
        let (addr, launch) = child
            .spec
            .starter
            .prepare(env, control.clone(), reporter, arbiter);
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
        Some(addr)
    }

    /// Asks a running child to stop and arms its kill timer; false if it is not running.
    fn request_stop(&mut self, id: &str, ctx: &mut Context<Self>) -> bool {
        let Some(child) = self.children.get_mut(id) else {
            return false;
        };
        let Some(running) = child.running.as_mut() else {
            return false;
        };
        if running.stop_requested {
            return true;
        }
        running.stop_requested = true;
        let control = running.control.clone();
        let timeout = child.spec.shutdown_timeout;
        let timer_id = child.spec.id.clone();
        let generation = running.generation;
        running.kill_timer = Some(ctx.run_later(timeout, move |act, _| {
            act.kill_child(&timer_id, generation, timeout)
        }));
        // Announced first: a child on another thread may react (and emit) at once.
        self.emit(EventKind::Stopping {
            child: id.to_owned(),
        });
        control.stop();
        true
    }

    fn kill_child(&mut self, id: &str, generation: u64, timeout: Duration) {
        let Some(running) = self
            .children
            .get(id)
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
            match &mut plan.order {
                StopOrder::OneByOne => {
                    if let Some(id) = plan.to_stop.pop_front() {
                        if self.request_stop(&id, ctx) {
                            // Put back: it leaves the queue when its exit arrives.
                            if let Some(plan) = self.plans.front_mut() {
                                plan.to_stop.push_front(id);
                            }
                            return;
                        }
                        continue;
                    }
                }
                StopOrder::AllAtOnce {
                    requested: false, ..
                } => {
                    let to_stop = std::mem::take(&mut plan.to_stop);
                    let awaiting = to_stop
                        .into_iter()
                        .filter(|id| self.request_stop(id, ctx))
                        .count();
                    if let Some(plan) = self.plans.front_mut() {
                        plan.order = StopOrder::AllAtOnce {
                            requested: true,
                            awaiting,
                        };
                    }
                    continue;
                }
                StopOrder::AllAtOnce { awaiting, .. } if *awaiting > 0 => return,
                StopOrder::AllAtOnce { .. } => {}
            }
            let Some(plan) = self.plans.pop_front() else {
                return;
            };
            match plan.then {
                Then::Restart { ids, delay } => {
                    // OTP: a temporary sibling stopped by a group restart stays stopped.
                    let default = self.default_restart;
                    let dropped: Vec<String> = ids
                        .iter()
                        .filter(|id| {
                            self.children.get(id.as_str()).is_some_and(|c| {
                                c.running.is_none()
                                    && c.spec.restart.unwrap_or(default) == Restart::Temporary
                            })
                        })
                        .cloned()
                        .collect();
                    for id in &dropped {
                        self.remove_child(id);
                    }
                    self.schedule_restart(ids, delay, ctx);
                }
                Then::Remove { id, reply } => {
                    self.remove_child(&id);
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

    /// Stops every child (in reverse start order, or all at once under a dynamic
    /// supervisor), then the supervisor itself.
    fn begin_exit(&mut self, reason: ExitReason, ctx: &mut Context<Self>) {
        if self.exiting.is_some() {
            return;
        }
        self.exiting = Some(reason.clone());
        self.emit(EventKind::ShutdownStarted { reason });
        // Pending terminations are abandoned: their requesters see `SupervisorGone`.
        self.plans.clear();
        let to_stop = self.order.values().rev().cloned().collect();
        let order = if self.dynamic {
            StopOrder::AllAtOnce {
                requested: false,
                awaiting: 0,
            }
        } else {
            StopOrder::OneByOne
        };
        self.push_plan(
            Plan {
                to_stop,
                order,
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
            if self.children.get(id).is_some_and(|c| c.running.is_none()) {
                self.start_child(id, ctx);
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

    /// A stop this supervisor asked for ended: one fewer exit for an all-at-once stop to
    /// wait for (a one-by-one stop sees the exit when it advances).
    fn stop_completed(&mut self) {
        if let Some(Plan {
            order: StopOrder::AllAtOnce { awaiting, .. },
            ..
        }) = self.plans.front_mut()
        {
            *awaiting = awaiting.saturating_sub(1);
        }
    }

    fn child_exited(&mut self, msg: ChildExited, ctx: &mut Context<Self>) {
        let id = msg.id;
        let Some(child) = self.children.get_mut(&id) else {
            return;
        };
        let Some(running) = child.running.take_if(|r| r.generation == msg.generation) else {
            return;
        };
        if let Some(timer) = running.kill_timer {
            ctx.cancel_future(timer);
        }
        child.last_exit = Some(msg.reason.clone());
        self.shared.registry.remove(&child.path, &running.addr);
        let restart = child.spec.restart.unwrap_or(self.default_restart);
        let seq = child.seq;
        self.emit(EventKind::Exited {
            child: id.clone(),
            reason: msg.reason.clone(),
        });

        // Exits the supervisor asked for, or that a pending group operation already covers,
        // only move that operation along.
        if running.stop_requested {
            self.stop_completed();
            self.advance(ctx);
            return;
        }
        if self.exiting.is_some() || self.plans.iter().any(|p| p.covers(&id)) {
            self.advance(ctx);
            return;
        }
        if !restart.should_restart(&msg.reason) {
            self.remove_child(&id);
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
        let reset_after = self.backoff.reset_after();
        let Some(child) = self.children.get_mut(&id) else {
            return;
        };
        if now.duration_since(running.started_at) >= reset_after {
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
        let group = match self.strategy {
            Strategy::OneForOne => {
                self.schedule_restart(vec![id], delay, ctx);
                return;
            }
            Strategy::OneForAll => self.ids_from(0),
            Strategy::RestForOne => self.ids_from(seq),
        };
        let to_stop = group.iter().rev().filter(|s| **s != id).cloned().collect();
        self.push_plan(
            Plan::one_by_one(to_stop, Then::Restart { ids: group, delay }),
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
            let id = self.add_child(spec);
            self.start_child(&id, ctx);
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
        let running = self.children.get(msg.id())?.running.as_ref()?;
        running.addr.downcast_ref::<actix::Addr<A>>().cloned()
    }
}

impl<A: Actor<Context = Context<A>>> Handler<StartChild<A>> for Supervisor {
    type Result = Result<ChildHandle<A>, StartError>;

    fn handle(&mut self, msg: StartChild<A>, ctx: &mut Context<Self>) -> Self::Result {
        let spec = msg.0.erase();
        if self.exiting.is_some() {
            return Err(StartError::ShuttingDown(self.path.to_string()));
        }
        if !valid_name(&spec.id) {
            return Err(StartError::InvalidId(spec.id));
        }
        if self.children.contains_key(&spec.id) {
            return Err(StartError::DuplicateId {
                supervisor: self.path.to_string(),
                id: spec.id,
            });
        }
        if spec.one_shot && spec.restart.unwrap_or(self.default_restart) != Restart::Temporary {
            return Err(StartError::OneShotRestart(spec.id));
        }
        let id = self.add_child(spec);
        let child = self.children.get_mut(&id).ok_or_else(|| {
            StartError::ShuttingDown(format!("{}: child {id} vanished", self.path))
        })?;
        let (handle, monitor) = ChildHandle::new(child.path.clone(), self.shared.registry.clone());
        child.monitor = Some(monitor);
        self.start_child(&id, ctx);
        Ok(handle)
    }
}

impl Handler<TerminateChild> for Supervisor {
    type Result = ResponseFuture<Result<(), TerminateError>>;

    fn handle(&mut self, msg: TerminateChild, ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        if !self.children.contains_key(&id) {
            let err = TerminateError::NotFound {
                supervisor: self.path.to_string(),
                id,
            };
            return Box::pin(async move { Err(err) });
        }
        let (reply, done) = oneshot::channel();
        self.push_plan(
            Plan::one_by_one(VecDeque::from([id.clone()]), Then::Remove { id, reply }),
            ctx,
        );
        Box::pin(async move { done.await.map_err(|_| TerminateError::SupervisorGone) })
    }
}

impl Handler<WhichChildren> for Supervisor {
    type Result = Vec<ChildInfo>;

    fn handle(&mut self, _: WhichChildren, _: &mut Context<Self>) -> Vec<ChildInfo> {
        self.order
            .values()
            .filter_map(|id| self.children.get(id))
            .map(|c| ChildInfo {
                id: c.spec.id.clone(),
                running: c.running.is_some(),
            })
            .collect()
    }
}
