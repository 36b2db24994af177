//! Registrations and connections that another node of a cluster holds.
//!
//! Each node keeps its own connections; what the others hold reaches the
//! router as inputs like any other: [`Router::handle_remote_bound`] when a
//! number rings at another node's endpoint, [`Router::handle_remote_unbound`]
//! when it no longer does, and [`Router::handle_session_down`] when that
//! endpoint is gone. Such an endpoint is a session here whose `remote` names
//! its node (the shell numbers it, as it numbers its own); what the router
//! sends it, the shell passes to that node, and what it asks about a call
//! this node routes comes back through [`Router::handle_request`].
//!
//! A remote session lives as long as it has a binding or a call here, and
//! no longer. Its bindings are never announced as [`super::Notice`]s (the
//! node that holds them announces them), and messages about registration
//! (unbound, registered) are the holding node's to send.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyline_proto::dir::DirMsg;
use keyline_proto::number::Number;
use serde::{Deserialize, Serialize};

use super::{AccountNumbers, Binding, Router, Session, SessionId};

/// A registration another node holds, as that node tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteBinding {
    pub number: Number,
    pub account: String,
    /// The endpoint's certificate fingerprint.
    pub fp: String,
    /// Where that node sees the endpoint's connection come from.
    pub observed: SocketAddr,
    /// The endpoint's own addresses.
    pub own: Vec<SocketAddr>,
    /// Whether the endpoint runs connectivity checks (a terminal).
    pub checks: bool,
    /// How long the registration lasts from when this entry was written,
    /// unless written again.
    pub ttl: Duration,
}

impl Router {
    /// `b.number` rings at session `sid`, which node `node` holds. A later
    /// registration wins, as on one node: a binding here of the same
    /// number (this node's own or another's) gives way, and its endpoint is
    /// told as if another endpoint had registered the number here. Which
    /// registration is later is the shell's to decide (the cluster orders
    /// them); a refresh of the same session's binding just extends it.
    pub fn handle_remote_bound(
        &mut self,
        now: Instant,
        sid: SessionId,
        node: &str,
        b: RemoteBinding,
    ) {
        let s = self.sessions.entry(sid).or_insert_with(|| Session {
            fp: b.fp.clone(),
            observed: b.observed,
            account: Some(b.account.clone()),
            // For a remote session: the numbers bound to it here.
            numbers: AccountNumbers::default(),
            checks: b.checks,
            remote: Some(node.to_string()),
        });
        if s.remote.as_deref() != Some(node) || s.account.as_deref() != Some(&b.account) {
            // The shell numbers remote sessions apart from its own, one
            // per endpoint of one node: this is a bug there, not input to
            // act on.
            tracing::warn!("remote binding of {} for session {sid} ignored", b.number);
            return;
        }
        s.fp = b.fp.clone();
        s.observed = b.observed;
        s.checks = b.checks;
        let number = String::from(b.number);
        let expires = now + b.ttl;
        let since = match self.bindings.get(&number) {
            Some(old) if old.session == sid => {
                let since = old.since;
                self.remove_binding(&number);
                since
            }
            Some(_) => {
                self.unbind(now, std::slice::from_ref(&number), DISPLACED, false);
                now
            }
            None => now,
        };
        if let Some(s) = self.sessions.get_mut(&sid) {
            if !s.numbers.contains(&number) {
                Arc::make_mut(&mut s.numbers).push(number.clone());
            }
        }
        self.expiry.insert((expires, number.clone()));
        self.bindings.insert(
            number.clone(),
            Binding {
                number,
                account: b.account,
                session: sid,
                own: b.own,
                observed: b.observed,
                fp: b.fp,
                expires,
                since,
                remote: true,
            },
        );
    }

    /// `number` no longer rings at remote session `sid` (unregistered,
    /// expired or displaced there). A binding of the number to another
    /// session stays.
    pub fn handle_remote_unbound(&mut self, _now: Instant, sid: SessionId, number: &str) {
        if self
            .bindings
            .get(number)
            .is_some_and(|b| b.session == sid && b.remote)
        {
            self.remove_binding(number);
            self.gc_remote(sid);
        }
    }

    /// Whether `sid` is another node's endpoint.
    pub fn is_remote(&self, sid: SessionId) -> bool {
        self.sessions.get(&sid).is_some_and(|s| s.remote.is_some())
    }

    /// The remote sessions known here (for the shell's bookkeeping).
    pub fn remote_sessions(&self) -> impl Iterator<Item = (SessionId, &str)> {
        self.sessions
            .iter()
            .filter_map(|(sid, s)| Some((*sid, s.remote.as_deref()?)))
    }

    /// Whether `sid` is remote; if so, and it has neither a binding nor a
    /// call here any more, it is forgotten.
    pub(super) fn gc_remote(&mut self, sid: SessionId) -> bool {
        if !self.is_remote(sid) {
            return false;
        }
        // A remote session's `numbers` are its bindings here.
        let bound = self
            .sessions
            .get(&sid)
            .is_some_and(|s| !s.numbers.is_empty());
        let calling = self
            .calls
            .values()
            .any(|c| c.caller == sid || c.callee == sid);
        if !bound && !calling {
            self.sessions.remove(&sid);
        }
        true
    }
}

const DISPLACED: &str = "another endpoint registered the number";

/// Whether a message to another node's endpoint is that node's to send:
/// what concerns a registration is, what concerns a call or a look-up is
/// passed on.
pub fn is_registration_message(msg: &DirMsg) -> bool {
    matches!(
        msg,
        DirMsg::Unbound { .. } | DirMsg::Registered { .. } | DirMsg::Observed { .. }
    )
}
