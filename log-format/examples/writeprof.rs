//! CPU time of the writer's append loop on the synthetic mix (events made
//! first, so generation is not counted), in events per CPU-second of the
//! writing thread: what "writing N events/s on one core" means on a shared
//! machine, where wall time also counts other programs' turns.
//!
//!     [BY_REF=1] cargo run --release -p log-format --example writeprof [EVENTS] [ROUNDS]

use std::time::Duration;

/// CPU time (user + system) of this thread so far.
fn thread_cpu() -> Duration {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD).expect("getrusage of this thread");
    let us = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    us(u.user_time()) + us(u.system_time())
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
        // BY_REF=1: append_ref, the events freed after the timing (by their maker).
        let by_ref = std::env::var("BY_REF").is_ok_and(|v| v == "1");
        let t = thread_cpu();
        if by_ref {
            for ev in &evs {
                w.append_ref(ev).unwrap();
            }
        } else {
            for ev in evs {
                w.append(ev).unwrap();
            }
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
