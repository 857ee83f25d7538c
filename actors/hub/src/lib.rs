//! The hub: accepts agents over TCP, publishes their records to NATS, routes
//! tasks and configuration to them.
//!
//! ```text
//! NatsLink                shared NATS client; a handle, not an actor
//! hub  (supervisor, rest-for-one)
//! ├── nats         supervisor (only without a NATS URL): the embedded nats-server
//! │   └── server   its process, restarted with backoff on the same port and store
//! ├── tracker      HeartbeatTracker: agent detail, herd.presence.<id>, herd.heartbeat.<id>
//! ├── claims       FleetClaims: one session per agent id fleet-wide (KV herd_agents)
//! ├── registry     AgentRegistry: agent id -> Connection, cap, takeover
//! ├── connections  dynamic supervisor: one temporary Connection per agent socket,
//! │                spread over one arbiter per core
//! ├── listener     Listener: accepts sockets
//! ├── batcher      TaskBatcher: task results -> herd.task.results
//! ├── router       CommandRouter: herd.cmd.<id> request/reply
//! ├── configs      ConfigWatcher: KV herd_config -> Welcome / Command{config}
//! ├── identities   AgentIdentities (agents identified by certificate): enrollment,
//! │                renewal, revocations (KV herd_enrollment_tokens, herd_enrolled, herd_revoked)
//! ├── stream       DataStream (ack_mode = "jetstream"): keeps HERD_DATA in place
//! └── ...          the embedder's own children (Hub::supervisor().start_child)
//! admin HTTP              GET /metrics /healthz /agents (open); POST /enrollment-tokens,
//!                         /agents/{id}/revoke (admin token)
//! ```
//!
//! Rest-for-one: when the tracker or the registry restarts, every connection
//! after it is closed too (agents reconnect and are registered afresh), so no
//! actor ever holds state about connections that a restart forgot. Actors
//! find each other through the tree's registry on every use, so they always
//! reach the current incarnation. The embedded server comes first: it is up
//! before anything publishes and stops after everything else (the hub's
//! client is flushed before it gets SIGTERM); its own supervisor restarts it
//! without touching the rest of the tree.
//!
//! The embedded server admits only the hub's two NKey users (the hub's own
//! and a read-only one for subscribers, seeds in
//! `<state_dir>/nats-credentials`); an external server is logged in to with
//! the `[nats]` settings ([`NatsClientConfig`]). Tools that act for the hub
//! reach its NATS with the same URL and credentials through [`connect_nats`].
//!
//! Start a hub with [`Hub::start`] inside an actix system; it runs until
//! [`Hub::shutdown`]. Embedders reach NATS through [`Hub::nats`], the agents'
//! detail through [`Hub::agents`], the tree through [`Hub::supervisor`], and
//! add supervised actors of their own to it:
//!
//! ```no_run
//! use actix::prelude::*;
//! use herd_hub::{Hub, HubConfig};
//! use herd_supervision::ChildSpec;
//!
//! struct Audit;
//! impl Actor for Audit {
//!     type Context = Context<Self>;
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::start(HubConfig {
//!     nats_url: Some("nats://127.0.0.1:4222".into()),
//!     ..HubConfig::default()
//! })
//! .await?;
//! println!("agents connect to {}", hub.listen_addr());
//! let audit = hub.supervisor().start_child(ChildSpec::new("audit", || Audit)).await?;
//! let _current: Option<Addr<Audit>> = audit.addr();
//! hub.shutdown().await;
//! # Ok(()) }
//! ```

mod accept_rate;
mod admin;
mod admin_token;
mod agent_info;
mod batcher;
mod claims;
mod config;
mod config_watcher;
mod connection;
mod directory;
mod embedded;
pub mod enrollment;
mod error;
mod identities;
mod kv;
mod listener;
mod messages;
mod metrics;
mod nats_auth;
mod pending;
mod registry;
mod router;
mod sink;
mod stream;
mod tls;
mod tracker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;

pub use admin_token::ADMIN_TOKEN_FILE;
pub use agent_info::AgentInfo;
pub use batcher::{TASK_RESULTS_SUBJECT, TaskResultRecord};
pub use claims::{AGENTS_BUCKET, AgentClaim, FleetAgent};
pub use config::{
    AckMode, AgentAuth, DataForm, DataStreamConfig, HubConfig, HubConfigError, HubTlsConfig,
    MIN_AGENT_CERT_VALIDITY_SECS, NatsClientConfig,
};
pub use config_watcher::{AGENT_KEY_PREFIX, CONFIG_BUCKET, FLEET_KEY, config_bucket, parse_config};
pub use embedded::{NATS_URL_FILE, find_nats_server};
pub use error::HubError;
pub use messages::PresenceEvent;
pub use metrics::HubMetrics;
pub use nats_auth::{
    HUB_NKEY_FILE, NATS_CREDENTIALS_DIR, READER_NKEY_FILE, connect_nats, hub_connect_options,
    hub_nats_url,
};
pub use sink::{HEADER_MSG_ID, LossEvent, LossKind, NatsLink, NatsState};
pub use stream::DATA_STREAM_SUBJECTS;
pub use tls::TLS_DIR;
pub use tracker::Presence;

use batcher::TaskBatcher;
use config_watcher::ConfigWatcher;
use directory::{HubDirectory, ids};
use embedded::EmbeddedNats;
use herd_supervision::{ChildSpec, ExitReason, SupervisorHandle, SupervisorSpec};
use listener::Listener;
use registry::AgentRegistry;
use router::CommandRouter;
use tracker::HeartbeatTracker;

/// What every hub actor needs: the configuration and the hub's services.
#[derive(Debug, Clone)]
pub(crate) struct Services {
    pub(crate) config: Arc<HubConfig>,
    pub(crate) hub_id: Arc<str>,
    pub(crate) metrics: HubMetrics,
    pub(crate) link: NatsLink,
    pub(crate) directory: HubDirectory,
    /// Whether the data stream is in place (always `Ok` in flush mode).
    pub(crate) stream: stream::StreamStatus,
    /// `None`: the agent link is plaintext (`tls.insecure`).
    pub(crate) tls: Option<tls::AgentTls>,
    /// Places for sockets whose `Hello` is not handled yet.
    pub(crate) pending: pending::PendingHandshakes,
    conn_ids: Arc<AtomicU64>,
}

impl Services {
    /// Whether agents enroll and are identified by certificate here.
    pub(crate) fn enrolls_agents(&self) -> bool {
        self.tls.is_some() && self.config.agent_auth() == AgentAuth::Certificate
    }

    /// A connection id unique in this hub process.
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The hub's supervision tree, built afresh on every (re)start of a child.
fn tree(
    services: &Services,
    socket: Arc<std::net::TcpListener>,
    workers: Arc<[ArbiterHandle]>,
    embedded: Option<&EmbeddedNats>,
    stream_status: Option<tokio::sync::watch::Sender<Result<(), String>>>,
) -> SupervisorSpec {
    let config = &services.config;
    let link = &services.link;
    let directory = &services.directory;
    let tracker = {
        let (link, hub_id) = (link.clone(), config.hub_id.clone());
        ChildSpec::new(ids::TRACKER, move || {
            HeartbeatTracker::new(link.clone(), hub_id.clone())
        })
    };
    let claims = {
        let (link, hub_id, ttl) = (link.clone(), config.hub_id.clone(), config.presence_ttl());
        ChildSpec::new(ids::CLAIMS, move || {
            claims::FleetClaims::new(link.clone(), hub_id.clone(), ttl)
        })
    };
    let registry = {
        let (cap, directory) = (config.max_connections, directory.clone());
        ChildSpec::new(ids::REGISTRY, move || {
            AgentRegistry::new(cap, directory.clone())
        })
    };
    let listener = {
        let services = services.clone();
        ChildSpec::new(ids::LISTENER, move || {
            Listener::new(socket.clone(), services.clone(), workers.clone())
        })
    };
    let batcher = {
        let (link, size, interval) = (
            link.clone(),
            config.task_batch_size,
            config.task_batch_interval(),
        );
        ChildSpec::new(ids::BATCHER, move || {
            TaskBatcher::new(link.clone(), size, interval)
        })
    };
    let router = {
        let (link, directory, metrics) =
            (link.clone(), directory.clone(), services.metrics.clone());
        let timeout = config.task_timeout();
        let hub_id = services.hub_id.clone();
        ChildSpec::new(ids::ROUTER, move || {
            CommandRouter::new(
                link.clone(),
                hub_id.clone(),
                directory.clone(),
                metrics.clone(),
                timeout,
            )
        })
    };
    let configs = {
        let (link, directory) = (link.clone(), directory.clone());
        ChildSpec::new(ids::CONFIGS, move || {
            ConfigWatcher::new(link.clone(), directory.clone())
        })
    };
    let identities = services
        .tls
        .clone()
        .filter(|_| services.enrolls_agents())
        .map(|tls| {
            let (link, directory, hub_id) =
                (link.clone(), directory.clone(), services.hub_id.clone());
            let validity = Duration::from_secs(config.tls.agent_cert_validity_secs);
            ChildSpec::new(ids::IDENTITIES, move || {
                identities::AgentIdentities::new(
                    link.clone(),
                    tls.clone(),
                    validity,
                    hub_id.clone(),
                    directory.clone(),
                )
            })
        });
    let root = SupervisorSpec::new(directory::ROOT)
        .strategy(herd_supervision::Strategy::RestForOne)
        .registry(directory.tree().clone());
    // First, so it is up before anything publishes and stops after everything.
    let root = match embedded {
        Some(embedded) => root.child(embedded.child_spec(link.client().clone())),
        None => root,
    };
    let root = root
        .child(tracker)
        .child(claims)
        .child(registry)
        .child(ChildSpec::supervisor(ids::CONNECTIONS, || {
            SupervisorSpec::dynamic(ids::CONNECTIONS)
        }))
        .child(listener)
        .child(batcher)
        .child(router)
        .child(configs);
    // After the connections: its restart closes no session; meanwhile
    // certificates are refused and agents connect again.
    let root = match identities {
        Some(identities) => root.child(identities),
        None => root,
    };
    // Last: it restarts nothing when it restarts; until the stream is in
    // place, publishes are retried.
    match stream_status {
        Some(status) => {
            let (link, stream, form) = (link.clone(), config.stream.clone(), config.data_form);
            root.child(ChildSpec::new(ids::STREAM, move || {
                stream::DataStream::new(link.clone(), stream.clone(), form, status.clone())
            }))
        }
        None => root,
    }
}

/// Binds the agent socket with `backlog` pending connections (std's `bind`
/// always asks for 128), reusing the address so a restarted hub gets its port
/// back while old connections sit in TIME_WAIT.
fn bind_agent_socket(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)?.into_std()
}

/// Waits until the hub's client reached the embedded server, or fails with
/// the reason the server's first start did not work.
async fn embedded_ready(
    embedded: &EmbeddedNats,
    link: &NatsLink,
    events: &mut tokio::sync::broadcast::Receiver<herd_supervision::SupervisionEvent>,
) -> Result<(), HubError> {
    let nats_path = format!("{}/{}", directory::ROOT, embedded::NATS);
    let server_exit = async {
        loop {
            match events.recv().await {
                Ok(herd_supervision::SupervisionEvent {
                    kind: herd_supervision::EventKind::Exited { reason, .. },
                    supervisor,
                    ..
                }) if *supervisor == *nats_path => return reason.to_string(),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return "the supervision tree stopped".to_owned();
                }
            }
        }
    };
    tokio::select! {
        connected = link.wait_connected(EMBEDDED_READY_TIMEOUT) => match connected {
            true => Ok(()),
            false => Err(embedded.start_error(format!("not ready after {EMBEDDED_READY_TIMEOUT:?}"))),
        },
        reason = server_exit => Err(embedded.start_error(reason)),
    }
}

/// How long a fresh embedded server gets to accept the hub's client.
const EMBEDDED_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running hub.
#[derive(Debug)]
pub struct Hub {
    services: Services,
    root: SupervisorHandle,
    listen_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    workers: Vec<Arbiter>,
    admin: Option<tokio::task::JoinHandle<()>>,
    /// With an embedded server: removes `nats.url` when the hub goes.
    embedded_url_file: Option<embedded::UrlFile>,
}

impl Hub {
    /// Starts a hub: NATS (embedded when `config.nats_url` is `None`), its
    /// supervision tree, the listener and the admin server. Must run inside
    /// an actix system (`#[actix::main]`, `#[actix::test]`, `actix::System::new()`).
    ///
    /// Waits (bounded) for NATS and the initial configuration so the first
    /// agents get their `Welcome` config; when NATS is unreachable the hub
    /// starts anyway and acks nothing until it is back.
    pub async fn start(config: HubConfig) -> Result<Self, HubError> {
        config.validate()?;
        let tls = tls::prepare(&config)?;
        // Before NATS: a missing or empty token file is reported at once.
        let admin_token = match config.admin {
            Some(_) => Some(admin_token::AdminToken::load_or_create(&config)?),
            None => None,
        };
        let mut config = config;
        if config.hub_id.is_empty() {
            config.hub_id = format!("hub-{:08x}", rand::random::<u32>());
        }
        let embedded = match &config.nats_url {
            Some(_) => None,
            None => Some(EmbeddedNats::prepare(
                &config.state_dir,
                &config.stream.name,
            )?),
        };
        let url_file = embedded.as_ref().map(EmbeddedNats::url_file_guard);
        let link = NatsLink::connect(&config, &config.hub_id).await?;
        let bind_error = |what, addr| move |source| HubError::Bind { what, addr, source };
        let socket = bind_agent_socket(config.listen, config.listen_backlog)
            .map_err(bind_error("agents", config.listen))?;
        let listen_addr = socket
            .local_addr()
            .map_err(bind_error("agents", config.listen))?;
        let admin_listener = match config.admin {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(bind_error("admin", addr))?,
            ),
            None => None,
        };
        let admin_addr = admin_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok());
        let (stream_tx, stream) = match config.ack_mode {
            AckMode::Jetstream => {
                let (tx, rx) = tokio::sync::watch::channel(Err("not checked yet".to_owned()));
                (Some(tx), rx)
            }
            AckMode::Flush => (None, tokio::sync::watch::channel(Ok(())).1),
        };
        let metrics = HubMetrics::new();
        let pending = pending::PendingHandshakes::new(
            config.max_pending_handshakes,
            config.max_pending_handshakes_per_source,
            metrics.pending_handshakes.clone(),
        );
        let services = Services {
            stream,
            pending,
            hub_id: config.hub_id.clone().into(),
            config: Arc::new(config),
            metrics,
            link,
            directory: HubDirectory::default(),
            tls,
            conn_ids: Arc::default(),
        };
        let workers: Vec<Arbiter> = (0..services.config.worker_count())
            .map(|_| Arbiter::new())
            .collect();
        let handles: Arc<[ArbiterHandle]> = workers.iter().map(Arbiter::handle).collect();
        let spec = tree(
            &services,
            Arc::new(socket),
            handles,
            embedded.as_ref(),
            stream_tx,
        );
        let mut events = spec.subscribe();
        let root = spec.start()?;
        services.metrics.watch_supervision(root.stats().clone());
        if let Some(embedded) = &embedded
            && let Err(error) = embedded_ready(embedded, &services.link, &mut events).await
        {
            root.shutdown().await;
            return Err(error);
        }
        // Bounded: without NATS the hub still starts and serves agents.
        if services.link.wait_connected(Duration::from_secs(5)).await {
            // The data stream, so the first batches are not published into
            // nothing and retried; bounded like the configuration below.
            let mut stream = services.stream.clone();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stream.wait_for(Result::is_ok)).await;
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                let configs = match services.directory.configs() {
                    Some(configs) => configs.send(messages::IsLoaded).await.unwrap_or(false),
                    None => false,
                };
                // The revocations too, so the first agents are not refused.
                let identities = match services.directory.identities() {
                    Some(identities) => identities.send(messages::IsLoaded).await.unwrap_or(false),
                    None => !services.enrolls_agents(),
                };
                let loaded = configs && identities;
                if loaded {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let admin = admin_listener.zip(admin_token).map(|(listener, token)| {
            admin::serve(
                listener,
                admin::AdminState {
                    metrics: services.metrics.clone(),
                    link: services.link.clone(),
                    directory: services.directory.clone(),
                    stream: services.stream.clone(),
                    token,
                    tls: services.tls.clone(),
                },
            )
        });
        tracing::info!(hub_id = %services.hub_id, %listen_addr, ?admin_addr, nats = %services.link.url(), "hub started");
        Ok(Self {
            services,
            root,
            listen_addr,
            admin_addr,
            workers,
            admin,
            embedded_url_file: url_file,
        })
    }

    /// Where agents connect (the bound address, with the real port).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The fingerprint of the CA agents trust this hub by (`tls.ca_fingerprint`
    /// of the agent); `None` with a plaintext link or an operator's chain
    /// without its CA.
    pub fn ca_fingerprint(&self) -> Option<herd_tls::Fingerprint> {
        self.services
            .tls
            .as_ref()
            .and_then(|tls| tls.now().ca_fingerprint)
    }

    /// Reads the agent link's certificates and keys again, as at start (the
    /// operator's files, or the hub's own CA and a fresh server
    /// certificate), and uses them for every TLS handshake from now on;
    /// sessions that are up keep theirs. `herd-hub` does this on SIGHUP. On
    /// an error the hub goes on with what it had. Nothing to do on a
    /// plaintext link.
    pub fn reload_tls(&self) -> Result<(), HubError> {
        match &self.services.tls {
            Some(tls) => tls.reload(&self.services.config),
            None => Ok(()),
        }
    }

    /// Where the admin HTTP server listens, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// This hub's id.
    pub fn hub_id(&self) -> &str {
        &self.services.hub_id
    }

    /// The configuration the hub runs with (`hub_id` filled in).
    pub fn config(&self) -> &HubConfig {
        &self.services.config
    }

    /// The NATS link (client, JetStream context, connection state).
    pub fn nats(&self) -> &NatsLink {
        &self.services.link
    }

    /// The hub's metrics.
    pub fn metrics(&self) -> &HubMetrics {
        &self.services.metrics
    }

    /// The root of the hub's supervision tree: add children with
    /// `start_child`, watch events with `subscribe`, read `stats`.
    pub fn supervisor(&self) -> &SupervisorHandle {
        &self.root
    }

    /// Waits until the supervision tree has exited (after [`Hub::shutdown`],
    /// or when a child exceeded the restart intensity) and says why.
    pub async fn wait(&self) -> ExitReason {
        self.root.wait().await
    }

    /// The detail of every connected agent, as the admin `/agents` endpoint serves it;
    /// empty while the heartbeat tracker restarts.
    pub async fn agents(&self) -> Vec<AgentInfo> {
        match self.services.directory.tracker() {
            Some(tracker) => tracker.send(messages::ListAgents).await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Orderly shutdown: stop accepting, let in-flight batches be acked,
    /// send every agent `Goodbye{SHUTDOWN}`, wait (bounded) until the
    /// connections are closed, stop the tree in reverse start order, then
    /// the workers, NATS and the admin server.
    pub async fn shutdown(self) {
        let timeout = self.services.config.shutdown_timeout();
        let _ = self.root.terminate_child(ids::LISTENER).await;
        let registry = self.services.directory.registry();
        let asked = match &registry {
            Some(registry) => registry.send(messages::CloseAll).await.unwrap_or(0),
            None => 0,
        };
        // Connections report their end to the AgentRegistry, the one place
        // that knows when all are gone.
        if let Some(registry) = &registry
            && tokio::time::timeout(timeout, registry.send(messages::WhenAllClosed))
                .await
                .is_err()
        {
            tracing::warn!(?timeout, "agents still connected at the shutdown timeout");
        }
        let exit = self.root.shutdown().await;
        tracing::info!(agents = asked, %exit, "hub shut down");
        // The embedded server's actor flushed the client before the server stopped.
        if self.embedded_url_file.is_none() {
            let _ = tokio::time::timeout(timeout, self.services.link.client().flush()).await;
        }
        for worker in &self.workers {
            worker.stop();
        }
        if let Some(admin) = self.admin {
            admin.abort();
        }
    }
}
