//! End to end with every part a real process: etcd-server, two `fanout-control`
//! instances (forwarders on one, participants on the other), and three
//! `fanout-forwarder --control` processes in two regions. A meeting is placed in the
//! region of its first joiner. Two participants join over gRPC
//! and get the same forwarder address, their own SRTP keys and SSRCs; media from one
//! reaches the other through the forwarder the control plane programmed. Then that
//! forwarder is killed (SIGKILL): within the lease TTL plus 5 s the participants are told
//! (FORWARDER_CHANGED) where the meeting went, and media flows again through the other
//! forwarder with the same keys: the meeting is not lost. On the way, the forwarder's
//! dominant-speaker detection reaches the meeting's watchers as ACTIVE_SPEAKER.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fanout_control::api::pb;
use fanout_control::testing::EtcdServer;
use fanout_forwarder::ids::Ssrc;
use fanout_forwarder::rtcp;
use fanout_forwarder::rtp::RtpHeader;
use fanout_forwarder::srtp::{MasterKey, SrtpContext, SrtpProfile};
use fanout_tests::forwarder::{control_binary, forwarder_binary};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

const OPERATOR: &str = "operator-token-for-e2e-0123456789";
const ENROLMENT: &str = "enrolment-token-for-e2e-0123456789";
const LEASE_TTL: Duration = Duration::from_millis(1500);

/// A child process, killed on drop, whose stderr lines are scanned for `key` markers.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(name: &str, mut command: Command) -> Proc {
        let mut child = command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let name = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("E2E_LOG").is_some() {
                    eprintln!("[{name}] {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// The first word after `marker` in the log.
    fn wait_for(&self, marker: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no `{marker}` in the log"));
            if let Some(at) = line.find(marker) {
                let rest = &line[at + marker.len()..];
                return rest.split_whitespace().next().unwrap_or("").to_owned();
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scrape(address: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

fn with_bearer<T>(message: T, credential: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {credential}")).unwrap(),
    );
    request
}

/// One participant: its socket, its keys and its audio SSRC.
struct Participant {
    socket: UdpSocket,
    joined: pb::JoinMeetingResponse,
    sender: SrtpContext,
    receiver: SrtpContext,
    audio: u32,
    next_seq: u16,
}

impl Participant {
    fn new(joined: pb::JoinMeetingResponse) -> Participant {
        assert_eq!(joined.srtp_profile, pb::SrtpProfile::AeadAes128Gcm as i32);
        let profile = SrtpProfile::AeadAes128Gcm;
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let audio = joined
            .tracks
            .iter()
            .find(|t| t.kind == pb::TrackKind::Audio as i32)
            .expect("an audio track")
            .ssrcs[0];
        Participant {
            sender: SrtpContext::new(&MasterKey::from_inline(profile, &joined.send_key).unwrap()),
            receiver: SrtpContext::new(
                &MasterKey::from_inline(profile, &joined.receive_key).unwrap(),
            ),
            socket,
            joined,
            audio,
            next_seq: 1,
        }
    }

    /// A receiver report from the participant's audio SSRC: how a receive-only peer
    /// makes itself known to the forwarder.
    fn report(&mut self, to: &str) {
        let mut buf = [0u8; 256];
        let len = rtcp::write_receiver_report(&mut buf, Ssrc(self.audio), &[]).unwrap();
        let len = self.sender.protect_rtcp(&mut buf, len).unwrap();
        self.socket.send_to(&buf[..len], to).unwrap();
    }

    /// One audio packet whose payload is `tag` repeated, with the RFC 6464 audio level
    /// in the RFC 8285 one-byte header extension the join assigned.
    fn speak(&mut self, to: &str, tag: u8) {
        let id = self
            .joined
            .tracks
            .iter()
            .find(|t| t.kind == pb::TrackKind::Audio as i32)
            .map_or(0, |t| t.audio_level_extension_id as u8);
        assert!(
            (1..=14).contains(&id),
            "an audio-level extension id is assigned"
        );
        let mut p = vec![0u8; 12 + 8 + 160 + 16];
        p[0] = 0x90; // version 2, extension present
        p[1] = 111;
        p[2..4].copy_from_slice(&self.next_seq.to_be_bytes());
        p[4..8].copy_from_slice(&(u32::from(self.next_seq) * 960).to_be_bytes());
        p[8..12].copy_from_slice(&self.audio.to_be_bytes());
        // Speech at -10 dBov with a pause every fourth frame: the detector measures
        // speech against the speaker's own noise floor, the quietest recent frame.
        let level = if self.next_seq.is_multiple_of(4) {
            127
        } else {
            0x80 | 10
        };
        // 0xBEDE, one 32-bit word: [id | len-1 = 0] [V, level] [pad] [pad].
        p[12..20].copy_from_slice(&[0xBE, 0xDE, 0x00, 0x01, id << 4, level, 0, 0]);
        p[20..180].fill(tag);
        self.next_seq = self.next_seq.wrapping_add(1);
        let len = self.sender.protect_rtp(&mut p, 180).unwrap();
        self.socket.send_to(&p[..len], to).unwrap();
    }

    /// Wait until a packet with payload `tag` arrives from `from`, while `keep_going`
    /// keeps the other side talking; panics after `within`.
    fn hear(
        &mut self,
        from: &str,
        tag: u8,
        within: Duration,
        mut keep_going: impl FnMut(&mut Self),
    ) {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            keep_going(self);
            let Ok((n, source)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            if source.to_string() != from {
                continue; // still queued from before the move
            }
            let Ok(len) = self.receiver.unprotect_rtp(&mut buf[..n]) else {
                continue; // RTCP from the forwarder, say
            };
            let header = RtpHeader::parse(&buf[..len]).unwrap();
            if buf[header.header_len..len].iter().all(|&b| b == tag) {
                return;
            }
        }
        panic!("no packet tagged {tag} from {from} within {within:?}");
    }
}

async fn join(channel: Channel, meeting: &str, region: &'static str) -> pb::JoinMeetingResponse {
    let mut request = Request::new(pb::JoinMeetingRequest {
        meeting_id: meeting.into(),
        display_name: "someone".into(),
        srtp_profiles: vec![pb::SrtpProfile::AeadAes128Gcm.into()],
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-fanout-region", MetadataValue::from_static(region));
    pb::meetings_client::MeetingsClient::new(channel)
        .join_meeting(request)
        .await
        .expect("join")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn media_through_a_programmed_forwarder_survives_its_death() {
    let etcd = EtcdServer::start().await.expect("etcd-server starts");
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let secret = file("secret", "deployment-secret-for-e2e-0123456789");
    let operator = file("operator", OPERATOR);
    let enrolment = file("enrolment", ENROLMENT);
    let config = file(
        "control.toml",
        &format!("[registry]\nlease_ttl_ms = {}\n", LEASE_TTL.as_millis()),
    );

    // Two control instances on one etcd: forwarders talk to the first, participants to
    // the second, so every step crosses instances through the store.
    let mut controls = Vec::new();
    for name in ["control-a", "control-b"] {
        let mut command = Command::new(control_binary().unwrap());
        command
            .args(["--store", "etcd", "--etcd", etcd.endpoint()])
            .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
            .arg("--secret-file")
            .arg(&secret)
            .arg("--operator-token-file")
            .arg(&operator)
            .arg("--enrolment-token-file")
            .arg(&enrolment)
            .arg("--config")
            .arg(&config);
        let control = Proc::spawn(name, command);
        let metrics = control.wait_for("metrics at http://");
        let metrics = metrics.trim_end_matches("/metrics").to_owned();
        let address = control.wait_for("listening on ");
        controls.push((control, address, metrics));
    }
    let (address, metrics) = (controls[0].1.clone(), controls[0].2.clone());
    let channel = Channel::from_shared(format!("http://{}", controls[1].1))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut forwarders = Vec::new();
    for (id, region, ports) in [
        ("eu-1", "eu", "41000-41009"),
        ("eu-2", "eu", "42000-42009"),
        ("us-1", "us", "43000-43009"),
    ] {
        let mut command = Command::new(forwarder_binary().unwrap());
        command
            .args(["--control", &format!("http://{address}")])
            .args([
                "--forwarder-id",
                id,
                "--region",
                region,
                "--media-ip",
                "127.0.0.1",
            ])
            .args([
                "--listen",
                "127.0.0.1:0",
                "--port-range",
                ports,
                "--shards",
                "1",
            ])
            .args(["--progress-interval", "0"])
            .arg("--enrolment-token-file")
            .arg(&enrolment);
        forwarders.push((id, Proc::spawn(id, command)));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !scrape(&metrics).contains("fanout_control_live_forwarders 3") {
        assert!(Instant::now() < deadline, "the forwarders register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for id in ["e2e", "e2e-us"] {
        pb::meetings_client::MeetingsClient::new(channel.clone())
            .create_meeting(with_bearer(
                pb::CreateMeetingRequest {
                    meeting_id: id.into(),
                    kind: pb::MeetingKind::Meeting.into(),
                    title: "end to end".into(),
                    ..Default::default()
                },
                OPERATOR,
            ))
            .await
            .unwrap();
    }
    // Placed by region: the first joiner's.
    assert_eq!(
        join(channel.clone(), "e2e-us", "us").await.forwarder_id,
        "us-1"
    );
    let mut alice = Participant::new(join(channel.clone(), "e2e", "eu").await);
    let mut bob = Participant::new(join(channel.clone(), "e2e", "eu").await);
    assert!(alice.joined.forwarder_id.starts_with("eu-"));
    let first = alice.joined.forwarder_address.clone();
    assert_eq!(
        bob.joined.forwarder_address, first,
        "one meeting, one forwarder"
    );
    assert_ne!(alice.joined.send_key, bob.joined.send_key);

    // Bob makes himself known; Alice talks until Bob hears her (the forwarder learns its
    // legs from the desired-state stream a moment after the joins).
    let mut tag = 1u8;
    let alice_talks = |alice: &mut Participant, bob: &mut Participant, to: &str, tag: u8| {
        bob.report(to);
        alice.speak(to, tag);
    };
    {
        let to = first.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 2048];
        let mut heard = false;
        while !heard && Instant::now() < deadline {
            alice_talks(&mut alice, &mut bob, &to, tag);
            if let Ok((n, source)) = bob.socket.recv_from(&mut buf) {
                assert_eq!(source.to_string(), to);
                if let Ok(len) = bob.receiver.unprotect_rtp(&mut buf[..n]) {
                    let header = RtpHeader::parse(&buf[..len]).unwrap();
                    heard = buf[header.header_len..len].iter().all(|&b| b == tag);
                }
            }
        }
        assert!(heard, "Bob hears Alice through {to}");
    }

    // Watch the meeting as Alice, then kill the forwarder that runs it.
    let mut watch = pb::meetings_client::MeetingsClient::new(channel.clone())
        .watch_meeting(with_bearer(
            pb::WatchMeetingRequest {
                meeting_id: "e2e".into(),
                after_sequence: None,
            },
            &alice.joined.join_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let snapshot = watch.message().await.unwrap().unwrap();
    assert!(matches!(
        snapshot.update,
        Some(pb::meeting_update::Update::Snapshot(_))
    ));

    // Alice keeps talking: the forwarder's dominant-speaker detection names her, and the
    // control plane tells the meeting (ACTIVE_SPEAKER).
    let deadline = Instant::now() + Duration::from_secs(20);
    let speaker = loop {
        assert!(Instant::now() < deadline, "ACTIVE_SPEAKER within 20 s");
        for _ in 0..5 {
            alice.speak(&first, tag);
        }
        match tokio::time::timeout(Duration::from_millis(100), watch.message()).await {
            Ok(Ok(Some(update))) => {
                if let Some(pb::meeting_update::Update::ActiveSpeaker(s)) = update.update {
                    break s;
                }
            }
            Ok(other) => panic!("the watch ended: {other:?}"),
            Err(_) => {} // nothing yet: keep talking
        }
    };
    assert_eq!(speaker.participant_id, alice.joined.participant_id);
    let victim = alice.joined.forwarder_id.clone();
    let index = forwarders.iter().position(|(id, _)| *id == victim).unwrap();
    let (_, mut dead) = forwarders.remove(index);
    dead.child.kill().unwrap();
    let killed = Instant::now();
    let moved = loop {
        let update = tokio::time::timeout(LEASE_TTL + Duration::from_secs(8), watch.message())
            .await
            .expect("FORWARDER_CHANGED arrives")
            .unwrap()
            .unwrap();
        if let Some(pb::meeting_update::Update::ForwarderChanged(changed)) = update.update {
            break changed;
        }
    };
    let took = killed.elapsed();
    assert!(
        took < LEASE_TTL + Duration::from_secs(5),
        "re-placed {took:?} after the kill (lease {LEASE_TTL:?})"
    );
    assert_ne!(moved.forwarder_id, victim);
    assert!(
        moved.forwarder_id.starts_with("eu-"),
        "re-placed in the same region"
    );
    let second = moved.forwarder_address.clone();
    assert_ne!(second, first);

    // Same keys, new address: a fresh receive context (the new forwarder's sequence and
    // rollover counter start anew), and media flows again.
    bob.receiver = SrtpContext::new(
        &MasterKey::from_inline(SrtpProfile::AeadAes128Gcm, &bob.joined.receive_key).unwrap(),
    );
    tag = 2;
    let to = second.clone();
    bob.hear(&to, tag, Duration::from_secs(20), |bob| {
        bob.report(&to);
        alice.speak(&to, tag);
    });
    let _: SocketAddr = second.parse().unwrap();
    drop((forwarders, controls, etcd));
}
