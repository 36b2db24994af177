//! Look-ups and calls, from CALL to the end.

use std::net::SocketAddr;
use std::time::Instant;

use keyline_proto::dir::{
    CallId, CallPlan, CheckPlan, DirMsg, DirectPolicy, EndReason, ErrorCode, ForwardWhen, ReqId,
    MAX_CANDIDATES, MAX_HOPS,
};

use keyline_proto::number::Number;

use super::{
    addr_string, err, resolve, strings, with_observed, Action, Call, CallOutcome, CallRecord,
    CallState, MediaEnd, Notice, Placing, RelayState, Request, Resolved, RouteError, Router,
    SessionId,
};

impl Router {
    /// What session `sid` asks, parsed at the edge.
    pub fn handle_request(&mut self, now: Instant, sid: SessionId, request: Request) {
        match request {
            Request::Register { req, numbers, own } => {
                self.handle_register(now, sid, req, numbers, own)
            }
            Request::Unregister { req, numbers } => self.handle_unregister(now, sid, req, numbers),
            Request::Lookup { req, number, token } => {
                self.handle_lookup(now, sid, req, &number, token)
            }
            Request::Call {
                req,
                number,
                from,
                own,
                hops,
                placing,
            } => self.handle_call_for(now, sid, req, &number, from, own, hops, placing),
            Request::Answer {
                req,
                call,
                token,
                media,
            } => self.handle_answer_for(now, sid, req, call, token, media),
            Request::Decline { req, call, busy } => self.handle_decline(now, sid, req, call, busy),
            Request::Redirect { req, call, number } => {
                self.handle_redirect(now, sid, req, call, &number)
            }
            Request::Transfer {
                req,
                call,
                number,
                handoff,
            } => self.handle_transfer(now, sid, req, call, &number, handoff),
            Request::Hangup { call } => self.handle_hangup(now, sid, call),
            Request::Fallback { req, call } => self.handle_fallback(now, sid, req, call),
        }
    }

    // ------------------------------------------------------------------
    // Look-up and calls

    /// Resolve `number` with forwarding as it stands now.
    pub fn resolve(&self, number: &str, max_hops: usize) -> Result<Resolved, RouteError> {
        resolve(
            number,
            max_hops,
            |n| self.numbers.get(n),
            |n| self.bindings.contains_key(n),
        )
    }

    /// What to resolve for a dialled number: the number itself when it
    /// exists, else, for `OFFICE/EXT`, the office number and the extension
    /// (the office's endpoint routes the extension itself).
    pub fn split_dialled(&self, number: &str) -> (String, Option<String>) {
        if self.numbers.contains_key(number) {
            return (number.to_string(), None);
        }
        match keyline_proto::number::split_extension(number) {
            (office, Some(ext)) if self.numbers.contains_key(office) => {
                (office.to_string(), Some(ext.to_string()))
            }
            _ => (number.to_string(), None),
        }
    }

    fn caller_number(
        &self,
        sid: SessionId,
        from: Option<String>,
    ) -> Result<String, (ErrorCode, String)> {
        let Some(s) = self.sessions.get(&sid) else {
            return Err((ErrorCode::NotLoggedIn, "log in first".into()));
        };
        let Some(account) = &s.account else {
            return Err((ErrorCode::NotLoggedIn, "log in first".into()));
        };
        match from {
            Some(f) if s.numbers.contains(&f) => Ok(f),
            Some(f) => Err((
                ErrorCode::NotYourNumber,
                format!("{f} is not a number of account {account}; a caller can only show its own"),
            )),
            None => {
                // The account's first number bound to this session (looked
                // up per number: the session's own few, not every binding).
                s.numbers
                    .iter()
                    .find(|n| {
                        self.bindings
                            .get(n.as_str())
                            .is_some_and(|b| b.session == sid)
                    })
                    .or_else(|| s.numbers.first())
                    .cloned()
                    .ok_or((
                        ErrorCode::NotYourNumber,
                        format!("account {account} has no number to call from"),
                    ))
            }
        }
    }

    /// Look-up only (claim 3): answer with the bound endpoint's addresses
    /// and tell that endpoint who is coming.
    pub fn handle_lookup(
        &mut self,
        _now: Instant,
        sid: SessionId,
        req: ReqId,
        number: &Number,
        token: String,
    ) {
        let from = match self.caller_number(sid, None) {
            Ok(f) => f,
            Err((code, m)) => return self.send(sid, err(Some(req), code, m)),
        };
        let (target, ext) = self.split_dialled(number);
        let r = match self.resolve(&target, MAX_HOPS) {
            Ok(r) => r,
            Err(e) => return self.send(sid, err(Some(req), e.code(), e.to_string())),
        };
        let Some(b) = self.bindings.get(&r.number) else {
            return self.send(
                sid,
                err(
                    Some(req),
                    ErrorCode::Unreachable,
                    format!("{} is not registered (its endpoint is offline)", r.number),
                ),
            );
        };
        let (callee, fp, cands) = (b.session, b.fp.clone(), b.candidates());
        let (caller_fp, caller_candidates) = match self.sessions.get(&sid) {
            // Where the caller's connection will come from: its registered
            // addresses, if it registered the number it calls from, and
            // where we see it.
            Some(s) => (
                s.fp.clone(),
                match self.bindings.get(&from).filter(|b| b.session == sid) {
                    Some(b) => strings(&b.candidates()),
                    None => vec![addr_string(&s.observed)],
                },
            ),
            None => (String::new(), Vec::new()),
        };
        self.send(
            callee,
            DirMsg::Expect {
                number: r.number.clone(),
                ext,
                from,
                caller_fp,
                token: token.clone(),
                caller_candidates,
            },
        );
        self.send(
            sid,
            DirMsg::Found {
                req,
                number: r.number,
                via: r.via,
                candidates: strings(&cands),
                fingerprint: fp,
                token,
            },
        );
    }

    /// `sid` calls `number` (canonical).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_call(
        &mut self,
        now: Instant,
        sid: SessionId,
        req: ReqId,
        number: &Number,
        from: Option<Number>,
        own: Vec<SocketAddr>,
        hops: u8,
    ) {
        self.handle_call_for(now, sid, req, number, from, own, hops, Placing::default())
    }

    /// `sid` calls `number` with `media` as the media end it vouches for
    /// (a gateway placing a call for one of its stations).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_call_for(
        &mut self,
        now: Instant,
        sid: SessionId,
        req: ReqId,
        number: &Number,
        from: Option<Number>,
        own: Vec<SocketAddr>,
        hops: u8,
        placing: Placing,
    ) {
        let from = from.map(String::from);
        let Placing {
            media,
            handoff,
            check_key,
        } = placing;
        let fail = |s: &mut Self, code: ErrorCode, n: &str, message: String, mail: bool| {
            s.send(
                sid,
                DirMsg::CallFailed {
                    req,
                    code,
                    number: n.to_string(),
                    message,
                    mail,
                },
            );
        };
        let from = match self.caller_number(sid, from) {
            Ok(f) => f,
            Err((code, m)) => return fail(self, code, number, m, false),
        };
        let caller_account = self
            .sessions
            .get(&sid)
            .and_then(|s| s.account.clone())
            .unwrap_or_default();
        // A call that fails before anything rings is kept too.
        let record = |s: &mut Self, outcome: CallOutcome, reached: Option<&str>| {
            let (dialled, _) = s.split_dialled(number);
            let owner = |n: &str| s.numbers.get(n).map(|ni| ni.account.clone());
            let rec = CallRecord {
                from: from.clone(),
                from_account: caller_account.clone(),
                dialled_account: owner(&dialled),
                reached: reached.and_then(|n| Some((n.to_string(), owner(n)?))),
                dialled,
                started: now,
                answered: None,
                ended: now,
                outcome,
                forwarded_to: None,
                relayed: None,
            };
            s.actions.push_back(Action::Record(Box::new(rec)));
        };
        if own.len() > MAX_CANDIDATES {
            return fail(
                self,
                ErrorCode::BadAddress,
                number,
                format!("too many candidate addresses (at most {MAX_CANDIDATES})"),
                false,
            );
        }
        let hops = hops as usize;
        if hops >= MAX_HOPS {
            record(self, CallOutcome::Failed, None);
            return fail(
                self,
                ErrorCode::TooManyHops,
                number,
                format!("too many redirects (more than {MAX_HOPS})"),
                false,
            );
        }
        let (target, ext) = self.split_dialled(number);
        let r = match self.resolve(&target, MAX_HOPS - hops) {
            Ok(r) => r,
            Err(e) => {
                let (n, outcome) = match &e {
                    RouteError::Unknown { number, .. } => {
                        (number.clone(), CallOutcome::UnknownNumber)
                    }
                    _ => (number.to_string(), CallOutcome::Failed),
                };
                record(self, outcome, None);
                return fail(self, e.code(), &n, e.to_string(), false);
            }
        };
        if self.numbers.get(&r.number).is_some_and(|ni| ni.dnd) {
            let m = format!(
                "{} does not want to be disturbed now; you may leave a voice mail or text",
                r.number
            );
            record(self, CallOutcome::Busy, Some(&r.number));
            return fail(self, ErrorCode::Unreachable, &r.number.clone(), m, true);
        }
        let Some(b) = self.bindings.get(&r.number) else {
            let m = if r.via.is_empty() {
                format!("{} is not registered (its endpoint is offline); you may leave a voice mail or text", r.number)
            } else {
                format!(
                    "{} (forwarded from {}) is not registered; you may leave a voice mail or text",
                    r.number,
                    r.via.join(", ")
                )
            };
            record(self, CallOutcome::Offline, Some(&r.number));
            return fail(self, ErrorCode::Unreachable, &r.number.clone(), m, true);
        };
        if b.session == sid {
            return fail(
                self,
                ErrorCode::SelfCall,
                &r.number.clone(),
                format!("{} is registered by this same endpoint", r.number),
                false,
            );
        }
        let (callee, callee_fp, callee_cands, callee_account) =
            (b.session, b.fp.clone(), b.candidates(), b.account.clone());
        let dialled_account = self.numbers.get(&target).map(|ni| ni.account.clone());
        let Some((callee_media, callee_checks)) =
            self.sessions.get(&callee).map(|s| (s.observed, s.checks))
        else {
            return;
        };
        let Some(caller) = self.sessions.get(&sid) else {
            return;
        };
        let (caller_candidates, caller_media, caller_fp) = match &media {
            Some(m) => {
                let (cands, seen) = m.resolve(caller.observed);
                (cands, seen, m.fp.clone())
            }
            None => (
                with_observed(&own, caller.observed),
                caller.observed,
                caller.fp.clone(),
            ),
        };
        // Checks only where both ends are their own media ends and the
        // rule allows a direct path at all.
        let check_key = check_key.filter(|_| {
            callee_checks
                && caller.checks
                && media.is_none()
                && self.cfg.policy != DirectPolicy::Relay
        });
        let id = self.next_call;
        self.next_call += 1;
        let call = Call {
            id,
            caller: sid,
            callee,
            from: from.clone(),
            caller_account,
            dialled_account,
            callee_account,
            number: r.number.clone(),
            dialled: number.to_string(),
            ext: ext.clone(),
            via: r.via.clone(),
            caller_candidates: caller_candidates.clone(),
            caller_fp,
            callee_fp,
            callee_candidates: callee_cands,
            caller_media,
            callee_media,
            started: now,
            state: CallState::Ringing {
                deadline: now + self.cfg.ring_timeout,
            },
            policy: self.cfg.policy,
            token: None,
            relay: RelayState::None,
            answer_req: None,
        };
        self.send(
            callee,
            DirMsg::Ring {
                call: id,
                from,
                number: r.number.clone(),
                ext: ext.clone(),
                dialled: number.to_string(),
                via: r.via.clone(),
                caller_fp: call.caller_fp.clone(),
                caller_candidates: strings(&caller_candidates),
                handoff,
                checks: check_key.as_ref().map(|key| {
                    Box::new(CheckPlan {
                        key: key.clone(),
                        candidates: strings(&caller_candidates),
                    })
                }),
            },
        );
        self.send(
            sid,
            DirMsg::Ringing {
                req,
                call: id,
                number: r.number,
                via: r.via,
                checks: check_key.map(|key| {
                    Box::new(CheckPlan {
                        key,
                        candidates: strings(&call.callee_candidates),
                    })
                }),
            },
        );
        self.notice(Notice::Ringing {
            call: id,
            from: call.from.clone(),
            number: call.number.clone(),
            dialled: call.dialled.clone(),
        });
        self.calls.insert(id, call);
    }

    fn ringing_call_of_callee(
        &self,
        sid: SessionId,
        id: CallId,
    ) -> Result<&Call, (ErrorCode, String)> {
        let c = self
            .calls
            .get(&id)
            .ok_or((ErrorCode::NoSuchCall, format!("no call {id}")))?;
        if c.callee != sid {
            return Err((
                ErrorCode::NotYourCall,
                format!("call {id} does not ring here"),
            ));
        }
        if !matches!(c.state, CallState::Ringing { .. }) {
            return Err((
                ErrorCode::BadCallState,
                format!("call {id} is no longer ringing"),
            ));
        }
        Ok(c)
    }

    /// The callee takes the call; `token` is a fresh secret for its media.
    pub fn handle_answer(
        &mut self,
        now: Instant,
        sid: SessionId,
        req: ReqId,
        id: CallId,
        token: String,
    ) {
        self.handle_answer_for(now, sid, req, id, token, None)
    }

    /// The callee takes the call with `media` as the media end it vouches
    /// for (a gateway's station answering through its forwarder).
    pub fn handle_answer_for(
        &mut self,
        now: Instant,
        sid: SessionId,
        req: ReqId,
        id: CallId,
        token: String,
        media: Option<MediaEnd>,
    ) {
        if let Err((code, m)) = self.ringing_call_of_callee(sid, id) {
            return self.send(sid, err(Some(req), code, m));
        }
        let observed = self.sessions.get(&sid).map(|s| s.observed);
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if let (Some(m), Some(observed)) = (media, observed) {
            let (cands, seen) = m.resolve(observed);
            c.callee_fp = m.fp;
            c.callee_candidates = cands;
            c.callee_media = seen;
        }
        c.state = CallState::Answered { at: now };
        c.token = Some(token);
        c.answer_req = Some(req);
        if c.policy == DirectPolicy::Relay {
            c.relay = RelayState::Pending { fallback: None };
            self.actions.push_back(Action::AllocateRelay {
                call: id,
                caller: c.caller_media,
                callee: c.callee_media,
            });
            return;
        }
        self.send_connects(id);
    }

    fn send_connects(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        let token = c.token.clone().unwrap_or_default();
        let (to_caller, to_callee) = match &c.relay {
            RelayState::Ready {
                caller_facing,
                callee_facing,
            } => (
                Some(caller_facing.to_string()),
                Some(callee_facing.to_string()),
            ),
            _ => (None, None),
        };
        let fallback_after_ms = self.cfg.fallback_after.as_millis().min(u32::MAX as u128) as u32;
        let caller_plan = CallPlan {
            dial: true,
            peer_fp: c.callee_fp.clone(),
            peer_candidates: strings(&c.callee_candidates),
            token: token.clone(),
            policy: c.policy,
            relay: to_caller,
            fallback_after_ms,
        };
        let callee_plan = CallPlan {
            dial: false,
            peer_fp: c.caller_fp.clone(),
            peer_candidates: strings(&c.caller_candidates),
            token,
            policy: c.policy,
            relay: to_callee,
            fallback_after_ms,
        };
        let (caller, callee, req) = (c.caller, c.callee, c.answer_req);
        let answered = Notice::Answered {
            call: id,
            from: c.from.clone(),
            number: c.number.clone(),
            relayed: matches!(c.relay, RelayState::Ready { .. }),
        };
        self.notice(answered);
        self.send(
            callee,
            DirMsg::Connect {
                req,
                call: id,
                plan: callee_plan,
            },
        );
        self.send(
            caller,
            DirMsg::Connect {
                req: None,
                call: id,
                plan: caller_plan,
            },
        );
    }

    /// The callee declines (`busy`: because it is busy).
    pub fn handle_decline(
        &mut self,
        now: Instant,
        sid: SessionId,
        req: ReqId,
        id: CallId,
        busy: bool,
    ) {
        if let Err((code, m)) = self.ringing_call_of_callee(sid, id) {
            return self.send(sid, err(Some(req), code, m));
        }
        self.send(sid, DirMsg::Ok { req });
        if busy && self.forward_unanswered(now, id, ForwardWhen::Busy, false) {
            return;
        }
        let reason = if busy {
            EndReason::Busy
        } else {
            EndReason::Rejected
        };
        self.end_call(now, id, Some(sid), reason);
    }

    /// If the number ringing in call `id` has a `when` rule (`busy` or
    /// `no-answer`), send the caller on to its target as a redirect does
    /// and end the call (telling the callee when `tell_callee`).
    pub(super) fn forward_unanswered(
        &mut self,
        now: Instant,
        id: CallId,
        when: ForwardWhen,
        tell_callee: bool,
    ) -> bool {
        let Some(c) = self.calls.get(&id) else {
            return false;
        };
        let to = match self.numbers.get(&c.number).and_then(|ni| ni.forward(when)) {
            Some(to) if to != c.number => to.to_string(),
            _ => return false,
        };
        let Some(c) = self.calls.remove(&id) else {
            return false;
        };
        if tell_callee {
            self.send(
                c.callee,
                DirMsg::Ended {
                    call: id,
                    reason: EndReason::NoAnswer,
                },
            );
        }
        self.send(
            c.caller,
            DirMsg::Redirected {
                call: id,
                number: to.clone(),
                by: c.number.clone(),
                handoff: None,
            },
        );
        self.finished(now, c, EndReason::Redirected, Some(to));
        true
    }

    /// The callee sends the caller to `number` (claim 7).
    pub fn handle_redirect(
        &mut self,
        now: Instant,
        sid: SessionId,
        req: ReqId,
        id: CallId,
        number: &Number,
    ) {
        let c = match self.ringing_call_of_callee(sid, id) {
            Ok(c) => c,
            Err((code, m)) => return self.send(sid, err(Some(req), code, m)),
        };
        let (caller, by) = (c.caller, c.number.clone());
        self.send(sid, DirMsg::Ok { req });
        self.send(
            caller,
            DirMsg::Redirected {
                call: id,
                number: number.to_string(),
                by,
                handoff: None,
            },
        );
        // The caller learnt why from `Redirected`; end it quietly for both.
        if let Some(c) = self.calls.remove(&id) {
            self.finished(now, c, EndReason::Redirected, Some(number.to_string()));
        }
    }

    /// An end of an answered call hands the other end on to `number`
    /// (claim 5): the other end is told `Redirected` and calls it directly;
    /// the call ends for both.
    pub fn handle_transfer(
        &mut self,
        now: Instant,
        sid: SessionId,
        req: ReqId,
        id: CallId,
        number: &Number,
        handoff: Option<u64>,
    ) {
        let Some(c) = self.calls.get(&id) else {
            return self.send(
                sid,
                err(Some(req), ErrorCode::NoSuchCall, format!("no call {id}")),
            );
        };
        let (other, by) = if c.callee == sid {
            (c.caller, c.number.clone())
        } else if c.caller == sid {
            (c.callee, c.from.clone())
        } else {
            return self.send(
                sid,
                err(
                    Some(req),
                    ErrorCode::NotYourCall,
                    format!("call {id} is not yours"),
                ),
            );
        };
        if !matches!(c.state, CallState::Answered { .. }) {
            return self.send(
                sid,
                err(
                    Some(req),
                    ErrorCode::BadCallState,
                    format!("call {id} is not answered; redirect a ringing call instead"),
                ),
            );
        }
        self.send(sid, DirMsg::Ok { req });
        self.send(
            other,
            DirMsg::Redirected {
                call: id,
                number: number.to_string(),
                by,
                handoff,
            },
        );
        if let Some(c) = self.calls.remove(&id) {
            self.finished(now, c, EndReason::Redirected, Some(number.to_string()));
        }
    }

    /// Either end hangs up (the caller cancels while it rings).
    pub fn handle_hangup(&mut self, now: Instant, sid: SessionId, id: CallId) {
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        if c.caller != sid && c.callee != sid {
            return self.send(
                sid,
                err(
                    None,
                    ErrorCode::NotYourCall,
                    format!("call {id} is not yours"),
                ),
            );
        }
        let reason = match c.state {
            CallState::Ringing { .. } if c.caller == sid => EndReason::Cancelled,
            CallState::Ringing { .. } => EndReason::Rejected,
            CallState::Answered { .. } => EndReason::Hangup,
        };
        self.end_call(now, id, Some(sid), reason);
    }

    /// The caller's direct attempt failed: relay the call if the rule allows.
    pub fn handle_fallback(&mut self, _now: Instant, sid: SessionId, req: ReqId, id: CallId) {
        let Some(c) = self.calls.get_mut(&id) else {
            return self.send(
                sid,
                err(Some(req), ErrorCode::NoSuchCall, format!("no call {id}")),
            );
        };
        if c.caller != sid {
            return self.send(
                sid,
                err(
                    Some(req),
                    ErrorCode::NotYourCall,
                    format!("only the calling end of call {id} may ask for the relay"),
                ),
            );
        }
        if !matches!(c.state, CallState::Answered { .. }) {
            return self.send(
                sid,
                err(
                    Some(req),
                    ErrorCode::BadCallState,
                    format!("call {id} is not answered"),
                ),
            );
        }
        if c.policy == DirectPolicy::Direct {
            return self.send(
                sid,
                err(
                    Some(req),
                    ErrorCode::NoRelay,
                    "the direct-connect rule is 'direct': this directory offers no relay",
                ),
            );
        }
        match c.relay.clone() {
            RelayState::Ready { caller_facing, .. } => self.send(
                sid,
                DirMsg::RelayReady {
                    req: Some(req),
                    call: id,
                    relay: caller_facing.to_string(),
                },
            ),
            RelayState::Pending { .. } => self.send(
                sid,
                err(
                    Some(req),
                    ErrorCode::BadCallState,
                    "the relay is being set up",
                ),
            ),
            RelayState::None => {
                c.relay = RelayState::Pending {
                    fallback: Some(req),
                };
                self.actions.push_back(Action::AllocateRelay {
                    call: id,
                    caller: c.caller_media,
                    callee: c.callee_media,
                });
            }
        }
    }

    /// The forwarder asked for by [`Action::AllocateRelay`] is up.
    pub fn handle_relay_ready(
        &mut self,
        _now: Instant,
        id: CallId,
        caller_facing: SocketAddr,
        callee_facing: SocketAddr,
    ) {
        let Some(c) = self.calls.get_mut(&id) else {
            // The call ended meanwhile.
            self.actions.push_back(Action::ReleaseRelay { call: id });
            return;
        };
        let RelayState::Pending { fallback } = c.relay else {
            return;
        };
        c.relay = RelayState::Ready {
            caller_facing,
            callee_facing,
        };
        let (caller, callee) = (c.caller, c.callee);
        let relayed = Notice::Relayed {
            call: id,
            from: c.from.clone(),
            number: c.number.clone(),
        };
        match fallback {
            None => self.send_connects(id),
            Some(req) => {
                self.notice(relayed);
                self.send(
                    callee,
                    DirMsg::RelayReady {
                        req: None,
                        call: id,
                        relay: callee_facing.to_string(),
                    },
                );
                self.send(
                    caller,
                    DirMsg::RelayReady {
                        req: Some(req),
                        call: id,
                        relay: caller_facing.to_string(),
                    },
                );
            }
        }
    }

    /// The forwarder could not be set up.
    pub fn handle_relay_failed(&mut self, now: Instant, id: CallId, message: &str) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let RelayState::Pending { fallback } = c.relay else {
            return;
        };
        c.relay = RelayState::None;
        let caller = c.caller;
        match fallback {
            Some(req) => self.send(
                caller,
                err(
                    Some(req),
                    ErrorCode::RelayFailed,
                    format!("the relay could not be set up: {message}"),
                ),
            ),
            None => self.end_call(now, id, None, EndReason::MediaFailed),
        }
    }

    pub fn calls(&self) -> impl Iterator<Item = &Call> {
        self.calls.values()
    }

    pub fn call(&self, id: CallId) -> Option<&Call> {
        self.calls.get(&id)
    }

    /// End call `id`; `by` (if any) is told nothing, the other end(s) are
    /// told `reason`.
    pub(super) fn end_call(
        &mut self,
        now: Instant,
        id: CallId,
        by: Option<SessionId>,
        reason: EndReason,
    ) {
        let Some(c) = self.calls.remove(&id) else {
            return;
        };
        for end in [c.caller, c.callee] {
            if Some(end) != by {
                self.send(end, DirMsg::Ended { call: id, reason });
            }
        }
        self.finished(now, c, reason, None);
    }

    /// Call `c` is over: its relay goes, and it is logged and recorded.
    /// `forwarded_to`: where the caller was sent on, if it was.
    fn finished(&mut self, now: Instant, c: Call, reason: EndReason, forwarded_to: Option<String>) {
        self.gc_remote(c.caller);
        self.gc_remote(c.callee);
        if !matches!(c.relay, RelayState::None) {
            self.actions.push_back(Action::ReleaseRelay { call: c.id });
        }
        let answered = match c.state {
            CallState::Answered { at } => Some(at),
            CallState::Ringing { .. } => None,
        };
        let outcome = match (answered, reason) {
            (Some(_), _) => CallOutcome::Answered,
            (None, EndReason::Cancelled) => CallOutcome::Cancelled,
            (None, EndReason::Rejected) => CallOutcome::Declined,
            (None, EndReason::Busy) => CallOutcome::Busy,
            (None, EndReason::NoAnswer) => CallOutcome::NoAnswer,
            (None, EndReason::Redirected) => CallOutcome::Forwarded,
            (None, _) => CallOutcome::Failed,
        };
        let record = CallRecord {
            from: c.from.clone(),
            from_account: c.caller_account,
            dialled: self.split_dialled(&c.dialled).0,
            dialled_account: c.dialled_account,
            reached: Some((c.number.clone(), c.callee_account)),
            started: c.started,
            answered,
            ended: now,
            outcome,
            forwarded_to,
            // Direct unless the relay carried it (as far as the directory
            // can tell: a direct attempt that failed asks for the relay).
            relayed: answered.map(|_| matches!(c.relay, RelayState::Ready { .. })),
        };
        self.notice(Notice::Ended {
            call: c.id,
            from: c.from.clone(),
            number: c.number.clone(),
            outcome,
            reason,
            relayed: record.relayed,
        });
        self.actions.push_back(Action::Finished {
            call: c.id,
            from: c.from,
            number: c.number,
            answered: answered.is_some(),
            reason,
        });
        self.actions.push_back(Action::Record(Box::new(record)));
    }
}
