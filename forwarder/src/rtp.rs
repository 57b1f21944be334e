//! RTP fixed header view and in-place rewriting (RFC 3550 §5.1).
//!
//! The forwarder never builds RTP packets from scratch: it receives them, looks at a few
//! header fields, rewrites SSRC / sequence number / timestamp / payload type for each
//! subscription, and sends them on. So this module is a validated *view* ([`RtpHeader`])
//! plus setters that patch the bytes in place.
//!
//! Everything here takes network input and is total: no function panics on any input
//! (checked by the property tests at the end of the file).

use crate::ids::{SeqNo, Ssrc};
use std::ops::Range;

/// Length of the RTP fixed header (RFC 3550 §5.1): everything up to and including the SSRC.
pub const FIXED_HEADER_LEN: usize = 12;

/// The only RTP version in use (RFC 3550 §5.1, V field).
pub const RTP_VERSION: u8 = 2;

/// RFC 8285 §4.2: "defined by profile" value of the one-byte header extension form.
pub const EXTENSION_PROFILE_ONE_BYTE: u16 = 0xBEDE;

/// RFC 8285 §4.3: the two-byte header extension form uses 0x100X (X: app bits).
pub const EXTENSION_PROFILE_TWO_BYTE_MASK: u16 = 0xFFF0;
/// See [`EXTENSION_PROFILE_TWO_BYTE_MASK`].
pub const EXTENSION_PROFILE_TWO_BYTE: u16 = 0x1000;

/// Why a datagram is not a usable RTP packet.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// Shorter than the 12-byte fixed header.
    #[error("packet shorter than the RTP fixed header")]
    TooShort,
    /// The V field is not 2.
    #[error("RTP version is not 2")]
    BadVersion,
    /// The CSRC list announced by CC does not fit in the packet.
    #[error("CSRC list runs past the end of the packet")]
    CsrcListTruncated,
    /// The header extension announced by X (or its length word) does not fit in the packet.
    #[error("header extension runs past the end of the packet")]
    ExtensionTruncated,
    /// P is set but the padding count is 0 or larger than the payload.
    #[error("invalid RTP padding count")]
    BadPadding,
}

/// Validated view of an RTP fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// M bit.
    pub marker: bool,
    /// PT field (7 bits).
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: SeqNo,
    /// Media timestamp.
    pub timestamp: u32,
    /// Synchronization source.
    pub ssrc: Ssrc,
    /// CC field: number of CSRCs following the fixed header.
    pub csrc_count: u8,
    /// X bit: a header extension follows the CSRC list.
    pub has_extension: bool,
    /// P bit: the last payload octet counts padding octets.
    pub has_padding: bool,
    /// bytes of fixed header + CSRCs + extension (where the payload starts)
    pub header_len: usize,
}

impl RtpHeader {
    /// Parses and validates the header of `packet` (RFC 3550 §5.1, §5.3.1).
    ///
    /// Checks the version, and that the CSRC list and the header extension (whatever its
    /// profile: RFC 8285 one-byte 0xBEDE, two-byte 0x100X, or another) fit in the packet.
    /// It does not validate padding: see [`payload_range`], because SRTP encrypts the padding
    /// and it can only be checked after decryption.
    pub fn parse(packet: &[u8]) -> Result<RtpHeader, RtpError> {
        let fixed: &[u8; FIXED_HEADER_LEN] = packet
            .get(..FIXED_HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(RtpError::TooShort)?;
        let b0 = fixed[0];
        if b0 >> 6 != RTP_VERSION {
            return Err(RtpError::BadVersion);
        }
        let has_padding = b0 & 0x20 != 0;
        let has_extension = b0 & 0x10 != 0;
        let csrc_count = b0 & 0x0f;
        let mut header_len = FIXED_HEADER_LEN + 4 * usize::from(csrc_count);
        if header_len > packet.len() {
            return Err(RtpError::CsrcListTruncated);
        }
        if has_extension {
            // RFC 3550 §5.3.1: 16-bit profile-defined word, 16-bit length in 32-bit words
            // (not counting the 4-byte extension header itself).
            let ext = packet
                .get(header_len..header_len + 4)
                .ok_or(RtpError::ExtensionTruncated)?;
            let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
            header_len += 4 + 4 * words;
            if header_len > packet.len() {
                return Err(RtpError::ExtensionTruncated);
            }
        }
        Ok(RtpHeader {
            marker: fixed[1] & 0x80 != 0,
            payload_type: fixed[1] & 0x7f,
            sequence: SeqNo(u16::from_be_bytes([fixed[2], fixed[3]])),
            timestamp: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
            ssrc: Ssrc(u32::from_be_bytes([
                fixed[8], fixed[9], fixed[10], fixed[11],
            ])),
            csrc_count,
            has_extension,
            has_padding,
            header_len,
        })
    }
}

/// The header extension of a parsed packet: its 16-bit profile word and its data (RFC 3550
/// §5.3.1). `None` if X is not set or `header` does not describe `packet`.
pub fn extension<'a>(packet: &'a [u8], header: &RtpHeader) -> Option<(u16, &'a [u8])> {
    if !header.has_extension {
        return None;
    }
    let start = FIXED_HEADER_LEN + 4 * usize::from(header.csrc_count);
    let ext = packet.get(start..header.header_len)?;
    let profile = u16::from_be_bytes([*ext.first()?, *ext.get(1)?]);
    Some((profile, ext.get(4..)?))
}

/// Iterates over the elements of an RFC 8285 header extension, yielding `(id, data)`.
///
/// Handles the one-byte (0xBEDE, §4.2) and two-byte (0x100X, §4.3) forms, skips padding
/// bytes, and stops at the reserved id 15 of the one-byte form or at a truncated element.
/// Yields nothing for any other profile.
pub fn extension_elements<'a>(
    packet: &'a [u8],
    header: &RtpHeader,
) -> impl Iterator<Item = (u8, &'a [u8])> + 'a {
    let (two_byte, mut data) = match extension(packet, header) {
        Some((EXTENSION_PROFILE_ONE_BYTE, data)) => (false, data),
        Some((p, data)) if p & EXTENSION_PROFILE_TWO_BYTE_MASK == EXTENSION_PROFILE_TWO_BYTE => {
            (true, data)
        }
        _ => (false, &[][..]),
    };
    std::iter::from_fn(move || loop {
        let (&first, rest) = data.split_first()?;
        if first == 0 {
            // Padding between elements (RFC 8285 §4.1).
            data = rest;
            continue;
        }
        let (id, len, rest) = if two_byte {
            let (&len, rest) = rest.split_first()?;
            (first, usize::from(len), rest)
        } else {
            let id = first >> 4;
            if id == 15 {
                // RFC 8285 §4.2: id 15 is reserved; processing stops.
                data = &[];
                return None;
            }
            (id, usize::from(first & 0x0f) + 1, rest)
        };
        let Some(value) = rest.get(..len) else {
            data = &[];
            return None;
        };
        data = rest.get(len..).unwrap_or(&[]);
        return Some((id, value));
    })
}

/// Translates the RFC 8285 header extension of `packet` in place for another receiver:
/// each element whose id `map` gives a new id for is kept under that id, every other is
/// removed, and the freed bytes become padding (RFC 8285 §4.1), so the packet keeps its
/// length. An SFU needs this towards browsers: the ids are per session, and a MID, RID or
/// transport-wide sequence number meant for the forwarder would mislead the subscriber.
/// Other extension profiles are left alone.
pub fn translate_extensions(packet: &mut [u8], map: impl Fn(u8) -> Option<u8>) {
    let Ok(header) = RtpHeader::parse(packet) else {
        return;
    };
    let Some((profile, _)) = extension(packet, &header) else {
        return;
    };
    let two_byte = match profile {
        EXTENSION_PROFILE_ONE_BYTE => false,
        p if p & EXTENSION_PROFILE_TWO_BYTE_MASK == EXTENSION_PROFILE_TWO_BYTE => true,
        _ => return,
    };
    let start = FIXED_HEADER_LEN + 4 * usize::from(header.csrc_count) + 4;
    let end = header.header_len;
    // Elements only move towards the start: `write` never passes `read`.
    let (mut read, mut write) = (start, start);
    while read < end {
        let first = packet[read];
        if first == 0 {
            read += 1;
            continue;
        }
        let (id, head, len) = if two_byte {
            let Some(&len) = packet.get(read + 1).filter(|_| read + 1 < end) else {
                break;
            };
            (first, 2, usize::from(len))
        } else {
            if first >> 4 == 15 {
                break;
            }
            (first >> 4, 1, usize::from(first & 0x0f) + 1)
        };
        if read + head + len > end {
            break;
        }
        if let Some(new) = map(id).filter(|&n| n != 0 && (two_byte || n < 15)) {
            packet.copy_within(read..read + head + len, write);
            packet[write] = if two_byte {
                new
            } else {
                (new << 4) | (first & 0x0f)
            };
            write += head + len;
        }
        read += head + len;
    }
    packet[write..end].fill(0);
}

/// Writes the SSRC (bytes 8..12).
///
/// Assumes the caller parsed the header first (`packet.len() >= 12`); on a shorter slice
/// it does nothing.
pub fn set_ssrc(packet: &mut [u8], ssrc: Ssrc) {
    debug_assert!(packet.len() >= FIXED_HEADER_LEN);
    if let Some(b) = packet.get_mut(8..12) {
        b.copy_from_slice(&ssrc.0.to_be_bytes());
    }
}

/// Writes the sequence number (bytes 2..4).
///
/// Assumes the caller parsed the header first (`packet.len() >= 12`); on a shorter slice
/// it does nothing.
pub fn set_sequence(packet: &mut [u8], seq: SeqNo) {
    debug_assert!(packet.len() >= FIXED_HEADER_LEN);
    if let Some(b) = packet.get_mut(2..4) {
        b.copy_from_slice(&seq.0.to_be_bytes());
    }
}

/// Writes the timestamp (bytes 4..8).
///
/// Assumes the caller parsed the header first (`packet.len() >= 12`); on a shorter slice
/// it does nothing.
pub fn set_timestamp(packet: &mut [u8], ts: u32) {
    debug_assert!(packet.len() >= FIXED_HEADER_LEN);
    if let Some(b) = packet.get_mut(4..8) {
        b.copy_from_slice(&ts.to_be_bytes());
    }
}

/// Writes the 7-bit payload type, keeping the marker bit (byte 1). Bits of `pt` above the
/// seventh are ignored.
///
/// Assumes the caller parsed the header first (`packet.len() >= 12`); on a shorter slice
/// it does nothing.
pub fn set_payload_type(packet: &mut [u8], pt: u8) {
    debug_assert!(packet.len() >= FIXED_HEADER_LEN);
    if packet.len() >= FIXED_HEADER_LEN {
        if let Some(b) = packet.get_mut(1) {
            *b = (*b & 0x80) | (pt & 0x7f);
        }
    }
}

/// Sets or clears the marker bit (byte 1), keeping the payload type.
///
/// Assumes the caller parsed the header first (`packet.len() >= 12`); on a shorter slice
/// it does nothing.
pub fn set_marker(packet: &mut [u8], marker: bool) {
    debug_assert!(packet.len() >= FIXED_HEADER_LEN);
    if packet.len() >= FIXED_HEADER_LEN {
        if let Some(b) = packet.get_mut(1) {
            *b = (*b & 0x7f) | if marker { 0x80 } else { 0 };
        }
    }
}

/// Length of the payload after removing RTP padding (RFC 3550 §5.1 P bit), or error if the padding count is invalid.
///
/// Returns the byte range of the payload within `packet`: from `header.header_len` to the
/// end, minus the padding octets if P is set. RFC 3550 §5.1: the last octet of the padding
/// counts how many padding octets (itself included) to ignore, so 0 is invalid.
pub fn payload_range(packet: &[u8], header: &RtpHeader) -> Result<Range<usize>, RtpError> {
    let start = header.header_len;
    if start > packet.len() {
        return Err(RtpError::TooShort);
    }
    let mut end = packet.len();
    if header.has_padding {
        let pad = usize::from(*packet.last().ok_or(RtpError::BadPadding)?);
        if pad == 0 || pad > end - start {
            return Err(RtpError::BadPadding);
        }
        end -= pad;
    }
    Ok(start..end)
}

/// Turns a retransmission (RFC 4588 §4) back into the packet it repairs, in place: its
/// payload starts with the original sequence number (OSN), which becomes the sequence
/// number again; the media stream's SSRC and payload type replace the RTX ones; the rest of
/// the payload (and any padding, whose count stays the last octet) moves two bytes down.
/// Returns the packet's new length. The caller has authenticated the packet first: the
/// SRTP replay window is the RTX stream's, so the rewritten header is not checked again.
pub fn unwrap_rtx(
    packet: &mut [u8],
    header: &RtpHeader,
    ssrc: Ssrc,
    payload_type: u8,
) -> Result<usize, RtpError> {
    let payload = payload_range(packet, header)?;
    let osn = packet
        .get(payload.start..payload.start + 2)
        .filter(|_| payload.len() >= 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(RtpError::TooShort)?;
    packet.copy_within(payload.start + 2.., payload.start);
    let len = packet.len() - 2;
    let packet = &mut packet[..len];
    set_sequence(packet, SeqNo(osn));
    set_ssrc(packet, ssrc);
    set_payload_type(packet, payload_type);
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet(b0: u8, tail: &[u8]) -> Vec<u8> {
        let mut p = vec![
            b0, 0xe0, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0xca, 0xfe, 0xba, 0xbe,
        ];
        p.extend_from_slice(tail);
        p
    }

    #[test]
    fn extensions_are_translated_in_place_and_the_rest_padded() {
        // One-byte form: audio level (id 1, 1 byte), MID (id 4, "0"), twcc (id 3, 2 bytes).
        let ext = [
            0xBE, 0xDE, 0, 2, 0x10, 0x85, 0x40, b'0', 0x31, 0x12, 0x34, 0, 0xAA,
        ];
        let mut p = packet(0x90, &ext);
        let len = p.len();
        // Keep the audio level as id 2; drop the rest.
        translate_extensions(&mut p, |id| (id == 1).then_some(2));
        assert_eq!(p.len(), len);
        let h = RtpHeader::parse(&p).unwrap();
        let kept: Vec<(u8, Vec<u8>)> = extension_elements(&p, &h)
            .map(|(id, d)| (id, d.to_vec()))
            .collect();
        assert_eq!(kept, [(2, vec![0x85])]);
        assert_eq!(p[len - 1], 0xAA, "the payload is untouched");
        // Two-byte form.
        let ext = [0x10, 0x00, 0, 2, 1, 1, 0x85, 4, 1, b'3', 0, 0, 0xBB];
        let mut p = packet(0x90, &ext);
        translate_extensions(&mut p, |id| (id == 4).then_some(9));
        let h = RtpHeader::parse(&p).unwrap();
        let kept: Vec<(u8, Vec<u8>)> = extension_elements(&p, &h)
            .map(|(id, d)| (id, d.to_vec()))
            .collect();
        assert_eq!(kept, [(9, b"3".to_vec())]);
    }

    proptest! {
        #[test]
        fn translating_never_panics_or_changes_the_length(tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut p = packet(0x90, &tail);
            let len = p.len();
            translate_extensions(&mut p, |id| Some(id ^ 1));
            prop_assert_eq!(p.len(), len);
        }
    }

    #[test]
    fn parses_fixed_header() {
        let p = packet(0x80, &[1, 2, 3]);
        let h = RtpHeader::parse(&p).unwrap();
        assert!(h.marker);
        assert_eq!(h.payload_type, 0x60);
        assert_eq!(h.sequence, SeqNo(0x1234));
        assert_eq!(h.timestamp, 0xdeadbeef);
        assert_eq!(h.ssrc, Ssrc(0xcafebabe));
        assert_eq!(h.csrc_count, 0);
        assert!(!h.has_extension && !h.has_padding);
        assert_eq!(h.header_len, 12);
        assert_eq!(payload_range(&p, &h).unwrap(), 12..15);
    }

    #[test]
    fn rejects_short_and_wrong_version() {
        assert_eq!(RtpHeader::parse(&[0x80; 11]), Err(RtpError::TooShort));
        assert_eq!(RtpHeader::parse(&[]), Err(RtpError::TooShort));
        assert_eq!(
            RtpHeader::parse(&packet(0x40, &[])),
            Err(RtpError::BadVersion)
        );
    }

    #[test]
    fn csrc_list_must_fit() {
        assert_eq!(
            RtpHeader::parse(&packet(0x82, &[0; 7])),
            Err(RtpError::CsrcListTruncated)
        );
        let h = RtpHeader::parse(&packet(0x82, &[0; 8])).unwrap();
        assert_eq!((h.csrc_count, h.header_len), (2, 20));
    }

    #[test]
    fn extension_must_fit() {
        // X set, no room for the extension header.
        assert_eq!(
            RtpHeader::parse(&packet(0x90, &[0xbe, 0xde, 0])),
            Err(RtpError::ExtensionTruncated)
        );
        // Extension of 1 word announced, only 3 bytes present.
        assert_eq!(
            RtpHeader::parse(&packet(0x90, &[0xbe, 0xde, 0, 1, 0x10, 0xff, 0])),
            Err(RtpError::ExtensionTruncated)
        );
        // One-byte form: id 1, len 1 (0x10 => id 1, L=0 => 1 byte), then id 2 with 2 bytes.
        let p = packet(
            0x91,
            &[
                1, 2, 3, 4, // CSRC
                0xbe, 0xde, 0, 2, // profile, 2 words
                0x10, 0xaa, 0x21, 0xbb, 0xcc, 0, 0, 0, // elements + padding
                9, 9, // payload
            ],
        );
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(h.header_len, 12 + 4 + 4 + 8);
        let (profile, data) = extension(&p, &h).unwrap();
        assert_eq!((profile, data.len()), (0xbede, 8));
        let els: Vec<_> = extension_elements(&p, &h).collect();
        assert_eq!(els, vec![(1, &[0xaa][..]), (2, &[0xbb, 0xcc][..])]);
        assert_eq!(payload_range(&p, &h).unwrap(), 28..30);
    }

    #[test]
    fn two_byte_extension_elements() {
        let p = packet(0x90, &[0x10, 0x00, 0, 2, 5, 2, 0xaa, 0xbb, 0, 7, 0, 0]);
        let h = RtpHeader::parse(&p).unwrap();
        let els: Vec<_> = extension_elements(&p, &h).collect();
        assert_eq!(els, vec![(5, &[0xaa, 0xbb][..]), (7, &[][..])]);
    }

    #[test]
    fn padding() {
        let p = packet(0xa0, &[1, 2, 3, 0, 0, 3]);
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(payload_range(&p, &h).unwrap(), 12..15);
        let bad0 = packet(0xa0, &[1, 2, 0]);
        let h = RtpHeader::parse(&bad0).unwrap();
        assert_eq!(payload_range(&bad0, &h), Err(RtpError::BadPadding));
        let too_big = packet(0xa0, &[1, 2, 4]);
        let h = RtpHeader::parse(&too_big).unwrap();
        assert_eq!(payload_range(&too_big, &h), Err(RtpError::BadPadding));
        let whole = packet(0xa0, &[1, 2, 3]);
        let h = RtpHeader::parse(&whole).unwrap();
        assert_eq!(payload_range(&whole, &h).unwrap(), 12..12);
        let empty = packet(0xa0, &[]);
        let h = RtpHeader::parse(&empty).unwrap();
        assert_eq!(payload_range(&empty, &h), Err(RtpError::BadPadding));
    }

    #[test]
    fn setters() {
        let mut p = packet(0x80, &[1]);
        set_ssrc(&mut p, Ssrc(1));
        set_sequence(&mut p, SeqNo(2));
        set_timestamp(&mut p, 3);
        set_payload_type(&mut p, 0xff);
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(
            (h.ssrc, h.sequence, h.timestamp, h.payload_type, h.marker),
            (Ssrc(1), SeqNo(2), 3, 0x7f, true)
        );
        set_marker(&mut p, false);
        set_payload_type(&mut p, 96);
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!((h.payload_type, h.marker), (96, false));
    }

    #[test]
    fn a_retransmission_is_unwrapped_into_its_original() {
        // RTX packet: PT 97, seq 0x1234, SSRC cafebabe, marker; payload OSN 0x0102 then
        // the original payload, then two octets of padding.
        let mut p = packet(0xa0, &[0x01, 0x02, 0xaa, 0xbb, 0xcc, 0x00, 0x02]);
        p[1] = 0x80 | 97;
        let header = RtpHeader::parse(&p).unwrap();
        let len = unwrap_rtx(&mut p, &header, Ssrc(0x1111_2222), 96).unwrap();
        let original = &p[..len];
        let h = RtpHeader::parse(original).unwrap();
        assert_eq!(h.sequence, SeqNo(0x0102));
        assert_eq!(h.ssrc, Ssrc(0x1111_2222));
        assert_eq!(h.payload_type, 96);
        assert!(h.marker, "the marker bit is the original's");
        assert_eq!(h.timestamp, header.timestamp);
        assert_eq!(
            &original[payload_range(original, &h).unwrap()],
            &[0xaa, 0xbb, 0xcc]
        );
    }

    #[test]
    fn a_retransmission_without_room_for_its_osn_is_refused() {
        for tail in [&[][..], &[0x01], &[0x01, 0x02]] {
            let mut p = packet(0x80, tail);
            let header = RtpHeader::parse(&p).unwrap();
            let result = unwrap_rtx(&mut p, &header, Ssrc(1), 96);
            if tail.len() == 2 {
                // An OSN and nothing else: the original had an empty payload.
                assert_eq!(result, Ok(12));
            } else {
                assert_eq!(result, Err(RtpError::TooShort));
            }
        }
    }

    #[test]
    fn setters_on_short_input_do_nothing() {
        // Release-mode behaviour; in debug builds the debug_assert fires instead.
        if cfg!(debug_assertions) {
            return;
        }
        let mut short = [0u8; 3];
        set_ssrc(&mut short, Ssrc(1));
        set_sequence(&mut short, SeqNo(1));
        set_timestamp(&mut short, 1);
        set_payload_type(&mut short, 1);
        set_marker(&mut short, true);
        assert_eq!(short, [0u8; 3]);
    }

    /// Cross-check against the `rtp` crate's parser (webrtc-rs).
    #[test]
    fn agrees_with_rtp_crate() {
        use ::rtp::header::Header;
        use webrtc_util::marshal::{Marshal, MarshalSize};
        let mut h = Header {
            version: 2,
            padding: false,
            marker: true,
            payload_type: 111,
            sequence_number: 4242,
            timestamp: 99,
            ssrc: 0x1234_5678,
            csrc: vec![1, 2, 3],
            ..Default::default()
        };
        h.set_extension(1, bytes::Bytes::from_static(&[1, 2, 3]))
            .unwrap();
        h.set_extension(3, bytes::Bytes::from_static(&[7])).unwrap();
        let mut buf = vec![0u8; h.marshal_size()];
        h.marshal_to(&mut buf).unwrap();
        buf.extend_from_slice(&[0xab; 10]);
        let ours = RtpHeader::parse(&buf).unwrap();
        assert_eq!(ours.header_len, h.marshal_size());
        assert_eq!(ours.ssrc, Ssrc(0x1234_5678));
        assert_eq!(ours.csrc_count, 3);
        let els: Vec<_> = extension_elements(&buf, &ours).collect();
        assert_eq!(els, vec![(1, &[1, 2, 3][..]), (3, &[7][..])]);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(h) = RtpHeader::parse(&bytes) {
                prop_assert!(h.header_len <= bytes.len());
                if let Ok(r) = payload_range(&bytes, &h) {
                    prop_assert!(r.start <= r.end && r.end <= bytes.len());
                }
                let _ = extension(&bytes, &h);
                let _ = extension_elements(&bytes, &h).count();
            }
        }

        #[test]
        fn version2_random_bytes_never_panic(
            mut bytes in proptest::collection::vec(any::<u8>(), 12..120),
        ) {
            bytes[0] = (bytes[0] & 0x3f) | 0x80;
            if let Ok(h) = RtpHeader::parse(&bytes) {
                prop_assert!(h.header_len <= bytes.len());
                let _ = payload_range(&bytes, &h);
                let _ = extension_elements(&bytes, &h).count();
            }
        }

        #[test]
        fn unwrapping_never_panics_and_shrinks_by_the_osn(
            mut bytes in proptest::collection::vec(any::<u8>(), 12..120),
        ) {
            bytes[0] = 0x80 | (bytes[0] & 0x3f);
            if let Ok(header) = RtpHeader::parse(&bytes) {
                let before = bytes.len();
                if let Ok(len) = unwrap_rtx(&mut bytes, &header, Ssrc(7), 96) {
                    prop_assert_eq!(len, before - 2);
                }
            }
        }

        #[test]
        fn setters_round_trip(
            mut bytes in proptest::collection::vec(any::<u8>(), 12..64),
            ssrc: u32, seq: u16, ts: u32, pt: u8,
        ) {
            bytes[0] = 0x80; // version 2, no CSRC/extension/padding
            let before = RtpHeader::parse(&bytes).unwrap();
            set_ssrc(&mut bytes, Ssrc(ssrc));
            set_sequence(&mut bytes, SeqNo(seq));
            set_timestamp(&mut bytes, ts);
            set_payload_type(&mut bytes, pt);
            let after = RtpHeader::parse(&bytes).unwrap();
            prop_assert_eq!(after.ssrc, Ssrc(ssrc));
            prop_assert_eq!(after.sequence, SeqNo(seq));
            prop_assert_eq!(after.timestamp, ts);
            prop_assert_eq!(after.payload_type, pt & 0x7f);
            prop_assert_eq!(after.marker, before.marker);
            prop_assert_eq!(after.header_len, before.header_len);
        }
    }
}
