//! Any bytes given to the reader: open, iterate, random access, payloads,
//! files, verify. Errors are fine; panics, hangs and huge allocations are not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = kpl::Reader::from_bytes(data.to_vec(), "fuzz.kpl") else { return };
    for ev in r.events().take(10_000) {
        if let Ok(ev) = ev {
            ev.data(|d| {
                let _ = r.payload(d);
            });
            let _ = kpl::json::event_to_json(&ev, None);
            let _ = kpl::text::describe(&ev);
        }
    }
    let _ = r.get(0);
    let _ = r.get(r.end_seq().saturating_sub(1));
    let _ = r.seek_ts(u64::MAX / 2);
    let tids: Vec<u32> = r.index().tids.iter().take(4).map(|t| t.0).collect();
    for t in tids {
        let _ = r.tid_events(t, 0).take(100).count();
    }
    let hashes: Vec<_> = r.index().files.iter().take(4).map(|f| f.hash).collect();
    for h in hashes {
        let _ = r.file(&h);
    }
    let _ = r.verify();
});
