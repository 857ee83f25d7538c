//! `--script NAME=PATH[:INTERVAL_SECS]`.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// One configured script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptSpec {
    /// Name used in records (`script` field) and in task 2210.
    pub name: String,
    /// The executable.
    pub path: PathBuf,
    /// Time between the end of one run and the start of the next; `None`
    /// runs the script only when task 2210 asks.
    pub interval: Option<Duration>,
}

/// Why a `--script` value is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// No `=` between name and path.
    #[error("`{0}` is not NAME=PATH[:INTERVAL_SECS]")]
    Shape(String),
    /// The name is not a valid herd name.
    #[error("script name `{name}` is invalid: {reason}")]
    Name {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: herd_codec::NameError,
    },
    /// The path is empty.
    #[error("script `{0}` has an empty path")]
    EmptyPath(String),
    /// The interval is not a non-negative number of seconds.
    #[error(
        "interval `{interval}` of script `{name}` is not a number of seconds \
         (a path containing `:` needs an explicit interval, e.g. NAME=/a:b:60)"
    )]
    Interval {
        /// The script's name.
        name: String,
        /// The interval text.
        interval: String,
    },
}

impl FromStr for ScriptSpec {
    type Err = SpecError;

    /// ```
    /// use std::time::Duration;
    /// use herd_plugin_exec::ScriptSpec;
    ///
    /// let spec: ScriptSpec = "disk=/opt/checks/disk.sh:60".parse()?;
    /// assert_eq!(spec.name, "disk");
    /// assert_eq!(spec.path.to_str(), Some("/opt/checks/disk.sh"));
    /// assert_eq!(spec.interval, Some(Duration::from_secs(60)));
    ///
    /// let on_demand: ScriptSpec = "fix=/opt/fix.sh".parse()?;
    /// assert_eq!(on_demand.interval, None);
    /// assert!("nopath".parse::<ScriptSpec>().is_err());
    /// # Ok::<(), herd_plugin_exec::SpecError>(())
    /// ```
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (name, rest) = value
            .split_once('=')
            .ok_or_else(|| SpecError::Shape(value.to_owned()))?;
        herd_codec::validate_name(name).map_err(|reason| SpecError::Name {
            name: name.to_owned(),
            reason,
        })?;
        let (path, interval) = match rest.rsplit_once(':') {
            None => (rest, None),
            Some((path, interval)) => {
                let seconds =
                    herd_plugin::cli::seconds(interval).map_err(|_| SpecError::Interval {
                        name: name.to_owned(),
                        interval: interval.to_owned(),
                    })?;
                (path, (!seconds.is_zero()).then_some(seconds))
            }
        };
        if path.is_empty() {
            return Err(SpecError::EmptyPath(name.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            path: PathBuf::from(path),
            interval,
        })
    }
}
