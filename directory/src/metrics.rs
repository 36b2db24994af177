//! The directory's Prometheus metrics (`[metrics] listen`, off by default,
//! loopback unless `allow_remote`).
//!
//! The recorder is the directory's own, never the process's global one:
//! a gateway that embeds a directory keeps its own recorder. Handles are
//! registered once; recording is an atomic add (no lock, no allocation).
//! Bindings, calls, disk and the relay's totals are read from the hub, the
//! file system and the relay's counters when Prometheus scrapes, so the
//! packet path does not change with metrics on.
//!
//! The series a gateway also has carry the gateway's names and outcome
//! labels (`keyline_calls_active`, `keyline_calls_ended_total{outcome}`,
//! `keyline_dial_to_ringing_seconds`, `keyline_answer_to_media_seconds`,
//! `keyline_disk_free_bytes`); Prometheus's `job` label tells them apart.
//! What the directory can measure of them:
//! - dial→ringing: from a CALL read off the caller's control stream to the
//!   RINGING queued back to it (the callee was sent RING at the same
//!   moment; terminals do not acknowledge RING, so the callee's own
//!   alerting is not seen here);
//! - answer→media: relayed calls only, from the ANSWER to the first
//!   packet from the answering end through the relay. Direct media never
//!   passes the directory and the ends do not report it, so direct calls
//!   have no sample.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use anyhow::{Context, Result};
use keyline_net::relay::Counters;
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::CallOutcome;

/// Buckets (seconds) of the call set-up histograms: the gateway's.
const SETUP_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// Each outcome of the directory's call history and its label in
/// `keyline_calls_ended_total`: the gateway's name where it means the
/// same (a declined call is `rejected`, a number without a live
/// registration `unreachable`, an unknown number `unknown`, a call sent on
/// by a rule, a redirect or a hand-off `redirected`).
pub const OUTCOMES: [(CallOutcome, &str); 9] = [
    (CallOutcome::Answered, "answered"),
    (CallOutcome::Declined, "rejected"),
    (CallOutcome::Busy, "busy"),
    (CallOutcome::NoAnswer, "no-answer"),
    (CallOutcome::Cancelled, "cancelled"),
    (CallOutcome::Offline, "unreachable"),
    (CallOutcome::UnknownNumber, "unknown"),
    (CallOutcome::Forwarded, "redirected"),
    (CallOutcome::Failed, "failed"),
];

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
    /// One counter per entry of [`OUTCOMES`], in that order.
    ended: [Counter; OUTCOMES.len()],
    pub dial_to_ringing: Histogram,
    pub answer_to_media: Histogram,
    disk_free: Gauge,
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
        // Only an empty bucket list is refused, and this one is not.
        let rec = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SETUP_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        Metrics::register(Some(rec))
    }

    fn register(rec: Option<PrometheusRecorder>) -> Metrics {
        let Some(rec) = rec else {
            // Handles of a recorder that keeps nothing: not the process's
            // global one, which a gateway embedding this directory has
            // for its own series of the same names.
            return metrics::with_local_recorder(&metrics::NoopRecorder, || {
                Metrics::handles(None, None)
            });
        };
        let rec = Arc::new(rec);
        let handle = rec.handle();
        metrics::with_local_recorder(rec.as_ref(), || {
            use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
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
            describe_gauge!(
                "keyline_calls_active",
                "calls in progress (ringing or answered)"
            );
            describe_counter!(
                "keyline_calls_ended_total",
                "calls ended, by the outcome in the call history (the gateway's names)"
            );
            describe_histogram!(
                "keyline_dial_to_ringing_seconds",
                Unit::Seconds,
                "from a CALL read off the caller's stream to RINGING queued back (the callee is sent RING at once; its alerting is not acknowledged)"
            );
            describe_histogram!(
                "keyline_answer_to_media_seconds",
                Unit::Seconds,
                "from the answer to the first packet from the answering end through the relay (relayed calls only: direct media never passes the directory)"
            );
            describe_gauge!(
                "keyline_disk_free_bytes",
                Unit::Bytes,
                "bytes free on the file system of the state directory (the SQLite store and mail)"
            );
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
        use metrics::{counter, gauge, histogram};
        let m = Metrics {
            recorder,
            handle,
            registrations: counter!("keyline_directory_registrations_total"),
            lookups: counter!("keyline_directory_lookups_total"),
            auth_failures: counter!("keyline_directory_auth_failures_total"),
            lockouts: counter!("keyline_directory_lockouts_total"),
            bindings: gauge!("keyline_directory_bindings"),
            sessions: gauge!("keyline_directory_sessions"),
            calls: gauge!("keyline_calls_active"),
            ended: OUTCOMES.map(|(_, o)| counter!("keyline_calls_ended_total", "outcome" => o)),
            dial_to_ringing: histogram!("keyline_dial_to_ringing_seconds"),
            answer_to_media: histogram!("keyline_answer_to_media_seconds"),
            disk_free: gauge!("keyline_disk_free_bytes"),
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
        // Every outcome's series exists from the start, at 0.
        for c in &m.ended {
            c.increment(0);
        }
        m
    }

    /// A call ended with this outcome in the call history.
    pub fn call_ended(&self, outcome: CallOutcome) {
        if let Some(i) = OUTCOMES.iter().position(|(o, _)| *o == outcome) {
            self.ended[i].increment(1);
        }
    }

    pub fn is_on(&self) -> bool {
        self.recorder.is_some()
    }

    /// The exposition text (Prometheus format 0.0.4), with the figures
    /// read now.
    pub fn render(&self, relay: &Counters, now: &Figures) -> String {
        let Some(h) = &self.handle else {
            return String::new();
        };
        self.bindings.set(now.bindings as f64);
        self.sessions.set(now.sessions as f64);
        self.calls.set(now.calls as f64);
        if let Some(free) = now.disk_free {
            self.disk_free.set(free as f64);
        }
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

    /// Drain histogram samples into their buckets now and then, so that a
    /// directory nobody scrapes does not keep them.
    fn spawn_upkeep(&self, mut stop: watch::Receiver<bool>) {
        if let Some(h) = self.handle.clone() {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = tick.tick() => h.run_upkeep(),
                        r = stop.changed() => {
                            if r.is_err() || *stop.borrow() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    }
}

/// The figures read when Prometheus scrapes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    pub bindings: u64,
    pub sessions: u64,
    pub calls: u64,
    /// Bytes free under the state directory, if it could be read.
    pub disk_free: Option<u64>,
}

/// answer→media for a relayed call answered at `answered`, once the relay
/// reports the first packet it forwarded from the answering end on
/// `first_media` (a one-shot the forwarder fires; no timer here). `None`
/// when the relay is released before the answering end sent anything. A
/// packet heard before the answer counts as media at the answer.
pub async fn answer_to_media(
    answered: std::time::Instant,
    first_media: tokio::sync::oneshot::Receiver<std::time::Instant>,
) -> Option<std::time::Duration> {
    let first = first_media.await.ok()?;
    Some(first.saturating_duration_since(answered))
}

/// Bytes free to an unprivileged writer on the file system holding `dir`.
pub fn disk_free(dir: &std::path::Path) -> Option<u64> {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(v) => Some(v.blocks_available().saturating_mul(v.fragment_size())),
        Err(e) => {
            tracing::debug!("statvfs {}: {e}", dir.display());
            None
        }
    }
}

/// [`disk_free`] on a blocking thread: `statvfs` can stall on a slow file
/// system and must not hold up the runtime.
pub async fn disk_free_off_runtime(dir: &std::path::Path) -> Option<u64> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || disk_free(&dir))
        .await
        .ok()
        .flatten()
}

/// Serve `/metrics` over plain HTTP on `listen` (`[metrics] listen`), if
/// set: `metrics` rendered with the relay's counters and the figures
/// `figures` reads at each scrape.
pub(crate) async fn start<F, Fut>(
    listen: Option<SocketAddr>,
    metrics: Metrics,
    relay: Arc<Counters>,
    figures: F,
    stop: watch::Receiver<bool>,
) -> Result<Option<JoinHandle<()>>>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Figures> + Send + 'static,
{
    let Some(addr) = listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics: binding TCP {addr}"))?;
    let local = listener.local_addr()?;
    metrics.spawn_upkeep(stop.clone());
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, relay, figures) = (metrics.clone(), relay.clone(), figures.clone());
            async move {
                let figures = figures().await;
                let body = metrics.render(&relay, &figures);
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
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn answer_to_media_runs_from_the_answer_to_the_first_packet() {
        let answered = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let wait = tokio::spawn(answer_to_media(answered, rx));
        tx.send(answered + Duration::from_millis(40)).expect("send");
        let got = wait.await.expect("task");
        assert_eq!(got, Some(Duration::from_millis(40)));
    }

    #[tokio::test]
    async fn answer_to_media_has_no_sample_when_the_relay_goes_first() {
        let (tx, rx) = tokio::sync::oneshot::channel::<Instant>();
        drop(tx);
        assert_eq!(answer_to_media(Instant::now(), rx).await, None);
    }

    #[tokio::test]
    async fn disk_free_is_read_off_the_runtime() {
        let dir = std::env::temp_dir();
        let free = disk_free_off_runtime(&dir).await;
        assert!(free.is_some(), "statvfs of {}", dir.display());
        let missing = dir.join("keyline-no-such-directory-for-statvfs");
        assert_eq!(disk_free_off_runtime(&missing).await, None);
    }

    #[tokio::test]
    async fn answer_to_media_is_never_negative() {
        let answered = Instant::now() + Duration::from_millis(5);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tx.send(answered - Duration::from_millis(5)).expect("send");
        assert_eq!(answer_to_media(answered, rx).await, Some(Duration::ZERO));
    }

    fn figures(bindings: u64, sessions: u64, calls: u64) -> Figures {
        Figures {
            bindings,
            sessions,
            calls,
            disk_free: Some(123_456),
        }
    }

    #[test]
    fn recorded_and_read_figures_are_rendered() {
        let m = Metrics::on();
        assert!(m.is_on());
        m.registrations.increment(3);
        m.auth_failures.increment(2);
        m.lockouts.increment(1);
        m.call_ended(CallOutcome::Answered);
        m.call_ended(CallOutcome::Offline);
        m.call_ended(CallOutcome::Offline);
        m.dial_to_ringing.record(0.0004);
        m.answer_to_media.record(0.03);
        let relay = Counters::default();
        relay.to_callee.bytes.store(4096, Relaxed);
        relay.allocations.store(2, Relaxed);
        let text = m.render(&relay, &figures(5, 6, 1));
        for line in [
            "keyline_directory_registrations_total 3",
            "keyline_directory_lookups_total 0",
            "keyline_directory_auth_failures_total 2",
            "keyline_directory_lockouts_total 1",
            "keyline_directory_bindings 5",
            "keyline_directory_sessions 6",
            "keyline_calls_active 1",
            "keyline_calls_ended_total{outcome=\"answered\"} 1",
            "keyline_calls_ended_total{outcome=\"unreachable\"} 2",
            "keyline_calls_ended_total{outcome=\"rejected\"} 0",
            "keyline_dial_to_ringing_seconds_bucket{le=\"0.001\"} 1",
            "keyline_dial_to_ringing_seconds_count 1",
            "keyline_answer_to_media_seconds_bucket{le=\"0.02\"} 0",
            "keyline_answer_to_media_seconds_bucket{le=\"0.05\"} 1",
            "# TYPE keyline_answer_to_media_seconds histogram",
            "keyline_disk_free_bytes 123456",
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
        let text = other.render(&Counters::default(), &Figures::default());
        assert!(text
            .lines()
            .any(|l| l == "keyline_directory_registrations_total 0"));
        assert!(text
            .lines()
            .any(|l| l == "keyline_calls_ended_total{outcome=\"answered\"} 0"));
        assert_eq!(Metrics::off().render(&relay, &figures(1, 1, 1)), "");
    }

    #[test]
    fn every_outcome_has_one_label_and_the_labels_are_the_gateways() {
        // The gateway's outcome names (gatewayd's call records).
        let gateway = [
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
        for (i, (o, label)) in OUTCOMES.iter().enumerate() {
            assert!(gateway.contains(label), "{label} is not the gateway's");
            assert_eq!(CallOutcome::parse(o.as_str()), Some(*o));
            assert!(
                OUTCOMES[i + 1..].iter().all(|(p, l)| p != o && l != label),
                "{label} twice"
            );
        }
        for s in [
            "answered",
            "declined",
            "busy",
            "no-answer",
            "cancelled",
            "offline",
            "unknown-number",
            "forwarded",
            "failed",
        ] {
            let o = CallOutcome::parse(s);
            assert!(o.is_some(), "{s} is not an outcome");
            assert!(
                OUTCOMES.iter().any(|(p, _)| Some(*p) == o),
                "{s} has no label"
            );
        }
    }

    #[test]
    fn metrics_off_record_into_no_other_recorder() {
        // As under a gateway that embeds a directory and has its own
        // series of the same names.
        let outer = PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&outer, || {
            let m = Metrics::off();
            m.call_ended(CallOutcome::Answered);
            m.dial_to_ringing.record(0.1);
            m.registrations.increment(1);
        });
        let text = outer.handle().render();
        assert!(!text.contains("keyline_calls_ended_total"), "{text}");
        assert!(!text.contains("keyline_dial_to_ringing"), "{text}");
        assert!(!text.contains("keyline_directory"), "{text}");
    }

    #[test]
    fn disk_free_reads_the_state_directorys_file_system() {
        assert!(disk_free(&std::env::temp_dir()).is_some_and(|b| b > 0));
        assert_eq!(disk_free(std::path::Path::new("/no/such/dir")), None);
    }
}
