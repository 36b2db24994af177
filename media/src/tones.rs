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

/// Notes of [`hold_music`] as MIDI note numbers: a I-vi-IV-V arpeggio in C
/// major (root, third, fifth, octave of each chord).
pub const HOLD_MUSIC_NOTES: [u8; 16] = [
    60, 64, 67, 72, // C
    57, 60, 64, 69, // A minor
    53, 57, 60, 65, // F
    55, 59, 62, 67, // G
];
/// Length of each note of [`hold_music`] (ms).
pub const HOLD_MUSIC_NOTE_MS: u32 = 300;
/// Peak amplitude of [`hold_music`] notes (about -16 dBFS: gentle).
pub const HOLD_MUSIC_AMPLITUDE: f64 = 5_000.0;

/// Frequency of a MIDI note (A4 = 69 = 440 Hz, equal temperament).
pub fn midi_hz(note: u8) -> f64 {
    440.0 * 2f64.powf((f64::from(note) - 69.0) / 12.0)
}

/// Music on hold: a gentle arpeggio ([`HOLD_MUSIC_NOTES`], 300 ms each,
/// 4.8 s in all), each note a soft sine with a little second and third
/// harmonic, a short attack, an exponential decay and a release to silence,
/// so the clip loops without a click. 48 kHz mono, a whole number of 20 ms
/// frames. Play it with [`crate::LoopSource`].
pub fn hold_music() -> Vec<i16> {
    let n = samples_for_ms(HOLD_MUSIC_NOTE_MS);
    let attack = samples_for_ms(15);
    let release = samples_for_ms(40);
    let rate = f64::from(SAMPLE_RATE);
    let mut out = Vec::with_capacity(n * HOLD_MUSIC_NOTES.len());
    for &note in &HOLD_MUSIC_NOTES {
        let hz = midi_hz(note);
        for i in 0..n {
            let t = i as f64 / rate;
            let w = std::f64::consts::TAU * hz * t;
            let voice = w.sin() + 0.25 * (2.0 * w).sin() + 0.08 * (3.0 * w).sin();
            let mut env = (-t / 0.35).exp();
            if i < attack {
                env *= 0.5 - 0.5 * (std::f64::consts::PI * i as f64 / attack as f64).cos();
            }
            let left = n - 1 - i;
            if left < release {
                env *= 0.5 - 0.5 * (std::f64::consts::PI * left as f64 / release as f64).cos();
            }
            let v = HOLD_MUSIC_AMPLITUDE / 1.33 * voice * env;
            out.push(v.round().clamp(-32768.0, 32767.0) as i16);
        }
    }
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

/// [`read_wav_mono48k`] on the bytes of a WAV file in memory (an upload).
pub fn read_wav_mono48k_bytes(bytes: &[u8]) -> Result<Vec<i16>, MediaError> {
    wav::load_mono48k_bytes(bytes)
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
    fn hold_music_shape() {
        let m = hold_music();
        let note = samples_for_ms(HOLD_MUSIC_NOTE_MS);
        assert_eq!(m.len(), note * HOLD_MUSIC_NOTES.len());
        assert_eq!(m.len() % FRAME_SAMPLES, 0, "whole frames");
        assert!(m.len() >= 3 * 48_000, "a few seconds");
        // Silent at both ends (and so at the loop seam): no click.
        assert!(m[0].abs() < 50 && m[m.len() - 1].abs() < 50);
        let peak = m.iter().map(|&x| i32::from(x).abs()).max().unwrap_or(0);
        assert!((2_000..=8_000).contains(&peak), "peak {peak}");
        // Each note sounds at its pitch: over 200 ms of the note, its
        // fundamental beats the neighbouring semitones by far.
        for (k, &n) in HOLD_MUSIC_NOTES.iter().enumerate() {
            let at = k * note + FRAME_SAMPLES;
            let frame = &m[at..at + 10 * FRAME_SAMPLES];
            let p = goertzel_power(frame, midi_hz(n) as f32);
            let lo = goertzel_power(frame, midi_hz(n - 1) as f32);
            let hi = goertzel_power(frame, midi_hz(n + 1) as f32);
            assert!(
                p > 1e6 && p > 5.0 * lo && p > 5.0 * hi,
                "note {k}: {p} {lo} {hi}"
            );
        }
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
