//! The admin login's rate limit, sans-IO (time passed in): an address
//! that gives [`MAX_FAILURES`] wrong passwords within [`WINDOW`] is locked
//! out for [`LOCKOUT`]; a right password clears its record. At most
//! [`MAX_TRACKED`] addresses are remembered (the oldest go first).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(300);
pub const LOCKOUT: Duration = Duration::from_secs(300);
pub const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    first: Instant,
    locked_until: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Limiter {
    by_addr: HashMap<IpAddr, Entry>,
}

/// What a failure led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Tries left before a lockout.
    Left(u32),
    /// Locked out now, for this long.
    LockedOut(Duration),
}

impl Limiter {
    /// `Some(wait)` while `ip` is locked out.
    pub fn locked(&self, now: Instant, ip: IpAddr) -> Option<Duration> {
        let until = self.by_addr.get(&ip)?.locked_until?;
        (until > now).then(|| until - now)
    }

    pub fn failure(&mut self, now: Instant, ip: IpAddr) -> Failed {
        if self.by_addr.len() >= MAX_TRACKED && !self.by_addr.contains_key(&ip) {
            self.forget_stale(now);
            if self.by_addr.len() >= MAX_TRACKED {
                if let Some(oldest) = self
                    .by_addr
                    .iter()
                    .min_by_key(|(_, e)| e.first)
                    .map(|(k, _)| *k)
                {
                    self.by_addr.remove(&oldest);
                }
            }
        }
        let e = self.by_addr.entry(ip).or_insert(Entry {
            failures: 0,
            first: now,
            locked_until: None,
        });
        if now.saturating_duration_since(e.first) > WINDOW
            || e.locked_until.is_some_and(|u| u <= now)
        {
            *e = Entry {
                failures: 0,
                first: now,
                locked_until: None,
            };
        }
        e.failures += 1;
        if e.failures >= MAX_FAILURES {
            e.locked_until = Some(now + LOCKOUT);
            Failed::LockedOut(LOCKOUT)
        } else {
            Failed::Left(MAX_FAILURES - e.failures)
        }
    }

    pub fn success(&mut self, ip: IpAddr) {
        self.by_addr.remove(&ip);
    }

    fn forget_stale(&mut self, now: Instant) {
        self.by_addr.retain(|_, e| {
            now.saturating_duration_since(e.first) <= WINDOW
                || e.locked_until.is_some_and(|u| u > now)
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn five_wrong_passwords_lock_the_address_out_for_a_while() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.5".parse().unwrap(), "10.0.0.6".parse().unwrap());
        for left in (1..MAX_FAILURES).rev() {
            assert_eq!(l.failure(t0, a), Failed::Left(left));
        }
        assert_eq!(l.failure(t0, a), Failed::LockedOut(LOCKOUT));
        assert_eq!(
            l.locked(t0 + Duration::from_secs(1), a),
            Some(LOCKOUT - Duration::from_secs(1))
        );
        assert_eq!(l.locked(t0, b), None, "another address is not locked out");
        assert_eq!(l.locked(t0 + LOCKOUT, a), None, "the lockout ends");
        assert_eq!(l.failure(t0 + LOCKOUT, a), Failed::Left(MAX_FAILURES - 1));
        l.success(a);
        assert_eq!(l.failure(t0 + LOCKOUT, a), Failed::Left(MAX_FAILURES - 1));
        // Failures spread wider than the window never lock out.
        let mut t = t0;
        for _ in 0..20 {
            t += WINDOW / 2 + Duration::from_secs(1);
            assert_ne!(l.failure(t, b), Failed::LockedOut(LOCKOUT));
            t += WINDOW / 2 + Duration::from_secs(1);
        }
    }
}
