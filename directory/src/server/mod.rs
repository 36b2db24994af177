//! The directory's tokio shell around the sans-IO [`Router`].
//!
//! Tasks: one accept loop; per connection a reader (control stream), a
//! writer (bounded queue, drained into one stream write per wake-up), a
//! mail uploader (bidirectional mail streams), a mailman (delivery on
//! unidirectional streams) and a migration watcher;
//! one hub task that owns the router, the relay allocations and the
//! sessions' queues and is the only place routing state changes; the
//! control socket. Storage calls run off the runtime ([`store::blocking`]).
//! Every channel is bounded.

mod accounts;
mod cluster;
mod connection;
pub mod control;
mod hub;
mod mail;
mod session;
mod start;

pub use crate::shared::{Device, Event, Out, Query, QueryReply, Shared};
pub use control::{dispatch, handle_control};
pub use start::{open_configured_store, open_store, Overrides, RunOptions, DB_FILE};

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use keyline_net::admission::admit_incoming;
use keyline_net::lifecycle::{self, Signal, Signals};
use keyline_net::Identity;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::api::{self};
use crate::config::Config;
use crate::metrics::Figures;
use crate::routing::Router;
use crate::shared::{query_hub, query_typed};
use crate::store;
use crate::wire::{self};
use connection::serve_conn;
use hub::Hub;
use start::number_table;

/// Connect this node to the cluster's NATS and make its hub a node.
async fn join_cluster(shared: &Arc<Shared>, hub: &mut Hub, servers: &str) -> Result<()> {
    let cfg = shared.cfg();
    let node = cfg.cluster.node_name(shared.local_addr);
    // Bindings outlive their registration in the bucket by half of it: a
    // node that stops leaves them to expire there (the others drop them at
    // the registration's end).
    let ttl = cfg.routing().binding_ttl;
    let link = crate::cluster::link::Link::connect(servers, &node, ttl + ttl / 2).await?;
    let (out_tx, out_rx) = mpsc::channel(crate::cluster::link::OUT_QUEUE);
    link.start(shared.hub.clone(), Event::Cluster, out_rx)
        .await?;
    // Call ids unique across the nodes: each draws bits 32..61. Ids stay
    // below 2^62: the media handshake carries them as QUIC varints.
    hub.router
        .set_call_base(u64::from((rand::random::<u32>() >> 2) | 1) << 32);
    hub.join_cluster(node.clone(), out_tx);
    let _ = shared.cluster.set(link);
    tracing::info!("cluster: node {node}, NATS at {servers}");
    Ok(())
}

/// Run the directory until SIGTERM or SIGINT.
pub async fn run(opts: RunOptions) -> Result<()> {
    serve(opts, None).await
}

/// Run a directory inside another daemon (a standalone office's gateway):
/// no systemd notifications or signal handling of its own; it stops when
/// `stop` changes or its sender is dropped.
pub async fn run_embedded(opts: RunOptions, stop: watch::Receiver<bool>) -> Result<()> {
    serve(opts, Some(stop)).await
}

async fn serve(opts: RunOptions, stop: Option<watch::Receiver<bool>>) -> Result<()> {
    let embedded = stop.is_some();
    let cfg = opts.config;
    cfg.validate()?;
    let state_dir = keyline_net::statedir::resolve(opts.state.as_deref(), "directory")?;
    let id = Identity::load_or_create(&state_dir, "keyline-directory")?;
    let store = {
        let (dir, store_cfg) = (state_dir.clone(), cfg.store.clone());
        tokio::task::spawn_blocking(move || open_configured_store(&dir, &store_cfg))
            .await
            .context("opening the store")??
    };
    let table = {
        let s = store.clone();
        tokio::task::spawn_blocking(move || number_table(s.as_ref()))
            .await
            .context("loading numbers")??
    };
    let ctl = keyline_net::control::bind(&keyline_net::control::socket_path(&state_dir)).await?;
    let endpoint = keyline_net::endpoint::make_control_endpoint(
        cfg.listen,
        &id,
        keyline_net::endpoint::control_server_config(&id, Some(wire::ACK_EVERY), CONTROL_LIMITS)?,
    )?;
    let local_addr = endpoint.local_addr()?;
    let (hub_tx, hub_rx) = mpsc::channel(4096);
    let shared = Arc::new(Shared::new(
        id,
        store,
        cfg,
        opts.config_file.clone(),
        state_dir.clone(),
        local_addr,
        hub_tx,
    )?);

    let mut router = Router::new(shared.cfg().routing());
    router.set_numbers(Instant::now(), table);
    let mut hub = Hub::new(shared.clone(), router);
    if let Some(servers) = shared.cfg().cluster.nats.clone() {
        if let Err(e) = join_cluster(&shared, &mut hub, &servers).await {
            // A PostgreSQL client blocks when dropped: not on the runtime.
            let _ = tokio::task::spawn_blocking(move || drop((hub, shared))).await;
            return Err(e);
        }
    }
    let hub_task = tokio::spawn(hub.run(hub_rx));

    {
        let shared = shared.clone();
        let events = shared.events.clone();
        tokio::spawn(keyline_net::control::serve_with_events(
            ctl,
            events,
            move |req| {
                let shared = shared.clone();
                async move { control::handle_control(&shared, req).await }
            },
        ));
    }
    {
        let shared = shared.clone();
        tokio::spawn(watch_disk(shared));
    }

    let accept = {
        let shared = shared.clone();
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let Some((mut slot, incoming)) = admit_incoming(&shared.gate, incoming) else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    let handshake = incoming.await;
                    slot.handshake_done();
                    match handshake {
                        Ok(conn) => {
                            if let Err(e) = serve_conn(shared, conn).await {
                                tracing::info!("endpoint {remote}: {e:#}");
                            }
                        }
                        Err(e) => tracing::debug!("handshake with {remote} failed: {e}"),
                    }
                });
            }
        })
    };

    if !embedded {
        let shared = shared.clone();
        lifecycle::spawn_watchdog(move || {
            let shared = shared.clone();
            async move {
                matches!(
                    query_typed(&shared, Query::Ping).await,
                    Ok(QueryReply::Pong)
                )
            }
        });
    }
    // Expired session tokens are purged hourly.
    {
        let store = shared.store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                let now = store::now_ms();
                if let Err(e) = store::blocking(&store, move |s| s.purge_tokens(now)).await {
                    tracing::warn!("purging expired tokens: {e}");
                }
            }
        });
    }

    let (web_stop, web_stop_rx) = watch::channel(false);
    let web_task = crate::web::start(shared.clone(), web_stop_rx.clone()).await?;
    let metrics_task = {
        let s = shared.clone();
        let figures = move || {
            let s = s.clone();
            async move { scrape_figures(&s).await }
        };
        crate::metrics::start(
            shared.cfg().metrics.listen,
            shared.metrics.clone(),
            shared.relay.clone(),
            figures,
            web_stop_rx,
        )
        .await?
    };
    tracing::info!(
        "keyline-directory listening on {local_addr} (QUIC), state in {}, fingerprint {}",
        state_dir.display(),
        shared.id.fingerprint
    );
    println!(
        "keyline-directory ready: udp {local_addr}, state {}, direct-connect {}{}",
        state_dir.display(),
        shared.cfg().direct_connect.as_str(),
        match shared.web_addr.get() {
            Some(a) => format!(", web https://{a}/"),
            None => String::new(),
        }
    );
    match stop {
        Some(mut stop) => {
            // Embedded: the host daemon owns signals and systemd.
            let _ = stop.changed().await;
        }
        None => {
            let mut signals = Signals::new().context("installing signal handlers")?;
            lifecycle::ready(&status_line(&shared).await);
            let mut status_tick = tokio::time::interval(Duration::from_secs(10));
            status_tick.tick().await;
            loop {
                tokio::select! {
                    sig = signals.recv() => match sig {
                        Signal::Reload => reload(&shared, &opts.overrides).await,
                        Signal::Terminate | Signal::Interrupt => break,
                    },
                    _ = status_tick.tick() => lifecycle::status(&status_line(&shared).await),
                }
            }
            lifecycle::stopping("stopping: telling endpoints, flushing storage");
        }
    }
    tracing::info!("stopping: ending calls and telling endpoints");
    let (done_tx, done_rx) = oneshot::channel();
    if shared
        .hub
        .send(Event::Shutdown { done: done_tx })
        .await
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(2), done_rx).await;
    }
    accept.abort();
    let _ = web_stop.send(true);
    for t in [web_task, metrics_task].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    // Give writers a moment to put the goodbyes on the wire.
    tokio::time::sleep(Duration::from_millis(100)).await;
    endpoint.close(quinn::VarInt::from_u32(0), b"directory stopping");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    if let Err(e) = store::blocking(&shared.store, |s| s.flush()).await {
        tracing::warn!("flushing the database: {e}");
    }
    hub_task.abort();
    let _ = std::fs::remove_file(keyline_net::control::socket_path(&state_dir));
    Ok(())
}

/// What one client may make the directory hold for it: the control
/// stream and up to three mail uploads (one at a time is read, the rest
/// wait), no unidirectional streams (the directory only opens them, to
/// deliver mail) and no datagrams (its relay is plain UDP); 256 KiB of
/// receive window per stream and 1 MiB for the whole connection.
const CONTROL_LIMITS: keyline_net::endpoint::ControlLimits = keyline_net::endpoint::ControlLimits {
    bidi_streams: 4,
    uni_streams: 0,
    stream_window: 256 * 1024,
    connection_window: 1024 * 1024,
    datagrams: false,
};

async fn status_line(shared: &Arc<Shared>) -> String {
    let s = query_hub(shared, Query::Status).await;
    let n = |k: &str| s.get(k).and_then(Value::as_u64).unwrap_or(0);
    format!(
        "{} endpoints, {} numbers registered, {} calls, {} bytes relayed",
        n("sessions"),
        n("bindings"),
        n("calls_active"),
        s.get("relay")
            .and_then(|r| r.get("bytes"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    )
}

/// What the metrics read from the hub and the file system when Prometheus
/// scrapes.
async fn scrape_figures(shared: &Shared) -> Figures {
    let s = query_hub(shared, Query::Status).await;
    let n = |k: &str| s.get(k).and_then(Value::as_u64).unwrap_or(0);
    Figures {
        bindings: n("bindings"),
        sessions: n("sessions"),
        calls: n("calls_active"),
        disk_free: crate::metrics::disk_free_off_runtime(&shared.state_dir).await,
    }
}

/// SIGHUP: re-read the configuration file; keep the old one on error.
async fn reload(shared: &Arc<Shared>, overrides: &Overrides) {
    lifecycle::reloading();
    let Some(file) = &shared.config_file else {
        tracing::info!("SIGHUP: no configuration file to reload");
        lifecycle::ready(&status_line(shared).await);
        return;
    };
    let old = shared.cfg();
    let result = Config::load(file).and_then(|mut c| {
        overrides.apply(&mut c);
        c.validate()?;
        Ok(c)
    });
    match result {
        Ok(mut new) => {
            if new.listen != old.listen {
                tracing::warn!(
                    "listen changed to {}; that needs a restart, still listening on {}",
                    new.listen,
                    old.listen
                );
                new.listen = old.listen;
            }
            if new.store != old.store {
                tracing::warn!("[store] changed; that needs a restart, still using the old store");
                new.store = old.store.clone();
            }
            let new = Arc::new(new);
            if let Ok(mut l) = shared.limiter.lock() {
                l.set_limits(new.limits());
            }
            if let Ok(a) = new.admission() {
                shared.gate.set_limits(a);
            }
            shared.set_cfg(new.clone());
            let _ = shared.hub.send(Event::Reconfigure(new)).await;
            if let Ok(mut r) = shared.last_reload.lock() {
                *r = Some(format!("reloaded {}", file.display()));
            }
            tracing::info!("configuration reloaded from {}", file.display());
            lifecycle::ready(&status_line(shared).await);
        }
        Err(e) => {
            let msg = format!("configuration reload failed, keeping the old one: {e:#}");
            tracing::error!("{msg}");
            if let Ok(mut r) = shared.last_reload.lock() {
                *r = Some(msg.clone());
            }
            lifecycle::ready(&msg);
        }
    }
}

/// How often the disk watcher looks at the state directory's free space.
const DISK_EVERY: Duration = Duration::from_secs(10);

/// Publishes the state directory's free space at start and whenever it
/// crosses [`api::DISK_LOW_BYTES`].
async fn watch_disk(shared: Arc<Shared>) {
    let mut low: Option<bool> = None;
    let mut tick = tokio::time::interval(DISK_EVERY);
    loop {
        tick.tick().await;
        let Some(free) = crate::metrics::disk_free_off_runtime(&shared.state_dir).await else {
            continue;
        };
        let now = api::DiskState::of(free);
        if low != Some(now.low) {
            if now.low {
                tracing::warn!("only {free} bytes free under the state directory");
            }
            low = Some(now.low);
            shared.publish(&api::Event::Disk {
                free_bytes: now.free_bytes,
                low: now.low,
            });
        }
    }
}
