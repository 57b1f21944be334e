//! WebRTC legs inside the core (docs/webrtc.md): a browser's transport differs from a
//! plain SRTP leg in three ways, all handled here.
//!
//! - **Address**: the peer's ICE connectivity checks arrive on the media port and are
//!   answered by the leg's ICE-lite agent ([`crate::ice`]); media goes only to the address
//!   the peer nominated (USE-CANDIDATE), never to one learned from media, and stops when
//!   consent lapses (RFC 7675).
//! - **Keys**: nothing authenticates until the leg's SRTP keys are installed from its
//!   DTLS-SRTP handshake; until then media is neither accepted nor sent.
//! - **SSRCs**: the browser picks its own. A track configured with [`StreamIds`] has its
//!   encodings bound to the SSRCs that first carry its MID (and RID) header extensions
//!   (RFC 9143 §15, RFC 8852), and subscribers keep seeing the SSRCs the track was
//!   configured with.
//!
//! Checks are answered without allocating: a request is parsed in place, its leg found by
//! the ufrag in USERNAME (a map keyed by `String`, looked up by `&str`), and the answer
//! written into a slot of a queue allocated once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use tracing::{debug, info, warn};

use crate::codec::Codec;
use crate::dtls::{DtlsEvent, DtlsServer, Fingerprint};
use crate::ice::{self, IceLite, IceStats, Outcome};
use crate::ids::{LegId, Ssrc, TrackId};
use crate::rtp::{self, RtpHeader};
use crate::srtp::{MasterKey, SrtpContext};
use crate::stun;

use super::transport_cc::ArrivalWindow;
use super::{AddressKind, DropReason, Event, Forwarder, Transmit};

/// The WebRTC side of a leg's configuration.
#[derive(Debug, Clone)]
pub struct WebrtcTransport {
    /// The leg's ICE credentials (assigned by the control plane) and the peer's ufrag.
    pub ice: ice::Credentials,
    /// The fingerprint of the peer's DTLS certificate (RFC 8122 form, `sha-256 AB:..`),
    /// from its SDP: the handshake fails with any other certificate.
    pub remote_fingerprint: String,
    /// RFC 8285 ids the peer negotiated for the header extensions that name streams.
    pub extensions: StreamExtensions,
    /// The payload type the peer negotiated for each codec it receives from the forwarder
    /// (a subscribe connection's offer). Media of another codec keeps its payload type.
    pub payload_types: Vec<(Codec, u8)>,
}

/// Header extension ids (RFC 8285) of the SDES items that name a stream; `None`: not
/// negotiated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamExtensions {
    /// `urn:ietf:params:rtp-hdrext:sdes:mid` (RFC 9143).
    pub mid: Option<u8>,
    /// `urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id` (RFC 8852).
    pub rid: Option<u8>,
    /// `urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id` (RFC 8852 §3.2): which
    /// simulcast encoding a retransmission stream repairs.
    pub repaired_rid: Option<u8>,
    /// `http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01` in what
    /// the peer sends: the forwarder reports the arrival of every packet carrying it
    /// (transport-cc feedback, see `super::transport_cc`).
    pub transport_cc: Option<u8>,
    /// `urn:ietf:params:rtp-hdrext:ssrc-audio-level` (RFC 6464) in what the peer
    /// receives: forwarded audio keeps its level under this id, and every other header
    /// extension of the publisher's is removed (its ids mean nothing to this peer).
    pub audio_level: Option<u8>,
}

/// How a track published over WebRTC is recognised: the MID of its m-section and, for
/// simulcast, the RID of each encoding (in the order of the track's encodings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamIds {
    pub mid: String,
    /// Empty: one encoding, recognised by its MID alone.
    pub rids: Vec<String>,
    /// The browser retransmits on RTX streams of their own (RFC 4588), negotiated for
    /// this track; `None`: retransmissions come on the media SSRC.
    pub rtx: Option<RtxPayloadType>,
}

/// An RTX payload type (`a=rtpmap:97 rtx/90000`) and the one it repairs (`apt=96`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtxPayloadType {
    pub payload_type: u8,
    pub repairs: u8,
}

/// What an SSRC of a browser's carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamRole {
    /// The media of an encoding of a track.
    Media(TrackId, u8),
    /// Retransmissions (RFC 4588) of an encoding of a track.
    Repair(TrackId, u8),
}

/// Live WebRTC state of a leg.
#[derive(Debug)]
pub(crate) struct WebrtcLeg {
    pub(crate) ice: IceLite,
    /// The peer's certificate must hash to this.
    pub(crate) remote_fingerprint: Fingerprint,
    /// The handshake, from the peer's first ClientHello; kept after it completes, to
    /// answer a retransmitted last flight.
    pub(crate) dtls: Option<Box<DtlsServer>>,
    /// Where the handshake's datagrams come from (and go back to), and the local address
    /// they arrive on.
    pub(crate) dtls_path: Option<(SocketAddr, SocketAddr)>,
    /// In `Forwarder::dtls_ready`.
    pub(crate) dtls_ready: bool,
    pub(crate) extensions: StreamExtensions,
    pub(crate) payload_types: Vec<(Codec, u8)>,
    /// Addresses that passed a connectivity check, oldest first: the peer may start DTLS
    /// from one before nominating it.
    pub(crate) checked: Vec<SocketAddr>,
    /// SRTP keys are installed: media may flow.
    pub(crate) keyed: bool,
    /// Arrivals of the peer's transport-wide sequence numbers, to report.
    pub(crate) arrivals: ArrivalWindow,
}

/// At most this many checked addresses per leg (a browser has a few candidates each
/// side; more would let one peer fill the table).
const MAX_CHECKED: usize = 4;

/// Room for one STUN answer: header, XOR-MAPPED-ADDRESS (IPv6), MESSAGE-INTEGRITY,
/// FINGERPRINT, or an error with its reason and one unknown attribute.
const STUN_SLOT_LEN: usize = 160;

/// Answers waiting for `poll_transmit`. A peer sends a few checks per second per
/// candidate pair, and the queue drains on every `poll_transmit`: when it is full the
/// check goes unanswered, and the peer checks again.
pub(crate) const STUN_QUEUE_LEN: usize = 64;

#[derive(Debug)]
pub(crate) struct OutgoingStun {
    leg: LegId,
    source: SocketAddr,
    destination: SocketAddr,
    len: usize,
    data: [u8; STUN_SLOT_LEN],
}

/// The queue of STUN answers, with its slots allocated once.
#[derive(Debug)]
pub(crate) struct StunQueue {
    queued: VecDeque<OutgoingStun>,
    free: Vec<OutgoingStun>,
}

impl StunQueue {
    pub(crate) fn new() -> Self {
        let blank = || OutgoingStun {
            leg: LegId(0),
            source: SocketAddr::from(([0, 0, 0, 0], 0)),
            destination: SocketAddr::from(([0, 0, 0, 0], 0)),
            len: 0,
            data: [0; STUN_SLOT_LEN],
        };
        StunQueue {
            queued: VecDeque::with_capacity(STUN_QUEUE_LEN),
            free: (0..STUN_QUEUE_LEN).map(|_| blank()).collect(),
        }
    }

    pub(crate) fn purge(&mut self, leg: LegId) {
        let mut kept = VecDeque::new();
        std::mem::swap(&mut kept, &mut self.queued);
        for item in kept {
            if item.leg == leg {
                self.free.push(item);
            } else {
                self.queued.push_back(item);
            }
        }
    }
}

impl WebrtcLeg {
    pub(crate) fn new(config: &WebrtcTransport, remote_fingerprint: Fingerprint) -> Self {
        WebrtcLeg {
            ice: IceLite::new(config.ice.clone()),
            remote_fingerprint,
            dtls: None,
            dtls_path: None,
            dtls_ready: false,
            extensions: config.extensions,
            payload_types: config.payload_types.clone(),
            checked: Vec::with_capacity(MAX_CHECKED),
            keyed: false,
            arrivals: ArrivalWindow::new(),
        }
    }

    /// Make a forwarded packet's header extensions this peer's: the audio level (under
    /// the publisher's id `audio_level`) renumbered, everything else removed.
    pub(crate) fn translate_extensions(&self, packet: &mut [u8], audio_level: Option<u8>) {
        let to = self.extensions.audio_level;
        rtp::translate_extensions(packet, |id| to.filter(|_| Some(id) == audio_level));
    }

    /// The payload type the peer expects for `codec`, when it negotiated one.
    pub(crate) fn payload_type(&self, codec: Codec) -> Option<u8> {
        self.payload_types
            .iter()
            .find(|(c, _)| *c == codec)
            .map(|&(_, pt)| pt)
    }
}

/// Placeholder keys for a WebRTC leg until its handshake installs real ones: random, so
/// nothing authenticates and nothing sent under them can be read.
pub(crate) fn unkeyed_context() -> SrtpContext {
    SrtpContext::new(&MasterKey::generate(
        crate::srtp::SrtpProfile::AeadAes128Gcm,
    ))
}

impl Forwarder {
    /// A STUN message on the media port: a connectivity check for a WebRTC leg.
    pub(super) fn handle_stun(
        &mut self,
        now: Instant,
        local: SocketAddr,
        source: SocketAddr,
        known: Option<LegId>,
        contents: &[u8],
    ) {
        let Ok(message) = stun::parse(contents) else {
            return self.drop_at(known, DropReason::Malformed);
        };
        let leg_id = message
            .username
            .and_then(|u| u.split(|&b| b == b':').next())
            .and_then(|ufrag| std::str::from_utf8(ufrag).ok())
            .and_then(|ufrag| self.by_ufrag.get(ufrag).copied());
        let Some(leg_id) = leg_id else {
            // Not a check for any leg: a scan, a stale peer, or an answer to nothing.
            return self.drop_at(known, DropReason::StunRejected);
        };
        let Some(mut slot) = self.stun_queue.free.pop() else {
            return self.drop_at(Some(leg_id), DropReason::QueueFull);
        };
        let leg = &mut self.legs[leg_id.index()];
        let Some(web) = leg.webrtc.as_mut() else {
            self.stun_queue.free.push(slot);
            return self.drop_at(Some(leg_id), DropReason::StunRejected);
        };
        match web.ice.handle(now, &message, source, &mut slot.data) {
            Outcome::Answer { len, nominated } => {
                slot.leg = leg_id;
                slot.source = local;
                slot.destination = source;
                slot.len = len;
                self.stun_queue.queued.push_back(slot);
                leg.stats.stun_answered += 1;
                self.note_checked(leg_id, source);
                if let Some(address) = nominated {
                    self.on_nominated(leg_id, local, address);
                }
            }
            Outcome::Dropped(reason) => {
                self.stun_queue.free.push(slot);
                debug!(leg = %leg.name, ?reason, %source, "connectivity check not answered");
                self.drop_at(Some(leg_id), DropReason::StunRejected);
            }
        }
    }

    /// Remember an address that passed a check, so DTLS from it finds its leg.
    fn note_checked(&mut self, leg_id: LegId, source: SocketAddr) {
        let Some(web) = self.legs[leg_id.index()].webrtc.as_mut() else {
            return;
        };
        if web.checked.contains(&source) {
            return;
        }
        if web.checked.len() == MAX_CHECKED {
            let oldest = web.checked.remove(0);
            if self.checked_sources.get(&oldest) == Some(&leg_id) {
                self.checked_sources.remove(&oldest);
            }
        }
        web.checked.push(source);
        self.checked_sources.insert(source, leg_id);
    }

    /// The peer nominated `address`: media goes there from now on, once keys are in.
    fn on_nominated(&mut self, leg_id: LegId, local: SocketAddr, address: SocketAddr) {
        let leg = &mut self.legs[leg_id.index()];
        leg.local = Some(local);
        let previous = leg.remote_rtp.replace(address);
        if let Some(prev) = previous {
            if prev != address && self.by_remote.get(&prev) == Some(&leg_id) {
                self.by_remote.remove(&prev);
            }
        }
        self.by_remote.insert(address, leg_id);
        self.peers_generation += 1;
        let event = Event::RemoteAddressLearned {
            meeting: self.meetings[leg.meeting.0 as usize].id.clone(),
            participant: leg.participant.clone(),
            leg: leg.name.clone(),
            kind: AddressKind::Rtp,
            address,
            previous,
        };
        self.push_event(event);
    }

    /// A DTLS datagram: the handshake of a WebRTC leg, from an address that passed its
    /// connectivity checks (RFC 8842 §5: DTLS runs over the ICE-selected pair; the check
    /// also stands in for DTLS's HelloVerifyRequest cookie, proof that the source is real).
    pub(super) fn handle_dtls(
        &mut self,
        now: Instant,
        local: SocketAddr,
        source: SocketAddr,
        known: Option<LegId>,
        contents: &[u8],
    ) {
        let leg_id = known.or_else(|| self.checked_sources.get(&source).copied());
        let Some(leg_id) = leg_id else {
            return self.drops.add(DropReason::UnknownSource);
        };
        let Some(web) = self.legs[leg_id.index()].webrtc.as_mut() else {
            return self.drop_at(Some(leg_id), DropReason::UnsupportedProtocol);
        };
        if web.dtls.is_none() {
            let Some(identity) = &self.config.dtls_identity else {
                return self.drop_at(Some(leg_id), DropReason::NotConnected);
            };
            match DtlsServer::new(identity, web.remote_fingerprint.clone(), now) {
                Ok(server) => web.dtls = Some(Box::new(server)),
                Err(e) => {
                    warn!("cannot start a DTLS handshake: {e}");
                    return self.drop_at(Some(leg_id), DropReason::NotConnected);
                }
            }
            self.handshakes.push(leg_id);
        }
        web.dtls_path = Some((local, source));
        if let Some(dtls) = web.dtls.as_mut() {
            dtls.handle_datagram(now, contents);
        }
        self.after_dtls(leg_id);
    }

    /// Act on what the handshake of `leg_id` produced: keys, failure, datagrams to send.
    fn after_dtls(&mut self, leg_id: LegId) {
        let leg = &mut self.legs[leg_id.index()];
        let Some(web) = leg.webrtc.as_mut() else {
            return;
        };
        let Some(dtls) = web.dtls.as_mut() else {
            return;
        };
        let mut keys = None;
        let mut failed = false;
        while let Some(event) = dtls.poll_event() {
            match event {
                DtlsEvent::Connected {
                    profile,
                    receive,
                    send,
                } => {
                    info!(leg = %leg.name, ?profile, "DTLS-SRTP handshake completed");
                    keys = Some((receive, send));
                }
                DtlsEvent::Failed(failure) => {
                    warn!(leg = %leg.name, %failure, "DTLS-SRTP handshake failed");
                    failed = true;
                }
                DtlsEvent::Closed => {
                    // The browser closed its peer connection: nothing more is sent to it.
                    info!(leg = %leg.name, "DTLS association closed by the peer");
                    web.keyed = false;
                }
            }
        }
        if dtls.is_connected() || dtls.is_done() {
            self.handshakes.retain(|&l| l != leg_id);
        }
        if !web.dtls_ready {
            web.dtls_ready = true;
            self.dtls_ready.push_back(leg_id);
        }
        if failed {
            leg.stats.dtls_failed += 1;
        }
        if let Some((receive, send)) = keys {
            leg.stats.dtls_connected += 1;
            self.install_keys(leg_id, &receive, &send);
        }
    }

    /// Run the handshakes' retransmission timers and deadlines.
    pub(super) fn dtls_timers(&mut self, now: Instant) {
        let mut i = 0;
        while let Some(&leg_id) = self.handshakes.get(i) {
            i += 1;
            let due = self.legs[leg_id.index()]
                .webrtc
                .as_mut()
                .and_then(|w| w.dtls.as_mut())
                .filter(|d| d.poll_timeout().is_some_and(|t| t <= now));
            if let Some(dtls) = due {
                dtls.handle_timeout(now);
                let before = self.handshakes.len();
                self.after_dtls(leg_id);
                // `after_dtls` may have taken this leg off the list.
                i -= before - self.handshakes.len();
            }
        }
    }

    /// The next DTLS datagram of some leg.
    pub(super) fn poll_dtls_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(&leg_id) = self.dtls_ready.front() {
            let sent = self.legs.get_mut(leg_id.index()).and_then(|leg| {
                let web = leg.webrtc.as_mut()?;
                let (local, remote) = web.dtls_path?;
                let len = web.dtls.as_mut()?.poll_transmit(buf)?;
                Some(Transmit {
                    source: Some(local),
                    destination: remote,
                    len,
                })
            });
            if sent.is_some() {
                return sent;
            }
            self.dtls_ready.pop_front();
            if let Some(web) = self
                .legs
                .get_mut(leg_id.index())
                .and_then(|l| l.webrtc.as_mut())
            {
                web.dtls_ready = false;
            }
        }
        None
    }

    /// Install the SRTP keys of a WebRTC leg (from its DTLS handshake): media flows from
    /// now on, in both directions.
    pub(crate) fn install_keys(&mut self, leg_id: LegId, receive: &MasterKey, send: &MasterKey) {
        let Some(leg) = self.legs.get_mut(leg_id.index()) else {
            return;
        };
        let Some(web) = leg.webrtc.as_mut() else {
            return;
        };
        web.keyed = true;
        leg.srtp_in = SrtpContext::new(receive);
        leg.srtp_out = SrtpContext::new(send);
    }

    /// Change a WebRTC leg in place as its peer renegotiates: new ICE credentials (a
    /// restart), the header extension ids of a new offer, payload types. Its address,
    /// keys and subscriptions stay. A new certificate fingerprint cannot be taken in
    /// place (it needs a new handshake): re-create the leg for that.
    pub fn update_webrtc(
        &mut self,
        leg_id: LegId,
        transport: &WebrtcTransport,
    ) -> Result<(), super::ConfigureError> {
        self.restart_ice(leg_id, transport.ice.clone())?;
        let web = self
            .legs
            .get_mut(leg_id.index())
            .and_then(|l| l.webrtc.as_mut())
            .ok_or(super::ConfigureError::NotWebrtc)?;
        web.extensions = transport.extensions;
        web.payload_types.clone_from(&transport.payload_types);
        Ok(())
    }

    /// New ICE credentials for a WebRTC leg (an ICE restart, RFC 8445 §9). The leg keeps
    /// its address, keys and subscriptions until the peer nominates with the new ones.
    pub fn restart_ice(
        &mut self,
        leg_id: LegId,
        credentials: ice::Credentials,
    ) -> Result<(), super::ConfigureError> {
        let leg = self
            .legs
            .get_mut(leg_id.index())
            .ok_or(super::ConfigureError::NoSuchLeg)?;
        let web = leg
            .webrtc
            .as_mut()
            .ok_or(super::ConfigureError::NotWebrtc)?;
        if web.ice.credentials() == &credentials {
            return Ok(());
        }
        if web.ice.local_ufrag() != credentials.local_ufrag {
            if let Some(&other) = self.by_ufrag.get(&credentials.local_ufrag) {
                if other != leg_id {
                    return Err(super::ConfigureError::UfragInUse(credentials.local_ufrag));
                }
            }
            self.by_ufrag.remove(web.ice.local_ufrag());
            self.by_ufrag
                .insert(credentials.local_ufrag.clone(), leg_id);
        }
        web.ice.restart(credentials);
        Ok(())
    }

    /// ICE counters of a WebRTC leg.
    pub fn ice_stats(&self, leg_id: LegId) -> Option<IceStats> {
        self.legs
            .get(leg_id.index())?
            .webrtc
            .as_ref()
            .map(|w| w.ice.stats())
    }

    /// Whether a WebRTC leg has its keys (`None`: no such leg, or not WebRTC).
    pub fn is_keyed(&self, leg_id: LegId) -> Option<bool> {
        self.legs
            .get(leg_id.index())?
            .webrtc
            .as_ref()
            .map(|w| w.keyed)
    }

    /// Consent freshness (RFC 7675), run with the housekeeping: a leg whose nominated
    /// address stopped answering for 30 s is torn down: no more media to it, its address
    /// forgotten (the edge guard closes it too). Its keys and subscriptions stay, so an
    /// ICE restart from the same peer resumes without a new handshake; the control plane
    /// hears of it ([`Event::ConsentLost`]) and decides whether the participant is gone.
    pub(super) fn expire_consent(&mut self, now: Instant) {
        let mut lost = Vec::new();
        for (i, leg) in &mut self.legs {
            if let Some(web) = leg.webrtc.as_mut() {
                if let Some(address) = web.ice.handle_timeout(now) {
                    lost.push((LegId(i as u32), address));
                }
            }
        }
        for (leg_id, address) in lost {
            let leg = &mut self.legs[leg_id.index()];
            if leg.remote_rtp == Some(address) {
                leg.remote_rtp = None;
            }
            leg.stats.consent_lost += 1;
            if self.by_remote.get(&address) == Some(&leg_id) {
                self.by_remote.remove(&address);
            }
            self.peers_generation += 1;
            let event = Event::ConsentLost {
                meeting: self.meetings[leg.meeting.0 as usize].id.clone(),
                participant: leg.participant.clone(),
                leg: leg.name.clone(),
                address,
            };
            self.push_event(event);
        }
    }

    /// Forget the WebRTC indexes of a leg being removed.
    pub(super) fn forget_webrtc(&mut self, leg_id: LegId, web: &WebrtcLeg) {
        if self.by_ufrag.get(web.ice.local_ufrag()) == Some(&leg_id) {
            self.by_ufrag.remove(web.ice.local_ufrag());
        }
        for address in &web.checked {
            if self.checked_sources.get(address) == Some(&leg_id) {
                self.checked_sources.remove(address);
            }
        }
        self.stun_queue.purge(leg_id);
        self.handshakes.retain(|&l| l != leg_id);
        self.dtls_ready.retain(|&l| l != leg_id);
        self.transport_cc_ready.retain(|&l| l != leg_id);
    }

    /// The next queued STUN answer.
    pub(super) fn poll_stun_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(item) = self.stun_queue.queued.pop_front() {
            let fits = buf.len() >= item.len;
            if fits {
                buf[..item.len].copy_from_slice(&item.data[..item.len]);
            }
            let transmit = Transmit {
                source: Some(item.source),
                destination: item.destination,
                len: item.len,
            };
            let leg = item.leg;
            self.stun_queue.free.push(item);
            if fits {
                return Some(transmit);
            }
            self.drop_at(Some(leg), DropReason::ProtectFailed);
        }
        None
    }

    /// Authenticated RTP with an SSRC the leg does not know yet: on a WebRTC leg, bind it
    /// to the encoding its MID and RID name (the first packets of every browser stream
    /// carry both), or, for a packet of the track's RTX payload type, bind it as that
    /// encoding's retransmission stream, named by MID and repaired RID (RFC 8852 §3.2).
    pub(super) fn bind_stream(
        &mut self,
        leg_id: LegId,
        packet: &[u8],
        header: &RtpHeader,
    ) -> Option<StreamRole> {
        let leg = &self.legs[leg_id.index()];
        let web = leg.webrtc.as_ref()?;
        let element = |id: u8| {
            rtp::extension_elements(packet, header)
                .find(|&(element, _)| element == id)
                .map(|(_, data)| data)
        };
        let mid = element(web.extensions.mid?)?;
        let rid = web.extensions.rid.and_then(element);
        let repaired_rid = web.extensions.repaired_rid.and_then(element);
        let role = leg.inbound_ssrcs.iter().find_map(|&(_, track_id, e)| {
            let ids = self.tracks[track_id.index()].stream_ids.as_ref()?;
            if ids.mid.as_bytes() != mid {
                return None;
            }
            let repair = ids
                .rtx
                .is_some_and(|rtx| rtx.payload_type == header.payload_type);
            let names = if repair { repaired_rid } else { rid };
            let wanted = match (ids.rids.is_empty(), names) {
                (true, _) => 0,
                (false, Some(name)) => ids.rids.iter().position(|r| r.as_bytes() == name)?,
                (false, None) => return None,
            };
            (usize::from(e) == wanted).then_some(if repair {
                StreamRole::Repair(track_id, e)
            } else {
                StreamRole::Media(track_id, e)
            })
        })?;
        let ssrc = header.ssrc;
        match role {
            StreamRole::Media(track_id, encoding) => {
                let old = self.tracks[track_id.index()].encodings[usize::from(encoding)].ssrc;
                self.rebind_ssrc(leg_id, track_id, encoding, old, ssrc);
            }
            StreamRole::Repair(track_id, encoding) => {
                let leg = &mut self.legs[leg_id.index()];
                // One RTX stream per encoding: a new one (after an ICE restart, a new
                // encoder) replaces the old, so the list stays bounded.
                leg.repair_ssrcs
                    .retain(|&(s, t, e)| s != ssrc && (t, e) != (track_id, encoding));
                leg.repair_ssrcs.push((ssrc, track_id, encoding));
                debug!(leg = %leg.name, %ssrc, encoding, "bound a browser's RTX SSRC to its track");
            }
        }
        Some(role)
    }

    /// A retransmission from a browser's RTX stream becomes the packet it repairs
    /// (RFC 4588 §4), in place, and goes on through the media path. Returns its header
    /// and length, or `None` when it was only padding (a bandwidth probe, counted) or
    /// malformed (dropped and counted).
    pub(super) fn unwrap_repair(
        &mut self,
        leg_id: LegId,
        track_id: TrackId,
        encoding: u8,
        header: &RtpHeader,
        packet: &mut [u8],
    ) -> Option<(RtpHeader, usize)> {
        let track = &self.tracks[track_id.index()];
        let media_ssrc = track.encodings.get(usize::from(encoding))?.ssrc;
        let repairs = track.stream_ids.as_ref()?.rtx?.repairs;
        let stats = &mut self.legs[leg_id.index()].stats;
        match rtp::payload_range(packet, header) {
            Ok(payload) if payload.is_empty() => {
                stats.padding_received += 1;
                return None;
            }
            Ok(_) => {}
            Err(_) => {
                self.drop_at(Some(leg_id), DropReason::Malformed);
                return None;
            }
        }
        let unwrapped = rtp::unwrap_rtx(packet, header, media_ssrc, repairs)
            .ok()
            .and_then(|len| Some((RtpHeader::parse(&packet[..len]).ok()?, len)));
        match unwrapped {
            Some(original) => {
                self.legs[leg_id.index()].stats.rtx_received += 1;
                Some(original)
            }
            None => {
                self.drop_at(Some(leg_id), DropReason::Malformed);
                None
            }
        }
    }

    /// Point an encoding at the SSRC the browser really sends it with.
    fn rebind_ssrc(
        &mut self,
        leg_id: LegId,
        track_id: TrackId,
        encoding: u8,
        old: Ssrc,
        new: Ssrc,
    ) {
        let leg = &mut self.legs[leg_id.index()];
        for entry in &mut leg.inbound_ssrcs {
            if entry.1 == track_id && entry.2 == encoding {
                entry.0 = new;
            }
        }
        leg.sources.retain(|(s, _)| *s != old);
        self.tracks[track_id.index()].encodings[usize::from(encoding)].ssrc = new;
        if let Some(legs) = self.by_published_ssrc.get_mut(&old) {
            legs.retain(|&l| l != leg_id);
            if legs.is_empty() {
                self.by_published_ssrc.remove(&old);
            }
        }
        debug!(
            leg = %self.legs[leg_id.index()].name,
            %old,
            %new,
            encoding,
            "bound a browser's SSRC to its track"
        );
    }
}

#[cfg(test)]
mod tests;
