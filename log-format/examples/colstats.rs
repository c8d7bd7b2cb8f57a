//! Where the bytes of a `.kpl` go on the synthetic mix: per event column
//! and per payload stream, in bytes per event.
//!
//!     cargo run --release -p log-format --example colstats [EVENTS]
//!
//! `LANES=1` splits the payload streams by lane (lanes are numbered in the
//! order a frame first meets them).

use integer_encoding::VarInt;
use std::collections::BTreeMap;

const FIXED: [&str; 10] = ["kinds", "ts", "ids", "sc.nr", "sc.args", "sc.ret", "sc.dur", "sc.misc", "sc.waddr", "sc.wdata"];

fn varint(b: &[u8], at: &mut usize) -> u64 {
    let (v, n) = u64::decode_var(&b[*at..]).expect("a varint in a frame this program wrote");
    *at += n;
    v
}

fn main() {
    let n: u64 = std::env::args().nth(1).map(|s| s.parse().expect("EVENTS is a number")).unwrap_or(1_000_000);
    let block_size = std::env::var("BLOCK").map(|v| v.parse().expect("BLOCK is a number")).unwrap_or(64 << 10);
    let opts = kpl::WriterOptions { block_size, ..Default::default() };
    let mut w = kpl::Writer::new(Vec::new(), "memory", &kpl::Metadata::default(), opts).unwrap();
    for ev in kpl::synth::Synth::new(1).take(n as usize) {
        w.append(ev).unwrap();
    }
    let (bytes, _) = w.finish().unwrap();
    let r = kpl::Reader::from_bytes(bytes.clone(), "memory").unwrap();
    let h = kpl::format::FRAME_HEADER_LEN;
    // (raw, stored) bytes per column / stream.
    let mut cols: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for b in &r.index().blocks {
        let body = &bytes[b.offset as usize + h..(b.offset + b.frame_len as u64) as usize];
        let mut at = 0;
        varint(body, &mut at);
        for _ in 0..varint(body, &mut at) {
            let id = varint(body, &mut at) as usize;
            at += 1;
            let name = match id {
                0..=9 => FIXED[id].to_owned(),
                k => kpl::Kind::from_id((k - 256) as u16).map(|k| format!("{} bodies", k.name())).unwrap_or(format!("column {k}")),
            };
            let e = cols.entry(format!("events: {name}")).or_default();
            e.0 += varint(body, &mut at);
            e.1 += varint(body, &mut at);
        }
    }
    for p in &r.index().payload {
        let body = &bytes[p.offset as usize + h..(p.offset + p.frame_len as u64) as usize];
        let mut at = 1;
        for k in 0..1 + 5 * body[0] as usize {
            at += 1;
            let name = if k == 0 { "pieces" } else { ["raw", "template", "numbers", "wide", "long"][(k - 1) % 5] };
            let lane = if k == 0 || std::env::var_os("LANES").is_none() { String::new() } else { format!("lane {} ", (k - 1) / 5) };
            let e = cols.entry(format!("payload: {lane}{name}")).or_default();
            e.0 += varint(body, &mut at);
            e.1 += varint(body, &mut at);
        }
    }
    let per = |v: u64| v as f64 / n as f64;
    let ev: u64 = r.index().blocks.iter().map(|b| b.frame_len as u64).sum();
    let pl: u64 = r.index().payload.iter().map(|b| b.frame_len as u64).sum();
    println!("{n} events: {:.2} bytes/event: event frames {:.2}, payload frames {:.2}", per(bytes.len() as u64), per(ev), per(pl));
    for (name, (raw, stored)) in cols {
        println!("{name:28} raw {:6.2}  stored {:6.2} bytes/event", per(raw), per(stored));
    }
}
