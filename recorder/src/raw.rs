//! The records the BPF programs write into the ring buffer
//! (`bpf/recorder.h`), decoded into `.kpl` events.

use kpl::event::{
    Exec, Exit, FdType, FileRef, Fork, ForkKind, Landing, PageFault, SchedDelay, SchedMigrate, SchedSwitch, SchedWakeup, Signal, Syscall,
    Tcp, Tuple,
};
use kpl::{Event, EventBody};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Hooks, as numbered in the BPF stats map.
pub const HOOK_NAMES: [&str; 5] = ["sched", "syscall", "tcp", "fault", "proc"];

const R_SWITCH: u16 = 1;
const R_WAKEUP: u16 = 2;
const R_DELAY: u16 = 3;
const R_MIGRATE: u16 = 4;
const R_SYSCALL: u16 = 5;
const R_TCP_SEND: u16 = 6;
const R_TCP_RECV: u16 = 7;
const R_TCP_RETRANS: u16 = 8;
const R_TCP_STATE: u16 = 9;
const R_FAULT: u16 = 10;
const R_EXEC: u16 = 11;
const R_FORK: u16 = 12;
const R_EXIT: u16 = 13;
const R_DATA: u16 = 14;
const R_SIGNAL: u16 = 15;
const DATA_BIG: usize = 32768;
const DATA_SMALL: usize = 256;
const OUT_INLINE: u32 = 16;
const OUT_FILEREF: u32 = 32;
const OUT_PATH_INLINE: u32 = 64;
/// struct rec_syscall_ref.
const SYSCALL_REF: usize = 200;
/// A syscall record without its output-buffer tail (outside replay-grade capture).
const SYSCALL_SHORT: usize = 104;

/// A buffer the kernel wrote during a syscall (replay-grade capture); its
/// bytes are `inline` (small buffers) or follow in [`Record::Data`] chunks
/// of the same thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutBuf {
    /// Address in the process.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Chunks that follow.
    pub chunks: u32,
    /// The buffer was longer than the chunks carry.
    pub truncated: bool,
    /// A chunk with index [`PATH_INDEX`] follows: the path an open call opened.
    pub path: bool,
    /// `Syscall::FLAG_STDOUT` or `FLAG_STDERR`: a write to the recorder's
    /// own stdout or stderr (the chunks carry the bytes written), else 0.
    pub shown: u32,
    /// The bytes of a small buffer, sent in the syscall record itself
    /// (`chunks` is then 0); empty otherwise.
    pub inline: Vec<u8>,
    /// A read of a regular file by reference: the recorder reads its `len`
    /// bytes from the file (`chunks` is then 0).
    pub file: Option<Box<crate::fileref::FileRead>>,
    /// `inline` holds the path an open call opened, sent in the syscall
    /// record itself (`path` is then false: no chunk follows; `len` is 0:
    /// it is no memory the kernel wrote).
    pub opened: bool,
}

/// Index of the chunk that carries the path of an `open`/`openat`/`openat2`.
pub const PATH_INDEX: u32 = 0xffff;

/// One chunk of an output buffer (its bytes still in the ring buffer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// Thread that made the syscall.
    pub tid: u32,
    /// Address of the first byte.
    pub addr: u64,
    /// Position among the syscall's chunks.
    pub index: u32,
    /// The bytes (empty when the memory could not be read).
    pub bytes: &'a [u8],
}

/// A decoded ring-buffer record.
#[derive(Clone, Debug)]
pub enum Record<'a> {
    /// An event, the hook it belongs to, and (replay-grade syscalls) the output buffer whose chunks follow.
    Event(Event, usize, Option<OutBuf>),
    /// A chunk of an output buffer.
    Data(Chunk<'a>),
}

/// A record the decoder could not understand (a bug, never expected).
#[derive(Debug, thiserror::Error)]
#[error("bad ring-buffer record ({len} bytes, kind {kind}): {reason}")]
pub struct BadRecord {
    /// Record length.
    pub len: usize,
    /// Record kind, when readable.
    pub kind: u16,
    /// What was wrong.
    pub reason: &'static str,
}

struct R<'a>(&'a [u8]);

impl R<'_> {
    fn u8(&self, o: usize) -> u8 {
        self.0[o]
    }
    fn u16(&self, o: usize) -> u16 {
        u16::from_le_bytes(self.0[o..o + 2].try_into().unwrap())
    }
    fn u32(&self, o: usize) -> u32 {
        u32::from_le_bytes(self.0[o..o + 4].try_into().unwrap())
    }
    fn u64(&self, o: usize) -> u64 {
        u64::from_le_bytes(self.0[o..o + 8].try_into().unwrap())
    }
    fn str(&self, o: usize, n: usize) -> String {
        let b = &self.0[o..o + n];
        let end = b.iter().position(|&c| c == 0).unwrap_or(n);
        String::from_utf8_lossy(&b[..end]).into_owned()
    }
    fn ip(&self, o: usize, family: u16) -> IpAddr {
        if family == 10 {
            let b: [u8; 16] = self.0[o..o + 16].try_into().unwrap();
            let v6 = Ipv6Addr::from(b);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        } else {
            IpAddr::V4(Ipv4Addr::new(self.0[o], self.0[o + 1], self.0[o + 2], self.0[o + 3]))
        }
    }
}

/// The task state letter of `sched_switch`'s `prev_state`.
pub fn state_letter(state: u32, preempt: bool) -> u8 {
    if preempt || state == 0 {
        return b'R';
    }
    if state & 0x400 != 0 && state & 2 != 0 {
        return b'I';
    }
    for (bit, c) in [(1, b'S'), (2, b'D'), (4, b'T'), (8, b't'), (0x10, b'X'), (0x20, b'Z'), (0x40, b'P'), (0x80, b'x')] {
        if state & bit != 0 {
            return c;
        }
    }
    b'?'
}

fn fd_type(v: u32) -> FdType {
    match v {
        1 => FdType::File,
        2 => FdType::Pipe,
        3 => FdType::Tcp,
        4 => FdType::Udp,
        5 => FdType::Unix,
        6 => FdType::Char,
        7 => FdType::Other,
        _ => FdType::Unknown,
    }
}

/// Decodes one record. `clock_offset` turns the BPF monotonic clock into
/// wall-clock nanoseconds.
pub fn decode_record(buf: &[u8], clock_offset: i128) -> Result<Record<'_>, BadRecord> {
    if buf.len() >= 48 && u16::from_le_bytes([buf[24], buf[25]]) == R_DATA {
        let r = R(buf);
        let len = (r.u32(40) as usize).min(DATA_BIG);
        if buf.len() < 48 + len {
            return Err(BadRecord { len: buf.len(), kind: R_DATA, reason: "data chunk shorter than its length" });
        }
        return Ok(Record::Data(Chunk { tid: r.u32(20), addr: r.u64(32), index: r.u32(44), bytes: &buf[48..48 + len] }));
    }
    let (ev, hook) = decode(buf, clock_offset)?;
    let out = if ev.kind() == kpl::Kind::Syscall && buf.len() >= 128 {
        let r = R(buf);
        let chunks = r.u32(120);
        let flags = r.u32(124);
        let len = r.u64(112);
        let small = |n: u64| buf.get(128..128 + (n as usize).min(DATA_SMALL)).unwrap_or_default();
        let opened = flags & OUT_PATH_INLINE != 0;
        let inline = if flags & (OUT_INLINE | OUT_PATH_INLINE) != 0 { small(len).to_vec() } else { Vec::new() };
        if flags & OUT_FILEREF != 0 && buf.len() < SYSCALL_REF {
            return Err(BadRecord { len: buf.len(), kind: R_SYSCALL, reason: "file-reference syscall record too short" });
        }
        let file = (flags & OUT_FILEREF != 0).then(|| {
            let mut head = [0u8; crate::fileref::HEAD];
            let mut tail = [0u8; crate::fileref::HEAD];
            head.copy_from_slice(&buf[168..184]);
            tail.copy_from_slice(&buf[184..200]);
            Box::new(crate::fileref::FileRead {
                ino: r.u64(128),
                pos: r.u64(136),
                ctime_sec: r.u64(144) as i64,
                ctime_nsec: r.u32(152),
                gen: r.u32(156),
                dev: r.u32(160),
                fmt: r.u32(164),
                head,
                tail,
            })
        });
        // an inline path is no memory the kernel wrote
        let (addr, len) = if opened { (0, 0) } else { (r.u64(104), len) };
        (chunks > 0 || flags != 0).then_some(OutBuf {
            addr,
            len,
            chunks,
            inline,
            file,
            opened,
            truncated: flags & 1 != 0,
            path: flags & 2 != 0,
            shown: match flags & 12 {
                4 => kpl::event::Syscall::FLAG_STDOUT,
                8 => kpl::event::Syscall::FLAG_STDERR,
                _ => 0,
            },
        })
    } else {
        None
    };
    Ok(Record::Event(ev, hook, out))
}

/// Decodes one event record (not a data chunk). Returns the event and the
/// hook it belongs to.
pub fn decode(buf: &[u8], clock_offset: i128) -> Result<(Event, usize), BadRecord> {
    let bad = |kind, reason| BadRecord { len: buf.len(), kind, reason };
    if buf.len() < 32 {
        return Err(bad(0, "shorter than its header"));
    }
    let r = R(buf);
    let kind = r.u16(24);
    let size = r.u32(28) as usize;
    if size > buf.len() {
        return Err(bad(kind, "size field larger than the record"));
    }
    let need = match kind {
        R_SWITCH => 80,
        R_WAKEUP => 48,
        R_DELAY => 72,
        R_MIGRATE => 40,
        R_SYSCALL => SYSCALL_SHORT,
        R_TCP_SEND | R_TCP_RECV | R_TCP_RETRANS | R_TCP_STATE => 96,
        R_FAULT => 72,
        R_FORK | R_EXIT => 40,
        R_EXEC | R_SIGNAL => 304,
        _ => return Err(bad(kind, "unknown record kind")),
    };
    if buf.len() < need {
        return Err(bad(kind, "record too short for its kind"));
    }
    let ts = (r.u64(0) as i128 + clock_offset).max(0) as u64;
    let (pid, tid, cpu) = (r.u32(16), r.u32(20), r.u16(26));
    let (body, hook) = match kind {
        R_SWITCH => (
            EventBody::SchedSwitch(SchedSwitch {
                prev_comm: r.str(32, 16),
                prev_state: state_letter(r.u32(72), r.u32(76) != 0),
                next_pid: r.u32(64),
                next_tid: r.u32(68),
                next_comm: r.str(48, 16),
            }),
            0,
        ),
        R_WAKEUP => (
            EventBody::SchedWakeup(SchedWakeup {
                target_cpu: r.u16(40),
                waker_pid: r.u32(32),
                waker_tid: r.u32(36),
                new_task: r.u16(42) != 0,
            }),
            0,
        ),
        R_DELAY => (
            EventBody::SchedDelay(SchedDelay {
                delay_ns: r.u64(32),
                culprit_pid: r.u32(48),
                culprit_tid: r.u32(52),
                culprit_comm: r.str(56, 16),
                off_cpu_ns: r.u64(40),
            }),
            0,
        ),
        R_MIGRATE => (EventBody::SchedMigrate(SchedMigrate { from_cpu: r.u32(32) as u16, to_cpu: r.u32(36) as u16 }), 0),
        R_SYSCALL => {
            let mut args = [0u64; 6];
            for (i, a) in args.iter_mut().enumerate() {
                *a = r.u64(32 + 8 * i);
            }
            (
                EventBody::Syscall(Syscall {
                    nr: r.u32(96),
                    args,
                    ret: r.u64(80) as i64,
                    duration_ns: r.u64(88),
                    writes: Vec::new(),
                    fd_type: fd_type(r.u32(100)),
                    flags: 0,
                }),
                1,
            )
        }
        R_TCP_SEND | R_TCP_RECV | R_TCP_RETRANS | R_TCP_STATE => {
            let family = r.u16(68);
            let t = Tcp {
                tuple: Tuple { saddr: r.ip(32, family), sport: r.u16(64), daddr: r.ip(48, family), dport: r.u16(66) },
                bytes: r.u64(72),
                latency_ns: r.u64(80),
                srtt_us: r.u32(88),
                old_state: r.u8(70),
                new_state: r.u8(71),
            };
            let body = match kind {
                R_TCP_SEND => EventBody::TcpSend(t),
                R_TCP_RECV => EventBody::TcpRecv(t),
                R_TCP_RETRANS => EventBody::TcpRetransmit(t),
                _ => EventBody::TcpState(t),
            };
            (body, 2)
        }
        R_FAULT => (
            EventBody::PageFault(PageFault {
                addr: r.u64(32),
                ip: r.u64(40),
                error_code: r.u64(48) as u32,
                major: match r.u32(64) {
                    0 => Some(false),
                    1 => Some(true),
                    _ => None,
                },
                latency_ns: r.u64(56),
            }),
            3,
        ),
        R_FORK => {
            let (cp, ct) = (r.u32(32), r.u32(36));
            (
                EventBody::Fork(Fork {
                    kind: if cp == pid { ForkKind::Thread } else { ForkKind::Fork },
                    child_pid: cp,
                    child_tid: ct,
                    flags: 0,
                }),
                4,
            )
        }
        R_EXIT => {
            let status = r.u32(32) as i32;
            let sig = status & 0x7f;
            (
                EventBody::Exit(Exit {
                    code: if sig == 0 { (status >> 8) & 0xff } else { 0 },
                    signal: (sig != 0).then_some(sig),
                    core_dumped: status & 0x80 != 0,
                    group: r.u32(36) != 0,
                }),
                4,
            )
        }
        R_EXEC => (
            EventBody::Exec(Exec {
                exe: FileRef { path: r.str(48, 256), hash: None, size: 0, build_id: Vec::new() },
                argv: Vec::new(),
                env: Vec::new(),
                cwd: String::new(),
                auxv: Vec::new(),
            }),
            4,
        ),
        R_SIGNAL => (EventBody::Signal(signal(&r)), 4),
        _ => unreachable!(),
    };
    let mut ev = Event::new(ts, pid, tid, cpu, body);
    ev.cgroup = r.u64(8);
    Ok((ev, hook))
}

/// A signal record (`struct rec_signal`) as the `Signal` event the ptrace
/// recorder writes: the 48 bytes of the kernel's siginfo padded to the
/// 128 of a user `siginfo_t`, and the user registers where it was
/// delivered. `landing.in_syscall`: the registers were still exactly as the
/// task's last syscall left them, so it was delivered at that syscall's
/// exit (the replay delivers it there). Otherwise, for an asynchronous
/// signal, it landed in user code: there is no instruction count without a
/// PMU, so the replay cannot place it (and says so). The fingerprint is
/// left 0: replays place eBPF signals by their syscall, never by a hash.
fn signal(r: &R) -> Signal {
    let signo = r.u32(32) as i32;
    let flags = r.u32(36);
    let regs: Vec<u64> = (0..27).map(|i| r.u64(40 + 8 * i)).collect();
    let mut siginfo = r.0[256..304].to_vec();
    siginfo.resize(128, 0);
    let code = i32::from_le_bytes(siginfo[8..12].try_into().unwrap());
    let synchronous = flags & 2 != 0;
    let sender_pid = if code <= 0 || code == 0x80 { u32::from_le_bytes(siginfo[16..20].try_into().unwrap()) } else { 0 };
    let addr = if synchronous { u64::from_le_bytes(siginfo[16..24].try_into().unwrap()) } else { 0 };
    let landing = Landing { ip: regs[16], fingerprint: 0, passes: 0, in_syscall: flags & 1 != 0, regs };
    Signal { signo, code, sender_pid, addr, landing, synchronous, siginfo }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert!(decode(&[0u8; 8], 0).is_err());
        let mut b = [0u8; 64];
        b[24] = 99;
        assert!(decode(&b, 0).unwrap_err().to_string().contains("unknown record kind"));
        b[24] = R_SYSCALL as u8;
        assert!(decode(&b, 0).unwrap_err().to_string().contains("too short"));
    }

    #[test]
    fn states() {
        assert_eq!(state_letter(0, false), b'R');
        assert_eq!(state_letter(1, false), b'S');
        assert_eq!(state_letter(1, true), b'R');
        assert_eq!(state_letter(0x402, false), b'I');
    }
}
