//! The directory's configuration: embedded defaults, optionally overridden
//! by a TOML file and then by command-line flags. Every field has a
//! default, so an empty file (or none) is a working directory.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use keyline_proto::dir::{DirectPolicy, DEFAULT_PORT, MAX_MAIL_BODY};
use serde::Deserialize;

use crate::ratelimit::Limits;
use crate::routing;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// UDP address of the QUIC endpoint.
    pub listen: SocketAddr,
    /// Seconds a registration lasts unless refreshed.
    pub binding_ttl_secs: u32,
    /// Seconds an unanswered call rings.
    pub ring_timeout_secs: u64,
    /// How the ends of an answered call reach each other.
    pub direct_connect: DirectPolicy,
    /// With `direct-then-relay`: milliseconds the caller tries end to end
    /// before falling back to the relay.
    pub fallback_after_ms: u32,
    /// The address the relay binds its sockets to (default: the address
    /// each end reached the directory on).
    pub relay_ip: Option<IpAddr>,
    /// Days a session token stays valid.
    pub session_days: u32,
    /// Seconds a connection may stay without logging in (after its hello)
    /// before it is closed; logged-in ones stay while QUIC keeps them alive.
    pub login_deadline_secs: u64,
    /// Connections (handshakes included) held at once; more are refused
    /// before the handshake.
    pub max_connections: usize,
    pub login: LoginConfig,
    pub mail: MailConfig,
    /// How much call history is kept (`[history]`).
    pub history: HistoryConfig,
    pub web: WebConfig,
    pub metrics: MetricsConfig,
    /// Limits on the way in, per address (`[limits]`).
    pub limits: keyline_net::admission::LimitsConfig,
    /// Where the durable data lives (`[store]`): SQLite in the state
    /// directory unless `postgres` is set.
    pub store: StoreConfig,
    /// Several directory nodes acting as one (`[cluster]`): off unless
    /// `nats` is set.
    pub cluster: ClusterConfig,
}

/// The cluster: nodes share their durable data in PostgreSQL and tell
/// each other, through NATS, which node holds each registered number.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The NATS servers, comma-separated (`nats://HOST:PORT,...`), with
    /// JetStream on. None (the default): a single node.
    pub nats: Option<String>,
    /// This node's name in the cluster: letters, digits, `-` and `_`
    /// (default: the host name and the QUIC port).
    pub node: Option<String>,
}

impl ClusterConfig {
    /// This node's name: the configured one, or the host name and port.
    pub fn node_name(&self, listen: SocketAddr) -> String {
        if let Some(n) = &self.node {
            return n.clone();
        }
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "directory".into());
        let host: String = host
            .chars()
            .map(|c| if valid_node_char(c) { c } else { '-' })
            .collect();
        format!("{host}-{}", listen.port())
    }
}

fn valid_node_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Where accounts, numbers, rules, tokens and mail are kept.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// A PostgreSQL connection string (`postgresql://USER@HOST/DB`, or a
    /// Unix socket's folder as the host: `postgresql://USER@%2Frun%2Fpostgresql/DB`).
    /// None (the default): the SQLite file in the state directory.
    pub postgres: Option<String>,
    /// Connections to PostgreSQL held open at most.
    pub pool_size: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            postgres: None,
            pool_size: 8,
        }
    }
}

/// The password in a connection string stays out of logs and messages.
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field(
                "postgres",
                &self.postgres.as_deref().map(crate::store::redact_url),
            )
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// Prometheus metrics at `/metrics` (plain HTTP, no login).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// TCP address of `/metrics`; none (the default): no metrics.
    pub listen: Option<SocketAddr>,
    /// Allow an address other than loopback.
    pub allow_remote: bool,
}

/// Who may create an account on the web site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signup {
    /// Anyone.
    Open,
    /// Whoever has an unused code from `keyline-directory invite create`.
    Invite,
    /// Nobody (accounts come from `keyline-directory user add`).
    Closed,
}

impl Signup {
    pub fn as_str(self) -> &'static str {
        match self {
            Signup::Open => "open",
            Signup::Invite => "invite",
            Signup::Closed => "closed",
        }
    }
}

/// The web site (HTTPS, served by the same process from the same store).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Serve the site at all.
    pub enabled: bool,
    /// TCP address of the site (default: the QUIC endpoint's address and
    /// port, over TCP: 0.0.0.0:7480).
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain of a real certificate (with `key`); without
    /// them the directory's own self-signed identity is used.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// Who may sign up: "open", "invite" or "closed".
    pub signup: Signup,
    /// Folder whose `.deb` files the set-up page offers.
    pub packages: Option<PathBuf>,
    /// Days a deleted account's numbers are kept from new accounts.
    pub hold_numbers_days: u32,
    /// Minutes a browser stays logged in without being used.
    pub session_idle_mins: u64,
    /// Availability checks one address may make per minute.
    pub checks_per_minute: u32,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            listen: None,
            cert: None,
            key: None,
            signup: Signup::Open,
            packages: None,
            hold_numbers_days: 90,
            session_idle_mins: 60,
            checks_per_minute: 60,
        }
    }
}

impl WebConfig {
    /// The TCP address the site listens on, given the QUIC one.
    pub fn listen_addr(&self, quic: SocketAddr) -> SocketAddr {
        self.listen.unwrap_or(quic)
    }

    pub fn hold_numbers(&self) -> Duration {
        Duration::from_secs(u64::from(self.hold_numbers_days) * 86_400)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginConfig {
    /// Failed logins in a row for one account from one address that lock
    /// that address out of the account (only).
    pub max_failures_per_account: u32,
    /// Failed logins in a row from one address, whatever the accounts,
    /// that lock the address out of every account.
    pub max_failures_per_address: u32,
    /// Failed logins in a row for one account from all addresses together
    /// that lock the account for every address (a distributed attack).
    pub max_failures_account_wide: u32,
    /// First lockout in seconds; it doubles with each further failure.
    pub lockout_secs: u64,
    /// Longest lockout in seconds.
    pub max_lockout_secs: u64,
    /// Seconds after which old failures are forgotten.
    pub forget_after_secs: u64,
    /// Threads that check passwords (argon2id, about 20 ms of a core
    /// each); 0: half the cores, at least one.
    pub hashing_threads: usize,
    /// How they are scheduled beside the event loop: `idle` (only CPU
    /// that registrations and calls leave), `low` (nice 10) or `normal`.
    pub hashing_priority: crate::hashing::Priority,
    /// Checks waiting per hashing thread before logins are told the
    /// directory is busy (try again in a second).
    pub hashing_queue: usize,
    /// Longest a check waits for a thread, in milliseconds, before its
    /// login is told the directory is busy.
    pub hashing_max_wait_ms: u64,
    /// With `idle` or `low`: the share of one core that a further thread
    /// at the daemon's priority may spend on checks that waited 200 ms,
    /// so that logins go on however busy the machine (0: none).
    pub hashing_floor: f64,
}

/// The call history each account sees on the web site: its newest
/// `keep_per_account` calls, none older than `keep_days`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    pub keep_per_account: u32,
    pub keep_days: u32,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            keep_per_account: 500,
            keep_days: 90,
        }
    }
}

impl HistoryConfig {
    /// What to keep at `now_ms`.
    pub fn retention(&self, now_ms: i64) -> crate::store::CallRetention {
        crate::store::CallRetention {
            per_account: self.keep_per_account,
            since_ms: now_ms.saturating_sub(i64::from(self.keep_days) * 86_400_000),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// Largest voice mail (Ogg Opus) in bytes.
    pub max_voice_bytes: u32,
    /// Largest text message in bytes.
    pub max_text_bytes: u32,
    /// Most messages waiting for one account.
    pub quota_messages: u32,
    /// Most bytes waiting for one account.
    pub quota_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            binding_ttl_secs: 120,
            ring_timeout_secs: 30,
            direct_connect: DirectPolicy::DirectThenRelay,
            fallback_after_ms: 3000,
            relay_ip: None,
            session_days: 30,
            login_deadline_secs: 20,
            max_connections: 20_000,
            login: LoginConfig::default(),
            mail: MailConfig::default(),
            history: HistoryConfig::default(),
            web: WebConfig::default(),
            metrics: MetricsConfig::default(),
            limits: keyline_net::admission::LimitsConfig::default(),
            store: StoreConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for LoginConfig {
    fn default() -> Self {
        let l = Limits::default();
        let h = crate::hashing::PoolConfig::default();
        LoginConfig {
            max_failures_per_account: l.max_failures_per_account,
            max_failures_per_address: l.max_failures_per_address,
            max_failures_account_wide: l.max_failures_account_wide,
            lockout_secs: l.base_lockout.as_secs(),
            max_lockout_secs: l.max_lockout.as_secs(),
            forget_after_secs: l.forget_after.as_secs(),
            hashing_threads: h.threads,
            hashing_priority: h.priority,
            hashing_queue: h.queue_per_thread,
            hashing_max_wait_ms: h.max_wait.as_millis() as u64,
            hashing_floor: h.floor_share,
        }
    }
}

impl LoginConfig {
    /// The password hashing pool this asks for.
    pub fn hashing(&self) -> crate::hashing::PoolConfig {
        crate::hashing::PoolConfig {
            threads: self.hashing_threads,
            queue_per_thread: self.hashing_queue.max(1),
            priority: self.hashing_priority,
            max_wait: Duration::from_millis(self.hashing_max_wait_ms),
            floor_share: self.hashing_floor,
        }
    }
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            max_voice_bytes: 1024 * 1024,
            max_text_bytes: 4096,
            quota_messages: 50,
            quota_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Config {
    /// Read and validate a file; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if !(5..=86_400).contains(&self.binding_ttl_secs) {
            bail!("binding_ttl_secs must be between 5 and 86400");
        }
        if self.ring_timeout_secs == 0 || self.ring_timeout_secs > 600 {
            bail!("ring_timeout_secs must be between 1 and 600");
        }
        if !(100..=60_000).contains(&self.fallback_after_ms) {
            bail!("fallback_after_ms must be between 100 and 60000");
        }
        if self.session_days == 0 || self.session_days > 3650 {
            bail!("session_days must be between 1 and 3650");
        }
        if !(1..=600).contains(&self.login_deadline_secs) {
            bail!("login_deadline_secs must be between 1 and 600");
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            bail!("max_connections must be between 1 and 1000000");
        }
        self.admission().map_err(anyhow::Error::msg)?;
        let l = &self.login;
        if l.max_failures_per_account == 0 {
            bail!("login.max_failures_per_account must be at least 1");
        }
        if l.max_failures_per_address == 0 {
            bail!("login.max_failures_per_address must be at least 1");
        }
        if l.max_failures_account_wide < l.max_failures_per_account {
            bail!(
                "login.max_failures_account_wide must be at least login.max_failures_per_account"
            );
        }
        if l.lockout_secs == 0 || l.lockout_secs > l.max_lockout_secs {
            bail!("login.lockout_secs must be at least 1 and at most login.max_lockout_secs");
        }
        if l.hashing_threads > 256 {
            bail!("login.hashing_threads must be at most 256 (0: half the cores)");
        }
        if !(1..=1024).contains(&l.hashing_queue) {
            bail!("login.hashing_queue must be between 1 and 1024");
        }
        if !(10..=60_000).contains(&l.hashing_max_wait_ms) {
            bail!("login.hashing_max_wait_ms must be between 10 and 60000");
        }
        if !(0.0..=1.0).contains(&l.hashing_floor) {
            bail!("login.hashing_floor must be between 0 and 1 (a share of one core)");
        }
        let m = &self.mail;
        if m.max_voice_bytes as usize > MAX_MAIL_BODY || m.max_voice_bytes < 64 {
            bail!("mail.max_voice_bytes must be between 64 and {MAX_MAIL_BODY}");
        }
        if m.max_text_bytes as usize > MAX_MAIL_BODY || m.max_text_bytes == 0 {
            bail!("mail.max_text_bytes must be between 1 and {MAX_MAIL_BODY}");
        }
        if m.quota_messages == 0 {
            bail!("mail.quota_messages must be at least 1");
        }
        if m.quota_bytes < u64::from(m.max_voice_bytes.max(m.max_text_bytes)) {
            bail!("mail.quota_bytes must hold at least one message of the largest size");
        }
        let w = &self.web;
        if w.cert.is_some() != w.key.is_some() {
            bail!("web.cert and web.key must be given together");
        }
        if w.hold_numbers_days > 36_500 {
            bail!("web.hold_numbers_days must be at most 36500");
        }
        if !(1..=10_080).contains(&w.session_idle_mins) {
            bail!("web.session_idle_mins must be between 1 and 10080");
        }
        if w.checks_per_minute == 0 {
            bail!("web.checks_per_minute must be at least 1");
        }
        if let Some(url) = &self.store.postgres {
            crate::store::PostgresStore::check_url(url)
                .map_err(|e| anyhow::anyhow!("store.postgres: {e}"))?;
        }
        if let Some(n) = &self.cluster.node {
            if n.is_empty() || n.len() > 64 || !n.chars().all(valid_node_char) {
                bail!("cluster.node must be 1 to 64 letters, digits, '-' or '_'");
            }
        }
        if self.cluster.nats.is_some() && self.store.postgres.is_none() {
            bail!("cluster.nats needs store.postgres: the nodes of a cluster share one PostgreSQL database");
        }
        if !(1..=256).contains(&self.store.pool_size) {
            bail!("store.pool_size must be between 1 and 256");
        }
        if let Some(a) = self.metrics.listen {
            if !a.ip().is_loopback() && !self.metrics.allow_remote {
                bail!("metrics.listen is not a loopback address: set metrics.allow_remote = true to serve metrics there (they need no login)");
            }
        }
        Ok(())
    }

    pub fn routing(&self) -> routing::Config {
        routing::Config {
            binding_ttl: Duration::from_secs(u64::from(self.binding_ttl_secs)),
            ring_timeout: Duration::from_secs(self.ring_timeout_secs),
            policy: self.direct_connect,
            fallback_after: Duration::from_millis(u64::from(self.fallback_after_ms)),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_failures_per_account: self.login.max_failures_per_account,
            max_failures_per_address: self.login.max_failures_per_address,
            max_failures_account_wide: self.login.max_failures_account_wide,
            base_lockout: Duration::from_secs(self.login.lockout_secs),
            max_lockout: Duration::from_secs(self.login.max_lockout_secs),
            forget_after: Duration::from_secs(self.login.forget_after_secs),
            ..Limits::default()
        }
    }

    /// The limits on incoming connections (`max_connections` and `[limits]`).
    pub fn admission(&self) -> Result<keyline_net::admission::Limits, String> {
        self.limits.limits(self.max_connections)
    }

    pub fn login_deadline(&self) -> Duration {
        Duration::from_secs(self.login_deadline_secs)
    }

    pub fn session_ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.session_days) * 86_400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::parse("").expect("parse");
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.port(), 7480);
        assert_eq!(c.direct_connect, DirectPolicy::DirectThenRelay);
        assert_eq!(c.routing().binding_ttl, Duration::from_secs(120));
    }

    #[test]
    fn overrides_and_bad_fields_are_named() {
        let c = Config::parse(
            "direct_connect = \"relay\"\nbinding_ttl_secs = 6\n[mail]\nquota_messages = 2\n",
        )
        .expect("parse");
        assert_eq!(c.direct_connect, DirectPolicy::Relay);
        assert_eq!(c.binding_ttl_secs, 6);
        assert_eq!(c.mail.quota_messages, 2);
        let e = Config::parse("direct_connect = \"teleport\"").expect_err("bad");
        assert!(format!("{e:#}").contains("direct_connect"), "{e:#}");
        let e = Config::parse("binding_ttl = 5").expect_err("unknown");
        assert!(format!("{e:#}").contains("binding_ttl"), "{e:#}");
        let e = Config::parse("[mail]\nmax_voice_bytez = 5").expect_err("unknown");
        assert!(format!("{e:#}").contains("max_voice_bytez"), "{e:#}");
        let e = Config::parse("binding_ttl_secs = 1").expect_err("range");
        assert!(format!("{e:#}").contains("binding_ttl_secs"), "{e:#}");
        let c = Config::parse(
            "[web]\nlisten = \"127.0.0.1:8443\"\nsignup = \"invite\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n",
        )
        .expect("web");
        assert_eq!(c.web.signup, Signup::Invite);
        assert_eq!(
            c.web.listen_addr(c.listen),
            "127.0.0.1:8443".parse().expect("addr")
        );
        assert_eq!(
            Config::default()
                .web
                .listen_addr(Config::default().listen)
                .port(),
            7480
        );
        assert_eq!(Config::default().metrics.listen, None);
        let e = Config::parse("[metrics]\nlisten = \"0.0.0.0:9465\"").expect_err("remote");
        assert!(format!("{e:#}").contains("metrics.allow_remote"), "{e:#}");
        Config::parse("[metrics]\nlisten = \"0.0.0.0:9465\"\nallow_remote = true").expect("remote");
        let e = Config::parse("[web]\nsignup = \"sometimes\"").expect_err("bad");
        assert!(format!("{e:#}").contains("signup"), "{e:#}");
        let e = Config::parse("[web]\ncert = \"/c.pem\"").expect_err("half");
        assert!(format!("{e:#}").contains("web.cert"), "{e:#}");
        assert_eq!(Config::default().store.postgres, None);
        let c =
            Config::parse("[store]\npostgres = \"postgresql://kl:pw@%2Frun%2Fpostgresql/keyline\"")
                .expect("postgres");
        assert!(c.store.postgres.is_some());
        assert!(!format!("{c:?}").contains("pw@"), "{c:?}");
        let e = Config::parse("[store]\npostgres = \"postgresql://h:port/x\"").expect_err("bad");
        assert!(format!("{e:#}").contains("store.postgres"), "{e:#}");
        let e = Config::parse("[store]\npool_size = 0").expect_err("range");
        assert!(format!("{e:#}").contains("store.pool_size"), "{e:#}");
        let e = Config::parse("[login]\nlockout_secs = 0").expect_err("range");
        assert!(format!("{e:#}").contains("login.lockout_secs"), "{e:#}");
    }
}
