//! The load generator: both ends of N calls, on two UDP sockets.
//!
//! Socket X plays every caller and socket Y every callee. Each call sends
//! one Opus-sized datagram (100–160 bytes) every 20 ms in each direction,
//! the calls' send times spread evenly over the 20 ms period as real calls
//! would be. A datagram carries its call, direction, phase and the time it
//! was sent, so its one-way latency is measured on arrival. Sends are
//! batched with `sendmmsg` across calls, receives with `recvmmsg`, so the
//! generator stays cheaper than what it loads.
//!
//! Through a forwarder, X sends call i's caller-side packets to that call's
//! caller-facing port and the forwarder delivers them to Y from the call's
//! callee-facing port (and back). "Direct" targets send X → Y straight, for
//! the reference one-way latency on the same machine at the same load.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::socket::{
    sendmmsg, setsockopt, sockopt, ControlMessage, MsgFlags, MultiHeaders, SockaddrIn,
};
use nix::sys::time::TimeSpec;
use quinn_udp::{RecvMeta, UdpSocketState, BATCH_SIZE};
use serde::Serialize;

use crate::util::Summary;

/// Voice frame interval.
pub const PERIOD: Duration = Duration::from_millis(20);
/// Payload sizes, inclusive: Opus frames in QUIC packets are about this.
pub const MIN_SIZE: usize = 100;
pub const MAX_SIZE: usize = 160;
const HEADER: usize = 24;
const SEND_BATCH: usize = 64;
const RECV_BUF: usize = 64 * 1024;

/// Where one call's two ends send.
#[derive(Debug, Clone, Copy)]
pub struct CallTargets {
    /// Where the caller (socket X) sends: the forwarder's caller-facing port.
    pub from_caller: SocketAddrV4,
    /// Where the callee (socket Y) sends: the forwarder's callee-facing port.
    pub from_callee: SocketAddrV4,
}

/// How long each phase of a run lasts.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// Traffic before measuring: queues fill, caches warm.
    pub warmup: Duration,
    /// The measured window.
    pub measure: Duration,
    /// Traffic after it, so the last measured packets meet the same load.
    pub tail: Duration,
    /// Listening only, for stragglers.
    pub drain: Duration,
}

/// The measured window of one run.
#[derive(Debug, Clone, Serialize)]
pub struct GenResult {
    pub calls: usize,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub loss: f64,
    /// One-way latency of the measured packets, µs.
    pub latency_us: Summary,
    /// How late the generator sent them against their schedule, µs.
    pub send_lag_us: Summary,
    /// Packets the generator could not hand to the kernel (any phase).
    pub send_errors: u64,
    /// Packets that arrived at the wrong end.
    pub misrouted: u64,
    /// Share of a core the generator used during the window.
    pub generator_cpu: f64,
    pub measure_s: f64,
}

/// Events the caller can hook to snapshot the forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    MeasureStart,
    MeasureEnd,
}

/// The two sockets standing in for every end of every call.
#[derive(Debug)]
pub struct LoadGen {
    x: UdpSocket,
    xs: UdpSocketState,
    y: UdpSocket,
    ys: UdpSocketState,
    base: Instant,
}

fn bind() -> Result<(UdpSocket, UdpSocketState)> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a generator socket")?;
    s.set_nonblocking(true)?;
    // Several thousand queued packets: the generator must never be where
    // packets are lost.
    let _ = setsockopt(&s, sockopt::RcvBuf, &(8 << 20));
    let _ = setsockopt(&s, sockopt::SndBuf, &(4 << 20));
    let st = UdpSocketState::new((&s).into()).context("generator socket state")?;
    Ok((s, st))
}

fn v4(a: SocketAddr) -> Result<SocketAddrV4> {
    match a {
        SocketAddr::V4(v) => Ok(v),
        SocketAddr::V6(_) => bail!("{a} is not IPv4 loopback"),
    }
}

struct Slot {
    offset_ns: u64,
    call: u32,
    dir: u8,
}

/// Packets waiting for one `sendmmsg` from one socket.
struct Batch {
    bufs: Vec<[u8; MAX_SIZE]>,
    lens: Vec<usize>,
    addrs: Vec<Option<SockaddrIn>>,
    hdrs: MultiHeaders<SockaddrIn>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            bufs: vec![[0xA5; MAX_SIZE]; SEND_BATCH],
            lens: Vec::with_capacity(SEND_BATCH),
            addrs: Vec::with_capacity(SEND_BATCH),
            hdrs: MultiHeaders::preallocate(SEND_BATCH, None),
        }
    }

    fn is_full(&self) -> bool {
        self.lens.len() == SEND_BATCH
    }

    fn push(&mut self, to: SocketAddrV4, header: &[u8; HEADER], len: usize) {
        let i = self.lens.len();
        self.bufs[i][..HEADER].copy_from_slice(header);
        self.lens.push(len);
        self.addrs.push(Some(SockaddrIn::from(to)));
    }

    /// Send everything; returns how many packets the kernel refused.
    fn flush(&mut self, sock: &UdpSocket) -> u64 {
        let total = self.lens.len();
        let mut done = 0;
        let mut failed = 0u64;
        while done < total {
            let slices: Vec<[IoSlice<'_>; 1]> = self.bufs[done..total]
                .iter()
                .zip(&self.lens[done..total])
                .map(|(b, &l)| [IoSlice::new(&b[..l])])
                .collect();
            let none: [ControlMessage<'_>; 0] = [];
            match sendmmsg(
                sock.as_raw_fd(),
                &mut self.hdrs,
                &slices,
                &self.addrs[done..total],
                none,
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(res) => {
                    let n = res.count().max(1);
                    done += n;
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => {
                    // Full socket buffer (or an ICMP error): skip one.
                    failed += 1;
                    done += 1;
                }
            }
        }
        self.lens.clear();
        self.addrs.clear();
        failed
    }
}

fn thread_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_THREAD)
        .map(|u| {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::from_secs(t.tv_sec().max(0) as u64)
                    + Duration::from_micros(t.tv_usec().max(0) as u64)
            };
            tv(u.user_time()) + tv(u.system_time())
        })
        .unwrap_or_default()
}

/// Counters of the measured window while a run goes on.
#[derive(Default)]
struct Tally {
    sent: u64,
    received: u64,
    send_errors: u64,
    misrouted: u64,
    latency_ns: Vec<u32>,
    lag_ns: Vec<u32>,
}

impl LoadGen {
    pub fn new() -> Result<LoadGen> {
        let (x, xs) = bind()?;
        let (y, ys) = bind()?;
        Ok(LoadGen {
            x,
            xs,
            y,
            ys,
            base: Instant::now(),
        })
    }

    /// The callers' address (what a forwarder must accept on its
    /// caller-facing side).
    pub fn caller_addr(&self) -> Result<SocketAddrV4> {
        v4(self.x.local_addr()?)
    }

    /// The callees' address.
    pub fn callee_addr(&self) -> Result<SocketAddrV4> {
        v4(self.y.local_addr()?)
    }

    /// Targets that skip any forwarder: X sends to Y and back.
    pub fn direct_targets(&self, calls: usize) -> Result<Vec<CallTargets>> {
        let (x, y) = (self.caller_addr()?, self.callee_addr()?);
        Ok(vec![
            CallTargets {
                from_caller: y,
                from_callee: x,
            };
            calls
        ])
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Run `targets.len()` calls through the phases; `mark` is called at
    /// the edges of the measured window.
    pub fn run(
        &mut self,
        targets: &[CallTargets],
        phases: Phases,
        mut mark: impl FnMut(Mark) -> Result<()>,
    ) -> Result<GenResult> {
        let n = targets.len();
        if n == 0 {
            bail!("no calls to run");
        }
        let period = PERIOD.as_nanos() as u64;
        // Each call sends one way at its phase and the other way half a
        // period later; phases are spread evenly.
        let mut slots: Vec<Slot> = (0..n)
            .flat_map(|i| {
                let off = i as u64 * period / n as u64;
                [
                    Slot {
                        offset_ns: off,
                        call: i as u32,
                        dir: 0,
                    },
                    Slot {
                        offset_ns: (off + period / 2) % period,
                        call: i as u32,
                        dir: 1,
                    },
                ]
            })
            .collect();
        slots.sort_by_key(|s| s.offset_ns);

        let ns = |d: Duration| d.as_nanos() as u64;
        let start = self.now_ns() + 1_000_000;
        let measure_at = start + ns(phases.warmup);
        let tail_at = measure_at + ns(phases.measure);
        let stop_at = tail_at + ns(phases.tail);
        let end_at = stop_at + ns(phases.drain);

        let expected = (phases.measure.as_secs_f64() / PERIOD.as_secs_f64() * 2.0 * n as f64).ceil()
            as usize
            + 2 * n;
        let mut t = Tally {
            latency_ns: Vec::with_capacity(expected),
            lag_ns: Vec::with_capacity(expected),
            ..Tally::default()
        };
        let mut seq = vec![[0u32; 2]; n];
        let mut bx = Batch::new();
        let mut by = Batch::new();
        let mut storage = vec![0u8; RECV_BUF * BATCH_SIZE];
        let mut iov: Vec<IoSliceMut<'_>> =
            storage.chunks_mut(RECV_BUF).map(IoSliceMut::new).collect();
        let mut metas = vec![RecvMeta::default(); BATCH_SIZE];

        let mut cycle = 0u64;
        let mut idx = 0usize;
        let mut measuring = false;
        let mut cpu_at_start = Duration::ZERO;
        let mut cpu_in_window = Duration::ZERO;
        loop {
            let now = self.now_ns();
            if now >= end_at {
                break;
            }
            if !measuring && now >= measure_at && now < tail_at {
                measuring = true;
                mark(Mark::MeasureStart)?;
                cpu_at_start = thread_cpu();
            }
            if measuring && now >= tail_at {
                measuring = false;
                cpu_in_window = thread_cpu().saturating_sub(cpu_at_start);
                mark(Mark::MeasureEnd)?;
            }
            // Send what is due.
            if now < stop_at {
                loop {
                    let slot = &slots[idx];
                    let due = start + cycle * period + slot.offset_ns;
                    if due > now {
                        break;
                    }
                    let tag: u8 = if due < measure_at {
                        0
                    } else if due < tail_at {
                        1
                    } else {
                        2
                    };
                    let c = slot.call as usize;
                    let s = seq[c][slot.dir as usize];
                    seq[c][slot.dir as usize] = s.wrapping_add(1);
                    let mut h = [0u8; HEADER];
                    h[0..4].copy_from_slice(&slot.call.to_le_bytes());
                    h[4] = slot.dir;
                    h[5] = tag;
                    h[8..12].copy_from_slice(&s.to_le_bytes());
                    h[16..24].copy_from_slice(&now.to_le_bytes());
                    let len = MIN_SIZE + (c * 31 + s as usize * 17) % (MAX_SIZE - MIN_SIZE + 1);
                    if tag == 1 {
                        t.lag_ns.push((now - due).min(u64::from(u32::MAX)) as u32);
                    }
                    let (batch, sock, to) = if slot.dir == 0 {
                        (&mut bx, &self.x, targets[c].from_caller)
                    } else {
                        (&mut by, &self.y, targets[c].from_callee)
                    };
                    batch.push(to, &h, len);
                    if batch.is_full() {
                        t.send_errors += batch.flush(sock);
                    }
                    if tag == 1 {
                        t.sent += 1;
                    }
                    idx += 1;
                    if idx == slots.len() {
                        idx = 0;
                        cycle += 1;
                    }
                }
                for (batch, sock) in [(&mut bx, &self.x), (&mut by, &self.y)] {
                    if !batch.lens.is_empty() {
                        t.send_errors += batch.flush(sock);
                    }
                }
            }
            // Receive what arrived.
            for (sock, state, want_dir) in [(&self.x, &self.xs, 1u8), (&self.y, &self.ys, 0u8)] {
                loop {
                    let got = match state.recv(sock.into(), &mut iov, &mut metas) {
                        Ok(got) => got,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                        Err(e) => return Err(e).context("generator receive"),
                    };
                    let at = self.now_ns();
                    for (meta, buf) in metas.iter().zip(iov.iter()).take(got) {
                        let stride = meta.stride.max(1);
                        for d in buf[..meta.len].chunks(stride) {
                            if d.len() < HEADER {
                                t.misrouted += 1;
                                continue;
                            }
                            let call = u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as usize;
                            let (dir, tag) = (d[4], d[5]);
                            if call >= n || dir != want_dir {
                                t.misrouted += 1;
                                continue;
                            }
                            if tag != 1 {
                                continue;
                            }
                            let mut ts = [0u8; 8];
                            ts.copy_from_slice(&d[16..24]);
                            let sent_at = u64::from_le_bytes(ts);
                            t.received += 1;
                            t.latency_ns
                                .push(at.saturating_sub(sent_at).min(u64::from(u32::MAX)) as u32);
                        }
                    }
                    if got < BATCH_SIZE {
                        break;
                    }
                }
            }
            // Wait for the next send or an arrival.
            let now = self.now_ns();
            let next = if now < stop_at {
                start + cycle * period + slots[idx].offset_ns
            } else {
                end_at
            };
            if next > now {
                let wait = Duration::from_nanos((next - now).min(1_000_000));
                let mut fds = [
                    PollFd::new(std::os::fd::AsFd::as_fd(&self.x), PollFlags::POLLIN),
                    PollFd::new(std::os::fd::AsFd::as_fd(&self.y), PollFlags::POLLIN),
                ];
                match ppoll(&mut fds, Some(TimeSpec::from_duration(wait)), None) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e).context("ppoll"),
                }
            }
        }
        if measuring {
            mark(Mark::MeasureEnd)?;
        }
        // Packets the generator failed to send count as lost: a run with
        // send errors is reported as generator-limited by the caller.
        let sent = t.sent;
        let lost = sent.saturating_sub(t.received);
        let to_us = |v: &[u32]| -> Summary {
            let mut f: Vec<f64> = v.iter().map(|&x| f64::from(x) / 1000.0).collect();
            Summary::of(&mut f)
        };
        Ok(GenResult {
            calls: n,
            sent,
            received: t.received,
            lost,
            loss: if sent == 0 {
                1.0
            } else {
                lost as f64 / sent as f64
            },
            latency_us: to_us(&t.latency_ns),
            send_lag_us: to_us(&t.lag_ns),
            send_errors: t.send_errors,
            misrouted: t.misrouted,
            generator_cpu: cpu_in_window.as_secs_f64() / phases.measure.as_secs_f64(),
            measure_s: phases.measure.as_secs_f64(),
        })
    }
}
