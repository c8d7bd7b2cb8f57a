//! The causal graph in a Neo4j-compatible graph server, over Bolt (neo4rs).
//!
//! Model (Neo4j 5 Cypher; also what ArcadeDB's Bolt plugin accepts):
//!
//! * every node of a [`CausalGraph`] is a `(:KprobeNode)` with `graph` (the
//!   transaction id, or `pid:P`), `idx` (its position), `parent`, `kind`
//!   (`transaction`, `span`, `syscall`, `wait`, `sched_delay`,
//!   `tcp_retransmit`, `page_faults`), `label`, times, pid/tid/comm,
//!   `contribution_ns`, `rank`, the culprit, location and strike;
//! * `(parent)-[:EXPLAINED_BY {contribution_ns}]->(child)` along the tree;
//! * `(cause)-[:CULPRIT]->(:KprobeProcess {pid, comm})` for causes.
//!
//! An index on `KprobeNode.graph` makes `why` one indexed lookup. Every
//! write runs in an explicit transaction (one per graph). Storing a graph
//! replaces the previous one of the same transaction.
//!
//! No property holds a negative number: "none" is an absent property (the
//! root's `parent`, the culprit of a node that has none). neo4rs 0.8 reads
//! the Bolt tiny integers -16..-1 back as 240..255, so a stored -1 would come
//! back as 255.

use crate::graph::{CausalGraph, Culprit, Node, NodeKind};
use crate::store::EvRef;
use anyhow::{Context, Result};
use neo4rs::{query, BoltType, ConfigBuilder, Graph};
use std::collections::HashMap;

/// Where the graph server is.
#[derive(Clone, Debug)]
pub struct BoltConfig {
    /// `host:port` or `bolt://host:port`.
    pub uri: String,
    /// User.
    pub user: String,
    /// Password.
    pub password: String,
    /// Database.
    pub db: String,
}

/// A connection to the graph server.
pub struct Store {
    graph: Graph,
    rt: Option<tokio::runtime::Runtime>,
    indexed: bool,
}

fn key_of(g: &CausalGraph) -> String {
    g.txn.clone().unwrap_or_else(|| format!("pid:{}", g.nodes.first().map(|n| n.pid).unwrap_or(0)))
}

type Row = HashMap<String, BoltType>;

/// The properties of node `n`; `parent` is its parent and its position among the parent's children.
fn row(g: &CausalGraph, key: &str, parent: Option<(usize, usize)>, n: &Node) -> Row {
    let mut r: Row = HashMap::new();
    let mut s = |k: &str, v: BoltType| {
        r.insert(k.to_owned(), v);
    };
    s("graph", key.to_owned().into());
    s("idx", (n.id as i64).into());
    if let Some((p, pos)) = parent {
        s("parent", (p as i64).into());
        s("pos", (pos as i64).into());
    }
    s("kind", n.kind.name().to_owned().into());
    s("label", n.label.clone().into());
    s("start_ns", (n.start_ns as i64).into());
    s("end_ns", (n.end_ns as i64).into());
    s("pid", (n.pid as i64).into());
    s("tid", (n.tid as i64).into());
    s("comm", n.comm.clone().into());
    s("contribution_ns", (n.contribution_ns as i64).into());
    s("rank", (n.rank as i64).into());
    s("location", n.location.clone().unwrap_or_default().into());
    s("evidence", serde_json::to_string(&n.evidence).unwrap_or_default().into());
    s("strike", n.strike.map(|x| serde_json::to_string(&x).unwrap_or_default()).unwrap_or_default().into());
    s("strike_desc", n.strike_desc.clone().unwrap_or_default().into());
    if let Some(c) = &n.culprit {
        s("culprit_pid", (c.pid as i64).into());
        s("culprit_tid", (c.tid as i64).into());
        s("culprit_comm", c.comm.clone().into());
        s("culprit_what", c.what.clone().into());
    }
    if n.id == 0 {
        s("subject", g.subject.clone().into());
        s("txn", g.txn.clone().unwrap_or_default().into());
        s("threshold_ns", (g.threshold_ns as i64).into());
        s("window_ns", (g.window_ns as i64).into());
        s("sources", serde_json::to_string(&g.sources).unwrap_or_default().into());
    }
    r
}

/// A JSON-valued property read back: absent or empty is `None`, malformed an error naming the graph, node and property.
fn parsed<T: serde::de::DeserializeOwned>(txn: &str, idx: i64, k: &str, s: String) -> Result<Option<T>> {
    if s.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&s).map(Some).with_context(|| format!("graph {txn} on the graph server: node {idx}: property `{k}`: {s:?}"))
}

const FIELDS: &str = "n.idx AS idx, n.parent AS parent, n.pos AS pos, n.kind AS kind, n.label AS label, n.start_ns AS start_ns, \
     n.end_ns AS end_ns, n.pid AS pid, n.tid AS tid, n.comm AS comm, n.contribution_ns AS contribution_ns, n.rank AS rank, \
     n.location AS location, n.evidence AS evidence, n.strike AS strike, n.strike_desc AS strike_desc, \
     n.culprit_pid AS culprit_pid, n.culprit_tid AS culprit_tid, n.culprit_comm AS culprit_comm, n.culprit_what AS culprit_what, \
     n.subject AS subject, n.txn AS txn, n.threshold_ns AS threshold_ns, n.window_ns AS window_ns, n.sources AS sources";

impl Store {
    /// Connects (async). An unreachable server is an error at once (neo4rs
    /// would otherwise retry each query for half a minute).
    pub async fn connect(c: &BoltConfig) -> Result<Store> {
        let uri = c.uri.trim_start_matches("bolt://").trim_start_matches("neo4j://").to_owned();
        match tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect(uri.as_str())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("connecting to the graph server at {}: {e}", c.uri),
            Err(_) => anyhow::bail!("connecting to the graph server at {}: no answer in 10 s", c.uri),
        }
        let cfg = ConfigBuilder::default()
            .uri(uri.as_str())
            .user(c.user.as_str())
            .password(c.password.as_str())
            .db(c.db.as_str())
            .fetch_size(1000)
            .max_connections(2)
            .build()
            .context("graph server configuration")?;
        let graph = Graph::connect(cfg).await.with_context(|| format!("connecting to the graph server at {}", c.uri))?;
        Ok(Store { graph, rt: None, indexed: false })
    }

    /// Connects, with a runtime of its own for the `_blocking` calls.
    pub fn connect_blocking(c: &BoltConfig) -> Result<Store> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut s = rt.block_on(Store::connect(c))?;
        s.rt = Some(rt);
        Ok(s)
    }

    /// Creates the index on `KprobeNode.graph` (once per connection). A
    /// server that does not know Neo4j 5 index syntax is told so in the log.
    pub async fn ensure_schema(&mut self) -> Result<()> {
        if self.indexed {
            return Ok(());
        }
        let mut txn = self.graph.start_txn().await?;
        match txn.run(query("CREATE INDEX kprobe_node_graph IF NOT EXISTS FOR (n:KprobeNode) ON (n.graph)")).await {
            Ok(()) => txn.commit().await?,
            Err(e) => {
                tracing::warn!("graph server: creating the index on KprobeNode.graph failed ({e}); lookups scan");
                let _ = txn.rollback().await;
            }
        }
        self.indexed = true;
        Ok(())
    }

    /// Stores graphs (each replacing any earlier graph of the same
    /// transaction), one explicit transaction each. Returns the nodes written.
    pub async fn save(&mut self, graphs: &[CausalGraph]) -> Result<usize> {
        self.ensure_schema().await?;
        let mut total = 0;
        for g in graphs {
            let key = key_of(g);
            let parents = g.parents();
            let at = |p: usize, c: usize| (p, g.nodes[p].children.iter().position(|&x| x == c).unwrap_or(0));
            let rows: Vec<Row> = g.nodes.iter().map(|n| row(g, &key, parents[n.id].map(|p| at(p, n.id)), n)).collect();
            let edges: Vec<Row> = g
                .nodes
                .iter()
                .flat_map(|n| n.children.iter().map(move |&c| (n.id, c)))
                .map(|(p, c)| {
                    let mut r: Row = HashMap::new();
                    r.insert("p".into(), (p as i64).into());
                    r.insert("c".into(), (c as i64).into());
                    r.insert("w".into(), (g.nodes[c].contribution_ns as i64).into());
                    r
                })
                .collect();
            let culprits: Vec<Row> = g
                .nodes
                .iter()
                .filter_map(|n| n.culprit.as_ref().filter(|_| n.rank > 0).map(|c| (n.id, c)))
                .map(|(i, c)| {
                    let mut r: Row = HashMap::new();
                    r.insert("i".into(), (i as i64).into());
                    r.insert("pid".into(), (c.pid as i64).into());
                    r.insert("comm".into(), c.comm.clone().into());
                    r
                })
                .collect();
            let mut txn = self.graph.start_txn().await?;
            txn.run(query("MATCH (n:KprobeNode {graph: $g}) DETACH DELETE n").param("g", key.clone())).await?;
            txn.run(query("UNWIND $rows AS r CREATE (n:KprobeNode) SET n = r").param("rows", rows)).await?;
            if !edges.is_empty() {
                txn.run(
                    query(
                        "UNWIND $edges AS e MATCH (p:KprobeNode {graph: $g, idx: e.p}), (c:KprobeNode {graph: $g, idx: e.c}) \
                         CREATE (p)-[:EXPLAINED_BY {contribution_ns: e.w}]->(c)",
                    )
                    .param("edges", edges)
                    .param("g", key.clone()),
                )
                .await?;
            }
            if !culprits.is_empty() {
                txn.run(
                    query(
                        "UNWIND $cs AS x MATCH (n:KprobeNode {graph: $g, idx: x.i}) MERGE (p:KprobeProcess {pid: x.pid, comm: x.comm}) \
                         CREATE (n)-[:CULPRIT]->(p)",
                    )
                    .param("cs", culprits)
                    .param("g", key.clone()),
                )
                .await?;
            }
            txn.commit().await.with_context(|| format!("committing the graph of {key}"))?;
            total += g.nodes.len();
        }
        Ok(total)
    }

    /// The graph of transaction `txn` (or `pid:P`), if stored.
    pub async fn why(&self, txn: &str) -> Result<Option<CausalGraph>> {
        let mut rows = self
            .graph
            .execute(query(&format!("MATCH (n:KprobeNode {{graph: $g}}) RETURN {FIELDS} ORDER BY idx")).param("g", txn))
            .await
            .with_context(|| format!("asking the graph server for the graph of {txn}"))?;
        let mut nodes: Vec<(Option<(usize, i64)>, Node)> = Vec::new();
        let mut meta = None;
        while let Some(r) = rows.next().await? {
            let oi = |k: &str| r.get::<i64>(k).ok();
            let gi = |k: &str| oi(k).unwrap_or(0);
            let gs = |k: &str| r.get::<String>(k).unwrap_or_default();
            let opt = |s: String| (!s.is_empty()).then_some(s);
            let idx = gi("idx") as usize;
            let parent = oi("parent").and_then(|p| usize::try_from(p).ok()).map(|p| (p, gi("pos")));
            let culprit = oi("culprit_pid").map(|_| Culprit {
                pid: gi("culprit_pid") as u32,
                tid: gi("culprit_tid") as u32,
                comm: gs("culprit_comm"),
                what: gs("culprit_what"),
            });
            let node = Node {
                id: idx,
                kind: NodeKind::from_name(&gs("kind")).with_context(|| format!("graph {txn}: node {idx}: unknown kind"))?,
                label: gs("label"),
                start_ns: gi("start_ns") as u64,
                end_ns: gi("end_ns") as u64,
                pid: gi("pid") as u32,
                tid: gi("tid") as u32,
                comm: gs("comm"),
                contribution_ns: gi("contribution_ns") as u64,
                rank: gi("rank") as u32,
                culprit,
                location: opt(gs("location")),
                evidence: parsed::<Vec<EvRef>>(txn, gi("idx"), "evidence", gs("evidence"))?.unwrap_or_default(),
                strike: parsed::<EvRef>(txn, gi("idx"), "strike", gs("strike"))?,
                strike_desc: opt(gs("strike_desc")),
                children: Vec::new(),
            };
            if idx == 0 {
                meta = Some((
                    gs("subject"),
                    opt(gs("txn")),
                    gi("threshold_ns") as u64,
                    gi("window_ns") as u64,
                    parsed::<Vec<String>>(txn, 0, "sources", gs("sources"))?.unwrap_or_default(),
                ));
            }
            nodes.push((parent, node));
        }
        let Some((subject, txn_id, threshold_ns, window_ns, sources)) = meta else { return Ok(None) };
        nodes.sort_by_key(|(_, n)| n.id);
        let mut kids: Vec<(usize, i64, usize)> = nodes.iter().filter_map(|(p, n)| p.map(|(p, pos)| (p, pos, n.id))).collect();
        kids.sort_unstable();
        let mut out: Vec<Node> = nodes.into_iter().map(|(_, n)| n).collect();
        if let Some(n) = out.iter().enumerate().find(|(i, n)| n.id != *i) {
            anyhow::bail!("graph {txn} on the graph server: node {} is missing (found node {} in its place)", n.0, n.1.id);
        }
        for (p, _, c) in kids {
            let pn = out.get_mut(p).with_context(|| format!("graph {txn}: node {c}: parent {p} is not stored"))?;
            pn.children.push(c);
        }
        let mut causes: Vec<usize> = out.iter().filter(|n| n.rank > 0).map(|n| n.id).collect();
        causes.sort_by_key(|&i| out[i].rank);
        Ok(Some(CausalGraph { subject, txn: txn_id, nodes: out, causes, threshold_ns, window_ns, sources }))
    }

    fn rt(&self) -> Result<&tokio::runtime::Runtime> {
        self.rt.as_ref().context("not connected with connect_blocking")
    }

    /// [`Store::save`], blocking.
    pub fn save_blocking(&mut self, graphs: &[CausalGraph]) -> Result<usize> {
        let rt = self.rt.take().context("not connected with connect_blocking")?;
        let r = rt.block_on(self.save(graphs));
        self.rt = Some(rt);
        r
    }

    /// [`Store::why`], blocking.
    pub fn why_blocking(&self, txn: &str) -> Result<Option<CausalGraph>> {
        self.rt()?.block_on(self.why(txn))
    }
}
