//! A handle on one child added at run time: its current address and its final exit.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use actix::{Actor, Addr};
use tokio::sync::watch;

use crate::events::ExitReason;
use crate::registry::Registry;

/// Where a child's final exit is announced; the supervisor holds the sending side.
pub(crate) type ExitSender = watch::Sender<Option<ExitReason>>;

/// What [`StartChild`](super::StartChild) returns: the child's current address (through
/// the tree's [`Registry`], so a restart is followed) and an OTP-style monitor that
/// resolves once the child has left its supervisor for good.
pub struct ChildHandle<A: Actor> {
    path: Arc<str>,
    registry: Registry,
    exit: watch::Receiver<Option<ExitReason>>,
    _actor: PhantomData<fn() -> A>,
}

impl<A: Actor> ChildHandle<A> {
    pub(crate) fn new(path: Arc<str>, registry: Registry) -> (Self, ExitSender) {
        let (tx, exit) = watch::channel(None);
        let handle = Self {
            path,
            registry,
            exit,
            _actor: PhantomData,
        };
        (handle, tx)
    }

    /// The child's path in its tree, e.g. `hub/conns/conn-7`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The address of the child's current incarnation; `None` while it is down (waiting
    /// out a backoff) and after it has left its supervisor.
    pub fn addr(&self) -> Option<Addr<A>> {
        if self.exit.borrow().is_some() {
            return None;
        }
        self.registry.get(&self.path)
    }

    /// Waits until the child has left its supervisor for good — it exited and will not be
    /// restarted, was terminated, or its supervisor stopped — and returns its last exit
    /// reason. Restarts in between do not end the wait.
    pub async fn wait(&self) -> ExitReason {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(ExitReason::Shutdown),
            // The supervisor announces before it lets go of the sender.
            Err(_) => ExitReason::Shutdown,
        }
    }

    /// The last exit reason once the child has left its supervisor; `None` while it is
    /// supervised.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.borrow().clone()
    }
}

impl<A: Actor> Clone for ChildHandle<A> {
    fn clone(&self) -> Self {
        Self {
            path: self.path.clone(),
            registry: self.registry.clone(),
            exit: self.exit.clone(),
            _actor: PhantomData,
        }
    }
}

impl<A: Actor> fmt::Debug for ChildHandle<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildHandle")
            .field("path", &self.path)
            .field("actor", &std::any::type_name::<A>())
            .field("exit", &*self.exit.borrow())
            .finish()
    }
}
