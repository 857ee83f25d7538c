//! The herd plugin SDK.
//!
//! A plugin is a child process of the agent: it reads `PluginCommand` frames
//! (tasks) on stdin and writes `PluginMessage` frames (records, task results)
//! on stdout, with the framing of `herd-codec`. This crate hides the pipes so
//! a plugin emits records and answers tasks in a few lines. The real plugins
//! (`sysmetrics`, `logtail`, `exec`) live beside it under `plugins/`.
