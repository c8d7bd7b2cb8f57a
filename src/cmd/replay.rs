//! `kprobe replay`: plain, to an event, to a cause, or under a debugger.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `kprobe replay FILE [--until-event N] [--quiet] [--gdb [ADDR] | --debugger gdb|lldb] [--break-at-cause TXN]`
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
    /// Serve the GDB remote protocol on HOST:PORT (default 127.0.0.1 and a
    /// free port) and wait for a debugger (`target remote ADDR` in gdb,
    /// `gdb-remote ADDR` in lldb).
    #[arg(long, value_name = "HOST:PORT", num_args = 0..=1, default_missing_value = "127.0.0.1:0")]
    gdb: Option<String>,
    /// Start the server and launch this debugger attached to it, with the
    /// program's symbols and libraries loaded (`gdb` or `lldb`).
    #[arg(long, value_parser = ["gdb", "lldb"], conflicts_with = "gdb")]
    debugger: Option<String>,
    /// Arguments passed to the debugger (after `--`), e.g. `-batch -x script`.
    #[arg(last = true)]
    debugger_args: Vec<String>,
}

/// Runs `kprobe replay`: exits with the recorded exit code.
pub fn replay(a: ReplayArgs) -> Result<ExitCode> {
    if let Ok(r) = kpl::Reader::open(&a.file) {
        if let Some(w) = tracer::inject::cpu_mismatch(r.meta()) {
            eprintln!("kprobe: warning: {w}");
        }
        let lost = r.index().counts.iter().find(|(k, _)| *k == kpl::Kind::Lost.id()).map(|(_, n)| *n).unwrap_or(0);
        if r.meta().backend == "ebpf" && lost > 0 {
            eprintln!(
                "kprobe: warning: the eBPF recorder lost records in this log ({lost} `lost` events, `kprobe log dump --kind lost`): \
                 the replay stops where it reaches what is missing"
            );
        }
    }
    if a.gdb.is_some() || a.debugger.is_some() {
        return debug(a);
    }
    if !a.debugger_args.is_empty() {
        bail!("arguments after `--` are for the debugger: add --debugger gdb|lldb");
    }
    let mut until_event = a.until_event;
    if let Some(txn) = &a.break_at_cause {
        until_event = Some(super::why::break_at_cause(&a.file, txn)?);
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

/// What the server thread tells the launcher once the session is ready.
struct Ready {
    addr: String,
    exe: PathBuf,
    sysroot: PathBuf,
}

/// The causal chain of `txn` from the log's cause index, and the event where it struck.
fn cause(log: &Path, txn: &str) -> Result<gdbserver::Cause> {
    let (seq, text) = engine::index::replay_stop(log, txn)?;
    Ok(gdbserver::Cause { text, seq: Some(seq) })
}

fn debug(a: ReplayArgs) -> Result<ExitCode> {
    let cause = a.break_at_cause.as_deref().map(|t| cause(&a.file, t)).transpose()?;
    if let Some(c) = &cause {
        eprint!("{}", c.text);
    }
    let bind = a.gdb.clone().unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = TcpListener::bind(&bind).with_context(|| format!("--gdb {bind}: cannot listen there"))?;
    let addr = listener.local_addr()?.to_string();
    let (tx, rx) = std::sync::mpsc::channel::<Result<Ready, String>>();
    let (log, quiet, until) = (a.file.clone(), a.quiet, a.until_event);
    // ptrace ties the replay to the thread that started it: the session
    // lives on the server thread from start to end.
    let server = std::thread::spawn(move || -> Result<gdbserver::Outcome> {
        let setup = || -> Result<(tracer::debug::Session, Ready)> {
            let mut s = tracer::debug::Session::with_output(log.clone(), !quiet)?;
            if let Some(seq) = cause.as_ref().and_then(|c| c.seq).or(until) {
                s.goto_event(seq)?;
            }
            let tid = s.threads().first().copied().context("the replay has no live thread")?;
            let exe = s.replayer().exe_file(tid).context("the program's executable is not known")?;
            let sysroot = s.replayer().sysroot().to_path_buf();
            Ok((s, Ready { addr: addr.clone(), exe, sysroot }))
        };
        let (s, ready) = match setup() {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.send(Err(format!("{e:#}")));
                return Err(e);
            }
        };
        let _ = tx.send(Ok(ready));
        let (conn, peer) = listener.accept().context("waiting for the debugger")?;
        tracing::info!(%peer, "debugger connected");
        Ok(gdbserver::serve(s, conn, gdbserver::Options { cause })?)
    });
    let ready = match rx.recv() {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => bail!("{}: {e}", a.file.display()),
        Err(_) => {
            return Err(server
                .join()
                .map_err(|_| anyhow::anyhow!("the server thread panicked"))?
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("server ended")))
        }
    };
    let outcome = match a.debugger.as_deref() {
        None => {
            eprintln!("kprobe: replay of {} waiting for a debugger on {}", a.file.display(), ready.addr);
            // gdb's default sysroot (`target:`) reads the recorded files through the server.
            eprintln!("kprobe:   gdb -ex 'target remote {}'", ready.addr);
            eprintln!("kprobe:   lldb -o 'target create {}' -o 'gdb-remote {}'", ready.exe.display(), ready.addr);
            server.join().map_err(|_| anyhow::anyhow!("the server thread panicked"))??
        }
        Some(d) => {
            let status = launch(d, &ready, &a.debugger_args)?;
            let outcome = server.join().map_err(|_| anyhow::anyhow!("the server thread panicked"))?;
            if !status.success() {
                eprintln!("kprobe: {d} exited with {status}");
            }
            outcome?
        }
    };
    eprintln!("kprobe: debugging session ended: {outcome:?}");
    Ok(ExitCode::SUCCESS)
}

/// Launches gdb or lldb attached to the server, as `rr replay` does.
fn launch(which: &str, r: &Ready, extra: &[String]) -> Result<std::process::ExitStatus> {
    let mut cmd = match which {
        "gdb" => {
            let mut c = std::process::Command::new("gdb");
            c.arg("-q")
                .args(["-l", "600"])
                .arg("-ex")
                .arg(format!("set sysroot {}", r.sysroot.display()))
                .arg("-ex")
                .arg(format!("file {}", r.exe.display()))
                .arg("-ex")
                .arg(format!("target remote {}", r.addr));
            c.args(extra);
            c
        }
        _ => {
            let lldb = ["lldb-19", "lldb"].into_iter().find(|p| which_path(p)).unwrap_or("lldb");
            let mut c = std::process::Command::new(lldb);
            c.arg("-o")
                .arg(format!("target create {}", r.exe.display()))
                .arg("-o")
                .arg("settings set plugin.process.gdb-remote.packet-timeout 600")
                .arg("-o")
                .arg(format!("gdb-remote {}", r.addr));
            c.args(extra);
            c
        }
    };
    cmd.status().with_context(|| format!("starting {which} (is it installed? scripts/setup.sh installs gdb and lldb-19)"))
}

fn which_path(p: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
}
