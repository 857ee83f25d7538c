//! A deterministic plugin for the end-to-end tests: sends one record of data
//! type [`COUNTER`](herd_tests::counter::COUNTER) with field `n` = 1, 2, 3, ...
//! every `--interval-ms` (default 20), so a test can check that every number
//! it produced reached NATS.
//!
//! The last number the agent confirmed durable (the SDK's checkpoint) is
//! saved in `$HERD_PLUGIN_STATE_DIR/counter`, and a restarted plugin
//! continues after it: a kill of the plugin or of the agent sends the
//! unconfirmed numbers again (duplicates), never skips one. Tasks are
//! rejected.

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
    // Record number r of this process carries n = first + r.
    let first = file.load()?;
    let (emitter, shutdown, checkpoint) =
        (plugin.emitter(), plugin.shutdown(), plugin.checkpoint());
    let saver = checkpoint.clone();
    let save_file = file.clone();
    let worker = std::thread::spawn(
        move || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let mut n = first;
            let mut saved = first;
            while !shutdown.wait_timeout(interval) {
                n += 1;
                emitter.record(COUNTER).field("n", n).send()?;
                let durable = first + saver.durable();
                if durable > saved {
                    save_file.save(durable)?;
                    saved = durable;
                }
            }
            Ok(())
        },
    );
    plugin.run(|task| TaskResult::rejected(&task, "the counter plugin has no tasks"))?;
    // Confirmations that came with the last commands before stdin closed.
    file.save(first + checkpoint.durable())?;
    worker
        .join()
        .map_err(|_| "the counter thread panicked")?
        .map_err(|error| error.to_string())?;
    Ok(())
}
