//! The exec file, the auxiliary vector and the shared-library list, so
//! PIE programs and their libraries resolve in gdb and lldb.
//!
//! The executable is the copy the replay runs (materialized from the log's
//! file store into the replay's private root), so symbols match the
//! recording even where the machine's own file changed. Libraries are
//! named by their recorded paths; `kprobe replay --debugger` sets gdb's
//! sysroot to the replay root so they resolve to the recorded copies.

use crate::ReplayTarget;
use gdbstub::common::Pid;
use gdbstub::target::ext::auxv::Auxv;
use gdbstub::target::ext::exec_file::ExecFile;
use gdbstub::target::ext::libraries::LibrariesSvr4;
use gdbstub::target::{TargetError, TargetResult};

fn copy_range(data: &[u8], offset: u64, length: usize, buf: &mut [u8]) -> usize {
    let off = (offset as usize).min(data.len());
    let n = length.min(buf.len()).min(data.len() - off);
    buf[..n].copy_from_slice(&data[off..off + n]);
    n
}

impl ReplayTarget {
    fn any_tid(&self) -> Option<u32> {
        self.s.current_thread().filter(|t| self.s.is_main(*t)).or_else(|| self.s.threads().first().copied())
    }

    /// The program's executable as a file the debugger can open.
    pub fn exec_path(&self) -> Option<std::path::PathBuf> {
        self.any_tid().and_then(|t| self.s.replayer().exe_file(t))
    }

    fn auxv_bytes(&self) -> Vec<u8> {
        self.any_tid().map(|t| self.s.replayer().auxv(t)).unwrap_or_default()
    }

    fn u64_at(&self, tid: u32, addr: u64) -> Option<u64> {
        let b = self.s.read(tid, addr, 8).ok()?;
        (b.len() == 8).then(|| u64::from_le_bytes(b.try_into().unwrap()))
    }

    fn cstr_at(&self, tid: u32, addr: u64) -> String {
        let b = self.s.read(tid, addr, 4096).unwrap_or_default();
        let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }

    /// `<library-list-svr4>` from the dynamic loader's `r_debug` link map.
    pub fn libraries_svr4_xml(&self) -> String {
        let mut xml = String::from("<library-list-svr4 version=\"1.0\"");
        let libs = self.any_tid().map(|t| self.link_map(t)).unwrap_or_default();
        let mut body = String::new();
        for (i, (lm, l_addr, name, l_ld)) in libs.iter().enumerate() {
            if i == 0 {
                xml.push_str(&format!(" main-lm=\"{lm:#x}\""));
                continue;
            }
            if name.is_empty() {
                continue;
            }
            let name = self.recorded_name(name);
            body.push_str(&format!(
                "<library name=\"{}\" lm=\"{lm:#x}\" lmid=\"0x0\" l_addr=\"{l_addr:#x}\" l_ld=\"{l_ld:#x}\"/>",
                xml_escape(&name)
            ));
        }
        xml.push('>');
        xml.push_str(&body);
        xml.push_str("</library-list-svr4>");
        xml
    }

    /// The name under which the replay root holds a library the loader
    /// opened as `name` (`/lib/...` is `/usr/lib/...` on merged-/usr systems).
    fn recorded_name(&self, name: &str) -> String {
        let root = self.s.replayer().sysroot();
        let inside = |n: &str| root.join(n.trim_start_matches('/'));
        if inside(name).exists() {
            return name.to_owned();
        }
        if let Ok(c) = std::fs::canonicalize(name) {
            let c = c.to_string_lossy().into_owned();
            if inside(&c).exists() {
                return c;
            }
        }
        name.to_owned()
    }

    /// The link map: (link_map address, l_addr, l_name, l_ld), main program first.
    fn link_map(&self, tid: u32) -> Vec<(u64, u64, String, u64)> {
        let auxv = self.auxv_bytes();
        let (mut phdr, mut phnum) = (0u64, 0u64);
        for kv in auxv.chunks_exact(16) {
            let k = u64::from_le_bytes(kv[..8].try_into().unwrap());
            let v = u64::from_le_bytes(kv[8..].try_into().unwrap());
            match k {
                3 => phdr = v,
                5 => phnum = v,
                _ => {}
            }
        }
        if phdr == 0 {
            return Vec::new();
        }
        let (mut bias, mut dynamic) = (None, None);
        for i in 0..phnum.min(64) {
            let ph = phdr + i * 56;
            let Ok(b) = self.s.read(tid, ph, 56) else { continue };
            if b.len() < 56 {
                continue;
            }
            let p_type = u32::from_le_bytes(b[..4].try_into().unwrap());
            let p_vaddr = u64::from_le_bytes(b[16..24].try_into().unwrap());
            match p_type {
                6 => bias = Some(phdr.wrapping_sub(p_vaddr)),
                2 => dynamic = Some(p_vaddr),
                _ => {}
            }
        }
        let Some(dynamic) = dynamic else { return Vec::new() };
        let dynamic = dynamic.wrapping_add(bias.unwrap_or(0));
        let mut r_debug = 0;
        for i in 0..512u64 {
            let (Some(tag), Some(val)) = (self.u64_at(tid, dynamic + 16 * i), self.u64_at(tid, dynamic + 16 * i + 8)) else { break };
            match tag {
                0 => break,
                21 => r_debug = val,
                _ => {}
            }
        }
        if r_debug == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut lm = self.u64_at(tid, r_debug + 8).unwrap_or(0);
        while lm != 0 && out.len() < 4096 {
            let (Some(l_addr), Some(l_name), Some(l_ld), Some(next)) =
                (self.u64_at(tid, lm), self.u64_at(tid, lm + 8), self.u64_at(tid, lm + 16), self.u64_at(tid, lm + 24))
            else {
                break;
            };
            let name = if l_name == 0 { String::new() } else { self.cstr_at(tid, l_name) };
            out.push((lm, l_addr, name, l_ld));
            lm = next;
        }
        out
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl ExecFile for ReplayTarget {
    fn get_exec_file(&self, _pid: Option<Pid>, offset: u64, length: usize, buf: &mut [u8]) -> TargetResult<usize, Self> {
        // As recorded (the debugger finds it under its sysroot: the replay
        // root, or `target:` through Host I/O).
        let p = self.exec_path().ok_or(TargetError::NonFatal)?;
        let root = self.s.replayer().sysroot().display().to_string();
        let shown = p.display().to_string();
        let shown = shown.strip_prefix(&root).unwrap_or(&shown).to_owned();
        Ok(copy_range(shown.as_bytes(), offset, length, buf))
    }
}

impl Auxv for ReplayTarget {
    fn get_auxv(&self, offset: u64, length: usize, buf: &mut [u8]) -> TargetResult<usize, Self> {
        Ok(copy_range(&self.auxv_bytes(), offset, length, buf))
    }
}

impl LibrariesSvr4 for ReplayTarget {
    fn get_libraries_svr4(&self, offset: u64, length: usize, buf: &mut [u8]) -> TargetResult<usize, Self> {
        Ok(copy_range(self.libraries_svr4_xml().as_bytes(), offset, length, buf))
    }
}
