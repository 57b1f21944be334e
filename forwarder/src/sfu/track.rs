//! A track: one source a participant publishes (audio, camera video, screen share).

use std::time::Instant;

use crate::codec::Codec;
use crate::ids::{LegId, ParticipantId, Ssrc, SubscriptionId};
use crate::policy::keyframe::KeyframeRequester;
use crate::policy::layers::BitrateMeter;
use crate::policy::nack::NackGenerator;
use crate::policy::packet_cache::{PacketCache, PacketCacheConfig};
use crate::receive_stats::ReceiveStats;

use super::webrtc::StreamIds;
use super::MeetingIndex;

/// What a track carries; decides defaults (clock rate) and, later, forwarding policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    Audio,
    Video,
    /// Screen share: its own kind, because it wants its own policy (deeper retransmission
    /// cache, never downgraded automatically).
    Screen,
}

impl TrackKind {
    /// RTP clock rate used when none is configured: Opus is 48 kHz (RFC 7587), every video
    /// payload format 90 kHz.
    pub fn default_clock_rate(self) -> u32 {
        match self {
            TrackKind::Audio => 48_000,
            TrackKind::Video | TrackKind::Screen => 90_000,
        }
    }

    /// Retransmission cache per encoding: a shared screen is read, not watched, so a lost
    /// packet of it is worth recovering from further back; audio is not retransmitted
    /// (a late audio packet is useless to a jitter buffer).
    pub(crate) fn cache_config(self) -> PacketCacheConfig {
        match self {
            TrackKind::Audio => PacketCacheConfig::audio(),
            TrackKind::Video => PacketCacheConfig::video(),
            TrackKind::Screen => PacketCacheConfig::screen(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TrackKind::Audio => "audio",
            TrackKind::Video => "video",
            TrackKind::Screen => "screen",
        }
    }
}

/// Static description of a track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackConfig {
    /// Name, unique within the participant.
    pub name: String,
    pub kind: TrackKind,
    /// The SSRC of each encoding the publisher sends, lowest quality first: one for a
    /// plain track, up to [`MAX_ENCODINGS`] for simulcast.
    pub encodings: Vec<Ssrc>,
    /// The publisher's leg that carries it.
    pub leg: LegId,
    /// RTP clock rate; `None` takes the kind's default.
    pub clock_rate: Option<u32>,
    /// The payload format, whose descriptor tells keyframes and layers apart.
    pub codec: Codec,
    /// For audio: the RFC 8285 id of the RFC 6464 audio level header extension
    /// (`urn:ietf:params:rtp-hdrext:ssrc-audio-level`), which feeds dominant speaker
    /// detection.
    pub audio_level_extension: Option<u8>,
    /// For a track a browser publishes: the MID and RIDs its packets carry, which bind the
    /// SSRCs the browser picked to the encodings (the `encodings` SSRCs are then the ones
    /// subscribers see).
    pub stream_ids: Option<StreamIds>,
}

/// Most simulcast encodings of one track (WebRTC browsers send at most three).
pub const MAX_ENCODINGS: usize = 3;

/// One encoding of a track as received: its SSRC, what the forwarder sees of it, and the
/// publisher's last sender report (for the LSR/DLSR of our receiver reports).
#[derive(Debug)]
pub(crate) struct Encoding {
    pub(crate) ssrc: Ssrc,
    pub(crate) receive: ReceiveStats,
    /// Middle 32 bits of the last SR's NTP timestamp, and when it arrived.
    pub(crate) last_sr: Option<(u32, Instant)>,
    /// Recent packets, to answer subscribers' NACKs.
    pub(crate) cache: PacketCache,
    /// Losses on the publisher's leg, to NACK upstream.
    pub(crate) nack: NackGenerator,
    /// Keyframe requests towards the publisher, coalesced and throttled.
    pub(crate) keyframes: KeyframeRequester,
    /// What the encoding costs a subscriber, for layer selection.
    pub(crate) bitrate: BitrateMeter,
}

impl Encoding {
    pub(crate) fn new(ssrc: Ssrc, kind: TrackKind, clock_rate: u32) -> Self {
        Encoding {
            ssrc,
            receive: ReceiveStats::new(clock_rate),
            last_sr: None,
            cache: PacketCache::new(kind.cache_config()),
            nack: NackGenerator::default(),
            keyframes: KeyframeRequester::default(),
            bitrate: BitrateMeter::new(),
        }
    }
}

/// Live state of a track inside the core.
#[derive(Debug)]
pub(crate) struct Track {
    pub(crate) meeting: MeetingIndex,
    pub(crate) participant: ParticipantId,
    pub(crate) name: String,
    pub(crate) kind: TrackKind,
    pub(crate) codec: Codec,
    /// The audio level extension id and this track's slot in its meeting's speaker
    /// detector.
    pub(crate) speaker: Option<(u8, usize)>,
    pub(crate) encodings: Vec<Encoding>,
    pub(crate) leg: LegId,
    pub(crate) clock_rate: u32,
    /// The fan-out list.
    pub(crate) subscribers: Vec<SubscriptionId>,
    pub(crate) stream_ids: Option<StreamIds>,
    /// The publisher's id of the audio-level header extension, kept (renumbered) when
    /// the track is forwarded to a browser.
    pub(crate) audio_level_extension: Option<u8>,
    /// The SSRC subscribers see by default: the first encoding's as configured (a browser
    /// may publish with another, bound later by its MID).
    pub(crate) primary_ssrc: Ssrc,
}

impl Track {
    pub(crate) fn primary_ssrc(&self) -> Ssrc {
        self.primary_ssrc
    }
}
