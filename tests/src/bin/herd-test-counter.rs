//! A deterministic plugin for the end-to-end tests: sends one record of data
//! type [`COUNTER`](herd_tests::counter::COUNTER) with field `n` = 1, 2, 3, ...
//! every `--interval-ms` (default 20), so a test can check that every number
//! it produced reached NATS.
//!
//! The last number sent is saved in `$HERD_PLUGIN_STATE_DIR/counter` right
//! after its frame was flushed to stdout, and a restarted plugin continues
//! after it. A kill between the write and the save sends that one number
//! again (a duplicate), never skips one. Tasks are rejected.

use std::time::Duration;

use herd_plugin::prelude::*;
use herd_tests::counter::{COUNTER, CounterFile};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let interval = match std::env::args()
        .skip_while(|arg| arg != "--interval-ms")
        .nth(1)
    {
        Some(ms) => Duration::from_millis(ms.parse()?),
        None => Duration::from_millis(20),
    };
    let plugin = Plugin::from_env()?;
    let file = CounterFile::new(plugin.state_dir());
    let mut n = file.load()?;
    let (emitter, shutdown) = (plugin.emitter(), plugin.shutdown());
    let worker = std::thread::spawn(
        move || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            while !shutdown.wait_timeout(interval) {
                n += 1;
                emitter.record(COUNTER).field("n", n).send()?;
                file.save(n)?;
            }
            Ok(())
        },
    );
    plugin.run(|task| TaskResult::rejected(&task, "the counter plugin has no tasks"))?;
    worker
        .join()
        .map_err(|_| "the counter thread panicked")?
        .map_err(|error| error.to_string())?;
    Ok(())
}
