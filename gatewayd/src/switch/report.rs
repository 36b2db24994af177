//! What the switch task tells: the control API's queries answered
//! (status, calls, stations online, hang-ups, settings, lines dropped),
//! calls as subscribers see them, systemd's status line, and the relayed
//! calls' media timing and packet rates.

use std::time::{Duration, Instant};

use keyline_net::lifecycle;
use keyline_proto::call::{CallState, Line};
use keyline_proto::msg::{CallId, EndReason, Msg};
use serde_json::{json, Value};

use super::{call_config, Switch};
use crate::api::{CallInfo, CallPhase, Event as ApiEvent, Status};
use crate::config::Config;
use crate::db::now_ms;
use crate::shared::{Query, QueryReply};

/// How long a relayed call is watched for its first media.
const MEDIA_WAIT: Duration = Duration::from_secs(10);

impl Switch {
    /// Relayed calls whose answering end has now sent through the
    /// forwarder: answer→media.
    pub(super) fn check_media(&mut self, now: Instant) {
        let relays = &self.relays;
        let m = &self.shared.metrics;
        let mut heard = Vec::new();
        self.media_wait.retain(|call, answered| {
            let Some(alloc) = relays.get(call) else {
                return false;
            };
            if alloc.callee_packets() > 0 {
                m.answer_to_media
                    .record(now.saturating_duration_since(*answered).as_secs_f64());
                heard.push(*call);
                return false;
            }
            now.saturating_duration_since(*answered) < MEDIA_WAIT
        });
        for call in heard {
            // An outside call that hears its far end needs no relay.
            self.sb.handle_outside_media(call);
        }
    }

    /// Sample the forwarder's counters of every relayed call: their
    /// packets a second, shown with the calls.
    pub(super) fn sample_rates(&mut self, now: Instant) {
        self.rates.sample(
            now,
            self.relays.iter().map(|(call, a)| (*call, a.traffic())),
        );
        self.next_rates = now + crate::rates::EVERY;
    }

    /// Tell subscribers of calls that appeared, changed or ended since
    /// they were last told.
    pub(super) fn tell_calls(&mut self) {
        let now = Instant::now();
        let current = self.calls_info(now);
        self.shared.metrics.calls_active.set(current.len() as f64);
        self.shared
            .metrics
            .stations_online
            .set(self.stations.len() as f64);
        let mut gone: Vec<CallId> = self.told.keys().copied().collect();
        for c in current {
            gone.retain(|id| *id != c.id);
            let changed = match self.told.get(&c.id) {
                Some(old) => {
                    (
                        old.state,
                        old.relayed,
                        &old.caller,
                        &old.callee,
                        old.since_ms,
                        old.pps,
                    ) != (c.state, c.relayed, &c.caller, &c.callee, c.since_ms, c.pps)
                }
                None => true,
            };
            if changed {
                self.shared
                    .publisher
                    .publish(&ApiEvent::Call { call: c.clone() });
                self.told.insert(c.id, c);
            }
        }
        gone.sort_unstable();
        for id in gone {
            if let Some(mut call) = self.told.remove(&id) {
                call.seconds = now_ms().saturating_sub(call.since_ms).max(0) as u64 / 1000;
                let outcome = self.outcomes.remove(&id).map(str::to_string);
                self.shared
                    .publisher
                    .publish(&ApiEvent::CallEnded { call, outcome });
            }
        }
        self.outcomes.clear();
    }

    /// Keep systemd's STATUS= line current.
    pub(super) fn report_status(&mut self) {
        let now = (self.stations.len(), self.sb.calls().count());
        if now != self.last_status {
            self.last_status = now;
            lifecycle::status(&format!(
                "{} extensions online, {} calls in progress",
                now.0, now.1
            ));
        }
    }

    pub(super) fn query(&mut self, now: Instant, what: Query) -> QueryReply {
        match what {
            Query::Online => QueryReply::Online(
                self.stations
                    .iter()
                    .map(|(ext, s)| (ext.clone(), s.conn.remote_address().to_string()))
                    .collect(),
            ),
            Query::Calls => QueryReply::Calls(self.calls_info(now)),
            Query::Status => QueryReply::Status(Box::new(self.status())),
            Query::Hangup { call } => {
                let Some(c) = self.sb.calls().find(|c| c.id == call) else {
                    return QueryReply::Done(Err(format!("no call {call} in progress")));
                };
                let Some(end) = c.station().ext().map(str::to_string) else {
                    return QueryReply::Done(Err(format!("call {call} has no station")));
                };
                // The end we hang up for is told too (the switchboard
                // tells only the others, as when a station hangs up).
                let reason = match c.state {
                    CallState::Ringing { .. } => EndReason::Rejected,
                    _ => EndReason::Hangup,
                };
                let done = self
                    .sb
                    .handle_hangup(now, &end, call)
                    .map_err(|e| format!("call {call}: {e}"));
                if done.is_ok() {
                    self.send(&end, Msg::Ended { call, reason });
                }
                QueryReply::Done(done)
            }
            Query::Settings { ext, settings } => {
                self.sb.set_settings(&ext, settings.clone());
                self.send(&ext, Msg::Settings { settings });
                QueryReply::Done(Ok(()))
            }
            Query::DropLine { ext, why } => {
                self.sb.remove_line(now, &ext);
                if let Some(st) = self.stations.remove(&ext) {
                    st.conn.close(quinn::VarInt::from_u32(7), why.as_bytes());
                    self.shared
                        .publisher
                        .publish(&ApiEvent::StationOffline { ext });
                }
                QueryReply::Done(Ok(()))
            }
        }
    }

    fn status(&self) -> Status {
        let cfg = self.shared.cfg();
        let (extension_range, range_source) = self.shared.extension_range_and_source();
        Status {
            api: crate::api::API_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            listen: self.shared.local_addr.to_string(),
            fingerprint: self.shared.id.fingerprint.clone(),
            state_dir: self.shared.state_dir.display().to_string(),
            internal_media: cfg.internal_media.as_str().to_string(),
            ring_timeout_s: cfg.ring_timeout_secs,
            uptime_s: self.shared.started.elapsed().as_secs(),
            stations_online: self.stations.len(),
            calls_active: self.sb.calls().count(),
            relay: self.shared.relay.snapshot(),
            directory: self.trunks.status(),
            ring_group: self.ring_group_json(),
            ring_groups: self.groups.clone(),
            extension_range,
            extension_range_source: range_source.to_string(),
            disk: self.disk.map(|(writable, free)| {
                json!({
                    "free_bytes": free,
                    "mailboxes_writable": writable,
                    "unwritten_call_records": self.shared.db.unwritten_count(),
                })
            }),
            admin: self.shared.admin_status(),
            connections: self.connections_json(&cfg),
        }
    }

    /// Connections open and refused, and the limits on the way in.
    fn connections_json(&self, cfg: &Config) -> Value {
        let counts = self.shared.gate.counts();
        json!({
            "open": counts.open,
            "max": cfg.max_connections,
            "refused": counts.refused(),
            "admission": counts,
            "limits": cfg.limits,
        })
    }

    /// Who rings for the office number, and how; whose mailbox takes its
    /// unanswered calls.
    fn ring_group_json(&self) -> Value {
        let cfg = self.shared.cfg();
        let mailbox = call_config(&cfg, [0, 0], self.ring_group.as_ref(), &[]).office_mailbox;
        let mut v = match &self.ring_group {
            Some(g) => json!({
                "mode": g.mode,
                "members": g.members,
                "step_secs": g.step_secs,
                "source": "ring-group",
            }),
            None => {
                json!({
                    "mode": if cfg.hunt_secs.is_some() { "hunt" } else { "all" },
                    "members": if cfg.reception.is_empty() {
                        json!("every extension")
                    } else {
                        json!(cfg.reception)
                    },
                    "step_secs": cfg.hunt_secs,
                    "source": "config",
                })
            }
        };
        v["office_mailbox"] = json!(mailbox);
        let set_here = self
            .ring_group
            .as_ref()
            .is_some_and(|g| g.mailbox.is_some());
        v["office_mailbox_source"] = json!(if set_here {
            "ring-group"
        } else if cfg.office_mailbox.is_some() {
            "config"
        } else {
            "first-member"
        });
        v
    }

    fn calls_info(&self, now: Instant) -> Vec<CallInfo> {
        let name = |line: &Line| {
            line.ext()
                .and_then(|ext| self.stations.get(ext))
                .and_then(|s| s.name.clone())
        };
        let mut v: Vec<CallInfo> = self
            .sb
            .calls()
            .map(|c| {
                let (state, since) = match c.state {
                    CallState::Ringing { .. } => (CallPhase::Ringing, c.started),
                    CallState::Answered { at } if c.held_by.is_some() => (CallPhase::Held, at),
                    CallState::Answered { at } => (CallPhase::Answered, at),
                    CallState::Voicemail { at } => (CallPhase::Voicemail, at),
                };
                CallInfo {
                    id: c.id,
                    caller: c.caller.shown().to_string(),
                    caller_name: name(&c.caller),
                    callee: c.callee.shown().to_string(),
                    callee_name: name(&c.callee),
                    state,
                    started_ms: self.wall_ms(c.started),
                    since_ms: self.wall_ms(since),
                    seconds: now.saturating_duration_since(since).as_secs(),
                    outside: c.trunk().is_some(),
                    directory_call: self.sb.outside_call(c.id).and_then(|o| o.dir_call),
                    relayed: self.relays.contains_key(&c.id),
                    pps: self.rates.get(c.id),
                }
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }
}
