//! Streaming writer with bounded memory.
//!
//! Events are buffered into one block (~64 KiB raw) and written as a whole
//! frame; large buffers go to the payload stream (tokenized into templates
//! and numbers, in lanes by syscall and fd type: [`crate::payload`]), whose
//! frames are always written before the event frames that refer to them. Files for the file
//! store are written at once, in chunks. If the process is killed at any
//! byte, a reader loses at most the block that was being buffered or
//! written: everything before it is in complete, checksummed frames.

use crate::block::BlockBuilder;
use crate::event::{Data, Event, EventBody, FileHash};
use crate::format::{self, FrameKind};
use crate::index::{BlockInfo, ChunkInfo, Index, IndexBuilder, PayloadInfo, Summary};
use crate::payload::PayloadBuilder;
use crate::{Error, Metadata};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Tuning of a [`Writer`].
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Raw size at which an event block is written (default 64 KiB).
    pub block_size: usize,
    /// Raw size at which payload bytes are written (default 256 KiB).
    pub payload_block_size: usize,
    /// Buffers longer than this go to the payload stream (default 48 bytes).
    pub inline_max: usize,
    /// zstd level (default 1: on event blocks and payload it compresses as well as 3, and faster).
    pub level: i32,
    /// Chunk size of stored files (default 1 MiB).
    pub file_chunk: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions { block_size: 64 << 10, payload_block_size: 256 << 10, inline_max: 48, level: 1, file_chunk: 1 << 20 }
    }
}

/// Figures about a finished log.
#[derive(Clone, Debug)]
pub struct WriteStats {
    /// Events written.
    pub events: u64,
    /// File size in bytes.
    pub bytes: u64,
}

/// Writes a `.kpl` log. See the module documentation.
pub struct Writer<W: Write = File> {
    out: Option<W>,
    name: PathBuf,
    pos: u64,
    opts: WriterOptions,
    block: BlockBuilder,
    payload: PayloadBuilder,
    /// Payload frames finished while an event was being appended, not yet
    /// written: start, length, position in the dictionary group, frame.
    payload_done: Vec<(u64, u32, u64, Vec<u8>)>,
    payload_start: u64,
    next_seq: u64,
    index: IndexBuilder,
    summary: Summary,
    zstd: format::Packer,
    /// The frame being built (kept for its capacity).
    frame: Vec<u8>,
    /// Where each write of the event being appended went in the payload stream (kept for its capacity).
    stored: Vec<Option<(u64, u32)>>,
}

impl Writer<File> {
    /// Creates (or truncates) `path` and writes the header.
    pub fn create(path: impl AsRef<Path>, meta: &Metadata) -> Result<Writer<File>, Error> {
        Self::create_with(path, meta, WriterOptions::default())
    }
    /// As [`Writer::create`], with options.
    pub fn create_with(path: impl AsRef<Path>, meta: &Metadata, opts: WriterOptions) -> Result<Writer<File>, Error> {
        let path = path.as_ref();
        let f = File::create(path).map_err(|e| Error::io(path, e))?;
        Writer::new(f, path, meta, opts)
    }
}

impl<W: Write> Writer<W> {
    /// A writer on any byte sink; `name` is used in error messages.
    pub fn new(mut out: W, name: impl AsRef<Path>, meta: &Metadata, opts: WriterOptions) -> Result<Writer<W>, Error> {
        let name = name.as_ref().to_owned();
        let h = format::encode_header(meta);
        out.write_all(&h).map_err(|e| Error::io(&name, e))?;
        let zstd = format::Packer::new(opts.level).map_err(|e| Error::io(&name, e))?;
        Ok(Writer {
            out: Some(out),
            name,
            pos: h.len() as u64,
            block: BlockBuilder::default(),
            payload: PayloadBuilder::default(),
            payload_done: Vec::new(),
            payload_start: 0,
            next_seq: 0,
            index: IndexBuilder::default(),
            summary: Summary::default(),
            zstd,
            frame: Vec::new(),
            stored: Vec::new(),
            opts,
        })
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes written to the sink so far.
    pub fn bytes_written(&self) -> u64 {
        self.pos
    }

    /// Appends an event and returns its sequence number (the event's own
    /// `seq` is ignored). Buffers longer than `inline_max` move to the
    /// payload stream. The event is dropped here: a caller that makes
    /// events one by one can keep (and reuse) them with [`Writer::append_ref`].
    pub fn append(&mut self, ev: Event) -> Result<u64, Error> {
        self.append_ref(&ev)
    }

    /// As [`Writer::append`], leaving the event to the caller (whose own
    /// `seq` and buffers are not changed): the writer copies what it keeps.
    pub fn append_ref(&mut self, ev: &Event) -> Result<u64, Error> {
        let seq = self.next_seq;
        let inline_max = self.opts.inline_max;
        // Buffers of one kind of source share a lane: the syscall and the type of its file.
        let lane = match &ev.body {
            EventBody::Syscall(s) => ((s.fd_type as u64) << 32) | s.nr as u64,
            b => (1 << 63) | b.kind().id() as u64,
        };
        let mut stored = std::mem::take(&mut self.stored);
        stored.clear();
        ev.data(|d| {
            stored.push(match d {
                Data::Bytes(b) if b.len() > inline_max => Some((self.store_bytes(lane, b), b.len() as u32)),
                _ => None,
            })
        });
        self.block.push_ref(ev, seq, &stored);
        self.stored = stored;
        self.index.note_event_as(ev, seq);
        self.next_seq += 1;
        self.emit_payload_done()?;
        if self.block.raw_len() >= self.opts.block_size {
            self.write_block()?;
        }
        Ok(seq)
    }

    /// Adds a buffer to the payload stream (finishing payload frames as
    /// they fill up) and returns its offset there.
    fn store_bytes(&mut self, lane: u64, b: &[u8]) -> u64 {
        let max = self.opts.payload_block_size.clamp(1, format::MAX_FRAME_LEN as usize / 2);
        let offset = self.payload_start + self.payload.len() as u64;
        let mut rest = b;
        while !rest.is_empty() {
            let n = rest.len().min(max - self.payload.len());
            self.payload.push(lane, &rest[..n]);
            rest = &rest[n..];
            if self.payload.len() >= max {
                let len = self.payload.len() as u32;
                let mut frame = vec![0; format::FRAME_HEADER_LEN];
                let pos = self.payload.finish(&mut self.zstd, &mut frame);
                self.payload_done.push((self.payload_start, len, pos, frame));
                self.payload_start += len as u64;
            }
        }
        offset
    }

    /// Stores a file's content in the file store (once per distinct
    /// content) and returns its hash.
    pub fn store_file(&mut self, content: &[u8]) -> Result<FileHash, Error> {
        let hash = FileHash::of(content);
        if self.index.has_file(&hash) {
            return Ok(hash);
        }
        let total = content.len() as u64;
        let mut at = 0usize;
        loop {
            let end = (at + self.opts.file_chunk).min(content.len());
            let mut raw = Vec::with_capacity(48 + end - at);
            raw.extend_from_slice(&hash.0);
            raw.extend_from_slice(&total.to_le_bytes());
            raw.extend_from_slice(&(at as u64).to_le_bytes());
            raw.extend_from_slice(&content[at..end]);
            let frame = format::build_frame_with(&mut self.zstd.c, FrameKind::File, at as u64, total, &raw);
            let offset = self.emit(&frame)?;
            self.index.add_file_chunk(hash, total, ChunkInfo { at: at as u64, offset, frame_len: frame.len() as u32 });
            at = end;
            if at >= content.len() {
                break;
            }
        }
        Ok(hash)
    }

    /// True when a file with this hash is already stored.
    pub fn has_file(&self, hash: &FileHash) -> bool {
        self.index.has_file(hash)
    }

    /// Adds a key/value fact to the summary written in the footer.
    pub fn set_summary_fact(&mut self, key: &str, value: impl ToString) {
        self.summary.extra.retain(|(k, _)| k != key);
        self.summary.extra.push((key.to_owned(), value.to_string()));
    }

    /// Sets the exit code recorded in the summary.
    pub fn set_exit_code(&mut self, code: Option<i32>) {
        self.summary.exit_code = code;
    }

    /// Writes out buffered events and payload now (a partial block). Use it
    /// to bound what a crash can lose in time as well as in bytes.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.write_block()?;
        let name = self.name.clone();
        self.out.as_mut().expect("writer used after finish").flush().map_err(|e| Error::io(&name, e))
    }

    /// Writes remaining events, the index and the trailer; returns the sink.
    pub fn finish(mut self) -> Result<(W, WriteStats), Error> {
        self.write_block()?;
        if self.summary.end_time_ns == 0 {
            self.summary.end_time_ns = crate::now_ns();
        }
        let index = std::mem::take(&mut self.index).finish(std::mem::take(&mut self.summary));
        let events = index.events;
        let raw = postcard::to_stdvec(&index).expect("index serializes");
        let frame = format::build_frame_with(&mut self.zstd.c, FrameKind::Footer, 0, 0, &raw);
        let offset = self.emit(&frame)?;
        let trailer = format::encode_trailer(offset, frame.len() as u64);
        self.emit(&trailer)?;
        let mut out = self.out.take().expect("writer used after finish");
        out.flush().map_err(|e| Error::io(&self.name, e))?;
        Ok((out, WriteStats { events, bytes: self.pos }))
    }

    /// The index as it stands (blocks written so far).
    pub fn index_so_far(&self) -> &Index {
        &self.index.index
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<u64, Error> {
        let at = self.pos;
        let out = self.out.as_mut().expect("writer used after finish");
        out.write_all(bytes).map_err(|e| Error::io(&self.name, e))?;
        self.pos += bytes.len() as u64;
        Ok(at)
    }

    /// Writes the payload frames finished so far.
    fn emit_payload_done(&mut self) -> Result<(), Error> {
        for (start, len, pos, mut frame) in std::mem::take(&mut self.payload_done) {
            self.emit_payload(start, len, pos, &mut frame)?;
        }
        Ok(())
    }

    /// Writes a payload frame, `pos` its position in its dictionary group.
    fn emit_payload(&mut self, start: u64, len: u32, pos: u64, frame: &mut [u8]) -> Result<(), Error> {
        format::seal_frame(frame, FrameKind::Payload, format::CODEC_FIELDS, start, pos, len);
        let offset = self.emit(frame)?;
        self.index.add_payload(PayloadInfo { offset, frame_len: frame.len() as u32, start, len });
        self.payload_start = start + len as u64;
        Ok(())
    }

    /// Writes the buffered payload bytes as a frame.
    fn write_payload(&mut self) -> Result<(), Error> {
        self.emit_payload_done()?;
        if !self.payload.is_empty() {
            let len = self.payload.len() as u32;
            let mut frame = std::mem::take(&mut self.frame);
            frame.clear();
            frame.resize(format::FRAME_HEADER_LEN, 0);
            let pos = self.payload.finish(&mut self.zstd, &mut frame);
            let r = self.emit_payload(self.payload_start, len, pos, &mut frame);
            self.frame = frame;
            r?;
        }
        Ok(())
    }

    fn write_block(&mut self) -> Result<(), Error> {
        if !self.payload.is_empty() || !self.payload_done.is_empty() {
            self.write_payload()?;
        }
        if self.block.count == 0 {
            return Ok(());
        }
        let (first_seq, count, min_ts, max_ts) = (self.block.first_seq, self.block.count, self.block.min_ts, self.block.max_ts);
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        frame.resize(format::FRAME_HEADER_LEN, 0);
        let raw_len = self.block.finish_columns(&mut self.zstd, &mut frame);
        format::seal_frame(&mut frame, FrameKind::Events, format::CODEC_COLUMNS, first_seq, count as u64, raw_len);
        let offset = self.emit(&frame);
        let frame_len = frame.len() as u32;
        self.frame = frame;
        let offset = offset?;
        self.index.add_block(BlockInfo { offset, frame_len, first_seq, count, min_ts, max_ts });
        Ok(())
    }
}

impl<W: Write> Drop for Writer<W> {
    /// A writer dropped without [`Writer::finish`] (an error, a panic) still
    /// writes what it buffered, without an index: readers rebuild it.
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = self.write_block();
            if let Some(o) = self.out.as_mut() {
                let _ = o.flush();
            }
        }
    }
}
