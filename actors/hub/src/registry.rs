//! Which Connection serves which agent id; the connection cap; takeover.

use std::collections::HashMap;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::directory::{HubDirectory, ids};
use crate::messages::{
    AgentLink, Claim, CloseAll, CloseKind, Connected, Lookup, Offline, Online, PresenceEvent,
    Register, RegisterError, Release, RevokeAgent, Unregister, WhenAllClosed,
};
use crate::tracker::HeartbeatTracker;

/// Agent id -> Connection. The only place that decides who serves an id.
///
/// A second connection for a connected id (it passed the token check) takes
/// over: the old one gets `Goodbye{SUPERSEDED}` and a `superseded` presence
/// event is published. Beyond `cap` agents new ids are refused.
#[derive(Debug)]
pub(crate) struct AgentRegistry {
    cap: usize,
    agents: HashMap<String, AgentLink>,
    directory: HubDirectory,
    /// Waiting for the last agent to go.
    all_closed: Vec<oneshot::Sender<()>>,
}

impl AgentRegistry {
    /// A registry refusing more than `cap` agents, reporting presence to the
    /// tracker found in `directory`.
    pub(crate) fn new(cap: usize, directory: HubDirectory) -> Self {
        Self {
            cap,
            agents: HashMap::new(),
            directory,
            all_closed: Vec::new(),
        }
    }

    fn tell_tracker<M>(&self, message: M)
    where
        M: Message<Result = ()> + Send + 'static,
        HeartbeatTracker: Handler<M>,
    {
        match self.directory.tracker() {
            Some(tracker) => tracker.do_send(message),
            None => tracing::warn!("heartbeat tracker is down; a presence event is lost"),
        }
    }
}

impl Actor for AgentRegistry {
    type Context = Context<Self>;
}

impl Handler<RevokeAgent> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, revoke: RevokeAgent, _ctx: &mut Context<Self>) {
        // The connection knows when its certificate was issued, and closes
        // only when the revocation covers it.
        if let Some(link) = self.agents.get(&revoke.agent_id) {
            let reason = match revoke.reason.as_str() {
                "" => format!("agent {} was revoked", revoke.agent_id),
                reason => format!("agent {} was revoked: {reason}", revoke.agent_id),
            };
            link.close(
                CloseKind::Revoked {
                    revoked_at_ms: revoke.revoked_at_ms,
                },
                reason,
            );
        }
    }
}

impl Handler<Register> for AgentRegistry {
    type Result = Result<(), RegisterError>;

    fn handle(&mut self, register: Register, _ctx: &mut Context<Self>) -> Self::Result {
        let agent_id = register.info.agent_id.clone();
        let connected = self.agents.len();
        match self.agents.insert(agent_id.clone(), register.link.clone()) {
            Some(old) => {
                let reason = format!(
                    "agent {agent_id} connected again from {}",
                    register.info.address
                );
                old.close(CloseKind::Superseded, reason.clone());
                self.tell_tracker(Offline {
                    agent_id: agent_id.clone(),
                    event: PresenceEvent::Superseded,
                    reason,
                });
            }
            None if connected >= self.cap => {
                self.agents.remove(&agent_id);
                return Err(RegisterError::Full {
                    connected,
                    cap: self.cap,
                });
            }
            None => {}
        }
        // The claims actor starts before the registry: when it is down,
        // this registry restarts with it and the claim is made anew.
        if let Some(claims) = self.directory.claims() {
            claims.do_send(Claim {
                agent_id,
                link: register.link,
                address: register.info.address,
            });
        }
        self.tell_tracker(Online(register.info));
        Ok(())
    }
}

impl Handler<Unregister> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, gone: Unregister, _ctx: &mut Context<Self>) {
        // After a takeover the old connection's unregister finds the new one.
        if self
            .agents
            .get(&gone.agent_id)
            .is_some_and(|link| link.conn_id() == gone.conn_id)
        {
            self.agents.remove(&gone.agent_id);
            if let Some(claims) = self.directory.claims() {
                claims.do_send(Release {
                    agent_id: gone.agent_id.clone(),
                    conn_id: gone.conn_id,
                });
            }
            self.tell_tracker(Offline {
                agent_id: gone.agent_id,
                event: PresenceEvent::Offline,
                reason: gone.reason,
            });
            if self.agents.is_empty() {
                for waiter in self.all_closed.drain(..) {
                    // The waiter may have given up.
                    let _ = waiter.send(());
                }
            }
        }
    }
}

impl Handler<Lookup> for AgentRegistry {
    type Result = Option<AgentLink>;

    fn handle(&mut self, Lookup(agent_id): Lookup, _ctx: &mut Context<Self>) -> Self::Result {
        self.agents.get(&agent_id).cloned()
    }
}

impl Handler<Connected> for AgentRegistry {
    type Result = Vec<(String, AgentLink)>;

    fn handle(&mut self, _: Connected, _ctx: &mut Context<Self>) -> Self::Result {
        self.agents
            .iter()
            .map(|(agent_id, link)| (agent_id.clone(), link.clone()))
            .collect()
    }
}

impl Handler<CloseAll> for AgentRegistry {
    type Result = usize;

    fn handle(&mut self, _: CloseAll, _ctx: &mut Context<Self>) -> usize {
        for link in self.agents.values() {
            link.close(CloseKind::Shutdown, "hub shutting down".to_owned());
        }
        self.agents.len()
    }
}

impl Handler<WhenAllClosed> for AgentRegistry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: WhenAllClosed, _ctx: &mut Context<Self>) -> Self::Result {
        let (done, closed) = oneshot::channel();
        if self.agents.is_empty() {
            let _ = done.send(());
        } else {
            self.all_closed.push(done);
        }
        Box::pin(async move {
            // A registry that stops has no agents left to wait for.
            let _ = closed.await;
        })
    }
}

impl HubDirectory {
    /// The AgentRegistry (agent id -> Connection).
    pub(crate) fn registry(&self) -> Option<Addr<AgentRegistry>> {
        self.get(ids::REGISTRY)
    }
}
