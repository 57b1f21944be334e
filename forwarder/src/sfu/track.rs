//! A track: one source a participant publishes (audio, camera video, screen share).

use crate::ids::{LegId, ParticipantId, Ssrc, SubscriptionId};
use crate::receive_stats::ReceiveStats;

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
    /// The SSRC the publisher sends it with.
    pub ssrc: Ssrc,
    /// The publisher's leg that carries it.
    pub leg: LegId,
    /// RTP clock rate; `None` takes the kind's default.
    pub clock_rate: Option<u32>,
}

/// Live state of a track inside the core.
#[derive(Debug)]
pub(crate) struct Track {
    pub(crate) meeting: MeetingIndex,
    pub(crate) participant: ParticipantId,
    pub(crate) name: String,
    pub(crate) kind: TrackKind,
    pub(crate) ssrc: Ssrc,
    pub(crate) leg: LegId,
    pub(crate) clock_rate: u32,
    /// The fan-out list.
    pub(crate) subscribers: Vec<SubscriptionId>,
    /// Loss and jitter of the publisher's stream as the forwarder sees it.
    pub(crate) receive: ReceiveStats,
}
