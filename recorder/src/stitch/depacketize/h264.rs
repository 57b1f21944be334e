//! H.264 (RFC 6184) in packetization modes 0 and 1: single NAL unit packets (types 1-23,
//! §5.6), STAP-A (24, §5.7.1) and FU-A (28, §5.8). The interleaved mode's STAP-B, MTAP
//! and FU-B are refused as [`DepacketizeError::Unsupported`].
//!
//! A frame comes out as an Annex B access unit (start code `00 00 00 01` before each NAL
//! unit). A decoder can only start at an IDR picture if it has the sequence and picture
//! parameter sets, which encoders send just before IDRs but which may be lost or sent
//! only once: the depacketizer remembers the last SPS and PPS it saw and puts them in
//! front of an IDR access unit that lacks them. An IDR with no parameter sets ever seen
//! is not a keyframe (a decoder could not start there). Only one SPS and one PPS are
//! remembered (the last of each), which is what WebRTC senders use. Where an access unit
//! may begin is the forwarder's reading ([`fanout_forwarder::codec::h264::inspect`]).

use fanout_forwarder::codec::h264::{self, nal_type};

use super::{DepacketizeError, VideoDepacketizer, VideoFrame};

const TYPE_MASK: u8 = 0x1f;
/// The F and NRI bits of a NAL unit header, which an FU indicator carries for the
/// fragmented unit.
const F_NRI_MASK: u8 = 0xe0;
/// FU header: S (start) and E (end) of the fragmented NAL unit.
const FU_START: u8 = 0x80;
const FU_END: u8 = 0x40;
const START_CODE: [u8; 4] = [0, 0, 0, 1];
/// Parameter sets larger than this are not remembered (real ones are tens of bytes).
const MAX_PARAMETER_SET_BYTES: usize = 4096;

/// Splits the payloads of one access unit into NAL units (without start codes).
pub fn nal_units(payloads: &[&[u8]]) -> Result<Vec<Vec<u8>>, DepacketizeError> {
    let mut units: Vec<Vec<u8>> = Vec::new();
    // An FU-A being reassembled.
    let mut fragmented: Option<Vec<u8>> = None;
    for payload in payloads {
        let (&header, rest) = payload.split_first().ok_or(DepacketizeError::TooShort)?;
        let ty = header & TYPE_MASK;
        if ty != nal_type::FU_A && fragmented.is_some() {
            return Err(DepacketizeError::Malformed); // FU-A without its end fragment
        }
        match ty {
            1..=23 => units.push(payload.to_vec()),
            nal_type::STAP_A => {
                let mut rest = rest;
                if rest.is_empty() {
                    return Err(DepacketizeError::TooShort);
                }
                while !rest.is_empty() {
                    let (size, tail) = rest
                        .split_first_chunk::<2>()
                        .ok_or(DepacketizeError::TooShort)?;
                    let size = usize::from(u16::from_be_bytes(*size));
                    let unit = tail.get(..size).ok_or(DepacketizeError::TooShort)?;
                    let unit_type = unit.first().ok_or(DepacketizeError::Malformed)? & TYPE_MASK;
                    if !(1..=23).contains(&unit_type) {
                        return Err(DepacketizeError::Malformed);
                    }
                    units.push(unit.to_vec());
                    rest = &tail[size..];
                }
            }
            nal_type::FU_A => {
                let (&fu_header, fragment) =
                    rest.split_first().ok_or(DepacketizeError::TooShort)?;
                let unit_type = fu_header & TYPE_MASK;
                if !(1..=23).contains(&unit_type) || fragment.is_empty() {
                    return Err(DepacketizeError::Malformed);
                }
                match (&mut fragmented, fu_header & FU_START != 0) {
                    (None, true) => {
                        let mut unit = vec![header & F_NRI_MASK | unit_type];
                        unit.extend_from_slice(fragment);
                        fragmented = Some(unit);
                    }
                    (Some(unit), false) => unit.extend_from_slice(fragment),
                    // A start inside a unit, or a continuation without a start.
                    _ => return Err(DepacketizeError::Malformed),
                }
                if fu_header & FU_END != 0 {
                    units.extend(fragmented.take());
                }
            }
            nal_type::STAP_B | nal_type::MTAP16 | nal_type::MTAP24 | nal_type::FU_B => {
                return Err(DepacketizeError::Unsupported)
            }
            _ => return Err(DepacketizeError::Malformed),
        }
    }
    if fragmented.is_some() {
        return Err(DepacketizeError::Malformed);
    }
    Ok(units)
}

/// The H.264 depacketizer; remembers the last parameter sets.
#[derive(Debug, Default)]
pub struct H264Depacketizer {
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
}

impl VideoDepacketizer for H264Depacketizer {
    fn starts_frame(&self, payload: &[u8]) -> bool {
        // The forwarder's reading of the NAL unit headers (H.264 §7.4.1.2.3): an access
        // unit delimiter, SEI, parameter set, or the first slice of a picture.
        h264::inspect(payload, false).is_ok_and(|info| info.start_of_frame)
    }

    fn frame(&mut self, payloads: &[&[u8]]) -> Result<VideoFrame, DepacketizeError> {
        let units = nal_units(payloads)?;
        if units.is_empty() {
            return Err(DepacketizeError::Empty);
        }
        let has = |ty: u8| units.iter().any(|u| u[0] & TYPE_MASK == ty);
        let (has_sps, has_pps, has_idr) =
            (has(nal_type::SPS), has(nal_type::PPS), has(nal_type::IDR));
        for unit in &units {
            let slot = match unit[0] & TYPE_MASK {
                nal_type::SPS => &mut self.sps,
                nal_type::PPS => &mut self.pps,
                _ => continue,
            };
            if unit.len() <= MAX_PARAMETER_SET_BYTES {
                *slot = Some(unit.clone());
            }
        }
        let mut data = Vec::with_capacity(
            units
                .iter()
                .map(|u| u.len() + START_CODE.len())
                .sum::<usize>()
                + 64,
        );
        let mut keyframe = false;
        if has_idr {
            // Parameter sets go first, after an access unit delimiter if there is one.
            let mut prefix: Vec<&[u8]> = Vec::new();
            if !has_sps {
                prefix.extend(self.sps.as_deref());
            }
            if !has_pps {
                prefix.extend(self.pps.as_deref());
            }
            keyframe = self.sps.is_some() && self.pps.is_some();
            let delimiter = usize::from(units[0][0] & TYPE_MASK == nal_type::AUD);
            for unit in units[..delimiter]
                .iter()
                .map(Vec::as_slice)
                .chain(prefix)
                .chain(units[delimiter..].iter().map(Vec::as_slice))
            {
                data.extend_from_slice(&START_CODE);
                data.extend_from_slice(unit);
            }
        } else {
            for unit in &units {
                data.extend_from_slice(&START_CODE);
                data.extend_from_slice(unit);
            }
        }
        Ok(VideoFrame {
            data,
            keyframe,
            dimensions: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SPS: [u8; 5] = [0x67, 0x42, 0xc0, 0x1e, 0xda];
    const PPS: [u8; 4] = [0x68, 0xce, 0x3c, 0x80];
    /// IDR slice, first_mb_in_slice = 0 (first payload bit 1).
    const IDR: [u8; 6] = [0x65, 0x88, 0x84, 0x00, 0x33, 0xff];
    const SLICE: [u8; 4] = [0x41, 0x9a, 0x02, 0x04];

    fn annex_b(units: &[&[u8]]) -> Vec<u8> {
        units
            .iter()
            .flat_map(|u| START_CODE.iter().chain(u.iter()).copied())
            .collect()
    }

    fn stap_a(units: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![0x78];
        for u in units {
            p.extend_from_slice(&(u.len() as u16).to_be_bytes());
            p.extend_from_slice(u);
        }
        p
    }

    #[test]
    fn stap_a_with_parameter_sets_and_idr() {
        let mut depacketizer = H264Depacketizer::default();
        let packet = stap_a(&[&SPS, &PPS, &IDR]);
        assert!(depacketizer.starts_frame(&packet));
        let frame = depacketizer.frame(&[&packet]).unwrap();
        assert_eq!(frame.data, annex_b(&[&SPS, &PPS, &IDR]));
        assert!(frame.keyframe);
    }

    #[test]
    fn fu_a_fragments_are_rejoined() {
        // IDR (NRI 3) split in three fragments: indicator 0x7c = F0 NRI3 type 28.
        let f1 = [0x7c, 0x80 | 5, 0x88, 0x84];
        let f2 = [0x7c, 5, 0x00];
        let f3 = [0x7c, 0x40 | 5, 0x33, 0xff];
        let mut depacketizer = H264Depacketizer::default();
        assert!(depacketizer.starts_frame(&f1));
        assert!(!depacketizer.starts_frame(&f2));
        // Without parameter sets ever seen, the IDR is not a keyframe.
        let frame = depacketizer.frame(&[&f1, &f2, &f3]).unwrap();
        assert_eq!(frame.data, annex_b(&[&IDR]));
        assert!(!frame.keyframe);
        // Once SPS and PPS have been seen (in their own packets), a later IDR gets them.
        depacketizer.frame(&[&SPS, &PPS, &SLICE]).unwrap();
        let frame = depacketizer.frame(&[&f1, &f2, &f3]).unwrap();
        assert_eq!(frame.data, annex_b(&[&SPS, &PPS, &IDR]));
        assert!(frame.keyframe);
    }

    #[test]
    fn parameter_sets_go_after_an_access_unit_delimiter() {
        let aud = [0x09, 0xf0];
        let mut depacketizer = H264Depacketizer::default();
        depacketizer.frame(&[&SPS, &PPS]).unwrap();
        let frame = depacketizer.frame(&[&aud, &IDR]).unwrap();
        assert_eq!(frame.data, annex_b(&[&aud, &SPS, &PPS, &IDR]));
    }

    #[test]
    fn single_nal_units_and_refusals() {
        let mut depacketizer = H264Depacketizer::default();
        assert!(depacketizer.starts_frame(&SLICE));
        assert!(
            !depacketizer.starts_frame(&[0x41, 0x40]),
            "a second slice of a picture"
        );
        let frame = depacketizer.frame(&[&SLICE]).unwrap();
        assert_eq!(frame.data, annex_b(&[&SLICE]));
        assert!(!frame.keyframe);
        assert_eq!(
            depacketizer.frame(&[&[0x7c, 0x05, 1]]),
            Err(DepacketizeError::Malformed),
            "FU-A without start"
        );
        assert_eq!(
            depacketizer.frame(&[&[0x7c, 0x85, 1]]),
            Err(DepacketizeError::Malformed),
            "FU-A without end"
        );
        assert_eq!(
            depacketizer.frame(&[&[0x79, 0, 0]]),
            Err(DepacketizeError::Unsupported),
            "STAP-B"
        );
        assert_eq!(
            depacketizer.frame(&[&[0x78, 0, 9, 0x41]]),
            Err(DepacketizeError::TooShort)
        );
        assert_eq!(
            depacketizer.frame(&[&[0x00]]),
            Err(DepacketizeError::Malformed)
        );
        assert_eq!(depacketizer.frame(&[]), Err(DepacketizeError::Empty));
    }

    proptest! {
        #[test]
        fn random_payloads_never_panic(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6)) {
            let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            let mut depacketizer = H264Depacketizer::default();
            for p in &refs {
                let _ = depacketizer.starts_frame(p);
            }
            if let Ok(frame) = depacketizer.frame(&refs) {
                prop_assert!(frame.data.starts_with(&START_CODE));
            }
        }
    }
}
