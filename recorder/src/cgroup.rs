//! cgroup ids → paths → container ids (containerd, CRI-O, Docker names).

use anyhow::{bail, Result};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The cgroup v2 mount point (`/sys/fs/cgroup` or, on hybrid systems,
/// `/sys/fs/cgroup/unified`).
pub fn v2_root() -> Result<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 2 && f[2] == "cgroup2" {
            return Ok(f[1].to_owned());
        }
    }
    bail!("no cgroup v2 hierarchy is mounted (see /proc/self/mounts)")
}

/// The container id named by a cgroup path, as containerd
/// (`cri-containerd-<id>.scope`, or `<id>` under a pod with the cgroupfs
/// driver), CRI-O (`crio-<id>.scope`) and Docker (`docker-<id>.scope`) name
/// them; empty when the path names none.
pub fn container_id(path: &str) -> String {
    let mut found = String::new();
    for comp in path.split('/') {
        let c = comp.strip_suffix(".scope").unwrap_or(comp);
        let c = ["cri-containerd-", "crio-conmon-", "crio-", "docker-", "containerd-", "libpod-"]
            .iter()
            .find_map(|p| c.strip_prefix(p))
            .unwrap_or(c);
        if c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()) {
            found = c.to_owned();
        }
    }
    found
}

/// Resolves cgroup ids by scanning the cgroup v2 tree (a cgroup's id is its
/// directory's inode number); rescans at most once a second on a miss.
#[derive(Default)]
pub struct Resolver {
    root: Option<String>,
    known: HashMap<u64, String>,
    last_scan: Option<Instant>,
}

impl Resolver {
    /// A resolver for this machine.
    pub fn new() -> Resolver {
        Resolver { root: v2_root().ok(), ..Default::default() }
    }

    /// The path of cgroup `id` (relative to the v2 root, starting with `/`).
    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.known.get(&id) {
            return Some(p.clone());
        }
        let stale = self.last_scan.map(|t| t.elapsed() > Duration::from_secs(1)).unwrap_or(true);
        if stale {
            self.scan();
        }
        self.known.get(&id).cloned()
    }

    fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        let mut stack = vec![std::path::PathBuf::from(&root)];
        while let Some(dir) = stack.pop() {
            if let Ok(md) = std::fs::metadata(&dir) {
                let rel = dir.strip_prefix(Path::new(&root)).unwrap_or(&dir);
                self.known.insert(md.ino(), format!("/{}", rel.display()));
            }
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push(e.path());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::container_id;

    #[test]
    fn runtimes() {
        let id = "4f3c0d5e9a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef01234567";
        for p in [
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{id}.scope"),
            format!("/kubepods.slice/kubepods-pod99.slice/crio-{id}.scope"),
            format!("/kubepods/besteffort/pod0c1d/{id}"),
            format!("/system.slice/docker-{id}.scope"),
        ] {
            assert_eq!(container_id(&p), id, "{p}");
        }
        assert_eq!(container_id("/user.slice/user-0.slice/session-1.scope"), "");
        assert_eq!(container_id("/"), "");
    }
}
