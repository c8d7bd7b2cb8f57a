//! One line of text per event, as `kprobe log dump` prints it.

use crate::event::{Event, EventBody, ForkKind};
use crate::json::signal_name;
use crate::sys;

/// A one-line description of an event's body (no header).
pub fn describe(ev: &Event) -> String {
    match &ev.body {
        EventBody::Syscall(s) => {
            let mut out = format!("{}({}) = {}", s.name(), sys::format_args(s.nr, &s.args), sys::format_ret(s.ret));
            if s.duration_ns >= 1000 {
                out.push_str(&format!(" <{:.6}s>", s.duration_ns as f64 / 1e9));
            }
            let n: usize = s.writes.iter().map(|w| w.data.len()).sum();
            if n > 0 {
                out.push_str(&format!(" [wrote {n} bytes in {} region{}]", s.writes.len(), if s.writes.len() == 1 { "" } else { "s" }));
            }
            out
        }
        EventBody::Exec(e) => format!("exec {} {:?} cwd={}", e.exe.path, e.argv, e.cwd),
        EventBody::Fork(f) => format!(
            "{} child pid={} tid={}",
            match f.kind {
                ForkKind::Fork => "fork",
                ForkKind::Vfork => "vfork",
                ForkKind::Thread => "thread",
            },
            f.child_pid,
            f.child_tid
        ),
        EventBody::Exit(x) => match x.signal {
            Some(s) => format!("killed by {}{}", signal_name(s), if x.core_dumped { " (core dumped)" } else { "" }),
            None => format!("exit {}{}", x.code, if x.group { "" } else { " (thread)" }),
        },
        EventBody::Signal(s) => format!(
            "{} code={} at ip={:#x}{}",
            signal_name(s.signo),
            s.code,
            s.landing.ip,
            if s.synchronous { " (synchronous)" } else { "" }
        ),
        EventBody::Preempt(p) => format!("preempted at ip={:#x} fingerprint={:#x}", p.landing.ip, p.landing.fingerprint),
        EventBody::Rdtsc(r) => format!("rdtsc{} at {:#x} = {}", if r.aux.is_some() { "p" } else { "" }, r.ip, r.tsc),
        EventBody::Cpuid(c) => format!("cpuid({:#x},{:#x}) at {:#x} = {:x?}", c.leaf, c.subleaf, c.ip, c.regs),
        EventBody::FileSnapshot(f) => {
            format!("file {} ({} bytes, {})", f.file.path, f.file.size, f.reason)
        }
        EventBody::SchedSwitch(s) => {
            format!("switch out ({}, state {}) → {}/{} {}", s.prev_comm, s.prev_state as char, s.next_pid, s.next_tid, s.next_comm)
        }
        EventBody::SchedWakeup(w) => {
            format!("woken by {}/{} onto cpu {}{}", w.waker_pid, w.waker_tid, w.target_cpu, if w.new_task { " (new task)" } else { "" })
        }
        EventBody::SchedDelay(d) => {
            format!("run-queue delay {} µs, culprit {}/{} {}", d.delay_ns / 1000, d.culprit_pid, d.culprit_tid, d.culprit_comm)
        }
        EventBody::SchedMigrate(m) => format!("migrated cpu {} → {}", m.from_cpu, m.to_cpu),
        EventBody::TcpSend(t) | EventBody::TcpRecv(t) | EventBody::TcpRetransmit(t) | EventBody::TcpState(t) => {
            let tu = &t.tuple;
            let what = match &ev.body {
                EventBody::TcpState(_) => format!("state {} → {}", t.old_state, t.new_state),
                _ => format!("{} bytes", t.bytes),
            };
            format!(
                "{}:{} → {}:{} {what}{}",
                tu.saddr,
                tu.sport,
                tu.daddr,
                tu.dport,
                if t.srtt_us > 0 { format!(" srtt={}µs", t.srtt_us) } else { String::new() }
            )
        }
        EventBody::PageFault(p) => format!(
            "{} fault at {:#x} ip={:#x}",
            match p.major {
                Some(true) => "major",
                Some(false) => "minor",
                None => "page",
            },
            p.addr,
            p.ip
        ),
        EventBody::Span(s) => format!("span {} [{}] txn={} {} µs", s.name, s.service, s.txn, s.end_ns.saturating_sub(s.start_ns) / 1000),
        EventBody::Cause(c) => format!(
            "cause #{} of {}: event {} delayed event {} by {} µs: {}",
            c.rank,
            c.txn,
            c.cause_seq,
            c.effect_seq,
            c.contribution_ns / 1000,
            c.summary
        ),
        EventBody::Lost(l) => format!("LOST {} events at {}", l.count, l.source),
        EventBody::Cgroup(c) => format!("cgroup {} = {} container={}", c.cgroup_id, c.path, c.container_id),
        EventBody::Note(n) => format!("note [{}] {}", n.topic, n.text),
        EventBody::Resume(r) => format!("resume ({:?})", r.reason),
    }
}

/// The full line: `seq ts pid/tid cpu kind description`.
pub fn line(ev: &Event, base_ts: u64) -> String {
    let rel = ev.ts_ns.saturating_sub(base_ts);
    format!(
        "{:>8} {:>6}.{:09} {:>7}/{:<7} cpu{:<3} {:<14} {}",
        ev.seq,
        rel / 1_000_000_000,
        rel % 1_000_000_000,
        ev.pid,
        ev.tid,
        if ev.cpu == u16::MAX { "?".to_string() } else { ev.cpu.to_string() },
        ev.kind().name(),
        describe(ev)
    )
}
