//! The one quinn endpoint a process runs, and helpers around connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;

use crate::checks::{self, Checks, Report, StartError};
use crate::identity::{fingerprint, Identity};
use crate::tls;

/// Server name every Keyline connection uses; trust comes from pinning.
pub const SERVER_NAME: &str = "keyline";

/// Bytes of datagrams a connection queues for sending; a sender that
/// checks `datagram_send_buffer_space` against it knows what is queued.
pub const DATAGRAM_SEND_BUFFER: usize = 256 * 1024;

/// Our transport settings. `ack_every`: ask the peer to acknowledge only
/// every that many ack-eliciting packets (QUIC ack frequency) rather than
/// every other one, so that a busy end receives and decrypts fewer
/// ACK-only packets, and its peer builds and sends fewer.
fn transport_config(ack_every: Option<u32>) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    // Idle timeout bounds how long a vanished peer goes unnoticed.
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        10_000,
    ))));
    t.datagram_receive_buffer_size(Some(256 * 1024));
    t.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    if let Some(n) = ack_every {
        let mut acks = quinn::AckFrequencyConfig::default();
        acks.ack_eliciting_threshold(quinn::VarInt::from_u32(n));
        t.ack_frequency_config(Some(acks));
    }
    t
}

/// The server side of our endpoints; `ack_every` as in
/// [`client_config_with`], asked of every peer.
pub fn server_config(id: &Identity, ack_every: Option<u32>) -> Result<quinn::ServerConfig> {
    server_config_with(id, transport_config(ack_every))
}

fn server_config_with(id: &Identity, t: quinn::TransportConfig) -> Result<quinn::ServerConfig> {
    let server_crypto = QuicServerConfig::try_from(tls::server_config(id)?)
        .context("building the QUIC server configuration")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(Arc::new(t));
    Ok(server)
}

/// What a peer may make a server that takes only control connections
/// (the directory) hold for it: quinn's defaults let each connection open
/// 100 streams of each kind with 1.25 MB of receive window each and no
/// connection-wide bound, so one client could pin hundreds of megabytes
/// in streams the server never reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlLimits {
    /// Bidirectional streams a peer may have open at once.
    pub bidi_streams: u32,
    /// Unidirectional streams a peer may open at once (0: none).
    pub uni_streams: u32,
    /// Receive window of one stream, in bytes.
    pub stream_window: u32,
    /// Receive window of the whole connection (all streams), in bytes.
    pub connection_window: u32,
    /// Whether the peer may send datagrams (buffered until read).
    pub datagrams: bool,
}

/// [`server_config`] with a control server's [`ControlLimits`].
pub fn control_server_config(
    id: &Identity,
    ack_every: Option<u32>,
    limits: ControlLimits,
) -> Result<quinn::ServerConfig> {
    let mut t = transport_config(ack_every);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(limits.bidi_streams))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(limits.uni_streams))
        .stream_receive_window(quinn::VarInt::from_u32(limits.stream_window))
        .receive_window(quinn::VarInt::from_u32(
            limits.connection_window.max(limits.stream_window),
        ));
    if !limits.datagrams {
        t.datagram_receive_buffer_size(None);
    }
    server_config_with(id, t)
}

/// Bind the process's endpoint: it accepts connections (requiring a client
/// certificate) and makes them.
pub fn make_endpoint(bind: SocketAddr, id: &Identity) -> Result<quinn::Endpoint> {
    Ok(make_endpoint_with_puncher(bind, id)?.0)
}

/// [`make_endpoint`], and a [`Puncher`] that sends from the endpoint's
/// own UDP port.
pub fn make_endpoint_with_puncher(
    bind: SocketAddr,
    id: &Identity,
) -> Result<(quinn::Endpoint, Puncher)> {
    let server = server_config(id, None)?;
    let socket = bind_udp(bind)?;
    let punch = socket.try_clone().context("sharing the UDP socket")?;
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    let mut ep = quinn::Endpoint::new(endpoint_config(id), Some(server), socket, runtime)
        .with_context(|| format!("starting QUIC on UDP {bind}"))?;
    ep.set_default_client_config(client_config(id, None)?);
    Ok((ep, Puncher(Arc::new(punch))))
}

/// A UDP socket on `bind` with the buffers [`grow_buffers`] asks for.
fn bind_udp(bind: SocketAddr) -> Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(bind).with_context(|| format!("binding UDP {bind}"))?;
    grow_buffers(&socket);
    Ok(socket)
}

/// An endpoint for a server of control connections only (the directory,
/// with its [`control_server_config`]): like [`make_endpoint`], but it
/// sends one datagram per transmit instead of a segmentation-offload
/// batch. quinn keeps each connection's transmit buffer at the largest
/// batch it ever built (up to ten datagrams, about 13 KiB a connection,
/// an eighth of what a registered idle terminal cost the directory), and
/// the batches only help a connection that sends much at once, which
/// control connections never do.
pub fn make_control_endpoint(
    bind: SocketAddr,
    id: &Identity,
    server: quinn::ServerConfig,
) -> Result<quinn::Endpoint> {
    let socket = bind_udp(bind)?;
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    let inner = runtime
        .wrap_udp_socket(socket)
        .with_context(|| format!("starting QUIC on UDP {bind}"))?;
    let mut ep = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(id),
        Some(server),
        Arc::new(OneDatagram(inner)),
        runtime,
    )
    .with_context(|| format!("starting QUIC on UDP {bind}"))?;
    ep.set_default_client_config(client_config(id, None)?);
    Ok(ep)
}

/// A UDP socket that takes one datagram per send ([`make_control_endpoint`]).
#[derive(Debug)]
struct OneDatagram(Arc<dyn quinn::AsyncUdpSocket>);

impl quinn::AsyncUdpSocket for OneDatagram {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.0.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

/// [`make_endpoint_with_puncher`], with connectivity checks
/// ([`crate::checks`]) on the same UDP port: the socket sets check
/// datagrams aside before QUIC sees them, and a task sends the checks the
/// [`Checker`] decides on. Must be called within a tokio runtime.
pub fn make_endpoint_with_checks(
    bind: SocketAddr,
    id: &Identity,
) -> Result<(quinn::Endpoint, Puncher, Checker)> {
    let server = server_config(id, None)?;
    let socket = bind_udp(bind)?;
    let punch = Arc::new(socket.try_clone().context("sharing the UDP socket")?);
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    let inner = runtime
        .wrap_udp_socket(socket)
        .with_context(|| format!("starting QUIC on UDP {bind}"))?;
    let checker = Checker {
        core: Arc::new(std::sync::Mutex::new(Checks::new())),
        wake: Arc::new(tokio::sync::Notify::new()),
        found: Arc::new(tokio::sync::watch::Sender::new(0)),
    };
    let wrapped = Arc::new(CheckSocket {
        inner,
        checker: checker.clone(),
    });
    let mut ep = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(id),
        Some(server),
        wrapped,
        runtime,
    )
    .with_context(|| format!("starting QUIC on UDP {bind}"))?;
    ep.set_default_client_config(client_config(id, None)?);
    tokio::spawn(drive_checks(
        Arc::downgrade(&checker.core),
        checker.wake.clone(),
        punch.clone(),
    ));
    Ok((ep, Puncher(punch), checker))
}

/// The connectivity checks of an endpoint's calls (see
/// [`crate::checks`]); cheap to clone.
#[derive(Debug, Clone)]
pub struct Checker {
    core: Arc<std::sync::Mutex<Checks>>,
    wake: Arc<tokio::sync::Notify>,
    /// [`Checks::found`], for diallers that wait for new addresses.
    found: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Checker {
    fn core(&self) -> std::sync::MutexGuard<'_, Checks> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start checking `call` (see [`Checks::start`]).
    pub fn start(
        &self,
        call: u64,
        key: &str,
        candidates: &[SocketAddr],
        delay: Duration,
    ) -> std::result::Result<(), StartError> {
        self.core()
            .start(Instant::now(), call, key, candidates, delay)?;
        self.wake.notify_one();
        Ok(())
    }

    /// Stop checking `call`.
    pub fn stop(&self, call: u64) {
        self.core().stop(call);
    }

    /// What the checks of `call` found so far.
    pub fn report(&self, call: u64) -> Option<Report> {
        self.core().report(Instant::now(), call)
    }

    /// Changes whenever the checks of some call learn or validate an
    /// address: a dialler awaits it, then asks [`Checker::report`].
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.found.subscribe()
    }
}

/// Send the checks the core decides on, when it decides; ends when the
/// endpoint and every [`Checker`] are gone.
async fn drive_checks(
    core: std::sync::Weak<std::sync::Mutex<Checks>>,
    wake: Arc<tokio::sync::Notify>,
    sock: Arc<std::net::UdpSocket>,
) {
    loop {
        let next = {
            let Some(core) = core.upgrade() else { return };
            let mut c = core.lock().unwrap_or_else(|p| p.into_inner());
            c.handle_timeout(Instant::now());
            while let Some((to, bytes)) = c.poll_transmit() {
                // Non-blocking (quinn set it so): a full buffer loses this
                // one check, and the next round sends another.
                let _ = sock.send_to(&bytes, to);
            }
            c.poll_timeout()
        };
        // Wake at least now and then to notice the endpoint is gone.
        let wait = next
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
        }
    }
}

/// The endpoint's UDP socket with check datagrams set aside on the way in.
#[derive(Debug)]
struct CheckSocket {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    checker: Checker,
}

impl CheckSocket {
    /// Take the checks out of the `n` datagrams received; how many are
    /// left for QUIC (moved to the front).
    fn set_aside(
        &self,
        n: usize,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> usize {
        let mut kept = 0;
        let mut answered = false;
        for i in 0..n {
            let m = meta[i];
            let data = &bufs[i][..m.len];
            let stride = m.stride.max(1);
            // A check of a call we do not (or no longer) check is
            // dropped too: shown to QUIC, it would draw a stateless reset.
            if data.chunks(stride).all(checks::is_check) {
                let mut core = self.checker.core();
                let now = Instant::now();
                let before = core.found();
                for seg in data.chunks(stride) {
                    answered |= core.handle_datagram(now, m.addr, seg);
                }
                let found = core.found();
                drop(core);
                if found != before {
                    self.checker.found.send_replace(found);
                }
                continue;
            }
            if kept != i {
                let (front, back) = bufs.split_at_mut(i);
                front[kept][..m.len].copy_from_slice(&back[0][..m.len]);
                meta[kept] = m;
            }
            kept += 1;
        }
        if answered {
            self.checker.wake.notify_one();
        }
        kept
    }
}

impl quinn::AsyncUdpSocket for CheckSocket {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                std::task::Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let kept = self.set_aside(n, bufs, meta);
            if kept > 0 {
                return std::task::Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// The endpoint's stateless reset key and the key that signs its
/// connection IDs come from its identity, not from chance: a process
/// killed without closing its connections and started again recognises
/// the connection IDs it gave out before and answers the peers' next
/// packets with resets they accept (the tokens are the same), so they
/// notice at once and reconnect, instead of waiting out the idle timeout
/// on a connection nobody holds any more.
fn endpoint_config(id: &Identity) -> quinn::EndpointConfig {
    let reset = id.derived_secret("quic stateless reset");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset);
    let cids = id.derived_secret("quic connection ids");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cids[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut cfg = quinn::EndpointConfig::new(Arc::new(key));
    cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    cfg
}

/// Socket buffer an endpoint asks for each way: a busy directory takes
/// bursts from many peers at once, and a datagram the kernel drops for
/// want of room is a retransmission later.
const SOCKET_BUFFER: usize = 4 << 20;

/// Ask for [`SOCKET_BUFFER`] each way: beyond the system's limit when the
/// process may (CAP_NET_ADMIN), else up to it. A smaller buffer still
/// works, so failures are only logged.
fn grow_buffers(socket: &std::net::UdpSocket) {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    // The kernel reports twice what it grants (its bookkeeping).
    let got = getsockopt(socket, sockopt::RcvBuf).unwrap_or(0) / 2;
    if got < SOCKET_BUFFER {
        tracing::debug!(
            "UDP receive buffer {got} bytes (asked {SOCKET_BUFFER}; raise net.core.rmem_max)"
        );
    }
}

/// Opens the way in through our own NAT (hole punching): a NAT that maps
/// our port to the same outside port whoever we send to lets a peer's
/// packets in once we have sent to it. The callee of a direct call sends a
/// few one-byte datagrams to the caller's addresses, so that the caller's
/// connection attempts, which come next, find the way open. QUIC ignores
/// such datagrams (too short to be a packet).
#[derive(Debug, Clone)]
pub struct Puncher(Arc<std::net::UdpSocket>);

impl Puncher {
    /// Send to each of `to` now and a few times over the next three
    /// seconds (the first datagrams may meet a mapping the far NAT has not
    /// made yet). Errors are ignored: this is only a help.
    pub fn punch(&self, to: Vec<SocketAddr>) {
        if to.is_empty() {
            return;
        }
        let sock = self.0.clone();
        tokio::spawn(async move {
            for delay_ms in [0u64, 150, 400, 800, 1500] {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                for a in &to {
                    // The socket is non-blocking (quinn set it so): a full
                    // buffer just skips this round.
                    let _ = sock.send_to(&[0], a);
                }
            }
        });
    }
}

/// A client configuration for one connection, pinning the server.
pub fn client_config(id: &Identity, pin: Option<String>) -> Result<quinn::ClientConfig> {
    client_config_with(id, pin, None)
}

/// [`client_config`], asking the server to acknowledge only every
/// `ack_every` ack-eliciting packets when given (for a connection that
/// may carry many requests to a busy server).
pub fn client_config_with(
    id: &Identity,
    pin: Option<String>,
    ack_every: Option<u32>,
) -> Result<quinn::ClientConfig> {
    client_config_from(id, pin, transport_config(ack_every))
}

fn client_config_from(
    id: &Identity,
    pin: Option<String>,
    t: quinn::TransportConfig,
) -> Result<quinn::ClientConfig> {
    let crypto = QuicClientConfig::try_from(tls::client_config(id, pin)?)
        .context("building the QUIC client configuration")?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(t));
    Ok(cfg)
}

/// How often a client pings its directory (or a gateway its uplink), and
/// how long the connection goes without hearing from the other end before
/// it is given up. A peer that vanished is noticed at most
/// `DIRECTORY_KEEP_ALIVE + DIRECTORY_IDLE_TIMEOUT` after its last packet
/// (QUIC restarts the idle timer at the first ping sent after a packet
/// arrives), 4 s, and the client resumes its session on another node of a
/// cluster. The cost: one ping and its acknowledgement a second per
/// connected client (about 150 bytes a second on the wire). Other
/// connections keep the gentler defaults of [`transport_config`].
pub const DIRECTORY_KEEP_ALIVE: Duration = Duration::from_secs(1);
pub const DIRECTORY_IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// [`client_config_with`] for a connection to a directory: it pings every
/// [`DIRECTORY_KEEP_ALIVE`] and gives up after [`DIRECTORY_IDLE_TIMEOUT`]
/// of silence (the lower of the two ends' timeouts applies to both).
pub fn directory_client_config(
    id: &Identity,
    pin: Option<String>,
    ack_every: Option<u32>,
) -> Result<quinn::ClientConfig> {
    let mut t = transport_config(ack_every);
    t.keep_alive_interval(Some(DIRECTORY_KEEP_ALIVE));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(DIRECTORY_IDLE_TIMEOUT)
            .context("the directory idle timeout")?,
    ));
    client_config_from(id, pin, t)
}

/// The fingerprint of the certificate the peer presented.
pub fn peer_fingerprint(conn: &quinn::Connection) -> Option<String> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| fingerprint(c))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::Path;

    use super::*;

    /// A client connected to a server that is then killed (its runtime
    /// dropped: no packet is sent, as with SIGKILL) and started again on
    /// the same port with `restarted_as`. What ends the client's
    /// connection within `wait`, if anything.
    fn after_server_restart(
        restarted_as: impl FnOnce(&Path) -> Identity,
        wait: Duration,
    ) -> Option<quinn::ConnectionError> {
        let dir = std::env::temp_dir().join(format!(
            "keyline-net-reset-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let server_id = Identity::load_or_create(&dir, "server").unwrap();
        let client_id = Identity::generate("client").unwrap();
        let server_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        {
            let id = Identity::load_or_create(&dir, "server").unwrap();
            server_rt.spawn(async move {
                let ep = make_endpoint("127.0.0.1:0".parse().unwrap(), &id).unwrap();
                addr_tx.send(ep.local_addr().unwrap()).unwrap();
                let conn = ep.accept().await.unwrap().await.unwrap();
                held_tx.send(()).unwrap();
                // Held until the runtime goes, never closed.
                std::future::pending::<()>().await;
                drop((ep, conn));
            });
        }
        let addr: SocketAddr = addr_rx.recv().unwrap();
        let pin = Some(server_id.fingerprint.clone());
        let conn = client_rt.block_on(async {
            let ep = make_endpoint("127.0.0.1:0".parse().unwrap(), &client_id).unwrap();
            let cfg = client_config(&client_id, pin).unwrap();
            let conn = ep
                .connect_with(cfg, addr, SERVER_NAME)
                .unwrap()
                .await
                .unwrap();
            // The endpoint lives on in the connection's driver.
            conn
        });
        held_rx.recv().unwrap();
        drop(server_rt);
        let again = restarted_as(&dir);
        let ended = client_rt.block_on(async {
            let _server = make_endpoint(addr, &again).unwrap();
            tokio::time::timeout(wait, conn.closed()).await.ok()
        });
        let _ = std::fs::remove_dir_all(&dir);
        ended
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }

    /// A control endpoint sends one datagram per transmit, and a stream
    /// far larger than a datagram still crosses whole, both ways.
    #[tokio::test]
    async fn a_control_endpoint_carries_large_streams_one_datagram_at_a_time() {
        let server_id = Identity::generate("server").unwrap();
        let client_id = Identity::generate("client").unwrap();
        let limits = ControlLimits {
            bidi_streams: 4,
            uni_streams: 0,
            stream_window: 256 * 1024,
            connection_window: 1024 * 1024,
            datagrams: false,
        };
        let cfg = control_server_config(&server_id, None, limits).unwrap();
        let server =
            make_control_endpoint("127.0.0.1:0".parse().unwrap(), &server_id, cfg).unwrap();
        let addr = server.local_addr().unwrap();
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let echo = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let got = recv.read_to_end(1 << 20).await.unwrap();
            send.write_all(&got).await.unwrap();
            send.finish().unwrap();
            conn.closed().await;
            conn.stats().udp_tx
        });
        let client = make_endpoint("127.0.0.1:0".parse().unwrap(), &client_id).unwrap();
        let cfg = client_config(&client_id, Some(server_id.fingerprint.clone())).unwrap();
        let conn = client
            .connect_with(cfg, addr, SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&body).await.unwrap();
        send.finish().unwrap();
        let back = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, body);
        conn.close(quinn::VarInt::from_u32(0), b"done");
        let sent = echo.await.unwrap();
        // One datagram per send: never a batch.
        assert!(sent.datagrams > 100, "{sent:?}");
        assert_eq!(sent.ios, sent.datagrams, "{sent:?}");
    }

    #[test]
    fn a_restarted_endpoint_resets_the_connections_of_the_one_before() {
        let t = std::time::Instant::now();
        let ended = after_server_restart(
            |dir| Identity::load_or_create(dir, "server").unwrap(),
            Duration::from_secs(6),
        );
        assert!(
            matches!(ended, Some(quinn::ConnectionError::Reset)),
            "{ended:?} after {:?}",
            t.elapsed()
        );
        // Another identity's resets are not believed (the idle timeout
        // would end the connection, much later).
        let ended = after_server_restart(
            |_| Identity::generate("another").unwrap(),
            Duration::from_secs(3),
        );
        assert!(ended.is_none(), "{ended:?}");
    }
}
