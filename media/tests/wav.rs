//! WAV files on disk: sources, sinks, format conversion and errors.

use std::path::Path;

use keyline_media::{
    detect_tone, goertzel_power, parse_source, read_wav_mono48k, tone_sequence, write_wav,
    MediaError, NullSink, Sink, Source, ToneSource, WavSink, WavSource, FRAME_SAMPLES,
};

const CANDIDATES: [f32; 5] = [500.0, 700.0, 1000.0, 1300.0, 1900.0];

fn frames_of(src: &mut dyn Source, max: usize) -> Vec<Vec<i16>> {
    let mut out = Vec::new();
    for _ in 0..max {
        let mut f = vec![1i16; FRAME_SAMPLES];
        if !src.next_frame(&mut f) {
            assert!(f.iter().all(|&s| s == 0), "exhausted source fills silence");
            break;
        }
        out.push(f);
    }
    out
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

#[test]
fn written_wav_reads_back_through_wav_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("seq.wav");
    // 210 ms: ten full frames and a partial one.
    let samples = tone_sequence(&[(700.0, 100), (1300.0, 110)]);
    write_wav(&path, &samples).expect("write");

    let spec = hound::WavReader::open(&path).expect("hound").spec();
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (48_000, 1, 16)
    );

    let mut src = WavSource::open(&path).expect("open");
    assert_eq!(src.len_samples(), samples.len());
    let frames = frames_of(&mut src, 100);
    assert_eq!(frames.len(), 11);
    let flat: Vec<i16> = frames.concat();
    assert_eq!(&flat[..samples.len()], &samples[..]);
    assert!(
        flat[samples.len()..].iter().all(|&s| s == 0),
        "partial frame padded"
    );
    assert_eq!(detect_tone(&frames[2], &CANDIDATES), Some(700.0));
    assert_eq!(detect_tone(&frames[8], &CANDIDATES), Some(1300.0));

    // Stays exhausted, and restart() rewinds.
    let mut f = vec![0i16; FRAME_SAMPLES];
    assert!(!src.next_frame(&mut f));
    src.restart();
    assert!(src.next_frame(&mut f));
    assert_eq!(f, frames[0]);

    assert_eq!(read_wav_mono48k(&path).expect("read"), samples);
}

fn write_with_spec(path: &Path, spec: hound::WavSpec, hz: f64, seconds: f64, amp: f64) {
    let mut w = hound::WavWriter::create(path, spec).expect("create");
    let n = (f64::from(spec.sample_rate) * seconds) as usize;
    for i in 0..n {
        let v = amp * (std::f64::consts::TAU * hz * i as f64 / f64::from(spec.sample_rate)).sin();
        for ch in 0..spec.channels {
            // Right channel (if any) is the same tone at half level.
            let v = if ch == 0 { v } else { v / 2.0 };
            match (spec.sample_format, spec.bits_per_sample) {
                (hound::SampleFormat::Float, _) => w.write_sample(v as f32).expect("w"),
                (hound::SampleFormat::Int, 8) => w.write_sample((v * 127.0) as i8).expect("w"),
                (hound::SampleFormat::Int, 16) => w.write_sample((v * 32767.0) as i16).expect("w"),
                (hound::SampleFormat::Int, bits) => w
                    .write_sample((v * ((1i64 << (bits - 1)) - 1) as f64) as i32)
                    .expect("w"),
            }
        }
    }
    w.finalize().expect("finalize");
}

#[test]
fn sixteen_khz_stereo_becomes_48k_mono_with_same_tone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("stereo16k.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    write_with_spec(&path, spec, 1000.0, 0.5, 0.5);
    let mono = read_wav_mono48k(&path).expect("read");
    assert_eq!(mono.len(), 24_000, "0.5 s at 48 kHz");
    // Mix of L (0.5) and R (0.25) is 0.375 full scale peak.
    let frame = &mono[4_800..4_800 + FRAME_SAMPLES];
    assert_eq!(detect_tone(frame, &CANDIDATES), Some(1000.0));
    let peak = (goertzel_power(frame, 1000.0)).sqrt();
    assert!(
        (peak - 0.375 * 32767.0).abs() < 0.05 * 0.375 * 32767.0,
        "peak {peak}"
    );

    // The source gives the same audio, frame by frame.
    let mut src = WavSource::open(&path).expect("open");
    let frames = frames_of(&mut src, 100);
    assert_eq!(frames.len(), 25);
    assert_eq!(frames.concat(), mono);
}

#[test]
fn every_sample_format_and_rate_converts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (hound::SampleFormat::Int, 8u16, 8_000u32, 1u16),
        (hound::SampleFormat::Int, 16, 44_100, 1),
        (hound::SampleFormat::Int, 24, 48_000, 2),
        (hound::SampleFormat::Int, 32, 22_050, 1),
        (hound::SampleFormat::Float, 32, 96_000, 2),
        (hound::SampleFormat::Int, 16, 48_000, 6),
    ];
    for (i, (fmt, bits, rate, channels)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("case{i}.wav"));
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: fmt,
        };
        write_with_spec(&path, spec, 700.0, 0.3, 0.5);
        let mono = read_wav_mono48k(&path).expect("read");
        let want_len = (0.3 * 48_000.0) as usize;
        assert!(
            mono.len().abs_diff(want_len) <= 6,
            "case {i}: {} samples",
            mono.len()
        );
        let frame = &mono[4_800..4_800 + FRAME_SAMPLES];
        assert_eq!(detect_tone(frame, &CANDIDATES), Some(700.0), "case {i}");
        // Channel 0 at 0.5, the others at 0.25, averaged.
        let level = (0.5 + 0.25 * f64::from(channels - 1)) / f64::from(channels);
        let peak = goertzel_power(frame, 700.0).sqrt() / 32767.0;
        assert!((peak - level).abs() < 0.05, "case {i}: peak {peak}");
    }
}

#[test]
fn missing_file_gives_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nope.wav");
    match WavSource::open(&path) {
        Err(MediaError::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
            assert!(e.to_string().contains("nope.wav"), "{e}");
        }
        other => panic!("expected Io NotFound, got {other:?}"),
    }
    assert!(read_wav_mono48k(&path).is_err());
    let spec = path.to_string_lossy().into_owned();
    match parse_source(&spec) {
        Err(MediaError::Format(m)) => assert!(m.contains("no such file") && m.contains("tone:HZ")),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("missing file accepted"),
    }
}

#[test]
fn not_a_wav_gives_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("notes.wav");
    std::fs::write(&text, "this is not audio\n").expect("write");
    match WavSource::open(&text) {
        Err(MediaError::Wav(m)) => assert!(m.contains("notes.wav") && m.contains("not a"), "{m}"),
        other => panic!("expected Wav error, got {other:?}"),
    }
    let empty = dir.path().join("empty.wav");
    std::fs::write(&empty, b"").expect("write");
    assert!(WavSource::open(&empty).is_err());

    // A valid header whose data was cut short: an error, not a panic.
    let cut = dir.path().join("cut.wav");
    write_wav(&cut, &vec![1000i16; 48_000]).expect("write");
    let bytes = std::fs::read(&cut).expect("read");
    std::fs::write(&cut, &bytes[..1001]).expect("truncate");
    assert!(WavSource::open(&cut).is_err());

    // A directory is not a WAV file either.
    assert!(WavSource::open(dir.path()).is_err());
}

#[test]
fn parse_source_specs() {
    let mut tone = parse_source("tone:1300").expect("tone");
    let mut f = vec![0i16; FRAME_SAMPLES];
    assert!(tone.next_frame(&mut f));
    assert_eq!(detect_tone(&f, &CANDIDATES), Some(1300.0));

    let mut silence = parse_source("silence").expect("silence");
    f.fill(5);
    assert!(silence.next_frame(&mut f));
    assert!(f.iter().all(|&s| s == 0));

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.wav");
    write_wav(&path, &tone_sequence(&[(500.0, 60)])).expect("write");
    let mut wav = parse_source(&path.to_string_lossy()).expect("wav");
    assert!(wav.next_frame(&mut f));
    assert_eq!(detect_tone(&f, &CANDIDATES), Some(500.0));

    for bad in ["tone:", "tone:abc", "tone:-5", "tone:30000", "tone:NaN", ""] {
        assert!(
            matches!(parse_source(bad), Err(MediaError::Format(_))),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn tone_source_is_phase_continuous() {
    let mut src = ToneSource::new(1000.0, 8000);
    let mut a = vec![0i16; FRAME_SAMPLES];
    let mut b = vec![0i16; FRAME_SAMPLES];
    assert!(src.next_frame(&mut a));
    assert!(src.next_frame(&mut b));
    let joined = [a, b].concat();
    for (i, &s) in joined.iter().enumerate() {
        let want = 8000.0 * (std::f64::consts::TAU * 1000.0 * i as f64 / 48_000.0).sin();
        assert!(
            (f64::from(s) - want).abs() <= 1.0,
            "sample {i}: {s} vs {want}"
        );
    }
    // Odd frame sizes too: continuity does not depend on the frame length.
    let mut src = ToneSource::new(440.0, 8000);
    let mut x = vec![0i16; 37];
    let mut all = Vec::new();
    for _ in 0..10 {
        src.next_frame(&mut x);
        all.extend_from_slice(&x);
    }
    for (i, &s) in all.iter().enumerate() {
        let want = 8000.0 * (std::f64::consts::TAU * 440.0 * i as f64 / 48_000.0).sin();
        assert!((f64::from(s) - want).abs() <= 1.0);
    }
}

fn read_all(path: &Path) -> (hound::WavSpec, Vec<i16>) {
    let mut r = hound::WavReader::open(path).expect("hound opens the file");
    let spec = r.spec();
    let s: Vec<i16> = r.samples::<i16>().map(|s| s.expect("sample")).collect();
    (spec, s)
}

fn numbered_frame(i: usize) -> Vec<i16> {
    (0..FRAME_SAMPLES).map(|k| (i * 7 + k) as i16).collect()
}

#[test]
fn wav_sink_file_is_readable_after_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rec.wav");
    let mut sink = WavSink::create(&path).expect("create");
    for i in 0..120 {
        sink.write_frame(&numbered_frame(i)).expect("write");
    }
    sink.finish().expect("finish");
    sink.finish().expect("finish twice is harmless");
    assert!(
        sink.write_frame(&numbered_frame(0)).is_err(),
        "write after finish"
    );

    let (spec, samples) = read_all(&path);
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (48_000, 1, 16)
    );
    assert_eq!(spec.sample_format, hound::SampleFormat::Int);
    assert_eq!(samples.len(), 120 * FRAME_SAMPLES);
    let want: Vec<i16> = (0..120).flat_map(numbered_frame).collect();
    assert_eq!(samples, want);
    assert_eq!(read_wav_mono48k(&path).expect("read"), want);
}

#[test]
fn wav_sink_survives_a_kill_after_a_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Periodic checkpoint: 50 frames are flushed automatically.
    let path = dir.path().join("killed.wav");
    let mut sink = WavSink::create(&path).expect("create");
    for i in 0..70 {
        sink.write_frame(&numbered_frame(i)).expect("write");
    }
    // Simulate kill -9: no finish, no destructor, buffered bytes lost.
    std::mem::forget(sink);
    let (_, samples) = read_all(&path);
    assert_eq!(samples.len(), 50 * FRAME_SAMPLES);
    let want: Vec<i16> = (0..50).flat_map(numbered_frame).collect();
    assert_eq!(samples, want);

    // Explicit flush.
    let path = dir.path().join("flushed.wav");
    let mut sink = WavSink::create(&path).expect("create");
    for i in 0..7 {
        sink.write_frame(&numbered_frame(i)).expect("write");
    }
    sink.flush().expect("flush");
    sink.write_frame(&numbered_frame(7)).expect("write");
    std::mem::forget(sink);
    let (_, samples) = read_all(&path);
    assert_eq!(samples.len(), 7 * FRAME_SAMPLES);

    // Dropping without finish still leaves a complete file.
    let path = dir.path().join("dropped.wav");
    let mut sink = WavSink::create(&path).expect("create");
    for i in 0..3 {
        sink.write_frame(&numbered_frame(i)).expect("write");
    }
    drop(sink);
    assert_eq!(read_all(&path).1.len(), 3 * FRAME_SAMPLES);
}

#[test]
fn wav_sink_in_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("no/such/dir/rec.wav");
    match WavSink::create(&path) {
        Err(MediaError::Io(e)) => assert!(e.to_string().contains("rec.wav")),
        other => panic!("expected Io error, got {other:?}"),
    }
    assert!(write_wav(&path, &[0, 1, 2]).is_err());
}

#[test]
fn null_sink_counts() {
    let mut s = NullSink::new();
    for _ in 0..4 {
        s.write_frame(&[0; FRAME_SAMPLES]).expect("write");
    }
    s.finish().expect("finish");
    assert_eq!(s.frames_written(), 4);
    assert!(rms(&[0, 0]) == 0.0);
}
