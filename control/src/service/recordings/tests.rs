//! [`RecordingService`] with a [`MeetingService`] on one [`MemoryStore`], on a virtual
//! clock: every `now` is a constant of the test.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::domain::{ForwarderId, MeetingKind, MeetingSpec, PasscodeCost, TokenKey, UnixMillis};
use crate::service::meetings::{JoinInput, MeetingService, MeetingsConfig};
use crate::service::Code;
use crate::store::MemoryStore;
use crate::testing::OneForwarderPlacer;
use crate::testing::{GatedStore, TxnGate};

const T0: UnixMillis = UnixMillis(1_700_000_000_000);
const SETTLE: Duration = Duration::from_secs(10);
const LEASE: Duration = Duration::from_secs(30);
const BACKOFF: Duration = Duration::from_secs(5);

fn at(ms: u64) -> UnixMillis {
    UnixMillis(T0.0 + ms)
}

struct Fixture {
    store: Arc<dyn Store>,
    meetings: Arc<MeetingService>,
    recordings: Arc<RecordingService>,
}

fn fixture_on(store: Arc<dyn Store>) -> Fixture {
    let meetings = Arc::new(MeetingService::new(
        store.clone(),
        TokenKey::generate().unwrap(),
        Arc::new(OneForwarderPlacer::default()),
        MeetingsConfig {
            passcode_cost: PasscodeCost::INSECURE_FOR_TESTS,
            recording_settle: SETTLE,
            ..MeetingsConfig::default()
        },
    ));
    let recordings = Arc::new(RecordingService::new(
        store.clone(),
        RecordingsConfig {
            lease: LEASE,
            max_attempts: 3,
            retry_backoff: BACKOFF,
            ..RecordingsConfig::default()
        },
        meetings.recording_metrics().clone(),
    ));
    Fixture {
        store,
        meetings,
        recordings,
    }
}

fn fixture() -> Fixture {
    fixture_on(Arc::new(MemoryStore::new()))
}

fn mid(s: &str) -> MeetingId {
    MeetingId::new(s).unwrap()
}

fn code<T: std::fmt::Debug>(r: Result<T, ServiceError>) -> Code {
    r.expect_err("expected an error").code()
}

fn output(id: &RecordingId) -> Output {
    Output {
        key: format!("recordings/{id}/output.webm"),
        bytes: 1234,
        duration_ms: 60_000,
    }
}

impl Fixture {
    async fn meeting(&self, id: &str) -> MeetingId {
        let spec = MeetingSpec {
            kind: MeetingKind::Meeting,
            title: "Recorded".into(),
            schedule: None,
            passcode: None,
            host_key: None,
            waiting_room: false,
            limits: None,
        };
        self.meetings.create(Some(mid(id)), spec, T0).await.unwrap();
        mid(id)
    }

    /// Joins and returns the caller the join token authenticates as.
    async fn join(&self, m: &MeetingId, name: &str) -> Caller {
        let joined = self
            .meetings
            .join(
                m,
                JoinInput {
                    display_name: name.into(),
                    ..JoinInput::default()
                },
                T0,
            )
            .await
            .unwrap();
        self.meetings.authenticate(&joined.token, T0).unwrap()
    }

    async fn start(&self, m: &MeetingId, now: UnixMillis) -> RecordingId {
        self.meetings
            .set_recording(&Caller::Operator, m, true, now)
            .await
            .unwrap()
            .expect("recording under way")
    }

    async fn stop(&self, m: &MeetingId, now: UnixMillis) {
        let left = self
            .meetings
            .set_recording(&Caller::Operator, m, false, now)
            .await
            .unwrap();
        assert_eq!(left, None);
    }

    /// A meeting with one recording stopped at `at(0)`: due at `at(10_000)`.
    async fn stopped(&self, m: &str) -> (MeetingId, RecordingId) {
        let m = self.meeting(m).await;
        let r = self.start(&m, T0).await;
        self.stop(&m, at(0)).await;
        (m, r)
    }

    async fn record(&self, id: &RecordingId) -> (RecordingRecord, Revision) {
        let kv = self.store.get(&keys::recording(id)).await.unwrap().unwrap();
        (decode_record(&kv).unwrap(), kv.mod_revision)
    }

    async fn job(&self, id: &RecordingId) -> Option<JobEntry> {
        let kv = self.store.get(&keys::stitch_job(id)).await.unwrap()?;
        Some(decode(&kv).unwrap())
    }

    /// The store's revision: unchanged means nothing was written.
    async fn revision(&self) -> Revision {
        self.store.range("").await.unwrap().1
    }

    async fn claim(&self, worker: &str, now: UnixMillis) -> Option<StitchJob> {
        self.recordings.claim(worker, now).await.unwrap()
    }

    /// The stitcher holding `job` of recording `r` reports that it failed with `reason`.
    async fn fail(
        &self,
        r: &RecordingId,
        job: &StitchJob,
        reason: &str,
        now: UnixMillis,
    ) -> RecordingState {
        self.recordings
            .complete(r, &job.claim, StitchResult::Failed(reason.into()), now)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn start_and_stop_write_the_record_in_the_meetings_transaction() {
    let f = fixture();
    let m = f.meeting("m").await;
    let r = f.start(&m, at(5)).await;

    let (record, revision) = f.record(&r).await;
    assert_eq!(record.state, RecordingState::Recording);
    assert_eq!(record.meeting, m);
    assert_eq!(record.started_at, Some(at(5)));
    assert_eq!(record.stopped_at, None);
    let doc = f.store.get(&keys::meeting(&m)).await.unwrap().unwrap();
    assert_eq!(
        revision, doc.mod_revision,
        "one transaction wrote the meeting and the record"
    );
    let index = f
        .store
        .get(&keys::meeting_recording(&m, &r))
        .await
        .unwrap()
        .expect("indexed under its meeting");
    assert_eq!(index.mod_revision, revision);
    assert_eq!(f.job(&r).await, None, "no job while recording");

    f.stop(&m, at(1_000)).await;
    let (record, revision) = f.record(&r).await;
    assert_eq!(record.state, RecordingState::Pending);
    assert_eq!(record.stopped_at, Some(at(1_000)));
    assert_eq!(record.due_at, Some(at(11_000)), "stop + settle delay");
    let doc = f.store.get(&keys::meeting(&m)).await.unwrap().unwrap();
    assert_eq!(revision, doc.mod_revision);
    assert_eq!(f.job(&r).await.map(|j| j.claimable_at), Some(at(11_000)));

    // Stopping again changes nothing; a new start is a new recording.
    let before = f.revision().await;
    f.stop(&m, at(2_000)).await;
    assert_eq!(f.revision().await, before);
    let second = f.start(&m, at(3_000)).await;
    assert_ne!(second, r);
    assert_eq!(f.record(&r).await.0.state, RecordingState::Pending);
    assert_eq!(f.record(&second).await.0.state, RecordingState::Recording);
}

#[tokio::test]
async fn ending_the_meeting_stops_its_recording_and_makes_the_job() {
    let f = fixture();
    let m = f.meeting("m").await;
    let r = f.start(&m, T0).await;
    f.meetings
        .end(&Caller::Operator, &m, at(500))
        .await
        .unwrap();
    let (record, _) = f.record(&r).await;
    assert_eq!(record.state, RecordingState::Pending);
    assert_eq!(record.stopped_at, Some(at(500)));
    assert_eq!(record.due_at, Some(at(10_500)));
    assert!(f.job(&r).await.is_some());
}

#[tokio::test]
async fn a_recording_started_before_records_were_kept_gets_one_at_its_stop() {
    let f = fixture();
    let m = f.meeting("m").await;
    let r = f.start(&m, T0).await;
    // As a control plane without records would have left it: the meeting records, and
    // there is no record or index entry.
    f.store.delete(&keys::recording(&r)).await.unwrap().unwrap();
    f.store
        .delete(&keys::meeting_recording(&m, &r))
        .await
        .unwrap()
        .unwrap();
    f.stop(&m, at(1_000)).await;
    let (record, _) = f.record(&r).await;
    assert_eq!(record.state, RecordingState::Pending);
    assert_eq!(record.started_at, None, "unknown");
    assert_eq!(record.due_at, Some(at(11_000)));
    let listed = f.recordings.list(&Caller::Operator, &m).await.unwrap();
    assert_eq!(listed, [record]);
    assert_eq!(f.claim("w", at(11_000)).await.unwrap().recording, r);
}

#[tokio::test]
async fn a_job_is_claimed_only_once_due() {
    let f = fixture();
    let (m, r) = f.stopped("m").await;
    let before = f.revision().await;
    assert_eq!(f.claim("w1", at(9_999)).await, None);
    assert_eq!(f.revision().await, before, "an empty claim writes nothing");

    let job = f.claim("w1", at(10_000)).await.expect("due now");
    assert_eq!(job.recording, r);
    assert_eq!(job.meeting, m);
    assert_eq!(job.attempt, 1);
    assert_eq!(job.lease, LEASE);
    assert_eq!(job.started_at, Some(T0));
    assert_eq!(job.stopped_at, Some(at(0)));
    let (record, _) = f.record(&r).await;
    assert_eq!(record.state, RecordingState::Stitching);
    let claim = record.claim.expect("claimed");
    assert_eq!(claim.id, job.claim);
    assert_eq!(claim.worker, "w1");
    assert_eq!(claim.lease_expires_at, at(40_000));
    assert_eq!(
        f.claim("w2", at(10_000)).await,
        None,
        "a live claim is not claimable"
    );
}

/// The fixture's recordings read seals (and serve files) from a local directory store.
fn with_seals(f: &mut Fixture) -> (tempfile::TempDir, RecordingStore) {
    let dir = tempfile::tempdir().unwrap();
    let files = RecordingStore::local(dir.path()).unwrap();
    let service = RecordingService::new(
        f.store.clone(),
        RecordingsConfig {
            lease: LEASE,
            max_attempts: 3,
            retry_backoff: BACKOFF,
            ..RecordingsConfig::default()
        },
        f.meetings.recording_metrics().clone(),
    )
    .with_files(files.clone());
    f.recordings = Arc::new(service);
    (dir, files)
}

/// The meeting's placement record at `epoch` (1 when placed, +1 per failover), as
/// placement writes it.
async fn place(f: &Fixture, m: &MeetingId, epoch: u64) {
    let record = crate::service::placement::PlacementRecord {
        meeting: m.clone(),
        forwarder: ForwarderId::new(format!("fwd-{epoch}")).unwrap(),
        region: "eu".into(),
        address: "192.0.2.1:40000".into(),
        port: 40000,
        epoch,
        created_at: T0,
        placed_at: T0,
        expected_participants: 2,
        window: None,
    };
    let key = keys::placement(m);
    f.store
        .put(&key, serde_json::to_vec(&record).unwrap(), None)
        .await
        .unwrap();
}

async fn put_chunk(files: &RecordingStore, r: &RecordingId, instance: &str, seq: u64) {
    let key = fanout_recorder::store::ChunkKey {
        recording_id: r.to_string(),
        instance: instance.into(),
        seq,
    };
    files
        .put_chunk(&key, Bytes::from_static(b"chunk"))
        .await
        .unwrap();
}

async fn seal(files: &RecordingStore, r: &RecordingId, instance: &str, seq: u64) {
    let key = fanout_recorder::store::SealKey {
        recording_id: r.to_string(),
        instance: instance.into(),
        seq,
    };
    files.put_seal(&key).await.unwrap();
}

#[tokio::test]
async fn a_job_is_due_once_every_recorder_sealed_or_at_its_settle_time() {
    let mut f = fixture();
    let (_dir, files) = with_seals(&mut f);
    let m = f.meeting("m").await;
    place(&f, &m, 1).await;
    let r = f.start(&m, T0).await;
    f.stop(&m, at(0)).await;
    let (record, _) = f.record(&r).await;
    assert_eq!(record.placement_epoch, Some(1));
    assert!(record.sealable, "one forwarder throughout");
    assert_eq!(
        record.due_at,
        Some(at(10_000)),
        "the settle time is still the bound"
    );
    assert!(f.job(&r).await.unwrap().sealable);

    // Not sealed: chunks of one recorder, and no seal.
    put_chunk(&files, &r, "rec-a", 100).await;
    put_chunk(&files, &r, "rec-a", 200).await;
    assert_eq!(f.claim("w", at(1_000)).await, None);
    // Its seal, but a chunk of another recorder (a restart under another name) unsealed.
    put_chunk(&files, &r, "rec-b", 150).await;
    seal(&files, &r, "rec-a", 201).await;
    assert_eq!(f.claim("w", at(2_000)).await, None);
    // Every recorder that stored chunks sealed after its last one: due now, 8 s early.
    seal(&files, &r, "rec-b", 160).await;
    let job = f.claim("w", at(2_000)).await.expect("sealed: due");
    assert_eq!(job.recording, r);
    assert_eq!(job.attempt, 1);
    f.recordings
        .complete(
            &r,
            &job.claim,
            StitchResult::Succeeded(output(&r)),
            at(5_000),
        )
        .await
        .unwrap();
    let jobs = f.recordings.metrics().jobs();
    assert_eq!((jobs.due_sealed, jobs.due_settled), (1, 0));
    assert!(f
        .recordings
        .metrics()
        .render(None)
        .contains("fanout_control_stitch_due_total{by=\"sealed\"} 1"));

    // A second recording one of whose recorders never seals (it died): due at its
    // settle time all the same.
    let r2 = f.start(&m, at(20_000)).await;
    f.stop(&m, at(30_000)).await;
    put_chunk(&files, &r2, "rec-a", 300).await;
    seal(&files, &r2, "rec-a", 301).await;
    put_chunk(&files, &r2, "rec-dead", 290).await;
    assert_eq!(f.claim("w", at(39_999)).await, None);
    let job = f.claim("w", at(40_000)).await.expect("settle time passed");
    assert_eq!(job.recording, r2);
    let jobs = f.recordings.metrics().jobs();
    assert_eq!((jobs.due_sealed, jobs.due_settled), (1, 1));
}

#[tokio::test]
async fn seals_do_not_shorten_a_recording_that_moved_or_a_retry() {
    let mut f = fixture();
    let (_dir, files) = with_seals(&mut f);
    // Failed over while recorded: the first forwarder's recorder may hold chunks that no
    // listing shows yet, and never seals. The live recorder's seal is not enough.
    let m = f.meeting("m").await;
    place(&f, &m, 1).await;
    let moved = f.start(&m, T0).await;
    place(&f, &m, 2).await;
    f.stop(&m, at(0)).await;
    assert!(!f.record(&moved).await.0.sealable);
    assert!(!f.job(&moved).await.unwrap().sealable);
    put_chunk(&files, &moved, "rec-b", 100).await;
    seal(&files, &moved, "rec-b", 101).await;
    assert_eq!(f.claim("w", at(1_000)).await, None);

    // Placed after the start (nobody had joined), not moved: sealable. A failed attempt's
    // retry waits out its backoff, sealed or not.
    let n = f.meeting("n").await;
    let retried = f.start(&n, T0).await;
    place(&f, &n, 1).await;
    f.stop(&n, at(0)).await;
    assert_eq!(f.record(&retried).await.0.placement_epoch, Some(0));
    seal(&files, &retried, "rec-a", 50).await;
    let job = f.claim("w", at(1_000)).await.expect("sealed");
    assert_eq!(job.recording, retried);
    f.fail(&retried, &job, "ffmpeg: exit 1", at(2_000)).await;
    assert!(!f.job(&retried).await.unwrap().sealable);
    assert_eq!(f.claim("w", at(6_999)).await, None, "backing off");
    assert_eq!(f.claim("w", at(7_000)).await.unwrap().recording, retried);
    // The moved one comes at its settle time.
    assert_eq!(f.claim("w", at(10_000)).await.unwrap().recording, moved);
}

#[tokio::test]
async fn without_a_recording_store_jobs_wait_for_their_settle_time() {
    let f = fixture();
    let m = f.meeting("m").await;
    place(&f, &m, 1).await;
    let r = f.start(&m, T0).await;
    f.stop(&m, at(0)).await;
    assert!(f.job(&r).await.unwrap().sealable);
    assert_eq!(f.claim("w", at(9_999)).await, None);
    assert_eq!(f.claim("w", at(10_000)).await.unwrap().recording, r);
}

#[tokio::test]
async fn a_stop_compares_the_placement_it_read() {
    let f = fixture();
    let m = f.meeting("m").await;
    place(&f, &m, 1).await;
    let r = f.start(&m, T0).await;
    let events = [MeetingEvent::RecordingStopped {
        by: crate::domain::Actor::Operator,
        recording: Some(r.clone()),
    }];
    let writes = follow_events(f.store.as_ref(), &m, &events, at(0), SETTLE)
        .await
        .unwrap();
    // A failover commits between the stop's reads and its transaction...
    place(&f, &m, 2).await;
    let txn = Txn::new()
        .when(writes.compares.clone())
        .and_then(writes.ops.clone());
    assert!(!f.store.txn(txn).await.unwrap().succeeded, "...which fails");
    assert_eq!(f.record(&r).await.0.state, RecordingState::Recording);
    // The meeting service retries the whole operation, which then sees the move.
    f.stop(&m, at(0)).await;
    let (record, _) = f.record(&r).await;
    assert_eq!(record.state, RecordingState::Pending);
    assert!(!record.sealable);
}

#[tokio::test]
async fn jobs_go_oldest_due_first_and_recordings_still_recording_never() {
    let f = fixture();
    let (_, first) = f.stopped("a").await;
    let b = f.meeting("b").await;
    let second = f.start(&b, T0).await;
    f.stop(&b, at(1)).await;
    let c = f.meeting("c").await;
    f.start(&c, T0).await;
    let now = at(60_000);
    assert_eq!(f.claim("w", now).await.unwrap().recording, first);
    assert_eq!(f.claim("w", now).await.unwrap().recording, second);
    assert_eq!(f.claim("w", now).await, None);
}

#[tokio::test]
async fn two_workers_racing_for_one_job_exactly_one_wins() {
    let gate = TxnGate::new();
    let store: Arc<dyn Store> =
        Arc::new(GatedStore::new(Arc::new(MemoryStore::new()), gate.clone()));
    let f = fixture_on(store);
    let (_, r) = f.stopped("m").await;
    // Both claimers read the job before either writes: only the compare-and-swap on the
    // record can keep the second from winning too.
    gate.arm(2);
    let (a, b) = tokio::join!(
        f.recordings.claim("w1", at(10_000)),
        f.recordings.claim("w2", at(10_000))
    );
    let winners: Vec<StitchJob> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(winners.len(), 1, "{winners:?}");
    let (record, _) = f.record(&r).await;
    assert_eq!(record.attempts.len(), 1);
    assert_eq!(record.claim.unwrap().id, winners[0].claim);
    assert_eq!(f.recordings.metrics().jobs().claims, 1);
}

#[tokio::test]
async fn an_expired_claim_is_taken_over_and_its_worker_refused() {
    let f = fixture();
    let (_, r) = f.stopped("m").await;
    let first = f.claim("w1", at(10_000)).await.unwrap();
    // A report renews the lease: 20 s later it runs to 60 s.
    f.recordings
        .report(&r, &first.claim, 0.4, at(30_000))
        .await
        .unwrap();
    assert_eq!(f.record(&r).await.0.progress, 0.4);
    assert_eq!(f.claim("w2", at(59_999)).await, None);
    // Expired but not taken over: the slow worker still holds it.
    f.recordings
        .report(&r, &first.claim, 0.5, at(60_500))
        .await
        .unwrap();
    assert_eq!(f.claim("w2", at(90_499)).await, None);

    let second = f.claim("w2", at(90_500)).await.expect("lease expired");
    assert_eq!(second.attempt, 2);
    assert_ne!(second.claim, first.claim);
    let (record, _) = f.record(&r).await;
    assert_eq!(
        record.attempts[0].end,
        Some(AttemptEnd::Expired { at: at(90_500) })
    );
    assert_eq!(record.progress, 0.0, "the new attempt starts from nothing");
    assert_eq!(f.recordings.metrics().jobs().leases_expired, 1);

    // The first worker is told to stop, and changes nothing.
    let before = f.revision().await;
    let report = f.recordings.report(&r, &first.claim, 0.9, at(91_000)).await;
    assert_eq!(code(report), Code::FailedPrecondition);
    let complete = f
        .recordings
        .complete(
            &r,
            &first.claim,
            StitchResult::Succeeded(output(&r)),
            at(91_000),
        )
        .await;
    assert_eq!(code(complete), Code::FailedPrecondition);
    assert_eq!(f.revision().await, before);

    let state = f
        .recordings
        .complete(
            &r,
            &second.claim,
            StitchResult::Succeeded(output(&r)),
            at(92_000),
        )
        .await
        .unwrap();
    assert_eq!(state, RecordingState::Ready);
}

#[tokio::test]
async fn failures_retry_after_a_backoff_then_fail_for_good() {
    let f = fixture();
    let (_, r) = f.stopped("m").await;
    let mut now = at(10_000);
    // Attempt n fails at `now`; the retry is due BACKOFF x 2^(n-1) later.
    for (attempt, backoff_ms) in [(1u32, 5_000u64), (2, 10_000)] {
        let job = f.claim("w", now).await.unwrap();
        assert_eq!(job.attempt, attempt);
        let state = f.fail(&r, &job, "ffmpeg: exit 1", now).await;
        assert_eq!(state, RecordingState::Pending);
        let (record, _) = f.record(&r).await;
        assert_eq!(record.error.as_deref(), Some("ffmpeg: exit 1"));
        let due = UnixMillis(now.0 + backoff_ms);
        assert_eq!(record.due_at, Some(due));
        assert_eq!(
            f.claim("w", UnixMillis(due.0 - 1)).await,
            None,
            "backing off"
        );
        now = due;
    }
    let job = f.claim("w", now).await.unwrap();
    assert_eq!(job.attempt, 3);
    let state = f.fail(&r, &job, "out of disk", now).await;
    assert_eq!(state, RecordingState::Failed);
    let (record, _) = f.record(&r).await;
    assert_eq!(record.attempts.len(), 3);
    assert!(record.error.unwrap().contains("out of disk"));
    assert_eq!(f.job(&r).await, None, "no job left");
    assert_eq!(f.claim("w", UnixMillis(u64::MAX)).await, None);
    let jobs = f.recordings.metrics().jobs();
    assert_eq!((jobs.claims, jobs.retried, jobs.failed), (3, 2, 1));
}

#[tokio::test]
async fn a_worker_that_keeps_dying_uses_up_the_attempts() {
    let f = fixture();
    let (_, r) = f.stopped("m").await;
    let mut now = at(10_000);
    for attempt in 1..=3 {
        let job = f.claim("w", now).await.expect("claimable");
        assert_eq!(job.attempt, attempt);
        now = UnixMillis(now.0 + LEASE.as_millis() as u64);
    }
    // The third claim expired too, with no attempt left: FAILED, nothing handed out.
    assert_eq!(f.claim("w", now).await, None);
    let (record, _) = f.record(&r).await;
    assert_eq!(record.state, RecordingState::Failed);
    assert!(record.error.unwrap().contains("stopped renewing"));
    assert_eq!(f.job(&r).await, None);
    assert_eq!(f.recordings.metrics().jobs().leases_expired, 3);
}

#[tokio::test]
async fn success_is_ready_and_a_repeated_complete_answers_the_same() {
    let f = fixture();
    let (_, r) = f.stopped("m").await;
    let job = f.claim("w", at(10_000)).await.unwrap();
    let done = |f: &Fixture| {
        let recordings = f.recordings.clone();
        let (r, claim) = (r.clone(), job.claim.clone());
        async move {
            recordings
                .complete(&r, &claim, StitchResult::Succeeded(output(&r)), at(20_000))
                .await
        }
    };
    assert_eq!(done(&f).await.unwrap(), RecordingState::Ready);
    let (record, _) = f.record(&r).await;
    assert_eq!(record.output, Some(output(&r)));
    assert_eq!(record.progress, 1.0);
    assert_eq!(f.job(&r).await, None);

    let before = f.revision().await;
    assert_eq!(done(&f).await.unwrap(), RecordingState::Ready);
    // A retry carrying a failure (its first answer was lost) answers READY all the same.
    let failed_retry = f.fail(&r, &job, "x", at(21_000)).await;
    assert_eq!(failed_retry, RecordingState::Ready);
    assert_eq!(f.revision().await, before, "repeats write nothing");
    assert_eq!(f.recordings.metrics().jobs().ready, 1);
}

#[tokio::test]
async fn bad_requests_change_nothing_and_say_why() {
    let f = fixture();
    let (_, r) = f.stopped("m").await;
    let job = f.claim("w", at(10_000)).await.unwrap();
    let before = f.revision().await;
    let s = &f.recordings;

    assert_eq!(code(s.claim("", at(10_000)).await), Code::InvalidArgument);
    assert_eq!(
        code(s.claim("tab\tname", at(10_000)).await),
        Code::InvalidArgument
    );
    for progress in [-0.1, 1.5, f64::NAN] {
        assert_eq!(
            code(s.report(&r, &job.claim, progress, at(11_000)).await),
            Code::InvalidArgument,
            "{progress}"
        );
    }
    assert_eq!(
        code(s.report(&r, "", 0.5, at(11_000)).await),
        Code::InvalidArgument
    );
    let mut empty = output(&r);
    empty.key.clear();
    assert_eq!(
        code(
            s.complete(&r, &job.claim, StitchResult::Succeeded(empty), at(11_000))
                .await
        ),
        Code::InvalidArgument
    );
    let mut zero = output(&r);
    zero.bytes = 0;
    assert_eq!(
        code(
            s.complete(&r, &job.claim, StitchResult::Succeeded(zero), at(11_000))
                .await
        ),
        Code::InvalidArgument
    );
    let unknown = RecordingId::new("nope").unwrap();
    assert_eq!(
        code(s.report(&unknown, &job.claim, 0.5, at(11_000)).await),
        Code::NotFound
    );
    assert_eq!(
        code(s.report(&r, "someone-elses", 0.5, at(11_000)).await),
        Code::FailedPrecondition
    );
    assert_eq!(f.revision().await, before);
    assert_eq!(f.record(&r).await.0.state, RecordingState::Stitching);
}

#[tokio::test]
async fn hosts_and_the_operator_read_newest_first_others_are_refused() {
    let f = fixture();
    let m = f.meeting("m").await;
    let host = f.join(&m, "Host").await;
    let panelist = f.join(&m, "Panelist").await;
    let older = f.start(&m, at(1)).await;
    f.stop(&m, at(2)).await;
    let newer = f.start(&m, at(3)).await;
    let other = f.meeting("other").await;
    let outsider = f.join(&other, "Other host").await;
    let theirs = f.start(&other, at(4)).await;

    for caller in [&Caller::Operator, &host] {
        let list = f.recordings.list(caller, &m).await.unwrap();
        let ids: Vec<&RecordingId> = list.iter().map(|r| &r.id).collect();
        assert_eq!(
            ids,
            [&newer, &older],
            "newest first, the other meeting's not"
        );
        assert_eq!(f.recordings.get(caller, &older).await.unwrap().id, older);
    }
    let s = &f.recordings;
    assert_eq!(code(s.list(&panelist, &m).await), Code::PermissionDenied);
    assert_eq!(code(s.get(&panelist, &older).await), Code::PermissionDenied);
    // A host's token is for its own meeting only.
    assert_eq!(code(s.list(&outsider, &m).await), Code::Unauthenticated);
    assert_eq!(code(s.get(&outsider, &older).await), Code::Unauthenticated);
    assert_eq!(code(s.get(&host, &theirs).await), Code::Unauthenticated);
    assert_eq!(
        code(s.list(&Caller::Operator, &mid("missing")).await),
        Code::NotFound
    );
    let unknown = RecordingId::new("nope").unwrap();
    assert_eq!(
        code(s.get(&Caller::Operator, &unknown).await),
        Code::NotFound
    );

    // After the end the host present at the end still reads; the recording is PENDING.
    f.meetings.end(&host, &m, at(10)).await.unwrap();
    let list = s.list(&host, &m).await.unwrap();
    assert_eq!(list[0].state, RecordingState::Pending);
}

#[tokio::test]
async fn download_needs_a_ready_recording_and_a_store() {
    let f = fixture();
    let (_, r) = f.stopped("m").await;
    let err = f
        .recordings
        .download(&Caller::Operator, &r)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ServiceError::RecordingNotReady { .. }),
        "{err}"
    );
    assert_eq!(err.code(), Code::FailedPrecondition);
    let job = f.claim("w", at(10_000)).await.unwrap();
    f.recordings
        .complete(
            &r,
            &job.claim,
            StitchResult::Succeeded(output(&r)),
            at(11_000),
        )
        .await
        .unwrap();
    let err = f
        .recordings
        .download(&Caller::Operator, &r)
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::NoRecordingStore), "{err}");
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn metrics_count_transitions_and_render() {
    let f = fixture();
    let (_, r) = f.stopped("m").await;
    let job = f.claim("w", at(10_000)).await.unwrap();
    f.recordings
        .complete(
            &r,
            &job.claim,
            StitchResult::Succeeded(output(&r)),
            at(11_000),
        )
        .await
        .unwrap();
    let metrics = f.recordings.metrics();
    for state in RecordingState::ALL {
        let expected = u64::from(state != RecordingState::Failed);
        assert_eq!(metrics.entered_total(state), expected, "{state:?}");
    }
    let text = metrics.render(Some(f.recordings.outstanding_jobs().await.unwrap()));
    assert!(text.contains("fanout_control_recordings_entered_total{state=\"ready\"} 1"));
    assert!(text.contains("fanout_control_stitch_claims_total 1"));
    assert!(text.contains("fanout_control_stitch_completions_total{outcome=\"ready\"} 1"));
    assert!(text.contains("fanout_control_stitch_jobs_outstanding 0"));
}

/// A READY recording of meeting `m` whose worker reported `output(&r)`.
async fn ready(f: &Fixture, m: &str) -> RecordingId {
    let (_, r) = f.stopped(m).await;
    let job = f.claim("w", at(10_000)).await.unwrap();
    f.recordings
        .complete(
            &r,
            &job.claim,
            StitchResult::Succeeded(output(&r)),
            at(11_000),
        )
        .await
        .unwrap();
    r
}

/// A file whose every byte depends on its offset, so misordered pieces show.
fn webm_of(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect()
}

#[tokio::test]
async fn download_streams_the_file_from_the_store_in_pieces_of_at_most_1_mib() {
    let dir = tempfile::tempdir().unwrap();
    let files = RecordingStore::local(dir.path()).unwrap();
    let mut f = fixture();
    let service = RecordingService::new(
        f.store.clone(),
        RecordingsConfig::default(),
        f.meetings.recording_metrics().clone(),
    )
    .with_files(files.clone());
    f.recordings = Arc::new(service);
    let r = ready(&f, "m").await;
    let webm = webm_of(2 * MAX_PIECE_BYTES + 12_345);
    files
        .put_output(r.as_str(), Bytes::from(webm.clone()))
        .await
        .unwrap();

    let file = f.recordings.download(&Caller::Operator, &r).await.unwrap();
    assert_eq!(file.size, webm.len() as u64);
    let pieces: Vec<Bytes> = file.pieces.try_collect().await.unwrap();
    let sizes: Vec<usize> = pieces.iter().map(Bytes::len).collect();
    assert_eq!(sizes, [MAX_PIECE_BYTES, MAX_PIECE_BYTES, 12_345]);
    assert!(pieces.concat() == webm, "the bytes, in order");

    // READY without its file: the store lost it, or this is not the workers' store.
    let lost = ready(&f, "other").await;
    let err = f
        .recordings
        .download(&Caller::Operator, &lost)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ServiceError::RecordingFileMissing(_)),
        "{err}"
    );
    assert_eq!(err.code(), Code::Internal);
}

fn source(
    pieces: Vec<Result<Bytes, ServiceError>>,
) -> BoxStream<'static, Result<Bytes, ServiceError>> {
    futures::stream::iter(pieces).boxed()
}

#[tokio::test]
async fn pieces_are_regrouped_full_in_order_and_cut_without_copying() {
    let data = webm_of(40);
    let cuts = [3usize, 5, 1, 10, 0, 2, 19];
    let mut offset = 0;
    let mut parts = Vec::new();
    for len in cuts {
        parts.push(Ok(Bytes::copy_from_slice(&data[offset..offset + len])));
        offset += len;
    }
    let out: Vec<Bytes> = in_pieces(source(parts), 4).try_collect().await.unwrap();
    assert!(
        out.iter().rev().skip(1).all(|p| p.len() == 4),
        "full pieces"
    );
    assert!(out.last().is_some_and(|p| !p.is_empty() && p.len() <= 4));
    assert_eq!(out.concat(), data);

    // One large source piece is cut, not copied.
    let big = Bytes::from(data.clone());
    let out: Vec<Bytes> = in_pieces(source(vec![Ok(big.clone())]), 16)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(out.iter().map(Bytes::len).collect::<Vec<_>>(), [16, 16, 8]);
    assert_eq!(out[1].as_ptr(), big[16..].as_ptr());

    // An error is passed on and ends the stream; nothing is made up after it.
    let parts = vec![
        Ok(Bytes::from_static(b"ab")),
        Err(ServiceError::RecordingStore("connection reset".into())),
        Ok(Bytes::from_static(b"cd")),
    ];
    let out: Vec<Result<Bytes, ServiceError>> = in_pieces(source(parts), 4).collect().await;
    assert_eq!(out.len(), 1);
    assert!(matches!(out[0], Err(ServiceError::RecordingStore(_))));
    let empty: Vec<Bytes> = in_pieces(source(vec![]), 4).try_collect().await.unwrap();
    assert!(empty.is_empty());
}
