//! Synthetic VP8 RTP payloads (RFC 7741) for scenario tests: a payload descriptor with a
//! 15-bit picture id, TL0PICIDX and TID/Y, as libwebrtc sends them, and a key frame header
//! where the frame is a key frame.

use fanout_forwarder::codec::{inspect, Codec, FrameInfo};

/// One frame's descriptor fields.
#[derive(Debug, Clone, Copy)]
pub struct Vp8Frame {
    pub picture_id: u16,
    pub tl0_pic_idx: u8,
    pub temporal: u8,
    pub layer_sync: bool,
    pub keyframe: bool,
}

/// The payload of packet `index` (0-based) of `frame`; only the first packet starts the
/// partition (S=1) and carries the VP8 payload header.
pub fn payload(frame: &Vp8Frame, index: usize, body: &[u8]) -> Vec<u8> {
    let start = index == 0;
    let mut p = vec![
        0x80 | if start { 0x10 } else { 0 },
        0xe0,
        0x80 | (frame.picture_id >> 8) as u8 & 0x7f,
        frame.picture_id as u8,
        frame.tl0_pic_idx,
        (frame.temporal << 6) | if frame.layer_sync { 0x20 } else { 0 },
    ];
    if start {
        if frame.keyframe {
            // Frame tag with P=0, start code, 640x360.
            p.extend_from_slice(&[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
        } else {
            p.extend_from_slice(&[0x01, 0x00, 0x00]);
        }
    }
    p.extend_from_slice(body);
    p
}

/// What the forwarder's parser reads from a payload the subscriber received.
pub fn read(payload: &[u8], marker: bool) -> FrameInfo {
    inspect(Codec::Vp8, payload, marker).expect("a well-formed VP8 payload")
}
