//! `kprobe bench record`: record slowdown next to native runs and
//! `strace -f`, replay speed against recorded wall time, log bytes per
//! syscall. All measured side by side in one run; medians of `--runs`.

use anyhow::{Context, Result};
use clap::Args;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Arguments of `kprobe bench record`.
#[derive(Args)]
pub struct BenchRecordArgs {
    /// Size of the file the syscall-heavy workload copies, MiB.
    #[arg(long, default_value_t = 64)]
    copy_mib: usize,
    /// Read size of the copy, bytes.
    #[arg(long, default_value_t = 4096)]
    block: usize,
    /// Iterations of the CPU-bound workload.
    #[arg(long, default_value_t = 300_000_000)]
    cpu_iterations: u64,
    /// Rounds of the sleep/network workload (each sleeps 100 ms and waits 50 ms for a server).
    #[arg(long, default_value_t = 10)]
    sleep_rounds: u32,
    /// Runs of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Working directory (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(mut c: Command) -> Result<Duration> {
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let t = Instant::now();
    let st = c.status().with_context(|| format!("running {c:?}"))?;
    let d = t.elapsed();
    anyhow::ensure!(st.success(), "{c:?} failed: {st}");
    Ok(d)
}

fn kprobe() -> Result<PathBuf> {
    std::env::current_exe().context("locating the kprobe binary")
}

struct Row {
    what: String,
    native: Duration,
    strace: Duration,
    strace_pinned: Duration,
    record: Duration,
    /// `kprobe record --no-emulate`: every call left to the kernel (two stops).
    record_kernel: Duration,
}

fn measure(runs: usize, dir: &Path, name: &str, cmd: &[String]) -> Result<(Row, PathBuf)> {
    let log = dir.join(format!("{name}.kpl"));
    let (mut n, mut s, mut sp, mut r, mut rk) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut c = Command::new(&cmd[0]);
        c.args(&cmd[1..]).current_dir(dir);
        n.push(time(c)?);
        let mut c = Command::new("strace");
        c.args(["-f", "-o", "/dev/null"]).args(cmd).current_dir(dir);
        s.push(time(c)?);
        // strace given the same one-CPU advantage kprobe takes.
        let mut c = Command::new("taskset");
        c.args(["-c", "0", "strace", "-f", "-o", "/dev/null"]).args(cmd).current_dir(dir);
        sp.push(time(c)?);
        let mut c = Command::new(kprobe()?);
        c.arg("record").arg("-o").arg(&log).arg("--").args(cmd).current_dir(dir);
        r.push(time(c)?);
        let mut c = Command::new(kprobe()?);
        c.arg("record").arg("--no-emulate").arg("-o").arg(dir.join(format!("{name}-kernel.kpl"))).arg("--").args(cmd).current_dir(dir);
        rk.push(time(c)?);
    }
    let row = Row {
        what: name.to_owned(),
        native: median(n),
        strace: median(s),
        strace_pinned: median(sp),
        record: median(r),
        record_kernel: median(rk),
    };
    Ok((row, log))
}

/// (bytes without the file store, syscalls).
fn log_figures(log: &Path) -> Result<(u64, u64)> {
    let r = kpl::Reader::open(log)?;
    let store: u64 = r.index().files.iter().flat_map(|f| &f.chunks).map(|c| c.frame_len as u64).sum();
    Ok((r.file_len() - store, r.index().count(kpl::Kind::Syscall)))
}

/// A loopback server that answers each connection after 50 ms.
fn slow_server(conns: u32) -> Result<(u16, std::thread::JoinHandle<()>)> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let h = std::thread::spawn(move || {
        for i in 0..conns {
            let Ok((mut s, _)) = l.accept() else { return };
            std::thread::sleep(Duration::from_millis(50));
            let _ = write!(s, "settled batch {i}");
            let mut b = [0u8; 16];
            let _ = s.read(&mut b);
        }
    });
    Ok((port, h))
}

/// Runs `kprobe bench record`.
pub fn run(a: BenchRecordArgs) -> Result<ExitCode> {
    let tmp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_owned()
        }
    };
    let runs = a.runs.max(1);
    // The file to copy: compressible text, like the ledger exports it stands for.
    let input = dir.join("input.dat");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input)?);
        let mut i = 0u64;
        while (i as usize) * 64 < a.copy_mib << 20 {
            writeln!(f, "{:020},ACME,{:>12}.{:02},EUR,settled,{:016x}", i, i * 7 % 100_000, i % 100, i.wrapping_mul(0x9e3779b97f4a7c15))?;
            i += 1;
        }
    }
    let copy = fixtures::c("copyfile").display().to_string();
    let cpu = fixtures::c("cpubound").display().to_string();
    let sleeper = fixtures::c("sleeper").display().to_string();
    eprintln!("bench record: {runs} runs of each; copy {} MiB in {}-byte reads; {} CPU iterations", a.copy_mib, a.block, a.cpu_iterations);
    let (copy_row, copy_log) = measure(runs, &dir, "copy", &[copy, "input.dat".into(), "output.dat".into(), a.block.to_string()])?;
    let (cpu_row, _) = measure(runs, &dir, "cpu", &[cpu, a.cpu_iterations.to_string()])?;

    // Replay speed on a run that mostly sleeps and waits on the network.
    let (port, h) = slow_server(a.sleep_rounds)?;
    let sleep_log = dir.join("sleep.kpl");
    let mut c = Command::new(kprobe()?);
    c.arg("record")
        .arg("-o")
        .arg(&sleep_log)
        .arg("--")
        .arg(&sleeper)
        .arg(port.to_string())
        .arg(a.sleep_rounds.to_string())
        .current_dir(&dir);
    let recorded = time(c)?;
    h.join().ok();
    let mut replays = Vec::new();
    for _ in 0..runs {
        let mut c = Command::new(kprobe()?);
        c.arg("replay").arg(&sleep_log).arg("--quiet").current_dir(&dir);
        replays.push(time(c)?);
    }
    let replay = median(replays);
    let mut copy_replays = Vec::new();
    for _ in 0..runs {
        let mut c = Command::new(kprobe()?);
        c.arg("replay").arg(&copy_log).arg("--quiet").current_dir(&dir);
        copy_replays.push(time(c)?);
    }
    let copy_replay = median(copy_replays);

    let (copy_bytes, copy_sys) = log_figures(&copy_log)?;
    let (sleep_bytes, sleep_sys) = log_figures(&sleep_log)?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("## kprobe bench record ({runs} runs each, medians)");
    println!();
    println!("| workload | native | strace -f | strace -f pinned to 1 CPU | kprobe record (pinned) | record --no-emulate | record / native | record / strace | record / pinned strace | goal |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in [&copy_row, &cpu_row] {
        println!(
            "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.2}× | {:.2}× | {:.2}× | {} |",
            if r.what == "copy" {
                format!("syscall-heavy: copy {} MiB in {} B reads", a.copy_mib, a.block)
            } else {
                format!("CPU-bound: {} iterations", a.cpu_iterations)
            },
            ms(r.native),
            ms(r.strace),
            ms(r.strace_pinned),
            ms(r.record),
            ms(r.record_kernel),
            r.record.as_secs_f64() / r.native.as_secs_f64(),
            r.record.as_secs_f64() / r.strace.as_secs_f64(),
            r.record.as_secs_f64() / r.strace_pinned.as_secs_f64(),
            if r.what == "copy" { "≤ 1.0× strace, toward 1.5× native" } else { "toward 1.5× native" },
        );
    }
    println!();
    println!("| replay | recorded wall time | replay time | speed-up | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| sleeps and waits on the network ({} rounds of 100 ms sleep + 50 ms server) | {:.0} ms | {:.0} ms | {:.1}× faster | ≥ 10× |",
        a.sleep_rounds,
        ms(recorded),
        ms(replay),
        recorded.as_secs_f64() / replay.as_secs_f64()
    );
    println!(
        "| syscall-heavy copy | {:.0} ms | {:.0} ms | {:.2}× | — |",
        ms(copy_row.record),
        ms(copy_replay),
        copy_row.record.as_secs_f64() / copy_replay.as_secs_f64()
    );
    println!();
    println!("| log (without the file store of executables and libraries) | bytes | syscalls | bytes/syscall |");
    println!("|---|---|---|---|");
    println!("| copy (4 KiB buffers included) | {copy_bytes} | {copy_sys} | {:.1} |", copy_bytes as f64 / copy_sys.max(1) as f64);
    println!("| sleep/network | {sleep_bytes} | {sleep_sys} | {:.1} |", sleep_bytes as f64 / sleep_sys.max(1) as f64);
    Ok(ExitCode::SUCCESS)
}
