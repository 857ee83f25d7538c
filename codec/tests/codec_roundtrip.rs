//! Every message type survives encode -> decode, on the async codec (both
//! directions of both links) and on the blocking functions, and the two
//! produce the same bytes.

mod common;

use std::fmt::Debug;

use bytes::BytesMut;
use herd_codec::blocking::{read_frame, write_frame};
use herd_codec::proto::Envelope;
use herd_codec::{
    AgentCodec, DEFAULT_MAX_FRAME_LENGTH, FrameCodec, HubCodec, PluginCodec, PluginHostCodec,
    WireMessage,
};
use tokio_util::codec::{Decoder, Encoder};

/// Encodes `messages` with `encoder`, decodes them with `decoder` and with the
/// blocking reader, and checks both against the originals.
fn roundtrip<M, X, Y>(
    messages: Vec<M>,
    mut encoder: FrameCodec<X, M>,
    mut decoder: FrameCodec<M, Y>,
) where
    M: WireMessage + Clone + PartialEq + Debug,
{
    let mut wire = BytesMut::new();
    for message in &messages {
        encoder.encode(message, &mut wire).expect("encode");
    }

    let mut blocking_wire = Vec::new();
    for message in &messages {
        write_frame(&mut blocking_wire, message).expect("write_frame");
    }
    assert_eq!(
        &wire[..],
        &blocking_wire[..],
        "async and blocking encoders differ"
    );

    let mut reader = &blocking_wire[..];
    for expected in &messages {
        let read: Option<M> =
            read_frame(&mut reader, DEFAULT_MAX_FRAME_LENGTH).expect("read_frame");
        assert_eq!(read.as_ref(), Some(expected));
    }
    assert_eq!(
        read_frame::<M>(&mut reader, DEFAULT_MAX_FRAME_LENGTH).expect("eof"),
        None
    );

    for expected in &messages {
        let decoded = decoder.decode(&mut wire).expect("decode");
        assert_eq!(decoded.as_ref(), Some(expected));
    }
    assert!(wire.is_empty(), "{} bytes left over", wire.len());
    assert_eq!(decoder.decode_eof(&mut wire).expect("clean eof"), None);
}

#[test]
fn agent_to_hub_messages_roundtrip() {
    roundtrip(common::agent_messages(), AgentCodec::new(), HubCodec::new());
}

#[test]
fn hub_to_agent_messages_roundtrip() {
    roundtrip(common::hub_messages(), HubCodec::new(), AgentCodec::new());
}

#[test]
fn agent_to_plugin_messages_roundtrip() {
    roundtrip(
        common::plugin_commands(),
        PluginHostCodec::new(),
        PluginCodec::new(),
    );
}

#[test]
fn plugin_to_agent_messages_roundtrip() {
    roundtrip(
        common::plugin_messages(),
        PluginCodec::new(),
        PluginHostCodec::new(),
    );
}

#[test]
fn envelope_roundtrips() {
    roundtrip(
        vec![common::envelope(), Envelope::default()],
        FrameCodec::<(), Envelope>::new(),
        FrameCodec::<Envelope, ()>::new(),
    );
}

#[test]
fn frame_is_a_big_endian_length_then_the_protobuf_bytes() {
    let message = common::agent_messages().remove(1);
    let mut wire = BytesMut::new();
    AgentCodec::new().encode(&message, &mut wire).unwrap();
    let body = prost::Message::encode_to_vec(&message);
    assert_eq!(&wire[..4], &(body.len() as u32).to_be_bytes());
    assert_eq!(&wire[4..], &body[..]);
}

#[test]
fn a_message_of_exactly_the_maximum_length_passes() {
    let message = common::plugin_messages().remove(0);
    let length = prost::Message::encoded_len(&message);
    let mut wire = BytesMut::new();
    PluginCodec::with_max_frame_length(length)
        .encode(&message, &mut wire)
        .expect("a frame of exactly the maximum is allowed");
    let decoded = PluginHostCodec::with_max_frame_length(length)
        .decode(&mut wire)
        .expect("decode");
    assert_eq!(decoded, Some(message));
}

#[test]
fn default_codec_uses_the_default_maximum() {
    assert_eq!(HubCodec::default().max_frame_length(), 4 * 1024 * 1024);
    assert_eq!(HubCodec::new().max_frame_length(), DEFAULT_MAX_FRAME_LENGTH);
    assert_eq!(HubCodec::with_max_frame_length(10).max_frame_length(), 10);
    assert_eq!(
        HubCodec::with_max_frame_length(usize::MAX).max_frame_length(),
        u32::MAX as usize,
        "the 4-byte header cannot announce more"
    );
    let debug = format!("{:?}", HubCodec::new());
    assert!(
        debug.contains("AgentMessage") && debug.contains("4194304"),
        "{debug}"
    );
}

#[tokio::test]
async fn framed_streams_carry_messages_over_a_socket() {
    use futures::{SinkExt, StreamExt};
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::codec::Framed;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let test = async {
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut agent = Framed::new(client.unwrap(), AgentCodec::new());
        let mut hub = Framed::new(server.unwrap().0, HubCodec::new());

        for message in common::agent_messages() {
            agent.send(message).await.unwrap();
        }
        drop(agent); // EOF after the last frame: the stream must end cleanly
        let mut received = Vec::new();
        while let Some(message) = hub.next().await {
            received.push(message.expect("decode"));
        }
        assert_eq!(received, common::agent_messages());
    };
    tokio::time::timeout(Duration::from_secs(10), test)
        .await
        .expect("socket round trip timed out");
}
