//! Ogg Opus files: round trips judged by the tones a listener hears, files
//! checked by the standard tools (opusinfo/opusdec from opus-tools, soxi/sox
//! from sox, ffprobe from ffmpeg), killed writers, truncated and corrupt
//! input.
//!
//! The standard tools must be installed: a missing one fails the test,
//! naming the Debian package to install.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keyline_media::oggopus::FLUSH_EVERY_SAMPLES;
use keyline_media::{
    collapse_track, goertzel_power, is_ogg_opus, read_ogg_opus, read_ogg_opus_bytes,
    read_wav_mono48k, tone_sequence, tone_track, write_wav, MediaError, OggOpusWriter, OpusEncoder,
    Sink, FRAME_SAMPLES,
};
use proptest::prelude::*;

const SENT: [f32; 4] = [700.0, 1100.0, 1500.0, 1900.0];
/// The sent tones plus decoys that were never sent.
const CANDIDATES: [f32; 8] = [500.0, 700.0, 900.0, 1100.0, 1300.0, 1500.0, 1700.0, 1900.0];

/// Silence, the four tones for `ms` each, silence; whole frames.
fn test_signal(ms: u32) -> Vec<i16> {
    let mut steps = vec![(0.0, 100)];
    steps.extend(SENT.iter().map(|&hz| (hz, ms)));
    steps.push((0.0, 100));
    let mut pcm = tone_sequence(&steps);
    let pad = (FRAME_SAMPLES - pcm.len() % FRAME_SAMPLES) % FRAME_SAMPLES;
    pcm.resize(pcm.len() + pad, 0);
    pcm
}

/// Sample where [`test_signal`]`(ms)` changes from its first tone to its
/// second.
fn first_change(ms: u32) -> usize {
    (100 + ms as usize) * 48
}

fn tones_heard(pcm: &[i16]) -> Vec<f32> {
    collapse_track(&tone_track(pcm, &CANDIDATES), 5)
}

fn write_file(path: &Path, pcm: &[i16], tags: &[(&str, &str)]) -> keyline_media::OggOpusInfo {
    let mut w = OggOpusWriter::create_with_tags(path, tags).expect("create");
    for f in pcm.chunks_exact(FRAME_SAMPLES) {
        w.write_frame(f).expect("write_frame");
    }
    w.finish().expect("finish")
}

/// Runs a standard tool; a missing binary fails the test naming the Debian
/// package that provides it.
fn run_tool(bin: &str, package: &str, args: &[&str], file: &Path) -> Output {
    run_tool_args(bin, package, args, file, &[])
}

/// [`run_tool`] with arguments after the file too.
fn run_tool_args(bin: &str, package: &str, args: &[&str], file: &Path, after: &[&str]) -> Output {
    match Command::new(bin).args(args).arg(file).args(after).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{bin}` is not installed: install the Debian package `{package}` \
             (apt-get install {package}) to run the Ogg Opus interoperability tests"
        ),
        Err(e) => panic!("running {bin}: {e}"),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `opusinfo` accepts the file without warnings and reports what we wrote.
fn check_opusinfo(path: &Path, samples: u64, tags: &[&str]) {
    let out = run_tool("opusinfo", "opus-tools", &[], path);
    let t = text(&out);
    assert!(out.status.success(), "opusinfo failed:\n{t}");
    assert!(
        !t.contains("WARNING") && !t.contains("ERROR"),
        "opusinfo:\n{t}"
    );
    for want in [
        "type opus",
        "Encoded with keyline",
        "Channels: 1",
        "Original sample rate: 48000 Hz",
        "Logical stream 1 ended",
    ] {
        assert!(t.contains(want), "opusinfo lacks {want:?}:\n{t}");
    }
    // opusinfo prints whole milliseconds, computed in floating point.
    let shown_ms = t
        .lines()
        .find_map(|l| l.trim().strip_prefix("Playback length: "))
        .and_then(|v| {
            let (m, rest) = v.split_once("m:")?;
            let secs: f64 = rest.strip_suffix('s')?.parse().ok()?;
            Some(m.parse::<f64>().ok()? * 60_000.0 + secs * 1000.0)
        })
        .unwrap_or_else(|| panic!("opusinfo shows no playback length:\n{t}"));
    let want_ms = samples as f64 / 48.0;
    assert!(
        (shown_ms - want_ms).abs() <= 1.01,
        "opusinfo length {shown_ms} ms, expected {want_ms} ms:\n{t}"
    );
    for tag in tags {
        assert!(t.contains(tag), "opusinfo lacks tag {tag:?}:\n{t}");
    }
}

/// `opusdec` (the reference decoder) decodes the file to the same audio.
fn opusdec_to_pcm(path: &Path, dir: &Path) -> Vec<i16> {
    let wav = dir.join(format!(
        "{}.opusdec.wav",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    let out = match Command::new("opusdec")
        .args(["--quiet", "--no-dither", "--rate", "48000"])
        .arg(path)
        .arg(&wav)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`opusdec` is not installed: install the Debian package `opus-tools` \
             (apt-get install opus-tools)"
        ),
        Err(e) => panic!("running opusdec: {e}"),
    };
    assert!(out.status.success(), "opusdec failed:\n{}", text(&out));
    read_wav_mono48k(&wav).expect("opusdec output")
}

/// `soxi` reads the file, or — Debian's sox is built without Opus — at least
/// recognises it as Opus; then sox's libsndfile handler must parse it as Ogg
/// Opus (it refuses to decode that encoding, but a malformed file gives a
/// different error).
fn check_sox(path: &Path) {
    let out = run_tool("soxi", "sox", &[], path);
    let t = text(&out);
    if out.status.success() {
        assert!(t.contains("Sample Rate    : 48000"), "soxi:\n{t}");
        assert!(t.contains("Channels       : 1"), "soxi:\n{t}");
        return;
    }
    assert!(
        t.contains("detected file type `opus'"),
        "soxi does not recognise the file as Opus:\n{t}"
    );
    let cmd_out = run_tool_args("sox", "sox", &["-t", "sndfile"], path, &["-n", "stat"]);
    let t = text(&cmd_out);
    assert!(
        cmd_out.status.success() || t.contains("unsupported sndfile encoding 0x200064"),
        "libsndfile (through sox) does not parse the file as Ogg Opus:\n{t}"
    );
}

/// Lag (samples) at which `decoded` best matches `original` around `at`
/// (pick a window spanning a change of tone: a pure tone matches itself a
/// period later).
fn best_lag(original: &[i16], decoded: &[i16], at: usize, len: usize) -> i64 {
    let mut best = (f64::MIN, 0i64);
    for lag in -400i64..=400 {
        let mut acc = 0.0f64;
        for (i, &o) in original.iter().enumerate().skip(at).take(len) {
            let j = i as i64 + lag;
            if let Some(&d) = usize::try_from(j).ok().and_then(|j| decoded.get(j)) {
                acc += f64::from(o) * f64::from(d);
            }
        }
        if acc > best.0 {
            best = (acc, lag);
        }
    }
    best.1
}

#[test]
fn round_trip_keeps_tones_length_and_timing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("seq.opus");
    let pcm = test_signal(250);
    let info = write_file(&path, &pcm, &[]);
    assert_eq!(info.samples, pcm.len() as u64);
    assert_eq!(
        info.packets,
        (pcm.len() / FRAME_SAMPLES + 1) as u64,
        "+1 pad"
    );
    assert_eq!(
        info.bytes,
        std::fs::metadata(&path).expect("meta").len(),
        "byte size"
    );
    assert_eq!(info.duration.as_millis(), 1200);

    let decoded = read_ogg_opus(&path).expect("read");
    // Pre-skip and end trimming give back exactly the samples written...
    assert_eq!(decoded.len(), pcm.len());
    // ...in time with the original (the pre-skip removed the codec delay).
    let lag = best_lag(&pcm, &decoded, first_change(250) - 2_400, 4_800);
    assert!(lag.abs() <= 8, "decoded audio is {lag} samples off");
    assert_eq!(tones_heard(&decoded), SENT.to_vec());
    // The bytes API agrees with the path API.
    let bytes = std::fs::read(&path).expect("bytes");
    assert!(is_ogg_opus(&bytes));
    assert_eq!(read_ogg_opus_bytes(&bytes).expect("bytes read"), decoded);
}

#[test]
fn standard_tools_accept_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tools.opus");
    // 3 s: several pages, one a second.
    let pcm = test_signal(700);
    write_file(
        &path,
        &pcm,
        &[("TITLE", "Keyline test"), ("ARTIST", "Station 202")],
    );
    assert_eq!(pcm.len(), 48_000 * 3);
    check_opusinfo(
        &path,
        144_000,
        &["TITLE=Keyline test", "ARTIST=Station 202"],
    );
    // The reference decoder hears the same tones, with the same length.
    let ref_pcm = opusdec_to_pcm(&path, dir.path());
    assert_eq!(ref_pcm.len(), pcm.len(), "opusdec length");
    assert_eq!(tones_heard(&ref_pcm), SENT.to_vec());
    // And it decodes to what we decode (both are libopus).
    let ours = read_ogg_opus(&path).expect("read");
    let max_diff = ours
        .iter()
        .zip(&ref_pcm)
        .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
        .max()
        .unwrap_or(0);
    assert!(max_diff <= 2, "ours and opusdec differ by up to {max_diff}");
    check_sox(&path);
}

#[test]
fn pages_are_flushed_every_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pages.opus");
    let pcm = test_signal(1000);
    write_file(&path, &pcm, &[]);
    let bytes = std::fs::read(&path).expect("bytes");
    let granules = page_granules(&bytes);
    // Two header pages (granule 0), then one page per second of packets.
    assert_eq!(&granules[..2], &[0, 0]);
    let audio = &granules[2..];
    for w in audio.windows(2) {
        assert!(w[1] > w[0]);
        assert!(w[1] - w[0] <= FLUSH_EVERY_SAMPLES + FRAME_SAMPLES as u64);
    }
    assert_eq!(audio[0], FLUSH_EVERY_SAMPLES);
}

/// Granule positions of all pages (walking the page headers).
fn page_granules(bytes: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 27 <= bytes.len() {
        assert_eq!(&bytes[pos..pos + 4], b"OggS");
        let mut g = [0u8; 8];
        g.copy_from_slice(&bytes[pos + 6..pos + 14]);
        out.push(u64::from_le_bytes(g));
        let n = usize::from(bytes[pos + 26]);
        let body: usize = bytes[pos + 27..pos + 27 + n]
            .iter()
            .map(|&l| usize::from(l))
            .sum();
        pos += 27 + n + body;
    }
    out
}

/// Byte offsets where each page starts.
fn page_starts(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 27 <= bytes.len() {
        out.push(pos);
        let n = usize::from(bytes[pos + 26]);
        let body: usize = bytes[pos + 27..pos + 27 + n]
            .iter()
            .map(|&l| usize::from(l))
            .sum();
        pos += 27 + n + body;
    }
    out
}

#[test]
fn killed_writer_leaves_file_readable_up_to_last_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("killed.opus");
    // 1 s of each tone, then half a second more of the last.
    let pcm = tone_sequence(&[(700.0, 1000), (1100.0, 1000), (1500.0, 1000), (1900.0, 500)]);
    let mut w = OggOpusWriter::create(&path).expect("create");
    for f in pcm.chunks_exact(FRAME_SAMPLES) {
        w.write_frame(f).expect("write");
    }
    let pre_skip = usize::from(w.pre_skip().expect("pre-skip"));
    // "Kill": the writer never finishes (no Drop, no end page).
    std::mem::forget(w);

    let decoded = read_ogg_opus(&path).expect("readable after a kill");
    // Three whole seconds were flushed (the last half second was buffered).
    assert_eq!(decoded.len(), 3 * 48_000 - pre_skip);
    assert_eq!(tones_heard(&decoded), vec![700.0, 1100.0, 1500.0]);
    // The reference decoder plays it too.
    let ref_pcm = opusdec_to_pcm(&path, dir.path());
    assert_eq!(tones_heard(&ref_pcm), vec![700.0, 1100.0, 1500.0]);
}

#[test]
fn file_cut_anywhere_reads_a_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cut.opus");
    let pcm = test_signal(600);
    write_file(&path, &pcm, &[]);
    let bytes = std::fs::read(&path).expect("bytes");
    let full = read_ogg_opus_bytes(&bytes).expect("full");
    let starts = page_starts(&bytes);
    let headers_end = starts[2];
    let mut last_len = 0;
    for cut in (0..bytes.len()).step_by(173) {
        let r = read_ogg_opus_bytes(&bytes[..cut]);
        if cut < headers_end {
            let e = r.expect_err("no headers, no audio");
            assert!(matches!(e, MediaError::Format(_)), "{e}");
            continue;
        }
        let part = r.unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert!(part.len() >= last_len, "cut at {cut}: shrank");
        assert_eq!(part, full[..part.len()], "cut at {cut}: not a prefix");
        last_len = part.len();
    }
    assert!(last_len > full.len() / 2);
}

#[test]
fn write_packet_stores_received_packets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("packets.opus");
    let pcm = test_signal(600);
    let mut enc = OpusEncoder::new().expect("encoder");
    let mut w =
        OggOpusWriter::create_with_tags(&path, &[("TITLE", "Voicemail from 203")]).expect("create");
    let mut packets = 0u64;
    for f in pcm.chunks_exact(FRAME_SAMPLES) {
        let p = enc.encode(f).expect("encode");
        w.write_packet(&p, FRAME_SAMPLES as u32)
            .expect("write_packet");
        packets += 1;
    }
    // Wrong duration, empty and garbage packets are refused.
    let p = enc.encode(&[0; FRAME_SAMPLES]).expect("encode");
    assert!(w.write_packet(&p, 480).is_err());
    assert!(w.write_packet(&[], 960).is_err());
    assert!(w.write_packet(&vec![0xff; 70_000], 960).is_err());
    let pre_skip = u64::from(w.pre_skip().expect("pre-skip"));
    let info = w.finish().expect("finish");
    assert_eq!(info.packets, packets, "refused packets were not stored");
    // The stored stream plays all the audio the packets carry: the
    // original less the sender's codec delay at the very end.
    assert_eq!(info.samples, pcm.len() as u64 - pre_skip);
    let decoded = read_ogg_opus(&path).expect("read");
    assert_eq!(decoded.len() as u64, info.samples);
    assert_eq!(tones_heard(&decoded), SENT.to_vec());
    let lag = best_lag(&pcm, &decoded, first_change(600) - 2_400, 4_800);
    assert!(lag.abs() <= 8, "decoded audio is {lag} samples off");
    check_opusinfo(&path, info.samples, &["TITLE=Voicemail from 203"]);
    check_sox(&path);
}

#[test]
fn sink_trait_and_drop_finish_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pcm = test_signal(250);

    let path = dir.path().join("sink.opus");
    let mut sink: Box<dyn Sink> = Box::new(OggOpusWriter::create(&path).expect("create"));
    for f in pcm.chunks_exact(FRAME_SAMPLES) {
        sink.write_frame(f).expect("write");
    }
    sink.finish().expect("finish via Sink");
    sink.finish().expect("finish twice is harmless");
    assert!(
        sink.write_frame(&pcm[..FRAME_SAMPLES]).is_err(),
        "write after finish"
    );
    drop(sink);
    check_opusinfo(&path, 57_600, &[]);
    assert_eq!(read_ogg_opus(&path).expect("read").len(), pcm.len());

    // Dropped without finishing: ended all the same.
    let path = dir.path().join("dropped.opus");
    let mut w = OggOpusWriter::create(&path).expect("create");
    for f in pcm.chunks_exact(FRAME_SAMPLES) {
        w.write_frame(f).expect("write");
    }
    drop(w);
    check_opusinfo(&path, 57_600, &[]);
    let decoded = read_ogg_opus(&path).expect("read");
    assert_eq!(decoded.len(), pcm.len());
    assert_eq!(tones_heard(&decoded), SENT.to_vec());

    // Wrong frame sizes are refused.
    let path = dir.path().join("sizes.opus");
    let mut w = OggOpusWriter::create(&path).expect("create");
    assert!(w.write_frame(&[0; 100]).is_err());
    assert!(w.write_frame(&[0; FRAME_SAMPLES + 1]).is_err());
}

#[test]
fn empty_recording_is_a_valid_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("empty.opus");
    let info = OggOpusWriter::create(&path)
        .expect("create")
        .finish()
        .expect("finish");
    assert_eq!(info.samples, 0);
    assert!(read_ogg_opus(&path).expect("read").is_empty());
    check_opusinfo(&path, 0, &[]);
}

#[test]
fn reads_files_made_by_opusenc_including_stereo() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Stereo at 16 kHz: 700 Hz on the left, 1300 Hz on the right.
    let wav = dir.path().join("stereo.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).expect("wav");
    for i in 0..16_000 {
        let t = f64::from(i) / 16_000.0;
        let l = 8000.0 * (std::f64::consts::TAU * 700.0 * t).sin();
        let r = 8000.0 * (std::f64::consts::TAU * 1300.0 * t).sin();
        w.write_sample(l as i16).expect("l");
        w.write_sample(r as i16).expect("r");
    }
    w.finalize().expect("finalize");
    let opus = dir.path().join("stereo.opus");
    let out = match Command::new("opusenc")
        .args(["--quiet", "--bitrate", "64"])
        .arg(&wav)
        .arg(&opus)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`opusenc` is not installed: install the Debian package `opus-tools` \
             (apt-get install opus-tools)"
        ),
        Err(e) => panic!("running opusenc: {e}"),
    };
    assert!(out.status.success(), "opusenc:\n{}", text(&out));
    let decoded = read_ogg_opus(&opus).expect("read opusenc's stereo file");
    // One second at 48 kHz, whatever opusenc's pre-skip.
    assert_eq!(decoded.len(), 48_000);
    let mid = &decoded[24_000..24_000 + 4 * FRAME_SAMPLES];
    let (p700, p1300, p1000) = (
        goertzel_power(mid, 700.0),
        goertzel_power(mid, 1300.0),
        goertzel_power(mid, 1000.0),
    );
    // Downmixed: each channel's tone at about half amplitude (power / 4).
    assert!(p700 > 0.1 * 64e6 && p1300 > 0.1 * 64e6, "{p700} {p1300}");
    assert!(p1000 < 0.01 * p700.min(p1300), "{p1000}");
}

#[test]
fn non_ogg_opus_input_gives_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wav = dir.path().join("tone.wav");
    write_wav(&wav, &tone_sequence(&[(700.0, 100)])).expect("wav");
    let e = read_ogg_opus(&wav).expect_err("a WAV is not Ogg Opus");
    let msg = e.to_string();
    assert!(msg.contains("not an Ogg Opus file"), "{msg}");
    assert!(msg.contains("tone.wav"), "names the file: {msg}");
    assert!(!is_ogg_opus(&std::fs::read(&wav).expect("bytes")));

    let missing = dir.path().join("missing.opus");
    let e = read_ogg_opus(&missing).expect_err("missing");
    assert!(
        matches!(&e, MediaError::Io(io) if io.kind() == std::io::ErrorKind::NotFound),
        "{e}"
    );
    assert!(e.to_string().contains("missing.opus"), "{e}");

    for bad in [&b""[..], b"OggS", b"RIFF....WAVE", &[0u8; 100]] {
        let e = read_ogg_opus_bytes(bad).expect_err("garbage");
        assert!(e.to_string().contains("not an Ogg Opus file"), "{e}");
        assert!(!is_ogg_opus(bad));
    }

    // An Ogg Vorbis stream is Ogg but not Opus.
    let vorbis = page(
        0x02,
        0,
        1,
        0,
        &[b"\x01vorbis\x00\x00\x00\x00\x01\x44\xac\x00\x00"],
    );
    let e = read_ogg_opus_bytes(&vorbis).expect_err("vorbis");
    assert!(e.to_string().contains("not an Ogg Opus file"), "{e}");
    assert!(!is_ogg_opus(&vorbis));

    // Six channels (surround mapping) are refused by name.
    let mut head = b"OpusHead\x01\x06\x38\x01\x80\xbb\x00\x00\x00\x00\x01".to_vec();
    head.extend_from_slice(&[4, 2, 0, 4, 1, 2, 3, 5]);
    let mut six = page(0x02, 0, 1, 0, &[&head]);
    six.extend(page(
        0,
        0,
        1,
        1,
        &[b"OpusTags\x00\x00\x00\x00\x00\x00\x00\x00"],
    ));
    assert!(is_ogg_opus(&six));
    let e = read_ogg_opus_bytes(&six).expect_err("6 channels");
    assert!(e.to_string().contains("6 channels"), "{e}");

    // Headers only: an empty but valid stream.
    let head_page = page(
        0x02,
        0,
        1,
        0,
        &[b"OpusHead\x01\x01\x38\x01\x80\xbb\x00\x00\x00\x00\x00"],
    );
    let mut empty = head_page.clone();
    empty.extend(page(
        0,
        0,
        1,
        1,
        &[b"OpusTags\x00\x00\x00\x00\x00\x00\x00\x00"],
    ));
    assert_eq!(
        read_ogg_opus_bytes(&empty).expect("empty"),
        Vec::<i16>::new()
    );
    // Without its OpusTags header it is refused.
    let e = read_ogg_opus_bytes(&head_page).expect_err("no tags");
    assert!(e.to_string().contains("OpusTags"), "{e}");
}

/// The Ogg page checksum (RFC 3533), written independently of the crate's.
fn crc(data: &[u8]) -> u32 {
    let mut c = 0u32;
    for &b in data {
        c ^= u32::from(b) << 24;
        for _ in 0..8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x04c1_1db7
            } else {
                c << 1
            };
        }
    }
    c
}

/// Recomputes the checksum of the page at `bytes[start..]`.
fn fix_crc(bytes: &mut [u8], start: usize) {
    let n = usize::from(bytes[start + 26]);
    let body: usize = bytes[start + 27..start + 27 + n]
        .iter()
        .map(|&l| usize::from(l))
        .sum();
    let end = start + 27 + n + body;
    bytes[start + 22..start + 26].fill(0);
    let c = crc(&bytes[start..end]);
    bytes[start + 22..start + 26].copy_from_slice(&c.to_le_bytes());
}

/// One Ogg page holding whole `packets`.
fn page(flags: u8, granule: u64, serial: u32, seq: u32, packets: &[&[u8]]) -> Vec<u8> {
    let mut p = b"OggS\x00".to_vec();
    p.push(flags);
    p.extend_from_slice(&granule.to_le_bytes());
    p.extend_from_slice(&serial.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&[0; 4]);
    let mut lacing = Vec::new();
    for pk in packets {
        lacing.extend(std::iter::repeat_n(255u8, pk.len() / 255));
        lacing.push((pk.len() % 255) as u8);
    }
    p.push(lacing.len() as u8);
    p.extend_from_slice(&lacing);
    for pk in packets {
        p.extend_from_slice(pk);
    }
    fix_crc(&mut p, 0);
    p
}

#[test]
fn our_checksums_match_an_independent_implementation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crc.opus");
    write_file(&path, &test_signal(250), &[]);
    let bytes = std::fs::read(&path).expect("bytes");
    let mut fixed = bytes.clone();
    for s in page_starts(&bytes) {
        fix_crc(&mut fixed, s);
    }
    assert_eq!(fixed, bytes);
}

fn valid_file() -> Vec<u8> {
    static FILE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path: PathBuf = dir.path().join("fuzz.opus");
        write_file(&path, &test_signal(150), &[("TITLE", "fuzz")]);
        std::fs::read(&path).expect("bytes")
    })
    .clone()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let r = read_ogg_opus_bytes(&bytes);
        prop_assert!(r.is_err() || bytes.starts_with(b"OggS"));
        let _ = is_ogg_opus(&bytes);
    }

    #[test]
    fn random_pages_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..3000),
        flags in any::<u8>(),
    ) {
        // Valid headers, then a page of garbage with a correct checksum.
        let mut file = page(
            0x02,
            0,
            7,
            0,
            &[b"OpusHead\x01\x01\x38\x01\x80\xbb\x00\x00\x00\x00\x00"],
        );
        file.extend(page(0, 0, 7, 1, &[b"OpusTags\x00\x00\x00\x00\x00\x00\x00\x00"]));
        let chunks: Vec<&[u8]> = body.chunks(200).collect();
        file.extend(page(flags, 12_345, 7, 2, &chunks));
        let _ = read_ogg_opus_bytes(&file);
    }

    #[test]
    fn mutated_files_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        fix in any::<bool>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = valid_file();
        for (at, v) in &edits {
            let i = at.index(bytes.len());
            bytes[i] ^= v | 1;
        }
        if fix {
            // Re-checksum the pages that still parse, so the damage reaches
            // the header parser and the Opus decoder.
            let mut pos = 0;
            while pos + 27 <= bytes.len() && &bytes[pos..pos + 4] == b"OggS" {
                let n = usize::from(bytes[pos + 26]);
                let Some(lacing) = bytes.get(pos + 27..pos + 27 + n) else { break };
                let body: usize = lacing.iter().map(|&l| usize::from(l)).sum();
                if pos + 27 + n + body > bytes.len() {
                    break;
                }
                fix_crc(&mut bytes, pos);
                pos += 27 + n + body;
            }
        }
        let len = cut.index(bytes.len() + 1);
        let _ = read_ogg_opus_bytes(&bytes[..len]);
        let _ = read_ogg_opus_bytes(&bytes);
    }
}
