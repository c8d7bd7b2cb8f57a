//! Every event kind survives writing and reading, through every access path.

mod common;

use common::*;
use kpl::event::*;
use kpl::{Event, EventBody, Kind, Reader, Writer, WriterOptions};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any sequence of events round-trips (small blocks: many block boundaries).
    #[test]
    fn events_round_trip(events in prop::collection::vec(event(), 1..120)) {
        let bytes = write_log(&events, small_blocks());
        let r = Reader::from_bytes(bytes, "t.kpl").unwrap();
        prop_assert!(r.recovery().is_none());
        let back: Vec<Event> = r.events().map(|e| e.unwrap()).collect();
        prop_assert_eq!(back.len(), events.len());
        for (i, (a, b)) in events.iter().zip(back).enumerate() {
            let mut want = a.clone();
            want.seq = i as u64;
            prop_assert_eq!(&resolved(&r, b.clone()), &want);
            // Random access agrees with the scan.
            prop_assert_eq!(r.get(i as u64).unwrap(), b);
        }
        prop_assert_eq!(r.meta(), &meta());
    }

    /// With the default options too (one block, inline and stored payloads).
    #[test]
    fn events_round_trip_default_blocks(events in prop::collection::vec(event(), 1..60)) {
        let bytes = write_log(&events, WriterOptions::default());
        let r = Reader::from_bytes(bytes, "t.kpl").unwrap();
        let back: Vec<Event> = r.events().map(|e| resolved(&r, e.unwrap())).collect();
        for (i, (a, b)) in events.iter().zip(&back).enumerate() {
            let mut want = a.clone();
            want.seq = i as u64;
            prop_assert_eq!(b, &want);
        }
    }

    /// Without a footer, the rebuilt index equals the written one.
    #[test]
    fn rebuilt_index_matches_footer(events in prop::collection::vec(event(), 1..150)) {
        let bytes = write_log(&events, small_blocks());
        let full = Reader::from_bytes(bytes.clone(), "t.kpl").unwrap();
        // Cut off the footer and trailer: the state after a crash right before finish().
        let footer_at = full.index().blocks.iter().map(|b| b.offset + b.frame_len as u64)
            .chain(full.index().payload.iter().map(|p| p.offset + p.frame_len as u64))
            .max().unwrap() as usize;
        let cut = Reader::from_bytes(bytes[..footer_at].to_vec(), "t.kpl").unwrap();
        prop_assert!(cut.recovery().is_some());
        prop_assert!(cut.recovery().unwrap().problems.is_empty(), "{:?}", cut.recovery());
        let (a, b) = (full.index(), cut.index());
        prop_assert_eq!(&a.blocks, &b.blocks);
        prop_assert_eq!(&a.payload, &b.payload);
        prop_assert_eq!(&a.tids, &b.tids);
        prop_assert_eq!(&a.txns, &b.txns);
        prop_assert_eq!(&a.counts, &b.counts);
        prop_assert_eq!(a.events, b.events);
    }
}

fn note(i: u64) -> Event {
    Event::new(1000 + i * 10, 7, 7 + (i % 3) as u32, 0, EventBody::Note(Note { topic: "t".into(), text: format!("note {i}") }))
}

#[test]
fn seek_by_seq_time_tid_and_txn() {
    let mut evs: Vec<Event> = (0..5000).map(note).collect();
    for i in (0..5000).step_by(500) {
        evs[i] = Event::new(
            1000 + i as u64 * 10,
            7,
            7,
            0,
            EventBody::Span(SpanRef {
                trace_id: [1; 16],
                span_id: [2; 8],
                parent_span_id: [0; 8],
                name: "pay".into(),
                service: "gw".into(),
                txn: format!("txn-{}", i % 1000),
                start_ns: 0,
                end_ns: 1,
                status: 1,
            }),
        );
    }
    let r = Reader::from_bytes(write_log(&evs, small_blocks()), "t.kpl").unwrap();
    assert!(r.index().blocks.len() > 20, "small blocks give many blocks");
    for s in [0u64, 1, 777, 2500, 4999] {
        assert_eq!(r.get(s).unwrap().seq, s);
        assert_eq!(r.events_from(s).next().unwrap().unwrap().seq, s);
    }
    assert!(r.get(5000).is_err());
    assert_eq!(r.seek_ts(0).unwrap(), Some(0));
    assert_eq!(r.seek_ts(1000 + 1234 * 10).unwrap(), Some(1234));
    assert_eq!(r.seek_ts(1000 + 1234 * 10 - 3).unwrap(), Some(1234));
    assert_eq!(r.seek_ts(u64::MAX).unwrap(), None);
    let t8: Vec<u64> = r.tid_events(8, 100).map(|e| e.unwrap().seq).collect();
    assert!(t8.iter().all(|s| s % 3 == 1 && *s >= 100));
    assert_eq!(t8.len(), (100..5000).filter(|s| s % 3 == 1 && s % 500 != 0).count());
    assert_eq!(r.txn_seqs("txn-0"), &[0, 1000, 2000, 3000, 4000]);
    assert_eq!(r.txn_seqs("txn-500"), &[500, 1500, 2500, 3500, 4500]);
    assert!(r.txn_seqs("nope").is_empty());
    assert_eq!(r.index().count(Kind::Span), 10);
    assert_eq!(r.index().count(Kind::Note), 4990);
}

#[test]
fn payload_spanning_blocks_and_file_store() {
    let dir = tempdir();
    let path = dir.join("p.kpl");
    let opts = WriterOptions { payload_block_size: 1000, file_chunk: 777, ..WriterOptions::default() };
    let mut w = Writer::create_with(&path, &meta(), opts).unwrap();
    let big: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file: Vec<u8> = (0..5000u32).map(|i| (i % 13) as u8).collect();
    let h = w.store_file(&file).unwrap();
    assert_eq!(w.store_file(&file).unwrap(), h, "stored once per content");
    let sc = Syscall {
        nr: 0,
        args: [3, 0x1000, 10_000, 0, 0, 0],
        ret: 10_000,
        duration_ns: 5,
        writes: vec![MemWrite { addr: 0x1000, data: Data::Bytes(big.clone()) }],
        fd_type: FdType::File,
        flags: 0,
    };
    w.append(Event::new(1, 1, 1, 0, EventBody::Syscall(sc))).unwrap();
    w.finish().unwrap();
    let r = Reader::open(&path).unwrap();
    let ev = r.get(0).unwrap();
    let EventBody::Syscall(s) = &ev.body else { panic!() };
    assert!(matches!(s.writes[0].data, Data::Stored { .. }), "large buffers are stored apart");
    assert!(r.index().payload.len() >= 10, "payload split in frames");
    assert_eq!(r.payload(&s.writes[0].data).unwrap().as_ref(), &big[..]);
    assert_eq!(r.file(&h).unwrap(), file);
    assert_eq!(r.index().files[0].chunks.len(), 7);
    assert!(r.file(&FileHash([9; 32])).is_err());
    let red = Data::Redacted { len: 5, hash: None, rule: "path:/etc/secret".into() };
    let e = r.payload(&red).unwrap_err().to_string();
    assert!(e.contains("redacted") && e.contains("/etc/secret"), "{e}");
    assert!(r.verify().is_sound());
}

#[test]
fn unknown_kinds_are_skipped_and_counted() {
    // A block where two events carry kind ids from a future version.
    let evs: Vec<Event> = (0..6)
        .map(|i| {
            let mut e = note(i);
            e.seq = i;
            e
        })
        .collect();
    let raw = kpl::block::encode_with_raw_kind(&[
        (23, evs[0].clone()),
        (999, evs[1].clone()),
        (23, evs[2].clone()),
        (4000, evs[3].clone()),
        (23, evs[4].clone()),
        (23, evs[5].clone()),
    ]);
    let mut bytes = kpl::format::encode_header(&meta());
    bytes.extend(kpl::format::build_frame(kpl::format::FrameKind::Events, 0, 6, &raw, 1));
    let r = Reader::from_bytes(bytes, "future.kpl").unwrap();
    let seqs: Vec<u64> = r.events().map(|e| e.unwrap().seq).collect();
    assert_eq!(seqs, vec![0, 2, 4, 5]);
    assert_eq!(r.skipped_unknown(), 2);
    assert_eq!(r.event_count(), 6);
    let err = r.get(1).unwrap_err().to_string();
    assert!(err.contains("kind this reader does not know"), "{err}");
}

#[test]
fn writer_dropped_without_finish_leaves_a_readable_log() {
    let dir = tempdir();
    let path = dir.join("crash.kpl");
    {
        let mut w = Writer::create_with(&path, &meta(), small_blocks()).unwrap();
        for i in 0..1000 {
            w.append(note(i)).unwrap();
        }
        // Dropped here, as on an error path: buffered events are written, no footer.
    }
    let r = Reader::open(&path).unwrap();
    assert!(r.recovery().is_some());
    assert_eq!(r.events().count(), 1000);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kpl-test-{}-{}", std::process::id(), rand::random::<u64>()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A log written by format 1.0 (the release before the column and payload
/// codecs of format 2): every event, payload and file reads back.
#[test]
fn format_1_logs_still_read() {
    old_log_reads("v1.0.kpl", (1, 0));
}

/// A log written by format 2.0 (before template line references): every
/// event, payload and file reads back.
#[test]
fn format_2_0_logs_still_read() {
    old_log_reads("v2.0.kpl", (2, 0));
}

/// A log written by format 2.1 (before cross-frame payload dictionaries):
/// every event, payload and file reads back.
#[test]
fn format_2_1_logs_still_read() {
    old_log_reads("v2.1.kpl", (2, 1));
}

fn old_log_reads(name: &str, version: (u16, u16)) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    let r = Reader::open(&path).unwrap();
    assert_eq!(r.version(), version);
    assert!(r.recovery().is_none(), "the footer of a 1.0 log is read");
    assert!(
        r.index().blocks.len() > 3 && r.index().payload.len() > 3,
        "several blocks and payload frames: {} and {}",
        r.index().blocks.len(),
        r.index().payload.len()
    );
    let want: Vec<Event> = kpl::synth::Synth::new(7).take(3000).collect();
    let mut n = 0;
    for (e, mut w) in r.events().zip(want) {
        w.seq = n;
        assert_eq!(resolved(&r, e.unwrap()), w, "event {n}");
        n += 1;
    }
    assert_eq!(n, 3000);
    let file: Vec<u8> = (0..10000u32).flat_map(|i| i.to_le_bytes()).collect();
    assert_eq!(r.file(&kpl::FileHash::of(&file)).unwrap(), file);
    assert_eq!(r.index().summary.exit_code, Some(3));
    assert!(r.verify().is_sound());
    // Seeks use the 1.0 block model too.
    assert_eq!(r.get(2345).unwrap().seq, 2345);
}

/// Logs of this version say so; a reader names versions it cannot read.
#[test]
fn format_version_is_2_and_others_are_named() {
    let bytes = write_log(&[note(1)], small_blocks());
    assert_eq!(Reader::from_bytes(bytes.clone(), "v2.kpl").unwrap().version(), (2, 2));
    let mut b = bytes;
    b[8] = 3;
    let e = Reader::from_bytes(b, "v3.kpl").err().expect("version 3 is not readable").to_string();
    assert!(e.contains("v3.kpl") && e.contains("format version 3.2") && e.contains("1.x to 2.x"), "{e}");
}

/// Seeks decode a block only up to the event they look for; whatever is
/// read after them (the rest of that block, later blocks, the cache) is
/// still every event, in order.
#[test]
fn seeks_that_decode_part_of_a_block_then_read_on() {
    let evs: Vec<Event> = kpl::synth::Synth::new(3)
        .take(20_000)
        .enumerate()
        .map(|(i, mut e)| {
            e.seq = i as u64;
            e
        })
        .collect();
    let r = Reader::from_bytes(write_log(&evs, WriterOptions { block_size: 8 << 10, ..Default::default() }), "s.kpl").unwrap();
    assert!(r.index().blocks.len() > 10);
    let strip = |e: Event| resolved(&r, e);
    let want = evs;
    for s in [0u64, 5, 1234, 7777, 15_000, 19_999] {
        // A get in the middle of a block, then the events after it from the cache and beyond.
        assert_eq!(strip(r.get(s).unwrap()), want[s as usize]);
        assert_eq!(strip(r.get(s + 1).unwrap_or_else(|_| r.get(s).unwrap())).seq, (s + 1).min(19_999));
        let from: Vec<Event> = r.events_from(s).take(3000).map(|e| strip(e.unwrap())).collect();
        assert_eq!(from, want[s as usize..(s as usize + 3000).min(20_000)]);
        for tid in [4107, 5204, 6300] {
            let got: Vec<u64> = r.tid_events(tid, s).map(|e| e.unwrap().seq).collect();
            let exp: Vec<u64> = want.iter().filter(|e| e.tid == tid && e.seq >= s).map(|e| e.seq).collect();
            assert_eq!(got, exp, "thread {tid} from {s}");
        }
        let ts = want[s as usize].ts_ns;
        let first = want.iter().find(|e| e.ts_ns >= ts).unwrap().seq;
        assert_eq!(r.seek_ts(ts).unwrap(), Some(first));
    }
    let all: Vec<Event> = r.events().map(|e| strip(e.unwrap())).collect();
    assert_eq!(all, want);
}

/// Reading a log event by event with `get` (as replay does) decodes each
/// block at most twice: once up to the first event asked for, then whole.
#[test]
fn get_event_by_event_reads_every_event() {
    let evs: Vec<Event> = (0..3000).map(note).collect();
    let r = Reader::from_bytes(write_log(&evs, small_blocks()), "g.kpl").unwrap();
    assert!(r.index().blocks.len() > 10);
    for s in 0..3000u64 {
        assert_eq!(r.get(s).unwrap().seq, s);
    }
    for s in (0..3000u64).rev() {
        assert_eq!(r.get(s).unwrap().seq, s);
    }
}

/// `append_ref` leaves the caller's event as it was and writes the same
/// log as `append` (same blocks and payload frames).
#[test]
fn append_by_reference_writes_what_append_writes() {
    let events: Vec<Event> = kpl::synth::Synth::new(3).take(4000).collect();
    let by_value = write_log(&events, small_blocks());
    let mut w = Writer::new(Vec::new(), "ref.kpl", &meta(), small_blocks()).unwrap();
    for e in &events {
        w.append_ref(e).unwrap();
    }
    let (by_ref, _) = w.finish().unwrap();
    assert_eq!(events, kpl::synth::Synth::new(3).take(4000).collect::<Vec<_>>(), "events untouched");
    let (a, b) = (Reader::from_bytes(by_value, "a").unwrap(), Reader::from_bytes(by_ref, "b").unwrap());
    assert_eq!(a.index().blocks, b.index().blocks);
    assert_eq!(a.index().payload, b.index().payload);
    for (x, y) in a.events().zip(b.events()) {
        assert_eq!(resolved(&a, x.unwrap()), resolved(&b, y.unwrap()));
    }
}
