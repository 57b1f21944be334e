//! What the video depacketizer fuzz targets share: the input is split into the payloads of
//! one frame at each 0xff 0x00 pair (so the fuzzer can make frames of several packets);
//! `starts_frame` and `frame` must never panic, and a frame that comes out is never
//! larger than the payloads it came from (plus, for H.264, start codes and remembered
//! parameter sets). A second frame from the same depacketizer exercises state.

use fanout_recorder::stitch::depacketize::VideoDepacketizer;

pub fn check(mut depacketizer: impl VideoDepacketizer, data: &[u8]) {
    let payloads: Vec<&[u8]> = split(data);
    for payload in &payloads {
        let _ = depacketizer.starts_frame(payload);
    }
    let input_len: usize = payloads.iter().map(|p| p.len()).sum();
    for _ in 0..2 {
        if let Ok(frame) = depacketizer.frame(&payloads) {
            assert!(!frame.data.is_empty());
            // Annex B adds 4 bytes per NAL unit and at most two remembered parameter sets.
            assert!(frame.data.len() <= 5 * input_len + 2 * 4100 + 64);
        }
    }
}

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut payloads = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < data.len() {
        if data[i] == 0xff && data[i + 1] == 0x00 {
            payloads.push(&data[start..i]);
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    payloads.push(&data[start.min(data.len())..]);
    payloads
}
