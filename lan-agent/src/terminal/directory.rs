//! The terminal's link: the session with the directory. It connects
//! (pinning the directory's certificate, or trusting it on first use),
//! logs in (with the last session's token, else the password), registers
//! our numbers with our own addresses, re-registers when our address
//! changes, hands the directory's events to the terminal, and starts over
//! with backoff when the connection goes away.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use keyline_dirclient::client::{ClientError, DirClient, Event, Options};
use keyline_net::lifecycle;
use keyline_proto::dir::ErrorCode;
use keyline_proto::msg::Role;
use keyline_proto::phone::LinkIn;

use super::{drive, on_event, Link, Terminal};

/// The longest wait between two attempts to reach the directory.
const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// How often our own address is checked (a changed one is re-registered
/// at once).
const ADDRESS_CHECK: Duration = Duration::from_secs(5);

/// Read the password: the file's first line.
pub(super) fn read_password(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the password file {}", path.display()))?;
    let pw = text.lines().next().unwrap_or("").to_string();
    if pw.is_empty() {
        bail!(
            "the password file {} is empty (its first line is the password)",
            path.display()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            if m.permissions().mode() & 0o077 != 0 {
                eprintln!(
                    "keyline-agent: warning: the password file {} can be read by other users (chmod 600 it)",
                    path.display()
                );
            }
        }
    }
    Ok(pw)
}

/// A fingerprint as given by a person: hex, any case, colons allowed.
pub(super) fn parse_fingerprint(fp: &str) -> Result<String> {
    let clean: String = fp
        .chars()
        .filter(|c| !matches!(c, ':' | ' '))
        .collect::<String>()
        .to_ascii_lowercase();
    if clean.len() != 64 || !clean.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "--directory-fp {fp:?} is not a certificate fingerprint (64 hex digits, as `keyline-directory status` shows)"
        );
    }
    Ok(clean)
}

/// Why a directory session ended.
enum Outcome {
    /// It was registered, then the connection went away.
    Lost(String),
    /// It never got registered.
    Failed {
        message: String,
        retry_after: Option<Duration>,
    },
}

fn failed(message: impl Into<String>) -> Outcome {
    Outcome::Failed {
        message: message.into(),
        retry_after: None,
    }
}

/// Connect, log in, register, serve; again with backoff when it ends.
pub(super) async fn link_loop(t: Arc<Terminal>) {
    let mut backoff = Duration::from_millis(250);
    let mut token: Option<String> = None;
    loop {
        let outcome = directory_session(&t, &mut token).await;
        let (message, wait) = match outcome {
            Outcome::Lost(m) => {
                backoff = Duration::from_millis(250);
                (m, None)
            }
            Outcome::Failed {
                message,
                retry_after,
            } => (message, retry_after),
        };
        tracing::warn!("directory: {message}");
        {
            let mut st = t.lock();
            st.client = None;
            st.link.registered_at = None;
            st.set_link("disconnected", Some(message.clone()));
            for (_, task) in st.requests.drain() {
                task.abort();
            }
            // A call still being set up cannot go on without the
            // directory; a connected one can (its media is end to end).
            st.station
                .phone
                .handle_link(Instant::now(), LinkIn::Down { reason: message });
            drive(&t, &mut st);
        }
        lifecycle::status("directory unreachable, retrying");
        let jitter = Duration::from_millis(rand::random::<u64>() % 250);
        let wait = wait.unwrap_or(backoff).max(backoff) + jitter;
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The UDP address we use to reach `to` (no packet is sent).
fn route_ip(to: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(to).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Our own candidate addresses: the endpoint's address when it is bound
/// to one, else the local address that faces the directory, with the
/// endpoint's port. The directory adds the address it observes.
fn own_candidates(t: &Terminal, client: &DirClient, dir: SocketAddr) -> Vec<SocketAddr> {
    let Ok(local) = t.endpoint.local_addr() else {
        return Vec::new();
    };
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    client
        .connection()
        .local_ip()
        .or_else(|| route_ip(dir))
        .filter(|ip| !ip.is_unspecified())
        .map(|ip| vec![SocketAddr::new(ip, local.port())])
        .unwrap_or_default()
}

/// One connection to the directory, from connect until it ends.
async fn directory_session(t: &Arc<Terminal>, token: &mut Option<String>) -> Outcome {
    t.lock().set_link("connecting", None);
    // Every address given (the nodes of a cluster), the one lost last
    // tried last.
    let addrs = match keyline_dirclient::addrs::resolve(&t.opts.directory).await {
        Ok(a) => a,
        Err(e) => return failed(e),
    };
    let lost = t.lock().link.directory;
    let addrs = keyline_dirclient::addrs::after(addrs, lost);
    let pin = t.opts.directory_fp.clone().or_else(|| {
        std::fs::read_to_string(t.pin_path())
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| s.len() == 64)
    });
    let opts = Options {
        role: Role::Terminal,
        name: t.opts.endpoint.name.clone(),
        events: 256,
    };
    let mut last_err = String::new();
    let mut connected = None;
    for addr in addrs {
        t.lock().link.directory = Some(addr);
        match DirClient::connect_with(&t.endpoint, &t.id, addr, pin.clone(), opts.clone()).await {
            Ok(c) => {
                connected = Some((c, addr));
                break;
            }
            Err(e) => last_err = e.to_string(),
        }
    }
    let Some(((client, mut events), addr)) = connected else {
        let hint = if pin.is_some() {
            " (is it the directory whose fingerprint is pinned?)"
        } else {
            ""
        };
        return failed(format!("{last_err}{hint}"));
    };
    t.lock().set_link("logging-in", None);

    // Log in: the session token of the last connection first (no password
    // hashing on the directory), else the password.
    let resumed = match token.as_deref() {
        Some(tok) => client.resume(tok).await.ok(),
        None => None,
    };
    let session = match resumed {
        Some(s) => s,
        None => match client.login(&t.opts.account, &t.password()).await {
            Ok(s) => s,
            // Locked out after failed logins, or the directory is busy
            // checking passwords: its message says which, and when to
            // try again.
            Err(ClientError::Refused {
                code: ErrorCode::RateLimited,
                retry_after,
                message,
            }) => {
                return Outcome::Failed {
                    message: format!(
                        "the directory asks account {} to wait before logging in again: {message}",
                        t.opts.account
                    ),
                    retry_after,
                }
            }
            Err(e) if e.code() == Some(ErrorCode::BadCredentials) => {
                return failed(format!(
                    "the directory refused the login of account {}: wrong account or password (see --password-file)",
                    t.opts.account
                ))
            }
            Err(e) => return failed(format!("login failed: {e}")),
        },
    };
    *token = Some(session.token.clone());
    if pin.is_none() {
        if let Some(fp) = client.directory_fingerprint() {
            match std::fs::write(t.pin_path(), &fp) {
                Ok(()) => {
                    println!("trusting the directory at {addr} from now on: fingerprint {fp}")
                }
                Err(e) => tracing::warn!("could not pin the directory's fingerprint: {e}"),
            }
        }
    }

    let own = own_candidates(t, &client, addr);
    let reg = match client.register(&t.numbers, own.clone()).await {
        Ok(r) => r,
        Err(e) => return failed(format!("registration refused: {e}")),
    };
    println!(
        "registered {} with the directory at {addr} (reachable at {})",
        reg.numbers.join(", "),
        join(&reg.candidates)
    );
    lifecycle::status(&format!("registered {}", reg.numbers.join(", ")));
    {
        let mut st = t.lock();
        st.client = Some(client.clone());
        st.link = Link {
            state: "registered",
            error: None,
            directory: Some(addr),
            numbers: reg.numbers.clone(),
            observed: Some(reg.observed),
            candidates: reg.candidates.clone(),
            ttl: Some(reg.ttl),
            registered_at: Some(Instant::now()),
            registrations: st.link.registrations + 1,
        };
        let error = session
            .numbers
            .iter()
            .all(|n| !reg.numbers.contains(n))
            .then(|| "none of the account's numbers is registered".to_string());
        st.set_link("registered", error);
    }

    let mut own = own;
    let mut check = tokio::time::interval(ADDRESS_CHECK);
    check.tick().await;
    let reason = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                None => break "the directory connection is closed".to_string(),
                Some(Event::Disconnected { reason }) => break reason,
                Some(Event::GoingAway { message }) => break format!("the directory is going away: {message}"),
                Some(ev) => on_event(t, &client, ev),
            },
            _ = check.tick() => {
                let now = own_candidates(t, &client, addr);
                if now != own && !now.is_empty() {
                    println!("our address changed to {}; registering it", join(&now));
                    client.set_candidates(now.clone());
                    own = now;
                    let c = client.clone();
                    let t2 = t.clone();
                    tokio::spawn(async move {
                        if let Ok(r) = c.refresh().await {
                            t2.lock().link.candidates = r.candidates;
                        }
                    });
                }
            }
        }
    };
    client.close();
    Outcome::Lost(reason)
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fingerprints_are_normalised_and_checked() {
        let fp = "AB:".repeat(31) + "AB";
        assert_eq!(parse_fingerprint(&fp).unwrap(), "ab".repeat(32));
        assert!(parse_fingerprint("abc").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn route_ip_to_loopback_is_loopback() {
        let ip = route_ip("127.0.0.1:9".parse().unwrap()).unwrap();
        assert!(ip.is_loopback());
    }
}
