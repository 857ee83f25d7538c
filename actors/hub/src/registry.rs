//! Which Connection serves which agent id; the connection cap; takeover.

use std::collections::HashMap;

use actix::prelude::*;

use crate::connection::Connection;
use crate::directory::HubDirectory;
use crate::messages::{
    Close, CloseAll, CloseKind, Connected, Lookup, Offline, Online, PresenceEvent, Register,
    RegisterError, Unregister,
};

#[derive(Debug)]
struct Entry {
    conn_id: u64,
    addr: Addr<Connection>,
}

/// Agent id -> Connection. The only place that decides who serves an id.
///
/// A second connection for a connected id (it passed the token check) takes
/// over: the old one gets `Goodbye{SUPERSEDED}` and a `superseded` presence
/// event is published. Beyond `cap` agents new ids are refused.
#[derive(Debug)]
pub struct Registry {
    cap: usize,
    agents: HashMap<String, Entry>,
    directory: HubDirectory,
}

impl Registry {
    /// A registry refusing more than `cap` agents, reporting presence to the
    /// tracker found in `directory`.
    pub fn new(cap: usize, directory: HubDirectory) -> Self {
        Self {
            cap,
            agents: HashMap::new(),
            directory,
        }
    }

    fn tell_tracker<M>(&self, message: M)
    where
        M: Message<Result = ()> + Send + 'static,
        super::tracker::HeartbeatTracker: Handler<M>,
    {
        match self.directory.tracker() {
            Some(tracker) => tracker.do_send(message),
            None => tracing::warn!("heartbeat tracker is down; a presence event is lost"),
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;
}

impl Handler<Register> for Registry {
    type Result = Result<(), RegisterError>;

    fn handle(&mut self, register: Register, _ctx: &mut Context<Self>) -> Self::Result {
        let agent_id = register.info.agent_id.clone();
        let entry = Entry {
            conn_id: register.conn_id,
            addr: register.addr,
        };
        let connected = self.agents.len();
        match self.agents.insert(agent_id.clone(), entry) {
            Some(old) => {
                let reason = format!(
                    "agent {agent_id} connected again from {}",
                    register.info.address
                );
                old.addr.do_send(Close {
                    kind: CloseKind::Superseded,
                    message: reason.clone(),
                });
                self.tell_tracker(Offline {
                    agent_id,
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
        self.tell_tracker(Online(register.info));
        Ok(())
    }
}

impl Handler<Unregister> for Registry {
    type Result = ();

    fn handle(&mut self, gone: Unregister, _ctx: &mut Context<Self>) {
        // After a takeover the old connection's unregister finds the new one.
        if self
            .agents
            .get(&gone.agent_id)
            .is_some_and(|entry| entry.conn_id == gone.conn_id)
        {
            self.agents.remove(&gone.agent_id);
            self.tell_tracker(Offline {
                agent_id: gone.agent_id,
                event: PresenceEvent::Offline,
                reason: gone.reason,
            });
        }
    }
}

impl Handler<Lookup> for Registry {
    type Result = Option<Addr<Connection>>;

    fn handle(&mut self, Lookup(agent_id): Lookup, _ctx: &mut Context<Self>) -> Self::Result {
        self.agents.get(&agent_id).map(|entry| entry.addr.clone())
    }
}

impl Handler<Connected> for Registry {
    type Result = Vec<(String, Addr<Connection>)>;

    fn handle(&mut self, _: Connected, _ctx: &mut Context<Self>) -> Self::Result {
        self.agents
            .iter()
            .map(|(agent_id, entry)| (agent_id.clone(), entry.addr.clone()))
            .collect()
    }
}

impl Handler<CloseAll> for Registry {
    type Result = usize;

    fn handle(&mut self, _: CloseAll, _ctx: &mut Context<Self>) -> usize {
        for entry in self.agents.values() {
            entry.addr.do_send(Close {
                kind: CloseKind::Shutdown,
                message: "hub shutting down".to_owned(),
            });
        }
        self.agents.len()
    }
}
