//! A debugging session over a replay: breakpoints, stepping, watchpoints,
//! and execution backwards.
//!
//! **Positions.** Without a performance counter a point in a thread's
//! execution is named by the event that let the thread run (its slice
//! begins there) and, inside the slice, by the registers at that point
//! (first pass with those registers; see [`crate::landing`] for the
//! limits). A position is reached again by replaying from the start: the
//! thread is held where that event lets it run, then run to the point
//! through an in-tracee register-comparing trampoline. Replay being
//! deterministic, this lands on the same instruction in the same state.
//!
//! **Backwards.** `reverse-continue` replays from the start to the current
//! position with the breakpoints in place, remembering every breakpoint hit
//! (and for watchpoints, every change of the watched bytes, narrowed to the
//! instruction by single-stepping the slice where it happened); it then
//! goes to the last one. `reverse-stepi` counts single-steps from the start
//! of the current slice and goes to one fewer; from the start of a slice it
//! goes to the syscall (or interrupted instruction) that ended the thread's
//! previous slice. gdb builds reverse-step, -next and -finish on these.
//!
//! **Watchpoints.** Debug registers do not work in this VM, so watched
//! bytes are compared after every event and every slice; a change found
//! in a slice is narrowed to the writing instruction by single-stepping
//! that slice again (a kernel write is reported right after its syscall).

use crate::replay::{Halt, Interrupt, ReplayOptions, Replayer};
use crate::{fingerprint, landing_of, os::Regs, Error};
use kpl::event::Landing;
use kpl::{EventBody, Kind};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// A point in the replay (see the module documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// The thread (recorded tid).
    pub tid: u32,
    /// The event its slice began after.
    pub resumed_at: u64,
    /// Where inside the slice; `None`: at its start.
    pub at: Option<Landing>,
    /// At the entry of the syscall of this event (the end of a slice).
    pub entry_of: Option<u64>,
}

/// Why the session stopped.
#[derive(Clone, Debug, PartialEq)]
pub enum Stopped {
    /// A software breakpoint.
    Breakpoint(u32),
    /// A step completed (or the session started here).
    Step(u32),
    /// A watched range changed; the thread is just after the writing instruction (or syscall).
    Watch {
        /// Thread.
        tid: u32,
        /// Start of the watch that fired.
        addr: u64,
    },
    /// At a caught syscall's entry or exit.
    #[allow(missing_docs)]
    Syscall { tid: u32, nr: u32, entry: bool },
    /// A recorded signal arrives (delivered, as recorded, when resumed).
    #[allow(missing_docs)]
    Signal { tid: u32, signo: i32 },
    /// Stopped on the debugger's request (Ctrl-C), between two events.
    Interrupted(u32),
    /// Went back to the beginning of the recording.
    Beginning(u32),
    /// The program ended (its recorded exit code).
    Exited(i32),
}

/// A watched range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub len: usize,
}

/// A debugging session. See the module documentation.
pub struct Session {
    opts: ReplayOptions,
    r: Replayer,
    breakpoints: BTreeSet<u64>,
    watches: Vec<Watch>,
    catch: Option<Vec<u32>>,
    start: Point,
    tainted: bool,
    ended: Option<i32>,
    /// The furthest event processed so far (program output is shown once).
    high_water: u64,
    main_tgid: u32,
    interrupt: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Replays done since the session began (for reports and benchmarks).
    pub restarts: u64,
    /// A thread that went backwards over a syscall: it waits at that
    /// syscall's entry and is shown before its `syscall` instruction (as if
    /// the instruction had not run); its registers at the entry stop.
    before_insn: Option<(u32, Regs)>,
}

fn held(h: Halt) -> Result<u32, Error> {
    match h {
        Halt::Interrupt(Interrupt::Held(t)) => Ok(t),
        other => Err(Error::Replay { seq: 0, tid: 0, why: format!("expected to hold a thread, got {other:?}") }),
    }
}

impl Session {
    /// Starts a session: the program stopped right after its first exec
    /// (at the dynamic loader's first instruction).
    pub fn new(log: PathBuf) -> Result<Session, Error> {
        Session::with_output(log, false)
    }

    /// Like [`Session::new`]; with `show_output`, the program's recorded
    /// stdout/stderr is shown as the replay first passes it (not again
    /// when going back and forth).
    pub fn with_output(log: PathBuf, show_output: bool) -> Result<Session, Error> {
        let opts = ReplayOptions { log, quiet: !show_output, until_event: None };
        let mut r = Replayer::new(opts.clone())?;
        let (seq, tid) = first_exec(&r)?;
        let start = Point { tid, resumed_at: seq, at: None, entry_of: None };
        held(r.run_to_resume(seq, tid)?)?;
        let main_tgid = r.tgid(tid).unwrap_or(tid);
        let interrupt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        Ok(Session {
            interrupt,
            high_water: 0,
            main_tgid,
            opts,
            r,
            breakpoints: BTreeSet::new(),
            watches: Vec::new(),
            catch: None,
            start,
            tainted: false,
            ended: None,
            restarts: 0,
            before_insn: None,
        })
    }

    /// A flag that stops a forward `cont` between two events when set
    /// (from another thread: a debugger's Ctrl-C). Going backwards ignores it.
    pub fn interrupt_flag(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.interrupt.clone()
    }

    /// The underlying replay.
    pub fn replayer(&self) -> &Replayer {
        &self.r
    }

    /// Live threads (recorded tids) of the debugged process (the one whose
    /// exec began the session; other processes of the tree are replayed
    /// alongside but not shown).
    pub fn threads(&self) -> Vec<u32> {
        self.r.tids().into_iter().filter(|t| self.r.tgid(*t) == Some(self.main_tgid)).collect()
    }

    /// The recorded pid of the debugged process.
    pub fn pid(&self) -> u32 {
        self.main_tgid
    }

    /// True when `tid` is a thread of the debugged process.
    pub fn is_main(&self, tid: u32) -> bool {
        self.r.tgid(tid) == Some(self.main_tgid)
    }

    /// The thread the last stop concerns.
    pub fn current_thread(&self) -> Option<u32> {
        self.r.current_tid()
    }

    /// Registers of a thread (a thread stopped at a syscall entry is shown
    /// before its `syscall` instruction).
    pub fn regs(&self, tid: u32) -> Result<Regs, Error> {
        let mut r = self.r.regs(tid)?;
        if self.before_insn.as_ref().is_some_and(|(t, _)| *t == tid) {
            r = before_syscall_insn(&r);
        }
        Ok(r)
    }

    /// Sets registers (changes only the replay, which may then diverge).
    pub fn set_regs(&mut self, tid: u32, r: &Regs) -> Result<(), Error> {
        self.tainted = true;
        let mut r = *r;
        if let Some((_, entry)) = self.before_insn.as_ref().filter(|(t, _)| *t == tid) {
            // Still at the entry stop underneath: the call goes on from there.
            r.rip = r.rip.wrapping_add(SYSCALL_INSN_LEN);
            r.rax = entry.rax;
        }
        self.r.set_regs(tid, &r)
    }

    /// FP/SSE registers.
    pub fn fpregs(&self, tid: u32) -> Result<libc::user_fpregs_struct, Error> {
        self.r.fpregs(tid)
    }

    /// Reads memory.
    pub fn read(&self, tid: u32, addr: u64, len: usize) -> Result<Vec<u8>, Error> {
        self.r.read_mem(tid, addr, len)
    }

    /// Writes memory: changes only the replay; the rest of it is then unreliable.
    pub fn write(&mut self, tid: u32, addr: u64, data: &[u8]) -> Result<(), Error> {
        if !self.tainted {
            eprintln!("kprobe: memory written from the debugger: the rest of this replay may diverge from the recording");
        }
        self.tainted = true;
        self.r.write_mem(tid, addr, data)
    }

    /// True once the debugger changed memory or registers.
    pub fn tainted(&self) -> bool {
        self.tainted
    }

    /// Adds a software breakpoint.
    pub fn add_breakpoint(&mut self, addr: u64) -> bool {
        self.breakpoints.insert(addr);
        self.r.insert_breakpoint(addr)
    }

    /// Removes a software breakpoint.
    pub fn remove_breakpoint(&mut self, addr: u64) -> bool {
        self.breakpoints.remove(&addr);
        self.r.remove_breakpoint(addr)
    }

    /// Adds a write watchpoint.
    pub fn add_watch(&mut self, addr: u64, len: usize) {
        self.watches.push(Watch { addr, len });
    }

    /// Removes a watchpoint.
    pub fn remove_watch(&mut self, addr: u64, len: usize) -> bool {
        let n = self.watches.len();
        self.watches.retain(|w| !(w.addr == addr && w.len == len));
        n != self.watches.len()
    }

    /// Syscalls to stop at (`Some(vec![])`: all, `None`: none).
    pub fn set_catch(&mut self, c: Option<Vec<u32>>) {
        self.catch = c.clone();
        self.r.set_catch(c);
    }

    /// The current position.
    pub fn point(&self) -> Result<Point, Error> {
        let tid = self.r.current_tid().ok_or_else(|| Error::Usage("no live thread".into()))?;
        let (resumed_at, regs) = self.r.point(tid)?;
        let at = if self.r.in_slice(tid) { Some(landing_of(&regs, None)) } else { None };
        Ok(Point { tid, resumed_at, at, entry_of: None })
    }

    // ---- forward ----

    /// Continues forward.
    pub fn cont(&mut self) -> Result<Stopped, Error> {
        self.before_insn = None;
        self.r.set_interrupt(Some(self.interrupt.clone()));
        self.r.set_report_signals(true);
        let st = self.cont_inner();
        self.r.set_report_signals(false);
        self.r.set_interrupt(None);
        self.interrupt.store(false, std::sync::atomic::Ordering::Relaxed);
        st
    }

    fn cont_inner(&mut self) -> Result<Stopped, Error> {
        if let Some(c) = self.ended {
            return Ok(Stopped::Exited(c));
        }
        if self.watches.is_empty() {
            let h = self.r.cont()?;
            return Ok(self.stopped(h));
        }
        self.cont_watching()
    }

    /// One instruction forward.
    pub fn step(&mut self, tid: u32) -> Result<Stopped, Error> {
        self.before_insn = None;
        if let Some(c) = self.ended {
            return Ok(Stopped::Exited(c));
        }
        let before = self.watched(tid);
        let h = self.r.step(tid)?;
        let s = self.stopped(h);
        if !self.watches.is_empty() {
            if let Some(w) = self.changed(tid, &before) {
                return Ok(Stopped::Watch { tid, addr: w });
            }
        }
        Ok(s)
    }

    fn stopped(&mut self, h: Halt) -> Stopped {
        match h {
            Halt::End | Halt::Reached(_) => {
                let c = self.r.exit_code();
                self.ended = Some(c);
                Stopped::Exited(c)
            }
            Halt::Interrupt(Interrupt::Breakpoint(t)) => Stopped::Breakpoint(t),
            Halt::Interrupt(Interrupt::Step(t))
            | Halt::Interrupt(Interrupt::Held(t))
            | Halt::Interrupt(Interrupt::Passed { tid: t, .. }) => Stopped::Step(t),
            Halt::Interrupt(Interrupt::Syscall { tid, nr, entry }) => Stopped::Syscall { tid, nr, entry },
            Halt::Interrupt(Interrupt::Interrupted(t)) => Stopped::Interrupted(t),
            Halt::Interrupt(Interrupt::Signal { tid, signo }) => Stopped::Signal { tid, signo },
        }
    }

    fn watched(&self, tid: u32) -> Vec<Vec<u8>> {
        self.watches.iter().map(|w| self.r.read_mem(tid, w.addr, w.len).unwrap_or_default()).collect()
    }

    fn changed(&self, tid: u32, before: &[Vec<u8>]) -> Option<u64> {
        let now = self.watched(tid);
        self.watches.iter().zip(before.iter().zip(now.iter())).find(|(_, (a, b))| a != b).map(|(w, _)| w.addr)
    }

    /// Continues with watchpoints: slice by slice and event by event. A
    /// slice that changes watched bytes is narrowed to the instruction; a
    /// syscall whose recorded writes change them stops right after it.
    fn cont_watching(&mut self) -> Result<Stopped, Error> {
        // Watched values at a consistent moment (every task stopped).
        let tid0 = self.r.current_tid().unwrap_or(self.start.tid);
        let values = self.watched(tid0);
        loop {
            let owner = self.r.running_tid();
            let owner_start = owner.and_then(|t| self.r.resumed_at(t));
            let settled = self.r.settle_now()?;
            let tid = self.r.current_tid().unwrap_or(tid0);
            if let Some(w) = self.changed(tid, &values) {
                let (t, at) = (owner.unwrap_or(tid), owner_start.unwrap_or(0));
                return self.narrow_forward(t, at, &values, w, None);
            }
            if let Some(i) = settled {
                return Ok(self.stopped(Halt::Interrupt(i)));
            }
            let seq = self.r.seq();
            if let Ok(ev) = self.r.reader().get(seq) {
                if let Some(w) = self.kernel_writes_watch(&ev) {
                    // The syscall writes a watched range: stop right after it.
                    self.r.hold_for(seq, ev.tid);
                    let h = self.r.advance(None)?;
                    return Ok(match h {
                        Halt::Interrupt(Interrupt::Held(t)) => Stopped::Watch { tid: t, addr: w },
                        other => self.stopped(other),
                    });
                }
            }
            match self.r.advance(Some(seq + 1))? {
                Halt::Reached(_) => {}
                other => return Ok(self.stopped(other)),
            }
        }
    }

    /// `values` with a syscall event's recorded writes applied.
    fn apply_writes(&self, ev: &kpl::Event, values: &mut [Vec<u8>]) {
        let EventBody::Syscall(sc) = &ev.body else { return };
        for w in &sc.writes {
            let Ok(bytes) = self.r.reader().payload(&w.data) else { continue };
            for (watch, v) in self.watches.iter().zip(values.iter_mut()) {
                for (i, b) in v.iter_mut().enumerate() {
                    let a = watch.addr + i as u64;
                    if a >= w.addr && a < w.addr + bytes.len() as u64 {
                        *b = bytes[(a - w.addr) as usize];
                    }
                }
            }
        }
    }

    /// The watch a syscall event's recorded memory writes change, if any.
    fn kernel_writes_watch(&self, ev: &kpl::Event) -> Option<u64> {
        let EventBody::Syscall(sc) = &ev.body else { return None };
        for w in &sc.writes {
            let len = w.data.len() as u64;
            for watch in &self.watches {
                let (a, b) = (watch.addr.max(w.addr), (watch.addr + watch.len as u64).min(w.addr + len));
                if a < b {
                    let Ok(bytes) = self.r.reader().payload(&w.data) else { continue };
                    let new = &bytes[(a - w.addr) as usize..(b - w.addr) as usize];
                    let cur = self.r.read_mem(ev.tid, a, (b - a) as usize).unwrap_or_default();
                    if cur != new {
                        return Some(watch.addr);
                    }
                }
            }
        }
        None
    }

    /// Finds the first instruction of `tid`'s slice (begun after event
    /// `resumed_at`) that changes a watched range, by single-stepping it.
    fn narrow_forward(
        &mut self,
        tid: u32,
        resumed_at: u64,
        before: &[Vec<u8>],
        _w: u64,
        limit: Option<&Landing>,
    ) -> Result<Stopped, Error> {
        tracing::debug!(tid, resumed_at, "narrowing a watched change");
        self.goto(&Point { tid, resumed_at, at: None, entry_of: None })?;
        for _ in 0..50_000_000u64 {
            if let Some(w) = self.changed(tid, before) {
                return Ok(Stopped::Watch { tid, addr: w });
            }
            if let Some(l) = limit {
                let r = self.r.regs(tid)?;
                if r.rip == l.ip && fingerprint(&r) == l.fingerprint {
                    break;
                }
            }
            match self.r.step(tid)? {
                Halt::Interrupt(Interrupt::Step(_)) => {}
                other => return Ok(self.stopped(other)),
            }
        }
        Err(Error::Usage("the watched bytes' change could not be located".into()))
    }

    // ---- positions ----

    fn restart(&mut self) -> Result<(), Error> {
        self.before_insn = None;
        self.high_water = self.high_water.max(self.r.seq());
        self.r.shutdown();
        self.r = Replayer::with_root(self.opts.clone(), Some(self.r.root_handle()))?;
        self.r.show_output_from(self.high_water);
        // Whatever the debugger wrote is gone with the old replay.
        self.tainted = false;
        self.r.set_catch(None);
        self.ended = None;
        self.restarts += 1;
        Ok(())
    }

    fn reinsert(&mut self) {
        for a in self.breakpoints.clone() {
            self.r.insert_breakpoint(a);
        }
        self.r.set_catch(self.catch.clone());
    }

    /// Goes to a point (replaying from the start).
    pub fn goto(&mut self, p: &Point) -> Result<(), Error> {
        tracing::debug!(?p, "goto");
        self.restart()?;
        if let Some(k) = p.entry_of {
            match self.r.advance(Some(k))? {
                Halt::Reached(_) => {}
                other => return Err(Error::Replay { seq: k, tid: p.tid, why: format!("going to the entry of event {k}: {other:?}") }),
            }
            self.r.settle_for(p.tid)?;
            self.reinsert();
            return Ok(());
        }
        held(self.r.run_to_resume(p.resumed_at, p.tid)?).map_err(|e| Error::Usage(format!("going to {p:?}: {e}")))?;
        if let Some(l) = &p.at {
            self.r.aim(p.tid, l)?;
            while let Some(i) = self.r.until_landed(p.tid)? {
                tracing::debug!(?i, "on the way to a point");
            }
        }
        self.reinsert();
        Ok(())
    }

    /// Goes to the moment event `seq` is about to be processed (`monitor goto`).
    pub fn goto_event(&mut self, seq: u64) -> Result<Stopped, Error> {
        let ev = self.r.reader().get(seq)?;
        // The thread of that event, stopped where the event starts.
        let prev = self
            .r
            .reader()
            .tid_events(ev.tid, 0)
            .take_while(|e| e.as_ref().map(|e| e.seq < seq).unwrap_or(false))
            .filter_map(|e| e.ok())
            .filter(|e| resumes(e))
            .last();
        match (&ev.body, prev) {
            // Where the thread meets the event: at the syscall's entry, at
            // the trapping instruction, at the point a signal or preemption lands.
            (EventBody::Syscall(_) | EventBody::Rdtsc(_) | EventBody::Cpuid(_) | EventBody::Preempt(_) | EventBody::Signal(_), _) => {
                self.goto(&Point { tid: ev.tid, resumed_at: 0, at: None, entry_of: Some(seq) })?;
            }
            (_, Some(p)) => self.goto(&Point { tid: ev.tid, resumed_at: p.seq, at: None, entry_of: None })?,
            (_, None) => self.goto(&self.start.clone())?,
        }
        Ok(Stopped::Step(ev.tid))
    }

    /// Goes back to the beginning.
    pub fn goto_start(&mut self) -> Result<Stopped, Error> {
        let s = self.start.clone();
        self.goto(&s)?;
        Ok(Stopped::Beginning(s.tid))
    }

    // ---- backwards ----

    /// Continues backwards to the previous breakpoint hit or watched change.
    pub fn reverse_cont(&mut self) -> Result<Stopped, Error> {
        let target = self.point()?;
        self.restart()?;
        held(self.r.run_to_resume(self.start.resumed_at, self.start.tid)?)?;
        self.reinsert();
        let watching = !self.watches.is_empty();
        // The last stop before the target: a breakpoint point, or a change.
        enum Last {
            Bp(Point),
            Slice { tid: u32, resumed_at: u64, before: Vec<Vec<u8>> },
            Kernel { tid: u32, seq: u64, addr: u64 },
        }
        let mut last: Option<Last> = None;
        self.r.hold_for(target.resumed_at, target.tid);
        let mut values = if watching { self.watched(self.start.tid) } else { Vec::new() };
        loop {
            // The current slice, to its end.
            let owner = self.r.running_tid();
            let owner_start = owner.and_then(|t| self.r.resumed_at(t));
            let settled = self.r.settle_now()?;
            let tid = self.r.current_tid().unwrap_or(self.start.tid);
            if watching {
                let now = self.watched(tid);
                if now != values {
                    last = Some(Last::Slice { tid: owner.unwrap_or(tid), resumed_at: owner_start.unwrap_or(0), before: values.clone() });
                    values = now;
                }
            }
            if let Some(Interrupt::Breakpoint(t)) = settled {
                let (ra, regs) = self.r.point(t)?;
                last = Some(Last::Bp(Point { tid: t, resumed_at: ra, at: Some(landing_of(&regs, None)), entry_of: None }));
                continue;
            }
            // One event (or the hold at the target's slice).
            let seq = self.r.seq();
            if watching {
                if let Ok(ev) = self.r.reader().get(seq) {
                    if let Some(addr) = self.kernel_writes_watch(&ev) {
                        last = Some(Last::Kernel { tid: ev.tid, seq, addr });
                    }
                    self.apply_writes(&ev, &mut values);
                }
            }
            match self.r.advance(Some(seq + 1))? {
                Halt::Interrupt(Interrupt::Held(t)) if t == target.tid => {
                    if let Some(l) = &target.at {
                        // Into the target's slice: stops before the target point count.
                        let before = if watching { self.watched(t) } else { Vec::new() };
                        self.r.aim(t, l)?;
                        loop {
                            match self.r.until_landed(t)? {
                                None => break,
                                Some(Interrupt::Passed { tid, landing }) => {
                                    last = Some(Last::Bp(Point { tid, resumed_at: target.resumed_at, at: Some(landing), entry_of: None }));
                                }
                                Some(Interrupt::Breakpoint(tid)) => {
                                    let (ra, regs) = self.r.point(tid)?;
                                    last = Some(Last::Bp(Point { tid, resumed_at: ra, at: Some(landing_of(&regs, None)), entry_of: None }));
                                }
                                Some(_) => {}
                            }
                        }
                        if watching && self.changed(t, &before).is_some() {
                            // Changed earlier in this very slice: the last change before the target.
                            return self.narrow_backward(t, target.resumed_at, &before, &target);
                        }
                    }
                    break;
                }
                Halt::Interrupt(Interrupt::Breakpoint(t)) => {
                    let (ra, regs) = self.r.point(t)?;
                    last = Some(Last::Bp(Point { tid: t, resumed_at: ra, at: Some(landing_of(&regs, None)), entry_of: None }));
                }
                Halt::End => break,
                _ => {}
            }
        }
        match last {
            Some(Last::Bp(p)) => {
                self.goto(&p)?;
                Ok(Stopped::Breakpoint(p.tid))
            }
            Some(Last::Slice { tid, resumed_at, before }) => self.narrow_backward(tid, resumed_at, &before, &target),
            Some(Last::Kernel { tid, seq, addr }) => {
                // Before the syscall that wrote it.
                self.goto(&Point { tid, resumed_at: 0, at: None, entry_of: Some(seq) })?;
                Ok(Stopped::Watch { tid, addr })
            }
            None => self.goto_start(),
        }
    }

    /// Within the slice of `tid` begun after `resumed_at`, finds the last
    /// instruction (before `limit`) that changes the watched bytes, and
    /// stops just before it (going backwards, the write is undone: the
    /// watched bytes show their old value, the pc is the writing instruction).
    fn narrow_backward(&mut self, tid: u32, resumed_at: u64, before: &[Vec<u8>], limit: &Point) -> Result<Stopped, Error> {
        tracing::debug!(tid, resumed_at, "narrowing backwards");
        self.goto(&Point { tid, resumed_at, at: None, entry_of: None })?;
        let mut cur = self.watched(tid);
        // Steps after which a change was seen (the write is the step before).
        let mut last_change: Option<u64> = None;
        let _ = before;
        let mut n = 0u64;
        loop {
            if limit.tid == tid && limit.resumed_at == resumed_at {
                if let Some(l) = &limit.at {
                    let r = self.r.regs(tid)?;
                    if r.rip == l.ip && fingerprint(&r) == l.fingerprint {
                        break;
                    }
                }
            }
            match self.r.step(tid)? {
                Halt::Interrupt(Interrupt::Step(_)) => {}
                _ => break,
            }
            n += 1;
            if self.r.point(tid)?.0 != resumed_at {
                // Stepped over the syscall that ends the slice: a later change is not this slice's.
                let now = self.watched(tid);
                if now != cur {
                    last_change = Some(n);
                }
                break;
            }
            let now = self.watched(tid);
            if now != cur {
                last_change = Some(n);
                cur = now;
            }
            if n > 50_000_000 {
                break;
            }
        }
        let addr = self.watches.first().map(|w| w.addr).unwrap_or(0);
        let start = Point { tid, resumed_at, at: None, entry_of: None };
        self.goto(&start)?;
        if let Some(k) = last_change {
            for _ in 0..k - 1 {
                self.r.step(tid)?;
            }
        }
        Ok(Stopped::Watch { tid, addr })
    }

    /// One instruction backwards.
    pub fn reverse_step(&mut self, tid: u32) -> Result<Stopped, Error> {
        let p = self.point()?;
        let tid = if p.tid == tid { tid } else { p.tid };
        if let Some((t, entry)) = self.before_insn.clone().filter(|(t, _)| *t == tid) {
            // Before a syscall instruction, at the end of the slice: count the
            // steps from the slice start to the instruction.
            let target = before_syscall_insn(&entry);
            let start = Point { tid: t, resumed_at: p.resumed_at, at: None, entry_of: None };
            self.goto(&start)?;
            let mut n = 0u64;
            loop {
                if same_user_state(&self.r.regs(t)?, &target) {
                    break;
                }
                match self.r.step(t)? {
                    Halt::Interrupt(Interrupt::Step(_)) if self.r.point(t)?.0 == p.resumed_at => n += 1,
                    other => return Err(Error::Replay { seq: self.r.seq(), tid: t, why: format!("lost the way back ({other:?})") }),
                }
            }
            if n == 0 {
                return self.back_over_event(t, p.resumed_at);
            }
            self.goto(&start)?;
            for _ in 0..n - 1 {
                self.r.step(t)?;
            }
            return Ok(Stopped::Step(t));
        }
        if let Some(l) = p.at.clone() {
            // Count the steps from the start of the slice.
            let start = Point { tid, resumed_at: p.resumed_at, at: None, entry_of: None };
            self.goto(&start)?;
            let mut n = 0u64;
            loop {
                let r = self.r.regs(tid)?;
                if r.rip == l.ip && fingerprint(&r) == l.fingerprint {
                    break;
                }
                match self.r.step(tid)? {
                    Halt::Interrupt(Interrupt::Step(_)) => n += 1,
                    other => return Err(Error::Replay { seq: self.r.seq(), tid, why: format!("lost the way back ({other:?})") }),
                }
            }
            if n > 0 {
                self.goto(&start)?;
                for _ in 0..n - 1 {
                    self.r.step(tid)?;
                }
                return Ok(Stopped::Step(tid));
            }
        }
        // At the start of a slice: back to what ended the previous one.
        self.back_over_event(tid, p.resumed_at)
    }

    fn back_over_event(&mut self, tid: u32, resumed_at: u64) -> Result<Stopped, Error> {
        if resumed_at <= self.start.resumed_at && tid == self.start.tid {
            self.goto_start()?;
            return Ok(Stopped::Beginning(tid));
        }
        let ev = self.r.reader().get(resumed_at)?;
        match &ev.body {
            EventBody::Syscall(_) => {
                self.goto(&Point { tid, resumed_at: 0, at: None, entry_of: Some(resumed_at) })?;
                self.before_insn = Some((tid, self.r.regs(tid)?));
                Ok(Stopped::Step(tid))
            }
            EventBody::Signal(s) if !s.landing.in_syscall => {
                let prev = self.prev_resume(tid, resumed_at)?;
                self.goto(&Point { tid, resumed_at: prev, at: Some(s.landing.clone()), entry_of: None })?;
                Ok(Stopped::Step(tid))
            }
            EventBody::Resume(_) => {
                // After a preemption: its landing ended the previous slice.
                let pre = self
                    .r
                    .reader()
                    .tid_events(tid, 0)
                    .filter_map(|e| e.ok())
                    .take_while(|e| e.seq < resumed_at)
                    .filter(|e| e.kind() == Kind::Preempt)
                    .last();
                match pre {
                    Some(e) => {
                        let EventBody::Preempt(pp) = &e.body else { unreachable!() };
                        let prev = self.prev_resume(tid, e.seq)?;
                        self.goto(&Point { tid, resumed_at: prev, at: Some(pp.landing.clone()), entry_of: None })?;
                        Ok(Stopped::Step(tid))
                    }
                    None => self.goto_start(),
                }
            }
            _ => {
                let prev = self.prev_resume(tid, resumed_at)?;
                self.goto(&Point { tid, resumed_at: prev, at: None, entry_of: None })?;
                Ok(Stopped::Step(tid))
            }
        }
    }

    /// The event before `seq` that let `tid` run.
    fn prev_resume(&self, tid: u32, seq: u64) -> Result<u64, Error> {
        Ok(self
            .r
            .reader()
            .tid_events(tid, 0)
            .filter_map(|e| e.ok())
            .take_while(|e| e.seq < seq)
            .filter(resumes)
            .map(|e| e.seq)
            .last()
            .unwrap_or(self.start.resumed_at))
    }

    // ---- monitor commands ----

    /// `monitor when`: the current event number and its time.
    pub fn when(&self) -> String {
        let seq = self.r.seq();
        let ts = self.r.reader().get(seq.saturating_sub(1)).map(|e| e.ts_ns).unwrap_or(0);
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ts);
        format!(
            "event {seq} of {} (last event at {} = {ts} ns){}",
            self.r.reader().end_seq(),
            humantime_like(t),
            if self.tainted { "; memory or registers were changed from the debugger: the replay may diverge" } else { "" }
        )
    }

    /// `monitor events [N]`: the events around the current one.
    pub fn events(&self, n: u64) -> String {
        let seq = self.r.seq();
        let base = self.r.reader().meta().start_time_ns;
        let from = seq.saturating_sub(n);
        let mut out = String::new();
        for ev in self.r.reader().events_from(from).take((2 * n + 1) as usize).flatten() {
            let mark = if ev.seq == seq { "=> " } else { "   " };
            out.push_str(mark);
            out.push_str(&kpl::text::line(&ev, base));
            out.push('\n');
        }
        out
    }

    /// The recorded exit code.
    pub fn exit_code(&self) -> i32 {
        self.r.exit_code()
    }
}

fn humantime_like(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}s since the epoch", d.as_secs(), d.subsec_nanos())
}

/// Events that let a thread run again.
/// Length of x86-64 `syscall` (0f 05).
const SYSCALL_INSN_LEN: u64 = 2;

/// The registers a thread at a syscall-entry stop had just before its
/// `syscall` instruction: the pc on the instruction, rax the call number.
/// (rcx and r11, which the instruction overwrites, keep their entry values.)
fn before_syscall_insn(entry: &Regs) -> Regs {
    let mut r = *entry;
    r.rip = entry.rip.wrapping_sub(SYSCALL_INSN_LEN);
    r.rax = entry.orig_rax;
    r
}

/// Same user-visible state, but for rcx and r11 (see [`before_syscall_insn`]).
fn same_user_state(a: &Regs, b: &Regs) -> bool {
    let mut a = *a;
    a.rcx = b.rcx;
    a.r11 = b.r11;
    a.orig_rax = b.orig_rax;
    a.eflags = b.eflags;
    a.rip == b.rip && a.rsp == b.rsp && fingerprint(&a) == fingerprint(b)
}

fn resumes(e: &kpl::Event) -> bool {
    matches!(e.kind(), Kind::Syscall | Kind::Signal | Kind::Resume)
}

/// The first exec of the log: (event, thread).
fn first_exec(r: &Replayer) -> Result<(u64, u32), Error> {
    for ev in r.reader().events() {
        let ev = ev?;
        if let EventBody::Syscall(s) = &ev.body {
            if s.nr == crate::sys::nr(syscalls::Sysno::execve) && s.ret == 0 {
                return Ok((ev.seq, ev.tid));
            }
        }
    }
    Err(Error::Usage("the log has no exec to start a session from".into()))
}
