//! The sans-IO publisher: paces synthetic RTP that looks like a WebRTC client's, answers
//! the forwarder's NACK, PLI and FIR, and sends sender reports.
//!
//! # Run loop
//!
//! ```text
//! loop {
//!     while let Some(t) = publisher.poll_transmit(now, &mut buf) { send(&buf[..t.len]) }
//!     wait until publisher.poll_timeout() or an RTCP packet arrives (handle_rtcp)
//! }
//! ```
//!
//! Streams start at the first `poll_transmit`: `poll_timeout` answers `Some(0)` until then.
//!
//! # What is sent
//!
//! * **Audio** (48 kHz clock): one packet every 1/`packets_per_s` seconds, Opus-sized
//!   while talking, small while silent, in talk spurts drawn from the seed. The marker bit
//!   opens each talk spurt (RFC 3551 §4.1); the RFC 6464 audio level travels in an RFC 8285
//!   one-byte header extension if configured.
//! * **Camera** (90 kHz clock): one SSRC per simulcast encoding, VP8 (RFC 7741) with a
//!   15-bit PictureID, TL0PICIDX and TID (temporal pattern 0,2,1,2 for three layers, 0,1
//!   for two), a real key frame header on key frames so the forwarder's VP8 reader sees
//!   them, the marker on the last packet of each frame. Frames are sized from bitrate and
//!   frame rate (key frames 4-8× larger), cut into packets of at most `max_payload` bytes
//!   and paced out at 2.5× the camera's total bitrate (all encodings), as libwebrtc's
//!   pacer paces the whole connection.
//! * **Screen share**: the same VP8 framing on one SSRC, small frames while idle and a
//!   burst of `burst_packets` full packets every `burst_every_us` (a slide change).
//! * **RTCP**: a sender report with an SDES CNAME for every SSRC that has sent, about once
//!   a second each (RFC 3550 §6.4.1, §6.5.1), with NTP and RTP timestamps of the same
//!   instant and the packet and octet counts.
//!
//! # Retransmission without a packet cache
//!
//! Every payload byte is a function of a few numbers: the probe fields and the frame's
//! place in the stream. So the publisher keeps, per video SSRC, a ring of 12-byte
//! [`SentPacket`] records covering about a second of packets, and rebuilds a NACKed packet
//! from its record: same sequence number, timestamp, marker, descriptor, probe (send time
//! included) and fill, byte for byte. Audio is not retransmitted (a late audio packet is
//! useless to a jitter buffer, and the forwarder keeps no audio cache).

use std::collections::VecDeque;
use std::io::Write as _;
use std::ops::RangeInclusive;

use fanout_forwarder::ids::Ssrc;
use fanout_forwarder::rtcp::{self, feedback_fmt, iter_compound, RtcpPacket, SenderInfo};

use super::probe::{self, mix64, Probe, PROBE_LEN};
use super::vp8::{self, Descriptor, DESCRIPTOR_LEN, KEYFRAME_HEADER_LEN};
use crate::stats::{MediaKind, PublisherStats};
use crate::Micros;

/// Default largest RTP payload: what libwebrtc uses, leaving room under a 1500-byte MTU
/// for IP/UDP, RTP header extensions and the SRTP trailer.
pub const DEFAULT_MAX_PAYLOAD: usize = 1200;
/// Bytes left free at the end of the caller's buffer for SRTP/SRTCP (the longest auth tag
/// is 16 bytes for AEAD-GCM; SRTCP adds its 4-byte index).
pub const SRTP_TRAILER_ROOM: usize = 32;
/// RTP fixed header (RFC 3550 §5.1); the publisher writes no CSRCs.
const RTP_HEADER_LEN: usize = 12;
/// RFC 8285 one-byte extension header (4) plus the audio level element (2) and padding to a
/// word (2).
const AUDIO_LEVEL_EXTENSION_LEN: usize = 8;
/// Smallest video payload: descriptor, key frame header, probe.
const MIN_VIDEO_PAYLOAD: usize = DESCRIPTOR_LEN + KEYFRAME_HEADER_LEN + PROBE_LEN;
/// Smallest `max_payload` accepted; smaller values are raised to it.
const MIN_MAX_PAYLOAD: usize = 64;
/// A frame never has more packets than this (a 1.2 MB frame), whatever the config says.
const MAX_FRAME_PACKETS: usize = 1024;
/// About once a second per SSRC (RFC 3550 §6.2 scales the interval with session size;
/// a publisher's few SSRCs and libwebrtc's 1 s video interval make this the usual figure).
const SENDER_REPORT_INTERVAL_US: Micros = 1_000_000;
/// A camera is never paced slower than this: at the few kbit/s of a reduced-rate load
/// test, 2.5× its bitrate would spread a key frame over seconds (libwebrtc's pacer does
/// not go that low either: its rate follows the bandwidth estimate, hundreds of kbit/s).
const MIN_PACING_BPS: u64 = 100_000;
/// libwebrtc's pacer sends at 2.5× the target bitrate (`kDefaultPaceMultiplier`).
const PACING_FACTOR_NUM: u64 = 5;
const PACING_FACTOR_DEN: u64 = 2;
/// A stream that fell further behind its schedule than this (the caller polled late)
/// skips frames to catch up, as an encoder drops frames under CPU load.
const MAX_LAG_US: Micros = 500_000;
/// Retransmissions waiting to be sent; more NACKed packets than this are ignored. The
/// queue grows to it only under heavy loss.
const RTX_QUEUE_CAPACITY: usize = 128;
/// Per-SSRC history bounds, in packets (a power of two between these).
const MIN_HISTORY: usize = 64;
const MAX_HISTORY: usize = 1024;
/// RTP clock rates: Opus (RFC 7587 §4.1) and video (RFC 7741 §6.1).
const AUDIO_CLOCK_HZ: u64 = 48_000;
const VIDEO_CLOCK_HZ: u64 = 90_000;
/// NTP seconds (since 1900) of the run's epoch. Only differences and the echo of the middle
/// 32 bits matter (RFC 3550 §6.4.1 LSR/DLSR), so any fixed base works; this one is
/// 2026-01-01, so captures show plausible dates.
const RUN_EPOCH_NTP_SECONDS: u64 = 3_976_214_400;

/// Audio level of a silent packet (RFC 6464 §3: -127 dBov).
const SILENCE_LEVEL: u8 = 127;

/// One audio track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioConfig {
    pub ssrc: u32,
    pub payload_type: u8,
    pub packets_per_s: u32,
    /// Payload size range while talking (probe included); silent packets are smaller.
    pub payload_bytes: RangeInclusive<usize>,
    /// RFC 6464 audio level in an RFC 8285 one-byte header extension with this id (1..=14).
    pub audio_level_extension_id: Option<u8>,
}

impl AudioConfig {
    /// Opus at 20 ms packets, as browsers send it.
    pub fn opus(ssrc: u32) -> AudioConfig {
        AudioConfig {
            ssrc,
            payload_type: 111,
            packets_per_s: 50,
            payload_bytes: 60..=160,
            audio_level_extension_id: Some(1),
        }
    }
}

/// One simulcast encoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Encoding {
    pub bitrate_bps: u64,
    /// Frames per second; below 1 for reduced-rate load tests (at least [`MIN_FPS`]).
    pub fps: f64,
}

/// Lowest frame rate a video stream is paced at: a frame every 10 s.
pub const MIN_FPS: f64 = 0.1;
/// Highest frame rate.
pub const MAX_FPS: f64 = 240.0;

/// A frame rate in thousandths of a frame per second, clamped to what a stream is paced
/// at: integer arithmetic for capture times and RTP timestamps.
fn millifps(fps: f64) -> u64 {
    let fps = if fps.is_finite() { fps } else { MIN_FPS };
    (fps.clamp(MIN_FPS, MAX_FPS) * 1000.0).round() as u64
}

/// One camera track, simulcast if it has several encodings.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraConfig {
    /// One SSRC per encoding, lowest layer first.
    pub ssrcs: Vec<u32>,
    pub payload_type: u8,
    /// Lowest layer first; encodings without an SSRC are not sent.
    pub encodings: Vec<Encoding>,
    /// VP8 temporal layers, 1..=3.
    pub temporal_layers: u8,
    /// Periodic key frames; `None` or 0 for key frames only on request.
    pub keyframe_interval_us: Option<Micros>,
}

impl CameraConfig {
    /// Three simulcast encodings like a browser at 720p: 150 kb/s, 500 kb/s, 1.5 Mb/s,
    /// 30 fps, three temporal layers, a key frame every 10 s.
    pub fn simulcast(ssrcs: [u32; 3]) -> CameraConfig {
        CameraConfig {
            ssrcs: ssrcs.to_vec(),
            payload_type: 96,
            encodings: vec![
                Encoding {
                    bitrate_bps: 150_000,
                    fps: 30.0,
                },
                Encoding {
                    bitrate_bps: 500_000,
                    fps: 30.0,
                },
                Encoding {
                    bitrate_bps: 1_500_000,
                    fps: 30.0,
                },
            ],
            temporal_layers: 3,
            keyframe_interval_us: Some(10_000_000),
        }
    }
}

/// One screen share track.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScreenConfig {
    pub ssrc: u32,
    pub payload_type: u8,
    /// Frames per second (at least [`MIN_FPS`]).
    pub fps: f64,
    /// Bitrate of the idle frames between bursts.
    pub bitrate_bps: u64,
    /// A burst (slide change) this often; 0 for none.
    pub burst_every_us: Micros,
    /// Full-size packets in a burst frame.
    pub burst_packets: u32,
}

impl ScreenConfig {
    /// Slides: 5 fps of near-static frames at 100 kb/s, a 60-packet change every 10 s.
    pub fn slides(ssrc: u32) -> ScreenConfig {
        ScreenConfig {
            ssrc,
            payload_type: 96,
            fps: 5.0,
            bitrate_bps: 100_000,
            burst_every_us: 10_000_000,
            burst_packets: 60,
        }
    }
}

/// What one participant publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct PublisherConfig {
    /// Stamped in every probe.
    pub publisher_id: u32,
    /// Seeds sequence numbers, timestamps, sizes and talk spurts.
    pub seed: u64,
    /// Largest RTP payload.
    pub max_payload: usize,
    pub audio: Option<AudioConfig>,
    pub camera: Option<CameraConfig>,
    pub screen: Option<ScreenConfig>,
}

impl PublisherConfig {
    /// A publisher of nothing yet; set `audio`, `camera`, `screen`.
    pub fn new(publisher_id: u32, seed: u64) -> PublisherConfig {
        PublisherConfig {
            publisher_id,
            seed,
            max_payload: DEFAULT_MAX_PAYLOAD,
            audio: None,
            camera: None,
            screen: None,
        }
    }
}

/// One datagram [`Publisher::poll_transmit`] wrote into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Plain (unprotected) length.
    pub len: usize,
    /// RTCP (protect with SRTCP) rather than RTP.
    pub is_rtcp: bool,
}

/// What the publisher remembers of one video packet it sent, enough to write it again
/// byte for byte. Kept to 12 bytes: a participant holds about a second of them per SSRC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SentPacket {
    /// Low 32 bits of the send time (µs); the full value is recovered from `now`, which
    /// is less than 71 minutes later whenever a NACK can still reach this packet.
    send_lo: u32,
    frame_number: u32,
    payload_len: u16,
    /// `PACKET_*` bits and the temporal layer.
    flags: u8,
    tl0_pic_idx: u8,
}

const PACKET_START: u8 = 0x01;
const PACKET_END: u8 = 0x02;
const PACKET_KEYFRAME: u8 = 0x04;
const PACKET_LAYER_SYNC: u8 = 0x08;
const PACKET_TID_SHIFT: u32 = 4;

impl SentPacket {
    fn temporal_layer(&self) -> u8 {
        (self.flags >> PACKET_TID_SHIFT) & 0x03
    }
}

/// RTP and sender report state shared by every stream.
#[derive(Debug, Clone)]
struct RtpState {
    ssrc: u32,
    payload_type: u8,
    clock_hz: u64,
    first_seq: u16,
    ts_base: u32,
    /// Packets sent once: the next packet's index, probe sequence number, and distance
    /// from `first_seq`.
    sent: u64,
    /// RFC 3550 §6.4.1 sender's packet and octet counts (retransmissions included: they
    /// are sent on this SSRC). Wrap as the fields do.
    sr_packets: u32,
    sr_octets: u32,
    next_sr_at: Micros,
    /// How long after the publisher starts this stream's schedule begins. A microphone's
    /// packetizer and a camera's capture run on clocks of their own, so a publisher's
    /// streams are out of step: at reduced rates (a packet a second) streams in step
    /// would send every stream's packet, to every viewer, in the same instant.
    phase_us: Micros,
}

impl RtpState {
    fn new(ssrc: u32, payload_type: u8, clock_hz: u64, seed: u64) -> RtpState {
        RtpState {
            ssrc,
            payload_type: payload_type & 0x7f,
            clock_hz,
            first_seq: hash(seed, u64::from(ssrc), 1) as u16,
            ts_base: hash(seed, u64::from(ssrc), 2) as u32,
            sent: 0,
            sr_packets: 0,
            sr_octets: 0,
            next_sr_at: 0,
            phase_us: 0,
        }
    }

    fn seq_of(&self, index: u64) -> u16 {
        self.first_seq.wrapping_add(index as u16)
    }

    fn count_sent(&mut self, payload_len: usize) {
        self.sr_packets = self.sr_packets.wrapping_add(1);
        self.sr_octets = self.sr_octets.wrapping_add(payload_len as u32);
    }
}

#[derive(Debug, Clone)]
struct AudioStream {
    rtp: RtpState,
    packets_per_s: u64,
    talking_bytes: RangeInclusive<usize>,
    level_extension_id: Option<u8>,
    /// 20 ms (or 1/packets_per_s) slots skipped because the caller polled too late.
    skipped: u64,
    talking: bool,
    /// Slot of the first packet after the current spurt.
    spurt_end: u64,
    spurts: u64,
}

/// A frame being paced out.
#[derive(Debug, Clone, Copy)]
struct FrameInProgress {
    number: u32,
    keyframe: bool,
    temporal_layer: u8,
    layer_sync: bool,
    tl0_pic_idx: u8,
    packets: u16,
    sent: u16,
    /// Packet i has `base_len + (i < remainder)` payload bytes.
    base_len: u16,
    remainder: u16,
}

impl FrameInProgress {
    fn payload_len(&self, i: u16) -> usize {
        usize::from(self.base_len) + usize::from(i < self.remainder)
    }
}

#[derive(Debug, Clone)]
struct VideoStream {
    rtp: RtpState,
    kind: MediaKind,
    encoding: u8,
    /// Frames per thousand seconds.
    millifps: u64,
    bitrate_bps: u64,
    /// Rate the pacer spreads packets at.
    pacing_bps: u64,
    temporal_pattern: &'static [u8],
    keyframe_interval_us: Option<Micros>,
    width: u16,
    height: u16,
    /// Screen share bursts: (every µs, packets).
    burst: Option<(Micros, u32)>,
    picture_id_base: u16,
    next_frame: u32,
    frame: Option<FrameInProgress>,
    next_packet_at: Micros,
    keyframe_requested: bool,
    last_keyframe_capture: Option<Micros>,
    pattern_pos: usize,
    tl0_pic_idx: u8,
    /// Ring of the last `history.len()` packets (a power of two), by index.
    history: Vec<SentPacket>,
}

/// A NACKed packet to send again: the stream, and the packet's index there modulo 2^32
/// (the history reaches back far less than that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RtxRequest {
    stream: u8,
    index: u32,
}

/// Synthetic media source of one participant. See the module docs.
#[derive(Debug)]
pub struct Publisher {
    publisher_id: u32,
    seed: u64,
    max_payload: usize,
    started_at: Option<Micros>,
    stopped: bool,
    audio: Option<AudioStream>,
    /// Camera encodings (lowest first), then the screen share.
    video: Vec<VideoStream>,
    rtx: VecDeque<RtxRequest>,
    /// When the oldest queued retransmission was asked for (its due time).
    rtx_due: Micros,
    stats: PublisherStats,
    cname: [u8; 24],
    cname_len: usize,
}

fn hash(seed: u64, a: u64, b: u64) -> u64 {
    mix64(seed ^ mix64(a ^ mix64(b)))
}

/// A value in `range` drawn from `h`.
fn pick(h: u64, range: &RangeInclusive<usize>) -> usize {
    let (lo, hi) = (*range.start(), (*range.end()).max(*range.start()));
    let span = (hi - lo) as u64 + 1;
    lo + (h % span) as usize
}

/// RFC 3550 §4: 32.32 fixed point seconds since 1900.
fn ntp_timestamp(now: Micros) -> u64 {
    let seconds = RUN_EPOCH_NTP_SECONDS + now / 1_000_000;
    let fraction = ((now % 1_000_000) << 32) / 1_000_000;
    (seconds << 32) | fraction
}

/// Writes an RTP fixed header (no CSRC), plus the audio level extension if given as
/// (id, level byte). Returns the header length; `buf` must be long enough (callers check).
fn write_rtp_header(
    buf: &mut [u8],
    marker: bool,
    rtp: &RtpState,
    seq: u16,
    timestamp: u32,
    audio_level: Option<(u8, u8)>,
) -> usize {
    let extension = u8::from(audio_level.is_some()) << 4;
    buf[0] = 0x80 | extension;
    buf[1] = (u8::from(marker) << 7) | rtp.payload_type;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&timestamp.to_be_bytes());
    buf[8..12].copy_from_slice(&rtp.ssrc.to_be_bytes());
    match audio_level {
        Some((id, level)) => {
            // RFC 8285 §4.2: 0xBEDE, length 1 word; element id/len-1, then RFC 6464 §3's
            // V bit and level; two bytes of padding.
            buf[12..20].copy_from_slice(&[0xbe, 0xde, 0, 1, id << 4, level, 0, 0]);
            RTP_HEADER_LEN + AUDIO_LEVEL_EXTENSION_LEN
        }
        None => RTP_HEADER_LEN,
    }
}

/// Temporal layer patterns (libvpx's real-time modes): frame i of a group gets TID
/// `pattern[i % len]`.
fn temporal_pattern(layers: u8) -> &'static [u8] {
    match layers {
        0 | 1 => &[0],
        2 => &[0, 1],
        _ => &[0, 2, 1, 2],
    }
}

fn history_len(packets_per_s: u64) -> usize {
    (packets_per_s as usize)
        .clamp(MIN_HISTORY, MAX_HISTORY)
        .next_power_of_two()
        .min(MAX_HISTORY)
}

impl VideoStream {
    /// When frame `k` is captured, relative to the start.
    fn capture_offset(&self, k: u32) -> Micros {
        u64::from(k) * 1_000_000_000 / self.millifps
    }

    fn frame_timestamp(&self, frame_number: u32) -> u32 {
        let offset = u64::from(frame_number) * VIDEO_CLOCK_HZ * 1000 / self.millifps;
        self.rtp.ts_base.wrapping_add(offset as u32)
    }

    /// When the stream's next packet is due, for a publisher started at `start`.
    fn next_due(&self, start: Micros) -> Micros {
        match self.frame {
            Some(_) => self.next_packet_at,
            None => self
                .next_packet_at
                .max(start + self.rtp.phase_us + self.capture_offset(self.next_frame)),
        }
    }

    fn is_burst_frame(&self, k: u32) -> bool {
        match self.burst {
            Some((every, _)) if every > 0 && k > 0 => {
                self.capture_offset(k) / every != self.capture_offset(k - 1) / every
            }
            _ => false,
        }
    }

    /// Decides frame `k`: key frame or not, layer, size, packets.
    fn build_frame(
        &mut self,
        k: u32,
        start: Micros,
        seed: u64,
        max_payload: usize,
    ) -> (FrameInProgress, bool) {
        let capture = start + self.capture_offset(k);
        let periodic = match (self.keyframe_interval_us, self.last_keyframe_capture) {
            (_, None) => true,
            (Some(interval), Some(last)) if interval > 0 => capture >= last + interval,
            _ => false,
        };
        let requested = self.keyframe_requested;
        let keyframe = periodic || requested;
        self.keyframe_requested = false;
        if keyframe {
            self.last_keyframe_capture = Some(capture);
            self.pattern_pos = 0;
        }
        let pattern = self.temporal_pattern;
        let temporal_layer = if keyframe {
            0
        } else {
            pattern[self.pattern_pos % pattern.len()]
        };
        // Y: the first frames of each upper layer after a key frame reference only the
        // base layer, so a receiver may switch up there.
        let layer_sync = temporal_layer > 0 && self.pattern_pos < pattern.len();
        self.pattern_pos = self.pattern_pos.wrapping_add(1);
        if temporal_layer == 0 {
            self.tl0_pic_idx = self.tl0_pic_idx.wrapping_add(1);
        }
        let h = hash(seed, u64::from(self.rtp.ssrc), u64::from(k) | 1 << 40);
        let average = (self.bitrate_bps * 1000 / 8 / self.millifps).max(1);
        let bytes = if self.is_burst_frame(k) && !keyframe {
            let packets = self.burst.map_or(1, |(_, p)| p.max(1)) as usize;
            packets.saturating_mul(max_payload)
        } else if keyframe {
            // 4-8× an average frame.
            average as usize * (4 + (h % 5) as usize)
        } else {
            // ±20% around the average.
            (average * (80 + h % 41) / 100) as usize
        };
        let bytes = bytes.max(MIN_VIDEO_PAYLOAD);
        let packets = bytes.div_ceil(max_payload).clamp(1, MAX_FRAME_PACKETS);
        // Even sizes, the first `remainder` packets one byte longer; never below the
        // smallest packet nor above `max_payload` (max_payload >= 64 > MIN + 1).
        let even = bytes / packets;
        let base_len = even.clamp(MIN_VIDEO_PAYLOAD, max_payload);
        let remainder = if base_len == even && base_len < max_payload {
            bytes % packets
        } else {
            0
        };
        let frame = FrameInProgress {
            number: k,
            keyframe,
            temporal_layer,
            layer_sync,
            tl0_pic_idx: self.tl0_pic_idx,
            packets: packets as u16,
            sent: 0,
            base_len: base_len as u16,
            remainder: remainder as u16,
        };
        (frame, requested)
    }

    /// Writes packet `index` from its record. `None` if `buf` is too small.
    fn write_packet(
        &self,
        publisher_id: u32,
        index: u64,
        meta: &SentPacket,
        send_us: Micros,
        buf: &mut [u8],
    ) -> Option<usize> {
        let payload_len = usize::from(meta.payload_len);
        let len = RTP_HEADER_LEN + payload_len;
        let out = buf.get_mut(..len)?;
        let start = meta.flags & PACKET_START != 0;
        let end = meta.flags & PACKET_END != 0;
        let keyframe = meta.flags & PACKET_KEYFRAME != 0;
        let header_len = write_rtp_header(
            out,
            end,
            &self.rtp,
            self.rtp.seq_of(index),
            self.frame_timestamp(meta.frame_number),
            None,
        );
        let payload = &mut out[header_len..];
        let descriptor = Descriptor {
            start_of_frame: start,
            picture_id: self.picture_id_base.wrapping_add(meta.frame_number as u16),
            tl0_pic_idx: meta.tl0_pic_idx,
            temporal_layer: meta.temporal_layer(),
            layer_sync: meta.flags & PACKET_LAYER_SYNC != 0,
        };
        vp8::write_descriptor(payload, &descriptor);
        let mut at = DESCRIPTOR_LEN;
        if keyframe && start {
            vp8::write_keyframe_header(payload.get_mut(at..)?, self.width, self.height);
            at += KEYFRAME_HEADER_LEN;
        }
        let probe = Probe {
            kind: self.kind,
            keyframe,
            frame_start: start,
            frame_end: end,
            temporal_layer: meta.temporal_layer(),
            publisher_id,
            encoding: self.encoding,
            probe_seq: index as u32,
            frame_number: meta.frame_number,
            send_us,
        };
        probe::write(&probe, payload.get_mut(at..)?).ok()?;
        Some(len)
    }
}

impl Publisher {
    pub fn new(config: PublisherConfig) -> Publisher {
        let seed = config.seed;
        let max_payload = config
            .max_payload
            .max(MIN_MAX_PAYLOAD)
            .min(u16::MAX as usize);
        let mut audio = config.audio.map(|a| AudioStream {
            rtp: RtpState::new(a.ssrc, a.payload_type, AUDIO_CLOCK_HZ, seed),
            packets_per_s: u64::from(a.packets_per_s.clamp(1, 1000)),
            talking_bytes: (*a.payload_bytes.start()).max(PROBE_LEN)
                ..=(*a.payload_bytes.end()).clamp(PROBE_LEN, max_payload),
            level_extension_id: a
                .audio_level_extension_id
                .filter(|id| (1..=14).contains(id)),
            talking: hash(seed, 0xa0d1, 0).is_multiple_of(2),
            skipped: 0,
            spurt_end: 0,
            spurts: 0,
        });
        let mut video = Vec::new();
        if let Some(camera) = config.camera {
            // libwebrtc paces the whole connection, not each encoding: a low layer's key
            // frame leaves at the camera's total rate (tens of ms), not its own (hundreds).
            let camera_bps: u64 = camera
                .ssrcs
                .iter()
                .zip(&camera.encodings)
                .map(|(_, e)| e.bitrate_bps)
                .sum();
            for (i, (&ssrc, encoding)) in camera.ssrcs.iter().zip(&camera.encodings).enumerate() {
                let millifps = millifps(encoding.fps);
                let packets_per_s =
                    encoding.bitrate_bps / 8 / max_payload as u64 + millifps.div_ceil(1000);
                let (width, height) = vp8::picture_size(MediaKind::Camera, i as u8);
                video.push(VideoStream {
                    rtp: RtpState::new(ssrc, camera.payload_type, VIDEO_CLOCK_HZ, seed),
                    kind: MediaKind::Camera,
                    encoding: i as u8,
                    millifps,
                    bitrate_bps: encoding.bitrate_bps,
                    pacing_bps: (camera_bps * PACING_FACTOR_NUM / PACING_FACTOR_DEN)
                        .max(MIN_PACING_BPS),
                    temporal_pattern: temporal_pattern(camera.temporal_layers),
                    keyframe_interval_us: camera.keyframe_interval_us,
                    width,
                    height,
                    burst: None,
                    picture_id_base: hash(seed, u64::from(ssrc), 3) as u16 & 0x7fff,
                    next_frame: 0,
                    frame: None,
                    next_packet_at: 0,
                    keyframe_requested: false,
                    last_keyframe_capture: None,
                    pattern_pos: 0,
                    tl0_pic_idx: hash(seed, u64::from(ssrc), 4) as u8,
                    history: vec![SentPacket::default(); history_len(packets_per_s)],
                });
            }
        }
        if let Some(screen) = config.screen {
            let millifps = millifps(screen.fps);
            let packets_per_s = screen.bitrate_bps / 8 / max_payload as u64
                + millifps.div_ceil(1000)
                + 2 * u64::from(screen.burst_packets);
            video.push(VideoStream {
                rtp: RtpState::new(screen.ssrc, screen.payload_type, VIDEO_CLOCK_HZ, seed),
                kind: MediaKind::Screen,
                encoding: 0,
                millifps,
                bitrate_bps: screen.bitrate_bps,
                // A slide change goes out within about 200 ms, as a screen share encoder's
                // bitrate (far above its idle rate) allows.
                pacing_bps: (screen.bitrate_bps * PACING_FACTOR_NUM / PACING_FACTOR_DEN)
                    .max(u64::from(screen.burst_packets) * max_payload as u64 * 8 * 5),
                temporal_pattern: temporal_pattern(1),
                keyframe_interval_us: None,
                width: vp8::picture_size(MediaKind::Screen, 0).0,
                height: vp8::picture_size(MediaKind::Screen, 0).1,
                burst: Some((screen.burst_every_us, screen.burst_packets)),
                picture_id_base: hash(seed, u64::from(screen.ssrc), 3) as u16 & 0x7fff,
                next_frame: 0,
                frame: None,
                next_packet_at: 0,
                keyframe_requested: false,
                last_keyframe_capture: None,
                pattern_pos: 0,
                tl0_pic_idx: hash(seed, u64::from(screen.ssrc), 4) as u8,
                history: vec![SentPacket::default(); history_len(packets_per_s)],
            });
        }
        // 255 streams at most: the retransmission queue names them with a u8.
        video.truncate(usize::from(u8::MAX));
        // Out of step (`RtpState::phase_us`): the microphone, the camera (its encodings
        // together: one capture feeds them all) and the screen each start within one
        // interval of their own, at most a second.
        let phase = |salt: u64, interval_us: u64| {
            hash(seed, 0x9a5e, salt) % interval_us.clamp(1, 1_000_000)
        };
        if let Some(audio) = &mut audio {
            audio.rtp.phase_us = phase(0, 1_000_000 / audio.packets_per_s.max(1));
        }
        let camera_interval = video
            .iter()
            .filter(|v| v.kind == MediaKind::Camera)
            .map(|v| 1_000_000_000 / v.millifps)
            .min()
            .unwrap_or(1);
        let camera_phase = phase(1, camera_interval);
        for v in &mut video {
            v.rtp.phase_us = match v.kind {
                MediaKind::Camera => camera_phase,
                _ => phase(2, 1_000_000_000 / v.millifps),
            };
        }
        let mut cname = [0u8; 24];
        let cname_len = {
            let mut cursor = &mut cname[..];
            // "fanout-lg-" and 8 hex digits: 18 bytes, always fits.
            let _ = write!(cursor, "fanout-lg-{:08x}", config.publisher_id);
            24 - cursor.len()
        };
        Publisher {
            publisher_id: config.publisher_id,
            seed,
            max_payload,
            started_at: None,
            stopped: false,
            audio,
            video,
            rtx: VecDeque::new(),
            rtx_due: 0,
            stats: PublisherStats::default(),
            cname,
            cname_len,
        }
    }

    /// Every SSRC this publisher sends on: audio, camera encodings (lowest first), screen.
    pub fn ssrcs(&self) -> impl Iterator<Item = u32> + '_ {
        self.audio
            .iter()
            .map(|a| a.rtp.ssrc)
            .chain(self.video.iter().map(|v| v.rtp.ssrc))
    }

    /// No more new media (the participant unpublishes or is leaving). Retransmissions
    /// still answer NACKs for what was sent; sender reports stop, so once the last
    /// retransmission is out `poll_timeout` is `None`.
    pub fn stop_publishing(&mut self) {
        self.stopped = true;
    }

    /// Bytes this publisher holds: itself and its heap (histories, queue).
    pub fn memory_bytes(&self) -> usize {
        size_of::<Publisher>()
            + self.video.capacity() * size_of::<VideoStream>()
            + self
                .video
                .iter()
                .map(|v| v.history.capacity() * size_of::<SentPacket>())
                .sum::<usize>()
            + self.rtx.capacity() * size_of::<RtxRequest>()
    }

    /// Ask for a key frame on every video stream, as a PLI would.
    pub fn request_keyframes(&mut self) {
        for v in &mut self.video {
            v.keyframe_requested = true;
        }
    }

    pub fn stats(&self) -> PublisherStats {
        self.stats
    }

    /// When `poll_transmit` next has something to send; `None` once stopped.
    pub fn poll_timeout(&self) -> Option<Micros> {
        let rtx = (!self.rtx.is_empty()).then_some(self.rtx_due);
        if self.stopped {
            return rtx;
        }
        let Some(start) = self.started_at else {
            return Some(0);
        };
        let audio = self.audio.as_ref().map(|a| Self::audio_due(a, start));
        let video = self.video.iter().map(|v| v.next_due(start)).min();
        let reports = self
            .rtp_states()
            .filter(|r| r.sent > 0)
            .map(|r| r.next_sr_at)
            .min();
        [rtx, audio, video, reports].into_iter().flatten().min()
    }

    fn rtp_states(&self) -> impl Iterator<Item = &RtpState> {
        self.audio
            .iter()
            .map(|a| &a.rtp)
            .chain(self.video.iter().map(|v| &v.rtp))
    }

    fn audio_due(audio: &AudioStream, start: Micros) -> Micros {
        start
            + audio.rtp.phase_us
            + (audio.rtp.sent + audio.skipped) * 1_000_000 / audio.packets_per_s
    }

    fn start(&mut self, now: Micros) {
        self.started_at = Some(now);
        // Stagger the sender reports of the SSRCs so they do not all go in one instant.
        let streams = self
            .audio
            .iter_mut()
            .map(|a| &mut a.rtp)
            .chain(self.video.iter_mut().map(|v| &mut v.rtp));
        for (i, rtp) in streams.enumerate() {
            rtp.next_sr_at = now + SENDER_REPORT_INTERVAL_US / 2 + 37_000 * i as u64;
        }
        for v in &mut self.video {
            v.next_packet_at = now;
        }
    }

    /// Writes the next due datagram into `buf` (plain RTP or RTCP; the last
    /// [`SRTP_TRAILER_ROOM`] bytes are left for the caller's SRTP trailer). Returns `None`
    /// when nothing is due at `now`. Retransmissions go first, then sender reports, then
    /// media in send-time order.
    pub fn poll_transmit(&mut self, now: Micros, buf: &mut [u8]) -> Option<Transmit> {
        let start = match self.started_at {
            Some(start) => start,
            None => {
                self.start(now);
                now
            }
        };
        let room = buf.len().saturating_sub(SRTP_TRAILER_ROOM);
        let buf = &mut buf[..room];
        while let Some(request) = self.rtx.pop_front() {
            if let Some(len) = self.write_retransmission(now, request, buf) {
                self.stats.retransmissions += 1;
                return Some(Transmit {
                    len,
                    is_rtcp: false,
                });
            }
        }
        if self.stopped {
            return None;
        }
        if let Some(len) = self.poll_sender_report(now, start, buf) {
            return Some(Transmit { len, is_rtcp: true });
        }
        // The stream whose next packet is the most overdue.
        let audio_due = self.audio.as_ref().map(|a| Self::audio_due(a, start));
        let video_due = self
            .video
            .iter()
            .enumerate()
            .map(|(i, v)| (v.next_due(start), i))
            .min();
        match (audio_due, video_due) {
            (Some(a), v) if a <= now && v.is_none_or(|(v, _)| a <= v) => {
                self.send_audio(now, start, buf)
            }
            (_, Some((v, i))) if v <= now => self.send_video(now, start, i, buf),
            _ => None,
        }
        .map(|len| Transmit {
            len,
            is_rtcp: false,
        })
    }

    fn poll_sender_report(&mut self, now: Micros, start: Micros, buf: &mut [u8]) -> Option<usize> {
        let cname = &self.cname[..self.cname_len];
        let streams = self
            .audio
            .iter_mut()
            .map(|a| &mut a.rtp)
            .chain(self.video.iter_mut().map(|v| &mut v.rtp));
        for rtp in streams {
            if rtp.sent == 0 || rtp.next_sr_at > now {
                continue;
            }
            rtp.next_sr_at = now + SENDER_REPORT_INTERVAL_US;
            let elapsed_units = now
                .saturating_sub(start + rtp.phase_us)
                .saturating_mul(rtp.clock_hz)
                / 1_000_000;
            let info = SenderInfo {
                ntp_timestamp: ntp_timestamp(now),
                rtp_timestamp: rtp.ts_base.wrapping_add(elapsed_units as u32),
                packet_count: rtp.sr_packets,
                octet_count: rtp.sr_octets,
            };
            let Ok(sr) = rtcp::write_sender_report(buf, Ssrc(rtp.ssrc), &info, &[]) else {
                continue;
            };
            let Ok(sdes) = rtcp::write_sdes_cname(&mut buf[sr..], Ssrc(rtp.ssrc), cname) else {
                continue;
            };
            return Some(sr + sdes);
        }
        None
    }

    fn send_audio(&mut self, now: Micros, start: Micros, buf: &mut [u8]) -> Option<usize> {
        let publisher_id = self.publisher_id;
        let seed = self.seed;
        let audio = self.audio.as_mut()?;
        let behind = now.saturating_sub(Self::audio_due(audio, start));
        if behind > MAX_LAG_US {
            // Skip the 20 ms frames we are too late for, as a capture that stalled would:
            // the timestamps jump, the sequence numbers stay continuous (no loss).
            let slot =
                now.saturating_sub(start + audio.rtp.phase_us) * audio.packets_per_s / 1_000_000;
            audio.skipped = slot.saturating_sub(audio.rtp.sent);
        }
        let index = audio.rtp.sent;
        let slot = index + audio.skipped;
        let mut marker = false;
        if slot >= audio.spurt_end {
            audio.talking = !audio.talking;
            audio.spurts += 1;
            let h = hash(seed, 0x5b0e7, audio.spurts);
            // Talk 1-5 s, pause 0.5-3 s (in packets).
            let duration_ms = if audio.talking {
                1000 + h % 4000
            } else {
                500 + h % 2500
            };
            audio.spurt_end = slot + (duration_ms * audio.packets_per_s / 1000).max(1);
            // RFC 3551 §4.1: the marker opens a talk spurt.
            marker = audio.talking;
        }
        let h = hash(seed, u64::from(audio.rtp.ssrc), index);
        let (payload_len, level) = if audio.talking {
            (
                pick(h, &audio.talking_bytes),
                0x80 | (20 + (h >> 32) as u8 % 30),
            )
        } else {
            (PROBE_LEN + (h % 8) as usize, SILENCE_LEVEL)
        };
        let extension = audio.level_extension_id.map(|id| (id, level));
        let header_len = RTP_HEADER_LEN
            + if extension.is_some() {
                AUDIO_LEVEL_EXTENSION_LEN
            } else {
                0
            };
        let payload_len = payload_len.min(buf.len().saturating_sub(header_len));
        if payload_len < PROBE_LEN {
            // A buffer too small for any packet: the packet is lost, the stream moves on
            // (staying due forever would spin the caller).
            audio.rtp.sent += 1;
            return None;
        }
        let len = header_len + payload_len;
        let timestamp = audio
            .rtp
            .ts_base
            .wrapping_add((slot * AUDIO_CLOCK_HZ / audio.packets_per_s) as u32);
        write_rtp_header(
            buf,
            marker,
            &audio.rtp,
            audio.rtp.seq_of(index),
            timestamp,
            extension,
        );
        let probe = Probe {
            kind: MediaKind::Audio,
            keyframe: false,
            frame_start: true,
            frame_end: true,
            temporal_layer: 0,
            publisher_id,
            encoding: 0,
            probe_seq: index as u32,
            frame_number: slot as u32,
            send_us: now,
        };
        probe::write(&probe, &mut buf[header_len..len]).ok()?;
        audio.rtp.sent += 1;
        audio.rtp.count_sent(payload_len);
        self.stats.packets += 1;
        self.stats.bytes += payload_len as u64;
        Some(len)
    }

    fn send_video(
        &mut self,
        now: Micros,
        start: Micros,
        i: usize,
        buf: &mut [u8],
    ) -> Option<usize> {
        let (seed, max_payload, publisher_id) = (self.seed, self.max_payload, self.publisher_id);
        let stream = self.video.get_mut(i)?;
        // The stream's own start (see `RtpState::phase_us`).
        let start = start + stream.rtp.phase_us;
        let frame = match stream.frame {
            Some(frame) => frame,
            None => {
                let mut k = stream.next_frame;
                if now > start + stream.capture_offset(k) + MAX_LAG_US {
                    // Far behind (the caller polled late): drop the frames we missed.
                    k = (now.saturating_sub(start) * stream.millifps / 1_000_000_000) as u32;
                }
                let (frame, requested) = stream.build_frame(k, start, seed, max_payload);
                if requested {
                    self.stats.keyframes_requested += 1;
                }
                stream.next_frame = k.wrapping_add(1);
                stream.next_packet_at = stream.next_packet_at.max(start + stream.capture_offset(k));
                frame
            }
        };
        let i_in_frame = frame.sent;
        let mut flags = (frame.temporal_layer & 0x03) << PACKET_TID_SHIFT;
        if i_in_frame == 0 {
            flags |= PACKET_START;
        }
        if i_in_frame + 1 >= frame.packets {
            flags |= PACKET_END;
        }
        if frame.keyframe {
            flags |= PACKET_KEYFRAME;
        }
        if frame.layer_sync {
            flags |= PACKET_LAYER_SYNC;
        }
        let room = buf.len().saturating_sub(RTP_HEADER_LEN);
        let payload_len = frame
            .payload_len(i_in_frame)
            .min(room)
            .max(MIN_VIDEO_PAYLOAD);
        let meta = SentPacket {
            send_lo: now as u32,
            frame_number: frame.number,
            payload_len: payload_len as u16,
            flags,
            tl0_pic_idx: frame.tl0_pic_idx,
        };
        let index = stream.rtp.sent;
        let len = stream.write_packet(publisher_id, index, &meta, now, buf);
        // Sent or not (a buffer too small for the smallest packet), the packet is spent: a
        // caller with such a buffer gets loss, not a stuck stream.
        let mask = stream.history.len() - 1;
        if let Some(slot) = stream.history.get_mut(index as usize & mask) {
            *slot = meta;
        }
        stream.rtp.sent += 1;
        let mut frame = frame;
        frame.sent += 1;
        stream.frame = (frame.sent < frame.packets).then_some(frame);
        stream.next_packet_at =
            now + (payload_len as u64 * 8 * 1_000_000) / stream.pacing_bps.max(8_000);
        let len = len?;
        stream.rtp.count_sent(payload_len);
        self.stats.packets += 1;
        self.stats.bytes += payload_len as u64;
        Some(len)
    }

    fn write_retransmission(
        &mut self,
        now: Micros,
        request: RtxRequest,
        buf: &mut [u8],
    ) -> Option<usize> {
        let stream = self.video.get_mut(usize::from(request.stream))?;
        // Only packets still in the history (the request was checked when queued, but more
        // packets may have been sent since).
        let age = u64::from((stream.rtp.sent as u32).wrapping_sub(request.index));
        if age == 0 || age > stream.history.len() as u64 {
            return None;
        }
        let index = stream.rtp.sent - age;
        let mask = stream.history.len() - 1;
        let meta = *stream.history.get(index as usize & mask)?;
        let send_us = now.saturating_sub(u64::from((now as u32).wrapping_sub(meta.send_lo)));
        let len = stream.write_packet(self.publisher_id, index, &meta, send_us, buf)?;
        stream.rtp.count_sent(usize::from(meta.payload_len));
        Some(len)
    }

    /// Reads a plain RTCP compound from the forwarder: generic NACK queues
    /// retransmissions, PLI and FIR ask for a key frame on the SSRC they name. Anything
    /// else, or malformed input, is ignored.
    pub fn handle_rtcp(&mut self, now: Micros, compound: &[u8]) {
        for packet in iter_compound(compound) {
            let Ok(packet) = packet else { break };
            match packet {
                RtcpPacket::TransportFeedback(fb) if fb.fmt == feedback_fmt::NACK => {
                    let Some(stream) = self.video_index(fb.media_ssrc.0) else {
                        continue;
                    };
                    for seq in fb.lost_sequence_numbers() {
                        self.queue_retransmission(now, stream, seq.0);
                    }
                }
                RtcpPacket::PayloadFeedback(fb) if fb.fmt == feedback_fmt::PLI => {
                    if let Some(i) = self.video_index(fb.media_ssrc.0) {
                        self.video[i].keyframe_requested = true;
                    }
                }
                RtcpPacket::PayloadFeedback(fb) if fb.fmt == feedback_fmt::FIR => {
                    for (ssrc, _seq) in fb.fir_entries() {
                        if let Some(i) = self.video_index(ssrc.0) {
                            self.video[i].keyframe_requested = true;
                        }
                    }
                }
                // Receiver reports, REMB and the rest concern the forwarder's view of us,
                // not what we send.
                _ => {}
            }
        }
    }

    fn video_index(&self, ssrc: u32) -> Option<usize> {
        self.video.iter().position(|v| v.rtp.ssrc == ssrc)
    }

    fn queue_retransmission(&mut self, now: Micros, stream_index: usize, seq: u16) {
        let Some(stream) = self.video.get(stream_index) else {
            return;
        };
        let sent = stream.rtp.sent;
        if sent == 0 {
            return;
        }
        let latest = sent - 1;
        let back = u64::from(stream.rtp.seq_of(latest).wrapping_sub(seq));
        if back >= sent.min(stream.history.len() as u64) {
            return;
        }
        let request = RtxRequest {
            stream: stream_index as u8,
            index: (latest - back) as u32,
        };
        if self.rtx.len() >= RTX_QUEUE_CAPACITY || self.rtx.contains(&request) {
            return;
        }
        if self.rtx.is_empty() {
            self.rtx_due = now;
        }
        self.rtx.push_back(request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_forwarder::codec::vp8::inspect;
    use fanout_forwarder::rtp::{payload_range, RtpHeader};
    use std::collections::{HashMap, HashSet};

    fn camera_only(seed: u64) -> Publisher {
        let mut config = PublisherConfig::new(7, seed);
        config.camera = Some(CameraConfig::simulcast([10, 11, 12]));
        Publisher::new(config)
    }

    /// Runs `publisher` from 0 to `until` µs, polling at every timeout, and returns every
    /// datagram with its send time.
    fn run(publisher: &mut Publisher, until: Micros) -> Vec<(Micros, Vec<u8>, bool)> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1600];
        let mut now = 0;
        while now <= until {
            while let Some(t) = publisher.poll_transmit(now, &mut buf) {
                out.push((now, buf[..t.len].to_vec(), t.is_rtcp));
            }
            let Some(next) = publisher.poll_timeout() else {
                break;
            };
            assert!(next > now, "poll_timeout must move forward after draining");
            now = next;
        }
        out
    }

    #[test]
    fn camera_frames_look_like_vp8_simulcast() {
        let mut p = camera_only(1);
        let sent = run(&mut p, 2_000_000);
        let mut per_ssrc: std::collections::HashMap<u32, Vec<(RtpHeader, Vec<u8>)>> =
            Default::default();
        for (_, bytes, is_rtcp) in &sent {
            if *is_rtcp {
                continue;
            }
            let h = RtpHeader::parse(bytes).unwrap();
            let range = payload_range(bytes, &h).unwrap();
            per_ssrc
                .entry(h.ssrc.0)
                .or_default()
                .push((h, bytes[range].to_vec()));
        }
        assert_eq!(per_ssrc.len(), 3);
        for (ssrc, packets) in &per_ssrc {
            // Sequence numbers are consecutive.
            for w in packets.windows(2) {
                assert_eq!(
                    w[0].0.sequence.0.wrapping_add(1),
                    w[1].0.sequence.0,
                    "ssrc {ssrc}"
                );
            }
            // The first packet is a key frame start the forwarder recognises.
            let first = inspect(&packets[0].1, packets[0].0.marker).unwrap();
            assert!(first.is_keyframe_start());
            let mut tids = Vec::new();
            let mut frames = 0;
            for (h, payload) in packets {
                let info = inspect(payload, h.marker).unwrap();
                let at = info.descriptor_len
                    + if info.is_keyframe_start() {
                        KEYFRAME_HEADER_LEN
                    } else {
                        0
                    };
                let probe = probe::parse(&payload[at..]).unwrap();
                assert_eq!(probe.frame_start, info.start_of_frame);
                assert_eq!(probe.frame_end, h.marker);
                assert_eq!(Some(probe.temporal_layer), info.temporal_layer);
                assert!(payload.len() <= DEFAULT_MAX_PAYLOAD);
                if h.marker {
                    frames += 1;
                    tids.push(probe.temporal_layer);
                }
            }
            // 30 fps for 2 s.
            assert!((58..=62).contains(&frames), "{frames} frames on {ssrc}");
            assert_eq!(&tids[..8], &[0, 2, 1, 2, 0, 2, 1, 2]);
        }
        let bytes_high: usize = per_ssrc[&12].iter().map(|(_, p)| p.len()).sum();
        // 1.5 Mb/s for 2 s, plus one key frame: within reason.
        assert!((300_000..500_000).contains(&bytes_high), "{bytes_high}");
    }

    #[test]
    fn sender_reports_carry_counts_and_cname() {
        let mut config = PublisherConfig::new(3, 9);
        config.audio = Some(AudioConfig::opus(5));
        let mut p = Publisher::new(config);
        let sent = run(&mut p, 3_000_000);
        let reports: Vec<_> = sent.iter().filter(|(_, _, rtcp)| *rtcp).collect();
        assert!((2..=4).contains(&reports.len()), "{}", reports.len());
        let (at, bytes, _) = reports.last().unwrap();
        let position = sent.iter().position(|(_, b, _)| b == bytes).unwrap();
        let media_before = sent[..position].iter().filter(|(_, _, rtcp)| !rtcp).count();
        let mut iter = iter_compound(bytes);
        let Some(Ok(RtcpPacket::SenderReport(sr))) = iter.next() else {
            panic!()
        };
        assert_eq!(sr.sender_ssrc, Ssrc(5));
        assert_eq!(sr.packet_count as usize, media_before);
        assert_eq!(sr.ntp_timestamp, ntp_timestamp(*at));
        assert!(matches!(iter.next(), Some(Ok(RtcpPacket::Sdes(_)))));
        // Audio: 50 packets a second, 48 kHz timestamps, marker on talk spurt starts only.
        let audio: Vec<_> = sent.iter().filter(|(_, _, rtcp)| !rtcp).collect();
        assert!((149..=151).contains(&audio.len()));
        let h0 = RtpHeader::parse(&audio[0].1).unwrap();
        let h1 = RtpHeader::parse(&audio[1].1).unwrap();
        assert_eq!(h1.timestamp.wrapping_sub(h0.timestamp), 960);
        assert!(h0.has_extension);
    }

    #[test]
    fn nack_gets_identical_bytes() {
        let mut p = camera_only(2);
        let sent = run(&mut p, 500_000);
        let (_, original, _) = sent
            .iter()
            .filter(|(_, b, rtcp)| !rtcp && RtpHeader::parse(b).unwrap().ssrc.0 == 12)
            .nth(5)
            .unwrap()
            .clone();
        let seq = RtpHeader::parse(&original).unwrap().sequence;
        let mut nack = [0u8; 64];
        let len = rtcp::write_nack(&mut nack, Ssrc(99), Ssrc(12), &[seq]).unwrap();
        p.handle_rtcp(500_001, &nack[..len]);
        assert_eq!(p.poll_timeout(), Some(500_001));
        let mut buf = [0u8; 1600];
        let t = p.poll_transmit(500_001, &mut buf).unwrap();
        assert_eq!(&buf[..t.len], &original[..]);
        assert_eq!(p.stats().retransmissions, 1);
        // A sequence number never sent (or long gone) is ignored.
        let far = fanout_forwarder::ids::SeqNo(seq.0.wrapping_add(30_000));
        let len = rtcp::write_nack(&mut nack, Ssrc(99), Ssrc(12), &[far]).unwrap();
        p.handle_rtcp(500_002, &nack[..len]);
        assert!(p.rtx.is_empty());
    }

    #[test]
    fn streams_are_out_of_step_and_a_cameras_encodings_in_step() {
        // A packet a second per stream: in step, every stream would send at once.
        let mut starts = Vec::new();
        for seed in 0..20 {
            let mut config = PublisherConfig::new(seed, u64::from(seed));
            config.audio = Some(AudioConfig {
                packets_per_s: 1,
                ..AudioConfig::opus(1)
            });
            let mut camera = CameraConfig::simulcast([10, 11, 12]);
            for (e, fps) in camera.encodings.iter_mut().zip([1.0, 2.0, 2.0]) {
                e.fps = fps;
                e.bitrate_bps = 2_000;
            }
            config.camera = Some(camera);
            let mut p = Publisher::new(config);
            let mut first = HashMap::new();
            for (at, bytes, rtcp) in run(&mut p, 3_000_000) {
                if !rtcp {
                    let ssrc = RtpHeader::parse(&bytes).unwrap().ssrc.0;
                    first.entry(ssrc).or_insert(at);
                }
            }
            let (audio, low, mid, high) = (first[&1], first[&10], first[&11], first[&12]);
            // Within one interval of the start: a second for audio and the 1 fps encoding,
            // the camera's fastest frame interval (500 ms) for its phase.
            assert!(audio < 1_000_000 && mid < 500_000, "{audio} {mid}");
            // One capture feeds every encoding: their first frames leave together (a
            // frame's packets are paced, so within a few ms).
            assert!(low.abs_diff(mid) < 20_000 && high.abs_diff(mid) < 20_000);
            starts.push((audio, mid));
        }
        // Seeds give different phases, and audio and camera differ.
        let audios: HashSet<_> = starts.iter().map(|s| s.0).collect();
        assert!(audios.len() > 15, "{starts:?}");
        let apart = starts
            .iter()
            .filter(|(a, v)| a.abs_diff(*v) > 50_000)
            .count();
        assert!(apart > 10, "{starts:?}");
    }

    #[test]
    fn pli_and_fir_make_the_next_frame_a_keyframe() {
        let mut p = camera_only(3);
        let _ = run(&mut p, 1_000_000);
        let mut fb = [0u8; 64];
        let len = rtcp::write_pli(&mut fb, Ssrc(99), Ssrc(11)).unwrap();
        p.handle_rtcp(1_000_000, &fb[..len]);
        let len = rtcp::write_fir(&mut fb, Ssrc(99), Ssrc(10), 1).unwrap();
        p.handle_rtcp(1_000_000, &fb[..len]);
        let mut buf = [0u8; 1600];
        let mut keyframes = std::collections::HashSet::new();
        let mut now = 1_000_000;
        while now < 1_100_000 {
            while let Some(t) = p.poll_transmit(now, &mut buf) {
                if t.is_rtcp {
                    continue;
                }
                let h = RtpHeader::parse(&buf[..t.len]).unwrap();
                let info = inspect(&buf[h.header_len..t.len], h.marker).unwrap();
                if info.is_keyframe_start() {
                    keyframes.insert(h.ssrc.0);
                }
            }
            now = p.poll_timeout().unwrap();
        }
        assert_eq!(keyframes, [10, 11].into_iter().collect());
        assert_eq!(p.stats().keyframes_requested, 2);
    }

    #[test]
    fn screen_share_bursts() {
        let mut config = PublisherConfig::new(4, 4);
        config.screen = Some(ScreenConfig {
            burst_every_us: 1_000_000,
            ..ScreenConfig::slides(20)
        });
        let mut p = Publisher::new(config);
        let sent = run(&mut p, 2_500_000);
        let media: Vec<_> = sent.iter().filter(|(_, _, rtcp)| !rtcp).collect();
        // 5 fps of one-packet frames, plus a key frame and two 60-packet bursts.
        assert!(media.len() > 120 && media.len() < 200, "{}", media.len());
        let full = media
            .iter()
            .filter(|(_, b, _)| b.len() == RTP_HEADER_LEN + DEFAULT_MAX_PAYLOAD)
            .count();
        assert!(full >= 120, "{full}");
    }

    #[test]
    fn late_polling_skips_time_not_sequence_numbers() {
        let mut config = PublisherConfig::new(3, 9);
        config.audio = Some(AudioConfig::opus(5));
        config.camera = Some(CameraConfig::simulcast([10, 11, 12]));
        let mut p = Publisher::new(config);
        let mut buf = [0u8; 1600];
        let mut last_seq = std::collections::HashMap::new();
        for now in [0, 100_000, 3_000_000, 3_100_000] {
            while let Some(t) = p.poll_transmit(now, &mut buf) {
                if t.is_rtcp {
                    continue;
                }
                let h = RtpHeader::parse(&buf[..t.len]).unwrap();
                if let Some(prev) = last_seq.insert(h.ssrc.0, h.sequence.0) {
                    assert_eq!(h.sequence.0, u16::wrapping_add(prev, 1));
                }
            }
        }
        // Not three seconds of catch-up burst: a skip to the present.
        assert!(p.stats().packets < 300, "{}", p.stats().packets);
    }

    #[test]
    fn garbage_rtcp_is_ignored() {
        let mut p = camera_only(5);
        let _ = run(&mut p, 100_000);
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 0x81) as u8).collect();
            p.handle_rtcp(100_000, &junk);
        }
        p.stop_publishing();
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(p.poll_transmit(200_000, &mut [0u8; 1600]), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_rtcp_never_panics(
            compounds in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120), 1..20),
        ) {
            let mut p = camera_only(6);
            let _ = run(&mut p, 50_000);
            let mut buf = [0u8; 1600];
            for (i, mut c) in compounds.into_iter().enumerate() {
                // Make most of them parse as RTCP feedback about our SSRCs.
                if c.len() >= 12 && i % 2 == 0 {
                    c[0] = 0x80 | (c[0] & 0x1f);
                    c[1] = if i % 4 == 0 { 205 } else { 206 };
                    let words = (c.len() / 4 - 1) as u16;
                    c[2..4].copy_from_slice(&words.to_be_bytes());
                    c[8..12].copy_from_slice(&(10 + (i as u32 % 3)).to_be_bytes());
                    c.truncate(4 * (usize::from(words) + 1));
                }
                p.handle_rtcp(50_000, &c);
                while p.poll_transmit(50_000, &mut buf).is_some() {}
            }
        }
    }

    #[test]
    fn memory_stays_small() {
        let mut config = PublisherConfig::new(1, 1);
        config.audio = Some(AudioConfig::opus(1));
        config.camera = Some(CameraConfig::simulcast([2, 3, 4]));
        let p = Publisher::new(config);
        assert_eq!(size_of::<SentPacket>(), 12);
        let total = p.memory_bytes();
        assert!(total < 8 * 1024, "{total} bytes");
    }
}
