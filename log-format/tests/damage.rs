//! Truncated and corrupted logs: clear errors, never a panic, never wrong data,
//! and a crash loses at most the block being written.

mod common;

use common::*;
use kpl::{Event, Reader};
use rand::{Rng, SeedableRng};

fn small_log() -> (Vec<Event>, Vec<u8>) {
    let events: Vec<Event> = kpl::synth::Synth::new(7).take(400).collect();
    let mut opts = small_blocks();
    opts.block_size = 1024;
    let bytes = write_log(&events, opts);
    (
        events
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                e.seq = i as u64;
                e
            })
            .collect(),
        bytes,
    )
}

/// Events in frames that lie entirely within the first `cut` bytes.
fn complete_events(full: &Reader, cut: u64) -> u64 {
    full.index().blocks.iter().filter(|b| b.offset + b.frame_len as u64 <= cut).map(|b| b.count as u64).sum()
}

fn check_prefix(events: &[Event], r: &Reader, at_least: u64, what: &str) {
    let mut n = 0u64;
    for e in r.events() {
        let e = e.unwrap_or_else(|e| panic!("{what}: a cut log reads without errors, got {e}"));
        assert_eq!(e.seq, n, "{what}: events form a prefix");
        assert_eq!(resolved(r, e), events[n as usize], "{what}: event {n} intact");
        n += 1;
    }
    assert!(n >= at_least, "{what}: {n} events recovered, {at_least} were in complete blocks");
}

#[test]
fn truncation_at_every_offset_of_a_small_file() {
    let (events, bytes) = small_log();
    let full = Reader::from_bytes(bytes.clone(), "full.kpl").unwrap();
    assert!(full.index().blocks.len() >= 5, "several blocks");
    let header_len = kpl::format::encode_header(&meta()).len();
    for cut in 0..bytes.len() {
        let what = format!("cut at {cut} of {}", bytes.len());
        match Reader::from_bytes(bytes[..cut].to_vec(), "cut.kpl") {
            Err(e) => {
                assert!(cut < header_len, "{what}: only a cut header fails to open: {e}");
                let msg = e.to_string();
                assert!(msg.contains("cut.kpl") && msg.contains("header"), "{what}: {msg}");
            }
            Ok(r) => {
                assert!(r.recovery().is_some(), "{what}: no footer → index rebuilt");
                check_prefix(&events, &r, complete_events(&full, cut as u64), &what);
                let v = r.verify();
                assert!(!v.is_sound(), "{what}: verify flags a cut log");
                assert_eq!(v.events_ok, r.event_count());
            }
        }
    }
}

#[test]
fn truncation_at_random_offsets_of_a_large_file() {
    let events: Vec<Event> = kpl::synth::Synth::new(11)
        .take(200_000)
        .enumerate()
        .map(|(i, mut e)| {
            e.seq = i as u64;
            e
        })
        .collect();
    let bytes = write_log(&events, kpl::WriterOptions::default());
    let full = Reader::from_bytes(bytes.clone(), "full.kpl").unwrap();
    assert!(full.index().blocks.len() > 30);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..25 {
        let cut = rng.gen_range(100..bytes.len());
        let r = Reader::from_bytes(bytes[..cut].to_vec(), "big.kpl").unwrap();
        let want = complete_events(&full, cut as u64);
        // Loses at most the block being written.
        let lost = events.len() as u64 - r.event_count();
        let next_block =
            full.index().blocks.iter().find(|b| b.offset + b.frame_len as u64 > cut as u64).map(|b| b.count as u64).unwrap_or(0);
        assert!(r.event_count() >= want && lost <= next_block + (events.len() as u64 - want - next_block), "cut {cut}");
        let mut n = 0;
        for e in r.events() {
            let e = e.unwrap();
            assert_eq!(resolved(&r, e.clone()), events[n as usize]);
            n += 1;
        }
        assert_eq!(n, r.event_count());
    }
}

#[test]
fn every_bit_flip_is_detected_and_named() {
    let (events, bytes) = small_log();
    let full = Reader::from_bytes(bytes.clone(), "full.kpl").unwrap();
    let frames: Vec<(u64, u64)> = full
        .index()
        .blocks
        .iter()
        .map(|b| (b.offset, b.frame_len as u64))
        .chain(full.index().payload.iter().map(|p| (p.offset, p.frame_len as u64)))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    // Every byte of the file, one random bit each.
    for pos in 0..bytes.len() {
        let mut b = bytes.clone();
        b[pos] ^= 1 << rng.gen_range(0..8);
        let what = format!("bit flip at byte {pos}");
        let r = match Reader::from_bytes(b, "flip.kpl") {
            Err(e) => {
                assert!(e.to_string().contains("flip.kpl"), "{what}: {e}");
                continue;
            }
            Ok(r) => r,
        };
        // Whatever reads back is exactly what was written.
        for e in r.events() {
            match e {
                Ok(e) => {
                    let s = e.seq as usize;
                    match try_resolved(&r, e) {
                        Ok(p) => assert_eq!(p, events[s], "{what}: event {s} silently changed"),
                        Err(e) => assert!(e.to_string().contains("flip.kpl"), "{what}: {e}"),
                    }
                }
                Err(e) => {
                    let m = e.to_string();
                    assert!(m.contains("byte offset"), "{what}: error names the offset: {m}");
                }
            }
        }
        let v = r.verify();
        assert!(!v.is_sound(), "{what}: verify detects it");
        // A flip inside an events or payload frame is reported at that frame.
        if let Some((off, len)) = frames.iter().find(|(o, l)| (*o..o + l).contains(&(pos as u64))) {
            assert!(
                v.problems.iter().any(|p| p.offset == *off
                    || (p.offset <= pos as u64 && (pos as u64) < p.offset + p.len.max(1))
                    || p.offset == off + len),
                "{what}: problem at frame {off}: {:?}",
                v.problems
            );
        }
    }
}

#[test]
fn garbage_and_wrong_files_give_clear_errors() {
    for (bytes, want) in [
        (vec![], "shorter than a header"),
        (b"hello world, this is not a log at all".to_vec(), "not a kprobe log"),
        (
            {
                let mut h = kpl::format::encode_header(&meta());
                h[8] = 9;
                h
            },
            "version 9",
        ),
        (
            {
                let mut h = kpl::format::encode_header(&meta());
                let n = h.len();
                h[n - 6] ^= 0xff;
                h
            },
            "checksum",
        ),
    ] {
        let e = Reader::from_bytes(bytes, "x.kpl").err().expect("must fail").to_string();
        assert!(e.contains(want) && e.contains("x.kpl"), "{e}");
    }
}

/// Found by the `reader` fuzz target: an index whose payload pieces
/// overlap made `payload` slice past the end of a piece. Now an error.
#[test]
fn overlapping_payload_pieces_are_an_error() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-overlapping-payload.kpl");
    let Ok(r) = Reader::open(&path) else { return };
    for ev in r.events().flatten() {
        ev.data(|d| {
            if let Err(e) = r.payload(d) {
                assert!(e.to_string().contains("fuzz-overlapping-payload.kpl"), "{e}");
            }
        });
    }
    let _ = r.verify();
}

/// A damaged payload frame inside a dictionary group (format 2.2) costs
/// the rest of its group and nothing else: `verify` names the damaged
/// frame and each frame that depended on it, with byte offsets and the
/// payload bytes lost; buffers of the other groups and every event read.
#[test]
fn a_damaged_payload_frame_costs_the_rest_of_its_group() {
    let events: Vec<Event> = kpl::synth::Synth::new(9).take(3000).collect();
    let bytes = write_log(&events, small_blocks());
    let r = Reader::from_bytes(bytes.clone(), "g.kpl").unwrap();
    let pays = r.index().payload.clone();
    assert!(pays.len() > 40, "{} payload frames", pays.len());
    // Frame headers give the position in the group (b, bytes 24..32).
    let pos = |p: &kpl::index::PayloadInfo| u64::from_le_bytes(bytes[p.offset as usize + 24..][..8].try_into().unwrap());
    let g = kpl::payload::GROUP_FRAMES as usize;
    assert_eq!(
        (0..pays.len()).map(|i| pos(&pays[i])).collect::<Vec<_>>()[..g + 1],
        (0..=g as u64).map(|i| i % g as u64).collect::<Vec<_>>()
    );
    // Damage the body of frame 3 of the second group.
    let hit = &pays[g + 3];
    let mut bad = bytes.clone();
    bad[hit.offset as usize + kpl::format::FRAME_HEADER_LEN + 5] ^= 0x10;
    let r = Reader::from_bytes(bad.clone(), "g.kpl").unwrap();
    let v = r.verify();
    assert!(!v.is_sound());
    let lost: Vec<&kpl::Problem> = v.problems.iter().filter(|p| p.offset >= hit.offset && p.offset < pays[2 * g].offset).collect();
    assert_eq!(lost.len(), g - 3, "{:#?}", v.problems);
    assert!(lost[0].what.contains("checksum"), "{}", lost[0]);
    for (k, p) in lost[1..].iter().enumerate() {
        let q = &pays[g + 4 + k];
        assert_eq!(p.offset, q.offset);
        assert!(p.what.contains(&format!("earlier frame at byte offset {}", hit.offset)), "{p}");
        assert!(p.lost.contains(&format!("payload bytes {}..{}", q.start, q.start + q.len as u64)), "{p}");
    }
    // Besides them, only the footer (which lists the lost frames) is reported.
    assert!(
        v.problems.iter().all(|p| (p.offset >= hit.offset && p.offset < pays[2 * g].offset) || p.what.contains("footer index")),
        "{:#?}",
        v.problems
    );
    // Every event reads; a buffer stored in the lost frames is an error naming the damage; others read.
    let (mut ok, mut missing) = (0, 0);
    for (e, want) in r.events().zip(&events) {
        let e = e.unwrap();
        let mut stored_at = None;
        e.clone().data_mut(|d| {
            if let kpl::Data::Stored { offset, len } = d {
                stored_at = Some((*offset, *offset + *len as u64));
            }
        });
        match try_resolved(&r, e) {
            Ok(mut got) => {
                got.seq = 0;
                let mut w = want.clone();
                w.seq = 0;
                assert_eq!(got, w);
                ok += stored_at.is_some() as u32;
            }
            Err(err) => {
                let (at, end) = stored_at.expect("only stored buffers fail");
                assert!(end > hit.start && at < pays[2 * g].start, "buffer at {at}..{end} lost");
                let err = err.to_string();
                assert!(err.contains("byte offset") && (err.contains("checksum") || err.contains("dictionary group")), "{err}");
                missing += 1;
            }
        }
    }
    assert!(missing > 0 && ok > missing, "{ok} buffers read, {missing} lost");
    // Without the footer (a rebuilt index), the same frames are reported.
    let cut = &bad[..bad.len() - kpl::format::TRAILER_LEN];
    let r = Reader::from_bytes(cut.to_vec(), "g.kpl").unwrap();
    let n = r.recovery().unwrap().problems.iter().filter(|p| p.offset >= hit.offset && p.offset < pays[2 * g].offset).count();
    assert_eq!(n, g - 3);
}
