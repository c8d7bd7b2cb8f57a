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
    /// Takes one event by value (sinks that keep events override it to
    /// avoid copying their buffers).
    fn send_owned(&mut self, ev: Event, meta: &EventMeta) -> Result<()> {
        self.send(&ev, meta)
    }
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

/// Writes a `.kpl` log. The writer (encoding, zstd, file I/O) runs on a
/// thread of its own, so the reader keeps draining the ring buffer while
/// a block is compressed; events go to it in batches (one per reader
/// cycle, or per MiB: no thread hand-off per event) through a bounded
/// queue ([`Backlog::queue`] batches; a full queue makes the reader wait,
/// and then the ring buffer counts drops). The writer yields the CPU to
/// the recorded programs while its queue is short: it runs at nice 19
/// while at most [`KPL_CALM`] batches wait, and at the recorder's own
/// priority once [`Backlog::behind`] do, until it has caught up again (a
/// writer kept at a low priority throughout fell behind on a busy machine
/// and the ring dropped records). Only when the recorder may raise the
/// priority back (root); otherwise it keeps the recorder's priority.
pub struct KplSink {
    path: PathBuf,
    tx: Option<std::sync::mpsc::SyncSender<Vec<Job>>>,
    batch: Vec<Job>,
    batch_bytes: usize,
    worker: Option<std::thread::JoinHandle<Result<kpl::WriteStats>>>,
    files: std::collections::HashSet<kpl::FileHash>,
    events: u64,
    /// Events the writer thread has written.
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Batches handed to the writer, and those it has finished.
    sent: u64,
    done: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The writer thread's id (0 until it has started), and whether it runs at the low priority now.
    writer_tid: std::sync::Arc<std::sync::atomic::AtomicI32>,
    low: bool,
    /// The recorder's own nice value.
    normal: i32,
    backlog: Backlog,
}

/// How much the writer thread of a [`KplSink`] may fall behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backlog {
    /// Batches (each about a MiB at most) the queue holds.
    pub queue: usize,
    /// Waiting batches at which the writer goes back to the recorder's priority.
    pub behind: u64,
}

impl Backlog {
    /// A node's recorder (`kprobe recorder`): at most 64 batches wait and
    /// the writer takes its share of the CPU from 16 on, which keeps the
    /// daemon's memory small under a sustained load.
    pub const DAEMON: Backlog = Backlog { queue: 64, behind: 16 };
    /// One program recorded from its start to its exit (`kprobe record
    /// --backend ebpf`): up to 256 batches wait and the writer takes its
    /// share of the CPU only from 192 on, so a program's burst of reads
    /// (grep over a tree: 110 MiB in 60 ms) is compressed after it, instead
    /// of beside it on the CPUs it needs (at 16 the writer came back to
    /// the recorder's priority within grep's first milliseconds and took a
    /// CPU from it in half the runs).
    pub const PROGRAM: Backlog = Backlog { queue: 256, behind: 192 };
}

/// Work for the writer thread of a [`KplSink`].
enum Job {
    Event(Event),
    File(Vec<u8>),
}

/// Bytes of buffers at which a batch goes to the writer before the reader's cycle ends.
const KPL_BATCH_BYTES: usize = 1 << 20;
/// Waiting batches at which the writer yields again.
pub const KPL_CALM: u64 = 2;
impl KplSink {
    /// Creates `path` with recorder metadata, for a node's recorder ([`Backlog::DAEMON`]).
    pub fn create(path: &Path, command: Vec<String>) -> Result<KplSink> {
        KplSink::create_with(path, command, Backlog::DAEMON)
    }

    /// Creates `path` with recorder metadata; the writer may fall `backlog` behind.
    pub fn create_with(path: &Path, command: Vec<String>, backlog: Backlog) -> Result<KplSink> {
        let mut meta = Metadata::for_this_host("ebpf", command);
        meta.extra.extend(crate::clock_facts());
        let mut w = Writer::create(path, &meta).with_context(|| format!("creating {}", path.display()))?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Job>>(backlog.queue.max(1));
        let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let done_batches = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer_tid = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
        // yield only when the priority can be raised back
        let adaptive = crate::sys::is_root();
        let normal = crate::sys::nice_of(crate::sys::gettid());
        let (name, done, batches, tid_out) = (path.to_owned(), written.clone(), done_batches.clone(), writer_tid.clone());
        let worker = std::thread::Builder::new()
            .name("kpl-writer".into())
            .spawn(move || -> Result<kpl::WriteStats> {
                let tid = crate::sys::gettid();
                if adaptive && crate::sys::set_nice(tid, crate::LOW_NICE.max(normal)) {
                    tid_out.store(tid, std::sync::atomic::Ordering::Release);
                }
                for batch in rx {
                    for job in batch {
                        match job {
                            Job::Event(ev) => {
                                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                w.append(ev).map(|_| ())
                            }
                            Job::File(b) => w.store_file(&b).map(|_| ()),
                        }
                        .with_context(|| format!("writing {}", name.display()))?;
                    }
                    batches.fetch_add(1, std::sync::atomic::Ordering::Release);
                }
                let (_, st) = w.finish().with_context(|| format!("finishing {}", name.display()))?;
                Ok(st)
            })
            .context("starting the log writer thread")?;
        Ok(KplSink {
            path: path.to_owned(),
            tx: Some(tx),
            batch: Vec::new(),
            batch_bytes: 0,
            worker: Some(worker),
            files: Default::default(),
            events: 0,
            written,
            sent: 0,
            done: done_batches,
            writer_tid,
            low: true,
            normal,
            backlog,
        })
    }

    /// Gives the writer the recorder's priority while it is behind, and the
    /// low one again once it has caught up.
    fn pace_writer(&mut self) {
        let tid = self.writer_tid.load(std::sync::atomic::Ordering::Acquire);
        if tid == 0 {
            return;
        }
        let waiting = self.sent.saturating_sub(self.done.load(std::sync::atomic::Ordering::Acquire));
        if self.low && waiting >= self.backlog.behind {
            self.low = !crate::sys::set_nice(tid, self.normal);
        } else if !self.low && waiting <= KPL_CALM {
            self.low = crate::sys::set_nice(tid, crate::LOW_NICE.max(self.normal));
        }
    }

    fn queue(&mut self, job: Job, bytes: usize) -> Result<()> {
        self.batch.push(job);
        self.batch_bytes += bytes;
        if self.batch_bytes >= KPL_BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands the batch to the writer thread.
    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch_bytes = 0;
        self.sent += 1;
        self.pace_writer();
        let tx = self.tx.as_ref().context("kpl sink already finished")?;
        if tx.send(std::mem::take(&mut self.batch)).is_err() {
            // the writer stopped on an error: it is in its result
            return Err(self.join().err().unwrap_or_else(|| anyhow::anyhow!("the writer of {} stopped", self.path.display())));
        }
        Ok(())
    }

    fn join(&mut self) -> Result<kpl::WriteStats> {
        self.tx = None;
        let w = self.worker.take().context("kpl sink already finished")?;
        w.join().map_err(|_| anyhow::anyhow!("the writer thread of {} panicked", self.path.display()))?
    }
}

impl Sink for KplSink {
    fn send(&mut self, ev: &Event, meta: &EventMeta) -> Result<()> {
        self.send_owned(ev.clone(), meta)
    }
    fn send_owned(&mut self, ev: Event, _meta: &EventMeta) -> Result<()> {
        self.events += 1;
        let mut bytes = std::mem::size_of::<Event>() + 64;
        if let EventBody::Syscall(s) = &ev.body {
            bytes += s.writes.iter().map(|w| w.data.len()).sum::<usize>();
        }
        self.queue(Job::Event(ev), bytes)
    }
    fn tick(&mut self) -> Result<()> {
        self.flush()
    }
    fn lag(&self) -> Lag {
        Lag { events: self.events.saturating_sub(self.written.load(std::sync::atomic::Ordering::Relaxed)), spool_bytes: 0 }
    }
    fn store_file(&mut self, content: &[u8]) -> Result<Option<kpl::FileHash>> {
        let hash = kpl::FileHash::of(content);
        if self.files.insert(hash) {
            self.queue(Job::File(content.to_vec()), content.len())?;
        }
        Ok(Some(hash))
    }
    fn finish(&mut self) -> Result<String> {
        if self.worker.is_none() {
            return Ok(String::new());
        }
        self.flush()?;
        // nothing more to yield to: finish at the recorder's priority
        let tid = self.writer_tid.load(std::sync::atomic::Ordering::Acquire);
        if tid != 0 && self.low {
            self.low = !crate::sys::set_nice(tid, self.normal);
        }
        let st = self.join()?;
        Ok(format!("{}: {} events, {} bytes", self.path.display(), st.events, st.bytes))
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
