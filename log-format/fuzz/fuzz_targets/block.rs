//! Any bytes as a log whose one events frame holds them: as the raw block
//! (codec 1, straight into the block decoder of format 2) or as a column
//! body (codec 2, through the column table first), past the checksums.
#![no_main]

use kpl::format::{FrameKind, CODEC_COLUMNS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut log = kpl::format::encode_header(&kpl::Metadata::default());
    let count = data.first().copied().unwrap_or(0) as u64;
    if count & 1 == 0 {
        log.extend(kpl::format::build_frame(FrameKind::Events, 0, count, data, 1));
    } else {
        let raw_len = data.len() as u32 * 3;
        log.extend(kpl::format::frame_with_body(FrameKind::Events, CODEC_COLUMNS, 0, count, raw_len, data));
    }
    let Ok(r) = kpl::Reader::from_bytes(log, "fuzz.kpl") else { return };
    for ev in r.events() {
        if let Ok(ev) = ev {
            let _ = kpl::json::event_to_json(&ev, None);
        }
    }
});
