//! `kprobe bench engine`: the causal engine's figures of BENCHMARKS.md.
//!
//! * Correlation throughput, one thread: a synthetic incident log
//!   (`kpl::synth`: gateway, ledger, batch job, spans with transaction ids)
//!   loaded into the engine's store and every transaction explained; and the
//!   Kafka mode's per-event work (a `kernel.*` JSON message parsed, tied to
//!   its span, the `kernel.enriched` row serialized), without the broker.
//! * `why` latency on that log (1 M events by default): the embedded cause
//!   index (reader open, and per query from an open reader) next to
//!   re-analysing the log from scratch and explaining from a store already
//!   in memory; and the real Bolt graph server after storing every graph.
//! * Accuracy per incident type over N runs of `fixtures/incidents/run.sh`
//!   (root: real scheduler delay, TCP loss, memory pressure, and a healthy run).

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use engine::{CausalGraph, EngineConfig};
use kpl::synth::Synth;
use kpl::{Metadata, Writer};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// Arguments of `kprobe bench engine`.
#[derive(Args)]
pub struct BenchEngineArgs {
    /// Events in the synthetic incident log.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Seed of the synthetic stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Working directory (the synthetic log, its cause index, the incident runs).
    #[arg(long, default_value = "/var/tmp/kprobe-bench-engine")]
    dir: PathBuf,
    /// `why` queries timed on the embedded index and on a store in memory.
    #[arg(long, default_value_t = 5000)]
    queries: usize,
    /// `why` queries that re-analyse the log from scratch (each reads the whole log).
    #[arg(long, default_value_t = 5)]
    scratch_queries: usize,
    /// Bolt graph server (`host:port`); its password from KPROBE_NEO4J_PASSWORD.
    #[arg(long, default_value = "127.0.0.1:7687")]
    neo4j: String,
    /// Graph server user.
    #[arg(long, default_value = "root")]
    neo4j_user: String,
    /// Graph server database.
    #[arg(long, default_value = "kprobe")]
    neo4j_db: String,
    /// `why` queries timed on the graph server.
    #[arg(long, default_value_t = 1000)]
    bolt_queries: usize,
    /// Leave out the graph server.
    #[arg(long)]
    no_bolt: bool,
    /// Runs of each incident for the accuracy rows (0: leave them out).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// The incident script.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/incidents/run.sh"))]
    incidents: PathBuf,
}

fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr_with_hz(4));
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg:>18} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// p50, p99 and max of a sample.
#[derive(Clone, Copy)]
struct Lat {
    p50: Duration,
    p99: Duration,
    max: Duration,
    n: usize,
}

impl Lat {
    fn of(mut v: Vec<Duration>) -> Lat {
        v.sort_unstable();
        let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
        Lat { p50: at(0.5), p99: at(0.99), max: at(1.0), n: v.len() }
    }
    fn show(&self) -> String {
        format!("{} / {} / {}", ms(self.p50), ms(self.p99), ms(self.max))
    }
}

fn ms(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Runs `kprobe bench engine`.
pub fn run(a: BenchEngineArgs) -> Result<ExitCode> {
    ensure!(a.events > 0, "--events must be positive");
    ensure!(a.queries > 0 && a.scratch_queries > 0, "--queries and --scratch-queries must be positive");
    ensure!(a.no_bolt || a.bolt_queries > 0, "--bolt-queries must be positive (or --no-bolt)");
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let cfg = EngineConfig::default();
    let log = a.dir.join("synthetic.kpl");
    let index = a.dir.join("synthetic-index.kpl");
    println!("## kprobe bench engine: {} synthetic events (seed {}), {} incident runs of each kind", a.events, a.seed, a.runs);
    println!();
    write_synthetic(&log, a.events, a.seed)?;

    // Correlation: load + explain everything, one thread.
    let t = Instant::now();
    let store = engine::load(std::slice::from_ref(&log), &[], &cfg)?;
    let load = t.elapsed();
    let t = Instant::now();
    let graphs = engine::analyze::explain_all(&store, &cfg)?;
    let explain = t.elapsed();
    let n_txn = graphs.len();
    let caused = graphs.iter().filter(|g| g.root_cause().is_some()).count();
    let corr_eps = a.events as f64 / (load + explain).as_secs_f64();
    let enrich_eps = enrich_rate(&log, &store)?;

    // The embedded cause index.
    let t = Instant::now();
    let st = engine::index::write_index(&store, &graphs, &index)?;
    let index_write = t.elapsed();
    let txns: Vec<String> = graphs.iter().filter_map(|g| g.txn.clone()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ 0xca05e);
    let pick = |n: usize, rng: &mut rand::rngs::StdRng| -> Vec<String> {
        (0..n).map(|_| txns.choose(rng).cloned().expect("transactions")).collect()
    };
    let by_txn: std::collections::HashMap<&str, &CausalGraph> = graphs.iter().filter_map(|g| g.txn.as_deref().map(|t| (t, g))).collect();
    let t = Instant::now();
    let r = kpl::Reader::open(&index)?;
    let open = t.elapsed();
    let mut warm = Vec::new();
    let pb = bar(a.queries as u64, "why: index");
    for q in pick(a.queries, &mut rng) {
        let t = Instant::now();
        let g = engine::index::read_graph(&r, &q)?.with_context(|| format!("{q} not in the index"))?;
        warm.push(t.elapsed());
        ensure!(&g == by_txn[q.as_str()], "{q}: the index answers differently from the analysis");
        pb.inc(1);
    }
    pb.finish_and_clear();
    let warm = Lat::of(warm);
    let mut cold = Vec::new();
    for q in pick(a.queries.min(500), &mut rng) {
        let t = Instant::now();
        let r = kpl::Reader::open(&index)?;
        engine::index::read_graph(&r, &q)?.with_context(|| format!("{q} not in the index"))?;
        cold.push(t.elapsed());
    }
    let cold = Lat::of(cold);
    // The whole command, as a user runs it (process start, open, query, render).
    let me = std::env::current_exe().context("locating the kprobe binary")?;
    let mut cli = Vec::new();
    for q in pick(a.queries.min(100), &mut rng) {
        let t = Instant::now();
        let out = Command::new(&me).args(["why", &q, "--log"]).arg(&index).output()?;
        cli.push(t.elapsed());
        ensure!(out.status.success(), "kprobe why {q}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let cli = Lat::of(cli);
    let mut mem = Vec::new();
    for q in pick(a.queries, &mut rng) {
        let t = Instant::now();
        engine::analyze::explain_txn(&store, &cfg, &q)?;
        mem.push(t.elapsed());
    }
    let mem = Lat::of(mem);
    drop(store);
    let mut scratch = Vec::new();
    let pb = bar(a.scratch_queries as u64, "why: from scratch");
    for q in pick(a.scratch_queries, &mut rng) {
        let t = Instant::now();
        let s = engine::load(std::slice::from_ref(&log), &[], &cfg)?;
        engine::analyze::explain_txn(&s, &cfg, &q)?;
        scratch.push(t.elapsed());
        pb.inc(1);
    }
    pb.finish_and_clear();
    let scratch = Lat::of(scratch);
    let bolt = if a.no_bolt { None } else { Some(bolt_latency(&a, &graphs, &pick(a.bolt_queries, &mut rng), &by_txn)?) };
    let accuracy = if a.runs == 0 { Vec::new() } else { accuracy(&a)? };

    println!("Correlation ({} transactions, {} with a cause above {}; one thread):", n_txn, caused, engine::graph::dur(cfg.threshold_ns));
    println!();
    println!("| measure | kprobe | goal | met |");
    println!("|---|---|---|---|");
    println!(
        "| load {} events into the store + explain all {n_txn} transactions | {:.2} M events/s ({} load + {} explain) | ≥ 1 M events/s | {} |",
        a.events,
        corr_eps / 1e6,
        ms(load),
        ms(explain),
        yes(corr_eps >= 1e6)
    );
    println!(
        "| Kafka mode: parse a kernel.* message, tie it to its span, serialize the kernel.enriched row | {:.2} M events/s | — | |",
        enrich_eps / 1e6
    );
    println!(
        "| write the cause index ({} events, {} causes of {} transactions) | {} | — | |",
        st.events,
        st.causes,
        st.transactions,
        ms(index_write)
    );
    println!();
    println!("`why TXN` on the {}-event log, p50 / p99 / max:", a.events);
    println!();
    println!("| store | latency | queries | ratio to the index (p99) | goal | met |");
    println!("|---|---|---|---|---|---|");
    let ratio = |l: &Lat| format!("{:.0}×", l.p99.as_secs_f64() / warm.p99.as_secs_f64());
    println!(
        "| embedded cause index, reader open | {} | {} | 1× | ≤ 5 ms | {} |",
        warm.show(),
        warm.n,
        yes(warm.p99 <= Duration::from_millis(5))
    );
    println!("| embedded cause index, open + query | {} | {} | {} | — | |", cold.show(), cold.n, ratio(&cold));
    println!("| opening the index (footer) | {} | 1 | — | — | |", ms(open));
    println!("| the command `kprobe why TXN --log INDEX` (process start to exit) | {} | {} | {} | — | |", cli.show(), cli.n, ratio(&cli));
    println!("| analysis from a store in memory | {} | {} | {} | — | |", mem.show(), mem.n, ratio(&mem));
    println!("| re-analysing the log from scratch | {} | {} | {} | — | |", scratch.show(), scratch.n, ratio(&scratch));
    match &bolt {
        Some((save, l)) => {
            println!(
                "| Bolt graph server ({}, after storing {n_txn} graphs in {}) | {} | {} | {} | measured | — |",
                a.neo4j,
                ms(*save),
                l.show(),
                l.n,
                ratio(l)
            )
        }
        None => println!("| Bolt graph server | not measured (--no-bolt) | | | | |"),
    }
    if !accuracy.is_empty() {
        println!();
        println!("Accuracy ({} runs of each incident, `why TXN` on kernel.kpl + spans.json):", a.runs);
        println!();
        println!("| incident | expected root cause | right | goal | met |");
        println!("|---|---|---|---|---|");
        for (kind, expect, ok, n, bad) in &accuracy {
            let goal = if *kind == "healthy" { n.to_string() } else { format!("≥ {}", n - n / 20) };
            let met = if *kind == "healthy" { ok == n } else { *ok >= n - n / 20 };
            println!("| {kind} | {expect} | {ok} / {n} | {goal} | {} |", yes(met));
            for b in bad {
                println!("|   | miss: {b} | | | |");
            }
        }
    }
    println!();
    println!("files: {} (synthetic), {} (cause index)", log.display(), index.display());
    Ok(ExitCode::SUCCESS)
}

fn write_synthetic(log: &Path, n: u64, seed: u64) -> Result<()> {
    let meta = Metadata::for_this_host("synthetic", vec!["kprobe".into(), "bench".into(), "engine".into()]);
    let mut w = Writer::create(log, &meta).with_context(|| format!("creating {}", log.display()))?;
    let pb = bar(n, "synthetic log");
    for (i, ev) in Synth::new(seed).take(n as usize).enumerate() {
        w.append(ev)?;
        if i % 8192 == 0 {
            pb.set_position(i as u64);
        }
    }
    w.finish()?;
    pb.finish_and_clear();
    Ok(())
}

/// Events/s of the Kafka mode's per-event work on one thread: each event as
/// the recorder's JSON message (made beforehand), parsed, enriched, serialized.
fn enrich_rate(log: &Path, store: &engine::Store) -> Result<f64> {
    let mut spans = engine::stream::SpanIndex::default();
    spans.add(store.spans.iter().cloned());
    let r = kpl::Reader::open(log)?;
    let mut msgs = Vec::new();
    for ev in r.events() {
        let mut v = kpl::json::event_to_json(&ev?, None);
        v["host"] = "bench".into();
        msgs.push(serde_json::to_vec(&v)?);
    }
    let pb = bar(msgs.len() as u64, "enrich");
    let (mut tied, mut bytes) = (0u64, 0usize);
    let t = Instant::now();
    for (i, m) in msgs.iter().enumerate() {
        let (row, t) = engine::stream::enrich_message(m, &spans)?;
        tied += u64::from(t);
        bytes += row.len();
        if i % 65536 == 0 {
            pb.set_position(i as u64);
        }
    }
    let d = t.elapsed();
    pb.finish_and_clear();
    ensure!(bytes > 0 && tied > 0, "no event was tied to a span");
    Ok(msgs.len() as f64 / d.as_secs_f64())
}

/// Stores every graph in the Bolt server, then times `why` queries there (each answer checked against the analysis).
fn bolt_latency(
    a: &BenchEngineArgs,
    graphs: &[CausalGraph],
    queries: &[String],
    by_txn: &std::collections::HashMap<&str, &CausalGraph>,
) -> Result<(Duration, Lat)> {
    let c = engine::bolt::BoltConfig {
        uri: a.neo4j.clone(),
        user: a.neo4j_user.clone(),
        password: std::env::var("KPROBE_NEO4J_PASSWORD").unwrap_or_default(),
        db: a.neo4j_db.clone(),
    };
    let mut s = engine::bolt::Store::connect_blocking(&c).context("the Bolt graph server (or run with --no-bolt)")?;
    let pb = bar(graphs.len() as u64, "store in Bolt");
    let t = Instant::now();
    for chunk in graphs.chunks(100) {
        s.save_blocking(chunk)?;
        pb.inc(chunk.len() as u64);
    }
    let save = t.elapsed();
    pb.finish_and_clear();
    let pb = bar(queries.len() as u64, "why: Bolt");
    let mut v = Vec::new();
    for q in queries {
        let t = Instant::now();
        let g = s.why_blocking(q)?.with_context(|| format!("{q} is not on the graph server"))?;
        v.push(t.elapsed());
        ensure!(&g == by_txn[q.as_str()], "{q}: the graph server answers differently from the analysis");
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok((save, Lat::of(v)))
}

/// (incident, expected root cause, right, runs, misses) per incident type.
type Accuracy = Vec<(&'static str, &'static str, usize, usize, Vec<String>)>;

fn accuracy(a: &BenchEngineArgs) -> Result<Accuracy> {
    ensure!(a.incidents.exists(), "{}: no incident script (give --incidents PATH)", a.incidents.display());
    let me = std::env::current_exe().context("locating the kprobe binary")?;
    let cfg = EngineConfig::default();
    let kinds: [(&str, &str); 4] = [
        ("sched", "sched_delay, culprit incident_hog (its pid)"),
        ("tcp", "tcp_retransmit on :7000, culprit the gateway (its pid)"),
        ("mem", "page_faults, culprit incident_batch (its pid)"),
        ("healthy", "no cause above threshold"),
    ];
    let mut out = Vec::new();
    let pb = bar((kinds.len() * a.runs) as u64, "incident runs");
    for (kind, expect) in kinds {
        let (mut ok, mut bad) = (0, Vec::new());
        for run in 0..a.runs {
            let d = a.dir.join(format!("{kind}-{run}"));
            let _ = std::fs::remove_dir_all(&d);
            pb.set_message(format!("{kind} {run}"));
            let res = Command::new("bash").arg(&a.incidents).arg(kind).arg(&d).env("KPROBE_BIN", &me).output()?;
            if !res.status.success() {
                bail!("{} {kind} {}: {}", a.incidents.display(), d.display(), String::from_utf8_lossy(&res.stderr));
            }
            let env = std::fs::read_to_string(d.join("incident.env")).with_context(|| format!("{}/incident.env", d.display()))?;
            let env: std::collections::HashMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
            let txn = env.get("TXN").context("incident.env: no TXN")?;
            let store = engine::load(&[d.join("kernel.kpl")], &[d.join("spans.json")], &cfg)?;
            let g = engine::analyze::explain_txn(&store, &cfg, txn)?;
            let rc = g.root_cause();
            let pid = |k: &str| env.get(k).and_then(|p| p.parse::<u32>().ok());
            let culprit = rc.and_then(|n| n.culprit.as_ref());
            let good = match kind {
                "sched" => {
                    rc.is_some_and(|n| n.kind.name() == "sched_delay")
                        && culprit.is_some_and(|c| Some(c.pid) == pid("CULPRIT_PID") && c.comm == "incident_hog")
                }
                "tcp" => {
                    rc.is_some_and(|n| n.kind.name() == "tcp_retransmit" && n.label.contains(":7000"))
                        && culprit.is_some_and(|c| Some(c.pid) == pid("GATEWAY_PID"))
                }
                "mem" => {
                    rc.is_some_and(|n| n.kind.name() == "page_faults")
                        && culprit.is_some_and(|c| Some(c.pid) == pid("CULPRIT_PID") && c.comm == "incident_batch")
                }
                _ => rc.is_none(),
            };
            if good {
                ok += 1;
                let _ = std::fs::remove_dir_all(&d);
            } else {
                // Did the injected fault land? (The payment hit misses its deadline when it does.)
                let report = std::fs::read_to_string(d.join("gateway.out")).unwrap_or_default();
                let late = report.lines().any(|l| l.starts_with(&format!("{txn} MISSED")));
                let landed = match (kind, late) {
                    ("healthy", _) => String::new(),
                    (_, true) => format!("; {txn} missed its deadline"),
                    (_, false) => format!("; the fault did not land: {txn} made its deadline"),
                };
                bad.push(format!("run {run} ({}): {}{landed}", d.display(), rc.map(|n| n.label.as_str()).unwrap_or("no cause")));
            }
            pb.inc(1);
        }
        out.push((kind, expect, ok, a.runs, bad));
    }
    pb.finish_and_clear();
    Ok(out)
}
