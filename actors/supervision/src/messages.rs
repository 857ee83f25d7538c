//! Messages a [`Supervisor`](super::Supervisor) handles.

use std::fmt;
use std::marker::PhantomData;

use actix::{Actor, Addr, Context, Message};

use crate::child::ChildSpec;
use crate::error::{StartError, TerminateError};
use crate::events::ExitReason;
use crate::monitor::ChildHandle;

/// Looks up the current address of the child `id` (this supervisor's direct child),
/// typed. `None` while it is down or if it is not an `A`.
pub struct WhereIs<A: Actor> {
    id: String,
    _actor: PhantomData<fn() -> A>,
}

impl<A: Actor> WhereIs<A> {
    /// Asks for the child `id`.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            _actor: PhantomData,
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

impl<A: Actor> fmt::Debug for WhereIs<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WhereIs")
            .field("id", &self.id)
            .field("actor", &std::any::type_name::<A>())
            .finish()
    }
}

impl<A: Actor> Message for WhereIs<A> {
    type Result = Option<Addr<A>>;
}

/// Adds a child at run time (OTP `start_child`) and returns its [`ChildHandle`]: its typed
/// current address and a monitor of its final exit. The child stays until it exits for
/// good or is terminated with [`TerminateChild`].
#[derive(Debug)]
pub struct StartChild<A: Actor<Context = Context<A>>>(pub ChildSpec<A>);

impl<A: Actor<Context = Context<A>>> Message for StartChild<A> {
    type Result = Result<ChildHandle<A>, StartError>;
}

/// Stops the child `id` (within its shutdown timeout) and removes it (OTP
/// `terminate_child` + `delete_child`). Replies once it has exited.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<(), TerminateError>")]
pub struct TerminateChild(pub String);

/// Lists this supervisor's children in start order (OTP `which_children`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Vec<ChildInfo>")]
pub struct WhichChildren;

/// One entry of [`WhichChildren`]'s reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildInfo {
    /// The child id.
    pub id: String,
    /// Whether it is running now (false while it waits out a backoff or is being replaced).
    pub running: bool,
}

/// A child's task ended (internal: sent by the child's exit reporter).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct ChildExited {
    pub(crate) id: String,
    pub(crate) generation: u64,
    pub(crate) reason: ExitReason,
}
