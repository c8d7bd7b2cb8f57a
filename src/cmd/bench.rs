//! `kprobe bench ...`: measurements side by side with their baselines.

use anyhow::Result;
use clap::Subcommand;
use kpl::synth::Synth;
use kpl::{Metadata, Reader, Writer};
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `kprobe bench ...`
#[derive(Subcommand)]
pub enum BenchCmd {
    /// eBPF recorder: added ns per syscall next to no probes, events/s, RSS, bpftrace cross-check.
    Recorder(crate::cmd::recorder::BenchArgs),
    /// ptrace recording: slowdown next to native and strace -f, replay speed, bytes/syscall.
    Record(crate::cmd::bench_tracer::BenchRecordArgs),
    /// The gdb server on a replay next to gdbserver on the live program: stepi, breakpoint hits, reverse-continue.
    Gdb(crate::cmd::bench_gdb::BenchGdbArgs),
    /// The causal engine: correlation events/s, `why` latency (cause index, Bolt server, re-analysis), accuracy per incident.
    Engine(crate::cmd::bench_engine::BenchEngineArgs),
    /// Write/read throughput, bytes/event next to JSON+zstd, seek latency.
    Log {
        /// Events in the synthetic log.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Where to write the log.
        #[arg(short, long)]
        output: PathBuf,
        /// Events (the first ones of the same stream) for the JSON+zstd baseline.
        #[arg(long, default_value_t = 1_000_000)]
        baseline_events: u64,
        /// Random seeks to time.
        #[arg(long, default_value_t = 2000)]
        seeks: usize,
        /// Seed of the synthetic stream.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// Runs a bench subcommand.
pub fn run(cmd: BenchCmd) -> Result<ExitCode> {
    match cmd {
        BenchCmd::Recorder(a) => crate::cmd::recorder::bench(a),
        BenchCmd::Record(a) => crate::cmd::bench_tracer::run(a),
        BenchCmd::Gdb(a) => crate::cmd::bench_gdb::run(a),
        BenchCmd::Engine(a) => crate::cmd::bench_engine::run(a),
        BenchCmd::Log { events, output, baseline_events, seeks, seed } => {
            bench_log(events, output, baseline_events.min(events), seeks, seed)
        }
    }
}

fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr_with_hz(4));
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})").unwrap().progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn bench_log(n: u64, output: PathBuf, base_n: u64, seeks: usize, seed: u64) -> Result<ExitCode> {
    let meta = Metadata::for_this_host("synthetic", vec!["kprobe".into(), "bench".into(), "log".into()]);
    // Write: generation is excluded from the timing (events are made in batches first).
    let mut w = Writer::create(&output, &meta)?;
    let mut gen = Synth::new(seed);
    // Wall time, and the CPU time of this (the writing) thread: on a shared
    // machine wall time also counts other programs' turns on the core.
    let cpu_ns = || tracer::os::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
    let (mut write_time, mut write_cpu) = (Duration::ZERO, 0u64);
    let mut batch_rates = Vec::new();
    let pb = progress(n, "write");
    let mut left = n;
    while left > 0 {
        let batch: Vec<_> = (&mut gen).take(left.min(65_536) as usize).collect();
        left -= batch.len() as u64;
        let k = batch.len() as u64;
        let (t, c) = (Instant::now(), cpu_ns());
        // By reference: the events stay the generator's, freed with their batch after the timing.
        for ev in &batch {
            w.append_ref(ev)?;
        }
        write_time += t.elapsed();
        let c = cpu_ns() - c;
        drop(batch);
        write_cpu += c;
        batch_rates.push(k as f64 / (c.max(1) as f64 / 1e9));
        pb.inc(k);
    }
    let (t, c) = (Instant::now(), cpu_ns());
    let (_, stats) = w.finish()?;
    write_time += t.elapsed();
    write_cpu += cpu_ns() - c;
    pb.finish_and_clear();
    let write_eps = n as f64 / write_time.as_secs_f64();
    let write_cpu_eps = n as f64 / (write_cpu.max(1) as f64 / 1e9);
    batch_rates.sort_by(f64::total_cmp);
    let batch_median = batch_rates[batch_rates.len() / 2];
    let bpe = stats.bytes as f64 / n as f64;

    // Read everything back (events only; payload stays compressed unless asked for).
    let t = Instant::now();
    let r = Reader::open(&output)?;
    let mut seen = 0u64;
    for ev in r.events() {
        ev?;
        seen += 1;
    }
    let read_time = t.elapsed();
    anyhow::ensure!(seen == n, "read back {seen} events, wrote {n}");
    let read_eps = n as f64 / read_time.as_secs_f64();

    // Seeks: a fresh reader; random sequence numbers, times and threads.
    let t = Instant::now();
    let r = Reader::open(&output)?;
    let open_time = t.elapsed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let (t0, t1) = (r.index().blocks.first().map(|b| b.min_ts).unwrap_or(0), r.index().blocks.last().map(|b| b.max_ts).unwrap_or(0));
    let tids: Vec<u32> = r.index().tids.iter().map(|t| t.0).collect();
    let (mut by_seq, mut by_ts, mut by_tid) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..seeks {
        let s = rng.gen_range(0..n);
        let t = Instant::now();
        let ev = r.get(s)?;
        by_seq.push(t.elapsed());
        anyhow::ensure!(ev.seq == s);
        let ts = rng.gen_range(t0..=t1);
        let t = Instant::now();
        r.seek_ts(ts)?;
        by_ts.push(t.elapsed());
        let tid = tids[rng.gen_range(0..tids.len())];
        let s = rng.gen_range(0..n);
        let t = Instant::now();
        if let Some(e) = r.tid_events(tid, s).next() {
            e?;
        }
        by_tid.push(t.elapsed());
    }

    // Baseline: the same first `base_n` events as JSON lines, zstd -3 and -19,
    // next to a .kpl of exactly those events.
    let pb = progress(base_n, "json baseline");
    let mut z3 = zstd::stream::Encoder::new(Vec::new(), 3)?;
    let mut z19 = zstd::stream::Encoder::new(Vec::new(), 19)?;
    let mut json_raw = 0u64;
    let mut kw = Writer::new(Vec::new(), "memory", &meta, Default::default())?;
    let mut g = Synth::new(seed);
    for i in 0..base_n {
        let mut ev = g.next_event();
        ev.seq = i;
        let line = kpl::json::event_to_json(&ev, None).to_string() + "\n";
        json_raw += line.len() as u64;
        z3.write_all(line.as_bytes())?;
        z19.write_all(line.as_bytes())?;
        kw.append(ev)?;
        if i % 4096 == 0 {
            pb.set_position(i);
        }
    }
    pb.finish_and_clear();
    let z3 = z3.finish()?.len() as f64 / base_n as f64;
    let z19 = z19.finish()?.len() as f64 / base_n as f64;
    let (kbuf, _) = kw.finish()?;
    let kpl_sample = kbuf.len() as f64 / base_n as f64;

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("## kprobe bench log: {n} events (seed {seed}), JSON baseline on the first {base_n}");
    println!();
    println!("| measure | .kpl | baseline | ratio | goal |");
    println!("|---|---|---|---|---|");
    println!("| bytes/event (first {base_n} events) | {kpl_sample:.2} | JSON+zstd-3 {z3:.2} | {:.3} | ≤ 0.333 |", kpl_sample / z3);
    println!("| bytes/event (first {base_n} events) | {kpl_sample:.2} | JSON+zstd-19 {z19:.2} | {:.3} | — |", kpl_sample / z19);
    println!(
        "| bytes/event (all {n} events) | {bpe:.2} | raw JSON lines {:.1} | {:.3} | — |",
        json_raw as f64 / base_n as f64,
        bpe / (json_raw as f64 / base_n as f64)
    );
    println!("| write, events/s (wall clock) | {:.2} M | — | — | — |", write_eps / 1e6);
    println!("| write, events per CPU-second of the writing thread | {:.2} M | — | — | ≥ 2 M (one core) |", write_cpu_eps / 1e6);
    println!(
        "| write, same, median of {} batches of 65,536 events | {:.2} M | — | — | ≥ 2 M (one core) |",
        batch_rates.len(),
        batch_median / 1e6
    );
    println!("| read (decode all), events/s | {:.2} M | — | — | — |", read_eps / 1e6);
    println!("| open (footer index) | {:.0} µs | — | — | — |", us(open_time));
    println!(
        "| seek by seq p50 / p99 / max | {:.0} / {:.0} / {:.0} µs | — | — | ≤ 1000 µs |",
        us(pct(&mut by_seq, 0.5)),
        us(pct(&mut by_seq, 0.99)),
        us(pct(&mut by_seq, 1.0))
    );
    println!(
        "| seek by time p50 / p99 / max | {:.0} / {:.0} / {:.0} µs | — | — | ≤ 1000 µs |",
        us(pct(&mut by_ts, 0.5)),
        us(pct(&mut by_ts, 0.99)),
        us(pct(&mut by_ts, 1.0))
    );
    println!(
        "| seek by tid p50 / p99 / max | {:.0} / {:.0} / {:.0} µs | — | — | ≤ 1000 µs |",
        us(pct(&mut by_tid, 0.5)),
        us(pct(&mut by_tid, 0.99)),
        us(pct(&mut by_tid, 1.0))
    );
    println!();
    println!("file: {} ({} bytes, {} blocks)", output.display(), stats.bytes, r.index().blocks.len());
    Ok(ExitCode::SUCCESS)
}
