//! FrameWriter over real TCP: bounded memory when the peer stops reading, nothing lost on
//! an orderly stop (also under a supervisor), and what `actix::io::FramedWrite` does.

mod support;

use std::pin::pin;

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use herd_supervision::io::{FrameWriter, TrySendError, flush_then_stop};
use herd_supervision::{ChildSpec, ExitReason, SupervisorSpec};
use support::{WAIT, expect_events};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

const FRAME: usize = 64 * 1024;
const SOCKET_BUFFER: u32 = 64 * 1024;

/// A connected pair over 127.0.0.1 with small kernel buffers, so a peer that does not read
/// stalls the writer after a few frames.
async fn tcp_pair() -> (OwnedWriteHalf, TcpStream) {
    let listener = TcpSocket::new_v4().unwrap();
    listener.set_recv_buffer_size(SOCKET_BUFFER).unwrap();
    listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = listener.listen(1).unwrap();
    let client = TcpSocket::new_v4().unwrap();
    client.set_send_buffer_size(SOCKET_BUFFER).unwrap();
    let (client, accepted) = tokio::join!(
        client.connect(listener.local_addr().unwrap()),
        listener.accept()
    );
    let (_read, write) = client.unwrap().into_split();
    (write, accepted.unwrap().0)
}

/// Frame `i`: its number, then filler up to [`FRAME`] bytes.
fn frame(i: u32) -> Bytes {
    let mut b = BytesMut::zeroed(FRAME);
    b[..4].copy_from_slice(&i.to_be_bytes());
    b.freeze()
}

/// Reads frames until EOF and returns their numbers.
async fn read_frames(peer: impl tokio::io::AsyncRead + Unpin) -> Vec<u32> {
    let mut frames = FramedRead::new(peer, LengthDelimitedCodec::new());
    let mut got = Vec::new();
    while let Some(f) = tokio::time::timeout(WAIT, frames.next())
        .await
        .expect("read timed out")
    {
        let f = f.unwrap();
        assert_eq!(f.len(), FRAME);
        got.push(u32::from_be_bytes(f[..4].try_into().unwrap()));
    }
    got
}

#[tokio::test]
async fn a_peer_that_stops_reading_bounds_memory_and_loses_nothing() {
    let (write, peer) = tcp_pair().await;
    let capacity = 8;
    let writer = FrameWriter::new(write, LengthDelimitedCodec::new(), capacity);

    // The peer reads nothing. Offer far more than the kernel buffers can hold, letting the
    // writer task run between offers; the queue fills and then refuses.
    let mut accepted = 0u32;
    let refused = loop {
        match writer.try_send(frame(accepted)) {
            Ok(()) => accepted += 1,
            Err(TrySendError::Full(f)) => break f,
            Err(TrySendError::Closed(_)) => panic!("writer closed"),
        }
        assert!(writer.queued() <= capacity);
        assert!(accepted < 200, "no backpressure after {accepted} frames");
        tokio::task::yield_now().await;
    };
    assert_eq!(
        u32::from_be_bytes(refused[..4].try_into().unwrap()),
        accepted
    );
    assert_eq!(writer.queued(), capacity);
    // Beyond the queue only what the kernel and the encoder buffer (a few frames) is held.
    assert!(
        accepted as usize <= capacity + 16,
        "{accepted} frames accepted for a queue of {capacity}"
    );
    // `send` waits rather than buffering more.
    {
        let mut blocked = pin!(writer.send(frame(accepted)));
        assert!(futures::poll!(blocked.as_mut()).is_pending());
        tokio::task::yield_now().await;
        assert!(futures::poll!(blocked.as_mut()).is_pending());
    }

    // The peer reads again: every accepted frame arrives, in order, then EOF on close.
    let reader = tokio::spawn(read_frames(peer));
    tokio::time::timeout(WAIT, writer.close())
        .await
        .unwrap()
        .unwrap();
    let got = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    assert_eq!(got, (0..accepted).collect::<Vec<_>>());
}

#[tokio::test]
async fn dropping_the_writer_still_writes_everything_queued() {
    let (write, peer) = tcp_pair().await;
    let writer = FrameWriter::new(write, LengthDelimitedCodec::new(), 32);
    for i in 0..32 {
        writer.try_send(frame(i)).unwrap();
    }
    drop(writer);
    assert_eq!(read_frames(peer).await, (0..32).collect::<Vec<_>>());
}

#[tokio::test]
async fn an_oversized_frame_is_an_encode_error_from_close() {
    let (write, _peer) = tcp_pair().await;
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(16)
        .new_codec();
    let writer = FrameWriter::new(write, codec, 4);
    writer.send(Bytes::from(vec![0u8; 17])).await.unwrap();
    let err = tokio::time::timeout(WAIT, writer.close())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, herd_supervision::io::WriteError::Encode(_)),
        "{err}"
    );
}

/// A supervised connection actor that queues frames and flushes them when stopped.
struct Conn {
    writer: Option<FrameWriter<Bytes>>,
    log: support::Log,
}

impl Actor for Conn {
    type Context = Context<Self>;

    fn stopping(&mut self, ctx: &mut Context<Self>) -> Running {
        flush_then_stop(&mut self.writer, ctx)
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.log.push("conn stopped".into());
    }
}

#[derive(Message)]
#[rtype(result = "usize")]
struct Burst(u32);

impl Handler<Burst> for Conn {
    type Result = usize;

    fn handle(&mut self, Burst(n): Burst, _: &mut Context<Self>) -> usize {
        let writer = self.writer.as_ref().unwrap();
        for i in 0..n {
            writer.try_send(frame(i)).unwrap();
        }
        writer.queued()
    }
}

#[actix::test]
async fn supervised_shutdown_flushes_buffered_frames_first() {
    let (write, peer) = tcp_pair().await;
    let write = std::sync::Mutex::new(Some(write));
    let log = support::Log::default();
    let conn_log = log.clone();
    let spec = SupervisorSpec::new("t").child(ChildSpec::new("conn", move || Conn {
        writer: write
            .lock()
            .unwrap()
            .take()
            .map(|w| FrameWriter::new(w, LengthDelimitedCodec::new(), 64)),
        log: conn_log.clone(),
    }));
    let mut rx = spec.subscribe();
    let sup = spec.start().unwrap();
    expect_events(&mut rx, &["t: conn started"]).await;
    let conn = sup.registry().get::<Conn>("t/conn").unwrap();
    // The peer is not reading: most of the burst is still queued when shutdown begins.
    let queued = conn.send(Burst(64)).await.unwrap();
    assert!(queued > 32, "only {queued} of 64 frames still queued");

    let shutdown = actix::spawn({
        let sup = sup.clone();
        async move { sup.shutdown().await }
    });
    expect_events(
        &mut rx,
        &["t: shutdown started (shutdown)", "t: conn stopping"],
    )
    .await;
    assert!(log.take().is_empty(), "conn stopped before flushing");
    let got = read_frames(peer).await;
    assert_eq!(got, (0..64).collect::<Vec<_>>());
    assert_eq!(
        tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap(),
        ExitReason::Shutdown
    );
    expect_events(
        &mut rx,
        &["t: conn exited (shutdown)", "t: stopped (shutdown)"],
    )
    .await;
    assert_eq!(log.take(), ["conn stopped"]);
}

/// actix's own writer, for comparison.
struct ActixWriter {
    writer: actix::io::FramedWrite<Bytes, OwnedWriteHalf, LengthDelimitedCodec>,
}

impl Actor for ActixWriter {
    type Context = Context<Self>;
}

impl actix::io::WriteHandler<std::io::Error> for ActixWriter {}

#[derive(Message)]
#[rtype(result = "()")]
struct WriteAndStop(u32);

impl Handler<WriteAndStop> for ActixWriter {
    type Result = ();

    fn handle(&mut self, WriteAndStop(n): WriteAndStop, ctx: &mut Context<Self>) {
        // No backpressure signal: every write is accepted into an unbounded buffer.
        for i in 0..n {
            self.writer.write(frame(i));
        }
        ctx.stop();
    }
}

#[actix::test]
async fn io_actix_framed_write_buffers_without_bound_and_drops_on_stop() {
    let (write, mut peer) = tcp_pair().await;
    let addr = ActixWriter::create(|ctx| ActixWriter {
        writer: actix::io::FramedWrite::new(write, LengthDelimitedCodec::new(), ctx),
    });
    let frames = 64u32;
    addr.send(WriteAndStop(frames)).await.unwrap();
    // The actor stopped with most of its 4 MiB still buffered; the peer now reads to EOF.
    let mut bytes = Vec::new();
    tokio::time::timeout(WAIT, peer.read_to_end(&mut bytes))
        .await
        .unwrap()
        .unwrap();
    let written = frames as usize * (FRAME + 4);
    assert!(
        bytes.len() < written / 2,
        "actix FramedWrite delivered {} of {written} bytes",
        bytes.len()
    );
}
