//! The event model: everything kprobe records, typed and versioned.
//!
//! Every event shares a small header ([`Event`]: global sequence number,
//! nanosecond timestamp, pid, tid, cpu, cgroup id) and carries one typed body
//! ([`EventBody`]). Each body kind has a stable numeric id ([`Kind`]) that is
//! written to disk; a reader that meets an id it does not know skips the event
//! and counts it (see [`crate::Reader::skipped_unknown`]).
//!
//! Bodies are serialized with postcard. Fields may only ever be *appended* to
//! a body struct (readers ignore trailing bytes they do not understand), and a
//! new kind gets a new id; ids are never reused.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A content hash (BLAKE3) naming a blob in the log's file store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileHash(pub [u8; 32]);

impl FileHash {
    /// Hashes `bytes`.
    pub fn of(bytes: &[u8]) -> FileHash {
        FileHash(*blake3::hash(bytes).as_bytes())
    }
    /// Lower-case hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for FileHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileHash({})", &self.to_hex()[..16])
    }
}

/// Bytes carried by an event (syscall buffers, exec arguments that are large, ...).
///
/// Writers hand events over with [`Data::Bytes`]; the writer moves large
/// buffers into the payload stream, so a reader scanning events sees
/// [`Data::Stored`] for them and fetches the bytes only when asked
/// ([`crate::Reader::payload`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Data {
    /// The bytes themselves.
    Bytes(Vec<u8>),
    /// A range of the log's payload stream.
    Stored {
        /// Logical offset in the payload stream.
        offset: u64,
        /// Length in bytes.
        len: u32,
    },
    /// The bytes were withheld by the capture policy. A replay that needs them
    /// reports the redaction instead of diverging silently.
    Redacted {
        /// How many bytes were withheld.
        len: u32,
        /// BLAKE3 of the withheld bytes when the policy says `hash`, else none.
        hash: Option<FileHash>,
        /// Which policy rule withheld them (e.g. `path:/etc/secret/*`).
        rule: String,
    },
}

impl Data {
    /// Length of the data in bytes, wherever it lives.
    pub fn len(&self) -> usize {
        match self {
            Data::Bytes(b) => b.len(),
            Data::Stored { len, .. } | Data::Redacted { len, .. } => *len as usize,
        }
    }
    /// True when the data is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Data::Bytes(b) if b.len() <= 32 => write!(f, "Bytes({})", hex::encode(b)),
            Data::Bytes(b) => write!(f, "Bytes({}.. {} bytes)", hex::encode(&b[..16]), b.len()),
            Data::Stored { offset, len } => write!(f, "Stored({offset}+{len})"),
            Data::Redacted { len, hash, rule } => {
                write!(f, "Redacted({len} bytes, {rule}, {:?})", hash.map(|h| h.to_hex()))
            }
        }
    }
}

/// One region of tracee memory the kernel wrote during a syscall.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemWrite {
    /// Address in the tracee.
    pub addr: u64,
    /// What was written.
    pub data: Data,
}

/// Reference to a file kept in the log's file store (for replay elsewhere).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// Path as the program saw it.
    pub path: String,
    /// Content hash in the file store; `None` when the file was not stored.
    pub hash: Option<FileHash>,
    /// Size in bytes.
    pub size: u64,
    /// GNU build-id of an ELF file, when it has one.
    pub build_id: Vec<u8>,
}

/// `execve` succeeded: a new program image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    /// The executable.
    pub exe: FileRef,
    /// Argument vector.
    pub argv: Vec<String>,
    /// Environment.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// The auxiliary vector as (type, value) pairs.
    pub auxv: Vec<(u64, u64)>,
}

/// How a new task was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForkKind {
    /// fork(2) or clone without CLONE_VM.
    Fork,
    /// vfork(2).
    Vfork,
    /// A thread (CLONE_THREAD).
    Thread,
}

/// A task created a new task. The event's pid/tid are the parent's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    /// Kind of creation.
    pub kind: ForkKind,
    /// New task's process id (tgid).
    pub child_pid: u32,
    /// New task's thread id.
    pub child_tid: u32,
    /// Raw clone flags.
    pub flags: u64,
}

/// A task or process ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Exit status (meaningful when `signal` is none).
    pub code: i32,
    /// Terminating signal, if killed by one.
    pub signal: Option<i32>,
    /// A core was dumped.
    pub core_dumped: bool,
    /// The whole thread group ended (false: only this thread).
    pub group: bool,
}

/// A system call, from entry to exit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Syscall {
    /// x86-64 syscall number.
    pub nr: u32,
    /// The six argument registers.
    pub args: [u64; 6],
    /// Return value (negative errno on failure), as the kernel returned it.
    pub ret: i64,
    /// Time from entry to exit, nanoseconds (the event timestamp is the entry).
    pub duration_ns: u64,
    /// Memory the kernel wrote into the caller.
    pub writes: Vec<MemWrite>,
    /// Kind of the file descriptor in `args[0]`, when known ([`FdType`]).
    pub fd_type: FdType,
    /// Bit flags ([`Syscall::FLAG_INCOMPLETE`], ...).
    pub flags: u32,
}

impl Syscall {
    /// The syscall entered but its exit was not seen (task killed, recording stopped).
    pub const FLAG_INCOMPLETE: u32 = 1;
    /// The syscall was restarted by the kernel after a signal.
    pub const FLAG_RESTARTED: u32 = 2;
    /// Entered through a vDSO function the recorder turned into a syscall.
    pub const FLAG_VDSO: u32 = 4;
    /// Output buffers were captured only partially (e.g. chunk limit).
    pub const FLAG_TRUNCATED: u32 = 8;
    /// The call wrote to the recorder's own stdout: `writes` holds the bytes
    /// written, which replay shows.
    pub const FLAG_STDOUT: u32 = 16;
    /// As [`Syscall::FLAG_STDOUT`], for stderr.
    pub const FLAG_STDERR: u32 = 32;

    /// Name of the syscall (e.g. `write`), or `syscall_N` when unknown.
    pub fn name(&self) -> String {
        crate::sys::syscall_name(self.nr)
    }
}

/// What a file descriptor refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum FdType {
    /// Not known or not applicable.
    #[default]
    Unknown,
    /// Regular file.
    File,
    /// Pipe or FIFO.
    Pipe,
    /// TCP socket.
    Tcp,
    /// UDP socket.
    Udp,
    /// Unix-domain socket.
    Unix,
    /// Terminal or other character device.
    Char,
    /// Anything else (eventfd, epoll, ...).
    Other,
}

/// Where in user code an asynchronous event landed, found again on replay by
/// running to `ip` until the register fingerprint matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Landing {
    /// Instruction pointer.
    pub ip: u64,
    /// Hash of the general-purpose registers (see the tracer).
    pub fingerprint: u64,
    /// How many times the task had already passed `ip` with this fingerprint
    /// since its previous event (0 for the first pass).
    pub passes: u32,
    /// True when the task was inside a syscall (the landing is that syscall's).
    pub in_syscall: bool,
    /// The general-purpose registers at the landing (x86-64
    /// `user_regs_struct` order), so replay can compare them in the tracee
    /// itself rather than stopping at every pass.
    pub regs: Vec<u64>,
}

/// A signal was delivered to a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    /// Signal number.
    pub signo: i32,
    /// si_code.
    pub code: i32,
    /// Sending pid, when known.
    pub sender_pid: u32,
    /// Faulting address for synchronous signals.
    pub addr: u64,
    /// Where it landed.
    pub landing: Landing,
    /// True for signals caused by the instruction itself (SIGSEGV, SIGTRAP...).
    pub synchronous: bool,
    /// The raw siginfo the kernel delivered (128 bytes), when captured.
    pub siginfo: Vec<u8>,
}

/// The tracer preempted a task that ran long without a syscall.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preempt {
    /// Where the task was stopped.
    pub landing: Landing,
}

/// Why a task resumed running user code (see [`Resume`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResumeReason {
    /// A new task's first run.
    Start,
    /// After a preemption.
    AfterPreempt,
    /// After any other stop the tracer held it in.
    AfterStop,
}

/// A task resumed running user code for a reason other than a syscall
/// returning (those resumptions are the [`Syscall`] events themselves).
///
/// Recording with the ptrace tracer, threads run user code one at a time;
/// every event that lets a task run again is written at the moment the task
/// is resumed, so the order of events is the order in which tasks ran. Replay
/// resumes tasks in that order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// Why.
    pub reason: ResumeReason,
}

/// Result of a trapped `rdtsc`/`rdtscp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rdtsc {
    /// Address of the instruction.
    pub ip: u64,
    /// The time-stamp counter value returned.
    pub tsc: u64,
    /// `Some(aux)` for rdtscp (the value of ecx).
    pub aux: Option<u32>,
}

/// Result of a trapped `cpuid`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpuid {
    /// Address of the instruction.
    pub ip: u64,
    /// eax on entry.
    pub leaf: u32,
    /// ecx on entry.
    pub subleaf: u32,
    /// eax, ebx, ecx, edx returned.
    pub regs: [u32; 4],
}

/// A task (or file) the log needs for replay: content stored in the file store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSnapshot {
    /// The file.
    pub file: FileRef,
    /// Why it was captured (e.g. `mmap`, `open`, `exec`).
    pub reason: String,
}

/// Context switch on a CPU (the event's pid/tid are those of the task switched out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedSwitch {
    /// Command of the task switched out.
    pub prev_comm: String,
    /// Its state (`R` preempted, `S` sleeping, `D` uninterruptible, ...).
    pub prev_state: u8,
    /// Task switched in.
    pub next_pid: u32,
    /// Its thread id.
    pub next_tid: u32,
    /// Its command.
    pub next_comm: String,
}

/// A task was woken (the event's pid/tid are those of the woken task).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedWakeup {
    /// CPU it was queued on.
    pub target_cpu: u16,
    /// Task that woke it.
    pub waker_pid: u32,
    /// Waker thread id.
    pub waker_tid: u32,
    /// A new task (sched_wakeup_new).
    pub new_task: bool,
}

/// A task waited on a run queue: derived from wakeup → switch-in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedDelay {
    /// Time runnable but not running, nanoseconds.
    pub delay_ns: u64,
    /// Task that ran most of that time instead (the culprit).
    pub culprit_pid: u32,
    /// Culprit thread id.
    pub culprit_tid: u32,
    /// Culprit command.
    pub culprit_comm: String,
    /// Time the task had spent off CPU before the wakeup, nanoseconds.
    pub off_cpu_ns: u64,
}

/// A task moved to another CPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedMigrate {
    /// CPU it left.
    pub from_cpu: u16,
    /// CPU it went to.
    pub to_cpu: u16,
}

/// A TCP connection's 4-tuple.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tuple {
    /// Local address.
    pub saddr: IpAddr,
    /// Local port.
    pub sport: u16,
    /// Remote address.
    pub daddr: IpAddr,
    /// Remote port.
    pub dport: u16,
}

/// TCP data, retransmit or state event (see [`Kind`] for which).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tcp {
    /// Connection.
    pub tuple: Tuple,
    /// Bytes sent/received/retransmitted.
    pub bytes: u64,
    /// Latency of the operation, nanoseconds (0 when not measured).
    pub latency_ns: u64,
    /// Smoothed RTT in microseconds, when available.
    pub srtt_us: u32,
    /// For state changes: old state (TCP_* number).
    pub old_state: u8,
    /// For state changes: new state; for others the current state.
    pub new_state: u8,
}

/// A user page fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageFault {
    /// Faulting address.
    pub addr: u64,
    /// Instruction pointer.
    pub ip: u64,
    /// Error code bits (write, user, present...).
    pub error_code: u32,
    /// `Some(true)` for a major fault (I/O), `Some(false)` minor, `None` unknown.
    pub major: Option<bool>,
    /// Time spent handling it, nanoseconds (0 when not measured).
    pub latency_ns: u64,
}

/// An OpenTelemetry span, tied to the kernel events of the same task and time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanRef {
    /// W3C trace id.
    pub trace_id: [u8; 16],
    /// Span id.
    pub span_id: [u8; 8],
    /// Parent span id (zeros for a root).
    pub parent_span_id: [u8; 8],
    /// Span name.
    pub name: String,
    /// `service.name`.
    pub service: String,
    /// Transaction id (from the configured span attribute); empty if none.
    pub txn: String,
    /// Span start, nanoseconds since the epoch.
    pub start_ns: u64,
    /// Span end, nanoseconds since the epoch.
    pub end_ns: u64,
    /// Status: 0 unset, 1 ok, 2 error.
    pub status: u8,
}

/// A causal edge found by the engine: `cause_seq` delayed `effect_seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    /// Transaction it explains (empty for per-process analysis).
    pub txn: String,
    /// The delayed event.
    pub effect_seq: u64,
    /// The causing event.
    pub cause_seq: u64,
    /// Latency contributed, nanoseconds.
    pub contribution_ns: u64,
    /// Rank among the transaction's causes (1 = root cause).
    pub rank: u32,
    /// Kind of cause (`sched_delay`, `tcp_retransmit`, `page_fault`, ...).
    pub cause_kind: String,
    /// Human-readable explanation.
    pub summary: String,
}

/// Events were lost before reaching the log; counted so nothing is lost silently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    /// Where (e.g. the eBPF hook `sched`, or `ringbuf`).
    pub source: String,
    /// How many events.
    pub count: u64,
}

/// Describes a cgroup seen in the log (its container, for pods later).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupInfo {
    /// Kernel cgroup id (as in event headers).
    pub cgroup_id: u64,
    /// cgroup v2 path or v1 path.
    pub path: String,
    /// Container id parsed from the path (containerd, CRI-O), if any.
    pub container_id: String,
}

/// Free-form note (recorder start/stop, policy decisions...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// Topic (e.g. `policy`, `recorder`).
    pub topic: String,
    /// Text.
    pub text: String,
}

macro_rules! kinds {
    ($( $id:literal $variant:ident ($ty:ty) $name:literal ),* $(,)?) => {
        /// The stable on-disk id of each event kind.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum Kind { $( #[doc = $name] $variant = $id ),* }

        impl Kind {
            /// All kinds this reader knows.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant),*];
            /// From the on-disk id.
            pub fn from_id(id: u16) -> Option<Kind> {
                match id { $( $id => Some(Kind::$variant), )* _ => None }
            }
            /// The on-disk id.
            pub fn id(self) -> u16 { self as u16 }
            /// The name used in JSON output and `log info` (e.g. `sched_switch`).
            pub fn name(self) -> &'static str {
                match self { $( Kind::$variant => $name ),* }
            }
            /// Looks a kind up by its name.
            pub fn from_name(name: &str) -> Option<Kind> {
                match name { $( $name => Some(Kind::$variant), )* _ => None }
            }
        }

        /// The typed body of an event.
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub enum EventBody { $( $variant($ty) ),* }

        impl EventBody {
            /// Its kind.
            pub fn kind(&self) -> Kind {
                match self { $( EventBody::$variant(_) => Kind::$variant ),* }
            }
            pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
                let r = match self { $( EventBody::$variant(b) => postcard::to_io(b, &mut *out).map(|_| ()) ),* };
                r.expect("encoding into a Vec cannot fail");
            }
            pub(crate) fn decode(kind: Kind, bytes: &[u8]) -> Result<EventBody, postcard::Error> {
                Ok(match kind {
                    $( Kind::$variant => EventBody::$variant(postcard::take_from_bytes::<$ty>(bytes)?.0) ),*
                })
            }
        }
    };
}

kinds! {
    1 Exec(Exec) "exec",
    2 Fork(Fork) "fork",
    3 Exit(Exit) "exit",
    4 Syscall(Syscall) "syscall",
    5 Signal(Signal) "signal",
    6 Preempt(Preempt) "preempt",
    7 Rdtsc(Rdtsc) "rdtsc",
    8 Cpuid(Cpuid) "cpuid",
    9 FileSnapshot(FileSnapshot) "file",
    10 SchedSwitch(SchedSwitch) "sched_switch",
    11 SchedWakeup(SchedWakeup) "sched_wakeup",
    12 SchedDelay(SchedDelay) "sched_delay",
    13 SchedMigrate(SchedMigrate) "sched_migrate",
    14 TcpSend(Tcp) "tcp_send",
    15 TcpRecv(Tcp) "tcp_recv",
    16 TcpRetransmit(Tcp) "tcp_retransmit",
    17 TcpState(Tcp) "tcp_state",
    18 PageFault(PageFault) "page_fault",
    19 Span(SpanRef) "span",
    20 Cause(Cause) "cause",
    21 Lost(Lost) "lost",
    22 Cgroup(CgroupInfo) "cgroup",
    23 Note(Note) "note",
    24 Resume(Resume) "resume",
}

/// One recorded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Global sequence number, assigned by the writer (0, 1, 2, ...).
    pub seq: u64,
    /// Nanoseconds (CLOCK_REALTIME at record time for the tracer; the recorder
    /// converts its monotonic clock to the same base).
    pub ts_ns: u64,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// CPU the event happened on (`u16::MAX` when unknown).
    pub cpu: u16,
    /// cgroup id (0 when unknown).
    pub cgroup: u64,
    /// The typed body.
    pub body: EventBody,
}

impl Event {
    /// A new event; `seq` is filled in by the writer.
    pub fn new(ts_ns: u64, pid: u32, tid: u32, cpu: u16, body: EventBody) -> Event {
        Event { seq: 0, ts_ns, pid, tid, cpu, cgroup: 0, body }
    }
    /// The body's kind.
    pub fn kind(&self) -> Kind {
        self.body.kind()
    }
    /// The transaction id this event names, if any (spans and causes).
    pub fn txn(&self) -> Option<&str> {
        match &self.body {
            EventBody::Span(s) if !s.txn.is_empty() => Some(&s.txn),
            EventBody::Cause(c) if !c.txn.is_empty() => Some(&c.txn),
            _ => None,
        }
    }
    /// Visits every [`Data`] this event carries.
    pub fn data_mut(&mut self, mut f: impl FnMut(&mut Data)) {
        if let EventBody::Syscall(s) = &mut self.body {
            for w in &mut s.writes {
                f(&mut w.data);
            }
        }
    }
    /// Visits every [`Data`] this event carries.
    pub fn data(&self, mut f: impl FnMut(&Data)) {
        if let EventBody::Syscall(s) = &self.body {
            for w in &s.writes {
                f(&w.data);
            }
        }
    }
}
