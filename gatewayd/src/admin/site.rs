//! Serving the admin site: off until an admin password exists, then one
//! listener per LAN-side address (looked at again every few seconds) or
//! `[admin] listen`; `admin-passwd` stores the hash and wakes it; what
//! `status` says about the site.

use super::*;

/// How often the LAN side's addresses (and the password) are looked at
/// again, besides when `admin passwd` tells the gateway at once.
const RESCAN: Duration = Duration::from_secs(10);

/// What `status` says while there is no password.
pub const OFF_HINT: &str =
    "set a password with `keyline-gatewayd admin passwd` to turn the admin site on";

/// Serve the admin site for the running gateway, if it is on; what
/// `status` says about it is kept in `shared.admin`. The site does not
/// listen until an admin password exists: `admin passwd` on a running
/// gateway wakes it ([`password_set`]); it then listens on the LAN side's
/// addresses ([`lan`]; looked at again every [`RESCAN`], so an address
/// that comes or goes is followed), or on `[admin] listen`.
pub async fn start(shared: Arc<Shared>) -> anyhow::Result<()> {
    let cfg = shared.cfg().admin;
    if !cfg.enabled {
        set_status(
            &shared,
            serde_json::json!({"state": "off", "why": DISABLED_WHY}),
        );
        return Ok(());
    }
    let tls = keyline_web::tls::server_config(vec![shared.id.cert.clone()], shared.id.key())?;
    let app = router(
        Live(shared.clone()),
        Access::new(&cfg.allow),
        Duration::from_secs(cfg.session_idle_mins.saturating_mul(60)),
    );
    let mut site = Site {
        shared: shared.clone(),
        tls,
        app,
        open: HashMap::new(),
        said_off: false,
    };
    site.round().await;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RESCAN) => {}
                _ = site.shared.admin_wake.notified() => {}
            }
            site.round().await;
        }
    });
    Ok(())
}

/// The control request `admin-passwd`: check that `hash` is an argon2id
/// hash, store it, and wake the site; the site's state once it has looked
/// (within a few seconds).
pub async fn set_password(shared: &Arc<Shared>, hash: String) -> Result<serde_json::Value, String> {
    check_hash(&hash)?;
    let db = shared.db.clone();
    tokio::task::spawn_blocking(move || db.set_admin_password(&hash))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("storing the password: {e:#}"))?;
    tracing::info!("admin password set");
    let before = shared.admin_status();
    if let Some(off) = disabled_answer(shared.cfg().admin.enabled, &before) {
        // No site task runs to wake: say so at once.
        return Ok(off);
    }
    shared.admin_wake.notify_one();
    // The site answers at once when it was already on.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = shared.admin_status();
        // It has looked (its state changed), or was on already.
        if now != before || before["state"] == "listening" || Instant::now() >= deadline {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What `admin-passwd` answers when the site is disabled in the config
/// (`[admin] enabled = false`, now or when the gateway started): the
/// password is stored, and no site will pick it up until it is enabled.
fn disabled_answer(enabled: bool, status: &serde_json::Value) -> Option<serde_json::Value> {
    let started_disabled = status["why"] == DISABLED_WHY;
    (!enabled || started_disabled).then(|| {
        serde_json::json!({
            "state": "off",
            "why": DISABLED_WHY,
            "note": "the password is stored; the admin site is disabled in the config: set [admin] enabled = true and restart the gateway",
        })
    })
}

/// Why the site is off when the config disables it.
const DISABLED_WHY: &str = "[admin] enabled = false";

/// A stored admin password must be an argon2id hash in PHC form.
pub fn check_hash(hash: &str) -> Result<(), String> {
    use argon2::password_hash::PasswordHash;
    if hash.len() > 512 {
        return Err("the password hash is too long".into());
    }
    match PasswordHash::new(hash) {
        Ok(h) if h.algorithm.as_str() == "argon2id" && h.hash.is_some() => Ok(()),
        Ok(h) => Err(format!(
            "the password hash must be argon2id with a hash, not {}",
            h.algorithm
        )),
        Err(e) => Err(format!("not a password hash (PHC string): {e}")),
    }
}

fn set_status(shared: &Shared, v: serde_json::Value) {
    if let Ok(mut a) = shared.admin.write() {
        *a = v;
    }
}

/// The admin site's listeners, one per address.
struct Site {
    shared: Arc<Shared>,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    /// Each address listened on, with what stops its server.
    open: HashMap<SocketAddr, tokio::sync::oneshot::Sender<()>>,
    said_off: bool,
}

impl Site {
    /// Look at the password and the addresses, and listen where the site
    /// should and nowhere else.
    async fn round(&mut self) {
        let db = self.shared.db.clone();
        let read = match tokio::task::spawn_blocking(move || db.admin_password()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(e) => Err(e.to_string()),
        };
        let has_password = match read {
            Ok(p) => p.is_some(),
            Err(e) => {
                // A busy or failing database says nothing about the
                // password: keep listening (or not) as before.
                tracing::warn!(
                    "admin site: reading the admin password: {e}; listeners left as they are"
                );
                let now = unreadable_status(&self.shared.admin_status(), &e);
                set_status(&self.shared, now);
                return;
            }
        };
        if !has_password {
            self.close_all();
            if !self.said_off {
                tracing::info!(
                    "the admin site is off until an admin password is set: run `keyline-gatewayd admin passwd`"
                );
                self.said_off = true;
            }
            set_status(
                &self.shared,
                serde_json::json!({"state": "off", "why": "no admin password yet", "hint": OFF_HINT}),
            );
            return;
        }
        let cfg = self.shared.cfg();
        let (want, side) = match cfg.admin.listen {
            Some(a) => (vec![a], "[admin] listen"),
            None => {
                let toward = directory_ips(&cfg).await;
                let addrs = match tokio::task::spawn_blocking(lan::read).await {
                    Ok(Ok((ifaces, routes))) => {
                        let wan = lan::wan_interfaces(&routes, &toward);
                        let one_armed = lan::one_armed_interfaces(&routes);
                        lan::lan_addresses(&ifaces, &wan, &one_armed)
                    }
                    Ok(Err(e)) => {
                        tracing::warn!("admin site: reading the interfaces and routes: {e}; listening on loopback only");
                        vec![IpAddr::from([127, 0, 0, 1])]
                    }
                    Err(e) => {
                        tracing::warn!("admin site: {e}");
                        return;
                    }
                };
                let port = crate::config::DEFAULT_ADMIN_PORT;
                (
                    addrs
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, port))
                        .collect(),
                    "the LAN side",
                )
            }
        };
        self.open.retain(|addr, stop| {
            let keep = want.contains(addr) && !stop.is_closed();
            if !keep {
                tracing::info!("admin site: no longer listening on {addr}");
            }
            keep
        });
        let mut errors = Vec::new();
        for addr in &want {
            if self.open.contains_key(addr) {
                continue;
            }
            match self.listen(*addr).await {
                Ok(local) => tracing::info!("admin site at https://{} ({side})", show(local)),
                Err(e) => {
                    tracing::warn!("admin site: binding {addr}: {e}");
                    errors.push(format!("binding {addr}: {e}"));
                }
            }
        }
        let mut urls: Vec<String> = self
            .open
            .keys()
            .map(|a| format!("https://{}/", show(*a)))
            .collect();
        urls.sort();
        let status = match urls.first() {
            Some(first) => serde_json::json!({
                "state": "listening",
                "url": first,
                "urls": urls,
                "on": side,
                "errors": errors,
            }),
            None => serde_json::json!({
                "state": "off",
                "why": format!("it could not listen: {}", errors.join("; ")),
            }),
        };
        set_status(&self.shared, status);
        self.said_off = false;
    }

    /// Start serving on `addr`; the address actually bound.
    async fn listen(&mut self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tls, app) = (self.tls.clone(), self.app.clone());
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = keyline_web::serve_https(
                listener,
                tls,
                app,
                keyline_web::Limits::default(),
                shutdown,
            )
            .await
            {
                tracing::warn!("admin site on {local}: {e}");
            }
        });
        // Known by the address asked for (port 0 included), so the next
        // round finds it.
        self.open.insert(addr, stop);
        Ok(local)
    }

    fn close_all(&mut self) {
        for (addr, _stop) in self.open.drain() {
            tracing::info!("admin site: no longer listening on {addr}");
        }
    }
}

/// What `status` says when the password could not be read: the site's
/// state is unchanged (its listeners are kept), and why it was not looked
/// at again.
fn unreadable_status(before: &serde_json::Value, err: &str) -> serde_json::Value {
    let mut now = before.clone();
    let why = format!("the database could not be read: {err}");
    match now.as_object_mut() {
        Some(m) if m.get("state").and_then(|s| s.as_str()) == Some("listening") => {
            m.insert("db_error".into(), why.into());
        }
        Some(m) => {
            m.insert("why".into(), why.into());
            m.remove("hint");
        }
        None => now = serde_json::json!({"state": "off", "why": why}),
    }
    now
}

/// An address as it goes in a URL (`[v6]:port`).
fn show(a: SocketAddr) -> String {
    a.to_string()
}

/// The configured directory's addresses, whose route marks the WAN side
/// (none without a directory, or when its name does not resolve soon).
async fn directory_ips(cfg: &crate::config::Config) -> Vec<IpAddr> {
    let Some(d) = &cfg.directory else {
        return Vec::new();
    };
    let a = d.address.trim();
    if let Ok(sa) = a.parse::<SocketAddr>() {
        return vec![sa.ip()];
    }
    if let Ok(ip) = a.trim_matches(['[', ']']).parse::<IpAddr>() {
        return vec![ip];
    }
    let host = if a.contains(':') {
        a.to_string()
    } else {
        format!("{a}:7480")
    };
    match tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host(host)).await {
        Ok(Ok(addrs)) => addrs.map(|s| s.ip()).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn only_an_argon2id_hash_is_stored_as_the_admin_password() {
        let hash = super::hash_password("front desk 2026").unwrap();
        assert_eq!(super::check_hash(&hash), Ok(()));
        for bad in [
            "letmein",
            "",
            "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
        ] {
            assert!(super::check_hash(bad).is_err(), "{bad:?}");
        }
        assert!(super::check_hash(&"$argon2id$".repeat(60)).is_err());
    }

    #[test]
    fn an_unreadable_password_keeps_the_site_as_it_was_and_says_why() {
        let listening = serde_json::json!({"state": "listening", "url": "https://127.0.0.1:8443/", "urls": ["https://127.0.0.1:8443/"], "on": "the LAN side", "errors": []});
        let now = super::unreadable_status(&listening, "database is locked");
        assert_eq!(now["state"], "listening");
        assert_eq!(now["urls"], listening["urls"]);
        assert_eq!(
            now["db_error"],
            "the database could not be read: database is locked"
        );
        let off = serde_json::json!({"state": "off", "why": "no admin password yet", "hint": super::OFF_HINT});
        let now = super::unreadable_status(&off, "database is locked");
        assert_eq!(now["state"], "off");
        assert_eq!(
            now["why"],
            "the database could not be read: database is locked"
        );
        assert!(now.get("hint").is_none(), "{now}");
        let now = super::unreadable_status(&serde_json::Value::Null, "disk I/O error");
        assert_eq!(now["state"], "off");
    }

    #[test]
    fn a_password_set_while_the_site_is_disabled_is_answered_at_once() {
        let off = serde_json::json!({"state": "off", "why": "[admin] enabled = false"});
        let a = super::disabled_answer(false, &off).unwrap();
        assert_eq!(a["state"], "off");
        assert!(
            a["note"].as_str().unwrap().contains("password is stored"),
            "{a}"
        );
        // Enabled in the file now, but the gateway started with it disabled.
        assert!(super::disabled_answer(true, &off).is_some());
        // An enabled site waits for its task as before.
        let waiting = serde_json::json!({"state": "off", "why": "no admin password yet"});
        assert!(super::disabled_answer(true, &waiting).is_none());
    }
}
