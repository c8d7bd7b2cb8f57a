//! `kprobe record` and `kprobe replay`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `kprobe record [-o FILE] -- CMD [ARGS...]`
#[derive(Args)]
pub struct RecordArgs {
    /// Where to write the log (default: `<command>-<n>.kpl` in the current directory).
    #[arg(short, long)]
    output: Option<PathBuf>,
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
    /// The command to record.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// `kprobe replay FILE [--until-event N] [--quiet]`
#[derive(Args)]
pub struct ReplayArgs {
    /// The log.
    file: PathBuf,
    /// Stop before event N and say where the program is.
    #[arg(long)]
    until_event: Option<u64>,
    /// Do not show the program's output.
    #[arg(long)]
    quiet: bool,
    /// Stop where the root cause of transaction TXN struck (the log needs a
    /// cause index: `kprobe why --save-index`), and print the causal chain.
    #[arg(long, value_name = "TXN", conflicts_with = "until_event")]
    break_at_cause: Option<String>,
    /// Attach this debugger at the stop (`gdb` or `lldb`).
    #[arg(long, value_parser = ["gdb", "lldb"], requires = "break_at_cause")]
    debugger: Option<String>,
}

fn default_output(cmd: &str) -> PathBuf {
    let base = std::path::Path::new(cmd).file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "record".into());
    (0..).map(|i| PathBuf::from(format!("{base}-{i}.kpl"))).find(|p| !p.exists()).unwrap()
}

/// Runs `kprobe record`: exits with the program's exit code.
pub fn record(a: RecordArgs) -> Result<ExitCode> {
    let output = a.output.unwrap_or_else(|| default_output(&a.command[0]));
    let out = tracer::record(&tracer::RecordOptions {
        output: output.clone(),
        argv: a.command,
        time_slice: Duration::from_millis(a.time_slice_ms.max(1)),
        cpuid: tracer::inject::CpuidMode::from_name(Some(&a.cpuid_faulting)),
        pin: (!a.no_pin).then_some(a.cpu),
    })?;
    eprintln!("kprobe: recorded {} events ({} bytes) to {}", out.events, out.bytes, output.display());
    Ok(ExitCode::from((out.exit_code & 0xff) as u8))
}

/// Runs `kprobe replay`: exits with the recorded exit code.
pub fn replay(a: ReplayArgs) -> Result<ExitCode> {
    let mut until_event = a.until_event;
    if let Some(txn) = &a.break_at_cause {
        until_event = Some(super::why::break_at_cause(&a.file, txn, a.debugger.as_deref())?);
    }
    let out = tracer::replay::replay(tracer::replay::ReplayOptions { log: a.file, quiet: a.quiet, until_event })?;
    if let Some(s) = &out.stopped {
        eprintln!("kprobe: stopped before event {} (task {}): {}", s.seq, s.tid, s.event);
        eprintln!(
            "kprobe: task {} is at ip {:#x}{}",
            s.tid,
            s.ip,
            if s.symbol.is_empty() { String::new() } else { format!(" ({})", s.symbol) }
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("kprobe: replayed {} events ({} syscalls matched the log); recorded exit code {}", out.events, out.syscalls, out.exit_code);
    Ok(ExitCode::from((out.exit_code & 0xff) as u8))
}
