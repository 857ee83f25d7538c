//! Errors of the frame writer.

/// Why frames could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Writing to, flushing or shutting down the transport failed.
    #[error("writing frames failed: {0}")]
    Io(#[from] std::io::Error),
    /// The encoder rejected a frame (e.g. it is longer than the maximum frame length).
    #[error("encoding a frame failed: {0}")]
    Encode(Box<dyn std::error::Error + Send + Sync>),
    /// The writer task has ended, after an error or a close.
    #[error("frame writer is closed")]
    Closed,
    /// The writer task panicked (a bug in the encoder or transport).
    #[error("frame writer task panicked")]
    Panicked,
}
