//! Helpers of the recorder's kernel tests: a sink that keeps events in
//! memory, a recorder running in a thread, C fixtures built with gcc.
#![allow(dead_code)]

use anyhow::Result;
use kpl::{Event, EventBody};
use recorder::sink::{EventMeta, Sink};
use recorder::{Config, Recorder, Summary};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Keeps every event (and its container id) in memory.
#[derive(Clone, Default)]
pub struct MemSink(pub Arc<Mutex<Vec<Event>>>);

impl Sink for MemSink {
    fn send(&mut self, ev: &Event, _meta: &EventMeta) -> Result<()> {
        self.0.lock().unwrap().push(ev.clone());
        Ok(())
    }
    fn finish(&mut self) -> Result<String> {
        Ok(format!("memory: {} events", self.0.lock().unwrap().len()))
    }
}

/// A recorder reading in a thread; programs are attached when `start` returns.
pub struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Summary>>,
    pub events: Arc<Mutex<Vec<Event>>>,
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the recorder's kernel tests need root (eBPF); run them as root (scripts/test.sh)");
}

pub fn start(cfg: Config) -> Running {
    require_root();
    let mut rec = Recorder::start(cfg).expect("starting the recorder");
    let sink = MemSink::default();
    let events = sink.0.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut sink = sink;
        rec.run(&mut sink, &|| s2.load(Ordering::Relaxed))
    });
    Running { stop, thread, events }
}

pub fn start_with_sink(cfg: Config, mut sink: Box<dyn Sink + Send>) -> (Arc<AtomicBool>, JoinHandle<Result<Summary>>) {
    require_root();
    let mut rec = Recorder::start(cfg).expect("starting the recorder");
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let thread = std::thread::spawn(move || rec.run(sink.as_mut(), &|| s2.load(Ordering::Relaxed)));
    (stop, thread)
}

impl Running {
    pub fn finish(self) -> (Summary, Vec<Event>) {
        self.stop.store(true, Ordering::Relaxed);
        let s = self.thread.join().expect("recorder thread panicked").expect("recorder run failed");
        let evs = std::mem::take(&mut *self.events.lock().unwrap());
        (s, evs)
    }
}

/// A fresh directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("kprobe-rec-test-").tempdir().unwrap()
}

/// Compiles C source into `dir/name` (the program's comm is `name`).
pub fn compile_c(dir: &Path, name: &str, src: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, src).unwrap();
    let out = dir.join(name);
    let st = Command::new("gcc").args(["-O1", "-o"]).arg(&out).arg(&c).status().expect("running gcc (scripts/setup.sh installs it)");
    assert!(st.success(), "gcc failed on {}", c.display());
    out
}

/// A short command name unique to this test run (at most 15 bytes).
pub fn unique_comm(prefix: &str) -> String {
    let n = format!("{prefix}{}", std::process::id() % 100000);
    n[..n.len().min(15)].to_owned()
}

pub fn syscalls_of(evs: &[Event], pid: u32) -> Vec<&kpl::event::Syscall> {
    evs.iter()
        .filter(|e| e.pid == pid)
        .filter_map(|e| match &e.body {
            EventBody::Syscall(s) => Some(s),
            _ => None,
        })
        .collect()
}
