//! The byte layout of a `.kpl` file.
//!
//! ```text
//! file    := header frame* [footer-frame trailer]
//! header  := MAGIC(8) major(u16) minor(u16) meta_len(u32) meta(postcard Metadata) crc32c(u32)
//! frame   := frame-header(40) body(stored_len)
//! frame-header :=
//!     "KPLF" kind(u8) codec(u8) reserved(u16) raw_len(u32) stored_len(u32)
//!     a(u64) b(u64) body_crc(u32) header_crc(u32)
//! trailer := "KPLINDEX" footer_offset(u64) footer_len(u64) crc32c(u32) reserved(u32)
//! ```
//!
//! Codecs: 0 stored, 1 zstd, 2 event columns, 3 payload fields. Format 2
//! (this version) writes events with codec 2, payload with codec 3 and
//! everything else with codec 1; readers also read format 1 (events and
//! payload with codec 1, the version-1 block model), and name any other
//! major version in their error.
//!
//! All integers are little-endian. Every frame carries two CRC32C checksums,
//! one over its header and one over its stored body, so a reader can tell a
//! damaged header (resynchronise on the next `KPLF`) from a damaged body
//! (skip `stored_len` bytes). Frame kinds:
//!
//! | kind | body | `a` | `b` |
//! |---|---|---|---|
//! | 1 events  | codec 2: the block's columns, each zstd'd on its own (see [`crate::block`]); format 1: codec 1, zstd(block) | first sequence number | event count |
//! | 2 payload | codec 3: buffers split into lanes, templates and numbers (see [`crate::payload`]); format 1: codec 1, zstd(bytes) | logical start offset | position in its dictionary group (2.2; 0 before) |
//! | 3 file    | zstd(hash(32) total_len(u64) chunk_offset(u64) bytes) | chunk offset | total length |
//! | 4 footer  | zstd(postcard [`crate::index::Index`]) | 0 | 0 |

use crate::{Error, Metadata};
use serde::{Deserialize, Serialize};

/// First eight bytes of every `.kpl` file.
pub const MAGIC: [u8; 8] = *b"\x89KPL\r\n\x1a\n";
/// Format major version this crate writes.
pub const VERSION_MAJOR: u16 = 2;
/// Format minor version this crate writes. Minors add to what a frame may
/// hold: 2.1 adds template line references to payload frames (a 2.0 reader
/// stops at them with "bad template byte"; 2.0 files read unchanged); 2.2
/// adds dictionary groups of payload frames (a payload frame's `b` is its
/// position in its group, see [`crate::payload`]; 2.1 and 2.0 frames all
/// have 0, the first frame of a group).
pub const VERSION_MINOR: u16 = 2;
/// Oldest format major version this crate reads (1.x: whole-block zstd
/// events, plain zstd payload, the version-1 prediction model).
pub const OLDEST_MAJOR: u16 = 1;
/// Magic of a frame header.
pub const FRAME_MAGIC: [u8; 4] = *b"KPLF";
/// Size of a frame header.
pub const FRAME_HEADER_LEN: usize = 40;
/// Magic of the trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"KPLINDEX";
/// Size of the trailer.
pub const TRAILER_LEN: usize = 32;
/// Largest frame body a reader accepts (guards allocations on damaged input).
pub const MAX_FRAME_LEN: u32 = 64 << 20;
/// Largest header metadata a reader accepts.
pub const MAX_META_LEN: u32 = 16 << 20;

/// What a frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum FrameKind {
    /// A block of events.
    Events = 1,
    /// A piece of the payload stream.
    Payload = 2,
    /// A chunk of a file in the file store.
    File = 3,
    /// The index.
    Footer = 4,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<FrameKind> {
        Some(match v {
            1 => FrameKind::Events,
            2 => FrameKind::Payload,
            3 => FrameKind::File,
            4 => FrameKind::Footer,
            _ => return None,
        })
    }
    /// Lower-case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Events => "events",
            FrameKind::Payload => "payload",
            FrameKind::File => "file",
            FrameKind::Footer => "footer",
        }
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame holds.
    pub kind: FrameKind,
    /// 0 raw, 1 zstd, 2 event columns, 3 payload fields.
    pub codec: u8,
    /// Length of the body once decompressed.
    pub raw_len: u32,
    /// Length of the body on disk.
    pub stored_len: u32,
    /// Kind-specific (see module docs).
    pub a: u64,
    /// Kind-specific (see module docs).
    pub b: u64,
    /// CRC32C of the stored body.
    pub body_crc: u32,
}

/// Codec id of zstd-compressed bodies.
pub const CODEC_ZSTD: u8 = 1;
/// Codec id of format-2 event blocks: each column compressed on its own
/// (see [`crate::block`]).
pub const CODEC_COLUMNS: u8 = 2;
/// Codec id of format-2 payload frames: text split into templates and
/// numbers, in lanes (see [`crate::payload`]).
pub const CODEC_FIELDS: u8 = 3;

impl FrameHeader {
    /// Serializes the header.
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h[0..4].copy_from_slice(&FRAME_MAGIC);
        h[4] = self.kind as u8;
        h[5] = self.codec;
        h[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        h[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        h[16..24].copy_from_slice(&self.a.to_le_bytes());
        h[24..32].copy_from_slice(&self.b.to_le_bytes());
        h[32..36].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..36]);
        h[36..40].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Parses and checks a header; the error says what is wrong with it.
    pub fn decode(h: &[u8]) -> Result<FrameHeader, &'static str> {
        if h.len() < FRAME_HEADER_LEN {
            return Err("frame header cut short");
        }
        if h[0..4] != FRAME_MAGIC {
            return Err("no frame magic");
        }
        if crc32c::crc32c(&h[0..36]) != u32_at(h, 36) {
            return Err("frame header checksum mismatch");
        }
        let kind = FrameKind::from_u8(h[4]).ok_or("unknown frame kind")?;
        let codec = h[5];
        if codec > CODEC_FIELDS
            || (codec == CODEC_COLUMNS && kind != FrameKind::Events)
            || (codec == CODEC_FIELDS && kind != FrameKind::Payload)
        {
            return Err("unknown frame codec");
        }
        let raw_len = u32_at(h, 8);
        let stored_len = u32_at(h, 12);
        if raw_len > MAX_FRAME_LEN || stored_len > MAX_FRAME_LEN {
            return Err("frame length out of range");
        }
        let (a, b) = (u64_at(h, 16), u64_at(h, 24));
        if a.checked_add(b).is_none() || a.checked_add(raw_len as u64).is_none() {
            return Err("frame fields out of range");
        }
        Ok(FrameHeader { kind, codec, raw_len, stored_len, a, b, body_crc: u32_at(h, 32) })
    }

    /// Total size of the frame on disk.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + self.stored_len as u64
    }
}

/// Builds a complete frame (header + zstd body) from raw bytes.
pub fn build_frame(kind: FrameKind, a: u64, b: u64, raw: &[u8], level: i32) -> Vec<u8> {
    let mut c = zstd::bulk::Compressor::new(level).expect("zstd context");
    build_frame_with(&mut c, kind, a, b, raw)
}

/// As [`build_frame`], reusing a compression context.
pub fn build_frame_with(c: &mut zstd::bulk::Compressor<'_>, kind: FrameKind, a: u64, b: u64, raw: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; FRAME_HEADER_LEN + zstd::zstd_safe::compress_bound(raw.len())];
    let n = c.compress_to_buffer(raw, &mut out[FRAME_HEADER_LEN..]).expect("zstd compression of an in-memory buffer");
    out.truncate(FRAME_HEADER_LEN + n);
    let body = &out[FRAME_HEADER_LEN..];
    let h = FrameHeader {
        kind,
        codec: CODEC_ZSTD,
        raw_len: raw.len() as u32,
        stored_len: body.len() as u32,
        a,
        b,
        body_crc: crc32c::crc32c(body),
    };
    out[..FRAME_HEADER_LEN].copy_from_slice(&h.encode());
    out
}

/// A zstd context and a scratch buffer, reused for every stream of every
/// frame a writer builds.
pub(crate) struct Packer {
    /// The compression context (for streams of [`Packer::SMALL`] bytes and more).
    pub c: zstd::bulk::Compressor<'static>,
    /// The contexts for smaller streams, by size class. zstd sizes its
    /// tables to the input and reallocates and clears its workspace when
    /// one context sees inputs of very different sizes in turn; a context
    /// per size class keeps each workspace stable (this was a tenth of the
    /// writer's time).
    small: [zstd::bulk::Compressor<'static>; 2],
    scratch: Vec<u8>,
}

impl Packer {
    /// Streams from this size use the main context.
    const SMALL: usize = 16 << 10;

    /// A packer compressing at `level`.
    pub fn new(level: i32) -> std::io::Result<Packer> {
        Ok(Packer {
            c: zstd::bulk::Compressor::new(level)?,
            small: [zstd::bulk::Compressor::new(level)?, zstd::bulk::Compressor::new(level)?],
            scratch: Vec::new(),
        })
    }

    /// Appends `src` to `out`, zstd-compressed when that is smaller: returns
    /// the codec (1 zstd, 0 stored) and the number of bytes appended.
    pub fn pack(&mut self, src: &[u8], out: &mut Vec<u8>) -> (u8, usize) {
        if src.len() >= 32 {
            self.scratch.clear();
            self.scratch.reserve(zstd::zstd_safe::compress_bound(src.len()));
            let c = match src.len() {
                n if n >= Self::SMALL => &mut self.c,
                n if n >= 2 << 10 => &mut self.small[1],
                _ => &mut self.small[0],
            };
            if let Ok(n) = c.compress_to_buffer(src, &mut self.scratch) {
                if n < src.len() {
                    out.extend_from_slice(&self.scratch[..n]);
                    return (CODEC_ZSTD, n);
                }
            }
        }
        out.extend_from_slice(src);
        (0, src.len())
    }
}

/// Decompresses one zstd frame of `src`, at most `cap` bytes, with this
/// thread's decompression context. Creating a context per call (as
/// `zstd::bulk::decompress` does) runs CPUID, which traps to the hypervisor
/// on virtual machines: it was a third of a seek's time here.
pub(crate) fn unzstd(src: &[u8], cap: usize) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    DCTX.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut().expect("made above").decompress(src, cap)
    })
}

/// Fills in the header of a frame whose body (encoded with `codec`,
/// `raw_len` bytes once decoded) follows `FRAME_HEADER_LEN` reserved bytes.
pub(crate) fn seal_frame(frame: &mut [u8], kind: FrameKind, codec: u8, a: u64, b: u64, raw_len: u32) {
    let body = &frame[FRAME_HEADER_LEN..];
    let h = FrameHeader { kind, codec, raw_len, stored_len: body.len() as u32, a, b, body_crc: crc32c::crc32c(body) };
    frame[..FRAME_HEADER_LEN].copy_from_slice(&h.encode());
}

/// A complete frame around a body already encoded with `codec` (`raw_len`
/// bytes once decoded): for tests and fuzzing of the codecs.
#[doc(hidden)]
pub fn frame_with_body(kind: FrameKind, codec: u8, a: u64, b: u64, raw_len: u32, body: &[u8]) -> Vec<u8> {
    let mut frame = vec![0; FRAME_HEADER_LEN];
    frame.extend_from_slice(body);
    seal_frame(&mut frame, kind, codec, a, b, raw_len);
    frame
}

/// Checks the body checksum and decodes it (for events frames: into the raw
/// block; for payload frames: into the payload bytes).
pub fn open_body(h: &FrameHeader, stored: &[u8]) -> Result<Vec<u8>, String> {
    open_body_in(h, stored, None)
}

/// As [`open_body`]; a payload frame is decoded with the dictionaries of
/// its group's earlier frames in `g` (which learns this frame's), or on
/// its own when it is a group's first frame.
pub fn open_body_in(h: &FrameHeader, stored: &[u8], g: Option<&mut crate::payload::Group>) -> Result<Vec<u8>, String> {
    if stored.len() != h.stored_len as usize {
        return Err(format!("body cut short: {} of {} bytes", stored.len(), h.stored_len));
    }
    if crc32c::crc32c(stored) != h.body_crc {
        return Err("body checksum mismatch".into());
    }
    match h.codec {
        0 => Ok(stored.to_vec()),
        CODEC_COLUMNS => crate::block::columns_to_raw(stored, h.raw_len as usize),
        CODEC_FIELDS if g.is_some() => crate::payload::decode_in(stored, h.raw_len as usize, g.expect("checked")),
        CODEC_FIELDS if h.b == 0 => crate::payload::decode(stored, h.raw_len as usize),
        CODEC_FIELDS => Err(format!("frame {} of a dictionary group: it decodes only after the frames before it", h.b)),
        _ => {
            let raw = unzstd(stored, h.raw_len as usize).map_err(|e| format!("zstd: {e}"))?;
            if raw.len() != h.raw_len as usize {
                return Err(format!("decompressed {} bytes, header says {}", raw.len(), h.raw_len));
            }
            Ok(raw)
        }
    }
}

/// Serializes the file header.
pub fn encode_header(meta: &Metadata) -> Vec<u8> {
    let m = postcard::to_stdvec(meta).expect("metadata serializes");
    let mut out = Vec::with_capacity(20 + m.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
    out.extend_from_slice(&VERSION_MINOR.to_le_bytes());
    out.extend_from_slice(&(m.len() as u32).to_le_bytes());
    out.extend_from_slice(&m);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A parsed file header.
#[derive(Clone, Debug)]
pub struct Header {
    /// Format major version.
    pub major: u16,
    /// Format minor version.
    pub minor: u16,
    /// Recording metadata.
    pub meta: Metadata,
    /// Length of the header in bytes (where the first frame starts).
    pub len: u64,
}

/// Parses the file header from the first bytes of a file. `prefix` must hold
/// at least 16 bytes; returns `Ok(None)` when more bytes are needed
/// (`needed` total).
pub fn decode_header(path: &std::path::Path, prefix: &[u8]) -> Result<Result<Header, usize>, Error> {
    let bad = |reason: String| Error::BadHeader { path: path.to_owned(), reason };
    if prefix.len() < 16 {
        return Err(bad(format!("file is {} bytes, shorter than a header", prefix.len())));
    }
    if prefix[0..8] != MAGIC {
        return Err(bad("not a kprobe log (bad magic)".into()));
    }
    let major = u16::from_le_bytes([prefix[8], prefix[9]]);
    let minor = u16::from_le_bytes([prefix[10], prefix[11]]);
    if !(OLDEST_MAJOR..=VERSION_MAJOR).contains(&major) {
        return Err(Error::UnsupportedVersion { path: path.to_owned(), major, minor });
    }
    let meta_len = u32_at(prefix, 12);
    if meta_len > MAX_META_LEN {
        return Err(bad(format!("metadata length {meta_len} out of range")));
    }
    let total = 16 + meta_len as usize + 4;
    if prefix.len() < total {
        return Ok(Err(total));
    }
    let crc = u32_at(prefix, 16 + meta_len as usize);
    if crc32c::crc32c(&prefix[..16 + meta_len as usize]) != crc {
        return Err(bad("header checksum mismatch".into()));
    }
    let meta: Metadata = postcard::take_from_bytes(&prefix[16..16 + meta_len as usize]).map_err(|e| bad(format!("metadata: {e}")))?.0;
    Ok(Ok(Header { major, minor, meta, len: total as u64 }))
}

/// Serializes the trailer.
pub fn encode_trailer(footer_offset: u64, footer_len: u64) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[0..8].copy_from_slice(&TRAILER_MAGIC);
    t[8..16].copy_from_slice(&footer_offset.to_le_bytes());
    t[16..24].copy_from_slice(&footer_len.to_le_bytes());
    let crc = crc32c::crc32c(&t[0..24]);
    t[24..28].copy_from_slice(&crc.to_le_bytes());
    t
}

/// Parses the trailer: `(footer_offset, footer_len)`.
pub fn decode_trailer(t: &[u8]) -> Option<(u64, u64)> {
    if t.len() != TRAILER_LEN || t[0..8] != TRAILER_MAGIC || t[28..32] != [0; 4] {
        return None;
    }
    if crc32c::crc32c(&t[0..24]) != u32_at(t, 24) {
        return None;
    }
    Some((u64_at(t, 8), u64_at(t, 16)))
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
