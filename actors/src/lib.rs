//! herd's actor framework.
//!
//! This crate holds the supervision runtime that actix lacks (OTP strategies,
//! restart types, intensity limits, backoff, panic handling, orderly shutdown)
//! and the actors built on it: the hub's (listener, connections, registry,
//! heartbeat tracking, task routing, configuration, NATS sink, admin) and the
//! agent's (connector, batcher, spool, heartbeat, plugin processes). Each
//! actor is the only code that touches what it owns.

pub mod agent;
pub mod hub;
pub mod io;
pub mod supervisor;
