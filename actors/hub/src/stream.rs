//! The JetStream stream records land in when the hub acks after `PubAck`
//! (`ack_mode = "jetstream"`, the default): kept in place by the
//! [`DataStream`] actor, reported by `/healthz`.

use std::time::Duration;

use actix::prelude::*;
use async_nats::jetstream::stream;
use herd_supervision::{Backoff, Retry};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::DataForm;
use crate::sink::{NatsLink, NatsState};

/// The subjects a data stream the hub creates stores: both forms of
/// published records, so a hub can switch `data_form` without touching it.
pub const DATA_STREAM_SUBJECTS: [&str; 2] = ["herd.data.>", "herd.batch.>"];

/// The subject of the records of `form`, which the stream must store.
fn needed_subject(form: DataForm) -> &'static str {
    match form {
        DataForm::Record => DATA_STREAM_SUBJECTS[0],
        DataForm::Batch => DATA_STREAM_SUBJECTS[1],
    }
}

/// The stream every published record is stored in (JetStream ack mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataStreamConfig {
    /// Create the stream when it is missing (false: only check it exists).
    pub create: bool,
    /// Its name.
    pub name: String,
    /// Oldest records are discarded beyond this many bytes.
    pub max_bytes: i64,
    /// ... or beyond this age, in seconds.
    pub max_age_secs: u64,
    /// Window in which a record published twice (a resend) is stored once.
    pub duplicate_window_secs: u64,
    /// Copies of the stream on a NATS cluster (1, 3 or 5; at most the
    /// number of JetStream nodes). With 3, losing one node loses nothing
    /// acked: the hub acks after a quorum stored the record.
    pub replicas: usize,
}

impl Default for DataStreamConfig {
    fn default() -> Self {
        Self {
            create: true,
            name: "HERD_DATA".to_owned(),
            max_bytes: 1 << 30,
            max_age_secs: 7 * 24 * 3600,
            duplicate_window_secs: 120,
            replicas: 1,
        }
    }
}

impl DataStreamConfig {
    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: DATA_STREAM_SUBJECTS.map(str::to_owned).to_vec(),
            max_bytes: self.max_bytes,
            max_age: Duration::from_secs(self.max_age_secs),
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            discard: stream::DiscardPolicy::Old,
            num_replicas: self.replicas,
            ..stream::Config::default()
        }
    }
}

/// Whether the data stream is in place: `Ok` once it was found or created,
/// `Err(why)` while it is not (yet).
pub(crate) type StreamStatus = watch::Receiver<Result<(), String>>;

/// Makes sure the data stream exists whenever the hub is connected to NATS:
/// at start and after every reconnect (a restarted server may have lost it),
/// retrying with backoff. It never exits on a NATS error, so its restarts
/// mean a bug, not an outage.
#[derive(Debug)]
pub(crate) struct DataStream {
    link: NatsLink,
    config: DataStreamConfig,
    form: DataForm,
    status: watch::Sender<Result<(), String>>,
}

impl DataStream {
    pub(crate) fn new(
        link: NatsLink,
        config: DataStreamConfig,
        form: DataForm,
        status: watch::Sender<Result<(), String>>,
    ) -> Self {
        Self {
            link,
            config,
            form,
            status,
        }
    }
}

impl Actor for DataStream {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (link, config, status) = (self.link.clone(), self.config.clone(), self.status.clone());
        ctx.spawn(keep(link, config, self.form, status).into_actor(self));
    }
}

async fn keep(
    link: NatsLink,
    config: DataStreamConfig,
    form: DataForm,
    status: watch::Sender<Result<(), String>>,
) {
    let mut retry = Retry::new(
        Backoff::exponential(Duration::from_millis(200), Duration::from_secs(2), 0.2)
            .expect("constant backoff parameters are valid"),
    );
    loop {
        if !link.wait_connected(Duration::from_secs(3600)).await {
            continue;
        }
        match ensure(&link, &config, form).await {
            Ok(()) => {
                retry.succeeded();
                let _previous = status.send_replace(Ok(()));
                // Checked again after the next reconnect.
                link.wait_for_state(|state| state != NatsState::Connected, Duration::MAX)
                    .await;
            }
            Err(error) => {
                tracing::warn!(stream = %config.name, %error, "JetStream stream not in place; retrying");
                let _previous = status.send_replace(Err(error));
                retry.wait().await;
            }
        }
    }
}

async fn ensure(link: &NatsLink, config: &DataStreamConfig, form: DataForm) -> Result<(), String> {
    let jetstream = link.jetstream();
    match jetstream.get_stream(&config.name).await {
        Ok(stream) => return ensure_subject(jetstream, &stream, config, form).await,
        Err(error) if !config.create => {
            return Err(format!(
                "stream {} not found ({error}) and create = false",
                config.name
            ));
        }
        Err(_) => {}
    }
    jetstream
        .create_stream(config.stream_config())
        .await
        .map(|_| tracing::info!(stream = %config.name, "created the JetStream data stream"))
        .map_err(|error| format!("cannot create stream {}: {error}", config.name))
}

/// A stream made by an older hub (or by hand) may lack the subject of this
/// hub's `data_form` (`herd.batch.>`, say); with `create = true` the hub adds
/// it, otherwise it says so.
async fn ensure_subject(
    jetstream: &async_nats::jetstream::Context,
    stream: &stream::Stream,
    config: &DataStreamConfig,
    form: DataForm,
) -> Result<(), String> {
    let needed = needed_subject(form);
    let mut stream_config = stream.cached_info().config.clone();
    if stream_config.subjects.iter().any(|known| known == needed) {
        return Ok(());
    }
    if !config.create {
        return Err(format!(
            "stream {} does not store {needed} and create = false",
            config.name
        ));
    }
    stream_config.subjects.push(needed.to_owned());
    jetstream
        .update_stream(stream_config)
        .await
        .map(|_| tracing::info!(stream = %config.name, added = needed, "added a subject to the JetStream data stream"))
        .map_err(|error| format!("cannot add {needed} to stream {}: {error}", config.name))
}
