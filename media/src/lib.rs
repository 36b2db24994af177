//! Keyline's media path: Opus encoding/decoding (real libopus), the RTP
//! playout jitter buffer, 20 ms frame sources (tone, silence, WAV) and sinks
//! (WAV, null), and tone generation/analysis used by ringtones, the agent and
//! tests, Ogg Opus files ([`oggopus`]) and call recording ([`record`]). All
//! audio here is 48 kHz mono 16-bit PCM in 20 ms frames. Video is VP8
//! through libvpx ([`vp8`]) with the test pattern and frame sinks of
//! [`video`].
//!
//! With the `device` feature (on by default) [`device`] adds the sound card
//! (through cpal; ALSA on Linux) as a source and a sink.

pub mod codec;
#[cfg(feature = "device")]
pub mod device;
pub mod jitter;
pub mod oggopus;
pub mod record;
pub mod sink;
pub mod source;
pub mod tones;
pub mod video;
pub mod vp8;
mod wav;
pub mod webm;

pub use codec::{OpusDecoder, OpusEncoder};
#[cfg(feature = "device")]
pub use device::{list_devices, open_input, open_output, DeviceInfo};
pub use jitter::{JitterBuffer, JitterStats, Playout};
pub use oggopus::{
    is_ogg_opus, read_ogg_opus, read_ogg_opus_bytes, read_ogg_opus_bytes_max, read_ogg_opus_max,
    OggOpusInfo, OggOpusWriter,
};
pub use record::{CallRecorder, VideoSize};
pub use sink::{NullSink, Sink, WavSink};
pub use source::{parse_source, LoopSource, SilenceSource, Source, ToneSource, WavSource};
pub use tones::{
    collapse_track, detect_tone, goertzel_power, hold_music, read_wav_mono48k,
    read_wav_mono48k_bytes, ringtone_samples, tone_sequence, tone_track, write_wav,
};

/// Sample rate of all PCM handled by this crate (Hz).
pub const SAMPLE_RATE: u32 = 48_000;
/// Duration of one media frame (ms).
pub const FRAME_MS: u32 = 20;
/// Samples in one 20 ms mono frame at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;

/// Errors from the media path.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// libopus reported an error.
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
    /// An I/O error (the message names the file where one is involved).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A WAV file could not be read or written.
    #[error("WAV: {0}")]
    Wav(String),
    /// Input of the wrong shape: frame length, source spec, packet duration...
    #[error("bad format: {0}")]
    Format(String),
    /// A sound card could not be found, opened or kept running (the message
    /// says which, and names the audio system, e.g. ALSA).
    #[error("{0}")]
    Device(String),
    /// libvpx refused to encode or decode (the message says why).
    #[error("vp8: {0}")]
    Codec(String),
}
