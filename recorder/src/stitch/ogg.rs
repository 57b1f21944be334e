//! Ogg Opus (RFC 7845 over RFC 3533), written directly: an identification header
//! (`OpusHead`) and a comment header (`OpusTags`) on pages of their own, then audio pages
//! whose granule position is the 48 kHz sample count at the end of their last packet.
//!
//! The granule positions come from the timeline, not from counting packets: the caller
//! places each packet at its sample position and [`OggOpusWriter`] fills a hole before it
//! with concealment packets ([`opus::concealment_packet`](super::depacketize::opus::concealment_packet)),
//! because RFC 7845 §4.1 wants an Ogg Opus stream without gaps in its granule positions.

use std::io::{self, Write};

use super::depacketize::opus;

/// RFC 3533 §6: at most 255 lacing values per page.
const MAX_SEGMENTS: usize = 255;
/// A page is closed after about this much audio (one second), so a reader seeks finely
/// and a page's memory stays small.
const PAGE_SAMPLES: u64 = 48_000;
/// Header type flags (RFC 3533 §6).
const BEGINNING_OF_STREAM: u8 = 0x02;
const END_OF_STREAM: u8 = 0x04;
/// Holes are filled in pieces of at most 120 ms (the longest Opus packet), in steps of
/// 2.5 ms (the shortest Opus frame).
const MAX_FILL_SAMPLES: u64 = 5760;
const FILL_STEP_SAMPLES: u64 = 120;
/// The channel count declared in `OpusHead`: WebRTC negotiates Opus as 2 channels
/// (RFC 7587 §7) and mono packets decode into a stereo stream, so 2 fits every sender.
pub const CHANNELS: u8 = 2;

/// CRC-32 of Ogg pages: polynomial 0x04c11db7, MSB first, initial value 0, no final
/// inversion (RFC 3533 §6).
fn crc32(data: &[u8]) -> u32 {
    const fn table() -> [u32; 256] {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = (i as u32) << 24;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 0x8000_0000 != 0 {
                    crc << 1 ^ 0x04c1_1db7
                } else {
                    crc << 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    }
    const TABLE: [u32; 256] = table();
    data.iter().fold(0, |crc, &b| {
        crc << 8 ^ TABLE[usize::from((crc >> 24) as u8 ^ b)]
    })
}

/// Writes one Ogg Opus logical stream.
#[derive(Debug)]
pub struct OggOpusWriter<W: Write> {
    out: W,
    serial: u32,
    sequence: u32,
    /// Samples written so far: the granule position after the last packet.
    position: u64,
    /// Where the current page began (granule), to close it after [`PAGE_SAMPLES`].
    page_start: u64,
    lacing: Vec<u8>,
    body: Vec<u8>,
    /// Samples of concealment written into holes.
    filled: u64,
}

impl<W: Write> OggOpusWriter<W> {
    /// Writes the two header pages. `serial` names the logical stream.
    pub fn new(out: W, serial: u32) -> io::Result<OggOpusWriter<W>> {
        let mut writer = OggOpusWriter {
            out,
            serial,
            sequence: 0,
            position: 0,
            page_start: 0,
            lacing: Vec::new(),
            body: Vec::new(),
            filled: 0,
        };
        // RFC 7845 §5.1. Pre-skip 0: the recording starts in the middle of the sender's
        // stream, whose encoder delay was spent long ago.
        let mut head = b"OpusHead".to_vec();
        head.push(1); // version
        head.push(CHANNELS);
        head.extend_from_slice(&0u16.to_le_bytes()); // pre-skip
        head.extend_from_slice(&48_000u32.to_le_bytes()); // input sample rate (informative)
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // channel mapping family 0: mono or stereo
        writer.add_packet(&head);
        writer.write_page(BEGINNING_OF_STREAM, 0)?;
        // §5.2: vendor string and no user comments.
        let vendor = b"fanout-recorder";
        let mut tags = b"OpusTags".to_vec();
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes());
        writer.add_packet(&tags);
        writer.write_page(0, 0)?;
        Ok(writer)
    }

    /// Samples written (the current granule position).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Samples of concealment written into holes so far.
    pub fn filled_samples(&self) -> u64 {
        self.filled
    }

    /// Writes `packet` of `samples` at sample position `at`. A hole since the last packet
    /// is filled (rounded down to 2.5 ms); `at` before the current position is refused
    /// with `false` (the caller decides what overlap it tolerates).
    pub fn write_packet_at(&mut self, at: u64, packet: &[u8], samples: u32) -> io::Result<bool> {
        if at < self.position {
            return Ok(false);
        }
        let mut hole = (at - self.position) / FILL_STEP_SAMPLES * FILL_STEP_SAMPLES;
        while hole > 0 {
            let piece = hole.min(MAX_FILL_SAMPLES);
            // `piece` is a multiple of 120 in 120..=5760, which concealment_packet takes.
            if let Some(filler) = opus::concealment_packet(piece as u32) {
                self.append(&filler, piece)?;
                self.filled += piece;
            }
            hole -= piece;
        }
        self.append(packet, u64::from(samples))?;
        Ok(true)
    }

    fn append(&mut self, packet: &[u8], samples: u64) -> io::Result<()> {
        let segments = packet.len() / 255 + 1;
        if self.lacing.len() + segments > MAX_SEGMENTS {
            self.write_page(0, self.position)?;
        }
        self.add_packet(packet);
        self.position += samples;
        if self.position - self.page_start >= PAGE_SAMPLES {
            self.write_page(0, self.position)?;
        }
        Ok(())
    }

    fn add_packet(&mut self, packet: &[u8]) {
        // RFC 3533 §5: lacing values of 255 continue a packet, a smaller one ends it.
        self.lacing
            .extend(std::iter::repeat_n(255u8, packet.len() / 255));
        self.lacing.push((packet.len() % 255) as u8);
        self.body.extend_from_slice(packet);
    }

    fn write_page(&mut self, flags: u8, granule: u64) -> io::Result<()> {
        let mut page = Vec::with_capacity(27 + self.lacing.len() + self.body.len());
        page.extend_from_slice(b"OggS");
        page.push(0); // version
        page.push(flags);
        page.extend_from_slice(&granule.to_le_bytes());
        page.extend_from_slice(&self.serial.to_le_bytes());
        page.extend_from_slice(&self.sequence.to_le_bytes());
        page.extend_from_slice(&0u32.to_le_bytes()); // CRC, filled below
        page.push(self.lacing.len() as u8);
        page.extend_from_slice(&self.lacing);
        page.extend_from_slice(&self.body);
        let crc = crc32(&page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&page)?;
        self.sequence += 1;
        self.page_start = granule;
        self.lacing.clear();
        self.body.clear();
        Ok(())
    }

    /// Writes the last page (end of stream) and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.write_page(END_OF_STREAM, self.position)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_ogg_reference() {
        // The standard check input, and the property of a non-reflected CRC without final
        // inversion: appending the CRC (big-endian) to the message leaves a residue of 0.
        let message = b"123456789";
        let crc = crc32(message);
        assert_eq!(
            crc, 0x89a1_897f,
            "the check value of CRC-32/CKSUM without its final inversion"
        );
        let mut with_crc = message.to_vec();
        with_crc.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(crc32(&with_crc), 0);
    }

    #[test]
    fn pages_have_granules_and_holes_are_filled() {
        let mut writer = OggOpusWriter::new(Vec::new(), 7).unwrap();
        let packet = [31 << 3, 0xaa, 0xbb];
        assert!(writer.write_packet_at(0, &packet, 960).unwrap());
        // A 100 ms hole (4800 samples), then a packet: concealment fills it exactly.
        assert!(writer.write_packet_at(960 + 4800, &packet, 960).unwrap());
        assert_eq!(writer.position(), 960 * 2 + 4800);
        assert_eq!(writer.filled_samples(), 4800);
        // Overlap is refused.
        assert!(!writer.write_packet_at(100, &packet, 960).unwrap());
        let bytes = writer.finish().unwrap();
        // Three pages: OpusHead, OpusTags, audio with EOS; each starts with OggS.
        let pages: Vec<usize> = (0..bytes.len() - 4)
            .filter(|&i| &bytes[i..i + 4] == b"OggS")
            .collect();
        assert_eq!(pages.len(), 3);
        assert_eq!(bytes[5], BEGINNING_OF_STREAM);
        let last = pages[2];
        assert_eq!(bytes[last + 5], END_OF_STREAM);
        assert_eq!(
            u64::from_le_bytes(bytes[last + 6..last + 14].try_into().unwrap()),
            6720
        );
        assert_eq!(
            u32::from_le_bytes(bytes[last + 18..last + 22].try_into().unwrap()),
            2,
            "page sequence"
        );
    }
}
