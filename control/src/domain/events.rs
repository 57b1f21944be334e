//! What happened in a meeting, as streamed by `WatchMeeting`.
//!
//! Every domain operation returns the events it caused, in the order a watcher should apply
//! them; a watcher that starts from a [`super::meeting::Meeting`] snapshot and applies the
//! events after it sees the same state. An operation that changed nothing (setting a value
//! it already had) returns no events.
//!
//! The enum is deliberately *not* `#[non_exhaustive]`: the API layer matches on it to build
//! protobuf messages, and a new event should break that match rather than be dropped.
//! Stored and streamed as JSON with a `"type"` tag (`{"type":"USER_JOINED",...}`) that
//! matches the event names in the `MeetingUpdate` comments of `control.proto`.

use serde::{Deserialize, Serialize};

use super::ids::{BreakoutId, ForwarderId, ParticipantId, RecordingId};
use super::meeting::{Actor, Role};

/// One change to a meeting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MeetingEvent {
    /// A participant is now in the meeting (joined without waiting, or was admitted).
    UserJoined {
        /// Who.
        participant: ParticipantId,
        /// Their display name.
        display_name: String,
        /// Their role.
        role: Role,
    },
    /// A participant left (by themself). Not sent when the meeting ends: `MeetingEnded`
    /// implies everyone left.
    UserLeft {
        /// Who.
        participant: ParticipantId,
    },
    /// A participant's mute state changed; carries both flags as they now are.
    MuteChanged {
        /// Whose.
        participant: ParticipantId,
        /// Audio muted now.
        audio_muted: bool,
        /// Video muted now.
        video_muted: bool,
        /// Who changed it: the participant, a host muting them, or a side effect of a
        /// demotion (the host who demoted).
        by: Actor,
    },
    /// A participant started sharing their screen in a room (`None` = main room).
    ScreenshareStarted {
        /// Who.
        participant: ParticipantId,
        /// Which room.
        breakout: Option<BreakoutId>,
    },
    /// A screen share ended: stopped by the sharer or a host, or as a side effect of
    /// leaving, moving rooms, demotion or breakouts closing.
    ScreenshareStopped {
        /// Whose.
        participant: ParticipantId,
        /// The room it was in.
        breakout: Option<BreakoutId>,
    },
    /// The loudest publisher in a room changed.
    ActiveSpeaker {
        /// Who.
        participant: ParticipantId,
        /// Which room.
        breakout: Option<BreakoutId>,
    },
    /// A participant entered the waiting room.
    Waiting {
        /// Who.
        participant: ParticipantId,
        /// Their display name, for the host's admit list.
        display_name: String,
    },
    /// A host admitted a waiting participant (followed by `UserJoined`).
    Admitted {
        /// Who.
        participant: ParticipantId,
        /// The host.
        by: Actor,
    },
    /// A host turned a waiting participant away; they are gone.
    Denied {
        /// Who.
        participant: ParticipantId,
        /// The host.
        by: Actor,
    },
    /// A breakout room was created.
    BreakoutCreated {
        /// Its id.
        breakout: BreakoutId,
        /// Its name.
        name: String,
    },
    /// A participant moved between rooms (`None` = main room).
    BreakoutMoved {
        /// Who.
        participant: ParticipantId,
        /// From.
        from: Option<BreakoutId>,
        /// To.
        to: Option<BreakoutId>,
    },
    /// A breakout room closed (after the `BreakoutMoved` events that emptied it).
    BreakoutClosed {
        /// Which.
        breakout: BreakoutId,
    },
    /// A participant's role changed.
    RoleChanged {
        /// Whose.
        participant: ParticipantId,
        /// Before.
        from: Role,
        /// After.
        to: Role,
        /// Who changed it; `None` for the automatic hand-over when the last host leaves a
        /// meeting without a host key.
        by: Option<Actor>,
    },
    /// The meeting ended; everyone is out and every later call fails.
    MeetingEnded {
        /// Who ended it.
        by: Actor,
    },
    /// Placement moved a participant (or, with `participant: None`, the whole meeting) to
    /// another forwarder. Produced by the placement layer, not by [`super::Meeting`].
    ForwarderChanged {
        /// Whose media moved; `None` for all of the meeting's.
        participant: Option<ParticipantId>,
        /// The forwarder now serving.
        forwarder: ForwarderId,
        /// Its media address, `host:port`.
        address: String,
    },
    /// Recording started.
    RecordingStarted {
        /// Who started it.
        by: Actor,
        /// Its id; absent only in events written before recordings had ids.
        #[serde(default)]
        recording: Option<RecordingId>,
    },
    /// Recording stopped (by a host, or because the meeting ended).
    RecordingStopped {
        /// Who stopped it.
        by: Actor,
        #[serde(default)]
        recording: Option<RecordingId>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_carries_the_protobuf_names() {
        let e = MeetingEvent::UserLeft {
            participant: ParticipantId::new("p").unwrap(),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#"{"type":"USER_LEFT","participant":"p"}"#);
        assert_eq!(serde_json::from_str::<MeetingEvent>(&json).unwrap(), e);

        let e = MeetingEvent::RoleChanged {
            participant: ParticipantId::new("p").unwrap(),
            from: Role::Attendee,
            to: Role::Panelist,
            by: Some(Actor::Operator),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.starts_with(r#"{"type":"ROLE_CHANGED""#), "{json}");
        assert_eq!(serde_json::from_str::<MeetingEvent>(&json).unwrap(), e);
    }
}
