//! The tracks a participant may publish on the plain SRTP transport, and the SSRCs the
//! join assigns them. Assigning SSRCs at join time lets the forwarder know a leg's tracks
//! before the first packet, with no signalling per track: audio (Opus), a camera with three
//! simulcast encodings (VP8, lowest quality first) and a screen share (VP8).
//!
//! SSRCs are random (RFC 3550 §8 wants them unpredictable) and distinct within the
//! participant; the forwarder keys tracks per leg and rewrites SSRCs per subscription, so
//! two participants drawing the same value do not collide.

use serde::{Deserialize, Serialize};

use crate::domain::{DomainError, Participant};

/// What a track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    Audio,
    Camera,
    Screen,
}

impl TrackKind {
    pub const ALL: [TrackKind; 3] = [TrackKind::Audio, TrackKind::Camera, TrackKind::Screen];

    /// Whether `participant` sends a track of this kind now: an unmuted microphone or
    /// camera, a screen being shared.
    ///
    /// Every join is assigned all three kinds, but in a large meeting few send at once;
    /// the forwarder holds (and subscribes others to) only what is sent, so a meeting of
    /// 1,000 with ten on camera costs about 20,000 subscriptions, not 3 million.
    pub fn is_sent_by(self, participant: &Participant) -> bool {
        match self {
            TrackKind::Audio => !participant.audio_muted,
            TrackKind::Camera => !participant.video_muted,
            TrackKind::Screen => participant.screen_sharing,
        }
    }
}

/// One track and its SSRCs (a camera's: one per simulcast encoding, lowest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackAssignment {
    pub kind: TrackKind,
    pub ssrcs: Vec<u32>,
    /// Encoding name of the payload format (`opus`, `VP8`).
    pub codec: String,
    pub clock_rate: u32,
    /// Audio: the RFC 8285 id of the RFC 6464 audio-level extension to send.
    #[serde(default)]
    pub audio_level_extension: Option<u8>,
    /// A browser's track: the MID of its m-section, and the RID of each simulcast
    /// encoding in the order of `ssrcs` (the browser picks its own SSRCs; the forwarder
    /// binds them by these).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rids: Vec<String>,
    /// A browser's track with RTX negotiated (RFC 4588): its retransmission payload type
    /// and the media payload type that repairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtx: Option<RtxPayloadType>,
}

/// An RTX payload type and the payload type it repairs (`a=fmtp:<rtx> apt=<media>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtxPayloadType {
    pub payload_type: u8,
    pub repairs: u8,
}

/// The RFC 8285 id assigned to the audio-level extension (RFC 6464) on every audio track.
pub const AUDIO_LEVEL_EXTENSION_ID: u8 = 1;

/// Simulcast encodings of a camera track.
pub const CAMERA_ENCODINGS: usize = 3;

/// Fresh assignments for one participant: audio, camera (simulcast), screen.
pub fn assign() -> Result<Vec<TrackAssignment>, DomainError> {
    let mut taken: Vec<u32> = Vec::with_capacity(CAMERA_ENCODINGS + 2);
    let mut draw = |n: usize| -> Result<Vec<u32>, DomainError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let mut bytes = [0u8; 4];
            aws_lc_rs::rand::fill(&mut bytes).map_err(|_| DomainError::Random)?;
            let ssrc = u32::from_be_bytes(bytes);
            // 0 is avoided by some stacks as "unset"; duplicates would merge two tracks.
            if ssrc != 0 && !taken.contains(&ssrc) {
                taken.push(ssrc);
                out.push(ssrc);
            }
        }
        Ok(out)
    };
    Ok(vec![
        TrackAssignment {
            kind: TrackKind::Audio,
            ssrcs: draw(1)?,
            codec: "opus".into(),
            clock_rate: 48_000,
            audio_level_extension: Some(AUDIO_LEVEL_EXTENSION_ID),
            mid: None,
            rids: Vec::new(),
            rtx: None,
        },
        TrackAssignment {
            kind: TrackKind::Camera,
            ssrcs: draw(CAMERA_ENCODINGS)?,
            codec: "VP8".into(),
            clock_rate: 90_000,
            audio_level_extension: None,
            mid: None,
            rids: Vec::new(),
            rtx: None,
        },
        TrackAssignment {
            kind: TrackKind::Screen,
            ssrcs: draw(1)?,
            codec: "VP8".into(),
            clock_rate: 90_000,
            audio_level_extension: None,
            mid: None,
            rids: Vec::new(),
            rtx: None,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ssrc_is_distinct_and_nonzero() {
        for _ in 0..100 {
            let tracks = assign().unwrap();
            let mut all: Vec<u32> = tracks.iter().flat_map(|t| t.ssrcs.clone()).collect();
            assert_eq!(all.len(), CAMERA_ENCODINGS + 2);
            assert!(all.iter().all(|&s| s != 0));
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), CAMERA_ENCODINGS + 2);
        }
        let tracks = assign().unwrap();
        let kinds: Vec<TrackKind> = tracks.iter().map(|t| t.kind).collect();
        assert_eq!(
            kinds,
            [TrackKind::Audio, TrackKind::Camera, TrackKind::Screen]
        );
    }
}
