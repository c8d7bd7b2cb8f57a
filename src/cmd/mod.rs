//! Subcommands.

pub mod bench;
pub mod log;
