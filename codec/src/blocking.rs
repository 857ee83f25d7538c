//! Blocking frame I/O over `std::io`, for synchronous plugins and tests.
//!
//! Same frames, limits and errors as [`FrameCodec`](crate::FrameCodec).
//!
//! ```
//! use herd_codec::blocking::{read_frame, write_frame};
//! use herd_codec::proto::{PluginMessage, Record};
//! use herd_codec::DEFAULT_MAX_FRAME_LENGTH;
//!
//! let mut pipe = Vec::new();
//! let record = Record { data_type: 2000, ..Default::default() };
//! write_frame(&mut pipe, &PluginMessage::from(record.clone()))?;
//!
//! let mut reader = &pipe[..];
//! let read: Option<PluginMessage> = read_frame(&mut reader, DEFAULT_MAX_FRAME_LENGTH)?;
//! assert_eq!(read, Some(PluginMessage::from(record)));
//! // Clean end of stream at a frame boundary:
//! assert_eq!(read_frame::<PluginMessage>(&mut reader, DEFAULT_MAX_FRAME_LENGTH)?, None);
//! # Ok::<(), herd_codec::CodecError>(())
//! ```

use std::io::{Read, Write};

use bytes::{Bytes, BytesMut};

use crate::constants::{DEFAULT_MAX_FRAME_LENGTH, FRAME_HEADER_LEN};
use crate::error::CodecError;
use crate::frame::{WireMessage, check_length, decode_body, encode_frame};

/// Reads one frame and decodes it as `M`.
///
/// Returns `Ok(None)` when the stream ends cleanly before a frame starts, and
/// [`CodecError::Truncated`] when it ends inside one. A header announcing more
/// than `max_frame_length` bytes is refused before the body is read or any
/// room is allocated for it.
pub fn read_frame<M: WireMessage>(
    reader: &mut impl Read,
    max_frame_length: usize,
) -> Result<Option<M>, CodecError> {
    let mut header = Vec::with_capacity(FRAME_HEADER_LEN);
    reader
        .by_ref()
        .take(FRAME_HEADER_LEN as u64)
        .read_to_end(&mut header)?;
    let header: [u8; FRAME_HEADER_LEN] = match header.as_slice().try_into() {
        Ok(header) => header,
        Err(_) if header.is_empty() => return Ok(None),
        Err(_) => {
            return Err(CodecError::Truncated {
                part: "length header",
                expected: FRAME_HEADER_LEN,
                received: header.len(),
            });
        }
    };
    let length = u32::from_be_bytes(header);
    check_length(u64::from(length), max_frame_length)?;
    let expected = length as usize;

    let mut body = Vec::with_capacity(expected);
    reader
        .by_ref()
        .take(u64::from(length))
        .read_to_end(&mut body)?;
    if body.len() < expected {
        return Err(CodecError::Truncated {
            part: "body",
            expected,
            received: body.len(),
        });
    }
    decode_body(Bytes::from(body)).map(Some)
}

/// Writes `message` as one frame, refusing it if it exceeds
/// [`DEFAULT_MAX_FRAME_LENGTH`]. Does not flush.
pub fn write_frame(
    writer: &mut impl Write,
    message: &impl prost::Message,
) -> Result<(), CodecError> {
    write_frame_with_max(writer, message, DEFAULT_MAX_FRAME_LENGTH)
}

/// Writes `message` as one frame, refusing it if it exceeds
/// `max_frame_length` bytes. Does not flush.
pub fn write_frame_with_max(
    writer: &mut impl Write,
    message: &impl prost::Message,
    max_frame_length: usize,
) -> Result<(), CodecError> {
    let mut frame = BytesMut::new();
    encode_frame(message, max_frame_length, &mut frame)?;
    writer.write_all(&frame)?;
    Ok(())
}
