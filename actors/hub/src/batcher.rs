//! Task results, batched to `herd.task.results`.

use std::time::Duration;

use actix::prelude::*;

use crate::directory::HubDirectory;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::messages::TaskDone;
use crate::sink::{NatsLink, now_ms};

/// Subject of the batched task results.
pub const TASK_RESULTS_SUBJECT: &str = "herd.task.results";

/// One task result in a published batch (JSON array).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResultRecord {
    /// The agent that ran the task.
    pub agent_id: String,
    /// The task id.
    pub task_id: String,
    /// `TaskStatus` as its protobuf name, e.g. `TASK_STATUS_OK`.
    pub status: String,
    /// Output bytes.
    pub output: Vec<u8>,
    /// Error text.
    pub error: String,
    /// Who ran it (`agent` or a plugin name).
    pub source: String,
    /// Structured results.
    pub fields: std::collections::BTreeMap<String, String>,
    /// When the hub received it, ms since the Unix epoch.
    pub received_at_ms: i64,
}

/// Collects task results and publishes them as one JSON array when
/// `max_batch` are pending or `interval` after the first one.
#[derive(Debug)]
pub(crate) struct TaskBatcher {
    link: NatsLink,
    max_batch: usize,
    interval: Duration,
    pending: Vec<TaskResultRecord>,
    timer: Option<SpawnHandle>,
}

impl TaskBatcher {
    /// A batcher flushing at `max_batch` results or after `interval`.
    pub(crate) fn new(link: NatsLink, max_batch: usize, interval: Duration) -> Self {
        Self {
            link,
            max_batch,
            interval,
            pending: Vec::new(),
            timer: None,
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        match serde_json::to_vec(&batch) {
            Ok(json) => {
                let client = self.link.client().clone();
                actix::spawn(async move {
                    if let Err(error) = client
                        .publish(TASK_RESULTS_SUBJECT, Bytes::from(json))
                        .await
                    {
                        tracing::warn!(%error, "task results publish failed");
                    }
                });
            }
            Err(error) => tracing::error!(%error, "cannot encode task results"),
        }
    }
}

impl Actor for TaskBatcher {
    type Context = Context<Self>;

    fn stopping(&mut self, ctx: &mut Context<Self>) -> Running {
        self.flush(ctx);
        Running::Stop
    }
}

impl Handler<TaskDone> for TaskBatcher {
    type Result = ();

    fn handle(&mut self, done: TaskDone, ctx: &mut Context<Self>) {
        let result = done.result;
        self.pending.push(TaskResultRecord {
            agent_id: done.agent_id,
            status: result.status().as_str_name().to_owned(),
            task_id: result.task_id,
            output: result.output.to_vec(),
            error: result.error,
            source: result.source,
            fields: result.fields.into_iter().collect(),
            received_at_ms: now_ms(),
        });
        if self.pending.len() >= self.max_batch {
            self.flush(ctx);
        } else if self.timer.is_none() {
            self.timer = Some(ctx.run_later(self.interval, |act, ctx| {
                act.timer = None;
                act.flush(ctx);
            }));
        }
    }
}

impl HubDirectory {
    /// The TaskBatcher.
    pub(crate) fn batcher(&self) -> Option<Addr<TaskBatcher>> {
        self.get(crate::directory::ids::BATCHER)
    }
}
