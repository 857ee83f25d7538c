//! Writing frames to sockets and pipes with bounded buffering and backpressure.
//!
//! [`FrameWriter`] owns the write half of a transport and an encoder, and writes from a
//! task of its own fed by a bounded queue: senders wait (or get
//! [`TrySendError::Full`]) when the peer does not keep up, and an orderly stop writes
//! everything queued before the writer finishes ([`FrameWriter::close`],
//! [`flush_then_stop`] for an actor's `stopping`).
//!
//! ```
//! use bytes::Bytes;
//! use herd_supervision::io::FrameWriter;
//! use tokio::io::AsyncReadExt;
//! use tokio_util::codec::LengthDelimitedCodec;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (ours, mut theirs) = tokio::net::UnixStream::pair()?;
//! let (_read, write) = ours.into_split();
//! let writer = FrameWriter::new(write, LengthDelimitedCodec::new(), 64);
//! writer.send(Bytes::from_static(b"hello")).await?;
//! writer.close().await?; // written, flushed, write half shut down
//! let mut bytes = Vec::new();
//! theirs.read_to_end(&mut bytes).await?;
//! assert_eq!(bytes, b"\0\0\0\x05hello");
//! # Ok(())
//! # }
//! ```
//!
//! # Why not `actix::io::FramedWrite`
//!
//! Read in actix 0.13.5 `src/io.rs` and confirmed by the `io_actix_framed_write` test:
//! `FramedWrite::write` encodes every item straight into a `BytesMut` and returns `()`,
//! so the buffer grows without bound while the peer does not read. Its high-watermark
//! pause (`ctx.wait(WriterDrain)`) is only reached when `poll_write` returns
//! `Err(WouldBlock)`, which tokio's `AsyncWrite` types never do (they return `Pending`).
//! The writing future is an item of the actor's context, which is no longer polled once
//! the actor stops, and `Drop` only *creates* `write`/`flush` futures and drops them
//! unpolled — so whatever was still buffered when the actor stops is never written.

mod error;
mod frame_writer;

pub use error::WriteError;
pub use frame_writer::{FrameSender, FrameWriter, TrySendError, flush_then_stop};
