//! The recorder on the real kernel (root): exact syscall counts, cgroup
//! filter and container ids, TCP retransmits against the namespace's
//! `nstat`, run-queue delay with the hog as culprit, page faults, drops
//! counted on a tiny ring buffer. No timing assertions.

mod common;

use common::*;
use kpl::event::FdType;
use kpl::{Event, EventBody};
use recorder::{Config, Filter, Hooks};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

fn hooks(list: &str) -> Hooks {
    Hooks::parse(list).unwrap()
}

const SYSCALL_FIXTURE: &str = r#"
#include <fcntl.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    int out = open("/dev/null", O_WRONLY), in = open("/dev/zero", O_RDONLY);
    int f = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
    char buf[64] = {0};
    for (int i = 0; i < n; i++) syscall(SYS_write, out, buf, 7);
    for (int i = 0; i < n / 2; i++) syscall(SYS_pread64, in, buf, 16, 0);
    for (int i = 0; i < 3; i++) { syscall(SYS_pwrite64, f, buf, 5, i * 5); syscall(SYS_fdatasync, f); }
    syscall(SYS_fsync, f);
    return 0;
}
"#;

fn count(sys: &[&kpl::event::Syscall], nr: u32) -> usize {
    sys.iter().filter(|s| s.nr == nr).count()
}

#[test]
fn syscall_counts_are_exact() {
    let dir = tempdir();
    let comm = unique_comm("kpsys");
    let exe = compile_c(dir.path(), &comm, SYSCALL_FIXTURE);
    let cfg = Config { hooks: hooks("syscall"), filter: Filter::Comm(comm.clone()), ..Config::default() };
    let rec = start(cfg);
    let n = 5000;
    let child = Command::new(&exe).arg(n.to_string()).arg(dir.path().join("data")).spawn().unwrap();
    let pid = child.id();
    let st = child.wait_with_output().unwrap();
    assert!(st.status.success());
    let (summary, evs) = rec.finish();
    assert_eq!(summary.dropped(), 0, "no drops expected at this rate: {summary:?}");
    let sys = syscalls_of(&evs, pid);
    let writes: Vec<_> = sys.iter().filter(|s| s.nr == 1).collect();
    assert_eq!(writes.len(), n, "write(2) calls");
    assert!(writes.iter().all(|s| s.ret == 7 && s.args[2] == 7 && s.fd_type == FdType::Char));
    // (the dynamic loader preads ELF headers too: count the fixture's own)
    let preads: Vec<_> = sys.iter().filter(|s| s.nr == 17 && s.args[2] == 16).collect();
    assert_eq!(preads.len(), n / 2, "pread64(2) calls");
    assert!(preads.iter().all(|s| s.ret == 16 && s.fd_type == FdType::Char));
    let pwrites: Vec<_> = sys.iter().filter(|s| s.nr == 18).collect();
    assert_eq!(pwrites.len(), 3);
    assert!(pwrites.iter().all(|s| s.ret == 5 && s.fd_type == FdType::File));
    assert_eq!(count(&sys, 75), 3, "fdatasync");
    assert_eq!(count(&sys, 74), 1, "fsync");
    // only the read/write family is captured
    assert!(sys.iter().all(|s| [0, 1, 17, 18, 19, 20, 44, 45, 46, 47, 74, 75].contains(&s.nr)));
    // nothing from other processes
    assert!(evs.iter().filter(|e| matches!(e.body, EventBody::Syscall(_))).all(|e| e.pid == pid));
    // every event names its cgroup, described once by a cgroup event
    let cg = evs.iter().find(|e| e.pid == pid).unwrap().cgroup;
    assert_ne!(cg, 0);
    assert!(evs.iter().any(|e| matches!(&e.body, EventBody::Cgroup(c) if c.cgroup_id == cg)));
    // the kernel's counters agree with what was read
    assert_eq!(summary.received, summary.hooks.map(|h| h.events));
}

const FD_REUSE_FIXTURE: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
static int d, pr;
static void *other(void *a) { dup2(pr, d); return a; }
int main(int argc, char **argv) {
    char b[64] = {0};
    int p[2], s[2];
    pipe(p);
    pr = p[0];
    socketpair(AF_UNIX, SOCK_STREAM, 0, s);
    d = open("/dev/zero", O_RDONLY);
    for (int i = 0; i < 2; i++) syscall(SYS_read, d, b, 11);   /* char */
    close(d);
    open(argv[1], O_RDWR | O_CREAT, 0600);                  /* the same number again */
    for (int i = 0; i < 2; i++) syscall(SYS_pwrite64, d, b, 12, 0); /* file */
    write(p[1], b, 40);
    dup2(p[0], d);
    for (int i = 0; i < 2; i++) syscall(SYS_read, d, b, 13);   /* pipe */
    dup3(s[0], d, 0);
    for (int i = 0; i < 2; i++) syscall(SYS_write, d, b, 14);  /* unix */
    syscall(SYS_close_range, d, d, 0);
    open("/dev/zero", O_RDONLY);
    for (int i = 0; i < 2; i++) syscall(SYS_read, d, b, 15);   /* char */
    write(p[1], b, 40);
    pthread_t t;
    pthread_create(&t, 0, other, 0);                          /* another thread replaces it */
    pthread_join(t, 0);
    for (int i = 0; i < 2; i++) syscall(SYS_read, d, b, 16);   /* pipe */
    return 0;
}
"#;

/// The fd type of a descriptor number that names another file after
/// close, dup2, dup3, close_range, and dup2 in another thread (the programs
/// remember the type of recently used descriptors).
#[test]
fn fd_types_follow_reused_descriptors() {
    let dir = tempdir();
    let comm = unique_comm("kpfdre");
    let exe = compile_c(dir.path(), &comm, FD_REUSE_FIXTURE);
    let cfg = Config { hooks: hooks("syscall"), filter: Filter::Comm(comm.clone()), ..Config::default() };
    let rec = start(cfg);
    let child = Command::new(&exe).arg(dir.path().join("data")).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let (summary, evs) = rec.finish();
    assert_eq!(summary.dropped(), 0, "{summary:?}");
    let sys = syscalls_of(&evs, pid);
    for (nr, count, want) in [
        (0, 11, FdType::Char),
        (18, 12, FdType::File),
        (0, 13, FdType::Pipe),
        (1, 14, FdType::Unix),
        (0, 15, FdType::Char),
        (0, 16, FdType::Pipe),
    ] {
        let got: Vec<_> = sys.iter().filter(|s| s.nr == nr && s.args[2] == count).map(|s| s.fd_type).collect();
        assert_eq!(got, vec![want, want], "syscall {nr} with count {count}");
    }
}

#[test]
fn cgroup_filter_and_container_id() {
    let root = recorder::cgroup::v2_root().expect("cgroup v2 is mounted");
    let cid = format!("{:064x}", std::process::id() as u128 * 0x9e3779b97f4a7c15u128);
    let cid = &cid[cid.len() - 64..];
    let rel = format!("kprobe-test-{}.slice/cri-containerd-{cid}.scope", std::process::id());
    let path = std::path::Path::new(&root).join(&rel);
    std::fs::create_dir_all(&path).expect("creating a cgroup v2");
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
            let _ = std::fs::remove_dir(self.0.parent().unwrap());
        }
    }
    let _rm = Rm(path.clone());
    let dir = tempdir();
    let comm = unique_comm("kpcg");
    let exe = compile_c(dir.path(), &comm, SYSCALL_FIXTURE);
    let rec = start(Config {
        hooks: hooks("syscall"),
        filter: Filter::Cgroup(format!("/kprobe-test-{}.slice", std::process::id())),
        ..Config::default()
    });
    // one run outside the cgroup, one inside
    let outside = Command::new(&exe).arg("100").arg(dir.path().join("a")).status().unwrap();
    assert!(outside.success());
    let procs = path.join("cgroup.procs");
    let inside = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {} && exec {} 200 {}", procs.display(), exe.display(), dir.path().join("b").display()))
        .spawn()
        .unwrap();
    let pid = inside.id();
    assert!(inside.wait_with_output().unwrap().status.success());
    let (_, evs) = rec.finish();
    let sys: Vec<&Event> = evs.iter().filter(|e| matches!(e.body, EventBody::Syscall(_))).collect();
    assert!(!sys.is_empty());
    assert!(sys.iter().all(|e| e.pid == pid), "only the process in the cgroup is recorded");
    assert_eq!(count(&syscalls_of(&evs, pid), 1), 200);
    // the syscall record's cgroup id (read through the task's BTF) is the
    // cgroup directory's inode, as bpf_get_current_cgroup_id() gives it
    let cg = sys[0].cgroup;
    assert_eq!(cg, std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap()));
    assert!(sys.iter().all(|e| e.cgroup == cg));
    let info = evs
        .iter()
        .find_map(|e| match &e.body {
            EventBody::Cgroup(c) if c.cgroup_id == cg => Some(c.clone()),
            _ => None,
        })
        .expect("a cgroup event for the container's cgroup");
    assert_eq!(info.path, format!("/{rel}"));
    assert_eq!(info.container_id, cid);
}

const FAULT_FIXTURE: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    char *p = mmap(0, n * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    madvise(p, n * 4096, MADV_NOHUGEPAGE);
    for (long i = 0; i < n; i++) p[i * 4096] = 1;
    printf("%lx\n", (unsigned long)p);
    return 0;
}
"#;

#[test]
fn fresh_pages_fault() {
    let dir = tempdir();
    let comm = unique_comm("kpflt");
    let exe = compile_c(dir.path(), &comm, FAULT_FIXTURE);
    let rec = start(Config { hooks: hooks("fault"), filter: Filter::Comm(comm), ..Config::default() });
    let n = 3000u64;
    let out = Command::new(&exe).arg(n.to_string()).output().unwrap();
    assert!(out.status.success());
    let base = u64::from_str_radix(String::from_utf8_lossy(&out.stdout).trim(), 16).unwrap();
    let (summary, evs) = rec.finish();
    assert_eq!(summary.dropped(), 0);
    let faults = evs
        .iter()
        .filter(|e| matches!(&e.body, EventBody::PageFault(f) if f.addr >= base && f.addr < base + n * 4096 && f.error_code & 2 != 0))
        .count() as u64;
    assert!(faults >= n, "{faults} write faults in the {n} fresh pages");
}

#[test]
fn tiny_ring_buffer_reports_drops() {
    let rec = start(Config { ring_buffer_kb: 4, hooks: Hooks::default(), ..Config::default() });
    let st = Command::new("dd").args(["if=/dev/zero", "of=/dev/null", "bs=1", "count=300000"]).stderr(Stdio::null()).status().unwrap();
    assert!(st.success());
    let (summary, evs) = rec.finish();
    assert!(summary.dropped() > 0, "a 4 KiB ring under dd must overflow: {summary:?}");
    let lost: u64 = evs
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Lost(l) => Some(l.count),
            _ => None,
        })
        .sum();
    assert_eq!(lost, summary.dropped(), "every drop is in the stream as a lost event");
    let mut per_hook: HashMap<String, u64> = HashMap::new();
    for e in &evs {
        if let EventBody::Lost(l) = &e.body {
            *per_hook.entry(l.source.clone()).or_default() += l.count;
        }
    }
    for (i, n) in recorder::raw::HOOK_NAMES.iter().enumerate() {
        assert_eq!(per_hook.get(*n).copied().unwrap_or(0), summary.hooks[i].drops, "hook {n}");
    }
    assert_eq!(summary.received, summary.hooks.map(|h| h.events), "what was written was read");
}

const SVC: &str = r#"
#include <unistd.h>
int main(void) { for (int i = 0; i < 400; i++) usleep(2000); return 0; }
"#;
// Spins 5 ms, sleeps 1 ms, forever: at SCHED_FIFO 50 it delays the service
// (SCHED_FIFO 10, same CPU) at every wake-up it lands in, and leaves the CPU
// to it (not to the machine's other tasks, all below it) while it sleeps.
const HOG: &str = r#"
#include <stdio.h>
#include <time.h>
#include <unistd.h>
static long now_us(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000L + t.tv_nsec / 1000; }
int main(void) {
    volatile unsigned long x = 0;
    puts("spinning");
    fflush(stdout);
    for (;;) {
        long t0 = now_us();
        while (now_us() - t0 < 5000) x++;
        usleep(1000);
    }
}
"#;

#[test]
fn cpu_hog_is_the_culprit_of_run_queue_delay() {
    let dir = tempdir();
    let svc_comm = unique_comm("kpsvc");
    let hog_comm = unique_comm("kphog");
    let svc = compile_c(dir.path(), &svc_comm, SVC);
    let hog_exe = compile_c(dir.path(), &hog_comm, HOG);
    // Real-time, both on CPU 1: only the hog (above the service) can delay
    // the service, whatever else this shared machine runs (builds, tests).
    let mut hog = Command::new("chrt").args(["-f", "50", "taskset", "-c", "1"]).arg(&hog_exe).stdout(Stdio::piped()).spawn().unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut line = String::new();
    BufReader::new(hog.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let hog_pid = hog.id();
    let _hog = Kill(hog);
    let rec = start(Config { hooks: hooks("sched"), filter: Filter::Comm(svc_comm), ..Config::default() });
    let child = Command::new("chrt").args(["-f", "10", "taskset", "-c", "1"]).arg(&svc).spawn().unwrap();
    let svc_pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let (_, evs) = rec.finish();
    let mut by_culprit: HashMap<u32, (u64, String)> = HashMap::new();
    for e in &evs {
        if let EventBody::SchedDelay(d) = &e.body {
            if e.pid == svc_pid {
                let x = by_culprit.entry(d.culprit_pid).or_insert((0, d.culprit_comm.clone()));
                x.0 += d.delay_ns;
            }
        }
    }
    let (top, (total, comm)) = by_culprit.iter().max_by_key(|(_, (t, _))| *t).expect("run-queue delay events for the service");
    assert_eq!(*top, hog_pid, "the hog delays the service most: {by_culprit:?}");
    assert_eq!(comm, &hog_comm);
    assert!(*total > 0);
    assert!(evs.iter().any(|e| e.pid == svc_pid && matches!(e.body, EventBody::SchedWakeup(_))));
    assert!(evs.iter().any(|e| e.pid == svc_pid && matches!(e.body, EventBody::SchedSwitch(_))));
}

/// Two network namespaces joined by a veth pair; removed on drop.
struct Net {
    a: String,
    b: String,
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "failed: {cmd}");
}

impl Net {
    fn new() -> Net {
        let id = std::process::id();
        let (a, b) = (format!("kpr{id}a"), format!("kpr{id}b"));
        for ns in [&a, &b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
        let net = Net { a: a.clone(), b: b.clone() };
        let o = (id % 250) as u8;
        sh(&format!("ip netns add {a} && ip netns add {b}"));
        sh(&format!("ip link add kpv{id}a type veth peer name kpv{id}b"));
        sh(&format!("ip link set kpv{id}a netns {a} && ip link set kpv{id}b netns {b}"));
        sh(&format!("ip -n {a} addr add 10.213.{o}.1/24 dev kpv{id}a && ip -n {a} link set kpv{id}a up && ip -n {a} link set lo up"));
        sh(&format!("ip -n {b} addr add 10.213.{o}.2/24 dev kpv{id}b && ip -n {b} link set kpv{id}b up && ip -n {b} link set lo up"));
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
    }
}

const SERVER: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7777)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    d = c.recv(4096)
    if not d: break
    c.sendall(d)
"#;

const CLIENT: &str = r#"
import socket, sys
sys.stdin.readline()
c = socket.create_connection((sys.argv[1], 7777), timeout=120)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(int(sys.argv[2])):
    c.sendall(b"p" * 64)
    got = b""
    while len(got) < 64:
        got += c.recv(64 - len(got))
print("done", flush=True)
sys.stdin.readline()
"#;

/// A counter of the namespace's `nstat -asz` (absolute values, zeros included).
fn nstat(ns: &str, name: &str) -> u64 {
    let out = Command::new("ip").args(["netns", "exec", ns, "nstat", "-asz", name]).output().expect("nstat (iproute2)");
    let s = String::from_utf8_lossy(&out.stdout);
    s.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in nstat output: {s}"))
}

fn retrans_segs(ns: &str) -> u64 {
    nstat(ns, "TcpRetransSegs")
}

/// The retransmit-related counters of a namespace, for a failing assertion's message.
fn retrans_detail(ns: &str) -> String {
    [
        "TcpRetransSegs",
        "TcpExtTCPSynRetrans",
        "TcpExtTCPLossProbes",
        "TcpExtTCPRetransFail",
        "TcpExtTCPSpuriousRtxHostQueues",
        "TcpExtTCPTimeouts",
    ]
    .iter()
    .map(|n| format!("{n} {}", nstat(ns, n)))
    .collect::<Vec<_>>()
    .join(", ")
}

#[test]
fn tcp_retransmits_match_nstat() {
    require_root();
    let net = Net::new();
    let o = std::process::id() % 250;
    let server_ip = format!("10.213.{o}.2");
    sh(&format!(
        "ip netns exec {} nft -f - <<'EOF'\ntable inet kprobe_test {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  tcp dport 7777 numgen random mod 100 < 20 drop\n }}\n}}\nEOF",
        net.b
    ));
    let mut server =
        Command::new("ip").args(["netns", "exec", &net.b, "python3", "-c", SERVER, &server_ip]).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let mut client = Command::new("ip")
        .args(["netns", "exec", &net.a, "python3", "-c", CLIENT, &server_ip, "60"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let client_pid = client.id();
    let before = retrans_segs(&net.a);
    let detail_before = retrans_detail(&net.a);
    let rec = start(Config { hooks: hooks("tcp"), filter: Filter::Pid(vec![client_pid]), ..Config::default() });
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    let mut out = BufReader::new(client.stdout.take().unwrap());
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "done", "the client finished its exchanges");
    let after = retrans_segs(&net.a);
    let detail_after = retrans_detail(&net.a);
    let (summary, evs) = rec.finish();
    stdin.write_all(b"bye\n").unwrap();
    drop(stdin);
    let _ = client.wait();
    let _ = server.kill();
    let _ = server.wait();
    // A run of the retransmit program the kernel skipped (a softirq firing
    // the tracepoint inside a run of the same program on that CPU) is a
    // counted drop, never a silent one: then the events may be short of
    // TcpRetransSegs by at most the drops.
    let lost = summary.dropped();
    let retrans: Vec<&Event> = evs.iter().filter(|e| matches!(&e.body, EventBody::TcpRetransmit(_))).collect();
    let nstat = after - before;
    assert!(nstat > 0, "20% loss on 60 round trips must cause retransmits");
    let listed: Vec<String> = retrans
        .iter()
        .map(|e| match &e.body {
            EventBody::TcpRetransmit(t) => format!("{} ns: {} bytes, state {}", e.ts_ns, t.bytes, t.new_state),
            _ => unreachable!(),
        })
        .collect();
    let got = retrans.len() as u64;
    assert!(
        got == nstat || (lost > 0 && got < nstat && nstat <= got + lost),
        "{got} retransmit events, {lost} dropped, vs the namespace's TcpRetransSegs {nstat}; before: {detail_before}; after: {detail_after}; \
         tcp hook in the kernel: {:?}, read: {}; events: {listed:#?}",
        summary.hooks[2],
        summary.received[2]
    );
    assert!(retrans.iter().all(|e| e.pid == client_pid));
    for e in &retrans {
        if let EventBody::TcpRetransmit(t) = &e.body {
            assert_eq!(t.tuple.dport, 7777);
            assert_eq!(t.tuple.daddr.to_string(), server_ip);
        }
    }
    let sent: u64 = evs
        .iter()
        .filter(|e| e.pid == client_pid)
        .filter_map(|e| match &e.body {
            EventBody::TcpSend(t) => Some(t.bytes),
            _ => None,
        })
        .sum();
    assert_eq!(sent, 60 * 64, "bytes sent on the socket");
    let received: u64 = evs
        .iter()
        .filter(|e| e.pid == client_pid)
        .filter_map(|e| match &e.body {
            EventBody::TcpRecv(t) => Some(t.bytes),
            _ => None,
        })
        .sum();
    assert_eq!(received, 60 * 64, "bytes received on the socket");
    assert!(evs.iter().any(|e| matches!(&e.body, EventBody::TcpState(t) if t.new_state == 1 /* ESTABLISHED */)));
}

const REPLAY_FIXTURE: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
static char buf[20000];
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDONLY);
    long n = syscall(SYS_read, fd, buf, sizeof buf);
    close(fd);
    int s = open(argv[2], O_RDONLY);
    long m = syscall(SYS_read, s, buf, 100);
    close(s);
    unsigned char r[16];
    syscall(SYS_getrandom, r, 16, 0);
    struct timespec ts;
    syscall(SYS_clock_gettime, CLOCK_REALTIME, &ts);
    printf("%ld %ld %p %p\n", n, m, (void *)buf, (void *)r);
    return 0;
}
"#;

#[test]
fn replay_grade_captures_results_and_output_buffers() {
    use kpl::event::Syscall;
    use kpl::Data;
    let dir = tempdir();
    let comm = unique_comm("kprg");
    let exe = compile_c(dir.path(), &comm, REPLAY_FIXTURE);
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.path().join("input.bin"), &data).unwrap();
    std::fs::write(dir.path().join("key.secret"), b"hunter2").unwrap();
    let rec = start(Config {
        hooks: hooks("syscall"),
        filter: Filter::Comm(comm),
        replay_grade: true,
        redact: vec![recorder::config::RedactRule {
            path: Some("*.secret".into()),
            fd: None,
            action: recorder::config::RedactAction::Hash,
        }],
        ..Config::default()
    });
    let out = Command::new(&exe).arg(dir.path().join("input.bin")).arg(dir.path().join("key.secret")).output().unwrap();
    assert!(out.status.success());
    let pid = std::str::from_utf8(&out.stdout).unwrap().to_owned();
    let f: Vec<&str> = pid.split_whitespace().collect();
    assert_eq!(f[0], "10000");
    assert_eq!(f[1], "7");
    let buf_addr = u64::from_str_radix(f[2].trim_start_matches("0x"), 16).unwrap();
    let (summary, evs) = rec.finish();
    assert_eq!(summary.dropped(), 0);
    let sys: Vec<(&Event, &Syscall)> = evs
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Syscall(s) => Some((e, s)),
            _ => None,
        })
        .collect();
    // every syscall, not only the read/write family: openat, close, mmap...
    for nr in [257u32, 3, 9, 318, 228] {
        assert!(sys.iter().any(|(_, s)| s.nr == nr), "syscall {nr} captured");
    }
    let big = sys.iter().find(|(_, s)| s.nr == 0 && s.ret == 10_000).expect("the 10000-byte read");
    assert_eq!(big.1.writes.len(), 1);
    assert_eq!(big.1.writes[0].addr, buf_addr);
    assert_eq!(big.1.writes[0].data, Data::Bytes(data.clone()), "the bytes the kernel wrote, across 3 chunks");
    assert_eq!(big.1.flags & Syscall::FLAG_TRUNCATED, 0);
    let secret = sys.iter().find(|(_, s)| s.nr == 0 && s.ret == 7).expect("the secret read");
    assert_eq!(secret.1.writes[0].data, Data::Redacted { len: 7, hash: Some(kpl::FileHash::of(b"hunter2")), rule: "path:*.secret".into() });
    let rnd = sys.iter().find(|(_, s)| s.nr == 318).unwrap();
    assert_eq!(rnd.1.ret, 16);
    assert_eq!(rnd.1.writes[0].data.len(), 16);
    let clk = sys.iter().find(|(_, s)| s.nr == 228).unwrap();
    assert_eq!(clk.1.writes[0].data.len(), 16);
    assert!(evs
        .iter()
        .any(|e| matches!(&e.body, EventBody::Exec(x) if x.exe.path.ends_with(&*exe.file_name().unwrap().to_string_lossy()))));
    assert!(evs.iter().any(|e| matches!(&e.body, EventBody::Exit(x) if x.group && x.code == 0)));
}

#[test]
fn record_command_captures_from_exec_on() {
    require_root();
    let dir = tempdir();
    let f = dir.path().join("hello.txt");
    std::fs::write(&f, b"hello from the kernel\n").unwrap();
    let mut sink = MemSink::default();
    let (status, summary) = recorder::record_command(
        // (dd, not cat: cat copies with copy_file_range when stdout is a file)
        &["dd".to_string(), format!("if={}", f.display()), "of=/dev/null".to_string(), "status=none".to_string()],
        Config { hooks: hooks("syscall"), replay_grade: true, ..Config::default() },
        &mut sink,
    )
    .expect("recording dd");
    assert!(status.success());
    assert_eq!(summary.dropped(), 0);
    let evs = sink.0.lock().unwrap();
    let exec = evs.iter().position(|e| matches!(&e.body, EventBody::Exec(x) if x.exe.path.ends_with("/dd"))).expect("the exec of dd");
    let pid = evs[exec].pid;
    // nothing of the command before its exec is needed: the first syscall
    // after it is the exec's own return or the loader's first call
    let read = evs[exec..]
        .iter()
        .find_map(|e| match &e.body {
            EventBody::Syscall(s) if e.pid == pid && s.nr == 0 && s.ret == 22 => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| {
            let seen: Vec<String> =
                evs.iter().filter(|e| e.pid == pid).map(|e| format!("{:?}", e.body).chars().take(160).collect()).collect();
            panic!("dd's read of the file is missing; events of pid {pid}:\n{}", seen.join("\n"))
        });
    assert_eq!(read.writes[0].data, kpl::Data::Bytes(b"hello from the kernel\n".to_vec()));
    assert!(evs.iter().any(|e| e.pid == pid && matches!(&e.body, EventBody::Exit(x) if x.group && x.code == 0)));
    let err = recorder::record_command(&["/no/such/program".into()], Config::default(), &mut MemSink::default());
    assert!(err.is_ok_and(|(st, _)| st.code() == Some(127)));
}
