//! The meeting domain: meetings, participants, roles, the waiting room, breakout rooms,
//! join tokens and passcodes, as plain Rust.
//!
//! No I/O, no async, no clock: time comes in as [`UnixMillis`] from the caller, ids for new
//! things come in from the caller (made with `random()`), and each operation on a
//! [`Meeting`] returns the [`MeetingEvent`]s it caused or a [`DomainError`] having changed
//! nothing. The API layer's job is to authenticate (verify a [`JoinClaims`] token, then
//! [`Meeting::authenticate`]), load the meeting, call one method, store the result with a
//! compare-and-swap and publish the events; on a conflict it reloads and calls the method
//! again, which is safe because operations are deterministic and idempotent where that
//! makes sense (setting a value it already has emits nothing).
//!
//! Only the rare random values (fresh ids, token keys, passcode salts) come from the system
//! RNG, through aws-lc-rs.
//!
//! # Rules chosen
//!
//! * **Roles.** Host: publishes and runs the meeting. Panelist: publishes. Attendee:
//!   watches. A *meeting* is a room where joiners are panelists; a *webinar* is one where
//!   they are attendees, who publish only when a host promotes them.
//!   [`Participant::can_publish`] is "admitted and not an attendee". An [`Actor::Operator`]
//!   (an admin credential, checked by the API layer) counts as a host everywhere.
//! * **Who hosts.** A joiner who presents the meeting's host key becomes host (and skips
//!   the passcode, the waiting room and the capacity limit). A meeting created *without* a
//!   host key gives hosting to whoever joins while no admitted host is present: the first
//!   joiner, or the first after everyone left. When the last admitted host of such a meeting
//!   leaves, hosting passes at once to the earliest-joined admitted panelist (else
//!   attendee). Meetings *with* a host key never promote automatically: a key holder can
//!   always rejoin. Role changes may never demote the last admitted host.
//! * **The audience.** A webinar's attendees are not kept in the [`Meeting`] document
//!   (50,000 of them would not fit one etcd value, and every join would contend on it):
//!   [`Meeting::seat`] says where a joiner goes, and the audience operations
//!   ([`Meeting::join_audience`], [`Meeting::admit_audience`], [`Meeting::deny_audience`],
//!   [`Meeting::leave_audience`], [`Meeting::mute_audience`]) decide with `&self` and change
//!   only the attendee's own [`Participant`], which the caller stores in its own record.
//!   The caller also counts the audience for capacity. [`Meeting::promote_attendee`] moves
//!   an attendee onto the stage. Hand-over when the last host leaves only looks at the
//!   stage; with nobody there to inherit, the next joiner becomes host as usual.
//! * **Passcodes.** Checked once per join by [`Meeting::authorize_join`] (argon2, slow by
//!   design), which yields a [`JoinAuthority`] for the cheap [`Meeting::join`]. A wrong or
//!   missing passcode or host key is `PermissionDenied`; a bad or expired token is
//!   `Unauthenticated`.
//! * **Schedule.** A scheduled meeting accepts joins from `starts_at - early_join` (default
//!   10 minutes, at most an hour) until `ends_at`, hosts included. Those inside at
//!   `ends_at` stay until someone ends the meeting.
//! * **Waiting room.** When on, every non-host waits; hosts admit or deny. Waiting counts
//!   against `max_participants`. A waiting participant can only leave.
//! * **Mute.** Your own flags either way; a host may mute you but not unmute you; those who
//!   cannot publish are always muted (joining and demotion force it).
//! * **Screen share.** Only those who can publish; one share per room (the main room and
//!   each breakout room independently); a second sharer is refused, not a takeover. Moving
//!   rooms, leaving, demotion to attendee and closing breakouts stop a share.
//! * **Breakouts.** Meetings only (not webinars). Hosts create rooms, move admitted
//!   participants in and out, and close all rooms at once, which returns everyone to the
//!   main room.
//! * **Ending.** Host or operator; everyone present is marked left, recording stops, and
//!   every later operation fails with `FailedPrecondition`.
//!
//! # Storage format
//!
//! [`Meeting`] serialises to one JSON document with `"version": 1`; reading any other
//! version fails rather than guess. Secrets are stored only as argon2id PHC strings.
//! Events serialise with a `"type"` tag named like the protobuf enum.

mod error;
mod events;
mod ids;
mod meeting;
mod passcode;
mod time;
mod token;

pub use error::{DomainError, ErrorKind};
pub use events::MeetingEvent;
pub use ids::{BreakoutId, ForwarderId, MeetingId, ParticipantId, RecordingId, MAX_ID_LEN};
pub use meeting::{
    Actor, Breakout, JoinAuthority, JoinRequest, Limits, Meeting, MeetingKind, MeetingSpec,
    MeetingState, MuteChange, NewBreakout, Participant, Presence, Role, Schedule, Seat,
    DEFAULT_EARLY_JOIN, MAX_BREAKOUTS, MAX_EARLY_JOIN, MAX_MEETING_PARTICIPANTS, MAX_NAME_CHARS,
    MAX_TITLE_CHARS, MAX_WEBINAR_PARTICIPANTS, MAX_WINDOW, MEETING_FORMAT_VERSION,
};
pub use passcode::{Passcode, PasscodeCost, PasscodeHash, MAX_PASSCODE_CHARS, MIN_PASSCODE_CHARS};
pub use time::UnixMillis;
pub use token::{
    bearer_token, JoinClaims, TokenKey, DEFAULT_TOKEN_TTL, MAX_TOKEN_KEY_LEN, MAX_TOKEN_LEN,
    TOKEN_KEY_LEN,
};
