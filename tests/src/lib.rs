//! herd's shared test harness and end-to-end tests.
//!
//! The library part starts what tests need for real: a `nats-server` on a free
//! loopback port, hub and agent processes, plugins. The integration tests in
//! `tests/` (named `area_topic.rs`) drive whole herd deployments through
//! faults: killed plugins, cut connections, hub and NATS restarts.
