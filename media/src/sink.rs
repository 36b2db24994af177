//! 20 ms PCM frame sinks (written by the receiver every frame).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::{wav::hound_error, MediaError, SAMPLE_RATE};

/// A sink of 48 kHz mono PCM frames.
pub trait Sink: Send {
    /// Consumes one frame (normally [`crate::FRAME_SAMPLES`] samples).
    fn write_frame(&mut self, pcm: &[i16]) -> Result<(), MediaError>;
    /// Completes the output (e.g. writes a final file header).
    fn finish(&mut self) -> Result<(), MediaError> {
        Ok(())
    }
}

/// Frames between checkpoints of a [`WavSink`] (50 × 20 ms = 1 s).
pub const WAV_FLUSH_EVERY_FRAMES: u64 = 50;

/// Most sample bytes a WAV file can hold (its sizes are 32-bit), with margin.
const MAX_WAV_DATA_BYTES: u64 = u32::MAX as u64 - 4096;

/// The WAV format written by this crate: 48 kHz mono 16-bit integer.
pub fn wav_spec() -> hound::WavSpec {
    hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

/// Records frames to a 48 kHz mono 16-bit WAV file. The header is brought up
/// to date every [`WAV_FLUSH_EVERY_FRAMES`] frames, so the file stays readable
/// up to the last checkpoint even if the process is killed; [`Sink::finish`]
/// writes the final header.
pub struct WavSink {
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    path: PathBuf,
    frames: u64,
    data_bytes: u64,
}

impl std::fmt::Debug for WavSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavSink")
            .field("path", &self.path)
            .field("frames", &self.frames)
            .field("finished", &self.writer.is_none())
            .finish()
    }
}

impl WavSink {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> Result<Self, MediaError> {
        let writer =
            hound::WavWriter::create(path, wav_spec()).map_err(|e| hound_error(path, e))?;
        Ok(Self {
            writer: Some(writer),
            path: path.to_path_buf(),
            frames: 0,
            data_bytes: 0,
        })
    }

    /// Checkpoints now: updates the header and flushes to the file.
    pub fn flush(&mut self) -> Result<(), MediaError> {
        match self.writer.as_mut() {
            Some(w) => w.flush().map_err(|e| hound_error(&self.path, e)),
            None => Ok(()),
        }
    }

    /// Frames written so far.
    pub fn frames_written(&self) -> u64 {
        self.frames
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Sink for WavSink {
    fn write_frame(&mut self, pcm: &[i16]) -> Result<(), MediaError> {
        let Some(w) = self.writer.as_mut() else {
            return Err(MediaError::Wav(format!(
                "{}: write after finish",
                self.path.display()
            )));
        };
        let bytes = 2 * pcm.len() as u64;
        if self.data_bytes + bytes > MAX_WAV_DATA_BYTES {
            return Err(MediaError::Wav(format!(
                "{}: WAV size limit (4 GiB) reached",
                self.path.display()
            )));
        }
        // Fits in u32: bounded by MAX_WAV_DATA_BYTES above.
        let mut iw = w.get_i16_writer(pcm.len() as u32);
        for &s in pcm {
            iw.write_sample(s);
        }
        iw.flush().map_err(|e| hound_error(&self.path, e))?;
        self.data_bytes += bytes;
        self.frames += 1;
        if self.frames % WAV_FLUSH_EVERY_FRAMES == 0 {
            self.flush()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), MediaError> {
        match self.writer.take() {
            Some(w) => w.finalize().map_err(|e| hound_error(&self.path, e)),
            None => Ok(()),
        }
    }
}

/// Discards every frame (counting them).
#[derive(Debug, Clone, Copy, Default)]
pub struct NullSink {
    frames: u64,
}

impl NullSink {
    /// A new null sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Frames discarded so far.
    pub fn frames_written(&self) -> u64 {
        self.frames
    }
}

impl Sink for NullSink {
    fn write_frame(&mut self, _pcm: &[i16]) -> Result<(), MediaError> {
        self.frames += 1;
        Ok(())
    }
}
