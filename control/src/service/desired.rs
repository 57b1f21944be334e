//! What each forwarder should hold, derived from the store and streamed to it
//! (`Forwarders.WatchDesiredState`).
//!
//! A forwarder's desired state is computed, never stored: the meetings placed on it
//! (`v1/placements/`), and for each, one leg per participant who is present and admitted,
//! with the SRTP keys and track SSRCs its join handed out (`v1/transports/`), whether it
//! may publish, and its room. Waiting participants get no leg until admitted: media never
//! reaches the waiting room.
//!
//! The stream is level-triggered: a snapshot at revision `R`, then watches from `R + 1` on
//! the placements and on each placed meeting's document, transports and audience. Any
//! change to a meeting marks it dirty; dirty meetings are recomputed (after a short
//! debounce, so a burst of joins is one batch) and diffed against what was last sent, and
//! only the difference goes out. Reading a meeting a little later than the event that
//! marked it is harmless: the recomputation sees at least that change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use tokio_stream::StreamMap;

use super::keys;
use super::meetings::{read_attendee, read_meeting, read_transport, TrackAssignment};
use super::placement::PlacementRecord;
use super::ServiceError;
use crate::domain::{
    BreakoutId, ForwarderId, MeetingId, MeetingKind, Participant, ParticipantId, Presence,
};
use crate::store::{Revision, Store, StoreError, WatchEvent, WatchStream};

/// How long to gather changes before recomputing: joins come in bursts.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// One participant's leg on the forwarder.
#[derive(Clone, PartialEq, Eq)]
pub struct DesiredLeg {
    pub meeting: MeetingId,
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
            .finish_non_exhaustive()
    }
}

/// One meeting placed on the forwarder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredMeeting {
    pub id: MeetingId,
    pub kind: MeetingKind,
    /// `host:port` the meeting's legs send to (its own port: its shard).
    pub listen_address: String,
    pub legs: BTreeMap<ParticipantId, DesiredLeg>,
}

/// Everything a forwarder should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub meetings: BTreeMap<MeetingId, DesiredMeeting>,
}

/// One change to apply, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesiredChange {
    /// A new meeting, or one whose own settings changed (its legs follow as their own
    /// changes).
    MeetingUpserted(DesiredMeeting),
    /// The meeting and all its legs are gone.
    MeetingRemoved(MeetingId),
    LegUpserted(DesiredLeg),
    LegRemoved(MeetingId, ParticipantId),
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
}

impl DesiredStates {
    pub fn new(store: Arc<dyn Store>) -> Self {
        DesiredStates { store }
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
        let Some(doc) = self.store.get(&keys::meeting(id)).await? else {
            return Ok(None);
        };
        let meeting = read_meeting(&doc.key, &doc.value)?;
        if !meeting.is_open() {
            return Ok(None);
        }
        let mut present: BTreeMap<ParticipantId, Participant> = meeting
            .participants()
            .iter()
            .filter(|(_, p)| p.presence == Presence::Admitted)
            .map(|(id, p)| (id.clone(), p.clone()))
            .collect();
        if meeting.kind() == MeetingKind::Webinar {
            let (audience, _) = self.store.range(&keys::audience(id)).await?;
            for kv in audience {
                let p = read_attendee(&kv.key, &kv.value)?;
                if p.presence == Presence::Admitted {
                    present.insert(p.id.clone(), p);
                }
            }
        }
        let (transports, _) = self.store.range(&keys::transports(id)).await?;
        let mut legs = BTreeMap::new();
        for kv in transports {
            let transport = read_transport(&kv.key, &kv.value)?;
            let Some(p) = present.get(&transport.participant) else {
                continue;
            };
            legs.insert(
                p.id.clone(),
                DesiredLeg {
                    meeting: id.clone(),
                    participant: p.id.clone(),
                    profile: transport.srtp.profile.clone(),
                    inbound_key: transport.srtp.send_key.clone(),
                    outbound_key: transport.srtp.receive_key.clone(),
                    can_publish: p.can_publish(),
                    breakout: p.breakout.clone(),
                    tracks: transport.tracks.clone(),
                },
            );
        }
        Ok(Some(DesiredMeeting {
            id: id.clone(),
            kind: meeting.kind(),
            listen_address: placement.address.clone(),
            legs,
        }))
    }

    /// The whole desired state of `forwarder`, complete up to the returned revision.
    pub async fn read(
        &self,
        forwarder: &ForwarderId,
    ) -> Result<(DesiredState, Revision), ServiceError> {
        let (placements, revision) = self.placements(forwarder).await?;
        let mut state = DesiredState::default();
        for placement in &placements {
            if let Some(meeting) = self.meeting(placement).await? {
                state.meetings.insert(meeting.id.clone(), meeting);
            }
        }
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
        let mut watches: StreamMap<String, WatchStream> = StreamMap::new();
        watches.insert(
            keys::placements(),
            self.store
                .watch(&keys::placements(), Some(revision + 1))
                .await?,
        );
        for id in placed.keys() {
            self.watch_meeting(&mut watches, id, revision + 1).await?;
        }
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
            for event in events {
                let event: WatchEvent = event?;
                last = last.max(event.revision);
                if let Some(meeting) = placement_meeting(&event.kv.key) {
                    // A placement appeared, moved or went: re-read it.
                    dirty.insert(meeting);
                } else if let Some(meeting) = meeting_of(&event.kv.key, &placed) {
                    dirty.insert(meeting);
                }
            }
            let mut changes = Vec::new();
            for id in dirty {
                let placement = self.placement_of(forwarder, &id).await?;
                match placement {
                    Some(p) => {
                        if !placed.contains_key(&id) {
                            self.watch_meeting(&mut watches, &id, last + 1).await?;
                        }
                        placed.insert(id.clone(), p);
                    }
                    None => {
                        if placed.remove(&id).is_some() {
                            for prefix in meeting_prefixes(&id) {
                                watches.remove(&prefix);
                            }
                        }
                    }
                }
                let now = match placed.get(&id) {
                    Some(p) => self.meeting(p).await?,
                    None => None,
                };
                diff(sent.meetings.get(&id), now.as_ref(), &mut changes);
                match now {
                    Some(m) => sent.meetings.insert(id, m),
                    None => sent.meetings.remove(&id),
                };
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

    async fn watch_meeting(
        &self,
        watches: &mut StreamMap<String, WatchStream>,
        meeting: &MeetingId,
        from: Revision,
    ) -> Result<(), ServiceError> {
        for prefix in meeting_prefixes(meeting) {
            let stream = self.store.watch(&prefix, Some(from)).await?;
            watches.insert(prefix, stream);
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

/// Which placed meeting an event of the per-meeting watches is about.
fn meeting_of(key: &str, placed: &BTreeMap<MeetingId, PlacementRecord>) -> Option<MeetingId> {
    placed.keys().find_map(|id| {
        let exact = key == keys::meeting(id)
            || key.starts_with(&keys::transports(id))
            || key.starts_with(&keys::audience(id));
        exact.then(|| id.clone())
    })
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
            if settings_changed {
                out.push(DesiredChange::MeetingUpserted(DesiredMeeting {
                    legs: BTreeMap::new(),
                    ..a.clone()
                }));
            }
            let empty = BTreeMap::new();
            let old = before.map_or(&empty, |b| &b.legs);
            for (id, leg) in &a.legs {
                if settings_changed || old.get(id) != Some(leg) {
                    out.push(DesiredChange::LegUpserted(leg.clone()));
                }
            }
            for id in old.keys().filter(|id| !a.legs.contains_key(*id)) {
                out.push(DesiredChange::LegRemoved(a.id.clone(), id.clone()));
            }
        }
    }
}
