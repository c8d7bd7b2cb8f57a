//! `kprobe log info|dump|verify`.

use anyhow::Result;
use clap::Subcommand;
use kpl::{Kind, Reader};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// `kprobe log ...`
#[derive(Subcommand)]
pub enum LogCmd {
    /// Metadata, counts per event kind, time span, size, bytes/event.
    Info {
        /// The log.
        file: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print events, one per line.
    Dump {
        /// The log.
        file: PathBuf,
        /// First sequence number.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// At most this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Only this thread.
        #[arg(long)]
        tid: Option<u32>,
        /// Only these kinds (comma-separated names, e.g. `syscall,exec`).
        #[arg(long, value_delimiter = ',')]
        kind: Vec<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Check every block; exit 1 and name each bad block if the log is damaged.
    Verify {
        /// The log.
        file: PathBuf,
    },
}

/// Runs a `log` subcommand.
pub fn run(cmd: LogCmd) -> Result<ExitCode> {
    match cmd {
        LogCmd::Info { file, json } => info(file, json),
        LogCmd::Dump { file, from, count, tid, kind, json } => dump(file, from, count, tid, kind, json),
        LogCmd::Verify { file } => verify(file),
    }
}

fn fmt_time(ns: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
    humantime::format_rfc3339_nanos(t).to_string()
}

fn info(file: PathBuf, json: bool) -> Result<ExitCode> {
    let r = Reader::open(&file)?;
    let ix = r.index();
    let m = r.meta();
    let first = ix.blocks.iter().map(|b| b.min_ts).min().unwrap_or(0);
    let last = ix.blocks.iter().map(|b| b.max_ts).max().unwrap_or(0);
    let events = r.event_count();
    let bpe = if events > 0 { r.file_len() as f64 / events as f64 } else { 0.0 };
    let kinds: Vec<(String, u64)> = ix
        .counts
        .iter()
        .map(|(k, n)| (Kind::from_id(*k).map(|k| k.name().to_owned()).unwrap_or_else(|| format!("unknown#{k}")), *n))
        .collect();
    let file_bytes: u64 = ix.files.iter().map(|f| f.size).sum();
    if json {
        let v = serde_json::json!({
            "file": file, "bytes": r.file_len(), "format": format!("{}.{}", r.version().0, r.version().1),
            "backend": m.backend, "host": m.host, "kernel": m.kernel, "command": m.command,
            "start_time_ns": m.start_time_ns, "first_ts_ns": first, "last_ts_ns": last,
            "cpu": m.extra.iter().find(|(k, _)| k == "cpu").map(|(_, v)| v.as_str()),
            "header": m.extra.iter().cloned().collect::<std::collections::BTreeMap<_,_>>(),
            "events": events, "bytes_per_event": bpe,
            "kinds": kinds.iter().map(|(k, n)| (k.clone(), serde_json::Value::from(*n))).collect::<serde_json::Map<String, serde_json::Value>>(),
            "event_blocks": ix.blocks.len(), "payload_bytes": ix.payload_bytes(),
            "files": ix.files.len(), "file_bytes": file_bytes, "skipped_unknown": r.skipped_unknown(),
            "exit_code": ix.summary.exit_code, "summary": ix.summary.extra.iter().cloned().collect::<std::collections::BTreeMap<_,_>>(),
            "index": match r.recovery() { None => "footer".to_owned(), Some(rc) => format!("rebuilt: {}", rc.reason) },
            "problems": r.recovery().map(|rc| rc.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("file:        {} ({} bytes)", file.display(), r.file_len());
    println!("format:      kpl {}.{}", r.version().0, r.version().1);
    println!("backend:     {} (kprobe {})", m.backend, m.tool_version);
    println!("host:        {} (Linux {})", m.host, m.kernel);
    if let Some((_, cpu)) = m.extra.iter().find(|(k, _)| k == "cpu") {
        println!("cpu:         {cpu}");
    }
    println!("command:     {}", m.command.join(" "));
    println!("started:     {}", fmt_time(m.start_time_ns));
    if events > 0 {
        println!("time span:   {} .. {} ({:.6} s)", fmt_time(first), fmt_time(last), last.saturating_sub(first) as f64 / 1e9);
    }
    println!("events:      {events} in {} blocks, {bpe:.2} bytes/event", ix.blocks.len());
    for (k, n) in &kinds {
        println!("  {k:<16} {n:>12}");
    }
    println!("payload:     {} bytes in {} blocks", ix.payload_bytes(), ix.payload.len());
    println!("file store:  {} files, {} bytes", ix.files.len(), file_bytes);
    if let Some(c) = ix.summary.exit_code {
        println!("exit code:   {c}");
    }
    for (k, v) in &ix.summary.extra {
        println!("{:<12} {v}", format!("{k}:"));
    }
    if r.skipped_unknown() > 0 {
        println!("skipped:     {} events of kinds newer than this kprobe", r.skipped_unknown());
    }
    match r.recovery() {
        None => println!("index:       footer"),
        Some(rc) => {
            println!("index:       rebuilt by scanning ({})", rc.reason);
            for p in &rc.problems {
                println!("  damage:    {p}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn dump(file: PathBuf, from: u64, count: Option<u64>, tid: Option<u32>, kinds: Vec<String>, json: bool) -> Result<ExitCode> {
    let r = Reader::open(&file)?;
    let mut want = Vec::new();
    for k in &kinds {
        want.push(Kind::from_name(k).ok_or_else(|| {
            anyhow::anyhow!("unknown event kind `{k}` (known: {})", Kind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "))
        })?);
    }
    if let Some(rc) = r.recovery() {
        eprintln!("kprobe: {}: index rebuilt by scanning ({}); {} damaged region(s)", file.display(), rc.reason, rc.problems.len());
    }
    let base = r.meta().start_time_ns.min(r.index().blocks.first().map(|b| b.min_ts).unwrap_or(u64::MAX));
    let it = match tid {
        Some(t) => r.tid_events(t, from),
        None => r.events_from(from),
    };
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let mut n = 0u64;
    let mut errors = 0;
    let fetch = |d: &kpl::Data| r.payload(d).ok().map(|c| c.into_owned());
    for ev in it {
        if count.is_some_and(|c| n >= c) {
            break;
        }
        let ev = match ev {
            Ok(e) => e,
            Err(e) => {
                errors += 1;
                eprintln!("kprobe: {e}");
                continue;
            }
        };
        if !want.is_empty() && !want.contains(&ev.kind()) {
            continue;
        }
        n += 1;
        let line = if json { kpl::json::event_to_json(&ev, Some(&fetch)).to_string() } else { kpl::text::line(&ev, base) };
        if let Err(e) = writeln!(out, "{line}") {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.into());
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    if r.skipped_unknown() > 0 {
        eprintln!("kprobe: skipped {} events of kinds newer than this kprobe", r.skipped_unknown());
    }
    Ok(if errors > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn verify(file: PathBuf) -> Result<ExitCode> {
    let r = Reader::open(&file)?;
    let rep = r.verify();
    let ranges = rep
        .recovered_ranges
        .iter()
        .map(|(a, b)| if b > a { format!("{a}..{}", b - 1) } else { format!("{a}") })
        .collect::<Vec<_>>()
        .join(", ");
    if rep.is_sound() {
        println!(
            "{}: OK: {} events ({}), {} payload bytes, {} files; footer index matches",
            file.display(),
            rep.events_ok,
            ranges,
            rep.payload_ok,
            rep.files_ok
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}: DAMAGED: {} problem(s)", file.display(), rep.problems.len());
    for p in &rep.problems {
        println!("  bad block at byte offset {} ({} bytes): {}", p.offset, p.len, p.what);
        println!("      lost: {}", p.lost);
    }
    println!(
        "  recovered: {} events (seq {}), {} payload bytes, {} files",
        rep.events_ok,
        if ranges.is_empty() { "none".into() } else { ranges },
        rep.payload_ok,
        rep.files_ok
    );
    Ok(ExitCode::from(1))
}
