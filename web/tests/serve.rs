//! The HTTPS loop on real sockets: TLS 1.3 with ALPN, the security headers,
//! the peer's address, body and header limits, idle connections over
//! HTTP/1.1 and HTTP/2 (event streams kept), the connection cap, and a
//! graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use keyline_web::{headers, serve_https, tls, Limits};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

struct Site {
    addr: SocketAddr,
    cert: CertificateDer<'static>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(limits: Limits) -> Site {
    let id = keyline_net::identity::Identity::generate("localhost").expect("identity");
    let config = tls::server_config(vec![id.cert.clone()], id.key()).expect("tls config");
    let app = Router::new()
        .route(
            "/",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                axum::response::Html(format!("<p>hello {}</p>", peer.ip()))
            }),
        )
        .route(
            "/echo",
            post(|body: String| async move { body.len().to_string() }),
        )
        // One event, then nothing more for ever (and no keep-alive
        // comments): a response in flight that sends no bytes.
        .route(
            "/events",
            get(|| async {
                let events = futures_util::stream::once(async {
                    Ok::<_, std::convert::Infallible>(Event::default().data("first"))
                })
                .chain(futures_util::stream::pending());
                Sse::new(events)
            }),
        )
        .layer(headers::layer(false));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(serve_https(listener, config, app, limits, async move {
        let _ = stopped.await;
    }));
    Site {
        addr,
        cert: id.cert,
        stop: Some(stop),
        done,
    }
}

fn connector(cert: &CertificateDer<'static>, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

async fn connect(site: &Site, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(site.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    connector(&site.cert, alpn)
        .connect(name, tcp)
        .await
        .expect("handshake")
}

async fn exchange(stream: &mut TlsStream<TcpStream>, request: &[u8]) -> String {
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn tls13_alpn_headers_and_the_peer_address() {
    let site = start(Limits::default()).await;
    let s = connect(&site, &[b"h2", b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    drop(s);

    let mut s = connect(&site, &[b"http/1.1"]).await;
    let reply = exchange(
        &mut s,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let lower = reply.to_ascii_lowercase();
    for h in [
        "content-security-policy: default-src 'none'; script-src 'self'",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
        "cache-control: no-store",
    ] {
        assert!(lower.contains(h), "missing {h}: {reply}");
    }
    assert!(!lower.contains("strict-transport-security"), "{reply}");
    assert!(reply.contains("<p>hello 127.0.0.1</p>"), "{reply}");
}

#[tokio::test]
async fn oversized_bodies_and_silent_clients_are_refused() {
    let site = start(Limits {
        header_timeout: Duration::from_millis(300),
        body_limit: 1024,
        ..Limits::default()
    })
    .await;
    let mut s = connect(&site, &[b"http/1.1"]).await;
    let body = "x".repeat(4096);
    let req = format!(
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let reply = exchange(&mut s, req.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");

    let mut s = connect(&site, &[b"http/1.1"]).await;
    let reply = exchange(
        &mut s,
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with("\r\n5"),
        "{reply}"
    );

    // Half a request line, then nothing: the connection is closed after
    // the header deadline instead of being held open.
    let mut s = connect(&site, &[b"http/1.1"]).await;
    s.write_all(b"GET / HT").await.expect("write");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the silent client was kept past the deadline");

    // A TCP connection that never starts TLS is closed too.
    let mut tcp = TcpStream::connect(site.addr).await.expect("connect");
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "a silent TCP connection was kept past the deadline"
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_and_shutdown_is_graceful() {
    let mut site = start(Limits {
        max_connections: 2,
        ..Limits::default()
    })
    .await;
    let a = connect(&site, &[b"http/1.1"]).await;
    let b = connect(&site, &[b"http/1.1"]).await;
    let tcp = TcpStream::connect(site.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let third = connector(&site.cert, &[b"http/1.1"])
        .connect(name, tcp)
        .await;
    assert!(third.is_err(), "a third connection was served");
    drop((a, b));
    // Room again once the others have gone.
    let mut again = None;
    for _ in 0..50 {
        let tcp = TcpStream::connect(site.addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        if let Ok(s) = connector(&site.cert, &[b"http/1.1"])
            .connect(name, tcp)
            .await
        {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut s = again.expect("the cap was not released");
    let reply = exchange(
        &mut s,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    if let Some(stop) = site.stop.take() {
        let _ = stop.send(());
    }
    let result = tokio::time::timeout(Duration::from_secs(10), &mut site.done)
        .await
        .expect("shutdown took too long")
        .expect("serve task");
    assert!(result.is_ok());
    assert!(
        TcpStream::connect(site.addr).await.is_err(),
        "still listening"
    );
}

#[tokio::test]
async fn tls12_is_refused() {
    let site = start(Limits::default()).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(site.cert.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(site.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let result = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;
    assert!(result.is_err(), "a TLS 1.2 client was served");
}

/// Short deadlines for the tests of idle and slow clients.
fn short() -> Limits {
    Limits {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        ..Limits::default()
    }
}

/// Generous: only whether the server closes, never how fast.
const CLOSED_WITHIN: Duration = Duration::from_secs(10);

/// Reads until the server closes the connection (end of stream or an
/// error such as a reset); `None` if it was still open after
/// [`CLOSED_WITHIN`].
async fn read_until_closed(stream: &mut TlsStream<TcpStream>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + CLOSED_WITHIN;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_GOAWAY: u8 = 0x7;
const H2_DATA: u8 = 0x0;

/// An HTTP/2 frame: type, flags, stream, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame size");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The complete frames in `bytes` (type, stream, payload), in order.
fn h2_frames(bytes: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        if rest.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        out.push((rest[3], stream, rest[9..9 + len].to_vec()));
        rest = &rest[9 + len..];
    }
    out
}

/// The client's side of an HTTP/2 start: the preface and empty settings.
async fn h2_start(site: &Site) -> TlsStream<TcpStream> {
    let mut s = connect(site, &[b"h2"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut hello = H2_PREFACE.to_vec();
    hello.extend(h2_frame(0x4, 0, 0, &[]));
    s.write_all(&hello).await.expect("write");
    s
}

#[tokio::test]
async fn idle_connections_are_closed_whatever_the_protocol() {
    let site = start(short()).await;

    // HTTP/2 by ALPN, then not a byte: closed, where hyper's HTTP/1
    // header deadline never applied (the protocol is not known yet).
    let mut s = connect(&site, &[b"h2"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert!(
        read_until_closed(&mut s).await.is_some(),
        "a silent HTTP/2 client was kept open"
    );

    // A full HTTP/2 start (preface and settings), then no request: told
    // GOAWAY and closed, though it never answers the server's ping.
    let mut s = h2_start(&site).await;
    let bytes = read_until_closed(&mut s)
        .await
        .expect("an HTTP/2 connection with no request was kept open");
    assert!(
        h2_frames(&bytes)
            .iter()
            .any(|(kind, ..)| *kind == H2_GOAWAY),
        "no GOAWAY before the close: {bytes:?}"
    );

    // HTTP/1.1 keep-alive: one request answered, then nothing.
    let mut s = connect(&site, &[b"http/1.1"]).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let bytes = read_until_closed(&mut s)
        .await
        .expect("an idle keep-alive connection was kept open");
    let reply = String::from_utf8_lossy(&bytes);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // HTTP/1.1, half the headers (the request line and one header).
    let mut s = connect(&site, &[b"http/1.1"]).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write");
    assert!(
        read_until_closed(&mut s).await.is_some(),
        "a client that sent half its headers was kept open"
    );
}

#[tokio::test]
async fn the_idle_deadline_frees_the_connection_cap() {
    let site = start(Limits {
        max_connections: 1,
        ..short()
    })
    .await;
    let _silent = connect(&site, &[b"h2"]).await;
    let mut served = None;
    let deadline = tokio::time::Instant::now() + CLOSED_WITHIN;
    while served.is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(tcp) = TcpStream::connect(site.addr).await else {
            continue;
        };
        let name = ServerName::try_from("localhost").expect("name");
        let Ok(mut s) = connector(&site.cert, &[b"http/1.1"])
            .connect(name, tcp)
            .await
        else {
            continue;
        };
        let reply = exchange(
            &mut s,
            b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        if reply.starts_with("HTTP/1.1 200") {
            served = Some(reply);
        }
    }
    assert!(
        served.is_some(),
        "a silent HTTP/2 client kept the only connection place"
    );
}

/// Reads for `period` and fails if the connection closes (or says
/// GOAWAY, for HTTP/2) meanwhile.
async fn stays_open(s: &mut TlsStream<TcpStream>, period: Duration, h2: bool) {
    let until = tokio::time::Instant::now() + period;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => panic!("the event stream was closed"),
            Ok(Err(e)) => panic!("the event stream was cut: {e}"),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
    if h2 {
        assert!(
            !h2_frames(&seen).iter().any(|(kind, ..)| *kind == H2_GOAWAY),
            "GOAWAY on a connection with an event stream open"
        );
    }
}

#[tokio::test]
async fn event_streams_are_not_cut_by_the_idle_deadline() {
    let site = start(short()).await;
    // Several idle periods with no byte either way.
    let quiet = Duration::from_millis(1500);

    // HTTP/1.1.
    let mut s = connect(&site, &[b"http/1.1"]).await;
    s.write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("data: first") {
        let n = tokio::time::timeout(CLOSED_WITHIN, s.read(&mut buf))
            .await
            .expect("the first event")
            .expect("read");
        assert!(n > 0, "closed before the first event");
        got.extend_from_slice(&buf[..n]);
    }
    stays_open(&mut s, quiet, false).await;

    // HTTP/2: GET /events on stream 1 (HPACK: :method GET, :scheme
    // https, :path as a literal, :authority as a literal).
    let mut s = h2_start(&site).await;
    let mut block = vec![0x82, 0x87, 0x44, 7];
    block.extend_from_slice(b"/events");
    block.extend_from_slice(&[0x41, 9]);
    block.extend_from_slice(b"localhost");
    // END_STREAM | END_HEADERS.
    s.write_all(&h2_frame(0x1, 0x5, 1, &block))
        .await
        .expect("write");
    let mut got = Vec::new();
    loop {
        let n = tokio::time::timeout(CLOSED_WITHIN, s.read(&mut buf))
            .await
            .expect("the first event")
            .expect("read");
        assert!(n > 0, "closed before the first event");
        got.extend_from_slice(&buf[..n]);
        let frames = h2_frames(&got);
        assert!(
            !frames.iter().any(|(kind, ..)| *kind == H2_GOAWAY),
            "GOAWAY: {frames:?}"
        );
        if frames.iter().any(|(kind, stream, payload)| {
            *kind == H2_DATA
                && *stream == 1
                && String::from_utf8_lossy(payload).contains("data: first")
        }) {
            break;
        }
    }
    stays_open(&mut s, quiet, true).await;
}

#[tokio::test]
async fn a_body_that_stalls_or_trickles_gets_408() {
    let site = start(short()).await;

    // Headers with Content-Length, part of the body, then nothing.
    let mut s = connect(&site, &[b"http/1.1"]).await;
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabc",
    )
    .await
    .expect("write");
    let bytes = read_until_closed(&mut s)
        .await
        .expect("a stalled body kept its connection open");
    let reply = String::from_utf8_lossy(&bytes);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    // The handler's reply keeps the site's security headers.
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{reply}"
    );

    // A byte at a time, each well within the deadline, the whole far
    // beyond it: the deadline is for the whole body.
    let mut s = connect(&site, &[b"http/1.1"]).await;
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 40\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let (mut rd, mut wr) = tokio::io::split(s);
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            if wr.write_all(b"x").await.is_err() || wr.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(CLOSED_WITHIN, rd.read_to_end(&mut bytes)).await;
    trickle.abort();
    let reply = String::from_utf8_lossy(&bytes);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
}
