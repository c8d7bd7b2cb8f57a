//! Names of x86-64 system calls and errno values, for display.

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
    Errno::new(errno).name()
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
