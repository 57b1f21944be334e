//! Every meeting use case, on an `Arc<dyn Store>`: [`MeetingService`].
//!
//! # The model
//!
//! A meeting is one document (`keys::meeting`): settings, state, breakouts and its
//! *stage*, which is everyone of a meeting and the hosts and panelists of a webinar. A
//! webinar's attendees (its *audience*) are one record each (`keys::attendee`): 50,000 of
//! them would not fit an etcd value (1.5 MiB), and every join would contend on one key.
//! The domain decides audience operations from the document without changing it
//! ([`Meeting::join_audience`] and friends) and the service stores the attendee's record.
//!
//! Every mutation is the same loop:
//!
//! 1. read the document with its `mod_revision` (and, if the operation concerns an
//!    attendee, that attendee's record with its own);
//! 2. ask the domain; a [`DomainError`] returns at once, nothing written;
//! 3. one transaction: if the revisions read are unchanged, write the new document or
//!    record, the side records (transport keys) and one key per event
//!    (`keys::event`), else retry from 1, at most [`MeetingsConfig::max_cas_attempts`]
//!    times with a small random backoff, then [`ServiceError::Contention`].
//!
//! An operation that changes nothing (the domain returns no events) writes nothing.
//! Audience writes compare the document's `mod_revision` too when the decision depends on
//! it (a join: the meeting is open and the joiner's seat is the audience; an admission: the
//! admitter is still a host), but not the other attendees: joins to one webinar contend
//! only with stage changes, which are rare, and never with each other.
//!
//! # Capacity of the audience
//!
//! The audience is counted with [`Store::count`] before the domain decides a join. Two joins
//! in flight both count N and both succeed, so under concurrent joins the audience may
//! overshoot `max_participants` by at most the number of joins in flight at the moment the
//! limit is reached (each control-plane instance runs a bounded number of requests). A
//! strict limit would need every join to write one shared counter, which is exactly the
//! contention the audience records avoid; for a 50,000-seat webinar a few seats over is
//! the better trade.
//!
//! # Events and their lease
//!
//! Events are written in the transaction of the change that caused them, each attached to
//! an *event lease* so that they disappear after [`MeetingsConfig::event_ttl`]: they are
//! a feed for `WatchMeeting` (see [`watch`]), not a history. A service grants one lease
//! lazily and uses it for half the TTL, then grants the next one; it never keeps a lease
//! alive, because a lease kept alive would never end and its events never expire. So an
//! event lives between half the TTL and the TTL. A transaction that fails with
//! `LeaseNotFound` (the lease ended early: etcd restored from a snapshot, a paused
//! process) forgets the lease and retries with a fresh one.
//!
//! # Secrets
//!
//! Passcodes are checked once per join with argon2 in `spawn_blocking`. Join tokens and
//! SRTP keys are returned to the caller and stored only where they must be (the keys in
//! `keys::transport`, for the forwarder); nothing here logs them, and their `Debug` is
//! redacted.

mod browser;
mod negotiation;
mod srtp;
mod tracks;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use browser::{
    BrowserTransport, IceCredentials, StreamExtensionIds, SubscribeSlot,
    SUBSCRIBE_AUDIO_LEVEL_EXTENSION, SUBSCRIBE_PAYLOAD_TYPES,
};
pub(crate) use negotiation::published;
pub use negotiation::BrowserNegotiator;
pub use srtp::{key_salt_len, SrtpTransport};
pub use tracks::{RtxPayloadType, TrackAssignment, TrackKind, CAMERA_ENCODINGS};
pub use watch::MeetingUpdate;

use super::keys::{self, EventScope};
use super::recordings::RecordingMetrics;
use super::relays::{RelayPlanner, ViewerSeat};
use super::{Placement, PlacementHint, Placer, ServiceError};
use crate::domain::{
    bearer_token, Actor, BreakoutId, DomainError, JoinAuthority, JoinClaims, JoinRequest, Meeting,
    MeetingEvent, MeetingId, MeetingKind, MeetingSpec, MuteChange, NewBreakout, Participant,
    ParticipantId, Passcode, PasscodeCost, PasscodeHash, Presence, RecordingId, Role, Seat,
    TokenKey, UnixMillis, DEFAULT_TOKEN_TTL,
};
use crate::store::{Compare, CompareOp, LeaseId, Op, Revision, Store, StoreError, Txn};

/// The SRTP profile handed out when the client states no preference (RFC 7714).
pub const DEFAULT_SRTP_PROFILE: &str = "AEAD_AES_128_GCM";
/// How long an event stays in the store.
pub const DEFAULT_EVENT_TTL: Duration = Duration::from_secs(600);
/// Compare-and-swap attempts before giving up with `Contention`.
pub const DEFAULT_MAX_CAS_ATTEMPTS: u32 = 20;
/// Participants a meeting is expected to bring, for placement (see `MeetingsConfig`).
pub const DEFAULT_EXPECTED_PARTICIPANTS: u32 = 25;
/// Format version of the records this module writes besides the meeting document.
const RECORD_VERSION: u32 = 1;

/// Tuning of a [`MeetingService`].
#[derive(Debug, Clone)]
pub struct MeetingsConfig {
    /// Lifetime of a join token.
    pub token_ttl: Duration,
    /// Argon2 cost of passcodes hashed by [`MeetingService::hash_passcode`].
    pub passcode_cost: PasscodeCost,
    /// The preferred SRTP profile (RFC name); used when the client offers it or offers
    /// nothing.
    pub srtp_profile: String,
    /// Compare-and-swap attempts per operation.
    pub max_cas_attempts: u32,
    /// Lifetime of an event in the store.
    pub event_ttl: Duration,
    /// Participants a meeting is expected to bring when placed (capped by its
    /// `max_participants`): placement reserves this much headroom until the forwarder
    /// reports the real number. A limit is not an estimate: reserving every meeting's
    /// maximum would fill forwarders with empty seats.
    pub expected_participants: u32,
    /// How long after its stop a recording's stitching job becomes due at the latest
    /// (sooner when every recorder sealed it): see [`super::recordings`].
    pub recording_settle: Duration,
}

impl Default for MeetingsConfig {
    fn default() -> Self {
        MeetingsConfig {
            token_ttl: DEFAULT_TOKEN_TTL,
            passcode_cost: PasscodeCost::RECOMMENDED,
            srtp_profile: DEFAULT_SRTP_PROFILE.to_owned(),
            max_cas_attempts: DEFAULT_MAX_CAS_ATTEMPTS,
            event_ttl: DEFAULT_EVENT_TTL,
            expected_participants: DEFAULT_EXPECTED_PARTICIPANTS,
            recording_settle: super::recordings::DEFAULT_SETTLE_DELAY,
        }
    }
}

/// Who is calling: the operator (an admin credential the API layer recognises), or a
/// participant with a verified join token.
#[derive(Debug, Clone)]
pub enum Caller {
    Operator,
    Participant(JoinClaims),
}

/// A meeting as read: the document, and the size of its audience.
#[derive(Debug, Clone)]
pub struct MeetingView {
    pub meeting: Meeting,
    /// The document's `mod_revision`.
    pub revision: Revision,
    /// Attendees in the audience (waiting or admitted); 0 for a meeting.
    pub audience: u64,
    /// In a watch by an attendee: their own audience record.
    pub attendee: Option<Participant>,
}

/// What a joiner supplies.
#[derive(Debug, Clone, Default)]
pub struct JoinInput {
    pub display_name: String,
    pub passcode: Option<Passcode>,
    pub host_key: Option<Passcode>,
    /// The joiner's region, a placement hint.
    pub region: Option<String>,
    pub audio_muted: bool,
    pub video_muted: bool,
    /// SRTP profiles the client supports (RFC names), most preferred first. Empty: the
    /// configured profile. Otherwise the configured one if offered, else the first one
    /// offered that we support.
    pub srtp_profiles: Vec<String>,
    /// A browser (the WebSocket signaling): its media goes over WebRTC, negotiated by
    /// SDP, so it publishes nothing until its first offer names its tracks.
    pub browser: bool,
}

/// What a join returns.
#[derive(Clone)]
pub struct Joined {
    pub participant: ParticipantId,
    /// The join token: `authorization: Bearer <token>` on every later call.
    pub token: String,
    pub expires_at: UnixMillis,
    pub role: Role,
    pub presence: Presence,
    pub placement: Placement,
    pub srtp: SrtpTransport,
    /// The SSRCs to publish with.
    pub tracks: Vec<TrackAssignment>,
    /// The meeting as of the join.
    pub view: MeetingView,
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined")
            .field("participant", &self.participant)
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("role", &self.role)
            .field("presence", &self.presence)
            .field("placement", &self.placement)
            .field("srtp", &self.srtp)
            .finish_non_exhaustive()
    }
}

/// `keys::transport`: what the forwarder running the meeting needs to accept a leg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportRecord {
    pub version: u32,
    pub participant: ParticipantId,
    #[serde(flatten)]
    pub srtp: SrtpTransport,
    /// The tracks (and SSRCs) the participant was assigned.
    #[serde(default)]
    pub tracks: Vec<TrackAssignment>,
    pub created_at: UnixMillis,
    /// Set once a browser negotiated its WebRTC transport: the SRTP keys above are then
    /// unused (DTLS makes the keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<BrowserTransport>,
}

/// `keys::attendee`: one member of a webinar's audience.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AttendeeRecord {
    version: u32,
    participant: Participant,
}

impl AttendeeRecord {
    fn into_participant(self, key: &str) -> Result<Participant, ServiceError> {
        check_version(key, self.version)?;
        Ok(self.participant)
    }
}

/// `keys::event`: one event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredEvent {
    version: u32,
    event: MeetingEvent,
}

impl StoredEvent {
    fn into_event(self, key: &str) -> Result<MeetingEvent, ServiceError> {
        check_version(key, self.version)?;
        Ok(self.event)
    }
}

fn check_version(key: &str, version: u32) -> Result<(), ServiceError> {
    if version == RECORD_VERSION {
        Ok(())
    } else {
        Err(ServiceError::Corrupt {
            key: key.to_owned(),
            reason: format!("unsupported record version {version}"),
        })
    }
}

/// Read a stored meeting document (for other services: desired state, relays).
pub(crate) fn read_meeting(key: &str, bytes: &[u8]) -> Result<Meeting, ServiceError> {
    decode(key, bytes)
}

/// Read a stored attendee record.
pub(crate) fn read_attendee(key: &str, bytes: &[u8]) -> Result<Participant, ServiceError> {
    decode::<AttendeeRecord>(key, bytes)?.into_participant(key)
}

/// Read a stored transport record.
pub(crate) fn read_transport(key: &str, bytes: &[u8]) -> Result<TransportRecord, ServiceError> {
    let record: TransportRecord = decode(key, bytes)?;
    check_version(key, record.version)?;
    Ok(record)
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, ServiceError> {
    serde_json::from_slice(bytes).map_err(|e| ServiceError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, ServiceError> {
    // Our types serialise to JSON without failing (string map keys, no foreign types);
    // should that ever change, it is reported against the key rather than panicking.
    serde_json::to_vec(value).map_err(|e| ServiceError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn attendee_value(key: &str, p: &Participant) -> Result<Vec<u8>, ServiceError> {
    encode(
        key,
        &AttendeeRecord {
            version: RECORD_VERSION,
            participant: p.clone(),
        },
    )
}

/// 96 random bits for an event key (unique per event; the revision orders them).
fn event_id() -> Result<String, ServiceError> {
    let mut bytes = [0u8; 12];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| DomainError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// An attendee record as read.
#[derive(Debug, Clone)]
struct Member {
    participant: Participant,
    key: String,
    revision: Revision,
}

/// The caller, authenticated against the meeting as read.
struct Authed {
    actor: Actor,
    /// Set when the caller is in the audience rather than on the stage.
    member: Option<Member>,
}

impl Authed {
    /// The actor for an operation only a host may do: an attendee is not on the stage, so
    /// not a host.
    fn stage_actor(&self, action: &'static str) -> Result<&Actor, ServiceError> {
        match self.member {
            Some(_) => Err(DomainError::NotHost(action).into()),
            None => Ok(&self.actor),
        }
    }
}

/// Where an operation's target is.
enum Target {
    Stage,
    Audience(Member),
}

/// One transaction to try.
#[derive(Default)]
struct Write {
    compares: Vec<Compare>,
    ops: Vec<Op>,
    events: Vec<(EventScope, MeetingEvent)>,
}

impl Write {
    /// The meeting document unchanged since `revision`, and rewritten.
    fn doc(meeting: &Meeting, revision: Revision) -> Result<Self, ServiceError> {
        let key = keys::meeting(meeting.id());
        let value = encode(&key, meeting)?;
        Ok(Write {
            compares: vec![Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )],
            ops: vec![Op::put(key, value)],
            events: Vec::new(),
        })
    }

    /// The meeting document unchanged since `revision`, and not rewritten.
    fn doc_unchanged(meeting: &MeetingId, revision: Revision) -> Self {
        Write {
            compares: vec![Compare::mod_revision(
                keys::meeting(meeting),
                CompareOp::Equal,
                revision,
            )],
            ..Write::default()
        }
    }

    /// The attendee record unchanged since it was read.
    fn member_unchanged(mut self, member: &Member) -> Self {
        self.compares.push(Compare::mod_revision(
            member.key.clone(),
            CompareOp::Equal,
            member.revision,
        ));
        self
    }

    fn events(mut self, scope: EventScope, events: Vec<MeetingEvent>) -> Self {
        self.events.extend(events.into_iter().map(|e| (scope, e)));
        self
    }

    fn op(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }
}

/// What an operation decided: the write (`None`: nothing changes) and its result.
type Decision<'s, T> = BoxFuture<'s, Result<(Option<Write>, T), ServiceError>>;

/// The current event lease and when to stop using it.
struct EventLease {
    id: LeaseId,
    retire_at: Instant,
}

/// Every meeting use case. Cheap to share behind an `Arc`; holds no meeting state.
pub struct MeetingService {
    store: Arc<dyn Store>,
    tokens: TokenKey,
    placer: Arc<dyn Placer>,
    config: MeetingsConfig,
    lease: tokio::sync::Mutex<Option<EventLease>>,
    /// Webinar relay trees (`with_relays`); without, attendees get the origin.
    relays: Option<Arc<RelayPlanner>>,
    /// Recordings started and stopped here count in the recording metrics.
    recording_metrics: RecordingMetrics,
}

impl std::fmt::Debug for MeetingService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeetingService")
            .field("store", &self.store)
            .field("placer", &self.placer)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MeetingService {
    pub fn new(
        store: Arc<dyn Store>,
        tokens: TokenKey,
        placer: Arc<dyn Placer>,
        config: MeetingsConfig,
    ) -> Self {
        MeetingService {
            store,
            tokens,
            placer,
            config,
            lease: tokio::sync::Mutex::new(None),
            relays: None,
            recording_metrics: RecordingMetrics::default(),
        }
    }

    /// The counters recordings started and stopped here update, for the
    /// [`RecordingService`](super::recordings::RecordingService) to share.
    pub fn recording_metrics(&self) -> &RecordingMetrics {
        &self.recording_metrics
    }

    /// Seat webinar attendees on relay forwarders ([`super::relays`]): their join returns
    /// the relay node's placement, and leave, deny, promotion and the end release it.
    pub fn with_relays(mut self, relays: Arc<RelayPlanner>) -> Self {
        self.relays = Some(relays);
        self
    }

    /// Relays: drop `who`'s seat on a relay node, if any. The operation that made them
    /// leave the audience has committed; a failure here leaves a seat counted until the
    /// meeting ends, which is logged, not returned.
    async fn release_viewer(&self, id: &MeetingId, who: &ParticipantId) {
        if let Some(relays) = &self.relays {
            if let Err(e) = relays.release_viewer(id, who).await {
                tracing::warn!(meeting = %id, participant = %who, error = %e, "relay seat not released");
            }
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &MeetingsConfig {
        &self.config
    }

    /// Verifies a participant's join token (the bare token, or an `authorization` header
    /// value `Bearer <token>`). The operator's credential is the API layer's business.
    pub fn authenticate(&self, bearer: &str, now: UnixMillis) -> Result<Caller, ServiceError> {
        // A token never contains a space; a header value always does.
        let token = if bearer.contains(' ') {
            bearer_token(bearer)?
        } else {
            bearer
        };
        Ok(Caller::Participant(self.tokens.verify(token, now)?))
    }

    /// Hashes a passcode or host key for a [`MeetingSpec`] at the configured cost, off the
    /// async executor (argon2 is slow by design).
    pub async fn hash_passcode(&self, passcode: Passcode) -> Result<PasscodeHash, ServiceError> {
        let cost = self.config.passcode_cost;
        tokio::task::spawn_blocking(move || PasscodeHash::hash(&passcode, cost))
            .await
            .map_err(|_| DomainError::Crypto("passcode hashing did not complete"))?
            .map_err(Into::into)
    }

    // ------------------------------------------------------------------ reading

    async fn load(&self, id: &MeetingId) -> Result<(Meeting, Revision), ServiceError> {
        let kv = self
            .store
            .get(&keys::meeting(id))
            .await?
            .ok_or_else(|| DomainError::MeetingNotFound(id.clone()))?;
        Ok((decode(&kv.key, &kv.value)?, kv.mod_revision))
    }

    async fn member(
        &self,
        meeting: &MeetingId,
        participant: &ParticipantId,
    ) -> Result<Option<Member>, ServiceError> {
        let key = keys::attendee(meeting, participant);
        match self.store.get(&key).await? {
            None => Ok(None),
            Some(kv) => Ok(Some(Member {
                participant: decode::<AttendeeRecord>(&kv.key, &kv.value)?
                    .into_participant(&kv.key)?,
                key,
                revision: kv.mod_revision,
            })),
        }
    }

    async fn audience_count(&self, m: &Meeting) -> Result<u64, ServiceError> {
        match m.kind() {
            MeetingKind::Webinar => Ok(self.store.count(&keys::audience(m.id())).await?.0),
            MeetingKind::Meeting => Ok(0),
        }
    }

    /// Checks the caller against the meeting as read: the operator, a participant on the
    /// stage who has not left, or a member of the audience.
    async fn authed(&self, caller: &Caller, m: &Meeting) -> Result<Authed, ServiceError> {
        let claims = match caller {
            Caller::Operator => {
                return Ok(Authed {
                    actor: Actor::Operator,
                    member: None,
                })
            }
            Caller::Participant(claims) => claims,
        };
        if &claims.meeting != m.id() {
            return Err(DomainError::TokenWrongMeeting.into());
        }
        if !m.is_open() {
            return Err(DomainError::MeetingEnded.into());
        }
        let actor = Actor::Participant(claims.participant.clone());
        if m.kind() == MeetingKind::Meeting || m.participant(&claims.participant).is_some() {
            m.authenticate(claims)?;
            return Ok(Authed {
                actor,
                member: None,
            });
        }
        match self.member(m.id(), &claims.participant).await? {
            // Records of those who left are deleted; a stored one is waiting or admitted.
            Some(member) => Ok(Authed {
                actor,
                member: Some(member),
            }),
            None => Err(DomainError::ParticipantNotFound(claims.participant.clone()).into()),
        }
    }

    async fn target(&self, m: &Meeting, id: &ParticipantId) -> Result<Target, ServiceError> {
        if m.kind() == MeetingKind::Webinar && m.participant(id).is_none() {
            if let Some(member) = self.member(m.id(), id).await? {
                return Ok(Target::Audience(member));
            }
        }
        Ok(Target::Stage)
    }

    /// The meeting and the size of its audience.
    pub async fn get(&self, id: &MeetingId) -> Result<MeetingView, ServiceError> {
        let (meeting, revision) = self.load(id).await?;
        let audience = self.audience_count(&meeting).await?;
        Ok(MeetingView {
            meeting,
            revision,
            audience,
            attendee: None,
        })
    }

    /// Meetings in id order, after `after`, at most `limit`. Reads every meeting document
    /// (the store has no paged range): fine for an operator's listing, not a hot path.
    pub async fn list(
        &self,
        after: Option<&MeetingId>,
        limit: usize,
    ) -> Result<Vec<MeetingView>, ServiceError> {
        let (kvs, _) = self.store.range(&keys::meetings()).await?;
        let mut out = Vec::new();
        for kv in kvs {
            if out.len() >= limit {
                break;
            }
            let meeting: Meeting = decode(&kv.key, &kv.value)?;
            if after.is_some_and(|a| meeting.id() <= a) {
                continue;
            }
            let audience = self.audience_count(&meeting).await?;
            out.push(MeetingView {
                meeting,
                revision: kv.mod_revision,
                audience,
                attendee: None,
            });
        }
        Ok(out)
    }

    // ------------------------------------------------------------------ writing

    async fn event_lease(&self) -> Result<LeaseId, ServiceError> {
        let mut lease = self.lease.lock().await;
        let now = Instant::now();
        if let Some(l) = lease.as_ref().filter(|l| now < l.retire_at) {
            return Ok(l.id);
        }
        let id = self.store.grant_lease(self.config.event_ttl).await?;
        *lease = Some(EventLease {
            id,
            retire_at: now + self.config.event_ttl / 2,
        });
        Ok(id)
    }

    async fn forget_lease(&self, id: LeaseId) {
        let mut lease = self.lease.lock().await;
        if lease.as_ref().is_some_and(|l| l.id == id) {
            *lease = None;
        }
    }

    /// Runs `write`: `Some(revision)` if its compares held, `None` to retry. Recording
    /// events bring their recording records' writes into the same transaction
    /// ([`super::recordings::follow_events`]), so whatever starts or stops a recording
    /// (StartRecording, StopRecording, the meeting's end) keeps its record in step.
    async fn commit(
        &self,
        meeting: &MeetingId,
        write: Write,
        now: UnixMillis,
    ) -> Result<Option<Revision>, ServiceError> {
        let Write {
            mut compares,
            mut ops,
            events,
        } = write;
        let mut recording_events = Vec::new();
        for (_, event) in &events {
            if matches!(
                event,
                MeetingEvent::RecordingStarted { .. } | MeetingEvent::RecordingStopped { .. }
            ) {
                recording_events.push(event.clone());
            }
        }
        let recordings = super::recordings::follow_events(
            self.store.as_ref(),
            meeting,
            &recording_events,
            now,
            self.config.recording_settle,
        )
        .await?;
        compares.extend(recordings.compares.iter().cloned());
        ops.extend(recordings.ops.iter().cloned());
        let lease = if events.is_empty() {
            None
        } else {
            Some(self.event_lease().await?)
        };
        if let Some(lease) = lease {
            for (scope, event) in events {
                let key = keys::event(meeting, scope, &event_id()?);
                let value = encode(
                    &key,
                    &StoredEvent {
                        version: RECORD_VERSION,
                        event,
                    },
                )?;
                ops.push(Op::put_with_lease(key, value, lease));
            }
        }
        match self
            .store
            .txn(Txn::new().when(compares).and_then(ops))
            .await
        {
            Ok(resp) if resp.succeeded => {
                recordings.committed(&self.recording_metrics);
                Ok(Some(resp.revision))
            }
            Ok(_) => Ok(None),
            Err(StoreError::LeaseNotFound) => {
                if let Some(lease) = lease {
                    self.forget_lease(lease).await;
                }
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn backoff(&self, attempt: u32) {
        // Up to 1, 2, 4 ... 32 ms: spreads the retries of writers that collided.
        let cap = 1u64 << attempt.min(5);
        let ms = rand::thread_rng().gen_range(0..=cap);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    fn contention(&self, meeting: &MeetingId) -> ServiceError {
        ServiceError::Contention(format!("meeting {meeting}"))
    }

    /// The common shape of an operation by an authenticated caller: load, authenticate,
    /// `decide` (which may read more, and returns the write, or `None` when nothing
    /// changes, with the result), commit; retry on a conflict.
    async fn mutate<'s, T, F>(
        &'s self,
        caller: &'s Caller,
        id: &'s MeetingId,
        now: UnixMillis,
        mut decide: F,
    ) -> Result<T, ServiceError>
    where
        F: FnMut(Meeting, Revision, Authed) -> Decision<'s, T>,
    {
        for attempt in 0..self.config.max_cas_attempts {
            let (m, revision) = self.load(id).await?;
            let authed = self.authed(caller, &m).await?;
            let (write, result) = decide(m, revision, authed).await?;
            let Some(write) = write else {
                return Ok(result);
            };
            if self.commit(id, write, now).await?.is_some() {
                return Ok(result);
            }
            self.backoff(attempt).await;
        }
        Err(self.contention(id))
    }

    /// An operation only the stage takes part in: `op` on the document, by a host or any
    /// stage member as the domain decides; an attendee caller is refused as not a host.
    async fn stage_op(
        &self,
        caller: &Caller,
        id: &MeetingId,
        now: UnixMillis,
        action: &'static str,
        op: impl Fn(&mut Meeting, &Actor) -> Result<Vec<MeetingEvent>, DomainError> + Send + Sync,
    ) -> Result<(), ServiceError> {
        let op = &op;
        self.mutate(caller, id, now, move |mut m, revision, authed| {
            Box::pin(async move {
                let actor = authed.stage_actor(action)?;
                let events = op(&mut m, actor)?;
                if events.is_empty() {
                    return Ok((None, ()));
                }
                Ok((
                    Some(Write::doc(&m, revision)?.events(EventScope::Stage, events)),
                    (),
                ))
            })
        })
        .await
    }

    // ------------------------------------------------------------------ use cases

    /// Creates a meeting (`id`, or a fresh random one). `AlreadyExists` if the id is taken.
    pub async fn create(
        &self,
        id: Option<MeetingId>,
        spec: MeetingSpec,
        now: UnixMillis,
    ) -> Result<Meeting, ServiceError> {
        let id = match id {
            Some(id) => id,
            None => MeetingId::random()?,
        };
        let meeting = Meeting::create(id.clone(), spec, now)?;
        let key = keys::meeting(&id);
        let txn = Txn::new()
            .when([Compare::absent(key.clone())])
            .and_then([Op::put(key.clone(), encode(&key, &meeting)?)]);
        if self.store.txn(txn).await?.succeeded {
            Ok(meeting)
        } else {
            Err(DomainError::MeetingExists(id).into())
        }
    }

    /// Ends the meeting (host or operator). Deletes the audience and every transport
    /// record with it: nobody is in the meeting any more, and keys are best not kept.
    pub async fn end(
        &self,
        caller: &Caller,
        id: &MeetingId,
        now: UnixMillis,
    ) -> Result<(), ServiceError> {
        self.mutate(caller, id, now, move |mut m, revision, authed| {
            Box::pin(async move {
                let actor = authed.stage_actor("end the meeting")?;
                let events = m.end(actor, now)?;
                let write = Write::doc(&m, revision)?
                    .op(Op::delete_prefix(keys::audience(m.id())))
                    .op(Op::delete_prefix(keys::transports(m.id())))
                    .events(EventScope::Stage, events);
                Ok((Some(write), ()))
            })
        })
        .await?;
        // Relays: the tree goes with the meeting. The meeting has ended whatever happens
        // here, so a failure is logged and its relay records stay (see docs/control-plane.md).
        if let Some(relays) = &self.relays {
            if let Err(e) = relays.end_meeting(id).await {
                tracing::warn!(meeting = %id, error = %e, "relay tree of an ended meeting not removed");
            }
        }
        Ok(())
    }

    /// Joins a meeting: checks the passcode or host key, places the meeting, makes the
    /// participant's SRTP keys, then writes the participant (on the stage, or in a
    /// webinar's audience), its transport record and its events in one transaction, and
    /// issues the join token.
    pub async fn join(
        &self,
        id: &MeetingId,
        input: JoinInput,
        now: UnixMillis,
    ) -> Result<Joined, ServiceError> {
        let JoinInput {
            display_name,
            passcode,
            host_key,
            region,
            audio_muted,
            video_muted,
            srtp_profiles,
            browser,
        } = input;
        let profile = self.choose_profile(&srtp_profiles)?;
        let (m, _) = self.load(id).await?;
        let authority = authorize(m.clone(), passcode, host_key, now).await?;
        let hint = PlacementHint {
            region: region.clone(),
            expected_participants: m
                .limits()
                .max_participants
                .min(self.config.expected_participants),
            window: m.schedule().map(|s| (s.opens_at(), s.ends_at)),
        };
        let placement = self.placer.place(id, &hint).await?;
        let participant = ParticipantId::random()?;
        let srtp = SrtpTransport::generate(&profile)?;
        let tracks = tracks::assign()?;
        let transport_key = keys::transport(id, &participant);
        let transport = encode(
            &transport_key,
            &TransportRecord {
                version: RECORD_VERSION,
                participant: participant.clone(),
                srtp: srtp.clone(),
                tracks: tracks.clone(),
                created_at: now,
                browser: browser.then(BrowserTransport::new).transpose()?,
            },
        )?;

        // Relays: an attendee's seat on a relay node, taken before the write and released
        // (on drop) if the join does not go through.
        let mut viewer: Option<ViewerSeat> = None;
        for attempt in 0..self.config.max_cas_attempts {
            let (mut m, revision) = self.load(id).await?;
            let audience = self.audience_count(&m).await?;
            match (m.seat(&authority), &self.relays) {
                (Seat::Audience, Some(relays)) if viewer.is_none() => {
                    let r = region.as_deref();
                    viewer = Some(ViewerSeat::assign(relays, id, &participant, r).await?);
                }
                (Seat::Audience, _) => {}
                // Seated on the stage after all (no host left to inherit): the origin.
                (Seat::Stage, _) => viewer = None,
            }
            let req = JoinRequest {
                participant: participant.clone(),
                display_name: display_name.clone(),
                audio_muted,
                video_muted,
            };
            let put_transport = Op::put(transport_key.clone(), transport.clone());
            let (write, joined, audience) = match m.seat(&authority) {
                Seat::Stage => {
                    let events = m.join(req, &authority, usize_of(audience), now)?;
                    let p = m
                        .participant(&participant)
                        .cloned()
                        .ok_or_else(|| DomainError::ParticipantNotFound(participant.clone()))?;
                    let write = Write::doc(&m, revision)?
                        .op(put_transport)
                        .events(EventScope::Stage, events);
                    (write, p, audience)
                }
                Seat::Audience => {
                    let (p, events) = m.join_audience(req, &authority, usize_of(audience), now)?;
                    let key = keys::attendee(id, &participant);
                    let mut write = Write::doc_unchanged(id, revision)
                        .op(Op::put(key.clone(), attendee_value(&key, &p)?))
                        .op(put_transport)
                        .events(EventScope::Audience, events);
                    write.compares.push(Compare::absent(key));
                    (write, p, audience + 1)
                }
            };
            let Some(committed) = self.commit(id, write, now).await? else {
                self.backoff(attempt).await;
                continue;
            };
            // A stage join rewrote the document; an audience join left it as read.
            let doc_revision = match joined.role {
                Role::Attendee if m.participant(&participant).is_none() => revision,
                _ => committed,
            };
            let claims = JoinClaims::new(
                id.clone(),
                participant.clone(),
                joined.role,
                now,
                self.config.token_ttl,
            );
            let token = self.tokens.issue(&claims);
            // Relays: an attendee receives from its relay node, not the origin.
            let placement = viewer.take().map_or(placement, ViewerSeat::keep);
            return Ok(Joined {
                participant,
                token,
                expires_at: claims.expires_at,
                role: joined.role,
                presence: joined.presence,
                placement,
                srtp,
                tracks,
                view: MeetingView {
                    meeting: m,
                    revision: doc_revision,
                    audience,
                    attendee: (joined.role == Role::Attendee).then_some(joined),
                },
            });
        }
        Err(self.contention(id))
    }

    fn choose_profile(&self, offered: &[String]) -> Result<String, ServiceError> {
        let preferred = &self.config.srtp_profile;
        if offered.is_empty() || offered.iter().any(|p| p == preferred) {
            if key_salt_len(preferred).is_none() {
                return Err(DomainError::Crypto("configured SRTP profile is not supported").into());
            }
            return Ok(preferred.clone());
        }
        offered
            .iter()
            .find(|p| key_salt_len(p).is_some())
            .cloned()
            .ok_or_else(|| DomainError::EmptyRequest("no supported SRTP profile offered").into())
    }

    /// The caller leaves its meeting (the one its token is for). Its transport record goes
    /// with it; an attendee's record is deleted.
    pub async fn leave(&self, caller: &Caller, now: UnixMillis) -> Result<(), ServiceError> {
        let Caller::Participant(claims) = caller else {
            return Err(DomainError::NotSelf("leave").into());
        };
        let id = &claims.meeting;
        let who = &claims.participant;
        self.mutate(caller, id, now, move |mut m, revision, authed| {
            Box::pin(async move {
                let transport = Op::delete(keys::transport(id, who));
                let write = match authed.member {
                    Some(mut member) => {
                        let events = m.leave_audience(&mut member.participant, now)?;
                        // Only the record is compared: a leave does not depend on the stage,
                        // and an `end` in between deletes the record, which fails this.
                        Write::default()
                            .member_unchanged(&member)
                            .op(Op::delete(member.key.clone()))
                            .op(transport)
                            .events(EventScope::Audience, events)
                    }
                    None => {
                        let events = m.leave(who, now)?;
                        Write::doc(&m, revision)?
                            .op(transport)
                            .events(EventScope::Stage, events)
                    }
                };
                Ok((Some(write), ()))
            })
        })
        .await?;
        // Relays: the attendee's seat on its relay node goes with it.
        self.release_viewer(id, who).await;
        Ok(())
    }

    /// Changes `target`'s mute flags (themself, or a host muting them).
    pub async fn set_mute(
        &self,
        caller: &Caller,
        id: &MeetingId,
        target: &ParticipantId,
        change: MuteChange,
        now: UnixMillis,
    ) -> Result<(), ServiceError> {
        self.mutate(caller, id, now, move |mut m, revision, authed| {
            Box::pin(async move {
                match self.target(&m, target).await? {
                    Target::Audience(member) => {
                        let by = match &authed.member {
                            Some(me) if me.participant.id == *target => &authed.actor,
                            _ => authed.stage_actor("mute other participants")?,
                        };
                        // Attendees are always muted: this can only fail or change nothing.
                        m.mute_audience(by, &member.participant, change)?;
                        Ok((None, ()))
                    }
                    Target::Stage => {
                        let by = authed.stage_actor("mute other participants")?;
                        let events = m.set_mute(by, target, change)?;
                        stage_write(&m, revision, events)
                    }
                }
            })
        })
        .await
    }

    /// The caller starts sharing their screen.
    pub async fn start_screen_share(
        &self,
        caller: &Caller,
        id: &MeetingId,
        now: UnixMillis,
    ) -> Result<(), ServiceError> {
        let who = self_id(caller, "start a screen share for")?;
        self.mutate(caller, id, now, move |mut m, revision, authed| {
            Box::pin(async move {
                if authed.member.is_some() {
                    return Err(DomainError::CannotPublish(who.clone()).into());
                }
                let events = m.start_screen_share(who)?;
                stage_write(&m, revision, events)
            })
        })
        .await
    }

    /// Stops `target`'s screen share (themself, or a host).
    pub async fn stop_screen_share(
        &self,
        caller: &Caller,
        id: &MeetingId,
        target: &ParticipantId,
        now: UnixMillis,
    ) -> Result<(), ServiceError> {
        self.mutate(caller, id, now, move |mut m, revision, authed| {
            Box::pin(async move {
                let action = "stop another participant's screen share";
                match self.target(&m, target).await? {
                    Target::Audience(_) => {
                        // Attendees never share: nothing to stop, once the caller may ask.
                        let is_self = authed.actor == Actor::Participant(target.clone());
                        if !is_self {
                            m.check_host(authed.stage_actor(action)?, action)?;
                        }
                        Ok((None, ()))
                    }
                    Target::Stage => {
                        let events = m.stop_screen_share(authed.stage_actor(action)?, target)?;
                        stage_write(&m, revision, events)
                    }
                }
            })
        })
        .await
    }

    /// Admits a waiting participant (host or operator).
    pub async fn admit(
        &self,
        caller: &Caller,
        id: &MeetingId,
        target: &ParticipantId,
        now: UnixMillis,
    ) -> Result<(), ServiceError> {
        self.mutate(caller, id, now, move |mut m, revision, authed| {
            Box::pin(async move {
                let by = authed.stage_actor("admit participants")?;
                match self.target(&m, target).await? {
                    Target::Audience(mut member) => {
                        let events = m.admit_audience(by, &mut member.participant)?;
                        let value = attendee_value(&member.key, &member.participant)?;
                        let write = Write::doc_unchanged(m.id(), revision)
                            .member_unchanged(&member)
                            .op(Op::put(member.key.clone(), value))
                            .events(EventScope::Audience, events);
                        Ok((Some(write), ()))
                    }
                    Target::Stage => {
                        let events = m.admit(by, target)?;
                        stage_write(&m, revision, events)
                    }
                }
            })
        })
        .await
    }

    /// Turns a waiting participant away (host or operator).
    pub async fn deny(
        &self,
        caller: &Caller,
        id: &MeetingId,
        target: &ParticipantId,
        now: UnixMillis,
    ) -> Result<(), ServiceError> {
        self.mutate(caller, id, now, move |mut m, revision, authed| {
            Box::pin(async move {
                let by = authed.stage_actor("deny participants")?;
                let transport = Op::delete(keys::transport(m.id(), target));
                match self.target(&m, target).await? {
                    Target::Audience(mut member) => {
                        let events = m.deny_audience(by, &mut member.participant, now)?;
                        let write = Write::doc_unchanged(m.id(), revision)
                            .member_unchanged(&member)
                            .op(Op::delete(member.key.clone()))
                            .op(transport)
                            .events(EventScope::Audience, events);
                        Ok((Some(write), ()))
                    }
                    Target::Stage => {
                        let events = m.deny(by, target, now)?;
                        if events.is_empty() {
                            return Ok((None, ()));
                        }
                        let write = Write::doc(&m, revision)?
                            .op(transport)
                            .events(EventScope::Stage, events);
                        Ok((Some(write), ()))
                    }
                }
            })
        })
        .await?;
        // Relays: a denied attendee's seat on its relay node goes too.
        self.release_viewer(id, target).await;
        Ok(())
    }

    /// Changes `target`'s role (host or operator). Promoting a webinar attendee moves them
    /// from the audience onto the stage in one transaction. Their token keeps the role it
    /// was issued with; the stored role is what every check uses.
    pub async fn set_role(
        &self,
        caller: &Caller,
        id: &MeetingId,
        target: &ParticipantId,
        role: Role,
        now: UnixMillis,
    ) -> Result<(), ServiceError> {
        self.mutate(caller, id, now, move |mut m, revision, authed| {
            Box::pin(async move {
                let by = authed.stage_actor("change roles")?;
                match self.target(&m, target).await? {
                    Target::Audience(member) => {
                        let events = m.promote_attendee(by, member.participant.clone(), role)?;
                        if events.is_empty() {
                            return Ok((None, ()));
                        }
                        let write = Write::doc(&m, revision)?
                            .member_unchanged(&member)
                            .op(Op::delete(member.key.clone()))
                            .events(EventScope::Stage, events);
                        Ok((Some(write), ()))
                    }
                    Target::Stage => {
                        let events = m.set_role(by, target, role)?;
                        stage_write(&m, revision, events)
                    }
                }
            })
        })
        .await?;
        // Relays: a promoted attendee publishes from the origin now; its relay seat goes.
        self.release_viewer(id, target).await;
        Ok(())
    }

    /// Creates breakout rooms named `names` (host or operator); returns their new ids in
    /// the order of `names`. The ids are made once, so a retried transaction keeps them.
    pub async fn create_breakouts(
        &self,
        caller: &Caller,
        id: &MeetingId,
        names: Vec<String>,
        now: UnixMillis,
    ) -> Result<Vec<BreakoutId>, ServiceError> {
        let rooms = names
            .into_iter()
            .map(|name| {
                Ok(NewBreakout {
                    id: BreakoutId::random()?,
                    name,
                })
            })
            .collect::<Result<Vec<_>, DomainError>>()?;
        let ids: Vec<BreakoutId> = rooms.iter().map(|r| r.id.clone()).collect();
        self.stage_op(caller, id, now, "create breakout rooms", |m, by| {
            m.create_breakouts(by, rooms.clone(), now)
        })
        .await?;
        Ok(ids)
    }

    /// Moves `target` to a breakout room, or (`None`) back to the main room.
    pub async fn move_to_breakout(
        &self,
        caller: &Caller,
        id: &MeetingId,
        target: &ParticipantId,
        to: Option<BreakoutId>,
        now: UnixMillis,
    ) -> Result<(), ServiceError> {
        self.stage_op(
            caller,
            id,
            now,
            "move participants between rooms",
            |m, by| m.move_to_breakout(by, target, to.clone()),
        )
        .await
    }

    /// Closes every breakout room (host or operator).
    pub async fn close_breakouts(
        &self,
        caller: &Caller,
        id: &MeetingId,
        now: UnixMillis,
    ) -> Result<(), ServiceError> {
        self.stage_op(caller, id, now, "close breakout rooms", |m, by| {
            m.close_breakouts(by)
        })
        .await
    }

    /// Starts or stops recording (host or operator); returns the recording under way
    /// after the change (the one already running if it was).
    pub async fn set_recording(
        &self,
        caller: &Caller,
        id: &MeetingId,
        on: bool,
        now: UnixMillis,
    ) -> Result<Option<RecordingId>, ServiceError> {
        // A fresh id per recording: its chunks and file are kept under it (a stop and a
        // start make two recordings). Drawn before the retry loop, so a retried write
        // keeps it.
        let recording = if on {
            Some(RecordingId::random()?)
        } else {
            None
        };
        self.stage_op(caller, id, now, "start or stop recording", |m, by| {
            m.set_recording(by, recording.clone())
        })
        .await?;
        let (meeting, _) = self.load(id).await?;
        Ok(meeting.recording_id().cloned())
    }

    /// Where the meeting runs, if it is placed (the forwarder that may report its active
    /// speaker).
    pub async fn placement(&self, id: &MeetingId) -> Result<Option<Placement>, ServiceError> {
        self.placer.placement(id).await
    }

    /// Records the loudest publisher of `who`'s room: reported by the forwarder (as the
    /// operator) or by a participant about themself.
    pub async fn set_active_speaker(
        &self,
        caller: &Caller,
        id: &MeetingId,
        who: &ParticipantId,
        now: UnixMillis,
    ) -> Result<(), ServiceError> {
        if let Caller::Participant(claims) = caller {
            if &claims.participant != who {
                return Err(DomainError::NotSelf("report the active speaker for").into());
            }
        }
        self.mutate(caller, id, now, move |mut m, revision, authed| {
            Box::pin(async move {
                if authed.member.is_some() {
                    return Err(DomainError::CannotPublish(who.clone()).into());
                }
                let events = m.set_active_speaker(who)?;
                stage_write(&m, revision, events)
            })
        })
        .await
    }

    /// A snapshot and then the meeting's events, filtered for the caller (see [`watch`]).
    /// With `after`, resumes after that revision without a snapshot if the store still has
    /// the history, else starts with a fresh snapshot. The stream ends after
    /// `MeetingEnded`.
    pub async fn watch(
        &self,
        caller: &Caller,
        id: &MeetingId,
        after: Option<Revision>,
    ) -> Result<BoxStream<'static, Result<MeetingUpdate, ServiceError>>, ServiceError> {
        let (m, _) = self.load(id).await?;
        let authed = self.authed(caller, &m).await?;
        let role = match &authed.actor {
            Actor::Participant(p) => m.participant(p).map(|p| p.role),
            Actor::Operator => None,
        };
        let viewer = watch::Viewer::new(m.kind(), &authed.actor, role, authed.member.is_some());
        let mut state = watch::Watch {
            store: Arc::clone(&self.store),
            meeting: id.clone(),
            viewer,
            stream: None,
            needs_snapshot: true,
            done: false,
        };
        if let (Some(after), true) = (after, m.is_open()) {
            state.stream = Some(self.store.watch(&keys::events(id), Some(after + 1)).await?);
            state.needs_snapshot = false;
        }
        Ok(futures::stream::unfold(state, |mut state| async move {
            state.next().await.map(|item| (item, state))
        })
        .boxed())
    }
}

/// The write for a stage operation's outcome: nothing if it changed nothing.
fn stage_write(
    m: &Meeting,
    revision: Revision,
    events: Vec<MeetingEvent>,
) -> Result<(Option<Write>, ()), ServiceError> {
    if events.is_empty() {
        return Ok((None, ()));
    }
    Ok((
        Some(Write::doc(m, revision)?.events(EventScope::Stage, events)),
        (),
    ))
}

/// The caller's own participant id, for what only a participant does for themself.
fn self_id<'a>(
    caller: &'a Caller,
    action: &'static str,
) -> Result<&'a ParticipantId, ServiceError> {
    match caller {
        Caller::Participant(claims) => Ok(&claims.participant),
        Caller::Operator => Err(DomainError::NotSelf(action).into()),
    }
}

fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Checks the joiner's secrets off the async executor (argon2).
async fn authorize(
    meeting: Meeting,
    passcode: Option<Passcode>,
    host_key: Option<Passcode>,
    now: UnixMillis,
) -> Result<JoinAuthority, ServiceError> {
    tokio::task::spawn_blocking(move || {
        meeting.authorize_join(passcode.as_ref(), host_key.as_ref(), now)
    })
    .await
    .map_err(|_| DomainError::Crypto("passcode check did not complete"))?
    .map_err(Into::into)
}

#[cfg(test)]
mod tests;
