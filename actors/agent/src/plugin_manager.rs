//! The PluginManager: runs every configured plugin under its own
//! [`supervisor`](herd_supervision) and keeps the picture the agent reports.
//!
//! It owns the desired plugin set (the agent's own declarations, overridden
//! by the hub's push for the names it pushes), starts what is missing,
//! upgrades what changed (the old supervisor is terminated, which stops and
//! reaps the process, then the new one starts), stops what was removed, and
//! leaves everything else alone.
//!
//! The plugins' supervisors are children of the agent tree's dynamic
//! `agent/plugins` supervisor (`agent/plugins/<name>`), started with
//! [`StartChild`] and watched through their [`ChildHandle`]; the manager only
//! holds their handles. A manager that restarts terminates what its
//! predecessor left there before it starts the plugin set again.
//!
//! Each plugin's supervisor has one transient child, the [`Plugin`] actor.
//! An unexpected exit restarts it after an exponential backoff with jitter
//! (the plugin's `restart` policy; the attempt count resets after the
//! process stayed up a whole `period_secs`); more than `max_restarts`
//! restarts within `period_secs` make the supervisor give up (escalate):
//! the plugin is then **failed**, reported at once in a 1001 record and in
//! every heartbeat, and not started again until its configuration changes.
//! A sha256 mismatch fails it at once.
//!
//! When it starts, the manager also decides how plugins are isolated
//! ([`Isolation::set_up`]: in cgroup mode the agent moves into its
//! `agent` leaf) and, in cgroup mode, kills and removes the plugin cgroups
//! a killed agent left, before any plugin starts. A plugin's limits
//! (`[plugin_limits.<name>]`) hold for its name, whether the hub pushed it
//! or not; one that cannot be in force is logged once per configuration
//! (WARN) and reported (see [`GetIsolation`]), and the plugin runs anyway.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use herd_codec::proto::{PluginStatus, TaskResult, TaskStatus};
use tokio::sync::{oneshot, watch};

use crate::cgroup::{Isolation, LimitState, LimitStatus};
use crate::config::{AgentConfig, PluginIsolation, PluginLimits, PluginSpec};
use crate::messages::{
    ApplyHubConfig, GetPluginInfo, Ingest, ListPlugins, NotifyDurable, RunTask, StopPlugins,
};
use crate::plugin::{
    Plugin, PluginCounters, PluginEnv, PluginEvent, PluginEventKind, agent_result,
};
use crate::report::{PluginInfo, PluginState, plugin_record};
use crate::state::StateDir;
use herd_supervision::{
    Backoff, ChildHandle, ChildSpec, ExitReason, Intensity, Restart, StartChild, StartError,
    Supervisor, SupervisorSpec, TerminateChild, WhichChildren,
};

/// Jitter of plugin restart delays: each is shortened by up to this fraction.
const RESTART_JITTER: f64 = 0.5;
/// Time a plugin actor gets to stop on top of its process's grace periods.
const STOP_SLACK: Duration = Duration::from_secs(2);
/// Longest wait for each leftover plugin cgroup to empty after `cgroup.kill`.
const LEFTOVER_WAIT: Duration = Duration::from_secs(2);

/// What happens once a plugin's supervisor has shut down.
#[derive(Debug, PartialEq, Eq)]
enum AfterStop {
    /// Start again with a new spec (upgrade).
    Upgrade(Box<PluginSpec>),
    /// Forget the plugin (removed from the configuration).
    Remove,
    /// Stay stopped (agent shutdown).
    Stay,
}

/// Where a plugin's supervisor is.
#[derive(Debug)]
enum Subtree {
    /// Not running.
    Absent,
    /// Asked for; the `StartChild` reply is on its way.
    Starting,
    /// Running under `agent/plugins`; its monitor reports its end.
    Running,
}

#[derive(Debug)]
struct Entry {
    spec: Arc<PluginSpec>,
    state: PluginState,
    subtree: Subtree,
    process: Option<(Addr<Plugin>, u32)>,
    generation: u64,
    /// Set while the supervisor is being shut down on purpose.
    stopping: Option<AfterStop>,
    starts: u64,
    last_error: String,
    counters: Arc<PluginCounters>,
    /// The running process's cgroup and limits, from its `Started`.
    confinement: Option<(Option<PathBuf>, LimitStatus)>,
}

impl Entry {
    fn new(spec: PluginSpec) -> Self {
        Self {
            spec: Arc::new(spec),
            state: PluginState::Stopped,
            subtree: Subtree::Absent,
            process: None,
            generation: 0,
            stopping: None,
            starts: 0,
            last_error: String::new(),
            counters: Arc::default(),
            confinement: None,
        }
    }

    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: self.spec.name.clone(),
            version: self.spec.version.clone(),
            state: self.state,
            pid: self.process.as_ref().map(|(_, pid)| *pid),
            restarts: self.starts.saturating_sub(1),
            last_error: self.last_error.clone(),
            records_in: self.counters.records_in.load(Ordering::Relaxed),
            records_rejected: self.counters.records_rejected.load(Ordering::Relaxed),
            tasks_out: self.counters.tasks_out.load(Ordering::Relaxed),
            results_in: self.counters.results_in.load(Ordering::Relaxed),
        }
    }
}

/// Ask the plugin manager how plugins are isolated and which limits are in
/// force (for the heartbeat).
#[derive(Debug, Message)]
#[rtype(result = "IsolationReport")]
pub(crate) struct GetIsolation;

/// The answer to [`GetIsolation`].
#[derive(Debug, Clone)]
pub(crate) struct IsolationReport {
    /// The agent's mode.
    pub isolation: Arc<Isolation>,
    /// Per plugin (by name).
    pub plugins: BTreeMap<String, PluginConfinement>,
}

/// One plugin's cgroup and limits, as the heartbeat reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PluginConfinement {
    /// The cgroup of its running process (cgroup mode).
    pub cgroup: Option<PathBuf>,
    /// What is configured.
    pub limits: PluginLimits,
    /// What is in force (nothing while no process runs).
    pub status: LimitStatus,
}

/// Supervises the plugin processes; see the module docs.
#[derive(Debug)]
pub(crate) struct PluginManager {
    /// The dynamic supervisor the plugins' supervisors run under.
    plugins: Addr<Supervisor>,
    state_dir: StateDir,
    agent_id: watch::Receiver<String>,
    records: Recipient<Ingest>,
    durable: Recipient<NotifyDurable>,
    task_timeout: Duration,
    max_frame_length: usize,
    local: Vec<PluginSpec>,
    hub: Option<BTreeMap<String, PluginSpec>>,
    entries: BTreeMap<String, Entry>,
    next_generation: u64,
    shutting_down: bool,
    stopped_waiters: Vec<oneshot::Sender<()>>,
    isolation_mode: PluginIsolation,
    cgroup_dir: Option<PathBuf>,
    limits: BTreeMap<String, PluginLimits>,
    /// Decided when the manager starts.
    isolation: Arc<Isolation>,
}

impl PluginManager {
    /// A manager that will run the plugins declared in `config` once started.
    pub(crate) fn new(
        config: &AgentConfig,
        plugins: Addr<Supervisor>,
        state_dir: StateDir,
        agent_id: watch::Receiver<String>,
        records: Recipient<Ingest>,
        durable: Recipient<NotifyDurable>,
    ) -> Self {
        Self {
            plugins,
            state_dir,
            agent_id,
            records,
            durable,
            task_timeout: Duration::from_millis(config.task_timeout_ms),
            max_frame_length: config.max_frame_length,
            local: config.plugins.clone(),
            hub: None,
            entries: BTreeMap::new(),
            next_generation: 0,
            shutting_down: false,
            stopped_waiters: Vec::new(),
            isolation_mode: config.plugin_isolation,
            cgroup_dir: config.cgroup_dir.clone(),
            limits: config.plugin_limits.clone(),
            isolation: Arc::new(Isolation::ProcessGroup {
                reason: "not set up yet".to_owned(),
            }),
        }
    }

    fn limits_of(&self, name: &str) -> PluginLimits {
        self.limits.get(name).copied().unwrap_or_default()
    }

    /// What the heartbeat reports about isolation.
    fn isolation_report(&self) -> IsolationReport {
        let plugins = self
            .entries
            .iter()
            .map(|(name, entry)| {
                let limits = self.limits_of(name);
                let (cgroup, status) = match (&entry.process, &entry.confinement) {
                    (Some(_), Some((cgroup, status))) => (cgroup.clone(), status.clone()),
                    _ => (
                        None,
                        LimitStatus::none_in_force(&limits, "the plugin is not running".to_owned()),
                    ),
                };
                let confinement = PluginConfinement {
                    cgroup,
                    limits,
                    status,
                };
                (name.clone(), confinement)
            })
            .collect();
        IsolationReport {
            isolation: self.isolation.clone(),
            plugins,
        }
    }

    /// Local declarations, overridden by the hub's for the names it pushes.
    fn desired(&self) -> BTreeMap<String, PluginSpec> {
        let mut desired: BTreeMap<_, _> = self
            .local
            .iter()
            .map(|spec| (spec.name.clone(), spec.clone()))
            .collect();
        if let Some(hub) = &self.hub {
            desired.extend(hub.iter().map(|(name, spec)| (name.clone(), spec.clone())));
        }
        desired
    }

    fn reconcile(&mut self, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        let desired = self.desired();
        let names: Vec<String> = self.entries.keys().cloned().collect();
        for name in names {
            if !desired.contains_key(&name) {
                self.retire(&name, AfterStop::Remove, ctx);
            }
        }
        for (name, spec) in desired {
            match self.entries.get(&name) {
                None => {
                    self.entries.insert(name.clone(), Entry::new(spec));
                    self.start(&name, ctx);
                }
                Some(entry) if *entry.spec == spec && entry.stopping.is_none() => {}
                Some(_) => self.retire(&name, AfterStop::Upgrade(Box::new(spec)), ctx),
            }
        }
    }

    /// Terminates a plugin's supervisor (stopping and reaping its process)
    /// and then does `then`. A later `retire` of the same plugin replaces
    /// what happens afterwards.
    fn retire(&mut self, name: &str, then: AfterStop, ctx: &mut Context<Self>) {
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        let already_stopping = entry.stopping.is_some();
        entry.stopping = Some(then);
        if already_stopping {
            return;
        }
        match entry.subtree {
            // Its monitor sees the end and calls `stopped`.
            Subtree::Running => self.plugins.do_send(TerminateChild(name.to_owned())),
            // Terminated as soon as the start is confirmed.
            Subtree::Starting => {}
            Subtree::Absent => self.stopped(name, ctx),
        }
    }

    /// A plugin's supervisor is gone after `retire`.
    fn stopped(&mut self, name: &str, ctx: &mut Context<Self>) {
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        entry.subtree = Subtree::Absent;
        entry.process = None;
        entry.confinement = None;
        match entry.stopping.take() {
            Some(AfterStop::Remove) => {
                tracing::info!(plugin = name, "plugin removed");
                self.entries.remove(name);
            }
            Some(AfterStop::Upgrade(spec)) => {
                tracing::info!(plugin = name, version = %spec.version,
                    "plugin configuration changed; starting the new one");
                self.entries.insert(name.to_owned(), Entry::new(*spec));
                self.start(name, ctx);
            }
            Some(AfterStop::Stay) | None => entry.state = PluginState::Stopped,
        }
        self.notify_if_all_stopped();
    }

    fn start(&mut self, name: &str, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        if let Isolation::Unavailable { reason } = &*self.isolation {
            let error = reason.clone();
            self.fail(name, error);
            return;
        }
        let limits = self.limits_of(name);
        let expected = self.isolation.expected(&limits);
        for (limit, state) in [("memory_max", &expected.memory), ("cpu_max", &expected.cpu)] {
            if let LimitState::NotInForce(reason) = state {
                tracing::warn!(plugin = name, limit, %reason,
                    "plugin limit configured but not in force; the plugin runs without it");
            }
        }
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        self.next_generation += 1;
        entry.generation = self.next_generation;
        let state_dir = match self.state_dir.plugin_dir(name) {
            Ok(dir) => dir,
            Err(e) => {
                let error = format!("cannot create its state directory: {e}");
                self.fail(name, error);
                return;
            }
        };
        let env = PluginEnv {
            agent_id: self.agent_id.clone(),
            state_dir,
            records: self.records.clone(),
            durable: self.durable.clone(),
            events: ctx.address().recipient(),
            counters: entry.counters.clone(),
            task_timeout: self.task_timeout,
            max_frame_length: self.max_frame_length,
            generation: entry.generation,
            isolation: self.isolation.clone(),
            limits,
        };
        let spec = match plugin_supervisor(entry.spec.clone(), env) {
            Ok(spec) => spec,
            Err(e) => {
                let error = format!("invalid restart policy: {e}");
                self.fail(name, error);
                return;
            }
        };
        entry.subtree = Subtree::Starting;
        entry.state = PluginState::Backoff; // until its process reports
        let (name, generation) = (name.to_owned(), entry.generation);
        let started = self.plugins.send(StartChild(spec));
        ctx.spawn(
            started
                .into_actor(self)
                .map(move |started, act, ctx| match started {
                    Ok(started) => act.subtree_started(&name, generation, started, ctx),
                    Err(mailbox) => {
                        act.subtree_started(&name, generation, Err(mailbox.into()), ctx)
                    }
                }),
        );
    }

    /// The reply to a plugin supervisor's `StartChild`: watch it, or give up.
    fn subtree_started(
        &mut self,
        name: &str,
        generation: u64,
        started: Result<ChildHandle<Supervisor>, StartError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(entry) = self.current(name, generation) else {
            return;
        };
        let handle = match started {
            Ok(handle) => handle,
            Err(error) => {
                entry.subtree = Subtree::Absent;
                if entry.stopping.is_some() {
                    return self.stopped(name, ctx);
                }
                return self.fail(name, format!("cannot start its supervisor: {error}"));
            }
        };
        entry.subtree = Subtree::Running;
        if entry.stopping.is_some() {
            self.plugins.do_send(TerminateChild(name.to_owned()));
        }
        let name = name.to_owned();
        ctx.spawn(
            async move { handle.wait().await }
                .into_actor(self)
                .map(move |reason, act, ctx| act.subtree_ended(&name, generation, reason, ctx)),
        );
    }

    /// A plugin's supervisor left `agent/plugins`: terminated on purpose, or
    /// it gave up (escalated).
    fn subtree_ended(
        &mut self,
        name: &str,
        generation: u64,
        reason: ExitReason,
        ctx: &mut Context<Self>,
    ) {
        let Some(entry) = self.current(name, generation) else {
            return;
        };
        if entry.stopping.is_some() {
            return self.stopped(name, ctx);
        }
        entry.subtree = Subtree::Absent;
        let error = match &reason {
            ExitReason::Escalated(why) => {
                format!("crash loop ({why}); last exit: {}", entry.last_error)
            }
            other => format!("plugin supervisor exited: {other}"),
        };
        self.fail(name, error);
        self.notify_if_all_stopped();
    }

    fn fail(&mut self, name: &str, error: String) {
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        tracing::error!(plugin = name, %error, "plugin failed; not restarting it");
        entry.state = PluginState::Failed;
        entry.process = None;
        entry.confinement = None;
        entry.last_error = error;
        self.records
            .do_send(Ingest(vec![plugin_record(&entry.info(), None)]));
    }

    fn notify_if_all_stopped(&mut self) {
        if self.shutting_down
            && self
                .entries
                .values()
                .all(|e| matches!(e.subtree, Subtree::Absent))
        {
            self.stopped_waiters.drain(..).for_each(|tx| {
                let _ = tx.send(());
            });
        }
    }

    /// The entry of a message's plugin, if the message is not stale.
    fn current(&mut self, name: &str, generation: u64) -> Option<&mut Entry> {
        self.entries
            .get_mut(name)
            .filter(|entry| entry.generation == generation)
    }
}

/// The supervisor of one plugin, as a child of `agent/plugins`: one
/// transient child, the plugin's backoff and restart intensity.
fn plugin_supervisor(
    spec: Arc<PluginSpec>,
    env: PluginEnv,
) -> Result<ChildSpec<Supervisor>, herd_supervision::ConfigError> {
    let restart = &spec.restart;
    let backoff = Backoff::exponential(
        Duration::from_millis(restart.min_backoff_ms),
        Duration::from_millis(restart.max_backoff_ms),
        RESTART_JITTER,
    )?
    .reset_after(spec.restart_period());
    let intensity = Intensity::new(restart.max_restarts, spec.restart_period())?;
    let stop_timeout = spec.stop_grace() * 2 + STOP_SLACK;
    let name = spec.name.clone();
    Ok(ChildSpec::supervisor(name.clone(), move || {
        let (spec, env) = (spec.clone(), env.clone());
        SupervisorSpec::new(name.clone())
            .intensity(intensity)
            .backoff(backoff)
            .child(
                ChildSpec::new("process", move || Plugin::new(spec.clone(), env.clone()))
                    .restart(Restart::Transient)
                    .shutdown_timeout(stop_timeout),
            )
    })
    .restart(Restart::Temporary)
    .shutdown_timeout(stop_timeout + STOP_SLACK))
}

impl Actor for PluginManager {
    type Context = Context<Self>;

    /// Terminates the plugin supervisors a previous incarnation left (it
    /// went away other than through `StopPlugins`: a panic, or a restart),
    /// so none runs next to the ones this one starts; then sets up plugin
    /// isolation, clears the plugin cgroups a killed agent left (cgroup
    /// mode) and reconciles. No message is handled before that is done.
    fn started(&mut self, ctx: &mut Self::Context) {
        let plugins = self.plugins.clone();
        let (mode, cgroup_dir) = (self.isolation_mode, self.cgroup_dir.clone());
        ctx.wait(
            async move {
                let left = plugins.send(WhichChildren).await.unwrap_or_default();
                for child in left {
                    tracing::warn!(plugin = %child.id, "stopping a plugin the previous plugin manager left");
                    let _ = plugins.send(TerminateChild(child.id)).await;
                }
                let isolation = Isolation::set_up(mode, cgroup_dir.as_deref());
                if let Some(tree) = isolation.tree() {
                    tree.clear_leftovers(LEFTOVER_WAIT).await;
                }
                Arc::new(isolation)
            }
            .into_actor(self)
            .map(|isolation, act, ctx| {
                act.isolation = isolation;
                act.reconcile(ctx);
            }),
        );
    }
}

impl Handler<PluginEvent> for PluginManager {
    type Result = ();

    fn handle(&mut self, event: PluginEvent, _: &mut Context<Self>) {
        let Some(entry) = self.current(&event.name, event.generation) else {
            return;
        };
        match event.kind {
            PluginEventKind::Started {
                addr,
                pid,
                cgroup,
                limits,
            } => {
                entry.starts += 1;
                entry.process = Some((addr, pid));
                entry.confinement = Some((cgroup, limits));
                entry.state = PluginState::Running;
            }
            PluginEventKind::Exited { reason } => {
                entry.process = None;
                entry.confinement = None;
                entry.last_error = reason;
                if entry.stopping.is_none() {
                    entry.state = PluginState::Backoff;
                }
            }
            PluginEventKind::Refused { error } => self.fail(&event.name, error),
        }
    }
}

impl Handler<ApplyHubConfig> for PluginManager {
    type Result = ();

    fn handle(&mut self, ApplyHubConfig(set): ApplyHubConfig, ctx: &mut Context<Self>) {
        let mut pushed = BTreeMap::new();
        for config in set.plugins {
            let spec = PluginSpec::from(config);
            if spec.sha256.is_empty() {
                tracing::error!(plugin = %spec.name,
                    "ignoring a hub-pushed plugin without sha256 (only local plugins may omit it)");
                continue;
            }
            if let Err(e) = spec.validate() {
                tracing::error!(error = %e, "ignoring an invalid hub-pushed plugin");
                continue;
            }
            pushed.insert(spec.name.clone(), spec);
        }
        self.hub = Some(pushed);
        self.reconcile(ctx);
    }
}

impl Handler<RunTask> for PluginManager {
    type Result = ResponseFuture<TaskResult>;

    fn handle(&mut self, RunTask(task): RunTask, _: &mut Context<Self>) -> Self::Result {
        let refuse = |status: TaskStatus, error: String| -> Self::Result {
            let result = agent_result(&task.id, &task.target, status, error);
            Box::pin(async move { result })
        };
        let Some(entry) = self.entries.get(&task.target) else {
            return refuse(
                TaskStatus::Rejected,
                format!("no plugin named {:?} on this agent", task.target),
            );
        };
        let Some((addr, _)) = &entry.process else {
            return refuse(
                TaskStatus::Failed,
                format!(
                    "plugin {:?} is not running (state {})",
                    task.target,
                    entry.state.as_str()
                ),
            );
        };
        let addr = addr.clone();
        let (id, target) = (task.id.clone(), task.target.clone());
        Box::pin(async move {
            addr.send(RunTask(task)).await.unwrap_or_else(|_| {
                agent_result(
                    &id,
                    &target,
                    TaskStatus::Failed,
                    format!("plugin {target:?} exited before answering"),
                )
            })
        })
    }
}

impl Handler<ListPlugins> for PluginManager {
    type Result = MessageResult<ListPlugins>;

    fn handle(&mut self, _: ListPlugins, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.entries
                .values()
                .map(|entry| PluginStatus {
                    name: entry.spec.name.clone(),
                    version: entry.spec.version.clone(),
                    pid: entry.process.as_ref().map_or(0, |(_, pid)| *pid),
                    state: entry.state.as_str().to_owned(),
                })
                .collect(),
        )
    }
}

impl Handler<GetIsolation> for PluginManager {
    type Result = MessageResult<GetIsolation>;

    fn handle(&mut self, _: GetIsolation, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.isolation_report())
    }
}

impl Handler<GetPluginInfo> for PluginManager {
    type Result = MessageResult<GetPluginInfo>;

    fn handle(&mut self, _: GetPluginInfo, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.entries.values().map(Entry::info).collect())
    }
}

impl Handler<StopPlugins> for PluginManager {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopPlugins, ctx: &mut Context<Self>) -> Self::Result {
        let names: Vec<String> = self.entries.keys().cloned().collect();
        for name in names {
            self.retire(&name, AfterStop::Stay, ctx);
        }
        self.shutting_down = true;
        let (tx, rx) = oneshot::channel();
        self.stopped_waiters.push(tx);
        self.notify_if_all_stopped();
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
