//! The AF_XDP driver (`--io afxdp --xdp IFACE`): datagrams move between the NIC and the
//! core through AF_XDP sockets, bypassing the kernel's IP and UDP layers.
//!
//! * Receive: one AF_XDP socket ([`umem::XskQueue`]) per receive queue of the interface,
//!   registered in the XDP guard's `fanout_xsks` map, so the guard's program redirects the
//!   packets it allows on that queue to it. Frames are parsed here ([`frame`]: Ethernet
//!   with up to two VLAN tags, IPv4/IPv6, UDP) and the payload goes to the core with its
//!   source and local address, exactly as the mio driver hands over what `recvmmsg`
//!   returns. Frames go back to the fill ring as soon as the core is done with them.
//! * Transmit: the core writes each datagram into a UMEM frame, behind room for the
//!   headers; the driver writes Ethernet/IP/UDP headers with checksums in front and puts
//!   the frame on the TX ring of queue 0's socket (any queue may transmit; one keeps the
//!   frame pool in one place), kicking the kernel with `sendto` (copy mode transmits only
//!   then). The next hop's MAC comes from the kernel's tables ([`neighbour`]).
//! * The slow path: the ordinary kernel UDP sockets stay bound on the forwarder's
//!   addresses. They reserve the ports, receive what does not come through XDP (loopback
//!   traffic, packets on queues without a socket, everything before the guard redirects),
//!   and send what cannot go the fast way: a next hop whose MAC the kernel does not know
//!   yet (sending through the kernel makes it resolve it, so later datagrams go fast), a
//!   route through another interface, a datagram larger than the MTU, no free UMEM frame
//!   or no room on the TX ring. Nothing is dropped for being unable to go fast.
//!
//! One thread waits on everything with epoll (mio): the kernel sockets, the AF_XDP
//! sockets (readable when their RX ring has frames) and a waker for commands, metrics and
//! stop. One shard only: an AF_XDP socket receives what the NIC's RSS puts on its queue,
//! not what belongs to a shard, so main.rs runs a single shard under this driver.
//!
//! Start-up order (main.rs, and the veth test): load the guard, build this driver (which
//! puts its sockets in the guard's map), fill the guard's allowlist, then attach the guard.
//!
//! Known limits:
//! * Zero-copy is tried first and copy mode taken when the driver has none (veth, most
//!   virtual NICs). In copy mode the kernel transmits only inside our `sendto` kicks, 32
//!   frames per call, and a frame completes only when its socket buffer is freed: over a
//!   veth, when the receiving application has read it. Frames in flight are bounded by
//!   [`umem::TX_FRAMES`]; past that, datagrams go the slow way (counted as
//!   `no_free_frame`), they are not dropped.
//! * Everything is transmitted from queue 0's socket.
//! * Neighbour entries are read, never confirmed (see [`neighbour`]): a peer whose MAC
//!   changes without the kernel hearing of it gets frames for the old MAC until the entry
//!   changes or expires from the kernel's table.
//! * IPv4 options on receive are skipped with the header; IPv6 extension headers other
//!   than hop-by-hop, routing and destination options are refused (counted), as are
//!   fragments (the guard drops those before us anyway).

pub mod frame;
pub mod neighbour;
pub mod umem;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::mio::net::UdpSocket as MioUdpSocket;
use ::mio::unix::SourceFd;
use ::mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, info, warn};
use xdpilone::xdp::XdpDesc;

use self::frame::{Headers, Malformed, MAX_HEADER_LEN};
use self::neighbour::{Link, NeighbourCache, Netlink, NextHop, SlowReason};
use self::umem::{Mode, XskQueue};
use super::common::{drain_events, CommandQueue, EventSink, Progress};
use super::recorder::RecorderTap;
use super::{DriverHandle, DriverStats, StopHandle, TrafficCounters};
use crate::edge::{PeerSync, XdpGuard};
use crate::exporter::{MetricsExchange, Wake};
use crate::sfu::{Forwarder, MAX_DATAGRAM_LEN, MIN_TRANSMIT_BUFFER_LEN};

/// Frames taken from an RX ring at once, and datagrams read from a kernel socket per turn.
const BATCH: u32 = 64;
/// RX batches taken from one socket before the others get a turn.
const BATCHES_PER_TURN: usize = 16;
/// Frames written before they are handed to the kernel in one go.
const TX_BATCH: usize = 64;
/// How soon to kick again when the kernel left frames on a TX ring.
const TX_RETRY: Duration = Duration::from_millis(1);

const WAKER: Token = Token(usize::MAX);
/// Tokens of the AF_XDP sockets start here (kernel sockets count up from 0).
const XSK_TOKENS: usize = 1 << 30;

/// What the driver needs from the XDP guard: the interface, and a way to have the guard's
/// program redirect a queue's packets to an AF_XDP socket. `edge::XdpGuard` is the real
/// one; tests may register nothing (transmit works without any XDP program).
pub trait XskRegistry: Send + Sync + std::fmt::Debug {
    /// The interface's name.
    fn interface(&self) -> &str;
    /// Its index, in the namespace the driver runs in.
    fn interface_index(&self) -> u32;
    /// Redirect the allowed packets of RX queue `queue` to `socket` from now on.
    fn register_xsk(&self, queue: u32, socket: BorrowedFd<'_>) -> io::Result<()>;
}

impl XskRegistry for XdpGuard {
    fn interface(&self) -> &str {
        XdpGuard::interface(self)
    }
    fn interface_index(&self) -> u32 {
        XdpGuard::interface_index(self)
    }
    fn register_xsk(&self, queue: u32, socket: BorrowedFd<'_>) -> io::Result<()> {
        XdpGuard::register_xsk(self, queue, socket).map_err(io::Error::other)
    }
}

/// Why a datagram went the slow way (the kernel socket). Each is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlowPath {
    Route(SlowReason),
    /// The socket is bound to an unspecified address and the route names no source.
    NoSourceAddress,
    /// The IP packet would exceed the interface's MTU: the kernel fragments it.
    TooBig,
    /// Every TX frame was in flight.
    NoFrame,
    /// The TX ring had no room.
    RingFull,
}

impl SlowPath {
    const ALL: [SlowPath; 8] = [
        SlowPath::Route(SlowReason::Unresolved),
        SlowPath::Route(SlowReason::OtherInterface),
        SlowPath::Route(SlowReason::NoRoute),
        SlowPath::Route(SlowReason::LookupFailed),
        SlowPath::NoSourceAddress,
        SlowPath::TooBig,
        SlowPath::NoFrame,
        SlowPath::RingFull,
    ];

    fn index(self) -> usize {
        Self::ALL.iter().position(|&p| p == self).unwrap_or(0)
    }

    fn label(self) -> &'static str {
        match self {
            SlowPath::Route(SlowReason::Unresolved) => "neighbour_unresolved",
            SlowPath::Route(SlowReason::OtherInterface) => "other_interface",
            SlowPath::Route(SlowReason::NoRoute) => "no_route",
            SlowPath::Route(SlowReason::LookupFailed) => "lookup_failed",
            SlowPath::NoSourceAddress => "no_source_address",
            SlowPath::TooBig => "too_big",
            SlowPath::NoFrame => "no_free_frame",
            SlowPath::RingFull => "tx_ring_full",
        }
    }
}

/// Counters of the AF_XDP driver beyond the common [`DriverStats`].
#[derive(Debug, Default, Clone, Copy)]
pub struct AfXdpStats {
    /// Datagrams received through AF_XDP sockets and handed to the core.
    pub xsk_received: u64,
    /// Datagrams received through the kernel sockets and handed to the core.
    pub kernel_received: u64,
    /// Frames refused by the parser, by [`Malformed`] reason.
    pub malformed: [u64; Malformed::ALL.len()],
    /// UDP datagrams for an address no socket of the forwarder is bound to.
    pub not_local: u64,
    /// Datagrams put on a TX ring (the fast path).
    pub tx_fast: u64,
    /// Datagrams sent through a kernel socket, by [`SlowPath`] reason.
    slow: [u64; SlowPath::ALL.len()],
}

impl AfXdpStats {
    /// Datagrams sent through the kernel sockets, whatever the reason.
    pub fn tx_slow(&self) -> u64 {
        self.slow.iter().sum()
    }

    /// Datagrams that went slow because the next hop was not resolved yet.
    pub fn tx_slow_unresolved(&self) -> u64 {
        self.slow[SlowPath::Route(SlowReason::Unresolved).index()]
    }
}

struct KernelSocket {
    socket: MioUdpSocket,
    local: SocketAddr,
    /// Edge-triggered readiness not yet exhausted.
    readable: bool,
}

struct Queue {
    xsk: XskQueue,
    readable: bool,
}

/// The AF_XDP driver.
pub struct AfXdpDriver {
    poll: Poll,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    commands: Arc<CommandQueue>,
    sockets: Vec<KernelSocket>,
    /// Sockets by local port, to find the local address of a datagram that came through
    /// XDP (the kernel's socket lookup, in miniature).
    by_port: HashMap<u16, Vec<usize>>,
    queues: Vec<Queue>,
    link: Link,
    neighbours: NeighbourCache,
    registry: Arc<dyn XskRegistry>,
    metrics: Option<Arc<MetricsExchange>>,
    progress: Progress,
    events: Option<EventSink>,
    /// Keeps the XDP guard's allowlist equal to the core's peers.
    peer_sync: Option<PeerSync>,
    /// Where the media of recorded meetings goes.
    recorder: Option<RecorderTap>,
    stats: DriverStats,
    xdp: AfXdpStats,
    rx_descs: Vec<XdpDesc>,
    refused: Vec<XdpDesc>,
    /// Where the core writes a datagram when no UMEM frame is free.
    scratch: Vec<u8>,
    /// Kernel socket receives; one byte more than the core takes, to notice truncation.
    recv_buf: Vec<u8>,
}

impl std::fmt::Debug for AfXdpDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfXdpDriver")
            .field("interface", &self.link.name)
            .field(
                "queues",
                &self.queues.iter().map(|q| &q.xsk).collect::<Vec<_>>(),
            )
            .field(
                "sockets",
                &self.sockets.iter().map(|s| s.local).collect::<Vec<_>>(),
            )
            .field("stats", &self.stats)
            .field("xdp", &self.xdp)
            .finish_non_exhaustive()
    }
}

struct AfXdpWake(Arc<Waker>);

impl Wake for AfXdpWake {
    fn wake(&self) {
        if let Err(e) = self.0.wake() {
            warn!(error = %e, "cannot wake the driver");
        }
    }
}

/// Whether this kernel has AF_XDP sockets at all: `Err` with the reason if not.
pub fn probe() -> Result<(), String> {
    // SAFETY: plain socket(2); a descriptor returned is closed right away.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "cannot create an AF_XDP socket: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` was just created here and is closed once.
    unsafe { libc::close(fd) };
    Ok(())
}

impl AfXdpDriver {
    /// Take ownership of bound sockets (the first is the default for transmits that name
    /// no source) and open an AF_XDP socket on every receive queue of the guard's
    /// interface, registering each with the guard.
    pub fn new(sockets: Vec<UdpSocket>, registry: Arc<dyn XskRegistry>) -> io::Result<Self> {
        if sockets.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the AF_XDP driver needs at least one bound socket",
            ));
        }
        probe().map_err(io::Error::other)?;
        let index = registry.interface_index();
        let mut netlink = Netlink::open()?;
        let link = netlink.link(index)?;
        let rx_queues = queue_count(&link);
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut kernel_sockets = Vec::with_capacity(sockets.len());
        let mut by_port: HashMap<u16, Vec<usize>> = HashMap::new();
        for (i, socket) in sockets.into_iter().enumerate() {
            socket.set_nonblocking(true)?;
            let local = socket.local_addr()?;
            let mut socket = MioUdpSocket::from_std(socket);
            poll.registry()
                .register(&mut socket, Token(i), Interest::READABLE)?;
            by_port.entry(local.port()).or_default().push(i);
            kernel_sockets.push(KernelSocket {
                socket,
                local,
                readable: true,
            });
        }
        let mut queues = Vec::with_capacity(rx_queues as usize);
        for queue in 0..rx_queues {
            let xsk = match XskQueue::open(index, queue) {
                Ok(xsk) => xsk,
                // Queues past the first may be allocated but not in use (veth, a NIC with
                // fewer channels configured): the kernel refuses to bind to them.
                Err(e) if queue > 0 => {
                    warn!(interface = %link.name, queue, error = %e, "no AF_XDP socket on this queue; its packets reach the kernel sockets");
                    break;
                }
                Err(e) => return Err(e),
            };
            poll.registry().register(
                &mut SourceFd(&xsk.raw_fd()),
                Token(XSK_TOKENS + queue as usize),
                Interest::READABLE,
            )?;
            registry.register_xsk(queue, xsk.fd())?;
            info!(interface = %link.name, queue, mode = ?xsk.mode(), "AF_XDP socket bound");
            queues.push(Queue {
                xsk,
                readable: true,
            });
        }
        Ok(AfXdpDriver {
            poll,
            waker,
            stop: Arc::new(AtomicBool::new(false)),
            commands: Arc::new(CommandQueue::default()),
            sockets: kernel_sockets,
            by_port,
            queues,
            neighbours: NeighbourCache::new(netlink, link.index),
            link,
            registry,
            metrics: None,
            progress: Progress::new(Some(Duration::from_secs(10))),
            events: None,
            peer_sync: None,
            recorder: None,
            stats: DriverStats::default(),
            xdp: AfXdpStats::default(),
            rx_descs: Vec::with_capacity(BATCH as usize),
            refused: Vec::new(),
            scratch: vec![0; MIN_TRANSMIT_BUFFER_LEN],
            recv_buf: vec![0; MAX_DATAGRAM_LEN + 1],
        })
    }

    /// The AF_XDP counters.
    pub fn afxdp_stats(&self) -> AfXdpStats {
        self.xdp
    }

    /// TX frames the kernel has not given back yet, after reaping what it has completed.
    /// Zero once all that was sent has left: no frame is ever lost.
    pub fn frames_in_flight(&mut self) -> usize {
        self.queues
            .iter_mut()
            .map(|q| {
                q.xsk.reap_completions();
                q.xsk.tx_in_flight()
            })
            .sum()
    }

    /// The interface the driver's AF_XDP sockets are bound to.
    pub fn interface(&self) -> &str {
        self.registry.interface()
    }

    /// How each queue's socket is bound (zero-copy or copy).
    pub fn modes(&self) -> Vec<Mode> {
        self.queues.iter().map(|q| q.xsk.mode()).collect()
    }

    fn wake(&self) -> Arc<dyn Wake> {
        Arc::new(AfXdpWake(self.waker.clone()))
    }

    /// Run until stopped.
    pub fn run(&mut self, core: &mut Forwarder) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        info!(
            interface = %self.link.name,
            queues = self.queues.len(),
            addresses = ?self.sockets.iter().map(|s| s.local).collect::<Vec<_>>(),
            "forwarding through AF_XDP"
        );
        self.progress.start(Instant::now());
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            self.progress.tick(now, &self.stats, core);
            self.commands.run(core);
            core.handle_timeout(now);
            self.drain(core, now);
            self.flush_tx(core);
            let busy = self.sockets.iter().any(|s| s.readable)
                || self.queues.iter().any(|q| q.readable || q.xsk.rx_pending());
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                [core.poll_timeout(), self.progress.due()]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|t| t.saturating_duration_since(now))
            };
            // Frames left on a TX ring (the kernel answered every kick with "try again")
            // are not announced by any event: come back for them soon.
            let timeout = if self.queues.iter().any(|q| q.xsk.tx_ring_pending() > 0) {
                Some(timeout.map_or(TX_RETRY, |t| t.min(TX_RETRY)))
            } else {
                timeout
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(t) if t >= XSK_TOKENS => {
                        if let Some(q) = self.queues.get_mut(t - XSK_TOKENS) {
                            q.readable = true;
                        }
                    }
                    Token(i) => {
                        if let Some(s) = self.sockets.get_mut(i) {
                            s.readable = true;
                        }
                    }
                }
            }
            for q in 0..self.queues.len() {
                if self.queues[q].readable || self.queues[q].xsk.rx_pending() {
                    self.receive_xsk(q, core);
                }
            }
            for i in 0..self.sockets.len() {
                if self.sockets[i].readable {
                    self.receive_kernel(i, core);
                }
            }
            for q in &mut self.queues {
                q.xsk.reap_completions();
            }
            if let Some(exchange) = self.metrics.as_deref() {
                let (stats, xdp, queues) = (&self.stats, &self.xdp, &self.queues);
                let lookups = self.neighbours.stats;
                exchange.serve(|out| {
                    core.write_metrics(out);
                    super::common::write_driver_metrics(stats, out);
                    write_afxdp_metrics(xdp, queues, lookups, out);
                });
            }
        }
        info!(stats = ?self.stats, afxdp = ?self.xdp, "driver stopped");
        Ok(())
    }

    /// Take up to a fair share of batches from queue `q`'s RX ring, forwarding as we go.
    fn receive_xsk(&mut self, q: usize, core: &mut Forwarder) {
        let mut descs = std::mem::take(&mut self.rx_descs);
        for _ in 0..BATCHES_PER_TURN {
            descs.clear();
            self.queues[q].xsk.receive(BATCH, &mut descs);
            if descs.is_empty() {
                self.queues[q].readable = false;
                break;
            }
            let now = Instant::now();
            for desc in &descs {
                let Some(frame) = self.queues[q].xsk.rx_frame(desc) else {
                    continue;
                };
                match frame::parse(frame) {
                    Err(reason) => {
                        self.xdp.malformed[reason.index()] += 1;
                        tracing::trace!(?reason, "malformed frame dropped");
                    }
                    Ok(datagram) => {
                        let source = with_scope(datagram.source, self.link.index);
                        match local_for(&self.sockets, &self.by_port, datagram.destination, source)
                        {
                            Some((local, source)) => {
                                self.stats.datagrams_received += 1;
                                self.xdp.xsk_received += 1;
                                core.handle_datagram(
                                    now,
                                    local,
                                    source,
                                    &mut frame[datagram.payload],
                                );
                            }
                            None => self.xdp.not_local += 1,
                        }
                    }
                }
                self.drain(core, now);
            }
            // The core is done with these frames: they go back to the kernel.
            self.queues[q].xsk.recycle(&descs);
            self.flush_tx(core);
            if descs.len() < BATCH as usize {
                self.queues[q].readable = false;
                break;
            }
        }
        self.rx_descs = descs;
    }

    /// Read what the kernel socket `i` has, up to a fair share, forwarding as we go.
    fn receive_kernel(&mut self, i: usize, core: &mut Forwarder) {
        for _ in 0..BATCH as usize * BATCHES_PER_TURN {
            let socket = &self.sockets[i];
            let (len, source) = match socket.socket.recv_from(&mut self.recv_buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.sockets[i].readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; not fatal for UDP.
                    debug!(error = %e, "recv_from");
                    continue;
                }
            };
            self.stats.recv_syscalls += 1;
            if len > MAX_DATAGRAM_LEN {
                self.stats.truncated += 1;
                continue;
            }
            self.stats.datagrams_received += 1;
            self.xdp.kernel_received += 1;
            let now = Instant::now();
            let local = self.sockets[i].local;
            core.handle_datagram(now, local, source, &mut self.recv_buf[..len]);
            self.drain(core, now);
        }
        self.flush_tx(core);
    }

    /// Move every pending transmit of the core into UMEM frames (or the slow path); log its
    /// events.
    fn drain(&mut self, core: &mut Forwarder, now: Instant) {
        loop {
            let frame = self.queues.first_mut().and_then(|q| q.xsk.take_tx_frame());
            let transmit = match frame {
                Some(frame) => {
                    let buf = &mut self.queues[0].xsk.tx_frame(frame)[MAX_HEADER_LEN..];
                    let transmit = core.poll_transmit(buf);
                    if transmit.is_none() {
                        self.queues[0].xsk.return_tx_frame(frame);
                    }
                    transmit
                }
                None => core.poll_transmit(&mut self.scratch),
            };
            let Some(transmit) = transmit else { break };
            let socket = transmit
                .source
                .and_then(|source| self.sockets.iter().position(|s| s.local == source))
                .unwrap_or(0);
            match frame {
                Some(frame) => {
                    if let Err(reason) =
                        self.send_fast(now, socket, frame, transmit.destination, transmit.len)
                    {
                        let payload = &self.queues[0].xsk.tx_frame(frame)
                            [MAX_HEADER_LEN..MAX_HEADER_LEN + transmit.len];
                        send_slow(
                            &self.sockets[socket],
                            &mut self.stats,
                            &mut self.xdp,
                            core,
                            reason,
                            transmit.destination,
                            payload,
                        );
                        self.queues[0].xsk.return_tx_frame(frame);
                    }
                }
                None => {
                    send_slow(
                        &self.sockets[socket],
                        &mut self.stats,
                        &mut self.xdp,
                        core,
                        SlowPath::NoFrame,
                        transmit.destination,
                        &self.scratch[..transmit.len],
                    );
                }
            }
            if self
                .queues
                .first()
                .is_some_and(|q| q.xsk.tx_batched() >= TX_BATCH)
            {
                self.flush_tx(core);
            }
        }
        drain_events(
            core,
            self.events.as_ref(),
            self.peer_sync.as_mut(),
            self.recorder.as_mut(),
            &mut self.stats,
        );
    }

    /// Write the headers in front of the payload the core put in `frame` and queue it on
    /// the TX ring; `Err` says why it must go the slow way instead.
    fn send_fast(
        &mut self,
        now: Instant,
        socket: usize,
        frame: u64,
        destination: SocketAddr,
        len: usize,
    ) -> Result<(), SlowPath> {
        let local = self.sockets[socket].local;
        let destination = unmapped(destination);
        let scope = match destination {
            SocketAddr::V6(v6) => v6.scope_id(),
            SocketAddr::V4(_) => 0,
        };
        let (mac, preferred_source) = match self.neighbours.next_hop(now, destination.ip(), scope) {
            NextHop::Direct {
                mac,
                preferred_source,
            } => (mac, preferred_source),
            NextHop::Kernel(reason) => return Err(SlowPath::Route(reason)),
        };
        let local_ip = unmapped(local).ip();
        let source_ip = if local_ip.is_unspecified() {
            preferred_source.ok_or(SlowPath::NoSourceAddress)?
        } else {
            local_ip
        };
        if source_ip.is_ipv4() != destination.is_ipv4() {
            return Err(SlowPath::NoSourceAddress);
        }
        let headers = Headers {
            source_mac: self.link.mac,
            destination_mac: mac,
            source: SocketAddr::new(source_ip, local.port()),
            destination,
        };
        let header_len = headers.header_len();
        if header_len - frame::ETHERNET_HEADER_LEN + len > self.link.mtu as usize {
            return Err(SlowPath::TooBig);
        }
        let start = MAX_HEADER_LEN - header_len;
        let xsk = &mut self.queues[0].xsk;
        let frame_len = frame::build(&mut xsk.tx_frame(frame)[start..], &headers, len)
            .map_err(|_| SlowPath::TooBig)?;
        xsk.push_tx(frame, start, frame_len);
        Ok(())
    }

    /// Hand the batched frames to the kernel; those the TX ring refused go the slow way.
    fn flush_tx(&mut self, core: &mut Forwarder) {
        let Some(queue) = self.queues.first_mut() else {
            return;
        };
        let batched = queue.xsk.tx_batched();
        self.refused.clear();
        queue.xsk.flush(&mut self.refused);
        let accepted = batched - self.refused.len();
        self.xdp.tx_fast += accepted as u64;
        self.stats.datagrams_sent += accepted as u64;
        for desc in std::mem::take(&mut self.refused) {
            let frame = desc.addr & !(u64::from(umem::FRAME_SIZE) - 1);
            let bytes = &self.queues[0].xsk.tx_frame(frame)[(desc.addr - frame) as usize..]
                [..desc.len as usize];
            match frame::parse(bytes) {
                Ok(datagram) => {
                    let socket = local_for(
                        &self.sockets,
                        &self.by_port,
                        datagram.source,
                        datagram.destination,
                    )
                    .and_then(|(local, _)| self.sockets.iter().position(|s| s.local == local))
                    .unwrap_or(0);
                    send_slow(
                        &self.sockets[socket],
                        &mut self.stats,
                        &mut self.xdp,
                        core,
                        SlowPath::RingFull,
                        datagram.destination,
                        &bytes[datagram.payload],
                    );
                }
                // Frames we built ourselves always parse; count it as a failure if not.
                Err(_) => self.stats.send_failures += 1,
            }
            self.queues[0].xsk.return_tx_frame(frame);
        }
    }
}

/// Send through kernel socket `socket` (the slow path), counting why.
fn send_slow(
    socket: &KernelSocket,
    stats: &mut DriverStats,
    xdp: &mut AfXdpStats,
    core: &mut Forwarder,
    reason: SlowPath,
    destination: SocketAddr,
    payload: &[u8],
) {
    xdp.slow[reason.index()] += 1;
    stats.send_syscalls += 1;
    // A v4-mapped destination leaves a v6 socket as is; a v4 socket needs it plain.
    let destination = if socket.local.is_ipv4() {
        unmapped(destination)
    } else {
        destination
    };
    match socket.socket.send_to(payload, destination) {
        Ok(_) => stats.datagrams_sent += 1,
        Err(e) => {
            debug!(%destination, error = %e, "slow-path send failed");
            stats.send_failures += 1;
            core.note_send_failure(destination);
        }
    }
}

/// The local address of the socket a datagram for `destination` belongs to, as the kernel
/// would pick it (an exact address before a wildcard), and the source as that socket
/// would report it (IPv4-mapped on a dual-stack IPv6 socket).
fn local_for(
    sockets: &[KernelSocket],
    by_port: &HashMap<u16, Vec<usize>>,
    destination: SocketAddr,
    source: SocketAddr,
) -> Option<(SocketAddr, SocketAddr)> {
    let candidates = by_port.get(&destination.port())?;
    let mut wildcard = None;
    for &i in candidates {
        let local = sockets[i].local;
        if local.ip() == destination.ip() {
            return Some((local, source));
        }
        if local.ip().is_unspecified() && wildcard.is_none() {
            let same_family = local.is_ipv4() == destination.is_ipv4();
            if same_family {
                wildcard = Some((local, source));
            } else if let (IpAddr::V6(_), IpAddr::V4(v4)) = (local.ip(), source.ip()) {
                let mapped = SocketAddr::new(v4.to_ipv6_mapped().into(), source.port());
                wildcard = Some((local, mapped));
            }
        }
    }
    wildcard
}

/// A link-local IPv6 source as the kernel reports it: scoped to the interface it came in
/// on, so that replies to it know their way out.
fn with_scope(source: SocketAddr, interface: u32) -> SocketAddr {
    match source {
        SocketAddr::V6(mut v6) if v6.ip().is_unicast_link_local() => {
            v6.set_scope_id(interface);
            SocketAddr::V6(v6)
        }
        other => other,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn unmapped(address: SocketAddr) -> SocketAddr {
    match address {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => address,
        },
        SocketAddr::V4(_) => address,
    }
}

/// Receive queues to open sockets on: the queues in use per sysfs (`queues/rx-*`), when
/// sysfs shows this interface (it shows the namespace it was mounted in); else the
/// allocated count from netlink, of which unused queues are skipped when binding fails.
fn queue_count(link: &Link) -> u32 {
    let dir = format!("/sys/class/net/{}", link.name);
    let same = std::fs::read_to_string(format!("{dir}/ifindex"))
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        == Some(link.index);
    if same {
        if let Ok(entries) = std::fs::read_dir(format!("{dir}/queues")) {
            let count = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32;
            if count > 0 {
                return count;
            }
        }
    }
    link.rx_queues
}

fn write_afxdp_metrics(
    xdp: &AfXdpStats,
    queues: &[Queue],
    lookups: neighbour::CacheStats,
    out: &mut String,
) {
    use std::fmt::Write;
    let sum = |f: fn(&umem::QueueStats) -> u64| queues.iter().map(|q| f(&q.xsk.stats)).sum::<u64>();
    let kernel: Vec<_> = queues.iter().filter_map(|q| q.xsk.kernel_stats()).collect();
    let kernel_sum =
        |f: fn(&xdpilone::xdp::XdpStatisticsV2) -> u64| kernel.iter().map(f).sum::<u64>();
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    counter(
        "fanout_afxdp_rx_frames_total",
        "Frames read from the AF_XDP sockets' RX rings",
        sum(|s| s.rx_frames),
    );
    counter(
        "fanout_afxdp_rx_datagrams_total",
        "Datagrams received through AF_XDP and handed to the core",
        xdp.xsk_received,
    );
    counter("fanout_afxdp_kernel_socket_datagrams_total", "Datagrams received through the kernel UDP sockets (not redirected by XDP) and handed to the core", xdp.kernel_received);
    counter(
        "fanout_afxdp_rx_not_local_total",
        "UDP datagrams through AF_XDP for an address no forwarder socket is bound to",
        xdp.not_local,
    );
    counter(
        "fanout_afxdp_tx_fast_total",
        "Datagrams transmitted through an AF_XDP TX ring",
        xdp.tx_fast,
    );
    counter(
        "fanout_afxdp_fill_ring_starved_total",
        "Refills that found the fill ring empty (the kernel may have dropped for want of frames)",
        sum(|s| s.fill_starved),
    );
    counter(
        "fanout_afxdp_tx_ring_full_total",
        "Flushes that found the TX ring without room for every frame",
        sum(|s| s.tx_ring_full),
    );
    counter(
        "fanout_afxdp_tx_frames_exhausted_total",
        "Transmits that found no free UMEM frame",
        sum(|s| s.tx_frames_exhausted),
    );
    counter(
        "fanout_afxdp_tx_kicks_total",
        "sendto calls kicking the TX ring",
        sum(|s| s.tx_kicks),
    );
    counter(
        "fanout_afxdp_tx_kick_errors_total",
        "TX kicks failed with an error other than try-again",
        sum(|s| s.tx_kick_errors),
    );
    counter(
        "fanout_afxdp_tx_kick_again_total",
        "TX kicks answered try-again (per-call budget spent, or back-pressure)",
        sum(|s| s.tx_kick_again),
    );
    counter(
        "fanout_afxdp_tx_device_drops_total",
        "Frames the device dropped on transmit (a kick answered EBUSY)",
        sum(|s| s.tx_device_drops),
    );
    counter(
        "fanout_afxdp_tx_kick_budget_spent_total",
        "Flushes that stopped kicking with frames still on the TX ring",
        sum(|s| s.tx_kick_budget_spent),
    );
    counter(
        "fanout_afxdp_bad_descriptors_total",
        "RX descriptors pointing outside the UMEM",
        sum(|s| s.bad_descriptors),
    );
    counter(
        "fanout_afxdp_neighbour_lookups_total",
        "Route and neighbour lookups sent to the kernel over rtnetlink",
        lookups.lookups,
    );
    counter(
        "fanout_afxdp_neighbour_lookup_failures_total",
        "rtnetlink lookups that failed",
        lookups.lookup_failures,
    );
    counter(
        "fanout_afxdp_kernel_rx_dropped_total",
        "Frames the kernel dropped for the AF_XDP sockets (XDP_STATISTICS rx_dropped)",
        kernel_sum(|k| k.rx_dropped),
    );
    counter(
        "fanout_afxdp_kernel_rx_ring_full_total",
        "Frames the kernel dropped because an RX ring was full",
        kernel_sum(|k| k.rx_ring_full),
    );
    counter(
        "fanout_afxdp_kernel_fill_ring_empty_total",
        "Times the kernel found a fill ring empty",
        kernel_sum(|k| k.rx_fill_ring_empty_descs),
    );
    counter(
        "fanout_afxdp_kernel_invalid_descriptors_total",
        "RX and TX descriptors the kernel found invalid",
        kernel_sum(|k| k.rx_invalid_descs + k.tx_invalid_descs),
    );
    let name = "fanout_afxdp_tx_slow_total";
    let _ = writeln!(out, "# HELP {name} Datagrams sent through the kernel UDP socket instead of AF_XDP, by reason\n# TYPE {name} counter");
    for path in SlowPath::ALL {
        let _ = writeln!(
            out,
            "{name}{{reason=\"{}\"}} {}",
            path.label(),
            xdp.slow[path.index()]
        );
    }
    let name = "fanout_afxdp_rx_malformed_total";
    let _ = writeln!(out, "# HELP {name} Frames through AF_XDP dropped as not a well-formed UDP datagram, by reason\n# TYPE {name} counter");
    for reason in Malformed::ALL {
        let _ = writeln!(
            out,
            "{name}{{reason=\"{}\"}} {}",
            reason.label(),
            xdp.malformed[reason.index()]
        );
    }
}

impl super::Driver for AfXdpDriver {
    fn kind(&self) -> super::DriverKind {
        super::DriverKind::AfXdp
    }
    fn serve_metrics(&mut self, exchange: Arc<MetricsExchange>) -> Arc<dyn Wake> {
        self.metrics = Some(exchange);
        self.wake()
    }
    fn set_progress_interval(&mut self, interval: Option<Duration>) {
        self.progress.set_interval(interval);
    }
    fn set_event_sink(&mut self, sink: EventSink) {
        self.events = Some(sink);
    }
    fn set_peer_sync(&mut self, sync: PeerSync) {
        self.peer_sync = Some(sync);
    }

    fn set_recorder(&mut self, tap: RecorderTap) {
        self.recorder = Some(tap);
    }
    fn stop_handle(&self) -> StopHandle {
        StopHandle::new(self.stop.clone(), self.wake())
    }
    fn handle(&self) -> DriverHandle {
        DriverHandle::new(self.commands.clone(), self.wake())
    }
    fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|s| s.local).collect()
    }
    fn stats(&self) -> DriverStats {
        self.stats
    }
    fn traffic(&self) -> Arc<TrafficCounters> {
        self.progress.traffic()
    }
    fn run(&mut self, core: &mut Forwarder) -> io::Result<()> {
        AfXdpDriver::run(self, core)
    }
}

#[cfg(test)]
mod tests;
