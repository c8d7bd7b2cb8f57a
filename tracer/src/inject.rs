//! Making a stopped tracee execute a syscall of the tracer's choosing
//! (enabling CPUID faulting after an exec, for instance).

use crate::os::{self, Pid, SyscallInfo};
use nix::sys::wait::WaitStatus;

/// Runs syscall `nr` with `args` in `pid`, which must be stopped at a
/// syscall-exit stop or a signal/event stop outside any syscall, using the
/// `syscall` instruction at `insn`. Restores the registers afterwards and
/// returns the syscall's result.
pub fn syscall(pid: Pid, insn: u64, nr: u64, args: [u64; 6]) -> Result<i64, String> {
    let saved = os::getregs(pid).map_err(|e| format!("getregs: {e}"))?;
    let mut r = saved;
    r.rip = insn;
    r.rax = nr;
    r.orig_rax = u64::MAX;
    r.rdi = args[0];
    r.rsi = args[1];
    r.rdx = args[2];
    r.r10 = args[3];
    r.r8 = args[4];
    r.r9 = args[5];
    os::setregs(pid, &r).map_err(|e| format!("setregs: {e}"))?;
    let mut ret = None;
    for _ in 0..16 {
        os::syscall(pid, 0).map_err(|e| format!("resuming for an injected syscall: {e}"))?;
        match os::wait(Some(pid), false).map_err(|e| format!("waiting for an injected syscall: {e}"))? {
            Some(WaitStatus::PtraceSyscall(_)) | Some(WaitStatus::PtraceEvent(..)) => {
                if let Ok(SyscallInfo::Exit { ret: v }) = os::syscall_info(pid) {
                    ret = Some(v);
                    break;
                }
            }
            Some(s) => return Err(format!("unexpected stop while injecting syscall {nr}: {s:?}")),
            None => {}
        }
    }
    os::setregs(pid, &saved).map_err(|e| format!("setregs: {e}"))?;
    ret.ok_or_else(|| format!("injected syscall {nr} did not complete"))
}

/// `arch_prctl(ARCH_SET_CPUID, 0)`: make `cpuid` fault so it can be recorded
/// and replayed. Returns false when the CPU or kernel cannot.
pub fn enable_cpuid_faulting(pid: Pid, insn: u64) -> Result<bool, String> {
    const ARCH_SET_CPUID: u64 = 0x1012;
    Ok(syscall(pid, insn, libc::SYS_arch_prctl as u64, [ARCH_SET_CPUID, 0, 0, 0, 0, 0])? == 0)
}
