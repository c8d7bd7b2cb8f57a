//! The causal graph of one transaction (or of one process's slowest
//! syscalls): a tree from the transaction down through its spans and the
//! syscalls that blocked inside them to the kernel events that delayed them,
//! each edge carrying its latency contribution, causes ranked by it.

use crate::store::EvRef;
use serde::{Deserialize, Serialize};

/// What a node stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// The transaction (root).
    Transaction,
    /// A process (root of a per-process analysis).
    Process,
    /// An OpenTelemetry span.
    Span,
    /// A syscall that blocked.
    Syscall,
    /// Waiting for another thread or service.
    Wait,
    /// Cause: run-queue delay (another task had the CPU).
    SchedDelay,
    /// Cause: TCP retransmissions (packet loss) on the connection.
    TcpRetransmit,
    /// Cause: page faults that waited on I/O or reclaim (memory pressure).
    PageFaults,
}

impl NodeKind {
    /// The name used in `.kpl` cause events, JSON and the graph store (`sched_delay`, ...).
    pub fn name(self) -> &'static str {
        match self {
            NodeKind::Transaction => "transaction",
            NodeKind::Process => "process",
            NodeKind::Span => "span",
            NodeKind::Syscall => "syscall",
            NodeKind::Wait => "wait",
            NodeKind::SchedDelay => "sched_delay",
            NodeKind::TcpRetransmit => "tcp_retransmit",
            NodeKind::PageFaults => "page_faults",
        }
    }
    /// From [`NodeKind::name`].
    pub fn from_name(s: &str) -> Option<NodeKind> {
        [
            NodeKind::Transaction,
            NodeKind::Process,
            NodeKind::Span,
            NodeKind::Syscall,
            NodeKind::Wait,
            NodeKind::SchedDelay,
            NodeKind::TcpRetransmit,
            NodeKind::PageFaults,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
    /// True for the kinds that are causes (kernel events that delayed something).
    pub fn is_cause(self) -> bool {
        matches!(self, NodeKind::SchedDelay | NodeKind::TcpRetransmit | NodeKind::PageFaults)
    }
}

/// The process (and thread) a cause names as responsible.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Culprit {
    /// Process id (0 when the culprit is not a process, e.g. the network).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Command name.
    pub comm: String,
    /// What it did (e.g. `held CPU 1 for 60.1 ms`).
    pub what: String,
}

/// One node of the tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Position in [`CausalGraph::nodes`].
    pub id: usize,
    /// Kind.
    pub kind: NodeKind,
    /// One-line description.
    pub label: String,
    /// Interval start (ns since the epoch).
    pub start_ns: u64,
    /// Interval end.
    pub end_ns: u64,
    /// Process concerned.
    pub pid: u32,
    /// Thread concerned.
    pub tid: u32,
    /// Its command name.
    pub comm: String,
    /// Latency this node contributes to its parent, nanoseconds.
    pub contribution_ns: u64,
    /// Rank among the causes (1 = root cause; 0 = not a ranked cause).
    pub rank: u32,
    /// Who caused it, for causes.
    pub culprit: Option<Culprit>,
    /// Source location (`file:line (function)`), where symbols exist.
    pub location: Option<String>,
    /// The kernel events behind this node.
    pub evidence: Vec<EvRef>,
    /// The event of a replayable recording where the cause struck the
    /// affected task (the syscall it delayed, or the next one).
    pub strike: Option<EvRef>,
    /// Description of the strike event.
    pub strike_desc: Option<String>,
    /// Children (what explains this node).
    pub children: Vec<usize>,
}

/// The explanation of one transaction or process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CausalGraph {
    /// What is explained (`transaction txn-7`, `process 1234 (ledger)`).
    pub subject: String,
    /// Transaction id, when it is one.
    pub txn: Option<String>,
    /// Nodes; the root is node 0.
    pub nodes: Vec<Node>,
    /// Causes ranked by contribution (node ids; first = root cause).
    pub causes: Vec<usize>,
    /// Threshold in force (ns).
    pub threshold_ns: u64,
    /// Window in force (ns).
    pub window_ns: u64,
    /// The recordings the answer came from (paths).
    pub sources: Vec<String>,
}

impl CausalGraph {
    /// The root cause, if any.
    pub fn root_cause(&self) -> Option<&Node> {
        self.causes.first().map(|&i| &self.nodes[i])
    }
    /// The ranked causes.
    pub fn ranked(&self) -> impl Iterator<Item = &Node> {
        self.causes.iter().map(|&i| &self.nodes[i])
    }
    /// Parent of each node (the root has none).
    pub fn parents(&self) -> Vec<Option<usize>> {
        let mut p = vec![None; self.nodes.len()];
        for n in &self.nodes {
            for &c in &n.children {
                p[c] = Some(n.id);
            }
        }
        p
    }
}

/// Nanoseconds as a short human duration (`61.2 ms`, `85 µs`).
pub fn dur(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.2} s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{} µs", ns / 1_000)
    } else {
        format!("{ns} ns")
    }
}
