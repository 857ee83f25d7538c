//! The AgentIdentities actor: enrolls agents, renews their certificates,
//! and knows which agent ids are revoked.
//!
//! It owns the CA that issues agent certificates and the KV buckets of
//! [`crate::enrollment`]. It watches the revocations, so a revocation made
//! anywhere (by `herd-hub agent revoke`, on any hub) refuses that id's
//! certificates at the next handshake and closes its live session here.
//! Until the revocations are loaded, certificates are refused (an agent
//! connects again a moment later), never let through unchecked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use async_nats::jetstream::kv;
use herd_tls::AgentCertificate;

use crate::directory::HubDirectory;
use crate::enrollment::{self, EnrollRefusal, Enrolled, Revocation, unix_ms};
use crate::messages::{CheckCertificate, Enroll, IsLoaded, Issued, RenewCertificate, RevokeAgent};
use crate::sink::NatsLink;
use crate::tls::AgentTls;

/// The buckets, once open.
#[derive(Clone)]
struct Buckets {
    tokens: kv::Store,
    enrolled: kv::Store,
}

/// See the module documentation.
pub(crate) struct AgentIdentities {
    link: NatsLink,
    /// Its `agent_ca` issues: a TLS reload changes it.
    tls: AgentTls,
    validity: Duration,
    hub_id: Arc<str>,
    directory: HubDirectory,
    buckets: Option<Buckets>,
    /// Agent id -> when it was revoked (ms since the epoch); complete once
    /// `buckets` is set.
    revoked: HashMap<String, u64>,
}

impl std::fmt::Debug for AgentIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentIdentities")
            .field("loaded", &self.buckets.is_some())
            .field("revoked", &self.revoked.len())
            .finish_non_exhaustive()
    }
}

impl AgentIdentities {
    /// Issues certificates with the CA of `tls`, valid for `validity`.
    pub(crate) fn new(
        link: NatsLink,
        tls: AgentTls,
        validity: Duration,
        hub_id: Arc<str>,
        directory: HubDirectory,
    ) -> Self {
        Self {
            link,
            tls,
            validity,
            hub_id,
            directory,
            buckets: None,
            revoked: HashMap::new(),
        }
    }

    /// Why `certificate` may not be used, if it may not.
    fn refusal(&self, certificate: &AgentCertificate) -> Option<String> {
        if self.buckets.is_none() {
            return Some("the hub is still loading revocations; connect again".to_owned());
        }
        self.revoked
            .get(&certificate.agent_id)
            .filter(|&&revoked_at| unix_ms(certificate.issued_at) <= revoked_at)
            .map(|_| {
                format!(
                    "the certificate of agent {} was revoked",
                    certificate.agent_id
                )
            })
    }

    /// How long a certificate for `agent_id` must wait. Certificates carry
    /// whole seconds: one issued in the second of a revocation would look
    /// revoked, so it is issued in the next second.
    fn wait_before_issuing(&self, agent_id: &str) -> Duration {
        let now = unix_ms(SystemTime::now());
        match self.revoked.get(agent_id) {
            Some(&revoked_at) if revoked_at / 1000 == now / 1000 => {
                Duration::from_millis(1000 - now % 1000)
            }
            _ => Duration::ZERO,
        }
    }

    /// A certificate for `agent_id` on the key of `csr`, issued when its
    /// second has come.
    fn issue(
        &self,
        agent_id: &str,
        csr: bytes::Bytes,
    ) -> impl Future<Output = Result<Issued, String>> + use<> {
        let (tls, validity) = (self.tls.clone(), self.validity);
        let wait = self.wait_before_issuing(agent_id);
        let agent_id = agent_id.to_owned();
        async move {
            tokio::time::sleep(wait).await;
            // Validation made sure certificate identities come with a CA key.
            let ca = tls
                .now()
                .agent_ca
                .clone()
                .ok_or("this hub has no CA key to issue agent certificates")?;
            let certificate = ca
                .issue_agent(&csr, &agent_id, validity)
                .map_err(|error| error.to_string())?;
            let parsed =
                AgentCertificate::parse(&certificate).map_err(|error| error.to_string())?;
            Ok(Issued {
                certificate: bytes::Bytes::from(certificate.to_vec()),
                parsed,
            })
        }
    }
}

/// Opens the buckets and the revocation watch, and reads the revocations.
/// Retries until NATS answers.
async fn open(link: NatsLink) -> (Buckets, crate::kv::Snapshot) {
    crate::kv::retrying("cannot open the enrollment buckets yet", || async {
        let jetstream = link.jetstream();
        let buckets = Buckets {
            tokens: enrollment::open(jetstream, enrollment::TOKENS, link.kv_replicas()).await?,
            enrolled: enrollment::open(jetstream, enrollment::ENROLLED, link.kv_replicas()).await?,
        };
        let revoked = enrollment::open(jetstream, enrollment::REVOKED, link.kv_replicas()).await?;
        Ok((buckets, crate::kv::watch_and_read(&revoked).await?))
    })
    .await
}

impl Actor for AgentIdentities {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(open(self.link.clone()).into_actor(self).map(
            |(buckets, (watch, values)), act, ctx| {
                for (agent_id, value) in values {
                    act.apply(agent_id, value.as_deref());
                }
                act.buckets = Some(buckets);
                tracing::info!(revoked = act.revoked.len(), "enrollment ready");
                ctx.add_stream(watch);
            },
        ));
    }
}

impl AgentIdentities {
    /// Takes in a revocation (`None`: lifted), and closes a live session.
    fn apply(&mut self, agent_id: String, value: Option<&[u8]>) {
        let revocation = value.and_then(|value| {
            serde_json::from_slice::<Revocation>(value)
                .inspect_err(|error| {
                    tracing::warn!(%agent_id, %error, "unreadable revocation; treating the id as revoked now");
                })
                .ok()
                .or(Some(Revocation {
                    revoked_at_ms: unix_ms(SystemTime::now()),
                    reason: String::new(),
                }))
        });
        let Some(revocation) = revocation else {
            self.revoked.remove(&agent_id);
            return;
        };
        self.revoked
            .insert(agent_id.clone(), revocation.revoked_at_ms);
        if let Some(registry) = self.directory.registry() {
            registry.do_send(RevokeAgent {
                agent_id,
                revoked_at_ms: revocation.revoked_at_ms,
                reason: revocation.reason,
            });
        }
    }
}

impl StreamHandler<Result<kv::Entry, kv::WatcherError>> for AgentIdentities {
    fn handle(&mut self, entry: Result<kv::Entry, kv::WatcherError>, _ctx: &mut Context<Self>) {
        match entry {
            Ok(entry) => {
                let value = (entry.operation == kv::Operation::Put).then_some(&entry.value[..]);
                self.apply(entry.key, value);
            }
            Err(error) => tracing::warn!(%error, "revocation watch error"),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // Without the watch a revocation could go unseen: refuse
        // certificates until it is back.
        tracing::warn!("revocation watch ended; reloading");
        self.buckets = None;
        self.revoked.clear();
        Actor::started(self, ctx);
    }
}

impl Handler<IsLoaded> for AgentIdentities {
    type Result = bool;

    fn handle(&mut self, _: IsLoaded, _ctx: &mut Context<Self>) -> bool {
        self.buckets.is_some()
    }
}

impl Handler<CheckCertificate> for AgentIdentities {
    type Result = Result<(), String>;

    fn handle(&mut self, check: CheckCertificate, _ctx: &mut Context<Self>) -> Self::Result {
        match self.refusal(&check.0) {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }
    }
}

impl Handler<Enroll> for AgentIdentities {
    type Result = ResponseFuture<Result<Issued, EnrollRefusal>>;

    fn handle(&mut self, enroll: Enroll, _ctx: &mut Context<Self>) -> Self::Result {
        let Some(buckets) = self.buckets.clone() else {
            return Box::pin(async {
                Err(EnrollRefusal::Unavailable(
                    "the enrollment buckets are not open yet".to_owned(),
                ))
            });
        };
        let agent_id = if enroll.requested_id.is_empty() {
            format!("{:032x}", rand::random::<u128>())
        } else if let Err(error) = herd_codec::validate_agent_id(&enroll.requested_id) {
            let refusal = EnrollRefusal::BadRequest(format!(
                "agent id {:?} is not valid: {error}",
                enroll.requested_id
            ));
            return Box::pin(async { Err(refusal) });
        } else {
            enroll.requested_id
        };
        let issue = self.issue(&agent_id, enroll.csr);
        let enrolled = Enrolled {
            enrolled_at_ms: unix_ms(SystemTime::now()),
            hub_id: self.hub_id.to_string(),
            address: enroll.address.to_string(),
        };
        Box::pin(async move {
            // Signed first: a request that cannot be signed spends nothing.
            let issued = issue.await.map_err(EnrollRefusal::BadRequest)?;
            enrollment::claim_id(&buckets.enrolled, &agent_id, &enrolled).await?;
            if let Err(refusal) = enrollment::spend_token(&buckets.tokens, &enroll.token).await {
                enrollment::release_id(&buckets.enrolled, &agent_id).await;
                return Err(refusal);
            }
            tracing::info!(%agent_id, address = %enroll.address, "agent enrolled");
            Ok(issued)
        })
    }
}

impl Handler<RenewCertificate> for AgentIdentities {
    type Result = ResponseFuture<Result<Issued, String>>;

    fn handle(&mut self, renew: RenewCertificate, _ctx: &mut Context<Self>) -> Self::Result {
        if let Some(refusal) = self.refusal(&renew.current) {
            return Box::pin(async { Err(refusal) });
        }
        let issue = self.issue(&renew.current.agent_id, renew.csr);
        Box::pin(async move {
            let issued = issue.await?;
            tracing::info!(agent_id = %issued.parsed.agent_id, "agent certificate renewed");
            Ok(issued)
        })
    }
}

impl HubDirectory {
    /// The AgentIdentities actor, when agents are identified by certificate.
    pub(crate) fn identities(&self) -> Option<Addr<AgentIdentities>> {
        self.get(crate::directory::ids::IDENTITIES)
    }
}
