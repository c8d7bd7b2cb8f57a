//! The GDB remote-protocol server end to end: real gdb (batch mode) and
//! real lldb drive `kprobe replay --debugger` / `--gdb` on recorded
//! fixtures: breakpoints in the program and in a shared library, locals,
//! backtraces, stepping over a syscall served from the log, watchpoints
//! forwards and backwards, reverse execution to the beginning, `monitor`
//! commands, threads, catching syscalls, the exit code. Runs as root.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn kprobe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kprobe"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kprobe-gdb-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs a command to its end with a generous timeout.
fn run(mut c: Command, dir: &Path) -> Output {
    c.current_dir(dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("timed out: {c:?}\nstdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Records `debugme ARGS` under ptrace.
fn record_debugme(dir: &Path, args: &[&str]) -> PathBuf {
    let log = dir.join("debugme.kpl");
    let mut c = kprobe();
    c.arg("record").arg("-o").arg(&log).arg("--").arg(fixtures::c("debugme")).args(args);
    let out = run(c, dir);
    assert_eq!(out.status.code(), Some(3), "debugme exits 3: {}", String::from_utf8_lossy(&out.stderr));
    log
}

/// Runs a debugger script against a replay; returns everything printed.
fn debug(dir: &Path, log: &Path, debugger: &str, script: &str) -> String {
    let file = dir.join(format!("script.{debugger}"));
    std::fs::write(&file, script).unwrap();
    let mut c = kprobe();
    c.arg("replay").arg(log).arg("--debugger").arg(debugger).arg("--");
    match debugger {
        "gdb" => c.arg("-batch").arg("-x").arg(&file),
        _ => c.arg("--batch").arg("-s").arg(&file),
    };
    // One file for stdout and stderr: the debugger's, the server's and the
    // program's output in the order they were written.
    let path = dir.join(format!("out.{debugger}"));
    let f = std::fs::File::create(&path).unwrap();
    c.current_dir(dir).stdin(Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f);
    let mut child = c.spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("timed out: {c:?}\n{}", std::fs::read_to_string(&path).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("kprobe: error"), "the server failed:\n{text}");
    text
}

/// Asserts that `needles` appear in `hay` in this order.
fn in_order(hay: &str, needles: &[&str]) {
    let mut at = 0;
    for n in needles {
        match hay[at..].find(n) {
            Some(i) => at += i + n.len(),
            None => panic!("expected {n:?} (after the earlier expectations) in:\n{hay}"),
        }
    }
}

#[test]
fn gdb_breakpoints_locals_backtrace_step_over_syscall_threads_exit() {
    let dir = tmp("forward");
    let log = record_debugme(&dir, &["3"]);
    let out = debug(
        &dir,
        &log,
        "gdb",
        "break bump\ncontinue\nbacktrace\nprint k\nup\ninfo locals\n\
         break getppid\ncontinue\nfinish\nnext\nnext\nnext\nprint i\n\
         delete\nbreak bump if k >= 100\ncontinue\ninfo threads\nthread 1\nbacktrace 1\nthread 2\nprint k\n\
         delete\ncontinue\n",
    );
    in_order(
        &out,
        &[
            // A function of the program, its arguments, the caller.
            "Breakpoint 1, bump (k=k@entry=0) at c/debugme.c:14",
            "#1 ",
            "in main (",
            "$1 = 0",
            "i = 0",
            // A function of a shared library (libc), resolved through the recorded link map.
            "Breakpoint 2",
            "getppid",
            // Stepping over write(): served from the log, its output shown from the log.
            "write(1, buf, strlen(buf));",
            "round 0 counter 0",
            "$2 = 1",
            // The worker thread, and switching threads.
            "hit Breakpoint 3, bump (k=k@entry=100)",
            "  1    Thread ",
            "* 2    Thread ",
            "Switching to thread 1",
            "Switching to thread 2",
            "$3 = 100",
            // To the end: the recorded exit code.
            "final counter 306",
            "exited with code 03",
        ],
    );
    // The world is untouched: nothing was written outside the replay.
    assert!(!dir.join("core").exists());
}

#[test]
fn gdb_watch_then_reverse_continue_and_reverse_steps() {
    let dir = tmp("backward");
    let log = record_debugme(&dir, &["3"]);
    let out = debug(
        &dir,
        &log,
        "gdb",
        "break bump\ncontinue\ncontinue\ncontinue\nprint counter\ndelete\n\
         watch counter\ncontinue\nprint counter\n\
         reverse-continue\nprint counter\nreverse-continue\nprint counter\n\
         delete\nbreak bump\ncontinue\nreverse-finish\nreverse-stepi\nstepi\n\
         delete\nbreak main\nreverse-continue\nreverse-continue\nreverse-stepi\n\
         delete\ncatch syscall getppid\ncontinue\ninfo registers orig_rax\ncontinue\n\
         set var counter = 77\nprint counter\n",
    );
    in_order(
        &out,
        &[
            "Breakpoint 1, bump (k=k@entry=2)",
            "$1 = 1",
            // Forward: bump(2) writes 1 + 2.
            "Hardware watchpoint 2: counter",
            "Old value = 1",
            "New value = 3",
            "$2 = 3",
            // Backward: to where it last changed (before the write in bump(2)), then the one before (bump(1)).
            "Old value = 3",
            "New value = 1",
            "in bump (k=k@entry=2) at c/debugme.c:14",
            "$3 = 1",
            "Old value = 1",
            "New value = 0",
            "in bump (k=k@entry=1) at c/debugme.c:14",
            "$4 = 0",
            // reverse-finish: back to the call in main.
            "Breakpoint 3, bump (k=k@entry=2)",
            "main (",
            "int c = bump(i);",
            // Back to the start of main, then the beginning of the replay, reported as such.
            "Breakpoint 4, main (",
            "No more reverse-execution history.",
            "No more reverse-execution history.",
            // Catching a syscall: entry and return, the call served from the log.
            "call to syscall getppid",
            "orig_rax       0x6e",
            "returned from syscall getppid",
            "memory written from the debugger",
            "$5 = 77",
        ],
    );
}

#[test]
fn gdb_reverse_next_reverse_step_and_library_breakpoints_backwards() {
    let dir = tmp("reverse-lines");
    let log = record_debugme(&dir, &["3"]);
    let out = debug(
        &dir,
        &log,
        "gdb",
        "break debugme.c:33\ncontinue\nnext\nnext\nnext\nprint i\n\
         reverse-next\nreverse-next\nprint i\n\
         reverse-step\nreverse-stepi\nx/i $pc\nreverse-stepi\nstepi\nx/i $pc\nstepi\n\
         delete\nbreak getppid\nnext\nnext\nnext\nnext\nreverse-continue\nbacktrace 2\n",
    );
    in_order(
        &out,
        &[
            "Breakpoint 1, main (",
            // Forward over the line with write(), to the loop head.
            "round 0 counter 0",
            "for (int i = 0; i < rounds; i++) {",
            "$1 = 0",
            // reverse-next: back over write() (a libc function reached by a
            // breakpoint placed after the replay restarted, before libc was mapped).
            "35\t        write(1, buf, strlen(buf));",
            "34\t        snprintf(buf",
            "$2 = 0",
            // reverse-step: into getppid from its end; reverse-stepi over its
            // syscall lands on the syscall instruction, forward again runs it.
            "getppid",
            "=> 0x",
            ":\tsyscall",
            "=> 0x",
            ":\tsyscall",
            // A libc breakpoint found by reverse-continue.
            "Breakpoint 2, ",
            "getppid",
            "#1 ",
            "main (",
        ],
    );
}

#[test]
fn gdb_extended_remote_starti_event_restarts_the_replay() {
    // `target extended-remote`, as with rr: `starti EVENT` goes to an event
    // and stops there (gdb reads the new state itself); `starti 0` goes back
    // to the beginning. (`run` does the same and then continues.)
    let dir = tmp("restart");
    let log = record_debugme(&dir, &["3"]);
    // The getppid() of round 1: bump(2) comes next.
    let dump = kprobe().args(["log", "dump", "--json", "--kind", "syscall"]).arg(&log).output().unwrap();
    let getppid: Vec<u64> = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["name"] == "getppid")
        .filter_map(|v| v["seq"].as_u64())
        .collect();
    assert_eq!(getppid.len(), 3, "one getppid a round");
    let (mut server, addr) = gdb_server(&dir, &log);
    let mut c = Command::new("gdb");
    c.arg("-q").arg("-batch").arg(fixtures::c("debugme"));
    for cmd in [
        format!("target extended-remote {addr}"),
        format!("starti {}", getppid[1]),
        "monitor when".into(),
        "break bump".into(),
        "continue".into(),
        "print k".into(),
        "starti 0".into(),
        "monitor when".into(),
        "continue".into(),
        "print k".into(),
        "detach".into(),
    ] {
        c.arg("-ex").arg(cmd);
    }
    let out = run(c, &dir);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // (`monitor` output and gdb's own come on different streams.)
    assert!(text.contains(&format!("event {} of ", getppid[1])), "{text}");
    in_order(&text, &["Breakpoint 1, bump (k=k@entry=2)", "$1 = 2", "_start", "Breakpoint 1, bump (k=k@entry=0)", "$2 = 0"]);
    assert!(!text.contains("memory or registers were changed"), "starting again changes nothing:\n{text}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server ends when gdb detaches");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn gdb_monitor_when_goto_events() {
    let dir = tmp("monitor");
    let log = record_debugme(&dir, &["3"]);
    let out = debug(
        &dir,
        &log,
        "gdb",
        "monitor when\nmonitor goto 40\nmaint flush register-cache\nmonitor when\nmonitor events 2\nmonitor cause\nmonitor help\nbreak bump\ncontinue\nprint k\n",
    );
    in_order(
        &out,
        &[
            "event 4 of",
            "event 40 of",
            "event 40 of",
            "=>       40",
            "no cause for this replay",
            "goto EVENT",
            // Forward from event 40 still works.
            "Breakpoint 1, bump (k=k@entry=0)",
            "$1 = 0",
        ],
    );
}

#[test]
fn lldb_breakpoints_locals_threads_watch_exit() {
    let dir = tmp("lldb");
    let log = record_debugme(&dir, &["3"]);
    let out = debug(
        &dir,
        &log,
        "lldb",
        "breakpoint set -n bump\ncontinue\nbt\nframe variable\ncontinue\np counter\n\
         process plugin packet monitor when\nthread list\n\
         breakpoint delete --force\nbreakpoint set -n bump -c 'k >= 100'\ncontinue\nthread list\nthread select 1\nthread select 2\nframe variable k\n\
         breakpoint delete --force\ncontinue\n",
    );
    in_order(
        &out,
        &[
            "stop reason = breakpoint 1.1",
            "bump(k=0) at debugme.c:14",
            "frame #1",
            "main",
            "(int) k = 0",
            "bump(k=1)",
            "(int) 0",
            "event ",
            "thread #1",
            "bump(k=100)",
            "thread #2",
            "(int) k = 100",
            "exited with status = 3",
        ],
    );
}

/// `kprobe replay LOG --gdb`: the server and the address it prints. (Its
/// stderr is drained by a thread: a closed pipe would end the server.)
fn gdb_server(dir: &Path, log: &Path) -> (std::process::Child, String) {
    let mut server = kprobe()
        .arg("replay")
        .arg(log)
        .arg("--gdb")
        .arg("--quiet")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // "waiting for a debugger on 127.0.0.1:PORT"
    let mut err = BufReader::new(server.stderr.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 {
        if let Some(a) = line.trim().strip_prefix("kprobe: replay of ").and_then(|l| l.split(" on ").nth(1)) {
            addr = Some(a.to_owned());
            break;
        }
        line.clear();
    }
    let addr = addr.expect("the server prints its address");
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    (server, addr)
}

#[test]
fn gdb_server_prints_its_address_and_serves_recorded_files() {
    let dir = tmp("server");
    let log = record_debugme(&dir, &["3"]);
    let (mut server, addr) = gdb_server(&dir, &log);
    // gdb's default sysroot (target:) reads the executable and libraries through the server.
    let mut c = Command::new("gdb");
    c.args([
        "-q",
        "-batch",
        "-ex",
        &format!("target remote {addr}"),
        "-ex",
        "break bump",
        "-ex",
        "continue",
        "-ex",
        "info sharedlibrary",
        "-ex",
        "kill",
    ]);
    let out = run(c, &dir);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    in_order(&text, &["from remote target", "Breakpoint 1, bump (k=k@entry=0)", "target:/", "libc.so.6"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server ends when gdb kills the replay");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal GDB remote-protocol client (acks on), for what batch-mode
/// gdb cannot do: interrupting a running continue.
struct Rsp {
    s: std::net::TcpStream,
}

impl Rsp {
    fn send(&mut self, body: &str) {
        use std::io::Write;
        let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        write!(self.s, "${body}#{sum:02x}").unwrap();
    }

    /// The next packet's body (acknowledged).
    fn recv(&mut self) -> String {
        use std::io::{Read, Write};
        let mut byte = [0u8; 1];
        let mut body = Vec::new();
        loop {
            self.s.read_exact(&mut byte).unwrap();
            if byte[0] == b'$' {
                break;
            }
        }
        loop {
            self.s.read_exact(&mut byte).unwrap();
            if byte[0] == b'#' {
                break;
            }
            body.push(byte[0]);
        }
        let mut sum = [0u8; 2];
        self.s.read_exact(&mut sum).unwrap();
        self.s.write_all(b"+").unwrap();
        // Run-length encoding: `X*n` repeats X (n - 29) more times.
        let mut out = Vec::new();
        let mut i = 0;
        while i < body.len() {
            if body[i] == b'*' && i + 1 < body.len() {
                let last = *out.last().unwrap();
                out.extend(std::iter::repeat_n(last, (body[i + 1] - 29) as usize));
                i += 2;
            } else {
                out.push(body[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[test]
fn ctrl_c_stops_a_running_continue() {
    let dir = tmp("interrupt");
    // Enough syscalls that continuing to the end takes a while.
    let log = dir.join("hotloop.kpl");
    let mut c = kprobe();
    c.arg("record").arg("-o").arg(&log).arg("--").arg(fixtures::c("hotloop")).args(["10", "300000"]);
    assert!(run(c, &dir).status.success());
    let mut server = kprobe()
        .arg("replay")
        .arg(&log)
        .arg("--gdb")
        .arg("--quiet")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "the server ended early");
        if let Some(a) = line.trim().strip_prefix("kprobe: replay of ").and_then(|l| l.split(" on ").nth(1)) {
            break a.to_owned();
        }
    };
    let mut rsp = Rsp { s: std::net::TcpStream::connect(&addr).unwrap() };
    rsp.send("?");
    assert!(rsp.recv().starts_with('T'));
    rsp.send("vCont;c");
    std::thread::sleep(Duration::from_millis(300));
    use std::io::Write;
    rsp.s.write_all(&[0x03]).unwrap();
    let stop = rsp.recv();
    assert!(stop.starts_with("T02"), "stopped with SIGINT: {stop}");
    // Stopped part-way: the replay is neither at its start nor at its end.
    let hex: String = "when".bytes().map(|b| format!("{b:02x}")).collect();
    rsp.send(&format!("qRcmd,{hex}"));
    let mut text = String::new();
    loop {
        let p = rsp.recv();
        if p == "OK" {
            break;
        }
        match p.strip_prefix('O') {
            Some(h) => text.extend((0..h.len() / 2).map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap() as char)),
            None => break,
        }
    }
    let n: u64 = text.split_whitespace().nth(1).and_then(|w| w.parse().ok()).expect(&text);
    let total: u64 = text.split_whitespace().nth(3).and_then(|w| w.parse().ok()).expect(&text);
    assert!(n > 100 && n < total, "{text}");
    rsp.send("k");
    let _ = server.wait();
}

#[test]
fn gdb_sees_recorded_signals_where_they_arrived() {
    let dir = tmp("signals");
    let log = dir.join("signals.kpl");
    let mut c = kprobe();
    c.arg("record").arg("-o").arg(&log).arg("--").arg(fixtures::c("signals"));
    let recorded = run(c, &dir);
    assert!(recorded.status.success(), "{}", String::from_utf8_lossy(&recorded.stderr));
    let out = debug(
        &dir,
        &log,
        "gdb",
        "handle SIGALRM stop print\ncontinue\nprint alarms\ncontinue\nprint alarms\n\
         handle SIGALRM nostop noprint\nhandle SIGCHLD stop print\ncontinue\nprint chld\ncontinue\n",
    );
    let at_chld = &out[out.find("Program received signal SIGCHLD").unwrap_or(0)..];
    assert!(at_chld.lines().nth(1).is_some_and(|l| l.contains("wait4") || l.contains("fork")), "{out}");
    in_order(
        &out,
        &[
            // Stopped as each alarm arrives, before its handler ran.
            "Program received signal SIGALRM",
            "in main () at c/signals.c:29",
            "$1 = 0",
            "Program received signal SIGALRM",
            "$2 = 1",
            // Passed through silently, then the child's SIGCHLD: in waitpid,
            // or already on the parent's way out of fork (as it was recorded).
            "Program received signal SIGCHLD",
            "$3 = 0",
            // The rest runs as recorded.
            &String::from_utf8_lossy(&recorded.stdout).lines().last().unwrap().to_owned(),
            "exited normally",
        ],
    );
}
