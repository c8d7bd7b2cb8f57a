//! Shared by the engine's end-to-end tests: the `kprobe` binary, scratch
//! directories, real incidents (`fixtures/incidents/run.sh`), the real
//! servers of `scripts/services.sh`.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::HashMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn kprobe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kprobe"))
}

pub fn tmp(tag: &str) -> PathBuf {
    // Not /tmp: the memory incident's account book must live on a disk the kernel can reclaim it from.
    let d = PathBuf::from(format!("/var/tmp/kprobe-engine-test-{tag}-{}-{}", std::process::id(), kpl::now_ns()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn root() {
    let id = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&id.stdout).trim(), "0", "incidents need root (eBPF, SCHED_FIFO, netns, cgroups)");
}

/// Runs an incident into `dir`; returns its `incident.env`.
pub fn incident(kind: &str, dir: &Path, extra: &[&str]) -> HashMap<String, String> {
    incident_with(kind, dir, extra, &[])
}

/// [`incident`] with environment variables for `run.sh` (e.g. `TXN_PREFIX`).
pub fn incident_with(kind: &str, dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> HashMap<String, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/incidents/run.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(kind)
        .arg(dir)
        .args(extra)
        .env("KPROBE_BIN", env!("CARGO_BIN_EXE_kprobe"))
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "incident {kind} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let env = std::fs::read_to_string(dir.join("incident.env")).unwrap();
    env.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// `kprobe why TXN --format json` with `args` (logs, spans, ...), which must succeed.
pub fn why(txn: &str, args: &[&std::ffi::OsStr]) -> Value {
    let out = kprobe().arg("why").arg(txn).arg("--format").arg("json").args(args).output().unwrap();
    assert!(out.status.success(), "kprobe why failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `kprobe why --all` over an incident's ptrace and eBPF recordings and spans, saving the cause index to `out`.
pub fn save_index(dir: &Path, out: &Path) {
    save_index_with(dir, out, &[]);
}

/// As [`save_index`], with more `kprobe why` arguments (e.g. `--threshold-ns N`).
pub fn save_index_with(dir: &Path, out: &Path, extra: &[&str]) {
    let res = kprobe()
        .args(["why", "--all"])
        .args(extra)
        .arg("--log")
        .arg(dir.join("ledger.kpl"))
        .arg("--log")
        .arg(dir.join("kernel.kpl"))
        .arg("--spans")
        .arg(dir.join("spans.json"))
        .arg("--save-index")
        .arg(out)
        .output()
        .unwrap();
    assert!(res.status.success(), "why --all --save-index: {}", String::from_utf8_lossy(&res.stderr));
}

pub fn why_json(dir: &Path, txn: &str, logs: &[&str]) -> Value {
    let mut c = kprobe();
    c.arg("why").arg(txn).arg("--format").arg("json").arg("--spans").arg(dir.join("spans.json"));
    for l in logs {
        c.arg("--log").arg(dir.join(l));
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "kprobe why failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (kind, culprit pid, culprit comm, label) of the root cause, if any.
pub fn root_cause(g: &Value) -> Option<(String, u64, String, String)> {
    let i = g["causes"].as_array()?.first()?.as_u64()? as usize;
    let n = &g["nodes"][i];
    Some((
        n["kind"].as_str()?.to_owned(),
        n["culprit"]["pid"].as_u64().unwrap_or(0),
        n["culprit"]["comm"].as_str().unwrap_or("").to_owned(),
        n["label"].as_str()?.to_owned(),
    ))
}

/// What two answers must share: per node its kind, label, times, task,
/// contribution, rank, culprit and location (not the event references,
/// which number events per source).
pub fn shape(g: &Value) -> Vec<Value> {
    g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            serde_json::json!([
                n["kind"],
                n["label"],
                n["start_ns"],
                n["end_ns"],
                n["pid"],
                n["tid"],
                n["comm"],
                n["contribution_ns"],
                n["rank"],
                n["culprit"],
                n["location"],
                n["children"]
            ])
        })
        .collect()
}

/// The Kafka broker of `scripts/services.sh` (`$KPROBE_KAFKA`); fails loudly without one.
pub fn kafka() -> String {
    let b = std::env::var("KPROBE_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    if TcpStream::connect(&b).is_err() {
        panic!("no Kafka broker at {b}: start one with `bash scripts/services.sh start` (scripts/test.sh does)");
    }
    b
}

/// The Bolt graph server of `scripts/services.sh` (`$KPROBE_BOLT`) and its password; fails loudly without one.
pub fn bolt() -> (String, String) {
    let b = std::env::var("KPROBE_BOLT").unwrap_or_else(|_| "127.0.0.1:7687".into());
    if TcpStream::connect(&b).is_err() {
        panic!("no Bolt graph server at {b}: start one with `bash scripts/services.sh start` (scripts/test.sh does)");
    }
    (b, std::env::var("KPROBE_BOLT_PASSWORD").unwrap_or_else(|_| "kprobe-local".into()))
}

pub fn unique_prefix(tag: &str) -> String {
    format!("kptest-{tag}-{}-{}.", std::process::id(), kpl::now_ns() % 1_000_000_000)
}
