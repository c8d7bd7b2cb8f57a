//! `kprobe record`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `kprobe record [-o FILE] [--backend ptrace|ebpf] -- CMD [ARGS...]`
#[derive(Args)]
pub struct RecordArgs {
    /// Where to write the log (default: `<command>-<n>.kpl` in the current directory).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// `ptrace`: the tracer (full fidelity: rdtsc, cpuid, vDSO time and
    /// preemption points are recorded); `ebpf`: the eBPF recorder's
    /// replay-grade capture, no ptrace at record time (root; what it cannot
    /// see is virtualized at replay).
    #[arg(long, default_value = "ptrace", value_parser = ["ptrace", "ebpf"])]
    backend: String,
    /// Longest time (ms) a thread runs user code while others wait.
    #[arg(long, default_value_t = 20)]
    time_slice_ms: u64,
    /// When cpuid is trapped and recorded: `startup` (from each exec until
    /// the C library set up thread-local storage), `always` (slow in VMs:
    /// every context switch rewrites an MSR), or `off`.
    #[arg(long, default_value = "startup", value_parser = ["off", "startup", "always"])]
    cpuid_faulting: String,
    /// Do not pin the recording to one CPU (pinning makes ptrace stops
    /// local context switches; the program then sees one CPU).
    #[arg(long)]
    no_pin: bool,
    /// Pin to this CPU instead of the current one.
    #[arg(long)]
    cpu: Option<usize>,
    /// Leave every syscall to the kernel (two ptrace stops per call). By
    /// default the recorder performs reads, writes and seeks of local regular
    /// files and clock reads itself at the entry stop: one stop per call.
    #[arg(long)]
    no_emulate: bool,
    /// `--backend ebpf`: copy every byte the program reads through the ring
    /// buffer. By default a read of a regular file nobody is changing goes
    /// by reference, and the recorder reads its bytes from the file.
    #[arg(long)]
    no_file_refs: bool,
    /// `--backend ebpf`: the reader's pacing, µs (as `kprobe recorder
    /// --drain-pace-us`; 0: read the ring again at once after a drain).
    #[arg(long, default_value_t = recorder::Config::default().drain_pace_us)]
    drain_pace_us: u64,
    /// The command to record.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn default_output(cmd: &str) -> PathBuf {
    let base = std::path::Path::new(cmd).file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "record".into());
    (0..).map(|i| PathBuf::from(format!("{base}-{i}.kpl"))).find(|p| !p.exists()).unwrap()
}

/// Runs `kprobe record`: exits with the program's exit code.
pub fn record(a: RecordArgs) -> Result<ExitCode> {
    let output = a.output.unwrap_or_else(|| default_output(&a.command[0]));
    if a.backend == "ebpf" {
        return record_ebpf(&a.command, &output, !a.no_file_refs, a.drain_pace_us);
    }
    let out = tracer::record(&tracer::RecordOptions {
        output: output.clone(),
        argv: a.command,
        time_slice: Duration::from_millis(a.time_slice_ms.max(1)),
        cpuid: tracer::inject::CpuidMode::from_name(Some(&a.cpuid_faulting)),
        pin: (!a.no_pin).then_some(a.cpu),
        emulate: !a.no_emulate,
    })?;
    eprintln!("kprobe: recorded {} events ({} bytes) to {}", out.events, out.bytes, output.display());
    Ok(ExitCode::from((out.exit_code & 0xff) as u8))
}

/// `kprobe record --backend ebpf`: the command runs under the eBPF
/// recorder's replay-grade capture from its exec on.
fn record_ebpf(argv: &[String], output: &std::path::Path, file_refs: bool, drain_pace_us: u64) -> Result<ExitCode> {
    use anyhow::Context;
    // One program, every byte it reads: a 64 MiB ring absorbs its bursts
    // (the daemon's default of 4 MiB is sized for kernel events).
    let cfg = recorder::Config {
        hooks: recorder::Hooks::parse("syscall")?,
        replay_grade: true,
        ring_buffer_kb: 64 * 1024,
        file_refs,
        drain_pace_us,
        ..recorder::Config::default()
    };
    let mut sink = recorder::sink::KplSink::create_with(output, argv.to_vec(), recorder::sink::Backlog::PROGRAM)?;
    let (status, summary) =
        recorder::record_command(argv, cfg, &mut sink).context("recording with the eBPF recorder (it needs root, BTF and tracepoints)")?;
    let bytes = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    eprintln!("kprobe: recorded {} events ({bytes} bytes) to {} (eBPF, {} dropped)", summary.events, output.display(), summary.dropped());
    if summary.file_refs + summary.file_ref_misses > 0 {
        eprintln!(
            "kprobe: {} file reads by reference ({} bytes read from the files), {} not filled",
            summary.file_refs, summary.file_ref_bytes, summary.file_ref_misses
        );
    }
    for w in summary.replay_warnings() {
        eprintln!("kprobe: warning: {w}");
    }
    Ok(match status.code() {
        Some(c) => ExitCode::from(c as u8),
        None => ExitCode::from(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0) as u8),
    })
}
