//! One call's video: VP8 frames in RTP (RFC 7741) on the call's media
//! connection, beside its audio (same flow id, payload type
//! [`VP8_PAYLOAD_TYPE`]).
//!
//! Two threads per call (encoding and decoding take milliseconds a frame,
//! too long for the async runtime's workers): the sender (every frame
//! interval: camera or pattern → VP8 at the bitrate the connection allows
//! → packets → datagrams) and the receiver (packets from the audio
//! receiver's demultiplexer, through a bounded queue → [`Assembler`] →
//! VP8 → the sink). A receiver that lost a frame asks the sender for a key
//! frame with an empty RTP packet of payload type
//! [`KEY_REQUEST_PAYLOAD_TYPE`].
//!
//! A station without a camera sends no video and still shows what comes.
//! A station with one says once a second what its video is (payload type
//! [`VIDEO_STATE_PAYLOAD_TYPE`], one byte: 0 on, 1 camera off, 2 on hold);
//! with the camera off or the call on hold it sends a still card (black,
//! or grey with a pause sign) once a second instead of pictures.
//!
//! Audio goes first: a frame is not sent while the connection's datagram
//! queue holds more than about 50 ms of video (the congestion window is
//! full), and the bitrate comes down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keyline_media::video::{file_sink, PatternSource, VideoSink, VideoSource, ViewKind};
use keyline_media::vp8::{Vp8Decoder, Vp8Encoder, I420, VIDEO_CLOCK};
use keyline_proto::media::{encode_datagram, RtpHeader};
use keyline_proto::vp8rtp::{packetize, Assembler, Output, VP8_PAYLOAD_TYPE};
use serde::Serialize;

use crate::session::{Hold, SharedRecord};
use crate::viewers::Viewers;

/// Payload type of the empty RTP packet that asks for a key frame.
pub const KEY_REQUEST_PAYLOAD_TYPE: u8 = 97;
/// Payload type of the one-byte packet that says what the sender's video
/// is: 0 on, 1 camera off, 2 on hold.
pub const VIDEO_STATE_PAYLOAD_TYPE: u8 = 98;
/// The connection's datagram send queue (see `keyline_net::endpoint`).
const SEND_QUEUE: usize = keyline_net::endpoint::DATAGRAM_SEND_BUFFER;

/// Picture size and rate sent.
pub const WIDTH: u32 = 640;
pub const HEIGHT: u32 = 480;
pub const FPS: u32 = 30;
/// Bitrate at the start of a call, and its bounds (kbit/s).
pub const START_KBPS: u32 = 600;
pub const MIN_KBPS: u32 = 150;
pub const MAX_KBPS: u32 = 2500;
/// Video packets waiting for the decoder; more are dropped (and counted).
const QUEUE: usize = 1024;
/// Least time between two key frame requests for a recording.
const KEY_REQUEST_GAP: Duration = Duration::from_millis(500);

/// The station's camera (or pattern) and picture output.
pub struct LocalVideo {
    pub source: Option<Box<dyn VideoSource>>,
    pub sink: Option<Box<dyn VideoSink>>,
    /// Windows watching the pictures (see [`crate::viewers`]).
    pub viewers: Option<Arc<Viewers>>,
}

impl std::fmt::Debug for LocalVideo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalVideo")
            .field("source", &self.source.is_some())
            .field("sink", &self.sink.is_some())
            .finish()
    }
}

pub type SharedVideo = Arc<Mutex<LocalVideo>>;

impl LocalVideo {
    /// Open `--video-in` (`none`, `pattern`) and `--video-out` (`none`, a
    /// `.y4m` file, or any other file for the CSV of the codes read back).
    pub fn open(video_in: &str, video_out: &str) -> anyhow::Result<LocalVideo> {
        let source: Option<Box<dyn VideoSource>> = match video_in {
            "" | "none" => None,
            "pattern" => Some(Box::new(PatternSource::new(WIDTH, HEIGHT)?)),
            other => anyhow::bail!("unknown video input {other:?}: expected none or pattern"),
        };
        let sink = match video_out {
            "" | "none" => None,
            path => Some(file_sink(std::path::Path::new(path), FPS)?),
        };
        Ok(LocalVideo {
            source,
            sink,
            viewers: None,
        })
    }

    pub fn none() -> LocalVideo {
        LocalVideo {
            source: None,
            sink: None,
            viewers: None,
        }
    }
}

/// Counters of one call's video, shown by `status`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct VideoStats {
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub key_frames_sent: u64,
    /// Target bitrate now (kbit/s); 0 while nothing is sent.
    pub kbps: u32,
    pub packets_received: u64,
    pub frames_decoded: u64,
    pub frames_lost: u64,
    pub key_requests: u64,
    /// Packets refused (bad descriptor, too large) and frames the decoder
    /// found corrupt.
    pub malformed: u64,
    /// Packets dropped because the decoder fell behind.
    pub dropped: u64,
    /// Frames not sent because the connection's queue was full (audio
    /// goes first).
    pub frames_skipped: u64,
    /// What the other end says of its video: "on", "camera off", "on
    /// hold", or null before it said anything (no camera, or no video).
    pub peer: Option<&'static str>,
    /// Whether this end sends pictures now (a camera, on, not on hold).
    pub sending: bool,
}

/// How often the bitrate is set again.
pub const RATE_EVERY: Duration = Duration::from_millis(500);

/// What the connection says of its path, for [`target_kbps`].
#[derive(Debug, Clone, Copy)]
pub struct PathNow {
    pub cwnd_bytes: u64,
    /// The smoothed round trip now, and the least seen in this call.
    pub rtt: Duration,
    pub min_rtt: Duration,
    /// A packet was lost (or a frame held back for the voice) since the
    /// last step.
    pub lost: bool,
}

/// Round-trip growth that means a queue is building on the path (down
/// now), and growth under which the bitrate may still go up.
const QUEUE_BUILDING: Duration = Duration::from_millis(40);
const QUEUE_EMPTY: Duration = Duration::from_millis(15);

/// The bitrate to aim at, set every [`RATE_EVERY`], from what the
/// connection says it can carry: two thirds of its congestion window per
/// round trip, minus what audio needs, within [`MIN_KBPS`]..=[`MAX_KBPS`].
/// Down at once: by 30% after a loss, by 15% when the round trip has grown
/// by [`QUEUE_BUILDING`] over the least seen (a queue on the path delays
/// the voice before it drops anything); up by at most a tenth a step, and
/// only while the round trip is within [`QUEUE_EMPTY`] of the least.
pub fn target_kbps(current: u32, p: PathNow) -> u32 {
    let rtt_s = p.rtt.as_secs_f64().max(0.001);
    let path_kbps = (p.cwnd_bytes as f64 * 8.0 / rtt_s / 1000.0) * 2.0 / 3.0 - 64.0;
    let mut want = path_kbps.clamp(f64::from(MIN_KBPS), f64::from(MAX_KBPS)) as u32;
    let queueing = p.rtt.saturating_sub(p.min_rtt);
    if p.lost {
        want = want.min(current.saturating_mul(7) / 10);
    } else if queueing > QUEUE_BUILDING {
        want = want.min(current.saturating_mul(85) / 100);
    }
    let up = if queueing > QUEUE_EMPTY {
        current
    } else {
        current + current / 10
    };
    want.min(up).clamp(MIN_KBPS, MAX_KBPS)
}

/// A call's running video; dropping it stops both threads.
#[derive(Debug)]
pub struct VideoSession {
    stop: Arc<AtomicBool>,
    key_wanted: Arc<AtomicBool>,
    packets: SyncSender<Packet>,
    stats: Arc<Mutex<VideoStats>>,
}

struct Packet {
    seq: u16,
    ts: u32,
    marker: bool,
    payload: Vec<u8>,
}

impl Drop for VideoSession {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl VideoSession {
    /// Start call `flow`'s video on `conn`: sending if `local` has a
    /// source, receiving always. Nothing is sent while this end holds.
    pub fn start(
        conn: quinn::Connection,
        flow: u64,
        local: SharedVideo,
        hold: Arc<Hold>,
        record: SharedRecord,
    ) -> VideoSession {
        let stop = Arc::new(AtomicBool::new(false));
        let key_wanted = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(Mutex::new(VideoStats::default()));
        let (tx, rx) = sync_channel(QUEUE);
        let sends = local.lock().map(|l| l.source.is_some()).unwrap_or(false);
        if sends {
            let (conn, local, stop, key, stats, hold) = (
                conn.clone(),
                local.clone(),
                stop.clone(),
                key_wanted.clone(),
                stats.clone(),
                hold,
            );
            let spawned = std::thread::Builder::new()
                .name("video-send".into())
                .spawn(move || send_loop(conn, flow, local, stop, key, stats, hold));
            if let Err(e) = spawned {
                tracing::warn!("call {flow}: no video sent: {e}");
            }
        }
        {
            let (stop, stats) = (stop.clone(), stats.clone());
            let spawned = std::thread::Builder::new()
                .name("video-recv".into())
                .spawn(move || receive_loop(conn, flow, local, record, rx, stop, stats));
            if let Err(e) = spawned {
                tracing::warn!("call {flow}: no video received: {e}");
            }
        }
        VideoSession {
            stop,
            key_wanted,
            packets: tx,
            stats,
        }
    }

    /// A video packet from the demultiplexer; never blocks.
    pub fn packet(&self, seq: u16, ts: u32, marker: bool, payload: &[u8]) {
        let p = Packet {
            seq,
            ts,
            marker,
            payload: payload.to_vec(),
        };
        match self.packets.try_send(p) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                if let Ok(mut s) = self.stats.lock() {
                    s.dropped += 1;
                }
            }
        }
    }

    /// The other end asked for a key frame.
    pub fn key_requested(&self) {
        self.key_wanted.store(true, Ordering::Relaxed);
    }

    /// The other end said what its video is.
    pub fn peer_state(&self, payload: &[u8]) {
        let state = match payload.first() {
            Some(0) => "on",
            Some(1) => "camera off",
            Some(2) => "on hold",
            _ => return,
        };
        if let Ok(mut s) = self.stats.lock() {
            s.peer = Some(state);
        }
    }

    pub fn stats(&self) -> VideoStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }
}

fn send_loop(
    conn: quinn::Connection,
    flow: u64,
    local: SharedVideo,
    stop: Arc<AtomicBool>,
    key_wanted: Arc<AtomicBool>,
    stats: Arc<Mutex<VideoStats>>,
    hold: Arc<Hold>,
) {
    // One thread: libvpx's VP8 threads wait for each other by spinning,
    // which burnt half a core per call on a two-core machine for a few
    // milliseconds of work a frame.
    let mut enc = match Vp8Encoder::new(WIDTH, HEIGHT, FPS, START_KBPS, 1) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("call {flow}: no video sent: {e}");
            return;
        }
    };
    let ssrc: u32 = rand::random();
    let mut seq: u16 = rand::random();
    let ts0: u32 = rand::random();
    let mut picture_id: u16 = rand::random::<u16>() & 0x7fff;
    let interval = Duration::from_secs(1) / FPS;
    let started = Instant::now();
    let mut next = started;
    let mut last_rate = started;
    let mut last_lost = conn.stats().path.lost_packets;
    let mut out = Vec::with_capacity(1500);
    let mut last_state: Option<(Instant, u8)> = None;
    let mut state_seq: u16 = rand::random();
    let mut skipped_lately = false;
    let mut frame_no = 0u64;
    let mut min_rtt = conn.rtt();
    while !stop.load(Ordering::Relaxed) && conn.close_reason().is_none() {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += interval;
        if Instant::now() > next + interval * 4 {
            // Far behind (a slow machine): skip, do not burst.
            next = Instant::now() + interval;
        }
        // Once a second: say what this end's video is; with the camera
        // off or on hold, a still card instead of pictures.
        let state = if hold.holding.load(Ordering::Relaxed) {
            2
        } else if hold.camera_off.load(Ordering::Relaxed) {
            1
        } else {
            0
        };
        let second = last_state.is_none_or(|(at, s): (Instant, u8)| {
            s != state || at.elapsed() >= Duration::from_secs(1)
        });
        if second {
            last_state = Some((Instant::now(), state));
            let header = RtpHeader {
                payload_type: VIDEO_STATE_PAYLOAD_TYPE,
                marker: false,
                sequence: state_seq,
                timestamp: 0,
                ssrc,
            };
            state_seq = state_seq.wrapping_add(1);
            if encode_datagram(flow, &header, &[state], &mut out).is_ok() {
                let _ = conn.send_datagram(Bytes::copy_from_slice(&out));
            }
        }
        if let Ok(mut s) = stats.lock() {
            s.sending = state == 0;
        }
        if state != 0 && !second {
            continue;
        }
        // Follow what the connection carries: a loss (or a frame held
        // back for the voice) is answered at once, at most once a round
        // trip and a bit; otherwise every RATE_EVERY.
        let path = conn.stats().path;
        let lost = path.lost_packets > last_lost || skipped_lately;
        let settle = (conn.rtt() * 2).max(Duration::from_millis(200));
        if (lost && last_rate.elapsed() >= settle) || last_rate.elapsed() >= RATE_EVERY {
            last_rate = Instant::now();
            last_lost = path.lost_packets;
            skipped_lately = false;
            let rtt = conn.rtt();
            min_rtt = min_rtt.min(rtt);
            let kbps = target_kbps(
                enc.bitrate(),
                PathNow {
                    cwnd_bytes: path.cwnd,
                    rtt,
                    min_rtt,
                    lost,
                },
            );
            if let Err(e) = enc.set_bitrate(kbps) {
                tracing::debug!("call {flow}: {e}");
            }
        }
        let pic = if state != 0 {
            card(state == 2)
        } else {
            let Ok(mut l) = local.lock() else { return };
            let Some(src) = l.source.as_mut() else { return };
            let pic = match src.next_picture() {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("call {flow}: camera: {e}");
                    continue;
                }
            };
            // The self view, ten times a second.
            if let (Some(v), 0) = (&l.viewers, frame_no % 3) {
                v.show(ViewKind::Me, &pic);
            }
            pic
        };
        frame_no += 1;
        // Audio goes first: with more than ~50 ms of video still queued
        // the congestion window is full; skip this picture.
        let queued = SEND_QUEUE.saturating_sub(conn.datagram_send_buffer_space());
        // 50 ms of video at the bitrate now, at least a packet: the voice
        // waits behind no more than that (its jitter buffer holds 60 ms).
        let limit = (enc.bitrate() as usize * 1000 / 8 / 20).max(1500);
        if queued > limit {
            // Never encoded, so the next frame still refers to one the
            // other end has: no key frame needed.
            skipped_lately = true;
            if let Ok(mut s) = stats.lock() {
                s.frames_skipped += 1;
            }
            continue;
        }
        let ts =
            ts0.wrapping_add((started.elapsed().as_secs_f64() * f64::from(VIDEO_CLOCK)) as u32);
        let force = key_wanted.swap(false, Ordering::Relaxed);
        let frame = match enc.encode(&pic, ts, force) {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("call {flow}: {e}");
                continue;
            }
        };
        // Room in one datagram: the flow id (≤ 8) and the RTP header.
        let max = conn
            .max_datagram_size()
            .unwrap_or(1200)
            .saturating_sub(8 + 12)
            .max(200);
        let packets = packetize(&frame.data, picture_id, max);
        picture_id = (picture_id + 1) & 0x7fff;
        let n = packets.len();
        let mut sent = 0u64;
        for (i, p) in packets.into_iter().enumerate() {
            let header = RtpHeader {
                payload_type: VP8_PAYLOAD_TYPE,
                marker: i + 1 == n,
                sequence: seq,
                timestamp: ts,
                ssrc,
            };
            seq = seq.wrapping_add(1);
            if encode_datagram(flow, &header, &p, &mut out).is_err() {
                continue;
            }
            match conn.send_datagram(Bytes::copy_from_slice(&out)) {
                Ok(()) => sent += out.len() as u64,
                Err(quinn::SendDatagramError::ConnectionLost(_)) => return,
                Err(e) => tracing::debug!("video datagram not sent: {e}"),
            }
        }
        if let Ok(mut s) = stats.lock() {
            s.frames_sent += 1;
            s.bytes_sent += sent;
            s.key_frames_sent += u64::from(frame.key);
            s.kbps = enc.bitrate();
        }
    }
}

/// Tells the windows to clear their pictures when dropped.
struct ClearOnDrop(SharedVideo);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        if let Ok(l) = self.0.lock() {
            if let Some(v) = &l.viewers {
                v.clear();
            }
        }
    }
}

/// The still picture sent instead of the camera's: black (camera off) or
/// grey with a pause sign (on hold).
fn card(on_hold: bool) -> I420 {
    let (w, h) = (WIDTH as usize, HEIGHT as usize);
    let mut pic = I420 {
        width: WIDTH,
        height: HEIGHT,
        y: vec![if on_hold { 60 } else { 16 }; w * h],
        u: vec![128; w * h / 4],
        v: vec![128; w * h / 4],
    };
    if on_hold {
        // Two upright bars in the middle.
        let (bar_w, bar_h) = (w / 16, h / 3);
        let top = (h - bar_h) / 2;
        for x0 in [w / 2 - bar_w * 3 / 2, w / 2 + bar_w / 2] {
            for row in top..top + bar_h {
                pic.y[row * w + x0..row * w + x0 + bar_w].fill(220);
            }
        }
    }
    pic
}

fn receive_loop(
    conn: quinn::Connection,
    flow: u64,
    local: SharedVideo,
    record: SharedRecord,
    rx: Receiver<Packet>,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<VideoStats>>,
) {
    let mut dec = match Vp8Decoder::new(1) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("call {flow}: no video shown: {e}");
            return;
        }
    };
    let mut asm = Assembler::new();
    // Windows clear the picture when this call's video ends.
    let _clear = ClearOnDrop(local.clone());
    let mut key_request = KeyRequest {
        ssrc: rand::random(),
        seq: rand::random(),
        out: Vec::with_capacity(64),
    };
    let mut corrupt = 0u64;
    let mut seen = false;
    let mut last_key_request: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let wait = asm
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(200))
            .min(Duration::from_millis(200));
        match rx.recv_timeout(wait) {
            Ok(p) => {
                if !seen {
                    // Pictures come: a recording started from now on keeps them.
                    seen = true;
                    if let Ok(mut r) = record.lock() {
                        r.video = true;
                    }
                }
                asm.handle_packet(Instant::now(), p.seq, p.ts, p.marker, &p.payload);
                // Take whatever else is queued before decoding.
                while let Ok(p) = rx.try_recv() {
                    asm.handle_packet(Instant::now(), p.seq, p.ts, p.marker, &p.payload);
                }
            }
            Err(RecvTimeoutError::Timeout) => asm.handle_timeout(Instant::now()),
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let mut decoded = 0u64;
        while let Some(o) = asm.poll_output() {
            match o {
                Output::Frame(f) => match dec.decode(&f.data) {
                    Ok(Some(pic)) => {
                        decoded += 1;
                        record_frame(&record, flow, &f.data);
                        if let Ok(mut l) = local.lock() {
                            if let Some(v) = &l.viewers {
                                v.show(ViewKind::Peer, &pic);
                            }
                            if let Some(sink) = l.sink.as_mut() {
                                if let Err(e) = sink.show(&pic) {
                                    tracing::warn!("call {flow}: video output: {e}");
                                    l.sink = None;
                                }
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!("call {flow}: {e}");
                        corrupt += 1;
                        asm.reset();
                        record_gap(&record);
                    }
                },
                Output::RequestKeyFrame => {
                    record_gap(&record);
                    last_key_request = Some(Instant::now());
                    key_request.send(&conn, flow);
                }
            }
        }
        // A recording that started mid-call (or lost frames) waits for a
        // key frame: ask for one, at most twice a second.
        let recorder_waits = record
            .lock()
            .is_ok_and(|r| r.recorder.as_ref().is_some_and(|x| x.wants_key_frame()));
        if recorder_waits && last_key_request.is_none_or(|t| t.elapsed() >= KEY_REQUEST_GAP) {
            last_key_request = Some(Instant::now());
            key_request.send(&conn, flow);
        }
        let a = asm.stats();
        if let Ok(mut s) = stats.lock() {
            s.packets_received = a.packets;
            s.frames_decoded += decoded;
            s.frames_lost = a.lost_frames;
            s.key_requests = a.key_requests;
            s.malformed = a.malformed + corrupt;
        }
    }
}

/// The empty RTP packets a receiver sends to ask for a key frame.
struct KeyRequest {
    ssrc: u32,
    seq: u16,
    out: Vec<u8>,
}

impl KeyRequest {
    fn send(&mut self, conn: &quinn::Connection, flow: u64) {
        let header = RtpHeader {
            payload_type: KEY_REQUEST_PAYLOAD_TYPE,
            marker: true,
            sequence: self.seq,
            timestamp: 0,
            ssrc: self.ssrc,
        };
        self.seq = self.seq.wrapping_add(1);
        if encode_datagram(flow, &header, &[], &mut self.out).is_ok() {
            let _ = conn.send_datagram(Bytes::copy_from_slice(&self.out));
        }
    }
}

/// Writes a received frame into the call's recording, if it keeps video; a
/// write that fails (a full disk) ends the recording, keeping what it has.
fn record_frame(record: &SharedRecord, flow: u64, frame: &[u8]) {
    let Ok(mut r) = record.lock() else { return };
    let Some(rec) = r.recorder.as_mut() else {
        return;
    };
    if let Err(e) = rec.write_video(frame) {
        tracing::warn!("call {flow}: recording stopped: {e}");
        r.stop_with_error(&e);
    }
}

/// Frames were lost: the recording skips to the next key frame.
fn record_gap(record: &SharedRecord) {
    if let Ok(mut r) = record.lock() {
        if let Some(rec) = r.recorder.as_mut() {
            rec.video_gap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bitrate_follows_the_path_within_bounds() {
        let ms = Duration::from_millis;
        let path = |cwnd_bytes, rtt, lost| PathNow {
            cwnd_bytes,
            rtt: ms(rtt),
            min_rtt: ms(20),
            lost,
        };
        // A wide path: up by a tenth a step, never past the top.
        assert_eq!(target_kbps(600, path(1_000_000, 20, false)), 660);
        assert_eq!(target_kbps(2400, path(1_000_000, 20, false)), MAX_KBPS);
        // A narrow one: down at once, never under the floor.
        let narrow = target_kbps(600, path(1500, 20, false));
        assert!(narrow < 600, "{narrow}");
        assert_eq!(target_kbps(600, path(100, 20, false)), MIN_KBPS);
        // Loss takes 30% off even on a wide path.
        assert_eq!(target_kbps(800, path(1_000_000, 20, true)), 560);
        // A queue building (the round trip 50 ms over its least): 15% off
        // before anything is lost; a little queue: no higher.
        assert_eq!(target_kbps(800, path(10_000_000, 70, false)), 680);
        assert_eq!(target_kbps(800, path(10_000_000, 40, false)), 800);
    }
}
