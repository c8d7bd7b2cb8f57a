//! The Kafka sink: topics `kernel.tcp`, `kernel.sched`, `kernel.syscall`,
//! `kernel.fault` (optionally prefixed), acks=all, idempotent producer, and a
//! disk spool in front of the producer ([`crate::spool`]).
//!
//! Message encoding: the value is one UTF-8 JSON object per event, the shape
//! of [`crate::sink::event_json`] (`kpl::json::event_to_json` plus `host` and
//! `container_id`); the key is `<host>/<pid>`, so one process's events stay
//! in order in one partition. The topic of each kind is given by
//! [`crate::sink::topic_of`].
//!
//! Delivery: every event is appended to the spool, then produced from it in
//! order. A message is done when the broker acknowledged it (all in-sync
//! replicas). When a delivery fails (broker down past `message.timeout.ms`,
//! a broker restarted with its producer state lost) or the producer hits a
//! fatal idempotence error, nothing new is produced; once every outstanding
//! report is in, the failed messages are produced again in id order, by a
//! new producer (a broker restarted without its state answers the old
//! producer id with UNKNOWN_PRODUCER_ID for ever). Segments of the spool are deleted once
//! fully acknowledged.

use crate::sink::{event_json, topic_of, EventMeta, Lag, Sink, TOPICS};
use crate::spool::{Message, Spool};
use anyhow::{bail, Context, Result};
use kpl::Event;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Settings of the Kafka sink.
#[derive(Clone, Debug)]
pub struct KafkaOptions {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Prefix of the topic names (e.g. `test-42.`); empty in production.
    pub topic_prefix: String,
    /// Directory of the disk spool.
    pub spool_dir: std::path::PathBuf,
    /// Create missing topics with these partitions...
    pub partitions: i32,
    /// ... this replication factor (`kafka.replicationFactor`) ...
    pub replication_factor: i32,
    /// ... and this retention (`kafka.retentionMs`).
    pub retention_ms: u64,
    /// librdkafka's `message.timeout.ms`: a message not acknowledged by then
    /// is produced again from the spool.
    pub message_timeout_ms: u32,
    /// Messages produced but not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// How long `finish` waits for the spool to drain.
    pub drain_timeout: Duration,
}

impl KafkaOptions {
    /// Defaults for `brokers`.
    pub fn new(brokers: &str, spool_dir: &Path) -> KafkaOptions {
        KafkaOptions {
            brokers: brokers.to_owned(),
            topic_prefix: String::new(),
            spool_dir: spool_dir.to_owned(),
            partitions: 6,
            replication_factor: 3,
            retention_ms: 86_400_000,
            message_timeout_ms: 10_000,
            max_in_flight: 20_000,
            drain_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Default)]
struct Reports {
    done: Vec<(u64, bool)>,
    last_error: Option<String>,
}

struct Ctx(Arc<Mutex<Reports>>);

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!("kafka: {error}: {reason}");
        self.0.lock().unwrap().last_error = Some(format!("{error}: {reason}"));
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, id: usize) {
        let mut g = self.0.lock().unwrap();
        if let Err((e, _)) = r {
            g.last_error = Some(e.to_string());
        }
        g.done.push((id as u64, r.is_ok()));
    }
}

/// See the module documentation.
pub struct KafkaSink {
    opts: KafkaOptions,
    producer: Option<BaseProducer<Ctx>>,
    reports: Arc<Mutex<Reports>>,
    spool: Spool,
    topics: Vec<String>,
    inflight: BTreeMap<u64, Message>,
    failed: BTreeSet<u64>,
    last_retry: Option<Instant>,
    delivered: u64,
    retries: u64,
    producers_made: u64,
    topic_job: Option<std::thread::JoinHandle<()>>,
    last_topic_job: Option<Instant>,
}

fn producer_config(o: &KafkaOptions) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &o.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", o.message_timeout_ms.to_string())
        .set("queue.buffering.max.messages", (o.max_in_flight * 2).to_string())
        .set("reconnect.backoff.max.ms", "1000");
    c
}

/// Creates the sink's topics that do not exist yet.
pub fn create_topics(o: &KafkaOptions) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &o.brokers)
        .create()
        .with_context(|| format!("kafka admin client for {}", o.brokers))?;
    let names: Vec<String> = TOPICS.iter().map(|t| format!("{}{t}", o.topic_prefix)).collect();
    let retention = o.retention_ms.to_string();
    let min_isr = o.replication_factor.clamp(1, 2).to_string();
    let new: Vec<NewTopic> = names
        .iter()
        .map(|n| {
            NewTopic::new(n, o.partitions, TopicReplication::Fixed(o.replication_factor))
                .set("retention.ms", &retention)
                .set("min.insync.replicas", &min_isr)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))).request_timeout(Some(Duration::from_secs(10)));
    let res = futures_executor::block_on(admin.create_topics(&new, &opts)).with_context(|| format!("creating topics on {}", o.brokers))?;
    for r in res {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!(
                "creating Kafka topic {t} on {} (replication factor {}, partitions {}): {e}",
                o.brokers,
                o.replication_factor,
                o.partitions
            ),
        }
    }
    Ok(())
}

impl KafkaSink {
    /// Opens the spool and connects (the broker may be down: messages wait
    /// in the spool). Topics are created when the broker answers.
    pub fn new(opts: KafkaOptions) -> Result<KafkaSink> {
        let spool = Spool::open(&opts.spool_dir)?;
        let topics = TOPICS.iter().map(|t| format!("{}{t}", opts.topic_prefix)).collect();
        let mut s = KafkaSink {
            opts,
            producer: None,
            reports: Arc::new(Mutex::new(Reports::default())),
            spool,
            topics,
            inflight: BTreeMap::new(),
            failed: BTreeSet::new(),
            last_retry: None,
            delivered: 0,
            retries: 0,
            producers_made: 0,
            topic_job: None,
            last_topic_job: None,
        };
        s.make_producer()?;
        Ok(s)
    }

    fn make_producer(&mut self) -> Result<()> {
        self.reports = Arc::new(Mutex::new(Reports::default()));
        let p: BaseProducer<Ctx> = producer_config(&self.opts)
            .create_with_context(Ctx(self.reports.clone()))
            .with_context(|| format!("kafka producer for {}", self.opts.brokers))?;
        self.producer = Some(p);
        self.producers_made += 1;
        Ok(())
    }

    /// Messages delivered (acknowledged) so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Deliveries fail: maybe the broker came back without our topics (a
    /// new cluster, memory storage). Creates them in the background, at
    /// most every 2 s, so the reader loop never blocks on the admin API.
    fn ensure_topics(&mut self) {
        if let Some(j) = &self.topic_job {
            if !j.is_finished() {
                return;
            }
            self.topic_job = None;
        }
        if self.last_topic_job.map(|t| t.elapsed() < Duration::from_secs(2)).unwrap_or(false) {
            return;
        }
        self.last_topic_job = Some(Instant::now());
        let o = self.opts.clone();
        self.topic_job = Some(std::thread::spawn(move || {
            if let Err(e) = create_topics(&o) {
                tracing::debug!("kafka: {e:#}");
            }
        }));
    }

    fn produce(&mut self, id: u64, m: &Message) -> bool {
        let p = self.producer.as_ref().unwrap();
        let rec = BaseRecord::with_opaque_to(&self.topics[m.topic as usize], id as usize).key(&m.key).payload(&m.payload);
        match p.send(rec) {
            Ok(()) => true,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => false,
            Err((e, _)) => {
                tracing::debug!("kafka: produce {id}: {e}");
                self.failed.insert(id);
                true
            }
        }
    }

    fn pump(&mut self) -> Result<()> {
        self.spool.flush(false)?;
        let p = self.producer.as_ref().unwrap();
        p.poll(Duration::ZERO);
        let done = std::mem::take(&mut self.reports.lock().unwrap().done);
        for (id, ok) in done {
            if !self.inflight.contains_key(&id) {
                continue;
            }
            if ok {
                self.inflight.remove(&id);
                self.failed.remove(&id);
                self.delivered += 1;
            } else {
                self.failed.insert(id);
            }
        }
        let fatal = p.client().fatal_error();
        if let Some((code, why)) = fatal {
            tracing::warn!("kafka: producer fatal error {code:?}: {why}; making a new producer and sending again");
            self.producer = None; // purges; its reports are ignored
            self.failed.extend(self.inflight.keys().copied());
            self.make_producer()?;
        }
        if !self.failed.is_empty() {
            // Wait for every outstanding report, then resend the failed ones in order.
            if self.failed.len() < self.inflight.len() {
                return Ok(());
            }
            if self.last_retry.map(|t| t.elapsed() < Duration::from_millis(500)).unwrap_or(false) {
                return Ok(());
            }
            self.last_retry = Some(Instant::now());
            self.ensure_topics();
            // A new producer (new producer id): a broker that lost its state
            // answers the old one with UNKNOWN_PRODUCER_ID forever.
            self.producer = None;
            self.make_producer()?;
            let ids: Vec<u64> = std::mem::take(&mut self.failed).into_iter().collect();
            for id in ids {
                let m = self.inflight[&id].clone();
                self.retries += 1;
                if !self.produce(id, &m) {
                    self.failed.insert(id);
                }
            }
            return Ok(());
        }
        while self.inflight.len() < self.opts.max_in_flight {
            let Some((id, m)) = self.spool.read_next()? else {
                break;
            };
            if !self.produce(id, &m) {
                self.spool.rewind(id);
                break;
            }
            self.inflight.insert(id, m);
        }
        let low = self.inflight.keys().next().copied().unwrap_or(self.spool.read_id());
        self.spool.ack_below(low)?;
        Ok(())
    }
}

impl Sink for KafkaSink {
    fn send(&mut self, ev: &Event, meta: &EventMeta) -> Result<()> {
        let topic = TOPICS.iter().position(|t| *t == topic_of(ev)).unwrap() as u8;
        let key = format!("{}/{}", meta.host, ev.pid);
        let payload = serde_json::to_vec(&event_json(ev, meta))?;
        self.spool.append(topic, key.as_bytes(), &payload)?;
        Ok(())
    }

    fn tick(&mut self) -> Result<()> {
        self.pump()
    }

    fn lag(&self) -> Lag {
        Lag {
            events: self.spool.next_id() - self.inflight.keys().next().copied().unwrap_or(self.spool.read_id()),
            spool_bytes: self.spool.bytes(),
        }
    }

    fn finish(&mut self) -> Result<String> {
        let start = Instant::now();
        loop {
            self.pump()?;
            let lag = self.lag();
            if lag.events == 0 {
                break;
            }
            if start.elapsed() > self.opts.drain_timeout {
                self.spool.flush(true)?;
                let err = self.reports.lock().unwrap().last_error.clone().unwrap_or_default();
                bail!(
                    "kafka {}: {} events not acknowledged after {:?} ({err}); they stay in the spool {} and are sent at the next start",
                    self.opts.brokers,
                    lag.events,
                    self.opts.drain_timeout,
                    self.opts.spool_dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(p) = &self.producer {
            let _ = p.flush(Duration::from_secs(5));
        }
        self.spool.clear_delivered()?;
        Ok(format!(
            "kafka {}: {} events delivered (acks=all), {} resent, {} producer(s)",
            self.opts.brokers, self.delivered, self.retries, self.producers_made
        ))
    }
}
