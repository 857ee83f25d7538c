//! The herd wire protocol.
//!
//! Everything that crosses a process boundary in herd is defined here: the
//! protobuf messages generated from `proto/herd.proto` (the protocol's source
//! of truth), the length-prefixed frame codec used on agent sockets and plugin
//! pipes, and the protocol constants (reserved data types, limits, agent-id
//! rules). No other crate defines wire types.

/// Protobuf messages of protocol version 1, generated from `proto/herd.proto`.
#[allow(missing_docs, unreachable_pub, missing_debug_implementations)]
#[allow(clippy::large_enum_variant)] // generated code; Hello is sent once per connection
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/herd.v1.rs"));
}
