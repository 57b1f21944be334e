//! The probe: what every synthetic media packet carries at the start of its RTP payload
//! (after the VP8 payload descriptor, and after the VP8 key frame header on the first
//! packet of a key frame), so the receiving side can tell who sent it, when, and in which
//! order, and verify every byte it got.
//!
//! ```text
//!  0       2       3       4       5       6               10              14
//!  +-------+-------+-------+-------+-------+---------------+---------------+
//!  | magic |version| kind  | flags |encode.| publisher id  |  probe seq    |
//!  +-------+-------+-------+-------+-------+---------------+---------------+
//!  14              18                              26      28
//!  +---------------+-------------------------------+-------+----------------
//!  | frame number  |   send time (µs, run epoch)   |CRC-16 | fill ...
//!  +---------------+-------------------------------+-------+----------------
//! ```
//!
//! All fields are big-endian. The CRC-16 covers bytes 0..26, so a changed header byte is
//! caught even in a packet with no fill; the fill is a pseudo-random pattern seeded from
//! the header's identity fields (publisher, kind, encoding, probe sequence), so a changed
//! fill byte, or fill pasted from another packet, is caught too.
//!
//! The first magic byte is odd on purpose: on the first packet of a VP8 delta frame the
//! probe sits where the VP8 payload header begins, and its lowest bit is the *inverse* key
//! frame flag (RFC 7741 §4.3). An odd byte there reads as "not a key frame", as it must.

use crate::stats::MediaKind;
use crate::Micros;

/// Marks a payload as a Fanout load generator probe. The first byte is odd: see the module
/// docs.
pub const MAGIC: [u8; 2] = [0xf5, 0xa7];
/// The layout described in the module docs.
pub const VERSION: u8 = 1;
/// Bytes of the probe header, checksum included; the fill follows.
pub const PROBE_LEN: usize = 28;

/// Offset of the CRC-16 (the bytes before it are what it covers).
const CRC_AT: usize = 26;

/// `flags` bit: the packet belongs to a key frame.
const FLAG_KEYFRAME: u8 = 0x01;
/// `flags` bit: first packet of a frame.
const FLAG_FRAME_START: u8 = 0x02;
/// `flags` bit: last packet of a frame.
const FLAG_FRAME_END: u8 = 0x04;
/// `flags` bits 3-4: the VP8 temporal layer (TID) of the frame.
const TEMPORAL_LAYER_SHIFT: u32 = 3;
const TEMPORAL_LAYER_MASK: u8 = 0x03;
/// Every bit `flags` may use; the others must be zero.
const FLAGS_KNOWN: u8 = FLAG_KEYFRAME
    | FLAG_FRAME_START
    | FLAG_FRAME_END
    | (TEMPORAL_LAYER_MASK << TEMPORAL_LAYER_SHIFT);

/// What one packet says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub kind: MediaKind,
    /// The packet belongs to a key frame (video only).
    pub keyframe: bool,
    /// First packet of a frame (audio: every packet).
    pub frame_start: bool,
    /// Last packet of a frame (audio: every packet).
    pub frame_end: bool,
    /// VP8 temporal layer id, 0..=3 (audio: 0).
    pub temporal_layer: u8,
    /// Which participant published it.
    pub publisher_id: u32,
    /// Simulcast encoding index, lowest layer 0.
    pub encoding: u8,
    /// Per publisher stream (one SSRC), counts every packet sent once, from 0; unlike the
    /// RTP sequence number it is never rewritten by the forwarder.
    pub probe_seq: u32,
    /// Frame (video) or packet (audio) counter of the stream.
    pub frame_number: u32,
    /// When the publisher sent the packet (first transmission; a retransmission repeats
    /// it).
    pub send_us: Micros,
}

/// Why a payload is not a valid probe.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("payload shorter than a probe")]
    TooShort,
    #[error("no probe magic")]
    BadMagic,
    #[error("unknown probe version")]
    UnsupportedVersion,
    #[error("unknown media kind in probe")]
    BadKind,
    #[error("reserved probe flag bits set")]
    BadFlags,
    #[error("probe header checksum mismatch")]
    BadChecksum,
    #[error("payload fill differs from the expected pattern")]
    BadFill,
}

fn kind_to_byte(kind: MediaKind) -> u8 {
    match kind {
        MediaKind::Audio => 0,
        MediaKind::Camera => 1,
        MediaKind::Screen => 2,
    }
}

fn kind_from_byte(b: u8) -> Option<MediaKind> {
    match b {
        0 => Some(MediaKind::Audio),
        1 => Some(MediaKind::Camera),
        2 => Some(MediaKind::Screen),
        _ => None,
    }
}

/// CRC-16/CCITT-FALSE (poly 0x1021, init 0xffff). A CRC rather than a sum because it
/// detects every error burst of up to 16 bits, so every single changed byte.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xffff;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// SplitMix64: a tiny, fast generator whose whole state is one word, enough to fill
/// payloads reproducibly on both sides.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
}

/// The SplitMix64 finaliser: a good 64-bit hash of one word.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fill_seed(probe: &Probe) -> u64 {
    let identity = (u64::from(probe.publisher_id) << 32) | u64::from(probe.probe_seq);
    let stream = (u64::from(kind_to_byte(probe.kind)) << 8) | u64::from(probe.encoding);
    mix64(identity ^ mix64(stream ^ 0x0f11_5eed))
}

/// Writes `probe` at the start of `buf` and fills the rest of `buf` with its pattern.
/// Returns the bytes written (all of `buf`), or [`ProbeError::TooShort`] if `buf` cannot
/// hold the header (nothing is written then).
pub fn write(probe: &Probe, buf: &mut [u8]) -> Result<usize, ProbeError> {
    let (header, fill) = buf
        .split_at_mut_checked(PROBE_LEN)
        .ok_or(ProbeError::TooShort)?;
    let flags = (u8::from(probe.keyframe) * FLAG_KEYFRAME)
        | (u8::from(probe.frame_start) * FLAG_FRAME_START)
        | (u8::from(probe.frame_end) * FLAG_FRAME_END)
        | ((probe.temporal_layer & TEMPORAL_LAYER_MASK) << TEMPORAL_LAYER_SHIFT);
    header[0..2].copy_from_slice(&MAGIC);
    header[2] = VERSION;
    header[3] = kind_to_byte(probe.kind);
    header[4] = flags;
    header[5] = probe.encoding;
    header[6..10].copy_from_slice(&probe.publisher_id.to_be_bytes());
    header[10..14].copy_from_slice(&probe.probe_seq.to_be_bytes());
    header[14..18].copy_from_slice(&probe.frame_number.to_be_bytes());
    header[18..26].copy_from_slice(&probe.send_us.to_be_bytes());
    let crc = crc16(&header[..CRC_AT]);
    header[CRC_AT..PROBE_LEN].copy_from_slice(&crc.to_be_bytes());
    let mut rng = SplitMix64(fill_seed(probe));
    for chunk in fill.chunks_mut(8) {
        let word = rng.next_u64().to_be_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    Ok(buf.len())
}

/// Reads the probe at the start of `payload` and checks that every byte after it is the
/// pattern it implies. Total: any input gives `Ok` or an error, never a panic.
pub fn parse(payload: &[u8]) -> Result<Probe, ProbeError> {
    let (header, fill) = payload
        .split_at_checked(PROBE_LEN)
        .ok_or(ProbeError::TooShort)?;
    if header[0..2] != MAGIC {
        return Err(ProbeError::BadMagic);
    }
    if header[2] != VERSION {
        return Err(ProbeError::UnsupportedVersion);
    }
    if u16::from_be_bytes([header[CRC_AT], header[CRC_AT + 1]]) != crc16(&header[..CRC_AT]) {
        return Err(ProbeError::BadChecksum);
    }
    let kind = kind_from_byte(header[3]).ok_or(ProbeError::BadKind)?;
    let flags = header[4];
    if flags & !FLAGS_KNOWN != 0 {
        return Err(ProbeError::BadFlags);
    }
    let u32_at = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let mut send = [0u8; 8];
    send.copy_from_slice(&header[18..26]);
    let probe = Probe {
        kind,
        keyframe: flags & FLAG_KEYFRAME != 0,
        frame_start: flags & FLAG_FRAME_START != 0,
        frame_end: flags & FLAG_FRAME_END != 0,
        temporal_layer: (flags >> TEMPORAL_LAYER_SHIFT) & TEMPORAL_LAYER_MASK,
        encoding: header[5],
        publisher_id: u32_at(6),
        probe_seq: u32_at(10),
        frame_number: u32_at(14),
        send_us: u64::from_be_bytes(send),
    };
    let mut rng = SplitMix64(fill_seed(&probe));
    for chunk in fill.chunks(8) {
        let word = rng.next_u64().to_be_bytes();
        if chunk != &word[..chunk.len()] {
            return Err(ProbeError::BadFill);
        }
    }
    Ok(probe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Probe {
        Probe {
            kind: MediaKind::Camera,
            keyframe: true,
            frame_start: true,
            frame_end: false,
            temporal_layer: 2,
            publisher_id: 0xdead_beef,
            encoding: 2,
            probe_seq: 77,
            frame_number: 12,
            send_us: 1_234_567,
        }
    }

    #[test]
    fn round_trips_with_and_without_fill() {
        for len in [PROBE_LEN, PROBE_LEN + 1, PROBE_LEN + 8, 1200] {
            let mut buf = vec![0u8; len];
            assert_eq!(write(&sample(), &mut buf), Ok(len));
            assert_eq!(parse(&buf), Ok(sample()));
        }
    }

    #[test]
    fn first_byte_reads_as_a_vp8_delta_frame() {
        // RFC 7741 §4.3: P (bit 0) set means "not a key frame".
        assert_eq!(MAGIC[0] & 1, 1);
    }

    #[test]
    fn rejects_short_and_foreign_payloads() {
        assert_eq!(
            write(&sample(), &mut [0u8; PROBE_LEN - 1]),
            Err(ProbeError::TooShort)
        );
        assert_eq!(parse(&[0u8; PROBE_LEN - 1]), Err(ProbeError::TooShort));
        assert_eq!(parse(&[0u8; 100]), Err(ProbeError::BadMagic));
        let mut buf = [0u8; 40];
        write(&sample(), &mut buf).unwrap();
        buf[2] = 9;
        assert_eq!(parse(&buf), Err(ProbeError::UnsupportedVersion));
    }

    #[test]
    fn fill_differs_between_packets() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        write(&sample(), &mut a).unwrap();
        write(
            &Probe {
                probe_seq: 78,
                ..sample()
            },
            &mut b,
        )
        .unwrap();
        assert_ne!(a[PROBE_LEN..], b[PROBE_LEN..]);
        // Fill from another packet is caught even with a valid header.
        a[PROBE_LEN..].copy_from_slice(&b[PROBE_LEN..]);
        assert_eq!(parse(&a), Err(ProbeError::BadFill));
    }

    fn arb_probe() -> impl Strategy<Value = Probe> {
        (
            0u8..3,
            any::<(bool, bool, bool)>(),
            0u8..4,
            any::<u32>(),
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
        )
            .prop_map(
                |(k, (kf, s, e), tl, publisher_id, encoding, seq, frame, send)| Probe {
                    kind: kind_from_byte(k).unwrap_or(MediaKind::Audio),
                    keyframe: kf,
                    frame_start: s,
                    frame_end: e,
                    temporal_layer: tl,
                    publisher_id,
                    encoding,
                    probe_seq: seq,
                    frame_number: frame,
                    send_us: send,
                },
            )
    }

    proptest! {
        #[test]
        fn roundtrip(probe in arb_probe(), len in PROBE_LEN..1500usize) {
            let mut buf = vec![0u8; len];
            prop_assert_eq!(write(&probe, &mut buf), Ok(len));
            prop_assert_eq!(parse(&buf), Ok(probe));
        }

        #[test]
        fn any_changed_byte_is_detected(
            probe in arb_probe(),
            len in PROBE_LEN..300usize,
            at in any::<prop::sample::Index>(),
            xor in 1u8..=255,
        ) {
            let mut buf = vec![0u8; len];
            write(&probe, &mut buf).unwrap();
            let at = at.index(len);
            buf[at] ^= xor;
            prop_assert!(parse(&buf).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn arbitrary_header_with_magic_never_panics(
            mut bytes in prop::collection::vec(any::<u8>(), PROBE_LEN..120),
        ) {
            bytes[0..2].copy_from_slice(&MAGIC);
            bytes[2] = VERSION;
            let _ = parse(&bytes);
        }
    }
}
