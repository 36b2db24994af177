//! Failed-login rate limiting, per account and per source address.
//!
//! Sans-IO: every input carries `now`. After `max_failures` failures in a
//! row a key is locked for `base_lockout`, doubling with every further
//! failure up to `max_lockout`. A key whose last failure is older than
//! `forget_after` starts afresh. A successful login clears the account's
//! count (not the address's: an address that guesses other accounts' passwords
//! stays suspect). Memory is bounded: at most `max_entries` keys of each
//! kind are tracked, the stalest dropped first.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Tunables of the limiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_failures_per_account: u32,
    pub max_failures_per_address: u32,
    pub base_lockout: Duration,
    pub max_lockout: Duration,
    pub forget_after: Duration,
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_failures_per_account: 5,
            max_failures_per_address: 20,
            base_lockout: Duration::from_secs(30),
            max_lockout: Duration::from_secs(3600),
            forget_after: Duration::from_secs(900),
            max_entries: 100_000,
        }
    }
}

/// Which key is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Account,
    Address,
}

/// A refusal: the key is locked until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    pub scope: Scope,
    pub until: Instant,
}

impl Locked {
    pub fn retry_after(&self, now: Instant) -> Duration {
        self.until.saturating_duration_since(now)
    }

    /// A message for people.
    pub fn describe(&self, now: Instant, account: &str) -> String {
        let secs = self.retry_after(now).as_secs_f64().ceil() as u64;
        match self.scope {
            Scope::Account => {
                format!("too many failed logins for account {account}; try again in {secs} s")
            }
            Scope::Address => {
                format!("too many failed logins from your address; try again in {secs} s")
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

#[derive(Debug)]
struct Table<K> {
    entries: HashMap<K, Entry>,
}

impl<K: Eq + Hash + Clone> Table<K> {
    fn new() -> Self {
        Table {
            entries: HashMap::new(),
        }
    }

    fn locked(&self, now: Instant, k: &K) -> Option<Instant> {
        let e = self.entries.get(k)?;
        e.locked_until.filter(|u| *u > now)
    }

    fn fail(&mut self, now: Instant, k: &K, max: u32, limits: &Limits) {
        if !self.entries.contains_key(k) && self.entries.len() >= limits.max_entries {
            self.evict(now, limits);
        }
        let e = self.entries.entry(k.clone()).or_insert(Entry {
            failures: 0,
            last: now,
            locked_until: None,
        });
        if now.saturating_duration_since(e.last) > limits.forget_after
            && e.locked_until.is_none_or(|u| u <= now)
        {
            e.failures = 0;
            e.locked_until = None;
        }
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        if e.failures >= max {
            let extra = (e.failures - max).min(20);
            let lock = limits
                .base_lockout
                .saturating_mul(1u32 << extra)
                .min(limits.max_lockout);
            e.locked_until = Some(now + lock);
        }
    }

    fn clear(&mut self, k: &K) {
        self.entries.remove(k);
    }

    /// Drop forgotten entries; if still full, the stalest tenth.
    fn evict(&mut self, now: Instant, limits: &Limits) {
        self.entries.retain(|_, e| {
            now.saturating_duration_since(e.last) <= limits.forget_after
                || e.locked_until.is_some_and(|u| u > now)
        });
        if self.entries.len() >= limits.max_entries {
            let mut lasts: Vec<Instant> = self.entries.values().map(|e| e.last).collect();
            lasts.sort_unstable();
            let cut = lasts[lasts.len() / 10];
            self.entries.retain(|_, e| e.last > cut);
        }
    }
}

/// The login limiter.
#[derive(Debug)]
pub struct LoginLimiter {
    limits: Limits,
    accounts: Table<String>,
    addresses: Table<IpAddr>,
}

impl LoginLimiter {
    pub fn new(limits: Limits) -> LoginLimiter {
        LoginLimiter {
            limits,
            accounts: Table::new(),
            addresses: Table::new(),
        }
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// May `account` try a password from `ip` now? Checked before the
    /// (expensive) password hash is computed.
    pub fn check(&self, now: Instant, account: &str, ip: IpAddr) -> Result<(), Locked> {
        if let Some(until) = self.accounts.locked(now, &account.to_string()) {
            return Err(Locked {
                scope: Scope::Account,
                until,
            });
        }
        if let Some(until) = self.addresses.locked(now, &ip) {
            return Err(Locked {
                scope: Scope::Address,
                until,
            });
        }
        Ok(())
    }

    pub fn failure(&mut self, now: Instant, account: &str, ip: IpAddr) {
        let l = self.limits.clone();
        self.accounts
            .fail(now, &account.to_string(), l.max_failures_per_account, &l);
        self.addresses
            .fail(now, &ip, l.max_failures_per_address, &l);
    }

    /// May `ip` try a session token now?
    pub fn check_address(&self, now: Instant, ip: IpAddr) -> Result<(), Locked> {
        match self.addresses.locked(now, &ip) {
            Some(until) => Err(Locked {
                scope: Scope::Address,
                until,
            }),
            None => Ok(()),
        }
    }

    /// A bad session token from `ip`.
    pub fn failure_address(&mut self, now: Instant, ip: IpAddr) {
        let l = self.limits.clone();
        self.addresses
            .fail(now, &ip, l.max_failures_per_address, &l);
    }

    pub fn success(&mut self, _now: Instant, account: &str, _ip: IpAddr) {
        self.accounts.clear(&account.to_string());
    }

    /// Keys currently tracked (for status).
    pub fn tracked(&self) -> (usize, usize) {
        (self.accounts.entries.len(), self.addresses.entries.len())
    }

    /// Is `account` locked now (for the `users` listing)?
    pub fn account_locked(&self, now: Instant, account: &str) -> Option<Instant> {
        self.accounts.locked(now, &account.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const IP2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn five_failures_lock_the_account_with_growing_lockouts() {
        let now = Instant::now();
        let mut l = LoginLimiter::new(Limits::default());
        for i in 0..4 {
            l.failure(now + Duration::from_secs(i), "alice", IP);
            assert!(l.check(now + Duration::from_secs(i), "alice", IP).is_ok());
        }
        let t = now + Duration::from_secs(4);
        l.failure(t, "alice", IP);
        let locked = l.check(t, "alice", IP).expect_err("locked");
        assert_eq!(locked.scope, Scope::Account);
        assert_eq!(locked.retry_after(t), Duration::from_secs(30));
        assert!(locked.describe(t, "alice").contains("try again in 30 s"));
        // Other accounts are not affected; from another address neither.
        assert!(l.check(t, "bob", IP).is_ok());
        // After the lockout, one more failure doubles it.
        let t2 = t + Duration::from_secs(31);
        assert!(l.check(t2, "alice", IP2).is_ok());
        l.failure(t2, "alice", IP2);
        assert_eq!(
            l.check(t2, "alice", IP2)
                .expect_err("locked")
                .retry_after(t2),
            Duration::from_secs(60)
        );
        // Success after the lockout clears the account.
        let t3 = t2 + Duration::from_secs(61);
        l.success(t3, "alice", IP2);
        l.failure(t3, "alice", IP2);
        assert!(l.check(t3, "alice", IP2).is_ok());
    }

    #[test]
    fn an_address_guessing_many_accounts_is_locked() {
        let now = Instant::now();
        let mut l = LoginLimiter::new(Limits::default());
        for i in 0..20 {
            l.failure(now, &format!("user{i}"), IP);
        }
        let e = l
            .check(now, "someone-else", IP)
            .expect_err("address locked");
        assert_eq!(e.scope, Scope::Address);
        assert!(e.describe(now, "x").contains("from your address"));
        assert!(l.check(now, "someone-else", IP2).is_ok());
    }

    #[test]
    fn old_failures_are_forgotten() {
        let now = Instant::now();
        let mut l = LoginLimiter::new(Limits::default());
        for _ in 0..4 {
            l.failure(now, "a", IP);
        }
        let later = now + Duration::from_secs(901);
        l.failure(later, "a", IP);
        assert!(l.check(later, "a", IP).is_ok());
    }

    proptest! {
        /// Memory stays bounded and a lockout never exceeds the maximum.
        #[test]
        fn bounded(events in prop::collection::vec((0u16..500, 0u8..4, 0u64..100), 1..400)) {
            let limits = Limits { max_entries: 50, ..Limits::default() };
            let mut l = LoginLimiter::new(limits.clone());
            let start = Instant::now();
            for (acct, ip, dt) in events {
                let now = start + Duration::from_secs(dt);
                let ip = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, ip));
                l.failure(now, &format!("u{acct}"), ip);
                if let Err(e) = l.check(now, &format!("u{acct}"), ip) {
                    prop_assert!(e.retry_after(now) <= limits.max_lockout);
                }
                let (a, b) = l.tracked();
                prop_assert!(a <= limits.max_entries && b <= limits.max_entries);
            }
        }
    }
}
