//! Turning `--audio-in` / `--audio-out` specs into sources and sinks, and
//! the station's own sound that both modes (office station and standalone
//! terminal) share: the input and output every call uses, the ringtone and
//! ringback, voicemail playback, and reopening the devices on SIGHUP.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use keyline_media::{NullSink, SilenceSource, Sink, Source, WavSink, FRAME_SAMPLES};
use keyline_net::lifecycle;
use tokio::task::JoinHandle;

use crate::session::{SharedSink, SharedSource};
use crate::video::{LocalVideo, SharedVideo};

/// The station's audio input and output, its camera and picture output,
/// and the signals it plays on its own (outside a call's media session).
pub(crate) struct LocalAudio {
    pub(crate) source: SharedSource,
    pub(crate) sink: SharedSink,
    pub(crate) video: SharedVideo,
    /// What an incoming call rings with.
    ringtone: Arc<Vec<i16>>,
    /// What a caller hears while the far end rings: 425 Hz, 1 s on, 4 s off.
    ringback: Arc<Vec<i16>>,
    /// The specs, for reopening.
    audio_in: String,
    audio_out: String,
}

impl LocalAudio {
    /// Open `--audio-in`, `--audio-out`, `--video-in`, `--video-out` and
    /// the ringtone (a WAV file, or the built-in one), in that order, and
    /// serve the pictures to windows on `STATE/video.sock`.
    pub(crate) fn open(
        audio_in: &str,
        audio_out: &str,
        video_in: &str,
        video_out: &str,
        ringtone: Option<&Path>,
        state_dir: &Path,
    ) -> anyhow::Result<LocalAudio> {
        let source = open_source(audio_in)?;
        let sink = open_sink(audio_out)?;
        let mut video = LocalVideo::open(video_in, video_out)?;
        video.viewers = Some(crate::viewers::Viewers::start(state_dir)?);
        let ringtone = load_samples(ringtone, "ringtone", keyline_media::ringtone_samples)?;
        Ok(LocalAudio {
            source: Arc::new(Mutex::new(source)),
            sink: Arc::new(Mutex::new(sink)),
            video: Arc::new(Mutex::new(video)),
            ringtone: Arc::new(ringtone),
            ringback: Arc::new(keyline_media::tone_sequence(&[(425.0, 1000), (0.0, 4000)])),
            audio_in: audio_in.to_string(),
            audio_out: audio_out.to_string(),
        })
    }

    /// Ring for an incoming call until the handle is aborted.
    pub(crate) fn ring(&self) -> JoinHandle<()> {
        self.loop_tone(self.ringtone.clone())
    }

    /// Play ringback (the far end rings) until the handle is aborted.
    pub(crate) fn ringback(&self) -> JoinHandle<()> {
        self.loop_tone(self.ringback.clone())
    }

    /// Play a looping signal on the output until stopped.
    fn loop_tone(&self, tone: Arc<Vec<i16>>) -> JoinHandle<()> {
        let sink = self.sink.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut pos = 0usize;
            let mut frame = vec![0i16; FRAME_SAMPLES];
            loop {
                tick.tick().await;
                for s in frame.iter_mut() {
                    *s = if tone.is_empty() {
                        0
                    } else {
                        tone[pos % tone.len()]
                    };
                    pos += 1;
                }
                if let Ok(mut k) = sink.lock() {
                    let _ = k.write_frame(&frame);
                }
            }
        })
    }

    /// Play `pcm` (48 kHz mono, e.g. voicemail) once on the output, in real
    /// time, unless the handle is aborted first.
    pub(crate) fn play(&self, pcm: Vec<i16>) -> JoinHandle<()> {
        let sink = self.sink.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for chunk in pcm.chunks(FRAME_SAMPLES) {
                tick.tick().await;
                let mut frame = chunk.to_vec();
                frame.resize(FRAME_SAMPLES, 0);
                if let Ok(mut k) = sink.lock() {
                    let _ = k.write_frame(&frame);
                }
            }
        })
    }

    /// SIGHUP: reopen the audio input and output (a headset was plugged in,
    /// a file was rotated), telling the service manager. On error the old
    /// ones stay.
    /// The daemon's life after start-up: READY with `status`, WATCHDOG
    /// while the runtime runs tasks and `healthy` says the state is not
    /// wedged, SIGHUP reopens the audio devices; returns on SIGTERM after
    /// STOPPING ("hanging up").
    pub(crate) async fn serve_until_stopped<H>(
        &self,
        signals: &mut lifecycle::Signals,
        status: &str,
        healthy: H,
    ) where
        H: Fn() -> bool + Clone + Send + Sync + 'static,
    {
        lifecycle::ready(status);
        lifecycle::spawn_watchdog(move || {
            let healthy = healthy.clone();
            async move { tokio::spawn(async {}).await.is_ok() && healthy() }
        });
        while let lifecycle::Signal::Reload = signals.recv().await {
            self.reopen();
        }
        lifecycle::stopping("hanging up");
    }

    pub(crate) fn reopen(&self) {
        lifecycle::reloading();
        let fresh =
            open_source(&self.audio_in).and_then(|src| Ok((src, open_sink(&self.audio_out)?)));
        match fresh {
            Ok((src, sink)) => {
                if let Ok(mut s) = self.source.lock() {
                    *s = src;
                }
                if let Ok(mut k) = self.sink.lock() {
                    let _ = k.finish();
                    *k = sink;
                }
                lifecycle::ready("audio devices reopened");
            }
            Err(e) => lifecycle::ready(&format!(
                "reload failed, keeping the old audio devices: {e:#}"
            )),
        }
    }

    /// Finish the output (a WAV file gets its final header) on shutdown.
    pub(crate) fn finish(&self) {
        if let Ok(mut s) = self.sink.lock() {
            let _ = s.finish();
        }
    }
}

/// Samples from the WAV file at `path` (48 kHz mono), or `default()` when
/// there is none; `what` names the file in an error.
pub(crate) fn load_samples(
    path: Option<&Path>,
    what: &str,
    default: impl FnOnce() -> Vec<i16>,
) -> anyhow::Result<Vec<i16>> {
    match path {
        Some(p) => {
            keyline_media::read_wav_mono48k(p).with_context(|| format!("{what} {}", p.display()))
        }
        None => Ok(default()),
    }
}

/// `device` (the sound card), `tone:HZ`, `silence`, or a WAV file. A
/// missing sound card is reported and replaced by silence: a station
/// without audio hardware still rings, answers and records.
pub fn open_source(spec: &str) -> anyhow::Result<Box<dyn Source>> {
    if spec == "device" || spec.starts_with("device:") {
        let name = spec.strip_prefix("device:");
        return Ok(match open_input_device(name) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("keyline-agent: no microphone ({e}); sending silence");
                Box::new(SilenceSource::new())
            }
        });
    }
    Ok(keyline_media::parse_source(spec)?)
}

/// `device`, `null`, or a WAV file to write what the station hears.
pub fn open_sink(spec: &str) -> anyhow::Result<Box<dyn Sink>> {
    if spec == "device" || spec.starts_with("device:") {
        let name = spec.strip_prefix("device:");
        return Ok(match open_output_device(name) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("keyline-agent: no speaker ({e}); audio output discarded");
                Box::new(NullSink::new())
            }
        });
    }
    if spec == "null" {
        return Ok(Box::new(NullSink::new()));
    }
    Ok(Box::new(WavSink::create(Path::new(spec))?))
}

#[cfg(feature = "device")]
fn open_input_device(name: Option<&str>) -> anyhow::Result<Box<dyn Source>> {
    Ok(keyline_media::device::open_input(name)?)
}

#[cfg(feature = "device")]
fn open_output_device(name: Option<&str>) -> anyhow::Result<Box<dyn Sink>> {
    Ok(keyline_media::device::open_output(name)?)
}

#[cfg(not(feature = "device"))]
fn open_input_device(_name: Option<&str>) -> anyhow::Result<Box<dyn Source>> {
    anyhow::bail!("this build has no sound-card support (built without the `device` feature)")
}

#[cfg(not(feature = "device"))]
fn open_output_device(_name: Option<&str>) -> anyhow::Result<Box<dyn Sink>> {
    anyhow::bail!("this build has no sound-card support (built without the `device` feature)")
}
