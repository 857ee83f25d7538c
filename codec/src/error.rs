//! Typed errors of the codec and of name validation.

/// Everything that can go wrong while framing, unframing, encoding or decoding
/// a herd message. Every variant carries the numbers that were wrong.
///
/// After [`CodecError::FrameTooLarge`], [`CodecError::Truncated`] or
/// [`CodecError::Io`] the byte stream is out of step and the connection (or
/// pipe) must be closed. After [`CodecError::Decode`] and
/// [`CodecError::MissingKind`] the bad frame has been consumed whole, so a
/// reader *could* go on with the next one; herd closes the connection anyway,
/// because a peer that sends garbage is not trusted for the rest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A frame announced (when reading) or needed (when writing) more bytes
    /// than the maximum frame length. When reading, this is reported as soon
    /// as the 4-byte length header arrives, before any buffer of that size is
    /// allocated.
    #[error("frame of {length} bytes exceeds the maximum frame length of {max} bytes")]
    FrameTooLarge {
        /// The frame's length in bytes, without the 4-byte header.
        length: u64,
        /// The configured maximum, in bytes.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame's {part}: expected {expected} bytes, received {received}")]
    Truncated {
        /// Which part of the frame was cut: `"length header"` or `"body"`.
        part: &'static str,
        /// How many bytes that part needed.
        expected: usize,
        /// How many of them arrived before the end of the stream.
        received: usize,
    },
    /// A frame's body is not a valid protobuf encoding of the expected message.
    #[error("frame body of {length} bytes is not a valid {message_type}: {source}")]
    Decode {
        /// Fully qualified protobuf name of the expected message.
        message_type: &'static str,
        /// Length of the frame body in bytes.
        length: usize,
        /// What prost found wrong.
        source: prost::DecodeError,
    },
    /// A frame decoded to one of the `oneof kind` wrappers (`AgentMessage`,
    /// `HubMessage`, `PluginCommand`, `PluginMessage`) without a kind: an empty
    /// (zero-length) frame, or a kind added by a newer protocol version that
    /// this side does not know.
    #[error(
        "{message_type} frame of {length} bytes has no kind set \
         (an empty frame, or a kind from a newer protocol version)"
    )]
    MissingKind {
        /// Fully qualified protobuf name of the wrapper message.
        message_type: &'static str,
        /// Length of the frame body in bytes (0 for an empty frame).
        length: usize,
    },
    /// prost refused to encode a message. Cannot happen with the growable
    /// buffers the codec uses; kept so that encoding has no panic path.
    #[error("encoding failed: {0}")]
    Encode(#[from] prost::EncodeError),
    /// The underlying reader or writer failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a string is not a valid agent id or plugin name (see
/// [`validate_name`](crate::validate_name)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty; it needs 1 to {max} characters from [A-Za-z0-9_-]")]
    Empty {
        /// The maximum length, [`MAX_AGENT_ID_LEN`](crate::MAX_AGENT_ID_LEN).
        max: usize,
    },
    /// The name is longer than allowed.
    #[error("name is {length} bytes long; at most {max} are allowed")]
    TooLong {
        /// Length of the name in bytes.
        length: usize,
        /// The maximum length, [`MAX_AGENT_ID_LEN`](crate::MAX_AGENT_ID_LEN).
        max: usize,
    },
    /// The name contains a character outside `[A-Za-z0-9_-]`.
    #[error(
        "invalid character {character:?} at position {position}; only [A-Za-z0-9_-] is allowed"
    )]
    InvalidChar {
        /// The first offending character.
        character: char,
        /// Its position, counted in characters from 0.
        position: usize,
    },
}

/// The error of [`validate_agent_id`](crate::validate_agent_id): agent ids
/// follow the same rules as every other name that becomes a NATS subject token.
pub type AgentIdError = NameError;
