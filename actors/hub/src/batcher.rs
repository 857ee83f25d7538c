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

/// One task result in a batch published on [`TASK_RESULTS_SUBJECT`] (a JSON
/// array of these; docs/protocol.md, "`herd.task.results`").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResultRecord {
    /// The agent that ran the task.
    pub agent_id: String,
    /// The task id.
    pub task_id: String,
    /// `TaskStatus` as its protobuf name, e.g. `TASK_STATUS_OK`.
    pub status: String,
    /// Output bytes; in JSON a base64 string (standard alphabet, padded).
    #[serde(with = "base64_bytes")]
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

/// Bytes as a base64 string (standard alphabet, padded) in serde formats.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text.as_bytes()).map_err(|error| {
            serde::de::Error::custom(format_args!("output is not base64: {error}"))
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(output: &[u8]) -> TaskResultRecord {
        TaskResultRecord {
            agent_id: "a".into(),
            task_id: "t".into(),
            status: "TASK_STATUS_OK".into(),
            output: output.to_vec(),
            error: String::new(),
            source: "exec".into(),
            fields: Default::default(),
            received_at_ms: 1,
        }
    }

    #[test]
    fn output_is_a_padded_standard_base64_string_and_reads_back_as_bytes() {
        let bytes = b"\x00ok\xff\xfe>?";
        let json = serde_json::to_value(record(bytes)).expect("encodes");
        assert_eq!(json["output"], "AG9r//4+Pw==");
        let back: TaskResultRecord = serde_json::from_value(json).expect("decodes");
        assert_eq!(back.output, bytes);
        let empty = serde_json::to_value(record(b"")).expect("encodes");
        assert_eq!(empty["output"], "");
    }

    #[test]
    fn output_that_is_not_base64_is_refused() {
        let mut json = serde_json::to_value(record(b"x")).expect("encodes");
        json["output"] = "not base64!".into();
        let error = serde_json::from_value::<TaskResultRecord>(json).expect_err("refused");
        assert!(
            error.to_string().starts_with("output is not base64"),
            "{error}"
        );
        let mut json = serde_json::to_value(record(b"x")).expect("encodes");
        json["output"] = serde_json::json!([120]);
        assert!(
            serde_json::from_value::<TaskResultRecord>(json).is_err(),
            "a list of integers"
        );
    }
}
