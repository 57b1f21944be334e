//! The control plane as real processes: one etcd-server, two `fanout-control` instances
//! on it, and three forwarders in two regions registering over gRPC (a forwarder here is
//! its Register/Heartbeat/WatchDesiredState calls; stopping its heartbeats is its death).
//! Covers health, placement by region, bad arguments and their status codes, concurrent
//! joins through both instances never placing a meeting twice, the desired state a
//! forwarder receives, failover with FORWARDER_CHANGED after a lease expires, and that
//! killing an instance loses none of the requests it acknowledged.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_control::api::pb;
use fanout_control::testing::EtcdServer;
use support::{credentials, register, with_bearer, Control, OPERATOR};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

async fn create(channel: Channel, id: &str, passcode: Option<&str>) -> Result<(), tonic::Status> {
    pb::meetings_client::MeetingsClient::new(channel)
        .create_meeting(with_bearer(
            pb::CreateMeetingRequest {
                meeting_id: id.into(),
                kind: pb::MeetingKind::Meeting.into(),
                title: format!("meeting {id}"),
                passcode: passcode.map(str::to_owned),
                ..Default::default()
            },
            OPERATOR,
        ))
        .await
        .map(|_| ())
}

async fn join(
    channel: Channel,
    meeting: &str,
    region: &str,
    passcode: Option<&str>,
) -> Result<pb::JoinMeetingResponse, tonic::Status> {
    let mut request = Request::new(pb::JoinMeetingRequest {
        meeting_id: meeting.into(),
        display_name: "someone".into(),
        passcode: passcode.map(str::to_owned),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-fanout-region", MetadataValue::try_from(region).unwrap());
    pb::meetings_client::MeetingsClient::new(channel)
        .join_meeting(request)
        .await
        .map(|r| r.into_inner())
}

/// The next desired-state update, within 10 s.
async fn next_update(
    desired: &mut tonic::Streaming<pb::DesiredStateUpdate>,
) -> pb::DesiredStateUpdate {
    tokio::time::timeout(Duration::from_secs(10), desired.message())
        .await
        .expect("an update within 10 s")
        .unwrap()
        .unwrap()
}

fn port_of(address: &str) -> u32 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_three_forwarders_two_regions() {
    let etcd = EtcdServer::start().await.expect("etcd starts");
    let dir = tempfile::tempdir().unwrap();
    credentials(dir.path(), "[registry]\nlease_ttl_ms = 1500\n\n[placement]\nregion_latency = [{ from = \"eu\", to = \"us\", ms = 90 }]\n");
    let a = Control::start(dir.path(), etcd.endpoint(), "a");
    let b = Control::start(dir.path(), etcd.endpoint(), "b");
    let (ca, cb) = (a.channel().await, b.channel().await);

    // Health: both services serving, on both instances.
    for channel in [&ca, &cb] {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "fanout.control.v1.Meetings".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    // Three forwarders in two regions, each with its own port range.
    let forwarders: BTreeMap<&str, (u32, u32)> = [
        ("eu-1", (41000, 41099)),
        ("eu-2", (42000, 42099)),
        ("us-1", (43000, 43099)),
    ]
    .into_iter()
    .collect();
    let mut registered = BTreeMap::new();
    for (id, ports) in &forwarders {
        let region = &id[..2];
        registered.insert(*id, register(ca.clone(), id, region, *ports, 1000).await);
    }
    let owner = |address: &str| -> &str {
        let port = port_of(address);
        forwarders
            .iter()
            .find(|(_, (lo, hi))| (*lo..=*hi).contains(&port))
            .map(|(id, _)| *id)
            .unwrap_or_else(|| panic!("{address} is in no forwarder's range"))
    };

    // Bad arguments get precise codes and change nothing.
    let status = pb::meetings_client::MeetingsClient::new(ca.clone())
        .create_meeting(pb::CreateMeetingRequest {
            meeting_id: "x".into(),
            kind: pb::MeetingKind::Meeting.into(),
            title: "no credential".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        create(ca.clone(), "bad/id", None).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    create(ca.clone(), "secret-room", Some("1234"))
        .await
        .unwrap();
    assert_eq!(
        create(cb.clone(), "secret-room", None)
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    assert_eq!(
        join(cb.clone(), "secret-room", "eu", Some("9999"))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        join(cb.clone(), "nowhere", "eu", None)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // Placement by region: the first joiner's region decides.
    create(ca.clone(), "us-meeting", None).await.unwrap();
    let us = join(cb.clone(), "us-meeting", "us", None).await.unwrap();
    assert_eq!(owner(&us.forwarder_address), "us-1");
    assert_eq!(us.forwarder_id, "us-1");
    assert_eq!(us.tracks.len(), 3, "audio, camera, screen SSRCs assigned");

    // Concurrent joins through both instances: one placement per meeting, ever.
    for round in 0..3 {
        let mut tasks = Vec::new();
        for m in 0..10 {
            let id = format!("r{round}-m{m}");
            create(ca.clone(), &id, None).await.unwrap();
            for j in 0..6 {
                let channel = if j % 2 == 0 { ca.clone() } else { cb.clone() };
                let id = id.clone();
                tasks.push(tokio::spawn(async move {
                    (
                        id.clone(),
                        join(channel, &id, "eu", None)
                            .await
                            .expect("join")
                            .forwarder_address,
                    )
                }));
            }
        }
        let mut placed: BTreeMap<String, String> = BTreeMap::new();
        for task in tasks {
            let (id, address) = task.await.unwrap();
            assert!(
                owner(&address).starts_with("eu"),
                "{id} placed in eu: {address}"
            );
            let first = placed.entry(id.clone()).or_insert_with(|| address.clone());
            assert_eq!(*first, address, "{id}: every join sees one placement");
        }
        let mut ports: Vec<&String> = placed.values().collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), placed.len(), "each meeting its own port");
    }

    // Metrics count calls by method and status.
    let scrape = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(b.metrics).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    };
    let joins_ok = scrape
        .lines()
        .find(|l| {
            l.starts_with("fanout_control_calls_total{method=\"Meetings/JoinMeeting\",code=\"Ok\"}")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no JoinMeeting count:\n{scrape}"));
    assert!(joins_ok >= 30, "{joins_ok} joins answered by b");
    assert!(scrape.contains("code=\"NotFound\"} 1"), "{scrape}");
    assert!(
        scrape.contains("fanout_control_live_forwarders 3"),
        "{scrape}"
    );

    // The desired state of us-1 holds us-meeting and the leg with the join's keys.
    let mut desired = pb::forwarders_client::ForwardersClient::new(cb.clone())
        .watch_desired_state(with_bearer(
            pb::WatchDesiredStateRequest {
                forwarder_id: "us-1".into(),
                after_revision: None,
            },
            &registered["us-1"].session,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), desired.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(pb::desired_state_update::Update::Snapshot(snapshot)) = first.update else {
        panic!("the first update is a snapshot: {first:?}");
    };
    assert_eq!(snapshot.meetings.len(), 1);
    assert_eq!(snapshot.meetings[0].meeting_id, "us-meeting");
    assert_eq!(snapshot.meetings[0].listen_address, us.forwarder_address);
    assert_eq!(snapshot.legs.len(), 1);
    let leg = &snapshot.legs[0];
    assert_eq!(leg.participant_id, us.participant_id);
    use base64::Engine as _;
    let sent = base64::engine::general_purpose::STANDARD
        .decode(us.send_key.strip_prefix("inline:").unwrap())
        .unwrap();
    let inbound = leg.inbound_key.as_ref().unwrap();
    assert_eq!(
        [inbound.master_key.clone(), inbound.master_salt.clone()].concat(),
        sent
    );
    // Another forwarder's session cannot watch us-1.
    let status = pb::forwarders_client::ForwardersClient::new(cb.clone())
        .watch_desired_state(with_bearer(
            pb::WatchDesiredStateRequest {
                forwarder_id: "us-1".into(),
                after_revision: None,
            },
            &registered["eu-1"].session,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // A second join shows up as a change.
    let second = join(ca.clone(), "us-meeting", "us", None).await.unwrap();
    let change = tokio::time::timeout(Duration::from_secs(10), desired.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = format!("{change:?}");
    assert!(text.contains(&second.participant_id), "{text}");

    // Recording is meeting state: the plan of us-meeting names the recording while it
    // runs (the forwarder taps its media for it), and only the plan changes.
    let started = pb::meetings_client::MeetingsClient::new(ca.clone())
        .start_recording(with_bearer(
            pb::StartRecordingRequest {
                meeting_id: "us-meeting".into(),
            },
            OPERATOR,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!started.recording_id.is_empty());
    let plan_change = |update: pb::DesiredStateUpdate| -> Vec<pb::MeetingPlan> {
        let Some(pb::desired_state_update::Update::Changes(changes)) = update.update else {
            panic!("a change: {update:?}");
        };
        changes
            .changes
            .into_iter()
            .map(|c| match c.change {
                Some(pb::desired_state_change::Change::MeetingUpserted(plan)) => plan,
                other => panic!("only the plan changes: {other:?}"),
            })
            .collect()
    };
    let plans = plan_change(next_update(&mut desired).await);
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0].recording_id, started.recording_id);
    pb::meetings_client::MeetingsClient::new(cb.clone())
        .stop_recording(with_bearer(
            pb::StopRecordingRequest {
                meeting_id: "us-meeting".into(),
            },
            OPERATOR,
        ))
        .await
        .unwrap();
    let plans = plan_change(next_update(&mut desired).await);
    assert_eq!(plans[0].recording_id, "", "stopped");

    // The forwarder holds only what a participant sends: every join is assigned audio,
    // camera and screen, and the leg says which of them are paused. Muting and sharing
    // change that leg alone.
    let paused = |leg: &pb::Leg| {
        let mut kinds: Vec<_> = leg
            .paused_tracks
            .iter()
            .map(|&k| pb::TrackKind::try_from(k).unwrap())
            .collect();
        kinds.sort();
        kinds
    };
    assert_eq!(leg.tracks.len(), 3, "assigned: audio, camera, screen");
    assert_eq!(
        paused(leg),
        [pb::TrackKind::Screen],
        "joined unmuted, not sharing"
    );
    let leg_change = |update: pb::DesiredStateUpdate| -> pb::Leg {
        let Some(pb::desired_state_update::Update::Changes(changes)) = update.update else {
            panic!("a change: {update:?}");
        };
        let [pb::DesiredStateChange {
            change: Some(pb::desired_state_change::Change::LegUpserted(leg)),
        }] = &changes.changes[..]
        else {
            panic!("one leg changes: {changes:?}");
        };
        leg.clone()
    };
    pb::meetings_client::MeetingsClient::new(cb.clone())
        .set_mute(with_bearer(
            pb::SetMuteRequest {
                meeting_id: "us-meeting".into(),
                audio_muted: Some(true),
                ..Default::default()
            },
            &second.join_token,
        ))
        .await
        .unwrap();
    let muted = leg_change(next_update(&mut desired).await);
    assert_eq!(muted.participant_id, second.participant_id);
    assert_eq!(
        paused(&muted),
        [pb::TrackKind::Audio, pb::TrackKind::Screen]
    );
    pb::meetings_client::MeetingsClient::new(ca.clone())
        .start_screen_share(with_bearer(
            pb::StartScreenShareRequest {
                meeting_id: "us-meeting".into(),
            },
            &second.join_token,
        ))
        .await
        .unwrap();
    let sharing = leg_change(next_update(&mut desired).await);
    assert_eq!(paused(&sharing), [pb::TrackKind::Audio]);
    assert_eq!(
        sharing.inbound_key, muted.inbound_key,
        "same keys, same leg"
    );

    // Failover: a meeting on eu-1 watched through instance b; eu-1 stops heartbeating.
    create(ca.clone(), "failover", None).await.unwrap();
    let mut on_eu1 = None;
    for attempt in 0..20 {
        let joined = join(ca.clone(), "failover", "eu", None).await.unwrap();
        if owner(&joined.forwarder_address) == "eu-1" {
            on_eu1 = Some(joined);
            break;
        }
        // Placed on eu-2: try another meeting.
        let id = format!("failover-{attempt}");
        create(ca.clone(), &id, None).await.unwrap();
        let joined = join(ca.clone(), &id, "eu", None).await.unwrap();
        if owner(&joined.forwarder_address) == "eu-1" {
            on_eu1 = Some(joined);
            break;
        }
    }
    let victim = on_eu1.expect("some meeting lands on eu-1");
    let meeting_id = victim.meeting.as_ref().unwrap().meeting_id.clone();
    let mut watch = pb::meetings_client::MeetingsClient::new(cb.clone())
        .watch_meeting(with_bearer(
            pb::WatchMeetingRequest {
                meeting_id: meeting_id.clone(),
                after_sequence: None,
            },
            &victim.join_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let snapshot = watch.message().await.unwrap().unwrap();
    assert!(matches!(
        snapshot.update,
        Some(pb::meeting_update::Update::Snapshot(_))
    ));
    // Recording when the forwarder dies: the recording goes on where the meeting moves.
    let recording = pb::meetings_client::MeetingsClient::new(cb.clone())
        .start_recording(with_bearer(
            pb::StartRecordingRequest {
                meeting_id: meeting_id.clone(),
            },
            OPERATOR,
        ))
        .await
        .unwrap()
        .into_inner()
        .recording_id;
    registered["eu-1"].alive.store(false, Ordering::SeqCst);
    let killed = Instant::now();
    let moved = loop {
        let update = tokio::time::timeout(Duration::from_secs(15), watch.message())
            .await
            .expect("FORWARDER_CHANGED within the lease TTL + 5 s")
            .unwrap()
            .unwrap();
        if let Some(pb::meeting_update::Update::ForwarderChanged(changed)) = update.update {
            break changed;
        }
    };
    let after = killed.elapsed();
    assert!(
        after < Duration::from_millis(1500 + 5000 + 1500),
        "moved after {after:?}"
    );
    assert_eq!(moved.forwarder_id, "eu-2", "same region first");
    assert_eq!(owner(&moved.forwarder_address), "eu-2");
    // A new join gets the new placement.
    let again = join(cb.clone(), &meeting_id, "eu", None).await.unwrap();
    assert_eq!(again.forwarder_address, moved.forwarder_address);
    let mut on_eu2 = pb::forwarders_client::ForwardersClient::new(cb.clone())
        .watch_desired_state(with_bearer(
            pb::WatchDesiredStateRequest {
                forwarder_id: "eu-2".into(),
                after_revision: None,
            },
            &registered["eu-2"].session,
        ))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::desired_state_update::Update::Snapshot(snapshot)) =
        next_update(&mut on_eu2).await.update
    else {
        panic!("a snapshot first");
    };
    let plan = snapshot
        .meetings
        .iter()
        .find(|m| m.meeting_id == meeting_id)
        .expect("the moved meeting is planned on eu-2");
    assert_eq!(plan.recording_id, recording, "the same recording goes on");

    // Killing an instance loses nothing it acknowledged: every join of the rounds above
    // (half of them answered by a) is there when read through b.
    drop(a);
    let mut reader = pb::meetings_client::MeetingsClient::new(cb.clone());
    for round in 0..3 {
        for m in 0..10 {
            let meeting = reader
                .get_meeting(with_bearer(
                    pb::GetMeetingRequest {
                        meeting_id: format!("r{round}-m{m}"),
                    },
                    OPERATOR,
                ))
                .await
                .unwrap()
                .into_inner()
                .meeting
                .unwrap();
            assert_eq!(meeting.participants.len(), 6, "r{round}-m{m}");
        }
    }
    for f in registered.values() {
        f.alive.store(false, Ordering::SeqCst);
    }
    drop((b, etcd));
}

/// The acceptance's webinar plan, through real processes: 5,000 viewers (3,000 in eu,
/// 2,000 in us) joining through both instances land on ceil(n/1000) relays per region,
/// none with more than 1,000 viewers, and the presenter on the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webinar_of_5000_viewers_uses_ceil_n_over_1000_relays_per_region() {
    let etcd = EtcdServer::start().await.expect("etcd starts");
    let dir = tempfile::tempdir().unwrap();
    credentials(dir.path(), "");
    let a = Control::start(dir.path(), etcd.endpoint(), "a");
    let b = Control::start(dir.path(), etcd.endpoint(), "b");
    let (ca, cb) = (a.channel().await, b.channel().await);
    let mut registered = BTreeMap::new();
    for (id, region, ports) in [
        ("eu-1", "eu", (41000, 41099)),
        ("eu-2", "eu", (42000, 42099)),
        ("us-1", "us", (43000, 43099)),
    ] {
        registered.insert(id, register(ca.clone(), id, region, ports, 100_000).await);
    }
    pb::meetings_client::MeetingsClient::new(ca.clone())
        .create_meeting(with_bearer(
            pb::CreateMeetingRequest {
                meeting_id: "town-hall".into(),
                kind: pb::MeetingKind::Webinar.into(),
                title: "5,000 viewers".into(),
                host_key: Some("host-key-1234".into()),
                ..Default::default()
            },
            OPERATOR,
        ))
        .await
        .unwrap();
    let mut host = Request::new(pb::JoinMeetingRequest {
        meeting_id: "town-hall".into(),
        display_name: "presenter".into(),
        host_key: Some("host-key-1234".into()),
        ..Default::default()
    });
    host.metadata_mut()
        .insert("x-fanout-region", MetadataValue::from_static("eu"));
    let presenter = pb::meetings_client::MeetingsClient::new(ca.clone())
        .join_meeting(host)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(presenter.role, pb::Role::Host as i32);

    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..32 {
        let channel = if worker % 2 == 0 {
            ca.clone()
        } else {
            cb.clone()
        };
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut placed = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= 5000 {
                    break placed;
                }
                let region = if i % 5 < 3 { "eu" } else { "us" };
                let joined = join(channel.clone(), "town-hall", region, None)
                    .await
                    .expect("viewer joins");
                assert_eq!(joined.role, pb::Role::Attendee as i32);
                placed.push((region, joined.forwarder_address));
            }
        }));
    }
    let mut relays: BTreeMap<(&str, String), usize> = BTreeMap::new();
    for task in tasks {
        for (region, address) in task.await.unwrap() {
            *relays.entry((region, address)).or_default() += 1;
        }
    }
    for (region, viewers) in [("eu", 3000usize), ("us", 2000)] {
        let mine: Vec<usize> = relays
            .iter()
            .filter(|((r, _), _)| *r == region)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(mine.len(), viewers.div_ceil(1000), "{region}: {relays:?}");
        assert!(mine.iter().all(|&n| n <= 1000), "{region}: {relays:?}");
        assert_eq!(mine.iter().sum::<usize>(), viewers);
    }
    assert!(
        !relays
            .keys()
            .any(|(_, address)| *address == presenter.forwarder_address),
        "viewers are never on the origin's port"
    );

    // us-1 is told to run the us relay nodes (a plan per node, a leg per viewer) and to
    // hold the upstream end of each node's feed, the ingress's from the origin.
    let mut desired = pb::forwarders_client::ForwardersClient::new(cb.clone())
        .watch_desired_state(with_bearer(
            pb::WatchDesiredStateRequest {
                forwarder_id: "us-1".into(),
                after_revision: None,
            },
            &registered["us-1"].session,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), desired.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(pb::desired_state_update::Update::Snapshot(snapshot)) = first.update else {
        panic!("a snapshot first");
    };
    let plans: Vec<&str> = snapshot
        .meetings
        .iter()
        .map(|m| m.meeting_id.as_str())
        .collect();
    assert_eq!(plans.len(), 2, "{plans:?}");
    assert!(
        plans.iter().all(|p| p.starts_with("town-hall/us-")),
        "{plans:?}"
    );
    assert_eq!(snapshot.legs.len(), 2000);
    let upstream: Vec<&pb::RelayLink> = snapshot
        .relay_links
        .iter()
        .filter(|l| l.direction == pb::relay_link::Direction::Upstream as i32)
        .collect();
    assert_eq!(upstream.len(), 2, "each us node has its feed");
    assert!(
        upstream
            .iter()
            .any(|l| l.peer_forwarder_id == presenter.forwarder_id),
        "the us ingress is fed from the origin"
    );
    for f in registered.values() {
        f.alive.store(false, Ordering::SeqCst);
    }
    drop((a, b, etcd));
}
