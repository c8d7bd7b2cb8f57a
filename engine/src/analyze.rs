//! The causal analysis.
//!
//! A transaction's spans are tied to the threads they ran on (their
//! `process.pid`/`thread.id` attributes, or the thread that received their
//! W3C `traceparent`). Within each span the engine looks at that thread's
//! kernel events over the span's time:
//!
//! * syscalls that blocked ≥ the threshold, and for each what delayed it:
//!   run-queue delay (and which task had the CPU instead), TCP
//!   retransmissions on the connection it waited on, the remote service's
//!   span across that connection (and that service's thread before its span
//!   started), or the thread that woke it (a futex or pipe held by another
//!   thread), followed recursively;
//! * run-queue delays outside syscalls (preempted while running);
//! * page faults that stalled on I/O or reclaim (memory pressure), with the
//!   process whose page faults grew most in the same window as culprit.
//!
//! Evidence is looked for in the interval and up to one window
//! (`engine.windowMs`) before it. Every contribution is clipped to the
//! interval it explains; each kernel event is used once; only contributions
//! ≥ `engine.causalThresholdNs` become edges. Causes are ranked by
//! contribution.

use crate::config::EngineConfig;
use crate::graph::{dur, CausalGraph, Culprit, Node, NodeKind};
use crate::otlp::Span;
use crate::store::{ConnKey, EvRef, Store};
use anyhow::{bail, Result};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use kpl::EventBody;
use std::collections::BTreeMap;

/// Transaction ids named by the store's spans, in order of first start.
pub fn transactions(store: &Store) -> Vec<String> {
    let mut v: Vec<(u64, &str)> = store.spans.iter().filter(|s| !s.txn.is_empty()).map(|s| (s.start_ns, s.txn.as_str())).collect();
    v.sort();
    let mut seen = HashSet::new();
    v.into_iter().filter(|(_, t)| seen.insert(*t)).map(|(_, t)| t.to_owned()).collect()
}

/// Explains why transaction `txn` took the time it took.
pub fn explain_txn(store: &Store, cfg: &EngineConfig, txn: &str) -> Result<CausalGraph> {
    let traces: HashSet<[u8; 16]> = store.spans.iter().filter(|s| s.txn == txn).map(|s| s.trace_id).collect();
    if traces.is_empty() {
        let n = transactions(store);
        bail!(
            "no span names transaction {txn:?} (attribute `{}`; {} spans, {} transactions{})",
            cfg.txn_attribute,
            store.spans.len(),
            n.len(),
            if n.is_empty() { String::new() } else { format!(", e.g. {}", n.iter().take(3).cloned().collect::<Vec<_>>().join(", ")) }
        );
    }
    let spans: Vec<&Span> = store.spans.iter().filter(|s| traces.contains(&s.trace_id)).collect();
    let mut a = Analysis::new(store, cfg, spans);
    let start = a.spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let end = a.spans.iter().map(|s| s.end_ns).max().unwrap_or(0);
    let ids: HashSet<[u8; 8]> = a.spans.iter().map(|s| s.span_id).collect();
    let mut roots: Vec<&Span> = a.spans.iter().copied().filter(|s| s.is_root() || !ids.contains(&s.parent_span_id)).collect();
    roots.sort_by_key(|s| s.start_ns);
    let error = a.spans.iter().find(|s| s.status == 2);
    let label = format!(
        "transaction {txn}: {}{}",
        dur(end - start),
        match error {
            Some(s) if !s.status_message.is_empty() => format!(", ERROR in {} {}: {}", s.service, s.name, s.status_message),
            Some(s) => format!(", ERROR in {} {}", s.service, s.name),
            None => String::new(),
        }
    );
    let (pid, tid) = roots.first().map(|s| (s.pid.unwrap_or(0), s.tid.unwrap_or(0))).unwrap_or((0, 0));
    let root = a.add(NodeKind::Transaction, label, start, end, pid, tid);
    a.g.txn = Some(txn.to_owned());
    a.g.subject = format!("transaction {txn}");
    for s in roots {
        a.span(s, root, 0);
    }
    Ok(a.finish())
}

/// Explains every transaction of the store ([`transactions`]), in order of first start.
pub fn explain_all(store: &Store, cfg: &EngineConfig) -> Result<Vec<CausalGraph>> {
    let txns = transactions(store);
    if txns.is_empty() {
        bail!("no transactions in the spans given (attribute `{}`, {} spans)", cfg.txn_attribute, store.spans.len());
    }
    txns.iter().map(|t| explain_txn(store, cfg, t)).collect()
}

/// Explains the `n` slowest blocking syscalls of process `pid` (no spans needed).
pub fn explain_pid(store: &Store, cfg: &EngineConfig, pid: u32, n: usize) -> Result<CausalGraph> {
    let calls = store.slowest_syscalls(pid, n, cfg.threshold_ns);
    let mut a = Analysis::new(store, cfg, Vec::new());
    let comm = store.comm(pid);
    if calls.is_empty() && !store.events.iter().any(|e| e.pid == pid) {
        bail!("no event of process {pid} in {}", a.g.sources.join(", "));
    }
    let (start, end) = calls.iter().fold((u64::MAX, 0), |(s, e), &i| (s.min(store.ev(i).ts), e.max(store.ev(i).end())));
    let label = format!("process {pid} ({comm}): {} slowest blocking syscalls ≥ {}", calls.len(), dur(cfg.threshold_ns));
    let root = a.add(NodeKind::Process, label, if calls.is_empty() { 0 } else { start }, end, pid, pid);
    a.g.subject = format!("process {pid} ({comm})");
    for i in calls {
        let e = store.ev(i);
        let node = a.syscall_node(i, e.ts, e.end(), root);
        a.blocked(i, e.ts, e.end(), node, &[], 0);
    }
    Ok(a.finish())
}

struct Analysis<'s> {
    s: &'s Store,
    cfg: &'s EngineConfig,
    spans: Vec<&'s Span>,
    g: CausalGraph,
    used: HashSet<u32>,
    spans_done: HashSet<[u8; 8]>,
    /// Threads whose intervals are being explained (no cycles).
    active: Vec<u32>,
}

fn overlap(a: u64, b: u64, x: u64, y: u64) -> u64 {
    b.min(y).saturating_sub(a.max(x))
}

/// `[a, b]` minus the intervals in `excl`, as a total length.
fn overlap_excl(a: u64, b: u64, x: u64, y: u64, excl: &[(u64, u64)]) -> u64 {
    let total = overlap(a, b, x, y);
    let (lo, hi) = (a.max(x), b.min(y));
    if total == 0 {
        return 0;
    }
    let mut cut = 0;
    let mut ex: Vec<(u64, u64)> = excl.iter().map(|&(p, q)| (p.max(lo), q.min(hi))).filter(|(p, q)| q > p).collect();
    ex.sort();
    let mut cur = lo;
    for (p, q) in ex {
        let p = p.max(cur);
        if q > p {
            cut += q - p;
            cur = q;
        }
    }
    total - cut.min(total)
}

impl<'s> Analysis<'s> {
    fn new(s: &'s Store, cfg: &'s EngineConfig, spans: Vec<&'s Span>) -> Analysis<'s> {
        Analysis {
            s,
            cfg,
            spans,
            g: CausalGraph {
                subject: String::new(),
                txn: None,
                nodes: Vec::new(),
                causes: Vec::new(),
                threshold_ns: cfg.threshold_ns,
                window_ns: cfg.window_ns,
                sources: s.sources.iter().map(|x| x.path.display().to_string()).collect(),
            },
            used: HashSet::new(),
            spans_done: HashSet::new(),
            active: Vec::new(),
        }
    }

    fn add(&mut self, kind: NodeKind, label: String, start: u64, end: u64, pid: u32, tid: u32) -> usize {
        let id = self.g.nodes.len();
        let comm = if tid != 0 {
            self.s.comm(tid)
        } else if pid != 0 {
            self.s.comm(pid)
        } else {
            String::new()
        };
        self.g.nodes.push(Node {
            id,
            kind,
            label,
            start_ns: start,
            end_ns: end,
            pid,
            tid,
            comm,
            contribution_ns: end.saturating_sub(start),
            rank: 0,
            culprit: None,
            location: None,
            evidence: Vec::new(),
            strike: None,
            strike_desc: None,
            children: Vec::new(),
        });
        id
    }

    fn link(&mut self, parent: usize, child: usize) {
        self.g.nodes[parent].children.push(child);
    }

    fn thr(&self) -> u64 {
        self.cfg.threshold_ns
    }

    fn span(&mut self, sp: &'s Span, parent: usize, depth: usize) {
        if !self.spans_done.insert(sp.span_id) {
            return;
        }
        let kind = match sp.kind {
            2 => " (server)",
            3 => " (client)",
            4 => " (producer)",
            5 => " (consumer)",
            _ => "",
        };
        let status = match (sp.status, sp.status_message.as_str()) {
            (2, "") => ", ERROR".to_owned(),
            (2, m) => format!(", ERROR: {m}"),
            _ => String::new(),
        };
        let tid = sp.tid.or_else(|| sp.pid.filter(|p| self.s.knows_tid(*p)));
        let pid = sp.pid.or_else(|| tid.and_then(|t| self.s.pid_of(t))).unwrap_or(0);
        let label = format!("{} {}{kind}: {}{status}", sp.service, sp.name, dur(sp.duration_ns()));
        let n = self.add(NodeKind::Span, label, sp.start_ns, sp.end_ns, pid, tid.unwrap_or(0));
        self.link(parent, n);
        let mut children: Vec<&'s Span> = self.spans.iter().copied().filter(|c| c.parent_span_id == sp.span_id && !c.is_root()).collect();
        children.sort_by_key(|c| c.start_ns);
        let (local, remote): (Vec<&Span>, Vec<&Span>) = children.into_iter().partition(|c| tid.is_some() && c.tid == tid);
        for c in &local {
            self.span(c, n, depth);
        }
        let excl: Vec<(u64, u64)> = local.iter().map(|c| (c.start_ns, c.end_ns)).collect();
        match tid {
            Some(t) if self.s.knows_tid(t) => self.thread(t, sp.start_ns, sp.end_ns, n, &excl, &remote, depth),
            _ => {
                self.g.nodes[n].label.push_str(" [no kernel events of its thread]");
            }
        }
        for r in remote {
            self.span(r, n, depth + 1);
        }
    }

    /// What kept thread `tid` busy or waiting during `[a, b]`.
    #[allow(clippy::too_many_arguments)]
    fn thread(&mut self, tid: u32, a: u64, b: u64, parent: usize, excl: &[(u64, u64)], remote: &[&'s Span], depth: usize) {
        if self.active.contains(&tid) || depth > self.cfg.max_depth {
            return;
        }
        self.active.push(tid);
        let mut covered: Vec<(u64, u64)> = excl.to_vec();
        for i in self.s.syscalls(tid, a, b) {
            let e = self.s.ev(i);
            let (x, y) = (e.ts.max(a), e.end().min(b));
            if overlap_excl(x, y, x, y, excl) < self.thr() {
                continue;
            }
            let n = self.syscall_node(i, x, y, parent);
            self.blocked(i, x, y, n, remote, depth);
            covered.push((x, y));
        }
        self.sched(tid, a, b, parent, &covered);
        self.fault_stalls(tid, a, b, parent, &covered);
        self.active.pop();
    }

    fn syscall_node(&mut self, i: u32, x: u64, y: u64, parent: usize) -> usize {
        let e = self.s.ev(i);
        let sc = e.syscall().expect("a syscall");
        let label = format!(
            "{}({}) blocked {}{}",
            sc.name(),
            kpl::sys::format_args(sc.nr, &sc.args),
            dur(y - x),
            if y - x + 1000 < sc.duration_ns { format!(" (of {})", dur(sc.duration_ns)) } else { String::new() }
        );
        let n = self.add(NodeKind::Syscall, label, x, y, e.pid, e.tid);
        self.g.nodes[n].evidence.push(e.at);
        if self.s.sources.get(e.at.src as usize).is_some_and(|s| s.replayable()) {
            self.g.nodes[n].strike = Some(e.at);
            self.g.nodes[n].strike_desc = Some(format!("{} of task {}", kpl::sys::syscall_name(sc.nr), e.tid));
        }
        self.link(parent, n);
        n
    }

    /// What delayed syscall `i` (clipped to `[a, b]`).
    fn blocked(&mut self, i: u32, a: u64, b: u64, node: usize, remote: &[&'s Span], depth: usize) {
        let e = self.s.ev(i);
        let (tid, pid) = (e.tid, e.pid);
        self.sched(tid, a, b, node, &[]);
        // The connections the thread used around the call.
        let mut conns: Vec<ConnKey> = Vec::new();
        for j in self.s.tcp_of(tid, a.saturating_sub(1_000_000), b + 1_000_000) {
            if let Some(t) = self.s.ev(j).tcp() {
                let k = ConnKey::of(&t.tuple);
                if !conns.contains(&k) {
                    conns.push(k);
                }
            }
        }
        for c in &conns {
            self.retransmits(c, a, b, node);
        }
        // A remote service's span across the connection.
        let mut waited_on_span = false;
        for r in remote.iter().copied().filter(|r| r.start_ns < b && r.end_ns > a) {
            if self.spans_done.contains(&r.span_id) {
                continue;
            }
            waited_on_span = true;
            if let Some(rt) = r.tid.filter(|t| *t != tid && self.s.knows_tid(*t)) {
                if r.start_ns > a + self.thr() {
                    let label = format!("{} {} started {} after the request", r.service, r.name, dur(r.start_ns - a));
                    let w = self.add(NodeKind::Wait, label, a, r.start_ns, r.pid.unwrap_or(0), rt);
                    self.link(node, w);
                    self.thread(rt, a, r.start_ns, w, &[], &[], depth + 1);
                }
            }
            self.span(r, node, depth + 1);
        }
        if waited_on_span || depth >= self.cfg.max_depth {
            return;
        }
        // Woken by another thread: what was it doing meanwhile?
        let mut wakers: Vec<(u32, u32)> = Vec::new();
        for j in self.s.wakeups(tid, b.saturating_sub(200_000), b + 200_000) {
            if let EventBody::SchedWakeup(w) = &self.s.ev(j).body {
                if w.waker_tid != 0 && w.waker_tid != tid && self.s.knows_tid(w.waker_tid) {
                    wakers.push((w.waker_pid, w.waker_tid));
                }
            }
        }
        // The other end of the connection it waited on.
        for c in &conns {
            for (p, t) in self.s.conn_threads(c, a.saturating_sub(self.cfg.window_ns), b + self.cfg.window_ns) {
                if p != pid {
                    wakers.push((p, t));
                }
            }
        }
        let mut seen = HashSet::new();
        for (wp, wt) in wakers {
            if !seen.insert(wt) || self.active.contains(&wt) {
                continue;
            }
            let label = format!("waiting for {} (pid {wp}, tid {wt})", self.s.comm(wt));
            let w = self.add(NodeKind::Wait, label, a, b, wp, wt);
            self.link(node, w);
            self.thread(wt, a, b, w, &[], &[], depth + 1);
        }
    }

    /// Run-queue delays of `tid` in `[a, b]` (outside `excl`), one cause per culprit.
    fn sched(&mut self, tid: u32, a: u64, b: u64, parent: usize, excl: &[(u64, u64)]) {
        // culprit pid -> (contribution, events, culprit tid, cpu)
        let mut by: BTreeMap<u32, (u64, Vec<u32>, u32, u16)> = BTreeMap::new();
        for i in self.s.delays(tid, a, b) {
            if self.used.contains(&i) {
                continue;
            }
            let e = self.s.ev(i);
            let d = e.delay().expect("a delay");
            let c = overlap_excl(a, b, e.start(), e.end(), excl);
            if c == 0 {
                continue;
            }
            let (cp, ct) = self.who_ran(e.cpu, e.start(), e.end(), tid).unwrap_or((d.culprit_pid, d.culprit_tid));
            if ct == 0 {
                // The CPU was idle: wake-up latency, not another task's doing.
                continue;
            }
            let x = by.entry(cp).or_insert((0, Vec::new(), ct, e.cpu));
            x.0 += c;
            x.1.push(i);
        }
        for (cp, (c, evs, ct, cpu)) in by {
            if c < self.thr() {
                continue;
            }
            for &i in &evs {
                self.used.insert(i);
            }
            let first = self.s.ev(evs[0]);
            let (start, end) = (first.start().max(a), self.s.ev(*evs.last().unwrap()).end().min(b));
            let who = self.s.comm(ct);
            let waits = if evs.len() == 1 { String::new() } else { format!(" in {} waits", evs.len()) };
            let label = format!(
                "run-queue delay {}{waits} on CPU {cpu}: {who} (pid {cp}, tid {ct}) ran while {} (tid {tid}) waited",
                dur(c),
                self.s.comm(tid)
            );
            let n = self.add(NodeKind::SchedDelay, label, start, end, first.pid, tid);
            let node = &mut self.g.nodes[n];
            node.contribution_ns = c;
            node.culprit = Some(Culprit { pid: cp, tid: ct, comm: who, what: format!("held CPU {cpu} for {}", dur(c)) });
            node.evidence = evs.iter().map(|&i| self.s.ev(i).at).collect();
            self.strike(n, tid, end);
            self.link(parent, n);
        }
    }

    /// Which task ran most on `cpu` during `[a, b]` (other than `tid`), from the context switches.
    fn who_ran(&self, cpu: u16, a: u64, b: u64, tid: u32) -> Option<(u32, u32)> {
        let sw = self.s.cpu_switches(cpu, a.saturating_sub(self.cfg.window_ns), b);
        if sw.is_empty() {
            return None;
        }
        let mut ran: HashMap<(u32, u32), u64> = HashMap::new();
        let mut cur: Option<(u32, u32, u64)> = None;
        for i in sw {
            let e = self.s.ev(i);
            let EventBody::SchedSwitch(s) = &e.body else { continue };
            if let Some((p, t, since)) = cur {
                *ran.entry((p, t)).or_default() += overlap(a, b, since, e.ts);
            }
            cur = Some((s.next_pid, s.next_tid, e.ts));
        }
        if let Some((p, t, since)) = cur {
            *ran.entry((p, t)).or_default() += overlap(a, b, since, b);
        }
        ran.into_iter().filter(|((_, t), n)| *t != tid && *t != 0 && *n > 0).max_by_key(|(k, n)| (*n, *k)).map(|(k, _)| k)
    }

    /// Retransmissions on connection `c` that stalled `[a, b]`.
    fn retransmits(&mut self, c: &ConnKey, a: u64, b: u64, parent: usize) {
        let evs = self.s.conn_events(c, a.saturating_sub(self.cfg.window_ns), b);
        let retx: Vec<u32> =
            evs.iter().copied().filter(|i| matches!(self.s.ev(*i).body, EventBody::TcpRetransmit(_)) && !self.used.contains(i)).collect();
        if retx.is_empty() {
            return;
        }
        // Per direction: from the original transmission (the last send in that
        // direction before its first retransmit) to its last retransmit.
        struct Dir {
            tuple: kpl::event::Tuple,
            orig: u64,
            last: u64,
            n: usize,
            pid: u32,
            tid: u32,
            srtt: u32,
        }
        let mut dirs: Vec<Dir> = Vec::new();
        for &i in &retx {
            let e = self.s.ev(i);
            let t = e.tcp().expect("tcp");
            if let Some(d) = dirs.iter_mut().find(|d| d.tuple == t.tuple) {
                d.last = e.ts;
                d.n += 1;
                d.srtt = t.srtt_us;
                continue;
            }
            let orig = evs
                .iter()
                .map(|&j| self.s.ev(j))
                .filter(|x| matches!(&x.body, EventBody::TcpSend(s) if s.tuple == t.tuple) && x.ts <= e.ts)
                .map(|x| x.ts)
                .max()
                .unwrap_or(a);
            dirs.push(Dir { tuple: t.tuple.clone(), orig, last: e.ts, n: 1, pid: e.pid, tid: e.tid, srtt: t.srtt_us });
        }
        let lo = dirs.iter().map(|d| d.orig).min().unwrap_or(a);
        let hi = dirs.iter().map(|d| d.last).max().unwrap_or(a);
        let c_ns = overlap(a, b, lo, hi);
        if c_ns < self.thr() {
            return;
        }
        for &i in &retx {
            self.used.insert(i);
        }
        let d = dirs.iter().max_by_key(|d| (overlap(a, b, d.orig, d.last), d.n)).expect("one direction");
        let others: usize = dirs.iter().filter(|x| x.tuple != d.tuple).map(|x| x.n).sum();
        let (src, dst) = (format!("{}:{}", d.tuple.saddr, d.tuple.sport), format!("{}:{}", d.tuple.daddr, d.tuple.dport));
        let label = format!(
            "TCP retransmission{} {src} -> {dst}: segment resent {} after it was first sent{}{} (packet loss)",
            if d.n == 1 { String::new() } else { format!("s ×{}", d.n) },
            dur(d.last.saturating_sub(d.orig)),
            if d.srtt > 0 { format!(", srtt {} µs", d.srtt) } else { String::new() },
            if others > 0 { format!("; {others} more in the other direction") } else { String::new() }
        );
        let n = self.add(NodeKind::TcpRetransmit, label, lo.max(a), hi.min(b), d.pid, d.tid);
        let who = self.s.comm(d.tid);
        let node = &mut self.g.nodes[n];
        node.contribution_ns = c_ns;
        node.culprit = Some(Culprit {
            pid: d.pid,
            tid: d.tid,
            comm: who,
            what: format!("its packets {src} -> {dst} were lost and retransmitted {} time(s)", d.n),
        });
        node.evidence = retx.iter().map(|&i| self.s.ev(i).at).collect();
        let affected = self.g.nodes[parent].tid;
        self.strike(n, if affected != 0 { affected } else { d.tid }, hi);
        self.link(parent, n);
    }

    /// Page faults of `tid` in `[a, b]` (outside `excl`) that stalled on I/O or reclaim.
    fn fault_stalls(&mut self, tid: u32, a: u64, b: u64, parent: usize, excl: &[(u64, u64)]) {
        let faults = self.s.faults(tid, a, b);
        if faults.is_empty() {
            return;
        }
        let mut stall = 0u64;
        let mut stalled: Vec<u32> = Vec::new();
        for (k, &f) in faults.iter().enumerate() {
            let ft = self.s.ev(f).ts;
            if excl.iter().any(|&(x, y)| ft >= x && ft < y) {
                continue;
            }
            let next_fault = faults.get(k + 1).map(|&n| self.s.ev(n).ts).unwrap_or(b);
            // The task left the CPU in an uninterruptible sleep before touching memory again: it waited on the fault.
            let Some(&out) = self.s.switch_outs(tid, ft, next_fault).first() else { continue };
            let EventBody::SchedSwitch(sw) = &self.s.ev(out).body else { continue };
            if sw.prev_state != b'D' {
                continue;
            }
            let back = self.s.switch_ins(tid, self.s.ev(out).ts, b + self.cfg.window_ns).first().map(|&i| self.s.ev(i).ts).unwrap_or(b);
            stall += overlap(a, b, ft, back);
            stalled.push(f);
        }
        if stall < self.thr() {
            return;
        }
        // The culprit: the other process whose page faults (memory growth)
        // were most numerous in the ten windows before: reclaim follows growth
        // with a delay.
        let mut by: HashMap<u32, (u64, u32)> = HashMap::new();
        for i in self.s.all_faults(a.saturating_sub(10 * self.cfg.window_ns), b) {
            let e = self.s.ev(i);
            if e.pid != self.s.pid_of(tid).unwrap_or(tid) {
                let x = by.entry(e.pid).or_insert((0, e.tid));
                x.0 += 1;
            }
        }
        let top = by.into_iter().max_by_key(|(p, (n, _))| (*n, *p));
        let first = self.s.ev(stalled[0]);
        let label = format!(
            "page-fault stalls {} ({} of {} faults waited on I/O or reclaim){}",
            dur(stall),
            stalled.len(),
            faults.len(),
            match &top {
                Some((p, (n, t))) =>
                    format!(": memory pressure from {} (pid {p}, {n} page faults in the 10 windows before)", self.s.comm(*t)),
                None => String::new(),
            }
        );
        let end = self.s.ev(*stalled.last().unwrap()).ts;
        let n = self.add(NodeKind::PageFaults, label, first.ts, end.max(first.ts), first.pid, tid);
        let loc = match &first.body {
            EventBody::PageFault(pf) => Some(pf.ip),
            _ => None,
        };
        let node = &mut self.g.nodes[n];
        node.contribution_ns = stall;
        node.culprit = top.map(|(p, (cnt, t))| Culprit {
            pid: p,
            tid: t,
            comm: self.s.comm(t),
            what: format!("{cnt} page faults in the 10 windows before (memory growth forcing reclaim)"),
        });
        node.evidence = stalled.iter().take(64).map(|&i| self.s.ev(i).at).collect();
        if let Some(ip) = loc {
            node.location = Some(crate::symbols::locate(self.s, first.pid, ip).unwrap_or_else(|| format!("ip {ip:#x}")));
        }
        self.strike(n, tid, first.ts);
        self.link(parent, n);
    }

    /// Where a cause struck `tid` at time `t` in a replayable recording:
    /// the syscall in progress then, or the task's next syscall.
    fn strike(&mut self, n: usize, tid: u32, t: u64) {
        if !self.s.sources.iter().any(|s| s.replayable()) {
            return;
        }
        let rep = |r: &EvRef| self.s.sources.get(r.src as usize).is_some_and(|s| s.replayable());
        let during = self.s.syscalls(tid, t, t).into_iter().rev().find(|&i| rep(&self.s.ev(i).at));
        let until = t + 10 * self.cfg.window_ns;
        let pick =
            during.or_else(|| self.s.syscalls_from(tid, t).take_while(|&i| self.s.ev(i).ts <= until).find(|&i| rep(&self.s.ev(i).at)));
        if let Some(i) = pick {
            let e = self.s.ev(i);
            let sc = e.syscall().expect("a syscall");
            self.g.nodes[n].strike = Some(e.at);
            self.g.nodes[n].strike_desc = Some(format!("{}({}) of task {}", sc.name(), kpl::sys::format_args(sc.nr, &sc.args), e.tid));
        }
    }

    fn finish(mut self) -> CausalGraph {
        self.prune();
        // A cause that struck a task outside the replayable recording (e.g.
        // the hog delayed the thread the ledger waited for) strikes the
        // recording where its effect did: the nearest blocked syscall above it.
        let parents = self.g.parents();
        for i in 0..self.g.nodes.len() {
            if !self.g.nodes[i].kind.is_cause() || self.g.nodes[i].strike.is_some() {
                continue;
            }
            let mut p = parents[i];
            while let Some(j) = p {
                if let Some(at) = self.g.nodes[j].strike.filter(|_| self.g.nodes[j].kind == NodeKind::Syscall) {
                    let desc = self.g.nodes[j].strike_desc.clone().map(|d| format!("{d}, which waited on it"));
                    let n = &mut self.g.nodes[i];
                    n.strike = Some(at);
                    n.strike_desc = desc;
                    break;
                }
                p = parents[j];
            }
        }
        let mut causes: Vec<usize> =
            self.g.nodes.iter().filter(|n| n.kind.is_cause() && n.contribution_ns >= self.cfg.threshold_ns).map(|n| n.id).collect();
        causes.sort_by_key(|&i| (std::cmp::Reverse(self.g.nodes[i].contribution_ns), i));
        for (r, &i) in causes.iter().enumerate() {
            self.g.nodes[i].rank = r as u32 + 1;
        }
        self.g.causes = causes;
        self.g
    }

    /// Drops `wait` nodes with no cause below them, and syscall nodes below
    /// waits with none (they explain nothing); renumbers the tree.
    fn prune(&mut self) {
        let n = self.g.nodes.len();
        let mut has_cause = vec![false; n];
        for i in (0..n).rev() {
            let nd = &self.g.nodes[i];
            has_cause[i] = nd.kind.is_cause() || nd.children.iter().any(|&c| has_cause[c]);
        }
        let parents = self.g.parents();
        let keep: Vec<bool> = (0..n)
            .map(|i| {
                let nd = &self.g.nodes[i];
                match nd.kind {
                    NodeKind::Wait => has_cause[i],
                    NodeKind::Syscall => has_cause[i] || parents[i].is_some_and(|p| self.g.nodes[p].kind != NodeKind::Wait),
                    _ => true,
                }
            })
            .collect();
        // A kept node under a dropped one is dropped too.
        let mut alive = vec![false; n];
        let mut stack = vec![0usize];
        while let Some(i) = stack.pop() {
            if i < n && keep[i] {
                alive[i] = true;
                stack.extend(self.g.nodes[i].children.iter().copied());
            }
        }
        let mut map = vec![usize::MAX; n];
        let mut nodes = Vec::new();
        for (i, nd) in std::mem::take(&mut self.g.nodes).into_iter().enumerate() {
            if alive[i] {
                map[i] = nodes.len();
                nodes.push(nd);
            }
        }
        for nd in &mut nodes {
            nd.id = map[nd.id];
            nd.children = nd.children.iter().filter(|&&c| map[c] != usize::MAX).map(|&c| map[c]).collect();
        }
        self.g.nodes = nodes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_minus_exclusions() {
        assert_eq!(overlap(0, 10, 5, 20), 5);
        assert_eq!(overlap_excl(0, 100, 0, 100, &[(10, 20), (15, 30), (90, 200)]), 100 - 20 - 10);
        assert_eq!(overlap_excl(0, 100, 50, 60, &[(0, 100)]), 0);
    }
}
