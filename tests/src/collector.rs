//! Reads everything the hub published to `herd.data.>` from a JetStream
//! stream and keeps per-agent tallies a test can check for losses.
//!
//! The stream (file storage, de-duplicated by `Nats-Msg-Id`) holds records
//! across subscriber gaps and `nats-server` restarts; the collector reads it
//! in order with an ordered consumer and, whenever that consumer fails (the
//! server went away), opens a new one at the next stream sequence.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use herd_codec::proto::Envelope;
use herd_hub::HEADER_MSG_ID;
use prost::Message as _;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::counter::COUNTER;
use crate::hub::POLL;
use crate::process::E2eError;

/// Name of the stream on `herd.data.>`.
pub const DATA_STREAM: &str = "HERD_DATA";

/// Creates the file-backed stream on `herd.data.>` the hub publishes into
/// (needed by `ack_mode = "jetstream"`).
pub async fn create_data_stream(client: &async_nats::Client) -> Result<(), E2eError> {
    jetstream::new(client.clone())
        .create_stream(stream::Config {
            name: DATA_STREAM.to_owned(),
            subjects: vec!["herd.data.>".to_owned()],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(|error| E2eError::Nats {
            what: format!("creating stream {DATA_STREAM}"),
            reason: error.to_string(),
        })
}

/// What one agent delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentTally {
    /// Records per `source` (plugin name or `agent`).
    pub by_source: BTreeMap<String, u64>,
    /// Batch sequence numbers seen, with the record indexes seen in each.
    pub batches: BTreeMap<u64, BTreeSet<u32>>,
    /// Counter plugin numbers per plugin name, with how often each arrived.
    pub counters: BTreeMap<String, BTreeMap<u64, u32>>,
    /// Distinct `(path, offset)` of the log lines (data type 2100) received.
    pub log_lines: BTreeSet<(String, u64)>,
}

impl AgentTally {
    /// The highest counter number of `plugin` seen (0: none).
    pub fn counter_max(&self, plugin: &str) -> u64 {
        self.counters
            .get(plugin)
            .and_then(|numbers| numbers.keys().next_back().copied())
            .unwrap_or(0)
    }

    /// Counter numbers of `plugin` in `1..=up_to` that never arrived.
    pub fn counter_missing(&self, plugin: &str, up_to: u64) -> Vec<u64> {
        let seen = self.counters.get(plugin);
        (1..=up_to)
            .filter(|n| !seen.is_some_and(|numbers| numbers.contains_key(n)))
            .collect()
    }

    /// Counter numbers of `plugin` that arrived more than once (in
    /// different batches: the plugin sent them again after a restart).
    pub fn counter_duplicates(&self, plugin: &str) -> u64 {
        self.counters.get(plugin).map_or(0, |numbers| {
            numbers
                .values()
                .map(|&count| u64::from(count.saturating_sub(1)))
                .sum()
        })
    }

    /// Batch sequence numbers in `1..=max seen` that never arrived.
    pub fn missing_batches(&self) -> Vec<u64> {
        let last = self.batches.keys().next_back().copied().unwrap_or(0);
        (1..=last)
            .filter(|seq| !self.batches.contains_key(seq))
            .collect()
    }

    /// Batches whose record indexes are not 0, 1, ..., n-1.
    pub fn gapped_batches(&self) -> Vec<u64> {
        self.batches
            .iter()
            .filter(|(_, indexes)| {
                indexes
                    .iter()
                    .copied()
                    .zip(0..)
                    .any(|(index, expected)| index != expected)
            })
            .map(|(&seq, _)| seq)
            .collect()
    }
}

/// Everything the collector saw.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Messages read from the stream.
    pub messages: u64,
    /// Messages whose record (agent id, seq, index) had been read before
    /// (the stream's de-duplication by `Nats-Msg-Id` should make this 0).
    pub duplicate_ids: u64,
    /// Messages that were not a decodable envelope, or whose `Nats-Msg-Id`
    /// names another record.
    pub malformed: u64,
    /// Per agent id.
    pub agents: BTreeMap<String, AgentTally>,
    ids: BTreeSet<String>,
}

impl Tally {
    fn add(&mut self, message: &async_nats::Message) {
        self.messages += 1;
        let Ok(envelope) = Envelope::decode(message.payload.clone()) else {
            self.malformed += 1;
            return;
        };
        // The record's identity is in the envelope; a `Nats-Msg-Id` (set in
        // JetStream mode) must name the same record.
        let msg_id = format!("{}.{}.{}", envelope.agent_id, envelope.seq, envelope.index);
        let header = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(HEADER_MSG_ID));
        if header.is_some_and(|header| header.as_str() != msg_id) {
            self.malformed += 1;
            return;
        }
        if !self.ids.insert(msg_id) {
            self.duplicate_ids += 1;
            return;
        }
        let Some(record) = envelope.record else {
            self.malformed += 1;
            return;
        };
        let agent = self.agents.entry(envelope.agent_id).or_default();
        *agent.by_source.entry(record.source.clone()).or_default() += 1;
        agent
            .batches
            .entry(envelope.seq)
            .or_default()
            .insert(envelope.index);
        if record.data_type == herd_plugin_logtail::LINE {
            let path = record.fields.get("path").cloned().unwrap_or_default();
            match record
                .fields
                .get("offset")
                .and_then(|offset| offset.parse().ok())
            {
                Some(offset) => {
                    agent.log_lines.insert((path, offset));
                }
                None => self.malformed += 1,
            }
        }
        if record.data_type == COUNTER {
            match record.fields.get("n").and_then(|n| n.parse::<u64>().ok()) {
                Some(n) => {
                    *agent
                        .counters
                        .entry(record.source)
                        .or_default()
                        .entry(n)
                        .or_default() += 1
                }
                None => self.malformed += 1,
            }
        }
    }
}

/// Reads the data stream in the background into a [`Tally`].
#[derive(Debug)]
pub struct Collector {
    tally: Arc<Mutex<Tally>>,
    task: JoinHandle<()>,
}

impl Collector {
    /// Starts reading [`DATA_STREAM`] from its first message with `client`
    /// (which reconnects by itself when the server comes back).
    pub fn start(client: async_nats::Client) -> Self {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let task = tokio::spawn(read_forever(client, tally.clone()));
        Self { tally, task }
    }

    /// A copy of the tally now.
    pub fn snapshot(&self) -> Tally {
        self.tally.lock().expect("collector lock").clone()
    }

    /// Polls the tally until `done` holds for it, at most `timeout`; on
    /// timeout the error shows `describe` of the last tally.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Tally) -> bool,
        describe: impl Fn(&Tally) -> String,
    ) -> Result<Tally, E2eError> {
        let deadline = Instant::now() + timeout;
        loop {
            let tally = self.snapshot();
            if done(&tally) {
                return Ok(tally);
            }
            if Instant::now() >= deadline {
                return Err(E2eError::Timeout {
                    what: what.to_owned(),
                    waited: timeout,
                    detail: describe(&tally),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_forever(client: async_nats::Client, tally: Arc<Mutex<Tally>>) {
    let context = jetstream::new(client.clone());
    let mut next_sequence = 1;
    loop {
        if let Err(error) = read_from(&client, &context, &tally, &mut next_sequence).await {
            // stderr: the test harness shows it for failed tests only.
            eprintln!("collector: {error}; resuming at stream sequence {next_sequence}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn read_from(
    client: &async_nats::Client,
    context: &jetstream::Context,
    tally: &Mutex<Tally>,
    next_sequence: &mut u64,
) -> Result<(), async_nats::Error> {
    let stream = context.get_stream(DATA_STREAM).await?;
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: *next_sequence,
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let sequence = message.info()?.stream_sequence;
        if sequence < *next_sequence {
            continue;
        }
        *next_sequence = sequence + 1;
        tally.lock().expect("collector lock").add(&message.message);
    }
    Ok(())
}
