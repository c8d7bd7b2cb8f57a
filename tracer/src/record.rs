//! Recording a process tree under ptrace into a `.kpl` log.
//!
//! Threads run user code one at a time. Each event that lets a task run
//! again (a syscall completing, a signal being delivered, a new task's first
//! run, a preempted task resuming) is written at the moment the task is
//! resumed, so the order of events in the log is the order in which tasks
//! ran; replay resumes them in that order. Events that happen while a task
//! is stopped (fork, exit, preemption, trapped rdtsc/cpuid) are written when
//! they happen. A task inside a blocking syscall lets others run meanwhile.

use crate::files::FileCapture;
use crate::os::{self, Mem, Pid, Regs, SyscallInfo};
use crate::sys::{self, Class};
use crate::{landing_of, vdso, Error};
use kpl::event::*;
use kpl::{Event, EventBody, Metadata, Writer};
use nix::sys::wait::WaitStatus;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;
use syscalls::Sysno;

/// What to record and how.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    /// Where to write the log.
    pub output: PathBuf,
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// Longest time a thread runs user code while others wait (default 20 ms).
    pub time_slice: Duration,
    /// When `cpuid` is trapped and recorded.
    pub cpuid: crate::inject::CpuidMode,
    /// Pin the tracer and the program to one CPU (`Some(None)`: the current
    /// one); `None` leaves affinity alone.
    pub pin: Option<Option<usize>>,
    /// Perform the calls it can itself at the entry stop (one stop per call
    /// instead of two; see [`crate::emulate`]).
    pub emulate: bool,
}

/// The result of a recording.
#[derive(Clone, Debug)]
pub struct RecordOutcome {
    /// Exit code as a shell reports it (128 + signal when killed).
    pub exit_code: i32,
    /// Events written.
    pub events: u64,
    /// Log size in bytes.
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    /// Created; its first stop has not been seen yet.
    New,
    /// Running user code (holds the CPU).
    Running,
    /// Inside a syscall that may block; others may run.
    InKernel,
    /// Inside a quick syscall; keeps the CPU.
    InKernelQuick,
    /// Stopped, waiting to be resumed.
    Ready,
    /// Exiting (its exit event was written).
    Exiting,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// PTRACE_CONT: next stop is a seccomp stop, a signal or an event.
    Cont,
    /// PTRACE_SYSCALL: inside a syscall, the next stop is its exit.
    Syscall,
}

struct Entry {
    nr: u32,
    args: [u64; 6],
    ts: u64,
    /// Monotonic time at entry ([`mono_ns`]).
    t0: u64,
    class: Class,
    /// Data captured at entry for an execve.
    exec: Option<ExecInfo>,
}

struct ExecInfo {
    argv: Vec<String>,
    env: Vec<String>,
    cwd: String,
    exe: FileRef,
    snapshots: Vec<FileSnapshot>,
}

struct Task {
    tid: Pid,
    tgid: Pid,
    st: St,
    /// Events to write when the task is resumed (the last one is the resume
    /// event), each with its timestamp (`None`: the time of writing).
    pending: Vec<(Option<u64>, EventBody)>,
    resume_mode: Mode,
    resume_sig: i32,
    entry: Option<Entry>,
    last_exit: Option<crate::ExitPoint>,
    execed: bool,
    preempt_asked: bool,
    /// Memory regions of the pending syscall event, read when the task is
    /// resumed: what the task sees then, after everything logged before it.
    capture: Vec<sys::Region>,
    /// The siginfo of the signal to deliver on resume.
    resume_siginfo: Option<[u8; 128]>,
    /// The creator's fork event was written (a new task may run only after it).
    forked: bool,
    /// A new task's first stop was seen.
    first_stop: bool,
    /// Siginfo of signals held back while positioning another and sent again.
    held_signals: Vec<[u8; 128]>,
}

/// Per-process state.
struct Proc {
    mem: Mem,
    vdso: vdso::Vdso,
    /// cpuid currently faults in this process.
    cpuid_faulting: bool,
}

struct Recorder {
    w: Writer,
    tasks: HashMap<Pid, Task>,
    procs: HashMap<Pid, Proc>,
    ready: VecDeque<Pid>,
    running: Option<Pid>,
    /// End of the running thread's slice, monotonic ns ([`mono_ns`]).
    slice_end: u64,
    slice: Duration,
    root: Pid,
    root_status: Option<i32>,
    files: FileCapture,
    waker: os::ChildWaker,
    cpuid: crate::inject::CpuidMode,
    /// (device, inode) of the recorder's own stdout and stderr.
    own_stdio: [Option<(u64, u64)>; 2],
    /// Calls performed by the recorder itself (`None`: all left to the kernel).
    emulator: Option<crate::emulate::Emulator>,
}

/// Records `opts.argv` into `opts.output`. The program's stdout and stderr
/// pass through live; the outcome carries its exit code.
pub fn record(opts: &RecordOptions) -> Result<RecordOutcome, Error> {
    let cmd = opts.argv.first().ok_or_else(|| Error::Usage("no command to record".into()))?;
    let path = resolve_command(cmd).ok_or_else(|| Error::Usage(format!("command not found: {cmd}")))?;
    let c = |s: &str| std::ffi::CString::new(s).map_err(|_| Error::Usage(format!("NUL byte in {s:?}")));
    let env: Vec<std::ffi::CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut s = k.into_encoded_bytes();
            s.push(b'=');
            s.extend(v.into_encoded_bytes());
            std::ffi::CString::new(s).unwrap_or_default()
        })
        .collect();
    let stack = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_STACK).unwrap_or((8 << 20, u64::MAX));
    let spec = os::SpawnSpec {
        path: c(&path)?,
        argv: opts.argv.iter().map(|a| c(a)).collect::<Result<_, _>>()?,
        env,
        cwd: None,
        chroot: None,
        stack_limit: Some(stack),
        seccomp: os::seccomp_filter(&sys::seccomp_allowed()),
        null_stdio: false,
    };
    let mut meta = Metadata::for_this_host("ptrace", opts.argv.clone());
    meta.extra.push(("rlimit_stack".into(), format!("{} {}", stack.0, stack.1)));
    meta.extra.push(("cpuid_faulting".into(), opts.cpuid.name().into()));
    meta.extra.push(("cwd".into(), std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default()));
    if let Some(cpu) = opts.pin {
        let c = os::pin_to_cpu(cpu).map_err(|e| Error::Os(format!("pinning to a CPU: {e}")))?;
        meta.extra.push(("pinned_cpu".into(), c.to_string()));
    }
    let w = Writer::create(&opts.output, &meta)?;
    let waker = os::ChildWaker::new().map_err(|e| Error::Os(format!("signalfd: {e}")))?;
    let root = os::spawn(&spec).map_err(|e| Error::Os(format!("starting {cmd}: {e}")))?;
    let mut r = Recorder {
        w,
        tasks: HashMap::new(),
        procs: HashMap::new(),
        ready: VecDeque::new(),
        running: Some(root),
        slice_end: mono_ns() + opts.time_slice.as_nanos() as u64,
        slice: opts.time_slice,
        root,
        root_status: None,
        files: FileCapture::default(),
        waker,
        own_stdio: [file_id("/proc/self/fd/1"), file_id("/proc/self/fd/2")],
        cpuid: opts.cpuid,
        emulator: opts.emulate.then(crate::emulate::Emulator::default),
    };
    r.tasks.insert(root, Task::new(root, root, St::Running));
    let res = r.run();
    if res.is_err() {
        for t in r.tasks.keys() {
            os::kill(*t);
        }
        // Reap what we can so no zombie outlives us.
        while let Ok(Some(_)) = os::wait(None, true) {}
    }
    res?;
    let code = r.root_status.unwrap_or(0);
    r.w.set_exit_code(Some(code));
    if let Some(e) = &r.emulator {
        r.w.set_summary_fact("syscalls_performed_by_recorder", e.performed);
    }
    let (_, st) = r.w.finish()?;
    Ok(RecordOutcome { exit_code: code, events: st.events, bytes: st.bytes })
}

fn resolve_command(cmd: &str) -> Option<String> {
    if cmd.contains('/') {
        return Some(cmd.to_owned());
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    path.split(':').map(|d| format!("{d}/{cmd}")).find(|p| std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false))
}

impl Task {
    fn new(tid: Pid, tgid: Pid, st: St) -> Task {
        Task {
            tid,
            tgid,
            st,
            pending: Vec::new(),
            resume_mode: Mode::Cont,
            resume_sig: 0,
            entry: None,
            last_exit: None,
            execed: false,
            preempt_asked: false,
            capture: Vec::new(),
            resume_siginfo: None,
            forked: false,
            first_stop: false,
            held_signals: Vec::new(),
        }
    }
}

/// Wall-clock time for event timestamps. (The tracer reads its clocks with
/// the syscall: it shares its tracees' rdtsc trap, see `os::share_tsc_trap`.)
fn now_ns() -> u64 {
    os::clock_ns(libc::CLOCK_REALTIME)
}

/// Monotonic time, for durations and time slices.
fn mono_ns() -> u64 {
    os::clock_ns(libc::CLOCK_MONOTONIC)
}

impl Recorder {
    fn emit(&mut self, tid: Pid, body: EventBody) -> Result<u64, Error> {
        let tgid = self.tasks.get(&tid).map(|t| t.tgid).unwrap_or(tid);
        Ok(self.w.append(Event::new(now_ns(), tgid.as_raw() as u32, tid.as_raw() as u32, u16::MAX, body))?)
    }

    fn emit_at(&mut self, tid: Pid, ts: u64, body: EventBody) -> Result<u64, Error> {
        let tgid = self.tasks.get(&tid).map(|t| t.tgid).unwrap_or(tid);
        Ok(self.w.append(Event::new(ts, tgid.as_raw() as u32, tid.as_raw() as u32, u16::MAX, body))?)
    }

    fn mem(&self, tid: Pid) -> Result<&Mem, Error> {
        let tgid = self.tasks.get(&tid).map(|t| t.tgid).unwrap_or(tid);
        self.procs.get(&tgid).map(|p| &p.mem).ok_or_else(|| Error::Os(format!("no memory handle for process {tgid}")))
    }

    fn run(&mut self) -> Result<(), Error> {
        let _tsc = os::share_tsc_trap();
        loop {
            os::rearm_tsc_trap();
            if self.tasks.is_empty() {
                return Ok(());
            }
            self.schedule()?;
            // Preempt a thread that ran out of its slice while others wait.
            if let Some(r) = self.running {
                if mono_ns() >= self.slice_end && !self.ready.is_empty() {
                    let t = self.tasks.get_mut(&r).unwrap();
                    if t.st == St::Running && !t.preempt_asked {
                        t.preempt_asked = true;
                        let _ = os::interrupt(r);
                    }
                }
            }
            // Nobody to preempt in favour of: block in waitpid (no timer needed).
            let must_tick = self.running.is_some() && !self.ready.is_empty();
            match os::wait(None, must_tick) {
                Ok(Some(s)) => self.handle(s)?,
                Ok(None) => {
                    let ms = if self.running.is_some() && !self.ready.is_empty() {
                        (self.slice_end.saturating_sub(mono_ns()) / 1_000_000).clamp(1, 50) as i32
                    } else {
                        50
                    };
                    self.waker.wait(ms);
                }
                Err(nix::errno::Errno::ECHILD) => return Ok(()),
                Err(e) => return Err(Error::Os(format!("waitpid: {e}"))),
            }
        }
    }

    /// Gives the CPU to the next ready task when nobody holds it.
    fn schedule(&mut self) -> Result<(), Error> {
        while self.running.is_none() {
            let Some(tid) = self.ready.pop_front() else {
                return Ok(());
            };
            let Some(t) = self.tasks.get_mut(&tid) else {
                continue;
            };
            if t.st != St::Ready {
                continue;
            }
            let mut pending = std::mem::take(&mut t.pending);
            let capture = std::mem::take(&mut t.capture);
            let (mode, sig) = (t.resume_mode, t.resume_sig);
            let siginfo = t.resume_siginfo.take();
            t.resume_sig = 0;
            if !capture.is_empty() {
                if let Some((_, EventBody::Syscall(sc))) = pending.last_mut() {
                    let mem = self.mem(tid)?;
                    let mut outs = Vec::with_capacity(capture.len());
                    for (addr, len) in capture {
                        let data = mem.read_partial(addr, len);
                        if !data.is_empty() {
                            outs.push(MemWrite { addr, data: Data::Bytes(data) });
                        }
                    }
                    outs.append(&mut sc.writes);
                    sc.writes = outs;
                }
            }
            for (ts, b) in pending {
                match ts {
                    Some(ts) => self.emit_at(tid, ts, b)?,
                    None => self.emit(tid, b)?,
                };
            }
            let t = self.tasks.get_mut(&tid).unwrap();
            t.st = if mode == Mode::Syscall { St::InKernel } else { St::Running };
            t.preempt_asked = false;
            if let (Some(si), true) = (siginfo, sig != 0) {
                let _ = os::setsiginfo(tid, &si);
            }
            let r = match mode {
                Mode::Cont => os::cont(tid, sig),
                Mode::Syscall => os::syscall(tid, sig),
            };
            if r.is_err() {
                // The task died meanwhile (killed by another thread's exit_group): its exit is coming.
                continue;
            }
            if mode == Mode::Cont {
                self.running = Some(tid);
                self.slice_end = mono_ns() + self.slice.as_nanos() as u64;
            }
        }
        Ok(())
    }

    /// Parks a stopped task until scheduled, with the events to write then.
    fn make_ready(&mut self, tid: Pid, front: bool) {
        if self.running == Some(tid) {
            self.running = None;
        }
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.st = St::Ready;
        }
        if front {
            self.ready.push_front(tid);
        } else {
            self.ready.push_back(tid);
        }
    }

    fn release_cpu(&mut self, tid: Pid) {
        if self.running == Some(tid) {
            self.running = None;
        }
    }

    fn handle(&mut self, s: WaitStatus) -> Result<(), Error> {
        tracing::debug!(?s, running = ?self.running, ready = ?self.ready, "stop");
        let pid = match s.pid() {
            Some(p) => p,
            None => return Ok(()),
        };
        if !self.tasks.contains_key(&pid) {
            // A new task reported before its parent's fork event: adopt it.
            self.tasks.insert(pid, Task::new(pid, pid, St::New));
        }
        match s {
            WaitStatus::Exited(_, code) => self.reaped(pid, code),
            WaitStatus::Signaled(_, sig, _) => self.reaped(pid, 128 + sig as i32),
            WaitStatus::PtraceEvent(_, sig, ev) => self.on_event(pid, sig as i32, ev),
            WaitStatus::PtraceSyscall(_) => self.on_syscall_stop(pid),
            WaitStatus::Stopped(_, sig) => self.on_signal(pid, sig as i32),
            _ => Ok(()),
        }
    }

    fn reaped(&mut self, pid: Pid, status: i32) -> Result<(), Error> {
        if pid == self.root {
            self.root_status = Some(status);
        }
        self.release_cpu(pid);
        self.tasks.remove(&pid);
        if self.procs.remove(&pid).is_some() {
            if let Some(em) = self.emulator.as_mut() {
                em.exited(pid);
            }
        }
        self.ready.retain(|p| *p != pid);
        Ok(())
    }

    fn on_event(&mut self, pid: Pid, sig: i32, ev: i32) -> Result<(), Error> {
        match ev {
            libc::PTRACE_EVENT_SECCOMP => self.on_entry(pid),
            libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK | libc::PTRACE_EVENT_CLONE => {
                let child = Pid::from_raw(os::getevent(pid).map_err(|e| Error::Os(format!("getevent: {e}")))? as i32);
                let (flags, parent_tgid) = {
                    let t = &self.tasks[&pid];
                    let flags = match &t.entry {
                        Some(e) if e.nr == sys::nr(Sysno::clone3) => self.mem(pid)?.read_u64(e.args[0]).unwrap_or(0),
                        Some(e) if e.nr == sys::nr(Sysno::clone) => e.args[0],
                        _ => 0,
                    };
                    (flags, t.tgid)
                };
                let kind = match ev {
                    libc::PTRACE_EVENT_VFORK => ForkKind::Vfork,
                    libc::PTRACE_EVENT_CLONE if flags & libc::CLONE_THREAD as u64 != 0 => ForkKind::Thread,
                    _ => ForkKind::Fork,
                };
                let tgid = if kind == ForkKind::Thread { parent_tgid } else { child };
                if let Some(em) = self.emulator.as_mut() {
                    let shared_files = flags & libc::CLONE_FILES as u64 != 0;
                    if kind == ForkKind::Thread && !shared_files {
                        // A thread with a descriptor table of its own.
                        em.disable(tgid);
                    } else if kind != ForkKind::Thread && shared_files {
                        // Two processes closing each other's descriptors.
                        em.disable(tgid);
                        em.disable(parent_tgid);
                    }
                }
                let entry = self.tasks.entry(child).or_insert_with(|| Task::new(child, tgid, St::New));
                entry.tgid = tgid;
                entry.execed = true;
                if kind != ForkKind::Thread {
                    let mem = Mem::open(child).map_err(|e| Error::Os(format!("opening memory of {child}: {e}")))?;
                    let vdso = self.procs.get(&parent_tgid).map(|p| p.vdso.clone()).unwrap_or_default();
                    let cpuid_faulting = self.procs.get(&parent_tgid).is_some_and(|p| p.cpuid_faulting);
                    self.procs.insert(child, Proc { mem, vdso, cpuid_faulting });
                }
                self.emit(pid, EventBody::Fork(Fork { kind, child_pid: tgid.as_raw() as u32, child_tid: child.as_raw() as u32, flags }))?;
                let c = self.tasks.get_mut(&child).unwrap();
                c.forked = true;
                if c.first_stop {
                    self.start(child);
                }
                os::syscall(pid, 0).map_err(|e| Error::Os(format!("resuming {pid} after fork: {e}")))?;
                Ok(())
            }
            libc::PTRACE_EVENT_EXEC => {
                let former = Pid::from_raw(os::getevent(pid).unwrap_or(pid.as_raw() as u64) as i32);
                if former != pid {
                    // A non-leader thread exec'd and took over the leader's tid.
                    if let Some(mut t) = self.tasks.remove(&former) {
                        t.tid = pid;
                        self.tasks.insert(pid, t);
                    }
                    if self.running == Some(former) {
                        self.running = Some(pid);
                    }
                }
                let mem = Mem::open(pid).map_err(|e| Error::Os(format!("opening memory of {pid}: {e}")))?;
                let tgid = self.tasks[&pid].tgid;
                self.procs.insert(tgid, Proc { mem, vdso: Default::default(), cpuid_faulting: false });
                os::syscall(pid, 0).map_err(|e| Error::Os(format!("resuming {pid} after exec: {e}")))?;
                Ok(())
            }
            libc::PTRACE_EVENT_EXIT => {
                let status = os::getevent(pid).unwrap_or(0) as i32;
                let (code, signal, core) = if libc::WIFSIGNALED(status) {
                    (0, Some(libc::WTERMSIG(status)), libc::WCOREDUMP(status))
                } else {
                    (libc::WEXITSTATUS(status), None, false)
                };
                let group = self.tasks[&pid].entry.as_ref().map(|e| e.nr == sys::nr(Sysno::exit_group)).unwrap_or(true);
                if self.tasks[&pid].execed {
                    self.emit(pid, EventBody::Exit(Exit { code, signal, core_dumped: core, group }))?;
                }
                self.release_cpu(pid);
                self.tasks.get_mut(&pid).unwrap().st = St::Exiting;
                let _ = os::cont(pid, 0);
                // A thread clears its tid word (CLONE_CHILD_CLEARTID) and wakes
                // joiners only after this stop: let it finish before anyone else
                // runs, so what joiners see is the same at replay.
                let tgid = self.tasks[&pid].tgid;
                if tgid != pid {
                    while let Ok(Some(s)) = os::wait(Some(pid), false) {
                        if matches!(s, WaitStatus::Exited(..) | WaitStatus::Signaled(..)) {
                            self.handle(s)?;
                            break;
                        }
                    }
                }
                Ok(())
            }
            libc::PTRACE_EVENT_STOP => {
                let st = self.tasks[&pid].st;
                if !self.tasks[&pid].execed && st != St::New {
                    // Our own start-up stops before the first exec.
                    let _ = os::cont(pid, 0);
                    return Ok(());
                }
                match st {
                    St::New => {
                        self.start(pid);
                        Ok(())
                    }
                    St::Running if sig == libc::SIGTRAP || self.tasks[&pid].preempt_asked => {
                        // Preempted: the slice ends here (moved to a point replay can patch).
                        let regs = self.advance_to_landing(pid)?;
                        let mut landing = landing_of(&regs, self.tasks[&pid].last_exit.as_ref());
                        if !landing.in_syscall {
                            landing.regs.extend(crate::landing::memory_check(self.mem(pid)?, &regs).into_iter().flatten());
                        }
                        self.emit(pid, EventBody::Preempt(Preempt { landing }))?;
                        let t = self.tasks.get_mut(&pid).unwrap();
                        t.pending = vec![(None, EventBody::Resume(Resume { reason: ResumeReason::AfterPreempt }))];
                        t.resume_mode = Mode::Cont;
                        t.preempt_asked = false;
                        self.make_ready(pid, false);
                        Ok(())
                    }
                    _ => {
                        // A group-stop (job control) or a late interrupt: carry on as before.
                        let mode = if matches!(st, St::InKernel | St::InKernelQuick) { Mode::Syscall } else { Mode::Cont };
                        let _ = match mode {
                            Mode::Cont => os::cont(pid, 0),
                            Mode::Syscall => os::syscall(pid, 0),
                        };
                        Ok(())
                    }
                }
            }
            _ => {
                let _ = os::cont(pid, 0);
                Ok(())
            }
        }
    }

    /// A new task's first stop: it becomes ready once its creator's fork event was written.
    fn start(&mut self, tid: Pid) {
        let t = self.tasks.get_mut(&tid).unwrap();
        t.first_stop = true;
        if !t.forked {
            return;
        }
        t.pending = vec![(None, EventBody::Resume(Resume { reason: ResumeReason::Start }))];
        t.resume_mode = Mode::Cont;
        t.st = St::Ready;
        t.execed = true;
        self.ready.push_back(tid);
    }

    fn on_entry(&mut self, pid: Pid) -> Result<(), Error> {
        let info = os::syscall_info(pid).map_err(|e| Error::Os(format!("syscall info: {e}")))?;
        let seccomp = matches!(info, SyscallInfo::Seccomp { .. });
        let (nr, args) = match info {
            SyscallInfo::Seccomp { nr, args } | SyscallInfo::Entry { nr, args } => (nr as u32, args),
            other => {
                let regs = os::getregs(pid).ok();
                return Err(Error::Os(format!("task {pid}: expected a syscall entry, got {other:?} (regs {regs:?})")));
            }
        };
        let class = sys::class(nr, &args);
        if let Class::Unsupported(why) = class {
            let regs = os::getregs(pid).ok();
            return Err(Error::Unsupported {
                tid: pid.as_raw(),
                syscall: sys::name(nr),
                why: why.to_owned(),
                ip: regs.map(|r| r.rip).unwrap_or(0),
            });
        }
        let mut exec = None;
        if nr == sys::nr(Sysno::execve) || nr == sys::nr(Sysno::execveat) {
            exec = self.capture_exec(pid, nr, &args)?;
        }
        if class == Class::Refuse {
            let mut regs = os::getregs(pid).map_err(|e| Error::Os(format!("getregs: {e}")))?;
            regs.orig_rax = u64::MAX;
            os::setregs(pid, &regs).map_err(|e| Error::Os(format!("setregs: {e}")))?;
        }
        let (ts, t0) = (now_ns(), mono_ns());
        let tgid = self.tasks[&pid].tgid;
        if let Some(em) = self.emulator.as_mut() {
            if nr == sys::nr(Sysno::setrlimit) || nr == sys::nr(Sysno::prlimit64) {
                em.limits_changed(tgid);
            } else if nr == sys::nr(Sysno::unshare) && args[0] & libc::CLONE_FILES as u64 != 0 {
                em.disable(tgid);
            }
            if seccomp && class != Class::Refuse {
                if let Some(ret) = em.perform(pid, tgid, nr, &args) {
                    // Done here: the kernel skips the call and returns `ret`; no exit stop.
                    let mut regs = os::getregs(pid).map_err(|e| Error::Os(format!("getregs: {e}")))?;
                    regs.orig_rax = u64::MAX;
                    regs.rax = ret as u64;
                    os::setregs(pid, &regs).map_err(|e| Error::Os(format!("setregs: {e}")))?;
                    let t = self.tasks.get_mut(&pid).unwrap();
                    t.entry = Some(Entry { nr, args, ts, t0, class, exec });
                    t.st = St::InKernelQuick;
                    return self.on_exit(pid, ret, regs.rip, regs.rsp);
                }
            }
            em.before_kernel(tgid, nr, &args);
        }
        let quick = sys::quick(nr, &args);
        let t = self.tasks.get_mut(&pid).unwrap();
        t.entry = Some(Entry { nr, args, ts, t0, class, exec });
        if quick {
            t.st = St::InKernelQuick;
        } else {
            t.st = St::InKernel;
            self.release_cpu(pid);
        }
        os::syscall(pid, 0).map_err(|e| Error::Os(format!("resuming {pid} into its syscall: {e}")))?;
        Ok(())
    }

    fn capture_exec(&mut self, pid: Pid, nr: u32, args: &[u64; 6]) -> Result<Option<ExecInfo>, Error> {
        let tgid = self.tasks[&pid].tgid;
        if !self.procs.contains_key(&tgid) {
            let mem = Mem::open(pid).map_err(|e| Error::Os(format!("opening memory of {pid}: {e}")))?;
            self.procs.insert(tgid, Proc { mem, vdso: Default::default(), cpuid_faulting: false });
        }
        let mem = self.mem(pid)?;
        let (path_ptr, argv_ptr, env_ptr) =
            if nr == sys::nr(Sysno::execveat) { (args[1], args[2], args[3]) } else { (args[0], args[1], args[2]) };
        let filename = String::from_utf8_lossy(&mem.read_cstr(path_ptr, 4096).unwrap_or_default()).into_owned();
        let strings = |ptr: u64| -> Vec<String> {
            let mut v = Vec::new();
            if ptr == 0 {
                return v;
            }
            for i in 0..65536u64 {
                let p = mem.read_u64(ptr + 8 * i).unwrap_or(0);
                if p == 0 {
                    break;
                }
                v.push(String::from_utf8_lossy(&mem.read_cstr(p, 1 << 20).unwrap_or_default()).into_owned());
            }
            v
        };
        let argv = strings(argv_ptr);
        let env = strings(env_ptr);
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).map(|p| p.display().to_string()).unwrap_or_default();
        let abs = if filename.starts_with('/') { filename.clone() } else { format!("{}/{}", cwd.trim_end_matches('/'), filename) };
        let mut snapshots = Vec::new();
        let exe = match self.files.capture_path(&mut self.w, pid, &abs)? {
            Some(f) => f,
            None => return Ok(None), // execve will fail; nothing to keep.
        };
        snapshots.push(FileSnapshot { file: exe.clone(), reason: "exec".into() });
        // The interpreter chain: `#!` scripts and ELF PT_INTERP.
        let mut next = self.files.interpreter_of(&exe);
        let mut depth = 0;
        while let Some(p) = next.take() {
            depth += 1;
            if depth > 4 {
                break;
            }
            if let Some(f) = self.files.capture_path(&mut self.w, pid, &p)? {
                next = self.files.interpreter_of(&f);
                snapshots.push(FileSnapshot { file: f, reason: "interp".into() });
            }
        }
        Ok(Some(ExecInfo { argv, env, cwd, exe, snapshots }))
    }

    fn on_syscall_stop(&mut self, pid: Pid) -> Result<(), Error> {
        match os::syscall_info(pid).map_err(|e| Error::Os(format!("syscall info: {e}")))? {
            SyscallInfo::Exit { ret, ip, sp } => self.on_exit(pid, ret, ip, sp),
            SyscallInfo::Entry { .. } => {
                // An entry stop after a PTRACE_SYSCALL resume (a restarted syscall): treat as an entry.
                self.on_entry(pid)
            }
            _ => {
                let _ = os::cont(pid, 0);
                Ok(())
            }
        }
    }

    fn on_exit(&mut self, pid: Pid, mut ret: i64, ip: u64, sp: u64) -> Result<(), Error> {
        let Some(entry) = self.tasks.get_mut(&pid).and_then(|t| t.entry.take()) else {
            // An exit stop we did not see enter (e.g. an injected syscall): continue.
            let _ = os::cont(pid, 0);
            return Ok(());
        };
        if entry.class == Class::Refuse {
            let mut regs = os::getregs(pid).map_err(|e| Error::Os(format!("getregs: {e}")))?;
            ret = -(libc::ENOSYS as i64);
            regs.rax = ret as u64;
            os::setregs(pid, &regs).map_err(|e| Error::Os(format!("setregs: {e}")))?;
        }
        let duration_ns = mono_ns().saturating_sub(entry.t0);
        let mut writes = Vec::new();
        let mut pending = Vec::new();
        let mut flags = 0;
        let mut capture = Vec::new();
        let nr = entry.nr;
        let args = entry.args;
        if nr == sys::nr(Sysno::execve) || nr == sys::nr(Sysno::execveat) {
            if ret == 0 {
                let regs = os::getregs(pid).map_err(|e| Error::Os(format!("getregs: {e}")))?;
                self.after_exec(pid, &regs, entry.exec, &mut pending, &mut writes)?;
            }
        } else if ret >= 0 || matches!(-ret as i32, libc::EINTR) {
            let mem = self.mem(pid)?;
            let regions = sys::outputs(nr, &args, ret, mem).map_err(|e| Error::Unsupported {
                tid: pid.as_raw(),
                syscall: sys::name(nr),
                why: format!("the recorder does not know which memory {} writes", e.0),
                ip,
            })?;
            capture = regions;
            if let Some((fd, regions)) = sys::written_data(nr, &args, ret, mem) {
                if let Some(flag) = self.shown_fd(pid, fd) {
                    flags |= flag;
                    for (addr, len) in regions {
                        writes.push(MemWrite { addr, data: Data::Bytes(mem.read_partial(addr, len)) });
                    }
                }
            }
            if entry.class == Class::MmapFile && ret >= 0 {
                if let Some(f) = self.files.capture_fd(&mut self.w, pid, args[4] as i32)? {
                    pending.push((None, EventBody::FileSnapshot(FileSnapshot { file: f, reason: "mmap".into() })));
                }
            }
        }
        if self.cpuid.ends_at(nr, &args) {
            self.end_cpuid_faulting(pid)?;
        }
        let sc = Syscall { nr, args, ret, duration_ns, writes, fd_type: FdType::Unknown, flags };
        // The syscall event carries its entry time.
        pending.push((Some(entry.ts), EventBody::Syscall(sc)));
        let t = self.tasks.get_mut(&pid).unwrap();
        t.pending = pending;
        t.capture = capture;
        t.resume_mode = Mode::Cont;
        t.last_exit = Some(crate::ExitPoint { ip, sp, ret });
        let quick = t.st == St::InKernelQuick;
        // A quick syscall keeps the CPU unless the slice is over and others wait.
        let keep = quick && (mono_ns() < self.slice_end || self.ready.is_empty());
        if quick {
            self.running = None;
        }
        self.make_ready(pid, keep);
        if keep {
            // Resume right away (no switch).
            self.schedule()?;
        }
        Ok(())
    }

    fn after_exec(
        &mut self,
        pid: Pid,
        regs: &Regs,
        info: Option<ExecInfo>,
        pending: &mut Vec<(Option<u64>, EventBody)>,
        writes: &mut Vec<MemWrite>,
    ) -> Result<(), Error> {
        let tgid = self.tasks[&pid].tgid;
        let mem = Mem::open(pid).map_err(|e| Error::Os(format!("opening memory of {pid}: {e}")))?;
        let v = vdso::patch(pid, &mem).map_err(|e| Error::Os(format!("task {pid}: {e}")))?;
        let cpuid = self.cpuid != crate::inject::CpuidMode::Off
            && crate::inject::enable_cpuid_faulting(pid, v.syscall_insn).map_err(|e| Error::Os(format!("task {pid}: {e}")))?;
        self.procs.insert(tgid, Proc { mem, vdso: v, cpuid_faulting: cpuid });
        if !cpuid && self.cpuid != crate::inject::CpuidMode::Off {
            self.w.set_summary_fact("cpuid_faulting", "unavailable");
        }
        let auxv = read_auxv(pid);
        let mem = self.mem(pid)?;
        // The initial stack (argv, env, auxv, AT_RANDOM bytes...), restored as is at replay.
        if let Some(end) = stack_end(pid) {
            let data = mem.read_partial(regs.rsp, (end - regs.rsp) as usize);
            writes.push(MemWrite { addr: regs.rsp, data: Data::Bytes(data) });
        }
        self.tasks.get_mut(&pid).unwrap().execed = true;
        if let Some(i) = info {
            for s in i.snapshots {
                pending.push((None, EventBody::FileSnapshot(s)));
            }
            pending.push((None, EventBody::Exec(Exec { exe: i.exe, argv: i.argv, env: i.env, cwd: i.cwd, auxv })));
        }
        Ok(())
    }

    /// Start-up is over: cpuid runs natively from now on in this process.
    fn end_cpuid_faulting(&mut self, pid: Pid) -> Result<(), Error> {
        let tgid = self.tasks[&pid].tgid;
        if let Some(p) = self.procs.get_mut(&tgid) {
            if p.cpuid_faulting {
                crate::inject::disable_cpuid_faulting(pid, p.vdso.syscall_insn).map_err(|e| Error::Os(format!("task {pid}: {e}")))?;
                p.cpuid_faulting = false;
            }
        }
        Ok(())
    }

    /// Whether descriptor `fd` of `pid` is the recorder's own stdout or stderr.
    fn shown_fd(&self, pid: Pid, fd: u64) -> Option<u32> {
        if fd != 1 && fd != 2 {
            return None;
        }
        let id = file_id(&format!("/proc/{pid}/fd/{fd}"))?;
        if Some(id) == self.own_stdio[0] {
            Some(Syscall::FLAG_STDOUT)
        } else if Some(id) == self.own_stdio[1] {
            Some(Syscall::FLAG_STDERR)
        } else {
            None
        }
    }

    fn on_signal(&mut self, pid: Pid, sig: i32) -> Result<(), Error> {
        let t = &self.tasks[&pid];
        if !t.execed || t.st == St::New {
            // Before the first exec (our own SIGSTOP/SIGCONT) or a new task's first stop.
            if t.st == St::New && sig == libc::SIGSTOP {
                self.start(pid);
                return Ok(());
            }
            let _ = os::cont(pid, if sig == libc::SIGSTOP { 0 } else { sig });
            return Ok(());
        }
        let regs = os::getregs(pid).map_err(|e| Error::Os(format!("getregs: {e}")))?;
        let mut siginfo = os::getsiginfo(pid).unwrap_or([0; 128]);
        if let Some(i) = self.tasks[&pid].held_signals.iter().position(|si| si[..4] == sig.to_le_bytes()) {
            // A signal held back while positioning an earlier one, sent again
            // by the recorder: the program sees the siginfo it came with.
            siginfo = self.tasks.get_mut(&pid).unwrap().held_signals.remove(i);
            let _ = os::setsiginfo(pid, &siginfo);
        }
        let code = i32::from_le_bytes(siginfo[8..12].try_into().unwrap());
        if sig == libc::SIGSEGV && code == 0x80 {
            if let Some(b) = self.trap(pid, regs)? {
                self.emit(pid, b)?;
                let _ = os::cont(pid, 0);
                return Ok(());
            }
        }
        let synchronous =
            matches!(sig, libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP) && code > 0 && code != 0x80;
        let sender_pid = if code <= 0 || code == 0x80 { u32::from_le_bytes(siginfo[16..20].try_into().unwrap()) } else { 0 };
        let addr = if synchronous { u64::from_le_bytes(siginfo[16..24].try_into().unwrap()) } else { 0 };
        let mut landing = landing_of(&regs, self.tasks[&pid].last_exit.as_ref());
        if !synchronous && !landing.in_syscall {
            // Asynchronous, in user code: move it where replay can find it cheaply.
            let regs = self.advance_to_landing(pid)?;
            landing = landing_of(&regs, None);
            landing.regs.extend(crate::landing::memory_check(self.mem(pid)?, &regs).into_iter().flatten());
        }
        let body = EventBody::Signal(Signal { signo: sig, code, sender_pid, addr, landing, synchronous, siginfo: siginfo.to_vec() });
        let t = self.tasks.get_mut(&pid).unwrap();
        t.pending = vec![(None, body)];
        t.resume_mode = Mode::Cont;
        t.resume_sig = sig;
        t.resume_siginfo = Some(siginfo);
        let was_running = self.running == Some(pid);
        self.make_ready(pid, was_running);
        Ok(())
    }

    /// Moves a thread stopped in user code to a landing point replay can
    /// patch ([`crate::landing::advance`]); signals that arrived meanwhile are
    /// sent to it again, to be delivered (and recorded) after this stop.
    fn advance_to_landing(&mut self, pid: Pid) -> Result<Regs, Error> {
        let (regs, held) = crate::landing::advance(pid, self.mem(pid)?).map_err(|e| Error::Os(format!("task {pid}: {e}")))?;
        let tgid = self.tasks[&pid].tgid;
        for si in held {
            let signo = i32::from_le_bytes(si[..4].try_into().unwrap());
            os::tgkill(tgid, pid, signo).map_err(|e| Error::Os(format!("task {pid}: sending signal {signo} again: {e}")))?;
            self.tasks.get_mut(&pid).unwrap().held_signals.push(si);
        }
        Ok(regs)
    }

    /// rdtsc, rdtscp or cpuid trapped (SIGSEGV, si_code SI_KERNEL): executes it
    /// for the tracee and returns the event; `None` if it was another fault.
    fn trap(&mut self, pid: Pid, mut regs: Regs) -> Result<Option<EventBody>, Error> {
        let insn = self.mem(pid)?.read_partial(regs.rip, 3);
        let body = if insn.starts_with(&[0x0f, 0x31]) || insn.starts_with(&[0x0f, 0x01, 0xf9]) {
            let p = insn[1] == 0x01;
            let (tsc, aux) = os::rdtsc(p);
            regs.rax = tsc & 0xffff_ffff;
            regs.rdx = tsc >> 32;
            if let Some(a) = aux {
                regs.rcx = a as u64;
            }
            let ip = regs.rip;
            regs.rip += if p { 3 } else { 2 };
            EventBody::Rdtsc(Rdtsc { ip, tsc, aux })
        } else if insn.starts_with(&[0x0f, 0xa2]) {
            let (leaf, sub) = (regs.rax as u32, regs.rcx as u32);
            let r = os::cpuid(leaf, sub);
            regs.rax = r[0] as u64;
            regs.rbx = r[1] as u64;
            regs.rcx = r[2] as u64;
            regs.rdx = r[3] as u64;
            let ip = regs.rip;
            regs.rip += 2;
            EventBody::Cpuid(Cpuid { ip, leaf, subleaf: sub, regs: r })
        } else {
            return Ok(None);
        };
        os::setregs(pid, &regs).map_err(|e| Error::Os(format!("setregs: {e}")))?;
        Ok(Some(body))
    }
}

fn file_id(p: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// The auxiliary vector of a process.
pub fn read_auxv(pid: Pid) -> Vec<(u64, u64)> {
    let b = std::fs::read(format!("/proc/{pid}/auxv")).unwrap_or_default();
    b.chunks_exact(16)
        .map(|c| (u64::from_le_bytes(c[0..8].try_into().unwrap()), u64::from_le_bytes(c[8..16].try_into().unwrap())))
        .take_while(|(k, _)| *k != 0)
        .collect()
}

/// End address of the `[stack]` mapping.
pub fn stack_end(pid: Pid) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let l = maps.lines().find(|l| l.ends_with("[stack]"))?;
    let (_, b) = l.split_whitespace().next()?.split_once('-')?;
    u64::from_str_radix(b, 16).ok()
}
