//! The herd hub binary: configuration (TOML file, environment, flags), logging,
//! and the wiring of `herd_hub` into one process.
//!
//! Precedence: flags > environment (`HERD_HUB_*`) > the TOML file > defaults.
//! Every option of the file is documented in `herd-hub.example.toml`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use herd_cli::{ConfigFileError, LogFormat, ShutdownSignals};
use herd_hub::{AckMode, DataForm, Hub, HubConfig, HubError};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Accepts herd agents over TCP and publishes their records to NATS.
///
/// SIGHUP reads the TLS certificates and keys again; SIGTERM and SIGINT stop
/// the hub in order.
///
/// Options come from the TOML file given with --config (see
/// herd-hub.example.toml for every key), overridden by HERD_HUB_* environment
/// variables, overridden by flags.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// What to do; without a command the hub runs.
    #[command(subcommand)]
    command: Option<Operation>,
    /// TOML configuration file.
    #[arg(long, global = true, env = "HERD_HUB_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address agents connect to (file key `listen`; default 0.0.0.0:7400).
    #[arg(long, env = "HERD_HUB_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Address of the admin HTTP server: GET /metrics, /healthz, /agents, /fleet
    /// (open), POST /enrollment-tokens, /agents/{id}/revoke (with the admin
    /// token, file key `admin_token_file`; default <state_dir>/admin.token)
    /// (file key `admin`; default 127.0.0.1:7401; `off` disables it).
    #[arg(long, env = "HERD_HUB_ADMIN", value_name = "ADDR|off")]
    admin: Option<String>,
    /// NATS server URL(s), comma separated (file key `nats_url`; log in to it
    /// with the file's `[nats]` keys). Without one the hub runs its own
    /// nats-server under the state directory, which admits only the NKey
    /// users in <state_dir>/nats-credentials.
    #[arg(long, global = true, env = "HERD_HUB_NATS_URL", value_name = "URL")]
    nats_url: Option<String>,
    /// Directory for the hub's state, e.g. the embedded NATS store (file key
    /// `state_dir`; default /var/lib/herd-hub).
    #[arg(long, global = true, env = "HERD_HUB_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Fleet-wide token agents must present, only with tls.agent_auth =
    /// "token" or --insecure; repeat the flag or separate with commas for
    /// several (file key `tokens`; none: no token needed). Agents of a hub
    /// that identifies them by certificate enroll with `token create`.
    #[arg(
        long,
        env = "HERD_HUB_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_delimiter = ','
    )]
    token: Vec<String>,
    /// Identity of this hub in Welcome, envelopes and logs (file key `hub_id`;
    /// default: random).
    #[arg(long, env = "HERD_HUB_ID", value_name = "ID")]
    hub_id: Option<String>,
    /// When agents get their acks: `jetstream` (after PubAck, the default)
    /// or `flush` (core NATS; file key `ack_mode`).
    #[arg(long, env = "HERD_HUB_ACK_MODE", value_name = "jetstream|flush", value_parser = parse_ack_mode)]
    ack_mode: Option<AckMode>,
    /// How records go to NATS: `record` (one Envelope per record on
    /// herd.data.*, the default) or `batch` (one EnvelopeBatch per batch and
    /// data type on herd.batch.*; file key `data_form`).
    #[arg(long, env = "HERD_HUB_DATA_FORM", value_name = "record|batch", value_parser = parse_data_form)]
    data_form: Option<DataForm>,
    /// Plaintext agent link instead of TLS (file key `tls.insecure`; a WARN
    /// at start: anyone on the network can read records and pose as agents).
    #[arg(long, env = "HERD_HUB_INSECURE")]
    insecure: bool,
    /// Log line format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "HERD_HUB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

/// Operator commands: they reach the hub's NATS (the configured URL, or the
/// embedded server of the hub running on this state directory) and change
/// what every hub on it sees.
#[derive(Debug, clap::Subcommand)]
enum Operation {
    /// Enrollment tokens: what an agent is given to get its certificate.
    #[command(subcommand)]
    Token(TokenOperation),
    /// Enrolled agents.
    #[command(subcommand)]
    Agent(AgentOperation),
}

#[derive(Debug, clap::Subcommand)]
enum TokenOperation {
    /// Creates a token and prints it (once: only its hash is stored) with
    /// the CA fingerprint agents pin.
    Create {
        /// How long it works: `30m`, `12h`, `7d`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// How many agents it enrolls.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        uses: u32,
        /// A note on what or whom it is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Print only the token (for scripts).
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
enum AgentOperation {
    /// Revokes every certificate the agent holds: refused at its next
    /// handshake, its live session closed; the id can be enrolled anew.
    Revoke {
        /// The agent id.
        agent_id: String,
        /// Why (kept with the revocation, told to the agent).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// Why the hub binary could not run.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("--admin must be an address like 127.0.0.1:7401 or `off`, not {0:?}")]
    Admin(String),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("the hub's supervision tree exited: {0}")]
    TreeExited(String),
    #[error(transparent)]
    Enrollment(#[from] herd_hub::enrollment::EnrollmentError),
}

fn parse_ack_mode(value: &str) -> Result<AckMode, String> {
    match value {
        "jetstream" => Ok(AckMode::Jetstream),
        "flush" => Ok(AckMode::Flush),
        other => Err(format!("expected `jetstream` or `flush`, not {other:?}")),
    }
}

fn parse_data_form(value: &str) -> Result<DataForm, String> {
    match value {
        "record" => Ok(DataForm::Record),
        "batch" => Ok(DataForm::Batch),
        other => Err(format!("expected `record` or `batch`, not {other:?}")),
    }
}

impl Cli {
    /// The file's configuration (or the defaults) with the environment and
    /// flags applied on top.
    fn hub_config(&self) -> Result<HubConfig, CliError> {
        let mut config = match &self.config {
            Some(path) => herd_cli::read_toml(path)?,
            None => HubConfig::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        match self.admin.as_deref() {
            None => {}
            Some("off") => config.admin = None,
            Some(addr) => {
                config.admin = Some(addr.parse().map_err(|_| CliError::Admin(addr.to_owned()))?)
            }
        }
        if let Some(url) = &self.nats_url {
            config.nats_url = Some(url.clone());
        }
        if let Some(dir) = &self.state_dir {
            config.state_dir = dir.clone();
        }
        if !self.token.is_empty() {
            config.tokens = self.token.clone();
        }
        if let Some(id) = &self.hub_id {
            config.hub_id = id.clone();
        }
        if let Some(mode) = self.ack_mode {
            config.ack_mode = mode;
        }
        if let Some(form) = self.data_form {
            config.data_form = form;
        }
        if self.insecure {
            config.tls.insecure = true;
        }
        config.validate().map_err(HubError::from)?;
        Ok(config)
    }
}

/// Raises the soft limit on open descriptors to the hard limit: every agent
/// holds one, and the usual soft default (1024) would cap the hub far below
/// what it is sized for. Returns the soft limits before and after.
fn raise_descriptor_limit() -> nix::Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, hard))
}

async fn run(config: HubConfig) -> Result<(), CliError> {
    match raise_descriptor_limit() {
        Ok((was, limit)) => tracing::info!(limit, was, "open file descriptor limit"),
        // Not fatal: the hub serves fewer agents, and says so here.
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open file descriptor limit; keeping it")
        }
    }
    let mut signals = ShutdownSignals::install().map_err(CliError::Signals)?;
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(CliError::Signals)?;
    let hub = Hub::start(config).await?;
    let failed = loop {
        tokio::select! {
            signal = signals.recv() => {
                tracing::info!(signal, "shutting down");
                break None;
            }
            exit = hub.wait() => break Some(exit),
            // Certificates renewed on disk are taken up without a restart.
            _ = hangups.recv() => match hub.reload_tls() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                Err(error) => tracing::error!(%error, "SIGHUP: TLS reload failed; the certificates in use stay"),
            },
        }
    };
    hub.shutdown().await;
    match failed {
        // The tree gave up (restart intensity exceeded): exit non-zero so
        // the service manager restarts the whole process.
        Some(exit) => Err(CliError::TreeExited(exit.to_string())),
        None => Ok(()),
    }
}

/// The NATS the hub on `config` uses, logged in as the hub: its URL and
/// `[nats]` credentials, or the embedded server of the hub running on this
/// state directory.
async fn hub_nats(config: &HubConfig) -> Result<async_nats::jetstream::Context, CliError> {
    let client = herd_hub::connect_nats(config, "herd-hub operator").await?;
    Ok(async_nats::jetstream::new(client))
}

/// The fingerprint agents pin, when the hub has its CA where `config` says.
fn ca_fingerprint(config: &HubConfig) -> Option<herd_tls::Fingerprint> {
    let ca = match &config.tls.ca_cert {
        Some(cert) => cert.clone(),
        None => config
            .state_dir
            .join(herd_hub::TLS_DIR)
            .join(herd_tls::CA_CERT_FILE),
    };
    herd_tls::Fingerprint::of_pem_file(&ca).ok()
}

async fn operate(config: HubConfig, operation: Operation) -> Result<(), CliError> {
    let jetstream = hub_nats(&config).await?;
    match operation {
        Operation::Token(TokenOperation::Create {
            ttl,
            uses,
            description,
            quiet,
        }) => {
            let new =
                herd_hub::enrollment::create_token(&jetstream, ttl, uses, &description).await?;
            if quiet {
                println!("{}", new.token);
                return Ok(());
            }
            let ttl = humantime::format_duration(ttl);
            println!("token:          {}", new.token);
            println!("enrolls:        {uses} agent(s), for {ttl}");
            match ca_fingerprint(&config) {
                Some(fingerprint) => {
                    println!("ca_fingerprint: {fingerprint}");
                    println!();
                    println!("Give the agent (herd-agent.toml):");
                    println!("  token = \"{}\"", new.token);
                    println!("  [tls]");
                    println!("  ca_fingerprint = \"{fingerprint}\"");
                }
                None => println!(
                    "(the hub's CA is not readable here: give the agent its fingerprint or tls.ca_file)"
                ),
            }
        }
        Operation::Agent(AgentOperation::Revoke { agent_id, reason }) => {
            herd_hub::enrollment::revoke_agent(&jetstream, &agent_id, &reason).await?;
            println!(
                "revoked agent {agent_id}: its certificates are refused from now on and its session is closed"
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(operation) = cli.command.take() {
        let config = match cli.hub_config() {
            Ok(config) => config,
            Err(error) => {
                eprintln!("herd-hub: {error}");
                return ExitCode::from(2);
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime starts");
        return match runtime.block_on(operate(config, operation)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("herd-hub: {}", herd_cli::error_chain(&error));
                ExitCode::FAILURE
            }
        };
    }
    herd_cli::run_program(
        "herd-hub",
        cli.hub_config(),
        cli.print_config,
        cli.log_format,
        run,
    )
}

// Measured with herd-bench against glibc malloc and jemalloc in the same
// session (docs/benchmarks.md, "Allocator"): hub CPU per record 10-20 % lower
// in JetStream mode (the default) and in grouped mode, equal per record with
// core NATS, idle connections within 0.5 KiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
