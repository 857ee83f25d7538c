//! A real `herd-agent` process with a generated configuration and a fixed
//! agent id, and look-ups of its plugin processes.

use std::path::{Path, PathBuf};

use herd_agent::{
    AgentConfig, AgentTlsConfig, BatchConfig, PluginRestart, PluginSpec, ReconnectConfig,
};

use crate::process::{E2eError, Process, cmdline, descendants, io_error, workspace_binary};

/// An agent for `hubs` trusting them by `tls`, with the timings of the
/// end-to-end tests: heartbeats every second, batches cut every 50 ms,
/// quick reconnects (50 ms doubling to 500 ms) and short timeouts. No
/// plugins; tests add theirs.
pub fn quick_config(hubs: Vec<String>, tls: AgentTlsConfig) -> AgentConfig {
    AgentConfig {
        hubs,
        tls,
        heartbeat_interval_secs: 1,
        connect_timeout_ms: 1_000,
        handshake_timeout_ms: 2_000,
        shutdown_timeout_ms: 500,
        batch: BatchConfig {
            flush_interval_ms: 50,
            ..BatchConfig::default()
        },
        reconnect: ReconnectConfig {
            min_backoff_ms: 50,
            max_backoff_ms: 500,
            reset_after_ms: 1_000,
        },
        ..AgentConfig::default()
    }
}

/// The test counter plugin (`herd-test-counter`, a record every
/// `interval_ms`, numbered from 1 across restarts) as plugin `name`,
/// restarted quickly.
pub fn counter_plugin(name: &str, interval_ms: u32) -> Result<PluginSpec, E2eError> {
    plugin_spec(
        name,
        "herd-test-counter",
        vec!["--interval-ms".into(), interval_ms.to_string()],
    )
}

/// Workspace binary `binary` as plugin `name` with `args`, restarted
/// quickly (from 100 ms, at most 50 times a minute).
pub fn plugin_spec(name: &str, binary: &str, args: Vec<String>) -> Result<PluginSpec, E2eError> {
    Ok(PluginSpec {
        name: name.to_owned(),
        version: "1".to_owned(),
        sha256: String::new(),
        path: workspace_binary(binary)?,
        args,
        env: Default::default(),
        restart: PluginRestart {
            min_backoff_ms: 100,
            max_backoff_ms: 500,
            max_restarts: 50,
            period_secs: 60,
        },
        stop_grace_ms: 500,
    })
}

/// A `herd-agent` child process.
#[derive(Debug)]
pub struct AgentProcess {
    id: String,
    process: Process,
    config: AgentConfig,
}

impl AgentProcess {
    /// Starts an agent known as `id` with `config`, its state directory and
    /// configuration file under `<dir>/<id>/`. The id is written to the state
    /// directory first, as an operator would, so tests know it up front.
    pub fn start(id: &str, mut config: AgentConfig, dir: &Path) -> Result<Self, E2eError> {
        let home = dir.join(id);
        config.state_dir = home.join("state");
        std::fs::create_dir_all(&config.state_dir)
            .map_err(io_error(format!("creating {}", config.state_dir.display())))?;
        let id_file = config.state_dir.join("agent_id");
        std::fs::write(&id_file, id).map_err(io_error(format!("writing {}", id_file.display())))?;
        let path = home.join("herd-agent.toml");
        std::fs::write(&path, toml::to_string(&config)?)
            .map_err(io_error(format!("writing {}", path.display())))?;
        let process = Process::spawn(
            id,
            workspace_binary("herd-agent")?,
            vec!["--config".into(), path.into()],
            vec![(
                "RUST_LOG".into(),
                "info,herd_hub=debug,herd_agent=debug,herd_supervision=debug".into(),
            )],
            home.join("herd-agent.log"),
        )?;
        Ok(Self {
            id: id.to_owned(),
            process,
            config,
        })
    }

    /// The agent id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// `HERD_PLUGIN_STATE_DIR` of plugin `name`.
    pub fn plugin_state_dir(&self, name: &str) -> PathBuf {
        self.config.state_dir.join("plugins").join(name)
    }

    /// The process, for its pid, log and liveness.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// The pid of the running process of plugin `name` (a child of the
    /// agent whose command line starts with the plugin's path), if any.
    pub fn plugin_pid(&self, name: &str) -> Option<u32> {
        let spec = self
            .config
            .plugins
            .iter()
            .find(|plugin| plugin.name == name)?;
        let path = spec.path.to_string_lossy();
        let agent = self.process.pid()?;
        descendants(agent)
            .into_iter()
            .find(|&pid| cmdline(pid).starts_with(path.as_ref()))
    }

    /// Every live process the agent started (plugins and what they started).
    pub fn descendants(&self) -> Vec<u32> {
        self.process.pid().map(descendants).unwrap_or_default()
    }
}
