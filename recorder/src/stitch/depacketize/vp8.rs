//! VP8 (RFC 7741): the payload descriptor (§4.2) is stripped from every packet and the
//! rest concatenated; the first packet of a frame has S=1 and PID=0 (§4.2), and the VP8
//! payload header it starts with (§4.3, the frame tag of RFC 6386 §9.1) says whether the
//! frame is a key frame. The descriptor is read by the forwarder's parser
//! ([`fanout_forwarder::codec::vp8::inspect`]), which, like libwebrtc, refuses a key frame
//! whose first packet does not hold the whole 10-byte key frame header.
//!
//! ```text
//!      |X|R|N|S|R| PID |      X: |I|L|T|K| RSV |      I: |M| PictureID (7 or 15 bits)
//!      L: TL0PICIDX           T/K: |TID|Y| KEYIDX|
//! ```

use fanout_forwarder::codec::vp8;

use super::{DepacketizeError, VideoDepacketizer, VideoFrame};

/// RFC 6386 §9.1: frame tag bit 0 is the *inverse* key frame flag.
const INVERSE_KEY_FRAME: u8 = 0x01;
/// A key frame begins with the 3-byte frame tag, the start code 9d 01 2a and two 16-bit
/// dimensions (14 bits of size, 2 of scale).
const KEY_FRAME_START_CODE: [u8; 3] = [0x9d, 0x01, 0x2a];
const KEY_FRAME_HEADER_LEN: usize = 10;

/// Width and height of a VP8 key frame (RFC 6386 §9.1), `None` for an inter frame or a
/// key frame without the start code.
pub fn key_frame_dimensions(frame: &[u8]) -> Option<(u16, u16)> {
    let header = frame.get(..KEY_FRAME_HEADER_LEN)?;
    if header[0] & INVERSE_KEY_FRAME != 0 || header[3..6] != KEY_FRAME_START_CODE {
        return None;
    }
    let width = u16::from_le_bytes([header[6], header[7]]) & 0x3fff;
    let height = u16::from_le_bytes([header[8], header[9]]) & 0x3fff;
    Some((width, height))
}

/// The VP8 depacketizer (stateless).
#[derive(Debug, Default)]
pub struct Vp8Depacketizer;

impl VideoDepacketizer for Vp8Depacketizer {
    fn starts_frame(&self, payload: &[u8]) -> bool {
        vp8::inspect(payload, false).is_ok_and(|info| info.start_of_frame)
    }

    fn frame(&mut self, payloads: &[&[u8]]) -> Result<VideoFrame, DepacketizeError> {
        let mut data = Vec::with_capacity(payloads.iter().map(|p| p.len()).sum());
        for (index, payload) in payloads.iter().enumerate() {
            // The marker does not matter here: the assembler has framed the packets.
            let info = vp8::inspect(payload, false)?;
            if index == 0 && !info.start_of_frame {
                return Err(DepacketizeError::Malformed);
            }
            data.extend_from_slice(payload.get(info.descriptor_len..).unwrap_or_default());
        }
        let tag = *data.first().ok_or(DepacketizeError::Empty)?;
        let keyframe = tag & INVERSE_KEY_FRAME == 0;
        let dimensions = key_frame_dimensions(&data);
        if keyframe && dimensions.is_none() {
            // A key frame a decoder cannot even size: refuse it rather than feed it.
            return Err(DepacketizeError::Malformed);
        }
        Ok(VideoFrame {
            data,
            keyframe,
            dimensions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The start of a 640x480 key frame as libvpx writes it.
    const KEY_FRAME: [u8; 12] = [
        0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, 0x39, 0x6b,
    ];
    const DELTA_FRAME: [u8; 6] = [0x31, 0x0c, 0x00, 0x11, 0xec, 0xd4];

    #[test]
    fn ffmpeg_style_key_frame_over_two_packets() {
        // FFmpeg's packetizer: X=1 S=1, I=1, 15-bit picture id; then X=1 S=0.
        let mut first = vec![0x90, 0x80, 0x81, 0x2c];
        first.extend_from_slice(&KEY_FRAME[..10]);
        let mut second = vec![0x80, 0x80, 0x81, 0x2c];
        second.extend_from_slice(&KEY_FRAME[10..]);
        let mut depacketizer = Vp8Depacketizer;
        assert!(depacketizer.starts_frame(&first));
        assert!(!depacketizer.starts_frame(&second));
        let frame = depacketizer.frame(&[&first, &second]).unwrap();
        assert_eq!(frame.data, KEY_FRAME);
        assert!(frame.keyframe);
        assert_eq!(frame.dimensions, Some((640, 480)));
        // A first packet cut inside the key frame header: refused, as it is forwarded.
        let mut cut = vec![0x90, 0x80, 0x81, 0x2c];
        cut.extend_from_slice(&KEY_FRAME[..7]);
        assert!(!depacketizer.starts_frame(&cut));
        assert_eq!(
            depacketizer.frame(&[&cut, &second]),
            Err(DepacketizeError::TooShort)
        );
    }

    #[test]
    fn all_descriptor_fields_are_skipped() {
        // X, I (7-bit id), L, T and K: descriptor of 5 octets.
        let mut payload = vec![0x90, 0xf0, 0x05, 0x07, 0x40];
        payload.extend_from_slice(&DELTA_FRAME);
        let frame = Vp8Depacketizer.frame(&[&payload]).unwrap();
        assert_eq!(frame.data, DELTA_FRAME);
        assert!(!frame.keyframe);
        // Minimal descriptor.
        let mut payload = vec![0x10];
        payload.extend_from_slice(&DELTA_FRAME);
        assert_eq!(
            Vp8Depacketizer.frame(&[&payload]).unwrap().data,
            DELTA_FRAME
        );
    }

    #[test]
    fn refuses_frames_without_start_truncated_or_empty() {
        assert_eq!(
            Vp8Depacketizer.frame(&[&[0x00, 0x31]]),
            Err(DepacketizeError::Malformed)
        );
        assert_eq!(
            Vp8Depacketizer.frame(&[&[0x90, 0x80]]),
            Err(DepacketizeError::TooShort)
        );
        assert_eq!(
            Vp8Depacketizer.frame(&[&[0x10]]),
            Err(DepacketizeError::TooShort)
        );
        // A "key frame" without the start code.
        assert_eq!(
            Vp8Depacketizer.frame(&[&[0x10, 0x50, 0, 0, 1, 2, 3, 4, 5, 6, 7]]),
            Err(DepacketizeError::Malformed)
        );
        assert_eq!(Vp8Depacketizer.frame(&[]), Err(DepacketizeError::Empty));
    }

    proptest! {
        #[test]
        fn random_payloads_never_panic(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..5)) {
            let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            let mut depacketizer = Vp8Depacketizer;
            for p in &refs {
                let _ = depacketizer.starts_frame(p);
            }
            if let Ok(frame) = depacketizer.frame(&refs) {
                prop_assert!(!frame.data.is_empty());
                prop_assert!(frame.data.len() <= refs.iter().map(|p| p.len()).sum::<usize>());
            }
        }
    }
}
