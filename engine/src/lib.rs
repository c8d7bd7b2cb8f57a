//! The causal engine: explains why a transaction failed or was slow, down
//! to the kernel event that caused it, and hands replay the point to stop.
//!
//! * Inputs ([`store`], [`otlp`], [`json`]): kernel events from `.kpl` logs
//!   or the Kafka `kernel.*` topics; OpenTelemetry spans from OTLP/JSON
//!   files or the OTLP/HTTP [`receiver`].
//! * Correlation and the causal model ([`analyze`], [`graph`]): transaction →
//!   spans → syscalls that blocked inside them → what delayed them, each
//!   edge with its latency contribution, causes ranked.
//! * Output ([`render`]): text tree, JSON, DOT, SVG.
//! * Stores: the embedded cause index in a `.kpl` ([`index`], no server), and
//!   a Neo4j/Bolt graph ([`bolt`]).
//! * Streaming ([`stream`]): `kernel.*` → `kernel.enriched` with OTel context.
//!
//! ```no_run
//! let cfg = engine::EngineConfig::default();
//! let store = engine::load(&["ledger.kpl".into()], &["spans.json".into()], &cfg)?;
//! let g = engine::analyze::explain_txn(&store, &cfg, "txn-0007")?;
//! print!("{}", engine::render::text(&g));
//! # Ok::<(), anyhow::Error>(())
//! ```

#![warn(missing_docs)]

pub mod analyze;
pub mod bolt;
pub mod config;
pub mod graph;
pub mod index;
pub mod json;
pub mod otlp;
pub mod receiver;
pub mod render;
pub mod store;
pub mod stream;
pub mod symbols;

pub use config::EngineConfig;
pub use graph::CausalGraph;
pub use index::cause_for_replay;
pub use store::Store;

use std::path::PathBuf;

/// Reads span files (OTLP/JSON) and kernel logs (`.kpl`) into an indexed store.
pub fn load(logs: &[PathBuf], span_files: &[PathBuf], cfg: &EngineConfig) -> anyhow::Result<Store> {
    let mut s = Store::new();
    for f in span_files {
        s.add_spans(otlp::read_file(f, &cfg.txn_attribute)?);
    }
    for l in logs {
        s.add_kpl(l)?;
    }
    s.finish();
    Ok(s)
}
