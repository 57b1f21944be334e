//! The XDP port guard end to end, on a veth pair between network namespaces: the
//! forwarder (the mio driver and its core, in this process) in the root namespace behind
//! the guard, the publisher, subscribers and a spoofer in the peer namespace.
//!
//! * A known publisher's media reaches the subscribers through the guard.
//! * A flood of RTP from spoofed sources and of non-media from a known one is dropped in
//!   XDP: the guard's counters account for every packet and the driver's receive count
//!   does not move.
//! * When the publisher's leg leaves, its packets are dropped in XDP.
//! * The binary: `--xdp` attaches, SIGKILL leaves nothing attached, a restart attaches
//!   afresh and forwards, SIGTERM detaches.
//!
//! Needs root (CI is root); skips loudly otherwise.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::netns::{is_root, VethPair};
use fanout_forwarder::driver::{bind_udp, new_driver, DriverKind};
use fanout_forwarder::edge::layout::Verdict;
use fanout_forwarder::edge::{GuardOptions, PeerSync, XdpGuard};
use fanout_forwarder::ids::{MeetingId, ParticipantId, Ssrc};
use fanout_forwarder::sfu::{
    Forwarder, ForwarderConfig, SubscriptionConfig, TrackConfig, TrackKind,
};
use fanout_forwarder::srtp::{MasterKey, SrtpContext, SrtpProfile};

const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
const SSRC: Ssrc = Ssrc(0x5eed);
const WAIT: Duration = Duration::from_secs(10);

fn skip_unless_root() -> bool {
    if !is_root() {
        eprintln!("SKIPPED: the XDP guard tests need root (CAP_BPF, CAP_NET_ADMIN)");
    }
    !is_root()
}

fn srtp_packet(sender: &mut SrtpContext, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 12 + 200 + 16];
    p[0] = 0x80;
    p[1] = 96;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    p[8..12].copy_from_slice(&SSRC.0.to_be_bytes());
    let len = sender.protect_rtp(&mut p, 212).unwrap();
    p.truncate(len);
    p
}

/// Read `count` authenticated copies on `socket`.
fn receive(socket: &UdpSocket, receiver: &mut SrtpContext, count: usize) {
    let mut buf = [0u8; 2048];
    for i in 0..count {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("copy {i} of {count} within the timeout: {e}"));
        receiver
            .unprotect_rtp(&mut buf[..n])
            .expect("an authenticated copy");
    }
}

fn nothing_waiting(socket: &UdpSocket) -> bool {
    socket.set_nonblocking(true).unwrap();
    let empty = socket.recv(&mut [0u8; 2048]).is_err();
    socket.set_nonblocking(false).unwrap();
    empty
}

fn counter(guard: &XdpGuard, verdict: Verdict) -> u64 {
    guard
        .counters()
        .unwrap()
        .into_iter()
        .find(|(v, _)| *v == verdict)
        .map_or(0, |(_, c)| c.packets)
}

/// Wait until `condition` holds (the kernel and the driver thread work asynchronously).
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// An IPv4/UDP datagram from `source` (any address: the kernel sends raw IP as given).
fn spoofed(source: SocketAddrV4, destination: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let total = (20 + 8 + payload.len()) as u16;
    let mut p = Vec::with_capacity(total as usize);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]); // DF; the kernel fills id and sum
    p.extend_from_slice(&source.ip().octets());
    p.extend_from_slice(&destination.ip().octets());
    p.extend_from_slice(&source.port().to_be_bytes());
    p.extend_from_slice(&destination.port().to_be_bytes());
    p.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]); // no UDP checksum (RFC 768 allows it over IPv4)
    p.extend_from_slice(payload);
    p
}

/// A raw IPv4 socket (IP_HDRINCL) in the calling thread's namespace.
fn raw_socket() -> OwnedFd {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn send_raw(socket: &OwnedFd, packet: &[u8], destination: SocketAddrV4) {
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(destination.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `packet` and `address` are live for the call, with the lengths passed.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&address as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(
        sent,
        packet.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn spoofed_floods_and_departed_legs_are_dropped_in_xdp() {
    if skip_unless_root() {
        return;
    }
    let net = VethPair::create("g");
    let forwarder_socket = bind_udp(SocketAddr::from((net.host_ip, 0)), 1 << 20).unwrap();
    let forwarder = forwarder_socket.local_addr().unwrap();
    let mut options = GuardOptions::new(&net.host_if, vec![forwarder.port()]);
    // A small flood budget, so the STUN flood below shows it.
    options.flood_rate = 100;
    options.flood_burst = 50;
    let guard = Arc::new(XdpGuard::load(&options).expect("load the guard"));

    // One publisher learned from its first packet, two subscribers at known addresses,
    // all in the peer namespace.
    let (publisher, subscribers) = net.in_peer(|| {
        let bind = || {
            let s = UdpSocket::bind(SocketAddr::from((net.peer_ip, 0))).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            s
        };
        (bind(), [bind(), bind()])
    });
    let mut core = Forwarder::new(ForwarderConfig::default(), Instant::now());
    let meeting = MeetingId::from("m");
    core.add_meeting(meeting.clone()).unwrap();
    let alice = ParticipantId::from("alice");
    core.add_participant(&meeting, alice.clone()).unwrap();
    let (config, alice_key, _) = common::leg_config("main", PROFILE, None);
    let alice_leg = core.add_leg(&meeting, &alice, config).unwrap();
    let track = core
        .add_track(
            &meeting,
            &alice,
            TrackConfig {
                name: "camera".into(),
                kind: TrackKind::Video,
                encodings: vec![SSRC],
                leg: alice_leg,
                clock_rate: None,
                codec: Default::default(),
                audio_level_extension: None,
                stream_ids: None,
            },
        )
        .unwrap();
    let mut receivers = Vec::new();
    for (i, socket) in subscribers.iter().enumerate() {
        let id = ParticipantId(format!("sub{i}"));
        core.add_participant(&meeting, id.clone()).unwrap();
        let (config, _, send_key) =
            common::leg_config("main", PROFILE, Some(socket.local_addr().unwrap()));
        let sub_leg = core.add_leg(&meeting, &id, config).unwrap();
        core.add_subscription(SubscriptionConfig {
            track,
            leg: sub_leg,
            ssrc: None,
            payload_type: None,
            max_layers: Default::default(),
        })
        .unwrap();
        receivers.push(SrtpContext::new(&send_key));
    }

    let mut driver = new_driver(DriverKind::Mio, vec![forwarder_socket]).unwrap();
    let mut sync = PeerSync::new(guard.clone(), 0);
    sync.sync(&core);
    driver.set_peer_sync(sync);
    guard.start().expect("attach the guard to the veth");
    assert!(net.host_has_xdp());
    let traffic = driver.traffic();
    let handle = driver.handle();
    let stop = driver.stop_handle();
    let running = thread::spawn(move || {
        driver.run(&mut core).unwrap();
    });
    let received = || traffic.get().0;

    // 1. Media from the publisher reaches both subscribers through the guard.
    let mut sender = SrtpContext::new(&alice_key);
    let mut seq = 0u16;
    let mut publish = |count: u16| {
        for _ in 0..count {
            publisher
                .send_to(&srtp_packet(&mut sender, seq), forwarder)
                .unwrap();
            seq += 1;
        }
    };
    publish(20);
    for (socket, receiver) in subscribers.iter().zip(&mut receivers) {
        receive(socket, receiver, 20);
    }
    assert!(
        counter(&guard, Verdict::PassFirstContact) >= 1,
        "the first packet made contact"
    );
    // Every leg has its address now: first contact for media closes.
    wait_until("the allowlist holds all three peers", || {
        guard.peers().len() == 3
    });

    // 2. A flood: RTP from 2,000 spoofed sources, and non-media from the publisher itself.
    // The driver publishes its counters at the end of a turn, which may come after the
    // subscribers got their copies: wait for the publisher's 20 packets to be counted.
    wait_until("the forwarder counted the publisher's packets", || {
        received() >= 20
    });
    let before = received();
    let unknown = counter(&guard, Verdict::DropUnknownSource);
    let not_media = counter(&guard, Verdict::DropNotMedia);
    let target = match forwarder {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(_) => unreachable!("bound to an IPv4 address"),
    };
    let raw = net.in_peer(raw_socket);
    let rtp_like = srtp_packet(&mut SrtpContext::new(&MasterKey::generate(PROFILE)), 7);
    for burst in 0..20u32 {
        for i in 0..100u32 {
            let n = burst * 100 + i;
            let source = SocketAddrV4::new(
                Ipv4Addr::new(198, 18, (n >> 8) as u8, n as u8),
                10_000 + (n % 50_000) as u16,
            );
            send_raw(&raw, &spoofed(source, target, &rtp_like), target);
        }
        // Bursts within the veth's ring, so every packet reaches XDP.
        let expected = unknown + u64::from(burst + 1) * 100;
        wait_until("XDP counted the spoofed burst", || {
            counter(&guard, Verdict::DropUnknownSource) == expected
        });
    }
    assert_eq!(
        received(),
        before,
        "no spoofed RTP reached the forwarder's socket"
    );

    // STUN may make first contact from anyone, within the budgets: of 1,000 binding
    // requests from 1,000 spoofed sources, the flood budget lets through its burst and its
    // rate, and exactly those reach user space.
    let (passed, flooded) = (
        counter(&guard, Verdict::PassFirstContact),
        counter(&guard, Verdict::DropFlood),
    );
    let before_stun = received();
    let started = Instant::now();
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[9u8; 12]);
    for burst in 0..10u32 {
        for i in 0..100u32 {
            let n = 10_000 + burst * 100 + i;
            let source = SocketAddrV4::new(Ipv4Addr::new(198, 19, (n >> 8) as u8, n as u8), 3478);
            send_raw(&raw, &spoofed(source, target, &stun), target);
        }
        let expected = passed + flooded + u64::from(burst + 1) * 100;
        wait_until("XDP counted the STUN burst", || {
            counter(&guard, Verdict::PassFirstContact) + counter(&guard, Verdict::DropFlood)
                == expected
        });
    }
    let admitted = counter(&guard, Verdict::PassFirstContact) - passed;
    // The publisher's own first contacts spent part of the burst a moment ago.
    let budget = 50 + (started.elapsed().as_secs_f64() * 100.0).ceil() as u64 + 1;
    assert!(
        (1..=budget).contains(&admitted),
        "{admitted} spoofed STUN requests admitted; the budget allowed {budget}"
    );
    assert_eq!(
        counter(&guard, Verdict::DropFlood) - flooded,
        1000 - admitted
    );
    wait_until("the driver received what XDP admitted", || {
        received() == before_stun + admitted
    });

    let before = received();
    let mut garbage = rtp_like.clone();
    garbage[0] = 0x47; // neither STUN, DTLS nor RTP/RTCP (RFC 7983)
    for _ in 0..200 {
        publisher.send_to(&garbage, forwarder).unwrap();
    }
    wait_until("XDP counted the non-media", || {
        counter(&guard, Verdict::DropNotMedia) == not_media + 200
    });
    assert_eq!(
        received(),
        before,
        "no non-media reached the forwarder's socket"
    );
    // The publisher still gets through, and is the only thing that did.
    publish(10);
    for (socket, receiver) in subscribers.iter().zip(&mut receivers) {
        receive(socket, receiver, 10);
    }
    assert_eq!(received(), before + 10);

    // 3. The publisher's leg leaves: its packets are dropped in XDP from then on.
    let gone = alice.clone();
    let m = meeting.clone();
    handle
        .send(Box::new(move |core: &mut Forwarder| {
            core.remove_participant(&m, &gone).unwrap();
        }))
        .unwrap();
    let publisher_addr = publisher.local_addr().unwrap();
    wait_until("the departed publisher left the allowlist", || {
        !guard.peers().contains(&publisher_addr)
    });
    let before = received();
    let unknown = counter(&guard, Verdict::DropUnknownSource);
    publish(30);
    wait_until("XDP dropped the departed publisher's packets", || {
        counter(&guard, Verdict::DropUnknownSource) == unknown + 30
    });
    assert_eq!(received(), before);
    for socket in &subscribers {
        assert!(nothing_waiting(socket));
    }

    stop.stop();
    running.join().unwrap();
    drop(guard);
    assert!(!net.host_has_xdp(), "dropping the guard detaches it");
}

/// The forwarder binary with `--xdp`, its metrics endpoint, and a way to wait for them.
struct Process {
    child: Child,
}

impl Process {
    fn start(config: &std::path::Path, interface: &str, metrics: SocketAddr) -> Process {
        let child = Command::new(env!("CARGO_BIN_EXE_fanout-forwarder"))
            .args(["--config"])
            .arg(config)
            .args(["--xdp", interface, "--metrics", &metrics.to_string()])
            .args(["--io", "mio", "--progress-interval", "0", "--log", "warn"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start fanout-forwarder");
        let mut process = Process { child };
        wait_until(
            "the forwarder serves its metrics with the guard attached",
            || {
                process.assert_running();
                scrape(metrics).is_some_and(|text| text.contains("fanout_xdp_attached"))
            },
        );
        process
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the forwarder exited: {status}");
        }
    }

    fn signal(&mut self, signal: libc::c_int) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        self.child.wait().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scrape(address: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

#[test]
fn the_binary_attaches_detaches_and_a_killed_forwarder_leaves_no_port_closed() {
    if skip_unless_root() {
        return;
    }
    let net = VethPair::create("b");
    let port = UdpSocket::bind(SocketAddr::from((net.host_ip, 0)))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (publisher, subscriber) = net.in_peer(|| {
        let bind = || {
            let s = UdpSocket::bind(SocketAddr::from((net.peer_ip, 0))).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            s
        };
        (bind(), bind())
    });
    let (alice_in, bob_out) = (MasterKey::generate(PROFILE), MasterKey::generate(PROFILE));
    let unused = || MasterKey::generate(PROFILE).to_inline();
    let config = format!(
        "[forwarder]\nlisten = \"{}:{port}\"\n\n[[meeting]]\nid = \"m\"\n\n\
         [[meeting.participant]]\nid = \"alice\"\n\n[[meeting.participant.leg]]\nname = \"main\"\n\
         profile = \"{profile}\"\nreceive_key = \"{alice}\"\nsend_key = \"{unused_a}\"\n\n\
         [[meeting.participant.track]]\nname = \"camera\"\nkind = \"video\"\nleg = \"main\"\nssrc = {ssrc}\n\n\
         [[meeting.participant]]\nid = \"bob\"\n\n[[meeting.participant.leg]]\nname = \"main\"\n\
         profile = \"{profile}\"\nreceive_key = \"{unused_b}\"\nsend_key = \"{bob}\"\nremote = \"{bob_at}\"\n\n\
         [[meeting.participant.subscription]]\ntrack = \"alice/camera\"\nleg = \"main\"\n",
        net.host_ip,
        profile = PROFILE.name(),
        alice = alice_in.to_inline(),
        bob = bob_out.to_inline(),
        bob_at = subscriber.local_addr().unwrap(),
        ssrc = SSRC.0,
        unused_a = unused(),
        unused_b = unused(),
    );
    let dir = std::env::temp_dir().join(format!("fanout-xdp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("forwarder.toml");
    std::fs::write(&path, config).unwrap();
    let forwarder = SocketAddr::from((net.host_ip, port));
    let mut sender = SrtpContext::new(&alice_in);
    let mut receiver = SrtpContext::new(&bob_out);
    let mut seq = 0u16;
    let mut forward = |sender: &mut SrtpContext, receiver: &mut SrtpContext| {
        for _ in 0..10 {
            publisher
                .send_to(&srtp_packet(sender, seq), forwarder)
                .unwrap();
            seq += 1;
        }
        receive(&subscriber, receiver, 10);
    };

    let mut first = Process::start(&path, &net.host_if, metrics_port);
    assert!(net.host_has_xdp());
    forward(&mut sender, &mut receiver);
    // Killed outright: no shutdown code runs, yet the kernel releases the BPF link with
    // the process, so the port is not left behind a guard nobody keeps.
    let status = first.signal(libc::SIGKILL);
    assert!(!status.success());
    wait_until("the kernel detached the killed forwarder's guard", || {
        !net.host_has_xdp()
    });

    // A restart attaches afresh and forwards (a new subscriber context: the restarted
    // forwarder's SRTP state is new too).
    let mut second = Process::start(&path, &net.host_if, metrics_port);
    let mut receiver = SrtpContext::new(&bob_out);
    let mut sender_again = SrtpContext::new(&alice_in);
    forward(&mut sender_again, &mut receiver);
    let text = scrape(metrics_port).unwrap();
    assert!(
        text.contains("fanout_xdp_packets_total{verdict=\"pass_known_peer\"}"),
        "{text}"
    );
    let status = second.signal(libc::SIGTERM);
    assert!(
        status.success(),
        "SIGTERM ends the forwarder cleanly: {status}"
    );
    assert!(!net.host_has_xdp(), "a clean shutdown detaches");
    let _ = std::fs::remove_dir_all(&dir);
}
