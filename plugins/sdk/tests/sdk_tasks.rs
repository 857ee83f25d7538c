//! The SDK over real OS pipes: tasks answered in order, records from worker
//! threads never interleaved with answers, clean ends on EOF and on a broken
//! pipe, and a clear error for garbage on stdin.

use std::io::{PipeReader, PipeWriter, Write};
use std::thread;
use std::time::Duration;

use herd_codec::DEFAULT_MAX_FRAME_LENGTH;
use herd_codec::blocking::{read_frame, write_frame};
use herd_codec::proto::{PluginCommand, PluginMessage, plugin_message::Kind};
use herd_plugin::prelude::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A plugin on OS pipes: (plugin, the agent's end of stdin, the agent's end
/// of stdout).
fn piped() -> std::io::Result<(Plugin, PipeWriter, PipeReader)> {
    let (stdin_reader, stdin_writer) = std::io::pipe()?;
    let (stdout_reader, stdout_writer) = std::io::pipe()?;
    let dir = std::env::temp_dir();
    Ok((
        Plugin::new(stdin_reader, stdout_writer, "test", dir),
        stdin_writer,
        stdout_reader,
    ))
}

fn task(id: &str) -> Task {
    Task {
        id: id.into(),
        data_type: 2999,
        ..Task::default()
    }
}

#[test]
fn tasks_are_answered_while_workers_emit_records() -> TestResult {
    let (plugin, mut agent_in, mut agent_out) = piped()?;
    let (emitter, shutdown) = (plugin.emitter(), plugin.shutdown());
    let worker = thread::spawn(move || -> Result<u32, PluginError> {
        let mut sent = 0;
        while !shutdown.is_triggered() {
            emitter
                .record(2998)
                .field("n", sent)
                .body(vec![7_u8; 1000])
                .send()?;
            sent += 1;
        }
        Ok(sent)
    });
    let runner = thread::spawn(move || {
        plugin.run(|task| {
            let n: usize = task.id.len();
            TaskResult::ok(&task, "done").with_field("id_len", n.to_string())
        })
    });

    for id in ["a", "bb", "ccc"] {
        write_frame(&mut agent_in, &PluginCommand::from(task(id)))?;
    }
    agent_in.flush()?;
    drop(agent_in); // EOF: run returns after answering all three

    let mut answered = Vec::new();
    let mut records = 0;
    while let Some(message) = read_frame::<PluginMessage>(&mut agent_out, DEFAULT_MAX_FRAME_LENGTH)?
    {
        match message.kind {
            Some(Kind::TaskResult(result)) => {
                assert_eq!(result.status(), TaskStatus::Ok);
                assert_eq!(result.fields["id_len"], result.task_id.len().to_string());
                answered.push(result.task_id);
            }
            Some(Kind::Record(record)) => {
                assert_eq!(record.body.len(), 1000, "a frame was torn");
                records += 1;
            }
            None => panic!("message without kind"),
        }
        if answered.len() == 3 && runner.is_finished() && worker.is_finished() {
            break;
        }
    }
    runner.join().expect("run panicked")?;
    let sent = worker.join().expect("worker panicked")?;
    assert_eq!(answered, ["a", "bb", "ccc"]);
    // Everything the worker sent before the shutdown reached the reader.
    while let Some(message) = read_frame::<PluginMessage>(&mut agent_out, DEFAULT_MAX_FRAME_LENGTH)?
    {
        assert!(matches!(message.kind, Some(Kind::Record(_))));
        records += 1;
    }
    assert_eq!(records, sent);
    Ok(())
}

#[test]
fn a_broken_stdout_ends_the_plugin_cleanly() -> TestResult {
    let (plugin, mut agent_in, agent_out) = piped()?;
    drop(agent_out); // the agent is gone
    let (emitter, shutdown) = (plugin.emitter(), plugin.shutdown());

    // Rust ignores SIGPIPE, so the write fails with EPIPE.
    let error = emitter
        .record(2998)
        .send()
        .expect_err("nobody reads stdout");
    assert!(matches!(error, PluginError::Disconnected), "{error:?}");
    assert!(shutdown.is_triggered(), "workers are told to stop");
    assert!(matches!(
        emitter.record(2998).send(),
        Err(PluginError::Disconnected)
    ));

    // The answer to a task cannot be written either: run ends without error.
    write_frame(&mut agent_in, &PluginCommand::from(task("late")))?;
    agent_in.flush()?;
    plugin.run(|task| TaskResult::ok(&task, ""))?;
    Ok(())
}

#[test]
fn garbage_on_stdin_is_a_read_error() -> TestResult {
    let (plugin, mut agent_in, _agent_out) = piped()?;
    let shutdown = plugin.shutdown();
    // A frame announcing 16 MiB, more than the 4 MiB limit.
    agent_in.write_all(&(16_u32 << 20).to_be_bytes())?;
    let error = plugin
        .run(|task| TaskResult::ok(&task, ""))
        .expect_err("the frame is too large");
    assert!(matches!(error, PluginError::Read(_)), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("exceeds the maximum frame length"),
        "{error}"
    );
    assert!(shutdown.wait_timeout(Duration::ZERO));
    Ok(())
}

#[test]
fn the_handler_may_leave_the_task_id_empty() -> TestResult {
    let (plugin, mut agent_in, mut agent_out) = piped()?;
    write_frame(&mut agent_in, &PluginCommand::from(task("filled-in")))?;
    drop(agent_in);
    plugin.run(|_| TaskResult::default())?;
    let message = read_frame::<PluginMessage>(&mut agent_out, DEFAULT_MAX_FRAME_LENGTH)?;
    let Some(PluginMessage {
        kind: Some(Kind::TaskResult(result)),
    }) = message
    else {
        panic!("expected a task result, got {message:?}");
    };
    assert_eq!(result.task_id, "filled-in");
    Ok(())
}
