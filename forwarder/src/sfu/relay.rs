//! Relay links: forwarder-to-forwarder trunks of a cascade (a webinar's relay tree).
//!
//! # The model
//!
//! A link has two ends, each held by the core that runs the meeting the end belongs to:
//!
//! * the **downstream** end (the parent: the webinar's origin, or a relay node that feeds
//!   others) sends every packet of every track of its meeting to the peer, every simulcast
//!   encoding and spatial layer included, unchanged: original SSRCs, sequence numbers,
//!   timestamps and payloads. Each packet is protected once per link (one SRTP context per
//!   link, not per viewer), straight from the fan-out queue like a subscription's copy.
//! * the **upstream** end (the child: a relay node `{meeting}/{relay}`) receives them and
//!   presents them as tracks published in its node, so the node's viewers are served like
//!   any subscriber: per-viewer layer selection, NACKs answered from the node's own
//!   packet cache, keyframe handling, congestion adaptation.
//!
//! Each end is a leg of a participant named after the link (its id contains a `/`, which
//! no participant id has), with a [`RelayState`]. The leg's remote address is the peer's
//! address, its local address the meeting's listen address; link legs are found by the
//! (local, remote) pair, never learned or moved, so two nodes of one webinar in the same
//! core can each have a link from the same parent address.
//!
//! # Which tracks: announcements
//!
//! The downstream end tells the upstream end what it sends in band, with an SRTCP APP
//! packet (RFC 3550 §6.7, name [`APP_NAME`]) protected by the link's keys: per track its
//! name, kind, codec, clock rate and SSRCs (lowest encoding first). It announces when the
//! link is added, when it first hears from the peer (the upstream end says hello with an
//! empty receiver report as it comes up, in case it missed the first announcement),
//! whenever a track of the meeting comes or goes, and every second. A
//! track removed at the parent is announced gone with an RTCP BYE of its SSRCs; one not
//! announced for [`TRACK_TTL`] is removed as well (a lost BYE). A node that feeds further
//! nodes announces the tracks its own link brought, so links chain to any depth.
//!
//! # Feedback up the tree
//!
//! A viewer's NACK is answered from the node's cache. A miss goes upstream as a NACK to
//! the track's publisher, which for a relayed track is the link to the parent, unless the
//! node's own loss detection already requests that packet (it does for every gap it saw,
//! once per round trip, whatever the number of viewers waiting for it). The parent does
//! the same with the NACKs it receives over a link: answer from its cache, pass misses on.
//! Keyframe requests from viewers and child links go through the encoding's
//! [`KeyframeRequester`](crate::policy::keyframe::KeyframeRequester) like any other, so
//! each level sends at most one PLI per SSRC per interval towards its parent.
//!
//! # Reception up the tree
//!
//! Each node sends its parent, every second, a summary per relayed track of what the
//! receivers below it report (its own subscribers' RTCP report blocks merged with its
//! children's summaries): see [`audience`]. The origin thus knows its whole audience's
//! reception, exposed as the `fanout_audience_*` metrics; its receiver reports to the
//! presenter stay about what the origin itself receives (RFC 3550 §6.4: a report block
//! describes its sender's reception, and the presenter's congestion control must not
//! react to a viewer's access link three levels down, whose losses the tree repairs or
//! absorbs by layer selection).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, info, trace};

use crate::codec::Codec;
use crate::ids::{LegId, MeetingId, ParticipantId, SeqNo, Ssrc, TrackId};
use crate::rtcp::{self, Feedback, RtcpError, SenderReport};
use crate::srtp::{ContextOptions, MasterKey, SrtpContext};

pub mod audience;

use audience::{AudienceSummary, ENTRIES_PER_PACKET, RECEPTION_TTL, SUMMARY_TTL};

use super::feedback::MAX_NACK_BATCH;
use super::leg::Leg;
use super::stats::LegStats;
use super::{
    ConfigureError, DropReason, Forwarder, Layers, SubscriptionConfig, TrackConfig, TrackKind,
    Transmit, MAX_ENCODINGS,
};

/// The APP name of track announcements ("FanOut Relay Tracks").
pub const APP_NAME: [u8; 4] = *b"FORT";
/// Version of the announcement's body layout.
const ANNOUNCEMENT_VERSION: u8 = 1;
/// A relayed track not announced for this long is removed (announcements come every
/// second: this survives a few lost ones).
pub const TRACK_TTL: Duration = Duration::from_secs(5);
/// Largest announcement packet: one RTCP queue slot, less room for nothing else.
const ANNOUNCEMENT_MAX_LEN: usize = super::reports::RTCP_SLOT_LEN;
/// SSRCs one link's SRTP context tracks per direction: every encoding of every track of
/// the meeting crosses one link (a participant's leg needs a handful).
const LINK_MAX_SSRCS: usize = 1024;
/// The name of the one leg of a link's participant.
pub const RELAY_LEG_NAME: &str = "relay";
/// Relayed retransmissions waiting to be sent; beyond this NACKs over links are not
/// answered.
pub(crate) const RELAY_RETRANSMISSION_QUEUE_LEN: usize = 1024;

/// Which way a link end carries the tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayDirection {
    /// This end receives the tracks (the child node's end).
    Upstream,
    /// This end sends the tracks of its meeting (the parent's end).
    Downstream,
}

impl RelayDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayDirection::Upstream => "upstream",
            RelayDirection::Downstream => "downstream",
        }
    }
}

/// Static description of one end of a relay link.
#[derive(Debug, Clone)]
pub struct RelayLinkConfig {
    /// Unique within the meeting; becomes the link's participant id.
    pub id: String,
    pub direction: RelayDirection,
    /// The meeting's own address here: the link's packets leave from it, and the peer's
    /// arrive on it.
    pub local: SocketAddr,
    /// The peer's address (its meeting or node's listen address).
    pub remote: SocketAddr,
    /// What this end protects with.
    pub send_key: MasterKey,
    /// What the peer protects with: this end unprotects (with replay protection).
    pub receive_key: MasterKey,
}

/// What a core knows of one link end (for metrics and tests).
#[derive(Debug, Clone)]
pub struct RelayLinkInfo {
    pub meeting: MeetingId,
    pub id: String,
    pub direction: RelayDirection,
    pub remote: SocketAddr,
    pub stats: LegStats,
    /// Tracks relayed over the link (announced to the peer, or received from it).
    pub tracks: usize,
}

/// The relay part of a leg that is one end of a link.
#[derive(Debug)]
pub(crate) struct RelayState {
    pub(crate) direction: RelayDirection,
    /// Upstream: the tracks created from the peer's announcements, and when each was
    /// last announced.
    pub(crate) announced: Vec<(TrackId, Instant)>,
    /// Downstream: the child's latest audience summary of each track of the meeting, and
    /// when it arrived.
    pub(crate) audience: Vec<ChildAudience>,
}

/// What a child link last reported about the receivers of one track below it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildAudience {
    pub(crate) track: TrackId,
    pub(crate) summary: AudienceSummary,
    pub(crate) at: Instant,
}

/// A packet a child link NACKed, to send it again verbatim.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelayRetransmission {
    leg: LegId,
    track: TrackId,
    encoding: u8,
    sequence: SeqNo,
}

/// One track as announced over a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AnnouncedTrack {
    pub(crate) name: String,
    pub(crate) kind: TrackKind,
    pub(crate) codec: Codec,
    pub(crate) clock_rate: u32,
    pub(crate) ssrcs: Vec<Ssrc>,
}

fn kind_code(kind: TrackKind) -> u8 {
    match kind {
        TrackKind::Audio => 0,
        TrackKind::Video => 1,
        TrackKind::Screen => 2,
    }
}

fn kind_from_code(code: u8) -> Option<TrackKind> {
    Some(match code {
        0 => TrackKind::Audio,
        1 => TrackKind::Video,
        2 => TrackKind::Screen,
        _ => return None,
    })
}

fn codec_code(codec: Codec) -> u8 {
    match codec {
        Codec::Opaque => 0,
        Codec::Vp8 => 1,
        Codec::Vp9 => 2,
        Codec::H264 => 3,
    }
}

fn codec_from_code(code: u8) -> Codec {
    match code {
        1 => Codec::Vp8,
        2 => Codec::Vp9,
        3 => Codec::H264,
        _ => Codec::Opaque,
    }
}

/// Bytes one track takes in an announcement (padded to 32 bits).
fn descriptor_len(track: &AnnouncedTrack) -> usize {
    (8 + 4 * track.ssrcs.len() + track.name.len()).div_ceil(4) * 4
}

/// Write an APP packet announcing `tracks` (all of which must fit: see
/// [`descriptor_len`]).
pub(crate) fn write_announcement(
    buf: &mut [u8],
    sender: Ssrc,
    tracks: &[&AnnouncedTrack],
) -> Result<usize, RtcpError> {
    let len = 16 + tracks.iter().map(|t| descriptor_len(t)).sum::<usize>();
    if buf.len() < len || tracks.len() > 255 {
        return Err(RtcpError::BufferTooSmall);
    }
    let out = &mut buf[..len];
    out.fill(0);
    out[0] = 0x80; // V=2, P=0, subtype 0
    out[1] = rtcp::packet_type::APP;
    out[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&sender.0.to_be_bytes());
    out[8..12].copy_from_slice(&APP_NAME);
    out[12] = ANNOUNCEMENT_VERSION;
    out[13] = tracks.len() as u8;
    let mut at = 16;
    for t in tracks {
        let name = t.name.as_bytes();
        out[at] = kind_code(t.kind);
        out[at + 1] = codec_code(t.codec);
        out[at + 2] = t.ssrcs.len() as u8;
        out[at + 3] = name.len() as u8;
        out[at + 4..at + 8].copy_from_slice(&t.clock_rate.to_be_bytes());
        let mut p = at + 8;
        for s in &t.ssrcs {
            out[p..p + 4].copy_from_slice(&s.0.to_be_bytes());
            p += 4;
        }
        out[p..p + name.len()].copy_from_slice(name);
        at += descriptor_len(t);
    }
    Ok(len)
}

/// Parse the body of an APP packet (after the common header: SSRC, name, data) as an
/// announcement. `None` if it is not one or is malformed.
pub(crate) fn parse_announcement(body: &[u8]) -> Option<Vec<AnnouncedTrack>> {
    if body.get(4..8)? != APP_NAME || *body.get(8)? != ANNOUNCEMENT_VERSION {
        return None;
    }
    let count = usize::from(*body.get(9)?);
    let mut out = Vec::with_capacity(count);
    let mut at = 12;
    for _ in 0..count {
        let fixed = body.get(at..at + 8)?;
        let kind = kind_from_code(fixed[0])?;
        let codec = codec_from_code(fixed[1]);
        let n = usize::from(fixed[2]);
        let name_len = usize::from(fixed[3]);
        let clock_rate = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        if n == 0 || n > MAX_ENCODINGS || name_len == 0 {
            return None;
        }
        let mut ssrcs = Vec::with_capacity(n);
        for i in 0..n {
            let b = body.get(at + 8 + 4 * i..at + 12 + 4 * i)?;
            ssrcs.push(Ssrc(u32::from_be_bytes([b[0], b[1], b[2], b[3]])));
        }
        let name_at = at + 8 + 4 * n;
        let name = std::str::from_utf8(body.get(name_at..name_at + name_len)?).ok()?;
        let track = AnnouncedTrack {
            name: name.to_owned(),
            kind,
            codec,
            clock_rate,
            ssrcs,
        };
        at += descriptor_len(&track);
        out.push(track);
    }
    Some(out)
}

impl Forwarder {
    // ----- configuration -------------------------------------------------------------

    /// Add one end of a relay link to `meeting` (see the [module docs](self)). A
    /// downstream end announces the meeting's tracks to its peer at once.
    pub fn add_relay_link(
        &mut self,
        meeting: &MeetingId,
        config: RelayLinkConfig,
    ) -> Result<LegId, ConfigureError> {
        let index = self.meeting(meeting)?;
        // Announcements repeat every second even before any datagram arrived.
        if self.next_housekeeping.is_none() {
            self.next_housekeeping = Some(self.now + super::HOUSEKEEPING_INTERVAL);
            self.next_feedback_tick = Some(self.now + super::FEEDBACK_INTERVAL);
        }
        let path = (config.local, config.remote);
        if self.link_paths.contains_key(&path) {
            return Err(ConfigureError::AddressInUse(config.remote));
        }
        let participant = ParticipantId(config.id.clone());
        self.add_participant(meeting, participant.clone())?;
        let id = LegId(self.legs.vacant_key() as u32);
        let options = ContextOptions {
            max_ssrcs: LINK_MAX_SSRCS,
            ..ContextOptions::default()
        };
        let leg = Leg {
            meeting: index,
            participant: participant.clone(),
            name: RELAY_LEG_NAME.to_owned(),
            srtp_in: SrtpContext::with_options(&config.receive_key, options),
            srtp_out: SrtpContext::with_options(&config.send_key, options),
            webrtc: None,
            remote_rtp: Some(config.remote),
            remote_rtcp: None,
            rtcp_mux: true,
            local: Some(config.local),
            inbound_ssrcs: Vec::new(),
            repair_ssrcs: Vec::new(),
            sources: Vec::new(),
            local_rtcp: None,
            rtcp_ssrc: Ssrc(super::RTCP_SSRC_BASE ^ id.0),
            learning_ssrcs: Vec::new(),
            subscriptions: Vec::new(),
            last_received: None,
            inactive: false,
            stats: LegStats::default(),
            relay: Some(RelayState {
                direction: config.direction,
                announced: Vec::new(),
                audience: Vec::new(),
            }),
        };
        // `vacant_key` is the key `insert` uses.
        let inserted = LegId(self.legs.insert(leg) as u32);
        debug_assert_eq!(inserted, id);
        self.link_paths.insert(path, id);
        self.peers_generation += 1;
        self.participant_mut(meeting, &participant)?.legs.push(id);
        let m = &mut self.meetings[index.0 as usize];
        match config.direction {
            RelayDirection::Downstream => m.sinks.push(id),
            RelayDirection::Upstream => m.feeds.push(id),
        }
        info!(
            %meeting,
            link = %config.id,
            direction = config.direction.as_str(),
            local = %config.local,
            peer = %config.remote,
            "relay link up"
        );
        self.greet(id);
        Ok(id)
    }

    /// New keys or a new peer address for a link end (the control plane re-keys a link
    /// when either end moves to another forwarder): the SRTP contexts restart, everything
    /// else stays, so a node's relayed tracks and its viewers' subscriptions carry on (the
    /// presenter's SSRCs and numbering pass through the new parent unchanged).
    pub fn update_relay_link(
        &mut self,
        meeting: &MeetingId,
        config: RelayLinkConfig,
    ) -> Result<(), ConfigureError> {
        let participant = ParticipantId(config.id.clone());
        let leg_id = self
            .leg_id(meeting, &participant, RELAY_LEG_NAME)
            .ok_or(ConfigureError::NoSuchLeg)?;
        let leg = &self.legs[leg_id.index()];
        if leg.relay.as_ref().map(|r| r.direction) != Some(config.direction) {
            return Err(ConfigureError::NoSuchLeg);
        }
        let old_path = (
            leg.local.unwrap_or(config.local),
            leg.remote_rtp.unwrap_or(config.remote),
        );
        let path = (config.local, config.remote);
        if path != old_path {
            if self.link_paths.contains_key(&path) {
                return Err(ConfigureError::AddressInUse(config.remote));
            }
            self.link_paths.remove(&old_path);
            self.link_paths.insert(path, leg_id);
            self.peers_generation += 1;
        }
        let options = ContextOptions {
            max_ssrcs: LINK_MAX_SSRCS,
            ..ContextOptions::default()
        };
        let leg = &mut self.legs[leg_id.index()];
        leg.srtp_in = SrtpContext::with_options(&config.receive_key, options);
        leg.srtp_out = SrtpContext::with_options(&config.send_key, options);
        leg.local = Some(config.local);
        leg.remote_rtp = Some(config.remote);
        leg.last_received = None;
        info!(
            %meeting,
            link = %config.id,
            direction = config.direction.as_str(),
            peer = %config.remote,
            "relay link re-keyed"
        );
        self.greet(leg_id);
        Ok(())
    }

    /// What an end says as it comes up: a downstream end announces its tracks, an
    /// upstream end says hello (an empty receiver report), to which the parent answers
    /// with an announcement, in case its own came before this end existed.
    fn greet(&mut self, leg: LegId) {
        let l = &self.legs[leg.index()];
        let sender = l.rtcp_ssrc;
        match l.relay.as_ref().map(|r| r.direction) {
            Some(RelayDirection::Downstream) => self.announce_tracks(leg),
            Some(RelayDirection::Upstream) => {
                self.queue_rtcp(leg, |b| rtcp::write_receiver_report(b, sender, &[]))
            }
            None => {}
        }
    }

    /// The first authenticated packet over a link: a downstream end announces again.
    pub(crate) fn on_link_first_heard(&mut self, leg: LegId) {
        let downstream = self.legs[leg.index()]
            .relay
            .as_ref()
            .is_some_and(|r| r.direction == RelayDirection::Downstream);
        if downstream {
            self.announce_tracks(leg);
        }
    }

    /// Remove one end of a relay link: a downstream end stops sending at once; an
    /// upstream end's tracks go, with every subscription to them.
    pub fn remove_relay_link(
        &mut self,
        meeting: &MeetingId,
        id: &str,
    ) -> Result<(), ConfigureError> {
        let participant = ParticipantId(id.to_owned());
        let leg = self
            .leg_id(meeting, &participant, RELAY_LEG_NAME)
            .ok_or(ConfigureError::NoSuchLeg)?;
        if self.legs[leg.index()].relay.is_none() {
            return Err(ConfigureError::NoSuchLeg);
        }
        let stats = self.legs[leg.index()].stats;
        self.remove_participant(meeting, &participant)?;
        info!(
            %meeting,
            link = %id,
            packets_sent = stats.rtp_out.packets,
            packets_received = stats.rtp_in.packets,
            "relay link down"
        );
        Ok(())
    }

    /// How many link ends the core holds.
    pub fn relay_link_count(&self) -> usize {
        self.link_paths.len()
    }

    /// Every link end the core holds.
    pub fn relay_links(&self) -> Vec<RelayLinkInfo> {
        let mut out = Vec::new();
        for (_, leg) in &self.legs {
            let Some(relay) = &leg.relay else { continue };
            let m = &self.meetings[leg.meeting.0 as usize];
            let tracks = match relay.direction {
                RelayDirection::Upstream => relay.announced.len(),
                RelayDirection::Downstream => self.meeting_tracks(leg.meeting, None).len(),
            };
            out.push(RelayLinkInfo {
                meeting: m.id.clone(),
                id: leg.participant.0.clone(),
                direction: relay.direction,
                remote: leg
                    .remote_rtp
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                stats: leg.stats,
                tracks,
            });
        }
        out.sort_by(|a, b| (&a.meeting.0, &a.id).cmp(&(&b.meeting.0, &b.id)));
        out
    }

    /// Forget a link leg that is being removed (called for every leg removed).
    pub(crate) fn forget_link(&mut self, leg_id: LegId, leg: &Leg) {
        if leg.relay.is_none() {
            return;
        }
        if let (Some(local), Some(remote)) = (leg.local, leg.remote_rtp) {
            if self.link_paths.get(&(local, remote)) == Some(&leg_id) {
                self.link_paths.remove(&(local, remote));
            }
        }
        if let Some(m) = self.meetings.get_mut(leg.meeting.0 as usize) {
            m.sinks.retain(|&l| l != leg_id);
            m.feeds.retain(|&l| l != leg_id);
        }
        self.relay_retransmissions.retain(|r| r.leg != leg_id);
    }

    /// The tracks of a meeting (those of `except`'s participant left out), in a stable
    /// order.
    fn meeting_tracks(&self, meeting: super::MeetingIndex, except: Option<LegId>) -> Vec<TrackId> {
        let Some(m) = self.meetings.get(meeting.0 as usize) else {
            return Vec::new();
        };
        let mut out: Vec<TrackId> = m
            .participants
            .values()
            .flat_map(|p| p.tracks.iter().copied())
            .filter(|t| Some(self.tracks[t.index()].leg) != except)
            .collect();
        out.sort_by_key(|t| t.0);
        out
    }

    /// How a track is announced: a relayed track under its own name (already
    /// `{publisher}/{track}`), a local one as `{publisher}/{track}`.
    fn announced(&self, track: TrackId) -> AnnouncedTrack {
        let t = &self.tracks[track.index()];
        let relayed = self.legs[t.leg.index()].relay.is_some();
        AnnouncedTrack {
            name: if relayed {
                t.name.clone()
            } else {
                format!("{}/{}", t.participant, t.name)
            },
            kind: t.kind,
            codec: t.codec,
            clock_rate: t.clock_rate,
            ssrcs: t.encodings.iter().map(|e| e.ssrc).collect(),
        }
    }

    /// Queue announcements of every track of the sink's meeting towards its peer.
    pub(crate) fn announce_tracks(&mut self, sink: LegId) {
        let Some(leg) = self.legs.get(sink.index()) else {
            return;
        };
        let sender = leg.rtcp_ssrc;
        let tracks: Vec<AnnouncedTrack> = self
            .meeting_tracks(leg.meeting, None)
            .into_iter()
            .map(|t| self.announced(t))
            .collect();
        // Split into packets that fit a queue slot; an empty list still goes out, so the
        // peer keeps hearing from a meeting with nothing published yet.
        let mut batch: Vec<&AnnouncedTrack> = Vec::new();
        let mut len = 16;
        let mut batches: Vec<Vec<&AnnouncedTrack>> = Vec::new();
        for t in &tracks {
            let d = descriptor_len(t);
            if len + d > ANNOUNCEMENT_MAX_LEN && !batch.is_empty() {
                batches.push(std::mem::take(&mut batch));
                len = 16;
            }
            if len + d > ANNOUNCEMENT_MAX_LEN || t.name.len() > 255 {
                continue; // a track whose name alone does not fit: never relayed
            }
            batch.push(t);
            len += d;
        }
        batches.push(batch);
        for b in batches {
            self.queue_rtcp(sink, |buf| write_announcement(buf, sender, &b));
        }
    }

    /// Announce to every link fed by `meeting`.
    pub(crate) fn announce_to_sinks(&mut self, meeting: super::MeetingIndex) {
        let sinks = match self.meetings.get(meeting.0 as usize) {
            Some(m) if !m.sinks.is_empty() => m.sinks.clone(),
            _ => return,
        };
        for sink in sinks {
            self.announce_tracks(sink);
        }
    }

    /// A track of a meeting with links is going: tell the links its SSRCs are gone.
    pub(crate) fn announce_gone(&mut self, meeting: super::MeetingIndex, ssrcs: &[Ssrc]) {
        let sinks = match self.meetings.get(meeting.0 as usize) {
            Some(m) if !m.sinks.is_empty() => m.sinks.clone(),
            _ => return,
        };
        for sink in sinks {
            let sender = self.legs[sink.index()].rtcp_ssrc;
            self.queue_rtcp(sink, |buf| {
                let n = rtcp::write_receiver_report(buf, sender, &[])?;
                let rest = buf.get_mut(n..).ok_or(RtcpError::BufferTooSmall)?;
                Ok(n + write_bye(rest, ssrcs)?)
            });
        }
    }

    /// Every second: announce to every downstream link; remove relayed tracks whose
    /// announcements stopped; send every upstream link the audience summary of the
    /// tracks it brings; forget children's summaries that aged out.
    pub(crate) fn relay_housekeeping(&mut self, now: Instant) {
        let mut sinks = Vec::new();
        let mut feeds = Vec::new();
        let mut expired = Vec::new();
        for (i, leg) in &mut self.legs {
            match &mut leg.relay {
                Some(r) if r.direction == RelayDirection::Downstream => {
                    r.audience
                        .retain(|a| now.saturating_duration_since(a.at) < SUMMARY_TTL);
                    sinks.push(LegId(i as u32));
                }
                Some(r) => {
                    feeds.push(LegId(i as u32));
                    expired.extend(
                        r.announced
                            .iter()
                            .filter(|(_, at)| now.saturating_duration_since(*at) >= TRACK_TTL)
                            .map(|&(t, _)| (LegId(i as u32), t)),
                    )
                }
                None => {}
            }
        }
        for (leg, track) in expired {
            trace!(?track, "relayed track no longer announced: removed");
            self.remove_relayed_track(leg, track);
        }
        for sink in sinks {
            self.announce_tracks(sink);
        }
        for feed in feeds {
            self.send_audience(feed, now);
        }
        self.log_root_audience(now);
    }

    /// The reception of `track` in this forwarder's subtree at `now`: its subscribers'
    /// fresh reports merged with the fresh summaries of the child links its meeting feeds.
    pub(crate) fn audience_of(&self, track: TrackId, now: Instant) -> AudienceSummary {
        let mut out = AudienceSummary::default();
        let Some(t) = self.tracks.get(track.index()) else {
            return out;
        };
        for sub in &t.subscribers {
            if let Some((summary, at)) = &self.subscriptions[sub.index()].reception {
                if now.saturating_duration_since(*at) < RECEPTION_TTL {
                    out.merge(summary);
                }
            }
        }
        let Some(m) = self.meetings.get(t.meeting.0 as usize) else {
            return out;
        };
        for sink in &m.sinks {
            let Some(r) = self.legs.get(sink.index()).and_then(|l| l.relay.as_ref()) else {
                continue;
            };
            for a in r.audience.iter().filter(|a| a.track == track) {
                if now.saturating_duration_since(a.at) < SUMMARY_TTL {
                    out.merge(&a.summary);
                }
            }
        }
        out
    }

    /// The reception of a track in this forwarder's subtree (see
    /// [`audience`](self::audience)): its own subscribers and every relay node below.
    pub fn track_audience(&self, track: TrackId) -> Option<AudienceSummary> {
        self.tracks.get(track.index())?;
        Some(self.audience_of(track, self.now))
    }

    /// Send the parent, over upstream link `feed`, the summary of every track the link
    /// brings, an empty one for a track nobody receives (so the parent forgets departed
    /// receivers at once). Fixed-size batches: no allocation.
    fn send_audience(&mut self, feed: LegId, now: Instant) {
        let mut next = 0;
        loop {
            let Some(leg) = self.legs.get(feed.index()) else {
                return;
            };
            let Some(r) = leg.relay.as_ref() else {
                return;
            };
            if next >= r.announced.len() {
                return;
            }
            let sender = leg.rtcp_ssrc;
            let mut batch = [(Ssrc(0), AudienceSummary::default()); ENTRIES_PER_PACKET];
            let mut n = 0;
            while n < batch.len() {
                let Some(&(track, _)) = r.announced.get(next) else {
                    break;
                };
                next += 1;
                let Some(t) = self.tracks.get(track.index()) else {
                    continue;
                };
                batch[n] = (t.primary_ssrc(), self.audience_of(track, now));
                n += 1;
            }
            if n > 0 {
                self.queue_rtcp(feed, |buf| {
                    audience::write_summaries(buf, sender, &batch[..n])
                });
            }
        }
    }

    /// An audience summary arrived over a downstream link: keep each entry, by track, as
    /// the child's latest word on it. Malformed summaries are dropped whole and counted.
    fn on_audience_summary(&mut self, sink: LegId, body: &[u8], now: Instant) {
        let Some(entries) = audience::parse_summaries(body) else {
            self.drop_at(Some(sink), DropReason::Malformed);
            return;
        };
        for (ssrc, summary) in entries {
            // A track the child still reports although it is gone here: ignored.
            let Some((track, _)) = self.meeting_encoding(sink, ssrc) else {
                continue;
            };
            let Some(r) = self.legs[sink.index()].relay.as_mut() else {
                return;
            };
            match r.audience.iter_mut().find(|a| a.track == track) {
                Some(a) => {
                    a.summary = summary;
                    a.at = now;
                }
                None => r.audience.push(ChildAudience {
                    track,
                    summary,
                    at: now,
                }),
            }
        }
    }

    /// A track is going: children's summaries of it must not outlive it (its slab slot,
    /// and so its id, may be reused at once).
    pub(crate) fn forget_track_audience(&mut self, meeting: super::MeetingIndex, track: TrackId) {
        let Some(m) = self.meetings.get(meeting.0 as usize) else {
            return;
        };
        for sink in &m.sinks {
            if let Some(r) = self
                .legs
                .get_mut(sink.index())
                .and_then(|l| l.relay.as_mut())
            {
                r.audience.retain(|a| a.track != track);
            }
        }
    }

    /// At the root of a tree (a meeting that feeds links and is fed by none): log each
    /// track's audience, for operators without a metrics scraper at hand.
    fn log_root_audience(&self, now: Instant) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        for (_, m) in &self.meetings {
            if m.sinks.is_empty() || !m.feeds.is_empty() {
                continue;
            }
            for p in m.participants.values() {
                for &track in &p.tracks {
                    let a = self.audience_of(track, now);
                    if a.receivers() == 0 {
                        continue;
                    }
                    let t = &self.tracks[track.index()];
                    debug!(
                        meeting = %m.id,
                        publisher = %t.participant,
                        track = %t.name,
                        receivers = a.receivers(),
                        above_2_percent_loss = a.receivers().saturating_sub(a.receivers_at_most(2)),
                        mean_fraction_lost = a.mean_fraction_lost(),
                        worst_fraction_lost = f64::from(a.worst_fraction_lost) / 256.0,
                        max_jitter_ms = f64::from(a.max_jitter_us) / 1000.0,
                        "audience"
                    );
                }
            }
        }
    }

    fn remove_relayed_track(&mut self, leg: LegId, track: TrackId) {
        if let Some(r) = self
            .legs
            .get_mut(leg.index())
            .and_then(|l| l.relay.as_mut())
        {
            r.announced.retain(|&(t, _)| t != track);
        }
        let _ = self.remove_track(track);
    }

    /// An announcement arrived over an upstream link: create, refresh or replace the
    /// tracks it names.
    fn on_announcement(&mut self, leg_id: LegId, body: &[u8], now: Instant) {
        let Some(tracks) = parse_announcement(body) else {
            self.drop_at(Some(leg_id), DropReason::Malformed);
            return;
        };
        let leg = &self.legs[leg_id.index()];
        let meeting_index = leg.meeting;
        let meeting = self.meetings[meeting_index.0 as usize].id.clone();
        let participant = leg.participant.clone();
        for announced in tracks {
            let existing = self.track_id(&meeting, &participant, &announced.name);
            if let Some(t) = existing {
                if self.announced(t) == announced {
                    if let Some(r) = self.legs[leg_id.index()].relay.as_mut() {
                        if let Some(entry) = r.announced.iter_mut().find(|(id, _)| *id == t) {
                            entry.1 = now;
                        }
                    }
                    continue;
                }
                self.remove_relayed_track(leg_id, t);
            }
            let config = TrackConfig {
                name: announced.name.clone(),
                kind: announced.kind,
                encodings: announced.ssrcs.clone(),
                leg: leg_id,
                clock_rate: Some(announced.clock_rate).filter(|&c| c != 0),
                codec: announced.codec,
                audio_level_extension: None,
                stream_ids: None,
            };
            let track = match self.add_track(&meeting, &participant, config) {
                Ok(t) => t,
                Err(e) => {
                    trace!(%meeting, track = %announced.name, "relayed track refused: {e}");
                    self.drop_at(Some(leg_id), DropReason::Malformed);
                    continue;
                }
            };
            if let Some(r) = self.legs[leg_id.index()].relay.as_mut() {
                r.announced.push((track, now));
            }
            info!(%meeting, link = %participant, track = %announced.name, "relayed track added");
            // Every viewer of the node receives it.
            let viewers: Vec<LegId> = self.meetings[meeting_index.0 as usize]
                .participants
                .values()
                .flat_map(|p| p.legs.iter().copied())
                .filter(|l| self.legs[l.index()].relay.is_none())
                .collect();
            for viewer in viewers {
                self.subscribe_to_relayed(viewer, track);
            }
        }
    }

    /// Subscribe a leg to a relayed track with no layer limit: the node chooses per
    /// viewer like for any subscriber.
    fn subscribe_to_relayed(&mut self, leg: LegId, track: TrackId) {
        let result = self.add_subscription(SubscriptionConfig {
            track,
            leg,
            ssrc: None,
            max_layers: Layers::ALL,
            payload_type: None,
        });
        if let Err(e) = result {
            trace!(?leg, ?track, "relayed track not subscribed: {e}");
        }
    }

    /// A leg was added to a meeting: if a link feeds the meeting, the leg receives
    /// every relayed track.
    pub(crate) fn subscribe_new_leg_to_feeds(&mut self, leg: LegId) {
        let meeting = self.legs[leg.index()].meeting;
        let feeds = &self.meetings[meeting.0 as usize].feeds;
        if feeds.is_empty() {
            return;
        }
        let tracks: Vec<TrackId> = feeds
            .iter()
            .filter_map(|f| self.legs[f.index()].relay.as_ref())
            .flat_map(|r| r.announced.iter().map(|&(t, _)| t))
            .collect();
        for track in tracks {
            self.subscribe_to_relayed(leg, track);
        }
    }

    /// A BYE over an upstream link: the parent's tracks with these SSRCs are gone.
    fn on_relay_bye(&mut self, leg_id: LegId, ssrcs: impl Iterator<Item = Ssrc>) {
        for ssrc in ssrcs {
            if let Some((track, _)) = self.legs[leg_id.index()].track_for(ssrc) {
                self.remove_relayed_track(leg_id, track);
            }
        }
    }

    /// RTCP that arrived on a link leg and is not a report. Returns `false` if the leg is
    /// not a link (the caller handles it as a participant's).
    pub(crate) fn on_relay_rtcp(
        &mut self,
        leg_id: LegId,
        packet: &rtcp::RtcpPacket<'_>,
        now: Instant,
    ) -> bool {
        let Some(direction) = self.legs[leg_id.index()]
            .relay
            .as_ref()
            .map(|r| r.direction)
        else {
            return false;
        };
        use rtcp::RtcpPacket as P;
        match (direction, packet) {
            (RelayDirection::Upstream, P::App(body)) => self.on_announcement(leg_id, body, now),
            (RelayDirection::Upstream, P::Bye(bye)) => self.on_relay_bye(leg_id, bye.ssrcs()),
            (RelayDirection::Downstream, P::App(body)) if audience::is_summary(body) => {
                self.on_audience_summary(leg_id, body, now)
            }
            (RelayDirection::Downstream, P::TransportFeedback(fb))
                if fb.fmt == super::feedback::FMT_GENERIC_NACK =>
            {
                self.on_relay_nack(leg_id, fb, now)
            }
            (RelayDirection::Downstream, P::PayloadFeedback(fb))
                if fb.fmt == super::feedback::FMT_PLI =>
            {
                self.on_relay_keyframe_request(leg_id, fb.media_ssrc, now)
            }
            (RelayDirection::Downstream, P::PayloadFeedback(fb))
                if fb.fmt == super::feedback::FMT_FIR =>
            {
                for (ssrc, _) in fb.fir_entries() {
                    self.on_relay_keyframe_request(leg_id, ssrc, now);
                }
            }
            _ => {}
        }
        true
    }

    /// The track and encoding of the sink's meeting that sends `ssrc`.
    fn meeting_encoding(&self, sink: LegId, ssrc: Ssrc) -> Option<(TrackId, usize)> {
        let meeting = self.legs[sink.index()].meeting;
        let m = self.meetings.get(meeting.0 as usize)?;
        m.participants
            .values()
            .flat_map(|p| p.tracks.iter().copied())
            .find_map(|t| {
                self.tracks[t.index()]
                    .encodings
                    .iter()
                    .position(|e| e.ssrc == ssrc)
                    .map(|e| (t, e))
            })
    }

    fn on_relay_keyframe_request(&mut self, sink: LegId, ssrc: Ssrc, now: Instant) {
        self.legs[sink.index()].stats.keyframe_requests_received += 1;
        if let Some((track, encoding)) = self.meeting_encoding(sink, ssrc) {
            self.request_keyframe(track, encoding, now);
        }
    }

    /// A child link NACKed packets of one of our SSRCs: resend what the cache holds,
    /// pass the misses on towards the publisher.
    fn on_relay_nack(&mut self, sink: LegId, fb: &Feedback<'_>, now: Instant) {
        let Some((track, encoding)) = self.meeting_encoding(sink, fb.media_ssrc) else {
            return;
        };
        let mut misses = [SeqNo(0); MAX_NACK_BATCH];
        let mut n = 0;
        let mut asked = 0;
        for sequence in fb.lost_sequence_numbers() {
            asked += 1;
            let e = &self.tracks[track.index()].encodings[encoding];
            if e.cache.get(sequence, now).is_some() {
                if self.relay_retransmissions.len() < RELAY_RETRANSMISSION_QUEUE_LEN {
                    self.relay_retransmissions.push_back(RelayRetransmission {
                        leg: sink,
                        track,
                        encoding: encoding as u8,
                        sequence,
                    });
                }
            } else if n < misses.len() {
                misses[n] = sequence;
                n += 1;
            }
        }
        self.legs[sink.index()].stats.nacks_received += asked;
        self.forward_nack_misses(track, encoding, &misses[..n]);
    }

    /// NACK towards the track's publisher the packets a downstream peer asked for that
    /// the cache does not hold, unless loss detection already requests them or the cache
    /// is past them (it had them and let them go: so did everyone upstream, and they
    /// would come too late): only packets this forwarder never received travel up.
    pub(crate) fn forward_nack_misses(
        &mut self,
        track: TrackId,
        encoding: usize,
        misses: &[SeqNo],
    ) {
        let Some(t) = self.tracks.get(track.index()) else {
            return;
        };
        // A late audio packet is of no use to a jitter buffer: audio is not repaired.
        if t.kind == TrackKind::Audio {
            return;
        }
        let Some(e) = t.encodings.get(encoding) else {
            return;
        };
        let mut lost = [SeqNo(0); MAX_NACK_BATCH];
        let mut n = 0;
        for &s in misses {
            // Already being requested, or too old for the parent to hold either.
            let futile = e.nack.is_missing(s) || e.cache.is_behind(s);
            if !futile && n < lost.len() && !lost[..n].contains(&s) {
                lost[n] = s;
                n += 1;
            }
        }
        if n == 0 {
            return;
        }
        let (leg, media) = (t.leg, e.ssrc);
        let l = &mut self.legs[leg.index()];
        if l.rtcp_route().is_none() {
            return;
        }
        l.stats.nacks_sent += n as u64;
        l.stats.nacks_forwarded += n as u64;
        let sender = l.rtcp_ssrc;
        self.queue_rtcp(leg, |b| rtcp::write_nack(b, sender, media, &lost[..n]));
    }

    /// A publisher's SR, passed on unchanged to the links its meeting feeds (their
    /// nodes relay it to their viewers, for lip sync).
    pub(crate) fn relay_sender_report(&mut self, track: TrackId, sr: &SenderReport<'_>) {
        let meeting = self.tracks[track.index()].meeting;
        let sinks = match self.meetings.get(meeting.0 as usize) {
            Some(m) if !m.sinks.is_empty() => m.sinks.clone(),
            _ => return,
        };
        let info = rtcp::SenderInfo {
            ntp_timestamp: sr.ntp_timestamp,
            rtp_timestamp: sr.rtp_timestamp,
            packet_count: sr.packet_count,
            octet_count: sr.octet_count,
        };
        let ssrc = sr.sender_ssrc;
        for sink in sinks {
            self.queue_rtcp(sink, |b| rtcp::write_sender_report(b, ssrc, &info, &[]));
        }
    }

    /// The next packet a child link NACKed, resent verbatim under the link's keys.
    pub(crate) fn poll_relay_retransmission(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let now = self.now;
        while let Some(r) = self.relay_retransmissions.pop_front() {
            let Some(track) = self.tracks.get(r.track.index()) else {
                continue;
            };
            let Some(e) = track.encodings.get(usize::from(r.encoding)) else {
                continue;
            };
            let Some(cached) = e.cache.get(r.sequence, now) else {
                continue;
            };
            let Some(leg) = self.legs.get_mut(r.leg.index()) else {
                continue;
            };
            let Some(destination) = leg.remote_rtp else {
                continue;
            };
            let len = cached.packet.len();
            let Some(out) = buf.get_mut(..len) else {
                continue;
            };
            out.copy_from_slice(cached.packet);
            match leg.srtp_out.protect_rtp(buf, len) {
                Ok(wire_len) => {
                    leg.stats.rtp_out.add(wire_len);
                    leg.stats.retransmitted += 1;
                    return Some(Transmit {
                        source: leg.local,
                        destination,
                        len: wire_len,
                    });
                }
                Err(_) => leg.stats.drops.add(DropReason::ProtectFailed),
            }
        }
        None
    }
}

/// An RTCP BYE for `ssrcs` (at most 31).
fn write_bye(buf: &mut [u8], ssrcs: &[Ssrc]) -> Result<usize, RtcpError> {
    let n = ssrcs.len().min(31);
    let len = 4 + 4 * n;
    let out = buf.get_mut(..len).ok_or(RtcpError::BufferTooSmall)?;
    out[0] = 0x80 | n as u8;
    out[1] = rtcp::packet_type::BYE;
    out[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
    for (i, s) in ssrcs.iter().take(n).enumerate() {
        out[4 + 4 * i..8 + 4 * i].copy_from_slice(&s.0.to_be_bytes());
    }
    Ok(len)
}

#[cfg(test)]
mod tests;
