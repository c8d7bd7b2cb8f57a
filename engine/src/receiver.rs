//! The OTLP/HTTP receiver: `POST /v1/traces` with an OTLP/JSON
//! `ExportTraceServiceRequest` (`Content-Type: application/json`, optionally
//! `Content-Encoding: gzip`), as OpenTelemetry SDKs and collectors export
//! with `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`.
//!
//! Answers, as the OTLP/HTTP specification says:
//! * `200` with `{}` (an empty `ExportTraceServiceResponse`) when every span was accepted;
//! * `400` with a JSON `Status` (`{"code": 3, "message": ...}`) on malformed
//!   input, the message naming the request and the field
//!   (`POST /v1/traces #3 from 127.0.0.1:40312: resourceSpans[0].scopeSpans[0].spans[1].traceId: expected 32 hex digits, ...`);
//! * `415` for protobuf bodies or unknown encodings, `413` above the size limit.
//!
//! A malformed request is rejected whole (nothing of it is kept) and never
//! takes the receiver down. `GET /healthz` answers `ok` and the counters.
//!
//! Accepted spans go to a [`SpanSink`]: kept in memory (the engine's
//! enrichment reads them), and optionally appended to a file as one request
//! per line (the collector's file-exporter shape, which `kprobe why --spans`
//! reads).

use crate::otlp::{self, Span};
use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Largest request body accepted (after decompression too).
pub const MAX_BODY: usize = 32 << 20;

/// Where accepted spans go, shared between the receiver and its readers.
#[derive(Default)]
pub struct SpanSink {
    spans: Mutex<Vec<Span>>,
    file: Mutex<Option<std::fs::File>>,
    /// Requests answered 200.
    pub accepted_requests: AtomicU64,
    /// Spans accepted.
    pub accepted_spans: AtomicU64,
    /// Requests answered 4xx.
    pub rejected_requests: AtomicU64,
    seq: AtomicU64,
}

impl SpanSink {
    /// A sink keeping spans in memory only.
    pub fn new() -> Arc<SpanSink> {
        Arc::new(SpanSink::default())
    }

    /// A sink that also appends every accepted request (one JSON line each) to `path`.
    pub fn with_file(path: &Path) -> Result<Arc<SpanSink>> {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
        let s = SpanSink::default();
        *s.file.lock().unwrap() = Some(f);
        Ok(Arc::new(s))
    }

    /// Takes the spans accepted since the last call.
    pub fn take(&self) -> Vec<Span> {
        std::mem::take(&mut *self.spans.lock().unwrap())
    }

    fn accept(&self, spans: Vec<Span>, body: &[u8]) -> std::io::Result<()> {
        if let Some(f) = self.file.lock().unwrap().as_mut() {
            // One request per line: re-serialise compactly (a pretty-printed body spans lines).
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
            let mut line = serde_json::to_vec(&v)?;
            line.push(b'\n');
            f.write_all(&line)?;
        }
        self.accepted_requests.fetch_add(1, Ordering::Relaxed);
        self.accepted_spans.fetch_add(spans.len() as u64, Ordering::Relaxed);
        self.spans.lock().unwrap().extend(spans);
        Ok(())
    }
}

#[derive(Clone)]
struct Ctx {
    sink: Arc<SpanSink>,
    txn_attr: Arc<str>,
}

fn status(code: StatusCode, grpc_code: u32, message: String) -> Response {
    let body = serde_json::json!({ "code": grpc_code, "message": message });
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn traces(State(c): State<Ctx>, ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap, body: Bytes) -> Response {
    let n = c.sink.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let origin = format!("POST /v1/traces #{n} from {peer}");
    let reject = |code: StatusCode, grpc: u32, msg: String| {
        c.sink.rejected_requests.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("otlp receiver: {code}: {msg}");
        status(code, grpc, msg)
    };
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ctype.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime != "application/json" {
        let why = if mime == "application/x-protobuf" {
            "OTLP/protobuf is not supported; export OTLP/JSON (OTEL_EXPORTER_OTLP_PROTOCOL=http/json)".to_owned()
        } else {
            format!("Content-Type {ctype:?}: expected application/json (OTLP/JSON)")
        };
        return reject(StatusCode::UNSUPPORTED_MEDIA_TYPE, 3, format!("{origin}: {why}"));
    }
    let enc = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("identity").trim().to_ascii_lowercase();
    let decoded;
    let bytes: &[u8] = match enc.as_str() {
        "" | "identity" => &body,
        "gzip" => {
            let mut out = Vec::new();
            let r = flate2::read::GzDecoder::new(&body[..]).take(MAX_BODY as u64 + 1).read_to_end(&mut out);
            if let Err(e) = r {
                return reject(StatusCode::BAD_REQUEST, 3, format!("{origin}: (body): not valid gzip: {e}"));
            }
            if out.len() > MAX_BODY {
                return reject(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    8,
                    format!("{origin}: (body): larger than {MAX_BODY} bytes once decompressed"),
                );
            }
            decoded = out;
            &decoded
        }
        other => {
            return reject(StatusCode::UNSUPPORTED_MEDIA_TYPE, 3, format!("{origin}: Content-Encoding {other:?}: expected gzip or none"))
        }
    };
    match otlp::parse_bytes(bytes, &origin, &c.txn_attr) {
        Ok(spans) => match c.sink.accept(spans, bytes) {
            Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{}").into_response(),
            Err(e) => status(StatusCode::SERVICE_UNAVAILABLE, 14, format!("{origin}: writing the span file: {e}")),
        },
        Err(e) => reject(StatusCode::BAD_REQUEST, 3, e.to_string()),
    }
}

async fn healthz(State(c): State<Ctx>) -> String {
    format!(
        "ok\naccepted_requests {}\naccepted_spans {}\nrejected_requests {}\n",
        c.sink.accepted_requests.load(Ordering::Relaxed),
        c.sink.accepted_spans.load(Ordering::Relaxed),
        c.sink.rejected_requests.load(Ordering::Relaxed)
    )
}

/// The receiver's routes.
pub fn router(sink: Arc<SpanSink>, txn_attr: &str) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Ctx { sink, txn_attr: txn_attr.into() })
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sink: Arc<SpanSink>,
    txn_attr: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = router(sink, txn_attr).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("OTLP receiver")
}

/// A receiver running on a thread of its own (its own runtime).
pub struct Receiver {
    /// The address it listens on (the real port when asked for port 0).
    pub addr: SocketAddr,
    /// Where its spans go.
    pub sink: Arc<SpanSink>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Receiver {
    /// Binds `addr` (e.g. `127.0.0.1:4318`, port 0 for any) and starts serving.
    pub fn start(addr: &str, txn_attr: &str, spans_out: Option<&PathBuf>) -> Result<Receiver> {
        let sink = match spans_out {
            Some(p) => SpanSink::with_file(p)?,
            None => SpanSink::new(),
        };
        let std_listener = std::net::TcpListener::bind(addr).with_context(|| format!("OTLP receiver: binding {addr}"))?;
        std_listener.set_nonblocking(true)?;
        let local = std_listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (s2, attr) = (sink.clone(), txn_attr.to_owned());
        let thread = std::thread::Builder::new().name("otlp-receiver".into()).spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(std_listener)?;
                serve(l, s2, &attr, async {
                    let _ = rx.await;
                })
                .await
            })
        })?;
        Ok(Receiver { addr: local, sink, stop: Some(tx), thread: Some(thread) })
    }

    /// Stops serving (open connections finish their request) and waits for the thread.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow::anyhow!("the OTLP receiver thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
