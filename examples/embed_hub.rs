//! Embeds the hub framework in your own program and adds an actor of your
//! own to the hub's supervision tree.
//!
//! ```text
//! cargo run -p herd-examples --example embed_hub -- --listen 127.0.0.1:7400
//! ```
//!
//! The program starts a [`Hub`] (with its own embedded nats-server unless
//! `--nats-url` is given) and then a [`RecordCounter`] (in this package's
//! library, where the tests reach it too) as one more permanent
//! child of the hub's root supervisor: it subscribes to `herd.data.>` on
//! the hub's NATS connection and logs, every `--report-secs`, how many
//! records of each data type arrived. When its subscription ends it stops
//! abnormally and the supervisor starts a fresh one, with backoff, like any
//! hub actor. Point a `herd-agent` at the listen address to see it count.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use herd_examples::RecordCounter;
use herd_hub::{Hub, HubConfig};
use herd_supervision::ChildSpec;

#[derive(Debug, Parser)]
#[command(about = "A program of your own with the herd hub and an extra supervised actor inside")]
struct Args {
    /// Address agents connect to.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// NATS server URL; without one the hub runs its own nats-server.
    #[arg(long, env = "HERD_NATS_URL")]
    nats_url: Option<String>,
    /// State directory (the embedded NATS store); default: a temporary one.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Enrollment token agents must present (default: none needed).
    #[arg(long)]
    token: Vec<String>,
    /// How often the counter logs its counts, in seconds.
    #[arg(long, default_value_t = 5)]
    report_secs: u64,
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    // Kept alive until the end of main when no state dir was given.
    let temp_state = tempfile::tempdir()?;
    let config = HubConfig {
        listen: args.listen,
        admin: None,
        nats_url: args.nats_url,
        state_dir: args
            .state_dir
            .unwrap_or_else(|| temp_state.path().to_owned()),
        tokens: args.token,
        ..HubConfig::default()
    };
    let hub = Hub::start(config).await?;
    let (client, every) = (
        hub.nats().client().clone(),
        Duration::from_secs(args.report_secs.max(1)),
    );
    hub.supervisor()
        .start_child(ChildSpec::new("record-counter", move || {
            RecordCounter::new(client.clone(), every)
        }))
        .await?;
    tracing::info!(
        listen = %hub.listen_addr(),
        nats = hub.nats().url(),
        "hub running with a record counter; Ctrl-C stops it"
    );
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
        exit = hub.wait() => tracing::error!(%exit, "the hub's supervision tree exited"),
    }
    hub.shutdown().await;
    Ok(())
}
