//! 20 ms PCM frame sources (pulled by the sender every frame).

use std::path::Path;

use crate::{wav, MediaError, SAMPLE_RATE};

/// A pull source of 48 kHz mono PCM frames.
pub trait Source: Send {
    /// Fills `out` (normally [`crate::FRAME_SAMPLES`] long) with the next frame.
    /// Returns `false` once the source is exhausted; `out` then holds silence.
    fn next_frame(&mut self, out: &mut [i16]) -> bool;
    /// Starts again from the beginning (where that means anything).
    fn restart(&mut self) {}
}

/// Amplitude used for `tone:HZ` specs (about -12 dBFS).
pub const DEFAULT_TONE_AMPLITUDE: i16 = 8_000;

/// A continuous sine wave, phase-continuous across frames. Never exhausted.
#[derive(Debug, Clone)]
pub struct ToneSource {
    hz: f32,
    amplitude: i16,
    phase: f64,
    step: f64,
}

impl ToneSource {
    /// A sine of `hz` Hz with peak `amplitude`.
    pub fn new(hz: f32, amplitude: i16) -> Self {
        let step = if hz.is_finite() {
            std::f64::consts::TAU * f64::from(hz) / f64::from(SAMPLE_RATE)
        } else {
            0.0
        };
        Self {
            hz,
            amplitude,
            phase: 0.0,
            step,
        }
    }

    /// The tone's frequency (Hz).
    pub fn hz(&self) -> f32 {
        self.hz
    }
}

impl Source for ToneSource {
    fn next_frame(&mut self, out: &mut [i16]) -> bool {
        let amp = f64::from(self.amplitude);
        for s in out.iter_mut() {
            *s = (amp * self.phase.sin()).round() as i16;
            self.phase = (self.phase + self.step) % std::f64::consts::TAU;
        }
        true
    }

    fn restart(&mut self) {
        self.phase = 0.0;
    }
}

/// Digital silence forever.
#[derive(Debug, Clone, Copy, Default)]
pub struct SilenceSource;

impl SilenceSource {
    /// A silence source.
    pub fn new() -> Self {
        Self
    }
}

impl Source for SilenceSource {
    fn next_frame(&mut self, out: &mut [i16]) -> bool {
        out.fill(0);
        true
    }
}

/// A WAV file, loaded fully into memory as 48 kHz mono (any format hound
/// reads: 8/16/24/32-bit integer or 32-bit float, any rate, any channels).
#[derive(Debug, Clone)]
pub struct WavSource {
    samples: Vec<i16>,
    pos: usize,
}

impl WavSource {
    /// Loads the file at `path`. A missing file gives [`MediaError::Io`]
    /// (kind `NotFound`), a file that is not a WAV [`MediaError::Wav`]; both
    /// messages name the path.
    pub fn open(path: &Path) -> Result<Self, MediaError> {
        Ok(Self::from_samples(wav::load_mono48k(path)?))
    }

    /// A source playing the given 48 kHz mono samples.
    pub fn from_samples(samples: Vec<i16>) -> Self {
        Self { samples, pos: 0 }
    }

    /// Total length in samples (48 kHz).
    pub fn len_samples(&self) -> usize {
        self.samples.len()
    }
}

impl Source for WavSource {
    fn next_frame(&mut self, out: &mut [i16]) -> bool {
        let rest = self.samples.get(self.pos..).unwrap_or(&[]);
        if rest.is_empty() {
            out.fill(0);
            return false;
        }
        let n = rest.len().min(out.len());
        out[..n].copy_from_slice(&rest[..n]);
        out[n..].fill(0);
        self.pos += n;
        true
    }

    fn restart(&mut self) {
        self.pos = 0;
    }
}

/// Plays a clip of 48 kHz mono samples over and over (music on hold,
/// ringback). Never exhausted unless the clip is empty; `restart` rewinds to
/// the clip's start.
#[derive(Debug, Clone)]
pub struct LoopSource {
    samples: Vec<i16>,
    pos: usize,
}

impl LoopSource {
    /// A source looping `samples`.
    pub fn new(samples: Vec<i16>) -> Self {
        Self { samples, pos: 0 }
    }

    /// Length of one pass of the clip (samples).
    pub fn len_samples(&self) -> usize {
        self.samples.len()
    }
}

impl Source for LoopSource {
    fn next_frame(&mut self, out: &mut [i16]) -> bool {
        if self.samples.is_empty() {
            out.fill(0);
            return false;
        }
        let mut filled = 0;
        while filled < out.len() {
            let rest = self.samples.get(self.pos..).unwrap_or(&[]);
            if rest.is_empty() {
                self.pos = 0;
                continue;
            }
            let n = rest.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&rest[..n]);
            filled += n;
            self.pos += n;
        }
        true
    }

    fn restart(&mut self) {
        self.pos = 0;
    }
}

/// Builds a source from a spec: `tone:HZ` (e.g. `tone:440`), `silence`, or a
/// path to a WAV file. (`device` is handled by the caller.)
pub fn parse_source(spec: &str) -> Result<Box<dyn Source>, MediaError> {
    if let Some(hz) = spec.strip_prefix("tone:") {
        let hz: f32 = hz.trim().parse().map_err(|_| {
            MediaError::Format(format!("source {spec:?}: tone frequency is not a number"))
        })?;
        let nyquist = SAMPLE_RATE as f32 / 2.0;
        if !(hz.is_finite() && hz > 0.0 && hz < nyquist) {
            return Err(MediaError::Format(format!(
                "source {spec:?}: tone frequency must be between 0 and {nyquist} Hz"
            )));
        }
        return Ok(Box::new(ToneSource::new(hz, DEFAULT_TONE_AMPLITUDE)));
    }
    if spec == "silence" {
        return Ok(Box::new(SilenceSource));
    }
    if spec.is_empty() {
        return Err(MediaError::Format(
            "empty source spec; expected \"tone:HZ\", \"silence\" or a path to a .wav file".into(),
        ));
    }
    let path = Path::new(spec);
    if !path.exists() {
        return Err(MediaError::Format(format!(
            "source {spec:?}: no such file; expected \"tone:HZ\", \"silence\" or a path to a .wav file"
        )));
    }
    Ok(Box::new(WavSource::open(path)?))
}
