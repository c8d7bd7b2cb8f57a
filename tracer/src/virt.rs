//! Replaying an eBPF recording: serving what the recorder could not see.
//!
//! The eBPF recorder (`kprobe recorder --replay-grade`, `kprobe record
//! --backend ebpf`) sees every syscall, but never what a program does
//! without entering the kernel: time read through the vDSO, `rdtsc`/
//! `rdtscp`, `cpuid`; and it has no preemption or signal landing points.
//! A log whose backend is `ebpf` is replayed with these virtualized,
//! deterministically from the log alone, so every replay of it (a debugger
//! replaying again included) sees the same values:
//!
//! * **vDSO time reads.** The replay patches the vDSO into syscalls as
//!   always; a `clock_gettime`, `gettimeofday`, `time`, `getcpu` or
//!   `clock_getres` that enters the kernel from the vDSO and is not the
//!   task's next logged event is served here, consuming no event. Its time
//!   lies between the end of the latest event processed (the floor) and the
//!   start of the task's next logged event (the ceiling): the first read
//!   after an event is the floor, each later read halfway from the previous
//!   value to the ceiling, and past the ceiling time goes on 1 µs a read.
//!   Time never goes backwards (across all tasks), a program that sleeps
//!   sees at least the recorded sleep, and a program spinning on the clock
//!   until a deadline that passed before its next syscall gets there in a
//!   few dozen reads. `CLOCK_REALTIME` and `TAI` are
//!   the event timestamps (wall clock); the monotonic clocks subtract the
//!   recorded `clock_offset_ns`. A vDSO call that the kernel answered with a
//!   real syscall at record time (CPU-time clocks) is in the log and is
//!   served from it.
//! * **`rdtsc`/`rdtscp`** trap at replay as always (`PR_SET_TSC`); the value
//!   is the same virtual time converted with the counter's rate and origin
//!   the recorder measured (`tsc` in the log's metadata); `rdtscp`'s
//!   processor id and `getcpu` give the CPU of the task's latest event.
//! * **`cpuid`** runs natively (no faulting): the same machine gives the
//!   same answers; another CPU may make the C library choose other code
//!   paths (see the README).
//! * **Scheduling.** There are no landing points: threads are ordered by
//!   their syscalls only (the order in which the kernel finished them); a
//!   task created by a fork runs when its first event comes.
//! * **Signals.** The recorder logs each signal a selected task handles
//!   (`signal_deliver`) as a `Signal` event right after the syscall at
//!   whose exit the kernel delivered it (`landing.in_syscall`: the task's
//!   registers were still exactly as that syscall left them — an
//!   interrupted blocking call with its restart code, or a signal pending
//!   on return), and the replay delivers it there with the recorded
//!   siginfo, as for a ptrace log. Synchronous signals (a fault) happen by
//!   themselves at replay. An asynchronous signal that landed in user
//!   code cannot be placed without an instruction count (no PMU): the
//!   replay stops before it with an error saying so
//!   ([`unplaceable_signal`]), never a silently different run.

use crate::os::{self, Mem, Pid};
use crate::vdso::Vdso;
use kpl::{Event, EventBody, Metadata, Reader};
use std::collections::HashMap;

const CLOCK_GETTIME: u32 = 228;
const GETTIMEOFDAY: u32 = 96;
const TIME: u32 = 201;
const GETCPU: u32 = 309;
const CLOCK_GETRES: u32 = 229;

/// Why a `Signal` event of an eBPF log cannot be reproduced, if it cannot:
/// an asynchronous signal that landed in user code between two syscalls.
pub fn unplaceable_signal(s: &kpl::event::Signal) -> Option<String> {
    (!s.synchronous && !s.landing.in_syscall).then(|| {
        format!(
            "{} landed in user code at {:#x}, between two syscalls: an eBPF log has no instruction count (no PMU) to place \
             an asynchronous signal there, so the replay cannot go past it (record with `kprobe record` (ptrace) to replay it)",
            kpl::json::signal_name(s.signo),
            s.landing.ip
        )
    })
}

/// Why a syscall of an eBPF log cannot be served faithfully, if it cannot:
/// the recorder could not capture all the memory the kernel wrote for it
/// (`FLAG_TRUNCATED`: ring buffer full, unreadable memory, more than the
/// per-call limit), so serving it would hand the program other bytes. A
/// write to the recorder's stdout/stderr whose bytes were cut only shows
/// less output: a warning, not an error.
pub fn incomplete_capture(s: &kpl::event::Syscall) -> Option<String> {
    use kpl::event::Syscall;
    if s.flags & Syscall::FLAG_TRUNCATED == 0 {
        return None;
    }
    if s.flags & (Syscall::FLAG_STDOUT | Syscall::FLAG_STDERR) != 0 {
        tracing::warn!("the log holds only part of what {} showed (the recorder could not capture it all)", s.name());
        return None;
    }
    Some(format!(
        "the recorder could not capture all the memory the kernel wrote for {} (ring buffer full, unreadable memory or over \
         the per-call limit): serving it would hand the program other data",
        s.name()
    ))
}

/// Why the replay of an eBPF log cannot go past a `Lost` event, if it
/// cannot: the recorder's ring buffer dropped syscall or process records
/// (counted in the kernel, reported here, where the recorder noticed), so
/// what the program did around here is not all in the log.
pub fn lost_records(l: &kpl::event::Lost) -> Option<String> {
    matches!(l.source.as_str(), "syscall" | "proc").then(|| {
        format!(
            "the recorder lost {} {} records (its ring buffer was full) before this point: the log does not hold all the \
             program did, so the replay cannot go on faithfully (record again with a larger ring buffer, --ring-kb)",
            l.count, l.source
        )
    })
}

/// A task of the replay at a stop.
pub struct Stopped<'a> {
    /// The log.
    pub r: &'a Reader,
    /// The next event to process.
    pub seq: u64,
    /// Recorded thread id.
    pub tid: u32,
    /// Its thread at replay.
    pub real: Pid,
    /// Its process's memory.
    pub mem: &'a Mem,
    /// Its process's patched vDSO.
    pub vdso: &'a Vdso,
    /// It was single-stepping (a debugger's step): resume it with one step.
    pub stepping: bool,
}

/// The virtual clocks and counters of one replay of an eBPF log.
#[derive(Debug)]
pub struct Virt {
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC at record time.
    clock_offset: i128,
    /// (TSC at MONO0, MONO0 in ns, TSC kHz).
    tsc: Option<(u64, u64, u64)>,
    /// The last virtual wall-clock time handed out.
    last: u64,
    /// End (timestamp + duration) of the latest event processed.
    floor: u64,
    /// CPU of each task's latest event.
    cpu: HashMap<u32, u16>,
    /// Per task: (searched from seq, its next event at or after it).
    next: HashMap<u32, (u64, Option<Event>)>,
    /// Reads served here: vDSO calls, rdtsc/rdtscp.
    pub served: u64,
}

fn extra<'a>(meta: &'a Metadata, key: &str) -> Option<&'a str> {
    meta.extra.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

impl Virt {
    /// The virtualization a log needs: `Some` for an eBPF log.
    pub fn for_log(meta: &Metadata) -> Option<Virt> {
        if meta.backend != "ebpf" {
            return None;
        }
        let clock_offset = extra(meta, "clock_offset_ns").and_then(|v| v.parse().ok()).unwrap_or(0);
        let tsc = extra(meta, "tsc").and_then(|v| {
            let mut it = v.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some((it.next()??, it.next()??, it.next()??))
        });
        Some(Virt {
            clock_offset,
            tsc,
            last: meta.start_time_ns,
            floor: meta.start_time_ns,
            cpu: HashMap::new(),
            next: HashMap::new(),
            served: 0,
        })
    }

    /// Takes note of an event the replay processed (the floor of virtual time).
    pub fn observe(&mut self, ev: &Event) {
        let end = match &ev.body {
            EventBody::Syscall(s) => ev.ts_ns.saturating_add(s.duration_ns),
            _ => ev.ts_ns,
        };
        // Only the program's own events: the recorder's notes carry its own clock.
        if matches!(ev.body, EventBody::Syscall(_) | EventBody::Fork(_) | EventBody::Exec(_) | EventBody::Exit(_)) {
            self.floor = self.floor.max(end);
            if ev.cpu != u16::MAX {
                self.cpu.insert(ev.tid, ev.cpu);
            }
        }
    }

    /// After a syscall served from the log: what the kernel wrote behind the
    /// recorder's back. A successful `rseq` registration (the ptrace recorder
    /// refuses rseq; an eBPF recording cannot) gets the CPU and node ids the
    /// kernel puts in the area on return to user space: the CPU of the
    /// event, frozen there (the kernel would update them on migration).
    pub fn after_served(&self, ev: &Event, s: &kpl::event::Syscall, mem: &Mem) -> Result<(), String> {
        const RSEQ: u32 = 334;
        if s.nr == RSEQ && s.ret == 0 && s.args[2] == 0 && s.args[0] != 0 && s.args[1] >= 32 {
            let cpu = if ev.cpu == u16::MAX { 0 } else { ev.cpu as u32 };
            let mut area = cpu.to_le_bytes().to_vec(); // cpu_id_start
            area.extend_from_slice(&cpu.to_le_bytes()); // cpu_id
            mem.write(s.args[0], &area).map_err(|e| format!("writing the rseq area: {e}"))?;
            mem.write(s.args[0] + 20, &[0; 8]).map_err(|e| format!("writing the rseq area: {e}"))?;
            // node_id, mm_cid
        }
        Ok(())
    }

    /// True for a syscall that a fatal signal (another thread's exit_group,
    /// a kill) interrupted: the kernel reports a restart code at its exit
    /// and the task's next event is its end. The call never returned to
    /// the program: at replay the task is killed in it as well, so there is
    /// nothing to serve.
    pub fn killed_in_syscall(&mut self, r: &Reader, ev: &Event) -> Result<bool, String> {
        let EventBody::Syscall(s) = &ev.body else { return Ok(false) };
        if !matches!(s.ret, -512 | -513 | -514 | -516 | -4) {
            return Ok(false);
        }
        Ok(matches!(self.next_event(r, ev.tid, ev.seq + 1)?.map(|e| e.body), Some(EventBody::Exit(_))))
    }

    /// The next logged event of `tid` at or after `seq`.
    fn next_event(&mut self, r: &Reader, tid: u32, seq: u64) -> Result<Option<Event>, String> {
        if let Some((from, ev)) = self.next.get(&tid) {
            if *from <= seq && ev.as_ref().is_none_or(|e| e.seq >= seq) {
                return Ok(ev.clone());
            }
        }
        let ev = match r.tid_events(tid, seq).next() {
            Some(Ok(e)) => Some(e),
            Some(Err(e)) => return Err(format!("reading the log: {e}")),
            None => None,
        };
        self.next.insert(tid, (seq, ev.clone()));
        Ok(ev)
    }

    /// The next virtual wall-clock time, before an event at `ceiling`: the
    /// first read after new events is the floor; each later one goes
    /// halfway to the ceiling; past it (or with none), 1 µs a read.
    fn now(&mut self, ceiling: Option<u64>) -> u64 {
        let v = if self.floor > self.last {
            self.floor
        } else {
            match ceiling {
                Some(c) if c > self.last + 1 => self.last + ((c - self.last) / 2).max(1),
                _ => self.last + 1000,
            }
        };
        self.last = v;
        v
    }

    fn mono(&self, wall: u64) -> u64 {
        (wall as i128 - self.clock_offset).max(0) as u64
    }

    fn tsc_of(&self, wall: u64) -> u64 {
        let mono = self.mono(wall);
        match self.tsc {
            Some((t0, m0, khz)) => (t0 as i128 + (mono as i128 - m0 as i128) * khz as i128 / 1_000_000).max(0) as u64,
            None => mono,
        }
    }

    /// At a stop of a task (`at`): serves a vDSO time call (`entry`: a
    /// syscall-entry stop) or an `rdtsc`/`rdtscp` (`sig`: a signal stop)
    /// that the log does not have, and resumes the task as it was running.
    /// Returns false when the stop is not one of these (the replay handles
    /// it as usual).
    pub fn absorb(&mut self, at: &Stopped, sig: Option<i32>, entry: Option<(u32, [u64; 6])>) -> Result<bool, String> {
        let served = if let Some((nr, args)) = entry {
            self.vdso_call(at, nr, &args)?
        } else if sig == Some(libc::SIGSEGV) {
            self.rdtsc(at)?
        } else {
            false
        };
        if served {
            self.served += 1;
            let res = if at.stepping { os::step(at.real, 0) } else { os::cont(at.real, 0) };
            res.map_err(|e| format!("resuming after a virtualized read: {e}"))?;
        }
        Ok(served)
    }

    fn vdso_call(&mut self, at: &Stopped, nr: u32, args: &[u64; 6]) -> Result<bool, String> {
        let (r, seq, tid, real, mem, vdso) = (at.r, at.seq, at.tid, at.real, at.mem, at.vdso);
        if ![CLOCK_GETTIME, GETTIMEOFDAY, TIME, GETCPU, CLOCK_GETRES].contains(&nr) {
            return Ok(false);
        }
        let regs = os::getregs(real).map_err(|e| format!("getregs: {e}"))?;
        if vdso.base == 0 || regs.rip < vdso.base || regs.rip >= vdso.base + vdso.size {
            return Ok(false); // a real syscall, not the patched vDSO: it is in the log
        }
        let next = self.next_event(r, tid, seq)?;
        // The kernel answered this one at record time (a clock the vDSO does not
        // serve): the log has it.
        let n = kpl::sys::arity(nr).unwrap_or(6);
        if let Some(EventBody::Syscall(s)) = next.as_ref().map(|e| &e.body) {
            if s.nr == nr && s.args[..n] == args[..n] {
                return Ok(false);
            }
        }
        let (ret, writes) = match nr {
            CLOCK_GETTIME | CLOCK_GETRES => {
                let clk = args[0] as i32;
                let realtime = matches!(clk, libc::CLOCK_REALTIME | libc::CLOCK_REALTIME_COARSE | libc::CLOCK_TAI);
                let mono =
                    matches!(clk, libc::CLOCK_MONOTONIC | libc::CLOCK_MONOTONIC_RAW | libc::CLOCK_MONOTONIC_COARSE | libc::CLOCK_BOOTTIME);
                if !realtime && !mono {
                    // The vDSO passes other clocks to the kernel: they are in the log.
                    return Ok(false);
                }
                let ns = if nr == CLOCK_GETRES {
                    if matches!(clk, libc::CLOCK_REALTIME_COARSE | libc::CLOCK_MONOTONIC_COARSE) {
                        4_000_000
                    } else {
                        1
                    }
                } else {
                    let wall = self.now(next.as_ref().map(|e| e.ts_ns));
                    if realtime {
                        wall
                    } else {
                        self.mono(wall)
                    }
                };
                (0i64, vec![(args[1], timespec(ns))])
            }
            GETTIMEOFDAY => {
                let wall = self.now(next.as_ref().map(|e| e.ts_ns));
                let mut tv = (wall / 1_000_000_000).to_le_bytes().to_vec();
                tv.extend_from_slice(&(wall % 1_000_000_000 / 1000).to_le_bytes());
                (0, vec![(args[0], tv), (args[1], vec![0; 8])])
            }
            TIME => {
                let secs = self.now(next.as_ref().map(|e| e.ts_ns)) / 1_000_000_000;
                (secs as i64, vec![(args[0], secs.to_le_bytes().to_vec())])
            }
            _ => {
                let cpu = self.cpu.get(&tid).copied().unwrap_or(0) as u32;
                (0, vec![(args[0], cpu.to_le_bytes().to_vec()), (args[1], 0u32.to_le_bytes().to_vec())])
            }
        };
        skip(real, ret)?;
        for (addr, bytes) in writes {
            if addr != 0 {
                mem.write(addr, &bytes).map_err(|e| format!("writing the result of a virtualized {}: {e}", crate::sys::name(nr)))?;
            }
        }
        Ok(true)
    }

    fn rdtsc(&mut self, at: &Stopped) -> Result<bool, String> {
        let (r, seq, tid, real, mem) = (at.r, at.seq, at.tid, at.real, at.mem);
        let info = os::getsiginfo(real).map_err(|e| format!("siginfo: {e}"))?;
        if i32::from_le_bytes(info[8..12].try_into().unwrap()) != 0x80 {
            return Ok(false); // not raised by the kernel for a trapped instruction
        }
        let mut regs = os::getregs(real).map_err(|e| format!("getregs: {e}"))?;
        let insn = mem.read_partial(regs.rip, 3);
        let len = match insn.as_slice() {
            [0x0f, 0x31, ..] => 2,
            [0x0f, 0x01, 0xf9] => 3,
            _ => return Ok(false),
        };
        let next = self.next_event(r, tid, seq)?;
        let wall = self.now(next.as_ref().map(|e| e.ts_ns));
        let tsc = self.tsc_of(wall);
        regs.rax = tsc & 0xffff_ffff;
        regs.rdx = tsc >> 32;
        if len == 3 {
            regs.rcx = self.cpu.get(&tid).copied().unwrap_or(0) as u64;
        }
        regs.rip += len;
        os::setregs(real, &regs).map_err(|e| format!("setregs: {e}"))?;
        Ok(true)
    }
}

/// A `struct timespec` of `ns` nanoseconds.
fn timespec(ns: u64) -> Vec<u8> {
    let mut b = (ns / 1_000_000_000).to_le_bytes().to_vec();
    b.extend_from_slice(&(ns % 1_000_000_000).to_le_bytes());
    b
}

/// Lets a task at a syscall-entry stop skip the call, and sets its result.
fn skip(real: Pid, ret: i64) -> Result<(), String> {
    let mut regs = os::getregs(real).map_err(|e| format!("getregs: {e}"))?;
    regs.orig_rax = u64::MAX;
    os::setregs(real, &regs).map_err(|e| format!("setregs: {e}"))?;
    os::syscall(real, 0).map_err(|e| format!("skipping a virtualized call: {e}"))?;
    loop {
        match os::wait(Some(real), false).map_err(|e| format!("waiting for a virtualized call: {e}"))? {
            Some(nix::sys::wait::WaitStatus::PtraceSyscall(_)) => break,
            Some(s) => return Err(format!("a virtualized call did not come back (stopped: {s:?})")),
            None => {}
        }
    }
    let mut regs = os::getregs(real).map_err(|e| format!("getregs: {e}"))?;
    regs.rax = ret as u64;
    os::setregs(real, &regs).map_err(|e| format!("setregs: {e}"))
}
