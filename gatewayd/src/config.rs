//! The gateway's configuration: embedded defaults, optionally overridden by
//! a TOML file and then by command-line flags.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// How media of internal calls travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum InternalMedia {
    /// Agent to agent on the LAN.
    Direct,
    /// Through the gateway's forwarder.
    Relay,
}

impl InternalMedia {
    pub fn as_str(self) -> &'static str {
        match self {
            InternalMedia::Direct => "direct",
            InternalMedia::Relay => "relay",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// UDP address of the QUIC endpoint.
    pub listen: SocketAddr,
    pub internal_media: InternalMedia,
    /// Seconds an unanswered call rings.
    pub ring_timeout_secs: u64,
    /// First and last extension handed out automatically.
    pub extension_range: [u32; 2],
    /// Advertise and browse with mDNS.
    pub mdns: bool,
    /// Instance name advertised on the LAN.
    pub name: Option<String>,
    /// Unanswered, busy and unreachable calls go to the callee's mailbox.
    pub voicemail: bool,
    /// Longest voicemail recorded, in seconds.
    pub voicemail_max_secs: u64,
    /// Seconds of silence that end a voicemail.
    pub voicemail_silence_secs: u64,
    /// WAV file played to callers before the beep (default: a chime).
    pub voicemail_greeting: Option<std::path::PathBuf>,
    /// Extensions that ring for a call to the office number (empty: every
    /// extension rings and the first to answer takes the call).
    pub reception: Vec<String>,
    /// Ring `reception` one extension at a time, this many seconds each,
    /// in order (a hunt group); absent: all at once.
    pub hunt_secs: Option<u64>,
    /// Whose mailbox takes calls to the office number that nobody answers
    /// (default: the first reception extension, if any).
    pub office_mailbox: Option<String>,
    /// How the office's outside calls reach the far end (the calls it
    /// places): `direct`, `direct-then-relay` or `relay` through the
    /// directory's relay; absent: the directory's rule.
    pub direct_connect: Option<keyline_proto::dir::DirectPolicy>,
    /// The internet directory the office registers its number with;
    /// absent: the office works on its own (internal calls only).
    pub directory: Option<DirectoryConfig>,
    /// A standalone office: the gateway runs a directory itself, registers
    /// the office number there, and outside terminals register with it.
    pub embedded_directory: Option<EmbeddedDirectory>,
    /// Seconds a station waiting for approval is remembered after it
    /// disconnects (a station that is connected and waiting is always
    /// listed; one that comes back later simply waits again, with the same
    /// pairing code).
    pub pending_forget_secs: u64,
    /// Most stations waiting for approval that are remembered: past that
    /// the ones gone longest are forgotten, and while that many are
    /// connected and waiting a new one is turned away.
    pub max_pending: usize,
    /// `[metrics]`: Prometheus metrics over plain HTTP; absent: off.
    pub metrics: Option<MetricsConfig>,
    /// `[admin]`: the HTTPS admin site.
    pub admin: AdminConfig,
    /// Connections open at once (stations, other offices' media
    /// hand-offs, handshakes in progress); past it new ones are refused
    /// before their handshake.
    pub max_connections: usize,
    /// `[limits]`: limits per address on the way in.
    pub limits: keyline_net::admission::LimitsConfig,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// TCP address serving `/metrics` (default 127.0.0.1:9464). An
    /// address other than loopback needs `allow_remote = true`: the page
    /// is plain HTTP without a login.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
    #[serde(default)]
    pub allow_remote: bool,
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin site at all. It also needs a password: until
    /// `keyline-gatewayd admin passwd` sets one it does not listen.
    pub enabled: bool,
    /// TCP address of the admin site; absent: port 8443 on each address
    /// of the LAN side (see `admin::lan`: the private addresses of the
    /// interfaces that do not carry the default route or the route to the
    /// directory, or of the only interface; and loopback), followed as
    /// addresses come and go.
    pub listen: Option<SocketAddr>,
    /// Networks (`10.0.0.0/8`, `192.168.1.7/32`, `::1/128`) allowed to use
    /// the site; empty: private, loopback and link-local addresses.
    /// Anyone else who reaches a listening address is refused with 403.
    pub allow: Vec<String>,
    /// Minutes an idle login lasts.
    pub session_idle_mins: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: None,
            allow: Vec::new(),
            session_idle_mins: 30,
        }
    }
}

pub const DEFAULT_ADMIN_PORT: u16 = 8443;

/// `[embedded_directory]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedDirectory {
    /// UDP address of the directory (default 0.0.0.0:7480).
    #[serde(default = "default_embedded_listen")]
    pub listen: SocketAddr,
    /// The office number terminals call (set when the directory is first
    /// made; default "office").
    #[serde(default = "default_office_number")]
    pub number: String,
}

fn default_embedded_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], keyline_proto::dir::DEFAULT_PORT))
}

fn default_office_number() -> String {
    "office".into()
}

/// `[directory]`: where the office number lives.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// `HOST:PORT` of the directory (port 7480 by default); for a
    /// directory of several nodes, each node's, comma-separated (or a name
    /// with an address per node): losing one, the office goes to another.
    pub address: String,
    /// SHA-256 fingerprint (hex) of the directory's certificate, pinned.
    pub fingerprint: String,
    /// The office's account on the directory.
    pub account: String,
    /// A file holding the account's password (one line; keep it 0600).
    pub password_file: std::path::PathBuf,
    /// The account's numbers to register (empty: all of them).
    #[serde(default)]
    pub numbers: Vec<String>,
}

pub const DEFAULT_PORT: u16 = 7470;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            internal_media: InternalMedia::Direct,
            ring_timeout_secs: 30,
            extension_range: [201, 499],
            mdns: true,
            name: None,
            voicemail: true,
            voicemail_max_secs: 120,
            voicemail_silence_secs: 5,
            voicemail_greeting: None,
            reception: Vec::new(),
            hunt_secs: None,
            office_mailbox: None,
            direct_connect: None,
            directory: None,
            embedded_directory: None,
            pending_forget_secs: 600,
            max_pending: 100,
            metrics: None,
            admin: AdminConfig::default(),
            max_connections: 4096,
            limits: keyline_net::admission::LimitsConfig::default(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// The configuration a file's text gives, validated; a TOML error is
    /// one line naming where it is ([`describe_toml_error`]).
    pub fn parse(text: &str) -> Result<Config> {
        let mut cfg: Config =
            toml::from_str(text).map_err(|e| anyhow::anyhow!(describe_toml_error(text, &e)))?;
        cfg.clamp_voicemail_max();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Messages longer than the Ogg Opus reader decodes were allowed once
    /// (up to an hour): such a setting is brought down to the ceiling with
    /// a warning, so an existing appliance still starts.
    fn clamp_voicemail_max(&mut self) {
        let most = keyline_media::oggopus::MAX_OGG_OPUS_SECONDS;
        if self.voicemail_max_secs > most {
            tracing::warn!(
                "voicemail_max_secs = {} is above the longest message kept ({most} s): using {most}",
                self.voicemail_max_secs
            );
            self.voicemail_max_secs = most;
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.ring_timeout_secs == 0 || self.ring_timeout_secs > 600 {
            bail!("ring_timeout_secs must be between 1 and 600");
        }
        // The Ogg Opus reader decodes no longer a message than this.
        let most = keyline_media::oggopus::MAX_OGG_OPUS_SECONDS;
        if !(5..=most).contains(&self.voicemail_max_secs) {
            bail!("voicemail_max_secs must be between 5 and {most}");
        }
        if !(1..=60).contains(&self.voicemail_silence_secs) {
            bail!("voicemail_silence_secs must be between 1 and 60");
        }
        let [lo, hi] = self.extension_range;
        if lo < 10 || lo > hi || hi > 999_999 {
            bail!("extension_range must be [low, high] with 10 <= low <= high <= 999999");
        }
        if !(1..=30 * 86_400).contains(&self.pending_forget_secs) {
            bail!("pending_forget_secs must be between 1 and 2592000 (30 days)");
        }
        if !(1..=100_000).contains(&self.max_pending) {
            bail!("max_pending must be between 1 and 100000");
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            bail!("max_connections must be between 1 and 1000000");
        }
        self.admission().map_err(anyhow::Error::msg)?;
        if self.hunt_secs.is_some_and(|s| !(1..=600).contains(&s)) {
            bail!("hunt_secs must be between 1 and 600");
        }
        for ext in &self.reception {
            if keyline_proto::number::canonicalize(ext).ok().as_deref() != Some(ext.as_str()) {
                bail!("reception: {ext:?} is not an extension number");
            }
        }
        if let Some(m) = &self.metrics {
            if !m.listen.ip().is_loopback() && !m.allow_remote {
                bail!(
                    "metrics.listen {} is not a loopback address: /metrics has no login, so set metrics.allow_remote = true to serve it there",
                    m.listen
                );
            }
        }
        for net in &self.admin.allow {
            crate::admin::access::Net::parse(net)
                .map_err(|e| anyhow::anyhow!("admin.allow: {net:?}: {e}"))?;
        }
        if !(1..=7 * 24 * 60).contains(&self.admin.session_idle_mins) {
            bail!("admin.session_idle_mins must be between 1 and 10080");
        }
        if self.directory.is_some() && self.embedded_directory.is_some() {
            bail!("[directory] and [embedded_directory] exclude each other: pick one");
        }
        if let Some(e) = &self.embedded_directory {
            keyline_proto::number::canonicalize(&e.number).map_err(|err| {
                anyhow::anyhow!("embedded_directory.number: {:?}: {err}", e.number)
            })?;
        }
        if let Some(d) = &self.directory {
            if d.fingerprint.len() != 64 || !d.fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("directory.fingerprint must be the directory's SHA-256 fingerprint (64 hex digits)");
            }
            if d.address.split(',').all(|a| a.trim().is_empty()) {
                bail!("directory.address must be HOST:PORT (or several, comma-separated)");
            }
            if d.account.trim().is_empty() {
                bail!("directory.account must not be empty");
            }
            for n in &d.numbers {
                keyline_proto::number::canonicalize(n)
                    .map_err(|e| anyhow::anyhow!("directory.numbers: {n:?}: {e}"))?;
            }
        }
        Ok(())
    }

    /// The limits on incoming connections (`max_connections` and `[limits]`).
    pub fn admission(&self) -> Result<keyline_net::admission::Limits, String> {
        self.limits.limits(self.max_connections)
    }

    /// The switchboard's settings from this configuration, with the
    /// extension range in force (`Shared::extension_range`: the one set in
    /// the database wins over this file's).
    pub fn call_config(&self, [lo, hi]: [u32; 2]) -> keyline_proto::call::Config {
        keyline_proto::call::Config {
            ring_timeout: self.ring_timeout(),
            voicemail: self.voicemail,
            outside: self.directory.is_some() || self.embedded_directory.is_some(),
            extension_range: (lo, hi),
            reception: self.reception.clone(),
            hunt_step: self.hunt_secs.map(Duration::from_secs),
            office_mailbox: self
                .office_mailbox
                .clone()
                .or_else(|| self.reception.first().cloned()),
            groups: Vec::new(),
        }
    }

    pub fn ring_timeout(&self) -> Duration {
        Duration::from_secs(self.ring_timeout_secs)
    }
}

/// One line naming where a TOML error is and which field it concerns.
pub fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().replace('\n', " ");
    let Some(span) = e.span() else {
        return msg;
    };
    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) if !msg.contains(key.trim()) => {
            format!("line {line_no}, field `{}`: {msg}", key.trim())
        }
        _ => format!("line {line_no}: {msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_on_the_way_in_are_read_and_checked() {
        let cfg = Config::parse(
            "max_connections = 300\n[limits]\nmax_connections_per_address = 40\nexempt = [\"10.0.0.0/8\"]\n",
        )
        .expect("parse");
        let l = cfg.admission().expect("limits");
        assert_eq!(l.max_connections, 300);
        assert_eq!(l.max_per_address, 40);
        assert_eq!(
            Config::default()
                .admission()
                .expect("defaults")
                .max_connections,
            4096
        );
        let err = Config::parse("[limits]\nexempt = [\"10.0.0.0/33\"]\n").expect_err("bad net");
        assert!(format!("{err:#}").contains("limits.exempt"), "{err:#}");
        let err =
            Config::parse("[limits]\nhandshakes_per_address_per_sec = 0\n").expect_err("zero");
        assert!(
            format!("{err:#}").contains("handshakes_per_address_per_sec"),
            "{err:#}"
        );
        assert!(Config::parse("max_connections = 0\n").is_err());
    }

    #[test]
    fn a_voicemail_length_above_the_ceiling_is_brought_down_not_refused() {
        let most = keyline_media::oggopus::MAX_OGG_OPUS_SECONDS;
        let cfg = Config::parse("voicemail_max_secs = 1800\n").expect("an older setting");
        assert_eq!(cfg.voicemail_max_secs, most);
        let cfg = Config::parse("voicemail_max_secs = 300\n").expect("parse");
        assert_eq!(cfg.voicemail_max_secs, 300);
        assert!(Config::parse("voicemail_max_secs = 2\n").is_err());
    }

    #[test]
    fn file_overrides_defaults_and_bad_fields_are_named() {
        let cfg: Config =
            toml::from_str("internal_media = \"relay\"\nring_timeout_secs = 5\n").expect("parse");
        assert_eq!(cfg.internal_media, InternalMedia::Relay);
        assert_eq!(cfg.ring_timeout(), Duration::from_secs(5));
        assert_eq!(cfg.listen.port(), DEFAULT_PORT);
        let err = toml::from_str::<Config>("internal_media = \"teleport\"").expect_err("bad");
        assert!(err.to_string().contains("internal_media"), "{err}");
        let err = toml::from_str::<Config>("ring_timeout = 5").expect_err("unknown");
        assert!(err.to_string().contains("ring_timeout"), "{err}");
        let text = "mdns = true\nring_timeout_secs = \"soon\"\n";
        let err = toml::from_str::<Config>(text).expect_err("bad type");
        let line = describe_toml_error(text, &err);
        assert!(line.contains("line 2, field `ring_timeout_secs`"), "{line}");
        assert!(!line.contains('\n'));
        let bad = Config {
            extension_range: [500, 200],
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }
}
