//! The hub's side of the cluster: which sessions are other nodes'
//! endpoints, which calls another node routes, and turning the router's
//! actions about them into messages for the link (and the link's news into
//! router inputs).
//!
//! A call is routed by the node its caller is connected to. The callee's
//! node passes the router's messages to its endpoint and what the endpoint
//! asks about the call back, and tells the routing node when the endpoint
//! is gone; it remembers which node routes each such call ([`Side::foreign`])
//! until the call ends there, or until that node is gone (its entry missing
//! from the live nodes): then a call still ringing here ends.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use keyline_proto::dir::{CallId, DirMsg, EndReason};
use tokio::sync::mpsc;

use super::hub::Hub;
use crate::cluster::{BindingEntry, Broadcast, DeviceAbout, Inbound, NodeEntry, NodeMsg, Outbound};
use crate::routing::{is_registration_message, Notice, RemoteBinding, Request, SessionId};
use crate::store;

/// The hub's cluster state, when this node is one of a cluster.
pub(super) struct Side {
    pub(super) node: String,
    out: mpsc::Sender<Outbound>,
    /// Another node's session → the number it has here, and back.
    ids: HashMap<(String, SessionId), SessionId>,
    remote_of: HashMap<SessionId, (String, SessionId)>,
    /// What those endpoints said of themselves.
    about: HashMap<SessionId, DeviceAbout>,
    /// Calls another node routes whose other end is one of this node's
    /// sessions.
    foreign: HashMap<CallId, Foreign>,
    /// Nodes missing from the last listing of the live ones: how many
    /// listings in a row have missed them, and when the first did.
    missing: HashMap<String, (u32, Instant)>,
    last_refresh: Instant,
    /// When the routing nodes were last asked about old calls.
    last_check: Instant,
    started_ms: i64,
}

/// A call another node routes, as this node keeps it.
struct Foreign {
    /// The node that routes it.
    node: String,
    /// This node's session at the call's other end.
    session: SessionId,
    /// Answered (or relayed): its media goes on without the directory.
    answered: bool,
    /// When this node first heard of it.
    since: Instant,
}

/// How often the routing nodes are asked whether the calls they route
/// here are still going, and how old a call must be to be asked about.
const CHECK_EVERY: Duration = Duration::from_secs(10);
const CHECK_AFTER: Duration = Duration::from_secs(20);

/// Listings of the live nodes in a row that must miss a node, over at
/// least a node entry's lifetime, before the calls it routed are let go
/// of: a NATS that restarted without its buckets is filled again by every
/// node within a few seconds, and a listing taken meanwhile misses some.
const MISSED_LISTINGS: u32 = 2;

impl Side {
    pub(super) fn new(node: String, out: mpsc::Sender<Outbound>) -> Side {
        Side {
            node,
            out,
            ids: HashMap::new(),
            remote_of: HashMap::new(),
            about: HashMap::new(),
            foreign: HashMap::new(),
            missing: HashMap::new(),
            last_refresh: Instant::now(),
            last_check: Instant::now(),
            started_ms: store::now_ms(),
        }
    }

    /// How many calls another node routes that ring or go on here.
    pub(super) fn calls_elsewhere(&self) -> usize {
        self.foreign.len()
    }

    fn tell(&self, o: Outbound) {
        if self.out.try_send(o).is_err() {
            tracing::warn!("cluster: the link is behind; a message to the cluster dropped");
        }
    }
}

/// The call a message to an endpoint is about, and whether it is the
/// call's last.
fn call_of(msg: &DirMsg) -> Option<(CallId, bool)> {
    match msg {
        DirMsg::Ring { call, .. }
        | DirMsg::Connect { call, .. }
        | DirMsg::RelayReady { call, .. } => Some((*call, false)),
        DirMsg::Ended { call, .. } | DirMsg::Redirected { call, .. } => Some((*call, true)),
        _ => None,
    }
}

impl Hub {
    /// Whether this node is one of a cluster.
    pub(super) fn clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// `msg` for session `to`: passed on when `to` is another node's
    /// endpoint (then `None`), else given back.
    pub(super) fn cluster_send(&mut self, to: SessionId, msg: DirMsg) -> Option<DirMsg> {
        let Some(side) = &self.cluster else {
            return Some(msg);
        };
        let Some((node, session)) = side.remote_of.get(&to) else {
            return Some(msg);
        };
        if is_registration_message(&msg) {
            return None;
        }
        if !self.shared.cluster.get().is_some_and(|l| l.connected()) {
            // Without NATS the endpoint cannot be reached: its call ends
            // here now (the caller is told the other end is gone) rather
            // than when NATS returns with a stale message.
            tracing::warn!("cluster: NATS unreachable; {node}'s endpoint {session} taken as gone");
            self.router.handle_session_down(Instant::now(), to);
            return None;
        }
        {
            side.tell(Outbound::Node {
                to: node.clone(),
                msg: NodeMsg::Deliver {
                    session: *session,
                    msg,
                },
            });
        }
        None
    }

    /// This node's bindings, as the router announces them, go to the
    /// bucket.
    pub(super) fn cluster_notice(&mut self, now: Instant, n: &Notice) {
        if self.cluster.is_none() {
            return;
        }
        match n {
            Notice::Bound { number, .. } => self.put_binding(now, number),
            Notice::Unbound { number, .. } => {
                if let Some(side) = &self.cluster {
                    side.tell(Outbound::Delete {
                        number: number.clone(),
                    });
                }
            }
            _ => {}
        }
    }

    fn put_binding(&self, now: Instant, number: &str) {
        let (Some(side), Some(b)) = (&self.cluster, self.router.binding(number)) else {
            return;
        };
        if b.remote {
            return;
        }
        let Ok(parsed) = number.parse() else {
            return;
        };
        let checks = self.router.session(b.session).is_some_and(|s| s.checks);
        let device = self
            .sessions
            .get(&b.session)
            .map(|l| DeviceAbout {
                name: l.name.clone(),
                client: l.client.clone(),
            })
            .unwrap_or_default();
        side.tell(Outbound::Put {
            number: number.to_string(),
            entry: BindingEntry {
                node: side.node.clone(),
                session: b.session,
                binding: RemoteBinding {
                    number: parsed,
                    account: b.account.clone(),
                    fp: b.fp.clone(),
                    observed: b.observed,
                    own: b.own.clone(),
                    checks,
                    ttl: b.expires.saturating_duration_since(now),
                },
                device,
            },
        });
    }

    /// A request of session `sid`: sent to the node that routes its call
    /// when another does (then `None`), else given back.
    pub(super) fn cluster_route(&mut self, sid: SessionId, request: Request) -> Option<Request> {
        let Some(side) = &self.cluster else {
            return Some(request);
        };
        match request.call().and_then(|c| side.foreign.get(&c)) {
            Some(f) if f.session == sid => {
                side.tell(Outbound::Node {
                    to: f.node.clone(),
                    msg: NodeMsg::Route {
                        session: sid,
                        request,
                    },
                });
                None
            }
            _ => Some(request),
        }
    }

    /// Session `sid` of this node is gone: the nodes that route its calls
    /// are told.
    pub(super) fn cluster_down(&mut self, sid: SessionId) {
        let Some(side) = &mut self.cluster else {
            return;
        };
        let mut nodes = HashSet::new();
        side.foreign.retain(|_, f| {
            if f.session == sid {
                nodes.insert(f.node.clone());
                false
            } else {
                true
            }
        });
        for node in nodes {
            side.tell(Outbound::Node {
                to: node,
                msg: NodeMsg::SessionDown { session: sid },
            });
        }
    }

    /// Mail is waiting for `account`: the nodes its other endpoints are
    /// registered with are told.
    pub(super) fn cluster_mail(&mut self, account: &str) {
        let Some(side) = &self.cluster else {
            return;
        };
        let mut nodes = HashSet::new();
        for sid in self.router.registered_sessions_of(account) {
            if let Some((node, _)) = side.remote_of.get(&sid) {
                nodes.insert(node.clone());
            }
        }
        for node in nodes {
            side.tell(Outbound::Node {
                to: node,
                msg: NodeMsg::MailArrived {
                    account: account.to_string(),
                },
            });
        }
    }

    /// Another node's endpoint `sid`, as the account's device list shows
    /// it: its node and what it said of itself.
    pub(super) fn remote_device(&self, sid: SessionId) -> Option<(String, DeviceAbout)> {
        let side = self.cluster.as_ref()?;
        let (node, _) = side.remote_of.get(&sid)?;
        Some((
            node.clone(),
            side.about.get(&sid).cloned().unwrap_or_default(),
        ))
    }

    /// Ask the node that holds endpoint `sid` (another node's) to end it
    /// and revoke its token; false when no node is known for it.
    pub(super) fn cluster_sign_out(&self, account: &str, sid: SessionId) -> bool {
        let Some(side) = &self.cluster else {
            return false;
        };
        let Some((node, session)) = side.remote_of.get(&sid) else {
            return false;
        };
        side.tell(Outbound::Node {
            to: node.clone(),
            msg: NodeMsg::SignOut {
                account: account.to_string(),
                session: *session,
            },
        });
        true
    }

    /// Tell every other node (a change made through this one).
    pub(super) fn broadcast(&self, news: Broadcast) {
        if let Some(side) = &self.cluster {
            side.tell(Outbound::Broadcast(news));
        }
    }

    /// The number here of node `node`'s session `session`.
    fn remote_sid(&mut self, node: &str, session: SessionId) -> Option<SessionId> {
        let side = self.cluster.as_mut()?;
        let key = (node.to_string(), session);
        if let Some(sid) = side.ids.get(&key) {
            return Some(*sid);
        }
        let sid = self
            .shared
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        side.ids.insert(key.clone(), sid);
        side.remote_of.insert(sid, key);
        Some(sid)
    }

    /// What the link brings.
    pub(super) async fn cluster_inbound(&mut self, now: Instant, inbound: Inbound) {
        match inbound {
            Inbound::Bound {
                node,
                session,
                binding,
                device,
            } => {
                if let Some(sid) = self.remote_sid(&node, session) {
                    let account = binding.account.clone();
                    self.router.handle_remote_bound(now, sid, &node, binding);
                    let taken = self.router.session(sid).is_some_and(|s| {
                        s.remote.as_deref() == Some(node.as_str())
                            && s.account.as_deref() == Some(account.as_str())
                    });
                    if let (true, Some(side)) = (taken, &mut self.cluster) {
                        side.about.insert(sid, device);
                    }
                }
            }
            Inbound::Unbound {
                node,
                session,
                number,
            } => {
                let sid = self
                    .cluster
                    .as_ref()
                    .and_then(|s| s.ids.get(&(node, session)).copied());
                if let Some(sid) = sid {
                    self.router.handle_remote_unbound(now, sid, &number);
                }
            }
            Inbound::Node { from, msg } => self.node_msg(now, from, msg),
            Inbound::Nodes { live } => self.nodes_live(now, &live),
            Inbound::Broadcast { from, news } => {
                tracing::debug!("cluster: news from {from}: {news:?}");
                match news {
                    Broadcast::Reload { logout } => self.reload(now, logout, None).await,
                    Broadcast::ForwardChanged { number, rules } => {
                        self.router.set_forwards(&number, rules)
                    }
                    Broadcast::AccountNumbers { account, numbers } => {
                        self.router.set_account_numbers(&account, &numbers)
                    }
                    Broadcast::Login { account, ip, ok } => {
                        if let Ok(mut l) = self.shared.limiter.lock() {
                            l.remote_outcome(Instant::now(), account.as_deref(), ip, ok);
                        }
                    }
                }
            }
        }
    }

    /// The nodes live now, as NATS lists them. The calls routed by a node
    /// missing from [`MISSED_LISTINGS`] listings in a row, over at least
    /// [`crate::cluster::NODE_TTL`], are let go of (a listing without this
    /// node's own entry counts for nothing):
    /// one that still rings here ends (the other end is lost: the node
    /// that would have rung it out or ended it is gone); an answered one
    /// goes on, its media end to end, and ends between its ends.
    fn nodes_live(&mut self, now: Instant, live: &[String]) {
        let Some(side) = &mut self.cluster else {
            return;
        };
        let live: HashSet<&str> = live.iter().map(String::as_str).collect();
        if !live.contains(side.node.as_str()) {
            // Not even this node's own entry: the buckets are being made
            // again (NATS restarted), and the listing says nothing yet.
            side.missing.clear();
            return;
        }
        let mut gone = HashSet::new();
        for f in side.foreign.values() {
            if !live.contains(f.node.as_str()) {
                gone.insert(f.node.clone());
            }
        }
        side.missing.retain(|node, _| gone.contains(node));
        for node in gone {
            side.missing.entry(node).or_insert((0, now)).0 += 1;
        }
        let ttl = crate::cluster::NODE_TTL;
        let missing = &side.missing;
        let mut ended = Vec::new();
        side.foreign.retain(|&call, f| {
            let gone = missing.get(&f.node).is_some_and(|&(n, first)| {
                n >= MISSED_LISTINGS && now.duration_since(first) >= ttl
            }) && now.duration_since(f.since) >= ttl;
            if gone {
                tracing::info!(
                    "cluster: {} routed call {call} and is gone; {}",
                    f.node,
                    if f.answered {
                        "it goes on between its ends"
                    } else {
                        "it stops ringing here"
                    }
                );
                if !f.answered {
                    ended.push((f.session, call));
                }
            }
            !gone
        });
        self.end_here(ended, EndReason::PeerLost);
    }

    /// Tell this node's endpoints, those still connected, that these
    /// calls another node routed are over.
    fn end_here(&mut self, calls: Vec<(SessionId, CallId)>, reason: EndReason) {
        for (session, call) in calls {
            if self.sessions.contains_key(&session) {
                self.send(session, DirMsg::Ended { call, reason });
            }
        }
    }

    fn node_msg(&mut self, now: Instant, from: String, msg: NodeMsg) {
        match msg {
            NodeMsg::Deliver { session, msg } => {
                if !self.sessions.contains_key(&session) {
                    return;
                }
                if let (Some(side), Some((call, last))) = (&mut self.cluster, call_of(&msg)) {
                    if last {
                        side.foreign.remove(&call);
                    } else {
                        let answered = !matches!(msg, DirMsg::Ring { .. });
                        let f = side.foreign.entry(call).or_insert(Foreign {
                            node: from.clone(),
                            session,
                            answered,
                            since: now,
                        });
                        f.node = from;
                        f.session = session;
                        f.answered |= answered;
                    }
                }
                self.send(session, msg);
            }
            NodeMsg::Route { session, request } => {
                let sid = self
                    .cluster
                    .as_ref()
                    .and_then(|s| s.ids.get(&(from, session)).copied());
                // Only about a call with that endpoint, which this node
                // knows as a remote session.
                if let Some(sid) = sid.filter(|s| self.router.is_remote(*s)) {
                    self.router.handle_request(now, sid, request);
                }
            }
            NodeMsg::StillRouting { calls } => {
                let over: Vec<CallId> = calls
                    .into_iter()
                    .filter(|&c| self.router.call(c).is_none())
                    .collect();
                if let (false, Some(side)) = (over.is_empty(), &self.cluster) {
                    side.tell(Outbound::Node {
                        to: from,
                        msg: NodeMsg::CallsOver { calls: over },
                    });
                }
            }
            NodeMsg::CallsOver { calls } => {
                let Some(side) = &mut self.cluster else {
                    return;
                };
                let mut ended = Vec::new();
                for call in calls {
                    if side.foreign.get(&call).is_some_and(|f| f.node == from) {
                        if let Some(f) = side.foreign.remove(&call) {
                            tracing::info!(
                                "cluster: call {call} is over at {from}, which routed it; its end never came here"
                            );
                            ended.push((f.session, call));
                        }
                    }
                }
                self.end_here(ended, EndReason::Other);
            }
            NodeMsg::SessionDown { session } => {
                let sid = self
                    .cluster
                    .as_ref()
                    .and_then(|s| s.ids.get(&(from, session)).copied());
                if let Some(sid) = sid.filter(|s| self.router.is_remote(*s)) {
                    self.router.handle_session_down(now, sid);
                }
            }
            NodeMsg::SignOut { account, session } => {
                let mine = self.sessions.contains_key(&session)
                    && self.router.sessions_of(&account).contains(&session);
                if !mine {
                    return;
                }
                let why = "this device was signed out on the web site";
                if let Some(token) = self.end_session(now, session, why) {
                    let store = self.shared.store.clone();
                    tokio::spawn(async move {
                        if let Err(e) =
                            store::blocking(&store, move |s| s.delete_token(&token)).await
                        {
                            tracing::warn!("cluster: revoking a signed-out device's token: {e}");
                        }
                    });
                }
                tracing::info!("cluster: {from} signed out {account}'s session {session}");
            }
            NodeMsg::MailArrived { account } => {
                for sid in self.router.registered_sessions_of(&account) {
                    if let Some(l) = self.sessions.get(&sid) {
                        l.mail.notify_one();
                    }
                }
            }
        }
    }

    /// Every [`crate::cluster::HEARTBEAT`]: this node's entry, its
    /// bindings written again each third of their lifetime, and the
    /// remote sessions the router has forgotten forgotten here too.
    pub(super) fn cluster_tick(&mut self, now: Instant) {
        let ttl = self.shared.cfg().routing().binding_ttl;
        let refresh = self
            .cluster
            .as_ref()
            .is_some_and(|s| now.duration_since(s.last_refresh) >= ttl / 3);
        if refresh {
            let mine: Vec<String> = self
                .router
                .bindings()
                .filter(|b| !b.remote)
                .map(|b| b.number.clone())
                .collect();
            for n in &mine {
                self.put_binding(now, n);
            }
        }
        let live: HashSet<SessionId> = self.router.remote_sessions().map(|(s, _)| s).collect();
        let (mut own, mut remote) = (0, 0);
        for b in self.router.bindings() {
            if b.remote {
                remote += 1;
            } else {
                own += 1;
            }
        }
        let sessions = self.sessions.len();
        let calls = self.router.calls().count();
        let calls_elsewhere = self.cluster.as_ref().map_or(0, Side::calls_elsewhere);
        let listen = self.shared.local_addr.to_string();
        let web = self.shared.web_addr.get().map(|a| a.to_string());
        let Some(side) = &mut self.cluster else {
            return;
        };
        if refresh {
            side.last_refresh = now;
        }
        if now.duration_since(side.last_check) >= CHECK_EVERY {
            side.last_check = now;
            let mut old: HashMap<&str, Vec<CallId>> = HashMap::new();
            for (&call, f) in &side.foreign {
                if now.duration_since(f.since) >= CHECK_AFTER {
                    old.entry(f.node.as_str()).or_default().push(call);
                }
            }
            for (node, calls) in old {
                side.tell(Outbound::Node {
                    to: node.to_string(),
                    msg: NodeMsg::StillRouting { calls },
                });
            }
        }
        side.remote_of.retain(|sid, _| live.contains(sid));
        let remote_of = &side.remote_of;
        side.ids.retain(|_, sid| remote_of.contains_key(sid));
        side.about.retain(|sid, _| remote_of.contains_key(sid));
        let entry = NodeEntry {
            node: side.node.clone(),
            listen,
            web,
            sessions,
            bindings: own,
            remote_bindings: remote,
            calls,
            calls_elsewhere,
            started_ms: side.started_ms,
            at_ms: store::now_ms(),
        };
        side.tell(Outbound::Load(entry));
    }
}

/// How often the hub's cluster tick runs.
pub(super) const TICK: Duration = crate::cluster::HEARTBEAT;
