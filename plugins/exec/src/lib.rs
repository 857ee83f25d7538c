//! `herd-exec`: a herd plugin that runs user scripts on a schedule and turns
//! their output into records.
//!
//! - Each `--script NAME=PATH[:INTERVAL_SECS]` runs right after start and
//!   then `INTERVAL_SECS` after the end of its previous run (0 or no
//!   interval: only when task [`TASK_RUN_SCRIPT`] asks).
//! - A script runs with stdin closed, in its own process group. Its stdout
//!   becomes record fields: one flat JSON object, or `key=value` lines (see
//!   [`parse_output`]).
//! - A script that overruns `--timeout-secs` is killed: `SIGKILL` to its
//!   whole process group, and every process of the group is reaped (exec
//!   makes itself the child subreaper, so orphans come back to it). When a
//!   script's main process exits, whatever it left running in its group is
//!   killed and reaped the same way. When the plugin stops (stdin EOF),
//!   running scripts are killed too, and their runs are not reported.
//!
//! Every run produces one [`RUN`] record; see its documentation for the
//! fields. Task [`TASK_RUN_SCRIPT`] runs a script now and answers with the
//! same fields.

mod parse;
mod runner;
mod spec;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use clap::Parser;
use herd_plugin::prelude::*;

pub use parse::{Parsed, parse_output};
pub use runner::{Outcome, Runner, SpawnError};
pub use spec::{ScriptSpec, SpecError};

/// Record: one script run. Fields: those parsed from stdout, then (taking
/// precedence over parsed fields of the same name) `script` (its name),
/// `exit_code` (empty when killed by a signal), `signal` (when killed),
/// `timed_out` (`true`/`false`), `duration_ms`, `stderr` (its last 1024
/// bytes, when not empty), `parse_error` (when stdout was not fully
/// understood; the body then holds the raw stdout), `output_truncated` =
/// `true` when stdout or stderr exceeded `--max-output-bytes`, and `problem`
/// when the run's end could not be observed cleanly (e.g. a process that left
/// the script's process group kept its pipes open). A script that cannot be
/// started gives a record with `script` and `error` only.
pub const RUN: u32 = 2200;
/// Task: run the script named in field `script` now. The result has the
/// [`RUN`] fields, the raw stdout as output, and status OK (exit code 0),
/// FAILED (other exit), TIMEOUT (killed after the timeout: the smaller of
/// `--timeout-secs` and the task's `timeout_ms`) or REJECTED (no such
/// script).
pub const TASK_RUN_SCRIPT: u32 = 2210;

/// The part of stderr kept in the `stderr` field.
const STDERR_TAIL_BYTES: usize = 1024;

/// Command-line arguments of `herd-exec`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "herd-exec",
    version,
    about = "herd plugin: run scripts on a schedule, one record per run"
)]
pub struct Args {
    /// A script: `NAME=PATH:INTERVAL_SECS` or `NAME=PATH` (repeatable). Without an interval
    /// (or 0) it runs only on task 2210.
    #[arg(long = "script", value_name = "NAME=PATH[:INTERVAL_SECS]")]
    pub scripts: Vec<ScriptSpec>,
    /// A script running longer than this is killed with its process group.
    #[arg(long, default_value = "30", value_parser = herd_plugin::cli::positive_seconds)]
    pub timeout_secs: Duration,
    /// At most this many bytes of each of stdout and stderr are kept.
    #[arg(long, default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u32).range(1..=(herd_codec::DEFAULT_MAX_FRAME_LENGTH as i64 / 2)))]
    pub max_output_bytes: u32,
}

/// Runs the plugin on its real pipes until stdin closes.
pub fn run(args: Args) -> Result<(), PluginError> {
    if let Err(error) = Runner::become_subreaper() {
        eprintln!(
            "exec: cannot become the child subreaper ({error}); orphans of killed scripts go to init"
        );
    }
    let plugin = Plugin::from_env()?;
    let runner = Runner::new(args.max_output_bytes as usize);
    let scripts: Arc<BTreeMap<String, ScriptSpec>> = Arc::new(
        args.scripts
            .iter()
            .map(|spec| (spec.name.clone(), spec.clone()))
            .collect(),
    );
    let schedules: Vec<_> = args
        .scripts
        .iter()
        .filter_map(|spec| spec.interval.map(|interval| (spec.clone(), interval)))
        .map(|(spec, interval)| {
            let (runner, emitter, shutdown) = (runner.clone(), plugin.emitter(), plugin.shutdown());
            thread::spawn(move || {
                loop {
                    let sent = match runner.run(&spec.path, args.timeout_secs) {
                        _ if shutdown.is_triggered() => return,
                        Ok(outcome) => emitter.send_record(describe(&spec.name, &outcome)),
                        Err(error) => emitter
                            .record(RUN)
                            .field("script", &spec.name)
                            .field("error", error)
                            .send(),
                    };
                    if sent.is_err() || shutdown.wait_timeout(interval) {
                        return;
                    }
                }
            })
        })
        .collect();

    let result = plugin.run(|task| run_task(&runner, &scripts, args.timeout_secs, &task));
    runner.kill_all();
    for schedule in schedules {
        let _ = schedule.join();
    }
    result
}

/// The binary's `main`: parse, run, report.
pub fn main() -> ExitCode {
    herd_plugin::cli::exit_code("exec", run(Args::parse()))
}

fn run_task(
    runner: &Runner,
    scripts: &BTreeMap<String, ScriptSpec>,
    timeout: Duration,
    task: &Task,
) -> TaskResult {
    if task.data_type != TASK_RUN_SCRIPT {
        return TaskResult::rejected(
            task,
            format!(
                "exec has no task of data type {}; it knows {TASK_RUN_SCRIPT} (run a script)",
                task.data_type
            ),
        );
    }
    let known = || scripts.keys().cloned().collect::<Vec<_>>().join(", ");
    let Some(name) = task.fields.get("script") else {
        return TaskResult::rejected(
            task,
            format!("missing field `script` (one of: {})", known()),
        );
    };
    let Some(spec) = scripts.get(name) else {
        return TaskResult::rejected(
            task,
            format!("no script named `{name}` (known: {})", known()),
        );
    };
    let timeout = match task.timeout_ms {
        0 => timeout,
        ms => timeout.min(Duration::from_millis(u64::from(ms))),
    };
    let outcome = match runner.run(&spec.path, timeout) {
        Ok(outcome) => outcome,
        Err(error) => return TaskResult::failed(task, error.to_string()),
    };
    let fields = describe(name, &outcome).fields;
    let mut result = if outcome.succeeded() {
        TaskResult::ok(task, outcome.stdout)
    } else if outcome.timed_out {
        TaskResult::timed_out(task, format!("killed after the {timeout:?} timeout"))
    } else {
        let mut result = TaskResult::failed(task, failure(&outcome));
        result.output = outcome.stdout.into();
        result
    };
    result.fields.extend(fields);
    result
}

fn failure(outcome: &Outcome) -> String {
    match (outcome.exit_code, outcome.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => outcome
            .problem
            .clone()
            .unwrap_or_else(|| "unknown failure".to_owned()),
    }
}

/// The [`RUN`] record for one run.
fn describe(name: &str, outcome: &Outcome) -> Record {
    let parsed = parse_output(&outcome.stdout);
    let mut fields = parsed.fields;
    let mut set = |key: &str, value: String| {
        fields.insert(key.to_owned(), value);
    };
    set("script", name.to_owned());
    set(
        "exit_code",
        outcome
            .exit_code
            .map(|code| code.to_string())
            .unwrap_or_default(),
    );
    if let Some(signal) = outcome.signal {
        set("signal", signal.to_string());
    }
    set("timed_out", outcome.timed_out.to_string());
    set("duration_ms", outcome.duration.as_millis().to_string());
    if !outcome.stderr.is_empty() {
        let tail = outcome.stderr.len().saturating_sub(STDERR_TAIL_BYTES);
        set(
            "stderr",
            String::from_utf8_lossy(&outcome.stderr[tail..])
                .trim_end()
                .to_owned(),
        );
    }
    if outcome.truncated {
        set("output_truncated", "true".to_owned());
    }
    if let Some(problem) = &outcome.problem {
        set("problem", problem.clone());
    }
    if let Some(problem) = &parsed.problem {
        set("parse_error", problem.clone());
    }
    Record {
        data_type: RUN,
        fields: fields.into_iter().collect(),
        body: if parsed.problem.is_some() {
            outcome.stdout.clone().into()
        } else {
            Default::default()
        },
        ..Record::default()
    }
}
