//! RTP payloads → codec frames.
//!
//! | codec | payload format | module |
//! |-------|----------------|--------|
//! | VP8   | RFC 7741 payload descriptor (§4.2) and header (§4.3) | [`vp8`] |
//! | VP9   | RFC 9628 payload descriptor (§4.2), flexible and non-flexible mode, spatial layers | [`vp9`] |
//! | H.264 | RFC 6184 single NAL unit, STAP-A, FU-A (packetization modes 0 and 1) | [`h264`] |
//! | Opus  | RFC 7587: one Opus packet (RFC 6716 §3) per RTP packet | [`opus`] |
//!
//! The video depacketizers are pure functions of the payloads of one frame
//! ([`VideoDepacketizer::frame`]); [`FrameAssembler`] decides which packets form a frame
//! and whether the frame is complete. The payload descriptors and NAL unit headers are
//! read by the forwarder's parsers (`fanout_forwarder::codec`), the ones it forwards
//! with: what is recorded is read the way it was forwarded. What is here is what only a
//! recorder needs: joining the codec data into frames a decoder takes. Every function here is total: malformed payloads
//! are errors, never panics (the fuzz targets in `recorder/fuzz` and the proptests check
//! it).

pub mod h264;
pub mod opus;
pub mod vp8;
pub mod vp9;

use fanout_forwarder::codec::CodecError;

use super::anchor::TimedPacket;

/// Why a payload or frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DepacketizeError {
    #[error("payload too short for its headers")]
    TooShort,
    #[error("malformed payload")]
    Malformed,
    #[error("payload format not supported")]
    Unsupported,
    #[error("frame carries no data")]
    Empty,
}

impl From<CodecError> for DepacketizeError {
    fn from(error: CodecError) -> Self {
        match error {
            CodecError::TooShort => DepacketizeError::TooShort,
            CodecError::Unsupported => DepacketizeError::Unsupported,
            _ => DepacketizeError::Malformed,
        }
    }
}

/// One reassembled video frame, as a decoder (and an IVF file) takes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VideoFrame {
    pub data: Vec<u8>,
    /// A decoder with no state can start here.
    pub keyframe: bool,
    /// Width and height, when the frame says (VP8 and VP9 key frames).
    pub dimensions: Option<(u16, u16)>,
}

/// One video payload format.
pub trait VideoDepacketizer {
    /// Whether the payload is marked as the first packet of a frame (VP8 S=1 with
    /// partition 0, VP9 B=1 on the base layer, H.264 a NAL unit that begins an access
    /// unit).
    fn starts_frame(&self, payload: &[u8]) -> bool;
    /// Reassembles one frame from the payloads of all its packets, in sequence order.
    fn frame(&mut self, payloads: &[&[u8]]) -> Result<VideoFrame, DepacketizeError>;
}

/// A frame larger than this is dropped as incomplete: bounds memory on a stream whose
/// marker bits never come.
pub(crate) const MAX_FRAME_BYTES: usize = 8 << 20;

/// What the assembler found.
#[derive(Debug)]
pub(crate) enum AssemblyEvent {
    /// A complete frame; `wall_micros` is its time on the wall clock.
    Frame { frame: VideoFrame, wall_micros: i64 },
    /// A frame was begun but not finished (a packet missing, no marker, bad payload).
    Incomplete,
    /// Packets are missing between two packets (`missing_packets`), or a new segment
    /// started (0): whatever was lost, the decoder's references are gone.
    Discontinuity { missing_packets: u64 },
}

/// Collects the packets of one frame (same RTP timestamp, up to the marker bit) and
/// checks that none is missing: the first one carries the codec's start mark (or follows
/// the previous frame's marker without a gap), sequence numbers are contiguous, and the
/// last one has the marker.
#[derive(Debug, Default)]
pub(crate) struct FrameAssembler {
    packets: Vec<TimedPacket>,
    bytes: usize,
    broken: bool,
    /// (segment, extended sequence number) of the last packet seen.
    last: Option<(u32, i64)>,
    last_was_marker: bool,
}

impl FrameAssembler {
    pub fn push(
        &mut self,
        timed: TimedPacket,
        depacketizer: &mut dyn VideoDepacketizer,
        out: &mut Vec<AssemblyEvent>,
    ) {
        let packet = &timed.packet;
        let same_segment = matches!(self.last, Some((segment, _)) if segment == packet.segment);
        let contiguous = matches!(self.last, Some((segment, seq)) if segment == packet.segment && seq + 1 == packet.ext_seq);
        let belongs_to_open_frame = self.packets.first().is_some_and(|first| {
            same_segment && first.packet.ext_timestamp == packet.ext_timestamp
        });
        if !self.packets.is_empty() && !belongs_to_open_frame {
            // The open frame's marker never came.
            self.abandon(out);
        }
        if let Some((_, seq)) = self.last.filter(|_| !contiguous) {
            let missing_packets = if same_segment {
                u64::try_from(packet.ext_seq - seq - 1).unwrap_or(0)
            } else {
                0
            };
            out.push(AssemblyEvent::Discontinuity { missing_packets });
            self.broken = true;
        }
        let follows_marker = contiguous && self.last_was_marker;
        self.last = Some((packet.segment, packet.ext_seq));
        if packet.payload().is_empty() {
            // Padding-only packets (bandwidth probes) take a sequence number but carry
            // no media.
            return;
        }
        self.last_was_marker = packet.marker;
        if self.packets.is_empty() {
            self.broken = !(follows_marker || depacketizer.starts_frame(packet.payload()));
        }
        self.bytes += packet.payload().len();
        if self.bytes > MAX_FRAME_BYTES {
            self.broken = true;
        }
        let marker = packet.marker;
        if !self.broken {
            self.packets.push(timed);
        } else if self.packets.is_empty() {
            // Keep one packet so later packets of this timestamp are recognised.
            self.packets.push(timed);
        }
        if marker {
            self.finish_frame(depacketizer, out);
        }
    }

    fn finish_frame(
        &mut self,
        depacketizer: &mut dyn VideoDepacketizer,
        out: &mut Vec<AssemblyEvent>,
    ) {
        if self.broken {
            self.abandon(out);
            return;
        }
        let wall_micros = self.packets.first().map_or(0, |first| first.wall_micros);
        let payloads: Vec<&[u8]> = self.packets.iter().map(|p| p.packet.payload()).collect();
        let event = match depacketizer.frame(&payloads) {
            Ok(frame) => AssemblyEvent::Frame { frame, wall_micros },
            Err(_) => AssemblyEvent::Incomplete,
        };
        out.push(event);
        self.reset();
    }

    fn abandon(&mut self, out: &mut Vec<AssemblyEvent>) {
        out.push(AssemblyEvent::Incomplete);
        self.reset();
    }

    fn reset(&mut self) {
        self.packets.clear();
        self.bytes = 0;
        self.broken = false;
    }

    /// End of input: an open frame is incomplete.
    pub fn finish(&mut self, out: &mut Vec<AssemblyEvent>) {
        if !self.packets.is_empty() {
            self.abandon(out);
        }
    }
}

/// The frames of a stream a decoder can use: none before the first keyframe, none after
/// a loss until the next keyframe.
#[derive(Debug)]
pub(crate) struct KeyframeGate {
    waiting: bool,
}

impl Default for KeyframeGate {
    fn default() -> Self {
        KeyframeGate { waiting: true }
    }
}

impl KeyframeGate {
    /// Whether a complete frame may be written.
    pub fn pass(&mut self, keyframe: bool) -> bool {
        if self.waiting && !keyframe {
            return false;
        }
        self.waiting = false;
        true
    }

    /// Something was lost: wait for the next keyframe.
    pub fn lost(&mut self) {
        self.waiting = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stitch::sequence::SequencedPacket;

    /// A toy payload format: first byte 1 = start of frame, 0xff = bad frame, byte 2 =
    /// keyframe flag.
    struct Toy;

    impl VideoDepacketizer for Toy {
        fn starts_frame(&self, payload: &[u8]) -> bool {
            payload.first() == Some(&1)
        }
        fn frame(&mut self, payloads: &[&[u8]]) -> Result<VideoFrame, DepacketizeError> {
            if payloads.iter().any(|p| p.first() == Some(&0xff)) {
                return Err(DepacketizeError::Malformed);
            }
            Ok(VideoFrame {
                data: payloads.iter().flat_map(|p| p.iter().copied()).collect(),
                keyframe: payloads[0].get(1) == Some(&1),
                dimensions: None,
            })
        }
    }

    fn timed(seq: i64, ts: i64, marker: bool, payload: &[u8]) -> TimedPacket {
        TimedPacket {
            packet: SequencedPacket {
                segment: 0,
                ext_seq: seq,
                ext_timestamp: ts,
                arrival_micros: 0,
                marker,
                rtp: payload.to_vec(),
                payload: 0..payload.len(),
            },
            wall_micros: ts,
            correction_micros: 0,
        }
    }

    fn describe(events: &[AssemblyEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                AssemblyEvent::Frame { frame, wall_micros } => {
                    format!("frame@{wall_micros}:{}", frame.data.len())
                }
                AssemblyEvent::Incomplete => "incomplete".into(),
                AssemblyEvent::Discontinuity { missing_packets } => format!("gap{missing_packets}"),
            })
            .collect()
    }

    fn assemble(packets: Vec<TimedPacket>) -> Vec<String> {
        let mut assembler = FrameAssembler::default();
        let mut out = Vec::new();
        for p in packets {
            assembler.push(p, &mut Toy, &mut out);
        }
        assembler.finish(&mut out);
        describe(&out)
    }

    #[test]
    fn complete_frames_come_out_whole() {
        let events = assemble(vec![
            timed(1, 100, false, &[1, 1, 9]),
            timed(2, 100, true, &[0, 9]),
            timed(3, 200, true, &[1, 0]),
        ]);
        assert_eq!(events, ["frame@100:5", "frame@200:2"]);
    }

    #[test]
    fn a_missing_middle_packet_breaks_its_frame_only() {
        let events = assemble(vec![
            timed(1, 100, false, &[1, 1]),
            timed(3, 100, true, &[0]),
            timed(4, 200, true, &[1, 0]),
        ]);
        assert_eq!(events, ["gap1", "incomplete", "frame@200:2"]);
    }

    #[test]
    fn a_lost_marker_makes_the_frame_incomplete() {
        let events = assemble(vec![
            timed(1, 100, false, &[1, 1]),
            timed(3, 200, true, &[1, 0]),
        ]);
        assert_eq!(events, ["incomplete", "gap1", "frame@200:2"]);
    }

    #[test]
    fn a_lost_first_packet_is_noticed_without_the_start_mark() {
        // Packet 4 (start of the frame at 200) is lost; 5 follows a gap and has no start.
        let events = assemble(vec![
            timed(3, 100, true, &[1, 0]),
            timed(5, 200, true, &[0, 0]),
        ]);
        assert_eq!(events, ["frame@100:2", "gap1", "incomplete"]);
    }

    #[test]
    fn padding_keeps_the_sequence_contiguous_and_bad_payloads_are_incomplete() {
        let events = assemble(vec![
            timed(1, 100, true, &[1, 1]),
            timed(2, 100, false, &[]),
            timed(3, 200, true, &[0xff]),
            timed(4, 300, false, &[1, 0]),
        ]);
        assert_eq!(events, ["frame@100:2", "incomplete", "incomplete"]);
    }

    #[test]
    fn gate_waits_for_keyframes() {
        let mut gate = KeyframeGate::default();
        assert!(!gate.pass(false), "a late joiner starts at a keyframe");
        assert!(gate.pass(true));
        assert!(gate.pass(false));
        gate.lost();
        assert!(!gate.pass(false));
        assert!(gate.pass(true));
    }
}
