//! Random seeks by sequence number in an existing log, for profiling the
//! seek path (`perf record ... seekprof FILE [SEEKS]`); prints the mean.
//!
//!     cargo run --release -p log-format --example seekprof /var/tmp/bench10m.kpl 2000

fn main() {
    let path = std::env::args().nth(1).unwrap();
    let n: usize = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(2000);
    let r = kpl::Reader::open(&path).unwrap();
    let total = r.index().events;
    let mut x: u64 = 12345;
    let t = std::time::Instant::now();
    for _ in 0..n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let s = (x >> 33) % total;
        let ev = r.get(s).unwrap();
        assert_eq!(ev.seq, s);
    }
    println!("{} seeks, {:.0} us each", n, t.elapsed().as_secs_f64() * 1e6 / n as f64);
}
