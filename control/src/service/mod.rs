//! The control plane's use cases, on a [`Store`](crate::store::Store): each loads what it
//! needs, asks the [`domain`](crate::domain) to decide, and writes the outcome and its
//! events in one transaction that compares what it read (compare-and-swap), retrying on a
//! conflict. Nothing here knows about gRPC; `api/` converts at the edge.
//!
//! * [`keys`]: the keyspace (docs/control-plane.md), one function per kind of key.
//! * [`meetings`]: create, join, leave and every meeting operation; `WatchMeeting` streams.
//! * [`forwarders`]: registration under a lease, heartbeats, the live set.
//! * [`placement`]: which forwarder (and port) a meeting goes to.
//! * [`failover`]: moving the meetings of a dead forwarder.
//! * [`recordings`]: recording records, the stitching jobs workers claim, downloads.
//! * [`relays`]: webinar relay trees: which relay forwarder each viewer receives from.
//! * [`webrtc`]: the hook the browser signaling calls for SDP offers, answers, ICE restarts.

pub mod desired;
pub mod failover;
pub mod forwarders;
pub mod keys;
pub mod meetings;
pub mod placement;
pub mod recordings;
pub mod relays;
pub mod webrtc;

use crate::domain::{DomainError, ErrorKind};
use crate::store::StoreError;

/// Why a use case failed. Like [`DomainError`], every variant means nothing was changed,
/// except [`ServiceError::Store`] with a retryable store error, where the outcome of a
/// write that timed out is unknown (the client retries; operations are idempotent where
/// that matters).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// Compare-and-swap lost this many times in a row: too many concurrent writers.
    #[error("too much contention on {0}; retry")]
    Contention(String),
    /// No live forwarder can take the meeting (none registered, or all full).
    #[error("no forwarder can take this meeting: {0}")]
    NoCapacity(String),
    /// A stored record this version cannot read.
    #[error("stored record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    /// A request outside the domain's types is malformed (a forwarder registration with no
    /// usable address, a placement window that ends before it starts).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Another live process holds this forwarder id. Its lease must expire first (one TTL
    /// after its last heartbeat): the forwarder retries.
    #[error(
        "forwarder {0} is already registered by a live process; retry after its lease expires"
    )]
    AlreadyRegistered(crate::domain::ForwarderId),
    /// The forwarder's lease ended (it expired or was revoked) or its registration is gone:
    /// it must register again.
    #[error("forwarder {0} is not registered (lease expired or revoked): register again")]
    NotRegistered(crate::domain::ForwarderId),
    /// No recording with this id.
    #[error("recording {0} not found")]
    RecordingNotFound(crate::domain::RecordingId),
    /// A stitch worker's claim is no longer the one in force: its lease expired and another
    /// worker claimed the job, or the job already ended. The worker must stop.
    #[error("the claim on recording {0} is no longer held (expired and taken over, or the job ended): stop working on it")]
    ClaimLost(crate::domain::RecordingId),
    /// The recording has no file yet (or never will).
    #[error("recording {recording} is {state}, not READY: no file to download")]
    RecordingNotReady {
        recording: crate::domain::RecordingId,
        state: &'static str,
    },
    /// This instance was started without `--recording-store`.
    #[error("downloads are off: this control instance has no recording store (--recording-store or [recordings] store)")]
    NoRecordingStore,
    /// The object store failed (unreachable, timed out): retry later.
    #[error("recording store: {0}")]
    RecordingStore(String),
    /// A READY recording whose file is not in the object store: data lost, or the store
    /// this instance reads is not the one the workers wrote to.
    #[error("recording {0} is READY but its file is missing from the recording store")]
    RecordingFileMissing(crate::domain::RecordingId),
}

/// The gRPC status a [`ServiceError`] maps to, decided here so that the API layer has one
/// `match` and no judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    NotFound,
    PermissionDenied,
    FailedPrecondition,
    AlreadyExists,
    Unauthenticated,
    ResourceExhausted,
    /// Contention: the client may retry at once.
    Aborted,
    /// The store is unreachable, or no forwarder is up: retry later.
    Unavailable,
    Internal,
}

impl ServiceError {
    pub fn code(&self) -> Code {
        match self {
            ServiceError::Domain(e) => match e.kind() {
                ErrorKind::InvalidArgument => Code::InvalidArgument,
                ErrorKind::NotFound => Code::NotFound,
                ErrorKind::PermissionDenied => Code::PermissionDenied,
                ErrorKind::FailedPrecondition => Code::FailedPrecondition,
                ErrorKind::AlreadyExists => Code::AlreadyExists,
                ErrorKind::Unauthenticated => Code::Unauthenticated,
                ErrorKind::ResourceExhausted => Code::ResourceExhausted,
                _ => Code::Internal,
            },
            ServiceError::Store(e) if e.is_retryable() => Code::Unavailable,
            ServiceError::Store(_) => Code::Internal,
            ServiceError::Contention(_) => Code::Aborted,
            ServiceError::NoCapacity(_) => Code::Unavailable,
            ServiceError::Corrupt { .. } => Code::Internal,
            ServiceError::InvalidArgument(_) => Code::InvalidArgument,
            ServiceError::AlreadyRegistered(_) => Code::AlreadyExists,
            ServiceError::NotRegistered(_) => Code::FailedPrecondition,
            ServiceError::RecordingNotFound(_) => Code::NotFound,
            ServiceError::ClaimLost(_)
            | ServiceError::RecordingNotReady { .. }
            | ServiceError::NoRecordingStore => Code::FailedPrecondition,
            ServiceError::RecordingStore(_) => Code::Unavailable,
            ServiceError::RecordingFileMissing(_) => Code::Internal,
        }
    }
}

/// Where a meeting runs: the forwarder, and the address its participants send media to
/// (the forwarder's public address with the port given to this meeting, which also picks
/// the forwarder's shard).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    pub forwarder: crate::domain::ForwarderId,
    /// `host:port`.
    pub address: String,
    /// Bumped by every re-placement (failover), so clients and forwarders can tell a newer
    /// placement from an older one.
    pub epoch: u64,
}

/// What placement knows about a meeting being placed.
#[derive(Debug, Clone, Default)]
pub struct PlacementHint {
    /// The region of the participant asking (the first joiner's, when placing anew).
    pub region: Option<String>,
    /// Participants expected, for headroom (the meeting's `max_participants` if unknown).
    pub expected_participants: u32,
    /// A scheduled meeting's window: capacity is reserved for it.
    pub window: Option<(crate::domain::UnixMillis, crate::domain::UnixMillis)>,
}

/// Chooses forwarders for meetings ([`placement`] implements it on the store).
pub trait Placer: Send + Sync + std::fmt::Debug {
    /// The meeting's current placement, or a new one written now. Two callers racing on
    /// one meeting get the same placement: it is created only if absent.
    fn place<'a>(
        &'a self,
        meeting: &'a crate::domain::MeetingId,
        hint: &'a PlacementHint,
    ) -> futures::future::BoxFuture<'a, Result<Placement, ServiceError>>;

    /// The meeting's placement, if it has one.
    fn placement<'a>(
        &'a self,
        meeting: &'a crate::domain::MeetingId,
    ) -> futures::future::BoxFuture<'a, Result<Option<Placement>, ServiceError>>;
}
