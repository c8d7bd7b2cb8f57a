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
    /// Replay-grade: copy every byte read through the ring buffer, also
    /// reads of unchanged regular files (by default those go by reference
    /// and the recorder reads the bytes from the file; `probe.capture.fileRefs`).
    #[arg(long)]
    pub no_file_refs: bool,
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
    /// Reader pacing, µs: after a small drain the reader lets records
    /// gather this long before it reads the ring again (0: at once).
    #[arg(long)]
    pub drain_pace_us: Option<u64>,
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
    /// Record this command (from its exec on, with its children) and stop when it exits.
    #[arg(last = true)]
    pub command: Vec<String>,
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
    if let Some(us) = a.drain_pace_us {
        c.drain_pace_us = us;
    }
    if let Some(rf) = a.kafka_replication_factor {
        c.kafka_replication_factor = rf;
    }
    c.filter = if !a.command.is_empty() {
        if !a.pid.is_empty() || a.comm.is_some() || a.cgroup.is_some() {
            bail!("-- CMD selects the process to record: drop --pid, --comm and --cgroup");
        }
        Filter::Pid(vec![]) // the command's pid, once started
    } else if !a.pid.is_empty() {
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
    if a.no_file_refs {
        c.file_refs = false;
    }
    if c.replay_grade && c.filter == Filter::All && a.command.is_empty() {
        bail!("--replay-grade needs the processes to capture: --pid, --comm or --cgroup");
    }
    Ok(c)
}

fn summary_json(s: &Summary) -> serde_json::Value {
    let mut hooks = serde_json::Map::new();
    for (i, n) in recorder::raw::HOOK_NAMES.iter().enumerate() {
        hooks.insert((*n).into(), serde_json::json!({"events": s.hooks[i].events, "drops": s.hooks[i].drops, "received": s.received[i]}));
    }
    serde_json::json!({
        "events": s.events,
        "dropped": s.dropped(),
        "decode_errors": s.decode_errors,
        "async_signals": s.async_signals,
        "file_refs": s.file_refs,
        "file_ref_bytes": s.file_ref_bytes,
        "file_ref_misses": s.file_ref_misses,
        "hooks": hooks,
        "sink": s.sink,
        "max_rss_kb": max_rss_kb(),
    })
}

/// Peak resident set size of this process, KiB.
pub fn max_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn report(a: &RecorderArgs, summary: &Summary) -> Result<()> {
    let js = summary_json(summary);
    eprintln!(
        "kprobe recorder: {} events, {} dropped in the kernel{}; {}",
        summary.events,
        summary.dropped(),
        if summary.dropped() > 0 { " (reported as `lost` events)" } else { "" },
        summary.sink
    );
    for (i, n) in recorder::raw::HOOK_NAMES.iter().enumerate() {
        let h = summary.hooks[i];
        if h.events + h.drops > 0 {
            eprintln!("  {n:8} {:>10} events {:>8} dropped", h.events, h.drops);
        }
    }
    if a.replay_grade {
        if summary.file_refs + summary.file_ref_misses > 0 {
            eprintln!(
                "  file reads by reference: {} ({} bytes read from the files), {} not filled",
                summary.file_refs, summary.file_ref_bytes, summary.file_ref_misses
            );
        }
        for w in summary.replay_warnings().iter().filter(|w| w.contains("signal") || w.contains("reference")) {
            eprintln!("kprobe recorder: warning: {w}");
        }
    }
    if let Some(p) = &a.summary {
        std::fs::write(p, serde_json::to_vec_pretty(&js)?).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
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
        let path = a.output.clone().unwrap_or_else(|| "kprobe-recorder.kpl".into());
        Box::new(KplSink::create(&path, std::env::args().collect())?)
    };
    if !a.command.is_empty() {
        let (status, summary) = recorder::record_command(&a.command, cfg, sink.as_mut())
            .context("recording the command with the eBPF recorder (it needs root, BTF and tracepoints)")?;
        report(&a, &summary)?;
        return Ok(match status.code() {
            Some(c) => ExitCode::from(c as u8),
            None => ExitCode::from(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0) as u8),
        });
    }
    let mut rec = Recorder::start(cfg).context("starting the eBPF recorder (it needs root, BTF and tracepoints)")?;
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
    let deadline = a.duration.map(|d| Instant::now() + Duration::from_secs_f64(d));
    eprintln!("kprobe recorder: recording (hooks attached)");
    let summary = rec.run(sink.as_mut(), &|| stop.load(Ordering::Relaxed) || deadline.map(|d| Instant::now() >= d).unwrap_or(false))?;
    report(&a, &summary)?;
    Ok(ExitCode::SUCCESS)
}

/// Options of `kprobe bench recorder`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Syscalls per timed loop (overhead rows).
    #[arg(long, default_value_t = 1_000_000)]
    pub calls: u64,
    /// Rounds of each overhead configuration (median reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// read(2) calls per worker in the throughput run.
    #[arg(long, default_value_t = 4_000_000)]
    pub events: u64,
    /// Parallel workers in the throughput run.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Ring-buffer size of the throughput run, KiB.
    #[arg(long, default_value_t = 4096)]
    pub ring_kb: u32,
    /// Skip the bpftrace cross-check.
    #[arg(long)]
    pub no_bpftrace: bool,
    /// The syscall-heavy program of the replay-grade slowdown row (run
    /// natively and under `kprobe record --backend ebpf`, side by side).
    #[arg(long, default_value = "grep -r -c zzzz /usr/share/doc")]
    pub slowdown_cmd: String,
    /// Runs of each side of the slowdown row (median reported).
    #[arg(long, default_value_t = 5)]
    pub slowdown_runs: usize,
    /// Which parts to run: `overhead` (ns per syscall), `throughput` (events/s, RSS, bpftrace), `slowdown`.
    #[arg(long, value_delimiter = ',', default_value = "overhead,throughput,slowdown")]
    pub parts: Vec<String>,
    /// The recorders' reader pacing, µs (`kprobe recorder --drain-pace-us`;
    /// 0 compares with a reader that reads again at once).
    #[arg(long, default_value_t = recorder::Config::default().drain_pace_us)]
    pub drain_pace_us: u64,
}

/// The program's own run time in an eBPF log: from its exec to the exit of
/// its process (event timestamps), and the log's syscall events.
fn program_time(log: &std::path::Path) -> Result<(f64, u64)> {
    let r = kpl::Reader::open(log).with_context(|| format!("reading {}", log.display()))?;
    let (mut start, mut end, mut pid, mut syscalls) = (None, None, 0, 0u64);
    for ev in r.events() {
        let ev = ev?;
        match &ev.body {
            kpl::EventBody::Exec(_) if start.is_none() => {
                start = Some(ev.ts_ns);
                pid = ev.pid;
            }
            kpl::EventBody::Exit(x) if x.group && ev.pid == pid => end = Some(ev.ts_ns),
            kpl::EventBody::Syscall(_) => syscalls += 1,
            _ => {}
        }
    }
    match (start, end) {
        (Some(s), Some(e)) if e > s => Ok(((e - s) as f64 / 1e6, syscalls)),
        _ => bail!("{}: no exec and exit of the recorded program", log.display()),
    }
}

/// The replay-grade slowdown row: `cmd` natively (spawn to exit) and under
/// `kprobe record --backend ebpf` (its exec to its exit, from the log),
/// interleaved, after one native warm-up run (page cache).
fn slowdown(a: &BenchArgs, dir: &std::path::Path) -> Result<()> {
    let argv: Vec<&str> = a.slowdown_cmd.split_whitespace().collect();
    let Some((prog, args)) = argv.split_first() else { bail!("--slowdown-cmd is empty") };
    let native = || -> Result<f64> {
        let t = Instant::now();
        let st = std::process::Command::new(prog).args(args).stdout(std::process::Stdio::null()).status()?;
        if st.code().is_none_or(|c| c > 1) {
            bail!("{}: {st}", a.slowdown_cmd);
        }
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    native()?;
    println!(
        "== replay-grade slowdown: `{}` natively and under `kprobe record --backend ebpf`, {} runs each, interleaved",
        a.slowdown_cmd, a.slowdown_runs
    );
    let log = dir.join("slowdown.kpl");
    let (mut nat, mut rec, mut wall) = (vec![], vec![], vec![]);
    let (mut syscalls, mut bytes, mut drops) = (0, 0, 0u64);
    for _ in 0..a.slowdown_runs {
        nat.push(native()?);
        let t = Instant::now();
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["record", "--backend", "ebpf", "--drain-pace-us"])
            .arg(a.drain_pace_us.to_string())
            .arg("-o")
            .arg(&log)
            .arg("--")
            .args(&argv)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()?;
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        let err = String::from_utf8_lossy(&out.stderr);
        drops += err.split(" dropped)").next().and_then(|s| s.rsplit(", ").next()).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        let (ms, n) = program_time(&log)?;
        rec.push(ms);
        syscalls = n;
        bytes = std::fs::metadata(&log)?.len();
    }
    let span = |v: &[f64]| {
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(0.0, f64::max);
        format!("{lo:.1}–{hi:.1}")
    };
    let (nat_span, rec_span) = (span(&nat), span(&rec));
    let (n, r, w) = (median(nat.clone()), median(rec.clone()), median(wall));
    println!(
        "native {n:.1} ms | recorded {r:.1} ms (x{:.2}) | `kprobe record` wall time {w:.1} ms (start-up, capture, writing the log) | {syscalls} syscalls, log {:.1} MB, drops {drops}",
        r / n,
        bytes as f64 / 1e6
    );
    println!("  runs: native {nat_span} ms, recorded {rec_span} ms");
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(" ");
    println!("  in run order: native {} | recorded {}", list(&nat), list(&rec));
    Ok(())
}

const BENCH_LOOP: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int mode = atoi(argv[1]);
    long n = atol(argv[2]);
    int fd = open("/dev/zero", O_RDONLY);
    char b[64];
    struct timespec a, z, ca, cz;
    clock_gettime(CLOCK_MONOTONIC, &a);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ca);
    for (long i = 0; i < n; i++) {
        if (mode == 0) syscall(SYS_getpid); else syscall(SYS_read, fd, b, 1);
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cz);
    clock_gettime(CLOCK_MONOTONIC, &z);
    printf("%.3f %.3f\n", ((z.tv_sec - a.tv_sec) * 1e9 + (z.tv_nsec - a.tv_nsec)) / n,
           ((cz.tv_sec - ca.tv_sec) * 1e9 + (cz.tv_nsec - ca.tv_nsec)) / n);
    return 0;
}
"#;

/// Counts events, keeps nothing: the capture path without a sink's cost.
struct NullSink(u64);

impl Sink for NullSink {
    fn send(&mut self, _ev: &kpl::Event, _m: &recorder::sink::EventMeta) -> Result<()> {
        self.0 += 1;
        Ok(())
    }
    fn finish(&mut self) -> Result<String> {
        Ok(format!("null: {} events", self.0))
    }
}

/// One timed loop: ns per call of wall-clock time, and of the loop's own
/// CPU time (`CLOCK_THREAD_CPUTIME_ID`: user and kernel time of the
/// syscalls, without the time the loop waited for a CPU on a loaded machine).
fn run_loop(exe: &std::path::Path, mode: u32, n: u64) -> Result<(f64, f64)> {
    let out = std::process::Command::new(exe).arg(mode.to_string()).arg(n.to_string()).output()?;
    if !out.status.success() {
        bail!("benchmark loop failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let mut it = s.split_whitespace().map(|v| v.parse::<f64>());
    match (it.next(), it.next()) {
        (Some(Ok(w)), Some(Ok(c))) => Ok((w, c)),
        _ => bail!("benchmark loop printed {s:?}"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn with_recorder<T>(cfg: Config, f: impl FnOnce() -> Result<T>) -> Result<(T, Summary)> {
    let mut rec = Recorder::start(cfg)?;
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let th = std::thread::spawn(move || {
        let mut sink = NullSink(0);
        rec.run(&mut sink, &|| s2.load(Ordering::Relaxed))
    });
    let r = f();
    stop.store(true, Ordering::Relaxed);
    let s = th.join().map_err(|_| anyhow::anyhow!("recorder thread panicked"))??;
    Ok((r?, s))
}

fn ensure_tracefs() {
    if !std::path::Path::new("/sys/kernel/tracing/available_events").exists() {
        let _ = std::process::Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]).status();
    }
}

/// Runs `kprobe bench recorder`.
pub fn bench(a: BenchArgs) -> Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("kprobe-bench-recorder-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let src = dir.join("kpbench.c");
    std::fs::write(&src, BENCH_LOOP)?;
    let exe = dir.join("kpbench");
    let st = std::process::Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .context("running gcc to build the benchmark loop")?;
    if !st.success() {
        bail!("gcc failed on {}", src.display());
    }
    struct Idle(std::process::Child);
    impl Drop for Idle {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // a process the `filtered out` configuration selects (not the loop)
    let idle = Idle(std::process::Command::new("sleep").arg("100000").spawn()?);
    let hooks = Hooks::default();
    let base_cfg = Config { hooks, drain_pace_us: a.drain_pace_us, ..Config::default() };
    let filtered = Config { filter: Filter::Pid(vec![idle.0.id()]), ..base_cfg.clone() };
    let hit = Config { filter: Filter::Comm("kpbench".into()), ..base_cfg };
    let replay = Config { replay_grade: true, ..hit.clone() };
    println!("== added time per syscall: a getpid loop (not instrumented, but raw_syscalls fires) and a read loop (instrumented), {} calls, median of {} rounds", a.calls, a.rounds);
    println!(
        "   all hooks attached; `filtered out`: the recorder selects another process; `hit`: it records the loop (sink: counting only)"
    );
    println!("   wall: elapsed time per call; cpu: the loop's own CPU time per call (without the time it waited for a CPU)");
    for p in &a.parts {
        if !["overhead", "throughput", "slowdown"].contains(&p.as_str()) {
            bail!("--parts {p}: one of overhead, throughput, slowdown");
        }
    }
    let part = |p: &str| a.parts.iter().any(|x| x == p);
    for (mode, name) in [(0u32, "getpid"), (1, "read")] {
        if !part("overhead") {
            break;
        }
        let (mut base, mut filt, mut hitv, mut rgv) = (vec![], vec![], vec![], vec![]);
        let (mut hit_drops, mut rg_drops) = (0, 0);
        for _ in 0..a.rounds {
            base.push(run_loop(&exe, mode, a.calls)?);
            filt.push(with_recorder(filtered.clone(), || run_loop(&exe, mode, a.calls))?.0);
            let (v, s) = with_recorder(hit.clone(), || run_loop(&exe, mode, a.calls))?;
            hit_drops += s.dropped();
            hitv.push(v);
            let (v, s) = with_recorder(replay.clone(), || run_loop(&exe, mode, a.calls))?;
            rg_drops += s.dropped();
            rgv.push(v);
        }
        for (i, what) in [(0, "wall"), (1, "cpu")] {
            let pick = |v: &[(f64, f64)]| median(v.iter().map(|x| if i == 0 { x.0 } else { x.1 }).collect());
            let (b, f, h, r) = (pick(&base), pick(&filt), pick(&hitv), pick(&rgv));
            println!(
                "{name:7} ns/call ({what:4}): no probes {b:8.1} | filtered out {f:8.1} (+{:6.1}, x{:.2}) | hit {h:8.1} (+{:6.1}, x{:.2}) | replay-grade {r:8.1} (+{:6.1}, x{:.2}) | drops hit {hit_drops} replay {rg_drops}",
                f - b,
                f / b,
                h - b,
                h / b,
                r - b,
                r / b
            );
        }
    }
    drop(idle);
    if !part("throughput") {
        if part("slowdown") {
            slowdown(&a, &dir)?;
        }
        std::fs::remove_dir_all(&dir).ok();
        return Ok(ExitCode::SUCCESS);
    }

    println!(
        "== throughput: {} workers x {} read(2) calls, syscall hook, ring {} KiB, `kprobe recorder` to a .kpl file",
        a.workers, a.events, a.ring_kb
    );
    ensure_tracefs();
    let kpl_out = dir.join("throughput.kpl");
    let summary_path = dir.join("summary.json");
    let mut rec = std::process::Command::new(std::env::current_exe()?)
        .args(["recorder", "--hooks", "syscall", "--comm", "kpbench", "--ring-kb"])
        .arg(a.ring_kb.to_string())
        .arg("--drain-pace-us")
        .arg(a.drain_pace_us.to_string())
        .arg("-o")
        .arg(&kpl_out)
        .arg("--summary")
        .arg(&summary_path)
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(rec.stderr.as_mut().unwrap()).read_line(&mut line)?;
        if !line.contains("recording") {
            bail!("kprobe recorder did not start: {line}");
        }
    }
    let bpftrace = if a.no_bpftrace {
        None
    } else {
        let mut c = std::process::Command::new("bpftrace")
            .args(["-e", "tracepoint:raw_syscalls:sys_exit /comm == \"kpbench\" && (args->id == 0 || args->id == 1 || args->id == 17 || args->id == 18 || args->id == 19 || args->id == 20 || (args->id >= 44 && args->id <= 47) || args->id == 74 || args->id == 75)/ { @n = count(); }"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("running bpftrace (scripts/setup.sh installs it; --no-bpftrace skips the cross-check)")?;
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line)?;
        if !line.contains("Attaching") {
            bail!("bpftrace did not attach: {line}");
        }
        std::thread::sleep(Duration::from_secs(1));
        Some((c, out))
    };
    let t0 = Instant::now();
    let workers: Vec<_> = (0..a.workers)
        .map(|_| std::process::Command::new(&exe).arg("1").arg(a.events.to_string()).stdout(std::process::Stdio::null()).spawn())
        .collect::<std::io::Result<_>>()?;
    for mut w in workers {
        w.wait()?;
    }
    let secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let bt_count = match bpftrace {
        Some((c, mut out)) => {
            let _ = std::process::Command::new("kill").arg("-INT").arg(c.id().to_string()).status();
            let mut s = String::new();
            use std::io::Read;
            out.read_to_string(&mut s)?;
            s.lines().find_map(|l| l.trim().strip_prefix("@n: ").and_then(|v| v.parse::<u64>().ok()))
        }
        None => None,
    };
    let _ = std::process::Command::new("kill").arg("-TERM").arg(rec.id().to_string()).status();
    let st = rec.wait()?;
    if !st.success() {
        bail!("kprobe recorder failed ({st})");
    }
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary_path)?)?;
    let got = s["hooks"]["syscall"]["received"].as_u64().unwrap_or(0);
    let drops = s["hooks"]["syscall"]["drops"].as_u64().unwrap_or(0);
    let offered = a.workers as f64 * a.events as f64 / secs;
    println!(
        "captured {got} syscall events in {secs:.2} s of load = {:.2} M events/s (offered {:.2} M/s), drops {drops}, recorder peak RSS {:.1} MB",
        got as f64 / secs / 1e6,
        offered / 1e6,
        s["max_rss_kb"].as_u64().unwrap_or(0) as f64 / 1024.0
    );
    if let Some(n) = bt_count {
        println!(
            "bpftrace counted {n} read/write-family syscall exits of kpbench; the recorder {} + {} dropped = {} ({})",
            got,
            drops,
            got + drops,
            if n == got + drops { "equal" } else { "DIFFERENT" }
        );
    }
    if part("slowdown") {
        slowdown(&a, &dir)?;
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(ExitCode::SUCCESS)
}
