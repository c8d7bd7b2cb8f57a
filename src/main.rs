//! `kprobe`: flight recorder and deterministic replay debugger.
//!
//! The binary only parses the command line and hands over to the crates;
//! each subcommand lives in its own module under `cmd/`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cmd;

#[derive(Parser)]
#[command(name = "kprobe", version, about = "Flight recorder and deterministic replay debugger for distributed financial systems")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect and check `.kpl` logs.
    #[command(subcommand)]
    Log(cmd::log::LogCmd),
    /// Record a command under ptrace into a `.kpl` log.
    Record(cmd::record::RecordArgs),
    /// Replay a recording deterministically.
    Replay(cmd::replay::ReplayArgs),
    /// Benchmarks whose figures go into BENCHMARKS.md.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCmd),
    /// The eBPF recorder: scheduler, syscall, TCP and page-fault events to a `.kpl` file, Kafka or JSON lines.
    Recorder(cmd::recorder::RecorderArgs),
    /// Why was a transaction slow or failed: the causal chain down to the kernel event.
    Why(cmd::why::WhyArgs),
    /// The causal engine as a service: Kafka kernel.* -> kernel.enriched, OTLP/HTTP span receiver.
    Engine(cmd::engine::EngineArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KPROBE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Log(c) => cmd::log::run(c),
        Command::Record(a) => cmd::record::record(a),
        Command::Replay(a) => cmd::replay::replay(a),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Recorder(a) => cmd::recorder::run(a),
        Command::Why(a) => cmd::why::run(a),
        Command::Engine(a) => cmd::engine::run(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kprobe: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
