//! herd's shared test harness and end-to-end tests.
//!
//! The library part starts what tests need for real: a [`nats::NatsServer`]
//! on a free loopback port (hub and agent processes and plugins follow as the
//! end-to-end suite grows). The integration tests in `tests/` (named
//! `area_topic.rs`) drive whole herd deployments through faults.
//!
//! ```no_run
//! # async fn demo() -> Result<(), herd_tests::nats::HarnessError> {
//! let nats = herd_tests::nats::NatsServer::start().await?;
//! let client = nats.client().await?;
//! client.publish("hello", "world".into()).await.expect("publish");
//! # Ok(()) }
//! ```

pub mod nats;
