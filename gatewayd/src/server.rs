//! The gateway's tokio shell: [`run`] starts the tasks — the accept loop
//! (each connection served by [`crate::station`]), the switch task
//! ([`crate::switch`]), the disk watcher ([`crate::disk`]), the control
//! socket, mDNS, the directory uplink ([`crate::uplink`]) — and stops them;
//! SIGHUP reloads the configuration. Every channel is bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use keyline_net::admission::{admit_incoming, Gate};
use keyline_net::lifecycle::{self, Signal, Signals};
use keyline_net::relay::Counters;
use keyline_net::{control, mdns, Identity};
use keyline_proto::PROTOCOL_VERSION;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, InternalMedia};
use crate::db::Db;
use crate::disk::watch_disk;
use crate::events::Publisher;
use crate::metrics::Metrics;
use crate::shared::{query_switch, Event, Query, QueryReply, Shared};
use crate::station::{prune_pending, serve_station};
use crate::switch::Switch;

/// Command-line settings that win over the configuration file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub internal_media: Option<InternalMedia>,
    pub ring_timeout: Option<u64>,
    pub no_mdns: bool,
    pub no_voicemail: bool,
}

/// Options given on the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub state: Option<PathBuf>,
    /// The TOML file, re-read on SIGHUP.
    pub config_file: Option<PathBuf>,
    pub overrides: Overrides,
}

/// The file (or the embedded defaults) with the command line on top.
pub fn load_config(opts: &RunOptions) -> Result<Config> {
    let mut config = match &opts.config_file {
        Some(f) => Config::load(f)?,
        None => Config::default(),
    };
    let o = &opts.overrides;
    if let Some(l) = o.listen {
        config.listen = l;
    }
    if let Some(m) = o.internal_media {
        config.internal_media = m;
    }
    if let Some(t) = o.ring_timeout {
        config.ring_timeout_secs = t;
    }
    if o.no_mdns {
        config.mdns = false;
    }
    if o.no_voicemail {
        config.voicemail = false;
    }
    config.validate()?;
    Ok(config)
}

/// Run the gateway until SIGTERM or SIGINT.
pub async fn run(opts: RunOptions) -> Result<()> {
    let cfg = load_config(&opts)?;
    let mut signals = Signals::new().context("installing signal handlers")?;
    let state_dir = keyline_net::statedir::resolve(opts.state.as_deref(), "gatewayd")?;
    let id = Identity::load_or_create(&state_dir, "keyline-gateway")?;
    let db = Db::open(&state_dir.join("gatewayd.sqlite"))?;
    // What a kill left of voice messages being written, before any caller
    // reaches a mailbox.
    let (dir2, db2, max_secs) = (state_dir.clone(), db.clone(), cfg.voicemail_max_secs);
    match tokio::task::spawn_blocking(move || crate::voicemail::sweep(&dir2, &db2, max_secs))
        .await?
    {
        Ok(s) if s.removed.is_empty() && s.recovered.is_empty() => {}
        Ok(s) => tracing::info!(
            "voicemail at start-up: {} partial files removed, {} whole messages recovered",
            s.removed.len(),
            s.recovered.len()
        ),
        Err(e) => tracing::warn!("voicemail at start-up: {e:#}"),
    }
    let ctl = control::bind(&control::socket_path(&state_dir)).await?;
    let endpoint = keyline_net::make_endpoint(cfg.listen, &id)?;
    let local_addr = endpoint.local_addr()?;
    let (events_tx, events_rx) = mpsc::channel(1024);
    let metrics = match &cfg.metrics {
        Some(_) => Metrics::install()?,
        None => Metrics::off(),
    };
    let configured_uplink = cfg.directory.is_some() || cfg.embedded_directory.is_some();
    metrics.uplink(if configured_uplink {
        "connecting"
    } else {
        "off"
    });
    let gate = Gate::new(cfg.admission().map_err(anyhow::Error::msg)?);
    let stored_range = db.extension_range()?.map(|(lo, hi)| [lo, hi]);
    let shared = Arc::new(Shared {
        id,
        db,
        cfg: RwLock::new(cfg),
        state_dir: state_dir.clone(),
        local_addr,
        relay: Arc::new(Counters::default()),
        events: events_tx,
        publisher: Publisher::new(),
        pending: Mutex::new(HashMap::new()),
        enrolling: tokio::sync::Mutex::new(()),
        vm_jobs: Mutex::new(HashMap::new()),
        dir_client: Mutex::new(None),
        discovered: Mutex::new(HashMap::new()),
        started: Instant::now(),
        admin: RwLock::new(json!({"state": "off"})),
        admin_wake: tokio::sync::Notify::new(),
        metrics,
        gate,
        ext_range_set: RwLock::new(stored_range),
    });
    if let Err(e) = crate::admin::start(shared.clone()).await {
        tracing::warn!("the admin site is off: {e:#}");
        if let Ok(mut a) = shared.admin.write() {
            *a = json!({"state": "off", "why": format!("{e:#}")});
        }
    }
    if let Some(m) = shared.cfg().metrics {
        shared.metrics.spawn_upkeep();
        crate::metrics::serve(m.listen, shared.metrics.clone(), shared.relay.clone()).await?;
    }

    let switch = Switch::new(shared.clone())?;
    let switch_task = tokio::spawn(switch.run(events_rx));
    tokio::spawn(watch_disk(shared.clone()));
    tokio::spawn(prune_pending(shared.clone()));

    {
        let shared = shared.clone();
        let events = shared.publisher.control();
        tokio::spawn(control::serve_with_events(ctl, events, move |req| {
            let shared = shared.clone();
            async move { crate::control::handle_control(&shared, req).await }
        }));
    }

    let mdns = if shared.cfg().mdns {
        match start_mdns(&shared) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!("mDNS unavailable, stations must be given --gateway: {e:#}");
                None
            }
        }
    } else {
        None
    };

    tracing::info!(
        "keyline-gatewayd listening on {local_addr} (QUIC), state in {}, fingerprint {}",
        state_dir.display(),
        shared.id.fingerprint
    );
    println!(
        "keyline-gatewayd ready: udp {local_addr}, state {}, internal media {}",
        state_dir.display(),
        shared.cfg().internal_media.as_str()
    );

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
                            if let Err(e) = serve_station(shared, conn).await {
                                tracing::info!("station {remote}: {e:#}");
                            }
                        }
                        Err(e) => tracing::debug!("handshake with {remote} failed: {e}"),
                    }
                });
            }
        })
    };

    let (embedded, dir_cfg) = match shared.cfg().embedded_directory {
        Some(e) => {
            let (task, d) = crate::uplink::start_embedded(&state_dir, &e).await?;
            (Some(task), Some(d))
        }
        None => (None, shared.cfg().directory),
    };
    let uplink =
        dir_cfg.map(|d| tokio::spawn(crate::uplink::uplink(shared.clone(), endpoint.clone(), d)));

    lifecycle::ready("0 extensions online, 0 calls in progress");
    {
        let shared = shared.clone();
        lifecycle::spawn_watchdog(move || {
            let shared = shared.clone();
            async move {
                matches!(
                    query_switch(&shared, Query::Status).await,
                    Ok(QueryReply::Status(_))
                )
            }
        });
    }
    while let Signal::Reload = signals.recv().await {
        reload(&shared, &opts).await;
    }
    lifecycle::stopping("ending calls");
    tracing::info!("stopping: ending calls");
    let (done_tx, done_rx) = oneshot::channel();
    if shared
        .events
        .send(Event::Shutdown { done: done_tx })
        .await
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(2), done_rx).await;
    }
    accept.abort();
    if let Some(u) = uplink {
        u.abort();
    }
    if let Some(e) = embedded {
        e.stop().await;
    }
    // Give writers a moment to put the goodbyes on the wire.
    tokio::time::sleep(Duration::from_millis(100)).await;
    endpoint.close(quinn::VarInt::from_u32(0), b"gateway stopping");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    if let Some(m) = mdns {
        m.shutdown().await;
    }
    switch_task.abort();
    let _ = std::fs::remove_file(control::socket_path(&state_dir));
    Ok(())
}

/// SIGHUP: validate the new configuration first; keep the old one on error.
async fn reload(shared: &Arc<Shared>, opts: &RunOptions) {
    lifecycle::reloading();
    match load_config(opts) {
        Ok(new) => {
            let old = shared.cfg();
            let mut note = String::new();
            if new.listen != old.listen || new.mdns != old.mdns || new.name != old.name {
                note = " (listen, mdns and name take effect at the next restart)".into();
            }
            if let Ok(a) = new.admission() {
                shared.gate.set_limits(a);
            }
            if let Ok(mut c) = shared.cfg.write() {
                *c = new.clone();
            }
            let _ = shared
                .events
                .send(Event::Reload { cfg: Box::new(new) })
                .await;
            tracing::info!("configuration reloaded{note}");
            lifecycle::ready(&format!("configuration reloaded{note}"));
        }
        Err(e) => {
            tracing::error!("reload failed, keeping the previous configuration: {e:#}");
            lifecycle::ready(&format!(
                "reload failed, keeping the previous configuration: {e:#}"
            ));
        }
    }
}

fn start_mdns(shared: &Arc<Shared>) -> Result<mdns::Mdns> {
    let m = mdns::Mdns::new()?;
    let instance = shared
        .cfg()
        .name
        .clone()
        .unwrap_or_else(|| format!("keyline-gateway-{}", &shared.id.fingerprint[..8]));
    m.advertise(
        &instance,
        shared.local_addr.port(),
        &[
            ("role", "gateway"),
            ("fp", &shared.id.fingerprint),
            ("v", &PROTOCOL_VERSION.to_string()),
        ],
    )?;
    let rx = m.browse()?;
    let shared = shared.clone();
    tokio::spawn(async move {
        while let Ok(ev) = rx.recv_async().await {
            if let mdns_sd::ServiceEvent::ServiceResolved(rs) = ev {
                let found = mdns::parse(&rs);
                if found.role == "agent" {
                    tracing::debug!("mDNS: station {} at {:?}", found.fullname, found.addrs);
                    if let Ok(mut d) = shared.discovered.lock() {
                        d.insert(found.fullname.clone(), found);
                    }
                }
            }
        }
    });
    Ok(m)
}
