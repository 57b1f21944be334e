//! The mio driver over real UDP sockets on loopback: a publisher socket sends SRTP to the
//! forwarder, three subscriber sockets each receive their own re-encrypted copy of every
//! packet, a scrape of the metrics endpoint shows the counters, and the stop handle ends
//! the driver thread cleanly.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fanout_forwarder::driver::{bind_udp, mio::MioDriver};
use fanout_forwarder::exporter::{self, MetricsExchange};
use fanout_forwarder::ids::{MeetingId, ParticipantId, Ssrc};
use fanout_forwarder::rtp::RtpHeader;
use fanout_forwarder::sfu::{
    Forwarder, ForwarderConfig, LegConfig, SubscriptionConfig, TrackConfig, TrackKind,
};
use fanout_forwarder::srtp::{MasterKey, SrtpContext, SrtpProfile};

const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
const PACKETS: u16 = 500;
const SUBSCRIBERS: usize = 3;

fn leg(name: &str, remote: Option<SocketAddr>) -> (LegConfig, MasterKey, MasterKey) {
    let (receive_key, send_key) = (MasterKey::generate(PROFILE), MasterKey::generate(PROFILE));
    let config = LegConfig {
        name: name.into(),
        receive_key: receive_key.clone(),
        send_key: send_key.clone(),
        remote,
        remote_rtcp: None,
        rtcp_mux: true,
    };
    (config, receive_key, send_key)
}

fn scrape(address: SocketAddr) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric line starting with {prefix}"))
}

#[test]
fn forwards_real_udp_and_serves_metrics() {
    let now = Instant::now();
    let mut core = Forwarder::new(ForwarderConfig::default(), now);
    let meeting = MeetingId::from("m");
    core.add_meeting(meeting.clone()).unwrap();

    let publisher_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let alice = ParticipantId::from("alice");
    core.add_participant(&meeting, alice.clone()).unwrap();
    let (config, alice_key, _) = leg("main", None);
    let alice_leg = core.add_leg(&meeting, &alice, config).unwrap();
    let ssrc = Ssrc(0xA11CE);
    let track = core
        .add_track(
            &meeting,
            &alice,
            TrackConfig {
                name: "camera".into(),
                kind: TrackKind::Video,
                encodings: vec![ssrc],
                leg: alice_leg,
                clock_rate: None,
                codec: Default::default(),
                audio_level_extension: None,
            },
        )
        .unwrap();

    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let id = ParticipantId(format!("sub{i}"));
        core.add_participant(&meeting, id.clone()).unwrap();
        let (config, _, send_key) = leg("main", Some(socket.local_addr().unwrap()));
        let leg = core.add_leg(&meeting, &id, config).unwrap();
        core.add_subscription(SubscriptionConfig {
            track,
            leg,
            ssrc: None,
            payload_type: None,
            max_layers: Default::default(),
        })
        .unwrap();
        subscribers.push((socket, SrtpContext::new(&send_key)));
    }

    let socket = bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
    let forwarder_addr = socket.local_addr().unwrap();
    let mut driver = MioDriver::new(vec![socket]).unwrap();
    let exchange = Arc::new(MetricsExchange::default());
    let wake = driver.serve_metrics(exchange.clone());
    let metrics_addr = exporter::spawn("127.0.0.1:0".parse().unwrap(), exchange, wake).unwrap();
    let stop = driver.stop_handle();
    let runner = thread::spawn(move || {
        driver.run(&mut core).unwrap();
        driver.stats()
    });

    let mut sender = SrtpContext::new(&alice_key);
    let mut received = vec![0usize; SUBSCRIBERS];
    let mut buf = [0u8; 2048];
    // Send in bursts of 50 and read everything back before the next burst, so the test
    // neither depends on socket buffer sizes nor sleeps.
    for burst in 0..PACKETS / 50 {
        for i in 0..50 {
            let seq = burst * 50 + i;
            let mut p = vec![0u8; 12 + 1000 + 16];
            p[0] = 0x80;
            p[1] = 96;
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            p[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
            p[8..12].copy_from_slice(&ssrc.0.to_be_bytes());
            p[12..1012].fill(seq as u8);
            let len = sender.protect_rtp(&mut p, 1012).unwrap();
            publisher_socket.send_to(&p[..len], forwarder_addr).unwrap();
        }
        for (i, (socket, receiver)) in subscribers.iter_mut().enumerate() {
            for _ in 0..50 {
                let n = socket
                    .recv(&mut buf)
                    .expect("a forwarded packet within 5 s");
                let len = receiver.unprotect_rtp(&mut buf[..n]).unwrap();
                let header = RtpHeader::parse(&buf[..len]).unwrap();
                assert_eq!(header.ssrc, ssrc);
                assert_eq!(
                    header.sequence.0, received[i] as u16,
                    "in order, exactly once"
                );
                assert!(buf[header.header_len..len]
                    .iter()
                    .all(|&b| b == header.sequence.0 as u8));
                received[i] += 1;
            }
        }
    }
    assert_eq!(received, vec![usize::from(PACKETS); SUBSCRIBERS]);

    let text = scrape(metrics_addr);
    assert_eq!(
        metric(
            &text,
            "fanout_leg_packets_received_total{meeting=\"m\",participant=\"alice\",leg=\"main\",kind=\"rtp\"}"
        ),
        u64::from(PACKETS)
    );
    for i in 0..SUBSCRIBERS {
        let line = format!(
            "fanout_leg_packets_sent_total{{meeting=\"m\",participant=\"sub{i}\",leg=\"main\",kind=\"rtp\"}}"
        );
        assert_eq!(metric(&text, &line), u64::from(PACKETS));
    }
    assert_eq!(
        metric(&text, "fanout_driver_datagrams_sent_total"),
        u64::from(PACKETS) * SUBSCRIBERS as u64
    );

    stop.stop();
    let stats = runner.join().unwrap();
    assert_eq!(stats.datagrams_received, u64::from(PACKETS));
    assert!(
        stats.send_syscalls < stats.datagrams_sent,
        "sendmmsg batches several datagrams per call: {stats:?}"
    );
}
