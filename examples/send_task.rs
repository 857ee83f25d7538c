//! Sends one task to an agent through the hub and prints its result.
//!
//! ```text
//! cargo run -p herd-examples --example send_task -- --agent web-1 \
//!     --target exec --data-type 2210 --field script=hello
//! ```
//!
//! The task goes out as a NATS request on `herd.cmd.<agent_id>` with a
//! protobuf `Task` body; the hub routes it to the agent's connection, the
//! agent to the plugin named by `--target`, and the reply is a protobuf
//! `TaskResult` (or the hub's `OFFLINE` / `TIMEOUT` answer). Exits 0 when the
//! task's status is `OK`, 1 otherwise.
//!
//! Sending tasks is the hub's to allow: against a hub's embedded NATS server
//! pass `--nkey STATE/nats-credentials/hub.nk` (the read-only `reader.nk`
//! may not publish on `herd.cmd.>`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use herd_codec::proto::{Task, TaskStatus};

#[derive(Debug, Parser)]
#[command(about = "Send one task to a herd agent through NATS and print the result")]
struct Args {
    #[command(flatten)]
    nats: herd_examples::NatsArgs,
    /// The agent that runs the task.
    #[arg(long)]
    agent: String,
    /// Who runs it on the agent: a plugin name, or `agent`.
    #[arg(long, default_value = "agent")]
    target: String,
    /// What the task is (plugins define theirs, e.g. exec's 2210 "run a script").
    #[arg(long)]
    data_type: u32,
    /// An argument `KEY=VALUE` (repeatable).
    #[arg(long = "field", value_name = "KEY=VALUE", value_parser = key_value)]
    fields: Vec<(String, String)>,
    /// Opaque body bytes, as text.
    #[arg(long, default_value = "")]
    body: String,
    /// Task id (default: a fresh random one).
    #[arg(long)]
    id: Option<String>,
    /// How long the agent may take, in milliseconds (0: the hub's default).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u32,
    /// While the hub answers OFFLINE, ask again for up to this many seconds
    /// (for a script that starts the agent just before).
    #[arg(long, default_value_t = 0)]
    wait_online_secs: u64,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    herd_examples::exit_status("send_task", run(Args::parse()).await)
}

/// Whether the task's status was `OK`.
async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let task = Task {
        id: args.id.unwrap_or_else(fresh_id),
        data_type: args.data_type,
        target: args.target,
        fields: args.fields.into_iter().collect(),
        body: args.body.into_bytes().into(),
        timeout_ms: args.timeout_ms,
    };
    // A bad id is reported before any connection is tried.
    herd_examples::task_subject(&args.agent)?;
    let client = args.nats.connect().await?;
    eprintln!(
        "sending task {} (type {}) to {} on {}",
        task.id, task.data_type, args.agent, args.nats.nats_url
    );
    let result = herd_examples::send_task_when_online(
        &client,
        &args.agent,
        &task,
        Duration::from_secs(args.wait_online_secs),
        Duration::from_millis(250),
    )
    .await?;
    println!("{}", herd_examples::describe_task_result(&result));
    Ok(result.status() == TaskStatus::Ok)
}

/// `task-<process id>-<milliseconds since the epoch>`: unique enough for
/// tasks sent by hand.
fn fresh_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    format!("task-{}-{millis}", std::process::id())
}
