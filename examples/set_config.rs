//! Writes the desired plugin configuration of one agent, or of the whole
//! fleet, to the NATS KV bucket `herd_config`; the hub pushes it to the
//! agents it affects, which start, restart or stop plugins to match.
//!
//! ```text
//! cargo run -p herd-examples --example set_config -- --agent web-1 --json \
//!   '{"plugins": [{"name": "uptime", "path": "/usr/lib/herd/herd-exec",
//!                  "args": ["--script", "uptime=/usr/bin/uptime:30"]}]}'
//! cargo run -p herd-examples --example set_config -- --fleet --file fleet.json
//! ```
//!
//! The value is a `ConfigSet` as JSON (the form shown) or protobuf; an
//! agent's plugins are the fleet's, with its own key's plugins replacing
//! fleet plugins of the same name. Plugins pushed by the hub must carry the
//! `sha256` of their executable (the agent refuses them otherwise).
//!
//! Writing the bucket needs the hub's NATS user: against a hub's embedded
//! server pass `--nkey STATE/nats-credentials/hub.nk`.

use clap::{ArgGroup, Parser};
use herd_examples::ConfigScope;

#[derive(Debug, Parser)]
#[command(about = "Write desired herd plugin configuration to the KV bucket herd_config")]
#[command(group(ArgGroup::new("scope").required(true).args(["agent", "fleet"])))]
#[command(group(ArgGroup::new("value").required(true).args(["json", "file"])))]
struct Args {
    #[command(flatten)]
    nats: herd_examples::NatsArgs,
    /// Configure this agent (key `agent.<ID>`).
    #[arg(long, value_name = "ID")]
    agent: Option<String>,
    /// Configure every agent (key `fleet`).
    #[arg(long)]
    fleet: bool,
    /// The ConfigSet as JSON text.
    #[arg(long)]
    json: Option<String>,
    /// A file holding the ConfigSet (JSON or protobuf).
    #[arg(long, value_name = "PATH")]
    file: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    herd_examples::exit_status("set_config", run(Args::parse()).await.map(|()| true))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let scope = match args.agent {
        Some(agent_id) => ConfigScope::Agent(agent_id),
        None => ConfigScope::Fleet,
    };
    let value = match (args.json, args.file) {
        (Some(json), _) => json.into_bytes(),
        (None, Some(path)) => std::fs::read(&path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?,
        (None, None) => return Err("give the configuration with --json or --file".into()),
    };
    let client = args.nats.connect().await?;
    let (revision, config) = herd_examples::set_config(&client, &scope, &value).await?;
    let names: Vec<&str> = config.plugins.iter().map(|p| p.name.as_str()).collect();
    println!(
        "herd_config {} = revision {revision}: {} plugin(s) [{}]",
        scope.key()?,
        names.len(),
        names.join(", ")
    );
    Ok(())
}
