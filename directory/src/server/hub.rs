//! The hub task: the one owner of the routing state, the relays and the
//! sessions' queues.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyline_net::relay::{self, Allocation};
use keyline_proto::dir::{CallId, DirMsg, ErrorCode};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

use super::session::error;
use super::session::CONTROL_QUEUE;
use super::start::number_table;
use crate::api::{self, BindingInfo, CallInfo, EndpointKind};
use crate::cluster::Broadcast;
use crate::routing::{Action, CallState, Notice, RelayState, Request, Router, SessionId};
use crate::shared::{Device, Event, Out, Query, QueryReply, Shared, SignedOut};
use crate::store;

/// A connected session as the hub sees it.
pub(super) struct Live {
    pub(super) conn: quinn::Connection,
    /// Its address as last told to the router (shared with its
    /// connection).
    pub(super) observed: Arc<std::sync::Mutex<std::net::SocketAddr>>,
    pub(super) tx: mpsc::Sender<Out>,
    pub(super) mail: Arc<Notify>,
    pub(super) name: Option<String>,
    pub(super) client: Option<String>,
    /// The hash of the token it logged in with.
    pub(super) token_hash: Option<String>,
    pub(super) kind: EndpointKind,
}

/// How often the hub looks for endpoints that moved.
const MOVES_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The task that owns routing state.
pub(super) struct Hub {
    pub(super) shared: Arc<Shared>,
    pub(super) router: Router,
    pub(super) sessions: HashMap<SessionId, Live>,
    pub(super) relays: HashMap<CallId, Allocation>,
    /// When the CALL being routed now was read (taken by the RINGING it
    /// gets back, for the dial→ringing metric).
    pub(super) call_read_at: Option<Instant>,
    /// The other nodes, when this node is one of a cluster.
    pub(super) cluster: Option<super::cluster::Side>,
}

impl Hub {
    pub(super) fn new(shared: Arc<Shared>, router: Router) -> Hub {
        Hub {
            shared,
            router,
            sessions: HashMap::new(),
            relays: HashMap::new(),
            call_read_at: None,
            cluster: None,
        }
    }

    /// Make this hub one node of a cluster, named `node`, that tells the
    /// others through `out`.
    pub(super) fn join_cluster(
        &mut self,
        node: String,
        out: mpsc::Sender<crate::cluster::Outbound>,
    ) {
        self.cluster = Some(super::cluster::Side::new(node, out));
    }

    pub(super) async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        let mut tick = tokio::time::interval(super::cluster::TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut moves = tokio::time::interval(MOVES_EVERY);
        moves.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let clustered = self.clustered();
            let deadline = self.router.poll_timeout();
            let ev = tokio::select! {
                ev = events.recv() => ev,
                _ = sleep_until(deadline) => {
                    self.router.handle_timeout(Instant::now());
                    self.drain();
                    continue;
                }
                _ = tick.tick(), if clustered => {
                    self.cluster_tick(Instant::now());
                    continue;
                }
                _ = moves.tick() => {
                    self.sweep_moves(Instant::now());
                    self.drain();
                    continue;
                }
            };
            let Some(ev) = ev else { return };
            self.handle(ev).await;
            self.drain();
            self.call_read_at = None;
        }
    }

    /// Endpoints whose address changed (a NAT rebinding, a laptop on
    /// another network: QUIC follows them) are rebound at their new
    /// address, so the next caller is given it. One pass over every
    /// session in place of a timer per connection: a read of each
    /// connection's address, about 0.1 µs.
    fn sweep_moves(&mut self, now: Instant) {
        for (&sid, live) in &self.sessions {
            let at = live.conn.remote_address();
            let was = {
                let mut last = live.observed.lock().unwrap_or_else(|p| p.into_inner());
                std::mem::replace(&mut *last, at)
            };
            if at != was {
                tracing::info!("session {sid} moved from {was} to {at}");
                self.router.handle_session_moved(now, sid, at);
            }
        }
    }

    pub(super) async fn handle(&mut self, ev: Event) {
        let now = Instant::now();
        match ev {
            Event::Up {
                sid,
                fp,
                conn,
                observed,
                tx,
                mail,
                name,
                client,
                terminal,
                kind,
            } => {
                let at = *observed.lock().unwrap_or_else(|p| p.into_inner());
                self.router.handle_session_up(sid, fp, at);
                if terminal {
                    self.router.allow_checks(sid);
                }
                self.sessions.insert(
                    sid,
                    Live {
                        conn,
                        observed,
                        tx,
                        mail,
                        name,
                        client,
                        token_hash: None,
                        kind,
                    },
                );
            }
            Event::Down { sid } => {
                self.cluster_down(sid);
                self.sessions.remove(&sid);
                self.router.handle_session_down(now, sid);
            }
            Event::Moved { sid, observed } => self.router.handle_session_moved(now, sid, observed),
            Event::LoggedIn {
                sid,
                account,
                numbers,
                token_hash,
            } => {
                if let Some(l) = self.sessions.get_mut(&sid) {
                    l.token_hash = Some(token_hash);
                }
                self.router.handle_login(now, sid, &account, numbers)
            }
            Event::Devices { account, reply } => {
                let _ = reply.send(self.devices(now, &account));
            }
            Event::SignOut {
                account,
                sid,
                reply,
            } => {
                let _ = reply.send(self.sign_out(now, &account, sid));
            }
            Event::Route {
                sid,
                request,
                read_at,
                ..
            } => {
                let Some(request) = self.cluster_route(sid, request) else {
                    return;
                };
                if matches!(request, Request::Call { .. }) {
                    self.call_read_at = Some(read_at);
                }
                self.router.handle_request(now, sid, request)
            }
            Event::AccountNumbers { account, numbers } => {
                self.router.set_account_numbers(&account, &numbers);
                self.broadcast(Broadcast::AccountNumbers { account, numbers });
            }
            Event::LoginChecked { account, ip, ok } => {
                self.broadcast(Broadcast::Login { account, ip, ok })
            }
            Event::ForwardChanged { number, rules } => {
                self.broadcast(Broadcast::ForwardChanged {
                    number: number.clone(),
                    rules: rules.clone(),
                });
                self.router.set_forwards(&number, rules)
            }
            Event::Reload { logout, keep, done } => {
                self.broadcast(Broadcast::Reload {
                    logout: logout.clone(),
                });
                self.reload(now, logout, keep).await;
                if let Some(d) = done {
                    let _ = d.send(());
                }
            }
            Event::Cluster(inbound) => self.cluster_inbound(now, inbound).await,
            Event::MailArrived { account } => {
                self.cluster_mail(&account);
                for sid in self.router.registered_sessions_of(&account) {
                    if let Some(l) = self.sessions.get(&sid) {
                        l.mail.notify_one();
                    }
                }
            }
            Event::Query { what, reply } => {
                let _ = reply.send(self.query(what));
            }
            Event::Reconfigure(cfg) => self.router.reconfigure(cfg.routing()),
            Event::Shutdown { done } => {
                self.router.shutdown(now);
                self.drain();
                let _ = done.send(());
            }
        }
    }

    /// Reload the number table from the store; end the sessions of
    /// `logout` but `keep`.
    pub(super) async fn reload(
        &mut self,
        now: Instant,
        logout: Option<String>,
        keep: Option<SessionId>,
    ) {
        let store = self.shared.store.clone();
        match tokio::task::spawn_blocking(move || number_table(store.as_ref())).await {
            Ok(Ok(t)) => self.router.set_numbers(now, t),
            Ok(Err(e)) => tracing::error!("reloading numbers: {e}"),
            Err(e) => tracing::error!("reloading numbers: {e}"),
        }
        if let Some(account) = logout {
            for sid in self.router.sessions_of(&account) {
                if Some(sid) == keep || self.router.is_remote(sid) {
                    continue;
                }
                self.end_session(
                    now,
                    sid,
                    "the account's password or name changed, or it was removed; log in again",
                );
            }
        }
    }

    /// Tell session `sid` why, close it and drop its bindings at once;
    /// the hash of the token it logged in with.
    pub(super) fn end_session(
        &mut self,
        now: Instant,
        sid: SessionId,
        why: &str,
    ) -> Option<String> {
        let mut token = None;
        if let Some(l) = self.sessions.remove(&sid) {
            let _ =
                l.tx.try_send(Out::msg(error(None, ErrorCode::BadToken, why)));
            let conn = l.conn.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                conn.close(quinn::VarInt::from_u32(6), b"logged out");
            });
            token = l.token_hash;
        }
        self.router.handle_session_down(now, sid);
        token
    }

    /// `account`'s logged-in endpoints: this node's, and those of other
    /// nodes that have a number registered (known from their bindings).
    pub(super) fn devices(&self, now: Instant, account: &str) -> Vec<Device> {
        let ttl = self.shared.cfg().routing().binding_ttl;
        let mut out: Vec<Device> = self
            .router
            .sessions_of(account)
            .into_iter()
            .filter_map(|sid| {
                let mut numbers = Vec::new();
                let mut refreshed: Option<u64> = None;
                let mut fp = String::new();
                for b in self.router.bindings_of(sid) {
                    numbers.push(b.number.clone());
                    let ago = ttl
                        .saturating_sub(b.expires.saturating_duration_since(now))
                        .as_secs();
                    refreshed = Some(refreshed.map_or(ago, |r: u64| r.min(ago)));
                    fp = b.fp.clone();
                }
                numbers.sort();
                let Some(live) = self.sessions.get(&sid) else {
                    let (node, about) = self.remote_device(sid)?;
                    let seen = self.router.session(sid)?;
                    return Some(Device {
                        session: sid,
                        address: seen.observed.to_string(),
                        name: about.name,
                        client: about.client,
                        node: Some(node),
                        fingerprint: seen.fp.clone(),
                        numbers,
                        refreshed_s_ago: refreshed,
                    });
                };
                if fp.is_empty() {
                    fp = keyline_net::peer_fingerprint(&live.conn).unwrap_or_default();
                }
                Some(Device {
                    session: sid,
                    address: live.conn.remote_address().to_string(),
                    name: live.name.clone(),
                    client: live.client.clone(),
                    node: None,
                    fingerprint: fp,
                    numbers,
                    refreshed_s_ago: refreshed,
                })
            })
            .collect();
        out.sort_by_key(|d| d.session);
        out
    }

    /// End `account`'s session `sid`, here or through its node.
    fn sign_out(&mut self, now: Instant, account: &str, sid: SessionId) -> SignedOut {
        if !self.router.sessions_of(account).contains(&sid) {
            return SignedOut::NotFound;
        }
        if self.sessions.contains_key(&sid) {
            return match self.end_session(now, sid, "this device was signed out on the web site") {
                Some(token) => SignedOut::Here(token),
                None => SignedOut::NotFound,
            };
        }
        if self.cluster_sign_out(account, sid) {
            SignedOut::Elsewhere
        } else {
            SignedOut::NotFound
        }
    }

    pub(super) fn send(&mut self, sid: SessionId, msg: DirMsg) {
        let Some(l) = self.sessions.get(&sid) else {
            return;
        };
        if let DirMsg::Expect { from, .. } = &msg {
            // Someone else's look-up: another endpoint decides how many of
            // these come. With the queue half full the hint is lost (that
            // caller's look-up-only call does not ring here), so the rest
            // stays for this endpoint's own replies; otherwise anyone could
            // knock a number offline by looking it up fast enough.
            if l.tx.capacity() < CONTROL_QUEUE / 2 {
                tracing::debug!("session {sid} is behind: a look-up by {from} not announced");
                return;
            }
        }
        match l.tx.try_send(Out::msg(msg)) {
            Ok(()) => {}
            Err(_) => {
                // An endpoint that cannot keep up with its own replies is
                // gone; its reader will report it down.
                l.conn
                    .close(quinn::VarInt::from_u32(5), b"control queue overflow");
            }
        }
    }

    /// The directory's address facing session `sid`, for relay sockets.
    pub(super) fn ip_facing(&self, sid: Option<SessionId>) -> IpAddr {
        if let Some(ip) = self.shared.cfg().relay_ip {
            return ip;
        }
        let fallback = self.shared.local_addr.ip();
        sid.and_then(|s| self.sessions.get(&s))
            .and_then(|l| l.conn.local_ip())
            .filter(|ip| !ip.is_unspecified())
            .unwrap_or(fallback)
    }

    pub(super) fn drain(&mut self) {
        while let Some(action) = self.router.poll_action() {
            match action {
                Action::Send { to, msg } => {
                    let Some(msg) = self.cluster_send(to, msg) else {
                        continue;
                    };
                    if matches!(msg, DirMsg::Ringing { .. }) {
                        if let Some(at) = self.call_read_at.take() {
                            self.shared
                                .metrics
                                .dial_to_ringing
                                .record(at.elapsed().as_secs_f64());
                        }
                    }
                    self.send(to, msg)
                }
                Action::AllocateRelay {
                    call,
                    caller,
                    callee,
                } => {
                    let (a, b) = match self.router.call(call) {
                        Some(c) => (Some(c.caller), Some(c.callee)),
                        None => (None, None),
                    };
                    let ip_a = self.ip_facing(a);
                    // Another node's endpoint reaches this node's relay at
                    // the address the caller's side uses.
                    let ip_b = match b {
                        Some(s) if self.router.is_remote(s) => ip_a,
                        _ => self.ip_facing(b),
                    };
                    match relay::allocate(self.shared.relay.clone(), caller, ip_a, callee, ip_b) {
                        Ok(mut alloc) => {
                            let (cf, ef) = (alloc.caller_facing, alloc.callee_facing);
                            tracing::info!(
                                "call {call}: relaying {caller} <-> {cf} | {ef} <-> {callee}"
                            );
                            let first_media = alloc.first_callee_packet();
                            self.relays.insert(call, alloc);
                            self.router.handle_relay_ready(Instant::now(), call, cf, ef);
                            let answered = match self.router.call(call).map(|c| c.state) {
                                Some(CallState::Answered { at }) => Some(at),
                                _ => None,
                            };
                            if let (Some(at), Some(first_media), true) =
                                (answered, first_media, self.shared.metrics.is_on())
                            {
                                // Woken by the relay's first packet from the
                                // answering end, or ended by its release.
                                let h = self.shared.metrics.answer_to_media.clone();
                                tokio::spawn(async move {
                                    if let Some(d) =
                                        crate::metrics::answer_to_media(at, first_media).await
                                    {
                                        h.record(d.as_secs_f64());
                                    }
                                });
                            }
                        }
                        Err(e) => {
                            tracing::warn!("call {call}: relay allocation failed: {e}");
                            self.router
                                .handle_relay_failed(Instant::now(), call, &e.to_string());
                        }
                    }
                }
                Action::ReleaseRelay { call } => {
                    self.relays.remove(&call);
                }
                Action::Finished {
                    call,
                    from,
                    number,
                    answered,
                    reason,
                } => {
                    tracing::info!(
                        "call {call} {from} -> {number} ended: {} ({})",
                        reason.describe(),
                        if answered { "answered" } else { "not answered" }
                    );
                }
                Action::Notice(n) => {
                    self.cluster_notice(Instant::now(), &n);
                    self.notice(n)
                }
                Action::Record(rec) => {
                    self.shared.metrics.call_ended(rec.outcome);
                    // Written off the hub's task; a failure costs only
                    // this entry of the history.
                    let now_ms = store::now_ms();
                    let entries = rec.entries(Instant::now(), now_ms);
                    let keep = self.shared.cfg().history.retention(now_ms);
                    let st = self.shared.store.clone();
                    tokio::spawn(async move {
                        if let Err(e) =
                            store::blocking(&st, move |s| s.add_calls(&entries, keep)).await
                        {
                            tracing::warn!("call history: {e}");
                        }
                    });
                }
            }
        }
    }

    /// The login limiter's figures for `status`.
    pub(super) fn logins(&self) -> Value {
        let tracked = self.shared.limiter.lock().map(|l| l.tracked()).ok();
        let (pairs, addresses, accounts) = tracked.unwrap_or_default();
        json!({
            "password_checks": self.shared.password_checks.load(Ordering::Relaxed),
            "hashing_threads": self.shared.hashing.threads(),
            "turned_away_busy": self.shared.hashing.stats().refused_busy.load(Ordering::Relaxed),
            "checked_at_floor": self.shared.hashing.stats().at_floor.load(Ordering::Relaxed),
            "tracked_account_addresses": pairs,
            "tracked_addresses": addresses,
            "tracked_accounts": accounts,
        })
    }

    /// A router notice as the control socket's event.
    pub(super) fn notice(&self, n: Notice) {
        if self.shared.events.subscribers() == 0 {
            return;
        }
        let ev = match n {
            Notice::Bound {
                number,
                account,
                session,
                observed,
            } => api::Event::Registered {
                number,
                account,
                kind: self
                    .sessions
                    .get(&session)
                    .map_or(EndpointKind::Terminal, |l| l.kind),
                address: observed.to_string(),
            },
            Notice::Unbound {
                number,
                account,
                reason,
                ..
            } => api::Event::Unregistered {
                number,
                account,
                reason: reason.to_string(),
            },
            Notice::Ringing {
                call,
                from,
                number,
                dialled,
            } => api::Event::CallRinging {
                call,
                caller: from,
                callee: number,
                dialled,
            },
            Notice::Answered {
                call,
                from,
                number,
                relayed,
            } => api::Event::CallAnswered {
                call,
                caller: from,
                callee: number,
                relayed,
            },
            Notice::Relayed { call, from, number } => api::Event::CallRelayed {
                call,
                caller: from,
                callee: number,
            },
            Notice::Ended {
                call,
                from,
                number,
                outcome,
                reason,
                relayed,
            } => api::Event::CallEnded {
                call,
                caller: from,
                callee: number,
                outcome: outcome.as_str().to_string(),
                reason: serde_json::to_value(reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                relayed,
            },
        };
        self.shared.publish(&ev);
    }

    pub(super) fn query(&self, what: Query) -> QueryReply {
        let now = Instant::now();
        match what {
            Query::Ping => QueryReply::Pong,
            Query::Status => {
                let cfg = self.shared.cfg();
                let admitted = self.shared.gate.counts();
                QueryReply::Status(Box::new(api::Status {
                    api: api::API_VERSION,
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    listen: self.shared.local_addr.to_string(),
                    fingerprint: self.shared.id.fingerprint.clone(),
                    state_dir: self.shared.state_dir.display().to_string(),
                    config_file: self
                        .shared
                        .config_file
                        .as_ref()
                        .map(|p| p.display().to_string()),
                    last_reload: self.shared.last_reload.lock().ok().and_then(|r| r.clone()),
                    direct_connect: cfg.direct_connect.as_str().to_string(),
                    binding_ttl_secs: cfg.binding_ttl_secs,
                    uptime_s: self.shared.started.elapsed().as_secs(),
                    sessions: self.router.session_count(),
                    bindings: self.router.bindings().count(),
                    numbers: self.router.numbers().count(),
                    calls_active: self.router.calls().count(),
                    calls_elsewhere: self.cluster.as_ref().map_or(0, |s| s.calls_elsewhere()),
                    relays_active: self.relays.len(),
                    relay: json!(self.shared.relay.snapshot()),
                    logins: self.logins(),
                    connections: admitted.open,
                    max_connections: cfg.max_connections,
                    connections_refused: admitted.refused(),
                    admission: json!(admitted),
                    limits: json!(cfg.limits),
                    web: self.shared.web_addr.get().map(|a| format!("https://{a}/")),
                    mail_waiting: None,
                    disk: None,
                }))
            }
            Query::Bindings => {
                let mut v: Vec<BindingInfo> = self
                    .router
                    .bindings()
                    .map(|b| BindingInfo {
                        number: b.number.clone(),
                        account: b.account.clone(),
                        session: b.session,
                        observed: b.observed.to_string(),
                        candidates: b.candidates().iter().map(ToString::to_string).collect(),
                        fingerprint: b.fp.clone(),
                        expires_in_s: b.expires.saturating_duration_since(now).as_secs(),
                        since_s: now.saturating_duration_since(b.since).as_secs(),
                    })
                    .collect();
                v.sort_by(|a, b| a.number.cmp(&b.number));
                QueryReply::Bindings(v)
            }
            Query::Calls => QueryReply::Calls(
                self.router
                    .calls()
                    .map(|c| {
                        let (state, secs) = match c.state {
                            CallState::Ringing { .. } => ("ringing", now.duration_since(c.started)),
                            CallState::Answered { at } => ("answered", now.duration_since(at)),
                        };
                        CallInfo {
                            id: c.id,
                            from: c.from.clone(),
                            number: c.number.clone(),
                            dialled: c.dialled.clone(),
                            via: c.via.clone(),
                            state: state.to_string(),
                            seconds: secs.as_secs(),
                            policy: c.policy.as_str().to_string(),
                            relayed: matches!(c.relay, RelayState::Ready { .. }),
                        }
                    })
                    .collect(),
            ),
            Query::Online => {
                let mut online: HashMap<String, Vec<String>> = HashMap::new();
                for b in self.router.bindings() {
                    online
                        .entry(b.account.clone())
                        .or_default()
                        .push(b.number.clone());
                }
                QueryReply::Online(online)
            }
        }
    }
}

/// Sleep until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

impl Shared {
    /// A directory's shared state and hub without its QUIC endpoint, for
    /// the web site's handler tests.
    #[cfg(test)]
    pub(crate) fn for_tests(
        store: Arc<dyn crate::store::Store>,
        cfg: crate::config::Config,
    ) -> anyhow::Result<Arc<Shared>> {
        let id = keyline_net::Identity::generate("keyline-directory")?;
        let table = number_table(store.as_ref())?;
        let (hub_tx, hub_rx) = mpsc::channel(256);
        let shared = Arc::new(Shared::new(
            id,
            store,
            cfg,
            None,
            std::env::temp_dir(),
            std::net::SocketAddr::from(([127, 0, 0, 1], 7480)),
            hub_tx,
        )?);
        let mut router = Router::new(shared.cfg().routing());
        router.set_numbers(Instant::now(), table);
        let hub = Hub::new(shared.clone(), router);
        tokio::spawn(hub.run(hub_rx));
        Ok(shared)
    }
}
