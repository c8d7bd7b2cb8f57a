//! End-to-end: `kprobe bench log`, `kprobe log info|dump|verify`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kprobe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kprobe")).args(args).output().expect("run kprobe")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kprobe-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn synthetic_log(dir: &Path, n: u64) -> PathBuf {
    let f = dir.join("synth.kpl");
    let out =
        kprobe(&["bench", "log", "--events", &n.to_string(), "-o", f.to_str().unwrap(), "--baseline-events", "2000", "--seeks", "20"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    for row in ["JSON+zstd-3", "JSON+zstd-19", "write, events/s", "seek by seq", "seek by time", "seek by tid"] {
        assert!(table.contains(row), "bench prints {row}: {table}");
    }
    f
}

#[test]
fn info_dump_verify_on_a_sound_log() {
    let d = tmp("sound");
    let f = synthetic_log(&d, 30_000);
    let fs = f.to_str().unwrap();

    let out = kprobe(&["log", "info", fs, "--json"]);
    assert!(out.status.success());
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["events"], 30_000);
    assert_eq!(info["backend"], "synthetic");
    assert_eq!(info["index"], "footer");
    let kinds = info["kinds"].as_object().unwrap();
    for k in ["syscall", "sched_switch", "sched_wakeup", "tcp_send", "tcp_recv", "page_fault"] {
        assert!(kinds.get(k).and_then(|v| v.as_u64()).unwrap_or(0) > 0, "{k} counted: {kinds:?}");
    }
    assert_eq!(kinds.values().map(|v| v.as_u64().unwrap()).sum::<u64>(), 30_000);
    assert!(info["bytes_per_event"].as_f64().unwrap() > 1.0);

    let text = kprobe(&["log", "info", fs]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("bytes/event") && text.contains("time span") && text.contains("syscall"), "{text}");

    // JSON dump: required fields on every line; syscalls carry name and ret.
    let out = kprobe(&["log", "dump", fs, "--json", "--from", "100", "--count", "500"]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 500);
    assert_eq!(lines[0]["seq"], 100);
    for l in &lines {
        for k in ["seq", "ts_ns", "pid", "tid", "cpu", "kind"] {
            assert!(l.get(k).is_some(), "{k} in {l}");
        }
        if l["kind"] == "syscall" {
            assert!(l["name"].is_string() && l["ret"].is_i64(), "{l}");
        }
    }
    assert!(
        lines.iter().any(|l| l["kind"] == "syscall" && l["name"] == "recvfrom" && l["writes"][0]["data"].is_string()),
        "payload bytes in JSON"
    );

    // --tid filters.
    let out = kprobe(&["log", "dump", fs, "--json", "--tid", "5204", "--count", "50"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 50);
    assert!(lines.iter().all(|l| l["tid"] == 5204));

    // Text dump decodes syscalls.
    let out = kprobe(&["log", "dump", fs, "--count", "300", "--kind", "syscall"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("epoll_wait(") && text.contains("recvfrom("), "{text}");
    assert!(kprobe(&["log", "dump", fs, "--kind", "nonsense"]).status.code() == Some(2));

    let out = kprobe(&["log", "verify", fs]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn verify_names_the_bad_block_and_what_was_lost() {
    let d = tmp("bad");
    let f = synthetic_log(&d, 20_000);
    let fs = f.to_str().unwrap();
    let out = kprobe(&["log", "info", fs, "--json"]);
    let _info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut bytes = std::fs::read(&f).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let bad = d.join("bad.kpl");
    std::fs::write(&bad, &bytes).unwrap();
    let out = kprobe(&["log", "verify", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DAMAGED") && text.contains("byte offset") && text.contains("lost:") && text.contains("recovered:"), "{text}");

    // Truncated (a recorder killed mid-write): info still works, verify says what happened.
    let cut = d.join("cut.kpl");
    std::fs::write(&cut, &std::fs::read(&f).unwrap()[..mid]).unwrap();
    let out = kprobe(&["log", "info", cut.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuilt by scanning"));
    let out = kprobe(&["log", "verify", cut.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no usable footer") || text.contains("cut short"), "{text}");

    // Not a log at all.
    let junk = d.join("junk.kpl");
    std::fs::write(&junk, b"definitely not a log").unwrap();
    let out = kprobe(&["log", "info", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("junk.kpl") && err.contains("not a kprobe log"), "{err}");
}
