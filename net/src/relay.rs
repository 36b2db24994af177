//! The media forwarder: "forward, don't terminate" (DESIGN §3.1).
//!
//! An [`Allocation`] is a pair of UDP sockets for one call. The caller's end
//! sends its QUIC packets to the caller-facing socket; they leave through
//! the callee-facing socket towards the callee, and the replies come back
//! the same way. Packets are moved as opaque bytes — the forwarder never
//! holds a key and cannot read the media. Each socket accepts packets from
//! one address only (the end the gateway assigned to that side), so a
//! stranger cannot inject into or hijack a call. I/O is batched: quinn-udp
//! reads with `recvmmsg` and GRO and writes coalesced runs with GSO.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Totals across every allocation, for `status` and benchmarks.
#[derive(Debug, Default)]
pub struct Counters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub dropped: AtomicU64,
    pub active: AtomicU64,
    pub allocations: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "packets": self.packets.load(Ordering::Relaxed),
            "bytes": self.bytes.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "active": self.active.load(Ordering::Relaxed),
            "allocations": self.allocations.load(Ordering::Relaxed),
        })
    }
}

/// One side of an allocation: a socket and the only peer it talks to.
struct Side {
    sock: UdpSocket,
    state: UdpSocketState,
    peer: SocketAddr,
}

impl Side {
    fn bind(ip: IpAddr, peer: SocketAddr) -> io::Result<Side> {
        let std_sock = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        std_sock.set_nonblocking(true)?;
        let state = UdpSocketState::new((&std_sock).into())?;
        let sock = UdpSocket::from_std(std_sock)?;
        Ok(Side { sock, state, peer })
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
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.task.abort();
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Make an allocation between `caller` and `callee`. `caller_ip` and
/// `callee_ip` are the gateway's own addresses facing each of them.
pub fn allocate(
    counters: Arc<Counters>,
    caller: SocketAddr,
    caller_ip: IpAddr,
    callee: SocketAddr,
    callee_ip: IpAddr,
) -> io::Result<Allocation> {
    let a = Side::bind(caller_ip, caller)?;
    let b = Side::bind(callee_ip, callee)?;
    let caller_facing = a.sock.local_addr()?;
    let callee_facing = b.sock.local_addr()?;
    counters.active.fetch_add(1, Ordering::Relaxed);
    counters.allocations.fetch_add(1, Ordering::Relaxed);
    let task = tokio::spawn(forward(a, b, counters.clone()));
    Ok(Allocation {
        caller_facing,
        callee_facing,
        task,
        counters,
    })
}

const BUF: usize = 64 * 1024;

/// Receive buffers, one set per worker thread and shared by every
/// allocation that thread serves: `pump` never awaits while it uses them,
/// so a call costs two sockets and a task, not a batch of 64 KiB buffers.
struct Buffers {
    bufs: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
}

/// Datagrams (or GRO runs) read per system call: voice arrives at 50
/// packets a second a direction, so a small batch drains a socket.
const BATCH: usize = if BATCH_SIZE < 8 { BATCH_SIZE } else { 8 };

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::new(Buffers {
        bufs: vec![vec![0u8; BUF]; BATCH],
        metas: vec![RecvMeta::default(); BATCH],
    });
}

async fn forward(a: Side, b: Side, counters: Arc<Counters>) {
    loop {
        let res = tokio::select! {
            r = a.sock.readable() => r.map(|_| (&a, &b)),
            r = b.sock.readable() => r.map(|_| (&b, &a)),
        };
        let Ok((from, to)) = res else {
            return;
        };
        let res = BUFFERS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut b) => {
                let Buffers { bufs, metas } = &mut *b;
                pump(from, to, bufs, metas, &counters)
            }
            // Not reachable (pump does not re-enter), but never panic.
            Err(_) => {
                let mut bufs = vec![vec![0u8; BUF]; BATCH];
                let mut metas = vec![RecvMeta::default(); BATCH];
                pump(from, to, &mut bufs, &mut metas, &counters)
            }
        });
        if let Err(e) = res {
            tracing::warn!("relay stopped: {e}");
            return;
        }
    }
}

/// Drain `from` and send everything it had to `to`'s peer.
fn pump(
    from: &Side,
    to: &Side,
    bufs: &mut [Vec<u8>],
    metas: &mut [RecvMeta],
    counters: &Counters,
) -> io::Result<()> {
    loop {
        let n = {
            let mut iov: Vec<IoSliceMut<'_>> = bufs
                .iter_mut()
                .map(|b| IoSliceMut::new(&mut b[..]))
                .collect();
            match from.sock.try_io(Interest::READABLE, || {
                from.state.recv((&from.sock).into(), &mut iov, metas)
            }) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // ICMP errors surface as recv errors on Linux; they say the
                // far end is gone for now, not that our socket is broken.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            }
        };
        for (meta, buf) in metas.iter().zip(bufs.iter()).take(n) {
            if meta.addr != from.peer {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let segments = meta.len.div_ceil(meta.stride.max(1));
            let t = Transmit {
                destination: to.peer,
                ecn: None,
                contents: &buf[..meta.len],
                segment_size: (segments > 1).then_some(meta.stride),
                src_ip: None,
            };
            let sent = if segments > 1 && to.state.max_gso_segments() < segments {
                // No GSO here: send the segments one by one.
                buf[..meta.len].chunks(meta.stride).all(|seg| {
                    let one = Transmit {
                        destination: to.peer,
                        ecn: None,
                        contents: seg,
                        segment_size: None,
                        src_ip: None,
                    };
                    send(to, &one)
                })
            } else {
                send(to, &t)
            };
            if sent {
                counters
                    .packets
                    .fetch_add(segments as u64, Ordering::Relaxed);
                counters.bytes.fetch_add(meta.len as u64, Ordering::Relaxed);
            } else {
                counters
                    .dropped
                    .fetch_add(segments as u64, Ordering::Relaxed);
            }
        }
    }
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
        let alloc = allocate(
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
            let (n, from) =
                tokio::time::timeout(Duration::from_secs(2), callee.recv_from(&mut buf))
                    .await
                    .expect("timely")
                    .expect("recv");
            assert_eq!((n, from, buf[0]), (160, alloc.callee_facing, i));
            callee.send_to(&[i; 90], from).await.expect("send");
            let (n, from) =
                tokio::time::timeout(Duration::from_secs(2), caller.recv_from(&mut buf))
                    .await
                    .expect("timely")
                    .expect("recv");
            assert_eq!((n, from), (90, alloc.caller_facing));
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
        assert!(
            tokio::time::timeout(Duration::from_millis(200), callee.recv_from(&mut buf))
                .await
                .is_err()
        );
        assert_eq!(counters.packets.load(Ordering::Relaxed), 100);
        assert_eq!(counters.bytes.load(Ordering::Relaxed), 50 * 250);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(counters.active.load(Ordering::Relaxed), 1);
        drop(alloc);
        assert_eq!(counters.active.load(Ordering::Relaxed), 0);
    }
}
