//! Rendering a causal graph: a text tree, JSON, Graphviz DOT, SVG.

use crate::graph::{dur, CausalGraph, Node, NodeKind};
use std::fmt::Write;

/// Output formats of `kprobe why`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A tree with durations, culprits and locations.
    Text,
    /// The graph as JSON.
    Json,
    /// Graphviz DOT.
    Dot,
    /// SVG (the tree laid out as boxes).
    Svg,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            "dot" => Ok(Format::Dot),
            "svg" => Ok(Format::Svg),
            _ => Err(format!("unknown format `{s}` (text, json, dot, svg)")),
        }
    }
}

/// Renders `g` in format `f`.
pub fn render(g: &CausalGraph, f: Format) -> String {
    match f {
        Format::Text => text(g),
        Format::Json => serde_json::to_string_pretty(g).expect("graph serializes") + "\n",
        Format::Dot => dot(g),
        Format::Svg => svg(g),
    }
}

fn suffix(n: &Node) -> String {
    let mut s = String::new();
    if n.rank > 0 {
        let _ = write!(s, "  [cause #{}]", n.rank);
    }
    if let Some(l) = &n.location {
        let _ = write!(s, "  at {l}");
    }
    s
}

/// The tree as text, then the ranked causes.
pub fn text(g: &CausalGraph) -> String {
    let mut out = String::new();
    if g.nodes.is_empty() {
        return out;
    }
    let root = &g.nodes[0];
    let _ = writeln!(out, "{}{}", root.label, suffix(root));
    fn walk(g: &CausalGraph, i: usize, prefix: &str, out: &mut String) {
        let kids = &g.nodes[i].children;
        for (k, &c) in kids.iter().enumerate() {
            let last = k + 1 == kids.len();
            let n = &g.nodes[c];
            let who = if n.kind == NodeKind::Span || n.kind == NodeKind::Syscall {
                format!("  [{} pid {} tid {}]", n.comm, n.pid, n.tid)
            } else {
                String::new()
            };
            let _ = writeln!(out, "{prefix}{}{}{who}{}", if last { "└─ " } else { "├─ " }, n.label, suffix(n));
            walk(g, c, &format!("{prefix}{}", if last { "   " } else { "│  " }), out);
        }
    }
    walk(g, 0, "", &mut out);
    if g.causes.is_empty() {
        let _ = writeln!(out, "\nno cause above the threshold ({}) found", dur(g.threshold_ns));
    } else {
        let _ = writeln!(out, "\ncauses by contribution (threshold {}, window {}):", dur(g.threshold_ns), dur(g.window_ns));
        for n in g.ranked() {
            let _ = write!(out, "  #{} {:>9}  {}", n.rank, dur(n.contribution_ns), n.kind.name());
            if let Some(c) = &n.culprit {
                let _ = write!(out, "  culprit: {} (pid {}, tid {}): {}", c.comm, c.pid, c.tid, c.what);
            }
            if let Some(s) = &n.strike_desc {
                let _ = write!(out, "  struck: {s}");
            }
            let _ = writeln!(out);
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Graphviz DOT: one box per node, edges from effect to cause labelled with the contribution.
pub fn dot(g: &CausalGraph) -> String {
    let mut out = String::from("digraph why {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n");
    for n in &g.nodes {
        let style = if n.rank == 1 {
            ", style=filled, fillcolor=\"#f4a6a6\""
        } else if n.rank > 1 {
            ", style=filled, fillcolor=\"#fbe3b0\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  n{} [label=\"{}{}\"{style}];",
            n.id,
            esc(&n.label),
            if n.rank > 0 { format!("\\n(cause #{})", n.rank) } else { String::new() }
        );
    }
    for n in &g.nodes {
        for &c in &n.children {
            let _ = writeln!(out, "  n{} -> n{} [label=\"{}\"];", n.id, c, dur(g.nodes[c].contribution_ns));
        }
    }
    out.push_str("}\n");
    out
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// SVG: the tree as indented boxes joined by elbow lines, causes coloured by rank.
pub fn svg(g: &CausalGraph) -> String {
    const ROW: usize = 34;
    const INDENT: usize = 28;
    const CH: f64 = 6.6;
    let mut rows: Vec<(usize, usize)> = Vec::new(); // (node, depth)
    fn order(g: &CausalGraph, i: usize, d: usize, rows: &mut Vec<(usize, usize)>) {
        rows.push((i, d));
        for &c in &g.nodes[i].children {
            order(g, c, d + 1, rows);
        }
    }
    if !g.nodes.is_empty() {
        order(g, 0, 0, &mut rows);
    }
    let text_of = |n: &Node| format!("{}{}", n.label, if n.rank > 0 { format!("  [cause #{}]", n.rank) } else { String::new() });
    let width =
        rows.iter().map(|&(i, d)| 20 + d * INDENT + (text_of(&g.nodes[i]).chars().count() as f64 * CH) as usize + 20).max().unwrap_or(200);
    let height = rows.len() * ROW + 20;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"monospace\" font-size=\"11\">\n"
    );
    let mut pos = vec![(0usize, 0usize); g.nodes.len()];
    for (r, &(i, d)) in rows.iter().enumerate() {
        pos[i] = (10 + d * INDENT, 10 + r * ROW);
    }
    for n in &g.nodes {
        for &c in &n.children {
            let (px, py) = pos[n.id];
            let (cx, cy) = pos[c];
            let _ = writeln!(out, "  <path d=\"M{} {} V{} H{}\" fill=\"none\" stroke=\"#888\"/>", px + 8, py + 24, cy + 12, cx);
        }
    }
    for &(i, _) in &rows {
        let n = &g.nodes[i];
        let (x, y) = pos[i];
        let t = text_of(n);
        let w = (t.chars().count() as f64 * CH) as usize + 12;
        let fill = match n.rank {
            1 => "#f4a6a6",
            0 => "#ffffff",
            _ => "#fbe3b0",
        };
        let _ = writeln!(out, "  <rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"24\" rx=\"4\" fill=\"{fill}\" stroke=\"#444\"/>");
        let _ = writeln!(out, "  <text x=\"{}\" y=\"{}\">{}</text>", x + 6, y + 16, xml(&t));
    }
    out.push_str("</svg>\n");
    out
}
