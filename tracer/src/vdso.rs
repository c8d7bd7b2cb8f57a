//! Turning the vDSO's time functions into real syscalls.
//!
//! `clock_gettime`, `gettimeofday`, `time`, `getcpu` and `clock_getres` are
//! normally answered in user space by the vDSO, so a tracer never sees them.
//! After every exec (at record and at replay alike) each of these functions
//! is overwritten with `mov eax, NR; syscall; ret`: the calls enter the
//! kernel, are recorded like any syscall and served from the log at replay.
//! The `syscall` instruction of a stub also serves the tracer to make the
//! tracee execute syscalls of its own (see [`crate::inject`]).

use crate::os::{Mem, Pid};
use object::{Object, ObjectSegment, ObjectSymbol};

/// The patched vDSO of a process.
#[derive(Clone, Debug, Default)]
pub struct Vdso {
    /// Load address.
    pub base: u64,
    /// Size of the mapping.
    pub size: u64,
    /// Address of a `syscall; ret` sequence inside a stub.
    pub syscall_insn: u64,
    /// Patched functions: (name, address).
    pub patched: Vec<(String, u64)>,
}

const FUNCS: &[(&str, u32)] =
    &[("clock_gettime", 228), ("gettimeofday", 96), ("time", 201), ("getcpu", 309), ("clock_getres", 229), ("clock_gettime64", 228)];

/// Finds the vDSO mapping of `pid` from /proc/PID/maps.
pub fn find(pid: Pid) -> Option<(u64, u64)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    for l in maps.lines() {
        if l.ends_with("[vdso]") {
            let range = l.split_whitespace().next()?;
            let (a, b) = range.split_once('-')?;
            let a = u64::from_str_radix(a, 16).ok()?;
            let b = u64::from_str_radix(b, 16).ok()?;
            return Some((a, b - a));
        }
    }
    None
}

/// Patches the vDSO of `pid` (stopped, right after exec).
pub fn patch(pid: Pid, mem: &Mem) -> Result<Vdso, String> {
    let (base, size) = find(pid).ok_or("the process has no vDSO mapping")?;
    let image = mem.read(base, size as usize).map_err(|e| format!("reading the vDSO: {e}"))?;
    let f = object::File::parse(&image[..]).map_err(|e| format!("parsing the vDSO: {e}"))?;
    let first = f.segments().map(|s| s.address()).min().unwrap_or(0);
    let mut v = Vdso { base, size, ..Default::default() };
    let mut done: Vec<u64> = Vec::new();
    for s in f.dynamic_symbols() {
        let Ok(name) = s.name() else { continue };
        let bare = name.strip_prefix("__vdso_").unwrap_or(name);
        let Some((_, nr)) = FUNCS.iter().find(|(n, _)| *n == bare) else {
            continue;
        };
        let addr = base + s.address() - first;
        if s.size() < 8 || done.contains(&addr) {
            continue;
        }
        let mut stub = vec![0xb8];
        stub.extend_from_slice(&nr.to_le_bytes());
        stub.extend_from_slice(&[0x0f, 0x05, 0xc3]);
        mem.write(addr, &stub).map_err(|e| format!("patching {name} in the vDSO: {e}"))?;
        done.push(addr);
        v.patched.push((name.to_owned(), addr));
        v.syscall_insn = addr + 5;
    }
    if v.syscall_insn == 0 {
        return Err("no patchable function found in the vDSO".into());
    }
    Ok(v)
}
