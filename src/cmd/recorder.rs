//! `kprobe recorder`: the eBPF recorder (crate `recorder`), and its benchmark
//! `kprobe bench recorder`.

use anyhow::{bail, Context, Result};
use clap::Args;
use recorder::kafka::{create_topics, KafkaOptions, KafkaSink};
use recorder::sink::{JsonLinesSink, KplSink, Sink};
use recorder::{Config, Filter, Hooks, Recorder, Summary};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `kprobe recorder`.
#[derive(Args, Debug, Clone)]
pub struct RecorderArgs {
    /// Helm values file (`probe.ebpf.hooks`, `probe.ebpf.ringBufferSizeKb`, `probe.capture`, `kafka.*`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Hooks to attach, e.g. `tcp,sched,syscall,fault` (overrides the values file).
    #[arg(long)]
    pub hooks: Option<String>,
    /// Record these processes (and the processes they fork).
    #[arg(long, conflicts_with_all = ["comm", "cgroup"])]
    pub pid: Vec<u32>,
    /// Record processes with this command name (running or started later).
    #[arg(long, conflicts_with = "cgroup")]
    pub comm: Option<String>,
    /// Record processes in this cgroup v2 (path under the cgroup2 mount, or absolute).
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Replay-grade capture of the selected processes.
    #[arg(long)]
    pub replay_grade: bool,
    /// Write a `.kpl` log here (the default sink; default file `kprobe-recorder.kpl`).
    #[arg(short, long, conflicts_with_all = ["kafka", "json"])]
    pub output: Option<PathBuf>,
    /// Send to Kafka (`host:port[,host:port]`), topics `kernel.{tcp,sched,syscall,fault}`.
    #[arg(long, conflicts_with = "json")]
    pub kafka: Option<String>,
    /// JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Ring-buffer size in KiB (overrides `probe.ebpf.ringBufferSizeKb`).
    #[arg(long)]
    pub ring_kb: Option<u32>,
    /// Serve Prometheus metrics and `/healthz` here (e.g. `0.0.0.0:9464`).
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Kafka disk spool directory.
    #[arg(long, default_value = "/var/lib/kprobe/spool")]
    pub spool_dir: PathBuf,
    /// Prefix of the Kafka topic names.
    #[arg(long, default_value = "")]
    pub topic_prefix: String,
    /// Partitions of topics the recorder creates.
    #[arg(long, default_value_t = 6)]
    pub kafka_partitions: i32,
    /// Replication factor of topics the recorder creates (overrides `kafka.replicationFactor`).
    #[arg(long)]
    pub kafka_replication_factor: Option<i32>,
    /// librdkafka `message.timeout.ms` (unacknowledged messages are sent again from the spool).
    #[arg(long, default_value_t = 10_000)]
    pub kafka_message_timeout_ms: u32,
    /// How long to wait at exit for the spool to drain, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub kafka_drain_timeout: f64,
    /// Write the run's summary (events, drops per hook) as JSON here.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Print the bound metrics address on stderr as `metrics: http://ADDR`.
    #[arg(long, hide = true)]
    pub print_metrics_addr: bool,
}

fn config_of(a: &RecorderArgs) -> Result<Config> {
    let mut c = match &a.config {
        Some(p) => Config::from_values_file(p)?,
        None => Config::default(),
    };
    if let Some(h) = &a.hooks {
        c.hooks = Hooks::parse(h)?;
    }
    if let Some(kb) = a.ring_kb {
        c.ring_buffer_kb = kb;
    }
    if let Some(rf) = a.kafka_replication_factor {
        c.kafka_replication_factor = rf;
    }
    c.filter = if !a.pid.is_empty() {
        for p in &a.pid {
            if !std::path::Path::new(&format!("/proc/{p}")).exists() {
                bail!("--pid {p}: no such process");
            }
        }
        Filter::Pid(a.pid.clone())
    } else if let Some(n) = &a.comm {
        Filter::Comm(n.clone())
    } else if let Some(g) = &a.cgroup {
        Filter::Cgroup(g.clone())
    } else {
        Filter::All
    };
    c.replay_grade = a.replay_grade;
    if c.replay_grade {
        if c.filter == Filter::All {
            bail!("--replay-grade needs the processes to capture: --pid, --comm or --cgroup");
        }
        bail!("--replay-grade: replay-grade capture (syscall results and output buffers) is not implemented in the eBPF recorder yet; use `kprobe record` (ptrace) for replayable recordings");
    }
    Ok(c)
}

fn summary_json(s: &Summary) -> serde_json::Value {
    let mut hooks = serde_json::Map::new();
    for (i, n) in recorder::raw::HOOK_NAMES.iter().enumerate() {
        hooks.insert(
            (*n).into(),
            serde_json::json!({"events": s.hooks[i].events, "drops": s.hooks[i].drops, "received": s.received[i]}),
        );
    }
    serde_json::json!({
        "events": s.events,
        "dropped": s.dropped(),
        "decode_errors": s.decode_errors,
        "hooks": hooks,
        "sink": s.sink,
        "max_rss_kb": max_rss_kb(),
    })
}

/// Peak resident set size of this process, KiB.
pub fn max_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs `kprobe recorder`.
pub fn run(a: RecorderArgs) -> Result<ExitCode> {
    let cfg = config_of(&a)?;
    let mut sink: Box<dyn Sink> = if let Some(brokers) = &a.kafka {
        let mut o = KafkaOptions::new(brokers, &a.spool_dir);
        o.topic_prefix = a.topic_prefix.clone();
        o.partitions = a.kafka_partitions;
        o.replication_factor = cfg.kafka_replication_factor;
        o.retention_ms = cfg.kafka_retention_ms;
        o.message_timeout_ms = a.kafka_message_timeout_ms;
        o.drain_timeout = Duration::from_secs_f64(a.kafka_drain_timeout);
        if let Err(e) = create_topics(&o) {
            eprintln!("kprobe recorder: warning: {e:#} (events wait in the spool until the broker answers)");
        }
        Box::new(KafkaSink::new(o)?)
    } else if a.json {
        Box::new(JsonLinesSink::new(std::io::stdout()))
    } else {
        let path = a
            .output
            .clone()
            .unwrap_or_else(|| "kprobe-recorder.kpl".into());
        Box::new(KplSink::create(&path, std::env::args().collect())?)
    };
    let mut rec = Recorder::start(cfg)
        .context("starting the eBPF recorder (it needs root, BTF and tracepoints)")?;
    let _server = match &a.metrics_addr {
        Some(addr) => {
            let s = recorder::metrics::serve(addr, rec.metrics())?;
            if a.print_metrics_addr {
                eprintln!("metrics: http://{}", s.addr);
            }
            Some(s)
        }
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let deadline = a
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    eprintln!("kprobe recorder: recording (hooks attached)");
    let summary = rec.run(sink.as_mut(), &|| {
        stop.load(Ordering::Relaxed) || deadline.map(|d| Instant::now() >= d).unwrap_or(false)
    })?;
    let js = summary_json(&summary);
    eprintln!(
        "kprobe recorder: {} events, {} dropped in the kernel{}; {}",
        summary.events,
        summary.dropped(),
        if summary.dropped() > 0 {
            " (reported as `lost` events)"
        } else {
            ""
        },
        summary.sink
    );
    for (i, n) in recorder::raw::HOOK_NAMES.iter().enumerate() {
        let h = summary.hooks[i];
        if h.events + h.drops > 0 {
            eprintln!("  {n:8} {:>10} events {:>8} dropped", h.events, h.drops);
        }
    }
    if let Some(p) = &a.summary {
        std::fs::write(p, serde_json::to_vec_pretty(&js)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
