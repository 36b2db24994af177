//! Music on hold and the looping source that plays it.

use keyline_media::tones::{midi_hz, HOLD_MUSIC_NOTES, HOLD_MUSIC_NOTE_MS};
use keyline_media::{
    goertzel_power, hold_music, read_ogg_opus, LoopSource, OggOpusWriter, Source, FRAME_SAMPLES,
};

fn take(src: &mut dyn Source, frames: usize) -> Vec<i16> {
    let mut out = Vec::new();
    let mut f = vec![0i16; FRAME_SAMPLES];
    for _ in 0..frames {
        assert!(src.next_frame(&mut f));
        out.extend_from_slice(&f);
    }
    out
}

#[test]
fn loop_source_wraps_and_rewinds() {
    // A clip that is not a whole number of frames: wrapping happens
    // mid-frame.
    let clip: Vec<i16> = (0..1_500).map(|i| i as i16).collect();
    let mut src = LoopSource::new(clip.clone());
    assert_eq!(src.len_samples(), 1_500);
    let got = take(&mut src, 5);
    let want: Vec<i16> = clip
        .iter()
        .copied()
        .cycle()
        .take(5 * FRAME_SAMPLES)
        .collect();
    assert_eq!(got, want);
    src.restart();
    assert_eq!(take(&mut src, 1), clip[..FRAME_SAMPLES]);

    // Shorter than a frame: repeated within the frame.
    let mut tiny = LoopSource::new(vec![1, 2, 3]);
    let f = take(&mut tiny, 1);
    assert_eq!(&f[..7], &[1, 2, 3, 1, 2, 3, 1]);

    // Empty: silence, exhausted.
    let mut empty = LoopSource::new(Vec::new());
    let mut f = vec![5i16; FRAME_SAMPLES];
    assert!(!empty.next_frame(&mut f));
    assert!(f.iter().all(|&s| s == 0));
}

#[test]
fn hold_music_loops_without_a_click() {
    let music = hold_music();
    let frames = music.len() / FRAME_SAMPLES;
    let mut src = LoopSource::new(music.clone());
    let two = take(&mut src, 2 * frames);
    assert_eq!(&two[..music.len()], &music[..]);
    assert_eq!(&two[music.len()..], &music[..]);
    // The step across the seam is no bigger than the steps inside the clip.
    let max_step = music
        .windows(2)
        .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
        .max()
        .unwrap_or(0);
    let seam = (i32::from(music[0]) - i32::from(music[music.len() - 1])).abs();
    assert!(
        seam <= max_step / 10,
        "seam step {seam}, max step {max_step}"
    );
}

#[test]
fn hold_music_survives_opus() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hold.opus");
    let music = hold_music();
    let mut w = OggOpusWriter::create(&path).expect("create");
    for f in music.chunks_exact(FRAME_SAMPLES) {
        w.write_frame(f).expect("write");
    }
    w.finish().expect("finish");
    let pcm = read_ogg_opus(&path).expect("read");
    assert_eq!(pcm.len(), music.len());
    // Every note is still heard at its pitch after the voice codec.
    let note = HOLD_MUSIC_NOTE_MS as usize * 48;
    for (k, &n) in HOLD_MUSIC_NOTES.iter().enumerate() {
        let at = k * note + FRAME_SAMPLES;
        let frame = &pcm[at..at + 10 * FRAME_SAMPLES];
        let p = goertzel_power(frame, midi_hz(n) as f32);
        let lo = goertzel_power(frame, midi_hz(n - 1) as f32);
        let hi = goertzel_power(frame, midi_hz(n + 1) as f32);
        assert!(
            p > 1e6 && p > 3.0 * lo && p > 3.0 * hi,
            "note {k}: {p} {lo} {hi}"
        );
    }
}
