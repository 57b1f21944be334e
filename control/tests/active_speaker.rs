//! `ReportActiveSpeaker` through a real `fanout-control` on a real etcd: the forwarder
//! holding a meeting reports its dominant speaker and `WatchMeeting` delivers
//! ACTIVE_SPEAKER (once per change, not per report); another forwarder's session is
//! refused with PERMISSION_DENIED. (Helpers in support/.)

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fanout_control::api::pb;
use fanout_control::testing::EtcdServer;
use support::{credentials, register, with_bearer, Control, OPERATOR};
use tonic::transport::Channel;
use tonic::{Code, Status};

async fn join(channel: Channel, meeting: &str, name: &str) -> pb::JoinMeetingResponse {
    pb::meetings_client::MeetingsClient::new(channel)
        .join_meeting(pb::JoinMeetingRequest {
            meeting_id: meeting.into(),
            display_name: name.into(),
            ..Default::default()
        })
        .await
        .expect("join")
        .into_inner()
}

async fn report(
    channel: Channel,
    session: &str,
    forwarder: &str,
    meeting: &str,
    participant: &str,
) -> Result<(), Status> {
    pb::forwarders_client::ForwardersClient::new(channel)
        .report_active_speaker(with_bearer(
            pb::ReportActiveSpeakerRequest {
                forwarder_id: forwarder.into(),
                meeting_id: meeting.into(),
                participant_id: participant.into(),
            },
            session,
        ))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holding_forwarder_reports_the_active_speaker_and_no_other_may() {
    let etcd = EtcdServer::start().await.expect("etcd starts");
    let dir = tempfile::tempdir().unwrap();
    credentials(dir.path(), "");
    let control = Control::start(dir.path(), etcd.endpoint(), "control");
    let channel = control.channel().await;

    let mut forwarders = BTreeMap::new();
    for (id, ports) in [("f1", (41000, 41009)), ("f2", (42000, 42009))] {
        forwarders.insert(id, register(channel.clone(), id, "eu", ports, 1000).await);
    }
    let sessions: BTreeMap<&str, String> = forwarders
        .iter()
        .map(|(id, f)| (*id, f.session.clone()))
        .collect();

    pb::meetings_client::MeetingsClient::new(channel.clone())
        .create_meeting(with_bearer(
            pb::CreateMeetingRequest {
                meeting_id: "talk".into(),
                kind: pb::MeetingKind::Meeting.into(),
                title: "who speaks".into(),
                ..Default::default()
            },
            OPERATOR,
        ))
        .await
        .unwrap();
    let alice = join(channel.clone(), "talk", "alice").await;
    let bob = join(channel.clone(), "talk", "bob").await;
    let holder = alice.forwarder_id.clone();
    let other = if holder == "f1" { "f2" } else { "f1" };
    assert!(sessions.contains_key(holder.as_str()), "placed on {holder}");

    let mut watch = pb::meetings_client::MeetingsClient::new(channel.clone())
        .watch_meeting(with_bearer(
            pb::WatchMeetingRequest {
                meeting_id: "talk".into(),
                after_sequence: None,
            },
            &alice.join_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert!(matches!(
        first.update,
        Some(pb::meeting_update::Update::Snapshot(_))
    ));

    // Another forwarder may not report, with its own session or with the holder's id.
    let refused = report(
        channel.clone(),
        &sessions[other],
        other,
        "talk",
        &bob.participant_id,
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = report(
        channel.clone(),
        &sessions[other],
        &holder,
        "talk",
        &bob.participant_id,
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // The holder reports bob (twice: the repeat is no change), nobody, then alice.
    let holder_session = &sessions[holder.as_str()];
    for speaker in [
        &bob.participant_id,
        &bob.participant_id,
        "",
        &alice.participant_id,
    ] {
        report(channel.clone(), holder_session, &holder, "talk", speaker)
            .await
            .unwrap_or_else(|e| panic!("report {speaker:?}: {e:?}"));
    }
    let mut speakers = Vec::new();
    while speakers.len() < 2 {
        let update = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("ACTIVE_SPEAKER within 10 s")
            .unwrap()
            .expect("the stream goes on");
        if let Some(pb::meeting_update::Update::ActiveSpeaker(speaker)) = update.update {
            speakers.push(speaker.participant_id);
        }
    }
    assert_eq!(
        speakers,
        [bob.participant_id.clone(), alice.participant_id.clone()],
        "one event per change, none for the repeat or for nobody"
    );

    for f in forwarders.values() {
        f.alive.store(false, Ordering::SeqCst);
    }
    drop((control, etcd));
}
