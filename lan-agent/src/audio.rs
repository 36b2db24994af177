//! Turning `--audio-in` / `--audio-out` specs into sources and sinks, and
//! the station's own sound that both modes (office station and standalone
//! terminal) share: the input and output every call uses, the ringtone and
//! ringback, voicemail playback, and reopening the devices on SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use keyline_media::{NullSink, SilenceSource, Sink, Source, WavSink, FRAME_SAMPLES};
use keyline_net::lifecycle;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::session::{SharedSink, SharedSource};
use crate::video::{LocalVideo, SharedVideo};

/// The audio the station was told to use: by its command line, else by
/// what the person last chose in the phone window (`audio-set`, kept in
/// `STATE/audio.json`), else the sound card.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AudioChoice {
    /// The microphone: `device`, `device:ID`, `tone:HZ`, `silence` or a
    /// WAV file.
    #[serde(rename = "in", default)]
    pub input: Option<String>,
    /// The speaker: `device`, `device:ID`, `null` or a WAV file.
    #[serde(default)]
    pub out: Option<String>,
    /// Where the ringtone plays (none: on the speaker).
    #[serde(default)]
    pub ring_out: Option<String>,
    /// The ringtone, a 48 kHz WAV file (none: the built-in ring).
    #[serde(default)]
    pub ringtone: Option<PathBuf>,
}

impl AudioChoice {
    /// What `STATE/audio.json` holds; nothing when it is absent or broken
    /// (a broken one is reported and ignored).
    pub fn load(state_dir: &Path) -> AudioChoice {
        let path = state_dir.join(CHOICE_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                eprintln!("keyline-agent: ignoring {}: {e}", path.display());
                AudioChoice::default()
            }),
            Err(_) => AudioChoice::default(),
        }
    }

    fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let path = state_dir.join(CHOICE_FILE);
        let tmp = state_dir.join(format!("{CHOICE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// Where the window's audio choices are kept in the state directory.
const CHOICE_FILE: &str = "audio.json";

/// The station's audio input and output, its camera and picture output,
/// and the signals it plays on its own (outside a call's media session).
pub(crate) struct LocalAudio {
    pub(crate) source: SharedSource,
    pub(crate) sink: SharedSink,
    pub(crate) video: SharedVideo,
    /// Where the ringtone plays, when not on `sink`.
    ring_sink: Mutex<Option<SharedSink>>,
    /// What an incoming call rings with.
    ringtone: Mutex<Arc<Vec<i16>>>,
    /// What a caller hears while the far end rings: 425 Hz, 1 s on, 4 s off.
    ringback: Arc<Vec<i16>>,
    /// What is in use, for reopening, `status` and `audio-set`.
    choice: Mutex<AudioChoice>,
    state_dir: PathBuf,
}

/// `device` for a choice nobody made.
fn spec(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("device")
}

/// A changed setting of `audio-set`: absent (`None`), back to the default
/// (`Some(None)`: null or empty), or a value.
type Change = Option<Option<String>>;

fn change_of(req: &serde_json::Value, k: &str) -> Result<Change, String> {
    match req.get(k) {
        None => Ok(None),
        Some(serde_json::Value::Null) => Ok(Some(None)),
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(Some(None)),
        Some(serde_json::Value::String(s)) => Ok(Some(Some(s.trim().to_string()))),
        Some(_) => Err(format!("{k} must be a string or null")),
    }
}

impl LocalAudio {
    /// Open the microphone, speaker, ringtone device and ringtone given on
    /// the command line (`given`), else the ones last chosen in the window,
    /// else the sound card; then `--video-in` and `--video-out`; and serve
    /// the pictures to windows on `STATE/video.sock`.
    pub(crate) fn open(
        given: AudioChoice,
        video_in: &str,
        video_out: &str,
        state_dir: &Path,
    ) -> anyhow::Result<LocalAudio> {
        let saved = AudioChoice::load(state_dir);
        // A saved ringtone file that has gone is no reason not to start.
        let saved_ringtone = saved.ringtone.filter(|p| {
            let ok = p.is_file();
            if !ok {
                eprintln!(
                    "keyline-agent: the chosen ringtone {} is gone; using the built-in one",
                    p.display()
                );
            }
            ok
        });
        let choice = AudioChoice {
            input: given.input.or(saved.input),
            out: given.out.or(saved.out),
            ring_out: given.ring_out.or(saved.ring_out),
            ringtone: given.ringtone.or(saved_ringtone),
        };
        let source = open_source(spec(&choice.input))?;
        let sink = open_sink(spec(&choice.out))?;
        let ring_sink = match &choice.ring_out {
            Some(r) => Some(Arc::new(Mutex::new(open_sink(r)?))),
            None => None,
        };
        let mut video = LocalVideo::open(video_in, video_out)?;
        video.viewers = Some(crate::viewers::Viewers::start(state_dir)?);
        let ringtone = load_samples(
            choice.ringtone.as_deref(),
            "ringtone",
            keyline_media::ringtone_samples,
        )?;
        Ok(LocalAudio {
            source: Arc::new(Mutex::new(source)),
            sink: Arc::new(Mutex::new(sink)),
            video: Arc::new(Mutex::new(video)),
            ring_sink: Mutex::new(ring_sink),
            ringtone: Mutex::new(Arc::new(ringtone)),
            ringback: Arc::new(keyline_media::tone_sequence(&[(425.0, 1000), (0.0, 4000)])),
            choice: Mutex::new(choice),
            state_dir: state_dir.to_path_buf(),
        })
    }

    /// The audio in use, as `status` shows it.
    pub(crate) fn current_json(&self) -> serde_json::Value {
        let c = self.choice.lock().map(|c| c.clone()).unwrap_or_default();
        serde_json::json!({
            "in": spec(&c.input),
            "out": spec(&c.out),
            "ring_out": c.ring_out,
            "ringtone": c.ringtone.as_ref().map(|p| p.display().to_string()),
        })
    }

    /// `audio-set`: use the microphone (`in`), speaker (`out`), ringtone
    /// device (`ring_out`, null: the speaker) and ringtone file
    /// (`ringtone`, null or empty: the built-in ring) that `req` names,
    /// from now on (a call in progress too) and at the next start. Every
    /// one is opened before any is changed: on an error nothing changes.
    pub(crate) fn set(&self, req: &serde_json::Value) -> Result<serde_json::Value, String> {
        let input = change_of(req, "in")?;
        let out = change_of(req, "out")?;
        let ring_out = change_of(req, "ring_out")?;
        let ringtone = change_of(req, "ringtone")?;
        if input.is_none() && out.is_none() && ring_out.is_none() && ringtone.is_none() {
            return Err("audio-set needs in, out, ring_out or ringtone".into());
        }
        let err = |e: anyhow::Error| format!("{e:#}");
        let new_source = match &input {
            Some(i) => Some(open_source(spec(i)).map_err(err)?),
            None => None,
        };
        let new_sink = match &out {
            Some(o) => Some(open_sink(spec(o)).map_err(err)?),
            None => None,
        };
        let new_ring_sink = match &ring_out {
            Some(Some(r)) => Some(Some(open_sink(r).map_err(err)?)),
            Some(None) => Some(None),
            None => None,
        };
        let new_ringtone = match &ringtone {
            Some(r) => Some(
                load_samples(
                    r.as_deref().map(Path::new),
                    "ringtone",
                    keyline_media::ringtone_samples,
                )
                .map_err(err)?,
            ),
            None => None,
        };
        let mut choice = self
            .choice
            .lock()
            .map_err(|_| "the audio settings are unusable".to_string())?;
        if let (Some(src), Some(i)) = (new_source, input) {
            if let Ok(mut s) = self.source.lock() {
                *s = src;
            }
            choice.input = i;
        }
        if let (Some(snk), Some(o)) = (new_sink, out) {
            if let Ok(mut k) = self.sink.lock() {
                let _ = k.finish();
                *k = snk;
            }
            choice.out = o;
        }
        if let (Some(r), Some(r_spec)) = (new_ring_sink, ring_out) {
            if let Ok(mut slot) = self.ring_sink.lock() {
                if let Some(old) = slot.take() {
                    if let Ok(mut k) = old.lock() {
                        let _ = k.finish();
                    }
                }
                *slot = r.map(|k| Arc::new(Mutex::new(k)));
            }
            choice.ring_out = r_spec;
        }
        if let (Some(pcm), Some(path)) = (new_ringtone, ringtone) {
            if let Ok(mut t) = self.ringtone.lock() {
                *t = Arc::new(pcm);
            }
            choice.ringtone = path.map(PathBuf::from);
        }
        let saved = choice.save(&self.state_dir);
        drop(choice);
        saved.map_err(|e| format!("in use now, but not kept for the next start: {e:#}"))?;
        Ok(self.current_json())
    }

    /// The sound cards' inputs and outputs (`audio-devices`), each with
    /// the spec that picks it (`device:ID`). Slow (it asks ALSA): run it
    /// off the async workers.
    pub(crate) fn devices() -> Result<serde_json::Value, String> {
        let list = list_devices()?;
        let pick = |input: bool| -> Vec<serde_json::Value> {
            list.iter()
                .filter(|d| if input { d.is_input } else { d.is_output })
                .map(|d| {
                    serde_json::json!({
                        "spec": format!("device:{}", d.id),
                        "name": d.name,
                        "default": if input { d.is_default_input } else { d.is_default_output },
                    })
                })
                .collect()
        };
        Ok(serde_json::json!({"ok": true, "inputs": pick(true), "outputs": pick(false)}))
    }

    /// Ring for an incoming call until the handle is aborted.
    pub(crate) fn ring(&self) -> JoinHandle<()> {
        let tone = self.ringtone.lock().map(|t| t.clone()).unwrap_or_default();
        let sink = self
            .ring_sink
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .unwrap_or_else(|| self.sink.clone());
        loop_tone(sink, tone)
    }

    /// Play ringback (the far end rings) until the handle is aborted.
    pub(crate) fn ringback(&self) -> JoinHandle<()> {
        loop_tone(self.sink.clone(), self.ringback.clone())
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
        let c = self.choice.lock().map(|c| c.clone()).unwrap_or_default();
        let fresh = open_source(spec(&c.input)).and_then(|src| Ok((src, open_sink(spec(&c.out))?)));
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

/// Play a looping signal on `sink` until stopped.
fn loop_tone(sink: SharedSink, tone: Arc<Vec<i16>>) -> JoinHandle<()> {
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

/// One sound card device: its spec's id, name, and whether it records,
/// plays, is the default input, is the default output.
struct Dev {
    id: String,
    name: String,
    is_input: bool,
    is_output: bool,
    is_default_input: bool,
    is_default_output: bool,
}

/// The sound cards' devices; none in a build without sound-card support.
#[cfg(feature = "device")]
fn list_devices() -> Result<Vec<Dev>, String> {
    Ok(keyline_media::list_devices()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|d| Dev {
            id: d.id,
            name: d.name,
            is_input: d.is_input,
            is_output: d.is_output,
            is_default_input: d.is_default_input,
            is_default_output: d.is_default_output,
        })
        .collect())
}

#[cfg(not(feature = "device"))]
fn list_devices() -> Result<Vec<Dev>, String> {
    Ok(Vec::new())
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

/// The control socket's `audio-devices`: the sound cards, found off the
/// async workers.
pub(crate) async fn devices_reply() -> serde_json::Value {
    tokio::task::spawn_blocking(LocalAudio::devices)
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .unwrap_or_else(keyline_net::control::error)
}

/// The control socket's `audio-set` on the audio `audio` reaches in
/// `owner`, off the async workers (opening a sound card may take
/// seconds): the audio now in use, or why nothing changed.
pub(crate) async fn set_off_runtime<T: Send + Sync + 'static>(
    owner: Arc<T>,
    audio: fn(&T) -> &LocalAudio,
    req: serde_json::Value,
) -> Result<serde_json::Value, String> {
    tokio::task::spawn_blocking(move || audio(&owner).set(&req))
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}
