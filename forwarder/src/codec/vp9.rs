//! VP9 payload descriptor (RFC 9628 §4.2), including the scalability structure (§4.2.1).
//!
//! ```text
//!       0 1 2 3 4 5 6 7
//!      +-+-+-+-+-+-+-+-+
//!      |I|P|L|F|B|E|V|Z| (REQUIRED)
//!      +-+-+-+-+-+-+-+-+
//! I:   |M| PICTURE ID  | (7 bits; M=1: 15 bits over two bytes)
//!      +-+-+-+-+-+-+-+-+
//! L:   |  TID  |U| SID |D|
//!      +-+-+-+-+-+-+-+-+
//!      |   TL0PICIDX   | (non-flexible mode only, F=0)
//!      +-+-+-+-+-+-+-+-+
//! P,F: | P_DIFF      |N| (flexible mode with P=1: up to 3 times, N=1: another follows)
//!      +-+-+-+-+-+-+-+-+
//! V:   | SS ...        | (scalability structure, below)
//!      +-+-+-+-+-+-+-+-+
//! ```
//!
//! Scalability structure (§4.2.1), read only to find where the VP9 bitstream starts:
//!
//! ```text
//! V:   | N_S |Y|G|-|-|-|
//! Y:   | WIDTH (16) | HEIGHT (16) |   N_S + 1 times
//! G:   |      N_G      |
//! N_G: |  TID  |U| R |-|-|  then R P_DIFF octets; N_G times
//! ```
//!
//! The model the forwarder uses:
//!
//! * B and E delimit a *layer frame* (one spatial layer of a picture); the RTP marker bit
//!   ends the whole picture (superframe). `start_of_frame` = B, `end_of_frame` = E.
//! * `keyframe` = P=0 on the base spatial layer (SID 0, or no layer indices): a key
//!   picture, where a decoder without state can start. The first packet of it (B=1) is
//!   [`FrameInfo::is_keyframe_start`]. P is in every packet, so every packet of that layer
//!   frame reports `keyframe`.
//! * `layer_keyframe` = P=0 at any SID: the layer frame does not predict from earlier
//!   pictures, only (with D=1) from the lower spatial layer of the same picture. A receiver
//!   that decodes the lower layers can switch up to this layer here
//!   ([`FrameInfo::is_independent_layer_start`]).
//! * `layer_sync` = U, the temporal switching-up point; `inter_layer_dependency` = D.
//!
//! Reserved bits are ignored. Flexible-mode rules that only a decoder cares about (I=1
//! required, D=0 on SID 0) are not enforced: the forwarder passes such packets on.

use super::{read_picture_id, write_picture_id, write_tl0_pic_idx};
use super::{Codec, CodecError, FrameInfo};

/// RFC 9628 §4.2, first octet: I, picture id present.
const I: u8 = 0x80;
/// P, inter-picture predicted layer frame.
const P: u8 = 0x40;
/// L, layer indices present.
const L: u8 = 0x20;
/// F, flexible mode.
const F: u8 = 0x10;
/// B, start of a layer frame.
const B: u8 = 0x08;
/// E, end of a layer frame.
const E: u8 = 0x04;
/// V, scalability structure present.
const V: u8 = 0x02;
/// Layer indices octet: U, switching up point.
const U: u8 = 0x10;
/// Layer indices octet: D, inter-layer dependency used.
const D: u8 = 0x01;
/// Reference index octet: N, another reference index follows.
const N: u8 = 0x01;
/// A picture references at most 3 earlier pictures (§4.2, P_DIFF "up to 3 times").
const MAX_REFERENCES: usize = 3;
/// Scalability structure: Y, resolutions present.
const SS_Y: u8 = 0x10;
/// Scalability structure: G, picture group description present.
const SS_G: u8 = 0x08;

/// Reads the payload descriptor of one VP9 RTP payload. The RTP marker bit is not needed:
/// E ends a layer frame.
pub fn inspect(payload: &[u8]) -> Result<FrameInfo, CodecError> {
    let first = *payload.first().ok_or(CodecError::TooShort)?;
    let mut info = FrameInfo {
        codec: Codec::Vp9,
        start_of_frame: first & B != 0,
        end_of_frame: first & E != 0,
        ..FrameInfo::default()
    };
    let mut at = 1;
    if first & I != 0 {
        let (id, bits, len) = read_picture_id(payload.get(at..).unwrap_or_default())?;
        info.picture_id = Some(id);
        info.picture_id_bits = bits;
        info.picture_id_offset = at;
        at += len;
    }
    if first & L != 0 {
        let layers = *payload.get(at).ok_or(CodecError::TooShort)?;
        at += 1;
        info.temporal_layer = Some(layers >> 5);
        info.layer_sync = layers & U != 0;
        info.spatial_layer = Some((layers >> 1) & 0x07);
        info.inter_layer_dependency = layers & D != 0;
        if first & F == 0 {
            info.tl0_pic_idx = Some(*payload.get(at).ok_or(CodecError::TooShort)?);
            info.tl0_pic_idx_offset = at;
            at += 1;
        }
    }
    if first & F != 0 && first & P != 0 {
        at = skip_reference_indices(payload, at)?;
    }
    if first & V != 0 {
        at = skip_scalability_structure(payload, at)?;
    }
    info.descriptor_len = at;
    let intra = first & P == 0;
    info.layer_keyframe = intra;
    info.keyframe = intra && info.spatial_layer.unwrap_or(0) == 0;
    Ok(info)
}

/// Skips the P_DIFF list of flexible mode (§4.2): returns the offset after it.
fn skip_reference_indices(payload: &[u8], mut at: usize) -> Result<usize, CodecError> {
    for _ in 0..MAX_REFERENCES {
        let octet = *payload.get(at).ok_or(CodecError::TooShort)?;
        at += 1;
        if octet & N == 0 {
            return Ok(at);
        }
    }
    // N=1 on the third reference index: a fourth would follow.
    Err(CodecError::Malformed)
}

/// Skips the scalability structure (§4.2.1): returns the offset after it.
fn skip_scalability_structure(payload: &[u8], mut at: usize) -> Result<usize, CodecError> {
    let header = *payload.get(at).ok_or(CodecError::TooShort)?;
    at += 1;
    if header & SS_Y != 0 {
        let spatial_layers = usize::from(header >> 5) + 1;
        // WIDTH and HEIGHT, 16 bits each, per spatial layer.
        at += 4 * spatial_layers;
        if at > payload.len() {
            return Err(CodecError::TooShort);
        }
    }
    if header & SS_G != 0 {
        let pictures = *payload.get(at).ok_or(CodecError::TooShort)?;
        at += 1;
        for _ in 0..pictures {
            let picture = *payload.get(at).ok_or(CodecError::TooShort)?;
            let references = usize::from((picture >> 2) & 0x03);
            at += 1 + references;
            if at > payload.len() {
                return Err(CodecError::TooShort);
            }
        }
    }
    Ok(at)
}

/// Writes the picture id of a VP9 payload in place, keeping the field's existing width
/// (7 or 15 bits; `picture_id` is masked to it). `info` must come from [`inspect`] on this
/// payload; returns false (and writes nothing) if it has no picture id or does not
/// describe these bytes.
pub fn set_vp9_picture_id(payload: &mut [u8], info: &FrameInfo, picture_id: u16) -> bool {
    write_picture_id(payload, info, Codec::Vp9, picture_id)
}

/// Writes the TL0PICIDX of a VP9 payload in place (non-flexible mode only); false (nothing
/// written) if `info` has none.
pub fn set_vp9_tl0_pic_idx(payload: &mut [u8], info: &FrameInfo, idx: u8) -> bool {
    write_tl0_pic_idx(payload, info, Codec::Vp9, idx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A picture group entry of the scalability structure: (TID, U, P_DIFFs).
    type GroupPicture = (u8, bool, Vec<u8>);

    /// The scalability structure to build.
    #[derive(Debug, Clone, Default)]
    struct Ss {
        spatial_layers: u8,
        resolutions: bool,
        group: Option<Vec<GroupPicture>>,
    }

    /// The fields of a descriptor to build.
    #[derive(Debug, Clone, Default)]
    struct Desc {
        p: bool,
        f: bool,
        b: bool,
        e: bool,
        z: bool,
        picture_id: Option<(u16, u8)>,
        /// (TID, U, SID, D)
        layers: Option<(u8, bool, u8, bool)>,
        tl0: u8,
        references: Vec<u8>,
        ss: Option<Ss>,
    }

    fn build(d: &Desc, vp9: &[u8]) -> Vec<u8> {
        let bit = |b: bool, shift: u8| u8::from(b) << shift;
        let mut p = vec![
            bit(d.picture_id.is_some(), 7)
                | bit(d.p, 6)
                | bit(d.layers.is_some(), 5)
                | bit(d.f, 4)
                | bit(d.b, 3)
                | bit(d.e, 2)
                | bit(d.ss.is_some(), 1)
                | bit(d.z, 0),
        ];
        match d.picture_id {
            Some((id, 7)) => p.push((id & 0x7f) as u8),
            Some((id, _)) => p.extend_from_slice(&((id & 0x7fff) | 0x8000).to_be_bytes()),
            None => {}
        }
        if let Some((tid, u, sid, dep)) = d.layers {
            p.push(tid << 5 | bit(u, 4) | (sid & 7) << 1 | bit(dep, 0));
            if !d.f {
                p.push(d.tl0);
            }
        }
        if d.f && d.p {
            let n = d.references.len();
            for (i, r) in d.references.iter().enumerate() {
                p.push(r << 1 | bit(i + 1 < n, 0));
            }
        }
        if let Some(ss) = &d.ss {
            p.push(
                (ss.spatial_layers - 1) << 5 | bit(ss.resolutions, 4) | bit(ss.group.is_some(), 3),
            );
            if ss.resolutions {
                for l in 0..u16::from(ss.spatial_layers) {
                    p.extend_from_slice(&(320u16 << l).to_be_bytes());
                    p.extend_from_slice(&(180u16 << l).to_be_bytes());
                }
            }
            if let Some(group) = &ss.group {
                p.push(group.len() as u8);
                for (tid, u, diffs) in group {
                    p.push(tid << 5 | bit(*u, 4) | (diffs.len() as u8) << 2);
                    p.extend_from_slice(diffs);
                }
            }
        }
        p.extend_from_slice(vp9);
        p
    }

    const BITSTREAM: [u8; 3] = [0x82, 0x49, 0x83];

    #[test]
    fn libwebrtc_key_picture_with_ss() {
        // Non-flexible mode, 2 spatial layers, 15-bit picture id; the base layer of a key
        // picture carries the SS with resolutions and a 1-picture group.
        let d = Desc {
            b: true,
            picture_id: Some((1000, 15)),
            layers: Some((0, false, 0, false)),
            tl0: 7,
            ss: Some(Ss {
                spatial_layers: 2,
                resolutions: true,
                group: Some(vec![(0, false, vec![1])]),
            }),
            ..Desc::default()
        };
        let p = build(&d, &BITSTREAM);
        let info = inspect(&p).unwrap();
        assert_eq!(
            info,
            FrameInfo {
                codec: Codec::Vp9,
                keyframe: true,
                layer_keyframe: true,
                start_of_frame: true,
                temporal_layer: Some(0),
                spatial_layer: Some(0),
                picture_id: Some(1000),
                picture_id_offset: 1,
                picture_id_bits: 15,
                tl0_pic_idx: Some(7),
                tl0_pic_idx_offset: 4,
                descriptor_len: p.len() - BITSTREAM.len(),
                ..FrameInfo::default()
            }
        );
        assert!(info.is_keyframe_start());
        // The upper layer of the same key picture: P=0, D=1. Not a keyframe on its own,
        // but a layer switch point.
        let upper = Desc {
            b: true,
            e: true,
            layers: Some((0, false, 1, true)),
            ss: None,
            ..d
        };
        let info = inspect(&build(&upper, &BITSTREAM)).unwrap();
        assert!(!info.keyframe && info.layer_keyframe && info.end_of_frame);
        assert!(info.inter_layer_dependency);
        assert_eq!(info.spatial_layer, Some(1));
        assert!(!info.is_keyframe_start() && info.is_independent_layer_start());
    }

    #[test]
    fn delta_and_middle_packets() {
        let d = Desc {
            p: true,
            picture_id: Some((9, 7)),
            layers: Some((2, true, 0, false)),
            tl0: 3,
            ..Desc::default()
        };
        let info = inspect(&build(&d, &BITSTREAM)).unwrap();
        assert!(!info.keyframe && !info.layer_keyframe);
        assert!(!info.start_of_frame && !info.end_of_frame);
        assert_eq!(info.temporal_layer, Some(2));
        assert!(info.layer_sync);
        assert_eq!(info.picture_id, Some(9));
        assert_eq!(info.picture_id_bits, 7);
        assert_eq!(info.tl0_pic_idx_offset, 3);
        // A keyframe's middle packet still says keyframe (P is in every packet).
        let middle = Desc { p: false, ..d };
        let info = inspect(&build(&middle, &BITSTREAM)).unwrap();
        assert!(info.keyframe && !info.is_keyframe_start());
    }

    #[test]
    fn ffmpeg_minimal_descriptor() {
        // FFmpeg's rtpenc_vp9.c writes only the first octet: B (0x08), E (0x04).
        let info = inspect(&[0x0c, 0x82, 0x49]).unwrap();
        assert!(info.keyframe && info.start_of_frame && info.end_of_frame);
        assert_eq!(info.descriptor_len, 1);
        assert_eq!((info.picture_id, info.spatial_layer), (None, None));
        assert_eq!(inspect(&[]), Err(CodecError::TooShort));
    }

    #[test]
    fn flexible_mode_references() {
        for n in 1..=3usize {
            let d = Desc {
                p: true,
                f: true,
                b: true,
                picture_id: Some((300, 15)),
                layers: Some((1, false, 2, true)),
                references: (1..=n as u8).collect(),
                ..Desc::default()
            };
            let p = build(&d, &BITSTREAM);
            let info = inspect(&p).unwrap();
            // No TL0PICIDX in flexible mode.
            assert_eq!(info.tl0_pic_idx, None);
            assert_eq!(info.descriptor_len, 1 + 2 + 1 + n);
            assert_eq!(info.spatial_layer, Some(2));
            assert!(info.inter_layer_dependency);
        }
        // A fourth reference index is malformed.
        let mut p = vec![0xd0, 0x81, 0x00, 0x03, 0x05, 0x07, 0x09, 0xaa];
        assert_eq!(inspect(&p), Err(CodecError::Malformed));
        // P=0 in flexible mode: no reference indices at all.
        p[0] = 0x90;
        assert_eq!(inspect(&p).unwrap().descriptor_len, 3);
    }

    #[test]
    fn scalability_structure_variants() {
        for spatial_layers in 1..=8u8 {
            for resolutions in [false, true] {
                for group in [
                    None,
                    Some(vec![]),
                    Some(vec![(0, false, vec![]), (1, true, vec![1, 2, 3])]),
                ] {
                    let d = Desc {
                        b: true,
                        picture_id: Some((1, 7)),
                        ss: Some(Ss {
                            spatial_layers,
                            resolutions,
                            group: group.clone(),
                        }),
                        ..Desc::default()
                    };
                    let p = build(&d, &BITSTREAM);
                    let info = inspect(&p).unwrap();
                    assert_eq!(info.descriptor_len, p.len() - BITSTREAM.len(), "{d:?}");
                    for cut in 0..info.descriptor_len {
                        assert_eq!(inspect(&p[..cut]), Err(CodecError::TooShort), "{d:?} {cut}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_first_octet() {
        // All 256 first octets with every optional field present: parses, and the flags
        // land where they belong.
        for first in 0..=255u8 {
            let mut p = vec![first, 0x80, 0x05, 0x23, 0x44, 0x04, 0x00, 0x00];
            p.extend_from_slice(&BITSTREAM);
            let Ok(info) = inspect(&p) else {
                panic!("{first:#04x}");
            };
            assert_eq!(info.start_of_frame, first & B != 0);
            assert_eq!(info.end_of_frame, first & E != 0);
            assert_eq!(info.picture_id.is_some(), first & I != 0);
            assert_eq!(info.spatial_layer.is_some(), first & L != 0);
            assert_eq!(info.tl0_pic_idx.is_some(), first & L != 0 && first & F == 0);
            assert_eq!(info.layer_keyframe, first & P == 0);
        }
    }

    #[test]
    fn rewrite_in_flexible_and_non_flexible_mode() {
        let d = Desc {
            picture_id: Some((5, 15)),
            layers: Some((0, false, 0, false)),
            tl0: 1,
            ..Desc::default()
        };
        let mut p = build(&d, &BITSTREAM);
        let info = inspect(&p).unwrap();
        assert!(set_vp9_picture_id(&mut p, &info, 0xfffe));
        assert!(set_vp9_tl0_pic_idx(&mut p, &info, 250));
        assert!(!set_vp8_picture_id_is_not_vp9(&mut p, &info));
        let after = inspect(&p).unwrap();
        assert_eq!(
            (after.picture_id, after.tl0_pic_idx),
            (Some(0x7ffe), Some(250))
        );
        let flexible = Desc { f: true, ..d };
        let mut p = build(&flexible, &BITSTREAM);
        let info = inspect(&p).unwrap();
        assert!(!set_vp9_tl0_pic_idx(&mut p, &info, 250));
    }

    fn set_vp8_picture_id_is_not_vp9(p: &mut [u8], info: &FrameInfo) -> bool {
        crate::codec::set_vp8_picture_id(p, info, 1)
    }

    fn descs() -> impl Strategy<Value = Desc> {
        let ss = (
            1u8..=8,
            any::<bool>(),
            proptest::option::of(proptest::collection::vec(
                (
                    0u8..8,
                    any::<bool>(),
                    proptest::collection::vec(any::<u8>(), 0..4),
                ),
                0..4,
            )),
        )
            .prop_map(|(spatial_layers, resolutions, group)| Ss {
                spatial_layers,
                resolutions,
                group,
            });
        (
            any::<[bool; 5]>(),
            proptest::option::of((any::<u16>(), prop_oneof![Just(7u8), Just(15u8)])),
            proptest::option::of((0u8..8, any::<bool>(), 0u8..8, any::<bool>())),
            any::<u8>(),
            proptest::collection::vec(0u8..128, 1..=3),
            proptest::option::of(ss),
        )
            .prop_map(
                |([p, f, b, e, z], picture_id, layers, tl0, references, ss)| Desc {
                    p,
                    f,
                    b,
                    e,
                    z,
                    picture_id,
                    layers,
                    tl0,
                    references,
                    ss,
                },
            )
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(info) = inspect(&bytes) {
                prop_assert!(info.descriptor_len <= bytes.len());
            }
        }

        #[test]
        fn built_descriptors_parse_and_written_values_read_back(
            d in descs(),
            pid in any::<u16>(),
            tl0 in any::<u8>(),
        ) {
            let mut p = build(&d, &BITSTREAM);
            let before = inspect(&p).unwrap();
            prop_assert_eq!(before.descriptor_len, p.len() - BITSTREAM.len());
            prop_assert_eq!(before.spatial_layer, d.layers.map(|l| l.2));
            prop_assert_eq!(before.keyframe, !d.p && d.layers.is_none_or(|l| l.2 == 0));
            let wrote_id = set_vp9_picture_id(&mut p, &before, pid);
            let wrote_tl0 = set_vp9_tl0_pic_idx(&mut p, &before, tl0);
            prop_assert_eq!(wrote_id, d.picture_id.is_some());
            prop_assert_eq!(wrote_tl0, d.layers.is_some() && !d.f);
            let after = inspect(&p).unwrap();
            if let Some((_, bits)) = d.picture_id {
                let mask = if bits == 7 { 0x7f } else { 0x7fff };
                prop_assert_eq!(after.picture_id, Some(pid & mask));
            }
            if wrote_tl0 {
                prop_assert_eq!(after.tl0_pic_idx, Some(tl0));
            }
            prop_assert_eq!(
                FrameInfo { picture_id: None, tl0_pic_idx: None, ..after },
                FrameInfo { picture_id: None, tl0_pic_idx: None, ..before }
            );
        }
    }
}
