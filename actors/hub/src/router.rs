//! NATS request/reply on `herd.cmd.<agent_id>`: a `Task` in, a `TaskResult` out.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use herd_codec::proto::{Command, Task, TaskResult, TaskStatus};
use prost::Message as _;

use crate::directory::HubDirectory;
use crate::messages::{AgentGone, CommandRefused, Lookup, TaskDone};
use crate::metrics::HubMetrics;
use crate::sink::NatsLink;

/// Subjects the router serves.
pub(crate) const COMMAND_SUBJECTS: &str = "herd.cmd.*";

#[derive(Debug)]
struct Pending {
    reply: async_nats::Subject,
    timer: SpawnHandle,
    /// The connection the task went to.
    conn_id: u64,
}

/// (agent id, task id).
type TaskKey = (String, String);

/// Where a task request's agent is.
enum Route {
    /// On this hub.
    Here(crate::messages::AgentLink),
    /// On another hub, by KV `herd_agents`.
    Elsewhere,
    /// On no hub.
    Nowhere,
}

/// Serves task requests on `herd.cmd.*`: routes each to the agent's
/// Connection when the agent is here. Every hub on a NATS cluster gets every
/// request; a hub that does not serve the agent stays silent when KV
/// `herd_agents` says another hub does, and answers `OFFLINE` when no hub
/// does (several hubs may say so; the requester takes the first answer).
/// One wildcard subscription per hub instead of one per agent: a
/// subscription per agent cost 8 KiB of hub memory each and tripled the
/// handshake time of 10,000 agents in the bench.
///
/// Replies
/// with the agent's `TaskResult`; or at once with `OFFLINE` when the agent is
/// not connected or its connection ends before it answers, or with
/// `REJECTED` when the agent is not reading its tasks; or with `TIMEOUT` when
/// no result came in time. Each request gets exactly one reply.
#[derive(Debug)]
pub(crate) struct CommandRouter {
    link: NatsLink,
    hub_id: std::sync::Arc<str>,
    directory: HubDirectory,
    metrics: HubMetrics,
    default_timeout: Duration,
    /// Who is waiting, by task.
    pending: HashMap<TaskKey, Pending>,
    /// conn id -> the tasks pending on it, so a connection's end finds its
    /// tasks without a scan of every pending one.
    by_connection: HashMap<u64, HashSet<TaskKey>>,
    /// KV `herd_agents`, once it exists: who serves the agents not here.
    claims: Option<async_nats::jetstream::kv::Store>,
}

impl CommandRouter {
    /// A router finding agents through the Registry in `directory`; tasks
    /// without their own timeout get `default_timeout`.
    pub(crate) fn new(
        link: NatsLink,
        hub_id: std::sync::Arc<str>,
        directory: HubDirectory,
        metrics: HubMetrics,
        default_timeout: Duration,
    ) -> Self {
        Self {
            link,
            hub_id,
            directory,
            metrics,
            default_timeout,
            pending: HashMap::new(),
            by_connection: HashMap::new(),
            claims: None,
        }
    }

    fn insert(&mut self, key: TaskKey, pending: Pending) {
        self.by_connection
            .entry(pending.conn_id)
            .or_default()
            .insert(key.clone());
        self.pending.insert(key, pending);
    }

    /// Takes the pending task `key`, if it is still waiting.
    fn take(&mut self, key: &TaskKey) -> Option<Pending> {
        let pending = self.pending.remove(key)?;
        if let Some(keys) = self.by_connection.get_mut(&pending.conn_id) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_connection.remove(&pending.conn_id);
            }
        }
        Some(pending)
    }

    /// Answers a pending task with a status of the hub's, ending its timer.
    fn give_up(
        &mut self,
        ctx: &mut Context<Self>,
        key: TaskKey,
        status: TaskStatus,
        error: String,
    ) {
        if let Some(pending) = self.take(&key) {
            ctx.cancel_future(pending.timer);
            self.answer(pending.reply, key.1, status, error);
        }
    }

    fn reply(&self, reply: async_nats::Subject, result: &TaskResult) {
        self.metrics.task(outcome(result.status()));
        let client = self.link.client().clone();
        let payload = Bytes::from(result.encode_to_vec());
        actix::spawn(async move {
            if let Err(error) = client.publish(reply, payload).await {
                tracing::warn!(%error, "task reply publish failed");
            }
        });
    }

    fn answer(
        &self,
        reply: async_nats::Subject,
        task_id: String,
        status: TaskStatus,
        error: String,
    ) {
        let result = TaskResult {
            task_id,
            status: status as i32,
            error,
            source: "hub".to_owned(),
            ..TaskResult::default()
        };
        self.reply(reply, &result);
    }

    fn route(&mut self, message: async_nats::Message, ctx: &mut Context<Self>) {
        let Some(reply) = message.reply.clone() else {
            self.metrics.task("bad_request");
            tracing::debug!(subject = %message.subject, "task request without a reply subject ignored");
            return;
        };
        let agent_id = message
            .subject
            .strip_prefix("herd.cmd.")
            .unwrap_or_default()
            .to_owned();
        let mut task = match Task::decode(message.payload) {
            Ok(task) => task,
            Err(error) => {
                return self.answer(
                    reply,
                    String::new(),
                    TaskStatus::Rejected,
                    format!("request body is not a herd.v1.Task: {error}"),
                );
            }
        };
        if task.id.is_empty() {
            task.id = format!("{:016x}", rand::random::<u64>());
        }
        let key = (agent_id.clone(), task.id.clone());
        if self.pending.contains_key(&key) {
            return self.answer(
                reply,
                task.id,
                TaskStatus::Rejected,
                format!("task {} is already pending on agent {agent_id}", key.1),
            );
        }
        let timeout = match task.timeout_ms {
            0 => self.default_timeout,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let lookup = self
            .directory
            .registry()
            .map(|registry| registry.send(Lookup(agent_id.clone())));
        let lookup = async move {
            match lookup {
                Some(lookup) => lookup.await.ok().flatten(),
                None => None,
            }
        };
        let (claims, hub_id) = (self.claims.clone(), self.hub_id.clone());
        let lookup = async move {
            let connection = lookup.await;
            if let Some(connection) = connection {
                return Route::Here(connection);
            }
            let holder = match &claims {
                Some(claims) => crate::claims::holder(claims, &agent_id).await,
                None => None,
            };
            match holder {
                Some(hub) if hub != *hub_id => Route::Elsewhere,
                _ => Route::Nowhere,
            }
        };
        ctx.spawn(lookup.into_actor(self).map(move |route, act, ctx| {
            let connection = match route {
                Route::Here(connection) => connection,
                // The hub serving it answers.
                Route::Elsewhere => return act.metrics.task("elsewhere"),
                Route::Nowhere => {
                    return act.answer(
                        reply,
                        task.id,
                        TaskStatus::Offline,
                        format!("agent {} is not connected", key.0),
                    );
                }
            };
            let timer_key = key.clone();
            let timer = ctx.run_later(timeout, move |act, _ctx| {
                if let Some(pending) = act.take(&timer_key) {
                    act.answer(
                        pending.reply,
                        timer_key.1,
                        TaskStatus::Timeout,
                        format!(
                            "no result from agent {} within {} ms",
                            timer_key.0,
                            timeout.as_millis()
                        ),
                    );
                }
            });
            let conn_id = connection.conn_id();
            act.insert(
                key.clone(),
                Pending {
                    reply,
                    timer,
                    conn_id,
                },
            );
            // The connection drops the task unwritten once the timer has
            // answered TIMEOUT, so the agent never runs a task nobody awaits.
            let queued = connection.task(
                Command {
                    task: Some(task),
                    config: None,
                },
                Instant::now() + timeout,
            );
            ctx.spawn(queued.into_actor(act).map(move |queued, act, ctx| {
                let (status, error) = match queued {
                    Ok(Ok(())) => return,
                    Ok(Err(refused @ CommandRefused::Backlog { .. })) => (
                        TaskStatus::Rejected,
                        format!("agent {} is not reading; {refused}", key.0),
                    ),
                    // The connection's end answers what it had accepted; this
                    // one it never took.
                    Ok(Err(CommandRefused::Closing)) | Err(_) => (
                        TaskStatus::Offline,
                        format!(
                            "agent {} disconnected before answering task {}",
                            key.0, key.1
                        ),
                    ),
                };
                // The same task id may be pending on a newer connection by now.
                if act.pending.get(&key).is_some_and(|p| p.conn_id == conn_id) {
                    act.give_up(ctx, key, status, error);
                }
            }));
        }));
    }
}

fn outcome(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Ok => "ok",
        TaskStatus::Failed | TaskStatus::Unspecified => "failed",
        TaskStatus::Rejected => "rejected",
        TaskStatus::Timeout => "timeout",
        TaskStatus::Offline => "offline",
    }
}

impl Actor for CommandRouter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // FleetClaims creates the bucket; until it is there, no hub has a
        // claim to answer for.
        let link = self.link.clone();
        ctx.spawn(
            crate::kv::retrying("the presence bucket is not there yet", move || {
                let link = link.clone();
                async move {
                    Ok(link
                        .jetstream()
                        .get_key_value(crate::claims::AGENTS_BUCKET)
                        .await?)
                }
            })
            .into_actor(self)
            .map(|claims, act, _ctx| act.claims = Some(claims)),
        );
        let client = self.link.client().clone();
        // Subscribing only queues the SUB; async-nats re-subscribes after reconnects.
        ctx.wait(
            async move { client.subscribe(COMMAND_SUBJECTS).await }
                .into_actor(self)
                .map(|subscription, _act, ctx| match subscription {
                    Ok(subscription) => {
                        ctx.add_stream(subscription);
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot subscribe to {COMMAND_SUBJECTS}");
                        ctx.stop();
                    }
                }),
        );
    }
}

impl StreamHandler<async_nats::Message> for CommandRouter {
    fn handle(&mut self, message: async_nats::Message, ctx: &mut Context<Self>) {
        self.route(message, ctx);
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        tracing::warn!("task subscription ended");
        ctx.stop();
    }
}

impl Handler<TaskDone> for CommandRouter {
    type Result = ();

    fn handle(&mut self, done: TaskDone, ctx: &mut Context<Self>) {
        let key = (done.agent_id, done.result.task_id.clone());
        match self.take(&key) {
            Some(pending) => {
                ctx.cancel_future(pending.timer);
                self.reply(pending.reply, &done.result);
            }
            None => {
                tracing::debug!(agent_id = %key.0, task_id = %key.1, "task result nobody waits for")
            }
        }
    }
}

impl Handler<AgentGone> for CommandRouter {
    type Result = ();

    fn handle(&mut self, gone: AgentGone, ctx: &mut Context<Self>) {
        let Some(keys) = self.by_connection.remove(&gone.conn_id) else {
            return;
        };
        for key in keys {
            let error = format!(
                "agent {} disconnected before answering task {}",
                gone.agent_id, key.1
            );
            self.give_up(ctx, key, TaskStatus::Offline, error);
        }
    }
}

impl HubDirectory {
    /// The CommandRouter.
    pub(crate) fn router(&self) -> Option<Addr<CommandRouter>> {
        self.get(crate::directory::ids::ROUTER)
    }
}
