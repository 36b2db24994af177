//! The forwarders under test, each run alone in a child process
//! (`keyline-bench serve-relay` / `serve-baseline`) so that its CPU time
//! and resident memory are its own.
//!
//! The parent drives the child over stdin/stdout, one line each way:
//! `alloc N CALLER CALLEE` → `ok A1 B1 A2 B2 …` (N calls whose caller is
//! at CALLER and callee at CALLEE; Ai is where the caller sends, Bi where
//! the callee sends), `stats` → a JSON line, `quit` (or EOF) → exit.

use std::io::{self, BufRead, IoSliceMut, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use anyhow::{bail, Context, Result};
use keyline_net::relay::{self, Allocation, Counters};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use serde_json::json;

use crate::util;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// What the protocol loop needs from a forwarder.
trait Forwarder {
    /// Make `n` calls between `caller` and `callee`; their facing ports.
    fn alloc(
        &mut self,
        n: usize,
        caller: SocketAddr,
        callee: SocketAddr,
    ) -> Result<Vec<(SocketAddr, SocketAddr)>>;
    /// (packets forwarded, packets dropped, calls allocated)
    fn counts(&self) -> (u64, u64, u64);
}

fn serve(mut fwd: impl Forwarder) -> Result<()> {
    let stdin = io::stdin();
    let mut out = io::stdout().lock();
    writeln!(out, "ready {}", std::process::id())?;
    out.flush()?;
    for line in stdin.lock().lines() {
        let line = line.context("reading a command")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["alloc", n, a, b] => {
                let n: usize = n.parse().context("alloc count")?;
                let a: SocketAddr = a.parse().context("caller address")?;
                let b: SocketAddr = b.parse().context("callee address")?;
                let facing = fwd.alloc(n, a, b)?;
                let mut reply = String::from("ok");
                for (x, y) in facing {
                    reply.push_str(&format!(" {x} {y}"));
                }
                writeln!(out, "{reply}")?;
            }
            ["stats"] => {
                let (packets, dropped, allocations) = fwd.counts();
                let cpu = util::self_cpu()?;
                let stats = json!({
                    "cpu_us": cpu.as_micros() as u64,
                    "rss_kib": util::self_rss_kib()?,
                    "packets": packets,
                    "dropped": dropped,
                    "allocations": allocations,
                });
                writeln!(out, "{stats}")?;
            }
            ["quit"] => break,
            _ => bail!("unknown command {line:?}"),
        }
        out.flush()?;
    }
    Ok(())
}

fn prepare(cpu: Option<usize>) -> Result<()> {
    if let Some(c) = cpu {
        util::pin_current_thread(c)?;
    }
    util::raise_nofile()?;
    Ok(())
}

/// The gateway's relay: `keyline_net::relay::allocate` on a tokio runtime
/// built as `keyline-gatewayd` builds its own.
struct Relay {
    rt: tokio::runtime::Runtime,
    counters: Arc<Counters>,
    allocs: Vec<Allocation>,
}

impl Forwarder for Relay {
    fn alloc(
        &mut self,
        n: usize,
        caller: SocketAddr,
        callee: SocketAddr,
    ) -> Result<Vec<(SocketAddr, SocketAddr)>> {
        let _guard = self.rt.enter();
        let mut facing = Vec::with_capacity(n);
        for _ in 0..n {
            let a = relay::allocate(self.counters.clone(), caller, LO, callee, LO)
                .context("relay::allocate")?;
            facing.push((a.caller_facing, a.callee_facing));
            self.allocs.push(a);
        }
        Ok(facing)
    }

    fn counts(&self) -> (u64, u64, u64) {
        (
            self.counters.packets(),
            self.counters.dropped(),
            self.allocs.len() as u64,
        )
    }
}

/// `keyline-bench serve-relay`; with `metrics`, the gateway's Prometheus
/// recorder is installed and the exposition rendered every second (a
/// scrape fifteen times as often as the usual), as `[metrics]` does.
pub fn serve_relay(cpu: Option<usize>, workers: usize, metrics: bool) -> Result<()> {
    prepare(cpu)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()?;
    let counters = Arc::new(Counters::default());
    if metrics {
        let m = keyline_gatewayd::metrics::Metrics::install()?;
        let c = counters.clone();
        std::thread::Builder::new()
            .name("scrape".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                std::hint::black_box(m.render(&c).len());
            })
            .context("starting the scraper")?;
    }
    serve(Relay {
        rt,
        counters,
        allocs: Vec::new(),
    })
}

/// One socket of the baseline and the only peer it talks to.
struct Sock {
    sock: UdpSocket,
    state: UdpSocketState,
    peer: SocketAddr,
}

impl Sock {
    fn bind(peer: SocketAddr) -> Result<Sock> {
        let sock = UdpSocket::bind((LO, 0)).context("binding a baseline socket")?;
        sock.set_nonblocking(true)?;
        let state = UdpSocketState::new((&sock).into())?;
        Ok(Sock { sock, state, peer })
    }
}

#[derive(Default)]
struct BaseCounts {
    packets: AtomicU64,
    dropped: AtomicU64,
}

/// The simplest fast forwarder: one thread, level-triggered epoll over
/// every socket, one batched read (`recvmmsg` with GRO, via quinn-udp)
/// per readiness event, GSO sends, no allocation on the packet path. The
/// same socket-pair-per-call layout and peer check as the relay.
struct Baseline {
    tx: mpsc::Sender<(Sock, Sock)>,
    counts: Arc<BaseCounts>,
    allocated: u64,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Forwarder for Baseline {
    fn alloc(
        &mut self,
        n: usize,
        caller: SocketAddr,
        callee: SocketAddr,
    ) -> Result<Vec<(SocketAddr, SocketAddr)>> {
        let mut facing = Vec::with_capacity(n);
        for _ in 0..n {
            let a = Sock::bind(caller)?;
            let b = Sock::bind(callee)?;
            facing.push((a.sock.local_addr()?, b.sock.local_addr()?));
            self.tx
                .send((a, b))
                .map_err(|_| anyhow::anyhow!("the forwarding thread stopped"))?;
            self.allocated += 1;
        }
        Ok(facing)
    }

    fn counts(&self) -> (u64, u64, u64) {
        (
            self.counts.packets.load(Ordering::Relaxed),
            self.counts.dropped.load(Ordering::Relaxed),
            self.allocated,
        )
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("keyline-bench serve-baseline: {e:#}"),
                Err(_) => eprintln!("keyline-bench serve-baseline: the forwarding thread panicked"),
            }
        }
    }
}

fn baseline_loop(
    rx: mpsc::Receiver<(Sock, Sock)>,
    counts: Arc<BaseCounts>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    const BUF: usize = 64 * 1024;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create")?;
    let mut socks: Vec<Sock> = Vec::new();
    let mut events = vec![EpollEvent::empty(); 256];
    let mut storage = vec![0u8; BUF * BATCH_SIZE];
    let mut iov: Vec<IoSliceMut<'_>> = storage.chunks_mut(BUF).map(IoSliceMut::new).collect();
    let mut metas = vec![RecvMeta::default(); BATCH_SIZE];
    while !stop.load(Ordering::Relaxed) {
        while let Ok((a, b)) = rx.try_recv() {
            for s in [a, b] {
                epoll
                    .add(
                        &s.sock,
                        EpollEvent::new(EpollFlags::EPOLLIN, socks.len() as u64),
                    )
                    .context("epoll_ctl")?;
                socks.push(s);
            }
        }
        let ready = match epoll.wait(&mut events, 10u16) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("epoll_wait"),
        };
        for ev in &events[..ready] {
            let i = ev.data() as usize;
            let (from, to) = (&socks[i], &socks[i ^ 1]);
            let got = match from.state.recv((&from.sock).into(), &mut iov, &mut metas) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e).context("recvmmsg"),
            };
            for (meta, buf) in metas.iter().zip(iov.iter()).take(got) {
                let segments = meta.len.div_ceil(meta.stride.max(1)) as u64;
                if meta.addr != from.peer {
                    counts.dropped.fetch_add(segments, Ordering::Relaxed);
                    continue;
                }
                let t = Transmit {
                    destination: to.peer,
                    ecn: None,
                    contents: &buf[..meta.len],
                    segment_size: (segments > 1).then_some(meta.stride),
                    src_ip: None,
                };
                let ok = if segments as usize > to.state.max_gso_segments() {
                    buf[..meta.len].chunks(meta.stride).all(|seg| {
                        let one = Transmit {
                            contents: seg,
                            segment_size: None,
                            ..t
                        };
                        to.state.try_send((&to.sock).into(), &one).is_ok()
                    })
                } else {
                    to.state.try_send((&to.sock).into(), &t).is_ok()
                };
                if ok {
                    counts.packets.fetch_add(segments, Ordering::Relaxed);
                } else {
                    counts.dropped.fetch_add(segments, Ordering::Relaxed);
                }
            }
        }
    }
    Ok(())
}

/// `keyline-bench serve-baseline`.
pub fn serve_baseline(cpu: Option<usize>) -> Result<()> {
    prepare(cpu)?;
    let (tx, rx) = mpsc::channel();
    let counts = Arc::new(BaseCounts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (counts, stop) = (counts.clone(), stop.clone());
        std::thread::Builder::new()
            .name("baseline".into())
            .spawn(move || baseline_loop(rx, counts, stop))?
    };
    let base = Baseline {
        tx,
        counts,
        allocated: 0,
        stop,
        thread: Some(thread),
    };
    serve(base)
}
