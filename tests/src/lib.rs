//! herd's shared test harness and end-to-end tests.
//!
//! The library part starts what tests need for real: a [`nats::NatsServer`]
//! on a free loopback port (or a [`nats::NatsCluster`] of them with clustered
//! JetStream), `herd-hub` and `herd-agent` processes with
//! generated configurations ([`hub`], [`agent`], [`process`]), a TCP proxy
//! that can cut connections ([`proxy`]), a filesystem mounted for one test
//! ([`mount`]), a reader of everything published to
//! `herd.data.>` ([`collector`]), the deterministic `herd-test-counter`
//! plugin ([`counter`]), and all of it wired together ([`deploy`]). The integration tests in `tests/` (named
//! `area_topic.rs`) drive whole herd deployments through faults.
//!
//! ```no_run
//! # async fn demo() -> Result<(), herd_tests::nats::HarnessError> {
//! let nats = herd_tests::nats::NatsServer::start().await?;
//! let client = nats.client().await?;
//! client.publish("hello", "world".into()).await.expect("publish");
//! # Ok(()) }
//! ```

pub mod agent;
pub mod collector;
pub mod counter;
pub mod deploy;
pub mod hub;
pub mod mount;
pub mod nats;
pub mod process;
pub mod proxy;
pub mod script;
