//! The one small safe wrapper around ptrace, process memory, fork/exec and
//! the few CPU instructions the tracer executes on the tracee's behalf.
//! Every `unsafe` block of the crate lives in this module.

use nix::errno::Errno;
use nix::sys::ptrace::{self, Options};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
pub use nix::unistd::Pid;
use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// General-purpose registers of a stopped tracee (x86-64 `user_regs_struct`).
pub type Regs = libc::user_regs_struct;

/// Ptrace options set on every tracee.
pub fn trace_options() -> Options {
    Options::PTRACE_O_TRACESYSGOOD
        | Options::PTRACE_O_TRACEFORK
        | Options::PTRACE_O_TRACEVFORK
        | Options::PTRACE_O_TRACECLONE
        | Options::PTRACE_O_TRACEEXEC
        | Options::PTRACE_O_TRACEEXIT
        | Options::PTRACE_O_TRACESECCOMP
        | Options::PTRACE_O_EXITKILL
}

fn sig(s: i32) -> Option<Signal> {
    if s == 0 {
        None
    } else {
        Signal::try_from(s).ok()
    }
}

/// Resumes until the next ptrace stop (seccomp stops included), delivering `signo` (0: none).
pub fn cont(pid: Pid, signo: i32) -> nix::Result<()> {
    ptrace::cont(pid, sig(signo))
}

/// Resumes until the next syscall entry/exit stop.
pub fn syscall(pid: Pid, signo: i32) -> nix::Result<()> {
    ptrace::syscall(pid, sig(signo))
}

/// Executes one instruction.
pub fn step(pid: Pid, signo: i32) -> nix::Result<()> {
    ptrace::step(pid, sig(signo))
}

/// Stops a running tracee (PTRACE_INTERRUPT; reported as PTRACE_EVENT_STOP).
pub fn interrupt(pid: Pid) -> nix::Result<()> {
    ptrace::interrupt(pid)
}

/// Kills a task with SIGKILL.
pub fn kill(pid: Pid) {
    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
}

/// Sends `signo` to task `tid` of process `tgid`.
pub fn tgkill(tgid: Pid, tid: Pid, signo: i32) -> nix::Result<()> {
    // SAFETY: a plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, tgid.as_raw(), tid.as_raw(), signo) };
    Errno::result(r).map(drop)
}

/// Registers of a stopped tracee.
pub fn getregs(pid: Pid) -> nix::Result<Regs> {
    ptrace::getregs(pid)
}

/// Floating-point and SSE registers of a stopped tracee.
pub fn getfpregs(pid: Pid) -> nix::Result<libc::user_fpregs_struct> {
    // SAFETY: zeroed plain-data struct filled by PTRACE_GETFPREGS.
    let mut f: libc::user_fpregs_struct = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::ptrace(libc::PTRACE_GETFPREGS, pid.as_raw(), 0, &mut f as *mut libc::user_fpregs_struct) };
    Errno::result(r).map(|_| f)
}

/// Sets the registers of a stopped tracee.
pub fn setregs(pid: Pid, regs: &Regs) -> nix::Result<()> {
    ptrace::setregs(pid, *regs)
}

/// The ptrace event message (new pid for fork events, exit status for exit events...).
pub fn getevent(pid: Pid) -> nix::Result<u64> {
    ptrace::getevent(pid).map(|v| v as u64)
}

/// The siginfo of the signal a tracee is stopped for, as its 128 raw bytes.
pub fn getsiginfo(pid: Pid) -> nix::Result<[u8; 128]> {
    let si = ptrace::getsiginfo(pid)?;
    let mut out = [0u8; 128];
    // SAFETY: siginfo_t is a 128-byte plain-data struct.
    let bytes = unsafe { std::slice::from_raw_parts(&si as *const libc::siginfo_t as *const u8, std::mem::size_of::<libc::siginfo_t>()) };
    out[..bytes.len().min(128)].copy_from_slice(&bytes[..bytes.len().min(128)]);
    Ok(out)
}

/// Sets the siginfo of the signal about to be delivered.
pub fn setsiginfo(pid: Pid, raw: &[u8]) -> nix::Result<()> {
    let mut buf = [0u8; 128];
    buf[..raw.len().min(128)].copy_from_slice(&raw[..raw.len().min(128)]);
    // SAFETY: siginfo_t is plain data of 128 bytes; any bit pattern is a valid value for the kernel to check.
    let si: libc::siginfo_t = unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const libc::siginfo_t) };
    ptrace::setsiginfo(pid, &si)
}

/// The blocked-signal mask of a stopped tracee (PTRACE_GETSIGMASK).
pub fn getsigmask(pid: Pid) -> nix::Result<u64> {
    let mut mask = 0u64;
    // SAFETY: the kernel writes 8 bytes (the size passed) into `mask`.
    let r = unsafe { libc::ptrace(libc::PTRACE_GETSIGMASK, pid.as_raw(), 8usize, &mut mask as *mut u64) };
    nix::errno::Errno::result(r).map(|_| mask)
}

/// Sets the blocked-signal mask of a stopped tracee (PTRACE_SETSIGMASK).
pub fn setsigmask(pid: Pid, mask: u64) -> nix::Result<()> {
    // SAFETY: the kernel reads 8 bytes (the size passed) from `mask`.
    let r = unsafe { libc::ptrace(libc::PTRACE_SETSIGMASK, pid.as_raw(), 8usize, &mask as *const u64) };
    nix::errno::Errno::result(r).map(|_| ())
}

/// What PTRACE_GET_SYSCALL_INFO says about a stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum SyscallInfo {
    /// Not a syscall stop.
    None,
    /// Syscall-entry stop.
    Entry { nr: u64, args: [u64; 6] },
    /// Syscall-exit stop: the result, and where the task will resume.
    Exit { ret: i64, ip: u64, sp: u64 },
    /// Seccomp stop (before the syscall runs).
    Seccomp { nr: u64, args: [u64; 6] },
}

/// PTRACE_GET_SYSCALL_INFO.
pub fn syscall_info(pid: Pid) -> nix::Result<SyscallInfo> {
    // nix's wrapper passes a zero size (the kernel then copies nothing): call it directly.
    // SAFETY: zero-initialised plain-data struct, its size passed along.
    let mut i: libc::ptrace_syscall_info = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GET_SYSCALL_INFO,
            pid.as_raw(),
            std::mem::size_of::<libc::ptrace_syscall_info>(),
            &mut i as *mut libc::ptrace_syscall_info,
        )
    };
    Errno::result(r)?;
    // SAFETY: the union member read is the one `op` says the kernel filled in.
    Ok(unsafe {
        match i.op {
            libc::PTRACE_SYSCALL_INFO_ENTRY => SyscallInfo::Entry { nr: i.u.entry.nr, args: i.u.entry.args },
            libc::PTRACE_SYSCALL_INFO_EXIT => SyscallInfo::Exit { ret: i.u.exit.sval, ip: i.instruction_pointer, sp: i.stack_pointer },
            libc::PTRACE_SYSCALL_INFO_SECCOMP => SyscallInfo::Seccomp { nr: i.u.seccomp.nr, args: i.u.seccomp.args },
            _ => SyscallInfo::None,
        }
    })
}

/// Offset of `u_debugreg[0]` in `struct user` on x86-64.
const DEBUGREG_OFFSET: usize = 848;

/// Reads debug register `n` (0..=7).
pub fn get_debugreg(pid: Pid, n: usize) -> nix::Result<u64> {
    ptrace::read_user(pid, (DEBUGREG_OFFSET + 8 * n) as ptrace::AddressType).map(|v| v as u64)
}

/// Writes debug register `n` (0..=7).
pub fn set_debugreg(pid: Pid, n: usize, value: u64) -> nix::Result<()> {
    // POKEUSER on the debug-register area; the kernel validates the value.
    ptrace::write_user(pid, (DEBUGREG_OFFSET + 8 * n) as ptrace::AddressType, value as libc::c_long)
}

/// Waits for a state change of `pid` (or any child with `None`), all
/// clone kinds included. With `nohang`, `Ok(None)` when nothing is ready.
pub fn wait(pid: Option<Pid>, nohang: bool) -> nix::Result<Option<WaitStatus>> {
    // __WNOTHREAD: only this thread's tracees (several tracers may share a process, as tests do).
    let mut f = WaitPidFlag::__WALL | WaitPidFlag::__WNOTHREAD;
    if nohang {
        f |= WaitPidFlag::WNOHANG;
    }
    match waitpid(pid, Some(f))? {
        WaitStatus::StillAlive => Ok(None),
        s => Ok(Some(s)),
    }
}

/// Access to a process's memory through `/proc/PID/mem` (reads and writes
/// work on read-only mappings too, as a debugger's do).
pub struct Mem {
    file: File,
}

impl Mem {
    /// Opens the memory of process (or thread) `pid`. Reopen after an exec.
    pub fn open(pid: Pid) -> std::io::Result<Mem> {
        Ok(Mem { file: std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/{pid}/mem"))? })
    }
    /// Reads `len` bytes at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, addr)?;
        Ok(buf)
    }
    /// Reads as many bytes as are readable at `addr`, up to `len`.
    pub fn read_partial(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match self.file.read_at(&mut buf[got..], addr + got as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        buf.truncate(got);
        buf
    }
    /// Writes `data` at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(data, addr)
    }
    /// Reads a NUL-terminated string (at most `max` bytes).
    pub fn read_cstr(&self, addr: u64, max: usize) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = addr;
        while out.len() < max {
            let chunk = self.read_partial(at, 256.min(max - out.len()));
            if chunk.is_empty() {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("unreadable string at {addr:#x}")));
            }
            if let Some(i) = chunk.iter().position(|b| *b == 0) {
                out.extend_from_slice(&chunk[..i]);
                return Ok(out);
            }
            at += chunk.len() as u64;
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
    /// Reads a u64.
    pub fn read_u64(&self, addr: u64) -> std::io::Result<u64> {
        let b = self.read(addr, 8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap()))
    }
}

/// How to start the tracee.
pub struct SpawnSpec {
    /// Executable path as given to execve.
    pub path: CString,
    /// Argument vector.
    pub argv: Vec<CString>,
    /// Environment.
    pub env: Vec<CString>,
    /// Working directory to change to first (inside `chroot` when set).
    pub cwd: Option<CString>,
    /// Directory to chroot into (replay).
    pub chroot: Option<CString>,
    /// RLIMIT_STACK to set (it shapes the address space).
    pub stack_limit: Option<(u64, u64)>,
    /// Seccomp filter to install right before exec.
    pub seccomp: Vec<libc::sock_filter>,
    /// Replace stdin with /dev/null (replay: the program reads nothing real).
    pub null_stdio: bool,
}

/// Forks and execs the tracee under ptrace, with address-space
/// randomisation off, rdtsc trapping (PR_SET_TSC) and the seccomp filter.
/// Returns once the tracee is seized and about to run its execve.
pub fn spawn(spec: &SpawnSpec) -> std::io::Result<Pid> {
    let argv: Vec<*const libc::c_char> = spec.argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp: Vec<*const libc::c_char> = spec.env.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let devnull = c"/dev/null";
    let prog = libc::sock_fprog { len: spec.seccomp.len() as u16, filter: spec.seccomp.as_ptr() as *mut libc::sock_filter };
    let is_root = // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() } == 0;
    // SAFETY: between fork and exec the child only makes raw syscalls on data
    // prepared before the fork (no allocation, no locks), then execs or exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // Child.
        unsafe {
            let fail = |code: i32| -> ! { libc::_exit(code) };
            // The tracer blocks SIGCHLD for its signalfd: the program must not inherit that.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if spec.null_stdio {
                let fd = libc::open(devnull.as_ptr(), libc::O_RDONLY);
                if fd >= 0 {
                    libc::dup2(fd, 0);
                    libc::close(fd);
                }
            }
            if let Some(root) = &spec.chroot {
                if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    fail(120);
                }
            }
            if let Some(cwd) = &spec.cwd {
                if libc::chdir(cwd.as_ptr()) != 0 {
                    fail(121);
                }
            }
            if let Some((cur, max)) = spec.stack_limit {
                let r = libc::rlimit { rlim_cur: cur, rlim_max: max };
                libc::setrlimit(libc::RLIMIT_STACK, &r);
            }
            if libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong) < 0 {
                fail(122);
            }
            if libc::prctl(libc::PR_SET_TSC, libc::PR_TSC_SIGSEGV, 0, 0, 0) != 0 {
                fail(123);
            }
            libc::raise(libc::SIGSTOP);
            if !spec.seccomp.is_empty() {
                if !is_root && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    fail(124);
                }
                if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog as *const libc::sock_fprog) != 0 {
                    fail(125);
                }
            }
            libc::execve(spec.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            fail(127);
        }
    }
    let pid = Pid::from_raw(pid);
    // Wait for the child's SIGSTOP, seize it, let it go on to its execve.
    loop {
        match waitpid(pid, Some(WaitPidFlag::WSTOPPED)).map_err(std::io::Error::from)? {
            WaitStatus::Stopped(_, Signal::SIGSTOP) => break,
            WaitStatus::Exited(_, code) => {
                return Err(std::io::Error::other(format!("tracee setup failed (exit code {code}: {})", setup_failure(code))))
            }
            _ => {}
        }
    }
    ptrace::seize(pid, trace_options()).map_err(std::io::Error::from)?;
    nix::sys::signal::kill(pid, Signal::SIGCONT).map_err(std::io::Error::from)?;
    Ok(pid)
}

fn setup_failure(code: i32) -> &'static str {
    match code {
        120 => "chroot failed",
        121 => "chdir failed",
        122 => "personality(ADDR_NO_RANDOMIZE) failed",
        123 => "prctl(PR_SET_TSC) failed",
        124 => "prctl(PR_SET_NO_NEW_PRIVS) failed",
        125 => "installing the seccomp filter failed",
        127 => "execve failed",
        _ => "unknown",
    }
}

/// Executes `cpuid` for the tracee's request.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    // SAFETY: cpuid is available on every x86-64 CPU.
    let r = std::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Reads the time-stamp counter (and, for rdtscp, the processor id).
pub fn rdtsc(with_aux: bool) -> (u64, Option<u32>) {
    if with_aux {
        let mut aux = 0u32;
        // SAFETY: rdtscp exists where the tracee could execute it.
        let t = unsafe { std::arch::x86_64::__rdtscp(&mut aux) };
        (t, Some(aux))
    } else {
        // SAFETY: rdtsc is available on every x86-64 CPU.
        (unsafe { std::arch::x86_64::_rdtsc() }, None)
    }
}

/// Builds the seccomp filter program: `allowed` syscalls run without a stop
/// (each with optional (arg, mask, value) conditions); all others stop the
/// tracee with SECCOMP_RET_TRACE.
pub fn seccomp_filter(allowed: &[(i64, Option<(u8, u64, u64)>)]) -> Vec<libc::sock_filter> {
    use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule};
    let mut rules = std::collections::BTreeMap::new();
    for (nr, cond) in allowed {
        let r = match cond {
            None => vec![],
            Some((arg, mask, value)) => {
                vec![SeccompRule::new(vec![
                    SeccompCondition::new(*arg, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(*mask), *value).expect("valid condition")
                ])
                .expect("valid rule")]
            }
        };
        rules.insert(*nr, r);
    }
    let f =
        SeccompFilter::new(rules, SeccompAction::Trace(0), SeccompAction::Allow, seccompiler::TargetArch::x86_64).expect("valid filter");
    let prog: seccompiler::BpfProgram = f.try_into().expect("filter compiles");
    prog.into_iter().map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect()
}

/// Wakes the tracer when a child changes state, with a timeout: a signalfd
/// for SIGCHLD (blocked for normal delivery in the calling thread).
pub struct ChildWaker {
    fd: std::os::fd::OwnedFd,
}

impl ChildWaker {
    /// Blocks SIGCHLD in this thread and opens the signalfd.
    pub fn new() -> std::io::Result<ChildWaker> {
        let mut set = nix::sys::signal::SigSet::empty();
        set.add(Signal::SIGCHLD);
        set.thread_block().map_err(std::io::Error::from)?;
        let sfd = nix::sys::signalfd::SignalFd::with_flags(
            &set,
            nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let fd: std::os::fd::OwnedFd = sfd.into();
        Ok(ChildWaker { fd })
    }
    /// Sleeps until a SIGCHLD arrives or `timeout_ms` passes; drains the fd.
    pub fn wait(&self, timeout_ms: i32) {
        use std::os::fd::AsFd;
        let mut pfd = [nix::poll::PollFd::new(self.fd.as_fd(), nix::poll::PollFlags::POLLIN)];
        let t = nix::poll::PollTimeout::try_from(timeout_ms.max(0)).unwrap_or(nix::poll::PollTimeout::MAX);
        let _ = nix::poll::poll(&mut pfd, t);
        let mut buf = [0u8; 128 * 8];
        while nix::unistd::read(&self.fd, &mut buf).map(|n| n > 0).unwrap_or(false) {}
    }
}

/// Pins the calling thread (and so the tracees it will fork) to one CPU,
/// the one it runs on now unless `cpu` says otherwise. Tracees run one at a
/// time anyway; on one CPU every ptrace stop and resume is a local context
/// switch instead of a cross-CPU wake-up, which in a VM is several times
/// cheaper. Returns the CPU.
pub fn pin_to_cpu(cpu: Option<usize>) -> nix::Result<usize> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    let allowed = sched_getaffinity(Pid::from_raw(0))?;
    // SAFETY: sched_getcpu has no preconditions.
    let here = unsafe { libc::sched_getcpu() };
    let cpu = match cpu {
        Some(c) => c,
        None if here >= 0 && allowed.is_set(here as usize).unwrap_or(false) => here as usize,
        None => (0..CpuSet::count()).find(|c| allowed.is_set(*c).unwrap_or(false)).unwrap_or(0),
    };
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set)?;
    Ok(cpu)
}

/// A pidfd for process `pid` (`pidfd_open`): a handle that outlives pid reuse.
pub fn pidfd_open(pid: Pid) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes plain integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// The tracee's descriptor `fd`, duplicated into the tracer (`pidfd_getfd`):
/// the same open file description, so a read or a seek here moves the
/// tracee's file offset too.
pub fn pidfd_getfd(pidfd: &std::os::fd::OwnedFd, fd: i32) -> std::io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: integer arguments; returns a new descriptor or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { File::from_raw_fd(r as i32) })
}

/// Copies `data` into process `pid` at `addr` as the kernel would for a
/// syscall's output (`process_vm_writev`: page protections apply, unlike
/// `/proc/PID/mem`). Returns the bytes written before the first fault.
pub fn vm_write(pid: Pid, addr: u64, data: &[u8]) -> std::io::Result<usize> {
    use nix::sys::uio::{process_vm_writev, RemoteIoVec};
    if data.is_empty() {
        return Ok(0);
    }
    process_vm_writev(pid, &[std::io::IoSlice::new(data)], &[RemoteIoVec { base: addr as usize, len: data.len() }])
        .map_err(std::io::Error::from)
}

/// Copies `len` bytes out of process `pid` at `addr` as the kernel would
/// for a syscall's input (`process_vm_readv`: an unreadable page fails).
pub fn vm_read(pid: Pid, addr: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use nix::sys::uio::{process_vm_readv, RemoteIoVec};
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    let n = process_vm_readv(pid, &mut [std::io::IoSliceMut::new(&mut buf)], &[RemoteIoVec { base: addr as usize, len }])
        .map_err(std::io::Error::from)?;
    if n != len {
        return Err(std::io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(buf)
}

/// The soft RLIMIT_FSIZE of process `pid` (`None`: unlimited).
pub fn file_size_limit(pid: Pid) -> std::io::Result<Option<u64>> {
    let mut old = libc::rlimit64 { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: reads a limit of another process into `old`; no new limit is set.
    let r = unsafe { libc::prlimit64(pid.as_raw(), libc::RLIMIT_FSIZE, std::ptr::null(), &mut old) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((old.rlim_cur != libc::RLIM64_INFINITY).then_some(old.rlim_cur))
}

/// True when a thread of process `tgid` other than `tid` is not in a ptrace
/// or job control stop (running, sleeping, exiting or a zombie): one that
/// may still end the thread group and so take `tid` with it. False when
/// `tid` is alone or every other thread waits on its tracer.
pub fn group_may_end_without_tracer(tgid: Pid, tid: Pid) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{tgid}/task")) else { return false };
    dir.flatten().filter(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) != Some(tid.as_raw())).any(|e| {
        // The state is the first field after the command name's closing parenthesis.
        std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|st| st.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
            .is_some_and(|state| state != 't' && state != 'T')
    })
}

/// Nanoseconds of `clock` read with the `clock_gettime` syscall, not the
/// vDSO: the vDSO reads the TSC, which faults in a thread that shares its
/// tracees' rdtsc trap (see [`share_tsc_trap`]).
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes one timespec into `ts`.
    unsafe { libc::syscall(libc::SYS_clock_gettime, clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Set by the SIGSEGV handler when it let this process's rdtsc run again.
static TSC_REENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The SIGSEGV disposition before [`share_tsc_trap`] installed its handler.
static PREV_SEGV: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

thread_local! {
    static TSC_SHARERS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

extern "C" fn on_segv(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo and ucontext to an SA_SIGINFO handler;
    // the faulting instruction pointer is in this process's own (readable) code.
    unsafe {
        let uc = ctx as *mut libc::ucontext_t;
        let rip = (*uc).uc_mcontext.gregs[libc::REG_RIP as usize] as *const u8;
        let tsc_insn = *rip == 0x0f && (*rip.add(1) == 0x31 || (*rip.add(1) == 0x01 && *rip.add(2) == 0xf9));
        if (*info).si_code == 0x80 /* SI_KERNEL */ && tsc_insn {
            // Our own rdtsc (the vDSO clock, a trapped rdtsc served): let it run.
            libc::prctl(libc::PR_SET_TSC, libc::PR_TSC_ENABLE, 0, 0, 0);
            TSC_REENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        // Not ours: whoever handled SIGSEGV before (Rust's stack-overflow guard), or the default.
        let prev = PREV_SEGV.get().map(|p| *p as *const libc::sigaction);
        match prev {
            Some(p) if (*p).sa_flags & libc::SA_SIGINFO != 0 && (*p).sa_sigaction > libc::SIG_IGN => {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = std::mem::transmute((*p).sa_sigaction);
                f(sig, info, ctx)
            }
            Some(p) if (*p).sa_sigaction > libc::SIG_IGN => {
                let f: extern "C" fn(libc::c_int) = std::mem::transmute((*p).sa_sigaction);
                f(sig)
            }
            _ => {
                // Default action: the instruction faults again and the process dies as it should.
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGSEGV, &dfl, std::ptr::null_mut());
            }
        }
    }
}

/// While alive, the calling thread traps `rdtsc` like its tracees do.
///
/// `PR_SET_TSC` is per thread, and every context switch between a thread
/// that traps rdtsc and one that does not rewrites CR4 — in a VM a trap to
/// the hypervisor, which doubled the cost of every ptrace stop on these
/// machines. A tracer that traps rdtsc too switches to and from its tracees
/// without it. Its own rdtsc (the vDSO's clocks, a trapped rdtsc it serves)
/// then faults once: a SIGSEGV handler lets it run and
/// [`rearm_tsc_trap`] traps again at the next stop. Clock reads on the hot
/// path use [`clock_ns`] instead.
pub struct SharedTscTrap(std::marker::PhantomData<*const ()>);

/// See [`SharedTscTrap`]. `None` if the kernel refused (the thread then just
/// pays the switches).
pub fn share_tsc_trap() -> Option<SharedTscTrap> {
    PREV_SEGV.get_or_init(|| {
        // SAFETY: installs a handler that only reads its own context; the old
        // disposition is kept (leaked, for the life of the process) to chain to.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_segv as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut sa.sa_mask);
            let old: &'static mut libc::sigaction = Box::leak(Box::new(std::mem::zeroed()));
            libc::sigaction(libc::SIGSEGV, &sa, old);
            old as *const libc::sigaction as usize
        }
    });
    // SAFETY: plain prctl on the calling thread.
    if unsafe { libc::prctl(libc::PR_SET_TSC, libc::PR_TSC_SIGSEGV, 0, 0, 0) } != 0 {
        return None;
    }
    TSC_SHARERS.with(|n| n.set(n.get() + 1));
    Some(SharedTscTrap(std::marker::PhantomData))
}

/// Traps rdtsc again in this thread if the SIGSEGV handler let one run.
pub fn rearm_tsc_trap() {
    if TSC_SHARERS.with(|n| n.get()) > 0 && TSC_REENABLED.swap(false, std::sync::atomic::Ordering::Relaxed) {
        // SAFETY: plain prctl on the calling thread.
        unsafe { libc::prctl(libc::PR_SET_TSC, libc::PR_TSC_SIGSEGV, 0, 0, 0) };
    }
}

impl Drop for SharedTscTrap {
    fn drop(&mut self) {
        let left = TSC_SHARERS.with(|n| {
            n.set(n.get().saturating_sub(1));
            n.get()
        });
        if left == 0 {
            // SAFETY: plain prctl on the calling thread.
            unsafe { libc::prctl(libc::PR_SET_TSC, libc::PR_TSC_ENABLE, 0, 0, 0) };
        }
    }
}
