//! WAV loading shared by `WavSource` and `read_wav_mono48k`: any format hound
//! reads, mixed to mono and resampled (linear interpolation) to 48 kHz.

use std::io::Read;
use std::path::Path;

use crate::{MediaError, SAMPLE_RATE};

/// Longest file accepted, in seconds of output audio (bounds memory).
pub(crate) const MAX_WAV_SECONDS: u64 = 3600;
/// Highest input sample rate considered when bounding the input length.
const MAX_INPUT_RATE: u32 = 384_000;
/// Lowest input sample rate taken: below it a few bytes of samples would
/// resample to a great deal of 48 kHz audio (a header saying 1 Hz made
/// 3.6 kB into an hour, a gigabyte of memory).
const MIN_INPUT_RATE: u32 = 1_000;

pub(crate) fn hound_error(path: &Path, e: hound::Error) -> MediaError {
    match e {
        hound::Error::IoError(io) => MediaError::Io(std::io::Error::new(
            io.kind(),
            format!("{}: {io}", path.display()),
        )),
        other => MediaError::Wav(format!("{}: {other}", path.display())),
    }
}

fn open_error(path: &Path, e: hound::Error) -> MediaError {
    match e {
        hound::Error::FormatError(msg) => MediaError::Wav(format!(
            "{}: not a readable WAV file ({msg})",
            path.display()
        )),
        other => hound_error(path, other),
    }
}

/// Loads `path` as 48 kHz mono 16-bit samples.
pub(crate) fn load_mono48k(path: &Path) -> Result<Vec<i16>, MediaError> {
    let reader = hound::WavReader::open(path).map_err(|e| open_error(path, e))?;
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    decode_reader(path, reader, size)
}

/// [`load_mono48k`] on a file's bytes in memory (errors name it "WAV data").
pub(crate) fn load_mono48k_bytes(bytes: &[u8]) -> Result<Vec<i16>, MediaError> {
    let path = Path::new("WAV data");
    let reader =
        hound::WavReader::new(std::io::Cursor::new(bytes)).map_err(|e| open_error(path, e))?;
    decode_reader(path, reader, bytes.len() as u64)
}

/// Decodes what `reader` holds; `size` is the file's length in bytes
/// (0 if unknown), which bounds what is allocated before reading.
fn decode_reader<R: Read>(
    path: &Path,
    mut reader: hound::WavReader<R>,
    size: u64,
) -> Result<Vec<i16>, MediaError> {
    let spec = reader.spec();
    if spec.channels == 0 || spec.sample_rate == 0 {
        return Err(MediaError::Wav(format!(
            "{}: invalid header ({} channels, {} Hz)",
            path.display(),
            spec.channels,
            spec.sample_rate
        )));
    }
    if spec.sample_rate < MIN_INPUT_RATE {
        return Err(MediaError::Wav(format!(
            "{}: sample rate {} Hz is below the {MIN_INPUT_RATE} Hz accepted",
            path.display(),
            spec.sample_rate
        )));
    }
    let frames_in = u64::from(reader.duration());
    let frames_out = frames_in * u64::from(SAMPLE_RATE) / u64::from(spec.sample_rate);
    if frames_out > MAX_WAV_SECONDS * u64::from(SAMPLE_RATE)
        || frames_in > MAX_WAV_SECONDS * u64::from(MAX_INPUT_RATE)
    {
        return Err(MediaError::Wav(format!(
            "{}: longer than {MAX_WAV_SECONDS} s",
            path.display()
        )));
    }
    let channels = usize::from(spec.channels);
    // The header's length is only a claim: reserve no more than the file
    // can hold, and at most ~1 min, up front.
    let frame_bytes = u64::from(spec.channels) * u64::from(spec.bits_per_sample.div_ceil(8).max(1));
    let reserve = frames_in
        .min(size / frame_bytes)
        .min(60 * u64::from(MAX_INPUT_RATE));
    let mut mono: Vec<f32> = Vec::with_capacity(usize::try_from(reserve).unwrap_or(0));
    let mut acc = 0.0f32;
    let mut k = 0usize;
    let mut push = |v: f32| {
        acc += v;
        k += 1;
        if k == channels {
            mono.push(acc / channels as f32);
            acc = 0.0;
            k = 0;
        }
    };
    match spec.sample_format {
        hound::SampleFormat::Float => {
            if spec.bits_per_sample != 32 {
                return Err(MediaError::Wav(format!(
                    "{}: unsupported {}-bit float samples",
                    path.display(),
                    spec.bits_per_sample
                )));
            }
            for s in reader.samples::<f32>() {
                let v = s.map_err(|e| hound_error(path, e))?;
                push(if v.is_finite() {
                    v.clamp(-1.0, 1.0)
                } else {
                    0.0
                });
            }
        }
        hound::SampleFormat::Int => {
            let bits = spec.bits_per_sample;
            if bits == 0 || bits > 32 {
                return Err(MediaError::Wav(format!(
                    "{}: unsupported {bits}-bit integer samples",
                    path.display()
                )));
            }
            let scale = 1.0f64 / f64::from(1u32 << (bits - 1)).max(1.0);
            for s in reader.samples::<i32>() {
                let v = s.map_err(|e| hound_error(path, e))?;
                push((f64::from(v) * scale) as f32);
            }
        }
    }
    let resampled = resample_linear(&mono, spec.sample_rate, SAMPLE_RATE);
    Ok(resampled.into_iter().map(to_i16).collect())
}

/// Converts a float sample in [-1, 1] to i16, clamping.
pub(crate) fn to_i16(v: f32) -> i16 {
    (v * 32767.0).round().clamp(-32768.0, 32767.0) as i16
}

/// Linear-interpolation resampler.
pub(crate) fn resample_linear(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() {
        return input.to_vec();
    }
    let out_len = (input.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let step = f64::from(from) / f64::from(to);
    let last = input.len() - 1;
    (0..out_len)
        .map(|i| {
            let pos = i as f64 * step;
            let idx = (pos.floor() as usize).min(last);
            let frac = (pos - idx as f64) as f32;
            let a = input[idx];
            let b = input[(idx + 1).min(last)];
            a + (b - a) * frac
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resample_identity_and_lengths() {
        let x: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
        assert_eq!(resample_linear(&x, 48_000, 48_000), x);
        assert_eq!(resample_linear(&x, 16_000, 48_000).len(), 300);
        assert_eq!(resample_linear(&x, 96_000, 48_000).len(), 50);
        let up = resample_linear(&x, 16_000, 48_000);
        // Interpolated points lie between their neighbours.
        assert!((up[1] - (x[0] + (x[1] - x[0]) / 3.0)).abs() < 1e-6);
        assert!(resample_linear(&[], 8_000, 48_000).is_empty());
    }

    /// A WAV header: PCM, `channels`, `rate`, `bits`, and a data chunk
    /// that claims `data_len` bytes; `samples` bytes of it follow.
    fn header(channels: u16, rate: u32, bits: u16, data_len: u32, samples: &[u8]) -> Vec<u8> {
        let align = channels * bits.div_ceil(8);
        let mut w = Vec::new();
        w.extend_from_slice(b"RIFF");
        w.extend_from_slice(&(36 + data_len).to_le_bytes());
        w.extend_from_slice(b"WAVEfmt ");
        w.extend_from_slice(&16u32.to_le_bytes());
        w.extend_from_slice(&1u16.to_le_bytes());
        w.extend_from_slice(&channels.to_le_bytes());
        w.extend_from_slice(&rate.to_le_bytes());
        w.extend_from_slice(&(rate * u32::from(align)).to_le_bytes());
        w.extend_from_slice(&align.to_le_bytes());
        w.extend_from_slice(&bits.to_le_bytes());
        w.extend_from_slice(b"data");
        w.extend_from_slice(&data_len.to_le_bytes());
        w.extend_from_slice(samples);
        w
    }

    /// What a header claims costs nothing until the bytes are there: a
    /// short file claiming an hour is refused without reserving for it (it
    /// reserved 92 MB, found by the `wav` fuzz target), and a sample rate
    /// of a few Hz is refused rather than resampled into an hour of audio.
    #[test]
    fn hostile_headers_cost_what_the_file_holds() {
        let short = header(2, 384_000, 8, 1_000_000_000, &[0; 64]);
        match load_mono48k_bytes(&short) {
            Err(e) => assert!(e.to_string().contains("WAV data: "), "{e}"),
            Ok(v) => panic!("{} samples from 64 bytes", v.len()),
        }
        let slow = header(1, 1, 8, 3600, &[128; 3600]);
        match load_mono48k_bytes(&slow) {
            Err(MediaError::Wav(m)) => assert!(m.contains("below the 1000 Hz"), "{m}"),
            other => panic!("{:?}", other.map(|v| v.len())),
        }
        // An ordinary file still reads, at any rate from 1 kHz.
        let ok = header(1, 8_000, 8, 80, &[128; 80]);
        assert_eq!(load_mono48k_bytes(&ok).map(|v| v.len()).ok(), Some(480));
        let ok = header(1, 1_000, 16, 20, &[0; 20]);
        assert_eq!(load_mono48k_bytes(&ok).map(|v| v.len()).ok(), Some(480));
    }

    #[test]
    fn to_i16_clamps() {
        assert_eq!(to_i16(2.0), 32767);
        assert_eq!(to_i16(-2.0), -32768);
        assert_eq!(to_i16(0.0), 0);
    }
}
