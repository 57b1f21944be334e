//! A leg: one SRTP transport of a participant: plain (RFC 4568 keys, one remote address)
//! or a browser's WebRTC transport (ICE-lite and DTLS-SRTP, see `super::webrtc`).
//!
//! A participant may have several legs; FFmpeg, for one, sends each stream on its own port.
//! The remote address is either configured or learned from the first *authenticated*
//! packet ("comedia"), and re-learned whenever an authenticated packet arrives from
//! another address, so a client that switches networks keeps its call. An unauthenticated
//! packet never moves a leg: that would let anyone redirect a subscriber's media.

use std::net::SocketAddr;
use std::time::Instant;

use crate::ids::{ParticipantId, Ssrc, SubscriptionId, TrackId};
use crate::srtp::{MasterKey, SrtpContext, SrtpError};

use super::relay::RelayState;
use super::stats::LegStats;
use super::webrtc::{StreamRole, WebrtcLeg, WebrtcTransport};
use super::{AddressKind, DropReason, MeetingIndex, Transmit};

/// Static description of a leg.
#[derive(Debug, Clone)]
pub struct LegConfig {
    /// Name, unique within the participant (used in metrics and logs).
    pub name: String,
    /// How the leg is keyed and its address found.
    pub security: LegSecurity,
    /// Where to send RTP (and muxed RTCP). `None`: learn it from the first authenticated
    /// packet the peer sends (plain legs) or from the peer's ICE nomination (WebRTC).
    pub remote: Option<SocketAddr>,
    /// Where to send RTCP when it is not muxed. `None` with a known `remote`: the RTP port
    /// plus one (RFC 3550 §11), unless `rtcp_mux`.
    pub remote_rtcp: Option<SocketAddr>,
    /// RTP and RTCP share one port (RFC 5761).
    pub rtcp_mux: bool,
    /// The forwarder's own address the peer sends RTP to, when it has several (a meeting
    /// with its own port): transmits leave from it, so the peer sees one symmetric flow.
    /// `None`: the driver's default socket until the peer's first packet shows which.
    pub local: Option<SocketAddr>,
    /// The same for non-muxed RTCP.
    pub local_rtcp: Option<SocketAddr>,
}

/// How a leg's SRTP is keyed, and how its address is found.
#[derive(Debug, Clone)]
pub enum LegSecurity {
    /// Keys given up front (SDES style: by the control plane or the configuration file);
    /// the address is learned from the first authenticated packet.
    Sdes {
        /// The key the peer protects its packets with: the forwarder unprotects with it.
        receive_key: MasterKey,
        /// The key the forwarder protects packets towards this peer with.
        send_key: MasterKey,
    },
    /// A browser: ICE-lite checks on the media port, keys from DTLS-SRTP.
    Webrtc(Box<WebrtcTransport>),
}

/// Live state of a leg inside the core.
#[derive(Debug)]
pub(crate) struct Leg {
    pub(crate) meeting: MeetingIndex,
    pub(crate) participant: ParticipantId,
    pub(crate) name: String,
    /// Unprotects what the peer sends.
    pub(crate) srtp_in: SrtpContext,
    /// Protects what the forwarder sends the peer.
    pub(crate) srtp_out: SrtpContext,
    /// Where RTP goes; learned or configured.
    pub(crate) remote_rtp: Option<SocketAddr>,
    /// Where non-muxed RTCP comes from and goes to.
    pub(crate) remote_rtcp: Option<SocketAddr>,
    pub(crate) rtcp_mux: bool,
    /// The local address the peer talks to, so replies leave from the port it expects.
    pub(crate) local: Option<SocketAddr>,
    /// SSRCs the peer publishes on this leg, with their track and encoding index. Few per
    /// leg: a linear scan beats hashing.
    pub(crate) inbound_ssrcs: Vec<(Ssrc, TrackId, u8)>,
    /// A browser's RTX SSRCs (RFC 4588), with the track and encoding each repairs.
    pub(crate) repair_ssrcs: Vec<(Ssrc, TrackId, u8)>,
    /// The address each published SSRC last came from (see `Forwarder::note_source`).
    pub(crate) sources: Vec<(Ssrc, SocketAddr)>,
    /// The local address the peer's non-muxed RTCP arrives on, so ours leaves from it.
    pub(crate) local_rtcp: Option<SocketAddr>,
    /// Our SSRC as the sender of RTCP the forwarder originates towards this peer
    /// (receiver reports, feedback).
    pub(crate) rtcp_ssrc: Ssrc,
    /// SSRCs the peer may send with that are not (or not yet) published tracks, so an
    /// unknown source using them is tried against this leg: a receive-only peer's RTCP
    /// is how the forwarder learns where to send to it.
    pub(crate) learning_ssrcs: Vec<Ssrc>,
    /// Subscriptions this leg carries to the peer.
    pub(crate) subscriptions: Vec<SubscriptionId>,
    /// Time of the last authenticated packet.
    pub(crate) last_received: Option<Instant>,
    /// Set once an inactivity event was emitted; cleared by the next packet.
    pub(crate) inactive: bool,
    pub(crate) stats: LegStats,
    /// Set when the leg is one end of a relay link (see `super::relay`).
    pub(crate) relay: Option<RelayState>,
    /// Set when the leg is a browser's WebRTC transport.
    pub(crate) webrtc: Option<Box<WebrtcLeg>>,
}

impl Leg {
    /// Unprotect what the peer sent, in place; returns the plaintext length.
    pub(crate) fn unprotect(
        &mut self,
        kind: AddressKind,
        packet: &mut [u8],
    ) -> Result<usize, SrtpError> {
        match kind {
            AddressKind::Rtp => self.srtp_in.unprotect_rtp(packet),
            AddressKind::Rtcp => self.srtp_in.unprotect_rtcp(packet),
        }
    }

    /// What an SSRC the peer sends carries: an encoding's media or its retransmissions.
    pub(crate) fn role_of(&self, ssrc: Ssrc) -> Option<StreamRole> {
        if let Some((track, encoding)) = self.track_for(ssrc) {
            return Some(StreamRole::Media(track, encoding));
        }
        self.repair_ssrcs
            .iter()
            .find(|(s, _, _)| *s == ssrc)
            .map(|&(_, t, e)| StreamRole::Repair(t, e))
    }

    /// The track and encoding a published SSRC belongs to.
    pub(crate) fn track_for(&self, ssrc: Ssrc) -> Option<(TrackId, u8)> {
        self.inbound_ssrcs
            .iter()
            .find(|(s, _, _)| *s == ssrc)
            .map(|&(_, t, e)| (t, e))
    }

    /// Protect the RTCP compound packet in `buf[..len]` for this peer and count it; a
    /// packet that cannot be protected is counted as dropped.
    pub(crate) fn protect_rtcp(
        &mut self,
        buf: &mut [u8],
        len: usize,
        destination: SocketAddr,
        source: Option<SocketAddr>,
    ) -> Option<Transmit> {
        match self.srtp_out.protect_rtcp(buf, len) {
            Ok(len) => {
                self.stats.rtcp_out.add(len);
                Some(Transmit {
                    source,
                    destination,
                    len,
                })
            }
            Err(_) => {
                self.stats.drops.add(DropReason::ProtectFailed);
                None
            }
        }
    }

    /// Whether media and RTCP may be sent to the peer: a WebRTC leg needs its keys first.
    pub(crate) fn can_send(&self) -> bool {
        self.webrtc.as_ref().is_none_or(|w| w.keyed)
    }

    /// Where RTCP for this peer goes, and the local address it leaves from.
    pub(crate) fn rtcp_route(&self) -> Option<(SocketAddr, Option<SocketAddr>)> {
        if !self.can_send() {
            return None;
        }
        if self.rtcp_mux {
            return self.remote_rtp.map(|d| (d, self.local));
        }
        let destination = self
            .remote_rtcp
            .or_else(|| self.remote_rtp.and_then(rtcp_port_convention))?;
        Some((destination, self.local_rtcp))
    }
}

/// Default RTCP address for a peer whose RTP address is known and who does not mux:
/// the next port up (RFC 3550 §11).
pub(crate) fn rtcp_port_convention(rtp: SocketAddr) -> Option<SocketAddr> {
    let port = rtp.port().checked_add(1)?;
    Some(SocketAddr::new(rtp.ip(), port))
}
