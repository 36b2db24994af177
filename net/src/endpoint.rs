//! The one quinn endpoint a process runs, and helpers around connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;

use crate::identity::{fingerprint, Identity};
use crate::tls;

/// Server name every Keyline connection uses; trust comes from pinning.
pub const SERVER_NAME: &str = "keyline";

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    // Idle timeout bounds how long a vanished peer goes unnoticed.
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        10_000,
    ))));
    t.datagram_receive_buffer_size(Some(256 * 1024));
    t.datagram_send_buffer_size(256 * 1024);
    Arc::new(t)
}

/// Bind the process's endpoint: it accepts connections (requiring a client
/// certificate) and makes them.
pub fn make_endpoint(bind: SocketAddr, id: &Identity) -> Result<quinn::Endpoint> {
    let server_crypto = QuicServerConfig::try_from(tls::server_config(id)?)
        .context("building the QUIC server configuration")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport());
    let mut ep =
        quinn::Endpoint::server(server, bind).with_context(|| format!("binding UDP {bind}"))?;
    ep.set_default_client_config(client_config(id, None)?);
    Ok(ep)
}

/// A client configuration for one connection, pinning the server.
pub fn client_config(id: &Identity, pin: Option<String>) -> Result<quinn::ClientConfig> {
    let crypto = QuicClientConfig::try_from(tls::client_config(id, pin)?)
        .context("building the QUIC client configuration")?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// The fingerprint of the certificate the peer presented.
pub fn peer_fingerprint(conn: &quinn::Connection) -> Option<String> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| fingerprint(c))
}
