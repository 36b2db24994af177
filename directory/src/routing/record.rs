//! [`CallRecord`]: one call as the directory saw it, and the history
//! entries it makes.

use std::time::{Duration, Instant};

use crate::store::{CallEntry, CallOutcome};

/// One call as the directory saw it, from the caller's request to its
/// end (or to its failure before anything rang).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The caller's number, asserted, and its account.
    pub from: String,
    pub from_account: String,
    /// The number dialled (an office's `OFFICE/EXT` as the office number)
    /// and its owner, when it is a known number.
    pub dialled: String,
    pub dialled_account: Option<String>,
    /// The number the call reached after server-side forwarding (the one
    /// that rang, or was offline or busy), and its owner; none for an
    /// unknown number or a loop.
    pub reached: Option<(String, String)>,
    pub started: Instant,
    pub answered: Option<Instant>,
    pub ended: Instant,
    pub outcome: CallOutcome,
    /// Where the caller was sent on (a busy or no-answer rule, a
    /// redirect, a hand-off).
    pub forwarded_to: Option<String>,
    /// Whether the media went through the relay (answered calls only).
    pub relayed: Option<bool>,
}

impl CallRecord {
    /// The entries of each account's history: the caller's (outgoing, to
    /// the number dialled), the reached number's owner's (incoming), and,
    /// when server-side forwarding took the call from the dialled number
    /// to another account's, the dialled number's owner's (incoming,
    /// forwarded). `now_ms` is the wall clock at `now`.
    pub fn entries(&self, now: Instant, now_ms: i64) -> Vec<CallEntry> {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let started_ms = now_ms.saturating_sub(ms(now.saturating_duration_since(self.started)));
        let duration_ms = self
            .answered
            .map(|at| ms(self.ended.saturating_duration_since(at)));
        let reached_other = self
            .reached
            .as_ref()
            .filter(|(n, _)| *n != self.dialled)
            .map(|(n, _)| n.clone());
        let entry = |account: &str, outgoing: bool, own: &str, other: &str| CallEntry {
            account: account.to_string(),
            outgoing,
            own_number: own.to_string(),
            other_number: other.to_string(),
            started_ms,
            answered: self.answered.is_some(),
            outcome: self.outcome,
            forwarded_to: self.forwarded_to.clone(),
            duration_ms,
            relayed: self.relayed,
        };
        let mut out = vec![CallEntry {
            forwarded_to: self.forwarded_to.clone().or(reached_other.clone()),
            ..entry(&self.from_account, true, &self.from, &self.dialled)
        }];
        if let Some((number, account)) = &self.reached {
            out.push(entry(account, false, number, &self.from));
        }
        if let (Some(account), Some(to)) = (&self.dialled_account, reached_other) {
            if self.reached.as_ref().is_none_or(|(_, a)| a != account) {
                out.push(CallEntry {
                    outcome: CallOutcome::Forwarded,
                    answered: false,
                    duration_ms: None,
                    relayed: None,
                    forwarded_to: Some(to),
                    ..entry(account, false, &self.dialled, &self.from)
                });
            }
        }
        out
    }
}
