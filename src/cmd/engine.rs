//! `kprobe engine`: the causal engine as a service. Kafka mode consumes the
//! recorder's `kernel.*` topics and produces `kernel.enriched` (events with
//! their OpenTelemetry context); the OTLP/HTTP receiver takes the spans.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `kprobe engine [--kafka BROKERS] [--otlp-addr ADDR] [--spans FILE] ...`
#[derive(Args)]
pub struct EngineArgs {
    /// Kafka bootstrap servers: consume `kernel.*`, produce `kernel.enriched`.
    #[arg(long)]
    kafka: Option<String>,
    /// Prefix of the topic names (tests); empty in production.
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Consumer group of the engine.
    #[arg(long, default_value = "kprobe-engine")]
    group: String,
    /// Consumer-group session timeout (a join takes about half of it on tansu).
    #[arg(long, default_value_t = 6000)]
    session_timeout_ms: u32,
    /// Partitions of `kernel.enriched` when the engine creates it.
    #[arg(long, default_value_t = 1)]
    kafka_partitions: i32,
    /// Replication factor of `kernel.enriched` when the engine creates it (default: `kafka.replicationFactor` of --values, else 3).
    #[arg(long)]
    kafka_replication_factor: Option<i32>,
    /// On a quiet stream, emit a window this long after it closed.
    #[arg(long, default_value_t = 1000)]
    grace_ms: u64,
    /// Serve the OTLP/HTTP receiver here (`POST /v1/traces`, OTLP/JSON), e.g. 127.0.0.1:4318; port 0 picks one.
    #[arg(long)]
    otlp_addr: Option<String>,
    /// Append every request the receiver accepts to this file (JSON lines; `kprobe why --spans` reads it).
    #[arg(long)]
    spans_out: Option<PathBuf>,
    /// Spans known up front (OTLP/JSON files). Repeatable.
    #[arg(long)]
    spans: Vec<PathBuf>,
    /// Helm values file (`engine.windowMs`, `engine.causalThresholdNs`, `kafka.replicationFactor`).
    #[arg(long)]
    values: Option<PathBuf>,
    /// Override `engine.windowMs`.
    #[arg(long)]
    window_ms: Option<u64>,
    /// Span attribute holding the transaction id.
    #[arg(long)]
    txn_attr: Option<String>,
    /// With --kafka: stop once every partition of kernel.* has been read to its end (a backfill).
    #[arg(long, requires = "kafka")]
    until_caught_up: bool,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    duration: Option<f64>,
}

/// Runs `kprobe engine`.
pub fn run(a: EngineArgs) -> Result<ExitCode> {
    if a.kafka.is_none() && a.otlp_addr.is_none() {
        bail!("nothing to do: give --kafka BROKERS (kernel.* -> kernel.enriched) and/or --otlp-addr ADDR (span receiver)");
    }
    let cfg = super::why::config(a.values.as_ref(), None, a.window_ms, a.txn_attr.as_ref())?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    if let Some(d) = a.duration {
        let s = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(d));
            s.store(true, Ordering::Relaxed);
        });
    }
    let mut spans = Vec::new();
    for f in &a.spans {
        spans.extend(engine::otlp::read_file(f, &cfg.txn_attribute)?);
    }
    let receiver = match &a.otlp_addr {
        Some(addr) => {
            let r = engine::receiver::Receiver::start(addr, &cfg.txn_attribute, a.spans_out.as_ref())?;
            eprintln!("kprobe engine: OTLP/HTTP receiver listening on http://{}/v1/traces", r.addr);
            Some(r)
        }
        None => None,
    };
    let t0 = Instant::now();
    if let Some(brokers) = &a.kafka {
        let mut o = engine::stream::KafkaOptions::new(brokers);
        o.topic_prefix = a.topic_prefix.clone();
        o.group = a.group.clone();
        o.session_timeout_ms = a.session_timeout_ms;
        o.partitions = a.kafka_partitions;
        o.replication_factor = a
            .kafka_replication_factor
            .or(match &a.values {
                Some(v) => engine::config::kafka_replication_factor(v)?,
                None => None,
            })
            .unwrap_or(3);
        o.grace = Duration::from_millis(a.grace_ms);
        o.until_caught_up = a.until_caught_up;
        eprintln!(
            "kprobe engine: consuming {}kernel.* from {brokers} (group {}), producing {}{}; window {} ms",
            o.topic_prefix,
            o.group,
            o.topic_prefix,
            engine::stream::ENRICHED_TOPIC,
            cfg.window_ns / 1_000_000
        );
        let st = engine::stream::run(&o, &cfg, spans, receiver.as_ref().map(|r| r.sink.clone()), &stop)?;
        eprintln!(
            "kprobe engine: {} events consumed, {} enriched events produced ({} with a transaction), {} bad messages, {} spans, {:.1} s",
            st.consumed,
            st.produced,
            st.with_context,
            st.bad,
            st.spans,
            t0.elapsed().as_secs_f64()
        );
    } else {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if let Some(r) = receiver {
        let sink = r.sink.clone();
        r.stop()?;
        eprintln!(
            "kprobe engine: receiver accepted {} requests ({} spans), rejected {}",
            sink.accepted_requests.load(Ordering::Relaxed),
            sink.accepted_spans.load(Ordering::Relaxed),
            sink.rejected_requests.load(Ordering::Relaxed)
        );
    }
    Ok(ExitCode::SUCCESS)
}
