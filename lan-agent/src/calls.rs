//! What both modes (office station and standalone terminal) keep of a call
//! and answer about it alike: its set-up timing and the `record` control
//! command.

use std::path::Path;
use std::time::Instant;

use keyline_net::control;
use serde_json::{json, Value};

use crate::session::{recording_error, start_recording, SharedRecord};

/// Set-up figures in milliseconds, as `status` shows them.
pub(crate) fn timing(
    started: Instant,
    ringing_at: Option<Instant>,
    answered_at: Option<Instant>,
    connected_at: Option<Instant>,
    media_started_unix_ms: Option<u128>,
) -> Value {
    let ms = |a: Instant, b: Option<Instant>| b.map(|b| (b - a).as_secs_f64() * 1000.0);
    json!({
        "dial_to_ringing_ms": ms(started, ringing_at),
        "answer_to_media_ms": answered_at.and_then(|a| ms(a, connected_at)),
        "media_started_unix_ms": media_started_unix_ms,
    })
}

/// Wall-clock now in milliseconds since the Unix epoch (when media
/// started, for mouth-to-ear measurements).
pub(crate) fn unix_ms_now() -> Option<u128> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis())
}

/// The `record` control command on the connected call with `peer`: start
/// recording into `record_dir` (default: `recordings` in the state
/// directory), or stop.
pub(crate) fn record_command(
    record: &SharedRecord,
    on: bool,
    peer: &str,
    record_dir: Option<&Path>,
    state_dir: &Path,
) -> Value {
    if on {
        let dir = record_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| state_dir.join("recordings"));
        match start_recording(record, &dir, peer) {
            Ok(p) => json!({"ok": true, "recording": p.display().to_string()}),
            Err(e) => control::error(format!("cannot record: {e:#}")),
        }
    } else {
        let stopped = record.lock().ok().and_then(|mut r| r.stop());
        match stopped {
            Some(Ok(p)) => json!({"ok": true, "recorded": p.display().to_string()}),
            Some(Err(e)) => control::error(format!("recording not finished: {e}")),
            None => match recording_error(record) {
                Some(e) => control::error(format!("the recording had stopped: {e}")),
                None => control::error("not recording"),
            },
        }
    }
}
