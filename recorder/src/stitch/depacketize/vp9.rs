//! VP9 (RFC 9628), flexible and non-flexible mode.
//!
//! ```text
//!      |I|P|L|F|B|E|V|Z|     I: |M| PICTURE ID (7/15) |   L: |TID|U| SID |D|  (+TL0PICIDX if F=0)
//!      F=1,P=1: up to 3 × |P_DIFF|N|                   V: scalability structure (§4.2.1)
//! ```
//!
//! B and E delimit a *layer frame* (one spatial layer of a picture); the RTP marker bit
//! ends the picture. **Spatial layers:** a picture is kept whole, every spatial layer the
//! sender put in it, as a VP9 superframe (VP9 bitstream specification, Annex B) — the
//! form libvpx itself writes and decoders take: they decode every layer and show the
//! highest. Keeping only the highest layer would not decode, since upper layers predict
//! from the lower ones (D=1) and from their own earlier frames. A picture is complete only
//! with all its packets; a partly received picture is dropped like any incomplete frame.
//!
//! The key-frame decision reads the bitstream, not the descriptor's P bit: P=0 also marks
//! intra-only frames, where a decoder without state cannot start. The descriptor (with
//! its reference indices and scalability structure) is read by the forwarder's parser
//! ([`fanout_forwarder::codec::vp9::inspect`]).

use std::ops::Range;

use fanout_forwarder::codec::vp9;

use super::{DepacketizeError, VideoDepacketizer, VideoFrame};

/// Annex B: a superframe holds at most 8 frames; its index starts and ends with a marker
/// byte `110 SS FFF` (SS+1 bytes per size, FFF+1 frames).
const MAX_SUPERFRAME_FRAMES: usize = 8;
const SUPERFRAME_MARKER_MASK: u8 = 0xe0;
const SUPERFRAME_MARKER: u8 = 0xc0;
/// §7.2: the key frame sync code.
const SYNC_CODE: u32 = 0x49_83_42;
/// §7.2 color_config: color space 7 is RGB.
const CS_RGB: u32 = 7;

/// The frames of a superframe (Annex B), or the whole buffer as one frame when it has no
/// valid superframe index.
pub fn superframe_frames(data: &[u8]) -> Vec<Range<usize>> {
    #[allow(clippy::single_range_in_vec_init)] // one range: the whole buffer is one frame
    let whole = vec![0..data.len()];
    let Some(&marker) = data.last() else {
        return whole;
    };
    if marker & SUPERFRAME_MARKER_MASK != SUPERFRAME_MARKER {
        return whole;
    }
    let size_bytes = usize::from((marker >> 3) & 0x03) + 1;
    let frames = usize::from(marker & 0x07) + 1;
    let index_len = 2 + size_bytes * frames;
    let Some(index_start) = data.len().checked_sub(index_len) else {
        return whole;
    };
    if data[index_start] != marker {
        return whole;
    }
    let mut ranges = Vec::with_capacity(frames);
    let mut offset = 0usize;
    for size in data[index_start + 1..data.len() - 1].chunks_exact(size_bytes) {
        let size = size
            .iter()
            .rev()
            .fold(0usize, |acc, &b| acc << 8 | usize::from(b));
        let end = offset.saturating_add(size);
        if end > index_start {
            return whole;
        }
        ranges.push(offset..end);
        offset = end;
    }
    ranges
}

/// Joins frames into one superframe with an index (Annex B).
fn build_superframe(frames: &[&[u8]]) -> Result<Vec<u8>, DepacketizeError> {
    if frames.len() > MAX_SUPERFRAME_FRAMES || frames.is_empty() {
        return Err(DepacketizeError::Malformed);
    }
    let largest = frames.iter().map(|f| f.len()).max().unwrap_or(0);
    let size_bytes = match largest {
        0..=0xff => 1,
        0x100..=0xffff => 2,
        0x1_0000..=0xff_ffff => 3,
        _ => 4,
    };
    let marker = SUPERFRAME_MARKER | ((size_bytes - 1) << 3) as u8 | (frames.len() - 1) as u8;
    let mut data =
        Vec::with_capacity(frames.iter().map(|f| f.len()).sum::<usize>() + 2 + 4 * frames.len());
    for frame in frames {
        data.extend_from_slice(frame);
    }
    data.push(marker);
    for frame in frames {
        let size = u32::try_from(frame.len()).map_err(|_| DepacketizeError::Malformed)?;
        data.extend_from_slice(&size.to_le_bytes()[..size_bytes]);
    }
    data.push(marker);
    Ok(data)
}

/// MSB-first bit reader over the uncompressed header.
struct Bits<'a> {
    data: &'a [u8],
    at: usize,
}

impl Bits<'_> {
    fn read(&mut self, bits: u32) -> Option<u32> {
        let mut value = 0;
        for _ in 0..bits {
            let byte = *self.data.get(self.at / 8)?;
            value = value << 1 | u32::from(byte >> (7 - self.at % 8) & 1);
            self.at += 1;
        }
        Some(value)
    }
}

/// Reads the uncompressed header of one VP9 frame (§6.2): `Some(dimensions)` for a key
/// frame, `None` for anything else (inter, intra-only, show-existing, or unreadable).
pub fn key_frame_dimensions(frame: &[u8]) -> Option<(u16, u16)> {
    let mut bits = Bits { data: frame, at: 0 };
    if bits.read(2)? != 2 {
        return None; // frame_marker
    }
    let profile_low = bits.read(1)?;
    let profile = bits.read(1)? << 1 | profile_low;
    if profile == 3 {
        bits.read(1)?; // reserved_zero
    }
    if bits.read(1)? == 1 {
        return None; // show_existing_frame
    }
    if bits.read(1)? != 0 {
        return None; // frame_type: NON_KEY_FRAME
    }
    bits.read(2)?; // show_frame, error_resilient_mode
    if bits.read(24)? != SYNC_CODE {
        return None;
    }
    if profile >= 2 {
        bits.read(1)?; // ten_or_twelve_bit
    }
    let color_space = bits.read(3)?;
    if color_space != CS_RGB {
        bits.read(1)?; // color_range
        if profile == 1 || profile == 3 {
            bits.read(3)?; // subsampling_x, subsampling_y, reserved_zero
        }
    } else if profile == 1 || profile == 3 {
        bits.read(1)?; // reserved_zero
    }
    let width = bits.read(16)? + 1;
    let height = bits.read(16)? + 1;
    Some((u16::try_from(width).ok()?, u16::try_from(height).ok()?))
}

/// The VP9 depacketizer (stateless).
#[derive(Debug, Default)]
pub struct Vp9Depacketizer;

impl VideoDepacketizer for Vp9Depacketizer {
    fn starts_frame(&self, payload: &[u8]) -> bool {
        vp9::inspect(payload)
            .is_ok_and(|info| info.start_of_frame && info.spatial_layer.unwrap_or(0) == 0)
    }

    fn frame(&mut self, payloads: &[&[u8]]) -> Result<VideoFrame, DepacketizeError> {
        // Layer frames of the picture, each the concatenated data of its packets.
        let mut layer_frames: Vec<Vec<u8>> = Vec::new();
        let mut open = false;
        for payload in payloads {
            let info = vp9::inspect(payload)?;
            // B and E delimit a layer frame.
            if info.start_of_frame {
                if open {
                    return Err(DepacketizeError::Malformed); // E missing before a new B
                }
                layer_frames.push(Vec::new());
                open = true;
            }
            let current = layer_frames
                .last_mut()
                .filter(|_| open)
                .ok_or(DepacketizeError::Malformed)?;
            current.extend_from_slice(payload.get(info.descriptor_len..).unwrap_or_default());
            if info.end_of_frame {
                open = false;
            }
        }
        // The marker bit closes the last layer frame even if a sender left E unset.
        if layer_frames.iter().any(Vec::is_empty) || layer_frames.is_empty() {
            return Err(DepacketizeError::Empty);
        }
        let data = if layer_frames.len() == 1 {
            layer_frames.pop().unwrap_or_default()
        } else {
            // Each layer frame may itself be a superframe (a hidden frame with a shown
            // one): flatten, then index them all.
            let mut frames: Vec<&[u8]> = Vec::new();
            for layer in &layer_frames {
                frames.extend(superframe_frames(layer).into_iter().map(|r| &layer[r]));
            }
            build_superframe(&frames)?
        };
        let first_frame = superframe_frames(&data)
            .into_iter()
            .next()
            .map_or(&data[..0], |r| &data[r]);
        let dimensions = key_frame_dimensions(first_frame);
        Ok(VideoFrame {
            keyframe: dimensions.is_some(),
            dimensions,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The descriptor's first octet (RFC 9628 §4.2, `I|P|L|F|B|E|V|Z`) with the named
    /// bits set: `flags("ILBV")`.
    fn flags(set: &str) -> u8 {
        set.chars()
            .map(|bit| 0x80 >> "IPLFBEVZ".find(bit).unwrap())
            .fold(0, |octet, bit| octet | bit)
    }

    /// A profile 0 key frame header of 352x288: frame_marker 2, profile 0, show_existing
    /// 0, frame_type 0, show_frame 1, error_res 0, sync code, color space 2 (BT.709),
    /// color_range 0, width-1 = 351, height-1 = 287; then some payload.
    fn key_frame() -> Vec<u8> {
        let mut bits = String::from("10" /* marker */);
        bits += "00"; // profile 0
        bits += "0"; // show_existing_frame
        bits += "0"; // frame_type KEY_FRAME
        bits += "10"; // show_frame, error_resilient
        bits += &format!("{:024b}", SYNC_CODE);
        bits += "010"; // color_space
        bits += "0"; // color_range
        bits += &format!("{:016b}{:016b}", 351, 287);
        while bits.len() % 8 != 0 {
            bits.push('0');
        }
        let mut bytes: Vec<u8> = bits
            .as_bytes()
            .chunks(8)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 2).unwrap())
            .collect();
        bytes.extend_from_slice(&[0xab; 20]);
        bytes
    }

    /// An inter frame: frame_type 1.
    const INTER_FRAME: [u8; 4] = [0x86, 0x00, 0x40, 0x92];

    #[test]
    fn reads_key_frame_header() {
        assert_eq!(key_frame_dimensions(&key_frame()), Some((352, 288)));
        assert_eq!(key_frame_dimensions(&INTER_FRAME), None);
        assert_eq!(key_frame_dimensions(&[]), None);
    }

    #[test]
    fn non_flexible_single_layer_over_two_packets() {
        let key = key_frame();
        // I=1 (15-bit id), L=1, B=1, V=1 with SS (1 layer, Y=1: 352x288, no G).
        let mut first = vec![
            flags("ILBV"),
            0x80,
            0x05,
            0x00,
            0x07,
            0x10,
            0x01,
            0x60,
            0x01,
            0x20,
        ];
        first.extend_from_slice(&key[..10]);
        let mut second = vec![flags("ILE"), 0x80, 0x05, 0x00, 0x07];
        second.extend_from_slice(&key[10..]);
        let mut depacketizer = Vp9Depacketizer;
        assert!(depacketizer.starts_frame(&first));
        assert!(!depacketizer.starts_frame(&second));
        let frame = depacketizer.frame(&[&first, &second]).unwrap();
        assert_eq!(frame.data, key);
        assert!(frame.keyframe);
        assert_eq!(frame.dimensions, Some((352, 288)));
    }

    #[test]
    fn flexible_mode_two_spatial_layers_become_a_superframe() {
        // Picture of SID 0 (inter, 2 references) and SID 1 (inter, inter-layer dep).
        let base = [flags("IPLFBE"), 0x12, 0x00, 0x03, 0x04];
        let upper = [flags("IPLFBE"), 0x12, 0x03, 0x02];
        let mut p0 = base.to_vec();
        p0.extend_from_slice(&INTER_FRAME);
        let mut p1 = upper.to_vec();
        p1.extend_from_slice(&[0x86, 0x11, 0x22]);
        let mut depacketizer = Vp9Depacketizer;
        assert!(depacketizer.starts_frame(&p0));
        assert!(
            !depacketizer.starts_frame(&p1),
            "an upper layer frame does not start a picture"
        );
        let frame = depacketizer.frame(&[&p0, &p1]).unwrap();
        assert!(!frame.keyframe);
        let ranges = superframe_frames(&frame.data);
        assert_eq!(ranges, vec![0..4, 4..7]);
        assert_eq!(&frame.data[ranges[0].clone()], &INTER_FRAME);
        assert_eq!(&frame.data[7..], &[0xc1, 4, 3, 0xc1]);
    }

    #[test]
    fn key_picture_with_layers_is_a_keyframe() {
        let key = key_frame();
        let mut p0 = vec![flags("LBE"), 0x00, 0x00];
        p0.extend_from_slice(&key);
        let mut p1 = vec![flags("LBE"), 0x03, 0x00];
        p1.extend_from_slice(&INTER_FRAME);
        let frame = Vp9Depacketizer.frame(&[&p0, &p1]).unwrap();
        assert!(frame.keyframe);
    }

    #[test]
    fn refuses_broken_layer_framing() {
        // Continuation without a begin; a begin while a layer frame is open; empty.
        assert_eq!(
            Vp9Depacketizer.frame(&[&[flags("E"), 1]]),
            Err(DepacketizeError::Malformed)
        );
        assert_eq!(
            Vp9Depacketizer.frame(&[&[flags("B"), 1], &[flags("BE"), 2]]),
            Err(DepacketizeError::Malformed)
        );
        assert_eq!(
            Vp9Depacketizer.frame(&[&[flags("BE")]]),
            Err(DepacketizeError::Empty)
        );
        // Four reference indices.
        assert_eq!(
            Vp9Depacketizer.frame(&[&[flags("PFBE"), 3, 3, 3, 3, 0]]),
            Err(DepacketizeError::Malformed)
        );
        // Scalability structure running past the end.
        assert_eq!(
            Vp9Depacketizer.frame(&[&[flags("VBE"), 0xf0, 0]]),
            Err(DepacketizeError::TooShort)
        );
    }

    proptest! {
        #[test]
        fn random_payloads_never_panic(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6)) {
            let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            for p in &refs {
                let _ = Vp9Depacketizer.starts_frame(p);
                let _ = superframe_frames(p);
                let _ = key_frame_dimensions(p);
            }
            if let Ok(frame) = Vp9Depacketizer.frame(&refs) {
                prop_assert!(!frame.data.is_empty());
            }
        }

        #[test]
        fn superframes_round_trip(frames in proptest::collection::vec(proptest::collection::vec(1u8..0xc0, 1..300), 2..8)) {
            let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            let data = build_superframe(&refs).unwrap();
            let parts: Vec<&[u8]> = superframe_frames(&data).into_iter().map(|r| &data[r]).collect();
            prop_assert_eq!(parts, refs);
        }
    }
}
