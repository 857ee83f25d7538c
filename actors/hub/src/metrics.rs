//! The hub's Prometheus metrics, served as text by the admin server.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use herd_supervision::SupervisionStats;

/// A label set with one `outcome` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// e.g. `ok`, `bad_token`, `timeout`.
    pub outcome: &'static str,
}

/// A label set with one `reason` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// e.g. `per_source`, `out_of_resources`.
    pub reason: &'static str,
}

/// A label set with one `actor` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActorLabel {
    /// The actor's child id.
    pub actor: String,
}

/// Every metric of one hub. Cheap to clone (handles on shared atomics).
#[derive(Debug, Clone)]
pub struct HubMetrics {
    registry: Arc<Registry>,
    /// Agents with a finished handshake, connected now.
    pub connections: Gauge,
    /// Sockets accepted (those refused at once included).
    pub sockets_accepted: Counter,
    /// Accepted sockets closed at once, by the bound they were over
    /// (`accept_rate`, `pending_handshakes`, `per_source`).
    pub sockets_refused: Family<ReasonLabel, Counter>,
    /// Sockets accepted whose `Hello` is not handled yet.
    pub pending_handshakes: Gauge,
    /// Certificate renewals answered, by outcome (`issued`, `refused`).
    pub certificate_renewals: Family<OutcomeLabel, Counter>,
    /// Failed `accept` calls, by kind (`out_of_resources`: descriptors or
    /// kernel memory ran out and accepting pauses; `other`).
    pub accept_errors: Family<ReasonLabel, Counter>,
    /// Handshakes by outcome (`ok`, `bad_token`, `bad_id`, `not_hello`,
    /// `timeout`, `bad_frame`, `full`, `closed`).
    pub handshakes: Family<OutcomeLabel, Counter>,
    /// Connections closed after the handshake, by reason.
    pub closes: Family<OutcomeLabel, Counter>,
    /// Records received from agents.
    pub records_in: Counter,
    /// Frame bytes received from agents (frame bodies).
    pub bytes_in: Counter,
    /// Records published to NATS and accepted.
    pub records_out: Counter,
    /// Envelope bytes published to NATS and accepted.
    pub bytes_out: Counter,
    /// Acks sent to agents.
    pub acks: Counter,
    /// Publish attempts that failed and were repeated.
    pub publish_retries: Counter,
    /// Batches that never arrived: seq gaps seen (each also a loss event).
    pub gap_batches: Counter,
    /// Batches received again at or below the last acked seq (resends).
    pub resent_batches: Counter,
    /// Records NATS cannot take (over its max_payload), refused and reported.
    pub oversize_records: Counter,
    /// Seconds from the start of a batch's publish to its acceptance.
    pub publish_latency: Histogram,
    /// Tasks by outcome (`ok`, `failed`, `rejected`, `timeout`, `offline`, `bad_request`).
    pub tasks: Family<OutcomeLabel, Counter>,
    /// Tasks dropped unwritten because their requester had given up (TIMEOUT).
    pub expired_tasks: Counter,
    /// Restarts of supervised actors, by actor.
    pub actor_restarts: Family<ActorLabel, Counter>,
    /// 1 while the hub is connected to NATS.
    pub nats_connected: Gauge,
    /// The supervision tree's counters, read when rendering.
    supervision: Arc<OnceLock<SupervisionStats>>,
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HubMetrics {
    /// Registers every metric under the `herd_hub_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("herd_hub");
        let connections = Gauge::default();
        let sockets_accepted = Counter::default();
        let sockets_refused = Family::<ReasonLabel, Counter>::default();
        let pending_handshakes = Gauge::default();
        let certificate_renewals = Family::<OutcomeLabel, Counter>::default();
        let accept_errors = Family::<ReasonLabel, Counter>::default();
        let handshakes = Family::<OutcomeLabel, Counter>::default();
        let closes = Family::<OutcomeLabel, Counter>::default();
        let records_in = Counter::default();
        let bytes_in = Counter::default();
        let records_out = Counter::default();
        let bytes_out = Counter::default();
        let acks = Counter::default();
        let publish_retries = Counter::default();
        let gap_batches = Counter::default();
        let resent_batches = Counter::default();
        let oversize_records = Counter::default();
        let publish_latency = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        let tasks = Family::<OutcomeLabel, Counter>::default();
        let expired_tasks = Counter::default();
        let actor_restarts = Family::<ActorLabel, Counter>::default();
        let nats_connected = Gauge::default();
        registry.register(
            "connections",
            "Agents connected now (handshake done)",
            connections.clone(),
        );
        registry.register(
            "sockets_accepted",
            "TCP connections accepted",
            sockets_accepted.clone(),
        );
        registry.register(
            "sockets_refused",
            "Accepted sockets closed at once, by the bound they were over (accept rate, pending handshakes)",
            sockets_refused.clone(),
        );
        registry.register(
            "pending_handshakes",
            "Sockets accepted whose Hello is not handled yet",
            pending_handshakes.clone(),
        );
        registry.register(
            "certificate_renewals",
            "Agent certificate renewals answered, by outcome",
            certificate_renewals.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accept calls, by kind",
            accept_errors.clone(),
        );
        registry.register("handshakes", "Handshakes by outcome", handshakes.clone());
        registry.register(
            "connection_closes",
            "Connections closed after the handshake, by reason",
            closes.clone(),
        );
        registry.register(
            "records_in",
            "Records received from agents",
            records_in.clone(),
        );
        registry.register(
            "bytes_in",
            "Frame bytes received from agents",
            bytes_in.clone(),
        );
        registry.register(
            "records_published",
            "Records accepted by NATS",
            records_out.clone(),
        );
        registry.register(
            "bytes_published",
            "Envelope bytes accepted by NATS",
            bytes_out.clone(),
        );
        registry.register("acks", "Acks sent to agents", acks.clone());
        registry.register(
            "publish_retries",
            "Batch publishes repeated after a failure",
            publish_retries.clone(),
        );
        registry.register(
            "gap_batches",
            "Batches missing from an agent's seq order (published as loss events)",
            gap_batches.clone(),
        );
        registry.register(
            "resent_batches",
            "Batches received again at or below the last acked seq",
            resent_batches.clone(),
        );
        registry.register(
            "oversize_records",
            "Records over NATS max_payload, not published (published as loss events)",
            oversize_records.clone(),
        );
        registry.register(
            "publish_latency_seconds",
            "Time from a batch's first publish to its acceptance by NATS",
            publish_latency.clone(),
        );
        registry.register("tasks", "Task requests by outcome", tasks.clone());
        registry.register(
            "expired_tasks",
            "Tasks not written to their agent because the requester had given up",
            expired_tasks.clone(),
        );
        registry.register(
            "actor_restarts",
            "Restarts of supervised actors",
            actor_restarts.clone(),
        );
        registry.register(
            "nats_connected",
            "1 while connected to NATS",
            nats_connected.clone(),
        );
        Self {
            registry: Arc::new(registry),
            connections,
            sockets_accepted,
            sockets_refused,
            pending_handshakes,
            certificate_renewals,
            accept_errors,
            handshakes,
            closes,
            records_in,
            bytes_in,
            records_out,
            bytes_out,
            acks,
            publish_retries,
            gap_batches,
            resent_batches,
            oversize_records,
            publish_latency,
            tasks,
            expired_tasks,
            actor_restarts,
            nats_connected,
            supervision: Arc::default(),
        }
    }

    /// Counts one handshake outcome.
    pub fn handshake(&self, outcome: &'static str) {
        self.handshakes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts one answered certificate renewal.
    pub fn certificate_renewal(&self, issued: bool) {
        let outcome = if issued { "issued" } else { "refused" };
        self.certificate_renewals
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts one socket closed at once for `reason`.
    pub fn refused_socket(&self, reason: &'static str) {
        self.sockets_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts one failed `accept` of kind `reason`.
    pub fn accept_error(&self, reason: &'static str) {
        self.accept_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts one connection close.
    pub fn close(&self, outcome: &'static str) {
        self.closes.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts one task outcome.
    pub fn task(&self, outcome: &'static str) {
        self.tasks.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub(crate) fn observe_publish(&self, latency: Duration, records: usize, bytes: usize) {
        self.bytes_out.inc_by(bytes as u64);
        self.publish_latency.observe(latency.as_secs_f64());
        self.records_out.inc_by(records as u64);
    }

    /// Reports restarts from `stats` (a supervision tree's counters) as
    /// `herd_hub_actor_restarts_total{actor="<path>"}`. Only the first call counts.
    pub fn watch_supervision(&self, stats: SupervisionStats) {
        let _ = self.supervision.set(stats);
    }

    /// Brings the restart counters up to the supervision tree's.
    fn sync_restarts(&self) {
        let Some(stats) = self.supervision.get() else {
            return;
        };
        for (path, child) in stats.snapshot() {
            // Connections are temporary and never restart; one series each
            // would only grow the output.
            if child.restarts == 0 {
                continue;
            }
            let counter = self
                .actor_restarts
                .get_or_create(&ActorLabel { actor: path });
            let seen = counter.get();
            if child.restarts > seen {
                counter.inc_by(child.restarts - seen);
            }
        }
    }

    /// The metrics in Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        self.sync_restarts();
        let mut open_metrics = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry);
        to_prometheus_text(&open_metrics)
    }
}

/// prometheus-client writes OpenMetrics, where a counter family `x` has
/// samples `x_total`; the Prometheus text format (what `promtool check
/// metrics` and older scrapers read) wants HELP and TYPE on `x_total` too,
/// and has no `# EOF`.
fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: Vec<&str> = open_metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(open_metrics.len() + counters.len() * 16);
    for line in open_metrics.lines().filter(|line| *line != "# EOF") {
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_help_and_type_under_their_sample_name() {
        let metrics = HubMetrics::new();
        metrics.handshake("ok");
        let text = metrics.render();
        assert!(
            text.contains("# HELP herd_hub_handshakes_total Handshakes by outcome.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE herd_hub_handshakes_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE herd_hub_connections gauge\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
    }
}
