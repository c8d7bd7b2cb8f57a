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
    // Inlined frames, innermost first: show the innermost one in the
    // program's own source (not the standard library's or a dependency's).
    let mut best: Option<(String, Option<u32>, Option<String>)> = None;
    if let Ok(mut frames) = loader.find_frames(probe) {
        while let Ok(Some(f)) = frames.next() {
            let func = f.function.as_ref().and_then(|n| n.demangle().ok().map(|d| d.into_owned()));
            let Some(loc) = f.location else { continue };
            let Some(file) = loc.file else { continue };
            let own = !file.starts_with("/rustc/") && !file.contains("/.cargo/registry/") && !file.starts_with("/usr/");
            if best.is_none() || own {
                best = Some((file.to_owned(), loc.line, func));
            }
            if own {
                break;
            }
        }
    }
    let func = loader.find_symbol(probe).map(|s| addr2line::demangle_auto(s.into(), None).into_owned());
    match best {
        Some((file, line, f)) => {
            let file = file.rsplit('/').next().unwrap_or(&file).to_owned();
            let line = line.map(|n| format!(":{n}")).unwrap_or_default();
            Some(format!("{file}{line}{}", f.or(func).map(|f| format!(" ({})", short(&f))).unwrap_or_default()))
        }
        None => func.map(|f| short(&f)),
    }
}

/// Drops the hash suffix of a Rust symbol (`::h0123456789abcdef`).
fn short(f: &str) -> String {
    match f.rfind("::h") {
        Some(i) if f.len() - i == 19 => f[..i].to_owned(),
        _ => f.to_owned(),
    }
}
