//! The fixed RTP header (RFC 3550 §5.1), read just far enough to find the payload.

use std::ops::Range;

/// RTP version 2 (RFC 3550 §5.1): the two top bits of the first octet.
const VERSION: u8 = 2;
/// The fixed header: V/P/X/CC, M/PT, sequence number, timestamp, SSRC.
const FIXED_HEADER_LEN: usize = 12;

/// The fields of one RTP packet that stitching needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RtpHeader {
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// The payload inside the packet: after CSRCs and the header extension, before padding.
    pub payload: Range<usize>,
}

/// Parses the RTP header of `packet`; `None` if it is not a well-formed RTP version 2
/// packet (too short, CSRC list, extension or padding running past the end).
pub(crate) fn parse(packet: &[u8]) -> Option<RtpHeader> {
    let fixed = packet.get(..FIXED_HEADER_LEN)?;
    if fixed[0] >> 6 != VERSION {
        return None;
    }
    let has_padding = fixed[0] & 0x20 != 0;
    let has_extension = fixed[0] & 0x10 != 0;
    let csrc_count = usize::from(fixed[0] & 0x0f);
    let mut start = FIXED_HEADER_LEN + 4 * csrc_count;
    if has_extension {
        // RFC 3550 §5.3.1: 16 bits profile-defined, 16 bits length in 32-bit words.
        let ext = packet.get(start..start + 4)?;
        let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        start += 4 + 4 * words;
    }
    let mut end = packet.len();
    if start > end {
        return None;
    }
    if has_padding {
        // The last octet counts the padding octets, itself included (§5.1), so it is
        // never 0.
        let padding = usize::from(*packet.last()?);
        if padding == 0 || padding > end - start {
            return None;
        }
        end -= padding;
    }
    Some(RtpHeader {
        marker: fixed[1] & 0x80 != 0,
        sequence: u16::from_be_bytes([fixed[2], fixed[3]]),
        timestamp: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
        payload: start..end,
    })
}

/// Builds an RTP packet (no CSRC, no extension, no padding): for tests and the fuzz
/// targets' seeds.
pub fn build_packet(
    marker: bool,
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut packet = Vec::with_capacity(FIXED_HEADER_LEN + payload.len());
    packet.push(VERSION << 6);
    packet.push(u8::from(marker) << 7 | (payload_type & 0x7f));
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(&timestamp.to_be_bytes());
    packet.extend_from_slice(&ssrc.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_fixed_fields_and_payload() {
        let packet = build_packet(true, 96, 0xfffe, 0x8000_0001, 0x1234_5678, b"abc");
        let header = parse(&packet).unwrap();
        assert_eq!(
            header,
            RtpHeader {
                marker: true,
                sequence: 0xfffe,
                timestamp: 0x8000_0001,
                ssrc: 0x1234_5678,
                payload: 12..15
            }
        );
    }

    #[test]
    fn skips_csrcs_extension_and_padding() {
        let mut packet = build_packet(false, 111, 1, 2, 3, &[]);
        packet[0] |= 0x20 | 0x10 | 2; // padding, extension, two CSRCs
        packet.extend_from_slice(&[0; 8]); // CSRCs
        packet.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]); // one-byte extension, 1 word
        packet.extend_from_slice(b"opus");
        packet.extend_from_slice(&[0, 0, 3]); // 3 octets of padding
        let header = parse(&packet).unwrap();
        assert_eq!(&packet[header.payload], b"opus");
    }

    #[test]
    fn rejects_truncated_and_wrong_version() {
        assert_eq!(parse(&[0x80; 11]), None);
        let mut packet = build_packet(false, 96, 1, 2, 3, b"x");
        packet[0] = 0x40; // version 1
        assert_eq!(parse(&packet), None);
        let mut packet = build_packet(false, 96, 1, 2, 3, b"x");
        packet[0] |= 0x20; // padding count 'x' = 120 > payload
        assert_eq!(parse(&packet), None);
        let mut packet = build_packet(false, 96, 1, 2, 3, &[]);
        packet[0] |= 0x10; // extension header missing
        assert_eq!(parse(&packet), None);
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic_and_payload_is_inside(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Some(header) = parse(&bytes) {
                prop_assert!(header.payload.start <= header.payload.end);
                prop_assert!(header.payload.end <= bytes.len());
            }
        }
    }
}
