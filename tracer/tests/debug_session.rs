//! The debugging session API on a real replay: breakpoints, steps,
//! backwards execution, watchpoints.

use object::{Object, ObjectSymbol};
use std::path::PathBuf;
use tracer::debug::{Session, Stopped};

/// Load address of a PIE with address randomisation off.
const PIE_BASE: u64 = 0x5555_5555_4000;

fn sym(bin: &std::path::Path, name: &str) -> u64 {
    let data = std::fs::read(bin).unwrap();
    let f = object::File::parse(&*data).unwrap();
    let s = f.symbols().find(|s| s.name() == Ok(name)).unwrap_or_else(|| panic!("symbol {name}"));
    PIE_BASE + s.address()
}

fn record(name: &str, args: &[&str]) -> (PathBuf, PathBuf) {
    let bin = fixtures::c("debugme");
    let dir = std::env::temp_dir().join(format!("kprobe-dbg-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("d.kpl");
    let mut argv = vec![bin.display().to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let out = tracer::record(&tracer::RecordOptions {
        output: log.clone(),
        argv,
        time_slice: std::time::Duration::from_millis(20),
        cpuid: Default::default(),
        pin: Some(None),
        emulate: true,
    })
    .unwrap();
    assert_eq!(out.exit_code, 3);
    (log, bin)
}

fn counter(s: &Session, tid: u32, addr: u64) -> i32 {
    i32::from_le_bytes(s.read(tid, addr, 4).unwrap().try_into().unwrap())
}

#[test]
fn breakpoints_steps_and_going_back() {
    let (log, bin) = record("bp", &["6"]);
    let bump = sym(&bin, "bump");
    let counter_addr = sym(&bin, "counter");
    let mut s = Session::new(log).unwrap();
    let main_tid = s.current_thread().unwrap();
    assert!(s.add_breakpoint(bump));
    // Forward through the first three calls.
    let mut seen = Vec::new();
    for _ in 0..3 {
        match s.cont().unwrap() {
            Stopped::Breakpoint(t) => {
                assert_eq!(s.regs(t).unwrap().rip, bump);
                seen.push((s.point().unwrap(), counter(&s, t, counter_addr)));
            }
            other => panic!("expected a breakpoint, got {other:?}"),
        }
    }
    assert_eq!(seen.iter().map(|x| x.1).collect::<Vec<_>>(), vec![0, 0, 1], "counter before bump(0), bump(1), bump(2)");
    // Step into bump: a few instructions later counter changes.
    let t = main_tid;
    let rip0 = s.regs(t).unwrap().rip;
    s.step(t).unwrap();
    assert_ne!(s.regs(t).unwrap().rip, rip0);
    // Back one instruction: at the breakpoint again.
    s.reverse_step(t).unwrap();
    assert_eq!(s.regs(t).unwrap().rip, rip0);
    // reverse-continue: the previous call of bump, then the one before.
    assert_eq!(s.reverse_cont().unwrap(), Stopped::Breakpoint(t));
    assert_eq!(counter(&s, t, counter_addr), 0, "at bump(1)");
    assert_eq!(s.point().unwrap(), seen[1].0);
    assert_eq!(s.reverse_cont().unwrap(), Stopped::Breakpoint(t));
    assert_eq!(s.point().unwrap(), seen[0].0);
    // Before the first call: back to the beginning.
    assert!(matches!(s.reverse_cont().unwrap(), Stopped::Beginning(_)));
    // And forward again to the same place.
    assert_eq!(s.cont().unwrap(), Stopped::Breakpoint(t));
    assert_eq!(s.point().unwrap(), seen[0].0);
    // To the end: the thread's calls too, then exit.
    s.remove_breakpoint(bump);
    assert_eq!(s.cont().unwrap(), Stopped::Exited(3));
}

#[test]
fn watchpoint_forward_and_backward() {
    let (log, bin) = record("watch", &["5"]);
    let bump = sym(&bin, "bump");
    let counter_addr = sym(&bin, "counter");
    let mut s = Session::new(log).unwrap();
    s.add_breakpoint(bump);
    // The third call (bump(2)): counter is 1 before it.
    for _ in 0..3 {
        assert!(matches!(s.cont().unwrap(), Stopped::Breakpoint(_)));
    }
    let t = s.current_thread().unwrap();
    assert_eq!(counter(&s, t, counter_addr), 1);
    s.remove_breakpoint(bump);
    s.add_watch(counter_addr, 4);
    // Forward: bump(2) writes 3.
    let st = s.cont().unwrap();
    assert!(matches!(st, Stopped::Watch { addr, .. } if addr == counter_addr), "{st:?}");
    assert_eq!(counter(&s, t, counter_addr), 3);
    let after_write = s.regs(t).unwrap().rip;
    assert!(after_write > bump && after_write < bump + 64, "stopped inside bump, after the store");
    // Backward, as gdb expects: to just before the write that made it 3.
    let st = s.reverse_cont().unwrap();
    assert!(matches!(st, Stopped::Watch { .. }), "{st:?}");
    assert_eq!(counter(&s, t, counter_addr), 1, "the write is undone");
    let store = s.regs(t).unwrap().rip;
    assert!(store < after_write && store >= bump, "at the store instruction");
    // Again backward: before the write in bump(1) (0 -> 1), at the same instruction.
    let st = s.reverse_cont().unwrap();
    assert!(matches!(st, Stopped::Watch { .. }), "{st:?}");
    assert_eq!(counter(&s, t, counter_addr), 0);
    assert_eq!(s.regs(t).unwrap().rip, store);
    // One step forward redoes it.
    s.step(t).unwrap();
    assert_eq!(counter(&s, t, counter_addr), 1);
    assert_eq!(s.regs(t).unwrap().rip, after_write);
}
