//! The ptrace supervisor: records a process tree into a `.kpl` log and
//! replays it deterministically.
//!
//! * [`record()`] runs a command under ptrace, one thread at a time, and
//!   writes every syscall with its results and the memory the kernel wrote,
//!   signals and where they landed, preemptions, rdtsc and cpuid results,
//!   and the files replay needs.
//! * [`replay::Replayer`] re-executes the program: syscalls that touch the
//!   outside world are served from the log, the ones that shape the process
//!   are executed and checked; divergence is an error naming the event.
//!
//! [`sys`] holds everything known about individual syscalls; [`os`] is the
//! one small wrapper around ptrace and process memory.

#![warn(missing_docs)]

pub mod debug;
pub mod elf;
pub mod emulate;
pub mod files;
pub mod inject;
pub mod landing;
pub mod os;
pub mod record;
pub mod replay;
pub mod sys;
pub mod vdso;
pub mod virt;

pub use record::{record, RecordOptions, RecordOutcome};

use kpl::event::Landing;

/// Errors of recording and replaying.
#[derive(thiserror::Error, Debug)]
#[allow(missing_docs)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Os(String),
    #[error(transparent)]
    Log(#[from] kpl::Error),
    #[error("cannot record faithfully: task {tid} called {syscall} at ip {ip:#x}: {why}")]
    Unsupported { tid: i32, syscall: String, why: String, ip: u64 },
    #[error("replay diverged at event {seq} (task {tid}): expected {expected}, but the program {actual}{place}")]
    Divergence { seq: u64, tid: u32, expected: String, actual: String, place: String },
    #[error("replay cannot go on at event {seq} (task {tid}): {why}")]
    Replay { seq: u64, tid: u32, why: String },
}

/// A hash of the registers that identify a point in a thread's execution
/// (general-purpose registers, instruction pointer, flags without the trap
/// bits): where an asynchronous event landed is found again at replay by
/// stopping at the instruction pointer until the fingerprint matches.
pub fn fingerprint(r: &os::Regs) -> u64 {
    let v = [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        r.rip,
        r.eflags & !0x10100,
        r.rsp,
        r.fs_base,
    ];
    let mut bytes = Vec::with_capacity(v.len() * 8);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    u64::from_le_bytes(blake3::hash(&bytes).as_bytes()[..8].try_into().unwrap())
}

/// Where a task's last syscall returned: instruction and stack pointers and
/// the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitPoint {
    /// Instruction pointer after the `syscall` instruction.
    pub ip: u64,
    /// Stack pointer.
    pub sp: u64,
    /// Return value.
    pub ret: i64,
}

/// Where a task stopped: its registers, and whether it is still exactly
/// where its last syscall returned (then the landing is that syscall's):
/// same instruction and stack pointers, the result still in rax and the
/// return address the `syscall` instruction left in rcx.
pub fn landing_of(r: &os::Regs, last_exit: Option<&ExitPoint>) -> Landing {
    let in_syscall = last_exit.is_some_and(|e| r.rip == e.ip && r.rsp == e.sp && r.rax == e.ret as u64 && r.rcx == e.ip);
    Landing { ip: r.rip, fingerprint: fingerprint(r), passes: 0, in_syscall, regs: landing::regs_vec(r) }
}
