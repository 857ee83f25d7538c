//! Property tests: arbitrary messages, back to back, survive encoding, an
//! arbitrary chunking of the byte stream, and decoding.

use std::collections::HashMap;
use std::io::{self, Read};

use bytes::{Bytes, BytesMut};
use herd_codec::blocking::{read_frame, write_frame};
use herd_codec::proto::{
    Ack, AgentMessage, Batch, CertificateRequest, Command, ConfigSet, Durable, Goodbye, Hello,
    HubMessage, IssuedCertificate, Ping, PluginCommand, PluginConfig, PluginMessage, PluginStatus,
    Pong, Record, RestartPolicy, Task, TaskResult, Welcome,
};
use herd_codec::{AgentCodec, DEFAULT_MAX_FRAME_LENGTH, FrameCodec, HubCodec, WireMessage};
use proptest::collection::{hash_map, vec};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

fn text() -> impl Strategy<Value = String> {
    ".{0,12}"
}

fn fields() -> impl Strategy<Value = HashMap<String, String>> {
    hash_map(text(), text(), 0..4)
}

fn blob() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    vec(text(), 0..3)
}

prop_compose! {
    fn record()(data_type in any::<u32>(), timestamp_ms in any::<i64>(), source in text(),
                fields in fields(), body in blob()) -> Record {
        Record { data_type, timestamp_ms, source, fields, body }
    }
}

prop_compose! {
    fn task()(id in text(), data_type in any::<u32>(), target in text(), fields in fields(),
              body in blob(), timeout_ms in any::<u32>()) -> Task {
        Task { id, data_type, target, fields, body, timeout_ms }
    }
}

prop_compose! {
    fn task_result()(task_id in text(), status in 0i32..6, output in blob(), error in text(),
                     source in text(), fields in fields()) -> TaskResult {
        TaskResult { task_id, status, output, error, source, fields }
    }
}

prop_compose! {
    fn plugin_config()(name in text(), version in text(), sha256 in text(), path in text(),
                       source in text(), args in texts(), env in fields(),
                       restart in proptest::option::of(any::<[u32; 4]>())) -> PluginConfig {
        let restart = restart.map(|[min_backoff_ms, max_backoff_ms, max_restarts, period_secs]| {
            RestartPolicy { min_backoff_ms, max_backoff_ms, max_restarts, period_secs }
        });
        PluginConfig { name, version, sha256, path, source, args, env, restart }
    }
}

fn config_set() -> impl Strategy<Value = ConfigSet> {
    vec(plugin_config(), 0..3).prop_map(|plugins| ConfigSet { plugins })
}

prop_compose! {
    fn hello()(ids in vec(text(), 14..=14), ips in vec(texts(), 4..=4),
               numbers in any::<(u32, u32, u64, u64, u64)>(),
               plugins in vec((text(), text(), any::<u32>(), text()), 0..3),
               csr in blob()) -> Hello {
        let mut ids = ids.into_iter();
        let mut next = || ids.next().unwrap_or_default();
        let mut ips = ips.into_iter();
        let mut next_ips = || ips.next().unwrap_or_default();
        Hello {
            protocol_version: numbers.0,
            agent_id: next(),
            token: next(),
            product: next(),
            version: next(),
            hostname: next(),
            intranet_ipv4: next_ips(),
            intranet_ipv6: next_ips(),
            extranet_ipv4: next_ips(),
            extranet_ipv6: next_ips(),
            os: next(),
            platform: next(),
            platform_version: next(),
            kernel_version: next(),
            arch: next(),
            cpu_model: next(),
            cpu_cores: numbers.1,
            memory_bytes: numbers.2,
            boot_time: numbers.3,
            plugins: plugins
                .into_iter()
                .map(|(name, version, pid, state)| PluginStatus { name, version, pid, state })
                .collect(),
            last_acked_seq: numbers.4,
            csr,
        }
    }
}

fn agent_message() -> impl Strategy<Value = AgentMessage> {
    prop_oneof![
        hello().prop_map(AgentMessage::from),
        (any::<u64>(), vec(record(), 0..4))
            .prop_map(|(seq, records)| Batch { seq, records }.into()),
        task_result().prop_map(AgentMessage::from),
        any::<u64>().prop_map(|nonce| Pong { nonce }.into()),
        blob().prop_map(|csr| CertificateRequest { csr }.into()),
    ]
}

fn hub_message() -> impl Strategy<Value = HubMessage> {
    prop_oneof![
        (
            any::<bool>(),
            text(),
            text(),
            texts(),
            any::<u32>(),
            proptest::option::of(config_set()),
            text(),
            any::<[u32; 4]>(),
            blob(),
        )
            .prop_map(
                |(
                    ok,
                    agent_id,
                    message,
                    redirect,
                    heartbeat_interval_secs,
                    config,
                    hub_id,
                    limits,
                    certificate,
                )| {
                    let [
                        max_record_bytes,
                        max_frame_bytes,
                        ping_interval_ms,
                        ping_misses,
                    ] = limits;
                    Welcome {
                        ok,
                        agent_id,
                        message,
                        redirect,
                        heartbeat_interval_secs,
                        config,
                        hub_id,
                        max_record_bytes,
                        max_frame_bytes,
                        ping_interval_ms,
                        ping_misses,
                        certificate,
                    }
                    .into()
                }
            ),
        any::<u64>().prop_map(|seq| Ack { seq }.into()),
        (
            proptest::option::of(task()),
            proptest::option::of(config_set())
        )
            .prop_map(|(task, config)| Command { task, config }.into()),
        any::<u64>().prop_map(|nonce| Ping { nonce }.into()),
        (0i32..6, text()).prop_map(|(reason, message)| Goodbye { reason, message }.into()),
        (blob(), text())
            .prop_map(|(certificate, error)| IssuedCertificate { certificate, error }.into()),
    ]
}

fn plugin_command() -> impl Strategy<Value = PluginCommand> {
    prop_oneof![
        task().prop_map(PluginCommand::from),
        any::<u64>().prop_map(|through| Durable { through }.into()),
    ]
}

fn plugin_message() -> impl Strategy<Value = PluginMessage> {
    prop_oneof![
        record().prop_map(PluginMessage::from),
        task_result().prop_map(PluginMessage::from),
    ]
}

/// Encodes `messages` back to back, feeds the bytes to a fresh decoder in
/// chunks of the given sizes (cycling), and returns what it decoded.
fn through_chunks<M: WireMessage + Clone>(messages: &[M], chunks: &[usize]) -> Vec<M> {
    let mut encoder = FrameCodec::<(), M>::new();
    let mut wire = BytesMut::new();
    for message in messages {
        encoder.encode(message, &mut wire).expect("encode");
    }
    let mut decoder = FrameCodec::<M, ()>::new();
    let mut src = BytesMut::new();
    let mut decoded = Vec::new();
    let mut rest = &wire[..];
    for &size in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        src.extend_from_slice(chunk);
        while let Some(message) = decoder.decode(&mut src).expect("decode") {
            decoded.push(message);
        }
    }
    while let Some(message) = decoder.decode_eof(&mut src).expect("decode_eof") {
        decoded.push(message);
    }
    decoded
}

/// A reader that hands out at most the given number of bytes per call, like
/// a pipe that delivers writes in pieces.
struct Trickle<'a> {
    data: &'a [u8],
    chunks: std::iter::Cycle<std::slice::Iter<'a, usize>>,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (*self.chunks.next().unwrap_or(&1))
            .min(buf.len())
            .min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        buf[..n].copy_from_slice(head);
        self.data = tail;
        Ok(n)
    }
}

fn through_blocking<M: WireMessage + Clone>(messages: &[M], chunks: &[usize]) -> Vec<M> {
    let mut wire = Vec::new();
    for message in messages {
        write_frame(&mut wire, message).expect("write_frame");
    }
    let mut reader = Trickle {
        data: &wire,
        chunks: chunks.iter().cycle(),
    };
    let mut decoded = Vec::new();
    while let Some(message) =
        read_frame::<M>(&mut reader, DEFAULT_MAX_FRAME_LENGTH).expect("read_frame")
    {
        decoded.push(message);
    }
    decoded
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    vec(1usize..300, 1..16)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn agent_messages_survive_chunking(messages in vec(agent_message(), 1..8), chunks in chunk_sizes()) {
        prop_assert_eq!(&through_chunks(&messages, &chunks), &messages);
        prop_assert_eq!(&through_blocking(&messages, &chunks), &messages);
    }

    #[test]
    fn hub_messages_survive_chunking(messages in vec(hub_message(), 1..8), chunks in chunk_sizes()) {
        prop_assert_eq!(&through_chunks(&messages, &chunks), &messages);
        prop_assert_eq!(&through_blocking(&messages, &chunks), &messages);
    }

    #[test]
    fn plugin_commands_survive_chunking(messages in vec(plugin_command(), 1..8), chunks in chunk_sizes()) {
        prop_assert_eq!(&through_chunks(&messages, &chunks), &messages);
        prop_assert_eq!(&through_blocking(&messages, &chunks), &messages);
    }

    #[test]
    fn plugin_messages_survive_chunking(messages in vec(plugin_message(), 1..8), chunks in chunk_sizes()) {
        prop_assert_eq!(&through_chunks(&messages, &chunks), &messages);
        prop_assert_eq!(&through_blocking(&messages, &chunks), &messages);
    }

    /// Many small frames back to back, one byte at a time: every frame
    /// boundary falls at every position of the header.
    #[test]
    fn many_frames_one_byte_at_a_time(seqs in vec(any::<u64>(), 50..200)) {
        let messages: Vec<HubMessage> = seqs.into_iter().map(|seq| Ack { seq }.into()).collect();
        prop_assert_eq!(&through_chunks(&messages, &[1]), &messages);
    }
}

#[test]
fn codecs_of_the_two_ends_agree_on_a_long_stream() {
    // The aliases pair up: what one end encodes, the other end decodes.
    let messages: Vec<AgentMessage> = (0..1000)
        .map(|seq| {
            Batch {
                seq,
                records: vec![Record {
                    data_type: 2000,
                    ..Default::default()
                }],
            }
            .into()
        })
        .collect();
    let mut wire = BytesMut::new();
    let mut agent = AgentCodec::new();
    for message in &messages {
        agent.encode(message, &mut wire).unwrap();
    }
    let mut hub = HubCodec::new();
    let mut decoded = Vec::new();
    while let Some(message) = hub.decode_eof(&mut wire).unwrap() {
        decoded.push(message);
    }
    assert_eq!(decoded, messages);
}
