//! Putting the files a recording needs (executables, interpreters, mapped
//! files) into the log's content-addressed file store, once per content.

use crate::os::Pid;
use crate::{elf, Error};
use kpl::event::{FileHash, FileRef};
use kpl::Writer;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_ns: i64,
}

/// Remembers which files are already stored (by device, inode, size and
/// modification time) so each is read and hashed once.
#[derive(Default)]
pub struct FileCapture {
    by_key: HashMap<Key, (FileHash, Vec<u8>, Option<String>)>,
    interp: HashMap<FileHash, Option<String>>,
}

impl FileCapture {
    /// Stores the file at `path` as the tracee `pid` sees it (its root),
    /// following symlinks. `Ok(None)` when there is no such regular file.
    pub fn capture_path(&mut self, w: &mut Writer, pid: Pid, path: &str) -> Result<Option<FileRef>, Error> {
        let real = format!("/proc/{pid}/root{path}");
        self.capture(w, &real, path)
    }

    /// Stores the file open as descriptor `fd` in `pid`. `Ok(None)` for
    /// descriptors that are not regular files or memfds (e.g. /dev/zero).
    pub fn capture_fd(&mut self, w: &mut Writer, pid: Pid, fd: i32) -> Result<Option<FileRef>, Error> {
        let link = format!("/proc/{pid}/fd/{fd}");
        let shown = std::fs::read_link(&link).map(|p| p.display().to_string()).unwrap_or_else(|_| link.clone());
        self.capture(w, &link, &shown)
    }

    fn capture(&mut self, w: &mut Writer, real: &str, shown: &str) -> Result<Option<FileRef>, Error> {
        let Ok(md) = std::fs::metadata(real) else {
            return Ok(None);
        };
        if !md.is_file() {
            return Ok(None);
        }
        let key = Key { dev: md.dev(), ino: md.ino(), size: md.size(), mtime: md.mtime(), mtime_ns: md.mtime_nsec() };
        if let Some((hash, build_id, _)) = self.by_key.get(&key) {
            return Ok(Some(FileRef { path: shown.to_owned(), hash: Some(*hash), size: key.size, build_id: build_id.clone() }));
        }
        let bytes = std::fs::read(real).map_err(|e| Error::Os(format!("reading {shown} for the file store: {e}")))?;
        let hash = w.store_file(&bytes)?;
        let build_id = if elf::is_elf(&bytes) { elf::build_id(&bytes) } else { Vec::new() };
        let interp = if elf::is_elf(&bytes) { elf::interp(&bytes) } else { elf::shebang(&bytes) };
        self.interp.insert(hash, interp.clone());
        self.by_key.insert(key, (hash, build_id.clone(), interp));
        Ok(Some(FileRef { path: shown.to_owned(), hash: Some(hash), size: bytes.len() as u64, build_id }))
    }

    /// The interpreter a stored executable names (`#!` line or PT_INTERP).
    pub fn interpreter_of(&self, f: &FileRef) -> Option<String> {
        f.hash.and_then(|h| self.interp.get(&h).cloned().flatten())
    }
}
