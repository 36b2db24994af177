//! Several directory nodes acting as one: what the nodes tell each other,
//! and the link to NATS that carries it ([`link`]).
//!
//! Each node keeps its own connections and routes the calls its own
//! endpoints place, as a single directory does. Durable data (accounts,
//! numbers, rules, mail, history) is in the one PostgreSQL database they
//! share. What lives only in memory crosses through NATS:
//!
//! - **Bindings**, in the JetStream key-value bucket [`BINDINGS`]: one entry
//!   per registered number (key: the number's UTF-8 in hex), naming the
//!   node and session that hold it, written when a number is bound, again
//!   every third of the registration's lifetime while it lasts, and deleted
//!   when it ends. Every node watches the bucket and gives what the others
//!   hold to its router as remote bindings
//!   ([`crate::routing::Router::handle_remote_bound`]).
//! - **Messages to one node**, on the subject `keyline.node.NODE`
//!   ([`NodeMsg`]): what the router of the node that routes a call sends the
//!   other end, what that end asks back about the call, its end, and mail
//!   waiting.
//! - **News for every node**, on `keyline.all` ([`Broadcast`]): the number
//!   table or an account changed in the store, forwarding rules changed,
//!   the outcome of each password or token check (so that the login
//!   limiter counts failures on every node, wherever they were made).
//! - **Nodes**, in the bucket [`NODES`]: each node's name, addresses and
//!   load, rewritten every [`HEARTBEAT`], gone [`NODE_TTL`] after its last;
//!   `keyline-directory cluster status` reads it.
//!
//! Which of two registrations of one number is later is the bucket's
//! order (its revisions), the same on every node.

use std::time::Duration;

use keyline_proto::dir::{CallId, DirMsg, ForwardRule};
use serde::{Deserialize, Serialize};

use crate::routing::{RemoteBinding, Request, SessionId};

pub mod link;

/// The bucket of live bindings.
pub const BINDINGS: &str = "keyline_bindings";
/// The bucket of nodes.
pub const NODES: &str = "keyline_nodes";
/// How often a node rewrites its entry in [`NODES`].
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a node's entry outlives its last heartbeat.
pub const NODE_TTL: Duration = Duration::from_secs(10);
/// How often each node lists the live nodes (for the hub to let go of
/// the calls that a node gone routed).
pub const NODES_LISTED_EVERY: Duration = Duration::from_secs(5);
/// The subject every node listens on for news.
pub const ALL: &str = "keyline.all";

/// The subject node `node` listens on.
pub fn node_subject(node: &str) -> String {
    format!("keyline.node.{node}")
}

/// A number as a key of [`BINDINGS`] (keys are ASCII; numbers are any
/// script).
pub fn number_key(number: &str) -> String {
    hex::encode(number.as_bytes())
}

/// The number a key of [`BINDINGS`] stands for.
pub fn key_number(key: &str) -> Option<String> {
    String::from_utf8(hex::decode(key).ok()?).ok()
}

/// A binding as the bucket keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingEntry {
    pub node: String,
    /// The session on that node.
    pub session: SessionId,
    pub binding: RemoteBinding,
    /// What the endpoint said of itself, for the account's device list.
    #[serde(default)]
    pub device: DeviceAbout,
}

/// What an endpoint said of itself in its hello.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAbout {
    pub name: Option<String>,
    pub client: Option<String>,
}

/// A node as the bucket keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub node: String,
    /// Its QUIC address.
    pub listen: String,
    /// Its web site's address, if it serves one.
    pub web: Option<String>,
    pub sessions: usize,
    /// Bindings it holds itself.
    pub bindings: usize,
    /// Bindings of other nodes it knows.
    pub remote_bindings: usize,
    pub calls: usize,
    /// Calls another node routes that ring or go on at one of its
    /// endpoints.
    #[serde(default)]
    pub calls_elsewhere: usize,
    /// Milliseconds since the Unix epoch: when it started, and when it
    /// wrote this.
    pub started_ms: i64,
    pub at_ms: i64,
}

/// What one node sends another.
#[derive(Debug, Serialize, Deserialize)]
pub enum NodeMsg {
    /// Pass `msg` to your session `session` (about a call or look-up the
    /// sending node routes).
    Deliver { session: SessionId, msg: DirMsg },
    /// My session `session` asks this about a call you route.
    Route {
        session: SessionId,
        request: Request,
    },
    /// My session `session` is gone: end the calls it had with you.
    SessionDown { session: SessionId },
    /// Your session `session` was signed out on the web site by its
    /// account `account`: end it and revoke its token.
    SignOut { account: String, session: SessionId },
    /// Mail is waiting for `account`: its endpoints registered with you
    /// fetch it.
    MailArrived { account: String },
    /// Are these calls, which you route, still going? Asked of calls that
    /// have rung or gone on here a while: NATS delivers a message at most
    /// once, so the one that ended a call may never have come.
    StillRouting { calls: Vec<CallId> },
    /// Of the calls asked about, these are over here.
    CallsOver { calls: Vec<CallId> },
}

/// What one node tells every other.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Broadcast {
    /// Accounts or numbers changed in the store: reload the number table;
    /// end the sessions of `logout`.
    Reload { logout: Option<String> },
    /// `number`'s forwarding rules are now `rules`.
    ForwardChanged {
        number: String,
        rules: Vec<ForwardRule>,
    },
    /// `account`'s numbers are now `numbers`, in order.
    AccountNumbers {
        account: String,
        numbers: Vec<String>,
    },
    /// A password (with `account`) or a session token (without) was
    /// checked for a login from `ip`: every node's limiter counts it.
    Login {
        account: Option<String>,
        ip: std::net::IpAddr,
        ok: bool,
    },
}

/// A message on the wire between nodes, with its sender.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub from: String,
    pub body: T,
}

/// What the link hands the hub.
#[derive(Debug)]
pub enum Inbound {
    /// Node `node`'s session `session` holds `binding` (new or refreshed).
    Bound {
        node: String,
        session: SessionId,
        binding: RemoteBinding,
        device: DeviceAbout,
    },
    /// Node `node`'s session `session` no longer holds `number`.
    Unbound {
        node: String,
        session: SessionId,
        number: String,
    },
    /// A message from node `from` to this one.
    Node {
        from: String,
        msg: NodeMsg,
    },
    Broadcast {
        from: String,
        news: Broadcast,
    },
    /// The nodes whose entries are live now (listed every
    /// [`NODES_LISTED_EVERY`] while NATS answers).
    Nodes {
        live: Vec<String>,
    },
}

/// What the hub hands the link.
#[derive(Debug)]
pub enum Outbound {
    /// Write `number`'s binding (this node's own) to the bucket.
    Put { number: String, entry: BindingEntry },
    /// Delete `number`'s entry, if it is still this node's.
    Delete { number: String },
    /// Send `msg` to node `to`.
    Node { to: String, msg: NodeMsg },
    /// Tell every other node.
    Broadcast(Broadcast),
    /// This node's figures for its entry in [`NODES`].
    Load(NodeEntry),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_any_script() {
        for n in ["1001", "김민준", "+82 10 5555 0102", "ボブ/12"] {
            let k = number_key(n);
            assert!(k.chars().all(|c| c.is_ascii_hexdigit()), "{k}");
            assert_eq!(key_number(&k).as_deref(), Some(n));
        }
        assert_eq!(key_number("zz"), None);
        assert_eq!(key_number("ff"), None, "not UTF-8");
    }
}
