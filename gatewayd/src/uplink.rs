//! The office's line to the internet directory: the uplink task that
//! logs in, registers the office number and passes the directory's events
//! to the switch task as [`TrunkEvent`]s, reconnecting with backoff; and
//! the directory a standalone office runs itself (`[embedded_directory]`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use keyline_dirclient::client::{self as dir, DirClient, Options};
use keyline_proto::msg::Role;

use crate::config::DirectoryConfig;
use crate::shared::{Event, Shared, TrunkEvent};

/// The directory a standalone office runs itself.
pub struct Embedded {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Embedded {
    /// Stop it: endpoints are told, the database flushed.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.task).await;
    }
}

/// The embedded directory's account for the office itself.
const OFFICE_ACCOUNT: &str = "office";

/// Start the embedded directory (state under `STATE/directory`): on first
/// start it makes the `office` account with `e.number` and a random
/// password kept beside it (0600). Returns it and how the uplink reaches it.
pub async fn start_embedded(
    state_dir: &std::path::Path,
    e: &crate::config::EmbeddedDirectory,
) -> Result<(Embedded, DirectoryConfig)> {
    let dir = state_dir.join("directory");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let pw_file = dir.join("office.password");
    let (dir2, pw2, number) = (dir.clone(), pw_file.clone(), e.number.clone());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let store = keyline_directory::server::open_store(&dir2)?;
        let account = store.account(OFFICE_ACCOUNT)?;
        if account.is_some() && pw2.exists() {
            return Ok(());
        }
        let mut secret = [0u8; 24];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut secret);
        let pw = hex::encode(secret);
        let hash = keyline_directory::auth::hash_password(&pw)?;
        let number = keyline_proto::number::canonicalize(&number)
            .map_err(|err| anyhow::anyhow!("embedded_directory.number: {err}"))?;
        match account {
            Some(_) => store.set_password(OFFICE_ACCOUNT, &hash, None)?,
            None => store.add_account(
                OFFICE_ACCOUNT,
                &hash,
                &[number],
                keyline_directory::store::now_ms(),
            )?,
        }
        write_secret(&pw2, &pw)
    })
    .await
    .context("preparing the embedded directory")??;
    let fingerprint = keyline_net::Identity::load_or_create(&dir, "keyline-directory")?.fingerprint;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let opts = keyline_directory::server::RunOptions {
        state: Some(dir.clone()),
        config: keyline_directory::config::Config {
            listen: e.listen,
            ..keyline_directory::config::Config::default()
        },
        config_file: None,
        overrides: keyline_directory::server::Overrides::default(),
    };
    let task = tokio::spawn(async move {
        if let Err(err) = keyline_directory::server::run_embedded(opts, stop_rx).await {
            tracing::error!("the embedded directory stopped: {err:#}");
        }
    });
    let host = match e.listen.ip() {
        ip if !ip.is_unspecified() => ip,
        IpAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    };
    tracing::info!(
        "embedded directory on {} (fingerprint {fingerprint}); office number {}",
        e.listen,
        e.number
    );
    Ok((
        Embedded { stop, task },
        DirectoryConfig {
            address: SocketAddr::new(host, e.listen.port()).to_string(),
            fingerprint,
            account: OFFICE_ACCOUNT.into(),
            password_file: pw_file,
            numbers: Vec::new(),
        },
    ))
}

fn write_secret(path: &std::path::Path, secret: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    writeln!(f, "{secret}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The first wait before connecting again, and the longest.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The wait before connecting again after a session that ended: the
/// first one when it had registered (a directory that went away and came
/// back, perhaps after a crash, is reached again at once, however often
/// that happens) or lasted a minute, else `backoff`.
fn backoff_after(backoff: Duration, registered: bool, lasted: Duration) -> Duration {
    if registered || lasted > Duration::from_secs(60) {
        BACKOFF_FIRST
    } else {
        backoff
    }
}

/// Keep the office registered with the directory: connect, log in,
/// register, pass events on; on loss, wait (1 s doubling to 30 s while
/// attempts fail, 1 s again after a registration) and start again.
pub async fn uplink(shared: Arc<Shared>, endpoint: quinn::Endpoint, cfg: DirectoryConfig) {
    let mut backoff = BACKOFF_FIRST;
    // The directory node reached last: tried last next time.
    let mut lost = None;
    loop {
        let started = Instant::now();
        // `session` returns Ok only once it has registered.
        let (reason, registered) = match session(&shared, &endpoint, &cfg, &mut lost).await {
            Ok(reason) => (reason, true),
            Err(e) => (format!("{e:#}"), false),
        };
        backoff = backoff_after(backoff, registered, started.elapsed());
        tracing::warn!(
            "directory {}: {reason}; retrying in {backoff:?}",
            cfg.address
        );
        if shared
            .events
            .send(Event::Trunk(TrunkEvent::Down { reason }))
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One directory session; returns why it ended.
async fn session(
    shared: &Arc<Shared>,
    endpoint: &quinn::Endpoint,
    cfg: &DirectoryConfig,
    lost: &mut Option<SocketAddr>,
) -> Result<String> {
    // Every address given (the nodes of a cluster), the one reached last
    // tried last.
    let addrs = keyline_dirclient::addrs::resolve(&cfg.address)
        .await
        .map_err(anyhow::Error::msg)?;
    let password = std::fs::read_to_string(&cfg.password_file)
        .with_context(|| format!("reading {}", cfg.password_file.display()))?;
    let password = password.trim_end_matches(['\r', '\n']);
    let mut failures = Vec::new();
    let mut reached = None;
    for addr in keyline_dirclient::addrs::after(addrs, *lost) {
        *lost = Some(addr);
        let outside_ip = match outside_ip(shared.local_addr, addr) {
            Ok(ip) => ip,
            Err(e) => {
                failures.push(format!("{addr}: {e:#}"));
                continue;
            }
        };
        match DirClient::connect_with(
            endpoint,
            &shared.id,
            addr,
            Some(cfg.fingerprint.to_ascii_lowercase()),
            Options {
                role: Role::Gateway,
                name: shared.cfg().name.clone(),
                events: 256,
            },
        )
        .await
        {
            Ok(c) => {
                reached = Some((c, addr, outside_ip));
                break;
            }
            Err(e) => failures.push(format!("{addr}: {e}")),
        }
    }
    let Some(((client, mut events), addr, outside_ip)) = reached else {
        anyhow::bail!("{}", failures.join("; "));
    };
    let session = client.login(&cfg.account, password).await?;
    let numbers = cfg
        .numbers
        .iter()
        .map(|n| keyline_dirclient::client::parse_number(n))
        .collect::<Result<Vec<_>, _>>()?;
    let me = SocketAddr::new(outside_ip, shared.local_addr.port());
    let reg = client.register(&numbers, vec![me]).await?;
    tracing::info!(
        "registered {} with the directory {addr} as {} (seen at {})",
        reg.numbers.join(", "),
        session.account,
        reg.observed
    );
    shared
        .events
        .send(Event::Trunk(TrunkEvent::Up {
            client: client.clone(),
            outside_ip,
            numbers: reg.numbers.clone(),
            observed: reg.observed,
        }))
        .await
        .context("the gateway is stopping")?;
    while let Some(ev) = events.recv().await {
        match ev {
            dir::Event::Disconnected { reason } => return Ok(reason),
            dir::Event::GoingAway { message } => {
                client.close();
                return Ok(format!("the directory is going away: {message}"));
            }
            ev => {
                if shared
                    .events
                    .send(Event::Trunk(TrunkEvent::Dir(ev)))
                    .await
                    .is_err()
                {
                    return Ok("the gateway is stopping".into());
                }
            }
        }
    }
    Ok("the directory connection closed".into())
}

/// The gateway's own address on the way to `to` (no packet is sent).
fn outside_ip(local: SocketAddr, to: SocketAddr) -> Result<IpAddr> {
    if !local.ip().is_unspecified() {
        return Ok(local.ip());
    }
    let any: SocketAddr = if to.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = std::net::UdpSocket::bind(any).context("finding the outside address")?;
    probe
        .connect(to)
        .with_context(|| format!("no route to the directory at {to}"))?;
    Ok(probe.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uplink_waits_one_second_after_a_registration_however_often_it_ends() {
        let s = Duration::from_secs;
        // Failed attempts back off.
        assert_eq!(backoff_after(s(8), false, s(2)), s(8));
        // A session that registered, however short, starts over at 1 s:
        // a directory killed three times in a minute is reached again
        // within a second of its return each time.
        assert_eq!(backoff_after(s(8), true, s(2)), BACKOFF_FIRST);
        assert_eq!(backoff_after(BACKOFF_MAX, true, s(0)), BACKOFF_FIRST);
        // A long one too, registered or not.
        assert_eq!(backoff_after(s(16), false, s(61)), BACKOFF_FIRST);
    }
}
