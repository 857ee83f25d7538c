//! Small helpers for a plugin's command line and exit.

use std::fmt::Display;
use std::process::ExitCode;
use std::time::Duration;

/// Parses a non-negative number of seconds with fractions (`"10"`, `"0.25"`);
/// usable as a clap `value_parser`.
///
/// ```
/// use std::time::Duration;
/// use herd_plugin::cli::{positive_seconds, seconds};
///
/// assert_eq!(seconds("0.25"), Ok(Duration::from_millis(250)));
/// assert_eq!(seconds("0"), Ok(Duration::ZERO));
/// assert!(positive_seconds("0").is_err());
/// assert_eq!(
///     seconds("soon").unwrap_err(),
///     "`soon` is not a number of seconds"
/// );
/// ```
pub fn seconds(value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .ok_or_else(|| format!("`{value}` is not a number of seconds"))
}

/// Like [`seconds`], but zero is refused too.
pub fn positive_seconds(value: &str) -> Result<Duration, String> {
    match seconds(value)? {
        duration if duration.is_zero() => Err(format!("`{value}` is not more than 0 seconds")),
        duration => Ok(duration),
    }
}

/// The exit code of a plugin's `main`: success, or the error on stderr
/// (prefixed with `plugin`) and failure.
pub fn exit_code<E: Display>(plugin: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{plugin}: {error}");
            ExitCode::FAILURE
        }
    }
}
