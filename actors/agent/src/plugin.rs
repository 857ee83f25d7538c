//! The Plugin actor: one plugin child process, from spawn to reap.
//!
//! An actor instance lives exactly as long as its process. It owns the
//! process's pipes: tasks go to stdin as `PluginCommand` frames (through a
//! [`FrameWriter`]'s bounded queue, so a plugin that does not read slows its
//! callers down instead of growing the agent), `PluginMessage` frames come from stdout,
//! stderr lines become log lines (rate-limited). A separate reaper task owns
//! the `Child` and always waits for it, so no zombie is left behind; on stop
//! it escalates from closing stdin to SIGTERM (to the process group) to
//! SIGKILL — `cgroup.kill` of the plugin's cgroup in cgroup mode (see
//! [`cgroup`](crate::cgroup)), which the process joined before its `exec` —
//! and once the process is gone, whatever it left in its group and its
//! cgroup is killed too and the cgroup removed. Restarting is the
//! [`PluginManager`](super::plugin_manager::PluginManager)'s business: it
//! runs each plugin under its own [`supervisor`](herd_supervision), which
//! builds a new actor for every start.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use herd_codec::proto::{
    Durable, PluginCommand, PluginMessage, Record, TaskResult, TaskStatus, plugin_message,
};
use herd_codec::{CodecError, PluginHostCodec, data_type};
use sha2::{Digest, Sha256};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::{oneshot, watch};
use tokio_util::codec::FramedRead;

use crate::cgroup::{self, Isolation, LimitState, LimitStatus, PluginCgroup};
use crate::config::{PluginLimits, PluginSpec};
use crate::error::PluginError;
use crate::messages::{Ingest, NotifyDurable, RecordsDurable, RunTask};
use herd_supervision::io::{FrameWriter, TrySendError};
use herd_supervision::stop_abnormal;

/// Longest wait, when a plugin is stopped, for its last records' `Durable`
/// before its stdin is closed anyway.
const FINAL_DURABLE_WAIT: Duration = Duration::from_secs(1);
/// Frames queued for a plugin's stdin before callers have to wait.
const STDIN_QUEUE: usize = 64;
/// Stderr lines logged in a burst, and per second after it.
const STDERR_BURST: f64 = 20.0;
const STDERR_PER_SEC: f64 = 5.0;
/// Longest wait, after `cgroup.kill`, for a plugin's cgroup to be empty.
const CGROUP_EMPTY_WAIT: Duration = Duration::from_secs(1);

/// Counters a plugin's actors share with the manager across restarts.
#[derive(Debug, Default)]
pub(crate) struct PluginCounters {
    /// Records read from the plugin's stdout.
    pub records_in: AtomicU64,
    /// Records refused because they used a framework data type (1000-1999).
    pub records_rejected: AtomicU64,
    /// Tasks written to its stdin.
    pub tasks_out: AtomicU64,
    /// Task results read from its stdout.
    pub results_in: AtomicU64,
}

/// Everything a plugin process is started with besides its spec.
#[derive(Debug, Clone)]
pub(crate) struct PluginEnv {
    /// `HERD_AGENT_ID` (empty until the hub assigned one; read at each start).
    pub agent_id: watch::Receiver<String>,
    /// `HERD_PLUGIN_STATE_DIR`, already created.
    pub state_dir: PathBuf,
    /// Where its records go.
    pub records: Recipient<Ingest>,
    /// Who tells when its records are durable (the batcher).
    pub durable: Recipient<NotifyDurable>,
    /// Told when the process started, exited or was refused.
    pub events: Recipient<PluginEvent>,
    /// Counters kept across restarts.
    pub counters: Arc<PluginCounters>,
    /// Timeout of tasks that name none.
    pub task_timeout: Duration,
    /// Largest frame accepted on stdout or written to stdin.
    pub max_frame_length: usize,
    /// Which configuration of the plugin this is (echoed in [`PluginEvent`]).
    pub generation: u64,
    /// How plugins are isolated on this agent.
    pub isolation: Arc<Isolation>,
    /// The plugin's resource caps.
    pub limits: PluginLimits,
}

/// What happened to a plugin's process, for the manager.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct PluginEvent {
    /// The plugin.
    pub name: String,
    /// The configuration it belongs to.
    pub generation: u64,
    /// What happened.
    pub kind: PluginEventKind,
}

/// The kinds of [`PluginEvent`].
#[derive(Debug)]
pub(crate) enum PluginEventKind {
    /// The process runs; tasks go to `addr`.
    Started {
        /// The actor owning the process.
        addr: Addr<Plugin>,
        /// The process id.
        pid: u32,
        /// Its cgroup, in cgroup mode.
        cgroup: Option<PathBuf>,
        /// Which of its limits are in force.
        limits: LimitStatus,
    },
    /// The process ended (and was reaped) without being asked to; the
    /// supervisor restarts it under its backoff.
    Exited {
        /// Why, e.g. "exited with status 1" or the protocol error that made
        /// the agent kill it.
        reason: String,
    },
    /// The start was refused (sha256 mismatch); not restarted.
    Refused {
        /// The error, naming both hashes.
        error: String,
    },
}

/// How to stop a plugin process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopProcess {
    /// Close stdin, wait the grace period, SIGTERM, wait again, SIGKILL.
    Graceful,
    /// SIGKILL now (the plugin broke the protocol).
    Kill,
}

/// Computes the lower-case hex SHA-256 of a file.
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// One plugin process; see the module docs. Built afresh by the plugin's
/// supervisor for every (re)start: `started` checks the hash and spawns the
/// process, an unexpected exit stops the actor abnormally (so the
/// supervisor restarts it under its backoff and intensity), and being
/// stopped stops the process first.
#[derive(Debug)]
pub(crate) struct Plugin {
    spec: Arc<PluginSpec>,
    env: PluginEnv,
    pid: u32,
    stdin: Option<FrameWriter<PluginCommand>>,
    /// Record frames this process sent (the numbering `Durable` uses).
    records_sent: u64,
    /// The highest count the process was told is durable.
    durable_told: u64,
    /// A `NotifyDurable` is out; one at a time per plugin.
    durable_asked: bool,
    control: Option<oneshot::Sender<StopProcess>>,
    pending: HashMap<String, oneshot::Sender<TaskResult>>,
    /// Set when the agent kills the plugin for a protocol error.
    kill_reason: Option<String>,
    /// Whether the process has been reaped.
    reaped: bool,
    /// Set once the actor is asked to stop (so the exit is expected): the
    /// records read before the stop, which the final `Durable` covers.
    /// Records read after it are discarded unconfirmed (the plugin sends
    /// them again after its restart).
    final_count: Option<u64>,
    /// The process's cgroup, in cgroup mode.
    cgroup: Option<PluginCgroup>,
}

impl Plugin {
    /// An actor that will start `spec`'s process when it starts.
    pub(crate) fn new(spec: Arc<PluginSpec>, env: PluginEnv) -> Self {
        Self {
            spec,
            env,
            pid: 0,
            stdin: None,
            records_sent: 0,
            durable_told: 0,
            durable_asked: false,
            control: None,
            pending: HashMap::new(),
            kill_reason: None,
            reaped: true,
            final_count: None,
            cgroup: None,
        }
    }

    fn report(&self, kind: PluginEventKind) {
        self.env.events.do_send(PluginEvent {
            name: self.spec.name.clone(),
            generation: self.env.generation,
            kind,
        });
    }

    fn spawn_error(&self, source: std::io::Error) -> PluginError {
        PluginError::Spawn {
            name: self.spec.name.clone(),
            path: self.spec.path.clone(),
            source,
        }
    }

    /// In cgroup mode, creates the plugin's cgroup with its limits; says
    /// which limits are in force (WARN for one that should be and is not;
    /// the manager already warned about missing controllers).
    fn prepare_cgroup(&mut self) -> Result<LimitStatus, PluginError> {
        let expected = self.env.isolation.expected(&self.env.limits);
        let Some(tree) = self.env.isolation.tree() else {
            return Ok(expected);
        };
        let (cgroup, status) = tree
            .plugin_cgroup(&self.spec.name, &self.env.limits)
            .map_err(|e| self.spawn_error(std::io::Error::other(e)))?;
        for (limit, now, before) in [
            ("memory_max", &status.memory, &expected.memory),
            ("cpu_max", &status.cpu, &expected.cpu),
        ] {
            if let (LimitState::NotInForce(reason), LimitState::InForce) = (now, before) {
                tracing::warn!(plugin = %self.spec.name, limit, %reason,
                    "plugin limit not in force; the plugin runs without it");
            }
        }
        self.cgroup = Some(cgroup);
        Ok(status)
    }

    /// Removes the cgroup made for a process that did not start (empty: the
    /// process never joined it).
    fn remove_unused_cgroup(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            let path = cgroup.path().to_owned();
            actix::spawn(async move {
                if let Err(error) = cgroup.kill_and_remove(CGROUP_EMPTY_WAIT).await {
                    tracing::warn!(%error, cgroup = %path.display(), "cannot remove a plugin cgroup");
                }
            });
        }
    }

    /// Checks the executable's hash (when configured) and spawns it (in its
    /// cgroup, in cgroup mode).
    fn spawn_process(&self) -> Result<Child, PluginError> {
        let spec = &self.spec;
        let spawn_error = |source| self.spawn_error(source);
        if !spec.sha256.is_empty() {
            let actual = sha256_file(&spec.path).map_err(spawn_error)?;
            if !actual.eq_ignore_ascii_case(&spec.sha256) {
                return Err(PluginError::Sha256Mismatch {
                    name: spec.name.clone(),
                    path: spec.path.clone(),
                    expected: spec.sha256.clone(),
                    actual,
                });
            }
        }
        let agent_id = self.env.agent_id.borrow().clone();
        let mut command = Command::new(&spec.path);
        let agent = nix::unistd::getpid();
        // Opened here, close-on-exec: the child only writes to it.
        let procs: Option<OwnedFd> = self
            .cgroup
            .as_ref()
            .map(PluginCgroup::open_procs)
            .transpose()
            .map_err(|e| spawn_error(std::io::Error::other(e)))?;
        // SAFETY: the closure runs in the forked child before `exec`; it only
        // makes the async-signal-safe `prctl`, `getppid` and `write` (of "0"
        // to the already open `cgroup.procs`) system calls and allocates
        // nothing (its errors are raw OS errors). The fd it borrows is owned
        // by the closure, so it is open for as long as the closure can run.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                die_with_parent(agent)?;
                match &procs {
                    Some(procs) => cgroup::join_in_child(procs.as_fd()),
                    None => Ok(()),
                }
            });
        }
        command
            .args(&spec.args)
            .envs(&spec.env)
            .env("HERD_PLUGIN_NAME", &spec.name)
            .env("HERD_PLUGIN_STATE_DIR", &self.env.state_dir)
            .env("HERD_AGENT_ID", agent_id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C in the agent's terminal must
            // not kill plugins before the agent stops them in order.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)
    }

    /// Wires the pipes and the reaper of a freshly spawned process.
    fn attach(&mut self, mut child: Child, ctx: &mut Context<Self>) {
        self.pid = child.id().unwrap_or_default();
        self.reaped = false;
        let max_frame_length = self.env.max_frame_length;
        if let Some(stdout) = child.stdout.take() {
            ctx.add_stream(FramedRead::new(
                stdout,
                PluginHostCodec::with_max_frame_length(max_frame_length),
            ));
        }
        if let Some(stdin) = child.stdin.take() {
            self.stdin = Some(FrameWriter::new(
                stdin,
                PluginHostCodec::with_max_frame_length(max_frame_length),
                STDIN_QUEUE,
            ));
        }
        if let Some(stderr) = child.stderr.take() {
            actix::spawn(log_stderr(self.spec.name.clone(), stderr));
        }
        // The reaper is its own task, not the actor's: even if the actor
        // is dropped, the process is stopped and waited for.
        let (control_tx, control_rx) = oneshot::channel();
        self.control = Some(control_tx);
        let me = ctx.address();
        let (pid, grace, cgroup) = (self.pid, self.spec.stop_grace(), self.cgroup.clone());
        actix::spawn(async move {
            let reason = reap(child, pid, control_rx, grace, cgroup).await;
            me.do_send(Reaped(reason));
        });
    }

    fn stop_process(&mut self, how: StopProcess) {
        // Dropping the writer ends its task once queued tasks are written;
        // that closes stdin.
        self.stdin = None;
        if let Some(control) = self.control.take() {
            let _ = control.send(how);
        }
    }

    /// Hands a record to the batcher and reads nothing more from the plugin
    /// until the batcher took it: a batcher that has no room (its spool is
    /// full or failing) leaves the plugin's stdout unread, its pipe fills and
    /// the plugin waits, instead of records piling up in agent memory.
    fn on_record(&mut self, mut record: Record, ctx: &mut Context<Self>) {
        self.records_sent += 1;
        if self.final_count.is_some() {
            // Read after the stop began: beyond the final confirmation.
            return;
        }
        if data_type::is_reserved(record.data_type) {
            self.env
                .counters
                .records_rejected
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(plugin = %self.spec.name, data_type = record.data_type,
                "refusing a plugin record with a framework data type");
            // Refused is handled: the process may forget it like a stored one.
            self.ask_durable(ctx);
            return;
        }
        self.env.counters.records_in.fetch_add(1, Ordering::Relaxed);
        record.source.clone_from(&self.spec.name);
        let taken = self.env.records.send(Ingest(vec![record]));
        ctx.wait(
            async move {
                // A batcher that is gone (restarting) dropped the record; the
                // plugin's own checkpoint decides what it sends again.
                let _ = taken.await;
            }
            .into_actor(self)
            .map(|(), act, ctx| act.ask_durable(ctx)),
        );
    }

    /// Asks the batcher to say when what this process sent so far is durable,
    /// unless a question is already out (its answer leads to the next one).
    fn ask_durable(&mut self, ctx: &mut Context<Self>) {
        let through = self.final_count.unwrap_or(self.records_sent);
        if self.durable_asked || through <= self.durable_told {
            return;
        }
        self.durable_asked = true;
        self.env.durable.do_send(NotifyDurable {
            to: ctx.address().recipient(),
            through,
        });
    }

    fn on_task_result(&mut self, mut result: TaskResult) {
        self.env.counters.results_in.fetch_add(1, Ordering::Relaxed);
        result.source.clone_from(&self.spec.name);
        match self.pending.remove(&result.task_id) {
            Some(waiter) => {
                let _ = waiter.send(result);
            }
            None => tracing::warn!(plugin = %self.spec.name, task_id = %result.task_id,
                "result for a task that is not pending (late or unknown); dropped"),
        }
    }
}

impl Actor for Plugin {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        kill_leftover_group(&self.env.state_dir);
        let spawned = self
            .prepare_cgroup()
            .and_then(|limits| Ok((self.spawn_process()?, limits)));
        match spawned {
            Ok((child, limits)) => {
                record_group(&self.env.state_dir, child.id());
                self.attach(child, ctx);
                let cgroup = self.cgroup.as_ref().map(|c| c.path().to_owned());
                tracing::info!(plugin = %self.spec.name, version = %self.spec.version,
                    pid = self.pid, cgroup = ?cgroup, "plugin started");
                self.report(PluginEventKind::Started {
                    addr: ctx.address(),
                    pid: self.pid,
                    cgroup,
                    limits,
                });
            }
            Err(e @ PluginError::Sha256Mismatch { .. }) => {
                self.remove_unused_cgroup();
                // Restarting cannot fix the file: a normal stop, so the
                // (transient) child is not restarted; a new config can.
                self.report(PluginEventKind::Refused {
                    error: e.to_string(),
                });
                ctx.stop();
            }
            Err(e) => {
                self.remove_unused_cgroup();
                let reason = e.to_string();
                tracing::error!(plugin = %self.spec.name, %reason, "plugin did not start");
                self.report(PluginEventKind::Exited {
                    reason: reason.clone(),
                });
                stop_abnormal(ctx, reason);
            }
        }
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        if self.reaped {
            return Running::Stop;
        }
        // Asked to stop: the process goes first; `Reaped` stops the actor.
        if self.final_count.is_none() {
            self.final_count = Some(self.records_sent);
            if self.records_sent > self.durable_told && self.stdin.is_some() {
                // Its last records get their confirmation before stdin closes,
                // so a plugin that commits on it (logtail) neither loses nor
                // repeats anything across an orderly restart; bounded.
                self.ask_durable(ctx);
                ctx.run_later(FINAL_DURABLE_WAIT, |act, _| {
                    act.stop_process(StopProcess::Graceful)
                });
            } else {
                self.stop_process(StopProcess::Graceful);
            }
        }
        Running::Continue
    }
}

impl StreamHandler<Result<PluginMessage, CodecError>> for Plugin {
    fn handle(&mut self, item: Result<PluginMessage, CodecError>, ctx: &mut Context<Self>) {
        match item {
            Ok(PluginMessage { kind }) => match kind {
                Some(plugin_message::Kind::Record(record)) => self.on_record(record, ctx),
                Some(plugin_message::Kind::TaskResult(result)) => self.on_task_result(result),
                None => {} // the codec refuses frames without a kind
            },
            Err(e) if self.kill_reason.is_none() => {
                let reason = format!("protocol error on stdout: {e}");
                tracing::warn!(plugin = %self.spec.name, pid = self.pid, %reason,
                    "killing plugin");
                self.kill_reason = Some(reason);
                self.stop_process(StopProcess::Kill);
            }
            Err(_) => {}
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // stdout closed: the process is exiting; the reaper reports when it
        // is gone, and only then does this actor stop.
    }
}

/// The reaper's report: the process is gone.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Reaped(String);

impl Handler<Reaped> for Plugin {
    type Result = ();

    fn handle(&mut self, Reaped(status): Reaped, ctx: &mut Context<Self>) {
        self.reaped = true;
        self.stdin = None;
        self.pending.clear(); // their futures answer FAILED
        if let Some(count) = self.final_count {
            tracing::info!(plugin = %self.spec.name, pid = self.pid, %status, "plugin stopped");
            let not_taken = self.records_sent.saturating_sub(count);
            if not_taken > 0 {
                // Like records still in the pipe: never confirmed, so a
                // plugin that checkpoints sends them again after its restart.
                tracing::warn!(plugin = %self.spec.name, records = not_taken,
                    "records written after the stop began were not taken");
            }
            ctx.stop();
            return;
        }
        let reason = self.kill_reason.take().unwrap_or(status);
        tracing::warn!(plugin = %self.spec.name, pid = self.pid, %reason, "plugin exited");
        self.report(PluginEventKind::Exited {
            reason: reason.clone(),
        });
        stop_abnormal(ctx, reason);
    }
}

/// A task result made by the agent on the plugin's behalf.
pub(crate) fn agent_result(
    task_id: &str,
    source: &str,
    status: TaskStatus,
    error: String,
) -> TaskResult {
    TaskResult {
        task_id: task_id.to_owned(),
        status: status as i32,
        error,
        source: source.to_owned(),
        ..TaskResult::default()
    }
}

impl Handler<RecordsDurable> for Plugin {
    type Result = ();

    /// Tells the process which of its records it may forget (`Durable`),
    /// then asks about the ones sent since.
    fn handle(&mut self, RecordsDurable(through): RecordsDurable, ctx: &mut Context<Self>) {
        self.durable_asked = false;
        if through > self.durable_told {
            self.durable_told = through;
            if let Some(stdin) = self.stdin.as_ref() {
                let command = PluginCommand::from(Durable { through });
                if let Err(TrySendError::Full(command)) = stdin.try_send(command) {
                    let stdin = stdin.sender();
                    ctx.spawn(
                        async move {
                            // A closed stdin means the process is stopping.
                            let _ = stdin.send(command).await;
                        }
                        .into_actor(self),
                    );
                }
            }
        }
        if self
            .final_count
            .is_some_and(|count| self.durable_told >= count)
        {
            // Queued before stdin closes: the writer writes it first.
            self.stop_process(StopProcess::Graceful);
            return;
        }
        self.ask_durable(ctx);
    }
}

impl Handler<RunTask> for Plugin {
    type Result = ResponseActFuture<Self, TaskResult>;

    fn handle(&mut self, RunTask(task): RunTask, _: &mut Context<Self>) -> Self::Result {
        let name = self.spec.name.clone();
        let id = task.id.clone();
        let refuse = |status, error: String| -> Self::Result {
            let result = agent_result(&task.id, &name, status, error);
            Box::pin(fut::ready(result))
        };
        if self.pending.contains_key(&task.id) {
            return refuse(
                TaskStatus::Rejected,
                format!(
                    "task id {:?} is already pending on plugin {name:?}",
                    task.id
                ),
            );
        }
        let Some(stdin) = self.stdin.as_ref().map(FrameWriter::sender) else {
            return refuse(TaskStatus::Failed, format!("plugin {name:?} is stopping"));
        };
        let timeout = match task.timeout_ms {
            0 => self.env.task_timeout,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let (tx, rx) = oneshot::channel();
        self.pending.insert(task.id.clone(), tx);
        self.env.counters.tasks_out.fetch_add(1, Ordering::Relaxed);
        let command = PluginCommand::from(task);
        let work = async move {
            let outcome = tokio::time::timeout(timeout, async {
                stdin.send(command).await.ok()?;
                rx.await.ok()
            })
            .await;
            match outcome {
                Ok(Some(result)) => result,
                Ok(None) => agent_result(
                    &id,
                    &name,
                    TaskStatus::Failed,
                    format!("plugin {name:?} exited before answering"),
                ),
                Err(_) => agent_result(
                    &id,
                    &name,
                    TaskStatus::Timeout,
                    format!("plugin {name:?} did not answer within {timeout:?}"),
                ),
            }
        };
        Box::pin(work.into_actor(self).map(|result, act, _| {
            act.pending.remove(&result.task_id);
            result
        }))
    }
}

/// In the plugin's process, before `exec`: a SIGKILL when the agent dies,
/// however it dies (kill -9 included), so no plugin outlives its agent.
///
/// The signal follows the thread that spawned the plugin: plugins are spawned
/// from the agent's main arbiter thread, which lives as long as the agent.
fn die_with_parent(agent: nix::unistd::Pid) -> std::io::Result<()> {
    let os_error = |errno: nix::errno::Errno| std::io::Error::from_raw_os_error(errno as i32);
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(os_error)?;
    // The agent may have died between fork and prctl: then nobody signals us.
    if nix::unistd::getppid() != agent {
        return Err(os_error(nix::errno::Errno::ESRCH));
    }
    Ok(())
}

/// File in a plugin's state directory holding its process group id while it
/// runs, so a restarted agent can clear what a killed one left behind.
const GROUP_FILE: &str = ".herd-agent-pgid";

fn record_group(state_dir: &std::path::Path, pid: Option<u32>) {
    if let Some(pid) = pid
        && let Err(error) = std::fs::write(state_dir.join(GROUP_FILE), pid.to_string())
    {
        tracing::warn!(%error, "cannot record the plugin's process group");
    }
}

/// Kills what is left of the process group a previous incarnation of this
/// plugin recorded: after a kill -9 of the agent the plugin itself dies of its
/// parent-death signal, but processes it started live on in its group.
///
/// The group is only killed while its leader (pid = pgid) is gone or a
/// zombie: Linux does not hand out a pid that is still some group's id, so
/// then every member is ours; a live leader means the number now belongs to
/// someone else.
fn kill_leftover_group(state_dir: &std::path::Path) {
    let file = state_dir.join(GROUP_FILE);
    let Ok(text) = std::fs::read_to_string(&file) else {
        return;
    };
    let _ = std::fs::remove_file(&file);
    let Ok(pgid) = text.trim().parse::<i32>() else {
        return;
    };
    if pgid <= 1 || leader_is_running(pgid) {
        return;
    }
    let group = nix::unistd::Pid::from_raw(pgid);
    if nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).is_ok() {
        tracing::warn!(pgid, "killed processes a previous plugin left running");
    }
}

/// Whether a live (not zombie) process has this pid. A zombie leader is the
/// dead plugin itself, not yet reaped by whoever inherited it.
fn leader_is_running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which may hold spaces and ')'.
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    state != Some("Z")
}

/// Sends `signal` to the plugin's whole process group (it is the group's
/// leader), so what it started goes with it.
fn signal_group(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        // ESRCH: nobody left in the group.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// SIGKILL for everything of the plugin: its process group, and its cgroup
/// (`cgroup.kill`, which also reaches processes that left the group).
fn kill_all(pid: u32, cgroup: Option<&PluginCgroup>) {
    if let Some(cgroup) = cgroup
        && let Err(error) = cgroup.kill()
    {
        tracing::warn!(pid, %error, "cannot kill the plugin's cgroup");
    }
    signal_group(pid, nix::sys::signal::Signal::SIGKILL);
}

/// Waits for the process; on request stops it (see [`StopProcess`]).
/// Returns why it ended. The child is always waited for, and once it is gone
/// whatever is left of its process group and its cgroup is killed (and the
/// cgroup removed, waiting at most [`CGROUP_EMPTY_WAIT`] for it to empty):
/// a plugin's children do not outlive it.
async fn reap(
    mut child: Child,
    pid: u32,
    control: oneshot::Receiver<StopProcess>,
    grace: Duration,
    cgroup: Option<PluginCgroup>,
) -> String {
    let status = tokio::select! {
        status = child.wait() => status,
        how = control => {
            if how == Ok(StopProcess::Kill) {
                kill_all(pid, cgroup.as_ref());
                child.wait().await
            } else {
                stop_gracefully(&mut child, pid, grace, cgroup.as_ref()).await
            }
        }
    };
    signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    if let Some(cgroup) = &cgroup
        && let Err(error) = cgroup.kill_and_remove(CGROUP_EMPTY_WAIT).await
    {
        // The next start of the plugin, or of the agent, kills it again.
        tracing::warn!(pid, %error, "the plugin's cgroup is not removed");
    }
    match status {
        Ok(status) => describe(status),
        Err(e) => format!("waiting for the process failed: {e}"),
    }
}

async fn stop_gracefully(
    child: &mut Child,
    pid: u32,
    grace: Duration,
    cgroup: Option<&PluginCgroup>,
) -> std::io::Result<ExitStatus> {
    // stdin is already closed: that is the request to exit.
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        return status;
    }
    tracing::warn!(
        pid,
        "plugin ignored stdin EOF; sending SIGTERM to its process group"
    );
    signal_group(pid, nix::sys::signal::Signal::SIGTERM);
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        return status;
    }
    tracing::warn!(
        pid,
        "plugin ignored SIGTERM; killing its process group and cgroup"
    );
    kill_all(pid, cgroup);
    child.wait().await
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// Token bucket for log lines: `burst` at once, `rate` per second after.
#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    last: tokio::time::Instant,
}

impl TokenBucket {
    fn new(burst: f64, rate: f64) -> Self {
        Self {
            tokens: burst,
            burst,
            rate,
            last: tokio::time::Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Logs the plugin's stderr line by line, rate-limited; suppressed lines
/// are counted and the count is logged with the next line that gets through.
async fn log_stderr(plugin: String, stderr: ChildStderr) {
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut bucket = TokenBucket::new(STDERR_BURST, STDERR_PER_SEC);
    let mut suppressed = 0u64;
    while let Ok(Some(line)) = lines.next_line().await {
        if bucket.take() {
            tracing::info!(plugin = %plugin, suppressed, "stderr: {line}");
            suppressed = 0;
        } else {
            suppressed += 1;
        }
    }
    if suppressed > 0 {
        tracing::info!(plugin = %plugin, suppressed, "stderr lines suppressed by rate limit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn token_bucket_allows_burst_then_rate() {
        let mut bucket = TokenBucket::new(3.0, 2.0);
        assert_eq!((0..5).filter(|_| bucket.take()).count(), 3);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(bucket.take());
        assert!(!bucket.take());
    }

    #[test]
    fn sha256_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
