//! Examples of using herd as a library and as a platform: embedding the hub
//! framework with an actor of your own, subscribing to records on NATS, sending
//! tasks and configuration from a program, and a plugin written in Python.
//!
//! Each example is a Cargo example of this package (`cargo run -p
//! herd-examples --example NAME -- --help`); this library holds what they
//! do, so the tests can run it too: readable lines for an [`Envelope`] and a
//! [`TaskResult`], [`send_task`], [`set_config`], the [`RecordCounter`]
//! actor that `embed_hub` adds to the hub's supervision tree, and
//! [`NatsArgs`], how every example reaches the hub's NATS and logs in.

mod record_counter;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use herd_codec::NameError;
use herd_codec::proto::{ConfigSet, Envelope, EnvelopeBatch, Task, TaskResult, TaskStatus};
use herd_hub::{AGENT_KEY_PREFIX, FLEET_KEY, parse_config};
use prost::Message as _;

pub use record_counter::{Counts, RecordCounter, RecordCounts};

/// Body bytes shown before a body is summarised by its length.
const BODY_PREVIEW: usize = 64;

/// The records of one message the hub published, as envelopes: a
/// `herd.data.*` message holds one `Envelope`, a `herd.batch.*` message (the
/// grouped form, `data_form = "batch"`) an `EnvelopeBatch` of several
/// records with the agent's identity once.
///
/// ```
/// use herd_codec::proto::{Envelope, EnvelopeBatch, Record};
/// use prost::Message;
///
/// let group = EnvelopeBatch {
///     agent_id: "web-1".into(),
///     seq: 7,
///     index: vec![0, 2],
///     records: vec![Record { data_type: 2000, ..Default::default() }; 2],
///     ..Default::default()
/// };
/// let envelopes = herd_examples::envelopes("herd.batch.web-1.2000", &group.encode_to_vec())?;
/// assert_eq!(envelopes.len(), 2);
/// assert_eq!((envelopes[1].agent_id.as_str(), envelopes[1].seq, envelopes[1].index), ("web-1", 7, 2));
///
/// let one = Envelope { agent_id: "web-1".into(), ..Default::default() };
/// assert_eq!(herd_examples::envelopes("herd.data.web-1.2000", &one.encode_to_vec())?, vec![one]);
/// # Ok::<(), prost::DecodeError>(())
/// ```
pub fn envelopes(subject: &str, payload: &[u8]) -> Result<Vec<Envelope>, prost::DecodeError> {
    if !subject.starts_with("herd.batch.") {
        return Envelope::decode(payload).map(|envelope| vec![envelope]);
    }
    let group = EnvelopeBatch::decode(payload)?;
    Ok(group
        .records
        .into_iter()
        .zip(group.index)
        .map(|(record, index)| Envelope {
            agent_id: group.agent_id.clone(),
            hostname: group.hostname.clone(),
            intranet_ipv4: group.intranet_ipv4.clone(),
            intranet_ipv6: group.intranet_ipv6.clone(),
            agent_version: group.agent_version.clone(),
            received_at_ms: group.received_at_ms,
            seq: group.seq,
            index,
            record: Some(record),
            hub_id: group.hub_id.clone(),
        })
        .collect())
}

/// One human-readable line for a record published by the hub, fields in key
/// order:
///
/// ```
/// use herd_codec::proto::{Envelope, Record};
///
/// let envelope = Envelope {
///     agent_id: "web-1".into(),
///     received_at_ms: 0,
///     seq: 7,
///     index: 2,
///     record: Some(Record {
///         data_type: 2005,
///         source: "sysmetrics".into(),
///         fields: [("load1".to_string(), "0.42".to_string())].into(),
///         ..Default::default()
///     }),
///     ..Default::default()
/// };
/// assert_eq!(
///     herd_examples::describe_envelope(&envelope),
///     "1970-01-01T00:00:00.000Z web-1 #7.2 type=2005 source=sysmetrics load1=0.42"
/// );
/// ```
pub fn describe_envelope(envelope: &Envelope) -> String {
    let received = SystemTime::UNIX_EPOCH
        + Duration::from_millis(u64::try_from(envelope.received_at_ms).unwrap_or(0));
    let mut line = format!(
        "{} {} #{}.{}",
        humantime::format_rfc3339_millis(received),
        envelope.agent_id,
        envelope.seq,
        envelope.index
    );
    let Some(record) = &envelope.record else {
        line.push_str(" (no record)");
        return line;
    };
    // Writing to a String cannot fail.
    let _ = write!(line, " type={} source={}", record.data_type, record.source);
    let mut fields: Vec<_> = record.fields.iter().collect();
    fields.sort();
    for (key, value) in fields {
        let _ = write!(line, " {key}={}", quote_if_needed(value));
    }
    if !record.body.is_empty() {
        match std::str::from_utf8(&record.body) {
            Ok(text) if text.len() <= BODY_PREVIEW => {
                let _ = write!(line, " body={}", quote_if_needed(text));
            }
            _ => {
                let _ = write!(line, " body=<{} bytes>", record.body.len());
            }
        }
    }
    line
}

/// How much longer than the task's own timeout a requester waits for the
/// hub's reply: the hub answers `TIMEOUT` itself when the agent is late, and
/// that answer should win over a bare NATS timeout.
const REPLY_SLACK: Duration = Duration::from_secs(5);

/// The task timeout the hub applies when a task sets none (its default
/// `task_timeout_ms`).
const HUB_DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an example could not talk to herd over NATS.
#[derive(Debug, thiserror::Error)]
pub enum ExampleError {
    /// An NKey seed or credentials file that could not be read.
    #[error("cannot read NATS credentials {}: {source}", path.display())]
    Credentials {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The NATS server could not be reached or refused the login.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// What the client said.
        source: async_nats::ConnectError,
    },
    /// An agent id that cannot be a NATS subject token.
    #[error("invalid agent id {agent_id:?}: {source}")]
    AgentId {
        /// The id given.
        agent_id: String,
        /// What is wrong with it.
        source: NameError,
    },
    /// No reply to a task request.
    #[error("no reply on {subject} within {timeout:?}: {source}")]
    Request {
        /// The request subject.
        subject: String,
        /// How long the request waited.
        timeout: Duration,
        /// What NATS said.
        source: async_nats::RequestError,
    },
    /// A reply that is not a `TaskResult`.
    #[error("the reply on {subject} is not a TaskResult ({len} bytes): {source}")]
    Reply {
        /// The request subject.
        subject: String,
        /// Length of the reply.
        len: usize,
        /// The decoding error.
        source: prost::DecodeError,
    },
    /// A configuration value the hub would not accept.
    #[error("configuration for key {key:?} refused: {reason}")]
    Config {
        /// The KV key.
        key: String,
        /// Why it was refused.
        reason: String,
    },
    /// The `herd_config` bucket could not be opened or created.
    #[error("cannot open the KV bucket herd_config: {0}")]
    Bucket(async_nats::Error),
    /// The write to the bucket failed.
    #[error("cannot write key {key:?} of herd_config: {source}")]
    Put {
        /// The KV key.
        key: String,
        /// What JetStream said.
        source: async_nats::jetstream::kv::PutError,
    },
}

/// The flags every example that talks to NATS takes: where the hub's NATS
/// is, and the credentials to log in with.
///
/// A hub's embedded server admits only the NKey users in its
/// `<state_dir>/nats-credentials`: `reader.nk` (read-only) is enough to
/// subscribe; sending tasks and writing configuration need `hub.nk`. An
/// external server may ask for a JWT credentials file instead.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server the hub uses.
    #[arg(long, env = "HERD_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Log in with the NKey seed in FILE (one line `SU...`), e.g. a hub's
    /// <state_dir>/nats-credentials/reader.nk or hub.nk.
    #[arg(long, value_name = "FILE", conflicts_with = "creds")]
    pub nkey: Option<PathBuf>,
    /// Log in with the JWT credentials file FILE (`.creds`).
    #[arg(long, value_name = "FILE")]
    pub creds: Option<PathBuf>,
}

impl NatsArgs {
    /// Connects to [`Self::nats_url`] with the seed or credentials given.
    pub async fn connect(&self) -> Result<async_nats::Client, ExampleError> {
        let credentials_error = |path: &PathBuf| {
            let path = path.clone();
            move |source| ExampleError::Credentials { path, source }
        };
        let options = async_nats::ConnectOptions::new();
        let options = match (&self.nkey, &self.creds) {
            (Some(nkey), _) => {
                let seed = std::fs::read_to_string(nkey).map_err(credentials_error(nkey))?;
                options.nkey(seed.trim().to_owned())
            }
            (None, Some(creds)) => options
                .credentials_file(creds)
                .await
                .map_err(credentials_error(creds))?,
            (None, None) => options,
        };
        options
            .connect(&self.nats_url)
            .await
            .map_err(|source| ExampleError::Connect {
                url: self.nats_url.clone(),
                source,
            })
    }
}

/// The subject a task for `agent_id` is requested on, after checking that
/// the id is a valid subject token.
///
/// ```
/// assert_eq!(herd_examples::task_subject("web-1").unwrap(), "herd.cmd.web-1");
/// assert!(herd_examples::task_subject("web.*").is_err());
/// ```
pub fn task_subject(agent_id: &str) -> Result<String, ExampleError> {
    check_agent_id(agent_id)?;
    Ok(format!("herd.cmd.{agent_id}"))
}

/// Agent ids become subject and key tokens; the hub refuses what
/// `validate_agent_id` refuses.
fn check_agent_id(agent_id: &str) -> Result<(), ExampleError> {
    herd_codec::validate_agent_id(agent_id).map_err(|source| ExampleError::AgentId {
        agent_id: agent_id.to_owned(),
        source,
    })
}

/// Sends `task` to `agent_id` through the hub (NATS request on
/// `herd.cmd.<agent_id>`) and returns the agent's `TaskResult`, or the hub's
/// own answer (`OFFLINE` when the agent left before answering, `TIMEOUT`
/// when it did not answer within the task's `timeout_ms`). Only the hub
/// serving the agent listens on its subject: when no hub does, NATS answers
/// "no responders" at once, returned here as `OFFLINE` too.
pub async fn send_task(
    client: &async_nats::Client,
    agent_id: &str,
    task: &Task,
) -> Result<TaskResult, ExampleError> {
    let subject = task_subject(agent_id)?;
    let timeout = match task.timeout_ms {
        0 => HUB_DEFAULT_TASK_TIMEOUT,
        ms => Duration::from_millis(u64::from(ms)),
    } + REPLY_SLACK;
    let request = async_nats::Request::new()
        .payload(task.encode_to_vec().into())
        .timeout(Some(timeout));
    let reply = match client.send_request(subject.clone(), request).await {
        Ok(reply) => reply,
        Err(error) if error.kind() == async_nats::RequestErrorKind::NoResponders => {
            return Ok(TaskResult {
                task_id: task.id.clone(),
                status: TaskStatus::Offline as i32,
                error: format!("no hub serves agent {agent_id}"),
                source: "nats".to_owned(),
                ..TaskResult::default()
            });
        }
        Err(source) => {
            return Err(ExampleError::Request {
                subject,
                timeout,
                source,
            });
        }
    };
    TaskResult::decode(reply.payload.clone()).map_err(|source| ExampleError::Reply {
        subject,
        len: reply.payload.len(),
        source,
    })
}

/// Like [`send_task`], but while the hub answers `OFFLINE` asks again every
/// `interval` until `patience` has passed — for a program started together
/// with the agent it wants to talk to. The last answer is returned either way.
pub async fn send_task_when_online(
    client: &async_nats::Client,
    agent_id: &str,
    task: &Task,
    patience: Duration,
    interval: Duration,
) -> Result<TaskResult, ExampleError> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let result = send_task(client, agent_id, task).await?;
        if result.status() != TaskStatus::Offline || tokio::time::Instant::now() >= deadline {
            return Ok(result);
        }
        tokio::time::sleep(interval).await;
    }
}

/// One readable line (plus the output, when there is some) for a task result:
///
/// ```
/// use herd_codec::proto::{TaskResult, TaskStatus};
///
/// let result = TaskResult {
///     task_id: "t1".into(),
///     status: TaskStatus::Ok as i32,
///     source: "exec".into(),
///     fields: [("exit_code".to_string(), "0".to_string())].into(),
///     output: b"hello\n".to_vec().into(),
///     ..Default::default()
/// };
/// assert_eq!(
///     herd_examples::describe_task_result(&result),
///     "task t1 OK source=exec exit_code=0\n  output: hello"
/// );
/// ```
pub fn describe_task_result(result: &TaskResult) -> String {
    let status = TaskStatus::try_from(result.status).map_or_else(
        |_| format!("status={}", result.status),
        |status| {
            status
                .as_str_name()
                .trim_start_matches("TASK_STATUS_")
                .to_owned()
        },
    );
    let mut line = format!("task {} {status} source={}", result.task_id, result.source);
    if !result.error.is_empty() {
        let _ = write!(line, " error={}", quote_if_needed(&result.error));
    }
    let mut fields: Vec<_> = result.fields.iter().collect();
    fields.sort();
    for (key, value) in fields {
        let _ = write!(line, " {key}={}", quote_if_needed(value));
    }
    let output = String::from_utf8_lossy(&result.output);
    for output_line in output.trim_end().lines() {
        let _ = write!(line, "\n  output: {output_line}");
    }
    line
}

/// Which key of the `herd_config` bucket a configuration is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigScope {
    /// Every agent (key `fleet`).
    Fleet,
    /// One agent (key `agent.<agent_id>`); its plugins replace fleet plugins
    /// of the same name.
    Agent(String),
}

impl ConfigScope {
    /// The KV key, after checking the agent id.
    ///
    /// ```
    /// use herd_examples::ConfigScope;
    /// assert_eq!(ConfigScope::Fleet.key().unwrap(), "fleet");
    /// assert_eq!(ConfigScope::Agent("web-1".into()).key().unwrap(), "agent.web-1");
    /// ```
    pub fn key(&self) -> Result<String, ExampleError> {
        match self {
            Self::Fleet => Ok(FLEET_KEY.to_owned()),
            Self::Agent(agent_id) => {
                check_agent_id(agent_id)?;
                Ok(format!("{AGENT_KEY_PREFIX}{agent_id}"))
            }
        }
    }
}

/// Writes the desired plugin configuration of `scope` to the `herd_config`
/// bucket (creating the bucket as the hub would if it does not exist yet)
/// and returns the new revision. `value` is a `ConfigSet` as JSON
/// (`{"plugins": [{"name": ..., "path": ..., "args": [...]}]}`) or protobuf;
/// it is checked the way the hub reads it before it is written, so a value
/// the hub would refuse never reaches the bucket. The hub pushes the change to
/// the agents it affects.
pub async fn set_config(
    client: &async_nats::Client,
    scope: &ConfigScope,
    value: &[u8],
) -> Result<(u64, ConfigSet), ExampleError> {
    let key = scope.key()?;
    let config = parse_config(value).map_err(|reason| ExampleError::Config {
        key: key.clone(),
        reason,
    })?;
    for plugin in &config.plugins {
        herd_codec::validate_name(&plugin.name).map_err(|error| ExampleError::Config {
            key: key.clone(),
            reason: format!("plugin name {:?}: {error}", plugin.name),
        })?;
    }
    let jetstream = async_nats::jetstream::new(client.clone());
    let bucket = herd_hub::config_bucket(&jetstream)
        .await
        .map_err(ExampleError::Bucket)?;
    let revision = bucket
        .put(&key, value.to_vec().into())
        .await
        .map_err(|source| ExampleError::Put {
            key: key.clone(),
            source,
        })?;
    Ok((revision, config))
}

/// A program's exit status: success when it ran and `succeeded`; otherwise
/// failure, with the error printed as `program: error` (its `Display`, which
/// says what was wrong, rather than the `Debug` a `main` returning `Result`
/// would print).
pub fn exit_status(
    program: &str,
    outcome: Result<bool, Box<dyn std::error::Error>>,
) -> std::process::ExitCode {
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(error) => {
            eprintln!("{program}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Keeps `key=value` output splittable on spaces: values that are empty or
/// contain spaces, quotes or control characters are shown Rust-quoted.
fn quote_if_needed(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"');
    if plain {
        value.to_owned()
    } else {
        format!("{value:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_codec::proto::Record;

    #[test]
    fn quotes_values_that_would_break_the_line() {
        let envelope = Envelope {
            agent_id: "a".into(),
            record: Some(Record {
                data_type: 2100,
                source: "logtail".into(),
                fields: [
                    ("line".to_string(), "two words".to_string()),
                    ("empty".to_string(), String::new()),
                ]
                .into(),
                body: vec![0xff; 3].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let line = describe_envelope(&envelope);
        assert!(
            line.ends_with(r#"empty="" line="two words" body=<3 bytes>"#),
            "{line}"
        );
    }

    #[tokio::test]
    async fn a_missing_seed_file_is_named() {
        let args = NatsArgs {
            nats_url: "nats://127.0.0.1:1".into(),
            nkey: Some("/nonexistent/reader.nk".into()),
            creds: None,
        };
        let error = args.connect().await.expect_err("no seed file");
        assert!(
            error
                .to_string()
                .starts_with("cannot read NATS credentials /nonexistent/reader.nk: "),
            "{error}"
        );
    }

    #[test]
    fn says_when_the_record_is_missing() {
        assert!(describe_envelope(&Envelope::default()).ends_with("(no record)"));
    }
}
