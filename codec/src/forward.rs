//! The hub's forwarding path: batches read without decoding their records,
//! and envelopes built around the records' bytes as they arrived.
//!
//! Decoding every record of a batch into a [`Record`] only to encode it again
//! inside an [`Envelope`] costs several allocations per record and most of a
//! hub's CPU. A forwarding hub needs only each record's boundaries and data
//! type: [`AgentFrame`] walks a `Batch` frame for exactly that (checking that
//! every record is well-formed protobuf, so a subscriber can always decode
//! what the hub publishes), and [`EnvelopeIdentity`] writes an envelope as a
//! pre-encoded identity, three numbers and the record's own bytes. Anything
//! the walk does not accept is decoded by prost, which either gives the error
//! the connection is closed with or a value the slow path forwards the same.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;
use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encoded_len_varint};

use crate::error::CodecError;
use crate::frame::{FrameBody, decode_body};
use crate::proto::{AgentMessage, Envelope, Record, agent_message};

/// Field numbers the walk and the splice depend on; `proto/herd.proto` is
/// the source of truth and the tests check these against prost's output.
mod field {
    pub(super) const AGENT_MESSAGE_BATCH: u32 = 2;
    pub(super) const BATCH_SEQ: u32 = 1;
    pub(super) const BATCH_RECORDS: u32 = 2;
    pub(super) const RECORD_DATA_TYPE: u32 = 1;
    pub(super) const RECORD_TIMESTAMP_MS: u32 = 2;
    pub(super) const RECORD_SOURCE: u32 = 3;
    pub(super) const RECORD_FIELDS: u32 = 4;
    pub(super) const RECORD_BODY: u32 = 5;
    pub(super) const ENVELOPE_RECEIVED_AT_MS: u32 = 6;
    pub(super) const ENVELOPE_SEQ: u32 = 7;
    pub(super) const ENVELOPE_INDEX: u32 = 8;
    pub(super) const ENVELOPE_RECORD: u32 = 9;
}

/// One frame from an agent as the hub's forwarding path reads it: a batch
/// with its records left encoded, or any other message decoded.
///
/// ```
/// use bytes::BytesMut;
/// use herd_codec::proto::{AgentMessage, Batch, Pong, Record};
/// use herd_codec::{AgentCodec, AgentFrame, HubForwardCodec};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let record = Record { data_type: 2001, body: b"hi".to_vec().into(), ..Record::default() };
/// let mut wire = BytesMut::new();
/// let mut agent = AgentCodec::new();
/// agent.encode(AgentMessage::from(Batch { seq: 4, records: vec![record.clone()] }), &mut wire)?;
/// agent.encode(AgentMessage::from(Pong { nonce: 9 }), &mut wire)?;
///
/// let mut hub = HubForwardCodec::new();
/// let Some(AgentFrame::Batch(batch)) = hub.decode(&mut wire)? else { panic!("a batch") };
/// assert_eq!((batch.seq, batch.records.len()), (4, 1));
/// assert_eq!(batch.records[0].data_type, 2001);
/// assert_eq!(batch.records[0].decode()?, record);
/// assert!(matches!(hub.decode(&mut wire)?, Some(AgentFrame::Other(_))));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum AgentFrame {
    /// `AgentMessage { batch }`, records not decoded.
    Batch(RawBatch),
    /// Every other kind, decoded (never `Batch`); boxed, as a `Hello` is
    /// large and comes once per connection.
    Other(Box<agent_message::Kind>),
}

/// A `Batch` whose records are still their protobuf bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawBatch {
    /// `Batch.seq`.
    pub seq: u64,
    /// The records, in order.
    pub records: Vec<RawRecord>,
    /// Length of the frame body the batch came in (at least the sum of the
    /// records' lengths).
    pub frame_bytes: usize,
}

/// One record of a [`RawBatch`]: its data type and its bytes exactly as the
/// agent encoded them (a slice of the frame, not a copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// `Record.data_type`.
    pub data_type: u32,
    /// The encoded `Record`, checked to be well-formed.
    pub bytes: Bytes,
}

impl RawRecord {
    /// The record, decoded (for the framework types the hub reads itself).
    pub fn decode(&self) -> Result<Record, CodecError> {
        decode_body(self.bytes.clone())
    }
}

impl FrameBody for AgentFrame {
    fn decode_frame(body: Bytes) -> Result<Self, CodecError> {
        if let Some(batch) = walk_batch_frame(&body) {
            return Ok(Self::Batch(batch));
        }
        // Everything else, and any batch the walk did not accept, goes
        // through prost: its error is the one the peer hears, and a batch it
        // accepts in an unusual encoding is forwarded all the same.
        let length = body.len();
        let message: AgentMessage = decode_body(body)?;
        match message.kind {
            Some(agent_message::Kind::Batch(batch)) => {
                let records: Vec<RawRecord> = batch
                    .records
                    .iter()
                    .map(|record| RawRecord {
                        data_type: record.data_type,
                        bytes: record.encode_to_vec().into(),
                    })
                    .collect();
                Ok(Self::Batch(RawBatch {
                    seq: batch.seq,
                    records,
                    frame_bytes: length,
                }))
            }
            Some(other) => Ok(Self::Other(Box::new(other))),
            None => Err(CodecError::MissingKind {
                message_type: <AgentMessage as crate::WireMessage>::NAME,
                length,
            }),
        }
    }
}

/// The fast path: a frame that is exactly one `AgentMessage.batch` field
/// whose records are all well-formed. `None` sends the frame to prost.
fn walk_batch_frame(body: &Bytes) -> Option<RawBatch> {
    let mut cursor = &body[..];
    let (tag, wire_type) = decode_key(&mut cursor).ok()?;
    if tag != field::AGENT_MESSAGE_BATCH || wire_type != WireType::LengthDelimited {
        return None;
    }
    let length = usize::try_from(decode_varint(&mut cursor).ok()?).ok()?;
    // A second top-level field (a repeated or merged batch, another kind)
    // means protobuf's merge rules apply: prost knows them.
    if length != cursor.len() {
        return None;
    }
    let start = body.len() - cursor.len();
    let mut batch = walk_batch(body.slice(start..))?;
    batch.frame_bytes = body.len();
    Some(batch)
}

fn walk_batch(batch: Bytes) -> Option<RawBatch> {
    let mut raw = RawBatch::default();
    let mut cursor = &batch[..];
    while cursor.has_remaining() {
        let (tag, wire_type) = decode_key(&mut cursor).ok()?;
        match (tag, wire_type) {
            (field::BATCH_SEQ, WireType::Varint) => raw.seq = decode_varint(&mut cursor).ok()?,
            (field::BATCH_RECORDS, WireType::LengthDelimited) => {
                let record = take_length_delimited(&mut cursor)?;
                let start = batch.len() - cursor.len() - record.len();
                let data_type = walk_record(record)?;
                raw.records.push(RawRecord {
                    data_type,
                    bytes: batch.slice(start..start + record.len()),
                });
            }
            (field::BATCH_SEQ | field::BATCH_RECORDS, _) => return None,
            (_, wire_type) => skip_unknown(wire_type, &mut cursor)?,
        }
    }
    Some(raw)
}

/// Checks one encoded `Record` and returns its data type.
fn walk_record(mut record: &[u8]) -> Option<u32> {
    let mut data_type = 0;
    while record.has_remaining() {
        let (tag, wire_type) = decode_key(&mut record).ok()?;
        match (tag, wire_type) {
            // prost reads uint32 as a varint truncated to 32 bits.
            (field::RECORD_DATA_TYPE, WireType::Varint) => {
                data_type = decode_varint(&mut record).ok()? as u32;
            }
            (field::RECORD_TIMESTAMP_MS, WireType::Varint) => {
                decode_varint(&mut record).ok()?;
            }
            (field::RECORD_SOURCE, WireType::LengthDelimited) => {
                std::str::from_utf8(take_length_delimited(&mut record)?).ok()?;
            }
            (field::RECORD_FIELDS, WireType::LengthDelimited) => {
                walk_string_map_entry(take_length_delimited(&mut record)?)?;
            }
            (field::RECORD_BODY, WireType::LengthDelimited) => {
                take_length_delimited(&mut record)?;
            }
            (
                field::RECORD_DATA_TYPE
                | field::RECORD_TIMESTAMP_MS
                | field::RECORD_SOURCE
                | field::RECORD_FIELDS
                | field::RECORD_BODY,
                _,
            ) => return None,
            (_, wire_type) => skip_unknown(wire_type, &mut record)?,
        }
    }
    Some(data_type)
}

/// Checks one `map<string, string>` entry (key = 1, value = 2).
fn walk_string_map_entry(mut entry: &[u8]) -> Option<()> {
    while entry.has_remaining() {
        let (tag, wire_type) = decode_key(&mut entry).ok()?;
        match (tag, wire_type) {
            (1 | 2, WireType::LengthDelimited) => {
                std::str::from_utf8(take_length_delimited(&mut entry)?).ok()?;
            }
            (1 | 2, _) => return None,
            (_, wire_type) => skip_unknown(wire_type, &mut entry)?,
        }
    }
    Some(())
}

fn take_length_delimited<'a>(cursor: &mut &'a [u8]) -> Option<&'a [u8]> {
    let length = usize::try_from(decode_varint(cursor).ok()?).ok()?;
    if length > cursor.len() {
        return None;
    }
    let (value, rest) = cursor.split_at(length);
    *cursor = rest;
    Some(value)
}

/// Skips a field this protocol version does not know, as prost does;
/// groups (deprecated, never written by herd) go to prost.
fn skip_unknown(wire_type: WireType, cursor: &mut &[u8]) -> Option<()> {
    let width = match wire_type {
        WireType::Varint => return decode_varint(cursor).ok().map(drop),
        WireType::LengthDelimited => return take_length_delimited(cursor).map(drop),
        WireType::SixtyFourBit => 8,
        WireType::ThirtyTwoBit => 4,
        WireType::StartGroup | WireType::EndGroup => return None,
    };
    if cursor.len() < width {
        return None;
    }
    cursor.advance(width);
    Some(())
}

/// Who an agent is, encoded once per connection as the leading fields of
/// every [`Envelope`] the hub publishes for it; [`EnvelopeIdentity::encode`]
/// adds the receive time, seq, index and the record's bytes.
///
/// The bytes differ from prost's encoding only in field order, which
/// protobuf decoders ignore:
///
/// ```
/// use bytes::BytesMut;
/// use herd_codec::EnvelopeIdentity;
/// use herd_codec::proto::{Envelope, Record};
/// use prost::Message;
///
/// let identity = Envelope {
///     agent_id: "web-1".into(),
///     hostname: "web-1.example".into(),
///     hub_id: "hub-a".into(),
///     ..Envelope::default()
/// };
/// let prefix = EnvelopeIdentity::new(&identity);
/// let record = Record { data_type: 2000, body: b"x".to_vec().into(), ..Record::default() };
/// let mut out = BytesMut::new();
/// prefix.encode(1_700_000_000_000, 42, 3, &record.encode_to_vec(), &mut out);
///
/// let expected = Envelope {
///     received_at_ms: 1_700_000_000_000,
///     seq: 42,
///     index: 3,
///     record: Some(record),
///     ..identity
/// };
/// assert_eq!(Envelope::decode(out.freeze())?, expected);
/// # Ok::<(), prost::DecodeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeIdentity {
    prefix: Bytes,
}

impl EnvelopeIdentity {
    /// Encodes the identity fields of `identity` (agent id, hostname,
    /// addresses, agent version, hub id); its receive time, seq, index and
    /// record are ignored.
    pub fn new(identity: &Envelope) -> Self {
        let prefix = Envelope {
            received_at_ms: 0,
            seq: 0,
            index: 0,
            record: None,
            ..identity.clone()
        };
        Self {
            prefix: prefix.encode_to_vec().into(),
        }
    }

    /// The encoded identity fields.
    pub fn prefix(&self) -> &Bytes {
        &self.prefix
    }

    /// Length of the envelope [`EnvelopeIdentity::encode`] writes.
    pub fn encoded_len(
        &self,
        received_at_ms: i64,
        seq: u64,
        index: u32,
        record_len: usize,
    ) -> usize {
        self.prefix.len()
            + varint_field_len(received_at_ms as u64)
            + varint_field_len(seq)
            + varint_field_len(u64::from(index))
            + 1
            + encoded_len_varint(record_len as u64)
            + record_len
    }

    /// The most an envelope adds around a record of any size: the identity
    /// and the widest time, seq, index and record length.
    pub fn max_envelope_overhead(&self) -> usize {
        let largest = u32::MAX as usize;
        self.encoded_len(-1, u64::MAX, u32::MAX, largest) - largest
    }

    /// The most an `EnvelopeBatch` adds besides its records: the identity,
    /// the widest time and seq, and the index list's key and length.
    pub fn max_group_overhead(&self) -> usize {
        self.prefix.len() + 2 * (1 + MAX_VARINT_LEN) + 1 + MAX_LENGTH_VARINT_LEN
    }

    /// The most one record of `len` bytes at `index` adds to an
    /// `EnvelopeBatch`: its field key and length, its bytes, its index.
    pub fn max_group_record_cost(index: u32, len: usize) -> usize {
        1 + MAX_LENGTH_VARINT_LEN + len + encoded_len_varint(u64::from(index))
    }

    /// Appends the envelope of one record (`record` is an encoded `Record`)
    /// to `dst`. Zero numbers are left out, as prost leaves them out.
    pub fn encode(
        &self,
        received_at_ms: i64,
        seq: u64,
        index: u32,
        record: &[u8],
        dst: &mut BytesMut,
    ) {
        dst.reserve(self.encoded_len(received_at_ms, seq, index, record.len()));
        dst.extend_from_slice(&self.prefix);
        // int64 is written as its two's-complement varint, as prost does.
        put_varint_field(field::ENVELOPE_RECEIVED_AT_MS, received_at_ms as u64, dst);
        put_varint_field(field::ENVELOPE_SEQ, seq, dst);
        put_varint_field(field::ENVELOPE_INDEX, u64::from(index), dst);
        encode_key(field::ENVELOPE_RECORD, WireType::LengthDelimited, dst);
        prost::encoding::encode_varint(record.len() as u64, dst);
        dst.put_slice(record);
    }
}

/// The grouped form: one [`EnvelopeBatch`](crate::proto::EnvelopeBatch)
/// holding several records of one batch, each given as its index in the
/// batch and its encoded bytes.
///
/// ```
/// use bytes::BytesMut;
/// use herd_codec::EnvelopeIdentity;
/// use herd_codec::proto::{Envelope, EnvelopeBatch, Record};
/// use prost::Message;
///
/// let prefix = EnvelopeIdentity::new(&Envelope { agent_id: "web-1".into(), ..Envelope::default() });
/// let records = [Record { data_type: 2000, ..Record::default() }, Record { data_type: 2000, source: "b".into(), ..Record::default() }];
/// let encoded: Vec<Vec<u8>> = records.iter().map(|record| record.encode_to_vec()).collect();
/// let group = [(0, &encoded[0][..]), (2, &encoded[1][..])];
/// let mut out = BytesMut::new();
/// prefix.encode_group(1_700_000_000_000, 9, &group, &mut out);
/// assert_eq!(out.len(), prefix.group_len(1_700_000_000_000, 9, &group));
///
/// let batch = EnvelopeBatch::decode(out.freeze())?;
/// assert_eq!((batch.agent_id.as_str(), batch.seq), ("web-1", 9));
/// assert_eq!(batch.index, vec![0, 2]);
/// assert_eq!(batch.records, records);
/// # Ok::<(), prost::DecodeError>(())
/// ```
impl EnvelopeIdentity {
    /// Length of the message [`EnvelopeIdentity::encode_group`] writes.
    pub fn group_len(&self, received_at_ms: i64, seq: u64, records: &[(u32, &[u8])]) -> usize {
        let indexes = packed_len(records);
        let records: usize = records
            .iter()
            .map(|(_, record)| 1 + encoded_len_varint(record.len() as u64) + record.len())
            .sum();
        self.prefix.len()
            + varint_field_len(received_at_ms as u64)
            + varint_field_len(seq)
            + if indexes == 0 {
                0
            } else {
                1 + encoded_len_varint(indexes as u64) + indexes
            }
            + records
    }

    /// Appends one `EnvelopeBatch` of `records` to `dst`.
    pub fn encode_group(
        &self,
        received_at_ms: i64,
        seq: u64,
        records: &[(u32, &[u8])],
        dst: &mut BytesMut,
    ) {
        dst.reserve(self.group_len(received_at_ms, seq, records));
        dst.extend_from_slice(&self.prefix);
        put_varint_field(field::ENVELOPE_RECEIVED_AT_MS, received_at_ms as u64, dst);
        put_varint_field(field::ENVELOPE_SEQ, seq, dst);
        let indexes = packed_len(records);
        if indexes > 0 {
            // `repeated uint32` is packed in proto3, as prost writes it.
            encode_key(field::ENVELOPE_INDEX, WireType::LengthDelimited, dst);
            prost::encoding::encode_varint(indexes as u64, dst);
            for (index, _) in records {
                prost::encoding::encode_varint(u64::from(*index), dst);
            }
        }
        for (_, record) in records {
            encode_key(field::ENVELOPE_RECORD, WireType::LengthDelimited, dst);
            prost::encoding::encode_varint(record.len() as u64, dst);
            dst.put_slice(record);
        }
    }
}

fn packed_len(records: &[(u32, &[u8])]) -> usize {
    records
        .iter()
        .map(|(index, _)| encoded_len_varint(u64::from(*index)))
        .sum()
}

/// The longest varint (a 64-bit value).
const MAX_VARINT_LEN: usize = 10;
/// The longest length prefix of a field in a frame (frames are under 4 GiB).
const MAX_LENGTH_VARINT_LEN: usize = 5;

fn varint_field_len(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        1 + encoded_len_varint(value)
    }
}

fn put_varint_field(tag: u32, value: u64, dst: &mut BytesMut) {
    if value != 0 {
        encode_key(tag, WireType::Varint, dst);
        prost::encoding::encode_varint(value, dst);
    }
}
