//! Bad input on the wire gives a clear, typed error and never a panic:
//! truncated frames, oversize lengths (refused before allocating), empty
//! frames, undecodable bodies and random garbage.

mod common;

use std::io::{self, Read};

use bytes::{BufMut, BytesMut};
use herd_codec::blocking::{read_frame, write_frame_with_max};
use herd_codec::proto::{Ack, AgentMessage, HubMessage, PluginCommand, PluginMessage};
use herd_codec::{
    AgentCodec, CodecError, DEFAULT_MAX_FRAME_LENGTH, FrameCodec, HubCodec, PluginCodec,
    PluginHostCodec, WireMessage,
};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

const MAX: usize = DEFAULT_MAX_FRAME_LENGTH;

fn frame(body: &[u8]) -> Vec<u8> {
    let mut wire = (body.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(body);
    wire
}

fn encoded(message: &impl prost::Message) -> Vec<u8> {
    message.encode_to_vec()
}

#[test]
fn oversize_length_is_refused_from_the_header_alone_before_allocating() {
    // Only the 4-byte header of a 4 GiB frame: the error must come now, not
    // after waiting for (or reserving room for) the body.
    let mut src = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
    let capacity_before = src.capacity();
    let err = HubCodec::new().decode(&mut src).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::FrameTooLarge {
                length: 4_294_967_295,
                max: MAX
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "frame of 4294967295 bytes exceeds the maximum frame length of 4194304 bytes"
    );
    assert_eq!(
        src.capacity(),
        capacity_before,
        "the decoder reserved room for the body"
    );
    assert_eq!(
        src.len(),
        4,
        "the header stays for inspection; the stream is dead"
    );

    // The blocking reader refuses it without reading any further: the reader
    // holds nothing after the header, so a read attempt would report Truncated.
    let mut reader = &u32::MAX.to_be_bytes()[..];
    let blocking_err = read_frame::<AgentMessage>(&mut reader, MAX).unwrap_err();
    assert!(
        matches!(blocking_err, CodecError::FrameTooLarge { .. }),
        "{blocking_err:?}"
    );
    assert_eq!(blocking_err.to_string(), err.to_string());
}

#[test]
fn one_byte_over_the_maximum_is_refused() {
    let body = encoded(&AgentMessage::from(herd_codec::proto::Pong { nonce: 1 }));
    let max = body.len() - 1;
    let mut src = BytesMut::from(&frame(&body)[..]);
    let err = HubCodec::with_max_frame_length(max)
        .decode(&mut src)
        .unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLarge { length, max: m } if length == body.len() as u64 && m == max),
        "{err:?}"
    );
    let err = read_frame::<AgentMessage>(&mut &frame(&body)[..], max).unwrap_err();
    assert!(matches!(err, CodecError::FrameTooLarge { .. }), "{err:?}");
}

#[test]
fn oversize_outgoing_message_is_refused_and_nothing_is_written() {
    let message = common::hub_messages().remove(0);
    let length = encoded(&message).len();
    let mut codec = HubCodec::with_max_frame_length(16);
    let small = HubMessage::from(Ack { seq: 1 });
    let mut dst = BytesMut::new();
    codec.encode(&small, &mut dst).expect("a small frame fits");
    let before = dst.clone();
    let err = codec.encode(&message, &mut dst).unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLarge { length: l, max: 16 } if l == length as u64),
        "{err:?}"
    );
    assert_eq!(dst, before, "a refused frame left bytes behind");
    assert_eq!(
        AgentCodec::new().decode(&mut dst).unwrap(),
        Some(small),
        "the frame before the refused one is intact"
    );

    // The same holds for a message that was encoded beforehand.
    let before = dst.clone();
    let err = codec
        .encode(herd_codec::Encoded::new(&message), &mut dst)
        .unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLarge { length: l, max: 16 } if l == length as u64),
        "{err:?}"
    );
    assert_eq!(dst, before, "a refused pre-encoded frame left bytes behind");

    let mut out = Vec::new();
    let err = write_frame_with_max(&mut out, &message, 16).unwrap_err();
    assert!(matches!(err, CodecError::FrameTooLarge { .. }), "{err:?}");
    assert!(out.is_empty());
}

#[test]
fn stream_ending_inside_a_body_is_truncated_with_both_sizes() {
    let wire = frame(&encoded(&common::agent_messages().remove(0)));
    let cut = &wire[..wire.len() - 3];
    let expected = wire.len() - 4;
    let received = expected - 3;

    let mut codec = HubCodec::new();
    let mut src = BytesMut::from(cut);
    assert_eq!(
        codec.decode(&mut src).unwrap(),
        None,
        "incomplete frame: wait for more"
    );
    let err = codec.decode_eof(&mut src).unwrap_err();
    assert!(
        matches!(err, CodecError::Truncated { part: "body", expected: e, received: r } if e == expected && r == received),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "stream ended inside a frame's body: expected {expected} bytes, received {received}"
        )
    );

    let err = read_frame::<AgentMessage>(&mut &cut[..], MAX).unwrap_err();
    assert!(
        matches!(err, CodecError::Truncated { part: "body", expected: e, received: r } if e == expected && r == received),
        "{err:?}"
    );
}

#[test]
fn stream_ending_right_after_a_header_is_truncated_not_a_clean_end() {
    // LengthDelimitedCodec alone reports a clean end here (its buffer is empty
    // once it has consumed the header); the codec must not.
    let header = 10u32.to_be_bytes();
    let mut codec = AgentCodec::new();
    let mut src = BytesMut::from(&header[..]);
    assert_eq!(codec.decode(&mut src).unwrap(), None);
    assert!(src.is_empty());
    let async_err = codec.decode_eof(&mut src).unwrap_err();
    let blocking_err = read_frame::<HubMessage>(&mut &header[..], MAX).unwrap_err();
    for err in [async_err, blocking_err] {
        assert!(
            matches!(
                err,
                CodecError::Truncated {
                    part: "body",
                    expected: 10,
                    received: 0
                }
            ),
            "{err:?}"
        );
    }
}

#[test]
fn stream_ending_inside_a_header_is_truncated() {
    let mut src = BytesMut::from(&[0u8, 0][..]);
    let err = PluginHostCodec::new().decode_eof(&mut src).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Truncated {
                part: "length header",
                expected: 4,
                received: 2
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "stream ended inside a frame's length header: expected 4 bytes, received 2"
    );
    let err = read_frame::<PluginMessage>(&mut &[0u8, 0, 0][..], MAX).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Truncated {
                part: "length header",
                expected: 4,
                received: 3
            }
        ),
        "{err:?}"
    );
}

#[test]
fn zero_length_frame_of_a_wrapper_is_missing_its_kind() {
    let mut src = BytesMut::from(&frame(&[])[..]);
    let err = HubCodec::new().decode(&mut src).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::MissingKind {
                message_type: "herd.v1.AgentMessage",
                length: 0
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "herd.v1.AgentMessage frame of 0 bytes has no kind set \
         (an empty frame, or a kind from a newer protocol version)"
    );
    assert!(src.is_empty(), "the empty frame is consumed");

    let err = read_frame::<PluginCommand>(&mut &frame(&[])[..], MAX).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::MissingKind {
                message_type: "herd.v1.PluginCommand",
                length: 0
            }
        ),
        "{err:?}"
    );
}

#[test]
fn zero_length_frame_of_a_plain_message_is_its_default() {
    let read = read_frame::<Ack>(&mut &frame(&[])[..], MAX).unwrap();
    assert_eq!(read, Some(Ack::default()));
}

#[test]
fn unknown_kind_from_a_newer_protocol_is_missing_its_kind() {
    // Field 99, length-delimited, 2 bytes: a kind this version does not know.
    let body = [0x9a, 0x06, 2, 0x08, 1];
    let mut src = BytesMut::from(&frame(&body)[..]);
    let err = AgentCodec::new().decode(&mut src).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::MissingKind {
                message_type: "herd.v1.HubMessage",
                length: 5
            }
        ),
        "{err:?}"
    );
}

#[test]
fn undecodable_body_names_the_message_and_length_and_the_stream_stays_in_step() {
    // Field 1 (welcome), length-delimited, announcing 50 bytes with only 1 present.
    let garbage = [0x0a, 50, 0xff];
    let good = HubMessage::from(Ack { seq: 9 });
    let mut wire = frame(&garbage);
    wire.extend(frame(&encoded(&good)));

    let mut codec = AgentCodec::new();
    let mut src = BytesMut::from(&wire[..]);
    let err = codec.decode(&mut src).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Decode {
                message_type: "herd.v1.HubMessage",
                length: 3,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with("frame body of 3 bytes is not a valid herd.v1.HubMessage: "),
        "{text}"
    );
    assert_eq!(codec.decode(&mut src).unwrap(), Some(good.clone()));

    let mut reader = &wire[..];
    let err = read_frame::<HubMessage>(&mut reader, MAX).unwrap_err();
    assert!(
        matches!(err, CodecError::Decode { length: 3, .. }),
        "{err:?}"
    );
    assert_eq!(
        read_frame::<HubMessage>(&mut reader, MAX).unwrap(),
        Some(good)
    );
}

#[test]
fn invalid_utf8_in_a_string_field_is_a_decode_error() {
    // PluginMessage.record (1) -> Record.source (3) = [0xff, 0xfe]
    let body = [0x0a, 4, 0x1a, 2, 0xff, 0xfe];
    let err = read_frame::<PluginMessage>(&mut &frame(&body)[..], MAX).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Decode {
                message_type: "herd.v1.PluginMessage",
                length: 6,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn reader_failure_is_an_io_error() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer reset"))
        }
    }
    let err = read_frame::<AgentMessage>(&mut Broken, MAX).unwrap_err();
    assert!(
        matches!(&err, CodecError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "I/O error: peer reset");
}

/// Feeds `bytes` to a decoder the way `FramedRead` does and returns what came
/// out; stops at the first error, as a connection would.
fn drain<D: Decoder<Error = CodecError>>(mut codec: D, bytes: &[u8]) -> Result<usize, CodecError> {
    let mut src = BytesMut::new();
    src.put_slice(bytes);
    let mut frames = 0;
    while codec.decode(&mut src)?.is_some() {
        frames += 1;
    }
    while codec.decode_eof(&mut src)?.is_some() {
        frames += 1;
    }
    Ok(frames)
}

fn drain_blocking<M: WireMessage>(bytes: &[u8], max: usize) -> Result<usize, CodecError> {
    let mut reader = bytes;
    let mut frames = 0;
    while read_frame::<M>(&mut reader, max)?.is_some() {
        frames += 1;
    }
    Ok(frames)
}

/// Frames decoded before the first error (`None`: an error) by the async
/// codec and by the blocking reader.
fn both_readers<M: WireMessage>(bytes: &[u8], max: usize) -> (Option<usize>, Option<usize>) {
    (
        drain(FrameCodec::<M, ()>::with_max_frame_length(max), bytes).ok(),
        drain_blocking::<M>(bytes, max).ok(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random bytes never panic any decoder, and the async and blocking
    /// readers agree on how many frames they get before an error.
    #[test]
    fn random_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), small_max in 0usize..64) {
        for max in [MAX, small_max] {
            for (async_frames, blocking_frames) in [
                both_readers::<AgentMessage>(&bytes, max),
                both_readers::<HubMessage>(&bytes, max),
                both_readers::<PluginMessage>(&bytes, max),
                both_readers::<PluginCommand>(&bytes, max),
            ] {
                prop_assert_eq!(async_frames, blocking_frames);
            }
        }
    }

    /// A right-sized frame with a random body (the likelier attack) is
    /// either one message or a body error, never a framing error or a panic.
    #[test]
    fn random_bodies_behind_valid_headers_are_a_message_or_a_body_error(
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let wire = frame(&body);
        for result in [
            drain(HubCodec::new(), &wire),
            drain(AgentCodec::new(), &wire),
            drain(PluginHostCodec::new(), &wire),
            drain(PluginCodec::new(), &wire),
        ] {
            match result {
                Ok(frames) => prop_assert_eq!(frames, 1),
                Err(CodecError::Decode { length, .. } | CodecError::MissingKind { length, .. }) => {
                    prop_assert_eq!(length, body.len())
                }
                Err(other) => prop_assert!(false, "framing error for a whole frame: {other:?}"),
            }
        }
    }
}
