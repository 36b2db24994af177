//! Call recording: both directions of a call mixed into one Ogg Opus file,
//! named after the call's start time (UTC) and the peer, e.g.
//! `2026-11-29T14-03-22_202.opus`; a video call into a WebM file
//! ([`crate::webm`]: the peer's picture and the mixed sound, `….webm`).

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::webm::{is_vp8_key_frame, WebmHeader, WebmWriter};
use crate::{MediaError, OggOpusWriter, OpusEncoder, FRAME_MS, FRAME_SAMPLES};

/// Longest peer part of a recording's file name (characters).
pub const MAX_PEER_NAME: usize = 64;
/// Numbered alternatives tried when a recording's file name is taken.
const MAX_NAME_TRIES: u32 = 1000;

/// Records a call: each 20 ms the local (microphone) and remote (received)
/// frames are mixed, summed with saturation so both stay at their own level,
/// and encoded to an Ogg Opus file (see [`OggOpusWriter`]: playable up to the
/// last second even if the process is killed) or, for a video call, a WebM
/// file that also holds the peer's VP8 frames as they arrived.
#[derive(Debug)]
pub struct CallRecorder {
    out: Output,
    path: PathBuf,
    mix: Vec<i16>,
}

#[derive(Debug)]
enum Output {
    Ogg(OggOpusWriter),
    Webm(Box<WebmOut>),
}

#[derive(Debug)]
struct WebmOut {
    writer: WebmWriter,
    encoder: OpusEncoder,
    /// Play time of the next audio frame (ms from the start). The sound's
    /// frame count is the file's clock: a video frame is placed at the
    /// last audio frame's time plus the wall time since it was written.
    audio_ms: u64,
    /// When the last audio frame was written (none yet: the recording's
    /// start).
    audio_at: Option<Instant>,
    start: Instant,
    /// No video frame is written until a key frame comes (at the start and
    /// after frames were lost): the ones between could not be decoded.
    waiting_for_key: bool,
}

/// The picture size a video recording declares (the frames' own headers
/// carry theirs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoSize {
    pub width: u32,
    pub height: u32,
}

impl CallRecorder {
    /// Starts a recording in `dir` (which must exist) named by `when` (UTC)
    /// and `peer` (sanitised, see [`sanitize_peer`]). An existing recording
    /// is never overwritten: `-2`, `-3`... is added to the name instead.
    pub fn create(dir: &Path, peer: &str, when: SystemTime) -> Result<Self, MediaError> {
        Self::create_as(dir, peer, when, None)
    }

    /// [`create`](Self::create) for a video call: a WebM file.
    pub fn create_video(
        dir: &Path,
        peer: &str,
        when: SystemTime,
        size: VideoSize,
    ) -> Result<Self, MediaError> {
        Self::create_as(dir, peer, when, Some(size))
    }

    fn create_as(
        dir: &Path,
        peer: &str,
        when: SystemTime,
        video: Option<VideoSize>,
    ) -> Result<Self, MediaError> {
        let stamp = UtcTime::from_system_time(when);
        let base = format!("{}_{}", stamp.file_stamp(), sanitize_peer(peer));
        let title = format!("Call with {peer}");
        let date = stamp.iso8601();
        let tags = [("TITLE", title.as_str()), ("DATE", date.as_str())];
        let ext = if video.is_some() { "webm" } else { "opus" };
        let mut last_err = None;
        for n in 1..=MAX_NAME_TRIES {
            let name = if n == 1 {
                format!("{base}.{ext}")
            } else {
                format!("{base}-{n}.{ext}")
            };
            let path = dir.join(name);
            let made = match video {
                None => OggOpusWriter::create_new_with_tags(&path, &tags).map(Output::Ogg),
                Some(size) => webm_out(&path, &title, when, size),
            };
            match made {
                Ok(out) => {
                    return Ok(Self {
                        out,
                        path,
                        mix: vec![0; FRAME_SAMPLES],
                    })
                }
                Err(MediaError::Io(e)) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    last_err = Some(MediaError::Io(e));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            MediaError::Format(format!("{}: no free recording name", dir.display()))
        }))
    }

    /// Mixes and records one 20 ms frame of each direction. Either side may
    /// be shorter than [`FRAME_SAMPLES`] (even empty, e.g. no packet arrived):
    /// the rest is silence. Longer frames are an error.
    pub fn write(&mut self, local: &[i16], remote: &[i16]) -> Result<(), MediaError> {
        if local.len() > FRAME_SAMPLES || remote.len() > FRAME_SAMPLES {
            return Err(MediaError::Format(format!(
                "call recorder: frames of {} and {} samples (at most {FRAME_SAMPLES})",
                local.len(),
                remote.len()
            )));
        }
        for (i, m) in self.mix.iter_mut().enumerate() {
            let a = local.get(i).copied().unwrap_or(0);
            let b = remote.get(i).copied().unwrap_or(0);
            *m = a.saturating_add(b);
        }
        match &mut self.out {
            Output::Ogg(w) => w.write_frame(&self.mix),
            Output::Webm(w) => {
                let packet = w.encoder.encode(&self.mix)?;
                w.writer.write_audio(w.audio_ms, &packet)?;
                w.audio_at = Some(Instant::now());
                w.audio_ms += u64::from(FRAME_MS);
                Ok(())
            }
        }
    }

    /// Whether this recording keeps video (a WebM file).
    pub fn is_video(&self) -> bool {
        matches!(self.out, Output::Webm(_))
    }

    /// Records one received VP8 frame, at the time it arrived. Until a key
    /// frame comes (at the start, and after [`video_gap`](Self::video_gap))
    /// frames are skipped: see [`wants_key_frame`](Self::wants_key_frame).
    /// Nothing happens for an audio-only recording.
    pub fn write_video(&mut self, frame: &[u8]) -> Result<(), MediaError> {
        let Output::Webm(w) = &mut self.out else {
            return Ok(());
        };
        let key = is_vp8_key_frame(frame);
        if w.waiting_for_key && !key {
            return Ok(());
        }
        w.waiting_for_key = false;
        let (base, since) = match w.audio_at {
            Some(at) => (w.audio_ms.saturating_sub(u64::from(FRAME_MS)), at),
            None => (0, w.start),
        };
        let ms = base.saturating_add(u64::try_from(since.elapsed().as_millis()).unwrap_or(0));
        w.writer.write_video(ms, key, frame)
    }

    /// Frames were lost or could not be decoded: skip to the next key frame.
    pub fn video_gap(&mut self) {
        if let Output::Webm(w) = &mut self.out {
            w.waiting_for_key = true;
        }
    }

    /// A video recording that waits for a key frame (the sender should be
    /// asked for one).
    pub fn wants_key_frame(&self) -> bool {
        matches!(&self.out, Output::Webm(w) if w.waiting_for_key)
    }

    /// Ends the recording and returns its path.
    pub fn finish(self) -> Result<PathBuf, MediaError> {
        match self.out {
            Output::Ogg(w) => {
                w.finish()?;
                Ok(self.path)
            }
            Output::Webm(w) => w.writer.finish(),
        }
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Audio recorded so far (48 kHz samples).
    pub fn samples_written(&self) -> u64 {
        match &self.out {
            Output::Ogg(w) => w.samples_written(),
            Output::Webm(w) => w.writer.frames().1 * FRAME_SAMPLES as u64,
        }
    }
}

fn webm_out(
    path: &Path,
    title: &str,
    when: SystemTime,
    size: VideoSize,
) -> Result<Output, MediaError> {
    let mut encoder = OpusEncoder::new()?;
    let pre_skip = u16::try_from(encoder.lookahead()?).unwrap_or(u16::MAX);
    let unix_time = match when.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    let header = WebmHeader {
        width: size.width,
        height: size.height,
        opus_pre_skip: pre_skip,
        title: title.to_string(),
        unix_time,
    };
    let writer = WebmWriter::create_new(path, &header)?;
    Ok(Output::Webm(Box::new(WebmOut {
        writer,
        encoder,
        audio_ms: 0,
        audio_at: None,
        start: Instant::now(),
        waiting_for_key: true,
    })))
}

/// Makes `peer` safe as part of a file name: ASCII letters, digits and
/// `+ - . @ _` are kept, everything else (slashes, spaces, control and
/// non-ASCII characters) becomes `_`; a leading `.` or `-` becomes `_`; at
/// most [`MAX_PEER_NAME`] characters; empty gives `unknown`.
pub fn sanitize_peer(peer: &str) -> String {
    let mut out: String = peer
        .chars()
        .take(MAX_PEER_NAME)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '@' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(['.', '-']) {
        out.replace_range(..1, "_");
    }
    if out.is_empty() {
        out.push_str("unknown");
    }
    out
}

/// A UTC calendar time (proleptic Gregorian), to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    /// Year (e.g. 2026).
    pub year: i64,
    /// Month, 1 to 12.
    pub month: u32,
    /// Day of the month, 1 to 31.
    pub day: u32,
    /// Hour, 0 to 23.
    pub hour: u32,
    /// Minute, 0 to 59.
    pub minute: u32,
    /// Second, 0 to 59.
    pub second: u32,
}

impl UtcTime {
    /// The calendar time `secs` seconds after 1970-01-01T00:00:00Z
    /// (negative: before).
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        // Days to civil date (H. Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097; // [0, 146096]
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
        let mp = (5 * doy + 2) / 153; // [0, 11], from March
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year,
            month: month as u32,
            day: day as u32,
            hour: (sod / 3_600) as u32,
            minute: (sod / 60 % 60) as u32,
            second: (sod % 60) as u32,
        }
    }

    /// The calendar time of `t` (whole seconds, rounded down).
    pub fn from_system_time(t: SystemTime) -> Self {
        let secs = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2),
            Err(e) => {
                let d = e.duration();
                let s = i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2);
                -s - i64::from(d.subsec_nanos() > 0)
            }
        };
        Self::from_unix(secs)
    }

    /// `YYYY-MM-DDTHH-MM-SS`: ISO 8601 with `-` for `:` (safe in file names
    /// everywhere).
    pub fn file_stamp(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}-{:02}-{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `YYYY-MM-DDTHH:MM:SSZ`.
    pub fn iso8601(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(secs: i64) -> String {
        UtcTime::from_unix(secs).file_stamp()
    }

    #[test]
    fn known_dates() {
        assert_eq!(stamp(0), "1970-01-01T00-00-00");
        assert_eq!(stamp(1_795_961_002), "2026-11-29T14-03-22");
        // Leap days: 2000 (divisible by 400) and 2024 are leap years.
        assert_eq!(stamp(951_825_600), "2000-02-29T12-00-00");
        assert_eq!(stamp(951_868_800), "2000-03-01T00-00-00");
        assert_eq!(stamp(1_709_251_199), "2024-02-29T23-59-59");
        assert_eq!(stamp(1_709_251_200), "2024-03-01T00-00-00");
        // 2100 is not: February 28th is followed by March 1st.
        assert_eq!(stamp(4_107_456_000), "2100-02-28T00-00-00");
        assert_eq!(stamp(4_107_542_400), "2100-03-01T00-00-00");
        assert_eq!(stamp(946_684_799), "1999-12-31T23-59-59");
        assert_eq!(stamp(-1), "1969-12-31T23-59-59");
        assert_eq!(
            UtcTime::from_unix(1_795_961_002).iso8601(),
            "2026-11-29T14:03:22Z"
        );
    }

    #[test]
    fn system_time_conversion() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_795_961_002_900);
        assert_eq!(
            UtcTime::from_system_time(t).file_stamp(),
            "2026-11-29T14-03-22"
        );
        let before = UNIX_EPOCH - std::time::Duration::from_millis(500);
        assert_eq!(
            UtcTime::from_system_time(before).file_stamp(),
            "1969-12-31T23-59-59"
        );
    }

    #[test]
    fn a_video_call_is_recorded_as_webm_from_its_first_key_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let size = VideoSize {
            width: 640,
            height: 480,
        };
        let when = UNIX_EPOCH + std::time::Duration::from_secs(1_795_961_002);
        let mut rec = CallRecorder::create_video(dir.path(), "202", when, size).expect("create");
        assert!(rec.is_video() && rec.wants_key_frame());
        assert_eq!(
            rec.path().file_name().and_then(|n| n.to_str()),
            Some("2026-11-29T14-03-22_202.webm")
        );
        let tone = crate::tone_sequence(&[(440.0, 1000)]);
        rec.write_video(&[0x11, 0, 0]).expect("inter frame skipped");
        rec.write_video(&[0x10, 0, 0]).expect("key frame");
        assert!(!rec.wants_key_frame());
        for frame in tone.chunks(FRAME_SAMPLES) {
            rec.write(frame, &[]).expect("audio");
            rec.write_video(&[0x11, 0, 0]).expect("inter frame");
        }
        rec.video_gap();
        rec.write_video(&[0x11, 0, 0]).expect("skipped after a gap");
        assert!(rec.wants_key_frame());
        assert_eq!(rec.samples_written(), tone.len() as u64);
        let path = rec.finish().expect("finish");
        let info = crate::webm::probe(&std::fs::read(path).expect("read")).expect("probe");
        assert_eq!(info.codecs, ["V_VP8", "A_OPUS"]);
        assert_eq!((info.video_frames, info.video_key_frames), (51, 1));
        assert_eq!(info.audio_frames, 50);
        assert!(info.duration_ms >= 1000.0, "{info:?}");
        // An audio call keeps its Ogg Opus file, and ignores video.
        let mut audio = CallRecorder::create(dir.path(), "202", when).expect("create");
        audio.write_video(&[0x10]).expect("ignored");
        assert!(!audio.is_video() && !audio.wants_key_frame());
        assert!(audio.path().to_string_lossy().ends_with(".opus"));
    }

    #[test]
    fn peer_sanitising() {
        assert_eq!(sanitize_peer("202"), "202");
        assert_eq!(sanitize_peer("alice@office"), "alice@office");
        assert_eq!(sanitize_peer("+1 555/123"), "+1_555_123");
        assert_eq!(sanitize_peer("../../etc/passwd"), "_._.._etc_passwd");
        assert_eq!(sanitize_peer("-rf"), "_rf");
        assert_eq!(sanitize_peer(""), "unknown");
        assert_eq!(sanitize_peer("Zoë\n"), "Zo__");
        assert_eq!(sanitize_peer(&"x".repeat(200)).len(), MAX_PEER_NAME);
    }
}
