//! The one error type of the domain, and the gRPC-shaped [`ErrorKind`] it maps to.
//!
//! Every variant means "nothing was changed": operations validate completely before they
//! mutate. The API layer turns an error into a `tonic::Status` in one place by matching on
//! [`DomainError::kind`]; the `Display` text becomes the status message, so it names what
//! was wrong without echoing secrets (no passcode, token or hash ever appears in it).

use super::ids::{BreakoutId, MeetingId, ParticipantId};
use super::time::UnixMillis;

/// What kind of failure an error is, named after the gRPC status codes it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request itself is malformed, whatever the state (bad id, empty title, window
    /// with start ≥ end).
    InvalidArgument,
    /// The meeting, participant or breakout named does not exist.
    NotFound,
    /// The caller is known but may not do this (not a host, wrong passcode, attendee
    /// trying to publish).
    PermissionDenied,
    /// The request is fine but the state does not allow it now (meeting ended, not yet
    /// open, someone else is sharing, participant still waiting).
    FailedPrecondition,
    /// Something with this id already exists.
    AlreadyExists,
    /// The join token is missing, malformed, forged, expired or for another meeting.
    Unauthenticated,
    /// A limit was reached (meeting full, too many breakout rooms).
    ResourceExhausted,
    /// A fault of this process, not of the request (the system RNG failed, a stored record
    /// is in an unknown format). Maps to `INTERNAL`.
    Internal,
}

/// Why a domain operation was refused. Nothing was changed when one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    // ---- InvalidArgument ----
    /// An id broke the id rules: 1..=64 characters of `[A-Za-z0-9._-]`.
    #[error("{what} {reason}")]
    InvalidId {
        /// Which id ("meeting id").
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A free-text field (title, display name, breakout name) is empty, too long or holds
    /// control characters.
    #[error("{field} {reason}")]
    InvalidText {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The schedule window is not a window (start ≥ end, too long, already over).
    #[error("schedule window {0}")]
    InvalidSchedule(&'static str),
    /// Limits outside what this kind of meeting supports.
    #[error("limits: {0}")]
    InvalidLimits(&'static str),
    /// A passcode or host key that breaks the passcode rules, or a stored hash that is not
    /// an argon2id PHC string.
    #[error("passcode {0}")]
    InvalidPasscode(&'static str),
    /// A request that asks for nothing (mute change with no field set, no breakouts).
    #[error("empty request: {0}")]
    EmptyRequest(&'static str),
    /// The same id appears twice in one request.
    #[error("{0} listed twice")]
    Duplicate(&'static str),

    // ---- NotFound ----
    /// No such meeting (used by the store and API layers; the domain works on one meeting).
    #[error("meeting {0} not found")]
    MeetingNotFound(MeetingId),
    /// No such participant in this meeting.
    #[error("participant {0} not found")]
    ParticipantNotFound(ParticipantId),
    /// No such breakout room in this meeting.
    #[error("breakout room {0} not found")]
    BreakoutNotFound(BreakoutId),

    // ---- PermissionDenied ----
    /// Only a host (or an operator) may do this.
    #[error("only a host may {0}")]
    NotHost(&'static str),
    /// The passcode is missing or does not match.
    #[error("passcode missing or wrong")]
    WrongPasscode,
    /// A host key was presented and does not match (or the meeting has none).
    #[error("host key does not match")]
    WrongHostKey,
    /// The participant's role does not allow publishing (a webinar attendee).
    #[error("participant {0} may not publish")]
    CannotPublish(ParticipantId),
    /// A host may mute others but only the participant may unmute themself.
    #[error("only the participant may unmute themself")]
    CannotUnmuteOthers,
    /// A participant may only act on themself here.
    #[error("participant may only {0} themself")]
    NotSelf(&'static str),

    // ---- FailedPrecondition ----
    /// The meeting has ended.
    #[error("meeting has ended")]
    MeetingEnded,
    /// A scheduled meeting is not open yet.
    #[error("meeting opens at {opens_at}")]
    NotOpenYet {
        /// When joining becomes possible (start minus the early-join allowance).
        opens_at: UnixMillis,
    },
    /// A scheduled meeting's window is over.
    #[error("meeting window closed at {0}")]
    WindowClosed(UnixMillis),
    /// The participant has left (or was denied) and can do nothing more.
    #[error("participant {0} has left")]
    ParticipantLeft(ParticipantId),
    /// The participant is in the waiting room; only `leave` is open to them.
    #[error("participant {0} is still in the waiting room")]
    StillWaiting(ParticipantId),
    /// Admit/deny of someone who is not in the waiting room.
    #[error("participant {0} is not in the waiting room")]
    NotWaiting(ParticipantId),
    /// Someone else is already sharing their screen in that room.
    #[error("participant {0} is already sharing a screen in this room")]
    ScreenShareBusy(ParticipantId),
    /// The last host may not demote themself or be demoted.
    #[error("a meeting must keep at least one host")]
    LastHost,
    /// Breakout rooms exist only in meetings, not webinars.
    #[error("webinars have no breakout rooms")]
    NoBreakoutsInWebinar,
    /// Active speaker reports for a muted participant are stale.
    #[error("participant {0} is muted")]
    Muted(ParticipantId),
    /// The join authority was issued for another meeting, or for a host role the meeting no
    /// longer grants. A programming error in the caller, or a race; retry from the start.
    #[error("join authority does not match this meeting")]
    StaleJoinAuthority,

    // ---- AlreadyExists ----
    /// A meeting with this id exists (used by the store on create).
    #[error("meeting {0} already exists")]
    MeetingExists(MeetingId),
    /// A participant with this id is already in the meeting.
    #[error("participant {0} already exists")]
    ParticipantExists(ParticipantId),
    /// A breakout room with this id already exists.
    #[error("breakout room {0} already exists")]
    BreakoutExists(BreakoutId),

    // ---- Unauthenticated ----
    /// The token is not well-formed.
    #[error("join token malformed")]
    TokenMalformed,
    /// The token's tag does not verify under our key.
    #[error("join token signature invalid")]
    TokenForged,
    /// The token's expiry has passed.
    #[error("join token expired")]
    TokenExpired,
    /// The token is valid but for another meeting.
    #[error("join token is for another meeting")]
    TokenWrongMeeting,

    // ---- ResourceExhausted ----
    /// The meeting is at `max_participants`.
    #[error("meeting is full ({0} participants)")]
    MeetingFull(u32),
    /// The meeting is at `max_breakouts`.
    #[error("too many breakout rooms (at most {0})")]
    TooManyBreakouts(u32),

    // ---- Internal ----
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Random,
    /// Key material of the wrong size or a hashing failure that is not the caller's fault.
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
}

impl DomainError {
    /// The gRPC-shaped kind of this error; the API layer's single mapping point.
    pub fn kind(&self) -> ErrorKind {
        use DomainError as E;
        match self {
            E::InvalidId { .. }
            | E::InvalidText { .. }
            | E::InvalidSchedule(_)
            | E::InvalidLimits(_)
            | E::InvalidPasscode(_)
            | E::EmptyRequest(_)
            | E::Duplicate(_) => ErrorKind::InvalidArgument,
            E::MeetingNotFound(_) | E::ParticipantNotFound(_) | E::BreakoutNotFound(_) => {
                ErrorKind::NotFound
            }
            E::NotHost(_)
            | E::WrongPasscode
            | E::WrongHostKey
            | E::CannotPublish(_)
            | E::CannotUnmuteOthers
            | E::NotSelf(_) => ErrorKind::PermissionDenied,
            E::MeetingEnded
            | E::NotOpenYet { .. }
            | E::WindowClosed(_)
            | E::ParticipantLeft(_)
            | E::StillWaiting(_)
            | E::NotWaiting(_)
            | E::ScreenShareBusy(_)
            | E::LastHost
            | E::NoBreakoutsInWebinar
            | E::Muted(_)
            | E::StaleJoinAuthority => ErrorKind::FailedPrecondition,
            E::MeetingExists(_) | E::ParticipantExists(_) | E::BreakoutExists(_) => {
                ErrorKind::AlreadyExists
            }
            E::TokenMalformed | E::TokenForged | E::TokenExpired | E::TokenWrongMeeting => {
                ErrorKind::Unauthenticated
            }
            E::MeetingFull(_) | E::TooManyBreakouts(_) => ErrorKind::ResourceExhausted,
            E::Random | E::Crypto(_) => ErrorKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_cover_each_family() {
        let p = ParticipantId::new("p").unwrap();
        let cases = [
            (DomainError::EmptyRequest("x"), ErrorKind::InvalidArgument),
            (
                DomainError::ParticipantNotFound(p.clone()),
                ErrorKind::NotFound,
            ),
            (DomainError::NotHost("admit"), ErrorKind::PermissionDenied),
            (DomainError::MeetingEnded, ErrorKind::FailedPrecondition),
            (DomainError::ParticipantExists(p), ErrorKind::AlreadyExists),
            (DomainError::TokenExpired, ErrorKind::Unauthenticated),
            (DomainError::MeetingFull(3), ErrorKind::ResourceExhausted),
            (DomainError::Random, ErrorKind::Internal),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err}");
        }
    }

    #[test]
    fn messages_name_the_problem() {
        assert_eq!(
            DomainError::InvalidText {
                field: "title",
                reason: "is empty"
            }
            .to_string(),
            "title is empty"
        );
        assert_eq!(
            DomainError::NotHost("admit participants").to_string(),
            "only a host may admit participants"
        );
    }
}
