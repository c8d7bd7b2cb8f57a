//! Host I/O (`vFile:`): the debugger reads the program's files through the
//! server, from the replay's private root, which holds the recorded copies
//! of the executable and every library it mapped. With gdb's default
//! sysroot (`target:`), symbols then match the recording even on another
//! machine. `/proc/PID/...` of the debugged process is answered from the
//! process that replays it (paths in `maps` shown as recorded). Files are
//! read-only: opening for writing is refused.

use crate::ReplayTarget;
use gdbstub::target::ext::host_io::{
    FsKind, HostIo, HostIoClose, HostIoCloseOps, HostIoErrno, HostIoError, HostIoFstat, HostIoFstatOps, HostIoOpen, HostIoOpenFlags,
    HostIoOpenMode, HostIoOpenOps, HostIoPread, HostIoPreadOps, HostIoReadlink, HostIoReadlinkOps, HostIoResult, HostIoSetfs,
    HostIoSetfsOps, HostIoStat,
};
use std::path::PathBuf;

fn errno<E>(e: HostIoErrno) -> HostIoError<E> {
    HostIoError::Errno(e)
}

impl ReplayTarget {
    /// The bytes the debugger sees for `path` (see the module documentation).
    fn host_file(&self, path: &str) -> Option<Vec<u8>> {
        let root = self.s.replayer().sysroot().to_path_buf();
        if let Some(rest) = path.strip_prefix("/proc/") {
            let (pid, tail) = rest.split_once('/')?;
            let pid: u32 = pid.parse().ok()?;
            if pid != self.s.pid() {
                return None;
            }
            // /proc/PID/task/TID/... of a thread of the debugged process.
            let (tid, tail) = match tail.strip_prefix("task/").and_then(|t| t.split_once('/')) {
                Some((t, rest)) => (t.parse::<u32>().ok()?, rest),
                None => (self.s.threads().first().copied()?, tail),
            };
            let real = self.s.replayer().real_pid(tid)?;
            let bytes = std::fs::read(format!("/proc/{real}/{tail}")).ok()?;
            let text = String::from_utf8_lossy(&bytes).replace(&root.display().to_string(), "");
            return Some(text.into_bytes());
        }
        let inside = root.join(path.trim_start_matches('/'));
        if let Ok(b) = std::fs::read(&inside) {
            return Some(b);
        }
        // Not in the recording's file store (not mapped by the program):
        // the machine's own copy, read-only.
        let p = PathBuf::from(path);
        if p.is_file() {
            return std::fs::read(p).ok();
        }
        None
    }
}

impl HostIo for ReplayTarget {
    fn support_open(&mut self) -> Option<HostIoOpenOps<'_, Self>> {
        Some(self)
    }
    fn support_close(&mut self) -> Option<HostIoCloseOps<'_, Self>> {
        Some(self)
    }
    fn support_pread(&mut self) -> Option<HostIoPreadOps<'_, Self>> {
        Some(self)
    }
    fn support_fstat(&mut self) -> Option<HostIoFstatOps<'_, Self>> {
        Some(self)
    }
    fn support_readlink(&mut self) -> Option<HostIoReadlinkOps<'_, Self>> {
        Some(self)
    }
    fn support_setfs(&mut self) -> Option<HostIoSetfsOps<'_, Self>> {
        Some(self)
    }
}

impl HostIoOpen for ReplayTarget {
    fn open(&mut self, filename: &[u8], flags: HostIoOpenFlags, _mode: HostIoOpenMode) -> HostIoResult<u32, Self> {
        if flags.bits() & 0x3 != 0 {
            return Err(errno(HostIoErrno::EACCES));
        }
        let name = String::from_utf8_lossy(filename).into_owned();
        let data = self.host_file(&name).ok_or(errno(HostIoErrno::ENOENT))?;
        let fd = (0..).find(|fd| !self.files.contains_key(fd)).unwrap();
        self.files.insert(fd, data);
        Ok(fd)
    }
}

impl HostIoClose for ReplayTarget {
    fn close(&mut self, fd: u32) -> HostIoResult<(), Self> {
        self.files.remove(&fd).map(|_| ()).ok_or(errno(HostIoErrno::EBADF))
    }
}

impl HostIoPread for ReplayTarget {
    fn pread(&mut self, fd: u32, count: usize, offset: u64, buf: &mut [u8]) -> HostIoResult<usize, Self> {
        let data = self.files.get(&fd).ok_or(errno(HostIoErrno::EBADF))?;
        let off = (offset as usize).min(data.len());
        let n = count.min(buf.len()).min(data.len() - off);
        buf[..n].copy_from_slice(&data[off..off + n]);
        Ok(n)
    }
}

impl HostIoFstat for ReplayTarget {
    fn fstat(&mut self, fd: u32) -> HostIoResult<HostIoStat, Self> {
        let data = self.files.get(&fd).ok_or(errno(HostIoErrno::EBADF))?;
        Ok(HostIoStat {
            st_dev: 0,
            st_ino: 0,
            st_mode: HostIoOpenMode::S_IFREG | HostIoOpenMode::S_IRUSR | HostIoOpenMode::S_IXUSR,
            st_nlink: 1,
            st_uid: 0,
            st_gid: 0,
            st_rdev: 0,
            st_size: data.len() as u64,
            st_blksize: 4096,
            st_blocks: (data.len() as u64).div_ceil(512),
            st_atime: 0,
            st_mtime: 0,
            st_ctime: 0,
        })
    }
}

impl HostIoReadlink for ReplayTarget {
    fn readlink(&mut self, filename: &[u8], buf: &mut [u8]) -> HostIoResult<usize, Self> {
        let name = String::from_utf8_lossy(filename);
        let exe = format!("/proc/{}/exe", self.s.pid());
        if name != exe {
            return Err(errno(HostIoErrno::ENOENT));
        }
        let p = self.exec_path().ok_or(errno(HostIoErrno::ENOENT))?;
        let root = self.s.replayer().sysroot().display().to_string();
        let shown = p.display().to_string();
        let shown = shown.strip_prefix(&root).unwrap_or(&shown).as_bytes().to_vec();
        if shown.len() > buf.len() {
            return Err(errno(HostIoErrno::ENAMETOOLONG));
        }
        buf[..shown.len()].copy_from_slice(&shown);
        Ok(shown.len())
    }
}

impl HostIoSetfs for ReplayTarget {
    fn setfs(&mut self, _fs: FsKind) -> HostIoResult<(), Self> {
        Ok(())
    }
}
