//! Connectivity checks for a call's end-to-end media path, in the way of
//! ICE (RFC 8445), decided here without I/O: time is passed in, datagrams
//! to send come out.
//!
//! While the callee rings, the directory gives both ends each other's
//! candidate addresses and a per-call key. Each end then sends paced
//! checks to every candidate at once, so that the mappings in both
//! routers exist before the first real packet of the call. A check that
//! arrives from an address nobody offered (the other end's router gave
//! it a new port: a peer-reflexive candidate) is learnt, answered, and
//! checked back. An answered check validates its address: the caller
//! dials those first when the call is answered, and when checks ran for a
//! while without any answer it goes to the relay at once instead of
//! waiting out a direct attempt that cannot work.
//!
//! A check is one UDP datagram on the endpoint's own socket, beside QUIC:
//! it starts with a zero byte (QUIC's fixed bit clear, so no QUIC packet
//! is mistaken for it and QUIC drops any it is shown) and carries a
//! truncated HMAC-SHA256 under the call's key, so nobody without the key
//! can make us learn an address or answer on their behalf. Everything is
//! bounded: sessions, candidates per session, and the rounds of checks.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ring::hmac;

/// The first bytes of every check datagram.
const MAGIC: [u8; 5] = [0, b'K', b'L', b'c', b'k'];
const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;
const MAC_LEN: usize = 16;
/// Longest check datagram: magic, kind, session, transaction, an IPv6
/// address with its port, the MAC.
pub const MAX_CHECK_LEN: usize = 5 + 1 + 8 + 8 + 1 + 16 + 2 + MAC_LEN;

/// Calls checked at once; more are refused (the oldest is not evicted).
pub const MAX_SESSIONS: usize = 64;
/// Candidates kept per call, offered and learnt together.
pub const MAX_CANDIDATES: usize = 16;
/// When each round of checks goes out, from the session's start; after
/// the last, one round every [`KEEPALIVE`] while the session lasts.
const ROUNDS_MS: [u64; 8] = [0, 50, 150, 300, 600, 1000, 1500, 2200];
/// Rounds after the schedule: keep the mappings of a long ring alive.
const KEEPALIVE: Duration = Duration::from_secs(3);
/// A session forgotten if nobody stops it (a ring that never ended here).
const LIFETIME: Duration = Duration::from_secs(180);
/// Checks without any answer for this long mean no direct path: the
/// rounds by then (0, 50, 150, 300, 600 ms) have each had time to
/// come back across the internet.
pub const HOPELESS_AFTER: Duration = Duration::from_millis(1000);

/// Why a candidate is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The directory offered it (the peer's own or its observed address).
    Offered,
    /// A check arrived from it (peer-reflexive).
    Learnt,
}

#[derive(Debug, Clone)]
struct Pair {
    addr: SocketAddr,
    origin: Origin,
    /// When an answer to our check came from it.
    validated: Option<Instant>,
}

#[derive(Debug)]
struct Session {
    call: u64,
    key: hmac::Key,
    pairs: Vec<Pair>,
    started: Instant,
    /// The next round and when it is due.
    round: usize,
    next: Instant,
    expires: Instant,
    /// Checks received from the peer (at any address).
    heard: u32,
}

/// What the checks of one call found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Addresses the peer answered from, first answered first.
    pub validated: Vec<SocketAddr>,
    /// Addresses the peer's checks came from that nobody offered.
    pub learnt: Vec<SocketAddr>,
    /// How long the checks have been running.
    pub running: Duration,
    /// Whether the peer's checks reached us at all.
    pub heard: bool,
}

impl Report {
    /// Checks ran long enough that an answer would have come, and none
    /// did: a direct attempt would only delay the relay.
    pub fn hopeless(&self) -> bool {
        self.validated.is_empty() && self.learnt.is_empty() && self.running >= HOPELESS_AFTER
    }

    /// The addresses to dial first: validated ones, then learnt ones.
    pub fn preferred(&self) -> Vec<SocketAddr> {
        let mut out = self.validated.clone();
        for a in &self.learnt {
            if !out.contains(a) {
                out.push(*a);
            }
        }
        out
    }
}

/// Why a session could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// The key is not hex of 16 bytes or more.
    BadKey,
    /// [`MAX_SESSIONS`] calls are being checked already.
    Full,
}

/// The checks of every call of one endpoint.
#[derive(Debug, Default)]
pub struct Checks {
    sessions: HashMap<[u8; 8], Session>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    txid: u64,
    /// Bumped whenever a call's checks learn or validate an address.
    found: u64,
}

/// The session id both ends derive from the call's key.
fn session_id(key: &[u8]) -> [u8; 8] {
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        b"keyline check session",
    );
    let mut id = [0u8; 8];
    id.copy_from_slice(&tag.as_ref()[..8]);
    id
}

/// Whether `bytes` looks like a check (cheap: for the socket's receive
/// path to set it aside from QUIC).
pub fn is_check(bytes: &[u8]) -> bool {
    bytes.len() >= MAGIC.len() + 1 + 8 + 8 + MAC_LEN
        && bytes.len() <= MAX_CHECK_LEN
        && bytes[..MAGIC.len()] == MAGIC
}

impl Checks {
    pub fn new() -> Checks {
        Checks::default()
    }

    /// Start checking `call` towards `candidates` under `key` (hex, from
    /// the directory), the first round after `delay`. Starting a call
    /// that runs already adds the candidates.
    pub fn start(
        &mut self,
        now: Instant,
        call: u64,
        key_hex: &str,
        candidates: &[SocketAddr],
        delay: Duration,
    ) -> Result<(), StartError> {
        let key = hex::decode(key_hex).map_err(|_| StartError::BadKey)?;
        if key.len() < 16 {
            return Err(StartError::BadKey);
        }
        let id = session_id(&key);
        if !self.sessions.contains_key(&id) && self.sessions.len() >= MAX_SESSIONS {
            self.expire(now);
            if self.sessions.len() >= MAX_SESSIONS {
                return Err(StartError::Full);
            }
        }
        let s = self.sessions.entry(id).or_insert_with(|| Session {
            call,
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            pairs: Vec::new(),
            started: now + delay,
            round: 0,
            next: now + delay,
            expires: now + LIFETIME,
            heard: 0,
        });
        for &a in candidates {
            add_pair(s, a, Origin::Offered);
        }
        Ok(())
    }

    /// Stop checking `call` (it was connected, relayed or ended).
    pub fn stop(&mut self, call: u64) {
        self.sessions.retain(|_, s| s.call != call);
    }

    /// What the checks of `call` found so far.
    pub fn report(&self, now: Instant, call: u64) -> Option<Report> {
        let s = self.sessions.values().find(|s| s.call == call)?;
        let mut validated: Vec<&Pair> = s.pairs.iter().filter(|p| p.validated.is_some()).collect();
        validated.sort_by_key(|p| p.validated);
        Some(Report {
            validated: validated.iter().map(|p| p.addr).collect(),
            learnt: s
                .pairs
                .iter()
                .filter(|p| p.origin == Origin::Learnt)
                .map(|p| p.addr)
                .collect(),
            running: now.saturating_duration_since(s.started),
            heard: s.heard > 0,
        })
    }

    /// When [`Checks::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions.values().map(|s| s.next.min(s.expires)).min()
    }

    /// Send the rounds that are due; forget sessions past their lifetime.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        let mut due = Vec::new();
        for (id, s) in &mut self.sessions {
            if s.next > now {
                continue;
            }
            for p in &s.pairs {
                due.push((*id, p.addr));
            }
            s.round += 1;
            s.next = match ROUNDS_MS.get(s.round) {
                Some(&ms) => s.started + Duration::from_millis(ms),
                None => now + KEEPALIVE,
            };
        }
        for (id, to) in due {
            self.request(id, to);
        }
    }

    /// A datagram that [`is_check`] said was one, from `from`. Returns
    /// whether it was a valid check of one of our calls.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> bool {
        let Some(check) = parse(bytes) else {
            return false;
        };
        let Some(s) = self.sessions.get_mut(&check.session) else {
            return false;
        };
        let body = &bytes[..bytes.len() - MAC_LEN];
        let mac = &bytes[bytes.len() - MAC_LEN..];
        let tag = hmac::sign(&s.key, body);
        if !constant_eq(&tag.as_ref()[..MAC_LEN], mac) {
            return false;
        }
        match check.kind {
            REQUEST => {
                s.heard = s.heard.saturating_add(1);
                let new = !s.pairs.iter().any(|p| p.addr == from);
                if new && add_pair(s, from, Origin::Learnt) {
                    self.found += 1;
                }
                let key = s.key.clone();
                let reply = encode(&key, RESPONSE, check.session, check.txid, Some(from));
                self.out.push_back((from, reply));
                // A triggered check: open our side towards it now.
                if new {
                    self.request(check.session, from);
                }
            }
            RESPONSE => {
                if let Some(p) = s.pairs.iter_mut().find(|p| p.addr == from) {
                    if p.validated.is_none() {
                        p.validated = Some(now);
                        self.found += 1;
                    }
                } else if s.pairs.len() < MAX_CANDIDATES {
                    s.pairs.push(Pair {
                        addr: from,
                        origin: Origin::Learnt,
                        validated: Some(now),
                    });
                    self.found += 1;
                }
            }
            _ => return false,
        }
        true
    }

    /// A count that grows whenever some call's checks learn or validate
    /// an address: a dialler watching it knows when to ask for a fresh
    /// [`Report`].
    pub fn found(&self) -> u64 {
        self.found
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    fn request(&mut self, id: [u8; 8], to: SocketAddr) {
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        self.txid = self.txid.wrapping_add(1);
        let bytes = encode(&s.key, REQUEST, id, self.txid, None);
        // Bounded: at most every pair of every session per round.
        if self.out.len() < MAX_SESSIONS * MAX_CANDIDATES * 2 {
            self.out.push_back((to, bytes));
        }
    }

    fn expire(&mut self, now: Instant) {
        self.sessions.retain(|_, s| s.expires > now);
    }
}

/// Add a pair unless it is known or the session is full; whether it was.
fn add_pair(s: &mut Session, addr: SocketAddr, origin: Origin) -> bool {
    if s.pairs.len() >= MAX_CANDIDATES || s.pairs.iter().any(|p| p.addr == addr) {
        return false;
    }
    s.pairs.push(Pair {
        addr,
        origin,
        validated: None,
    });
    true
}

struct Parsed {
    kind: u8,
    session: [u8; 8],
    txid: u64,
}

fn parse(b: &[u8]) -> Option<Parsed> {
    if !is_check(b) {
        return None;
    }
    let kind = b[5];
    let session: [u8; 8] = b.get(6..14)?.try_into().ok()?;
    let txid = u64::from_be_bytes(b.get(14..22)?.try_into().ok()?);
    Some(Parsed {
        kind,
        session,
        txid,
    })
}

fn encode(
    key: &hmac::Key,
    kind: u8,
    session: [u8; 8],
    txid: u64,
    observed: Option<SocketAddr>,
) -> Vec<u8> {
    let mut b = Vec::with_capacity(MAX_CHECK_LEN);
    b.extend_from_slice(&MAGIC);
    b.push(kind);
    b.extend_from_slice(&session);
    b.extend_from_slice(&txid.to_be_bytes());
    if let Some(a) = observed {
        match a.ip() {
            IpAddr::V4(ip) => {
                b.push(4);
                b.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                b.push(6);
                b.extend_from_slice(&ip.octets());
            }
        }
        b.extend_from_slice(&a.port().to_be_bytes());
    }
    let tag = hmac::sign(key, &b);
    b.extend_from_slice(&tag.as_ref()[..MAC_LEN]);
    b
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn drain(c: &mut Checks) -> Vec<(SocketAddr, Vec<u8>)> {
        std::iter::from_fn(|| c.poll_transmit()).collect()
    }

    /// Deliver what `from` sends to `to`, as though `from`'s packets came
    /// out of a router at `seen_as` (None: nothing arrives).
    fn deliver(
        now: Instant,
        out: Vec<(SocketAddr, Vec<u8>)>,
        to: &mut Checks,
        to_addr: SocketAddr,
        seen_as: Option<SocketAddr>,
    ) -> usize {
        let mut n = 0;
        for (dst, bytes) in out {
            if dst == to_addr {
                if let Some(src) = seen_as {
                    assert!(is_check(&bytes));
                    assert!(to.handle_datagram(now, src, &bytes));
                    n += 1;
                }
            }
        }
        n
    }

    #[test]
    fn rounds_follow_the_schedule_then_keep_alive_and_end() {
        let t0 = Instant::now();
        let mut c = Checks::new();
        let peer = addr("192.0.2.1:7000");
        c.start(
            t0,
            1,
            KEY,
            &[peer, addr("10.0.0.2:7000")],
            Duration::from_millis(100),
        )
        .unwrap();
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_millis(100)));
        c.handle_timeout(t0);
        assert!(drain(&mut c).is_empty(), "nothing before the delay");
        let mut sent = 0;
        let mut now = t0;
        while now < t0 + Duration::from_secs(10) {
            now = c.poll_timeout().unwrap();
            c.handle_timeout(now);
            sent += drain(&mut c).len();
        }
        // 8 scheduled rounds and keep-alives every 3 s, to both pairs.
        assert!((2 * 8..=2 * 12).contains(&sent), "{sent}");
        c.stop(1);
        assert_eq!(c.poll_timeout(), None);
        assert!(c.report(now, 1).is_none());
    }

    #[test]
    fn both_ends_validate_each_other() {
        let t0 = Instant::now();
        let (a_addr, b_addr) = (addr("192.0.2.1:7000"), addr("198.51.100.2:7000"));
        let (mut a, mut b) = (Checks::new(), Checks::new());
        a.start(t0, 5, KEY, &[b_addr], Duration::ZERO).unwrap();
        b.start(t0, 9, KEY, &[a_addr], Duration::ZERO).unwrap();
        a.handle_timeout(t0);
        b.handle_timeout(t0);
        let from_a = drain(&mut a);
        let from_b = drain(&mut b);
        deliver(t0, from_a, &mut b, b_addr, Some(a_addr));
        deliver(t0, from_b, &mut a, a_addr, Some(b_addr));
        // The answers.
        let from_a = drain(&mut a);
        let from_b = drain(&mut b);
        deliver(t0, from_a, &mut b, b_addr, Some(a_addr));
        deliver(t0, from_b, &mut a, a_addr, Some(b_addr));
        let ra = a.report(t0, 5).unwrap();
        assert_eq!(ra.validated, vec![b_addr]);
        assert!(ra.learnt.is_empty() && ra.heard && !ra.hopeless());
        assert_eq!(b.report(t0, 9).unwrap().validated, vec![a_addr]);
    }

    /// The callee's router gave its checks a new port (a masquerade that
    /// saw the caller's packet first): the caller learns that port from
    /// the check, answers it and checks it back; both validate.
    #[test]
    fn a_remapped_port_is_learnt_from_the_check() {
        let t0 = Instant::now();
        let caller = addr("192.0.2.1:7000");
        let offered = addr("198.51.100.2:7000");
        let remapped = addr("198.51.100.2:40123");
        let (mut a, mut b) = (Checks::new(), Checks::new());
        a.start(t0, 1, KEY, &[offered], Duration::ZERO).unwrap();
        b.start(t0, 1, KEY, &[caller], Duration::ZERO).unwrap();
        a.handle_timeout(t0);
        drain(&mut a); // to `offered`: the router has no way in
        b.handle_timeout(t0);
        let from_b = drain(&mut b);
        assert_eq!(a.found(), 0);
        assert_eq!(deliver(t0, from_b, &mut a, caller, Some(remapped)), 1);
        let r = a.report(t0, 1).unwrap();
        assert_eq!(r.learnt, vec![remapped]);
        // A dialler watching `found` hears of it (once).
        assert_eq!(a.found(), 1);
        // The answer and a triggered check both go to the new port.
        let from_a = drain(&mut a);
        assert_eq!(from_a.iter().filter(|(to, _)| *to == remapped).count(), 2);
        for (_, bytes) in from_a {
            assert!(b.handle_datagram(t0, caller, &bytes));
        }
        assert_eq!(b.report(t0, 1).unwrap().validated, vec![caller]);
        let from_b = drain(&mut b);
        deliver(t0, from_b, &mut a, caller, Some(remapped));
        let r = a.report(t0, 1).unwrap();
        assert_eq!(r.validated, vec![remapped]);
        assert_eq!(r.preferred(), vec![remapped]);
        // Validated now: heard of again.
        assert_eq!(a.found(), 2);
    }

    #[test]
    fn forged_and_foreign_checks_are_ignored() {
        let t0 = Instant::now();
        let mut a = Checks::new();
        let mut other = Checks::new();
        let peer = addr("192.0.2.9:9");
        a.start(t0, 1, KEY, &[peer], Duration::ZERO).unwrap();
        other
            .start(t0, 1, &KEY.replace('0', "1"), &[peer], Duration::ZERO)
            .unwrap();
        other.handle_timeout(t0);
        for (_, bytes) in drain(&mut other) {
            assert!(!a.handle_datagram(t0, addr("203.0.113.5:1"), &bytes));
        }
        // Same session, a flipped bit in the MAC.
        let mut b = Checks::new();
        b.start(t0, 1, KEY, &[peer], Duration::ZERO).unwrap();
        b.handle_timeout(t0);
        let (_, mut bytes) = b.poll_transmit().unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(!a.handle_datagram(t0, addr("203.0.113.5:1"), &bytes));
        assert!(a.report(t0, 1).unwrap().learnt.is_empty());
        assert!(drain(&mut a).is_empty(), "nothing answered");
        for junk in [&b""[..], &[0u8], &[0, b'K', b'L', b'c', b'k'], &[0x40; 40]] {
            assert!(!is_check(junk) || !a.handle_datagram(t0, peer, junk));
        }
    }

    #[test]
    fn silence_becomes_hopeless_and_limits_hold() {
        let t0 = Instant::now();
        let mut a = Checks::new();
        a.start(t0, 1, KEY, &[addr("192.0.2.1:1")], Duration::ZERO)
            .unwrap();
        assert!(!a.report(t0, 1).unwrap().hopeless());
        assert!(a.report(t0 + Duration::from_secs(2), 1).unwrap().hopeless());
        assert_eq!(
            a.start(t0, 2, "zz", &[], Duration::ZERO),
            Err(StartError::BadKey)
        );
        for i in 1..MAX_SESSIONS as u64 {
            let key = format!("{i:032x}");
            a.start(t0, 100 + i, &key, &[], Duration::ZERO).unwrap();
        }
        assert_eq!(
            a.start(t0, 999, &format!("{:032x}", 9999), &[], Duration::ZERO),
            Err(StartError::Full)
        );
        // Past their lifetime they make room.
        let later = t0 + LIFETIME + Duration::from_secs(1);
        a.start(later, 999, &format!("{:032x}", 9999), &[], Duration::ZERO)
            .unwrap();
        // Candidates are bounded, learnt ones included.
        let many: Vec<SocketAddr> = (0..40)
            .map(|p| addr(&format!("192.0.2.1:{}", 1000 + p)))
            .collect();
        a.start(later, 999, &format!("{:032x}", 9999), &many, Duration::ZERO)
            .unwrap();
        a.handle_timeout(later);
        assert_eq!(drain(&mut a).len(), MAX_CANDIDATES);
    }
}
