//! The payload frame codec of format 2: text buffers split into a template
//! and a column of numbers.
//!
//! A payload frame holds consecutive buffers (*pieces*) of the payload
//! stream. Buffers that are text (tab, line feed, carriage return and
//! printable ASCII only) are tokenized: every run of 1 to 18 decimal digits
//! that is not part of a lower-case hexadecimal word (a run of `[0-9a-f]`
//! holding a letter, such as a trace id) leaves the text and becomes a
//! number; the text keeps a marker byte `0x80 + digits` in its place. Each
//! number is stored as the zigzag varint of its difference from the previous
//! number met in the same context (the lane, the four template bytes before
//! it and its digit count) in the `numbers` stream, so counters, lengths and
//! ids that repeat or count up cost next to nothing — or, when the last
//! change in that context was large next to the value (amounts, random ids),
//! as a plain varint in the `wide` stream. The templates of messages and
//! records then repeat exactly, which zstd stores as long matches. Other
//! (binary) buffers go to the lane's `raw` stream as they are.
//!
//! A longer run of digits (an account or card number) leaves the text too,
//! for the lane's `long` stream (digits, then a line feed), behind the marker
//! `0x80`. Format 2.1 stores a lane's long stream coded when it holds 16
//! strings or more (`crate::digits`: each string, or its routing and account
//! parts, as a reference to the same part met before in the frame, new ones
//! packed in binary); 2.0 stored it for zstd, which matched it against the
//! other long numbers only.
//!
//! Within a lane, a template line (up to and including its line feed, or
//! the rest of the buffer) that was met before in the frame is replaced by
//! one byte, `0xc0 + k`: the last line kept in slot `k` of the lane's 64
//! line slots, chosen by the line's hash (format 2.1). Records,
//! log lines and header lines that recur then cost about a byte before zstd
//! instead of a zstd match each, and zstd has far fewer bytes to look at.
//!
//! Buffers from different sources (the writer passes a *lane* hint: the
//! syscall and the type of its file descriptor) go to separate *lanes* of the frame, up to 8, each with its
//! own streams, so that HTTP messages, file records and binary structures
//! do not share zstd's statistics.
//!
//! ```text
//! body    := nlanes(u8) (codec(u8) raw_len(varint) stored_len(varint)){1 + 5 × nlanes} stream*
//! streams := pieces, then for each lane: raw, template, numbers, wide, long
//! pieces  := per buffer: len(varint) mode(u8: lane × 2 + 1 if text) [template_len(varint) if text]
//! ```
//!
//! Each stream is compressed with zstd on its own (codec 1) or stored
//! (codec 0).
//!
//! Dictionary groups (format 2.2): the payload frames of a log form groups
//! of up to [`GROUP_FRAMES`] consecutive frames, and each frame's header
//! gives its position in its group (`b`, 0 for a group's first frame; every
//! frame of a 2.0 or 2.1 log is a first frame). Within a group a lane keeps
//! its number and, from frame to frame, its template line slots and the
//! parts dictionaries of its long digit strings: a line or account met in
//! an earlier frame of the group costs a reference. A frame at position
//! `k` therefore decodes only after the dictionary streams (pieces,
//! templates, long digits) of the `k` frames before it ([`learn`]), and a
//! damaged frame makes the rest of its group unreadable; the next group
//! decodes on its own. The number contexts start fresh in each frame.

use crate::block::put;
use integer_encoding::VarInt;

/// Largest digit run that becomes a number (10^18 < 2^63).
const MAX_DIGITS: usize = 18;
const MARK: u8 = 0x80;
const SLOT_BITS: u32 = 14;
/// Most lanes in a frame.
pub const MAX_LANES: usize = 8;
/// Frames in a dictionary group (format 2.2; see the module documentation).
pub const GROUP_FRAMES: u64 = 16;

#[inline]
fn is_hex(c: u8) -> bool {
    c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Eight bytes of `b` from `i`.
#[inline]
fn load8(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

/// The high bit of each byte of `w` that is a decimal digit. Every byte
/// must be below 0x80 (text): then no sum below carries into the next byte,
/// so each byte is tested exactly (`x = c ^ 0x30` is a digit when below 10,
/// i.e. when `x + 0x76` stays below 0x80).
#[inline]
fn digit_mask(w: u64) -> u64 {
    let x = w ^ (0x30 * ONES);
    !(x + 0x76 * ONES) & HIGH
}

/// As [`digit_mask`], for the letters `a`–`f` (`z = c ^ 0x60` from 1 to 6).
#[inline]
fn letter_mask(w: u64) -> u64 {
    let z = w ^ (0x60 * ONES);
    !(z + 0x79 * ONES) & (z + 0x7f * ONES) & HIGH
}

/// Index of the first decimal digit of the text `b` at or after `i`.
#[inline]
fn next_digit(b: &[u8], mut i: usize) -> Option<usize> {
    while i + 8 <= b.len() {
        let m = digit_mask(load8(b, i));
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..].iter().position(|c| c.is_ascii_digit()).map(|k| i + k)
}

/// End of the run of `[0-9a-f]` of the text `b` that starts at `j`, and
/// whether it holds a letter.
#[inline]
fn hex_run(b: &[u8], mut e: usize) -> (usize, bool) {
    let mut letters = 0u64;
    while e + 8 <= b.len() {
        let w = load8(b, e);
        let l = letter_mask(w);
        let other = !(digit_mask(w) | l) & HIGH;
        if other != 0 {
            let k = other.trailing_zeros();
            letters |= l & ((1u64 << k) - 1);
            return (e + (k / 8) as usize, letters != 0);
        }
        letters |= l;
        e += 8;
    }
    while e < b.len() && is_hex(b[e]) {
        letters |= (b[e] >= b'a') as u64;
        e += 1;
    }
    (e, letters != 0)
}

#[inline]
fn slot(win: u32, digits: usize, lane: usize) -> usize {
    ((win ^ ((digits as u32) << 27) ^ ((lane as u32) << 22)).wrapping_mul(0x9E37_79B1) >> (32 - SLOT_BITS)) as usize
}

#[derive(Default)]
struct Lane {
    key: u64,
    raw: Vec<u8>,
    template: Vec<u8>,
    numbers: Vec<u8>,
    wide: Vec<u8>,
    long: Vec<u8>,
    lines: Lines,
    dict: crate::digits::EncDict,
}

/// Template bytes from `LINE_REF` up stand for a line met before.
const LINE_REF: u8 = 0xc0;
/// Lines a lane remembers: one per slot, the slot chosen by the line's hash.
const LINE_SLOTS: usize = 64;
/// Shorter lines stay as they are.
const MIN_LINE: usize = 8;

/// The template lines of a lane met in this frame, the last one of each
/// hash slot, for the encoder and the decoder alike (both hash every line
/// they keep, so they agree on the slot).
struct Lines {
    hash: [u64; LINE_SLOTS],
    /// Offset and length in `arena`; length 0 for an empty slot.
    at: [(u32, u32); LINE_SLOTS],
    arena: Vec<u8>,
}

impl Clone for Lines {
    fn clone(&self) -> Self {
        Lines { hash: self.hash, at: self.at, arena: self.arena.clone() }
    }
}

impl Default for Lines {
    fn default() -> Self {
        Lines { hash: [0; LINE_SLOTS], at: [(0, 0); LINE_SLOTS], arena: Vec::new() }
    }
}

#[inline]
fn line_hash(l: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x6b70_6c21).hash_one(l)
}

impl Lines {
    fn clear(&mut self) {
        self.at = [(0, 0); LINE_SLOTS];
        self.arena.clear();
    }

    /// Keeps only the lines in the slots (between two frames of a group).
    fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.at.iter().map(|a| a.1 as usize).sum());
        for a in &mut self.at {
            let (o, l) = *a;
            if l > 0 {
                *a = (arena.len() as u32, l);
                arena.extend_from_slice(&self.arena[o as usize..(o + l) as usize]);
            }
        }
        self.arena = arena;
    }

    #[inline]
    fn slot(h: u64) -> usize {
        (h >> 58) as usize
    }

    #[inline]
    fn keep(&mut self, k: usize, h: u64, l: &[u8]) {
        self.hash[k] = h;
        self.at[k] = (self.arena.len() as u32, l.len() as u32);
        self.arena.extend_from_slice(l);
    }

    /// Replaces the lines of `t[t0..]` met before with their slots (see the module documentation).
    fn encode(&mut self, t: &mut Vec<u8>, t0: usize) {
        let (mut r, mut w, end) = (t0, t0, t.len());
        while r < end {
            let e = memchr::memchr(b'\n', &t[r..end]).map_or(end, |k| r + k + 1);
            if e - r >= MIN_LINE {
                let h = line_hash(&t[r..e]);
                let k = Self::slot(h);
                let (o, l) = self.at[k];
                if self.hash[k] == h && l as usize == e - r && self.arena[o as usize..(o + l) as usize] == t[r..e] {
                    t[w] = LINE_REF + k as u8;
                    w += 1;
                    r = e;
                    continue;
                }
                self.keep(k, h, &t[r..e]);
            }
            t.copy_within(r..e, w);
            w += e - r;
            r = e;
        }
        t.truncate(w);
    }

    /// Expands the stored template `t` of one buffer into `out`, which may
    /// not grow past `max` bytes (each template byte gives at least one
    /// byte of the buffer).
    fn decode(&mut self, t: &[u8], out: &mut Vec<u8>, max: usize) -> Result<(), String> {
        let mut r = 0;
        while r < t.len() {
            if t[r] >= LINE_REF {
                let k = (t[r] - LINE_REF) as usize;
                let (o, l) = self.at[k];
                if l == 0 {
                    return Err(format!("template line reference to empty slot {k}"));
                }
                if out.len() + l as usize > max {
                    return Err(format!("template line {k} makes the buffer longer than its {max} bytes"));
                }
                out.extend_from_slice(&self.arena[o as usize..(o + l) as usize]);
                r += 1;
                continue;
            }
            let e = memchr::memchr(b'\n', &t[r..]).map_or(t.len(), |k| r + k + 1);
            if out.len() + e - r > max {
                return Err(format!("template longer than its buffer's {max} bytes"));
            }
            out.extend_from_slice(&t[r..e]);
            if e - r >= MIN_LINE {
                let h = line_hash(&t[r..e]);
                self.keep(Self::slot(h), h, &t[r..e]);
            }
            r = e;
        }
        Ok(())
    }
}

/// Accumulates the buffers of one payload frame.
pub(crate) struct PayloadBuilder {
    pieces: Vec<u8>,
    lanes: Vec<Lane>,
    used: usize,
    slots: Vec<Slot>,
    len: usize,
    /// Compressed streams of the frame being finished (kept for its capacity).
    packed: Vec<u8>,
    /// A long stream in coded form (kept for its capacity).
    coded: Vec<u8>,
    /// Position in its dictionary group of the frame being built.
    group_pos: u64,
}

/// What a number context remembers: the last value, and whether the last
/// change was large next to the value (then the next value is stored as it
/// is, in the `wide` stream, rather than as a difference).
#[derive(Clone, Copy, Default)]
struct Slot {
    last: u64,
    wide: bool,
}

impl Slot {
    #[inline]
    fn update(&mut self, v: u64) {
        self.wide = v.abs_diff(self.last) > v >> 2;
        self.last = v;
    }
}

impl Default for PayloadBuilder {
    fn default() -> Self {
        PayloadBuilder {
            pieces: Vec::new(),
            lanes: Vec::new(),
            used: 0,
            slots: vec![Slot::default(); 1 << SLOT_BITS],
            len: 0,
            packed: Vec::new(),
            coded: Vec::new(),
            group_pos: 0,
        }
    }
}

impl PayloadBuilder {
    /// Logical bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no buffer is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds one buffer; `lane` groups buffers of the same source. An empty
    /// buffer adds nothing (and no piece, which keeps every stream smaller
    /// than ten bytes per payload byte, as the decoder checks).
    pub fn push(&mut self, lane: u64, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        self.len += b.len();
        let li = match self.lanes[..self.used].iter().position(|l| l.key == lane) {
            Some(i) => i,
            None if self.used < MAX_LANES => {
                if self.lanes.len() == self.used {
                    self.lanes.push(Lane::default());
                }
                self.lanes[self.used].key = lane;
                self.used += 1;
                self.used - 1
            }
            None => (lane % MAX_LANES as u64) as usize,
        };
        let Lane { raw, template, numbers, wide, long, lines, .. } = &mut self.lanes[li];
        put(&mut self.pieces, b.len() as u64);
        // Text: every byte printable ASCII, tab, LF or CR (checked without branches).
        let text =
            !b.is_empty() && b.iter().fold(true, |a, &c| a & ((0x20..0x7f).contains(&c) | (c == b'\t') | (c == b'\n') | (c == b'\r')));
        if !text {
            self.pieces.push((li * 2) as u8);
            raw.extend_from_slice(b);
            return;
        }
        let t0 = template.len();
        let (mut copied, mut i) = (0, 0);
        while let Some(j) = next_digit(b, i) {
            // The run of [0-9a-f] around the digit: a number only if it holds no letter.
            let mut s = j;
            while s > i && is_hex(b[s - 1]) {
                s -= 1;
            }
            let (e, letters) = hex_run(b, j);
            i = e;
            if s < j || letters {
                continue;
            }
            template.extend_from_slice(&b[copied..j]);
            copied = e;
            if e - j > MAX_DIGITS {
                // A long digit string (an account or card number): to its own stream.
                template.push(MARK);
                long.extend_from_slice(&b[j..e]);
                long.push(b'\n');
                continue;
            }
            let t = &template[t0..];
            let win = t[t.len().saturating_sub(4)..].iter().fold(0u32, |w, &c| (w << 8) | c as u32);
            let run = &b[j..e];
            let v = run.iter().fold(0u64, |v, &d| v * 10 + (d - b'0') as u64);
            template.push(MARK + run.len() as u8);
            let sl = &mut self.slots[slot(win, run.len(), li)];
            if sl.wide {
                put(wide, v);
            } else {
                put(numbers, v.wrapping_sub(sl.last) as i64);
            }
            sl.update(v);
        }
        template.extend_from_slice(&b[copied..]);
        lines.encode(template, t0);
        self.pieces.push((li * 2 + 1) as u8);
        put(&mut self.pieces, (template.len() - t0) as u64);
    }

    /// Appends the frame body to `head` and returns the frame's position in
    /// its dictionary group (the frame header's `b`); resets the builder,
    /// keeping its dictionaries for the group's next frame.
    pub(crate) fn finish(&mut self, p: &mut crate::format::Packer, head: &mut Vec<u8>) -> u64 {
        head.push(self.used as u8);
        let mut data = std::mem::take(&mut self.packed);
        data.clear();
        let mut coded = std::mem::take(&mut self.coded);
        let mut one = |s: &[u8], dict: Option<&mut crate::digits::EncDict>, head: &mut Vec<u8>| {
            coded.clear();
            // A lane's long digit strings: coded (crate::digits) when there are enough of them.
            let (codec, raw, n) = if dict.is_some_and(|d| crate::digits::encode(s, &mut coded, p, d)) {
                data.extend_from_slice(&coded);
                (0, coded.len(), coded.len())
            } else {
                let (codec, n) = p.pack(s, &mut data);
                (codec, s.len(), n)
            };
            head.push(codec);
            put(head, raw as u64);
            put(head, n as u64);
        };
        one(&self.pieces, None, head);
        for l in &mut self.lanes[..self.used] {
            for s in [&l.raw, &l.template, &l.numbers, &l.wide] {
                one(s, None, head);
            }
            one(&l.long, Some(&mut l.dict), head);
        }
        self.coded = coded;
        head.extend_from_slice(&data);
        self.packed = data;
        self.pieces.clear();
        let pos = self.group_pos;
        self.group_pos += 1;
        let last = self.group_pos == GROUP_FRAMES;
        for l in &mut self.lanes {
            l.raw.clear();
            l.template.clear();
            l.numbers.clear();
            l.wide.clear();
            l.long.clear();
            if last {
                l.lines.clear();
                l.dict.clear();
            } else {
                l.lines.compact();
            }
        }
        if last {
            self.used = 0;
            self.group_pos = 0;
        }
        self.slots.fill(Slot::default());
        self.len = 0;
        pos
    }
}

/// A frame body holding `pieces` (lane, bytes), as the writer builds it:
/// for tests and fuzzing.
#[doc(hidden)]
pub fn encode(pieces: &[(u64, &[u8])]) -> Vec<u8> {
    let mut b = PayloadBuilder::default();
    for (lane, p) in pieces {
        b.push(*lane, p);
    }
    let mut p = crate::format::Packer::new(1).expect("zstd context");
    let mut body = Vec::new();
    b.finish(&mut p, &mut body);
    body
}

/// The frame bodies of consecutive frames of `frames` (each a list of
/// (lane, bytes)) as the writer builds them, with each frame's position
/// in its dictionary group: for tests and fuzzing.
#[doc(hidden)]
pub fn encode_frames(frames: &[Vec<(u64, &[u8])>]) -> Vec<(u64, Vec<u8>)> {
    let mut b = PayloadBuilder::default();
    let mut p = crate::format::Packer::new(1).expect("zstd context");
    frames
        .iter()
        .map(|f| {
            for (lane, bytes) in f {
                b.push(*lane, bytes);
            }
            let mut body = Vec::new();
            let pos = b.finish(&mut p, &mut body);
            (pos, body)
        })
        .collect()
}

/// Undoes [`crate::format::Packer::pack`] of one stream (`rlen` bytes once decoded).
pub(crate) fn unpack_stream(name: &str, codec: u8, stored: &[u8], rlen: usize) -> Result<Vec<u8>, String> {
    match codec {
        0 if stored.len() == rlen => Ok(stored.to_vec()),
        1 => {
            let s = crate::format::unzstd(stored, rlen).map_err(|e| format!("{name} stream: zstd: {e}"))?;
            if s.len() != rlen {
                return Err(format!("{name} stream: decompressed {} bytes, header says {rlen}", s.len()));
            }
            Ok(s)
        }
        c => Err(format!("{name} stream: bad codec {c} ({} of {rlen} bytes)", stored.len())),
    }
}

/// A cursor over one stream; errors name the stream and the byte.
pub(crate) struct Cur<'a> {
    pub name: &'static str,
    pub b: &'a [u8],
    pub at: usize,
}

impl<'a> Cur<'a> {
    pub fn get<V: VarInt>(&mut self) -> Result<V, String> {
        match V::decode_var(&self.b[self.at..]) {
            Some((v, n)) => {
                self.at += n;
                Ok(v)
            }
            None => Err(format!("{} stream: bad or missing varint at byte {}", self.name, self.at)),
        }
    }
    pub fn byte(&mut self) -> Result<u8, String> {
        let v = *self.b.get(self.at).ok_or_else(|| format!("{} stream: cut short at byte {}", self.name, self.at))?;
        self.at += 1;
        Ok(v)
    }
    pub fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let left = self.b.len() - self.at;
        if (left as u64) < n {
            return Err(format!("{} stream: {n} bytes wanted at byte {}, {left} left", self.name, self.at));
        }
        let s = &self.b[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }
}

const PER_LANE: usize = 5;
const NAMES: [&str; PER_LANE] = ["raw", "template", "numbers", "wide", "long"];

/// Whether stream `i` of a frame (0 is the pieces) is a lane's `long` stream.
fn is_long(i: usize) -> bool {
    i > 0 && (i - 1) % PER_LANE == PER_LANE - 1
}

/// What a lane carries from frame to frame of a dictionary group, for the decoder.
#[derive(Clone, Default)]
struct LaneDicts {
    lines: Lines,
    long: crate::digits::DecDict,
}

/// The dictionaries of a payload frame's group met so far (format 2.2):
/// empty for a group's first frame; [`decode_in`] and [`learn`] of each
/// frame of the group in turn bring it up to date for the next.
#[derive(Clone, Default)]
pub struct Group {
    lanes: Vec<LaneDicts>,
}

/// Decodes a frame body back into `raw_len` payload bytes (a frame that is
/// the first of its dictionary group: all frames of 2.0 and 2.1 logs).
pub fn decode(body: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    decode_in(body, raw_len, &mut Group::default())
}

/// Decodes a frame body, the dictionaries of its group's earlier frames
/// in `g`, which learns this frame's.
pub fn decode_in(body: &[u8], raw_len: usize, g: &mut Group) -> Result<Vec<u8>, String> {
    run(body, raw_len, g, false)
}

/// Learns a frame's dictionaries (for the group's next frames) without
/// decoding its numbers and binary buffers: what reading a buffer in a
/// later frame of the group costs for each frame before it.
pub fn learn(body: &[u8], raw_len: usize, g: &mut Group) -> Result<(), String> {
    run(body, raw_len, g, true).map(|_| ())
}

fn run(body: &[u8], raw_len: usize, g: &mut Group, learn: bool) -> Result<Vec<u8>, String> {
    let mut head = Cur { name: "payload header", b: body, at: 0 };
    let nlanes = head.byte()? as usize;
    if nlanes > MAX_LANES {
        return Err(format!("{nlanes} lanes, at most {MAX_LANES} exist"));
    }
    let mut table = Vec::with_capacity(1 + PER_LANE * nlanes);
    for _ in 0..1 + PER_LANE * nlanes {
        table.push((head.byte()?, head.get::<u64>()?, head.get::<u64>()?));
    }
    if g.lanes.len() < nlanes {
        g.lanes.resize_with(nlanes, LaneDicts::default);
    }
    let mut streams: Vec<Vec<u8>> = Vec::with_capacity(table.len());
    let mut rest = Cur { name: "payload body", b: body, at: head.at };
    for (i, (codec, rlen, slen)) in table.into_iter().enumerate() {
        let name = if i == 0 { "pieces" } else { NAMES[(i - 1) % PER_LANE] };
        // No stream is larger than 10 bytes per payload byte (a number's varint for one digit).
        if rlen > (raw_len as u64).saturating_mul(10) + 16 {
            return Err(format!("{name} stream of {rlen} bytes is out of range for a {raw_len}-byte frame"));
        }
        let stored = rest.take(slen)?;
        // Learning needs only the dictionary streams: pieces, templates, long digits.
        if learn && i > 0 && !matches!((i - 1) % PER_LANE, 1 | 4) {
            streams.push(Vec::new());
            continue;
        }
        let s = unpack_stream(name, codec, stored, rlen as usize)?;
        // A long stream in coded form (format 2.1) back to digit strings.
        let s = if is_long(i) && matches!(s.first(), Some(&crate::digits::CODED | &crate::digits::CODED_SPLIT)) {
            crate::digits::decode(&s, raw_len, &mut g.lanes[(i - 1) / PER_LANE].long)?
        } else {
            s
        };
        streams.push(s);
    }
    if rest.at != body.len() {
        return Err(format!("{} bytes after the last payload stream", body.len() - rest.at));
    }
    let mut pieces = Cur { name: "pieces", b: &streams[0], at: 0 };
    let mut lanes: Vec<[Cur<'_>; PER_LANE]> =
        streams[1..].chunks(PER_LANE).map(|c| std::array::from_fn(|k| Cur { name: NAMES[k], b: &c[k], at: 0 })).collect();
    let mut slots = if learn { Vec::new() } else { vec![Slot::default(); 1 << SLOT_BITS] };
    let mut expanded = Vec::new();
    let mut out = Vec::with_capacity(if learn { 0 } else { raw_len });
    // Bytes of the frame decoded (or, learning, passed over).
    let mut done = 0usize;
    let mut piece = 0u64;
    while pieces.at < pieces.b.len() {
        let len: u64 = pieces.get()?;
        if len > (raw_len - done) as u64 {
            return Err(format!("buffer {piece} of {len} bytes overruns the frame ({} bytes left)", raw_len - done));
        }
        let start = out.len();
        let mode = pieces.byte()? as usize;
        let li = mode / 2;
        let [raw, template, numbers, wide, long] = lanes.get_mut(li).ok_or_else(|| format!("buffer {piece}: lane {li} of {nlanes}"))?;
        done += len as usize;
        if mode & 1 == 0 {
            if !learn {
                out.extend_from_slice(raw.take(len)?);
            }
        } else {
            let tlen: u64 = pieces.get()?;
            expanded.clear();
            g.lanes[li].lines.decode(template.take(tlen)?, &mut expanded, len as usize).map_err(|e| format!("buffer {piece}: {e}"))?;
            if learn {
                piece += 1;
                continue;
            }
            let mut win = 0u32;
            for &c in &expanded {
                if c < MARK {
                    out.push(c);
                    win = (win << 8) | c as u32;
                    continue;
                }
                if c == MARK {
                    let at = long.at;
                    let run = long.b[at..].iter().position(|&d| d == b'\n').map(|n| &long.b[at..at + n]);
                    match run {
                        Some(r) if r.len() > MAX_DIGITS && r.iter().all(u8::is_ascii_digit) => {
                            out.extend_from_slice(r);
                            long.at += r.len() + 1;
                        }
                        _ => return Err(format!("buffer {piece}: long stream holds no digit string at byte {at}")),
                    }
                    win = (win << 8) | c as u32;
                    if out.len() - start > len as usize {
                        break;
                    }
                    continue;
                }
                let digits = (c - MARK) as usize;
                if !(1..=MAX_DIGITS).contains(&digits) {
                    return Err(format!("buffer {piece}: bad template byte {c:#x}"));
                }
                let sl = &mut slots[slot(win, digits, li)];
                let v = if sl.wide { wide.get()? } else { sl.last.wrapping_add(numbers.get::<i64>()? as u64) };
                if v >= 10u64.pow(digits as u32) {
                    return Err(format!("buffer {piece}: number {v} has more than {digits} digits"));
                }
                sl.update(v);
                let mut digs = [0u8; MAX_DIGITS];
                let mut x = v;
                for p in (0..digits).rev() {
                    digs[p] = b'0' + (x % 10) as u8;
                    x /= 10;
                }
                out.extend_from_slice(&digs[..digits]);
                win = (win << 8) | c as u32;
                if out.len() - start > len as usize {
                    break;
                }
            }
            if out.len() - start != len as usize {
                return Err(format!("buffer {piece}: template gives {} bytes, {len} expected", out.len() - start));
            }
        }
        piece += 1;
    }
    for c in lanes.iter().flatten() {
        if c.at != c.b.len() && !(learn && c.name != "template") {
            return Err(format!("{} stream has {} trailing bytes", c.name, c.b.len() - c.at));
        }
    }
    if done != raw_len {
        return Err(format!("frame gives {done} payload bytes, header says {raw_len}"));
    }
    for l in &mut g.lanes {
        l.lines.compact();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(pieces: &[&[u8]]) -> Vec<u8> {
        let lanes: Vec<(u64, &[u8])> = pieces.iter().enumerate().map(|(i, p)| (i as u64 % 3, *p)).collect();
        let body = encode(&lanes);
        let want = pieces.concat();
        let got = decode(&body, want.len()).unwrap();
        assert_eq!(got, want);
        body
    }

    #[test]
    fn text_and_binary_round_trip() {
        round(&[b"", b"POST /v1 HTTP/1.1\r\nContent-Length: 0012\r\n\r\n{\"a\":\"12.05\"}", &[0, 1, 2, 255], b"9", b"0000000000000000000"]);
        round(&[b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", b"999999999999999999 1000000000000000000"]);
        round(&[b"\x80\x81 not text", b"abc123 123abc a1 1a 18446744073709551615"]);
        // Found by the payload fuzz target: many empty buffers.
        round(&[b"", b"", b"", b"", b"", b"", b"", b"", b"", b"", b"x", b"", b"", b"", b"", b"", b"", b"1"]);
    }

    #[test]
    fn word_masks_match_the_byte_tests() {
        let text: Vec<u8> = (0x20..0x7f).chain([9, 10, 13]).collect();
        for w in text.windows(8) {
            let v = load8(w, 0);
            for (k, &c) in w.iter().enumerate() {
                assert_eq!(digit_mask(v) >> (8 * k + 7) & 1 == 1, c.is_ascii_digit(), "{c:#x}");
                assert_eq!(letter_mask(v) >> (8 * k + 7) & 1 == 1, (b'a'..=b'f').contains(&c), "{c:#x}");
            }
        }
        let b = b"xx 12ab34 0123456789abcdef- 77";
        assert_eq!(next_digit(b, 0), Some(3));
        assert_eq!(hex_run(b, 3), (9, true));
        assert_eq!(hex_run(b, 10), (26, true));
        assert_eq!(hex_run(b, 28), (30, false));
    }

    #[test]
    fn counters_cost_almost_nothing() {
        let lines: Vec<Vec<u8>> = (0..2000).map(|i| format!("seq={} id=ID{:08} len=100\n", 1000 + i, i).into_bytes()).collect();
        let refs: Vec<&[u8]> = lines.iter().map(|l| &l[..]).collect();
        let body = round(&refs);
        assert!(body.len() < 400, "{} bytes", body.len());
    }

    #[test]
    fn repeated_lines_cost_about_a_byte() {
        let bufs: Vec<Vec<u8>> = (0..400)
            .map(|i| {
                let kind = ["ACME PAYROLL", "GLOBEX SETTLEMENT", "INITECH VENDOR"][i % 3];
                format!("POST /v1/pay HTTP/1.1\r\nHost: ledger.svc\r\nX-Id: {:016x}\r\n\r\n6 {kind:<22}0{i:015}\nshort\n{kind}", i * 7919)
                    .into_bytes()
            })
            .collect();
        let refs: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
        let lanes: Vec<(u64, &[u8])> = refs.iter().map(|p| (1, *p)).collect();
        let body = encode(&lanes);
        assert_eq!(decode(&body, refs.concat().len()).unwrap(), refs.concat());
        // The template stream: per buffer, the unique id line, the short lines and a byte for each other line.
        let mut p = PayloadBuilder::default();
        for b in &refs {
            p.push(1, b);
        }
        let t = &p.lanes[0].template;
        assert!(t.len() < 400 * 40, "{} template bytes", t.len());
        assert!(t.iter().filter(|&&c| c >= LINE_REF).count() >= 399 * 3, "line references");
    }

    #[test]
    fn line_references_to_nothing_are_errors() {
        let mut l = Lines::default();
        let mut out = Vec::new();
        assert!(l.decode(&[LINE_REF + 5], &mut out, 100).unwrap_err().contains("empty slot 5"));
        l.decode(b"a line of text\n", &mut out, 100).unwrap();
        let k = Lines::slot(line_hash(b"a line of text\n")) as u8;
        assert!(l.decode(&[LINE_REF + k, LINE_REF + k], &mut out, 40).unwrap_err().contains("longer than its 40 bytes"));
    }

    /// Frames of a dictionary group refer to the lines and accounts of the
    /// frames before them: later frames are smaller, decode in turn (or
    /// after `learn` of the earlier ones), and not at all on their own.
    #[test]
    fn group_frames_share_dictionaries() {
        let mut rng = 12345u64;
        let mut next = move || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            rng >> 33
        };
        let accounts: Vec<u64> = (0..200).map(|_| next() * 1000 % 1_000_000_000_000).collect();
        let frames: Vec<Vec<Vec<u8>>> = (0..GROUP_FRAMES + 3)
            .map(|_| {
                (0..60)
                    .map(|_| {
                        let a = accounts[(next() % 200) as usize];
                        format!(
                            "6 ACME PAYROLL SETTLEMENT {:012}{a:012} {:08}\nEND OF RECORD BATCH\n",
                            621021000021u64,
                            next() % 99_999_999
                        )
                        .into_bytes()
                    })
                    .collect()
            })
            .collect();
        let lists: Vec<Vec<(u64, &[u8])>> = frames.iter().map(|f| f.iter().map(|b| (7, &b[..])).collect()).collect();
        let bodies = encode_frames(&lists);
        let positions: Vec<u64> = bodies.iter().map(|b| b.0).collect();
        assert_eq!(positions[..3], [0, 1, 2]);
        assert_eq!(positions[GROUP_FRAMES as usize..], [0, 1, 2]);
        let want: Vec<Vec<u8>> = frames.iter().map(|f| f.concat()).collect();
        let mut g = Group::default();
        for (i, ((pos, body), w)) in bodies.iter().zip(&want).enumerate() {
            if *pos == 0 {
                g = Group::default();
            }
            assert_eq!(&decode_in(body, w.len(), &mut g).unwrap(), w, "frame {i}");
        }
        // Frame 5 after learning frames 0 to 4.
        let mut g = Group::default();
        for (body, w) in bodies.iter().zip(&want).take(5) {
            learn(&body.1, w.len(), &mut g).unwrap();
        }
        assert_eq!(decode_in(&bodies[5].1, want[5].len(), &mut g).unwrap(), want[5]);
        // Without the group's earlier frames: an error, not a panic or wrong bytes.
        assert!(decode(&bodies[5].1, want[5].len()).is_err());
        // The first frame learns the accounts; later ones mostly refer to them.
        assert!(bodies[8].1.len() * 10 < bodies[0].1.len() * 8, "{} and {} bytes", bodies[8].1.len(), bodies[0].1.len());
    }

    #[test]
    fn damaged_bodies_are_errors() {
        let body = round(&[b"a 1 b 22 c 333", b"xyz"]);
        let lines = round(&[b"one line of text\none line of text\n", b"x", b"one line of text\n"]);
        for (i, bit) in (0..lines.len()).flat_map(|i| (0..8).map(move |b| (i, b))) {
            let mut b = lines.clone();
            b[i] ^= 1 << bit;
            let _ = decode(&b, 52);
        }
        for i in 0..body.len() {
            for bit in 0..8 {
                let mut b = body.clone();
                b[i] ^= 1 << bit;
                let _ = decode(&b, 17);
            }
            let _ = decode(&body[..i], 17);
        }
        assert!(decode(&body, 16).is_err());
    }
}
