//! Meetings and participants, and every rule about what may happen to them.
//!
//! Each operation is a method on [`Meeting`] that first validates everything (arguments,
//! then the caller's identity and permission, then the state), and only then mutates. It
//! returns the [`MeetingEvent`]s it caused, or a [`DomainError`] with the meeting exactly as
//! it was. Setting something to the value it already has succeeds with no events, so a
//! request retried after a lost reply (or a compare-and-swap retried after a conflict) is
//! harmless.
//!
//! See the parent module's docs for the rules chosen (who becomes host, waiting room,
//! screen sharing, breakouts, roles).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::DomainError;
use super::events::MeetingEvent;
use super::ids::{BreakoutId, MeetingId, ParticipantId, RecordingId};
use super::passcode::{Passcode, PasscodeHash};
use super::time::UnixMillis;
use super::token::JoinClaims;

/// Longest meeting title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest display name or breakout room name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest schedule window.
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Longest early-join allowance.
pub const MAX_EARLY_JOIN: Duration = Duration::from_secs(60 * 60);
/// Early-join allowance used when a schedule does not say.
pub const DEFAULT_EARLY_JOIN: Duration = Duration::from_secs(10 * 60);
/// Most participants in a meeting: everyone may publish, so fan-out grows with the square.
pub const MAX_MEETING_PARTICIPANTS: u32 = 1_000;
/// Most participants in a webinar: few publish, everyone watches.
pub const MAX_WEBINAR_PARTICIPANTS: u32 = 100_000;
/// Most breakout rooms in a meeting.
pub const MAX_BREAKOUTS: u32 = 100;

/// The storage format version written in every [`Meeting`]'s `version` field.
pub const MEETING_FORMAT_VERSION: u32 = 1;

/// Which kind of room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeetingKind {
    /// Everyone admitted may publish (joiners are panelists).
    Meeting,
    /// Only hosts and panelists publish; joiners are attendees who watch.
    Webinar,
}

/// What a participant may do. Roles are about permissions, not separate kinds of peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Publishes and runs the meeting (admit, deny, roles, breakouts, recording, end).
    Host,
    /// Publishes.
    Panelist,
    /// Watches only.
    Attendee,
}

/// Where a participant is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// In the waiting room: may only leave (and watch for being admitted).
    Waiting,
    /// In the meeting.
    Admitted,
    /// Gone: left, denied, or the meeting ended. Can do nothing more.
    Left,
}

/// Whether the meeting still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MeetingState {
    /// Accepting joins (subject to the schedule) and operations.
    Open,
    /// Over; every operation fails with `FailedPrecondition`.
    Ended {
        /// When it ended.
        at: UnixMillis,
    },
}

/// Who is doing something that needs authority.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// A participant, identified by a verified join token.
    Participant(ParticipantId),
    /// The service's operator (an admin credential checked by the API layer, or the
    /// control plane itself, e.g. ending a meeting whose window is over). Counts as a host
    /// for every permission check.
    Operator,
}

/// When a scheduled meeting may be joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Scheduled start.
    pub starts_at: UnixMillis,
    /// Scheduled end: no joins from this instant on (those in the meeting stay until it is
    /// ended; the domain has no clock to end it by itself).
    pub ends_at: UnixMillis,
    /// How long before `starts_at` joining opens, in milliseconds.
    pub early_join_ms: u64,
}

impl Schedule {
    /// A window with the default early-join allowance.
    pub fn new(starts_at: UnixMillis, ends_at: UnixMillis) -> Self {
        Schedule {
            starts_at,
            ends_at,
            early_join_ms: DEFAULT_EARLY_JOIN.as_millis() as u64,
        }
    }

    /// The first instant a join is accepted.
    pub fn opens_at(&self) -> UnixMillis {
        self.starts_at
            .saturating_sub(Duration::from_millis(self.early_join_ms))
    }
}

/// Size limits of one meeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Participants present at once, waiting room included. Host-key holders are let in
    /// even when full, so a full meeting can still be run.
    pub max_participants: u32,
    /// Breakout rooms open at once; must be 0 for webinars.
    pub max_breakouts: u32,
}

impl Limits {
    /// Defaults: meetings 300 people and 50 rooms; webinars 50,000 people and no rooms.
    pub fn default_for(kind: MeetingKind) -> Self {
        match kind {
            MeetingKind::Meeting => Limits {
                max_participants: 300,
                max_breakouts: 50,
            },
            MeetingKind::Webinar => Limits {
                max_participants: 50_000,
                max_breakouts: 0,
            },
        }
    }

    fn validate(&self, kind: MeetingKind) -> Result<(), DomainError> {
        let cap = match kind {
            MeetingKind::Meeting => MAX_MEETING_PARTICIPANTS,
            MeetingKind::Webinar => MAX_WEBINAR_PARTICIPANTS,
        };
        if self.max_participants == 0 {
            return Err(DomainError::InvalidLimits(
                "max_participants must be at least 1",
            ));
        }
        if self.max_participants > cap {
            return Err(DomainError::InvalidLimits(match kind {
                MeetingKind::Meeting => "max_participants above 1000 for a meeting",
                MeetingKind::Webinar => "max_participants above 100000 for a webinar",
            }));
        }
        if kind == MeetingKind::Webinar && self.max_breakouts != 0 {
            return Err(DomainError::InvalidLimits(
                "webinars have no breakout rooms",
            ));
        }
        if self.max_breakouts > MAX_BREAKOUTS {
            return Err(DomainError::InvalidLimits("max_breakouts above 100"));
        }
        Ok(())
    }
}

/// What `CreateMeeting` asks for. Secrets arrive already hashed: hashing is slow and belongs
/// outside whatever lock or transaction the caller holds around [`Meeting::create`].
#[derive(Debug, Clone)]
pub struct MeetingSpec {
    /// Meeting or webinar.
    pub kind: MeetingKind,
    /// 1..=200 characters, no control characters; trimmed.
    pub title: String,
    /// Optional window.
    pub schedule: Option<Schedule>,
    /// Optional passcode every non-host joiner must present.
    pub passcode: Option<PasscodeHash>,
    /// Optional host key: who presents it joins as host. Without one, hosting goes to the
    /// first joiner (see the module docs).
    pub host_key: Option<PasscodeHash>,
    /// Whether non-hosts wait for admission.
    pub waiting_room: bool,
    /// `None` for [`Limits::default_for`] the kind.
    pub limits: Option<Limits>,
}

/// A breakout room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breakout {
    /// Its name, 1..=64 characters.
    pub name: String,
    /// When it was created.
    pub created_at: UnixMillis,
    /// Its loudest publisher, as last reported.
    pub active_speaker: Option<ParticipantId>,
}

/// One join of one person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// Fresh per join.
    pub id: ParticipantId,
    /// 1..=64 characters, trimmed.
    pub display_name: String,
    /// What they may do.
    pub role: Role,
    /// Where they are.
    pub presence: Presence,
    /// Microphone muted (always true for those who cannot publish).
    pub audio_muted: bool,
    /// Camera muted (always true for those who cannot publish).
    pub video_muted: bool,
    /// Sharing their screen in their room.
    pub screen_sharing: bool,
    /// Their breakout room; `None` is the main room.
    pub breakout: Option<BreakoutId>,
    /// When they joined; orders the automatic host hand-over.
    pub joined_at: UnixMillis,
    /// When they left, were denied, or the meeting ended.
    pub left_at: Option<UnixMillis>,
}

impl Participant {
    /// Whether the forwarder should accept media from them: admitted and not an attendee.
    pub fn can_publish(&self) -> bool {
        self.presence == Presence::Admitted && self.role != Role::Attendee
    }

    /// Waiting or admitted (counts against `max_participants`).
    pub fn is_present(&self) -> bool {
        self.presence != Presence::Left
    }
}

/// What a joiner supplies besides their secrets.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// A fresh id, made by the caller ([`ParticipantId::random`]) so that the domain stays
    /// deterministic and a retried transaction keeps the same id.
    pub participant: ParticipantId,
    /// 1..=64 characters, no control characters; trimmed.
    pub display_name: String,
    /// Join with the microphone muted (forced for those who cannot publish).
    pub audio_muted: bool,
    /// Join with the camera off (forced for those who cannot publish).
    pub video_muted: bool,
}

/// Proof that a joiner's passcode or host key was checked against this meeting, made by
/// [`Meeting::authorize_join`]. It exists so the slow argon2 check runs once, outside any
/// compare-and-swap retry loop, while [`Meeting::join`] stays cheap and pure. It cannot be
/// built outside the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinAuthority {
    meeting: MeetingId,
    as_host: bool,
}

impl JoinAuthority {
    /// Whether a host key was verified: the joiner becomes host.
    pub fn as_host(&self) -> bool {
        self.as_host
    }
}

/// Where a joiner goes ([`Meeting::seat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seat {
    /// Into the meeting document: everyone in a meeting; a webinar's hosts and panelists.
    Stage,
    /// A webinar's attendee: kept outside the document, one record each, so that a large
    /// audience neither bloats the document nor makes every join contend on it.
    Audience,
}

/// A change of mute flags; `None` leaves a flag alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MuteChange {
    /// New audio-muted flag.
    pub audio: Option<bool>,
    /// New video-muted flag.
    pub video: Option<bool>,
}

/// A breakout room to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBreakout {
    /// Made by the caller ([`BreakoutId::random`]) for the same reason as participant ids.
    pub id: BreakoutId,
    /// 1..=64 characters.
    pub name: String,
}

/// The `version` field: serialises as [`MEETING_FORMAT_VERSION`] and refuses anything else
/// on the way in, so an old binary never half-reads a newer record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct FormatVersion;

impl Serialize for FormatVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(MEETING_FORMAT_VERSION)
    }
}

impl<'de> Deserialize<'de> for FormatVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        if v == MEETING_FORMAT_VERSION {
            Ok(FormatVersion)
        } else {
            Err(serde::de::Error::custom(format_args!(
                "unsupported meeting format version {v} (this build reads {MEETING_FORMAT_VERSION})"
            )))
        }
    }
}

/// A meeting or webinar and everyone in it. Stored as one JSON document with a `version`
/// field ([`MEETING_FORMAT_VERSION`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meeting {
    version: FormatVersion,
    id: MeetingId,
    kind: MeetingKind,
    title: String,
    schedule: Option<Schedule>,
    passcode: Option<PasscodeHash>,
    host_key: Option<PasscodeHash>,
    waiting_room: bool,
    limits: Limits,
    state: MeetingState,
    recording: bool,
    /// The recording under way while `recording`. Absent from documents written before
    /// recordings had ids.
    #[serde(default)]
    recording_id: Option<RecordingId>,
    active_speaker: Option<ParticipantId>,
    breakouts: BTreeMap<BreakoutId, Breakout>,
    participants: BTreeMap<ParticipantId, Participant>,
    created_at: UnixMillis,
}

/// Trims and checks a free-text field.
fn validate_text(field: &'static str, s: &str, max_chars: usize) -> Result<String, DomainError> {
    let t = s.trim();
    let reason = if t.is_empty() {
        "is empty"
    } else if t.chars().count() > max_chars {
        if max_chars == MAX_TITLE_CHARS {
            "is longer than 200 characters"
        } else {
            "is longer than 64 characters"
        }
    } else if t.chars().any(char::is_control) {
        "has a control character"
    } else {
        return Ok(t.to_owned());
    };
    Err(DomainError::InvalidText { field, reason })
}

/// An audience member must be waiting (admit, deny).
fn require_waiting_member(member: &Participant) -> Result<(), DomainError> {
    match member.presence {
        Presence::Waiting => Ok(()),
        Presence::Admitted => Err(DomainError::NotWaiting(member.id.clone())),
        Presence::Left => Err(DomainError::ParticipantLeft(member.id.clone())),
    }
}

/// An audience member must be admitted (mute, promotion).
fn require_admitted_member(member: &Participant) -> Result<(), DomainError> {
    match member.presence {
        Presence::Admitted => Ok(()),
        Presence::Waiting => Err(DomainError::StillWaiting(member.id.clone())),
        Presence::Left => Err(DomainError::ParticipantLeft(member.id.clone())),
    }
}

impl Meeting {
    // ------------------------------------------------------------------ creation

    /// Validates `spec` and makes an open meeting with nobody in it.
    ///
    /// A schedule needs `starts_at < ends_at`, at most 7 days long, `ends_at` after `now`,
    /// and an early-join allowance of at most an hour.
    pub fn create(id: MeetingId, spec: MeetingSpec, now: UnixMillis) -> Result<Self, DomainError> {
        let title = validate_text("title", &spec.title, MAX_TITLE_CHARS)?;
        if let Some(s) = &spec.schedule {
            if s.starts_at >= s.ends_at {
                return Err(DomainError::InvalidSchedule("starts at or after its end"));
            }
            if s.ends_at.0 - s.starts_at.0 > MAX_WINDOW.as_millis() as u64 {
                return Err(DomainError::InvalidSchedule("is longer than 7 days"));
            }
            if s.ends_at <= now {
                return Err(DomainError::InvalidSchedule("is already over"));
            }
            if s.early_join_ms > MAX_EARLY_JOIN.as_millis() as u64 {
                return Err(DomainError::InvalidSchedule(
                    "early join allowance above 1 hour",
                ));
            }
        }
        let limits = spec
            .limits
            .unwrap_or_else(|| Limits::default_for(spec.kind));
        limits.validate(spec.kind)?;
        Ok(Meeting {
            version: FormatVersion,
            id,
            kind: spec.kind,
            title,
            schedule: spec.schedule,
            passcode: spec.passcode,
            host_key: spec.host_key,
            waiting_room: spec.waiting_room,
            limits,
            state: MeetingState::Open,
            recording: false,
            recording_id: None,
            active_speaker: None,
            breakouts: BTreeMap::new(),
            participants: BTreeMap::new(),
            created_at: now,
        })
    }

    // ------------------------------------------------------------------ reading

    /// Its id.
    pub fn id(&self) -> &MeetingId {
        &self.id
    }
    /// Meeting or webinar.
    pub fn kind(&self) -> MeetingKind {
        self.kind
    }
    /// Its title.
    pub fn title(&self) -> &str {
        &self.title
    }
    /// Its window, if scheduled.
    pub fn schedule(&self) -> Option<&Schedule> {
        self.schedule.as_ref()
    }
    /// Whether joiners need a passcode.
    pub fn has_passcode(&self) -> bool {
        self.passcode.is_some()
    }
    /// Whether hosting is by host key (rather than first joiner).
    pub fn has_host_key(&self) -> bool {
        self.host_key.is_some()
    }
    /// Whether non-hosts wait for admission.
    pub fn waiting_room(&self) -> bool {
        self.waiting_room
    }
    /// Its limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
    /// Open or ended.
    pub fn state(&self) -> MeetingState {
        self.state
    }
    /// Whether it is open.
    pub fn is_open(&self) -> bool {
        self.state == MeetingState::Open
    }
    /// Whether it is being recorded.
    pub fn recording(&self) -> bool {
        self.recording
    }
    /// The recording under way, if any.
    pub fn recording_id(&self) -> Option<&RecordingId> {
        self.recording_id.as_ref().filter(|_| self.recording)
    }
    /// When it was created.
    pub fn created_at(&self) -> UnixMillis {
        self.created_at
    }
    /// Its breakout rooms.
    pub fn breakouts(&self) -> &BTreeMap<BreakoutId, Breakout> {
        &self.breakouts
    }
    /// Everyone who joined, including those who left (until [`Meeting::prune_departed`]).
    pub fn participants(&self) -> &BTreeMap<ParticipantId, Participant> {
        &self.participants
    }
    /// One participant.
    pub fn participant(&self, id: &ParticipantId) -> Option<&Participant> {
        self.participants.get(id)
    }
    /// How many are waiting or admitted.
    pub fn present_count(&self) -> usize {
        self.participants
            .values()
            .filter(|p| p.is_present())
            .count()
    }
    /// Who is sharing a screen in a room (`None` = main room).
    pub fn screen_sharer(&self, room: Option<&BreakoutId>) -> Option<&ParticipantId> {
        self.participants
            .values()
            .find(|p| {
                p.presence == Presence::Admitted && p.screen_sharing && p.breakout.as_ref() == room
            })
            .map(|p| &p.id)
    }
    /// The last reported active speaker of a room (`None` = main room).
    pub fn active_speaker(&self, room: Option<&BreakoutId>) -> Option<&ParticipantId> {
        match room {
            None => self.active_speaker.as_ref(),
            Some(b) => self
                .breakouts
                .get(b)
                .and_then(|b| b.active_speaker.as_ref()),
        }
    }

    /// Checks verified token claims against this meeting and returns the participant they
    /// speak for. The stored participant (role included) is the authority from here on.
    pub fn authenticate(&self, claims: &JoinClaims) -> Result<&Participant, DomainError> {
        if claims.meeting != self.id {
            return Err(DomainError::TokenWrongMeeting);
        }
        let p = self
            .participants
            .get(&claims.participant)
            .ok_or_else(|| DomainError::ParticipantNotFound(claims.participant.clone()))?;
        if p.presence == Presence::Left {
            return Err(DomainError::ParticipantLeft(p.id.clone()));
        }
        Ok(p)
    }

    /// Whether `by` may do what only hosts may (`action` names it in the error): the
    /// operator or an admitted host of the stage. For callers that decide an operation
    /// outside this type (an audience record that needs no change).
    pub fn check_host(&self, by: &Actor, action: &'static str) -> Result<(), DomainError> {
        self.require_host(by, action)
    }

    /// Whether the holder of `claims` may see and download the meeting's recordings: a
    /// host by the role stored now (a demoted host may not; the token's role is only what
    /// it was at the join), admitted now or, once the meeting has ended, present when it
    /// ended. A host who left before the end has no standing, as for every other call
    /// after leaving. Webinar attendees are not on the stage and never hosts. The operator
    /// is the API layer's business.
    pub fn check_recordings_reader(&self, claims: &JoinClaims) -> Result<(), DomainError> {
        const ACTION: &str = "see the meeting's recordings";
        if claims.meeting != self.id {
            return Err(DomainError::TokenWrongMeeting);
        }
        let Some(p) = self.participants.get(&claims.participant) else {
            return Err(DomainError::NotHost(ACTION));
        };
        if p.role != Role::Host {
            return Err(DomainError::NotHost(ACTION));
        }
        match (p.presence, self.state) {
            (Presence::Admitted, _) => Ok(()),
            // `end` marks everyone present as left at the instant it ends the meeting.
            (Presence::Left, MeetingState::Ended { at }) if p.left_at == Some(at) => Ok(()),
            (Presence::Left, _) => Err(DomainError::ParticipantLeft(p.id.clone())),
            (Presence::Waiting, _) => Err(DomainError::StillWaiting(p.id.clone())),
        }
    }

    // ------------------------------------------------------------------ checks

    fn require_open(&self) -> Result<(), DomainError> {
        match self.state {
            MeetingState::Open => Ok(()),
            MeetingState::Ended { .. } => Err(DomainError::MeetingEnded),
        }
    }

    fn require_window(&self, now: UnixMillis) -> Result<(), DomainError> {
        if let Some(s) = &self.schedule {
            if now < s.opens_at() {
                return Err(DomainError::NotOpenYet {
                    opens_at: s.opens_at(),
                });
            }
            if now >= s.ends_at {
                return Err(DomainError::WindowClosed(s.ends_at));
            }
        }
        Ok(())
    }

    fn find(&self, id: &ParticipantId) -> Result<&Participant, DomainError> {
        self.participants
            .get(id)
            .ok_or_else(|| DomainError::ParticipantNotFound(id.clone()))
    }

    /// The participant, who must be admitted (not waiting, not gone).
    fn admitted(&self, id: &ParticipantId) -> Result<&Participant, DomainError> {
        let p = self.find(id)?;
        match p.presence {
            Presence::Admitted => Ok(p),
            Presence::Waiting => Err(DomainError::StillWaiting(id.clone())),
            Presence::Left => Err(DomainError::ParticipantLeft(id.clone())),
        }
    }

    /// `by` must be the operator or an admitted host.
    fn require_host(&self, by: &Actor, action: &'static str) -> Result<(), DomainError> {
        match by {
            Actor::Operator => Ok(()),
            Actor::Participant(id) => {
                if self.admitted(id)?.role == Role::Host {
                    Ok(())
                } else {
                    Err(DomainError::NotHost(action))
                }
            }
        }
    }

    fn admitted_hosts(&self) -> impl Iterator<Item = &Participant> {
        self.participants
            .values()
            .filter(|p| p.presence == Presence::Admitted && p.role == Role::Host)
    }

    fn participant_mut(&mut self, id: &ParticipantId) -> &mut Participant {
        // Every caller looked `id` up during validation, and validation and mutation of one
        // operation run under one `&mut self`, so the entry is still there.
        self.participants
            .get_mut(id)
            .expect("participant validated before mutation")
    }

    // ------------------------------------------------------------------ joining

    /// Checks the secrets a joiner presents. Slow (argon2) when the meeting has a passcode
    /// or the joiner presents a host key: call once per join request, off the async
    /// executor, before the (cheap, retryable) [`Meeting::join`].
    ///
    /// * A host key, if presented, must match the meeting's host key (a meeting without one
    ///   refuses any), and then the passcode is not needed: the host key is the stronger
    ///   secret.
    /// * Otherwise a meeting with a passcode needs it.
    ///
    /// The cheap state checks (ended, outside the window) run first so that a closed
    /// meeting costs no hashing.
    pub fn authorize_join(
        &self,
        passcode: Option<&Passcode>,
        host_key: Option<&Passcode>,
        now: UnixMillis,
    ) -> Result<JoinAuthority, DomainError> {
        self.require_open()?;
        self.require_window(now)?;
        let as_host = match (host_key, &self.host_key) {
            (Some(k), Some(h)) if h.verify(k) => true,
            (Some(_), _) => return Err(DomainError::WrongHostKey),
            (None, _) => {
                if let Some(h) = &self.passcode {
                    match passcode {
                        Some(p) if h.verify(p) => {}
                        _ => return Err(DomainError::WrongPasscode),
                    }
                }
                false
            }
        };
        Ok(JoinAuthority {
            meeting: self.id.clone(),
            as_host,
        })
    }

    /// Where a join with this authority puts the joiner, as things stand: on the stage (in
    /// this document), or, for a webinar's attendees, in the audience, which the caller
    /// stores outside the document (one record per attendee, see the module docs) through
    /// [`Meeting::join_audience`].
    pub fn seat(&self, authority: &JoinAuthority) -> Seat {
        if self.role_for(authority) == Role::Attendee {
            Seat::Audience
        } else {
            Seat::Stage
        }
    }

    /// The role a joiner with `authority` gets (rule 2 of [`Meeting::join`]).
    fn role_for(&self, authority: &JoinAuthority) -> Role {
        if authority.as_host || (self.host_key.is_none() && self.admitted_hosts().next().is_none())
        {
            Role::Host
        } else {
            match self.kind {
                MeetingKind::Meeting => Role::Panelist,
                MeetingKind::Webinar => Role::Attendee,
            }
        }
    }

    /// Everything [`Meeting::join`] and [`Meeting::join_audience`] check, in order, and the
    /// participant they would add.
    fn admit_joiner(
        &self,
        req: JoinRequest,
        authority: &JoinAuthority,
        audience_present: usize,
        now: UnixMillis,
    ) -> Result<(Participant, MeetingEvent), DomainError> {
        let display_name = validate_text("display name", &req.display_name, MAX_NAME_CHARS)?;
        self.require_open()?;
        self.require_window(now)?;
        if authority.meeting != self.id || (authority.as_host && self.host_key.is_none()) {
            return Err(DomainError::StaleJoinAuthority);
        }
        if self.participants.contains_key(&req.participant) {
            return Err(DomainError::ParticipantExists(req.participant));
        }
        let role = self.role_for(authority);
        let present = self.present_count().saturating_add(audience_present);
        if !authority.as_host && present >= self.limits.max_participants as usize {
            return Err(DomainError::MeetingFull(self.limits.max_participants));
        }
        let presence = if role == Role::Host || !self.waiting_room {
            Presence::Admitted
        } else {
            Presence::Waiting
        };
        let may_publish = role != Role::Attendee;
        let event = match presence {
            Presence::Waiting => MeetingEvent::Waiting {
                participant: req.participant.clone(),
                display_name: display_name.clone(),
            },
            _ => MeetingEvent::UserJoined {
                participant: req.participant.clone(),
                display_name: display_name.clone(),
                role,
            },
        };
        let participant = Participant {
            id: req.participant,
            display_name,
            role,
            presence,
            audio_muted: req.audio_muted || !may_publish,
            video_muted: req.video_muted || !may_publish,
            screen_sharing: false,
            breakout: None,
            joined_at: now,
            left_at: None,
        };
        Ok((participant, event))
    }

    /// Adds a participant to the stage (this document). Rules, in order:
    ///
    /// 1. The display name is valid; the meeting is open and inside its window; the
    ///    authority is for this meeting; the participant id is new.
    /// 2. Role: a verified host key makes a host. In a meeting without a host key, a joiner
    ///    who finds no admitted host becomes host (the first joiner, or the first after
    ///    everyone left). Otherwise panelist in a meeting, attendee in a webinar.
    /// 3. Capacity: waiting plus admitted participants, the stage's plus the
    ///    `audience_present` the caller counted outside the document, must stay within
    ///    `max_participants`, except for host-key holders.
    /// 4. Hosts are admitted at once; others wait if the waiting room is on.
    ///
    /// Emits `UserJoined`, or `Waiting` for the waiting room.
    ///
    /// A webinar attendee may be added here too (the rules allow attendees on the stage:
    /// a demoted panelist stays there), but a service that keeps the audience out of the
    /// document asks [`Meeting::seat`] first and calls [`Meeting::join_audience`] instead.
    pub fn join(
        &mut self,
        req: JoinRequest,
        authority: &JoinAuthority,
        audience_present: usize,
        now: UnixMillis,
    ) -> Result<Vec<MeetingEvent>, DomainError> {
        let (participant, event) = self.admit_joiner(req, authority, audience_present, now)?;
        self.participants
            .insert(participant.id.clone(), participant);
        Ok(vec![event])
    }

    // ------------------------------------------------------------------ the audience

    /// Decides a join into a webinar's audience without changing the meeting: the same
    /// rules as [`Meeting::join`], for a joiner [`Meeting::seat`] puts in the audience (else
    /// `StaleJoinAuthority`: things changed since the caller asked). Returns the attendee
    /// to store (waiting, or admitted, always muted) and its event (`Waiting` or
    /// `UserJoined`), which concerns the audience: hosts see it, other attendees need not.
    ///
    /// `audience_present` is how many attendees the caller counted; it decides capacity
    /// together with the stage.
    pub fn join_audience(
        &self,
        req: JoinRequest,
        authority: &JoinAuthority,
        audience_present: usize,
        now: UnixMillis,
    ) -> Result<(Participant, Vec<MeetingEvent>), DomainError> {
        // The seat is checked after the authority, so that a foreign authority is reported
        // as such whatever seat it would get here.
        let (participant, event) = self.admit_joiner(req, authority, audience_present, now)?;
        if self.seat(authority) != Seat::Audience {
            return Err(DomainError::StaleJoinAuthority);
        }
        Ok((participant, vec![event]))
    }

    /// Admits a waiting attendee (host or operator): like [`Meeting::admit`] for a member of
    /// the audience, which the caller stores back. Emits `Admitted`, `UserJoined`.
    pub fn admit_audience(
        &self,
        by: &Actor,
        member: &mut Participant,
    ) -> Result<Vec<MeetingEvent>, DomainError> {
        self.require_open()?;
        self.require_host(by, "admit participants")?;
        require_waiting_member(member)?;
        member.presence = Presence::Admitted;
        Ok(vec![
            MeetingEvent::Admitted {
                participant: member.id.clone(),
                by: by.clone(),
            },
            MeetingEvent::UserJoined {
                participant: member.id.clone(),
                display_name: member.display_name.clone(),
                role: member.role,
            },
        ])
    }

    /// Turns a waiting attendee away (host or operator): like [`Meeting::deny`]. The member
    /// is marked left; the caller deletes its record. Emits `Denied`.
    pub fn deny_audience(
        &self,
        by: &Actor,
        member: &mut Participant,
        now: UnixMillis,
    ) -> Result<Vec<MeetingEvent>, DomainError> {
        self.require_open()?;
        self.require_host(by, "deny participants")?;
        require_waiting_member(member)?;
        member.presence = Presence::Left;
        member.left_at = Some(now);
        Ok(vec![MeetingEvent::Denied {
            participant: member.id.clone(),
            by: by.clone(),
        }])
    }

    /// An attendee leaves (from the waiting room or the audience). The member is marked
    /// left; the caller deletes its record. Attendees hold no stage state (no share, never
    /// the active speaker, never the last host), so nothing else changes. Emits `UserLeft`.
    pub fn leave_audience(
        &self,
        member: &mut Participant,
        now: UnixMillis,
    ) -> Result<Vec<MeetingEvent>, DomainError> {
        self.require_open()?;
        if member.presence == Presence::Left {
            return Err(DomainError::ParticipantLeft(member.id.clone()));
        }
        member.presence = Presence::Left;
        member.left_at = Some(now);
        Ok(vec![MeetingEvent::UserLeft {
            participant: member.id.clone(),
        }])
    }

    /// A mute change for an attendee, by themself or a host: the same checks as
    /// [`Meeting::set_mute`]. Attendees are always muted, so this never changes anything:
    /// it either fails (an unmute) or succeeds with no events.
    pub fn mute_audience(
        &self,
        by: &Actor,
        member: &Participant,
        change: MuteChange,
    ) -> Result<Vec<MeetingEvent>, DomainError> {
        if change.audio.is_none() && change.video.is_none() {
            return Err(DomainError::EmptyRequest("no mute flag given"));
        }
        self.require_open()?;
        let unmutes = change.audio == Some(false) || change.video == Some(false);
        if by != &Actor::Participant(member.id.clone()) {
            self.require_host(by, "mute other participants")?;
            require_admitted_member(member)?;
            if unmutes {
                return Err(DomainError::CannotUnmuteOthers);
            }
        }
        require_admitted_member(member)?;
        if unmutes {
            return Err(DomainError::CannotPublish(member.id.clone()));
        }
        Ok(vec![])
    }

    /// Promotes an admitted attendee of the audience onto the stage with `role` (host or
    /// operator), which the caller makes atomic with deleting its audience record. Emits
    /// `RoleChanged` (from attendee) and then `UserJoined` with the new role: stage
    /// watchers never saw the attendee join. Promoting to `Attendee` is no change.
    pub fn promote_attendee(
        &mut self,
        by: &Actor,
        member: Participant,
        role: Role,
    ) -> Result<Vec<MeetingEvent>, DomainError> {
        self.require_open()?;
        self.require_host(by, "change roles")?;
        require_admitted_member(&member)?;
        if self.participants.contains_key(&member.id) {
            return Err(DomainError::ParticipantExists(member.id));
        }
        if role == member.role {
            return Ok(vec![]);
        }
        let events = vec![
            MeetingEvent::RoleChanged {
                participant: member.id.clone(),
                from: member.role,
                to: role,
                by: Some(by.clone()),
            },
            MeetingEvent::UserJoined {
                participant: member.id.clone(),
                display_name: member.display_name.clone(),
                role,
            },
        ];
        // Promotion keeps the forced mute: the new panelist unmutes when ready.
        self.participants
            .insert(member.id.clone(), Participant { role, ..member });
        Ok(events)
    }

    /// A participant leaves (from the waiting room or the meeting). Their screen share
    /// stops. If they were the last admitted host of a meeting without a host key, hosting
    /// passes to the earliest-joined admitted panelist, else attendee (`RoleChanged` with
    /// `by: None`); with a host key nobody is promoted, and a key holder can rejoin.
    pub fn leave(
        &mut self,
        who: &ParticipantId,
        now: UnixMillis,
    ) -> Result<Vec<MeetingEvent>, DomainError> {
        self.require_open()?;
        let p = self.find(who)?;
        if p.presence == Presence::Left {
            return Err(DomainError::ParticipantLeft(who.clone()));
        }
        let was_sharing = p.screen_sharing.then(|| p.breakout.clone());
        let room = p.breakout.clone();
        let last_host = p.role == Role::Host
            && p.presence == Presence::Admitted
            && self.admitted_hosts().all(|h| &h.id == who);
        let heir = if last_host && self.host_key.is_none() {
            self.participants
                .values()
                .filter(|c| c.presence == Presence::Admitted && &c.id != who)
                .min_by_key(|c| (c.role, c.joined_at, c.id.clone()))
                .map(|c| (c.id.clone(), c.role))
        } else {
            None
        };

        let mut events = Vec::new();
        let p = self.participant_mut(who);
        p.presence = Presence::Left;
        p.left_at = Some(now);
        p.screen_sharing = false;
        if let Some(breakout) = was_sharing {
            events.push(MeetingEvent::ScreenshareStopped {
                participant: who.clone(),
                breakout,
            });
        }
        self.clear_speaker_if(room.as_ref(), who);
        events.push(MeetingEvent::UserLeft {
            participant: who.clone(),
        });
        if let Some((heir, from)) = heir {
            let h = self.participant_mut(&heir);
            h.role = Role::Host;
            // Hosts publish; the forced mute of an attendee stays until they unmute.
            events.push(MeetingEvent::RoleChanged {
                participant: heir,
                from,
                to: Role::Host,
                by: None,
            });
        }
        Ok(events)
    }

    /// Ends the meeting (host or operator). Everyone present is marked left, recording
    /// stops. Emits `RecordingStopped` (if recording) then `MeetingEnded`.
    pub fn end(&mut self, by: &Actor, now: UnixMillis) -> Result<Vec<MeetingEvent>, DomainError> {
        self.require_open()?;
        self.require_host(by, "end the meeting")?;
        let mut events = Vec::new();
        if self.recording {
            self.recording = false;
            events.push(MeetingEvent::RecordingStopped {
                by: by.clone(),
                recording: self.recording_id.take(),
            });
        }
        for p in self.participants.values_mut().filter(|p| p.is_present()) {
            p.presence = Presence::Left;
            p.left_at = Some(now);
            p.screen_sharing = false;
        }
        self.active_speaker = None;
        for b in self.breakouts.values_mut() {
            b.active_speaker = None;
        }
        self.state = MeetingState::Ended { at: now };
        events.push(MeetingEvent::MeetingEnded { by: by.clone() });
        Ok(events)
    }

    /// Forgets participants who left, to bound the stored document in long meetings with
    /// churn. Their tokens then fail with `NotFound` instead of `FailedPrecondition`.
    /// Returns how many were removed.
    pub fn prune_departed(&mut self) -> usize {
        let before = self.participants.len();
        self.participants.retain(|_, p| p.is_present());
        before - self.participants.len()
    }

    // ------------------------------------------------------------------ waiting room

    /// Admits a waiting participant (host or operator). Emits `Admitted`, `UserJoined`.
    pub fn admit(
        &mut self,
        by: &Actor,
        target: &ParticipantId,
    ) -> Result<Vec<MeetingEvent>, DomainError> {
        self.require_open()?;
        self.require_host(by, "admit participants")?;
        self.require_waiting(target)?;
        let p = self.participant_mut(target);
        p.presence = Presence::Admitted;
        Ok(vec![
            MeetingEvent::Admitted {
                participant: target.clone(),
                by: by.clone(),
            },
            MeetingEvent::UserJoined {
                participant: target.clone(),
                display_name: p.display_name.clone(),
                role: p.role,
            },
        ])
    }

    /// Turns a waiting participant away (host or operator); they are gone. Emits `Denied`.
    pub fn deny(
        &mut self,
        by: &Actor,
        target: &ParticipantId,
        now: UnixMillis,
    ) -> Result<Vec<MeetingEvent>, DomainError> {
        self.require_open()?;
        self.require_host(by, "deny participants")?;
        self.require_waiting(target)?;
        let p = self.participant_mut(target);
        p.presence = Presence::Left;
        p.left_at = Some(now);
        Ok(vec![MeetingEvent::Denied {
            participant: target.clone(),
            by: by.clone(),
        }])
    }

    fn require_waiting(&self, target: &ParticipantId) -> Result<(), DomainError> {
        match self.find(target)?.presence {
            Presence::Waiting => Ok(()),
            Presence::Admitted => Err(DomainError::NotWaiting(target.clone())),
            Presence::Left => Err(DomainError::ParticipantLeft(target.clone())),
        }
    }

    // ------------------------------------------------------------------ media state

    /// Changes mute flags. A participant may set their own flags either way (unmuting
    /// needs the right to publish); a host or operator may mute others but never unmute
    /// them. Emits `MuteChanged` if a flag changed.
    pub fn set_mute(
        &mut self,
        by: &Actor,
        target: &ParticipantId,
        change: MuteChange,
    ) -> Result<Vec<MeetingEvent>, DomainError> {
        if change.audio.is_none() && change.video.is_none() {
            return Err(DomainError::EmptyRequest("no mute flag given"));
        }
        self.require_open()?;
        let unmutes = change.audio == Some(false) || change.video == Some(false);
        if by != &Actor::Participant(target.clone()) {
            self.require_host(by, "mute other participants")?;
            self.admitted(target)?;
            if unmutes {
                return Err(DomainError::CannotUnmuteOthers);
            }
        }
        let p = self.admitted(target)?;
        if unmutes && !p.can_publish() {
            return Err(DomainError::CannotPublish(target.clone()));
        }
        let audio = change.audio.unwrap_or(p.audio_muted);
        let video = change.video.unwrap_or(p.video_muted);
        if audio == p.audio_muted && video == p.video_muted {
            return Ok(vec![]);
        }
        let room = p.breakout.clone();
        let p = self.participant_mut(target);
        p.audio_muted = audio;
        p.video_muted = video;
        if audio {
            // A muted speaker is no longer the active one.
            self.clear_speaker_if(room.as_ref(), target);
        }
        Ok(vec![MeetingEvent::MuteChanged {
            participant: target.clone(),
            audio_muted: audio,
            video_muted: video,
            by: by.clone(),
        }])
    }

    /// Starts `who`'s screen share in their current room. Only those who may publish; one
    /// share per room (main room and each breakout room separately), and a second sharer
    /// is refused rather than taking over, so a share is never cut off by surprise.
    pub fn start_screen_share(
        &mut self,
        who: &ParticipantId,
    ) -> Result<Vec<MeetingEvent>, DomainError> {
        self.require_open()?;
        let p = self.admitted(who)?;
        if !p.can_publish() {
            return Err(DomainError::CannotPublish(who.clone()));
        }
        if p.screen_sharing {
            return Ok(vec![]);
        }
        let room = p.breakout.clone();
        if let Some(other) = self.screen_sharer(room.as_ref()) {
            return Err(DomainError::ScreenShareBusy(other.clone()));
        }
        self.participant_mut(who).screen_sharing = true;
        Ok(vec![MeetingEvent::ScreenshareStarted {
            participant: who.clone(),
            breakout: room,
        }])
    }

    /// Stops `target`'s screen share: the sharer themself, or a host or operator.
    pub fn stop_screen_share(
        &mut self,
        by: &Actor,
        target: &ParticipantId,
    ) -> Result<Vec<MeetingEvent>, DomainError> {
        self.require_open()?;
        if by != &Actor::Participant(target.clone()) {
            self.require_host(by, "stop another participant's screen share")?;
        }
        let p = self.admitted(target)?;
        if !p.screen_sharing {
            return Ok(vec![]);
        }
        let room = p.breakout.clone();
        self.participant_mut(target).screen_sharing = false;
        Ok(vec![MeetingEvent::ScreenshareStopped {
            participant: target.clone(),
            breakout: room,
        }])
    }

    /// Records the loudest publisher of `who`'s room, as reported by a forwarder. Reports
    /// for someone muted or unable to publish are stale (a race with a mute) and refused;
    /// a repeat of the current speaker is no change.
    pub fn set_active_speaker(
        &mut self,
        who: &ParticipantId,
    ) -> Result<Vec<MeetingEvent>, DomainError> {
        self.require_open()?;
        let p = self.admitted(who)?;
        if !p.can_publish() {
            return Err(DomainError::CannotPublish(who.clone()));
        }
        if p.audio_muted {
            return Err(DomainError::Muted(who.clone()));
        }
        let room = p.breakout.clone();
        if self.active_speaker(room.as_ref()) == Some(who) {
            return Ok(vec![]);
        }
        match &room {
            None => self.active_speaker = Some(who.clone()),
            Some(b) => {
                if let Some(b) = self.breakouts.get_mut(b) {
                    b.active_speaker = Some(who.clone());
                }
            }
        }
        Ok(vec![MeetingEvent::ActiveSpeaker {
            participant: who.clone(),
            breakout: room,
        }])
    }

    fn clear_speaker_if(&mut self, room: Option<&BreakoutId>, who: &ParticipantId) {
        let slot = match room {
            None => &mut self.active_speaker,
            Some(b) => match self.breakouts.get_mut(b) {
                Some(b) => &mut b.active_speaker,
                None => return,
            },
        };
        if slot.as_ref() == Some(who) {
            *slot = None;
        }
    }

    // ------------------------------------------------------------------ roles

    /// Changes an admitted participant's role (host or operator). The last admitted host
    /// cannot be demoted (`LastHost`), so a running meeting never loses its last host by a
    /// role change. Demotion to attendee stops their screen share and mutes them, so the
    /// state never shows an attendee publishing. Emits `RoleChanged` then those side
    /// effects.
    pub fn set_role(
        &mut self,
        by: &Actor,
        target: &ParticipantId,
        role: Role,
    ) -> Result<Vec<MeetingEvent>, DomainError> {
        self.require_open()?;
        self.require_host(by, "change roles")?;
        let p = self.admitted(target)?;
        let from = p.role;
        if from == role {
            return Ok(vec![]);
        }
        if from == Role::Host && self.admitted_hosts().count() == 1 {
            return Err(DomainError::LastHost);
        }
        let mut events = vec![MeetingEvent::RoleChanged {
            participant: target.clone(),
            from,
            to: role,
            by: Some(by.clone()),
        }];
        let room = p.breakout.clone();
        let p = self.participant_mut(target);
        p.role = role;
        if role == Role::Attendee {
            if p.screen_sharing {
                p.screen_sharing = false;
                events.push(MeetingEvent::ScreenshareStopped {
                    participant: target.clone(),
                    breakout: room.clone(),
                });
            }
            if !(p.audio_muted && p.video_muted) {
                p.audio_muted = true;
                p.video_muted = true;
                events.push(MeetingEvent::MuteChanged {
                    participant: target.clone(),
                    audio_muted: true,
                    video_muted: true,
                    by: by.clone(),
                });
            }
            self.clear_speaker_if(room.as_ref(), target);
        }
        Ok(events)
    }

    // ------------------------------------------------------------------ breakouts

    /// Creates breakout rooms (host or operator; meetings only). All or none: every name
    /// valid, no id twice or already taken, and the total within `max_breakouts`.
    pub fn create_breakouts(
        &mut self,
        by: &Actor,
        rooms: Vec<NewBreakout>,
        now: UnixMillis,
    ) -> Result<Vec<MeetingEvent>, DomainError> {
        if rooms.is_empty() {
            return Err(DomainError::EmptyRequest("no breakout rooms given"));
        }
        let mut named = Vec::with_capacity(rooms.len());
        for r in rooms {
            let name = validate_text("breakout room name", &r.name, MAX_NAME_CHARS)?;
            if named.iter().any(|(id, _)| id == &r.id) {
                return Err(DomainError::Duplicate("breakout room id"));
            }
            named.push((r.id, name));
        }
        self.require_open()?;
        self.require_host(by, "create breakout rooms")?;
        if self.kind == MeetingKind::Webinar {
            return Err(DomainError::NoBreakoutsInWebinar);
        }
        if let Some((id, _)) = named.iter().find(|(id, _)| self.breakouts.contains_key(id)) {
            return Err(DomainError::BreakoutExists(id.clone()));
        }
        if self.breakouts.len() + named.len() > self.limits.max_breakouts as usize {
            return Err(DomainError::TooManyBreakouts(self.limits.max_breakouts));
        }
        let mut events = Vec::with_capacity(named.len());
        for (id, name) in named {
            events.push(MeetingEvent::BreakoutCreated {
                breakout: id.clone(),
                name: name.clone(),
            });
            self.breakouts.insert(
                id,
                Breakout {
                    name,
                    created_at: now,
                    active_speaker: None,
                },
            );
        }
        Ok(events)
    }

    /// Moves an admitted participant to a breakout room or (`None`) back to the main room
    /// (host or operator). A screen share does not follow them: it stops, because the room
    /// they arrive in may already have one.
    pub fn move_to_breakout(
        &mut self,
        by: &Actor,
        target: &ParticipantId,
        to: Option<BreakoutId>,
    ) -> Result<Vec<MeetingEvent>, DomainError> {
        self.require_open()?;
        self.require_host(by, "move participants between rooms")?;
        let p = self.admitted(target)?;
        if let Some(b) = &to {
            if !self.breakouts.contains_key(b) {
                return Err(DomainError::BreakoutNotFound(b.clone()));
            }
        }
        if p.breakout == to {
            return Ok(vec![]);
        }
        let from = p.breakout.clone();
        let mut events = Vec::new();
        self.clear_speaker_if(from.as_ref(), target);
        let p = self.participant_mut(target);
        if p.screen_sharing {
            p.screen_sharing = false;
            events.push(MeetingEvent::ScreenshareStopped {
                participant: target.clone(),
                breakout: from.clone(),
            });
        }
        p.breakout = to.clone();
        events.push(MeetingEvent::BreakoutMoved {
            participant: target.clone(),
            from,
            to,
        });
        Ok(events)
    }

    /// Closes every breakout room and returns everyone to the main room (host or
    /// operator). Screen shares in breakout rooms stop. Emits the moves (with any
    /// `ScreenshareStopped`) first, then one `BreakoutClosed` per room. No rooms, no events.
    pub fn close_breakouts(&mut self, by: &Actor) -> Result<Vec<MeetingEvent>, DomainError> {
        self.require_open()?;
        self.require_host(by, "close breakout rooms")?;
        let mut events = Vec::new();
        for p in self.participants.values_mut() {
            let Some(from) = p.breakout.take() else {
                continue;
            };
            // Those who left keep no room either, but get no events.
            if p.presence != Presence::Admitted {
                continue;
            }
            if p.screen_sharing {
                p.screen_sharing = false;
                events.push(MeetingEvent::ScreenshareStopped {
                    participant: p.id.clone(),
                    breakout: Some(from.clone()),
                });
            }
            events.push(MeetingEvent::BreakoutMoved {
                participant: p.id.clone(),
                from: Some(from),
                to: None,
            });
        }
        for id in std::mem::take(&mut self.breakouts).into_keys() {
            events.push(MeetingEvent::BreakoutClosed { breakout: id });
        }
        Ok(events)
    }

    // ------------------------------------------------------------------ recording

    /// Starts recording as `recording` (`Some`, a fresh id) or stops (`None`); host or
    /// operator. Emits `RecordingStarted`/`Stopped` when that changes whether the meeting
    /// records: starting while recording keeps the recording under way.
    pub fn set_recording(
        &mut self,
        by: &Actor,
        recording: Option<RecordingId>,
    ) -> Result<Vec<MeetingEvent>, DomainError> {
        self.require_open()?;
        self.require_host(by, "start or stop recording")?;
        if self.recording == recording.is_some() {
            return Ok(vec![]);
        }
        self.recording = recording.is_some();
        Ok(vec![match recording {
            Some(id) => {
                self.recording_id = Some(id.clone());
                MeetingEvent::RecordingStarted {
                    by: by.clone(),
                    recording: Some(id),
                }
            }
            None => MeetingEvent::RecordingStopped {
                by: by.clone(),
                recording: self.recording_id.take(),
            },
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::error::ErrorKind;
    use crate::domain::passcode::PasscodeCost;

    const T0: UnixMillis = UnixMillis(1_700_000_000_000);

    fn pid(s: &str) -> ParticipantId {
        ParticipantId::new(s).unwrap()
    }
    fn bid(s: &str) -> BreakoutId {
        BreakoutId::new(s).unwrap()
    }
    fn by(s: &str) -> Actor {
        Actor::Participant(pid(s))
    }
    fn recording() -> RecordingId {
        RecordingId::new("rec-1").unwrap()
    }
    fn secret(s: &str) -> Passcode {
        Passcode::new(s).unwrap()
    }
    fn hash(s: &str) -> PasscodeHash {
        PasscodeHash::hash(&secret(s), PasscodeCost::INSECURE_FOR_TESTS).unwrap()
    }

    fn spec(kind: MeetingKind) -> MeetingSpec {
        MeetingSpec {
            kind,
            title: "Weekly sync".into(),
            schedule: None,
            passcode: None,
            host_key: None,
            waiting_room: false,
            limits: None,
        }
    }

    fn create(spec: MeetingSpec) -> Meeting {
        Meeting::create(MeetingId::new("m1").unwrap(), spec, T0).unwrap()
    }

    fn req(id: &str) -> JoinRequest {
        JoinRequest {
            participant: pid(id),
            display_name: format!("Name of {id}"),
            audio_muted: false,
            video_muted: false,
        }
    }

    /// Joins with no secrets at `T0 + n` (so join order is visible in `joined_at`).
    fn join_at(m: &mut Meeting, id: &str, n: u64) -> Vec<MeetingEvent> {
        let now = UnixMillis(T0.0 + n);
        let auth = m.authorize_join(None, None, now).unwrap();
        m.join(req(id), &auth, 0, now).unwrap()
    }

    /// A meeting with host `h`, panelists `a` and `b`.
    fn meeting_hab() -> Meeting {
        let mut m = create(spec(MeetingKind::Meeting));
        join_at(&mut m, "h", 1);
        join_at(&mut m, "a", 2);
        join_at(&mut m, "b", 3);
        m
    }

    /// Runs `op`, asserts it failed with `expected`, and that the meeting did not change.
    fn refused(
        m: &mut Meeting,
        expected: DomainError,
        op: impl FnOnce(&mut Meeting) -> Result<Vec<MeetingEvent>, DomainError>,
    ) {
        let before = m.clone();
        assert_eq!(op(m), Err(expected));
        assert_eq!(*m, before, "a refused operation changed the meeting");
    }

    fn p<'a>(m: &'a Meeting, id: &str) -> &'a Participant {
        m.participant(&pid(id)).unwrap()
    }

    // ------------------------------------------------------------------ create

    #[test]
    fn create_applies_defaults_and_trims() {
        let mut s = spec(MeetingKind::Webinar);
        s.title = "  Launch  ".into();
        let m = create(s);
        assert_eq!(m.title(), "Launch");
        assert_eq!(*m.limits(), Limits::default_for(MeetingKind::Webinar));
        assert!(m.is_open());
        assert!(!m.recording());
        assert_eq!(m.created_at(), T0);
        assert_eq!(m.present_count(), 0);
        assert_eq!(Limits::default_for(MeetingKind::Meeting).max_breakouts, 50);
    }

    #[test]
    fn create_rejects_bad_titles() {
        for t in ["", "   ", "a\u{7}b", &"t".repeat(201)] {
            let mut s = spec(MeetingKind::Meeting);
            s.title = t.into();
            let err = Meeting::create(MeetingId::new("m").unwrap(), s, T0).unwrap_err();
            assert!(
                matches!(err, DomainError::InvalidText { field: "title", .. }),
                "{t:?}"
            );
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        }
        let mut s = spec(MeetingKind::Meeting);
        s.title = "é".repeat(200);
        assert!(Meeting::create(MeetingId::new("m").unwrap(), s, T0).is_ok());
    }

    #[test]
    fn create_rejects_bad_schedules() {
        let hour = 3_600_000;
        let cases = [
            (
                Schedule::new(UnixMillis(T0.0 + hour), UnixMillis(T0.0 + hour)),
                "starts at or after its end",
            ),
            (
                Schedule::new(UnixMillis(T0.0 + 2 * hour), UnixMillis(T0.0 + hour)),
                "starts at or after its end",
            ),
            (
                Schedule::new(T0, UnixMillis(T0.0 + 7 * 24 * hour + 1)),
                "is longer than 7 days",
            ),
            (
                Schedule::new(UnixMillis(T0.0 - 2 * hour), UnixMillis(T0.0 - hour)),
                "is already over",
            ),
            (
                Schedule::new(UnixMillis(T0.0 - 2 * hour), T0),
                "is already over",
            ),
            (
                Schedule {
                    early_join_ms: hour + 1,
                    ..Schedule::new(T0, UnixMillis(T0.0 + hour))
                },
                "early join allowance above 1 hour",
            ),
        ];
        for (sched, why) in cases {
            let mut s = spec(MeetingKind::Meeting);
            s.schedule = Some(sched);
            assert_eq!(
                Meeting::create(MeetingId::new("m").unwrap(), s, T0).unwrap_err(),
                DomainError::InvalidSchedule(why)
            );
        }
        // A window that started an hour ago and runs another hour is fine.
        let mut s = spec(MeetingKind::Meeting);
        s.schedule = Some(Schedule::new(
            UnixMillis(T0.0 - hour),
            UnixMillis(T0.0 + hour),
        ));
        assert!(Meeting::create(MeetingId::new("m").unwrap(), s, T0).is_ok());
    }

    #[test]
    fn create_rejects_insane_limits() {
        let cases = [
            (MeetingKind::Meeting, 0, 0),
            (MeetingKind::Meeting, 1_001, 0),
            (MeetingKind::Webinar, 100_001, 0),
            (MeetingKind::Webinar, 10, 1),
            (MeetingKind::Meeting, 10, 101),
        ];
        for (kind, max_participants, max_breakouts) in cases {
            let mut s = spec(kind);
            s.limits = Some(Limits {
                max_participants,
                max_breakouts,
            });
            let err = Meeting::create(MeetingId::new("m").unwrap(), s, T0).unwrap_err();
            assert!(
                matches!(err, DomainError::InvalidLimits(_)),
                "{kind:?} {max_participants} {max_breakouts}"
            );
        }
        let mut s = spec(MeetingKind::Webinar);
        s.limits = Some(Limits {
            max_participants: 100_000,
            max_breakouts: 0,
        });
        assert!(Meeting::create(MeetingId::new("m").unwrap(), s, T0).is_ok());
    }

    // ------------------------------------------------------------------ join

    #[test]
    fn first_joiner_hosts_the_rest_are_panelists() {
        let mut m = create(spec(MeetingKind::Meeting));
        let ev = join_at(&mut m, "h", 1);
        assert_eq!(
            ev,
            vec![MeetingEvent::UserJoined {
                participant: pid("h"),
                display_name: "Name of h".into(),
                role: Role::Host
            }]
        );
        join_at(&mut m, "a", 2);
        assert_eq!(p(&m, "h").role, Role::Host);
        assert_eq!(p(&m, "a").role, Role::Panelist);
        assert!(p(&m, "a").can_publish());
        assert_eq!(p(&m, "a").presence, Presence::Admitted);
        assert_eq!(p(&m, "a").joined_at, UnixMillis(T0.0 + 2));
        assert!(!p(&m, "a").audio_muted);
    }

    #[test]
    fn webinar_joiners_are_muted_attendees() {
        let mut m = create(spec(MeetingKind::Webinar));
        join_at(&mut m, "h", 1);
        join_at(&mut m, "v", 2);
        let v = p(&m, "v");
        assert_eq!(v.role, Role::Attendee);
        assert!(!v.can_publish());
        assert!(
            v.audio_muted && v.video_muted,
            "attendees join muted whatever they ask"
        );
    }

    #[test]
    fn passcode_is_required_and_checked() {
        let mut s = spec(MeetingKind::Meeting);
        s.passcode = Some(hash("open sesame"));
        let m = create(s);
        assert_eq!(
            m.authorize_join(None, None, T0),
            Err(DomainError::WrongPasscode)
        );
        assert_eq!(
            m.authorize_join(Some(&secret("open sesamE")), None, T0),
            Err(DomainError::WrongPasscode)
        );
        assert_eq!(
            DomainError::WrongPasscode.kind(),
            ErrorKind::PermissionDenied
        );
        let auth = m
            .authorize_join(Some(&secret("open sesame")), None, T0)
            .unwrap();
        assert!(!auth.as_host());
    }

    #[test]
    fn host_key_makes_hosts_and_bypasses_passcode_room_and_capacity() {
        let mut s = spec(MeetingKind::Webinar);
        s.passcode = Some(hash("pass1"));
        s.host_key = Some(hash("hostkey"));
        s.waiting_room = true;
        s.limits = Some(Limits {
            max_participants: 1,
            max_breakouts: 0,
        });
        let mut m = create(s);

        // Without the key, nobody becomes host, even the first joiner.
        let auth = m.authorize_join(Some(&secret("pass1")), None, T0).unwrap();
        assert_eq!(
            m.join(req("v"), &auth, 0, T0).unwrap()[0],
            MeetingEvent::Waiting {
                participant: pid("v"),
                display_name: "Name of v".into()
            }
        );
        assert_eq!(p(&m, "v").role, Role::Attendee);
        assert_eq!(p(&m, "v").presence, Presence::Waiting);

        // The meeting is now full, but a key holder still gets in, as an admitted host.
        let auth = m
            .authorize_join(None, Some(&secret("hostkey")), T0)
            .unwrap();
        assert!(auth.as_host());
        m.join(req("h"), &auth, 0, T0).unwrap();
        assert_eq!(p(&m, "h").role, Role::Host);
        assert_eq!(p(&m, "h").presence, Presence::Admitted);

        // A wrong host key is refused outright, even with the right passcode.
        assert_eq!(
            m.authorize_join(Some(&secret("pass1")), Some(&secret("hostkeY")), T0),
            Err(DomainError::WrongHostKey)
        );
    }

    #[test]
    fn host_key_on_a_meeting_without_one_is_refused() {
        let m = create(spec(MeetingKind::Meeting));
        assert_eq!(
            m.authorize_join(None, Some(&secret("whatever")), T0),
            Err(DomainError::WrongHostKey)
        );
    }

    #[test]
    fn waiting_room_holds_non_hosts() {
        let mut s = spec(MeetingKind::Meeting);
        s.waiting_room = true;
        let mut m = create(s);
        join_at(&mut m, "h", 1);
        assert_eq!(
            p(&m, "h").presence,
            Presence::Admitted,
            "the first joiner hosts and skips it"
        );
        let ev = join_at(&mut m, "w", 2);
        assert!(matches!(ev[..], [MeetingEvent::Waiting { .. }]));
        assert!(!p(&m, "w").can_publish());
        // A waiting participant can only leave.
        refused(&mut m, DomainError::StillWaiting(pid("w")), |m| {
            m.set_mute(
                &by("w"),
                &pid("w"),
                MuteChange {
                    audio: Some(true),
                    video: None,
                },
            )
        });
        refused(&mut m, DomainError::StillWaiting(pid("w")), |m| {
            m.start_screen_share(&pid("w"))
        });
        refused(&mut m, DomainError::StillWaiting(pid("w")), |m| {
            m.admit(&by("w"), &pid("w"))
        });
        assert_eq!(
            m.leave(&pid("w"), T0).unwrap(),
            vec![MeetingEvent::UserLeft {
                participant: pid("w")
            }]
        );
    }

    #[test]
    fn capacity_counts_waiting_and_admitted() {
        let mut s = spec(MeetingKind::Meeting);
        s.waiting_room = true;
        s.limits = Some(Limits {
            max_participants: 2,
            max_breakouts: 0,
        });
        let mut m = create(s);
        join_at(&mut m, "h", 1);
        join_at(&mut m, "w", 2);
        let auth = m.authorize_join(None, None, T0).unwrap();
        refused(&mut m, DomainError::MeetingFull(2), |m| {
            m.join(req("x"), &auth, 0, T0)
        });
        assert_eq!(
            DomainError::MeetingFull(2).kind(),
            ErrorKind::ResourceExhausted
        );
        m.leave(&pid("w"), T0).unwrap();
        assert!(m.join(req("x"), &auth, 0, T0).is_ok());
    }

    #[test]
    fn schedule_window_with_early_join() {
        let start = UnixMillis(T0.0 + 3_600_000);
        let end = UnixMillis(start.0 + 3_600_000);
        let mut s = spec(MeetingKind::Meeting);
        s.schedule = Some(Schedule {
            starts_at: start,
            ends_at: end,
            early_join_ms: 600_000,
        });
        let mut m = create(s);
        let opens = UnixMillis(start.0 - 600_000);
        let too_early = UnixMillis(opens.0 - 1);
        assert_eq!(
            m.authorize_join(None, None, too_early),
            Err(DomainError::NotOpenYet { opens_at: opens })
        );
        let auth = m.authorize_join(None, None, opens).unwrap();
        refused(&mut m, DomainError::NotOpenYet { opens_at: opens }, |m| {
            m.join(req("a"), &auth, 0, too_early)
        });
        assert!(m.join(req("a"), &auth, 0, opens).is_ok());
        assert_eq!(
            m.authorize_join(None, None, end),
            Err(DomainError::WindowClosed(end))
        );
        refused(&mut m, DomainError::WindowClosed(end), |m| {
            m.join(req("b"), &auth, 0, end)
        });
        assert!(m.join(req("b"), &auth, 0, UnixMillis(end.0 - 1)).is_ok());
        assert_eq!(
            DomainError::WindowClosed(end).kind(),
            ErrorKind::FailedPrecondition
        );
    }

    #[test]
    fn join_refusals_change_nothing() {
        let mut m = meeting_hab();
        let auth = m.authorize_join(None, None, T0).unwrap();
        refused(&mut m, DomainError::ParticipantExists(pid("a")), |m| {
            m.join(req("a"), &auth, 0, T0)
        });
        for name in ["", "  ", &"n".repeat(65), "tab\there"] {
            let mut r = req("z");
            r.display_name = name.into();
            let before = m.clone();
            let err = m.join(r, &auth, 0, T0).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{name:?}");
            assert_eq!(m, before);
        }
        let other = create(spec(MeetingKind::Meeting));
        let mut other = Meeting {
            id: MeetingId::new("m2").unwrap(),
            ..other
        };
        let foreign = other.authorize_join(None, None, T0).unwrap();
        refused(&mut m, DomainError::StaleJoinAuthority, |m| {
            m.join(req("z"), &foreign, 0, T0)
        });
        // An authority from a meeting with a host key is stale for one without.
        let mut s = spec(MeetingKind::Meeting);
        s.host_key = Some(hash("hostkey"));
        let keyed = Meeting::create(MeetingId::new("m1").unwrap(), s, T0).unwrap();
        let host_auth = keyed
            .authorize_join(None, Some(&secret("hostkey")), T0)
            .unwrap();
        refused(&mut m, DomainError::StaleJoinAuthority, |m| {
            m.join(req("z"), &host_auth, 0, T0)
        });
        assert!(other.join(req("z"), &foreign, 0, T0).is_ok());
    }

    #[test]
    fn joining_an_ended_meeting_fails() {
        let mut m = meeting_hab();
        let auth = m.authorize_join(None, None, T0).unwrap();
        m.end(&by("h"), T0).unwrap();
        assert_eq!(
            m.authorize_join(None, None, T0),
            Err(DomainError::MeetingEnded)
        );
        refused(&mut m, DomainError::MeetingEnded, |m| {
            m.join(req("z"), &auth, 0, T0)
        });
    }

    #[test]
    fn authenticate_checks_meeting_participant_and_presence() {
        let mut m = meeting_hab();
        let claims = |meeting: &str, who: &str| {
            JoinClaims::new(
                MeetingId::new(meeting).unwrap(),
                pid(who),
                Role::Attendee,
                T0,
                Duration::from_secs(60),
            )
        };
        assert_eq!(
            m.authenticate(&claims("m1", "a")).unwrap().role,
            Role::Panelist
        );
        assert_eq!(
            m.authenticate(&claims("m2", "a")),
            Err(DomainError::TokenWrongMeeting)
        );
        assert_eq!(
            m.authenticate(&claims("m1", "zz")),
            Err(DomainError::ParticipantNotFound(pid("zz")))
        );
        m.leave(&pid("a"), T0).unwrap();
        assert_eq!(
            m.authenticate(&claims("m1", "a")),
            Err(DomainError::ParticipantLeft(pid("a")))
        );
    }

    #[test]
    fn recordings_readers_are_hosts_present_now_or_at_the_end() {
        let mut m = meeting_hab();
        join_at(&mut m, "h2", 4);
        m.set_role(&by("h"), &pid("h2"), Role::Host).unwrap();
        let claims = |meeting: &str, who: &str| {
            // The token's role is deliberately wrong: the stored role decides.
            JoinClaims::new(
                MeetingId::new(meeting).unwrap(),
                pid(who),
                Role::Host,
                T0,
                Duration::from_secs(60),
            )
        };
        let reading = "see the meeting's recordings";
        assert_eq!(m.check_recordings_reader(&claims("m1", "h")), Ok(()));
        assert_eq!(
            m.check_recordings_reader(&claims("m1", "a")),
            Err(DomainError::NotHost(reading))
        );
        assert_eq!(
            m.check_recordings_reader(&claims("m1", "nobody")),
            Err(DomainError::NotHost(reading))
        );
        assert_eq!(
            m.check_recordings_reader(&claims("m2", "h")),
            Err(DomainError::TokenWrongMeeting)
        );
        // A host who leaves before the end loses access; one present at the end keeps it.
        m.leave(&pid("h2"), UnixMillis(T0.0 + 10)).unwrap();
        assert_eq!(
            m.check_recordings_reader(&claims("m1", "h2")),
            Err(DomainError::ParticipantLeft(pid("h2")))
        );
        m.end(&Actor::Operator, UnixMillis(T0.0 + 20)).unwrap();
        assert_eq!(m.check_recordings_reader(&claims("m1", "h")), Ok(()));
        assert_eq!(
            m.check_recordings_reader(&claims("m1", "h2")),
            Err(DomainError::ParticipantLeft(pid("h2")))
        );
        assert_eq!(
            m.check_recordings_reader(&claims("m1", "a")),
            Err(DomainError::NotHost(reading))
        );
    }

    // ------------------------------------------------------------------ leave

    #[test]
    fn leave_rules() {
        let mut m = meeting_hab();
        m.start_screen_share(&pid("a")).unwrap();
        m.set_active_speaker(&pid("a")).unwrap();
        let ev = m.leave(&pid("a"), UnixMillis(T0.0 + 9)).unwrap();
        assert_eq!(
            ev,
            vec![
                MeetingEvent::ScreenshareStopped {
                    participant: pid("a"),
                    breakout: None
                },
                MeetingEvent::UserLeft {
                    participant: pid("a")
                },
            ]
        );
        let a = p(&m, "a");
        assert_eq!(a.presence, Presence::Left);
        assert_eq!(a.left_at, Some(UnixMillis(T0.0 + 9)));
        assert!(!a.screen_sharing && !a.can_publish());
        assert_eq!(m.active_speaker(None), None);
        refused(&mut m, DomainError::ParticipantLeft(pid("a")), |m| {
            m.leave(&pid("a"), T0)
        });
        refused(&mut m, DomainError::ParticipantNotFound(pid("q")), |m| {
            m.leave(&pid("q"), T0)
        });
        // Those who left can do nothing more.
        refused(&mut m, DomainError::ParticipantLeft(pid("a")), |m| {
            m.start_screen_share(&pid("a"))
        });
    }

    #[test]
    fn last_host_leaving_hands_over_to_earliest_panelist() {
        let mut m = create(spec(MeetingKind::Webinar));
        join_at(&mut m, "h", 1);
        join_at(&mut m, "v1", 2);
        join_at(&mut m, "v2", 3);
        join_at(&mut m, "pan", 4);
        m.set_role(&by("h"), &pid("pan"), Role::Panelist).unwrap();
        let ev = m.leave(&pid("h"), T0).unwrap();
        assert_eq!(
            ev[1],
            MeetingEvent::RoleChanged {
                participant: pid("pan"),
                from: Role::Panelist,
                to: Role::Host,
                by: None
            }
        );
        assert_eq!(p(&m, "pan").role, Role::Host);
        // With no panelist left, the earliest attendee inherits.
        m.leave(&pid("pan"), T0).unwrap();
        assert_eq!(p(&m, "v1").role, Role::Host);
        assert!(p(&m, "v1").can_publish());
        assert_eq!(p(&m, "v2").role, Role::Attendee);
    }

    #[test]
    fn host_leaving_with_other_hosts_present_promotes_nobody() {
        let mut m = meeting_hab();
        m.set_role(&by("h"), &pid("a"), Role::Host).unwrap();
        let ev = m.leave(&pid("h"), T0).unwrap();
        assert_eq!(
            ev,
            vec![MeetingEvent::UserLeft {
                participant: pid("h")
            }]
        );
        assert_eq!(p(&m, "b").role, Role::Panelist);
    }

    #[test]
    fn no_hand_over_with_a_host_key() {
        let mut s = spec(MeetingKind::Meeting);
        s.host_key = Some(hash("hostkey"));
        let mut m = create(s);
        let auth = m
            .authorize_join(None, Some(&secret("hostkey")), T0)
            .unwrap();
        m.join(req("h"), &auth, 0, T0).unwrap();
        join_at(&mut m, "a", 1);
        assert_eq!(p(&m, "a").role, Role::Panelist);
        let ev = m.leave(&pid("h"), T0).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(p(&m, "a").role, Role::Panelist);
        // Nor does a later joiner become host: only key holders do.
        join_at(&mut m, "b", 2);
        assert_eq!(p(&m, "b").role, Role::Panelist);
    }

    #[test]
    fn empty_meeting_without_host_key_gives_hosting_to_next_joiner() {
        let mut m = create(spec(MeetingKind::Meeting));
        join_at(&mut m, "h", 1);
        m.leave(&pid("h"), T0).unwrap();
        join_at(&mut m, "n", 2);
        assert_eq!(p(&m, "n").role, Role::Host);
    }

    // ------------------------------------------------------------------ end

    #[test]
    fn end_rules() {
        let mut m = meeting_hab();
        refused(&mut m, DomainError::NotHost("end the meeting"), |m| {
            m.end(&by("a"), T0)
        });
        refused(&mut m, DomainError::ParticipantNotFound(pid("q")), |m| {
            m.end(&by("q"), T0)
        });
        m.set_recording(&by("h"), Some(recording())).unwrap();
        m.start_screen_share(&pid("a")).unwrap();
        let ev = m.end(&by("h"), UnixMillis(T0.0 + 5)).unwrap();
        assert_eq!(
            ev,
            vec![
                MeetingEvent::RecordingStopped {
                    by: by("h"),
                    recording: Some(recording())
                },
                MeetingEvent::MeetingEnded { by: by("h") }
            ]
        );
        assert_eq!(
            m.state(),
            MeetingState::Ended {
                at: UnixMillis(T0.0 + 5)
            }
        );
        assert!(!m.recording());
        assert!(m
            .participants()
            .values()
            .all(|p| p.presence == Presence::Left && !p.screen_sharing));
        assert_eq!(m.present_count(), 0);
        // Every later operation is refused.
        let e = DomainError::MeetingEnded;
        refused(&mut m, e.clone(), |m| m.end(&Actor::Operator, T0));
        refused(&mut m, e.clone(), |m| m.leave(&pid("a"), T0));
        refused(&mut m, e.clone(), |m| {
            m.set_recording(&Actor::Operator, Some(recording()))
        });
        refused(&mut m, e.clone(), |m| m.start_screen_share(&pid("a")));
        refused(&mut m, e.clone(), |m| {
            m.set_role(&Actor::Operator, &pid("a"), Role::Host)
        });
        refused(&mut m, e.clone(), |m| m.close_breakouts(&Actor::Operator));
        refused(&mut m, e, |m| m.set_active_speaker(&pid("a")));
    }

    #[test]
    fn operator_can_end_without_recording_event() {
        let mut m = meeting_hab();
        let ev = m.end(&Actor::Operator, T0).unwrap();
        assert_eq!(
            ev,
            vec![MeetingEvent::MeetingEnded {
                by: Actor::Operator
            }]
        );
    }

    // ------------------------------------------------------------------ mute

    #[test]
    fn mute_rules() {
        let mut m = meeting_hab();
        let mute_audio = MuteChange {
            audio: Some(true),
            video: None,
        };
        let unmute_audio = MuteChange {
            audio: Some(false),
            video: None,
        };
        refused(
            &mut m,
            DomainError::EmptyRequest("no mute flag given"),
            |m| m.set_mute(&by("a"), &pid("a"), MuteChange::default()),
        );
        let ev = m.set_mute(&by("a"), &pid("a"), mute_audio).unwrap();
        assert_eq!(
            ev,
            vec![MeetingEvent::MuteChanged {
                participant: pid("a"),
                audio_muted: true,
                video_muted: false,
                by: by("a")
            }]
        );
        assert_eq!(
            m.set_mute(&by("a"), &pid("a"), mute_audio).unwrap(),
            vec![],
            "no change, no event"
        );
        assert_eq!(
            m.set_mute(&by("a"), &pid("a"), unmute_audio).unwrap().len(),
            1
        );
        // A host mutes others but never unmutes them.
        assert_eq!(
            m.set_mute(&by("h"), &pid("a"), mute_audio).unwrap().len(),
            1
        );
        refused(&mut m, DomainError::CannotUnmuteOthers, |m| {
            m.set_mute(&by("h"), &pid("a"), unmute_audio)
        });
        refused(&mut m, DomainError::CannotUnmuteOthers, |m| {
            m.set_mute(
                &Actor::Operator,
                &pid("a"),
                MuteChange {
                    audio: Some(true),
                    video: Some(false),
                },
            )
        });
        // Non-hosts cannot touch others at all.
        refused(
            &mut m,
            DomainError::NotHost("mute other participants"),
            |m| m.set_mute(&by("b"), &pid("a"), mute_audio),
        );
        refused(&mut m, DomainError::ParticipantNotFound(pid("q")), |m| {
            m.set_mute(&by("h"), &pid("q"), mute_audio)
        });
    }

    #[test]
    fn attendees_cannot_unmute() {
        let mut m = create(spec(MeetingKind::Webinar));
        join_at(&mut m, "h", 1);
        join_at(&mut m, "v", 2);
        refused(&mut m, DomainError::CannotPublish(pid("v")), |m| {
            m.set_mute(
                &by("v"),
                &pid("v"),
                MuteChange {
                    audio: Some(false),
                    video: None,
                },
            )
        });
        assert_eq!(
            m.set_mute(
                &by("v"),
                &pid("v"),
                MuteChange {
                    audio: Some(true),
                    video: Some(true)
                }
            )
            .unwrap(),
            vec![]
        );
    }

    // ------------------------------------------------------------------ screen share

    #[test]
    fn screen_share_rules() {
        let mut m = meeting_hab();
        assert_eq!(
            m.start_screen_share(&pid("a")).unwrap(),
            vec![MeetingEvent::ScreenshareStarted {
                participant: pid("a"),
                breakout: None
            }]
        );
        assert_eq!(
            m.start_screen_share(&pid("a")).unwrap(),
            vec![],
            "already sharing"
        );
        assert_eq!(m.screen_sharer(None), Some(&pid("a")));
        refused(&mut m, DomainError::ScreenShareBusy(pid("a")), |m| {
            m.start_screen_share(&pid("b"))
        });
        refused(&mut m, DomainError::ScreenShareBusy(pid("a")), |m| {
            m.start_screen_share(&pid("h"))
        });
        refused(
            &mut m,
            DomainError::NotHost("stop another participant's screen share"),
            |m| m.stop_screen_share(&by("b"), &pid("a")),
        );
        assert_eq!(m.stop_screen_share(&by("a"), &pid("a")).unwrap().len(), 1);
        assert_eq!(
            m.stop_screen_share(&by("a"), &pid("a")).unwrap(),
            vec![],
            "not sharing"
        );
        m.start_screen_share(&pid("b")).unwrap();
        assert_eq!(
            m.stop_screen_share(&by("h"), &pid("b")).unwrap(),
            vec![MeetingEvent::ScreenshareStopped {
                participant: pid("b"),
                breakout: None
            }]
        );
        refused(&mut m, DomainError::ParticipantNotFound(pid("q")), |m| {
            m.start_screen_share(&pid("q"))
        });
    }

    #[test]
    fn one_share_per_room() {
        let mut m = meeting_hab();
        m.create_breakouts(
            &by("h"),
            vec![NewBreakout {
                id: bid("r1"),
                name: "One".into(),
            }],
            T0,
        )
        .unwrap();
        m.move_to_breakout(&by("h"), &pid("b"), Some(bid("r1")))
            .unwrap();
        m.start_screen_share(&pid("a")).unwrap();
        assert_eq!(
            m.start_screen_share(&pid("b")).unwrap(),
            vec![MeetingEvent::ScreenshareStarted {
                participant: pid("b"),
                breakout: Some(bid("r1"))
            }]
        );
        assert_eq!(m.screen_sharer(Some(&bid("r1"))), Some(&pid("b")));
        assert_eq!(m.screen_sharer(None), Some(&pid("a")));
    }

    #[test]
    fn attendees_cannot_share() {
        let mut m = create(spec(MeetingKind::Webinar));
        join_at(&mut m, "h", 1);
        join_at(&mut m, "v", 2);
        refused(&mut m, DomainError::CannotPublish(pid("v")), |m| {
            m.start_screen_share(&pid("v"))
        });
        assert_eq!(
            DomainError::CannotPublish(pid("v")).kind(),
            ErrorKind::PermissionDenied
        );
    }

    // ------------------------------------------------------------------ admit / deny

    #[test]
    fn admit_and_deny_rules() {
        let mut s = spec(MeetingKind::Meeting);
        s.waiting_room = true;
        let mut m = create(s);
        join_at(&mut m, "h", 1);
        join_at(&mut m, "w1", 2);
        join_at(&mut m, "w2", 3);
        refused(&mut m, DomainError::StillWaiting(pid("w2")), |m| {
            m.admit(&by("w2"), &pid("w1"))
        });
        refused(&mut m, DomainError::ParticipantNotFound(pid("q")), |m| {
            m.admit(&by("h"), &pid("q"))
        });
        refused(&mut m, DomainError::NotWaiting(pid("h")), |m| {
            m.admit(&by("h"), &pid("h"))
        });
        let ev = m.admit(&by("h"), &pid("w1")).unwrap();
        assert_eq!(
            ev,
            vec![
                MeetingEvent::Admitted {
                    participant: pid("w1"),
                    by: by("h")
                },
                MeetingEvent::UserJoined {
                    participant: pid("w1"),
                    display_name: "Name of w1".into(),
                    role: Role::Panelist
                },
            ]
        );
        assert!(p(&m, "w1").can_publish());
        refused(&mut m, DomainError::NotHost("admit participants"), |m| {
            m.admit(&by("w1"), &pid("w2"))
        });
        refused(&mut m, DomainError::NotHost("deny participants"), |m| {
            m.deny(&by("w1"), &pid("w2"), T0)
        });
        refused(&mut m, DomainError::NotWaiting(pid("w1")), |m| {
            m.deny(&by("h"), &pid("w1"), T0)
        });
        assert_eq!(
            m.deny(&Actor::Operator, &pid("w2"), UnixMillis(T0.0 + 7))
                .unwrap(),
            vec![MeetingEvent::Denied {
                participant: pid("w2"),
                by: Actor::Operator
            }]
        );
        assert_eq!(p(&m, "w2").presence, Presence::Left);
        assert_eq!(p(&m, "w2").left_at, Some(UnixMillis(T0.0 + 7)));
        refused(&mut m, DomainError::ParticipantLeft(pid("w2")), |m| {
            m.admit(&by("h"), &pid("w2"))
        });
    }

    // ------------------------------------------------------------------ roles

    #[test]
    fn promotion_lets_attendees_publish() {
        let mut m = create(spec(MeetingKind::Webinar));
        join_at(&mut m, "h", 1);
        join_at(&mut m, "v", 2);
        refused(&mut m, DomainError::NotHost("change roles"), |m| {
            m.set_role(&by("v"), &pid("v"), Role::Panelist)
        });
        assert_eq!(
            m.set_role(&by("h"), &pid("v"), Role::Panelist).unwrap(),
            vec![MeetingEvent::RoleChanged {
                participant: pid("v"),
                from: Role::Attendee,
                to: Role::Panelist,
                by: Some(by("h"))
            }]
        );
        assert!(p(&m, "v").can_publish());
        assert_eq!(
            m.set_role(&by("h"), &pid("v"), Role::Panelist).unwrap(),
            vec![]
        );
        assert!(m.start_screen_share(&pid("v")).is_ok());
        assert!(m
            .set_mute(
                &by("v"),
                &pid("v"),
                MuteChange {
                    audio: Some(false),
                    video: None
                }
            )
            .is_ok());
    }

    #[test]
    fn demotion_to_attendee_stops_publishing() {
        let mut m = meeting_hab();
        m.start_screen_share(&pid("a")).unwrap();
        m.set_active_speaker(&pid("a")).unwrap();
        let ev = m.set_role(&by("h"), &pid("a"), Role::Attendee).unwrap();
        assert_eq!(
            ev,
            vec![
                MeetingEvent::RoleChanged {
                    participant: pid("a"),
                    from: Role::Panelist,
                    to: Role::Attendee,
                    by: Some(by("h"))
                },
                MeetingEvent::ScreenshareStopped {
                    participant: pid("a"),
                    breakout: None
                },
                MeetingEvent::MuteChanged {
                    participant: pid("a"),
                    audio_muted: true,
                    video_muted: true,
                    by: by("h")
                },
            ]
        );
        let a = p(&m, "a");
        assert!(!a.can_publish() && !a.screen_sharing && a.audio_muted && a.video_muted);
        assert_eq!(m.active_speaker(None), None);
    }

    #[test]
    fn the_last_host_stays() {
        let mut m = meeting_hab();
        refused(&mut m, DomainError::LastHost, |m| {
            m.set_role(&by("h"), &pid("h"), Role::Panelist)
        });
        refused(&mut m, DomainError::LastHost, |m| {
            m.set_role(&Actor::Operator, &pid("h"), Role::Attendee)
        });
        m.set_role(&by("h"), &pid("a"), Role::Host).unwrap();
        assert!(m.set_role(&by("a"), &pid("h"), Role::Panelist).is_ok());
        refused(&mut m, DomainError::NotHost("change roles"), |m| {
            m.set_role(&by("h"), &pid("a"), Role::Panelist)
        });
    }

    // ------------------------------------------------------------------ breakouts

    fn rooms(ids: &[&str]) -> Vec<NewBreakout> {
        ids.iter()
            .map(|id| NewBreakout {
                id: bid(id),
                name: format!("Room {id}"),
            })
            .collect()
    }

    #[test]
    fn create_breakouts_rules() {
        let mut m = meeting_hab();
        refused(
            &mut m,
            DomainError::EmptyRequest("no breakout rooms given"),
            |m| m.create_breakouts(&by("h"), vec![], T0),
        );
        refused(&mut m, DomainError::Duplicate("breakout room id"), |m| {
            m.create_breakouts(&by("h"), rooms(&["r1", "r1"]), T0)
        });
        refused(
            &mut m,
            DomainError::InvalidText {
                field: "breakout room name",
                reason: "is empty",
            },
            |m| {
                m.create_breakouts(
                    &by("h"),
                    vec![NewBreakout {
                        id: bid("r1"),
                        name: " ".into(),
                    }],
                    T0,
                )
            },
        );
        refused(&mut m, DomainError::NotHost("create breakout rooms"), |m| {
            m.create_breakouts(&by("a"), rooms(&["r1"]), T0)
        });
        let ev = m
            .create_breakouts(&by("h"), rooms(&["r1", "r2"]), T0)
            .unwrap();
        assert_eq!(
            ev,
            vec![
                MeetingEvent::BreakoutCreated {
                    breakout: bid("r1"),
                    name: "Room r1".into()
                },
                MeetingEvent::BreakoutCreated {
                    breakout: bid("r2"),
                    name: "Room r2".into()
                },
            ]
        );
        assert_eq!(m.breakouts().len(), 2);
        refused(&mut m, DomainError::BreakoutExists(bid("r2")), |m| {
            m.create_breakouts(&by("h"), rooms(&["r3", "r2"]), T0)
        });
    }

    #[test]
    fn breakout_limit_is_all_or_nothing() {
        let mut s = spec(MeetingKind::Meeting);
        s.limits = Some(Limits {
            max_participants: 10,
            max_breakouts: 2,
        });
        let mut m = create(s);
        join_at(&mut m, "h", 1);
        m.create_breakouts(&by("h"), rooms(&["r1"]), T0).unwrap();
        refused(&mut m, DomainError::TooManyBreakouts(2), |m| {
            m.create_breakouts(&by("h"), rooms(&["r2", "r3"]), T0)
        });
        assert!(m.create_breakouts(&by("h"), rooms(&["r2"]), T0).is_ok());
    }

    #[test]
    fn webinars_have_no_breakouts() {
        let mut m = create(spec(MeetingKind::Webinar));
        join_at(&mut m, "h", 1);
        refused(&mut m, DomainError::NoBreakoutsInWebinar, |m| {
            m.create_breakouts(&by("h"), rooms(&["r1"]), T0)
        });
    }

    #[test]
    fn move_rules() {
        let mut m = meeting_hab();
        m.create_breakouts(&by("h"), rooms(&["r1", "r2"]), T0)
            .unwrap();
        refused(&mut m, DomainError::BreakoutNotFound(bid("nope")), |m| {
            m.move_to_breakout(&by("h"), &pid("a"), Some(bid("nope")))
        });
        refused(
            &mut m,
            DomainError::NotHost("move participants between rooms"),
            |m| m.move_to_breakout(&by("a"), &pid("a"), Some(bid("r1"))),
        );
        refused(&mut m, DomainError::ParticipantNotFound(pid("q")), |m| {
            m.move_to_breakout(&by("h"), &pid("q"), Some(bid("r1")))
        });
        assert_eq!(
            m.move_to_breakout(&by("h"), &pid("a"), None).unwrap(),
            vec![],
            "already there"
        );
        m.start_screen_share(&pid("a")).unwrap();
        let ev = m
            .move_to_breakout(&by("h"), &pid("a"), Some(bid("r1")))
            .unwrap();
        assert_eq!(
            ev,
            vec![
                MeetingEvent::ScreenshareStopped {
                    participant: pid("a"),
                    breakout: None
                },
                MeetingEvent::BreakoutMoved {
                    participant: pid("a"),
                    from: None,
                    to: Some(bid("r1"))
                },
            ]
        );
        assert_eq!(p(&m, "a").breakout, Some(bid("r1")));
        assert_eq!(
            m.move_to_breakout(&by("h"), &pid("a"), Some(bid("r2")))
                .unwrap(),
            vec![MeetingEvent::BreakoutMoved {
                participant: pid("a"),
                from: Some(bid("r1")),
                to: Some(bid("r2"))
            }]
        );
    }

    #[test]
    fn closing_breakouts_returns_everyone() {
        let mut m = meeting_hab();
        assert_eq!(
            m.close_breakouts(&by("h")).unwrap(),
            vec![],
            "nothing to close"
        );
        m.create_breakouts(&by("h"), rooms(&["r1", "r2"]), T0)
            .unwrap();
        m.move_to_breakout(&by("h"), &pid("a"), Some(bid("r1")))
            .unwrap();
        m.move_to_breakout(&by("h"), &pid("b"), Some(bid("r2")))
            .unwrap();
        m.start_screen_share(&pid("b")).unwrap();
        m.set_active_speaker(&pid("a")).unwrap();
        assert_eq!(m.active_speaker(Some(&bid("r1"))), Some(&pid("a")));
        refused(&mut m, DomainError::NotHost("close breakout rooms"), |m| {
            m.close_breakouts(&by("a"))
        });
        let ev = m.close_breakouts(&by("h")).unwrap();
        assert_eq!(
            ev,
            vec![
                MeetingEvent::BreakoutMoved {
                    participant: pid("a"),
                    from: Some(bid("r1")),
                    to: None
                },
                MeetingEvent::ScreenshareStopped {
                    participant: pid("b"),
                    breakout: Some(bid("r2"))
                },
                MeetingEvent::BreakoutMoved {
                    participant: pid("b"),
                    from: Some(bid("r2")),
                    to: None
                },
                MeetingEvent::BreakoutClosed {
                    breakout: bid("r1")
                },
                MeetingEvent::BreakoutClosed {
                    breakout: bid("r2")
                },
            ]
        );
        assert!(m.breakouts().is_empty());
        assert!(m
            .participants()
            .values()
            .all(|p| p.breakout.is_none() && !p.screen_sharing));
    }

    // ------------------------------------------------------------------ recording

    #[test]
    fn recording_rules() {
        let mut m = meeting_hab();
        refused(
            &mut m,
            DomainError::NotHost("start or stop recording"),
            |m| m.set_recording(&by("a"), Some(recording())),
        );
        assert_eq!(
            m.set_recording(&by("h"), Some(recording())).unwrap(),
            vec![MeetingEvent::RecordingStarted {
                by: by("h"),
                recording: Some(recording())
            }]
        );
        assert!(m.recording());
        assert_eq!(m.recording_id(), Some(&recording()));
        // Starting again keeps the recording under way.
        let other = RecordingId::new("rec-2").unwrap();
        assert_eq!(m.set_recording(&by("h"), Some(other)).unwrap(), vec![]);
        assert_eq!(m.recording_id(), Some(&recording()));
        assert_eq!(
            m.set_recording(&Actor::Operator, None).unwrap(),
            vec![MeetingEvent::RecordingStopped {
                by: Actor::Operator,
                recording: Some(recording())
            }]
        );
    }

    // ------------------------------------------------------------------ active speaker

    #[test]
    fn active_speaker_rules() {
        let mut m = meeting_hab();
        assert_eq!(
            m.set_active_speaker(&pid("a")).unwrap(),
            vec![MeetingEvent::ActiveSpeaker {
                participant: pid("a"),
                breakout: None
            }]
        );
        assert_eq!(
            m.set_active_speaker(&pid("a")).unwrap(),
            vec![],
            "same speaker"
        );
        m.set_mute(
            &by("b"),
            &pid("b"),
            MuteChange {
                audio: Some(true),
                video: None,
            },
        )
        .unwrap();
        refused(&mut m, DomainError::Muted(pid("b")), |m| {
            m.set_active_speaker(&pid("b"))
        });
        // Muting the speaker clears them.
        m.set_mute(
            &by("a"),
            &pid("a"),
            MuteChange {
                audio: Some(true),
                video: None,
            },
        )
        .unwrap();
        assert_eq!(m.active_speaker(None), None);

        let mut w = create(spec(MeetingKind::Webinar));
        join_at(&mut w, "h", 1);
        join_at(&mut w, "v", 2);
        refused(&mut w, DomainError::CannotPublish(pid("v")), |m| {
            m.set_active_speaker(&pid("v"))
        });
    }

    // ------------------------------------------------------------------ the audience

    /// Runs an audience `op`, asserts it failed with `expected`, and that neither the
    /// meeting nor the member changed.
    fn refused_member(
        m: &Meeting,
        member: &mut Participant,
        expected: DomainError,
        op: impl FnOnce(&Meeting, &mut Participant) -> Result<Vec<MeetingEvent>, DomainError>,
    ) {
        let (before_m, before_p) = (m.clone(), member.clone());
        assert_eq!(op(m, member), Err(expected));
        assert_eq!(*m, before_m, "a refused operation changed the meeting");
        assert_eq!(*member, before_p, "a refused operation changed the member");
    }

    /// A webinar with host `h` on the stage (optionally a waiting room), and attendee `v`
    /// decided into the audience.
    fn webinar_with_audience(waiting_room: bool) -> (Meeting, Participant) {
        let mut s = spec(MeetingKind::Webinar);
        s.waiting_room = waiting_room;
        let mut m = create(s);
        join_at(&mut m, "h", 1);
        let auth = m.authorize_join(None, None, T0).unwrap();
        assert_eq!(m.seat(&auth), Seat::Audience);
        let (v, _) = m.join_audience(req("v"), &auth, 0, T0).unwrap();
        (m, v)
    }

    #[test]
    fn seat_puts_only_webinar_attendees_in_the_audience() {
        let mut m = create(spec(MeetingKind::Webinar));
        let auth = m.authorize_join(None, None, T0).unwrap();
        assert_eq!(m.seat(&auth), Seat::Stage, "the first joiner hosts");
        m.join(req("h"), &auth, 0, T0).unwrap();
        assert_eq!(m.seat(&auth), Seat::Audience);
        let mut mt = meeting_hab();
        let auth = mt.authorize_join(None, None, T0).unwrap();
        assert_eq!(mt.seat(&auth), Seat::Stage);
        assert!(mt.join(req("z"), &auth, 0, T0).is_ok());
    }

    #[test]
    fn join_audience_decides_without_changing_the_meeting() {
        let mut m = create(spec(MeetingKind::Webinar));
        join_at(&mut m, "h", 1);
        let before = m.clone();
        let auth = m.authorize_join(None, None, T0).unwrap();
        let mut r = req("v");
        r.display_name = "  Viewer ".into();
        let (v, ev) = m.join_audience(r, &auth, 7, T0).unwrap();
        assert_eq!(m, before);
        assert_eq!(
            (v.role, v.presence, v.audio_muted, v.video_muted),
            (Role::Attendee, Presence::Admitted, true, true)
        );
        assert_eq!(v.display_name, "Viewer");
        assert_eq!(
            ev,
            vec![MeetingEvent::UserJoined {
                participant: pid("v"),
                display_name: "Viewer".into(),
                role: Role::Attendee
            }]
        );
        // With a waiting room, attendees wait.
        let (_, w) = webinar_with_audience(true);
        assert_eq!(w.presence, Presence::Waiting);
    }

    #[test]
    fn join_audience_refusals() {
        let mut s = spec(MeetingKind::Webinar);
        s.limits = Some(Limits {
            max_participants: 3,
            max_breakouts: 0,
        });
        let mut m = create(s);
        let auth = m.authorize_join(None, None, T0).unwrap();
        let before = m.clone();
        // Nobody hosts yet: this joiner belongs on the stage.
        assert_eq!(
            m.join_audience(req("v"), &auth, 0, T0),
            Err(DomainError::StaleJoinAuthority)
        );
        assert_eq!(m, before);
        m.join(req("h"), &auth, 0, T0).unwrap();
        let before = m.clone();
        // The stage (1) plus the audience counted (2) fill the 3 seats.
        assert_eq!(
            m.join_audience(req("v"), &auth, 2, T0),
            Err(DomainError::MeetingFull(3))
        );
        assert_eq!(
            m.join_audience(req("h"), &auth, 0, T0),
            Err(DomainError::ParticipantExists(pid("h")))
        );
        let mut r = req("v");
        r.display_name = String::new();
        assert!(matches!(
            m.join_audience(r, &auth, 0, T0),
            Err(DomainError::InvalidText { .. })
        ));
        assert_eq!(m, before);
        assert!(m.join_audience(req("v"), &auth, 1, T0).is_ok());
        // The stage join counts the audience too.
        refused(&mut m, DomainError::MeetingFull(3), |m| {
            m.join(req("z"), &auth, 2, T0)
        });
        m.end(&Actor::Operator, T0).unwrap();
        assert_eq!(
            m.join_audience(req("v"), &auth, 0, T0),
            Err(DomainError::MeetingEnded)
        );
    }

    #[test]
    fn admit_and_deny_audience_rules() {
        let (m, mut w) = webinar_with_audience(true);
        let mut other = w.clone();
        // An attendee is not on the stage, so not a host there (the service refuses
        // audience callers before asking).
        refused_member(
            &m,
            &mut w,
            DomainError::ParticipantNotFound(pid("v")),
            |m, w| m.admit_audience(&by("v"), w),
        );
        refused_member(
            &m,
            &mut w,
            DomainError::ParticipantNotFound(pid("q")),
            |m, w| m.deny_audience(&by("q"), w, T0),
        );
        let ev = m.admit_audience(&by("h"), &mut w).unwrap();
        assert_eq!(
            ev,
            vec![
                MeetingEvent::Admitted {
                    participant: pid("v"),
                    by: by("h")
                },
                MeetingEvent::UserJoined {
                    participant: pid("v"),
                    display_name: "Name of v".into(),
                    role: Role::Attendee
                },
            ]
        );
        assert_eq!(w.presence, Presence::Admitted);
        refused_member(&m, &mut w, DomainError::NotWaiting(pid("v")), |m, w| {
            m.admit_audience(&by("h"), w)
        });
        refused_member(&m, &mut w, DomainError::NotWaiting(pid("v")), |m, w| {
            m.deny_audience(&by("h"), w, T0)
        });
        assert_eq!(
            m.deny_audience(&Actor::Operator, &mut other, UnixMillis(T0.0 + 3))
                .unwrap(),
            vec![MeetingEvent::Denied {
                participant: pid("v"),
                by: Actor::Operator
            }]
        );
        assert_eq!(other.presence, Presence::Left);
        assert_eq!(other.left_at, Some(UnixMillis(T0.0 + 3)));
        refused_member(
            &m,
            &mut other,
            DomainError::ParticipantLeft(pid("v")),
            |m, w| m.admit_audience(&by("h"), w),
        );
    }

    #[test]
    fn leave_audience_rules() {
        let (mut m, mut v) = webinar_with_audience(false);
        let mut late = v.clone();
        assert_eq!(
            m.leave_audience(&mut v, UnixMillis(T0.0 + 4)).unwrap(),
            vec![MeetingEvent::UserLeft {
                participant: pid("v")
            }]
        );
        assert_eq!(
            (v.presence, v.left_at),
            (Presence::Left, Some(UnixMillis(T0.0 + 4)))
        );
        refused_member(
            &m,
            &mut v,
            DomainError::ParticipantLeft(pid("v")),
            |m, v| m.leave_audience(v, T0),
        );
        m.end(&by("h"), T0).unwrap();
        refused_member(&m, &mut late, DomainError::MeetingEnded, |m, v| {
            m.leave_audience(v, T0)
        });
    }

    #[test]
    fn mute_audience_rules() {
        let (m, mut v) = webinar_with_audience(false);
        let mute = MuteChange {
            audio: Some(true),
            video: None,
        };
        let unmute = MuteChange {
            audio: Some(false),
            video: None,
        };
        assert_eq!(m.mute_audience(&by("v"), &v, mute).unwrap(), vec![]);
        assert_eq!(m.mute_audience(&by("h"), &v, mute).unwrap(), vec![]);
        let cases = [
            (
                by("v"),
                MuteChange::default(),
                DomainError::EmptyRequest("no mute flag given"),
            ),
            (by("v"), unmute, DomainError::CannotPublish(pid("v"))),
            (by("h"), unmute, DomainError::CannotUnmuteOthers),
            (by("q"), mute, DomainError::ParticipantNotFound(pid("q"))),
        ];
        for (actor, change, err) in cases {
            refused_member(&m, &mut v, err, |m, v| m.mute_audience(&actor, v, change));
        }
        let (_, mut w) = webinar_with_audience(true);
        refused_member(&m, &mut w, DomainError::StillWaiting(pid("v")), |m, w| {
            m.mute_audience(&by("v"), w, mute)
        });
    }

    #[test]
    fn promote_attendee_moves_onto_the_stage() {
        let (mut m, v) = webinar_with_audience(false);
        // An attendee is not on the stage, let alone a host there.
        refused(&mut m, DomainError::ParticipantNotFound(pid("v")), |m| {
            m.promote_attendee(&by("v"), v.clone(), Role::Panelist)
        });
        let (_, waiting) = webinar_with_audience(true);
        refused(&mut m, DomainError::StillWaiting(pid("v")), |m| {
            m.promote_attendee(&by("h"), waiting.clone(), Role::Panelist)
        });
        let mut h_twin = v.clone();
        h_twin.id = pid("h");
        refused(&mut m, DomainError::ParticipantExists(pid("h")), |m| {
            m.promote_attendee(&by("h"), h_twin.clone(), Role::Panelist)
        });
        assert_eq!(
            m.promote_attendee(&by("h"), v.clone(), Role::Attendee)
                .unwrap(),
            vec![],
            "no change"
        );
        assert!(m.participant(&pid("v")).is_none());
        let ev = m
            .promote_attendee(&by("h"), v.clone(), Role::Panelist)
            .unwrap();
        assert_eq!(
            ev,
            vec![
                MeetingEvent::RoleChanged {
                    participant: pid("v"),
                    from: Role::Attendee,
                    to: Role::Panelist,
                    by: Some(by("h"))
                },
                MeetingEvent::UserJoined {
                    participant: pid("v"),
                    display_name: "Name of v".into(),
                    role: Role::Panelist
                },
            ]
        );
        assert!(p(&m, "v").can_publish());
        assert!(p(&m, "v").audio_muted, "promotion keeps the mute");
        // On the stage, hand-over works as in a meeting.
        m.leave(&pid("h"), T0).unwrap();
        assert_eq!(p(&m, "v").role, Role::Host);
    }

    // ------------------------------------------------------------------ storage

    #[test]
    fn json_round_trip_with_version() {
        let mut s = spec(MeetingKind::Meeting);
        s.passcode = Some(hash("pass1"));
        s.schedule = Some(Schedule::new(T0, UnixMillis(T0.0 + 60_000)));
        let mut m = create(s);
        let auth = m.authorize_join(Some(&secret("pass1")), None, T0).unwrap();
        m.join(req("h"), &auth, 0, T0).unwrap();
        m.join(req("a"), &auth, 0, T0).unwrap();
        m.create_breakouts(&by("h"), rooms(&["r1"]), T0).unwrap();
        m.move_to_breakout(&by("h"), &pid("a"), Some(bid("r1")))
            .unwrap();
        m.set_recording(&by("h"), Some(recording())).unwrap();

        let json = serde_json::to_string(&m).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["kind"], "meeting");
        assert_eq!(v["state"]["state"], "open");
        let back: Meeting = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert!(back
            .authorize_join(Some(&secret("pass1")), None, T0)
            .is_ok());

        let mut v2 = v.clone();
        v2["version"] = 2.into();
        let err = serde_json::from_value::<Meeting>(v2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unsupported meeting format version 2"),
            "{err}"
        );
        let mut bad_id = v;
        bad_id["id"] = "has space".into();
        assert!(serde_json::from_value::<Meeting>(bad_id).is_err());
    }

    #[test]
    fn debug_does_not_leak_the_passcode_hash() {
        let mut s = spec(MeetingKind::Meeting);
        let h = hash("pass1");
        let phc = String::from(h.clone());
        s.passcode = Some(h);
        let dbg = format!("{:?}", create(s));
        let output = phc.rsplit('$').next().unwrap();
        assert!(!dbg.contains(output), "{dbg}");
    }

    #[test]
    fn prune_forgets_only_departed() {
        let mut m = meeting_hab();
        m.leave(&pid("a"), T0).unwrap();
        assert_eq!(m.prune_departed(), 1);
        assert!(m.participant(&pid("a")).is_none());
        assert_eq!(m.present_count(), 2);
        assert_eq!(m.prune_departed(), 0);
    }

    #[test]
    fn schedule_opens_at_saturates() {
        let s = Schedule {
            starts_at: UnixMillis(5),
            ends_at: UnixMillis(10),
            early_join_ms: 600_000,
        };
        assert_eq!(s.opens_at(), UnixMillis(0));
    }
}
