//! Shared test helpers: proptest strategies for every event kind.
#![allow(dead_code)]

use kpl::event::*;
use kpl::{Event, EventBody};
use proptest::prelude::*;
use std::net::IpAddr;

fn s() -> impl Strategy<Value = String> {
    "[a-z/_.0-9 ]{0,24}"
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn hash() -> impl Strategy<Value = FileHash> {
    any::<[u8; 32]>().prop_map(FileHash)
}

fn data() -> impl Strategy<Value = Data> {
    prop_oneof![
        4 => bytes(300).prop_map(Data::Bytes),
        // A valid struct timespec (the codec has a special path for them).
        1 => (0u64..(1 << 33), 0u64..1_000_000_000).prop_map(|(s, n)| {
            let mut b = s.to_le_bytes().to_vec();
            b.extend_from_slice(&n.to_le_bytes());
            Data::Bytes(b)
        }),
        1 => (any::<u32>(), prop::option::of(hash()), s()).prop_map(|(len, hash, rule)| Data::Redacted { len, hash, rule }),
    ]
}

fn landing() -> impl Strategy<Value = Landing> {
    (any::<u64>(), any::<u64>(), any::<u32>(), any::<bool>(), prop::collection::vec(any::<u64>(), 0..27))
        .prop_map(|(ip, fingerprint, passes, in_syscall, regs)| Landing { ip, fingerprint, passes, in_syscall, regs })
}

fn file_ref() -> impl Strategy<Value = FileRef> {
    (s(), prop::option::of(hash()), any::<u64>(), bytes(20)).prop_map(|(path, hash, size, build_id)| FileRef { path, hash, size, build_id })
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![any::<[u8; 4]>().prop_map(IpAddr::from), any::<[u8; 16]>().prop_map(IpAddr::from)]
}

fn tcp() -> impl Strategy<Value = Tcp> {
    (ip(), any::<u16>(), ip(), any::<u16>(), any::<u64>(), any::<u64>(), any::<u32>(), any::<u8>(), any::<u8>()).prop_map(
        |(saddr, sport, daddr, dport, bytes, latency_ns, srtt_us, old_state, new_state)| Tcp {
            tuple: Tuple { saddr, sport, daddr, dport },
            bytes,
            latency_ns,
            srtt_us,
            old_state,
            new_state,
        },
    )
}

fn fd_type() -> impl Strategy<Value = FdType> {
    prop_oneof![
        Just(FdType::Unknown),
        Just(FdType::File),
        Just(FdType::Pipe),
        Just(FdType::Tcp),
        Just(FdType::Udp),
        Just(FdType::Unix),
        Just(FdType::Char),
        Just(FdType::Other)
    ]
}

fn syscall() -> impl Strategy<Value = Syscall> {
    (
        prop_oneof![0u32..460, Just(228u32)],
        any::<[u64; 6]>(),
        any::<i64>(),
        any::<u64>(),
        prop::collection::vec((any::<u64>(), any::<u8>(), data()), 0..4),
        fd_type(),
        any::<u32>(),
    )
        .prop_map(|(nr, args, ret, duration_ns, ws, fd_type, flags)| {
            // Some writes land on an argument (the codec's common case).
            let writes = ws
                .into_iter()
                .map(|(addr, pick, data)| MemWrite { addr: if pick < 128 { args[(pick % 6) as usize] } else { addr }, data })
                .collect();
            Syscall { nr, args, ret, duration_ns, writes, fd_type, flags }
        })
}

/// Any event body.
pub fn body() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        (
            file_ref(),
            prop::collection::vec(s(), 0..4),
            prop::collection::vec(s(), 0..4),
            s(),
            prop::collection::vec(any::<(u64, u64)>(), 0..4)
        )
            .prop_map(|(exe, argv, env, cwd, auxv)| EventBody::Exec(Exec { exe, argv, env, cwd, auxv })),
        (prop_oneof![Just(ForkKind::Fork), Just(ForkKind::Vfork), Just(ForkKind::Thread)], any::<u32>(), any::<u32>(), any::<u64>())
            .prop_map(|(kind, child_pid, child_tid, flags)| EventBody::Fork(Fork { kind, child_pid, child_tid, flags })),
        (any::<i32>(), prop::option::of(any::<i32>()), any::<bool>(), any::<bool>())
            .prop_map(|(code, signal, core_dumped, group)| EventBody::Exit(Exit { code, signal, core_dumped, group })),
        syscall().prop_map(EventBody::Syscall),
        (any::<i32>(), any::<i32>(), any::<u32>(), any::<u64>(), landing(), any::<bool>(), bytes(128)).prop_map(
            |(signo, code, sender_pid, addr, landing, synchronous, siginfo)| EventBody::Signal(Signal {
                signo,
                code,
                sender_pid,
                addr,
                landing,
                synchronous,
                siginfo
            })
        ),
        landing().prop_map(|landing| EventBody::Preempt(Preempt { landing })),
        (any::<u64>(), any::<u64>(), prop::option::of(any::<u32>())).prop_map(|(ip, tsc, aux)| EventBody::Rdtsc(Rdtsc { ip, tsc, aux })),
        (any::<u64>(), any::<u32>(), any::<u32>(), any::<[u32; 4]>()).prop_map(|(ip, leaf, subleaf, regs)| EventBody::Cpuid(Cpuid {
            ip,
            leaf,
            subleaf,
            regs
        })),
        (file_ref(), s()).prop_map(|(file, reason)| EventBody::FileSnapshot(FileSnapshot { file, reason })),
        (s(), any::<u8>(), any::<u32>(), any::<u32>(), s()).prop_map(|(prev_comm, prev_state, next_pid, next_tid, next_comm)| {
            EventBody::SchedSwitch(SchedSwitch { prev_comm, prev_state, next_pid, next_tid, next_comm })
        }),
        (any::<u16>(), any::<u32>(), any::<u32>(), any::<bool>()).prop_map(|(target_cpu, waker_pid, waker_tid, new_task)| {
            EventBody::SchedWakeup(SchedWakeup { target_cpu, waker_pid, waker_tid, new_task })
        }),
        (any::<u64>(), any::<u32>(), any::<u32>(), s(), any::<u64>()).prop_map(
            |(delay_ns, culprit_pid, culprit_tid, culprit_comm, off_cpu_ns)| EventBody::SchedDelay(SchedDelay {
                delay_ns,
                culprit_pid,
                culprit_tid,
                culprit_comm,
                off_cpu_ns
            })
        ),
        (any::<u16>(), any::<u16>()).prop_map(|(from_cpu, to_cpu)| EventBody::SchedMigrate(SchedMigrate { from_cpu, to_cpu })),
        tcp().prop_map(EventBody::TcpSend),
        tcp().prop_map(EventBody::TcpRecv),
        tcp().prop_map(EventBody::TcpRetransmit),
        tcp().prop_map(EventBody::TcpState),
        (any::<u64>(), any::<u64>(), any::<u32>(), prop::option::of(any::<bool>()), any::<u64>()).prop_map(
            |(addr, ip, error_code, major, latency_ns)| EventBody::PageFault(PageFault { addr, ip, error_code, major, latency_ns })
        ),
        (any::<[u8; 16]>(), any::<[u8; 8]>(), any::<[u8; 8]>(), s(), s(), s(), any::<u64>(), any::<u64>(), any::<u8>()).prop_map(
            |(trace_id, span_id, parent_span_id, name, service, txn, start_ns, end_ns, status)| EventBody::Span(SpanRef {
                trace_id,
                span_id,
                parent_span_id,
                name,
                service,
                txn,
                start_ns,
                end_ns,
                status
            })
        ),
        (s(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>(), s(), s()).prop_map(
            |(txn, effect_seq, cause_seq, contribution_ns, rank, cause_kind, summary)| {
                EventBody::Cause(Cause { txn, effect_seq, cause_seq, contribution_ns, rank, cause_kind, summary })
            }
        ),
        (s(), any::<u64>()).prop_map(|(source, count)| EventBody::Lost(Lost { source, count })),
        (any::<u64>(), s(), s()).prop_map(|(cgroup_id, path, container_id)| EventBody::Cgroup(CgroupInfo {
            cgroup_id,
            path,
            container_id
        })),
        (s(), s()).prop_map(|(topic, text)| EventBody::Note(Note { topic, text })),
        prop_oneof![Just(ResumeReason::Start), Just(ResumeReason::AfterPreempt), Just(ResumeReason::AfterStop)]
            .prop_map(|reason| EventBody::Resume(Resume { reason })),
    ]
}

/// Any event (seq 0: the writer assigns it). Ids come from small sets so
/// the "same as previous" paths of the codec are exercised.
pub fn event() -> impl Strategy<Value = Event> {
    (
        any::<u64>(),
        prop_oneof![Just(100u32), Just(200), any::<u32>()],
        prop_oneof![Just(0u32), 0u32..4, any::<u32>()],
        prop_oneof![0u16..2, any::<u16>()],
        prop_oneof![Just(0u64), any::<u64>()],
        body(),
    )
        .prop_map(|(ts_ns, pid, dt, cpu, cgroup, body)| Event { seq: 0, ts_ns, pid, tid: pid.wrapping_add(dt), cpu, cgroup, body })
}

/// Writes events to an in-memory log with small blocks (many block
/// boundaries) and returns its bytes.
pub fn write_log(events: &[Event], opts: kpl::WriterOptions) -> Vec<u8> {
    let mut w = kpl::Writer::new(Vec::new(), "test.kpl", &meta(), opts).unwrap();
    for e in events {
        w.append(e.clone()).unwrap();
    }
    w.finish().unwrap().0
}

/// Small blocks: many boundaries in small logs.
pub fn small_blocks() -> kpl::WriterOptions {
    kpl::WriterOptions { block_size: 2048, payload_block_size: 1024, inline_max: 48, level: 1, file_chunk: 4096 }
}

/// Test metadata.
pub fn meta() -> kpl::Metadata {
    kpl::Metadata {
        host: "testhost".into(),
        kernel: "6.18".into(),
        command: vec!["test".into()],
        start_time_ns: 1,
        backend: "test".into(),
        tool_version: "0".into(),
        extra: vec![("k".into(), "v".into())],
    }
}

/// What an event looks like after a round trip, with payloads resolved.
pub fn resolved(r: &kpl::Reader, mut e: Event) -> Event {
    e.data_mut(|d| {
        if let Data::Stored { .. } = d {
            *d = Data::Bytes(r.payload(d).unwrap().into_owned());
        }
    });
    e
}

/// As [`resolved`], returning the error of a payload that cannot be read.
pub fn try_resolved(r: &kpl::Reader, mut e: Event) -> Result<Event, kpl::Error> {
    let mut err = None;
    e.data_mut(|d| {
        if let Data::Stored { .. } = d {
            match r.payload(d) {
                Ok(b) => *d = Data::Bytes(b.into_owned()),
                Err(x) => err = Some(x),
            }
        }
    });
    match err {
        Some(x) => Err(x),
        None => Ok(e),
    }
}
