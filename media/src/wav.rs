//! WAV loading shared by `WavSource` and `read_wav_mono48k`: any format hound
//! reads, mixed to mono and resampled (linear interpolation) to 48 kHz.

use std::io::Read;
use std::path::Path;

use crate::{MediaError, SAMPLE_RATE};

/// Longest file accepted, in seconds of output audio (bounds memory).
pub(crate) const MAX_WAV_SECONDS: u64 = 3600;
/// Highest input sample rate considered when bounding the input length.
const MAX_INPUT_RATE: u32 = 384_000;

pub(crate) fn hound_error(path: &Path, e: hound::Error) -> MediaError {
    match e {
        hound::Error::IoError(io) => MediaError::Io(std::io::Error::new(
            io.kind(),
            format!("{}: {io}", path.display()),
        )),
        other => MediaError::Wav(format!("{}: {other}", path.display())),
    }
}

/// Loads `path` as 48 kHz mono 16-bit samples.
pub(crate) fn load_mono48k(path: &Path) -> Result<Vec<i16>, MediaError> {
    let reader = hound::WavReader::open(path).map_err(|e| match e {
        hound::Error::FormatError(msg) => MediaError::Wav(format!(
            "{}: not a readable WAV file ({msg})",
            path.display()
        )),
        other => hound_error(path, other),
    })?;
    decode_reader(path, reader)
}

fn decode_reader<R: Read>(
    path: &Path,
    mut reader: hound::WavReader<R>,
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
    // The header's length is only a hint: reserve at most ~1 min up front.
    let reserve = frames_in.min(60 * u64::from(MAX_INPUT_RATE));
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

    #[test]
    fn to_i16_clamps() {
        assert_eq!(to_i16(2.0), 32767);
        assert_eq!(to_i16(-2.0), -32768);
        assert_eq!(to_i16(0.0), 0);
    }
}
