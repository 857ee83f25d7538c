//! Writing records and task results to the agent.

use std::fmt;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herd_codec::CodecError;
use herd_codec::blocking::write_frame_with_max;
use herd_codec::proto::{PluginMessage, Record, TaskResult};

use crate::error::PluginError;
use crate::shutdown::Shutdown;

type Writer = Box<dyn Write + Send>;

/// Sends records and task results to the agent; cheap to clone and usable
/// from any thread.
///
/// Every message is written as one whole frame and flushed under a lock, so
/// frames from different threads never interleave. When the write fails
/// because the agent closed the pipe, the emitter returns
/// [`PluginError::Disconnected`] from then on and triggers the plugin's
/// [`Shutdown`], so worker loops end by themselves.
#[derive(Clone)]
pub struct Emitter {
    /// `None` once the pipe broke: later sends fail fast instead of writing.
    writer: Arc<Mutex<Option<Writer>>>,
    /// Records written so far (under the writer's lock, so in frame order).
    records_sent: Arc<std::sync::atomic::AtomicU64>,
    shutdown: Shutdown,
    max_frame_length: usize,
}

impl fmt::Debug for Emitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emitter")
            .field("max_frame_length", &self.max_frame_length)
            .field("shutdown", &self.shutdown.is_triggered())
            .finish_non_exhaustive()
    }
}

impl Emitter {
    pub(crate) fn new(writer: Writer, shutdown: Shutdown, max_frame_length: usize) -> Self {
        Self {
            writer: Arc::new(Mutex::new(Some(writer))),
            records_sent: Arc::default(),
            shutdown,
            max_frame_length,
        }
    }

    /// Starts a record of `data_type`; finish it with [`RecordBuilder::send`].
    pub fn record(&self, data_type: u32) -> RecordBuilder<'_> {
        RecordBuilder {
            emitter: self,
            record: Record {
                data_type,
                ..Record::default()
            },
        }
    }

    /// Sends a complete record and returns its number: 1 for this process's
    /// first record, and so on (what [`Checkpoint::durable`] counts). A zero
    /// `timestamp_ms` is set to now; `source` is left alone because the agent
    /// overwrites it with the plugin's name.
    ///
    /// [`Checkpoint::durable`]: crate::Checkpoint::durable
    pub fn send_record(&self, mut record: Record) -> Result<u64, PluginError> {
        if record.timestamp_ms == 0 {
            record.timestamp_ms = now_ms();
        }
        let mut number = 0;
        self.send(&PluginMessage::from(record), "record", || {
            number = self
                .records_sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
        })?;
        Ok(number)
    }

    /// Sends the answer to a task. [`Plugin::run`](crate::Plugin::run) does
    /// this for the handler's return value; call it directly only for tasks
    /// answered outside the handler.
    pub fn send_result(&self, result: TaskResult) -> Result<(), PluginError> {
        self.send(&PluginMessage::from(result), "task result", || {})
    }

    /// Writes one frame; `written` runs under the lock once it is out.
    fn send(
        &self,
        message: &PluginMessage,
        what: &'static str,
        written: impl FnOnce(),
    ) -> Result<(), PluginError> {
        let mut slot = self.writer.lock().map_err(|_| PluginError::Poisoned)?;
        let Some(writer) = slot.as_mut() else {
            return Err(PluginError::Disconnected);
        };
        let result = write_frame_with_max(writer, message, self.max_frame_length)
            .and_then(|()| writer.flush().map_err(CodecError::Io));
        match result {
            Ok(()) => {
                written();
                Ok(())
            }
            Err(CodecError::Io(error)) if error.kind() == io::ErrorKind::BrokenPipe => {
                *slot = None;
                self.shutdown.trigger();
                Err(PluginError::Disconnected)
            }
            Err(source) => Err(PluginError::Write { what, source }),
        }
    }
}

/// A record being built; created by [`Emitter::record`].
#[derive(Debug)]
#[must_use = "a record is only sent by `send`"]
pub struct RecordBuilder<'a> {
    emitter: &'a Emitter,
    record: Record,
}

impl RecordBuilder<'_> {
    /// Adds one field; any `Display` value is stored as its text.
    pub fn field(mut self, key: impl Into<String>, value: impl fmt::Display) -> Self {
        self.record.fields.insert(key.into(), value.to_string());
        self
    }

    /// Adds many fields at once.
    pub fn fields<K, V>(mut self, fields: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.record
            .fields
            .extend(fields.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Sets the opaque body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.record.body = body.into();
        self
    }

    /// Sets the timestamp (milliseconds since the Unix epoch) instead of now.
    pub fn timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.record.timestamp_ms = timestamp_ms;
        self
    }

    /// The record as built so far, without sending it.
    pub fn into_record(self) -> Record {
        self.record
    }

    /// Writes the record to the agent; returns its number (see
    /// [`Emitter::send_record`]).
    pub fn send(self) -> Result<u64, PluginError> {
        self.emitter.send_record(self.record)
    }
}

/// Milliseconds since the Unix epoch; 0 if the clock is before 1970.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}
