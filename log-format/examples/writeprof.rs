//! CPU time of the writer's append loop on the synthetic mix (events made
//! first, so generation is not counted), in events per CPU-second of the
//! writing thread: what "writing N events/s on one core" means on a shared
//! machine, where wall time also counts other programs' turns.
//!
//!     cargo run --release -p log-format --example writeprof [EVENTS] [ROUNDS]

use std::time::Duration;

fn thread_cpu() -> Duration {
    let mut ts = std::mem::MaybeUninit::<[i64; 2]>::uninit();
    // SAFETY: clock_gettime writes a timespec (two longs on x86-64 Linux) into ts.
    let r = unsafe {
        clock_gettime(3 /* CLOCK_THREAD_CPUTIME_ID */, ts.as_mut_ptr())
    };
    assert_eq!(r, 0);
    // SAFETY: initialized by the successful call above.
    let [s, ns] = unsafe { ts.assume_init() };
    Duration::new(s as u64, ns as u32)
}

extern "C" {
    fn clock_gettime(clk: i32, ts: *mut [i64; 2]) -> i32;
}

fn main() {
    let n: usize = std::env::args().nth(1).map(|s| s.parse().expect("EVENTS is a number")).unwrap_or(2_000_000);
    let rounds: usize = std::env::args().nth(2).map(|s| s.parse().expect("ROUNDS is a number")).unwrap_or(3);
    let events: Vec<kpl::Event> = kpl::synth::Synth::new(1).take(n).collect();
    for round in 0..rounds {
        let evs = events.clone();
        let level = std::env::var("LEVEL").map(|v| v.parse().expect("LEVEL is a number")).unwrap_or(1);
        let opts = kpl::WriterOptions { level, ..Default::default() };
        let mut w = kpl::Writer::new(Vec::with_capacity(n * 20), "memory", &kpl::Metadata::default(), opts).unwrap();
        let t = thread_cpu();
        for ev in evs {
            w.append(ev).unwrap();
        }
        let (bytes, _) = w.finish().unwrap();
        let cpu = thread_cpu() - t;
        println!(
            "round {round}: {n} events, {:.2} bytes/event, {:.3} s CPU, {:.2} M events per CPU-second, {:.0} ns/event",
            bytes.len() as f64 / n as f64,
            cpu.as_secs_f64(),
            n as f64 / cpu.as_secs_f64() / 1e6,
            cpu.as_nanos() as f64 / n as f64
        );
    }
}
