//! What the agent reports about itself: the shared counters and states its
//! actors fill in, and the framework records (1000, 1001) built from them.
//! It names no actor, so every actor can depend on it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{SystemTime, UNIX_EPOCH};

use herd_codec::data_type;
use herd_codec::proto::Record;

/// Where a plugin is in its life, as reported in `Hello` and 1001 records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginState {
    /// Its process is running.
    Running,
    /// It exited and waits for its restart delay.
    Backoff,
    /// It crashed too often or could not be started; not restarted until
    /// its configuration changes.
    Failed,
    /// It was stopped on purpose.
    Stopped,
}

impl PluginState {
    /// The protocol's name for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Backoff => "backoff",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }
}

/// One plugin as the heartbeat reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// Its name.
    pub name: String,
    /// Its configured version.
    pub version: String,
    /// Its state.
    pub state: PluginState,
    /// Process id while running.
    pub pid: Option<u32>,
    /// Restarts since the agent started (or since its config changed).
    pub restarts: u64,
    /// Why it last exited or failed to start ("" if nothing went wrong).
    pub last_error: String,
    /// Records read from it.
    pub records_in: u64,
    /// Records it sent with a framework data type, refused.
    pub records_rejected: u64,
    /// Tasks sent to it.
    pub tasks_out: u64,
    /// Task results read from it.
    pub results_in: u64,
}

/// Connection counters, shared with the heartbeat.
#[derive(Debug, Default)]
pub struct ConnectorStats {
    /// Whether a session is established right now.
    pub connected: AtomicBool,
    /// Sessions that ended after a successful handshake.
    pub reconnects: AtomicU64,
    /// Failed connection attempts.
    pub failed_attempts: AtomicU64,
    /// Batch frames written (resends included).
    pub batches_sent: AtomicU64,
    /// Batch bytes handed to the socket writer.
    pub bytes_sent: AtomicU64,
    /// The hub of the current (or last) session.
    pub hub: Mutex<String>,
}

/// CPU and memory of one process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProcessStats {
    /// Percent of one core since the last refresh.
    pub cpu: f32,
    /// Resident set size in bytes.
    pub rss: u64,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn record(data_type: u32, source: &str, fields: HashMap<String, String>) -> Record {
    Record {
        data_type,
        timestamp_ms: now_ms(),
        source: source.to_owned(),
        fields,
        ..Record::default()
    }
}

/// The 1001 record of one plugin (`process`: its stats if it is running).
pub(crate) fn plugin_record(info: &PluginInfo, process: Option<ProcessStats>) -> Record {
    let mut fields: HashMap<String, String> = [
        ("name", info.name.clone()),
        ("version", info.version.clone()),
        ("state", info.state.as_str().to_owned()),
        ("pid", info.pid.unwrap_or_default().to_string()),
        ("restarts", info.restarts.to_string()),
        ("last_error", info.last_error.clone()),
        ("records_in", info.records_in.to_string()),
        ("records_rejected", info.records_rejected.to_string()),
        ("tasks_out", info.tasks_out.to_string()),
        ("results_in", info.results_in.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(process) = process {
        fields.insert("cpu".into(), format!("{:.2}", process.cpu));
        fields.insert("rss".into(), process.rss.to_string());
    }
    // The source is the plugin, so a consumer can follow one plugin's records.
    record(data_type::PLUGIN_HEARTBEAT, &info.name, fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_record_carries_state_and_counters() {
        let info = PluginInfo {
            name: "p".into(),
            version: "1".into(),
            state: PluginState::Failed,
            pid: None,
            restarts: 3,
            last_error: "crash loop".into(),
            records_in: 7,
            records_rejected: 0,
            tasks_out: 1,
            results_in: 1,
        };
        let record = plugin_record(&info, Some(ProcessStats { cpu: 1.5, rss: 42 }));
        assert_eq!(record.data_type, data_type::PLUGIN_HEARTBEAT);
        assert_eq!(record.source, "p");
        assert_eq!(record.fields["state"], "failed");
        assert_eq!(record.fields["restarts"], "3");
        assert_eq!(record.fields["rss"], "42");
        assert_eq!(record.fields["cpu"], "1.50");
        assert!(record.timestamp_ms > 0);
    }
}
