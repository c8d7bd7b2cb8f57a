//! `kprobe replay`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

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
