//! The events the engine correlates, indexed for interval queries: kernel
//! events from one or more `.kpl` logs (ptrace recordings and eBPF
//! recordings of the same machine and time) or from the Kafka `kernel.*`
//! topics, and the spans of the same period.
//!
//! Every event keeps where it came from ([`EvRef`]: which source, which
//! sequence number), so a cause can be written back next to the log it
//! explains and replay can stop there.

use crate::otlp::Span;
use anyhow::{Context, Result};
use foldhash::{HashMap, HashMapExt, HashSet};
use kpl::event::{SchedDelay, Syscall, Tcp};
use kpl::{Data, EventBody, Kind, Reader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Where an event came from: the source's position in [`Store::sources`] and its sequence number there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct EvRef {
    /// Index of the source.
    pub src: u16,
    /// Sequence number in that source.
    pub seq: u64,
}

/// One kernel event.
#[derive(Clone, Debug)]
pub struct Ev {
    /// Where it came from.
    pub at: EvRef,
    /// Timestamp (ns since the epoch; for syscalls the entry).
    pub ts: u64,
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// CPU.
    pub cpu: u16,
    /// The body.
    pub body: EventBody,
}

impl Ev {
    /// Start of the interval the event covers (a run-queue delay starts when the task became runnable).
    pub fn start(&self) -> u64 {
        match &self.body {
            EventBody::SchedDelay(d) => self.ts.saturating_sub(d.delay_ns),
            _ => self.ts,
        }
    }
    /// End of the interval the event covers (a syscall ends at its exit).
    pub fn end(&self) -> u64 {
        match &self.body {
            EventBody::Syscall(s) => self.ts + s.duration_ns,
            _ => self.ts,
        }
    }
    /// The syscall body, if it is one.
    pub fn syscall(&self) -> Option<&Syscall> {
        match &self.body {
            EventBody::Syscall(s) => Some(s),
            _ => None,
        }
    }
    /// The run-queue delay body, if it is one.
    pub fn delay(&self) -> Option<&SchedDelay> {
        match &self.body {
            EventBody::SchedDelay(d) => Some(d),
            _ => None,
        }
    }
    /// The TCP body, if it is one.
    pub fn tcp(&self) -> Option<&Tcp> {
        match &self.body {
            EventBody::TcpSend(t) | EventBody::TcpRecv(t) | EventBody::TcpRetransmit(t) | EventBody::TcpState(t) => Some(t),
            _ => None,
        }
    }
}

/// A recording the store read.
#[derive(Clone, Debug)]
pub struct Source {
    /// The file (or `kafka:...`).
    pub path: PathBuf,
    /// Backend that wrote it (`ptrace`, `ebpf`, ...).
    pub backend: String,
    /// Events read from it.
    pub events: u64,
}

impl Source {
    /// True for a ptrace recording, which `kprobe replay` can re-execute.
    pub fn replayable(&self) -> bool {
        self.backend == "ptrace"
    }
}

/// A TCP connection, the same key from both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    a: (IpAddr, u16),
    b: (IpAddr, u16),
}

impl ConnKey {
    /// The key of a 4-tuple (either direction gives the same key).
    pub fn of(t: &kpl::event::Tuple) -> ConnKey {
        let x = (t.saddr, t.sport);
        let y = (t.daddr, t.dport);
        if x <= y {
            ConnKey { a: x, b: y }
        } else {
            ConnKey { a: y, b: x }
        }
    }
}

impl std::fmt::Display for ConnKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{} <-> {}:{}", self.a.0, self.a.1, self.b.0, self.b.1)
    }
}

/// Per-thread indexes (positions in [`Store::events`], each list sorted by time).
#[derive(Default, Debug)]
struct TidIndex {
    syscalls: Vec<u32>,
    delays: Vec<u32>,
    faults: Vec<u32>,
    switch_out: Vec<u32>,
    switch_in: Vec<u32>,
    wakeups: Vec<u32>,
    tcp: Vec<u32>,
    max_syscall_ns: u64,
    max_delay_ns: u64,
}

/// Kernel events and spans, indexed. Add sources, then [`Store::finish`].
#[derive(Default)]
pub struct Store {
    /// The recordings read.
    pub sources: Vec<Source>,
    /// Every kernel event, sorted by timestamp once finished.
    pub events: Vec<Ev>,
    /// Every span.
    pub spans: Vec<Span>,
    tids: HashMap<u32, TidIndex>,
    cpu_switches: HashMap<u16, Vec<u32>>,
    conns: HashMap<ConnKey, Vec<u32>>,
    faults: Vec<u32>,
    comms: HashMap<u32, String>,
    pids: HashMap<u32, u32>,
    /// (trace id, parent span id) seen in a `traceparent` header a thread received → that thread.
    traceparents: HashMap<([u8; 16], [u8; 8]), (u32, u32)>,
    ptrace_tids: HashSet<u32>,
    finished: bool,
}

const KEEP: &[Kind] = &[
    Kind::Syscall,
    Kind::SchedSwitch,
    Kind::SchedWakeup,
    Kind::SchedDelay,
    Kind::TcpSend,
    Kind::TcpRecv,
    Kind::TcpRetransmit,
    Kind::TcpState,
    Kind::PageFault,
    Kind::Exec,
    Kind::Fork,
];

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store::default()
    }

    /// Adds spans (from OTLP/JSON or the receiver).
    pub fn add_spans(&mut self, spans: impl IntoIterator<Item = Span>) {
        self.spans.extend(spans);
    }

    /// Reads a `.kpl` log: its kernel events and its span events.
    pub fn add_kpl(&mut self, path: &Path) -> Result<u16> {
        let r = Reader::open(path).with_context(|| format!("opening {}", path.display()))?;
        let src = self.sources.len() as u16;
        let backend = r.meta().backend.clone();
        let mut n = 0u64;
        for ev in r.events() {
            let mut ev = ev.with_context(|| format!("reading {}", path.display()))?;
            n += 1;
            match &ev.body {
                EventBody::Span(s) => {
                    self.spans.push(Span::from_ref(s, ev.pid, ev.tid));
                    continue;
                }
                b if !KEEP.contains(&b.kind()) => continue,
                _ => {}
            }
            if let EventBody::Syscall(s) = &mut ev.body {
                for w in std::mem::take(&mut s.writes) {
                    if let Ok(bytes) = r.payload(&w.data) {
                        self.scan_traceparent(&bytes, ev.pid, ev.tid);
                    }
                }
                if backend == "ptrace" {
                    self.ptrace_tids.insert(ev.tid);
                }
            }
            self.push(Ev { at: EvRef { src, seq: ev.seq }, ts: ev.ts_ns, pid: ev.pid, tid: ev.tid, cpu: ev.cpu, body: ev.body });
        }
        self.sources.push(Source { path: path.to_owned(), backend, events: n });
        Ok(src)
    }

    /// Starts a source whose events are added one by one ([`Store::add_event`]).
    pub fn add_source(&mut self, name: &str, backend: &str) -> u16 {
        self.sources.push(Source { path: PathBuf::from(name), backend: backend.to_owned(), events: 0 });
        (self.sources.len() - 1) as u16
    }

    /// Adds one event of source `src`.
    pub fn add_event(&mut self, src: u16, ev: kpl::Event) {
        if let EventBody::Span(s) = &ev.body {
            self.spans.push(Span::from_ref(s, ev.pid, ev.tid));
            return;
        }
        if !KEEP.contains(&ev.kind()) {
            return;
        }
        if let Some(s) = self.sources.get_mut(src as usize) {
            s.events += 1;
        }
        let mut body = ev.body;
        if let EventBody::Syscall(s) = &mut body {
            for w in std::mem::take(&mut s.writes) {
                if let Data::Bytes(b) = &w.data {
                    self.scan_traceparent(b, ev.pid, ev.tid);
                }
            }
        }
        self.push(Ev { at: EvRef { src, seq: ev.seq }, ts: ev.ts_ns, pid: ev.pid, tid: ev.tid, cpu: ev.cpu, body });
    }

    fn push(&mut self, ev: Ev) {
        self.finished = false;
        match &ev.body {
            EventBody::Exec(x) => {
                let exe = x.argv.first().map(String::as_str).filter(|a| !a.is_empty()).unwrap_or(&x.exe.path);
                let name = Path::new(exe).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                // The kernel keeps 15 bytes of a command name.
                let name: String = name.chars().take(15).collect();
                self.comms.insert(ev.tid, name);
            }
            EventBody::SchedSwitch(s) => {
                self.comms.entry(ev.tid).or_insert_with(|| s.prev_comm.clone());
                self.comms.entry(s.next_tid).or_insert_with(|| s.next_comm.clone());
                self.pids.entry(s.next_tid).or_insert(s.next_pid);
            }
            EventBody::SchedDelay(d) => {
                self.comms.entry(d.culprit_tid).or_insert_with(|| d.culprit_comm.clone());
                self.pids.entry(d.culprit_tid).or_insert(d.culprit_pid);
            }
            EventBody::Fork(f) => {
                self.pids.insert(f.child_tid, f.child_pid);
            }
            _ => {}
        }
        if ev.tid != 0 {
            self.pids.entry(ev.tid).or_insert(ev.pid);
        }
        self.events.push(ev);
    }

    /// Looks for W3C `traceparent` headers in bytes a thread received.
    fn scan_traceparent(&mut self, bytes: &[u8], pid: u32, tid: u32) {
        const KEY: &[u8] = b"traceparent";
        let mut i = 0;
        while let Some(p) = find(&bytes[i..], KEY) {
            let at = i + p + KEY.len();
            // `traceparent: 00-<32 hex>-<16 hex>-<2 hex>` (any separator, optional quotes)
            let rest = &bytes[at..bytes.len().min(at + 80)];
            if let Some(v) = find(rest, b"00-") {
                let v = &rest[v + 3..];
                if v.len() >= 32 + 1 + 16 && v[32] == b'-' {
                    let (mut t, mut s) = ([0u8; 16], [0u8; 8]);
                    if hex::decode_to_slice(&v[..32], &mut t).is_ok() && hex::decode_to_slice(&v[33..49], &mut s).is_ok() {
                        self.traceparents.entry((t, s)).or_insert((pid, tid));
                    }
                }
            }
            i = at;
        }
    }

    /// Sorts and indexes everything added; ties spans without a thread to
    /// the thread that received their `traceparent`.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        // A ptrace recording has every syscall of its tasks: drop the eBPF
        // copies of the same calls.
        if !self.ptrace_tids.is_empty() {
            let ptrace: HashSet<u16> = self.sources.iter().enumerate().filter(|(_, s)| s.replayable()).map(|(i, _)| i as u16).collect();
            let tids = &self.ptrace_tids;
            self.events.retain(|e| !(matches!(e.body, EventBody::Syscall(_)) && tids.contains(&e.tid) && !ptrace.contains(&e.at.src)));
        }
        self.events.sort_by_key(|e| (e.ts, e.at));
        // Command names as they were last (after any exec).
        for e in &self.events {
            match &e.body {
                EventBody::SchedSwitch(s) => {
                    self.comms.insert(e.tid, s.prev_comm.clone());
                    self.comms.insert(s.next_tid, s.next_comm.clone());
                }
                EventBody::SchedDelay(d) => {
                    self.comms.insert(d.culprit_tid, d.culprit_comm.clone());
                }
                _ => {}
            }
        }
        for e in &self.events {
            if let EventBody::Exec(x) = &e.body {
                let exe = x.argv.first().map(String::as_str).filter(|a| !a.is_empty()).unwrap_or(&x.exe.path);
                let name: String = Path::new(exe).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                self.comms.insert(e.tid, name.chars().take(15).collect());
            }
        }
        self.tids.clear();
        self.cpu_switches.clear();
        self.conns.clear();
        self.faults.clear();
        for (i, e) in self.events.iter().enumerate() {
            let i = i as u32;
            match &e.body {
                EventBody::Syscall(s) => {
                    let t = self.tids.entry(e.tid).or_default();
                    t.syscalls.push(i);
                    t.max_syscall_ns = t.max_syscall_ns.max(s.duration_ns);
                }
                EventBody::SchedDelay(d) => {
                    let t = self.tids.entry(e.tid).or_default();
                    t.delays.push(i);
                    t.max_delay_ns = t.max_delay_ns.max(d.delay_ns);
                }
                EventBody::PageFault(_) => {
                    self.tids.entry(e.tid).or_default().faults.push(i);
                    self.faults.push(i);
                }
                EventBody::SchedSwitch(s) => {
                    self.tids.entry(e.tid).or_default().switch_out.push(i);
                    self.tids.entry(s.next_tid).or_default().switch_in.push(i);
                    self.cpu_switches.entry(e.cpu).or_default().push(i);
                }
                EventBody::SchedWakeup(_) => self.tids.entry(e.tid).or_default().wakeups.push(i),
                EventBody::TcpSend(t) | EventBody::TcpRecv(t) | EventBody::TcpRetransmit(t) | EventBody::TcpState(t) => {
                    self.tids.entry(e.tid).or_default().tcp.push(i);
                    self.conns.entry(ConnKey::of(&t.tuple)).or_default().push(i);
                }
                _ => {}
            }
        }
        // Syscall lists are sorted by entry; delay lists by the switch-in.
        for t in self.tids.values_mut() {
            t.delays.sort_by_key(|&i| self.events[i as usize].start());
        }
        for s in &mut self.spans {
            if s.tid.is_none() {
                if let Some(&(pid, tid)) = self.traceparents.get(&(s.trace_id, s.parent_span_id)) {
                    s.tid = Some(tid);
                    s.pid = s.pid.or(Some(pid));
                }
            }
            if s.pid.is_none() {
                s.pid = s.tid.and_then(|t| self.pids.get(&t).copied());
            }
        }
        self.finished = true;
    }

    /// The event at a position.
    pub fn ev(&self, i: u32) -> &Ev {
        &self.events[i as usize]
    }

    /// Command name of a thread (or its process), `?` when unknown.
    pub fn comm(&self, tid: u32) -> String {
        self.comms.get(&tid).or_else(|| self.pids.get(&tid).and_then(|p| self.comms.get(p))).cloned().unwrap_or_else(|| "?".into())
    }

    /// Process id of a thread, when known.
    pub fn pid_of(&self, tid: u32) -> Option<u32> {
        self.pids.get(&tid).copied()
    }

    /// True when the store has any event of this thread.
    pub fn knows_tid(&self, tid: u32) -> bool {
        self.tids.contains_key(&tid)
    }

    /// Syscalls of `tid` whose interval overlaps `[a, b]`, in entry order.
    pub fn syscalls(&self, tid: u32, a: u64, b: u64) -> Vec<u32> {
        let Some(t) = self.tids.get(&tid) else { return Vec::new() };
        let from = a.saturating_sub(t.max_syscall_ns);
        let lo = t.syscalls.partition_point(|&i| self.ev(i).ts < from);
        t.syscalls[lo..].iter().copied().take_while(|&i| self.ev(i).ts <= b).filter(|&i| self.ev(i).end() > a).collect()
    }

    /// Syscalls of `tid` entered at or after `t`, in entry order.
    pub fn syscalls_from(&self, tid: u32, t: u64) -> impl Iterator<Item = u32> + '_ {
        let list = self.tids.get(&tid).map(|x| x.syscalls.as_slice()).unwrap_or(&[]);
        let lo = list.partition_point(|&i| self.ev(i).ts < t);
        list[lo..].iter().copied()
    }

    /// Run-queue delays of `tid` whose waiting interval overlaps `[a, b]`.
    pub fn delays(&self, tid: u32, a: u64, b: u64) -> Vec<u32> {
        let Some(t) = self.tids.get(&tid) else { return Vec::new() };
        let lo = t.delays.partition_point(|&i| self.ev(i).start() < a.saturating_sub(t.max_delay_ns));
        t.delays[lo..].iter().copied().take_while(|&i| self.ev(i).start() < b).filter(|&i| self.ev(i).end() > a).collect()
    }

    fn range(&self, list: &[u32], a: u64, b: u64) -> Vec<u32> {
        let lo = list.partition_point(|&i| self.ev(i).ts < a);
        list[lo..].iter().copied().take_while(|&i| self.ev(i).ts <= b).collect()
    }

    /// Page faults of `tid` in `[a, b]`.
    pub fn faults(&self, tid: u32, a: u64, b: u64) -> Vec<u32> {
        self.tids.get(&tid).map(|t| self.range(&t.faults, a, b)).unwrap_or_default()
    }

    /// Page faults of every task in `[a, b]`.
    pub fn all_faults(&self, a: u64, b: u64) -> Vec<u32> {
        self.range(&self.faults, a, b)
    }

    /// Wakeups of `tid` in `[a, b]`.
    pub fn wakeups(&self, tid: u32, a: u64, b: u64) -> Vec<u32> {
        self.tids.get(&tid).map(|t| self.range(&t.wakeups, a, b)).unwrap_or_default()
    }

    /// Context switches that took `tid` off a CPU, in `[a, b]`.
    pub fn switch_outs(&self, tid: u32, a: u64, b: u64) -> Vec<u32> {
        self.tids.get(&tid).map(|t| self.range(&t.switch_out, a, b)).unwrap_or_default()
    }

    /// Context switches that put `tid` on a CPU, in `[a, b]`.
    pub fn switch_ins(&self, tid: u32, a: u64, b: u64) -> Vec<u32> {
        self.tids.get(&tid).map(|t| self.range(&t.switch_in, a, b)).unwrap_or_default()
    }

    /// Context switches on `cpu` in `[a, b]`.
    pub fn cpu_switches(&self, cpu: u16, a: u64, b: u64) -> Vec<u32> {
        self.cpu_switches.get(&cpu).map(|l| self.range(l, a, b)).unwrap_or_default()
    }

    /// TCP events of `tid` in `[a, b]`.
    pub fn tcp_of(&self, tid: u32, a: u64, b: u64) -> Vec<u32> {
        self.tids.get(&tid).map(|t| self.range(&t.tcp, a, b)).unwrap_or_default()
    }

    /// TCP events of a connection in `[a, b]`.
    pub fn conn_events(&self, c: &ConnKey, a: u64, b: u64) -> Vec<u32> {
        self.conns.get(c).map(|l| self.range(l, a, b)).unwrap_or_default()
    }

    /// Threads that sent or received on a connection during `[a, b]` (pid, tid), most events first.
    pub fn conn_threads(&self, c: &ConnKey, a: u64, b: u64) -> Vec<(u32, u32)> {
        let mut n: HashMap<(u32, u32), usize> = HashMap::new();
        for i in self.conn_events(c, a, b) {
            let e = self.ev(i);
            if matches!(e.body, EventBody::TcpSend(_) | EventBody::TcpRecv(_)) && e.tid != 0 {
                *n.entry((e.pid, e.tid)).or_default() += 1;
            }
        }
        let mut v: Vec<_> = n.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.into_iter().map(|(k, _)| k).collect()
    }

    /// Syscalls of process `pid` (all its threads), slowest first.
    pub fn slowest_syscalls(&self, pid: u32, n: usize, min_ns: u64) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .tids
            .iter()
            .filter(|(t, _)| self.pids.get(t) == Some(&pid))
            .flat_map(|(_, t)| t.syscalls.iter().copied())
            .filter(|&i| self.ev(i).syscall().is_some_and(|s| s.duration_ns >= min_ns))
            .collect();
        v.sort_by_key(|&i| (std::cmp::Reverse(self.ev(i).syscall().map(|s| s.duration_ns).unwrap_or(0)), i));
        v.truncate(n);
        v
    }

    /// Time span of the kernel events.
    pub fn time_range(&self) -> Option<(u64, u64)> {
        Some((self.events.first()?.ts, self.events.iter().map(Ev::end).max()?))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}
