//! The agent's Prometheus metrics, read through its control socket
//! (`keyline-agent metrics`, the `metrics` request): the calls this
//! station placed and took, how long they took to ring and to connect,
//! talk time, and its media counters.
//!
//! The recorder is the agent's own (never a process-wide one) and has no
//! listener: the control socket is the way in, with its peer checks.
//! Handles are registered once; a call's end records into them. Media
//! counters are the sum of the ended calls' and the current calls' own
//! counters, read when asked.

use std::sync::Arc;
use std::time::Instant;

use keyline_proto::phone::{Call, Direction};
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::session::MediaStats;

/// Buckets (seconds) of the set-up histograms, as the gateway's.
const SETUP_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// What the media counters add up (name, help, how to read a call's).
type MediaField = (&'static str, &'static str, fn(&MediaStats) -> u64);
const MEDIA: &[MediaField] = &[
    (
        "keyline_agent_audio_packets_sent_total",
        "Voice packets sent.",
        |s| s.sent,
    ),
    (
        "keyline_agent_audio_packets_received_total",
        "Voice packets received.",
        |s| s.received,
    ),
    (
        "keyline_agent_audio_packets_lost_total",
        "Voice packets that never came.",
        |s| s.lost,
    ),
    (
        "keyline_agent_audio_packets_late_total",
        "Voice packets that came too late to play.",
        |s| s.late,
    ),
    (
        "keyline_agent_audio_frames_concealed_total",
        "20 ms frames the decoder had to make up.",
        |s| s.concealed,
    ),
    (
        "keyline_agent_audio_frames_fec_recovered_total",
        "Lost frames recovered from the next packet's FEC.",
        |s| s.recovered_fec,
    ),
    (
        "keyline_agent_video_frames_sent_total",
        "Video frames sent.",
        |s| s.video.frames_sent,
    ),
    (
        "keyline_agent_video_frames_decoded_total",
        "Video frames received and decoded.",
        |s| s.video.frames_decoded,
    ),
    (
        "keyline_agent_video_frames_lost_total",
        "Video frames lost (waited for a key frame).",
        |s| s.video.frames_lost,
    ),
];

/// Every metric the agent keeps.
pub(crate) struct AgentMetrics {
    /// Kept alive with its handles.
    _recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// (direction, connected) → calls ended.
    ended: Vec<(&'static str, bool, Counter)>,
    dial_to_ringing: Histogram,
    answer_to_media: Histogram,
    talk_seconds: Counter,
    calls_active: Gauge,
    media: Vec<Counter>,
    /// The media counters of every call that ended.
    ended_media: Vec<u64>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl AgentMetrics {
    pub(crate) fn new() -> AgentMetrics {
        let rec = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SETUP_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let recorder = Arc::new(rec);
        let handle = recorder.handle();
        metrics::with_local_recorder(recorder.as_ref(), || {
            use metrics::{
                counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
                Unit,
            };
            describe_counter!(
                "keyline_agent_calls_ended_total",
                "Calls ended, by direction (in, out) and whether they connected."
            );
            describe_histogram!(
                "keyline_agent_dial_to_ringing_seconds",
                Unit::Seconds,
                "From this station's dial to the far end ringing."
            );
            describe_histogram!(
                "keyline_agent_answer_to_media_seconds",
                Unit::Seconds,
                "From the answer to the media connection being up."
            );
            describe_counter!(
                "keyline_agent_talk_seconds_total",
                Unit::Seconds,
                "Seconds connected, over every call that ended."
            );
            describe_gauge!("keyline_agent_calls_active", "Calls this station has now.");
            for (name, help, _) in MEDIA {
                describe_counter!(*name, *help);
            }
            let mut ended = Vec::new();
            for direction in ["in", "out"] {
                for connected in [true, false] {
                    let c = counter!(
                        "keyline_agent_calls_ended_total",
                        "direction" => direction,
                        "connected" => if connected { "true" } else { "false" }
                    );
                    c.increment(0);
                    ended.push((direction, connected, c));
                }
            }
            let talk_seconds = counter!("keyline_agent_talk_seconds_total");
            talk_seconds.increment(0);
            AgentMetrics {
                _recorder: recorder.clone(),
                handle,
                ended,
                dial_to_ringing: histogram!("keyline_agent_dial_to_ringing_seconds"),
                answer_to_media: histogram!("keyline_agent_answer_to_media_seconds"),
                talk_seconds,
                calls_active: gauge!("keyline_agent_calls_active"),
                media: MEDIA.iter().map(|(name, _, _)| counter!(*name)).collect(),
                ended_media: vec![0; MEDIA.len()],
            }
        })
    }

    /// A call ended at `now`, with these media counters.
    pub(crate) fn call_ended(&mut self, c: &Call, now: Instant, media: Option<&MediaStats>) {
        let direction = match c.direction {
            Direction::In => "in",
            Direction::Out => "out",
        };
        let connected = c.connected_at.is_some();
        if let Some((_, _, counter)) = self
            .ended
            .iter()
            .find(|(d, k, _)| *d == direction && *k == connected)
        {
            counter.increment(1);
        }
        if let Some(r) = c.ringing_at {
            self.dial_to_ringing
                .record(r.saturating_duration_since(c.started).as_secs_f64());
        }
        if let (Some(a), Some(m)) = (c.answered_at, c.connected_at) {
            self.answer_to_media
                .record(m.saturating_duration_since(a).as_secs_f64());
        }
        if let Some(t) = c.connected_at {
            self.talk_seconds
                .increment(now.saturating_duration_since(t).as_secs());
        }
        if let Some(s) = media {
            for (total, (_, _, read)) in self.ended_media.iter_mut().zip(MEDIA) {
                *total += read(s);
            }
        }
    }

    /// The exposition text (Prometheus format 0.0.4), with `active` calls
    /// now and the current calls' media counters added to the ended ones'.
    pub(crate) fn render<'a>(
        &self,
        active: usize,
        current: impl Iterator<Item = &'a MediaStats>,
    ) -> String {
        let mut totals = self.ended_media.clone();
        for s in current {
            for (total, (_, _, read)) in totals.iter_mut().zip(MEDIA) {
                *total += read(s);
            }
        }
        for (counter, total) in self.media.iter().zip(totals) {
            counter.absolute(total);
        }
        self.calls_active.set(active as f64);
        self.handle.render()
    }
}
