//! Unit tests of [`MeetingService`] on a [`MemoryStore`] with a fake [`Placer`].

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::*;
use crate::domain::{Limits, MeetingState};
use crate::service::Code;
use crate::store::{MemoryConfig, MemoryStore};
use crate::testing::OneForwarderPlacer;

const T0: UnixMillis = UnixMillis(1_700_000_000_000);

struct Fixture {
    store: Arc<MemoryStore>,
    placer: Arc<OneForwarderPlacer>,
    svc: Arc<MeetingService>,
}

fn fixture_with(store: MemoryStore) -> Fixture {
    let store = Arc::new(store);
    let placer = Arc::new(OneForwarderPlacer::default());
    let config = MeetingsConfig {
        passcode_cost: PasscodeCost::INSECURE_FOR_TESTS,
        ..MeetingsConfig::default()
    };
    let svc = MeetingService::new(
        store.clone(),
        TokenKey::generate().unwrap(),
        placer.clone(),
        config,
    );
    Fixture {
        store,
        placer,
        svc: Arc::new(svc),
    }
}

fn fixture() -> Fixture {
    fixture_with(MemoryStore::new())
}

fn mid(s: &str) -> MeetingId {
    MeetingId::new(s).unwrap()
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

fn input(name: &str) -> JoinInput {
    JoinInput {
        display_name: name.into(),
        ..JoinInput::default()
    }
}

fn code<T>(r: Result<T, ServiceError>) -> Code {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.code(),
    }
}

async fn revision(store: &MemoryStore) -> Revision {
    store.range("").await.unwrap().1
}

impl Fixture {
    async fn meeting(&self, id: &str, spec: MeetingSpec) -> MeetingId {
        self.svc.create(Some(mid(id)), spec, T0).await.unwrap();
        mid(id)
    }

    /// Joins and returns the join and a caller for it.
    async fn join(&self, id: &MeetingId, name: &str) -> (Joined, Caller) {
        let j = self.svc.join(id, input(name), T0).await.unwrap();
        let caller = self.svc.authenticate(&j.token, T0).unwrap();
        (j, caller)
    }

    async fn doc(&self, id: &MeetingId) -> Meeting {
        self.svc.get(id).await.unwrap().meeting
    }
}

async fn next_update(
    s: &mut BoxStream<'static, Result<MeetingUpdate, ServiceError>>,
) -> MeetingUpdate {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("an update within 5 s")
        .expect("stream open")
        .expect("no error")
}

async fn next_event(
    s: &mut BoxStream<'static, Result<MeetingUpdate, ServiceError>>,
) -> (Revision, MeetingEvent) {
    match next_update(s).await {
        MeetingUpdate::Event { revision, event } => (revision, event),
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn assert_quiet(s: &mut BoxStream<'static, Result<MeetingUpdate, ServiceError>>) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(200), s.next()).await {
        panic!("unexpected update: {item:?}");
    }
}

// ---------------------------------------------------------------------- create, get, list

#[tokio::test]
async fn create_get_list() {
    let f = fixture();
    let a = f.meeting("a", spec(MeetingKind::Meeting)).await;
    f.meeting("b", spec(MeetingKind::Webinar)).await;
    let random = f
        .svc
        .create(None, spec(MeetingKind::Meeting), T0)
        .await
        .unwrap();
    assert_eq!(random.id().as_str().len(), 22);

    let rev = revision(&f.store).await;
    assert_eq!(
        code(
            f.svc
                .create(Some(a.clone()), spec(MeetingKind::Meeting), T0)
                .await
        ),
        Code::AlreadyExists
    );
    assert_eq!(
        revision(&f.store).await,
        rev,
        "a refused create writes nothing"
    );

    let view = f.svc.get(&a).await.unwrap();
    assert_eq!(view.meeting.title(), "Weekly sync");
    assert_eq!(view.audience, 0);
    assert_eq!(code(f.svc.get(&mid("nope")).await), Code::NotFound);

    let all = f.svc.list(None, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    let after_a = f.svc.list(Some(&a), 1).await.unwrap();
    assert_eq!(after_a.len(), 1);
    assert_eq!(after_a[0].meeting.id(), &mid("b"));
}

#[tokio::test]
async fn corrupt_document_is_reported() {
    let f = fixture();
    f.store
        .put(
            &keys::meeting(&mid("bad")),
            br#"{"version":2}"#.to_vec(),
            None,
        )
        .await
        .unwrap();
    let err = f.svc.get(&mid("bad")).await.unwrap_err();
    assert!(matches!(err, ServiceError::Corrupt { .. }), "{err}");
    assert_eq!(err.code(), Code::Internal);
}

// ---------------------------------------------------------------------- join

#[tokio::test]
async fn join_places_keys_and_tokens() {
    let f = fixture();
    let m = f.meeting("m", spec(MeetingKind::Meeting)).await;
    let (h, host) = f.join(&m, "Host").await;
    assert_eq!((h.role, h.presence), (Role::Host, Presence::Admitted));
    assert_eq!(h.placement.address, "192.0.2.1:40000");
    assert_eq!(f.placer.calls(), 1);
    assert_eq!(h.srtp.profile, "AEAD_AES_128_GCM");
    for k in [&h.srtp.send_key, &h.srtp.receive_key] {
        let raw = STANDARD.decode(k.strip_prefix("inline:").unwrap()).unwrap();
        assert_eq!(raw.len(), 16 + 12);
    }
    assert_eq!(h.expires_at, T0.saturating_add(DEFAULT_TOKEN_TTL));
    let Caller::Participant(claims) = &host else {
        panic!("a participant")
    };
    assert_eq!(claims.participant, h.participant);

    // The transport record is what the forwarder reads.
    let kv = f
        .store
        .get(&keys::transport(&m, &h.participant))
        .await
        .unwrap()
        .unwrap();
    let t: TransportRecord = serde_json::from_slice(&kv.value).unwrap();
    assert_eq!(t.srtp, h.srtp);
    // Nothing secret in Debug.
    let dbg = format!("{h:?}");
    assert!(!dbg.contains(&h.token) && !dbg.contains(&h.srtp.send_key[7..]));

    let (p, _) = f.join(&m, "Panelist").await;
    assert_eq!(p.role, Role::Panelist);
    assert_eq!(f.doc(&m).await.present_count(), 2);

    // The client's profile list is honoured.
    let mut i = input("Old client");
    i.srtp_profiles = vec!["AES_CM_128_HMAC_SHA1_80".into()];
    let j = f.svc.join(&m, i, T0).await.unwrap();
    assert_eq!(j.srtp.profile, "AES_CM_128_HMAC_SHA1_80");
    let raw = STANDARD
        .decode(j.srtp.send_key.strip_prefix("inline:").unwrap())
        .unwrap();
    assert_eq!(raw.len(), 16 + 14);
    let mut i = input("Odd client");
    i.srtp_profiles = vec!["NULL".into()];
    assert_eq!(code(f.svc.join(&m, i, T0).await), Code::InvalidArgument);
}

#[tokio::test]
async fn passcode_and_domain_errors_write_nothing() {
    let f = fixture();
    let mut s = spec(MeetingKind::Meeting);
    s.passcode = Some(
        f.svc
            .hash_passcode(Passcode::new("open sesame").unwrap())
            .await
            .unwrap(),
    );
    let m = f.meeting("m", s).await;
    let rev = revision(&f.store).await;
    assert_eq!(
        code(f.svc.join(&m, input("x"), T0).await),
        Code::PermissionDenied
    );
    let mut wrong = input("x");
    wrong.passcode = Some(Passcode::new("open sesamE").unwrap());
    assert_eq!(
        code(f.svc.join(&m, wrong, T0).await),
        Code::PermissionDenied
    );
    let mut bad_name = input("");
    bad_name.passcode = Some(Passcode::new("open sesame").unwrap());
    assert_eq!(
        code(f.svc.join(&m, bad_name, T0).await),
        Code::InvalidArgument
    );
    assert_eq!(revision(&f.store).await, rev);

    let mut ok = input("Host");
    ok.passcode = Some(Passcode::new("open sesame").unwrap());
    let h = f.svc.join(&m, ok, T0).await.unwrap();
    let mut ok = input("Panelist");
    ok.passcode = Some(Passcode::new("open sesame").unwrap());
    let p = f.svc.join(&m, ok, T0).await.unwrap();
    let panelist = f.svc.authenticate(&p.token, T0).unwrap();
    let host = f.svc.authenticate(&h.token, T0).unwrap();

    // A panelist may not do what hosts do; nothing is written.
    let rev = revision(&f.store).await;
    assert_eq!(
        code(f.svc.set_recording(&panelist, &m, true, T0).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(f.svc.end(&panelist, &m, T0).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            f.svc
                .set_role(&host, &m, &h.participant, Role::Panelist, T0)
                .await
        ),
        Code::FailedPrecondition,
        "the last host stays"
    );
    // A change to the value it already has is no write either.
    f.svc
        .set_mute(
            &panelist,
            &m,
            &p.participant,
            MuteChange {
                audio: Some(false),
                video: None,
            },
            T0,
        )
        .await
        .unwrap();
    assert_eq!(revision(&f.store).await, rev);
}

#[tokio::test]
async fn tokens_are_checked() {
    let f = fixture();
    let a = f.meeting("a", spec(MeetingKind::Meeting)).await;
    let b = f.meeting("b", spec(MeetingKind::Meeting)).await;
    let (_, host_a) = f.join(&a, "Host A").await;
    f.join(&b, "Host B").await;

    for bad in ["", "garbage", "Bearer ", "Bearer x.y"] {
        assert_eq!(
            code(f.svc.authenticate(bad, T0)),
            Code::Unauthenticated,
            "{bad:?}"
        );
    }
    // Another service's key: forged.
    let other = fixture();
    let (j, _) = other
        .join(&other.meeting("a", spec(MeetingKind::Meeting)).await, "X")
        .await;
    assert_eq!(
        code(f.svc.authenticate(&j.token, T0)),
        Code::Unauthenticated
    );
    // Expired.
    let (j, _) = f.join(&a, "P").await;
    let late = T0.saturating_add(DEFAULT_TOKEN_TTL);
    assert_eq!(
        code(f.svc.authenticate(&j.token, late)),
        Code::Unauthenticated
    );
    assert!(f
        .svc
        .authenticate(&format!("Bearer {}", j.token), T0)
        .is_ok());

    // Meeting a's token on meeting b.
    assert_eq!(
        code(f.svc.set_recording(&host_a, &b, true, T0).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(f.svc.watch(&host_a, &b, None).await),
        Code::Unauthenticated
    );

    // After leaving, the token speaks for nobody.
    f.svc.leave(&host_a, T0).await.unwrap();
    assert_eq!(
        code(f.svc.set_recording(&host_a, &a, true, T0).await),
        Code::FailedPrecondition
    );
}

// ---------------------------------------------------------------------- every use case

#[tokio::test]
async fn meeting_use_cases() {
    let f = fixture();
    let mut s = spec(MeetingKind::Meeting);
    s.waiting_room = true;
    let m = f.meeting("m", s).await;
    let (h, host) = f.join(&m, "Host").await;
    let (a, alice) = f.join(&m, "Alice").await;
    let (b, _bob) = f.join(&m, "Bob").await;
    assert_eq!(a.presence, Presence::Waiting);

    f.svc.admit(&host, &m, &a.participant, T0).await.unwrap();
    f.svc.deny(&host, &m, &b.participant, T0).await.unwrap();
    let doc = f.doc(&m).await;
    assert_eq!(
        doc.participant(&a.participant).unwrap().presence,
        Presence::Admitted
    );
    assert_eq!(
        doc.participant(&b.participant).unwrap().presence,
        Presence::Left
    );
    assert!(f
        .store
        .get(&keys::transport(&m, &b.participant))
        .await
        .unwrap()
        .is_none());

    f.svc
        .set_mute(
            &alice,
            &m,
            &a.participant,
            MuteChange {
                audio: Some(true),
                video: None,
            },
            T0,
        )
        .await
        .unwrap();
    f.svc.start_screen_share(&alice, &m, T0).await.unwrap();
    assert_eq!(f.doc(&m).await.screen_sharer(None), Some(&a.participant));
    f.svc
        .stop_screen_share(&host, &m, &a.participant, T0)
        .await
        .unwrap();
    f.svc
        .set_role(&host, &m, &a.participant, Role::Host, T0)
        .await
        .unwrap();
    f.svc.set_recording(&alice, &m, true, T0).await.unwrap();
    f.svc
        .set_active_speaker(&Caller::Operator, &m, &h.participant, T0)
        .await
        .unwrap();
    let rooms = f
        .svc
        .create_breakouts(&host, &m, vec!["One".into(), "Two".into()], T0)
        .await
        .unwrap();
    assert_eq!(rooms.len(), 2);
    f.svc
        .move_to_breakout(&host, &m, &a.participant, Some(rooms[1].clone()), T0)
        .await
        .unwrap();
    let doc = f.doc(&m).await;
    assert!(doc.recording());
    assert_eq!(doc.active_speaker(None), Some(&h.participant));
    assert_eq!(
        doc.participant(&a.participant).unwrap().breakout.as_ref(),
        Some(&rooms[1])
    );
    assert_eq!(doc.participant(&a.participant).unwrap().role, Role::Host);
    f.svc.close_breakouts(&host, &m, T0).await.unwrap();
    assert!(f.doc(&m).await.breakouts().is_empty());

    f.svc.leave(&alice, T0).await.unwrap();
    assert_eq!(
        code(f.svc.leave(&alice, T0).await),
        Code::FailedPrecondition
    );
    assert!(f
        .store
        .get(&keys::transport(&m, &a.participant))
        .await
        .unwrap()
        .is_none());

    f.svc.end(&host, &m, T0).await.unwrap();
    assert!(matches!(
        f.doc(&m).await.state(),
        MeetingState::Ended { .. }
    ));
    assert_eq!(
        code(f.svc.join(&m, input("late"), T0).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(f.svc.set_recording(&host, &m, false, T0).await),
        Code::FailedPrecondition
    );
    let (transports, _) = f.store.range(&keys::transports(&m)).await.unwrap();
    assert!(transports.is_empty(), "ending deletes every key");
}

#[tokio::test]
async fn events_are_written_with_the_change_on_a_lease() {
    let f = fixture();
    let m = f.meeting("m", spec(MeetingKind::Meeting)).await;
    let (_, host) = f.join(&m, "Host").await;
    f.svc.set_recording(&host, &m, true, T0).await.unwrap();
    let (events, _) = f.store.range(&keys::events(&m)).await.unwrap();
    assert_eq!(events.len(), 2, "UserJoined, RecordingStarted");
    let lease = events[0].lease.expect("events are on a lease");
    assert!(events.iter().all(|kv| kv.lease == Some(lease)));
    // The doc and its event share the transaction's revision.
    let doc = f.store.get(&keys::meeting(&m)).await.unwrap().unwrap();
    assert!(events.iter().any(|e| e.mod_revision == doc.mod_revision));
    // An expired lease is replaced on the next write.
    f.store.revoke_lease(lease).await.unwrap();
    f.svc.set_recording(&host, &m, false, T0).await.unwrap();
    let (events, _) = f.store.range(&keys::events(&m)).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_ne!(events[0].lease, Some(lease));
}

// ---------------------------------------------------------------------- webinars

#[tokio::test]
async fn webinar_audience_lives_outside_the_document() {
    let f = fixture();
    let mut s = spec(MeetingKind::Webinar);
    s.waiting_room = true;
    let w = f.meeting("w", s).await;
    let (h, host) = f.join(&w, "Host").await;
    assert_eq!(h.role, Role::Host);
    let (v, viewer) = f.join(&w, "Viewer").await;
    let (x, _) = f.join(&w, "Other").await;
    assert_eq!((v.role, v.presence), (Role::Attendee, Presence::Waiting));
    assert_eq!(
        v.view.attendee.as_ref().map(|p| &p.id),
        Some(&v.participant)
    );

    let view = f.svc.get(&w).await.unwrap();
    assert_eq!(view.audience, 2);
    assert_eq!(
        view.meeting.participants().len(),
        1,
        "only the host is on the stage"
    );
    assert!(f
        .store
        .get(&keys::attendee(&w, &v.participant))
        .await
        .unwrap()
        .is_some());

    // A waiting attendee can only leave or be admitted.
    assert_eq!(
        code(
            f.svc
                .set_mute(
                    &viewer,
                    &w,
                    &v.participant,
                    MuteChange {
                        audio: Some(true),
                        video: None
                    },
                    T0
                )
                .await
        ),
        Code::FailedPrecondition
    );
    f.svc.admit(&host, &w, &v.participant, T0).await.unwrap();
    f.svc.deny(&host, &w, &x.participant, T0).await.unwrap();
    assert!(f
        .store
        .get(&keys::attendee(&w, &x.participant))
        .await
        .unwrap()
        .is_none());
    assert_eq!(f.svc.get(&w).await.unwrap().audience, 1);

    // Attendees are muted and may not publish or run the meeting.
    f.svc
        .set_mute(
            &viewer,
            &w,
            &v.participant,
            MuteChange {
                audio: Some(true),
                video: None,
            },
            T0,
        )
        .await
        .unwrap();
    assert_eq!(
        code(
            f.svc
                .set_mute(
                    &viewer,
                    &w,
                    &v.participant,
                    MuteChange {
                        audio: Some(false),
                        video: None
                    },
                    T0
                )
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(f.svc.start_screen_share(&viewer, &w, T0).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(f.svc.set_recording(&viewer, &w, true, T0).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(f.svc.end(&viewer, &w, T0).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            f.svc
                .set_mute(
                    &viewer,
                    &w,
                    &h.participant,
                    MuteChange {
                        audio: Some(true),
                        video: None
                    },
                    T0
                )
                .await
        ),
        Code::PermissionDenied
    );
    f.svc
        .stop_screen_share(&host, &w, &v.participant, T0)
        .await
        .unwrap();

    // Promotion moves the attendee onto the stage, in one transaction.
    f.svc
        .set_role(&host, &w, &v.participant, Role::Panelist, T0)
        .await
        .unwrap();
    assert!(f
        .store
        .get(&keys::attendee(&w, &v.participant))
        .await
        .unwrap()
        .is_none());
    let view = f.svc.get(&w).await.unwrap();
    assert_eq!(view.audience, 0);
    assert_eq!(
        view.meeting.participant(&v.participant).unwrap().role,
        Role::Panelist
    );
    f.svc.start_screen_share(&viewer, &w, T0).await.unwrap();

    // An attendee leaving deletes its record and transport.
    let (y, yara) = f.join(&w, "Yara").await;
    f.svc.admit(&host, &w, &y.participant, T0).await.unwrap();
    f.svc.leave(&yara, T0).await.unwrap();
    assert!(f
        .store
        .get(&keys::attendee(&w, &y.participant))
        .await
        .unwrap()
        .is_none());
    assert!(f
        .store
        .get(&keys::transport(&w, &y.participant))
        .await
        .unwrap()
        .is_none());
    assert_eq!(code(f.svc.leave(&yara, T0).await), Code::NotFound);

    // Ending deletes the audience; later calls by attendees fail as "ended".
    let (_, zed) = f.join(&w, "Zed").await;
    f.svc.end(&host, &w, T0).await.unwrap();
    assert_eq!(f.store.count(&keys::audience(&w)).await.unwrap().0, 0);
    assert_eq!(code(f.svc.leave(&zed, T0).await), Code::FailedPrecondition);
}

#[tokio::test]
async fn webinar_capacity_counts_the_audience() {
    let f = fixture();
    let mut s = spec(MeetingKind::Webinar);
    s.limits = Some(Limits {
        max_participants: 3,
        max_breakouts: 0,
    });
    let w = f.meeting("w", s).await;
    f.join(&w, "Host").await;
    f.join(&w, "A").await;
    f.join(&w, "B").await;
    let rev = revision(&f.store).await;
    assert_eq!(
        code(f.svc.join(&w, input("C"), T0).await),
        Code::ResourceExhausted
    );
    assert_eq!(revision(&f.store).await, rev);
}

// ---------------------------------------------------------------------- contention

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_to_a_meeting_all_land() {
    let f = fixture();
    let m = f.meeting("m", spec(MeetingKind::Meeting)).await;
    let joins: Vec<_> = (0..40)
        .map(|i| {
            let svc = f.svc.clone();
            let m = m.clone();
            tokio::spawn(async move { svc.join(&m, input(&format!("P{i}")), T0).await })
        })
        .collect();
    let mut hosts = 0;
    for j in joins {
        let j = j.await.unwrap().unwrap();
        hosts += usize::from(j.role == Role::Host);
    }
    let doc = f.doc(&m).await;
    assert_eq!(doc.present_count(), 40, "every join is in the document");
    assert_eq!(hosts, 1, "exactly one first joiner");
    let (transports, _) = f.store.range(&keys::transports(&m)).await.unwrap();
    assert_eq!(transports.len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_to_a_webinar_all_land() {
    let f = fixture();
    let w = f.meeting("w", spec(MeetingKind::Webinar)).await;
    f.join(&w, "Host").await;
    let joins: Vec<_> = (0..200)
        .map(|i| {
            let svc = f.svc.clone();
            let w = w.clone();
            tokio::spawn(async move { svc.join(&w, input(&format!("V{i}")), T0).await })
        })
        .collect();
    for j in joins {
        assert_eq!(j.await.unwrap().unwrap().role, Role::Attendee);
    }
    let view = f.svc.get(&w).await.unwrap();
    assert_eq!(view.audience, 200);
    assert_eq!(view.meeting.participants().len(), 1);
}

/// The documented bound: concurrent joins may overshoot `max_participants` by the number
/// of joins in flight, never more; once the burst is over the limit holds exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_webinar_joins_overshoot_at_most_by_those_in_flight() {
    let f = fixture();
    let mut s = spec(MeetingKind::Webinar);
    let limit = 20;
    s.limits = Some(Limits {
        max_participants: limit,
        max_breakouts: 0,
    });
    let w = f.meeting("w", s).await;
    f.join(&w, "Host").await;
    let in_flight = 60;
    let joins: Vec<_> = (0..in_flight)
        .map(|i| {
            let svc = f.svc.clone();
            let w = w.clone();
            tokio::spawn(async move { svc.join(&w, input(&format!("V{i}")), T0).await })
        })
        .collect();
    let (mut ok, mut full) = (0u64, 0u64);
    for j in joins {
        match j.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if e.code() == Code::ResourceExhausted => full += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    let seats = u64::from(limit) - 1;
    assert!(ok >= seats, "the seats fill: {ok} of {seats}");
    assert!(
        ok <= seats + in_flight,
        "overshoot bounded by joins in flight: {ok}"
    );
    assert_eq!(ok + full, in_flight);
    assert_eq!(f.svc.get(&w).await.unwrap().audience, ok);
    assert_eq!(
        code(f.svc.join(&w, input("late"), T0).await),
        Code::ResourceExhausted
    );
}

/// Losing every compare-and-swap ends in `Contention` (ABORTED: retry at once), having
/// written nothing. With no attempts allowed, every write "loses".
#[tokio::test]
async fn exhausted_retries_are_contention() {
    let f = fixture();
    let m = f.meeting("m", spec(MeetingKind::Meeting)).await;
    let (_, host) = f.join(&m, "Host").await;
    let strict = MeetingService::new(
        f.store.clone(),
        TokenKey::generate().unwrap(),
        f.placer.clone(),
        MeetingsConfig {
            max_cas_attempts: 0,
            ..MeetingsConfig::default()
        },
    );
    let rev = revision(&f.store).await;
    let err = strict.set_recording(&host, &m, true, T0).await.unwrap_err();
    assert!(matches!(err, ServiceError::Contention(_)), "{err}");
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(revision(&f.store).await, rev);
}

// ---------------------------------------------------------------------- watch

#[tokio::test]
async fn watch_filters_audience_events_for_attendees() {
    let f = fixture();
    let w = f.meeting("w", spec(MeetingKind::Webinar)).await;
    let (_, host) = f.join(&w, "Host").await;
    let (v1, viewer) = f.join(&w, "V1").await;
    let mut host_stream = f.svc.watch(&host, &w, None).await.unwrap();
    let mut viewer_stream = f.svc.watch(&viewer, &w, None).await.unwrap();
    let mut op_stream = f.svc.watch(&Caller::Operator, &w, None).await.unwrap();
    for s in [&mut host_stream, &mut viewer_stream, &mut op_stream] {
        match next_update(s).await {
            MeetingUpdate::Snapshot { view, .. } => assert_eq!(view.audience, 1),
            other => panic!("expected a snapshot, got {other:?}"),
        }
    }

    let (v2, _) = f.join(&w, "V2").await;
    f.svc.set_recording(&host, &w, true, T0).await.unwrap();
    f.svc
        .set_role(&host, &w, &v1.participant, Role::Panelist, T0)
        .await
        .unwrap();
    let (v3, _) = f.join(&w, "V3").await;

    for s in [&mut host_stream, &mut op_stream] {
        assert!(
            matches!(next_event(s).await.1, MeetingEvent::UserJoined { participant, .. } if participant == v2.participant)
        );
        assert!(matches!(
            next_event(s).await.1,
            MeetingEvent::RecordingStarted { .. }
        ));
        assert!(matches!(
            next_event(s).await.1,
            MeetingEvent::RoleChanged { .. }
        ));
        assert!(
            matches!(next_event(s).await.1, MeetingEvent::UserJoined { participant, .. } if participant == v1.participant)
        );
        assert!(
            matches!(next_event(s).await.1, MeetingEvent::UserJoined { participant, .. } if participant == v3.participant)
        );
    }
    // The attendee does not hear about V2 joining; after its promotion it sees everything.
    assert!(matches!(
        next_event(&mut viewer_stream).await.1,
        MeetingEvent::RecordingStarted { .. }
    ));
    assert!(matches!(
        next_event(&mut viewer_stream).await.1,
        MeetingEvent::RoleChanged { .. }
    ));
    assert!(
        matches!(next_event(&mut viewer_stream).await.1, MeetingEvent::UserJoined { participant, .. } if participant == v1.participant)
    );
    assert!(
        matches!(next_event(&mut viewer_stream).await.1, MeetingEvent::UserJoined { participant, .. } if participant == v3.participant)
    );
    assert_quiet(&mut viewer_stream).await;
}

#[tokio::test]
async fn watch_resumes_after_a_revision_without_duplicates() {
    let f = fixture();
    let m = f.meeting("m", spec(MeetingKind::Meeting)).await;
    let (_, host) = f.join(&m, "Host").await;
    let mut s = f.svc.watch(&host, &m, None).await.unwrap();
    let MeetingUpdate::Snapshot { revision: r0, .. } = next_update(&mut s).await else {
        panic!("snapshot first")
    };
    f.svc.set_recording(&host, &m, true, T0).await.unwrap();
    f.svc.set_recording(&host, &m, false, T0).await.unwrap();
    f.svc.set_recording(&host, &m, true, T0).await.unwrap();
    let (r1, _) = next_event(&mut s).await;
    let (r2, e2) = next_event(&mut s).await;
    let (r3, e3) = next_event(&mut s).await;
    assert!(r0 < r1 && r1 < r2 && r2 < r3);
    drop(s);

    let mut resumed = f.svc.watch(&host, &m, Some(r1)).await.unwrap();
    assert_eq!(next_event(&mut resumed).await, (r2, e2));
    assert_eq!(next_event(&mut resumed).await, (r3, e3));
    assert_quiet(&mut resumed).await;
    f.svc.end(&host, &m, T0).await.unwrap();
    assert!(matches!(
        next_event(&mut resumed).await.1,
        MeetingEvent::RecordingStopped { .. }
    ));
    assert!(matches!(
        next_event(&mut resumed).await.1,
        MeetingEvent::MeetingEnded { .. }
    ));
    assert!(
        resumed.next().await.is_none(),
        "the stream ends with the meeting"
    );
}

#[tokio::test]
async fn watch_after_compacted_history_starts_with_a_snapshot() {
    let f = fixture_with(MemoryStore::with_config(MemoryConfig {
        history_limit: 4,
        watch_batch: 16,
    }));
    let m = f.meeting("m", spec(MeetingKind::Meeting)).await;
    let (_, host) = f.join(&m, "Host").await;
    let old = revision(&f.store).await;
    for i in 0..6 {
        f.svc
            .set_recording(&host, &m, i % 2 == 0, T0)
            .await
            .unwrap();
    }
    let mut s = f.svc.watch(&host, &m, Some(old)).await.unwrap();
    match next_update(&mut s).await {
        MeetingUpdate::Snapshot { view, .. } => assert!(!view.meeting.recording()),
        other => panic!("expected a snapshot, got {other:?}"),
    }
    f.svc.set_recording(&host, &m, true, T0).await.unwrap();
    assert!(matches!(
        next_event(&mut s).await.1,
        MeetingEvent::RecordingStarted { .. }
    ));
}

// ---------------------------------------------------------------------- sizes

/// Bytes stored per participant: the growth of the meeting document per stage participant,
/// and one attendee record; each with its transport record. Printed for
/// docs/control-plane.md ("Size per participant"); run with `--nocapture` to see them.
#[tokio::test]
async fn size_per_participant() {
    let f = fixture();
    let n = 100;
    let m = f.meeting("size-meeting", spec(MeetingKind::Meeting)).await;
    let empty = f
        .store
        .get(&keys::meeting(&m))
        .await
        .unwrap()
        .unwrap()
        .value
        .len();
    let mut last = None;
    for i in 0..n {
        last = Some(f.join(&m, &format!("Participant {i:03}")).await.0);
    }
    let full = f
        .store
        .get(&keys::meeting(&m))
        .await
        .unwrap()
        .unwrap()
        .value
        .len();
    let per_stage = (full - empty) / n;
    let last = last.unwrap();
    let transport_key = keys::transport(&m, &last.participant);
    let transport = f.store.get(&transport_key).await.unwrap().unwrap();
    let transport_bytes = transport_key.len() + transport.value.len();

    let w = f.meeting("size-webinar", spec(MeetingKind::Webinar)).await;
    f.join(&w, "Host").await;
    let (v, _) = f.join(&w, "Participant 001").await;
    let key = keys::attendee(&w, &v.participant);
    let record = f.store.get(&key).await.unwrap().unwrap();
    let per_attendee = key.len() + record.value.len();

    let (events, _) = f.store.range(&keys::events(&w)).await.unwrap();
    let join_event = events.last().unwrap();
    let event_bytes = join_event.key.len() + join_event.value.len();

    println!("meeting document: {empty} B empty, {full} B with {n} participants");
    println!("per stage participant (in the document): {per_stage} B");
    println!("per attendee record (key + value): {per_attendee} B");
    println!("per transport record (key + value): {transport_bytes} B");
    println!("per join event (key + value): {event_bytes} B");
    println!(
        "document at etcd's 1.5 MiB limit: about {} stage participants",
        (3 * 1024 * 1024 / 2 - empty) / per_stage
    );
    // Sanity bounds, so that a format change that bloats them is noticed.
    assert!(per_stage < 400, "{per_stage}");
    assert!(per_attendee < 450, "{per_attendee}");
    assert!(transport_bytes < 800, "{transport_bytes}");
    // 50,000 attendees in separate records: no single value near the limit.
    assert!(record.value.len() < 1024);
}
