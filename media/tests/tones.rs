//! Tone generation and detection.

use keyline_media::{
    collapse_track, detect_tone, ringtone_samples, tone_sequence, tone_track, FRAME_SAMPLES,
};

const CANDIDATES: [f32; 4] = [700.0, 1100.0, 1500.0, 1900.0];

/// Deterministic uniform noise in [-amp, amp] (xorshift64*).
fn noise(n: usize, amp: f64, seed: u64) -> Vec<i16> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let u = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
            ((u * 2.0 - 1.0) * amp) as i16
        })
        .collect()
}

fn sine(hz: f64, amp: f64) -> Vec<i16> {
    (0..FRAME_SAMPLES)
        .map(|i| (amp * (std::f64::consts::TAU * hz * i as f64 / 48_000.0).sin()) as i16)
        .collect()
}

#[test]
fn detects_each_pure_tone() {
    for hz in CANDIDATES {
        assert_eq!(
            detect_tone(&sine(f64::from(hz), 8000.0), &CANDIDATES),
            Some(hz)
        );
        // Also quiet ones (about -40 dBFS) and off-bin phase.
        assert_eq!(
            detect_tone(&sine(f64::from(hz), 330.0), &CANDIDATES),
            Some(hz)
        );
    }
}

#[test]
fn rejects_silence() {
    assert_eq!(detect_tone(&[0; FRAME_SAMPLES], &CANDIDATES), None);
    // Below the silence threshold even if perfectly tonal.
    assert_eq!(detect_tone(&sine(1100.0, 60.0), &CANDIDATES), None);
    // Low-level hiss.
    assert_eq!(
        detect_tone(&noise(FRAME_SAMPLES, 50.0, 3), &CANDIDATES),
        None
    );
    assert_eq!(detect_tone(&[], &CANDIDATES), None);
    assert_eq!(detect_tone(&sine(700.0, 8000.0), &[]), None);
}

#[test]
fn rejects_noise() {
    // Many frames of loud white noise: never a tone.
    let n = noise(FRAME_SAMPLES * 500, 12_000.0, 0xdead_beef);
    let track = tone_track(&n, &CANDIDATES);
    assert_eq!(track.len(), 500);
    assert!(
        track.iter().all(Option::is_none),
        "noise detected as {track:?}"
    );
    // Also with a weak tone buried in it (tone at -20 dB to the noise).
    let weak: Vec<i16> = sine(1500.0, 1000.0)
        .iter()
        .zip(noise(FRAME_SAMPLES, 12_000.0, 9))
        .map(|(&a, b)| a.saturating_add(b))
        .collect();
    assert_eq!(detect_tone(&weak, &CANDIDATES), None);
}

#[test]
fn rejects_ambiguous_and_foreign_tones() {
    // Two candidates at equal strength: neither dominates.
    let dual: Vec<i16> = sine(700.0, 5000.0)
        .iter()
        .zip(sine(1900.0, 5000.0))
        .map(|(&a, b)| a + b)
        .collect();
    assert_eq!(detect_tone(&dual, &CANDIDATES), None);
    // A loud tone that is not a candidate.
    assert_eq!(detect_tone(&sine(1300.0, 8000.0), &CANDIDATES), None);
    // A tone with a little noise is still found.
    let noisy: Vec<i16> = sine(1900.0, 8000.0)
        .iter()
        .zip(noise(FRAME_SAMPLES, 1500.0, 5))
        .map(|(&a, b)| a + b)
        .collect();
    assert_eq!(detect_tone(&noisy, &CANDIDATES), Some(1900.0));
}

#[test]
fn tone_sequence_track_and_collapse() {
    let steps: Vec<(f32, u32)> = vec![
        (0.0, 100),
        (700.0, 250),
        (1100.0, 250),
        (0.0, 60),
        (1100.0, 200),
        (1500.0, 250),
        (1900.0, 250),
    ];
    let s = tone_sequence(&steps);
    assert_eq!(s.len(), 48 * 1360);
    let track = tone_track(&s, &CANDIDATES);
    assert_eq!(track.len(), s.len() / FRAME_SAMPLES);
    assert!(track[..5].iter().all(Option::is_none));
    assert_eq!(
        collapse_track(&track, 5),
        vec![700.0, 1100.0, 1500.0, 1900.0]
    );
    // Edges are ramped: no clicks at start/end of each tone.
    assert_eq!(s[4_800], 0);
    assert!(s[4_800..4_810].iter().all(|&x| x.abs() < 100));
    let max_step = s
        .windows(2)
        .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
        .max();
    // A 1900 Hz sine at 10000 peak moves at most ~2490 per sample.
    assert!(max_step.unwrap_or(0) < 2_600, "max step {max_step:?}");
    assert!(tone_sequence(&[]).is_empty());
}

#[test]
fn ringtone_is_ring_cadence() {
    let r = ringtone_samples();
    assert_eq!(r.len(), 2 * 48_000);
    let track = tone_track(&r, &[440.0, 480.0]);
    // The dual tone has both components, so neither "dominates": check the
    // cadence by level instead.
    assert!(track.iter().all(Option::is_none));
    let level =
        |f: &[i16]| (f.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / f.len() as f64).sqrt();
    let on = r
        .chunks_exact(FRAME_SAMPLES)
        .filter(|f| level(f) > 1000.0)
        .count();
    assert_eq!(on, 40, "0.8 s on");
}
