//! Reads of unchanged regular files, captured by reference.
//!
//! In replay-grade capture most bytes a program reads come from regular
//! files that nobody changes while it runs (its configuration, data files,
//! libraries read by hand). Copying them into the ring buffer costs the
//! program itself CPU for every byte. Instead, for a `read`/`pread64` of a
//! regular file that no one has open for writing, whose ctime is more than
//! a second old, on a filesystem whose files the recorder can open by handle,
//! the BPF program sends a [`FileRead`]: the inode, its generation and
//! ctime, the file offset, and the first and last 16 bytes the program got.
//! The recorder then reads the bytes from the file itself ([`Filler`]) and
//! keeps them only if the file is still that inode with that ctime (before
//! and after its own read) and the bytes begin and end as the program's did.
//! Anything else is a *miss*: the syscall's output is marked incomplete
//! (`FLAG_TRUNCATED`), counted and reported, so a replay that reaches it
//! stops there instead of serving wrong bytes.
//!
//! Why the conditions make the bytes the program's: a write changes the
//! ctime (and needs the file open for writing, or `truncate`, which also
//! changes it); the ctime must be over a second old so a change within the
//! same clock tick as an earlier one cannot go unseen; a `read` whose file
//! position moved by more than its own length (a descriptor shared with
//! another reader) is copied instead.
//!
//! Filesystems: ext2/3/4 (handles of type `FILEID_INO32_GEN`: inode and
//! generation). Others (tmpfs hashes an inode for handles only once a
//! handle was asked for; btrfs, xfs and overlayfs handles carry more) are
//! copied as before.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

/// Handle format of ext2/3/4 (`FILEID_INO32_GEN`: u32 inode, u32 generation).
pub const FMT_INO32_GEN: u32 = 1;

/// Bytes of the buffer's head and tail that travel with the reference.
pub const HEAD: usize = 16;

/// The longest read that goes by reference (`FILEREF_MAX` in `recorder.h`).
pub const MAX: usize = 64 << 20;

/// A read by reference, as the BPF program saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRead {
    /// Inode number.
    pub ino: u64,
    /// File offset of the first byte read.
    pub pos: u64,
    /// The inode's ctime at the read.
    pub ctime_sec: i64,
    /// Its nanoseconds.
    pub ctime_nsec: u32,
    /// The inode's generation.
    pub gen: u32,
    /// Kernel `dev_t` (major << 20 | minor) of the file's filesystem.
    pub dev: u32,
    /// Handle format ([`FMT_INO32_GEN`]).
    pub fmt: u32,
    /// The first [`HEAD`] bytes the program got.
    pub head: [u8; HEAD],
    /// The last [`HEAD`] bytes.
    pub tail: [u8; HEAD],
}

/// Why the bytes of a read by reference could not be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Miss {
    /// No mount of that filesystem to open handles on.
    NoMount,
    /// The handle did not open (the file was deleted, or the handle is stale).
    Open,
    /// The file is not the inode read, or its ctime moved (it changed).
    Changed,
    /// The file is shorter now than the read.
    Short,
    /// The bytes found do not begin or end as the program's did.
    Mismatch,
    /// Longer than [`MAX`] (the BPF program never sends such a read).
    TooLong,
}

impl Miss {
    /// A short name (metrics label).
    pub fn name(self) -> &'static str {
        match self {
            Miss::NoMount => "no_mount",
            Miss::Open => "open",
            Miss::Changed => "changed",
            Miss::Short => "short",
            Miss::Mismatch => "mismatch",
            Miss::TooLong => "too_long",
        }
    }

    /// A few words for reports.
    pub fn what(self) -> &'static str {
        match self {
            Miss::NoMount => "no mount of its filesystem",
            Miss::Open => "could not open it by handle (deleted?)",
            Miss::Changed => "it changed after the read",
            Miss::Short => "it is shorter than the read",
            Miss::Mismatch => "its bytes differ from those read",
            Miss::TooLong => "longer than a read by reference carries",
        }
    }
}

/// Kernel `dev_t` of a userspace one.
pub fn kernel_dev(dev: u64) -> u32 {
    ((libc::major(dev) as u32) << 20) | libc::minor(dev) as u32
}

/// The filesystems of this mount table whose files open by handle:
/// (kernel dev_t, handle format, a mount point). One mount point per device.
pub fn ref_mounts(mountinfo: &str) -> Vec<(u32, u32, String)> {
    let mut out: Vec<(u32, u32, String)> = Vec::new();
    for line in mountinfo.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let f: Vec<&str> = line.split(' ').collect();
        let Some(dash) = f.iter().position(|x| *x == "-") else { continue };
        if f.len() < 5 || dash + 1 >= f.len() {
            continue;
        }
        if !matches!(f[dash + 1], "ext4" | "ext3" | "ext2") {
            continue;
        }
        let Some((ma, mi)) = f[2].split_once(':') else { continue };
        let (Ok(ma), Ok(mi)) = (ma.parse::<u32>(), mi.parse::<u32>()) else { continue };
        let dev = (ma << 20) | mi;
        if out.iter().any(|(d, _, _)| *d == dev) {
            continue;
        }
        out.push((dev, FMT_INO32_GEN, unescape(f[4])));
    }
    out
}

/// Mount-table escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Open files kept at most (least recently opened closed first).
const OPEN_MAX: usize = 64;

/// Reads the bytes of reads by reference from the files themselves.
pub struct Filler {
    mounts: HashMap<u32, File>,
    open: HashMap<(u32, u64, u32), File>,
    order: std::collections::VecDeque<(u32, u64, u32)>,
    /// Reads filled.
    pub filled: u64,
    /// Bytes filled.
    pub bytes: u64,
    /// Misses, by reason.
    pub misses: HashMap<Miss, u64>,
}

impl Filler {
    /// A filler for the filesystems of `mounts` ([`ref_mounts`]); mount
    /// points that do not open are left out.
    pub fn new(mounts: &[(u32, u32, String)]) -> Filler {
        let mounts = mounts.iter().filter_map(|(dev, _, path)| Some((*dev, File::open(path).ok()?))).collect();
        Filler { mounts, open: HashMap::new(), order: Default::default(), filled: 0, bytes: 0, misses: HashMap::new() }
    }

    /// The devices it can fill from (for the BPF `ref_devs` map).
    pub fn devices(&self) -> Vec<u32> {
        self.mounts.keys().copied().collect()
    }

    /// All misses.
    pub fn missed(&self) -> u64 {
        self.misses.values().sum()
    }

    /// The `len` bytes of `r`, checked; a miss is counted.
    pub fn fill(&mut self, r: &FileRead, len: usize) -> Result<Vec<u8>, Miss> {
        let res = self.try_fill(r, len);
        match &res {
            Ok(b) => {
                self.filled += 1;
                self.bytes += b.len() as u64;
            }
            Err(m) => *self.misses.entry(*m).or_default() += 1,
        }
        res
    }

    fn try_fill(&mut self, r: &FileRead, len: usize) -> Result<Vec<u8>, Miss> {
        if len > MAX {
            return Err(Miss::TooLong);
        }
        let key = (r.dev, r.ino, r.gen);
        if !self.open.contains_key(&key) {
            let mount = self.mounts.get(&r.dev).ok_or(Miss::NoMount)?;
            let f = open_by_handle(mount, r).ok_or(Miss::Open)?;
            if self.order.len() >= OPEN_MAX {
                if let Some(old) = self.order.pop_front() {
                    self.open.remove(&old);
                }
            }
            self.order.push_back(key);
            self.open.insert(key, f);
        }
        let f = &self.open[&key];
        let same = |f: &File| -> Result<u64, Miss> {
            let m = f.metadata().map_err(|_| Miss::Changed)?;
            if m.ino() != r.ino || m.ctime() != r.ctime_sec || m.ctime_nsec() != r.ctime_nsec as i64 {
                return Err(Miss::Changed);
            }
            Ok(m.size())
        };
        if same(f)? < r.pos + len as u64 {
            return Err(Miss::Short);
        }
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, r.pos).map_err(|_| Miss::Short)?;
        same(f)?;
        let h = HEAD.min(len);
        if buf[..h] != r.head[..h] || buf[len - h..] != r.tail[HEAD - h..] {
            return Err(Miss::Mismatch);
        }
        Ok(buf)
    }
}

/// Opens the file `r` names on the filesystem of `mount`, read-only.
fn open_by_handle(mount: &File, r: &FileRead) -> Option<File> {
    if r.fmt != FMT_INO32_GEN || r.ino > u32::MAX as u64 {
        return None;
    }
    crate::sys::open_by_ino32_gen(mount, r.ino as u32, r.gen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_lines() {
        let t = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                 25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw\n\
                 40 27 254:0 /x /mnt/with\\040space rw shared:1 - ext4 /dev/vda rw\n\
                 41 27 8:17 / /data\\040disk rw shared:2 - ext3 /dev/sdb1 rw\n";
        let m = ref_mounts(t);
        assert_eq!(m, vec![((254 << 20), FMT_INO32_GEN, "/".to_string()), ((8 << 20) | 17, FMT_INO32_GEN, "/data disk".to_string())]);
    }
}
