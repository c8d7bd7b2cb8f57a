//! The causal graph of a real incident outside the text tree: stored in the
//! real Bolt graph server (ArcadeDB from `scripts/services.sh`) and read back
//! by `kprobe why --from-neo4j`, which must answer exactly as the embedded
//! cause index does; and rendered as Graphviz DOT (checked by Graphviz's own
//! `dot`) and as SVG (checked by an XML parser), both naming the culprit.
//!
//! One incident (a, scheduler delay, with the ledger under `kprobe record`)
//! is run once and shared by the tests. Its transaction ids carry a unique
//! prefix, so graphs of other runs in the same server do not mix in.

mod engine_common;

use engine_common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

struct Incident {
    dir: PathBuf,
    env: HashMap<String, String>,
    /// The `.kpl` with the cause index of every transaction.
    index: PathBuf,
}

fn incident_a() -> &'static Incident {
    static I: OnceLock<Incident> = OnceLock::new();
    I.get_or_init(|| {
        root();
        let dir = tmp("graph");
        let prefix = unique_prefix("graph").trim_end_matches('.').replace('.', "-");
        let env = incident_with("sched", &dir, &["--ptrace"], &[("TXN_PREFIX", &prefix)]);
        assert!(env["TXN"].starts_with(&prefix), "{env:?}");
        let index = dir.join("incident.kpl");
        save_index(&dir, &index);
        Incident { dir, env, index }
    })
}

/// Called at the end of each test that passed: the last one removes the incident's directory
/// (a failed test leaves it for a look).
fn done(inc: &Incident) {
    static PASSED: AtomicUsize = AtomicUsize::new(0);
    if PASSED.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
        let _ = std::fs::remove_dir_all(&inc.dir);
    }
}

fn txns(inc: &Incident) -> Vec<String> {
    let prefix = inc.env["TXN"].rsplit_once('-').unwrap().0.to_owned();
    (0..12).map(|i| format!("{prefix}-{i:04}")).collect()
}

fn run_ok(c: &mut Command) -> std::process::Output {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `kprobe why --neo4j URI` with the server's password.
fn bolt_cmd(uri: &str, password: &str) -> Command {
    let mut c = kprobe();
    c.arg("why").arg("--neo4j").arg(uri);
    c.env("KPROBE_NEO4J_PASSWORD", password);
    c
}

#[test]
fn the_graph_server_answers_like_the_embedded_index() {
    let inc = incident_a();
    let (uri, password) = bolt();
    // 1. From the cause index: every graph into the server.
    let mut c = kprobe();
    c.args(["why", "--all", "--log"]).arg(&inc.index).args(["--neo4j", &uri]).env("KPROBE_NEO4J_PASSWORD", &password);
    let out = run_ok(&mut c);
    assert!(String::from_utf8_lossy(&out.stderr).contains("stored 12 graphs"), "{}", String::from_utf8_lossy(&out.stderr));
    for t in txns(inc) {
        let embedded = why(&t, &["--log".as_ref(), inc.index.as_os_str()]);
        let mut c = bolt_cmd(&uri, &password);
        c.args([&t, "--from-neo4j", "--format", "json"]);
        let stored: Value = serde_json::from_slice(&run_ok(&mut c).stdout).unwrap();
        assert_eq!(stored, embedded, "{t}: the graph server's answer differs from the embedded index's");
    }
    let rc = root_cause(&why(&inc.env["TXN"], &["--log".as_ref(), inc.index.as_os_str()])).expect("a root cause");
    assert_eq!((rc.0.as_str(), rc.1.to_string(), rc.2.as_str()), ("sched_delay", inc.env["CULPRIT_PID"].clone(), "incident_hog"));

    // 2. Straight from the analysis of the recordings (replacing what was stored).
    let mut c = bolt_cmd(&uri, &password);
    c.args(["--all", "--log"])
        .arg(inc.dir.join("ledger.kpl"))
        .arg("--log")
        .arg(inc.dir.join("kernel.kpl"))
        .arg("--spans")
        .arg(inc.dir.join("spans.json"));
    run_ok(&mut c);
    let t = &inc.env["TXN"];
    let analysed = why_json(&inc.dir, t, &["ledger.kpl", "kernel.kpl"]);
    let mut c = bolt_cmd(&uri, &password);
    c.args([t, "--from-neo4j", "--format", "json"]);
    let stored: Value = serde_json::from_slice(&run_ok(&mut c).stdout).unwrap();
    assert_eq!(stored, analysed);
    // The text tree from the server names the hog too.
    let mut c = bolt_cmd(&uri, &password);
    c.args([t, "--from-neo4j"]);
    let text = String::from_utf8(run_ok(&mut c).stdout).unwrap();
    assert!(text.contains(&format!("culprit: incident_hog (pid {}", inc.env["CULPRIT_PID"])), "{text}");

    // 3. Clear errors: a transaction the server does not hold, a server that is not there.
    let mut c = bolt_cmd(&uri, &password);
    let out = c.args(["no-such-txn", "--from-neo4j"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no transaction \"no-such-txn\""), "{out:?}");
    let out = bolt_cmd("127.0.0.1:1", &password).args([t, "--from-neo4j"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("connecting to the graph server at 127.0.0.1:1"), "{err}");
    done(inc);
}

/// Graphviz's `dot` (Debian package graphviz, installed by scripts/setup.sh); fails loudly without it.
fn graphviz_dot(input: &[u8], format: &str) -> String {
    let child = Command::new("dot").arg(format!("-T{format}")).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = child.unwrap_or_else(|e| panic!("cannot run Graphviz `dot` ({e}): install it with `bash scripts/setup.sh`"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "dot rejected the graph: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(input));
    String::from_utf8(out.stdout).unwrap()
}

/// The incident, the graph of its hit transaction (JSON) and `kprobe why --format FORMAT` of it.
fn rendered(format: &str) -> (&'static Incident, Value, String) {
    let inc = incident_a();
    let t = &inc.env["TXN"];
    let g = why(t, &["--log".as_ref(), inc.index.as_os_str()]);
    let out = run_ok(kprobe().args(["why", t, "--format", format, "--log"]).arg(&inc.index));
    (inc, g, String::from_utf8(out.stdout).unwrap())
}

#[test]
fn dot_output_is_a_graph_graphviz_accepts_and_it_names_the_culprit() {
    let (inc, g, dot) = rendered("dot");
    let n_nodes = g["nodes"].as_array().unwrap().len();
    assert!(dot.starts_with("digraph why {"), "{dot}");
    // Graphviz parses it and lays it out: `plain` lists every node and edge.
    let plain = graphviz_dot(dot.as_bytes(), "plain");
    let nodes = plain.lines().filter(|l| l.starts_with("node ")).count();
    let edges = plain.lines().filter(|l| l.starts_with("edge ")).count();
    assert_eq!((nodes, edges), (n_nodes, n_nodes - 1), "a tree of {n_nodes} nodes:\n{plain}");
    let culprit = format!("incident_hog (pid {}", inc.env["CULPRIT_PID"]);
    assert!(plain.lines().any(|l| l.starts_with("node ") && l.contains(&culprit) && l.contains("cause #1")), "{plain}");
    // The root cause is the filled red box.
    let i = g["causes"][0].as_u64().unwrap();
    assert!(dot.lines().any(|l| l.starts_with(&format!("  n{i} [")) && l.contains("#f4a6a6")), "{dot}");
    // And renders to SVG through Graphviz as well.
    let svg = graphviz_dot(dot.as_bytes(), "svg");
    assert!(svg.contains("<svg") && svg.contains("incident_hog"), "{svg}");
    done(inc);
}

#[test]
fn svg_output_is_well_formed_and_names_the_culprit() {
    let (inc, g, svg) = rendered("svg");
    let n_nodes = g["nodes"].as_array().unwrap().len();
    let file = inc.dir.join("why.svg");
    std::fs::write(&file, svg).unwrap();
    // An XML parser (Python's standard library): the root is an SVG element,
    // one box and one text per node, the culprit in the root cause's text.
    let check = r#"
import sys, xml.etree.ElementTree as ET
ns = {"s": "http://www.w3.org/2000/svg"}
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "{http://www.w3.org/2000/svg}svg", root.tag
assert float(root.get("width")) > 0 and float(root.get("height")) > 0
print(len(root.findall("s:rect", ns)), len(root.findall("s:path", ns)))
for t in root.findall("s:text", ns):
    print("TEXT", t.text)
"#;
    let out = Command::new("python3").arg("-c").arg(check).arg(&file).output().expect("python3 (installed by scripts/setup.sh)");
    assert!(out.status.success(), "not a well-formed SVG: {}", String::from_utf8_lossy(&out.stderr));
    let report = String::from_utf8(out.stdout).unwrap();
    let mut lines = report.lines();
    assert_eq!(lines.next().unwrap(), format!("{n_nodes} {}", n_nodes - 1), "{report}");
    let culprit = format!("incident_hog (pid {}", inc.env["CULPRIT_PID"]);
    assert!(lines.any(|l| l.contains(&culprit) && l.contains("[cause #1]")), "{report}");
    done(inc);
}
