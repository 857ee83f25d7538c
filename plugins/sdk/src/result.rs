//! Building task results.

use bytes::Bytes;
use herd_codec::proto::{Task, TaskResult, TaskStatus};

/// Constructors for [`TaskResult`] that echo the task's id, so a handler
/// answers in one line. In [`prelude`](crate::prelude).
///
/// ```
/// use herd_plugin::prelude::*;
///
/// let task = Task { id: "t-1".into(), data_type: 2110, ..Default::default() };
/// let done = TaskResult::ok(&task, "added").with_field("files", "3");
/// assert_eq!(done.task_id, "t-1");
/// assert_eq!(done.status(), TaskStatus::Ok);
/// assert_eq!(&done.output[..], b"added");
/// assert_eq!(done.fields["files"], "3");
///
/// let refused = TaskResult::rejected(&task, "missing field `path`");
/// assert_eq!(refused.status(), TaskStatus::Rejected);
/// assert_eq!(refused.error, "missing field `path`");
/// ```
pub trait TaskResultExt: Sized {
    /// The task ran and succeeded with `output`.
    fn ok(task: &Task, output: impl Into<Bytes>) -> Self;
    /// The task ran and failed; `error` says why.
    fn failed(task: &Task, error: impl Into<String>) -> Self;
    /// The task was not run: unknown data type, bad arguments.
    fn rejected(task: &Task, error: impl Into<String>) -> Self;
    /// The task did not finish in time.
    fn timed_out(task: &Task, error: impl Into<String>) -> Self;
    /// Adds one structured result field.
    #[must_use]
    fn with_field(self, key: impl Into<String>, value: impl Into<String>) -> Self;
}

impl TaskResultExt for TaskResult {
    fn ok(task: &Task, output: impl Into<Bytes>) -> Self {
        TaskResult {
            output: output.into(),
            ..answer(task, TaskStatus::Ok)
        }
    }

    fn failed(task: &Task, error: impl Into<String>) -> Self {
        TaskResult {
            error: error.into(),
            ..answer(task, TaskStatus::Failed)
        }
    }

    fn rejected(task: &Task, error: impl Into<String>) -> Self {
        TaskResult {
            error: error.into(),
            ..answer(task, TaskStatus::Rejected)
        }
    }

    fn timed_out(task: &Task, error: impl Into<String>) -> Self {
        TaskResult {
            error: error.into(),
            ..answer(task, TaskStatus::Timeout)
        }
    }

    fn with_field(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.fields.insert(key.into(), value.into());
        self
    }
}

fn answer(task: &Task, status: TaskStatus) -> TaskResult {
    TaskResult {
        task_id: task.id.clone(),
        status: status.into(),
        ..TaskResult::default()
    }
}
