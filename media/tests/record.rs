//! Call recording: mixing both directions into an Ogg Opus file named by
//! date and peer.

use std::time::{Duration, UNIX_EPOCH};

use keyline_media::{
    goertzel_power, read_ogg_opus, CallRecorder, MediaError, Source, ToneSource, FRAME_SAMPLES,
};

/// 2026-11-29T14:03:22Z.
fn when() -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_961_002)
}

fn file_name(r: &CallRecorder) -> String {
    r.path()
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn both_directions_are_audible_in_the_recording() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rec = CallRecorder::create(dir.path(), "202", when()).expect("create");
    let mut local = ToneSource::new(600.0, 8_000);
    let mut remote = ToneSource::new(1_300.0, 8_000);
    let (mut l, mut r) = (vec![0i16; FRAME_SAMPLES], vec![0i16; FRAME_SAMPLES]);
    // 1 s of double talk, 0.5 s of local only, 0.5 s of remote only (no
    // packet: an empty frame).
    for i in 0..100 {
        local.next_frame(&mut l);
        remote.next_frame(&mut r);
        match i {
            0..50 => rec.write(&l, &r),
            50..75 => rec.write(&l, &[]),
            _ => rec.write(&[], &r),
        }
        .expect("write");
    }
    assert_eq!(rec.samples_written(), 96_000);
    let path = rec.finish().expect("finish");
    let pcm = read_ogg_opus(&path).expect("read the recording");
    assert_eq!(pcm.len(), 96_000);

    let full = 8_000.0f64 * 8_000.0; // power of an unchanged tone
    let at = |ms: usize| &pcm[ms * 48..ms * 48 + 4 * FRAME_SAMPLES];
    // Double talk: both tones clearly present, at comparable levels, and
    // nothing much in between.
    let both = at(500);
    let (p600, p1300, p950) = (
        goertzel_power(both, 600.0),
        goertzel_power(both, 1_300.0),
        goertzel_power(both, 950.0),
    );
    assert!(p600 > 0.3 * full && p1300 > 0.3 * full, "{p600} {p1300}");
    assert!(p600 < 4.0 * p1300 && p1300 < 4.0 * p600, "{p600} {p1300}");
    assert!(p950 < 0.01 * full, "{p950}");
    // One direction at a time: only that one.
    let local_only = at(1_200);
    assert!(goertzel_power(local_only, 600.0) > 0.3 * full);
    assert!(goertzel_power(local_only, 1_300.0) < 0.01 * full);
    let remote_only = at(1_700);
    assert!(goertzel_power(remote_only, 1_300.0) > 0.3 * full);
    assert!(goertzel_power(remote_only, 600.0) < 0.01 * full);
}

#[test]
fn loud_double_talk_saturates_instead_of_wrapping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rec = CallRecorder::create(dir.path(), "loud", when()).expect("create");
    let mut local = ToneSource::new(600.0, 30_000);
    let mut remote = ToneSource::new(600.0, 30_000);
    let (mut l, mut r) = (vec![0i16; FRAME_SAMPLES], vec![0i16; FRAME_SAMPLES]);
    for _ in 0..25 {
        local.next_frame(&mut l);
        remote.next_frame(&mut r);
        rec.write(&l, &r).expect("write");
    }
    let pcm = read_ogg_opus(&rec.finish().expect("finish")).expect("read");
    // In phase, the sum clips at full scale: a wrapped sum would flip sign
    // and leave little 600 Hz energy.
    let p = goertzel_power(&pcm[9_600..9_600 + 4 * FRAME_SAMPLES], 600.0);
    assert!(p > 0.5 * 32_767.0 * 32_767.0, "{p}");
}

#[test]
fn files_are_named_by_utc_time_and_peer_and_never_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = CallRecorder::create(dir.path(), "202", when()).expect("create");
    assert_eq!(file_name(&a), "2026-11-29T14-03-22_202.opus");
    assert_eq!(a.path().parent(), Some(dir.path()));
    // Same second, same peer: a new name, the first file kept.
    let b = CallRecorder::create(dir.path(), "202", when()).expect("create");
    assert_eq!(file_name(&b), "2026-11-29T14-03-22_202-2.opus");
    let c = CallRecorder::create(dir.path(), "202", when()).expect("create");
    assert_eq!(file_name(&c), "2026-11-29T14-03-22_202-3.opus");
    // A hostile peer name stays inside the directory.
    let d = CallRecorder::create(dir.path(), "../../etc/x y", when()).expect("create");
    assert_eq!(file_name(&d), "2026-11-29T14-03-22__._.._etc_x_y.opus");
    assert_eq!(d.path().parent(), Some(dir.path()));
    // A leap day.
    let leap = UNIX_EPOCH + Duration::from_secs(1_709_251_199);
    let e = CallRecorder::create(dir.path(), "alice@office", leap).expect("create");
    assert_eq!(file_name(&e), "2024-02-29T23-59-59_alice@office.opus");

    let pa = a.finish().expect("finish");
    assert!(pa.exists());
    for r in [b, c, d, e] {
        let p = r.finish().expect("finish");
        assert!(read_ogg_opus(&p).expect("read").is_empty());
    }
    // The tags name the peer and the time.
    let bytes = std::fs::read(&pa).expect("bytes");
    let has = |s: &str| bytes.windows(s.len()).any(|w| w == s.as_bytes());
    assert!(has("TITLE=Call with 202"));
    assert!(has("DATE=2026-11-29T14:03:22Z"));
    assert!(has("keyline"));
}

#[test]
fn bad_directory_and_frames_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no/such/dir");
    let e = CallRecorder::create(&missing, "202", when()).expect_err("missing dir");
    assert!(matches!(e, MediaError::Io(_)), "{e}");
    assert!(e.to_string().contains("no/such/dir"), "{e}");

    let mut rec = CallRecorder::create(dir.path(), "202", when()).expect("create");
    assert!(rec.write(&[0; FRAME_SAMPLES + 1], &[]).is_err());
    assert!(rec.write(&[], &[0; 2 * FRAME_SAMPLES]).is_err());
    rec.write(&[0; 100], &[0; 200])
        .expect("short frames are padded");
    assert_eq!(rec.samples_written(), FRAME_SAMPLES as u64);
}
