//! Prints the records the hub publishes to NATS, one readable line each.
//!
//! ```text
//! cargo run -p herd-examples --example subscribe -- --nats-url nats://127.0.0.1:4222
//! cargo run -p herd-examples --example subscribe -- --agent web-1 --data-type 2001
//! cargo run -p herd-examples --example subscribe -- --nats-url "$(cat STATE/nats.url)" \
//!     --nkey STATE/nats-credentials/reader.nk
//! ```
//!
//! A hub's embedded NATS server (no `nats_url`) admits only its own NKey
//! users: `--nkey` with the read-only seed in the hub's state directory is
//! enough to subscribe.
//!
//! Records arrive on `herd.data.<agent_id>.<data_type>` as protobuf
//! `Envelope`s, or, from a hub with `data_form = "batch"`, grouped on
//! `herd.batch.<agent_id>.<data_type>` as `EnvelopeBatch`es; this subscribes
//! to both forms for one agent, one data type, or everything, and decodes
//! each message with `herd-codec`'s generated types.

use clap::Parser;
use futures::StreamExt;

#[derive(Debug, Parser)]
#[command(about = "Print herd records from NATS as readable lines")]
struct Args {
    #[command(flatten)]
    nats: herd_examples::NatsArgs,
    /// Only this agent's records (default: every agent).
    #[arg(long)]
    agent: Option<String>,
    /// Only records of this data type (default: every type).
    #[arg(long)]
    data_type: Option<u32>,
    /// Exit after this many records (default: run until interrupted).
    #[arg(long)]
    count: Option<usize>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    herd_examples::exit_status("subscribe", run(Args::parse()).await.map(|()| true))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(agent) = &args.agent {
        herd_codec::validate_agent_id(agent)?;
    }
    let filter = format!(
        "{}.{}",
        args.agent.as_deref().unwrap_or("*"),
        args.data_type
            .map_or_else(|| "*".to_owned(), |data_type| data_type.to_string()),
    );
    let client = args.nats.connect().await?;
    let records = client.subscribe(format!("herd.data.{filter}")).await?;
    let groups = client.subscribe(format!("herd.batch.{filter}")).await?;
    eprintln!(
        "subscribed to herd.data.{filter} and herd.batch.{filter} on {}",
        args.nats.nats_url
    );

    let mut messages = futures::stream::select(records, groups);
    let mut left = args.count.unwrap_or(usize::MAX);
    while left > 0 {
        let Some(message) = messages.next().await else {
            break;
        };
        match herd_examples::envelopes(&message.subject, &message.payload) {
            Ok(envelopes) => {
                for envelope in envelopes.iter().take(left) {
                    println!("{}", herd_examples::describe_envelope(envelope));
                }
                left -= envelopes.len().min(left);
            }
            Err(error) => eprintln!("{}: not a herd record message: {error}", message.subject),
        }
    }
    Ok(())
}
