//! The hub's NATS KV buckets, opened or created the same way.

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use herd_supervision::{Backoff, Retry};

/// A bucket's current values, key by key (`None`: deleted), and a watch of
/// its changes from then on.
pub(crate) type Snapshot = (kv::Watch, Vec<(String, Option<bytes::Bytes>)>);

/// Starts watching `store`, then reads its values: a change in between
/// shows up in the watch, so nothing is missed.
pub(crate) async fn watch_and_read(store: &kv::Store) -> Result<Snapshot, async_nats::Error> {
    let watch = store.watch_all().await?;
    let mut values = Vec::new();
    let mut keys = store.keys().await?;
    while let Some(key) = keys.next().await {
        let key = key?;
        let value = store.get(&key).await?;
        values.push((key, value));
    }
    Ok((watch, values))
}

/// Runs `attempt` until it succeeds, backing off from 100 ms to 5 s and
/// WARNing `what` with each failure: what the hub reads from KV at start
/// waits for NATS instead of failing.
pub(crate) async fn retrying<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, async_nats::Error>>,
{
    let mut retry = Retry::new(
        Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5), 0.2)
            .expect("constant backoff parameters are valid"),
    );
    loop {
        match attempt().await {
            Ok(done) => return done,
            Err(error) => {
                tracing::warn!(%error, "{what}; retrying");
                retry.wait().await;
            }
        }
    }
}

/// Opens the KV bucket `name`, creating it (keeping `history` values per
/// key, on `replicas` nodes) when missing; a bucket that exists is used as
/// it is.
///
/// Created as a plain stream with the KV layout (`KV_<name>`, subjects
/// `$KV.<name>.>`, per-key history, rollups, direct get) because
/// async-nats' `create_key_value` first reads the account info in a shape
/// nats-server 2.9 (Debian's) does not send.
pub(crate) async fn open_bucket(
    jetstream: &async_nats::jetstream::Context,
    name: &str,
    description: &str,
    history: i64,
    replicas: usize,
) -> Result<kv::Store, async_nats::Error> {
    open(
        jetstream,
        name,
        description,
        history,
        Duration::ZERO,
        replicas,
    )
    .await
}

/// Like [`open_bucket`] with one value per key, each gone `max_age` after
/// it was last written (nats-server 2.9 has no per-key expiry; the bucket's
/// is the stream's `max_age`). The hub that creates the bucket sets it.
pub(crate) async fn open_expiring_bucket(
    jetstream: &async_nats::jetstream::Context,
    name: &str,
    description: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, async_nats::Error> {
    open(jetstream, name, description, 1, max_age, replicas).await
}

async fn open(
    jetstream: &async_nats::jetstream::Context,
    name: &str,
    description: &str,
    history: i64,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, async_nats::Error> {
    if let Ok(store) = jetstream.get_key_value(name).await {
        return Ok(store);
    }
    let created = jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: format!("KV_{name}"),
            description: Some(description.to_owned()),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: history,
            max_age,
            num_replicas: replicas,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            ..Default::default()
        })
        .await;
    if let Err(error) = created {
        // Another hub may have created it in between.
        tracing::debug!(%error, bucket = name, "creating a KV bucket");
    }
    Ok(jetstream.get_key_value(name).await?)
}
