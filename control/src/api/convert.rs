//! Wire types (`pb`) to domain types and back. Requests are validated here only as far as
//! the wire format goes (an enum value out of range, a malformed id); every rule is the
//! domain's.

use tonic::Status;

use super::pb;
use crate::domain::{
    Actor, Breakout, BreakoutId, Limits, Meeting, MeetingEvent, MeetingKind, MeetingState,
    Participant, ParticipantId, Presence, Role, Schedule, UnixMillis,
};

/// An id field: a domain id, or INVALID_ARGUMENT naming the field.
pub(crate) fn id<T>(
    field: &str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, crate::domain::DomainError>,
) -> Result<T, Status> {
    parse(text).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// An optional id field where the empty string means none (the main room, ...).
pub(crate) fn optional_id<T>(
    field: &str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, crate::domain::DomainError>,
) -> Result<Option<T>, Status> {
    if text.is_empty() {
        Ok(None)
    } else {
        id(field, text, parse).map(Some)
    }
}

pub(crate) fn kind_from(value: i32) -> Result<MeetingKind, Status> {
    match pb::MeetingKind::try_from(value) {
        Ok(pb::MeetingKind::Meeting) => Ok(MeetingKind::Meeting),
        Ok(pb::MeetingKind::Webinar) => Ok(MeetingKind::Webinar),
        _ => Err(Status::invalid_argument(
            "kind: MEETING_KIND_MEETING or MEETING_KIND_WEBINAR",
        )),
    }
}

pub(crate) fn role_from(value: i32) -> Result<Role, Status> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Host) => Ok(Role::Host),
        Ok(pb::Role::Panelist) => Ok(Role::Panelist),
        Ok(pb::Role::Attendee) => Ok(Role::Attendee),
        _ => Err(Status::invalid_argument(
            "role: ROLE_HOST, ROLE_PANELIST or ROLE_ATTENDEE",
        )),
    }
}

pub(crate) fn schedule_from(schedule: &pb::Schedule) -> Schedule {
    let mut s = Schedule::new(
        UnixMillis(schedule.starts_at_unix_ms),
        UnixMillis(schedule.ends_at_unix_ms),
    );
    if let Some(early) = schedule.early_join_ms {
        s.early_join_ms = early;
    }
    s
}

pub(crate) fn limits_from(limits: &pb::Limits) -> Limits {
    Limits {
        max_participants: limits.max_participants,
        max_breakouts: limits.max_breakouts,
    }
}

fn kind_to(kind: MeetingKind) -> pb::MeetingKind {
    match kind {
        MeetingKind::Meeting => pb::MeetingKind::Meeting,
        MeetingKind::Webinar => pb::MeetingKind::Webinar,
    }
}

pub(crate) fn role_to(role: Role) -> pb::Role {
    match role {
        Role::Host => pb::Role::Host,
        Role::Panelist => pb::Role::Panelist,
        Role::Attendee => pb::Role::Attendee,
    }
}

pub(crate) fn presence_to(presence: Presence) -> pb::Presence {
    match presence {
        Presence::Waiting => pb::Presence::Waiting,
        Presence::Admitted => pb::Presence::Admitted,
        Presence::Left => pb::Presence::Left,
    }
}

fn room(breakout: &Option<BreakoutId>) -> String {
    breakout
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default()
}

pub(crate) fn participant_to(p: &Participant) -> pb::Participant {
    pb::Participant {
        participant_id: p.id.to_string(),
        display_name: p.display_name.clone(),
        role: role_to(p.role).into(),
        presence: presence_to(p.presence).into(),
        audio_muted: p.audio_muted,
        video_muted: p.video_muted,
        screen_sharing: p.screen_sharing,
        breakout_id: room(&p.breakout),
        can_publish: p.can_publish(),
        joined_at_unix_ms: p.joined_at.0,
        left_at_unix_ms: p.left_at.map_or(0, |t| t.0),
    }
}

pub(crate) fn breakout_to(id: &BreakoutId, b: &Breakout) -> pb::Breakout {
    pb::Breakout {
        breakout_id: id.to_string(),
        name: b.name.clone(),
        created_at_unix_ms: b.created_at.0,
    }
}

/// A meeting as the API shows it. `participants`: who to list (the stage, plus for a
/// webinar whatever audience the caller may see).
pub(crate) fn meeting_to<'a>(
    m: &Meeting,
    participants: impl IntoIterator<Item = &'a Participant>,
) -> pb::Meeting {
    let (state, ended_at) = match m.state() {
        MeetingState::Open => (pb::MeetingState::Open, 0),
        MeetingState::Ended { at } => (pb::MeetingState::Ended, at.0),
    };
    pb::Meeting {
        meeting_id: m.id().to_string(),
        kind: kind_to(m.kind()).into(),
        title: m.title().to_owned(),
        schedule: m.schedule().map(|s| pb::Schedule {
            starts_at_unix_ms: s.starts_at.0,
            ends_at_unix_ms: s.ends_at.0,
            early_join_ms: Some(s.early_join_ms),
        }),
        has_passcode: m.has_passcode(),
        has_host_key: m.has_host_key(),
        waiting_room: m.waiting_room(),
        limits: Some(pb::Limits {
            max_participants: m.limits().max_participants,
            max_breakouts: m.limits().max_breakouts,
        }),
        state: state.into(),
        ended_at_unix_ms: ended_at,
        recording: m.recording(),
        recording_id: m
            .recording_id()
            .map(ToString::to_string)
            .unwrap_or_default(),
        breakouts: m
            .breakouts()
            .iter()
            .map(|(id, b)| breakout_to(id, b))
            .collect(),
        participants: participants.into_iter().map(participant_to).collect(),
        created_at_unix_ms: m.created_at().0,
        active_speaker_id: m
            .active_speaker(None)
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

fn actor_to(actor: &Actor) -> pb::Actor {
    pb::Actor {
        participant_id: match actor {
            Actor::Participant(p) => p.to_string(),
            // The empty id is the operator (documented on `Actor` in the proto).
            Actor::Operator => String::new(),
        },
    }
}

fn pid(p: &ParticipantId) -> String {
    p.to_string()
}

/// One event as the `update` of a `MeetingUpdate`.
pub(crate) fn event_to(event: &MeetingEvent) -> pb::meeting_update::Update {
    use pb::meeting_update::Update as U;
    match event {
        MeetingEvent::UserJoined {
            participant,
            display_name,
            role,
        } => U::UserJoined(pb::UserJoined {
            participant_id: pid(participant),
            display_name: display_name.clone(),
            role: role_to(*role).into(),
        }),
        MeetingEvent::UserLeft { participant } => U::UserLeft(pb::UserLeft {
            participant_id: pid(participant),
        }),
        MeetingEvent::MuteChanged {
            participant,
            audio_muted,
            video_muted,
            by,
        } => U::MuteChanged(pb::MuteChanged {
            participant_id: pid(participant),
            audio_muted: *audio_muted,
            video_muted: *video_muted,
            by: Some(actor_to(by)),
        }),
        MeetingEvent::ScreenshareStarted {
            participant,
            breakout,
        } => U::ScreenshareStarted(pb::ScreenshareStarted {
            participant_id: pid(participant),
            breakout_id: room(breakout),
        }),
        MeetingEvent::ScreenshareStopped {
            participant,
            breakout,
        } => U::ScreenshareStopped(pb::ScreenshareStopped {
            participant_id: pid(participant),
            breakout_id: room(breakout),
        }),
        MeetingEvent::ActiveSpeaker {
            participant,
            breakout,
        } => U::ActiveSpeaker(pb::ActiveSpeaker {
            participant_id: pid(participant),
            breakout_id: room(breakout),
        }),
        MeetingEvent::Waiting {
            participant,
            display_name,
        } => U::Waiting(pb::Waiting {
            participant_id: pid(participant),
            display_name: display_name.clone(),
        }),
        MeetingEvent::Admitted { participant, by } => U::Admitted(pb::Admitted {
            participant_id: pid(participant),
            by: Some(actor_to(by)),
        }),
        MeetingEvent::Denied { participant, by } => U::Denied(pb::Denied {
            participant_id: pid(participant),
            by: Some(actor_to(by)),
        }),
        MeetingEvent::BreakoutCreated { breakout, name } => {
            U::BreakoutCreated(pb::BreakoutCreated {
                breakout_id: breakout.to_string(),
                name: name.clone(),
            })
        }
        MeetingEvent::BreakoutMoved {
            participant,
            from,
            to,
        } => U::BreakoutMoved(pb::BreakoutMoved {
            participant_id: pid(participant),
            from_breakout_id: room(from),
            to_breakout_id: room(to),
        }),
        MeetingEvent::BreakoutClosed { breakout } => U::BreakoutClosed(pb::BreakoutClosed {
            breakout_id: breakout.to_string(),
        }),
        MeetingEvent::RoleChanged {
            participant,
            from,
            to,
            by,
        } => U::RoleChanged(pb::RoleChanged {
            participant_id: pid(participant),
            from: role_to(*from).into(),
            to: role_to(*to).into(),
            by: by.as_ref().map(actor_to),
        }),
        MeetingEvent::MeetingEnded { by } => U::MeetingEnded(pb::MeetingEnded {
            by: Some(actor_to(by)),
        }),
        MeetingEvent::ForwarderChanged {
            participant,
            forwarder,
            address,
        } => U::ForwarderChanged(pb::ForwarderChanged {
            participant_id: participant.as_ref().map(pid).unwrap_or_default(),
            forwarder_id: forwarder.to_string(),
            forwarder_address: address.clone(),
        }),
        MeetingEvent::RecordingStarted { by, recording } => {
            U::RecordingStarted(pb::RecordingStarted {
                by: Some(actor_to(by)),
                recording_id: recording
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            })
        }
        MeetingEvent::RecordingStopped { by, recording } => {
            U::RecordingStopped(pb::RecordingStopped {
                by: Some(actor_to(by)),
                recording_id: recording
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            })
        }
    }
}

/// SRTP profiles by their RFC names, as the service layer knows them.
const PROFILES: [(pb::SrtpProfile, &str); 4] = [
    (
        pb::SrtpProfile::AesCm128HmacSha180,
        "AES_CM_128_HMAC_SHA1_80",
    ),
    (
        pb::SrtpProfile::AesCm128HmacSha132,
        "AES_CM_128_HMAC_SHA1_32",
    ),
    (pb::SrtpProfile::AeadAes128Gcm, "AEAD_AES_128_GCM"),
    (pb::SrtpProfile::AeadAes256Gcm, "AEAD_AES_256_GCM"),
];

pub(crate) fn profile_from(value: i32) -> Result<&'static str, Status> {
    let profile = pb::SrtpProfile::try_from(value)
        .map_err(|_| Status::invalid_argument(format!("srtp_profiles: unknown value {value}")))?;
    PROFILES
        .iter()
        .find(|(p, _)| *p == profile)
        .map(|(_, name)| *name)
        .ok_or_else(|| Status::invalid_argument("srtp_profiles: SRTP_PROFILE_UNSPECIFIED"))
}

pub(crate) fn profile_to(name: &str) -> pb::SrtpProfile {
    PROFILES
        .iter()
        .find(|(_, n)| *n == name)
        .map_or(pb::SrtpProfile::Unspecified, |(p, _)| *p)
}

pub(crate) fn track_kind_to(kind: crate::service::meetings::TrackKind) -> pb::TrackKind {
    use crate::service::meetings::TrackKind;
    match kind {
        TrackKind::Audio => pb::TrackKind::Audio,
        TrackKind::Camera => pb::TrackKind::Camera,
        TrackKind::Screen => pb::TrackKind::Screen,
    }
}

pub(crate) fn track_to(t: &crate::service::meetings::TrackAssignment) -> pb::TrackAssignment {
    pb::TrackAssignment {
        kind: track_kind_to(t.kind).into(),
        ssrcs: t.ssrcs.clone(),
        codec: t.codec.clone(),
        clock_rate: t.clock_rate,
        audio_level_extension_id: t.audio_level_extension.map_or(0, u32::from),
        mid: t.mid.clone().unwrap_or_default(),
        rids: t.rids.clone(),
        rtx_payload_type: t.rtx.map_or(0, |r| r.payload_type.into()),
        rtx_repaired_payload_type: t.rtx.map_or(0, |r| r.repairs.into()),
    }
}
