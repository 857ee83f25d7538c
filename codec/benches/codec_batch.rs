//! Encode and decode of one `Batch` of 8192 records of about 200 bytes each,
//! against a plain memcpy of the same number of bytes in the same run.
//!
//! Criterion measures the three; afterwards a short timed loop of its own
//! prints each codec operation as a multiple of the memcpy, since criterion
//! does not print ratios.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput};
use herd_codec::proto::{AgentMessage, Batch, Record};
use herd_codec::{AgentCodec, HubCodec};
use tokio_util::codec::{Decoder, Encoder};

const RECORDS: usize = 8192;
const RECORD_BYTES: usize = 200;

fn record(i: usize) -> Record {
    let mut record = Record {
        data_type: 2000 + (i % 4) as u32,
        timestamp_ms: 1_763_884_800_000 + i as i64,
        source: "sysmetrics".into(),
        fields: [
            ("host", "web-01".to_string()),
            ("metric", format!("cpu{}", i % 64)),
            ("value", format!("{}.{}", i % 100, i % 7)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        body: Default::default(),
    };
    let missing = RECORD_BYTES.saturating_sub(prost::Message::encoded_len(&record) + 2);
    record.body = vec![b'x'; missing].into();
    record
}

fn batch() -> AgentMessage {
    Batch {
        seq: 1,
        records: (0..RECORDS).map(record).collect(),
    }
    .into()
}

fn encode(codec: &mut AgentCodec, message: &AgentMessage, dst: &mut BytesMut) {
    dst.clear();
    codec.encode(message, dst).expect("encode");
}

fn decode(codec: &mut HubCodec, src: &mut BytesMut) -> AgentMessage {
    codec.decode(src).expect("decode").expect("a whole frame")
}

fn benches(c: &mut Criterion, message: &AgentMessage, frame: &BytesMut) {
    let mut group = c.benchmark_group("batch_8192x200B");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.sample_size(30);

    group.bench_function("memcpy_baseline", |b| {
        let mut dst = vec![0u8; frame.len()];
        b.iter(|| dst.copy_from_slice(black_box(&frame[..])));
    });
    group.bench_function("encode", |b| {
        let mut codec = AgentCodec::new();
        let mut dst = BytesMut::with_capacity(frame.len());
        b.iter(|| encode(&mut codec, black_box(message), &mut dst));
    });
    group.bench_function("decode", |b| {
        let mut codec = HubCodec::new();
        b.iter_batched(
            || frame.clone(),
            |mut src| decode(&mut codec, &mut src),
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

/// Median time of `op` over repeated runs, `setup` excluded from the timing.
fn median<S, T>(mut setup: impl FnMut() -> S, mut op: impl FnMut(S) -> T) -> Duration {
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < 11 || (started.elapsed() < Duration::from_millis(700) && times.len() < 400)
    {
        let input = setup();
        let t = Instant::now();
        black_box(op(input));
        times.push(t.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

fn print_ratios(message: &AgentMessage, frame: &BytesMut) {
    let mut dst = vec![0u8; frame.len()];
    let memcpy = median(|| (), |()| dst.copy_from_slice(black_box(&frame[..])));
    let mut encoder = AgentCodec::new();
    let mut out = BytesMut::with_capacity(frame.len());
    let encode_time = median(|| (), |()| encode(&mut encoder, message, &mut out));
    let mut decoder = HubCodec::new();
    let decode_time = median(|| frame.clone(), |mut src| decode(&mut decoder, &mut src));

    let mib = frame.len() as f64 / (1024.0 * 1024.0);
    let rate = |d: Duration| mib / d.as_secs_f64();
    let ratio = |d: Duration| d.as_secs_f64() / memcpy.as_secs_f64();
    println!(
        "\nbatch of {RECORDS} records, frame {} bytes ({:.0} B/record); medians:",
        frame.len(),
        frame.len() as f64 / RECORDS as f64
    );
    println!(
        "  memcpy  {memcpy:>10.2?}  {:>8.0} MiB/s  1.0x (baseline)",
        rate(memcpy)
    );
    for (name, time) in [("encode", encode_time), ("decode", decode_time)] {
        println!(
            "  {name}  {time:>10.2?}  {:>8.0} MiB/s  {:.1}x memcpy",
            rate(time),
            ratio(time)
        );
    }
}

fn main() {
    let message = batch();
    let mut frame = BytesMut::new();
    AgentCodec::new()
        .encode(&message, &mut frame)
        .expect("the batch fits in one frame");

    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion, &message, &frame);
    criterion.final_summary();
    print_ratios(&message, &frame);
}
