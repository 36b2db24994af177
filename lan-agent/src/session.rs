//! One call's media: Opus frames in RTP-over-QUIC datagrams on the
//! end-to-end connection between the two ends of the call, and its video
//! beside them ([`crate::video`]).
//!
//! Three tasks per call: the sender (every 20 ms: source → Opus → RTP →
//! datagram), the receiver (datagram → jitter buffer) and the player
//! (every 20 ms: jitter buffer → Opus/FEC/PLC → sink). They stop when the
//! session is dropped or the connection closes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};

use keyline_media::{
    CallRecorder, JitterBuffer, LoopSource, OpusDecoder, OpusEncoder, Playout, Sink, Source,
    VideoSize, FRAME_SAMPLES,
};
use keyline_proto::media::{decode_datagram, encode_datagram, RtpHeader, OPUS_PAYLOAD_TYPE};
use keyline_proto::vp8rtp::VP8_PAYLOAD_TYPE;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::video::{
    SharedVideo, VideoSession, VideoStats, KEY_REQUEST_PAYLOAD_TYPE, VIDEO_STATE_PAYLOAD_TYPE,
};

/// Jitter-buffer depth before playout starts (3 × 20 ms).
const JITTER_DEPTH: usize = 3;

/// Counters of one call's media, shown by `status`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MediaStats {
    pub sent: u64,
    pub received: u64,
    pub played: u64,
    pub lost: u64,
    pub concealed: u64,
    pub recovered_fec: u64,
    pub late: u64,
    pub duplicate: u64,
    pub malformed: u64,
    /// The call's video (zero when neither end has any).
    pub video: VideoStats,
}

pub type SharedSource = Arc<Mutex<Box<dyn Source>>>;
pub type SharedSink = Arc<Mutex<Box<dyn Sink>>>;

/// Where a call is being recorded, if it is: both directions mixed into
/// one Ogg Opus file, or for a video call a WebM file that also keeps the
/// peer's picture. The sender leaves each local frame here; the player
/// takes one per tick and writes it with the remote frame it plays; the
/// video receiver writes each frame it could decode.
#[derive(Default)]
pub struct RecordSlot {
    pub recorder: Option<CallRecorder>,
    /// The call carries video (this end has a camera, or pictures came):
    /// a recording started now is a WebM file.
    pub video: bool,
    local: VecDeque<Vec<i16>>,
    /// Why this call's recording stopped early (e.g. a full disk).
    error: Option<String>,
}

impl RecordSlot {
    /// Stop recording; the finished file's path.
    pub fn stop(&mut self) -> Option<Result<std::path::PathBuf, keyline_media::MediaError>> {
        self.local.clear();
        self.recorder.take().map(CallRecorder::finish)
    }

    /// A write failed (a full disk): keep what was written, ending the file
    /// there if the disk still allows it, and say why for `status`.
    pub(crate) fn stop_with_error(&mut self, e: &keyline_media::MediaError) {
        let kept = self.recorder.take().map(CallRecorder::finish);
        self.local.clear();
        self.error = Some(match kept {
            Some(Ok(p)) => format!("{e}; {} holds the call up to then", p.display()),
            _ => e.to_string(),
        });
    }
}

pub type SharedRecord = Arc<Mutex<RecordSlot>>;

/// Start recording the call into a new file in `dir` (made if missing),
/// named after `peer`; if it is already being recorded, that file's path.
pub(crate) fn start_recording(
    record: &SharedRecord,
    dir: &std::path::Path,
    peer: &str,
) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut slot = record
        .lock()
        .map_err(|_| anyhow::anyhow!("recorder lock poisoned"))?;
    if let Some(r) = &slot.recorder {
        return Ok(r.path().to_path_buf());
    }
    let now = std::time::SystemTime::now();
    let rec = if slot.video {
        let size = VideoSize {
            width: crate::video::WIDTH,
            height: crate::video::HEIGHT,
        };
        CallRecorder::create_video(dir, peer, now, size)?
    } else {
        CallRecorder::create(dir, peer, now)?
    };
    slot.error = None;
    let path = rec.path().to_path_buf();
    slot.recorder = Some(rec);
    Ok(path)
}

/// At the end of a call: finish its recording, if any. The file's path,
/// and why the recording stopped early or could not be finished, if it
/// did (cleared for the next call).
pub(crate) fn finish_recording(record: &SharedRecord) -> (Option<String>, Option<String>) {
    let Ok(mut r) = record.lock() else {
        return (None, None);
    };
    let path = match r.stop() {
        Some(Ok(p)) => Some(p.display().to_string()),
        Some(Err(e)) => {
            tracing::warn!("recording could not be finished: {e}");
            r.error.get_or_insert_with(|| format!("not finished: {e}"));
            None
        }
        None => None,
    };
    (path, r.error.take())
}

/// Why the call's recording stopped early, if it did.
pub(crate) fn recording_error(record: &SharedRecord) -> Option<String> {
    record.lock().ok().and_then(|r| r.error.clone())
}

/// The file the call is being recorded into, for `status`.
pub(crate) fn recording_path(record: &SharedRecord) -> Option<String> {
    record
        .lock()
        .ok()
        .and_then(|r| r.recorder.as_ref().map(|x| x.path().display().to_string()))
}

/// What the session sends and plays while the call is on hold.
pub struct Hold {
    /// This end put the call on hold: send `music`, play nothing.
    pub holding: AtomicBool,
    pub music: Mutex<LoopSource>,
    /// This end muted its microphone: send silence.
    pub muted: AtomicBool,
    /// This end turned its camera off: send a black card instead.
    pub camera_off: AtomicBool,
}

impl Hold {
    pub fn new(music: Vec<i16>) -> Hold {
        Hold {
            holding: AtomicBool::new(false),
            music: Mutex::new(LoopSource::new(music)),
            muted: AtomicBool::new(false),
            camera_off: AtomicBool::new(false),
        }
    }
}

/// A running media session; dropping it stops the media.
#[derive(Debug)]
pub struct Session {
    tasks: Vec<JoinHandle<()>>,
    pub stats: Arc<Mutex<MediaStats>>,
    pub conn: quinn::Connection,
    video: Arc<VideoSession>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.conn.close(quinn::VarInt::from_u32(0), b"call ended");
    }
}

impl Session {
    pub fn start(
        conn: quinn::Connection,
        flow: u64,
        source: SharedSource,
        sink: SharedSink,
        record: SharedRecord,
        hold: Arc<Hold>,
        local_video: SharedVideo,
    ) -> anyhow::Result<Session> {
        let stats = Arc::new(Mutex::new(MediaStats::default()));
        let jitter = Arc::new(Mutex::new(JitterBuffer::new(JITTER_DEPTH)));
        let mut encoder = OpusEncoder::new()?;
        let mut decoder = OpusDecoder::new()?;
        if let Ok(mut s) = source.lock() {
            s.restart();
        }
        let ssrc: u32 = rand::random();
        if local_video.lock().is_ok_and(|l| l.source.is_some()) {
            if let Ok(mut r) = record.lock() {
                r.video = true;
            }
        }
        let video = Arc::new(VideoSession::start(
            conn.clone(),
            flow,
            local_video,
            hold.clone(),
            record.clone(),
        ));

        let sender = {
            let conn = conn.clone();
            let stats = stats.clone();
            let record = record.clone();
            let hold = hold.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                let mut pcm = vec![0i16; FRAME_SAMPLES];
                let mut seq: u16 = rand::random();
                let mut ts: u32 = rand::random();
                let mut first = true;
                let mut out = Vec::with_capacity(256);
                loop {
                    tick.tick().await;
                    if hold.holding.load(Ordering::Relaxed) {
                        if let Ok(mut m) = hold.music.lock() {
                            m.next_frame(&mut pcm);
                        }
                    } else if let Ok(mut s) = source.lock() {
                        s.next_frame(&mut pcm);
                        if hold.muted.load(Ordering::Relaxed) {
                            pcm.fill(0);
                        }
                    }
                    if let Ok(mut r) = record.lock() {
                        if r.recorder.is_some() && r.local.len() < 10 {
                            r.local.push_back(pcm.clone());
                        }
                    }
                    let payload = match encoder.encode(&pcm) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!("opus encode failed: {e}");
                            continue;
                        }
                    };
                    let header = RtpHeader {
                        payload_type: OPUS_PAYLOAD_TYPE,
                        marker: first,
                        sequence: seq,
                        timestamp: ts,
                        ssrc,
                    };
                    first = false;
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(FRAME_SAMPLES as u32);
                    if encode_datagram(flow, &header, &payload, &mut out).is_err() {
                        continue;
                    }
                    match conn.send_datagram(Bytes::copy_from_slice(&out)) {
                        Ok(()) => {
                            if let Ok(mut st) = stats.lock() {
                                st.sent += 1;
                            }
                        }
                        Err(quinn::SendDatagramError::ConnectionLost(_)) => return,
                        Err(e) => tracing::debug!("datagram not sent: {e}"),
                    }
                }
            })
        };

        let receiver = {
            let conn = conn.clone();
            let stats = stats.clone();
            let jitter = jitter.clone();
            let video = video.clone();
            tokio::spawn(async move {
                while let Ok(d) = conn.read_datagram().await {
                    let Ok(dg) = decode_datagram(&d) else {
                        if let Ok(mut st) = stats.lock() {
                            st.malformed += 1;
                        }
                        continue;
                    };
                    let h = dg.header;
                    if dg.flow == flow && h.payload_type == VP8_PAYLOAD_TYPE {
                        video.packet(h.sequence, h.timestamp, h.marker, dg.payload);
                        continue;
                    }
                    if dg.flow == flow && h.payload_type == KEY_REQUEST_PAYLOAD_TYPE {
                        video.key_requested();
                        continue;
                    }
                    if dg.flow == flow && h.payload_type == VIDEO_STATE_PAYLOAD_TYPE {
                        video.peer_state(dg.payload);
                        continue;
                    }
                    if dg.flow != flow || dg.header.payload_type != OPUS_PAYLOAD_TYPE {
                        if let Ok(mut st) = stats.lock() {
                            st.malformed += 1;
                        }
                        continue;
                    }
                    if let Ok(mut j) = jitter.lock() {
                        j.push(dg.header.sequence, dg.payload.to_vec());
                    }
                }
            })
        };

        let player = {
            let stats = stats.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                let silence = vec![0i16; FRAME_SAMPLES];
                loop {
                    tick.tick().await;
                    let (out, js) = {
                        let Ok(mut j) = jitter.lock() else { return };
                        (j.pop(), j.stats())
                    };
                    let mut concealed = 0;
                    let mut fec = 0;
                    let pcm = match out {
                        Playout::Frame(p) => decoder.decode(Some(&p)).or_else(|_| {
                            concealed = 1;
                            decoder.decode(None)
                        }),
                        Playout::Lost { next: Some(n) } => {
                            fec = 1;
                            decoder.decode_fec(&n).or_else(|_| decoder.decode(None))
                        }
                        Playout::Lost { next: None } => {
                            concealed = 1;
                            decoder.decode(None)
                        }
                        Playout::Idle => Ok(silence.clone()),
                    };
                    let pcm = pcm.unwrap_or_else(|_| silence.clone());
                    if let Ok(mut r) = record.lock() {
                        let local = r.local.pop_front().unwrap_or_else(|| silence.clone());
                        if let Some(rec) = r.recorder.as_mut() {
                            if let Err(e) = rec.write(&local, &pcm) {
                                tracing::warn!("recording stopped: {e}");
                                r.stop_with_error(&e);
                            }
                        }
                    }
                    // The holding end does not listen to the held party.
                    let pcm = if hold.holding.load(Ordering::Relaxed) {
                        silence.clone()
                    } else {
                        pcm
                    };
                    if let Ok(mut s) = sink.lock() {
                        if let Err(e) = s.write_frame(&pcm) {
                            tracing::warn!("audio output failed: {e}");
                        }
                    }
                    if let Ok(mut st) = stats.lock() {
                        st.received = js.received;
                        st.played = js.played;
                        st.lost = js.lost;
                        st.late = js.late;
                        st.duplicate = js.duplicate;
                        st.concealed += concealed;
                        st.recovered_fec += fec;
                    }
                }
            })
        };

        Ok(Session {
            tasks: vec![sender, receiver, player],
            stats,
            conn,
            video,
        })
    }

    pub fn stats(&self) -> MediaStats {
        let mut s = self.stats.lock().map(|s| *s).unwrap_or_default();
        s.video = self.video.stats();
        s
    }
}
