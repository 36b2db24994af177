//! Sessions and registrations: who is logged in, and where each
//! registered number rings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use keyline_proto::dir::{CallId, DirMsg, EndReason, ErrorCode, ReqId, MAX_CANDIDATES};
use keyline_proto::number::Number;

use super::{
    addr_string, err, strings, with_observed, AccountNumbers, Binding, Notice, Router, Session,
    SessionId,
};

impl Router {
    // ------------------------------------------------------------------
    // Sessions

    pub fn handle_session_up(&mut self, sid: SessionId, fp: String, observed: SocketAddr) {
        self.sessions.insert(
            sid,
            Session {
                fp,
                observed,
                account: None,
                numbers: AccountNumbers::default(),
                checks: false,
                remote: None,
            },
        );
    }

    /// Session `sid` runs connectivity checks while its calls ring (it is
    /// a terminal, which is its own media end).
    pub fn allow_checks(&mut self, sid: SessionId) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.checks = true;
        }
    }

    /// The session logged in as `account`, which owns `numbers`.
    pub fn handle_login(
        &mut self,
        now: Instant,
        sid: SessionId,
        account: &str,
        numbers: impl Into<AccountNumbers>,
    ) {
        let previous = match self.sessions.get_mut(&sid) {
            Some(s) => {
                let prev = s.account.replace(account.to_string());
                s.numbers = numbers.into();
                prev
            }
            None => return,
        };
        if previous.is_some_and(|p| p != account) {
            // Logging in as someone else drops the old account's bindings.
            let mine: Vec<String> = self.bindings_of(sid).map(|b| b.number.clone()).collect();
            self.unbind(now, &mine, "logged in as another account", false);
        }
    }

    /// The session's connection now comes from `observed` (it migrated).
    pub fn handle_session_moved(&mut self, _now: Instant, sid: SessionId, observed: SocketAddr) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.observed == observed {
            return;
        }
        s.observed = observed;
        let mut numbers = Vec::new();
        let mut own = Vec::new();
        let mut moved = Vec::new();
        for b in self.bindings.values_mut().filter(|b| b.session == sid) {
            b.observed = observed;
            numbers.push(b.number.clone());
            own = b.own.clone();
            moved.push(Notice::Bound {
                number: b.number.clone(),
                account: b.account.clone(),
                session: sid,
                observed,
            });
        }
        for n in moved {
            self.notice(n);
        }
        self.send(
            sid,
            DirMsg::Observed {
                addr: observed.to_string(),
            },
        );
        if !numbers.is_empty() {
            numbers.sort();
            self.send(
                sid,
                DirMsg::Registered {
                    req: None,
                    numbers,
                    observed: observed.to_string(),
                    candidates: strings(&with_observed(&own, observed)),
                    ttl_secs: self.cfg.binding_ttl.as_secs() as u32,
                },
            );
        }
    }

    /// The session's connection is gone: its bindings vanish, its calls end.
    pub fn handle_session_down(&mut self, now: Instant, sid: SessionId) {
        if self.sessions.remove(&sid).is_none() {
            return;
        }
        let mine: Vec<String> = self
            .bindings
            .values()
            .filter(|b| b.session == sid)
            .map(|b| b.number.clone())
            .collect();
        for n in mine {
            self.drop_binding(&n, "the endpoint disconnected");
        }
        let calls: Vec<CallId> = self
            .calls
            .values()
            .filter(|c| c.caller == sid || c.callee == sid)
            .map(|c| c.id)
            .collect();
        for id in calls {
            self.end_call(now, id, Some(sid), EndReason::PeerLost);
        }
    }

    /// Log out every session of `account` (removed, or its password changed
    /// elsewhere): the shell closes them; here their bindings and calls end.
    pub fn sessions_of(&self, account: &str) -> Vec<SessionId> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.account.as_deref() == Some(account))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Sessions of `account` that hold at least one binding (where mail is
    /// delivered).
    pub fn registered_sessions_of(&self, account: &str) -> Vec<SessionId> {
        let mut v: Vec<SessionId> = self
            .bindings
            .values()
            .filter(|b| b.account == account)
            .map(|b| b.session)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    pub fn session(&self, sid: SessionId) -> Option<&Session> {
        self.sessions.get(&sid)
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    // ------------------------------------------------------------------
    // Registration

    /// Bind `numbers` (all of the account's when empty) to the session, or
    /// refresh them.
    pub fn handle_register(
        &mut self,
        now: Instant,
        sid: SessionId,
        req: ReqId,
        numbers: Vec<Number>,
        own: Vec<SocketAddr>,
    ) {
        let numbers: Vec<String> = numbers.into_iter().map(String::from).collect();
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let Some(account) = s.account.clone() else {
            return self.send(sid, err(Some(req), ErrorCode::NotLoggedIn, "log in first"));
        };
        if own.len() > MAX_CANDIDATES {
            return self.send(
                sid,
                err(
                    Some(req),
                    ErrorCode::BadAddress,
                    format!("too many candidate addresses (at most {MAX_CANDIDATES})"),
                ),
            );
        }
        let wanted = if numbers.is_empty() {
            s.numbers.to_vec()
        } else {
            numbers
        };
        for n in &wanted {
            let owned = self.numbers.get(n).is_some_and(|ni| ni.account == account);
            if !owned {
                return self.send(
                    sid,
                    err(
                        Some(req),
                        ErrorCode::NotYourNumber,
                        format!("{n} is not a number of account {account}"),
                    ),
                );
            }
        }
        let (fp, observed) = (s.fp.clone(), s.observed);
        let expires = now + self.cfg.binding_ttl;
        let mut displaced: BTreeMap<SessionId, Vec<String>> = BTreeMap::new();
        for n in &wanted {
            let (since, fresh) = match self.bindings.get(n) {
                Some(old) if old.session == sid => {
                    let since = old.since;
                    self.remove_binding(n);
                    (since, false)
                }
                Some(old) => {
                    displaced.entry(old.session).or_default().push(n.clone());
                    self.drop_binding(n, "another endpoint registered the number");
                    (now, true)
                }
                None => (now, true),
            };
            if fresh {
                self.notice(Notice::Bound {
                    number: n.clone(),
                    account: account.clone(),
                    session: sid,
                    observed,
                });
            }
            self.expiry.insert((expires, n.clone()));
            self.bindings.insert(
                n.clone(),
                Binding {
                    number: n.clone(),
                    account: account.clone(),
                    session: sid,
                    own: own.clone(),
                    observed,
                    fp: fp.clone(),
                    expires,
                    since,
                    remote: false,
                },
            );
        }
        for (old, numbers) in displaced {
            if self.gc_remote(old) {
                continue;
            }
            self.send(
                old,
                DirMsg::Unbound {
                    numbers,
                    reason: "another endpoint registered the number".into(),
                    expired: false,
                },
            );
        }
        self.send(
            sid,
            DirMsg::Registered {
                req: Some(req),
                numbers: wanted,
                observed: addr_string(&observed),
                candidates: strings(&with_observed(&own, observed)),
                ttl_secs: self.cfg.binding_ttl.as_secs() as u32,
            },
        );
    }

    /// Remove the session's bindings of `numbers` (all of them when empty).
    /// Unregister `numbers` (all of the session's when empty) of this
    /// session. A number of another account (or of none) is refused with
    /// `NotYourNumber` and nothing changes.
    pub fn handle_unregister(
        &mut self,
        _now: Instant,
        sid: SessionId,
        req: ReqId,
        numbers: Vec<Number>,
    ) {
        let numbers: Vec<String> = numbers.into_iter().map(String::from).collect();
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let Some(account) = s.account.clone() else {
            return self.send(sid, err(Some(req), ErrorCode::NotLoggedIn, "log in first"));
        };
        for n in &numbers {
            let owned = self.numbers.get(n).is_some_and(|ni| ni.account == account)
                || self.bindings.get(n).is_some_and(|b| b.session == sid);
            if !owned {
                return self.send(
                    sid,
                    err(
                        Some(req),
                        ErrorCode::NotYourNumber,
                        format!("{n} is not a number of account {account}"),
                    ),
                );
            }
        }
        let mine: Vec<String> = self
            .bindings
            .values()
            .filter(|b| b.session == sid && (numbers.is_empty() || numbers.contains(&b.number)))
            .map(|b| b.number.clone())
            .collect();
        for n in &mine {
            self.drop_binding(n, "unregistered");
        }
        self.send(sid, DirMsg::Ok { req });
    }

    pub fn binding(&self, number: &str) -> Option<&Binding> {
        self.bindings.get(number)
    }

    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values()
    }

    pub fn bindings_of(&self, sid: SessionId) -> impl Iterator<Item = &Binding> {
        self.bindings.values().filter(move |b| b.session == sid)
    }

    pub(super) fn remove_binding(&mut self, number: &str) -> Option<Binding> {
        let b = self.bindings.remove(number)?;
        self.expiry.remove(&(b.expires, b.number.clone()));
        if b.remote {
            if let Some(s) = self.sessions.get_mut(&b.session) {
                Arc::make_mut(&mut s.numbers).retain(|n| n != number);
            }
        }
        Some(b)
    }

    /// [`Self::remove_binding`], told as a [`Notice::Unbound`].
    fn drop_binding(&mut self, number: &str, reason: &'static str) -> Option<Binding> {
        let b = self.remove_binding(number)?;
        if b.remote {
            return Some(b);
        }
        self.notice(Notice::Unbound {
            number: b.number.clone(),
            account: b.account.clone(),
            session: b.session,
            reason,
        });
        Some(b)
    }

    pub(super) fn unbind(
        &mut self,
        _now: Instant,
        numbers: &[String],
        reason: &'static str,
        expired: bool,
    ) {
        let mut by_session: BTreeMap<SessionId, Vec<String>> = BTreeMap::new();
        for n in numbers {
            if let Some(b) = self.drop_binding(n, reason) {
                by_session.entry(b.session).or_default().push(b.number);
            }
        }
        for (sid, numbers) in by_session {
            if self.gc_remote(sid) {
                continue;
            }
            self.send(
                sid,
                DirMsg::Unbound {
                    numbers,
                    reason: reason.to_string(),
                    expired,
                },
            );
        }
    }
}
