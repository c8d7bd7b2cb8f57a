//! Everything the tracer knows about individual system calls, in one place:
//! how replay treats each one ([`Class`]), whether it may block, which
//! memory the kernel writes (captured at record time, written back at
//! replay), which data a program shows on stdout/stderr, and which calls
//! run without stopping the tracee at all (the seccomp allow-list).

use syscalls::Sysno;

/// How replay treats a syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Touches the outside world: never executed at replay; the recorded
    /// result and memory writes are applied instead.
    Emulate,
    /// Shapes the process: executed at replay too; the result must equal
    /// the recorded one.
    ExecuteCheck,
    /// Executed at replay; the result (a pid, a tid) is replaced by the recorded one.
    ExecutePatch,
    /// A file mapping: replayed as an anonymous mapping at the recorded
    /// address, filled from the log's file store.
    MmapFile,
    /// Fails with ENOSYS, at record and replay alike (rseq: the kernel would
    /// write CPU numbers into user memory behind the tracer's back).
    Refuse,
    /// Cannot be recorded faithfully: recording stops with an error.
    Unsupported(&'static str),
}

/// Replay class of a syscall.
pub fn class(nr: u32, args: &[u64; 6]) -> Class {
    use Sysno::*;
    let Some(s) = Sysno::new(nr as usize) else {
        return Class::Unsupported("unknown syscall number");
    };
    match s {
        brk | mprotect | munmap | mremap | madvise | rt_sigaction | rt_sigprocmask | rt_sigreturn | sigaltstack | arch_prctl
        | set_robust_list | exit | exit_group | execve | execveat | seccomp | pkey_mprotect | pkey_alloc | pkey_free => Class::ExecuteCheck,
        clone | clone3 | fork | vfork | set_tid_address => Class::ExecutePatch,
        mmap => {
            if args[3] & libc::MAP_ANONYMOUS as u64 != 0 {
                Class::ExecuteCheck
            } else {
                Class::MmapFile
            }
        }
        rseq => Class::Refuse,
        prctl => match args[0] as i32 {
            libc::PR_SET_NO_NEW_PRIVS | libc::PR_SET_SECCOMP => Class::ExecuteCheck,
            libc::PR_SET_TSC => Class::Unsupported("prctl(PR_SET_TSC) by the program would undo rdtsc trapping"),
            _ => Class::Emulate,
        },
        ptrace => Class::Unsupported("ptrace inside a recording (nested tracing)"),
        io_uring_setup | io_uring_enter | io_uring_register => {
            Class::Unsupported("io_uring (the kernel writes completions into shared rings asynchronously)")
        }
        io_setup | io_submit | io_getevents | io_pgetevents | io_cancel | io_destroy => {
            Class::Unsupported("Linux AIO (completions arrive asynchronously)")
        }
        process_vm_readv | process_vm_writev => Class::Unsupported("cross-process memory access"),
        userfaultfd => Class::Unsupported("userfaultfd"),
        shmget | shmat | shmdt | shmctl => Class::Unsupported("System V shared memory (shared with processes outside the recording)"),
        perf_event_open => Class::Unsupported("perf_event_open"),
        modify_ldt => Class::Unsupported("modify_ldt"),
        vmsplice => Class::Unsupported("vmsplice"),
        _ => Class::Emulate,
    }
}

/// True for syscalls that return promptly: the recorder waits for them
/// instead of letting another thread run meanwhile.
pub fn quick(nr: u32, args: &[u64; 6]) -> bool {
    use Sysno::*;
    let Some(s) = Sysno::new(nr as usize) else {
        return false;
    };
    match s {
        fcntl => !matches!(args[1] as i32, libc::F_SETLKW | libc::F_OFD_SETLKW),
        getpid
        | gettid
        | getppid
        | getuid
        | geteuid
        | getgid
        | getegid
        | getpgrp
        | getpgid
        | getsid
        | getresuid
        | getresgid
        | getgroups
        | clock_gettime
        | clock_getres
        | gettimeofday
        | time
        | uname
        | sysinfo
        | times
        | getrusage
        | getrlimit
        | prlimit64
        | setrlimit
        | brk
        | mmap
        | munmap
        | mprotect
        | mremap
        | madvise
        | rt_sigaction
        | rt_sigprocmask
        | sigaltstack
        | arch_prctl
        | set_tid_address
        | set_robust_list
        | rseq
        | getrandom
        | fstat
        | stat
        | lstat
        | newfstatat
        | statx
        | statfs
        | fstatfs
        | lseek
        | getcwd
        | readlink
        | readlinkat
        | access
        | faccessat
        | faccessat2
        | dup
        | dup2
        | dup3
        | ioctl
        | getdents
        | getdents64
        | socket
        | bind
        | listen
        | setsockopt
        | getsockopt
        | getsockname
        | getpeername
        | pipe
        | pipe2
        | socketpair
        | eventfd
        | eventfd2
        | epoll_create
        | epoll_create1
        | epoll_ctl
        | timerfd_create
        | timerfd_settime
        | timerfd_gettime
        | prctl
        | sched_getaffinity
        | sched_setaffinity
        | getcpu
        | fadvise64
        | mkdir
        | mkdirat
        | unlink
        | unlinkat
        | rename
        | renameat
        | renameat2
        | chmod
        | fchmod
        | fchmodat
        | chown
        | fchown
        | lchown
        | fchownat
        | umask
        | chdir
        | fchdir
        | kill
        | tgkill
        | tkill
        | capget
        | getpriority
        | setpriority
        | sched_getparam
        | sched_getscheduler
        | sched_get_priority_max
        | sched_get_priority_min
        | personality
        | memfd_create
        | inotify_init1
        | inotify_add_watch
        | inotify_rm_watch
        | signalfd4
        | setitimer
        | getitimer
        | alarm
        | timer_create
        | timer_settime
        | timer_gettime
        | timer_delete
        | sched_yield
        | membarrier
        | mincore
        | get_robust_list
        | rt_sigpending
        | shutdown
        | setsid
        | setpgid
        | ftruncate
        | truncate
        | symlink
        | symlinkat
        | link
        | linkat
        | utimensat
        | close_range
        | exit
        | exit_group => true,
        close => true,
        _ => false,
    }
}

/// Syscalls that run without stopping the tracee, at record and replay
/// alike: their effect depends only on the process itself and replay
/// executes them too. `(nr, Some((arg, mask, value)))` allows only when
/// `args[arg] & mask == value`.
pub fn seccomp_allowed() -> Vec<(i64, Option<(u8, u64, u64)>)> {
    use Sysno::*;
    let mut v: Vec<(i64, Option<(u8, u64, u64)>)> =
        [brk, mprotect, munmap, mremap, madvise, rt_sigprocmask, rt_sigaction, rt_sigreturn, sigaltstack, set_robust_list]
            .iter()
            .map(|s| (s.id() as i64, None))
            .collect();
    // Anonymous mappings: placement is deterministic with randomisation off.
    v.push((mmap.id() as i64, Some((3, libc::MAP_ANONYMOUS as u64, libc::MAP_ANONYMOUS as u64))));
    v
}

/// A region of tracee memory.
pub type Region = (u64, usize);

/// Reads tracee memory for the output rules (indirect structures).
pub trait MemRead {
    /// Up to `len` readable bytes at `addr` (fewer, or none, if unmapped).
    fn read(&self, addr: u64, len: usize) -> Vec<u8>;
    /// A little-endian u64 (0 if unreadable).
    fn u64_at(&self, addr: u64) -> u64 {
        let b = self.read(addr, 8);
        if b.len() == 8 {
            u64::from_le_bytes(b.try_into().unwrap())
        } else {
            0
        }
    }
    /// A little-endian u32 (0 if unreadable).
    fn u32_at(&self, addr: u64) -> u32 {
        let b = self.read(addr, 4);
        if b.len() == 4 {
            u32::from_le_bytes(b.try_into().unwrap())
        } else {
            0
        }
    }
}

impl MemRead for crate::os::Mem {
    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        self.read_partial(addr, len)
    }
}

/// Error: the recorder does not know which memory a call writes.
#[derive(Debug)]
pub struct UnknownOutputs(pub String);

fn iov_regions(m: &dyn MemRead, iov: u64, cnt: u64, mut total: u64, out: &mut Vec<Region>) {
    for i in 0..cnt.min(1024) {
        if total == 0 {
            break;
        }
        let base = m.u64_at(iov + 16 * i);
        let len = m.u64_at(iov + 16 * i + 8);
        let n = len.min(total);
        if n > 0 {
            out.push((base, n as usize));
        }
        total -= n;
    }
}

fn msghdr_regions(m: &dyn MemRead, hdr: u64, ret: u64, out: &mut Vec<Region>) {
    out.push((hdr, 56));
    let (name, namelen) = (m.u64_at(hdr), m.u32_at(hdr + 8));
    if name != 0 && namelen > 0 {
        out.push((name, namelen.min(128) as usize));
    }
    iov_regions(m, m.u64_at(hdr + 16), m.u64_at(hdr + 24), ret, out);
    let (ctl, ctllen) = (m.u64_at(hdr + 32), m.u64_at(hdr + 40));
    if ctl != 0 && ctllen > 0 {
        out.push((ctl, ctllen.min(64 << 10) as usize));
    }
}

fn fdset_len(nfds: u64) -> usize {
    (nfds.min(65536).div_ceil(64) * 8) as usize
}

/// Memory the kernel wrote during a completed syscall, captured at its exit.
/// Regions may be generous: bytes the kernel did not touch are captured as
/// they are and written back unchanged at replay. `m` reads the memory as
/// it is after the call.
pub fn outputs(nr: u32, a: &[u64; 6], ret: i64, m: &dyn MemRead) -> Result<Vec<Region>, UnknownOutputs> {
    use Sysno::*;
    let mut out = Vec::new();
    let Some(s) = Sysno::new(nr as usize) else {
        return Err(UnknownOutputs(format!("syscall {nr}")));
    };
    let ok = ret >= 0;
    let r = ret.max(0) as u64;
    let nz = |out: &mut Vec<Region>, addr: u64, len: usize| {
        if addr != 0 && len > 0 {
            out.push((addr, len));
        }
    };
    match s {
        read | pread64 => nz(&mut out, a[1], r as usize),
        readv | preadv | preadv2 if ok => iov_regions(m, a[1], a[2], r, &mut out),
        recvfrom => {
            nz(&mut out, a[1], r as usize);
            if ok && a[4] != 0 && a[5] != 0 {
                out.push((a[5], 4));
                nz(&mut out, a[4], m.u32_at(a[5]).min(128) as usize);
            }
        }
        recvmsg if ok => msghdr_regions(m, a[1], r, &mut out),
        recvmmsg if ok => {
            for i in 0..r.min(1024) {
                let h = a[1] + 64 * i;
                out.push((h + 56, 4));
                let len = m.u32_at(h + 56) as u64;
                msghdr_regions(m, h, len, &mut out);
            }
        }
        stat | fstat | lstat => nz(&mut out, a[1], 144),
        newfstatat => nz(&mut out, a[2], 144),
        statx => nz(&mut out, a[4], 256),
        statfs | fstatfs => nz(&mut out, a[1], 120),
        getdents | getdents64 => nz(&mut out, a[1], r as usize),
        readlink => nz(&mut out, a[1], r as usize),
        readlinkat => nz(&mut out, a[2], r as usize),
        getcwd => nz(&mut out, a[0], r as usize),
        clock_gettime | clock_getres => nz(&mut out, a[1], 16),
        gettimeofday => {
            nz(&mut out, a[0], 16);
            nz(&mut out, a[1], 8);
        }
        time => nz(&mut out, a[0], 8),
        getrandom => nz(&mut out, a[0], r as usize),
        uname => nz(&mut out, a[0], 390),
        sysinfo => nz(&mut out, a[0], 112),
        times => nz(&mut out, a[0], 32),
        getrusage => nz(&mut out, a[1], 144),
        getrlimit => nz(&mut out, a[1], 16),
        prlimit64 => nz(&mut out, a[3], 16),
        getitimer => nz(&mut out, a[1], 32),
        setitimer => nz(&mut out, a[2], 32),
        timer_create => nz(&mut out, a[2], 4),
        timer_settime => nz(&mut out, a[3], 32),
        timer_gettime => nz(&mut out, a[1], 32),
        timerfd_settime => nz(&mut out, a[3], 32),
        timerfd_gettime => nz(&mut out, a[1], 32),
        nanosleep => nz(&mut out, a[1], 16),
        clock_nanosleep => nz(&mut out, a[3], 16),
        wait4 => {
            nz(&mut out, a[1], 4);
            nz(&mut out, a[3], 144);
        }
        waitid => {
            nz(&mut out, a[2], 128);
            nz(&mut out, a[4], 144);
        }
        pipe | pipe2 => nz(&mut out, a[0], 8),
        socketpair => nz(&mut out, a[3], 8),
        accept | accept4 | getsockname | getpeername => {
            if a[2] != 0 {
                out.push((a[2], 4));
                nz(&mut out, a[1], m.u32_at(a[2]).min(128) as usize);
            }
        }
        getsockopt => {
            if a[4] != 0 {
                out.push((a[4], 4));
                nz(&mut out, a[3], m.u32_at(a[4]).min(4096) as usize);
            }
        }
        poll | ppoll => nz(&mut out, a[0], (a[1].min(1 << 20) * 8) as usize),
        select | pselect6 => {
            for p in [a[1], a[2], a[3]] {
                nz(&mut out, p, fdset_len(a[0]));
            }
            nz(&mut out, a[4], 16);
        }
        epoll_wait | epoll_pwait | epoll_pwait2 => nz(&mut out, a[1], r as usize * 12),
        ioctl => ioctl_outputs(a, &mut out)?,
        fcntl => {
            if matches!(a[1] as i32, libc::F_GETLK | libc::F_OFD_GETLK) {
                nz(&mut out, a[2], 32);
            }
        }
        sched_getaffinity => nz(&mut out, a[2], r as usize),
        sched_getparam => nz(&mut out, a[1], 4),
        sched_getattr => nz(&mut out, a[1], a[2].min(4096) as usize),
        capget => nz(&mut out, a[1], 24),
        getgroups => {
            if a[0] > 0 {
                nz(&mut out, a[1], r as usize * 4)
            }
        }
        getresuid | getresgid => {
            for p in [a[0], a[1], a[2]] {
                nz(&mut out, p, 4);
            }
        }
        sendfile => nz(&mut out, a[2], 8),
        copy_file_range | splice => {
            nz(&mut out, a[1], 8);
            nz(&mut out, a[3], 8);
        }
        getcpu => {
            nz(&mut out, a[0], 4);
            nz(&mut out, a[1], 4);
        }
        rt_sigpending => nz(&mut out, a[0], a[1].min(128) as usize),
        rt_sigtimedwait => nz(&mut out, a[1], 128),
        get_robust_list => {
            nz(&mut out, a[1], 8);
            nz(&mut out, a[2], 8);
        }
        mincore => nz(&mut out, a[2], a[1].div_ceil(4096).min(1 << 24) as usize),
        futex => {
            // Only PI and WAKE_OP operations change futex words themselves.
            let op = a[1] as i32 & 0x7f;
            if matches!(
                op,
                libc::FUTEX_LOCK_PI
                    | libc::FUTEX_LOCK_PI2
                    | libc::FUTEX_UNLOCK_PI
                    | libc::FUTEX_TRYLOCK_PI
                    | libc::FUTEX_WAIT_REQUEUE_PI
                    | libc::FUTEX_CMP_REQUEUE_PI
            ) {
                nz(&mut out, a[0], 4);
            }
            if matches!(op, libc::FUTEX_WAKE_OP | libc::FUTEX_CMP_REQUEUE_PI | libc::FUTEX_WAIT_REQUEUE_PI) {
                nz(&mut out, a[4], 4);
            }
        }
        prctl => match a[0] as i32 {
            libc::PR_GET_NAME => nz(&mut out, a[1], 16),
            libc::PR_GET_TSC | libc::PR_GET_PDEATHSIG | libc::PR_GET_TID_ADDRESS => nz(&mut out, a[1], 8),
            _ => {}
        },
        // Calls whose only output is the return value (or that write nothing).
        _ => {}
    }
    Ok(out)
}

fn ioctl_outputs(a: &[u64; 6], out: &mut Vec<Region>) -> Result<(), UnknownOutputs> {
    let req = a[1] as u32;
    let p = a[2];
    let len = match req {
        0x5401 /* TCGETS */ => 60,
        0x802c542a /* TCGETS2 */ => 44,
        0x5413 /* TIOCGWINSZ */ => 8,
        0x541B /* FIONREAD */ | 0x540F /* TIOCGPGRP */ | 0x5429 /* TIOCGSID */ | 0x80045430 /* TIOCGPTN */ => 4,
        // Requests that write nothing back.
        0x5402..=0x5404 /* TCSETS* */ | 0x5414 /* TIOCSWINSZ */ | 0x5410 /* TIOCSPGRP */ | 0x5421 /* FIONBIO */ | 0x5451 /* FIOCLEX */
        | 0x5450 /* FIONCLEX */ | 0x5452 /* FIOASYNC */ | 0x540B /* TCFLSH */ | 0x5409 /* TCSBRK */ | 0x540E /* TIOCSCTTY */ | 0x5422 /* TIOCNOTTY */ => 0,
        _ => {
            // The _IOC encoding: direction in bits 30-31 (2 = the kernel writes), size in bits 16-29.
            let dir = req >> 30;
            let size = (req >> 16) & 0x3fff;
            if dir & 2 != 0 && size > 0 {
                size as usize
            } else if dir == 1 || (dir == 0 && size == 0 && (req >> 8) & 0xff != 0x54) {
                // Write-only or argument-less encoded requests.
                0
            } else {
                return Err(UnknownOutputs(format!("ioctl request {req:#x}")));
            }
        }
    };
    if len > 0 && p != 0 {
        out.push((p, len));
    }
    Ok(())
}

/// For calls that write program output to a file descriptor: the regions
/// holding the bytes written, so replay can show stdout/stderr from the log.
pub fn written_data(nr: u32, a: &[u64; 6], ret: i64, m: &dyn MemRead) -> Option<(u64, Vec<Region>)> {
    use Sysno::*;
    if ret <= 0 {
        return None;
    }
    let s = Sysno::new(nr as usize)?;
    let mut out = Vec::new();
    match s {
        write | pwrite64 => out.push((a[1], ret as usize)),
        writev | pwritev | pwritev2 => iov_regions(m, a[1], a[2], ret as u64, &mut out),
        _ => return None,
    }
    Some((a[0], out))
}

/// Name of a syscall.
pub fn name(nr: u32) -> String {
    kpl::sys::syscall_name(nr)
}

/// The syscall number of `s`.
pub fn nr(s: Sysno) -> u32 {
    s.id() as u32
}

/// The signal mask the kernel had in place when it delivered a signal at
/// the exit of syscall `nr(args) = ret`, when that was not the program's
/// own mask: `rt_sigsuspend`, `ppoll`, `pselect6`, `epoll_pwait(2)`
/// interrupted (`-EINTR`, `-ERESTARTNOHAND`) run with the mask they were
/// given, and the kernel restores the program's mask only when the handler
/// returns. Served from the log at replay, those calls never swapped the
/// mask: the replay delivers with this one (read from the program's memory,
/// as the call would have) and puts the program's own into the signal frame.
pub fn mask_during(nr: u32, a: &[u64; 6], ret: i64, mem: &crate::os::Mem) -> Result<Option<u64>, String> {
    if !matches!(ret, -4 | -514) {
        return Ok(None);
    }
    let ptr = match nr as i64 {
        libc::SYS_rt_sigsuspend => a[0],
        libc::SYS_ppoll => a[3],
        libc::SYS_epoll_pwait | libc::SYS_epoll_pwait2 => a[4],
        // pselect6's sixth argument points to { const sigset_t *ss; size_t ss_len; }.
        libc::SYS_pselect6 if a[5] != 0 => mem.read_u64(a[5]).map_err(|e| format!("reading pselect6's mask argument: {e}"))?,
        _ => return Ok(None),
    };
    if ptr == 0 {
        return Ok(None);
    }
    mem.read_u64(ptr).map(Some).map_err(|e| format!("reading the signal mask syscall {nr} was given: {e}"))
}
