//! The admin HTTP server: `GET /metrics`, `/healthz`, `/agents`, `/fleet`, open to
//! whoever reaches it; `POST /enrollment-tokens` and
//! `POST /agents/{id}/revoke`, for the holder of the admin token.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::admin_token::AdminToken;
use crate::directory::HubDirectory;
use crate::enrollment;
use crate::messages::ListAgents;
use crate::metrics::HubMetrics;
use crate::sink::{NatsLink, NatsState};
use crate::stream::StreamStatus;

/// What the endpoints need of the hub.
#[derive(Debug, Clone)]
pub(crate) struct AdminState {
    pub(crate) metrics: HubMetrics,
    pub(crate) link: NatsLink,
    pub(crate) directory: HubDirectory,
    pub(crate) stream: StreamStatus,
    /// What mutating requests must present.
    pub(crate) token: AdminToken,
    /// The agent link's TLS, whose CA fingerprint (what agents pin) is told
    /// with every new enrollment token: read at each request, so a reload
    /// shows. `None`: plaintext.
    pub(crate) tls: Option<crate::tls::AgentTls>,
}

/// Serves the admin endpoints on `listener` until the returned task is aborted.
pub(crate) fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
) -> tokio::task::JoinHandle<()> {
    let app = router(state);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "admin server stopped");
        }
    })
}

fn router(state: AdminState) -> Router {
    let read_only = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/agents", get(agents))
        .route("/fleet", get(fleet));
    let mutating = Router::new()
        .route("/enrollment-tokens", post(create_enrollment_token))
        .route("/agents/{id}/revoke", post(revoke_agent));
    // Over every route and the fallback, by method rather than by route: a
    // route added later, or a POST to a path that does not exist, cannot
    // slip past it.
    read_only
        .merge(mutating)
        .layer(middleware::from_fn_with_state(
            state.token.clone(),
            require_token_to_change_state,
        ))
        .with_state(state)
}

/// Lets `GET` (and the `HEAD` axum answers with it) through; anything else
/// only with `Authorization: Bearer <admin token>`.
async fn require_token_to_change_state(
    State(token): State<AdminToken>,
    request: Request,
    next: Next,
) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer);
    match presented {
        Some(presented) if token.matches(presented) => next.run(request).await,
        // The same answer without a token and with a wrong one: a caller
        // learns nothing about which.
        _ => {
            let mut response = ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "this request changes state: it needs `Authorization: Bearer <admin \
                          token>` (admin_token_file, or <state_dir>/admin.token)"
                    .to_owned(),
            }
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// The credentials of a `Bearer` authorization value (the scheme is case
/// insensitive, RFC 9110).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

/// A refused request: its status and `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// NATS (KV) did not do it; the caller may try again.
    fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
        }
    }
}

/// Longest wait for a KV operation of an admin request: async-nats retries
/// its requests across a reconnect, and the caller is better told to retry.
const KV_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the KV `operation` of a request; `503` at once while NATS is
/// unreachable, and when it fails or outlasts [`KV_TIMEOUT`].
async fn on_nats<T, E: std::fmt::Display>(
    link: &NatsLink,
    operation: impl Future<Output = Result<T, E>>,
) -> Result<T, ApiError> {
    match link.state() {
        NatsState::Connected => {}
        other => {
            return Err(ApiError::unavailable(unreachable(link, other)));
        }
    }
    match tokio::time::timeout(KV_TIMEOUT, operation).await {
        Ok(result) => result.map_err(|error| ApiError::unavailable(error.to_string())),
        Err(_) => Err(ApiError::unavailable(format!(
            "NATS at {} did not answer within {KV_TIMEOUT:?}",
            link.url()
        ))),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// The JSON request `body`; an empty body is the request's defaults. Any
/// content type: the bearer token, not the type, is what keeps browsers'
/// cross-site requests out.
fn json_body<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("the body is not a valid request: {error}")))
}

/// The body of `POST /enrollment-tokens`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TokenRequest {
    ttl_secs: u64,
    uses: u32,
    description: String,
}

impl Default for TokenRequest {
    fn default() -> Self {
        Self {
            ttl_secs: 3600,
            uses: 1,
            description: String::new(),
        }
    }
}

/// The answer of `POST /enrollment-tokens`.
#[derive(Debug, Serialize)]
struct CreatedToken {
    token: String,
    uses: u32,
    expires_at_ms: u64,
    ca_fingerprint: Option<String>,
}

/// `POST /enrollment-tokens`: a new enrollment token, as
/// `herd-hub token create` makes it (docs/protocol.md,
/// "`POST /enrollment-tokens`").
async fn create_enrollment_token(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<CreatedToken>), ApiError> {
    let request: TokenRequest = json_body(&body)?;
    if request.uses == 0 {
        return Err(ApiError::bad_request("`uses` is 0; it must be at least 1"));
    }
    if request.ttl_secs == 0 {
        return Err(ApiError::bad_request(
            "`ttl_secs` is 0; it must be at least 1",
        ));
    }
    let new = on_nats(
        &state.link,
        enrollment::create_token(
            state.link.jetstream(),
            Duration::from_secs(request.ttl_secs),
            request.uses,
            &request.description,
        ),
    )
    .await?;
    tracing::info!(
        uses = request.uses,
        ttl_secs = request.ttl_secs,
        description = request.description,
        "enrollment token created over the admin API"
    );
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedToken {
            token: new.token,
            uses: new.record.uses,
            expires_at_ms: new.record.expires_at_ms,
            ca_fingerprint: state
                .tls
                .and_then(|tls| tls.now().ca_fingerprint)
                .map(|fingerprint| fingerprint.to_string()),
        }),
    ))
}

/// The body of `POST /agents/{id}/revoke`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RevokeRequest {
    reason: String,
}

/// The answer of `POST /agents/{id}/revoke`.
#[derive(Debug, Serialize)]
struct Revoked {
    agent_id: String,
    revoked_at_ms: u64,
}

/// `POST /agents/{id}/revoke`: revokes the agent's certificates, as
/// `herd-hub agent revoke` does (docs/protocol.md,
/// "`POST /agents/{id}/revoke`").
async fn revoke_agent(
    State(state): State<AdminState>,
    Path(agent_id): Path<String>,
    body: Bytes,
) -> Result<axum::Json<Revoked>, ApiError> {
    herd_codec::validate_agent_id(&agent_id)
        .map_err(|error| ApiError::bad_request(format!("agent id {agent_id:?}: {error}")))?;
    let request: RevokeRequest = json_body(&body)?;
    let revocation = on_nats(
        &state.link,
        enrollment::revoke_agent(state.link.jetstream(), &agent_id, &request.reason),
    )
    .await?;
    tracing::info!(
        agent_id,
        reason = request.reason,
        "agent revoked over the admin API"
    );
    Ok(axum::Json(Revoked {
        agent_id,
        revoked_at_ms: revocation.revoked_at_ms,
    }))
}

/// Every agent some hub on this NATS serves, from KV `herd_agents`.
async fn fleet(
    State(state): State<AdminState>,
) -> Result<axum::Json<Vec<crate::claims::FleetAgent>>, ApiError> {
    let agents = on_nats(&state.link, crate::claims::fleet(state.link.jetstream())).await?;
    Ok(axum::Json(agents))
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    let connected = state.link.state() == NatsState::Connected;
    state.metrics.nats_connected.set(i64::from(connected));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(state): State<AdminState>) -> Response {
    match state.link.state() {
        NatsState::Connected => match &*state.stream.borrow() {
            Ok(()) => (StatusCode::OK, "ok\n").into_response(),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("JetStream data stream is not in place: {why}\n"),
            )
                .into_response(),
        },
        other => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", unreachable(&state.link, other)),
        )
            .into_response(),
    }
}

/// What `/healthz` and the mutating endpoints say while NATS is away.
fn unreachable(link: &NatsLink, state: NatsState) -> String {
    format!("NATS at {} is not reachable ({state:?})", link.url())
}

/// `GET /agents`: a JSON array of [`AgentInfo`](crate::AgentInfo), one per
/// connected agent, sorted by agent id (docs/protocol.md, "`GET /agents`").
async fn agents(State(state): State<AdminState>) -> Response {
    let agents = match state.directory.tracker() {
        Some(tracker) => tracker.send(ListAgents).await.ok(),
        None => None,
    };
    match agents {
        Some(agents) => axum::Json(agents).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "heartbeat tracker is restarting\n",
        )
            .into_response(),
    }
}
