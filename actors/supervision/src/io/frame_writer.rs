//! [`FrameWriter`]: frames to a socket or pipe through a bounded queue.

use std::fmt;

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Running};
use futures::SinkExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::{Encoder, FramedWrite};

use super::error::WriteError;

/// Buffered bytes at which the writer writes to the transport without
/// waiting for the queue to run dry (tokio-util's default).
const FLUSH_AT: usize = 8 * 1024;

/// Writes frames to an `AsyncWrite` (a socket's or pipe's write half) from a task of its
/// own, fed by a bounded queue of `capacity` frames.
///
/// - Backpressure: [`send`](Self::send) waits while the queue is full;
///   [`try_send`](Self::try_send) returns [`TrySendError::Full`] with the frame. At most
///   `capacity` frames wait in the queue, plus what the encoder has buffered (tokio-util's
///   `FramedWrite` flushes once its buffer passes 8 KiB) — memory stays bounded however
///   slowly the peer reads.
/// - Nothing queued is lost on an orderly stop: [`close`](Self::close) writes and flushes
///   everything queued, shuts the write half down and returns the first error, if any.
///   Dropping the writer does the same in the background, as long as the runtime (the
///   arbiter) keeps running. An actor owning one should flush in `stopping` with
///   [`flush_then_stop`] so its supervisor's shutdown waits for the bytes (bounded by the
///   child's shutdown timeout).
/// - The task needs a tokio runtime (inside an actix arbiter there is one); the writer
///   itself may be moved between threads.
pub struct FrameWriter<Item> {
    tx: mpsc::Sender<Item>,
    task: JoinHandle<Result<(), WriteError>>,
    capacity: usize,
}

/// Why [`FrameWriter::try_send`] did not queue a frame; the frame is handed back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError<Item> {
    /// The queue holds `capacity` frames: the peer is not keeping up.
    #[error("frame queue is full")]
    Full(Item),
    /// The writer task has ended (the write failed or the writer was closed).
    #[error("frame writer is closed")]
    Closed(Item),
}

impl<Item: Send + 'static> FrameWriter<Item> {
    /// Starts writing to `io` with `encoder`, queueing at most `capacity` frames (at least 1).
    pub fn new<W, E>(io: W, encoder: E, capacity: usize) -> Self
    where
        W: AsyncWrite + Send + Unpin + 'static,
        E: Encoder<Item> + Send + 'static,
        E::Error: std::error::Error + Send + Sync + 'static,
    {
        Self::with_buffer(io, encoder, capacity, FLUSH_AT)
    }

    /// Like [`new`](Self::new), but the encode buffer starts at `buffer`
    /// bytes and grows only when a frame needs it: for the many idle
    /// connections of a server, where 8 KiB each that are hardly ever used
    /// add up. Frames are still written out once 8 KiB are buffered.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use bytes::Bytes;
    /// use herd_supervision::io::FrameWriter;
    /// use tokio::io::AsyncReadExt;
    /// use tokio_util::codec::BytesCodec;
    ///
    /// let (write, mut read) = tokio::io::duplex(64 * 1024);
    /// let writer = FrameWriter::with_buffer(write, BytesCodec::new(), 8, 256);
    /// writer.send(Bytes::from(vec![7u8; 20_000])).await?;
    /// writer.close().await?;
    /// let mut received = Vec::new();
    /// read.read_to_end(&mut received).await?;
    /// assert_eq!(received.len(), 20_000);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_buffer<W, E>(io: W, encoder: E, capacity: usize, buffer: usize) -> Self
    where
        W: AsyncWrite + Send + Unpin + 'static,
        E: Encoder<Item> + Send + 'static,
        E::Error: std::error::Error + Send + Sync + 'static,
    {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let mut framed = FramedWrite::with_capacity(io, encoder, buffer);
        framed.set_backpressure_boundary(FLUSH_AT);
        let task = tokio::spawn(write_all(rx, framed));
        Self { tx, task, capacity }
    }

    /// Queues `item`, waiting while the queue is full.
    ///
    /// # Errors
    /// [`WriteError::Closed`] if the writer task has ended (call [`close`](Self::close)
    /// for the error that ended it).
    pub async fn send(&self, item: Item) -> Result<(), WriteError> {
        self.tx.send(item).await.map_err(|_| WriteError::Closed)
    }

    /// Queues `item` if there is room now.
    pub fn try_send(&self, item: Item) -> Result<(), TrySendError<Item>> {
        self.tx.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(item) => TrySendError::Full(item),
            mpsc::error::TrySendError::Closed(item) => TrySendError::Closed(item),
        })
    }

    /// A clonable sender into the same queue (to move into a future). The writer finishes
    /// only once every sender is dropped.
    pub fn sender(&self) -> FrameSender<Item> {
        FrameSender(self.tx.clone())
    }

    /// Frames waiting in the queue now (not counting the one being encoded or written).
    pub fn queued(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    /// The queue's bound.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A handle that ends the writer task at once, dropping what is queued and the
    /// transport: for a peer that stopped reading, which [`close`](Self::close) would
    /// wait on forever.
    pub fn abort_handle(&self) -> tokio::task::AbortHandle {
        self.task.abort_handle()
    }

    /// Writes and flushes everything queued, shuts the write half down, and returns the
    /// first write or encode error. Waits for clones from [`sender`](Self::sender) to drop.
    pub async fn close(self) -> Result<(), WriteError> {
        drop(self.tx);
        match self.task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(WriteError::Panicked),
            Err(_) => Err(WriteError::Closed),
        }
    }
}

impl<Item> fmt::Debug for FrameWriter<Item> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameWriter")
            .field("capacity", &self.capacity)
            .field("free", &self.tx.capacity())
            .field("finished", &self.task.is_finished())
            .finish()
    }
}

/// A clone of a [`FrameWriter`]'s queue sender (see [`FrameWriter::sender`]).
pub struct FrameSender<Item>(mpsc::Sender<Item>);

impl<Item> Clone for FrameSender<Item> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<Item> fmt::Debug for FrameSender<Item> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameSender")
            .field("free", &self.0.capacity())
            .finish()
    }
}

impl<Item> FrameSender<Item> {
    /// Queues `item`, waiting while the queue is full.
    ///
    /// # Errors
    /// [`WriteError::Closed`] if the writer task has ended.
    pub async fn send(&self, item: Item) -> Result<(), WriteError> {
        self.0.send(item).await.map_err(|_| WriteError::Closed)
    }

    /// Queues `item` if there is room now.
    pub fn try_send(&self, item: Item) -> Result<(), TrySendError<Item>> {
        self.0.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(item) => TrySendError::Full(item),
            mpsc::error::TrySendError::Closed(item) => TrySendError::Closed(item),
        })
    }
}

/// The writer task: encode what arrives, flush whenever the queue runs dry, and on the
/// queue's end write out the rest and shut the write half down.
async fn write_all<W, E, Item>(
    mut rx: mpsc::Receiver<Item>,
    mut framed: FramedWrite<W, E>,
) -> Result<(), WriteError>
where
    W: AsyncWrite + Unpin,
    E: Encoder<Item>,
    E::Error: std::error::Error + Send + Sync + 'static,
{
    let encode = |e: E::Error| WriteError::Encode(Box::new(e));
    while let Some(item) = rx.recv().await {
        // `feed` writes to the transport once the encode buffer passes its backpressure
        // boundary, so a slow peer stalls this loop and the queue fills up.
        framed.feed(item).await.map_err(encode)?;
        while let Ok(item) = rx.try_recv() {
            framed.feed(item).await.map_err(encode)?;
        }
        SinkExt::<Item>::flush(&mut framed).await.map_err(encode)?;
    }
    framed.get_mut().shutdown().await.map_err(WriteError::Io)
}

/// For an actor's `stopping`: if `writer` holds a writer, take it, keep the actor alive
/// until everything it queued is written ([`FrameWriter::close`]), then stop it; returns
/// what `stopping` should return.
///
/// ```
/// use actix::prelude::*;
/// use bytes::Bytes;
/// use herd_supervision::io::{FrameWriter, flush_then_stop};
///
/// struct Conn {
///     writer: Option<FrameWriter<Bytes>>,
/// }
///
/// impl Actor for Conn {
///     type Context = Context<Self>;
///
///     fn stopping(&mut self, ctx: &mut Context<Self>) -> Running {
///         flush_then_stop(&mut self.writer, ctx)
///     }
/// }
/// ```
pub fn flush_then_stop<A, Item>(
    writer: &mut Option<FrameWriter<Item>>,
    ctx: &mut Context<A>,
) -> Running
where
    A: Actor<Context = Context<A>>,
    Item: Send + 'static,
{
    let Some(writer) = writer.take() else {
        return Running::Stop;
    };
    let close = actix::fut::wrap_future::<_, A>(writer.close());
    ctx.wait(close.map(|result, _, ctx| {
        if let Err(error) = result {
            tracing::warn!(%error, "frames could not all be written before stopping");
        }
        ctx.stop();
    }));
    Running::Continue
}
