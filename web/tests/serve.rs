//! The HTTPS loop on real sockets: TLS 1.3 with ALPN, the security headers,
//! the peer's address, body and header limits, the connection cap, and a
//! graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use axum::Router;
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
