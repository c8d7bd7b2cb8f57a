//! Writes the fixture log of the current format version, which the tests
//! read back after later format changes (`old_log_reads` in
//! `tests/roundtrip.rs`): 3,000 synthetic events of seed 7 in 8 KiB
//! blocks, a stored file and exit code 3. Run it by hand before a format
//! change, with the code of the version the fixture is to hold:
//!
//!     cargo run --release -p log-format --example write_fixture -- log-format/tests/data/vX.Y.kpl
//!
//! (then `git add -f`: `*.kpl` is ignored).

use kpl::{Metadata, Writer, WriterOptions};

fn main() {
    let path = std::env::args().nth(1).expect("usage: write_fixture FILE.kpl");
    // the metadata and block sizes of the tests' `meta()` and `small_blocks()`, with 8 KiB blocks
    let meta = Metadata {
        host: "testhost".into(),
        kernel: "6.18".into(),
        command: vec!["test".into()],
        start_time_ns: 1,
        backend: "test".into(),
        tool_version: "0".into(),
        extra: vec![("k".into(), "v".into())],
    };
    let opts = WriterOptions { block_size: 8192, payload_block_size: 8192, inline_max: 48, level: 1, file_chunk: 4096 };
    let mut w = Writer::create_with(&path, &meta, opts).unwrap_or_else(|e| panic!("creating {path}: {e}"));
    for e in kpl::synth::Synth::new(7).take(3000) {
        w.append(e).unwrap();
    }
    let file: Vec<u8> = (0..10000u32).flat_map(|i| i.to_le_bytes()).collect();
    w.store_file(&file).unwrap();
    w.set_exit_code(Some(3));
    w.finish().unwrap();
    eprintln!("wrote {path}");
}
