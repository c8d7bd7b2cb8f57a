//! The event block codec: delta/varint columns predicted from each
//! thread's history, each column compressed with zstd on its own.
//!
//! A block holds consecutive events (sequence numbers `first_seq..first_seq+count`,
//! so sequence numbers are not stored). Its raw form is a table of columns:
//!
//! ```text
//! block  := count(varint) ncols(varint) (col_id(varint) len(varint))* col_bytes*
//! ```
//!
//! On disk (format 2, frame codec 2) each column is stored compressed on its
//! own, so that near-random columns (times, durations) and repetitive ones
//! (ids, kinds) each get their own statistics (see [`columns_to_raw`]);
//! format 1 stored the raw block as one zstd frame (codec 1).
//!
//! | column | per event / per item (format 2) | format 1 |
//! |---|---|---|
//! | 0 kinds  | flags(u8), then kind(varint) unless flag bit 4 says it is the kind that followed this thread's previous kind last time | kind(varint) flags(u8) |
//! | 1 ts     | zigzag(ts − prediction): the previous event's ts, or for a wakeup of a thread that entered a syscall after switching out, switch time + that syscall's duration | zigzag(ts − previous ts) |
//! | 2 ids    | only fields whose flag bit is set: pid, zigzag(tid − pid), cpu, cgroup | same |
//! | 3 sc.nr  | 0 when it is the syscall that followed the thread's previous syscall last time, else nr + 1 | syscall number |
//! | 4 sc.args| six zigzag(arg − the same thread's previous args of that syscall) | same |
//! | 5 sc.ret | zigzag(ret − prediction): the bytes the kernel wrote, else the count argument of read/write-like calls, else 0 | zigzag(ret) |
//! | 6 sc.dur | when the thread switched out since its previous syscall, zigzag(duration − its time off CPU (wakeup − switch), or − (ts − switch) before any wakeup); else duration | duration |
//! | 7 sc.misc| 0 when fd type, flags and number of writes equal those of the thread's previous call of this syscall, else 1 and those three | fd type(u8) flags(varint) number of writes(varint) |
//! | 8 sc.waddr| per write: 1..6 = equal to that argument, 0 = zigzag(addr − arg 1) follows | same |
//! | 9 sc.wdata| per write: 0 bytes(len, bytes) · 1 stored(zigzag(offset − end of previous), len) · 2 redacted(postcard) · 3 timespec(zigzag((value − ts) − previous for that clock)) | same |
//! | 256+k    | every other kind k: len(varint) postcard body; in format 2 a few fields hold zigzag residuals of the thread model: run-queue delay (ts − wakeup) and off-CPU time (wakeup − switch), page-fault address (− the thread's previous fault), TCP send/retransmit bytes (− the thread's last syscall result) | plain body |
//!
//! Flags bits 0..3 say that pid, tid, cpu, cgroup differ from the previous
//! event's (the first event of a block sets all four). Keeping like fields
//! together and predicting them from the thread's own history (its previous
//! call of the same syscall, the time it spent off CPU, the events that
//! followed each other on it before) lets zstd find the regularities. All
//! prediction state starts fresh in each block, so every block decodes on
//! its own. A reader meeting a kind it does not know skips its body in the
//! kind's own column (all kinds but syscall use per-kind columns) and keeps
//! the thread's kind history in step.

use crate::event::{Data, Event, EventBody, FdType, Kind, MemWrite, Syscall};
use integer_encoding::VarInt;
use std::collections::HashMap;

/// Maps keyed by thread ids and syscall numbers, looked up for every event:
/// a fast deterministic hasher rather than SipHash.
pub(crate) type IdMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

const ST_SWITCHED: u8 = 1;
const ST_WOKEN: u8 = 2;
const ST_SYSCALL: u8 = 4;

/// What the format-2 model remembers of a thread.
#[derive(Clone, Copy, Default)]
struct TidState {
    switch_ts: u64,
    wake_ts: u64,
    sc_dur: u64,
    sc_ret: i64,
    fault_addr: u64,
    /// Kind id of its previous event (0: none yet).
    last_kind: u16,
    /// Number of its previous syscall.
    last_nr: u32,
    /// `ST_SWITCHED`: switched out since its last syscall; `ST_WOKEN`: woken
    /// since its last syscall; `ST_SYSCALL`: a syscall since it last switched out.
    flags: u8,
}

impl TidState {
    /// Predicted duration of a syscall entered at `ts`: the time the thread
    /// spent off CPU (switched out → woken), else the time since it switched
    /// out; 0 when it did not switch out.
    fn dur_pred(&self, ts: u64) -> u64 {
        if self.flags & (ST_SWITCHED | ST_WOKEN) == ST_SWITCHED | ST_WOKEN && self.wake_ts >= self.switch_ts {
            self.wake_ts - self.switch_ts
        } else if self.flags & ST_SWITCHED != 0 && ts >= self.switch_ts {
            ts - self.switch_ts
        } else {
            0
        }
    }
    /// Predicted time of a wakeup: the thread's blocking syscall started
    /// after it switched out ends at switch + its duration.
    fn wake_pred(&self) -> Option<u64> {
        (self.flags & ST_SYSCALL != 0).then(|| self.switch_ts.wrapping_add(self.sc_dur))
    }
    fn observe(&mut self, ts: u64, body: &EventBody) {
        match body {
            EventBody::Syscall(s) => {
                self.sc_dur = s.duration_ns;
                self.sc_ret = s.ret;
                self.last_nr = s.nr;
                self.flags = ST_SYSCALL;
            }
            EventBody::SchedSwitch(_) => {
                self.switch_ts = ts;
                self.flags = ST_SWITCHED;
            }
            EventBody::SchedWakeup(_) => {
                self.wake_ts = ts;
                self.flags = (self.flags & ST_SWITCHED) | ST_WOKEN;
            }
            EventBody::PageFault(f) => self.fault_addr = f.addr,
            _ => {}
        }
    }
}

#[inline]
fn zz(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
fn unzz(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Syscalls whose return value is usually their count argument.
fn counts_arg2(nr: u32) -> bool {
    matches!(nr, 0 | 1 | 17 | 18 | 44 | 45)
}

/// Predicted return value (format 2): the bytes the kernel wrote, else the
/// count argument of read/write-like calls, else 0.
fn ret_pred(nr: u32, args: &[u64; 6], writes: &[MemWrite]) -> i64 {
    if !writes.is_empty() {
        writes.iter().fold(0i64, |a, w| a.wrapping_add(w.data.len() as i64))
    } else if counts_arg2(nr) {
        args[2] as i64
    } else {
        0
    }
}

/// Rewrites the fields of a generic body that the format-2 model predicts
/// from the thread's state (`forward`: value → residual; else residual → value).
fn predict_body(body: &mut EventBody, st: &TidState, ts: u64, forward: bool) {
    let apply = |v: &mut u64, pred: u64| {
        *v = if forward { zz(v.wrapping_sub(pred) as i64) } else { pred.wrapping_add(unzz(*v) as u64) };
    };
    match body {
        EventBody::SchedDelay(d) => {
            let woken = st.flags & ST_WOKEN != 0;
            apply(&mut d.delay_ns, if woken { ts.wrapping_sub(st.wake_ts) } else { 0 });
            apply(&mut d.off_cpu_ns, if woken && st.flags & ST_SWITCHED != 0 { st.wake_ts.wrapping_sub(st.switch_ts) } else { 0 });
        }
        EventBody::PageFault(f) => apply(&mut f.addr, st.fault_addr),
        EventBody::TcpSend(t) | EventBody::TcpRetransmit(t) => apply(&mut t.bytes, st.sc_ret.max(0) as u64),
        _ => {}
    }
}

/// True for the bodies [`predict_body`] rewrites.
fn predicted_kind(body: &EventBody) -> bool {
    matches!(body, EventBody::SchedDelay(_) | EventBody::PageFault(_) | EventBody::TcpSend(_) | EventBody::TcpRetransmit(_))
}

const F_PID: u8 = 1;
const F_TID: u8 = 2;
const F_CPU: u8 = 4;
const F_CGROUP: u8 = 8;
/// Format 2: the kind is the one that followed the thread's previous kind last time.
const F_SAME_KIND: u8 = 16;

const C_KINDS: u32 = 0;
const C_TS: u32 = 1;
const C_IDS: u32 = 2;
const C_NR: u32 = 3;
const C_ARGS: u32 = 4;
const C_RET: u32 = 5;
const C_DUR: u32 = 6;
const C_MISC: u32 = 7;
const C_WADDR: u32 = 8;
const C_WDATA: u32 = 9;
const N_FIXED: usize = 10;
const C_GENERIC: u32 = 256;

const W_BYTES: u8 = 0;
const W_STORED: u8 = 1;
const W_REDACTED: u8 = 2;
const W_TIMESPEC: u8 = 3;

const NR_CLOCK_GETTIME: u32 = 228;

#[derive(Clone, Copy, Default)]
struct Prev {
    ts: u64,
    pid: u32,
    tid: u32,
    cpu: u16,
    cgroup: u64,
}

/// What the model remembers of a thread's last call of a syscall.
#[derive(Default)]
struct Call {
    args: [u64; 6],
    misc: Option<(u8, u32, u64)>,
}

/// Prediction state shared by encoder and decoder.
#[derive(Default)]
struct Model {
    /// Format 2 (thread model, return values) rather than 1.
    v2: bool,
    prev: Prev,
    /// (thread, syscall) → the arguments of its last call and (format 2)
    /// its fd type, flags and number of writes.
    calls: IdMap<(u32, u32), Call>,
    tids: IdMap<u32, TidState>,
    /// Format 2: (thread, kind of its previous event) → kind of the event that followed.
    next_kind: IdMap<(u32, u16), u16>,
    /// Format 2: (thread, its previous syscall) → the syscall that followed.
    next_nr: IdMap<(u32, u32), u32>,
    stored_end: u64,
    clock: [i64; 16],
}

impl Model {
    fn reset(&mut self) {
        self.prev = Prev::default();
        self.calls.clear();
        self.tids.clear();
        self.next_kind.clear();
        self.next_nr.clear();
        self.stored_end = 0;
        self.clock = [0; 16];
    }
}

/// Adds the length of `v` as a varint to `n`.
fn put_len(n: &mut usize, v: u64) {
    *n += v.required_space();
}

/// Appends a varint (signed values zigzag-encoded, as `integer-encoding`
/// decodes them). Pushes bytes one by one: for 1–3 byte values this is much
/// cheaper than a call to memcpy.
#[inline]
pub(crate) fn put<V: VarInt>(out: &mut Vec<u8>, v: V) {
    let mut buf = [0u8; 10];
    let n = v.encode_var(&mut buf);
    for b in &buf[..n] {
        out.push(*b);
    }
}

fn fd_type_id(t: FdType) -> u8 {
    match t {
        FdType::Unknown => 0,
        FdType::File => 1,
        FdType::Pipe => 2,
        FdType::Tcp => 3,
        FdType::Udp => 4,
        FdType::Unix => 5,
        FdType::Char => 6,
        FdType::Other => 7,
    }
}

fn fd_type_of(id: u8) -> Option<FdType> {
    Some(match id {
        0 => FdType::Unknown,
        1 => FdType::File,
        2 => FdType::Pipe,
        3 => FdType::Tcp,
        4 => FdType::Udp,
        5 => FdType::Unix,
        6 => FdType::Char,
        7 => FdType::Other,
        _ => return None,
    })
}

/// A 16-byte `struct timespec` as nanoseconds, when it round-trips exactly.
fn timespec_ns(b: &[u8]) -> Option<i64> {
    if b.len() != 16 {
        return None;
    }
    let sec = u64::from_le_bytes(b[0..8].try_into().unwrap());
    let nsec = u64::from_le_bytes(b[8..16].try_into().unwrap());
    (sec < (1 << 33) && nsec < 1_000_000_000).then(|| (sec * 1_000_000_000 + nsec) as i64)
}

fn timespec_bytes(ns: i64) -> Option<Vec<u8>> {
    if !(0..(1i64 << 33) * 1_000_000_000).contains(&ns) {
        return None;
    }
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&((ns / 1_000_000_000) as u64).to_le_bytes());
    b.extend_from_slice(&((ns % 1_000_000_000) as u64).to_le_bytes());
    Some(b)
}

/// Accumulates events into one block.
#[derive(Default)]
pub(crate) struct BlockBuilder {
    fixed: [Vec<u8>; N_FIXED],
    generic: Vec<(u16, Vec<u8>)>,
    pub count: u32,
    pub first_seq: u64,
    pub min_ts: u64,
    pub max_ts: u64,
    model: Model,
    scratch: Vec<u8>,
    /// Compressed columns of the block being finished (kept for its capacity).
    packed: Vec<u8>,
    /// Bytes in the generic columns so far.
    raw: usize,
}

impl BlockBuilder {
    /// Raw size so far.
    pub fn raw_len(&self) -> usize {
        self.fixed.iter().map(|c| c.len()).sum::<usize>() + self.raw + 64
    }

    fn generic_col(&mut self, kind: u16) -> &mut Vec<u8> {
        let i = match self.generic.iter().position(|(k, _)| *k == kind) {
            Some(i) => i,
            None => {
                self.generic.push((kind, Vec::new()));
                self.generic.len() - 1
            }
        };
        &mut self.generic[i].1
    }

    /// Adds an event as event number `seq` (`first_seq + count`) (its own `seq` is not looked
    /// at), the buffer of its write `i` stored in the payload stream at
    /// `stored[i]` (offset, length) when that is given.
    pub(crate) fn push_ref(&mut self, ev: &Event, seq: u64, stored: &[Option<(u64, u32)>]) {
        self.push_as(ev, ev.kind().id(), seq, stored)
    }

    /// Adds an event written with kind id `kind_id` (its own, or for tests
    /// an id unknown to readers: its body is then not modelled).
    fn push_as(&mut self, ev: &Event, kind_id: u16, seq: u64, stored: &[Option<(u64, u32)>]) {
        let known = kind_id == ev.kind().id();
        if self.count == 0 {
            self.first_seq = seq;
            self.min_ts = ev.ts_ns;
            self.max_ts = ev.ts_ns;
            self.model.reset();
            self.model.v2 = true;
        } else {
            self.min_ts = self.min_ts.min(ev.ts_ns);
            self.max_ts = self.max_ts.max(ev.ts_ns);
        }
        debug_assert_eq!(seq, self.first_seq + self.count as u64);
        let first = self.count == 0;
        let p = self.model.prev;
        let mut flags = 0u8;
        if first || ev.pid != p.pid {
            flags |= F_PID;
        }
        if first || ev.tid != p.tid {
            flags |= F_TID;
        }
        if first || ev.cpu != p.cpu {
            flags |= F_CPU;
        }
        if first || ev.cgroup != p.cgroup {
            flags |= F_CGROUP;
        }
        let [kinds, ts, ids, ..] = &mut self.fixed;
        let mut pred_ts = p.ts;
        let st = if self.model.v2 { self.model.tids.get(&ev.tid).copied().unwrap_or_default() } else { TidState::default() };
        if self.model.v2 {
            // Flags, then the kind: 0 when the thread's previous kind was followed by this one last time.
            let slot = self.model.next_kind.entry((ev.tid, st.last_kind)).or_insert(u16::MAX);
            if *slot == kind_id && kind_id != u16::MAX {
                kinds.push(flags | F_SAME_KIND);
            } else {
                kinds.push(flags);
                put(kinds, kind_id);
            }
            *slot = kind_id;
        } else {
            put(kinds, kind_id);
            kinds.push(flags);
        }
        if self.model.v2 && known && matches!(ev.body, EventBody::SchedWakeup(_)) {
            if let Some(t) = st.wake_pred() {
                pred_ts = t;
            }
        }
        put(ts, ev.ts_ns.wrapping_sub(pred_ts) as i64);
        if flags & F_PID != 0 {
            put(ids, ev.pid);
        }
        if flags & F_TID != 0 {
            put(ids, (ev.tid as i64) - (ev.pid as i64));
        }
        if flags & F_CPU != 0 {
            put(ids, ev.cpu);
        }
        if flags & F_CGROUP != 0 {
            put(ids, ev.cgroup);
        }
        match &ev.body {
            EventBody::Syscall(s) => {
                assert!(known, "syscalls are always written as syscalls");
                self.push_syscall(ev, s, &st, stored)
            }
            body => {
                self.scratch.clear();
                if self.model.v2 && known && predicted_kind(body) {
                    let mut b = body.clone();
                    predict_body(&mut b, &st, ev.ts_ns, true);
                    b.encode_into(&mut self.scratch);
                } else {
                    body.encode_into(&mut self.scratch);
                }
                let scratch = std::mem::take(&mut self.scratch);
                let col = self.generic_col(kind_id);
                let l0 = col.len();
                put(col, scratch.len() as u64);
                col.extend_from_slice(&scratch);
                self.raw += col.len() - l0;
                self.scratch = scratch;
            }
        }
        if self.model.v2 {
            let t = self.model.tids.entry(ev.tid).or_default();
            if known {
                t.observe(ev.ts_ns, &ev.body);
            }
            t.last_kind = kind_id;
        }
        self.model.prev = Prev { ts: ev.ts_ns, pid: ev.pid, tid: ev.tid, cpu: ev.cpu, cgroup: ev.cgroup };
        self.count += 1;
    }

    fn push_syscall(&mut self, ev: &Event, s: &Syscall, st: &TidState, stored: &[Option<(u64, u32)>]) {
        let [_, _, _, nr, args, ret, dur, misc, waddr, wdata] = &mut self.fixed;
        if self.model.v2 {
            let slot = self.model.next_nr.entry((ev.tid, st.last_nr)).or_insert(u32::MAX);
            put(nr, if *slot == s.nr && s.nr != u32::MAX { 0 } else { s.nr as u64 + 1 });
            *slot = s.nr;
        } else {
            put(nr, s.nr);
        }
        let call = self.model.calls.entry((ev.tid, s.nr)).or_default();
        for (a, p) in s.args.iter().zip(call.args.iter_mut()) {
            put(args, a.wrapping_sub(*p) as i64);
            *p = *a;
        }
        if self.model.v2 {
            put(ret, s.ret.wrapping_sub(ret_pred(s.nr, &s.args, &s.writes)));
            match st.dur_pred(ev.ts_ns) {
                0 => put(dur, s.duration_ns),
                p => put(dur, s.duration_ns.wrapping_sub(p) as i64),
            }
        } else {
            put(ret, s.ret);
            put(dur, s.duration_ns);
        }
        let m = (fd_type_id(s.fd_type), s.flags, s.writes.len() as u64);
        let same = self.model.v2 && call.misc.replace(m) == Some(m);
        if self.model.v2 {
            misc.push(!same as u8);
        }
        if !same {
            misc.push(m.0);
            put(misc, m.1);
            put(misc, m.2);
        }
        for (i, w) in s.writes.iter().enumerate() {
            match s.args.iter().position(|a| *a == w.addr) {
                Some(i) => put(waddr, i as u64 + 1),
                None => {
                    put(waddr, 0u64);
                    put(waddr, w.addr.wrapping_sub(s.args[1]) as i64);
                }
            }
            let moved;
            let data = match stored.get(i).copied().flatten() {
                Some((offset, len)) => {
                    moved = Data::Stored { offset, len };
                    &moved
                }
                None => &w.data,
            };
            match data {
                Data::Bytes(b) => {
                    if let (true, Some(ns)) = (s.nr == NR_CLOCK_GETTIME, timespec_ns(b)) {
                        let slot = &mut self.model.clock[(s.args[0] & 15) as usize];
                        let d = ns.wrapping_sub(ev.ts_ns as i64);
                        wdata.push(W_TIMESPEC);
                        put(wdata, d.wrapping_sub(*slot));
                        *slot = d;
                    } else {
                        wdata.push(W_BYTES);
                        put(wdata, b.len() as u64);
                        wdata.extend_from_slice(b);
                    }
                }
                Data::Stored { offset, len } => {
                    wdata.push(W_STORED);
                    put(wdata, offset.wrapping_sub(self.model.stored_end) as i64);
                    put(wdata, *len);
                    self.model.stored_end = offset + *len as u64;
                }
                d @ Data::Redacted { .. } => {
                    wdata.push(W_REDACTED);
                    let bytes = postcard::to_stdvec(d).expect("serializes");
                    put(wdata, bytes.len() as u64);
                    wdata.extend_from_slice(&bytes);
                }
            }
        }
    }

    /// Appends the block as a format-2 column frame body (see
    /// [`columns_to_raw`]) to `head`: each column compressed on its own, so
    /// each gets its own statistics. Returns the length of the block's raw
    /// form; resets the builder.
    pub(crate) fn finish_columns(&mut self, p: &mut crate::format::Packer, head: &mut Vec<u8>) -> u32 {
        let mut data = std::mem::take(&mut self.packed);
        data.clear();
        let fixed = self.fixed.iter().enumerate().map(|(i, c)| (i as u32, c));
        let generic = self.generic.iter().map(|(k, c)| (C_GENERIC + *k as u32, c));
        let cols: Vec<(u32, &Vec<u8>)> = fixed.chain(generic).filter(|(_, c)| !c.is_empty()).collect();
        put(head, self.count);
        put(head, cols.len() as u64);
        let mut raw_len = 0;
        put_len(&mut raw_len, self.count as u64);
        put_len(&mut raw_len, cols.len() as u64);
        for (id, col) in &cols {
            let (codec, n) = p.pack(col, &mut data);
            put(head, *id);
            head.push(codec);
            put(head, col.len() as u64);
            put(head, n as u64);
            put_len(&mut raw_len, *id as u64);
            put_len(&mut raw_len, col.len() as u64);
            raw_len += col.len();
        }
        head.extend_from_slice(&data);
        self.packed = data;
        self.clear();
        raw_len as u32
    }

    /// The raw block bytes; resets the builder.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut cols: Vec<(u32, &Vec<u8>)> = Vec::new();
        for (i, c) in self.fixed.iter().enumerate() {
            if !c.is_empty() {
                cols.push((i as u32, c));
            }
        }
        for (k, c) in &self.generic {
            if !c.is_empty() {
                cols.push((C_GENERIC + *k as u32, c));
            }
        }
        let mut out = Vec::with_capacity(self.raw_len());
        put(&mut out, self.count);
        put(&mut out, cols.len() as u64);
        for (id, c) in &cols {
            put(&mut out, *id);
            put(&mut out, c.len() as u64);
        }
        for (_, c) in &cols {
            out.extend_from_slice(c);
        }
        self.clear();
        out
    }

    /// Empties the builder, keeping the columns' capacity for the next block.
    fn clear(&mut self) {
        for c in self.fixed.iter_mut() {
            c.clear();
        }
        for (_, c) in self.generic.iter_mut() {
            c.clear();
        }
        self.count = 0;
        self.raw = 0;
    }
}

/// Reads varints from a column, with errors instead of panics.
#[derive(Clone, Copy)]
struct Col<'a> {
    id: u32,
    b: &'a [u8],
    at: usize,
}

impl<'a> Col<'a> {
    fn name(&self) -> String {
        match self.id {
            C_KINDS => "kinds".into(),
            C_TS => "ts".into(),
            C_IDS => "ids".into(),
            C_NR => "sc.nr".into(),
            C_ARGS => "sc.args".into(),
            C_RET => "sc.ret".into(),
            C_DUR => "sc.dur".into(),
            C_MISC => "sc.misc".into(),
            C_WADDR => "sc.waddr".into(),
            C_WDATA => "sc.wdata".into(),
            u32::MAX => "block header".into(),
            k => match Kind::from_id((k - C_GENERIC) as u16) {
                Some(k) => format!("{} bodies", k.name()),
                None => format!("column {k}"),
            },
        }
    }
    fn get<V: VarInt>(&mut self) -> Result<V, String> {
        match V::decode_var(&self.b[self.at..]) {
            Some((v, n)) => {
                self.at += n;
                Ok(v)
            }
            None => Err(format!("{} column: bad or missing varint at byte {}", self.name(), self.at)),
        }
    }
    fn byte(&mut self) -> Result<u8, String> {
        let v = *self.b.get(self.at).ok_or_else(|| format!("{} column: cut short at byte {}", self.name(), self.at))?;
        self.at += 1;
        Ok(v)
    }
    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let left = self.b.len() - self.at;
        if (left as u64) < n {
            return Err(format!("{} column: {} bytes wanted at byte {}, {} left", self.name(), n, self.at, left));
        }
        let s = &self.b[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }
}

/// A decoded block.
pub(crate) struct Decoded {
    /// Known events in order.
    pub events: Vec<Event>,
    /// Kind ids of the events of unknown kinds that were skipped.
    pub unknown: Vec<u16>,
    /// False when decoding stopped early (see [`decode_until`]).
    pub complete: bool,
}

/// Error while decoding one block: which event (index in block) and why.
pub(crate) struct DecodeError {
    pub index: u32,
    pub reason: String,
}

struct Decoder<'a> {
    fixed: [Col<'a>; N_FIXED],
    generic: Vec<Col<'a>>,
    model: Model,
}

impl<'a> Decoder<'a> {
    fn generic(&mut self, kind: u16) -> Result<&mut Col<'a>, String> {
        let id = C_GENERIC + kind as u32;
        self.generic.iter_mut().find(|c| c.id == id).ok_or_else(|| format!("no column for events of kind {kind}"))
    }

    fn syscall(&mut self, tid: u32, ts: u64, st: &TidState) -> Result<Syscall, String> {
        let [_, _, _, nr_col, args, ret_col, dur_col, misc, waddr, wdata] = &mut self.fixed;
        let nr: u32 = if self.model.v2 {
            let code: u64 = nr_col.get()?;
            let slot = self.model.next_nr.entry((tid, st.last_nr)).or_insert(u32::MAX);
            if code > 0 {
                *slot = u32::try_from(code - 1).map_err(|_| format!("syscall number {} out of range", code - 1))?;
            } else if *slot == u32::MAX {
                return Err("syscall predicted from a thread that made none".into());
            }
            *slot
        } else {
            nr_col.get()?
        };
        let call = self.model.calls.entry((tid, nr)).or_default();
        let prev = &mut call.args;
        let mut a = [0u64; 6];
        for (x, p) in a.iter_mut().zip(prev.iter_mut()) {
            let d: i64 = args.get()?;
            *x = p.wrapping_add(d as u64);
            *p = *x;
        }
        let v2 = self.model.v2;
        let (mut ret, mut duration_ns) = (0i64, 0u64);
        if !v2 {
            ret = ret_col.get()?;
            duration_ns = dur_col.get()?;
        }
        let explicit = !v2 || misc.byte()? != 0;
        let (ft, flags, n) = if explicit {
            let m = (misc.byte()?, misc.get::<u32>()?, misc.get::<u64>()?);
            if v2 {
                call.misc = Some(m);
            }
            m
        } else {
            call.misc.ok_or("syscall details predicted from a call never made")?
        };
        let fd_type = fd_type_of(ft).ok_or_else(|| format!("unknown fd type {ft}"))?;
        if n > waddr.b.len() as u64 {
            return Err(format!("{n} memory writes claimed, more than the column holds"));
        }
        let mut writes = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let tag: u64 = waddr.get()?;
            let addr = match tag {
                0 => {
                    let d: i64 = waddr.get()?;
                    a[1].wrapping_add(d as u64)
                }
                1..=6 => a[tag as usize - 1],
                t => return Err(format!("bad write address tag {t}")),
            };
            let data = match wdata.byte()? {
                W_BYTES => {
                    let len: u64 = wdata.get()?;
                    Data::Bytes(wdata.take(len)?.to_vec())
                }
                W_STORED => {
                    let d: i64 = wdata.get()?;
                    let offset = self.model.stored_end.wrapping_add(d as u64);
                    let len: u32 = wdata.get()?;
                    self.model.stored_end = offset.wrapping_add(len as u64);
                    Data::Stored { offset, len }
                }
                W_REDACTED => {
                    let len: u64 = wdata.get()?;
                    let b = wdata.take(len)?;
                    let d: Data = postcard::from_bytes(b).map_err(|e| format!("redacted data: {e}"))?;
                    if !matches!(d, Data::Redacted { .. }) {
                        return Err("redacted data tag holds other data".into());
                    }
                    d
                }
                W_TIMESPEC => {
                    let slot = &mut self.model.clock[(a[0] & 15) as usize];
                    let dd: i64 = wdata.get()?;
                    let d = slot.wrapping_add(dd);
                    *slot = d;
                    Data::Bytes(timespec_bytes(d.wrapping_add(ts as i64)).ok_or("timespec out of range")?)
                }
                t => return Err(format!("bad write data tag {t}")),
            };
            writes.push(MemWrite { addr, data });
        }
        if v2 {
            let r: i64 = ret_col.get()?;
            ret = r.wrapping_add(ret_pred(nr, &a, &writes));
            duration_ns = match st.dur_pred(ts) {
                0 => dur_col.get()?,
                p => p.wrapping_add(dur_col.get::<i64>()? as u64),
            };
        }
        Ok(Syscall { nr, args: a, ret, duration_ns, writes, fd_type, flags })
    }
}

/// Rebuilds the raw block (`count ncols (col_id len)* col_bytes*`) from a
/// format-2 column frame body:
///
/// ```text
/// body := count(varint) ncols(varint) (col_id(varint) codec(u8: 0 stored, 1 zstd) raw_len(varint) stored_len(varint))* stored_col*
/// ```
pub(crate) fn columns_to_raw(body: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    let mut head = Col { id: u32::MAX, b: body, at: 0 };
    let count: u32 = head.get()?;
    let ncols: u64 = head.get()?;
    if ncols > body.len() as u64 {
        return Err(format!("{ncols} columns claimed in a {}-byte body", body.len()));
    }
    let mut table = Vec::with_capacity(ncols as usize);
    let mut total = 0u64;
    for _ in 0..ncols {
        let id: u32 = head.get()?;
        let codec = head.byte()?;
        let rlen: u64 = head.get()?;
        let slen: u64 = head.get()?;
        total = total.saturating_add(rlen);
        if total > raw_len as u64 {
            return Err(format!("columns hold more than the {raw_len} raw bytes the frame header says"));
        }
        table.push((id, codec, rlen, slen));
    }
    let mut out = Vec::with_capacity(raw_len);
    put(&mut out, count);
    put(&mut out, ncols);
    for (id, _, rlen, _) in &table {
        put(&mut out, *id);
        put(&mut out, *rlen);
    }
    let mut rest = Col { id: u32::MAX, b: body, at: head.at };
    for (id, codec, rlen, slen) in table {
        let stored = rest.take(slen)?;
        match codec {
            0 if slen == rlen => out.extend_from_slice(stored),
            1 => {
                let col = crate::format::unzstd(stored, rlen as usize).map_err(|e| format!("column {id}: zstd: {e}"))?;
                if col.len() as u64 != rlen {
                    return Err(format!("column {id}: decompressed {} bytes, table says {rlen}", col.len()));
                }
                out.extend_from_slice(&col);
            }
            c => return Err(format!("column {id}: bad codec {c} ({slen} of {rlen} bytes)")),
        }
    }
    if rest.at != body.len() {
        return Err(format!("{} bytes after the last column", body.len() - rest.at));
    }
    if out.len() != raw_len {
        return Err(format!("columns rebuild {} raw bytes, frame header says {raw_len}", out.len()));
    }
    Ok(out)
}

/// Decodes a raw block whose first event is `first_seq`; `expect_count` is
/// the count from the frame header, checked against the block's own;
/// `major` is the file's format version (1 or 2: the prediction model).
pub(crate) fn decode(raw: &[u8], first_seq: u64, expect_count: Option<u32>, major: u16) -> Result<Decoded, DecodeError> {
    decode_until(raw, first_seq, expect_count, major, &mut |_| false)
}

/// As [`decode`], stopping after the first event for which `stop` is true
/// (a seek needs the events up to the one it looks for, not the whole block).
pub(crate) fn decode_until(
    raw: &[u8],
    first_seq: u64,
    expect_count: Option<u32>,
    major: u16,
    stop: &mut dyn FnMut(&Event) -> bool,
) -> Result<Decoded, DecodeError> {
    let err = |index: u32, reason: String| DecodeError { index, reason };
    let mut head = Col { id: u32::MAX, b: raw, at: 0 };
    let count: u32 = head.get().map_err(|e| err(0, e))?;
    if let Some(n) = expect_count {
        if n != count {
            return Err(err(0, format!("block holds {count} events, frame header says {n}")));
        }
    }
    let ncols: u32 = head.get().map_err(|e| err(0, e))?;
    if ncols as usize > raw.len() {
        return Err(err(0, format!("{ncols} columns claimed in a {}-byte block", raw.len())));
    }
    let mut table = Vec::with_capacity(ncols as usize);
    for _ in 0..ncols {
        let id: u32 = head.get().map_err(|e| err(0, e))?;
        let len: u64 = head.get().map_err(|e| err(0, e))?;
        table.push((id, len));
    }
    let mut rest = &raw[head.at..];
    let empty = |id| Col { id, b: &[][..], at: 0 };
    let mut d = Decoder { fixed: std::array::from_fn(|i| empty(i as u32)), generic: Vec::new(), model: Model::default() };
    d.model.v2 = major >= 2;
    for (id, len) in table {
        if len > rest.len() as u64 {
            return Err(err(0, format!("column {id} of {len} bytes overruns the block ({} left)", rest.len())));
        }
        let (c, r) = rest.split_at(len as usize);
        rest = r;
        let col = Col { id, b: c, at: 0 };
        if (id as usize) < N_FIXED {
            d.fixed[id as usize] = col;
        } else if (C_GENERIC..C_GENERIC + 65536).contains(&id) {
            d.generic.push(col);
        } else {
            return Err(err(0, format!("unknown column id {id}")));
        }
    }
    if !rest.is_empty() {
        return Err(err(0, format!("{} bytes after the last column", rest.len())));
    }
    // Guard the allocation: each event takes at least 2 bytes (format 2: 1 byte) of the kinds column.
    if count as usize > d.fixed[0].b.len() / if d.model.v2 { 1 } else { 2 } {
        return Err(err(0, format!("block claims {count} events but its kinds column has {} bytes", d.fixed[0].b.len())));
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut unknown = Vec::new();
    for i in 0..count {
        let e = |r: String| err(i, r);
        let [kinds, ts, ids, ..] = &mut d.fixed;
        let (mut kind_id, flags) =
            if d.model.v2 { (0, kinds.byte().map_err(e)?) } else { (kinds.get().map_err(e)?, kinds.byte().map_err(e)?) };
        if i == 0 && flags & 0xf != 0xf {
            return Err(err(i, format!("first event of block lacks full ids (flags {flags:#x})")));
        }
        let p = d.model.prev;
        let pid = if flags & F_PID != 0 { ids.get().map_err(e)? } else { p.pid };
        let tid = if flags & F_TID != 0 {
            let dt: i64 = ids.get().map_err(e)?;
            u32::try_from(pid as i64 + dt).map_err(|_| err(i, format!("tid out of range (pid {pid} + {dt})")))?
        } else {
            p.tid
        };
        let cpu = if flags & F_CPU != 0 { ids.get().map_err(e)? } else { p.cpu };
        let cgroup = if flags & F_CGROUP != 0 { ids.get().map_err(e)? } else { p.cgroup };
        let st = if d.model.v2 { d.model.tids.get(&tid).copied().unwrap_or_default() } else { TidState::default() };
        if d.model.v2 {
            let slot = d.model.next_kind.entry((tid, st.last_kind)).or_insert(u16::MAX);
            if flags & F_SAME_KIND == 0 {
                *slot = kinds.get().map_err(e)?;
            } else if *slot == u16::MAX {
                return Err(err(i, "kind predicted from a thread with no history".into()));
            }
            kind_id = *slot;
        }
        let mut pred_ts = p.ts;
        if d.model.v2 && kind_id == Kind::SchedWakeup.id() {
            if let Some(t) = st.wake_pred() {
                pred_ts = t;
            }
        }
        let dts: i64 = ts.get().map_err(e)?;
        let ts_ns = pred_ts.wrapping_add(dts as u64);
        d.model.prev = Prev { ts: ts_ns, pid, tid, cpu, cgroup };
        let body = match Kind::from_id(kind_id) {
            Some(Kind::Syscall) => EventBody::Syscall(d.syscall(tid, ts_ns, &st).map_err(e)?),
            kind => {
                let col = d.generic(kind_id).map_err(e)?;
                let blen: u64 = col.get().map_err(e)?;
                let bytes = col.take(blen).map_err(e)?;
                match kind {
                    Some(k) => {
                        let mut b = EventBody::decode(k, bytes).map_err(|x| err(i, format!("{} body: {x}", k.name())))?;
                        if d.model.v2 {
                            predict_body(&mut b, &st, ts_ns, false);
                        }
                        b
                    }
                    None => {
                        unknown.push(kind_id);
                        if d.model.v2 {
                            d.model.tids.entry(tid).or_default().last_kind = kind_id;
                        }
                        continue;
                    }
                }
            }
        };
        if d.model.v2 {
            let t = d.model.tids.entry(tid).or_default();
            t.observe(ts_ns, &body);
            t.last_kind = kind_id;
        }
        out.push(Event { seq: first_seq + i as u64, ts_ns, pid, tid, cpu, cgroup, body });
        if i + 1 < count && stop(out.last().expect("just pushed")) {
            return Ok(Decoded { events: out, unknown, complete: false });
        }
    }
    for c in d.fixed.iter().chain(d.generic.iter()) {
        if c.at != c.b.len() {
            return Err(err(count, format!("{} column has {} trailing bytes", c.name(), c.b.len() - c.at)));
        }
    }
    Ok(Decoded { events: out, unknown, complete: true })
}

/// Encodes a block in which some events carry a different (future,
/// unknown) kind id. For tests of forward compatibility: the body of each
/// rewritten event must not be a syscall, and the id must be one this
/// version does not know.
#[doc(hidden)]
pub fn encode_with_raw_kind(events: &[(u16, Event)]) -> Vec<u8> {
    let mut b = BlockBuilder::default();
    for (id, ev) in events {
        b.push_as(ev, *id, ev.seq, &[]);
    }
    b.finish()
}
