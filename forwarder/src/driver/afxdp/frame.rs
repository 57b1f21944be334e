//! Ethernet, IPv4/IPv6 and UDP: parsing what arrives in an AF_XDP frame and writing the
//! headers of what leaves, checksums included.
//!
//! Nothing here trusts the frame. Parsing returns the addresses and where the UDP payload
//! lies, or the reason it refused the frame (the driver counts reasons); it never panics
//! and never reads past the IP packet's own length (short Ethernet frames are padded to 60
//! bytes, so the frame may be longer than the packet).
//!
//! The UDP checksum of received datagrams is deliberately not verified: datagrams sent by
//! a local socket into a veth carry a partial checksum (the pseudo-header sum only, since
//! the kernel expects offload to finish it), and the XDP program sees them before anyone
//! does. SRTP authenticates the payload anyway. The IPv4 header checksum is verified: the
//! kernel always computes it in software, and the header decides where the datagram goes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

/// Destination, source, EtherType.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// An IEEE 802.1Q or 802.1ad tag: TPID then TCI.
const VLAN_TAG_LEN: usize = 4;
/// VLAN tags skipped on receive (802.1ad service tag, then 802.1Q customer tag).
const MAX_VLAN_TAGS: usize = 2;
pub const IPV4_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;
pub const UDP_HEADER_LEN: usize = 8;
/// The longest header this module writes: Ethernet, IPv6, UDP (no VLAN tag on transmit).
pub const MAX_HEADER_LEN: usize = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + UDP_HEADER_LEN;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;
/// IPv6 extension headers that may precede UDP and are skipped (RFC 8200 section 4):
/// hop-by-hop options, routing, destination options.
const IPV6_SKIPPABLE: [u8; 3] = [0, 43, 60];
const IPV6_FRAGMENT: u8 = 44;
/// Extension headers walked before giving up (a chain of options is an attack, not media).
const MAX_IPV6_EXTENSIONS: usize = 4;
/// Hop limit / TTL of what the driver sends, Linux's default.
const HOP_LIMIT: u8 = 64;

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl std::fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A UDP datagram found in a received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    /// Where the UDP payload lies in the frame.
    pub payload: Range<usize>,
}

/// Why a received frame was not a UDP datagram the driver can use. Each is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than an Ethernet header (with its VLAN tags).
    ShortEthernet,
    /// Neither IPv4 nor IPv6 (ARP, LLDP, more than two VLAN tags).
    NotIp,
    /// The IP header does not fit in the frame, or its version, header length or total
    /// length is inconsistent.
    BadIpHeader,
    /// The IPv4 header checksum is wrong.
    BadIpChecksum,
    /// An IP fragment: media never fragments, and reassembly is the kernel's business.
    Fragment,
    /// IP, but not UDP.
    NotUdp,
    /// The UDP header does not fit, or its length disagrees with the IP packet.
    BadUdpHeader,
}

impl Malformed {
    pub const ALL: [Malformed; 7] = [
        Malformed::ShortEthernet,
        Malformed::NotIp,
        Malformed::BadIpHeader,
        Malformed::BadIpChecksum,
        Malformed::Fragment,
        Malformed::NotUdp,
        Malformed::BadUdpHeader,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Malformed::ShortEthernet => "short_ethernet",
            Malformed::NotIp => "not_ip",
            Malformed::BadIpHeader => "bad_ip_header",
            Malformed::BadIpChecksum => "bad_ip_checksum",
            Malformed::Fragment => "fragment",
            Malformed::NotUdp => "not_udp",
            Malformed::BadUdpHeader => "bad_udp_header",
        }
    }

    /// Index into [`Malformed::ALL`], for counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Find the UDP datagram in an Ethernet frame.
pub fn parse(frame: &[u8]) -> Result<Datagram, Malformed> {
    let mut offset = 12;
    let mut ethertype = be16(frame, offset).ok_or(Malformed::ShortEthernet)?;
    let mut tags = 0;
    while ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
        if tags == MAX_VLAN_TAGS {
            return Err(Malformed::NotIp);
        }
        tags += 1;
        offset += VLAN_TAG_LEN;
        ethertype = be16(frame, offset).ok_or(Malformed::ShortEthernet)?;
    }
    let ip_start = offset + 2;
    let ip = &frame[ip_start.min(frame.len())..];
    let (source, destination, udp) = match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(ip)?,
        ETHERTYPE_IPV6 => parse_ipv6(ip)?,
        _ => return Err(Malformed::NotIp),
    };
    // `udp` is relative to `ip`; the datagram's own length decides where it ends.
    let header = ip.get(udp.clone()).ok_or(Malformed::BadUdpHeader)?;
    if header.len() < UDP_HEADER_LEN {
        return Err(Malformed::BadUdpHeader);
    }
    let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
    if length < UDP_HEADER_LEN || length > header.len() {
        return Err(Malformed::BadUdpHeader);
    }
    let source_port = u16::from_be_bytes([header[0], header[1]]);
    let destination_port = u16::from_be_bytes([header[2], header[3]]);
    let start = ip_start + udp.start + UDP_HEADER_LEN;
    Ok(Datagram {
        source: SocketAddr::new(source, source_port),
        destination: SocketAddr::new(destination, destination_port),
        payload: start..ip_start + udp.start + length,
    })
}

/// IPv4 (RFC 791): addresses, and the range of the IP payload within `ip`.
fn parse_ipv4(ip: &[u8]) -> Result<(IpAddr, IpAddr, Range<usize>), Malformed> {
    if ip.len() < IPV4_HEADER_LEN {
        return Err(Malformed::BadIpHeader);
    }
    let version = ip[0] >> 4;
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if version != 4
        || header_len < IPV4_HEADER_LEN
        || total_len < header_len
        || total_len > ip.len()
    {
        return Err(Malformed::BadIpHeader);
    }
    if checksum(&ip[..header_len], 0) != 0 {
        return Err(Malformed::BadIpChecksum);
    }
    // More fragments, or a fragment offset: a piece of a larger datagram.
    let fragment = u16::from_be_bytes([ip[6], ip[7]]);
    if fragment & 0x3fff != 0 {
        return Err(Malformed::Fragment);
    }
    if ip[9] != IPPROTO_UDP {
        return Err(Malformed::NotUdp);
    }
    let source = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let destination = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    Ok((source.into(), destination.into(), header_len..total_len))
}

/// IPv6 (RFC 8200): addresses, and the range of the UDP datagram within `ip`.
fn parse_ipv6(ip: &[u8]) -> Result<(IpAddr, IpAddr, Range<usize>), Malformed> {
    if ip.len() < IPV6_HEADER_LEN || ip[0] >> 4 != 6 {
        return Err(Malformed::BadIpHeader);
    }
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let end = IPV6_HEADER_LEN + payload_len;
    // A payload length of 0 announces a jumbogram (RFC 2675): never media.
    if payload_len == 0 || end > ip.len() {
        return Err(Malformed::BadIpHeader);
    }
    let mut next = ip[6];
    let mut offset = IPV6_HEADER_LEN;
    let mut extensions = 0;
    while IPV6_SKIPPABLE.contains(&next) {
        extensions += 1;
        if extensions > MAX_IPV6_EXTENSIONS || offset + 2 > end {
            return Err(Malformed::BadIpHeader);
        }
        let len = (usize::from(ip[offset + 1]) + 1) * 8;
        next = ip[offset];
        offset += len;
    }
    if next == IPV6_FRAGMENT {
        return Err(Malformed::Fragment);
    }
    if next != IPPROTO_UDP {
        return Err(Malformed::NotUdp);
    }
    if offset > end {
        return Err(Malformed::BadIpHeader);
    }
    let mut source = [0; 16];
    source.copy_from_slice(&ip[8..24]);
    let mut destination = [0; 16];
    destination.copy_from_slice(&ip[24..40]);
    Ok((
        Ipv6Addr::from(source).into(),
        Ipv6Addr::from(destination).into(),
        offset..end,
    ))
}

/// The Internet checksum (RFC 1071) of `bytes`, starting from the partial sum `initial`:
/// the one's complement of the one's complement sum of 16-bit big-endian words.
///
/// Summing 32-bit words and folding at the end gives the same result as summing 16-bit
/// words (RFC 1071 section 2(B)), in half the additions.
pub fn checksum(bytes: &[u8], initial: u32) -> u16 {
    !fold(sum(bytes, u64::from(initial)))
}

fn sum(bytes: &[u8], mut acc: u64) -> u64 {
    let mut words = bytes.chunks_exact(4);
    for word in &mut words {
        acc += u64::from(u32::from_be_bytes([word[0], word[1], word[2], word[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc + u64::from(u32::from_be_bytes(tail))
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// What a transmitted frame's headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    pub source_mac: MacAddr,
    pub destination_mac: MacAddr,
    /// Both addresses of one family (the driver unmaps IPv4-mapped IPv6 first).
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

impl Headers {
    /// Bytes of Ethernet, IP and UDP header before the payload.
    pub fn header_len(&self) -> usize {
        header_len(self.destination.is_ipv6())
    }
}

/// Bytes of Ethernet, IP and UDP header before the payload, for IPv6 or IPv4.
pub fn header_len(ipv6: bool) -> usize {
    ETHERNET_HEADER_LEN
        + if ipv6 {
            IPV6_HEADER_LEN
        } else {
            IPV4_HEADER_LEN
        }
        + UDP_HEADER_LEN
}

/// Why headers could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError {
    /// Source and destination are of different families.
    MixedFamilies,
    /// The datagram does not fit in an IP packet's length field, or in the frame.
    TooLong,
}

/// Write Ethernet, IP and UDP headers into `frame[..headers.header_len()]` for the payload
/// already in `frame[headers.header_len()..headers.header_len() + payload_len]`, with the IPv4 header
/// checksum and the full UDP checksum (mandatory over IPv6, RFC 8200 section 8.1; given
/// over IPv4 too, since nothing on the way will compute it: the frame bypasses the stack).
/// Returns the frame's length.
pub fn build(frame: &mut [u8], headers: &Headers, payload_len: usize) -> Result<usize, BuildError> {
    let header_len = headers.header_len();
    let frame_len = header_len + payload_len;
    let udp_len = UDP_HEADER_LEN + payload_len;
    if frame_len > frame.len() {
        return Err(BuildError::TooLong);
    }
    let (ethertype, ip_len) = match (headers.source.ip(), headers.destination.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (ETHERTYPE_IPV4, IPV4_HEADER_LEN + udp_len),
        (IpAddr::V6(_), IpAddr::V6(_)) => (ETHERTYPE_IPV6, udp_len),
        _ => return Err(BuildError::MixedFamilies),
    };
    let ip_len = u16::try_from(ip_len).map_err(|_| BuildError::TooLong)?;
    let udp_len16 = u16::try_from(udp_len).map_err(|_| BuildError::TooLong)?;
    let frame = &mut frame[..frame_len];
    frame[0..6].copy_from_slice(&headers.destination_mac.0);
    frame[6..12].copy_from_slice(&headers.source_mac.0);
    frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
    let (ip, rest) = frame[ETHERNET_HEADER_LEN..]
        .split_at_mut(header_len - ETHERNET_HEADER_LEN - UDP_HEADER_LEN);
    // The pseudo-header sum (RFC 768; RFC 8200 section 8.1), in 32-bit words.
    let pseudo = match (headers.source.ip(), headers.destination.ip()) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            ip[0] = 0x45;
            ip[1] = 0;
            ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
            // Identification 0 with Don't Fragment: an atomic datagram (RFC 6864 section 4).
            ip[4..6].copy_from_slice(&[0, 0]);
            ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
            ip[8] = HOP_LIMIT;
            ip[9] = IPPROTO_UDP;
            ip[10..12].copy_from_slice(&[0, 0]);
            ip[12..16].copy_from_slice(&source.octets());
            ip[16..20].copy_from_slice(&destination.octets());
            let header_checksum = checksum(ip, 0);
            ip[10..12].copy_from_slice(&header_checksum.to_be_bytes());
            sum(&ip[12..20], u64::from(IPPROTO_UDP) + u64::from(udp_len16))
        }
        (IpAddr::V6(source), IpAddr::V6(destination)) => {
            ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
            ip[4..6].copy_from_slice(&ip_len.to_be_bytes());
            ip[6] = IPPROTO_UDP;
            ip[7] = HOP_LIMIT;
            ip[8..24].copy_from_slice(&source.octets());
            ip[24..40].copy_from_slice(&destination.octets());
            sum(&ip[8..40], u64::from(IPPROTO_UDP) + udp_len as u64)
        }
        _ => return Err(BuildError::MixedFamilies),
    };
    let udp = rest;
    udp[0..2].copy_from_slice(&headers.source.port().to_be_bytes());
    udp[2..4].copy_from_slice(&headers.destination.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len16.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    let mut udp_checksum = !fold(sum(udp, pseudo));
    // A computed 0 is sent as all ones: 0 means "no checksum" over IPv4 and is invalid over
    // IPv6 (RFC 768; RFC 8200 section 8.1).
    if udp_checksum == 0 {
        udp_checksum = 0xffff;
    }
    udp[6..8].copy_from_slice(&udp_checksum.to_be_bytes());
    Ok(frame_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 1071 as written: 16-bit words, end-around carry, one byte at a time. The oracle
    /// the fast version is checked against.
    fn reference_checksum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            let word = (u32::from(pair[0]) << 8) | u32::from(pair.get(1).copied().unwrap_or(0));
            sum += word;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    const MAC_A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
    const MAC_B: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);

    fn headers(source: &str, destination: &str) -> Headers {
        Headers {
            source_mac: MAC_A,
            destination_mac: MAC_B,
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    fn frame_with(headers: &Headers, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; headers.header_len() + payload.len()];
        frame[headers.header_len()..].copy_from_slice(payload);
        let len = build(&mut frame, headers, payload.len()).unwrap();
        assert_eq!(len, frame.len());
        frame
    }

    #[test]
    fn ipv4_header_checksum_of_the_textbook_example() {
        // The header of RFC 1071's usual worked example (and Wikipedia's): checksum b861.
        let header = hex("4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7");
        assert_eq!(checksum(&header, 0), 0xb861);
        assert_eq!(reference_checksum(&header), 0xb861);
        let mut with = header.clone();
        with[10..12].copy_from_slice(&[0xb8, 0x61]);
        assert_eq!(checksum(&with, 0), 0, "a correct header sums to zero");
    }

    #[test]
    fn udp_checksums_match_known_vectors() {
        // Computed independently (Python, RFC 768 / RFC 8200 pseudo headers) for the payload
        // "fanout" between these addresses and ports.
        let v4 = frame_with(&headers("10.1.0.1:40000", "10.1.0.2:5004"), b"fanout");
        assert_eq!(&v4[24..26], &[0x26, 0xc7], "IPv4 header checksum");
        assert_eq!(&v4[40..42], &[0xf1, 0xbb], "UDP checksum over IPv4");
        let v6 = frame_with(&headers("[fd00::1]:40000", "[fd00::2]:5004"), b"fanout");
        assert_eq!(&v6[60..62], &[0x0b, 0xbc], "UDP checksum over IPv6");
    }

    #[test]
    fn checksums_agree_with_the_reference_for_every_length() {
        let bytes: Vec<u8> = (0..300u32).map(|i| (i * 7 + 13) as u8).collect();
        for len in 0..bytes.len() {
            assert_eq!(
                checksum(&bytes[..len], 0),
                reference_checksum(&bytes[..len]),
                "len {len}"
            );
        }
    }

    /// The UDP checksum checked the way a receiver does: the sum over pseudo header and
    /// datagram, checksum included, must be zero.
    fn udp_checksum_verifies(frame: &[u8]) -> bool {
        let datagram = parse(frame).unwrap();
        let udp = datagram.payload.start - UDP_HEADER_LEN..datagram.payload.end;
        let mut pseudo = Vec::new();
        match (datagram.source.ip(), datagram.destination.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&[0, IPPROTO_UDP]);
                pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&(udp.len() as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_UDP]);
            }
            _ => unreachable!(),
        }
        pseudo.extend_from_slice(&frame[udp]);
        reference_checksum(&pseudo) == 0
    }

    #[test]
    fn build_then_parse_round_trips() {
        for (source, destination) in [
            ("192.0.2.1:5004", "198.51.100.7:40002"),
            ("[2001:db8::1]:5004", "[2001:db8:1::7]:40002"),
        ] {
            for len in [0, 1, 2, 3, 160, 1200, 1201] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
                let h = headers(source, destination);
                let frame = frame_with(&h, &payload);
                let datagram = parse(&frame).unwrap();
                assert_eq!(datagram.source, h.source);
                assert_eq!(datagram.destination, h.destination);
                assert_eq!(&frame[datagram.payload.clone()], &payload[..]);
                assert_eq!(&frame[0..6], &MAC_B.0);
                assert_eq!(&frame[6..12], &MAC_A.0);
                assert!(udp_checksum_verifies(&frame), "{source} len {len}");
            }
        }
    }

    #[test]
    fn a_zero_udp_checksum_is_sent_as_all_ones() {
        // Find a payload whose checksum computes to zero: vary two bytes until it does.
        let h = headers("[fd00::1]:1", "[fd00::2]:2");
        let found = (0..=u16::MAX).find_map(|x| {
            let frame = frame_with(&h, &x.to_be_bytes());
            (frame[60..62] == [0xff, 0xff]).then_some(frame)
        });
        let frame = found.expect("some two-byte payload sums to zero");
        assert!(udp_checksum_verifies(&frame));
    }

    #[test]
    fn mixed_families_and_short_buffers_are_refused() {
        let mut frame = [0u8; 128];
        assert_eq!(
            build(&mut frame, &headers("10.0.0.1:1", "[fd00::1]:2"), 10),
            Err(BuildError::MixedFamilies)
        );
        assert_eq!(
            build(&mut frame, &headers("10.0.0.1:1", "10.0.0.2:2"), 100),
            Err(BuildError::TooLong)
        );
    }

    #[test]
    fn vlan_tags_are_skipped_and_padding_ignored() {
        let h = headers("10.0.0.1:1000", "10.0.0.2:2000");
        let plain = frame_with(&h, b"x");
        for tags in [
            &[0x81, 0x00, 0x00, 0x05][..],
            &[0x88, 0xa8, 0, 1, 0x81, 0x00, 0, 2],
        ] {
            let mut tagged = plain[..12].to_vec();
            tagged.extend_from_slice(tags);
            tagged.extend_from_slice(&plain[12..]);
            // Ethernet pads to 60 bytes: the padding is not payload.
            tagged.resize(tagged.len().max(60), 0xee);
            let datagram = parse(&tagged).unwrap();
            assert_eq!(&tagged[datagram.payload], b"x");
        }
        let mut three = plain[..12].to_vec();
        for _ in 0..3 {
            three.extend_from_slice(&[0x81, 0x00, 0, 1]);
        }
        three.extend_from_slice(&plain[12..]);
        assert_eq!(parse(&three), Err(Malformed::NotIp));
    }

    #[test]
    fn malformed_frames_are_refused_with_their_reason() {
        let v4 = frame_with(&headers("10.0.0.1:1000", "10.0.0.2:2000"), b"payload");
        let v6 = frame_with(&headers("[fd00::1]:1000", "[fd00::2]:2000"), b"payload");
        let edit = |frame: &[u8], at: usize, bytes: &[u8]| {
            let mut f = frame.to_vec();
            f[at..at + bytes.len()].copy_from_slice(bytes);
            f
        };
        let cases: Vec<(&str, Vec<u8>, Malformed)> = vec![
            ("empty", Vec::new(), Malformed::ShortEthernet),
            ("13 bytes", v4[..13].to_vec(), Malformed::ShortEthernet),
            ("ARP", edit(&v4, 12, &[0x08, 0x06]), Malformed::NotIp),
            ("no IP header", v4[..20].to_vec(), Malformed::BadIpHeader),
            (
                "IPv4 version 5",
                edit(&v4, 14, &[0x55]),
                Malformed::BadIpHeader,
            ),
            ("IHL 4", edit(&v4, 14, &[0x44]), Malformed::BadIpHeader),
            (
                "total length past the frame",
                edit(&v4, 16, &[0x10, 0x00]),
                Malformed::BadIpHeader,
            ),
            (
                "total length under the header",
                edit(&v4, 16, &[0, 19]),
                Malformed::BadIpHeader,
            ),
            (
                "bad header checksum",
                edit(&v4, 24, &[0, 0]),
                Malformed::BadIpChecksum,
            ),
            (
                "truncated IPv4 packet",
                v4[..v4.len() - 1].to_vec(),
                Malformed::BadIpHeader,
            ),
            (
                "truncated IPv6 packet",
                v6[..v6.len() - 1].to_vec(),
                Malformed::BadIpHeader,
            ),
            (
                "IPv6 jumbogram",
                edit(&v6, 18, &[0, 0]),
                Malformed::BadIpHeader,
            ),
            (
                "IPv6 fragment",
                edit(&v6, 20, &[IPV6_FRAGMENT]),
                Malformed::Fragment,
            ),
            ("IPv6 TCP", edit(&v6, 20, &[6]), Malformed::NotUdp),
            (
                "IPv6 UDP length 7",
                edit(&v6, 58, &[0, 7]),
                Malformed::BadUdpHeader,
            ),
            (
                "IPv6 UDP length past the packet",
                edit(&v6, 58, &[0, 16]),
                Malformed::BadUdpHeader,
            ),
            (
                "IPv4 UDP length past the packet",
                edit(&v4, 38, &[0, 200]),
                Malformed::BadUdpHeader,
            ),
        ];
        for (name, frame, expected) in cases {
            assert_eq!(parse(&frame), Err(expected), "{name}");
        }
        // Edits that need the IPv4 header checksum fixed to reach the check behind it.
        let with_checksum = |frame: Vec<u8>| {
            let mut f = frame;
            f[24..26].copy_from_slice(&[0, 0]);
            let c = checksum(&f[14..34], 0);
            f[24..26].copy_from_slice(&c.to_be_bytes());
            f
        };
        let fragment = with_checksum(edit(&v4, 20, &[0x20, 0x00]));
        assert_eq!(parse(&fragment), Err(Malformed::Fragment), "more fragments");
        let offset = with_checksum(edit(&v4, 20, &[0x00, 0x10]));
        assert_eq!(parse(&offset), Err(Malformed::Fragment), "fragment offset");
        let tcp = with_checksum(edit(&v4, 23, &[6]));
        assert_eq!(parse(&tcp), Err(Malformed::NotUdp), "TCP");
        let no_udp = with_checksum(edit(&v4, 16, &[0, 24]));
        assert_eq!(
            parse(&no_udp[..38]),
            Err(Malformed::BadUdpHeader),
            "4 bytes of UDP"
        );
    }

    #[test]
    fn ipv6_extension_headers_before_udp_are_skipped() {
        let h = headers("[fd00::1]:1000", "[fd00::2]:2000");
        let plain = frame_with(&h, b"media");
        // Insert an 8-byte destination options header (next header UDP, length 0).
        let mut framed = plain[..54].to_vec();
        framed[20] = 60;
        framed.extend_from_slice(&[IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0]);
        framed.extend_from_slice(&plain[54..]);
        let payload_len = u16::from_be_bytes([framed[18], framed[19]]) + 8;
        framed[18..20].copy_from_slice(&payload_len.to_be_bytes());
        let datagram = parse(&framed).unwrap();
        assert_eq!(&framed[datagram.payload], b"media");
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parsing_mutated_frames_never_panics_nor_reads_out_of_bounds(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            ipv6 in any::<bool>(),
            edits in proptest::collection::vec((0usize..120, any::<u8>()), 0..6),
            cut in 0usize..140,
        ) {
            let h = if ipv6 { headers("[fd00::1]:1", "[fd00::2]:2") } else { headers("10.0.0.1:1", "10.0.0.2:2") };
            let mut frame = frame_with(&h, &payload);
            for (at, value) in edits {
                if let Some(byte) = frame.get_mut(at) {
                    *byte = value;
                }
            }
            frame.truncate(cut);
            if let Ok(datagram) = parse(&frame) {
                prop_assert!(datagram.payload.start <= datagram.payload.end);
                prop_assert!(datagram.payload.end <= frame.len());
            }
        }

        #[test]
        fn built_frames_parse_back(
            payload in proptest::collection::vec(any::<u8>(), 0..1500),
            ports in (1u16.., 1u16..),
            v4 in any::<([u8; 4], [u8; 4])>(),
            v6 in any::<([u8; 16], [u8; 16])>(),
            ipv6 in any::<bool>(),
        ) {
            let (source, destination): (IpAddr, IpAddr) = if ipv6 {
                (Ipv6Addr::from(v6.0).into(), Ipv6Addr::from(v6.1).into())
            } else {
                (Ipv4Addr::from(v4.0).into(), Ipv4Addr::from(v4.1).into())
            };
            let h = Headers {
                source_mac: MAC_A,
                destination_mac: MAC_B,
                source: SocketAddr::new(source, ports.0),
                destination: SocketAddr::new(destination, ports.1),
            };
            let frame = frame_with(&h, &payload);
            let datagram = parse(&frame).unwrap();
            prop_assert_eq!(datagram.source, h.source);
            prop_assert_eq!(datagram.destination, h.destination);
            prop_assert_eq!(&frame[datagram.payload], &payload[..]);
            prop_assert!(udp_checksum_verifies(&frame));
        }
    }
}
