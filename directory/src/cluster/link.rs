//! The link to NATS: the connection, the two key-value buckets, this
//! node's subjects, and the tasks that pass what arrives to the hub and
//! what the hub says to NATS. Thin: what to do with it is the hub's and
//! the router's to decide.
//!
//! Every channel is bounded. The hub never waits on NATS: it hands the
//! link [`Outbound`]s with `try_send`, and when the link is that far
//! behind, what does not fit is dropped with a warning (a binding is
//! written again within a third of its lifetime; a lost call message costs
//! that call, like a lost packet on one node's queue).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use super::{
    key_number, node_subject, number_key, BindingEntry, Envelope, Inbound, NodeEntry, Outbound,
    ALL, BINDINGS, NODES, NODES_LISTED_EVERY, NODE_TTL,
};

/// Outbound messages queued for the link before the hub's are dropped.
pub const OUT_QUEUE: usize = 4096;
/// Bucket writes queued before they are dropped.
const KV_QUEUE: usize = 4096;
/// How often the bindings task checks that its bucket is the one it
/// watches.
const BUCKET_CHECK: Duration = Duration::from_secs(2);

/// A node's connection to the cluster.
#[derive(Clone)]
pub struct Link {
    pub node: String,
    client: async_nats::Client,
    js: jetstream::Context,
    max_age: Duration,
    /// The buckets, once they are open (made by the bindings task, again
    /// whenever NATS has lost them).
    buckets: Arc<Mutex<Option<Buckets>>>,
}

#[derive(Clone)]
struct Buckets {
    bindings: kv::Store,
    nodes: kv::Store,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("node", &self.node).finish()
    }
}

/// The cluster as `cluster status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub node: String,
    /// NATS as this node's client sees it: `connected`, `pending` or
    /// `disconnected`, and the server it is connected to.
    pub nats: String,
    pub nats_server: Option<String>,
    pub nodes: Vec<NodeEntry>,
    /// Numbers in the bindings bucket (every node's).
    pub bindings: u64,
}

impl Link {
    /// Connect to `servers` (comma-separated) as node `node`. The node
    /// starts whether NATS answers or not: the client connects (and
    /// reconnects) in the background, and the buckets are opened (or made)
    /// once it has. Bindings live at most `max_age` in the bucket without
    /// being written again.
    pub async fn connect(servers: &str, node: &str, max_age: Duration) -> Result<Link> {
        let addrs: Vec<async_nats::ServerAddr> = servers
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!("cluster.nats: {e}"))?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("keyline-directory {node}"))
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect()
            .connect(addrs)
            .await
            .with_context(|| format!("connecting to NATS at {servers}"))?;
        let js = jetstream::new(client.clone());
        Ok(Link {
            node: node.to_string(),
            client,
            js,
            max_age,
            buckets: Arc::new(Mutex::new(None)),
        })
    }

    /// Start the link's tasks: what arrives goes to `hub` as `wrap`ped
    /// [`Inbound`]s; what the hub hands over comes from `out`.
    pub async fn start<E: Send + 'static>(
        &self,
        hub: mpsc::Sender<E>,
        wrap: fn(Inbound) -> E,
        mut out: mpsc::Receiver<Outbound>,
    ) -> Result<()> {
        let mine = self
            .client
            .subscribe(node_subject(&self.node))
            .await
            .context("subscribing to this node's subject")?;
        let all = self
            .client
            .subscribe(ALL)
            .await
            .context("subscribing to the cluster's news")?;
        tokio::spawn(receive(
            mine,
            self.node.clone(),
            hub.clone(),
            wrap,
            |from, msg| Inbound::Node { from, msg },
        ));
        tokio::spawn(receive(
            all,
            self.node.clone(),
            hub.clone(),
            wrap,
            |from, news| Inbound::Broadcast { from, news },
        ));
        tokio::spawn(watch_nodes(self.clone(), hub.clone(), wrap));
        let (kv_tx, kv_rx) = mpsc::channel::<Outbound>(KV_QUEUE);
        tokio::spawn(bindings(self.clone(), kv_rx, hub, wrap));
        let link = self.clone();
        tokio::spawn(async move {
            while let Some(o) = out.recv().await {
                match o {
                    Outbound::Put { .. } | Outbound::Delete { .. } => {
                        if kv_tx.try_send(o).is_err() {
                            tracing::warn!("cluster: binding writes behind; one dropped");
                        }
                    }
                    Outbound::Node { to, msg } => link.publish(node_subject(&to), msg).await,
                    Outbound::Broadcast(news) => link.publish(ALL.to_string(), news).await,
                    Outbound::Load(entry) => {
                        let Some(b) = link.buckets() else {
                            continue;
                        };
                        let v = match serde_json::to_vec(&entry) {
                            Ok(v) => v,
                            Err(e) => {
                                tracing::error!("cluster: encoding this node's entry: {e}");
                                continue;
                            }
                        };
                        // Apart: a write JetStream is slow to acknowledge
                        // (a server lost, a leader being chosen) must not
                        // hold up the calls' messages behind it.
                        tokio::spawn(async move {
                            if let Err(e) = b.nodes.put(entry.node.as_str(), v.into()).await {
                                tracing::debug!("cluster: writing this node's entry: {e}");
                            }
                        });
                    }
                }
            }
        });
        Ok(())
    }

    async fn publish<T: Serialize>(&self, subject: String, body: T) {
        let env = Envelope {
            from: self.node.clone(),
            body,
        };
        match serde_json::to_vec(&env) {
            Ok(v) => {
                if let Err(e) = self.client.publish(subject.clone(), v.into()).await {
                    tracing::warn!("cluster: publishing to {subject}: {e}");
                }
            }
            Err(e) => tracing::error!("cluster: encoding a message to {subject}: {e}"),
        }
    }

    /// Whether NATS is connected now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// How many times the client has connected to NATS.
    fn connects(&self) -> u64 {
        self.client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When the bindings bucket's stream was made.
    async fn bucket_made(&self) -> Result<impl PartialEq + std::fmt::Debug> {
        let mut stream = self
            .js
            .get_stream(format!("KV_{BINDINGS}"))
            .await
            .context("finding the bindings bucket")?;
        let info = stream.info().await.context("reading the bindings bucket")?;
        Ok(info.created)
    }

    fn buckets(&self) -> Option<Buckets> {
        self.buckets.lock().ok().and_then(|b| b.clone())
    }

    /// Open the buckets, or make them (NATS never had them, or a server
    /// that restarted has lost them: they live in memory). In a NATS
    /// cluster they are kept on up to three servers, so that one server
    /// going away loses nothing.
    async fn ensure_buckets(&self) -> Result<Buckets> {
        let info = self.client.server_info();
        let replicas = if info.cluster.is_some() {
            info.connect_urls.len().clamp(1, 3)
        } else {
            1
        };
        let b = Buckets {
            bindings: bucket(&self.js, BINDINGS, self.max_age, replicas).await?,
            nodes: bucket(&self.js, NODES, NODE_TTL, replicas).await?,
        };
        if let Ok(mut slot) = self.buckets.lock() {
            *slot = Some(b.clone());
        }
        Ok(b)
    }

    /// The nodes, NATS's state and the bindings bucket's size.
    pub async fn status(&self) -> Result<Status> {
        let nats = match self.client.connection_state() {
            async_nats::connection::State::Connected => "connected",
            async_nats::connection::State::Pending => "pending",
            async_nats::connection::State::Disconnected => "disconnected",
        };
        let server = self.client.server_info();
        let b = self
            .buckets()
            .ok_or_else(|| anyhow!("the cluster's buckets are not open yet (NATS is {nats})"))?;
        let mut nodes = Vec::new();
        for k in node_names(&b).await? {
            if let Some(v) = b.nodes.get(&k).await.context("reading a node")? {
                match serde_json::from_slice::<NodeEntry>(&v) {
                    Ok(n) => nodes.push(n),
                    Err(e) => tracing::warn!("cluster: node entry {k}: {e}"),
                }
            }
        }
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        // Live keys (the stream's message count would include deletions).
        let mut bindings = 0;
        let mut keys = b.bindings.keys().await.context("listing the bindings")?;
        while let Some(k) = keys.next().await {
            k.context("listing the bindings")?;
            bindings += 1;
        }
        Ok(Status {
            node: self.node.clone(),
            nats: nats.to_string(),
            nats_server: (!server.server_name.is_empty())
                .then(|| format!("{} ({})", server.server_name, server.host)),
            nodes,
            bindings,
        })
    }
}

/// Open bucket `name`, or make it (in memory: what it holds is rebuilt by
/// the nodes' own writes within a binding's lifetime).
///
/// The bucket's stream is made here in the key-value layout (one stream
/// `KV_<name>` over `$KV.<name>.>`, one value per key, roll-ups allowed,
/// direct gets) rather than by the client library's bucket maker, which
/// first asks for the account's reservations that nats-server 2.9 (Debian
/// 12's) does not report.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store> {
    if let Ok(b) = js.get_key_value(name).await {
        return Ok(b);
    }
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: jetstream::stream::StorageType::Memory,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .with_context(|| format!("making the key-value bucket {name} (is JetStream on?)"))?;
    js.get_key_value(name)
        .await
        .with_context(|| format!("opening the key-value bucket {name}"))
}

/// Pass what arrives on one subscription to the hub, without this node's
/// own.
async fn receive<T, E>(
    mut sub: async_nats::Subscriber,
    me: String,
    hub: mpsc::Sender<E>,
    wrap: fn(Inbound) -> E,
    make: fn(String, T) -> Inbound,
) where
    T: serde::de::DeserializeOwned,
{
    while let Some(m) = sub.next().await {
        match serde_json::from_slice::<Envelope<T>>(&m.payload) {
            Ok(env) if env.from == me => {}
            Ok(env) => {
                if hub.send(wrap(make(env.from, env.body))).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!("cluster: a malformed message on {}: {e}", m.subject),
        }
    }
}

/// The bindings bucket: this node's writes, and every other node's
/// bindings as they change.
async fn bindings<E>(
    link: Link,
    mut writes: mpsc::Receiver<Outbound>,
    hub: mpsc::Sender<E>,
    wrap: fn(Inbound) -> E,
) {
    // The revision of this node's last write of each of its numbers.
    let mut mine: HashMap<String, u64> = HashMap::new();
    // Who holds each number another node wrote.
    let mut theirs: HashMap<String, (String, crate::routing::SessionId)> = HashMap::new();
    loop {
        let b = match link.ensure_buckets().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("cluster: {e:#}; again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // A watch started before NATS was lost may have missed what the
        // hub dropped meanwhile (another node's endpoints are taken as gone
        // while NATS is): a new connection means a new watch, from the
        // bucket's start.
        let connects = link.connects();
        // When the bucket was made: a watch follows sequence numbers, so a
        // bucket made again (NATS lost it) needs a new watch from its start.
        let made = match link.bucket_made().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("cluster: {e:#}; again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut watch = match b.bindings.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("cluster: watching the bindings: {e}; again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut check = tokio::time::interval(BUCKET_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = check.tick() => match link.bucket_made().await {
                    _ if link.connects() != connects => {
                        tracing::info!("cluster: NATS connected again; watching the bindings anew");
                        break;
                    }
                    Ok(m) if m == made => {}
                    Ok(_) => {
                        tracing::info!("cluster: the bindings bucket was made again; watching it anew");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!("cluster: {e:#}");
                        break;
                    }
                },
                w = writes.recv() => match w {
                    Some(Outbound::Put { number, entry }) => {
                        let v = match serde_json::to_vec(&entry) {
                            Ok(v) => v,
                            Err(e) => {
                                tracing::error!("cluster: encoding {number}'s binding: {e}");
                                continue;
                            }
                        };
                        match b.bindings.put(number_key(&number), v.into()).await {
                            Ok(rev) => {
                                mine.insert(number, rev);
                            }
                            Err(e) => {
                                // NATS may have lost the bucket: made
                                // again before watching again; the
                                // binding is written at its next refresh.
                                tracing::warn!("cluster: writing {number}'s binding: {e}");
                                break;
                            }
                        }
                    }
                    Some(Outbound::Delete { number }) => {
                        if let Some(rev) = mine.remove(&number) {
                            // Only if no other node wrote it since.
                            if let Err(e) = b
                                .bindings
                                .delete_expect_revision(number_key(&number), Some(rev))
                                .await
                            {
                                tracing::debug!("cluster: {number}'s binding not deleted: {e}");
                            }
                        }
                    }
                    Some(_) => {}
                    None => return,
                },
                e = watch.next() => match e {
                    Some(Ok(entry)) => {
                        let Some(number) = key_number(&entry.key) else {
                            tracing::warn!("cluster: a binding under a foreign key {}", entry.key);
                            continue;
                        };
                        let inbound = match entry.operation {
                            kv::Operation::Put => {
                                let Ok(e) = serde_json::from_slice::<BindingEntry>(&entry.value)
                                else {
                                    tracing::warn!("cluster: a malformed binding of {number}");
                                    continue;
                                };
                                if e.node == link.node {
                                    theirs.remove(&number);
                                    continue;
                                }
                                if mine.get(&number).is_some_and(|&r| r > entry.revision) {
                                    // This node registered it since.
                                    continue;
                                }
                                mine.remove(&number);
                                theirs.insert(number, (e.node.clone(), e.session));
                                Inbound::Bound {
                                    node: e.node,
                                    session: e.session,
                                    binding: e.binding,
                                    device: e.device,
                                }
                            }
                            kv::Operation::Delete | kv::Operation::Purge => {
                                let Some((node, session)) = theirs.remove(&number) else {
                                    continue;
                                };
                                Inbound::Unbound { node, session, number }
                            }
                        };
                        if hub.send(wrap(inbound)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!("cluster: the bindings watch failed: {e}; watching again");
                        break;
                    }
                    None => break,
                },
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The names of the nodes whose entries are live (all of them, or an
/// error: never a part).
async fn node_names(b: &Buckets) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut keys = b.nodes.keys().await.context("listing the nodes")?;
    while let Some(k) = keys.next().await {
        names.push(k.context("listing the nodes")?);
    }
    Ok(names)
}

/// Every [`NODES_LISTED_EVERY`], the live nodes for the hub, while NATS
/// answers (nothing is said when it does not: the hub then keeps what it
/// has).
async fn watch_nodes<E>(link: Link, hub: mpsc::Sender<E>, wrap: fn(Inbound) -> E) {
    let mut tick = tokio::time::interval(NODES_LISTED_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(b) = link.buckets() else {
            continue;
        };
        match node_names(&b).await {
            Ok(live) => {
                if hub.send(wrap(Inbound::Nodes { live })).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::debug!("cluster: {e:#}"),
        }
    }
}
