//! Reconciliation: what the control plane wants the forwarder to hold, turned into
//! configuration calls on the sans-IO [`Forwarder`] cores. Pure: no I/O, no clock, no
//! generated types (the client converts them, see `super`), so it is tested against a
//! real core with SRTP packets fed through it.
//!
//! # The model
//!
//! The client keeps a [`Reconciler`] holding the last desired state it applied: meetings
//! (with the address their legs send to, the meeting's own port on this forwarder) and
//! legs (one per participant: SRTP profile and keys, whether it may publish, its room,
//! its tracks). A snapshot replaces that state; a batch of changes edits it. Either way
//! the reconciler compares, meeting by meeting, the state before with the state after,
//! and returns per meeting a [`Batch`] of [`Op`]s that take a core holding the first to
//! one holding the second. The client runs each batch on the shard that owns the
//! meeting's port ([`apply`] on the shard's thread).
//!
//! In a core, a leg is a participant with one leg named [`LEG_NAME`], or, for a browser,
//! two: [`PUBLISH_LEG`] carries its tracks and [`SUBSCRIBE_LEG`] its subscriptions (its
//! two peer connections, docs/webrtc.md). Tracks are named after their kind (`audio`,
//! `camera`, `screen`; a second one of a kind gets `-1`, ...).
//!
//! # Rules
//!
//! * A meeting exists in a core once it has a plan (`MeetingPlan`); legs that arrive
//!   before their meeting's plan wait in the model. A meeting whose address changes is
//!   removed at the old one and built afresh at the new one (another port may be another
//!   shard).
//! * A new leg adds a participant with a leg that sends from the meeting's address, RTP
//!   and RTCP muxed (RFC 5761), its remote address unknown until its first authenticated
//!   packet. Every SSRC its join assigned is declared for learning, so a participant that
//!   may not publish is still found from its RTCP.
//! * Tracks exist only while the leg may publish (`can_publish`) and sends them (not
//!   `paused`: a muted microphone or camera, a screen not shared); they are removed
//!   when it stops, and a track whose SSRCs, codec or clock rate change is replaced. So a
//!   large meeting costs subscriptions for what is on air, not for every join.
//! * Subscriptions follow the default rule of the protocol: every leg receives every
//!   track published by the other legs of its room (the main room, or the same breakout
//!   room). They are added and removed as legs join, leave, move rooms, or start or stop
//!   publishing.
//! * Upserting a leg equal to the one held changes nothing: no re-keying, subscriptions
//!   kept (their SSRC, sequence and timestamp rewriting continue). A leg whose profile or
//!   either key changes is re-created: removed with everything attached, then added.
//!   A browser's leg whose ICE credentials alone change is restarted in place (an ICE
//!   restart keeps keys and subscriptions); one whose certificate fingerprint changes is
//!   re-created (a new DTLS handshake).
//!
//! * Relay links (webinar relay trees, see `crate::sfu` `relay`) belong to the meeting
//!   on this forwarder they serve (`RelayLink.local_meeting_id`): the relay node an
//!   upstream end feeds, the meeting or node a downstream end sends. Like legs, they
//!   wait for their meeting's plan and go with it; new keys or a new peer address update
//!   a link in place (a node keeps its tracks and its viewers their subscriptions), a
//!   new direction re-creates it; an unchanged upsert changes nothing.
//!
//! Only the pairs of legs where at least one side changed are compared, so a join into a
//! meeting of N legs costs O(N x tracks), not O(N^2).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use tracing::warn;

use crate::codec::Codec;
use crate::ice::Credentials;
use crate::ids::{MeetingId, ParticipantId, Ssrc};
use crate::sfu::{
    ConfigureError, Forwarder, Layers, LegConfig, LegSecurity, RelayDirection, RelayLinkConfig,
    StreamExtensions, StreamIds, SubscriptionConfig, TrackConfig, TrackKind, WebrtcTransport,
};
use crate::srtp::MasterKey;

/// The name of the one leg of a plain SRTP participant in a core.
pub const LEG_NAME: &str = "srtp";
/// A browser's publish connection: its tracks.
pub const PUBLISH_LEG: &str = "webrtc-pub";
/// A browser's subscribe connection: its subscriptions.
pub const SUBSCRIBE_LEG: &str = "webrtc-sub";

/// What a track carries, as the control plane names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PublishedKind {
    Audio,
    Camera,
    Screen,
}

impl PublishedKind {
    fn name(self) -> &'static str {
        match self {
            PublishedKind::Audio => "audio",
            PublishedKind::Camera => "camera",
            PublishedKind::Screen => "screen",
        }
    }

    fn core_kind(self) -> TrackKind {
        match self {
            PublishedKind::Audio => TrackKind::Audio,
            PublishedKind::Camera => TrackKind::Video,
            PublishedKind::Screen => TrackKind::Screen,
        }
    }
}

/// A track a leg may publish: the SSRCs its join assigned (one per simulcast encoding,
/// lowest quality first), its codec and RTP clock rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTrack {
    pub kind: PublishedKind,
    pub ssrcs: Vec<Ssrc>,
    /// The payload format's encoding name: `opus`, `VP8`, ...
    pub codec: String,
    /// 0: the kind's default.
    pub clock_rate: u32,
    /// Audio: the RFC 8285 id of the audio-level extension (RFC 6464), for dominant
    /// speaker detection.
    pub audio_level_extension: Option<u8>,
    /// A browser's track: the MID and RIDs that bind the SSRCs it picked.
    pub stream_ids: Option<StreamIds>,
    /// Not sent now (a muted microphone or camera, a screen not shared): no track is
    /// held for it, so nobody subscribes to it; its SSRCs still identify the leg.
    pub paused: bool,
}

/// One participant's leg as the control plane wants it. Debug shows no key material
/// ([`MasterKey`] redacts it, [`DesiredConnection`] leaves the ICE password out).
#[derive(Debug, Clone)]
pub struct DesiredLeg {
    pub transport: DesiredTransport,
    pub can_publish: bool,
    /// `None`: the main room.
    pub breakout: Option<String>,
    pub tracks: Vec<DesiredTrack>,
}

/// How a participant's media is keyed and reaches the forwarder.
#[derive(Debug, Clone)]
pub enum DesiredTransport {
    /// Plain SRTP with keys from the join.
    Sdes {
        /// What the participant protects with: the forwarder unprotects with it.
        inbound_key: MasterKey,
        /// What the forwarder protects towards the participant with.
        outbound_key: MasterKey,
    },
    /// A browser: two WebRTC connections, keys from DTLS.
    Webrtc(DesiredWebrtc),
}

/// A browser's two connections (docs/webrtc.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredWebrtc {
    /// The browser's certificate fingerprint (RFC 8122 form), both connections'.
    pub remote_fingerprint: String,
    pub publish: DesiredConnection,
    pub subscribe: DesiredConnection,
}

/// One WebRTC connection: one leg in the core.
#[derive(Clone, PartialEq, Eq)]
pub struct DesiredConnection {
    pub credentials: Credentials,
    pub extensions: StreamExtensions,
    /// What the browser negotiated for what it receives.
    pub payload_types: Vec<(Codec, u8)>,
}

impl std::fmt::Debug for DesiredConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesiredConnection")
            .field("credentials", &self.credentials)
            .field("extensions", &self.extensions)
            .field("payload_types", &self.payload_types)
            .finish()
    }
}

impl DesiredConnection {
    fn transport(&self, fingerprint: &str) -> WebrtcTransport {
        WebrtcTransport {
            ice: self.credentials.clone(),
            remote_fingerprint: fingerprint.to_owned(),
            extensions: self.extensions,
            payload_types: self.payload_types.clone(),
        }
    }

    fn leg_config(&self, name: &str, fingerprint: &str, listen: SocketAddr) -> LegConfig {
        LegConfig {
            name: name.to_owned(),
            security: LegSecurity::Webrtc(Box::new(self.transport(fingerprint))),
            remote: None,
            remote_rtcp: None,
            rtcp_mux: true,
            local: Some(listen),
            local_rtcp: None,
        }
    }
}

impl DesiredLeg {
    /// Same keys (and so the same profile), or for a browser the same certificate: the
    /// legs' SRTP contexts can stay (a browser's other changes are made in place).
    fn same_transport(&self, other: &DesiredLeg) -> bool {
        match (&self.transport, &other.transport) {
            (
                DesiredTransport::Sdes {
                    inbound_key: a_in,
                    outbound_key: a_out,
                },
                DesiredTransport::Sdes {
                    inbound_key: b_in,
                    outbound_key: b_out,
                },
            ) => a_in.same_material(b_in) && a_out.same_material(b_out),
            (DesiredTransport::Webrtc(a), DesiredTransport::Webrtc(b)) => {
                a.remote_fingerprint == b.remote_fingerprint
            }
            _ => false,
        }
    }

    /// In-place changes that take a browser's legs from `self` to `next` (same
    /// certificate): ICE restarts, renegotiated extension ids or payload types.
    fn webrtc_updates(&self, next: &DesiredLeg) -> Vec<(&'static str, WebrtcTransport)> {
        let (DesiredTransport::Webrtc(a), DesiredTransport::Webrtc(b)) =
            (&self.transport, &next.transport)
        else {
            return Vec::new();
        };
        [
            (PUBLISH_LEG, &a.publish, &b.publish),
            (SUBSCRIBE_LEG, &a.subscribe, &b.subscribe),
        ]
        .into_iter()
        .filter(|(_, before, after)| before != after)
        .map(|(name, _, after)| (name, after.transport(&b.remote_fingerprint)))
        .collect()
    }

    /// The core legs of this participant.
    fn leg_configs(&self, listen: SocketAddr) -> Vec<LegConfig> {
        match &self.transport {
            DesiredTransport::Sdes {
                inbound_key,
                outbound_key,
            } => vec![LegConfig {
                name: LEG_NAME.to_owned(),
                security: LegSecurity::Sdes {
                    receive_key: inbound_key.clone(),
                    send_key: outbound_key.clone(),
                },
                remote: None,
                remote_rtcp: None,
                rtcp_mux: true,
                local: Some(listen),
                local_rtcp: None,
            }],
            DesiredTransport::Webrtc(w) => vec![
                w.publish
                    .leg_config(PUBLISH_LEG, &w.remote_fingerprint, listen),
                w.subscribe
                    .leg_config(SUBSCRIBE_LEG, &w.remote_fingerprint, listen),
            ],
        }
    }

    fn same(&self, other: &DesiredLeg) -> bool {
        self.same_transport(other)
            && self.webrtc_updates(other).is_empty()
            && self.can_publish == other.can_publish
            && self.breakout == other.breakout
            && self.tracks == other.tracks
    }

    /// The tracks the core should hold for this leg, by name: those it may publish and
    /// sends now.
    fn published(&self) -> BTreeMap<String, &DesiredTrack> {
        if !self.can_publish {
            return BTreeMap::new();
        }
        let mut tracks = track_names(&self.tracks);
        tracks.retain(|_, t| !t.paused);
        tracks
    }

    /// Every SSRC the join assigned, whether or not the leg may publish: a plain leg's
    /// address is learned from them (a browser's comes from ICE).
    fn ssrcs(&self) -> Vec<Ssrc> {
        if matches!(self.transport, DesiredTransport::Webrtc(_)) {
            return Vec::new();
        }
        self.tracks
            .iter()
            .flat_map(|t| t.ssrcs.iter().copied())
            .collect()
    }
}

/// Names tracks by kind: the first of a kind is `audio`, the next `audio-1`, ...
fn track_names(tracks: &[DesiredTrack]) -> BTreeMap<String, &DesiredTrack> {
    let mut seen: BTreeMap<PublishedKind, usize> = BTreeMap::new();
    tracks
        .iter()
        .map(|t| {
            let n = seen.entry(t.kind).or_default();
            let name = match *n {
                0 => t.kind.name().to_owned(),
                n => format!("{}-{n}", t.kind.name()),
            };
            *n += 1;
            (name, t)
        })
        .collect()
}

/// One end of a relay link as the control plane wants it. Debug shows no key material.
#[derive(Debug, Clone)]
pub struct DesiredLink {
    pub direction: RelayDirection,
    /// The peer's address (its meeting's or node's).
    pub peer: SocketAddr,
    pub send_key: MasterKey,
    pub receive_key: MasterKey,
}

impl DesiredLink {
    fn same(&self, other: &DesiredLink) -> bool {
        self.direction == other.direction
            && self.peer == other.peer
            && self.send_key.same_material(&other.send_key)
            && self.receive_key.same_material(&other.receive_key)
    }
}

/// A meeting in the desired state.
#[derive(Debug, Clone, Default)]
pub struct DesiredMeeting {
    /// The forwarder's address the meeting's legs send to (the meeting's own port),
    /// as bound here. `None` until the meeting's plan arrives.
    pub listen: Option<SocketAddr>,
    /// The recording the meeting's media is tapped for (`sfu::tap`), if recorded.
    pub recording: Option<String>,
    pub legs: BTreeMap<ParticipantId, DesiredLeg>,
    /// Relay link ends that belong to this meeting, by link id.
    pub links: BTreeMap<String, DesiredLink>,
}

/// Everything the control plane wants this forwarder to hold.
#[derive(Debug, Clone, Default)]
pub struct DesiredState {
    pub meetings: BTreeMap<MeetingId, DesiredMeeting>,
}

impl DesiredState {
    /// Apply one change to the model (no core is touched).
    fn change(&mut self, change: Change) {
        match change {
            Change::MeetingUpserted {
                meeting,
                listen,
                recording,
            } => {
                let m = self.meetings.entry(meeting).or_default();
                m.listen = Some(listen);
                m.recording = recording;
            }
            Change::MeetingRemoved(meeting) => {
                self.meetings.remove(&meeting);
            }
            Change::LegUpserted {
                meeting,
                participant,
                leg,
            } => {
                self.meetings
                    .entry(meeting)
                    .or_default()
                    .legs
                    .insert(participant, leg);
            }
            Change::LegRemoved {
                meeting,
                participant,
            } => {
                if let Some(m) = self.meetings.get_mut(&meeting) {
                    m.legs.remove(&participant);
                    if m.listen.is_none() && m.legs.is_empty() && m.links.is_empty() {
                        self.meetings.remove(&meeting);
                    }
                }
            }
            Change::LinkUpserted { meeting, id, link } => {
                self.remove_link(&id);
                self.meetings
                    .entry(meeting)
                    .or_default()
                    .links
                    .insert(id, link);
            }
            Change::LinkRemoved(id) => self.remove_link(&id),
        }
    }

    /// Take the link `id` out of whichever meeting holds it.
    fn remove_link(&mut self, id: &str) {
        let mut empty = None;
        for (meeting_id, m) in &mut self.meetings {
            if m.links.remove(id).is_some()
                && m.listen.is_none()
                && m.legs.is_empty()
                && m.links.is_empty()
            {
                empty = Some(meeting_id.clone());
            }
        }
        if let Some(meeting) = empty {
            self.meetings.remove(&meeting);
        }
    }

    /// The meeting that holds the link `id`.
    fn meeting_of_link(&self, id: &str) -> Option<&MeetingId> {
        self.meetings
            .iter()
            .find(|(_, m)| m.links.contains_key(id))
            .map(|(id, _)| id)
    }

    /// Legs in meetings that have a plan, per meeting.
    pub fn legs_per_meeting(&self) -> impl Iterator<Item = (&MeetingId, usize)> {
        self.meetings
            .iter()
            .filter(|(_, m)| m.listen.is_some())
            .map(|(id, m)| (id, m.legs.len()))
    }
}

/// One change of a `DesiredStateChanges` batch. Removing a meeting removes its legs.
#[derive(Debug, Clone)]
pub enum Change {
    MeetingUpserted {
        meeting: MeetingId,
        listen: SocketAddr,
        recording: Option<String>,
    },
    MeetingRemoved(MeetingId),
    LegUpserted {
        meeting: MeetingId,
        participant: ParticipantId,
        leg: DesiredLeg,
    },
    LegRemoved {
        meeting: MeetingId,
        participant: ParticipantId,
    },
    /// A relay link end, in the meeting (or relay node) it belongs to here.
    LinkUpserted {
        meeting: MeetingId,
        id: String,
        link: DesiredLink,
    },
    /// A relay link end, by id, from whichever meeting holds it.
    LinkRemoved(String),
}

impl Change {
    /// The meetings the change may touch, as held in `state` before it.
    fn meetings(&self, state: &DesiredState) -> Vec<MeetingId> {
        match self {
            Change::MeetingUpserted { meeting, .. }
            | Change::MeetingRemoved(meeting)
            | Change::LegUpserted { meeting, .. }
            | Change::LegRemoved { meeting, .. } => vec![meeting.clone()],
            Change::LinkUpserted { meeting, id, .. } => {
                let mut out = vec![meeting.clone()];
                out.extend(state.meeting_of_link(id).cloned());
                out
            }
            Change::LinkRemoved(id) => state.meeting_of_link(id).cloned().into_iter().collect(),
        }
    }
}

/// One configuration call on a core, within the meeting of its [`Batch`].
#[derive(Debug, Clone)]
pub enum Op {
    AddMeeting,
    /// Removes everything in it.
    RemoveMeeting,
    /// Starts tapping the meeting's media for a recording, or stops (`None`).
    SetRecording(Option<String>),
    /// One end of a relay link.
    AddLink {
        config: RelayLinkConfig,
    },
    RemoveLink {
        id: String,
    },
    /// New keys or peer address for a link end, which keeps its tracks.
    UpdateLink {
        config: RelayLinkConfig,
    },
    /// A participant with its legs (one, or a browser's two).
    AddLeg {
        participant: ParticipantId,
        configs: Vec<LegConfig>,
        /// Declared for learning the peer's address (see [`Forwarder::add_learning_ssrcs`]).
        learning_ssrcs: Vec<Ssrc>,
    },
    /// The participant with its leg, tracks and subscriptions, and every subscription to
    /// its tracks.
    RemoveLeg {
        participant: ParticipantId,
    },
    AddTrack {
        participant: ParticipantId,
        name: String,
        track: DesiredTrack,
    },
    /// With every subscription to it.
    RemoveTrack {
        participant: ParticipantId,
        name: String,
    },
    Subscribe(SubscriptionKey),
    Unsubscribe(SubscriptionKey),
    /// One of a browser's legs renegotiated: new ICE credentials, extension ids,
    /// payload types.
    UpdateWebrtc {
        participant: ParticipantId,
        leg: &'static str,
        transport: WebrtcTransport,
    },
}

/// A subscription by names: `subscriber` receives `publisher`'s track `track`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SubscriptionKey {
    pub subscriber: ParticipantId,
    pub publisher: ParticipantId,
    pub track: String,
}

/// The operations on one meeting, to run in order on the shard that owns `listen`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub meeting: MeetingId,
    pub listen: SocketAddr,
    pub ops: Vec<Op>,
}

/// Holds the desired state last applied and turns new desired states into [`Batch`]es.
#[derive(Debug, Default)]
pub struct Reconciler {
    state: DesiredState,
}

impl Reconciler {
    pub fn new() -> Self {
        Reconciler::default()
    }

    /// What the cores were last told to hold.
    pub fn state(&self) -> &DesiredState {
        &self.state
    }

    /// A snapshot replaces everything: what it lacks is removed, what it has that is
    /// already held unchanged is left alone.
    pub fn snapshot(&mut self, new: DesiredState) -> Vec<Batch> {
        let ids: BTreeSet<&MeetingId> = self
            .state
            .meetings
            .keys()
            .chain(new.meetings.keys())
            .collect();
        let mut batches = Vec::new();
        for id in ids {
            diff_meeting(
                id,
                self.state.meetings.get(id),
                new.meetings.get(id),
                &mut batches,
            );
        }
        self.state = new;
        batches
    }

    /// Apply changes in order; returns what the cores must do, per meeting touched.
    pub fn changes(&mut self, changes: Vec<Change>) -> Vec<Batch> {
        let mut before: BTreeMap<MeetingId, Option<DesiredMeeting>> = BTreeMap::new();
        for change in changes {
            for id in change.meetings(&self.state) {
                if let std::collections::btree_map::Entry::Vacant(slot) = before.entry(id) {
                    let old = self.state.meetings.get(slot.key()).cloned();
                    slot.insert(old);
                }
            }
            self.state.change(change);
        }
        let mut batches = Vec::new();
        for (id, old) in &before {
            diff_meeting(id, old.as_ref(), self.state.meetings.get(id), &mut batches);
        }
        batches
    }
}

/// The batches that take a core from `old` to `new` for one meeting.
fn diff_meeting(
    id: &MeetingId,
    old: Option<&DesiredMeeting>,
    new: Option<&DesiredMeeting>,
    batches: &mut Vec<Batch>,
) {
    let empty = BTreeMap::new();
    let old_listen = old.and_then(|m| m.listen);
    let new_listen = new.and_then(|m| m.listen);
    let old_legs = old.map_or(&empty, |m| &m.legs);
    let new_legs = new.map_or(&empty, |m| &m.legs);
    let no_links = BTreeMap::new();
    let old_links = old.map_or(&no_links, |m| &m.links);
    let new_links = new.map_or(&no_links, |m| &m.links);
    match (old_listen, new_listen) {
        (None, None) => {}
        (Some(a), Some(b)) if a == b => {
            let mut ops = Vec::new();
            let recording = new.and_then(|m| m.recording.clone());
            if old.and_then(|m| m.recording.as_ref()) != recording.as_ref() {
                ops.push(Op::SetRecording(recording));
            }
            diff_legs(a, old_legs, new_legs, &mut ops);
            diff_links(a, old_links, new_links, &mut ops);
            if !ops.is_empty() {
                batches.push(Batch {
                    meeting: id.clone(),
                    listen: a,
                    ops,
                });
            }
        }
        (old_listen, new_listen) => {
            if let Some(a) = old_listen {
                batches.push(Batch {
                    meeting: id.clone(),
                    listen: a,
                    ops: vec![Op::RemoveMeeting],
                });
            }
            if let Some(b) = new_listen {
                let mut ops = vec![Op::AddMeeting];
                if let Some(recording) = new.and_then(|m| m.recording.clone()) {
                    ops.push(Op::SetRecording(Some(recording)));
                }
                diff_legs(b, &empty, new_legs, &mut ops);
                diff_links(b, &no_links, new_links, &mut ops);
                batches.push(Batch {
                    meeting: id.clone(),
                    listen: b,
                    ops,
                });
            }
        }
    }
}

type Legs = BTreeMap<ParticipantId, DesiredLeg>;

/// The operations that take a meeting's relay links from `old` to `new`: those gone (or
/// turned around) are removed, those with new keys or a new peer updated in place (a
/// node's tracks and its viewers' subscriptions carry on), then those new are added.
fn diff_links(
    listen: SocketAddr,
    old: &BTreeMap<String, DesiredLink>,
    new: &BTreeMap<String, DesiredLink>,
    ops: &mut Vec<Op>,
) {
    let config = |id: &String, link: &DesiredLink| RelayLinkConfig {
        id: id.clone(),
        direction: link.direction,
        local: listen,
        remote: link.peer,
        send_key: link.send_key.clone(),
        receive_key: link.receive_key.clone(),
    };
    for (id, link) in old {
        if !new.get(id).is_some_and(|n| n.direction == link.direction) {
            ops.push(Op::RemoveLink { id: id.clone() });
        }
    }
    for (id, link) in new {
        match old.get(id) {
            Some(o) if o.same(link) => {}
            Some(o) if o.direction == link.direction => ops.push(Op::UpdateLink {
                config: config(id, link),
            }),
            _ => ops.push(Op::AddLink {
                config: config(id, link),
            }),
        }
    }
}

/// The operations that take a meeting's legs from `old` to `new` in a core, appended to
/// `ops` in an order the core accepts: subscriptions that go, legs and tracks that go,
/// legs and tracks that come, subscriptions that come.
fn diff_legs(listen: SocketAddr, old: &Legs, new: &Legs, ops: &mut Vec<Op>) {
    let mut changed: BTreeSet<&ParticipantId> = BTreeSet::new();
    // Removed, or re-created because their keys changed: the core drops everything
    // attached to them.
    let mut dropped: BTreeSet<&ParticipantId> = BTreeSet::new();
    let mut added: BTreeSet<&ParticipantId> = BTreeSet::new();
    let mut updates = Vec::new();
    for (p, leg) in old {
        match new.get(p) {
            None => {
                changed.insert(p);
                dropped.insert(p);
            }
            Some(next) if !leg.same_transport(next) => {
                changed.insert(p);
                dropped.insert(p);
                added.insert(p);
            }
            Some(next) if !leg.same(next) => {
                changed.insert(p);
                for (name, transport) in leg.webrtc_updates(next) {
                    updates.push(Op::UpdateWebrtc {
                        participant: p.clone(),
                        leg: name,
                        transport,
                    });
                }
            }
            Some(_) => {}
        }
    }
    for p in new.keys() {
        if !old.contains_key(p) {
            changed.insert(p);
            added.insert(p);
        }
    }
    if changed.is_empty() {
        return;
    }

    // Tracks of legs kept: those that go (removed or replaced) and those that come.
    let mut tracks_gone: BTreeSet<(&ParticipantId, String)> = BTreeSet::new();
    let mut tracks_new: Vec<(&ParticipantId, String, &DesiredTrack)> = Vec::new();
    for &p in &changed {
        if dropped.contains(p) {
            continue;
        }
        let (Some(before), Some(after)) = (old.get(p), new.get(p)) else {
            continue;
        };
        let (before, after) = (before.published(), after.published());
        for (name, track) in &before {
            if after.get(name) != Some(track) {
                tracks_gone.insert((p, name.clone()));
            }
        }
        for (name, track) in after {
            if before.get(&name) != Some(&track) {
                tracks_new.push((p, name, track));
            }
        }
    }

    // Subscriptions with a changed leg on either side. The core drops by itself those of
    // dropped legs and gone tracks: they are no longer there to remove.
    let before: BTreeSet<SubscriptionKey> = subscriptions_involving(old, &changed)
        .into_iter()
        .filter(|s| {
            !dropped.contains(&s.subscriber)
                && !dropped.contains(&s.publisher)
                && !tracks_gone.contains(&(&s.publisher, s.track.clone()))
        })
        .collect();
    let after = subscriptions_involving(new, &changed);

    for s in before.difference(&after) {
        ops.push(Op::Unsubscribe(s.clone()));
    }
    for &p in &dropped {
        ops.push(Op::RemoveLeg {
            participant: p.clone(),
        });
    }
    for (p, name) in tracks_gone {
        ops.push(Op::RemoveTrack {
            participant: p.clone(),
            name,
        });
    }
    for &p in &added {
        // `added` holds only participants of `new`.
        let Some(leg) = new.get(p) else { continue };
        ops.push(Op::AddLeg {
            participant: p.clone(),
            configs: leg.leg_configs(listen),
            learning_ssrcs: leg.ssrcs(),
        });
        for (name, track) in leg.published() {
            ops.push(Op::AddTrack {
                participant: p.clone(),
                name,
                track: track.clone(),
            });
        }
    }
    for (p, name, track) in tracks_new {
        ops.push(Op::AddTrack {
            participant: p.clone(),
            name,
            track: track.clone(),
        });
    }
    ops.extend(updates);
    for s in after.difference(&before) {
        ops.push(Op::Subscribe(s.clone()));
    }
}

/// The default rule, restricted to pairs with a leg of `who` on at least one side: every
/// leg receives every track published by the other legs of its room.
fn subscriptions_involving(
    legs: &Legs,
    who: &BTreeSet<&ParticipantId>,
) -> BTreeSet<SubscriptionKey> {
    let mut out = BTreeSet::new();
    for &p in who {
        let Some(leg) = legs.get(p) else { continue };
        let mine = leg.published();
        for (q, other) in legs {
            if q == p || other.breakout != leg.breakout {
                continue;
            }
            for name in other.published().into_keys() {
                out.insert(SubscriptionKey {
                    subscriber: p.clone(),
                    publisher: q.clone(),
                    track: name,
                });
            }
            for name in mine.keys() {
                out.insert(SubscriptionKey {
                    subscriber: q.clone(),
                    publisher: p.clone(),
                    track: name.clone(),
                });
            }
        }
    }
    out
}

/// How a batch went: operations applied, and the errors of those refused (each logged).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub ok: usize,
    pub failed: Vec<String>,
}

/// Run a batch on a core (on its shard's thread). An operation the core refuses is
/// logged and skipped; the rest still run, so one bad leg does not hold up a meeting.
pub fn apply(core: &mut Forwarder, batch: Batch) -> Applied {
    let mut applied = Applied::default();
    let meeting = batch.meeting;
    for op in batch.ops {
        let what = describe(&op);
        match apply_op(core, &meeting, op) {
            Ok(()) => applied.ok += 1,
            Err(e) => {
                warn!(%meeting, op = %what, "control plane change not applied: {e}");
                applied.failed.push(format!("{what}: {e}"));
            }
        }
    }
    applied
}

/// A short description for logs, without keys.
fn describe(op: &Op) -> String {
    match op {
        Op::AddMeeting => "add meeting".into(),
        Op::RemoveMeeting => "remove meeting".into(),
        Op::SetRecording(Some(recording)) => format!("record as `{recording}`"),
        Op::SetRecording(None) => "stop recording".into(),
        Op::AddLink { config } => format!(
            "add {} relay link `{}` to {}",
            config.direction.as_str(),
            config.id,
            config.remote
        ),
        Op::RemoveLink { id } => format!("remove relay link `{id}`"),
        Op::UpdateLink { config } => format!("re-key relay link `{}`", config.id),
        Op::AddLeg { participant, .. } => format!("add leg of `{participant}`"),
        Op::RemoveLeg { participant } => format!("remove leg of `{participant}`"),
        Op::AddTrack {
            participant, name, ..
        } => format!("add track `{participant}/{name}`"),
        Op::RemoveTrack { participant, name } => {
            format!("remove track `{participant}/{name}`")
        }
        Op::Subscribe(s) => format!(
            "subscribe `{}` to `{}/{}`",
            s.subscriber, s.publisher, s.track
        ),
        Op::Unsubscribe(s) => format!(
            "unsubscribe `{}` from `{}/{}`",
            s.subscriber, s.publisher, s.track
        ),
        Op::UpdateWebrtc {
            participant, leg, ..
        } => format!("update WebRTC leg `{participant}/{leg}`"),
    }
}

fn apply_op(core: &mut Forwarder, meeting: &MeetingId, op: Op) -> Result<(), ConfigureError> {
    match op {
        Op::AddMeeting => core.add_meeting(meeting.clone()),
        Op::RemoveMeeting => core.remove_meeting(meeting),
        Op::SetRecording(recording) => core.set_recording(meeting, recording.as_deref()),
        Op::AddLink { config } => core.add_relay_link(meeting, config).map(|_| ()),
        Op::RemoveLink { id } => core.remove_relay_link(meeting, &id),
        Op::UpdateLink { config } => core.update_relay_link(meeting, config),
        Op::AddLeg {
            participant,
            configs,
            learning_ssrcs,
        } => {
            core.add_participant(meeting, participant.clone())?;
            for config in configs {
                let added = core
                    .add_leg(meeting, &participant, config)
                    .and_then(|leg| core.add_learning_ssrcs(leg, &learning_ssrcs));
                if let Err(e) = added {
                    // Leave no participant without its legs behind.
                    let _ = core.remove_participant(meeting, &participant);
                    return Err(e);
                }
            }
            Ok(())
        }
        Op::UpdateWebrtc {
            participant,
            leg,
            transport,
        } => {
            let leg = core
                .leg_id(meeting, &participant, leg)
                .ok_or(ConfigureError::NoSuchLeg)?;
            core.update_webrtc(leg, &transport)
        }
        Op::RemoveLeg { participant } => core.remove_participant(meeting, &participant),
        Op::AddTrack {
            participant,
            name,
            track,
        } => {
            let leg = leg_of(core, meeting, &participant, PUBLISH_LEG)?;
            core.add_track(
                meeting,
                &participant,
                TrackConfig {
                    name,
                    kind: track.kind.core_kind(),
                    encodings: track.ssrcs,
                    leg,
                    clock_rate: (track.clock_rate != 0).then_some(track.clock_rate),
                    codec: Codec::from_encoding_name(&track.codec),
                    audio_level_extension: track.audio_level_extension,
                    stream_ids: track.stream_ids,
                },
            )
            .map(|_| ())
        }
        Op::RemoveTrack { participant, name } => {
            let track = core
                .track_id(meeting, &participant, &name)
                .ok_or(ConfigureError::NoSuchTrack)?;
            core.remove_track(track)
        }
        Op::Subscribe(s) => {
            let leg = leg_of(core, meeting, &s.subscriber, SUBSCRIBE_LEG)?;
            let track = core
                .track_id(meeting, &s.publisher, &s.track)
                .ok_or(ConfigureError::NoSuchTrack)?;
            core.add_subscription(SubscriptionConfig {
                track,
                leg,
                ssrc: None,
                max_layers: Layers::ALL,
                payload_type: None,
            })
            .map(|_| ())
        }
        Op::Unsubscribe(s) => {
            let track = core
                .track_id(meeting, &s.publisher, &s.track)
                .ok_or(ConfigureError::NoSuchTrack)?;
            let subscription = core
                .subscriptions_of(meeting, &s.subscriber)
                .into_iter()
                .find(|&id| core.subscription_track(id) == Some(track))
                .ok_or(ConfigureError::NoSuchSubscription)?;
            core.remove_subscription(subscription)
        }
    }
}

/// A participant's plain leg, or its browser leg `webrtc` (which carries tracks, or
/// subscriptions).
fn leg_of(
    core: &Forwarder,
    meeting: &MeetingId,
    participant: &ParticipantId,
    webrtc: &str,
) -> Result<crate::ids::LegId, ConfigureError> {
    core.leg_id(meeting, participant, LEG_NAME)
        .or_else(|| core.leg_id(meeting, participant, webrtc))
        .ok_or(ConfigureError::NoSuchLeg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::{ForwarderConfig, RtxPayloadType, MIN_TRANSMIT_BUFFER_LEN};
    use crate::srtp::{SrtpContext, SrtpProfile};
    use std::time::{Duration, Instant};

    const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;

    /// One simulated participant: it protects with the leg's inbound key and unprotects
    /// with its outbound key, as a real one would.
    struct Peer {
        address: SocketAddr,
        inbound: MasterKey,
        outbound: MasterKey,
        sender: SrtpContext,
        receiver: SrtpContext,
        audio: Ssrc,
        camera: Ssrc,
        seq: u16,
    }

    /// A core, the reconciler feeding it, and the participants around it, on a virtual
    /// clock with no sockets.
    struct Net {
        now: Instant,
        core: Forwarder,
        reconciler: Reconciler,
        peers: BTreeMap<String, Peer>,
    }

    fn listen() -> SocketAddr {
        "192.0.2.1:40100".parse().unwrap()
    }

    fn m() -> MeetingId {
        "m".into()
    }

    impl Net {
        fn new() -> Self {
            let now = Instant::now();
            Net {
                now,
                core: Forwarder::new(ForwarderConfig::default(), now),
                reconciler: Reconciler::new(),
                peers: BTreeMap::new(),
            }
        }

        fn peer(&mut self, name: &str) -> &mut Peer {
            let n = self.peers.len() as u32;
            self.peers.entry(name.to_owned()).or_insert_with(|| {
                let inbound = MasterKey::generate(PROFILE);
                let outbound = MasterKey::generate(PROFILE);
                Peer {
                    address: SocketAddr::new([198, 51, 100, 1].into(), 5000 + n as u16),
                    sender: SrtpContext::new(&inbound),
                    receiver: SrtpContext::new(&outbound),
                    inbound,
                    outbound,
                    audio: Ssrc(0x1000 + n),
                    camera: Ssrc(0x2000 + n),
                    seq: 0,
                }
            })
        }

        /// The leg the control plane would send for `name`.
        fn leg(&mut self, name: &str, can_publish: bool, room: Option<&str>) -> DesiredLeg {
            let peer = self.peer(name);
            DesiredLeg {
                transport: DesiredTransport::Sdes {
                    inbound_key: peer.inbound.clone(),
                    outbound_key: peer.outbound.clone(),
                },
                can_publish,
                breakout: room.map(str::to_owned),
                tracks: vec![
                    DesiredTrack {
                        kind: PublishedKind::Audio,
                        ssrcs: vec![peer.audio],
                        codec: "opus".into(),
                        clock_rate: 48_000,
                        audio_level_extension: Some(1),
                        stream_ids: None,
                        paused: false,
                    },
                    DesiredTrack {
                        kind: PublishedKind::Camera,
                        ssrcs: vec![peer.camera],
                        codec: "VP8".into(),
                        clock_rate: 90_000,
                        audio_level_extension: None,
                        stream_ids: None,
                        paused: false,
                    },
                ],
            }
        }

        fn upsert(&mut self, name: &str, can_publish: bool, room: Option<&str>) -> Vec<Batch> {
            let leg = self.leg(name, can_publish, room);
            self.upsert_leg(name, leg)
        }

        /// Upsert `leg` as `name`'s and apply what it changes.
        fn upsert_leg(&mut self, name: &str, leg: DesiredLeg) -> Vec<Batch> {
            let batches = self.reconciler.changes(vec![Change::LegUpserted {
                meeting: m(),
                participant: name.into(),
                leg,
            }]);
            self.run(batches.clone());
            batches
        }

        fn run(&mut self, batches: Vec<Batch>) {
            for batch in batches {
                let applied = apply(&mut self.core, batch);
                assert!(applied.failed.is_empty(), "{:?}", applied.failed);
            }
        }

        /// `name` sends one audio packet; returns who received it (each copy checked to
        /// decrypt under the receiver's key).
        fn speak(&mut self, name: &str) -> BTreeSet<String> {
            let peer = self.peers.get_mut(name).unwrap();
            peer.seq += 1;
            let mut buf = vec![0u8; 12 + 20 + 64];
            buf[0] = 0x80;
            buf[1] = 111;
            buf[2..4].copy_from_slice(&peer.seq.to_be_bytes());
            buf[4..8].copy_from_slice(&(u32::from(peer.seq) * 960).to_be_bytes());
            buf[8..12].copy_from_slice(&peer.audio.0.to_be_bytes());
            let len = peer.sender.protect_rtp(&mut buf, 12 + 20).unwrap();
            buf.truncate(len);
            let source = peer.address;
            self.deliver(source, buf)
        }

        /// `name` sends an SRTCP receiver report (what a participant that only watches
        /// sends), which lets the forwarder learn its address.
        fn hello(&mut self, name: &str) {
            let peer = self.peers.get_mut(name).unwrap();
            let mut buf = vec![0u8; 8 + 64];
            buf[..4].copy_from_slice(&[0x80, 201, 0, 1]);
            buf[4..8].copy_from_slice(&peer.audio.0.to_be_bytes());
            let len = peer.sender.protect_rtcp(&mut buf, 8).unwrap();
            buf.truncate(len);
            let source = peer.address;
            self.deliver(source, buf);
        }

        fn deliver(&mut self, source: SocketAddr, mut datagram: Vec<u8>) -> BTreeSet<String> {
            self.now += Duration::from_millis(20);
            self.core.handle_timeout(self.now);
            self.core
                .handle_datagram(self.now, listen(), source, &mut datagram);
            let mut got = BTreeSet::new();
            let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER_LEN];
            while let Some(t) = self.core.poll_transmit(&mut buf) {
                assert_eq!(
                    t.source,
                    Some(listen()),
                    "legs send from the meeting's port"
                );
                if (200..=207).contains(&buf[1]) {
                    continue; // RTCP the forwarder originates (keyframe requests, reports)
                }
                let (name, peer) = self
                    .peers
                    .iter_mut()
                    .find(|(_, p)| p.address == t.destination)
                    .unwrap_or_else(|| panic!("transmit to unknown {}", t.destination));
                let mut packet = buf[..t.len].to_vec();
                peer.receiver
                    .unprotect_rtp(&mut packet)
                    .unwrap_or_else(|e| panic!("{name} cannot unprotect: {e}"));
                assert!(got.insert(name.clone()), "{name} got two copies");
            }
            got
        }
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A snapshot with meeting `m` and publishing legs `legs` in the main room, applied,
    /// and every peer heard from once (so its address is learned).
    fn meeting_with(legs: &[&str]) -> Net {
        let mut net = Net::new();
        let mut state = DesiredState::default();
        let mut meeting = DesiredMeeting {
            recording: None,
            listen: Some(listen()),
            legs: BTreeMap::new(),
            links: BTreeMap::new(),
        };
        for name in legs {
            meeting
                .legs
                .insert((*name).into(), net.leg(name, true, None));
        }
        state.meetings.insert(m(), meeting);
        let batches = net.reconciler.snapshot(state);
        net.run(batches);
        for name in legs {
            net.hello(name);
        }
        net
    }

    #[test]
    fn a_snapshot_then_changes_fan_out_to_the_right_legs() {
        let mut net = meeting_with(&["a", "b", "c"]);
        assert_eq!(net.core.leg_count(), 3);
        // Three legs, two tracks each, each track to the two others.
        assert_eq!(net.core.subscription_count(), 12);
        assert_eq!(net.speak("a"), names(&["b", "c"]));
        assert_eq!(net.speak("c"), names(&["a", "b"]));

        let d = net.leg("d", true, None);
        let batches = net.reconciler.changes(vec![
            Change::LegUpserted {
                meeting: m(),
                participant: "d".into(),
                leg: d,
            },
            Change::LegRemoved {
                meeting: m(),
                participant: "b".into(),
            },
        ]);
        assert_eq!(batches.len(), 1);
        net.run(batches);
        net.hello("d");
        assert_eq!(net.core.leg_count(), 3);
        assert_eq!(net.core.subscription_count(), 12);
        assert_eq!(net.speak("a"), names(&["c", "d"]));
        assert_eq!(net.speak("d"), names(&["a", "c"]));
        assert!(net.speak("b").is_empty(), "a removed leg is not heard");
    }

    #[test]
    fn subscriptions_follow_room_moves() {
        let mut net = meeting_with(&["a", "b", "c", "d"]);
        net.upsert("c", true, Some("x"));
        net.upsert("d", true, Some("x"));
        assert_eq!(net.speak("a"), names(&["b"]));
        assert_eq!(net.speak("c"), names(&["d"]));
        // 2 rooms x 2 legs x 2 tracks x 1 other.
        assert_eq!(net.core.subscription_count(), 8);
        net.upsert("d", true, Some("y"));
        assert!(net.speak("c").is_empty(), "alone in its room");
        net.upsert("c", true, None);
        net.upsert("d", true, None);
        assert_eq!(net.speak("a"), names(&["b", "c", "d"]));
        assert_eq!(net.speak("d"), names(&["a", "b", "c"]));
        assert_eq!(net.core.subscription_count(), 24);
    }

    #[test]
    fn a_leg_that_may_not_publish_has_no_tracks_and_still_receives() {
        let mut net = meeting_with(&["host"]);
        net.upsert("attendee", false, None);
        // Learned from its RTCP alone: it publishes nothing.
        net.hello("attendee");
        let core = &net.core;
        assert!(core.track_id(&m(), &"attendee".into(), "audio").is_none());
        assert_eq!(net.speak("host"), names(&["attendee"]));
        assert!(
            net.speak("attendee").is_empty(),
            "its media is not accepted"
        );

        // Promoted: it publishes, and the host hears it.
        net.upsert("attendee", true, None);
        assert_eq!(net.speak("attendee"), names(&["host"]));
        assert_eq!(net.speak("host"), names(&["attendee"]));
        // Demoted again: tracks gone, still receives.
        net.upsert("attendee", false, None);
        assert!(net
            .core
            .track_id(&m(), &"attendee".into(), "audio")
            .is_none());
        assert!(net.speak("attendee").is_empty());
        assert_eq!(net.speak("host"), names(&["attendee"]));
        assert_eq!(net.core.subscription_count(), 2);
    }

    #[test]
    fn only_what_is_sent_is_held_and_subscribed_to() {
        let mut net = meeting_with(&["a", "b"]);
        let upsert_paused = |net: &mut Net, name: &str, paused: &[PublishedKind]| {
            let mut leg = net.leg(name, true, None);
            for track in &mut leg.tracks {
                track.paused = paused.contains(&track.kind);
            }
            net.upsert_leg(name, leg)
        };
        // Thirty who joined muted: no tracks, so the two on air send each of their
        // tracks to 31 others and nobody subscribes to the thirty.
        for n in 0..30 {
            let name = format!("muted-{n}");
            upsert_paused(
                &mut net,
                &name,
                &[PublishedKind::Audio, PublishedKind::Camera],
            );
            net.hello(&name);
            assert!(net
                .core
                .track_id(&m(), &name.as_str().into(), "audio")
                .is_none());
        }
        assert_eq!(net.core.subscription_count(), 2 * 2 * 31);
        assert_eq!(net.speak("a").len(), 31);
        assert!(
            net.speak("muted-0").is_empty(),
            "a muted microphone is not forwarded"
        );

        // Unmuting adds the track and its subscriptions, nothing else: the leg keeps its
        // keys and what it receives.
        let batches = upsert_paused(&mut net, "muted-0", &[PublishedKind::Camera]);
        assert!(
            batches[0].ops.iter().all(
                |op| matches!(op, Op::AddTrack { name, .. } if name == "audio")
                    || matches!(op, Op::Subscribe(s) if s.publisher.0 == "muted-0")
            ),
            "{:?}",
            batches[0].ops
        );
        assert_eq!(net.speak("muted-0").len(), 31);
        assert_eq!(net.core.subscription_count(), 2 * 2 * 31 + 31);
        assert!(net.speak("a").contains("muted-0"));

        // A host mutes it again: the track goes, and what it still sends is dropped.
        upsert_paused(
            &mut net,
            "muted-0",
            &[PublishedKind::Audio, PublishedKind::Camera],
        );
        assert_eq!(net.core.subscription_count(), 2 * 2 * 31);
        assert!(net.speak("muted-0").is_empty());
    }

    #[test]
    fn removals_remove_from_the_core() {
        let mut net = meeting_with(&["a", "b", "c"]);
        // A snapshot without `b` removes it, and leaves the others alone.
        let subs_of_a = net.core.subscriptions_of(&m(), &"a".into());
        let mut state = net.reconciler.state().clone();
        state
            .meetings
            .get_mut(&m())
            .unwrap()
            .legs
            .remove(&ParticipantId::from("b"));
        let batches = net.reconciler.snapshot(state);
        assert_eq!(batches.len(), 1);
        assert!(
            matches!(&batches[0].ops[..], [Op::RemoveLeg { participant }] if participant.0 == "b")
        );
        net.run(batches);
        assert_eq!(net.speak("a"), names(&["c"]));
        let kept: Vec<_> = net.core.subscriptions_of(&m(), &"a".into());
        assert!(kept.iter().all(|s| subs_of_a.contains(s)));

        // Removing the meeting removes everything in it.
        let batches = net.reconciler.changes(vec![Change::MeetingRemoved(m())]);
        net.run(batches);
        assert!(!net.core.meeting_exists(&m()));
        assert_eq!(net.core.leg_count(), 0);
        assert_eq!(net.core.subscription_count(), 0);
        // An empty snapshot then has nothing left to do.
        assert!(net.reconciler.snapshot(DesiredState::default()).is_empty());
    }

    #[test]
    fn an_unchanged_upsert_changes_nothing_and_a_new_key_recreates_the_leg() {
        let mut net = meeting_with(&["a", "b"]);
        let subs = net.core.subscriptions_of(&m(), &"b".into());
        let leg = net.core.leg_id(&m(), &"b".into(), LEG_NAME).unwrap();
        assert!(net.upsert("b", true, None).is_empty());
        // The same snapshot again: nothing either.
        let state = net.reconciler.state().clone();
        assert!(net.reconciler.snapshot(state).is_empty());
        assert_eq!(net.core.subscriptions_of(&m(), &"b".into()), subs);
        assert_eq!(net.core.leg_id(&m(), &"b".into(), LEG_NAME), Some(leg));
        assert_eq!(net.speak("a"), names(&["b"]));

        // New keys for `b`: the leg is re-created, and must be learned again.
        let fresh = MasterKey::generate(PROFILE);
        let peer = net.peers.get_mut("b").unwrap();
        peer.outbound = fresh.clone();
        peer.receiver = SrtpContext::new(&fresh);
        let batches = net.upsert("b", true, None);
        assert!(matches!(batches[0].ops[0], Op::RemoveLeg { .. }));
        assert!(net.speak("a").is_empty(), "address not learned yet");
        net.hello("b");
        assert_eq!(net.speak("a"), names(&["b"]));
        assert_eq!(net.speak("b"), names(&["a"]));
        assert_eq!(net.core.subscription_count(), 4);
    }

    #[test]
    fn a_meeting_is_recorded_as_its_plan_says_and_stops_in_place() {
        let mut net = Net::new();
        let a = net.leg("a", true, None);
        let upsert = |recording: Option<&str>| Change::MeetingUpserted {
            meeting: m(),
            listen: listen(),
            recording: recording.map(str::to_owned),
        };
        let batches = net.reconciler.changes(vec![
            upsert(Some("rec-1")),
            Change::LegUpserted {
                meeting: m(),
                participant: "a".into(),
                leg: a,
            },
        ]);
        assert!(matches!(
            &batches[0].ops[..],
            [Op::AddMeeting, Op::SetRecording(Some(r)), Op::AddLeg { .. }, ..] if r == "rec-1"
        ));
        net.run(batches);
        assert_eq!(net.core.recording(&m()), Some("rec-1"));

        // The same plan again changes nothing; another recording or none changes only that.
        assert!(net
            .reconciler
            .changes(vec![upsert(Some("rec-1"))])
            .is_empty());
        for next in [Some("rec-2"), None] {
            let batches = net.reconciler.changes(vec![upsert(next)]);
            assert_eq!(batches.len(), 1);
            assert!(
                matches!(&batches[0].ops[..], [Op::SetRecording(r)] if r.as_deref() == next),
                "{:?}",
                batches[0].ops
            );
            net.run(batches);
            assert_eq!(net.core.recording(&m()), next);
            assert_eq!(net.core.leg_count(), 1, "the meeting's legs stay");
        }
    }

    #[test]
    fn legs_wait_for_their_meeting_and_follow_it_to_another_port() {
        let mut net = Net::new();
        let a = net.leg("a", true, None);
        let batches = net.reconciler.changes(vec![Change::LegUpserted {
            meeting: m(),
            participant: "a".into(),
            leg: a,
        }]);
        assert!(batches.is_empty(), "no plan, nothing to build");
        let batches = net.reconciler.changes(vec![Change::MeetingUpserted {
            meeting: m(),
            listen: listen(),
            recording: None,
        }]);
        assert_eq!(batches.len(), 1);
        assert!(matches!(batches[0].ops[0], Op::AddMeeting));
        assert!(matches!(batches[0].ops[1], Op::AddLeg { .. }));
        net.run(batches);
        assert_eq!(net.core.leg_count(), 1);

        // Moved to another port: removed here, built there (another shard, perhaps).
        let other: SocketAddr = "192.0.2.1:40101".parse().unwrap();
        let batches = net.reconciler.changes(vec![Change::MeetingUpserted {
            meeting: m(),
            listen: other,
            recording: None,
        }]);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].listen, listen());
        assert!(matches!(batches[0].ops[..], [Op::RemoveMeeting]));
        assert_eq!(batches[1].listen, other);
        assert!(matches!(batches[1].ops[0], Op::AddMeeting));
        match &batches[1].ops[1] {
            Op::AddLeg { configs, .. } => {
                assert_eq!(configs.len(), 1);
                assert_eq!(configs[0].local, Some(other));
                assert!(configs[0].rtcp_mux && configs[0].remote.is_none());
            }
            op => panic!("{op:?}"),
        }
    }

    #[test]
    fn tracks_are_named_by_kind() {
        let t = |kind| DesiredTrack {
            kind,
            ssrcs: vec![Ssrc(1)],
            codec: String::new(),
            clock_rate: 0,
            audio_level_extension: None,
            stream_ids: None,
            paused: false,
        };
        let tracks = [
            t(PublishedKind::Camera),
            t(PublishedKind::Audio),
            t(PublishedKind::Camera),
        ];
        let names: Vec<String> = track_names(&tracks).into_keys().collect();
        assert_eq!(names, ["audio", "camera", "camera-1"]);
    }

    #[test]
    fn relay_links_follow_their_meeting_and_change_only_when_they_differ() {
        let node = MeetingId::from("w/eu-0");
        let link = |peer: &str, key: &MasterKey| DesiredLink {
            direction: RelayDirection::Upstream,
            peer: peer.parse().unwrap(),
            send_key: key.clone(),
            receive_key: key.clone(),
        };
        let key = MasterKey::generate(PROFILE);
        let mut net = Net::new();
        // The link arrives before its node's plan: it waits.
        let batches = net.reconciler.changes(vec![Change::LinkUpserted {
            meeting: node.clone(),
            id: "w/eu-0/up".into(),
            link: link("192.0.2.9:40100", &key),
        }]);
        assert!(batches.is_empty());
        let batches = net.reconciler.changes(vec![Change::MeetingUpserted {
            meeting: node.clone(),
            listen: listen(),
            recording: None,
        }]);
        assert!(matches!(
            &batches[0].ops[..],
            [Op::AddMeeting, Op::AddLink { config }] if config.local == listen()
        ));
        net.run(batches);
        assert_eq!(net.core.relay_links().len(), 1);
        // The same again: nothing to do. New keys: re-created.
        let same = net.reconciler.changes(vec![Change::LinkUpserted {
            meeting: node.clone(),
            id: "w/eu-0/up".into(),
            link: link("192.0.2.9:40100", &key),
        }]);
        assert!(same.is_empty());
        let rekeyed = net.reconciler.changes(vec![Change::LinkUpserted {
            meeting: node.clone(),
            id: "w/eu-0/up".into(),
            link: link("192.0.2.9:40100", &MasterKey::generate(PROFILE)),
        }]);
        assert!(matches!(&rekeyed[0].ops[..], [Op::UpdateLink { .. }]));
        net.run(rekeyed);
        assert_eq!(net.core.relay_links().len(), 1);
        // Removed by id alone.
        let gone = net
            .reconciler
            .changes(vec![Change::LinkRemoved("w/eu-0/up".into())]);
        assert_eq!(gone.len(), 1);
        net.run(gone);
        assert!(net.core.relay_links().is_empty());
        assert!(net.core.meeting_exists(&node));
    }

    /// A SHA-256 fingerprint of 32 `byte`s.
    fn fingerprint(byte: u8) -> String {
        format!("sha-256 {}", vec![format!("{byte:02X}"); 32].join(":"))
    }

    /// A browser's leg: two connections, tracks named by MID/RID.
    fn browser(subscribe_ufrag: &str, fingerprint: &str) -> DesiredLeg {
        let connection = |ufrag: &str| DesiredConnection {
            credentials: Credentials {
                local_ufrag: ufrag.into(),
                local_pwd: format!("{ufrag}-password-of-24-chars"),
                remote_ufrag: None,
            },
            extensions: StreamExtensions {
                mid: Some(4),
                rid: Some(10),
                repaired_rid: Some(11),
                transport_cc: Some(3),
                audio_level: None,
            },
            payload_types: vec![(Codec::Opaque, 111), (Codec::Vp8, 96)],
        };
        DesiredLeg {
            transport: DesiredTransport::Webrtc(DesiredWebrtc {
                remote_fingerprint: fingerprint.into(),
                publish: connection("bpub"),
                subscribe: connection(subscribe_ufrag),
            }),
            can_publish: true,
            breakout: None,
            tracks: vec![DesiredTrack {
                kind: PublishedKind::Camera,
                ssrcs: vec![Ssrc(0xB1), Ssrc(0xB2), Ssrc(0xB3)],
                codec: "VP8".into(),
                clock_rate: 90_000,
                audio_level_extension: None,
                stream_ids: Some(StreamIds {
                    mid: "1".into(),
                    rids: vec!["q".into(), "h".into(), "f".into()],
                    rtx: Some(RtxPayloadType {
                        payload_type: 97,
                        repairs: 96,
                    }),
                }),
                paused: false,
            }],
        }
    }

    #[test]
    fn a_browser_gets_a_publish_and_a_subscribe_leg_and_an_ice_restart_keeps_them() {
        let mut net = meeting_with(&["a"]);
        let upsert = |net: &mut Net, leg: DesiredLeg| {
            let batches = net.reconciler.changes(vec![Change::LegUpserted {
                meeting: m(),
                participant: "b".into(),
                leg,
            }]);
            net.run(batches.clone());
            batches
        };
        upsert(&mut net, browser("bsub", &fingerprint(0xAA)));
        let b = ParticipantId::from("b");
        let publish = net.core.leg_id(&m(), &b, PUBLISH_LEG).expect("publish leg");
        let subscribe = net
            .core
            .leg_id(&m(), &b, SUBSCRIBE_LEG)
            .expect("subscribe leg");
        assert_eq!(net.core.leg_id(&m(), &b, LEG_NAME), None);
        assert!(net.core.track_id(&m(), &b, "camera").is_some());
        // b receives a's two tracks on its subscribe leg; a receives b's camera.
        let subs = net.core.subscriptions_of(&m(), &b);
        assert_eq!(subs.len(), 2);
        assert_eq!(net.core.subscriptions_of(&m(), &"a".into()).len(), 1);
        let (pub_stats, sub_stats) = (net.core.ice_stats(publish), net.core.ice_stats(subscribe));
        assert!(
            pub_stats.is_some() && sub_stats.is_some(),
            "both are WebRTC legs"
        );

        // New subscribe credentials: an ICE restart in place, nothing re-created.
        let batches = upsert(&mut net, browser("bsub2", &fingerprint(0xAA)));
        let ops: Vec<&Op> = batches.iter().flat_map(|b| &b.ops).collect();
        assert!(
            matches!(
                ops[..],
                [Op::UpdateWebrtc {
                    leg: SUBSCRIBE_LEG,
                    ..
                }]
            ),
            "{ops:?}"
        );
        assert_eq!(net.core.leg_id(&m(), &b, SUBSCRIBE_LEG), Some(subscribe));
        assert_eq!(net.core.subscriptions_of(&m(), &b), subs);

        // A new certificate is a new DTLS handshake: the legs are re-created.
        let batches = upsert(&mut net, browser("bsub2", &fingerprint(0xBB)));
        let ops: Vec<&Op> = batches.iter().flat_map(|b| &b.ops).collect();
        assert!(
            ops.iter().any(|op| matches!(op, Op::RemoveLeg { .. })),
            "{ops:?}"
        );
        assert!(
            ops.iter().any(|op| matches!(op, Op::AddLeg { .. })),
            "{ops:?}"
        );
        assert_eq!(net.core.subscriptions_of(&m(), &b).len(), 2);
        assert_eq!(
            net.speak("a"),
            names(&[]),
            "b's legs have no keys yet: nothing sent"
        );
    }
}
