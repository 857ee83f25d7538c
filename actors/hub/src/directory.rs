//! Where the hub's supervised actors are right now.

use actix::Addr;
use herd_supervision::{self, Supervisor};

/// Name of the hub's root supervisor; its children's paths start with it.
pub(crate) const ROOT: &str = "hub";

/// Child ids under the root, in start order (the strategy is rest-for-one:
/// a child's restart restarts the ones after it).
pub(crate) mod ids {
    /// [`HeartbeatTracker`](crate::HeartbeatTracker).
    pub(crate) const TRACKER: &str = "tracker";
    /// FleetClaims: the fleet-wide presence claims.
    pub(crate) const CLAIMS: &str = "claims";
    /// [`AgentRegistry`](crate::AgentRegistry).
    pub(crate) const REGISTRY: &str = "registry";
    /// The dynamic supervisor of the Connections.
    pub(crate) const CONNECTIONS: &str = "connections";
    /// The [`Listener`](crate::Listener).
    pub(crate) const LISTENER: &str = "listener";
    /// [`TaskBatcher`](crate::TaskBatcher).
    pub(crate) const BATCHER: &str = "batcher";
    /// [`CommandRouter`](crate::CommandRouter).
    pub(crate) const ROUTER: &str = "router";
    /// [`ConfigWatcher`](crate::ConfigWatcher).
    pub(crate) const CONFIGS: &str = "configs";
    /// AgentIdentities (agents identified by certificate only).
    pub(crate) const IDENTITIES: &str = "identities";
    /// The data stream keeper (JetStream ack mode only).
    pub(crate) const STREAM: &str = "stream";
}

/// Typed look-ups of the hub's actors in the supervision tree's registry.
///
/// Actors find each other through it on every use instead of keeping an
/// `Addr`, so a restarted actor is reached at its new address; `None` means
/// the actor is down (between exit and restart).
#[derive(Debug, Clone, Default)]
pub(crate) struct HubDirectory {
    registry: herd_supervision::Registry,
}

impl HubDirectory {
    /// The underlying tree registry.
    pub(crate) fn tree(&self) -> &herd_supervision::Registry {
        &self.registry
    }

    /// The running child `id` of the hub's root, typed. Each actor's module adds its own
    /// typed look-up, so this module depends on none of them.
    pub(crate) fn get<A: actix::Actor>(&self, id: &str) -> Option<Addr<A>> {
        self.registry.get(&format!("{ROOT}/{id}"))
    }

    /// The dynamic supervisor of the Connections.
    pub(crate) fn connections(&self) -> Option<Addr<Supervisor>> {
        self.get(ids::CONNECTIONS)
    }
}
