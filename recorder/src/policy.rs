//! Capture policy: what becomes of the bytes of chosen files and fds in
//! replay-grade capture (`probe.capture.redact` in the values file).
//!
//! A rule names a path glob (`*` matches any run of characters, `?` one) or
//! an fd number, and an action: `drop` keeps only the length, `hash` keeps
//! the length and the BLAKE3 of the bytes. The bytes are replaced by
//! [`kpl::Data::Redacted`] naming the rule, so a replay that reaches them
//! reports the redaction instead of diverging silently. Rules apply to the
//! output buffers of syscalls on a file descriptor (read, pread64, recvfrom,
//! getdents64, fstat); the fd's path is the one its `open`/`openat` call
//! named (captured in replay-grade mode), else `/proc/PID/fd/N`.

use crate::config::{RedactAction, RedactRule};
use anyhow::{Context, Result};
use kpl::event::{Data, Syscall};
use kpl::FileHash;

/// Compiled rules.
#[derive(Default)]
pub struct Policy {
    rules: Vec<(RedactRule, Option<glob::Pattern>, String)>,
}

/// Syscalls whose output buffer comes from the fd in their first argument:
/// read, pread64, readv, preadv, preadv2, recvfrom, getdents64, fstat,
/// fstatfs, fgetxattr, flistxattr.
const FD_OUTPUT: [u32; 11] = [0, 17, 19, 295, 327, 45, 217, 5, 138, 193, 196];

impl Policy {
    /// Compiles `rules`; a bad glob is an error naming the rule.
    pub fn new(rules: &[RedactRule]) -> Result<Policy> {
        let mut out = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let pat = match &r.path {
                Some(p) => Some(glob::Pattern::new(p).with_context(|| format!("probe.capture.redact[{i}]: bad path glob `{p}`"))?),
                None => None,
            };
            let name = match (&r.path, r.fd) {
                (Some(p), _) => format!("path:{p}"),
                (None, Some(fd)) => format!("fd:{fd}"),
                (None, None) => format!("rule {i}"),
            };
            out.push((r.clone(), pat, name));
        }
        Ok(Policy { rules: out })
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Redacts the captured buffers of `s` when a rule matches; returns the
    /// rule's name. `path_of` names the file behind an fd of the process.
    pub fn apply(&self, s: &mut Syscall, path_of: impl Fn(u64) -> Option<String>) -> Option<String> {
        if self.rules.is_empty() || s.writes.is_empty() || !FD_OUTPUT.contains(&s.nr) {
            return None;
        }
        let fd = s.args[0];
        let mut path: Option<Option<String>> = None;
        for (rule, pat, name) in &self.rules {
            let hit = match (rule.fd, pat) {
                (Some(n), _) => n == fd,
                (None, Some(p)) => {
                    let path = path.get_or_insert_with(|| path_of(fd));
                    path.as_deref().map(|x| p.matches(x)).unwrap_or(false)
                }
                _ => false,
            };
            if !hit {
                continue;
            }
            for w in &mut s.writes {
                if let Data::Bytes(b) = &w.data {
                    w.data = Data::Redacted {
                        len: b.len() as u32,
                        hash: (rule.action == RedactAction::Hash).then(|| FileHash::of(b)),
                        rule: name.clone(),
                    };
                }
            }
            return Some(name.clone());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpl::event::{FdType, MemWrite};

    fn read_of(fd: u64, bytes: &[u8]) -> Syscall {
        Syscall {
            nr: 0,
            args: [fd, 0x1000, 64, 0, 0, 0],
            ret: bytes.len() as i64,
            duration_ns: 1,
            writes: vec![MemWrite { addr: 0x1000, data: Data::Bytes(bytes.to_vec()) }],
            fd_type: FdType::File,
            flags: 0,
        }
    }

    #[test]
    fn fd_rules_drop_or_hash() {
        let p = Policy::new(&[
            RedactRule { path: None, fd: Some(7), action: RedactAction::Hash },
            RedactRule { path: None, fd: Some(8), action: RedactAction::Drop },
        ])
        .unwrap();
        let mut s = read_of(7, b"secret");
        assert_eq!(p.apply(&mut s, |_| None).as_deref(), Some("fd:7"));
        assert_eq!(s.writes[0].data, Data::Redacted { len: 6, hash: Some(FileHash::of(b"secret")), rule: "fd:7".into() });
        let mut s = read_of(8, b"secret");
        p.apply(&mut s, |_| None);
        assert!(matches!(&s.writes[0].data, Data::Redacted { hash: None, .. }));
        let mut s = read_of(9, b"public");
        assert_eq!(p.apply(&mut s, |_| None), None);
        assert_eq!(s.writes[0].data, Data::Bytes(b"public".to_vec()));
    }

    #[test]
    fn path_rules_resolve_the_fd() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key.pem");
        std::fs::write(&f, "k").unwrap();
        let file = std::fs::File::open(&f).unwrap();
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd() as u64;
        let p = Policy::new(&[RedactRule { path: Some(format!("{}/*.pem", dir.path().display())), fd: None, action: RedactAction::Drop }])
            .unwrap();
        let mut s = read_of(fd, b"k");
        assert!(p
            .apply(&mut s, |fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok().map(|p| p.display().to_string()))
            .unwrap()
            .starts_with("path:"));
        assert!(Policy::new(&[RedactRule { path: Some("[".into()), fd: None, action: RedactAction::Drop }])
            .err()
            .unwrap()
            .to_string()
            .contains("redact[0]"));
    }
}
