//! Arbitrary bytes into every herd decoder: the async `FrameCodec` (fed in
//! chunks, as a socket would) and the blocking `read_frame`, for each of the
//! four stream message types, with the default and a small maximum frame
//! length.
//!
//! Beyond "no panic, no runaway allocation", it checks that both readers
//! agree on the frames before the first error, and that every decoded
//! message survives re-encoding.

#![no_main]

use std::fmt::Debug;

use bytes::BytesMut;
use herd_codec::blocking::read_frame;
use herd_codec::proto::{AgentMessage, HubMessage, PluginCommand, PluginMessage};
use herd_codec::{DEFAULT_MAX_FRAME_LENGTH, FrameCodec, WireMessage};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

fn async_frames<M: WireMessage>(data: &[u8], chunk: usize, max: usize) -> (Vec<M>, bool) {
    let mut codec = FrameCodec::<M, ()>::with_max_frame_length(max);
    let mut src = BytesMut::new();
    let mut frames = Vec::new();
    for piece in data.chunks(chunk) {
        src.extend_from_slice(piece);
        loop {
            match codec.decode(&mut src) {
                Ok(Some(message)) => frames.push(message),
                Ok(None) => break,
                Err(_) => return (frames, false),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut src) {
            Ok(Some(message)) => frames.push(message),
            Ok(None) => return (frames, true),
            Err(_) => return (frames, false),
        }
    }
}

fn blocking_frames<M: WireMessage>(mut data: &[u8], max: usize) -> (Vec<M>, bool) {
    let mut frames = Vec::new();
    loop {
        match read_frame::<M>(&mut data, max) {
            Ok(Some(message)) => frames.push(message),
            Ok(None) => return (frames, true),
            Err(_) => return (frames, false),
        }
    }
}

fn check<M: WireMessage + PartialEq + Debug>(data: &[u8], chunk: usize, max: usize) {
    let (async_messages, async_clean) = async_frames::<M>(data, chunk, max);
    let (blocking_messages, blocking_clean) = blocking_frames::<M>(data, max);
    assert_eq!(
        async_messages, blocking_messages,
        "readers disagree on the frames"
    );
    assert_eq!(
        async_clean, blocking_clean,
        "readers disagree on the outcome"
    );

    for message in async_messages {
        let mut wire = BytesMut::new();
        // A decoded message can exceed `max` once re-encoded (unknown fields
        // are dropped, but varints may grow), so re-encode without a limit.
        FrameCodec::<(), M>::with_max_frame_length(usize::MAX)
            .encode(&message, &mut wire)
            .expect("a decoded message re-encodes");
        let again = FrameCodec::<M, ()>::with_max_frame_length(usize::MAX)
            .decode(&mut wire)
            .expect("a re-encoded message decodes")
            .expect("a whole frame");
        assert_eq!(again, message, "changed by re-encoding");
    }
}

fuzz_target!(|input: &[u8]| {
    // The first byte picks the chunk size and the maximum frame length.
    let Some((&knob, data)) = input.split_first() else {
        return;
    };
    let chunk = usize::from(knob & 0x3f) + 1;
    let max = if knob & 0x40 == 0 {
        DEFAULT_MAX_FRAME_LENGTH
    } else {
        usize::from(knob & 0x3f) * 4
    };
    check::<AgentMessage>(data, chunk, max);
    check::<HubMessage>(data, chunk, max);
    check::<PluginCommand>(data, chunk, max);
    check::<PluginMessage>(data, chunk, max);
});
