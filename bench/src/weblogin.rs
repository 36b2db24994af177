//! Logins on the directory's web site, at a steady rate, as browsers make
//! them: for each, a new TCP connection and TLS 1.3 handshake (the
//! directory's certificate trusted by its fingerprint, as the terminals
//! trust it), `GET /login` for the form's CSRF token and its cookie,
//! `POST /login` with the right password, then `GET /account` with the
//! session cookie the login set. HTTP/1.1 on hyper's client connection.
//!
//! Open loop: a visit starts every `1 / rate` seconds whatever the
//! earlier ones are doing, so a slow site meets more visits at once
//! rather than fewer. The directory's login limiter reserves attempts per
//! account from one address (5 in flight), per address (20) and per
//! account (100): the visits go round `accounts` accounts from
//! `addresses` source addresses on 127.0.0.0/8, each account always from
//! the same address, so that at 50 logins/s the limiter refuses nothing
//! unless logins are seconds late. A refusal (429) is counted apart from
//! other failures, so that the JSON says whether the limiter was touched,
//! and so is a login the directory turned away because its password
//! hashing queue was full (503: the phones come first).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use keyline_net::Identity;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio_rustls::TlsConnector;

use crate::util::{round, Summary};

/// What a run of web logins asks.
#[derive(Debug, Clone)]
pub struct WebLoad {
    /// The site, `https://ADDR/` as the directory's status gives it.
    pub site: SocketAddr,
    /// The directory's certificate fingerprint.
    pub fingerprint: String,
    pub accounts: Vec<String>,
    pub password: String,
    /// Visits started per second.
    pub rate: f64,
    /// Source addresses (127.0.0.2 on).
    pub addresses: usize,
    /// How long a visit may take before it counts as failed.
    pub timeout: Duration,
}

/// One visit: when it started and how each step went.
#[derive(Debug, Clone, Default)]
struct Visit {
    started: Option<Instant>,
    /// TCP connect + TLS handshake, ms.
    connect_ms: Option<f64>,
    login_page_ms: Option<f64>,
    login_post_ms: Option<f64>,
    account_ms: Option<f64>,
    /// The limiter said 429.
    limited: bool,
    /// The directory's hashing queue was full: 503, try again.
    busy: bool,
    error: Option<String>,
}

/// The source address of visit `i` to `accounts` accounts: the account's
/// own, so that an account is always seen from one address.
fn source(account: usize, addresses: usize) -> IpAddr {
    let k = account % addresses.max(1);
    // 127.0.0.2 … 127.0.0.254, then round again.
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (k % 253) as u8))
}

/// `application/x-www-form-urlencoded` of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The value of the hidden `csrf` field of a form page.
fn csrf_of(html: &str) -> Option<&str> {
    const FIELD: &str = "name=\"csrf\" value=\"";
    let at = html.find(FIELD)? + FIELD.len();
    let rest = html.get(at..)?;
    rest.find('"').and_then(|end| rest.get(..end))
}

/// The `name=value` of every `Set-Cookie` of a response, joined for a
/// `Cookie` header.
fn cookies_of(headers: &hyper::HeaderMap) -> String {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// One HTTP/1.1 connection to the site.
struct Conn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

impl Conn {
    async fn open(tls: &TlsConnector, site: SocketAddr, from: IpAddr) -> Result<Conn> {
        let sock = tokio::net::TcpSocket::new_v4().context("a TCP socket")?;
        sock.bind(SocketAddr::new(from, 0))
            .with_context(|| format!("binding {from}"))?;
        let tcp = sock
            .connect(site)
            .await
            .with_context(|| format!("connecting to {site}"))?;
        tcp.set_nodelay(true).context("TCP_NODELAY")?;
        let stream = tls
            .connect(ServerName::IpAddress(site.ip().into()), tcp)
            .await
            .context("the TLS handshake")?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("the HTTP/1.1 handshake")?;
        // Ends when `send` is dropped and the connection is closed.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = HeaderValue::from_str(&site.to_string()).context("the Host header")?;
        Ok(Conn { send, host })
    }

    /// One request; the status, the cookies set and the body.
    async fn ask(
        &mut self,
        method: &str,
        path: &str,
        cookie: &str,
        form: Option<String>,
    ) -> Result<(StatusCode, String, String)> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.host.clone());
        if !cookie.is_empty() {
            req = req.header(header::COOKIE, cookie);
        }
        if form.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let body = Full::new(Bytes::from(form.unwrap_or_default()));
        let req = req
            .body(body)
            .with_context(|| format!("building {method} {path}"))?;
        self.send.ready().await.context("the connection closed")?;
        let resp = self
            .send
            .send_request(req)
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let set = cookies_of(resp.headers());
        let body = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the answer to {method} {path}"))?
            .to_bytes();
        Ok((status, set, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// One visit: log in as `account` from `from` and open the account page.
async fn visit(
    tls: &TlsConnector,
    site: SocketAddr,
    from: IpAddr,
    account: &str,
    password: &str,
    v: &mut Visit,
) -> Result<()> {
    let t = Instant::now();
    let mut c = Conn::open(tls, site, from).await?;
    v.connect_ms = Some(ms_since(t));

    let t = Instant::now();
    let (status, form_cookie, html) = c.ask("GET", "/login", "", None).await?;
    v.login_page_ms = Some(ms_since(t));
    if status != StatusCode::OK {
        bail!("GET /login: {status}");
    }
    let csrf = csrf_of(&html).context("no CSRF token on the login page")?;
    if form_cookie.is_empty() {
        bail!("GET /login set no form cookie");
    }

    let form = format!(
        "csrf={}&id={}&password={}",
        form_encode(csrf),
        form_encode(account),
        form_encode(password)
    );
    let t = Instant::now();
    let (status, session, _) = c.ask("POST", "/login", &form_cookie, Some(form)).await?;
    v.login_post_ms = Some(ms_since(t));
    if status == StatusCode::TOO_MANY_REQUESTS {
        v.limited = true;
        bail!("POST /login: refused by the login limiter (429)");
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        v.busy = true;
        bail!("POST /login: the directory is busy hashing (503)");
    }
    if !status.is_redirection() || session.is_empty() {
        bail!("POST /login as {account}: {status}, no session");
    }

    let t = Instant::now();
    let (status, _, _) = c.ask("GET", "/account", &session, None).await?;
    v.account_ms = Some(ms_since(t));
    if status != StatusCode::OK {
        bail!("GET /account as {account}: {status}");
    }
    Ok(())
}

/// The TLS client side: TLS 1.3, HTTP/1.1, the site's certificate pinned
/// by its fingerprint (the site presents the directory's identity).
fn connector(fingerprint: &str) -> Result<TlsConnector> {
    let id = Identity::generate("keyline-bench web")?;
    let mut cfg = keyline_net::tls::client_config(&id, Some(fingerprint.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// A running web load; [`Running::finish`] stops it and gives the visits.
pub struct Running {
    stop: Arc<AtomicBool>,
    pacer: tokio::task::JoinHandle<Vec<tokio::task::JoinHandle<Visit>>>,
}

/// Start visits at `load.rate` until stopped.
pub fn start(load: &WebLoad) -> Result<Running> {
    if load.accounts.is_empty() || !load.rate.is_finite() || load.rate <= 0.0 {
        bail!("web logins need accounts and a rate above 0");
    }
    let tls = connector(&load.fingerprint)?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = load.clone();
    let stopping = stop.clone();
    let pacer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / load.rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut visits = Vec::new();
        let mut i = 0usize;
        while !stopping.load(Ordering::Relaxed) {
            tick.tick().await;
            let k = i % load.accounts.len();
            i += 1;
            let account = load.accounts[k].clone();
            let from = source(k, load.addresses);
            let (tls, password, site, timeout) =
                (tls.clone(), load.password.clone(), load.site, load.timeout);
            visits.push(tokio::spawn(async move {
                let mut v = Visit {
                    started: Some(Instant::now()),
                    ..Visit::default()
                };
                let done = tokio::time::timeout(
                    timeout,
                    visit(&tls, site, from, &account, &password, &mut v),
                )
                .await;
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => v.error = Some(format!("{e:#}")),
                    Err(_) => v.error = Some(format!("no answer within {timeout:?}")),
                }
                v
            }));
        }
        visits
    });
    Ok(Running { stop, pacer })
}

impl Running {
    /// Stop starting visits, wait for those under way, and summarise the
    /// ones that started inside `window`.
    pub async fn finish(self, window: (Instant, Instant), load: &WebLoad) -> Result<Value> {
        self.stop.store(true, Ordering::Relaxed);
        let handles = self.pacer.await.context("the web load's pacer failed")?;
        let mut visits = Vec::with_capacity(handles.len());
        for h in handles {
            visits.push(h.await.context("a web visit failed")?);
        }
        Ok(summarise(&visits, window, load))
    }
}

fn summarise(visits: &[Visit], (t0, t1): (Instant, Instant), load: &WebLoad) -> Value {
    let inside: Vec<&Visit> = visits
        .iter()
        .filter(|v| v.started.is_some_and(|s| s >= t0 && s < t1))
        .collect();
    let secs = t1.saturating_duration_since(t0).as_secs_f64();
    let failed: Vec<&&Visit> = inside.iter().filter(|v| v.error.is_some()).collect();
    let limited = failed.iter().filter(|v| v.limited).count();
    let busy = failed.iter().filter(|v| v.busy).count();
    let ok = inside.len() - failed.len();
    let first_error = failed.iter().find_map(|v| v.error.clone());
    let lat = |f: fn(&Visit) -> Option<f64>| -> Value {
        let mut xs: Vec<f64> = inside.iter().filter_map(|v| f(v)).collect();
        let s = Summary::of(&mut xs);
        json!({"n": s.n, "p50": round(s.p50, 2), "p99": round(s.p99, 2), "max": round(s.max, 2)})
    };
    // Every page response together (the three requests of a visit).
    let mut pages: Vec<f64> = inside
        .iter()
        .flat_map(|v| [v.login_page_ms, v.login_post_ms, v.account_ms])
        .flatten()
        .collect();
    let all = Summary::of(&mut pages);
    json!({
        "rate_asked_per_s": load.rate,
        "accounts": load.accounts.len(),
        "source_addresses": load.addresses.max(1),
        "visits_started": inside.len(),
        "logins_ok": ok,
        "failed": failed.len(),
        "refused_by_limiter": limited,
        "turned_away_busy": busy,
        "first_error": first_error,
        "started_per_s": round(if secs > 0.0 { inside.len() as f64 / secs } else { 0.0 }, 1),
        "logins_ok_per_s": round(if secs > 0.0 { ok as f64 / secs } else { 0.0 }, 1),
        "latency_ms": {
            "connect_tls": lat(|v| v.connect_ms),
            "get_login": lat(|v| v.login_page_ms),
            "post_login": lat(|v| v.login_post_ms),
            "post_login_ok": lat(|v| if v.error.is_none() { v.login_post_ms } else { None }),
            "get_account": lat(|v| v.account_ms),
            "all_pages": {"n": all.n, "p50": round(all.p50, 2), "p99": round(all.p99, 2), "max": round(all.max, 2)},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_cookies_and_tokens() {
        assert_eq!(
            form_encode("keyline bench password"),
            "keyline+bench+password"
        );
        assert_eq!(form_encode("a&b=c/é"), "a%26b%3Dc%2F%C3%A9");
        let html = "<form><input type=\"hidden\" name=\"csrf\" value=\"ab12\">";
        assert_eq!(csrf_of(html), Some("ab12"));
        assert_eq!(csrf_of("<form>"), None);
        let mut h = hyper::HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("kl_form=x1; Path=/; HttpOnly"),
        );
        h.append(header::SET_COOKIE, HeaderValue::from_static("kl_lang=en"));
        assert_eq!(cookies_of(&h), "kl_form=x1; kl_lang=en");
        assert_eq!(source(0, 4), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(source(5, 4), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    }
}
