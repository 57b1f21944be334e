//! What one simulated participant measured: the contract between the sans-IO
//! [`media`](crate::media) participant that fills it, the engine that collects it, and the
//! [`report`](crate::report) that aggregates it.
//!
//! Kept small and fixed-size on purpose: a 50,000-viewer run holds one per participant
//! (the per-packet latency distribution goes to per-thread histograms instead, see
//! [`Delivery`]).

use crate::Micros;

/// One media packet a receiver accepted, handed back so the caller can record the latency
/// into its histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Arrival time minus the probe's send time.
    pub latency_us: Micros,
    /// The packet arrived after the receiver had NACKed it (a repaired loss).
    pub repaired: bool,
    /// What kind of track it belongs to.
    pub kind: MediaKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MediaKind {
    Audio,
    Camera,
    Screen,
}

/// Simulcast encodings told apart in [`ReceiverStats::camera_packets_by_encoding`].
pub const CAMERA_ENCODING_SLOTS: usize = 3;

/// Counters of what one participant received (all streams together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReceiverStats {
    /// Distinct media packets received (first copies, repaired ones included).
    pub packets: u64,
    /// RTP payload bytes of those packets.
    pub bytes: u64,
    /// Video and screen-share packets the streams' sequence numbers say were sent to this
    /// receiver, from the first packet of each stream to the highest received. The loss
    /// counters below are over these: the streams a client repairs with NACK.
    pub expected: u64,
    /// Packets missing when first expected (a gap in the sequence): loss before
    /// retransmission.
    pub lost_before_rtx: u64,
    /// Packets that never arrived (given up on, or still missing at the end): loss after
    /// retransmission.
    pub lost_after_rtx: u64,
    /// Audio packets expected and never received (audio is not retransmitted: a late audio
    /// packet is useless to a jitter buffer, and the forwarder keeps no audio cache).
    pub audio_expected: u64,
    pub audio_lost: u64,
    /// Packets that arrived after a NACK for them.
    pub repaired: u64,
    /// Copies of packets already received.
    pub duplicates: u64,
    /// Datagrams dropped: failed SRTP authentication, replay, malformed RTP or probe.
    pub invalid: u64,
    /// Authenticated RTP that carries no probe at all: media of a participant that is not
    /// a load generator (a browser in a mixed meeting). Counted, not measured.
    #[serde(default)]
    pub foreign: u64,
    /// RTCP NACK packets sent, and the sequence numbers they asked for.
    pub nacks_sent: u64,
    pub nacked_packets: u64,
    /// PLI packets sent.
    pub plis_sent: u64,
    /// Camera packets received per simulcast encoding, lowest first (encodings above the
    /// last slot are counted in it): which layer the forwarder chose for this receiver.
    pub camera_packets_by_encoding: [u64; CAMERA_ENCODING_SLOTS],
    /// Largest RFC 3550 interarrival jitter of any stream, in microseconds.
    pub jitter_max_us: u64,
    /// Video frames the jitter-buffer model rendered, and the freezes among them (a frame
    /// rendered more than max(3 × the mean frame interval, mean + 150 ms) after the
    /// previous one, the WebRTC stats definition), and the time spent frozen.
    pub frames_rendered: u64,
    pub freezes: u64,
    pub frozen_us: Micros,
    /// The jitter buffer's playout delay (target) at the end, largest over streams.
    pub playout_delay_us: Micros,
    /// First and last media arrival; `None` while nothing arrived.
    pub first_media_at: Option<Micros>,
    pub last_media_at: Option<Micros>,
    /// The longest silence between two media packets after the first, and when it began:
    /// the media gap a failure caused.
    pub longest_gap_us: Micros,
    pub longest_gap_from: Micros,
}

/// Counters of what one participant sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PublisherStats {
    /// RTP packets and payload bytes sent (retransmissions not included).
    pub packets: u64,
    pub bytes: u64,
    /// Retransmissions sent in answer to the forwarder's NACKs.
    pub retransmissions: u64,
    /// Keyframes sent in answer to PLI/FIR (the periodic ones not included).
    pub keyframes_requested: u64,
}

impl ReceiverStats {
    /// Fold in what the same participant measured in a later session (it left and
    /// rejoined): counters add up, extremes are kept. The time away is not a media gap:
    /// gaps measure what a connected participant missed.
    pub fn merge(&mut self, later: &ReceiverStats) {
        self.packets += later.packets;
        self.bytes += later.bytes;
        self.expected += later.expected;
        self.lost_before_rtx += later.lost_before_rtx;
        self.lost_after_rtx += later.lost_after_rtx;
        self.audio_expected += later.audio_expected;
        self.audio_lost += later.audio_lost;
        self.repaired += later.repaired;
        self.duplicates += later.duplicates;
        self.invalid += later.invalid;
        self.nacks_sent += later.nacks_sent;
        self.nacked_packets += later.nacked_packets;
        self.plis_sent += later.plis_sent;
        for (total, n) in self
            .camera_packets_by_encoding
            .iter_mut()
            .zip(later.camera_packets_by_encoding)
        {
            *total += n;
        }
        self.jitter_max_us = self.jitter_max_us.max(later.jitter_max_us);
        self.frames_rendered += later.frames_rendered;
        self.freezes += later.freezes;
        self.frozen_us += later.frozen_us;
        self.playout_delay_us = self.playout_delay_us.max(later.playout_delay_us);
        self.first_media_at = match (self.first_media_at, later.first_media_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_media_at = self.last_media_at.max(later.last_media_at);
        if later.longest_gap_us > self.longest_gap_us {
            self.longest_gap_us = later.longest_gap_us;
            self.longest_gap_from = later.longest_gap_from;
        }
    }
}

impl ReceiverStats {
    /// The camera encoding this receiver got the most packets of; `None` without camera
    /// packets.
    pub fn main_camera_encoding(&self) -> Option<usize> {
        let (encoding, &packets) = self
            .camera_packets_by_encoding
            .iter()
            .enumerate()
            .max_by_key(|&(encoding, packets)| (packets, std::cmp::Reverse(encoding)))?;
        (packets > 0).then_some(encoding)
    }
}

impl PublisherStats {
    pub fn merge(&mut self, later: &PublisherStats) {
        self.packets += later.packets;
        self.bytes += later.bytes;
        self.retransmissions += later.retransmissions;
        self.keyframes_requested += later.keyframes_requested;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_sessions_adds_counters_and_keeps_extremes() {
        let first = ReceiverStats {
            packets: 10,
            expected: 12,
            lost_before_rtx: 2,
            jitter_max_us: 300,
            first_media_at: Some(1_000),
            last_media_at: Some(2_000),
            longest_gap_us: 100,
            longest_gap_from: 1_500,
            ..ReceiverStats::default()
        };
        let second = ReceiverStats {
            packets: 5,
            expected: 5,
            jitter_max_us: 200,
            first_media_at: Some(9_000),
            last_media_at: Some(9_500),
            longest_gap_us: 50,
            longest_gap_from: 9_100,
            ..ReceiverStats::default()
        };
        let mut merged = first;
        merged.merge(&second);
        assert_eq!(merged.packets, 15);
        assert_eq!(merged.expected, 17);
        assert_eq!(merged.lost_before_rtx, 2);
        assert_eq!(merged.jitter_max_us, 300);
        assert_eq!(merged.first_media_at, Some(1_000));
        assert_eq!(merged.last_media_at, Some(9_500));
        // The time away between the sessions is not a media gap.
        assert_eq!(
            (merged.longest_gap_us, merged.longest_gap_from),
            (100, 1_500)
        );
    }
}
