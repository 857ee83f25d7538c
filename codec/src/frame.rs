//! The length-prefixed frame codec shared by agent sockets and plugin pipes.
//!
//! The pieces that judge a frame (length check, body decoding, encoding) are
//! free functions used by both [`FrameCodec`] and [`crate::blocking`], so the
//! async and the blocking side cannot drift apart.

use std::fmt;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::constants::{DEFAULT_MAX_FRAME_LENGTH, FRAME_HEADER_LEN};
use crate::error::CodecError;
use crate::proto::{AgentMessage, HubMessage, PluginCommand, PluginMessage};

/// A protobuf message that can be read from a frame: it knows its protobuf
/// name (for error messages) and whether a decoded value is usable.
///
/// Implemented for every message in `herd.proto`.
pub trait WireMessage: prost::Message + Default {
    /// Fully qualified protobuf name, e.g. `"herd.v1.AgentMessage"`.
    const NAME: &'static str;

    /// `false` for a `oneof kind` wrapper whose kind is not set. Such a frame
    /// is refused with [`CodecError::MissingKind`], so code that matches on
    /// the kind never sees an empty wrapper.
    fn has_kind(&self) -> bool {
        true
    }
}

/// What a [`FrameCodec`] decodes a frame body into. Every [`WireMessage`]
/// is one (decoded by prost); [`crate::AgentFrame`] is the hub's forwarding
/// view of an agent frame.
pub trait FrameBody: Sized {
    /// Decodes one complete frame body.
    fn decode_frame(body: Bytes) -> Result<Self, CodecError>;
}

impl<M: WireMessage> FrameBody for M {
    fn decode_frame(body: Bytes) -> Result<Self, CodecError> {
        decode_body(body)
    }
}

/// Refuses a frame length above `max` (and above what the 4-byte header can
/// express).
pub(crate) fn check_length(length: u64, max: usize) -> Result<(), CodecError> {
    if length > max as u64 || length > u64::from(u32::MAX) {
        return Err(CodecError::FrameTooLarge { length, max });
    }
    Ok(())
}

/// Decodes one frame body into `M`, refusing a wrapper without a kind.
pub(crate) fn decode_body<M: WireMessage>(body: Bytes) -> Result<M, CodecError> {
    let length = body.len();
    let message = M::decode(body).map_err(|source| CodecError::Decode {
        message_type: M::NAME,
        length,
        source,
    })?;
    if !message.has_kind() {
        return Err(CodecError::MissingKind {
            message_type: M::NAME,
            length,
        });
    }
    Ok(message)
}

/// Appends one frame (header and body) holding `message` to `dst`, or
/// nothing if it would exceed `max`.
///
/// Writes the header itself instead of going through
/// `LengthDelimitedCodec`'s encoder, which would need the body in a separate
/// buffer first and copy it again; the bytes are the same. The length is
/// taken from what was written rather than from `encoded_len()` up front,
/// which would walk the whole message tree once more (maps and nested
/// messages make that walk a noticeable part of encoding a large batch).
pub(crate) fn encode_frame(
    message: &impl prost::Message,
    max: usize,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let frame_start = dst.len();
    dst.put_u32(0);
    if let Err(error) = message.encode(dst) {
        dst.truncate(frame_start);
        return Err(error.into());
    }
    let length = dst.len() - frame_start - FRAME_HEADER_LEN;
    if let Err(error) = check_length(length as u64, max) {
        dst.truncate(frame_start);
        return Err(error);
    }
    // check_length guarantees the length fits the 4-byte header.
    dst[frame_start..frame_start + FRAME_HEADER_LEN]
        .copy_from_slice(&(length as u32).to_be_bytes());
    Ok(())
}

/// A message of type `E` already encoded to its protobuf bytes, framed by a
/// [`FrameCodec`] without encoding it again: a batch kept for resending is
/// encoded once, however often it is sent, and the framing stays in the codec.
///
/// ```
/// use bytes::BytesMut;
/// use herd_codec::proto::{AgentMessage, Batch};
/// use herd_codec::{AgentCodec, Encoded, HubCodec};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let batch = AgentMessage::from(Batch { seq: 3, records: vec![] });
/// let encoded = Encoded::new(&batch);
/// let mut wire = BytesMut::new();
/// AgentCodec::new().encode(encoded.clone(), &mut wire)?;
/// AgentCodec::new().encode(encoded, &mut wire)?;
/// let mut hub = HubCodec::new();
/// assert_eq!(hub.decode(&mut wire)?, Some(batch.clone()));
/// assert_eq!(hub.decode(&mut wire)?, Some(batch));
/// # Ok::<(), herd_codec::CodecError>(())
/// ```
pub struct Encoded<E> {
    body: Bytes,
    _message: PhantomData<fn() -> E>,
}

impl<E: prost::Message> Encoded<E> {
    /// Encodes `message` once.
    pub fn new(message: &E) -> Self {
        Self {
            body: message.encode_to_vec().into(),
            _message: PhantomData,
        }
    }
}

/// A batch's records encoded once, without their seq: what the agent's spool
/// stores, numbered when the spool assigns the seq and sent as
/// [`Encoded::batch`] without decoding or re-encoding a record.
///
/// ```
/// use herd_codec::proto::{AgentMessage, Batch, Record};
/// use herd_codec::{BatchRecords, Encoded};
///
/// let records = vec![Record { data_type: 2000, ..Record::default() }];
/// let stored = BatchRecords::new(records.clone());
/// let frame = Encoded::batch(7, &stored);
/// assert_eq!(frame, Encoded::new(&AgentMessage::from(Batch { seq: 7, records })));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecords(Bytes);

impl BatchRecords {
    /// Encodes `records` (as a `Batch` without its seq).
    pub fn new(records: Vec<crate::proto::Record>) -> Self {
        Self(
            crate::proto::Batch { seq: 0, records }
                .encode_to_vec()
                .into(),
        )
    }

    /// Bytes that [`BatchRecords::bytes`] gave earlier (read back from disk).
    /// They are not checked here; a frame built from damaged bytes is refused
    /// by its receiver.
    pub fn from_stored(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    /// The encoded records.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl Encoded<crate::proto::AgentMessage> {
    /// `AgentMessage { batch: Batch { seq, records } }` from records encoded
    /// once: the seq field and the two wrappers are written around them.
    pub fn batch(seq: u64, records: &BatchRecords) -> Self {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
        // Batch.seq (field 1) unless 0, as prost writes it, then the records.
        let seq_len = if seq == 0 {
            0
        } else {
            1 + encoded_len_varint(seq)
        };
        let batch_len = seq_len + records.0.len();
        let mut body =
            BytesMut::with_capacity(1 + encoded_len_varint(batch_len as u64) + batch_len);
        // AgentMessage.batch is field 2 of the `kind` oneof.
        encode_key(2, WireType::LengthDelimited, &mut body);
        encode_varint(batch_len as u64, &mut body);
        if seq != 0 {
            encode_key(1, WireType::Varint, &mut body);
            encode_varint(seq, &mut body);
        }
        body.extend_from_slice(&records.0);
        Self {
            body: body.freeze(),
            _message: PhantomData,
        }
    }
}

impl<E> Encoded<E> {
    /// The protobuf bytes (without the frame header).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Length of the protobuf bytes.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether the encoding is empty (a message with every field at its default).
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }
}

impl<E> Clone for Encoded<E> {
    fn clone(&self) -> Self {
        Self {
            body: self.body.clone(),
            _message: PhantomData,
        }
    }
}

impl<E> fmt::Debug for Encoded<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoded")
            .field("message", &std::any::type_name::<E>())
            .field("len", &self.body.len())
            .finish()
    }
}

impl<E> PartialEq for Encoded<E> {
    fn eq(&self, other: &Self) -> bool {
        self.body == other.body
    }
}

/// Reads the announced length of the next frame, if its header is complete.
fn peek_length(src: &BytesMut) -> Option<u64> {
    let mut header = src.get(..FRAME_HEADER_LEN)?;
    Some(u64::from(header.get_u32()))
}

/// Frames protobuf messages on a byte stream: decodes `D`, encodes `E`.
///
/// Each frame is a 4-byte big-endian length and that many bytes of protobuf
/// (the defaults of [`LengthDelimitedCodec`], which does the unframing). A
/// frame that announces more than the maximum length is refused as soon as its
/// header arrives, before anything of that size is allocated; so is an
/// outgoing message that would exceed it.
///
/// Use one of the aliases for the direction you are on: [`HubCodec`],
/// [`AgentCodec`], [`PluginHostCodec`], [`PluginCodec`].
///
/// ```
/// use bytes::BytesMut;
/// use herd_codec::proto::{Ack, HubMessage};
/// use herd_codec::{AgentCodec, HubCodec};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut wire = BytesMut::new();
/// HubCodec::new().encode(HubMessage::from(Ack { seq: 7 }), &mut wire)?;
/// // A 4-byte big-endian length, then the protobuf bytes of HubMessage { ack: Ack { seq: 7 } }.
/// assert_eq!(&wire[..], &[0, 0, 0, 4, 0x12, 2, 0x08, 7]);
/// let decoded = AgentCodec::new().decode(&mut wire)?;
/// assert_eq!(decoded, Some(HubMessage::from(Ack { seq: 7 })));
/// # Ok::<(), herd_codec::CodecError>(())
/// ```
pub struct FrameCodec<D, E> {
    inner: LengthDelimitedCodec,
    max_frame_length: usize,
    /// Length of the frame whose header `inner` has consumed but whose body
    /// has not fully arrived; needed to report a truncated body at EOF.
    pending_body: Option<usize>,
    _types: PhantomData<fn(E) -> D>,
}

/// The hub's end of an agent connection: reads [`AgentMessage`], writes [`HubMessage`].
pub type HubCodec = FrameCodec<AgentMessage, HubMessage>;
/// The hub's end of an agent connection on its forwarding path: reads
/// [`crate::AgentFrame`] (batches with their records left encoded), writes
/// [`HubMessage`].
pub type HubForwardCodec = FrameCodec<crate::AgentFrame, HubMessage>;
/// The agent's end of its hub connection: reads [`HubMessage`], writes [`AgentMessage`].
pub type AgentCodec = FrameCodec<HubMessage, AgentMessage>;
/// The agent's end of a plugin's pipes: reads [`PluginMessage`] from the
/// plugin's stdout, writes [`PluginCommand`] to its stdin.
pub type PluginHostCodec = FrameCodec<PluginMessage, PluginCommand>;
/// A plugin's end of its pipes: reads [`PluginCommand`] from stdin, writes
/// [`PluginMessage`] to stdout.
pub type PluginCodec = FrameCodec<PluginCommand, PluginMessage>;

impl<D, E> FrameCodec<D, E> {
    /// A codec with the default maximum frame length,
    /// [`DEFAULT_MAX_FRAME_LENGTH`] (4 MiB).
    pub fn new() -> Self {
        Self::with_max_frame_length(DEFAULT_MAX_FRAME_LENGTH)
    }

    /// A codec that refuses frames longer than `max_frame_length` bytes (not
    /// counting the 4-byte header). Values above `u32::MAX` act as `u32::MAX`,
    /// the most the header can express.
    pub fn with_max_frame_length(max_frame_length: usize) -> Self {
        let max_frame_length = max_frame_length.min(u32::MAX as usize);
        Self {
            inner: LengthDelimitedCodec::builder()
                .length_field_length(FRAME_HEADER_LEN)
                .big_endian()
                .max_frame_length(max_frame_length)
                .new_codec(),
            max_frame_length,
            pending_body: None,
            _types: PhantomData,
        }
    }

    /// The maximum frame length in bytes.
    pub fn max_frame_length(&self) -> usize {
        self.max_frame_length
    }
}

impl<D, E> Default for FrameCodec<D, E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D, E> Clone for FrameCodec<D, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            max_frame_length: self.max_frame_length,
            pending_body: self.pending_body,
            _types: PhantomData,
        }
    }
}

impl<D, E> fmt::Debug for FrameCodec<D, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameCodec")
            .field("decodes", &std::any::type_name::<D>())
            .field("encodes", &std::any::type_name::<E>())
            .field("max_frame_length", &self.max_frame_length)
            .field("pending_body", &self.pending_body)
            .finish()
    }
}

impl<D: FrameBody, E> Decoder for FrameCodec<D, E> {
    type Item = D;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<D>, CodecError> {
        // A new header is checked here rather than by `inner`, whose error
        // does not say the length; `inner`'s own check stays as a backstop.
        let new_header = match self.pending_body {
            None => peek_length(src),
            Some(_) => None,
        };
        if let Some(length) = new_header {
            check_length(length, self.max_frame_length)?;
        }
        match self.inner.decode(src)? {
            Some(body) => {
                self.pending_body = None;
                D::decode_frame(body.freeze()).map(Some)
            }
            None => {
                if let Some(length) = new_header {
                    // check_length bounded it by the (usize) maximum.
                    self.pending_body = Some(length as usize);
                }
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<D>, CodecError> {
        if let Some(message) = self.decode(buf)? {
            return Ok(Some(message));
        }
        match (self.pending_body, buf.len()) {
            (None, 0) => Ok(None),
            (None, received) => Err(CodecError::Truncated {
                part: "length header",
                expected: FRAME_HEADER_LEN,
                received,
            }),
            (Some(expected), received) => Err(CodecError::Truncated {
                part: "body",
                expected,
                received,
            }),
        }
    }
}

impl<D, E: prost::Message> Encoder<E> for FrameCodec<D, E> {
    type Error = CodecError;

    fn encode(&mut self, message: E, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(&message, self.max_frame_length, dst)
    }
}

impl<D, E> Encoder<Encoded<E>> for FrameCodec<D, E> {
    type Error = CodecError;

    fn encode(&mut self, message: Encoded<E>, dst: &mut BytesMut) -> Result<(), CodecError> {
        let length = message.body.len();
        check_length(length as u64, self.max_frame_length)?;
        dst.reserve(FRAME_HEADER_LEN + length);
        // check_length guarantees the length fits the 4-byte header.
        dst.put_u32(length as u32);
        dst.extend_from_slice(&message.body);
        Ok(())
    }
}

impl<D, E: prost::Message> Encoder<&E> for FrameCodec<D, E> {
    type Error = CodecError;

    fn encode(&mut self, message: &E, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(message, self.max_frame_length, dst)
    }
}
