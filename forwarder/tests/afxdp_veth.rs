//! The AF_XDP driver over a real veth pair between two network namespaces: the forwarder's
//! end ("fwd") runs the core under the AF_XDP driver, the other end ("peer") has a
//! publisher and two subscribers on ordinary UDP sockets, one over IPv4 and one over
//! IPv6. Every copy must arrive exactly once, in order, authenticated (the receiving
//! kernel also checks the UDP checksums the driver wrote: a wrong one is dropped).
//!
//! The peer knows the forwarder's MAC addresses in advance (permanent neighbour entries),
//! so it never sends ARP or neighbour solicitations that would teach the forwarder's
//! kernel the peer's address: the forwarder starts with no neighbour entry and its first
//! copies must go the slow way (the kernel socket), which makes its kernel resolve the
//! peer; later ones go through the TX ring.
//!
//! Needs root (namespaces, AF_XDP) and `ip`; skips loudly without them. Namespaces are
//! deleted on drop, panics included, and deleting them deletes the veth pair.

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::BorrowedFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fanout_forwarder::driver::afxdp::{self, AfXdpDriver, XskRegistry};
use fanout_forwarder::driver::{bind_udp, os, Driver};
use fanout_forwarder::edge::{EdgeError, GuardOptions, PeerSync, XdpGuard};
use fanout_forwarder::exporter::{MetricsExchange, Wake};
use fanout_forwarder::ids::{MeetingId, ParticipantId, Ssrc};
use fanout_forwarder::rtp::RtpHeader;
use fanout_forwarder::sfu::{
    Forwarder, ForwarderConfig, LegConfig, LegSecurity, SubscriptionConfig, TrackConfig, TrackKind,
};
use fanout_forwarder::srtp::{MasterKey, SrtpContext, SrtpProfile};

const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
const FWD_MAC: &str = "02:fa:00:00:00:01";
const PEER_MAC: &str = "02:fa:00:00:00:02";
const FWD_V4: &str = "10.99.0.1";
const PEER_V4: &str = "10.99.0.2";
const FWD_V6: &str = "fd99::1";
const PEER_V6: &str = "fd99::2";
const PORT: u16 = 5004;
const BURST: u16 = 20;

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: String) -> Result<Netns, String> {
        ip(&["netns", "add", &name])?;
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Run `f` on a thread inside the namespace: sockets it creates belong there.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(format!("/var/run/netns/{}", self.name)).expect("netns file");
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    os::enter_network_namespace(&file).expect("setns");
                    f()
                })
                .join()
                .expect("the namespace thread panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cannot delete namespace {}: {e}", self.name);
        }
    }
}

/// Two namespaces joined by a veth pair `fwd_if` (in `fwd`) and `peer_if` (in `peer`).
struct Topology {
    fwd: Netns,
    peer: Netns,
    fwd_if: String,
}

fn topology() -> Result<Topology, String> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let tag = format!(
        "{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let fwd = Netns::new(format!("fxf{tag}"))?;
    let peer = Netns::new(format!("fxp{tag}"))?;
    let fwd_if = format!("fxa{tag}");
    let peer_if = format!("fxb{tag}");
    ip(&[
        "link", "add", &fwd_if, "netns", &fwd.name, "address", FWD_MAC, "type", "veth", "peer",
        "name", &peer_if, "netns", &peer.name, "address", PEER_MAC,
    ])?;
    for (ns, name, v4, v6, other_v4, other_v6, other_mac) in [
        (&fwd, &fwd_if, FWD_V4, FWD_V6, None, None, None),
        (
            &peer,
            &peer_if,
            PEER_V4,
            PEER_V6,
            Some(FWD_V4),
            Some(FWD_V6),
            Some(FWD_MAC),
        ),
    ] {
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", name])?;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            name,
            "nodad",
        ])?;
        ns.ip(&["link", "set", name, "up"])?;
        // The peer never asks for the forwarder's MAC, so it never teaches the forwarder
        // its own: the forwarder's kernel learns it only when the slow path sends.
        if let (Some(v4), Some(v6), Some(mac)) = (other_v4, other_v6, other_mac) {
            for address in [v4, v6] {
                ns.ip(&[
                    "neigh",
                    "replace",
                    address,
                    "lladdr",
                    mac,
                    "dev",
                    name,
                    "nud",
                    "permanent",
                ])?;
            }
        }
    }
    Ok(Topology { fwd, peer, fwd_if })
}

/// Why this test cannot run here, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, AF_XDP)".into());
    }
    if let Err(reason) = afxdp::probe() {
        return Some(reason);
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("no `ip` (iproute2)".into());
    }
    None
}

/// The interface without an XDP program: the driver's AF_XDP sockets transmit, and
/// nothing is redirected to them, so everything arrives through the kernel sockets.
#[derive(Debug)]
struct NoProgram {
    name: String,
    index: u32,
}

impl XskRegistry for NoProgram {
    fn interface(&self) -> &str {
        &self.name
    }
    fn interface_index(&self) -> u32 {
        self.index
    }
    fn register_xsk(&self, _queue: u32, _socket: BorrowedFd<'_>) -> std::io::Result<()> {
        Ok(())
    }
}

fn interface_index(name: &str) -> u32 {
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: `name` is a NUL-terminated C string alive for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "interface {name:?} exists");
    index
}

fn leg(remote: Option<SocketAddr>, local: SocketAddr) -> (LegConfig, MasterKey, MasterKey) {
    let (receive_key, send_key) = (MasterKey::generate(PROFILE), MasterKey::generate(PROFILE));
    let config = LegConfig {
        name: "main".into(),
        security: LegSecurity::Sdes {
            receive_key: receive_key.clone(),
            send_key: send_key.clone(),
        },
        remote,
        remote_rtcp: None,
        rtcp_mux: true,
        local: Some(local),
        local_rtcp: None,
    };
    (config, receive_key, send_key)
}

struct Peer {
    publisher: UdpSocket,
    sender: SrtpContext,
    ssrc: Ssrc,
    next_seq: u16,
    subscribers: Vec<(UdpSocket, SrtpContext)>,
}

/// A meeting: alice publishes over IPv4 to the forwarder's IPv4 address, one subscriber
/// listens on IPv4 and one on IPv6, each served from the forwarder's address of its family.
fn meeting(topology: &Topology) -> (Forwarder, Peer) {
    let fwd_v4: SocketAddr = SocketAddr::new(FWD_V4.parse().unwrap(), PORT);
    let fwd_v6: SocketAddr = SocketAddr::new(FWD_V6.parse().unwrap(), PORT);
    let (publisher, sub4, sub6) = topology.peer.run(|| {
        let open = |address: &str| {
            let socket = UdpSocket::bind(address).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            socket
        };
        (
            open(&format!("{PEER_V4}:0")),
            open(&format!("{PEER_V4}:0")),
            open(&format!("[{PEER_V6}]:0")),
        )
    });
    let mut core = Forwarder::new(ForwarderConfig::default(), Instant::now());
    let m = MeetingId::from("m");
    core.add_meeting(m.clone()).unwrap();
    let alice = ParticipantId::from("alice");
    core.add_participant(&m, alice.clone()).unwrap();
    // Alice's address is configured, so the XDP guard allows her from the start.
    let (config, alice_key, _) = leg(Some(publisher.local_addr().unwrap()), fwd_v4);
    let alice_leg = core.add_leg(&m, &alice, config).unwrap();
    let ssrc = Ssrc(0xA11CE);
    let track = core
        .add_track(
            &m,
            &alice,
            TrackConfig {
                name: "camera".into(),
                kind: TrackKind::Video,
                encodings: vec![ssrc],
                leg: alice_leg,
                clock_rate: None,
                codec: Default::default(),
                audio_level_extension: None,
                stream_ids: None,
            },
        )
        .unwrap();
    let mut subscribers = Vec::new();
    for (i, (socket, local)) in [(sub4, fwd_v4), (sub6, fwd_v6)].into_iter().enumerate() {
        let id = ParticipantId(format!("sub{i}"));
        core.add_participant(&m, id.clone()).unwrap();
        let (config, _, send_key) = leg(Some(socket.local_addr().unwrap()), local);
        let leg = core.add_leg(&m, &id, config).unwrap();
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
    let peer = Peer {
        publisher,
        sender: SrtpContext::new(&alice_key),
        ssrc,
        next_seq: 0,
        subscribers,
    };
    (core, peer)
}

/// Send a burst and read every subscriber's copies: each exactly once, in order, intact.
fn burst(peer: &mut Peer) {
    let forwarder = SocketAddr::new(FWD_V4.parse().unwrap(), PORT);
    let first = peer.next_seq;
    for seq in first..first + BURST {
        let mut p = vec![0u8; 12 + 1000 + 16];
        p[0] = 0x80;
        p[1] = 96;
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
        p[8..12].copy_from_slice(&peer.ssrc.0.to_be_bytes());
        p[12..1012].fill(seq as u8);
        let len = peer.sender.protect_rtp(&mut p, 1012).unwrap();
        peer.publisher.send_to(&p[..len], forwarder).unwrap();
    }
    let mut buf = [0u8; 2048];
    for (who, (socket, receiver)) in peer.subscribers.iter_mut().enumerate() {
        for expected in first..first + BURST {
            let n = loop {
                match socket.recv(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            }
            .unwrap_or_else(|e| panic!("subscriber {who}: packet {expected} within 5 s: {e}"));
            let len = receiver.unprotect_rtp(&mut buf[..n]).unwrap();
            let header = RtpHeader::parse(&buf[..len]).unwrap();
            assert_eq!(header.ssrc, peer.ssrc, "subscriber {who}");
            assert_eq!(
                header.sequence.0, expected,
                "subscriber {who}: in order, once"
            );
            assert!(buf[header.header_len..len]
                .iter()
                .all(|&b| b == expected as u8));
        }
    }
    peer.next_seq = first + BURST;
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

/// A running AF_XDP driver in the forwarder's namespace, its metrics and its stop handle.
struct Running {
    runner: thread::JoinHandle<AfXdpDriver>,
    exchange: Arc<MetricsExchange>,
    wake: Arc<dyn Wake>,
    stop: fanout_forwarder::driver::StopHandle,
}

impl Running {
    fn scrape(&self) -> String {
        self.exchange
            .request(self.wake.as_ref(), Duration::from_secs(5))
            .expect("the driver answers a scrape")
    }

    fn stop(self) -> AfXdpDriver {
        self.stop.stop();
        self.runner.join().expect("the driver thread")
    }
}

/// Bind the forwarder's sockets in its namespace and start the driver there, with the XDP
/// guard attached to its end of the veth if `guard`. `None` if the guard cannot be built
/// here (no clang at build time).
fn start(topology: &Topology, mut core: Forwarder, guard: bool) -> Option<Running> {
    let fwd_if = topology.fwd_if.clone();
    let peers = &core;
    let mut driver = topology.fwd.run(move || {
        let sockets = [FWD_V4, FWD_V6]
            .map(|ip| bind_udp(SocketAddr::new(ip.parse().unwrap(), PORT), 1 << 20).unwrap());
        if !guard {
            let registry = Arc::new(NoProgram {
                index: interface_index(&fwd_if),
                name: fwd_if,
            });
            return Some(AfXdpDriver::new(sockets.into(), registry).expect("AF_XDP driver"));
        }
        // As main.rs does: load the guard, bind the sockets into its map, fill the
        // allowlist with the core's peers, then attach it, so no packet of a known peer
        // meets an empty allowlist.
        let guard = match XdpGuard::load(&GuardOptions::new(fwd_if, vec![PORT])) {
            Ok(guard) => Arc::new(guard),
            Err(EdgeError::NotBuilt) => return None,
            Err(e) => panic!("XDP guard on the veth: {e}"),
        };
        let mut driver = AfXdpDriver::new(sockets.into(), guard.clone()).expect("AF_XDP driver");
        let mut sync = PeerSync::new(guard.clone(), 0);
        sync.sync(peers);
        Driver::set_peer_sync(&mut driver, sync);
        guard.start().expect("XDP guard attached to the veth");
        Some(driver)
    })?;
    let exchange = Arc::new(MetricsExchange::default());
    let wake = Driver::serve_metrics(&mut driver, exchange.clone());
    let stop = driver.stop_handle();
    let runner = thread::spawn(move || {
        driver.run(&mut core).unwrap();
        driver
    });
    Some(Running {
        runner,
        exchange,
        wake,
        stop,
    })
}

/// No XDP program: everything arrives through the kernel sockets. The forwarder's kernel
/// does not know the subscribers' MAC addresses, so the first copies go the slow way;
/// once the kernel has resolved them, every copy goes through the TX ring.
#[test]
fn slow_path_first_then_through_the_tx_ring() {
    if let Some(reason) = unsupported() {
        eprintln!("SKIPPED: AF_XDP veth test: {reason}");
        return;
    }
    let topology = topology().expect("veth pair between two namespaces");
    let (core, mut peer) = meeting(&topology);
    let running = start(&topology, core, false).expect("no guard needed");

    burst(&mut peer);
    let text = running.scrape();
    assert!(
        metric(
            &text,
            "fanout_afxdp_tx_slow_total{reason=\"neighbour_unresolved\"}"
        ) > 0,
        "{text}"
    );
    // Wait for the event "every copy of a burst went through the TX ring", bounded: it
    // comes once the kernel has resolved both subscribers and the driver's negative
    // answers have expired (50 ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "never went fast:\n{}",
            running.scrape()
        );
        let before = metric(&running.scrape(), "fanout_afxdp_tx_fast_total");
        burst(&mut peer);
        let after = metric(&running.scrape(), "fanout_afxdp_tx_fast_total");
        if after - before >= 2 * u64::from(BURST) {
            break;
        }
    }
    let text = running.scrape();
    assert_eq!(
        metric(&text, "fanout_driver_send_failures_total"),
        0,
        "{text}"
    );
    // Every media copy was sent once, fast or slow (the core's own RTCP comes on top).
    let sent = metric(&text, "fanout_driver_datagrams_sent_total");
    assert!(sent >= 2 * u64::from(peer.next_seq), "{text}");
    let mut driver = running.stop();
    let stats = driver.afxdp_stats();
    eprintln!(
        "AF_XDP over veth, no program: {stats:?}, modes {:?}",
        driver.modes()
    );
    assert!(stats.tx_fast >= 2 * u64::from(BURST));
    assert_eq!(
        stats.tx_fast + stats.tx_slow(),
        driver.stats().datagrams_sent
    );
    assert_eq!(stats.xsk_received, 0, "nothing redirects to the sockets");
    assert_eq!(stats.kernel_received, u64::from(peer.next_seq));
    assert_eq!(driver.frames_in_flight(), 0, "every TX frame came back");
    drop(driver);
    drop(topology);
}

/// With the XDP guard redirecting to the driver's sockets and the neighbours known: every
/// packet arrives through the AF_XDP socket and every copy leaves through the TX ring.
#[test]
fn both_directions_through_af_xdp_with_the_guard() {
    if let Some(reason) = unsupported() {
        eprintln!("SKIPPED: AF_XDP veth test with the XDP guard: {reason}");
        return;
    }
    let topology = topology().expect("veth pair between two namespaces");
    for address in [PEER_V4, PEER_V6] {
        topology
            .fwd
            .ip(&[
                "neigh",
                "replace",
                address,
                "lladdr",
                PEER_MAC,
                "dev",
                &topology.fwd_if,
                "nud",
                "permanent",
            ])
            .unwrap();
    }
    let (core, mut peer) = meeting(&topology);
    let Some(running) = start(&topology, core, true) else {
        eprintln!("SKIPPED: this build has no XDP guard (clang missing at build time)");
        return;
    };
    for _ in 0..5 {
        burst(&mut peer);
    }
    let text = running.scrape();
    assert_eq!(
        metric(&text, "fanout_driver_send_failures_total"),
        0,
        "{text}"
    );
    let mut driver = running.stop();
    let stats = driver.afxdp_stats();
    eprintln!(
        "AF_XDP over veth with the guard: {stats:?}, modes {:?}",
        driver.modes()
    );
    let packets = u64::from(peer.next_seq);
    assert_eq!(
        stats.xsk_received, packets,
        "every packet came through AF_XDP"
    );
    assert_eq!(stats.kernel_received, 0);
    assert!(
        stats.tx_fast >= 2 * packets,
        "every copy left through the TX ring"
    );
    assert_eq!(stats.tx_slow(), 0);
    assert_eq!(stats.malformed, [0; 7]);
    assert_eq!(driver.frames_in_flight(), 0, "every TX frame came back");
    drop(driver);
    drop(topology);
}
