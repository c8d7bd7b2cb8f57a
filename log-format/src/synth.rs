//! A synthetic but realistic event stream, for benchmarks and tests.
//!
//! It simulates a small payment system on a 2-CPU node, thread by thread,
//! and merges the threads' events in time order:
//!
//! * `gateway` I/O threads: `epoll_wait` → `recvfrom` an HTTP/JSON payment →
//!   `clock_gettime` → `sendto` the ledger → `recvfrom` its answer → `sendto`
//!   the client, with TCP send/receive events on each connection;
//! * `ledger`: receives entries, hands them to a worker through a futex; the
//!   worker appends them to a write-ahead log (`pwrite64`) and a WAL thread
//!   `fdatasync`s;
//! * `batch-report`: a noisy neighbour streaming a CSV file through `read`,
//!   faulting pages in as its heap grows, and stealing CPU (run-queue delay).
//!
//! Threads block and wake with `sched_switch`/`sched_wakeup` events,
//! occasionally wait on a run queue (`sched_delay`), migrate, retransmit.
//! Durations and message contents are random (amounts, IBANs, trace ids),
//! the structure is what real services do. Deterministic for a given seed.

use crate::event::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};

const NR_READ: u32 = 0;
const NR_FSTAT: u32 = 5;
const NR_LSEEK: u32 = 8;
const NR_PWRITE64: u32 = 18;
const NR_SENDTO: u32 = 44;
const NR_RECVFROM: u32 = 45;
const NR_FUTEX: u32 = 202;
const NR_CLOCK_GETTIME: u32 = 228;
const NR_EPOLL_WAIT: u32 = 232;
const NR_FDATASYNC: u32 = 75;
const NR_OPENAT: u32 = 257;
const NR_CLOSE: u32 = 3;

#[derive(Clone, Copy, PartialEq)]
enum Role {
    GatewayIo,
    LedgerMain,
    LedgerWorker,
    LedgerWal,
    Batch,
}

struct Task {
    pid: u32,
    tid: u32,
    comm: &'static str,
    role: Role,
    cpu: u16,
    t: u64,
    heap: u64,
    stack: u64,
    pending: VecDeque<Event>,
    wal_off: u64,
    file_off: u64,
    brk: u64,
    step: u32,
}

/// Generates events (their `seq` is left 0; the writer assigns it).
pub struct Synth {
    rng: StdRng,
    tasks: Vec<Task>,
    heap: BinaryHeap<Reverse<(u64, usize)>>,
    txn: u64,
    accounts: Vec<String>,
    to_ledger: VecDeque<Vec<u8>>,
}

fn sc(nr: u32, args: [u64; 6], ret: i64, dur: u64, fd_type: FdType) -> Syscall {
    Syscall { nr, args, ret, duration_ns: dur, writes: Vec::new(), fd_type, flags: 0 }
}

impl Synth {
    /// A generator with a fixed seed.
    pub fn new(seed: u64) -> Synth {
        let mk = |pid: u32, tid: u32, comm: &'static str, role: Role, cpu: u16| Task {
            pid,
            tid,
            comm,
            role,
            cpu,
            t: 1_763_800_000_000_000_000 + tid as u64 * 1000,
            heap: 0x5581_2000_0000 + ((pid as u64) << 24) + ((tid as u64 & 0xff) << 16),
            stack: 0x7ffd_3a00_0000 + ((tid as u64) << 20),
            pending: VecDeque::new(),
            wal_off: 0,
            file_off: 0,
            brk: 0x5581_9000_0000 + ((tid as u64) << 28),
            step: 0,
        };
        let tasks = vec![
            mk(4100, 4107, "gateway-io", Role::GatewayIo, 0),
            mk(4100, 4108, "gateway-io", Role::GatewayIo, 1),
            mk(5200, 5200, "ledger", Role::LedgerMain, 0),
            mk(5200, 5204, "ledger-worker", Role::LedgerWorker, 1),
            mk(5200, 5203, "ledger-wal", Role::LedgerWal, 1),
            mk(6300, 6300, "batch-report", Role::Batch, 0),
        ];
        let mut heap = BinaryHeap::new();
        for (i, t) in tasks.iter().enumerate() {
            heap.push(Reverse((t.t, i)));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let accounts = (0..2000)
            .map(|_| {
                let cc = ["DE", "FR", "NL", "IT", "ES", "GB"][rng.gen_range(0..6)];
                format!("{cc}{:02}{:018}", rng.gen_range(10..99), rng.gen_range(0..1_000_000_000_000_000_000u64))
            })
            .collect();
        Synth { rng, tasks, heap, txn: 10_000_000, accounts, to_ledger: VecDeque::new() }
    }

    /// A counterparty account, Zipf-like: a few accounts get most payments.
    fn account(&mut self) -> String {
        let x: f64 = self.rng.gen();
        let i = (self.accounts.len() as f64 * x * x * x) as usize;
        self.accounts[i.min(self.accounts.len() - 1)].clone()
    }

    /// A payment instruction as JSON.
    fn payment(&mut self) -> String {
        self.txn += 1;
        let amount = if self.rng.gen_bool(0.4) { self.rng.gen_range(1..100u64) * 10_000 } else { self.rng.gen_range(1..5_000_000u64) };
        let (debtor, creditor) = (self.account(), self.account());
        format!(
            "{{\"txn\":\"txn-{:08}\",\"amount\":\"{}.{:02}\",\"currency\":\"{}\",\"debtor\":\"{debtor}\",\"creditor\":\"{creditor}\",\"status\":\"{}\"}}",
            self.txn,
            amount / 100,
            amount % 100,
            ["EUR", "EUR", "USD", "GBP"][self.rng.gen_range(0..4)],
            ["accepted", "accepted", "pending", "rejected"][self.rng.gen_range(0..4)],
        )
    }

    fn http(host: &str, path: &str, trace: u128, span: u64, body: &str) -> Vec<u8> {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\ntraceparent: 00-{trace:032x}-{span:016x}-01\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn dur(&mut self, lo: u64, hi: u64) -> u64 {
        // Log-uniform between lo and hi: most calls fast, a long tail.
        let x: f64 = self.rng.gen();
        (lo as f64 * (hi as f64 / lo as f64).powf(x)) as u64
    }

    fn tuple(port: u16, dport: u16) -> Tuple {
        Tuple { saddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 12)), sport: port, daddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 31)), dport }
    }

    /// Produces the next few events of task `i` into its queue.
    fn step(&mut self, i: usize) {
        let role = self.tasks[i].role;
        let mut out: Vec<(u64, EventBody)> = Vec::new();
        let (stack, heap) = (self.tasks[i].stack, self.tasks[i].heap);
        let mut t = self.tasks[i].t;
        // Blocking: switch out, wake up later, maybe wait on the run queue.
        let block = |s: &mut Synth, out: &mut Vec<(u64, EventBody)>, t: &mut u64, sleep: u64, waker: (u32, u32)| {
            let task = &s.tasks[i];
            let (next_pid, next_tid, next_comm) = if s.rng.gen_bool(0.5) { (6300, 6300, "batch-report") } else { (0, 0, "swapper/0") };
            out.push((
                *t,
                EventBody::SchedSwitch(SchedSwitch {
                    prev_comm: task.comm.into(),
                    prev_state: b'S',
                    next_pid,
                    next_tid,
                    next_comm: next_comm.into(),
                }),
            ));
            *t += sleep;
            out.push((
                *t,
                EventBody::SchedWakeup(SchedWakeup { target_cpu: task.cpu, waker_pid: waker.0, waker_tid: waker.1, new_task: false }),
            ));
            if s.rng.gen_bool(0.15) {
                let d = s.dur(5_000, 3_000_000);
                *t += d;
                out.push((
                    *t,
                    EventBody::SchedDelay(SchedDelay {
                        delay_ns: d,
                        culprit_pid: 6300,
                        culprit_tid: 6300,
                        culprit_comm: "batch-report".into(),
                        off_cpu_ns: sleep,
                    }),
                ));
            } else {
                *t += s.rng.gen_range(1_000..8_000);
            }
        };
        match role {
            Role::GatewayIo => {
                let n = self.rng.gen_range(1..=3usize);
                let sleep = self.dur(20_000, 5_000_000);
                block(self, &mut out, &mut t, sleep, (0, 0));
                let mut evs = Vec::new();
                let fds: Vec<u64> = (0..n).map(|_| self.rng.gen_range(12..40u64)).collect();
                for fd in &fds {
                    evs.extend_from_slice(&1u32.to_le_bytes());
                    evs.extend_from_slice(&fd.to_le_bytes());
                }
                let mut s = sc(NR_EPOLL_WAIT, [5, stack + 0x100, 64, u64::MAX, 0, 0], n as i64, sleep, FdType::Other);
                s.writes.push(MemWrite { addr: stack + 0x100, data: Data::Bytes(evs) });
                out.push((t.saturating_sub(sleep), EventBody::Syscall(s)));
                for fd in fds {
                    let port = 40000 + fd as u16;
                    let body = self.payment();
                    let trace: u128 = self.rng.gen();
                    let req = Self::http("gateway.payments.svc:8443", "/v1/payments", trace, self.rng.gen(), &body);
                    let buf = heap + 0x1000;
                    t += self.dur(2_000, 40_000);
                    out.push((
                        t,
                        EventBody::TcpRecv(Tcp {
                            tuple: Self::tuple(8443, port),
                            bytes: req.len() as u64,
                            latency_ns: 0,
                            srtt_us: 60 + self.rng.gen_range(0..20),
                            old_state: 1,
                            new_state: 1,
                        }),
                    ));
                    let mut s = sc(NR_RECVFROM, [fd, buf, 65536, 0, 0, 0], req.len() as i64, self.dur(800, 6_000), FdType::Tcp);
                    s.writes.push(MemWrite { addr: buf, data: Data::Bytes(req) });
                    out.push((t, EventBody::Syscall(s)));
                    for clk in [1u64, 0] {
                        t += self.rng.gen_range(300..3_000);
                        let mut s = sc(NR_CLOCK_GETTIME, [clk, stack + 0x40, 0, 0, 0, 0], 0, self.rng.gen_range(40..120), FdType::Unknown);
                        let v = if clk == 1 { t - 1_763_000_000_000_000_000 } else { t };
                        let mut ts = (v / 1_000_000_000).to_le_bytes().to_vec();
                        ts.extend_from_slice(&(v % 1_000_000_000).to_le_bytes());
                        s.writes.push(MemWrite { addr: stack + 0x40, data: Data::Bytes(ts) });
                        out.push((t, EventBody::Syscall(s)));
                    }
                    let fwd = Self::http("ledger.payments.svc:7001", "/v1/entries", trace, self.rng.gen(), &body);
                    if self.to_ledger.len() < 64 {
                        self.to_ledger.push_back(fwd.clone());
                    }
                    t += self.dur(5_000, 50_000);
                    out.push((
                        t,
                        EventBody::Syscall(sc(
                            NR_SENDTO,
                            [9, heap + 0x9000, fwd.len() as u64, 0x4000, 0, 0],
                            fwd.len() as i64,
                            self.dur(3_000, 30_000),
                            FdType::Tcp,
                        )),
                    ));
                    let rt = self.rng.gen_ratio(1, 200);
                    let tu = Self::tuple(port + 1000, 7001);
                    out.push((
                        t,
                        EventBody::TcpSend(Tcp {
                            tuple: tu.clone(),
                            bytes: fwd.len() as u64,
                            latency_ns: 0,
                            srtt_us: 80,
                            old_state: 1,
                            new_state: 1,
                        }),
                    ));
                    if rt {
                        t += 200_000 + self.rng.gen_range(0..10_000);
                        out.push((
                            t,
                            EventBody::TcpRetransmit(Tcp {
                                tuple: tu.clone(),
                                bytes: fwd.len() as u64,
                                latency_ns: 200_000,
                                srtt_us: 80,
                                old_state: 1,
                                new_state: 1,
                            }),
                        ));
                    }
                    let wait = self.dur(50_000, 2_000_000);
                    block(self, &mut out, &mut t, wait, (5200, 5204));
                    let ans = format!("{{\"txn\":\"txn-{:08}\",\"ledger_seq\":{},\"status\":\"committed\"}}", self.txn, self.txn * 3 + 17)
                        .into_bytes();
                    let mut s = sc(NR_RECVFROM, [9, heap + 0x11000, 65536, 0, 0, 0], ans.len() as i64, wait, FdType::Tcp);
                    s.writes.push(MemWrite { addr: heap + 0x11000, data: Data::Bytes(ans) });
                    out.push((t, EventBody::Syscall(s)));
                    t += self.dur(2_000, 20_000);
                    let resp = 180 + self.rng.gen_range(0..40);
                    out.push((
                        t,
                        EventBody::Syscall(sc(
                            NR_SENDTO,
                            [fd, heap + 0x19000, resp, 0x4000, 0, 0],
                            resp as i64,
                            self.dur(3_000, 30_000),
                            FdType::Tcp,
                        )),
                    ));
                    out.push((
                        t,
                        EventBody::TcpSend(Tcp {
                            tuple: Self::tuple(8443, port),
                            bytes: resp,
                            latency_ns: 0,
                            srtt_us: 60,
                            old_state: 1,
                            new_state: 1,
                        }),
                    ));
                    if self.rng.gen_ratio(1, 10) {
                        let start = t - self.dur(300_000, 5_000_000);
                        out.push((
                            t,
                            EventBody::Span(SpanRef {
                                trace_id: self.rng.gen(),
                                span_id: self.rng.gen(),
                                parent_span_id: [0; 8],
                                name: "POST /v1/payments".into(),
                                service: "gateway".into(),
                                txn: format!("txn-{:08}", self.txn),
                                start_ns: start,
                                end_ns: t,
                                status: 1,
                            }),
                        ));
                    }
                    if self.rng.gen_ratio(1, 50) {
                        t += 1000;
                        let a = heap + (self.rng.gen_range(0..512u64) << 12);
                        out.push((
                            t,
                            EventBody::PageFault(PageFault {
                                addr: a,
                                ip: 0x5581_1000_4a20 + self.rng.gen_range(0..8) * 0x40,
                                error_code: 6,
                                major: Some(false),
                                latency_ns: self.dur(500, 5000),
                            }),
                        ));
                    }
                }
            }
            Role::LedgerMain => {
                let sleep = self.dur(50_000, 3_000_000);
                block(self, &mut out, &mut t, sleep, (0, 0));
                let mut s = sc(NR_EPOLL_WAIT, [4, stack + 0x80, 32, u64::MAX, 0, 0], 1, sleep, FdType::Other);
                let mut ev = 1u32.to_le_bytes().to_vec();
                ev.extend_from_slice(&7u64.to_le_bytes());
                s.writes.push(MemWrite { addr: stack + 0x80, data: Data::Bytes(ev) });
                out.push((t.saturating_sub(sleep), EventBody::Syscall(s)));
                let m = match self.to_ledger.pop_front() {
                    Some(m) => m,
                    None => {
                        let body = self.payment();
                        Self::http("ledger.payments.svc:7001", "/v1/entries", self.rng.gen(), self.rng.gen(), &body)
                    }
                };
                t += self.dur(1_000, 10_000);
                out.push((
                    t,
                    EventBody::TcpRecv(Tcp {
                        tuple: Self::tuple(7001, 41000),
                        bytes: m.len() as u64,
                        latency_ns: 0,
                        srtt_us: 80,
                        old_state: 1,
                        new_state: 1,
                    }),
                ));
                let mut s = sc(NR_RECVFROM, [7, heap + 0x2000, 65536, 0, 0, 0], m.len() as i64, self.dur(800, 6_000), FdType::Tcp);
                s.writes.push(MemWrite { addr: heap + 0x2000, data: Data::Bytes(m) });
                out.push((t, EventBody::Syscall(s)));
                t += self.dur(1_000, 5_000);
                out.push((
                    t,
                    EventBody::Syscall(sc(NR_FUTEX, [heap + 0x40, 0x81, 1, 0, 0, 0], 1, self.dur(1_000, 6_000), FdType::Unknown)),
                ));
            }
            Role::LedgerWorker => {
                let sleep = self.dur(50_000, 3_000_000);
                block(self, &mut out, &mut t, sleep, (5200, 5200));
                out.push((t, EventBody::Syscall(sc(NR_FUTEX, [heap + 0x40, 0x80, 0, 0, 0, 0], 0, sleep, FdType::Unknown))));
                t += self.rng.gen_range(500..3_000);
                let mut s = sc(NR_CLOCK_GETTIME, [0, stack + 0x30, 0, 0, 0, 0], 0, self.rng.gen_range(40..120), FdType::Unknown);
                let mut ts = (t / 1_000_000_000).to_le_bytes().to_vec();
                ts.extend_from_slice(&(t % 1_000_000_000).to_le_bytes());
                s.writes.push(MemWrite { addr: stack + 0x30, data: Data::Bytes(ts) });
                out.push((t, EventBody::Syscall(s)));
                let len = 160 + self.rng.gen_range(0..64u64);
                let off = self.tasks[i].wal_off;
                self.tasks[i].wal_off += len;
                t += self.dur(2_000, 20_000);
                out.push((
                    t,
                    EventBody::Syscall(sc(
                        NR_PWRITE64,
                        [11, heap + 0x3000, len, off, 0, 0],
                        len as i64,
                        self.dur(2_000, 30_000),
                        FdType::File,
                    )),
                ));
                t += self.rng.gen_range(500..2_000);
                out.push((
                    t,
                    EventBody::Syscall(sc(NR_FUTEX, [heap + 0x80, 0x81, 1, 0, 0, 0], 1, self.dur(1_000, 6_000), FdType::Unknown)),
                ));
                t += self.dur(2_000, 10_000);
                out.push((
                    t,
                    EventBody::Syscall(sc(NR_SENDTO, [7, heap + 0x5000, 64, 0x4000, 0, 0], 64, self.dur(3_000, 30_000), FdType::Tcp)),
                ));
                out.push((
                    t,
                    EventBody::TcpSend(Tcp {
                        tuple: Self::tuple(7001, 41000),
                        bytes: 64,
                        latency_ns: 0,
                        srtt_us: 80,
                        old_state: 1,
                        new_state: 1,
                    }),
                ));
            }
            Role::LedgerWal => {
                let sleep = self.dur(100_000, 5_000_000);
                block(self, &mut out, &mut t, sleep, (5200, 5204));
                out.push((t, EventBody::Syscall(sc(NR_FUTEX, [heap + 0x80, 0x80, 0, 0, 0, 0], 0, sleep, FdType::Unknown))));
                let d = self.dur(200_000, 8_000_000);
                let task = &self.tasks[i];
                out.push((
                    t,
                    EventBody::SchedSwitch(SchedSwitch {
                        prev_comm: task.comm.into(),
                        prev_state: b'D',
                        next_pid: 0,
                        next_tid: 0,
                        next_comm: "swapper/1".into(),
                    }),
                ));
                t += d;
                out.push((t, EventBody::Syscall(sc(NR_FDATASYNC, [11, 0, 0, 0, 0, 0], 0, d, FdType::File))));
            }
            Role::Batch => {
                let task = &mut self.tasks[i];
                if task.step.is_multiple_of(4000) {
                    t += 20_000;
                    out.push((t, EventBody::Syscall(sc(NR_OPENAT, [(-100i64) as u64, heap + 0x100, 0, 0, 0, 0], 3, 9_000, FdType::File))));
                    let mut st = vec![0u8; 144];
                    st[0..8].copy_from_slice(&0xfd01u64.to_le_bytes());
                    st[8..16].copy_from_slice(&1_234_567u64.to_le_bytes());
                    st[24..28].copy_from_slice(&0o100644u32.to_le_bytes());
                    st[48..56].copy_from_slice(&(4000u64 * 4096).to_le_bytes());
                    let mut s = sc(NR_FSTAT, [3, stack + 0x200, 0, 0, 0, 0], 0, 1_500, FdType::File);
                    s.writes.push(MemWrite { addr: stack + 0x200, data: Data::Bytes(st) });
                    out.push((t, EventBody::Syscall(s)));
                    task.file_off = 0;
                }
                task.step += 1;
                let off = task.file_off;
                task.file_off += 470;
                // Five 94-character NACHA-style entry records per read.
                let mut chunk = String::with_capacity(470);
                for _ in 0..5 {
                    self.txn += 1;
                    let amount = self.rng.gen_range(1..10_000_000u64);
                    chunk.push_str(&format!(
                        "6{}{:09}{:<17}{:010}{:<15}{:<22}0{:015}\n",
                        ["22", "27", "32", "37"][self.rng.gen_range(0..4)],
                        ["021000021", "026009593", "011000138", "121000358"][self.rng.gen_range(0..4)],
                        &self.account()[4..16],
                        amount,
                        format!("ID{:08}", self.txn % 100_000_000),
                        ["ACME PAYROLL", "GLOBEX SETTLEMENT", "INITECH VENDOR", "UMBRELLA REFUND"][self.rng.gen_range(0..4)],
                        self.txn
                    ));
                }
                chunk.truncate(470);
                t += self.dur(20_000, 600_000);
                let mut s = sc(NR_READ, [3, heap + 0x10000, 470, 0, 0, 0], 470, self.dur(1_000, 200_000), FdType::File);
                s.writes.push(MemWrite { addr: heap + 0x10000, data: Data::Bytes(chunk.into_bytes()) });
                out.push((t, EventBody::Syscall(s)));
                if off.is_multiple_of(470 * 4096) && off > 0 {
                    out.push((t, EventBody::Syscall(sc(NR_LSEEK, [3, off, 0, 0, 0, 0], off as i64, 900, FdType::File))));
                }
                // The report grows its heap: a fault per fresh page.
                for _ in 0..self.rng.gen_range(0..3) {
                    let task = &mut self.tasks[i];
                    task.brk += 4096;
                    let (addr, ip) = (task.brk, 0x5581_1000_2200 + self.rng.gen_range(0..4) * 0x10);
                    t += self.rng.gen_range(200..2_000);
                    out.push((
                        t,
                        EventBody::PageFault(PageFault {
                            addr,
                            ip,
                            error_code: 6,
                            major: Some(self.rng.gen_ratio(1, 100)),
                            latency_ns: self.dur(400, 50_000),
                        }),
                    ));
                }
                if self.tasks[i].step % 4000 == 3999 {
                    out.push((t, EventBody::Syscall(sc(NR_CLOSE, [3, 0, 0, 0, 0, 0], 0, 2_000, FdType::File))));
                }
                if self.rng.gen_ratio(1, 300) {
                    let task = &mut self.tasks[i];
                    let from = task.cpu;
                    task.cpu = 1 - task.cpu;
                    out.push((t, EventBody::SchedMigrate(SchedMigrate { from_cpu: from, to_cpu: 1 - from })));
                }
                if self.rng.gen_ratio(1, 20) {
                    // Preempted by a woken service thread.
                    let task = &self.tasks[i];
                    out.push((
                        t,
                        EventBody::SchedSwitch(SchedSwitch {
                            prev_comm: task.comm.into(),
                            prev_state: b'R',
                            next_pid: 5200,
                            next_tid: 5204,
                            next_comm: "ledger-worker".into(),
                        }),
                    ));
                    t += self.dur(10_000, 500_000);
                }
            }
        }
        let task = &mut self.tasks[i];
        out.sort_by_key(|e| e.0);
        for (ts, body) in out {
            task.pending.push_back(Event {
                seq: 0,
                ts_ns: ts,
                pid: task.pid,
                tid: task.tid,
                cpu: task.cpu,
                cgroup: 0x4000 + task.pid as u64,
                body,
            });
        }
        task.t = t.max(task.pending.back().map(|e| e.ts_ns).unwrap_or(t)) + 1;
    }

    /// The next event, in time order across threads.
    pub fn next_event(&mut self) -> Event {
        loop {
            let Reverse((_, i)) = self.heap.pop().expect("tasks never end");
            if let Some(ev) = self.tasks[i].pending.pop_front() {
                let next = self.tasks[i].pending.front().map(|e| e.ts_ns).unwrap_or(self.tasks[i].t);
                self.heap.push(Reverse((next, i)));
                return ev;
            }
            self.step(i);
            let next = self.tasks[i].pending.front().map(|e| e.ts_ns).unwrap_or(self.tasks[i].t);
            self.heap.push(Reverse((next, i)));
        }
    }
}

impl Iterator for Synth {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        Some(self.next_event())
    }
}
