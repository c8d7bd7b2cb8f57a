//! Subcommands.

pub mod bench;
pub mod log;
pub mod record;
pub mod recorder;
