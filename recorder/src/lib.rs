//! The eBPF recorder: kernel events of the scheduler, the read/write syscall
//! family, TCP and user page faults, captured by CO-RE C programs
//! (`bpf/recorder.bpf.c`, loaded with aya) and written to a sink (a `.kpl`
//! file, Kafka, JSON lines).
//!
//! ```no_run
//! use recorder::{Config, Recorder, sink::KplSink};
//! let mut rec = Recorder::start(Config::default())?;
//! let mut sink = KplSink::create("/tmp/node.kpl".as_ref(), vec!["recorder".into()])?;
//! let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
//! let summary = rec.run(&mut sink, &|| std::time::Instant::now() > deadline)?;
//! println!("{} events, {} dropped", summary.events, summary.dropped());
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Nothing is lost silently: the kernel side counts, per hook, every record
//! it could not put into the ring buffer; the recorder turns each increase
//! into a `Lost { source: hook, count }` event in the stream and reports the
//! totals in its [`Summary`] and metrics.

#![warn(missing_docs)]

pub mod cgroup;
pub mod config;
pub mod fileref;
pub mod kafka;
pub mod metrics;
pub mod policy;
pub mod probe;
pub mod raw;
pub mod ring;
pub mod sink;
pub mod spool;
pub mod sys;

pub use config::{Config, Filter, Hooks};
pub use probe::HookCounts;

use anyhow::Result;
use foldhash::{HashMap, HashMapExt};
use kpl::event::{CgroupInfo, Data, FileRef, FileSnapshot, Lost, MemWrite, Note, Syscall};
use kpl::{Event, EventBody};
use sink::{EventMeta, Sink};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a run captured.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Events handed to the sink (including `cgroup`, `lost` and `note` events).
    pub events: u64,
    /// Per hook (`raw::HOOK_NAMES` order): written to the ring buffer and dropped, as counted in the kernel.
    pub hooks: [HookCounts; 5],
    /// Per hook: records read from the ring buffer.
    pub received: [u64; 5],
    /// Records that could not be decoded.
    pub decode_errors: u64,
    /// The sink's closing report.
    pub sink: String,
    /// Replay-grade: asynchronous signals that landed in user code rather
    /// than at a syscall's exit. Without a PMU nothing places them, so the
    /// replay of the log stops at the first of them (with an error naming it).
    pub async_signals: u64,
    /// The first of those: (event sequence number, thread id, signal number).
    pub first_async_signal: Option<(u64, u32, i32)>,
    /// Replay-grade: reads of regular files captured by reference and
    /// filled from the file ([`fileref`]).
    pub file_refs: u64,
    /// Their bytes.
    pub file_ref_bytes: u64,
    /// Reads by reference whose bytes could not be had (the file changed or
    /// went away): their syscalls are marked incomplete.
    pub file_ref_misses: u64,
}

impl Summary {
    /// Events dropped in the kernel, all hooks.
    pub fn dropped(&self) -> u64 {
        self.hooks.iter().map(|h| h.drops).sum()
    }

    /// What makes the log of a replay-grade run replay only in part, one
    /// line each (empty when it replays in full, as far as the recorder knows).
    pub fn replay_warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.dropped() > 0 {
            w.push(format!("the ring buffer dropped {} records: the log cannot replay in full", self.dropped()));
        }
        if self.file_ref_misses > 0 {
            w.push(format!(
                "{} read(s) of files captured by reference could not be filled (the file changed or went away): \
                 the replay stops at the first",
                self.file_ref_misses
            ));
        }
        if let Some((seq, tid, signo)) = self.first_async_signal {
            w.push(format!(
                "{} asynchronous signal(s) landed in user code, not at a syscall (first: {} to task {tid}, event {seq}); \
                 without a PMU nothing places them: the replay stops there",
                self.async_signals,
                kpl::json::signal_name(signo)
            ));
        }
        w
    }
}

/// Process ids whose command name is `comm`.
pub fn procs_with_comm(comm: &str) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(c) = std::fs::read_to_string(e.path().join("comm")) {
                if c.trim_end_matches('\n') == comm && pid != std::process::id() {
                    out.push(pid);
                }
            }
        }
    }
    out
}

fn clock_offset() -> i128 {
    let m1 = sys::clock_ns(libc::CLOCK_MONOTONIC);
    let r = sys::clock_ns(libc::CLOCK_REALTIME);
    let m2 = sys::clock_ns(libc::CLOCK_MONOTONIC);
    r - (m1 + m2) / 2
}

/// Facts about this machine's clocks that the replay of an eBPF log needs
/// to serve what the recorder cannot see (vDSO time reads, `rdtsc`)
/// deterministically: `clock_offset_ns` (CLOCK_REALTIME minus
/// CLOCK_MONOTONIC: event timestamps are wall-clock), `tsc` (`TSC0 MONO0
/// KHZ`: the time-stamp counter read at monotonic time MONO0 and its rate,
/// measured over 20 ms), and `rlimit_stack` (`CUR MAX`: a command started by
/// the recorder inherits it; it decides where the kernel puts mappings).
pub fn clock_facts() -> Vec<(String, String)> {
    let mono = || sys::clock_ns(libc::CLOCK_MONOTONIC) as u64;
    let (t0, m0) = (sys::rdtsc(), mono());
    std::thread::sleep(Duration::from_millis(20));
    let (t1, m1) = (sys::rdtsc(), mono());
    let khz = ((t1.wrapping_sub(t0)) as u128 * 1_000_000 / (m1 - m0).max(1) as u128) as u64;
    let (cur, max) = sys::rlimit_stack();
    vec![
        ("clock_offset_ns".into(), clock_offset().to_string()),
        ("tsc".into(), format!("{t0} {m0} {khz}")),
        ("rlimit_stack".into(), format!("{cur} {max}")),
    ]
}

/// Runs `argv` under the recorder: the child is held before its `exec`
/// until the programs are attached and it is selected by pid (with the
/// processes it forks), so everything from its exec on is captured. Returns
/// its exit status and the run's summary once it has exited. This is
/// `kprobe recorder [--replay-grade] -- CMD` (and what `kprobe record
/// --backend ebpf` runs).
pub fn record_command(argv: &[String], mut cfg: Config, sink: &mut dyn Sink) -> Result<(std::process::ExitStatus, Summary)> {
    use anyhow::Context;
    use std::ffi::CString;
    let prog = argv.first().context("no command to record")?;
    let path = if prog.contains('/') {
        std::path::PathBuf::from(prog)
    } else {
        std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).map(|d| d.join(prog)).find(|c| c.is_file()))
            .with_context(|| format!("{prog}: command not found in PATH"))?
    };
    let cpath = CString::new(path.as_os_str().as_encoded_bytes()).context("command path has a NUL byte")?;
    let cargs: Vec<CString> =
        argv.iter().map(|a| CString::new(a.as_bytes())).collect::<Result<_, _>>().context("an argument has a NUL byte")?;
    let mut child = sys::HeldChild::spawn(&cpath, &cargs).context("starting the command (pipe2, fork)")?;
    let pid = child.pid();
    cfg.filter = Filter::Pid(vec![pid]);
    let mut rec = match Recorder::start(cfg) {
        Ok(mut r) => {
            r.exec_hint = Some(ExecHint {
                pid,
                argv: argv.to_vec(),
                env: std::env::vars_os().map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())).collect(),
                cwd: std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
            });
            r
        }
        Err(e) => {
            child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            child.release();
            let status = child.wait().with_context(|| format!("waiting for {prog}"));
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            status
        });
        let summary = rec.run(sink, &|| done.load(std::sync::atomic::Ordering::Relaxed));
        let status = waiter.join().map_err(|_| anyhow::anyhow!("waiter thread panicked"))??;
        if status.code() == Some(127) {
            tracing::warn!("{prog}: exit status 127 (could it be executed?)");
        }
        Ok((status, summary?))
    })
}

/// The result of a syscall event (0 for other events).
fn s_ret(ev: &Event) -> i64 {
    match &ev.body {
        EventBody::Syscall(s) => s.ret,
        _ => 0,
    }
}

/// The ELF interpreter (PT_INTERP) and GNU build-id of an executable.
fn elf_facts(bytes: &[u8]) -> (Option<String>, Vec<u8>) {
    use object::read::elf::{FileHeader, ProgramHeader};
    use object::{Object, ObjectKind};
    let build_id = object::File::parse(bytes)
        .ok()
        .filter(|f| f.kind() != ObjectKind::Unknown)
        .and_then(|f| f.build_id().ok().flatten().map(|b| b.to_vec()))
        .unwrap_or_default();
    let interp = (|| {
        let h = object::elf::FileHeader64::<object::Endianness>::parse(bytes).ok()?;
        let e = h.endian().ok()?;
        for ph in h.program_headers(e, bytes).ok()? {
            if let Ok(Some(i)) = ph.interpreter(e, bytes) {
                return Some(String::from_utf8_lossy(i).trim_end_matches('\0').to_owned());
            }
        }
        None
    })();
    (interp, build_id)
}

/// The nice value of a recorder thread while it yields.
pub(crate) const LOW_NICE: i32 = 19;

/// A running recorder: programs attached, ring buffer open.
pub struct Recorder {
    probe: probe::Probe,
    cfg: Config,
    offset: i128,
    seq: u64,
    host: String,
    resolver: cgroup::Resolver,
    containers: HashMap<u64, String>,
    reported: [HookCounts; 5],
    received: [u64; 5],
    decode_errors: u64,
    metrics: Arc<metrics::Metrics>,
    policy: policy::Policy,
    pending: HashMap<u32, Pending>,
    /// (pid, fd) -> path, from captured open calls (replay-grade).
    fds: HashMap<(u32, u64), String>,
    exec_hint: Option<ExecHint>,
    async_signals: u64,
    first_async_signal: Option<(u64, u32, i32)>,
    /// Replay-grade: fills reads captured by reference.
    filler: Option<fileref::Filler>,
    /// The first miss of the filler: (event sequence number, reason).
    first_miss: Option<(u64, fileref::Miss)>,
}

/// What the recorder knows of a command it started itself.
struct ExecHint {
    pid: u32,
    argv: Vec<String>,
    env: Vec<String>,
    cwd: String,
}

/// A replay-grade syscall waiting for the chunks of its output buffer.
struct Pending {
    ev: Event,
    out: raw::OutBuf,
    /// The bytes so far, one (address, bytes) run per contiguous region
    /// (several for the iovecs of a `writev`).
    writes: Vec<(u64, Vec<u8>)>,
    got: u32,
    path: Option<String>,
    incomplete: bool,
}

impl Pending {
    fn new(ev: Event, out: raw::OutBuf, incomplete: bool) -> Pending {
        Pending { ev, out, writes: Vec::new(), got: 0, path: None, incomplete }
    }

    fn complete(&self) -> bool {
        self.got >= self.out.chunks && (!self.out.path || self.path.is_some())
    }

    /// Takes a buffer decoded from the ring as the first region (no copy),
    /// or appends it as [`Pending::add`] does.
    fn add_owned(&mut self, addr: u64, bytes: Vec<u8>) {
        if self.writes.is_empty() {
            self.writes.push((addr, bytes));
        } else {
            self.add(addr, &bytes);
        }
    }

    /// Appends a chunk's bytes at `addr`: to the last region when they continue it.
    fn add(&mut self, addr: u64, bytes: &[u8]) {
        match self.writes.last_mut() {
            Some((a, b)) if *a + b.len() as u64 == addr => b.extend_from_slice(bytes),
            _ => {
                let mut b = Vec::with_capacity(if self.writes.is_empty() { self.out.len.min(1 << 20) as usize } else { bytes.len() });
                b.extend_from_slice(bytes);
                self.writes.push((addr, b));
            }
        }
    }

    fn bytes(&self) -> u64 {
        self.writes.iter().map(|(_, b)| b.len() as u64).sum()
    }
}

impl Recorder {
    /// Loads and attaches the programs of `cfg`.
    pub fn start(cfg: Config) -> Result<Recorder> {
        let policy = policy::Policy::new(&cfg.redact)?;
        if cfg.replay_grade {
            // Replay-grade capture moves every byte the programs read through
            // buffers the reader allocates and the log writer frees: keep that
            // memory in the heap (glibc would unmap and the kernel zero it
            // again for every buffer, which cost more than copying the bytes).
            sys::keep_heap_memory();
        }
        let filler = (cfg.replay_grade && cfg.file_refs).then(|| {
            let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            fileref::Filler::new(&fileref::ref_mounts(&table))
        });
        let ref_devs: Vec<(u32, u32)> =
            filler.as_ref().map(|f| f.devices().into_iter().map(|d| (d, fileref::FMT_INO32_GEN)).collect()).unwrap_or_default();
        let offset = clock_offset();
        let probe = probe::Probe::load(&cfg, &ref_devs, offset as i64)?;
        let host = kpl::Metadata::for_this_host("ebpf", vec![]).host;
        Ok(Recorder {
            probe,
            cfg,
            offset,
            seq: 0,
            host,
            resolver: cgroup::Resolver::new(),
            containers: HashMap::new(),
            reported: Default::default(),
            received: [0; 5],
            decode_errors: 0,
            metrics: Arc::new(metrics::Metrics::new()),
            policy,
            pending: HashMap::new(),
            fds: HashMap::new(),
            exec_hint: None,
            async_signals: 0,
            first_async_signal: None,
            filler,
            first_miss: None,
        })
    }

    /// The metrics this recorder updates (serve them with [`metrics::serve`]).
    pub fn metrics(&self) -> Arc<metrics::Metrics> {
        self.metrics.clone()
    }

    fn now(&self) -> u64 {
        kpl::now_ns()
    }

    fn emit(&mut self, sink: &mut dyn Sink, mut ev: Event) -> Result<()> {
        if ev.cgroup != 0 && !self.containers.contains_key(&ev.cgroup) {
            let path = self.resolver.path(ev.cgroup).unwrap_or_default();
            let cid = cgroup::container_id(&path);
            self.containers.insert(ev.cgroup, cid.clone());
            let mut info =
                Event::new(ev.ts_ns, 0, 0, u16::MAX, EventBody::Cgroup(CgroupInfo { cgroup_id: ev.cgroup, path, container_id: cid }));
            info.cgroup = ev.cgroup;
            self.push(sink, info)?;
        }
        if let EventBody::Exec(x) = &mut ev.body {
            let split = |c: Vec<u8>| -> Vec<String> {
                c.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
            };
            // best effort: the process may have moved on already
            if let Ok(c) = std::fs::read(format!("/proc/{}/cmdline", ev.pid)) {
                x.argv = split(c);
            }
            if let Ok(p) = std::fs::read_link(format!("/proc/{}/cwd", ev.pid)) {
                x.cwd = p.display().to_string();
            }
            if let Ok(a) = std::fs::read(format!("/proc/{}/auxv", ev.pid)) {
                x.auxv = a
                    .chunks_exact(16)
                    .map(|c| (u64::from_le_bytes(c[..8].try_into().unwrap()), u64::from_le_bytes(c[8..].try_into().unwrap())))
                    .take_while(|&(t, _)| t != 0)
                    .collect();
            }
            if self.cfg.replay_grade {
                if let Ok(c) = std::fs::read(format!("/proc/{}/environ", ev.pid)) {
                    x.env = split(c);
                }
            }
            // the command started by record_command: known exactly
            if self.exec_hint.as_ref().is_some_and(|h| h.pid == ev.pid) {
                let h = self.exec_hint.take().unwrap();
                x.argv = h.argv;
                x.env = h.env;
                x.cwd = h.cwd;
            }
            if self.cfg.replay_grade {
                // the executable and its interpreter in the file store, as the ptrace recorder keeps them
                let mut path = x.exe.path.clone();
                if !path.starts_with('/') {
                    path = format!("{}/{}", x.cwd.trim_end_matches('/'), path);
                }
                let like = ev.clone();
                if let Some((f, mut interp)) = self.snapshot(sink, &like, &path, "exec")? {
                    if let EventBody::Exec(x) = &mut ev.body {
                        x.exe = f;
                    }
                    let mut depth = 0;
                    while let Some(i) = interp.take() {
                        depth += 1;
                        if depth > 4 {
                            break;
                        }
                        interp = self.snapshot(sink, &like, &i, "interp")?.and_then(|(_, n)| n);
                    }
                }
            }
        }
        self.push(sink, ev)
    }

    /// Stores the file at `path` (as process `pid` sees it) in the sink's
    /// file store and emits a `file` event for it; returns its reference.
    fn snapshot(&mut self, sink: &mut dyn Sink, like: &Event, path: &str, reason: &str) -> Result<Option<(FileRef, Option<String>)>> {
        let real = format!("/proc/{}/root{}", like.pid, path);
        let bytes = match std::fs::read(&real).or_else(|_| std::fs::read(path)) {
            Ok(b) => b,
            Err(_) => return Ok(None),
        };
        let Some(hash) = sink.store_file(&bytes)? else { return Ok(None) };
        let (interp, build_id) = elf_facts(&bytes);
        let file = FileRef { path: path.to_owned(), hash: Some(hash), size: bytes.len() as u64, build_id };
        let mut ev = Event::new(
            like.ts_ns,
            like.pid,
            like.tid,
            like.cpu,
            EventBody::FileSnapshot(FileSnapshot { file: file.clone(), reason: reason.into() }),
        );
        ev.cgroup = like.cgroup;
        self.push(sink, ev)?;
        Ok(Some((file, interp)))
    }

    fn push(&mut self, sink: &mut dyn Sink, mut ev: Event) -> Result<()> {
        ev.seq = self.seq;
        self.seq += 1;
        let cid = self.containers.get(&ev.cgroup).map(String::as_str).unwrap_or("");
        sink.send_owned(ev, &EventMeta { container_id: cid, host: &self.host })
    }

    fn note(&mut self, sink: &mut dyn Sink, text: String) -> Result<()> {
        let ev = Event::new(
            self.now(),
            std::process::id(),
            std::process::id(),
            u16::MAX,
            EventBody::Note(Note { topic: "recorder".into(), text }),
        );
        self.push(sink, ev)
    }

    fn check_counts(&mut self, sink: &mut dyn Sink) -> Result<()> {
        let counts = self.probe.counts()?;
        for (h, c) in counts.iter().enumerate() {
            let name = raw::HOOK_NAMES[h];
            let old = self.reported[h];
            let labels = vec![("hook".to_owned(), name.to_owned())];
            self.metrics.events.get_or_create(&labels).inc_by(c.events - old.events);
            self.metrics.drops.get_or_create(&labels).inc_by(c.drops - old.drops);
            if c.drops > old.drops {
                let ev =
                    Event::new(self.now(), 0, 0, u16::MAX, EventBody::Lost(Lost { source: name.to_owned(), count: c.drops - old.drops }));
                self.push(sink, ev)?;
            }
        }
        self.reported = counts;
        let lag = sink.lag();
        self.metrics.sink_lag.set(lag.events as i64);
        self.metrics.spool_bytes.set(lag.spool_bytes as i64);
        self.metrics.beat();
        Ok(())
    }

    /// Hands the records now in the ring buffer on, each where it lies in
    /// the ring (no copy of a chunk's bytes but into its syscall's buffer);
    /// returns the bytes read.
    fn read_ring(&mut self, sink: &mut dyn Sink) -> Result<usize> {
        let Some(mut ring) = self.probe.ring.take() else { return Ok(0) };
        let mut res = Ok(());
        let bytes = ring.drain(|rec| {
            res = self.handle_record(sink, rec);
            res.is_ok()
        });
        self.probe.ring = Some(ring);
        self.metrics.ring_fill.set(bytes as f64 / self.probe.ring_bytes as f64);
        res.map(|()| bytes)
    }

    fn handle_record(&mut self, sink: &mut dyn Sink, buf: &[u8]) -> Result<()> {
        let rec = match raw::decode_record(buf, self.offset) {
            Ok(x) => x,
            Err(e) => {
                self.decode_errors += 1;
                self.metrics.decode_errors.inc_by(1);
                tracing::warn!("{e}");
                return Ok(());
            }
        };
        {
            match rec {
                raw::Record::Event(ev, hook, out) => {
                    self.received[hook] += 1;
                    match out {
                        Some(mut out) if out.chunks > 0 || out.path => {
                            tracing::debug!("output buffer of {:?}: {out:?}", ev.body.kind());
                            if let Some(p) = self.pending.remove(&ev.tid) {
                                self.finish_pending(sink, p, true)?;
                            }
                            let inline = std::mem::take(&mut out.inline);
                            let mut p = Pending::new(ev, out, false);
                            if !inline.is_empty() {
                                p.add_owned(p.out.addr, inline);
                            }
                            self.pending.insert(p.ev.tid, p);
                        }
                        Some(mut out) => {
                            // no chunks: a small buffer inline, or nothing captured (a
                            // buffer that could not be read, a write shown on stdout
                            // that was empty)
                            let mut inline = std::mem::take(&mut out.inline);
                            let opened = out.opened.then(|| String::from_utf8_lossy(&std::mem::take(&mut inline)).into_owned());
                            // a read by reference: its bytes from the file
                            let mut miss = None;
                            if let Some(r) = out.file.take() {
                                match self.fill_by_reference(&r, out.len as usize) {
                                    Ok(b) => inline = b,
                                    Err(m) => miss = Some(m),
                                }
                            }
                            let incomplete = out.truncated
                                || (out.len as usize > inline.len())
                                || (out.shown != 0 && s_ret(&ev) > 0 && inline.is_empty());
                            let mut p = Pending::new(ev, out, incomplete);
                            p.path = opened;
                            if !inline.is_empty() {
                                p.add_owned(p.out.addr, inline);
                            }
                            self.finish_pending(sink, p, false)?;
                            if let (Some(m), None) = (miss, self.first_miss) {
                                self.first_miss = Some((self.seq - 1, m)); // the event just pushed
                            }
                        }
                        None => {
                            // A later record of the same task: the chunks still missing
                            // from its pending syscall were dropped (counted).
                            if matches!(ev.kind(), kpl::Kind::Signal | kpl::Kind::Exit | kpl::Kind::Fork | kpl::Kind::Exec) {
                                if let Some(p) = self.pending.remove(&ev.tid) {
                                    self.finish_pending(sink, p, true)?;
                                }
                            }
                            let unplaced = match &ev.body {
                                EventBody::Signal(sg) if !sg.synchronous && !sg.landing.in_syscall => Some((ev.tid, sg.signo)),
                                _ => None,
                            };
                            if let EventBody::Syscall(s) = &ev.body {
                                if s.nr == 3 && self.cfg.replay_grade {
                                    self.fds.remove(&(ev.pid, s.args[0]));
                                }
                                // a file mapped from a descriptor: keep its content (as the ptrace recorder does)
                                const MAP_ANONYMOUS: u64 = 0x20;
                                if s.nr == 9
                                    && self.cfg.replay_grade
                                    && s.ret >= 0
                                    && (s.args[4] as i32) >= 0
                                    && s.args[3] & MAP_ANONYMOUS == 0
                                {
                                    if let Some(path) = self.fds.get(&(ev.pid, s.args[4] as i32 as u64)).cloned() {
                                        let like = ev.clone();
                                        self.snapshot(sink, &like, &path, "mmap")?;
                                    }
                                }
                            }
                            if let EventBody::Exit(x) = &ev.body {
                                if x.group {
                                    let pid = ev.pid;
                                    self.fds.retain(|(p, _), _| *p != pid);
                                }
                            }
                            self.emit(sink, ev)?;
                            if let Some((tid, signo)) = unplaced {
                                self.async_signals += 1;
                                if self.first_async_signal.is_none() {
                                    self.first_async_signal = Some((self.seq - 1, tid, signo));
                                }
                            }
                        }
                    }
                }
                raw::Record::Data(c) => {
                    tracing::debug!("chunk tid {} index {} addr {:#x} {} bytes", c.tid, c.index, c.addr, c.bytes.len());
                    self.received[1] += 1;
                    let Some(p) = self.pending.get_mut(&c.tid) else {
                        return Ok(()); // its syscall record was dropped (counted)
                    };
                    if c.index == raw::PATH_INDEX {
                        p.path = Some(String::from_utf8_lossy(c.bytes).into_owned());
                    } else {
                        if c.index != p.got || c.bytes.is_empty() {
                            p.incomplete = true; // a chunk was dropped or unreadable
                        }
                        if !p.incomplete {
                            p.add(c.addr, c.bytes);
                        }
                        p.got = c.index + 1;
                    }
                    if p.complete() {
                        let p = self.pending.remove(&c.tid).unwrap();
                        self.finish_pending(sink, p, false)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The bytes of a read by reference, from the file ([`fileref::Filler`]), counted in the metrics.
    fn fill_by_reference(&mut self, r: &fileref::FileRead, len: usize) -> Result<Vec<u8>, fileref::Miss> {
        let filler = self.filler.as_mut().ok_or(fileref::Miss::NoMount)?;
        match filler.fill(r, len) {
            Ok(b) => {
                self.metrics.file_refs.inc();
                self.metrics.file_ref_bytes.inc_by(b.len() as u64);
                Ok(b)
            }
            Err(m) => {
                self.metrics.file_ref_misses.get_or_create(&vec![("reason".to_owned(), m.name().to_owned())]).inc();
                tracing::debug!("read by reference of inode {} not filled: {}", r.ino, m.what());
                Err(m)
            }
        }
    }

    /// Emits a replay-grade syscall with the memory the kernel wrote.
    fn finish_pending(&mut self, sink: &mut dyn Sink, mut p: Pending, cut: bool) -> Result<()> {
        // Bytes missing (a chunk dropped or cut off by the task's next record);
        // a lost path record (open calls) loses no memory the kernel wrote.
        let short = p.bytes() < p.out.len || (cut && p.got < p.out.chunks);
        if let EventBody::Syscall(s) = &mut p.ev.body {
            let s: &mut Syscall = s;
            if p.incomplete || p.out.truncated || short {
                s.flags |= Syscall::FLAG_TRUNCATED;
            }
            s.flags |= p.out.shown;
            for (addr, b) in p.writes.drain(..) {
                if !b.is_empty() {
                    s.writes.push(MemWrite { addr, data: Data::Bytes(b) });
                }
            }
            if let Some(path) = p.path.take() {
                self.fds.insert((p.ev.pid, s.ret as u64), path);
            }
            let fds = &self.fds;
            let pid = p.ev.pid;
            self.policy.apply(s, |fd| fds.get(&(pid, fd)).cloned());
        }
        self.emit(sink, p.ev)
    }
    /// Reads events into `sink` until `stop()` returns true, then detaches
    /// the programs, reads what is left, reports drops and closes the sink.
    pub fn run(&mut self, sink: &mut dyn Sink, stop: &dyn Fn() -> bool) -> Result<Summary> {
        let poll = Duration::from_millis(self.cfg.poll_ms.max(1));
        self.note(
            sink,
            format!(
                "recorder started: hooks {:?}, filter {:?}, replay-grade {}, ring buffer {} KiB",
                self.cfg.hooks, self.cfg.filter, self.cfg.replay_grade, self.cfg.ring_buffer_kb
            ),
        )?;
        let pace = Duration::from_micros(self.cfg.drain_pace_us);
        let mut last_counts = Instant::now();
        let mut last_drain = 0;
        loop {
            let stopping = stop();
            if stopping {
                self.probe.detach();
            } else {
                // The ring polls readable while any record waits, so a reader
                // that polls again at once chases every record: it drains a
                // few at a time, and the ring's positions and the records'
                // cache lines move between the traced task's CPU and the
                // reader's for each of them. After a small drain the reader
                // lets records gather for `drain_pace_us` first; after a large
                // one (a sixteenth of the ring or more) it goes straight back,
                // and the pause ends early when the ring passes its fill
                // threshold (the programs' wakeup).
                if !pace.is_zero() && last_drain > 0 && last_drain < self.probe.ring_bytes / 16 {
                    self.probe.pause(pace);
                }
                self.probe.wait(poll);
            }
            last_drain = self.read_ring(sink)?;
            if stopping || last_counts.elapsed() >= Duration::from_millis(200) {
                self.check_counts(sink)?;
                last_counts = Instant::now();
            }
            sink.tick()?;
            if stopping {
                let rest: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
                for p in rest {
                    self.finish_pending(sink, p, true)?;
                }
                break;
            }
        }
        let mut s = Summary {
            hooks: self.reported,
            received: self.received,
            decode_errors: self.decode_errors,
            async_signals: self.async_signals,
            first_async_signal: self.first_async_signal,
            ..Default::default()
        };
        if let Some(f) = &self.filler {
            s.file_refs = f.filled;
            s.file_ref_bytes = f.bytes;
            s.file_ref_misses = f.missed();
        }
        if let Some((seq, m)) = self.first_miss {
            let why: Vec<String> = self.filler.iter().flat_map(|f| f.misses.iter().map(|(m, n)| format!("{n} {}", m.what()))).collect();
            self.note(
                sink,
                format!(
                    "{} read(s) of files captured by reference could not be filled ({}; first at event {seq}: {}): \
                     those syscalls are marked incomplete and the replay stops at the first",
                    s.file_ref_misses,
                    why.join(", "),
                    m.what()
                ),
            )?;
        }
        if let Some((seq, tid, signo)) = self.first_async_signal {
            self.note(
                sink,
                format!(
                    "{} asynchronous signal(s) landed in user code (first: {} to task {tid} at event {seq}): \
                     an eBPF log cannot place them; the replay stops there",
                    self.async_signals,
                    kpl::json::signal_name(signo)
                ),
            )?;
        }
        self.note(
            sink,
            format!("recorder stopped: {} events read, {} dropped in the kernel", self.received.iter().sum::<u64>(), s.dropped()),
        )?;
        s.events = self.seq;
        s.sink = sink.finish()?;
        Ok(s)
    }
}
