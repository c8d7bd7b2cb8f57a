//! Threads, registers and memory.

use crate::arch::{from_ptrace, to_ptrace, LinuxRegs};
use crate::{gdb_tid, tid_of, Error, ReplayTarget};
use gdbstub::common::Tid;
use gdbstub::target::ext::base::multithread::{MultiThreadBase, MultiThreadResumeOps};
use gdbstub::target::{TargetError, TargetResult};

impl MultiThreadBase for ReplayTarget {
    fn read_registers(&mut self, regs: &mut LinuxRegs, tid: Tid) -> TargetResult<(), Self> {
        let t = tid_of(tid);
        let r = self.s.regs(t).map_err(|e| TargetError::Fatal(Error::Replay(e)))?;
        let f = self.s.fpregs(t).map_err(|e| TargetError::Fatal(Error::Replay(e)))?;
        *regs = from_ptrace(&r, &f);
        Ok(())
    }

    fn write_registers(&mut self, regs: &LinuxRegs, tid: Tid) -> TargetResult<(), Self> {
        let t = tid_of(tid);
        let mut r = self.s.regs(t).map_err(|e| TargetError::Fatal(Error::Replay(e)))?;
        let before = r;
        to_ptrace(regs, &mut r);
        // gdb writes orig_rax = -1 with the pc (to stop Linux restarting a
        // syscall) when it resumes from a stop it did not cause, e.g. after
        // `starti`: here that would skip the syscall the replay is about to
        // serve or execute. The replay handles restarts itself: ignore it.
        r.orig_rax = before.orig_rax;
        if regs_eq(&before, &r) {
            return Ok(());
        }
        tracing::debug!(tid = t, rip = r.rip, "registers written from the debugger");
        self.s.set_regs(t, &r).map_err(|e| TargetError::Fatal(Error::Replay(e)))
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let b = self.s.read(tid_of(tid), start, data.len()).map_err(|_| TargetError::Errno(libc::EFAULT as u8))?;
        if b.is_empty() && !data.is_empty() {
            return Err(TargetError::Errno(libc::EFAULT as u8));
        }
        data[..b.len()].copy_from_slice(&b);
        Ok(b.len())
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        self.s.write(tid_of(tid), start, data).map_err(|_| TargetError::Errno(libc::EFAULT as u8))
    }

    fn list_active_threads(&mut self, thread_is_active: &mut dyn FnMut(Tid)) -> Result<(), Self::Error> {
        if self.exited.is_some() {
            return Ok(());
        }
        for t in self.s.threads() {
            thread_is_active(gdb_tid(t));
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

fn regs_eq(a: &libc::user_regs_struct, b: &libc::user_regs_struct) -> bool {
    let words = |r: &libc::user_regs_struct| -> [u64; 27] {
        [
            r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx, r.rdx, r.rsi, r.rdi, r.orig_rax, r.rip, r.cs,
            r.eflags, r.rsp, r.ss, r.fs_base, r.gs_base, r.ds, r.es, r.fs, r.gs,
        ]
    };
    words(a) == words(b)
}
