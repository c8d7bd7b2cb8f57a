//! Continue, step, range step, and execution backwards.
//!
//! Resume packets only record what to do; the work happens when the
//! event loop asks for the next stop ([`ReplayTarget::run`]). Range
//! stepping (`vCont;r`, what gdb's `step` and `next` use) single-steps
//! inside the server until the pc leaves the range, saving a round trip
//! per instruction. Signals gdb asks to deliver are ignored: the replay
//! delivers exactly the recorded signals, where they were recorded.

use crate::{gdb_tid, tid_of, Action, Error, ReplayTarget};
use gdbstub::common::{Signal, Tid};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::ext::base::multithread::{
    MultiThreadRangeStepping, MultiThreadRangeSteppingOps, MultiThreadResume, MultiThreadSchedulerLocking, MultiThreadSchedulerLockingOps,
    MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::reverse_exec::{ReplayLogPosition, ReverseCont, ReverseContOps, ReverseStep, ReverseStepOps};
use gdbstub::target::ext::breakpoints::WatchKind;
use gdbstub::target::ext::catch_syscalls::CatchSyscallPosition;
use tracer::debug::Stopped;

impl ReplayTarget {
    /// Runs the pending resume action to the next stop.
    pub fn run(&mut self) -> Result<MultiThreadStopReason<u64>, Error> {
        let action = std::mem::replace(&mut self.action, Action::Cont);
        if let Some(c) = self.exited {
            if !matches!(action, Action::ReverseCont | Action::ReverseStep(_)) {
                return Ok(MultiThreadStopReason::Exited(c as u8));
            }
            self.exited = None;
        }
        tracing::debug!(?action, "resume");
        // Timed only when logged: the vDSO clock costs a fault in this thread
        // (it traps rdtsc like the replayed program, see tracer::os::share_tsc_trap).
        let t0 = tracing::enabled!(tracing::Level::DEBUG).then(std::time::Instant::now);
        let st = match action {
            Action::Cont => loop {
                let st = self.s.cont()?;
                if !self.foreign(&st) {
                    break st;
                }
            },
            Action::Step(t) => self.s.step(self.main_or(t))?,
            Action::Range { tid, start, end } => {
                let tid = self.main_or(tid);
                loop {
                    let st = self.s.step(tid)?;
                    if st == Stopped::Step(tid) {
                        let pc = self.s.regs(tid)?.rip;
                        if pc >= start && pc < end {
                            continue;
                        }
                    }
                    break st;
                }
            }
            Action::ReverseCont => loop {
                let st = self.s.reverse_cont()?;
                if !self.foreign(&st) {
                    break st;
                }
            },
            Action::ReverseStep(t) => self.s.reverse_step(self.main_or(t))?,
        };
        tracing::debug!(?st, us = t0.map(|t| t.elapsed().as_micros() as u64), "stopped");
        Ok(self.reason(st))
    }

    /// A stop in another process of the recorded tree (not shown to the debugger).
    fn foreign(&self, st: &Stopped) -> bool {
        match st {
            Stopped::Breakpoint(t) | Stopped::Step(t) | Stopped::Watch { tid: t, .. } | Stopped::Syscall { tid: t, .. } => {
                !self.s.is_main(*t)
            }
            _ => false,
        }
    }

    fn main_or(&self, t: u32) -> u32 {
        if self.s.is_main(t) {
            t
        } else {
            self.s.current_thread().filter(|c| self.s.is_main(*c)).unwrap_or(t)
        }
    }

    fn reason(&mut self, st: Stopped) -> MultiThreadStopReason<u64> {
        match st {
            Stopped::Breakpoint(t) => MultiThreadStopReason::SwBreak(gdb_tid(t)),
            Stopped::Step(t) => MultiThreadStopReason::SignalWithThread { tid: gdb_tid(t), signal: Signal::SIGTRAP },
            Stopped::Watch { tid, addr } => MultiThreadStopReason::Watch { tid: gdb_tid(tid), kind: WatchKind::Write, addr },
            Stopped::Syscall { tid, nr, entry } => MultiThreadStopReason::CatchSyscall {
                tid: Some(gdb_tid(tid)),
                number: nr as u64,
                position: if entry { CatchSyscallPosition::Entry } else { CatchSyscallPosition::Return },
            },
            Stopped::Signal { tid, signo } => MultiThreadStopReason::SignalWithThread { tid: gdb_tid(tid), signal: gdb_signal(signo) },
            Stopped::Interrupted(t) => MultiThreadStopReason::SignalWithThread { tid: gdb_tid(t), signal: Signal::SIGINT },
            Stopped::Beginning(t) => MultiThreadStopReason::ReplayLog { tid: Some(gdb_tid(t)), pos: ReplayLogPosition::Begin },
            Stopped::Exited(c) => {
                self.exited = Some(c);
                MultiThreadStopReason::Exited(c as u8)
            }
        }
    }
}

impl MultiThreadResume for ReplayTarget {
    fn resume(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        self.action = Action::Cont;
        Ok(())
    }

    fn set_resume_action_continue(&mut self, _tid: Tid, _signal: Option<Signal>) -> Result<(), Self::Error> {
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_range_step(&mut self) -> Option<MultiThreadRangeSteppingOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }

    fn support_reverse_step(&mut self) -> Option<ReverseStepOps<'_, Tid, Self>> {
        Some(self)
    }

    fn support_reverse_cont(&mut self) -> Option<ReverseContOps<'_, Tid, Self>> {
        Some(self)
    }
}

impl MultiThreadSchedulerLocking for ReplayTarget {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        // Threads run in their recorded order whatever the debugger asks:
        // a thread that is not stepped runs only where the recording says.
        Ok(())
    }
}

impl MultiThreadSingleStep for ReplayTarget {
    fn set_resume_action_step(&mut self, tid: Tid, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.action = Action::Step(tid_of(tid));
        Ok(())
    }
}

impl MultiThreadRangeStepping for ReplayTarget {
    fn set_resume_action_range_step(&mut self, tid: Tid, start: u64, end: u64) -> Result<(), Self::Error> {
        self.action = Action::Range { tid: tid_of(tid), start, end };
        Ok(())
    }
}

impl ReverseCont<Tid> for ReplayTarget {
    fn reverse_cont(&mut self) -> Result<(), Self::Error> {
        self.action = Action::ReverseCont;
        Ok(())
    }
}

impl ReverseStep<Tid> for ReplayTarget {
    fn reverse_step(&mut self, tid: Tid) -> Result<(), Self::Error> {
        self.action = Action::ReverseStep(tid_of(tid));
        Ok(())
    }
}

/// A Linux signal number as GDB's remote protocol numbers signals.
pub(crate) fn gdb_signal(linux: i32) -> Signal {
    const LINUX: [Signal; 32] = [
        Signal::SIGZERO,
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGILL,
        Signal::SIGTRAP,
        Signal::SIGABRT,
        Signal::SIGBUS,
        Signal::SIGFPE,
        Signal::SIGKILL,
        Signal::SIGUSR1,
        Signal::SIGSEGV,
        Signal::SIGUSR2,
        Signal::SIGPIPE,
        Signal::SIGALRM,
        Signal::SIGTERM,
        Signal::SIGUSR1, // SIGSTKFLT has no GDB number
        Signal::SIGCHLD,
        Signal::SIGCONT,
        Signal::SIGSTOP,
        Signal::SIGTSTP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGURG,
        Signal::SIGXCPU,
        Signal::SIGXFSZ,
        Signal::SIGVTALRM,
        Signal::SIGPROF,
        Signal::SIGWINCH,
        Signal::SIGIO,
        Signal::SIGPWR,
        Signal::SIGSYS,
    ];
    match linux {
        0..=31 => LINUX[linux as usize],
        // Real-time signals, numbered as GDB does.
        32 => Signal::SIG32,
        33..=63 => Signal((linux - 33 + 45) as u8),
        64 => Signal::SIG64,
        65..=127 => Signal((linux - 65 + 79) as u8),
        _ => Signal::SIGZERO,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn linux_signals_map_to_gdb_numbers() {
        use gdbstub::common::Signal;
        assert_eq!(super::gdb_signal(17), Signal::SIGCHLD);
        assert_eq!(super::gdb_signal(14), Signal::SIGALRM);
        assert_eq!(super::gdb_signal(10), Signal::SIGUSR1);
        assert_eq!(super::gdb_signal(19), Signal::SIGSTOP);
        assert_eq!(super::gdb_signal(34), Signal::SIG34);
        assert_eq!(super::gdb_signal(64), Signal::SIG64);
    }
}
