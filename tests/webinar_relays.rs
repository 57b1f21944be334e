//! A webinar through a relay tree, end to end with every part a real process: one
//! `fanout-control` on the memory store with at most two viewers per relay node, and
//! three `fanout-forwarder --control` processes on loopback in one region. The host joins
//! and is placed on the origin; six attendees join through the control plane and are
//! seated on relay nodes (three of them: an ingress fed by the origin, two more fed by the
//! ingress), which the forwarders run as meetings `{webinar}/{relay}` fed over SRTP relay
//! links. The host publishes audio and a three-encoding simulcast camera to the origin;
//! every viewer receives and authenticates both from its node, one camera encoding each.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fanout_control::api::pb;
use fanout_forwarder::ids::Ssrc;
use fanout_forwarder::rtcp;
use fanout_forwarder::rtp::RtpHeader;
use fanout_forwarder::srtp::{MasterKey, SrtpContext, SrtpProfile};
use fanout_tests::forwarder::{control_binary, forwarder_binary, http_get, Metrics};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

const OPERATOR: &str = "operator-token-for-webinar-0123456789";
const ENROLMENT: &str = "enrolment-token-for-webinar-0123456789";
const HOST_KEY: &str = "host-key-for-the-webinar";
const WEBINAR: &str = "webinar-e2e";
const VIEWERS: usize = 6;
/// Frames the host sends at least (20 ms apart).
const FRAMES: u16 = 100;

/// A child process, killed on drop, whose stderr lines are scanned for markers.
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

    /// Log lines so far containing `marker`.
    fn count(&self, marker: &str) -> usize {
        self.lines.try_iter().filter(|l| l.contains(marker)).count()
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

async fn join(channel: Channel, host_key: Option<&str>) -> pb::JoinMeetingResponse {
    let mut request = Request::new(pb::JoinMeetingRequest {
        meeting_id: WEBINAR.into(),
        display_name: "someone".into(),
        host_key: host_key.map(str::to_owned),
        srtp_profiles: vec![pb::SrtpProfile::AeadAes128Gcm.into()],
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-fanout-region", MetadataValue::from_static("eu"));
    pb::meetings_client::MeetingsClient::new(channel)
        .join_meeting(request)
        .await
        .expect("join")
        .into_inner()
}

/// One participant: its socket and keys.
struct Peer {
    socket: UdpSocket,
    joined: pb::JoinMeetingResponse,
    sender: SrtpContext,
    receiver: SrtpContext,
}

impl Peer {
    fn new(joined: pb::JoinMeetingResponse) -> Peer {
        assert_eq!(joined.srtp_profile, pb::SrtpProfile::AeadAes128Gcm as i32);
        let profile = SrtpProfile::AeadAes128Gcm;
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        Peer {
            sender: SrtpContext::new(&MasterKey::from_inline(profile, &joined.send_key).unwrap()),
            receiver: SrtpContext::new(
                &MasterKey::from_inline(profile, &joined.receive_key).unwrap(),
            ),
            socket,
            joined,
        }
    }

    fn ssrcs(&self, kind: pb::TrackKind) -> Vec<u32> {
        self.joined
            .tracks
            .iter()
            .find(|t| t.kind == kind as i32)
            .map(|t| t.ssrcs.clone())
            .unwrap_or_default()
    }

    /// A receiver report from the first SSRC the join assigned: how a receive-only peer
    /// makes itself known to its forwarder.
    fn report(&mut self) {
        let ssrc = self.joined.tracks[0].ssrcs[0];
        let mut buf = [0u8; 256];
        let len = rtcp::write_receiver_report(&mut buf, Ssrc(ssrc), &[]).unwrap();
        let len = self.sender.protect_rtcp(&mut buf, len).unwrap();
        self.socket
            .send_to(&buf[..len], &self.joined.forwarder_address)
            .unwrap();
    }

    /// Send one RTP packet: `payload` on `ssrc` with payload type `pt`.
    fn send(&mut self, ssrc: u32, pt: u8, seq: u16, timestamp: u32, payload: &[u8]) {
        let mut p = vec![0u8; 12 + payload.len() + 16];
        p[0] = 0x80;
        p[1] = 0x80 | pt;
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&timestamp.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p[12..12 + payload.len()].copy_from_slice(payload);
        let len = self.sender.protect_rtp(&mut p, 12 + payload.len()).unwrap();
        self.socket
            .send_to(&p[..len], &self.joined.forwarder_address)
            .unwrap();
    }

    /// Every authenticated RTP packet waiting: (SSRC, sequence number, last payload
    /// byte).
    fn receive(&mut self) -> Vec<(u32, u16, u8)> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok((n, source)) = self.socket.recv_from(&mut buf) {
            assert_eq!(source.to_string(), self.joined.forwarder_address);
            if (200..=207).contains(&buf[1]) {
                continue; // RTCP (relayed sender reports)
            }
            let len = self
                .receiver
                .unprotect_rtp(&mut buf[..n])
                .expect("the viewer authenticates what its relay sends");
            let header = RtpHeader::parse(&buf[..len]).unwrap();
            out.push((header.ssrc.0, header.sequence.0, buf[len - 1]));
        }
        out
    }
}

/// A single-packet VP8 frame (RFC 7741) whose payload ends in `tag`.
fn vp8(picture_id: u16, keyframe: bool, tag: u8) -> Vec<u8> {
    let mut p = vec![
        0x90,
        0xe0,
        0x80 | (picture_id >> 8) as u8 & 0x7f,
        picture_id as u8,
        0,
        0x20,
    ];
    if keyframe {
        p.extend_from_slice(&[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
    } else {
        p.extend_from_slice(&[0x01, 0x00, 0x00]);
    }
    p.extend_from_slice(&[tag; 200]);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn viewers_on_relay_nodes_receive_the_presenter() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let operator = file("operator", OPERATOR);
    let enrolment = file("enrolment", ENROLMENT);
    let config = file(
        "control.toml",
        "[registry]\nlease_ttl_ms = 3000\n\n[relays]\nmax_viewers_per_relay = 2\n",
    );
    let mut command = Command::new(control_binary().unwrap());
    command
        .args(["--store", "memory"])
        .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .arg("--operator-token-file")
        .arg(&operator)
        .arg("--enrolment-token-file")
        .arg(&enrolment)
        .arg("--config")
        .arg(&config);
    let control = Proc::spawn("control", command);
    let metrics = control.wait_for("metrics at http://");
    let metrics = metrics.trim_end_matches("/metrics").to_owned();
    let address = control.wait_for("listening on ");
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut forwarders = Vec::new();
    for (id, ports) in [
        ("eu-1", "44000-44009"),
        ("eu-2", "45000-45009"),
        ("eu-3", "46000-46009"),
    ] {
        let mut command = Command::new(forwarder_binary().unwrap());
        command
            .args(["--control", &format!("http://{address}")])
            .args(["--forwarder-id", id, "--region", "eu"])
            .args(["--media-ip", "127.0.0.1", "--listen", "127.0.0.1:0"])
            .args(["--metrics", "127.0.0.1:0"])
            .args(["--port-range", ports, "--shards", "1"])
            .args(["--progress-interval", "0"])
            .arg("--enrolment-token-file")
            .arg(&enrolment);
        let proc = Proc::spawn(id, command);
        let metrics = proc.wait_for("metrics at http://");
        let metrics: std::net::SocketAddr = metrics.trim_end_matches("/metrics").parse().unwrap();
        forwarders.push((id, proc, metrics));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !scrape(&metrics).contains("fanout_control_live_forwarders 3") {
        assert!(Instant::now() < deadline, "the forwarders register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    pb::meetings_client::MeetingsClient::new(channel.clone())
        .create_meeting(with_bearer(
            pb::CreateMeetingRequest {
                meeting_id: WEBINAR.into(),
                kind: pb::MeetingKind::Webinar.into(),
                title: "relays end to end".into(),
                host_key: Some(HOST_KEY.into()),
                ..Default::default()
            },
            OPERATOR,
        ))
        .await
        .unwrap();
    let mut host = Peer::new(join(channel.clone(), Some(HOST_KEY)).await);
    let origin = host.joined.forwarder_address.clone();
    let mut viewers = Vec::new();
    for _ in 0..VIEWERS {
        viewers.push(Peer::new(join(channel.clone(), None).await));
    }
    let nodes: BTreeSet<String> = viewers
        .iter()
        .map(|v| v.joined.forwarder_address.clone())
        .collect();
    assert!(
        !nodes.contains(&origin),
        "viewers never connect to the origin"
    );
    assert_eq!(
        nodes.len(),
        VIEWERS / 2,
        "two viewers per relay node: {nodes:?}"
    );
    let audio = host.ssrcs(pb::TrackKind::Audio)[0];
    let camera = host.ssrcs(pb::TrackKind::Camera);
    assert_eq!(camera.len(), 3, "a three-encoding simulcast camera");

    // The host publishes audio and a camera with three encodings (each tagged with its
    // index) until every viewer has heard and seen it. Viewers report to their nodes so
    // the nodes learn where they are; the forwarders get their legs and links from the
    // desired-state stream a moment after the joins.
    let mut heard: Vec<BTreeSet<u16>> = vec![BTreeSet::new(); VIEWERS];
    let mut seen: Vec<BTreeSet<u8>> = vec![BTreeSet::new(); VIEWERS];
    let receive =
        |viewers: &mut Vec<Peer>, heard: &mut Vec<BTreeSet<u16>>, seen: &mut Vec<BTreeSet<u8>>| {
            for (i, v) in viewers.iter_mut().enumerate() {
                for (ssrc, seq, tag) in v.receive() {
                    if ssrc == audio && tag == 0xAA {
                        assert!(heard[i].insert(seq), "viewer {i} got audio {seq} twice");
                    } else if ssrc == camera[0] {
                        seen[i].insert(tag);
                    }
                }
            }
        };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seq: u16 = 1;
    let mut picture_id: u16 = 1;
    let mut host_sent = 0u64;
    while seq <= FRAMES || heard.iter().any(|h| h.is_empty()) || seen.iter().any(|s| s.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "every viewer hears and sees the host within 30 s: heard {heard:?}, seen {seen:?}"
        );
        if seq % 10 == 1 {
            for v in &mut viewers {
                v.report();
            }
        }
        host.send(audio, 111, seq, u32::from(seq) * 960, &[0xAA; 80]);
        // A keyframe every 30 frames: viewers joining late start at one.
        let keyframe = picture_id % 30 == 1;
        for (i, &ssrc) in camera.iter().enumerate() {
            let payload = vp8(picture_id, keyframe, i as u8);
            host.send(ssrc, 96, seq, u32::from(picture_id) * 3000, &payload);
        }
        host_sent += 1 + camera.len() as u64;
        seq = seq.wrapping_add(1);
        picture_id = picture_id.wrapping_add(1);
        // Pacing, not synchronisation: a frame every 20 ms, as a camera would.
        tokio::time::sleep(Duration::from_millis(20)).await;
        receive(&mut viewers, &mut heard, &mut seen);
    }
    // From the first audio packet a viewer got, it gets every one, up to the last sent.
    let last = seq.wrapping_sub(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while heard.iter().any(|h| h.last() != Some(&last)) {
        assert!(
            Instant::now() < deadline,
            "the last audio packet reaches every viewer"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        receive(&mut viewers, &mut heard, &mut seen);
    }
    for (i, h) in heard.iter().enumerate() {
        let first = *h.first().unwrap();
        assert_eq!(
            h.len(),
            usize::from(last - first) + 1,
            "viewer {i} got every audio packet from {first} to {last}"
        );
    }
    // Each viewer gets one encoding, the best: every layer crossed every link, and each
    // node chose per viewer.
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s, &BTreeSet::from([2]), "viewer {i} sees the top encoding");
    }
    // Links came up on the forwarders: one end at each node, one at its parent.
    let up: usize = forwarders
        .iter()
        .map(|(_, p, _)| p.count("relay link up"))
        .sum();
    assert!(up >= 2 * nodes.len(), "{up} link ends logged");
    let mut link_ends = 0.0;
    for (id, _, address) in &forwarders {
        let metrics = Metrics::parse(&http_get(*address, "/metrics").unwrap()).unwrap();
        link_ends += metrics.sum("fanout_relay_links", &[]);
        for sample in metrics.select("fanout_relay_link_packets_sent_total", &[("kind", "rtp")]) {
            let link = sample.label("link").unwrap_or("");
            let received = metrics.sum(
                "fanout_relay_link_packets_received_total",
                &[("link", link), ("kind", "rtp")],
            );
            eprintln!(
                "{id}: link {link} ({}): {} RTP packets sent, {received} received; host sent {host_sent}",
                sample.label("direction").unwrap_or(""),
                sample.value
            );
        }
        // The origin encrypts each packet once for the tree (its one link, to the
        // region's ingress), not once per viewer.
        if *id == host.joined.forwarder_id.as_str() {
            let down = [("direction", "downstream"), ("kind", "rtp")];
            let links = metrics
                .select("fanout_relay_link_packets_sent_total", &down)
                .count();
            assert_eq!(links, 1, "the origin feeds one relay");
            let sent = metrics.sum("fanout_relay_link_packets_sent_total", &down);
            assert!(
                sent > 0.0 && sent <= host_sent as f64,
                "the origin sent {sent} packets down its link for {host_sent} published"
            );
        }
    }
    assert_eq!(link_ends as usize, 2 * nodes.len(), "two ends per link");
    // Every RTP packet a parent sent down a link was received and authenticated once at
    // the other end (counters settle once the last packets are through).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (mut sent, mut received) = (0.0, 0.0);
        for (_, _, address) in &forwarders {
            let metrics = Metrics::parse(&http_get(*address, "/metrics").unwrap()).unwrap();
            let rtp = |direction| [("direction", direction), ("kind", "rtp")];
            sent += metrics.sum("fanout_relay_link_packets_sent_total", &rtp("downstream"));
            received += metrics.sum("fanout_relay_link_packets_received_total", &rtp("upstream"));
        }
        if sent == received {
            eprintln!(
                "{sent} RTP packets down {} links, all received",
                nodes.len()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "links: {sent} packets sent, {received} received"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((forwarders, control));
}
