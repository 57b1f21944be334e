//! Demultiplexing of the protocols that share one UDP 5-tuple.
//!
//! A WebRTC-style transport carries STUN (ICE connectivity checks), DTLS (the key exchange
//! for DTLS-SRTP), TURN channel data, and SRTP/SRTCP on a single port. RFC 7983 §7 tells them
//! apart by the first byte of the datagram alone; RFC 5761 §4 then separates RTP from RTCP
//! (rtcp-mux) by the second byte, which is RTCP's packet type or RTP's marker bit plus
//! payload type.
//!
//! [`classify`] looks at no more than the first two bytes plus the datagram's length, so it is
//! cheap enough to run on every received datagram before anything else. It never panics: a
//! datagram that is empty, that starts with an unassigned first byte, or that is too short
//! for the fixed header of its class is [`PacketClass::Unknown`] and should be dropped (and
//! counted) by the caller.

/// What a received datagram carries, as far as the first bytes and the length tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketClass {
    /// STUN message (RFC 8489), first byte 0..=3.
    Stun,
    /// DTLS record (RFC 9147), first byte 20..=63.
    Dtls,
    /// TURN ChannelData message (RFC 8656 §12.4), first byte 64..=79.
    TurnChannel,
    /// RTP (or SRTP) packet, first byte 128..=191 and second byte outside 192..=223.
    Rtp,
    /// RTCP (or SRTCP) compound or reduced-size packet, first byte 128..=191 and second byte
    /// (packet type) 192..=223.
    Rtcp,
    /// ZRTP packet (RFC 6189), first byte 16..=19.
    Zrtp,
    /// Empty, unassigned first byte, or too short for its class.
    Unknown,
}

/// Fixed STUN message header: type, length, magic cookie, transaction id (RFC 8489 §5).
pub const STUN_HEADER_LEN: usize = 20;
/// ZRTP packet header plus the trailing CRC (RFC 6189 §5).
pub const ZRTP_MIN_LEN: usize = 16;
/// DTLS 1.2 record header: type, version, epoch, sequence number, length (RFC 6347 §4.1).
/// DTLS 1.3 unified headers (RFC 9147 §4) can be as short as 2 bytes, but §4.2.3 makes
/// receivers reject records with less than 16 bytes of ciphertext, so no valid record of
/// either version is shorter than this.
pub const DTLS_MIN_LEN: usize = 13;
/// TURN ChannelData header: channel number and length (RFC 8656 §12.4).
pub const TURN_CHANNEL_HEADER_LEN: usize = 4;
/// Fixed RTP header without CSRCs (RFC 3550 §5.1).
pub const RTP_MIN_LEN: usize = 12;
/// RTCP common header plus the sender SSRC that every RTCP packet type (and SRTCP's key
/// lookup, RFC 3711 §3.4) needs (RFC 3550 §6.4).
pub const RTCP_MIN_LEN: usize = 8;

/// Classify one datagram by RFC 7983 §7's first-byte ranges and, for RTP/RTCP, by
/// RFC 5761 §4's second-byte rule.
///
/// RFC 5761 §4: with rtcp-mux, RTP payload types 64..=95 are not used so that an RTP second
/// byte (marker bit plus payload type) never falls into 192..=223, the range that holds all
/// RTCP packet types (SR 200 through XR 207 and the rest of the reserved range).
pub fn classify(datagram: &[u8]) -> PacketClass {
    let Some(&first) = datagram.first() else {
        return PacketClass::Unknown;
    };
    let (class, min_len) = match first {
        0..=3 => (PacketClass::Stun, STUN_HEADER_LEN),
        16..=19 => (PacketClass::Zrtp, ZRTP_MIN_LEN),
        20..=63 => (PacketClass::Dtls, DTLS_MIN_LEN),
        64..=79 => (PacketClass::TurnChannel, TURN_CHANNEL_HEADER_LEN),
        128..=191 => match datagram.get(1) {
            Some(192..=223) => (PacketClass::Rtcp, RTCP_MIN_LEN),
            Some(_) => (PacketClass::Rtp, RTP_MIN_LEN),
            None => return PacketClass::Unknown,
        },
        // 4..=15, 80..=127 and 192..=255 are unassigned by RFC 7983 §7 (the last ones
        // would be RTP with version 3, which does not exist).
        _ => return PacketClass::Unknown,
    };
    if datagram.len() < min_len {
        PacketClass::Unknown
    } else {
        class
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn with_len(first: u8, second: u8, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        if len > 0 {
            v[0] = first;
        }
        if len > 1 {
            v[1] = second;
        }
        v
    }

    #[test]
    fn empty_is_unknown() {
        assert_eq!(classify(&[]), PacketClass::Unknown);
    }

    #[test]
    fn first_byte_ranges() {
        for b in 0..=255u8 {
            let d = with_len(b, 96, 64);
            let expected = match b {
                0..=3 => PacketClass::Stun,
                16..=19 => PacketClass::Zrtp,
                20..=63 => PacketClass::Dtls,
                64..=79 => PacketClass::TurnChannel,
                128..=191 => PacketClass::Rtp,
                _ => PacketClass::Unknown,
            };
            assert_eq!(classify(&d), expected, "first byte {b}");
        }
    }

    #[test]
    fn rtp_vs_rtcp_by_second_byte() {
        for pt in 0..=255u8 {
            let d = with_len(0x80, pt, 32);
            let expected = if (192..=223).contains(&pt) {
                PacketClass::Rtcp
            } else {
                PacketClass::Rtp
            };
            assert_eq!(classify(&d), expected, "second byte {pt}");
        }
        // Every RTCP type the forwarder parses (SR..XR) lands in the RTCP range.
        for pt in 200..=207u8 {
            assert_eq!(classify(&with_len(0x81, pt, 8)), PacketClass::Rtcp);
        }
        // Opus (PT 111) with the marker bit set is 0xEF = 239: still RTP.
        assert_eq!(classify(&with_len(0x80, 0x80 | 111, 12)), PacketClass::Rtp);
    }

    #[test]
    fn too_short_for_class() {
        let cases = [
            (0u8, 0u8, STUN_HEADER_LEN, PacketClass::Stun),
            (16, 0, ZRTP_MIN_LEN, PacketClass::Zrtp),
            (22, 0xfe, DTLS_MIN_LEN, PacketClass::Dtls),
            (0x40, 0, TURN_CHANNEL_HEADER_LEN, PacketClass::TurnChannel),
            (0x80, 96, RTP_MIN_LEN, PacketClass::Rtp),
            (0x80, 201, RTCP_MIN_LEN, PacketClass::Rtcp),
        ];
        for (first, second, min, class) in cases {
            assert_eq!(classify(&with_len(first, second, min)), class);
            assert_eq!(
                classify(&with_len(first, second, min - 1)),
                PacketClass::Unknown
            );
        }
        assert_eq!(classify(&[0x80]), PacketClass::Unknown);
    }

    proptest! {
        #[test]
        fn classify_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let class = classify(&data);
            if class != PacketClass::Unknown {
                prop_assert!(!data.is_empty());
            }
        }
    }
}
