//! `WatchMeeting`: a snapshot, then the meeting's events in order, filtered for the viewer.
//!
//! The no-gap pattern of the [`Store`] docs: one read-only transaction reads the meeting
//! document (and the viewer's own audience record) at revision `R`, then a store watch on
//! the meeting's event prefix from `R + 1` delivers exactly the events after the snapshot.
//! A resumed watch (`after` given) skips the snapshot and watches from `after + 1`; when
//! the store no longer has that history ([`StoreError::Compacted`], as the first item or
//! later when the watcher fell behind), the stream sends a fresh snapshot and carries on
//! from it, so a client never has to tell the difference between "resumed" and "caught up".
//!
//! Events of one transaction share a revision and arrive together, in the order the
//! domain emitted them; resuming after revision `R` skips every event of `R`.

use std::sync::Arc;

use futures::StreamExt;

use super::{decode, AttendeeRecord, MeetingView, StoredEvent};
use crate::domain::{Actor, MeetingEvent, MeetingId, MeetingKind, ParticipantId, Role};
use crate::service::keys::{self, EventScope};
use crate::service::ServiceError;
use crate::store::{Op, Revision, Store, StoreError, Txn, WatchEventKind, WatchStream};

/// One item of a `WatchMeeting` stream.
#[derive(Debug, Clone)]
pub enum MeetingUpdate {
    /// The meeting as of `revision` (the store revision the snapshot was read at); events
    /// after it follow.
    Snapshot {
        revision: Revision,
        /// Boxed: a meeting document is large next to an event.
        view: Box<MeetingView>,
    },
    /// One event, with the store revision of the change that caused it.
    Event {
        revision: Revision,
        event: MeetingEvent,
    },
}

/// Who is watching, and so which events they get.
#[derive(Debug, Clone)]
pub(super) struct Viewer {
    /// `None` for the operator.
    pub(super) who: Option<ParticipantId>,
    /// In the webinar's audience (their snapshot includes their own record).
    pub(super) in_audience: bool,
    /// Hosts, panelists and the operator see every event; a webinar's attendees see stage
    /// events and audience events about themselves.
    pub(super) sees_everything: bool,
}

impl Viewer {
    pub(super) fn new(
        kind: MeetingKind,
        actor: &Actor,
        role: Option<Role>,
        in_audience: bool,
    ) -> Self {
        match actor {
            Actor::Operator => Viewer {
                who: None,
                in_audience: false,
                sees_everything: true,
            },
            Actor::Participant(p) => Viewer {
                who: Some(p.clone()),
                in_audience,
                sees_everything: kind == MeetingKind::Meeting
                    || (!in_audience && role.is_some_and(|r| r != Role::Attendee)),
            },
        }
    }

    fn sees(&self, scope: EventScope, event: &MeetingEvent) -> bool {
        self.sees_everything
            || scope == EventScope::Stage
            || (self.who.is_some() && subject(event) == self.who.as_ref())
    }

    /// A role change about the viewer changes what they see from the next event on.
    fn apply(&mut self, event: &MeetingEvent) {
        if let MeetingEvent::RoleChanged {
            participant, to, ..
        } = event
        {
            if self.who.as_ref() == Some(participant) {
                self.sees_everything = *to != Role::Attendee;
                self.in_audience = false;
            }
        }
    }
}

/// The participant an event is about, if any.
pub(super) fn subject(event: &MeetingEvent) -> Option<&ParticipantId> {
    use MeetingEvent as E;
    match event {
        E::UserJoined { participant, .. }
        | E::UserLeft { participant }
        | E::MuteChanged { participant, .. }
        | E::ScreenshareStarted { participant, .. }
        | E::ScreenshareStopped { participant, .. }
        | E::ActiveSpeaker { participant, .. }
        | E::Waiting { participant, .. }
        | E::Admitted { participant, .. }
        | E::Denied { participant, .. }
        | E::BreakoutMoved { participant, .. }
        | E::RoleChanged { participant, .. } => Some(participant),
        E::ForwarderChanged { participant, .. } => participant.as_ref(),
        E::BreakoutCreated { .. }
        | E::BreakoutClosed { .. }
        | E::MeetingEnded { .. }
        | E::RecordingStarted { .. }
        | E::RecordingStopped { .. } => None,
    }
}

/// Reads the meeting (and the viewer's own audience record) at one revision, and counts
/// the audience just after (the count is a size, not a list: a revision or two of skew is
/// harmless).
pub(super) async fn snapshot(
    store: &dyn Store,
    meeting: &MeetingId,
    viewer: &Viewer,
) -> Result<(Revision, MeetingView), ServiceError> {
    let doc_key = keys::meeting(meeting);
    let mut ops = vec![Op::get(doc_key.clone())];
    let attendee_key = match (&viewer.who, viewer.in_audience) {
        (Some(p), true) => Some(keys::attendee(meeting, p)),
        _ => None,
    };
    if let Some(k) = &attendee_key {
        ops.push(Op::get(k.clone()));
    }
    let resp = store.txn(Txn::new().and_then(ops)).await?;
    let mut gets = resp.gets.into_iter();
    let doc = gets
        .next()
        .flatten()
        .ok_or_else(|| crate::domain::DomainError::MeetingNotFound(meeting.clone()))?;
    let m: crate::domain::Meeting = decode(&doc.key, &doc.value)?;
    let attendee = match gets.next().flatten() {
        Some(kv) => Some(decode::<AttendeeRecord>(&kv.key, &kv.value)?.into_participant(&kv.key)?),
        None => None,
    };
    let audience = match m.kind() {
        MeetingKind::Webinar => store.count(&keys::audience(meeting)).await?.0,
        MeetingKind::Meeting => 0,
    };
    Ok((
        resp.revision,
        MeetingView {
            meeting: m,
            revision: doc.mod_revision,
            audience,
            attendee,
        },
    ))
}

/// The state of one `WatchMeeting` stream.
pub(super) struct Watch {
    pub(super) store: Arc<dyn Store>,
    pub(super) meeting: MeetingId,
    pub(super) viewer: Viewer,
    pub(super) stream: Option<WatchStream>,
    pub(super) needs_snapshot: bool,
    pub(super) done: bool,
}

impl Watch {
    pub(super) async fn next(&mut self) -> Option<Result<MeetingUpdate, ServiceError>> {
        loop {
            if self.done {
                return None;
            }
            if self.needs_snapshot {
                self.needs_snapshot = false;
                return Some(self.snapshot().await);
            }
            let Some(stream) = self.stream.as_mut() else {
                // Unreachable: every state without a stream asks for a snapshot first.
                self.done = true;
                return None;
            };
            let item = stream.next().await;
            match item {
                None => {
                    self.done = true;
                    return Some(Err(StoreError::Unavailable("watch ended".to_owned()).into()));
                }
                Some(Err(StoreError::Compacted { .. })) => {
                    // The history we needed is gone: start over from a fresh snapshot.
                    self.stream = None;
                    self.needs_snapshot = true;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
                Some(Ok(change)) => {
                    // Deletes are events expiring with their lease, not news.
                    if change.kind != WatchEventKind::Put {
                        continue;
                    }
                    let scope = if change
                        .kv
                        .key
                        .starts_with(&keys::events_in(&self.meeting, EventScope::Audience))
                    {
                        EventScope::Audience
                    } else {
                        EventScope::Stage
                    };
                    let event = match decode::<StoredEvent>(&change.kv.key, &change.kv.value)
                        .and_then(|s| s.into_event(&change.kv.key))
                    {
                        Ok(e) => e,
                        Err(e) => {
                            self.done = true;
                            return Some(Err(e));
                        }
                    };
                    if !self.viewer.sees(scope, &event) {
                        continue;
                    }
                    self.viewer.apply(&event);
                    if matches!(event, MeetingEvent::MeetingEnded { .. }) {
                        self.done = true;
                    }
                    return Some(Ok(MeetingUpdate::Event {
                        revision: change.revision,
                        event,
                    }));
                }
            }
        }
    }

    async fn snapshot(&mut self) -> Result<MeetingUpdate, ServiceError> {
        let result = self.try_snapshot().await;
        if result.is_err() {
            self.done = true;
        }
        result
    }

    async fn try_snapshot(&mut self) -> Result<MeetingUpdate, ServiceError> {
        let (revision, view) = snapshot(&*self.store, &self.meeting, &self.viewer).await?;
        if view.meeting.is_open() {
            let prefix = keys::events(&self.meeting);
            self.stream = Some(self.store.watch(&prefix, Some(revision + 1)).await?);
        } else {
            // An ended meeting has nothing more to say: the snapshot is the last item.
            self.done = true;
        }
        Ok(MeetingUpdate::Snapshot {
            revision,
            view: Box::new(view),
        })
    }
}
