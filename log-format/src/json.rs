//! One JSON object per event: the shape of `kprobe log dump --json`, of the
//! recorder's JSON-lines sink and of the Kafka message bodies.
//!
//! Every object has `seq`, `ts_ns`, `pid`, `tid`, `cpu`, `cgroup` and `kind`
//! (see [`crate::Kind::name`]), then the body's fields. Syscalls add `name`,
//! `nr`, `args`, `ret` and, on failure, `errno` (e.g. `ENOENT`); buffers are
//! base64 under `data` when available.

use crate::event::{Data, Event, EventBody};
use base64::Engine;
use serde_json::{json, Map, Value};

/// Fetches the bytes of stored data (see [`event_to_json`]).
pub type PayloadFn<'a> = &'a dyn Fn(&Data) -> Option<Vec<u8>>;

/// Renders an event. `payload` fetches stored buffers (pass `None` to leave
/// them out and print only their length).
pub fn event_to_json(ev: &Event, payload: Option<PayloadFn<'_>>) -> Value {
    let mut m = Map::new();
    m.insert("seq".into(), ev.seq.into());
    m.insert("ts_ns".into(), ev.ts_ns.into());
    m.insert("pid".into(), ev.pid.into());
    m.insert("tid".into(), ev.tid.into());
    m.insert("cpu".into(), ev.cpu.into());
    if ev.cgroup != 0 {
        m.insert("cgroup".into(), ev.cgroup.into());
    }
    m.insert("kind".into(), ev.kind().name().into());
    let body = match &ev.body {
        EventBody::Syscall(s) => {
            let mut b = Map::new();
            b.insert("name".into(), s.name().into());
            b.insert("nr".into(), s.nr.into());
            b.insert("args".into(), s.args.iter().map(|a| Value::from(*a)).collect());
            b.insert("ret".into(), s.ret.into());
            if (-4095..0).contains(&s.ret) {
                if let Some(n) = crate::sys::errno_name(-s.ret as i32) {
                    b.insert("errno".into(), n.into());
                }
            }
            b.insert("duration_ns".into(), s.duration_ns.into());
            if s.fd_type != Default::default() {
                b.insert("fd_type".into(), format!("{:?}", s.fd_type).to_lowercase().into());
            }
            if s.flags != 0 {
                b.insert("flags".into(), s.flags.into());
            }
            if !s.writes.is_empty() {
                let ws: Vec<Value> = s
                    .writes
                    .iter()
                    .map(|w| {
                        let mut o = Map::new();
                        o.insert("addr".into(), w.addr.into());
                        o.insert("len".into(), w.data.len().into());
                        match &w.data {
                            Data::Redacted { hash, rule, .. } => {
                                o.insert("redacted".into(), rule.clone().into());
                                if let Some(h) = hash {
                                    o.insert("blake3".into(), h.to_hex().into());
                                }
                            }
                            d => {
                                let bytes = match d {
                                    Data::Bytes(b) => Some(b.clone()),
                                    _ => payload.and_then(|f| f(d)),
                                };
                                if let Some(b) = bytes {
                                    o.insert("data".into(), base64::engine::general_purpose::STANDARD.encode(b).into());
                                }
                            }
                        }
                        Value::Object(o)
                    })
                    .collect();
                b.insert("writes".into(), ws.into());
            }
            Value::Object(b)
        }
        EventBody::Span(s) => json!({
            "trace_id": hex::encode(s.trace_id), "span_id": hex::encode(s.span_id),
            "parent_span_id": hex::encode(s.parent_span_id), "name": s.name, "service": s.service,
            "txn": s.txn, "start_ns": s.start_ns, "end_ns": s.end_ns, "status": s.status,
        }),
        EventBody::Exec(e) => json!({
            "exe": e.exe.path, "exe_hash": e.exe.hash.map(|h| h.to_hex()), "build_id": hex::encode(&e.exe.build_id),
            "argv": e.argv, "env": e.env, "cwd": e.cwd,
        }),
        EventBody::FileSnapshot(f) => json!({
            "path": f.file.path, "hash": f.file.hash.map(|h| h.to_hex()), "size": f.file.size,
            "build_id": hex::encode(&f.file.build_id), "reason": f.reason,
        }),
        EventBody::Signal(s) => json!({
            "signo": s.signo, "signal": signal_name(s.signo), "code": s.code, "sender_pid": s.sender_pid, "addr": s.addr,
            "ip": s.landing.ip, "fingerprint": s.landing.fingerprint, "synchronous": s.synchronous,
        }),
        b => body_value(b),
    };
    if let Value::Object(b) = body {
        m.extend(b);
    }
    Value::Object(m)
}

fn body_value(b: &EventBody) -> Value {
    let r = match b {
        EventBody::Exec(x) => serde_json::to_value(x),
        EventBody::Fork(x) => serde_json::to_value(x),
        EventBody::Exit(x) => serde_json::to_value(x),
        EventBody::Syscall(x) => serde_json::to_value(x),
        EventBody::Signal(x) => serde_json::to_value(x),
        EventBody::Preempt(x) => serde_json::to_value(&x.landing),
        EventBody::Rdtsc(x) => serde_json::to_value(x),
        EventBody::Cpuid(x) => serde_json::to_value(x),
        EventBody::FileSnapshot(x) => serde_json::to_value(x),
        EventBody::SchedSwitch(x) => serde_json::to_value(x),
        EventBody::SchedWakeup(x) => serde_json::to_value(x),
        EventBody::SchedDelay(x) => serde_json::to_value(x),
        EventBody::SchedMigrate(x) => serde_json::to_value(x),
        EventBody::TcpSend(x) | EventBody::TcpRecv(x) | EventBody::TcpRetransmit(x) | EventBody::TcpState(x) => {
            serde_json::to_value(x).map(|mut v| {
                // Flatten the 4-tuple.
                if let Some(t) = v.as_object_mut().and_then(|o| o.remove("tuple")) {
                    if let (Some(o), Value::Object(t)) = (v.as_object_mut(), t) {
                        o.extend(t);
                    }
                }
                v
            })
        }
        EventBody::PageFault(x) => serde_json::to_value(x),
        EventBody::Span(x) => serde_json::to_value(x),
        EventBody::Cause(x) => serde_json::to_value(x),
        EventBody::Lost(x) => serde_json::to_value(x),
        EventBody::Cgroup(x) => serde_json::to_value(x),
        EventBody::Note(x) => serde_json::to_value(x),
        EventBody::Resume(x) => serde_json::to_value(x),
    };
    r.unwrap_or(Value::Null)
}

/// Name of a signal number (e.g. `SIGSEGV`).
pub fn signal_name(signo: i32) -> String {
    const NAMES: [&str; 32] = [
        "0",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match usize::try_from(signo).ok().and_then(|i| NAMES.get(i)) {
        Some(n) => (*n).to_owned(),
        None => format!("SIGRT{}", signo - 32),
    }
}
