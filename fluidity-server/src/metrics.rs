//! Counters the server keeps, served as `GET /health` (JSON) and `GET /metrics` (Prometheus
//! text format) by [`crate::health`].

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fluidity_core::pki::server_certs::ServerCertManager;
use std::time::{Duration, Instant};

/// Stream kinds, for per-kind gauges.
#[derive(Debug, Clone, Copy)]
pub enum StreamKind {
    /// Plain HTTP exchanges.
    Http,
    /// CONNECT tunnels.
    Connect,
    /// WebSocket sessions (Go `ws_open`).
    WebSocket,
}

/// Why something failed, for per-cause counters (declaration order = `FAILURES` order).
#[derive(Debug, Clone, Copy)]
pub enum Failure {
    /// A TLS handshake or certificate check failed.
    Handshake,
    /// A tunnel was refused because `max_connections` were open.
    ConnectionLimit,
    /// The egress policy refused a target.
    EgressDenied,
    /// The target could not be reached.
    TargetUnreachable,
    /// An HTTP exchange with the target failed.
    HttpFailed,
    /// A tunnel ended with a protocol error.
    TunnelError,
    /// A connection was closed unhandled: its source had `max_handshakes_per_ip` in flight.
    HandshakeRefused,
    /// A handshake in flight was evicted because `max_handshakes` were in flight.
    HandshakeEvicted,
}

impl Failure {
    /// The counter for a target that could not be reached.
    pub fn of(error: &crate::egress::TargetError) -> Failure {
        match error {
            crate::egress::TargetError::Denied { .. } => Failure::EgressDenied,
            _ => Failure::TargetUnreachable,
        }
    }
}

const FAILURES: [(Failure, &str); 8] = [
    (Failure::Handshake, "handshake"),
    (Failure::ConnectionLimit, "connection_limit"),
    (Failure::EgressDenied, "egress_denied"),
    (Failure::TargetUnreachable, "target_unreachable"),
    (Failure::HttpFailed, "http_failed"),
    (Failure::TunnelError, "tunnel_error"),
    (Failure::HandshakeRefused, "handshake_refused"),
    (Failure::HandshakeEvicted, "handshake_evicted"),
];

/// Upper bounds (seconds) of the handshake latency histogram.
const HANDSHAKE_BUCKETS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// The server's counters. All methods are cheap and lock-free.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    tunnels: AtomicU64,
    tunnels_total: AtomicU64,
    streams: [AtomicU64; 3],
    streams_total: [AtomicU64; 3],
    bytes_to_targets: AtomicU64,
    bytes_from_targets: AtomicU64,
    failures: [AtomicU64; 8],
    handshake_buckets: [AtomicU64; 8],
    handshake_count: AtomicU64,
    handshake_micros: AtomicU64,
    /// Unix seconds of the last stream activity (Sleep reads "idle since").
    last_activity: AtomicU64,
    /// ARN mode: the server certificate's manager (signings, expiry).
    certificates: std::sync::OnceLock<Arc<ServerCertManager>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            tunnels: AtomicU64::new(0),
            tunnels_total: AtomicU64::new(0),
            streams: Default::default(),
            streams_total: Default::default(),
            bytes_to_targets: AtomicU64::new(0),
            bytes_from_targets: AtomicU64::new(0),
            failures: Default::default(),
            handshake_buckets: Default::default(),
            handshake_count: AtomicU64::new(0),
            handshake_micros: AtomicU64::new(0),
            last_activity: AtomicU64::new(unix_now()),
            certificates: std::sync::OnceLock::new(),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Decrements a gauge when dropped.
#[derive(Debug)]
pub struct GaugeGuard<'a>(&'a AtomicU64);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Counts a tunnel as open until the guard drops.
    pub fn tunnel_opened(&self) -> GaugeGuard<'_> {
        self.tunnels.fetch_add(1, Ordering::Relaxed);
        self.tunnels_total.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(&self.tunnels)
    }

    /// Open tunnels.
    pub fn tunnels(&self) -> u64 {
        self.tunnels.load(Ordering::Relaxed)
    }

    /// Counts a stream as open until the guard drops.
    pub fn stream_opened(&self, kind: StreamKind) -> GaugeGuard<'_> {
        let i = kind as usize;
        self.streams[i].fetch_add(1, Ordering::Relaxed);
        self.streams_total[i].fetch_add(1, Ordering::Relaxed);
        self.touch();
        GaugeGuard(&self.streams[i])
    }

    /// Open streams of all kinds.
    pub fn streams(&self) -> u64 {
        self.streams.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }

    /// Records bytes relayed (to the target, from the target).
    pub fn add_bytes(&self, to_target: u64, from_target: u64) {
        self.bytes_to_targets
            .fetch_add(to_target, Ordering::Relaxed);
        self.bytes_from_targets
            .fetch_add(from_target, Ordering::Relaxed);
        self.touch();
    }

    /// Records a failure.
    pub fn failed(&self, failure: Failure) {
        // `FAILURES` lists the variants in declaration order.
        self.failures[failure as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a successful handshake's duration.
    pub fn handshake(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        for (i, bound) in HANDSHAKE_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.handshake_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.handshake_count.fetch_add(1, Ordering::Relaxed);
        self.handshake_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Reports the server certificate's signings and expiry from `manager`.
    pub fn watch_certificates(&self, manager: Arc<ServerCertManager>) {
        let _ = self.certificates.set(manager);
    }

    /// Marks activity now.
    pub fn touch(&self) {
        self.last_activity.store(unix_now(), Ordering::Relaxed);
    }

    /// Unix seconds of the last activity.
    pub fn last_activity(&self) -> u64 {
        self.last_activity.load(Ordering::Relaxed)
    }

    /// One CloudWatch Embedded Metric Format line (logged to stdout, CloudWatch Logs turns it
    /// into the `Fluidity/ActiveTunnels` and `Fluidity/LastActivityEpochSeconds` metrics
    /// that the Sleep function reads).
    pub fn emf_line(&self, cluster: &str, service: &str) -> String {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        serde_json::json!({
            "_aws": {
                "Timestamp": now_ms as u64,
                "CloudWatchMetrics": [{
                    "Namespace": "Fluidity",
                    "Dimensions": [["ClusterName", "ServiceName"]],
                    "Metrics": [
                        {"Name": "ActiveTunnels", "Unit": "Count"},
                        {"Name": "LastActivityEpochSeconds", "Unit": "Seconds"}
                    ]
                }]
            },
            "ClusterName": cluster,
            "ServiceName": service,
            "ActiveTunnels": self.tunnels(),
            "LastActivityEpochSeconds": self.last_activity(),
        })
        .to_string()
    }

    /// The `/health` document.
    pub fn health_json(&self) -> String {
        serde_json::json!({
            "status": "ok",
            "tunnels": self.tunnels(),
            "streams": self.streams(),
            // Tokio tasks alive in the server (a leak shows as a count that keeps growing).
            "tasks": tokio::runtime::Handle::try_current()
                .ok()
                .map(|runtime| runtime.metrics().num_alive_tasks()),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "last_activity_unix": self.last_activity.load(Ordering::Relaxed),
        })
        .to_string()
    }

    /// The `/metrics` document (Prometheus text exposition format 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut out = String::with_capacity(2048);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP fluidity_tunnels Open tunnels.\n# TYPE fluidity_tunnels gauge\nfluidity_tunnels {}",
            self.tunnels()
        );
        let _ = writeln!(
            out,
            "# HELP fluidity_tunnels_total Tunnels accepted.\n# TYPE fluidity_tunnels_total counter\nfluidity_tunnels_total {}",
            load(&self.tunnels_total)
        );
        let kinds = ["http", "connect", "websocket"];
        let _ = writeln!(
            out,
            "# HELP fluidity_streams Open streams by kind.\n# TYPE fluidity_streams gauge"
        );
        for (i, kind) in kinds.iter().enumerate() {
            let _ = writeln!(
                out,
                "fluidity_streams{{kind=\"{kind}\"}} {}",
                load(&self.streams[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP fluidity_streams_total Streams opened by kind.\n# TYPE fluidity_streams_total counter"
        );
        for (i, kind) in kinds.iter().enumerate() {
            let _ = writeln!(
                out,
                "fluidity_streams_total{{kind=\"{kind}\"}} {}",
                load(&self.streams_total[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP fluidity_bytes_total Bytes relayed.\n# TYPE fluidity_bytes_total counter"
        );
        let _ = writeln!(
            out,
            "fluidity_bytes_total{{direction=\"to_target\"}} {}",
            load(&self.bytes_to_targets)
        );
        let _ = writeln!(
            out,
            "fluidity_bytes_total{{direction=\"from_target\"}} {}",
            load(&self.bytes_from_targets)
        );
        let _ = writeln!(
            out,
            "# HELP fluidity_errors_total Failures by cause.\n# TYPE fluidity_errors_total counter"
        );
        for (i, (_, cause)) in FAILURES.iter().enumerate() {
            let _ = writeln!(
                out,
                "fluidity_errors_total{{cause=\"{cause}\"}} {}",
                load(&self.failures[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP fluidity_handshake_seconds TLS handshake latency.\n# TYPE fluidity_handshake_seconds histogram"
        );
        for (i, bound) in HANDSHAKE_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "fluidity_handshake_seconds_bucket{{le=\"{bound}\"}} {}",
                load(&self.handshake_buckets[i])
            );
        }
        let count = load(&self.handshake_count);
        let _ = writeln!(
            out,
            "fluidity_handshake_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "fluidity_handshake_seconds_sum {}",
            load(&self.handshake_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "fluidity_handshake_seconds_count {count}");
        if let Some(manager) = self.certificates.get() {
            let _ = writeln!(
                out,
                "# HELP fluidity_certificate_signings_total Server certificates requested from the CA.\n# TYPE fluidity_certificate_signings_total counter\nfluidity_certificate_signings_total {}",
                manager.signings()
            );
            if let Some(info) = manager.info() {
                let _ = writeln!(
                    out,
                    "# HELP fluidity_certificate_expiry_seconds Unix time the server certificate expires.\n# TYPE fluidity_certificate_expiry_seconds gauge\nfluidity_certificate_expiry_seconds {}",
                    info.not_after
                );
            }
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let _ = writeln!(
                out,
                "# HELP fluidity_runtime_tasks Tasks alive in the server's runtime.\n# TYPE fluidity_runtime_tasks gauge\nfluidity_runtime_tasks {}",
                runtime.metrics().num_alive_tasks()
            );
        }
        let _ = writeln!(
            out,
            "# HELP fluidity_uptime_seconds Seconds since start.\n# TYPE fluidity_uptime_seconds gauge\nfluidity_uptime_seconds {}",
            self.started.elapsed().as_secs()
        );
        out
    }
}
