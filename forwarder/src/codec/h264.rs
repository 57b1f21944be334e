//! H.264 RTP payloads (RFC 6184 §5) in packetization modes 0 and 1: single NAL unit
//! packets (types 1-23, §5.6), STAP-A (24, §5.7.1) and FU-A (28, §5.8).
//!
//! H.264 has no payload descriptor: the forwarder reads NAL unit headers (`F|NRI|Type`,
//! §5.3) and, for slices, one bit of the slice header.
//!
//! # Rules the forwarder uses
//!
//! * **keyframe**: the packet carries an IDR slice (type 5) or a parameter set (SPS 7,
//!   PPS 8): as a single NAL unit, anywhere in a STAP-A, or in any fragment of an FU-A
//!   (whose FU header repeats the original type, §5.8). Parameter sets count because a
//!   decoder needs them before the IDR and encoders send them just before it, in their own
//!   packets (libwebrtc's packetizer, FFmpeg) or aggregated with it (a STAP-A with SPS, PPS
//!   and IDR). So a lone SPS packet is the *keyframe start*; so is the PPS after it, and
//!   the IDR packet after them: a forwarder that switches at the first
//!   [`FrameInfo::is_keyframe_start`] it sees gets the parameter sets too, unless they were
//!   lost (the decoder then asks for another keyframe).
//! * **start_of_frame** (only approximate: a packet cannot say whether it is the first of
//!   an access unit): true when the packet's first NAL unit may begin an access unit
//!   (H.264 §7.4.1.2.3): access unit delimiter, SEI, SPS, PPS (types 6-9) or prefix /
//!   subset SPS / reserved types 14-18; or a slice (types 1, 2, 5) whose
//!   `first_mb_in_slice` is 0, i.e. the first slice of a picture. For an FU-A, only the
//!   fragment with S=1 can be a start. A keyframe sent as SPS, PPS, IDR in three packets
//!   has three starts; second and later slices of a picture are not starts.
//! * **end_of_frame**: the RTP marker bit (§5.1: last packet of an access unit).
//! * H.264 has no picture id and no layer indices here: those fields stay `None`.
//!
//! Types 0 and 30-31 are [`CodecError::Malformed`] (undefined, §5.4), as is an aggregated
//! or fragmented NAL unit whose own type is not 1-23. The interleaved-mode types STAP-B,
//! MTAP16, MTAP24 and FU-B (25-27, 29; §5.7, §5.8) are [`CodecError::Unsupported`]. The F
//! bit (forbidden_zero_bit) is not checked: §5.3 lets a network element set it to mark a
//! damaged NAL unit, and the decoder decides what to do with it.

use super::{Codec, CodecError, FrameInfo};

/// NAL unit types the forwarder cares about (H.264 Table 7-1; RFC 6184 Table 1).
pub mod nal_type {
    /// Coded slice of a non-IDR picture.
    pub const SLICE: u8 = 1;
    /// Coded slice data partition A (carries the slice header).
    pub const SLICE_DATA_PARTITION_A: u8 = 2;
    /// Coded slice of an IDR picture.
    pub const IDR: u8 = 5;
    /// Supplemental enhancement information.
    pub const SEI: u8 = 6;
    /// Sequence parameter set.
    pub const SPS: u8 = 7;
    /// Picture parameter set.
    pub const PPS: u8 = 8;
    /// Access unit delimiter.
    pub const AUD: u8 = 9;
    /// Single-time aggregation packet (RFC 6184 §5.7.1).
    pub const STAP_A: u8 = 24;
    /// Single-time aggregation packet with decoding order number (interleaved mode).
    pub const STAP_B: u8 = 25;
    /// Multi-time aggregation packet, 16-bit timestamp offsets (interleaved mode).
    pub const MTAP16: u8 = 26;
    /// Multi-time aggregation packet, 24-bit timestamp offsets (interleaved mode).
    pub const MTAP24: u8 = 27;
    /// Fragmentation unit (RFC 6184 §5.8).
    pub const FU_A: u8 = 28;
    /// Fragmentation unit with decoding order number (interleaved mode).
    pub const FU_B: u8 = 29;
}

/// NAL unit header: the Type field (§5.3).
const TYPE_MASK: u8 = 0x1f;
/// FU header: S, start of a fragmented NAL unit (§5.8).
const FU_START: u8 = 0x80;
/// STAP-A: the NAL unit size field (§5.7.1).
const NALU_SIZE_LEN: usize = 2;

/// Reads one H.264 RTP payload; `marker` is the RTP M bit (end of the access unit).
pub fn inspect(payload: &[u8], marker: bool) -> Result<FrameInfo, CodecError> {
    let (&header, rest) = payload.split_first().ok_or(CodecError::TooShort)?;
    let mut info = FrameInfo {
        codec: Codec::H264,
        end_of_frame: marker,
        ..FrameInfo::default()
    };
    match header & TYPE_MASK {
        ty @ 1..=23 => {
            info.keyframe = is_keyframe_unit(ty);
            info.start_of_frame = may_start_access_unit(ty, rest.first());
        }
        nal_type::STAP_A => {
            let mut units = rest;
            if units.is_empty() {
                return Err(CodecError::TooShort);
            }
            let mut first = true;
            while !units.is_empty() {
                let (size, tail) = units
                    .split_first_chunk::<NALU_SIZE_LEN>()
                    .ok_or(CodecError::TooShort)?;
                let size = usize::from(u16::from_be_bytes(*size));
                let unit = tail.get(..size).ok_or(CodecError::TooShort)?;
                let (&unit_header, unit_rest) = unit.split_first().ok_or(CodecError::Malformed)?;
                let ty = unit_header & TYPE_MASK;
                if !(1..=23).contains(&ty) {
                    return Err(CodecError::Malformed);
                }
                if first {
                    info.start_of_frame = may_start_access_unit(ty, unit_rest.first());
                    first = false;
                }
                info.keyframe |= is_keyframe_unit(ty);
                units = tail.get(size..).unwrap_or_default();
            }
        }
        nal_type::FU_A => {
            let (&fu_header, fragment) = rest.split_first().ok_or(CodecError::TooShort)?;
            let ty = fu_header & TYPE_MASK;
            if !(1..=23).contains(&ty) {
                return Err(CodecError::Malformed);
            }
            // An FU carries at least one byte of its NAL unit (§5.8: a fragment is
            // never empty).
            let first_byte = fragment.first().ok_or(CodecError::TooShort)?;
            info.keyframe = is_keyframe_unit(ty);
            // Only the first fragment holds the start of the slice header.
            info.start_of_frame =
                fu_header & FU_START != 0 && may_start_access_unit(ty, Some(first_byte));
        }
        nal_type::STAP_B | nal_type::MTAP16 | nal_type::MTAP24 | nal_type::FU_B => {
            return Err(CodecError::Unsupported);
        }
        _ => return Err(CodecError::Malformed),
    }
    info.layer_keyframe = info.keyframe;
    Ok(info)
}

/// IDR slices and parameter sets make up a keyframe (see the module docs).
fn is_keyframe_unit(ty: u8) -> bool {
    matches!(ty, nal_type::IDR | nal_type::SPS | nal_type::PPS)
}

/// Whether a NAL unit of type `ty`, whose byte after the NAL header is `next`, may be the
/// first of an access unit (H.264 §7.4.1.2.3).
fn may_start_access_unit(ty: u8, next: Option<&u8>) -> bool {
    match ty {
        nal_type::SEI..=nal_type::AUD | 14..=18 => true,
        // The slice header opens with first_mb_in_slice, ue(v) coded: the value 0 is the
        // single bit '1' (H.264 §9.1), so the first slice of a picture has its top bit set.
        nal_type::SLICE | nal_type::SLICE_DATA_PARTITION_A | nal_type::IDR => {
            next.is_some_and(|b| b & 0x80 != 0)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A NAL unit header with NRI 3 (or 0 for non-reference slices and SEI).
    fn nal_header(ty: u8) -> u8 {
        let nri = if matches!(ty, 1 | 6 | 9) { 0 } else { 3 };
        nri << 5 | ty
    }

    const SPS: [u8; 8] = [0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16];
    const PPS: [u8; 4] = [0x68, 0xce, 0x3c, 0x80];
    /// IDR slice, first_mb_in_slice = 0 (top bit of the next byte set).
    const IDR: [u8; 5] = [0x65, 0x88, 0x84, 0x00, 0x33];
    /// Non-IDR slice, first_mb_in_slice = 0.
    const SLICE: [u8; 4] = [0x41, 0x9a, 0x02, 0x04];
    /// Non-IDR slice, first_mb_in_slice = 1 (ue(v) '010'): a second slice.
    const SECOND_SLICE: [u8; 4] = [0x41, 0x40, 0x02, 0x04];

    fn stap_a(units: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![nal_header(nal_type::STAP_A)];
        for u in units {
            p.extend_from_slice(&(u.len() as u16).to_be_bytes());
            p.extend_from_slice(u);
        }
        p
    }

    /// An FU-A fragment of `unit` (whose NAL header is `unit[0]`) carrying `body`.
    fn fu_a(unit: &[u8], start: bool, end: bool, body: &[u8]) -> Vec<u8> {
        let mut p = vec![
            unit[0] & 0xe0 | nal_type::FU_A,
            u8::from(start) << 7 | u8::from(end) << 6 | unit[0] & TYPE_MASK,
        ];
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn stap_a_with_sps_pps_idr_is_a_keyframe_start() {
        let p = stap_a(&[&SPS, &PPS, &IDR]);
        let info = inspect(&p, true).unwrap();
        assert!(info.keyframe && info.start_of_frame && info.end_of_frame);
        assert!(info.is_keyframe_start());
        assert_eq!(info.descriptor_len, 0);
        assert_eq!((info.picture_id, info.temporal_layer), (None, None));
    }

    #[test]
    fn stap_a_of_other_units() {
        let info = inspect(&stap_a(&[&[0x09, 0xf0], &SLICE]), false).unwrap();
        assert!(
            !info.keyframe && info.start_of_frame,
            "AUD opens an access unit"
        );
        // An IDR anywhere in the STAP-A makes it a keyframe.
        let info = inspect(&stap_a(&[&[0x06, 0x05, 0x01], &IDR]), false).unwrap();
        assert!(info.keyframe && info.start_of_frame);
        let info = inspect(&stap_a(&[&SECOND_SLICE, &SECOND_SLICE]), false).unwrap();
        assert!(!info.keyframe && !info.start_of_frame);
    }

    #[test]
    fn malformed_stap_a() {
        let good = stap_a(&[&SPS, &PPS]);
        // Truncated anywhere after the STAP-A header: size field or unit cut short.
        for cut in (1..good.len()).filter(|&c| c != 1 + 2 + SPS.len()) {
            assert_eq!(
                inspect(&good[..cut], false),
                Err(CodecError::TooShort),
                "{cut}"
            );
        }
        assert_eq!(inspect(&stap_a(&[&[]]), false), Err(CodecError::Malformed));
        for bad in [0u8, 24, 28, 31] {
            assert_eq!(
                inspect(&stap_a(&[&[bad, 1]]), false),
                Err(CodecError::Malformed)
            );
        }
    }

    #[test]
    fn single_nal_units() {
        let idr = inspect(&IDR, true).unwrap();
        assert!(idr.keyframe && idr.layer_keyframe && idr.start_of_frame && idr.end_of_frame);
        let sps = inspect(&SPS, false).unwrap();
        assert!(sps.is_keyframe_start(), "a lone SPS starts a keyframe");
        assert!(inspect(&PPS, false).unwrap().is_keyframe_start());
        let slice = inspect(&SLICE, false).unwrap();
        assert!(!slice.keyframe && slice.start_of_frame);
        let second = inspect(&SECOND_SLICE, true).unwrap();
        assert!(!second.keyframe && !second.start_of_frame);
        // End of sequence (10) has no slice header: not a start; a one-byte slice is
        // accepted but cannot be told to be a start.
        assert!(!inspect(&[0x0a], false).unwrap().start_of_frame);
        assert!(!inspect(&[0x65], false).unwrap().start_of_frame);
    }

    #[test]
    fn fu_a_fragments_of_an_idr() {
        let start = inspect(&fu_a(&IDR, true, false, &IDR[1..3]), false).unwrap();
        assert!(start.keyframe && start.start_of_frame && start.is_keyframe_start());
        let middle = inspect(&fu_a(&IDR, false, false, &[0x12, 0x34]), false).unwrap();
        assert!(middle.keyframe && !middle.start_of_frame && !middle.is_keyframe_start());
        let end = inspect(&fu_a(&IDR, false, true, &[0x56]), true).unwrap();
        assert!(end.keyframe && !end.start_of_frame && end.end_of_frame);
        // The first fragment of a second slice is not the start of the frame.
        let second = inspect(&fu_a(&SECOND_SLICE, true, false, &SECOND_SLICE[1..]), false);
        assert!(!second.unwrap().start_of_frame);
        let delta = inspect(&fu_a(&SLICE, true, false, &SLICE[1..]), false).unwrap();
        assert!(!delta.keyframe && delta.start_of_frame);
    }

    #[test]
    fn malformed_fu_a() {
        assert_eq!(inspect(&[0x7c], false), Err(CodecError::TooShort));
        assert_eq!(inspect(&[0x7c, 0x85], false), Err(CodecError::TooShort));
        for bad in [0u8, 24, 28, 29, 30, 31] {
            assert_eq!(
                inspect(&[0x7c, 0x80 | bad, 0x88], false),
                Err(CodecError::Malformed)
            );
        }
    }

    #[test]
    fn every_nal_type() {
        for ty in 0..32u8 {
            let p = [nal_header(ty), 0x80, 0x01, 0x02];
            let r = inspect(&p, false);
            match ty {
                1..=23 => {
                    let info = r.unwrap();
                    assert_eq!(info.keyframe, matches!(ty, 5 | 7 | 8), "{ty}");
                    assert_eq!(
                        info.start_of_frame,
                        matches!(ty, 1 | 2 | 5..=9 | 14..=18),
                        "{ty}"
                    );
                }
                // 0x80 0x01: size 32769, runs past the end.
                24 => assert_eq!(r, Err(CodecError::TooShort)),
                // FU header 0x80: S=1 with original type 0.
                28 => assert_eq!(r, Err(CodecError::Malformed)),
                25..=27 | 29 => assert_eq!(r, Err(CodecError::Unsupported), "{ty}"),
                _ => assert_eq!(r, Err(CodecError::Malformed), "{ty}"),
            }
        }
        assert_eq!(inspect(&[], true), Err(CodecError::TooShort));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            m in any::<bool>(),
        ) {
            if let Ok(info) = inspect(&bytes, m) {
                prop_assert_eq!(info.end_of_frame, m);
                prop_assert_eq!(info.keyframe, info.layer_keyframe);
            }
        }

        #[test]
        fn stap_a_is_key_iff_a_unit_is(types in proptest::collection::vec(1u8..=23, 1..6)) {
            let units: Vec<Vec<u8>> =
                types.iter().map(|&t| vec![nal_header(t), 0x80, 0x00]).collect();
            let refs: Vec<&[u8]> = units.iter().map(Vec::as_slice).collect();
            let info = inspect(&stap_a(&refs), false).unwrap();
            prop_assert_eq!(info.keyframe, types.iter().any(|t| matches!(t, 5 | 7 | 8)));
        }
    }
}
