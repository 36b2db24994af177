//! VP8 in RTP (RFC 7741): cutting a compressed frame into packets, and
//! putting frames back together from packets that may come late, twice,
//! out of order or not at all.
//!
//! Every packet starts with the payload descriptor this side always
//! writes in its long form (the X and I bits set, a 15-bit picture id):
//!
//! ```text
//!  0 1 2 3 4 5 6 7
//! +-+-+-+-+-+-+-+-+
//! |X|R|N|S|R| PID |   S: first packet of the frame, PID 0
//! +-+-+-+-+-+-+-+-+
//! |I|L|T|K| RSV   |   I: a picture id follows
//! +-+-+-+-+-+-+-+-+
//! |M| PictureID   |   M: 15-bit picture id
//! +-+-+-+-+-+-+-+-+
//! |   PictureID   |
//! +-+-+-+-+-+-+-+-+
//! ```
//!
//! The reader accepts every form of the descriptor (no X byte, a 7-bit
//! picture id, TL0PICIDX, TID/KEYIDX). The RTP marker bit ends a frame;
//! the RTP timestamp (90 kHz) is the picture's.
//!
//! [`Assembler`] is sans-IO: packets and time go in, whole frames, losses
//! and key-frame requests come out. It holds at most [`MAX_PENDING`]
//! unfinished frames of at most [`MAX_FRAME_BYTES`] each; a frame that is
//! still missing packets [`WAIT_FOR_MISSING`] after a later frame is
//! complete is given up. After a loss, frames are dropped until a key
//! frame comes (a decoder fed a frame whose reference is missing shows
//! garbage), and a key frame is asked for at most every
//! [`KEY_REQUEST_EVERY`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// RTP payload type used for VP8 (dynamic range).
pub const VP8_PAYLOAD_TYPE: u8 = 96;
/// Largest frame put back together.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Unfinished frames held at once.
pub const MAX_PENDING: usize = 8;
/// How long an unfinished frame waits for its missing packets once a
/// later frame is complete.
pub const WAIT_FOR_MISSING: Duration = Duration::from_millis(60);
/// Key frames are asked for no more often than this.
pub const KEY_REQUEST_EVERY: Duration = Duration::from_millis(300);

/// Length of the descriptor this side writes.
pub const DESCRIPTOR_LEN: usize = 4;

/// Why a VP8 RTP payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Vp8RtpError {
    #[error("VP8 payload truncated in its descriptor")]
    Truncated,
    #[error("VP8 payload with a descriptor and no data")]
    Empty,
}

/// The payload descriptor's fields that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// First packet of a partition.
    pub start: bool,
    /// Partition index.
    pub partition: u8,
    /// Picture id, if the sender sent one (7 or 15 bits).
    pub picture_id: Option<u16>,
    /// Length of the descriptor in bytes.
    pub len: usize,
}

/// Read the descriptor at the front of a VP8 payload.
pub fn parse_descriptor(p: &[u8]) -> Result<Descriptor, Vp8RtpError> {
    let b0 = *p.first().ok_or(Vp8RtpError::Truncated)?;
    let mut at = 1;
    let mut picture_id = None;
    if b0 & 0x80 != 0 {
        let x = *p.get(at).ok_or(Vp8RtpError::Truncated)?;
        at += 1;
        if x & 0x80 != 0 {
            let m = *p.get(at).ok_or(Vp8RtpError::Truncated)?;
            if m & 0x80 != 0 {
                let lo = *p.get(at + 1).ok_or(Vp8RtpError::Truncated)?;
                picture_id = Some((u16::from(m & 0x7f) << 8) | u16::from(lo));
                at += 2;
            } else {
                picture_id = Some(u16::from(m));
                at += 1;
            }
        }
        if x & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            at += 1; // TID/Y/KEYIDX
        }
        if at > p.len() {
            return Err(Vp8RtpError::Truncated);
        }
    }
    if at >= p.len() {
        return Err(Vp8RtpError::Empty);
    }
    Ok(Descriptor {
        start: b0 & 0x10 != 0,
        partition: b0 & 0x07,
        picture_id,
        len: at,
    })
}

/// Whether a whole VP8 frame is a key frame (RFC 6386 §9.1: the P bit of
/// the frame tag is 0).
pub fn is_key_frame(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x01 == 0)
}

/// Cut `frame` into RTP payloads of at most `max_payload` bytes each
/// (descriptor included); the last one carries the marker. Returns the
/// payloads in order.
pub fn packetize(frame: &[u8], picture_id: u16, max_payload: usize) -> Vec<Vec<u8>> {
    let room = max_payload.saturating_sub(DESCRIPTOR_LEN).max(1);
    let mut out = Vec::with_capacity(frame.len().div_ceil(room));
    for (i, chunk) in frame.chunks(room).enumerate() {
        let mut p = Vec::with_capacity(DESCRIPTOR_LEN + chunk.len());
        let start = if i == 0 { 0x10 } else { 0 };
        p.push(0x80 | start);
        p.push(0x80);
        p.push(0x80 | ((picture_id >> 8) & 0x7f) as u8);
        p.push(picture_id as u8);
        p.extend_from_slice(chunk);
        out.push(p);
    }
    out
}

/// A frame put back together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The RTP timestamp (90 kHz).
    pub timestamp: u32,
    pub data: Vec<u8>,
    pub key: bool,
}

/// What the assembler has counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AssemblerStats {
    pub packets: u64,
    pub frames: u64,
    /// Packets refused: bad descriptor, too large, too old.
    pub malformed: u64,
    pub duplicate: u64,
    /// Frames given up (incomplete) or dropped waiting for a key frame.
    pub lost_frames: u64,
    pub key_requests: u64,
}

/// What the assembler wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A whole frame, in order, decodable.
    Frame(Frame),
    /// Ask the sender for a key frame.
    RequestKeyFrame,
}

#[derive(Debug, Default)]
struct Pending {
    /// Payloads (descriptor removed) by extended sequence number.
    parts: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    key: bool,
}

impl Pending {
    fn complete(&self) -> bool {
        match (self.first_seq, self.last_seq) {
            (Some(a), Some(b)) if b >= a => (b - a + 1) as usize == self.parts.len(),
            _ => false,
        }
    }
}

/// Puts VP8 frames back together (see the module's documentation).
#[derive(Debug, Default)]
pub struct Assembler {
    /// Unfinished frames by extended timestamp.
    pending: BTreeMap<u64, Pending>,
    /// Extended timestamp of the last frame given out or given up.
    done: Option<u64>,
    /// Highest extended sequence number seen, for unwrapping.
    top_seq: Option<u64>,
    /// Last packet of the last frame given out (None at the start and
    /// after a loss: the next complete frame is taken as it comes).
    last_out_seq: Option<u64>,
    top_ts: Option<u64>,
    /// A later frame is complete while an earlier one is not: when the
    /// earlier one is given up.
    give_up_at: Option<Instant>,
    /// Dropping frames until a key frame.
    need_key: bool,
    last_key_request: Option<Instant>,
    out: std::collections::VecDeque<Output>,
    stats: AssemblerStats,
}

/// Unwrap a 16- or 32-bit counter against the highest value seen.
fn unwrap(top: Option<u64>, v: u64, bits: u32) -> u64 {
    let Some(top) = top else {
        return v + (1 << bits);
    };
    let span = 1u64 << bits;
    let base = top & !(span - 1);
    let cands = [base.wrapping_sub(span), base, base + span];
    let mut best = base + v;
    let mut dist = u64::MAX;
    for c in cands {
        let x = c.wrapping_add(v);
        let d = x.abs_diff(top);
        if d < dist {
            dist = d;
            best = x;
        }
    }
    best
}

impl Assembler {
    pub fn new() -> Assembler {
        Assembler::default()
    }

    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }

    /// Start over (the sender restarted, or the call moved): the next frame
    /// must be a key frame.
    pub fn reset(&mut self) {
        self.pending.clear();
        self.done = None;
        self.top_seq = None;
        self.top_ts = None;
        self.last_out_seq = None;
        self.give_up_at = None;
        self.need_key = true;
    }

    /// One RTP packet of the video flow: its sequence number, timestamp,
    /// marker bit and payload (descriptor first).
    pub fn handle_packet(
        &mut self,
        now: Instant,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) {
        self.stats.packets += 1;
        let d = match parse_descriptor(payload) {
            Ok(d) => d,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        let seq = unwrap(self.top_seq, u64::from(seq), 16);
        let ts = unwrap(self.top_ts, u64::from(timestamp), 32);
        if self.done.is_some_and(|done| ts <= done) {
            // A frame already given out or given up.
            self.stats.duplicate += 1;
            return;
        }
        self.top_seq = Some(self.top_seq.map_or(seq, |t| t.max(seq)));
        self.top_ts = Some(self.top_ts.map_or(ts, |t| t.max(ts)));
        if !self.pending.contains_key(&ts) && self.pending.len() >= MAX_PENDING {
            // Too many unfinished frames: the oldest is lost.
            if let Some((&oldest, _)) = self.pending.iter().next() {
                self.pending.remove(&oldest);
                self.lose(now, Some(oldest));
            }
        }
        let data = &payload[d.len..];
        let p = self.pending.entry(ts).or_default();
        if p.parts.contains_key(&seq) {
            self.stats.duplicate += 1;
            return;
        }
        if p.bytes + data.len() > MAX_FRAME_BYTES {
            self.stats.malformed += 1;
            self.pending.remove(&ts);
            self.lose(now, Some(ts));
            return;
        }
        if d.start && d.partition == 0 {
            p.first_seq = Some(seq);
            p.key = is_key_frame(data);
        }
        if marker {
            p.last_seq = Some(seq);
        }
        p.bytes += data.len();
        p.parts.insert(seq, data.to_vec());
        self.deliver(now);
    }

    /// Give out what is complete and in order; note when an earlier frame
    /// (or a gap in the sequence numbers before a complete one) must be
    /// given up.
    fn deliver(&mut self, now: Instant) {
        loop {
            let Some((&ts, first)) = self.pending.iter().next() else {
                self.give_up_at = None;
                return;
            };
            // In order: its first packet follows the last one given out.
            let follows = match (self.last_out_seq, first.first_seq) {
                (None, _) => true,
                (Some(l), Some(f)) => f == l + 1,
                (Some(_), None) => false,
            };
            if first.complete() && follows {
                let Some(p) = self.pending.remove(&ts) else {
                    return;
                };
                self.give_up_at = None;
                self.done = Some(ts);
                self.last_out_seq = p.last_seq;
                if self.need_key && !p.key {
                    self.stats.lost_frames += 1;
                    self.ask_key(now);
                    continue;
                }
                self.need_key = false;
                let mut data = Vec::with_capacity(p.bytes);
                for part in p.parts.values() {
                    data.extend_from_slice(part);
                }
                self.stats.frames += 1;
                self.out.push_back(Output::Frame(Frame {
                    timestamp: ts as u32,
                    data,
                    key: p.key,
                }));
                continue;
            }
            // Something before it or in it is missing: wait only while
            // nothing later is complete, then only for a while.
            let gap_before = first.complete();
            let later_complete = gap_before || self.pending.values().skip(1).any(Pending::complete);
            if !later_complete {
                self.give_up_at = None;
                return;
            }
            match self.give_up_at {
                Some(at) if now >= at => {
                    self.give_up_at = None;
                    if gap_before {
                        // What was in the gap is lost; this frame is next.
                        self.lose(now, None);
                    } else {
                        self.pending.remove(&ts);
                        self.lose(now, Some(ts));
                    }
                }
                Some(_) => return,
                None => {
                    self.give_up_at = Some(now + WAIT_FOR_MISSING);
                    return;
                }
            }
        }
    }

    /// A frame (at `ts`, if known) is lost: what follows needs a key frame.
    fn lose(&mut self, now: Instant, ts: Option<u64>) {
        self.stats.lost_frames += 1;
        if let Some(ts) = ts {
            self.done = Some(self.done.map_or(ts, |d| d.max(ts)));
        }
        self.last_out_seq = None;
        self.need_key = true;
        self.ask_key(now);
    }

    fn ask_key(&mut self, now: Instant) {
        if self
            .last_key_request
            .is_some_and(|at| now.saturating_duration_since(at) < KEY_REQUEST_EVERY)
        {
            return;
        }
        self.last_key_request = Some(now);
        self.stats.key_requests += 1;
        self.out.push_back(Output::RequestKeyFrame);
    }

    /// When [`Assembler::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retry = self
            .need_key
            .then_some(self.last_key_request)
            .flatten()
            .map(|at| at + KEY_REQUEST_EVERY);
        match (self.give_up_at, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: give up frames waited for long enough; ask again for
    /// a key frame that has not come.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.give_up_at.is_some_and(|at| now >= at) {
            self.deliver(now);
        }
        if self.need_key {
            self.ask_key(now);
        }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(key: bool, len: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![fill; len];
        f[0] = if key { 0x10 } else { 0x11 };
        f
    }

    /// Packets of a frame as (seq, ts, marker, payload).
    fn packets(f: &[u8], pic: u16, seq0: u16, ts: u32) -> Vec<(u16, u32, bool, Vec<u8>)> {
        let ps = packetize(f, pic, 1000);
        let n = ps.len();
        ps.into_iter()
            .enumerate()
            .map(|(i, p)| (seq0.wrapping_add(i as u16), ts, i + 1 == n, p))
            .collect()
    }

    fn drain(a: &mut Assembler) -> (Vec<Frame>, usize) {
        let (mut frames, mut keys) = (Vec::new(), 0);
        while let Some(o) = a.poll_output() {
            match o {
                Output::Frame(f) => frames.push(f),
                Output::RequestKeyFrame => keys += 1,
            }
        }
        (frames, keys)
    }

    #[test]
    fn descriptors_of_every_form_parse() {
        let d = parse_descriptor(&[0x90, 0x80, 0x81, 0x02, 0xaa]).expect("long");
        assert_eq!((d.start, d.picture_id, d.len), (true, Some(0x102), 4));
        let d = parse_descriptor(&[0x10, 0xaa]).expect("short");
        assert_eq!((d.start, d.picture_id, d.len), (true, None, 1));
        let d = parse_descriptor(&[0x80, 0xf0, 0x05, 0x01, 0x02, 0xaa]).expect("all fields");
        assert_eq!((d.picture_id, d.len), (Some(5), 5));
        assert_eq!(parse_descriptor(&[]), Err(Vp8RtpError::Truncated));
        assert_eq!(
            parse_descriptor(&[0x80, 0x80, 0x80]),
            Err(Vp8RtpError::Truncated)
        );
        assert_eq!(
            parse_descriptor(&[0x90, 0x80, 0x81, 0x02]),
            Err(Vp8RtpError::Empty)
        );
    }

    #[test]
    fn frames_come_back_whole_and_in_order_whatever_the_packet_order() {
        let now = Instant::now();
        let mut a = Assembler::new();
        let f0 = frame(true, 900, 0);
        let f1 = frame(false, 2500, 1);
        let f2 = frame(false, 1800, 2);
        for (s, t, m, p) in packets(&f0, 0, 65531, 0) {
            a.handle_packet(now, s, t, m, &p);
        }
        // Frame 2's packets, then frame 1's, each set backwards.
        let mut ps = packets(&f1, 1, 65532, 3000);
        ps.extend(packets(&f2, 2, 65535, 6000));
        ps.reverse();
        for (s, t, m, p) in &ps {
            a.handle_packet(now, *s, *t, *m, p);
        }
        let (frames, keys) = drain(&mut a);
        assert_eq!(keys, 0);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].data, f0);
        assert!(frames[0].key);
        assert_eq!(frames[1].data, f1);
        assert_eq!(frames[2].data, f2);
        assert_eq!(a.stats().frames, 3);
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn a_lost_packet_costs_the_frame_and_frames_until_a_key_frame_which_is_asked_for() {
        let t0 = Instant::now();
        let mut a = Assembler::new();
        for (s, t, m, p) in packets(&frame(true, 1500, 1), 1, 10, 0) {
            a.handle_packet(t0, s, t, m, &p);
        }
        assert_eq!(drain(&mut a).0.len(), 1);
        // Frame 2 loses its first packet; frame 3 comes whole.
        let mut f2 = packets(&frame(false, 1500, 2), 2, 12, 3000);
        f2.remove(0);
        for (s, t, m, p) in f2 {
            a.handle_packet(t0, s, t, m, &p);
        }
        for (s, t, m, p) in packets(&frame(false, 500, 3), 3, 14, 6000) {
            a.handle_packet(t0, s, t, m, &p);
        }
        // Frame 2 is waited for a while...
        assert_eq!(drain(&mut a), (vec![], 0));
        let at = a.poll_timeout().expect("a deadline");
        assert_eq!(at, t0 + WAIT_FOR_MISSING);
        // ...then given up; frame 3 refers to it, so it goes too, and a
        // key frame is asked for once.
        a.handle_timeout(at);
        assert_eq!(drain(&mut a), (vec![], 1));
        assert_eq!(a.stats().lost_frames, 2);
        // The late packet of frame 2 changes nothing.
        // Asked again after KEY_REQUEST_EVERY while none came.
        let again = a.poll_timeout().expect("a retry");
        a.handle_timeout(again);
        assert_eq!(drain(&mut a).1, 1);
        // The key frame brings the picture back.
        for (s, t, m, p) in packets(&frame(true, 2000, 4), 4, 15, 9000) {
            a.handle_packet(again, s, t, m, &p);
        }
        let (frames, _) = drain(&mut a);
        assert_eq!(frames.len(), 1);
        assert!(frames[0].key);
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn duplicates_and_old_packets_are_counted_and_dropped() {
        let t0 = Instant::now();
        let mut a = Assembler::new();
        let ps = packets(&frame(true, 1500, 1), 1, 100, 0);
        for (s, t, m, p) in ps.iter().chain(ps.iter()) {
            a.handle_packet(t0, *s, *t, *m, p);
        }
        assert_eq!(drain(&mut a).0.len(), 1);
        assert_eq!(a.stats().duplicate, 2);
        a.handle_packet(t0, 5, 0, true, &[0x90]);
        assert_eq!(a.stats().malformed, 1);
    }

    #[test]
    fn unfinished_frames_are_bounded() {
        let t0 = Instant::now();
        let mut a = Assembler::new();
        // Many frames that never finish (no marker).
        for i in 0..100u16 {
            let p = packetize(&frame(false, 100, 0), i, 1000).remove(0);
            a.handle_packet(t0, i * 2, u32::from(i) * 3000, false, &p);
        }
        assert!(a.pending.len() <= MAX_PENDING);
        assert!(a.stats().lost_frames >= 90);
    }

    #[test]
    fn timestamps_and_sequence_numbers_wrap() {
        let t0 = Instant::now();
        let mut a = Assembler::new();
        let mut seq = 65530u16;
        let mut ts = u32::MAX - 6000;
        for i in 0..6u16 {
            for (s, t, m, p) in packets(&frame(i == 0, 1200, i as u8), i, seq, ts) {
                a.handle_packet(t0, s, t, m, &p);
            }
            seq = seq.wrapping_add(2);
            ts = ts.wrapping_add(3000);
        }
        assert_eq!(drain(&mut a).0.len(), 6);
    }
}
