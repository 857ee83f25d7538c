//! The agent's `Durable` commands move the plugin's checkpoint; records are
//! numbered from 1 in the order they are written.

use std::time::Duration;

use herd_codec::blocking::write_frame;
use herd_codec::proto::{Durable, PluginCommand};
use herd_plugin::prelude::*;

#[test]
fn durable_commands_move_the_checkpoint_and_records_are_numbered_in_order() {
    let mut stdin = Vec::new();
    write_frame(&mut stdin, &PluginCommand::from(Durable { through: 2 })).unwrap();
    // Out of order or repeated: the checkpoint never goes back.
    write_frame(&mut stdin, &PluginCommand::from(Durable { through: 1 })).unwrap();
    let (_stdout, out) = std::io::pipe().unwrap();
    let plugin = Plugin::new(std::io::Cursor::new(stdin), out, "ckpt", "/nonexistent");
    let (emitter, checkpoint) = (plugin.emitter(), plugin.checkpoint());
    assert_eq!(emitter.record(2999).send().unwrap(), 1);
    assert_eq!(emitter.record(2999).send().unwrap(), 2);
    assert_eq!(checkpoint.durable(), 0);
    plugin.run(|task| TaskResult::ok(&task, "")).unwrap();
    assert_eq!(checkpoint.durable(), 2);
    assert!(checkpoint.wait_for(2, Duration::ZERO));
    assert!(!checkpoint.wait_for(3, Duration::from_millis(10)));
    assert_eq!(emitter.record(2999).send().unwrap(), 3);
}
