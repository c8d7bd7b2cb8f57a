//! OpenTelemetry input: the OTLP/HTTP receiver of `kprobe engine` driven by
//! a real HTTP client (curl), and malformed OTLP/JSON files given to `kprobe
//! why`: clear errors naming where and which field, never a crash.

mod engine_common;

use engine_common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn request(trace: &str, start: Value) -> Value {
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "ledger"}},
                                     {"key": "process.pid", "value": {"intValue": "4242"}}]},
        "scopeSpans": [{"scope": {"name": "t"}, "spans": [
            {"traceId": trace, "spanId": "00f067aa0ba902b7", "name": "ledger.append", "kind": 2,
             "startTimeUnixNano": start, "endTimeUnixNano": "1700000000200000000",
             "attributes": [{"key": "transaction.id", "value": {"stringValue": "txn-7"}},
                            {"key": "thread.id", "value": {"intValue": "4243"}}],
             "status": {"code": 2, "message": "deadline"}},
            {"traceId": trace, "spanId": "00f067aa0ba902b8", "parentSpanId": "00f067aa0ba902b7", "name": "wal.append",
             "startTimeUnixNano": "1700000000100000000", "endTimeUnixNano": "1700000000150000000"}]}]}]})
}

/// `curl` POSTs `body` to `url`: (HTTP status, response body).
fn post(url: &str, body: &[u8], headers: &[&str]) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--data-binary", "@-", "--max-time", "60"]);
    for h in headers {
        c.args(["-H", h]);
    }
    let mut ch = c.arg(url).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("curl");
    ch.stdin.take().unwrap().write_all(body).unwrap();
    let out = ch.wait_with_output().unwrap();
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (b, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), b.to_owned())
}

const JSON: &str = "Content-Type: application/json";

#[test]
fn receiver_accepts_otlp_json_and_rejects_malformed_requests_naming_the_field() {
    let d = tmp("otlp-rx");
    let spans_out = d.join("spans.json");
    let mut eng =
        kprobe().args(["engine", "--otlp-addr", "127.0.0.1:0", "--spans-out"]).arg(&spans_out).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = BufReader::new(eng.stderr.take().unwrap());
    let mut line = String::new();
    let t0 = Instant::now();
    while !line.contains("listening on") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0 && t0.elapsed() < Duration::from_secs(60), "engine did not start");
    }
    let url = line.split_whitespace().last().unwrap().to_owned();
    let base = url.trim_end_matches("/v1/traces").to_owned();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";

    let good = serde_json::to_vec_pretty(&request(trace, json!("1700000000000000000"))).unwrap();
    assert_eq!(post(&url, &good, &[JSON]), (200, "{}".to_owned()));
    // The protobuf-JSON mapping also allows integers for 64-bit fields, and a charset.
    let ints = serde_json::to_vec(&request(trace, json!(1700000000000000000u64))).unwrap();
    assert_eq!(post(&url, &ints, &["Content-Type: application/json; charset=utf-8"]).0, 200);
    // gzip, as exporters compress.
    let mut gz = Command::new("gzip").arg("-c").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    gz.stdin.take().unwrap().write_all(&good).unwrap();
    let gz = gz.wait_with_output().unwrap().stdout;
    assert_eq!(post(&url, &gz, &[JSON, "Content-Encoding: gzip"]).0, 200);

    // Malformed: 400, a Status naming the field.
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            serde_json::to_vec(&request("xyz", json!("1"))).unwrap(),
            "resourceSpans[0].scopeSpans[0].spans[0].traceId: expected 32 hex digits",
        ),
        (serde_json::to_vec(&request(trace, json!(true))).unwrap(), "resourceSpans[0].scopeSpans[0].spans[0].startTimeUnixNano"),
        (serde_json::to_vec(&request(trace, json!("soon"))).unwrap(), "startTimeUnixNano: expected nanoseconds"),
        (br#"{"resourceSpans": {"a": 1}}"#.to_vec(), "resourceSpans: expected an array"),
        (br#"{"resourceSpans": [{"scopeSpans": [{"spans": [7]}]}]}"#.to_vec(), "resourceSpans[0].scopeSpans[0].spans[0]"),
        (b"{\"resourceSpans\": [".to_vec(), "not valid JSON"),
    ];
    for (body, want) in &cases {
        let (code, resp) = post(&url, body, &[JSON]);
        assert_eq!(code, 400, "{resp}");
        let st: Value = serde_json::from_str(&resp).unwrap_or_else(|_| panic!("a JSON Status, got {resp}"));
        assert_eq!(st["code"], 3);
        let msg = st["message"].as_str().unwrap();
        assert!(msg.contains(want) && msg.contains("POST /v1/traces"), "{msg:?} should name {want:?}");
    }
    assert_eq!(post(&url, b"\x0a\x02", &["Content-Type: application/x-protobuf"]).0, 415);
    assert_eq!(post(&url, &good, &["Content-Type: text/plain"]).0, 415);
    assert_eq!(post(&url, b"not gzip", &[JSON, "Content-Encoding: gzip"]).0, 400);
    // Every truncation of a valid request: rejected cleanly or accepted, never a crash.
    let small = serde_json::to_vec(&request(trace, json!("1700000000000000000"))).unwrap();
    let mut accepted = 0;
    for cut in (0..small.len()).step_by(13) {
        let (code, resp) = post(&url, &small[..cut], &[JSON]);
        assert!(code == 400 || code == 200, "cut at {cut}: {code} {resp}");
        accepted += (code == 200) as usize;
    }
    let (code, health) = {
        let out = Command::new("curl").args(["-sS", "-w", "\n%{http_code}", &format!("{base}/healthz")]).output().unwrap();
        let t = String::from_utf8_lossy(&out.stdout).into_owned();
        let (b, c) = t.rsplit_once('\n').unwrap();
        (c.trim().to_owned(), b.to_owned())
    };
    assert_eq!(code, "200");
    assert!(health.contains(&format!("accepted_requests {}", 3 + accepted)), "{health}");

    Command::new("kill").args(["-INT", &eng.id().to_string()]).status().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert!(eng.wait().unwrap().success(), "{rest}");
    assert!(rest.contains(&format!("receiver accepted {} requests ({} spans)", 3 + accepted, 2 * (3 + accepted))), "{rest}");
    // What it accepted is on disk, one request per line, readable by `kprobe why --spans`.
    let text = std::fs::read_to_string(&spans_out).unwrap();
    assert_eq!(text.lines().count(), 3 + accepted);
    let spans = engine::otlp::read_file(&spans_out, "transaction.id").unwrap();
    assert_eq!(spans.len(), 2 * (3 + accepted));
    let s = &spans[0];
    assert_eq!((s.txn.as_str(), s.pid, s.tid, s.status, s.service.as_str()), ("txn-7", Some(4242), Some(4243), 2, "ledger"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn malformed_span_files_are_errors_naming_the_file_line_and_field() {
    let d = tmp("otlp-file");
    // Any recording will do: the spans are read first.
    let log = d.join("true.kpl");
    let out = kprobe().args(["record", "-o"]).arg(&log).args(["--", "/bin/true"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let line = |start: Value| serde_json::to_string(&request(trace, start)).unwrap();
    let cases = [
        (
            format!("{}\n{}\n{}\n", line(json!("1")), line(json!("2")), line(json!({"x": 1}))),
            ":3: resourceSpans[0].scopeSpans[0].spans[0].startTimeUnixNano",
        ),
        (format!("{}\n{{\"resourceSpans\": [\n", line(json!("1"))), ":2: (line 1, column"),
        (
            serde_json::to_string_pretty(&request("00000000000000000000000000000000", json!("1"))).unwrap(),
            ": resourceSpans[0].scopeSpans[0].spans[0].traceId: an all-zero id is invalid",
        ),
        ("\u{0}\u{1}garbage".to_owned(), ":1: (line 1, column"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let f = d.join(format!("bad{i}.json"));
        std::fs::write(&f, text).unwrap();
        let out = kprobe().args(["why", "txn-7", "--log"]).arg(&log).arg("--spans").arg(&f).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(&format!("{}{want}", f.display())), "case {i}: {err:?} should name {}{want}", f.display());
        assert!(!err.contains("panicked"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
