//! Tone generation and analysis: ringtones, test signals, Goertzel-based
//! per-frame tone detection, and WAV helpers.

use std::path::Path;

use crate::{sink::wav_spec, wav, MediaError, FRAME_SAMPLES, SAMPLE_RATE};

/// Peak amplitude of the tones made by [`tone_sequence`].
pub const SEQUENCE_AMPLITUDE: f64 = 10_000.0;
/// Length of the fade in/out at each tone's edges (ms).
pub const RAMP_MS: u32 = 5;
/// Frames whose RMS is below this are silence for [`detect_tone`]
/// (about -50 dBFS).
pub const SILENCE_RMS: f64 = 100.0;
/// How many times stronger than every other candidate the detected tone must be.
pub const DOMINANCE_RATIO: f64 = 10.0;
/// Share of the frame's energy the detected tone must carry (rejects noise).
pub const MIN_ENERGY_SHARE: f64 = 0.3;

fn samples_for_ms(ms: u32) -> usize {
    (u64::from(ms) * u64::from(SAMPLE_RATE) / 1000) as usize
}

/// Appends `n` samples of the sum of `freqs` (each at `amp`), with raised-cosine
/// ramps of `ramp` samples at both ends.
fn push_tone(out: &mut Vec<i16>, freqs: &[f32], amp: f64, n: usize) {
    let ramp = samples_for_ms(RAMP_MS).min(n / 2);
    let rate = f64::from(SAMPLE_RATE);
    for i in 0..n {
        let t = i as f64 / rate;
        let mut v: f64 = freqs
            .iter()
            .map(|&hz| (std::f64::consts::TAU * f64::from(hz) * t).sin())
            .sum();
        v *= amp;
        let edge = i.min(n - 1 - i);
        if edge < ramp {
            let x = (edge as f64 + 0.5) / ramp as f64;
            v *= 0.5 - 0.5 * (std::f64::consts::PI * x).cos();
        }
        out.push(v.round().clamp(-32768.0, 32767.0) as i16);
    }
}

/// Two seconds of a North American ring cadence: 440 + 480 Hz for 0.8 s, then
/// 1.2 s of silence (48 kHz mono). Loop it to ring.
pub fn ringtone_samples() -> Vec<i16> {
    let mut out = Vec::with_capacity(samples_for_ms(2000));
    push_tone(&mut out, &[440.0, 480.0], 6_000.0, samples_for_ms(800));
    out.resize(samples_for_ms(2000), 0);
    out
}

/// Writes `samples` as a 48 kHz mono 16-bit WAV file.
pub fn write_wav(path: &Path, samples: &[i16]) -> Result<(), MediaError> {
    let mut w =
        hound::WavWriter::create(path, wav_spec()).map_err(|e| wav::hound_error(path, e))?;
    for &s in samples {
        w.write_sample(s).map_err(|e| wav::hound_error(path, e))?;
    }
    w.finalize().map_err(|e| wav::hound_error(path, e))
}

/// Reads any WAV hound understands as 48 kHz mono (the same conversion as
/// [`crate::WavSource`]).
pub fn read_wav_mono48k(path: &Path) -> Result<Vec<i16>, MediaError> {
    wav::load_mono48k(path)
}

/// A sequence of tones: each step is (Hz, duration in ms); 0 Hz is silence.
/// Every tone fades in and out over 5 ms to avoid clicks.
pub fn tone_sequence(steps: &[(f32, u32)]) -> Vec<i16> {
    let mut out = Vec::new();
    for &(hz, ms) in steps {
        let n = samples_for_ms(ms);
        if hz > 0.0 && hz.is_finite() {
            push_tone(&mut out, &[hz], SEQUENCE_AMPLITUDE, n);
        } else {
            out.resize(out.len() + n, 0);
        }
    }
    out
}

/// Power of `frame` at `hz` (Goertzel), normalised so that a sine of peak
/// amplitude A at exactly `hz` gives about A².
pub fn goertzel_power(frame: &[i16], hz: f32) -> f64 {
    if frame.is_empty() {
        return 0.0;
    }
    let w = std::f64::consts::TAU * f64::from(hz) / f64::from(SAMPLE_RATE);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in frame {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = (s1 * s1 + s2 * s2 - coeff * s1 * s2).max(0.0);
    let n = frame.len() as f64;
    4.0 * power / (n * n)
}

fn rms(frame: &[i16]) -> f64 {
    if frame.is_empty() {
        return 0.0;
    }
    let sum: f64 = frame.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    (sum / frame.len() as f64).sqrt()
}

/// The candidate frequency that clearly dominates `frame`: its power is at
/// least 10× every other candidate's, it carries a good share of the frame's
/// energy (so noise is rejected), and the frame is not silence. Else `None`.
pub fn detect_tone(frame: &[i16], candidates: &[f32]) -> Option<f32> {
    let level = rms(frame);
    if level < SILENCE_RMS || candidates.is_empty() {
        return None;
    }
    let powers: Vec<f64> = candidates
        .iter()
        .map(|&hz| goertzel_power(frame, hz))
        .collect();
    let (best, &best_power) = powers
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))?;
    let dominant = powers
        .iter()
        .enumerate()
        .all(|(i, &p)| i == best || best_power >= DOMINANCE_RATIO * p);
    // A sine of peak A has mean power A²/2.
    let share = (best_power / 2.0) / (level * level);
    (dominant && share >= MIN_ENERGY_SHARE).then_some(candidates[best])
}

/// [`detect_tone`] for each whole 20 ms frame of `samples` (a trailing partial
/// frame is ignored).
pub fn tone_track(samples: &[i16], candidates: &[f32]) -> Vec<Option<f32>> {
    samples
        .chunks_exact(FRAME_SAMPLES)
        .map(|frame| detect_tone(frame, candidates))
        .collect()
}

/// The tones of a track, in order: runs of one tone at least `min_frames`
/// long are kept, `None` runs and shorter runs dropped, and consecutive
/// repeats of a tone merged.
pub fn collapse_track(track: &[Option<f32>], min_frames: usize) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::new();
    let mut i = 0;
    while i < track.len() {
        let cur = track[i];
        let mut j = i + 1;
        while j < track.len() && track[j] == cur {
            j += 1;
        }
        if let Some(hz) = cur {
            if j - i >= min_frames && out.last() != Some(&hz) {
                out.push(hz);
            }
        }
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goertzel_normalisation() {
        let s = tone_sequence(&[(1000.0, 100)]);
        let a2 = SEQUENCE_AMPLITUDE * SEQUENCE_AMPLITUDE;
        // A frame clear of the ramps holds A².
        let p = goertzel_power(&s[1920..1920 + FRAME_SAMPLES], 1000.0);
        assert!((p / a2 - 1.0).abs() < 0.01, "p={p}");
        // Off-frequency power is tiny.
        assert!(goertzel_power(&s[1920..1920 + FRAME_SAMPLES], 1500.0) < 1e-4 * a2);
        // A 20 ms tone is half ramps: (mean gain 0.75)².
        let p = goertzel_power(&tone_sequence(&[(1000.0, 20)]), 1000.0);
        assert!((p / a2 - 0.5625).abs() < 0.02, "p={p}");
        assert_eq!(goertzel_power(&[], 1000.0), 0.0);
    }

    #[test]
    fn collapse_rules() {
        let a = Some(700.0);
        let b = Some(1100.0);
        let track = [a, a, a, None, a, a, a, b, b, None, b, b, b, a];
        assert_eq!(collapse_track(&track, 3), vec![700.0, 1100.0]);
        assert_eq!(collapse_track(&track, 1), vec![700.0, 1100.0, 700.0]);
        assert!(collapse_track(&[], 1).is_empty());
        assert!(collapse_track(&[None, None], 1).is_empty());
    }

    #[test]
    fn ringtone_shape() {
        let r = ringtone_samples();
        assert_eq!(r.len(), 96_000);
        let on = &r[9_600..9_600 + FRAME_SAMPLES];
        assert!(goertzel_power(on, 440.0) > 1e6);
        assert!(goertzel_power(on, 480.0) > 1e6);
        assert!(r[40_000..].iter().all(|&x| x == 0));
        // Fades in from (near) zero: no click at the start.
        assert!(r[0].abs() < 100);
        assert!(r[38_399].abs() < 100);
    }
}
