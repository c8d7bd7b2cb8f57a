//! Names of x86-64 system calls and errno values, and strace-like argument
//! decoding for display.

use syscalls::{Errno, Sysno};

/// Name of syscall `nr` (e.g. `write`), or `syscall_N` when unknown.
pub fn syscall_name(nr: u32) -> String {
    match Sysno::new(nr as usize) {
        Some(s) => s.name().to_owned(),
        None => format!("syscall_{nr}"),
    }
}

/// Number of a syscall by name.
pub fn syscall_nr(name: &str) -> Option<u32> {
    name.parse::<Sysno>().ok().map(|s| s.id() as u32)
}

/// Name of an errno value (e.g. `ENOENT`), when known.
pub fn errno_name(errno: i32) -> Option<&'static str> {
    match errno {
        512 => Some("ERESTARTSYS"),
        513 => Some("ERESTARTNOINTR"),
        514 => Some("ERESTARTNOHAND"),
        516 => Some("ERESTART_RESTARTBLOCK"),
        e => Errno::new(e).name(),
    }
}

/// A syscall return value as strace shows it: `-1 ENOENT` for errors,
/// the number otherwise.
pub fn format_ret(ret: i64) -> String {
    if (-4095..0).contains(&ret) {
        match errno_name(-ret as i32) {
            Some(n) => format!("-1 {n}"),
            None => format!("-1 errno {}", -ret),
        }
    } else if ret > 0xffff_ffff {
        format!("{ret:#x}")
    } else {
        ret.to_string()
    }
}

/// How each argument of a syscall is shown. One letter per argument:
/// `f` descriptor, `d` dirfd (AT_FDCWD), `n` number, `x` hex, `p` pointer,
/// `o` octal mode, `O` open flags, `P` mmap protection, `M` mmap flags,
/// `S` signal, `W` lseek whence, `C` clock id, `F` futex op, `A` address
/// family, `T` socket type.
fn arg_kinds(s: Sysno) -> Option<&'static str> {
    use Sysno::*;
    Some(match s {
        read | write | readv | writev => "fpn",
        pread64 | pwrite64 | preadv | pwritev => "fpnn",
        open => "pOo",
        openat => "dpOo",
        close | fsync | fdatasync | dup => "f",
        dup2 => "ff",
        dup3 => "ffx",
        lseek => "fnW",
        stat | lstat => "pp",
        fstat => "fp",
        newfstatat => "dppx",
        statx => "dpxxp",
        mmap => "pnPMfx",
        mprotect => "pnP",
        munmap => "pn",
        brk => "p",
        rt_sigaction => "Sppn",
        rt_sigprocmask => "nppn",
        ioctl => "fxp",
        access => "pn",
        faccessat | faccessat2 => "dpnx",
        pipe => "p",
        pipe2 => "px",
        select => "nppppp",
        poll => "pnn",
        ppoll => "pnppn",
        epoll_wait | epoll_pwait => "fpnn",
        epoll_ctl => "fnfp",
        epoll_create1 => "x",
        nanosleep => "pp",
        clock_nanosleep => "Cxpp",
        getpid | gettid | getppid | getuid | geteuid | getgid | getegid | sched_yield | fork | vfork => "",
        socket => "ATn",
        connect | bind => "fpn",
        accept => "fpp",
        accept4 => "fppx",
        sendto => "fpnxpn",
        recvfrom => "fpnxpp",
        sendmsg | recvmsg => "fpx",
        shutdown => "fn",
        listen => "fn",
        getsockname | getpeername => "fpp",
        setsockopt | getsockopt => "fnnpp",
        clone => "xppp",
        clone3 => "pn",
        execve => "ppp",
        exit | exit_group => "n",
        wait4 => "npxp",
        kill => "nS",
        tgkill => "nnS",
        tkill => "nS",
        uname | sysinfo | times => "p",
        fcntl => "fnx",
        getdents64 | getdents => "fpn",
        getcwd => "pn",
        chdir => "p",
        fchdir => "f",
        rename => "pp",
        renameat | renameat2 => "dpdp",
        mkdir => "po",
        mkdirat => "dpo",
        unlink => "p",
        unlinkat => "dpx",
        readlink => "ppn",
        readlinkat => "dppn",
        gettimeofday => "pp",
        getrlimit => "np",
        prlimit64 => "nnpp",
        getrusage => "np",
        clock_gettime | clock_getres => "Cp",
        time => "p",
        futex => "pFnppn",
        set_tid_address => "p",
        set_robust_list => "pn",
        arch_prctl => "xp",
        prctl => "nxxxx",
        getrandom => "pnx",
        rseq => "pnxx",
        eventfd2 => "nx",
        timerfd_create => "Cx",
        setitimer => "npp",
        getitimer => "np",
        alarm => "n",
        pause => "",
        madvise => "pnn",
        mremap => "pnnxp",
        sched_getaffinity | sched_setaffinity => "nnp",
        socketpair => "ATnp",
        sendfile => "ffpn",
        ftruncate => "fn",
        umask => "o",
        sigaltstack => "pp",
        rt_sigreturn => "",
        _ => return None,
    })
}

fn flags(v: u64, names: &[(u64, &str)], zero: &str) -> String {
    let mut out = Vec::new();
    let mut left = v;
    for (bit, name) in names {
        if *bit != 0 && v & bit == *bit {
            out.push((*name).to_owned());
            left &= !bit;
        }
    }
    if left != 0 || out.is_empty() {
        if out.is_empty() && left == 0 {
            return zero.to_owned();
        }
        out.push(format!("{left:#x}"));
    }
    out.join("|")
}

fn open_flags(v: u64) -> String {
    let acc = match v & 3 {
        0 => "O_RDONLY",
        1 => "O_WRONLY",
        2 => "O_RDWR",
        _ => "O_ACCMODE",
    };
    let rest = flags(
        v & !3,
        &[
            (0o100, "O_CREAT"),
            (0o200, "O_EXCL"),
            (0o400, "O_NOCTTY"),
            (0o1000, "O_TRUNC"),
            (0o2000, "O_APPEND"),
            (0o4000, "O_NONBLOCK"),
            (0o10000, "O_DSYNC"),
            (0o200000, "O_DIRECTORY"),
            (0o400000, "O_NOFOLLOW"),
            (0o2000000, "O_CLOEXEC"),
            (0o4010000, "O_SYNC"),
            (0o40000, "O_DIRECT"),
            (0o1000000, "O_NOATIME"),
            (0o10000000, "O_PATH"),
            (0o20200000, "O_TMPFILE"),
        ],
        "",
    );
    if rest.is_empty() {
        acc.to_owned()
    } else {
        format!("{acc}|{rest}")
    }
}

const SIGNALS: [&str; 32] = [
    "0",
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

fn arg(kind: u8, v: u64) -> String {
    let i = v as i64;
    match kind {
        b'f' => (v as i32).to_string(),
        b'd' if v as i32 == -100 => "AT_FDCWD".into(),
        b'd' => (v as i32).to_string(),
        b'n' => {
            if v > 0xffff_ffff && i < 0 && i > -4096 {
                i.to_string()
            } else if v > 0xffff_ffff {
                format!("{v:#x}")
            } else {
                v.to_string()
            }
        }
        b'o' => format!("0{v:o}"),
        b'O' => open_flags(v),
        b'P' => flags(v, &[(1, "PROT_READ"), (2, "PROT_WRITE"), (4, "PROT_EXEC")], "PROT_NONE"),
        b'M' => {
            let kind = match v & 0xf {
                1 => "MAP_SHARED",
                2 => "MAP_PRIVATE",
                3 => "MAP_SHARED_VALIDATE",
                _ => "",
            };
            let rest = flags(
                v & !0xf,
                &[
                    (0x10, "MAP_FIXED"),
                    (0x20, "MAP_ANONYMOUS"),
                    (0x100, "MAP_GROWSDOWN"),
                    (0x800, "MAP_DENYWRITE"),
                    (0x2000, "MAP_LOCKED"),
                    (0x4000, "MAP_NORESERVE"),
                    (0x8000, "MAP_POPULATE"),
                    (0x20000, "MAP_STACK"),
                    (0x100000, "MAP_FIXED_NOREPLACE"),
                ],
                "",
            );
            [kind, &rest].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join("|")
        }
        b'S' => SIGNALS.get(v as usize).map(|s| (*s).to_owned()).unwrap_or_else(|| format!("SIGRT{}", v as i64 - 32)),
        b'W' => ["SEEK_SET", "SEEK_CUR", "SEEK_END", "SEEK_DATA", "SEEK_HOLE"]
            .get(v as usize)
            .map(|s| (*s).to_owned())
            .unwrap_or_else(|| v.to_string()),
        b'C' => [
            "CLOCK_REALTIME",
            "CLOCK_MONOTONIC",
            "CLOCK_PROCESS_CPUTIME_ID",
            "CLOCK_THREAD_CPUTIME_ID",
            "CLOCK_MONOTONIC_RAW",
            "CLOCK_REALTIME_COARSE",
            "CLOCK_MONOTONIC_COARSE",
            "CLOCK_BOOTTIME",
        ]
        .get(v as usize)
        .map(|s| (*s).to_owned())
        .unwrap_or_else(|| v.to_string()),
        b'F' => {
            let op = [
                "FUTEX_WAIT",
                "FUTEX_WAKE",
                "FUTEX_FD",
                "FUTEX_REQUEUE",
                "FUTEX_CMP_REQUEUE",
                "FUTEX_WAKE_OP",
                "FUTEX_LOCK_PI",
                "FUTEX_UNLOCK_PI",
                "FUTEX_TRYLOCK_PI",
                "FUTEX_WAIT_BITSET",
                "FUTEX_WAKE_BITSET",
                "FUTEX_WAIT_REQUEUE_PI",
                "FUTEX_CMP_REQUEUE_PI",
                "FUTEX_LOCK_PI2",
            ]
            .get((v & 0x7f) as usize)
            .map(|s| (*s).to_owned())
            .unwrap_or_else(|| format!("{:#x}", v & 0x7f));
            let mut s = op;
            if v & 128 != 0 {
                s.push_str("_PRIVATE");
            }
            if v & 256 != 0 {
                s.push_str("|FUTEX_CLOCK_REALTIME");
            }
            s
        }
        b'A' => match v {
            1 => "AF_UNIX".into(),
            2 => "AF_INET".into(),
            10 => "AF_INET6".into(),
            16 => "AF_NETLINK".into(),
            _ => v.to_string(),
        },
        b'T' => {
            let base = match v & 0xf {
                1 => "SOCK_STREAM",
                2 => "SOCK_DGRAM",
                3 => "SOCK_RAW",
                5 => "SOCK_SEQPACKET",
                _ => "",
            };
            let rest = flags(v & !0xf, &[(0o4000, "SOCK_NONBLOCK"), (0o2000000, "SOCK_CLOEXEC")], "");
            [base, &rest].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join("|")
        }
        b'p' if v == 0 => "NULL".into(),
        _ => {
            if v < 4096 {
                v.to_string()
            } else {
                format!("{v:#x}")
            }
        }
    }
}

/// How many arguments syscall `nr` takes, when known (the remaining
/// registers are left over from earlier code and mean nothing).
pub fn arity(nr: u32) -> Option<usize> {
    Sysno::new(nr as usize).and_then(arg_kinds).map(str::len)
}

/// The arguments of a syscall as strace shows them (symbolic flags,
/// descriptors, signals, clocks; pointers in hex), as many as it takes.
pub fn format_args(nr: u32, args: &[u64; 6]) -> String {
    match Sysno::new(nr as usize).and_then(arg_kinds) {
        Some(kinds) => kinds.bytes().zip(args.iter()).map(|(k, v)| arg(k, *v)).collect::<Vec<_>>().join(", "),
        None => args.iter().map(|a| arg(b'x', *a)).collect::<Vec<_>>().join(", "),
    }
}
