//! Where events go: a `.kpl` file (default), JSON lines on stdout, Kafka
//! ([`crate::kafka`]).

use anyhow::{Context, Result};
use kpl::{Event, EventBody, Kind, Metadata, Writer};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Facts about an event that are not in the event itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct EventMeta<'a> {
    /// Container id of the event's cgroup (empty when none).
    pub container_id: &'a str,
    /// Host name of the recording node.
    pub host: &'a str,
}

/// How far a sink is behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lag {
    /// Events accepted but not yet durably delivered.
    pub events: u64,
    /// Bytes waiting in the disk spool.
    pub spool_bytes: u64,
}

/// A destination for recorded events.
pub trait Sink {
    /// Takes one event (its `seq` is already assigned).
    fn send(&mut self, ev: &Event, meta: &EventMeta) -> Result<()>;
    /// Called once per reader cycle: deliver, flush, retry.
    fn tick(&mut self) -> Result<()> {
        Ok(())
    }
    /// Keeps a file's content in the log's file store (for replay on
    /// another machine); `None` when the sink has no file store.
    fn store_file(&mut self, _content: &[u8]) -> Result<Option<kpl::FileHash>> {
        Ok(None)
    }
    /// How far behind the sink is.
    fn lag(&self) -> Lag {
        Lag::default()
    }
    /// Flushes and closes; returns a one-line report.
    fn finish(&mut self) -> Result<String>;
}

/// The JSON object of an event in the JSON-lines and Kafka sinks:
/// [`kpl::json::event_to_json`] plus `host` and, when the cgroup names a
/// container, `container_id`.
pub fn event_json(ev: &Event, meta: &EventMeta) -> Value {
    let mut v = kpl::json::event_to_json(ev, None);
    if let Value::Object(m) = &mut v {
        if !meta.host.is_empty() {
            m.insert("host".into(), meta.host.into());
        }
        if !meta.container_id.is_empty() {
            m.insert("container_id".into(), meta.container_id.into());
        }
    }
    v
}

/// Writes a `.kpl` log.
pub struct KplSink {
    path: PathBuf,
    w: Option<Writer>,
    events: u64,
}

impl KplSink {
    /// Creates `path` with recorder metadata.
    pub fn create(path: &Path, command: Vec<String>) -> Result<KplSink> {
        let mut meta = Metadata::for_this_host("ebpf", command);
        meta.extra.extend(crate::clock_facts());
        let w = Writer::create(path, &meta).with_context(|| format!("creating {}", path.display()))?;
        Ok(KplSink { path: path.to_owned(), w: Some(w), events: 0 })
    }
}

impl Sink for KplSink {
    fn send(&mut self, ev: &Event, _meta: &EventMeta) -> Result<()> {
        let w = self.w.as_mut().context("kpl sink already finished")?;
        w.append(ev.clone()).with_context(|| format!("writing {}", self.path.display()))?;
        self.events += 1;
        Ok(())
    }
    fn store_file(&mut self, content: &[u8]) -> Result<Option<kpl::FileHash>> {
        let w = self.w.as_mut().context("kpl sink already finished")?;
        Ok(Some(w.store_file(content).with_context(|| format!("writing {}", self.path.display()))?))
    }
    fn finish(&mut self) -> Result<String> {
        if let Some(w) = self.w.take() {
            let (_, st) = w.finish().with_context(|| format!("finishing {}", self.path.display()))?;
            return Ok(format!("{}: {} events, {} bytes", self.path.display(), st.events, st.bytes));
        }
        Ok(String::new())
    }
}

/// JSON lines on stdout (or any writer).
pub struct JsonLinesSink<W: Write> {
    out: std::io::BufWriter<W>,
    events: u64,
}

impl<W: Write> JsonLinesSink<W> {
    /// A sink writing to `out`.
    pub fn new(out: W) -> Self {
        JsonLinesSink { out: std::io::BufWriter::with_capacity(1 << 16, out), events: 0 }
    }
}

impl<W: Write> Sink for JsonLinesSink<W> {
    fn send(&mut self, ev: &Event, meta: &EventMeta) -> Result<()> {
        serde_json::to_writer(&mut self.out, &event_json(ev, meta))?;
        self.out.write_all(b"\n").context("writing JSON lines")?;
        self.events += 1;
        Ok(())
    }
    fn tick(&mut self) -> Result<()> {
        self.out.flush().context("writing JSON lines")
    }
    fn finish(&mut self) -> Result<String> {
        self.out.flush().context("writing JSON lines")?;
        Ok(format!("stdout: {} events", self.events))
    }
}

/// The Kafka topic (without prefix) of an event: `kernel.sched`,
/// `kernel.tcp`, `kernel.fault` or `kernel.syscall` (syscalls, process
/// lifecycle, cgroups, notes). `Lost` events go to the topic of the hook
/// that lost them.
pub fn topic_of(ev: &Event) -> &'static str {
    match ev.kind() {
        Kind::SchedSwitch | Kind::SchedWakeup | Kind::SchedDelay | Kind::SchedMigrate => "kernel.sched",
        Kind::TcpSend | Kind::TcpRecv | Kind::TcpRetransmit | Kind::TcpState => "kernel.tcp",
        Kind::PageFault => "kernel.fault",
        Kind::Lost => match &ev.body {
            EventBody::Lost(l) if l.source == "sched" => "kernel.sched",
            EventBody::Lost(l) if l.source == "tcp" => "kernel.tcp",
            EventBody::Lost(l) if l.source == "fault" => "kernel.fault",
            _ => "kernel.syscall",
        },
        _ => "kernel.syscall",
    }
}

/// The four topics the recorder produces to.
pub const TOPICS: [&str; 4] = ["kernel.tcp", "kernel.sched", "kernel.syscall", "kernel.fault"];
