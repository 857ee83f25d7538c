//! A tree-wide, typed name registry of running children.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use actix::{Actor, Addr};

/// Type-erased address of a running child (an `Addr<A>`).
pub(crate) type AnyAddr = Arc<dyn std::any::Any + Send + Sync>;

/// The addresses of a supervision tree's running children, by path (`hub/heartbeat`,
/// `hub/workers/conn-7`).
///
/// Supervisors update it as children start and exit, so a lookup always returns the
/// *current* incarnation: after a restart, callers get the new address; while a child is
/// down (exited, waiting out its backoff), they get `None`. Lookups are a read lock and a
/// clone, cheap enough to do per message; cache the address only as long as it works
/// (`Addr::connected`). Cloning the registry shares it.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<HashMap<Arc<str>, AnyAddr>>>,
}

impl Registry {
    /// An empty registry; pass it to [`SupervisorSpec::registry`](super::SupervisorSpec::registry)
    /// before starting the tree, or use the tree's own via
    /// [`SupervisorHandle::registry`](super::SupervisorHandle::registry).
    pub fn new() -> Self {
        Self::default()
    }

    /// The address of the running child at `path`, if it is running and is an `A`.
    pub fn get<A: Actor>(&self, path: &str) -> Option<Addr<A>> {
        self.read().get(path)?.downcast_ref::<Addr<A>>().cloned()
    }

    /// Whether a child is running at `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.read().contains_key(path)
    }

    /// The paths of all running children, sorted.
    pub fn paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.read().keys().map(|p| p.to_string()).collect();
        paths.sort();
        paths
    }

    pub(crate) fn insert(&self, path: Arc<str>, addr: AnyAddr) {
        self.write().insert(path, addr);
    }

    /// Removes `path` only if it still maps to `addr` (a newer incarnation stays).
    pub(crate) fn remove(&self, path: &str, addr: &AnyAddr) {
        let mut map = self.write();
        if map.get(path).is_some_and(|cur| Arc::ptr_eq(cur, addr)) {
            map.remove(path);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, AnyAddr>> {
        // Values are replaced whole; a panic elsewhere cannot leave the map inconsistent.
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Arc<str>, AnyAddr>> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("paths", &self.paths())
            .finish()
    }
}
