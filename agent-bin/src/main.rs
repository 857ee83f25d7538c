//! The herd agent binary: configuration (TOML file, environment, flags),
//! logging, and the wiring of `herd_agent` into one process.
//!
//! Precedence, highest first: command-line flags, `HERD_AGENT_*` environment
//! variables (one per flag), the TOML file given by `--config`, built-in
//! defaults. SIGTERM, Ctrl-C (SIGINT) and a 1060 task from the hub all stop
//! the agent in order (plugins stopped and reaped, batches flushed, acks
//! awaited while the hub is reachable) and exit with status 0.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use herd_agent::AgentConfig;
use herd_agent::{AgentConfigError, AgentError};
use herd_cli::{ConfigFileError, LogFormat, ShutdownSignals};

/// herd-agent: runs plugins as child processes and ships their records,
/// with host heartbeats, to a herd hub.
///
/// Every option of the TOML file is documented in herd-agent.example.toml.
/// The log level is set with RUST_LOG (default "info").
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// TOML configuration file (see herd-agent.example.toml).
    #[arg(long, short, env = "HERD_AGENT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Hub address host:port; repeat (or separate with commas in the
    /// environment) for failover, tried in order. Replaces the file's `hubs`.
    #[arg(
        long = "hub",
        env = "HERD_AGENT_HUB",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    hubs: Vec<String>,

    /// Enrollment token sent to the hub.
    #[arg(long, env = "HERD_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// SHA-256 fingerprint of the hub's CA (the hub logs it at start).
    /// Replaces the file's tls.ca_fingerprint.
    #[arg(long, env = "HERD_AGENT_CA_FINGERPRINT", value_name = "SHA256")]
    ca_fingerprint: Option<String>,

    /// PEM file with the hub's CA certificate. Replaces the file's tls.ca_file.
    #[arg(long, env = "HERD_AGENT_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,

    /// Plaintext link to a hub that runs with tls.insecure = true (a WARN
    /// at start: anyone on the path can read the records).
    #[arg(long, env = "HERD_AGENT_INSECURE")]
    insecure: bool,

    /// Directory for the agent id, sequence numbers and plugin state.
    #[arg(long, env = "HERD_AGENT_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Heartbeat interval in seconds (until the hub sets one).
    #[arg(long, env = "HERD_AGENT_HEARTBEAT_INTERVAL_SECS", value_name = "SECS")]
    heartbeat_interval_secs: Option<u64>,

    /// Log line format on stderr.
    #[arg(long, env = "HERD_AGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

/// Tools instead of running the agent.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// The disk spool under the state directory.
    Spool {
        #[command(subcommand)]
        action: SpoolAction,
    },
}

#[derive(Debug, clap::Subcommand)]
enum SpoolAction {
    /// Inspect the spool without changing it (stop the agent first): prints
    /// its depth, bytes, seqs and every damaged frame; exits 1 if any.
    Verify,
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error(transparent)]
    Config(#[from] AgentConfigError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("the agent's supervision tree exited: {0}")]
    TreeExited(String),
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
}

impl Cli {
    /// The file (or defaults), with the environment and flags on top.
    fn effective_config(&self) -> Result<AgentConfig, CliError> {
        let mut config = match &self.config {
            Some(path) => herd_cli::read_toml(path)?,
            None => AgentConfig::default(),
        };
        if !self.hubs.is_empty() {
            config.hubs.clone_from(&self.hubs);
        }
        if let Some(token) = &self.token {
            config.token.clone_from(token);
        }
        if let Some(fingerprint) = &self.ca_fingerprint {
            config.tls.ca_fingerprint = Some(fingerprint.clone());
        }
        if let Some(file) = &self.ca_file {
            config.tls.ca_file = Some(file.clone());
        }
        if self.insecure {
            config.tls.insecure = true;
        }
        if let Some(dir) = &self.state_dir {
            config.state_dir.clone_from(dir);
        }
        if let Some(secs) = self.heartbeat_interval_secs {
            config.heartbeat_interval_secs = secs;
        }
        config.validate()?;
        Ok(config)
    }
}

async fn run(config: AgentConfig) -> Result<(), CliError> {
    let mut signals = ShutdownSignals::install().map_err(CliError::Signals)?;
    let agent = herd_agent::start(config)?;
    let requested = agent.shutdown_requested();
    let tree = agent.supervisor().clone();
    tokio::select! {
        signal = signals.recv() => tracing::info!(signal, "shutting down"),
        () = requested.cancelled() => tracing::info!("shutdown task received"),
        // The tree gave up (restart intensity exceeded): exit non-zero so the
        // service manager restarts the whole process.
        exit = tree.wait() => return Err(CliError::TreeExited(exit.to_string())),
    }
    agent.shutdown().await;
    Ok(())
}

/// `herd-agent spool verify`: the report on stdout; status 0 when clean, 1
/// with problems, 2 when the configuration or the spool cannot be read.
fn verify_spool(cli: &Cli) -> ExitCode {
    let report = cli
        .effective_config()
        .map_err(|error| herd_cli::error_chain(&error))
        .and_then(|config| {
            herd_agent::verify_spool(&config).map_err(|error| herd_cli::error_chain(&error))
        });
    match report {
        Ok(report) => {
            println!("{report}");
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("herd-agent spool verify: {error}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Spool {
        action: SpoolAction::Verify,
    }) = &cli.command
    {
        return verify_spool(&cli);
    }
    herd_cli::run_program(
        "herd-agent",
        cli.effective_config(),
        cli.print_config,
        cli.log_format,
        run,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "hubs = [\"file:1\"]\ntoken = \"from-file\"\nheartbeat_interval_secs = 30\n\
             [tls]\ninsecure = true\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "herd-agent",
            "--config",
            path.to_str().unwrap(),
            "--hub",
            "a:1",
            "--hub",
            "b:2",
            "--state-dir",
            "/tmp/x",
        ])
        .unwrap();
        let config = cli.effective_config().unwrap();
        assert_eq!(config.hubs, ["a:1", "b:2"]);
        assert_eq!(config.token, "from-file");
        assert_eq!(config.heartbeat_interval_secs, 30);
        assert_eq!(config.state_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "hubs = [\"a:1\"]\nbogus = 1\n[tls]\ninsecure = true\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from(["herd-agent", "-c", path.to_str().unwrap()]).unwrap();
        let err = cli.effective_config().unwrap_err().to_string();
        assert!(err.contains("agent.toml") && err.contains("bogus"), "{err}");
    }

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../herd-agent.example.toml");
        let config = AgentConfig::from_toml_str(text).unwrap();
        assert_eq!(config.plugins.len(), 1);
        assert_eq!(config, {
            let mut defaults = AgentConfig::default();
            defaults.hubs.clone_from(&config.hubs);
            defaults.token.clone_from(&config.token);
            defaults.tls.clone_from(&config.tls);
            defaults.plugins.clone_from(&config.plugins);
            defaults
        });
    }
}
