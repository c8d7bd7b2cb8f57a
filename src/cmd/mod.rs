//! Subcommands.

pub mod bench;
pub mod bench_engine;
pub mod bench_gdb;
pub mod bench_tracer;
pub mod engine;
pub mod log;
pub mod record;
pub mod recorder;
pub mod replay;
pub mod why;
