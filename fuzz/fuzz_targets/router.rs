//! Random sequences of inputs to the directory's routing core
//! (`keyline_directory::routing::Router`): connections coming, logging in,
//! moving and going; registrations, refreshes and unregistrations; calls,
//! look-ups, answers, declines, redirects, hand-offs (transfers), hang-ups
//! and relay fall-backs; the shell's relay allocations succeeding or
//! failing, at any later moment; forwarding rules and numbers changing
//! hands; time passing.
//!
//! After every step `Router::check_invariants` holds (every binding is its
//! owner's, every call has both its ends), every relay the shell holds
//! belongs to a call with a ready relay and every relay asked for to a
//! call waiting for one, a callee is only ever shown one of the caller's
//! own numbers, and no call ends twice. After time passes no binding is
//! past its expiry and nothing is still due. At the end, once everyone
//! hangs up, every connection goes and a day passes, no call, binding or
//! relay is left and every call ended exactly once.
#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keyline_directory::routing::{
    Action, CallState, Config, MediaEnd, NumberInfo, Placing, RelayState, Request, Router,
    SessionId,
};
use keyline_proto::dir::{DirMsg, DirectPolicy, ForwardRule, ForwardWhen};
use keyline_proto::number::Number;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

const ACCOUNTS: [&str; 4] = ["alice", "bob", "carol", "office"];
/// Numbers and their first owners.
const NUMBERS: [(&str, usize); 8] = [
    ("100", 0),
    ("101", 0),
    ("200", 1),
    ("201", 1),
    ("300", 2),
    ("김민준", 2),
    ("400", 3),
    ("office", 3),
];
/// What is dialled: the numbers, an office extension, strangers.
const DIALLED: [&str; 12] = [
    "100",
    "101",
    "200",
    "201",
    "300",
    "김민준",
    "400",
    "office",
    "400/21",
    "office/7",
    "999",
    "nobody/1",
];
const POLICIES: [DirectPolicy; 3] = [
    DirectPolicy::Direct,
    DirectPolicy::DirectThenRelay,
    DirectPolicy::Relay,
];

#[derive(Arbitrary, Debug)]
enum Op {
    Up {
        port: u16,
    },
    Login {
        s: u8,
        account: u8,
    },
    Moved {
        s: u8,
        port: u16,
    },
    Down {
        s: u8,
    },
    /// Bind the numbers whose bits are set (all of the account's when 0).
    Register {
        s: u8,
        numbers: u8,
        own: u8,
    },
    Unregister {
        s: u8,
        numbers: u8,
    },
    Call {
        s: u8,
        number: u8,
        from: Option<u8>,
        hops: u8,
        own: u8,
        vouched: Option<u8>,
        handoff: Option<u64>,
    },
    Lookup {
        s: u8,
        number: u8,
    },
    Answer {
        s: u8,
        call: u8,
        vouched: Option<u8>,
    },
    Decline {
        s: u8,
        call: u8,
        busy: bool,
    },
    Redirect {
        s: u8,
        call: u8,
        number: u8,
    },
    Transfer {
        s: u8,
        call: u8,
        number: u8,
        handoff: Option<u64>,
    },
    Hangup {
        s: u8,
        call: u8,
    },
    Fallback {
        s: u8,
        call: u8,
    },
    RelayReady {
        which: u8,
    },
    RelayFailed {
        which: u8,
    },
    Forward {
        number: u8,
        rule: Option<(bool, u8)>,
    },
    /// Give a number to another account (or take it away), as a reload of
    /// the number table does.
    Owner {
        number: u8,
        account: Option<u8>,
    },
    Policy(u8),
    Wait(u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    ttl_secs: u16,
    ring_secs: u8,
    policy: u8,
    ops: Vec<Op>,
}

fn addr(host: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, host], port))
}

/// A number as the shell hands it on: parsed (every entry is valid).
fn number(s: &str) -> Number {
    Number::parse(s).unwrap_or_else(|e| panic!("{s:?} in the fuzz tables: {e}"))
}

fn dialled(i: u8) -> Number {
    number(DIALLED[usize::from(i) % DIALLED.len()])
}

fn own_addrs(n: u8, host: u8) -> Vec<SocketAddr> {
    // Up to 9, one more than a registration may carry.
    (0..n % 10)
        .map(|k| addr(host, 5000 + u16::from(k)))
        .collect()
}

fn vouched(v: Option<u8>) -> Option<MediaEnd> {
    v.map(|k| MediaEnd {
        fp: format!("station-{}", k % 4),
        addrs: (0..=k % 3)
            .map(|i| addr(200, 7000 + u16::from(i)))
            .collect(),
    })
}

struct Run {
    r: Router,
    now: Instant,
    table: HashMap<String, NumberInfo>,
    next_sid: SessionId,
    req: u64,
    next_port: u16,
    /// Relays the shell holds, by call.
    relays: BTreeMap<u64, (SocketAddr, SocketAddr)>,
    /// Relays asked for and not yet set up or refused, oldest first.
    pending: Vec<u64>,
    /// Calls seen, and how many times each finished.
    seen: BTreeMap<u64, u32>,
}

impl Run {
    fn live(&self) -> Vec<SessionId> {
        let mut v: Vec<SessionId> = (1..self.next_sid)
            .filter(|s| self.r.session(*s).is_some())
            .collect();
        v.sort_unstable();
        v
    }

    /// A session: a live one (most of the time), else any id, gone or not.
    fn sid(&self, i: u8) -> SessionId {
        let live = self.live();
        if live.is_empty() || i >= 240 {
            u64::from(i % 8)
        } else {
            live[usize::from(i) % live.len()]
        }
    }

    /// A call: one the router has (most of the time), else any id.
    fn call(&self, i: u8) -> u64 {
        let ids: Vec<u64> = self.r.calls().map(|c| c.id).collect();
        if ids.is_empty() || i >= 240 {
            u64::from(i % 16)
        } else {
            ids[usize::from(i) % ids.len()]
        }
    }

    fn req(&mut self) -> u64 {
        self.req += 1;
        self.req
    }

    fn numbers_of(&self, account: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .table
            .iter()
            .filter(|(_, ni)| ni.account == account)
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    fn picked(mask: u8) -> Vec<Number> {
        NUMBERS
            .iter()
            .enumerate()
            .filter(|(k, _)| mask & (1 << k) != 0)
            .map(|(_, (n, _))| number(n))
            .collect()
    }

    fn drain(&mut self) {
        if let Err(e) = self.r.check_invariants() {
            panic!("invariant broken: {e}\n{:#?}", self.r);
        }
        while let Some(action) = self.r.poll_action() {
            match action {
                Action::Send {
                    msg: DirMsg::Ring { call, from, .. },
                    ..
                } => {
                    let c = self.r.call(call).expect("a ring for a call that exists");
                    let caller = self.r.session(c.caller).expect("the caller is there");
                    assert!(
                        caller.numbers.contains(&from),
                        "call {call} shows {from}, not a number of the caller's ({:?})",
                        caller.numbers
                    );
                }
                Action::Send { .. } => {}
                Action::AllocateRelay { call, .. } => {
                    let c = self
                        .r
                        .call(call)
                        .expect("a relay asked for a call that is gone");
                    assert!(
                        matches!(c.relay, RelayState::Pending { .. }),
                        "a relay asked for call {call} in relay state {:?}",
                        c.relay
                    );
                    assert!(
                        !self.pending.contains(&call) && !self.relays.contains_key(&call),
                        "a second relay asked for call {call}"
                    );
                    self.pending.push(call);
                }
                Action::ReleaseRelay { call } => {
                    assert!(
                        self.r.call(call).is_none(),
                        "the relay of call {call} released while the call goes on"
                    );
                    self.relays.remove(&call);
                }
                Action::Record(_) | Action::Notice(_) => {}
                Action::Finished { call, .. } => {
                    assert!(
                        self.r.call(call).is_none(),
                        "call {call} finished but is still there"
                    );
                    let n = self.seen.entry(call).or_insert(0);
                    *n += 1;
                    assert_eq!(*n, 1, "call {call} finished twice");
                }
            }
        }
        for c in self.r.calls() {
            self.seen.entry(c.id).or_insert(0);
            match &c.relay {
                RelayState::None => {
                    assert!(
                        !self.relays.contains_key(&c.id),
                        "call {}: a relay it does not know",
                        c.id
                    )
                }
                RelayState::Pending { .. } => assert!(
                    self.pending.contains(&c.id),
                    "call {} waits for a relay nobody is setting up",
                    c.id
                ),
                RelayState::Ready {
                    caller_facing,
                    callee_facing,
                } => assert_eq!(
                    self.relays.get(&c.id),
                    Some(&(*caller_facing, *callee_facing)),
                    "call {}: its relay is not the one the shell holds",
                    c.id
                ),
            }
        }
        for call in self.relays.keys() {
            assert!(
                self.r.call(*call).is_some(),
                "the shell holds a relay for call {call}, which is over"
            );
        }
    }

    fn step(&mut self, op: &Op) {
        let now = self.now;
        match *op {
            Op::Up { port } => {
                let sid = self.next_sid;
                self.next_sid += 1;
                self.r
                    .handle_session_up(sid, format!("fp{sid}"), addr(sid as u8, port));
                // Odd ports are terminals, which check while they ring.
                if port % 2 == 1 {
                    self.r.allow_checks(sid);
                }
            }
            Op::Login { s, account } => {
                let sid = self.sid(s);
                let account = ACCOUNTS[usize::from(account) % ACCOUNTS.len()];
                let numbers = self.numbers_of(account);
                self.r.handle_login(now, sid, account, numbers);
            }
            Op::Moved { s, port } => {
                let sid = self.sid(s);
                self.r
                    .handle_session_moved(now, sid, addr(100 + (sid % 100) as u8, port));
            }
            Op::Down { s } => {
                let sid = self.sid(s);
                self.r.handle_session_down(now, sid);
            }
            Op::Register { s, numbers, own } => {
                let (sid, req) = (self.sid(s), self.req());
                let (numbers, own) = (Self::picked(numbers), own_addrs(own, 1));
                self.r
                    .handle_request(now, sid, Request::Register { req, numbers, own });
            }
            Op::Unregister { s, numbers } => {
                let (sid, req) = (self.sid(s), self.req());
                let numbers = Self::picked(numbers);
                self.r
                    .handle_request(now, sid, Request::Unregister { req, numbers });
            }
            Op::Call {
                s,
                number,
                from,
                hops,
                own,
                vouched: v,
                handoff,
            } => {
                let (sid, req) = (self.sid(s), self.req());
                let placing = Placing {
                    media: vouched(v),
                    handoff,
                    check_key: Some(format!("{req:032x}")),
                };
                let call = Request::Call {
                    req,
                    number: dialled(number),
                    from: from.map(dialled),
                    own: own_addrs(own, 2),
                    hops: hops % 8,
                    placing,
                };
                self.r.handle_request(now, sid, call);
            }
            Op::Lookup { s, number } => {
                let (sid, req) = (self.sid(s), self.req());
                let lookup = Request::Lookup {
                    req,
                    number: dialled(number),
                    token: format!("tok{req}"),
                };
                self.r.handle_request(now, sid, lookup);
            }
            Op::Answer {
                s,
                call,
                vouched: v,
            } => {
                let (sid, id, req) = (self.sid(s), self.call(call), self.req());
                let answer = Request::Answer {
                    req,
                    call: id,
                    token: format!("tok{req}"),
                    media: vouched(v),
                };
                self.r.handle_request(now, sid, answer);
            }
            Op::Decline { s, call, busy } => {
                let (sid, id, req) = (self.sid(s), self.call(call), self.req());
                self.r
                    .handle_request(now, sid, Request::Decline { req, call: id, busy });
            }
            Op::Redirect { s, call, number } => {
                let (sid, id, req) = (self.sid(s), self.call(call), self.req());
                let number = dialled(number);
                self.r
                    .handle_request(now, sid, Request::Redirect { req, call: id, number });
            }
            Op::Transfer {
                s,
                call,
                number,
                handoff,
            } => {
                let (sid, id, req) = (self.sid(s), self.call(call), self.req());
                let transfer = Request::Transfer {
                    req,
                    call: id,
                    number: dialled(number),
                    handoff,
                };
                self.r.handle_request(now, sid, transfer);
            }
            Op::Hangup { s, call } => {
                let (sid, id) = (self.sid(s), self.call(call));
                self.r.handle_request(now, sid, Request::Hangup { call: id });
            }
            Op::Fallback { s, call } => {
                let (sid, id, req) = (self.sid(s), self.call(call), self.req());
                self.r
                    .handle_request(now, sid, Request::Fallback { req, call: id });
            }
            Op::RelayReady { which } => {
                if self.pending.is_empty() {
                    return self.drain();
                }
                let call = self.pending.remove(usize::from(which) % self.pending.len());
                self.next_port = self.next_port.wrapping_add(2);
                let sides = (
                    addr(250, self.next_port),
                    addr(250, self.next_port.wrapping_add(1)),
                );
                assert!(
                    self.relays.insert(call, sides).is_none(),
                    "two relays for call {call}"
                );
                self.r.handle_relay_ready(now, call, sides.0, sides.1);
            }
            Op::RelayFailed { which } => {
                if self.pending.is_empty() {
                    return self.drain();
                }
                let call = self.pending.remove(usize::from(which) % self.pending.len());
                self.r.handle_relay_failed(now, call, "no ports left");
            }
            Op::Forward { number, rule } => {
                let n = NUMBERS[usize::from(number) % NUMBERS.len()].0;
                let rules: Vec<ForwardRule> = rule
                    .map(|(always, to)| {
                        ForwardRule::new(
                            if always {
                                ForwardWhen::Always
                            } else {
                                ForwardWhen::Unregistered
                            },
                            dialled(to).into_string(),
                        )
                    })
                    .into_iter()
                    .collect();
                if let Some(ni) = self.table.get_mut(n) {
                    ni.forwards = rules.clone();
                }
                self.r.set_forwards(n, rules);
            }
            Op::Owner { number, account } => {
                let n = NUMBERS[usize::from(number) % NUMBERS.len()].0;
                match account {
                    Some(a) => {
                        let account = ACCOUNTS[usize::from(a) % ACCOUNTS.len()].to_string();
                        let forwards = self
                            .table
                            .get(n)
                            .map(|ni| ni.forwards.clone())
                            .unwrap_or_default();
                        self.table.insert(
                            n.to_string(),
                            NumberInfo {
                                account,
                                forwards,
                                dnd: false,
                            },
                        );
                    }
                    None => {
                        self.table.remove(n);
                    }
                }
                self.r.set_numbers(now, self.table.clone());
            }
            Op::Policy(p) => {
                let mut cfg = self.r.config().clone();
                cfg.policy = POLICIES[usize::from(p) % POLICIES.len()];
                self.r.reconfigure(cfg);
            }
            Op::Wait(secs) => self.wait(Duration::from_millis(u64::from(secs) * 100)),
        }
        self.drain();
    }

    /// The state in a line, for traces.
    fn summary(&self) -> String {
        let answered = self
            .r
            .calls()
            .filter(|c| matches!(c.state, CallState::Answered { .. }))
            .count();
        format!(
            "sessions {}, bindings {}, calls {} ({answered} answered), relays {} (+{} pending)",
            self.live().len(),
            self.r.bindings().count(),
            self.r.calls().count(),
            self.relays.len(),
            self.pending.len()
        )
    }

    fn wait(&mut self, d: Duration) {
        self.now += d;
        let now = self.now;
        self.r.handle_timeout(now);
        for b in self.r.bindings() {
            assert!(
                b.expires > now,
                "the binding of {} is past its expiry",
                b.number
            );
        }
        if let Some(at) = self.r.poll_timeout() {
            assert!(at > now, "a deadline still due after handle_timeout");
        }
    }
}

fuzz_target!(|input: Input| {
    let cfg = Config {
        binding_ttl: Duration::from_secs(5 + u64::from(input.ttl_secs % 600)),
        ring_timeout: Duration::from_secs(1 + u64::from(input.ring_secs % 60)),
        policy: POLICIES[usize::from(input.policy) % POLICIES.len()],
        fallback_after: Duration::from_secs(3),
    };
    let now = Instant::now();
    let table: HashMap<String, NumberInfo> = NUMBERS
        .iter()
        .map(|(n, a)| {
            (
                n.to_string(),
                NumberInfo {
                    account: ACCOUNTS[*a].to_string(),
                    forwards: Vec::new(),
                    dnd: false,
                },
            )
        })
        .collect();
    let mut r = Router::new(cfg);
    r.set_numbers(now, table.clone());
    let mut run = Run {
        r,
        now,
        table,
        next_sid: 1,
        req: 0,
        next_port: 20_000,
        relays: BTreeMap::new(),
        pending: Vec::new(),
        seen: BTreeMap::new(),
    };
    // KEYLINE_FUZZ_TRACE=1 prints each input as it is applied.
    let trace = std::env::var_os("KEYLINE_FUZZ_TRACE").is_some();
    for op in input.ops.iter().take(300) {
        if trace {
            eprintln!("{op:?}");
        }
        run.step(op);
        if trace {
            eprintln!("  {}", run.summary());
        }
    }

    // Everyone hangs up, every allocation in flight completes, every
    // connection goes, a day passes.
    let calls: Vec<(u64, SessionId, SessionId)> =
        run.r.calls().map(|c| (c.id, c.caller, c.callee)).collect();
    for (id, caller, callee) in calls {
        let now = run.now;
        run.r.handle_hangup(now, caller, id);
        run.r.handle_hangup(now, callee, id);
        run.drain();
    }
    while !run.pending.is_empty() {
        run.step(&Op::RelayReady { which: 0 });
    }
    for sid in run.live() {
        let now = run.now;
        run.r.handle_session_down(now, sid);
        run.drain();
    }
    run.wait(Duration::from_secs(86_400));
    run.drain();
    let left: Vec<_> = run.r.calls().collect();
    assert!(left.is_empty(), "calls that never end: {left:#?}");
    assert_eq!(run.r.bindings().count(), 0, "bindings left");
    assert!(
        run.relays.is_empty(),
        "relays never released: {:?}",
        run.relays
    );
    for (id, n) in &run.seen {
        assert_eq!(*n, 1, "call {id} finished {n} times");
    }
});
