//! `kprobe why`: the causal chain of a transaction (or of a process's slowest syscalls).

use anyhow::{bail, Context, Result};
use clap::Args;
use engine::render::Format;
use engine::EngineConfig;
use std::path::PathBuf;
use std::process::ExitCode;

/// `kprobe why (TXN | --pid P --slowest N | --all) (--log FILE | --kafka BROKERS) [--spans FILE] [--format F]`
#[derive(Args)]
pub struct WhyArgs {
    /// Transaction id to explain (as in the spans' transaction attribute).
    txn: Option<String>,
    /// Explain a process's slowest blocking syscalls instead (no spans needed).
    #[arg(long, conflicts_with = "txn")]
    pid: Option<u32>,
    /// With --pid: how many syscalls.
    #[arg(long, default_value_t = 5)]
    slowest: usize,
    /// Explain every transaction (one line each; with --save-index or --neo4j, store them all).
    #[arg(long, conflicts_with_all = ["txn", "pid"])]
    all: bool,
    /// Kernel recordings (.kpl): ptrace and/or eBPF, of the same machine and time. Repeatable.
    #[arg(long = "log", required_unless_present_any = ["kafka", "from_neo4j"])]
    logs: Vec<PathBuf>,
    /// Read kernel events from the recorder's Kafka topics `kernel.*` (from the beginning) on these brokers.
    #[arg(long)]
    kafka: Option<String>,
    /// With --kafka: prefix of the topic names.
    #[arg(long, default_value = "", requires = "kafka")]
    topic_prefix: String,
    /// OpenTelemetry spans (OTLP/JSON files). Repeatable.
    #[arg(long)]
    spans: Vec<PathBuf>,
    /// Output: text, json, dot or svg.
    #[arg(long, default_value = "text")]
    format: Format,
    /// Helm values file with `engine.windowMs` and `engine.causalThresholdNs`.
    #[arg(long)]
    values: Option<PathBuf>,
    /// Override `engine.causalThresholdNs`.
    #[arg(long)]
    threshold_ns: Option<u64>,
    /// Override `engine.windowMs`.
    #[arg(long)]
    window_ms: Option<u64>,
    /// Span attribute holding the transaction id.
    #[arg(long)]
    txn_attr: Option<String>,
    /// Write the base recording plus the cause index of every transaction to this `.kpl`
    /// (then `kprobe why TXN --log FILE` and `kprobe replay FILE --break-at-cause TXN` work offline).
    #[arg(long)]
    save_index: Option<PathBuf>,
    /// Analyse the recordings even when the log has a cause index.
    #[arg(long)]
    recompute: bool,
    /// Store the graphs in a Neo4j-compatible graph server (Bolt URI, e.g. 127.0.0.1:7687).
    #[arg(long)]
    neo4j: Option<String>,
    /// Answer from the graph server instead of the recordings (no --log needed).
    #[arg(long, requires = "neo4j", requires = "txn")]
    from_neo4j: bool,
    /// Graph server user.
    #[arg(long, default_value = "root")]
    neo4j_user: String,
    /// Graph server password (default: the KPROBE_NEO4J_PASSWORD environment variable).
    #[arg(long)]
    neo4j_password: Option<String>,
    /// Graph server database.
    #[arg(long, default_value = "kprobe")]
    neo4j_db: String,
}

/// The engine configuration from a values file and overrides.
pub fn config(
    values: Option<&PathBuf>,
    threshold_ns: Option<u64>,
    window_ms: Option<u64>,
    txn_attr: Option<&String>,
) -> Result<EngineConfig> {
    let mut c = match values {
        Some(v) => EngineConfig::from_values_file(v)?,
        None => EngineConfig::default(),
    };
    if let Some(t) = threshold_ns {
        c.threshold_ns = t;
    }
    if let Some(w) = window_ms {
        anyhow::ensure!(w > 0, "--window-ms must be positive");
        c.window_ns = w * 1_000_000;
    }
    if let Some(a) = txn_attr {
        c.txn_attribute = a.clone();
    }
    Ok(c)
}

/// Runs `kprobe why`.
pub fn run(a: WhyArgs) -> Result<ExitCode> {
    let cfg = config(a.values.as_ref(), a.threshold_ns, a.window_ms, a.txn_attr.as_ref())?;
    let bolt = a.neo4j.as_ref().map(|uri| engine::bolt::BoltConfig {
        uri: uri.clone(),
        user: a.neo4j_user.clone(),
        password: a.neo4j_password.clone().or_else(|| std::env::var("KPROBE_NEO4J_PASSWORD").ok()).unwrap_or_default(),
        db: a.neo4j_db.clone(),
    });
    if a.from_neo4j {
        let txn = a.txn.as_deref().unwrap_or_default();
        let g = engine::bolt::Store::connect_blocking(bolt.as_ref().unwrap())?
            .why_blocking(txn)?
            .with_context(|| format!("the graph server has no transaction {txn:?}"))?;
        print!("{}", engine::render::render(&g, a.format));
        return Ok(ExitCode::SUCCESS);
    }
    // A log with a cause index answers alone (for a transaction, or all of
    // them), unless asked to analyse again or to write a new index.
    let indexed = match (a.logs.as_slice(), a.spans.is_empty(), a.recompute, &a.save_index, &a.kafka, a.pid) {
        ([log], true, false, None, None, None) => {
            let r = kpl::Reader::open(log).with_context(|| format!("opening {}", log.display()))?;
            engine::index::has_index(&r).then_some(r)
        }
        _ => None,
    };
    let graphs: Vec<engine::CausalGraph> = match indexed {
        Some(r) => match &a.txn {
            Some(txn) => vec![engine::index::read_graph(&r, txn)?
                .with_context(|| format!("{}: the cause index has no transaction {txn:?}", r.path().display()))?],
            None if a.all || a.neo4j.is_some() => engine::index::read_all(&r)?,
            None => bail!("give a transaction id, --pid P, or --all"),
        },
        None => analyse(&a, &cfg)?,
    };
    if let Some(b) = &bolt {
        let mut s = engine::bolt::Store::connect_blocking(b)?;
        let n = s.save_blocking(&graphs)?;
        eprintln!("kprobe: stored {} graphs ({n} nodes) in {}", graphs.len(), b.uri);
    }
    if a.all {
        for g in &graphs {
            let root = &g.nodes[0];
            match g.root_cause() {
                Some(c) => println!(
                    "{}  root cause: {} {}{}",
                    root.label,
                    engine::graph::dur(c.contribution_ns),
                    c.kind.name(),
                    c.culprit.as_ref().map(|x| format!(" ({} pid {})", x.comm, x.pid)).unwrap_or_default()
                ),
                None => println!("{}  no cause above threshold", root.label),
            }
        }
    } else {
        for g in &graphs {
            print!("{}", engine::render::render(g, a.format));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The graphs `why` prints or stores, from an analysis of the recordings
/// (and Kafka topics); writes the cause index when asked.
fn analyse(a: &WhyArgs, cfg: &EngineConfig) -> Result<Vec<engine::CausalGraph>> {
    let mut store = engine::load(&a.logs, &a.spans, cfg)?;
    if let Some(brokers) = &a.kafka {
        let mut o = engine::stream::KafkaOptions::new(brokers);
        o.topic_prefix = a.topic_prefix.clone();
        let n = engine::stream::load_topics(&o, &mut store)?;
        if n == 0 {
            bail!("no kernel events in {}kernel.* on {brokers}", o.topic_prefix);
        }
        store.finish();
    }
    let every = || engine::analyze::explain_all(&store, cfg);
    let graphs: Vec<engine::CausalGraph> = if let Some(pid) = a.pid {
        vec![engine::analyze::explain_pid(&store, cfg, pid, a.slowest)?]
    } else if let Some(txn) = &a.txn {
        vec![engine::analyze::explain_txn(&store, cfg, txn)?]
    } else if a.all || a.save_index.is_some() || a.neo4j.is_some() {
        every()?
    } else {
        bail!("give a transaction id, --pid P, or --all");
    };
    if let Some(out) = &a.save_index {
        let all = if a.pid.is_none() && a.txn.is_none() { graphs.clone() } else { every()? };
        let st = engine::index::write_index(&store, &all, out)?;
        eprintln!(
            "kprobe: wrote {} ({} events: {} copied from {}, {} causes of {} transactions)",
            out.display(),
            st.events,
            st.base_events,
            st.base,
            st.causes,
            st.transactions
        );
    }
    Ok(graphs)
}

/// For `kprobe replay --break-at-cause TXN` (without a debugger): prints
/// the causal chain from the log's cause index and returns the event to stop before.
pub fn break_at_cause(log: &std::path::Path, txn: &str) -> Result<u64> {
    let (seq, text) = engine::index::replay_stop(log, txn)?;
    eprint!("{text}");
    Ok(seq)
}
