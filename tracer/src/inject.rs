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
                if let Ok(SyscallInfo::Exit { ret: v, .. }) = os::syscall_info(pid) {
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
    Ok(syscall(pid, insn, libc::SYS_arch_prctl as u64, [ARCH_SET_CPUID, 0, 0, 0, 0, 0])? == 0)
}

/// `arch_prctl(ARCH_SET_CPUID, 1)`: let `cpuid` run natively again.
pub fn disable_cpuid_faulting(pid: Pid, insn: u64) -> Result<(), String> {
    syscall(pid, insn, libc::SYS_arch_prctl as u64, [ARCH_SET_CPUID, 1, 0, 0, 0, 0]).map(drop)
}

const ARCH_SET_CPUID: u64 = 0x1012;

/// When `cpuid` faults (and is recorded).
///
/// Faulting makes every context switch to and from the tracee rewrite a
/// model-specific register; in a virtual machine that is a VM exit, and on
/// these machines it makes tracing several times slower. The C library
/// asks the CPU what it supports while the program starts up (the dynamic
/// loader's feature detection, before it sets up thread-local storage), so
/// the default records exactly that phase and lets later `cpuid`s run
/// natively (same machine: same answers; another CPU: code paths chosen at
/// start-up still match the recording).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CpuidMode {
    /// Never fault.
    Off,
    /// Fault from each exec until the first `arch_prctl(ARCH_SET_FS)`.
    #[default]
    Startup,
    /// Fault for the whole recording.
    Always,
}

/// A warning when this CPU differs from the one a log was recorded on (its
/// `cpu` metadata): code that chose its path by `cpuid` without the recorder
/// trapping it may take another path here. Divergence is still detected at
/// the first syscall that differs; this says why it may happen.
pub fn cpu_mismatch(meta: &kpl::Metadata) -> Option<String> {
    let recorded = meta.extra.iter().find(|(k, _)| k == "cpu").map(|(_, v)| v.as_str())?;
    let here = kpl::cpu_signature();
    (recorded != here).then(|| {
        format!(
            "this CPU ({here}) differs from the recording's ({recorded}); cpuid the recorder did not trap \
             (CPUID faulting unavailable or ended) may answer differently here, and code that picked its path \
             by it can diverge"
        )
    })
}

impl CpuidMode {
    /// Name as stored in the log's metadata.
    pub fn name(self) -> &'static str {
        match self {
            CpuidMode::Off => "off",
            CpuidMode::Startup => "startup",
            CpuidMode::Always => "always",
        }
    }
    /// From the name in the metadata (logs without one: `always`, the
    /// behaviour of the first recordings).
    pub fn from_name(s: Option<&str>) -> CpuidMode {
        match s {
            Some("off") => CpuidMode::Off,
            Some("startup") => CpuidMode::Startup,
            _ => CpuidMode::Always,
        }
    }
    /// True when faulting stops after syscall `nr` with `args` (startup mode).
    pub fn ends_at(self, nr: u32, args: &[u64; 6]) -> bool {
        self == CpuidMode::Startup && nr == libc::SYS_arch_prctl as u32 && args[0] == 0x1002
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn another_cpu_is_named_and_this_one_is_not() {
        let here = kpl::Metadata::for_this_host("ptrace", vec![]);
        assert_eq!(super::cpu_mismatch(&here), None);
        let mut other = here.clone();
        other.extra = vec![("cpu".into(), "GenuineIntel 000906ea 7ffafbff:bfebfbff 029c67af:00000000:bc000400".into())];
        let w = super::cpu_mismatch(&other).expect("a different CPU is reported");
        assert!(w.contains("GenuineIntel 000906ea") && w.contains(&kpl::cpu_signature()), "{w}");
        // Logs written before the CPU was recorded: nothing to compare.
        other.extra.clear();
        assert_eq!(super::cpu_mismatch(&other), None);
    }
}
