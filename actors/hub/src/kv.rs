//! The hub's NATS KV buckets, opened or created the same way.

use async_nats::jetstream::kv;

/// Opens the KV bucket `name`, creating it (keeping `history` values per
/// key) when missing.
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
