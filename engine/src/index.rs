//! The embedded cause index: explanations written into a `.kpl` log, so
//! `kprobe why` answers from the log alone (no server) and `kprobe replay
//! --break-at-cause` can jump to a cause offline.
//!
//! [`write_index`] copies the *base* recording — the replayable (ptrace)
//! one when there is one, else the first — event for event (same sequence
//! numbers, payloads and file store), so the result replays exactly like
//! it. After its events it appends:
//!
//! * the spans (`span` events on their task), and a copy of every kernel
//!   event from the other recordings that a cause rests on (e.g. the eBPF
//!   `sched_delay` naming the hog);
//! * per transaction, one `note` (topic `kprobe.why`) holding the causal
//!   graph as JSON, and `cause` events carrying the transaction id (so the
//!   log's transaction index finds them): one of kind `graph` pointing at
//!   the note, then one per ranked cause — `effect_seq` the event of the
//!   base recording where it struck (the delayed syscall), `cause_seq` the
//!   kernel event, `contribution_ns`, `rank` (1 = root cause), the kind and
//!   a one-line summary.
//!
//! Replay ignores all of these (they do not drive the program).

use crate::graph::CausalGraph;
use crate::otlp::Span;
use crate::store::{EvRef, Store};
use anyhow::{bail, Context, Result};
use foldhash::{HashMap, HashMapExt};
use kpl::event::{Cause, Note};
use kpl::{Data, Event, EventBody, Reader, Writer};
use std::path::Path;

/// Topic of the notes that hold causal graphs.
pub const NOTE_TOPIC: &str = "kprobe.why";

/// What [`write_index`] wrote.
#[derive(Clone, Debug)]
pub struct IndexStats {
    /// The recording copied as the base.
    pub base: String,
    /// Events copied from it.
    pub base_events: u64,
    /// Transactions indexed.
    pub transactions: usize,
    /// Cause events written.
    pub causes: usize,
    /// Total events in the new log.
    pub events: u64,
}

/// Writes `out`: the base recording of `store` plus the explanations `graphs` (see the module docs).
pub fn write_index(store: &Store, graphs: &[CausalGraph], out: &Path) -> Result<IndexStats> {
    let base_src = store.sources.iter().position(|s| s.replayable()).unwrap_or(0);
    let base = store.sources.get(base_src).context("no recording to index (give at least one .kpl)")?;
    let r = Reader::open(&base.path).with_context(|| format!("opening {}", base.path.display()))?;
    let mut meta = r.meta().clone();
    meta.extra.push(("cause_index".into(), format!("{} transactions", graphs.len())));
    let mut w = Writer::create(out, &meta).with_context(|| format!("creating {}", out.display()))?;
    // The base, event for event: same sequence numbers.
    for f in &r.index().files {
        let bytes = r.file(&f.hash).with_context(|| format!("reading the file store of {}", base.path.display()))?;
        w.store_file(&bytes)?;
    }
    let mut n = 0u64;
    for ev in r.events() {
        let mut ev = ev.with_context(|| format!("reading {}", base.path.display()))?;
        while w.next_seq() < ev.seq {
            // A gap (damaged block in the base): keep numbering aligned.
            w.append(Event::new(ev.ts_ns, 0, 0, u16::MAX, EventBody::Note(Note { topic: "kprobe.gap".into(), text: String::new() })))?;
        }
        let mut err = None;
        ev.data_mut(|d| {
            if let Data::Stored { .. } = d {
                match r.payload(d) {
                    Ok(b) => *d = Data::Bytes(b.into_owned()),
                    Err(e) => err = Some(e),
                }
            }
        });
        if let Some(e) = err {
            return Err(e).context("copying a payload");
        }
        w.append(ev)?;
        n += 1;
    }
    w.set_exit_code(r.index().summary.exit_code);
    for (k, v) in &r.index().summary.extra {
        w.set_summary_fact(k, v);
    }
    let from = w.next_seq();
    w.set_summary_fact(FROM_FACT, from);
    // Spans.
    let mut seen = std::collections::HashSet::new();
    for s in &store.spans {
        if seen.insert((s.trace_id, s.span_id)) {
            w.append(span_event(s))?;
        }
    }
    // Kernel events from the other recordings that causes rest on.
    let mut copied: HashMap<EvRef, u64> = HashMap::new();
    let by_ref: HashMap<EvRef, usize> = store.events.iter().enumerate().map(|(i, e)| (e.at, i)).collect();
    let mut causes = 0;
    for g in graphs {
        for n in g.ranked() {
            for at in &n.evidence {
                if at.src as usize == base_src || copied.contains_key(at) {
                    continue;
                }
                if let Some(&i) = by_ref.get(at) {
                    let e = &store.events[i];
                    let mut ev = Event::new(e.ts, e.pid, e.tid, e.cpu, e.body.clone());
                    ev.seq = 0;
                    copied.insert(*at, w.append(ev)?);
                }
            }
        }
    }
    let seq_of = |at: &EvRef| -> Option<u64> {
        if at.src as usize == base_src {
            Some(at.seq)
        } else {
            copied.get(at).copied()
        }
    };
    for g in graphs {
        let Some(txn) = &g.txn else { continue };
        let ts = g.nodes.first().map(|n| n.start_ns).unwrap_or(0);
        let json = serde_json::to_string(g)?;
        let note = w.append(Event::new(ts, 0, 0, u16::MAX, EventBody::Note(Note { topic: NOTE_TOPIC.into(), text: json })))?;
        w.append(Event::new(
            ts,
            0,
            0,
            u16::MAX,
            EventBody::Cause(Cause {
                txn: txn.clone(),
                effect_seq: u64::MAX,
                cause_seq: note,
                contribution_ns: g.nodes.first().map(|n| n.end_ns.saturating_sub(n.start_ns)).unwrap_or(0),
                rank: 0,
                cause_kind: "graph".into(),
                summary: g.nodes.first().map(|n| n.label.clone()).unwrap_or_default(),
            }),
        ))?;
        for n in g.ranked() {
            let effect = n.strike.filter(|s| s.src as usize == base_src).map(|s| s.seq).unwrap_or(u64::MAX);
            let cause = n.evidence.first().and_then(seq_of).unwrap_or(u64::MAX);
            w.append(Event::new(
                n.start_ns,
                n.pid,
                n.tid,
                u16::MAX,
                EventBody::Cause(Cause {
                    txn: txn.clone(),
                    effect_seq: effect,
                    cause_seq: cause,
                    contribution_ns: n.contribution_ns,
                    rank: n.rank,
                    cause_kind: n.kind.name().into(),
                    summary: n.label.clone(),
                }),
            ))?;
            causes += 1;
        }
    }
    let (_, st) = w.finish()?;
    Ok(IndexStats {
        base: base.path.display().to_string(),
        base_events: n,
        transactions: graphs.iter().filter(|g| g.txn.is_some()).count(),
        causes,
        events: st.events,
    })
}

fn span_event(s: &Span) -> Event {
    Event::new(s.start_ns, s.pid.unwrap_or(0), s.tid.unwrap_or(0), u16::MAX, EventBody::Span(s.to_ref()))
}

/// Summary fact: the sequence number where the index's own events start (after the base).
const FROM_FACT: &str = "cause_index_from";

/// Where the index's own events start (0 for an index written before the fact existed).
fn index_start(r: &Reader) -> u64 {
    r.index().summary.extra.iter().find(|(k, _)| k == FROM_FACT).and_then(|(_, v)| v.parse().ok()).unwrap_or(0)
}

/// The `cause` events a log holds for `txn`, in log order.
pub fn causes_of(r: &Reader, txn: &str) -> Result<Vec<(u64, Cause)>> {
    let from = index_start(r);
    let mut out = Vec::new();
    for &seq in r.txn_seqs(txn).iter().filter(|&&s| s >= from) {
        let ev = r.get(seq)?;
        if let EventBody::Cause(c) = ev.body {
            out.push((seq, c));
        }
    }
    Ok(out)
}

/// True when the log holds a cause index (any `cause` event).
pub fn has_index(r: &Reader) -> bool {
    r.index().count(kpl::Kind::Cause) > 0
}

/// The causal graph of `txn` from a log's cause index, if it has one.
///
/// The transaction's events are read from the last one back: its ranked
/// causes, then the `graph` cause pointing at the note, all in the index's
/// last blocks (the base recording's events naming it are not read).
pub fn read_graph(r: &Reader, txn: &str) -> Result<Option<CausalGraph>> {
    let from = index_start(r);
    for &seq in r.txn_seqs(txn).iter().rev().take_while(|&&s| s >= from) {
        let EventBody::Cause(c) = r.get(seq)?.body else { continue };
        if c.cause_kind == "graph" {
            let ev = r.get(c.cause_seq)?;
            let EventBody::Note(n) = ev.body else {
                bail!("{}: cause index of {txn}: event {} is not the graph note", r.path().display(), c.cause_seq);
            };
            let g: CausalGraph = serde_json::from_str(&n.text)
                .with_context(|| format!("{}: cause index of {txn}: bad graph in event {}", r.path().display(), c.cause_seq))?;
            return Ok(Some(g));
        }
    }
    Ok(None)
}

/// Every causal graph of a log's cause index, in order of the transactions' start.
pub fn read_all(r: &Reader) -> Result<Vec<CausalGraph>> {
    let mut out = Vec::new();
    for (txn, _) in &r.index().txns {
        if let Some(g) = read_graph(r, txn)? {
            out.push(g);
        }
    }
    out.sort_by_key(|g| (g.nodes.first().map(|n| n.start_ns).unwrap_or(0), g.txn.clone()));
    Ok(out)
}

/// Where `kprobe replay --break-at-cause TXN` stops: the event of the log
/// where the root cause of `txn` struck (sequence number) and a
/// description of the cause. `None` when the log's index has no cause for
/// `txn`; an error when the log has no cause index at all.
pub fn cause_for_replay(log: &Path, txn: &str) -> Result<Option<(u64, String)>> {
    let r = Reader::open(log).with_context(|| format!("opening {}", log.display()))?;
    if !has_index(&r) {
        bail!(
            "{}: no cause index in this log (write one with `kprobe why --all --log ... --spans ... --save-index {}`)",
            log.display(),
            log.display()
        );
    }
    let mut best: Option<(u64, Cause)> = None;
    for (_, c) in causes_of(&r, txn)? {
        if c.rank >= 1 && c.effect_seq != u64::MAX && best.as_ref().is_none_or(|(_, b)| c.rank < b.rank) {
            best = Some((c.effect_seq, c));
        }
    }
    Ok(best.map(|(seq, c)| (seq, format!("cause #{} ({}, {}): {}", c.rank, c.cause_kind, crate::graph::dur(c.contribution_ns), c.summary))))
}

/// Where `kprobe replay --break-at-cause TXN` stops and what it shows: the
/// event of the log where the root cause of `txn` struck, and the causal
/// chain as text ending with a line naming that event and the cause. An
/// error naming the log when it has no cause index or no cause of `txn`
/// struck a task of its recording.
pub fn replay_stop(log: &Path, txn: &str) -> Result<(u64, String)> {
    let (seq, what) =
        cause_for_replay(log, txn)?.with_context(|| format!("{}: no cause of {txn:?} struck a task of this recording", log.display()))?;
    let r = Reader::open(log).with_context(|| format!("opening {}", log.display()))?;
    let mut text = read_graph(&r, txn)?.map(|g| crate::render::text(&g)).unwrap_or_default();
    text.push_str(&format!("root cause struck at event {seq}: {what}\n"));
    Ok((seq, text))
}
