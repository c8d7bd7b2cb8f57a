//! Any bytes as a log whose one events frame holds them as its raw block:
//! reaches the block decoder directly, past the checksums.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut log = kpl::format::encode_header(&kpl::Metadata::default());
    let count = data.first().copied().unwrap_or(0) as u64;
    log.extend(kpl::format::build_frame(kpl::format::FrameKind::Events, 0, count, data, 1));
    let Ok(r) = kpl::Reader::from_bytes(log, "fuzz.kpl") else { return };
    for ev in r.events() {
        if let Ok(ev) = ev {
            let _ = kpl::json::event_to_json(&ev, None);
        }
    }
});
