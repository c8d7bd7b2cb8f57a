//! `kprobe bench gdb`: the gdb remote-protocol server on a replay, next to
//! gdbserver debugging the same program live, driven by the same gdb
//! script in the same run: 1,000 `stepi` round trips, continuing to a
//! breakpoint hit 10,000 times, and reverse-continue back over 100,000
//! syscalls (gdbserver cannot go backwards: that row is absolute). Timed
//! inside gdb (Python `time.perf_counter`), so start-up is not counted.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};

/// Arguments of `kprobe bench gdb`.
#[derive(Args)]
pub struct BenchGdbArgs {
    /// Single steps to time.
    #[arg(long, default_value_t = 1000)]
    stepi: u32,
    /// Breakpoint hits to time.
    #[arg(long, default_value_t = 10_000)]
    hits: u32,
    /// Syscalls reverse-continue goes back over.
    #[arg(long, default_value_t = 100_000)]
    syscalls: u32,
    /// Runs of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Working directory (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Starts a server and returns it with the address it listens on, read
/// from its stderr line containing `marker`.
fn start(mut c: Command, marker: &str, addr_of: impl Fn(&str) -> Option<String>) -> Result<(Child, String)> {
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = c.spawn().with_context(|| format!("starting {c:?}"))?;
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line)? == 0 {
            let _ = child.kill();
            bail!("{c:?} ended before listening");
        }
        if line.contains(marker) {
            if let Some(a) = addr_of(line.trim()) {
                // Keep draining stderr so the server never blocks on it.
                std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
                return Ok((child, a));
            }
        }
    }
}

/// Runs gdb with `script` against `addr`; returns the `KPROBE-BENCH` figures.
fn gdb(dir: &Path, addr: &str, exe: &Path, script: &str) -> Result<Vec<f64>> {
    let file = dir.join("bench.gdb");
    std::fs::write(
        &file,
        format!("set pagination off\nset confirm off\npython import time\nfile {}\ntarget remote {addr}\n{script}", exe.display()),
    )?;
    let out = Command::new("gdb").args(["-q", "-batch", "-nx", "-x"]).arg(&file).stdin(Stdio::null()).output().context("running gdb")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("KPROBE-BENCH "))
        .with_context(|| format!("gdb did not finish the benchmark script:\n{text}\n{}", String::from_utf8_lossy(&out.stderr)))?;
    Ok(line.split_whitespace().filter_map(|v| v.parse().ok()).collect())
}

fn gdbserver(exe: &Path, args: &[String]) -> Result<(Child, String)> {
    let mut c = Command::new("gdbserver");
    c.arg("--once").arg("127.0.0.1:0").arg(exe).args(args);
    start(c, "Listening on port", |l| l.rsplit(' ').next().map(|p| format!("127.0.0.1:{p}")))
}

fn kprobe_server(log: &Path) -> Result<(Child, String)> {
    let mut c = Command::new(std::env::current_exe()?);
    c.arg("replay").arg(log).arg("--gdb").arg("--quiet");
    start(c, "waiting for a debugger on", |l| l.rsplit(' ').next().map(str::to_owned))
}

fn finish(mut c: Child) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while c.try_wait().ok().flatten().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs `kprobe bench gdb`.
pub fn run(a: BenchGdbArgs) -> Result<ExitCode> {
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let exe = fixtures::c("hotloop");
    let kp = std::env::current_exe()?;
    let record = |name: &str, args: &[String]| -> Result<PathBuf> {
        let log = dir.join(name);
        let st = Command::new(&kp).arg("record").arg("-o").arg(&log).arg("--").arg(&exe).args(args).stdout(Stdio::null()).status()?;
        anyhow::ensure!(st.success(), "recording hotloop {args:?} failed");
        Ok(log)
    };
    let hot_args = vec![a.hits.max(a.stepi).to_string(), "0".to_owned()];
    let sys_args = vec!["10".to_owned(), a.syscalls.to_string()];
    eprintln!("bench gdb: recording hotloop {} and hotloop {}", hot_args.join(" "), sys_args.join(" "));
    let hot_log = record("hotloop-calls.kpl", &hot_args)?;
    let sys_log = record("hotloop-syscalls.kpl", &sys_args)?;
    let forward = format!(
        "break phase\ncontinue\npython t0 = time.perf_counter()\nstepi {}\npython t1 = time.perf_counter()\ndelete\nbreak tick\nignore 2 {}\n\
         continue\npython t2 = time.perf_counter()\npython print('KPROBE-BENCH %f %f' % (t1 - t0, t2 - t1))\nkill\n",
        a.stepi,
        a.hits.saturating_sub(1)
    );
    let reverse = "break phase\ncontinue\ncontinue\ncontinue\npython t0 = time.perf_counter()\nreverse-continue\n\
                   python t1 = time.perf_counter()\nframe\npython print('KPROBE-BENCH %f' % (t1 - t0))\nkill\n";
    let (mut n_step, mut n_hit, mut k_step, mut k_hit, mut k_rev) = (vec![], vec![], vec![], vec![], vec![]);
    for run in 0..a.runs.max(1) {
        eprintln!("bench gdb: run {}/{}", run + 1, a.runs.max(1));
        let (srv, addr) = gdbserver(&exe, &hot_args)?;
        let v = gdb(&dir, &addr, &exe, &forward)?;
        finish(srv);
        n_step.push(v[0]);
        n_hit.push(v[1]);
        let (srv, addr) = kprobe_server(&hot_log)?;
        let v = gdb(&dir, &addr, &exe, &forward)?;
        finish(srv);
        k_step.push(v[0]);
        k_hit.push(v[1]);
        let (srv, addr) = kprobe_server(&sys_log)?;
        let v = gdb(&dir, &addr, &exe, reverse)?;
        finish(srv);
        k_rev.push(v[0]);
    }
    let (ns, nh, ks, kh, kr) = (median(n_step), median(n_hit), median(k_step), median(k_hit), median(k_rev));
    let us = |t: f64, n: u32| t * 1e6 / n as f64;
    println!("| measurement | gdbserver (live) | kprobe replay | ratio |");
    println!("|---|---|---|---|");
    println!("| {} stepi round trips | {:.1} µs/stepi | {:.1} µs/stepi | {:.2} |", a.stepi, us(ns, a.stepi), us(ks, a.stepi), ks / ns);
    println!(
        "| continue to a breakpoint, {} hits | {:.1} µs/hit | {:.1} µs/hit | {:.2} |",
        a.hits,
        us(nh, a.hits),
        us(kh, a.hits),
        kh / nh
    );
    println!("| reverse-continue back over {} syscalls | (cannot) | {:.3} s | goal < 2 s |", a.syscalls, kr);
    Ok(ExitCode::SUCCESS)
}
