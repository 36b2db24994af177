//! Who may start a QUIC handshake: the limits a server puts on the way in,
//! decided before any cryptography is spent.
//!
//! A sans-IO core ([`Admission`], time passed in) shared by the directory
//! and the gateway, and a thin guard for their accept loops. For each
//! incoming connection it answers [`Verdict::Accept`], [`Verdict::Retry`]
//! (QUIC address validation: a stateless Retry packet the client must
//! echo, so a flood from forged addresses costs the server nothing) or
//! [`Verdict::Refuse`] with the limit that refused it:
//!
//! - every connection at once (`max_connections`);
//! - connections from one address at once (`max_per_address`: an office
//!   behind one NAT shares an address, so the default is generous);
//! - handshakes from one address in progress at once
//!   (`max_handshakes_per_address`) and started per second
//!   (`handshakes_per_address_per_sec`, a token bucket);
//! - when more handshakes than `retry_above` are in progress, a client
//!   whose address is not yet validated is asked to Retry first.
//!
//! Addresses are counted by IPv4 address or IPv6 /64 (one host usually
//! holds a whole /64). Addresses in `exempt` (by default loopback: the
//! machine's own processes are not strangers) pass without limits. The
//! table of addresses is bounded: entries with nothing open and a full
//! bucket are forgotten, and past `MAX_TRACKED` addresses new ones are
//! refused rather than remembered.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::ipnet::{canonical, Net};

/// Addresses tracked at once; past this, new addresses are refused until
/// some are forgotten (a flood of distinct addresses must not grow the
/// table without bound).
pub const MAX_TRACKED: usize = 100_000;

/// The limits, as the daemons' configurations give them.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_address: usize,
    pub max_handshakes_per_address: usize,
    /// Handshakes one address may start per second (and at once, as a
    /// burst, after a quiet while).
    pub handshakes_per_address_per_sec: u32,
    /// Handshakes in progress (all addresses) above which an unvalidated
    /// client must Retry first; 0: always.
    pub retry_above: usize,
    /// Networks that pass without limits.
    pub exempt: Vec<Net>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 20_000,
            max_per_address: 1_000,
            max_handshakes_per_address: 32,
            handshakes_per_address_per_sec: 50,
            retry_above: 64,
            exempt: vec![Net::LOOPBACK_V4, Net::LOOPBACK_V6],
        }
    }
}

impl Limits {
    /// Why these limits cannot work, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err("max_connections must be between 1 and 1000000".into());
        }
        if self.max_per_address == 0 {
            return Err("max_connections_per_address must be at least 1".into());
        }
        if self.max_handshakes_per_address == 0 {
            return Err("max_handshakes_per_address must be at least 1".into());
        }
        if self.handshakes_per_address_per_sec == 0 {
            return Err("handshakes_per_address_per_sec must be at least 1".into());
        }
        Ok(())
    }
}

/// The `[limits]` table of the directory's and the gateway's
/// configuration files (the daemon's own `max_connections` is beside it).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections one address (IPv6: one /64) may hold at once.
    pub max_connections_per_address: usize,
    /// Handshakes one address may have in progress at once.
    pub max_handshakes_per_address: usize,
    /// Handshakes one address may start per second.
    pub handshakes_per_address_per_sec: u32,
    /// Handshakes in progress above which clients must prove their
    /// address with a QUIC Retry first; 0: always.
    pub retry_above: usize,
    /// Networks without limits (`ADDR` or `ADDR/PREFIX`); default loopback.
    pub exempt: Vec<String>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        LimitsConfig {
            max_connections_per_address: l.max_per_address,
            max_handshakes_per_address: l.max_handshakes_per_address,
            handshakes_per_address_per_sec: l.handshakes_per_address_per_sec,
            retry_above: l.retry_above,
            exempt: l.exempt.iter().map(Net::to_string).collect(),
        }
    }
}

impl LimitsConfig {
    /// The limits, with the daemon's `max_connections`, or why not.
    pub fn limits(&self, max_connections: usize) -> Result<Limits, String> {
        let exempt = self
            .exempt
            .iter()
            .map(|s| s.parse::<Net>().map_err(|e| format!("limits.exempt: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let l = Limits {
            max_connections,
            max_per_address: self.max_connections_per_address,
            max_handshakes_per_address: self.max_handshakes_per_address,
            handshakes_per_address_per_sec: self.handshakes_per_address_per_sec,
            retry_above: self.retry_above,
            exempt,
        };
        l.check().map_err(|e| format!("limits: {e}"))?;
        Ok(l)
    }
}

/// What an address is counted as: itself (IPv4) or its /64 (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match canonical(ip) {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & (u128::MAX << 64);
                Source(IpAddr::V6(bits.into()))
            }
            v4 => Source(v4),
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Every connection slot is taken.
    Full,
    /// This address holds `max_connections_per_address` already.
    PerAddress,
    /// This address has `max_handshakes_per_address` in progress.
    Handshakes,
    /// This address started handshakes faster than its rate.
    Rate,
    /// Too many distinct addresses are being tracked.
    TooManyAddresses,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "max_connections",
            Refusal::PerAddress => "max_connections_per_address",
            Refusal::Handshakes => "max_handshakes_per_address",
            Refusal::Rate => "handshakes_per_address_per_sec",
            Refusal::TooManyAddresses => "too many addresses",
        }
    }
}

/// The answer for one incoming connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead: the connection holds a slot ([`Admission::handshake_done`]
    /// and [`Admission::closed`] give it back).
    Accept,
    /// Ask the client to prove its address first (nothing is kept).
    Retry,
    /// Refuse it (nothing is kept).
    Refuse(Refusal),
}

#[derive(Debug)]
struct Entry {
    open: usize,
    handshaking: usize,
    tokens: f64,
    at: Instant,
}

/// What `status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Connections holding a slot (handshakes included).
    pub open: usize,
    pub handshaking: usize,
    pub addresses: usize,
    pub accepted: u64,
    pub retries: u64,
    pub refused_full: u64,
    pub refused_per_address: u64,
    pub refused_handshakes: u64,
    pub refused_rate: u64,
    pub refused_addresses: u64,
}

impl Counts {
    /// Connections refused by any limit since start.
    pub fn refused(&self) -> u64 {
        self.refused_full
            + self.refused_per_address
            + self.refused_handshakes
            + self.refused_rate
            + self.refused_addresses
    }
}

/// The admission core: limits in, verdicts out; time passed in.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    table: HashMap<Source, Entry>,
    open: usize,
    handshaking: usize,
    counts: Counts,
}

impl Admission {
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            table: HashMap::new(),
            open: 0,
            handshaking: 0,
            counts: Counts::default(),
        }
    }

    /// New limits (a reload); connections open now keep their slots.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        self.limits.exempt.iter().any(|n| n.contains(ip))
    }

    /// A connection from `ip` wants in; `validated` says whether its
    /// address has been proven (it echoed a Retry token).
    pub fn incoming(&mut self, now: Instant, ip: IpAddr, validated: bool) -> Verdict {
        if self.open >= self.limits.max_connections {
            self.counts.refused_full += 1;
            return Verdict::Refuse(Refusal::Full);
        }
        if self.exempt(ip) {
            self.open += 1;
            self.counts.accepted += 1;
            return Verdict::Accept;
        }
        if !validated && self.handshaking >= self.limits.retry_above {
            self.counts.retries += 1;
            return Verdict::Retry;
        }
        let source = Source::of(ip);
        let rate = f64::from(self.limits.handshakes_per_address_per_sec);
        if !self.table.contains_key(&source) {
            if self.table.len() >= MAX_TRACKED {
                self.forget_idle(now);
            }
            if self.table.len() >= MAX_TRACKED {
                self.counts.refused_addresses += 1;
                return Verdict::Refuse(Refusal::TooManyAddresses);
            }
        }
        let e = self.table.entry(source).or_insert(Entry {
            open: 0,
            handshaking: 0,
            tokens: rate,
            at: now,
        });
        let elapsed = now.saturating_duration_since(e.at).as_secs_f64();
        e.tokens = (e.tokens + elapsed * rate).min(rate);
        e.at = now;
        let refusal = if e.open >= self.limits.max_per_address {
            Some(Refusal::PerAddress)
        } else if e.handshaking >= self.limits.max_handshakes_per_address {
            Some(Refusal::Handshakes)
        } else if e.tokens < 1.0 {
            Some(Refusal::Rate)
        } else {
            None
        };
        if let Some(r) = refusal {
            match r {
                Refusal::PerAddress => self.counts.refused_per_address += 1,
                Refusal::Handshakes => self.counts.refused_handshakes += 1,
                _ => self.counts.refused_rate += 1,
            }
            if e.open == 0 && e.handshaking == 0 && e.tokens >= rate {
                self.table.remove(&source);
            }
            return Verdict::Refuse(r);
        }
        e.tokens -= 1.0;
        e.open += 1;
        e.handshaking += 1;
        self.open += 1;
        self.handshaking += 1;
        self.counts.accepted += 1;
        Verdict::Accept
    }

    /// The handshake of an accepted connection from `ip` is over (either
    /// way); the connection still holds its slot if it succeeded.
    pub fn handshake_done(&mut self, ip: IpAddr) {
        if self.exempt(ip) {
            return;
        }
        if let Some(e) = self.table.get_mut(&Source::of(ip)) {
            e.handshaking = e.handshaking.saturating_sub(1);
            self.handshaking = self.handshaking.saturating_sub(1);
        }
    }

    /// An accepted connection from `ip` is gone.
    pub fn closed(&mut self, now: Instant, ip: IpAddr) {
        self.open = self.open.saturating_sub(1);
        if self.exempt(ip) {
            return;
        }
        let source = Source::of(ip);
        let rate = f64::from(self.limits.handshakes_per_address_per_sec);
        if let Some(e) = self.table.get_mut(&source) {
            e.open = e.open.saturating_sub(1);
            let elapsed = now.saturating_duration_since(e.at).as_secs_f64();
            if e.open == 0 && e.handshaking == 0 && e.tokens + elapsed * rate >= rate {
                self.table.remove(&source);
            }
        }
    }

    /// Forget addresses with nothing open whose bucket has refilled.
    pub fn forget_idle(&mut self, now: Instant) {
        let rate = f64::from(self.limits.handshakes_per_address_per_sec);
        self.table.retain(|_, e| {
            let elapsed = now.saturating_duration_since(e.at).as_secs_f64();
            e.open > 0 || e.handshaking > 0 || e.tokens + elapsed * rate < rate
        });
    }

    pub fn counts(&self) -> Counts {
        Counts {
            open: self.open,
            handshaking: self.handshaking,
            addresses: self.table.len(),
            ..self.counts.clone()
        }
    }
}

/// The admission core shared by an accept loop and its connections.
#[derive(Debug, Clone)]
pub struct Gate(Arc<Mutex<Admission>>);

impl Gate {
    pub fn new(limits: Limits) -> Gate {
        Gate(Arc::new(Mutex::new(Admission::new(limits))))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Admission) -> R) -> R {
        // A panic while holding the lock cannot leave the counts in a
        // state worse than off by one; keep admitting.
        let mut a = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut a)
    }

    pub fn set_limits(&self, limits: Limits) {
        self.with(|a| a.set_limits(limits));
    }

    pub fn counts(&self) -> Counts {
        self.with(|a| a.counts())
    }

    pub fn limits(&self) -> Limits {
        self.with(|a| a.limits().clone())
    }

    /// Decide for one incoming connection: `Ok(slot)` to go ahead (the
    /// slot is given back when dropped; call [`Slot::handshake_done`]
    /// when the handshake is over), else the verdict to carry out.
    pub fn admit(&self, ip: IpAddr, validated: bool) -> Result<Slot, Verdict> {
        match self.with(|a| a.incoming(Instant::now(), ip, validated)) {
            Verdict::Accept => Ok(Slot {
                gate: self.clone(),
                ip,
                handshaking: true,
            }),
            other => Err(other),
        }
    }
}

/// One admitted connection's place, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    gate: Gate,
    ip: IpAddr,
    handshaking: bool,
}

impl Slot {
    pub fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            let ip = self.ip;
            self.gate.with(|a| a.handshake_done(ip));
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.handshake_done();
        let ip = self.ip;
        self.gate.with(|a| a.closed(Instant::now(), ip));
    }
}

/// Carry out the gate's verdict on a quinn `Incoming`: the slot of an
/// accepted connection, or `None` when it was refused or asked to Retry.
pub fn admit_incoming(gate: &Gate, incoming: quinn::Incoming) -> Option<(Slot, quinn::Incoming)> {
    let ip = incoming.remote_address().ip();
    match gate.admit(ip, incoming.remote_address_validated()) {
        Ok(slot) => Some((slot, incoming)),
        Err(Verdict::Retry) => {
            if incoming.may_retry() {
                // Only fails when the endpoint cannot retry, checked above.
                let _ = incoming.retry();
            } else {
                incoming.refuse();
            }
            None
        }
        Err(Verdict::Refuse(r)) => {
            tracing::debug!(
                "refusing {} before its handshake: {}",
                incoming.remote_address(),
                r.as_str()
            );
            incoming.refuse();
            None
        }
        Err(Verdict::Accept) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 10,
            max_per_address: 3,
            max_handshakes_per_address: 2,
            handshakes_per_address_per_sec: 4,
            retry_above: 5,
            exempt: vec![Net::LOOPBACK_V4],
        }
    }

    #[test]
    fn one_address_is_held_to_its_share_and_others_still_get_in() {
        let mut a = Admission::new(limits());
        let t = Instant::now();
        let x = ip("203.0.113.7");
        assert_eq!(a.incoming(t, x, false), Verdict::Accept);
        assert_eq!(a.incoming(t, x, false), Verdict::Accept);
        // Two handshakes in progress: the third waits for one to finish.
        assert_eq!(
            a.incoming(t, x, false),
            Verdict::Refuse(Refusal::Handshakes)
        );
        a.handshake_done(x);
        a.handshake_done(x);
        assert_eq!(a.incoming(t, x, false), Verdict::Accept);
        a.handshake_done(x);
        // Three open: the per-address cap.
        assert_eq!(
            a.incoming(t, x, false),
            Verdict::Refuse(Refusal::PerAddress)
        );
        assert_eq!(a.incoming(t, ip("198.51.100.1"), false), Verdict::Accept);
        let c = a.counts();
        assert_eq!(
            (c.open, c.refused_per_address, c.refused_handshakes),
            (4, 1, 1)
        );
    }

    #[test]
    fn handshakes_from_one_address_are_paced_by_its_bucket() {
        let mut l = limits();
        l.max_per_address = 100;
        l.max_handshakes_per_address = 100;
        l.retry_above = 100;
        l.max_connections = 100;
        let mut a = Admission::new(l);
        let t = Instant::now();
        let x = ip("203.0.113.7");
        for _ in 0..4 {
            assert_eq!(a.incoming(t, x, true), Verdict::Accept);
            a.handshake_done(x);
        }
        assert_eq!(a.incoming(t, x, true), Verdict::Refuse(Refusal::Rate));
        // A quarter of a second later one more token has come back.
        let t2 = t + Duration::from_millis(250);
        assert_eq!(a.incoming(t2, x, true), Verdict::Accept);
        assert_eq!(a.incoming(t2, x, true), Verdict::Refuse(Refusal::Rate));
    }

    #[test]
    fn under_a_handshake_flood_unvalidated_clients_must_retry() {
        let mut l = limits();
        l.retry_above = 2;
        let mut a = Admission::new(l);
        let t = Instant::now();
        assert_eq!(a.incoming(t, ip("192.0.2.1"), false), Verdict::Accept);
        assert_eq!(a.incoming(t, ip("192.0.2.2"), false), Verdict::Accept);
        assert_eq!(a.incoming(t, ip("192.0.2.3"), false), Verdict::Retry);
        // The same client, back with its address proven, gets in.
        assert_eq!(a.incoming(t, ip("192.0.2.3"), true), Verdict::Accept);
        // A Retry keeps nothing.
        assert_eq!(a.counts().retries, 1);
        assert_eq!(a.counts().addresses, 3);
        // retry_above = 0: everyone proves their address first.
        let mut l = limits();
        l.retry_above = 0;
        let mut a = Admission::new(l);
        assert_eq!(a.incoming(t, ip("192.0.2.1"), false), Verdict::Retry);
        assert_eq!(a.incoming(t, ip("192.0.2.1"), true), Verdict::Accept);
    }

    #[test]
    fn exempt_networks_pass_but_count_towards_the_total() {
        let mut a = Admission::new(limits());
        let t = Instant::now();
        for _ in 0..10 {
            assert_eq!(a.incoming(t, ip("127.0.0.1"), false), Verdict::Accept);
        }
        assert_eq!(
            a.incoming(t, ip("127.0.0.1"), false),
            Verdict::Refuse(Refusal::Full)
        );
        assert_eq!(
            a.incoming(t, ip("192.0.2.1"), true),
            Verdict::Refuse(Refusal::Full)
        );
        a.closed(t, ip("127.0.0.1"));
        assert_eq!(a.incoming(t, ip("192.0.2.1"), true), Verdict::Accept);
        assert_eq!(a.counts().addresses, 1, "loopback is not tracked");
    }

    #[test]
    fn ipv6_is_counted_by_its_64_and_mapped_ipv4_as_ipv4() {
        let mut a = Admission::new(limits());
        let t = Instant::now();
        for host in ["2001:db8::1", "2001:db8::2", "2001:db8::ffff:1"] {
            assert_eq!(a.incoming(t, ip(host), true), Verdict::Accept);
            a.handshake_done(ip(host));
        }
        assert_eq!(
            a.incoming(t, ip("2001:db8::9"), true),
            Verdict::Refuse(Refusal::PerAddress)
        );
        assert_eq!(a.incoming(t, ip("2001:db8:0:1::1"), true), Verdict::Accept);
        assert_eq!(
            Source::of(ip("::ffff:192.0.2.1")),
            Source::of(ip("192.0.2.1"))
        );
        assert!(Net::LOOPBACK_V4.contains(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn idle_addresses_are_forgotten_and_closing_gives_slots_back() {
        let mut a = Admission::new(limits());
        let t = Instant::now();
        let x = ip("203.0.113.7");
        assert_eq!(a.incoming(t, x, true), Verdict::Accept);
        a.handshake_done(x);
        a.closed(t, x);
        assert_eq!(a.counts().open, 0);
        // Its bucket is not full yet: remembered until it is.
        assert_eq!(a.counts().addresses, 1);
        a.forget_idle(t + Duration::from_secs(1));
        assert_eq!(a.counts().addresses, 0);
    }

    #[test]
    fn networks_parse_and_match() {
        let n: Net = "10.1.0.0/16".parse().expect("net");
        assert!(n.contains(ip("10.1.200.3")));
        assert!(!n.contains(ip("10.2.0.1")));
        let one: Net = "192.0.2.5".parse().expect("host");
        assert_eq!(one.prefix, 32);
        assert!("10.0.0.0/33".parse::<Net>().is_err());
        assert!("nonsense".parse::<Net>().is_err());
        let v6: Net = "fd00::/8".parse().expect("ula");
        assert!(v6.contains(ip("fd12::1")));
        assert_eq!(v6.to_string(), "fd00::/8");
    }
}
