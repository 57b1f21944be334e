//! The VP8 RTP framing the synthetic publisher writes (RFC 7741) and the receiver checks.
//!
//! Reading is the forwarder's [`fanout_forwarder::codec::vp8::inspect`]: the load generator
//! parses what it sends with the same code the forwarder runs, so a framing the forwarder
//! would misread shows up here first. Writing is local because the forwarder never builds
//! VP8 payloads.

/// Length of the payload descriptor the publisher always writes: the required octet, the
/// extension octet (I, L, T), a 15-bit PictureID in two octets, TL0PICIDX, and the
/// TID/Y/KEYIDX octet (RFC 7741 §4.2). Fixed so a packet's layout is known from its flags.
use crate::stats::MediaKind;

pub const DESCRIPTOR_LEN: usize = 6;

/// RFC 7741 §4.3 / RFC 6386 §9.1: a key frame opens with a 3-byte frame tag, the start
/// code, and two 16-bit little-endian dimensions. The forwarder's VP8 reader needs all ten
/// bytes to accept the packet as a key frame start.
pub const KEYFRAME_HEADER_LEN: usize = 10;

/// The key frame start code (RFC 6386 §9.1).
pub const START_CODE: [u8; 3] = [0x9d, 0x01, 0x2a];

/// First descriptor octet: X (extension present).
const X: u8 = 0x80;
/// First descriptor octet: S (start of partition); PID stays 0.
const S: u8 = 0x10;
/// Extension octet: I, L and T (picture id, TL0PICIDX, TID present).
const I_L_T: u8 = 0x80 | 0x40 | 0x20;
/// Picture id first octet: M (15-bit picture id).
const M: u8 = 0x80;
/// TID/Y/KEYIDX octet: Y (layer sync).
const Y: u8 = 0x20;

/// What a descriptor says about its packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// S=1 with PID=0: first packet of a frame.
    pub start_of_frame: bool,
    /// 15-bit picture id.
    pub picture_id: u16,
    pub tl0_pic_idx: u8,
    /// Temporal layer, 0..=3.
    pub temporal_layer: u8,
    /// Y: the frame depends only on the base layer (a temporal up-switch point).
    pub layer_sync: bool,
}

/// Writes the 6-byte descriptor; `out` must hold [`DESCRIPTOR_LEN`] bytes (does nothing
/// otherwise).
pub fn write_descriptor(out: &mut [u8], d: &Descriptor) {
    let Some(out) = out.get_mut(..DESCRIPTOR_LEN) else {
        return;
    };
    out[0] = X | if d.start_of_frame { S } else { 0 };
    out[1] = I_L_T;
    let pid = d.picture_id & 0x7fff;
    out[2] = M | (pid >> 8) as u8;
    out[3] = pid as u8;
    out[4] = d.tl0_pic_idx;
    out[5] = (d.temporal_layer & 0x03) << 6 | if d.layer_sync { Y } else { 0 };
}

/// Writes a VP8 key frame header (frame tag with P=0 and show_frame=1, start code,
/// dimensions); `out` must hold [`KEYFRAME_HEADER_LEN`] bytes (does nothing otherwise).
pub fn write_keyframe_header(out: &mut [u8], width: u16, height: u16) {
    let Some(out) = out.get_mut(..KEYFRAME_HEADER_LEN) else {
        return;
    };
    // Frame tag (RFC 6386 §9.1): bit 0 P=0 (key frame), bits 1-3 version 0, bit 4
    // show_frame=1, then a first-partition size the receiver never decodes.
    out[0..3].copy_from_slice(&[0x50, 0x42, 0x00]);
    out[3..6].copy_from_slice(&START_CODE);
    // 14-bit dimensions, scaling bits 0.
    out[6..8].copy_from_slice(&(width & 0x3fff).to_le_bytes());
    out[8..10].copy_from_slice(&(height & 0x3fff).to_le_bytes());
}

/// Whether `bytes` start with exactly the key frame header [`write_keyframe_header`]
/// writes for these dimensions.
pub fn is_keyframe_header(bytes: &[u8], width: u16, height: u16) -> bool {
    let mut expected = [0u8; KEYFRAME_HEADER_LEN];
    write_keyframe_header(&mut expected, width, height);
    bytes.get(..KEYFRAME_HEADER_LEN) == Some(&expected[..])
}

/// The picture size the synthetic publisher announces in key frames: 1080p for screen
/// share, 320x180 for the lowest camera encoding and doubling upward (as browsers scale
/// simulcast layers by 2), capped at 5120x2880.
pub fn picture_size(kind: MediaKind, encoding: u8) -> (u16, u16) {
    match kind {
        MediaKind::Screen => (1920, 1080),
        _ => {
            let scale = 1u16 << encoding.min(4);
            (320 * scale, 180 * scale)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_forwarder::codec::vp8::inspect;

    #[test]
    fn forwarder_reads_what_we_write() {
        let mut p = [0u8; 40];
        let d = Descriptor {
            start_of_frame: true,
            picture_id: 0x1234,
            tl0_pic_idx: 9,
            temporal_layer: 2,
            layer_sync: true,
        };
        write_descriptor(&mut p, &d);
        write_keyframe_header(&mut p[DESCRIPTOR_LEN..], 640, 360);
        let info = inspect(&p, true).unwrap();
        assert!(info.is_keyframe_start() && info.end_of_frame);
        assert_eq!(info.descriptor_len, DESCRIPTOR_LEN);
        assert_eq!(info.picture_id, Some(0x1234));
        assert_eq!(info.picture_id_bits, 15);
        assert_eq!(info.tl0_pic_idx, Some(9));
        assert_eq!(info.temporal_layer, Some(2));
        assert!(info.layer_sync);
        assert!(is_keyframe_header(&p[DESCRIPTOR_LEN..], 640, 360));
        assert!(!is_keyframe_header(&p[DESCRIPTOR_LEN..], 640, 361));

        // A delta frame start: the byte after the descriptor is odd (the probe magic).
        let mut q = [0u8; 40];
        write_descriptor(
            &mut q,
            &Descriptor {
                start_of_frame: true,
                ..d
            },
        );
        q[DESCRIPTOR_LEN] = super::super::probe::MAGIC[0];
        let info = inspect(&q, false).unwrap();
        assert!(info.start_of_frame && !info.keyframe);
        // A continuation packet.
        write_descriptor(
            &mut q,
            &Descriptor {
                start_of_frame: false,
                ..d
            },
        );
        assert!(!inspect(&q, false).unwrap().start_of_frame);
    }

    #[test]
    fn short_buffers_are_left_alone() {
        let mut short = [0u8; 3];
        write_descriptor(&mut short, &Descriptor::default());
        write_keyframe_header(&mut short, 1, 1);
        assert_eq!(short, [0; 3]);
        assert!(!is_keyframe_header(&short, 1, 1));
    }
}
