//! The herd wire protocol.
//!
//! Everything that crosses a process boundary in herd is defined here: the
//! protobuf messages generated from `proto/herd.proto` (the protocol's source
//! of truth), the length-prefixed frame codec used on agent sockets and plugin
//! pipes, and the protocol constants (reserved data types, limits, agent-id
//! rules). No other crate defines wire types. `docs/protocol.md` describes the
//! protocol for implementers in other languages.
//!
//! - [`proto`]: the messages. Each message that travels inside a `oneof kind`
//!   wrapper converts into it with `From`, e.g. `AgentMessage::from(batch)`.
//! - [`FrameCodec`] (aliases [`HubCodec`], [`AgentCodec`], [`PluginHostCodec`],
//!   [`PluginCodec`]): a `tokio_util` codec for `Framed*` streams.
//! - [`AgentFrame`], [`HubForwardCodec`], [`EnvelopeIdentity`]: the hub's
//!   forwarding path, which reads a batch's records without decoding them and
//!   builds each envelope around the record's own bytes.
//! - [`blocking`]: the same frames over `std::io`.
//! - [`CodecError`]: what went wrong, with the numbers.
//! - [`PROTOCOL_VERSION`], [`DEFAULT_MAX_FRAME_LENGTH`], [`data_type`],
//!   [`validate_agent_id`] / [`validate_name`].
//!
//! An empty frame is a valid protobuf encoding of any message with all fields
//! at their defaults, and decodes as such, except for the four `oneof kind`
//! wrappers (`AgentMessage`, `HubMessage`, `PluginCommand`, `PluginMessage`):
//! one of those without a kind (empty, or a kind from a newer protocol
//! version) is refused with [`CodecError::MissingKind`], so a decoded wrapper
//! always has `kind: Some(..)`.

pub mod blocking;
mod constants;
mod error;
mod forward;
mod frame;
mod messages;

/// Protobuf messages of protocol version 1, generated from `proto/herd.proto`.
#[allow(missing_docs, unreachable_pub, missing_debug_implementations)]
#[allow(clippy::large_enum_variant)] // generated code; Hello is sent once per connection
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/herd.v1.rs"));
}

pub use constants::{
    DEFAULT_MAX_FRAME_LENGTH, FRAME_HEADER_LEN, MAX_AGENT_ID_LEN, PROTOCOL_VERSION, data_type,
    validate_agent_id, validate_name,
};
pub use error::{AgentIdError, CodecError, NameError};
pub use forward::{AgentFrame, EnvelopeIdentity, RawBatch, RawRecord};
pub use frame::{
    AgentCodec, BatchRecords, Encoded, FrameBody, FrameCodec, HubCodec, HubForwardCodec,
    PluginCodec, PluginHostCodec, WireMessage,
};
