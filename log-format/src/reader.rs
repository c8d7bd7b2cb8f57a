//! Reader: sequential and random access, index rebuild, verification.

use crate::block;
use crate::event::{Data, Event, FileHash, Kind};
use crate::format::{self, FrameHeader, FrameKind, FRAME_HEADER_LEN, FRAME_MAGIC, TRAILER_LEN};
use crate::index::{BlockInfo, ChunkInfo, Index, IndexBuilder, PayloadInfo, Summary};
use crate::{Error, Metadata};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const CACHE_BLOCKS: usize = 8;

/// Frees a decoded block evicted from a cache on a background thread: the
/// thousands of events (each with its own allocations) took an eighth of a
/// seek's time to free, and a seek need not wait for that. If the thread
/// cannot be started, the block is freed here.
fn drop_later(evs: Arc<Vec<Event>>) {
    use std::sync::mpsc::{channel, Sender};
    use std::sync::OnceLock;
    static TX: OnceLock<Option<Sender<Arc<Vec<Event>>>>> = OnceLock::new();
    let tx = TX.get_or_init(|| {
        let (tx, rx) = channel::<Arc<Vec<Event>>>();
        let spawned = std::thread::Builder::new().name("kpl-free".into()).spawn(move || rx.into_iter().for_each(drop));
        spawned.ok().map(|_| tx)
    });
    if let Some(tx) = tx {
        // A send fails only if the thread is gone; then the block comes back and is freed here.
        let _ = tx.send(evs);
    }
}

/// One damaged or missing piece of a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Byte offset where it starts.
    pub offset: u64,
    /// Bytes affected.
    pub len: u64,
    /// What is wrong (e.g. `events block: body checksum mismatch`).
    pub what: String,
    /// What was lost because of it (e.g. `events 4096..8191 (4096 events)`).
    pub lost: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "byte offset {} (+{} bytes): {}; lost: {}", self.offset, self.len, self.what, self.lost)
    }
}

/// Why and how the index was rebuilt by scanning.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// Why the footer index could not be used.
    pub reason: String,
    /// Damage found while scanning.
    pub problems: Vec<Problem>,
}

/// Result of [`Reader::verify`].
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// Everything found wrong; empty when the log is sound.
    pub problems: Vec<Problem>,
    /// Events readable.
    pub events_ok: u64,
    /// Sequence ranges of readable events (half-open).
    pub recovered_ranges: Vec<(u64, u64)>,
    /// Payload bytes readable.
    pub payload_ok: u64,
    /// Files in the store that are complete.
    pub files_ok: usize,
    /// Whether the footer index was present and matched the blocks.
    pub footer_ok: bool,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty() && self.footer_ok
    }
}

struct Cache {
    /// Decoded blocks: index, events, whether all of the block's events are there
    /// (a seek decodes only up to the event it looks for).
    blocks: VecDeque<(usize, Arc<Vec<Event>>, bool)>,
    payload: Option<(usize, Arc<Vec<u8>>)>,
    /// The dictionaries of a payload frame's group after that frame (for
    /// the group's next frame, as reading in order needs).
    group: Option<(usize, crate::payload::Group)>,
}

/// Where the bytes of a log come from.
enum Source {
    File(File),
    Memory(Vec<u8>),
}

impl Source {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            Source::File(f) => f.read_exact_at(buf, offset),
            Source::Memory(m) => {
                let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= m.len() as u64);
                match end {
                    Some(e) => {
                        buf.copy_from_slice(&m[offset as usize..e as usize]);
                        Ok(())
                    }
                    None => Err(std::io::ErrorKind::UnexpectedEof.into()),
                }
            }
        }
    }
}

/// Reads a `.kpl` log. All methods take `&self`; a reader can be shared
/// between threads.
pub struct Reader {
    file: Source,
    path: PathBuf,
    len: u64,
    header: format::Header,
    index: Index,
    ts_prefix_max: Vec<u64>,
    recovery: Option<Recovery>,
    cache: Mutex<Cache>,
}

struct ScanResult {
    builder: IndexBuilder,
    problems: Vec<Problem>,
    footer_at: Option<u64>,
}

impl Reader {
    /// Opens a log. Uses the footer index when it is sound; otherwise scans
    /// the blocks to rebuild it (see [`Reader::recovery`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Reader, Error> {
        let path = path.as_ref().to_owned();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        Self::from_source(Source::File(file), path, len)
    }

    /// Reads a log held in memory; `name` is used in error messages.
    pub fn from_bytes(bytes: Vec<u8>, name: impl AsRef<Path>) -> Result<Reader, Error> {
        let len = bytes.len() as u64;
        Self::from_source(Source::Memory(bytes), name.as_ref().to_owned(), len)
    }

    fn from_source(file: Source, path: PathBuf, len: u64) -> Result<Reader, Error> {
        let header = read_header(&file, &path, len)?;
        let mut r = Reader {
            file,
            path,
            len,
            header,
            index: Index::default(),
            ts_prefix_max: Vec::new(),
            recovery: None,
            cache: Mutex::new(Cache { blocks: VecDeque::new(), payload: None, group: None }),
        };
        match r.read_footer() {
            Ok(index) => r.index = index,
            Err(reason) => {
                let scan = r.scan();
                r.index = scan.builder.finish(Summary::default());
                r.recovery = Some(Recovery { reason, problems: scan.problems });
            }
        }
        let mut m = 0;
        r.ts_prefix_max = r
            .index
            .blocks
            .iter()
            .map(|b| {
                m = m.max(b.max_ts);
                m
            })
            .collect();
        Ok(r)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// File size in bytes.
    pub fn file_len(&self) -> u64 {
        self.len
    }
    /// Recording metadata.
    pub fn meta(&self) -> &Metadata {
        &self.header.meta
    }
    /// Format version `(major, minor)` of the file.
    pub fn version(&self) -> (u16, u16) {
        (self.header.major, self.header.minor)
    }
    /// The index.
    pub fn index(&self) -> &Index {
        &self.index
    }
    /// `Some` when the footer was missing or damaged and the index was rebuilt.
    pub fn recovery(&self) -> Option<&Recovery> {
        self.recovery.as_ref()
    }
    /// Events of kinds this reader does not know (written by a newer
    /// version); they are skipped by every iterator.
    pub fn skipped_unknown(&self) -> u64 {
        self.index.counts.iter().filter(|(k, _)| Kind::from_id(*k).is_none()).map(|c| c.1).sum()
    }
    /// Number of events in the log (all kinds).
    pub fn event_count(&self) -> u64 {
        self.index.events
    }
    /// Sequence number one past the last event.
    pub fn end_seq(&self) -> u64 {
        self.index.blocks.last().map(|b| b.first_seq.saturating_add(b.count as u64)).unwrap_or(0)
    }

    /// All events in order.
    pub fn events(&self) -> Events<'_> {
        self.events_from(0)
    }

    /// Events from sequence number `seq` on (from the next existing one if
    /// `seq` was lost).
    pub fn events_from(&self, seq: u64) -> Events<'_> {
        let bi = self.index.block_at_or_after_seq(seq);
        Events {
            r: self,
            blocks: Box::new(bi..self.index.blocks.len()),
            cur: Vec::new().into_iter(),
            from_seq: seq,
            tid: None,
            partial: None,
            next_seq: 0,
        }
    }

    /// Events of one thread from `seq` on, reading only blocks that hold it.
    pub fn tid_events(&self, tid: u32, seq: u64) -> Events<'_> {
        let first = self.index.block_at_or_after_seq(seq) as u32;
        let blocks: Vec<usize> = self.index.blocks_of_tid(tid).iter().filter(|&&b| b >= first).map(|&b| b as usize).collect();
        Events {
            r: self,
            blocks: Box::new(blocks.into_iter()),
            cur: Vec::new().into_iter(),
            from_seq: seq,
            tid: Some(tid),
            partial: None,
            next_seq: 0,
        }
    }

    /// The event with sequence number `seq`.
    pub fn get(&self, seq: u64) -> Result<Event, Error> {
        let bi = self.index.block_of_seq(seq).ok_or_else(|| Error::NoSuchEvent {
            path: self.path.clone(),
            seq,
            detail: format!("it holds {} events up to {}", self.index.events, self.end_seq()),
        })?;
        let evs = self.cached_block(bi, &|e| e.seq >= seq)?;
        match evs.binary_search_by_key(&seq, |e| e.seq) {
            Ok(i) => Ok(evs[i].clone()),
            Err(_) => Err(Error::NoSuchEvent { path: self.path.clone(), seq, detail: "it is of a kind this reader does not know".into() }),
        }
    }

    /// Sequence number of the first event (in log order) whose timestamp is
    /// at or after `ts_ns`.
    pub fn seek_ts(&self, ts_ns: u64) -> Result<Option<u64>, Error> {
        let mut bi = self.ts_prefix_max.partition_point(|&m| m < ts_ns);
        while bi < self.index.blocks.len() {
            let evs = self.cached_block(bi, &|e| e.ts_ns >= ts_ns)?;
            if let Some(e) = evs.iter().find(|e| e.ts_ns >= ts_ns) {
                return Ok(Some(e.seq));
            }
            bi += 1;
        }
        Ok(None)
    }

    /// Sequence numbers of the events naming transaction `txn`.
    pub fn txn_seqs(&self, txn: &str) -> &[u64] {
        self.index.seqs_of_txn(txn)
    }

    /// The bytes of a [`Data`]: inline bytes are borrowed, stored ones read
    /// from the payload stream, redacted ones give [`Error::Redacted`].
    pub fn payload<'a>(&self, data: &'a Data) -> Result<Cow<'a, [u8]>, Error> {
        match data {
            Data::Bytes(b) => Ok(Cow::Borrowed(b)),
            Data::Redacted { len, rule, .. } => Err(Error::Redacted { path: self.path.clone(), len: *len, rule: rule.clone() }),
            Data::Stored { offset, len } => {
                let (offset, end) = (*offset, offset.saturating_add(*len as u64));
                let missing = || Error::MissingPayload { path: self.path.clone(), offset, end };
                let mut out = Vec::with_capacity((*len as u64).min(self.index.payload_bytes()) as usize);
                let mut pi = self.index.payload.partition_point(|p| p.start.saturating_add(p.len as u64) <= offset);
                let mut at = offset;
                while at < end {
                    let p = self.index.payload.get(pi).ok_or_else(missing)?;
                    if p.start > at {
                        return Err(missing());
                    }
                    let bytes = self.payload_block(pi)?;
                    let from = (at - p.start) as usize;
                    let to = ((end - p.start) as usize).min(bytes.len());
                    if from >= to {
                        // An index whose payload pieces overlap or are out of order (a damaged file).
                        return Err(missing());
                    }
                    out.extend_from_slice(&bytes[from..to]);
                    at = p.start + to as u64;
                    pi += 1;
                }
                Ok(Cow::Owned(out))
            }
        }
    }

    /// The content of a stored file, checked against its hash.
    pub fn file(&self, hash: &FileHash) -> Result<Vec<u8>, Error> {
        let missing = |detail: String| Error::MissingFile { path: self.path.clone(), hash: hash.to_hex(), detail };
        let info = self.index.file(hash).ok_or_else(|| missing(String::new()))?;
        let mut out = Vec::with_capacity(info.size.min(self.len.saturating_mul(8)) as usize);
        for c in &info.chunks {
            if c.at != out.len() as u64 {
                return Err(missing(format!(" (chunk at {} of {} bytes is missing)", out.len(), info.size)));
            }
            let (_, raw) = self.read_frame(c.offset, c.frame_len as u64)?;
            let data = raw.get(48..).ok_or_else(|| self.bad_block(c.offset, "file", "chunk shorter than its prefix".into()))?;
            out.extend_from_slice(data);
        }
        if out.len() as u64 != info.size {
            return Err(missing(format!(" (only {} of {} bytes present)", out.len(), info.size)));
        }
        if FileHash::of(&out) != *hash {
            return Err(missing(" (content does not match its hash)".into()));
        }
        Ok(out)
    }

    /// Checks every frame of the file and the footer index. Never fails on
    /// damage: damage is what it reports.
    pub fn verify(&self) -> VerifyReport {
        let scan = self.scan();
        let scanned = scan.builder.finish(Summary::default());
        let footer_ok = self.recovery.is_none() && scanned.blocks == self.index.blocks && scanned.payload == self.index.payload;
        let mut problems = scan.problems;
        if self.recovery.is_none() && !footer_ok {
            problems.push(Problem {
                offset: self.len.saturating_sub(TRAILER_LEN as u64),
                len: TRAILER_LEN as u64,
                what: "footer index does not match the blocks in the file".into(),
                lost: "nothing (the index is rebuilt by scanning)".into(),
            });
        }
        if let Some(r) = &self.recovery {
            problems.push(Problem {
                offset: self.len.saturating_sub(TRAILER_LEN as u64).max(self.header.len),
                len: 0,
                what: format!("no usable footer index: {}", r.reason),
                lost: "nothing (the index is rebuilt by scanning)".into(),
            });
        }
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for b in &scanned.blocks {
            let end = b.first_seq.saturating_add(b.count as u64);
            match ranges.last_mut() {
                Some(r) if r.1 == b.first_seq => r.1 = end,
                _ => ranges.push((b.first_seq, end)),
            }
        }
        let files_ok = scanned.files.iter().filter(|f| self.file(&f.hash).is_ok()).count();
        for f in &scanned.files {
            if let Err(e) = self.file(&f.hash) {
                problems.push(Problem {
                    offset: f.chunks.first().map(|c| c.offset).unwrap_or(0),
                    len: 0,
                    what: format!("file store: {e}"),
                    lost: format!("file {} ({} bytes)", f.hash.to_hex(), f.size),
                });
            }
        }
        VerifyReport {
            problems,
            events_ok: scanned.events,
            recovered_ranges: ranges,
            payload_ok: scanned.payload.iter().map(|p| p.len as u64).sum(),
            files_ok,
            footer_ok,
        }
    }

    // ---- internals ----

    fn bad_block(&self, offset: u64, kind: &'static str, reason: String) -> Error {
        Error::BadBlock { path: self.path.clone(), offset, kind, reason }
    }

    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, offset).map_err(|e| Error::io(&self.path, e))?;
        Ok(buf)
    }

    /// Reads the frame at `offset`: its checked header and its stored body
    /// (checked by [`format::open_body`]).
    fn read_stored(&self, offset: u64, frame_len: u64) -> Result<(FrameHeader, Vec<u8>), Error> {
        if offset.checked_add(frame_len).is_none_or(|e| e > self.len) || frame_len < FRAME_HEADER_LEN as u64 {
            return Err(self.bad_block(
                offset,
                "frame",
                format!("frame of {frame_len} bytes lies beyond the end of the file ({} bytes)", self.len),
            ));
        }
        let mut buf = self.read_at(offset, frame_len)?;
        let h = FrameHeader::decode(&buf).map_err(|r| self.bad_block(offset, "frame", r.into()))?;
        if h.frame_len() != frame_len {
            return Err(self.bad_block(offset, h.kind.name(), format!("frame is {} bytes, index says {frame_len}", h.frame_len())));
        }
        buf.drain(..FRAME_HEADER_LEN);
        Ok((h, buf))
    }

    /// Reads and opens the frame at `offset`.
    fn read_frame(&self, offset: u64, frame_len: u64) -> Result<(FrameHeader, Vec<u8>), Error> {
        let (h, stored) = self.read_stored(offset, frame_len)?;
        let raw = format::open_body(&h, &stored).map_err(|r| self.bad_block(offset, h.kind.name(), r))?;
        Ok((h, raw))
    }

    /// Decodes block `bi` of the index (not cached).
    /// Decodes block `bi` up to the first event for which `stop` is true;
    /// says whether it holds the whole block.
    fn decode_block_until(&self, bi: usize, stop: &mut dyn FnMut(&Event) -> bool) -> Result<(Vec<Event>, bool), Error> {
        let b = self.index.blocks.get(bi).ok_or_else(|| self.bad_block(0, "index", format!("no block {bi}")))?;
        let (h, raw) = self.read_frame(b.offset, b.frame_len as u64)?;
        if h.kind != FrameKind::Events || h.a != b.first_seq {
            return Err(self.bad_block(b.offset, h.kind.name(), format!("expected the events block starting at event {}", b.first_seq)));
        }
        block::decode_until(&raw, b.first_seq, Some(b.count), self.header.major, stop)
            .map(|d| (d.events, d.complete))
            .map_err(|e| Error::BadEvent { path: self.path.clone(), offset: b.offset, seq: b.first_seq + e.index as u64, reason: e.reason })
    }

    /// The events of block `bi`, decoded at least up to the first one for
    /// which `want` is true (all of them when there is none), from the cache
    /// when it holds them. A block met for the first time is decoded only
    /// that far; one asked for again past what was decoded is decoded whole
    /// (so reading a block event by event decodes it at most twice).
    fn cached_block(&self, bi: usize, want: &dyn Fn(&Event) -> bool) -> Result<Arc<Vec<Event>>, Error> {
        let mut seen = false;
        if let Some((_, v, complete)) = self.cache.lock().unwrap().blocks.iter().find(|(i, ..)| *i == bi) {
            if *complete || v.iter().any(want) {
                return Ok(v.clone());
            }
            seen = true;
        }
        let (evs, complete) = self.decode_block_until(bi, &mut |e| !seen && want(e))?;
        let v = Arc::new(evs);
        let mut c = self.cache.lock().unwrap();
        let mut evicted: Vec<_> = Vec::new();
        c.blocks.retain(|(i, ..)| *i != bi);
        if c.blocks.len() >= CACHE_BLOCKS {
            evicted.extend(c.blocks.pop_front());
        }
        c.blocks.push_back((bi, v.clone(), complete));
        drop(c);
        for (_, evs, _) in evicted {
            drop_later(evs);
        }
        Ok(v)
    }

    fn payload_block(&self, pi: usize) -> Result<Arc<Vec<u8>>, Error> {
        if let Some((i, v)) = &self.cache.lock().unwrap().payload {
            if *i == pi {
                return Ok(v.clone());
            }
        }
        let p = &self.index.payload[pi];
        let (h, stored) = self.read_stored(p.offset, p.frame_len as u64)?;
        if h.kind != FrameKind::Payload || h.a != p.start || h.raw_len != p.len {
            return Err(self.bad_block(p.offset, h.kind.name(), format!("expected payload bytes from {}", p.start)));
        }
        // A frame inside a dictionary group (format 2.2) decodes after the
        // group's earlier frames: the cached state after the frame before it
        // when reading in order, or learnt from the group's first frame on.
        let pos = if h.codec == format::CODEC_FIELDS { h.b } else { 0 };
        let mut g = crate::payload::Group::default();
        if pos > 0 {
            let cached = self.cache.lock().unwrap().group.take_if(|(i, _)| *i + 1 == pi);
            match cached {
                Some((_, c)) => g = c,
                None => self.learn_group(pi, pos, &mut g)?,
            }
        }
        let raw = format::open_body_in(&h, &stored, Some(&mut g)).map_err(|r| self.bad_block(p.offset, h.kind.name(), r))?;
        if raw.len() != p.len as usize {
            return Err(self.bad_block(p.offset, h.kind.name(), format!("expected {} payload bytes, decoded {}", p.len, raw.len())));
        }
        let v = Arc::new(raw);
        let mut c = self.cache.lock().unwrap();
        c.payload = Some((pi, v.clone()));
        c.group = Some((pi, g));
        Ok(v)
    }

    /// Learns into `g` the dictionaries of the `pos` payload frames before
    /// frame `pi` of the index, the earlier frames of its dictionary group.
    fn learn_group(&self, pi: usize, pos: u64, g: &mut crate::payload::Group) -> Result<(), Error> {
        let p = &self.index.payload[pi];
        let lost = |why: String| {
            self.bad_block(
                p.offset,
                "payload",
                format!("frame {pos} of a dictionary group cannot be decoded without the group's earlier frames: {why}"),
            )
        };
        let first = pi.checked_sub(pos as usize).ok_or_else(|| lost(format!("only {pi} payload frames come before it")))?;
        for (k, j) in (first..pi).enumerate() {
            let q = &self.index.payload[j];
            let next = &self.index.payload[j + 1];
            let (h, stored) = self.read_stored(q.offset, q.frame_len as u64).map_err(|e| lost(e.to_string()))?;
            if h.kind != FrameKind::Payload
                || h.codec != format::CODEC_FIELDS
                || h.b != k as u64
                || q.start.checked_add(q.len as u64) != Some(next.start)
            {
                return Err(lost(format!(
                    "the payload frame at byte offset {} is not frame {k} of the group (frame {} of one, bytes {}..{})",
                    q.offset,
                    h.b,
                    q.start,
                    q.start.saturating_add(q.len as u64)
                )));
            }
            if crc32c::crc32c(&stored) != h.body_crc {
                return Err(lost(format!("the payload frame at byte offset {}: body checksum mismatch", q.offset)));
            }
            crate::payload::learn(&stored, h.raw_len as usize, g)
                .map_err(|e| lost(format!("the payload frame at byte offset {}: {e}", q.offset)))?;
        }
        Ok(())
    }

    fn read_footer(&self) -> Result<Index, String> {
        if self.len < self.header.len + TRAILER_LEN as u64 {
            return Err("no footer (the recording did not finish)".into());
        }
        let t = self.read_at(self.len - TRAILER_LEN as u64, TRAILER_LEN as u64).map_err(|e| e.to_string())?;
        let (off, flen) = format::decode_trailer(&t).ok_or("no footer (the recording did not finish or the end of the file is damaged)")?;
        if off < self.header.len || off.checked_add(flen) != Some(self.len - TRAILER_LEN as u64) {
            return Err(format!("trailer points at a footer at byte {off} of {flen} bytes, outside the file"));
        }
        let (h, raw) = self.read_frame(off, flen).map_err(|e| format!("footer damaged: {e}"))?;
        if h.kind != FrameKind::Footer {
            return Err(format!("trailer points at a {} frame, not the footer", h.kind.name()));
        }
        let index: Index = postcard::from_bytes(&raw).map_err(|e| format!("footer index undecodable: {e}"))?;
        // Sanity: everything the index points at lies within the file, in order.
        let mut prev_end = 0;
        for b in &index.blocks {
            if b.offset < self.header.len || b.offset.saturating_add(b.frame_len as u64) > off || b.first_seq < prev_end {
                return Err(format!("footer index is inconsistent (block at byte {})", b.offset));
            }
            prev_end = b.first_seq.saturating_add(b.count as u64);
        }
        let nb = index.blocks.len() as u32;
        if index.tids.iter().any(|(_, bs)| bs.iter().any(|b| *b >= nb))
            || !index.tids.windows(2).all(|w| w[0].0 < w[1].0)
            || !index.txns.windows(2).all(|w| w[0].0 < w[1].0)
        {
            return Err("footer index is inconsistent (thread or transaction table)".into());
        }
        if index.payload.iter().any(|p| p.offset.saturating_add(p.frame_len as u64) > off)
            || index.files.iter().flat_map(|f| &f.chunks).any(|c| c.offset.saturating_add(c.frame_len as u64) > off)
        {
            return Err("footer index points beyond its own position".into());
        }
        Ok(index)
    }

    /// Scans every frame from the header on.
    fn scan(&self) -> ScanResult {
        let mut s = ScanResult { builder: IndexBuilder::default(), problems: Vec::new(), footer_at: None };
        let mut pos = self.header.len;
        let end = self.len;
        // Problems found by resynchronising, whose losses are known only from neighbours.
        let mut resyncs: Vec<usize> = Vec::new();
        // The payload dictionary group being read: next position, next start, dictionaries.
        let mut chain: Option<(u64, u64, crate::payload::Group)> = None;
        // Where the last group broke (a damaged or missing payload frame).
        let mut chain_lost: Option<u64> = None;
        while pos < end {
            if end - pos < FRAME_HEADER_LEN as u64 {
                if end - pos == TRAILER_LEN as u64 && s.footer_at.is_some() {
                    break;
                }
                s.problems.push(Problem {
                    offset: pos,
                    len: end - pos,
                    what: "file ends inside a frame header".into(),
                    lost: "the block being written when the recording stopped".into(),
                });
                break;
            }
            let hb = match self.read_at(pos, FRAME_HEADER_LEN as u64) {
                Ok(b) => b,
                Err(e) => {
                    s.problems.push(Problem {
                        offset: pos,
                        len: end - pos,
                        what: e.to_string(),
                        lost: "everything after this offset".into(),
                    });
                    break;
                }
            };
            let h = match FrameHeader::decode(&hb) {
                Ok(h) => h,
                Err(reason) => {
                    if end - pos == TRAILER_LEN as u64
                        && format::decode_trailer(&self.read_at(pos, TRAILER_LEN as u64).unwrap_or_default()).is_some()
                    {
                        break;
                    }
                    let next = self.resync(pos + 1);
                    resyncs.push(s.problems.len());
                    s.problems.push(Problem {
                        offset: pos,
                        len: next - pos,
                        what: format!("unreadable bytes: {reason}"),
                        lost: String::new(),
                    });
                    pos = next;
                    continue;
                }
            };
            let flen = h.frame_len();
            if pos + flen > end {
                s.problems.push(Problem {
                    offset: pos,
                    len: end - pos,
                    what: format!("{} frame cut short ({} of {} bytes present)", h.kind.name(), end - pos, flen),
                    lost: lost_of(&h),
                });
                break;
            }
            let body = match self.read_at(pos + FRAME_HEADER_LEN as u64, h.stored_len as u64) {
                Ok(b) => b,
                Err(e) => {
                    s.problems.push(frame_problem(pos, flen, &h, e.to_string()));
                    break;
                }
            };
            // Payload frames of a dictionary group (format 2.2) decode in turn
            // from the group's first frame; a damaged one costs the rest of its group.
            let opened = if h.kind == FrameKind::Payload && h.codec == format::CODEC_FIELDS {
                if h.b == 0 {
                    chain = Some((0, h.a, crate::payload::Group::default()));
                }
                let r = match &mut chain {
                    Some((next, start, g)) if *next == h.b && *start == h.a => format::open_body_in(&h, &body, Some(g)),
                    Some((next, ..)) => Err(format!(
                        "frame {} of a dictionary group whose frame {next} is missing (lost before byte offset {pos}): \
                         its dictionaries are lost, so it cannot be decoded (the next group decodes again)",
                        h.b
                    )),
                    None => Err(match chain_lost {
                        Some(at) => format!(
                            "frame {} of a dictionary group whose earlier frame at byte offset {at} is damaged or missing: \
                             its dictionaries are lost, so it cannot be decoded (the next group decodes again)",
                            h.b
                        ),
                        None => format!("frame {} of a dictionary group whose first frames are missing", h.b),
                    }),
                };
                match &r {
                    Ok(_) => {
                        if let Some((next, start, _)) = &mut chain {
                            *next += 1;
                            *start = h.a + h.raw_len as u64;
                        }
                    }
                    Err(_) => {
                        if chain.take().is_some() {
                            chain_lost = Some(pos);
                        }
                    }
                }
                r
            } else {
                format::open_body(&h, &body)
            };
            match opened {
                Err(reason) => s.problems.push(frame_problem(pos, flen, &h, format!("{} block: {reason}", h.kind.name()))),
                Ok(raw) => match h.kind {
                    FrameKind::Events => match u32::try_from(h.b).ok().map(|c| block::decode(&raw, h.a, Some(c), self.header.major)) {
                        Some(Ok(d)) => {
                            let (mut min_ts, mut max_ts) = (u64::MAX, 0);
                            for e in &d.events {
                                min_ts = min_ts.min(e.ts_ns);
                                max_ts = max_ts.max(e.ts_ns);
                                s.builder.note_event(e);
                            }
                            for k in &d.unknown {
                                s.builder.note_unknown(*k);
                            }
                            if d.events.is_empty() {
                                min_ts = 0;
                            }
                            let prev_end = s.builder.index.blocks.last().map(|b| b.first_seq.saturating_add(b.count as u64)).unwrap_or(0);
                            if h.a < prev_end {
                                s.problems.push(Problem {
                                    offset: pos,
                                    len: flen,
                                    what: format!("events block repeats event {} (already seen up to {})", h.a, prev_end),
                                    lost: "nothing (duplicate ignored)".into(),
                                });
                            } else {
                                s.builder.add_block(BlockInfo {
                                    offset: pos,
                                    frame_len: flen as u32,
                                    first_seq: h.a,
                                    count: h.b as u32,
                                    min_ts,
                                    max_ts,
                                });
                            }
                        }
                        Some(Err(e)) => s.problems.push(frame_problem(
                            pos,
                            flen,
                            &h,
                            format!("events block: event {}: {}", h.a + e.index as u64, e.reason),
                        )),
                        None => s.problems.push(frame_problem(pos, flen, &h, "events block: count out of range")),
                    },
                    FrameKind::Payload => {
                        if raw.len() as u32 != h.raw_len {
                            s.problems.push(frame_problem(pos, flen, &h, "payload block length mismatch"));
                        } else {
                            s.builder.add_payload(PayloadInfo { offset: pos, frame_len: flen as u32, start: h.a, len: raw.len() as u32 });
                        }
                    }
                    FrameKind::File => {
                        if raw.len() < 48 {
                            s.problems.push(frame_problem(pos, flen, &h, "file chunk shorter than its prefix"));
                        } else {
                            let hash = FileHash(raw[0..32].try_into().unwrap());
                            let total = format::u64_at(&raw, 32);
                            let at = format::u64_at(&raw, 40);
                            s.builder.add_file_chunk(hash, total, ChunkInfo { at, offset: pos, frame_len: flen as u32 });
                        }
                    }
                    FrameKind::Footer => s.footer_at = Some(pos),
                },
            }
            pos += flen;
        }
        // Say what resynchronisation lost, from the neighbouring good blocks.
        for pi in resyncs {
            let p = &s.problems[pi];
            let blocks = &s.builder.index.blocks;
            let before = blocks.iter().rev().find(|b| b.offset < p.offset).map(|b| b.first_seq.saturating_add(b.count as u64)).unwrap_or(0);
            let after = blocks.iter().find(|b| b.offset > p.offset).map(|b| b.first_seq);
            let pays = &s.builder.index.payload;
            let pbefore = pays.iter().rev().find(|b| b.offset < p.offset).map(|b| b.start.saturating_add(b.len as u64)).unwrap_or(0);
            let pafter = pays.iter().find(|b| b.offset > p.offset).map(|b| b.start);
            let mut lost = Vec::new();
            match after {
                Some(a) if a > before => lost.push(format!("events {before}..{} ({} events)", a - 1, a - before)),
                None => lost.push(format!("any events from {before} on in this region")),
                _ => {}
            }
            if let Some(a) = pafter {
                if a > pbefore {
                    lost.push(format!("payload bytes {pbefore}..{a}"));
                }
            }
            let lost = if lost.is_empty() { "no events (a payload or file chunk at most)".to_owned() } else { lost.join(", ") };
            s.problems[pi].lost = lost;
        }
        s
    }

    /// Next offset at or after `from` where a valid frame header starts
    /// (or the end of the file).
    fn resync(&self, from: u64) -> u64 {
        const WINDOW: u64 = 1 << 20;
        let mut at = from;
        while at < self.len {
            let n = WINDOW.min(self.len - at) + FRAME_HEADER_LEN as u64;
            let n = n.min(self.len - at);
            let Ok(buf) = self.read_at(at, n) else {
                return self.len;
            };
            let mut i = 0;
            while let Some(k) = find(&buf[i..], &FRAME_MAGIC) {
                let p = i + k;
                if p + FRAME_HEADER_LEN <= buf.len() {
                    if FrameHeader::decode(&buf[p..p + FRAME_HEADER_LEN]).is_ok() {
                        return at + p as u64;
                    }
                } else if at + (p as u64) + (FRAME_HEADER_LEN as u64) <= self.len {
                    // Header straddles the window: look again from here.
                    break;
                }
                i = p + 1;
            }
            if at + n >= self.len {
                // Keep a trailer, if one is there, out of the unreadable region.
                return self.len;
            }
            at += n - FRAME_HEADER_LEN as u64;
        }
        self.len
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn frame_problem(offset: u64, len: u64, h: &FrameHeader, what: impl Into<String>) -> Problem {
    Problem { offset, len, what: what.into(), lost: lost_of(h) }
}

fn lost_of(h: &FrameHeader) -> String {
    match h.kind {
        FrameKind::Events if h.b > 0 => {
            format!("events {}..{} ({} events)", h.a, h.a + h.b - 1, h.b)
        }
        FrameKind::Events => "an empty events block".into(),
        FrameKind::Payload => format!("payload bytes {}..{}", h.a, h.a + h.raw_len as u64),
        FrameKind::File => format!("a file-store chunk at {} of a {}-byte file", h.a, h.b),
        FrameKind::Footer => "the footer index (rebuilt by scanning)".into(),
    }
}

fn read_header(file: &Source, path: &Path, len: u64) -> Result<format::Header, Error> {
    let want = len.min(4096) as usize;
    let mut buf = vec![0u8; want];
    file.read_exact_at(&mut buf, 0).map_err(|e| Error::io(path, e))?;
    match format::decode_header(path, &buf)? {
        Ok(h) => Ok(h),
        Err(needed) => {
            if needed as u64 > len {
                return Err(Error::BadHeader { path: path.to_owned(), reason: format!("header needs {needed} bytes, file has {len}") });
            }
            let mut buf = vec![0u8; needed];
            file.read_exact_at(&mut buf, 0).map_err(|e| Error::io(path, e))?;
            format::decode_header(path, &buf)?
                .map_err(|n| Error::BadHeader { path: path.to_owned(), reason: format!("header needs {n} bytes") })
        }
    }
}

/// Iterator over events (see [`Reader::events`]). Yields an error for a
/// damaged block, then goes on with the next block.
pub struct Events<'a> {
    r: &'a Reader,
    blocks: Box<dyn Iterator<Item = usize> + 'a>,
    cur: std::vec::IntoIter<Event>,
    from_seq: u64,
    tid: Option<u32>,
    /// The block `cur` came from when it was decoded only up to the first
    /// event wanted (the first block of a seek); the rest is decoded when needed.
    partial: Option<usize>,
    /// Sequence number after the last event yielded.
    next_seq: u64,
}

impl Events<'_> {
    fn wanted(&self, e: &Event) -> bool {
        e.seq >= self.from_seq.max(self.next_seq) && self.tid.is_none_or(|t| t == e.tid)
    }
}

impl Iterator for Events<'_> {
    type Item = Result<Event, Error>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            while let Some(e) = self.cur.next() {
                if self.wanted(&e) {
                    self.next_seq = e.seq + 1;
                    return Some(Ok(e));
                }
            }
            // The first block is decoded only up to the first event wanted.
            let (bi, seeking) = match self.partial.take() {
                Some(bi) => (bi, false),
                None => {
                    let bi = self.blocks.next()?;
                    let first_seq = self.r.index.blocks.get(bi).map(|b| b.first_seq).unwrap_or(0);
                    (bi, self.next_seq == 0 && (self.tid.is_some() || self.from_seq > first_seq))
                }
            };
            let (from, tid) = (self.from_seq, self.tid);
            let mut stop = |e: &Event| seeking && e.seq >= from && tid.is_none_or(|t| t == e.tid);
            match self.r.decode_block_until(bi, &mut stop) {
                Ok((v, complete)) => {
                    if !complete {
                        self.partial = Some(bi);
                    }
                    self.cur = v.into_iter();
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
