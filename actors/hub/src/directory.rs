//! Where the hub's supervised actors are right now.

use actix::Addr;

use crate::batcher::TaskBatcher;
use crate::config_watcher::ConfigWatcher;
use crate::registry::Registry;
use crate::router::CommandRouter;
use crate::tracker::HeartbeatTracker;
use herd_supervision::{self, Supervisor};

/// Name of the hub's root supervisor; its children's paths start with it.
pub const ROOT: &str = "hub";

/// Child ids under the root, in start order (the strategy is rest-for-one:
/// a child's restart restarts the ones after it).
pub mod ids {
    /// [`HeartbeatTracker`](super::HeartbeatTracker).
    pub const TRACKER: &str = "tracker";
    /// [`Registry`](super::Registry).
    pub const REGISTRY: &str = "registry";
    /// The dynamic supervisor of the Connections.
    pub const CONNECTIONS: &str = "connections";
    /// The [`Listener`](crate::Listener).
    pub const LISTENER: &str = "listener";
    /// [`TaskBatcher`](super::TaskBatcher).
    pub const BATCHER: &str = "batcher";
    /// [`CommandRouter`](super::CommandRouter).
    pub const ROUTER: &str = "router";
    /// [`ConfigWatcher`](super::ConfigWatcher).
    pub const CONFIGS: &str = "configs";
}

/// Typed look-ups of the hub's actors in the supervision tree's registry.
///
/// Actors find each other through it on every use instead of keeping an
/// `Addr`, so a restarted actor is reached at its new address; `None` means
/// the actor is down (between exit and restart).
#[derive(Debug, Clone, Default)]
pub struct HubDirectory {
    registry: herd_supervision::Registry,
}

impl HubDirectory {
    /// A directory over the tree registry `registry`.
    pub fn new(registry: herd_supervision::Registry) -> Self {
        Self { registry }
    }

    /// The underlying tree registry.
    pub fn tree(&self) -> &herd_supervision::Registry {
        &self.registry
    }

    fn get<A: actix::Actor>(&self, id: &str) -> Option<Addr<A>> {
        self.registry.get(&format!("{ROOT}/{id}"))
    }

    /// The Registry (agent id -> Connection).
    pub fn registry(&self) -> Option<Addr<Registry>> {
        self.get(ids::REGISTRY)
    }

    /// The HeartbeatTracker.
    pub fn tracker(&self) -> Option<Addr<HeartbeatTracker>> {
        self.get(ids::TRACKER)
    }

    /// The CommandRouter.
    pub fn router(&self) -> Option<Addr<CommandRouter>> {
        self.get(ids::ROUTER)
    }

    /// The TaskBatcher.
    pub fn batcher(&self) -> Option<Addr<TaskBatcher>> {
        self.get(ids::BATCHER)
    }

    /// The ConfigWatcher.
    pub fn configs(&self) -> Option<Addr<ConfigWatcher>> {
        self.get(ids::CONFIGS)
    }

    /// The dynamic supervisor of the Connections.
    pub fn connections(&self) -> Option<Addr<Supervisor>> {
        self.get(ids::CONNECTIONS)
    }
}
