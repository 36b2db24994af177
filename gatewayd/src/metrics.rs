//! The gateway's Prometheus metrics (`[metrics] listen`, off by default).
//!
//! Handles are registered once and kept in [`Metrics`]; recording is an
//! atomic add (no lock, no allocation). Without `[metrics]` no recorder is
//! installed and every handle is a no-op. The forwarder's packet, byte
//! and drop totals are not recorded on its path at all: they are the
//! forwarder's own atomic counters ([`keyline_net::relay::Counters`]), read
//! when Prometheus scrapes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use keyline_net::relay::{Counters, Direction};

/// Buckets (seconds) of the call set-up histograms.
const SETUP_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// The uplink's states, each a series of `keyline_uplink_state`.
const UPLINK_STATES: &[&str] = &["off", "connecting", "registered"];

/// Outcomes of a call record, each a series of `keyline_calls_ended_total`.
pub const OUTCOMES: &[&str] = &[
    "answered",
    "busy",
    "unknown",
    "unreachable",
    "no-answer",
    "rejected",
    "cancelled",
    "failed",
    "voicemail",
    "redirected",
];

/// The forwarder's series of one direction (`direction="to_callee"` or
/// `"to_caller"`).
#[derive(Clone)]
struct FwdDirection {
    packets: Counter,
    bytes: Counter,
    dropped: Counter,
}

impl FwdDirection {
    fn register(direction: &'static str) -> FwdDirection {
        FwdDirection {
            packets: counter!("keyline_forwarder_packets_total", "direction" => direction),
            bytes: counter!("keyline_forwarder_bytes_total", "direction" => direction),
            dropped: counter!("keyline_forwarder_dropped_total", "direction" => direction),
        }
    }

    fn set(&self, d: &Direction) {
        use std::sync::atomic::Ordering::Relaxed;
        self.packets.absolute(d.packets.load(Relaxed));
        self.bytes.absolute(d.bytes.load(Relaxed));
        self.dropped.absolute(d.dropped.load(Relaxed));
    }
}

/// Every metric the gateway records, registered once.
#[derive(Clone)]
pub struct Metrics {
    handle: Option<PrometheusHandle>,
    pub calls_active: Gauge,
    ended: Vec<(&'static str, Counter)>,
    pub dial_to_ringing: Histogram,
    pub answer_to_media: Histogram,
    pub stations_online: Gauge,
    pub enrolments_pending: Gauge,
    pub login_failures: Counter,
    pub lockouts: Counter,
    pub disk_free: Gauge,
    uplink: Vec<(&'static str, Gauge)>,
    fwd: [FwdDirection; 2],
    fwd_active: Gauge,
    fwd_allocations: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("on", &self.handle.is_some())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics that go nowhere (`[metrics]` absent).
    pub fn off() -> Metrics {
        Metrics::register(None)
    }

    /// Install the process's Prometheus recorder and register everything.
    pub fn install() -> Result<Metrics> {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SETUP_BUCKETS)
            .context("histogram buckets")?
            .install_recorder()
            .context("installing the metrics recorder")?;
        describe();
        Ok(Metrics::register(Some(handle)))
    }

    /// A recorder of its own for tests (not the process's).
    #[cfg(test)]
    fn local() -> (Metrics, metrics_exporter_prometheus::PrometheusRecorder) {
        let rec = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SETUP_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = rec.handle();
        let m = metrics::with_local_recorder(&rec, || {
            describe();
            Metrics::register(Some(handle))
        });
        (m, rec)
    }

    fn register(handle: Option<PrometheusHandle>) -> Metrics {
        let m = Metrics {
            handle,
            calls_active: gauge!("keyline_calls_active"),
            ended: OUTCOMES
                .iter()
                .map(|o| (*o, counter!("keyline_calls_ended_total", "outcome" => *o)))
                .collect(),
            dial_to_ringing: histogram!("keyline_dial_to_ringing_seconds"),
            answer_to_media: histogram!("keyline_answer_to_media_seconds"),
            stations_online: gauge!("keyline_stations_online"),
            enrolments_pending: gauge!("keyline_enrolments_pending"),
            login_failures: counter!("keyline_admin_login_failures_total"),
            lockouts: counter!("keyline_admin_lockouts_total"),
            disk_free: gauge!("keyline_disk_free_bytes"),
            uplink: UPLINK_STATES
                .iter()
                .map(|s| (*s, gauge!("keyline_uplink_state", "state" => *s)))
                .collect(),
            fwd: [
                FwdDirection::register("to_callee"),
                FwdDirection::register("to_caller"),
            ],
            fwd_active: gauge!("keyline_forwarder_allocations_active"),
            fwd_allocations: counter!("keyline_forwarder_allocations_total"),
        };
        // Series that exist from the start, so a scrape shows them at 0.
        for (_, c) in &m.ended {
            c.increment(0);
        }
        m.login_failures.increment(0);
        m.lockouts.increment(0);
        m
    }

    pub fn is_on(&self) -> bool {
        self.handle.is_some()
    }

    /// A call ended with this call-record outcome.
    pub fn call_ended(&self, outcome: &str) {
        if let Some((_, c)) = self.ended.iter().find(|(o, _)| *o == outcome) {
            c.increment(1);
        }
    }

    /// The uplink is now in `state` (`off`, `connecting`, `registered`).
    pub fn uplink(&self, state: &str) {
        for (s, g) in &self.uplink {
            g.set(if *s == state { 1.0 } else { 0.0 });
        }
    }

    /// The exposition text (Prometheus format 0.0.4), with the
    /// forwarder's totals read now.
    pub fn render(&self, relay: &Counters) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(h) = &self.handle else {
            return String::new();
        };
        self.fwd[0].set(&relay.to_callee);
        self.fwd[1].set(&relay.to_caller);
        self.fwd_active.set(relay.active.load(Relaxed) as f64);
        self.fwd_allocations
            .absolute(relay.allocations.load(Relaxed));
        h.render()
    }

    /// Drain histogram samples into their buckets now and then, so that a
    /// gateway nobody scrapes does not keep them.
    pub fn spawn_upkeep(&self) {
        if let Some(h) = self.handle.clone() {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    h.run_upkeep();
                }
            });
        }
    }
}

fn describe() {
    describe_gauge!("keyline_calls_active", "Calls in progress.");
    describe_counter!(
        "keyline_calls_ended_total",
        "Calls ended, by the outcome in their call record."
    );
    describe_histogram!(
        "keyline_dial_to_ringing_seconds",
        Unit::Seconds,
        "From a station's dial request to its ringing reply (calls inside the office)."
    );
    describe_histogram!(
        "keyline_answer_to_media_seconds",
        Unit::Seconds,
        "From the answer to the first media packet from the answering end through the forwarder (relayed calls)."
    );
    describe_gauge!("keyline_stations_online", "Approved stations connected.");
    describe_gauge!(
        "keyline_enrolments_pending",
        "Stations connected and waiting for approval."
    );
    describe_counter!(
        "keyline_admin_login_failures_total",
        "Wrong passwords at the admin site."
    );
    describe_counter!(
        "keyline_admin_lockouts_total",
        "Times an address was locked out of the admin site."
    );
    describe_gauge!(
        "keyline_disk_free_bytes",
        Unit::Bytes,
        "Bytes free under the state directory."
    );
    describe_gauge!(
        "keyline_uplink_state",
        "1 for the uplink's current state (off, connecting, registered), else 0."
    );
    describe_counter!(
        "keyline_forwarder_packets_total",
        "Packets the forwarder moved, by direction (to_callee: from the caller's end; to_caller: back)."
    );
    describe_counter!(
        "keyline_forwarder_bytes_total",
        Unit::Bytes,
        "Bytes the forwarder moved, by direction."
    );
    describe_counter!(
        "keyline_forwarder_dropped_total",
        "Packets the forwarder dropped (from an unexpected address, or not sendable), by the direction they came in."
    );
    describe_gauge!(
        "keyline_forwarder_allocations_active",
        "Relay allocations open now."
    );
    describe_counter!(
        "keyline_forwarder_allocations_total",
        "Relay allocations made."
    );
}

/// Serve `/metrics` on `listen` until the process ends.
pub async fn serve(
    listen: std::net::SocketAddr,
    metrics: Metrics,
    relay: Arc<Counters>,
) -> Result<tokio::task::JoinHandle<()>> {
    use axum::http::header;
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("metrics: binding {listen}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (m, r) = (metrics.clone(), relay.clone());
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    m.render(&r),
                )
                    .into_response()
            }
        }),
    );
    tracing::info!("metrics at http://{listen}/metrics");
    Ok(tokio::spawn(async move {
        let limits = keyline_web::Limits::default();
        if let Err(e) =
            keyline_web::serve_http(listener, app, limits, std::future::pending::<()>()).await
        {
            tracing::warn!("metrics: {e}");
        }
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_exposition_has_every_series_with_prometheus_names() {
        let (m, _rec) = Metrics::local();
        m.calls_active.set(2.0);
        m.call_ended("answered");
        m.call_ended("not-an-outcome");
        m.dial_to_ringing.record(0.003);
        m.uplink("connecting");
        let relay = Counters::default();
        relay
            .to_callee
            .packets
            .store(42, std::sync::atomic::Ordering::Relaxed);
        relay
            .to_caller
            .dropped
            .store(3, std::sync::atomic::Ordering::Relaxed);
        let text = m.render(&relay);
        for want in [
            "keyline_calls_active 2",
            "keyline_calls_ended_total{outcome=\"answered\"} 1",
            "keyline_calls_ended_total{outcome=\"busy\"} 0",
            "keyline_dial_to_ringing_seconds_bucket{le=\"0.005\"} 1",
            "keyline_dial_to_ringing_seconds_count 1",
            "keyline_uplink_state{state=\"connecting\"} 1",
            "keyline_uplink_state{state=\"registered\"} 0",
            "keyline_forwarder_packets_total{direction=\"to_callee\"} 42",
            "keyline_forwarder_packets_total{direction=\"to_caller\"} 0",
            "keyline_forwarder_dropped_total{direction=\"to_caller\"} 3",
            "# TYPE keyline_dial_to_ringing_seconds histogram",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        assert!(!text.contains("not-an-outcome"));
    }
}
