//! Enrollment tokens, enrolled agent ids and revocations, kept in NATS KV so
//! every hub on the cluster sees the same ones.
//!
//! - [`TOKENS_BUCKET`]: one key per token, the SHA-256 of the token (a KV
//!   reader learns no usable token), value a [`TokenRecord`]: uses left and
//!   expiry. Using a token is a compare-and-swap on its revision, so two
//!   hubs cannot both spend its last use.
//! - [`ENROLLED_BUCKET`]: one key per enrolled agent id, created (never
//!   overwritten) at enrollment: a token holder cannot enroll an id that
//!   is already someone's.
//! - [`REVOKED_BUCKET`]: one key per revoked agent id, value a
//!   [`Revocation`]: every certificate of that id issued up to then is
//!   refused at the handshake, and hubs close its live sessions.
//!
//! Operators use [`create_token`] and [`revoke_agent`] through
//! `herd-hub token create` and `herd-hub agent revoke`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// KV bucket of enrollment tokens.
pub const TOKENS_BUCKET: &str = "herd_enrollment_tokens";
/// KV bucket of enrolled agent ids.
pub const ENROLLED_BUCKET: &str = "herd_enrolled";
/// KV bucket of revoked agent ids.
pub const REVOKED_BUCKET: &str = "herd_revoked";

/// Replicas of a bucket an operator command creates because no hub has yet
/// (hubs create theirs with `kv_replicas`).
const OPERATOR_REPLICAS: usize = 1;

/// How many times a token's use is retried when another hub used it at the
/// same moment.
const CAS_ATTEMPTS: usize = 5;

/// An enrollment token as stored (under the token's SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Enrollments it still allows.
    pub uses_left: u32,
    /// Enrollments it allowed when created.
    pub uses: u32,
    /// When it stops working, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// When it was created, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The operator's note (what or whom it is for).
    #[serde(default)]
    pub description: String,
}

/// A token just created: the secret (shown once) and its record.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// What the agent is given (`token` in `herd-agent.toml`).
    pub token: String,
    /// What is stored.
    pub record: TokenRecord,
}

/// An agent id's revocation, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Certificates of the id issued up to this moment (milliseconds since
    /// the Unix epoch) are refused.
    pub revoked_at_ms: u64,
    /// The operator's reason.
    #[serde(default)]
    pub reason: String,
}

/// An enrolled agent id, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Enrolled {
    pub(crate) enrolled_at_ms: u64,
    pub(crate) hub_id: String,
    pub(crate) address: String,
}

/// Why an agent was not enrolled; the message goes to the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollRefusal {
    /// No such token (or it was removed).
    #[error("the enrollment token is not valid")]
    UnknownToken,
    /// The token's time is over.
    #[error("the enrollment token expired {ago_secs} s ago")]
    Expired {
        /// How long ago.
        ago_secs: u64,
    },
    /// The token's uses are spent.
    #[error("the enrollment token has been used {uses} times, all it allowed")]
    UsedUp {
        /// How many it allowed.
        uses: u32,
    },
    /// The id asked for is enrolled already.
    #[error(
        "agent id {agent_id:?} is enrolled already: revoke it first (`herd-hub agent revoke \
         {agent_id}`) or enroll without an id"
    )]
    IdTaken {
        /// The id.
        agent_id: String,
    },
    /// The certificate request cannot be signed, or the id is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// KV did not answer; the agent should try again.
    #[error("enrollment is unavailable right now ({0}); connect again")]
    Unavailable(String),
}

/// A KV operation of enrollment failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct EnrollmentError {
    what: String,
    #[source]
    source: async_nats::Error,
}

impl EnrollmentError {
    fn new(what: impl Into<String>) -> impl FnOnce(async_nats::Error) -> Self {
        let what = what.into();
        move |source| Self { what, source }
    }
}

/// Milliseconds since the Unix epoch of `at`.
pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// The key a token is stored under.
fn token_key(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// One of this module's buckets: its name and description.
pub(crate) type Bucket = (&'static str, &'static str);
/// [`TOKENS_BUCKET`].
pub(crate) const TOKENS: Bucket = (TOKENS_BUCKET, "herd enrollment tokens");
/// [`ENROLLED_BUCKET`].
pub(crate) const ENROLLED: Bucket = (ENROLLED_BUCKET, "herd enrolled agent ids");
/// [`REVOKED_BUCKET`].
pub(crate) const REVOKED: Bucket = (REVOKED_BUCKET, "herd revoked agent ids");

/// Opens `bucket` (one value per key), creating it on `replicas` nodes when
/// missing.
pub(crate) async fn open(
    jetstream: &jetstream::Context,
    (name, description): Bucket,
    replicas: usize,
) -> Result<kv::Store, async_nats::Error> {
    crate::kv::open_bucket(jetstream, name, description, 1, replicas).await
}

/// Creates a token that enrolls up to `uses` agents within `ttl`.
///
/// ```no_run
/// # async fn run(client: async_nats::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let jetstream = async_nats::jetstream::new(client);
/// let new = herd_hub::enrollment::create_token(&jetstream, Duration::from_secs(3600), 10, "rack 4")
///     .await?;
/// println!("token = {:?}", new.token);
/// # Ok(()) }
/// ```
pub async fn create_token(
    jetstream: &jetstream::Context,
    ttl: Duration,
    uses: u32,
    description: &str,
) -> Result<NewToken, EnrollmentError> {
    let store = open(jetstream, TOKENS, OPERATOR_REPLICAS)
        .await
        .map_err(EnrollmentError::new(format!("opening {TOKENS_BUCKET}")))?;
    let now = SystemTime::now();
    let token = format!("herd-{:032x}", rand::random::<u128>());
    let record = TokenRecord {
        uses_left: uses,
        uses,
        // Saturating: `ttl` comes from operators (the admin API), and a
        // huge one means "never", not a panic.
        expires_at_ms: unix_ms(now)
            .saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        created_at_ms: unix_ms(now),
        description: description.to_owned(),
    };
    let value = serde_json::to_vec(&record).expect("a token record serialises");
    store
        .create(token_key(&token), value.into())
        .await
        .map_err(|error| EnrollmentError::new("storing the token")(error.into()))?;
    Ok(NewToken { token, record })
}

/// Revokes every certificate `agent_id` holds now, and frees the id for a
/// new enrollment. Hubs close its live sessions.
pub async fn revoke_agent(
    jetstream: &jetstream::Context,
    agent_id: &str,
    reason: &str,
) -> Result<Revocation, EnrollmentError> {
    let revoked = open(jetstream, REVOKED, OPERATOR_REPLICAS)
        .await
        .map_err(EnrollmentError::new(format!("opening {REVOKED_BUCKET}")))?;
    let revocation = Revocation {
        revoked_at_ms: unix_ms(SystemTime::now()),
        reason: reason.to_owned(),
    };
    let value = serde_json::to_vec(&revocation).expect("a revocation serialises");
    revoked
        .put(agent_id, value.into())
        .await
        .map_err(|error| EnrollmentError::new("storing the revocation")(error.into()))?;
    let enrolled = open(jetstream, ENROLLED, OPERATOR_REPLICAS)
        .await
        .map_err(EnrollmentError::new(format!("opening {ENROLLED_BUCKET}")))?;
    enrolled
        .purge(agent_id)
        .await
        .map_err(|error| EnrollmentError::new("freeing the id")(error.into()))?;
    Ok(revocation)
}

/// Spends one use of `token`, by compare-and-swap on its revision.
pub(crate) async fn spend_token(store: &kv::Store, token: &str) -> Result<(), EnrollRefusal> {
    let key = token_key(token);
    let unavailable = |error: &dyn std::fmt::Display| EnrollRefusal::Unavailable(error.to_string());
    for _ in 0..CAS_ATTEMPTS {
        let entry = store
            .entry(&key)
            .await
            .map_err(|error| unavailable(&error))?;
        let Some(entry) = entry.filter(|entry| entry.operation == kv::Operation::Put) else {
            return Err(EnrollRefusal::UnknownToken);
        };
        let mut record: TokenRecord =
            serde_json::from_slice(&entry.value).map_err(|_| EnrollRefusal::UnknownToken)?;
        let now = unix_ms(SystemTime::now());
        if now >= record.expires_at_ms {
            return Err(EnrollRefusal::Expired {
                ago_secs: (now - record.expires_at_ms) / 1000,
            });
        }
        if record.uses_left == 0 {
            return Err(EnrollRefusal::UsedUp { uses: record.uses });
        }
        record.uses_left -= 1;
        let value = serde_json::to_vec(&record).expect("a token record serialises");
        match store.update(&key, value.into(), entry.revision).await {
            Ok(_) => return Ok(()),
            // Another hub spent a use in between: read it again.
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            Err(error) => return Err(unavailable(&error)),
        }
    }
    Err(EnrollRefusal::Unavailable(
        "the token is being used by many agents at once".to_owned(),
    ))
}

/// Claims `agent_id` for a new enrollment; refused when it is enrolled.
pub(crate) async fn claim_id(
    store: &kv::Store,
    agent_id: &str,
    enrolled: &Enrolled,
) -> Result<(), EnrollRefusal> {
    let value = serde_json::to_vec(enrolled).expect("an enrollment serialises");
    match store.create(agent_id, value.into()).await {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
            Err(EnrollRefusal::IdTaken {
                agent_id: agent_id.to_owned(),
            })
        }
        Err(error) => Err(EnrollRefusal::Unavailable(error.to_string())),
    }
}

/// Gives a claimed id back (the enrollment failed after the claim).
pub(crate) async fn release_id(store: &kv::Store, agent_id: &str) {
    if let Err(error) = store.purge(agent_id).await {
        tracing::warn!(agent_id, %error, "cannot release a claimed agent id");
    }
}
