//! Counters kept by the core. Plain integers: the core is single-threaded, so the hot path
//! pays an increment, never an atomic or a lock. Drivers read them through
//! [`crate::sfu::Forwarder::write_metrics`].

/// Why a packet was not forwarded. Every drop on the network path is counted under one of
/// these, per leg where the leg is known and forwarder-wide otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a well-formed RTP or RTCP packet (bad version, truncated header or trailer).
    Malformed,
    /// From an address no leg knows, and no leg could authenticate it.
    UnknownSource,
    /// The SRTP/SRTCP authentication tag did not verify.
    AuthenticationFailed,
    /// Already received, or older than the replay window (RFC 3711 §3.3.2).
    Replayed,
    /// Authenticated RTP whose SSRC is not a track published on that leg.
    UnknownSsrc,
    /// STUN, DTLS, TURN or ZRTP: not spoken by plain SRTP legs.
    UnsupportedProtocol,
    /// Larger than the forwarder's datagram limit.
    TooLarge,
    /// The subscriber's address is not known yet (it has sent nothing and none was configured).
    NoRemoteAddress,
    /// The bounded fan-out queue was full: the driver did not drain transmits.
    QueueFull,
    /// A late packet from before the point where the subscription switched to its source:
    /// forwarding it would break the subscriber's continuous sequence.
    StaleSource,
    /// The leg's SRTP context refused to protect (too many SSRCs, buffer too small).
    ProtectFailed,
    /// The driver could not hand the datagram to the kernel.
    SendFailed,
    /// A STUN message that is not a connectivity check for a WebRTC leg, or fails its
    /// checks (credentials, MESSAGE-INTEGRITY, FINGERPRINT): never answered.
    StunRejected,
    /// Media for or from a WebRTC leg whose DTLS-SRTP handshake has not completed.
    NotConnected,
}

impl DropReason {
    /// Every reason, in the order of [`DropReason::index`].
    pub const ALL: [DropReason; 14] = [
        DropReason::Malformed,
        DropReason::UnknownSource,
        DropReason::AuthenticationFailed,
        DropReason::Replayed,
        DropReason::UnknownSsrc,
        DropReason::UnsupportedProtocol,
        DropReason::TooLarge,
        DropReason::NoRemoteAddress,
        DropReason::QueueFull,
        DropReason::StaleSource,
        DropReason::ProtectFailed,
        DropReason::SendFailed,
        DropReason::StunRejected,
        DropReason::NotConnected,
    ];

    /// Label value used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownSource => "unknown_source",
            DropReason::AuthenticationFailed => "authentication_failed",
            DropReason::Replayed => "replayed",
            DropReason::UnknownSsrc => "unknown_ssrc",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::TooLarge => "too_large",
            DropReason::NoRemoteAddress => "no_remote_address",
            DropReason::QueueFull => "queue_full",
            DropReason::StaleSource => "stale_source",
            DropReason::ProtectFailed => "protect_failed",
            DropReason::SendFailed => "send_failed",
            DropReason::StunRejected => "stun_rejected",
            DropReason::NotConnected => "not_connected",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Drop counters by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::ALL.len()]);

impl DropCounters {
    pub fn add(&mut self, reason: DropReason) {
        self.0[reason.index()] += 1;
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Non-zero counters with their reasons.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|&r| (r, self.get(r)))
            .filter(|&(_, n)| n > 0)
    }

    pub fn merge(&mut self, other: &DropCounters) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
}

/// Packet and byte counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

impl Traffic {
    pub fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }

    pub fn merge(&mut self, other: &Traffic) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// Counters of one leg (one plain SRTP transport). Byte counts are of SRTP/SRTCP datagrams
/// as they crossed the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LegStats {
    pub rtp_in: Traffic,
    pub rtcp_in: Traffic,
    pub rtp_out: Traffic,
    pub rtcp_out: Traffic,
    pub drops: DropCounters,
    /// What the peer last reported about what it receives from us (RFC 3550 §6.4.1
    /// report blocks about our outbound SSRCs): fraction lost (8-bit fixed point) and
    /// interarrival jitter in seconds.
    pub reported_fraction_lost: u8,
    pub reported_jitter_seconds: f64,
    /// Round-trip time to the peer, from its report blocks' LSR/DLSR (RFC 3550 §6.4.1).
    pub round_trip_seconds: f64,
    /// The peer's receive bandwidth estimate (REMB), 0 if it sent none.
    pub estimated_bitrate_bps: u64,
    /// Sequence numbers the peer NACKed, and packets resent to it.
    pub nacks_received: u64,
    pub retransmitted: u64,
    /// Sequence numbers the forwarder NACKed towards this (publishing) peer.
    pub nacks_sent: u64,
    /// PLI/FIR received from this peer, and PLI sent to it.
    pub keyframe_requests_received: u64,
    pub keyframe_requests_sent: u64,
    /// Keyframe requests for this (publishing) peer's streams that went into a request
    /// already sent or pending instead of a PLI of their own.
    pub keyframe_requests_coalesced: u64,
    /// Of `nacks_sent`: sequence numbers a downstream peer (a subscriber, a child relay)
    /// asked for that the cache did not hold, passed on towards this (publishing) peer.
    pub nacks_forwarded: u64,
    /// WebRTC: connectivity checks answered, and times consent lapsed (RFC 7675).
    pub stun_answered: u64,
    pub consent_lost: u64,
    /// WebRTC: DTLS handshakes completed (keys installed) and failed.
    pub dtls_connected: u64,
    pub dtls_failed: u64,
    /// WebRTC: retransmissions that came on an RTX stream (RFC 4588) and were unwrapped
    /// into the packets they repair.
    pub rtx_received: u64,
    /// Padding-only packets (a sender's bandwidth probes): counted, never forwarded.
    pub padding_received: u64,
    /// WebRTC: transport-wide congestion control feedback packets sent to the peer, and
    /// the packet arrivals they reported (a late packet reported again counts again).
    pub transport_cc_feedback_sent: u64,
    pub transport_cc_packets_reported: u64,
    /// WebRTC: transport-wide sequence numbers not recorded: duplicates, or older than
    /// the arrival window.
    pub transport_cc_packets_ignored: u64,
    /// WebRTC: recorded arrivals never reported: pushed out of the window by a jump
    /// ahead, or with nowhere to send feedback.
    pub transport_cc_packets_unreported: u64,
}

impl LegStats {
    pub fn merge(&mut self, other: &LegStats) {
        self.rtp_in.merge(&other.rtp_in);
        self.rtcp_in.merge(&other.rtcp_in);
        self.rtp_out.merge(&other.rtp_out);
        self.rtcp_out.merge(&other.rtcp_out);
        self.drops.merge(&other.drops);
        self.nacks_received += other.nacks_received;
        self.retransmitted += other.retransmitted;
        self.nacks_sent += other.nacks_sent;
        self.keyframe_requests_received += other.keyframe_requests_received;
        self.keyframe_requests_sent += other.keyframe_requests_sent;
        self.keyframe_requests_coalesced += other.keyframe_requests_coalesced;
        self.nacks_forwarded += other.nacks_forwarded;
        self.transport_cc_feedback_sent += other.transport_cc_feedback_sent;
        self.transport_cc_packets_reported += other.transport_cc_packets_reported;
        self.transport_cc_packets_ignored += other.transport_cc_packets_ignored;
        self.transport_cc_packets_unreported += other.transport_cc_packets_unreported;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_index_matches_all() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
    }

    #[test]
    fn drop_counters_count_and_merge() {
        let mut a = DropCounters::default();
        a.add(DropReason::Replayed);
        a.add(DropReason::Replayed);
        let mut b = DropCounters::default();
        b.add(DropReason::Malformed);
        a.merge(&b);
        assert_eq!(a.get(DropReason::Replayed), 2);
        assert_eq!(a.get(DropReason::Malformed), 1);
        assert_eq!(a.total(), 3);
        assert_eq!(a.iter().count(), 2);
    }
}
