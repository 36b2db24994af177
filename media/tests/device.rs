//! Sound-card I/O through cpal. CI machines have no sound card: there the
//! device must fail to open quickly, with a clear error and without panics.
//! Where a card (or a sound server) exists, the opened device is exercised.
#![cfg(feature = "device")]

use std::path::Path;
use std::time::{Duration, Instant};

use keyline_media::{list_devices, open_input, open_output, MediaError, FRAME_SAMPLES};

/// Opening may not take longer than this, device or not.
const QUICK: Duration = Duration::from_secs(6);

/// True when this machine certainly has no audio: no sound card and no
/// sound server ALSA's default device could be routed to.
fn certainly_no_audio() -> bool {
    if !cfg!(target_os = "linux") || Path::new("/dev/snd").exists() {
        return false;
    }
    if std::env::var_os("PULSE_SERVER").is_some() {
        return false;
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new("/run/user/0").to_path_buf());
    !(runtime.join("pulse/native").exists() || runtime.join("pipewire-0").exists())
}

fn assert_clear(e: &MediaError, word: &str) {
    let msg = e.to_string();
    assert!(matches!(e, MediaError::Device(_)), "{e:?}");
    assert!(
        msg.contains(&format!("audio {word} device")),
        "message names the device kind: {msg}"
    );
}

#[test]
fn default_input_opens_or_fails_clearly() {
    let start = Instant::now();
    let result = open_input(None);
    assert!(start.elapsed() < QUICK, "took {:?}", start.elapsed());
    match result {
        Ok(mut src) => {
            assert!(!certainly_no_audio(), "opened an input without audio");
            let mut frame = vec![1i16; FRAME_SAMPLES];
            let t = Instant::now();
            for _ in 0..3 {
                assert!(src.next_frame(&mut frame));
            }
            assert!(t.elapsed() < Duration::from_millis(500), "never blocks");
        }
        Err(e) => {
            eprintln!("open_input(None): {e}");
            assert_clear(&e, "input");
            assert!(e.to_string().contains("no audio input device found"), "{e}");
        }
    }
}

#[test]
fn default_output_opens_or_fails_clearly() {
    let start = Instant::now();
    let result = open_output(None);
    assert!(start.elapsed() < QUICK, "took {:?}", start.elapsed());
    match result {
        Ok(mut sink) => {
            assert!(!certainly_no_audio(), "opened an output without audio");
            let frame = vec![0i16; FRAME_SAMPLES];
            for _ in 0..3 {
                sink.write_frame(&frame).expect("write to an open device");
            }
            sink.finish().expect("finish");
        }
        Err(e) => {
            eprintln!("open_output(None): {e}");
            assert_clear(&e, "output");
            assert!(
                e.to_string().contains("no audio output device found"),
                "{e}"
            );
        }
    }
}

#[test]
fn unknown_device_name_is_a_clear_error() {
    let name = "no-such-keyline-test-device";
    for (word, result) in [
        ("input", open_input(Some(name)).map(|_| ())),
        ("output", open_output(Some(name)).map(|_| ())),
    ] {
        let e = result.expect_err("no device has that name");
        eprintln!("{word}: {e}");
        assert_clear(&e, word);
        assert!(e.to_string().contains(name), "{e}");
    }
}

#[test]
fn list_devices_does_not_panic() {
    let start = Instant::now();
    match list_devices() {
        Ok(devices) => {
            for d in &devices {
                eprintln!("{d:?}");
                assert!(!d.id.is_empty());
                assert!(!d.is_default_input || d.is_input);
                assert!(!d.is_default_output || d.is_output);
            }
        }
        Err(e) => eprintln!("list_devices: {e}"),
    }
    assert!(start.elapsed() < QUICK);
}

#[test]
fn without_audio_nothing_opens() {
    if !certainly_no_audio() {
        eprintln!("this machine may have audio; skipped");
        return;
    }
    assert!(open_input(None).is_err());
    assert!(open_output(None).is_err());
}

#[test]
fn reopening_after_drop_works_the_same() {
    // Dropping a source/sink releases the device: a second open behaves
    // like the first (both succeed or both fail).
    let first = open_input(None).is_ok();
    let second = open_input(None).is_ok();
    assert_eq!(first, second);
    let first = open_output(None).is_ok();
    let second = open_output(None).is_ok();
    assert_eq!(first, second);
}

/// ALSA's `null` device (present wherever alsa-lib's configuration is)
/// runs the whole path without hardware: stream thread, callbacks, format
/// conversion and shutdown.
#[test]
fn null_device_runs_end_to_end() {
    let has_null = list_devices()
        .map(|d| d.iter().any(|d| d.id == "null"))
        .unwrap_or(false);
    if !has_null {
        eprintln!("no ALSA null device; skipped");
        return;
    }
    let mut src = open_input(Some("null")).expect("open null input");
    let mut sink = open_output(Some("null")).expect("open null output");
    let frame = vec![1000i16; FRAME_SAMPLES];
    let mut got = vec![1i16; FRAME_SAMPLES];
    let start = Instant::now();
    for _ in 0..10 {
        assert!(src.next_frame(&mut got));
        assert!(got.iter().all(|&s| s == 0), "null input is silence");
        sink.write_frame(&frame).expect("write");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(start.elapsed() < Duration::from_secs(2));
    let start = Instant::now();
    drop(src);
    drop(sink);
    assert!(start.elapsed() < Duration::from_secs(2), "drop is quick");
    // The devices were released: they open again.
    assert!(open_input(Some("null")).is_ok());
    assert!(open_output(Some("null")).is_ok());
}
