//! The embedder's handle on a running supervision tree.

use std::fmt;
use std::sync::Arc;

use actix::{Actor, Addr, Context};
use tokio::sync::{broadcast, watch};

use crate::actor::{Supervisor, SupervisorSpec};
use crate::child::{ChildSpec, Control, ExitReporter, prepare_child};
use crate::config::valid_name;
use crate::error::{ConfigError, StartError, TerminateError};
use crate::events::{ExitReason, SupervisionEvent, SupervisionStats};
use crate::messages::{StartChild, TerminateChild, WhereIs};
use crate::monitor::ChildHandle;
use crate::registry::Registry;
use crate::tree::Shared;

impl SupervisorSpec {
    /// Starts this supervisor as the root of a tree on the current arbiter.
    ///
    /// # Errors
    /// [`ConfigError::NoArbiter`] outside an actix system; [`ConfigError::InvalidName`],
    /// [`ConfigError::DuplicateChildId`] or [`ConfigError::OneShotRestart`] for a bad name,
    /// id or restart type (nested specs are checked when they start; a bad one exits
    /// abnormally with that error as its reason).
    pub fn start(self) -> Result<SupervisorHandle, ConfigError> {
        if actix::Arbiter::try_current().is_none() {
            return Err(ConfigError::NoArbiter);
        }
        if !valid_name(&self.name) {
            return Err(ConfigError::InvalidName(self.name));
        }
        self.validate(&self.name)?;
        let path: Arc<str> = self.name.as_str().into();
        let shared = self.shared.clone();
        let control = Arc::new(Control::default());
        let (exit_tx, exit_rx) = watch::channel(None);
        let reporter = ExitReporter::new(move |reason| {
            // Nobody may be waiting for the root's exit.
            let _ = exit_tx.send(Some(reason));
        });
        let root_path = path.clone();
        let (addr, launch) = prepare_child(
            move || Ok(Supervisor::from_spec(self, root_path, None)),
            control.clone(),
            reporter,
            None,
        );
        launch();
        Ok(SupervisorHandle {
            addr,
            path,
            shared,
            control,
            exit: exit_rx,
        })
    }
}

/// A running root supervisor: its address, events, counters, registry and exit.
/// Cheap to clone; dropping it does not stop the tree (call [`shutdown`](Self::shutdown)).
#[derive(Clone)]
pub struct SupervisorHandle {
    addr: Addr<Supervisor>,
    path: Arc<str>,
    shared: Shared,
    control: Arc<Control>,
    exit: watch::Receiver<Option<ExitReason>>,
}

impl SupervisorHandle {
    /// The root supervisor's address (send it [`WhereIs`], [`StartChild`], ...).
    pub fn addr(&self) -> &Addr<Supervisor> {
        &self.addr
    }

    /// The root's path (its name).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Subscribes to every supervision event of the tree from now on. A subscriber that
    /// falls more than the channel capacity behind gets `RecvError::Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<SupervisionEvent> {
        self.shared.events.subscribe()
    }

    /// The tree's counters.
    pub fn stats(&self) -> &SupervisionStats {
        &self.shared.stats
    }

    /// The tree's registry of running children by path.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// The current address of the root's child `id`, if it is running and is an `A`.
    pub async fn where_is<A: Actor>(&self, id: impl Into<String>) -> Option<Addr<A>> {
        self.addr.send(WhereIs::new(id)).await.ok().flatten()
    }

    /// Adds a child to the root at run time; see [`StartChild`].
    pub async fn start_child<A: Actor<Context = Context<A>>>(
        &self,
        spec: ChildSpec<A>,
    ) -> Result<ChildHandle<A>, StartError> {
        self.addr.send(StartChild(spec)).await?
    }

    /// Stops and removes the root's child `id`; see [`TerminateChild`].
    pub async fn terminate_child(&self, id: impl Into<String>) -> Result<(), TerminateError> {
        self.addr.send(TerminateChild(id.into())).await?
    }

    /// Stops the tree in order (children in reverse start order, each within its shutdown
    /// timeout) and returns the root's exit reason.
    pub async fn shutdown(&self) -> ExitReason {
        self.control.stop();
        self.wait().await
    }

    /// Waits until the root supervisor has exited (shut down, or escalated) and returns why.
    pub async fn wait(&self) -> ExitReason {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(ExitReason::Normal),
            // The exit reporter always reports before it goes; this is unreachable in
            // practice, but not worth a panic.
            Err(_) => ExitReason::Abnormal("supervisor exit was not reported".into()),
        }
    }

    /// The root's exit reason if it has exited.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.borrow().clone()
    }
}

impl fmt::Debug for SupervisorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorHandle")
            .field("path", &self.path)
            .field("exit", &*self.exit.borrow())
            .finish()
    }
}
