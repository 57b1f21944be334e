//! Tests of the driver's bookkeeping. The path over a real veth pair, with and without the
//! XDP guard, is forwarder/tests/afxdp_veth.rs.

use super::*;

fn kernel_socket(local: &str) -> KernelSocket {
    // Sockets are never used for I/O here: only their local address matters.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    KernelSocket {
        socket: MioUdpSocket::from_std(socket),
        local: local.parse().unwrap(),
        readable: false,
    }
}

fn index(sockets: &[KernelSocket]) -> HashMap<u16, Vec<usize>> {
    let mut by_port: HashMap<u16, Vec<usize>> = HashMap::new();
    for (i, s) in sockets.iter().enumerate() {
        by_port.entry(s.local.port()).or_default().push(i);
    }
    by_port
}

#[test]
fn datagrams_find_their_socket_as_the_kernel_would() {
    let sockets = vec![
        kernel_socket("0.0.0.0:5004"),
        kernel_socket("10.0.0.1:5004"),
        kernel_socket("[::]:6000"),
        kernel_socket("[fd00::1]:7000"),
    ];
    let by_port = index(&sockets);
    let at = |destination: &str, source: &str| {
        local_for(
            &sockets,
            &by_port,
            destination.parse().unwrap(),
            source.parse().unwrap(),
        )
        .map(|(local, source)| (local.to_string(), source.to_string()))
    };
    let pair = |local: &str, source: &str| Some((local.to_owned(), source.to_owned()));
    assert_eq!(
        at("10.0.0.1:5004", "10.0.0.9:1"),
        pair("10.0.0.1:5004", "10.0.0.9:1"),
        "the exact address before the wildcard"
    );
    assert_eq!(
        at("10.0.0.2:5004", "10.0.0.9:1"),
        pair("0.0.0.0:5004", "10.0.0.9:1"),
        "the wildcard for any other address"
    );
    assert_eq!(
        at("10.0.0.2:6000", "10.0.0.9:1"),
        pair("[::]:6000", "[::ffff:10.0.0.9]:1"),
        "a dual-stack socket sees IPv4 sources mapped"
    );
    assert_eq!(
        at("[fd00::1]:7000", "[fd00::9]:1"),
        pair("[fd00::1]:7000", "[fd00::9]:1")
    );
    assert_eq!(at("[fd00::2]:7000", "[fd00::9]:1"), None, "bound elsewhere");
    assert_eq!(at("10.0.0.1:9999", "10.0.0.9:1"), None, "no such port");
}

#[test]
fn mapped_addresses_are_unmapped_for_the_wire() {
    let mapped: SocketAddr = "[::ffff:192.0.2.1]:5004".parse().unwrap();
    assert_eq!(unmapped(mapped), "192.0.2.1:5004".parse().unwrap());
    for plain in ["[fd00::1]:5", "192.0.2.1:5"] {
        let plain: SocketAddr = plain.parse().unwrap();
        assert_eq!(unmapped(plain), plain);
    }
}

#[test]
fn link_local_sources_get_the_interface_as_scope() {
    let link_local: SocketAddr = "[fe80::2]:5004".parse().unwrap();
    assert_eq!(
        with_scope(link_local, 7),
        "[fe80::2%7]:5004".parse().unwrap()
    );
    for global in ["[fd00::2]:5004", "10.0.0.2:5004"] {
        let global: SocketAddr = global.parse().unwrap();
        assert_eq!(with_scope(global, 7), global);
    }
}

#[test]
fn metrics_name_every_counter_once() {
    let mut xdp = AfXdpStats {
        tx_fast: 7,
        ..AfXdpStats::default()
    };
    xdp.slow[SlowPath::RingFull.index()] = 3;
    xdp.malformed[Malformed::Fragment.index()] = 2;
    let mut out = String::new();
    write_afxdp_metrics(&xdp, &[], neighbour::CacheStats::default(), &mut out);
    assert!(out.contains("\nfanout_afxdp_tx_fast_total 7\n"), "{out}");
    assert!(out.contains("fanout_afxdp_tx_slow_total{reason=\"tx_ring_full\"} 3\n"));
    assert!(out.contains("fanout_afxdp_rx_malformed_total{reason=\"fragment\"} 2\n"));
    let mut seen = std::collections::HashSet::new();
    for line in out.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(name.starts_with("fanout_afxdp_"), "{line}");
        assert!(value.parse::<u64>().is_ok(), "{line}");
        assert!(seen.insert(name.to_owned()), "{name} twice");
    }
    let labels: std::collections::HashSet<_> = SlowPath::ALL.iter().map(|p| p.label()).collect();
    assert_eq!(
        labels.len(),
        SlowPath::ALL.len(),
        "slow-path labels are distinct"
    );
    for (i, path) in SlowPath::ALL.iter().enumerate() {
        assert_eq!(path.index(), i);
    }
}

/// Run `f` on a thread in a fresh network namespace of its own, with `lo` up: AF_XDP
/// sockets bound there conflict with nothing else on the machine, and the namespace goes
/// away with the last socket in it. `None` (skipped, said loudly) without root or AF_XDP.
fn in_private_namespace<T: Send>(f: impl FnOnce(u32) -> T + Send) -> Option<T> {
    if let Err(reason) = probe() {
        eprintln!("SKIPPED: {reason}");
        return None;
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare affects only the calling thread, which is ours.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    eprintln!(
                        "SKIPPED: cannot make a network namespace: {}",
                        io::Error::last_os_error()
                    );
                    return None;
                }
                let lo = set_loopback_up().expect("lo up in the new namespace");
                Some(f(lo))
            })
            .join()
            .expect("the namespace thread panicked")
    })
}

/// Bring `lo` up (SIOCSIFFLAGS) and return its index.
fn set_loopback_up() -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    // Any socket of the namespace serves for interface ioctls; binding needs no interface.
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: `request` is a live ifreq naming lo; the socket is open.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above, now with the flags to set.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the name is a NUL-terminated C string.
    Ok(unsafe { libc::if_nametoindex(c"lo".as_ptr()) })
}

#[derive(Debug)]
struct Loopback(u32);

impl XskRegistry for Loopback {
    fn interface(&self) -> &str {
        "lo"
    }
    fn interface_index(&self) -> u32 {
        self.0
    }
    fn register_xsk(&self, _: u32, _: BorrowedFd<'_>) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn commands_run_on_the_driver_thread_in_order() {
    let driver = in_private_namespace(|lo| {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        AfXdpDriver::new(vec![socket], Arc::new(Loopback(lo))).unwrap()
    });
    if let Some(driver) = driver {
        crate::driver::common::conformance::commands_run_on_the_driver_thread_in_order(driver);
    }
}

#[test]
fn tx_frames_are_all_accounted_for() {
    in_private_namespace(|lo| {
        let mut xsk = XskQueue::open(lo, 0).expect("AF_XDP socket on lo");
        // Every TX frame can be taken once; then none is left, and that is counted.
        let mut taken = Vec::new();
        while let Some(frame) = xsk.take_tx_frame() {
            taken.push(frame);
        }
        assert_eq!(taken.len(), umem::TX_FRAMES as usize);
        assert_eq!(xsk.stats.tx_frames_exhausted, 1);
        let distinct: std::collections::HashSet<_> = taken.iter().collect();
        assert_eq!(distinct.len(), taken.len(), "no frame handed out twice");
        // Send half of them (to a closed port on lo: the kernel drops them after the
        // transmit completes), give the other half back unused.
        let headers = Headers {
            source_mac: frame::MacAddr::default(),
            destination_mac: frame::MacAddr::default(),
            source: "127.0.0.1:9".parse().unwrap(),
            destination: "127.0.0.1:9".parse().unwrap(),
        };
        let (send, keep) = taken.split_at(taken.len() / 2);
        for &frame in send {
            let len = frame::build(xsk.tx_frame(frame), &headers, 100).unwrap();
            xsk.push_tx(frame, 0, len);
        }
        for &frame in keep {
            xsk.return_tx_frame(frame);
        }
        let mut refused = Vec::new();
        xsk.flush(&mut refused);
        assert!(
            refused.is_empty(),
            "the TX ring holds {} frames",
            send.len()
        );
        assert_eq!(xsk.stats.tx_frames, send.len() as u64);
        // Copy mode completes each frame once the kernel is done with its copy: wait for
        // every completion (kicking again if the kernel stopped short), bounded.
        let deadline = Instant::now() + Duration::from_secs(5);
        while xsk.tx_in_flight() > 0 {
            assert!(
                Instant::now() < deadline,
                "{} frames never completed: {:?}",
                xsk.tx_in_flight(),
                xsk.stats
            );
            xsk.flush(&mut refused);
            std::thread::yield_now();
        }
        assert_eq!(xsk.stats.tx_kick_errors, 0, "{:?}", xsk.stats);
    });
}

/// xdpilone serves a reservation from its cached view of the ring while that shows any
/// room: a batch larger than that view must still go in whole once the kernel has made
/// room (it once came back as "TX ring full" with the ring empty).
#[test]
fn a_batch_larger_than_the_cached_room_goes_in_whole() {
    in_private_namespace(|lo| {
        let mut xsk = XskQueue::open(lo, 0).expect("AF_XDP socket on lo");
        let headers = Headers {
            source_mac: frame::MacAddr::default(),
            destination_mac: frame::MacAddr::default(),
            source: "127.0.0.1:9".parse().unwrap(),
            destination: "127.0.0.1:9".parse().unwrap(),
        };
        let mut refused = Vec::new();
        for round in 0..3 {
            for _ in 0..600 {
                let frame = xsk.take_tx_frame().expect("a free frame");
                let len = frame::build(xsk.tx_frame(frame), &headers, 100).unwrap();
                xsk.push_tx(frame, 0, len);
            }
            xsk.flush(&mut refused);
            assert!(
                refused.is_empty(),
                "round {round}: {} refused",
                refused.len()
            );
            // Wait for the kernel to take and complete the round, bounded.
            let deadline = Instant::now() + Duration::from_secs(5);
            while xsk.tx_in_flight() > 0 {
                assert!(Instant::now() < deadline, "round {round}: {:?}", xsk.stats);
                xsk.flush(&mut refused);
                std::thread::yield_now();
            }
        }
        assert_eq!(xsk.stats.tx_ring_full, 0);
        assert_eq!(xsk.stats.tx_frames, 1800);
    });
}

fn ip_command(args: &[&str]) -> Result<(), String> {
    let output = std::process::Command::new("ip")
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

/// Turn TX checksum offload of `link` off (ETHTOOL_STXCSUM through SIOCETHTOOL), so the
/// kernel computes UDP checksums in software before the frame leaves.
fn tx_checksum_offload_off(link: &str) -> io::Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    use std::os::fd::AsRawFd;
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(link.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: `request` names the link and points at `value`, both live for the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut request) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Frames the kernel builds itself (UDP over IPv4 and IPv6, checksums computed in
/// software) captured off a veth with a packet socket: their IPv4 header checksums verify
/// with `frame::checksum`, and the UDP checksum `frame::build` writes for the same
/// addresses, ports and payload is the kernel's.
#[test]
fn checksums_match_frames_captured_from_the_kernel() {
    in_private_namespace(|_| {
        if ip_command(&["-V"]).is_err() {
            eprintln!("SKIPPED: no `ip` (iproute2)");
            return;
        }
        // Both ends in this (private) namespace; the destinations are neighbours that do
        // not exist, with permanent entries, so the kernel sends out of `fxc1` rather than
        // looping back, and `fxc0` receives what it sent.
        for args in [
            &[
                "link", "add", "fxc0", "type", "veth", "peer", "name", "fxc1",
            ][..],
            &["addr", "add", "10.5.0.2/24", "dev", "fxc1"],
            &["-6", "addr", "add", "fd05::2/64", "dev", "fxc1", "nodad"],
            &["link", "set", "fxc0", "up"],
            &["link", "set", "fxc1", "up"],
            &[
                "neigh",
                "add",
                "10.5.0.9",
                "lladdr",
                "02:00:00:00:00:09",
                "dev",
                "fxc1",
            ],
            &[
                "neigh",
                "add",
                "fd05::9",
                "lladdr",
                "02:00:00:00:00:09",
                "dev",
                "fxc1",
            ],
        ] {
            ip_command(args).expect("veth pair in the private namespace");
        }
        tx_checksum_offload_off("fxc1").expect("TX checksum offload off");
        // SAFETY: plain socket(2); ETH_P_ALL in network order, as packet(7) wants.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            )
        };
        assert!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just created and is owned by nobody else.
        let capture = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: all-zero is a valid sockaddr_ll; the fields set make it name fxc0.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: the name is a NUL-terminated C string.
        address.sll_ifindex = unsafe { libc::if_nametoindex(c"fxc0".as_ptr()) } as i32;
        // SAFETY: `address` is a live sockaddr_ll of the size passed.
        let bound = unsafe {
            libc::bind(
                fd,
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(bound, 0, "bind: {}", io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: the option value points at a live timeval of the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        for (from, to) in [
            ("10.5.0.2:4000", "10.5.0.9:5000"),
            ("[fd05::2]:4000", "[fd05::9]:5000"),
        ] {
            let payload = b"a datagram the kernel checksums in software";
            let sender = UdpSocket::bind(from).unwrap();
            sender.send_to(payload, to).unwrap();
            let (from, to): (SocketAddr, SocketAddr) = (from.parse().unwrap(), to.parse().unwrap());
            let mut buf = [0u8; 2048];
            let captured = loop {
                // SAFETY: the buffer is live and writable for its whole length; `capture`
                // keeps the descriptor open.
                let n = unsafe {
                    libc::recv(
                        std::os::fd::AsRawFd::as_raw_fd(&capture),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                    )
                };
                assert!(
                    n > 0,
                    "no frame from {from} within 5 s: {}",
                    io::Error::last_os_error()
                );
                let frame = &buf[..n as usize];
                // Router solicitations and the like pass by too: wait for ours.
                if let Ok(datagram) = frame::parse(frame) {
                    if datagram.source == from && datagram.destination == to {
                        break frame.to_vec();
                    }
                }
            };
            let udp_at = frame::ETHERNET_HEADER_LEN
                + if to.is_ipv4() {
                    frame::IPV4_HEADER_LEN
                } else {
                    frame::IPV6_HEADER_LEN
                };
            let kernel_checksum = &captured[udp_at + 6..udp_at + 8];
            assert_ne!(kernel_checksum, [0, 0], "the kernel computed a checksum");
            if to.is_ipv4() {
                let header = &captured[frame::ETHERNET_HEADER_LEN..udp_at];
                assert_eq!(
                    frame::checksum(header, 0),
                    0,
                    "the kernel's IPv4 header checksum verifies"
                );
            }
            let headers = Headers {
                source_mac: frame::MacAddr(captured[6..12].try_into().unwrap()),
                destination_mac: frame::MacAddr(captured[0..6].try_into().unwrap()),
                source: from,
                destination: to,
            };
            let mut ours = vec![0u8; headers.header_len() + payload.len()];
            ours[headers.header_len()..].copy_from_slice(payload);
            frame::build(&mut ours, &headers, payload.len()).unwrap();
            assert_eq!(
                &ours[udp_at + 6..udp_at + 8],
                kernel_checksum,
                "UDP checksum to {to}"
            );
            assert_eq!(
                &ours[udp_at..],
                &captured[udp_at..udp_at + 8 + payload.len()]
            );
        }
    });
}
