//! The payload codec of format 2 (templates and numbers, in lanes): any
//! bytes as a frame body go straight to the decoder, past the checksums; and
//! any bytes cut into buffers round-trip through the encoder exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let raw_len = data.first().map(|&b| b as usize * 37).unwrap_or(0);
    let _ = kpl::payload::decode(data, raw_len);
    // Cut at every 0xff byte; the byte after a cut picks the lane.
    let pieces: Vec<(u64, &[u8])> = data.split(|&b| b == 0xff).map(|p| (p.first().copied().unwrap_or(0) as u64 % 11, p)).collect();
    let body = kpl::payload::encode(&pieces);
    let want: Vec<u8> = pieces.iter().flat_map(|p| p.1.iter().copied()).collect();
    assert_eq!(kpl::payload::decode(&body, want.len()).expect("an encoded frame decodes"), want);
});
