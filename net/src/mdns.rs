//! mDNS (DNS-SD) advertising and browsing of `_keyline._udp.local.`.
//!
//! What mDNS says is a hint of where a peer listens. Trust comes only from
//! certificate fingerprints checked on the QUIC connection.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use keyline_proto::MDNS_SERVICE;
use mdns_sd::{ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};

/// A service found on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub fullname: String,
    pub role: String,
    pub fingerprint: Option<String>,
    pub version: Option<String>,
    /// Addresses to try, non-loopback first.
    pub addrs: Vec<SocketAddr>,
}

/// One mDNS responder/browser per process.
pub struct Mdns {
    daemon: ServiceDaemon,
    registered: std::sync::Mutex<Vec<String>>,
}

impl std::fmt::Debug for Mdns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mdns").finish_non_exhaustive()
    }
}

impl Mdns {
    pub fn new() -> Result<Mdns> {
        let daemon = ServiceDaemon::new().context("starting the mDNS responder")?;
        Ok(Mdns {
            daemon,
            registered: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Advertise `instance` on every interface with the given TXT entries.
    pub fn advertise(&self, instance: &str, port: u16, txt: &[(&str, &str)]) -> Result<()> {
        let host = format!("{}.local.", sanitize_host(instance));
        let info = ServiceInfo::new(MDNS_SERVICE, instance, &host, "", port, txt)
            .context("building the mDNS service record")?
            .enable_addr_auto();
        let fullname = info.get_fullname().to_string();
        self.daemon
            .register(info)
            .context("registering the mDNS service")?;
        if let Ok(mut r) = self.registered.lock() {
            r.push(fullname);
        }
        Ok(())
    }

    /// Start browsing; resolved services arrive on the returned channel.
    pub fn browse(&self) -> Result<mdns_sd::Receiver<ServiceEvent>> {
        self.daemon
            .browse(MDNS_SERVICE)
            .context("browsing for Keyline services")
    }

    /// Withdraw our records (so peers forget us at once) and stop.
    pub async fn shutdown(&self) {
        let names = self
            .registered
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        for name in names {
            if let Ok(rx) = self.daemon.unregister(&name) {
                let _ = tokio::time::timeout(Duration::from_secs(1), rx.recv_async()).await;
            }
        }
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = tokio::time::timeout(Duration::from_secs(1), rx.recv_async()).await;
        }
    }
}

/// Parse a resolved service into what we need from it.
pub fn parse(rs: &ResolvedService) -> Found {
    let port = rs.get_port();
    let mut addrs: Vec<SocketAddr> = rs
        .get_addresses()
        .iter()
        .map(|ip| SocketAddr::new(ip.to_ip_addr(), port))
        .filter(|a| match a.ip() {
            IpAddr::V4(_) => true,
            // Link-local v6 needs a scope id we do not carry; skip it.
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect();
    addrs.sort_by_key(|a| (a.ip().is_loopback(), a.is_ipv6(), *a));
    Found {
        fullname: rs.get_fullname().to_string(),
        role: rs.get_property_val_str("role").unwrap_or("").to_string(),
        fingerprint: rs.get_property_val_str("fp").map(str::to_string),
        version: rs.get_property_val_str("v").map(str::to_string),
        addrs,
    }
}

fn sanitize_host(s: &str) -> String {
    let h: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    h.trim_matches('-').to_string()
}
