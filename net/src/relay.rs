//! The media forwarder: "forward, don't terminate" (DESIGN §3.1).
//!
//! An [`Allocation`] is a pair of UDP sockets for one call. The caller's end
//! sends its QUIC packets to the caller-facing socket; they leave through
//! the callee-facing socket towards the callee, and the replies come back
//! the same way. Packets are moved as opaque bytes — the forwarder never
//! holds a key and cannot read the media. Each socket accepts packets from
//! one address only (the end assigned to that side), so a stranger cannot
//! inject into or hijack a call. On the internet ([`allocate`], the
//! directory's relay) an end behind a NAT that picks a new port for each
//! destination cannot be known by port in advance: that side accepts its
//! end's address with any port and keeps to the first it hears. I/O is batched: quinn-udp
//! reads with `recvmmsg` and GRO and writes coalesced runs with GSO.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Totals of one direction through the forwarder.
#[derive(Debug, Default)]
pub struct Direction {
    /// Packets sent on (a GSO/GRO run counts as its segments).
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Packets from an address that is not the call's, or not sendable.
    pub dropped: AtomicU64,
}

impl Direction {
    fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "packets": self.packets.load(Ordering::Relaxed),
            "bytes": self.bytes.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
        })
    }
}

/// Totals across every allocation, for `status`, metrics and benchmarks.
#[derive(Debug, Default)]
pub struct Counters {
    /// Caller → callee.
    pub to_callee: Direction,
    /// Callee → caller.
    pub to_caller: Direction,
    pub active: AtomicU64,
    pub allocations: AtomicU64,
}

impl Counters {
    /// Packets forwarded, both directions.
    pub fn packets(&self) -> u64 {
        self.to_callee.packets.load(Ordering::Relaxed)
            + self.to_caller.packets.load(Ordering::Relaxed)
    }

    /// Bytes forwarded, both directions.
    pub fn bytes(&self) -> u64 {
        self.to_callee.bytes.load(Ordering::Relaxed) + self.to_caller.bytes.load(Ordering::Relaxed)
    }

    /// Packets dropped, both directions.
    pub fn dropped(&self) -> u64 {
        self.to_callee.dropped.load(Ordering::Relaxed)
            + self.to_caller.dropped.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "packets": self.packets(),
            "bytes": self.bytes(),
            "dropped": self.dropped(),
            "active": self.active.load(Ordering::Relaxed),
            "allocations": self.allocations.load(Ordering::Relaxed),
            "to_callee": self.to_callee.snapshot(),
            "to_caller": self.to_caller.snapshot(),
        })
    }
}

/// Packets one allocation has accepted from each of its ends so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    pub from_caller: u64,
    pub from_callee: u64,
}

/// [`Traffic`] as the forwarding task keeps it.
#[derive(Debug, Default)]
struct Heard {
    from_caller: AtomicU64,
    from_callee: AtomicU64,
}

/// Whom one side of an allocation talks to. A side assigned one peer
/// talks only to it. A side given candidate addresses (the far end of an
/// outside call, which may be reachable at several) sends to all of them
/// until one of them answers, then latches onto that one and ignores the
/// rest: the packets are opaque, so the end-to-end handshake (pinned
/// certificates, the call's token) decides whether the latched peer is the
/// right one, never the forwarder.
#[derive(Debug, Clone, Default)]
struct Target {
    candidates: Vec<SocketAddr>,
    latched: Option<SocketAddr>,
    /// Any port at a candidate's address will do (an end behind a NAT
    /// that maps each destination to a port of its own).
    any_port: bool,
}

impl Target {
    fn fixed(peer: SocketAddr) -> Target {
        Target {
            candidates: vec![peer],
            latched: Some(peer),
            any_port: false,
        }
    }

    fn open(candidates: Vec<SocketAddr>) -> Target {
        Target {
            candidates,
            latched: None,
            any_port: false,
        }
    }

    /// `peer` is where the end was last seen; it may come from another
    /// port of the same address.
    fn host(peer: SocketAddr) -> Target {
        Target {
            candidates: vec![peer],
            latched: None,
            any_port: true,
        }
    }

    /// Whether a packet from `from` belongs to the call (latching onto it
    /// when it is the first candidate heard).
    fn accepts(&mut self, from: SocketAddr) -> bool {
        match self.latched {
            Some(peer) => peer == from,
            None if self.candidates.contains(&from)
                || (self.any_port && self.candidates.iter().any(|c| c.ip() == from.ip())) =>
            {
                self.latched = Some(from);
                true
            }
            None => false,
        }
    }

    fn destinations(&self) -> &[SocketAddr] {
        match &self.latched {
            Some(peer) => std::slice::from_ref(peer),
            None => &self.candidates,
        }
    }
}

/// One side of an allocation: a socket and whom it talks to.
struct Side {
    sock: UdpSocket,
    state: UdpSocketState,
    target: Target,
}

impl Side {
    fn bind(ip: IpAddr, target: Target) -> io::Result<Side> {
        let std_sock = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        std_sock.set_nonblocking(true)?;
        let state = UdpSocketState::new((&std_sock).into())?;
        let sock = UdpSocket::from_std(std_sock)?;
        Ok(Side {
            sock,
            state,
            target,
        })
    }
}

/// A live relay for one call; dropping it stops the forwarding.
#[derive(Debug)]
pub struct Allocation {
    /// Where the caller's end must send.
    pub caller_facing: SocketAddr,
    /// The address the callee sees packets come from.
    pub callee_facing: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    counters: Arc<Counters>,
    retarget: tokio::sync::watch::Sender<Vec<SocketAddr>>,
    heard: Arc<Heard>,
    first_from_callee: Option<tokio::sync::oneshot::Receiver<Instant>>,
}

impl Allocation {
    /// Point the callee side at new candidates (e.g. the directory's relay
    /// after a direct attempt failed); it latches afresh.
    pub fn retarget_callee(&self, candidates: Vec<SocketAddr>) {
        self.retarget.send_replace(candidates);
    }

    /// The time the first packet from the callee side was accepted and
    /// forwarded, once it has been: the forwarder sends it on a one-shot
    /// channel the moment that packet goes through (nothing on the packet
    /// path but a check of an `Option`). The receiver is handed out once
    /// (`None` after); it fails if the allocation is dropped first.
    pub fn first_callee_packet(&mut self) -> Option<tokio::sync::oneshot::Receiver<Instant>> {
        self.first_from_callee.take()
    }

    /// Packets accepted from the callee side so far.
    pub fn callee_packets(&self) -> u64 {
        self.heard.from_callee.load(Ordering::Relaxed)
    }

    /// Packets accepted from each end so far (a call's packet rate is the
    /// difference of two of these).
    pub fn traffic(&self) -> Traffic {
        Traffic {
            from_caller: self.heard.from_caller.load(Ordering::Relaxed),
            from_callee: self.callee_packets(),
        }
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.task.abort();
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Make an allocation between `caller` and `callee`, each only at that
/// address (a gateway relaying between its stations). `caller_ip` and
/// `callee_ip` are our own addresses facing each of them.
pub fn allocate_fixed(
    counters: Arc<Counters>,
    caller: SocketAddr,
    caller_ip: IpAddr,
    callee: SocketAddr,
    callee_ip: IpAddr,
) -> io::Result<Allocation> {
    start(
        counters,
        Target::fixed(caller),
        caller_ip,
        Target::fixed(callee),
        callee_ip,
    )
}

/// Make an allocation between ends on the internet last seen at `caller`
/// and `callee` (the directory's relay): each side keeps to the first port
/// its end's address uses, so an end behind a NAT that gives every
/// destination a port of its own still gets through once it has sent to
/// the relay (the caller connects; the callee opens its NAT towards it).
pub fn allocate(
    counters: Arc<Counters>,
    caller: SocketAddr,
    caller_ip: IpAddr,
    callee: SocketAddr,
    callee_ip: IpAddr,
) -> io::Result<Allocation> {
    start(
        counters,
        Target::host(caller),
        caller_ip,
        Target::host(callee),
        callee_ip,
    )
}

/// Make an allocation whose callee side does not know its peer yet: it
/// sends to every one of `callee_candidates` (none: nowhere, until
/// [`Allocation::retarget_callee`]) and latches onto the first that
/// answers.
pub fn allocate_open(
    counters: Arc<Counters>,
    caller: SocketAddr,
    caller_ip: IpAddr,
    callee_candidates: Vec<SocketAddr>,
    callee_ip: IpAddr,
) -> io::Result<Allocation> {
    start(
        counters,
        Target::fixed(caller),
        caller_ip,
        Target::open(callee_candidates),
        callee_ip,
    )
}

fn start(
    counters: Arc<Counters>,
    caller: Target,
    caller_ip: IpAddr,
    callee: Target,
    callee_ip: IpAddr,
) -> io::Result<Allocation> {
    let a = Side::bind(caller_ip, caller)?;
    let b = Side::bind(callee_ip, callee)?;
    let caller_facing = a.sock.local_addr()?;
    let callee_facing = b.sock.local_addr()?;
    let (retarget, watch) = tokio::sync::watch::channel(Vec::new());
    let heard = Arc::new(Heard::default());
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    counters.active.fetch_add(1, Ordering::Relaxed);
    counters.allocations.fetch_add(1, Ordering::Relaxed);
    let task = tokio::spawn(forward(
        a,
        b,
        counters.clone(),
        watch,
        heard.clone(),
        first_tx,
    ));
    Ok(Allocation {
        caller_facing,
        callee_facing,
        task,
        counters,
        retarget,
        heard,
        first_from_callee: Some(first_rx),
    })
}

const BUF: usize = 64 * 1024;

/// Datagrams (or GRO runs) read per system call: voice arrives at 50
/// packets a second a direction, so a small batch drains a socket.
const BATCH: usize = if BATCH_SIZE < 8 { BATCH_SIZE } else { 8 };

/// Receive buffers, one set per worker thread and shared by every
/// allocation that thread serves: `pump` never awaits while it uses them,
/// so a call costs two sockets and a task, not a batch of 64 KiB buffers.
struct Buffers {
    bufs: [Vec<u8>; BATCH],
    metas: [RecvMeta; BATCH],
}

impl Buffers {
    fn new() -> Buffers {
        Buffers {
            bufs: std::array::from_fn(|_| vec![0u8; BUF]),
            metas: [RecvMeta::default(); BATCH],
        }
    }
}

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::new(Buffers::new());
}

async fn forward(
    mut a: Side,
    mut b: Side,
    counters: Arc<Counters>,
    mut retarget: tokio::sync::watch::Receiver<Vec<SocketAddr>>,
    heard: Arc<Heard>,
    first_tx: tokio::sync::oneshot::Sender<Instant>,
) {
    enum Ready {
        A,
        B,
        Retarget,
    }
    let mut retarget_open = true;
    // Taken (and sent) when the first packet from the callee goes through.
    let mut first_tx = Some(first_tx);
    punch(&b).await;
    loop {
        let ready = tokio::select! {
            r = a.sock.readable() => r.map(|_| Ready::A),
            r = b.sock.readable() => r.map(|_| Ready::B),
            r = retarget.changed(), if retarget_open => {
                if r.is_err() {
                    retarget_open = false;
                }
                Ok(Ready::Retarget)
            }
        };
        let res = match ready {
            Ok(Ready::A) => {
                with_buffers(|bufs| pump(&mut a, &b, bufs, &counters.to_callee, &heard.from_caller))
            }
            Ok(Ready::B) => {
                let res = with_buffers(|bufs| {
                    pump(&mut b, &a, bufs, &counters.to_caller, &heard.from_callee)
                });
                if first_tx.is_some() && heard.from_callee.load(Ordering::Relaxed) > 0 {
                    if let Some(tx) = first_tx.take() {
                        // Nobody listening is fine.
                        let _ = tx.send(Instant::now());
                    }
                }
                res
            }
            Ok(Ready::Retarget) => {
                if retarget_open {
                    b.target = Target::open(retarget.borrow_and_update().clone());
                    punch(&b).await;
                }
                Ok(())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            tracing::warn!("relay stopped: {e}");
            return;
        }
    }
}

fn with_buffers(f: impl FnOnce(&mut Buffers) -> io::Result<()>) -> io::Result<()> {
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut b) => f(&mut b),
        // Not reachable (pump does not re-enter), but never panic.
        Err(_) => f(&mut Buffers::new()),
    })
}

/// A side that does not know its peer yet opens the way out through our
/// own NAT (when the gateway sits behind one): one byte to each candidate,
/// so their packets, which come next, are let in. The far end's QUIC, or
/// its forwarder's station, drops it unread.
async fn punch(side: &Side) {
    // (The directory's relay is on the internet itself: its sides wait.)
    if side.target.latched.is_none() && !side.target.any_port {
        for &to in &side.target.candidates {
            // A fresh socket is not known writable yet: wait for it (UDP
            // does not block for long). Errors only cost the help.
            let _ = side.sock.send_to(&[0], to).await;
        }
    }
}

/// Drain `from` and send everything it had to `to`'s peer, counting it in
/// `dir` and the packets `from` accepted in `heard`. The counts are added
/// once per drain, not per packet.
fn pump(
    from: &mut Side,
    to: &Side,
    b: &mut Buffers,
    dir: &Direction,
    heard: &AtomicU64,
) -> io::Result<()> {
    let mut count = Tally::default();
    let res = drain(from, to, b, &mut count);
    count.add_to(dir, heard);
    res
}

/// What one drain did, added to the shared counters at its end.
#[derive(Default)]
struct Tally {
    accepted: u64,
    packets: u64,
    bytes: u64,
    dropped: u64,
}

impl Tally {
    fn add_to(&self, dir: &Direction, heard: &AtomicU64) {
        for (counter, n) in [
            (heard, self.accepted),
            (&dir.packets, self.packets),
            (&dir.bytes, self.bytes),
            (&dir.dropped, self.dropped),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

fn drain(from: &mut Side, to: &Side, b: &mut Buffers, count: &mut Tally) -> io::Result<()> {
    loop {
        let n = {
            let mut iov = b.bufs.each_mut().map(|b| IoSliceMut::new(&mut b[..]));
            match from.sock.try_io(Interest::READABLE, || {
                from.state.recv((&from.sock).into(), &mut iov, &mut b.metas)
            }) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // ICMP errors surface as recv errors on Linux; they say the
                // far end is gone for now, not that our socket is broken.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            }
        };
        for (meta, buf) in b.metas.iter().zip(b.bufs.iter()).take(n) {
            if !from.target.accepts(meta.addr) {
                count.dropped += 1;
                continue;
            }
            let segments = meta.len.div_ceil(meta.stride.max(1)) as u64;
            count.accepted += segments;
            let dests = to.target.destinations();
            if dests.is_empty() {
                count.dropped += segments;
            }
            for &destination in dests {
                if send_run(
                    to,
                    destination,
                    &buf[..meta.len],
                    meta.stride,
                    segments as usize,
                ) {
                    count.packets += segments;
                    count.bytes += meta.len as u64;
                } else {
                    count.dropped += segments;
                }
            }
        }
    }
}

/// Send one received run (a datagram, or `segments` GRO segments of
/// `stride` bytes) to `destination`, with GSO where the socket has it.
fn send_run(
    to: &Side,
    destination: SocketAddr,
    run: &[u8],
    stride: usize,
    segments: usize,
) -> bool {
    if segments > 1 && to.state.max_gso_segments() < segments {
        // No GSO here: send the segments one by one.
        return run.chunks(stride).all(|seg| {
            send(
                to,
                &Transmit {
                    destination,
                    ecn: None,
                    contents: seg,
                    segment_size: None,
                    src_ip: None,
                },
            )
        });
    }
    send(
        to,
        &Transmit {
            destination,
            ecn: None,
            contents: run,
            segment_size: (segments > 1).then_some(stride),
            src_ip: None,
        },
    )
}

/// Send without waiting: a full socket buffer drops, as UDP would.
fn send(to: &Side, t: &Transmit<'_>) -> bool {
    to.sock
        .try_io(Interest::WRITABLE, || {
            to.state.try_send((&to.sock).into(), t)
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn forwards_both_ways_and_only_from_the_assigned_peers() {
        let caller = UdpSocket::bind((LO, 0)).await.expect("bind");
        let callee = UdpSocket::bind((LO, 0)).await.expect("bind");
        let stranger = UdpSocket::bind((LO, 0)).await.expect("bind");
        let counters = Arc::new(Counters::default());
        let alloc = allocate_fixed(
            counters.clone(),
            caller.local_addr().expect("addr"),
            LO,
            callee.local_addr().expect("addr"),
            LO,
        )
        .expect("allocate");

        let mut buf = [0u8; 2048];
        for i in 0..50u8 {
            caller
                .send_to(&[i; 160], alloc.caller_facing)
                .await
                .expect("send");
            let got = recv(&callee, &mut buf).await;
            assert_eq!((got, buf[0]), (Some((160, alloc.callee_facing)), i));
            callee
                .send_to(&[i; 90], alloc.callee_facing)
                .await
                .expect("send");
            assert_eq!(
                recv(&caller, &mut buf).await,
                Some((90, alloc.caller_facing))
            );
        }
        // A stranger cannot inject media into the call.
        stranger
            .send_to(b"inject", alloc.caller_facing)
            .await
            .expect("send");
        stranger
            .send_to(b"inject", alloc.callee_facing)
            .await
            .expect("send");
        assert!(silent(&callee, &mut buf).await);
        assert_eq!(counters.packets(), 100);
        assert_eq!(counters.bytes(), 50 * 250);
        assert_eq!(counters.dropped(), 2);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (up, down) = (&counters.to_callee, &counters.to_caller);
        assert_eq!(
            (load(&up.packets), load(&up.bytes), load(&up.dropped)),
            (50, 50 * 160, 1)
        );
        assert_eq!(
            (load(&down.packets), load(&down.bytes), load(&down.dropped)),
            (50, 50 * 90, 1)
        );
        assert_eq!(
            alloc.traffic(),
            Traffic {
                from_caller: 50,
                from_callee: 50
            }
        );
        assert_eq!(counters.active.load(Ordering::Relaxed), 1);
        drop(alloc);
        assert_eq!(counters.active.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn an_internet_side_keeps_to_the_first_port_its_end_uses() {
        // The callee was seen at one port; behind its NAT it now sends from
        // another. The side takes it, and then only it.
        let caller = UdpSocket::bind((LO, 0)).await.expect("bind");
        let seen = UdpSocket::bind((LO, 0)).await.expect("bind");
        let callee = UdpSocket::bind((LO, 0)).await.expect("bind");
        let late = UdpSocket::bind((LO, 0)).await.expect("bind");
        let counters = Arc::new(Counters::default());
        let alloc = allocate(
            counters.clone(),
            caller.local_addr().expect("addr"),
            LO,
            seen.local_addr().expect("addr"),
            LO,
        )
        .expect("allocate");
        let mut buf = [0u8; 2048];
        // Before the callee speaks, the caller's packets go where it was seen.
        caller
            .send_to(b"one", alloc.caller_facing)
            .await
            .expect("send");
        assert_eq!(recv(&seen, &mut buf).await.map(|r| r.0), Some(3));
        // It speaks from its new port: the side latches onto it.
        callee
            .send_to(b"punch", alloc.callee_facing)
            .await
            .expect("send");
        assert_eq!(recv(&caller, &mut buf).await.map(|r| r.0), Some(5));
        caller
            .send_to(b"two!", alloc.caller_facing)
            .await
            .expect("send");
        assert_eq!(recv(&callee, &mut buf).await.map(|r| r.0), Some(4));
        // Another port of the same address is not the callee any more.
        late.send_to(b"late", alloc.callee_facing)
            .await
            .expect("send");
        assert!(silent(&caller, &mut buf).await);
        assert_eq!(counters.dropped(), 1);
    }

    /// The next datagram and its sender, if one comes within 2 s.
    async fn recv(sock: &UdpSocket, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        tokio::time::timeout(Duration::from_secs(2), sock.recv_from(buf))
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Nothing arrives within 200 ms.
    async fn silent(sock: &UdpSocket, buf: &mut [u8]) -> bool {
        tokio::time::timeout(Duration::from_millis(200), sock.recv_from(buf))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn an_open_side_latches_onto_the_first_candidate_that_answers() {
        let caller = UdpSocket::bind((LO, 0)).await.expect("bind");
        let decoy = UdpSocket::bind((LO, 0)).await.expect("bind");
        let far = UdpSocket::bind((LO, 0)).await.expect("bind");
        let relay = UdpSocket::bind((LO, 0)).await.expect("bind");
        let addr = |s: &UdpSocket| s.local_addr().expect("addr");
        let counters = Arc::new(Counters::default());
        let alloc = allocate_open(
            counters.clone(),
            addr(&caller),
            LO,
            vec![addr(&decoy), addr(&far)],
            LO,
        )
        .expect("allocate");
        let mut buf = [0u8; 2048];
        // At once, one byte to each candidate opens our NAT (if any).
        assert_eq!(recv(&decoy, &mut buf).await, Some((1, alloc.callee_facing)));
        assert_eq!(recv(&far, &mut buf).await, Some((1, alloc.callee_facing)));
        // Before anyone answers, the caller's packets go to every candidate.
        caller
            .send_to(b"hello", alloc.caller_facing)
            .await
            .expect("send");
        assert_eq!(recv(&decoy, &mut buf).await, Some((5, alloc.callee_facing)));
        assert_eq!(recv(&far, &mut buf).await, Some((5, alloc.callee_facing)));
        assert_eq!(alloc.callee_packets(), 0);
        // The far end answers: the side latches onto it.
        far.send_to(b"answer", alloc.callee_facing)
            .await
            .expect("send");
        assert_eq!(
            recv(&caller, &mut buf).await,
            Some((6, alloc.caller_facing))
        );
        assert_eq!(alloc.callee_packets(), 1);
        caller
            .send_to(b"media", alloc.caller_facing)
            .await
            .expect("send");
        assert_eq!(recv(&far, &mut buf).await, Some((5, alloc.callee_facing)));
        assert!(silent(&decoy, &mut buf).await);
        // The other candidate can no longer inject.
        decoy
            .send_to(b"inject", alloc.callee_facing)
            .await
            .expect("send");
        assert!(silent(&caller, &mut buf).await);
        // Retargeted (say, to the directory's relay), it starts afresh.
        alloc.retarget_callee(vec![addr(&relay)]);
        assert_eq!(recv(&relay, &mut buf).await, Some((1, alloc.callee_facing)));
        caller
            .send_to(b"again", alloc.caller_facing)
            .await
            .expect("send");
        assert_eq!(recv(&relay, &mut buf).await, Some((5, alloc.callee_facing)));
        assert!(silent(&far, &mut buf).await);
        relay
            .send_to(b"back", alloc.callee_facing)
            .await
            .expect("send");
        assert_eq!(
            recv(&caller, &mut buf).await,
            Some((4, alloc.caller_facing))
        );
        assert_eq!(alloc.callee_packets(), 2);
    }

    #[tokio::test]
    async fn an_open_side_without_candidates_drops() {
        let caller = UdpSocket::bind((LO, 0)).await.expect("bind");
        let counters = Arc::new(Counters::default());
        let alloc = allocate_open(
            counters.clone(),
            caller.local_addr().expect("addr"),
            LO,
            Vec::new(),
            LO,
        )
        .expect("allocate");
        caller
            .send_to(b"early", alloc.caller_facing)
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(counters.dropped(), 1);
        assert_eq!(counters.packets(), 0);
    }

    #[tokio::test]
    async fn the_first_packet_from_the_callee_is_announced_once_with_its_time() {
        let caller = UdpSocket::bind((LO, 0)).await.expect("bind");
        let callee = UdpSocket::bind((LO, 0)).await.expect("bind");
        let addr = |s: &UdpSocket| s.local_addr().expect("addr");
        let counters = Arc::new(Counters::default());
        let mut alloc = allocate(counters, addr(&caller), LO, addr(&callee), LO).expect("allocate");
        let mut first = alloc.first_callee_packet().expect("a receiver");
        assert!(alloc.first_callee_packet().is_none(), "handed out once");
        let mut buf = [0u8; 2048];
        // The caller's packets do not count.
        caller
            .send_to(b"hello", alloc.caller_facing)
            .await
            .expect("send");
        assert_eq!(
            recv(&callee, &mut buf).await,
            Some((5, alloc.callee_facing))
        );
        assert!(first.try_recv().is_err(), "nothing from the callee yet");
        let before = Instant::now();
        callee
            .send_to(b"answer", alloc.callee_facing)
            .await
            .expect("send");
        assert_eq!(
            recv(&caller, &mut buf).await,
            Some((6, alloc.caller_facing))
        );
        let at = tokio::time::timeout(Duration::from_secs(2), first)
            .await
            .expect("announced")
            .expect("sent");
        assert!(at >= before && at <= Instant::now());
    }

    #[tokio::test]
    async fn a_released_allocation_announces_nothing() {
        let caller = UdpSocket::bind((LO, 0)).await.expect("bind");
        let callee = UdpSocket::bind((LO, 0)).await.expect("bind");
        let addr = |s: &UdpSocket| s.local_addr().expect("addr");
        let counters = Arc::new(Counters::default());
        let mut alloc = allocate(counters, addr(&caller), LO, addr(&callee), LO).expect("allocate");
        let first = alloc.first_callee_packet().expect("a receiver");
        drop(alloc);
        let res = tokio::time::timeout(Duration::from_secs(2), first)
            .await
            .expect("resolved when the forwarder stops");
        assert!(res.is_err());
    }
}
