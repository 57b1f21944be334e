//! Stitching jobs on a real etcd ([`EtcdServer`]), claimed by workers through several
//! control instances (each its own etcd client and services), as in production.
//!
//! The race is forced, not hoped for: a shared [`TxnGate`] holds the first transaction of
//! every claimer until all of them have read the job, so each instance's compare-and-swap
//! is what decides. Time is the services' input (`now`), so leases expire without waiting.
//!
//! `expect`/`unwrap` in this file are assertions: a failure is the test failing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_control::domain::{
    MeetingId, MeetingKind, MeetingSpec, PasscodeCost, RecordingId, TokenKey, UnixMillis,
};
use fanout_control::service::meetings::{Caller, MeetingService, MeetingsConfig};
use fanout_control::service::recordings::{
    AttemptEnd, Output, RecordingService, RecordingState, RecordingsConfig, StitchJob, StitchResult,
};
use fanout_control::service::Code;
use fanout_control::store::Store;
use fanout_control::testing::{EtcdServer, GatedStore, OneForwarderPlacer, TxnGate};

const T0: UnixMillis = UnixMillis(1_700_000_000_000);
const SETTLE: Duration = Duration::from_secs(10);
const LEASE: Duration = Duration::from_secs(30);

fn at(ms: u64) -> UnixMillis {
    UnixMillis(T0.0 + ms)
}

/// One control instance: its own etcd client, meeting and recording services.
struct Control {
    meetings: MeetingService,
    recordings: RecordingService,
}

async fn control(server: &EtcdServer, gate: &Arc<TxnGate>) -> Control {
    let etcd: Arc<dyn Store> = Arc::new(server.store("/recordings/").await.expect("etcd client"));
    let store: Arc<dyn Store> = Arc::new(GatedStore::new(etcd, gate.clone()));
    let meetings = MeetingService::new(
        store.clone(),
        TokenKey::generate().unwrap(),
        Arc::new(OneForwarderPlacer::default()),
        MeetingsConfig {
            passcode_cost: PasscodeCost::INSECURE_FOR_TESTS,
            recording_settle: SETTLE,
            ..MeetingsConfig::default()
        },
    );
    let recordings = RecordingService::new(
        store,
        RecordingsConfig {
            lease: LEASE,
            ..RecordingsConfig::default()
        },
        meetings.recording_metrics().clone(),
    );
    Control {
        meetings,
        recordings,
    }
}

/// A meeting recorded from `T0` to `stop`, through `c`.
async fn recorded(c: &Control, meeting: &str, stop: UnixMillis) -> RecordingId {
    let spec = MeetingSpec {
        kind: MeetingKind::Meeting,
        title: "Recorded".into(),
        schedule: None,
        passcode: None,
        host_key: None,
        waiting_room: false,
        limits: None,
    };
    let m = MeetingId::new(meeting).unwrap();
    c.meetings.create(Some(m.clone()), spec, T0).await.unwrap();
    let op = Caller::Operator;
    let r = c.meetings.set_recording(&op, &m, true, T0).await.unwrap();
    c.meetings
        .set_recording(&op, &m, false, stop)
        .await
        .unwrap();
    r.expect("a recording id")
}

#[tokio::test]
async fn racing_workers_on_several_instances_claim_each_job_once() {
    let started = Instant::now();
    let server = EtcdServer::start()
        .await
        .expect("etcd must be installed and start (scripts/install-deps.sh installs it)");
    let gate = TxnGate::new();
    let a = control(&server, &gate).await;
    let b = control(&server, &gate).await;
    let older = recorded(&a, "m1", at(0)).await;
    let newer = recorded(&b, "m2", at(1)).await;

    // Four workers, two per instance, all asking when both jobs are due. Each reads the
    // job list, picks the older job, and waits at the gate with its transaction; then all
    // four compare-and-swap the same record.
    gate.arm(4);
    let now = at(20_000);
    let (w1, w2, w3, w4) = tokio::join!(
        a.recordings.claim("w1", now),
        a.recordings.claim("w2", now),
        b.recordings.claim("w3", now),
        b.recordings.claim("w4", now),
    );
    let jobs: Vec<StitchJob> = [w1, w2, w3, w4]
        .into_iter()
        .filter_map(|r| r.expect("claim"))
        .collect();
    let claimed: BTreeSet<&RecordingId> = jobs.iter().map(|j| &j.recording).collect();
    assert_eq!(jobs.len(), 2, "one winner per job: {jobs:?}");
    assert_eq!(claimed, BTreeSet::from([&older, &newer]));
    for job in &jobs {
        let record = a
            .recordings
            .get(&Caller::Operator, &job.recording)
            .await
            .unwrap();
        assert_eq!(record.state, RecordingState::Stitching);
        assert_eq!(record.attempts.len(), 1, "no second claim slipped in");
        assert_eq!(record.claim.unwrap().id, job.claim);
    }
    let claims = a.recordings.metrics().jobs().claims + b.recordings.metrics().jobs().claims;
    assert_eq!(claims, 2);

    // The worker holding the older job reports once through one instance, then stops.
    // After its lease, a worker on the other instance takes the job over, and the first
    // worker's report and completion are refused (whichever instance they reach).
    let first = jobs.iter().find(|j| j.recording == older).unwrap();
    let done = jobs.iter().find(|j| j.recording == newer).unwrap();
    let newer_output = Output {
        key: format!("recordings/{newer}/output.webm"),
        bytes: 10,
        duration_ms: 20_000,
    };
    let state = b
        .recordings
        .complete(
            &newer,
            &done.claim,
            StitchResult::Succeeded(newer_output),
            at(20_001),
        )
        .await
        .unwrap();
    assert_eq!(state, RecordingState::Ready);
    let (holder, other) = (&a, &b);
    holder
        .recordings
        .report(&older, &first.claim, 0.1, at(20_001))
        .await
        .unwrap();
    let expiry = at(20_001 + LEASE.as_millis() as u64);
    let second = other
        .recordings
        .claim("w5", expiry)
        .await
        .unwrap()
        .expect("the expired job");
    assert_eq!(
        (second.recording.clone(), second.attempt),
        (older.clone(), 2)
    );
    let refused = holder
        .recordings
        .report(&older, &first.claim, 0.2, expiry)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let output = Output {
        key: format!("recordings/{older}/output.webm"),
        bytes: 10,
        duration_ms: 20_000,
    };
    let refused = holder
        .recordings
        .complete(
            &older,
            &first.claim,
            StitchResult::Succeeded(output.clone()),
            expiry,
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let state = other
        .recordings
        .complete(
            &older,
            &second.claim,
            StitchResult::Succeeded(output),
            expiry,
        )
        .await
        .unwrap();
    assert_eq!(state, RecordingState::Ready);

    // A control instance started afterwards (a restart) sees it all in etcd.
    let restarted = control(&server, &gate).await;
    let m1 = MeetingId::new("m1").unwrap();
    let listed = restarted
        .recordings
        .list(&Caller::Operator, &m1)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, RecordingState::Ready);
    assert_eq!(
        listed[0].attempts[0].end,
        Some(AttemptEnd::Expired { at: expiry })
    );
    assert_eq!(restarted.recordings.outstanding_jobs().await.unwrap(), 0);
    eprintln!("claim race on etcd: {:?}", started.elapsed());
}
