//! The directory's Prometheus metrics (`[metrics] listen`, off by default,
//! loopback unless `allow_remote`).
//!
//! The recorder is the directory's own, never the process's global one:
//! a gateway that embeds a directory keeps its own recorder. Handles are
//! registered once; recording is an atomic add. Bindings, calls and the
//! relay's totals are read from the hub and the relay's counters when
//! Prometheus scrapes, so the packet path does not change with metrics on.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use anyhow::{Context, Result};
use keyline_net::relay::Counters;
use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::server::{query_hub, Query, Shared};

/// Every metric the directory records.
#[derive(Clone)]
pub struct Metrics {
    /// The recorder the handles write to (kept alive with them).
    recorder: Option<Arc<PrometheusRecorder>>,
    handle: Option<PrometheusHandle>,
    pub registrations: Counter,
    pub lookups: Counter,
    pub auth_failures: Counter,
    pub lockouts: Counter,
    bindings: Gauge,
    sessions: Gauge,
    calls: Gauge,
    /// Caller → callee, callee → caller: packets, bytes, dropped.
    relay_flow: [[Counter; 3]; 2],
    relay_allocations: Counter,
    relay_active: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("on", &self.handle.is_some())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics that go nowhere (`[metrics]` without `listen`).
    pub fn off() -> Metrics {
        Metrics::register(None)
    }

    /// A recorder of the directory's own, and every handle registered.
    pub fn on() -> Metrics {
        let rec = PrometheusBuilder::new().build_recorder();
        Metrics::register(Some(rec))
    }

    fn register(rec: Option<PrometheusRecorder>) -> Metrics {
        let Some(rec) = rec else {
            return Metrics::handles(None, None);
        };
        let rec = Arc::new(rec);
        let handle = rec.handle();
        metrics::with_local_recorder(rec.as_ref(), || {
            use metrics::{describe_counter, describe_gauge};
            describe_counter!(
                "keyline_directory_registrations_total",
                "REGISTER requests (refreshes included)"
            );
            describe_counter!("keyline_directory_lookups_total", "LOOKUP requests");
            describe_counter!(
                "keyline_directory_auth_failures_total",
                "wrong passwords (QUIC and web logins)"
            );
            describe_counter!(
                "keyline_directory_lockouts_total",
                "failed logins that locked an address or account out"
            );
            describe_gauge!("keyline_directory_bindings", "numbers registered now");
            describe_gauge!("keyline_directory_sessions", "endpoints connected now");
            describe_gauge!("keyline_directory_calls_active", "calls in progress");
            describe_counter!(
                "keyline_directory_relay_bytes_total",
                "bytes relayed, by direction (to_callee, to_caller)"
            );
            describe_counter!(
                "keyline_directory_relay_packets_total",
                "packets relayed, by direction (to_callee, to_caller)"
            );
            describe_counter!(
                "keyline_directory_relay_dropped_total",
                "packets the relay dropped (from an unexpected address, or not sendable), by the direction they came in"
            );
            describe_counter!(
                "keyline_directory_relay_allocations_total",
                "relay allocations made"
            );
            describe_gauge!(
                "keyline_directory_relay_allocations_active",
                "relay allocations open"
            );
            Metrics::handles(Some(rec.clone()), Some(handle))
        })
    }

    fn handles(
        recorder: Option<Arc<PrometheusRecorder>>,
        handle: Option<PrometheusHandle>,
    ) -> Metrics {
        use metrics::{counter, gauge};
        let m = Metrics {
            recorder,
            handle,
            registrations: counter!("keyline_directory_registrations_total"),
            lookups: counter!("keyline_directory_lookups_total"),
            auth_failures: counter!("keyline_directory_auth_failures_total"),
            lockouts: counter!("keyline_directory_lockouts_total"),
            bindings: gauge!("keyline_directory_bindings"),
            sessions: gauge!("keyline_directory_sessions"),
            calls: gauge!("keyline_directory_calls_active"),
            relay_flow: ["to_callee", "to_caller"].map(|d| {
                [
                    counter!("keyline_directory_relay_packets_total", "direction" => d),
                    counter!("keyline_directory_relay_bytes_total", "direction" => d),
                    counter!("keyline_directory_relay_dropped_total", "direction" => d),
                ]
            }),
            relay_allocations: counter!("keyline_directory_relay_allocations_total"),
            relay_active: gauge!("keyline_directory_relay_allocations_active"),
        };
        for c in [&m.registrations, &m.lookups, &m.auth_failures, &m.lockouts] {
            c.increment(0);
        }
        m
    }

    pub fn is_on(&self) -> bool {
        self.recorder.is_some()
    }

    /// The exposition text (Prometheus format 0.0.4), with the figures
    /// read now.
    pub fn render(&self, relay: &Counters, bindings: u64, sessions: u64, calls: u64) -> String {
        let Some(h) = &self.handle else {
            return String::new();
        };
        self.bindings.set(bindings as f64);
        self.sessions.set(sessions as f64);
        self.calls.set(calls as f64);
        for (c, d) in self
            .relay_flow
            .iter()
            .zip([&relay.to_callee, &relay.to_caller])
        {
            c[0].absolute(d.packets.load(Relaxed));
            c[1].absolute(d.bytes.load(Relaxed));
            c[2].absolute(d.dropped.load(Relaxed));
        }
        self.relay_allocations
            .absolute(relay.allocations.load(Relaxed));
        self.relay_active.set(relay.active.load(Relaxed) as f64);
        h.render()
    }
}

/// Serve `/metrics` over plain HTTP if `[metrics] listen` is set.
pub(crate) async fn start(
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> Result<Option<JoinHandle<()>>> {
    let Some(addr) = shared.cfg().metrics.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics: binding TCP {addr}"))?;
    let local = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let shared = shared.clone();
            async move {
                let s = query_hub(&shared, Query::Status).await;
                let n = |k: &str| s.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
                let body = shared.metrics.render(
                    &shared.relay,
                    n("bindings"),
                    n("sessions"),
                    n("calls_active"),
                );
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    let mut stop = stop;
    let shutdown = async move {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    tracing::info!("metrics on http://{local}/metrics");
    Ok(Some(tokio::spawn(async move {
        if let Err(e) =
            keyline_web::serve_http(listener, app, keyline_web::Limits::default(), shutdown).await
        {
            tracing::warn!("metrics stopped: {e}");
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_and_read_figures_are_rendered() {
        let m = Metrics::on();
        assert!(m.is_on());
        m.registrations.increment(3);
        m.auth_failures.increment(2);
        m.lockouts.increment(1);
        let relay = Counters::default();
        relay.to_callee.bytes.store(4096, Relaxed);
        relay.allocations.store(2, Relaxed);
        let text = m.render(&relay, 5, 6, 1);
        for line in [
            "keyline_directory_registrations_total 3",
            "keyline_directory_lookups_total 0",
            "keyline_directory_auth_failures_total 2",
            "keyline_directory_lockouts_total 1",
            "keyline_directory_bindings 5",
            "keyline_directory_sessions 6",
            "keyline_directory_calls_active 1",
            "keyline_directory_relay_bytes_total{direction=\"to_callee\"} 4096",
            "keyline_directory_relay_bytes_total{direction=\"to_caller\"} 0",
            "keyline_directory_relay_allocations_total 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        // Two directories in one process (a gateway embeds one) do not
        // share figures.
        let other = Metrics::on();
        assert!(other
            .render(&Counters::default(), 0, 0, 0)
            .lines()
            .any(|l| l == "keyline_directory_registrations_total 0"));
        assert_eq!(Metrics::off().render(&relay, 1, 1, 1), "");
    }
}
