//! Voicemail on the gateway: the one place the gateway is itself an end of
//! a media connection (DESIGN §3.1). A caller who reaches a mailbox dials
//! the gateway with the per-call token, hears the greeting and a beep, and
//! what it says is stored as received — the caller's own Opus packets
//! written into an Ogg Opus file, no re-encoding — until the length limit,
//! a stretch of silence, or the caller hangs up. Stations list, fetch and
//! delete their messages over their control stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use keyline_media::{OggOpusWriter, OpusDecoder, OpusEncoder, FRAME_SAMPLES};
use keyline_net::peer_fingerprint;
use keyline_proto::codec::write_frame;
use keyline_proto::media::{decode_datagram, encode_datagram, RtpHeader, OPUS_PAYLOAD_TYPE};
use keyline_proto::msg::{CallId, Msg, VoicemailInfo};
use keyline_proto::MAX_MESSAGE;

use crate::server::{Event, Shared};

/// A caller expected at a mailbox.
#[derive(Debug, Clone)]
pub struct Job {
    /// The switchboard's call.
    pub call: CallId,
    /// The id the caller presents on the media connection (the directory's
    /// for a caller from outside).
    pub flow: CallId,
    pub caller_fp: String,
    pub caller: String,
    pub mailbox: String,
}

/// Bytes of a voicemail file sent per chunk.
pub const CHUNK: usize = 32 * 1024;

/// A frame quieter than this RMS counts as silence.
const SILENCE_RMS: f64 = 300.0;

/// The default greeting: a soft two-note chime, a pause, then the beep.
pub fn default_greeting() -> Vec<i16> {
    keyline_media::tone_sequence(&[
        (660.0, 250),
        (0.0, 80),
        (880.0, 350),
        (0.0, 500),
        (1000.0, 400),
        (0.0, 100),
    ])
}

fn rms(pcm: &[i16]) -> f64 {
    if pcm.is_empty() {
        return 0.0;
    }
    let sum: f64 = pcm.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    (sum / pcm.len() as f64).sqrt()
}

/// Serve one caller's media connection to a mailbox, from `MediaHello` to
/// the stored file.
pub async fn serve(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    call: CallId,
    token: String,
) -> Result<()> {
    // A caller from outside may be quicker than the directory's answer to
    // the gateway, which creates the job: wait for it a little.
    let mut job = None;
    for _ in 0..40 {
        job = shared
            .vm_jobs
            .lock()
            .ok()
            .and_then(|mut j| j.remove(&token));
        if job.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(job) = job else {
        conn.close(quinn::VarInt::from_u32(1), b"bad media credential");
        bail!("no caller is expected at a mailbox with this credential");
    };
    let fp = peer_fingerprint(&conn).context("no certificate")?;
    if job.flow != call || job.caller_fp != fp {
        conn.close(quinn::VarInt::from_u32(1), b"bad media credential");
        bail!("wrong credential for the mailbox of {}", job.mailbox);
    }
    write_frame(&mut send, &Msg::MediaOk { call }, MAX_MESSAGE).await?;
    let cfg = shared.cfg();
    let uploaded = greeting_path(&shared.state_dir);
    let greeting = if uploaded.exists() {
        keyline_media::read_ogg_opus(&uploaded).unwrap_or_else(|e| {
            tracing::warn!(
                "voicemail greeting {}: {e}; using the default",
                uploaded.display()
            );
            default_greeting()
        })
    } else {
        match &cfg.voicemail_greeting {
            Some(p) => keyline_media::read_wav_mono48k(p).unwrap_or_else(|e| {
                tracing::warn!("voicemail greeting {}: {e}; using the default", p.display());
                default_greeting()
            }),
            None => default_greeting(),
        }
    };
    play(&conn, call, &greeting).await?;

    let dir = shared.state_dir.join("voicemail").join(&job.mailbox);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!(
        "{}-{}.opus",
        crate::db::now_ms(),
        keyline_media::record::sanitize_peer(&job.caller)
    ));
    let voiced = record(
        &conn,
        call,
        &path,
        &job,
        cfg.voicemail_max_secs,
        cfg.voicemail_silence_secs,
    )
    .await;
    conn.close(quinn::VarInt::from_u32(0), b"message recorded");
    let _ = shared
        .events
        .send(Event::VoicemailDone { call: job.call })
        .await;
    let (secs, voiced) = voiced
        .with_context(|| format!("storing a message for {} from {}", job.mailbox, job.caller))?;
    if voiced < 25 {
        // Under half a second of sound: a caller who hung up at the beep.
        let _ = std::fs::remove_file(&path);
        return Ok(());
    }
    let db = shared.db.clone();
    let (mb, caller, p) = (
        job.mailbox.clone(),
        job.caller.clone(),
        path.display().to_string(),
    );
    tokio::task::spawn_blocking(move || db.insert_voicemail(&mb, &caller, &p, secs)).await??;
    tracing::info!(
        "voicemail for {} from {} ({secs:.1} s)",
        job.mailbox,
        job.caller
    );
    let _ = shared
        .events
        .send(Event::MessageWaiting { ext: job.mailbox })
        .await;
    Ok(())
}

/// Send `pcm` to the caller as Opus in real time.
async fn play(conn: &quinn::Connection, flow: u64, pcm: &[i16]) -> Result<()> {
    let mut enc = OpusEncoder::new()?;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let (mut seq, mut ts): (u16, u32) = (rand::random(), rand::random());
    let ssrc: u32 = rand::random();
    let mut out = Vec::with_capacity(256);
    for chunk in pcm.chunks(FRAME_SAMPLES) {
        tick.tick().await;
        let mut frame = chunk.to_vec();
        frame.resize(FRAME_SAMPLES, 0);
        let payload = enc.encode(&frame)?;
        let header = RtpHeader {
            payload_type: OPUS_PAYLOAD_TYPE,
            marker: false,
            sequence: seq,
            timestamp: ts,
            ssrc,
        };
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(FRAME_SAMPLES as u32);
        encode_datagram(flow, &header, &payload, &mut out)?;
        if conn.send_datagram(Bytes::copy_from_slice(&out)).is_err() {
            bail!("the caller hung up during the greeting");
        }
        // Whatever the caller says before the beep is not kept.
        while let Some(Ok(_)) = conn.read_datagram().now_or_never() {}
    }
    Ok(())
}

/// Store the caller's packets until the limit, silence, or hang-up.
/// Returns the seconds stored and the number of voiced frames.
async fn record(
    conn: &quinn::Connection,
    flow: u64,
    path: &Path,
    job: &Job,
    max_secs: u64,
    silence_secs: u64,
) -> Result<(f64, u64)> {
    let mut writer = OggOpusWriter::create_with_tags(
        path,
        &[
            ("ARTIST", job.caller.as_str()),
            ("TITLE", "Keyline voicemail"),
        ],
    )?;
    let mut dec = OpusDecoder::new()?;
    let max_frames = max_secs * 50;
    let silence_frames = silence_secs * 50;
    let (mut frames, mut silent_run, mut voiced) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(max_secs + 5);
    while frames < max_frames && Instant::now() < deadline {
        let d =
            match tokio::time::timeout(Duration::from_secs(silence_secs + 1), conn.read_datagram())
                .await
            {
                Ok(Ok(d)) => d,
                // Hung up, or nothing at all for a while.
                Ok(Err(_)) | Err(_) => break,
            };
        let Ok(dg) = decode_datagram(&d) else {
            continue;
        };
        if dg.flow != flow || dg.header.payload_type != OPUS_PAYLOAD_TYPE {
            continue;
        }
        if writer
            .write_packet(dg.payload, FRAME_SAMPLES as u32)
            .is_err()
        {
            continue;
        }
        frames += 1;
        let loud = dec
            .decode(Some(dg.payload))
            .map(|pcm| rms(&pcm) >= SILENCE_RMS)
            .unwrap_or(false);
        if loud {
            voiced += 1;
            silent_run = 0;
        } else {
            silent_run += 1;
            if silent_run >= silence_frames {
                break;
            }
        }
    }
    let info = writer.finish()?;
    Ok((info.duration.as_secs_f64(), voiced))
}

/// A station's mailbox as the protocol shows it.
pub fn list(shared: &Shared, ext: &str) -> Result<Vec<VoicemailInfo>> {
    Ok(shared
        .db
        .voicemails(ext)?
        .into_iter()
        .map(|r| VoicemailInfo {
            id: r.id as u64,
            from: r.caller,
            at_ms: r.created_ms,
            secs: r.secs,
            heard: r.heard,
        })
        .collect())
}

/// Unheard messages in a mailbox.
pub fn waiting(shared: &Shared, ext: &str) -> u32 {
    shared
        .db
        .voicemails(ext)
        .map(|v| v.iter().filter(|r| !r.heard).count() as u32)
        .unwrap_or(0)
}

/// A chunk of a voicemail file of `ext`; the first chunk marks it heard.
pub fn chunk(shared: &Shared, ext: &str, id: u64, offset: u64) -> Result<(u64, Vec<u8>)> {
    let row = shared
        .db
        .voicemails(ext)?
        .into_iter()
        .find(|r| r.id as u64 == id)
        .with_context(|| format!("no voicemail {id} in mailbox {ext}"))?;
    let bytes = std::fs::read(PathBuf::from(&row.path))
        .with_context(|| format!("reading voicemail {id}"))?;
    let total = bytes.len() as u64;
    let start = offset.min(total) as usize;
    let end = (start + CHUNK).min(bytes.len());
    if offset == 0 {
        shared.db.mark_heard(ext, row.id)?;
    }
    Ok((total, bytes[start..end].to_vec()))
}

/// Delete a voicemail of `ext` and its file.
pub fn delete(shared: &Shared, ext: &str, id: u64) -> Result<()> {
    match shared.db.delete_voicemail(ext, id as i64)? {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            Ok(())
        }
        None => bail!("no voicemail {id} in mailbox {ext}"),
    }
}

/// Where a greeting uploaded at the admin site is kept (Ogg Opus); it
/// wins over `voicemail_greeting` in the configuration file.
pub fn greeting_path(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("voicemail").join("greeting.opus")
}

/// Longest greeting taken, in seconds.
pub const MAX_GREETING_SECS: usize = 60;

/// Store `audio` (a WAV file or an Ogg Opus file) as the greeting, in Ogg
/// Opus; its length in seconds. Anything else is refused, and nothing is
/// changed.
pub fn store_greeting(state_dir: &std::path::Path, audio: &[u8]) -> Result<f64> {
    let dir = state_dir.join("voicemail");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let pcm = if audio.starts_with(b"RIFF") && audio.get(8..12) == Some(b"WAVE") {
        keyline_media::read_wav_mono48k_bytes(audio)
            .map_err(|e| anyhow::anyhow!("the WAV file cannot be read: {e}"))?
    } else if audio.starts_with(b"OggS") {
        keyline_media::read_ogg_opus_bytes(audio)
            .map_err(|e| anyhow::anyhow!("the Ogg file cannot be read as Opus: {e}"))?
    } else {
        bail!("this is not a WAV or Ogg Opus file; upload a greeting in one of those");
    };
    let secs = pcm.len() as f64 / 48_000.0;
    if secs < 0.5 {
        bail!("the greeting is shorter than half a second");
    }
    if pcm.len() > MAX_GREETING_SECS * 48_000 {
        bail!("the greeting is longer than {MAX_GREETING_SECS} seconds");
    }
    let tmp = dir.join(".greeting-new.opus");
    let mut w = keyline_media::OggOpusWriter::create(&tmp)
        .map_err(|e| anyhow::anyhow!("writing the greeting: {e}"))?;
    for chunk in pcm.chunks(keyline_media::FRAME_SAMPLES) {
        let mut frame = chunk.to_vec();
        frame.resize(keyline_media::FRAME_SAMPLES, 0);
        w.write_frame(&frame)
            .map_err(|e| anyhow::anyhow!("writing the greeting: {e}"))?;
    }
    w.finish()
        .map_err(|e| anyhow::anyhow!("writing the greeting: {e}"))?;
    std::fs::rename(&tmp, greeting_path(state_dir)).context("putting the greeting in place")?;
    Ok(secs)
}

use futures_lite_now::NowOrNever;

mod futures_lite_now {
    //! `now_or_never` for a future we only want to poll once.
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    pub trait NowOrNever: Future + Sized {
        fn now_or_never(self) -> Option<Self::Output> {
            let mut fut = pin!(self);
            let mut cx = Context::from_waker(Waker::noop());
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => None,
            }
        }
    }

    impl<F: Future> NowOrNever for F {}
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn greetings_are_stored_as_ogg_opus_and_other_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("kl-greeting-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let wav = dir.join("in.wav");
        let tones = keyline_media::tone_sequence(&[(700.0, 800), (0.0, 400)]);
        keyline_media::write_wav(&wav, &tones).unwrap();
        let secs = store_greeting(&dir, &std::fs::read(&wav).unwrap()).unwrap();
        assert!((secs - 1.2).abs() < 0.05, "{secs}");
        let stored = std::fs::read(greeting_path(&dir)).unwrap();
        assert!(keyline_media::is_ogg_opus(&stored));
        let back = keyline_media::read_ogg_opus_bytes(&stored).unwrap();
        assert!(
            back.len() >= tones.len(),
            "{} < {}",
            back.len(),
            tones.len()
        );
        // An Ogg Opus upload is taken as it decodes.
        assert!(store_greeting(&dir, &stored).is_ok());
        let kept = std::fs::read(greeting_path(&dir)).unwrap();

        let e = store_greeting(&dir, b"hello, this is not audio").unwrap_err();
        assert!(e.to_string().contains("not a WAV or Ogg Opus file"), "{e}");
        let e = store_greeting(&dir, b"RIFF\0\0\0\0WAVEjunkjunk").unwrap_err();
        assert!(e.to_string().contains("cannot be read"), "{e}");
        let e = store_greeting(&dir, b"OggS and then nothing").unwrap_err();
        assert!(e.to_string().contains("Ogg"), "{e}");
        // The refused uploads changed nothing.
        assert!(std::fs::read(greeting_path(&dir)).unwrap() == kept);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
