//! The index kept in the footer (or rebuilt by scanning when there is none).
//!
//! It locates every event block by sequence number and time, every piece of
//! the payload stream by logical offset, every file in the file store by
//! hash, and lists which blocks hold each thread's events and which events
//! name each transaction id. Every lookup is a binary search followed by one
//! block read.

use crate::event::{Event, FileHash, Kind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where an event block is and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    /// File offset of the frame.
    pub offset: u64,
    /// Frame length on disk (header included).
    pub frame_len: u32,
    /// Sequence number of its first event.
    pub first_seq: u64,
    /// Number of events (known and unknown kinds).
    pub count: u32,
    /// Smallest timestamp in the block.
    pub min_ts: u64,
    /// Largest timestamp in the block.
    pub max_ts: u64,
}

/// Where a piece of the payload stream is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadInfo {
    /// File offset of the frame.
    pub offset: u64,
    /// Frame length on disk.
    pub frame_len: u32,
    /// Logical offset of its first byte in the payload stream.
    pub start: u64,
    /// Number of payload bytes.
    pub len: u32,
}

/// One chunk of a stored file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    /// Offset of the chunk in the file's content.
    pub at: u64,
    /// File offset of the frame.
    pub offset: u64,
    /// Frame length on disk.
    pub frame_len: u32,
}

/// A file in the file store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Content hash.
    pub hash: FileHash,
    /// Content length.
    pub size: u64,
    /// Its chunks in content order.
    pub chunks: Vec<ChunkInfo>,
}

/// Recording summary written at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Wall-clock end of the recording, ns since the epoch.
    pub end_time_ns: u64,
    /// Exit code of the recorded program, if it exited.
    pub exit_code: Option<i32>,
    /// Extra key/value facts from the writer (drop counts, redactions...).
    pub extra: Vec<(String, String)>,
}

/// The whole index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Event blocks in sequence order.
    pub blocks: Vec<BlockInfo>,
    /// Payload frames in stream order.
    pub payload: Vec<PayloadInfo>,
    /// Files in the store, sorted by hash.
    pub files: Vec<FileInfo>,
    /// Thread id → indices (into `blocks`) of the blocks holding its events; sorted by tid.
    pub tids: Vec<(u32, Vec<u32>)>,
    /// Transaction id → sequence numbers of the events naming it; sorted by id.
    pub txns: Vec<(String, Vec<u64>)>,
    /// Events per kind id (unknown kinds included).
    pub counts: Vec<(u16, u64)>,
    /// Total events.
    pub events: u64,
    /// End-of-recording summary.
    pub summary: Summary,
}

impl Index {
    /// Index of the block holding `seq`, if any.
    pub fn block_of_seq(&self, seq: u64) -> Option<usize> {
        let i = self.blocks.partition_point(|b| b.first_seq.saturating_add(b.count as u64) <= seq);
        (i < self.blocks.len() && self.blocks[i].first_seq <= seq).then_some(i)
    }
    /// Index of the first block at or after `seq` (for seeking past gaps).
    pub fn block_at_or_after_seq(&self, seq: u64) -> usize {
        self.blocks.partition_point(|b| b.first_seq.saturating_add(b.count as u64) <= seq)
    }
    /// Blocks holding events of `tid`.
    pub fn blocks_of_tid(&self, tid: u32) -> &[u32] {
        match self.tids.binary_search_by_key(&tid, |(t, _)| *t) {
            Ok(i) => &self.tids[i].1,
            Err(_) => &[],
        }
    }
    /// Events naming a transaction.
    pub fn seqs_of_txn(&self, txn: &str) -> &[u64] {
        match self.txns.binary_search_by(|(t, _)| t.as_str().cmp(txn)) {
            Ok(i) => &self.txns[i].1,
            Err(_) => &[],
        }
    }
    /// A stored file.
    pub fn file(&self, hash: &FileHash) -> Option<&FileInfo> {
        self.files.binary_search_by(|f| f.hash.cmp(hash)).ok().map(|i| &self.files[i])
    }
    /// Count of events of a kind.
    pub fn count(&self, kind: Kind) -> u64 {
        self.counts.iter().find(|(k, _)| *k == kind.id()).map(|c| c.1).unwrap_or(0)
    }
    /// Total payload bytes.
    pub fn payload_bytes(&self) -> u64 {
        self.payload.last().map(|p| p.start.saturating_add(p.len as u64)).unwrap_or(0)
    }
}

/// Builds an [`Index`] incrementally (used by the writer and by recovery).
#[derive(Default)]
pub(crate) struct IndexBuilder {
    pub index: Index,
    tids: crate::block::IdMap<u32, Vec<u32>>,
    txns: crate::block::IdMap<String, Vec<u64>>,
    counts: crate::block::IdMap<u16, u64>,
    files: BTreeMap<FileHash, FileInfo>,
}

impl IndexBuilder {
    /// Notes an event of the block being built (the next block to be added).
    pub fn note_event(&mut self, ev: &Event) {
        self.note_event_as(ev, ev.seq)
    }
    /// As [`IndexBuilder::note_event`], the event being number `seq`.
    pub fn note_event_as(&mut self, ev: &Event, seq: u64) {
        let bi = self.index.blocks.len() as u32;
        let v = self.tids.entry(ev.tid).or_default();
        if v.last() != Some(&bi) {
            v.push(bi);
        }
        if let Some(t) = ev.txn() {
            // Look up by &str first: `entry` would allocate a key for every event.
            match self.txns.get_mut(t) {
                Some(v) => v.push(seq),
                None => {
                    self.txns.insert(t.to_owned(), vec![seq]);
                }
            }
        }
        *self.counts.entry(ev.kind().id()).or_default() += 1;
    }
    /// Notes an event of an unknown kind in the block being built.
    pub fn note_unknown(&mut self, kind_id: u16) {
        *self.counts.entry(kind_id).or_default() += 1;
    }
    /// Adds the block whose events were noted.
    pub fn add_block(&mut self, info: BlockInfo) {
        self.index.events += info.count as u64;
        self.index.blocks.push(info);
    }
    /// Records a payload frame.
    pub fn add_payload(&mut self, p: PayloadInfo) {
        self.index.payload.push(p);
    }
    /// Records a chunk of a stored file.
    pub fn add_file_chunk(&mut self, hash: FileHash, size: u64, chunk: ChunkInfo) {
        let f = self.files.entry(hash).or_insert_with(|| FileInfo { hash, size, chunks: Vec::new() });
        f.chunks.push(chunk);
    }
    /// True when the store already holds this file.
    pub fn has_file(&self, hash: &FileHash) -> bool {
        self.files.contains_key(hash)
    }
    /// The finished index.
    pub fn finish(mut self, summary: Summary) -> Index {
        let mut tids: Vec<_> = self.tids.into_iter().collect();
        tids.sort_unstable_by_key(|t| t.0);
        self.index.tids = tids;
        self.index.txns = self.txns.into_iter().collect();
        self.index.txns.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.index.counts = self.counts.into_iter().collect();
        self.index.counts.sort_unstable();
        self.index.files = self
            .files
            .into_values()
            .map(|mut f| {
                f.chunks.sort_by_key(|c| c.at);
                f
            })
            .collect();
        self.index.summary = summary;
        self.index
    }
}
