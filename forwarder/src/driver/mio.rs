//! The portable driver: mio (epoll) readiness, `recvmmsg` and `sendmmsg` batches.
//!
//! One thread owns the core and every socket. On readiness it receives up to
//! [`BATCH`] datagrams per system call, hands each to the core and drains the core's
//! transmits into per-socket send batches, flushed with one `sendmmsg` when full and at
//! the end of every receive batch. A socket that stays readable after a fair share of
//! batches is revisited on the next turn (mio is edge-triggered, so the driver remembers).
//!
//! Other threads change the core through a [`DriverHandle`]: a command (a closure over
//! `&mut Forwarder`) goes into a small bounded queue and the driver's waker fires; the loop
//! runs queued commands between batches, after checking one atomic flag per turn, so the
//! per-packet path never takes a lock.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::mio::net::UdpSocket as MioUdpSocket;
use ::mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, info, warn};

use super::sockaddr;
use crate::edge::PeerSync;
use crate::exporter::{MetricsExchange, Wake};
use crate::sfu::{Forwarder, MAX_DATAGRAM_LEN, MIN_TRANSMIT_BUFFER_LEN};

/// Datagrams per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 64;
/// Receive batches taken from one socket before the others get a turn.
const BATCHES_PER_TURN: usize = 16;
/// How long a full send buffer may block the loop before the batch's remainder is dropped.
const SEND_STALL: Duration = Duration::from_millis(20);

const WAKER: Token = Token(usize::MAX);

use super::common::{drain_events, CommandQueue, EventSink, Progress};
pub use super::common::{
    Command, CommandError, DriverHandle, DriverStats, StopHandle, COMMAND_QUEUE_CAPACITY,
};
use super::recorder::RecorderTap;

struct MioWake(Arc<Waker>);

impl Wake for MioWake {
    fn wake(&self) {
        if let Err(e) = self.0.wake() {
            warn!(error = %e, "cannot wake the driver");
        }
    }
}

struct DriverSocket {
    socket: MioUdpSocket,
    local: SocketAddr,
    /// Edge-triggered readiness not yet exhausted.
    readable: bool,
    recv: RecvBatch,
    send: SendBatch,
}

/// The portable driver.
pub struct MioDriver {
    poll: Poll,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    commands: Arc<CommandQueue>,
    sockets: Vec<DriverSocket>,
    metrics: Option<Arc<MetricsExchange>>,
    progress: Progress,
    /// Where events other threads act on go (control mode).
    events: Option<EventSink>,
    /// Keeps the XDP guard's allowlist equal to the core's peers, when there is a guard.
    peer_sync: Option<PeerSync>,
    /// Where the media of recorded meetings goes.
    recorder: Option<RecorderTap>,
    stats: DriverStats,
}

impl std::fmt::Debug for MioDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MioDriver")
            .field(
                "sockets",
                &self.sockets.iter().map(|s| s.local).collect::<Vec<_>>(),
            )
            .field("stats", &self.stats)
            .finish()
    }
}

impl MioDriver {
    /// Take ownership of bound, non-blocking sockets. The first is the default for
    /// transmits that name no source.
    pub fn new(sockets: Vec<UdpSocket>) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut driver_sockets = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            socket.set_nonblocking(true)?;
            let local = socket.local_addr()?;
            let mut socket = MioUdpSocket::from_std(socket);
            poll.registry()
                .register(&mut socket, Token(i), Interest::READABLE)?;
            driver_sockets.push(DriverSocket {
                socket,
                local,
                readable: true,
                recv: RecvBatch::default(),
                send: SendBatch::new(),
            });
        }
        Ok(MioDriver {
            poll,
            waker,
            stop: Arc::new(AtomicBool::new(false)),
            commands: Arc::new(CommandQueue::default()),
            sockets: driver_sockets,
            metrics: None,
            progress: Progress::new(Some(Duration::from_secs(10))),
            events: None,
            peer_sync: None,
            recorder: None,
            stats: DriverStats::default(),
        })
    }

    /// Answer metric scrapes through `exchange`; returns the waker the scraper must use.
    pub fn serve_metrics(&mut self, exchange: Arc<MetricsExchange>) -> Arc<dyn Wake> {
        self.metrics = Some(exchange);
        Arc::new(MioWake(self.waker.clone()))
    }

    /// Log a progress line (datagrams in and out, drops) this often; `None` turns it off.
    pub fn set_progress_interval(&mut self, interval: Option<Duration>) {
        self.progress.set_interval(interval);
    }

    /// Hand the core's dominant-speaker events to `sink` (set before `run`).
    pub fn set_event_sink(&mut self, sink: EventSink) {
        self.events = Some(sink);
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle::new(self.stop.clone(), Arc::new(MioWake(self.waker.clone())))
    }

    /// A handle to send commands to the core from other threads.
    pub fn handle(&self) -> DriverHandle {
        DriverHandle::new(self.commands.clone(), Arc::new(MioWake(self.waker.clone())))
    }

    /// The waker, so a signal thread can wake the loop after setting the stop flag.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|s| s.local).collect()
    }

    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// Run until stopped. Events of the core are logged.
    pub fn run(&mut self, core: &mut Forwarder) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        info!(addresses = ?self.local_addrs(), "forwarding");
        self.progress.start(Instant::now());
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            self.progress.tick(now, &self.stats, core);
            self.commands.run(core);
            core.handle_timeout(now);
            self.drain(core);
            let busy = self.sockets.iter().any(|s| s.readable);
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                [core.poll_timeout(), self.progress.due()]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|t| t.saturating_duration_since(now))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(i) => {
                        if let Some(s) = self.sockets.get_mut(i) {
                            s.readable = true;
                        }
                    }
                }
            }
            for i in 0..self.sockets.len() {
                if self.sockets[i].readable {
                    self.receive(i, core)?;
                }
            }
            super::common::serve_metrics(self.metrics.as_deref(), core, &self.stats);
        }
        info!(stats = ?self.stats, "driver stopped");
        Ok(())
    }

    /// Receive up to a fair share of batches from socket `i`, forwarding as we go.
    fn receive(&mut self, i: usize, core: &mut Forwarder) -> io::Result<()> {
        for _ in 0..BATCHES_PER_TURN {
            let socket = &mut self.sockets[i];
            let fd = socket.socket.as_raw_fd();
            let n = match socket.recv.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    socket.readable = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some kernels; they are
                    // not fatal for a UDP server.
                    debug!(error = %e, "recvmmsg");
                    continue;
                }
            };
            self.stats.recv_syscalls += 1;
            self.stats.datagrams_received += n as u64;
            let now = Instant::now();
            let local = self.sockets[i].local;
            for m in 0..n {
                let (source, len, truncated) = self.sockets[i].recv.message(m);
                if truncated || len > MAX_DATAGRAM_LEN {
                    self.stats.truncated += 1;
                    continue;
                }
                let Some(source) = source else { continue };
                let buf = &mut self.sockets[i].recv.bufs[m][..len];
                core.handle_datagram(now, local, source, buf);
                self.drain(core);
            }
            self.flush_all(core);
            if n < self.sockets[i].recv.capacity() {
                self.sockets[i].readable = false;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Move every pending transmit of the core into send batches; log its events.
    fn drain(&mut self, core: &mut Forwarder) {
        loop {
            // The default socket's batch lends its next free buffer; the transmit is moved
            // to its own socket's batch if it names another source.
            let default = 0;
            if self.sockets[default].send.is_full() {
                self.flush(default, core);
            }
            let buf = self.sockets[default].send.next_buffer();
            let Some(transmit) = core.poll_transmit(buf) else {
                break;
            };
            let target = transmit
                .source
                .and_then(|src| self.sockets.iter().position(|s| s.local == src))
                .unwrap_or(default);
            if target == default {
                self.sockets[default]
                    .send
                    .commit(transmit.destination, transmit.len);
            } else {
                if self.sockets[target].send.is_full() {
                    self.flush(target, core);
                }
                let (from, to) = two_mut(&mut self.sockets, default, target);
                let src = from.send.next_buffer();
                to.send.next_buffer()[..transmit.len].copy_from_slice(&src[..transmit.len]);
                to.send.commit(transmit.destination, transmit.len);
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

    fn flush_all(&mut self, core: &mut Forwarder) {
        for i in 0..self.sockets.len() {
            self.flush(i, core);
        }
    }

    fn flush(&mut self, i: usize, core: &mut Forwarder) {
        let socket = &mut self.sockets[i];
        let fd = socket.socket.as_raw_fd();
        let outcome = socket.send.send_all(fd);
        self.stats.send_syscalls += outcome.syscalls;
        self.stats.datagrams_sent += outcome.sent;
        self.stats.send_failures += outcome.failed.len() as u64;
        for destination in outcome.failed {
            core.note_send_failure(destination);
        }
    }
}

impl super::Driver for MioDriver {
    fn kind(&self) -> super::DriverKind {
        super::DriverKind::Mio
    }
    fn serve_metrics(&mut self, exchange: Arc<MetricsExchange>) -> Arc<dyn Wake> {
        MioDriver::serve_metrics(self, exchange)
    }
    fn set_progress_interval(&mut self, interval: Option<Duration>) {
        MioDriver::set_progress_interval(self, interval)
    }
    fn set_event_sink(&mut self, sink: EventSink) {
        MioDriver::set_event_sink(self, sink)
    }

    fn set_peer_sync(&mut self, sync: PeerSync) {
        self.peer_sync = Some(sync);
    }

    fn set_recorder(&mut self, tap: RecorderTap) {
        self.recorder = Some(tap);
    }
    fn stop_handle(&self) -> StopHandle {
        MioDriver::stop_handle(self)
    }
    fn handle(&self) -> DriverHandle {
        MioDriver::handle(self)
    }
    fn local_addrs(&self) -> Vec<SocketAddr> {
        MioDriver::local_addrs(self)
    }
    fn stats(&self) -> DriverStats {
        MioDriver::stats(self)
    }
    fn traffic(&self) -> Arc<super::TrafficCounters> {
        self.progress.traffic()
    }
    fn run(&mut self, core: &mut Forwarder) -> io::Result<()> {
        MioDriver::run(self, core)
    }
}

fn two_mut<T>(items: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    debug_assert_ne!(a, b);
    if a < b {
        let (left, right) = items.split_at_mut(b);
        (&mut left[a], &mut right[0])
    } else {
        let (left, right) = items.split_at_mut(a);
        (&mut right[0], &mut left[b])
    }
}

/// Receive buffers and the `mmsghdr` vector that points into them: one `recvmmsg` fills
/// up to [`capacity`](RecvBatch::capacity) datagrams. Public for other drivers of many
/// sockets (the load generator's), which read each socket in one call.
pub struct RecvBatch {
    bufs: Vec<[u8; MAX_DATAGRAM_LEN]>,
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch::with_capacity(BATCH)
    }
}

impl RecvBatch {
    /// Room for `capacity` datagrams (at least one) per call.
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        RecvBatch {
            bufs: vec![[0u8; MAX_DATAGRAM_LEN]; capacity],
            // SAFETY: all-zero bytes are a valid sockaddr_storage, iovec and mmsghdr (null
            // pointers and zero lengths), and every pointer is set before use in `recv`.
            addrs: (0..capacity)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
            // SAFETY: as above.
            iovecs: (0..capacity)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
            // SAFETY: as above.
            msgs: (0..capacity)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
        }
    }

    /// Datagrams one call can take. A call that returns fewer found the socket empty, so
    /// an edge-triggered socket needs no further read until its next readiness.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// One `recvmmsg` without blocking; returns how many datagrams arrived.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..self.capacity() {
            self.iovecs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM_LEN,
            };
            let hdr = &mut self.msgs[i].msg_hdr;
            hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut self.iovecs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
            self.msgs[i].msg_len = 0;
        }
        // SAFETY: every mmsghdr points at a live iovec, buffer and sockaddr_storage owned
        // by `self`, with the lengths of those allocations; none moves during the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                self.capacity() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Source, length and truncation flag of message `i` of the last batch.
    pub fn message(&self, i: usize) -> (Option<SocketAddr>, usize, bool) {
        let m = &self.msgs[i];
        (
            sockaddr::from_storage(&self.addrs[i]),
            m.msg_len as usize,
            m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        )
    }

    /// Message `i` of the last batch as its source and bytes, or `None` for a datagram
    /// cut short (longer than a buffer) or without a readable source.
    pub fn datagram_mut(&mut self, i: usize) -> Option<(SocketAddr, &mut [u8])> {
        let (source, len, truncated) = self.message(i);
        if truncated || len > MAX_DATAGRAM_LEN {
            return None;
        }
        Some((source?, &mut self.bufs[i][..len]))
    }
}

// SAFETY: the raw pointers in `iovecs` and `msgs` only ever point into heap buffers owned by
// the same batch, and are rewritten right before every system call; moving the batch to
// another thread moves those buffers with it, so nothing is shared across threads.
unsafe impl Send for RecvBatch {}

/// Send buffers filled by the core, and their destinations.
struct SendBatch {
    bufs: Vec<[u8; MIN_TRANSMIT_BUFFER_LEN]>,
    lens: Vec<usize>,
    dests: Vec<SocketAddr>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    iovecs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    count: usize,
}

struct SendOutcome {
    syscalls: u64,
    sent: u64,
    failed: Vec<SocketAddr>,
}

impl SendBatch {
    fn new() -> Self {
        SendBatch {
            bufs: vec![[0u8; MIN_TRANSMIT_BUFFER_LEN]; BATCH],
            lens: vec![0; BATCH],
            dests: vec![SocketAddr::from(([0, 0, 0, 0], 0)); BATCH],
            // SAFETY: all-zero bytes are valid for these C structs; pointers are set in
            // `send_all` before use.
            addrs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            addr_lens: vec![0; BATCH],
            // SAFETY: as above.
            iovecs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            // SAFETY: as above.
            msgs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            count: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.count == BATCH
    }

    /// The buffer the next transmit is written into. Only valid while not full.
    fn next_buffer(&mut self) -> &mut [u8] {
        &mut self.bufs[self.count.min(BATCH - 1)][..]
    }

    fn commit(&mut self, destination: SocketAddr, len: usize) {
        let i = self.count;
        self.lens[i] = len;
        self.dests[i] = destination;
        self.addr_lens[i] = sockaddr::to_storage(&destination, &mut self.addrs[i]);
        self.count += 1;
    }

    /// Send everything queued. A datagram the kernel refuses (an ICMP error surfaced as
    /// ECONNREFUSED, say) is skipped and reported; a full send buffer is waited on for at
    /// most [`SEND_STALL`], then what remains is reported as failed.
    fn send_all(&mut self, fd: RawFd) -> SendOutcome {
        let mut outcome = SendOutcome {
            syscalls: 0,
            sent: 0,
            failed: Vec::new(),
        };
        if self.count == 0 {
            return outcome;
        }
        for i in 0..self.count {
            self.iovecs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.lens[i],
            };
            let hdr = &mut self.msgs[i].msg_hdr;
            hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = self.addr_lens[i];
            hdr.msg_iov = &mut self.iovecs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
        }
        let mut offset = 0;
        let mut stall_deadline: Option<Instant> = None;
        while offset < self.count {
            // SAFETY: msgs[offset..count] point at live buffers, iovecs and addresses owned
            // by `self`, filled above; none moves during the call.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.msgs[offset..].as_mut_ptr(),
                    (self.count - offset) as libc::c_uint,
                    0,
                )
            };
            outcome.syscalls += 1;
            if n > 0 {
                offset += n as usize;
                outcome.sent += n as u64;
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
                    let deadline =
                        *stall_deadline.get_or_insert_with(|| Instant::now() + SEND_STALL);
                    if Instant::now() >= deadline || !wait_writable(fd, deadline) {
                        outcome
                            .failed
                            .extend_from_slice(&self.dests[offset..self.count]);
                        break;
                    }
                }
                _ => {
                    outcome.failed.push(self.dests[offset]);
                    offset += 1;
                }
            }
        }
        self.count = 0;
        outcome
    }
}

// SAFETY: as for `RecvBatch`: the pointers refer to buffers the batch owns and are set
// right before each system call.
unsafe impl Send for SendBatch {}

/// Block until `fd` is writable or `deadline` passes.
fn wait_writable(fd: RawFd, deadline: Instant) -> bool {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = remaining.as_millis().clamp(1, 1000) as libc::c_int;
    // SAFETY: pfd is a live pollfd and the count is 1.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver() -> MioDriver {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        MioDriver::new(vec![socket]).unwrap()
    }

    #[test]
    fn commands_run_on_the_driver_thread_in_order() {
        crate::driver::common::conformance::commands_run_on_the_driver_thread_in_order(driver());
    }

    #[test]
    fn the_queue_is_bounded() {
        let driver = driver();
        let handle = driver.handle();
        for _ in 0..COMMAND_QUEUE_CAPACITY {
            handle.send(Box::new(|_| {})).unwrap();
        }
        assert_eq!(
            handle.send(Box::new(|_| {})).unwrap_err(),
            CommandError::QueueFull
        );
    }
}
