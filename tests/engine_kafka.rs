//! The engine in Kafka mode against the real broker (tansu, from
//! `scripts/services.sh start`, `$KPROBE_KAFKA`): the eBPF recorder streams
//! a real incident into `kernel.*`, the services export their spans to the
//! engine's OTLP/HTTP receiver, `kprobe engine` produces `kernel.enriched`
//! (every event once, with its OTel context), commits its offsets (a
//! restart reads nothing again), and `kprobe why --kafka` explains the
//! incident from the topics as it does from a `.kpl`.

mod engine_common;

use engine_common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use recorder::sink::{EventMeta, Sink};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A plain consumer (assigned partitions, no group) for checking topics.
fn reader(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("kptest-reader-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("kafka consumer")
}

/// Events the recorder says it delivered (its exit report). Not the topics'
/// high watermarks: tansu 0.1 advances them per record batch, not per record.
fn delivered(dir: &std::path::Path) -> i64 {
    let log = std::fs::read_to_string(dir.join("recorder.log")).unwrap();
    let l = log.lines().find(|l| l.contains("events delivered")).unwrap_or_else(|| panic!("recorder report: {log}"));
    let at = l.find(" events delivered").unwrap();
    l[..at].split_whitespace().last().unwrap().parse().unwrap()
}

/// The first `want` messages of `topic` (partition 0) as JSON, then any more within a second.
fn read_all(c: &BaseConsumer, topic: &str, want: i64) -> Vec<Value> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let t0 = Instant::now();
    while (out.len() as i64) < want {
        assert!(t0.elapsed() < Duration::from_secs(120), "read {} of {want} messages of {topic}", out.len());
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(serde_json::from_slice(m.payload().unwrap()).expect("JSON message"));
        }
    }
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_secs(1) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(serde_json::from_slice(m.payload().unwrap()).expect("JSON message"));
        }
    }
    out
}

/// `kprobe engine` running, its stderr collected.
struct Engine {
    child: Child,
    err: Arc<Mutex<Vec<String>>>,
}

impl Engine {
    fn start(args: &[&str]) -> Engine {
        let mut child = kprobe().arg("engine").args(args).stderr(Stdio::piped()).spawn().unwrap();
        let err = Arc::new(Mutex::new(Vec::new()));
        let (e2, pipe) = (err.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for l in BufReader::new(pipe).lines().map_while(Result::ok) {
                e2.lock().unwrap().push(l);
            }
        });
        Engine { child, err }
    }
    fn wait_line(&self, pat: &str) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(l) = self.err.lock().unwrap().iter().find(|l| l.contains(pat)) {
                return l.clone();
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "kprobe engine never said {pat:?}: {:?}", self.err.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fn interrupt(&mut self) -> Vec<String> {
        std::process::Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().unwrap();
        let st = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let lines = self.err.lock().unwrap().clone();
        assert!(st.success(), "kprobe engine failed: {lines:?}");
        lines
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `N` from `... N <phrase> ...` in the engine's summary line.
fn figure(lines: &[String], phrase: &str) -> u64 {
    let l = lines.iter().find(|l| l.contains("events consumed")).unwrap_or_else(|| panic!("no summary: {lines:?}"));
    let at = l.find(phrase).unwrap_or_else(|| panic!("{phrase} in {l}"));
    let n = l[..at].split_whitespace().last().unwrap_or_default().trim_start_matches('(');
    n.parse().unwrap_or_else(|_| panic!("{phrase} in {l}"))
}

#[test]
fn engine_enriches_a_live_incident_and_why_reads_the_topics() {
    root();
    let brokers = kafka();
    let p = unique_prefix("live");
    let d = tmp("kafka-live");
    let received = d.join("received-spans.json");
    let group = format!("{p}engine");
    let common =
        ["--kafka", &brokers, "--topic-prefix", &p, "--group", &group, "--session-timeout-ms", "1000", "--kafka-replication-factor", "1"];
    let eng = Engine::start(
        &[&common[..], &["--otlp-addr", "127.0.0.1:0", "--spans-out", received.to_str().unwrap(), "--grace-ms", "300"]].concat(),
    );
    let line = eng.wait_line("listening on ");
    let url = line.split_whitespace().last().unwrap().to_owned();
    // The recorder streams to Kafka, the services export spans to the engine.
    let env = incident("sched", &d, &["--kafka", &brokers, "--topic-prefix", &p, "--spans-url", &url]);
    let total = delivered(&d);
    assert!(total > 500, "the recorder streamed only {total} events");
    let c = reader(&brokers);
    let out_topic = format!("{p}kernel.enriched");
    let rows = read_all(&c, &out_topic, total);
    let mut eng = eng;
    let lines = eng.interrupt();
    assert_eq!(figure(&lines, "events consumed") as i64, total, "{lines:?}");
    assert_eq!(figure(&lines, "enriched events produced") as i64, total, "{lines:?}");
    assert_eq!(figure(&lines, "bad messages"), 0, "{lines:?}");
    // A restart of the same group reads nothing again: offsets were committed.
    let again = kprobe().arg("engine").args(common).arg("--until-caught-up").output().unwrap();
    let again_err: Vec<String> = String::from_utf8_lossy(&again.stderr).lines().map(str::to_owned).collect();
    assert!(again.status.success(), "{again_err:?}");
    assert_eq!(figure(&again_err, "events consumed"), 0, "{again_err:?}");
    // Every event once, as a kernel_events row; the ledger's WAL fdatasync carries its transaction.
    assert_eq!(rows.len() as i64, total, "every event once");
    for r in &rows {
        for k in ["timestamp_ns", "pid", "tid", "cpu", "event_type", "duration_ns", "service", "transaction_id", "metadata"] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
    }
    let ledger: u64 = env["LEDGER_PID"].parse().unwrap();
    let txn = &env["TXN"];
    let fsync = rows
        .iter()
        .find(|r| r["pid"] == ledger && r["event_type"] == "syscall" && r["metadata"]["nr"] == "75" && r["transaction_id"] == txn.as_str());
    let fsync = fsync.unwrap_or_else(|| panic!("no fdatasync of the ledger tied to {txn}"));
    assert_eq!((fsync["service"].as_str(), fsync["span_name"].as_str()), (Some("ledger"), Some("wal.append")), "{fsync}");
    assert_eq!(fsync["trace_id"].as_str().unwrap().len(), 32);
    let hog: u64 = env["CULPRIT_PID"].parse().unwrap();
    assert!(rows.iter().any(|r| r["pid"] == hog && r["transaction_id"] == ""), "the hog's events carry no transaction");
    assert_eq!(rows.iter().filter(|r| r["transaction_id"] != "").count() as u64, figure(&lines, "with a transaction"));
    // kprobe why from the topics (and the spans the receiver took).
    let g =
        why(txn, &["--kafka".as_ref(), brokers.as_ref(), "--topic-prefix".as_ref(), p.as_ref(), "--spans".as_ref(), received.as_os_str()]);
    let rc = root_cause(&g).expect("a root cause");
    assert_eq!((rc.0.as_str(), rc.1, rc.2.as_str()), ("sched_delay", hog, "incident_hog"), "{rc:?}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn why_from_kafka_answers_as_from_the_log_and_bad_messages_are_skipped() {
    root();
    let brokers = kafka();
    let p = unique_prefix("same");
    let d = tmp("kafka-same");
    let env = incident("sched", &d, &[]);
    // The recording's events through the recorder's own Kafka sink (same encoding, key, topics).
    let mut o = recorder::kafka::KafkaOptions::new(&brokers, &d.join("spool"));
    o.topic_prefix = p.clone();
    o.partitions = 1;
    o.replication_factor = 1;
    recorder::kafka::create_topics(&o).unwrap();
    let mut sink = recorder::kafka::KafkaSink::new(o).unwrap();
    let r = kpl::Reader::open(d.join("kernel.kpl")).unwrap();
    let meta = EventMeta { container_id: "", host: "testhost" };
    let mut n = 0i64;
    for ev in r.events() {
        sink.send(&ev.unwrap(), &meta).unwrap();
        n += 1;
        if n % 1000 == 0 {
            sink.tick().unwrap();
        }
    }
    sink.finish().unwrap();
    // Not a kernel event: the engine must skip it, say so, and go on.
    let prod: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    prod.send(BaseRecord::<str, str>::to(&format!("{p}kernel.syscall")).key("x").payload("{\"kind\": \"syscall\", \"ts_ns\": \"soon\"}"))
        .unwrap();
    prod.flush(Duration::from_secs(30)).unwrap();

    let txn = &env["TXN"];
    let spans = d.join("spans.json");
    let from_log = why(txn, &["--log".as_ref(), d.join("kernel.kpl").as_os_str(), "--spans".as_ref(), spans.as_os_str()]);
    let from_kafka =
        why(txn, &["--kafka".as_ref(), brokers.as_ref(), "--topic-prefix".as_ref(), p.as_ref(), "--spans".as_ref(), spans.as_os_str()]);
    assert_eq!(shape(&from_kafka), shape(&from_log));
    assert_eq!(from_kafka["causes"], from_log["causes"]);
    assert_eq!(root_cause(&from_kafka).unwrap().2, "incident_hog");

    let out = kprobe()
        .args(["engine", "--kafka", &brokers, "--topic-prefix", &p, "--group", &format!("{p}g"), "--session-timeout-ms", "1000"])
        .args(["--kafka-replication-factor", "1", "--until-caught-up", "--spans"])
        .arg(&spans)
        .output()
        .unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stderr).lines().map(str::to_owned).collect();
    assert!(out.status.success(), "{lines:?}");
    let c = reader(&brokers);
    let total = n + 1;
    assert_eq!(figure(&lines, "events consumed") as i64, total, "{lines:?}");
    assert_eq!(figure(&lines, "bad messages"), 1, "{lines:?}");
    assert_eq!(figure(&lines, "enriched events produced") as i64, total - 1, "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("not a kernel event") && l.contains("ts_ns")), "{lines:?}");
    assert_eq!(read_all(&c, &format!("{p}kernel.enriched"), total - 1).len() as i64, total - 1);
    let _ = std::fs::remove_dir_all(&d);
}
