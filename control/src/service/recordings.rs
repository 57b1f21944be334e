//! Recordings: their records in the store, the stitching jobs workers claim, and who may
//! read them: [`RecordingService`] (docs/control-plane.md, "Recordings").
//!
//! # The life of a recording
//!
//! ```text
//!  StartRecording        StopRecording / EndMeeting       claim (due)
//! ───────────────> RECORDING ─────────────────> PENDING ─────────────> STITCHING ──> READY
//!                                                 ^  ^   lease expired,     │  success
//!                                                 │  └── claimed again ─────┤
//!                                                 └──── failure, attempts ──┤
//!                                                       left (backoff)      │ failure (or expiry)
//!                                                                           └─ with none left ──> FAILED
//! ```
//!
//! * The record (`keys::recording`) and its meeting-index entry (`keys::meeting_recording`)
//!   are created in the transaction that writes `RecordingStarted`, and the record moves to
//!   PENDING in the one that writes `RecordingStopped` (a stop, the meeting's end, whatever
//!   emits it): [`MeetingService`](super::meetings::MeetingService) calls
//!   [`follow_events`] from its commit. A recording can therefore never be recording in
//!   the meeting and not in its record, or the reverse, and a failover of the forwarder or
//!   a restart of control changes nothing (the record is in the store, with no lease).
//! * A PENDING recording is due once every recorder that stored chunks of it has sealed
//!   it (stored a marker after its last chunk, on the forwarder's End: docs/recording.md,
//!   "Sealing"), checked at claim time in the recording store, or `settle` after its stop
//!   (default 10 s) at the latest: a recorder that died never seals. Early only when one
//!   forwarder held the meeting from the start to the stop (its placement epoch did not
//!   change): after a failover, the first forwarder's recorder may hold chunks no listing
//!   shows yet.
//! * Jobs not yet done are listed under `keys::stitch_jobs` with the time they may next be
//!   claimed, so a claim scans the outstanding jobs, not every recording ever made. A claim
//!   takes a due PENDING job, or a STITCHING one whose lease expired, with a
//!   compare-and-swap on the record's `mod_revision`: of two workers racing for one job,
//!   exactly one transaction succeeds; the other moves on to the next job.
//! * Each claim has a fresh random id. Reports and completions quote it; once another
//!   claim replaced it, they get [`ServiceError::ClaimLost`] (FAILED_PRECONDITION). A claim
//!   whose lease expired but that nobody took over still holds.
//! * A completion is idempotent per claim: repeated, it answers what the first did and
//!   writes nothing.
//!
//! Time is an input everywhere (`now`): the tests run the whole machine on a virtual clock.

mod record;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use fanout_recorder::store::{RecordingStore, Sealing, StoreError as FileStoreError};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use record::{
    Attempt, AttemptEnd, Claim, Output, RecordingRecord, RecordingState, MAX_ERROR_BYTES,
};
use record::{ClaimOutcome, Completion, IndexEntry, JobEntry, Rules, RECORD_VERSION};

use super::meetings::{read_meeting, Caller};
use super::placement::PlacementRecord;
use super::{keys, ServiceError};
use crate::domain::{DomainError, MeetingEvent, MeetingId, RecordingId, UnixMillis};
use crate::store::{Compare, CompareOp, KeyValue, Op, Revision, Store, Txn};

/// How long after its stop a recording becomes due at the latest, sealed or not: the
/// upper bound for recorders that never seal it (dead, or the End lost).
pub const DEFAULT_SETTLE_DELAY: Duration = Duration::from_secs(10);
/// How long a claim holds without a progress report.
pub const DEFAULT_STITCH_LEASE: Duration = Duration::from_secs(30);
/// Attempts per recording (failures and expired claims alike) before it is FAILED.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Wait before the retry of a failed attempt, doubled with each further failure.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(30);
/// Longest worker name accepted (it is stored in the record and logged).
pub const MAX_WORKER_NAME: usize = 128;

/// Tuning of a [`RecordingService`]. The settle delay is the meeting service's
/// ([`MeetingsConfig::recording_settle`](super::meetings::MeetingsConfig)): it is decided
/// when a recording stops.
#[derive(Debug, Clone)]
pub struct RecordingsConfig {
    pub lease: Duration,
    pub max_attempts: u32,
    pub retry_backoff: Duration,
    /// Compare-and-swap attempts on one record before [`ServiceError::Contention`].
    pub max_cas_attempts: u32,
}

impl Default for RecordingsConfig {
    fn default() -> Self {
        RecordingsConfig {
            lease: DEFAULT_STITCH_LEASE,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            max_cas_attempts: 20,
        }
    }
}

impl RecordingsConfig {
    fn rules(&self) -> Rules {
        Rules {
            lease: self.lease,
            // Zero would make every recording FAILED unattempted: one attempt at least.
            max_attempts: self.max_attempts.max(1),
            retry_backoff: self.retry_backoff,
        }
    }
}

/// A job handed to a worker by [`RecordingService::claim`].
#[derive(Debug, Clone, PartialEq)]
pub struct StitchJob {
    pub recording: RecordingId,
    pub meeting: MeetingId,
    /// Quoted in every report and the completion.
    pub claim: String,
    /// Report within this.
    pub lease: Duration,
    /// 1 for the first.
    pub attempt: u32,
    pub started_at: Option<UnixMillis>,
    pub stopped_at: Option<UnixMillis>,
}

/// A READY recording's file, as it streams from the recording store.
pub struct RecordingFile {
    /// Bytes in the store (what the stream will carry).
    pub size: u64,
    /// The file in order, in pieces of at most [`MAX_PIECE_BYTES`].
    pub pieces: BoxStream<'static, Result<Bytes, ServiceError>>,
}

impl std::fmt::Debug for RecordingFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingFile")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Largest piece of a download (the proto's limit per message; also what a gRPC client
/// accepts by default, 4 MiB, with room to spare).
pub const MAX_PIECE_BYTES: usize = 1 << 20;

/// How a worker's attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StitchResult {
    /// The file is uploaded.
    Succeeded(Output),
    /// Why it failed.
    Failed(String),
}

// ---------------------------------------------------------------------------- metrics

/// Counters of recordings and stitching jobs, shared by the meeting service (starts and
/// stops) and the recording service (jobs); Prometheus text in [`RecordingMetrics::render`].
/// Per instance: sum them over instances.
#[derive(Debug, Clone, Default)]
pub struct RecordingMetrics {
    inner: Arc<MetricsInner>,
}

#[derive(Debug, Default)]
struct MetricsInner {
    /// Transitions into each state, indexed as [`RecordingState::ALL`].
    entered: [AtomicU64; 5],
    claims: AtomicU64,
    ready: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    leases_expired: AtomicU64,
    /// First attempts claimed before their settle time: every recorder had sealed.
    due_sealed: AtomicU64,
    /// First attempts claimed at or after their settle time.
    due_settled: AtomicU64,
}

impl RecordingMetrics {
    fn entered(&self, state: RecordingState) {
        let index = RecordingState::ALL
            .iter()
            .position(|s| *s == state)
            .unwrap_or(0);
        self.inner.entered[index].fetch_add(1, Ordering::Relaxed);
    }

    fn completed(&self, state: RecordingState) {
        let counter = match state {
            RecordingState::Ready => &self.inner.ready,
            RecordingState::Pending => &self.inner.retried,
            _ => &self.inner.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Recordings that entered `state` through this instance.
    pub fn entered_total(&self, state: RecordingState) -> u64 {
        let index = RecordingState::ALL
            .iter()
            .position(|s| *s == state)
            .unwrap_or(0);
        self.inner.entered[index].load(Ordering::Relaxed)
    }

    /// Claims granted, completions (ready, retried, failed), leases found expired, and
    /// what made first attempts due.
    pub fn jobs(&self) -> JobCounts {
        let i = &self.inner;
        JobCounts {
            claims: i.claims.load(Ordering::Relaxed),
            ready: i.ready.load(Ordering::Relaxed),
            retried: i.retried.load(Ordering::Relaxed),
            failed: i.failed.load(Ordering::Relaxed),
            leases_expired: i.leases_expired.load(Ordering::Relaxed),
            due_sealed: i.due_sealed.load(Ordering::Relaxed),
            due_settled: i.due_settled.load(Ordering::Relaxed),
        }
    }

    /// The Prometheus text exposition; `outstanding` is the number of jobs not yet done,
    /// if the caller could count them.
    pub fn render(&self, outstanding: Option<u64>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP fanout_control_recordings_entered_total Recordings that entered a state \
             (through this instance)\n\
             # TYPE fanout_control_recordings_entered_total counter"
        );
        for state in RecordingState::ALL {
            let _ = writeln!(
                out,
                "fanout_control_recordings_entered_total{{state=\"{}\"}} {}",
                state.name().to_ascii_lowercase(),
                self.entered_total(state)
            );
        }
        let jobs = self.jobs();
        let _ = writeln!(
            out,
            "# HELP fanout_control_stitch_claims_total Stitching jobs claimed by workers\n\
             # TYPE fanout_control_stitch_claims_total counter\n\
             fanout_control_stitch_claims_total {}\n\
             # HELP fanout_control_stitch_completions_total Stitching attempts ended by their \
             worker, by outcome (ready; retry: failed with attempts left; failed: none left)\n\
             # TYPE fanout_control_stitch_completions_total counter\n\
             fanout_control_stitch_completions_total{{outcome=\"ready\"}} {}\n\
             fanout_control_stitch_completions_total{{outcome=\"retry\"}} {}\n\
             fanout_control_stitch_completions_total{{outcome=\"failed\"}} {}\n\
             # HELP fanout_control_stitch_leases_expired_total Claims whose worker stopped \
             reporting, found expired by a later claim\n\
             # TYPE fanout_control_stitch_leases_expired_total counter\n\
             fanout_control_stitch_leases_expired_total {}\n\
             # HELP fanout_control_stitch_due_total First stitching attempts claimed, by what \
             made them due (sealed: every recorder sealed the recording before its settle \
             time; settle: the settle time passed)\n\
             # TYPE fanout_control_stitch_due_total counter\n\
             fanout_control_stitch_due_total{{by=\"sealed\"}} {}\n\
             fanout_control_stitch_due_total{{by=\"settle\"}} {}",
            jobs.claims,
            jobs.ready,
            jobs.retried,
            jobs.failed,
            jobs.leases_expired,
            jobs.due_sealed,
            jobs.due_settled
        );
        if let Some(n) = outstanding {
            let _ = writeln!(
                out,
                "# HELP fanout_control_stitch_jobs_outstanding Recordings stopped and not yet \
                 READY or FAILED (pending or stitching)\n\
                 # TYPE fanout_control_stitch_jobs_outstanding gauge\n\
                 fanout_control_stitch_jobs_outstanding {n}"
            );
        }
        out
    }
}

/// See [`RecordingMetrics::jobs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobCounts {
    pub claims: u64,
    pub ready: u64,
    pub retried: u64,
    pub failed: u64,
    pub leases_expired: u64,
    pub due_sealed: u64,
    pub due_settled: u64,
}

// ---------------------------------------------------------------------------- meetings

/// What a meeting transaction must also do so that recording records follow its
/// recording events.
#[derive(Debug, Default)]
pub(crate) struct RecordingWrites {
    pub(crate) compares: Vec<Compare>,
    pub(crate) ops: Vec<Op>,
    /// States entered, counted once the transaction commits.
    entered: Vec<RecordingState>,
}

impl RecordingWrites {
    /// Count the transitions of a committed transaction.
    pub(crate) fn committed(&self, metrics: &RecordingMetrics) {
        for state in &self.entered {
            metrics.entered(*state);
        }
    }
}

/// The record writes for the recording events of one meeting transaction: a start
/// creates the record (RECORDING, compared absent) and its index entry; a stop moves the
/// record to PENDING (compared unchanged since read here) and creates its job. Reads the
/// stopped recordings' records and the meeting's placement (its epoch at the start and
/// at the stop says whether one forwarder recorded it throughout, see
/// [`RecordingRecord::stop`]); the caller's transaction compares them, so a failover
/// committed in between makes the meeting's operation retry.
pub(crate) async fn follow_events(
    store: &dyn Store,
    meeting: &MeetingId,
    events: &[MeetingEvent],
    now: UnixMillis,
    settle: Duration,
) -> Result<RecordingWrites, ServiceError> {
    // Each record touched, with the compare that guards it and whether it is new.
    let mut touched: BTreeMap<RecordingId, (RecordingRecord, Compare, bool)> = BTreeMap::new();
    let mut writes = RecordingWrites::default();
    let recorded = events.iter().any(|e| {
        matches!(
            e,
            MeetingEvent::RecordingStarted {
                recording: Some(_),
                ..
            } | MeetingEvent::RecordingStopped {
                recording: Some(_),
                ..
            }
        )
    });
    let mut epoch = 0;
    if recorded {
        let key = keys::placement(meeting);
        match store.get(&key).await? {
            Some(kv) => {
                epoch = decode::<PlacementRecord>(&kv)?.epoch;
                writes.compares.push(Compare::mod_revision(
                    key,
                    CompareOp::Equal,
                    kv.mod_revision,
                ));
            }
            None => writes.compares.push(Compare::absent(key)),
        }
    }
    for event in events {
        match event {
            MeetingEvent::RecordingStarted {
                recording: Some(id),
                ..
            } => {
                let mut record = RecordingRecord::started(id.clone(), meeting.clone(), now);
                record.placement_epoch = Some(epoch);
                let compare = Compare::absent(keys::recording(id));
                touched.insert(id.clone(), (record, compare, true));
                writes.entered.push(RecordingState::Recording);
            }
            MeetingEvent::RecordingStopped {
                recording: Some(id),
                ..
            } => {
                if let Some((record, _, _)) = touched.get_mut(id) {
                    // Started and stopped in one transaction (no operation does that today).
                    if record.stop(now, settle, epoch) {
                        writes.entered.push(RecordingState::Pending);
                    }
                    continue;
                }
                let key = keys::recording(id);
                let (record, compare, new) = match store.get(&key).await? {
                    Some(kv) => {
                        let mut record: RecordingRecord = decode_record(&kv)?;
                        if !record.stop(now, settle, epoch) {
                            // Only meeting transactions write a RECORDING record, and the
                            // meeting document serialises them: a stop of a record in
                            // another state is a stale event, not a reason to fail the
                            // meeting's operation.
                            tracing::warn!(recording = %id, state = record.state.name(),
                                "recording stopped in the meeting but its record is not RECORDING; left as is");
                            continue;
                        }
                        let compare = Compare::mod_revision(key, CompareOp::Equal, kv.mod_revision);
                        (record, compare, false)
                    }
                    None => {
                        tracing::info!(recording = %id,
                            "recording started before records were kept: its record starts at its stop");
                        let record = RecordingRecord::stopped_without_record(
                            id.clone(),
                            meeting.clone(),
                            now,
                            settle,
                        );
                        (record, Compare::absent(key), true)
                    }
                };
                touched.insert(id.clone(), (record, compare, new));
                writes.entered.push(RecordingState::Pending);
            }
            _ => {}
        }
    }
    for (id, (record, compare, new)) in touched {
        writes.compares.push(compare);
        writes.ops.extend(record_ops(&record)?);
        if new {
            let key = keys::meeting_recording(meeting, &id);
            let entry = IndexEntry {
                version: RECORD_VERSION,
            };
            writes.ops.push(Op::put(key.clone(), encode(&key, &entry)?));
        }
    }
    Ok(writes)
}

/// Puts the record, and its job entry from the stop until the job is done (then deletes
/// it).
fn record_ops(record: &RecordingRecord) -> Result<Vec<Op>, ServiceError> {
    let key = keys::recording(&record.id);
    let mut ops = vec![Op::put(key.clone(), encode(&key, record)?)];
    let job = keys::stitch_job(&record.id);
    match (record.claimable_at(), record.state) {
        (Some(claimable_at), _) => {
            let entry = JobEntry {
                version: RECORD_VERSION,
                claimable_at,
                sealable: record.may_seal_early(),
            };
            ops.push(Op::put(job.clone(), encode(&job, &entry)?));
        }
        (None, RecordingState::Ready | RecordingState::Failed) => ops.push(Op::delete(job)),
        // Still recording: no job yet.
        (None, _) => {}
    }
    Ok(ops)
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, ServiceError> {
    serde_json::to_vec(value).map_err(|e| ServiceError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, ServiceError> {
    serde_json::from_slice(&kv.value).map_err(|e| ServiceError::Corrupt {
        key: kv.key.clone(),
        reason: e.to_string(),
    })
}

fn decode_record(kv: &KeyValue) -> Result<RecordingRecord, ServiceError> {
    let record: RecordingRecord = decode(kv)?;
    if record.version != RECORD_VERSION {
        return Err(ServiceError::Corrupt {
            key: kv.key.clone(),
            reason: format!("unsupported record version {}", record.version),
        });
    }
    Ok(record)
}

/// 128 random bits for a claim id.
fn claim_id() -> Result<String, ServiceError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| DomainError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A worker's name: 1..=128 characters, no control characters (it is logged).
fn check_worker(worker: &str) -> Result<(), ServiceError> {
    if worker.is_empty() || worker.len() > MAX_WORKER_NAME || worker.chars().any(char::is_control) {
        return Err(ServiceError::InvalidArgument(format!(
            "worker: 1 to {MAX_WORKER_NAME} characters, no control characters"
        )));
    }
    Ok(())
}

fn check_claim(claim: &str) -> Result<(), ServiceError> {
    if claim.is_empty() {
        return Err(ServiceError::InvalidArgument(
            "claim: required (from ClaimStitchJob)".into(),
        ));
    }
    Ok(())
}

/// `source` regrouped into pieces of exactly `max` bytes (the last one shorter): a store
/// delivers pieces of its own size (8 KiB from a directory, the whole object from
/// memory), and a download should neither send thousands of tiny messages nor one too
/// large. Holds at most one piece being filled and one source piece; a source piece of
/// `max` or more is cut without copying. An error ends the stream after it is passed on.
fn in_pieces(
    source: BoxStream<'static, Result<Bytes, ServiceError>>,
    max: usize,
) -> BoxStream<'static, Result<Bytes, ServiceError>> {
    struct Regroup {
        source: BoxStream<'static, Result<Bytes, ServiceError>>,
        /// The rest of the source piece last read.
        pending: Bytes,
        /// The piece being filled (smaller than `max`).
        filling: BytesMut,
        done: bool,
    }
    let max = max.max(1);
    let state = Regroup {
        source,
        pending: Bytes::new(),
        filling: BytesMut::new(),
        done: false,
    };
    futures::stream::unfold(state, move |mut s| async move {
        loop {
            if !s.pending.is_empty() {
                if s.filling.is_empty() && s.pending.len() >= max {
                    let piece = s.pending.split_to(max);
                    return Some((Ok(piece), s));
                }
                let take = (max - s.filling.len()).min(s.pending.len());
                s.filling.extend_from_slice(&s.pending.split_to(take));
                if s.filling.len() == max {
                    let piece = s.filling.split().freeze();
                    return Some((Ok(piece), s));
                }
                continue;
            }
            if s.done {
                if s.filling.is_empty() {
                    return None;
                }
                let piece = s.filling.split().freeze();
                return Some((Ok(piece), s));
            }
            match s.source.next().await {
                Some(Ok(bytes)) => s.pending = bytes,
                Some(Err(e)) => {
                    // What was buffered is not sent: the receiver must not take a
                    // truncated file for a whole one, and it sees the error next.
                    s.done = true;
                    s.filling.clear();
                    return Some((Err(e), s));
                }
                None => s.done = true,
            }
        }
    })
    .boxed()
}

// ---------------------------------------------------------------------------- the service

/// Recording reads and the stitching jobs, on an `Arc<dyn Store>`. Holds no recording
/// state; cheap to share.
#[derive(Debug)]
pub struct RecordingService {
    store: Arc<dyn Store>,
    config: RecordingsConfig,
    metrics: RecordingMetrics,
    /// Where the chunks, seals and stitched files are (`with_files`); without, downloads
    /// are refused and jobs wait for their settle time.
    files: Option<RecordingStore>,
}

impl RecordingService {
    /// `metrics`: the meeting service's
    /// ([`MeetingService::recording_metrics`](super::meetings::MeetingService::recording_metrics)),
    /// so that starts, stops and jobs count in one place.
    pub fn new(store: Arc<dyn Store>, config: RecordingsConfig, metrics: RecordingMetrics) -> Self {
        RecordingService {
            store,
            config,
            metrics,
            files: None,
        }
    }

    /// Serve downloads from `files`, and read the recorders' seals there: the object
    /// store the recorders and the stitch workers write to.
    pub fn with_files(mut self, files: RecordingStore) -> Self {
        self.files = Some(files);
        self
    }

    pub fn metrics(&self) -> &RecordingMetrics {
        &self.metrics
    }

    // ------------------------------------------------------------------ reading

    /// The caller may read the meeting's recordings: the operator (for a meeting that
    /// exists), or a host of it ([`crate::domain::Meeting::check_recordings_reader`]).
    async fn authorize(&self, caller: &Caller, meeting: &MeetingId) -> Result<(), ServiceError> {
        if let Caller::Participant(claims) = caller {
            // Before any read: a token for another meeting learns nothing about this one.
            if &claims.meeting != meeting {
                return Err(DomainError::TokenWrongMeeting.into());
            }
        }
        let key = keys::meeting(meeting);
        let kv = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| DomainError::MeetingNotFound(meeting.clone()))?;
        let m = read_meeting(&kv.key, &kv.value)?;
        match caller {
            Caller::Operator => Ok(()),
            Caller::Participant(claims) => Ok(m.check_recordings_reader(claims)?),
        }
    }

    async fn load(&self, id: &RecordingId) -> Result<(RecordingRecord, Revision), ServiceError> {
        let kv = self
            .store
            .get(&keys::recording(id))
            .await?
            .ok_or_else(|| ServiceError::RecordingNotFound(id.clone()))?;
        Ok((decode_record(&kv)?, kv.mod_revision))
    }

    /// A meeting's recordings, newest first (by start; ties by id, for a stable order).
    pub async fn list(
        &self,
        caller: &Caller,
        meeting: &MeetingId,
    ) -> Result<Vec<RecordingRecord>, ServiceError> {
        self.authorize(caller, meeting).await?;
        let prefix = keys::meeting_recordings(meeting);
        let (entries, _) = self.store.range(&prefix).await?;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let id = RecordingId::new(&entry.key[prefix.len()..]).map_err(|e| {
                ServiceError::Corrupt {
                    key: entry.key.clone(),
                    reason: e.to_string(),
                }
            })?;
            // Index entry and record are written in one transaction and neither is ever
            // deleted: a missing record is an error, not something to hide.
            match self.load(&id).await {
                Ok((record, _)) => out.push(record),
                Err(ServiceError::RecordingNotFound(_)) => {
                    return Err(ServiceError::Corrupt {
                        key: entry.key,
                        reason: "index entry without its recording record".into(),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| (b.started_at, &b.id).cmp(&(a.started_at, &a.id)));
        Ok(out)
    }

    /// One recording, for the operator or a host of its meeting.
    pub async fn get(
        &self,
        caller: &Caller,
        id: &RecordingId,
    ) -> Result<RecordingRecord, ServiceError> {
        let (record, _) = self.load(id).await?;
        self.authorize(caller, &record.meeting).await?;
        Ok(record)
    }

    /// The file of a READY recording, streamed from the recording store, for the
    /// operator or a host of its meeting.
    pub async fn download(
        &self,
        caller: &Caller,
        id: &RecordingId,
    ) -> Result<RecordingFile, ServiceError> {
        let record = self.get(caller, id).await?;
        if record.state != RecordingState::Ready {
            return Err(ServiceError::RecordingNotReady {
                recording: id.clone(),
                state: record.state.name(),
            });
        }
        let files = self.files.as_ref().ok_or(ServiceError::NoRecordingStore)?;
        let output = files
            .get_output_stream(id.as_str())
            .await
            .map_err(|e| match e {
                FileStoreError::NotFound(_) => ServiceError::RecordingFileMissing(id.clone()),
                e => ServiceError::RecordingStore(e.to_string()),
            })?;
        let pieces = output
            .pieces
            .map_err(|e| ServiceError::RecordingStore(e.to_string()))
            .boxed();
        Ok(RecordingFile {
            size: output.size,
            pieces: in_pieces(pieces, MAX_PIECE_BYTES),
        })
    }

    /// Stitching jobs not yet done (PENDING or STITCHING), counted by the store.
    pub async fn outstanding_jobs(&self) -> Result<u64, ServiceError> {
        Ok(self.store.count(&keys::stitch_jobs()).await?.0)
    }

    // ------------------------------------------------------------------ jobs

    /// Writes `record` if its record is still at `revision`; `false` if it changed.
    async fn write(
        &self,
        record: &RecordingRecord,
        revision: Revision,
    ) -> Result<bool, ServiceError> {
        let key = keys::recording(&record.id);
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
            .and_then(record_ops(record)?);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// The next job due at `now` for `worker`, claimed for it, or `None` if no job is due.
    /// Jobs are tried oldest due first; a job another worker claims first is skipped.
    /// When none of them can be claimed, the jobs still in their settle time that may be
    /// due early (one forwarder recorded them) are tried, oldest stop first: each is due
    /// as soon as every recorder that stored chunks of it has sealed it.
    ///
    /// The seal check lives here, at claim time in the control plane, rather than in the
    /// worker or in a scheduler of its own: a claim already reads the outstanding jobs and
    /// decides with a compare-and-swap on the record, so any number of stateless control
    /// instances decide alike from the same store listing, with no timer, no state to hand
    /// over and no worker held waiting on a recording that may never be sealed (a recorder
    /// that died never seals; `settle` stays the upper bound). It costs one listing of the
    /// recording store per settling job, and only when no job is due. Without a recording
    /// store, or when it cannot be listed, jobs wait out their settle time.
    pub async fn claim(
        &self,
        worker: &str,
        now: UnixMillis,
    ) -> Result<Option<StitchJob>, ServiceError> {
        check_worker(worker)?;
        let rules = self.config.rules();
        let prefix = keys::stitch_jobs();
        let (entries, _) = self.store.range(&prefix).await?;
        let mut due = Vec::new();
        let mut settling = Vec::new();
        for kv in &entries {
            let entry: JobEntry = decode(kv)?;
            let list = if entry.claimable_at <= now {
                &mut due
            } else if entry.sealable && self.files.is_some() {
                &mut settling
            } else {
                continue;
            };
            let id =
                RecordingId::new(&kv.key[prefix.len()..]).map_err(|e| ServiceError::Corrupt {
                    key: kv.key.clone(),
                    reason: e.to_string(),
                })?;
            list.push((entry.claimable_at, id));
        }
        due.sort();
        for (_, id) in due {
            if let Some(job) = self.claim_one(&id, worker, now, false, &rules).await? {
                return Ok(Some(job));
            }
        }
        settling.sort();
        for (_, id) in settling {
            if self.sealed(&id).await {
                if let Some(job) = self.claim_one(&id, worker, now, true, &rules).await? {
                    return Ok(Some(job));
                }
            }
        }
        Ok(None)
    }

    /// Whether every recorder that stored chunks of `id` has sealed it, by one listing of
    /// the recording store. A store that cannot be listed answers no: the job waits for
    /// its settle time, as it would without seals.
    async fn sealed(&self, id: &RecordingId) -> bool {
        let Some(files) = &self.files else {
            return false;
        };
        match files.list_recording(id.as_str()).await {
            Ok(objects) => match objects.sealing() {
                Sealing::Sealed { .. } => true,
                sealing => {
                    tracing::debug!(recording = %id, ?sealing, "recording not sealed yet");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(recording = %id, error = %e,
                    "cannot list the recording's chunks for its seals: it waits for its settle time");
                false
            }
        }
    }

    /// Tries to claim one job (`sealed`: every recorder sealed it); `None` if it is not
    /// claimable (any more).
    async fn claim_one(
        &self,
        id: &RecordingId,
        worker: &str,
        now: UnixMillis,
        sealed: bool,
        rules: &Rules,
    ) -> Result<Option<StitchJob>, ServiceError> {
        let claim = claim_id()?;
        for _ in 0..self.config.max_cas_attempts {
            let (mut record, revision) = match self.load(id).await {
                Ok(loaded) => loaded,
                // A job entry outlived its record: nothing to claim.
                Err(ServiceError::RecordingNotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            let expired = record.state == RecordingState::Stitching;
            let due_at = record.due_at;
            let outcome = record.claim(worker, claim.clone(), now, sealed, rules);
            if outcome == ClaimOutcome::NotDue {
                return Ok(None);
            }
            if !self.write(&record, revision).await? {
                // Another worker (or a report) got there first: look again.
                continue;
            }
            if expired {
                self.metrics
                    .inner
                    .leases_expired
                    .fetch_add(1, Ordering::Relaxed);
                let previous = record
                    .attempts
                    .iter()
                    .rev()
                    .nth(usize::from(outcome == ClaimOutcome::Claimed));
                tracing::warn!(recording = %id, previous = ?previous.map(|a| &a.worker),
                    "stitching claim expired");
            }
            if outcome == ClaimOutcome::GaveUp {
                self.metrics.inner.failed.fetch_add(1, Ordering::Relaxed);
                self.metrics.entered(RecordingState::Failed);
                tracing::warn!(recording = %id, error = ?record.error, "recording FAILED");
                return Ok(None);
            }
            self.metrics.inner.claims.fetch_add(1, Ordering::Relaxed);
            self.metrics.entered(RecordingState::Stitching);
            if record.attempts.len() == 1 {
                let early = due_at.filter(|due| now < *due);
                let counter = match early {
                    Some(due) => {
                        tracing::info!(recording = %id,
                            after_stop_ms = record.stopped_at.map_or(0, |s| now.0.saturating_sub(s.0)),
                            before_settle_ms = due.0 - now.0,
                            "every recorder sealed the recording: due before its settle time");
                        &self.metrics.inner.due_sealed
                    }
                    None => &self.metrics.inner.due_settled,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(recording = %id, worker, attempt = record.attempts.len(), "stitching job claimed");
            return Ok(Some(StitchJob {
                recording: record.id.clone(),
                meeting: record.meeting.clone(),
                claim,
                lease: rules.lease,
                attempt: record.attempt_count(),
                started_at: record.started_at,
                stopped_at: record.stopped_at,
            }));
        }
        Err(ServiceError::Contention(format!("recording {id}")))
    }

    /// Progress (0.0 to 1.0) of the attempt under `claim`; renews its lease.
    pub async fn report(
        &self,
        id: &RecordingId,
        claim: &str,
        progress: f64,
        now: UnixMillis,
    ) -> Result<(), ServiceError> {
        check_claim(claim)?;
        if !(0.0..=1.0).contains(&progress) {
            return Err(ServiceError::InvalidArgument(
                "progress: from 0.0 to 1.0".into(),
            ));
        }
        let rules = self.config.rules();
        for _ in 0..self.config.max_cas_attempts {
            let (mut record, revision) = self.load(id).await?;
            record.report(claim, progress, now, &rules)?;
            if self.write(&record, revision).await? {
                return Ok(());
            }
        }
        Err(ServiceError::Contention(format!("recording {id}")))
    }

    /// The end of the attempt under `claim`; returns the recording's state after it
    /// (PENDING: it will be retried). Repeated, answers the same and changes nothing.
    pub async fn complete(
        &self,
        id: &RecordingId,
        claim: &str,
        result: StitchResult,
        now: UnixMillis,
    ) -> Result<RecordingState, ServiceError> {
        check_claim(claim)?;
        let result = match result {
            StitchResult::Succeeded(output) => {
                if output.key.is_empty() || output.key.chars().any(char::is_control) {
                    return Err(ServiceError::InvalidArgument(
                        "output_key: required with success, no control characters".into(),
                    ));
                }
                if output.bytes == 0 {
                    return Err(ServiceError::InvalidArgument(
                        "output_bytes: a stitched file is never empty".into(),
                    ));
                }
                Ok(output)
            }
            StitchResult::Failed(error) => Err(error),
        };
        let rules = self.config.rules();
        for _ in 0..self.config.max_cas_attempts {
            let (mut record, revision) = self.load(id).await?;
            match record.complete(claim, result.clone(), now, &rules)? {
                Completion::Repeated(state) => return Ok(state),
                Completion::Changed(state) => {
                    if !self.write(&record, revision).await? {
                        continue;
                    }
                    self.metrics.completed(state);
                    self.metrics.entered(state);
                    match state {
                        RecordingState::Ready => {
                            tracing::info!(recording = %id, "recording READY")
                        }
                        _ => tracing::warn!(recording = %id, state = state.name(),
                            error = ?record.error, "stitching attempt failed"),
                    }
                    return Ok(state);
                }
            }
        }
        Err(ServiceError::Contention(format!("recording {id}")))
    }
}
