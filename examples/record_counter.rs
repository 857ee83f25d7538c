//! The actor the `embed_hub` example adds to the hub's supervision tree.

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use herd_supervision::stop_abnormal;

/// Counts the records the hub publishes on `herd.data.>`, by data type, and
/// logs the counts of each period.
///
/// It subscribes when it starts, before it handles any message, so a
/// [`Counts`] answered after the start proves the subscription is live. When
/// the subscription ends it stops abnormally, for its supervisor to start a
/// fresh one.
#[derive(Debug)]
pub struct RecordCounter {
    client: async_nats::Client,
    every: Duration,
    period: BTreeMap<String, u64>,
    counts: RecordCounts,
}

/// What a [`RecordCounter`] has counted since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Every record.
    pub total: u64,
    /// Records by data type (the last token of the subject).
    pub by_type: BTreeMap<String, u64>,
}

/// Asks a [`RecordCounter`] for its counts.
#[derive(Debug, Message)]
#[rtype(result = "RecordCounts")]
pub struct Counts;

impl RecordCounter {
    /// A counter on `client` that logs every `every`.
    pub fn new(client: async_nats::Client, every: Duration) -> Self {
        Self {
            client,
            every,
            period: BTreeMap::new(),
            counts: RecordCounts::default(),
        }
    }

    fn report(&mut self) {
        let period: u64 = self.period.values().sum();
        let by_type: Vec<String> = std::mem::take(&mut self.period)
            .into_iter()
            .map(|(data_type, count)| format!("{data_type}:{count}"))
            .collect();
        tracing::info!(
            total = self.counts.total,
            "{period} records in the last {:?} [{}]",
            self.every,
            by_type.join(" ")
        );
    }
}

impl Actor for RecordCounter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let client = self.client.clone();
        // `wait` holds the mailbox until the subscription is live.
        ctx.wait(
            async move { client.subscribe("herd.data.>").await }
                .into_actor(self)
                .map(|subscribed, _, ctx| match subscribed {
                    Ok(subscriber) => {
                        ctx.add_stream(subscriber);
                    }
                    Err(error) => stop_abnormal(ctx, format!("cannot subscribe: {error}")),
                }),
        );
        ctx.run_interval(self.every, |counter, _| counter.report());
    }
}

impl StreamHandler<async_nats::Message> for RecordCounter {
    fn handle(&mut self, message: async_nats::Message, _: &mut Self::Context) {
        // herd.data.<agent_id>.<data_type>
        let data_type = message.subject.rsplit('.').next().unwrap_or_default();
        *self.period.entry(data_type.to_owned()).or_default() += 1;
        *self.counts.by_type.entry(data_type.to_owned()).or_default() += 1;
        self.counts.total += 1;
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        stop_abnormal(ctx, "the NATS subscription ended");
    }
}

impl Handler<Counts> for RecordCounter {
    type Result = MessageResult<Counts>;

    fn handle(&mut self, _: Counts, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.counts.clone())
    }
}
