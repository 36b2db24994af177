//! Talking: both ends of a call send a voice-sized media datagram (a flow
//! id, an RTP header and 120 bytes of payload, what 48 kbit/s Opus sends)
//! every 20 ms for a while, and count what arrives from the other end.
//!
//! - Through the directory's relay ([`talk_udp`]): the relay moves opaque
//!   UDP payloads, so the ends are two plain UDP sockets, as the QUIC
//!   packets of real terminals would be to it. Each end first sends one
//!   byte to its side of the relay (the side latches onto the first
//!   address it hears), as a terminal opens its NAT.
//! - Between stations through the gateway's forwarder ([`talk_quic`]):
//!   QUIC datagrams on the media connection the stations set up as agents
//!   do (`MediaHello`, `MediaOk`).

use std::net::SocketAddr;
use std::time::Duration;

use keyline_proto::media::{decode_datagram, encode_datagram, RtpHeader, OPUS_PAYLOAD_TYPE};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::tally::Fail;

/// Time between two datagrams of one end.
pub(crate) const FRAME: Duration = Duration::from_millis(20);
/// Payload bytes per datagram.
const PAYLOAD: usize = 120;
/// How long the ends keep listening after the last datagram.
const TAIL: Duration = Duration::from_millis(200);
/// Share of the other end's datagrams that must arrive.
const MIN_DELIVERED: f64 = 0.9;

/// What one call's talk sent and received (both ends together).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Talked {
    pub sent: u64,
    pub received: u64,
}

/// One end's datagram number `seq` of flow `flow`.
fn datagram(flow: u64, ssrc: u32, seq: u16, out: &mut Vec<u8>) {
    let h = RtpHeader {
        payload_type: OPUS_PAYLOAD_TYPE,
        marker: seq == 0,
        sequence: seq,
        timestamp: u32::from(seq).wrapping_mul(960),
        ssrc,
    };
    // The payload type is below 128 and the flow a call id: cannot fail.
    let _ = encode_datagram(flow, &h, &[0x5a; PAYLOAD], out);
}

/// Whether `buf` is a datagram of `flow` from the end `ssrc`.
fn counts(buf: &[u8], flow: u64, ssrc: u32) -> bool {
    decode_datagram(buf).is_ok_and(|d| d.flow == flow && d.header.ssrc == ssrc)
}

/// Judge a talk: each end must have heard most of the other's datagrams.
fn judge(sent: u64, got_a: u64, got_b: u64) -> Result<Talked, Fail> {
    let need = (sent as f64 * MIN_DELIVERED).floor() as u64;
    if got_a < need || got_b < need {
        return Err(Fail::new(
            "media: datagrams lost",
            format!(
                "each end sent {sent}; the caller received {got_a}, the callee {got_b} (at least {need} each)"
            ),
        ));
    }
    Ok(Talked {
        sent: 2 * sent,
        received: got_a + got_b,
    })
}

fn io_fail(what: &str, e: impl std::fmt::Display) -> Fail {
    Fail::new("media: socket error", format!("{what}: {e}"))
}

/// Talk for `talk` through the directory's relay: the caller's end sends
/// to `caller_relay`, the callee's to `callee_relay`.
pub(crate) async fn talk_udp(
    flow: u64,
    caller_relay: SocketAddr,
    callee_relay: SocketAddr,
    talk: Duration,
) -> Result<Talked, Fail> {
    let bind = SocketAddr::from(([127, 0, 0, 1], 0));
    let a = UdpSocket::bind(bind)
        .await
        .map_err(|e| io_fail("binding", e))?;
    let b = UdpSocket::bind(bind)
        .await
        .map_err(|e| io_fail("binding", e))?;
    // Each side of the relay latches onto the first address it hears.
    b.send_to(&[0], callee_relay)
        .await
        .map_err(|e| io_fail("opening the callee's side", e))?;
    a.send_to(&[0], caller_relay)
        .await
        .map_err(|e| io_fail("opening the caller's side", e))?;
    tokio::time::sleep(FRAME).await;
    let (mut bufa, mut bufb) = (vec![0u8; 2048], vec![0u8; 2048]);
    let mut out = Vec::with_capacity(256);
    let (mut sent, mut got_a, mut got_b) = (0u64, 0u64, 0u64);
    let frames = (talk.as_millis() / FRAME.as_millis()).max(1) as u64;
    let mut tick = tokio::time::interval(FRAME);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop: Option<Instant> = None;
    loop {
        let sending = sent < frames;
        let until = stop.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = tick.tick(), if sending => {
                let seq = sent as u16;
                datagram(flow, 1, seq, &mut out);
                a.send_to(&out, caller_relay).await.map_err(|e| io_fail("sending", e))?;
                datagram(flow, 2, seq, &mut out);
                b.send_to(&out, callee_relay).await.map_err(|e| io_fail("sending", e))?;
                sent += 1;
                if sent == frames {
                    stop = Some(Instant::now() + TAIL);
                }
            }
            r = a.recv_from(&mut bufa) => {
                if let Ok((n, _)) = r {
                    got_a += u64::from(counts(&bufa[..n], flow, 2));
                }
            }
            r = b.recv_from(&mut bufb) => {
                if let Ok((n, _)) = r {
                    got_b += u64::from(counts(&bufb[..n], flow, 1));
                }
            }
            _ = tokio::time::sleep_until(until), if stop.is_some() => break,
        }
    }
    judge(sent, got_a, got_b)
}

/// Talk for `talk` on two ends of one QUIC media connection: `a` the
/// caller's, `b` the callee's.
pub(crate) async fn talk_quic(
    flow: u64,
    a: &quinn::Connection,
    b: &quinn::Connection,
    talk: Duration,
) -> Result<Talked, Fail> {
    let mut out = Vec::with_capacity(256);
    let (mut sent, mut got_a, mut got_b) = (0u64, 0u64, 0u64);
    let frames = (talk.as_millis() / FRAME.as_millis()).max(1) as u64;
    let mut tick = tokio::time::interval(FRAME);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop: Option<Instant> = None;
    let send = |c: &quinn::Connection, d: &[u8]| {
        c.send_datagram(bytes::Bytes::copy_from_slice(d))
            .map_err(|e| Fail::new("media: datagram refused", e.to_string()))
    };
    loop {
        let sending = sent < frames;
        let until = stop.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = tick.tick(), if sending => {
                let seq = sent as u16;
                datagram(flow, 1, seq, &mut out);
                send(a, &out)?;
                datagram(flow, 2, seq, &mut out);
                send(b, &out)?;
                sent += 1;
                if sent == frames {
                    stop = Some(Instant::now() + TAIL);
                }
            }
            r = a.read_datagram() => match r {
                Ok(d) => got_a += u64::from(counts(&d, flow, 2)),
                Err(e) => return Err(Fail::new("media: connection lost", format!("caller's end: {e}"))),
            },
            r = b.read_datagram() => match r {
                Ok(d) => got_b += u64::from(counts(&d, flow, 1)),
                Err(e) => return Err(Fail::new("media: connection lost", format!("callee's end: {e}"))),
            },
            _ = tokio::time::sleep_until(until), if stop.is_some() => break,
        }
    }
    judge(sent, got_a, got_b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn datagrams_count_only_for_their_flow_and_end() {
        let mut out = Vec::new();
        datagram(77, 1, 5, &mut out);
        assert!(counts(&out, 77, 1));
        assert!(!counts(&out, 77, 2));
        assert!(!counts(&out, 78, 1));
        assert!(!counts(&[0], 77, 1));
    }

    #[test]
    fn a_talk_needs_most_datagrams_both_ways() {
        assert!(judge(50, 50, 45).is_ok());
        let f = judge(50, 50, 44).unwrap_err();
        assert_eq!(f.reason, "media: datagrams lost");
        assert_eq!(
            judge(50, 49, 48).map(|t| (t.sent, t.received)).ok(),
            Some((100, 97))
        );
    }

    #[tokio::test]
    async fn two_ends_talk_through_a_relay() {
        let counters = std::sync::Arc::new(keyline_net::relay::Counters::default());
        let lo = std::net::IpAddr::from([127, 0, 0, 1]);
        // Where each end was last seen (the relay takes any port of it);
        // a live socket, so that an opening byte sent there is taken.
        let seen = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let host = seen.local_addr().unwrap();
        let alloc = keyline_net::relay::allocate(counters, host, lo, host, lo).unwrap();
        let t = talk_udp(
            3,
            alloc.caller_facing,
            alloc.callee_facing,
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        assert_eq!(t.sent, 20);
        assert!(t.received >= 18, "{t:?}");
    }
}
