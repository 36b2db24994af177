//! Failed-login rate limiting: per account from one address, per address,
//! and per account from everywhere.
//!
//! Sans-IO: every input carries `now`. Three kinds of key count failures:
//!
//! * **an account from one address** (`max_failures_per_account`, 5):
//!   that many wrong passwords in a row for one account from one address
//!   lock that address out of that account only. Its owner, logging in
//!   from anywhere else, is not affected: a stranger cannot lock a user out
//!   by guessing wrong on purpose. A successful login from the address
//!   clears this count;
//! * **an address** (`max_failures_per_address`, 20): that many failures
//!   from one address, whatever the accounts, lock the address out of
//!   every account (it guesses more than one). Success does not clear it;
//! * **an account from everywhere** (`max_failures_account_wide`, 100):
//!   so many failures from many addresses at once is a distributed attack,
//!   and locks the account for every address. One address alone can never
//!   get there (its own two limits stop it first), so only an attacker with
//!   dozens of addresses can lock an owner out, and only for the lockout.
//!
//! A locked key stays locked for `base_lockout`, doubling with every
//! further failure up to `max_lockout`; a key whose last failure is older
//! than `forget_after` starts afresh.
//!
//! A password is checked only after [`LoginLimiter::begin`] has reserved an
//! attempt on all three keys, and the attempt counts until
//! [`LoginLimiter::finish`] records its outcome. A key allows only as many
//! attempts in flight as it has failures left before it locks (and one at a
//! time once a lockout has run out), so however many logins arrive at once,
//! no more passwords are checked than the limits allow.
//!
//! Memory is bounded: at most `max_entries` keys of each kind are tracked,
//! the stalest dropped first (never one with an attempt in flight).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Tunables of the limiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Failures in a row for one account from one address.
    pub max_failures_per_account: u32,
    /// Failures in a row from one address, any accounts.
    pub max_failures_per_address: u32,
    /// Failures in a row for one account from all addresses together.
    pub max_failures_account_wide: u32,
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
            max_failures_account_wide: 100,
            base_lockout: Duration::from_secs(30),
            max_lockout: Duration::from_secs(3600),
            forget_after: Duration::from_secs(900),
            max_entries: 100_000,
        }
    }
}

/// How long a login refused because others are still being checked is
/// told to wait.
pub const BUSY_RETRY: Duration = Duration::from_secs(1);

/// Which key refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The account, from this address only.
    AccountFromAddress,
    /// The address, for every account.
    Address,
    /// The account, from every address.
    Account,
}

/// A refusal: the key is locked until `until`, or (`busy`) as many logins
/// as it may still fail are being checked right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    pub scope: Scope,
    pub until: Instant,
    pub busy: bool,
}

impl Locked {
    pub fn retry_after(&self, now: Instant) -> Duration {
        self.until.saturating_duration_since(now)
    }

    /// A message for people.
    pub fn describe(&self, now: Instant, account: &str) -> String {
        let secs = self.retry_after(now).as_secs_f64().ceil() as u64;
        let what = if self.busy {
            "too many logins at once"
        } else {
            "too many failed logins"
        };
        match self.scope {
            Scope::AccountFromAddress => {
                format!("{what} for account {account} from your address; try again in {secs} s")
            }
            Scope::Address => format!("{what} from your address; try again in {secs} s"),
            Scope::Account => format!("{what} for account {account}; try again in {secs} s"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
    /// Attempts reserved and not finished yet.
    pending: u32,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            failures: 0,
            last: now,
            locked_until: None,
            pending: 0,
        }
    }

    fn locked(&self, now: Instant) -> Option<Instant> {
        self.locked_until.filter(|u| *u > now)
    }

    /// Failures that still count at `now`.
    fn failures(&self, now: Instant, limits: &Limits) -> u32 {
        if self.locked(now).is_none()
            && now.saturating_duration_since(self.last) > limits.forget_after
        {
            0
        } else {
            self.failures
        }
    }

    /// Attempts that may be in flight at once: the failures left before
    /// the key locks, and one once a lockout has run out.
    fn room(&self, now: Instant, max: u32, limits: &Limits) -> u32 {
        max.saturating_sub(self.failures(now, limits)).max(1)
    }
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
        self.entries.get(k)?.locked(now)
    }

    /// May one more attempt on `k` start now?
    fn admits(
        &self,
        now: Instant,
        k: &K,
        max: u32,
        limits: &Limits,
    ) -> Result<(), (Instant, bool)> {
        let Some(e) = self.entries.get(k) else {
            return Ok(());
        };
        if let Some(until) = e.locked(now) {
            return Err((until, false));
        }
        if e.pending >= e.room(now, max, limits) {
            return Err((now + BUSY_RETRY, true));
        }
        Ok(())
    }

    fn entry(&mut self, now: Instant, k: &K, limits: &Limits) -> &mut Entry {
        if !self.entries.contains_key(k) && self.entries.len() >= limits.max_entries {
            self.evict(now, limits);
        }
        self.entries
            .entry(k.clone())
            .or_insert_with(|| Entry::new(now))
    }

    fn reserve(&mut self, now: Instant, k: &K, limits: &Limits) {
        let e = self.entry(now, k, limits);
        e.pending = e.pending.saturating_add(1);
    }

    fn release(&mut self, k: &K) {
        if let Some(e) = self.entries.get_mut(k) {
            e.pending = e.pending.saturating_sub(1);
        }
    }

    fn fail(&mut self, now: Instant, k: &K, max: u32, limits: &Limits) {
        let e = self.entry(now, k, limits);
        if e.failures(now, limits) == 0 {
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
        match self.entries.get_mut(k) {
            Some(e) if e.pending > 0 => {
                e.failures = 0;
                e.locked_until = None;
            }
            Some(_) => {
                self.entries.remove(k);
            }
            None => {}
        }
    }

    /// Drop forgotten entries; if still full, the stalest tenth. Entries
    /// with attempts in flight stay.
    fn evict(&mut self, now: Instant, limits: &Limits) {
        self.entries.retain(|_, e| {
            e.pending > 0
                || now.saturating_duration_since(e.last) <= limits.forget_after
                || e.locked(now).is_some()
        });
        if self.entries.len() >= limits.max_entries {
            let mut lasts: Vec<Instant> = self
                .entries
                .values()
                .filter(|e| e.pending == 0)
                .map(|e| e.last)
                .collect();
            lasts.sort_unstable();
            if let Some(cut) = lasts.get(lasts.len() / 10) {
                let cut = *cut;
                self.entries.retain(|_, e| e.pending > 0 || e.last > cut);
            }
        }
    }
}

/// A reserved password check: hand it back to [`LoginLimiter::finish`]
/// (or [`LoginLimiter::release`] when no password was checked).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an attempt holds its place until it is finished or released"]
pub struct Attempt {
    account: String,
    ip: IpAddr,
}

/// The login limiter.
#[derive(Debug)]
pub struct LoginLimiter {
    limits: Limits,
    pairs: Table<(String, IpAddr)>,
    accounts: Table<String>,
    addresses: Table<IpAddr>,
}

impl LoginLimiter {
    pub fn new(limits: Limits) -> LoginLimiter {
        LoginLimiter {
            limits,
            pairs: Table::new(),
            accounts: Table::new(),
            addresses: Table::new(),
        }
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// May `account` try a password from `ip` now? If so the attempt is
    /// reserved (before the expensive password hash is computed) and
    /// counts until it is finished or released.
    pub fn begin(&mut self, now: Instant, account: &str, ip: IpAddr) -> Result<Attempt, Locked> {
        let l = &self.limits;
        let pair = (account.to_string(), ip);
        let refused = |scope| move |(until, busy)| Locked { scope, until, busy };
        self.pairs
            .admits(now, &pair, l.max_failures_per_account, l)
            .map_err(refused(Scope::AccountFromAddress))?;
        self.addresses
            .admits(now, &ip, l.max_failures_per_address, l)
            .map_err(refused(Scope::Address))?;
        self.accounts
            .admits(now, &pair.0, l.max_failures_account_wide, l)
            .map_err(refused(Scope::Account))?;
        let l = self.limits.clone();
        self.pairs.reserve(now, &pair, &l);
        self.addresses.reserve(now, &ip, &l);
        self.accounts.reserve(now, &pair.0, &l);
        Ok(Attempt {
            account: pair.0,
            ip,
        })
    }

    /// The outcome of a reserved attempt. After a failure, the refusal the
    /// next attempt would meet, if any.
    pub fn finish(&mut self, now: Instant, attempt: Attempt, ok: bool) -> Option<Locked> {
        let l = self.limits.clone();
        let pair = (attempt.account, attempt.ip);
        self.release_keys(&pair);
        if ok {
            self.pairs.clear(&pair);
            return None;
        }
        self.pairs.fail(now, &pair, l.max_failures_per_account, &l);
        self.addresses
            .fail(now, &pair.1, l.max_failures_per_address, &l);
        self.accounts
            .fail(now, &pair.0, l.max_failures_account_wide, &l);
        self.locked(now, &pair)
    }

    /// Give a reserved attempt back without an outcome (no password was
    /// checked: a storage error).
    pub fn release(&mut self, attempt: Attempt) {
        self.release_keys(&(attempt.account, attempt.ip));
    }

    fn release_keys(&mut self, pair: &(String, IpAddr)) {
        self.pairs.release(pair);
        self.addresses.release(&pair.1);
        self.accounts.release(&pair.0);
    }

    /// The lock, if any, that refuses `account` from `ip` now.
    fn locked(&self, now: Instant, pair: &(String, IpAddr)) -> Option<Locked> {
        let lock = |scope| {
            move |until| Locked {
                scope,
                until,
                busy: false,
            }
        };
        self.pairs
            .locked(now, pair)
            .map(lock(Scope::AccountFromAddress))
            .or_else(|| {
                self.addresses
                    .locked(now, &pair.1)
                    .map(lock(Scope::Address))
            })
            .or_else(|| self.accounts.locked(now, &pair.0).map(lock(Scope::Account)))
    }

    /// May `ip` try a session token now?
    pub fn check_address(&self, now: Instant, ip: IpAddr) -> Result<(), Locked> {
        match self.addresses.locked(now, &ip) {
            Some(until) => Err(Locked {
                scope: Scope::Address,
                until,
                busy: false,
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

    /// The outcome of a password check that another node of the cluster
    /// made, counted here as if it had been made here: spreading guesses
    /// over the nodes gains an attacker only the attempts in flight at once.
    /// `account: None` is a bad session token from `ip`.
    pub fn remote_outcome(&mut self, now: Instant, account: Option<&str>, ip: IpAddr, ok: bool) {
        let l = self.limits.clone();
        let Some(account) = account else {
            if !ok {
                self.addresses
                    .fail(now, &ip, l.max_failures_per_address, &l);
            }
            return;
        };
        let pair = (account.to_string(), ip);
        if ok {
            self.pairs.clear(&pair);
            return;
        }
        self.pairs.fail(now, &pair, l.max_failures_per_account, &l);
        self.addresses
            .fail(now, &pair.1, l.max_failures_per_address, &l);
        self.accounts
            .fail(now, &pair.0, l.max_failures_account_wide, &l);
    }

    /// Keys currently tracked (for status): account from one address,
    /// address, account.
    pub fn tracked(&self) -> (usize, usize, usize) {
        (
            self.pairs.entries.len(),
            self.addresses.entries.len(),
            self.accounts.entries.len(),
        )
    }

    /// Is `account` locked now (for the `users` listing)? Until when for
    /// every address, and which addresses are locked out of it alone.
    pub fn account_locks(
        &self,
        now: Instant,
        account: &str,
    ) -> (Option<Instant>, Vec<(IpAddr, Instant)>) {
        let mut from: Vec<(IpAddr, Instant)> = self
            .pairs
            .entries
            .iter()
            .filter(|((a, _), _)| a == account)
            .filter_map(|((_, ip), e)| Some((*ip, e.locked(now)?)))
            .collect();
        from.sort();
        (self.accounts.locked(now, &account.to_string()), from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const IP2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    /// A whole attempt: reserve, check, record.
    fn attempt(
        l: &mut LoginLimiter,
        now: Instant,
        a: &str,
        ip: IpAddr,
        ok: bool,
    ) -> Result<(), Locked> {
        let t = l.begin(now, a, ip)?;
        l.finish(now, t, ok);
        Ok(())
    }

    #[test]
    fn five_failures_lock_the_account_from_that_address_with_growing_lockouts() {
        let now = Instant::now();
        let mut l = LoginLimiter::new(Limits::default());
        for i in 0..4 {
            attempt(&mut l, now + Duration::from_secs(i), "alice", IP, false).expect("allowed");
        }
        let t = now + Duration::from_secs(4);
        let next = l.begin(t, "alice", IP).expect("the fifth");
        let locked = l.finish(t, next, false).expect("locked now");
        assert_eq!(locked.scope, Scope::AccountFromAddress);
        assert_eq!(locked.retry_after(t), Duration::from_secs(30));
        let again = l.begin(t, "alice", IP).expect_err("locked");
        assert_eq!(again, locked);
        assert!(locked
            .describe(t, "alice")
            .contains("for account alice from your address; try again in 30 s"));
        // Other accounts are not affected, nor is alice from elsewhere.
        attempt(&mut l, t, "bob", IP, true).expect("bob");
        attempt(&mut l, t, "alice", IP2, true).expect("the owner from elsewhere");
        // After the lockout, one more failure doubles it.
        let t2 = t + Duration::from_secs(31);
        let a = l.begin(t2, "alice", IP).expect("lockout over");
        assert_eq!(
            l.finish(t2, a, false).expect("locked").retry_after(t2),
            Duration::from_secs(60)
        );
        // Success after the lockout clears the count for that address.
        let t3 = t2 + Duration::from_secs(61);
        attempt(&mut l, t3, "alice", IP, true).expect("right password");
        attempt(&mut l, t3, "alice", IP, false).expect("one failure");
        assert!(l.begin(t3, "alice", IP).is_ok());
    }

    /// Failures another node counted lock here as if counted here; its
    /// success clears the address's count for that account; a bad token
    /// elsewhere counts against the address.
    #[test]
    fn outcomes_from_other_nodes_count_here() {
        let now = Instant::now();
        let mut l = LoginLimiter::new(Limits::default());
        for i in 0..3 {
            let t = now + Duration::from_secs(i);
            l.remote_outcome(t, Some("alice"), IP, false);
        }
        let t = now + Duration::from_secs(3);
        attempt(&mut l, t, "alice", IP, false).expect("the fourth, here");
        l.remote_outcome(t, Some("alice"), IP, false);
        let locked = l.begin(t, "alice", IP).expect_err("five in all");
        assert_eq!(locked.scope, Scope::AccountFromAddress);
        assert!(l.begin(t, "alice", IP2).is_ok(), "the owner elsewhere");
        // Elsewhere, the right password after the lockout clears the count.
        let t2 = t + Duration::from_secs(31);
        l.remote_outcome(t2, Some("alice"), IP, true);
        for _ in 0..4 {
            attempt(&mut l, t2, "alice", IP, false).expect("counting afresh");
        }
        // Bad tokens elsewhere lock the address for every account.
        for _ in 0..20 {
            l.remote_outcome(t2, None, IP2, false);
        }
        assert_eq!(
            l.begin(t2, "bob", IP2).expect_err("address locked").scope,
            Scope::Address
        );
        assert!(l.check_address(t2, IP2).is_err());
        l.remote_outcome(t2, None, IP2, true);
        assert!(
            l.check_address(t2, IP2).is_err(),
            "success clears no address"
        );
    }

    /// Wrong passwords from one address never lock the owner out from
    /// another, however long they go on.
    #[test]
    fn a_stranger_cannot_lock_the_owner_out() {
        let start = Instant::now();
        let mut l = LoginLimiter::new(Limits::default());
        for s in 0..7200u64 {
            let now = start + Duration::from_secs(s);
            let _ = attempt(&mut l, now, "alice", IP, false);
            if s % 600 == 0 {
                attempt(&mut l, now, "alice", IP2, true).expect("the owner gets in");
            }
        }
    }

    #[test]
    fn an_address_guessing_many_accounts_is_locked() {
        let now = Instant::now();
        let mut l = LoginLimiter::new(Limits::default());
        for i in 0..20 {
            attempt(&mut l, now, &format!("user{i}"), IP, false).expect("allowed");
        }
        let e = l
            .begin(now, "someone-else", IP)
            .expect_err("address locked");
        assert_eq!(e.scope, Scope::Address);
        assert!(e.describe(now, "x").contains("from your address"));
        assert!(l.begin(now, "someone-else", IP2).is_ok());
    }

    #[test]
    fn many_addresses_together_lock_the_account_everywhere() {
        let now = Instant::now();
        let mut l = LoginLimiter::new(Limits::default());
        for i in 0..100 {
            attempt(&mut l, now, "alice", ip(i), false).expect("allowed");
        }
        let e = l.begin(now, "alice", ip(1000)).expect_err("account locked");
        assert_eq!(e.scope, Scope::Account);
        assert!(e
            .describe(now, "alice")
            .contains("too many failed logins for account alice; try"));
        let (everywhere, from) = l.account_locks(now, "alice");
        assert!(everywhere.is_some());
        assert!(from.is_empty());
        assert!(l.begin(now, "bob", ip(1000)).is_ok());
    }

    /// However many logins arrive at once, no more passwords are checked
    /// than the key has failures left.
    #[test]
    fn concurrent_attempts_are_reserved_before_the_check() {
        let now = Instant::now();
        let mut l = LoginLimiter::new(Limits::default());
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..100 {
            match l.begin(now, "alice", IP) {
                Ok(a) => held.push(a),
                Err(e) => {
                    assert!(e.busy);
                    assert_eq!(e.scope, Scope::AccountFromAddress);
                    assert!(e.describe(now, "alice").contains("too many logins at once"));
                    refused += 1;
                }
            }
        }
        assert_eq!(held.len(), 5);
        assert_eq!(refused, 95);
        for a in held {
            l.finish(now, a, false);
        }
        assert!(!l.begin(now, "alice", IP).expect_err("locked").busy);
        // Once the lockout is over, one at a time.
        let later = now + Duration::from_secs(31);
        let one = l.begin(later, "alice", IP).expect("after the lockout");
        assert!(l.begin(later, "alice", IP).expect_err("one at a time").busy);
        l.release(one);
        assert!(l.begin(later, "alice", IP).is_ok());
        // Many addresses at once: at most the account-wide limit.
        let mut l = LoginLimiter::new(Limits::default());
        let ok = (0..1000)
            .filter_map(|i| l.begin(now, "alice", ip(i / 3)).ok())
            .count();
        assert_eq!(ok, 100);
    }

    #[test]
    fn old_failures_are_forgotten() {
        let now = Instant::now();
        let mut l = LoginLimiter::new(Limits::default());
        for _ in 0..4 {
            attempt(&mut l, now, "a", IP, false).expect("allowed");
        }
        let later = now + Duration::from_secs(901);
        attempt(&mut l, later, "a", IP, false).expect("allowed");
        assert!(l.begin(later, "a", IP).is_ok());
    }

    proptest! {
        /// Memory stays bounded, a lockout never exceeds the maximum, and
        /// no key lets more attempts through than it has failures left.
        #[test]
        fn bounded(events in prop::collection::vec((0u16..500, 0u8..4, 0u64..100, any::<bool>()), 1..400)) {
            let limits = Limits { max_entries: 50, ..Limits::default() };
            let mut l = LoginLimiter::new(limits.clone());
            let start = Instant::now();
            let mut held = Vec::new();
            for (acct, ip, dt, finish) in events {
                let now = start + Duration::from_secs(dt);
                let ip = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, ip));
                match l.begin(now, &format!("u{acct}"), ip) {
                    Ok(a) if finish => { l.finish(now, a, false); }
                    Ok(a) => held.push(a),
                    Err(e) => prop_assert!(e.retry_after(now) <= limits.max_lockout),
                }
                let (p, a, b) = l.tracked();
                prop_assert!(p <= limits.max_entries + held.len());
                prop_assert!(a <= limits.max_entries + held.len());
                prop_assert!(b <= limits.max_entries + held.len());
            }
            for a in held {
                l.release(a);
            }
        }
    }
}
