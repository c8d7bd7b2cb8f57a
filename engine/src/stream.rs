//! Kafka mode: the recorder's `kernel.*` topics in, `kernel.enriched` out.
//!
//! Input messages are the recorder's (`recorder::kafka`): value = the event
//! as JSON ([`kpl::json::event_to_json`] plus `host`, `container_id`), key =
//! `<host>/<pid>`. Output, one message per kernel event on `kernel.enriched`,
//! same key: a row in the shape of the seed's ClickHouse table
//! `kprobe.kernel_events` — `timestamp_ns`, `pid`, `tid`, `cpu`,
//! `event_type`, `duration_ns`, `service`, `transaction_id`, `metadata`
//! (every other field of the event, as strings) — plus the OTel context:
//! `trace_id`, `span_id`, `span_name` of the innermost span that ran on that
//! thread (its `thread.id`, else its `process.pid`) when the event happened.
//! Events outside every span are produced too, with empty context.
//!
//! Events wait in windows of `engine.windowMs`: a window is emitted once the
//! newest kernel event is a whole window past its end (spans are exported
//! when they end, so they arrive after the events they cover), or once the
//! wall clock is `grace` past that point on a quiet stream. Offsets are
//! committed (consumer group, manual commits) only up to the oldest event
//! not yet produced and acknowledged: at-least-once, nothing lost across a
//! restart.
//!
//! [`load_topics`] reads the topics from the beginning into a [`Store`] for
//! `kprobe why --kafka`.

use crate::config::EngineConfig;
use crate::otlp::Span;
use crate::receiver::SpanSink;
use crate::store::Store;
use anyhow::{Context, Result};
use foldhash::{HashMap, HashMapExt, HashSet};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The recorder's topics the engine consumes.
pub const KERNEL_TOPICS: [&str; 4] = ["kernel.tcp", "kernel.sched", "kernel.syscall", "kernel.fault"];
/// The topic the engine produces.
pub const ENRICHED_TOPIC: &str = "kernel.enriched";

/// Kafka settings of the engine.
#[derive(Clone, Debug)]
pub struct KafkaOptions {
    /// Bootstrap servers.
    pub brokers: String,
    /// Prefix of every topic name (tests); empty in production.
    pub topic_prefix: String,
    /// Consumer group.
    pub group: String,
    /// `session.timeout.ms` of the group member (a join takes about half of it on tansu).
    pub session_timeout_ms: u32,
    /// Partitions of `kernel.enriched` when the engine creates it.
    pub partitions: i32,
    /// Replication factor of `kernel.enriched` when the engine creates it (`kafka.replicationFactor`).
    pub replication_factor: i32,
    /// On a quiet stream, emit a window this long after it closed by the wall clock.
    pub grace: Duration,
    /// How long a bounded operation (flush, close) may wait.
    pub io_timeout: Duration,
    /// Stop once every assigned partition has been read to its end (a
    /// backfill; tests and benchmarks), instead of running until stopped.
    pub until_caught_up: bool,
}

impl KafkaOptions {
    /// Defaults for `brokers`: group `kprobe-engine`, 6 s sessions, one
    /// partition, replication factor 3 (the chart's), 1 s grace.
    pub fn new(brokers: &str) -> KafkaOptions {
        KafkaOptions {
            brokers: brokers.to_owned(),
            topic_prefix: String::new(),
            group: "kprobe-engine".into(),
            session_timeout_ms: 6000,
            partitions: 1,
            replication_factor: 3,
            grace: Duration::from_secs(1),
            io_timeout: Duration::from_secs(30),
            until_caught_up: false,
        }
    }
    fn topic(&self, t: &str) -> String {
        format!("{}{t}", self.topic_prefix)
    }
}

/// Ties kernel events to spans by thread (or process) and time.
#[derive(Default)]
pub struct SpanIndex {
    spans: Vec<Span>,
    seen: HashSet<([u8; 16], [u8; 8])>,
    by_tid: HashMap<u32, Lane>,
    by_pid: HashMap<u32, Lane>,
}

/// The spans of one thread or process, sorted by start.
#[derive(Default)]
struct Lane {
    ids: Vec<usize>,
    /// Longest span: how far back a span covering a time can start.
    max_ns: u64,
}

impl SpanIndex {
    /// Adds spans (duplicates of a span already known are ignored).
    pub fn add(&mut self, spans: impl IntoIterator<Item = Span>) {
        for s in spans {
            let lane = match (s.tid, s.pid) {
                (Some(t), _) => self.by_tid.entry(t).or_default(),
                (None, Some(p)) => self.by_pid.entry(p).or_default(),
                (None, None) => continue,
            };
            if !self.seen.insert((s.trace_id, s.span_id)) {
                continue;
            }
            let i = self.spans.len();
            let at = lane.ids.partition_point(|&j| self.spans[j].start_ns <= s.start_ns);
            lane.ids.insert(at, i);
            lane.max_ns = lane.max_ns.max(s.end_ns.saturating_sub(s.start_ns));
            self.spans.push(s);
        }
    }

    /// Number of spans that can be tied to events.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when no span is known.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The innermost span (latest start) covering `ts` on thread `tid`, else on process `pid`.
    pub fn at(&self, pid: u32, tid: u32, ts: u64) -> Option<&Span> {
        let pick = |l: Option<&Lane>| {
            let l = l?;
            let end = l.ids.partition_point(|&j| self.spans[j].start_ns <= ts);
            let from = ts.saturating_sub(l.max_ns);
            l.ids[..end].iter().rev().map(|&j| &self.spans[j]).take_while(|s| s.start_ns >= from).find(|s| ts <= s.end_ns)
        };
        pick(self.by_tid.get(&tid)).or_else(|| pick(self.by_pid.get(&pid)))
    }
}

/// One kernel event as a `kernel.enriched` row (see the module docs).
pub fn enrich(ev: &Value, spans: &SpanIndex) -> Result<Value> {
    let m = ev.as_object().context("expected a JSON object")?;
    let num = |k: &str| -> Result<u64> {
        match m.get(k) {
            Some(Value::Number(n)) => n.as_u64().with_context(|| format!("`{k}`: expected a non-negative integer, got {n}")),
            Some(v) => anyhow::bail!("`{k}`: expected a number, got {v}"),
            None => anyhow::bail!("`{k}`: missing"),
        }
    };
    let kind = m.get("kind").and_then(Value::as_str).context("`kind`: missing or not a string")?;
    let ts = num("ts_ns")?;
    let pid = num("pid")? as u32;
    let tid = num("tid")? as u32;
    let cpu = m.get("cpu").and_then(Value::as_u64).unwrap_or(0);
    let duration = ["duration_ns", "delay_ns", "latency_ns"].iter().find_map(|k| m.get(*k).and_then(Value::as_u64)).unwrap_or(0);
    let mut meta = Map::new();
    for (k, v) in m {
        if matches!(k.as_str(), "kind" | "ts_ns" | "pid" | "tid" | "cpu") {
            continue;
        }
        let s = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        meta.insert(k.clone(), Value::String(s));
    }
    let sp = spans.at(pid, tid, ts);
    let mut out = Map::new();
    out.insert("timestamp_ns".into(), ts.into());
    out.insert("pid".into(), pid.into());
    out.insert("tid".into(), tid.into());
    out.insert("cpu".into(), cpu.into());
    out.insert("event_type".into(), kind.into());
    out.insert("duration_ns".into(), duration.into());
    out.insert("service".into(), sp.map(|s| s.service.clone()).unwrap_or_default().into());
    out.insert("transaction_id".into(), sp.map(|s| s.txn.clone()).unwrap_or_default().into());
    out.insert("trace_id".into(), sp.map(|s| hex::encode(s.trace_id)).unwrap_or_default().into());
    out.insert("span_id".into(), sp.map(|s| hex::encode(s.span_id)).unwrap_or_default().into());
    out.insert("span_name".into(), sp.map(|s| s.name.clone()).unwrap_or_default().into());
    out.insert("metadata".into(), Value::Object(meta));
    Ok(Value::Object(out))
}

/// The `kernel.enriched` row of the fast path: borrowed from the message and the span.
#[derive(serde::Serialize)]
struct Row<'a> {
    timestamp_ns: u64,
    pid: u32,
    tid: u32,
    cpu: u64,
    event_type: Cow<'a, str>,
    duration_ns: u64,
    service: &'a str,
    transaction_id: &'a str,
    trace_id: String,
    span_id: String,
    span_name: &'a str,
    metadata: BTreeMap<&'a str, Cow<'a, str>>,
}

/// A JSON string's value, borrowed when it has no escapes.
fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    match serde_json::from_str::<&str>(raw.get()) {
        Ok(s) => Some(Cow::Borrowed(s)),
        Err(_) => serde_json::from_str::<String>(raw.get()).ok().map(Cow::Owned),
    }
}

/// True when `Value::to_string` of this JSON text is the text itself:
/// integers (and compact arrays of non-negative ones, as syscall arguments
/// are), `true`, `false`, `null`. Floats, strings, objects are re-serialized.
fn same_as_value(text: &str) -> bool {
    let int = |t: &str| !t.is_empty() && t.len() <= 18 && t.bytes().all(|b| b.is_ascii_digit()) && (t == "0" || !t.starts_with('0'));
    match text.as_bytes().first() {
        Some(b'[') => text == "[]" || (text.ends_with(']') && text.len() > 2 && text[1..text.len() - 1].split(',').all(int)),
        Some(b'-') => int(&text[1..]) && text != "-0",
        Some(_) => int(text) || matches!(text, "true" | "false" | "null"),
        None => false,
    }
}

/// [`enrich`] without a JSON tree: `None` when the message is anything but
/// a well-formed event (the caller then takes the slow path, which says why).
fn enrich_fast(msg: &[u8], spans: &SpanIndex) -> Option<(Vec<u8>, bool)> {
    let m: BTreeMap<&str, &RawValue> = serde_json::from_slice(msg).ok()?;
    let int = |k: &str| m.get(k).and_then(|r| r.get().parse::<u64>().ok());
    let event_type = json_str(m.get("kind")?)?;
    let (ts, pid, tid) = (int("ts_ns")?, int("pid")? as u32, int("tid")? as u32);
    let cpu = int("cpu").unwrap_or(0);
    let duration_ns = ["duration_ns", "delay_ns", "latency_ns"].iter().find_map(|k| int(k)).unwrap_or(0);
    let mut metadata = BTreeMap::new();
    for (k, raw) in &m {
        if matches!(*k, "kind" | "ts_ns" | "pid" | "tid" | "cpu") {
            continue;
        }
        let text = raw.get();
        let v = if text.starts_with('"') {
            json_str(raw)?
        } else if same_as_value(text) {
            Cow::Borrowed(text)
        } else {
            Cow::Owned(serde_json::from_str::<Value>(text).ok()?.to_string())
        };
        metadata.insert(*k, v);
    }
    let sp = spans.at(pid, tid, ts);
    let row = Row {
        timestamp_ns: ts,
        pid,
        tid,
        cpu,
        event_type,
        duration_ns,
        service: sp.map(|s| s.service.as_str()).unwrap_or(""),
        transaction_id: sp.map(|s| s.txn.as_str()).unwrap_or(""),
        trace_id: sp.map(|s| hex::encode(s.trace_id)).unwrap_or_default(),
        span_id: sp.map(|s| hex::encode(s.span_id)).unwrap_or_default(),
        span_name: sp.map(|s| s.name.as_str()).unwrap_or(""),
        metadata,
    };
    Some((serde_json::to_vec(&row).ok()?, !row.transaction_id.is_empty()))
}

/// One `kernel.*` message as its `kernel.enriched` row, serialized (the
/// same row as [`enrich`], without building JSON trees for well-formed
/// events), and whether it was tied to a transaction.
pub fn enrich_message(msg: &[u8], spans: &SpanIndex) -> Result<(Vec<u8>, bool)> {
    if let Some(r) = enrich_fast(msg, spans) {
        return Ok(r);
    }
    let v: Value = serde_json::from_slice(msg).context("not JSON")?;
    let row = enrich(&v, spans)?;
    let tied = !row["transaction_id"].as_str().unwrap_or("").is_empty();
    Ok((serde_json::to_vec(&row)?, tied))
}

/// The event time of a `kernel.*` message.
fn message_ts(msg: &[u8]) -> Result<u64> {
    #[derive(serde::Deserialize)]
    struct Ts {
        ts_ns: Option<Value>,
    }
    let t: Ts = serde_json::from_slice(msg).context("not a JSON object")?;
    t.ts_ns.as_ref().and_then(Value::as_u64).context("`ts_ns`: missing or not a non-negative integer")
}

/// An event waiting for its window to close.
struct Pending {
    ts: u64,
    /// The message as consumed.
    value: Vec<u8>,
    key: Vec<u8>,
    /// (topic-partition slot, offset)
    from: (usize, i64),
}

/// What the engine did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Messages consumed from `kernel.*`.
    pub consumed: u64,
    /// Messages produced to `kernel.enriched`.
    pub produced: u64,
    /// Of those, events tied to a span.
    pub with_context: u64,
    /// Messages that were not kernel events (skipped, each logged with topic, partition, offset and field).
    pub bad: u64,
    /// Spans known.
    pub spans: u64,
    /// Offset commits.
    pub commits: u64,
}

/// Per topic-partition bookkeeping: next offset consumed, offsets still pending.
struct Slot {
    topic: String,
    partition: i32,
    next: i64,
    pending: BTreeMap<i64, u32>,
    committed: i64,
}

/// The windowed enrichment, independent of Kafka (the engine's core loop).
pub struct Enricher {
    window_ns: u64,
    grace: Duration,
    /// Spans known.
    pub spans: SpanIndex,
    windows: BTreeMap<u64, Vec<Pending>>,
    newest_ts: u64,
    last_input: Instant,
}

impl Enricher {
    fn new(cfg: &EngineConfig, grace: Duration) -> Enricher {
        Enricher {
            window_ns: cfg.window_ns,
            grace,
            spans: SpanIndex::default(),
            windows: BTreeMap::new(),
            newest_ts: 0,
            last_input: Instant::now(),
        }
    }

    fn push(&mut self, p: Pending) {
        self.newest_ts = self.newest_ts.max(p.ts);
        self.last_input = Instant::now();
        self.windows.entry(p.ts / self.window_ns).or_default().push(p);
    }

    /// Windows ready to go out: a whole window behind the newest event, or
    /// everything once the input has been quiet for the grace period (or `all`).
    fn ready(&mut self, all: bool) -> Vec<Pending> {
        let quiet = self.last_input.elapsed() >= self.grace;
        let mut out = Vec::new();
        while let Some((&w, _)) = self.windows.first_key_value() {
            let end = (w + 1) * self.window_ns;
            if all || quiet || end + self.window_ns <= self.newest_ts {
                let mut v = self.windows.pop_first().unwrap().1;
                v.sort_by_key(|p| p.ts);
                out.extend(v);
            } else {
                break;
            }
        }
        out
    }

    fn pending(&self) -> usize {
        self.windows.values().map(Vec::len).sum()
    }
}

/// Client context: a subscribed topic that does not exist yet (the
/// recorder creates them when it starts) is normal, not an error.
struct Quiet;

impl rdkafka::ClientContext for Quiet {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition) {
            tracing::debug!("Kafka: {reason}");
        } else {
            tracing::warn!("Kafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

fn client_config(o: &KafkaOptions) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &o.brokers);
    c
}

/// Creates `kernel.enriched` if it does not exist.
pub fn create_enriched_topic(o: &KafkaOptions) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(o).create().context("Kafka admin client")?;
    let name = o.topic(ENRICHED_TOPIC);
    let retention = "86400000".to_owned();
    let t = NewTopic::new(&name, o.partitions, TopicReplication::Fixed(o.replication_factor)).set("retention.ms", &retention);
    let opts = AdminOptions::new().operation_timeout(Some(o.io_timeout));
    let res = futures_executor::block_on(admin.create_topics([&t], &opts)).with_context(|| format!("creating {name} on {}", o.brokers))?;
    for r in res {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("creating Kafka topic {t} on {}: {e}", o.brokers),
        }
    }
    Ok(())
}

/// Leaves the group and closes the consumer within `timeout`.
///
/// `BaseConsumer`'s drop closes a group member itself: it starts the close
/// (final rebalance, LeaveGroup) and then polls *without a bound* until
/// librdkafka reports the consumer closed — if the broker never answers
/// (tansu, after a commit, once), drop never returns. Here the close is
/// driven with a deadline instead. Either way the handle is then forgotten,
/// not dropped: after a completed close, drop would only start a second
/// close, which librdkafka refuses (an error logged at every exit); after a
/// timed-out one it would hang. The engine closes its consumer once, at exit.
fn close_consumer(c: BaseConsumer<Quiet>, timeout: Duration) {
    let t0 = Instant::now();
    match c.close_queue() {
        Ok(()) => {
            while !c.closed() {
                if t0.elapsed() > timeout {
                    tracing::warn!("the Kafka consumer did not leave its group within {timeout:?}");
                    break;
                }
                let _ = c.poll(Duration::from_millis(50));
            }
        }
        Err(e) => tracing::warn!("closing the Kafka consumer: {e}"),
    }
    std::mem::forget(c);
}

/// Runs the engine in Kafka mode until `stop` is set: consumes `kernel.*`,
/// ties events to the spans (`spans` given up front, plus whatever the
/// receiver `sink` accepts meanwhile), produces `kernel.enriched`. At stop,
/// every pending window is emitted, offsets committed, the group left.
pub fn run(o: &KafkaOptions, cfg: &EngineConfig, spans: Vec<Span>, sink: Option<Arc<SpanSink>>, stop: &AtomicBool) -> Result<Stats> {
    create_enriched_topic(o)?;
    let consumer: BaseConsumer<Quiet> = client_config(o)
        .set("group.id", &o.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", o.session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", (o.session_timeout_ms / 3).max(100).to_string())
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create_with_context(Quiet)
        .context("Kafka consumer")?;
    let inputs: Vec<String> = KERNEL_TOPICS.iter().map(|t| o.topic(t)).collect();
    consumer.subscribe(&inputs.iter().map(String::as_str).collect::<Vec<_>>()).context("subscribing to kernel.*")?;
    let producer: BaseProducer =
        client_config(o).set("acks", "all").set("enable.idempotence", "true").set("linger.ms", "5").create().context("Kafka producer")?;
    let out_topic = o.topic(ENRICHED_TOPIC);
    let r = pump(o, cfg, spans, sink, stop, &consumer, &producer, &out_topic);
    close_consumer(consumer, o.io_timeout);
    let _ = producer.flush(o.io_timeout);
    r
}

#[allow(clippy::too_many_arguments)]
fn pump(
    o: &KafkaOptions,
    cfg: &EngineConfig,
    spans: Vec<Span>,
    sink: Option<Arc<SpanSink>>,
    stop: &AtomicBool,
    consumer: &BaseConsumer<Quiet>,
    producer: &BaseProducer,
    out_topic: &str,
) -> Result<Stats> {
    let mut st = Stats::default();
    let mut en = Enricher::new(cfg, o.grace);
    en.spans.add(spans);
    let mut slots: Vec<Slot> = Vec::new();
    let mut slot_of: HashMap<(String, i32), usize> = HashMap::new();
    let mut last_commit = Instant::now();
    let mut last_check = Instant::now();
    let mut stopping = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            stopping = true;
        }
        if o.until_caught_up && !stopping && last_check.elapsed() >= Duration::from_millis(300) {
            last_check = Instant::now();
            stopping = caught_up(consumer, o.io_timeout)?;
        }
        // Consume what is there (bounded batch, so windows keep flowing).
        let t0 = Instant::now();
        while !stopping && t0.elapsed() < Duration::from_millis(200) {
            let Some(m) = consumer.poll(Duration::from_millis(50)) else { break };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!("Kafka consumer: {e}");
                    break;
                }
            };
            st.consumed += 1;
            let key = (m.topic().to_owned(), m.partition());
            let slot = *slot_of.entry(key.clone()).or_insert_with(|| {
                slots.push(Slot { topic: key.0.clone(), partition: key.1, next: 0, pending: BTreeMap::new(), committed: -1 });
                slots.len() - 1
            });
            slots[slot].next = slots[slot].next.max(m.offset() + 1);
            let payload = m.payload().unwrap_or_default();
            match message_ts(payload) {
                Ok(ts) => {
                    let value = payload.to_vec();
                    *slots[slot].pending.entry(m.offset()).or_default() += 1;
                    en.push(Pending { ts, value, key: m.key().unwrap_or_default().to_vec(), from: (slot, m.offset()) });
                }
                Err(e) => {
                    st.bad += 1;
                    tracing::warn!("{} [{}] offset {}: not a kernel event: {e:#}", m.topic(), m.partition(), m.offset());
                }
            }
        }
        if let Some(s) = &sink {
            en.spans.add(s.take());
        }
        // Emit closed windows.
        let ready = en.ready(stopping);
        if !ready.is_empty() {
            let mut done: Vec<(usize, i64)> = Vec::with_capacity(ready.len());
            for p in ready {
                let (payload, tied) = match enrich_message(&p.value, &en.spans) {
                    Ok(r) => r,
                    Err(e) => {
                        st.bad += 1;
                        let s = &slots[p.from.0];
                        tracing::warn!("{} [{}] offset {}: not a kernel event: {e:#}", s.topic, s.partition, p.from.1);
                        done.push(p.from);
                        continue;
                    }
                };
                if tied {
                    st.with_context += 1;
                }
                let mut rec = BaseRecord::<[u8], [u8]>::to(out_topic).key(&p.key[..]).payload(&payload[..]);
                loop {
                    match producer.send(rec) {
                        Ok(()) => break,
                        Err((e, r)) => {
                            if !matches!(e.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)) {
                                return Err(e).context("producing to kernel.enriched");
                            }
                            producer.poll(Duration::from_millis(10));
                            rec = r;
                        }
                    }
                }
                st.produced += 1;
                done.push(p.from);
            }
            // Acknowledged before the offsets move.
            producer.flush(o.io_timeout).context("kernel.enriched: messages not acknowledged")?;
            for (slot, off) in done {
                let p = &mut slots[slot].pending;
                if let Some(n) = p.get_mut(&off) {
                    *n -= 1;
                    if *n == 0 {
                        p.remove(&off);
                    }
                }
            }
        }
        producer.poll(Duration::ZERO);
        if stopping || last_commit.elapsed() >= Duration::from_secs(1) {
            let mut tpl = TopicPartitionList::new();
            for s in &mut slots {
                let upto = s.pending.keys().next().copied().unwrap_or(s.next);
                if upto > s.committed {
                    tpl.add_partition_offset(&s.topic, s.partition, Offset::Offset(upto))?;
                    s.committed = upto;
                }
            }
            if tpl.count() > 0 {
                consumer.commit(&tpl, CommitMode::Sync).context("committing offsets")?;
                st.commits += 1;
            }
            last_commit = Instant::now();
        }
        if stopping && en.pending() == 0 {
            st.spans = en.spans.len() as u64;
            return Ok(st);
        }
    }
}

/// True when the consumer has partitions assigned and has read each to its
/// high watermark.
fn caught_up(c: &BaseConsumer<Quiet>, timeout: Duration) -> Result<bool> {
    let assigned = c.assignment()?;
    if assigned.count() == 0 {
        return Ok(false);
    }
    let pos = c.position()?;
    for e in pos.elements() {
        let (_, hi) = c.fetch_watermarks(e.topic(), e.partition(), timeout)?;
        let at = match e.offset() {
            Offset::Offset(n) => n,
            // Nothing fetched yet: where the group left off, if it committed.
            _ => {
                let mut one = TopicPartitionList::new();
                one.add_partition(e.topic(), e.partition());
                let committed = c.committed_offsets(one, timeout)?;
                match committed.elements().first().map(|x| x.offset()) {
                    Some(Offset::Offset(n)) => n,
                    _ => c.fetch_watermarks(e.topic(), e.partition(), timeout)?.0,
                }
            }
        };
        if at < hi {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Reads `kernel.*` (from the beginning to the end as of now) into `store`
/// as one source named `kafka:<brokers>/<prefix>kernel.*`; no consumer
/// group, nothing committed. Returns the events read.
pub fn load_topics(o: &KafkaOptions, store: &mut Store) -> Result<u64> {
    // assign() needs a group id; nothing is committed under it.
    let consumer: BaseConsumer<Quiet> = client_config(o)
        .set("group.id", format!("kprobe-why-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create_with_context(Quiet)
        .context("Kafka consumer")?;
    let r = read_all(o, store, &consumer);
    close_consumer(consumer, Duration::from_secs(5));
    r
}

fn read_all(o: &KafkaOptions, store: &mut Store, consumer: &BaseConsumer<Quiet>) -> Result<u64> {
    let mut tpl = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    for t in KERNEL_TOPICS {
        let name = o.topic(t);
        let md = consumer.fetch_metadata(Some(&name), o.io_timeout).with_context(|| format!("Kafka metadata of {name}"))?;
        for mt in md.topics() {
            if mt.error().is_some() {
                continue; // topic not there: no events of that kind
            }
            for p in mt.partitions() {
                let (lo, hi) = consumer.fetch_watermarks(&name, p.id(), o.io_timeout).with_context(|| format!("{name} [{}]", p.id()))?;
                if hi > lo {
                    tpl.add_partition_offset(&name, p.id(), Offset::Beginning)?;
                    ends.insert((name.clone(), p.id()), hi);
                }
            }
        }
    }
    let src = store.add_source(&format!("kafka:{}/{}kernel.*", o.brokers, o.topic_prefix), "ebpf");
    if ends.is_empty() {
        return Ok(0);
    }
    consumer.assign(&tpl)?;
    let mut n = 0u64;
    let mut seq = 0u64;
    let deadline = Instant::now() + o.io_timeout.max(Duration::from_secs(60));
    while !ends.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "reading kernel.* from {}: timed out ({} partitions unfinished)", o.brokers, ends.len());
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m.context("reading kernel.*")?;
        let k = (m.topic().to_owned(), m.partition());
        if let Some(&hi) = ends.get(&k) {
            if m.offset() + 1 >= hi {
                ends.remove(&k);
            }
        }
        let v: Value = match serde_json::from_slice(m.payload().unwrap_or_default()) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("{} [{}] offset {}: not JSON: {e}", m.topic(), m.partition(), m.offset());
                continue;
            }
        };
        match crate::json::event_from_json(&v) {
            Ok(Some(mut ev)) => {
                // Kafka offsets are per partition: number events in arrival order instead.
                ev.seq = seq;
                seq += 1;
                store.add_event(src, ev);
                n += 1;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("{} [{}] offset {}: {e:#}", m.topic(), m.partition(), m.offset()),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(tid: u32, a: u64, b: u64, txn: &str, id: u8) -> Span {
        Span {
            trace_id: [id; 16],
            span_id: [id; 8],
            parent_span_id: [0; 8],
            name: format!("s{id}"),
            service: "ledger".into(),
            kind: 2,
            start_ns: a,
            end_ns: b,
            status: 0,
            status_message: String::new(),
            pid: Some(10),
            tid: Some(tid),
            txn: txn.into(),
        }
    }

    #[test]
    fn events_get_the_innermost_span_of_their_thread() {
        let mut ix = SpanIndex::default();
        ix.add([span(11, 100, 500, "t1", 1), span(11, 200, 300, "t1", 2), span(12, 0, 1000, "t2", 3)]);
        ix.add([span(11, 100, 500, "t1", 1)]);
        assert_eq!(ix.len(), 3);
        let ev =
            serde_json::json!({"kind": "syscall", "ts_ns": 250, "pid": 10, "tid": 11, "cpu": 1, "nr": 1, "duration_ns": 40, "host": "h"});
        let r = enrich(&ev, &ix).unwrap();
        assert_eq!(r["transaction_id"], "t1");
        assert_eq!(r["span_name"], "s2");
        assert_eq!(r["duration_ns"], 40);
        assert_eq!(r["event_type"], "syscall");
        assert_eq!(r["metadata"]["host"], "h");
        assert_eq!(r["metadata"]["nr"], "1");
        let ev = serde_json::json!({"kind": "syscall", "ts_ns": 600, "pid": 10, "tid": 11});
        assert_eq!(enrich(&ev, &ix).unwrap()["transaction_id"], "");
        let bad = serde_json::json!({"kind": "syscall", "ts_ns": "x", "pid": 10, "tid": 11});
        assert!(enrich(&bad, &ix).unwrap_err().to_string().contains("ts_ns"));
    }

    #[test]
    fn the_fast_path_gives_the_rows_of_the_json_tree_path() {
        let mut ix = SpanIndex::default();
        let mut msgs: Vec<Vec<u8>> = Vec::new();
        for ev in kpl::synth::Synth::new(7).take(20_000) {
            if let kpl::EventBody::Span(r) = &ev.body {
                ix.add([Span::from_ref(r, ev.pid, ev.tid)]);
            }
            let mut v = kpl::json::event_to_json(&ev, None);
            v["host"] = "node-1".into();
            msgs.push(serde_json::to_vec(&v).unwrap());
        }
        // Escapes, whitespace, odd numbers: still the same row (or the slow path's error).
        for m in [
            r#"{"kind": "sched_switch", "ts_ns": 5, "pid": 1, "tid": 2, "cpu": 1, "prev_comm": "a\"b\\\u00e9", "args": [1, 2,  3]}"#,
            r#"{"kind":"x\n","ts_ns":5,"pid":1,"tid":2,"cpu":1.5,"k\u0041":{"a": [true, null]},"duration_ns":7}"#,
            r#"{"kind":"x","ts_ns":5,"pid":1,"tid":2,"delay_ns":9,"v":-3,"f":2.50}"#,
        ] {
            msgs.push(m.as_bytes().to_vec());
        }
        let mut tied = 0;
        for m in &msgs {
            let (fast, t) = enrich_message(m, &ix).unwrap();
            let slow = enrich(&serde_json::from_slice(m).unwrap(), &ix).unwrap();
            let fast: Value = serde_json::from_slice(&fast).unwrap();
            assert_eq!(fast, slow, "{}", String::from_utf8_lossy(m));
            tied += usize::from(t);
        }
        assert!(tied > 100, "{tied} rows tied to a span");
        for (bad, field) in [(&br#"[1]"#[..], "object"), (br#"{"kind":"x","ts_ns":-1,"pid":1,"tid":2}"#, "ts_ns"), (b"nope", "not JSON")] {
            let e = format!("{:#}", enrich_message(bad, &ix).unwrap_err());
            assert!(e.contains(field), "{e}");
        }
        assert!(message_ts(br#"{"ts_ns": 12, "x": [1]}"#).unwrap() == 12 && message_ts(br#"{"ts_ns": "1"}"#).is_err());
        for (t, same) in [("12", true), ("-3", true), ("[1,22,0]", true), ("[]", true), ("null", true), ("2.50", false), ("-0", false)] {
            assert_eq!(same_as_value(t), same, "{t}");
        }
        for t in ["[1, 2]", "[-1]", "1e3", "[01]", "{}", "99999999999999999999"] {
            assert!(!same_as_value(t), "{t}");
        }
    }

    #[test]
    fn span_lookup_matches_a_scan_of_every_span() {
        // Spans added out of order, nested, one long span covering many short ones.
        let mut all = vec![span(11, 0, 100_000, "long", 200)];
        for i in 0..150u64 {
            let a = (i * 7919) % 99_000;
            all.push(span(11, a, a + 300 + (i % 5) * 100, "short", i as u8));
        }
        let mut ix = SpanIndex::default();
        ix.add(all.iter().rev().cloned());
        for ts in (0..101_000).step_by(37) {
            let want = all
                .iter()
                .filter(|s| ix.seen.contains(&(s.trace_id, s.span_id)) && s.start_ns <= ts && ts <= s.end_ns)
                .map(|s| s.start_ns)
                .max();
            assert_eq!(ix.at(10, 11, ts).map(|s| s.start_ns), want, "at {ts}");
        }
    }

    #[test]
    fn windows_close_a_window_after_their_end() {
        let cfg = EngineConfig { window_ns: 100, ..EngineConfig::default() };
        let mut en = Enricher::new(&cfg, Duration::from_secs(3600));
        let p = |ts| Pending { ts, value: Vec::new(), key: vec![], from: (0, 0) };
        en.push(p(10));
        en.push(p(150));
        assert!(en.ready(false).is_empty());
        en.push(p(199));
        assert!(en.ready(false).is_empty());
        en.push(p(200));
        assert_eq!(en.ready(false).iter().map(|p| p.ts).collect::<Vec<_>>(), vec![10]);
        assert_eq!(en.ready(true).iter().map(|p| p.ts).collect::<Vec<_>>(), vec![150, 199, 200]);
        assert_eq!(en.pending(), 0);
    }
}
