//! The FleetClaims actor: one session per agent id across every hub on the
//! NATS cluster, through the KV bucket [`AGENTS_BUCKET`].
//!
//! When the AgentRegistry takes a connection it claims the id: a create,
//! or an update by the revision it read when another session holds the key
//! (the newest connection wins, as it does on one hub). Writes are only ever
//! compare-and-swap, never read-then-put, so of two hubs claiming at once
//! exactly one write lands and the other retries against what it sees.
//!
//! The revision fences sessions: every hub watches the bucket, and a hub
//! whose claim is replaced by another session closes its connection with
//! `SUPERSEDED`. Claims are refreshed every third of `presence_ttl_secs`
//! (again by revision: a refresh that finds another session there closes
//! the connection too), and the bucket drops a key not written for
//! `presence_ttl_secs`, so a dead hub's claims go by themselves. A hub that
//! cannot refresh a claim for that long (cut off from NATS) closes the
//! connection instead of keeping a claim it can no longer defend: the agent
//! reconnects, to this hub or another.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

use crate::directory::HubDirectory;
use crate::enrollment::unix_ms;
use crate::messages::{AgentLink, Claim, CloseKind, Release};
use crate::sink::NatsLink;

/// KV bucket of fleet-wide presence: agent id -> [`AgentClaim`].
pub const AGENTS_BUCKET: &str = "herd_agents";

/// Who holds an agent id, as stored in [`AGENTS_BUCKET`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentClaim {
    /// The hub serving the agent.
    pub hub: String,
    /// The connection on that hub (`<hub>/<connection number>`).
    pub session: String,
    /// When the connection was made, ms since the epoch.
    pub since_ms: u64,
    /// Where the agent connects from.
    pub address: String,
}

/// An agent of the fleet, as `GET /fleet` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetAgent {
    /// The agent.
    pub agent_id: String,
    /// Who serves it.
    #[serde(flatten)]
    pub claim: AgentClaim,
}

/// The hub that claims `agent_id`, if any (and if KV answers).
pub(crate) async fn holder(store: &kv::Store, agent_id: &str) -> Option<String> {
    let (_, claim) = current(store, agent_id).await.ok()??;
    Some(claim.hub)
}

/// Every claimed agent id in [`AGENTS_BUCKET`], by agent id.
pub(crate) async fn fleet(
    jetstream: &async_nats::jetstream::Context,
) -> Result<Vec<FleetAgent>, async_nats::Error> {
    use futures::StreamExt as _;
    // Not created yet: no hub has claimed anything.
    let Ok(store) = jetstream.get_key_value(AGENTS_BUCKET).await else {
        return Ok(Vec::new());
    };
    let mut keys = store.keys().await?;
    let mut agents = Vec::new();
    while let Some(agent_id) = keys.next().await {
        let agent_id = agent_id?;
        // Gone since the listing, or not a claim: not an agent of the fleet.
        if let Some(claim) = store
            .get(&agent_id)
            .await?
            .and_then(|value| serde_json::from_slice(&value).ok())
        {
            agents.push(FleetAgent { agent_id, claim });
        }
    }
    agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    Ok(agents)
}

/// One claim this hub holds.
#[derive(Debug)]
struct Held {
    link: AgentLink,
    claim: AgentClaim,
    /// The key's revision this hub last wrote; `None` until the first write
    /// lands.
    revision: Option<u64>,
    /// When a write last landed (or the connection was taken).
    confirmed: Instant,
    /// A write is under way: refreshes wait for it.
    writing: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct FleetClaims {
    link: NatsLink,
    hub_id: String,
    ttl: Duration,
    store: Option<kv::Store>,
    held: HashMap<String, Held>,
}

impl FleetClaims {
    /// Claims for `hub_id`, refreshed every third of `ttl`.
    pub(crate) fn new(link: NatsLink, hub_id: String, ttl: Duration) -> Self {
        Self {
            link,
            hub_id,
            ttl,
            store: None,
            held: HashMap::new(),
        }
    }

    /// Writes the claim of `agent_id` (create, or update by revision), in
    /// the background; the outcome comes back to [`Self::written`].
    fn write(&mut self, ctx: &mut Context<Self>, agent_id: &str) {
        let (Some(store), Some(held)) = (self.store.clone(), self.held.get_mut(agent_id)) else {
            return;
        };
        if held.writing {
            return;
        }
        held.writing = true;
        let (claim, revision) = (held.claim.clone(), held.revision);
        let agent_id = agent_id.to_owned();
        ctx.spawn(
            write_claim(store, agent_id.clone(), claim.clone(), revision)
                .into_actor(self)
                .map(move |written, act, ctx| act.written(ctx, &agent_id, &claim, written)),
        );
    }

    fn written(
        &mut self,
        _ctx: &mut Context<Self>,
        agent_id: &str,
        claim: &AgentClaim,
        written: Result<u64, Written>,
    ) {
        // The connection may have gone, or been replaced, meanwhile.
        let Some(held) = self
            .held
            .get_mut(agent_id)
            .filter(|held| held.claim.session == claim.session)
        else {
            return;
        };
        held.writing = false;
        match written {
            Ok(revision) => {
                held.revision = Some(revision);
                held.confirmed = Instant::now();
            }
            Err(Written::Lost(other)) => {
                let reason = format!(
                    "agent {agent_id} connected to hub {} ({})",
                    other.hub, other.address
                );
                self.lose(agent_id, CloseKind::Superseded, reason);
            }
            Err(Written::Unavailable(error)) => {
                tracing::debug!(%agent_id, %error, "presence claim not written; retrying at the next refresh");
            }
        }
    }

    /// Gives up the claim of `agent_id` and closes its connection.
    fn lose(&mut self, agent_id: &str, kind: CloseKind, reason: String) {
        if let Some(held) = self.held.remove(agent_id) {
            tracing::info!(%agent_id, %reason, "presence claim lost; closing the connection");
            held.link.close(kind, reason);
        }
    }

    /// Every third of the TTL: rewrite each claim, and close the sessions
    /// whose claims could not be defended for a whole TTL.
    fn refresh(&mut self, ctx: &mut Context<Self>) {
        let stale: Vec<String> = self
            .held
            .iter()
            .filter(|(_, held)| held.confirmed.elapsed() >= self.ttl)
            .map(|(agent_id, _)| agent_id.clone())
            .collect();
        for agent_id in stale {
            let reason = format!(
                "this hub could not renew its claim on agent {agent_id} in NATS for {:?}; \
                 connect again",
                self.ttl
            );
            self.lose(&agent_id, CloseKind::Unavailable, reason);
        }
        let ids: Vec<String> = self.held.keys().cloned().collect();
        for agent_id in ids {
            self.write(ctx, &agent_id);
        }
    }
}

/// Why a claim was not written.
enum Written {
    /// Another session holds the key now.
    Lost(AgentClaim),
    /// NATS did not answer.
    Unavailable(String),
}

/// Writes `claim` under `agent_id`: by `revision` when this hub holds the
/// key; otherwise a create, or a takeover by the revision found there.
async fn write_claim(
    store: kv::Store,
    agent_id: String,
    claim: AgentClaim,
    revision: Option<u64>,
) -> Result<u64, Written> {
    let value: bytes::Bytes = serde_json::to_vec(&claim)
        .expect("a claim serialises")
        .into();
    let unavailable = |error: &dyn std::fmt::Display| Written::Unavailable(error.to_string());
    if let Some(revision) = revision {
        return match store.update(&agent_id, value, revision).await {
            Ok(revision) => Ok(revision),
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                match current(&store, &agent_id).await {
                    // Expired meanwhile (a long pause): claim it afresh.
                    Ok(None) => Box::pin(write_claim(store, agent_id, claim, None)).await,
                    Ok(Some((_, other))) if other.session == claim.session => Err(
                        Written::Unavailable("the claim moved under its own session".into()),
                    ),
                    Ok(Some((_, other))) => Err(Written::Lost(other)),
                    Err(error) => Err(unavailable(&error)),
                }
            }
            Err(error) => Err(unavailable(&error)),
        };
    }
    // A new connection: it takes the id over from whoever holds it. Of
    // several hubs doing this at once one write lands; the others see it.
    for _ in 0..CLAIM_ATTEMPTS {
        let found = current(&store, &agent_id)
            .await
            .map_err(|error| unavailable(&error))?;
        let written = match found {
            None => store
                .create(&agent_id, value.clone())
                .await
                .map_err(|error| error.to_string()),
            Some((revision, _)) => store
                .update(&agent_id, value.clone(), revision)
                .await
                .map_err(|error| error.to_string()),
        };
        if let Ok(revision) = written {
            return Ok(revision);
        }
    }
    Err(Written::Unavailable(format!(
        "the key kept changing over {CLAIM_ATTEMPTS} attempts"
    )))
}

/// Attempts at taking an id over while other hubs write it too.
const CLAIM_ATTEMPTS: usize = 5;

/// The key's revision and claim, `None` when nobody holds it.
async fn current(
    store: &kv::Store,
    agent_id: &str,
) -> Result<Option<(u64, AgentClaim)>, kv::EntryError> {
    let entry = store.entry(agent_id).await?;
    Ok(entry
        .filter(|entry| entry.operation == kv::Operation::Put)
        .map(|entry| {
            let claim = serde_json::from_slice(&entry.value).unwrap_or_else(|_| AgentClaim {
                hub: "?".into(),
                session: "?".into(),
                since_ms: 0,
                address: "?".into(),
            });
            (entry.revision, claim)
        }))
}

impl Actor for FleetClaims {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (link, ttl) = (self.link.clone(), self.ttl);
        ctx.spawn(
            crate::kv::retrying("cannot open the presence bucket yet", move || {
                let link = link.clone();
                async move {
                    let store = crate::kv::open_expiring_bucket(
                        link.jetstream(),
                        AGENTS_BUCKET,
                        "herd fleet-wide presence: agent id -> hub",
                        ttl,
                        link.kv_replicas(),
                    )
                    .await?;
                    let watch = store.watch_all().await?;
                    Ok((store, watch))
                }
            })
            .into_actor(self)
            .map(|(store, watch), act, ctx| {
                act.store = Some(store);
                ctx.add_stream(watch);
                // Claims taken while the bucket was opening are written now.
                let ids: Vec<String> = act.held.keys().cloned().collect();
                for agent_id in ids {
                    act.write(ctx, &agent_id);
                }
            }),
        );
        ctx.run_interval(self.ttl / 3, Self::refresh);
    }
}

impl StreamHandler<Result<kv::Entry, kv::WatcherError>> for FleetClaims {
    fn handle(&mut self, entry: Result<kv::Entry, kv::WatcherError>, _ctx: &mut Context<Self>) {
        let entry = match entry {
            Ok(entry) if entry.operation == kv::Operation::Put => entry,
            Ok(_) => return,
            Err(error) => return tracing::warn!(%error, "presence watch error"),
        };
        let Some(held) = self.held.get(&entry.key) else {
            return;
        };
        let Ok(claim) = serde_json::from_slice::<AgentClaim>(&entry.value) else {
            return;
        };
        // Only a write after this hub's last one, by another session, takes
        // the id away; an in-flight write of ours settles by its revision.
        let newer = held.revision.is_some_and(|ours| entry.revision > ours);
        if newer && claim.session != held.claim.session {
            let reason = format!(
                "agent {} connected to hub {} ({})",
                entry.key, claim.hub, claim.address
            );
            self.lose(&entry.key.clone(), CloseKind::Superseded, reason);
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // Without the watch a takeover elsewhere goes unseen until the next
        // refresh; start over.
        tracing::warn!("presence watch ended; reopening");
        self.store = None;
        Actor::started(self, ctx);
    }
}

impl Handler<Claim> for FleetClaims {
    type Result = ();

    fn handle(&mut self, claim: Claim, ctx: &mut Context<Self>) {
        // A takeover on this hub keeps the revision: the new session
        // overwrites the old one's claim by it.
        let revision = self
            .held
            .get(&claim.agent_id)
            .and_then(|held| held.revision);
        let session = format!("{}/{}", self.hub_id, claim.link.conn_id());
        self.held.insert(
            claim.agent_id.clone(),
            Held {
                link: claim.link,
                claim: AgentClaim {
                    hub: self.hub_id.clone(),
                    session,
                    since_ms: unix_ms(std::time::SystemTime::now()),
                    address: claim.address.to_string(),
                },
                revision,
                confirmed: Instant::now(),
                writing: false,
            },
        );
        self.write(ctx, &claim.agent_id);
    }
}

impl Handler<Release> for FleetClaims {
    type Result = ();

    fn handle(&mut self, release: Release, ctx: &mut Context<Self>) {
        let mine = self
            .held
            .get(&release.agent_id)
            .is_some_and(|held| held.link.conn_id() == release.conn_id);
        if !mine {
            return;
        }
        let held = self.held.remove(&release.agent_id).expect("checked above");
        let (Some(store), Some(revision)) = (self.store.clone(), held.revision) else {
            return;
        };
        // By revision: a claim another hub took meanwhile stays.
        ctx.spawn(
            async move {
                if let Err(error) = store
                    .delete_expect_revision(&release.agent_id, Some(revision))
                    .await
                {
                    tracing::debug!(agent_id = %release.agent_id, %error, "presence claim not released");
                }
            }
            .into_actor(self),
        );
    }
}

impl HubDirectory {
    /// The FleetClaims actor.
    pub(crate) fn claims(&self) -> Option<Addr<FleetClaims>> {
        self.get(crate::directory::ids::CLAIMS)
    }
}
