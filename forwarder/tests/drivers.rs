//! Every I/O driver (mio, and io_uring where the kernel has it) over real UDP sockets on
//! loopback: a publisher socket sends SRTP in bursts, every subscriber socket receives its
//! own re-encrypted copy of every packet exactly once and in order, a scrape of the
//! metrics endpoint shows the counters, and the stop handle ends the driver thread. Also:
//! a fan-out to 200 subscribers (one packet's copies exceed any send batch), the command
//! queue, and one io_uring driver over 200 ports sharing a receive ring small enough to run
//! dry.
//!
//! The io_uring runs skip loudly when the kernel (or sandbox) has no usable io_uring.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use fanout_forwarder::driver::uring::UringDriver;
use fanout_forwarder::driver::{bind_udp, new_driver, uring, Driver, DriverKind, DriverStats};
use fanout_forwarder::exporter::{self, MetricsExchange};
use fanout_forwarder::ids::{LegId, MeetingId, ParticipantId, Ssrc, TrackId};
use fanout_forwarder::rtp::RtpHeader;
use fanout_forwarder::sfu::{
    Forwarder, ForwarderConfig, LegConfig, LegSecurity, SubscriptionConfig, TrackConfig, TrackKind,
};
use fanout_forwarder::srtp::{MasterKey, SrtpContext, SrtpProfile};

const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
const BURST: u16 = 50;

/// The drivers this kernel can run: mio always, io_uring where the probe passes.
fn drivers() -> Vec<DriverKind> {
    let mut kinds = vec![DriverKind::Mio];
    match uring::probe() {
        Ok(()) => kinds.push(DriverKind::Uring),
        Err(reason) => eprintln!("SKIPPED for io_uring: io_uring unavailable: {reason}"),
    }
    kinds
}

fn leg(name: &str, remote: Option<SocketAddr>) -> (LegConfig, MasterKey, MasterKey) {
    let (receive_key, send_key) = (MasterKey::generate(PROFILE), MasterKey::generate(PROFILE));
    let config = LegConfig {
        name: name.into(),
        security: LegSecurity::Sdes {
            receive_key: receive_key.clone(),
            send_key: send_key.clone(),
        },
        remote,
        remote_rtcp: None,
        rtcp_mux: true,
        local: None,
        local_rtcp: None,
    };
    (config, receive_key, send_key)
}

/// A one-encoding video track `camera` of `participant`, published on `leg`.
fn camera(
    core: &mut Forwarder,
    meeting: &MeetingId,
    participant: &ParticipantId,
    leg: LegId,
    ssrc: Ssrc,
) -> TrackId {
    core.add_track(
        meeting,
        participant,
        TrackConfig {
            name: "camera".into(),
            kind: TrackKind::Video,
            encodings: vec![ssrc],
            leg,
            clock_rate: None,
            codec: Default::default(),
            audio_level_extension: None,
            stream_ids: None,
        },
    )
    .unwrap()
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

/// A meeting with one publisher ("alice") and `subscribers` subscriber sockets.
struct Setup {
    core: Forwarder,
    publisher: UdpSocket,
    sender: SrtpContext,
    next_seq: u16,
    ssrc: Ssrc,
    subscribers: Vec<(UdpSocket, SrtpContext)>,
}

fn setup(subscribers: usize) -> Setup {
    let now = Instant::now();
    let mut core = Forwarder::new(ForwarderConfig::default(), now);
    let meeting = MeetingId::from("m");
    core.add_meeting(meeting.clone()).unwrap();

    let publisher = UdpSocket::bind("127.0.0.1:0").unwrap();
    let alice = ParticipantId::from("alice");
    core.add_participant(&meeting, alice.clone()).unwrap();
    let (config, alice_key, _) = leg("main", None);
    let alice_leg = core.add_leg(&meeting, &alice, config).unwrap();
    let ssrc = Ssrc(0xA11CE);
    let track = camera(&mut core, &meeting, &alice, alice_leg, ssrc);

    let mut subs = Vec::new();
    for i in 0..subscribers {
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
        subs.push((socket, SrtpContext::new(&send_key)));
    }
    Setup {
        core,
        publisher,
        sender: SrtpContext::new(&alice_key),
        next_seq: 0,
        ssrc,
        subscribers: subs,
    }
}

/// Send `packets` SRTP packets in bursts of [`BURST`], reading every subscriber's copies
/// back after each burst (no dependence on socket buffer sizes, no sleeps), and check
/// each arrives exactly once, in order, authenticated, with the right payload.
fn publish_and_check(setup: &mut Setup, forwarder: SocketAddr, packets: u16) {
    let first = setup.next_seq;
    let mut received = vec![0usize; setup.subscribers.len()];
    let mut buf = [0u8; 2048];
    for burst in 0..packets / BURST {
        for i in 0..BURST {
            let seq = first + burst * BURST + i;
            let p = srtp_packet(&mut setup.sender, setup.ssrc, seq);
            setup.publisher.send_to(&p, forwarder).unwrap();
        }
        for (i, (socket, receiver)) in setup.subscribers.iter_mut().enumerate() {
            for _ in 0..BURST {
                let seq = receive_checked(socket, receiver, setup.ssrc, &mut buf, i);
                assert_eq!(
                    seq,
                    first + received[i] as u16,
                    "subscriber {i}: in order, exactly once"
                );
                received[i] += 1;
            }
        }
    }
    assert_eq!(
        received,
        vec![usize::from(packets); setup.subscribers.len()]
    );
    setup.next_seq = first + packets;
    // Nothing more than that: no duplicates waiting.
    for (socket, _) in &setup.subscribers {
        socket.set_nonblocking(true).unwrap();
        assert!(socket.recv(&mut buf).is_err(), "a duplicate arrived");
        socket.set_nonblocking(false).unwrap();
    }
}

/// An SRTP packet of `ssrc` with sequence number `seq` and 1,000 bytes of payload, every
/// byte `seq as u8`.
fn srtp_packet(sender: &mut SrtpContext, ssrc: Ssrc, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 12 + 1000 + 16];
    p[0] = 0x80;
    p[1] = 96;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.0.to_be_bytes());
    p[12..1012].fill(seq as u8);
    let len = sender.protect_rtp(&mut p, 1012).unwrap();
    p.truncate(len);
    p
}

/// Receive one packet on a subscriber socket, check it is an authenticated copy of a
/// packet of `ssrc` made by [`srtp_packet`], and return its sequence number.
fn receive_checked(
    socket: &UdpSocket,
    receiver: &mut SrtpContext,
    ssrc: Ssrc,
    buf: &mut [u8],
    who: usize,
) -> u16 {
    let n = recv_retrying(socket, buf)
        .unwrap_or_else(|e| panic!("subscriber {who}: a packet within 5 s: {e}"));
    let len = receiver.unprotect_rtp(&mut buf[..n]).unwrap();
    let header = RtpHeader::parse(&buf[..len]).unwrap();
    assert_eq!(header.ssrc, ssrc, "subscriber {who}");
    assert!(buf[header.header_len..len]
        .iter()
        .all(|&b| b == header.sequence.0 as u8));
    header.sequence.0
}

fn start(kind: DriverKind) -> (SocketAddr, Box<dyn Driver>) {
    let socket = bind_udp("127.0.0.1:0".parse().unwrap(), 4 << 20).unwrap();
    let address = socket.local_addr().unwrap();
    (address, new_driver(kind, vec![socket]).unwrap())
}

#[test]
fn forwards_real_udp_and_serves_metrics() {
    for kind in drivers() {
        forwards_and_serves_metrics(kind);
    }
}

fn forwards_and_serves_metrics(kind: DriverKind) {
    const PACKETS: u16 = 500;
    const SUBSCRIBERS: usize = 3;
    let mut setup = setup(SUBSCRIBERS);
    let (forwarder_addr, mut driver) = start(kind);
    let exchange = Arc::new(MetricsExchange::default());
    let wake = driver.serve_metrics(exchange.clone());
    let metrics_addr = exporter::spawn("127.0.0.1:0".parse().unwrap(), exchange, wake).unwrap();
    let stop = driver.stop_handle();
    let mut core = std::mem::replace(
        &mut setup.core,
        Forwarder::new(ForwarderConfig::default(), Instant::now()),
    );
    let runner = thread::spawn(move || {
        driver.run(&mut core).unwrap();
        driver.stats()
    });

    publish_and_check(&mut setup, forwarder_addr, PACKETS);

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
    assert_eq!(metric(&text, "fanout_driver_send_failures_total"), 0);

    stop.stop();
    let stats = runner.join().unwrap();
    assert_eq!(stats.datagrams_received, u64::from(PACKETS));
    assert!(
        stats.send_syscalls < stats.datagrams_sent,
        "{kind:?}: one system call carries several sends: {stats:?}"
    );
}

#[test]
fn fans_out_to_200_subscribers() {
    for kind in drivers() {
        fans_out_to_200(kind);
    }
}

fn fans_out_to_200(kind: DriverKind) {
    const PACKETS: u16 = 200;
    const SUBSCRIBERS: usize = 200;
    let mut setup = setup(SUBSCRIBERS);
    let (forwarder_addr, driver) = start(kind);
    let (stats, stop) = run_in_thread(driver, &mut setup);
    publish_and_check(&mut setup, forwarder_addr, PACKETS);
    stop.stop();
    let stats = stats.join().unwrap();
    eprintln!("{kind:?}, 200 subscribers: {stats:?}");
    assert_eq!(stats.datagrams_received, u64::from(PACKETS));
    assert_eq!(
        stats.datagrams_sent,
        u64::from(PACKETS) * SUBSCRIBERS as u64,
        "{stats:?}"
    );
    assert_eq!(stats.send_failures, 0, "{stats:?}");
    // mio: sendmmsg batches of 64 (four calls per packet's fan-out of 200); io_uring: one
    // submission per turn of the loop.
    assert!(
        stats.send_syscalls * 32 < stats.datagrams_sent,
        "{kind:?}: a fan-out of 200 goes out in a few system calls: {stats:?}"
    );
}

fn run_in_thread(
    mut driver: Box<dyn Driver>,
    setup: &mut Setup,
) -> (
    thread::JoinHandle<DriverStats>,
    fanout_forwarder::driver::StopHandle,
) {
    let stop = driver.stop_handle();
    let mut core = std::mem::replace(
        &mut setup.core,
        Forwarder::new(ForwarderConfig::default(), Instant::now()),
    );
    let runner = thread::spawn(move || {
        driver.run(&mut core).unwrap();
        driver.stats()
    });
    (runner, stop)
}

#[test]
fn commands_reach_the_core_while_forwarding() {
    for kind in drivers() {
        commands_while_forwarding(kind);
    }
}

fn commands_while_forwarding(kind: DriverKind) {
    let mut setup = setup(2);
    let (forwarder_addr, driver) = start(kind);
    let handle = driver.handle();
    let (stats, stop) = run_in_thread(driver, &mut setup);
    publish_and_check(&mut setup, forwarder_addr, BURST);

    // A command runs on the driver thread and sees the live core.
    let (reply, answer) = mpsc::channel();
    handle
        .send(Box::new(move |core| {
            reply
                .send((core.leg_count(), core.subscription_count()))
                .unwrap();
        }))
        .unwrap();
    let (legs, subscriptions) = answer.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((legs, subscriptions), (3, 2));

    // Forwarding goes on after it.
    publish_and_check(&mut setup, forwarder_addr, BURST);
    stop.stop();
    let stats = stats.join().unwrap();
    assert_eq!(stats.datagrams_received, 2 * u64::from(BURST));
}

/// A blocking receive that retries when a signal interrupts it (EINTR is a legal outcome
/// of any blocking system call; io_uring's task work notifications are one source).
fn recv_retrying(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match socket.recv(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// A control-mode shard: one io_uring driver over 200 ports (one meeting each, a publisher
/// and a subscriber), all sharing one receive ring of 32 buffers. A burst of 8 packets per
/// port (1,600) is queued in the sockets before the driver arms its receives, so the ring
/// runs dry in the first submission and the receives that found it empty end with
/// `ENOBUFS`; they are armed again, and every packet still reaches its subscriber once,
/// in order. A second burst while running shows the re-armed receives keep working.
#[test]
fn uring_shares_one_small_ring_over_200_ports() {
    if let Err(reason) = uring::probe() {
        eprintln!("SKIPPED: io_uring unavailable: {reason}");
        return;
    }
    const PORTS: usize = 200;
    const PER_PORT: u16 = 8;
    const RING_BUFFERS: u16 = 32;
    struct Port {
        address: SocketAddr,
        publisher: UdpSocket,
        sender: SrtpContext,
        ssrc: Ssrc,
        subscriber: UdpSocket,
        receiver: SrtpContext,
    }
    let mut core = Forwarder::new(ForwarderConfig::default(), Instant::now());
    let mut sockets = Vec::with_capacity(PORTS);
    let mut ports = Vec::with_capacity(PORTS);
    for i in 0..PORTS {
        let socket = bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let address = socket.local_addr().unwrap();
        sockets.push(socket);
        let meeting = MeetingId(format!("m{i}"));
        core.add_meeting(meeting.clone()).unwrap();

        let publisher = UdpSocket::bind("127.0.0.1:0").unwrap();
        let alice = ParticipantId::from("alice");
        core.add_participant(&meeting, alice.clone()).unwrap();
        let (mut config, alice_key, _) = leg("main", Some(publisher.local_addr().unwrap()));
        config.local = Some(address);
        let alice_leg = core.add_leg(&meeting, &alice, config).unwrap();
        let ssrc = Ssrc(0x1000 + i as u32);
        let track = camera(&mut core, &meeting, &alice, alice_leg, ssrc);

        let subscriber = UdpSocket::bind("127.0.0.1:0").unwrap();
        subscriber
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let bob = ParticipantId::from("bob");
        core.add_participant(&meeting, bob.clone()).unwrap();
        let (mut config, _, send_key) = leg("main", Some(subscriber.local_addr().unwrap()));
        config.local = Some(address);
        let bob_leg = core.add_leg(&meeting, &bob, config).unwrap();
        core.add_subscription(SubscriptionConfig {
            track,
            leg: bob_leg,
            ssrc: None,
            payload_type: None,
            max_layers: Default::default(),
        })
        .unwrap();
        ports.push(Port {
            address,
            publisher,
            sender: SrtpContext::new(&alice_key),
            ssrc,
            subscriber,
            receiver: SrtpContext::new(&send_key),
        });
    }
    let mut driver = UringDriver::with_recv_buffers(sockets, RING_BUFFERS).unwrap();
    let stop = driver.stop_handle();

    let send_burst = |ports: &mut [Port], first: u16| {
        for port in ports.iter_mut() {
            for seq in first..first + PER_PORT {
                let p = srtp_packet(&mut port.sender, port.ssrc, seq);
                port.publisher.send_to(&p, port.address).unwrap();
            }
        }
    };
    let read_back = |ports: &mut [Port], first: u16| {
        let mut buf = [0u8; 2048];
        for (i, port) in ports.iter_mut().enumerate() {
            for seq in first..first + PER_PORT {
                let got =
                    receive_checked(&port.subscriber, &mut port.receiver, port.ssrc, &mut buf, i);
                assert_eq!(got, seq, "port {i}: in order, exactly once");
            }
        }
    };

    // Queued before the receives are armed: more datagrams than the ring has buffers.
    send_burst(&mut ports, 0);
    let runner = thread::spawn(move || {
        driver.run(&mut core).unwrap();
        driver.stats()
    });
    read_back(&mut ports, 0);
    send_burst(&mut ports, PER_PORT);
    read_back(&mut ports, PER_PORT);
    stop.stop();
    let stats = runner.join().unwrap();
    eprintln!("io_uring, {PORTS} ports, {RING_BUFFERS} shared buffers: {stats:?}");

    let total = 2 * PORTS as u64 * u64::from(PER_PORT);
    assert_eq!(stats.datagrams_received, total, "{stats:?}");
    // Each copy to a subscriber, and the RTCP the cores send their publishers.
    assert!(stats.datagrams_sent >= total, "{stats:?}");
    assert_eq!(stats.send_failures, 0, "{stats:?}");
    assert!(
        stats.recv_rearms > 0,
        "the dry ring ended receives, which were armed again: {stats:?}"
    );
    // Nothing more than that: no duplicates waiting.
    let mut buf = [0u8; 2048];
    for (i, port) in ports.iter().enumerate() {
        port.subscriber.set_nonblocking(true).unwrap();
        assert!(
            port.subscriber.recv(&mut buf).is_err(),
            "port {i}: a duplicate"
        );
    }
}
