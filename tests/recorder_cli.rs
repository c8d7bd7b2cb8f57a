//! `kprobe recorder` end to end (root, real kernel): a `.kpl` file that
//! `kprobe log` reads, JSON lines on stdout, the metrics and health
//! endpoints, and clear errors on bad input.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kprobe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kprobe"))
}

fn tmp() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kprobe-rec-cli-{}-{}", std::process::id(), kpl::now_ns()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn root() {
    let id = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&id.stdout).trim(), "0", "the recorder needs root (eBPF): run as root");
}

#[test]
fn records_a_kpl_file_that_log_reads() {
    root();
    let d = tmp();
    let out = d.join("node.kpl");
    let sum = d.join("summary.json");
    // `dd` as the workload, selected by name; the recorder runs 3 s.
    let mut rec = kprobe()
        .args(["recorder", "--hooks", "syscall,sched", "--comm", "dd", "--duration", "4", "-o"])
        .arg(&out)
        .arg("--summary")
        .arg(&sum)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(rec.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("recording"), "{line}");
    let dd = Command::new("dd").args(["if=/dev/zero", "of=/dev/null", "bs=1", "count=1000"]).stderr(Stdio::null()).spawn().unwrap();
    let dd_pid = dd.id();
    assert!(dd.wait_with_output().unwrap().status.success());
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(rec.wait().unwrap().success(), "{rest}");
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&sum).unwrap()).unwrap();
    assert_eq!(s["dropped"], 0);
    assert!(s["hooks"]["syscall"]["events"].as_u64().unwrap() >= 2000, "{s}");
    assert_eq!(s["hooks"]["syscall"]["events"], s["hooks"]["syscall"]["received"]);
    let info = kprobe().args(["log", "info", "--json"]).arg(&out).output().unwrap();
    assert!(info.status.success());
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["backend"], "ebpf", "{info}");
    let dump = kprobe().args(["log", "dump", "--kind", "syscall", "--json"]).arg(&out).output().unwrap();
    assert!(dump.status.success());
    let writes = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["pid"] == dd_pid && v["name"] == "write" && v["ret"] == 1 && v["args"][0] == 1)
        .count();
    assert_eq!(writes, 1000, "dd's one-byte writes");
    let verify = kprobe().args(["log", "verify"]).arg(&out).status().unwrap();
    assert!(verify.success());
    std::fs::remove_dir_all(&d).ok();
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let code = r.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, r)
}

/// `kprobe recorder --json ARGS` serving metrics on a free port: the
/// process, the metrics address, a thread collecting its stdout as it
/// comes (a full pipe would stall the recorder), and its stderr (kept open:
/// the recorder's next message would meet a closed pipe).
type MetricsRecorder = (std::process::Child, String, std::thread::JoinHandle<String>, BufReader<std::process::ChildStderr>);

fn json_recorder_with_metrics(args: &[&str]) -> MetricsRecorder {
    let mut rec = kprobe()
        .args(["recorder", "--json"])
        .args(args)
        .args(["--metrics-addr", "127.0.0.1:0", "--print-metrics-addr"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(rec.stderr.take().unwrap());
    let mut addr = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !addr.starts_with("metrics: http://") {
        assert!(Instant::now() < deadline);
        addr.clear();
        assert!(err.read_line(&mut addr).unwrap() > 0, "recorder exited early");
    }
    let addr = addr.trim().trim_start_matches("metrics: http://").to_owned();
    let mut stdout = rec.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).unwrap();
        out
    });
    (rec, addr, reader, err)
}

#[test]
fn json_lines_metrics_and_health() {
    root();
    let (mut rec, addr, reader, _stderr) = json_recorder_with_metrics(&["--hooks", "syscall", "--comm", "dd"]);
    let dd = Command::new("dd").args(["if=/dev/zero", "of=/dev/null", "bs=1", "count=500"]).stderr(Stdio::null()).spawn().unwrap();
    let dd_pid = dd.id();
    assert!(dd.wait_with_output().unwrap().status.success());
    // the counters reach the endpoint within a few reader cycles
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = http_get(&addr, "/metrics");
        assert_eq!(code, 200);
        let n: u64 = body
            .lines()
            .find(|l| l.starts_with("kprobe_recorder_events_total{hook=\"syscall\"}"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        if n >= 1000 {
            assert!(body.contains("kprobe_recorder_drops_total{hook=\"syscall\"} 0"), "{body}");
            assert!(body.contains("kprobe_recorder_ringbuf_fill_ratio"));
            assert!(body.contains("kprobe_recorder_spool_bytes"));
            assert!(body.contains("kprobe_recorder_sink_lag_events"));
            break;
        }
        assert!(Instant::now() < deadline, "events never counted: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = http_get(&addr, "/healthz");
    assert_eq!(code, 200, "{body}");
    // SIGTERM stops it cleanly, flushing the JSON lines
    assert!(Command::new("kill").arg("-TERM").arg(rec.id().to_string()).status().unwrap().success());
    let out = reader.join().unwrap();
    assert!(rec.wait().unwrap().success());
    let vals: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect("one JSON object a line")).collect();
    let writes = vals
        .iter()
        .filter(|v| v["pid"] == dd_pid && v["kind"] == "syscall" && v["name"] == "write" && v["ret"] == 1 && v["args"][0] == 1)
        .count();
    assert_eq!(writes, 500);
    let seqs: Vec<u64> = vals.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..vals.len() as u64).collect::<Vec<_>>());
}

fn fails_with(args: &[&str], needle: &str) {
    let o = kprobe().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} should fail");
    assert!(err.contains(needle), "{args:?}: expected `{needle}` in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let d = tmp();
    let values = d.join("values.yaml");
    std::fs::write(&values, "probe:\n  ebpf:\n    hooks:\n      tcp: maybe\n").unwrap();
    let v = values.to_str().unwrap();
    fails_with(&["recorder", "--hooks", "sched,disk", "--duration", "0"], "unknown hook `disk`");
    fails_with(&["recorder", "--config", "/nonexistent/values.yaml"], "/nonexistent/values.yaml");
    fails_with(&["recorder", "--config", v], "line 4");
    fails_with(&["recorder", "--ring-kb", "3", "--duration", "0", "-o", "/dev/null"], "power of two");
    fails_with(&["recorder", "--pid", "999999999", "--duration", "0"], "--pid 999999999: no such process");
    fails_with(&["recorder", "--comm", "a-name-longer-than-15", "--duration", "0", "-o", "/dev/null"], "at most 15 bytes");
    fails_with(&["recorder", "--cgroup", "/no/such/cgroup", "--duration", "0", "-o", "/dev/null"], "/no/such/cgroup");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn replay_grade_metrics_count_reads_by_reference() {
    root();
    // a system file, long unchanged: md5sum's reads of it go by reference
    let file = "/usr/share/common-licenses/GPL-3";
    let size = std::fs::metadata(file).expect("the GPL-3 text of Debian's base-files").len();
    let (mut rec, addr, reader, _stderr) = json_recorder_with_metrics(&["--replay-grade", "--hooks", "syscall", "--comm", "md5sum"]);
    let md5 = Command::new("md5sum").arg(file).stdout(Stdio::null()).status().unwrap();
    assert!(md5.success());
    let counter = |body: &str, name: &str| -> u64 {
        body.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = http_get(&addr, "/metrics");
        assert_eq!(code, 200);
        if counter(&body, "kprobe_recorder_file_ref_bytes_total") >= size {
            assert!(counter(&body, "kprobe_recorder_file_refs_total") >= 1, "{body}");
            assert!(!body.contains("kprobe_recorder_file_ref_misses_total{"), "no read went unfilled: {body}");
            break;
        }
        assert!(Instant::now() < deadline, "the reads by reference were never counted: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(Command::new("kill").arg("-TERM").arg(rec.id().to_string()).status().unwrap().success());
    let out = reader.join().unwrap();
    assert!(rec.wait().unwrap().success());
    // and the JSON lines carry md5sum's reads with their bytes
    let read_bytes: u64 = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("one JSON object a line"))
        .filter(|v| v["name"] == "read")
        .filter_map(|v| v["writes"].as_array().map(|w| w.iter().filter_map(|x| x["len"].as_u64()).sum::<u64>()))
        .sum();
    assert!(read_bytes >= size, "{read_bytes} bytes of reads in the JSON lines, the file has {size}");
}
