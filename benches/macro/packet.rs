//! The benchmark's packets: an RTP header (RFC 3550 §5.1) whose timestamp field carries a
//! packet id, and a payload that starts with the send time and the id.
//!
//! The forwarder forwards the first source of a subscription with its own sequence and
//! timestamp numbering, so the id survives forwarding in clear text and a receiver can
//! count packets per step and window without decrypting them. The send time is inside the
//! encrypted payload: a receiver reads it only from the sampled packets it unprotects,
//! which also checks that the forwarder's output authenticates with the subscriber's key.

/// SSRC of the publisher's track (forwarded unchanged: subscriptions keep the track SSRC).
pub const TRACK_SSRC: u32 = 0x4d41_4352;
/// SSRC of the raw sender's packets, so a receiver knows they are not encrypted.
pub const RAW_SSRC: u32 = 0x5241_5721;
/// RTP payload type of the benchmark stream (dynamic range).
pub const PAYLOAD_TYPE: u8 = 96;
/// RTP fixed header length.
pub const HEADER_LEN: usize = 12;
/// Send time (u64) and id (u32) at the start of the payload.
pub const MIN_PAYLOAD: usize = 12;

/// Writes an RTP packet with `payload_len` payload bytes into `buf`; returns its length.
/// The sequence number is the id's low 16 bits and the timestamp the id itself.
pub fn write(buf: &mut [u8], ssrc: u32, id: u32, sent_ns: u64, payload_len: usize) -> usize {
    let len = HEADER_LEN + payload_len.max(MIN_PAYLOAD);
    buf[0] = 0x80;
    buf[1] = PAYLOAD_TYPE;
    buf[2..4].copy_from_slice(&(id as u16).to_be_bytes());
    buf[4..8].copy_from_slice(&id.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    buf[12..20].copy_from_slice(&sent_ns.to_le_bytes());
    buf[20..24].copy_from_slice(&id.to_le_bytes());
    len
}

/// Fills a buffer's payload area once with a recognisable pattern (the rest of every
/// packet written into it later).
pub fn fill(buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
}

/// What a receiver reads from a datagram's clear-text header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// An RTCP packet (RFC 5761 §4 demultiplexing by payload type 200-204).
    pub rtcp: bool,
    pub id: u32,
    pub ssrc: u32,
    /// RTP header length including CSRCs and a header extension.
    pub header_len: usize,
}

/// Parses the RTP header; None for anything that is not RTP or RTCP version 2.
pub fn parse(d: &[u8]) -> Option<Header> {
    if d.len() < HEADER_LEN || d[0] >> 6 != 2 {
        return None;
    }
    if (200..=204).contains(&d[1]) {
        return Some(Header {
            rtcp: true,
            id: 0,
            ssrc: 0,
            header_len: 0,
        });
    }
    let mut header_len = HEADER_LEN + 4 * usize::from(d[0] & 0x0f);
    if d[0] & 0x10 != 0 {
        let ext = d.get(header_len + 2..header_len + 4)?;
        header_len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    if header_len > d.len() {
        return None;
    }
    Some(Header {
        rtcp: false,
        id: u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
        ssrc: u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
        header_len,
    })
}

/// The send time at the start of a (clear-text) payload.
pub fn read_send_time(payload: &[u8]) -> Option<u64> {
    let b: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_parse() {
        let mut buf = [0u8; 1300];
        let len = write(&mut buf, TRACK_SSRC, 0x0102_0304, 99, 1200);
        assert_eq!(len, 1212);
        let h = parse(&buf[..len]).unwrap();
        assert_eq!(
            (h.rtcp, h.id, h.ssrc, h.header_len),
            (false, 0x0102_0304, TRACK_SSRC, 12)
        );
        assert_eq!(read_send_time(&buf[12..len]), Some(99));
        buf[1] = 201;
        assert!(parse(&buf[..len]).unwrap().rtcp);
        assert_eq!(parse(&buf[..8]), None);
    }
}
