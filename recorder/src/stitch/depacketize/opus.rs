//! Opus over RTP (RFC 7587): each RTP payload is exactly one Opus packet (RFC 6716 §3).
//!
//! A packet is checked against RFC 6716 §3.4's requirements R1-R7 (frame lengths that fit
//! the packet, at most 120 ms of audio) so nothing malformed reaches the Ogg file, and
//! its duration is read from the TOC byte and frame count, in 48 kHz samples (the Ogg
//! Opus granule rate whatever the coded bandwidth).

use super::DepacketizeError;

/// RFC 6716 §3.2.1: no frame is longer than 1275 bytes.
const MAX_FRAME_BYTES: usize = 1275;
/// R5: a packet holds at most 120 ms.
const MAX_PACKET_SAMPLES: u32 = 5760;

/// Samples at 48 kHz of one frame of TOC configuration `config` (RFC 6716 Table 2).
fn frame_samples(config: u8) -> u32 {
    match config {
        // SILK-only NB/MB/WB: 10, 20, 40, 60 ms.
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        // Hybrid SWB/FB: 10, 20 ms.
        12..=15 => [480, 960][usize::from(config % 2)],
        // CELT-only NB/WB/SWB/FB: 2.5, 5, 10, 20 ms.
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    }
}

/// Reads a frame length (§3.2.1): one byte below 252, else two bytes.
fn frame_length(data: &[u8]) -> Result<(usize, usize), DepacketizeError> {
    let first = *data.first().ok_or(DepacketizeError::TooShort)?;
    if first < 252 {
        return Ok((usize::from(first), 1));
    }
    let second = *data.get(1).ok_or(DepacketizeError::TooShort)?;
    Ok((4 * usize::from(second) + usize::from(first), 2))
}

/// Checks one Opus packet and returns its duration in 48 kHz samples.
pub fn packet_samples(packet: &[u8]) -> Result<u32, DepacketizeError> {
    let (&toc, rest) = packet.split_first().ok_or(DepacketizeError::Empty)?; // R1
    let per_frame = frame_samples(toc >> 3);
    let frames = match toc & 0x03 {
        0 => {
            if rest.len() > MAX_FRAME_BYTES {
                return Err(DepacketizeError::Malformed); // R2
            }
            1
        }
        1 => {
            if rest.len() % 2 != 0 || rest.len() / 2 > MAX_FRAME_BYTES {
                return Err(DepacketizeError::Malformed); // R3
            }
            2
        }
        2 => {
            let (first, used) = frame_length(rest)?;
            let remaining = rest.len() - used;
            if first > remaining || remaining - first > MAX_FRAME_BYTES || first > MAX_FRAME_BYTES {
                return Err(DepacketizeError::Malformed); // R4
            }
            2
        }
        _ => {
            let (&count_byte, mut data) = rest.split_first().ok_or(DepacketizeError::TooShort)?;
            let count = u32::from(count_byte & 0x3f);
            let vbr = count_byte & 0x80 != 0;
            let padded = count_byte & 0x40 != 0;
            if count == 0 || count * per_frame > MAX_PACKET_SAMPLES {
                return Err(DepacketizeError::Malformed); // R5
            }
            let mut padding = 0usize;
            if padded {
                // Each 255 means 254 bytes of padding and another length byte follows.
                loop {
                    let (&length, tail) = data.split_first().ok_or(DepacketizeError::TooShort)?;
                    data = tail;
                    if length == 255 {
                        padding += 254;
                    } else {
                        padding += usize::from(length);
                        break;
                    }
                }
            }
            let mut available = data
                .len()
                .checked_sub(padding)
                .ok_or(DepacketizeError::Malformed)?; // R6/R7
            if vbr {
                for _ in 1..count {
                    let (length, used) = frame_length(data)?;
                    data = &data[used..];
                    available = available
                        .checked_sub(used + length)
                        .ok_or(DepacketizeError::Malformed)?;
                    if length > MAX_FRAME_BYTES {
                        return Err(DepacketizeError::Malformed);
                    }
                }
                if available > MAX_FRAME_BYTES {
                    return Err(DepacketizeError::Malformed); // R6
                }
            } else if available % count as usize != 0
                || available / count as usize > MAX_FRAME_BYTES
            {
                return Err(DepacketizeError::Malformed); // R7
            }
            count
        }
    };
    Ok(frames * per_frame)
}

/// A packet that decodes as `samples` of packet loss concealment (silence after a few
/// frames): code 0 or 3 packets of CELT-only fullband frames of length zero, which RFC
/// 6716 §3.2.1 lets a decoder treat as lost frames. Used to fill gaps in an audio track so
/// the Ogg granule positions stay continuous. `samples` must be a multiple of 120
/// (2.5 ms) and at most 5760 (120 ms).
pub fn concealment_packet(samples: u32) -> Option<Vec<u8>> {
    // CELT FB configurations 28-31: 2.5, 5, 10, 20 ms.
    for (config, per_frame) in [(31u8, 960u32), (30, 480), (29, 240), (28, 120)] {
        if samples.is_multiple_of(per_frame)
            && samples / per_frame <= 48
            && samples > 0
            && samples <= MAX_PACKET_SAMPLES
        {
            let count = samples / per_frame;
            if count == 1 {
                return Some(vec![config << 3]);
            }
            // Code 3, CBR, no padding, `count` frames of zero bytes.
            return Some(vec![config << 3 | 0x03, count as u8]);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_from_toc_and_frame_count() {
        // Config 31 (CELT FB 20 ms), code 0: one frame.
        assert_eq!(packet_samples(&[31 << 3, 1, 2, 3]), Ok(960));
        // Config 1 (SILK NB 20 ms), code 1: two frames of equal size.
        assert_eq!(packet_samples(&[1 << 3 | 1, 1, 2]), Ok(1920));
        // Config 15 (Hybrid FB 20 ms), code 2: 2 frames, first of 1 byte.
        assert_eq!(
            packet_samples(&[15 << 3 | 2, 1, 0xaa, 0xbb, 0xcc]),
            Ok(1920)
        );
        // Config 16 (CELT NB 2.5 ms), code 3, 4 frames CBR.
        assert_eq!(packet_samples(&[16 << 3 | 3, 4, 1, 2, 3, 4]), Ok(480));
        // Code 3, VBR with padding: 2 frames, sizes 1 and (rest), 2 bytes padding.
        assert_eq!(
            packet_samples(&[31 << 3 | 3, 0x80 | 0x40 | 2, 2, 1, 0xaa, 0xbb, 0, 0]),
            Ok(1920)
        );
        // Config 3 (SILK NB 60 ms), 2 frames: 120 ms is the maximum.
        assert_eq!(packet_samples(&[3 << 3 | 3, 2]), Ok(5760));
    }

    #[test]
    fn malformed_packets_are_refused() {
        assert_eq!(packet_samples(&[]), Err(DepacketizeError::Empty));
        assert_eq!(
            packet_samples(&[1 << 3 | 1, 1, 2, 3]),
            Err(DepacketizeError::Malformed),
            "odd code 1"
        );
        assert_eq!(
            packet_samples(&[15 << 3 | 2, 9, 1]),
            Err(DepacketizeError::Malformed),
            "code 2 length past end"
        );
        assert_eq!(
            packet_samples(&[3 << 3 | 3, 3]),
            Err(DepacketizeError::Malformed),
            "180 ms"
        );
        assert_eq!(
            packet_samples(&[31 << 3 | 3, 0]),
            Err(DepacketizeError::Malformed),
            "no frames"
        );
        assert_eq!(
            packet_samples(&[31 << 3 | 3, 3, 1, 2]),
            Err(DepacketizeError::Malformed),
            "CBR not divisible"
        );
        assert_eq!(
            packet_samples(&[31 << 3 | 3, 0x40 | 2, 9]),
            Err(DepacketizeError::Malformed),
            "padding past end"
        );
        let mut long = vec![31 << 3];
        long.resize(1 + 1276, 0);
        assert_eq!(
            packet_samples(&long),
            Err(DepacketizeError::Malformed),
            "frame over 1275 bytes"
        );
    }

    #[test]
    fn concealment_packets_have_the_asked_duration() {
        for samples in [120, 240, 960, 1920, 2880, 5760, 600] {
            let packet = concealment_packet(samples).unwrap();
            assert_eq!(packet_samples(&packet), Ok(samples), "{samples}");
        }
        assert_eq!(concealment_packet(100), None);
        assert_eq!(concealment_packet(0), None);
        assert_eq!(concealment_packet(5880), None);
    }

    proptest! {
        #[test]
        fn random_packets_never_panic(packet in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(samples) = packet_samples(&packet) {
                prop_assert!(samples > 0 && samples <= MAX_PACKET_SAMPLES);
            }
        }
    }
}
