//! The `video` suite: VP8 encode and decode CPU per frame (thread CPU
//! time, so other work on the machine does not count) at 640×480 and
//! 1280×720 with the moving test pattern, the bytes per frame at the
//! bitrate a call starts with, and the in-process pipeline latency from
//! the picture's send time (painted into it) to the decoded picture read
//! back, through the RTP packetiser and the frame assembler. No network:
//! what a call adds on top is in the end-to-end video test's figures.

use std::time::Instant;

use anyhow::{Context, Result};
use keyline_media::video::{read_code, unix_us, PatternSource, VideoSource};
use keyline_media::vp8::{Vp8Decoder, Vp8Encoder};
use keyline_proto::vp8rtp::{packetize, Assembler, Output};
use nix::time::{clock_gettime, ClockId};
use serde_json::{json, Value};

use crate::util::{round, Summary};

/// Frames per size.
#[derive(Debug, Clone)]
pub struct VideoConfig {
    pub frames: usize,
}

fn thread_cpu_ms() -> f64 {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as f64 * 1000.0 + t.tv_nsec() as f64 / 1e6)
        .unwrap_or(0.0)
}

fn one_size(w: u32, h: u32, kbps: u32, frames: usize) -> Result<Value> {
    let mut src = PatternSource::new(w, h)?;
    let mut enc = Vp8Encoder::new(w, h, 30, kbps, 1)?;
    let mut dec = Vp8Decoder::new(1)?;
    let mut asm = Assembler::new();
    let (mut enc_ms, mut dec_ms, mut latency_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut pattern_ms = Vec::new();
    let (mut bytes, mut keys, mut read) = (0usize, 0usize, 0usize);
    let mut seq = 0u16;
    for i in 0..frames {
        let c = thread_cpu_ms();
        let pic = src.next_picture()?;
        pattern_ms.push(thread_cpu_ms() - c);
        let pts = (i as u32).wrapping_mul(3000);
        let c0 = thread_cpu_ms();
        let frame = enc.encode(&pic, pts, false)?;
        enc_ms.push(thread_cpu_ms() - c0);
        let Some(frame) = frame else { continue };
        bytes += frame.data.len();
        keys += usize::from(frame.key);
        let packets = packetize(&frame.data, i as u16 & 0x7fff, 1180);
        let n = packets.len();
        let now = Instant::now();
        for (k, p) in packets.iter().enumerate() {
            asm.handle_packet(now, seq, pts, k + 1 == n, p);
            seq = seq.wrapping_add(1);
        }
        while let Some(o) = asm.poll_output() {
            let Output::Frame(f) = o else { continue };
            let c1 = thread_cpu_ms();
            let out = dec.decode(&f.data)?;
            dec_ms.push(thread_cpu_ms() - c1);
            if let Some(code) = out.as_ref().and_then(read_code) {
                read += 1;
                latency_ms.push(unix_us().saturating_sub(code.sent_us) as f64 / 1000.0);
            }
        }
    }
    let (e, d, l) = (
        Summary::of(&mut enc_ms),
        Summary::of(&mut dec_ms),
        Summary::of(&mut latency_ms),
    );
    let n = enc_ms.len().max(1) as f64;
    let p = Summary::of(&mut pattern_ms);
    Ok(json!({
        "width": w,
        "height": h,
        "kbps": kbps,
        "frames": frames,
        "encode_cpu_ms": {"p50": round(e.p50, 3), "p99": round(e.p99, 3), "mean": round(e.mean, 3)},
        "decode_cpu_ms": {"p50": round(d.p50, 3), "p99": round(d.p99, 3), "mean": round(d.mean, 3)},
        "pattern_cpu_ms": {"p50": round(p.p50, 3), "mean": round(p.mean, 3)},
        "bytes_per_frame_mean": round(bytes as f64 / n, 0),
        "key_frames": keys,
        "codes_read": read,
        "pipeline_latency_ms": {"p50": round(l.p50, 2), "p99": round(l.p99, 2)},
        // Frames a second one core could encode and decode at this size.
        "frames_per_core_s": round(1000.0 / (e.mean + d.mean).max(0.001), 0),
    }))
}

pub fn run(cfg: &VideoConfig) -> Result<Value> {
    let sizes = [(640, 480, 600), (1280, 720, 1500)];
    let mut out = serde_json::Map::new();
    for (w, h, kbps) in sizes {
        let v = one_size(w, h, kbps, cfg.frames).with_context(|| format!("VP8 at {w}x{h}"))?;
        out.insert(format!("{w}x{h}"), v);
    }
    Ok(Value::Object(out))
}
