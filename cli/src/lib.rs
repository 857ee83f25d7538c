//! What herd's binaries (`herd-hub`, `herd-agent`) share, so both behave the
//! same way: the `--log-format` choice and logging setup, reading the TOML
//! configuration file with errors that name the file, `--print-config`, exit
//! statuses ([`run_program`]), and waiting for SIGTERM / Ctrl-C.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! #[derive(Debug, serde::Deserialize)]
//! struct Config { listen: String }
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("hub.toml");
//! std::fs::write(&path, "listen = \"127.0.0.1:7400\"\n")?;
//! let config: Config = herd_cli::read_toml(&path)?;
//! assert_eq!(config.listen, "127.0.0.1:7400");
//! # Ok(()) }
//! ```

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global `tracing` subscriber: level from `RUST_LOG` (default
/// `info`), lines on stderr in the given format.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this program (the message names the
    /// line and the key).
    #[error("invalid configuration file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its position.
        source: Box<toml::de::Error>,
    },
}

/// Reads and parses a TOML configuration file.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigFileError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// `error` and every source under it, joined by `: ` (what went wrong, then why).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source in their own message.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// What every herd binary's `main` does once its flags are parsed: a bad
/// configuration exits with status 2 and one line naming the problem;
/// `print_config` prints the effective configuration as TOML and exits;
/// otherwise logging is set up and `run` runs inside an actix system, and its
/// error, if any, is logged and printed, exiting with status 1.
pub fn run_program<C, E, Fut, R>(
    program: &str,
    config: Result<C, E>,
    print_config: bool,
    log_format: LogFormat,
    run: R,
) -> ExitCode
where
    C: Serialize,
    E: std::error::Error,
    R: FnOnce(C) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let config = match config {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{program}: {}", error_chain(&error));
            return ExitCode::from(2);
        }
    };
    if print_config {
        return print_toml(program, &config);
    }
    init_logging(log_format);
    match actix::System::new().block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let error = error_chain(&error);
            tracing::error!(%error, "{program} failed");
            eprintln!("{program}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `--print-config`: writes the effective configuration as TOML to stdout.
fn print_toml<T: Serialize>(program: &str, config: &T) -> ExitCode {
    match toml::to_string(config) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{program}: cannot print the configuration: {error}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM and SIGINT (Ctrl-C), installed up front so a signal that arrives
/// while the program starts is not lost.
#[derive(Debug)]
pub struct ShutdownSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl ShutdownSignals {
    /// Installs the handlers; needs a running tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next signal and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // only parsed
    struct Strict {
        listen: String,
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot start")]
        Plain(#[source] std::io::Error),
        #[error("cannot bind: {0}")]
        Repeating(#[source] std::io::Error),
    }

    #[test]
    fn error_chain_shows_every_source_once() {
        let refused = || std::io::Error::other("connection refused");
        assert_eq!(
            error_chain(&Outer::Plain(refused())),
            "cannot start: connection refused"
        );
        assert_eq!(
            error_chain(&Outer::Repeating(refused())),
            "cannot bind: connection refused"
        );
    }

    #[test]
    fn parse_errors_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, "listen = \"x\"\nbogus = 1\n").unwrap();
        let error = read_toml::<Strict>(&path).unwrap_err().to_string();
        assert!(
            error.contains("hub.toml") && error.contains("bogus"),
            "{error}"
        );
    }

    #[test]
    fn read_errors_name_the_file() {
        let error = read_toml::<Strict>(Path::new("/nonexistent/herd.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("cannot read /nonexistent/herd.toml"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_signal_is_named() {
        let mut signals = ShutdownSignals::install().unwrap();
        raise_sigterm();
        let name = tokio::time::timeout(std::time::Duration::from_secs(5), signals.recv())
            .await
            .expect("SIGTERM delivered");
        assert_eq!(name, "SIGTERM");
    }

    /// `kill -TERM <self>` through the shell keeps this crate free of libc.
    fn raise_sigterm() {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}
