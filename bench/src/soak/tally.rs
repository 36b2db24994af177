//! What one half of the soak (the directory's terminals or the gateway's
//! stations) counted: calls completed, calls that failed for a reason the
//! load asked for (a busy target, an unknown number, …) and everything
//! that failed unexpectedly, by reason, with the first few in full.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};

/// Unexpected failures kept word for word (the rest are only counted).
const EXAMPLES: usize = 20;

/// A failure: `reason` is its kind (what failures are counted by),
/// `detail` says what exactly happened.
#[derive(Debug, Clone)]
pub(crate) struct Fail {
    pub reason: String,
    pub detail: String,
}

impl Fail {
    pub fn new(reason: impl Into<String>, detail: impl Into<String>) -> Fail {
        Fail {
            reason: reason.into(),
            detail: detail.into(),
        }
    }
}

/// Counters shared by the load tasks of one half; every field only grows.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub completed: AtomicU64,
    pub jobs_started: AtomicU64,
    pub jobs_done: AtomicU64,
    /// Job starts skipped because too few ends were idle.
    pub skipped: AtomicU64,
    pub reconnects: AtomicU64,
    pub refreshes: AtomicU64,
    /// Media datagrams sent and received by both ends of every call.
    pub media_sent: AtomicU64,
    pub media_received: AtomicU64,
    /// Jobs running now.
    pub in_flight: AtomicUsize,
    failures: Mutex<Failures>,
}

#[derive(Debug, Default, Clone)]
struct Failures {
    asked: BTreeMap<String, u64>,
    unexpected: BTreeMap<String, u64>,
    examples: Vec<String>,
}

/// A copy of the counters at one moment.
#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    pub completed: u64,
    pub asked: BTreeMap<String, u64>,
    pub unexpected: BTreeMap<String, u64>,
    pub examples: Vec<String>,
    pub jobs_started: u64,
    pub jobs_done: u64,
    pub skipped: u64,
    pub reconnects: u64,
    pub refreshes: u64,
    pub media_sent: u64,
    pub media_received: u64,
}

impl Snapshot {
    pub fn asked_total(&self) -> u64 {
        self.asked.values().sum()
    }

    pub fn unexpected_total(&self) -> u64 {
        self.unexpected.values().sum()
    }

    pub fn json(&self) -> Value {
        json!({
            "calls_completed": self.completed,
            "failed_as_asked": self.asked,
            "failed_as_asked_total": self.asked_total(),
            "failed_unexpectedly": self.unexpected,
            "failed_unexpectedly_total": self.unexpected_total(),
            "unexpected_examples": self.examples,
            "jobs_started": self.jobs_started,
            "jobs_done": self.jobs_done,
            "jobs_skipped_no_idle_ends": self.skipped,
            "reconnects": self.reconnects,
            "registration_refreshes": self.refreshes,
            "media_datagrams_sent": self.media_sent,
            "media_datagrams_received": self.media_received,
        })
    }
}

impl Tally {
    /// A call failed the way the load meant it to (`what`: busy, …).
    pub fn asked(&self, what: &str) {
        if let Ok(mut f) = self.failures.lock() {
            *f.asked.entry(what.to_string()).or_default() += 1;
        }
    }

    /// Something failed that should not have.
    pub fn unexpected(&self, fail: &Fail) {
        if let Ok(mut f) = self.failures.lock() {
            *f.unexpected.entry(fail.reason.clone()).or_default() += 1;
            if f.examples.len() < EXAMPLES {
                f.examples.push(format!("{}: {}", fail.reason, fail.detail));
            }
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let f = self.failures.lock().map(|f| f.clone()).unwrap_or_default();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            completed: get(&self.completed),
            asked: f.asked,
            unexpected: f.unexpected,
            examples: f.examples,
            jobs_started: get(&self.jobs_started),
            jobs_done: get(&self.jobs_done),
            skipped: get(&self.skipped),
            reconnects: get(&self.reconnects),
            refreshes: get(&self.refreshes),
            media_sent: get(&self.media_sent),
            media_received: get(&self.media_received),
        }
    }
}

/// Marks a job as running while it lives.
pub(crate) struct InFlight<'a>(&'a Tally);

impl<'a> InFlight<'a> {
    pub fn new(t: &'a Tally) -> InFlight<'a> {
        t.in_flight.fetch_add(1, Ordering::Relaxed);
        t.jobs_started.fetch_add(1, Ordering::Relaxed);
        InFlight(t)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.jobs_done.fetch_add(1, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_reason_and_asked_ones_apart() {
        let t = Tally::default();
        t.asked("busy");
        t.asked("busy");
        t.unexpected(&Fail::new("timeout", "waiting for ring"));
        Tally::add(&t.completed, 3);
        {
            let _j = InFlight::new(&t);
            assert_eq!(t.in_flight.load(Ordering::Relaxed), 1);
        }
        let s = t.snapshot();
        assert_eq!(s.completed, 3);
        assert_eq!(s.asked_total(), 2);
        assert_eq!(s.unexpected_total(), 1);
        assert_eq!(s.examples, vec!["timeout: waiting for ring".to_string()]);
        assert_eq!((s.jobs_started, s.jobs_done), (1, 1));
        assert_eq!(t.in_flight.load(Ordering::Relaxed), 0);
    }
}
