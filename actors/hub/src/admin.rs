//! The admin HTTP server: `/metrics`, `/healthz`, `/agents`.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::directory::HubDirectory;
use crate::messages::ListAgents;
use crate::metrics::HubMetrics;
use crate::sink::{NatsLink, NatsState};
use crate::stream::StreamStatus;

#[derive(Debug, Clone)]
struct AdminState {
    metrics: HubMetrics,
    link: NatsLink,
    directory: HubDirectory,
    stream: StreamStatus,
}

/// Serves the admin endpoints on `listener` until the returned task is aborted.
pub(crate) fn serve(
    listener: tokio::net::TcpListener,
    metrics: HubMetrics,
    link: NatsLink,
    directory: HubDirectory,
    stream: StreamStatus,
) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/agents", get(agents))
        .with_state(AdminState {
            metrics,
            link,
            directory,
            stream,
        });
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "admin server stopped");
        }
    })
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
            format!(
                "NATS at {} is not reachable ({other:?})\n",
                state.link.url()
            ),
        )
            .into_response(),
    }
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
