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
use keyline_net::{medialink, peer_fingerprint};
use keyline_proto::media::{decode_datagram, encode_datagram, RtpHeader, OPUS_PAYLOAD_TYPE};
use keyline_proto::msg::VoicemailInfo;

use crate::shared::{Event, Shared, VoicemailJob};

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
    hello: medialink::Hello,
) -> Result<()> {
    let call = hello.flow;
    // A caller from outside may be quicker than the directory's answer to
    // the gateway, which creates the job: wait for it a little.
    let mut job = None;
    for _ in 0..40 {
        job = shared
            .vm_jobs
            .lock()
            .ok()
            .and_then(|mut j| j.remove(&hello.token));
        if job.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(job) = job else {
        medialink::refuse(&conn);
        bail!("no caller is expected at a mailbox with this credential");
    };
    let fp = peer_fingerprint(&conn).context("no certificate")?;
    if job.flow != call || job.caller_fp != fp {
        medialink::refuse(&conn);
        bail!("wrong credential for the mailbox of {}", job.mailbox);
    }
    hello.accept().await?;
    let cfg = shared.cfg();
    let uploaded = greeting_path(&shared.state_dir);
    let greeting = if uploaded.exists() {
        keyline_media::read_ogg_opus_max(&uploaded, MAX_GREETING_SECS as u64).unwrap_or_else(|e| {
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
    // Recorded under a temporary name and renamed once whole: a file a
    // kill cut short is recognisable, and removed at the next start.
    let part = path.with_extension(PART);
    let voiced = record(
        &conn,
        call,
        &part,
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
    let (secs, voiced) = match voiced {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e.context(format!(
                "storing a message for {} from {}",
                job.mailbox, job.caller
            )));
        }
    };
    if voiced < 25 {
        // Under half a second of sound: a caller who hung up at the beep.
        let _ = std::fs::remove_file(&part);
        return Ok(());
    }
    let (p2, whole) = (part.clone(), path.clone());
    tokio::task::spawn_blocking(move || -> Result<()> {
        std::fs::File::open(&p2).and_then(|f| f.sync_all())?;
        std::fs::rename(&p2, &whole)?;
        Ok(())
    })
    .await?
    .with_context(|| format!("putting {} in place", path.display()))?;
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
    job: &VoicemailJob,
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

/// The extension of a voice message file still being written.
pub const PART: &str = "part";

/// What [`sweep`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Swept {
    /// Files a kill cut short, removed.
    pub removed: Vec<PathBuf>,
    /// Whole messages with no row (killed between the file and its row),
    /// put in their mailbox.
    pub recovered: Vec<PathBuf>,
}

/// At start-up, before any caller is served: remove the voice message
/// files a kill left half written (`*.part`, and a greeting being
/// replaced), and give a whole message file no row names its row, so the
/// mailbox shows it. A file that cannot be read is left alone and named in
/// the log. `max_secs` bounds what a message may hold. Blocking.
pub fn sweep(state_dir: &Path, db: &crate::db::Db, max_secs: u64) -> Result<Swept> {
    let mut swept = Swept::default();
    let root = state_dir.join("voicemail");
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(swept),
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    let known: std::collections::HashSet<String> = db
        .all_voicemail_paths()?
        .into_iter()
        .collect::<std::collections::HashSet<_>>();
    let remove = |p: PathBuf, swept: &mut Swept| match std::fs::remove_file(&p) {
        Ok(()) => {
            tracing::info!("removed {}: a voice message file cut short", p.display());
            swept.removed.push(p);
        }
        Err(e) => tracing::warn!("cannot remove {}: {e}", p.display()),
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_file() {
            if p.file_name().is_some_and(|n| n == ".greeting-new.opus") {
                remove(p, &mut swept);
            }
            continue;
        }
        let Some(mailbox) = p.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        let Ok(files) = std::fs::read_dir(&p) else {
            continue;
        };
        for f in files.flatten() {
            let f = f.path();
            match f.extension().and_then(|e| e.to_str()) {
                Some(PART) => remove(f, &mut swept),
                Some("opus") if !known.contains(&f.display().to_string()) => {
                    match recover(db, &mailbox, &f, max_secs) {
                        Ok(secs) => {
                            tracing::info!(
                                "recovered {} ({secs:.1} s) into mailbox {mailbox}:                                  a whole voice message with no row",
                                f.display()
                            );
                            swept.recovered.push(f);
                        }
                        Err(e) => tracing::warn!(
                            "voice message file {} has no row and cannot be read: {e:#}; left alone",
                            f.display()
                        ),
                    }
                }
                _ => {}
            }
        }
    }
    Ok(swept)
}

/// Give a whole message file (named `MS-CALLER.opus`) its row; its length.
fn recover(db: &crate::db::Db, mailbox: &str, path: &Path, max_secs: u64) -> Result<f64> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .context("not a voice message name")?;
    let (ms, caller) = stem.split_once('-').context("not a voice message name")?;
    let created_ms: i64 = ms.parse().context("not a voice message name")?;
    let pcm = keyline_media::read_ogg_opus_max(path, max_secs)?;
    let secs = pcm.len() as f64 / 48_000.0;
    db.insert_recovered_voicemail(
        mailbox,
        caller,
        &path.display().to_string(),
        secs,
        created_ms,
    )?;
    Ok(secs)
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
        // Decoded no further than a greeting may last.
        keyline_media::read_ogg_opus_bytes_max(audio, MAX_GREETING_SECS as u64).map_err(|e| {
            if e.to_string().contains("longer than") {
                anyhow::anyhow!("the greeting is longer than {MAX_GREETING_SECS} seconds")
            } else {
                anyhow::anyhow!("the Ogg file cannot be read as Opus: {e}")
            }
        })?
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
        // A small Ogg file that decodes past the longest greeting is
        // refused before it is all decoded.
        let long = dir.join("long.opus");
        let mut w = keyline_media::OggOpusWriter::create(&long).unwrap();
        let mut enc = keyline_media::OpusEncoder::new().unwrap();
        let quiet = enc.encode(&[0i16; FRAME_SAMPLES]).unwrap();
        for _ in 0..(MAX_GREETING_SECS + 30) * 50 {
            w.write_packet(&quiet, FRAME_SAMPLES as u32).unwrap();
        }
        w.finish().unwrap();
        let e = store_greeting(&dir, &std::fs::read(&long).unwrap()).unwrap_err();
        assert!(e.to_string().contains("longer than 60 seconds"), "{e}");
        assert!(std::fs::read(greeting_path(&dir)).unwrap() == kept);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn message(path: &Path, secs: u32) {
        let tones = keyline_media::tone_sequence(&[(700.0, secs * 1000)]);
        let mut w = OggOpusWriter::create(path).unwrap();
        for chunk in tones.chunks(FRAME_SAMPLES) {
            let mut frame = chunk.to_vec();
            frame.resize(FRAME_SAMPLES, 0);
            w.write_frame(&frame).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn start_up_removes_cut_short_files_and_recovers_whole_ones() {
        let dir = std::env::temp_dir().join(format!("kl-vm-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mb = dir.join("voicemail").join("204");
        std::fs::create_dir_all(&mb).unwrap();
        let db = crate::db::Db::open(&dir.join("gatewayd.sqlite")).unwrap();
        // Kept as usual: a file and its row.
        let kept = mb.join("1700000000000-201.opus");
        message(&kept, 1);
        db.insert_voicemail("204", "201", &kept.display().to_string(), 1.0)
            .unwrap();
        // A recording a kill cut short, half of it on disk.
        let cut = mb.join("1700000001000-203.part");
        message(&cut, 2);
        let bytes = std::fs::read(&cut).unwrap();
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        // A greeting being replaced.
        let greeting = dir.join("voicemail").join(".greeting-new.opus");
        std::fs::write(&greeting, b"OggS").unwrap();
        // Whole, but killed before its row.
        let whole = mb.join("1700000002000-203.opus");
        message(&whole, 2);

        let swept = sweep(&dir, &db, 120).unwrap();
        assert_eq!(swept.removed.len(), 2, "{swept:?}");
        assert!(!cut.exists() && !greeting.exists());
        assert_eq!(swept.recovered, std::slice::from_ref(&whole));
        let rows = db.voicemails("204").unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        let r = rows.iter().find(|r| r.caller == "203").unwrap();
        assert_eq!(r.path, whole.display().to_string());
        assert_eq!(r.created_ms, 1_700_000_002_000);
        assert!((r.secs - 2.0).abs() < 0.1, "{}", r.secs);
        assert!(kept.exists());
        // Done once: a second start finds nothing to do.
        assert_eq!(sweep(&dir, &db, 120).unwrap(), Swept::default());
        // A delivered message recovered so is not kept twice when the
        // directory delivers it again.
        let again = db
            .insert_delivered_voicemail((9, 1), "204", "203", &r.path, 2.0)
            .unwrap();
        assert_eq!(again, None);
        assert_eq!(db.voicemails("204").unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
