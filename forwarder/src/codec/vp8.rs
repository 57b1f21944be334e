//! VP8 payload descriptor (RFC 7741 §4.2) and payload header (§4.3).
//!
//! ```text
//!       0 1 2 3 4 5 6 7
//!      +-+-+-+-+-+-+-+-+
//!      |X|R|N|S|R| PID | (REQUIRED)
//!      +-+-+-+-+-+-+-+-+
//! X:   |I|L|T|K| RSV   | (OPTIONAL)
//!      +-+-+-+-+-+-+-+-+
//! I:   |M| PictureID   | (OPTIONAL, 7 bits; M=1: 15 bits over two bytes)
//!      +-+-+-+-+-+-+-+-+
//! L:   |   TL0PICIDX   | (OPTIONAL)
//!      +-+-+-+-+-+-+-+-+
//! T/K: |TID|Y| KEYIDX  | (OPTIONAL)
//!      +-+-+-+-+-+-+-+-+
//! ```
//!
//! The VP8 payload header (§4.3) opens the first partition, so it is only in the packet
//! with S=1 and PID=0: its lowest bit P is the *inverse* key frame flag (0: key frame).
//! That is the only place a keyframe can be seen, so `keyframe` is only ever true on the
//! first packet of a frame. The end of a frame is the RTP marker bit (§4.1).
//!
//! Reserved bits are ignored, as §4.2 asks of receivers.

use super::{read_picture_id, write_picture_id, write_tl0_pic_idx};
use super::{Codec, CodecError, FrameInfo};

/// RFC 7741 §4.2, first octet: X, extended control bits present.
const X: u8 = 0x80;
/// First octet: S, start of a VP8 partition.
const S: u8 = 0x10;
/// First octet: PID, partition index (3 bits).
const PID_MASK: u8 = 0x07;
/// Extended control bits: I, picture id present.
const I: u8 = 0x80;
/// Extended control bits: L, TL0PICIDX present.
const L: u8 = 0x40;
/// Extended control bits: T, TID (and Y) present.
const T: u8 = 0x20;
/// Extended control bits: K, KEYIDX present.
const K: u8 = 0x10;
/// T/K octet: Y, layer sync.
const Y: u8 = 0x20;
/// RFC 7741 §4.3 payload header, first octet: P, inverse key frame flag.
const INVERSE_KEY_FRAME: u8 = 0x01;
/// A key frame starts with the 3-byte frame tag, the 3-byte start code and 4 bytes of
/// dimensions (RFC 6386 §9.1). libwebrtc drops key frame packets shorter than this, and
/// so do we: a decoder could not start on them.
const KEY_FRAME_HEADER_LEN: usize = 10;

/// Reads the payload descriptor of one VP8 RTP payload; `marker` is the RTP M bit.
pub fn inspect(payload: &[u8], marker: bool) -> Result<FrameInfo, CodecError> {
    let first = *payload.first().ok_or(CodecError::TooShort)?;
    let mut info = FrameInfo {
        codec: Codec::Vp8,
        start_of_frame: first & S != 0 && first & PID_MASK == 0,
        end_of_frame: marker,
        ..FrameInfo::default()
    };
    let mut at = 1;
    if first & X != 0 {
        let ext = *payload.get(at).ok_or(CodecError::TooShort)?;
        at += 1;
        if ext & I != 0 {
            let (id, bits, len) = read_picture_id(payload.get(at..).unwrap_or_default())?;
            info.picture_id = Some(id);
            info.picture_id_bits = bits;
            info.picture_id_offset = at;
            at += len;
        }
        if ext & L != 0 {
            info.tl0_pic_idx = Some(*payload.get(at).ok_or(CodecError::TooShort)?);
            info.tl0_pic_idx_offset = at;
            at += 1;
        }
        if ext & (T | K) != 0 {
            let tk = *payload.get(at).ok_or(CodecError::TooShort)?;
            at += 1;
            // TID and Y are only meaningful with T=1; with K alone the octet carries
            // only KEYIDX.
            if ext & T != 0 {
                info.temporal_layer = Some(tk >> 6);
                info.layer_sync = tk & Y != 0;
            }
        }
    }
    info.descriptor_len = at;
    if info.start_of_frame {
        let vp8 = payload.get(at..).unwrap_or_default();
        let header = *vp8.first().ok_or(CodecError::TooShort)?;
        if header & INVERSE_KEY_FRAME == 0 {
            if vp8.len() < KEY_FRAME_HEADER_LEN {
                return Err(CodecError::TooShort);
            }
            info.keyframe = true;
            info.layer_keyframe = true;
        }
    }
    Ok(info)
}

/// Writes the picture id of a VP8 payload in place, keeping the field's existing width
/// (7 or 15 bits; `picture_id` is masked to it). `info` must come from [`inspect`] on this
/// payload; returns false (and writes nothing) if it has no picture id or does not
/// describe these bytes.
pub fn set_vp8_picture_id(payload: &mut [u8], info: &FrameInfo, picture_id: u16) -> bool {
    write_picture_id(payload, info, Codec::Vp8, picture_id)
}

/// Writes the TL0PICIDX of a VP8 payload in place; false (nothing written) if `info` has
/// none.
pub fn set_vp8_tl0_pic_idx(payload: &mut [u8], info: &FrameInfo, idx: u8) -> bool {
    write_tl0_pic_idx(payload, info, Codec::Vp8, idx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The optional fields of a descriptor to build.
    #[derive(Debug, Clone, Copy, Default)]
    struct Desc {
        n: bool,
        s: bool,
        pid: u8,
        picture_id: Option<(u16, u8)>,
        tl0: Option<u8>,
        tid: Option<(u8, bool)>,
        keyidx: Option<u8>,
    }

    fn build(d: Desc, vp8: &[u8]) -> Vec<u8> {
        let x = d.picture_id.is_some() || d.tl0.is_some() || d.tid.is_some() || d.keyidx.is_some();
        let mut p = vec![u8::from(x) << 7 | u8::from(d.n) << 5 | u8::from(d.s) << 4 | (d.pid & 7)];
        if x {
            p.push(
                u8::from(d.picture_id.is_some()) << 7
                    | u8::from(d.tl0.is_some()) << 6
                    | u8::from(d.tid.is_some()) << 5
                    | u8::from(d.keyidx.is_some()) << 4,
            );
        }
        match d.picture_id {
            Some((id, 7)) => p.push((id & 0x7f) as u8),
            Some((id, _)) => p.extend_from_slice(&((id & 0x7fff) | 0x8000).to_be_bytes()),
            None => {}
        }
        if let Some(t) = d.tl0 {
            p.push(t);
        }
        if d.tid.is_some() || d.keyidx.is_some() {
            let (tid, y) = d.tid.unwrap_or((0, false));
            p.push(tid << 6 | u8::from(y) << 5 | d.keyidx.unwrap_or(0) & 0x1f);
        }
        p.extend_from_slice(vp8);
        p
    }

    /// The start of a real 640x480 VP8 key frame as libvpx writes it: frame tag (P=0,
    /// version 0, show_frame=1, first partition size), start code 9d 01 2a, width 640,
    /// height 480 (little endian).
    const KEY_FRAME: [u8; 12] = [
        0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, 0x39, 0x6b,
    ];
    /// The start of a libvpx delta frame: P=1, show_frame=1.
    const DELTA_FRAME: [u8; 6] = [0x31, 0x0c, 0x00, 0x11, 0xec, 0xd4];

    #[test]
    fn ffmpeg_key_frame() {
        // FFmpeg's rtpenc_vp8.c: X=1, S=1 (0x90); I=1 (0x80); M=1 and a 15-bit picture id
        // (its frame counter) in two bytes; then the VP8 frame.
        let mut p = vec![0x90, 0x80, 0x80 | 0x01, 0x2c];
        p.extend_from_slice(&KEY_FRAME);
        let info = inspect(&p, false).unwrap();
        assert_eq!(
            info,
            FrameInfo {
                codec: Codec::Vp8,
                keyframe: true,
                layer_keyframe: true,
                start_of_frame: true,
                picture_id: Some(300),
                picture_id_offset: 2,
                picture_id_bits: 15,
                descriptor_len: 4,
                ..FrameInfo::default()
            }
        );
        assert!(info.is_keyframe_start());
        // The following packets of the same frame: FFmpeg clears S and keeps the rest;
        // the last one has the marker bit.
        let mut next = vec![0x80, 0x80, 0x81, 0x2c];
        next.extend_from_slice(&[0x12, 0x34]);
        let info = inspect(&next, true).unwrap();
        assert!(!info.keyframe && !info.start_of_frame && info.end_of_frame);
        assert_eq!(info.picture_id, Some(300));
    }

    #[test]
    fn ffmpeg_delta_frame() {
        let mut p = vec![0x90, 0x80, 0x81, 0x2d];
        p.extend_from_slice(&DELTA_FRAME);
        let info = inspect(&p, true).unwrap();
        assert!(!info.keyframe && info.start_of_frame && info.end_of_frame);
        assert_eq!(info.picture_id, Some(301));
        assert!(!info.is_keyframe_start());
    }

    #[test]
    fn minimal_descriptor() {
        // RFC 7741 allows a one-octet descriptor (X=0).
        let info = inspect(
            &build(
                Desc {
                    s: true,
                    ..Desc::default()
                },
                &KEY_FRAME,
            ),
            true,
        )
        .unwrap();
        assert!(info.keyframe && info.start_of_frame && info.end_of_frame);
        assert_eq!(info.descriptor_len, 1);
        assert_eq!(info.picture_id, None);
        assert_eq!(info.temporal_layer, None);
    }

    #[test]
    fn keyframe_needs_start_of_partition_zero() {
        // P=0 in the first payload byte means nothing unless S=1 and PID=0.
        let not_start = build(Desc::default(), &KEY_FRAME);
        assert!(!inspect(&not_start, false).unwrap().keyframe);
        let other_partition = build(
            Desc {
                s: true,
                pid: 1,
                ..Desc::default()
            },
            &KEY_FRAME,
        );
        let info = inspect(&other_partition, false).unwrap();
        assert!(!info.keyframe && !info.start_of_frame);
    }

    #[test]
    fn truncated_key_frame_header() {
        let p = build(
            Desc {
                s: true,
                ..Desc::default()
            },
            &KEY_FRAME[..9],
        );
        assert_eq!(inspect(&p, false), Err(CodecError::TooShort));
        // A start packet must carry the payload header.
        let p = build(
            Desc {
                s: true,
                ..Desc::default()
            },
            &[],
        );
        assert_eq!(inspect(&p, false), Err(CodecError::TooShort));
        // Other packets may be empty after the descriptor.
        assert!(inspect(&build(Desc::default(), &[]), false).is_ok());
        assert_eq!(inspect(&[], false), Err(CodecError::TooShort));
    }

    #[test]
    fn every_extension_field() {
        let d = Desc {
            n: true,
            s: true,
            picture_id: Some((0x55, 7)),
            tl0: Some(200),
            tid: Some((2, true)),
            keyidx: Some(17),
            ..Desc::default()
        };
        let p = build(d, &DELTA_FRAME);
        let info = inspect(&p, false).unwrap();
        assert_eq!(info.picture_id, Some(0x55));
        assert_eq!(info.picture_id_bits, 7);
        assert_eq!(info.picture_id_offset, 2);
        assert_eq!(info.tl0_pic_idx, Some(200));
        assert_eq!(info.tl0_pic_idx_offset, 3);
        assert_eq!(info.temporal_layer, Some(2));
        assert!(info.layer_sync);
        assert_eq!(info.descriptor_len, 5);
        assert_eq!(p[info.descriptor_len], DELTA_FRAME[0]);
    }

    #[test]
    fn keyidx_alone_has_no_temporal_layer() {
        let p = build(
            Desc {
                keyidx: Some(3),
                ..Desc::default()
            },
            &[0],
        );
        let info = inspect(&p, false).unwrap();
        assert_eq!(info.temporal_layer, None);
        assert!(!info.layer_sync);
        assert_eq!(info.descriptor_len, 3);
    }

    #[test]
    fn every_flag_combination_round_trips() {
        for flags in 0u8..16 {
            for bits in [7u8, 15] {
                let d = Desc {
                    s: true,
                    picture_id: (flags & 1 != 0).then_some((0x1234, bits)),
                    tl0: (flags & 2 != 0).then_some(9),
                    tid: (flags & 4 != 0).then_some((1, false)),
                    keyidx: (flags & 8 != 0).then_some(4),
                    ..Desc::default()
                };
                let p = build(d, &DELTA_FRAME);
                let info = inspect(&p, false).unwrap();
                let id_len = d.picture_id.map_or(0, |_| if bits == 7 { 1 } else { 2 });
                let x_len = usize::from(flags != 0);
                let tk_len = usize::from(flags & 12 != 0);
                assert_eq!(
                    info.descriptor_len,
                    1 + x_len + id_len + usize::from(flags & 2 != 0) + tk_len
                );
                let mask = if bits == 7 { 0x7f } else { 0x7fff };
                assert_eq!(info.picture_id, d.picture_id.map(|(id, _)| id & mask));
                assert_eq!(info.tl0_pic_idx, d.tl0);
                assert_eq!(info.temporal_layer, d.tid.map(|t| t.0));
                // Every truncation of the descriptor is TooShort.
                for cut in 0..info.descriptor_len {
                    assert_eq!(inspect(&p[..cut], false), Err(CodecError::TooShort));
                }
            }
        }
    }

    #[test]
    fn rewrite_keeps_width_and_neighbours() {
        let d = Desc {
            picture_id: Some((5, 7)),
            tl0: Some(1),
            tid: Some((0, false)),
            ..Desc::default()
        };
        let mut p = build(d, &[0xee]);
        let info = inspect(&p, false).unwrap();
        assert!(set_vp8_picture_id(&mut p, &info, 0x1ff));
        assert!(set_vp8_tl0_pic_idx(&mut p, &info, 77));
        let after = inspect(&p, false).unwrap();
        assert_eq!(after.picture_id, Some(0x7f));
        assert_eq!(after.tl0_pic_idx, Some(77));
        assert_eq!(after.temporal_layer, Some(0));
        assert_eq!(p.last(), Some(&0xee));
    }

    fn descs() -> impl Strategy<Value = Desc> {
        (
            any::<(bool, bool)>(),
            0u8..8,
            proptest::option::of((any::<u16>(), prop_oneof![Just(7u8), Just(15u8)])),
            proptest::option::of(any::<u8>()),
            proptest::option::of((0u8..4, any::<bool>())),
            proptest::option::of(0u8..32),
        )
            .prop_map(|((n, s), pid, picture_id, tl0, tid, keyidx)| Desc {
                n,
                s,
                pid,
                picture_id,
                tl0,
                tid,
                keyidx,
            })
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..48),
            m in any::<bool>(),
        ) {
            if let Ok(info) = inspect(&bytes, m) {
                prop_assert!(info.descriptor_len <= bytes.len());
                prop_assert_eq!(info.end_of_frame, m);
            }
        }

        #[test]
        fn written_values_read_back(d in descs(), pid in any::<u16>(), tl0 in any::<u8>()) {
            let mut p = build(d, &KEY_FRAME);
            let before = inspect(&p, false).unwrap();
            let wrote_id = set_vp8_picture_id(&mut p, &before, pid);
            let wrote_tl0 = set_vp8_tl0_pic_idx(&mut p, &before, tl0);
            prop_assert_eq!(wrote_id, d.picture_id.is_some());
            prop_assert_eq!(wrote_tl0, d.tl0.is_some());
            let after = inspect(&p, false).unwrap();
            if let Some((_, bits)) = d.picture_id {
                let mask = if bits == 7 { 0x7f } else { 0x7fff };
                prop_assert_eq!(after.picture_id, Some(pid & mask));
            }
            if wrote_tl0 {
                prop_assert_eq!(after.tl0_pic_idx, Some(tl0));
            }
            // Nothing else changed.
            prop_assert_eq!(
                FrameInfo { picture_id: None, tl0_pic_idx: None, ..after },
                FrameInfo { picture_id: None, tl0_pic_idx: None, ..before }
            );
        }
    }
}
