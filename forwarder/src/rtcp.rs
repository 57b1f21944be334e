//! Zero-copy RTCP reader and writers.
//!
//! What is implemented, and where it comes from:
//!
//! - The common header and the compound packet (RFC 3550 §6.1, §6.4), checked as RFC 3550
//!   Appendix A.2 describes, relaxed by RFC 5506 §3.1 (a reduced-size packet need not start
//!   with SR or RR, and may hold a single packet).
//! - Sender and receiver reports with their report blocks (RFC 3550 §6.4.1, §6.4.2), source
//!   description and goodbye kept opaque or lightly parsed (§6.5, §6.6), APP opaque (§6.7).
//! - Transport-layer feedback, PT 205 (RFC 4585 §6.2): generic NACK (FMT 1); transport-wide
//!   congestion control feedback (FMT 15, draft-holmer-rmcat-transport-wide-cc-extensions-01
//!   §3.1), written only: the forwarder sends it to browsers and never asks for it.
//! - Payload-specific feedback, PT 206 (RFC 4585 §6.3): PLI (FMT 1), FIR (FMT 4, RFC 5104
//!   §4.3.1), and application-layer feedback (FMT 15, RFC 4585 §6.4) where REMB
//!   (draft-alvestrand-rmcat-remb) lives.
//! - Extended reports, PT 207 (RFC 3611), kept opaque.
//!
//! The input is a *decrypted* compound packet: SRTCP's E-flag/index word and authentication
//! tag (RFC 3711 §3.4) must already be stripped by the SRTP layer.
//!
//! Nothing here allocates or panics, whatever the input: every parser returns borrowed views
//! into the caller's buffer, every iterator walks those views lazily, and every writer fills a
//! caller-provided `&mut [u8]` and returns the length it used. Byte reads go through
//! [`read_u32`] and friends, which yield 0 instead of panicking past the end; every caller
//! checks lengths first, so that fallback is never taken on a path that produces output.

use core::iter::FusedIterator;
use core::ops::Range;
use core::slice::ChunksExact;

use crate::ids::{SeqNo, Ssrc};

/// The only RTP/RTCP version (RFC 3550 §6.4.1, "V").
pub const VERSION: u8 = 2;
/// Common header: V, P, RC/FMT, PT, length (RFC 3550 §6.4.1).
pub const HEADER_LEN: usize = 4;
/// One reception report block (RFC 3550 §6.4.1).
pub const REPORT_BLOCK_LEN: usize = 24;
/// The RC field has 5 bits (RFC 3550 §6.4.1).
pub const MAX_REPORT_BLOCKS: usize = 31;
/// Largest sub-packet the 16-bit length field can describe: (65535 + 1) 32-bit words.
pub const MAX_PACKET_LEN: usize = (u16::MAX as usize + 1) * 4;

/// Sender SSRC plus the 20-byte sender info of an SR (RFC 3550 §6.4.1).
const SR_FIXED_LEN: usize = 24;
/// Sender SSRC of an RR (RFC 3550 §6.4.2).
const RR_FIXED_LEN: usize = 4;
/// Sender SSRC and media source SSRC of a feedback message (RFC 4585 §6.1).
const FEEDBACK_FIXED_LEN: usize = 8;
/// SSRC and 4-character name of an APP packet (RFC 3550 §6.7).
const APP_FIXED_LEN: usize = 8;
/// Sender SSRC of an XR packet (RFC 3611 §2).
const XR_FIXED_LEN: usize = 4;
/// One generic NACK FCI entry: PID and BLP (RFC 4585 §6.2.1).
const NACK_ENTRY_LEN: usize = 4;
/// One FIR FCI entry: SSRC, sequence number, 24 reserved bits (RFC 5104 §4.3.1.1).
const FIR_ENTRY_LEN: usize = 8;
/// A BLP covers the 16 sequence numbers after the PID (RFC 4585 §6.2.1).
const BLP_SPAN: u16 = 16;

/// RTCP packet types (the PT field, RFC 3550 §12.1, RFC 4585 §6.1, RFC 3611 §2).
pub mod packet_type {
    /// Sender report (RFC 3550 §6.4.1).
    pub const SR: u8 = 200;
    /// Receiver report (RFC 3550 §6.4.2).
    pub const RR: u8 = 201;
    /// Source description (RFC 3550 §6.5).
    pub const SDES: u8 = 202;
    /// Goodbye (RFC 3550 §6.6).
    pub const BYE: u8 = 203;
    /// Application-defined (RFC 3550 §6.7).
    pub const APP: u8 = 204;
    /// Transport-layer feedback (RFC 4585 §6.1).
    pub const RTPFB: u8 = 205;
    /// Payload-specific feedback (RFC 4585 §6.1).
    pub const PSFB: u8 = 206;
    /// Extended report (RFC 3611 §2).
    pub const XR: u8 = 207;
}

/// Feedback message types (the FMT field of PT 205/206).
pub mod feedback_fmt {
    /// RTPFB: generic NACK (RFC 4585 §6.2.1).
    pub const NACK: u8 = 1;
    /// RTPFB: transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions).
    pub const TRANSPORT_CC: u8 = 15;
    /// PSFB: picture loss indication (RFC 4585 §6.3.1).
    pub const PLI: u8 = 1;
    /// PSFB: full intra request (RFC 5104 §4.3.1).
    pub const FIR: u8 = 4;
    /// PSFB: application layer feedback, e.g. REMB (RFC 4585 §6.4).
    pub const AFB: u8 = 15;
}

/// Why an RTCP packet was rejected or could not be written.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    /// Fewer bytes than the common header, or than the fixed part of the packet type.
    #[error("RTCP packet too short")]
    TooShort,
    /// The version field is not 2 (RFC 3550 A.2).
    #[error("RTCP version is not 2")]
    BadVersion,
    /// The length field points past the end of the datagram (RFC 3550 A.2).
    #[error("RTCP length field exceeds the datagram")]
    BadLength,
    /// Padding on a sub-packet other than the last, or a padding count of zero or larger
    /// than the payload (RFC 3550 §6.4.1, A.2).
    #[error("invalid RTCP padding")]
    BadPadding,
    /// A count field (RC, SC) announces more entries than the packet holds.
    #[error("RTCP count field exceeds the packet length")]
    BadCount,
    /// The output buffer cannot hold the packet being written.
    #[error("output buffer too small for the RTCP packet")]
    BufferTooSmall,
    /// More report blocks than the 5-bit RC field can count (RFC 3550 §6.4.1).
    #[error("more than 31 report blocks")]
    TooManyReportBlocks,
    /// A generic NACK must carry at least one entry (RFC 4585 §6.2.1).
    #[error("NACK without any lost sequence number")]
    EmptyNack,
    /// The packet would exceed what the 16-bit length field can describe.
    #[error("RTCP packet longer than the length field allows")]
    PacketTooLong,
    /// A transport-cc feedback must report at least one packet, and at most 65535 (its
    /// 16-bit packet status count).
    #[error("transport-cc feedback with no packet status, or more than 65535")]
    TransportCcStatusCount,
}

/// Big-endian u16 at `at`, or 0 if the slice is too short (callers check lengths first).
fn read_u16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at.wrapping_add(2)) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

/// Big-endian u32 at `at`, or 0 if the slice is too short (callers check lengths first).
fn read_u32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at.wrapping_add(4)) {
        Some(&[w, x, y, z]) => u32::from_be_bytes([w, x, y, z]),
        _ => 0,
    }
}

/// Big-endian u64 at `at`, or 0 if the slice is too short (callers check lengths first).
fn read_u64(b: &[u8], at: usize) -> u64 {
    (u64::from(read_u32(b, at)) << 32) | u64::from(read_u32(b, at.wrapping_add(4)))
}

/// Writes `bytes` at `at` if they fit; writers size-check `buf` before calling this.
fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(at..at.wrapping_add(bytes.len())) {
        dst.copy_from_slice(bytes);
    }
}

/// One sub-packet of a compound RTCP packet, borrowing from the datagram.
///
/// For the opaque variants (`Sdes`, `App`, `ExtendedReport`, `Unknown`) the slice is the body
/// after the 4-byte common header, with any padding removed. The count/subtype field of the
/// header and the raw sub-packet are available through [`CompoundIter::next_with_range`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpPacket<'a> {
    /// PT 200 (RFC 3550 §6.4.1).
    SenderReport(SenderReport<'a>),
    /// PT 201 (RFC 3550 §6.4.2).
    ReceiverReport(ReceiverReport<'a>),
    /// PT 202 (RFC 3550 §6.5): the chunks, unparsed.
    Sdes(&'a [u8]),
    /// PT 203 (RFC 3550 §6.6).
    Bye(Bye<'a>),
    /// PT 204 (RFC 3550 §6.7): SSRC, name and data, unparsed.
    App(&'a [u8]),
    /// PT 205 (RFC 4585 §6.2).
    TransportFeedback(Feedback<'a>),
    /// PT 206 (RFC 4585 §6.3, RFC 5104 §4.3).
    PayloadFeedback(Feedback<'a>),
    /// PT 207 (RFC 3611): sender SSRC and report blocks, unparsed.
    ExtendedReport(&'a [u8]),
    /// Any other packet type in the RTCP range.
    Unknown {
        /// The PT field.
        packet_type: u8,
        /// The body after the common header, padding removed.
        body: &'a [u8],
    },
}

impl RtcpPacket<'_> {
    /// The PT field this packet was parsed from.
    pub fn packet_type(&self) -> u8 {
        match self {
            RtcpPacket::SenderReport(_) => packet_type::SR,
            RtcpPacket::ReceiverReport(_) => packet_type::RR,
            RtcpPacket::Sdes(_) => packet_type::SDES,
            RtcpPacket::Bye(_) => packet_type::BYE,
            RtcpPacket::App(_) => packet_type::APP,
            RtcpPacket::TransportFeedback(_) => packet_type::RTPFB,
            RtcpPacket::PayloadFeedback(_) => packet_type::PSFB,
            RtcpPacket::ExtendedReport(_) => packet_type::XR,
            RtcpPacket::Unknown { packet_type, .. } => *packet_type,
        }
    }
}

/// A sender report (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport<'a> {
    /// SSRC of the sender of this report.
    pub sender_ssrc: Ssrc,
    /// NTP timestamp of the report: 32.32 fixed point seconds since 1900.
    pub ntp_timestamp: u64,
    /// RTP timestamp corresponding to `ntp_timestamp`.
    pub rtp_timestamp: u32,
    /// Sender's packet count.
    pub packet_count: u32,
    /// Sender's octet count.
    pub octet_count: u32,
    reports: &'a [u8],
}

impl<'a> SenderReport<'a> {
    /// The reception report blocks (RC of them).
    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        ReportBlocks::new(self.reports)
    }

    /// The middle 32 bits of the NTP timestamp: what a receiver echoes as LSR (RFC 3550
    /// §6.4.1, "last SR timestamp").
    pub fn compact_ntp(&self) -> u32 {
        (self.ntp_timestamp >> 16) as u32
    }
}

/// A receiver report (RFC 3550 §6.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverReport<'a> {
    /// SSRC of the sender of this report.
    pub sender_ssrc: Ssrc,
    reports: &'a [u8],
}

impl<'a> ReceiverReport<'a> {
    /// The reception report blocks (RC of them).
    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        ReportBlocks::new(self.reports)
    }
}

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: Ssrc,
    /// Fraction of packets lost since the previous report, in 1/256 units.
    pub fraction_lost: u8,
    /// Cumulative number of packets lost: a 24-bit signed value on the wire (negative when
    /// duplicates outnumber losses). Writers clamp it to -0x800000..=0x7fffff (RFC 3550 A.3).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received: cycles in the high 16 bits.
    pub extended_highest_seq: u32,
    /// Interarrival jitter in timestamp units (RFC 3550 A.8).
    pub jitter: u32,
    /// LSR: middle 32 bits of the NTP timestamp of the last SR received, 0 if none.
    pub last_sr: u32,
    /// DLSR: delay since that SR, in 1/65536 seconds.
    pub delay_since_last_sr: u32,
}

/// Largest and smallest values of the 24-bit signed cumulative lost field (RFC 3550 A.3).
const CUMULATIVE_LOST_MAX: i32 = 0x7f_ffff;
const CUMULATIVE_LOST_MIN: i32 = -0x80_0000;

impl ReportBlock {
    fn parse(b: &[u8]) -> ReportBlock {
        let lost_word = read_u32(b, 4);
        // Shift the 24-bit field to the top of an i32 and back down to sign-extend it.
        let cumulative_lost = ((lost_word << 8) as i32) >> 8;
        ReportBlock {
            ssrc: Ssrc(read_u32(b, 0)),
            fraction_lost: (lost_word >> 24) as u8,
            cumulative_lost,
            extended_highest_seq: read_u32(b, 8),
            jitter: read_u32(b, 12),
            last_sr: read_u32(b, 16),
            delay_since_last_sr: read_u32(b, 20),
        }
    }

    fn write(&self, out: &mut [u8]) {
        let lost = self
            .cumulative_lost
            .clamp(CUMULATIVE_LOST_MIN, CUMULATIVE_LOST_MAX) as u32
            & 0x00ff_ffff;
        put(out, 0, &self.ssrc.0.to_be_bytes());
        put(
            out,
            4,
            &((u32::from(self.fraction_lost) << 24) | lost).to_be_bytes(),
        );
        put(out, 8, &self.extended_highest_seq.to_be_bytes());
        put(out, 12, &self.jitter.to_be_bytes());
        put(out, 16, &self.last_sr.to_be_bytes());
        put(out, 20, &self.delay_since_last_sr.to_be_bytes());
    }
}

/// Iterator over the report blocks of an SR or RR.
#[derive(Debug, Clone)]
pub struct ReportBlocks<'a> {
    chunks: ChunksExact<'a, u8>,
}

impl<'a> ReportBlocks<'a> {
    fn new(data: &'a [u8]) -> Self {
        ReportBlocks {
            chunks: data.chunks_exact(REPORT_BLOCK_LEN),
        }
    }
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;

    fn next(&mut self) -> Option<ReportBlock> {
        self.chunks.next().map(ReportBlock::parse)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for ReportBlocks<'_> {}
impl FusedIterator for ReportBlocks<'_> {}

/// A goodbye packet (RFC 3550 §6.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bye<'a> {
    ssrcs: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Bye<'a> {
    /// The sources that are leaving (SC of them).
    pub fn ssrcs(&self) -> SsrcList<'a> {
        SsrcList {
            chunks: self.ssrcs.chunks_exact(4),
        }
    }

    /// The optional reason for leaving (length-prefixed text), or `None` if absent or if its
    /// length byte points past the packet.
    pub fn reason(&self) -> Option<&'a [u8]> {
        let (&len, text) = self.rest.split_first()?;
        text.get(..usize::from(len))
    }
}

/// Iterator over a packed list of 32-bit SSRCs (BYE, REMB).
#[derive(Debug, Clone)]
pub struct SsrcList<'a> {
    chunks: ChunksExact<'a, u8>,
}

impl Iterator for SsrcList<'_> {
    type Item = Ssrc;

    fn next(&mut self) -> Option<Ssrc> {
        self.chunks.next().map(|c| Ssrc(read_u32(c, 0)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for SsrcList<'_> {}
impl FusedIterator for SsrcList<'_> {}

/// A feedback message (RFC 4585 §6.1), transport-layer or payload-specific.
///
/// The helpers interpret the FCI as one particular message type; they do not look at the
/// packet type or `fmt`, so check those first (e.g. `TransportFeedback` with
/// [`feedback_fmt::NACK`] before [`Feedback::nack_pairs`]). On an FCI of another type they
/// yield garbage values, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feedback<'a> {
    /// The FMT field (feedback message type).
    pub fmt: u8,
    /// SSRC of the packet sender (the one asking).
    pub sender_ssrc: Ssrc,
    /// SSRC of the media source the feedback is about (0 for FIR, RFC 5104 §4.3.1.2).
    pub media_ssrc: Ssrc,
    /// Feedback control information, padding removed.
    pub fci: &'a [u8],
}

impl<'a> Feedback<'a> {
    /// Generic NACK entries (RFC 4585 §6.2.1): packet ID and bitmask of following lost
    /// packets.
    pub fn nack_pairs(&self) -> NackPairs<'a> {
        NackPairs {
            chunks: self.fci.chunks_exact(NACK_ENTRY_LEN),
        }
    }

    /// Every sequence number a generic NACK reports lost, in packet order (RFC 4585 §6.2.1:
    /// the PID, then PID+i+1 for each bit i set in the BLP).
    pub fn lost_sequence_numbers(&self) -> LostSequenceNumbers<'a> {
        LostSequenceNumbers {
            pairs: self.nack_pairs(),
            pid: 0,
            pending: 0,
        }
    }

    /// FIR entries (RFC 5104 §4.3.1.1): the SSRC asked to send a decoder refresh point and the
    /// command sequence number.
    pub fn fir_entries(&self) -> FirEntries<'a> {
        FirEntries {
            chunks: self.fci.chunks_exact(FIR_ENTRY_LEN),
        }
    }

    /// Receiver estimated maximum bitrate, if this AFB message is a well-formed REMB
    /// (draft-alvestrand-rmcat-remb-03 §2.2).
    pub fn remb(&self) -> Option<Remb<'a>> {
        let (head, ssrcs) = self.fci.split_at_checked(8)?;
        if head.get(..4)? != b"REMB" {
            return None;
        }
        let word = read_u32(head, 4);
        let num_ssrc = usize::from((word >> 24) as u8);
        let exponent = (word >> 18) & 0x3f;
        let mantissa = u64::from(word & 0x3_ffff);
        // An 18-bit mantissa shifted by up to 63 does not fit in u64: saturate instead.
        let bitrate_bps = if mantissa.leading_zeros() < exponent {
            u64::MAX
        } else {
            mantissa << exponent
        };
        let ssrcs = ssrcs.get(..num_ssrc * 4)?;
        Some(Remb { bitrate_bps, ssrcs })
    }
}

/// Iterator over generic NACK entries: (PID, BLP).
#[derive(Debug, Clone)]
pub struct NackPairs<'a> {
    chunks: ChunksExact<'a, u8>,
}

impl Iterator for NackPairs<'_> {
    type Item = (SeqNo, u16);

    fn next(&mut self) -> Option<(SeqNo, u16)> {
        self.chunks
            .next()
            .map(|c| (SeqNo(read_u16(c, 0)), read_u16(c, 2)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for NackPairs<'_> {}
impl FusedIterator for NackPairs<'_> {}

/// Iterator over the sequence numbers a generic NACK reports lost.
#[derive(Debug, Clone)]
pub struct LostSequenceNumbers<'a> {
    pairs: NackPairs<'a>,
    pid: u16,
    /// Bit 0: the PID itself; bit i+1: BLP bit i. Cleared as they are yielded.
    pending: u32,
}

impl Iterator for LostSequenceNumbers<'_> {
    type Item = SeqNo;

    fn next(&mut self) -> Option<SeqNo> {
        while self.pending == 0 {
            let (pid, blp) = self.pairs.next()?;
            self.pid = pid.0;
            self.pending = 1 | (u32::from(blp) << 1);
        }
        let offset = self.pending.trailing_zeros() as u16;
        self.pending &= self.pending - 1;
        Some(SeqNo(self.pid.wrapping_add(offset)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let now = self.pending.count_ones() as usize;
        let (pairs, _) = self.pairs.size_hint();
        (now + pairs, Some(now + pairs * (usize::from(BLP_SPAN) + 1)))
    }
}

impl FusedIterator for LostSequenceNumbers<'_> {}

/// Iterator over FIR entries: (SSRC, command sequence number).
#[derive(Debug, Clone)]
pub struct FirEntries<'a> {
    chunks: ChunksExact<'a, u8>,
}

impl Iterator for FirEntries<'_> {
    type Item = (Ssrc, u8);

    fn next(&mut self) -> Option<(Ssrc, u8)> {
        self.chunks
            .next()
            .map(|c| (Ssrc(read_u32(c, 0)), (read_u32(c, 4) >> 24) as u8))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for FirEntries<'_> {}
impl FusedIterator for FirEntries<'_> {}

/// A receiver estimated maximum bitrate message (draft-alvestrand-rmcat-remb-03 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remb<'a> {
    /// Mantissa × 2^exponent, saturated at `u64::MAX`.
    pub bitrate_bps: u64,
    ssrcs: &'a [u8],
}

impl<'a> Remb<'a> {
    /// The media sources the estimate applies to.
    pub fn ssrcs(&self) -> SsrcList<'a> {
        SsrcList {
            chunks: self.ssrcs.chunks_exact(4),
        }
    }
}

/// Iterator over the sub-packets of a compound (or reduced-size) RTCP packet.
///
/// Yields `Err` once and then stops when a sub-packet is malformed: after a bad length the
/// rest of the datagram cannot be framed.
#[derive(Debug, Clone)]
pub struct CompoundIter<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
}

/// Iterate over the sub-packets of a decrypted compound RTCP packet (RFC 3550 §6.1).
pub fn iter_compound(buf: &[u8]) -> CompoundIter<'_> {
    CompoundIter {
        buf,
        pos: 0,
        done: false,
    }
}

impl<'a> CompoundIter<'a> {
    /// Like [`Iterator::next`], but also returns the byte range of the sub-packet within the
    /// compound packet (header and padding included), for in-place rewriting with
    /// [`set_sender_ssrc`] and friends or for copying it out verbatim.
    pub fn next_with_range(&mut self) -> Option<Result<(Range<usize>, RtcpPacket<'a>), RtcpError>> {
        if self.done {
            return None;
        }
        let rest = match self.buf.get(self.pos..) {
            Some(rest) if !rest.is_empty() => rest,
            _ => {
                self.done = true;
                return None;
            }
        };
        match parse_one(rest) {
            Ok((len, packet)) => {
                let start = self.pos;
                self.pos += len;
                Some(Ok((start..self.pos, packet)))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl<'a> Iterator for CompoundIter<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_with_range().map(|r| r.map(|(_, p)| p))
    }
}

impl FusedIterator for CompoundIter<'_> {}

/// Validate a compound or reduced-size RTCP packet as a whole and return its number of
/// sub-packets.
///
/// The checks are RFC 3550 A.2's: every sub-packet has version 2, its length fits in what
/// remains, the lengths add up to the datagram exactly, and only the last sub-packet may be
/// padded. A.2's "the first packet is SR or RR" is not checked, because RFC 5506 §3.1 allows
/// reduced-size RTCP (a lone PLI or NACK), which browsers send. On top of A.2, each packet
/// type this module parses must hold its fixed fields and what its count field announces.
pub fn validate(buf: &[u8]) -> Result<usize, RtcpError> {
    if buf.is_empty() {
        return Err(RtcpError::TooShort);
    }
    let mut count = 0;
    for packet in iter_compound(buf) {
        packet?;
        count += 1;
    }
    Ok(count)
}

/// Frame and parse the first sub-packet of `rest`; returns its total length.
fn parse_one(rest: &[u8]) -> Result<(usize, RtcpPacket<'_>), RtcpError> {
    let [first, pt, len_hi, len_lo, ..] = *rest else {
        return Err(RtcpError::TooShort);
    };
    if first >> 6 != VERSION {
        return Err(RtcpError::BadVersion);
    }
    let has_padding = first & 0x20 != 0;
    let count = first & 0x1f;
    let len = (usize::from(u16::from_be_bytes([len_hi, len_lo])) + 1) * 4;
    let packet = rest.get(..len).ok_or(RtcpError::BadLength)?;
    let mut body_end = len;
    if has_padding {
        // RFC 3550 A.2: padding only on the last packet of the compound.
        if len != rest.len() {
            return Err(RtcpError::BadPadding);
        }
        // The count includes itself (so it is at least 1) and cannot eat the header.
        // Indexing is in bounds: `packet` is exactly `len` >= 4 bytes long.
        let pad = usize::from(packet[len - 1]);
        if pad == 0 || pad > len - HEADER_LEN {
            return Err(RtcpError::BadPadding);
        }
        body_end = len - pad;
    }
    let body = packet
        .get(HEADER_LEN..body_end)
        .ok_or(RtcpError::BadPadding)?;
    Ok((len, parse_body(pt, count, body)?))
}

fn parse_body(pt: u8, count: u8, body: &[u8]) -> Result<RtcpPacket<'_>, RtcpError> {
    let blocks = |fixed: usize| -> Result<&[u8], RtcpError> {
        if body.len() < fixed {
            return Err(RtcpError::TooShort);
        }
        // Bytes after the announced blocks are a profile-specific extension (RFC 3550
        // §6.4.1) and are ignored.
        body.get(fixed..fixed + usize::from(count) * REPORT_BLOCK_LEN)
            .ok_or(RtcpError::BadCount)
    };
    let packet = match pt {
        packet_type::SR => RtcpPacket::SenderReport(SenderReport {
            reports: blocks(SR_FIXED_LEN)?,
            sender_ssrc: Ssrc(read_u32(body, 0)),
            ntp_timestamp: read_u64(body, 4),
            rtp_timestamp: read_u32(body, 12),
            packet_count: read_u32(body, 16),
            octet_count: read_u32(body, 20),
        }),
        packet_type::RR => RtcpPacket::ReceiverReport(ReceiverReport {
            reports: blocks(RR_FIXED_LEN)?,
            sender_ssrc: Ssrc(read_u32(body, 0)),
        }),
        packet_type::SDES => RtcpPacket::Sdes(body),
        packet_type::BYE => {
            let (ssrcs, rest) = body
                .split_at_checked(usize::from(count) * 4)
                .ok_or(RtcpError::BadCount)?;
            RtcpPacket::Bye(Bye { ssrcs, rest })
        }
        packet_type::APP => {
            if body.len() < APP_FIXED_LEN {
                return Err(RtcpError::TooShort);
            }
            RtcpPacket::App(body)
        }
        packet_type::RTPFB | packet_type::PSFB => {
            let (fixed, fci) = body
                .split_at_checked(FEEDBACK_FIXED_LEN)
                .ok_or(RtcpError::TooShort)?;
            let feedback = Feedback {
                fmt: count,
                sender_ssrc: Ssrc(read_u32(fixed, 0)),
                media_ssrc: Ssrc(read_u32(fixed, 4)),
                fci,
            };
            if pt == packet_type::RTPFB {
                RtcpPacket::TransportFeedback(feedback)
            } else {
                RtcpPacket::PayloadFeedback(feedback)
            }
        }
        packet_type::XR => {
            if body.len() < XR_FIXED_LEN {
                return Err(RtcpError::TooShort);
            }
            RtcpPacket::ExtendedReport(body)
        }
        packet_type => RtcpPacket::Unknown { packet_type, body },
    };
    Ok(packet)
}

/// Overwrite the sender SSRC (bytes 4..8) of one sub-packet, as when forwarding a report or
/// feedback under the forwarder's own SSRC. SR, RR, APP, XR and feedback packets always have
/// it there once parsed; an SDES or BYE may be empty, and then bytes 4..8 could be padding.
/// Does nothing if `packet` is shorter than 8 bytes; pass a range from
/// [`CompoundIter::next_with_range`].
pub fn set_sender_ssrc(packet: &mut [u8], ssrc: Ssrc) {
    if packet.len() >= 8 {
        put(packet, 4, &ssrc.0.to_be_bytes());
    }
}

/// Overwrite the media source SSRC (bytes 8..12) of one RTPFB/PSFB sub-packet (RFC 4585
/// §6.1), as when forwarding a subscriber's NACK or PLI to the publisher. Does nothing if
/// `packet` is shorter than 12 bytes.
///
/// FIR is different: its media SSRC field is unused and the target sits in each FCI entry
/// along with a per-target command sequence number (RFC 5104 §4.3.1), so a forwarder writes
/// a fresh FIR with [`write_fir`] rather than rewriting one.
pub fn set_media_ssrc(packet: &mut [u8], ssrc: Ssrc) {
    if packet.len() >= 12 {
        put(packet, 8, &ssrc.0.to_be_bytes());
    }
}

/// Overwrite the SSRC of report block `index` in one SR or RR sub-packet (RFC 3550 §6.4.1),
/// as when forwarding a report about a rewritten stream. Returns false, changing nothing, if
/// the packet is not an SR/RR or has no such block.
pub fn set_report_block_ssrc(packet: &mut [u8], index: usize, ssrc: Ssrc) -> bool {
    let (Some(&first), Some(&pt)) = (packet.first(), packet.get(1)) else {
        return false;
    };
    let fixed = match pt {
        packet_type::SR => SR_FIXED_LEN,
        packet_type::RR => RR_FIXED_LEN,
        _ => return false,
    };
    if index >= usize::from(first & 0x1f) {
        return false;
    }
    let at = HEADER_LEN + fixed + index * REPORT_BLOCK_LEN;
    if packet.len() < at + REPORT_BLOCK_LEN {
        return false;
    }
    put(packet, at, &ssrc.0.to_be_bytes());
    true
}

/// Write a common header for a sub-packet of `total_len` bytes (a multiple of 4).
fn write_header(buf: &mut [u8], count: u8, pt: u8, total_len: usize) -> Result<(), RtcpError> {
    if total_len > MAX_PACKET_LEN {
        return Err(RtcpError::PacketTooLong);
    }
    let words = (total_len / 4).saturating_sub(1) as u16;
    put(buf, 0, &[(VERSION << 6) | (count & 0x1f), pt]);
    put(buf, 2, &words.to_be_bytes());
    Ok(())
}

/// Write a receiver report (RFC 3550 §6.4.2) into `buf`; returns its length.
pub fn write_receiver_report(
    buf: &mut [u8],
    sender_ssrc: Ssrc,
    blocks: &[ReportBlock],
) -> Result<usize, RtcpError> {
    if blocks.len() > MAX_REPORT_BLOCKS {
        return Err(RtcpError::TooManyReportBlocks);
    }
    let len = HEADER_LEN + RR_FIXED_LEN + blocks.len() * REPORT_BLOCK_LEN;
    let out = buf.get_mut(..len).ok_or(RtcpError::BufferTooSmall)?;
    // At most 31 blocks, so the count fits in the 5-bit RC field.
    write_header(out, blocks.len() as u8, packet_type::RR, len)?;
    put(out, 4, &sender_ssrc.0.to_be_bytes());
    let block_area = out.get_mut(HEADER_LEN + RR_FIXED_LEN..).unwrap_or_default();
    for (block, dst) in blocks
        .iter()
        .zip(block_area.chunks_exact_mut(REPORT_BLOCK_LEN))
    {
        block.write(dst);
    }
    Ok(len)
}

/// The sender information of a sender report (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderInfo {
    pub ntp_timestamp: u64,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

/// Write a sender report (RFC 3550 §6.4.1) into `buf`; returns its length.
pub fn write_sender_report(
    buf: &mut [u8],
    sender_ssrc: Ssrc,
    info: &SenderInfo,
    blocks: &[ReportBlock],
) -> Result<usize, RtcpError> {
    if blocks.len() > MAX_REPORT_BLOCKS {
        return Err(RtcpError::TooManyReportBlocks);
    }
    let len = HEADER_LEN + SR_FIXED_LEN + blocks.len() * REPORT_BLOCK_LEN;
    let out = buf.get_mut(..len).ok_or(RtcpError::BufferTooSmall)?;
    // At most 31 blocks, so the count fits in the 5-bit RC field.
    write_header(out, blocks.len() as u8, packet_type::SR, len)?;
    put(out, 4, &sender_ssrc.0.to_be_bytes());
    put(out, 8, &info.ntp_timestamp.to_be_bytes());
    put(out, 16, &info.rtp_timestamp.to_be_bytes());
    put(out, 20, &info.packet_count.to_be_bytes());
    put(out, 24, &info.octet_count.to_be_bytes());
    let block_area = out.get_mut(HEADER_LEN + SR_FIXED_LEN..).unwrap_or_default();
    for (block, dst) in blocks
        .iter()
        .zip(block_area.chunks_exact_mut(REPORT_BLOCK_LEN))
    {
        block.write(dst);
    }
    Ok(len)
}

/// Write an SDES packet with one chunk holding a CNAME item (RFC 3550 §6.5.1), which a full
/// compound packet must carry (§6.1). `cname` is cut to 255 bytes.
pub fn write_sdes_cname(buf: &mut [u8], ssrc: Ssrc, cname: &[u8]) -> Result<usize, RtcpError> {
    const CNAME: u8 = 1;
    let cname = &cname[..cname.len().min(255)];
    // SSRC, type, length, text, then at least one null octet ending the item list,
    // padded to a 32-bit boundary.
    let chunk = 4 + 2 + cname.len() + 1;
    let len = HEADER_LEN + chunk.div_ceil(4) * 4;
    let out = buf.get_mut(..len).ok_or(RtcpError::BufferTooSmall)?;
    write_header(out, 1, packet_type::SDES, len)?;
    put(out, 4, &ssrc.0.to_be_bytes());
    put(out, 8, &[CNAME, cname.len() as u8]);
    put(out, 10, cname);
    if let Some(rest) = out.get_mut(10 + cname.len()..) {
        rest.fill(0);
    }
    Ok(len)
}

/// Write the header and SSRCs shared by every feedback message (RFC 4585 §6.1).
fn write_feedback_header(
    out: &mut [u8],
    pt: u8,
    fmt: u8,
    sender_ssrc: Ssrc,
    media_ssrc: Ssrc,
    total_len: usize,
) -> Result<(), RtcpError> {
    write_header(out, fmt, pt, total_len)?;
    put(out, 4, &sender_ssrc.0.to_be_bytes());
    put(out, 8, &media_ssrc.0.to_be_bytes());
    Ok(())
}

/// Write a picture loss indication (RFC 4585 §6.3.1): PSFB, FMT 1, no FCI.
pub fn write_pli(buf: &mut [u8], sender_ssrc: Ssrc, media_ssrc: Ssrc) -> Result<usize, RtcpError> {
    let len = HEADER_LEN + FEEDBACK_FIXED_LEN;
    let out = buf.get_mut(..len).ok_or(RtcpError::BufferTooSmall)?;
    write_feedback_header(
        out,
        packet_type::PSFB,
        feedback_fmt::PLI,
        sender_ssrc,
        media_ssrc,
        len,
    )?;
    Ok(len)
}

/// Write a full intra request (RFC 5104 §4.3.1) for `media_ssrc` with command sequence
/// number `seq`, which the caller increments for each new request to the same source
/// (RFC 5104 §4.3.1.2). The header's media SSRC is 0 as that section requires; the target
/// goes in the FCI entry.
pub fn write_fir(
    buf: &mut [u8],
    sender_ssrc: Ssrc,
    media_ssrc: Ssrc,
    seq: u8,
) -> Result<usize, RtcpError> {
    let len = HEADER_LEN + FEEDBACK_FIXED_LEN + FIR_ENTRY_LEN;
    let out = buf.get_mut(..len).ok_or(RtcpError::BufferTooSmall)?;
    write_feedback_header(
        out,
        packet_type::PSFB,
        feedback_fmt::FIR,
        sender_ssrc,
        Ssrc(0),
        len,
    )?;
    put(out, 12, &media_ssrc.0.to_be_bytes());
    put(out, 16, &[seq, 0, 0, 0]);
    Ok(len)
}

/// Write a generic NACK (RFC 4585 §6.2.1) reporting `lost` as lost; returns its length.
///
/// Sequence numbers are packed greedily into (PID, BLP) entries in the order given: each
/// one goes into the current entry if it lies 1..=16 after its PID, else starts a new
/// entry. Ascending order (modulo 2^16) gives the fewest entries; any order is reported
/// correctly. Repeats of the current PID are skipped.
pub fn write_nack(
    buf: &mut [u8],
    sender_ssrc: Ssrc,
    media_ssrc: Ssrc,
    lost: &[SeqNo],
) -> Result<usize, RtcpError> {
    let fixed = HEADER_LEN + FEEDBACK_FIXED_LEN;
    if buf.len() < fixed {
        return Err(RtcpError::BufferTooSmall);
    }
    let mut len = fixed;
    let mut current: Option<(u16, u16)> = None;
    for &seq in lost {
        if let Some((pid, blp)) = current.as_mut() {
            let distance = seq.0.wrapping_sub(*pid);
            if distance == 0 {
                continue;
            }
            if distance <= BLP_SPAN {
                *blp |= 1 << (distance - 1);
                continue;
            }
            len = push_nack_entry(buf, len, *pid, *blp)?;
        }
        current = Some((seq.0, 0));
    }
    let (pid, blp) = current.ok_or(RtcpError::EmptyNack)?;
    len = push_nack_entry(buf, len, pid, blp)?;
    write_feedback_header(
        buf,
        packet_type::RTPFB,
        feedback_fmt::NACK,
        sender_ssrc,
        media_ssrc,
        len,
    )?;
    Ok(len)
}

fn push_nack_entry(buf: &mut [u8], at: usize, pid: u16, blp: u16) -> Result<usize, RtcpError> {
    let end = at + NACK_ENTRY_LEN;
    if end > MAX_PACKET_LEN {
        return Err(RtcpError::PacketTooLong);
    }
    let dst = buf.get_mut(at..end).ok_or(RtcpError::BufferTooSmall)?;
    put(dst, 0, &pid.to_be_bytes());
    put(dst, 2, &blp.to_be_bytes());
    Ok(end)
}

/// Sender SSRC, media SSRC, base sequence number, packet status count, reference time and
/// feedback packet count of a transport-cc feedback
/// (draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1).
const TRANSPORT_CC_FIXED_LEN: usize = FEEDBACK_FIXED_LEN + 8;
/// A run length chunk counts up to 13 bits' worth of one status (§3.1.3).
const MAX_RUN_LENGTH: usize = 0x1fff;
/// A status vector chunk holds 14 one-bit or 7 two-bit symbols (§3.1.4).
const ONE_BIT_SYMBOLS: usize = 14;
const TWO_BIT_SYMBOLS: usize = 7;
/// Packet status symbols (§3.1.1). A one-bit vector can say only the first two.
const NOT_RECEIVED: u16 = 0;
const SMALL_DELTA: u16 = 1;
const LARGE_DELTA: u16 = 2;

/// Receive deltas of transport-cc feedback count in 250 µs ticks (§3.1.5).
pub const TRANSPORT_CC_DELTA_TICK_US: u64 = 250;
/// The reference time counts in 64 ms, that is 256 delta ticks (§3.1).
pub const TRANSPORT_CC_REFERENCE_TICKS: u32 = 256;

/// The fields of a transport-wide congestion control feedback message (RTPFB, FMT 15,
/// draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1) besides its packet statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportCc {
    /// SSRC of the packet sender (the one giving feedback).
    pub sender_ssrc: Ssrc,
    /// SSRC of one of the media sources the feedback is about (the sequence numbers are
    /// transport-wide, so any of the peer's).
    pub media_ssrc: Ssrc,
    /// Transport-wide sequence number of the first packet reported.
    pub base_sequence: SeqNo,
    /// What the first receive delta counts from, in multiples of 64 ms, in the feedback
    /// sender's own time base. 24 bits on the wire: higher bits are dropped.
    pub reference_time: u32,
    /// One more for each feedback message sent, wrapping: the media sender detects lost
    /// feedback by it.
    pub feedback_count: u8,
}

fn status_symbol(status: Option<i16>) -> u16 {
    match status {
        None => NOT_RECEIVED,
        Some(0..=255) => SMALL_DELTA,
        Some(_) => LARGE_DELTA,
    }
}

/// Receive delta bytes of one status (§3.1.5): none for a packet not received, one for
/// 0..=63.75 ms, two (signed) for anything else.
fn delta_len(status: Option<i16>) -> usize {
    match status_symbol(status) {
        NOT_RECEIVED => 0,
        SMALL_DELTA => 1,
        _ => 2,
    }
}

/// The packet chunk encoding the statuses at the start of `statuses`, and how many of them
/// it covers (at least one unless `statuses` is empty).
///
/// A run length chunk when the first status repeats at least as far as a status vector
/// would reach, so a run never covers fewer statuses than the vector it replaces; else a
/// vector of one-bit symbols (14 statuses) when none of those needs a large delta, or of
/// two-bit symbols (7). Symbols a vector holds past the end of `statuses` say "not
/// received": a reader stops at the packet status count, and they claim no delta.
fn packet_chunk(statuses: &[Option<i16>]) -> (u16, usize) {
    let Some(&first) = statuses.first() else {
        return (0, 0);
    };
    let first = status_symbol(first);
    let run = statuses
        .iter()
        .take(MAX_RUN_LENGTH)
        .take_while(|&&s| status_symbol(s) == first)
        .count();
    let one_bit = statuses
        .iter()
        .take(ONE_BIT_SYMBOLS)
        .all(|&s| status_symbol(s) != LARGE_DELTA);
    let capacity = if one_bit {
        ONE_BIT_SYMBOLS
    } else {
        TWO_BIT_SYMBOLS
    };
    let reach = capacity.min(statuses.len());
    if run >= reach {
        // T = 0, S = the symbol, 13-bit run length (§3.1.3); `run` is at most 0x1fff.
        return ((first << 13) | run as u16, run);
    }
    // T = 1, S = symbol size (0: one bit, 1: two bits), symbols first to last from the
    // most significant bit down (§3.1.4).
    let (mut chunk, bits) = if one_bit { (0x8000, 1) } else { (0xc000, 2) };
    for (i, &s) in statuses.iter().take(capacity).enumerate() {
        chunk |= status_symbol(s) << (14 - bits * (i + 1));
    }
    (chunk, reach)
}

/// The packet chunks of `statuses`, in order.
fn packet_chunks(statuses: &[Option<i16>]) -> impl Iterator<Item = u16> + '_ {
    let mut rest = statuses;
    core::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (chunk, covered) = packet_chunk(rest);
        rest = rest.get(covered..).unwrap_or_default();
        Some(chunk)
    })
}

/// Length of the transport-cc feedback [`write_transport_cc`] writes for `statuses`.
pub fn transport_cc_len(statuses: &[Option<i16>]) -> usize {
    let chunks = packet_chunks(statuses).count();
    let deltas: usize = statuses.iter().map(|&s| delta_len(s)).sum();
    (HEADER_LEN + TRANSPORT_CC_FIXED_LEN + 2 * chunks + deltas).next_multiple_of(4)
}

/// At least [`transport_cc_len`] of any `statuses` slice of `count` statuses whose receive
/// deltas take `delta_bytes`: for choosing how many statuses fit a packet without encoding
/// them. Tight but for long runs of one status, which take one chunk where this counts
/// one per 7 statuses (no chunk but the last covers fewer, see `packet_chunk`).
pub fn transport_cc_max_len(count: usize, delta_bytes: usize) -> usize {
    (HEADER_LEN + TRANSPORT_CC_FIXED_LEN + 2 * count.div_ceil(TWO_BIT_SYMBOLS) + delta_bytes)
        .next_multiple_of(4)
}

/// Write a transport-wide congestion control feedback message
/// (draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1) reporting on the packets
/// `fields.base_sequence` onwards, one status each: `None` when the packet was not
/// received, `Some(delta)` when it was, `delta` 250 µs ticks after the previous packet
/// received in this message (the first one: after the reference time). Returns its length,
/// [`transport_cc_len`]. Deltas of 0..=255 ticks take one byte, any other two; the FCI is
/// zero-padded to 32 bits as §3.1 draws it.
pub fn write_transport_cc(
    buf: &mut [u8],
    fields: &TransportCc,
    statuses: &[Option<i16>],
) -> Result<usize, RtcpError> {
    let count = u16::try_from(statuses.len())
        .ok()
        .filter(|&n| n > 0)
        .ok_or(RtcpError::TransportCcStatusCount)?;
    let len = transport_cc_len(statuses);
    let out = buf.get_mut(..len).ok_or(RtcpError::BufferTooSmall)?;
    write_feedback_header(
        out,
        packet_type::RTPFB,
        feedback_fmt::TRANSPORT_CC,
        fields.sender_ssrc,
        fields.media_ssrc,
        len,
    )?;
    put(out, 12, &fields.base_sequence.0.to_be_bytes());
    put(out, 14, &count.to_be_bytes());
    let reference = ((fields.reference_time & 0x00ff_ffff) << 8) | u32::from(fields.feedback_count);
    put(out, 16, &reference.to_be_bytes());
    let mut at = HEADER_LEN + TRANSPORT_CC_FIXED_LEN;
    for chunk in packet_chunks(statuses) {
        put(out, at, &chunk.to_be_bytes());
        at += 2;
    }
    for &status in statuses {
        match status {
            // One unsigned byte (§3.1.5).
            Some(delta @ 0..=255) => put(out, at, &[delta as u8]),
            Some(delta) => put(out, at, &delta.to_be_bytes()),
            None => {}
        }
        at += delta_len(status);
    }
    if let Some(padding) = out.get_mut(at..) {
        padding.fill(0);
    }
    Ok(len)
}

#[cfg(test)]
pub(crate) mod oracle;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RR + SDES + BYE + PLI + NACK, as a browser might send them (hand-assembled).
    fn sample_compound() -> Vec<u8> {
        let mut v = vec![
            // RR, RC=1, length 7
            0x81, 0xc9, 0x00, 0x07, //
            0x90, 0x2f, 0x9e, 0x2e, // sender SSRC
            0xbc, 0x5e, 0x9a, 0x40, // block SSRC
            0x10, 0xff, 0xff, 0xfe, // fraction 16, cumulative -2
            0x00, 0x01, 0x46, 0xe1, // ext highest seq
            0x00, 0x00, 0x01, 0x11, // jitter 273
            0x09, 0xf3, 0x64, 0x32, // LSR
            0x00, 0x02, 0x4a, 0x79, // DLSR
            // SDES, SC=1, length 3: CNAME "abcd"
            0x81, 0xca, 0x00, 0x03, //
            0x90, 0x2f, 0x9e, 0x2e, //
            0x01, 0x04, b'a', b'b', //
            b'c', b'd', 0x00, 0x00, //
            // BYE, SC=1, with reason "x", length 2
            0x81, 0xcb, 0x00, 0x02, //
            0x90, 0x2f, 0x9e, 0x2e, //
            0x01, b'x', 0x00, 0x00, //
            // PLI, length 2
            0x81, 0xce, 0x00, 0x02, //
            0x90, 0x2f, 0x9e, 0x2e, //
            0xbc, 0x5e, 0x9a, 0x40, //
        ];
        // NACK, length 3: PID 0xfff0, BLP 0x8001 (lost 0xfff0, 0xfff1, 0x0000)
        v.extend_from_slice(&[
            0x81, 0xcd, 0x00, 0x03, //
            0x90, 0x2f, 0x9e, 0x2e, //
            0xbc, 0x5e, 0x9a, 0x40, //
            0xff, 0xf0, 0x80, 0x01, //
        ]);
        v
    }

    #[test]
    fn parses_sample_compound() {
        let buf = sample_compound();
        assert_eq!(validate(&buf), Ok(5));
        let packets: Vec<_> = iter_compound(&buf).collect::<Result<_, _>>().unwrap();

        let RtcpPacket::ReceiverReport(rr) = packets[0] else {
            panic!("expected RR, got {:?}", packets[0]);
        };
        assert_eq!(rr.sender_ssrc, Ssrc(0x902f9e2e));
        let blocks: Vec<_> = rr.report_blocks().collect();
        assert_eq!(
            blocks,
            vec![ReportBlock {
                ssrc: Ssrc(0xbc5e9a40),
                fraction_lost: 16,
                cumulative_lost: -2,
                extended_highest_seq: 0x146e1,
                jitter: 273,
                last_sr: 0x09f36432,
                delay_since_last_sr: 0x24a79,
            }]
        );

        assert_eq!(
            packets[1],
            RtcpPacket::Sdes(&[0x90, 0x2f, 0x9e, 0x2e, 1, 4, b'a', b'b', b'c', b'd', 0, 0])
        );

        let RtcpPacket::Bye(bye) = packets[2] else {
            panic!("expected BYE");
        };
        assert_eq!(bye.ssrcs().collect::<Vec<_>>(), vec![Ssrc(0x902f9e2e)]);
        assert_eq!(bye.reason(), Some(&b"x"[..]));

        let RtcpPacket::PayloadFeedback(pli) = packets[3] else {
            panic!("expected PSFB");
        };
        assert_eq!(pli.fmt, feedback_fmt::PLI);
        assert_eq!(pli.media_ssrc, Ssrc(0xbc5e9a40));
        assert!(pli.fci.is_empty());

        let RtcpPacket::TransportFeedback(nack) = packets[4] else {
            panic!("expected RTPFB");
        };
        assert_eq!(nack.fmt, feedback_fmt::NACK);
        assert_eq!(
            nack.nack_pairs().collect::<Vec<_>>(),
            vec![(SeqNo(0xfff0), 0x8001)]
        );
        assert_eq!(
            nack.lost_sequence_numbers().collect::<Vec<_>>(),
            vec![SeqNo(0xfff0), SeqNo(0xfff1), SeqNo(0)]
        );
    }

    #[test]
    fn ranges_cover_the_datagram() {
        let buf = sample_compound();
        let mut it = iter_compound(&buf);
        let mut end = 0;
        while let Some(item) = it.next_with_range() {
            let (range, packet) = item.unwrap();
            assert_eq!(range.start, end);
            assert_eq!(buf[range.start + 1], packet.packet_type());
            end = range.end;
        }
        assert_eq!(end, buf.len());
    }

    #[test]
    fn sender_report_fields() {
        let mut buf = vec![0x80, 200, 0x00, 0x06];
        buf.extend_from_slice(&0x1122_3344u32.to_be_bytes());
        buf.extend_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        buf.extend_from_slice(&90_000u32.to_be_bytes());
        buf.extend_from_slice(&10u32.to_be_bytes());
        buf.extend_from_slice(&1000u32.to_be_bytes());
        let packets: Vec<_> = iter_compound(&buf).collect::<Result<_, _>>().unwrap();
        let RtcpPacket::SenderReport(sr) = packets[0] else {
            panic!("expected SR");
        };
        assert_eq!(sr.sender_ssrc, Ssrc(0x1122_3344));
        assert_eq!(sr.ntp_timestamp, 0x0102_0304_0506_0708);
        assert_eq!(sr.compact_ntp(), 0x0304_0506);
        assert_eq!(sr.rtp_timestamp, 90_000);
        assert_eq!(sr.packet_count, 10);
        assert_eq!(sr.octet_count, 1000);
        assert_eq!(sr.report_blocks().count(), 0);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(validate(&[]), Err(RtcpError::TooShort));
        assert_eq!(validate(&[0x80, 201, 0]), Err(RtcpError::TooShort));
        // Version 1.
        assert_eq!(
            validate(&[0x40, 201, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::BadVersion)
        );
        // Length says 3 words but only 2 present.
        assert_eq!(
            validate(&[0x80, 201, 0, 2, 0, 0, 0, 0]),
            Err(RtcpError::BadLength)
        );
        // Trailing bytes that do not form a header.
        assert_eq!(
            validate(&[0x80, 201, 0, 1, 0, 0, 0, 0, 0x80]),
            Err(RtcpError::TooShort)
        );
        // RC=1 but no block.
        assert_eq!(
            validate(&[0x81, 201, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::BadCount)
        );
        // SR without sender info.
        assert_eq!(
            validate(&[0x80, 200, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::TooShort)
        );
        // Feedback without media SSRC.
        assert_eq!(
            validate(&[0x81, 206, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::TooShort)
        );
        // BYE announcing two sources with room for one.
        assert_eq!(
            validate(&[0x82, 203, 0, 1, 0, 0, 0, 1]),
            Err(RtcpError::BadCount)
        );
    }

    #[test]
    fn padding_rules() {
        // RR padded by 4 at the end of the compound: fine, and the body excludes it.
        let padded = [0xa0, 201, 0, 2, 0, 0, 0, 7, 0, 0, 0, 4];
        assert_eq!(validate(&padded), Ok(1));
        // Padding count 0 or larger than the payload.
        assert_eq!(
            validate(&[0xa0, 201, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0]),
            Err(RtcpError::BadPadding)
        );
        assert_eq!(
            validate(&[0xa0, 201, 0, 2, 0, 0, 0, 7, 0, 0, 0, 9]),
            Err(RtcpError::BadPadding)
        );
        // Padding that eats the RR's sender SSRC.
        assert_eq!(
            validate(&[0xa0, 201, 0, 1, 0, 0, 0, 4]),
            Err(RtcpError::TooShort)
        );
        // Padding on a packet that is not the last.
        let mut two = padded.to_vec();
        two.extend_from_slice(&[0x80, 201, 0, 1, 0, 0, 0, 7]);
        assert_eq!(validate(&two), Err(RtcpError::BadPadding));
        // Padded opaque packet: body trimmed.
        let app = [
            0xa0, 204, 0, 3, 0, 0, 0, 1, b'n', b'a', b'm', b'e', 0, 0, 0, 4,
        ];
        let packets: Vec<_> = iter_compound(&app).collect::<Result<_, _>>().unwrap();
        assert_eq!(packets, vec![RtcpPacket::App(&app[4..12])]);
    }

    #[test]
    fn iterator_stops_after_error() {
        let mut buf = vec![0x80, 201, 0, 1, 0, 0, 0, 1];
        buf.extend_from_slice(&[0x40, 201, 0, 1, 0, 0, 0, 1]);
        buf.extend_from_slice(&[0x80, 201, 0, 1, 0, 0, 0, 1]);
        let items: Vec<_> = iter_compound(&buf).collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert_eq!(items[1], Err(RtcpError::BadVersion));
    }

    #[test]
    fn unknown_and_xr() {
        let buf = [0x80, 210, 0, 1, 1, 2, 3, 4, 0x80, 207, 0, 1, 5, 6, 7, 8];
        let packets: Vec<_> = iter_compound(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            packets,
            vec![
                RtcpPacket::Unknown {
                    packet_type: 210,
                    body: &[1, 2, 3, 4]
                },
                RtcpPacket::ExtendedReport(&[5, 6, 7, 8]),
            ]
        );
    }

    #[test]
    fn receiver_report_round_trip() {
        let blocks = [
            ReportBlock {
                ssrc: Ssrc(1),
                fraction_lost: 255,
                cumulative_lost: 0x7f_ffff,
                extended_highest_seq: 0x0003_0010,
                jitter: 12,
                last_sr: 0xdead_beef,
                delay_since_last_sr: 65536,
            },
            ReportBlock {
                ssrc: Ssrc(2),
                cumulative_lost: -0x80_0000,
                ..ReportBlock::default()
            },
        ];
        let mut buf = [0u8; 64];
        let len = write_receiver_report(&mut buf, Ssrc(99), &blocks).unwrap();
        assert_eq!(len, 56);
        assert_eq!(validate(&buf[..len]), Ok(1));
        let Some(Ok(RtcpPacket::ReceiverReport(rr))) = iter_compound(&buf[..len]).next() else {
            panic!("expected RR");
        };
        assert_eq!(rr.sender_ssrc, Ssrc(99));
        assert_eq!(rr.report_blocks().collect::<Vec<_>>(), blocks.to_vec());
    }

    #[test]
    fn cumulative_lost_is_clamped() {
        let block = ReportBlock {
            cumulative_lost: i32::MAX,
            ..ReportBlock::default()
        };
        let mut buf = [0u8; 32];
        let len = write_receiver_report(&mut buf, Ssrc(1), &[block]).unwrap();
        let Some(Ok(RtcpPacket::ReceiverReport(rr))) = iter_compound(&buf[..len]).next() else {
            panic!("expected RR");
        };
        assert_eq!(
            rr.report_blocks().next().unwrap().cumulative_lost,
            0x7f_ffff
        );
        let block = ReportBlock {
            cumulative_lost: i32::MIN,
            ..ReportBlock::default()
        };
        let len = write_receiver_report(&mut buf, Ssrc(1), &[block]).unwrap();
        let Some(Ok(RtcpPacket::ReceiverReport(rr))) = iter_compound(&buf[..len]).next() else {
            panic!("expected RR");
        };
        assert_eq!(
            rr.report_blocks().next().unwrap().cumulative_lost,
            -0x80_0000
        );
    }

    #[test]
    fn writers_check_buffer_size() {
        let mut small = [0u8; 11];
        assert_eq!(
            write_pli(&mut small, Ssrc(1), Ssrc(2)),
            Err(RtcpError::BufferTooSmall)
        );
        assert_eq!(
            write_fir(&mut small, Ssrc(1), Ssrc(2), 0),
            Err(RtcpError::BufferTooSmall)
        );
        assert_eq!(
            write_nack(&mut small, Ssrc(1), Ssrc(2), &[SeqNo(1)]),
            Err(RtcpError::BufferTooSmall)
        );
        let mut sixteen = [0u8; 16];
        assert_eq!(
            write_nack(&mut sixteen, Ssrc(1), Ssrc(2), &[SeqNo(1), SeqNo(100)]),
            Err(RtcpError::BufferTooSmall)
        );
        assert_eq!(
            write_nack(&mut sixteen, Ssrc(1), Ssrc(2), &[]),
            Err(RtcpError::EmptyNack)
        );
        assert_eq!(
            write_receiver_report(&mut [0u8; 31], Ssrc(1), &[ReportBlock::default()]),
            Err(RtcpError::BufferTooSmall)
        );
        assert_eq!(
            write_receiver_report(&mut [0u8; 1024], Ssrc(1), &[ReportBlock::default(); 32]),
            Err(RtcpError::TooManyReportBlocks)
        );
    }

    #[test]
    fn pli_and_fir_round_trip() {
        let mut buf = [0u8; 64];
        let len = write_pli(&mut buf, Ssrc(7), Ssrc(8)).unwrap();
        assert_eq!(&buf[..4], &[0x81, 206, 0, 2]);
        assert_eq!(
            iter_compound(&buf[..len]).next(),
            Some(Ok(RtcpPacket::PayloadFeedback(Feedback {
                fmt: feedback_fmt::PLI,
                sender_ssrc: Ssrc(7),
                media_ssrc: Ssrc(8),
                fci: &[],
            })))
        );

        let len = write_fir(&mut buf, Ssrc(7), Ssrc(8), 42).unwrap();
        assert_eq!(len, 20);
        let Some(Ok(RtcpPacket::PayloadFeedback(fir))) = iter_compound(&buf[..len]).next() else {
            panic!("expected PSFB");
        };
        assert_eq!(fir.fmt, feedback_fmt::FIR);
        assert_eq!(fir.media_ssrc, Ssrc(0));
        assert_eq!(fir.fir_entries().collect::<Vec<_>>(), vec![(Ssrc(8), 42)]);
    }

    #[test]
    fn nack_packing() {
        let mut buf = [0u8; 128];
        let lost = [
            SeqNo(65530),
            SeqNo(65531),
            SeqNo(65535),
            SeqNo(0),
            SeqNo(10),
            SeqNo(11),
            SeqNo(200),
        ];
        let len = write_nack(&mut buf, Ssrc(1), Ssrc(2), &lost).unwrap();
        let Some(Ok(RtcpPacket::TransportFeedback(nack))) = iter_compound(&buf[..len]).next()
        else {
            panic!("expected RTPFB");
        };
        // 65530 covers up to 65530+16 = 10 (wrapping), so 11 starts a new entry.
        assert_eq!(
            nack.nack_pairs().collect::<Vec<_>>(),
            vec![
                (SeqNo(65530), 0b1000_0000_0011_0001),
                (SeqNo(11), 0),
                (SeqNo(200), 0)
            ]
        );
        assert_eq!(nack.lost_sequence_numbers().collect::<Vec<_>>(), lost);
    }

    #[test]
    fn remb_parse() {
        let mut fci = b"REMB".to_vec();
        // 2 SSRCs, exponent 3, mantissa 0x3ffff.
        fci.extend_from_slice(&((2u32 << 24) | (3 << 18) | 0x3ffff).to_be_bytes());
        fci.extend_from_slice(&1u32.to_be_bytes());
        fci.extend_from_slice(&2u32.to_be_bytes());
        let afb = |fci: &[u8]| -> Option<(u64, Vec<Ssrc>)> {
            let fb = Feedback {
                fmt: feedback_fmt::AFB,
                sender_ssrc: Ssrc(1),
                media_ssrc: Ssrc(0),
                fci,
            };
            fb.remb().map(|r| (r.bitrate_bps, r.ssrcs().collect()))
        };
        assert_eq!(afb(&fci), Some((0x3ffff << 3, vec![Ssrc(1), Ssrc(2)])));
        // Exponent 63 saturates.
        fci[4..8].copy_from_slice(&((2u32 << 24) | (63 << 18) | 0x3ffff).to_be_bytes());
        assert_eq!(afb(&fci).map(|r| r.0), Some(u64::MAX));
        // Announcing more SSRCs than present.
        fci[4] = 5;
        assert_eq!(afb(&fci), None);
        assert_eq!(afb(b"REMX\0\0\0\0"), None);
        assert_eq!(afb(b"REMB"), None);
    }

    #[test]
    fn in_place_rewrites() {
        let mut buf = sample_compound();
        let ranges: Vec<_> = {
            let mut it = iter_compound(&buf);
            std::iter::from_fn(|| it.next_with_range())
                .map(|r| r.unwrap().0)
                .collect()
        };
        for range in &ranges {
            set_sender_ssrc(&mut buf[range.clone()], Ssrc(0xaaaa_aaaa));
        }
        set_media_ssrc(&mut buf[ranges[3].clone()], Ssrc(0xbbbb_bbbb));
        assert!(set_report_block_ssrc(
            &mut buf[ranges[0].clone()],
            0,
            Ssrc(0xcccc_cccc)
        ));
        assert!(!set_report_block_ssrc(
            &mut buf[ranges[0].clone()],
            1,
            Ssrc(1)
        ));
        assert!(!set_report_block_ssrc(
            &mut buf[ranges[3].clone()],
            0,
            Ssrc(1)
        ));
        let packets: Vec<_> = iter_compound(&buf).collect::<Result<_, _>>().unwrap();
        let RtcpPacket::ReceiverReport(rr) = packets[0] else {
            panic!("expected RR");
        };
        assert_eq!(rr.sender_ssrc, Ssrc(0xaaaa_aaaa));
        assert_eq!(rr.report_blocks().next().unwrap().ssrc, Ssrc(0xcccc_cccc));
        let RtcpPacket::PayloadFeedback(pli) = packets[3] else {
            panic!("expected PSFB");
        };
        assert_eq!(pli.sender_ssrc, Ssrc(0xaaaa_aaaa));
        assert_eq!(pli.media_ssrc, Ssrc(0xbbbb_bbbb));
        // Too-short input is left alone.
        let mut tiny = [1u8, 2, 3];
        set_sender_ssrc(&mut tiny, Ssrc(0));
        set_media_ssrc(&mut tiny, Ssrc(0));
        assert!(!set_report_block_ssrc(&mut tiny, 0, Ssrc(0)));
        assert_eq!(tiny, [1, 2, 3]);
    }

    /// Walk every sub-packet and every helper iterator, as the fuzz target does.
    fn exercise(buf: &[u8]) -> usize {
        let mut n = 0;
        for packet in iter_compound(buf) {
            let Ok(packet) = packet else { break };
            n += 1;
            match packet {
                RtcpPacket::SenderReport(sr) => n += sr.report_blocks().count(),
                RtcpPacket::ReceiverReport(rr) => n += rr.report_blocks().count(),
                RtcpPacket::Bye(bye) => {
                    n += bye.ssrcs().count() + bye.reason().map_or(0, <[u8]>::len);
                }
                RtcpPacket::TransportFeedback(fb) | RtcpPacket::PayloadFeedback(fb) => {
                    n += fb.nack_pairs().count()
                        + fb.lost_sequence_numbers().count()
                        + fb.fir_entries().count()
                        + fb.remb().map_or(0, |r| r.ssrcs().count());
                }
                _ => {}
            }
        }
        n
    }

    fn arb_block() -> impl Strategy<Value = ReportBlock> {
        (
            any::<u32>(),
            any::<u8>(),
            CUMULATIVE_LOST_MIN..=CUMULATIVE_LOST_MAX,
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(
                |(ssrc, fraction_lost, cumulative_lost, ext, jitter, lsr, dlsr)| ReportBlock {
                    ssrc: Ssrc(ssrc),
                    fraction_lost,
                    cumulative_lost,
                    extended_highest_seq: ext,
                    jitter,
                    last_sr: lsr,
                    delay_since_last_sr: dlsr,
                },
            )
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = validate(&data);
            exercise(&data);
        }

        /// Random bytes behind a plausible header reach the type-specific parsers.
        #[test]
        fn random_bodies_never_panic(
            first in 0x80u8..=0xbf,
            pt in 192u8..=223,
            body in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let words = body.len().div_ceil(4);
            let mut buf = vec![first, pt];
            buf.extend_from_slice(&(words as u16).to_be_bytes());
            buf.extend_from_slice(&body);
            buf.resize(4 + words * 4, 0);
            if let Ok(n) = validate(&buf) {
                prop_assert_eq!(n, 1);
            }
            exercise(&buf);
            let feedback = Feedback { fmt: 1, sender_ssrc: Ssrc(0), media_ssrc: Ssrc(0), fci: &body };
            prop_assert!(feedback.lost_sequence_numbers().count() <= body.len() / 4 * 17);
            let _ = feedback.remb();
        }

        #[test]
        fn validate_agrees_with_iteration(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let items: Vec<_> = iter_compound(&data).collect();
            match validate(&data) {
                Ok(n) => {
                    prop_assert_eq!(n, items.len());
                    prop_assert!(items.iter().all(Result::is_ok));
                }
                Err(e) => prop_assert!(data.is_empty() || items.last() == Some(&Err(e))),
            }
        }

        #[test]
        fn rr_round_trip(ssrc in any::<u32>(), blocks in proptest::collection::vec(arb_block(), 0..=31)) {
            let mut buf = [0u8; 8 + 31 * 24];
            let len = write_receiver_report(&mut buf, Ssrc(ssrc), &blocks).unwrap();
            prop_assert_eq!(validate(&buf[..len]), Ok(1));
            let Some(Ok(RtcpPacket::ReceiverReport(rr))) = iter_compound(&buf[..len]).next() else {
                return Err(TestCaseError::fail("not an RR"));
            };
            prop_assert_eq!(rr.sender_ssrc, Ssrc(ssrc));
            prop_assert_eq!(rr.report_blocks().collect::<Vec<_>>(), blocks);
        }

        #[test]
        fn nack_round_trip(
            sender in any::<u32>(),
            media in any::<u32>(),
            lost in proptest::collection::vec(any::<u16>(), 1..200),
        ) {
            let lost: Vec<SeqNo> = lost.into_iter().map(SeqNo).collect();
            let mut buf = vec![0u8; 12 + lost.len() * 4];
            let len = write_nack(&mut buf, Ssrc(sender), Ssrc(media), &lost).unwrap();
            prop_assert_eq!(validate(&buf[..len]), Ok(1));
            let Some(Ok(RtcpPacket::TransportFeedback(nack))) = iter_compound(&buf[..len]).next() else {
                return Err(TestCaseError::fail("not an RTPFB"));
            };
            prop_assert_eq!(nack.fmt, feedback_fmt::NACK);
            prop_assert_eq!(nack.sender_ssrc, Ssrc(sender));
            prop_assert_eq!(nack.media_ssrc, Ssrc(media));
            let mut want: Vec<u16> = lost.iter().map(|s| s.0).collect();
            want.sort_unstable();
            want.dedup();
            let mut got: Vec<u16> = nack.lost_sequence_numbers().map(|s| s.0).collect();
            got.sort_unstable();
            got.dedup();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn sorted_nack_is_compact(start in any::<u16>(), gaps in proptest::collection::vec(1u16..40, 1..100)) {
            let mut lost = vec![SeqNo(start)];
            for g in gaps {
                let next = lost.last().unwrap().0.wrapping_add(g);
                lost.push(SeqNo(next));
            }
            let mut buf = vec![0u8; 12 + lost.len() * 4];
            let len = write_nack(&mut buf, Ssrc(1), Ssrc(2), &lost).unwrap();
            let Some(Ok(RtcpPacket::TransportFeedback(nack))) = iter_compound(&buf[..len]).next() else {
                return Err(TestCaseError::fail("not an RTPFB"));
            };
            // Ascending input (possibly wrapping once past 65535) comes back in order.
            if lost.windows(2).all(|w| w[0].delta_to(w[1]) > 0)
                && lost[0].delta_to(*lost.last().unwrap()) > 0
            {
                prop_assert_eq!(nack.lost_sequence_numbers().collect::<Vec<_>>(), lost);
            }
        }

        #[test]
        fn pli_fir_round_trip(sender in any::<u32>(), media in any::<u32>(), seq in any::<u8>()) {
            let mut buf = [0u8; 32];
            let len = write_pli(&mut buf, Ssrc(sender), Ssrc(media)).unwrap();
            let Some(Ok(RtcpPacket::PayloadFeedback(pli))) = iter_compound(&buf[..len]).next() else {
                return Err(TestCaseError::fail("not a PSFB"));
            };
            prop_assert_eq!((pli.fmt, pli.sender_ssrc, pli.media_ssrc), (1, Ssrc(sender), Ssrc(media)));
            let len = write_fir(&mut buf, Ssrc(sender), Ssrc(media), seq).unwrap();
            let Some(Ok(RtcpPacket::PayloadFeedback(fir))) = iter_compound(&buf[..len]).next() else {
                return Err(TestCaseError::fail("not a PSFB"));
            };
            prop_assert_eq!(fir.fmt, 4);
            prop_assert_eq!(fir.sender_ssrc, Ssrc(sender));
            prop_assert_eq!(fir.fir_entries().collect::<Vec<_>>(), vec![(Ssrc(media), seq)]);
        }

        #[test]
        fn rewrites_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..64),
            ssrc in any::<u32>(),
            index in 0usize..40,
        ) {
            let mut data = data;
            set_sender_ssrc(&mut data, Ssrc(ssrc));
            set_media_ssrc(&mut data, Ssrc(ssrc));
            let _ = set_report_block_ssrc(&mut data, index, Ssrc(ssrc));
        }
    }

    #[test]
    fn sender_report_and_sdes_round_trip() {
        let mut buf = [0u8; 256];
        let info = SenderInfo {
            ntp_timestamp: 0x0102_0304_0506_0708,
            rtp_timestamp: 90_000,
            packet_count: 7,
            octet_count: 7_000,
        };
        let block = ReportBlock {
            ssrc: Ssrc(9),
            fraction_lost: 3,
            cumulative_lost: -2,
            extended_highest_seq: 70_000,
            jitter: 5,
            last_sr: 6,
            delay_since_last_sr: 7,
        };
        let n = write_sender_report(&mut buf, Ssrc(42), &info, &[block]).unwrap();
        let m = write_sdes_cname(&mut buf[n..], Ssrc(42), b"fanout").unwrap();
        assert_eq!(m % 4, 0);
        assert_eq!(validate(&buf[..n + m]), Ok(2));
        let mut it = iter_compound(&buf[..n + m]);
        match it.next() {
            Some(Ok(RtcpPacket::SenderReport(sr))) => {
                assert_eq!(sr.sender_ssrc, Ssrc(42));
                assert_eq!(sr.ntp_timestamp, info.ntp_timestamp);
                assert_eq!(sr.rtp_timestamp, 90_000);
                assert_eq!(sr.packet_count, 7);
                assert_eq!(sr.octet_count, 7_000);
                assert_eq!(sr.report_blocks().collect::<Vec<_>>(), vec![block]);
            }
            other => panic!("expected SR, got {other:?}"),
        }
        assert!(matches!(it.next(), Some(Ok(RtcpPacket::Sdes(_)))));
    }

    fn transport_cc_fields() -> TransportCc {
        TransportCc {
            sender_ssrc: Ssrc(0x1122_3344),
            media_ssrc: Ssrc(0x5566_7788),
            base_sequence: SeqNo(0xfffe),
            reference_time: 0x12_3456,
            feedback_count: 7,
        }
    }

    #[test]
    fn transport_cc_bytes_as_the_draft_draws_them() {
        // Received 1 ms after the reference time, two lost, then a large delta (75 ms)
        // and a negative one (-2 ms): a two-bit vector (one-bit symbols cannot say
        // "large"), five deltas, one byte of zero padding.
        let statuses = [Some(4), None, None, Some(300), Some(-8)];
        let mut buf = [0xAAu8; 64];
        let len = write_transport_cc(&mut buf, &transport_cc_fields(), &statuses).unwrap();
        #[rustfmt::skip]
        let expected = [
            0x8f, 0xcd, 0x00, 0x06, // V=2 P=0 FMT=15, PT=205, 7 words
            0x11, 0x22, 0x33, 0x44, // sender SSRC
            0x55, 0x66, 0x77, 0x88, // media SSRC
            0xff, 0xfe, 0x00, 0x05, // base sequence number, packet status count
            0x12, 0x34, 0x56, 0x07, // reference time, feedback packet count
            0xd0, 0xa0,             // 1 1 | 01 00 00 10 10 00 00
            0x04, 0x01, 0x2c, 0xff, 0xf8, // deltas: 4, 300, -8
            0x00,                   // zero padding
        ];
        assert_eq!(&buf[..len], &expected);
        assert_eq!(len, transport_cc_len(&statuses));

        // A run of 20 losses is one run length chunk; then a one-bit vector.
        let mut statuses = vec![None; 20];
        statuses.extend([Some(1), Some(1), Some(1), None, Some(2)]);
        let len = write_transport_cc(&mut buf, &transport_cc_fields(), &statuses).unwrap();
        assert_eq!(&buf[14..16], &[0, 25], "status count");
        assert_eq!(
            &buf[20..24],
            &[0x00, 0x14, 0xba, 0x00],
            "run of 20, then 1110 1"
        );
        assert_eq!(&buf[24..len], &[1, 1, 1, 2]);
        assert_eq!(len, 28);
        assert_eq!(validate(&buf[..len]), Ok(1), "our own reader takes it");
        let Some(Ok(RtcpPacket::TransportFeedback(fb))) = iter_compound(&buf[..len]).next() else {
            panic!("expected RTPFB");
        };
        assert_eq!(fb.fmt, feedback_fmt::TRANSPORT_CC);
        assert_eq!(fb.media_ssrc, Ssrc(0x5566_7788));
    }

    #[test]
    fn transport_cc_refuses_what_it_cannot_say() {
        let mut buf = [0u8; 64];
        let fields = transport_cc_fields();
        assert_eq!(
            write_transport_cc(&mut buf, &fields, &[]),
            Err(RtcpError::TransportCcStatusCount)
        );
        let too_many = vec![None; 65536];
        let mut big = vec![0u8; 1 << 16];
        assert_eq!(
            write_transport_cc(&mut big, &fields, &too_many),
            Err(RtcpError::TransportCcStatusCount)
        );
        // One run length chunk and 20 one-byte deltas: 42 bytes, padded to 44.
        let statuses = [Some(1); 20];
        assert_eq!(transport_cc_len(&statuses), 44);
        assert_eq!(
            write_transport_cc(&mut buf[..43], &fields, &statuses),
            Err(RtcpError::BufferTooSmall)
        );
        // The reference time has 24 bits: the rest is dropped, not spilled into the count.
        let fields = TransportCc {
            reference_time: 0xAB12_3456,
            ..fields
        };
        write_transport_cc(&mut buf, &fields, &statuses).unwrap();
        assert_eq!(&buf[16..20], &[0x12, 0x34, 0x56, 0x07]);
    }

    #[test]
    fn transport_cc_long_runs_take_one_chunk_each_8191() {
        let chunks = |statuses: &[Option<i16>]| {
            let mut buf = vec![0u8; transport_cc_len(statuses)];
            write_transport_cc(&mut buf, &transport_cc_fields(), statuses).unwrap();
            oracle::decode(&buf).unwrap().chunks
        };
        for (n, expected) in [(1, 1), (13, 1), (14, 1), (8191, 1), (8192, 2), (20_000, 3)] {
            assert_eq!(chunks(&vec![Some(3); n]), expected, "{n} received");
        }
        // Losses, then the received packet every real feedback ends with: the losses'
        // runs, then a vector for the rest.
        for (n, expected) in [(1, 1), (13, 1), (14, 2), (8191, 2), (20_000, 4)] {
            let mut statuses = vec![None; n];
            statuses.push(Some(3));
            assert_eq!(chunks(&statuses), expected, "{n} lost");
        }
    }

    /// Statuses as a sender's feedback would carry them: runs of losses, of small and of
    /// large deltas, and mixtures, ending with a received packet.
    fn arb_statuses() -> impl Strategy<Value = Vec<Option<i16>>> {
        let status = prop_oneof![
            3 => Just(None),
            5 => (0i16..=255).prop_map(Some),
            2 => any::<i16>().prop_map(Some),
        ];
        let segment = prop_oneof![
            (status.clone(), 1usize..40).prop_map(|(s, n)| vec![s; n]),
            proptest::collection::vec(status, 1..40),
            Just(vec![None; 9000]),
        ];
        (proptest::collection::vec(segment, 1..12), 0i16..=255).prop_map(|(segments, last)| {
            let mut statuses: Vec<Option<i16>> = segments.concat();
            statuses.truncate(65_534);
            statuses.push(Some(last));
            statuses
        })
    }

    proptest! {
        #[test]
        fn transport_cc_round_trips_through_webrtc_rs(
            statuses in arb_statuses(),
            base in any::<u16>(),
            reference_time in 0u32..(1 << 24),
            feedback_count in any::<u8>(),
        ) {
            let fields = TransportCc {
                sender_ssrc: Ssrc(1),
                media_ssrc: Ssrc(2),
                base_sequence: SeqNo(base),
                reference_time,
                feedback_count,
            };
            let len = transport_cc_len(&statuses);
            let delta_bytes: usize = statuses.iter().map(|&s| delta_len(s)).sum();
            prop_assert!(len <= transport_cc_max_len(statuses.len(), delta_bytes));
            let mut buf = vec![0xAAu8; len];
            prop_assert_eq!(write_transport_cc(&mut buf, &fields, &statuses), Ok(len));
            prop_assert_eq!(len % 4, 0);
            prop_assert_eq!(validate(&buf), Ok(1));
            let decoded = oracle::decode(&buf).map_err(TestCaseError::fail)?;
            prop_assert_eq!(decoded.sender_ssrc, 1);
            prop_assert_eq!(decoded.media_ssrc, 2);
            prop_assert_eq!(decoded.base_sequence, base);
            prop_assert_eq!(decoded.reference_time, reference_time);
            prop_assert_eq!(decoded.feedback_count, feedback_count);
            prop_assert!(decoded.chunks <= statuses.len().div_ceil(7));
            let expected: Vec<Option<(i64, bool)>> = statuses
                .iter()
                .map(|s| s.map(|d| (i64::from(d) * 250, !(0..=255).contains(&d))))
                .collect();
            prop_assert_eq!(decoded.statuses, expected);
        }
    }
}
