//! Packet rates of relayed calls, from the forwarder's counters sampled
//! once a second (the dashboard's packets per second). Pure: the samples
//! and the time come in, rates come out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keyline_net::relay::Traffic;
use keyline_proto::msg::CallId;

use crate::api::Pps;

/// How often the switch samples the forwarder.
pub const EVERY: Duration = Duration::from_secs(1);

/// The last sample of each relayed call and the rate it gave.
#[derive(Debug, Default)]
pub struct Rates {
    last: HashMap<CallId, (Instant, Traffic, Option<Pps>)>,
}

impl Rates {
    /// Take a sample of every relayed call at `now`; a call not among
    /// `calls` is forgotten. A call's first sample gives no rate yet.
    pub fn sample(&mut self, now: Instant, calls: impl IntoIterator<Item = (CallId, Traffic)>) {
        let mut next = HashMap::with_capacity(self.last.len());
        for (call, t) in calls {
            let pps = match self.last.get(&call) {
                Some((at, before, pps)) => {
                    let dt = now.saturating_duration_since(*at).as_secs_f64();
                    if dt <= 0.0 {
                        *pps
                    } else {
                        let per_s =
                            |a: u64, b: u64| (a.saturating_sub(b) as f64 / dt).round() as u32;
                        Some(Pps {
                            from_caller: per_s(t.from_caller, before.from_caller),
                            from_callee: per_s(t.from_callee, before.from_callee),
                        })
                    }
                }
                None => None,
            };
            next.insert(call, (now, t, pps));
        }
        self.last = next;
    }

    /// The call's rate over its last sampling interval.
    pub fn get(&self, call: CallId) -> Option<Pps> {
        self.last.get(&call).and_then(|(_, _, pps)| *pps)
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(from_caller: u64, from_callee: u64) -> Traffic {
        Traffic {
            from_caller,
            from_callee,
        }
    }

    #[test]
    fn a_rate_is_the_difference_of_two_samples_over_their_interval() {
        let t0 = Instant::now();
        let mut r = Rates::default();
        r.sample(t0, [(7, traffic(10, 0))]);
        assert_eq!(r.get(7), None, "one sample gives no rate");
        r.sample(t0 + EVERY, [(7, traffic(60, 50))]);
        assert_eq!(
            r.get(7),
            Some(Pps {
                from_caller: 50,
                from_callee: 50
            })
        );
        // A late tick (2 s) still gives packets per second.
        r.sample(t0 + 3 * EVERY, [(7, traffic(160, 150))]);
        assert_eq!(
            r.get(7),
            Some(Pps {
                from_caller: 50,
                from_callee: 50
            })
        );
        // On hold: nothing flows from the held end.
        r.sample(t0 + 4 * EVERY, [(7, traffic(210, 150))]);
        assert_eq!(
            r.get(7),
            Some(Pps {
                from_caller: 50,
                from_callee: 0
            })
        );
    }

    #[test]
    fn ended_calls_are_forgotten_and_a_repeated_instant_keeps_the_rate() {
        let t0 = Instant::now();
        let mut r = Rates::default();
        r.sample(t0, [(1, traffic(0, 0)), (2, traffic(0, 0))]);
        r.sample(t0 + EVERY, [(1, traffic(50, 50)), (2, traffic(5, 5))]);
        r.sample(t0 + EVERY, [(1, traffic(50, 50))]);
        assert_eq!(r.get(1).map(|p| p.from_caller), Some(50));
        assert_eq!(r.get(2), None);
        r.sample(t0 + 2 * EVERY, []);
        assert!(r.is_empty());
    }
}
