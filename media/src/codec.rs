//! Opus encoder and decoder for 20 ms, 48 kHz mono voice frames (libopus).

use crate::{MediaError, FRAME_SAMPLES, SAMPLE_RATE};

/// Target bitrate of the encoder (bit/s).
pub const OPUS_BITRATE: i32 = 32_000;
/// Packet loss the encoder expects (percent); sizes the in-band FEC.
pub const OPUS_EXPECTED_LOSS_PERCENT: i32 = 5;
/// Upper bound on one encoded packet (bytes), as libopus recommends.
const MAX_PACKET: usize = 4000;

/// Opus encoder: 48 kHz mono, VoIP application, voice signal, 32 kbit/s,
/// in-band FEC on, tuned for 5 % packet loss.
pub struct OpusEncoder {
    inner: opus::Encoder,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder").finish_non_exhaustive()
    }
}

impl OpusEncoder {
    /// A new encoder with Keyline's voice settings.
    pub fn new() -> Result<Self, MediaError> {
        let mut inner =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        inner.set_bitrate(opus::Bitrate::Bits(OPUS_BITRATE))?;
        // Tell the encoder it carries voice: it then stays in SILK/hybrid
        // mode, the only modes with in-band FEC, even for tonal content its
        // classifier would call music (which it would code as CELT, no FEC).
        inner.set_signal(opus::Signal::Voice)?;
        inner.set_inband_fec(true)?;
        inner.set_packet_loss_perc(OPUS_EXPECTED_LOSS_PERCENT)?;
        Ok(Self { inner })
    }

    /// Encodes one 20 ms frame; `pcm.len()` must be [`FRAME_SAMPLES`].
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>, MediaError> {
        if pcm.len() != FRAME_SAMPLES {
            return Err(MediaError::Format(format!(
                "opus encode: frame has {} samples, expected {FRAME_SAMPLES}",
                pcm.len()
            )));
        }
        Ok(self.inner.encode_vec(pcm, MAX_PACKET)?)
    }

    /// Forgets all history (for a new stream).
    pub fn reset(&mut self) -> Result<(), MediaError> {
        Ok(self.inner.reset_state()?)
    }

    /// The encoder's algorithmic delay in 48 kHz samples: how many samples
    /// of decoded output precede the first input sample (the Ogg Opus
    /// pre-skip).
    pub fn lookahead(&mut self) -> Result<u32, MediaError> {
        let n = self.inner.get_lookahead()?;
        u32::try_from(n)
            .map_err(|_| MediaError::Format(format!("opus encoder reported lookahead {n}")))
    }
}

/// Opus decoder producing 20 ms, 48 kHz mono frames, with packet loss
/// concealment and in-band FEC recovery.
pub struct OpusDecoder {
    inner: opus::Decoder,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder").finish_non_exhaustive()
    }
}

impl OpusDecoder {
    /// A new 48 kHz mono decoder.
    pub fn new() -> Result<Self, MediaError> {
        Ok(Self {
            inner: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?,
        })
    }

    /// Decodes one packet into [`FRAME_SAMPLES`] samples. `None` (or an empty
    /// packet) runs packet loss concealment for one frame. A packet that does
    /// not hold exactly 20 ms of audio is rejected with [`MediaError::Format`];
    /// a corrupt one gives [`MediaError::Opus`] (the caller may then conceal
    /// with `decode(None)`).
    pub fn decode(&mut self, packet: Option<&[u8]>) -> Result<Vec<i16>, MediaError> {
        let packet = packet.unwrap_or(&[]);
        if !packet.is_empty() {
            self.check_duration(packet)?;
        }
        self.decode_into_frame(packet, false)
    }

    /// Recovers the frame lost just before `next_packet` from that packet's
    /// in-band FEC data. If it carries none, libopus conceals instead, so the
    /// result is always [`FRAME_SAMPLES`] samples. Decode `next_packet` itself
    /// normally afterwards.
    pub fn decode_fec(&mut self, next_packet: &[u8]) -> Result<Vec<i16>, MediaError> {
        if next_packet.is_empty() {
            return self.decode_into_frame(&[], false);
        }
        self.check_duration(next_packet)?;
        self.decode_into_frame(next_packet, true)
    }

    /// Forgets all history (for a new stream).
    pub fn reset(&mut self) -> Result<(), MediaError> {
        Ok(self.inner.reset_state()?)
    }

    fn check_duration(&mut self, packet: &[u8]) -> Result<(), MediaError> {
        let n = self.inner.get_nb_samples(packet)?;
        if n != FRAME_SAMPLES {
            return Err(MediaError::Format(format!(
                "opus packet holds {n} samples, expected {FRAME_SAMPLES} (20 ms)"
            )));
        }
        Ok(())
    }

    fn decode_into_frame(&mut self, packet: &[u8], fec: bool) -> Result<Vec<i16>, MediaError> {
        let mut out = vec![0i16; FRAME_SAMPLES];
        let n = self.inner.decode(packet, &mut out, fec)?;
        // libopus fills exactly the requested duration for PLC/FEC and for a
        // checked 20 ms packet; keep the length invariant regardless.
        out.resize(FRAME_SAMPLES, 0);
        if n < FRAME_SAMPLES {
            for s in &mut out[n..] {
                *s = 0;
            }
        }
        Ok(out)
    }
}
