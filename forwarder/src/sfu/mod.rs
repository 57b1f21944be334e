//! The sans-IO forwarding core.
//!
//! [`Forwarder`] owns no socket, thread or clock. A driver feeds it datagrams with
//! [`Forwarder::handle_datagram`] and the passage of time with [`Forwarder::handle_timeout`];
//! after **every** input it drains the outputs: [`Forwarder::poll_transmit`] until it
//! returns `None`, [`Forwarder::poll_event`] likewise, then sleeps until
//! [`Forwarder::poll_timeout`] or the next datagram.
//!
//! One received RTP packet is authenticated and decrypted once, copied into a bounded
//! fan-out queue, and turned into one SRTP packet per subscription lazily, one per
//! `poll_transmit` call, straight into the driver's send buffer. The driver thus decides
//! the batch size (a `sendmmsg` vector, an io_uring submission) and the core never
//! allocates per packet.

mod adaptation;
mod feedback;
mod leg;
mod metrics;
mod queue;
mod relay;
mod reports;
mod stats;
mod subscription;
mod tap;
mod track;
mod transport_cc;
mod webrtc;

pub use leg::{LegConfig, LegSecurity};
pub use relay::{audience, RelayDirection, RelayLinkConfig, RelayLinkInfo, RELAY_LEG_NAME};
pub use stats::{DropCounters, DropReason, LegStats, Traffic};
pub use subscription::{Layers, Rewrite, Rewriter, SubscriptionConfig};
pub use tap::TapStats;
pub use track::{TrackConfig, TrackKind, MAX_ENCODINGS};
pub use webrtc::{RtxPayloadType, StreamExtensions, StreamIds, WebrtcTransport};

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use slab::Slab;
use tracing::{trace, warn};

use crate::codec::{self, PictureIdMunger};
use crate::demux::{classify, PacketClass};
use crate::ids::{LegId, MeetingId, ParticipantId, SeqNo, Ssrc, SubscriptionId, TrackId};
use crate::policy::layers::LayerSelector;
use crate::policy::nack::{Received as NackReceived, RetransmitLimiter};
use crate::policy::packet_cache::PacketMeta;
use crate::policy::speaker::{audio_level, SpeakerDetector};
use crate::receive_stats::ReceiveStats;
use crate::rtcp::{self, RtcpPacket};
use crate::rtp::{self, RtpHeader};
use crate::srtp::{SrtpContext, SrtpError};

use feedback::{RetransmissionQueue, RETRANSMISSION_QUEUE_LEN};
use leg::{rtcp_port_convention, Leg};
use queue::FanoutQueue;
use relay::{RelayRetransmission, RELAY_RETRANSMISSION_QUEUE_LEN};
use reports::{OutgoingRtcp, SrRelay, RTCP_QUEUE_LEN, SR_RELAYS};
use subscription::{Subscription, Verdict, RETRANSMIT_MEMORY};
use tap::TapQueue;
use track::{Encoding, Track};
use webrtc::{StreamRole, StunQueue, WebrtcLeg};

/// Largest datagram the forwarder accepts. Drivers receive into buffers of this size and
/// drop anything the kernel truncated.
pub const MAX_DATAGRAM_LEN: usize = 2048;

/// Smallest send buffer a driver may pass to [`Forwarder::poll_transmit`]: the largest
/// plaintext plus the largest SRTP trailer, with room to spare.
pub const MIN_TRANSMIT_BUFFER_LEN: usize = MAX_DATAGRAM_LEN + 64;

/// High bits of the SSRCs the forwarder uses as the sender of the RTCP it originates; the
/// low bits are the leg's index, so each leg's is distinct.
const RTCP_SSRC_BASE: u32 = 0xFA40_0000;

/// Audio tracks per meeting that take part in dominant speaker detection (28 bytes each).
const MAX_SPEAKERS: usize = 256;

/// How many candidate legs an unknown source may be tried against. Bounds the cost an
/// attacker can cause with packets from fresh addresses.
const MAX_LEARNING_CANDIDATES: usize = 4;

/// Tunables of the core.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// Received packets waiting to be fanned out. The driver drains after every input, so
    /// one slot is enough in steady state; more absorb a driver that batches inputs.
    pub fanout_queue: usize,
    /// A leg that sent nothing for this long is reported inactive.
    pub inactivity_timeout: Duration,
    /// Events not yet polled; the oldest are dropped beyond this.
    pub max_queued_events: usize,
    /// The certificate of the DTLS handshakes of WebRTC legs (one per process, shared by
    /// every shard). `None`: WebRTC legs cannot be keyed (their handshakes are refused).
    pub dtls_identity: Option<crate::dtls::DtlsIdentity>,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            fanout_queue: 64,
            inactivity_timeout: Duration::from_secs(5),
            max_queued_events: 1024,
            dtls_identity: None,
        }
    }
}

/// A datagram the driver must send: the first `len` bytes of the buffer given to
/// [`Forwarder::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// The local address to send from (one the driver reported datagrams arriving on), or
    /// `None` for the driver's default socket.
    pub source: Option<SocketAddr>,
    pub destination: SocketAddr,
    pub len: usize,
}

/// Whether an address is a leg's RTP or RTCP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    Rtp,
    Rtcp,
}

/// Something a driver or the control plane may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A leg's remote address was learned from, or moved by, an authenticated packet.
    RemoteAddressLearned {
        meeting: MeetingId,
        participant: ParticipantId,
        leg: String,
        kind: AddressKind,
        address: SocketAddr,
        previous: Option<SocketAddr>,
    },
    /// The dominant speaker of a meeting changed (RFC 6464 audio levels); `None` when
    /// the last one left and nobody speaks.
    DominantSpeaker {
        meeting: MeetingId,
        participant: Option<ParticipantId>,
    },
    /// A leg sent nothing authenticated for the inactivity timeout.
    LegInactive {
        meeting: MeetingId,
        participant: ParticipantId,
        leg: String,
    },
    /// An inactive leg is sending again.
    LegActive {
        meeting: MeetingId,
        participant: ParticipantId,
        leg: String,
    },
    /// A WebRTC leg's nominated address stopped answering consent checks (RFC 7675):
    /// nothing is sent to it any more until the peer nominates an address again.
    ConsentLost {
        meeting: MeetingId,
        participant: ParticipantId,
        leg: String,
        address: SocketAddr,
    },
}

/// Errors of the configuration API (adding and removing meetings, legs, tracks,
/// subscriptions). The network path has no errors: it drops and counts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigureError {
    #[error("meeting `{0}` already exists")]
    MeetingExists(MeetingId),
    #[error("no meeting `{0}`")]
    NoSuchMeeting(MeetingId),
    #[error("participant `{1}` already exists in meeting `{0}`")]
    ParticipantExists(MeetingId, ParticipantId),
    #[error("no participant `{1}` in meeting `{0}`")]
    NoSuchParticipant(MeetingId, ParticipantId),
    #[error("participant `{participant}` already has a leg named `{name}`")]
    LegExists {
        participant: ParticipantId,
        name: String,
    },
    #[error("participant `{participant}` already has a track named `{name}`")]
    TrackExists {
        participant: ParticipantId,
        name: String,
    },
    #[error("a track has 1 to {MAX_ENCODINGS} encodings, not {0}")]
    Encodings(usize),
    #[error("no such leg")]
    NoSuchLeg,
    #[error("no such track")]
    NoSuchTrack,
    #[error("no such subscription")]
    NoSuchSubscription,
    #[error("the leg belongs to another participant")]
    ForeignLeg,
    #[error("the track is in another meeting than the subscriber")]
    CrossMeeting,
    #[error("remote address {0} is already used by another leg")]
    AddressInUse(SocketAddr),
    #[error("SSRC {ssrc} is already published on leg `{leg}`")]
    SsrcPublished { ssrc: Ssrc, leg: String },
    #[error(
        "SSRC {ssrc} is already sent to leg `{leg}` by another subscription: set a distinct \
         SSRC for this subscription"
    )]
    SsrcInUse { ssrc: Ssrc, leg: String },
    #[error("the leg is not a WebRTC leg")]
    NotWebrtc,
    #[error("ICE ufrag `{0}` is already used by another leg")]
    UfragInUse(String),
    #[error("MID and RIDs name a track on a WebRTC leg, with one RID per encoding or none")]
    StreamIds,
    #[error("`{0}` is not a certificate fingerprint (RFC 8122: `sha-256 AB:CD:..`)")]
    Fingerprint(String),
    #[error("`{0}` is not a recording id (1-64 of [A-Za-z0-9._-], not starting with `.`)")]
    InvalidRecordingId(String),
}

/// Index of a meeting in the core's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct MeetingIndex(u32);

#[derive(Debug)]
struct Meeting {
    id: MeetingId,
    participants: HashMap<ParticipantId, Participant>,
    /// Dominant speaker detection over the audio tracks that carry audio levels; each
    /// such track holds a slot, and `speakers_by_slot` names its participant.
    speakers: SpeakerDetector,
    speakers_by_slot: Vec<Option<ParticipantId>>,
    dominant_speaker: Option<ParticipantId>,
    /// Downstream relay link legs: every packet of every track goes to each (after the
    /// subscriptions).
    sinks: Vec<LegId>,
    /// Upstream relay link legs: the meeting is a relay node fed by them.
    feeds: Vec<LegId>,
    /// The recording its media is tapped for (see `tap`).
    recording: Option<String>,
}

#[derive(Debug, Default)]
struct Participant {
    legs: Vec<LegId>,
    tracks: Vec<TrackId>,
    subscriptions: Vec<SubscriptionId>,
}

/// The sans-IO SFU core: meetings, their participants' legs, tracks and subscriptions, and
/// the forwarding of SRTP between them. See the [module docs](self) for the run loop.
#[derive(Debug)]
pub struct Forwarder {
    config: ForwarderConfig,
    meetings: Slab<Meeting>,
    meeting_index: HashMap<MeetingId, MeetingIndex>,
    legs: Slab<Leg>,
    tracks: Slab<Track>,
    subscriptions: Slab<Subscription>,
    /// Remote RTP and RTCP addresses to legs.
    by_remote: HashMap<SocketAddr, LegId>,
    /// Relay link legs by (local, remote) address: never learned, never moved.
    link_paths: HashMap<(SocketAddr, SocketAddr), LegId>,
    /// WebRTC legs by their local ICE ufrag, to find the leg of a connectivity check.
    by_ufrag: HashMap<String, LegId>,
    /// Addresses that passed a WebRTC leg's connectivity check: where its DTLS may come
    /// from before the peer nominates.
    checked_sources: HashMap<SocketAddr, LegId>,
    /// Answers to connectivity checks, waiting for `poll_transmit`.
    stun_queue: StunQueue,
    /// Media of recorded meetings, waiting for `poll_tap`.
    tap: TapQueue,
    /// An instant and the time since the Unix epoch it stands for: the tap's clock.
    unix_clock: Option<(Instant, Duration)>,
    /// When the core was made.
    created: Instant,
    /// WebRTC legs whose DTLS handshake is under way (its timers run).
    handshakes: Vec<LegId>,
    /// WebRTC legs with DTLS datagrams to send, each once.
    dtls_ready: VecDeque<LegId>,
    /// WebRTC legs whose transport-wide congestion control feedback is due, each once
    /// (room for every WebRTC leg is reserved when it is added).
    transport_cc_ready: VecDeque<LegId>,
    /// Scratch space for the packet statuses of one feedback packet.
    transport_cc_statuses: Box<[Option<i16>]>,
    /// Changes whenever `by_remote`, `link_paths` or the set of legs does: what
    /// [`Forwarder::peer_addresses`] says may have changed.
    peers_generation: u64,
    /// Packets NACKed by child relay links, waiting to be sent again.
    relay_retransmissions: VecDeque<RelayRetransmission>,
    /// Published SSRCs to the legs that publish them, for learning unknown sources.
    by_published_ssrc: HashMap<Ssrc, Vec<LegId>>,
    queue: FanoutQueue,
    /// Screen share waits here and goes before everything in `queue`.
    priority_queue: FanoutQueue,
    /// RTCP the forwarder originates or relays, waiting for `poll_transmit`.
    rtcp_queue: VecDeque<OutgoingRtcp>,
    /// Publishers' sender reports being relayed to subscriptions.
    sr_relays: VecDeque<SrRelay>,
    /// The next leg (slab index) of the receiver report round under way.
    next_report_leg: Option<usize>,
    /// Packets NACKed by subscribers, waiting to be sent again.
    retransmissions: RetransmissionQueue,
    /// The latest time given as input.
    now: Instant,
    /// When the feedback timers (NACK retries, deferred keyframe requests) run next.
    next_feedback_tick: Option<Instant>,
    events: VecDeque<Event>,
    /// Drops not attributable to a leg.
    drops: DropCounters,
    events_dropped: u64,
    next_housekeeping: Option<Instant>,
    /// Copy of a packet from an unknown source, restored between candidate legs: a failed
    /// AEAD open leaves the buffer unspecified.
    scratch: Box<[u8; MAX_DATAGRAM_LEN]>,
}

enum Learned {
    Leg(LegId, usize),
    Rejected,
}

impl Forwarder {
    pub fn new(config: ForwarderConfig, now: Instant) -> Self {
        Forwarder {
            queue: FanoutQueue::new(config.fanout_queue, now),
            priority_queue: FanoutQueue::new(config.fanout_queue / 4, now),
            rtcp_queue: VecDeque::with_capacity(RTCP_QUEUE_LEN),
            sr_relays: VecDeque::with_capacity(SR_RELAYS),
            next_report_leg: None,
            retransmissions: VecDeque::with_capacity(RETRANSMISSION_QUEUE_LEN),
            now,
            next_feedback_tick: None,
            config,
            meetings: Slab::new(),
            meeting_index: HashMap::new(),
            legs: Slab::new(),
            tracks: Slab::new(),
            subscriptions: Slab::new(),
            by_remote: HashMap::new(),
            link_paths: HashMap::new(),
            by_ufrag: HashMap::new(),
            checked_sources: HashMap::new(),
            stun_queue: StunQueue::new(),
            tap: TapQueue::default(),
            unix_clock: None,
            created: now,
            handshakes: Vec::new(),
            dtls_ready: VecDeque::new(),
            transport_cc_ready: VecDeque::new(),
            transport_cc_statuses: vec![None; transport_cc::ARRIVAL_WINDOW].into_boxed_slice(),
            peers_generation: 0,
            relay_retransmissions: VecDeque::with_capacity(RELAY_RETRANSMISSION_QUEUE_LEN),
            by_published_ssrc: HashMap::new(),
            events: VecDeque::new(),
            drops: DropCounters::default(),
            events_dropped: 0,
            next_housekeeping: None,
            scratch: Box::new([0; MAX_DATAGRAM_LEN]),
        }
    }

    // ----- configuration -------------------------------------------------------------

    pub fn meeting_exists(&self, id: &MeetingId) -> bool {
        self.meeting_index.contains_key(id)
    }

    pub fn add_meeting(&mut self, id: MeetingId) -> Result<(), ConfigureError> {
        if self.meeting_index.contains_key(&id) {
            return Err(ConfigureError::MeetingExists(id));
        }
        let index = self.meetings.insert(Meeting {
            id: id.clone(),
            participants: HashMap::new(),
            speakers: SpeakerDetector::new(MAX_SPEAKERS),
            speakers_by_slot: vec![None; MAX_SPEAKERS],
            dominant_speaker: None,
            sinks: Vec::new(),
            feeds: Vec::new(),
            recording: None,
        });
        self.meeting_index.insert(id, MeetingIndex(index as u32));
        Ok(())
    }

    /// Remove a meeting with everything in it.
    pub fn remove_meeting(&mut self, id: &MeetingId) -> Result<(), ConfigureError> {
        let index = self.meeting(id)?;
        let participants: Vec<ParticipantId> = self.meetings[index.0 as usize]
            .participants
            .keys()
            .cloned()
            .collect();
        for p in participants {
            self.remove_participant(id, &p)?;
        }
        self.set_recording(id, None)?;
        self.meetings.remove(index.0 as usize);
        self.meeting_index.remove(id);
        Ok(())
    }

    pub fn add_participant(
        &mut self,
        meeting: &MeetingId,
        participant: ParticipantId,
    ) -> Result<(), ConfigureError> {
        let index = self.meeting(meeting)?;
        let m = &mut self.meetings[index.0 as usize];
        if m.participants.contains_key(&participant) {
            return Err(ConfigureError::ParticipantExists(
                meeting.clone(),
                participant,
            ));
        }
        m.participants.insert(participant, Participant::default());
        Ok(())
    }

    /// Remove a participant: its legs, its tracks (and every subscription to them) and its
    /// subscriptions.
    pub fn remove_participant(
        &mut self,
        meeting: &MeetingId,
        participant: &ParticipantId,
    ) -> Result<(), ConfigureError> {
        let p = self.participant(meeting, participant)?;
        let (subs, tracks, legs) = (p.subscriptions.clone(), p.tracks.clone(), p.legs.clone());
        for s in subs {
            self.remove_subscription(s)?;
        }
        for t in tracks {
            self.remove_track(t)?;
        }
        for l in legs {
            self.purge_rtcp(l);
            let leg = self.legs.remove(l.index());
            self.forget_link(l, &leg);
            self.forget_learning_ssrcs(l, &leg.learning_ssrcs);
            if let Some(web) = &leg.webrtc {
                self.forget_webrtc(l, web);
            }
            for addr in [leg.remote_rtp, leg.remote_rtcp].into_iter().flatten() {
                if self.by_remote.get(&addr) == Some(&l) {
                    self.by_remote.remove(&addr);
                }
            }
        }
        // Addresses, links or legs waiting to learn an address may have gone.
        self.peers_generation += 1;
        let index = self.meeting(meeting)?;
        self.meetings[index.0 as usize]
            .participants
            .remove(participant);
        Ok(())
    }

    pub fn add_leg(
        &mut self,
        meeting: &MeetingId,
        participant: &ParticipantId,
        config: LegConfig,
    ) -> Result<LegId, ConfigureError> {
        let index = self.meeting(meeting)?;
        let p = self.participant(meeting, participant)?;
        if p.legs
            .iter()
            .any(|&l| self.legs[l.index()].name == config.name)
        {
            return Err(ConfigureError::LegExists {
                participant: participant.clone(),
                name: config.name,
            });
        }
        let (srtp_in, srtp_out, webrtc) = match &config.security {
            LegSecurity::Sdes {
                receive_key,
                send_key,
            } => (
                SrtpContext::new(receive_key),
                SrtpContext::new(send_key),
                None,
            ),
            LegSecurity::Webrtc(transport) => {
                if self.by_ufrag.contains_key(&transport.ice.local_ufrag) {
                    return Err(ConfigureError::UfragInUse(
                        transport.ice.local_ufrag.clone(),
                    ));
                }
                let fingerprint = transport.remote_fingerprint.parse().map_err(|_| {
                    ConfigureError::Fingerprint(transport.remote_fingerprint.clone())
                })?;
                (
                    webrtc::unkeyed_context(),
                    webrtc::unkeyed_context(),
                    Some(Box::new(WebrtcLeg::new(transport, fingerprint))),
                )
            }
        };
        // A WebRTC leg's address is the one its peer nominates, muxed (RFC 8843 needs
        // rtcp-mux): a configured one would bypass ICE.
        let (remote, rtcp_mux) = match webrtc {
            Some(_) => (None, true),
            None => (config.remote, config.rtcp_mux),
        };
        let remote_rtcp = match (config.remote_rtcp, remote) {
            (_, None) if webrtc.is_some() => None,
            (Some(rtcp), _) => Some(rtcp),
            (None, Some(rtp)) if !rtcp_mux => rtcp_port_convention(rtp),
            _ => None,
        };
        for addr in [remote, remote_rtcp].into_iter().flatten() {
            if self.by_remote.contains_key(&addr) {
                return Err(ConfigureError::AddressInUse(addr));
            }
        }
        let ufrag = webrtc.as_ref().map(|w| w.ice.local_ufrag().to_owned());
        let id = LegId(self.legs.insert(Leg {
            meeting: index,
            participant: participant.clone(),
            name: config.name,
            srtp_in,
            srtp_out,
            remote_rtp: remote,
            remote_rtcp,
            rtcp_mux,
            local: config.local,
            inbound_ssrcs: Vec::new(),
            repair_ssrcs: Vec::new(),
            sources: Vec::new(),
            local_rtcp: config.local_rtcp,
            rtcp_ssrc: Ssrc(RTCP_SSRC_BASE ^ self.legs.vacant_key() as u32),
            learning_ssrcs: Vec::new(),
            subscriptions: Vec::new(),
            last_received: None,
            inactive: false,
            stats: LegStats::default(),
            relay: None,
            webrtc,
        }) as u32);
        for addr in [remote, remote_rtcp].into_iter().flatten() {
            self.by_remote.insert(addr, id);
        }
        if let Some(ufrag) = ufrag {
            self.by_ufrag.insert(ufrag, id);
            // Each WebRTC leg is in the feedback queue at most once: the hot path never
            // grows it.
            let ready = &mut self.transport_cc_ready;
            ready.reserve(self.by_ufrag.len().saturating_sub(ready.len()));
        }
        // Also for a leg without a remote: it waits to learn one (`legs_awaiting_address`).
        self.peers_generation += 1;
        self.participant_mut(meeting, participant)?.legs.push(id);
        self.subscribe_new_leg_to_feeds(id);
        Ok(id)
    }

    pub fn add_track(
        &mut self,
        meeting: &MeetingId,
        participant: &ParticipantId,
        config: TrackConfig,
    ) -> Result<TrackId, ConfigureError> {
        let index = self.meeting(meeting)?;
        let p = self.participant(meeting, participant)?;
        if !p.legs.contains(&config.leg) {
            return Err(ConfigureError::ForeignLeg);
        }
        if p.tracks
            .iter()
            .any(|&t| self.tracks[t.index()].name == config.name)
        {
            return Err(ConfigureError::TrackExists {
                participant: participant.clone(),
                name: config.name,
            });
        }
        if config.encodings.is_empty() || config.encodings.len() > MAX_ENCODINGS {
            return Err(ConfigureError::Encodings(config.encodings.len()));
        }
        let leg = &self.legs[config.leg.index()];
        if let Some(ids) = &config.stream_ids {
            let rids_fit = ids.rids.is_empty() || ids.rids.len() == config.encodings.len();
            if leg.webrtc.is_none() || !rids_fit {
                return Err(ConfigureError::StreamIds);
            }
        }
        for (i, &ssrc) in config.encodings.iter().enumerate() {
            if leg.track_for(ssrc).is_some() || config.encodings[..i].contains(&ssrc) {
                return Err(ConfigureError::SsrcPublished {
                    ssrc,
                    leg: leg.name.clone(),
                });
            }
        }
        let clock_rate = config
            .clock_rate
            .unwrap_or(config.kind.default_clock_rate());
        let encodings = config
            .encodings
            .iter()
            .map(|&ssrc| Encoding::new(ssrc, config.kind, clock_rate))
            .collect();
        let id = TrackId(self.tracks.insert(Track {
            meeting: index,
            participant: participant.clone(),
            name: config.name,
            kind: config.kind,
            codec: config.codec,
            speaker: None,
            encodings,
            leg: config.leg,
            clock_rate,
            subscribers: Vec::new(),
            primary_ssrc: config.encodings[0],
            stream_ids: config.stream_ids,
            audio_level_extension: config.audio_level_extension,
        }) as u32);
        for (i, &ssrc) in config.encodings.iter().enumerate() {
            // At most MAX_ENCODINGS, checked above.
            self.legs[config.leg.index()]
                .inbound_ssrcs
                .push((ssrc, id, i as u8));
            let leg = &self.legs[config.leg.index()];
            if leg.relay.is_some() || leg.webrtc.is_some() {
                // Link legs are found by their path, WebRTC legs by ICE: never learned.
                continue;
            }
            let legs = self.by_published_ssrc.entry(ssrc).or_default();
            // Already there if the leg declared the SSRC for learning.
            if !legs.contains(&config.leg) {
                legs.push(config.leg);
            }
        }
        self.participant_mut(meeting, participant)?.tracks.push(id);
        // New SSRCs to hear from: see `legs_awaiting_address`.
        self.peers_generation += 1;
        self.announce_to_sinks(index);
        if let (TrackKind::Audio, Some(ext)) = (config.kind, config.audio_level_extension) {
            let m = &mut self.meetings[index.0 as usize];
            match m.speakers_by_slot.iter().position(Option::is_none) {
                Some(slot) => {
                    m.speakers_by_slot[slot] = Some(participant.clone());
                    self.tracks[id.index()].speaker = Some((ext, slot));
                }
                None => {
                    warn!(meeting = %meeting, %participant, "more than {MAX_SPEAKERS} audio tracks: this one is left out of speaker detection")
                }
            }
        }
        Ok(id)
    }

    /// Remove a track and every subscription to it.
    pub fn remove_track(&mut self, id: TrackId) -> Result<(), ConfigureError> {
        let track = self
            .tracks
            .get(id.index())
            .ok_or(ConfigureError::NoSuchTrack)?;
        for s in track.subscribers.clone() {
            self.remove_subscription(s)?;
        }
        let track = self.tracks.remove(id.index());
        self.forget_track_audience(track.meeting, id);
        let ssrcs: Vec<Ssrc> = track.encodings.iter().map(|e| e.ssrc).collect();
        self.announce_gone(track.meeting, &ssrcs);
        if let Some((_, slot)) = track.speaker {
            let m = &mut self.meetings[track.meeting.0 as usize];
            m.speakers.remove(slot);
            m.speakers_by_slot[slot] = None;
        }
        let leg = &mut self.legs[track.leg.index()];
        leg.inbound_ssrcs.retain(|&(_, t, _)| t != id);
        leg.repair_ssrcs.retain(|&(_, t, _)| t != id);
        self.peers_generation += 1;
        for encoding in &track.encodings {
            // The leg may still be learned by this SSRC if it was declared for learning.
            if !self.legs[track.leg.index()]
                .learning_ssrcs
                .contains(&encoding.ssrc)
            {
                self.forget_learning_ssrcs(track.leg, &[encoding.ssrc]);
            }
        }
        let meeting = self.meetings[track.meeting.0 as usize].id.clone();
        if let Ok(p) = self.participant_mut(&meeting, &track.participant) {
            p.tracks.retain(|&t| t != id);
        }
        Ok(())
    }

    /// Declare SSRCs a leg's peer may send with although it publishes no track with them
    /// (a participant who may not publish still sends RTCP receiver reports): an unknown
    /// source using one of them is tried against this leg, so the forwarder learns the
    /// address of a receive-only peer from its first authenticated packet. Packets
    /// authenticated this way still count as unknown SSRCs unless a track publishes them.
    pub fn add_learning_ssrcs(&mut self, leg: LegId, ssrcs: &[Ssrc]) -> Result<(), ConfigureError> {
        let l = self
            .legs
            .get_mut(leg.index())
            .ok_or(ConfigureError::NoSuchLeg)?;
        for &ssrc in ssrcs {
            if !l.learning_ssrcs.contains(&ssrc) {
                l.learning_ssrcs.push(ssrc);
                self.peers_generation += 1;
                let legs = self.by_published_ssrc.entry(ssrc).or_default();
                if !legs.contains(&leg) {
                    legs.push(leg);
                }
            }
        }
        Ok(())
    }

    /// Stop trying `leg` for unknown sources using `ssrcs`.
    fn forget_learning_ssrcs(&mut self, leg: LegId, ssrcs: &[Ssrc]) {
        for ssrc in ssrcs {
            if let Some(legs) = self.by_published_ssrc.get_mut(ssrc) {
                legs.retain(|&l| l != leg);
                if legs.is_empty() {
                    self.by_published_ssrc.remove(ssrc);
                }
            }
        }
    }

    /// Subscribe the participant that owns `config.leg` to `config.track`.
    pub fn add_subscription(
        &mut self,
        config: SubscriptionConfig,
    ) -> Result<SubscriptionId, ConfigureError> {
        let leg = self
            .legs
            .get(config.leg.index())
            .ok_or(ConfigureError::NoSuchLeg)?;
        let track = self
            .tracks
            .get(config.track.index())
            .ok_or(ConfigureError::NoSuchTrack)?;
        if leg.meeting != track.meeting {
            return Err(ConfigureError::CrossMeeting);
        }
        let ssrc = config.ssrc.unwrap_or(track.primary_ssrc());
        if leg
            .subscriptions
            .iter()
            .any(|&s| self.subscriptions[s.index()].ssrc == ssrc)
        {
            return Err(ConfigureError::SsrcInUse {
                ssrc,
                leg: leg.name.clone(),
            });
        }
        let meeting = self.meetings[leg.meeting.0 as usize].id.clone();
        let participant = leg.participant.clone();
        let id = SubscriptionId(
            self.subscriptions.insert(Subscription {
                track: config.track,
                leg: config.leg,
                ssrc,
                // A browser negotiated its own payload types for what it receives.
                payload_type: config.payload_type.or_else(|| {
                    leg.webrtc
                        .as_ref()
                        .and_then(|w| w.payload_type(track.codec))
                }),
                rewriter: Rewriter::new(track.clock_rate),
                max_layers: config.max_layers,
                desired_encoding: config
                    .max_layers
                    .encoding
                    .min(track.encodings.len().saturating_sub(1) as u8),
                current_encoding: None,
                spatial_now: config.max_layers.spatial,
                temporal_now: config.max_layers.temporal,
                munger: PictureIdMunger::new(),
                retransmits: RetransmitLimiter::new(RETRANSMIT_MEMORY),
                selector: LayerSelector::new(track.kind == TrackKind::Screen),
                packets_sent: 0,
                octets_sent: 0,
                reports: Default::default(),
                reception: None,
            }) as u32,
        );
        self.tracks[config.track.index()].subscribers.push(id);
        self.legs[config.leg.index()].subscriptions.push(id);
        // A new subscriber can only start at a keyframe: ask for one now rather than wait
        // for the publisher's next periodic one.
        let desired = self.subscriptions[id.index()].desired_encoding;
        self.request_keyframe(config.track, usize::from(desired), self.now);
        self.participant_mut(&meeting, &participant)?
            .subscriptions
            .push(id);
        Ok(id)
    }

    /// Re-point a subscription at another track of the same meeting. The subscriber keeps
    /// one continuous stream: same SSRC, next sequence number, timestamps that advance
    /// with wall-clock time.
    pub fn switch_subscription(
        &mut self,
        id: SubscriptionId,
        track: TrackId,
    ) -> Result<(), ConfigureError> {
        let sub = self
            .subscriptions
            .get(id.index())
            .ok_or(ConfigureError::NoSuchSubscription)?;
        let new_track = self
            .tracks
            .get(track.index())
            .ok_or(ConfigureError::NoSuchTrack)?;
        if self.legs[sub.leg.index()].meeting != new_track.meeting {
            return Err(ConfigureError::CrossMeeting);
        }
        let clock_rate = new_track.clock_rate;
        let encodings = new_track.encodings.len();
        let screen = new_track.kind == TrackKind::Screen;
        let old_track = sub.track;
        if old_track == track {
            return Ok(());
        }
        self.tracks[old_track.index()]
            .subscribers
            .retain(|&s| s != id);
        self.tracks[track.index()].subscribers.push(id);
        let sub = &mut self.subscriptions[id.index()];
        sub.track = track;
        sub.rewriter.reset_source(clock_rate);
        // The new track starts like a new subscription: at a keyframe of the encoding the
        // limits allow, asked for now.
        sub.current_encoding = None;
        sub.desired_encoding = sub
            .max_layers
            .encoding
            .min(encodings.saturating_sub(1) as u8);
        sub.selector = LayerSelector::new(screen);
        // What the subscriber reported was about the old track.
        sub.reception = None;
        let desired = usize::from(sub.desired_encoding);
        self.request_keyframe(track, desired, self.now);
        Ok(())
    }

    /// Change the highest layers a subscription forwards. A change of simulcast encoding
    /// happens at the next keyframe of the new encoding, which is requested now; until
    /// then the subscriber keeps receiving the old one. Temporal and spatial layers follow
    /// at the next frame where a decoder can switch.
    pub fn set_max_layers(
        &mut self,
        id: SubscriptionId,
        layers: Layers,
    ) -> Result<(), ConfigureError> {
        let sub = self
            .subscriptions
            .get_mut(id.index())
            .ok_or(ConfigureError::NoSuchSubscription)?;
        let encodings = self.tracks[sub.track.index()].encodings.len();
        sub.max_layers = layers;
        // Lowering the limit takes effect at once; `adapt` may lower it further.
        sub.desired_encoding = layers.encoding.min(encodings.saturating_sub(1) as u8);
        if sub.current_encoding != Some(sub.desired_encoding) {
            let (track, encoding) = (sub.track, usize::from(sub.desired_encoding));
            self.request_keyframe(track, encoding, self.now);
        }
        self.adapt(id, self.now);
        Ok(())
    }

    pub fn remove_subscription(&mut self, id: SubscriptionId) -> Result<(), ConfigureError> {
        if !self.subscriptions.contains(id.index()) {
            return Err(ConfigureError::NoSuchSubscription);
        }
        let sub = self.subscriptions.remove(id.index());
        self.tracks[sub.track.index()]
            .subscribers
            .retain(|&s| s != id);
        let leg = &mut self.legs[sub.leg.index()];
        leg.subscriptions.retain(|&s| s != id);
        let meeting = self.meetings[leg.meeting.0 as usize].id.clone();
        let participant = leg.participant.clone();
        if let Ok(p) = self.participant_mut(&meeting, &participant) {
            p.subscriptions.retain(|&s| s != id);
        }
        Ok(())
    }

    // ----- look-ups -----------------------------------------------------------------

    /// The leg named `name` of a participant.
    pub fn leg_id(
        &self,
        meeting: &MeetingId,
        participant: &ParticipantId,
        name: &str,
    ) -> Option<LegId> {
        let p = self.participant(meeting, participant).ok()?;
        p.legs
            .iter()
            .copied()
            .find(|l| self.legs[l.index()].name == name)
    }

    /// The track named `name` of a participant.
    pub fn track_id(
        &self,
        meeting: &MeetingId,
        participant: &ParticipantId,
        name: &str,
    ) -> Option<TrackId> {
        let p = self.participant(meeting, participant).ok()?;
        p.tracks
            .iter()
            .copied()
            .find(|t| self.tracks[t.index()].name == name)
    }

    /// A participant's subscriptions, in the order they were added.
    pub fn subscriptions_of(
        &self,
        meeting: &MeetingId,
        participant: &ParticipantId,
    ) -> Vec<SubscriptionId> {
        self.participant(meeting, participant)
            .map(|p| p.subscriptions.clone())
            .unwrap_or_default()
    }

    /// The track a subscription forwards.
    pub fn subscription_track(&self, subscription: SubscriptionId) -> Option<TrackId> {
        self.subscriptions
            .get(subscription.index())
            .map(|s| s.track)
    }

    /// The layer limits of a subscription.
    pub fn max_layers(&self, subscription: SubscriptionId) -> Option<Layers> {
        self.subscriptions
            .get(subscription.index())
            .map(|s| s.max_layers)
    }

    /// The simulcast encoding a subscription is forwarding now (`None` until a keyframe
    /// of the encoding it wants arrived).
    pub fn forwarded_encoding(&self, subscription: SubscriptionId) -> Option<u8> {
        self.subscriptions
            .get(subscription.index())
            .and_then(|s| s.current_encoding)
    }

    pub fn leg_stats(&self, leg: LegId) -> Option<&LegStats> {
        self.legs.get(leg.index()).map(|l| &l.stats)
    }

    /// The leg's remote RTP address, configured or learned.
    pub fn leg_remote(&self, leg: LegId) -> Option<SocketAddr> {
        self.legs.get(leg.index()).and_then(|l| l.remote_rtp)
    }

    /// The forwarder's address a leg sends RTP from (`None`: the driver's default).
    pub fn leg_local(&self, leg: LegId) -> Option<SocketAddr> {
        self.legs.get(leg.index()).and_then(|l| l.local)
    }

    /// Loss and jitter of one encoding of a track as the forwarder receives it.
    pub fn track_receive_stats(&self, track: TrackId, encoding: usize) -> Option<&ReceiveStats> {
        self.tracks
            .get(track.index())
            .and_then(|t| t.encodings.get(encoding))
            .map(|e| &e.receive)
    }

    /// Drops that could not be attributed to a leg (unknown sources, malformed datagrams).
    pub fn unattributed_drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Drops of every kind, forwarder-wide.
    pub fn total_drops(&self) -> DropCounters {
        let mut all = self.drops;
        for (_, leg) in &self.legs {
            all.merge(&leg.stats.drops);
        }
        all
    }

    pub fn leg_count(&self) -> usize {
        self.legs.len()
    }

    /// Every remote address the core exchanges packets with: the legs' RTP and RTCP
    /// addresses (configured, learned or moved, and each SSRC's source) and the far ends
    /// of relay links. What an edge allowlist (the XDP guard) lets in.
    pub fn peer_addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.by_remote
            .keys()
            .copied()
            .chain(self.link_paths.keys().map(|&(_, remote)| remote))
    }

    /// Changes whenever [`Forwarder::peer_addresses`] or
    /// [`Forwarder::legs_awaiting_address`] may have: a driver compares it to skip
    /// recomputing either.
    pub fn peers_generation(&self) -> u64 {
        self.peers_generation
    }

    /// Legs that still wait to learn a remote address from a first authenticated packet:
    /// no RTP address yet, (without rtcp-mux) no RTCP address yet, or an SSRC they publish
    /// that has not been heard from (a simulcast publisher may send each encoding from a
    /// socket of its own, and each source is learned from its first packet).
    pub fn legs_awaiting_address(&self) -> usize {
        self.legs
            .iter()
            .filter(|(_, leg)| {
                let unheard = leg
                    .inbound_ssrcs
                    .iter()
                    .map(|&(ssrc, _, _)| ssrc)
                    .chain(leg.learning_ssrcs.iter().copied())
                    .any(|ssrc| !leg.sources.iter().any(|&(s, _)| s == ssrc));
                leg.relay.is_none()
                    && (leg.remote_rtp.is_none()
                        || !leg.rtcp_mux && leg.remote_rtcp.is_none()
                        || unheard)
            })
            .count()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// The driver could not send a datagram the core produced: count it against the leg
    /// it was meant for.
    pub fn note_send_failure(&mut self, destination: SocketAddr) {
        let leg = self.by_remote.get(&destination).copied();
        self.drop_at(leg, DropReason::SendFailed);
    }

    fn meeting(&self, id: &MeetingId) -> Result<MeetingIndex, ConfigureError> {
        self.meeting_index
            .get(id)
            .copied()
            .ok_or_else(|| ConfigureError::NoSuchMeeting(id.clone()))
    }

    fn participant(
        &self,
        meeting: &MeetingId,
        participant: &ParticipantId,
    ) -> Result<&Participant, ConfigureError> {
        let index = self.meeting(meeting)?;
        self.meetings[index.0 as usize]
            .participants
            .get(participant)
            .ok_or_else(|| ConfigureError::NoSuchParticipant(meeting.clone(), participant.clone()))
    }

    fn participant_mut(
        &mut self,
        meeting: &MeetingId,
        participant: &ParticipantId,
    ) -> Result<&mut Participant, ConfigureError> {
        let index = self.meeting(meeting)?;
        self.meetings[index.0 as usize]
            .participants
            .get_mut(participant)
            .ok_or_else(|| ConfigureError::NoSuchParticipant(meeting.clone(), participant.clone()))
    }

    // ----- the network path ---------------------------------------------------------

    /// One datagram arrived on the local address `local` from `source`. `contents` is
    /// decrypted in place. Drain [`Forwarder::poll_transmit`] afterwards.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        source: SocketAddr,
        contents: &mut [u8],
    ) {
        self.now = now;
        if self.next_housekeeping.is_none() {
            self.next_housekeeping = Some(now + HOUSEKEEPING_INTERVAL);
            self.next_feedback_tick = Some(now + FEEDBACK_INTERVAL);
        }
        let known = self.leg_for(local, source);
        if contents.len() > MAX_DATAGRAM_LEN {
            return self.drop_at(known, DropReason::TooLarge);
        }
        match classify(contents) {
            PacketClass::Rtp => self.handle_rtp(now, local, source, known, contents),
            PacketClass::Rtcp => self.handle_rtcp(now, local, source, known, contents),
            PacketClass::Stun => self.handle_stun(now, local, source, known, contents),
            PacketClass::Dtls => self.handle_dtls(now, local, source, known, contents),
            PacketClass::TurnChannel | PacketClass::Zrtp => {
                self.drop_at(known, DropReason::UnsupportedProtocol)
            }
            PacketClass::Unknown => self.drop_at(known, DropReason::Malformed),
        }
    }

    /// The leg a datagram from `source` to `local` belongs to: a relay link's by its
    /// path, any other by its remote address.
    fn leg_for(&self, local: SocketAddr, source: SocketAddr) -> Option<LegId> {
        if !self.link_paths.is_empty() {
            if let Some(&leg) = self.link_paths.get(&(local, source)) {
                return Some(leg);
            }
        }
        self.by_remote.get(&source).copied()
    }

    fn handle_rtp(
        &mut self,
        now: Instant,
        local: SocketAddr,
        source: SocketAddr,
        known: Option<LegId>,
        contents: &mut [u8],
    ) {
        let Ok(header) = RtpHeader::parse(contents) else {
            return self.drop_at(known, DropReason::Malformed);
        };
        let Some((leg_id, plain_len)) = self.authenticate(
            now,
            local,
            source,
            known,
            header.ssrc,
            contents,
            AddressKind::Rtp,
        ) else {
            return;
        };
        // Before anything can reject it: the browser's estimator needs every packet that
        // arrived, and an RTX packet is unwrapped in place below.
        self.note_transport_sequence(leg_id, &contents[..plain_len], &header, now);
        let known = self.legs[leg_id.index()].role_of(header.ssrc);
        let (track_id, encoding, header, plain_len) = match known
            .or_else(|| self.bind_stream(leg_id, &contents[..plain_len], &header))
        {
            Some(StreamRole::Media(track_id, encoding)) => (track_id, encoding, header, plain_len),
            Some(StreamRole::Repair(track_id, encoding)) => {
                let Some((original, len)) = self.unwrap_repair(
                    leg_id,
                    track_id,
                    encoding,
                    &header,
                    &mut contents[..plain_len],
                ) else {
                    return;
                };
                (track_id, encoding, original, len)
            }
            None => return self.drop_at(Some(leg_id), DropReason::UnknownSsrc),
        };
        let track = &mut self.tracks[track_id.index()];
        let Ok(payload) = rtp::payload_range(&contents[..plain_len], &header) else {
            return self.drop_at(Some(leg_id), DropReason::Malformed);
        };
        if payload.is_empty() {
            self.legs[leg_id.index()].stats.padding_received += 1;
            return self.on_padding_only(track_id, encoding, &header, now);
        }
        let Ok(info) = codec::inspect(track.codec, &contents[payload.clone()], header.marker)
        else {
            return self.drop_at(Some(leg_id), DropReason::Malformed);
        };
        if let Some((ext, slot)) = track.speaker {
            if let Some((_, level)) = audio_level(&contents[..plain_len], &header, ext) {
                self.meetings[track.meeting.0 as usize]
                    .speakers
                    .on_audio_level(slot, level, now);
            }
        }
        let Some(e) = track.encodings.get_mut(usize::from(encoding)) else {
            return;
        };
        e.receive.on_packet(header.sequence, header.timestamp, now);
        e.bitrate.add(plain_len, now);
        e.cache.insert(
            header.sequence,
            &contents[..plain_len],
            now,
            PacketMeta {
                keyframe: info.keyframe,
                temporal: info.temporal_layer,
                spatial: info.spatial_layer,
            },
        );
        e.keyframes.on_frame(header.timestamp, track.clock_rate);
        if info.is_keyframe_start() {
            e.keyframes.on_keyframe(now);
        }
        self.tap_packet(track_id, encoding, &contents[..plain_len], now);
        let track = &mut self.tracks[track_id.index()];
        let Some(e) = track.encodings.get_mut(usize::from(encoding)) else {
            return;
        };
        let mut gap = false;
        let mut rtt_sample = None;
        match e.nack.on_packet(header.sequence, now) {
            NackReceived::New { missing } => gap = missing > 0,
            NackReceived::Recovered { since_request } => rtt_sample = since_request,
            _ => {}
        }
        let screen = track.kind == TrackKind::Screen;
        let has_subscribers = !track.subscribers.is_empty()
            || !self.meetings[track.meeting.0 as usize].sinks.is_empty();
        if let Some(sample) = rtt_sample {
            // A NACK answered: the publisher leg's round trip, smoothed as TCP does
            // (RFC 6298 §2, alpha 1/8), paces the next NACK retries.
            let stats = &mut self.legs[leg_id.index()].stats;
            stats.round_trip_seconds = if stats.round_trip_seconds > 0.0 {
                0.875 * stats.round_trip_seconds + 0.125 * sample.as_secs_f64()
            } else {
                sample.as_secs_f64()
            };
        }
        if gap {
            self.send_upstream_nacks(track_id, usize::from(encoding), now);
        }
        if !has_subscribers {
            return;
        }
        let queue = if screen {
            &mut self.priority_queue
        } else {
            &mut self.queue
        };
        let Some(slot) = queue.tail() else {
            return self.drop_at(Some(leg_id), DropReason::QueueFull);
        };
        slot.track = track_id;
        slot.encoding = encoding;
        slot.info = info;
        slot.ssrc = header.ssrc;
        slot.sequence = header.sequence;
        slot.timestamp = header.timestamp;
        slot.arrival = now;
        slot.len = plain_len;
        slot.header_len = header.header_len.min(plain_len);
        slot.payload = payload;
        slot.next = 0;
        slot.data[..plain_len].copy_from_slice(&contents[..plain_len]);
        queue.commit();
    }

    fn handle_rtcp(
        &mut self,
        now: Instant,
        local: SocketAddr,
        source: SocketAddr,
        known: Option<LegId>,
        contents: &mut [u8],
    ) {
        let Some(sender) = contents.get(4..8) else {
            return self.drop_at(known, DropReason::Malformed);
        };
        let sender = Ssrc(u32::from_be_bytes([
            sender[0], sender[1], sender[2], sender[3],
        ]));
        let Some((leg_id, plain_len)) = self.authenticate(
            now,
            local,
            source,
            known,
            sender,
            contents,
            AddressKind::Rtcp,
        ) else {
            return;
        };
        let plain = &contents[..plain_len];
        if rtcp::validate(plain).is_err() {
            return self.drop_at(Some(leg_id), DropReason::Malformed);
        }
        for packet in rtcp::iter_compound(plain).flatten() {
            let blocks = match &packet {
                RtcpPacket::SenderReport(sr) => {
                    if let Some((track, encoding)) =
                        self.legs[leg_id.index()].track_for(sr.sender_ssrc)
                    {
                        self.on_sender_report(track, usize::from(encoding), sr, now);
                    }
                    sr.report_blocks()
                }
                RtcpPacket::ReceiverReport(rr) => rr.report_blocks(),
                other => {
                    if !self.on_relay_rtcp(leg_id, other, now) {
                        self.on_feedback(leg_id, other, now);
                    }
                    continue;
                }
            };
            for block in blocks {
                self.note_report_block(leg_id, block, now);
            }
        }
    }

    /// Unprotect a packet in place with the keys of the leg it came from, or, from an
    /// unknown address, of the leg it authenticates for (which then latches to `source`).
    /// Counts the packet on success and the drop on failure; returns the leg and the
    /// plaintext length.
    #[allow(clippy::too_many_arguments)]
    fn authenticate(
        &mut self,
        now: Instant,
        local: SocketAddr,
        source: SocketAddr,
        known: Option<LegId>,
        ssrc: Ssrc,
        contents: &mut [u8],
        kind: AddressKind,
    ) -> Option<(LegId, usize)> {
        let wire_len = contents.len();
        let (leg_id, plain_len) = match known {
            Some(l) if !self.legs[l.index()].can_send() => {
                // A WebRTC leg before its handshake: no keys to authenticate with.
                self.drop_at(Some(l), DropReason::NotConnected);
                return None;
            }
            Some(l) => match self.legs[l.index()].unprotect(kind, contents) {
                Ok(n) => (l, n),
                Err(e) => {
                    self.drop_at(Some(l), srtp_drop_reason(e));
                    return None;
                }
            },
            None => match self.learn(source, ssrc, contents, kind) {
                Learned::Leg(l, n) => (l, n),
                Learned::Rejected => {
                    self.drops.add(DropReason::UnknownSource);
                    return None;
                }
            },
        };
        let stats = &mut self.legs[leg_id.index()].stats;
        match kind {
            AddressKind::Rtp => stats.rtp_in.add(wire_len),
            AddressKind::Rtcp => stats.rtcp_in.add(wire_len),
        }
        let first = self.legs[leg_id.index()].last_received.is_none();
        self.note_activity(leg_id, now);
        if self.legs[leg_id.index()].relay.is_some() {
            // A link's addresses are configured: never learned or moved.
            if first {
                self.on_link_first_heard(leg_id);
            }
            return Some((leg_id, plain_len));
        }
        if self.legs[leg_id.index()].webrtc.is_some() {
            // Its address is the nominated one: media never moves it (RFC 8445 §12).
            return Some((leg_id, plain_len));
        }
        if kind == AddressKind::Rtp && self.note_source(leg_id, ssrc, source) {
            return Some((leg_id, plain_len));
        }
        let leg = &self.legs[leg_id.index()];
        let latched = match kind {
            AddressKind::Rtp => leg.remote_rtp == Some(source),
            AddressKind::Rtcp => {
                leg.remote_rtcp == Some(source) || (leg.rtcp_mux && leg.remote_rtp == Some(source))
            }
        };
        if !latched {
            // New, or the first of its kind from a source known by the other kind (an RTCP
            // packet that arrived before any RTP, say): point the leg at it.
            self.latch(leg_id, local, source, kind);
        }
        Some((leg_id, plain_len))
    }

    /// A packet of padding alone (RFC 3550 §5.1: browsers probe bandwidth with them when
    /// no RTX stream is negotiated). It takes a sequence number and carries nothing: it
    /// counts as received, so no NACK asks for it again, is never forwarded, and each
    /// subscriber's numbering closes over it.
    fn on_padding_only(
        &mut self,
        track_id: TrackId,
        encoding: u8,
        header: &RtpHeader,
        now: Instant,
    ) {
        let track = &mut self.tracks[track_id.index()];
        let Some(e) = track.encodings.get_mut(usize::from(encoding)) else {
            return;
        };
        e.receive.on_packet(header.sequence, header.timestamp, now);
        e.nack.on_packet(header.sequence, now);
        for &sub in &track.subscribers {
            self.subscriptions[sub.index()]
                .rewriter
                .skip(header.ssrc, header.sequence);
        }
    }

    /// Remember where each published SSRC comes from. A peer may send its streams from
    /// several ports (FFmpeg sends each from its own), so a new address for an SSRC that
    /// the leg's main address never carried adds an address rather than moving the leg;
    /// the leg moves when an SSRC it was getting from the main address comes from
    /// elsewhere (the peer changed networks). Returns whether the leg's main address is
    /// settled (nothing more for `latch` to do).
    fn note_source(&mut self, leg_id: LegId, ssrc: Ssrc, source: SocketAddr) -> bool {
        let leg = &mut self.legs[leg_id.index()];
        if leg.track_for(ssrc).is_none() {
            return false;
        }
        let previous = leg
            .sources
            .iter()
            .find(|(s, _)| *s == ssrc)
            .map(|&(_, a)| a);
        if previous == Some(source) {
            return true;
        }
        leg.sources.retain(|(s, _)| *s != ssrc);
        leg.sources.push((ssrc, source));
        let moves_leg = leg.remote_rtp.is_none() || leg.remote_rtp == previous;
        if let Some(old) = previous {
            let still_used = leg.sources.iter().any(|&(_, a)| a == old)
                || leg.remote_rtp == Some(old) && !moves_leg
                || leg.remote_rtcp == Some(old);
            if !still_used && self.by_remote.get(&old) == Some(&leg_id) {
                self.by_remote.remove(&old);
            }
        }
        self.by_remote.insert(source, leg_id);
        self.peers_generation += 1;
        !moves_leg
    }

    /// A packet from an address no leg knows: find the leg whose keys authenticate it, and
    /// latch that leg's address to `source`. Candidates are the legs publishing `ssrc`, and
    /// for RTCP the leg whose RTP comes from the port below (RFC 3550 §11's convention).
    fn learn(
        &mut self,
        source: SocketAddr,
        ssrc: Ssrc,
        contents: &mut [u8],
        kind: AddressKind,
    ) -> Learned {
        let mut candidates = [None; MAX_LEARNING_CANDIDATES];
        let mut n = 0;
        let mut push = |leg: LegId| {
            if n < MAX_LEARNING_CANDIDATES && !candidates[..n].contains(&Some(leg)) {
                candidates[n] = Some(leg);
                n += 1;
            }
        };
        if let Some(legs) = self.by_published_ssrc.get(&ssrc) {
            legs.iter().copied().for_each(&mut push);
        }
        if kind == AddressKind::Rtcp && source.port() > 0 {
            let rtp = SocketAddr::new(source.ip(), source.port() - 1);
            if let Some(&leg) = self.by_remote.get(&rtp) {
                push(leg);
            }
        }
        let len = contents.len();
        if n > 1 {
            self.scratch[..len].copy_from_slice(contents);
        }
        for (i, leg_id) in candidates[..n].iter().flatten().copied().enumerate() {
            if i > 0 {
                contents.copy_from_slice(&self.scratch[..len]);
            }
            if let Ok(plain_len) = self.legs[leg_id.index()].unprotect(kind, contents) {
                return Learned::Leg(leg_id, plain_len);
            }
        }
        trace!(%source, %ssrc, candidates = n, "dropping packet from unknown source");
        Learned::Rejected
    }

    /// Point a leg's address of `kind` at `source` after an authenticated packet came from
    /// there.
    fn latch(&mut self, leg_id: LegId, local: SocketAddr, source: SocketAddr, kind: AddressKind) {
        let leg = &mut self.legs[leg_id.index()];
        let previous = match kind {
            // RTCP from the RTP address: the peer muxes (RFC 5761).
            AddressKind::Rtcp if leg.remote_rtp == Some(source) => {
                leg.rtcp_mux = true;
                return;
            }
            // A muxed leg heard from by RTCP first (a participant that only receives
            // sends nothing else): its one address is where RTP goes too.
            AddressKind::Rtcp if leg.rtcp_mux && leg.remote_rtp.is_none() => {
                leg.local = Some(local);
                leg.remote_rtp.replace(source)
            }
            AddressKind::Rtcp => {
                leg.local_rtcp = Some(local);
                leg.remote_rtcp.replace(source)
            }
            AddressKind::Rtp => {
                leg.local = Some(local);
                leg.remote_rtp.replace(source)
            }
        };
        if let Some(prev) = previous {
            if self.by_remote.get(&prev) == Some(&leg_id) {
                self.by_remote.remove(&prev);
            }
        }
        self.by_remote.insert(source, leg_id);
        self.peers_generation += 1;
        let event = Event::RemoteAddressLearned {
            meeting: self.meetings[leg.meeting.0 as usize].id.clone(),
            participant: leg.participant.clone(),
            leg: leg.name.clone(),
            kind,
            address: source,
            previous,
        };
        self.push_event(event);
    }

    fn note_activity(&mut self, leg_id: LegId, now: Instant) {
        let leg = &mut self.legs[leg_id.index()];
        leg.last_received = Some(now);
        if leg.inactive {
            leg.inactive = false;
            let event = Event::LegActive {
                meeting: self.meetings[leg.meeting.0 as usize].id.clone(),
                participant: leg.participant.clone(),
                leg: leg.name.clone(),
            };
            self.push_event(event);
        }
    }

    fn drop_at(&mut self, leg: Option<LegId>, reason: DropReason) {
        match leg {
            Some(l) => self.legs[l.index()].stats.drops.add(reason),
            None => self.drops.add(reason),
        }
    }

    fn push_event(&mut self, event: Event) {
        if self.events.len() >= self.config.max_queued_events {
            self.events.pop_front();
            self.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    /// The next datagram to send, written into `buf` (at least
    /// [`MIN_TRANSMIT_BUFFER_LEN`] bytes). `None` when nothing is pending.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(transmit) = self.poll_stun_transmit(buf) {
            return Some(transmit);
        }
        if let Some(transmit) = self.poll_dtls_transmit(buf) {
            return Some(transmit);
        }
        if let Some(transmit) = self.poll_transport_cc(buf) {
            return Some(transmit);
        }
        if let Some(transmit) = self.poll_rtcp_transmit(buf) {
            return Some(transmit);
        }
        if let Some(transmit) = self.poll_retransmission(buf) {
            return Some(transmit);
        }
        if let Some(transmit) = self.poll_relay_retransmission(buf) {
            return Some(transmit);
        }
        if let Some(transmit) = self.fan_out(true, buf) {
            return Some(transmit);
        }
        self.fan_out(false, buf)
    }

    /// The next subscriber copy of the oldest packet of the (priority) fan-out queue.
    fn fan_out(&mut self, priority: bool, buf: &mut [u8]) -> Option<Transmit> {
        let Forwarder {
            queue,
            priority_queue,
            tracks,
            subscriptions,
            legs,
            meetings,
            ..
        } = self;
        let queue = if priority { priority_queue } else { queue };
        loop {
            let pending = queue.front()?;
            let Some(track) = tracks.get(pending.track.index()) else {
                // The track was removed while its packet waited.
                queue.pop();
                continue;
            };
            while let Some(&sub_id) = track.subscribers.get(pending.next) {
                pending.next += 1;
                let sub = &mut subscriptions[sub_id.index()];
                let (switched, end_of_picture) = match sub.select(pending.encoding, &pending.info) {
                    Verdict::Forward {
                        switched,
                        end_of_picture,
                    } => (switched, end_of_picture),
                    Verdict::Skip => {
                        sub.rewriter.skip(pending.ssrc, pending.sequence);
                        continue;
                    }
                    Verdict::Ignore | Verdict::AwaitKeyframe => continue,
                };
                let leg = &mut legs[sub.leg.index()];
                let Some(destination) = leg.remote_rtp else {
                    leg.stats.drops.add(DropReason::NoRemoteAddress);
                    continue;
                };
                if !leg.can_send() {
                    leg.stats.drops.add(DropReason::NotConnected);
                    continue;
                }
                let (sequence, timestamp) = match sub.rewriter.rewrite(
                    pending.ssrc,
                    pending.sequence,
                    pending.timestamp,
                    pending.arrival,
                ) {
                    Rewrite::Forward {
                        sequence,
                        timestamp,
                    } => (sequence, timestamp),
                    Rewrite::Stale => {
                        leg.stats.drops.add(DropReason::StaleSource);
                        continue;
                    }
                };
                let len = pending.len;
                let Some(out) = buf.get_mut(..len) else {
                    leg.stats.drops.add(DropReason::ProtectFailed);
                    continue;
                };
                out.copy_from_slice(&pending.data[..len]);
                rewrite_header(out, sub.ssrc, sequence, timestamp, sub.payload_type);
                if let Some(web) = &leg.webrtc {
                    web.translate_extensions(out, track.audio_level_extension);
                }
                if end_of_picture {
                    rtp::set_marker(out, true);
                }
                if let Some(payload) = out.get_mut(pending.payload.clone()) {
                    sub.munger
                        .rewrite(track.codec, payload, &pending.info, switched);
                }
                match leg.srtp_out.protect_rtp(buf, len) {
                    Ok(wire_len) => {
                        leg.stats.rtp_out.add(wire_len);
                        sub.packets_sent = sub.packets_sent.wrapping_add(1);
                        sub.octets_sent =
                            sub.octets_sent.wrapping_add(pending.payload.len() as u32);
                        return Some(Transmit {
                            source: leg.local,
                            destination,
                            len: wire_len,
                        });
                    }
                    Err(_) => leg.stats.drops.add(DropReason::ProtectFailed),
                }
            }
            // Then every relay link the meeting feeds: the packet as received, every
            // layer, protected once per link.
            let sinks = meetings
                .get(track.meeting.0 as usize)
                .map_or(&[][..], |m| &m.sinks[..]);
            while let Some(&leg_id) = pending
                .next
                .checked_sub(track.subscribers.len())
                .and_then(|i| sinks.get(i))
            {
                pending.next += 1;
                let leg = &mut legs[leg_id.index()];
                let Some(destination) = leg.remote_rtp else {
                    continue;
                };
                let len = pending.len;
                let Some(out) = buf.get_mut(..len) else {
                    leg.stats.drops.add(DropReason::ProtectFailed);
                    continue;
                };
                out.copy_from_slice(&pending.data[..len]);
                match leg.srtp_out.protect_rtp(buf, len) {
                    Ok(wire_len) => {
                        leg.stats.rtp_out.add(wire_len);
                        return Some(Transmit {
                            source: leg.local,
                            destination,
                            len: wire_len,
                        });
                    }
                    Err(_) => leg.stats.drops.add(DropReason::ProtectFailed),
                }
            }
            queue.pop();
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Forwarder::handle_timeout`] wants to be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.next_housekeeping, self.next_feedback_tick]
            .into_iter()
            .flatten()
            .min()
    }

    /// Time passed: run what is due (feedback timers; every second, inactivity detection,
    /// receiver reports and repeated keyframe requests).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.next_feedback_tick.is_some_and(|t| now >= t) {
            self.next_feedback_tick = Some(now + FEEDBACK_INTERVAL);
            self.feedback_tick(now);
            self.transport_cc_tick(now);
            self.detect_speakers(now);
            self.dtls_timers(now);
        }
        match self.next_housekeeping {
            Some(due) if now >= due => {}
            _ => return,
        }
        self.next_housekeeping = Some(now + HOUSEKEEPING_INTERVAL);
        let timeout = self.config.inactivity_timeout;
        let mut went_quiet = Vec::new();
        for (i, leg) in &mut self.legs {
            if let Some(last) = leg.last_received {
                if !leg.inactive && now.saturating_duration_since(last) >= timeout {
                    leg.inactive = true;
                    went_quiet.push(LegId(i as u32));
                }
            }
        }
        for leg_id in went_quiet {
            let leg = &self.legs[leg_id.index()];
            let event = Event::LegInactive {
                meeting: self.meetings[leg.meeting.0 as usize].id.clone(),
                participant: leg.participant.clone(),
                leg: leg.name.clone(),
            };
            self.push_event(event);
        }
        self.expire_consent(now);
        self.start_receiver_reports();
        self.adapt_all(now);
        self.rerequest_keyframes(now);
        self.relay_housekeeping(now);
    }
}

impl Forwarder {
    /// Run each meeting's dominant speaker detector and report changes.
    fn detect_speakers(&mut self, now: Instant) {
        let mut changes = Vec::new();
        for (_, m) in &mut self.meetings {
            let Some(change) = m.speakers.poll(now) else {
                continue;
            };
            let speaker = change
                .current
                .and_then(|slot| m.speakers_by_slot.get(slot).cloned().flatten());
            // Two audio tracks of one participant are one speaker.
            if speaker != m.dominant_speaker {
                m.dominant_speaker = speaker.clone();
                changes.push(Event::DominantSpeaker {
                    meeting: m.id.clone(),
                    participant: speaker,
                });
            }
        }
        for event in changes {
            self.push_event(event);
        }
    }
}

/// Write the subscription's view of the header into a copy of the packet.
fn rewrite_header(
    packet: &mut [u8],
    ssrc: Ssrc,
    sequence: SeqNo,
    timestamp: u32,
    payload_type: Option<u8>,
) {
    rtp::set_ssrc(packet, ssrc);
    rtp::set_sequence(packet, sequence);
    rtp::set_timestamp(packet, timestamp);
    if let Some(pt) = payload_type {
        rtp::set_payload_type(packet, pt);
    }
}

/// How often the feedback timers run: fine enough for NACK retries, which are spaced by
/// at least 20 ms (`policy::nack::MIN_RETRY_INTERVAL`).
const FEEDBACK_INTERVAL: Duration = Duration::from_millis(10);

/// How often [`Forwarder::handle_timeout`] runs its housekeeping.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

fn srtp_drop_reason(e: SrtpError) -> DropReason {
    match e {
        SrtpError::AuthenticationFailed => DropReason::AuthenticationFailed,
        SrtpError::Replayed | SrtpError::TooOld => DropReason::Replayed,
        _ => DropReason::Malformed,
    }
}
