//! The directory's web site over real HTTPS, from the real
//! `keyline-directory` binary on loopback: HSTS is sent with a configured
//! certificate and not with the directory's self-signed identity; the
//! set-up page lists the `.deb` packages of `[web] packages` with their
//! size and SHA-256, each downloads byte for byte, and nothing else in
//! or outside the folder can be fetched through it.
//!
//! Run after `cargo build --workspace --bins` (as `make test` does).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyline_tests::{bin, form_encode, jstr, wait_for, Daemon, Scratch};
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const PW: &str = "correct horse battery";

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A directory serving its site on a port of its own, with `web_extra`
/// added to its `[web]` section.
fn start(scratch: &Scratch, name: &str, web_extra: &str) -> (Daemon, SocketAddr) {
    let port = free_tcp_port();
    let cfg = scratch.join(&format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!("[web]\nlisten = \"127.0.0.1:{port}\"\n{web_extra}"),
    )
    .unwrap();
    let d = Daemon::start(
        None,
        bin("keyline-directory"),
        &scratch.join(name),
        &[
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    )
    .expect("start the directory");
    let web = wait_for("the directory's site", Duration::from_secs(15), || {
        jstr(&d.json(&["status"]).ok()?, &["web"])
    });
    assert_eq!(web, format!("https://127.0.0.1:{port}/"));
    (d, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A reply: status, headers (lower-case names), body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The CSRF token of the page's first form.
    fn csrf(&self) -> String {
        let body = self.text();
        let key = "name=\"csrf\" value=\"";
        let i = body.find(key).expect("a form with a CSRF token") + key.len();
        body[i..].split('"').next().unwrap().to_string()
    }
}

/// A browser over HTTPS (HTTP/1.1, a connection a request) that trusts
/// one certificate and keeps cookies.
struct Browser {
    addr: SocketAddr,
    /// The name the certificate is for.
    name: ServerName<'static>,
    tls: TlsConnector,
    cookies: HashMap<String, String>,
}

impl Browser {
    fn new(addr: SocketAddr, trust: CertificateDer<'static>, name: &str) -> Browser {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trust).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Browser {
            addr,
            name: ServerName::try_from(name.to_string()).expect("name"),
            tls: TlsConnector::from(Arc::new(config)),
            cookies: HashMap::new(),
        }
    }

    async fn send(&mut self, method: &str, path: &str, form: Option<&[(&str, &str)]>) -> Reply {
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        let mut s = self
            .tls
            .connect(self.name.clone(), tcp)
            .await
            .expect("a TLS handshake that verifies the site's certificate");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n",
            self.addr.port()
        );
        if !self.cookies.is_empty() {
            let c: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req.push_str(&format!("Cookie: {}\r\n", c.join("; ")));
        }
        let body = form.map(|f| {
            f.iter()
                .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
                .collect::<Vec<_>>()
                .join("&")
        });
        if let Some(b) = &body {
            req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        req.push_str(body.as_deref().unwrap_or(""));
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
            .await
            .expect("a reply within 20 s")
            .expect("read");
        let reply = parse(&raw);
        for (k, v) in &reply.headers {
            if k != "set-cookie" {
                continue;
            }
            let pair = v.split(';').next().unwrap_or("");
            if let Some((name, val)) = pair.split_once('=') {
                if val.is_empty() || v.contains("Max-Age=0") {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_string(), val.to_string());
                }
            }
        }
        reply
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, None).await
    }

    async fn log_in(&mut self, id: &str, pw: &str) {
        let page = self.get("/login").await;
        assert_eq!(page.status, 200);
        let csrf = page.csrf();
        let r = self
            .send(
                "POST",
                "/login",
                Some(&[("csrf", &csrf), ("id", id), ("password", pw)]),
            )
            .await;
        assert_eq!(r.status, 303, "login: {}", r.text());
    }
}

/// An HTTP/1.1 reply read to the end of the connection.
fn parse(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size");
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..nl])
                    .split(';')
                    .next()
                    .unwrap()
                    .trim(),
                16,
            )
            .expect("chunk size");
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse::<usize>().expect("content-length"))
    {
        assert_eq!(body.len(), len, "the body is as long as announced");
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// A certificate for `localhost` with its key, as PEM files in `dir`.
fn write_cert(dir: &Path) -> (CertificateDer<'static>, String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert = dir.join("web.pem");
    let key = dir.join("web.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (
        ck.cert.der().clone(),
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn hsts_only_with_a_configured_certificate() {
    let scratch = Scratch::new("webhsts");
    let (trust, cert, key) = write_cert(&scratch.join(""));
    let (d, addr) = start(
        &scratch,
        "real",
        &format!("cert = \"{cert}\"\nkey = \"{key}\"\n"),
    );
    let mut b = Browser::new(addr, trust, "localhost");
    for path in ["/", "/login", "/assets/keyline.css", "/no-such-page"] {
        let r = b.get(path).await;
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=31536000"),
            "{path}: {}",
            r.status
        );
    }
    drop(d);

    // No certificate: the directory's own identity, which the browser
    // cannot trust for good, so no HSTS.
    let (d, addr) = start(&scratch, "selfsigned", "");
    let own = std::fs::read(d.state.join("cert.der")).expect("the directory's identity");
    let mut b = Browser::new(addr, CertificateDer::from(own), "keyline-directory");
    for path in ["/", "/login"] {
        let r = b.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-security-policy").is_some(),
            "{path}: the other security headers are sent"
        );
        assert_eq!(r.header("strict-transport-security"), None, "{path}");
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[tokio::test]
async fn the_packages_folder_is_listed_and_downloaded_and_nothing_else() {
    let scratch = Scratch::new("webpkg");
    let (trust, cert, key) = write_cert(&scratch.join(""));
    let debs = scratch.join("debs");
    std::fs::create_dir_all(&debs).unwrap();
    let a: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let b_bytes = b"!<arch>\ndebian-binary   a small one\n".to_vec();
    std::fs::write(debs.join("keyline_0.1.0_amd64.deb"), &a).unwrap();
    std::fs::write(debs.join("keyline-agent_0.1.0_arm64.deb"), &b_bytes).unwrap();
    // Not offered: another kind of file, a hidden one, a folder named
    // like a package, and a link out of the folder.
    std::fs::write(debs.join("notes.txt"), b"not a package").unwrap();
    std::fs::write(debs.join(".hidden.deb"), b"hidden").unwrap();
    std::fs::create_dir_all(debs.join("dir.deb")).unwrap();
    let secret = scratch.join("secret.deb");
    std::fs::write(&secret, b"outside the folder").unwrap();
    std::os::unix::fs::symlink(&secret, debs.join("link.deb")).unwrap();

    let (d, addr) = start(
        &scratch,
        "dir",
        &format!(
            "cert = \"{cert}\"\nkey = \"{key}\"\npackages = \"{}\"\n",
            debs.display()
        ),
    );
    keyline_tests::add_account(&d.state, "minjun", &["김민준"], PW);
    let mut b = Browser::new(addr, trust, "localhost");

    // Downloads need no login, but the page does.
    let r = b.get("/setup").await;
    assert_ne!(r.status, 200, "the set-up page without a login");
    b.log_in("minjun", PW).await;
    let page = b.get("/setup").await;
    assert_eq!(page.status, 200);
    let html = page.text();
    for (name, bytes, size) in [
        (
            "keyline_0.1.0_amd64.deb",
            &a,
            "2.9 KiB (3000 bytes)".to_string(),
        ),
        (
            "keyline-agent_0.1.0_arm64.deb",
            &b_bytes,
            format!("{} bytes", b_bytes.len()),
        ),
    ] {
        let link = format!("href=\"/packages/{name}\"");
        let row = html
            .split("<tr>")
            .find(|r| r.contains(&link))
            .unwrap_or_else(|| panic!("{name} is not listed: {html}"));
        assert!(row.contains(&format!("<td>{size}</td>")), "{name}: {row}");
        assert!(row.contains(&sha256_hex(bytes)), "{name}: {row}");

        let r = b.get(&format!("/packages/{name}")).await;
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(&r.body, bytes, "{name}: the exact bytes");
        assert_eq!(
            r.header("content-type"),
            Some("application/vnd.debian.binary-package")
        );
        assert_eq!(
            r.header("content-disposition").map(str::to_string),
            Some(format!("attachment; filename=\"{name}\""))
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }
    for hidden in [
        "notes.txt",
        ".hidden.deb",
        "dir.deb",
        "link.deb",
        "secret.deb",
    ] {
        assert!(!html.contains(hidden), "{hidden} is listed");
    }

    // Nothing but a listed package comes out, whatever the path says.
    for path in [
        "/packages/notes.txt",
        "/packages/.hidden.deb",
        "/packages/dir.deb",
        "/packages/link.deb",
        "/packages/../secret.deb",
        "/packages/..%2Fsecret.deb",
        "/packages/..%2fsecret.deb",
        "/packages/%2e%2e%2fsecret.deb",
        "/packages/%2E%2E%2Fsecret.deb",
        "/packages/..%5Csecret.deb",
        "/packages/%2e%2e/secret.deb",
        "/packages/..%252Fsecret.deb",
        "/packages/debs%2F..%2F..%2Fsecret.deb",
        "/packages/%2Fetc%2Fpasswd.deb",
        "/packages/keyline_0.1.0_amd64.deb%00.deb",
        "/packages/nothing.deb",
    ] {
        let r = b.get(path).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert!(!r.text().contains("outside the folder"), "{path}");
        assert!(!r.text().contains("not a package"), "{path}");
    }
}
