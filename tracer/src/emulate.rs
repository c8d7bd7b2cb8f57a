//! Syscalls the recorder performs itself, at the tracee's seccomp stop,
//! so that the tracee stops once per call instead of twice.
//!
//! A recorded syscall normally costs two ptrace stops (entry and exit), each
//! a round trip of context switches between the tracee and the tracer. For
//! calls whose effect the tracer can reproduce exactly on the tracee's
//! behalf, it does the work at the entry stop and skips the call in the
//! kernel (`orig_rax = -1`, the result in `rax`): reads and writes of local
//! regular files through the tracee's own open file description
//! (`pidfd_getfd`: the file offset moves for both), `lseek`, and the clock
//! reads the vDSO was patched to make (`clock_gettime` of system-wide clocks,
//! `gettimeofday`, `time`). Output goes into the tracee with
//! `process_vm_writev` and input comes out with `process_vm_readv`, so page
//! protections apply as they would for the kernel. The log is the same as
//! for a call the kernel ran: replay cannot tell them apart.
//!
//! What is never performed here, and is left to the kernel: anything that
//! may block (pipes, sockets, terminals, network and FUSE file systems),
//! buffers over 1 MiB, writes when the process has a file-size limit (the
//! kernel's SIGXFSZ must reach the program, not the recorder), processes
//! whose threads do not share one descriptor table, and every call whose
//! descriptor the recorder cannot duplicate. When an output buffer faults
//! half way, the file offset is put back and the kernel redoes the call.
//! Seen from outside, the one difference is who did the I/O: fanotify and
//! audit name the recorder's pid for those reads and writes.

use crate::os::{self, Pid};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};

/// Largest buffer a read or write is performed for here.
const MAX_BUF: u64 = 1 << 20;

/// File systems without a block device whose regular files never block:
/// tmpfs, ramfs, overlayfs, btrfs (anonymous device numbers).
const LOCAL_ANON_FS: [i64; 4] = [0x0102_1994, 0x8584_58f6, 0x794c_7630, 0x9123_683e];

/// Per-process state: a pidfd to duplicate descriptors through, and the
/// descriptors duplicated so far (`None`: not a file performed here).
struct ProcState {
    pidfd: OwnedFd,
    /// The process may have a file-size limit (writes stay with the kernel);
    /// `None`: to be asked again (the limits may have changed).
    fsize_limited: Option<bool>,
    files: HashMap<u64, Option<File>>,
}

/// Performs the calls it can for the recorder (see the module documentation).
#[derive(Default)]
pub struct Emulator {
    procs: HashMap<i32, Option<ProcState>>,
    /// Calls performed here so far.
    pub performed: u64,
}

/// Numbers of the calls handled here.
mod nr {
    pub const READ: u32 = libc::SYS_read as u32;
    pub const WRITE: u32 = libc::SYS_write as u32;
    pub const PREAD64: u32 = libc::SYS_pread64 as u32;
    pub const PWRITE64: u32 = libc::SYS_pwrite64 as u32;
    pub const LSEEK: u32 = libc::SYS_lseek as u32;
    pub const CLOCK_GETTIME: u32 = libc::SYS_clock_gettime as u32;
    pub const GETTIMEOFDAY: u32 = libc::SYS_gettimeofday as u32;
    pub const TIME: u32 = libc::SYS_time as u32;
}

fn errno(e: &std::io::Error) -> i64 {
    -(e.raw_os_error().unwrap_or(libc::EIO) as i64)
}

/// True when reads and writes of `f` cannot block: a regular file on a
/// block device or on one of [`LOCAL_ANON_FS`].
fn local_regular_file(f: &File) -> bool {
    let Ok(m) = f.metadata() else { return false };
    if !m.file_type().is_file() {
        return false;
    }
    if libc::major(m.dev()) != 0 {
        return true;
    }
    nix::sys::statfs::fstatfs(f).is_ok_and(|s| LOCAL_ANON_FS.contains(&(s.filesystem_type().0 as i64)))
}

impl Emulator {
    /// Forgets process `tgid` (it exited).
    pub fn exited(&mut self, tgid: Pid) {
        self.procs.remove(&tgid.as_raw());
    }

    /// Process `tgid` is about to change its limits (setrlimit, prlimit64):
    /// the file-size limit is asked again at its next write.
    pub fn limits_changed(&mut self, tgid: Pid) {
        if let Some(Some(p)) = self.procs.get_mut(&tgid.as_raw()) {
            p.fsize_limited = None;
        }
    }

    /// Leaves every call of process `tgid` to the kernel from now on (its
    /// threads no longer share one descriptor table).
    pub fn disable(&mut self, tgid: Pid) {
        self.procs.insert(tgid.as_raw(), None);
    }

    /// Syscall `nr(args)` of process `tgid` is about to run in the kernel:
    /// descriptors it may close or replace are forgotten first.
    pub fn before_kernel(&mut self, tgid: Pid, nr: u32, args: &[u64; 6]) {
        let Some(Some(p)) = self.procs.get_mut(&tgid.as_raw()) else { return };
        match nr as i64 {
            libc::SYS_close => {
                p.files.remove(&args[0]);
            }
            libc::SYS_dup2 | libc::SYS_dup3 => {
                p.files.remove(&args[1]);
            }
            libc::SYS_close_range | libc::SYS_execve | libc::SYS_execveat => p.files.clear(),
            _ => {}
        }
    }

    fn proc_state(&mut self, tgid: Pid) -> Option<&mut ProcState> {
        self.procs
            .entry(tgid.as_raw())
            .or_insert_with(|| {
                let pidfd = os::pidfd_open(tgid).ok()?;
                Some(ProcState { pidfd, fsize_limited: None, files: HashMap::new() })
            })
            .as_mut()
    }

    /// The file behind descriptor `fd` of `tgid`, if reads and writes of it
    /// can be performed here, and whether the process has a file-size limit.
    /// The duplicate is kept until the process closes or replaces `fd`.
    fn file(&mut self, tgid: Pid, fd: u64) -> Option<(&mut File, bool)> {
        let p = self.proc_state(tgid)?;
        let limited = *p.fsize_limited.get_or_insert_with(|| os::file_size_limit(tgid).map(|l| l.is_some()).unwrap_or(true));
        if !p.files.contains_key(&fd) {
            // Not open (EBADF and the like): the kernel says so itself.
            let f = os::pidfd_getfd(&p.pidfd, i32::try_from(fd).ok()?).ok()?;
            p.files.insert(fd, local_regular_file(&f).then_some(f));
        }
        p.files.get_mut(&fd)?.as_mut().map(|f| (f, limited))
    }

    /// Performs syscall `nr(args)` of task `tid` (process `tgid`) stopped at
    /// its seccomp stop, if it is one handled here: its memory effects are
    /// done, the result is returned and the caller skips the call in the
    /// kernel. `None`: the kernel must run it.
    pub fn perform(&mut self, tid: Pid, tgid: Pid, nr: u32, args: &[u64; 6]) -> Option<i64> {
        let r = match nr {
            nr::READ | nr::PREAD64 if args[2] <= MAX_BUF => {
                let (f, _) = self.file(tgid, args[0])?;
                let mut buf = vec![0u8; args[2] as usize];
                let got = if nr == nr::READ { f.read(&mut buf) } else { f.read_at(&mut buf, args[3]) };
                match got {
                    Err(e) => errno(&e),
                    Ok(n) => {
                        let put = os::vm_write(tid, args[1], &buf[..n]).unwrap_or(0);
                        if put < n {
                            // The buffer faults: put the offset back, the kernel redoes the call.
                            if nr == nr::READ {
                                f.seek(SeekFrom::Current(-(n as i64))).ok()?;
                            }
                            return None;
                        }
                        n as i64
                    }
                }
            }
            nr::WRITE | nr::PWRITE64 if args[2] <= MAX_BUF => {
                let (f, fsize_limited) = self.file(tgid, args[0])?;
                if fsize_limited {
                    return None;
                }
                let data = os::vm_read(tid, args[1], args[2] as usize).ok()?;
                let put = if nr == nr::WRITE { f.write(&data) } else { f.write_at(&data, args[3]) };
                match put {
                    Err(e) => errno(&e),
                    Ok(n) => n as i64,
                }
            }
            nr::LSEEK if args[2] <= 2 => {
                let (f, _) = self.file(tgid, args[0])?;
                let to = match args[2] {
                    0 => SeekFrom::Start(args[1]),
                    1 => SeekFrom::Current(args[1] as i64),
                    _ => SeekFrom::End(args[1] as i64),
                };
                // A negative position is EINVAL, as from the kernel.
                if let SeekFrom::Start(p) = to {
                    if (p as i64) < 0 {
                        return Some(-(libc::EINVAL as i64));
                    }
                }
                match f.seek(to) {
                    Err(e) => errno(&e),
                    Ok(p) => p as i64,
                }
            }
            nr::CLOCK_GETTIME => {
                // System-wide clocks only: CPU-time clocks are the caller's own.
                let id = match args[0] as i32 {
                    c @ (libc::CLOCK_REALTIME
                    | libc::CLOCK_MONOTONIC
                    | libc::CLOCK_MONOTONIC_RAW
                    | libc::CLOCK_REALTIME_COARSE
                    | libc::CLOCK_MONOTONIC_COARSE
                    | libc::CLOCK_BOOTTIME
                    | libc::CLOCK_TAI) => nix::time::ClockId::from_raw(c),
                    _ => return None,
                };
                let t = nix::time::clock_gettime(id).ok()?;
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&t.tv_sec().to_le_bytes());
                b[8..].copy_from_slice(&t.tv_nsec().to_le_bytes());
                put_or_efault(tid, args[1], &b, 0)?
            }
            nr::GETTIMEOFDAY if args[1] == 0 => {
                let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).ok()?;
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&t.tv_sec().to_le_bytes());
                b[8..].copy_from_slice(&(t.tv_nsec() / 1000).to_le_bytes());
                if args[0] == 0 {
                    0
                } else {
                    put_or_efault(tid, args[0], &b, 0)?
                }
            }
            nr::TIME => {
                let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).ok()?.tv_sec();
                if args[0] == 0 {
                    t
                } else {
                    put_or_efault(tid, args[0], &t.to_le_bytes(), t)?
                }
            }
            _ => return None,
        };
        self.performed += 1;
        Some(r)
    }
}

/// Writes `b` at `addr` of `tid` and returns `ok`, or `-EFAULT` when nothing
/// could be written; a partial write (a page boundary) goes to the kernel.
fn put_or_efault(tid: Pid, addr: u64, b: &[u8], ok: i64) -> Option<i64> {
    match os::vm_write(tid, addr, b) {
        Ok(n) if n == b.len() => Some(ok),
        Ok(0) | Err(_) => Some(-(libc::EFAULT as i64)),
        Ok(_) => None,
    }
}
