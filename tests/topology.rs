//! The harness's veth topology ([`fanout_tests::topology`]), whatever `FANOUT_TOPOLOGY`
//! says: what the interop tests run on when `FANOUT_TOPOLOGY=veth` or `FANOUT_IO=afxdp`.
//!
//! * `a_forwarder_network_is_a_private_link_and_leaves_nothing_behind`: a namespace and
//!   veth pair on a /30 of their own; a socket in the namespace and one in the root
//!   namespace exchange datagrams on the two addresses (each sees the other's address as
//!   the source), the root side counts them, commands run inside the namespace, each end
//!   has the MAC derived from its address and a permanent neighbour entry for the other,
//!   a datagram from a root socket arrives with a complete UDP checksum (and with a
//!   partial one once TX checksum offload is turned back on: the check can fail), two
//!   networks get distinct subnets, and dropping one removes its namespace and both ends.
//! * `the_forwarder_forwards_srtp_across_its_veth`: the real `fanout-forwarder` started
//!   in such a network runs in the namespace (its own process, not a child of `ip`),
//!   answers metrics on its address, and forwards SRTP from a publisher socket to a
//!   receiver socket, both in the root namespace: every packet arrives re-encrypted with
//!   the receiver's key and decrypts to the payload sent. It stops cleanly on SIGTERM and
//!   leaves nothing behind.
//! * `what_killed_runs_left_is_swept`: a namespace and a root-side veth named after a
//!   process that is gone are removed by the sweep, and those of a live process are not.
//!
//! They need root (network namespaces, veth pairs) and `ip` from iproute2; without them
//! they say so loudly and pass.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use fanout_forwarder::srtp::{MasterKey, SrtpContext, SrtpProfile};
use fanout_tests::forwarder::{
    ConfigSpec, Forwarder, LegSpec, ParticipantSpec, SrtpKey, SubscriptionSpec, TrackSpec,
};
use fanout_tests::meeting::temp_dir;
use fanout_tests::net::free_udp_port_pair;
use fanout_tests::process;
use fanout_tests::topology::{
    mac_of, namespace_name, root_link_name, set_tx_checksum_offload, sweep_stale,
    tx_checksum_offload, ForwarderNetwork, Prefix, Topology, FORWARDER_LINK,
};

/// Bound on every receive.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why this machine cannot run the tests, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(output) if output.status.success() => None,
        Ok(output) => Some(format!(
            "`ip -V` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run `ip` (iproute2): {e}")),
    }
}

macro_rules! require_netns {
    () => {
        if let Some(why) = unsupported() {
            eprintln!("SKIPPED: the veth topology needs root and network namespaces: {why}");
            return Ok(());
        }
    };
}

fn exists_namespace(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn exists_link(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Runs `f` on a thread that has entered `namespace`: the sockets it creates live there.
fn in_namespace<T: Send>(namespace: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = Path::new("/run/netns").join(namespace);
    let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    // setns changes the calling thread only: a scoped thread enters and ends there.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                fanout_forwarder::driver::os::enter_network_namespace(&file)
                    .context("cannot enter the namespace")?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread panicked in namespace {namespace}"))?
    })
}

fn receive(socket: &UdpSocket, buf: &mut [u8]) -> Result<(usize, SocketAddr)> {
    socket.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
    socket
        .recv_from(buf)
        .with_context(|| format!("nothing received within {RECEIVE_TIMEOUT:?}"))
}

#[test]
fn a_forwarder_network_is_a_private_link_and_leaves_nothing_behind() -> Result<()> {
    require_netns!();
    let network = ForwarderNetwork::veth(false)?;
    eprintln!("{network}");
    ensure!(network.topology() == Topology::Veth);
    ensure!(network.xdp_interface().is_none(), "no --xdp without afxdp");
    let namespace = network.namespace().context("no namespace")?.to_owned();
    let root_link = network.root_link().context("no root link")?.to_owned();
    ensure!(exists_namespace(&namespace) && exists_link(&root_link));
    let forwarder_ip = network.forwarder_ip();
    let peer_ip = network.peer_ip();
    let prefix = |ip| Prefix::parse(&format!("{ip}/30")).context("bad prefix");
    ensure!(
        prefix(forwarder_ip)?.overlaps(&prefix(peer_ip)?) && forwarder_ip != peer_ip,
        "{forwarder_ip} and {peer_ip} are not one /30"
    );

    // A datagram each way between a socket in the namespace (created there, it stays
    // there) and one in the root namespace.
    let before = network.veth_traffic()?.context("no counters")?;
    let root = UdpSocket::bind(network.peer_address(0))?;
    let inside = in_namespace(&namespace, || {
        Ok(UdpSocket::bind(network.forwarder_address(0))?)
    })?;
    let inside_address = inside.local_addr()?;
    ensure!(inside_address.ip() == forwarder_ip);
    inside.send_to(b"from the namespace", root.local_addr()?)?;
    let mut buf = [0u8; 64];
    let (n, from) = receive(&root, &mut buf)?;
    ensure!(&buf[..n] == b"from the namespace" && from == inside_address);
    root.send_to(b"from the root", inside_address)?;
    let (n, from) = receive(&inside, &mut buf)?;
    ensure!(&buf[..n] == b"from the root" && from == root.local_addr()?);
    let after = network.veth_traffic()?.context("no counters")?;
    ensure!(
        after.to_forwarder > before.to_forwarder && after.from_forwarder > before.from_forwarder,
        "the root side did not count the datagrams: {before:?} then {after:?}"
    );
    // The namespace holds loopback and the forwarder's side of the pair, with the MAC
    // derived from its address, and a permanent neighbour entry for the root side.
    let inside_ip = |args: &[&str]| -> Result<String> {
        let mut command = network.command(Path::new("ip"));
        command.args(args);
        Ok(process::run("ip netns exec ip", command, RECEIVE_TIMEOUT)?.stdout)
    };
    let inside_addresses = inside_ip(&["-o", "-4", "addr", "show"])?;
    ensure!(
        inside_addresses.contains(&format!("{FORWARDER_LINK}    inet {forwarder_ip}/30"))
            && inside_addresses.contains("lo    inet 127.0.0.1/8"),
        "in the namespace:\n{inside_addresses}"
    );
    let (forwarder_v4, peer_v4) = (v4(forwarder_ip)?, v4(peer_ip)?);
    let inside_link = inside_ip(&["-o", "link", "show", FORWARDER_LINK])?;
    ensure!(
        inside_link.contains(&format!("link/ether {} ", mac_of(forwarder_v4))),
        "{inside_link}"
    );
    let root_mac =
        std::fs::read_to_string(Path::new("/sys/class/net").join(&root_link).join("address"))?;
    ensure!(
        root_mac.trim() == mac_of(peer_v4),
        "{root_link} has MAC {root_mac}"
    );
    let inside_neighbours = inside_ip(&["neigh", "show", "dev", FORWARDER_LINK])?;
    ensure!(
        inside_neighbours.contains(&format!("{peer_ip} lladdr {} PERMANENT", mac_of(peer_v4))),
        "neighbours in the namespace: {inside_neighbours}"
    );
    let mut command = Command::new("ip");
    command.args(["neigh", "show", "dev", &root_link]);
    let root_neighbours = process::run("ip neigh", command, RECEIVE_TIMEOUT)?.stdout;
    ensure!(
        root_neighbours.contains(&format!(
            "{forwarder_ip} lladdr {} PERMANENT",
            mac_of(forwarder_v4)
        )),
        "neighbours of {root_link}: {root_neighbours}"
    );

    // Datagrams from root sockets reach the namespace with a complete UDP checksum (TX
    // checksum offload off on the root side), where they would carry a partial one.
    ensure!(
        !tx_checksum_offload(&root_link)?,
        "TX checksum offload is on"
    );
    let raw = in_namespace(&namespace, RawUdp::open)?;
    let checksum_ok = |payload: &[u8]| -> Result<bool> {
        root.send_to(payload, inside_address)?;
        let mut buf = [0u8; 64];
        receive(&inside, &mut buf)?;
        raw.checksum_of(inside_address.port(), payload)
    };
    ensure!(
        checksum_ok(b"software checksum")?,
        "a partial UDP checksum arrived"
    );
    set_tx_checksum_offload(&root_link, true)?;
    ensure!(
        !checksum_ok(b"offloaded checksum")?,
        "with offload on, the checksum was complete too: the check above proves nothing"
    );
    set_tx_checksum_offload(&root_link, false)?;

    // A second network: another namespace, another subnet.
    let other = ForwarderNetwork::veth(true)?;
    eprintln!("{other}");
    ensure!(other.xdp_interface() == Some(FORWARDER_LINK));
    ensure!(other.namespace() != Some(namespace.as_str()));
    ensure!(
        !prefix(other.forwarder_ip())?.overlaps(&prefix(forwarder_ip)?),
        "two networks share a subnet: {other} and {network}"
    );
    drop(other);

    // The socket inside holds a reference to its namespace: close it first.
    drop(inside);
    drop(network);
    ensure!(
        !exists_namespace(&namespace) && !exists_link(&root_link),
        "{namespace} or {root_link} is left after drop"
    );
    Ok(())
}

fn v4(ip: IpAddr) -> Result<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(v6) => anyhow::bail!("{v6} is not IPv4"),
    }
}

/// A raw IPv4 socket receiving a copy of every UDP datagram to its namespace, headers and
/// checksum as they arrived.
struct RawUdp(OwnedFd);

impl RawUdp {
    fn open() -> Result<RawUdp> {
        // SAFETY: socket(2) takes plain integers; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_UDP,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("cannot open a raw socket");
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: RECEIVE_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: setsockopt reads a timeval of the size given, which lives across the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("SO_RCVTIMEO");
        }
        Ok(RawUdp(fd))
    }

    /// Whether the UDP checksum of the next datagram to `port` carrying `payload` verifies
    /// (RFC 768: the one's complement sum over pseudo-header, header and data is all ones).
    fn checksum_of(&self, port: u16, payload: &[u8]) -> Result<bool> {
        let mut buf = [0u8; 2048];
        loop {
            // SAFETY: recv(2) writes at most `buf.len()` bytes into `buf`.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(std::io::Error::last_os_error()).context("raw receive");
            }
            let packet = &buf[..n as usize];
            let header = usize::from(packet[0] & 0x0f) * 4;
            let udp = &packet[header..];
            if u16::from_be_bytes([udp[2], udp[3]]) != port || &udp[8..] != payload {
                continue;
            }
            let mut sum: u32 = 0;
            let mut add = |bytes: &[u8]| {
                for pair in bytes.chunks(2) {
                    sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
                }
            };
            add(&packet[12..20]); // source and destination addresses
            add(&[0, libc::IPPROTO_UDP as u8]);
            add(&(udp.len() as u16).to_be_bytes());
            add(udp);
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            return Ok(sum == 0xffff);
        }
    }
}

/// The inode of a network namespace file (/proc/PID/ns/net or /run/netns/NAME).
fn namespace_inode(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .ino())
}

#[test]
fn the_forwarder_forwards_srtp_across_its_veth() -> Result<()> {
    require_netns!();
    const PACKETS: u16 = 50;
    const SSRC: u32 = 0x5151_0001;
    let profile = SrtpProfile::AesCm128HmacSha1_80;
    let temp = temp_dir("fanout-topology-")?;
    let network = ForwarderNetwork::veth(false)?;
    eprintln!("{network}");
    let namespace = network.namespace().context("no namespace")?.to_owned();
    let root_link = network.root_link().context("no root link")?.to_owned();
    let receiver = UdpSocket::bind(network.peer_address(free_udp_port_pair()?))?;
    let publisher = UdpSocket::bind(network.peer_address(0))?;
    let key = || SrtpKey::generate(profile);
    let (alice_key, bob_key) = (key(), key());
    let config = ConfigSpec {
        listen: network.forwarder_address(free_udp_port_pair()?),
        meeting: "topology".into(),
        participants: vec![
            ParticipantSpec {
                id: "alice".into(),
                legs: vec![LegSpec {
                    name: "audio".into(),
                    receive_key: alice_key.clone(),
                    send_key: key(),
                    remote: None,
                }],
                tracks: vec![TrackSpec {
                    name: "mic".into(),
                    kind: "audio".into(),
                    leg: "audio".into(),
                    ssrc: SSRC,
                    ..Default::default()
                }],
                subscriptions: Vec::new(),
            },
            ParticipantSpec {
                id: "bob".into(),
                legs: vec![LegSpec {
                    name: "audio".into(),
                    receive_key: key(),
                    send_key: bob_key.clone(),
                    remote: Some(receiver.local_addr()?),
                }],
                tracks: Vec::new(),
                subscriptions: vec![SubscriptionSpec {
                    track: "alice/mic".into(),
                    leg: "audio".into(),
                    ..Default::default()
                }],
            },
        ],
    };
    let listen = config.listen;
    let forwarder = Forwarder::start(&config, temp.path(), network)?;

    // The child is the forwarder itself, inside the namespace.
    let pid = forwarder.pid();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    ensure!(
        exe.file_name().is_some_and(|n| n == "fanout-forwarder"),
        "pid {pid} is {}",
        exe.display()
    );
    ensure!(
        namespace_inode(Path::new(&format!("/proc/{pid}/ns/net")))?
            == namespace_inode(&Path::new("/run/netns").join(&namespace))?,
        "the forwarder is not in {namespace}"
    );
    ensure!(forwarder.metrics_address().ip() == listen.ip());

    // Publisher -> forwarder -> receiver, every datagram across the veth both ways.
    let master = |k: &SrtpKey| MasterKey::from_inline(profile, &k.inline()).context("bad key");
    let mut protect = SrtpContext::new(&master(&alice_key)?);
    let mut unprotect = SrtpContext::new(&master(&bob_key)?);
    let payload = |seq: u16| -> Vec<u8> { (0..160).map(|i| (i as u16 ^ seq) as u8).collect() };
    for seq in 0..PACKETS {
        let mut packet = vec![0u8; 12 + 160 + 64];
        packet[0] = 0x80;
        packet[1] = 111;
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        packet[4..8].copy_from_slice(&(u32::from(seq) * 960).to_be_bytes());
        packet[8..12].copy_from_slice(&SSRC.to_be_bytes());
        packet[12..172].copy_from_slice(&payload(seq));
        let n = protect.protect_rtp(&mut packet, 172)?;
        publisher.send_to(&packet[..n], listen)?;
    }
    let mut buf = [0u8; 2048];
    let mut received = Vec::new();
    let deadline = Instant::now() + RECEIVE_TIMEOUT;
    while received.len() < usize::from(PACKETS) && Instant::now() < deadline {
        let (n, from) = receive(&receiver, &mut buf)?;
        // RTCP goes to port + 1; this socket gets RTP only.
        ensure!(from.ip() == listen.ip(), "a datagram from {from}");
        let n = unprotect
            .unprotect_rtp(&mut buf[..n])
            .context("a forwarded packet did not authenticate with the receiver's key")?;
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        received.push(buf[12..n].to_vec());
        ensure!(n == 172, "packet {seq} is {n} bytes");
    }
    ensure!(
        received.len() == usize::from(PACKETS),
        "{} of {PACKETS} packets arrived",
        received.len()
    );
    let mut expected: Vec<Vec<u8>> = (0..PACKETS).map(payload).collect();
    expected.sort();
    received.sort();
    ensure!(received == expected, "the payloads differ from those sent");

    let metrics = forwarder.scrape()?;
    ensure!(metrics.rtp_received("alice", "audio")? == u64::from(PACKETS));
    ensure!(metrics.rtp_sent("bob", "audio")? == u64::from(PACKETS));
    let veth = forwarder.network().veth_traffic()?.context("no counters")?;
    eprintln!("veth: {veth:?}");
    ensure!(veth.to_forwarder >= u64::from(PACKETS) && veth.from_forwarder >= u64::from(PACKETS));
    forwarder.stop()?;
    ensure!(
        !exists_namespace(&namespace) && !exists_link(&root_link),
        "{namespace} or {root_link} is left after the forwarder stopped"
    );
    Ok(())
}

/// Removes a namespace and a link of the sweep test if the sweep did not.
struct Leftovers(Vec<(&'static str, String)>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for (kind, name) in &self.0 {
            let args: &[&str] = match *kind {
                "netns" => &["netns", "del", name],
                _ => &["link", "del", name],
            };
            if (*kind == "netns" && exists_namespace(name))
                || (*kind == "link" && exists_link(name))
            {
                let _ = Command::new("ip").args(args).output();
            }
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let mut command = Command::new("ip");
    command.args(args);
    process::run(&format!("ip {}", args.join(" ")), command, RECEIVE_TIMEOUT)?;
    Ok(())
}

#[test]
fn what_killed_runs_left_is_swept() -> Result<()> {
    require_netns!();
    // A pid that is gone: a child that exited and was reaped.
    let mut child = Command::new("true").spawn()?;
    let dead = child.id();
    child.wait()?;
    // What a run killed before its Drop left: a namespace with its veth pair, and a root
    // link whose namespace is gone. The link names are outside 10.214/16's use: no
    // addresses.
    let (stale_ns, stale_pair, stale_link) = (
        namespace_name(dead, 0),
        root_link_name(dead, 0),
        root_link_name(dead, 1),
    );
    // A live process's (ours, with numbers this process never reaches).
    let own = std::process::id();
    let (live_ns, live_link) = (namespace_name(own, 99_999), root_link_name(own, 99_998));
    let _cleanup = Leftovers(vec![
        ("netns", stale_ns.clone()),
        ("link", stale_pair.clone()),
        ("link", stale_link.clone()),
        ("netns", live_ns.clone()),
        ("link", live_link.clone()),
    ]);
    ip(&["netns", "add", &stale_ns])?;
    ip(&[
        "link",
        "add",
        &stale_pair,
        "type",
        "veth",
        "peer",
        "name",
        "x",
        "netns",
        &stale_ns,
    ])?;
    ip(&[
        "link",
        "add",
        &stale_link,
        "type",
        "veth",
        "peer",
        "name",
        "ft-sweep-peer",
    ])?;
    ip(&["netns", "add", &live_ns])?;
    ip(&[
        "link",
        "add",
        &live_link,
        "type",
        "veth",
        "peer",
        "name",
        "ft-live-peer",
    ])?;

    let removed = sweep_stale()?;
    eprintln!("swept: {removed:?}");
    // Another test process may sweep them first: what counts is that they are gone.
    ensure!(!exists_namespace(&stale_ns), "{stale_ns} is left");
    ensure!(!exists_link(&stale_pair), "{stale_pair} is left");
    ensure!(!exists_link(&stale_link), "{stale_link} is left");
    ensure!(
        !exists_link("ft-sweep-peer"),
        "the peer of {stale_link} is left"
    );
    ensure!(
        exists_namespace(&live_ns),
        "{live_ns} of a live process was swept"
    );
    ensure!(
        exists_link(&live_link),
        "{live_link} of a live process was swept"
    );
    Ok(())
}
