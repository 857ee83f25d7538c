//! Running one child: its task, panic capture, stop and kill, and how its exit is reported.
//!
//! A child is an ordinary actix actor. Instead of `Actor::start` its `ContextFut` is driven
//! by a [`ChildTask`] spawned on the target arbiter. The task catches panics from every
//! poll (handlers, `started`, `stopping`, `stopped`, spawned actor futures), lets the
//! supervisor stop or kill the actor from any thread, and reports exactly one
//! [`ExitReason`] when the actor is gone — even when its arbiter drops the task.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::dev::{ContextFut, channel};
use actix::{Actor, ActorContext, Addr, ArbiterHandle, Context};
use futures::task::AtomicWaker;

use crate::config::Restart;
use crate::events::ExitReason;
use crate::registry::AnyAddr;
use crate::tree::Shared;

tokio::task_local! {
    /// The exit reason a running child declared, scoped around every poll of its task.
    static EXIT_REASON: Rc<RefCell<Option<ExitReason>>>;
}

/// Stops the actor and records an abnormal exit `reason` for its supervisor.
///
/// A [`Transient`](super::Restart::Transient) child stopped this way is restarted; one that
/// calls plain `ctx.stop()` is not. Outside a supervised child this is just `ctx.stop()`.
/// The first reason recorded wins.
///
/// ```
/// use actix::prelude::*;
/// use herd_supervision::stop_abnormal;
///
/// struct Conn;
/// impl Actor for Conn {
///     type Context = Context<Self>;
/// }
///
/// #[derive(Message)]
/// #[rtype(result = "()")]
/// struct Garbage;
///
/// impl Handler<Garbage> for Conn {
///     type Result = ();
///     fn handle(&mut self, _: Garbage, ctx: &mut Context<Self>) {
///         stop_abnormal(ctx, "peer sent garbage");
///     }
/// }
/// ```
pub fn stop_abnormal<C: ActorContext>(ctx: &mut C, reason: impl Into<String>) {
    set_exit_reason(ExitReason::Abnormal(reason.into()));
    ctx.stop();
}

/// Records the exit reason of the running child; false outside a supervised child.
pub(crate) fn set_exit_reason(reason: ExitReason) -> bool {
    EXIT_REASON
        .try_with(|cell| {
            cell.borrow_mut().get_or_insert(reason);
        })
        .is_ok()
}

const RUN: u8 = 0;
const STOP: u8 = 1;
const KILL: u8 = 2;

/// Cross-thread stop/kill switch for one running child.
#[derive(Debug, Default)]
pub(crate) struct Control {
    state: AtomicU8,
    waker: AtomicWaker,
}

impl Control {
    /// Asks the actor to stop (`ctx.stop()`: its `stopping`/`stopped` hooks run).
    pub(crate) fn stop(&self) {
        let _ = self
            .state
            .compare_exchange(RUN, STOP, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    /// Drops the actor's future at its next poll, without waiting for it to stop.
    pub(crate) fn kill(&self) {
        self.state.store(KILL, Ordering::Release);
        self.waker.wake();
    }

    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }
}

/// Delivers a child's exit reason exactly once; if dropped unused (the task was dropped by
/// its arbiter, or never ran), it reports that, so no exit goes unnoticed.
pub(crate) struct ExitReporter(Option<Box<dyn FnOnce(ExitReason) + Send>>);

impl ExitReporter {
    pub(crate) fn new(f: impl FnOnce(ExitReason) + Send + 'static) -> Self {
        Self(Some(Box::new(f)))
    }

    fn report(mut self, reason: ExitReason) {
        if let Some(f) = self.0.take() {
            f(reason);
        }
    }
}

impl Drop for ExitReporter {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(ExitReason::Abnormal(
                "child task dropped before the actor stopped (its arbiter is gone)".into(),
            ));
        }
    }
}

impl fmt::Debug for ExitReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExitReporter")
            .field("reported", &self.0.is_none())
            .finish()
    }
}

enum Outcome {
    Finished,
    Panicked(String),
    Killed,
}

/// Drives an actor's `ContextFut`, catching panics and obeying its [`Control`].
struct ChildTask<A: Actor<Context = Context<A>>> {
    fut: Option<ContextFut<A, Context<A>>>,
    control: Arc<Control>,
    stop_applied: bool,
    reason: Rc<RefCell<Option<ExitReason>>>,
}

impl<A: Actor<Context = Context<A>>> ChildTask<A> {
    /// Drops the actor's future (its `Drop` may run `stopping`/`stopped`) inside the
    /// exit-reason scope, containing a panic there so it cannot abort the process.
    fn drop_actor(&mut self) {
        if let Some(fut) = self.fut.take() {
            let reason = self.reason.clone();
            let dropped = catch_unwind(AssertUnwindSafe(|| {
                EXIT_REASON.sync_scope(reason, || drop(fut))
            }));
            if let Err(payload) = dropped {
                tracing::error!(
                    panic = %panic_message(payload.as_ref()),
                    "actor panicked again while being dropped"
                );
            }
        }
    }
}

impl<A: Actor<Context = Context<A>>> Future for ChildTask<A> {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Outcome> {
        let this = &mut *self;
        this.control.waker.register(cx.waker());
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Ready(Outcome::Finished);
        };
        match this.control.state() {
            KILL => {
                this.drop_actor();
                return Poll::Ready(Outcome::Killed);
            }
            STOP if !this.stop_applied => {
                this.stop_applied = true;
                fut.ctx().stop();
            }
            _ => {}
        }
        let reason = this.reason.clone();
        let polled = catch_unwind(AssertUnwindSafe(|| {
            EXIT_REASON.sync_scope(reason, || Pin::new(&mut *fut).poll(cx))
        }));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => {
                this.drop_actor();
                Poll::Ready(Outcome::Finished)
            }
            Err(payload) => {
                let msg = panic_message(payload.as_ref());
                this.drop_actor();
                Poll::Ready(Outcome::Panicked(msg))
            }
        }
    }
}

/// The text of a panic payload (`&str` or `String`; anything else is named as such).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Starts the actor's task on the current arbiter, or hands it to another one.
pub(crate) type Launch = Box<dyn FnOnce()>;

/// Prepares an actor built by `make` to run on `arbiter` (or the current one) under
/// `control`; `reporter` gets its exit reason. Returns the new address and the launch:
/// the mailbox exists before the actor does, so the supervisor can publish the address
/// (and announce the start) before the child can do anything, and messages sent early are
/// queued, not lost.
pub(crate) fn prepare_child<A, F>(
    make: F,
    control: Arc<Control>,
    reporter: ExitReporter,
    arbiter: Option<ArbiterHandle>,
) -> (Addr<A>, Launch)
where
    A: Actor<Context = Context<A>>,
    F: FnOnce() -> Result<A, String> + Send + 'static,
{
    let (tx, rx) = channel::channel(MAILBOX_CAPACITY);
    let addr = Addr::new(tx);
    let run = move || {
        let actor = match catch_unwind(AssertUnwindSafe(make)) {
            Ok(Ok(actor)) => actor,
            Ok(Err(why)) => {
                reporter.report(ExitReason::StartFailed(why));
                return;
            }
            Err(payload) => {
                reporter.report(ExitReason::Panic(panic_message(payload.as_ref())));
                return;
            }
        };
        let reason = Rc::new(RefCell::new(None));
        let task = ChildTask {
            fut: Some(Context::with_receiver(rx).into_future(actor)),
            control: control.clone(),
            stop_applied: false,
            reason: reason.clone(),
        };
        actix::spawn(async move {
            let exit = match task.await {
                Outcome::Panicked(msg) => ExitReason::Panic(msg),
                Outcome::Killed => ExitReason::Killed,
                Outcome::Finished => reason.borrow_mut().take().unwrap_or_else(|| {
                    if control.state() == RUN {
                        ExitReason::Normal
                    } else {
                        ExitReason::Shutdown
                    }
                }),
            };
            reporter.report(exit);
        });
    };
    let launch: Launch = match arbiter {
        // If the arbiter is gone the closure is dropped, and with it the reporter, which
        // then reports the exit.
        Some(arbiter) => Box::new(move || {
            arbiter.spawn_fn(run);
        }),
        None => Box::new(run),
    };
    (addr, launch)
}

/// actix's default mailbox capacity (`actix::mailbox::DEFAULT_CAPACITY` is not exported).
const MAILBOX_CAPACITY: usize = 16;

/// What a supervisor passes to a child's factory.
#[derive(Debug, Clone)]
pub(crate) struct ChildEnv {
    /// The child's own path, e.g. `hub/workers`.
    pub(crate) path: Arc<str>,
    /// The tree's event channel, counters and registry.
    pub(crate) shared: Shared,
}

/// Type-erased way to start one kind of child.
pub(crate) trait Starter: Send {
    fn prepare(
        &mut self,
        env: ChildEnv,
        control: Arc<Control>,
        reporter: ExitReporter,
        arbiter: Option<ArbiterHandle>,
    ) -> (AnyAddr, Launch);
}

/// Builds the actor for every (re)start; an `Err` is why the start failed.
type ReusableFactory<A> = Arc<dyn Fn(&ChildEnv) -> Result<A, String> + Send + Sync>;
/// Builds the actor of a one-shot child.
type OnceFactory<A> = Box<dyn FnOnce(&ChildEnv) -> Result<A, String> + Send>;

/// Builds the actor for one start.
enum Factory<A> {
    /// Called on every (re)start.
    Reusable(ReusableFactory<A>),
    /// Called once; `None` after it ran.
    Once(Option<OnceFactory<A>>),
}

impl<A: Actor<Context = Context<A>>> Starter for Factory<A> {
    fn prepare(
        &mut self,
        env: ChildEnv,
        control: Arc<Control>,
        reporter: ExitReporter,
        arbiter: Option<ArbiterHandle>,
    ) -> (AnyAddr, Launch) {
        let make: OnceFactory<A> = match self {
            Factory::Reusable(factory) => {
                let factory = factory.clone();
                Box::new(move |env| factory(env))
            }
            Factory::Once(slot) => match slot.take() {
                Some(factory) => factory,
                None => Box::new(|_| Err("a one-shot child cannot be started twice".to_owned())),
            },
        };
        let (addr, launch) = prepare_child(move || make(&env), control, reporter, arbiter);
        (Arc::new(addr), launch)
    }
}

/// Default time a worker gets to stop before it is killed (OTP's 5000 ms).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time a nested supervisor gets to stop its own children before it is killed.
pub const DEFAULT_SUPERVISOR_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start (and restart) one child: an id, a factory that builds a fresh actor value
/// for every start, a restart type, a shutdown timeout and optionally another arbiter.
///
/// Children are ordinary actix actors with `Context<Self>`; they implement nothing extra.
pub struct ChildSpec<A: Actor<Context = Context<A>>> {
    pub(crate) id: String,
    pub(crate) restart: Option<Restart>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) arbiter: Option<ArbiterHandle>,
    factory: Factory<A>,
}

impl<A: Actor<Context = Context<A>>> ChildSpec<A> {
    /// A child named `id` (unique among its siblings, no `/`) built by `factory` on every
    /// (re)start. Defaults: restart [`Permanent`](Restart::Permanent) under a static
    /// supervisor and [`Temporary`](Restart::Temporary) under a dynamic one; shutdown
    /// timeout [`DEFAULT_SHUTDOWN_TIMEOUT`]; the supervisor's arbiter.
    pub fn new(id: impl Into<String>, factory: impl Fn() -> A + Send + Sync + 'static) -> Self {
        Self::with_env(id, move |_| Ok(factory()))
    }

    /// Like [`new`](Self::new), but building the actor can fail: an `Err` becomes the
    /// child's exit, [`ExitReason::StartFailed`] with the error's message, which its restart
    /// type, backoff and the supervisor's intensity then handle like any abnormal exit.
    ///
    /// ```
    /// use actix::prelude::*;
    /// use herd_supervision::{ChildSpec, ExitReason, SupervisorSpec};
    ///
    /// struct Tail(std::fs::File);
    /// impl Actor for Tail {
    ///     type Context = Context<Self>;
    /// }
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// System::new().block_on(async {
    ///     let tail = ChildSpec::try_new("tail", || std::fs::File::open("/no/such/file").map(Tail));
    ///     let root = SupervisorSpec::dynamic("files").start()?;
    ///     let child = root.start_child(tail).await?;
    ///     let ExitReason::StartFailed(why) = child.wait().await else { panic!("started") };
    ///     assert!(why.contains("No such file"), "{why}");
    ///     root.shutdown().await;
    ///     Ok(())
    /// })
    /// # }
    /// ```
    pub fn try_new<E: fmt::Display>(
        id: impl Into<String>,
        factory: impl Fn() -> Result<A, E> + Send + Sync + 'static,
    ) -> Self {
        Self::with_env(id, move |_| factory().map_err(|e| e.to_string()))
    }

    /// A child started exactly once from a resource `factory` takes by value (an accepted
    /// socket, a spawned process): it is [`Temporary`](Restart::Temporary), and a spec that
    /// asks to restart it is refused when it is added ([`StartError::OneShotRestart`],
    /// [`ConfigError::OneShotRestart`]).
    ///
    /// [`StartError::OneShotRestart`]: crate::StartError::OneShotRestart
    /// [`ConfigError::OneShotRestart`]: crate::ConfigError::OneShotRestart
    ///
    /// ```
    /// use actix::prelude::*;
    /// use herd_supervision::{ChildSpec, SupervisorSpec};
    ///
    /// struct Conn(std::net::TcpStream);
    /// impl Actor for Conn {
    ///     type Context = Context<Self>;
    /// }
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// System::new().block_on(async {
    ///     let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    ///     let _client = std::net::TcpStream::connect(listener.local_addr()?)?;
    ///     let (socket, _) = listener.accept()?;
    ///     let conns = SupervisorSpec::dynamic("conns").start()?;
    ///     let conn = conns.start_child(ChildSpec::once("conn-1", move || Conn(socket))).await?;
    ///     assert_eq!(conn.path(), "conns/conn-1");
    ///     conns.shutdown().await;
    ///     Ok(())
    /// })
    /// # }
    /// ```
    pub fn once(id: impl Into<String>, factory: impl FnOnce() -> A + Send + 'static) -> Self {
        Self {
            id: id.into(),
            restart: Some(Restart::Temporary),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            arbiter: None,
            factory: Factory::Once(Some(Box::new(move |_| Ok(factory())))),
        }
    }

    pub(crate) fn with_env(
        id: impl Into<String>,
        factory: impl Fn(&ChildEnv) -> Result<A, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            id: id.into(),
            restart: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            arbiter: None,
            factory: Factory::Reusable(Arc::new(factory)),
        }
    }

    /// Sets the restart type.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = Some(restart);
        self
    }

    /// How long the child gets to stop (run `stopping`/`stopped`, flush) when asked, before
    /// it is force-terminated: its task drops the actor at its next poll. (A child stuck in
    /// blocking code never yields to its task and cannot be killed; keep handlers short.)
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Runs the child on another arbiter (thread). The factory runs there too, so the actor
    /// type need not be `Send`.
    pub fn arbiter(mut self, arbiter: ArbiterHandle) -> Self {
        self.arbiter = Some(arbiter);
        self
    }

    /// The child id.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn erase(self) -> ErasedSpec {
        ErasedSpec {
            one_shot: matches!(self.factory, Factory::Once(_)),
            id: self.id,
            restart: self.restart,
            shutdown_timeout: self.shutdown_timeout,
            arbiter: self.arbiter,
            starter: Box::new(self.factory),
        }
    }
}

impl<A: Actor<Context = Context<A>>> fmt::Debug for ChildSpec<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("actor", &std::any::type_name::<A>())
            .field("restart", &self.restart)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("arbiter", &self.arbiter.is_some())
            .finish()
    }
}

/// A child spec with its actor type erased, as a supervisor stores it.
pub(crate) struct ErasedSpec {
    pub(crate) id: String,
    pub(crate) restart: Option<Restart>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) arbiter: Option<ArbiterHandle>,
    /// Built by [`ChildSpec::once`]: it cannot be restarted.
    pub(crate) one_shot: bool,
    pub(crate) starter: Box<dyn Starter>,
}

impl fmt::Debug for ErasedSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErasedSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}
