//! Where a frame goes: the kernel's route and neighbour tables, asked over rtnetlink.
//!
//! The fast path writes Ethernet headers itself, so for every destination it needs the
//! next hop's MAC address on the forwarder's interface. The kernel knows it: RTM_GETROUTE
//! for the destination gives the output interface, the gateway (or none, on link) and the
//! preferred source address; RTM_GETNEIGH for the next hop on that interface gives its MAC
//! address, if the neighbour is resolved. [`NeighbourCache`] keeps answers for a while so
//! the packet path asks the kernel once per destination and period, not per packet.
//!
//! What the kernel cannot answer yet (no neighbour entry, or one still INCOMPLETE), and
//! destinations routed through another interface, go through the kernel socket instead
//! (the slow path): sending there also makes the kernel resolve the neighbour, so a later
//! lookup finds it. Answers that send the slow way expire sooner than resolved ones, so the
//! fast path takes over within [`UNRESOLVED_TTL`] of the kernel learning the MAC address.
//!
//! A caveat of bypassing the stack: the kernel never sees our traffic use a neighbour, so
//! it does not confirm it; the entry goes STALE and, after `gc_stale_time`, may be removed.
//! A removed entry sends the next lookup down the slow path, which resolves it again.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::frame::MacAddr;

// rtnetlink message types and attributes (linux/rtnetlink.h, linux/neighbour.h,
// linux/if_link.h, linux/netlink.h).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTN_UNICAST: u8 = 1;
const RTN_LOCAL: u8 = 2;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_NUM_RX_QUEUES: u16 = 32;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// Neighbour states whose link-layer address may be used (NUD_VALID in the kernel):
/// REACHABLE, STALE, DELAY, PROBE, NOARP, PERMANENT.
const NUD_VALID: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;

const NLMSG_HEADER_LEN: usize = 16;
const RTMSG_LEN: usize = 12;
const NDMSG_LEN: usize = 12;
const IFINFOMSG_LEN: usize = 16;
/// Enough for any single reply to the requests made here.
const RECV_BUFFER_LEN: usize = 32 << 10;
/// A kernel that does not answer within this is broken; the packet path must not hang.
const REPLY_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a resolved next hop is trusted before asking the kernel again.
pub const RESOLVED_TTL: Duration = Duration::from_secs(5);
/// How long a destination keeps going the slow way before asking again.
pub const UNRESOLVED_TTL: Duration = Duration::from_millis(50);
/// Destinations remembered; past this, expired entries are swept, and if none had
/// expired the whole cache is dropped (it refills from the kernel on demand).
const MAX_ENTRIES: usize = 1 << 16;

/// What RTM_GETLINK says about an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: MacAddr,
    pub mtu: u32,
    /// Receive queues (IFLA_NUM_RX_QUEUES): one AF_XDP socket each.
    pub rx_queues: u32,
}

/// What RTM_GETROUTE says about a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// RTN_* route type: unicast, local, broadcast...
    pub kind: u8,
    pub interface: Option<u32>,
    pub gateway: Option<IpAddr>,
    pub preferred_source: Option<IpAddr>,
}

/// A neighbour entry with a usable link-layer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub mac: MacAddr,
    /// NUD_* state bits.
    pub state: u16,
}

/// A route-netlink socket for one-shot requests (never dumps).
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Netlink {
    /// Open a NETLINK_ROUTE socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: REPLY_TIMEOUT.as_micros() as libc::suseconds_t,
        };
        // SAFETY: the option value points at a live timeval of the size passed.
        let set = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink {
            fd,
            sequence: 0,
            buffer: vec![0; RECV_BUFFER_LEN],
        })
    }

    /// The interface with this index.
    pub fn link(&mut self, index: u32) -> io::Result<Link> {
        let mut body = [0u8; IFINFOMSG_LEN];
        body[0] = libc::AF_UNSPEC as u8;
        body[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
        let reply = self.request(RTM_GETLINK, &body)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no interface {index}"))
        })?;
        parse_link(&reply).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "malformed RTM_NEWLINK reply")
        })
    }

    /// The route the kernel would use for `destination` (`interface`: the scope of a
    /// link-local IPv6 destination). `Ok(None)` when there is none (unreachable).
    pub fn route(
        &mut self,
        destination: IpAddr,
        interface: Option<u32>,
    ) -> io::Result<Option<Route>> {
        let mut body = vec![0u8; RTMSG_LEN];
        let (family, address_len) = match destination {
            IpAddr::V4(_) => (libc::AF_INET, 4u8),
            IpAddr::V6(_) => (libc::AF_INET6, 16u8),
        };
        body[0] = family as u8;
        body[1] = address_len * 8;
        push_attribute(&mut body, RTA_DST, &ip_octets(destination));
        if let Some(interface) = interface {
            push_attribute(&mut body, RTA_OIF, &interface.to_ne_bytes());
        }
        match self.request(RTM_GETROUTE, &body) {
            Ok(Some(reply)) => Ok(parse_route(&reply)),
            Ok(None) => Ok(None),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ESRCH)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The neighbour entry for `address` on `interface`, if it has a usable MAC address.
    pub fn neighbour(&mut self, interface: u32, address: IpAddr) -> io::Result<Option<Neighbour>> {
        let mut body = vec![0u8; NDMSG_LEN];
        body[0] = match address {
            IpAddr::V4(_) => libc::AF_INET,
            IpAddr::V6(_) => libc::AF_INET6,
        } as u8;
        body[4..8].copy_from_slice(&(interface as i32).to_ne_bytes());
        push_attribute(&mut body, NDA_DST, &ip_octets(address));
        match self.request(RTM_GETNEIGH, &body) {
            Ok(Some(reply)) => Ok(parse_neighbour(&reply)),
            Ok(None) => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Send one request and return the payload of its reply (after the netlink header),
    /// `None` for an empty acknowledgement. A kernel error comes back as its errno.
    fn request(&mut self, kind: u16, body: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut message = Vec::with_capacity(NLMSG_HEADER_LEN + body.len());
        message.extend_from_slice(&((NLMSG_HEADER_LEN + body.len()) as u32).to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        message.extend_from_slice(&sequence.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(body);
        // SAFETY: a zeroed sockaddr_nl is valid; nl_pid 0 addresses the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `message` and `kernel` are live for the call, with the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            // SAFETY: the buffer is live and writable for its whole length.
            let received = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buffer.as_mut_ptr().cast(),
                    self.buffer.len(),
                    0,
                )
            };
            if received < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut rest = &self.buffer[..received as usize];
            while rest.len() >= NLMSG_HEADER_LEN {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len < NLMSG_HEADER_LEN || len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                let payload = &rest[NLMSG_HEADER_LEN..len];
                rest = &rest[align4(len).min(rest.len())..];
                // A late reply to an earlier request that timed out: skip it.
                if seq != sequence {
                    continue;
                }
                return match kind {
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(-libc::EPROTO);
                        if code == 0 {
                            Ok(None)
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        }
                    }
                    NLMSG_DONE => Ok(None),
                    RTM_NEWLINK | RTM_NEWROUTE | RTM_NEWNEIGH => Ok(Some(payload.to_vec())),
                    other => Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected netlink reply type {other}"),
                    )),
                };
            }
        }
    }
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

fn ip_octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn push_attribute(message: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    message.extend_from_slice(&(len as u16).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(value);
    message.resize(align4(message.len()), 0);
}

/// The (type, value) attributes after a fixed header; stops at the first malformed one.
fn attributes(bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        // NLA_F_NESTED and NLA_F_NET_BYTEORDER live in the top bits of the type.
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        let value = &rest[4..len];
        rest = &rest[align4(len).min(rest.len())..];
        Some((kind, value))
    })
}

fn ip_from(value: &[u8]) -> Option<IpAddr> {
    match value.len() {
        4 => Some(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?).into()),
        16 => Some(Ipv6Addr::from(<[u8; 16]>::try_from(value).ok()?).into()),
        _ => None,
    }
}

fn u32_from(value: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(value.get(..4)?.try_into().ok()?))
}

fn parse_link(payload: &[u8]) -> Option<Link> {
    let header = payload.get(..IFINFOMSG_LEN)?;
    let index = u32::from_ne_bytes(header[4..8].try_into().ok()?);
    let mut link = Link {
        index,
        name: String::new(),
        mac: MacAddr::default(),
        mtu: 1500,
        rx_queues: 1,
    };
    for (kind, value) in attributes(&payload[IFINFOMSG_LEN..]) {
        match kind {
            IFLA_ADDRESS if value.len() == 6 => link.mac = MacAddr(value.try_into().ok()?),
            IFLA_IFNAME => {
                let name = value.split(|&b| b == 0).next().unwrap_or_default();
                link.name = String::from_utf8_lossy(name).into_owned();
            }
            IFLA_MTU => link.mtu = u32_from(value)?,
            IFLA_NUM_RX_QUEUES => link.rx_queues = u32_from(value)?.max(1),
            _ => {}
        }
    }
    Some(link)
}

fn parse_route(payload: &[u8]) -> Option<Route> {
    let header = payload.get(..RTMSG_LEN)?;
    let mut route = Route {
        kind: header[7],
        interface: None,
        gateway: None,
        preferred_source: None,
    };
    for (kind, value) in attributes(&payload[RTMSG_LEN..]) {
        match kind {
            RTA_OIF => route.interface = u32_from(value),
            RTA_GATEWAY => route.gateway = ip_from(value),
            RTA_PREFSRC => route.preferred_source = ip_from(value),
            _ => {}
        }
    }
    Some(route)
}

fn parse_neighbour(payload: &[u8]) -> Option<Neighbour> {
    let header = payload.get(..NDMSG_LEN)?;
    let state = u16::from_ne_bytes([header[8], header[9]]);
    if state & NUD_VALID == 0 {
        return None;
    }
    attributes(&payload[NDMSG_LEN..])
        .find(|&(kind, value)| kind == NDA_LLADDR && value.len() == 6)
        .and_then(|(_, value)| Some(MacAddr(value.try_into().ok()?)))
        .map(|mac| Neighbour { mac, state })
}

/// Why a datagram goes through the kernel socket rather than the XSK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowReason {
    /// The next hop has no resolved neighbour entry yet.
    Unresolved,
    /// The route leaves through another interface (or is local: loopback).
    OtherInterface,
    /// No route: the kernel's send reports the error.
    NoRoute,
    /// Netlink failed; the kernel will know better.
    LookupFailed,
}

/// Where to send a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// Write the frame ourselves: to this MAC, from the route's preferred source address
    /// when the socket's own address is unspecified.
    Direct {
        mac: MacAddr,
        preferred_source: Option<IpAddr>,
    },
    Kernel(SlowReason),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    next_hop: NextHop,
    expires: Instant,
}

/// Lookups of the kernel's tables, as an interface so tests can answer without a kernel.
pub trait Tables {
    fn route(&mut self, destination: IpAddr, interface: Option<u32>) -> io::Result<Option<Route>>;
    fn neighbour(&mut self, interface: u32, address: IpAddr) -> io::Result<Option<Neighbour>>;
}

impl Tables for Netlink {
    fn route(&mut self, destination: IpAddr, interface: Option<u32>) -> io::Result<Option<Route>> {
        Netlink::route(self, destination, interface)
    }
    fn neighbour(&mut self, interface: u32, address: IpAddr) -> io::Result<Option<Neighbour>> {
        Netlink::neighbour(self, interface, address)
    }
}

/// Counters of the cache, for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheStats {
    /// Route and neighbour lookups sent to the kernel (pairs count once).
    pub lookups: u64,
    pub lookup_failures: u64,
}

/// Next hops of destinations, from the kernel, remembered for a while.
#[derive(Debug)]
pub struct NeighbourCache<T: Tables = Netlink> {
    tables: T,
    interface: u32,
    entries: HashMap<(IpAddr, u32), Entry>,
    pub stats: CacheStats,
}

impl<T: Tables> NeighbourCache<T> {
    /// A cache for frames leaving through `interface`.
    pub fn new(tables: T, interface: u32) -> Self {
        NeighbourCache {
            tables,
            interface,
            entries: HashMap::new(),
            stats: CacheStats::default(),
        }
    }

    /// Where to send a datagram for `destination` (`scope`: its IPv6 scope id, 0 if none).
    pub fn next_hop(&mut self, now: Instant, destination: IpAddr, scope: u32) -> NextHop {
        let key = (destination, scope);
        if let Some(entry) = self.entries.get(&key) {
            if entry.expires > now {
                return entry.next_hop;
            }
        }
        let next_hop = self.look_up(destination, scope);
        let ttl = match next_hop {
            NextHop::Direct { .. } => RESOLVED_TTL,
            NextHop::Kernel(_) => UNRESOLVED_TTL,
        };
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.retain(|_, entry| entry.expires > now);
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
        }
        self.entries.insert(
            key,
            Entry {
                next_hop,
                expires: now + ttl,
            },
        );
        next_hop
    }

    fn look_up(&mut self, destination: IpAddr, scope: u32) -> NextHop {
        self.stats.lookups += 1;
        let route = match self
            .tables
            .route(destination, (scope != 0).then_some(scope))
        {
            Ok(Some(route)) => route,
            Ok(None) => return NextHop::Kernel(SlowReason::NoRoute),
            Err(e) => {
                self.stats.lookup_failures += 1;
                tracing::debug!(%destination, error = %e, "route lookup failed");
                return NextHop::Kernel(SlowReason::LookupFailed);
            }
        };
        if route.kind == RTN_LOCAL
            || route.kind != RTN_UNICAST
            || route.interface != Some(self.interface)
        {
            return NextHop::Kernel(SlowReason::OtherInterface);
        }
        let hop = route.gateway.unwrap_or(destination);
        match self.tables.neighbour(self.interface, hop) {
            Ok(Some(neighbour)) => NextHop::Direct {
                mac: neighbour.mac,
                preferred_source: route.preferred_source,
            },
            Ok(None) => NextHop::Kernel(SlowReason::Unresolved),
            Err(e) => {
                self.stats.lookup_failures += 1;
                tracing::debug!(%hop, error = %e, "neighbour lookup failed");
                NextHop::Kernel(SlowReason::LookupFailed)
            }
        }
    }

    /// Destinations currently remembered.
    pub fn remembered(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables that answer from fixed maps and count the questions.
    #[derive(Default)]
    struct FakeTables {
        routes: HashMap<IpAddr, Route>,
        neighbours: HashMap<IpAddr, MacAddr>,
        questions: usize,
    }

    impl Tables for FakeTables {
        fn route(&mut self, destination: IpAddr, _: Option<u32>) -> io::Result<Option<Route>> {
            self.questions += 1;
            Ok(self.routes.get(&destination).copied())
        }
        fn neighbour(&mut self, _: u32, address: IpAddr) -> io::Result<Option<Neighbour>> {
            Ok(self
                .neighbours
                .get(&address)
                .map(|&mac| Neighbour { mac, state: 0x02 }))
        }
    }

    fn unicast(interface: u32, gateway: Option<&str>) -> Route {
        Route {
            kind: RTN_UNICAST,
            interface: Some(interface),
            gateway: gateway.map(|g| g.parse().unwrap()),
            preferred_source: Some("10.0.0.1".parse().unwrap()),
        }
    }

    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 7]);

    #[test]
    fn on_link_gateway_other_interface_and_unresolved() {
        let mut tables = FakeTables::default();
        let on_link: IpAddr = "10.0.0.2".parse().unwrap();
        let far: IpAddr = "192.0.2.9".parse().unwrap();
        let elsewhere: IpAddr = "198.51.100.1".parse().unwrap();
        let unresolved: IpAddr = "10.0.0.3".parse().unwrap();
        tables.routes.insert(on_link, unicast(5, None));
        tables.routes.insert(far, unicast(5, Some("10.0.0.254")));
        tables.routes.insert(elsewhere, unicast(6, None));
        tables.routes.insert(unresolved, unicast(5, None));
        tables.neighbours.insert(on_link, MAC);
        tables.neighbours.insert(
            "10.0.0.254".parse().unwrap(),
            MacAddr([2, 0, 0, 0, 0, 0xfe]),
        );
        let mut cache = NeighbourCache::new(tables, 5);
        let now = Instant::now();
        let direct = |mac| NextHop::Direct {
            mac,
            preferred_source: Some("10.0.0.1".parse().unwrap()),
        };
        assert_eq!(cache.next_hop(now, on_link, 0), direct(MAC));
        assert_eq!(
            cache.next_hop(now, far, 0),
            direct(MacAddr([2, 0, 0, 0, 0, 0xfe])),
            "through the gateway's MAC"
        );
        assert_eq!(
            cache.next_hop(now, elsewhere, 0),
            NextHop::Kernel(SlowReason::OtherInterface)
        );
        assert_eq!(
            cache.next_hop(now, unresolved, 0),
            NextHop::Kernel(SlowReason::Unresolved)
        );
        assert_eq!(
            cache.next_hop(now, "203.0.113.1".parse().unwrap(), 0),
            NextHop::Kernel(SlowReason::NoRoute)
        );
    }

    #[test]
    fn answers_are_cached_until_they_expire() {
        let mut tables = FakeTables::default();
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        tables.routes.insert(peer, unicast(5, None));
        let mut cache = NeighbourCache::new(tables, 5);
        let start = Instant::now();
        assert_eq!(
            cache.next_hop(start, peer, 0),
            NextHop::Kernel(SlowReason::Unresolved)
        );
        assert_eq!(
            cache.next_hop(start + UNRESOLVED_TTL / 2, peer, 0),
            NextHop::Kernel(SlowReason::Unresolved)
        );
        assert_eq!(
            cache.tables.questions, 1,
            "the second answer came from the cache"
        );
        // The kernel resolves the neighbour (the slow path's send made it ARP).
        cache.tables.neighbours.insert(peer, MAC);
        let later = start + UNRESOLVED_TTL;
        assert!(matches!(
            cache.next_hop(later, peer, 0),
            NextHop::Direct { mac: MAC, .. }
        ));
        assert!(matches!(
            cache.next_hop(later + RESOLVED_TTL / 2, peer, 0),
            NextHop::Direct { .. }
        ));
        assert_eq!(cache.tables.questions, 2);
        cache.tables.neighbours.clear();
        assert_eq!(
            cache.next_hop(later + RESOLVED_TTL, peer, 0),
            NextHop::Kernel(SlowReason::Unresolved),
            "a vanished neighbour is noticed once the entry expires"
        );
    }

    #[test]
    fn link_route_and_neighbour_replies_parse() {
        // An RTM_NEWLINK payload: ifinfomsg, then IFLA_IFNAME, IFLA_MTU, IFLA_ADDRESS,
        // IFLA_NUM_RX_QUEUES.
        let mut link = vec![0u8; IFINFOMSG_LEN];
        link[4..8].copy_from_slice(&7i32.to_ne_bytes());
        push_attribute(&mut link, IFLA_IFNAME, b"veth0\0");
        push_attribute(&mut link, IFLA_MTU, &1500u32.to_ne_bytes());
        push_attribute(&mut link, IFLA_ADDRESS, &MAC.0);
        push_attribute(&mut link, IFLA_NUM_RX_QUEUES, &4u32.to_ne_bytes());
        assert_eq!(
            parse_link(&link),
            Some(Link {
                index: 7,
                name: "veth0".into(),
                mac: MAC,
                mtu: 1500,
                rx_queues: 4
            })
        );
        let mut route = vec![0u8; RTMSG_LEN];
        route[7] = RTN_UNICAST;
        push_attribute(&mut route, RTA_OIF, &7u32.to_ne_bytes());
        push_attribute(&mut route, RTA_GATEWAY, &[10, 0, 0, 254]);
        push_attribute(&mut route, RTA_PREFSRC, &[10, 0, 0, 1]);
        assert_eq!(parse_route(&route), Some(unicast(7, Some("10.0.0.254"))));
        let mut neighbour = vec![0u8; NDMSG_LEN];
        neighbour[8..10].copy_from_slice(&0x04u16.to_ne_bytes()); // STALE: usable
        push_attribute(&mut neighbour, NDA_DST, &[10, 0, 0, 254]);
        push_attribute(&mut neighbour, NDA_LLADDR, &MAC.0);
        assert_eq!(parse_neighbour(&neighbour).map(|n| n.mac), Some(MAC));
        neighbour[8..10].copy_from_slice(&0x01u16.to_ne_bytes()); // INCOMPLETE
        assert_eq!(parse_neighbour(&neighbour), None);
        // Truncated replies are refused, not panicked on.
        assert_eq!(parse_link(&link[..10]), None);
        assert_eq!(parse_route(&route[..5]), None);
        assert_eq!(parse_neighbour(&[]), None);
        let mut bad = vec![0u8; RTMSG_LEN];
        bad.extend_from_slice(&[200, 0, 4, 0]); // attribute longer than the message
        assert!(parse_route(&bad).unwrap().interface.is_none());
    }

    #[test]
    fn the_kernel_answers_for_loopback() {
        let mut netlink = match Netlink::open() {
            Ok(netlink) => netlink,
            Err(e) => {
                eprintln!("SKIPPED: no rtnetlink here ({e})");
                return;
            }
        };
        // SAFETY: the name is a NUL-terminated C string.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        assert_ne!(lo, 0, "every namespace has lo");
        let link = netlink.link(lo).unwrap();
        assert_eq!(link.name, "lo");
        assert_eq!(link.mac, MacAddr::default());
        let route = netlink
            .route("127.0.0.1".parse().unwrap(), None)
            .unwrap()
            .expect("127.0.0.1 is routed");
        assert_eq!(route.kind, RTN_LOCAL);
        assert_eq!(route.interface, Some(lo));
        let mut cache = NeighbourCache::new(netlink, lo + 1000);
        assert_eq!(
            cache.next_hop(Instant::now(), "127.0.0.1".parse().unwrap(), 0),
            NextHop::Kernel(SlowReason::OtherInterface)
        );
        assert_eq!(
            cache
                .tables
                .neighbour(lo, "127.0.0.9".parse().unwrap())
                .unwrap(),
            None,
            "no neighbour entry on lo"
        );
    }
}
