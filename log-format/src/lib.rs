//! The `.kpl` compact indexed log.
//!
//! Everything kprobe records passes through this format: the ptrace recorder
//! and the eBPF recorder write it, replay and the causal engine read it, the
//! debugger seeks in it.
//!
//! * [`event`]: the typed, versioned event model.
//! * [`Writer`]: streaming writer, bounded memory, whole checksummed blocks.
//! * [`Reader`]: sequential and random access by sequence number, time,
//!   thread and transaction; rebuilds the index by scanning when the footer
//!   is missing (a recorder killed mid-write) and reports what was lost.
//! * [`format`]: the byte layout (format 2.1; 2.0 and 1.0 logs are still read);
//!   [`block`]: the event block codec; [`payload`]: the payload frame codec;
//!   [`index`]: the footer index.
//!
//! ```
//! use kpl::{Writer, Reader, Metadata, Event, EventBody, event::Note};
//! let dir = std::env::temp_dir().join(format!("kpl-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("a.kpl");
//! let mut w = Writer::create(&path, &Metadata::default()).unwrap();
//! w.append(Event::new(1, 10, 10, 0, EventBody::Note(Note { topic: "t".into(), text: "hello".into() }))).unwrap();
//! w.finish().unwrap();
//! let r = Reader::open(&path).unwrap();
//! let evs: Vec<_> = r.events().collect::<Result<_, _>>().unwrap();
//! assert_eq!(evs.len(), 1);
//! ```

#![warn(missing_docs)]

pub mod block;
mod digits;
pub mod event;
pub mod format;
pub mod index;
pub mod json;
pub mod payload;
mod reader;
pub mod synth;
pub mod sys;
pub mod text;
mod writer;

pub use event::{Data, Event, EventBody, FileHash, Kind};
pub use index::{Index, Summary};
pub use reader::{Events, Problem, Reader, Recovery, VerifyReport};
pub use writer::{WriteStats, Writer, WriterOptions};

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Recording metadata kept in the file header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Host name of the recording machine.
    pub host: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// The recorded command line (or a description of what was captured).
    pub command: Vec<String>,
    /// Wall-clock start, nanoseconds since the epoch.
    pub start_time_ns: u64,
    /// Which backend wrote it: `ptrace`, `ebpf`, `clickhouse`, `synthetic`.
    pub backend: String,
    /// Version of the writing tool.
    pub tool_version: String,
    /// Other facts (key, value).
    pub extra: Vec<(String, String)>,
}

impl Metadata {
    /// Metadata for this machine, now.
    pub fn for_this_host(backend: &str, command: Vec<String>) -> Metadata {
        let uts = uname();
        Metadata {
            host: uts.0,
            kernel: uts.1,
            command,
            start_time_ns: now_ns(),
            backend: backend.to_owned(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            extra: vec![("cpu".to_owned(), cpu_signature())],
        }
    }
}

/// What a program's CPU feature detection sees of this CPU: vendor,
/// family/model/stepping and the feature words of leaves 1 and 7 (the `cpu`
/// fact of [`Metadata::for_this_host`]). Two machines with the same signature
/// answer the `cpuid` a C library asks at start-up the same way.
pub fn cpu_signature() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid_count;
        let v = __cpuid_count(0, 0);
        let mut vendor = Vec::with_capacity(12);
        for w in [v.ebx, v.edx, v.ecx] {
            vendor.extend_from_slice(&w.to_le_bytes());
        }
        let l1 = __cpuid_count(1, 0);
        let (b7, c7, d7) = if v.eax >= 7 {
            let l7 = __cpuid_count(7, 0);
            (l7.ebx, l7.ecx, l7.edx)
        } else {
            (0, 0, 0)
        };
        // Leaf 1 ebx holds the APIC id of the CPU asked: not a property of the model.
        format!("{} {:08x} {:08x}:{:08x} {b7:08x}:{c7:08x}:{d7:08x}", String::from_utf8_lossy(&vendor), l1.eax, l1.ecx, l1.edx)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_owned()
    }
}

fn uname() -> (String, String) {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
    (read("/proc/sys/kernel/hostname"), read("/proc/sys/kernel/osrelease"))
}

/// Wall-clock time in nanoseconds since the epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Errors reading or writing a log. Each names the file and, where it
/// applies, the byte offset, block and event number.
#[derive(thiserror::Error, Debug)]
#[allow(missing_docs)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: bad header: {reason}")]
    BadHeader { path: PathBuf, reason: String },
    #[error(
        "{path}: format version {major}.{minor} is not supported (this build reads {}.x to {}.x)",
        format::OLDEST_MAJOR,
        format::VERSION_MAJOR
    )]
    UnsupportedVersion { path: PathBuf, major: u16, minor: u16 },
    #[error("{path}: {kind} block at byte offset {offset}: {reason}")]
    BadBlock { path: PathBuf, offset: u64, kind: &'static str, reason: String },
    #[error("{path}: event {seq} in block at byte offset {offset}: {reason}")]
    BadEvent { path: PathBuf, offset: u64, seq: u64, reason: String },
    #[error("{path}: no event {seq} in this log ({detail})")]
    NoSuchEvent { path: PathBuf, seq: u64, detail: String },
    #[error("{path}: payload bytes {offset}..{end} are missing (their block is damaged or was lost)")]
    MissingPayload { path: PathBuf, offset: u64, end: u64 },
    #[error("{path}: {len} bytes were redacted at record time by capture policy rule `{rule}`")]
    Redacted { path: PathBuf, len: u32, rule: String },
    #[error("{path}: file {hash} is not in the log's file store{detail}")]
    MissingFile { path: PathBuf, hash: String, detail: String },
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.to_owned(), source }
    }
}
