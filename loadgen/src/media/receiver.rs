//! The sans-IO receiver: verifies every media packet, measures latency, loss before and
//! after retransmission, RFC 3550 jitter and freezes, and writes the RTCP a WebRTC client
//! would (receiver reports, generic NACK, PLI, REMB).
//!
//! # Run loop
//!
//! ```text
//! on RTP:      if let Some(d) = receiver.handle_rtp(now, plain) { record d.latency_us }
//! on RTCP:     receiver.handle_rtcp(now, plain)
//! on timeout:  receiver.handle_timeout(now)
//! after each:  while let Some(len) = receiver.poll_rtcp(now, &mut buf) { send(&buf[..len]) }
//!              wake at receiver.poll_timeout()
//! at the end:  let stats = receiver.finish(now)
//! ```
//!
//! # Streams and the forwarder's rewriting
//!
//! A stream is one SSRC as the receiver sees it. The forwarder rewrites SSRC, sequence
//! number and timestamp per subscription, so a simulcast camera is one SSRC whose
//! encoding may switch; loss is counted on the (continuous) RTP sequence numbers, while
//! the probe carries what the publisher stamped (send time, encoding) and proves the bytes
//! intact. At most `max_streams` streams are tracked; packets of further SSRCs count as
//! invalid.
//!
//! # Loss and repair
//!
//! A gap in the sequence numbers counts its packets as lost before retransmission. Video
//! and screen packets are NACKed (RFC 4585 §6.2.1) after a short reordering allowance and
//! again, spaced out, up to [`MAX_NACK_TRIES`] times; a packet still missing after that,
//! or at [`Receiver::finish`], is lost after retransmission, and breaks the decoder until
//! a key frame (the receiver sends PLI, RFC 4585 §6.3.1, at most every
//! [`PLI_MIN_INTERVAL_US`] per stream). A missing packet that turns up before its first
//! NACK was merely reordered and is taken off the loss count. Audio is never NACKed: its
//! gaps go to `audio_lost`.
//!
//! The duplicate detection, the sequence accounting and the RTCP report blocks are local
//! rather than the forwarder's `receive_stats::ReceiveStats`: that one reads arrival as
//! `std::time::Instant` (a clock input this sans-IO core does not have), withholds the
//! first packets for source validation (every packet must be measured here), and knows
//! nothing of NACK state.

use fanout_forwarder::codec::vp8 as vp8_reader;
use fanout_forwarder::ids::{SeqNo, Ssrc};
use fanout_forwarder::rtcp::{
    self, feedback_fmt, iter_compound, packet_type, ReportBlock, RtcpPacket,
};
use fanout_forwarder::rtp::{payload_range, RtpHeader};

use super::playout::{FramePacket, Playout};
use super::probe::{self, Probe, MAGIC};
use super::publisher::SRTP_TRAILER_ROOM;
use super::vp8::{is_keyframe_header, picture_size, KEYFRAME_HEADER_LEN};
use crate::stats::{Delivery, MediaKind, ReceiverStats, CAMERA_ENCODING_SLOTS};
use crate::Micros;

/// Sequence numbers tracked behind the highest one (duplicates, late arrivals, NACK).
pub const SEQ_WINDOW: u64 = 512;
const SEQ_WINDOW_WORDS: usize = (SEQ_WINDOW / 64) as usize;
/// Largest forward jump still taken as loss rather than a restart (RFC 3550 A.1).
pub const MAX_DROPOUT: i64 = 3000;
/// Missing packets tracked per stream; more are given up at once.
pub const MAX_MISSING_PER_STREAM: usize = 64;
/// A gap waits this long for reordered packets before the first NACK.
pub const NACK_REORDER_DELAY_US: Micros = 10_000;
/// Spacing of NACK retries: this, times 1 + tries / 2 (50, 50, 100, 100, 150, 150, 200 ms
/// of waiting: about a second in all).
pub const NACK_RETRY_US: Micros = 50_000;
/// NACKs per missing packet before it is given up.
pub const MAX_NACK_TRIES: u8 = 7;
/// Without NACK, a missing packet is given up after this long.
const GIVE_UP_WITHOUT_NACK_US: Micros = 1_000_000;
/// A receiver that announces a bandwidth estimate sends its first report this long (or
/// half as long again, to desynchronise receivers) after the first media packet.
const FIRST_REMB_AFTER_US: Micros = 250_000;
/// At most one PLI per stream this often (libwebrtc's rate limit is similar).
pub const PLI_MIN_INTERVAL_US: Micros = 500_000;
/// Sequence numbers in one NACK packet at most.
const MAX_NACK_SEQS: usize = 64;
/// Extended sequence numbers start here, so packets reordered before the first one still
/// have a value. The report blocks subtract it back out.
const EXT_ORIGIN: u64 = 1 << 16;
const AUDIO_CLOCK_HZ: u64 = 48_000;
const VIDEO_CLOCK_HZ: u64 = 90_000;

/// How the receiver behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Sender SSRC of its RTCP.
    pub rtcp_ssrc: u32,
    /// Send generic NACKs for missing video packets.
    pub nack: bool,
    /// Send PLI when decoding cannot go on without a key frame.
    pub pli: bool,
    /// Receiver report interval.
    pub rtcp_interval_us: Micros,
    /// Announce this receive bandwidth estimate with every report (REMB).
    pub remb_bps: Option<u64>,
    /// Streams (SSRCs) tracked at most; at most 31 get report blocks.
    pub max_streams: usize,
    /// Bounds of the jitter buffer's adaptive target delay.
    pub jitter_buffer_min_us: Micros,
    pub jitter_buffer_max_us: Micros,
}

impl ReceiverConfig {
    /// NACK and PLI on, reports every second, 16 streams, a 10-500 ms jitter buffer.
    pub fn new(rtcp_ssrc: u32) -> ReceiverConfig {
        ReceiverConfig {
            rtcp_ssrc,
            nack: true,
            pli: true,
            rtcp_interval_us: 1_000_000,
            remb_bps: None,
            max_streams: 16,
            jitter_buffer_min_us: 10_000,
            jitter_buffer_max_us: 500_000,
        }
    }
}

impl Default for ReceiverConfig {
    fn default() -> ReceiverConfig {
        ReceiverConfig::new(0)
    }
}

/// One sequence number waiting to be repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Missing {
    seq: u64,
    /// Next NACK, or the give-up time once `tries` reached [`MAX_NACK_TRIES`].
    next_at: Micros,
    tries: u8,
}

/// What the sequence number of an arriving packet means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// A first copy at extended sequence number `seq`; `repaired` if it had been NACKed.
    Fresh {
        seq: u64,
        repaired: bool,
    },
    Duplicate,
    /// Valid, but outside what the stream tracks (before its first packet, too old, or a
    /// jump not yet confirmed as a restart): delivered, not accounted.
    Untracked,
}

/// Bit set over the last [`SEQ_WINDOW`] extended sequence numbers.
#[derive(Debug, Clone, Copy, Default)]
struct SeqBits([u64; SEQ_WINDOW_WORDS]);

impl SeqBits {
    fn locate(seq: u64) -> (usize, u64) {
        let slot = seq % SEQ_WINDOW;
        ((slot / 64) as usize, 1 << (slot % 64))
    }
    fn get(&self, seq: u64) -> bool {
        let (word, bit) = Self::locate(seq);
        self.0[word] & bit != 0
    }
    fn set(&mut self, seq: u64) {
        let (word, bit) = Self::locate(seq);
        self.0[word] |= bit;
    }
    fn clear(&mut self, seq: u64) {
        let (word, bit) = Self::locate(seq);
        self.0[word] &= !bit;
    }
}

/// One received SSRC.
#[derive(Debug, Clone)]
struct Stream {
    ssrc: u32,
    kind: MediaKind,
    clock_hz: u64,
    base: u64,
    highest: u64,
    /// Expected packets of the stream's earlier lives (before restarts).
    expected_before: u64,
    /// A big jump to this value would confirm a restart (RFC 3550 A.1 `bad_seq`).
    restart_seq: Option<u16>,
    received_bits: SeqBits,
    nacked_bits: SeqBits,
    /// First copies counted since `base`.
    received: u64,
    /// RFC 3550 A.3 interval baselines.
    expected_prior: u64,
    received_prior: u64,
    missing: Vec<Missing>,
    next_missing_at: Option<Micros>,
    /// RFC 3550 A.8: previous transit and jitter × 16, in clock units.
    transit: Option<u32>,
    jitter_q4: u64,
    peak_jitter_q4: u64,
    /// Middle 32 bits of the last SR's NTP timestamp, and when it arrived.
    last_sr: Option<(u32, Micros)>,
    last_pli_at: Option<Micros>,
    playout: Option<Playout>,
    /// The transport was replaced (another forwarder): the next packet starts a new
    /// sequence, whatever its number.
    restart_next: bool,
}

impl Stream {
    fn new(ssrc: u32, kind: MediaKind, seq: u16, config: &ReceiverConfig) -> Stream {
        let start = EXT_ORIGIN + u64::from(seq);
        Stream {
            ssrc,
            kind,
            clock_hz: if kind == MediaKind::Audio {
                AUDIO_CLOCK_HZ
            } else {
                VIDEO_CLOCK_HZ
            },
            base: start,
            // One before: the first packet arrives as a gapless advance.
            highest: start - 1,
            expected_before: 0,
            restart_seq: None,
            received_bits: SeqBits::default(),
            nacked_bits: SeqBits::default(),
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            missing: Vec::new(),
            next_missing_at: None,
            transit: None,
            jitter_q4: 0,
            peak_jitter_q4: 0,
            last_sr: None,
            last_pli_at: None,
            playout: (kind != MediaKind::Audio)
                .then(|| Playout::new(config.jitter_buffer_min_us, config.jitter_buffer_max_us)),
            restart_next: false,
        }
    }

    fn is_audio(&self) -> bool {
        self.kind == MediaKind::Audio
    }

    fn expected_now(&self) -> u64 {
        (self.highest + 1).saturating_sub(self.base)
    }

    fn refresh_next_missing(&mut self) {
        self.next_missing_at = self.missing.iter().map(|m| m.next_at).min();
    }

    /// A missing packet will not come: count it and break the decoder.
    fn give_up(&mut self, totals: &mut ReceiverStats) {
        totals.lost_after_rtx += 1;
        if let Some(playout) = &mut self.playout {
            playout.break_decoding();
        }
    }

    fn add_missing(&mut self, seq: u64, now: Micros, nack: bool, totals: &mut ReceiverStats) {
        if self.missing.len() >= MAX_MISSING_PER_STREAM {
            self.give_up(totals);
            return;
        }
        let entry = if nack {
            Missing {
                seq,
                next_at: now + NACK_REORDER_DELAY_US,
                tries: 0,
            }
        } else {
            Missing {
                seq,
                next_at: now + GIVE_UP_WITHOUT_NACK_US,
                tries: MAX_NACK_TRIES,
            }
        };
        self.missing.push(entry);
    }

    /// Gives up the missing packets that are due (tries exhausted) or, with `all`, every
    /// one of them.
    fn expire_missing(&mut self, now: Micros, all: bool, totals: &mut ReceiverStats) {
        if !all && self.next_missing_at.is_none_or(|t| t > now) {
            return;
        }
        let window_floor = self.highest.saturating_sub(SEQ_WINDOW - 1);
        let mut given_up = 0;
        self.missing.retain(|m| {
            let expired =
                all || m.seq < window_floor || (m.tries >= MAX_NACK_TRIES && m.next_at <= now);
            given_up += u64::from(expired);
            !expired
        });
        for _ in 0..given_up {
            self.give_up(totals);
        }
        self.refresh_next_missing();
    }

    fn on_sequence(
        &mut self,
        now: Micros,
        seq: u16,
        nack: bool,
        totals: &mut ReceiverStats,
    ) -> Arrival {
        if std::mem::take(&mut self.restart_next) {
            self.restart(now, seq, totals);
            return Arrival::Fresh {
                seq: self.highest,
                repaired: false,
            };
        }
        let delta = i64::from(seq.wrapping_sub(self.highest as u16) as i16);
        if delta > 0 && delta <= MAX_DROPOUT {
            self.restart_seq = None;
            let ext = self.highest + delta as u64;
            let gap = ext - self.highest - 1;
            if ext - self.highest >= SEQ_WINDOW {
                self.received_bits = SeqBits::default();
                self.nacked_bits = SeqBits::default();
            } else {
                for s in self.highest + 1..=ext {
                    self.received_bits.clear(s);
                    self.nacked_bits.clear(s);
                }
            }
            if gap > 0 {
                if self.is_audio() {
                    totals.audio_lost += gap;
                } else {
                    totals.lost_before_rtx += gap;
                    // Only the last window's worth can be tracked; older ones are lost.
                    let tracked_from = (self.highest + 1).max(ext.saturating_sub(SEQ_WINDOW - 1));
                    for _ in self.highest + 1..tracked_from {
                        self.give_up(totals);
                    }
                    for s in tracked_from..ext {
                        self.add_missing(s, now, nack, totals);
                    }
                }
            }
            self.highest = ext;
            self.received_bits.set(ext);
            self.received += 1;
            // Missing packets that slid out of the window can no longer be told apart
            // from newer ones: given up.
            let floor = ext.saturating_sub(SEQ_WINDOW - 1);
            let before = self.missing.len();
            self.missing.retain(|m| m.seq >= floor);
            for _ in self.missing.len()..before {
                self.give_up(totals);
            }
            self.refresh_next_missing();
            return Arrival::Fresh {
                seq: ext,
                repaired: false,
            };
        }
        if delta == 0 {
            return Arrival::Duplicate;
        }
        if delta < 0 && delta.unsigned_abs() < SEQ_WINDOW {
            let ext = self.highest - delta.unsigned_abs();
            if ext < self.base {
                return Arrival::Untracked;
            }
            if self.received_bits.get(ext) {
                return Arrival::Duplicate;
            }
            self.received_bits.set(ext);
            self.received += 1;
            if self.is_audio() {
                totals.audio_lost = totals.audio_lost.saturating_sub(1);
                return Arrival::Fresh {
                    seq: ext,
                    repaired: false,
                };
            }
            let repaired = match self.missing.iter().position(|m| m.seq == ext) {
                Some(i) => {
                    let entry = self.missing.remove(i);
                    self.refresh_next_missing();
                    if entry.tries == 0 || !nack {
                        // Reordered, not lost: it came before anyone asked for it.
                        totals.lost_before_rtx = totals.lost_before_rtx.saturating_sub(1);
                        false
                    } else {
                        true
                    }
                }
                None => {
                    // Given up on already, and here it is after all.
                    totals.lost_after_rtx = totals.lost_after_rtx.saturating_sub(1);
                    self.nacked_bits.get(ext)
                }
            };
            return Arrival::Fresh { seq: ext, repaired };
        }
        // A jump: a restart if the next packet follows it (RFC 3550 A.1).
        if self.restart_seq == Some(seq) {
            self.restart(now, seq, totals);
            return Arrival::Fresh {
                seq: self.highest,
                repaired: false,
            };
        }
        self.restart_seq = Some(seq.wrapping_add(1));
        Arrival::Untracked
    }

    /// The sender (or the forwarder, after a failover) started a new sequence: settle the
    /// old one and count from `seq`.
    fn restart(&mut self, now: Micros, seq: u16, totals: &mut ReceiverStats) {
        self.expire_missing(now, true, totals);
        self.expected_before += self.expected_now();
        let start = EXT_ORIGIN + u64::from(seq);
        self.base = start;
        self.highest = start;
        self.restart_seq = None;
        self.received_bits = SeqBits::default();
        self.nacked_bits = SeqBits::default();
        self.received_bits.set(start);
        self.received = 1;
        self.expected_prior = 0;
        self.received_prior = 0;
        self.transit = None;
        if let Some(playout) = &mut self.playout {
            playout.restart();
        }
    }

    /// RFC 3550 A.8, in the integer form scaled by 16.
    fn update_jitter(&mut self, now: Micros, rtp_timestamp: u32) {
        let arrival = (u128::from(now) * u128::from(self.clock_hz) / 1_000_000) as u32;
        let transit = arrival.wrapping_sub(rtp_timestamp);
        if let Some(previous) = self.transit {
            let d = u64::from((transit.wrapping_sub(previous) as i32).unsigned_abs());
            self.jitter_q4 = self.jitter_q4 + d - ((self.jitter_q4 + 8) >> 4);
            self.peak_jitter_q4 = self.peak_jitter_q4.max(self.jitter_q4);
        }
        self.transit = Some(transit);
    }

    fn jitter_us(q4: u64, clock_hz: u64) -> Micros {
        (q4 >> 4).saturating_mul(1_000_000) / clock_hz.max(1)
    }

    fn wants_pli(&self, config: &ReceiverConfig) -> Option<Micros> {
        let playout = self.playout.as_ref()?;
        if !config.pli || !playout.awaiting_keyframe() {
            return None;
        }
        Some(self.last_pli_at.map_or(0, |t| t + PLI_MIN_INTERVAL_US))
    }

    /// RFC 3550 §6.4.1 report block; starts a new loss interval.
    fn report_block(&mut self, now: Micros) -> ReportBlock {
        let expected = self.expected_now();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let fraction_lost = if expected_interval == 0 || received_interval >= expected_interval {
            0
        } else {
            ((expected_interval - received_interval) * 256 / expected_interval).min(255) as u8
        };
        let cumulative_lost =
            (expected as i64 - self.received as i64).clamp(-0x80_0000, 0x7f_ffff) as i32;
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            // DLSR in 1/65536 s (RFC 3550 §6.4.1).
            Some((lsr, at)) => (lsr, (now.saturating_sub(at) * 65_536 / 1_000_000) as u32),
            None => (0, 0),
        };
        ReportBlock {
            ssrc: Ssrc(self.ssrc),
            fraction_lost,
            cumulative_lost,
            extended_highest_seq: self.highest.saturating_sub(EXT_ORIGIN) as u32,
            jitter: u32::try_from(self.jitter_q4 >> 4).unwrap_or(u32::MAX),
            last_sr,
            delay_since_last_sr,
        }
    }
}

/// A parsed, verified media packet.
#[derive(Debug, Clone, Copy)]
struct MediaPacket {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    probe: Probe,
    payload_len: usize,
}

/// Parses RTP, the VP8 framing for video, and the probe, checking that the descriptor
/// agrees with what the probe says the packet is. `None` for anything malformed.
fn parse_media(packet: &[u8]) -> Option<MediaPacket> {
    let header = RtpHeader::parse(packet).ok()?;
    let range = payload_range(packet, &header).ok()?;
    let payload = packet.get(range)?;
    let probe = if payload.get(..MAGIC.len()) == Some(&MAGIC[..]) {
        // Audio: the probe is the payload. (A VP8 descriptor never starts with the magic:
        // ours start 0x80 or 0x90.)
        let probe = probe::parse(payload).ok()?;
        if probe.kind != MediaKind::Audio {
            return None;
        }
        probe
    } else {
        let info = vp8_reader::inspect(payload, header.marker).ok()?;
        let descriptor_end = info.descriptor_len;
        let at = descriptor_end
            + if info.is_keyframe_start() {
                KEYFRAME_HEADER_LEN
            } else {
                0
            };
        let probe = probe::parse(payload.get(at..)?).ok()?;
        if info.is_keyframe_start() {
            let (width, height) = picture_size(probe.kind, probe.encoding);
            if !is_keyframe_header(payload.get(descriptor_end..)?, width, height) {
                return None;
            }
        }
        let consistent = probe.kind != MediaKind::Audio
            && probe.frame_start == info.start_of_frame
            && probe.frame_end == header.marker
            && (!probe.frame_start || probe.keyframe == info.keyframe)
            && info.temporal_layer.unwrap_or(0) == probe.temporal_layer;
        if !consistent {
            return None;
        }
        probe
    };
    Some(MediaPacket {
        ssrc: header.ssrc.0,
        seq: header.sequence.0,
        timestamp: header.timestamp,
        probe,
        payload_len: payload.len(),
    })
}

/// Whether a packet that is not ours is someone else's media rather than ours damaged:
/// well-formed RTP with no trace of the probe's magic where a probe would be (at the
/// payload's start, or after a VP8 descriptor and perhaps a key frame header). One byte of
/// the magic intact means our packet, corrupted.
fn is_foreign(packet: &[u8]) -> bool {
    let Ok(header) = RtpHeader::parse(packet) else {
        return false;
    };
    let Some(payload) = payload_range(packet, &header)
        .ok()
        .and_then(|range| packet.get(range))
    else {
        return false;
    };
    let near_magic = |at: usize| {
        payload
            .get(at..at + MAGIC.len())
            .is_some_and(|b| b.iter().zip(&MAGIC).any(|(x, m)| x == m))
    };
    let after_descriptor = vp8_reader::inspect(payload, header.marker)
        .ok()
        .map(|info| info.descriptor_len);
    let probe_after = |d: usize| near_magic(d) || near_magic(d + KEYFRAME_HEADER_LEN);
    !payload.is_empty() && !near_magic(0) && !after_descriptor.is_some_and(probe_after)
}

/// Writes a REMB (draft-alvestrand-rmcat-remb-03 §2.2): PSFB FMT 15 with "REMB", the
/// bitrate as an 18-bit mantissa and 6-bit exponent, and the SSRCs it applies to. The
/// forwarder's RTCP module reads REMB but has no writer.
fn write_remb(buf: &mut [u8], sender_ssrc: u32, bitrate_bps: u64, ssrcs: &[u32]) -> Option<usize> {
    let ssrcs = &ssrcs[..ssrcs.len().min(255)];
    let len = 20 + 4 * ssrcs.len();
    let out = buf.get_mut(..len)?;
    let mut mantissa = bitrate_bps;
    let mut exponent = 0u32;
    while mantissa > 0x3_ffff && exponent < 63 {
        mantissa >>= 1;
        exponent += 1;
    }
    out[0] = 0x80 | feedback_fmt::AFB;
    out[1] = packet_type::PSFB;
    out[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
    // RFC 4585 §6.4 / REMB §2.2: media source SSRC is 0.
    out[8..12].copy_from_slice(&[0; 4]);
    out[12..16].copy_from_slice(b"REMB");
    let word = ((ssrcs.len() as u32) << 24) | (exponent << 18) | (mantissa as u32 & 0x3_ffff);
    out[16..20].copy_from_slice(&word.to_be_bytes());
    for (dst, ssrc) in out[20..].chunks_exact_mut(4).zip(ssrcs) {
        dst.copy_from_slice(&ssrc.to_be_bytes());
    }
    Some(len)
}

/// The media receiving side of one participant. See the module docs.
#[derive(Debug)]
pub struct Receiver {
    config: ReceiverConfig,
    streams: Vec<Stream>,
    /// Counters kept incrementally; the rest of [`ReceiverStats`] is summed from the
    /// streams by [`Receiver::stats`].
    totals: ReceiverStats,
    next_report_at: Option<Micros>,
    cname: [u8; 24],
    cname_len: usize,
}

impl Receiver {
    pub fn new(config: ReceiverConfig) -> Receiver {
        let mut config = config;
        config.max_streams = config.max_streams.max(1);
        config.rtcp_interval_us = config.rtcp_interval_us.max(10_000);
        let mut cname = [0u8; 24];
        let cname_len = {
            use std::io::Write as _;
            let mut cursor = &mut cname[..];
            // "fanout-lg-rx-" and 8 hex digits: 21 bytes, always fits.
            let _ = write!(cursor, "fanout-lg-rx-{:08x}", config.rtcp_ssrc);
            24 - cursor.len()
        };
        Receiver {
            config,
            streams: Vec::new(),
            totals: ReceiverStats::default(),
            next_report_at: None,
            cname,
            cname_len,
        }
    }

    /// Takes one plain RTP packet. Returns what to record for an accepted first copy of a
    /// media packet; `None` for duplicates and invalid packets (counted in the stats).
    pub fn handle_rtp(&mut self, now: Micros, packet: &[u8]) -> Option<Delivery> {
        let Some(media) = parse_media(packet) else {
            if is_foreign(packet) {
                self.totals.foreign += 1;
            } else {
                self.totals.invalid += 1;
            }
            return None;
        };
        let Some(index) = self.stream_for(now, &media) else {
            self.totals.invalid += 1;
            return None;
        };
        let nack = self.config.nack;
        let stream = &mut self.streams[index];
        let arrival = stream.on_sequence(now, media.seq, nack, &mut self.totals);
        let (seq, repaired) = match arrival {
            Arrival::Duplicate => {
                self.totals.duplicates += 1;
                return None;
            }
            Arrival::Fresh { seq, repaired } => (Some(seq), repaired),
            Arrival::Untracked => (None, false),
        };
        if !repaired && seq.is_some() {
            // Retransmissions are late by nature; RFC 3550's jitter is about the path.
            stream.update_jitter(now, media.timestamp);
        }
        if let (Some(seq), Some(playout)) = (seq, stream.playout.as_mut()) {
            playout.on_packet(
                now,
                &FramePacket {
                    seq: seq as u32,
                    rtp_timestamp: media.timestamp,
                    send_us: media.probe.send_us,
                    frame_start: media.probe.frame_start,
                    frame_end: media.probe.frame_end,
                    keyframe: media.probe.keyframe,
                    temporal_layer: media.probe.temporal_layer,
                    encoding: media.probe.encoding,
                },
            );
            playout.advance(now);
        }
        let totals = &mut self.totals;
        totals.packets += 1;
        totals.bytes += media.payload_len as u64;
        if media.probe.kind == MediaKind::Camera {
            let slot = usize::from(media.probe.encoding).min(CAMERA_ENCODING_SLOTS - 1);
            totals.camera_packets_by_encoding[slot] += 1;
        }
        if repaired {
            totals.repaired += 1;
        }
        if let Some(last) = totals.last_media_at {
            let gap = now.saturating_sub(last);
            if gap > totals.longest_gap_us {
                totals.longest_gap_us = gap;
                totals.longest_gap_from = last;
            }
        }
        totals.first_media_at.get_or_insert(now);
        totals.last_media_at = Some(now.max(totals.last_media_at.unwrap_or(0)));
        Some(Delivery {
            latency_us: now.saturating_sub(media.probe.send_us),
            repaired,
            kind: media.probe.kind,
        })
    }

    fn stream_for(&mut self, now: Micros, media: &MediaPacket) -> Option<usize> {
        if let Some(i) = self.streams.iter().position(|s| s.ssrc == media.ssrc) {
            // An SSRC carries one kind of media; anything else on it is forged or broken.
            return (self.streams[i].kind == media.probe.kind).then_some(i);
        }
        if self.streams.len() >= self.config.max_streams {
            return None;
        }
        self.streams.push(Stream::new(
            media.ssrc,
            media.probe.kind,
            media.seq,
            &self.config,
        ));
        if self.next_report_at.is_none() {
            // Desynchronise the reports of many receivers started together: the first one
            // comes between half an interval and a whole one (RFC 3550 §6.2 randomises it).
            // A client with a bandwidth estimate reports it early (libwebrtc sends REMB as
            // soon as it has an estimate): until then the forwarder has nothing to fit
            // layers to, and sends the highest.
            let interval = self.config.rtcp_interval_us;
            let mix = super::probe::mix64(u64::from(self.config.rtcp_ssrc));
            let first = match self.config.remb_bps {
                Some(_) => FIRST_REMB_AFTER_US.min(interval / 2) * (2 + mix % 2) / 2,
                None => interval / 2 + mix % (interval / 2).max(1),
            };
            self.next_report_at = Some(now + first);
        }
        Some(self.streams.len() - 1)
    }

    /// Takes one plain RTCP compound: sender reports are remembered for the LSR/DLSR of
    /// the next report blocks. Everything else is for the publisher, or ignored.
    pub fn handle_rtcp(&mut self, now: Micros, compound: &[u8]) {
        for packet in iter_compound(compound) {
            let Ok(packet) = packet else { break };
            if let RtcpPacket::SenderReport(sr) = packet {
                if let Some(stream) = self.streams.iter_mut().find(|s| s.ssrc == sr.sender_ssrc.0) {
                    stream.last_sr = Some((sr.compact_ntp(), now));
                }
            }
        }
    }

    /// When [`Receiver::handle_timeout`] / [`Receiver::poll_rtcp`] next have work.
    pub fn poll_timeout(&self) -> Option<Micros> {
        let report = if self.streams.is_empty() {
            None
        } else {
            self.next_report_at
        };
        let streams = self.streams.iter().flat_map(|s| {
            [
                s.next_missing_at,
                s.wants_pli(&self.config),
                s.playout.as_ref().and_then(Playout::poll_timeout),
            ]
        });
        streams.chain([report]).flatten().min()
    }

    /// Advances timers: gives up on packets past their last NACK, renders due frames.
    pub fn handle_timeout(&mut self, now: Micros) {
        for stream in &mut self.streams {
            stream.expire_missing(now, false, &mut self.totals);
            if let Some(playout) = &mut stream.playout {
                playout.advance(now);
            }
        }
    }

    /// Writes the next due RTCP compound into `buf` (plain; the last
    /// [`SRTP_TRAILER_ROOM`] bytes are left for SRTCP): first NACKs and PLIs, as soon as
    /// due (RFC 4585 early feedback, reduced-size per RFC 5506), then the periodic receiver
    /// report with SDES CNAME and REMB. `None` when nothing is due.
    pub fn poll_rtcp(&mut self, now: Micros, buf: &mut [u8]) -> Option<usize> {
        let room = buf.len().saturating_sub(SRTP_TRAILER_ROOM);
        let buf = &mut buf[..room];
        let feedback = self.write_feedback(now, buf);
        if feedback > 0 {
            return Some(feedback);
        }
        let due = self
            .next_report_at
            .filter(|&t| t <= now && !self.streams.is_empty())?;
        let mut blocks = [ReportBlock::default(); rtcp::MAX_REPORT_BLOCKS];
        let count = self.streams.len().min(rtcp::MAX_REPORT_BLOCKS);
        for (block, stream) in blocks.iter_mut().zip(&mut self.streams) {
            *block = stream.report_block(now);
        }
        let ssrc = Ssrc(self.config.rtcp_ssrc);
        let mut len = rtcp::write_receiver_report(buf, ssrc, &blocks[..count]).ok()?;
        len += rtcp::write_sdes_cname(buf.get_mut(len..)?, ssrc, &self.cname[..self.cname_len])
            .ok()?;
        if let Some(bps) = self.config.remb_bps {
            let mut ssrcs = [0u32; rtcp::MAX_REPORT_BLOCKS];
            for (dst, s) in ssrcs.iter_mut().zip(&self.streams) {
                *dst = s.ssrc;
            }
            if let Some(n) = write_remb(
                buf.get_mut(len..)?,
                self.config.rtcp_ssrc,
                bps,
                &ssrcs[..count],
            ) {
                len += n;
            }
        }
        // Skip missed intervals rather than sending a burst of reports.
        let interval = self.config.rtcp_interval_us;
        self.next_report_at = Some((due + interval).max(now + interval / 2));
        Some(len)
    }

    /// NACKs and PLIs due at `now`, as many as fit; returns the bytes written.
    fn write_feedback(&mut self, now: Micros, buf: &mut [u8]) -> usize {
        let sender = Ssrc(self.config.rtcp_ssrc);
        let mut len = 0;
        for stream in &mut self.streams {
            stream.expire_missing(now, false, &mut self.totals);
            if self.config.nack && stream.next_missing_at.is_some_and(|t| t <= now) {
                let mut seqs = [SeqNo(0); MAX_NACK_SEQS];
                let mut count = 0;
                for m in stream
                    .missing
                    .iter()
                    .filter(|m| m.tries < MAX_NACK_TRIES && m.next_at <= now)
                {
                    if count == MAX_NACK_SEQS {
                        break;
                    }
                    seqs[count] = SeqNo(m.seq as u16);
                    count += 1;
                }
                if count > 0 {
                    let Some(out) = buf.get_mut(len..) else { break };
                    let Ok(n) = rtcp::write_nack(out, sender, Ssrc(stream.ssrc), &seqs[..count])
                    else {
                        break;
                    };
                    len += n;
                    self.totals.nacks_sent += 1;
                    self.totals.nacked_packets += count as u64;
                    let mut marked = 0;
                    for m in stream.missing.iter_mut() {
                        if marked == count {
                            break;
                        }
                        if m.tries < MAX_NACK_TRIES && m.next_at <= now {
                            m.tries += 1;
                            m.next_at = now + NACK_RETRY_US * (1 + u64::from(m.tries) / 2);
                            stream.nacked_bits.set(m.seq);
                            marked += 1;
                        }
                    }
                    stream.refresh_next_missing();
                }
            }
            if stream.wants_pli(&self.config).is_some_and(|t| t <= now) {
                let Some(out) = buf.get_mut(len..) else { break };
                let Ok(n) = rtcp::write_pli(out, sender, Ssrc(stream.ssrc)) else {
                    break;
                };
                len += n;
                stream.last_pli_at = Some(now);
                self.totals.plis_sent += 1;
            }
        }
        len
    }

    /// What was measured so far.
    /// The participant moved to another forwarder (FORWARDER_CHANGED), as a client sets up
    /// a new transport: what is missing will not be resent (counted lost now), and each
    /// stream's next packet starts a new sequence whatever its number, instead of looking
    /// like a gap to NACK or a jump to confirm. The render history stays: the move's gap
    /// is a freeze.
    pub fn transport_changed(&mut self, now: Micros) {
        let totals = &mut self.totals;
        for stream in &mut self.streams {
            stream.expire_missing(now, true, totals);
            stream.restart_next = true;
            stream.last_sr = None;
        }
    }

    pub fn stats(&self) -> ReceiverStats {
        let mut stats = self.totals;
        for s in &self.streams {
            let expected = s.expected_before + s.expected_now();
            if s.is_audio() {
                stats.audio_expected += expected;
            } else {
                stats.expected += expected;
            }
            stats.jitter_max_us = stats
                .jitter_max_us
                .max(Stream::jitter_us(s.peak_jitter_q4, s.clock_hz));
            if let Some(playout) = &s.playout {
                let c = playout.counters();
                stats.frames_rendered += c.frames_rendered;
                stats.freezes += c.freezes;
                stats.frozen_us += c.frozen_us;
                stats.playout_delay_us = stats.playout_delay_us.max(playout.target_delay_us());
            }
        }
        stats
    }

    /// Settles the run: renders what is due, counts every packet still missing as lost
    /// after retransmission, and returns the final stats.
    pub fn finish(&mut self, now: Micros) -> ReceiverStats {
        self.handle_timeout(now);
        for stream in &mut self.streams {
            stream.expire_missing(now, true, &mut self.totals);
        }
        self.stats()
    }

    /// Bytes this receiver holds: itself, its streams, their NACK lists and jitter
    /// buffers.
    pub fn memory_bytes(&self) -> usize {
        size_of::<Receiver>()
            + self.streams.capacity() * size_of::<Stream>()
            + self
                .streams
                .iter()
                .map(|s| {
                    s.missing.capacity() * size_of::<Missing>()
                        + s.playout.as_ref().map_or(0, Playout::heap_bytes)
                })
                .sum::<usize>()
    }

    /// Streams being tracked.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::publisher::{AudioConfig, CameraConfig, Publisher, PublisherConfig};
    use proptest::prelude::*;

    /// Every RTP packet a camera+audio publisher sends in `until` µs, with send times.
    fn capture(until: Micros) -> Vec<(Micros, Vec<u8>)> {
        let mut config = PublisherConfig::new(42, 42);
        config.audio = Some(AudioConfig::opus(1));
        config.camera = Some(CameraConfig::simulcast([2, 3, 4]));
        let mut p = Publisher::new(config);
        let mut out = Vec::new();
        let mut buf = [0u8; 1600];
        let mut now = 0;
        while now <= until {
            while let Some(t) = p.poll_transmit(now, &mut buf) {
                if !t.is_rtcp {
                    out.push((now, buf[..t.len].to_vec()));
                }
            }
            now = p.poll_timeout().unwrap();
        }
        out
    }

    fn drive(
        receiver: &mut Receiver,
        packets: &[(Micros, Vec<u8>)],
        delay: Micros,
    ) -> Vec<Vec<u8>> {
        let mut rtcp_out = Vec::new();
        let mut buf = [0u8; 1600];
        for (sent, bytes) in packets {
            let now = sent + delay;
            while let Some(t) = receiver.poll_timeout().filter(|&t| t <= now) {
                receiver.handle_timeout(t);
                while let Some(n) = receiver.poll_rtcp(t, &mut buf) {
                    rtcp_out.push(buf[..n].to_vec());
                }
            }
            receiver.handle_rtp(now, bytes);
            while let Some(n) = receiver.poll_rtcp(now, &mut buf) {
                rtcp_out.push(buf[..n].to_vec());
            }
        }
        rtcp_out
    }

    #[test]
    fn low_rate_cameras_render_every_frame() {
        // At a few frames per second the paced key frame takes longer than the jitter
        // buffer's bound to arrive: it must be waited for, not dropped (which asked for
        // another key frame, as slow, forever).
        // Below a frame per second too: reduced-rate load tests.
        let rates = [
            (6u64, 0.5f64),
            (8, 1.0),
            (24, 2.0),
            (64, 2.0),
            (64, 4.0),
            (200, 8.0),
            (150, 30.0),
        ];
        for (kbps, fps) in rates {
            let mut config = PublisherConfig::new(42, 42);
            let mut camera = CameraConfig::simulcast([2, 3, 4]);
            camera.encodings = vec![crate::media::publisher::Encoding {
                bitrate_bps: kbps * 1000,
                fps,
            }];
            camera.ssrcs = vec![2];
            config.camera = Some(camera);
            let mut p = Publisher::new(config);
            let mut packets = Vec::new();
            let mut buf = [0u8; 1600];
            let mut now = 0;
            while now <= 10_000_000 {
                while let Some(t) = p.poll_transmit(now, &mut buf) {
                    if !t.is_rtcp {
                        packets.push((now, buf[..t.len].to_vec()));
                    }
                }
                now = p.poll_timeout().unwrap_or(now + 1000).max(now + 1);
            }
            let mut r = Receiver::new(ReceiverConfig::new(77));
            drive(&mut r, &packets, 5000);
            let s = r.finish(now + 1_000_000);
            let frames = (fps * 10.0) as u64;
            assert!(
                s.frames_rendered + 1 >= frames,
                "{kbps} kbit/s at {fps} fps: {} of {frames} frames",
                s.frames_rendered
            );
            assert_eq!(
                (s.plis_sent, s.freezes),
                (0, 0),
                "{kbps} kbit/s at {fps} fps"
            );
        }
    }

    #[test]
    fn clean_path_measures_everything_once() {
        let packets = capture(2_000_000);
        let mut r = Receiver::new(ReceiverConfig::new(77));
        let rtcp_out = drive(&mut r, &packets, 20_000);
        // Duplicates are recognised.
        let dup = packets[10].1.clone();
        assert_eq!(r.handle_rtp(2_100_000, &dup), None);
        let s = r.finish(2_100_000);
        assert_eq!(s.packets as usize, packets.len());
        assert_eq!(s.duplicates, 1);
        assert_eq!(
            (s.invalid, s.lost_before_rtx, s.lost_after_rtx, s.audio_lost),
            (0, 0, 0, 0)
        );
        assert_eq!(s.expected + s.audio_expected, s.packets);
        assert_eq!(s.nacks_sent, 0);
        assert_eq!(s.plis_sent, 0);
        assert_eq!(s.freezes, 0);
        // Three camera encodings at 30 fps for 2 s, minus what is still in the buffer.
        assert!(s.frames_rendered >= 170, "{}", s.frames_rendered);
        // The first packet, 20 ms after it left.
        assert_eq!(s.first_media_at, Some(packets[0].0 + 20_000));
        assert!(s.longest_gap_us < 30_000, "{}", s.longest_gap_us);
        // Receiver reports went out with a block per stream and a CNAME.
        let report = rtcp_out
            .iter()
            .find(|p| p[1] == packet_type::RR)
            .expect("a receiver report");
        let mut it = iter_compound(report);
        let Some(Ok(RtcpPacket::ReceiverReport(rr))) = it.next() else {
            panic!()
        };
        assert_eq!(rr.sender_ssrc, Ssrc(77));
        assert_eq!(rr.report_blocks().len(), 4);
        assert!(rr
            .report_blocks()
            .all(|b| b.cumulative_lost == 0 && b.fraction_lost == 0));
        assert!(matches!(it.next(), Some(Ok(RtcpPacket::Sdes(_)))));
    }

    #[test]
    fn a_new_transport_starts_new_sequences_without_nacks() {
        let mut packets = capture(2_000_000);
        let moved_at = 1_000_000;
        // The new forwarder numbers each stream from elsewhere, within MAX_DROPOUT of the
        // old numbers: without the restart it would look like a gap of 700 packets.
        for (sent, bytes) in packets.iter_mut().filter(|(sent, _)| *sent >= moved_at) {
            let seq = u16::from_be_bytes([bytes[2], bytes[3]]).wrapping_add(700);
            bytes[2..4].copy_from_slice(&seq.to_be_bytes());
            *sent += 300_000; // and media stopped for a while
        }
        let (before, after): (Vec<_>, Vec<_>) =
            packets.into_iter().partition(|(sent, _)| *sent < moved_at);
        let mut r = Receiver::new(ReceiverConfig::new(77));
        drive(&mut r, &before, 20_000);
        r.transport_changed(moved_at + 250_000);
        let rtcp_out = drive(&mut r, &after, 20_000);
        let s = r.finish(2_400_000);
        assert_eq!(s.packets as usize, before.len() + after.len());
        assert_eq!(
            (s.lost_before_rtx, s.lost_after_rtx, s.audio_lost),
            (0, 0, 0)
        );
        assert_eq!(s.expected + s.audio_expected, s.packets);
        assert_eq!(s.nacks_sent, 0);
        assert!(!rtcp_out.iter().any(|p| p[1] == packet_type::RTPFB));
        assert!(s.longest_gap_us >= 300_000, "{}", s.longest_gap_us);
    }

    #[test]
    fn gap_is_nacked_repaired_and_counted() {
        let packets = capture(1_000_000);
        // Drop one packet of the top camera encoding.
        let victim = packets
            .iter()
            .enumerate()
            .filter(|(_, (_, b))| RtpHeader::parse(b).unwrap().ssrc.0 == 4)
            .nth(40)
            .unwrap()
            .0;
        let mut lossy = packets.clone();
        let (sent, bytes) = lossy.remove(victim);
        let header = RtpHeader::parse(&bytes).unwrap();
        let mut r = Receiver::new(ReceiverConfig::new(77));
        let mut buf = [0u8; 1600];
        let mut rtx_at = None;
        let mut delivered = None;
        for (t, b) in &lossy {
            let now = t + 20_000;
            while let Some(due) = r.poll_timeout().filter(|&d| d <= now) {
                r.handle_timeout(due);
                while let Some(n) = r.poll_rtcp(due, &mut buf) {
                    for p in iter_compound(&buf[..n]).flatten() {
                        if let RtcpPacket::TransportFeedback(fb) = p {
                            assert_eq!(fb.media_ssrc, header.ssrc);
                            let lost: Vec<_> = fb.lost_sequence_numbers().collect();
                            assert_eq!(lost, vec![header.sequence]);
                            // The retransmission: identical bytes, 40 ms after the NACK.
                            rtx_at.get_or_insert(due + 40_000);
                        }
                    }
                }
            }
            if let Some(at) = rtx_at.filter(|&at| at <= now && delivered.is_none()) {
                delivered = r.handle_rtp(at, &bytes);
                assert_eq!(
                    delivered.map(|d| (d.repaired, d.latency_us)),
                    Some((true, at - sent))
                );
            }
            r.handle_rtp(now, b);
        }
        let s = r.finish(1_100_000);
        assert!(delivered.is_some());
        assert_eq!((s.lost_before_rtx, s.lost_after_rtx, s.repaired), (1, 0, 1));
        assert_eq!(s.nacked_packets, 1);
        assert_eq!(s.expected + s.audio_expected, s.packets);
        assert_eq!(s.freezes, 0);
    }

    #[test]
    fn unrepaired_loss_is_given_up_and_asks_for_a_keyframe() {
        let packets = capture(3_000_000);
        let victim = packets
            .iter()
            .enumerate()
            .filter(|(_, (_, b))| RtpHeader::parse(b).unwrap().ssrc.0 == 3)
            .nth(60)
            .unwrap()
            .0;
        let mut lossy = packets.clone();
        lossy.remove(victim);
        let mut r = Receiver::new(ReceiverConfig::new(77));
        let rtcp_out = drive(&mut r, &lossy, 20_000);
        let s = r.finish(3_100_000);
        assert_eq!((s.lost_before_rtx, s.lost_after_rtx), (1, 1));
        assert_eq!(s.nacked_packets, u64::from(MAX_NACK_TRIES));
        // PLI until a key frame comes, at most every 500 ms (none comes: the publisher is
        // not listening).
        assert!((1..=5).contains(&s.plis_sent), "{}", s.plis_sent);
        let plis = rtcp_out
            .iter()
            .flat_map(|p| iter_compound(p).flatten().collect::<Vec<_>>())
            .filter(|p| matches!(p, RtcpPacket::PayloadFeedback(fb) if fb.fmt == feedback_fmt::PLI && fb.media_ssrc == Ssrc(3)))
            .count();
        assert_eq!(plis as u64, s.plis_sent);
    }

    #[test]
    fn audio_loss_is_counted_separately_and_never_nacked() {
        let packets = capture(1_000_000);
        let audio: Vec<_> = packets
            .iter()
            .filter(|(_, b)| RtpHeader::parse(b).unwrap().ssrc.0 == 1)
            .cloned()
            .collect();
        let lossy: Vec<_> = audio
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 10 != 5)
            .map(|(_, p)| p.clone())
            .collect();
        let mut r = Receiver::new(ReceiverConfig::new(77));
        drive(&mut r, &lossy, 10_000);
        let s = r.finish(1_100_000);
        // A lost last packet is not noticed: nothing follows it.
        let lost = (0..audio.len() - 1).filter(|i| i % 10 == 5).count() as u64;
        assert_eq!(s.audio_lost, lost);
        assert_eq!((s.expected, s.lost_before_rtx, s.nacks_sent), (0, 0, 0));
    }

    #[test]
    fn reordering_is_not_loss() {
        let mut packets = capture(1_000_000);
        for pair in packets.chunks_mut(2).step_by(7) {
            pair.reverse();
        }
        let mut r = Receiver::new(ReceiverConfig::new(77));
        drive(&mut r, &packets, 20_000);
        let s = r.finish(1_100_000);
        assert_eq!(
            (
                s.lost_before_rtx,
                s.lost_after_rtx,
                s.audio_lost,
                s.nacks_sent
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(s.packets as usize, packets.len());
    }

    #[test]
    fn sender_report_is_echoed() {
        let packets = capture(100_000);
        let mut r = Receiver::new(ReceiverConfig {
            rtcp_interval_us: 200_000,
            remb_bps: Some(3_000_000),
            ..ReceiverConfig::new(9)
        });
        drive(&mut r, &packets, 0);
        let mut sr = [0u8; 64];
        let info = rtcp::SenderInfo {
            ntp_timestamp: 0x1234_5678_9abc_def0,
            rtp_timestamp: 0,
            packet_count: 0,
            octet_count: 0,
        };
        let n = rtcp::write_sender_report(&mut sr, Ssrc(4), &info, &[]).unwrap();
        r.handle_rtcp(100_000, &sr[..n]);
        let mut buf = [0u8; 1600];
        let mut report = None;
        let mut now = 100_000;
        while report.is_none() {
            now = r.poll_timeout().unwrap().max(now);
            r.handle_timeout(now);
            while let Some(n) = r.poll_rtcp(now, &mut buf) {
                if buf[1] == packet_type::RR {
                    report = Some(buf[..n].to_vec());
                }
            }
        }
        let report = report.unwrap();
        let packets: Vec<_> = iter_compound(&report).flatten().collect();
        let RtcpPacket::ReceiverReport(rr) = packets[0] else {
            panic!()
        };
        let block = rr.report_blocks().find(|b| b.ssrc == Ssrc(4)).unwrap();
        assert_eq!(block.last_sr, 0x5678_9abc);
        assert_eq!(
            block.delay_since_last_sr as u64,
            (now - 100_000) * 65_536 / 1_000_000
        );
        let remb = packets
            .iter()
            .find_map(|p| match p {
                RtcpPacket::PayloadFeedback(fb) if fb.fmt == feedback_fmt::AFB => fb.remb(),
                _ => None,
            })
            .expect("REMB");
        assert!(remb.bitrate_bps <= 3_000_000 && remb.bitrate_bps > 2_990_000);
        assert_eq!(remb.ssrcs().count(), 4);
    }

    #[test]
    fn sequence_wraps_and_restarts() {
        let mut r = Receiver::new(ReceiverConfig {
            pli: false,
            ..ReceiverConfig::new(1)
        });
        let mut buf = [0u8; 100];
        let mut send = |r: &mut Receiver, seq: u16, probe_seq: u32, now: Micros| {
            let p = Probe {
                kind: MediaKind::Audio,
                keyframe: false,
                frame_start: true,
                frame_end: true,
                temporal_layer: 0,
                publisher_id: 1,
                encoding: 0,
                probe_seq,
                frame_number: probe_seq,
                send_us: now,
            };
            buf[..12].copy_from_slice(&[0x80, 111, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
            buf[2..4].copy_from_slice(&seq.to_be_bytes());
            probe::write(&p, &mut buf[12..60]).unwrap();
            r.handle_rtp(now, &buf[..60])
        };
        for i in 0..100u16 {
            assert!(send(
                &mut r,
                65_500u16.wrapping_add(i),
                u32::from(i),
                u64::from(i) * 20_000
            )
            .is_some());
        }
        // A restart far away: the first packet is untracked, the second confirms it.
        assert!(send(&mut r, 30_000, 100, 2_000_000).is_some());
        assert!(send(&mut r, 30_001, 101, 2_020_000).is_some());
        assert!(send(&mut r, 30_003, 102, 2_040_000).is_some());
        let s = r.finish(3_000_000);
        assert_eq!(s.packets, 103);
        assert_eq!(s.audio_expected, 100 + 3);
        assert_eq!(s.audio_lost, 1);
    }

    #[test]
    fn stream_limit_and_kind_mismatch_are_invalid() {
        let packets = capture(200_000);
        let mut r = Receiver::new(ReceiverConfig {
            max_streams: 2,
            ..ReceiverConfig::new(1)
        });
        for (t, b) in &packets {
            r.handle_rtp(*t, b);
        }
        let s = r.stats();
        assert_eq!(r.stream_count(), 2);
        assert!(s.invalid > 0);
        assert_eq!(s.invalid + s.packets, packets.len() as u64);
    }

    #[test]
    fn a_browsers_media_is_counted_as_foreign_not_invalid() {
        let rtp = |pt: u8, payload: &[u8]| {
            let mut p = vec![0x80, pt, 0, 1, 0, 0, 0, 0, 0x0b, 0x0b, 0x0b, 0x0b];
            p.extend_from_slice(payload);
            p
        };
        let mut r = Receiver::new(ReceiverConfig::new(1));
        // Opus (a TOC byte and frame data), and VP8 (a descriptor with a 15-bit picture
        // id, then a key frame's first bytes).
        assert_eq!(
            r.handle_rtp(0, &rtp(111, &[0x78, 0x0b, 0x31, 0x42, 0x11, 0x20])),
            None
        );
        let vp8 = [
            0x90, 0x80, 0x81, 0x23, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01,
            0x00, 0x00,
        ];
        assert_eq!(r.handle_rtp(0, &rtp(96, &vp8)), None);
        let s = r.stats();
        assert_eq!((s.foreign, s.invalid, s.packets), (2, 0, 0));
    }

    #[test]
    fn corrupted_packets_are_invalid() {
        let packets = capture(100_000);
        let mut r = Receiver::new(ReceiverConfig::new(1));
        for (i, (t, b)) in packets.iter().enumerate() {
            let mut b = b.clone();
            // Anywhere in the payload (header fields are free to change: the forwarder
            // rewrites them).
            // The VP8 picture id and TL0PICIDX are the forwarder's to rewrite too.
            let header = RtpHeader::parse(&b).unwrap();
            let descriptor = if header.payload_type == 111 {
                0
            } else {
                super::super::vp8::DESCRIPTOR_LEN
            };
            let start = header.header_len + descriptor;
            let at = start + (i * 7) % (b.len() - start);
            b[at] ^= 0x40;
            assert_eq!(r.handle_rtp(*t, &b), None, "byte {at} of packet {i}");
        }
        assert_eq!(r.stats().invalid, packets.len() as u64);
        assert_eq!(r.stats().packets, 0);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            packets in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 1..40),
        ) {
            let mut r = Receiver::new(ReceiverConfig::new(1));
            let mut buf = [0u8; 1600];
            for (i, p) in packets.iter().enumerate() {
                let now = i as u64 * 10_000;
                let _ = r.handle_rtp(now, p);
                r.handle_rtcp(now, p);
                r.handle_timeout(now);
                while r.poll_rtcp(now, &mut buf).is_some() {}
            }
            let _ = r.finish(1_000_000);
        }

        #[test]
        fn forged_video_probes_never_panic(
            packets in prop::collection::vec(
                (any::<u16>(), any::<u32>(), any::<u64>(), any::<(bool, bool, bool)>(), 0u8..4, 0u64..100_000),
                1..150,
            ),
        ) {
            // Valid framing and checksums, nonsense values: sequence numbers, timestamps,
            // send times (up to u64::MAX), frame flags.
            let mut r = Receiver::new(ReceiverConfig::new(1));
            let mut buf = [0u8; 1600];
            let mut pkt = [0u8; 12 + 6 + 10 + 40];
            let mut now = 0;
            for (i, &(seq, ts, send_us, (keyframe, start, end), tid, step)) in packets.iter().enumerate() {
                now += step;
                pkt[..12].copy_from_slice(&[0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
                pkt[1] |= u8::from(end) << 7;
                pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                pkt[4..8].copy_from_slice(&ts.to_be_bytes());
                let d = super::super::vp8::Descriptor {
                    start_of_frame: start,
                    picture_id: i as u16,
                    tl0_pic_idx: 0,
                    temporal_layer: tid,
                    layer_sync: false,
                };
                super::super::vp8::write_descriptor(&mut pkt[12..], &d);
                let mut at = 18;
                if keyframe && start {
                    super::super::vp8::write_keyframe_header(&mut pkt[at..], 320, 180);
                    at += KEYFRAME_HEADER_LEN;
                }
                let p = Probe {
                    kind: MediaKind::Camera, keyframe, frame_start: start, frame_end: end,
                    temporal_layer: tid, publisher_id: 1, encoding: 0, probe_seq: i as u32,
                    frame_number: i as u32, send_us,
                };
                probe::write(&p, &mut pkt[at..at + 40]).unwrap();
                let _ = r.handle_rtp(now, &pkt[..at + 40]);
                r.handle_timeout(now);
                while r.poll_rtcp(now, &mut buf).is_some() {}
                let _ = r.poll_timeout();
            }
            let s = r.finish(now.saturating_add(10_000_000));
            prop_assert_eq!(s.invalid, 0);
        }

        #[test]
        fn valid_headers_with_random_sequence_never_panic(
            seqs in prop::collection::vec((any::<u16>(), 0u64..50_000), 1..200),
        ) {
            let mut r = Receiver::new(ReceiverConfig::new(1));
            let mut buf = [0u8; 1600];
            let mut pkt = [0u8; 60];
            let mut now = 0;
            for (i, (seq, step)) in seqs.iter().enumerate() {
                now += step;
                let p = Probe {
                    kind: MediaKind::Audio, keyframe: false, frame_start: true, frame_end: true,
                    temporal_layer: 0, publisher_id: 1, encoding: 0, probe_seq: i as u32,
                    frame_number: 0, send_us: now,
                };
                pkt[..12].copy_from_slice(&[0x80, 111, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
                pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                probe::write(&p, &mut pkt[12..]).unwrap();
                prop_assert!(r.handle_rtp(now, &pkt).is_some() || r.stats().duplicates > 0);
                r.handle_timeout(now);
                while r.poll_rtcp(now, &mut buf).is_some() {}
            }
            let s = r.finish(now + 10_000_000);
            prop_assert!(s.audio_lost <= s.audio_expected);
        }
    }
}
