//! The switch task: the tokio shell around the sans-IO [`Switchboard`],
//! the only place call state changes. It owns the switchboard, the
//! stations online and the relay allocations, feeds the switchboard the
//! task's [`Event`]s and carries out its actions; `writes` puts what a turn
//! changed on disk before anyone hears of it, `report` answers the control
//! API and tells subscribers, and `trunk` carries out the actions on trunk
//! lines (outside calls through the directory).

mod report;
pub(crate) mod trunk;
mod writes;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use keyline_net::peer_fingerprint;
use keyline_net::relay::{self, Allocation};
use keyline_proto::call::{Action, Config as CallConfig, HandedOn, Line, Switchboard};
use keyline_proto::msg::{CallId, MediaPlan, Msg, ReqId};
use rand::RngCore;
use tokio::sync::mpsc;

use crate::api::{CallInfo, Event as ApiEvent};
use crate::config::{Config, InternalMedia};
use crate::db::now_ms;
use crate::shared::{Event, Shared, VoicemailJob};
use trunk::Trunks;
use writes::{settings_written, settle, store, writes_of, Step};

/// A connected station as the switch sees it.
pub(crate) struct Station {
    pub(crate) conn: quinn::Connection,
    tx: mpsc::Sender<Msg>,
    name: Option<String>,
}

/// The task that owns call state.
pub(crate) struct Switch {
    pub(crate) shared: Arc<Shared>,
    pub(crate) sb: Switchboard,
    pub(crate) stations: HashMap<String, Station>,
    pub(crate) relays: HashMap<CallId, Allocation>,
    pub(crate) trunks: Trunks,
    /// The ring group set from the command line, over the config file's.
    ring_group: Option<crate::db::RingGroup>,
    /// The ring groups with extensions of their own.
    groups: Vec<crate::db::NamedRingGroup>,
    /// Maps the monotonic clock to wall-clock time for call records.
    anchor: (Instant, SystemTime),
    last_status: (usize, usize),
    /// The disk watcher's last word: (mailboxes writable, bytes free).
    disk: Option<(bool, u64)>,
    /// The calls as subscribers last heard of them.
    told: HashMap<CallId, CallInfo>,
    /// Outcomes of calls that ended since subscribers were last told.
    outcomes: HashMap<CallId, &'static str>,
    /// Dial requests not answered yet, for dial→ringing.
    dialing: HashMap<(String, ReqId), Instant>,
    /// Relayed calls answered whose answering end has not sent through
    /// the forwarder yet, for answer→media.
    media_wait: HashMap<CallId, Instant>,
    /// Relayed calls' packet rates, and when to sample them next.
    rates: crate::rates::Rates,
    next_rates: Instant,
}

/// Dial requests timed at once, at most (a station that never gets a
/// reply cannot grow the table).
const MAX_TIMED_DIALS: usize = 4096;
/// How often relayed calls waiting for media are looked at.
const MEDIA_CHECK: Duration = Duration::from_millis(5);

impl Switch {
    pub(crate) fn new(shared: Arc<Shared>) -> Result<Switch> {
        let ring_group = shared.db.ring_group()?;
        let groups = shared.db.ring_groups()?;
        let mut sb = Switchboard::new(call_config(
            &shared.cfg(),
            shared.extension_range(),
            ring_group.as_ref(),
            &groups,
        ));
        let shared_cfg_has_directory =
            shared.cfg().directory.is_some() || shared.cfg().embedded_directory.is_some();
        sb.set_next_call_id(shared.db.max_call_id()? + 1);
        for row in shared.db.agents()? {
            if let (Some(ext), "approved") = (&row.ext, row.state.as_str()) {
                sb.add_line(ext);
            }
        }
        for (ext, settings) in shared.db.all_settings()? {
            sb.set_settings(&ext, settings);
        }
        for (code, number) in shared.db.speed_dials()? {
            sb.set_speed_dial(&code, Some(&number));
        }
        Ok(Switch {
            shared,
            sb,
            stations: HashMap::new(),
            relays: HashMap::new(),
            trunks: Trunks::new(shared_cfg_has_directory),
            ring_group,
            groups,
            anchor: (Instant::now(), SystemTime::now()),
            last_status: (0, 0),
            disk: None,
            told: HashMap::new(),
            outcomes: HashMap::new(),
            dialing: HashMap::new(),
            media_wait: HashMap::new(),
            rates: crate::rates::Rates::default(),
            next_rates: Instant::now(),
        })
    }

    pub(crate) async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        loop {
            let media_check = (!self.media_wait.is_empty()).then(|| Instant::now() + MEDIA_CHECK);
            let rates_check =
                (!self.relays.is_empty() || !self.rates.is_empty()).then_some(self.next_rates);
            let deadline = [self.sb.poll_timeout(), media_check, rates_check]
                .into_iter()
                .flatten()
                .min();
            let ev = match deadline {
                Some(d) => tokio::select! {
                    ev = events.recv() => ev,
                    _ = tokio::time::sleep_until(d.into()) => {
                        let now = Instant::now();
                        // Media first: an outside call that heard its far
                        // end by its fallback deadline needs no relay.
                        self.check_media(now);
                        if self.sb.poll_timeout().is_some_and(|t| t <= now) {
                            self.sb.handle_timeout(now);
                        }
                        if now >= self.next_rates {
                            self.sample_rates(now);
                        }
                        self.drain().await;
                        self.tell_calls();
                        continue;
                    }
                },
                None => events.recv().await,
            };
            let Some(ev) = ev else { return };
            let now = Instant::now();
            match ev {
                Event::Up {
                    ext,
                    name,
                    conn,
                    tx,
                } => {
                    let addr = conn.remote_address().to_string();
                    self.shared.publisher.publish(&ApiEvent::StationOnline {
                        ext: ext.clone(),
                        name: name.clone(),
                        addr,
                    });
                    if let Some(old) = self
                        .stations
                        .insert(ext.clone(), Station { conn, tx, name })
                    {
                        // The same station reconnected; the old link is dead.
                        old.conn
                            .close(quinn::VarInt::from_u32(4), b"replaced by a new connection");
                        self.sb.handle_line_down(now, &ext);
                    }
                    self.sb.add_line(&ext);
                    self.sb.handle_line_up(now, &ext);
                    let settings = self.sb.settings(&ext).cloned().unwrap_or_default();
                    self.send(&ext, Msg::Settings { settings });
                    self.deliver_unread(&ext);
                    self.message_waiting(&ext);
                }
                Event::Down { ext, conn_id } => {
                    let current = self
                        .stations
                        .get(&ext)
                        .is_some_and(|s| s.conn.stable_id() == conn_id);
                    if current {
                        self.stations.remove(&ext);
                        self.sb.handle_line_down(now, &ext);
                        self.shared
                            .publisher
                            .publish(&ApiEvent::StationOffline { ext });
                    }
                }
                Event::FromStation { ext, msg } => self.on_station_msg(now, &ext, msg),
                Event::AddLine { ext } => self.sb.add_line(&ext),
                Event::SpeedDial { code, number } => {
                    self.sb.set_speed_dial(&code, number.as_deref())
                }
                Event::TextStored { to, text } => self.send(&to, text),
                Event::VoicemailDone { call } => self.sb.handle_voicemail_done(now, call),
                Event::MessageWaiting { ext } => self.message_waiting(&ext),
                Event::Disk { writable, free } => {
                    self.sb.set_mailboxes_writable(writable);
                    self.shared.metrics.disk_free.set(free as f64);
                    if self.disk.map(|d| d.0) != Some(writable) {
                        self.shared.publisher.publish(&ApiEvent::Disk {
                            free_bytes: free,
                            mailboxes_writable: writable,
                        });
                    }
                    self.disk = Some((writable, free));
                }
                Event::Reload { .. } | Event::ExtensionRange => self.reconfigure(),
                Event::RingGroup { group } => {
                    self.ring_group = group;
                    self.reconfigure();
                }
                Event::RingGroups { groups } => {
                    self.groups = groups;
                    self.reconfigure();
                }
                Event::Query { what, reply } => {
                    let answer = self.query(now, what);
                    let _ = reply.send(answer);
                }
                Event::Trunk(ev) => self.on_trunk(now, ev),
                Event::Shutdown { done } => {
                    self.sb.shutdown(now);
                    self.drain().await;
                    let _ = done.send(());
                }
            }
            self.drain().await;
            self.tell_calls();
            self.report_status();
        }
    }

    /// Wall-clock time (Unix ms) of a monotonic instant.
    fn wall_ms(&self, t: Instant) -> i64 {
        let wall = if t >= self.anchor.0 {
            self.anchor.1 + (t - self.anchor.0)
        } else {
            self.anchor.1 - (self.anchor.0 - t)
        };
        wall.duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_else(|_| now_ms())
    }

    /// Tell a station how many voicemails wait for it.
    fn message_waiting(&self, ext: &str) {
        let Some(tx) = self.stations.get(ext).map(|s| s.tx.clone()) else {
            return;
        };
        let shared = self.shared.clone();
        let ext = ext.to_string();
        tokio::spawn(async move {
            let n = tokio::task::spawn_blocking(move || crate::voicemail::waiting(&shared, &ext))
                .await
                .unwrap_or(0);
            let _ = tx.send(Msg::MessageWaiting { voicemails: n }).await;
        });
    }

    /// Push the texts a station has not read yet (kept until it says so).
    fn deliver_unread(&self, ext: &str) {
        let Some(tx) = self.stations.get(ext).map(|s| s.tx.clone()) else {
            return;
        };
        let db = self.shared.db.clone();
        let ext = ext.to_string();
        tokio::spawn(async move {
            let rows = tokio::task::spawn_blocking(move || db.unread_texts(&ext)).await;
            if let Ok(Ok(rows)) = rows {
                for r in rows {
                    let _ = tx
                        .send(Msg::Text {
                            id: r.id as u64,
                            from: r.sender,
                            body: r.body,
                            sent_ms: r.sent_ms,
                        })
                        .await;
                }
            }
        });
    }

    fn on_station_msg(&mut self, now: Instant, ext: &str, msg: Msg) {
        let (res, call) = match msg {
            Msg::Dial { req, number } => {
                if self.dialing.len() < MAX_TIMED_DIALS {
                    self.dialing.insert((ext.to_string(), req), now);
                }
                self.sb.handle_dial(now, ext, req, &number);
                return;
            }
            Msg::Answer { call } => (self.sb.handle_answer(now, ext, call), call),
            Msg::Reject { call } => (self.sb.handle_reject(now, ext, call), call),
            Msg::Hangup { call } => (self.sb.handle_hangup(now, ext, call), call),
            Msg::Hold { call, on } => (self.sb.handle_hold(ext, call, on), call),
            Msg::Transfer { req, call, target } => {
                (self.sb.handle_transfer(now, ext, req, call, &target), call)
            }
            Msg::Consult { req, call, target } => {
                (self.sb.handle_consult(now, ext, req, call, &target), call)
            }
            Msg::ConsultComplete { req } => {
                if let Err(e) = self.sb.handle_consult_complete(now, ext, req) {
                    self.send(
                        ext,
                        Msg::Error {
                            req: Some(req),
                            code: "call".into(),
                            message: format!("cannot join the calls: {e}"),
                        },
                    );
                }
                return;
            }
            _ => return,
        };
        if let Err(e) = res {
            self.send(
                ext,
                Msg::Error {
                    req: None,
                    code: "call".into(),
                    message: format!("call {call}: {e}"),
                },
            );
        }
    }

    pub(crate) fn send(&mut self, ext: &str, msg: Msg) {
        if let Some(st) = self.stations.get(ext) {
            if st.tx.try_send(msg).is_err() {
                // A station that cannot keep up with a few control messages
                // is gone; its reader will report it down.
                st.conn
                    .close(quinn::VarInt::from_u32(5), b"control queue overflow");
            }
        }
    }

    /// Carry out what the switchboard decided, one turn at a time. What a
    /// turn changed that must survive a crash (a station's settings, call
    /// records) is written first, off the event loop, and only then is
    /// anyone told: a reply or an `Ended` is a promise that it is kept.
    /// Settings that cannot be written are undone and refused.
    async fn drain(&mut self) {
        loop {
            let batch: Vec<Action> = std::iter::from_fn(|| self.sb.poll_action()).collect();
            if batch.is_empty() {
                return;
            }
            let writes = writes_of(&batch, |t| self.wall_ms(t));
            let failed = if writes.is_empty() {
                Vec::new()
            } else {
                let exts = settings_written(&writes);
                let db = self.shared.db.clone();
                match tokio::task::spawn_blocking(move || store(&db, &writes)).await {
                    Ok(failed) => failed,
                    Err(e) => exts
                        .into_iter()
                        .map(|ext| (ext, format!("the database write did not finish: {e}")))
                        .collect(),
                }
            };
            for step in settle(&mut self.sb, batch, &failed) {
                match step {
                    Step::Act(action) => self.act(action),
                    Step::Refuse { ext, req, message } => self.send(
                        &ext,
                        Msg::Error {
                            req: Some(req),
                            code: "storage".into(),
                            message,
                        },
                    ),
                }
            }
        }
    }

    /// Carry out one action of the switchboard (what it changed is stored).
    fn act(&mut self, action: Action) {
        match action {
            Action::Ringing {
                caller: Line::Trunk(t),
                req,
                call,
                callee: _,
            } => self.inbound_ringing(call, t.dir_call().unwrap_or(req)),
            Action::Ringing {
                caller: Line::Station(caller),
                req,
                call,
                callee,
            } => {
                if let Some(t) = self.dialing.remove(&(caller.clone(), req)) {
                    self.shared
                        .metrics
                        .dial_to_ringing
                        .record(t.elapsed().as_secs_f64());
                }
                self.send(&caller, Msg::Ringing { req, call, callee })
            }
            Action::DialFailed {
                caller: Line::Trunk(t),
                req,
                reason,
            } => self.inbound_refused(t.dir_call().unwrap_or(req), reason),
            Action::Ring {
                callee: Line::Trunk(t),
                call,
                from,
            } => self.place_outside(call, &from, &t),
            Action::DialFailed {
                caller: Line::Station(caller),
                req,
                reason,
            } => {
                self.dialing.remove(&(caller.clone(), req));
                self.send(
                    &caller,
                    Msg::DialFailed {
                        req,
                        reason,
                        message: reason.describe().to_string(),
                    },
                )
            }
            Action::Ring {
                callee: Line::Station(callee),
                call,
                from,
            } => {
                let from_name = self.stations.get(&from).and_then(|s| s.name.clone());
                self.send(
                    &callee,
                    Msg::Ring {
                        call,
                        from,
                        from_name,
                    },
                )
            }
            Action::Connected {
                call,
                caller,
                callee,
            } => {
                if let Err(e) = self.connect(call, &caller, &callee) {
                    tracing::warn!("call {call}: media set-up failed: {e:#}");
                    self.sb.handle_media_failed(Instant::now(), call);
                } else if self.relays.contains_key(&call) {
                    self.media_wait.insert(call, Instant::now());
                }
            }
            Action::Ended {
                to: Line::Trunk(_),
                call,
                ..
            } => {
                self.relays.remove(&call);
                self.trunk_ended(call);
            }
            Action::Ended {
                to: Line::Station(to),
                call,
                reason,
            } => {
                self.relays.remove(&call);
                self.send(&to, Msg::Ended { call, reason });
            }
            Action::HangUpOutside { dir_call, .. } => self.hang_up_outside(dir_call),
            Action::Fallback { call, dir_call } => self.fall_back(call, dir_call),
            Action::Feature {
                caller,
                req,
                message,
            } => self.send(&caller, Msg::Feature { req, message }),
            Action::Settings { ext, settings, .. } => {
                self.send(&ext, Msg::Settings { settings });
            }
            Action::Held { to, call, on } => {
                if let Some(to) = to.ext() {
                    self.send(to, Msg::Held { call, on })
                }
            }
            Action::ToVoicemail {
                call,
                caller,
                mailbox,
            } => {
                if let Err(e) = self.route_to_mailbox(call, &caller, &mailbox) {
                    tracing::warn!("call {call}: cannot reach the mailbox: {e:#}");
                    self.sb.handle_voicemail_done(Instant::now(), call);
                }
            }
            Action::Transferring {
                to,
                req,
                call,
                target,
            } => self.send(
                &to,
                Msg::Transferring {
                    req,
                    call,
                    to: target,
                },
            ),
            Action::TransferFailed {
                to,
                req,
                call,
                reason,
                note,
            } => self.send(
                &to,
                Msg::TransferFailed {
                    req,
                    call,
                    reason,
                    message: note.unwrap_or(reason.describe()).to_string(),
                },
            ),
            Action::Replaced { to, old, new, peer } => {
                self.relays.remove(&old);
                if let Some(to) = to.ext() {
                    self.send(to, Msg::Replaced { old, new, peer })
                }
            }
            Action::Forwarded { caller, call, to } => {
                if let Some(caller) = caller.ext() {
                    self.send(caller, Msg::Forwarded { call, to })
                }
            }
            Action::PickedUp {
                picker,
                req,
                call,
                from,
            } => self.send(&picker, Msg::PickedUp { req, call, from }),
            Action::Redirect { caller, to, .. } => self.redirect_outside(&caller, &to),
            Action::HandOff {
                line,
                call,
                to,
                internal,
                by,
                joins,
                dir_call,
            } => self.hand_off(
                Instant::now(),
                &line,
                call,
                dir_call,
                &to,
                internal,
                HandedOn { by, joins },
            ),
            Action::Record(rec) => {
                if let Some(call) = rec.call {
                    self.relays.remove(&call);
                    self.trunk_forget(call);
                    self.outcomes.insert(call, rec.outcome.as_str());
                }
                // Written before this turn's replies (`drain`).
                self.shared.metrics.call_ended(rec.outcome.as_str());
            }
        }
    }

    /// Point the caller at the gateway's own media end for `mailbox`.
    fn route_to_mailbox(&mut self, call: CallId, caller: &Line, mailbox: &str) -> Result<()> {
        let caller = match caller {
            Line::Trunk(t) => return self.outside_to_mailbox(call, t, mailbox),
            Line::Station(ext) => ext.as_str(),
        };
        let st = self.stations.get(caller).context("the caller is gone")?;
        let caller_fp = peer_fingerprint(&st.conn).context("caller certificate")?;
        let ip = st
            .conn
            .local_ip()
            .filter(|ip| !ip.is_unspecified())
            .unwrap_or(self.shared.local_addr.ip());
        let addr = SocketAddr::new(ip, self.shared.local_addr.port());
        let mut secret = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut secret);
        let token = hex::encode(secret);
        if let Ok(mut jobs) = self.shared.vm_jobs.lock() {
            jobs.insert(
                token.clone(),
                VoicemailJob {
                    call,
                    flow: call,
                    caller_fp,
                    caller: caller.to_string(),
                    mailbox: mailbox.to_string(),
                },
            );
        }
        self.send(
            caller,
            Msg::Connect {
                call,
                media: MediaPlan {
                    dial: true,
                    peer_addr: Some(addr.to_string()),
                    peer_fp: self.shared.id.fingerprint.clone(),
                    token,
                    relayed: false,
                    media_call: None,
                },
            },
        );
        Ok(())
    }

    /// Hand both ends of an answered call their media plans.
    fn connect(&mut self, call: CallId, caller: &Line, callee: &Line) -> Result<()> {
        let (Line::Station(caller), Line::Station(callee)) = (caller, callee) else {
            return self.connect_outside(call, caller, callee);
        };
        let (Some(a), Some(b)) = (self.stations.get(caller), self.stations.get(callee)) else {
            bail!("an end of the call is not connected");
        };
        let a_fp = peer_fingerprint(&a.conn).context("caller certificate")?;
        let b_fp = peer_fingerprint(&b.conn).context("callee certificate")?;
        let a_addr = a.conn.remote_address();
        let b_addr = b.conn.remote_address();
        let mut secret = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut secret);
        let token = hex::encode(secret);
        let relayed = self.shared.cfg().internal_media == InternalMedia::Relay;
        let target = if relayed {
            let fallback = self.shared.local_addr.ip();
            let ip_of = |c: &quinn::Connection| -> IpAddr {
                c.local_ip()
                    .filter(|ip| !ip.is_unspecified())
                    .unwrap_or(fallback)
            };
            let alloc = relay::allocate_fixed(
                self.shared.relay.clone(),
                a_addr,
                ip_of(&a.conn),
                b_addr,
                ip_of(&b.conn),
            )
            .context("allocating the relay")?;
            let t = alloc.caller_facing;
            self.relays.insert(call, alloc);
            t
        } else {
            b_addr
        };
        let caller_plan = MediaPlan {
            dial: true,
            peer_addr: Some(target.to_string()),
            peer_fp: b_fp,
            token: token.clone(),
            relayed,
            media_call: None,
        };
        let callee_plan = MediaPlan {
            dial: false,
            peer_addr: None,
            peer_fp: a_fp,
            token,
            relayed,
            media_call: None,
        };
        self.send(
            callee,
            Msg::Connect {
                call,
                media: callee_plan,
            },
        );
        self.send(
            caller,
            Msg::Connect {
                call,
                media: caller_plan,
            },
        );
        Ok(())
    }

    /// Give the switchboard the configuration, ring groups and extension
    /// range in force now (ringing calls keep their deadlines).
    fn reconfigure(&mut self) {
        self.sb.set_config(call_config(
            &self.shared.cfg(),
            self.shared.extension_range(),
            self.ring_group.as_ref(),
            &self.groups,
        ));
    }
}

/// The switchboard's settings: the configuration, with the extension
/// range in force (see [`Shared::extension_range`]), the ring group set
/// from the command line (if any) in place of `reception`, and the ring
/// groups with extensions of their own.
fn call_config(
    cfg: &Config,
    range: [u32; 2],
    group: Option<&crate::db::RingGroup>,
    groups: &[crate::db::NamedRingGroup],
) -> CallConfig {
    let mut c = cfg.call_config(range);
    c.groups = groups
        .iter()
        .map(|g| keyline_proto::call::RingGroup {
            ext: g.ext.clone(),
            name: g.name.clone(),
            members: g.group.members.clone(),
            hunt_step: (g.group.mode == "hunt").then(|| Duration::from_secs(g.group.step_secs)),
            mailbox: g.group.mailbox.clone(),
        })
        .collect();
    if let Some(g) = group {
        c.reception = g.members.clone();
        c.hunt_step = (g.mode == "hunt").then(|| Duration::from_secs(g.step_secs));
        if g.mailbox.is_some() {
            c.office_mailbox = g.mailbox.clone();
        } else if cfg.office_mailbox.is_none() {
            c.office_mailbox = g.members.first().cloned();
        }
    }
    c
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_office_mailbox_set_with_the_ring_group_wins_over_the_file() {
        let group = |mailbox: Option<&str>| crate::db::RingGroup {
            mode: "hunt".into(),
            members: vec!["203".into(), "202".into()],
            step_secs: 5,
            mailbox: mailbox.map(str::to_string),
        };
        let file = Config {
            reception: vec!["201".into()],
            office_mailbox: Some("204".into()),
            ..Config::default()
        };
        let plain = Config {
            reception: vec!["201".into()],
            ..Config::default()
        };
        let mb = |cfg: &Config, g: Option<&crate::db::RingGroup>| {
            call_config(cfg, [201, 499], g, &[]).office_mailbox
        };
        assert_eq!(mb(&file, Some(&group(Some("202")))), Some("202".into()));
        assert_eq!(mb(&file, Some(&group(None))), Some("204".into()));
        assert_eq!(mb(&plain, Some(&group(None))), Some("203".into()));
        assert_eq!(mb(&plain, None), Some("201".into()));
        let c = call_config(&plain, [201, 499], Some(&group(Some("202"))), &[]);
        assert_eq!(c.reception, vec!["203".to_string(), "202".to_string()]);
        assert_eq!(c.hunt_step, Some(Duration::from_secs(5)));
    }
}
