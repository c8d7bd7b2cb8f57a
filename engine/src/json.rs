//! Kernel events back from their JSON form (the recorder's JSON lines and
//! Kafka message bodies, [`kpl::json::event_to_json`]), for the kinds the
//! engine correlates. Bad input is an error naming the field.

use anyhow::{anyhow, bail, Context, Result};
use kpl::event::*;
use kpl::{Event, EventBody, Kind};
use serde_json::{Map, Value};

fn u(m: &Map<String, Value>, k: &str) -> Result<u64> {
    match m.get(k) {
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| anyhow!("`{k}`: expected a non-negative integer, got {n}")),
        Some(v) => bail!("`{k}`: expected a number, got {v}"),
        None => bail!("`{k}`: missing"),
    }
}

fn uo(m: &Map<String, Value>, k: &str) -> Result<u64> {
    if m.contains_key(k) {
        u(m, k)
    } else {
        Ok(0)
    }
}

fn s(m: &Map<String, Value>, k: &str) -> String {
    m.get(k).and_then(Value::as_str).unwrap_or("").to_owned()
}

fn body<T: serde::de::DeserializeOwned>(m: &Map<String, Value>, kind: &str) -> Result<T> {
    serde_json::from_value(Value::Object(m.clone())).with_context(|| format!("bad `{kind}` event body"))
}

/// Parses one kernel event object. Kinds the engine does not use (and
/// unknown kinds) give `Ok(None)`.
pub fn event_from_json(v: &Value) -> Result<Option<Event>> {
    let m = v.as_object().ok_or_else(|| anyhow!("expected a JSON object"))?;
    let kind_name = m.get("kind").and_then(Value::as_str).ok_or_else(|| anyhow!("`kind`: missing or not a string"))?;
    let Some(kind) = Kind::from_name(kind_name) else { return Ok(None) };
    let ts = u(m, "ts_ns")?;
    let pid = u(m, "pid")? as u32;
    let tid = u(m, "tid")? as u32;
    let cpu = uo(m, "cpu")? as u16;
    let body = match kind {
        Kind::Syscall => {
            let args: Vec<u64> = match m.get("args") {
                Some(Value::Array(a)) => a.iter().map(|x| x.as_u64().unwrap_or(0)).collect(),
                _ => vec![0; 6],
            };
            let mut a6 = [0u64; 6];
            for (d, x) in a6.iter_mut().zip(args) {
                *d = x;
            }
            let fd_type = match s(m, "fd_type").as_str() {
                "file" => FdType::File,
                "pipe" => FdType::Pipe,
                "tcp" => FdType::Tcp,
                "udp" => FdType::Udp,
                "unix" => FdType::Unix,
                "char" => FdType::Char,
                "other" => FdType::Other,
                _ => FdType::Unknown,
            };
            let ret = match m.get("ret") {
                Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
                _ => 0,
            };
            EventBody::Syscall(Syscall {
                nr: u(m, "nr")? as u32,
                args: a6,
                ret,
                duration_ns: uo(m, "duration_ns")?,
                writes: Vec::new(),
                fd_type,
                flags: uo(m, "flags")? as u32,
            })
        }
        Kind::SchedSwitch => EventBody::SchedSwitch(body(m, kind_name)?),
        Kind::SchedWakeup => EventBody::SchedWakeup(body(m, kind_name)?),
        Kind::SchedDelay => EventBody::SchedDelay(body(m, kind_name)?),
        Kind::SchedMigrate => EventBody::SchedMigrate(body(m, kind_name)?),
        Kind::TcpSend | Kind::TcpRecv | Kind::TcpRetransmit | Kind::TcpState => {
            let ip = |k: &str| -> Result<std::net::IpAddr> { s(m, k).parse().with_context(|| format!("`{k}`: not an IP address")) };
            let t = Tcp {
                tuple: Tuple { saddr: ip("saddr")?, sport: u(m, "sport")? as u16, daddr: ip("daddr")?, dport: u(m, "dport")? as u16 },
                bytes: uo(m, "bytes")?,
                latency_ns: uo(m, "latency_ns")?,
                srtt_us: uo(m, "srtt_us")? as u32,
                old_state: uo(m, "old_state")? as u8,
                new_state: uo(m, "new_state")? as u8,
            };
            match kind {
                Kind::TcpSend => EventBody::TcpSend(t),
                Kind::TcpRecv => EventBody::TcpRecv(t),
                Kind::TcpRetransmit => EventBody::TcpRetransmit(t),
                _ => EventBody::TcpState(t),
            }
        }
        Kind::PageFault => EventBody::PageFault(body(m, kind_name)?),
        Kind::Fork => EventBody::Fork(body(m, kind_name)?),
        Kind::Exec => EventBody::Exec(Exec {
            exe: FileRef { path: s(m, "exe"), hash: None, size: 0, build_id: Vec::new() },
            argv: m.get("argv").and_then(|a| serde_json::from_value(a.clone()).ok()).unwrap_or_default(),
            env: Vec::new(),
            cwd: s(m, "cwd"),
            auxv: Vec::new(),
        }),
        Kind::Span => EventBody::Span(SpanRef {
            trace_id: hex16(&s(m, "trace_id"))?,
            span_id: hex8(&s(m, "span_id"))?,
            parent_span_id: hex8(&s(m, "parent_span_id")).unwrap_or([0; 8]),
            name: s(m, "name"),
            service: s(m, "service"),
            txn: s(m, "txn"),
            start_ns: u(m, "start_ns")?,
            end_ns: u(m, "end_ns")?,
            status: uo(m, "status")? as u8,
        }),
        _ => return Ok(None),
    };
    let mut ev = Event::new(ts, pid, tid, cpu, body);
    ev.seq = uo(m, "seq")?;
    ev.cgroup = uo(m, "cgroup")?;
    Ok(Some(ev))
}

fn hex16(s: &str) -> Result<[u8; 16]> {
    let mut o = [0; 16];
    hex::decode_to_slice(s, &mut o).with_context(|| format!("bad trace id {s:?}"))?;
    Ok(o)
}

fn hex8(s: &str) -> Result<[u8; 8]> {
    let mut o = [0; 8];
    hex::decode_to_slice(s, &mut o).with_context(|| format!("bad span id {s:?}"))?;
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_kinds_the_engine_uses() {
        let evs = vec![
            EventBody::SchedDelay(SchedDelay { delay_ns: 5, culprit_pid: 1, culprit_tid: 2, culprit_comm: "hog".into(), off_cpu_ns: 3 }),
            EventBody::TcpRetransmit(Tcp {
                tuple: Tuple { saddr: "10.0.0.1".parse().unwrap(), sport: 1, daddr: "10.0.0.2".parse().unwrap(), dport: 2 },
                bytes: 100,
                latency_ns: 0,
                srtt_us: 50,
                old_state: 0,
                new_state: 1,
            }),
            EventBody::Syscall(Syscall {
                nr: 1,
                args: [3, 4, 5, 0, 0, 0],
                ret: -11,
                duration_ns: 99,
                writes: vec![],
                fd_type: FdType::Tcp,
                flags: 0,
            }),
            EventBody::SchedSwitch(SchedSwitch {
                prev_comm: "a".into(),
                prev_state: b'D',
                next_pid: 3,
                next_tid: 4,
                next_comm: "b".into(),
            }),
            EventBody::PageFault(PageFault { addr: 1, ip: 2, error_code: 4, major: None, latency_ns: 0 }),
        ];
        for b in evs {
            let mut e = Event::new(1000, 10, 11, 1, b);
            e.seq = 7;
            let j = kpl::json::event_to_json(&e, None);
            let back = event_from_json(&j).unwrap().unwrap();
            assert_eq!(back, e, "{j}");
        }
        assert!(event_from_json(&serde_json::json!({"kind": "sched_delay", "ts_ns": "x", "pid": 1, "tid": 1})).is_err());
        assert!(event_from_json(&serde_json::json!({"kind": "note", "ts_ns": 1, "pid": 1, "tid": 1})).unwrap().is_none());
    }
}
