//! What each forwarder should hold, derived from the store and streamed to it
//! (`Forwarders.WatchDesiredState`).
//!
//! A forwarder's desired state is computed, never stored: the meetings placed on it
//! (`v1/placements/`), and for each, one leg per participant who is present and admitted,
//! with the SRTP keys and track SSRCs its join handed out (`v1/transports/`), whether it
//! may publish, and its room. Waiting participants get no leg until admitted: media never
//! reaches the waiting room.
//!
//! Webinar relay nodes placed on the forwarder appear as meetings of their own, named
//! `{meeting}/{relay}` (a `/` no meeting id has, so they never collide with a meeting the
//! forwarder also runs as origin), listening on the node's address and holding a leg for
//! each viewer assigned to the node; and every relay link with an end on the forwarder
//! comes with its direction, peer and keys.
//!
//! The stream is level-triggered: a snapshot at revision `R`, then watches from `R + 1` on
//! the placements and on each placed meeting's document, transports and audience. Any
//! change to a meeting marks it dirty; dirty meetings are recomputed (after a short
//! debounce, so a burst of joins is one batch) and diffed against what was last sent, and
//! only the difference goes out. Reading a meeting a little later than the event that
//! marked it is harmless: the recomputation sees at least that change.
//!
//! Relay nodes are recomputed one by one: a viewer's seat, transport or attendee record
//! marks only the node it is seated on (when that node is on this forwarder), so a join
//! costs each forwarder a read of one node of at most `max_viewers_per_relay` viewers, or
//! nothing, not a read of every node it runs. The tree itself (nodes, links, their keys)
//! and the webinar's document are read again whole when they change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use tokio_stream::StreamMap;

use super::keys;
use super::meetings::{
    published, read_attendee, read_meeting, read_transport, BrowserTransport, TrackAssignment,
    TrackKind,
};
use super::placement::PlacementRecord;
use super::relays::{LinkDirection, RelayId, RelayNode, RelayPlanner};
use super::ServiceError;
use crate::domain::{
    BreakoutId, ForwarderId, MeetingId, MeetingKind, Participant, ParticipantId, Presence,
    RecordingId,
};
use crate::store::{KeyValue, Op, Revision, Store, StoreError, Txn, WatchEvent, WatchStream};

/// How long to gather changes before recomputing: joins come in bursts.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// Point reads per transaction (etcd refuses more than 128 operations in one).
const GETS_PER_TXN: usize = 100;

/// Whose legs a plan holds.
#[derive(Debug, Clone, Copy)]
enum Members<'a> {
    /// Everyone in the meeting, a webinar's audience included (no relays).
    Everyone,
    /// Those on the stage: a webinar's origin when its audience is on relay nodes (in a
    /// meeting, that is everyone).
    Stage,
    /// These viewers of a webinar: a relay node's.
    Viewers(&'a BTreeSet<ParticipantId>),
}

/// One participant's leg on the forwarder.
#[derive(Clone, PartialEq, Eq)]
pub struct DesiredLeg {
    /// The meeting, or the relay node (`{meeting}/{relay}`), the leg belongs to.
    pub meeting: String,
    pub participant: ParticipantId,
    /// RFC name of the SRTP profile.
    pub profile: String,
    /// `inline:` key the participant protects with (the forwarder unprotects with it).
    pub inbound_key: String,
    /// `inline:` key the forwarder protects towards the participant with.
    pub outbound_key: String,
    pub can_publish: bool,
    pub breakout: Option<BreakoutId>,
    pub tracks: Vec<TrackAssignment>,
    /// Kinds of `tracks` not sent now (muted, no screen share): the forwarder holds no
    /// track, and so no subscription, for them.
    pub paused: Vec<TrackKind>,
    /// A browser's WebRTC transport, which replaces the keys above.
    pub browser: Option<BrowserTransport>,
}

impl std::fmt::Debug for DesiredLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesiredLeg")
            .field("meeting", &self.meeting)
            .field("participant", &self.participant)
            .field("profile", &self.profile)
            .field("can_publish", &self.can_publish)
            .field("breakout", &self.breakout)
            .field("tracks", &self.tracks)
            .field("paused", &self.paused)
            .field("browser", &self.browser)
            .finish_non_exhaustive()
    }
}

/// One meeting placed on the forwarder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredMeeting {
    /// A meeting id, or `{meeting}/{relay}` for a relay node.
    pub id: String,
    pub kind: MeetingKind,
    /// `host:port` the meeting's legs send to (its own port: its shard).
    pub listen_address: String,
    /// The recording its media is tapped for, on the forwarder holding the meeting's
    /// publishers (not on webinar relay nodes, which hold viewers).
    pub recording: Option<RecordingId>,
    pub legs: BTreeMap<ParticipantId, DesiredLeg>,
}

/// What a plan holds of its meeting: read by [`DesiredStates::legs`].
struct PlanContents {
    kind: MeetingKind,
    recording: Option<RecordingId>,
    legs: BTreeMap<ParticipantId, DesiredLeg>,
}

/// The relay nodes on one forwarder as last read, to tell which node a record is about.
#[derive(Debug, Default)]
struct RelayIndex {
    /// Plan id (`{meeting}/{relay}`) to the node.
    nodes: BTreeMap<String, NodeHere>,
    /// Each viewer seated on one of the nodes, with or without a leg yet (a seat may be
    /// written before the transport it needs), to its plan id.
    seated: HashMap<(MeetingId, ParticipantId), String>,
}

/// A relay node on this forwarder.
#[derive(Debug, Clone)]
struct NodeHere {
    meeting: MeetingId,
    relay: RelayId,
    address: String,
    /// Its seated viewers at the last read.
    viewers: Vec<ParticipantId>,
}

impl NodeHere {
    fn of(meeting: &MeetingId, node: &RelayNode) -> NodeHere {
        NodeHere {
            meeting: meeting.clone(),
            relay: node.relay.clone(),
            address: node.address.clone(),
            viewers: Vec::new(),
        }
    }
}

impl RelayIndex {
    /// The node on this forwarder that the record at `key` concerns: a viewer's seat on
    /// it, or the transport or attendee record of a viewer seated on it.
    fn node_of(&self, key: &str, meetings: &BTreeSet<MeetingId>) -> Option<String> {
        for meeting in meetings {
            if let Some(rest) = key.strip_prefix(&keys::relay_viewers(meeting)) {
                let relay = rest.split('/').next()?;
                let plan = format!("{meeting}/{relay}");
                return self.nodes.contains_key(&plan).then_some(plan);
            }
            let participant = key
                .strip_prefix(&keys::transports(meeting))
                .or_else(|| key.strip_prefix(&keys::audience(meeting)));
            if let Some(participant) = participant {
                let participant = ParticipantId::new(participant).ok()?;
                return self.seated.get(&(meeting.clone(), participant)).cloned();
            }
        }
        None
    }

    /// Record node `plan`'s viewers as now read.
    fn reseat(&mut self, plan: &str, viewers: Vec<ParticipantId>) {
        let Some(node) = self.nodes.get_mut(plan) else {
            return;
        };
        for old in &node.viewers {
            self.seated.remove(&(node.meeting.clone(), old.clone()));
        }
        for viewer in &viewers {
            self.seated
                .insert((node.meeting.clone(), viewer.clone()), plan.to_owned());
        }
        node.viewers = viewers;
    }
}

/// Everything a forwarder should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub meetings: BTreeMap<String, DesiredMeeting>,
    /// Relay link ends on this forwarder, by [`DesiredLink::id`].
    pub links: BTreeMap<String, DesiredLink>,
}

/// One end of a relay link held by this forwarder.
#[derive(Clone, PartialEq, Eq)]
pub struct DesiredLink {
    /// `{meeting}/{relay}/up` or `{meeting}/{relay}/down`: the child node the link feeds.
    pub id: String,
    pub meeting: MeetingId,
    /// The plan on this forwarder the link end belongs to (see
    /// [`super::relays::RelayLinkEnd::local_plan`]).
    pub local_meeting: String,
    pub peer_forwarder: ForwarderId,
    pub peer_address: String,
    /// True: this end receives the webinar's tracks (the child's end).
    pub upstream: bool,
    pub profile: String,
    /// `inline:` keys of this end: what it protects with, and what it unprotects with.
    pub send_key: String,
    pub receive_key: String,
}

impl std::fmt::Debug for DesiredLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesiredLink")
            .field("id", &self.id)
            .field("local_meeting", &self.local_meeting)
            .field("peer_forwarder", &self.peer_forwarder)
            .field("peer_address", &self.peer_address)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// One change to apply, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesiredChange {
    /// A new meeting, or one whose own settings changed (its legs follow as their own
    /// changes).
    MeetingUpserted(DesiredMeeting),
    /// The meeting and all its legs are gone.
    MeetingRemoved(String),
    LegUpserted(Box<DesiredLeg>),
    LegRemoved(String, ParticipantId),
    LinkUpserted(DesiredLink),
    LinkRemoved(String),
}

/// One message of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesiredUpdate {
    /// Replaces everything; `revision`: the store revision it is complete up to.
    Snapshot {
        revision: Revision,
        state: DesiredState,
    },
    Changes {
        revision: Revision,
        changes: Vec<DesiredChange>,
    },
}

/// Computes and streams forwarders' desired states.
#[derive(Debug, Clone)]
pub struct DesiredStates {
    store: Arc<dyn Store>,
    relays: Option<Arc<RelayPlanner>>,
}

impl DesiredStates {
    pub fn new(store: Arc<dyn Store>) -> Self {
        DesiredStates {
            store,
            relays: None,
        }
    }

    /// Also stream the relay nodes and links of webinars.
    pub fn with_relays(mut self, relays: Arc<RelayPlanner>) -> Self {
        self.relays = Some(relays);
        self
    }

    /// The placements on `forwarder`, and the revision they were read at.
    async fn placements(
        &self,
        forwarder: &ForwarderId,
    ) -> Result<(Vec<PlacementRecord>, Revision), ServiceError> {
        let (kvs, revision) = self.store.range(&keys::placements()).await?;
        let mut mine = Vec::new();
        for kv in kvs {
            let record: PlacementRecord =
                serde_json::from_slice(&kv.value).map_err(|e| ServiceError::Corrupt {
                    key: kv.key.clone(),
                    reason: e.to_string(),
                })?;
            if &record.forwarder == forwarder {
                mine.push(record);
            }
        }
        Ok((mine, revision))
    }

    /// One meeting as the forwarder should hold it; `None` if it no longer exists or
    /// has ended.
    async fn meeting(
        &self,
        placement: &PlacementRecord,
    ) -> Result<Option<DesiredMeeting>, ServiceError> {
        let id = &placement.meeting;
        // With relays, a webinar's audience is seated on relay nodes, not the origin.
        let members = match self.relays {
            Some(_) => Members::Stage,
            None => Members::Everyone,
        };
        let Some(plan) = self.legs(id, id.as_str(), members).await? else {
            return Ok(None);
        };
        Ok(Some(DesiredMeeting {
            id: id.to_string(),
            kind: plan.kind,
            listen_address: placement.address.clone(),
            recording: plan.recording,
            legs: plan.legs,
        }))
    }

    /// The legs of `meeting`'s `members` who are present and admitted, under the plan id
    /// `plan`; `None` if the meeting is gone or over.
    ///
    /// A webinar's audience can be 50,000 strong and every join re-reads the plans it
    /// touches, so the origin and relay nodes of a webinar with relays read only their own
    /// members' records, by key: a node's viewers (at most `max_viewers_per_relay`), the
    /// origin's stage. Ranges over the whole audience and its transports are for meetings
    /// and for webinars without relays, whose audience connects to the origin.
    async fn legs(
        &self,
        meeting: &MeetingId,
        plan: &str,
        members: Members<'_>,
    ) -> Result<Option<PlanContents>, ServiceError> {
        let Some(doc) = self.store.get(&keys::meeting(meeting)).await? else {
            return Ok(None);
        };
        let document = read_meeting(&doc.key, &doc.value)?;
        if !document.is_open() {
            return Ok(None);
        }
        let webinar = document.kind() == MeetingKind::Webinar;
        let mut present: BTreeMap<ParticipantId, Participant> = match members {
            Members::Viewers(_) => BTreeMap::new(),
            Members::Everyone | Members::Stage => document
                .participants()
                .iter()
                .filter(|(_, p)| p.presence == Presence::Admitted)
                .map(|(id, p)| (id.clone(), p.clone()))
                .collect(),
        };
        let transports = match members {
            Members::Everyone => {
                if webinar {
                    let (audience, _) = self.store.range(&keys::audience(meeting)).await?;
                    for kv in audience {
                        let p = read_attendee(&kv.key, &kv.value)?;
                        if p.presence == Presence::Admitted {
                            present.insert(p.id.clone(), p);
                        }
                    }
                }
                self.store.range(&keys::transports(meeting)).await?.0
            }
            Members::Stage => {
                let keys = present.keys().map(|id| keys::transport(meeting, id));
                self.get_many(keys.collect()).await?
            }
            Members::Viewers(viewers) => {
                let keys = viewers.iter().map(|id| keys::attendee(meeting, id));
                for kv in self.get_many(keys.collect()).await? {
                    let p = read_attendee(&kv.key, &kv.value)?;
                    if p.presence == Presence::Admitted {
                        present.insert(p.id.clone(), p);
                    }
                }
                let keys = present.keys().map(|id| keys::transport(meeting, id));
                self.get_many(keys.collect()).await?
            }
        };
        let mut legs = BTreeMap::new();
        for kv in transports {
            let transport = read_transport(&kv.key, &kv.value)?;
            let Some(p) = present.get(&transport.participant) else {
                continue;
            };
            if transport
                .browser
                .as_ref()
                .is_some_and(|b| b.remote_fingerprint.is_empty())
            {
                // A browser whose certificate is not known yet: no leg can be keyed.
                continue;
            }
            legs.insert(
                p.id.clone(),
                DesiredLeg {
                    meeting: plan.to_owned(),
                    participant: p.id.clone(),
                    profile: transport.srtp.profile.clone(),
                    inbound_key: transport.srtp.send_key.clone(),
                    outbound_key: transport.srtp.receive_key.clone(),
                    can_publish: p.can_publish(),
                    breakout: p.breakout.clone(),
                    tracks: published(&transport).cloned().collect(),
                    paused: TrackKind::ALL
                        .into_iter()
                        .filter(|kind| !kind.is_sent_by(p))
                        .collect(),
                    browser: transport.browser.clone(),
                },
            );
        }
        Ok(Some(PlanContents {
            kind: document.kind(),
            recording: document.recording_id().cloned(),
            legs,
        }))
    }

    /// The records at `keys` that exist, read in transactions of [`GETS_PER_TXN`].
    async fn get_many(&self, keys: Vec<String>) -> Result<Vec<KeyValue>, ServiceError> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(GETS_PER_TXN) {
            let txn = Txn::new().and_then(chunk.iter().map(Op::get).collect::<Vec<_>>());
            found.extend(self.store.txn(txn).await?.gets.into_iter().flatten());
        }
        Ok(found)
    }

    /// The webinars with a relay node on `forwarder` or placed on it with relays.
    async fn relay_meetings(
        &self,
        forwarder: &ForwarderId,
        placed: &BTreeMap<MeetingId, PlacementRecord>,
    ) -> Result<BTreeSet<MeetingId>, ServiceError> {
        if self.relays.is_none() {
            return Ok(BTreeSet::new());
        }
        let (kvs, _) = self.store.range(&keys::all_relays()).await?;
        let mut out = BTreeSet::new();
        for kv in kvs {
            let Some(meeting) = kv
                .key
                .strip_prefix(&keys::all_relays())
                .and_then(|rest| rest.split('/').next())
                .and_then(|id| MeetingId::new(id).ok())
            else {
                continue;
            };
            let holds = String::from_utf8_lossy(&kv.value)
                .contains(&format!("\"forwarder\":\"{forwarder}\""));
            if holds || placed.contains_key(&meeting) {
                out.insert(meeting);
            }
        }
        Ok(out)
    }

    /// Relay nodes on `forwarder` (as plans `{meeting}/{relay}` with their viewers' legs)
    /// and the link ends it holds, for the webinars in `meetings`; and the index of those
    /// nodes and their viewers.
    async fn relay_part(
        &self,
        forwarder: &ForwarderId,
        meetings: &BTreeSet<MeetingId>,
    ) -> Result<
        (
            BTreeMap<String, DesiredMeeting>,
            BTreeMap<String, DesiredLink>,
            RelayIndex,
        ),
        ServiceError,
    > {
        let mut plans = BTreeMap::new();
        let mut links = BTreeMap::new();
        let mut index = RelayIndex::default();
        let Some(relays) = &self.relays else {
            return Ok((plans, links, index));
        };
        for meeting in meetings {
            let tree = relays.tree(meeting).await?;
            for node in tree.nodes.iter().filter(|n| &n.forwarder == forwarder) {
                let plan = format!("{meeting}/{}", node.relay.as_str());
                index
                    .nodes
                    .insert(plan.clone(), NodeHere::of(meeting, node));
                let (contents, viewers) = self.node_plan(&index.nodes[&plan], &plan).await?;
                index.reseat(&plan, viewers);
                if let Some(contents) = contents {
                    plans.insert(plan, contents);
                }
            }
            for end in tree
                .links()
                .into_iter()
                .filter(|e| &e.forwarder == forwarder)
            {
                let upstream = end.direction == LinkDirection::Upstream;
                let id = format!(
                    "{meeting}/{}/{}",
                    end.relay.as_str(),
                    if upstream { "up" } else { "down" }
                );
                links.insert(
                    id.clone(),
                    DesiredLink {
                        id,
                        meeting: meeting.clone(),
                        local_meeting: end.local_plan.clone(),
                        peer_forwarder: end.peer_forwarder.clone(),
                        peer_address: end.peer_address.clone(),
                        upstream,
                        profile: end.srtp.profile.clone(),
                        send_key: end.srtp.send_key.clone(),
                        receive_key: end.srtp.receive_key.clone(),
                    },
                );
            }
        }
        Ok((plans, links, index))
    }

    /// Relay node `node` as plan `plan` (`None` if its webinar is gone or over), and the
    /// viewers seated on it.
    async fn node_plan(
        &self,
        node: &NodeHere,
        plan: &str,
    ) -> Result<(Option<DesiredMeeting>, Vec<ParticipantId>), ServiceError> {
        let Some(relays) = &self.relays else {
            return Ok((None, Vec::new()));
        };
        let viewers = relays.viewers_of(&node.meeting, &node.relay).await?;
        let seated: BTreeSet<ParticipantId> = viewers.iter().cloned().collect();
        let contents = self
            .legs(&node.meeting, plan, Members::Viewers(&seated))
            .await?
            .map(|contents| DesiredMeeting {
                id: plan.to_owned(),
                kind: contents.kind,
                listen_address: node.address.clone(),
                recording: None,
                legs: contents.legs,
            });
        Ok((contents, viewers))
    }

    /// The whole desired state of `forwarder`, complete up to the returned revision.
    pub async fn read(
        &self,
        forwarder: &ForwarderId,
    ) -> Result<(DesiredState, Revision), ServiceError> {
        let (placements, revision) = self.placements(forwarder).await?;
        let placed: BTreeMap<MeetingId, PlacementRecord> = placements
            .into_iter()
            .map(|p| (p.meeting.clone(), p))
            .collect();
        let mut state = DesiredState::default();
        for placement in placed.values() {
            if let Some(meeting) = self.meeting(placement).await? {
                state.meetings.insert(meeting.id.clone(), meeting);
            }
        }
        let relay_meetings = self.relay_meetings(forwarder, &placed).await?;
        let (plans, links, _) = self.relay_part(forwarder, &relay_meetings).await?;
        state.meetings.extend(plans);
        state.links = links;
        Ok((state, revision))
    }

    /// A snapshot, then changes, for as long as the stream is polled. Ends with an error
    /// item if the store fails; the caller (the forwarder) reconnects and gets a snapshot.
    pub fn watch(
        &self,
        forwarder: ForwarderId,
    ) -> BoxStream<'static, Result<DesiredUpdate, ServiceError>> {
        let this = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            if let Err(e) = this.run(&forwarder, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }

    /// The prefixes to watch: placements, every placed meeting's document, transports and
    /// audience, and with relays, every relay record and the viewers, transports and
    /// audience of the webinars with relays here.
    fn prefixes(
        &self,
        placed: &BTreeMap<MeetingId, PlacementRecord>,
        relay_meetings: &BTreeSet<MeetingId>,
    ) -> BTreeSet<String> {
        let mut set = BTreeSet::from([keys::placements()]);
        for id in placed.keys() {
            set.extend(meeting_prefixes(id));
        }
        if self.relays.is_some() {
            set.insert(keys::all_relays());
            for id in relay_meetings {
                set.extend(meeting_prefixes(id));
                set.insert(keys::relay_viewers(id));
            }
        }
        set
    }

    async fn run(
        &self,
        forwarder: &ForwarderId,
        tx: &tokio::sync::mpsc::Sender<Result<DesiredUpdate, ServiceError>>,
    ) -> Result<(), ServiceError> {
        let (placements, revision) = self.placements(forwarder).await?;
        let mut placed: BTreeMap<MeetingId, PlacementRecord> = placements
            .into_iter()
            .map(|p| (p.meeting.clone(), p))
            .collect();
        let mut sent = DesiredState::default();
        for placement in placed.values() {
            if let Some(meeting) = self.meeting(placement).await? {
                sent.meetings.insert(meeting.id.clone(), meeting);
            }
        }
        let mut relay_meetings = self.relay_meetings(forwarder, &placed).await?;
        let (plans, links, mut index) = self.relay_part(forwarder, &relay_meetings).await?;
        sent.meetings.extend(plans);
        sent.links = links;

        let mut watches: StreamMap<String, WatchStream> = StreamMap::new();
        self.rewatch(&mut watches, &placed, &relay_meetings, revision + 1)
            .await?;
        if tx
            .send(Ok(DesiredUpdate::Snapshot {
                revision,
                state: sent.clone(),
            }))
            .await
            .is_err()
        {
            return Ok(()); // The forwarder went away.
        }

        let mut last = revision;
        loop {
            // Wait for one event, then gather what else arrives within the debounce.
            let Some((_, first)) = watches.next().await else {
                return Err(StoreError::Unavailable("every watch ended".into()).into());
            };
            let mut events = vec![first];
            let deadline = tokio::time::Instant::now() + DEBOUNCE;
            while let Ok(Some((_, event))) = tokio::time::timeout_at(deadline, watches.next()).await
            {
                events.push(event);
            }
            let mut dirty: BTreeSet<MeetingId> = BTreeSet::new();
            let mut dirty_nodes: BTreeSet<String> = BTreeSet::new();
            let mut relays_dirty = false;
            for event in events {
                let event: WatchEvent = event?;
                last = last.max(event.revision);
                let key = &event.kv.key;
                if let Some(meeting) = placement_meeting(key) {
                    // A placement appeared, moved or went: re-read it.
                    dirty.insert(meeting);
                } else if key.starts_with(&keys::all_relays()) {
                    // The tree: nodes, their forwarders, links and keys.
                    relays_dirty = true;
                } else {
                    if let Some(meeting) = meeting_of(key, placed.keys()) {
                        dirty.insert(meeting);
                    }
                    if relay_meetings.iter().any(|m| key == &keys::meeting(m)) {
                        // The webinar's document (open or over, its kind): every node.
                        relays_dirty = true;
                    } else if let Some(plan) = index.node_of(key, &relay_meetings) {
                        dirty_nodes.insert(plan);
                    }
                }
            }
            // What each plan touched is now (`None`: gone), and the links if re-read.
            let mut replaced: BTreeMap<String, Option<DesiredMeeting>> = BTreeMap::new();
            let mut new_links = None;
            for id in &dirty {
                match self.placement_of(forwarder, id).await? {
                    Some(p) => {
                        placed.insert(id.clone(), p);
                    }
                    None => {
                        placed.remove(id);
                    }
                }
                let meeting = match placed.get(id) {
                    Some(p) => self.meeting(p).await?,
                    None => None,
                };
                replaced.insert(id.to_string(), meeting);
            }
            if relays_dirty || !dirty.is_empty() {
                let again = self.relay_meetings(forwarder, &placed).await?;
                if relays_dirty || again != relay_meetings {
                    relay_meetings = again;
                    let (plans, links, fresh) = self.relay_part(forwarder, &relay_meetings).await?;
                    for id in sent.meetings.keys().filter(|id| id.contains('/')) {
                        replaced.insert(id.clone(), None);
                    }
                    replaced.extend(plans.into_iter().map(|(id, plan)| (id, Some(plan))));
                    new_links = Some(links);
                    index = fresh;
                    // Every node was just read.
                    dirty_nodes.clear();
                }
            }
            for plan in dirty_nodes {
                let Some(node) = index.nodes.get(&plan) else {
                    continue;
                };
                let (contents, viewers) = self.node_plan(node, &plan).await?;
                index.reseat(&plan, viewers);
                replaced.insert(plan, contents);
            }
            self.rewatch(&mut watches, &placed, &relay_meetings, last + 1)
                .await?;
            // Only what was touched is compared: a join changes one plan of thousands.
            let mut changes = Vec::new();
            for (id, meeting) in replaced {
                diff(sent.meetings.get(&id), meeting.as_ref(), &mut changes);
                match meeting {
                    Some(meeting) => sent.meetings.insert(id, meeting),
                    None => sent.meetings.remove(&id),
                };
            }
            if let Some(links) = new_links {
                diff_links(&sent.links, &links, &mut changes);
                sent.links = links;
            }
            if !changes.is_empty()
                && tx
                    .send(Ok(DesiredUpdate::Changes {
                        revision: last,
                        changes,
                    }))
                    .await
                    .is_err()
            {
                return Ok(());
            }
        }
    }

    async fn placement_of(
        &self,
        forwarder: &ForwarderId,
        meeting: &MeetingId,
    ) -> Result<Option<PlacementRecord>, ServiceError> {
        let Some(kv) = self.store.get(&keys::placement(meeting)).await? else {
            return Ok(None);
        };
        let record: PlacementRecord =
            serde_json::from_slice(&kv.value).map_err(|e| ServiceError::Corrupt {
                key: kv.key.clone(),
                reason: e.to_string(),
            })?;
        Ok((&record.forwarder == forwarder).then_some(record))
    }

    /// Watch exactly the prefixes now needed: start the missing ones from `from`, drop
    /// the others.
    async fn rewatch(
        &self,
        watches: &mut StreamMap<String, WatchStream>,
        placed: &BTreeMap<MeetingId, PlacementRecord>,
        relay_meetings: &BTreeSet<MeetingId>,
        from: Revision,
    ) -> Result<(), ServiceError> {
        let wanted = self.prefixes(placed, relay_meetings);
        let stale: Vec<String> = watches
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for prefix in stale {
            watches.remove(&prefix);
        }
        for prefix in wanted {
            if !watches.contains_key(&prefix) {
                let stream = self.store.watch(&prefix, Some(from)).await?;
                watches.insert(prefix, stream);
            }
        }
        Ok(())
    }
}

/// The prefixes whose changes alter a meeting's desired state. The document's key is a
/// prefix of other meetings' keys too (`m1` of `m10`): events are matched exactly later.
fn meeting_prefixes(meeting: &MeetingId) -> [String; 3] {
    [
        keys::meeting(meeting),
        keys::transports(meeting),
        keys::audience(meeting),
    ]
}

fn placement_meeting(key: &str) -> Option<MeetingId> {
    key.strip_prefix(&keys::placements())
        .and_then(|id| MeetingId::new(id).ok())
}

/// Which of `meetings` an event of the per-meeting watches is about.
fn meeting_of<'a>(
    key: &str,
    mut meetings: impl Iterator<Item = &'a MeetingId>,
) -> Option<MeetingId> {
    meetings
        .find(|id| {
            key == keys::meeting(id)
                || key.starts_with(&keys::transports(id))
                || key.starts_with(&keys::audience(id))
        })
        .cloned()
}

/// The changes that turn the links `before` into `after`.
fn diff_links(
    before: &BTreeMap<String, DesiredLink>,
    after: &BTreeMap<String, DesiredLink>,
    out: &mut Vec<DesiredChange>,
) {
    for (id, link) in after {
        if before.get(id) != Some(link) {
            out.push(DesiredChange::LinkUpserted(link.clone()));
        }
    }
    for id in before.keys().filter(|id| !after.contains_key(*id)) {
        out.push(DesiredChange::LinkRemoved(id.clone()));
    }
}

/// The changes that turn `before` into `after` (either may be absent).
fn diff(
    before: Option<&DesiredMeeting>,
    after: Option<&DesiredMeeting>,
    out: &mut Vec<DesiredChange>,
) {
    match (before, after) {
        (None, None) => {}
        (Some(b), None) => out.push(DesiredChange::MeetingRemoved(b.id.clone())),
        (before, Some(a)) => {
            let settings_changed =
                before.is_none_or(|b| b.kind != a.kind || b.listen_address != a.listen_address);
            // A recording starting or stopping changes the plan, not the legs.
            let recording_changed = before.is_some_and(|b| b.recording != a.recording);
            if settings_changed || recording_changed {
                out.push(DesiredChange::MeetingUpserted(DesiredMeeting {
                    legs: BTreeMap::new(),
                    ..a.clone()
                }));
            }
            let empty = BTreeMap::new();
            let old = before.map_or(&empty, |b| &b.legs);
            for (id, leg) in &a.legs {
                if settings_changed || old.get(id) != Some(leg) {
                    out.push(DesiredChange::LegUpserted(Box::new(leg.clone())));
                }
            }
            for id in old.keys().filter(|id| !a.legs.contains_key(*id)) {
                out.push(DesiredChange::LegRemoved(a.id.clone(), id.clone()));
            }
        }
    }
}
