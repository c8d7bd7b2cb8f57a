//! Deterministic replay of a `.kpl` recording under ptrace.
//!
//! The program runs again, in a private root directory that holds only the
//! executables and interpreters from the log's file store (it cannot open,
//! write or delete a real file: every such syscall is served from the log).
//! Events are processed in log order; each event lets one task run until
//! its next stop, so tasks run one at a time in the recorded order.
//!
//! * Syscalls that touch the outside world are not executed: the recorded
//!   result is returned and the recorded memory writes are applied.
//! * Syscalls that shape the process (memory layout, signal handlers,
//!   threads, exec, exit) are executed and their results checked.
//! * File mappings become anonymous mappings at the recorded address,
//!   filled from the file store.
//! * rdtsc and cpuid (trapped) return the recorded values; the vDSO is
//!   patched as at record time so time queries are syscalls served from the log.
//! * Asynchronous signals and preemptions are delivered where they landed:
//!   a hardware breakpoint at the recorded instruction pointer, repeated
//!   until the register fingerprint matches.
//!
//! Any difference between what the program asks for and the log is a
//! [`Error::Divergence`] naming the event, the task, both sides and the
//! nearest symbol.

use crate::os::{self, Mem, Pid, Regs, SyscallInfo};
use crate::sys::{self, Class};
use crate::{fingerprint, vdso, Error};
use kpl::event::*;
use kpl::{Event, EventBody, Reader};
use nix::sys::wait::WaitStatus;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use syscalls::Sysno;

/// How to replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// The log.
    pub log: PathBuf,
    /// Do not show the program's stdout/stderr.
    pub quiet: bool,
    /// Stop before processing this event.
    pub until_event: Option<u64>,
}

/// Where a replay stopped before the end.
#[derive(Clone, Debug)]
pub struct StopReport {
    /// The next event (not yet processed).
    pub seq: u64,
    /// Its task (recorded tid).
    pub tid: u32,
    /// One-line description of the event.
    pub event: String,
    /// Instruction pointer of the task.
    pub ip: u64,
    /// Nearest symbol, if known.
    pub symbol: String,
}

/// The result of a replay.
#[derive(Clone, Debug)]
pub struct ReplayOutcome {
    /// Recorded exit code of the root process (128 + signal when killed).
    pub exit_code: i32,
    /// Events processed.
    pub events: u64,
    /// Syscalls the program made that matched the log (served or executed).
    pub syscalls: u64,
    /// Set when the replay stopped early (`until_event`).
    pub stopped: Option<StopReport>,
}

/// A task's state as the replayer knows it.
#[derive(Clone, Debug, PartialEq)]
enum Stop {
    /// Running (or inside an executed syscall): its next stop is unknown.
    Running,
    /// Stopped at a syscall entry.
    Entry { nr: u32, args: [u64; 6] },
    /// Stopped at a syscall exit (after a served syscall; held there).
    Exit,
    /// Stopped at a signal-delivery-stop.
    Signal(i32),
    /// Stopped at a recorded landing point.
    Landing,
    /// Stopped at a ptrace event (fork, exec).
    Event(i32),
    /// Stopped on its way out (PTRACE_EVENT_EXIT).
    Exiting,
    /// New task, not yet seen.
    New,
    /// New task stopped at its first stop.
    Started,
    /// Gone.
    Gone(i32),
    /// Stopped by the debugger at a breakpoint (in the middle of its slice).
    Breakpoint,
    /// Stopped by the debugger after a single step (in the middle of its slice).
    Stepped,
    /// Held at a syscall exit for the debugger; resumes its slice when continued.
    Held,
}

/// Why a debug-mode replay stopped before its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// A software breakpoint was hit by task `tid` (recorded tid).
    Breakpoint(u32),
    /// A single step of `tid` completed.
    Step(u32),
    /// `tid` is at the entry (`entry == true`) or exit of syscall `nr`.
    #[allow(missing_docs)]
    Syscall { tid: u32, nr: u32, entry: bool },
    /// `tid` was held where an event let it run, as asked.
    Held(u32),
    /// On its way to a point, `tid` passed that point's instruction with
    /// other registers (where a debugger breakpoint sits).
    #[allow(missing_docs)]
    Passed { tid: u32, landing: Landing },
    /// A recorded signal is about to be delivered to `tid` (it is held
    /// where the signal arrives; resuming delivers it, as recorded).
    #[allow(missing_docs)]
    Signal { tid: u32, signo: i32 },
    /// The debugger asked to stop (Ctrl-C); every task is stopped between
    /// events and `tid` is the one of the next event.
    Interrupted(u32),
}

/// How far [`Replayer::advance`] went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Halt {
    /// Every event was processed.
    End,
    /// Stopped before event `seq`, as asked.
    Reached(u64),
    /// Stopped for the debugger.
    Interrupt(Interrupt),
}

/// What a running task is heading for.
enum Goal {
    /// Its next natural stop.
    Natural,
    /// A recorded landing point (for its next event, `seq`).
    Landing {
        l: Landing,
        seq: u64,
        via: Via,
        /// Debugger breakpoints lifted out of the way: (address, byte under them).
        lifted: Vec<u64>,
        /// Passes through the point that do not match are reported
        /// ([`Interrupt::Passed`]): a debugger breakpoint sits there.
        report_passes: bool,
    },
}

/// How a landing point is watched for.
enum Via {
    /// A jump to a register-comparing trampoline.
    Trampoline(crate::landing::Trampoline),
    /// An int3 over this original byte (instructions too short to patch).
    Int3(u8),
}

struct Task {
    real: Pid,
    tgid: u32,
    stop: Stop,
    /// A signal we are injecting: its delivery stop is expected.
    injecting: Option<i32>,
    /// A signal to deliver when the task next resumes, with its siginfo.
    deliver: Option<(i32, Vec<u8>)>,
    /// Last mapping-related file seen for this task (for the next mmap).
    snapshot: Option<FileSnapshot>,
    /// Files to put in the replay root before the next exec.
    exec_files: Vec<FileSnapshot>,
    /// Its execve was started ahead of its event (a vfork parent waited on it).
    exec_in_flight: bool,
    /// The child of its pending vfork.
    vfork_child: Option<u32>,
    /// Where it is running to.
    goal: Goal,
    /// The event that last let it run (its current slice began after it).
    resumed_at: u64,
    /// Its latest syscall event (number, arguments, result).
    last_syscall: Option<(u32, [u64; 6], i64)>,
}

struct Proc {
    mem: Mem,
    vdso: vdso::Vdso,
    real: Pid,
    /// cpuid currently faults in this process.
    cpuid_faulting: bool,
}

/// A file-backed mapping, for symbolization.
#[derive(Clone)]
struct Mapping {
    start: u64,
    len: u64,
    offset: u64,
    file: FileRef,
}

/// Replays a log step by step.
pub struct Replayer {
    r: Reader,
    opts: ReplayOptions,
    /// Program output is shown only for events from this one on (a debugger replaying again).
    show_from: u64,
    /// Stop at recorded signal deliveries ([`Interrupt::Signal`]).
    report_signals: bool,
    /// Set by a debugger to stop [`Replayer::advance`] between two events.
    interrupt: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    seq: u64,
    end: u64,
    tasks: HashMap<u32, Task>,
    procs: HashMap<u32, Proc>,
    root_dir: std::sync::Arc<tempfile::TempDir>,
    root_tid: u32,
    root_status: Option<i32>,
    running: Option<u32>,
    mappings: Vec<Mapping>,
    syscalls: u64,
    cpuid: crate::inject::CpuidMode,
    /// Software breakpoints: address → (process, original byte) where inserted.
    breakpoints: std::collections::BTreeMap<u64, Vec<(u32, u8)>>,
    /// A debugger single step of this task is in progress.
    stepping: Option<u32>,
    /// Hold this task when it would next resume after a syscall, reporting this.
    hold: Option<(u32, Interrupt)>,
    /// An interrupt to report before doing anything else.
    pending: Option<Interrupt>,
    /// Syscalls to stop at (`Some(empty)`: all).
    catch: Option<Vec<u32>>,
    /// The event whose syscall entry was already reported.
    caught_at: Option<u64>,
    /// Hold this task when event `.0` would let it run.
    hold_at: Option<(u64, u32)>,
    /// An eBPF log: what its recorder could not see is served by [`crate::virt`].
    virt: Option<crate::virt::Virt>,
    out: std::io::Stdout,
    err: std::io::Stderr,
    /// This thread traps rdtsc like the replayed program (cheaper switches).
    _tsc: Option<os::SharedTscTrap>,
}

fn os_err(what: impl std::fmt::Display) -> impl Fn(nix::Error) -> Error {
    move |e| Error::Os(format!("{what}: {e}"))
}

impl Replayer {
    /// Opens the log and starts the program, stopped before its first exec.
    pub fn new(opts: ReplayOptions) -> Result<Replayer, Error> {
        Replayer::with_root(opts, None)
    }

    /// Like [`Replayer::new`], running in the private root of an earlier
    /// replay of the same log (a debugger keeps one sysroot across restarts).
    pub fn with_root(opts: ReplayOptions, root: Option<std::sync::Arc<tempfile::TempDir>>) -> Result<Replayer, Error> {
        let r = Reader::open(&opts.log)?;
        if r.meta().backend != "ptrace" && r.meta().backend != "ebpf" {
            return Err(Error::Usage(format!(
                "{}: a {} log cannot be replayed (recorded by `kprobe record`?)",
                opts.log.display(),
                r.meta().backend
            )));
        }
        let end = r.end_seq();
        // The first exec says what to start.
        let mut first_exec = None;
        let mut snapshots = Vec::new();
        for ev in r.events() {
            let ev = ev?;
            match ev.body {
                EventBody::FileSnapshot(s) => snapshots.push(s),
                EventBody::Exec(e) => {
                    first_exec = Some((ev.tid, e));
                    break;
                }
                _ => {}
            }
            if ev.seq > 10_000 {
                break;
            }
        }
        let (root_tid, exec) =
            first_exec.ok_or_else(|| Error::Usage(format!("{}: the log holds no exec event to start from", opts.log.display())))?;
        let root_dir = match root {
            Some(r) => r,
            None => std::sync::Arc::new(
                tempfile::Builder::new().prefix("kprobe-replay-").tempdir().map_err(|e| Error::Os(format!("temporary directory: {e}")))?,
            ),
        };
        let mut me = Replayer {
            r,
            opts,
            seq: 0,
            end,
            tasks: HashMap::new(),
            procs: HashMap::new(),
            root_dir,
            root_tid,
            root_status: None,
            show_from: 0,
            interrupt: None,
            report_signals: false,
            running: None,
            mappings: Vec::new(),
            syscalls: 0,
            cpuid: crate::inject::CpuidMode::Always,
            breakpoints: Default::default(),
            stepping: None,
            hold: None,
            pending: None,
            catch: None,
            caught_at: None,
            hold_at: None,
            virt: None,
            out: std::io::stdout(),
            err: std::io::stderr(),
            _tsc: os::share_tsc_trap(),
        };
        me.cpuid =
            crate::inject::CpuidMode::from_name(me.r.meta().extra.iter().find(|(k, _)| k == "cpuid_faulting").map(|(_, v)| v.as_str()));
        me.virt = crate::virt::Virt::for_log(me.r.meta());
        if me.virt.is_some() {
            me.cpuid = crate::inject::CpuidMode::Off; // eBPF logs: cpuid runs natively
        }
        for s in &snapshots {
            me.materialize(s)?;
        }
        // Every executable, interpreter and mapped library goes into the replay
        // root now (the debugger reads symbols from there too).
        for ev in me.r.events() {
            if let EventBody::FileSnapshot(s) = ev?.body {
                if s.reason == "mmap" {
                    // Only for the debugger's symbols: best effort.
                    let _ = me.materialize(&s);
                } else {
                    me.materialize(&s)?;
                }
            }
        }
        let cwd = me.root_dir.path().join(exec.cwd.trim_start_matches('/'));
        std::fs::create_dir_all(&cwd).map_err(|e| Error::Os(format!("creating {}: {e}", cwd.display())))?;
        let c = |s: &str| std::ffi::CString::new(s).map_err(|_| Error::Usage(format!("NUL byte in {s:?}")));
        let stack = me.r.meta().extra.iter().find(|(k, _)| k == "rlimit_stack").and_then(|(_, v)| {
            let mut it = v.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some((it.next()??, it.next()??))
        });
        let spec = os::SpawnSpec {
            path: c(&exec.exe.path)?,
            argv: exec.argv.iter().map(|a| c(a)).collect::<Result<_, _>>()?,
            env: exec.env.iter().map(|a| c(a)).collect::<Result<_, _>>()?,
            cwd: Some(c(&exec.cwd)?),
            chroot: Some(c(&me.root_dir.path().display().to_string())?),
            stack_limit: stack,
            // An eBPF log holds every syscall: every one stops, and is matched.
            seccomp: os::seccomp_filter(&if me.virt.is_some() { Vec::new() } else { sys::seccomp_allowed() }),
            null_stdio: true,
        };
        // One task runs at a time: one CPU makes every stop a local switch.
        let _ = os::pin_to_cpu(None);
        let pid = os::spawn(&spec).map_err(|e| Error::Os(format!("starting the replay of {}: {e}", exec.exe.path)))?;
        let root_pid = me.r.get(0).map(|e| e.pid).unwrap_or(root_tid);
        me.tasks.insert(
            root_tid,
            Task {
                real: pid,
                tgid: root_pid,
                stop: Stop::Running,
                injecting: None,
                deliver: None,
                snapshot: None,
                exec_files: Vec::new(),
                exec_in_flight: false,
                vfork_child: None,
                goal: Goal::Natural,
                resumed_at: 0,
                last_syscall: None,
            },
        );
        let mem = Mem::open(pid).map_err(|e| Error::Os(format!("memory of {pid}: {e}")))?;
        me.procs.insert(root_pid, Proc { mem, vdso: Default::default(), real: pid, cpuid_faulting: false });
        me.running = Some(root_tid);
        Ok(me)
    }

    /// Sequence number of the next event to process.
    pub fn position(&self) -> u64 {
        self.seq
    }

    /// Replays to the end (or to `until_event`).
    pub fn run(mut self) -> Result<ReplayOutcome, Error> {
        let res = self.run_inner();
        self.kill_all();
        res
    }

    fn run_inner(&mut self) -> Result<ReplayOutcome, Error> {
        match self.advance(self.opts.until_event)? {
            Halt::Reached(seq) => {
                let ev = self.r.get(seq)?;
                self.settle_all()?;
                let (ip, symbol) = self.where_is(ev.tid);
                Ok(ReplayOutcome {
                    exit_code: self.recorded_exit(),
                    events: self.seq,
                    syscalls: self.syscalls,
                    stopped: Some(StopReport { seq, tid: ev.tid, event: kpl::text::describe(&ev), ip, symbol }),
                })
            }
            Halt::End => Ok(ReplayOutcome { exit_code: self.recorded_exit(), events: self.seq, syscalls: self.syscalls, stopped: None }),
            Halt::Interrupt(i) => Err(Error::Replay { seq: self.seq, tid: 0, why: format!("unexpected debugger stop {i:?}") }),
        }
    }

    /// Processes events until the end, until event `stop_before` is next,
    /// or until a debugger stop (breakpoint, step, caught syscall).
    pub fn advance(&mut self, stop_before: Option<u64>) -> Result<Halt, Error> {
        loop {
            os::rearm_tsc_trap();
            if let Some(i) = self.pending.take() {
                return Ok(Halt::Interrupt(i));
            }
            // Before settling: the caller may want to watch the running slice end.
            if stop_before == Some(self.seq) {
                return Ok(Halt::Reached(self.seq));
            }
            if let Some(i) = self.settle()? {
                return Ok(Halt::Interrupt(i));
            }
            if self.seq >= self.end {
                return Ok(Halt::End);
            }
            if self.interrupt.as_ref().is_some_and(|f| f.swap(false, std::sync::atomic::Ordering::Relaxed)) {
                if let Some(t) = self.current_tid() {
                    return Ok(Halt::Interrupt(Interrupt::Interrupted(t)));
                }
            }
            let ev = match self.r.get(self.seq) {
                Ok(e) => e,
                Err(kpl::Error::NoSuchEvent { .. }) => {
                    self.seq += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if let EventBody::Syscall(sc) = &ev.body {
                if self.caught_at != Some(self.seq) && self.catches(sc.nr) {
                    if let Stop::Entry { nr, .. } = self.ensure_stop(ev.tid)? {
                        self.caught_at = Some(self.seq);
                        return Ok(Halt::Interrupt(Interrupt::Syscall { tid: ev.tid, nr, entry: true }));
                    }
                }
                if self.catches(sc.nr) && self.hold.is_none() {
                    self.hold = Some((ev.tid, Interrupt::Syscall { tid: ev.tid, nr: sc.nr, entry: false }));
                }
            }
            tracing::debug!(seq = self.seq, tid = ev.tid, "{}", kpl::text::describe(&ev));
            self.process(&ev)?;
            if let EventBody::Syscall(sc) = &ev.body {
                if let Some(t) = self.tasks.get_mut(&ev.tid) {
                    t.last_syscall = Some((sc.nr, sc.args, sc.ret));
                }
            }
            if let Some(v) = &mut self.virt {
                v.observe(&ev);
            }
            self.seq += 1;
        }
    }

    fn catches(&self, nr: u32) -> bool {
        self.catch.as_ref().is_some_and(|c| c.is_empty() || c.contains(&nr))
    }

    /// Lets every task running user code reach its stop.
    fn settle_all(&mut self) -> Result<(), Error> {
        self.settle()?;
        let tids: Vec<u32> = self.tasks.iter().filter(|(_, t)| t.stop == Stop::Running).map(|(t, _)| *t).collect();
        for t in tids {
            self.wait_stop(t)?;
        }
        Ok(())
    }

    fn recorded_exit(&self) -> i32 {
        self.root_status.or(self.r.index().summary.exit_code).unwrap_or(0)
    }

    fn kill_all(&mut self) {
        for t in self.tasks.values() {
            if !matches!(t.stop, Stop::Gone(_)) {
                os::kill(t.real);
            }
        }
        for t in self.tasks.values() {
            if !matches!(t.stop, Stop::Gone(_)) {
                let _ = os::wait(Some(t.real), false);
            }
        }
    }

    // ---- events ----

    fn process(&mut self, ev: &Event) -> Result<(), Error> {
        if let Some(v) = self.virt.as_mut() {
            // eBPF logs: a syscall a fatal signal cut short never returned to the program.
            if v.killed_in_syscall(&self.r, ev).map_err(|why| Error::Replay { seq: self.seq, tid: ev.tid, why })? {
                return Ok(());
            }
        }
        if self.virt.is_some() && matches!(ev.body, EventBody::Syscall(_) | EventBody::Fork(_) | EventBody::Exit(_)) {
            // eBPF logs have no Resume events: a new task runs when its first event comes.
            if self.tasks.get(&ev.tid).is_some_and(|t| matches!(t.stop, Stop::New | Stop::Started))
                && self.ensure_stop(ev.tid)? == Stop::Started
            {
                self.continue_task(ev.tid, 0)?;
            }
        }
        match &ev.body {
            EventBody::FileSnapshot(s) => {
                if let Some(t) = self.tasks.get_mut(&ev.tid) {
                    if s.reason == "mmap" {
                        t.snapshot = Some(s.clone());
                    } else {
                        t.exec_files.push(s.clone());
                    }
                }
                Ok(())
            }
            EventBody::Syscall(sc) => self.syscall(ev, sc),
            EventBody::Fork(f) => self.fork(ev, f),
            EventBody::Exit(x) => self.exit(ev, x),
            EventBody::Signal(s) => self.signal(ev, s),
            EventBody::Preempt(_) => {
                let st = self.ensure_stop(ev.tid)?;
                if st != Stop::Landing {
                    return Err(self.diverge(ev, "to be preempted at its recorded landing point", &st));
                }
                self.running = None;
                Ok(())
            }
            EventBody::Resume(_) => {
                let st = self.ensure_stop(ev.tid)?;
                if !matches!(st, Stop::Started | Stop::Landing | Stop::Exit | Stop::Event(_)) {
                    return Err(self.diverge(ev, "to be stopped, ready to resume", &st));
                }
                self.continue_task(ev.tid, 0)
            }
            EventBody::Rdtsc(x) => self.trap(ev, x.ip, |regs| {
                regs.rax = x.tsc & 0xffff_ffff;
                regs.rdx = x.tsc >> 32;
                if let Some(a) = x.aux {
                    regs.rcx = a as u64;
                }
                regs.rip += if x.aux.is_some() { 3 } else { 2 };
            }),
            EventBody::Cpuid(x) => self.trap(ev, x.ip, |regs| {
                regs.rax = x.regs[0] as u64;
                regs.rbx = x.regs[1] as u64;
                regs.rcx = x.regs[2] as u64;
                regs.rdx = x.regs[3] as u64;
                regs.rip += 2;
            }),
            // eBPF logs: records the recorder dropped.
            EventBody::Lost(l) if self.virt.is_some() => match crate::virt::lost_records(l) {
                Some(why) => Err(Error::Replay { seq: self.seq, tid: ev.tid, why }),
                None => Ok(()),
            },
            // Kernel-level and engine events do not drive the program.
            _ => Ok(()),
        }
    }

    fn task(&self, tid: u32) -> Result<&Task, Error> {
        self.tasks.get(&tid).ok_or_else(|| Error::Replay {
            seq: self.seq,
            tid,
            why: "the log names a task the replay never created".into(),
        })
    }

    fn real(&self, tid: u32) -> Result<Pid, Error> {
        Ok(self.task(tid)?.real)
    }

    fn proc_of(&self, tid: u32) -> Result<&Proc, Error> {
        let tgid = self.task(tid)?.tgid;
        self.procs.get(&tgid).ok_or_else(|| Error::Replay { seq: self.seq, tid, why: format!("no process {tgid}") })
    }

    fn set_stop(&mut self, tid: u32, s: Stop) {
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.stop = s;
        }
    }

    fn syscall(&mut self, ev: &Event, sc: &Syscall) -> Result<(), Error> {
        let tid = ev.tid;
        if self.is_forklike(sc.nr) {
            self.drive_vfork_child(tid)?;
        }
        if self.task(tid)?.exec_in_flight {
            self.syscalls += 1;
            return self.exec(ev, sc);
        }
        let st = self.ensure_stop(tid)?;
        // clone/fork/vfork were started at their fork event: this is their exit.
        if self.is_forklike(sc.nr) && st == Stop::Exit {
            return self.finish_forklike(ev, sc);
        }
        let Stop::Entry { nr, args } = st else {
            return Err(self.diverge(ev, &format!("to enter {}", kpl::text::describe(ev)), &st));
        };
        let first_exec = self.seq < 64 && nr == sys::nr(Sysno::execve) && !self.procs.values().any(|p| p.vdso.syscall_insn != 0);
        // Only the registers the call takes: the others hold leftovers of earlier code.
        let n = kpl::sys::arity(nr).unwrap_or(6);
        if nr != sc.nr || (args[..n] != sc.args[..n] && !first_exec) {
            let actual = format!("called {}({})", sys::name(nr), args.iter().map(|a| format!("{a:#x}")).collect::<Vec<_>>().join(", "));
            return Err(self.divergence(
                ev,
                &format!("{}({})", sc.name(), sc.args.iter().map(|a| format!("{a:#x}")).collect::<Vec<_>>().join(", ")),
                &actual,
            ));
        }
        let real = self.real(tid)?;
        let class = sys::class(nr, &args);
        self.syscalls += 1;
        if nr == sys::nr(Sysno::execve) || nr == sys::nr(Sysno::execveat) {
            return self.exec(ev, sc);
        }
        match class {
            Class::Emulate | Class::Refuse | Class::Unsupported(_) => {
                if let Some(why) = self.virt.as_ref().and_then(|_| crate::virt::incomplete_capture(sc)) {
                    return Err(Error::Replay { seq: self.seq, tid, why });
                }
                self.skip_syscall(tid, real, sc)?;
                if let Some(v) = &self.virt {
                    v.after_served(ev, sc, &self.proc_of(tid)?.mem).map_err(|why| Error::Replay { seq: self.seq, tid, why })?;
                }
                self.show_output(sc)?;
            }
            Class::MmapFile if sc.ret < 0 => self.skip_syscall(tid, real, sc)?,
            // A fork that failed at record time must fail here too.
            Class::ExecutePatch if sc.ret < 0 && self.is_forklike(nr) => self.skip_syscall(tid, real, sc)?,
            Class::MmapFile => {
                self.mmap_file(ev, real, sc)?;
                let tgid = self.task(tid)?.tgid;
                self.refresh_breakpoints(tgid, Some((sc.ret as u64, sc.args[1])));
            }
            Class::ExecuteCheck | Class::ExecutePatch => {
                os::syscall(real, 0).map_err(os_err("resuming into a syscall"))?;
                self.set_stop(tid, Stop::Running);
                let st = self.wait_stop(tid)?;
                if st != Stop::Exit {
                    return Err(self.diverge(ev, &format!("to complete {}", sc.name()), &st));
                }
                let mut regs = os::getregs(real).map_err(os_err("getregs"))?;
                if class == Class::ExecutePatch {
                    regs.rax = sc.ret as u64;
                    os::setregs(real, &regs).map_err(os_err("setregs"))?;
                } else if regs.rax as i64 != sc.ret {
                    return Err(self.divergence(
                        ev,
                        &format!("{} to return {}", sc.name(), kpl::sys::format_ret(sc.ret)),
                        &format!("got {}", kpl::sys::format_ret(regs.rax as i64)),
                    ));
                }
                if self.cpuid.ends_at(nr, &args) {
                    let tgid = self.task(tid)?.tgid;
                    if let Some(p) = self.procs.get_mut(&tgid) {
                        if p.cpuid_faulting {
                            crate::inject::disable_cpuid_faulting(real, p.vdso.syscall_insn).map_err(|e| Error::Replay {
                                seq: self.seq,
                                tid,
                                why: e,
                            })?;
                            p.cpuid_faulting = false;
                        }
                    }
                }
            }
        }
        self.set_stop(tid, Stop::Exit);
        self.continue_task(tid, 0)
    }

    fn is_forklike(&self, nr: u32) -> bool {
        [Sysno::clone, Sysno::clone3, Sysno::fork, Sysno::vfork].iter().any(|s| sys::nr(*s) == nr)
    }

    /// The exit of a clone/fork/vfork whose child was created at its fork event.
    fn finish_forklike(&mut self, ev: &Event, sc: &Syscall) -> Result<(), Error> {
        let tid = ev.tid;
        self.syscalls += 1;
        let real = self.real(tid)?;
        let mut regs = os::getregs(real).map_err(os_err("getregs"))?;
        regs.rax = sc.ret as u64;
        os::setregs(real, &regs).map_err(os_err("setregs"))?;
        self.continue_task(tid, 0)
    }

    /// Serves a syscall from the log: skipped in the kernel, recorded result
    /// and memory writes applied at its exit.
    fn skip_syscall(&mut self, tid: u32, real: Pid, sc: &Syscall) -> Result<(), Error> {
        let mut regs = os::getregs(real).map_err(os_err("getregs"))?;
        regs.orig_rax = u64::MAX;
        if !self.serves_at_entry(tid, sc, regs.rip)? {
            os::setregs(real, &regs).map_err(os_err("setregs"))?;
            os::syscall(real, 0).map_err(os_err("resuming a served syscall"))?;
            self.set_stop(tid, Stop::Running);
            let st = self.wait_stop(tid)?;
            if st != Stop::Exit {
                return Err(Error::Replay {
                    seq: self.seq,
                    tid,
                    why: format!("a served {} did not come back (stopped: {st:?})", sc.name()),
                });
            }
            regs = os::getregs(real).map_err(os_err("getregs"))?;
        }
        regs.rax = sc.ret as u64;
        // Restart codes: the kernel restarts the call after a signal only if it knows its number.
        if matches!(sc.ret, -512 | -513 | -514 | -516) {
            regs.orig_rax = sc.nr as u64;
        }
        os::setregs(real, &regs).map_err(os_err("setregs"))?;
        if sys::written_data(sc.nr, &sc.args, sc.ret, &NoMem).is_none() {
            for w in &sc.writes {
                let bytes = self.bytes(&w.data, tid)?;
                self.proc_of(tid)?.mem.write(w.addr, &bytes).map_err(|e| Error::Replay {
                    seq: self.seq,
                    tid,
                    why: format!("writing {} bytes at {:#x}: {e}", bytes.len(), w.addr),
                })?;
            }
        }
        Ok(())
    }

    /// True when a served syscall can be completed at its entry stop: the
    /// call is skipped with its result already in place and the task goes on
    /// without an exit stop (one ptrace stop instead of two). Only where
    /// nothing needs that exit stop: the task's next event is a plain syscall
    /// (not a signal or preemption placed at this exit), no debugger step,
    /// hold, caught syscall or breakpoint at the return address, no restart
    /// code, and not an eBPF log (whose virtualization observes exits).
    fn serves_at_entry(&self, tid: u32, sc: &Syscall, ret_ip: u64) -> Result<bool, Error> {
        if self.virt.is_some()
            || matches!(sc.ret, -512 | -513 | -514 | -516)
            || self.catches(sc.nr)
            || self.stepping.is_some()
            || self.hold.is_some()
            || self.hold_at.is_some_and(|(s, t)| s == self.seq && t == tid)
            || self.breakpoints.contains_key(&ret_ip)
        {
            return Ok(false);
        }
        for s in self.seq + 1..(self.seq + 64).min(self.end) {
            match self.r.get(s) {
                Ok(e) if e.tid == tid => return Ok(matches!(e.body, EventBody::Syscall(_))),
                Ok(_) | Err(kpl::Error::NoSuchEvent { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(false)
    }

    fn bytes(&self, d: &Data, tid: u32) -> Result<Vec<u8>, Error> {
        match self.r.payload(d) {
            Ok(b) => Ok(b.into_owned()),
            Err(kpl::Error::Redacted { len, rule, .. }) => Err(Error::Replay {
                seq: self.seq,
                tid,
                why: format!("the program reads {len} bytes that were redacted at record time by capture policy rule `{rule}`"),
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn show_output(&mut self, sc: &Syscall) -> Result<(), Error> {
        if self.opts.quiet || self.seq < self.show_from || sc.flags & (Syscall::FLAG_STDOUT | Syscall::FLAG_STDERR) == 0 {
            return Ok(());
        }
        for w in &sc.writes {
            let b = self.r.payload(&w.data).map(|c| c.into_owned()).unwrap_or_default();
            let _ = if sc.flags & Syscall::FLAG_STDOUT != 0 { self.out.write_all(&b) } else { self.err.write_all(&b) };
        }
        let _ = self.out.flush();
        Ok(())
    }

    fn mmap_file(&mut self, ev: &Event, real: Pid, sc: &Syscall) -> Result<(), Error> {
        let tid = ev.tid;
        let mut regs = os::getregs(real).map_err(os_err("getregs"))?;
        regs.rdi = sc.ret as u64;
        regs.r10 = ((sc.args[3] as i32 & !(libc::MAP_SHARED | libc::MAP_SHARED_VALIDATE))
            | libc::MAP_PRIVATE
            | libc::MAP_ANONYMOUS
            | libc::MAP_FIXED) as u64;
        regs.r8 = u64::MAX;
        regs.r9 = 0;
        os::setregs(real, &regs).map_err(os_err("setregs"))?;
        os::syscall(real, 0).map_err(os_err("resuming into mmap"))?;
        self.set_stop(tid, Stop::Running);
        let st = self.wait_stop(tid)?;
        if st != Stop::Exit {
            return Err(self.diverge(ev, "to complete mmap", &st));
        }
        let mut regs = os::getregs(real).map_err(os_err("getregs"))?;
        if regs.rax != sc.ret as u64 {
            return Err(self.divergence(ev, &format!("mmap at {:#x}", sc.ret), &format!("got {}", kpl::sys::format_ret(regs.rax as i64))));
        }
        let snap = self.tasks.get_mut(&tid).and_then(|t| t.snapshot.take());
        if let Some(s) = snap {
            if let Some(h) = s.file.hash {
                let content = self.r.file(&h)?;
                let off = sc.args[5] as usize;
                let len = (sc.args[1] as usize).min(content.len().saturating_sub(off));
                if len > 0 {
                    self.proc_of(tid)?.mem.write(sc.ret as u64, &content[off..off + len]).map_err(|e| Error::Replay {
                        seq: self.seq,
                        tid,
                        why: format!("filling the mapping of {}: {e}", s.file.path),
                    })?;
                }
                self.mappings.push(Mapping { start: sc.ret as u64, len: sc.args[1], offset: sc.args[5], file: s.file });
            }
        }
        regs.rax = sc.ret as u64;
        // Give the program back its own argument registers.
        regs.rdi = sc.args[0];
        regs.r10 = sc.args[3];
        regs.r8 = sc.args[4];
        regs.r9 = sc.args[5];
        os::setregs(real, &regs).map_err(os_err("setregs"))?;
        Ok(())
    }

    fn materialize(&self, s: &FileSnapshot) -> Result<(), Error> {
        let Some(h) = s.file.hash else { return Ok(()) };
        let dest = self.root_dir.path().join(s.file.path.trim_start_matches('/'));
        if dest.exists() {
            return Ok(());
        }
        let content = self.r.file(&h)?;
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).map_err(|e| Error::Os(format!("creating {}: {e}", p.display())))?;
        }
        std::fs::write(&dest, content).map_err(|e| Error::Os(format!("writing {}: {e}", dest.display())))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::Os(format!("chmod {}: {e}", dest.display())))?;
        Ok(())
    }

    fn exec(&mut self, ev: &Event, sc: &Syscall) -> Result<(), Error> {
        let tid = ev.tid;
        let files = std::mem::take(&mut self.tasks.get_mut(&tid).unwrap().exec_files);
        for f in &files {
            self.materialize(f)?;
        }
        if !self.task(tid)?.exec_in_flight {
            if sc.ret < 0 {
                let real = self.real(tid)?;
                self.skip_syscall(tid, real, sc)?;
                self.set_stop(tid, Stop::Exit);
                return self.continue_task(tid, 0);
            }
            let exe = files.iter().find(|f| f.reason == "exec").map(|f| f.file.path.clone());
            self.start_exec(tid, sc.nr, exe)?;
        }
        self.tasks.get_mut(&tid).unwrap().exec_in_flight = false;
        // Other threads of the process die first; then the exec event, then the exit.
        let mut st = self.ensure_stop(tid)?;
        if st == Stop::Event(libc::PTRACE_EVENT_EXEC) {
            os::syscall(self.real(tid)?, 0).map_err(os_err("resuming after exec"))?;
            self.set_stop(tid, Stop::Running);
            st = self.wait_stop(tid)?;
        }
        if st != Stop::Exit {
            return Err(self.diverge(ev, "to complete execve", &st));
        }
        let real = self.real(tid)?;
        let mut regs = os::getregs(real).map_err(os_err("getregs"))?;
        if regs.rax != 0 {
            return Err(self.divergence(ev, "execve to succeed", &format!("got {}", kpl::sys::format_ret(regs.rax as i64))));
        }
        let tgid = self.task(tid)?.tgid;
        let mem = Mem::open(real).map_err(|e| Error::Os(format!("memory of {real}: {e}")))?;
        let v = vdso::patch(real, &mem).map_err(|e| Error::Replay { seq: self.seq, tid, why: e })?;
        let cpuid_faulting = self.cpuid != crate::inject::CpuidMode::Off
            && crate::inject::enable_cpuid_faulting(real, v.syscall_insn).map_err(|e| Error::Replay { seq: self.seq, tid, why: e })?;
        // The recorded initial stack (same argv, env, auxv, AT_RANDOM bytes).
        if let Some(w) = sc.writes.first() {
            let bytes = self.bytes(&w.data, tid)?;
            mem.write(w.addr, &bytes).map_err(|e| Error::Replay {
                seq: self.seq,
                tid,
                why: format!("restoring the initial stack: {e}"),
            })?;
            regs.rsp = w.addr;
        }
        os::setregs(real, &regs).map_err(os_err("setregs"))?;
        self.procs.insert(tgid, Proc { mem, vdso: v, real, cpuid_faulting });
        self.mappings.retain(|_| false);
        self.refresh_breakpoints(tgid, None);
        self.set_stop(tid, Stop::Exit);
        self.continue_task(tid, 0)
    }

    /// Lets a task stopped at an execve entry run the exec. The filename as
    /// recorded resolves inside the replay root only if absolute: the call
    /// is pointed at the absolute path of the stored executable.
    fn start_exec(&mut self, tid: u32, nr: u32, exe: Option<String>) -> Result<(), Error> {
        let real = self.real(tid)?;
        let exe = match exe {
            Some(e) => Some(e),
            None => self.lookahead_exe(tid)?,
        };
        if let Some(exe) = exe {
            let mut regs = os::getregs(real).map_err(os_err("getregs"))?;
            let path_reg = if nr == sys::nr(Sysno::execveat) { regs.rsi } else { regs.rdi };
            let cur = self.proc_of(tid)?.mem.read_cstr(path_reg, 4096).unwrap_or_default();
            if cur != exe.as_bytes() {
                let mut s = exe.into_bytes();
                s.push(0);
                let at = (regs.rsp - 4096 - s.len() as u64) & !15;
                self.proc_of(tid)?.mem.write(at, &s).map_err(|e| Error::Replay {
                    seq: self.seq,
                    tid,
                    why: format!("rewriting the exec path: {e}"),
                })?;
                if nr == sys::nr(Sysno::execveat) {
                    regs.rsi = at;
                    regs.rdi = libc::AT_FDCWD as u64;
                } else {
                    regs.rdi = at;
                }
                os::setregs(real, &regs).map_err(os_err("setregs"))?;
            }
        }
        os::syscall(real, 0).map_err(os_err("resuming into execve"))?;
        self.set_stop(tid, Stop::Running);
        self.tasks.get_mut(&tid).unwrap().exec_in_flight = true;
        Ok(())
    }

    /// The executable a task's coming exec event names.
    fn lookahead_exe(&self, tid: u32) -> Result<Option<String>, Error> {
        for ev in self.r.tid_events(tid, self.seq) {
            match ev?.body {
                EventBody::FileSnapshot(s) if s.reason == "exec" => return Ok(Some(s.file.path)),
                EventBody::Syscall(sc) if sc.nr == sys::nr(Sysno::execve) || sc.nr == sys::nr(Sysno::execveat) => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }

    /// A vfork parent returns only once its child exec'd or exited; at
    /// record time that happened before the child's exec event was written.
    fn drive_vfork_child(&mut self, parent: u32) -> Result<(), Error> {
        let Some(c) = self.tasks.get_mut(&parent).and_then(|t| t.vfork_child.take()) else { return Ok(()) };
        if !self.tasks.contains_key(&c) || self.task(c)?.exec_in_flight {
            return Ok(());
        }
        match self.ensure_stop(c)? {
            Stop::Entry { nr, .. } if nr == sys::nr(Sysno::execve) || nr == sys::nr(Sysno::execveat) => self.start_exec(c, nr, None),
            Stop::Entry { nr, .. } if nr == sys::nr(Sysno::exit) || nr == sys::nr(Sysno::exit_group) => {
                os::cont(self.real(c)?, 0).map_err(os_err("resuming a vfork child into exit"))?;
                self.set_stop(c, Stop::Running);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn fork(&mut self, ev: &Event, f: &Fork) -> Result<(), Error> {
        let tid = ev.tid;
        let st = self.ensure_stop(tid)?;
        let Stop::Entry { nr, args } = st else {
            return Err(self.diverge(ev, "to enter clone/fork/vfork", &st));
        };
        if !self.is_forklike(nr) {
            return Err(self.divergence(ev, "clone, fork or vfork", &format!("called {}", sys::name(nr))));
        }
        let real = self.real(tid)?;
        os::syscall(real, 0).map_err(os_err("resuming into fork"))?;
        self.set_stop(tid, Stop::Running);
        let mut st = self.wait_stop(tid)?;
        // eBPF log (no record-time ordering of tasks): a SIGCHLD of one of the replay's own
        // children was pending (it is suppressed), so the kernel restarts the fork (ERESTARTNOINTR).
        for _ in 0..64 {
            if self.virt.is_none() || st != Stop::Exit || os::getregs(real).map_err(os_err("getregs"))?.rax as i64 != -513 {
                break;
            }
            os::syscall(real, 0).map_err(os_err("restarting fork"))?;
            self.set_stop(tid, Stop::Running);
            if let Stop::Entry { .. } = self.wait_stop(tid)? {
                os::syscall(real, 0).map_err(os_err("resuming into fork"))?;
                self.set_stop(tid, Stop::Running);
            }
            st = self.wait_stop(tid)?;
        }
        let Stop::Event(_) = st else {
            return Err(self.diverge(ev, "to create a task", &st));
        };
        let child = Pid::from_raw(os::getevent(real).map_err(os_err("getevent"))? as i32);
        let parent_tgid = self.task(tid)?.tgid;
        let tgid = if f.kind == ForkKind::Thread { parent_tgid } else { f.child_pid };
        self.tasks.insert(
            f.child_tid,
            Task {
                real: child,
                tgid,
                stop: Stop::New,
                injecting: None,
                deliver: None,
                snapshot: None,
                exec_files: Vec::new(),
                exec_in_flight: false,
                vfork_child: None,
                goal: Goal::Natural,
                resumed_at: 0,
                last_syscall: None,
            },
        );
        if f.kind != ForkKind::Thread {
            // The child's memory is a copy: it has the parent's breakpoints.
            for v in self.breakpoints.values_mut() {
                if let Some(b) = v.iter().find(|(p, _)| *p == parent_tgid).map(|(_, b)| *b) {
                    v.push((tgid, b));
                }
            }
            let mem = Mem::open(child).map_err(|e| Error::Os(format!("memory of {child}: {e}")))?;
            let v = self.proc_of(tid)?.vdso.clone();
            let cpuid_faulting = self.proc_of(tid)?.cpuid_faulting;
            self.procs.insert(tgid, Proc { mem, vdso: v, real: child, cpuid_faulting });
        }
        // Thread ids the kernel wrote into memory are the replay's: write the recorded ones.
        let (flags, ptid, ctid) = if nr == sys::nr(Sysno::clone3) {
            let m = &self.proc_of(tid)?.mem;
            (m.read_u64(args[0]).unwrap_or(0), m.read_u64(args[0] + 24).unwrap_or(0), m.read_u64(args[0] + 16).unwrap_or(0))
        } else if nr == sys::nr(Sysno::clone) {
            (args[0], args[2], args[3])
        } else {
            (0, 0, 0)
        };
        let rec = (f.child_tid as i32).to_le_bytes();
        if flags & libc::CLONE_PARENT_SETTID as u64 != 0 && ptid != 0 {
            let _ = self.proc_of(tid)?.mem.write(ptid, &rec);
        }
        if flags & libc::CLONE_CHILD_SETTID as u64 != 0 && ctid != 0 {
            let _ = self.proc_of(f.child_tid)?.mem.write(ctid, &rec);
        }
        if f.kind == ForkKind::Vfork {
            self.tasks.get_mut(&tid).unwrap().vfork_child = Some(f.child_tid);
        }
        os::syscall(real, 0).map_err(os_err("resuming after fork"))?;
        self.set_stop(tid, Stop::Running);
        if self.running == Some(tid) {
            self.running = None;
        }
        Ok(())
    }

    fn exit(&mut self, ev: &Event, x: &Exit) -> Result<(), Error> {
        let tid = ev.tid;
        let mut st = self.ensure_stop(tid)?;
        if let Stop::Entry { nr, .. } = st {
            if nr == sys::nr(Sysno::exit) || nr == sys::nr(Sysno::exit_group) {
                os::cont(self.real(tid)?, 0).map_err(os_err("resuming into exit"))?;
                self.set_stop(tid, Stop::Running);
                st = self.wait_stop(tid)?;
            }
        }
        if st != Stop::Exiting {
            // Killed with its group: let the sibling that ends the group go on. With no
            // sibling on its way there and every other thread stopped by us, nothing will
            // end this stopped task: waiting would hang (seen when an eBPF log lost the
            // records between the task's last syscall and its exit).
            if !self.drive_group_exit(tid)? && !os::group_may_end_without_tracer(self.proc_of(tid)?.real, self.real(tid)?) {
                return Err(self.diverge(ev, "to exit", &st));
            }
            st = self.wait_stop(tid)?;
        }
        if st != Stop::Exiting {
            return Err(self.diverge(ev, "to exit", &st));
        }
        let real = self.real(tid)?;
        let status = os::getevent(real).unwrap_or(0) as i32;
        let sig = libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
        if sig != x.signal || (sig.is_none() && libc::WEXITSTATUS(status) != x.code) {
            return Err(self.divergence(ev, &format!("exit {:?}/{}", x.signal, x.code), &format!("exited with status {status:#x}")));
        }
        let _ = os::cont(real, 0);
        // eBPF logs may have a group leader exit before its threads: it is
        // reaped only after them, so do not wait for it here.
        let tgid = self.task(tid)?.tgid;
        let leader_first =
            self.virt.is_some() && self.tasks.iter().any(|(t, k)| *t != tid && k.tgid == tgid && !matches!(k.stop, Stop::Gone(_)));
        // Reap it (threads of a live group are reaped by the kernel).
        match os::wait(Some(real), leader_first) {
            Ok(Some(WaitStatus::Exited(_, c))) => self.set_stop(tid, Stop::Gone(c)),
            Ok(Some(WaitStatus::Signaled(_, s, _))) => self.set_stop(tid, Stop::Gone(128 + s as i32)),
            _ => self.set_stop(tid, Stop::Gone(0)),
        }
        if tid == self.root_tid || ev.pid == self.task(self.root_tid).map(|t| t.tgid).unwrap_or(0) && x.group && ev.tid == ev.pid {
            self.root_status = Some(match x.signal {
                Some(s) => 128 + s,
                None => x.code,
            });
        }
        if self.running == Some(tid) {
            self.running = None;
        }
        Ok(())
    }

    /// A task is recorded as exiting because a sibling ended the process
    /// (exit_group, exec, fatal signal): resume the sibling that does it.
    /// Resumes the sibling of `tid` that ends their thread group, if one is
    /// stopped on its way; true when some sibling is (now) on its way to end
    /// the group (resumed into exit_group, in an exec, or running).
    fn drive_group_exit(&mut self, tid: u32) -> Result<bool, Error> {
        let tgid = self.task(tid)?.tgid;
        let sibs: Vec<(u32, Stop)> =
            self.tasks.iter().filter(|(t, x)| **t != tid && x.tgid == tgid).map(|(t, x)| (*t, x.stop.clone())).collect();
        let mut running = false;
        for (s, st) in sibs {
            match st {
                Stop::Entry { nr, .. } if nr == sys::nr(Sysno::exit_group) => {
                    os::cont(self.real(s)?, 0).map_err(os_err("resuming into exit_group"))?;
                    self.set_stop(s, Stop::Running);
                    return Ok(true);
                }
                // The exec event of that sibling will find it in flight.
                Stop::Entry { nr, .. } if nr == sys::nr(Sysno::execve) || nr == sys::nr(Sysno::execveat) => return Ok(true),
                Stop::Running => running = true,
                _ => {}
            }
        }
        Ok(running)
    }

    fn signal(&mut self, ev: &Event, s: &Signal) -> Result<(), Error> {
        let tid = ev.tid;
        if let Some(why) = self.virt.as_ref().and_then(|_| crate::virt::unplaceable_signal(s)) {
            return Err(Error::Replay { seq: self.seq, tid, why });
        }
        let st = self.ensure_stop(tid)?;
        match st {
            Stop::Signal(sig) if sig == s.signo && s.synchronous => {}
            Stop::Exit | Stop::Entry { .. } | Stop::Started | Stop::Landing | Stop::Signal(libc::SIGTRAP) if !s.synchronous => {}
            other => return Err(self.diverge(ev, &format!("to be where {} was delivered", kpl::json::signal_name(s.signo)), &other)),
        }
        self.tasks.get_mut(&tid).unwrap().deliver = Some((s.signo, s.siginfo.clone()));
        if self.report_signals && self.hold.is_none() {
            self.hold = Some((tid, Interrupt::Signal { tid, signo: s.signo }));
        }
        self.continue_task(tid, 0)
    }

    /// Brings a task with a signal to deliver to that signal's delivery stop
    /// (queueing it from the tracer when needed) with the recorded siginfo;
    /// returns the signal to resume with (0 if none).
    fn arm_signal(&mut self, tid: u32) -> Result<i32, Error> {
        let Some((sig, info)) = self.tasks.get_mut(&tid).and_then(|t| t.deliver.take()) else {
            return Ok(0);
        };
        let real = self.real(tid)?;
        // Delivered at the exit of a mask-swapping call the log served.
        let swap = match self.task(tid)?.last_syscall {
            Some((nr, a, ret)) => {
                sys::mask_during(nr, &a, ret, &self.proc_of(tid)?.mem).map_err(|why| Error::Replay { seq: self.seq, tid, why })?
            }
            None => None,
        };
        let own_mask = match swap {
            Some(m) => {
                let own = os::getsigmask(real).map_err(os_err("reading the signal mask"))?;
                os::setsigmask(real, m).map_err(os_err("setting the signal mask"))?;
                Some(own)
            }
            None => None,
        };
        if self.task(tid)?.stop != Stop::Signal(sig) {
            let tgid = self.proc_of(tid)?.real;
            self.tasks.get_mut(&tid).unwrap().injecting = Some(sig);
            os::tgkill(tgid, real, sig).map_err(os_err("queueing a signal"))?;
            os::cont(real, 0).map_err(os_err("resuming to take a signal"))?;
            self.set_stop(tid, Stop::Running);
            let st = self.wait_stop(tid)?;
            if st != Stop::Signal(sig) {
                return Err(self.diverge_at(self.seq, tid, &format!("to take {}", kpl::json::signal_name(sig)), &st));
            }
        }
        let _ = os::setsiginfo(real, &info);
        if let Some(own) = own_mask {
            self.enter_handler(tid, sig, own)?;
            return Ok(0);
        }
        Ok(sig)
    }

    /// Delivers `sig` (at its delivery stop, under the mask the
    /// interrupted call had) by stepping into its handler, then puts the
    /// program's own mask `own` into the signal frame, where the kernel
    /// would have saved it, so the handler's `rt_sigreturn` restores it.
    fn enter_handler(&mut self, tid: u32, sig: i32, own: u64) -> Result<(), Error> {
        let real = self.real(tid)?;
        os::step(real, sig).map_err(os_err("delivering a signal"))?;
        self.set_stop(tid, Stop::Running);
        let st = self.wait_stop(tid)?;
        if st != Stop::Signal(libc::SIGTRAP) {
            return Err(self.diverge_at(self.seq, tid, &format!("to enter the handler of {}", kpl::json::signal_name(sig)), &st));
        }
        // x86-64 rt_sigframe: rdx = &uc; uc_sigmask follows uc_flags, uc_link, uc_stack (24) and uc_mcontext (256).
        let uc = os::getregs(real).map_err(os_err("getregs"))?.rdx;
        self.proc_of(tid)?.mem.write(uc + 296, &own.to_le_bytes()).map_err(|e| Error::Replay {
            seq: self.seq,
            tid,
            why: format!("restoring the signal mask in the frame of {}: {e}", kpl::json::signal_name(sig)),
        })
    }

    fn trap(&mut self, ev: &Event, ip: u64, apply: impl FnOnce(&mut Regs)) -> Result<(), Error> {
        let tid = ev.tid;
        let st = self.ensure_stop(tid)?;
        let real = self.real(tid)?;
        let mut regs = os::getregs(real).map_err(os_err("getregs"))?;
        if st != Stop::Signal(libc::SIGSEGV) || regs.rip != ip {
            return Err(self.diverge(ev, &format!("to trap on {} at {ip:#x}", kpl::text::describe(ev)), &st));
        }
        apply(&mut regs);
        os::setregs(real, &regs).map_err(os_err("setregs"))?;
        self.continue_task(tid, 0)
    }

    // ---- running tasks ----

    /// Lets `tid` run until its next stop. Where its next event lands in
    /// user code (a preemption or an asynchronous signal), runs it exactly
    /// there; where its next event is a signal at this syscall's exit, keeps
    /// it stopped.
    fn continue_task(&mut self, tid: u32, sig: i32) -> Result<(), Error> {
        debug_assert_eq!(sig, 0, "signals go through Task::deliver");
        // One task runs user code at a time: the loop settles the previous one first.
        if let Some(r) = self.running {
            if r != tid && self.tasks.get(&r).is_some_and(|t| t.stop == Stop::Running) {
                return Err(Error::Replay { seq: self.seq, tid, why: format!("task {r} still running when task {tid} resumes") });
            }
        }
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.resumed_at = self.seq;
        }
        if self.hold_at == Some((self.seq, tid)) {
            self.hold_at = None;
            self.hold = Some((tid, Interrupt::Held(tid)));
        }
        // The debugger asked to stop here (a step over a syscall, a caught syscall's exit).
        if self.hold.as_ref().is_some_and(|(t, _)| *t == tid) {
            let (_, why) = self.hold.take().unwrap();
            self.set_stop(tid, Stop::Held);
            self.running = Some(tid);
            self.pending = Some(why);
            return Ok(());
        }
        self.resume_slice(tid)
    }

    /// Lets a task run its slice: to its next natural stop, or to the
    /// landing point of its next event (a preemption or an asynchronous
    /// signal in user code), or not at all when its next event is a
    /// signal delivered at this very syscall's exit.
    fn resume_slice(&mut self, tid: u32) -> Result<(), Error> {
        let next = self.next_event_of(tid)?;
        let delivering = self.task(tid)?.deliver.is_some();
        if let Some(n) = &next {
            match &n.body {
                EventBody::Signal(s) if s.landing.in_syscall && !s.synchronous && !delivering => return Ok(()),
                EventBody::Preempt(p) => return self.start_landing(tid, p.landing.clone(), n.seq),
                EventBody::Signal(s) if !s.synchronous && !s.landing.in_syscall => {
                    if let Some(why) = self.virt.as_ref().and_then(|_| crate::virt::unplaceable_signal(s)) {
                        return Err(Error::Replay { seq: n.seq, tid, why });
                    }
                    return self.start_landing(tid, s.landing.clone(), n.seq);
                }
                _ => {}
            }
        }
        let sig = self.arm_signal(tid)?;
        self.resume_user(tid, sig)
    }

    /// The task's next event after the one that let it run (a task held
    /// by a debugger resumes later, when the replay is further on).
    fn next_event_of(&self, tid: u32) -> Result<Option<Event>, Error> {
        let mut s = self.task(tid)?.resumed_at.min(self.seq) + 1;
        while s < self.end {
            match self.r.get(s) {
                Ok(e) if e.tid == tid => return Ok(Some(e)),
                Ok(_) | Err(kpl::Error::NoSuchEvent { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            s += 1;
            if s - self.seq > 200_000 {
                // Far away: use the thread index.
                return Ok(self.r.tid_events(tid, s).next().transpose()?);
            }
        }
        Ok(None)
    }

    /// Starts `tid` towards a recorded landing point: a trampoline that
    /// compares registers in the tracee (see [`crate::landing`]), or a
    /// hardware breakpoint when the instruction is too short to patch.
    fn start_landing(&mut self, tid: u32, l: Landing, seq: u64) -> Result<(), Error> {
        let real = self.real(tid)?;
        let here = os::getregs(real).map_err(os_err("getregs"))?;
        if self.task(tid)?.deliver.is_none() && here.rip == l.ip && fingerprint(&here) == l.fingerprint {
            self.set_stop(tid, Stop::Landing);
            return Ok(());
        }
        // Debugger breakpoints on the instruction are lifted while we aim at it.
        let tgid = self.task(tid)?.tgid;
        let lifted: Vec<u64> =
            self.breakpoints.range(l.ip..l.ip + 16).filter(|(_, v)| v.iter().any(|(p, _)| *p == tgid)).map(|(a, _)| *a).collect();
        let report_passes = lifted.contains(&l.ip);
        for a in &lifted {
            let orig = self.breakpoints[a].iter().find(|(p, _)| *p == tgid).map(|(_, b)| *b).unwrap();
            self.proc_of(tid)?.mem.write(*a, &[orig]).map_err(|e| Error::Os(format!("lifting a breakpoint: {e}")))?;
        }
        let (insn_addr, insn) = {
            let p = self.proc_of(tid)?;
            (p.vdso.syscall_insn, crate::landing::decode_at(&p.mem, l.ip))
        };
        let via = if insn_addr != 0 && !l.regs.is_empty() && insn.as_ref().is_some_and(crate::landing::patchable) {
            let p = self.proc_of(tid)?;
            Via::Trampoline(crate::landing::install(real, &p.mem, insn_addr, l.ip, &l.regs).map_err(|e| Error::Replay {
                seq,
                tid,
                why: e,
            })?)
        } else {
            // Too short to patch: an int3 there, stepped over on each pass that does not match.
            let m = &self.proc_of(tid)?.mem;
            let orig = m.read(l.ip, 1).map_err(|e| Error::Replay { seq, tid, why: format!("reading the landing point: {e}") })?[0];
            m.write(l.ip, &[0xcc]).map_err(|e| Error::Replay { seq, tid, why: format!("planting a landing breakpoint: {e}") })?;
            Via::Int3(orig)
        };
        self.tasks.get_mut(&tid).unwrap().goal = Goal::Landing { l, seq, via, lifted, report_passes };
        let sig = self.arm_signal(tid)?;
        self.resume_user(tid, sig)
    }

    /// Resumes a task in user code, stepping over a debugger breakpoint it
    /// is stopped on; single-steps when the debugger asked for a step.
    fn resume_user(&mut self, tid: u32, sig: i32) -> Result<(), Error> {
        let real = self.real(tid)?;
        let tgid = self.task(tid)?.tgid;
        let rip = os::getregs(real).map_err(os_err("getregs"))?.rip;
        let orig = self.breakpoints.get(&rip).and_then(|v| v.iter().find(|(p, _)| *p == tgid)).map(|(_, b)| *b);
        if let Some(orig) = orig {
            // Step over the breakpoint with the original instruction in place.
            self.proc_of(tid)?.mem.write(rip, &[orig]).map_err(|e| Error::Os(format!("lifting a breakpoint: {e}")))?;
            os::step(real, sig).map_err(os_err("stepping over a breakpoint"))?;
            self.set_stop(tid, Stop::Running);
            let st = self.wait_stop(tid)?;
            self.proc_of(tid)?.mem.write(rip, &[0xcc]).map_err(|e| Error::Os(format!("restoring a breakpoint: {e}")))?;
            if st != Stop::Signal(libc::SIGTRAP) {
                // It stopped for another reason (a syscall, a fault): that is its stop.
                self.stepping = self.stepping.filter(|t| *t != tid);
                self.running = Some(tid);
                return Ok(());
            }
            if self.stepping == Some(tid) {
                self.stepping = None;
                self.set_stop(tid, Stop::Stepped);
                self.running = Some(tid);
                self.pending = Some(Interrupt::Step(tid));
                return Ok(());
            }
            os::cont(real, 0).map_err(os_err(format!("resuming task {tid}")))?;
        } else if self.stepping == Some(tid) {
            os::step(real, sig).map_err(os_err(format!("stepping task {tid}")))?;
        } else {
            os::cont(real, sig).map_err(os_err(format!("resuming task {tid}")))?;
        }
        self.set_stop(tid, Stop::Running);
        self.running = Some(tid);
        Ok(())
    }

    /// Waits for the task running user code to stop. Landing points are
    /// completed here; debugger breakpoints and steps come back as
    /// interrupts (the task stays the running one, resumed by the next call).
    fn settle(&mut self) -> Result<Option<Interrupt>, Error> {
        let Some(r) = self.running else { return Ok(None) };
        loop {
            match self.task(r)?.stop.clone() {
                Stop::Running => {}
                Stop::Held => {
                    self.resume_slice(r)?;
                    continue;
                }
                Stop::Breakpoint | Stop::Stepped => {
                    let sig = self.arm_signal(r)?;
                    self.resume_user(r, sig)?;
                    if let Some(i) = self.pending.take() {
                        return Ok(Some(i));
                    }
                    continue;
                }
                _ => {
                    if matches!(self.task(r)?.goal, Goal::Natural) {
                        self.running = None;
                        return Ok(None);
                    }
                }
            }
            let st = if self.task(r)?.stop == Stop::Running { self.wait_stop(r)? } else { self.task(r)?.stop.clone() };
            let real = self.real(r)?;
            if st == Stop::Signal(libc::SIGTRAP) {
                let mut regs = os::getregs(real).map_err(os_err("getregs"))?;
                // Our landing point?
                let hit = match &self.task(r)?.goal {
                    Goal::Landing { l, via: Via::Trampoline(t), report_passes, .. } if regs.rip == t.hit => {
                        Some((l.clone(), false, *report_passes))
                    }
                    Goal::Landing { l, via: Via::Int3(_), report_passes, .. } if regs.rip == l.ip + 1 => {
                        Some((l.clone(), true, *report_passes))
                    }
                    _ => None,
                };
                if let Some((l, int3, report)) = hit {
                    regs.rip = l.ip;
                    if fingerprint(&regs) == l.fingerprint && crate::landing::memory_matches(&self.proc_of(r)?.mem, &l) {
                        os::setregs(real, &regs).map_err(os_err("setregs"))?;
                        self.end_landing(r)?;
                        self.set_stop(r, Stop::Landing);
                        self.running = None;
                        return Ok(None);
                    }
                    let passed = crate::landing_of(&regs, None);
                    if int3 {
                        // Execute the real instruction once, then plant the int3 again.
                        let orig = match &self.task(r)?.goal {
                            Goal::Landing { via: Via::Int3(b), .. } => *b,
                            _ => unreachable!(),
                        };
                        os::setregs(real, &regs).map_err(os_err("setregs"))?;
                        self.proc_of(r)?.mem.write(l.ip, &[orig]).map_err(|e| Error::Os(format!("landing: {e}")))?;
                        os::step(real, 0).map_err(os_err("single-step"))?;
                        self.set_stop(r, Stop::Running);
                        let st2 = self.wait_stop(r)?;
                        self.proc_of(r)?.mem.write(l.ip, &[0xcc]).map_err(|e| Error::Os(format!("landing: {e}")))?;
                        if st2 != Stop::Signal(libc::SIGTRAP) {
                            let seq = match &self.task(r)?.goal {
                                Goal::Landing { seq, .. } => *seq,
                                _ => self.seq,
                            };
                            self.end_landing(r)?;
                            return Err(self.diverge_at(seq, r, &format!("to reach its landing point {:#x}", l.ip), &st2));
                        }
                    }
                    if report {
                        self.set_stop(r, Stop::Stepped);
                        self.running = Some(r);
                        return Ok(Some(Interrupt::Passed { tid: r, landing: passed }));
                    }
                    os::cont(real, 0).map_err(os_err("resuming to a landing point"))?;
                    self.set_stop(r, Stop::Running);
                    continue;
                }
                if self.stepping == Some(r) {
                    self.stepping = None;
                    self.set_stop(r, Stop::Stepped);
                    self.running = Some(r);
                    return Ok(Some(Interrupt::Step(r)));
                }
                let tgid = self.task(r)?.tgid;
                if self.breakpoints.get(&(regs.rip - 1)).is_some_and(|v| v.iter().any(|(p, _)| *p == tgid)) {
                    regs.rip -= 1;
                    os::setregs(real, &regs).map_err(os_err("setregs"))?;
                    self.set_stop(r, Stop::Breakpoint);
                    self.running = Some(r);
                    return Ok(Some(Interrupt::Breakpoint(r)));
                }
            }
            // A natural stop. Heading for a landing point, this is a divergence.
            if let Goal::Landing { l, seq, .. } = &self.task(r)?.goal {
                let (ip, seq) = (l.ip, *seq);
                self.end_landing(r)?;
                return Err(self.diverge_at(seq, r, &format!("to reach its landing point {ip:#x}"), &st));
            }
            self.running = None;
            return Ok(None);
        }
    }

    /// Removes what was set up to reach a landing point.
    fn end_landing(&mut self, tid: u32) -> Result<(), Error> {
        let goal = std::mem::replace(&mut self.tasks.get_mut(&tid).unwrap().goal, Goal::Natural);
        let real = self.real(tid)?;
        if let Goal::Landing { l, seq, via, lifted, .. } = goal {
            match via {
                Via::Trampoline(t) => {
                    let insn = self.proc_of(tid)?.vdso.syscall_insn;
                    let p = self.proc_of(tid)?;
                    crate::landing::remove(real, &p.mem, insn, &t).map_err(|e| Error::Replay { seq, tid, why: e })?;
                }
                Via::Int3(orig) => {
                    self.proc_of(tid)?.mem.write(l.ip, &[orig]).map_err(|e| Error::Os(format!("landing: {e}")))?;
                }
            }
            for a in lifted {
                let _ = self.proc_of(tid)?.mem.write(a, &[0xcc]);
            }
        }
        Ok(())
    }

    /// The task's current stop, waiting for it if it is running.
    fn ensure_stop(&mut self, tid: u32) -> Result<Stop, Error> {
        let st = self.task(tid)?.stop.clone();
        match st {
            Stop::Running | Stop::New => self.wait_stop(tid),
            s => Ok(s),
        }
    }

    /// Waits for the task's next stop; suppresses signals the log does not
    /// deliver (the replay's own SIGCHLDs and the like).
    fn wait_stop(&mut self, tid: u32) -> Result<Stop, Error> {
        let real = self.real(tid)?;
        loop {
            let s = match os::wait(Some(real), false) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => return Err(Error::Os(format!("waiting for task {tid} ({real}): {e}"))),
            };
            tracing::trace!(tid, ?s, "wait");
            let was_new = self.task(tid)?.stop == Stop::New;
            let stop = match s {
                WaitStatus::Exited(_, c) => Stop::Gone(c),
                WaitStatus::Signaled(_, sig, _) => Stop::Gone(128 + sig as i32),
                WaitStatus::PtraceSyscall(_) => match os::syscall_info(real).map_err(os_err("syscall info"))? {
                    SyscallInfo::Entry { nr, args } | SyscallInfo::Seccomp { nr, args } => Stop::Entry { nr: nr as u32, args },
                    SyscallInfo::Exit { .. } => Stop::Exit,
                    SyscallInfo::None => continue,
                },
                WaitStatus::PtraceEvent(_, _, ev) => match ev {
                    libc::PTRACE_EVENT_SECCOMP => match os::syscall_info(real).map_err(os_err("syscall info"))? {
                        SyscallInfo::Seccomp { nr, args } | SyscallInfo::Entry { nr, args } => Stop::Entry { nr: nr as u32, args },
                        _ => continue,
                    },
                    libc::PTRACE_EVENT_EXIT => Stop::Exiting,
                    libc::PTRACE_EVENT_STOP if was_new => Stop::Started,
                    libc::PTRACE_EVENT_STOP => {
                        let _ = os::cont(real, 0);
                        continue;
                    }
                    libc::PTRACE_EVENT_EXEC => {
                        // The exec'ing thread may have taken over the leader's tid.
                        let former = os::getevent(real).unwrap_or(0) as i32;
                        let _ = former;
                        Stop::Event(ev)
                    }
                    e => Stop::Event(e),
                },
                WaitStatus::Stopped(_, sig) => {
                    let sig = sig as i32;
                    if was_new && sig == libc::SIGSTOP {
                        Stop::Started
                    } else if self.task(tid)?.injecting == Some(sig) {
                        self.tasks.get_mut(&tid).unwrap().injecting = None;
                        Stop::Signal(sig)
                    } else if matches!(sig, libc::SIGSEGV | libc::SIGTRAP | libc::SIGBUS | libc::SIGILL | libc::SIGFPE) {
                        Stop::Signal(sig)
                    } else {
                        // A real signal the recording does not have: suppress it.
                        let _ = os::cont(real, 0);
                        continue;
                    }
                }
                _ => continue,
            };
            if let (Some(v), Some(p)) = (self.virt.as_mut(), self.tasks.get(&tid).and_then(|t| self.procs.get(&t.tgid))) {
                // eBPF log: a vDSO time read or rdtsc the log cannot have (crate::virt).
                let (sig, entry) = match &stop {
                    Stop::Signal(s) => (Some(*s), None),
                    Stop::Entry { nr, args } => (None, Some((*nr, *args))),
                    _ => (None, None),
                };
                let at = crate::virt::Stopped {
                    r: &self.r,
                    seq: self.seq,
                    tid,
                    real,
                    mem: &p.mem,
                    vdso: &p.vdso,
                    stepping: self.stepping == Some(tid),
                };
                if v.absorb(&at, sig, entry).map_err(|why| Error::Replay { seq: self.seq, tid, why })? {
                    continue;
                }
            }
            self.set_stop(tid, stop.clone());
            if self.running == Some(tid) && stop != Stop::Running {
                self.running = None;
            }
            return Ok(stop);
        }
    }

    // ---- debugger primitives ----

    /// Recorded thread ids of the live tasks, in order.
    pub fn tids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.tasks.iter().filter(|(_, t)| !matches!(t.stop, Stop::Gone(_) | Stop::New)).map(|(t, _)| *t).collect();
        v.sort_unstable();
        v
    }

    /// The task the debugger sees as current: the one running user code, or the one of the next event.
    pub fn current_tid(&self) -> Option<u32> {
        self.running
            .or_else(|| self.r.get(self.seq).ok().map(|e| e.tid))
            .filter(|t| self.tasks.contains_key(t))
            .or_else(|| self.tids().first().copied())
    }

    /// Registers of a task (it must be stopped, as every task is between debugger commands).
    pub fn regs(&self, tid: u32) -> Result<Regs, Error> {
        os::getregs(self.real(tid)?).map_err(os_err(format!("registers of task {tid}")))
    }

    /// Sets the registers of a task.
    pub fn set_regs(&mut self, tid: u32, r: &Regs) -> Result<(), Error> {
        os::setregs(self.real(tid)?, r).map_err(os_err(format!("registers of task {tid}")))
    }

    /// Floating-point and SSE registers of a task.
    pub fn fpregs(&self, tid: u32) -> Result<libc::user_fpregs_struct, Error> {
        os::getfpregs(self.real(tid)?).map_err(os_err(format!("FP registers of task {tid}")))
    }

    /// Reads a task's memory as the program sees it (debugger breakpoints hidden).
    pub fn read_mem(&self, tid: u32, addr: u64, len: usize) -> Result<Vec<u8>, Error> {
        let p = self.proc_of(tid)?;
        let mut b = p.mem.read_partial(addr, len);
        let tgid = self.task(tid)?.tgid;
        for (a, v) in self.breakpoints.range(addr..addr.saturating_add(b.len() as u64)) {
            if let Some((_, orig)) = v.iter().find(|(p, _)| *p == tgid) {
                b[(a - addr) as usize] = *orig;
            }
        }
        Ok(b)
    }

    /// Writes a task's memory (keeps debugger breakpoints in place).
    pub fn write_mem(&mut self, tid: u32, addr: u64, data: &[u8]) -> Result<(), Error> {
        let tgid = self.task(tid)?.tgid;
        let mut d = data.to_vec();
        for (a, v) in self.breakpoints.range_mut(addr..addr.saturating_add(data.len() as u64)) {
            if let Some(e) = v.iter_mut().find(|(p, _)| *p == tgid) {
                e.1 = d[(a - addr) as usize];
                d[(a - addr) as usize] = 0xcc;
            }
        }
        self.proc_of(tid)?.mem.write(addr, &d).map_err(|e| Error::Os(format!("writing memory of task {tid}: {e}")))
    }

    /// Inserts a software breakpoint in every live process that maps `addr`.
    pub fn insert_breakpoint(&mut self, addr: u64) -> bool {
        let mut placed = Vec::new();
        for (tgid, p) in &self.procs {
            if self.breakpoints.get(&addr).is_some_and(|v| v.iter().any(|(t, _)| t == tgid)) {
                placed.push(*tgid);
                continue;
            }
            if let Ok(b) = p.mem.read(addr, 1) {
                if p.mem.write(addr, &[0xcc]).is_ok() {
                    self.breakpoints.entry(addr).or_default().push((*tgid, b[0]));
                    placed.push(*tgid);
                }
            }
        }
        // Wanted even where nothing maps it yet: placed when a mapping or an exec brings it.
        self.breakpoints.entry(addr).or_default();
        !placed.is_empty()
    }

    /// Memory of process `tgid` was replaced in `range` (start, length; `None`:
    /// all of it, by an exec): breakpoints placed there are gone with the old
    /// contents; every breakpoint the debugger asked for is placed again where
    /// the process now maps it. (A replay restarted for a backward command
    /// inserts the breakpoints at the start, before libraries are mapped.)
    fn refresh_breakpoints(&mut self, tgid: u32, range: Option<(u64, u64)>) {
        let Some(p) = self.procs.get(&tgid) else { return };
        for (addr, v) in self.breakpoints.iter_mut() {
            if range.is_none_or(|(a, n)| (a..a.saturating_add(n)).contains(addr)) {
                v.retain(|(t, _)| *t != tgid);
            }
            if v.iter().any(|(t, _)| *t == tgid) {
                continue;
            }
            if let Ok(b) = p.mem.read(*addr, 1) {
                if p.mem.write(*addr, &[0xcc]).is_ok() {
                    v.push((tgid, b[0]));
                }
            }
        }
    }

    /// Removes a software breakpoint.
    pub fn remove_breakpoint(&mut self, addr: u64) -> bool {
        let Some(v) = self.breakpoints.remove(&addr) else { return false };
        for (tgid, orig) in v {
            if let Some(p) = self.procs.get(&tgid) {
                let _ = p.mem.write(addr, &[orig]);
            }
        }
        true
    }

    /// Stops at these syscalls' entries and exits (`Some(vec![])`: all; `None`: off).
    pub fn set_catch(&mut self, c: Option<Vec<u32>>) {
        self.catch = c;
    }

    /// Continues until a breakpoint, a caught syscall, or the end.
    pub fn cont(&mut self) -> Result<Halt, Error> {
        self.advance(None)
    }

    /// Executes one instruction of `tid` (a syscall instruction counts as
    /// one: the events up to its completion are processed).
    pub fn step(&mut self, tid: u32) -> Result<Halt, Error> {
        self.stepping = Some(tid);
        self.hold = Some((tid, Interrupt::Step(tid)));
        let h = self.advance(None);
        self.stepping = None;
        if self.hold.as_ref().is_some_and(|(t, _)| *t == tid) {
            self.hold = None;
        }
        h
    }

    /// Processes events until `tid` is about to run after event `seq`, and holds it there.
    pub fn run_to_resume(&mut self, seq: u64, tid: u32) -> Result<Halt, Error> {
        self.hold_at = Some((seq, tid));
        let h = self.advance(None);
        self.hold_at = None;
        h
    }

    /// Aims a held (or debugger-stopped) task at a point inside its slice
    /// (first pass with these registers); [`Replayer::until_landed`] runs it there.
    pub fn aim(&mut self, tid: u32, l: &Landing) -> Result<(), Error> {
        self.hold = None;
        self.start_landing(tid, l.clone(), self.seq)
    }

    /// Runs an aimed task until it reaches its point (`Ok(None)`, a
    /// debugger stop there) or passes a debugger breakpoint on the way
    /// (`Ok(Some(Passed|Breakpoint))`; call again to go on).
    pub fn until_landed(&mut self, tid: u32) -> Result<Option<Interrupt>, Error> {
        loop {
            if self.task(tid)?.stop == Stop::Landing {
                self.set_stop(tid, Stop::Stepped);
                self.running = Some(tid);
                return Ok(None);
            }
            self.running = Some(tid);
            if let Some(i) = self.settle()? {
                return Ok(Some(i));
            }
            let st = self.task(tid)?.stop.clone();
            if st != Stop::Landing {
                return Err(Error::Replay { seq: self.seq, tid, why: format!("stopped ({st:?}) on the way to a point in its slice") });
            }
        }
    }

    /// The task running (or stopped by the debugger inside) its slice.
    pub fn running_tid(&self) -> Option<u32> {
        self.running
    }

    /// Lets the running task reach its stop (a debugger stop comes back as an interrupt).
    pub fn settle_now(&mut self) -> Result<Option<Interrupt>, Error> {
        self.settle()
    }

    /// Lets `tid` reach the stop its next event starts from.
    pub fn settle_for(&mut self, tid: u32) -> Result<(), Error> {
        self.settle()?;
        self.ensure_stop(tid)?;
        Ok(())
    }

    /// Asks [`Replayer::advance`] to hold `tid` when event `seq` would let it run.
    pub fn hold_for(&mut self, seq: u64, tid: u32) {
        self.hold_at = Some((seq, tid));
    }

    /// Where task `tid` is: the event its current slice began after, and its registers.
    pub fn point(&self, tid: u32) -> Result<(u64, Regs), Error> {
        Ok((self.task(tid)?.resumed_at, self.regs(tid)?))
    }

    /// The event the current slice of `tid` began after (also while it runs).
    pub fn resumed_at(&self, tid: u32) -> Option<u64> {
        self.tasks.get(&tid).map(|t| t.resumed_at)
    }

    /// True when `tid` is stopped inside its slice (breakpoint, step) rather than between events.
    pub fn in_slice(&self, tid: u32) -> bool {
        self.tasks.get(&tid).is_some_and(|t| matches!(t.stop, Stop::Breakpoint | Stop::Stepped | Stop::Landing))
    }

    /// Index of the next event to process.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The log.
    pub fn reader(&self) -> &Reader {
        &self.r
    }

    /// The private root directory the program runs in (its executables and libraries: a sysroot for the debugger).
    pub fn sysroot(&self) -> &Path {
        self.root_dir.path()
    }

    /// The private root, to share with a later replay ([`Replayer::with_root`]).
    pub fn root_handle(&self) -> std::sync::Arc<tempfile::TempDir> {
        self.root_dir.clone()
    }

    /// The executable of a task's process, as a file in the replay root.
    pub fn exe_file(&self, tid: u32) -> Option<PathBuf> {
        let real = self.real(tid).ok()?;
        std::fs::read_link(format!("/proc/{real}/exe")).ok()
    }

    /// The auxiliary vector of a task's process.
    pub fn auxv(&self, tid: u32) -> Vec<u8> {
        self.real(tid).ok().and_then(|r| std::fs::read(format!("/proc/{r}/auxv")).ok()).unwrap_or_default()
    }

    /// The recorded exit code of the root process.
    pub fn exit_code(&self) -> i32 {
        self.recorded_exit()
    }

    /// The pid of the process that replays task `tid` on this machine.
    pub fn real_pid(&self, tid: u32) -> Option<i32> {
        self.real(tid).ok().map(|p| p.as_raw())
    }

    /// The recorded process (thread group) of a task.
    pub fn tgid(&self, tid: u32) -> Option<u32> {
        self.tasks.get(&tid).map(|t| t.tgid)
    }

    /// Stops at every recorded signal delivery ([`Interrupt::Signal`]).
    pub fn set_report_signals(&mut self, on: bool) {
        self.report_signals = on;
    }

    /// A flag a debugger sets to stop the replay between two events.
    pub fn set_interrupt(&mut self, flag: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>) {
        self.interrupt = flag;
    }

    /// Shows program output only for events from `seq` on (output before
    /// was already shown by an earlier pass of a debugging session).
    pub fn show_output_from(&mut self, seq: u64) {
        self.show_from = seq;
    }

    /// Kills every task of the replay.
    pub fn shutdown(&mut self) {
        self.kill_all();
    }

    // ---- reports ----

    fn where_is(&self, tid: u32) -> (u64, String) {
        let Some(t) = self.tasks.get(&tid) else {
            return (0, String::new());
        };
        let Ok(regs) = os::getregs(t.real) else {
            return (0, String::new());
        };
        (regs.rip, self.symbolize(t.real, regs.rip))
    }

    fn symbolize(&self, real: Pid, ip: u64) -> String {
        let file_at = |m: &Mapping| -> Option<String> {
            let bytes = self.r.file(&m.file.hash?).ok()?;
            let (name, off) = crate::elf::symbol_at(&bytes, ip - m.start + m.offset)?;
            Some(format!("{name}+{off:#x} in {}", m.file.path))
        };
        if let Some(m) = self.mappings.iter().find(|m| ip >= m.start && ip < m.start + m.len) {
            if let Some(s) = file_at(m) {
                return s;
            }
        }
        // The executable and interpreter, mapped by the kernel from the replay root.
        let maps = std::fs::read_to_string(format!("/proc/{real}/maps")).unwrap_or_default();
        let root = self.root_dir.path().display().to_string();
        for l in maps.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 {
                continue;
            }
            let Some((a, b)) = f[0].split_once('-') else {
                continue;
            };
            let (a, b) = (u64::from_str_radix(a, 16).unwrap_or(0), u64::from_str_radix(b, 16).unwrap_or(0));
            if ip < a || ip >= b {
                continue;
            }
            let off = u64::from_str_radix(f[2], 16).unwrap_or(0);
            let path = f[5].strip_prefix(&root).unwrap_or(f[5]);
            let full = self.root_dir.path().join(path.trim_start_matches('/'));
            if let Ok(bytes) = std::fs::read(&full) {
                if let Some((name, d)) = crate::elf::symbol_at(&bytes, ip - a + off) {
                    return format!("{name}+{d:#x} in {path}");
                }
            }
            return format!("in {path}");
        }
        String::new()
    }

    fn place(&self, tid: u32) -> String {
        let (ip, sym) = self.where_is(tid);
        if ip == 0 {
            String::new()
        } else if sym.is_empty() {
            format!(" (at ip {ip:#x})")
        } else {
            format!(" (at ip {ip:#x}, {sym})")
        }
    }

    fn divergence(&self, ev: &Event, expected: &str, actual: &str) -> Error {
        Error::Divergence { seq: ev.seq, tid: ev.tid, expected: expected.to_owned(), actual: actual.to_owned(), place: self.place(ev.tid) }
    }

    fn diverge(&self, ev: &Event, expected: &str, st: &Stop) -> Error {
        self.diverge_at(ev.seq, ev.tid, expected, st)
    }

    fn diverge_at(&self, seq: u64, tid: u32, expected: &str, st: &Stop) -> Error {
        let actual = match st {
            Stop::Entry { nr, args } => {
                format!("called {}({})", sys::name(*nr), args.iter().map(|a| format!("{a:#x}")).collect::<Vec<_>>().join(", "))
            }
            Stop::Signal(s) => format!("stopped with {}", kpl::json::signal_name(*s)),
            Stop::Gone(c) => format!("ended (status {c})"),
            Stop::Exiting => "is exiting".to_owned(),
            other => format!("stopped ({other:?})"),
        };
        Error::Divergence { seq, tid, expected: format!("task {tid} {expected}"), actual, place: self.place(tid) }
    }

    /// The log being replayed.
    pub fn log(&self) -> &Path {
        &self.opts.log
    }
}

/// A memory reader that reads nothing (for rules that only look at arguments).
struct NoMem;
impl sys::MemRead for NoMem {
    fn read(&self, _: u64, _: usize) -> Vec<u8> {
        Vec::new()
    }
}

/// Replays `opts.log` to the end (or to `until_event`).
pub fn replay(opts: ReplayOptions) -> Result<ReplayOutcome, Error> {
    Replayer::new(opts)?.run()
}
