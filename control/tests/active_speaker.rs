//! `ReportActiveSpeaker` through a real `fanout-control` on a real etcd: the forwarder
//! holding a meeting reports its dominant speaker and `WatchMeeting` delivers
//! ACTIVE_SPEAKER (once per change, not per report); another forwarder's session is
//! refused with PERMISSION_DENIED. (Helpers after control_cluster.rs.)

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fanout_control::api::pb;
use fanout_control::testing::EtcdServer;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const OPERATOR: &str = "operator-token-for-tests-0123456789";
const ENROLMENT: &str = "enrolment-token-for-tests-0123456789";

/// A `fanout-control` process, killed on drop.
struct Control {
    child: Child,
    address: SocketAddr,
}

impl Control {
    fn start(dir: &Path, etcd: &str) -> Control {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fanout-control"))
            .args(["--store", "etcd", "--etcd", etcd, "--listen", "127.0.0.1:0"])
            .arg("--secret-file")
            .arg(dir.join("secret"))
            .arg("--operator-token-file")
            .arg(dir.join("operator"))
            .arg("--enrolment-token-file")
            .arg(dir.join("enrolment"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fanout-control starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on ") {
                    let word = line[at + "listening on ".len()..].split_whitespace().next();
                    let _ = tx.send(word.unwrap_or("").to_owned());
                }
                if std::env::var_os("CONTROL_LOG").is_some() {
                    eprintln!("[control] {line}");
                }
            }
        });
        let address = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("fanout-control logs its address")
            .parse()
            .unwrap();
        Control { child, address }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.address))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn with_bearer<T>(message: T, credential: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {credential}")).unwrap(),
    );
    request
}

/// Register `id` and heartbeat until `alive` is cleared; returns the session token.
async fn register(channel: Channel, id: &str, ports: (u32, u32), alive: Arc<AtomicBool>) -> String {
    let mut client = pb::forwarders_client::ForwardersClient::new(channel);
    let response = client
        .register(with_bearer(
            pb::RegisterRequest {
                forwarder_id: id.into(),
                media_ip: "127.0.0.1".into(),
                region: "eu".into(),
                port_range_start: ports.0,
                port_range_end: ports.1,
                max_legs: 1000,
                ..Default::default()
            },
            ENROLMENT,
        ))
        .await
        .expect("register")
        .into_inner();
    let (session, id) = (response.session_token.clone(), id.to_owned());
    let interval = Duration::from_millis(response.heartbeat_interval_ms);
    tokio::spawn(async move {
        while alive.load(Ordering::SeqCst) {
            let _ = client
                .heartbeat(with_bearer(
                    pb::HeartbeatRequest {
                        forwarder_id: id.clone(),
                        ..Default::default()
                    },
                    &session,
                ))
                .await;
            tokio::time::sleep(interval).await;
        }
    });
    response.session_token
}

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
    std::fs::write(
        dir.path().join("secret"),
        "deployment-secret-for-tests-0123456789",
    )
    .unwrap();
    std::fs::write(dir.path().join("operator"), OPERATOR).unwrap();
    std::fs::write(dir.path().join("enrolment"), ENROLMENT).unwrap();
    let control = Control::start(dir.path(), etcd.endpoint());
    let channel = control.channel().await;

    let alive = Arc::new(AtomicBool::new(true));
    let mut sessions = std::collections::BTreeMap::new();
    for (id, ports) in [("f1", (41000, 41009)), ("f2", (42000, 42009))] {
        sessions.insert(
            id,
            register(channel.clone(), id, ports, alive.clone()).await,
        );
    }

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

    alive.store(false, Ordering::SeqCst);
    drop((control, etcd));
}
