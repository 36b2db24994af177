//! VP8 video as it comes off the network: RTP payloads (RFC 7741
//! descriptor, then VP8 data) in any order, repeated, cut short or made
//! up, into the frame assembler, and what it gives out into the real VP8
//! decoder (libvpx).
//!
//! Nothing may panic. The assembler must stay within its bounds (frames
//! no larger than `MAX_FRAME_BYTES`) and count no more refusals than
//! packets. While only whole frames cut here are fed, frames come out in
//! timestamp order and byte for byte as they went in.
#![no_main]

use std::time::{Duration, Instant};

use keyline_media::vp8::Vp8Decoder;
use keyline_proto::vp8rtp::{packetize, parse_descriptor, Assembler, Output, MAX_FRAME_BYTES};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Step {
    /// A packet as it came: sequence, timestamp, marker, payload.
    Raw(u16, u32, bool, Vec<u8>),
    /// A frame cut into packets of about `max` bytes, fed in order.
    Whole { key: bool, data: Vec<u8>, max: u8 },
    /// Time passes.
    Wait(u8),
}

fuzz_target!(|steps: Vec<Step>| {
    let t0 = Instant::now();
    let mut now = t0;
    let mut asm = Assembler::new();
    let mut dec = Vp8Decoder::new(1).expect("a decoder");
    let (mut seq, mut ts) = (0u16, 0u32);
    let mut last_ts: Option<u32> = None;
    let mut raw_seen = false;
    for step in steps.iter().take(300) {
        let mut expect = None;
        match step {
            Step::Raw(s, t, m, p) => {
                let _ = parse_descriptor(p);
                asm.handle_packet(now, *s, *t, *m, p);
                raw_seen = true;
            }
            Step::Whole { key, data, max } => {
                let mut frame = data.clone();
                if frame.is_empty() {
                    frame.push(0);
                }
                frame[0] = (frame[0] & !1) | u8::from(!key);
                ts = ts.wrapping_add(3000).max(1);
                let packets = packetize(&frame, seq, usize::from(*max).max(8));
                let n = packets.len();
                for (i, p) in packets.iter().enumerate() {
                    asm.handle_packet(now, seq, ts, i + 1 == n, p);
                    seq = seq.wrapping_add(1);
                }
                expect = Some((ts, frame));
            }
            Step::Wait(ms) => {
                now += Duration::from_millis(u64::from(*ms) * 4);
                asm.handle_timeout(now);
            }
        }
        while let Some(o) = asm.poll_output() {
            if let Output::Frame(f) = o {
                assert!(f.data.len() <= MAX_FRAME_BYTES, "frame larger than the cap");
                if let (Some(prev), false) = (last_ts, raw_seen) {
                    assert!(
                        f.timestamp.wrapping_sub(prev) as i32 > 0,
                        "frames out of order: {prev} then {}",
                        f.timestamp
                    );
                }
                last_ts = Some(f.timestamp);
                if let (Some((t, data)), false) = (&expect, raw_seen) {
                    if f.timestamp == *t {
                        assert_eq!(&f.data, data, "a whole frame came back changed");
                    }
                }
                let _ = dec.decode(&f.data);
            }
        }
        let s = asm.stats();
        assert!(s.duplicate + s.malformed <= s.packets, "{s:?}");
    }
});
