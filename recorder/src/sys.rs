//! Every raw system call the recorder makes outside the ring-buffer mapping
//! (`ring.rs`), behind safe functions: clocks, thread priority, the command
//! it starts held before its `exec`, descriptors by handle. The rest of the
//! crate has no `unsafe` but `ring.rs`.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Clock `clk` in nanoseconds.
pub fn clock_ns(clk: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec pointer.
    unsafe { libc::clock_gettime(clk, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc exists on every x86-64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// RLIMIT_STACK: (current, maximum).
pub fn rlimit_stack() -> (u64, u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut lim) };
    (lim.rlim_cur, lim.rlim_max)
}

/// This thread's id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// True when running as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Sets the nice value of thread `tid`; false when the kernel refused.
pub fn set_nice(tid: i32, nice: i32) -> bool {
    // SAFETY: setpriority on one thread of this process.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) == 0 }
}

/// The nice value of thread `tid` (0 when it cannot be read).
pub fn nice_of(tid: i32) -> i32 {
    // SAFETY: getpriority has no preconditions; errno tells -1 from an error.
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        if n == -1 && *libc::__errno_location() != 0 {
            0
        } else {
            n
        }
    }
}

/// (inode, kernel dev_t) of what descriptor `fd` of this process is open on.
pub fn fd_ino_dev(fd: i32) -> Option<(u64, u32)> {
    // SAFETY: fstat into a zeroed stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    Some((st.st_ino, crate::fileref::kernel_dev(st.st_dev)))
}

/// Keeps freed memory in the heap: glibc would unmap large buffers and the
/// kernel zero them again for every new one.
pub fn keep_heap_memory() {
    // SAFETY: mallopt only tunes the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Opens read-only, on the filesystem of `mount`, the file of the ext2/3/4
/// handle (`FILEID_INO32_GEN`) inode `ino`, generation `gen` (without
/// touching its access time where allowed).
pub fn open_by_ino32_gen(mount: &File, ino: u32, gen: u32) -> Option<File> {
    /// `struct file_handle` with the 8 bytes of a FILEID_INO32_GEN handle.
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        ino: u32,
        gen: u32,
    }
    const FILEID_INO32_GEN: i32 = 1;
    let mut h = Handle { bytes: 8, kind: FILEID_INO32_GEN, ino, gen };
    let mut open = |flags| {
        // SAFETY: `h` is a valid struct file_handle whose f_handle holds
        // `bytes` bytes; the kernel only reads it.
        unsafe { libc::open_by_handle_at(mount.as_raw_fd(), (&mut h as *mut Handle).cast(), flags) }
    };
    let mut fd = open(libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOATIME);
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
        fd = open(libc::O_RDONLY | libc::O_CLOEXEC); // O_NOATIME needs the owner or CAP_FOWNER
    }
    // SAFETY: fd is a new descriptor owned by nobody else.
    (fd >= 0).then(|| File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// A child process forked to run a command, held before its `exec` until
/// [`HeldChild::release`].
pub struct HeldChild {
    pid: libc::pid_t,
    /// The write end of the pipe the child waits on (-1 once released).
    gate: i32,
}

impl HeldChild {
    /// Forks a child that, without address-space randomisation, waits for
    /// [`HeldChild::release`] and then executes `path` with `argv`.
    pub fn spawn(path: &CStr, argv: &[CString]) -> std::io::Result<HeldChild> {
        // Everything the child needs is made before fork: after it, only
        // async-signal-safe calls (close, personality, read, execv, _exit).
        let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        let mut fds = [0i32; 2];
        // SAFETY: a valid array of two ints.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (rfd, wfd) = (fds[0], fds[1]);
        // SAFETY: the child only calls async-signal-safe functions before execv.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: our two new descriptors.
            unsafe {
                libc::close(rfd);
                libc::close(wfd);
            }
            return Err(e);
        }
        if pid == 0 {
            // SAFETY: in the child; `path` and `ptrs` were made before the fork.
            unsafe {
                libc::close(wfd);
                // no address-space randomisation, as under `kprobe record`: the
                // replay restores the stack and mappings at their recorded addresses
                libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong);
                let mut b = 0u8;
                while libc::read(rfd, &mut b as *mut u8 as *mut libc::c_void, 1) < 0 {}
                libc::execv(path.as_ptr(), ptrs.as_ptr());
                libc::_exit(127);
            }
        }
        // SAFETY: our copy of the read end.
        unsafe { libc::close(rfd) };
        Ok(HeldChild { pid, gate: wfd })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Lets the child go on into its `exec`.
    pub fn release(&mut self) {
        if self.gate >= 0 {
            // SAFETY: our write end of the gate pipe, closed once.
            unsafe {
                libc::write(self.gate, b"g".as_ptr() as *const libc::c_void, 1);
                libc::close(self.gate);
            }
            self.gate = -1;
        }
    }

    /// Kills the child (before or after its exec).
    pub fn kill(&self) {
        // SAFETY: our own child.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }

    /// Waits for the child to exit (a child still held is let go first:
    /// kill it before, to stop it from running the command).
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        if self.gate >= 0 {
            // SAFETY: our write end, closed once.
            unsafe { libc::close(self.gate) };
            self.gate = -1;
        }
        let mut status = 0;
        loop {
            // SAFETY: our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                return Ok(std::process::ExitStatus::from_raw(status));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// The kernel's count of runs of the BPF program `prog` it skipped because
/// the program was already running on that CPU (`bpf_prog_info.recursion_misses`:
/// a softirq firing the same tracepoint inside a run of its program). Those
/// events never reach the program, so the recorder reports them as drops.
pub fn prog_recursion_misses(prog: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let attr = InfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: (&mut info as *mut aya_obj::generated::bpf_prog_info) as u64,
    };
    // SAFETY: the kernel writes at most info_len bytes into `info`, which lives across the call.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr as *const InfoAttr, std::mem::size_of::<InfoAttr>() as libc::c_uint)
    };
    (r == 0).then_some(info.recursion_misses)
}
