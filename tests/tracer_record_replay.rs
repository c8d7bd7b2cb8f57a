//! End-to-end: `kprobe record` then `kprobe replay` of every fixture and of
//! real programs, identical output, exit code and syscall sequence; replay
//! after the world changed; divergence on a tampered log; a replay never
//! touches real files. Runs as root (ptrace), on the real kernel.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn kprobe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kprobe"))
}

/// Runs a command with a generous timeout (a hung replay fails the test
/// instead of hanging CI).
fn run(mut c: Command, dir: &Path) -> Output {
    c.current_dir(dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(_) = child.try_wait().unwrap() {
            return child.wait_with_output().unwrap();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("timed out: {c:?}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kprobe-tracer-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Recorded {
    log: PathBuf,
    out: Output,
}

fn record(dir: &Path, name: &str, cmd: &[&str]) -> Recorded {
    let log = dir.join(format!("{name}.kpl"));
    let mut c = kprobe();
    c.arg("record").arg("-o").arg(&log).arg("--").args(cmd);
    let out = run(c, dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kprobe: recorded"), "record {name} failed: {err}");
    Recorded { log, out }
}

fn replay(log: &Path, dir: &Path, extra: &[&str]) -> Output {
    let mut c = kprobe();
    c.arg("replay").arg(log).args(extra);
    run(c, dir)
}

/// Syscall events in a log.
fn syscalls_in(log: &Path) -> u64 {
    let out = kprobe().args(["log", "info", "--json"]).arg(log).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["kinds"]["syscall"].as_u64().unwrap_or(0)
}

/// Records, replays, and checks identical stdout, exit code and syscall sequence.
fn round_trip(dir: &Path, name: &str, cmd: &[&str]) -> Recorded {
    let rec = record(dir, name, cmd);
    let rep = replay(&rec.log, dir, &[]);
    let err = String::from_utf8_lossy(&rep.stderr);
    assert_eq!(rep.status.code(), rec.out.status.code(), "{name}: exit code differs; replay stderr: {err}");
    assert_eq!(
        String::from_utf8_lossy(&rep.stdout),
        String::from_utf8_lossy(&rec.out.stdout),
        "{name}: output differs; replay stderr: {err}"
    );
    // Every syscall of the log was matched by the replayed program, in order.
    let n = syscalls_in(&rec.log);
    assert!(err.contains(&format!("({n} syscalls matched the log)")), "{name}: {n} syscalls in the log; replay said: {err}");
    rec
}

fn c(name: &str) -> String {
    fixtures::c(name).display().to_string()
}

#[test]
fn fixture_files_and_then_the_world_changes() {
    let d = tmp("files");
    std::fs::write(d.join("input.txt"), "ledger entry 1: +100.00 EUR\nledger entry 2: -40.00 EUR\n").unwrap();
    std::fs::create_dir_all(d.join("dir")).unwrap();
    for f in ["a.csv", "b.csv", "c.csv"] {
        std::fs::write(d.join("dir").join(f), f).unwrap();
    }
    let rec = round_trip(&d, "files", &[&c("files"), "input.txt", "output.txt", "dir"]);
    assert!(String::from_utf8_lossy(&rec.out.stdout).contains("dir entry b.csv"));
    // The world changes: input altered then deleted, directory gone, another cwd.
    std::fs::write(d.join("input.txt"), "something else entirely").unwrap();
    let other = tmp("files-elsewhere");
    let rep = replay(&rec.log, &other, &[]);
    assert_eq!(rep.stdout, rec.out.stdout, "{}", String::from_utf8_lossy(&rep.stderr));
    std::fs::remove_file(d.join("input.txt")).unwrap();
    std::fs::remove_dir_all(d.join("dir")).unwrap();
    let rep = replay(&rec.log, &other, &[]);
    assert_eq!(rep.stdout, rec.out.stdout, "{}", String::from_utf8_lossy(&rep.stderr));
    assert!(!other.join("output.txt").exists(), "replay wrote a real file");
}

#[test]
fn fixture_pipes_fork_exec() {
    let d = tmp("pipes");
    let rec = round_trip(&d, "pipes", &[&c("pipes_fork")]);
    assert!(String::from_utf8_lossy(&rec.out.stdout).contains("SETTLEMENT BATCH 42 CLEARED"));
}

#[test]
fn fixture_tcp_pair_inside_the_tree() {
    let d = tmp("tcp-pair");
    let rec = round_trip(&d, "tcp_pair", &[&c("tcp_pair")]);
    assert!(String::from_utf8_lossy(&rec.out.stdout).contains("client got: ack(payment 2)"));
}

/// A loopback HTTP-ish server outside the recorded tree.
fn serve(reply: &'static str, conns: usize) -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        for _ in 0..conns {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(reply.as_bytes());
        }
    });
    (port, h)
}

#[test]
fn fixture_tcp_client_then_the_server_is_gone() {
    let d = tmp("tcp-client");
    let (port, h) = serve("HTTP/1.0 200 OK\r\n\r\n{\"account\":\"ACME\",\"balance\":\"1250.00\"}", 1);
    let rec = round_trip(&d, "tcp_client", &[&c("tcp_client"), &port.to_string()]);
    h.join().unwrap();
    assert!(String::from_utf8_lossy(&rec.out.stdout).contains("\"balance\":\"1250.00\""));
    // The server is stopped: replay still shows the same conversation.
    let rep = replay(&rec.log, &d, &[]);
    assert_eq!(rep.stdout, rec.out.stdout, "{}", String::from_utf8_lossy(&rep.stderr));
}

#[test]
fn fixture_threads_mutex_condvar() {
    let d = tmp("threads");
    for i in 0..3 {
        round_trip(&d, &format!("threads{i}"), &[&c("threads")]);
    }
}

#[test]
fn fixture_signals_and_timers() {
    let d = tmp("signals");
    let rec = round_trip(&d, "signals", &[&c("signals")]);
    let out = String::from_utf8_lossy(&rec.out.stdout);
    assert!(out.contains("alarms 12, child exit 7, chld 1"), "{out}");
    // The alarms landed in busy user code: the log says where.
    let dump = kprobe().args(["log", "dump", "--kind", "signal", "--json"]).arg(&rec.log).output().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&dump.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().filter(|l| l["signal"] == "SIGALRM").count() >= 12);
    assert!(lines.iter().any(|l| l["signal"] == "SIGCHLD"));
}

#[test]
fn fixture_signals_under_swapped_masks() {
    // sigsuspend and friends deliver under the mask they were given; served
    // from the log at replay, the replay delivers under it too.
    let d = tmp("sigsys");
    round_trip(&d, "sigsys", &[&c("sigsys")]);
}

#[test]
fn fixture_time_rdtsc_cpuid() {
    let d = tmp("timing");
    let rec = round_trip(&d, "timing", &[&c("timing")]);
    let info = kprobe().args(["log", "info", "--json"]).arg(&rec.log).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(v["kinds"]["rdtsc"].as_u64().unwrap() >= 2, "rdtsc and rdtscp trapped: {v}");
    // CPUID faulting is a CPU feature (Intel, `cpuid_fault` in /proc/cpuinfo):
    // where it is missing (AMD EPYC VMs) the log says so and holds no cpuid.
    let cpuid = v["kinds"]["cpuid"].as_u64().unwrap_or(0);
    if std::fs::read_to_string("/proc/cpuinfo").unwrap().split_whitespace().any(|w| w == "cpuid_fault") {
        assert!(cpuid >= 1, "cpuid faulted: {v}");
    } else {
        assert_eq!((cpuid, &v["summary"]["cpuid_faulting"]), (0, &serde_json::json!("unavailable")), "{v}");
    }
    assert!(v["cpu"].as_str().is_some_and(|c| c.starts_with("AuthenticAMD") || c.starts_with("GenuineIntel")), "the CPU is recorded: {v}");
    // vDSO calls became recorded syscalls.
    let dump =
        String::from_utf8_lossy(&kprobe().args(["log", "dump", "--kind", "syscall"]).arg(&rec.log).output().unwrap().stdout).into_owned();
    for call in ["clock_gettime(", "gettimeofday(", "time("] {
        assert!(dump.contains(call), "{call} recorded");
    }
}

/// (name, ret) of every syscall in a log (pids and the time in seconds,
/// which differ from run to run, as 0).
fn call_results(log: &Path) -> Vec<(String, i64)> {
    let out = kprobe().args(["log", "dump", "--json", "--kind", "syscall"]).arg(log).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["name"].as_str().unwrap_or("").to_owned(), v["ret"].as_i64().unwrap_or(i64::MIN)))
        .map(|(n, r)| {
            let r = if r > 0 && ["set_tid_address", "time", "getpid", "gettid"].contains(&n.as_str()) { 0 } else { r };
            (n, r)
        })
        .collect()
}

#[test]
fn calls_the_recorder_performs_itself_answer_as_the_kernel() {
    // Reads, writes and seeks of a regular file and clock reads are done by
    // the recorder at the entry stop; at their edges (faulting buffers,
    // offsets, a file-size limit, descriptors closed and reused) the
    // program must see what the kernel answers natively.
    let d = tmp("emulated");
    let native = run(
        {
            let mut c = Command::new(c("emulated"));
            c.arg(d.join("native.txt"));
            c
        },
        &d,
    );
    assert!(native.status.success());
    let rec = round_trip(&d, "emulated", &[&c("emulated"), &d.join("recorded.txt").display().to_string()]);
    assert_eq!(String::from_utf8_lossy(&rec.out.stdout), String::from_utf8_lossy(&native.stdout), "recorded run differs from native");
    assert_eq!(std::fs::read(d.join("recorded.txt")).unwrap(), std::fs::read(d.join("native.txt")).unwrap());
    let info = kprobe().args(["log", "info", "--json"]).arg(&rec.log).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let performed: u64 = v["summary"]["syscalls_performed_by_recorder"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(performed >= 20, "the recorder performed the file and clock calls itself: {v}");
    // Left to the kernel, the same calls with the same results.
    let log0 = d.join("kernel.kpl");
    let mut k = kprobe();
    k.args(["record", "--no-emulate", "-o"]).arg(&log0).arg("--").arg(c("emulated")).arg(d.join("kernel.txt"));
    let out0 = run(k, &d);
    assert_eq!(String::from_utf8_lossy(&out0.stdout), String::from_utf8_lossy(&native.stdout));
    assert_eq!(call_results(&rec.log), call_results(&log0), "same syscalls and results with and without the recorder performing them");
}

#[test]
fn fixture_randomness() {
    let d = tmp("random");
    round_trip(&d, "random", &[&c("randomness")]);
}

#[test]
fn fixture_spinning_threads_need_preemption() {
    let d = tmp("spin");
    let rec = round_trip(&d, "spin", &[&c("spin_threads")]);
    let info = kprobe().args(["log", "info", "--json"]).arg(&rec.log).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(v["kinds"]["preempt"].as_u64().unwrap_or(0) >= 1, "threads spinning without syscalls were preempted: {v}");
}

#[test]
fn fixture_tokio_multithreaded() {
    let d = tmp("tokio");
    let bin = fixtures::rust("tokio_echo").display().to_string();
    let rec = round_trip(&d, "tokio", &[&bin]);
    assert!(String::from_utf8_lossy(&rec.out.stdout).contains("client 7: echo: transfer 7 of 800 EUR"));
}

#[test]
fn exit_code_is_the_programs() {
    let d = tmp("exit");
    let rec = round_trip(&d, "exit7", &["/bin/sh", "-c", "echo bye; exit 7"]);
    assert_eq!(rec.out.status.code(), Some(7));
}

#[test]
fn replay_never_touches_real_files() {
    let d = tmp("deleter");
    let names = ["delete-me", "overwrite-me", "rename-me"];
    for n in names {
        std::fs::write(d.join(n), format!("original {n}\n")).unwrap();
    }
    let rec = record(&d, "deleter", &[&c("deleter"), names[0], names[1], names[2]]);
    // The recording really did it.
    assert!(!d.join(names[0]).exists());
    assert_eq!(std::fs::read_to_string(d.join(names[1])).unwrap(), "overwritten\n");
    assert!(d.join("rename-me.renamed").exists());
    // Put everything back, replay, and check nothing moved.
    std::fs::remove_file(d.join("rename-me.renamed")).unwrap();
    for n in names {
        std::fs::write(d.join(n), format!("original {n}\n")).unwrap();
    }
    let rep = replay(&rec.log, &d, &[]);
    assert_eq!(rep.stdout, rec.out.stdout, "{}", String::from_utf8_lossy(&rep.stderr));
    for n in names {
        assert_eq!(std::fs::read_to_string(d.join(n)).unwrap(), format!("original {n}\n"), "{n} untouched by replay");
    }
    assert!(!d.join("rename-me.renamed").exists());
}

/// Copies a log event by event (buffers inline), through `f`, which may
/// change an event or drop it (false).
fn copy_log(src: &Path, dst: &Path, mut f: impl FnMut(&mut kpl::Event) -> bool) {
    let r = kpl::Reader::open(src).unwrap();
    let mut w = kpl::Writer::create(dst, r.meta()).unwrap();
    for file in &r.index().files {
        w.store_file(&r.file(&file.hash).unwrap()).unwrap();
    }
    for ev in r.events() {
        let mut ev = ev.unwrap();
        ev.data_mut(|d| {
            if let kpl::Data::Stored { .. } = d {
                *d = kpl::Data::Bytes(r.payload(d).unwrap().into_owned());
            }
        });
        if f(&mut ev) {
            w.append(ev).unwrap();
        }
    }
    w.finish().unwrap();
}

/// A log that lost the calls between a task's first few and its exit (as an
/// eBPF log can) makes the replay stop with a divergence at the exit, not
/// wait for an exit that nothing will cause (it hung there once).
#[test]
fn an_exit_the_program_does_not_reach_is_a_divergence() {
    let d = tmp("lost-exit");
    let rec = record(&d, "orig", &[&c("timing")]);
    let cut = d.join("cut.kpl");
    let mut kept = 0;
    copy_log(&rec.log, &cut, |ev| match &ev.body {
        kpl::EventBody::Syscall(_) => {
            kept += 1;
            kept <= 5
        }
        kpl::EventBody::Exit(_) => true,
        _ => kept < 5,
    });
    assert!(kept > 10, "the fixture makes more than 10 calls: {kept}");
    let rep = replay(&cut, &d, &[]);
    assert_ne!(rep.status.code(), Some(0));
    let err = String::from_utf8_lossy(&rep.stderr);
    assert!(err.contains("diverged at event") && err.contains("to exit"), "{err}");
}

#[test]
fn tampered_log_gives_a_divergence_error() {
    let d = tmp("tamper");
    let rec = record(&d, "orig", &[&c("timing")]);
    // Copy the log, changing the count argument of the first write to stdout.
    let tampered = d.join("tampered.kpl");
    let mut target = None;
    copy_log(&rec.log, &tampered, |ev| {
        if let kpl::EventBody::Syscall(s) = &mut ev.body {
            if target.is_none() && s.nr == 1 && s.args[0] == 1 {
                s.args[2] += 1;
                target = Some(ev.seq);
            }
        }
        true
    });
    let seq = target.expect("a write to stdout");
    let rep = replay(&tampered, &d, &[]);
    assert_ne!(rep.status.code(), Some(0));
    let err = String::from_utf8_lossy(&rep.stderr);
    assert!(err.contains(&format!("diverged at event {seq}")), "{err}");
    assert!(err.contains("expected write(") && err.contains("called write("), "expected vs actual: {err}");
    assert!(err.contains("in /usr/lib/x86_64-linux-gnu/libc.so.6") || err.contains("libc"), "nearest symbol: {err}");
}

#[test]
fn until_event_and_quiet() {
    let d = tmp("until");
    let rec = record(&d, "until", &[&c("pipes_fork")]);
    let rep = replay(&rec.log, &d, &["--until-event", "40", "--quiet"]);
    assert!(rep.status.success());
    assert!(rep.stdout.is_empty(), "--quiet hides output");
    let err = String::from_utf8_lossy(&rep.stderr);
    assert!(err.contains("stopped before event 40") && err.contains("is at ip 0x"), "{err}");
}

#[test]
fn unsupported_syscall_stops_recording_with_a_clear_error() {
    let d = tmp("unsupported");
    let log = d.join("u.kpl");
    let mut cmd = kprobe();
    cmd.arg("record").arg("-o").arg(&log).arg("--").arg(c("unsupported"));
    let out = run(cmd, &d);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot record faithfully") && err.contains("io_uring_setup"), "{err}");
}

#[test]
fn real_programs() {
    let d = tmp("real");
    std::fs::write(d.join("prices.csv"), "EUR,1.00\nUSD,0.92\nGBP,1.17\nCHF,1.04\n").unwrap();
    // An interpreter.
    let rec = round_trip(&d, "python", &["python3", "-c", "import json,hashlib,time; t=time.time(); print(json.dumps({'h': hashlib.sha256(b'ledger').hexdigest(), 'n': sum(range(10**5))}), t > 0)"]);
    assert!(String::from_utf8_lossy(&rec.out.stdout).contains("\"n\": 4999950000"));
    // A database shell.
    let db = d.join("ledger.db");
    let rec = round_trip(&d, "sqlite", &["sqlite3", db.to_str().unwrap(), "create table t(acct text, amount real); insert into t values ('ACME', 10.5), ('GLOBEX', -3.25), ('ACME', 4); select acct, sum(amount) from t group by acct order by acct;"]);
    assert!(String::from_utf8_lossy(&rec.out.stdout).contains("ACME|14.5"));
    // A shell pipeline.
    let rec = round_trip(
        &d,
        "pipeline",
        &["/bin/sh", "-c", "sort -t, -k2 -r prices.csv | head -2 | cut -d, -f1 | tr '\\n' ' '; echo; date +%s >/dev/null"],
    );
    assert_eq!(String::from_utf8_lossy(&rec.out.stdout).trim(), "GBP CHF");
    // A network client.
    let (port, h) = serve("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nsettled\n", 1);
    let rec = round_trip(&d, "curl", &["curl", "-s", &format!("http://127.0.0.1:{port}/status")]);
    h.join().unwrap();
    assert_eq!(String::from_utf8_lossy(&rec.out.stdout), "settled\n");
}
