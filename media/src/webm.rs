//! WebM files (Matroska, restricted to VP8 video and Opus audio) for calls
//! recorded with their picture.
//!
//! The writer is written for a live source and for crashes: the header
//! (EBML header, the Segment with an unknown size, Info, Tracks) goes out at
//! once, then each Cluster is built in memory and written whole, with its
//! size, when the next one starts (on a video key frame once the current one
//! is a second old, and at the latest every [`MAX_CLUSTER_MS`]), so a killed
//! process leaves a file that players open, short by at most one cluster.
//! [`WebmWriter::finish`] writes the last cluster and then goes back to
//! fill in the Segment's size and the Duration.
//!
//! Timestamps are milliseconds (the default TimestampScale of 1 ms) from the
//! start of the recording. Blocks are SimpleBlocks; track 1 is the video
//! (`V_VP8`), track 2 the audio (`A_OPUS`, mono, 48 kHz, with its
//! `OpusHead` as CodecPrivate and the encoder's delay as CodecDelay).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::MediaError;

/// A Cluster is closed at this age even without a video key frame (ms).
pub const MAX_CLUSTER_MS: u64 = 5_000;
/// A video key frame starts a new Cluster once the current one is this old (ms).
const KEY_CLUSTER_MS: u64 = 1_000;
/// Largest Cluster held in memory before it is written regardless (bytes).
const MAX_CLUSTER_BYTES: usize = 4 << 20;

/// Track number of the video.
pub const VIDEO_TRACK: u8 = 1;
/// Track number of the audio.
pub const AUDIO_TRACK: u8 = 2;

// Element IDs (Matroska specification, RFC 9559), with their marker bits.
const EBML: u32 = 0x1A45_DFA3;
const EBML_VERSION: u32 = 0x4286;
const EBML_READ_VERSION: u32 = 0x42F7;
const EBML_MAX_ID_LENGTH: u32 = 0x42F2;
const EBML_MAX_SIZE_LENGTH: u32 = 0x42F3;
const DOC_TYPE: u32 = 0x4282;
const DOC_TYPE_VERSION: u32 = 0x4287;
const DOC_TYPE_READ_VERSION: u32 = 0x4285;
const SEGMENT: u32 = 0x1853_8067;
const INFO: u32 = 0x1549_A966;
const TIMESTAMP_SCALE: u32 = 0x2A_D7B1;
const DURATION: u32 = 0x4489;
const DATE_UTC: u32 = 0x4461;
const TITLE: u32 = 0x7BA9;
const MUXING_APP: u32 = 0x4D80;
const WRITING_APP: u32 = 0x5741;
const TRACKS: u32 = 0x1654_AE6B;
const TRACK_ENTRY: u32 = 0xAE;
const TRACK_NUMBER: u32 = 0xD7;
const TRACK_UID: u32 = 0x73C5;
const TRACK_TYPE: u32 = 0x83;
const FLAG_LACING: u32 = 0x9C;
const CODEC_ID: u32 = 0x86;
const CODEC_PRIVATE: u32 = 0x63A2;
const CODEC_DELAY: u32 = 0x56AA;
const SEEK_PRE_ROLL: u32 = 0x56BB;
const VIDEO: u32 = 0xE0;
const PIXEL_WIDTH: u32 = 0xB0;
const PIXEL_HEIGHT: u32 = 0xBA;
const AUDIO: u32 = 0xE1;
const SAMPLING_FREQUENCY: u32 = 0xB5;
const CHANNELS: u32 = 0x9F;
const CLUSTER: u32 = 0x1F43_B675;
const TIMESTAMP: u32 = 0xE7;
const SIMPLE_BLOCK: u32 = 0xA3;

/// The 8-byte size field of an element whose size is not known yet.
const UNKNOWN_SIZE: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
/// Seconds from 1970-01-01 to 2001-01-01, Matroska's DateUTC epoch.
const MATROSKA_EPOCH_UNIX: i64 = 978_307_200;

/// What the file holds besides its blocks.
#[derive(Debug, Clone)]
pub struct WebmHeader {
    pub width: u32,
    pub height: u32,
    /// The Opus encoder's delay (48 kHz samples): OpusHead's pre-skip.
    pub opus_pre_skip: u16,
    pub title: String,
    /// When the recording started (seconds since the Unix epoch).
    pub unix_time: i64,
}

/// Writes one WebM file; see the [module documentation](self).
#[derive(Debug)]
pub struct WebmWriter {
    file: Option<File>,
    path: PathBuf,
    /// Where the Segment's size field is (8 bytes) and where its data starts.
    segment_size_at: u64,
    segment_data_at: u64,
    /// Where the Duration's 8-byte float is.
    duration_at: u64,
    /// The Cluster being built: its timestamp and its blocks' bytes.
    cluster: Option<(u64, Vec<u8>)>,
    /// Latest block timestamp written (ms).
    last_ms: u64,
    video_frames: u64,
    audio_frames: u64,
}

impl WebmWriter {
    /// Creates `path` (failing if it exists) and writes the header. A file
    /// whose header could not be written (a full disk) is removed.
    pub fn create_new(path: &Path, header: &WebmHeader) -> Result<Self, MediaError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| io_error(path, e))?;
        let mut w = WebmWriter {
            file: Some(file),
            path: path.to_path_buf(),
            segment_size_at: 0,
            segment_data_at: 0,
            duration_at: 0,
            cluster: None,
            last_ms: 0,
            video_frames: 0,
            audio_frames: 0,
        };
        w.write_header(header).inspect_err(|_| {
            let _ = std::fs::remove_file(path);
        })?;
        Ok(w)
    }

    fn write_header(&mut self, h: &WebmHeader) -> Result<(), MediaError> {
        let mut b = Vec::with_capacity(512);
        let mut ebml = Vec::new();
        uint(&mut ebml, EBML_VERSION, 1);
        uint(&mut ebml, EBML_READ_VERSION, 1);
        uint(&mut ebml, EBML_MAX_ID_LENGTH, 4);
        uint(&mut ebml, EBML_MAX_SIZE_LENGTH, 8);
        string(&mut ebml, DOC_TYPE, "webm");
        uint(&mut ebml, DOC_TYPE_VERSION, 4);
        uint(&mut ebml, DOC_TYPE_READ_VERSION, 2);
        master(&mut b, EBML, &ebml);

        id(&mut b, SEGMENT);
        let segment_size_at = b.len() as u64;
        b.extend_from_slice(&UNKNOWN_SIZE);
        let segment_data_at = b.len() as u64;

        let mut info = Vec::new();
        uint(&mut info, TIMESTAMP_SCALE, 1_000_000);
        id(&mut info, DURATION);
        size(&mut info, 8);
        let duration_in_info = info.len();
        info.extend_from_slice(&0f64.to_be_bytes());
        let nanos_since_2001 = (h.unix_time - MATROSKA_EPOCH_UNIX).saturating_mul(1_000_000_000);
        id(&mut info, DATE_UTC);
        size(&mut info, 8);
        info.extend_from_slice(&nanos_since_2001.to_be_bytes());
        string(&mut info, TITLE, &h.title);
        string(&mut info, MUXING_APP, "keyline");
        string(
            &mut info,
            WRITING_APP,
            concat!("keyline ", env!("CARGO_PKG_VERSION")),
        );
        id(&mut b, INFO);
        size(&mut b, info.len() as u64);
        let duration_at = b.len() as u64 + duration_in_info as u64;
        b.extend_from_slice(&info);

        let mut video = Vec::new();
        uint(&mut video, PIXEL_WIDTH, u64::from(h.width));
        uint(&mut video, PIXEL_HEIGHT, u64::from(h.height));
        let mut vt = Vec::new();
        uint(&mut vt, TRACK_NUMBER, u64::from(VIDEO_TRACK));
        uint(&mut vt, TRACK_UID, track_uid(1));
        uint(&mut vt, TRACK_TYPE, 1);
        uint(&mut vt, FLAG_LACING, 0);
        string(&mut vt, CODEC_ID, "V_VP8");
        master(&mut vt, VIDEO, &video);

        let mut audio = Vec::new();
        float(
            &mut audio,
            SAMPLING_FREQUENCY,
            f64::from(crate::SAMPLE_RATE),
        );
        uint(&mut audio, CHANNELS, 1);
        let mut at = Vec::new();
        uint(&mut at, TRACK_NUMBER, u64::from(AUDIO_TRACK));
        uint(&mut at, TRACK_UID, track_uid(2));
        uint(&mut at, TRACK_TYPE, 2);
        uint(&mut at, FLAG_LACING, 0);
        string(&mut at, CODEC_ID, "A_OPUS");
        binary(
            &mut at,
            CODEC_PRIVATE,
            &crate::oggopus::opus_head(h.opus_pre_skip),
        );
        let delay_ns = u64::from(h.opus_pre_skip) * 1_000_000_000 / u64::from(crate::SAMPLE_RATE);
        uint(&mut at, CODEC_DELAY, delay_ns);
        uint(&mut at, SEEK_PRE_ROLL, 80_000_000);
        master(&mut at, AUDIO, &audio);

        let mut tracks = Vec::new();
        master(&mut tracks, TRACK_ENTRY, &vt);
        master(&mut tracks, TRACK_ENTRY, &at);
        master(&mut b, TRACKS, &tracks);

        self.write_all(&b)?;
        self.segment_size_at = segment_size_at;
        self.segment_data_at = segment_data_at;
        self.duration_at = duration_at;
        Ok(())
    }

    /// Appends one VP8 frame shown at `ms`. `key` says whether it is a key
    /// frame (a reader can start there).
    pub fn write_video(&mut self, ms: u64, key: bool, frame: &[u8]) -> Result<(), MediaError> {
        self.block(VIDEO_TRACK, ms, key, frame)?;
        self.video_frames += 1;
        Ok(())
    }

    /// Appends one Opus packet played at `ms`.
    pub fn write_audio(&mut self, ms: u64, packet: &[u8]) -> Result<(), MediaError> {
        self.block(AUDIO_TRACK, ms, true, packet)?;
        self.audio_frames += 1;
        Ok(())
    }

    /// Video and audio frames written so far.
    pub fn frames(&self) -> (u64, u64) {
        (self.video_frames, self.audio_frames)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn block(&mut self, track: u8, ms: u64, key: bool, data: &[u8]) -> Result<(), MediaError> {
        if self.file.is_none() {
            return Err(MediaError::Format(format!(
                "{}: WebM write after finish",
                self.path.display()
            )));
        }
        // Clusters never go back in time: a block a little behind the
        // current cluster's start (the other track's frame came first) is
        // placed at that start.
        let ms = match &self.cluster {
            Some((start, _)) => ms.max(*start),
            None => ms,
        };
        let new_cluster = match &self.cluster {
            None => true,
            Some((start, bytes)) => {
                let age = ms - *start;
                // A block's time is relative to its cluster's, a signed
                // 16-bit count of milliseconds: well within MAX_CLUSTER_MS.
                age >= MAX_CLUSTER_MS
                    || (key && track == VIDEO_TRACK && age >= KEY_CLUSTER_MS)
                    || bytes.len() + data.len() > MAX_CLUSTER_BYTES
            }
        };
        if new_cluster {
            self.flush_cluster()?;
            let mut bytes = Vec::with_capacity(64 * 1024);
            uint(&mut bytes, TIMESTAMP, ms);
            self.cluster = Some((ms, bytes));
        }
        let Some((start, bytes)) = self.cluster.as_mut() else {
            return Err(MediaError::Format("WebM: no cluster".into()));
        };
        let rel = i16::try_from(ms - *start)
            .map_err(|_| MediaError::Format("WebM: block too far from its cluster".into()))?;
        id(bytes, SIMPLE_BLOCK);
        size(bytes, 4 + data.len() as u64);
        bytes.push(0x80 | track); // track number as a 1-byte vint
        bytes.extend_from_slice(&rel.to_be_bytes());
        bytes.push(if key { 0x80 } else { 0 });
        bytes.extend_from_slice(data);
        self.last_ms = self.last_ms.max(ms);
        Ok(())
    }

    /// Writes the cluster being built, whole, with its size.
    fn flush_cluster(&mut self) -> Result<(), MediaError> {
        let Some((_, body)) = self.cluster.take() else {
            return Ok(());
        };
        let mut b = Vec::with_capacity(body.len() + 12);
        master(&mut b, CLUSTER, &body);
        self.write_all(&b)?;
        if let Some(f) = self.file.as_mut() {
            f.flush().map_err(|e| io_error(&self.path, e))?;
        }
        Ok(())
    }

    fn write_all(&mut self, b: &[u8]) -> Result<(), MediaError> {
        match self.file.as_mut() {
            Some(f) => f.write_all(b).map_err(|e| io_error(&self.path, e)),
            None => Ok(()),
        }
    }

    /// Writes the last cluster and fills in the Segment's size and the
    /// Duration; the file's path.
    pub fn finish(mut self) -> Result<PathBuf, MediaError> {
        self.flush_cluster()?;
        let duration_ms = self.last_ms as f64 + f64::from(crate::FRAME_MS);
        let path = self.path.clone();
        let Some(mut f) = self.file.take() else {
            return Ok(path);
        };
        let end = f.stream_position().map_err(|e| io_error(&path, e))?;
        let mut seg = [0u8; 8];
        seg.copy_from_slice(&(end - self.segment_data_at).to_be_bytes());
        seg[0] = 0x01; // 8-byte vint marker (sizes stay far below 2^56)
        f.seek(SeekFrom::Start(self.segment_size_at))
            .and_then(|_| f.write_all(&seg))
            .and_then(|_| f.seek(SeekFrom::Start(self.duration_at)))
            .and_then(|_| f.write_all(&duration_ms.to_be_bytes()))
            .and_then(|_| f.sync_all())
            .map_err(|e| io_error(&path, e))?;
        Ok(path)
    }
}

impl Drop for WebmWriter {
    fn drop(&mut self) {
        // Dropped without finish (an error elsewhere): keep what was built.
        if self.file.is_some() {
            let _ = self.flush_cluster();
        }
    }
}

/// A random, non-zero track UID (std's per-process random hasher keys are
/// random enough for an identifier no two tracks of a file share).
fn track_uid(track: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(track);
    (h.finish() >> 8).max(1)
}

fn io_error(path: &Path, e: std::io::Error) -> MediaError {
    MediaError::Io(std::io::Error::new(
        e.kind(),
        format!("{}: {e}", path.display()),
    ))
}

/// An element ID: its bytes as written (they carry their own length marker).
fn id(b: &mut Vec<u8>, id: u32) {
    let bytes = id.to_be_bytes();
    let skip = bytes.iter().take_while(|&&x| x == 0).count();
    b.extend_from_slice(&bytes[skip..]);
}

/// A size as the shortest EBML variable-length integer.
fn size(b: &mut Vec<u8>, n: u64) {
    // Length L holds values below 2^(7L) - 1 (all ones means "unknown").
    let len = (1..=8u32).find(|&l| n < (1u64 << (7 * l)) - 1).unwrap_or(8);
    let marked = n | (1u64 << (7 * len));
    let bytes = marked.to_be_bytes();
    b.extend_from_slice(&bytes[8 - len as usize..]);
}

fn uint(b: &mut Vec<u8>, el: u32, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|&&x| x == 0).count().min(7);
    id(b, el);
    size(b, (8 - skip) as u64);
    b.extend_from_slice(&bytes[skip..]);
}

fn float(b: &mut Vec<u8>, el: u32, v: f64) {
    id(b, el);
    size(b, 8);
    b.extend_from_slice(&v.to_be_bytes());
}

fn string(b: &mut Vec<u8>, el: u32, s: &str) {
    binary(b, el, s.as_bytes());
}

fn binary(b: &mut Vec<u8>, el: u32, data: &[u8]) {
    id(b, el);
    size(b, data.len() as u64);
    b.extend_from_slice(data);
}

fn master(b: &mut Vec<u8>, el: u32, body: &[u8]) {
    binary(b, el, body);
}

/// Whether a VP8 frame is a key frame (RFC 6386 §9.1: bit 0 of the frame
/// tag is 0 for key frames).
pub fn is_vp8_key_frame(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 1 == 0)
}

/// What a WebM file holds, as read back by [`probe`]: enough to check a
/// recording without outside tools.
#[derive(Debug, Clone, PartialEq)]
pub struct WebmInfo {
    pub doc_type: String,
    pub codecs: Vec<String>,
    pub width: u32,
    pub height: u32,
    /// From Info's Duration (ms).
    pub duration_ms: f64,
    pub video_frames: u64,
    pub video_key_frames: u64,
    pub audio_frames: u64,
    /// Timestamp of the last block (ms).
    pub last_ms: u64,
    /// The Segment's size was filled in (the file was finished).
    pub finished: bool,
}

/// Reads a WebM file's structure back (the subset this writer produces:
/// known-size clusters of SimpleBlocks; a Segment of unknown size is read
/// to the end of the file).
pub fn probe(bytes: &[u8]) -> Result<WebmInfo, MediaError> {
    let bad = |why: &str| MediaError::Format(format!("WebM: {why}"));
    let mut info = WebmInfo {
        doc_type: String::new(),
        codecs: Vec::new(),
        width: 0,
        height: 0,
        duration_ms: 0.0,
        video_frames: 0,
        video_key_frames: 0,
        audio_frames: 0,
        last_ms: 0,
        finished: false,
    };
    let mut r = Reader { b: bytes, at: 0 };
    let (el, len) = r.header()?;
    if el != EBML {
        return Err(bad("not an EBML file"));
    }
    let ebml_end = r.end(len)?;
    while r.at < ebml_end {
        let (el, len) = r.header()?;
        let body = r.body(len)?;
        if el == DOC_TYPE {
            info.doc_type = String::from_utf8_lossy(body).into_owned();
        }
    }
    let (el, len) = r.header()?;
    if el != SEGMENT {
        return Err(bad("no Segment"));
    }
    info.finished = len.is_some();
    let seg_end = r.end(len)?;
    while r.at < seg_end {
        let (el, len) = r.header()?;
        let body = r.body(len)?;
        let mut inner = Reader { b: body, at: 0 };
        match el {
            INFO => {
                while inner.at < body.len() {
                    let (e, l) = inner.header()?;
                    let v = inner.body(l)?;
                    if e == DURATION {
                        let a: [u8; 8] = v.try_into().map_err(|_| bad("odd Duration"))?;
                        info.duration_ms = f64::from_be_bytes(a);
                    }
                }
            }
            TRACKS => {
                while inner.at < body.len() {
                    let (_, l) = inner.header()?;
                    let entry = inner.body(l)?;
                    let mut t = Reader { b: entry, at: 0 };
                    while t.at < entry.len() {
                        let (e, l) = t.header()?;
                        let v = t.body(l)?;
                        match e {
                            CODEC_ID => info.codecs.push(String::from_utf8_lossy(v).into_owned()),
                            VIDEO => {
                                let mut vr = Reader { b: v, at: 0 };
                                while vr.at < v.len() {
                                    let (e, l) = vr.header()?;
                                    let x = be_uint(vr.body(l)?);
                                    match e {
                                        PIXEL_WIDTH => info.width = x as u32,
                                        PIXEL_HEIGHT => info.height = x as u32,
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            CLUSTER => {
                let mut start = 0u64;
                while inner.at < body.len() {
                    let (e, l) = inner.header()?;
                    let v = inner.body(l)?;
                    match e {
                        TIMESTAMP => start = be_uint(v),
                        SIMPLE_BLOCK => {
                            if v.len() < 4 {
                                return Err(bad("short SimpleBlock"));
                            }
                            let rel = i16::from_be_bytes([v[1], v[2]]);
                            let ms = start.saturating_add_signed(i64::from(rel));
                            info.last_ms = info.last_ms.max(ms);
                            match v[0] & 0x7F {
                                t if t == VIDEO_TRACK => {
                                    info.video_frames += 1;
                                    if v[3] & 0x80 != 0 {
                                        info.video_key_frames += 1;
                                    }
                                }
                                t if t == AUDIO_TRACK => info.audio_frames += 1,
                                _ => return Err(bad("block of an unknown track")),
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

fn be_uint(v: &[u8]) -> u64 {
    v.iter()
        .take(8)
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn vint(&mut self, keep_marker: bool) -> Result<(u64, usize), MediaError> {
        let first = *self
            .b
            .get(self.at)
            .ok_or_else(|| MediaError::Format("WebM: cut short".into()))?;
        let len = first.leading_zeros() as usize + 1;
        if len > 8 {
            return Err(MediaError::Format(
                "WebM: bad variable-length integer".into(),
            ));
        }
        let bytes = self
            .b
            .get(self.at..self.at + len)
            .ok_or_else(|| MediaError::Format("WebM: cut short".into()))?;
        let mut v = u64::from(if keep_marker {
            first
        } else {
            first & 0xFFu8.checked_shr(len as u32).unwrap_or(0)
        });
        for &b in &bytes[1..] {
            v = (v << 8) | u64::from(b);
        }
        self.at += len;
        Ok((v, len))
    }

    /// An element's ID and size (`None` when unknown).
    fn header(&mut self) -> Result<(u32, Option<u64>), MediaError> {
        let (el, _) = self.vint(true)?;
        let (len, n) = self.vint(false)?;
        let unknown = len == (1u64 << (7 * n)) - 1;
        Ok((el as u32, (!unknown).then_some(len)))
    }

    fn end(&self, len: Option<u64>) -> Result<usize, MediaError> {
        match len {
            None => Ok(self.b.len()),
            Some(l) => usize::try_from(l)
                .ok()
                .and_then(|l| self.at.checked_add(l))
                .filter(|&e| e <= self.b.len())
                .ok_or_else(|| MediaError::Format("WebM: element past the end".into())),
        }
    }

    fn body(&mut self, len: Option<u64>) -> Result<&[u8], MediaError> {
        let end = self.end(len)?;
        let v = &self.b[self.at..end];
        self.at = end;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> WebmHeader {
        WebmHeader {
            width: 640,
            height: 480,
            opus_pre_skip: 312,
            title: "Call with 202".into(),
            unix_time: 1_796_000_000,
        }
    }

    #[test]
    fn sizes_are_the_shortest_vints() {
        let enc = |n| {
            let mut b = Vec::new();
            size(&mut b, n);
            b
        };
        assert_eq!(enc(0), [0x80]);
        assert_eq!(enc(126), [0xFE]);
        // 127 is all ones in one byte (unknown): it takes two.
        assert_eq!(enc(127), [0x40, 0x7F]);
        assert_eq!(enc(16_382), [0x7F, 0xFE]);
        assert_eq!(enc(16_383), [0x20, 0x3F, 0xFF]);
    }

    #[test]
    fn a_finished_recording_reads_back_with_both_tracks_and_its_duration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("call.webm");
        let mut w = WebmWriter::create_new(&path, &header()).expect("create");
        // 3 s: audio every 20 ms, video every 33 ms with a key frame a second.
        let mut v = 0u64;
        for ms in (0..3000).step_by(20) {
            w.write_audio(ms, &[0xFC, 1, 2, 3]).expect("audio");
            while v * 33 <= ms {
                let key = v % 30 == 0;
                let frame = if key { [0x10, 0, 0] } else { [0x11, 0, 0] };
                w.write_video(v * 33, key, &frame).expect("video");
                v += 1;
            }
        }
        assert_eq!(w.frames(), (v, 150));
        let path = w.finish().expect("finish");
        let info = probe(&std::fs::read(path).expect("read")).expect("probe");
        assert_eq!(info.doc_type, "webm");
        assert_eq!(info.codecs, ["V_VP8", "A_OPUS"]);
        assert_eq!((info.width, info.height), (640, 480));
        assert_eq!(info.audio_frames, 150);
        assert_eq!(info.video_frames, v);
        assert_eq!(info.video_key_frames, v.div_ceil(30));
        assert!(info.finished);
        assert_eq!(info.last_ms, 2980);
        assert_eq!(info.duration_ms, 3000.0);
    }

    #[test]
    fn a_block_behind_its_cluster_joins_it_and_clusters_never_go_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("order.webm");
        let mut w = WebmWriter::create_new(&path, &header()).expect("create");
        w.write_audio(0, &[1]).expect("audio");
        // A key frame a second in opens a cluster at 1,005 ms; the audio
        // frame of 1,000 ms comes just after it.
        w.write_video(1005, true, &[0x10]).expect("video");
        w.write_audio(1000, &[1]).expect("late audio");
        w.write_audio(1020, &[1]).expect("audio");
        let path = w.finish().expect("finish");
        let bytes = std::fs::read(path).expect("read");
        let info = probe(&bytes).expect("probe");
        assert_eq!((info.audio_frames, info.video_frames), (3, 1));
        assert_eq!(info.last_ms, 1020);
        // Exactly two clusters, the second from 1,005 ms.
        let clusters = bytes
            .windows(4)
            .filter(|w| *w == CLUSTER.to_be_bytes())
            .count();
        assert_eq!(clusters, 2);
    }

    #[test]
    fn a_recording_cut_short_by_a_crash_is_still_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cut.webm");
        let mut w = WebmWriter::create_new(&path, &header()).expect("create");
        for ms in (0..12_000).step_by(20) {
            w.write_audio(ms, &[0xFC]).expect("audio");
        }
        // As if killed: the file as it is on disk now, without finish or drop.
        let on_disk = std::fs::read(&path).expect("read");
        std::mem::forget(w);
        let info = probe(&on_disk).expect("probe");
        assert!(!info.finished);
        // Clusters close every 5 s: the first two are there.
        assert_eq!(info.audio_frames, 500);
        assert_eq!(info.last_ms, 9980);
    }

    #[test]
    fn an_existing_file_is_never_overwritten_and_bad_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.webm");
        std::fs::write(&path, b"keep").expect("write");
        let err = WebmWriter::create_new(&path, &header()).expect_err("exists");
        assert!(matches!(err, MediaError::Io(e) if e.kind() == std::io::ErrorKind::AlreadyExists));
        assert_eq!(std::fs::read(&path).expect("read"), b"keep");
        assert!(probe(b"").is_err());
        assert!(probe(b"\x1A\x45\xDF\xA3\x88\x42").is_err());
        assert!(probe(&[0u8; 64]).is_err());
    }

    #[test]
    fn vp8_key_frames_are_told_by_their_first_bit() {
        assert!(is_vp8_key_frame(&[0x50, 0x2D, 0x01]));
        assert!(!is_vp8_key_frame(&[0x51]));
        assert!(!is_vp8_key_frame(&[]));
    }
}
