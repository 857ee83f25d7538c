//! What every supervisor of one tree shares.

use tokio::sync::broadcast;

use crate::events::{SupervisionEvent, SupervisionStats};
use crate::registry::Registry;

/// The event channel, counters and registry of one supervision tree.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) events: broadcast::Sender<SupervisionEvent>,
    pub(crate) stats: SupervisionStats,
    pub(crate) registry: Registry,
}

impl Shared {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            events: broadcast::channel(capacity.max(1)).0,
            stats: SupervisionStats::default(),
            registry: Registry::new(),
        }
    }
}
