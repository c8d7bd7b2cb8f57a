//! The payload codec of format 2 (templates and numbers, in lanes, frames
//! in dictionary groups): any bytes as a frame body go straight to the
//! decoder, past the checksums, on their own and after a group's earlier
//! frames; and any bytes cut into frames and buffers round-trip through
//! the encoder exactly, frame after frame of a group.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let raw_len = data.first().map(|&b| b as usize * 37).unwrap_or(0);
    let _ = kpl::payload::decode(data, raw_len);
    // Frames cut at every 0xfe byte, buffers at every 0xff; the byte after a cut picks the lane.
    let frames: Vec<Vec<(u64, &[u8])>> = data
        .split(|&b| b == 0xfe)
        .map(|f| f.split(|&b| b == 0xff).map(|p| (p.first().copied().unwrap_or(0) as u64 % 11, p)).collect())
        .collect();
    let bodies = kpl::payload::encode_frames(&frames);
    let mut g = kpl::payload::Group::default();
    for (f, (pos, body)) in frames.iter().zip(&bodies) {
        if *pos == 0 {
            g = kpl::payload::Group::default();
        }
        let want: Vec<u8> = f.iter().flat_map(|p| p.1.iter().copied()).collect();
        assert_eq!(kpl::payload::decode_in(body, want.len(), &mut g).expect("an encoded frame decodes"), want);
    }
    // The input as a later frame of the group just decoded.
    let _ = kpl::payload::decode_in(data, raw_len, &mut g.clone());
    let _ = kpl::payload::learn(data, raw_len, &mut g);
});
