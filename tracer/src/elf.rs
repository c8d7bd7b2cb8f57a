//! What the tracer needs to know about ELF files: build-ids, the program
//! interpreter, and symbols near an address (for divergence reports).

use object::{Object, ObjectSegment, ObjectSymbol};

/// The GNU build-id note of an ELF file, if any.
pub fn build_id(bytes: &[u8]) -> Vec<u8> {
    object::File::parse(bytes).ok().and_then(|f| f.build_id().ok().flatten().map(|b| b.to_vec())).unwrap_or_default()
}

/// The PT_INTERP path of an ELF executable, if it has one.
pub fn interp(bytes: &[u8]) -> Option<String> {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let f = ElfFile64::<object::Endianness>::parse(bytes).ok()?;
    let e = f.endian();
    for ph in f.elf_program_headers() {
        if ph.p_type(e) == object::elf::PT_INTERP {
            let data = ph.data(e, bytes).ok()?;
            let s = data.split(|b| *b == 0).next()?;
            return std::str::from_utf8(s).ok().map(str::to_owned);
        }
    }
    None
}

/// True for ELF files.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
}

/// The interpreter of a `#!` script (its first word), if `bytes` is one.
pub fn shebang(bytes: &[u8]) -> Option<String> {
    let rest = bytes.strip_prefix(b"#!")?;
    let line = rest.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim();
    line.split_whitespace().next().map(str::to_owned)
}

/// Finds the function symbol containing (or nearest below) `offset`, an
/// address relative to the file's lowest loadable segment.
pub fn symbol_at(bytes: &[u8], offset: u64) -> Option<(String, u64)> {
    let f = object::File::parse(bytes).ok()?;
    let base = f.segments().map(|s| s.address()).min().unwrap_or(0);
    let addr = base + offset;
    let mut best: Option<(String, u64)> = None;
    for s in f.symbols().chain(f.dynamic_symbols()) {
        if s.kind() != object::SymbolKind::Text || s.address() > addr {
            continue;
        }
        let d = addr - s.address();
        if best.as_ref().is_none_or(|b| d < b.1) {
            if let Ok(n) = s.name() {
                if !n.is_empty() {
                    best = Some((n.to_owned(), d));
                }
            }
        }
    }
    best
}
