//! RTP as it comes off the network: media datagrams (flow id varint, then
//! RTP with any CSRCs, header extension and padding a bridge might send),
//! into the playout buffer the receiving end keeps by RTP sequence number.
//!
//! Raw datagrams must decode without panicking, and what decodes must
//! re-encode and decode to the same thing. Datagrams built here in the
//! long form (non-minimal varints, CSRCs, an extension, padding) must
//! decode to exactly the fields and payload they were built from. The
//! jitter buffer, fed whatever decoded and popped in between, must stay
//! within its cap and account for every packet it was given: each one is
//! a duplicate, late, played, dropped or still held.
#![no_main]

use keyline_media::JitterBuffer;
use keyline_proto::media::{decode_datagram, encode_datagram, RtpHeader, VARINT_MAX};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Built {
    flow: u64,
    /// 0..=3: a varint of 1, 2, 4 or 8 bytes (the shortest that fits, or
    /// longer).
    varint_len: u8,
    marker: bool,
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    csrcs: Vec<u32>,
    extension: Option<(u16, Vec<u32>)>,
    padding: u8,
    payload: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Raw(Vec<u8>),
    Built(Built),
    Pop(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    target_depth: u8,
    max_frames: u8,
    steps: Vec<Step>,
}

/// The flow id as a QUIC varint of at least `len_code`'s length.
fn varint(v: u64, len_code: u8, out: &mut Vec<u8>) {
    let shortest = match v {
        0..=0x3F => 0,
        0x40..=0x3FFF => 1,
        0x4000..=0x3FFF_FFFF => 2,
        _ => 3,
    };
    let code = (len_code % 4).max(shortest);
    let len = 1usize << code;
    let bytes = v.to_be_bytes();
    let mut enc = bytes[8 - len..].to_vec();
    enc[0] |= code << 6;
    out.extend_from_slice(&enc);
}

fn build(b: &Built) -> (u64, RtpHeader, Vec<u8>, Vec<u8>) {
    let flow = b.flow & VARINT_MAX;
    let header = RtpHeader {
        payload_type: b.payload_type & 0x7F,
        marker: b.marker,
        sequence: b.sequence,
        timestamp: b.timestamp,
        ssrc: b.ssrc,
    };
    let csrcs = &b.csrcs[..b.csrcs.len().min(15)];
    let mut out = Vec::new();
    varint(flow, b.varint_len, &mut out);
    let mut first = 2u8 << 6 | csrcs.len() as u8;
    if b.padding > 0 {
        first |= 0x20;
    }
    if b.extension.is_some() {
        first |= 0x10;
    }
    out.push(first);
    out.push(u8::from(header.marker) << 7 | header.payload_type);
    out.extend_from_slice(&header.sequence.to_be_bytes());
    out.extend_from_slice(&header.timestamp.to_be_bytes());
    out.extend_from_slice(&header.ssrc.to_be_bytes());
    for c in csrcs {
        out.extend_from_slice(&c.to_be_bytes());
    }
    if let Some((profile, words)) = &b.extension {
        let words = &words[..words.len().min(64)];
        out.extend_from_slice(&profile.to_be_bytes());
        out.extend_from_slice(&(words.len() as u16).to_be_bytes());
        for w in words {
            out.extend_from_slice(&w.to_be_bytes());
        }
    }
    out.extend_from_slice(&b.payload);
    if b.padding > 0 {
        out.extend(std::iter::repeat_n(0u8, usize::from(b.padding) - 1));
        out.push(b.padding);
    }
    (flow, header, b.payload.clone(), out)
}

fn check_jitter(jb: &JitterBuffer) {
    assert!(
        jb.len() <= jb.max_frames(),
        "the buffer holds more than its cap"
    );
    let s = jb.stats();
    assert_eq!(
        s.received - s.duplicate - s.late,
        s.played + s.dropped + jb.len() as u64,
        "a packet went missing in the jitter buffer: {s:?}, {} held",
        jb.len()
    );
}

fuzz_target!(|input: Input| {
    let mut jb = JitterBuffer::with_max_frames(
        usize::from(input.target_depth % 16),
        usize::from(input.max_frames),
    );
    let mut out = Vec::new();
    for step in input.steps.iter().take(500) {
        match step {
            Step::Raw(bytes) => {
                let Ok(d) = decode_datagram(bytes) else {
                    continue;
                };
                if encode_datagram(d.flow, &d.header, d.payload, &mut out).is_ok() {
                    assert_eq!(
                        decode_datagram(&out),
                        Ok(d),
                        "re-encoded datagram decodes differently"
                    );
                }
                jb.push(d.header.sequence, d.payload.to_vec());
            }
            Step::Built(b) => {
                let (flow, header, payload, wire) = build(b);
                let d = decode_datagram(&wire).expect("a well-formed datagram decodes");
                assert_eq!(d.flow, flow, "flow id");
                assert_eq!(d.header, header, "RTP header");
                assert_eq!(d.payload, payload.as_slice(), "payload");
                jb.push(header.sequence, payload);
            }
            Step::Pop(n) => {
                for _ in 0..=(n % 8) {
                    let _ = jb.pop();
                    check_jitter(&jb);
                }
            }
        }
        check_jitter(&jb);
    }
});
