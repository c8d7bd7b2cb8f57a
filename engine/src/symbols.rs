//! Source locations (`file:line (function)`) for instruction pointers in a
//! recorded program's main executable, from its DWARF line tables (gimli,
//! through addr2line) where the executable has them.
//!
//! The executable's load address comes from the exec event's auxiliary
//! vector (`AT_ENTRY` minus the ELF entry point), so position-independent
//! executables resolve too. The file is read from the log's file store when
//! it holds it, else from the path recorded at exec time.

use crate::store::Store;
use kpl::EventBody;

const AT_ENTRY: u64 = 9;

/// Resolves `ip` of process `pid` to `file:line (function)`, when the
/// process's exec was recorded and its executable has symbols.
pub fn locate(store: &Store, pid: u32, ip: u64) -> Option<String> {
    let exec = store.events.iter().rev().find_map(|e| match &e.body {
        EventBody::Exec(x) if e.pid == pid => Some(x),
        _ => None,
    })?;
    let entry = exec.auxv.iter().find(|(t, _)| *t == AT_ENTRY).map(|(_, v)| *v)?;
    let path = std::path::Path::new(&exec.exe.path);
    let bytes = std::fs::read(path).ok()?;
    let elf_entry = {
        use object::Object;
        object::File::parse(&*bytes).ok()?.entry()
    };
    let bias = entry.wrapping_sub(elf_entry);
    let loader = addr2line::Loader::new(path).ok()?;
    let probe = ip.wrapping_sub(bias);
    let func = loader.find_symbol(probe).map(|s| addr2line::demangle_auto(s.into(), None).into_owned());
    let loc = loader.find_location(probe).ok().flatten();
    match (loc, func) {
        (Some(l), f) => {
            let file = l.file.map(|f| f.rsplit('/').next().unwrap_or(f).to_owned()).unwrap_or_else(|| "?".into());
            let line = l.line.map(|n| format!(":{n}")).unwrap_or_default();
            Some(format!("{file}{line}{}", f.map(|f| format!(" ({})", short(&f))).unwrap_or_default()))
        }
        (None, Some(f)) => Some(short(&f)),
        _ => None,
    }
}

/// Drops the hash suffix of a Rust symbol (`::h0123456789abcdef`).
fn short(f: &str) -> String {
    match f.rfind("::h") {
        Some(i) if f.len() - i == 19 => f[..i].to_owned(),
        _ => f.to_owned(),
    }
}
