//! [`NatsCluster`]: harness [`NatsServer`]s routed into one cluster with
//! clustered JetStream, for tests of replicated streams and of losing a node.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    CLUSTER_NAME, ClusterRole, HarnessError, NatsServer, START_ATTEMPTS, find_nats_server, io_error,
};

/// How long a new cluster gets to form. Routes retry about every second and
/// the JetStream meta group needs an election on top, so this is generous
/// for a loaded machine, not a measure of how long it usually takes.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two looks at the cluster's state.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// One probe (monitoring request, JetStream request) of one node: a node that
/// does not answer in this long counts as not ready yet.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How much of each node's log an error shows.
const LOG_TAIL_LINES: usize = 25;

/// A cluster of `nats-server`s on loopback with clustered JetStream, owned by
/// a test and killed when dropped.
///
/// Each node is a [`NatsServer`] (its own client port, store and log) with a
/// `server_name`, a route port and an HTTP monitoring port; all of them are
/// in `cluster { name: "herd-test" }` with routes to every other node. A test
/// can [`stop`](NatsServer::stop) (`SIGKILL`) and
/// [`restart`](NatsServer::restart) single nodes through
/// [`NatsCluster::node_mut`], then [`NatsCluster::wait_formed`].
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `nodes` servers and waits until the cluster has formed (see
    /// [`NatsCluster::wait_formed`]). Retries with new ports when a node
    /// does not come up, as another process may have taken one of them.
    ///
    /// # Panics
    ///
    /// If `nodes` is 0.
    pub async fn start(nodes: usize) -> Result<Self, HarnessError> {
        assert!(nodes > 0, "a nats cluster needs at least one node");
        let binary = find_nats_server()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            // Every node's routes name every other node's route port, so all
            // ports are chosen before the first node starts.
            let ports = free_loopback_ports(3 * nodes)
                .map_err(|source| io_error("probing for free ports", source))?;
            let (client_ports, rest) = ports.split_at(nodes);
            let (route_ports, monitor_ports) = rest.split_at(nodes);
            let starts = (0..nodes).map(|i| {
                let role = ClusterRole {
                    server_name: format!("{CLUSTER_NAME}-{i}"),
                    route_port: route_ports[i],
                    monitor_port: monitor_ports[i],
                    peer_route_ports: route_ports
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .map(|(_, &port)| port)
                        .collect(),
                };
                NatsServer::start_once(&binary, client_ports[i], None, Some(role))
            });
            // Started together: a node only forms routes once its peers listen.
            // If one fails, dropping the others' futures kills them.
            match futures::future::try_join_all(starts).await {
                Ok(nodes) => {
                    let cluster = Self { nodes };
                    // Not retried: the ports were taken, so a cluster that
                    // does not form has another problem (shown in the logs).
                    cluster.wait_formed(FORM_TIMEOUT).await?;
                    return Ok(cluster);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.expect("at least one attempt ran"))
    }

    /// All client URLs, comma-separated (`nats://127.0.0.1:<port>,...`): the
    /// form herd hub's `nats_url` takes.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// All nodes, in start order.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// Node `i` (its name is `herd-test-<i>`).
    ///
    /// # Panics
    ///
    /// If there is no node `i`.
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// Node `i`, to [`stop`](NatsServer::stop) or
    /// [`restart`](NatsServer::restart) it.
    ///
    /// # Panics
    ///
    /// If there is no node `i`.
    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }

    /// The index of the node whose `server_name` is `name` (e.g. a stream's
    /// leader as JetStream reports it).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|node| node.server_name() == Some(name))
    }

    /// A client that knows all nodes' URLs, so it fails over when the node
    /// it is connected to goes away.
    pub async fn client(&self) -> Result<async_nats::Client, HarnessError> {
        let urls: Vec<String> = self.nodes.iter().map(NatsServer::url).collect();
        async_nats::connect(urls)
            .await
            .map_err(|source| HarnessError::Connect {
                url: self.urls(),
                source,
            })
    }

    /// Waits until the nodes that are up (not [`stop`](NatsServer::stop)ped)
    /// form a cluster: each has a route to every other one, all report the
    /// same JetStream meta leader and it is one of them, and each answers a
    /// JetStream request (`$JS.API.INFO`) without an error. With a node
    /// stopped this is the cluster of the others, so it also tells when a
    /// quorum has re-elected; after a [`restart`](NatsServer::restart) it
    /// tells that the node has rejoined.
    ///
    /// Fails with [`HarnessError::ClusterNotFormed`] (what each node reported
    /// last, and its log) after `timeout`, and at once with
    /// [`HarnessError::NoQuorum`] when no more than half the nodes are up.
    pub async fn wait_formed(&self, timeout: Duration) -> Result<(), HarnessError> {
        let up: Vec<&NatsServer> = self.nodes.iter().filter(|n| n.is_started()).collect();
        // Checked, not waited out: a minority cannot elect, and a node that
        // led the meta group before losing its peers still reports itself as
        // leader (and answers) for a while, which would look formed.
        if up.len() * 2 <= self.nodes.len() {
            return Err(HarnessError::NoQuorum {
                up: up.len(),
                nodes: self.nodes.len(),
            });
        }
        let names: Vec<&str> = up.iter().filter_map(|node| node.server_name()).collect();
        // One client per node, reused across polls.
        let mut clients: Vec<Option<async_nats::Client>> = vec![None; up.len()];
        let deadline = tokio::time::Instant::now() + timeout;
        let mut status;
        loop {
            let mut reports = Vec::with_capacity(up.len());
            for (node, client) in up.iter().zip(clients.iter_mut()) {
                reports.push(probe(node, up.len() - 1, client).await);
            }
            let leader = reports[0].meta_leader.clone();
            let formed = reports.iter().all(|report| {
                report.routes_ok && report.jetstream_ok && report.meta_leader == leader
            }) && leader
                .as_deref()
                .is_some_and(|leader| names.contains(&leader));
            status = reports
                .iter()
                .map(|report| report.line.as_str())
                .collect::<Vec<_>>()
                .join("\n");
            if formed {
                return Ok(());
            }
            if tokio::time::Instant::now() + POLL_INTERVAL >= deadline {
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        let logs = self
            .nodes
            .iter()
            .map(|node| {
                format!(
                    "--- {} (port {}){}:\n{}",
                    node.server_name().unwrap_or("?"),
                    node.port(),
                    if node.is_started() { "" } else { ", stopped" },
                    node.log_tail(LOG_TAIL_LINES)
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        Err(HarnessError::ClusterNotFormed {
            timeout,
            status,
            logs,
        })
    }
}

/// What one look at one node found.
struct Report {
    routes_ok: bool,
    jetstream_ok: bool,
    meta_leader: Option<String>,
    /// A human-readable summary, for the error if the cluster does not form.
    line: String,
}

/// Looks at one node: routes (`/routez`), the meta leader it knows (`/jsz`),
/// and whether a client of it gets JetStream answers.
async fn probe(node: &NatsServer, peers: usize, client: &mut Option<async_nats::Client>) -> Report {
    let monitor_port = node
        .monitor_port()
        .expect("a cluster node has a monitor port");
    let routes = monitor_json(monitor_port, "/routez")
        .await
        .and_then(|routez| {
            routez["num_routes"]
                .as_u64()
                .ok_or_else(|| "no num_routes in /routez".to_owned())
        });
    let meta_leader =
        monitor_json(monitor_port, "/jsz").await.and_then(
            |jsz| match jsz["meta_cluster"]["leader"].as_str() {
                Some(leader) if !leader.is_empty() => Ok(leader.to_owned()),
                _ => Err("no meta leader".to_owned()),
            },
        );
    // Route counts: 2.9 has one route per peer (2.10+ pools several), and a
    // killed peer's route goes at once (the kernel closes its sockets).
    let routes_ok = routes.as_ref().is_ok_and(|&count| count >= peers as u64);
    let jetstream = if routes_ok && meta_leader.is_ok() {
        jetstream_info(node, client).await
    } else {
        Err("not asked yet".to_owned())
    };
    let line = format!(
        "{} (port {}): routes {} of {peers}, meta leader {}, jetstream {}",
        node.server_name().unwrap_or("?"),
        node.port(),
        routes.as_ref().map_or_else(|e| e.clone(), u64::to_string),
        meta_leader
            .as_ref()
            .map_or_else(|e| e.as_str(), String::as_str),
        jetstream
            .as_ref()
            .map_or_else(|e| e.as_str(), |()| "answers"),
    );
    Report {
        routes_ok,
        jetstream_ok: jetstream.is_ok(),
        meta_leader: meta_leader.ok(),
        line,
    }
}

/// Asks `$JS.API.INFO` through a client of `node`: until JetStream has a meta
/// leader (and this node knows it) the answer is an error ("JetStream system
/// temporarily unavailable").
async fn jetstream_info(
    node: &NatsServer,
    client: &mut Option<async_nats::Client>,
) -> Result<(), String> {
    if client.is_none() {
        *client = Some(node.client().await.map_err(|error| error.to_string())?);
    }
    let client = client.as_ref().expect("connected above");
    let reply = tokio::time::timeout(PROBE_TIMEOUT, client.request("$JS.API.INFO", "".into()))
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|error| error.to_string())?;
    let answer: serde_json::Value =
        serde_json::from_slice(&reply.payload).map_err(|error| error.to_string())?;
    match answer.get("error") {
        Some(error) => Err(error["description"]
            .as_str()
            .unwrap_or("an error")
            .to_owned()),
        None => Ok(()),
    }
}

/// `GET path` from a node's monitoring port, as JSON. HTTP/1.0, so the
/// server closes the connection after the (unchunked) body.
async fn monitor_json(port: u16, path: &str) -> Result<serde_json::Value, String> {
    let get = async {
        let mut stream = tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(|error| format!("monitoring port: {error}"))?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .map_err(|error| format!("monitoring port: {error}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|error| format!("monitoring port: {error}"))?;
        let text = String::from_utf8_lossy(&response);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .ok_or_else(|| format!("{path}: no HTTP body"))?;
        serde_json::from_str(body).map_err(|error| format!("{path}: {error}"))
    };
    tokio::time::timeout(PROBE_TIMEOUT, get)
        .await
        .unwrap_or_else(|_| Err(format!("{path}: no answer")))
}

/// `count` distinct loopback ports that were free a moment ago: all probes
/// are held open together so the OS cannot hand out one port twice.
fn free_loopback_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let probes = (0..count)
        .map(|_| std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    probes
        .iter()
        .map(|probe| probe.local_addr().map(|addr| addr.port()))
        .collect()
}
