//! Prometheus metrics and a health endpoint of the running recorder.
//!
//! `GET /metrics`: `kprobe_recorder_events_total{hook}`,
//! `kprobe_recorder_drops_total{hook}`, `kprobe_recorder_ringbuf_fill_ratio`,
//! `kprobe_recorder_sink_lag_events`, `kprobe_recorder_spool_bytes`,
//! `kprobe_recorder_decode_errors_total`. `GET /healthz`: 200 while the
//! reader loop runs (it has read the ring within the last 5 s), else 503.

use anyhow::{Context, Result};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

type Labels = Vec<(String, String)>;

/// The recorder's metrics (shared with the HTTP thread).
pub struct Metrics {
    registry: Registry,
    /// Events written to the ring buffer, per hook.
    pub events: Family<Labels, Counter>,
    /// Events dropped in the kernel, per hook.
    pub drops: Family<Labels, Counter>,
    /// Share of the ring buffer in use when last read (0..1).
    pub ring_fill: Gauge<f64, AtomicU64>,
    /// Events accepted by the sink but not yet delivered.
    pub sink_lag: Gauge,
    /// Bytes in the Kafka spool.
    pub spool_bytes: Gauge,
    /// Records the decoder rejected.
    pub decode_errors: Counter,
    /// Replay-grade reads by reference filled from the file.
    pub file_refs: Counter,
    /// Their bytes.
    pub file_ref_bytes: Counter,
    /// Reads by reference not filled, per reason.
    pub file_ref_misses: Family<Labels, Counter>,
    last_cycle_s: AtomicU64,
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kprobe_recorder");
        let events = Family::<Labels, Counter>::default();
        let drops = Family::<Labels, Counter>::default();
        let ring_fill = Gauge::<f64, AtomicU64>::default();
        let sink_lag = Gauge::default();
        let spool_bytes = Gauge::default();
        let decode_errors = Counter::default();
        let file_refs = Counter::default();
        let file_ref_bytes = Counter::default();
        let file_ref_misses = Family::<Labels, Counter>::default();
        registry.register("events", "Events written to the ring buffer, per hook", events.clone());
        registry.register("drops", "Events dropped in the kernel (ring buffer full), per hook", drops.clone());
        registry.register("ringbuf_fill_ratio", "Share of the ring buffer in use when last read", ring_fill.clone());
        registry.register("sink_lag_events", "Events accepted by the sink but not yet delivered", sink_lag.clone());
        registry.register("spool_bytes", "Bytes waiting in the Kafka disk spool", spool_bytes.clone());
        registry.register("decode_errors", "Ring-buffer records the decoder rejected", decode_errors.clone());
        registry.register(
            "file_refs",
            "Replay-grade reads of unchanged files captured by reference and filled from the file",
            file_refs.clone(),
        );
        registry.register("file_ref_bytes", "Bytes of those reads, read from the files", file_ref_bytes.clone());
        registry.register(
            "file_ref_misses",
            "Reads by reference that could not be filled (their syscalls are marked incomplete), per reason",
            file_ref_misses.clone(),
        );
        Metrics {
            registry,
            events,
            drops,
            ring_fill,
            sink_lag,
            spool_bytes,
            decode_errors,
            file_refs,
            file_ref_bytes,
            file_ref_misses,
            last_cycle_s: AtomicU64::new(now_s()),
        }
    }

    /// The reader loop is alive.
    pub fn beat(&self) {
        self.last_cycle_s.store(now_s(), Ordering::Relaxed);
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        encode(&mut s, &self.registry).expect("writing to a String");
        s
    }

    fn healthy(&self) -> bool {
        now_s().saturating_sub(self.last_cycle_s.load(Ordering::Relaxed)) <= 5
    }
}

/// The HTTP server of [`Metrics`]; stops when dropped.
pub struct Server {
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `/metrics` and `/healthz` on `addr` (port 0: any free port).
pub fn serve(addr: &str, metrics: Arc<Metrics>) -> Result<Server> {
    let server =
        Arc::new(tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("metrics endpoint on {addr}"))?);
    let bound = server.server_addr().to_ip().context("metrics endpoint is not an IP socket")?;
    let s = server.clone();
    let thread = std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for req in s.incoming_requests() {
            let (code, body, ctype) = match req.url() {
                "/metrics" => (200, metrics.render(), "application/openmetrics-text; version=1.0.0; charset=utf-8"),
                "/healthz" | "/health" if metrics.healthy() => (200, "ok\n".to_owned(), "text/plain"),
                "/healthz" | "/health" => (503, "reader loop stalled\n".to_owned(), "text/plain"),
                _ => (404, "not found: try /metrics or /healthz\n".to_owned(), "text/plain"),
            };
            let h = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes()).unwrap();
            let _ = req.respond(tiny_http::Response::from_string(body).with_status_code(code).with_header(h));
        }
    })?;
    Ok(Server { server, thread: Some(thread), addr: bound })
}
