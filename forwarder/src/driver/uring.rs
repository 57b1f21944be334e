//! The io_uring driver: multishot receive into provided buffer rings, and one submission
//! for the whole fan-out of a receive batch.
//!
//! One thread owns the core, the ring and every socket (registered as fixed files, up to
//! [`MAX_SOCKETS`]: a control-mode shard binds one socket per meeting port).
//!
//! * **Receive.** Each socket has one multishot `RecvMsg` armed, and all of them draw from
//!   one provided buffer ring per driver ([`RECV_BUFFERS`] buffers of [`RECV_BUF_LEN`]
//!   bytes, buffer group [`RECV_BGID`]), so receive memory is the same for 1 socket or
//!   4,096. The kernel picks a buffer per datagram and posts a completion naming it and
//!   the socket; the driver parses the `io_uring_recvmsg_out` header (source address,
//!   payload), hands the payload to the core, and puts the buffer back at the ring's tail
//!   at once. When the kernel ends a socket's multishot (no `IORING_CQE_F_MORE`: the shared
//!   ring ran dry, `ENOBUFS`, or an error) that socket joins a FIFO of receives to arm
//!   again after the batch; its datagrams wait in its socket buffer meanwhile. The FIFO
//!   keeps re-arming fair: under overload the sockets that lost their receive first get
//!   the buffers first, instead of the lowest-numbered sockets starving the others.
//! * **Send.** The core's transmits are drained into a fixed pool of [`SEND_SLOTS`] send
//!   slots (buffer, socket address, `iovec`, `msghdr`), one `SendMsg` per datagram
//!   (`MSG_DONTWAIT`: a full send buffer completes with `EAGAIN`, which is counted, never
//!   retried in a loop). The SQEs of a whole turn, up to [`CQES_PER_TURN`] received
//!   datagrams and all their copies, go to the kernel in the one `io_uring_enter` that
//!   also waits for the next completions. When the pool runs dry mid-batch the driver
//!   submits what it has and waits for send completions to free slots.
//! * **Waking.** Timers bound the wait (`io_uring_enter` with a timeout argument, from
//!   `core.poll_timeout()` and the next progress line). Other threads (stop, metrics
//!   scrapes, commands) write an eventfd, which has a `Read` armed on the ring.
//!
//! **Why the kernel never sees freed or moving memory.** Every buffer the kernel may read
//! or write lives in a heap allocation made once in [`UringDriver::new`] and never resized
//! or moved ([`RawArray`]): the buffer rings and their buffers, the send slots, the
//! receive `msghdr` and the eventfd's 8-byte target. A send slot is written only while it
//! is on the free list and goes back on it only when its completion has been reaped; a
//! receive buffer is read only between its completion and its return to the ring. On drop,
//! the driver cancels its armed receives and eventfd read and reaps until nothing is in
//! flight; if that does not finish in time, the memory is leaked rather than freed.
//!
//! SEND_ZC is not used: for 1,200-byte datagrams the copy it saves is small next to the
//! notification completion it adds per packet (not measured in this project).

use std::alloc::{self, Layout};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, Fixed, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use tracing::{debug, info, warn};

use super::common::{
    drain_events, serve_metrics, CommandQueue, DriverHandle, DriverStats, EventSink, Progress,
    StopHandle,
};
use super::recorder::RecorderTap;
use super::sockaddr;
use crate::edge::PeerSync;
use crate::exporter::{MetricsExchange, Wake};
use crate::sfu::{Forwarder, MAX_DATAGRAM_LEN, MIN_TRANSMIT_BUFFER_LEN};

/// Provided receive buffers of a driver, shared by all its sockets (a power of two, as the
/// buffer ring requires): 1,024 × [`RECV_BUF_LEN`] ≈ 2 MiB per shard whatever the number
/// of ports.
///
/// Why 1,024: a turn hands at most [`CQES_PER_TURN`] datagrams to the core and returns
/// each buffer before the next `io_uring_enter`, so the ring only has to cover what
/// arrives between two turns (16 full turns here; four times the 256 a single socket had
/// before the ring was shared). Bursts beyond that wait in the sockets' receive buffers
/// (`SO_RCVBUF`, `forwarder.socket_buffer_bytes`) and the re-armed receives pick them up: the
/// socket buffer, not the ring, is what absorbs a burst, so a bigger ring buys little.
pub const RECV_BUFFERS: u16 = 1024;
/// The buffer group id of the driver's one provided buffer ring.
pub const RECV_BGID: u16 = 0;
/// Sockets one driver takes. Every socket may have a final receive completion waiting at
/// the same time as a completion per receive buffer and per send slot: 4,096 + 1,024 +
/// 1,024 stays under [`CQ_ENTRIES`], so a burst of `ENOBUFS` on every socket does not
/// overflow the completion queue. The registered file table is sized to the sockets given.
pub const MAX_SOCKETS: usize = 4096;
/// Send slots: datagrams that may be queued or in flight at once, across sockets.
pub const SEND_SLOTS: usize = 1024;
/// Completions handled per turn before timers, commands and the submission get a turn;
/// the io_uring counterpart of the mio driver's receive batch.
pub const CQES_PER_TURN: usize = 64;
const SQ_ENTRIES: u32 = 2048;
/// Completion queue entries (see [`MAX_SOCKETS`]).
pub const CQ_ENTRIES: u32 = 8192;
const _: () = assert!(
    MAX_SOCKETS + RECV_BUFFERS as usize + SEND_SLOTS <= CQ_ENTRIES as usize,
    "a final receive completion per socket fits in the completion queue"
);
/// Room for the source address in a multishot receive buffer (a `sockaddr_in6` is 28
/// bytes; 32 keeps the payload 16-byte aligned).
const NAME_LEN: usize = 32;
/// `struct io_uring_recvmsg_out`: four u32.
const RECVMSG_OUT_LEN: usize = 16;
const PAYLOAD_OFFSET: usize = RECVMSG_OUT_LEN + NAME_LEN;
/// One provided receive buffer: the kernel's header, the address, then the datagram.
pub const RECV_BUF_LEN: usize = PAYLOAD_OFFSET + MAX_DATAGRAM_LEN;
const PAGE: usize = 4096;

// user_data: the operation in the top byte, an index below.
const OP_SHIFT: u32 = 56;
const OP_RECV: u64 = 1 << OP_SHIFT;
const OP_SEND: u64 = 2 << OP_SHIFT;
const OP_WAKE: u64 = 3 << OP_SHIFT;
const OP_CANCEL: u64 = 4 << OP_SHIFT;
const INDEX_MASK: u64 = (1 << OP_SHIFT) - 1;

/// Check that this kernel (and sandbox) gives the driver what it needs: a ring with the
/// driver's setup flags and `IORING_FEAT_EXT_ARG`, the RecvMsg/SendMsg/Read/AsyncCancel
/// opcodes, and a real multishot receive over a provided buffer ring on loopback.
/// `Err` carries the reason, for the log or the error message.
///
/// The probe runs on a thread of its own: io_uring delivers completion work to the task
/// that submitted, and what the probe's short-lived ring leaves behind could otherwise
/// interrupt the caller's next blocking system call (EINTR).
pub fn probe() -> Result<(), String> {
    std::thread::scope(|scope| {
        scope
            .spawn(probe_on_this_thread)
            .join()
            .unwrap_or_else(|_| Err("the io_uring probe panicked".into()))
    })
}

fn probe_on_this_thread() -> Result<(), String> {
    let (mut ring, disabled) =
        build_ring(16, 64).map_err(|e| format!("cannot create a ring: {e}"))?;
    if disabled {
        enable_ring(&ring).map_err(|e| format!("cannot enable the ring: {e}"))?;
    }
    let params = ring.params();
    if !params.is_feature_ext_arg() {
        return Err("the kernel lacks IORING_FEAT_EXT_ARG (Linux 5.11)".into());
    }
    if !params.is_feature_nodrop() {
        return Err("the kernel lacks IORING_FEAT_NODROP (Linux 5.5)".into());
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("cannot probe opcodes: {e}"))?;
    for (code, name) in [
        (opcode::RecvMsg::CODE, "RECVMSG"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::Read::CODE, "READ"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("the kernel lacks IORING_OP_{name}"));
        }
    }
    probe_multishot(&mut ring)
}

/// One datagram to ourselves through a multishot receive over a provided buffer ring
/// (Linux 6.0); the proof that matters, since the opcode probe cannot tell multishot.
fn probe_multishot(ring: &mut IoUring) -> Result<(), String> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind a loopback socket to probe: {e}"))?;
    let address = socket.local_addr().map_err(|e| e.to_string())?;
    let mut bufs = BufRing::new(ring, 0, 2).map_err(|e| format!("provided buffer ring: {e}"))?;
    let msghdr = RecvMsgHdr::new();
    let fd = types::Fd(socket.as_raw_fd());
    let recv = opcode::RecvMsgMulti::new(fd, msghdr.as_ptr(), 0)
        .build()
        .user_data(OP_RECV);
    // SAFETY: the msghdr and the buffer ring outlive the operation: it is cancelled and its
    // last completion reaped below before either is dropped (or both are leaked).
    unsafe { push(ring, &recv) }.map_err(|e| e.to_string())?;
    let outcome = (|| {
        ring.submit().map_err(|e| format!("submit: {e}"))?;
        socket
            .send_to(b"probe", address)
            .map_err(|e| format!("cannot send the probe datagram: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let ts = Timespec::from(Duration::from_millis(100));
            match ring
                .submitter()
                .submit_with_args(1, &SubmitArgs::new().timespec(&ts))
            {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
                Err(e) => return Err(format!("io_uring_enter: {e}")),
            }
            if let Some(cqe) = ring.completion().next() {
                if cqe.result() < 0 {
                    return Err(format!(
                        "multishot receive failed: {}",
                        io::Error::from_raw_os_error(-cqe.result())
                    ));
                }
                if cqueue::buffer_select(cqe.flags()).is_none() {
                    return Err("the kernel did not select a provided buffer".into());
                }
                if !cqueue::more(cqe.flags()) {
                    return Err("the kernel does not keep receives armed (multishot)".into());
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err("no completion for a loopback datagram within 1 s".into());
            }
        }
    })();
    // Cancel and wait for the receive's last completion before freeing what it uses.
    let cancel = opcode::AsyncCancel::new(OP_RECV)
        .build()
        .user_data(OP_CANCEL);
    // SAFETY: AsyncCancel points at no memory.
    let quiet = unsafe { push(ring, &cancel) }.is_ok() && {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut done = false;
        while !done && Instant::now() < deadline {
            let ts = Timespec::from(Duration::from_millis(100));
            let _ = ring
                .submitter()
                .submit_with_args(1, &SubmitArgs::new().timespec(&ts));
            for cqe in ring.completion() {
                if cqe.user_data() == OP_RECV && !cqueue::more(cqe.flags()) {
                    done = true;
                }
            }
        }
        done
    };
    if !quiet {
        bufs.leak();
        std::mem::forget(msghdr);
    }
    outcome
}

/// A ring, and whether it was created disabled: then the thread that will submit must
/// enable it ([`enable_ring`]) before the first submission.
///
/// Preferred (Linux 6.1): `SINGLE_ISSUER | DEFER_TASKRUN`: completion work is deferred
/// until the issuer asks for completions, which the driver does once per turn, so the
/// network softirq never interrupts the forwarding thread to post a completion, and the
/// kernel may skip the locking single-issuer rings do not need. The ring starts disabled
/// (`R_DISABLED`) so that the issuer is the shard thread that enables it, not the thread
/// that built the driver. Fallback: `COOP_TASKRUN`, whose task work still runs only when
/// the thread enters the kernel.
fn build_ring(sq: u32, cq: u32) -> io::Result<(IoUring, bool)> {
    let deferred = IoUring::builder()
        .setup_cqsize(cq)
        .setup_r_disabled()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(sq);
    match deferred {
        Ok(ring) => Ok((ring, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            debug!("io_uring without DEFER_TASKRUN (Linux < 6.1): using COOP_TASKRUN");
            let ring = IoUring::builder()
                .setup_cqsize(cq)
                .setup_coop_taskrun()
                .setup_taskrun_flag()
                .build(sq)?;
            Ok((ring, false))
        }
        Err(e) => Err(e),
    }
}

/// Make the calling thread a disabled ring's single issuer.
fn enable_ring(ring: &IoUring) -> io::Result<()> {
    ring.submitter().register_enable_rings()
}

/// Push one SQE, submitting first if the submission queue is full.
///
/// # Safety
/// Everything `entry` points at must stay valid until its completion is reaped.
unsafe fn push(ring: &mut IoUring, entry: &squeue::Entry) -> io::Result<()> {
    // SAFETY: forwarded from the caller.
    if unsafe { ring.submission().push(entry) }.is_ok() {
        return Ok(());
    }
    ring.submit()?;
    // SAFETY: forwarded from the caller.
    unsafe { ring.submission().push(entry) }
        .map_err(|_| io::Error::other("io_uring submission queue full after submit"))
}

/// A fixed-size, zero-initialised heap array that never moves or resizes: the only kind
/// of memory the driver hands to the kernel. `T` must be valid when all-zero.
struct RawArray<T> {
    ptr: NonNull<T>,
    len: usize,
    layout: Layout,
    leaked: bool,
}

impl<T> RawArray<T> {
    /// # Safety
    /// All-zero bytes must be a valid `T`.
    unsafe fn zeroed(len: usize, align: usize) -> Self {
        let layout = Layout::array::<T>(len.max(1))
            .and_then(|l| l.align_to(align))
            .expect("array layout fits in isize (sizes are small constants)");
        // SAFETY: the layout has a non-zero size (len.max(1) of a non-zero-sized T).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw.cast::<T>()) else {
            alloc::handle_alloc_error(layout)
        };
        RawArray {
            ptr,
            len,
            layout,
            leaked: false,
        }
    }

    fn ptr(&self, i: usize) -> *mut T {
        assert!(i < self.len, "index {i} out of {}", self.len);
        // SAFETY: i is in bounds of the allocation.
        unsafe { self.ptr.as_ptr().add(i) }
    }

    fn base(&self) -> *mut T {
        self.ptr.as_ptr()
    }

    /// Never free this memory: the kernel may still use it.
    fn leak(&mut self) {
        self.leaked = true;
    }
}

impl<T> Drop for RawArray<T> {
    fn drop(&mut self) {
        if !self.leaked {
            // SAFETY: allocated in `zeroed` with this layout, freed once.
            unsafe { alloc::dealloc(self.ptr.as_ptr().cast(), self.layout) };
        }
    }
}

// SAFETY: a RawArray owns its allocation exclusively (like a Box<[T]>); the raw pointer
// is only dereferenced by the thread that owns the driver. T here is plain C data.
unsafe impl<T: Send> Send for RawArray<T> {}

/// The `msghdr` a multishot receive is armed with: only its name and control lengths
/// matter (the layout of each provided buffer).
struct RecvMsgHdr(RawArray<libc::msghdr>);

impl RecvMsgHdr {
    fn new() -> Self {
        // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
        let hdr = RecvMsgHdr(unsafe { RawArray::zeroed(1, std::mem::align_of::<libc::msghdr>()) });
        // SAFETY: index 0 is in bounds and nothing else references it yet.
        unsafe { (*hdr.0.ptr(0)).msg_namelen = NAME_LEN as libc::socklen_t };
        hdr
    }

    fn as_ptr(&self) -> *const libc::msghdr {
        self.0.ptr(0)
    }

    fn get(&self) -> libc::msghdr {
        // SAFETY: the kernel only reads this msghdr, so reading it here races with nothing.
        unsafe { *self.0.ptr(0) }
    }
}

// SAFETY: the msghdr's pointers are all null; it is plain data owned by the driver and
// only touched by the thread that owns the driver.
unsafe impl Send for RecvMsgHdr {}

/// A provided buffer ring: the page-aligned ring of entries the kernel takes buffers
/// from, and the buffers themselves.
struct BufRing {
    entries: RawArray<BufRingEntry>,
    bufs: RawArray<u8>,
    count: u16,
    /// Our copy of the ring's tail: entries below it are the kernel's to take.
    tail: u16,
    bgid: u16,
}

impl BufRing {
    /// Allocate `count` buffers (a power of two), register the ring as buffer group
    /// `bgid`, and give every buffer to the kernel.
    fn new(ring: &IoUring, bgid: u16, count: u16) -> io::Result<Self> {
        assert!(count.is_power_of_two());
        // SAFETY: all-zero is a valid io_uring_buf and a valid u8.
        let (entries, bufs) = unsafe {
            (
                RawArray::<BufRingEntry>::zeroed(usize::from(count), PAGE),
                RawArray::<u8>::zeroed(usize::from(count) * RECV_BUF_LEN, 64),
            )
        };
        let mut buf_ring = BufRing {
            entries,
            bufs,
            count,
            tail: 0,
            bgid,
        };
        // SAFETY: the ring memory is page-aligned, holds `count` entries, and lives until
        // the driver is dropped after its operations are quiesced (or is leaked); the
        // kernel unregisters it when the ring is closed.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buf_ring.entries.base() as u64,
                count,
                bgid,
                0,
            )?;
        }
        for bid in 0..count {
            buf_ring.put(bid);
        }
        buf_ring.publish();
        Ok(buf_ring)
    }

    fn buffer(&self, bid: u16) -> *mut u8 {
        self.bufs.ptr(usize::from(bid) * RECV_BUF_LEN)
    }

    /// Queue buffer `bid` at the tail (visible to the kernel after [`BufRing::publish`]).
    fn put(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.count - 1));
        let addr = self.buffer(bid) as u64;
        let entry = self.entries.ptr(index);
        // SAFETY: entries at or past the published tail are ours to fill (the kernel reads
        // only those before it); the setters write addr, len and bid, never the `resv`
        // field of entry 0 that doubles as the tail.
        unsafe {
            (*entry).set_addr(addr);
            (*entry).set_len(RECV_BUF_LEN as u32);
            (*entry).set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make the queued buffers visible to the kernel.
    fn publish(&self) {
        // SAFETY: `base()` is the first entry of a registered ring, so `tail` points at its
        // tail field, a u16 the kernel reads atomically; the release store orders the entry
        // writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.base()).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn leak(&mut self) {
        self.entries.leak();
        self.bufs.leak();
    }
}

/// One datagram to send: everything the kernel reads for a `SendMsg`.
#[repr(C)]
struct SendSlot {
    buf: [u8; MIN_TRANSMIT_BUFFER_LEN],
    addr: libc::sockaddr_storage,
    iov: libc::iovec,
    msg: libc::msghdr,
}

/// The fixed pool of send slots and its free list.
struct SendPool {
    slots: RawArray<SendSlot>,
    destinations: Vec<SocketAddr>,
    free: Vec<u32>,
}

impl SendPool {
    fn new(count: usize) -> Self {
        SendPool {
            // SAFETY: SendSlot is plain C data; all-zero is valid for each field.
            slots: unsafe { RawArray::zeroed(count, 64) },
            destinations: vec![SocketAddr::from(([0, 0, 0, 0], 0)); count],
            free: (0..count as u32).rev().collect(),
        }
    }

    fn in_flight(&self) -> usize {
        self.destinations.len() - self.free.len()
    }
}

// SAFETY: the slots' pointers only point into the same slot (its buffer, address and
// iovec), are rewritten before every use, and are dereferenced by the kernel on behalf of
// the thread that owns the driver; moving the pool moves the ownership of all of it.
unsafe impl Send for SendPool {}

struct RingSocket {
    /// Owns the descriptor registered as fixed file `i`; closed after the ring.
    _socket: UdpSocket,
    local: SocketAddr,
    /// A multishot receive is in the kernel (its last completion not yet handled), or the
    /// socket waits in `UringDriver::to_arm`: either way not to be queued again.
    armed: bool,
    /// Armed at least once, so arming again counts as a re-arm.
    started: bool,
}

/// A reaped completion.
#[derive(Debug, Clone, Copy)]
struct Completion {
    user_data: u64,
    result: i32,
    flags: u32,
}

struct EventFdWake(Arc<OwnedFd>);

impl Wake for EventFdWake {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: the fd is a live eventfd owned by the Arc; we write 8 bytes from a u64.
        let n = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if n != 8 {
            warn!(error = %io::Error::last_os_error(), "cannot wake the driver");
        }
    }
}

/// The io_uring driver. Build it with [`UringDriver::new`] after [`probe`] succeeded.
pub struct UringDriver {
    ring: IoUring,
    /// Created disabled: the thread that runs the driver enables it (see [`build_ring`]).
    disabled: bool,
    /// Operations cancelled, buffers and files unregistered: it cannot run again.
    released: bool,
    sockets: Vec<RingSocket>,
    /// Socket index by local address: the source of a transmit.
    by_local: HashMap<SocketAddr, u32>,
    /// The one provided buffer ring every socket's multishot receive draws from.
    bufs: BufRing,
    /// The `msghdr` every multishot receive is armed with (the kernel only reads its
    /// name and control lengths, the same for all sockets).
    msghdr: RecvMsgHdr,
    /// Sockets whose multishot receive is to be armed, oldest first.
    to_arm: VecDeque<u32>,
    pool: SendPool,
    wake_fd: Arc<OwnedFd>,
    /// Where the armed eventfd `Read` writes.
    wake_buf: RawArray<u64>,
    wake_armed: bool,
    stop: Arc<AtomicBool>,
    commands: Arc<CommandQueue>,
    metrics: Option<Arc<MetricsExchange>>,
    progress: Progress,
    /// Where events other threads act on go (control mode).
    events: Option<EventSink>,
    /// Keeps the XDP guard's allowlist equal to the core's peers, when there is a guard.
    peer_sync: Option<PeerSync>,
    /// Where the media of recorded meetings goes.
    recorder: Option<RecorderTap>,
    stats: DriverStats,
    /// Completions reaped but not handled yet, oldest first.
    pending: VecDeque<Completion>,
    /// Send SQEs queued since the last `io_uring_enter`.
    sends_queued: usize,
    /// Reused while waiting for a free send slot.
    scratch: Vec<Completion>,
}

impl std::fmt::Debug for UringDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringDriver")
            .field(
                "sockets",
                &self.sockets.iter().map(|s| s.local).collect::<Vec<_>>(),
            )
            .field("stats", &self.stats)
            .finish()
    }
}

impl UringDriver {
    /// Take ownership of bound sockets (1 to [`MAX_SOCKETS`]). The first is the default for
    /// transmits that name no source. Fails if the kernel lacks what [`probe`] checks.
    pub fn new(sockets: Vec<UdpSocket>) -> io::Result<Self> {
        Self::with_recv_buffers(sockets, RECV_BUFFERS)
    }

    /// [`UringDriver::new`] with a shared receive ring of `buffers` buffers (a power of
    /// two) instead of [`RECV_BUFFERS`]: tests use a tiny ring to run it dry.
    pub fn with_recv_buffers(sockets: Vec<UdpSocket>, buffers: u16) -> io::Result<Self> {
        if sockets.is_empty() || sockets.len() > MAX_SOCKETS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the io_uring driver takes 1 to {MAX_SOCKETS} sockets, not {}: \
                     spread the ports over more shards",
                    sockets.len()
                ),
            ));
        }
        if !buffers.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("receive buffers must be a power of two, not {buffers}"),
            ));
        }
        let (ring, disabled) = build_ring(SQ_ENTRIES, CQ_ENTRIES)?;
        // A table exactly the size of the socket list: fixed file i is socket i.
        let fds: Vec<_> = sockets.iter().map(|s| s.as_raw_fd()).collect();
        ring.submitter().register_files(&fds)?;
        let bufs = BufRing::new(&ring, RECV_BGID, buffers)?;
        let mut ring_sockets = Vec::with_capacity(sockets.len());
        let mut by_local = HashMap::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            socket.set_nonblocking(true)?;
            let local = socket.local_addr()?;
            // i < MAX_SOCKETS, checked above.
            by_local.entry(local).or_insert(i as u32);
            ring_sockets.push(RingSocket {
                _socket: socket,
                local,
                armed: true,
                started: false,
            });
        }
        let to_arm = (0..ring_sockets.len() as u32).collect();
        // A blocking eventfd: io_uring waits on it with its internal poll (a non-blocking
        // one would complete the read at once with EAGAIN).
        // SAFETY: eventfd has no memory arguments; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let wake_fd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(UringDriver {
            ring,
            disabled,
            released: false,
            sockets: ring_sockets,
            by_local,
            bufs,
            msghdr: RecvMsgHdr::new(),
            to_arm,
            pool: SendPool::new(SEND_SLOTS),
            wake_fd,
            // SAFETY: zero is a valid u64.
            wake_buf: unsafe { RawArray::zeroed(1, 8) },
            wake_armed: false,
            stop: Arc::new(AtomicBool::new(false)),
            commands: Arc::new(CommandQueue::default()),
            metrics: None,
            progress: Progress::new(Some(Duration::from_secs(10))),
            events: None,
            peer_sync: None,
            recorder: None,
            stats: DriverStats::default(),
            pending: VecDeque::with_capacity(CQ_ENTRIES as usize),
            sends_queued: 0,
            scratch: Vec::with_capacity(CQ_ENTRIES as usize),
        })
    }

    fn wake(&self) -> Arc<dyn Wake> {
        Arc::new(EventFdWake(self.wake_fd.clone()))
    }

    /// Answer metric scrapes through `exchange`; returns the wake-up the scraper must use.
    pub fn serve_metrics(&mut self, exchange: Arc<MetricsExchange>) -> Arc<dyn Wake> {
        self.metrics = Some(exchange);
        self.wake()
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
        StopHandle::new(self.stop.clone(), self.wake())
    }

    /// A handle to send commands to the core from other threads.
    pub fn handle(&self) -> DriverHandle {
        DriverHandle::new(self.commands.clone(), self.wake())
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|s| s.local).collect()
    }

    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// Run until stopped. Events of the core are logged.
    pub fn run(&mut self, core: &mut Forwarder) -> io::Result<()> {
        if self.released {
            return Err(io::Error::other(
                "this io_uring driver has already run and stopped",
            ));
        }
        if self.disabled {
            enable_ring(&self.ring)?;
            self.disabled = false;
        }
        info!(addresses = ?self.local_addrs(), driver = "io_uring", "forwarding");
        self.progress.start(Instant::now());
        self.arm()?;
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            self.progress.tick(now, &self.stats, core);
            self.commands.run(core);
            core.handle_timeout(now);
            self.drain(core)?;
            serve_metrics(self.metrics.as_deref(), core, &self.stats);

            // One io_uring_enter: submit every SQE of the turn (the fan-out of the last
            // batch, re-armed receives) and wait for the next completions or the timer.
            let busy = !self.pending.is_empty() || !self.ring.completion().is_empty();
            let deadline = [core.poll_timeout(), self.progress.due()]
                .into_iter()
                .flatten()
                .min();
            self.enter(if busy { None } else { Some(deadline) })?;
            self.reap();

            let now = Instant::now();
            let mut received = false;
            for _ in 0..CQES_PER_TURN {
                let Some(c) = self.pending.pop_front() else {
                    break;
                };
                received |= c.user_data & !INDEX_MASK == OP_RECV && c.result > 0;
                self.complete(c, now, Some(core))?;
            }
            if received {
                self.stats.recv_syscalls += 1;
            }
            self.arm()?;
        }
        info!(stats = ?self.stats, "driver stopped");
        self.release();
        Ok(())
    }

    /// Submit queued SQEs; with `Some(deadline)`, also wait for one completion or the
    /// deadline (`None` inside: no deadline).
    fn enter(&mut self, wait: Option<Option<Instant>>) -> io::Result<()> {
        let result = match wait {
            None => self.ring.submit(),
            Some(None) => self.ring.submit_and_wait(1),
            Some(Some(deadline)) => {
                let ts = Timespec::from(deadline.saturating_duration_since(Instant::now()));
                self.ring
                    .submitter()
                    .submit_with_args(1, &SubmitArgs::new().timespec(&ts))
            }
        };
        if self.sends_queued > 0 {
            self.stats.send_syscalls += 1;
            self.sends_queued = 0;
        }
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Move every available completion to `pending`.
    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            self.pending.push_back(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
    }

    /// Arm the multishot receives that are not (oldest first), and the eventfd read.
    fn arm(&mut self) -> io::Result<()> {
        while let Some(i) = self.to_arm.pop_front() {
            let socket = &mut self.sockets[i as usize];
            let entry = opcode::RecvMsgMulti::new(Fixed(i), self.msghdr.as_ptr(), self.bufs.bgid)
                .build()
                .user_data(OP_RECV | u64::from(i));
            if socket.started {
                self.stats.recv_rearms += 1;
            }
            socket.started = true;
            // SAFETY: the msghdr and the shared buffer ring live in allocations that stay
            // put until the driver is dropped, which first waits for this receive's last
            // completion (see the module docs).
            if let Err(e) = unsafe { push(&mut self.ring, &entry) } {
                self.to_arm.push_front(i);
                return Err(e);
            }
        }
        if !self.wake_armed {
            let entry = opcode::Read::new(
                types::Fd(self.wake_fd.as_raw_fd()),
                self.wake_buf.ptr(0).cast(),
                8,
            )
            .build()
            .user_data(OP_WAKE);
            self.wake_armed = true;
            // SAFETY: wake_buf is a stable 8-byte allocation kept until this read's
            // completion is reaped (or leaked); the eventfd lives as long as the driver.
            unsafe { push(&mut self.ring, &entry) }?;
        }
        Ok(())
    }

    /// Handle one completion. `core` is `None` while shutting down: datagrams are dropped.
    fn complete(
        &mut self,
        c: Completion,
        now: Instant,
        core: Option<&mut Forwarder>,
    ) -> io::Result<()> {
        let index = (c.user_data & INDEX_MASK) as usize;
        match c.user_data & !INDEX_MASK {
            OP_RECV => self.complete_recv(index, c, now, core)?,
            OP_SEND => self.complete_send(index, c.result, core),
            OP_WAKE => {
                self.wake_armed = false;
                if c.result < 0 && c.result != -libc::ECANCELED {
                    debug!(error = %io::Error::from_raw_os_error(-c.result), "eventfd read");
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn complete_recv(
        &mut self,
        i: usize,
        c: Completion,
        now: Instant,
        core: Option<&mut Forwarder>,
    ) -> io::Result<()> {
        let Some(socket) = self.sockets.get(i) else {
            return Ok(());
        };
        let local = socket.local;
        if !cqueue::more(c.flags) {
            // Queued for arming after the batch (not while shutting down: nothing is
            // armed again then).
            if core.is_some() {
                self.to_arm.push_back(i as u32);
            } else {
                self.sockets[i].armed = false;
            }
        }
        if c.result < 0 {
            match -c.result {
                // The shared ring ran dry before we returned buffers; this socket's
                // receive is armed again after the batch, its datagrams wait in its
                // socket buffer meanwhile.
                libc::ENOBUFS | libc::ECANCELED => {}
                errno => debug!(error = %io::Error::from_raw_os_error(errno), "multishot recvmsg"),
            }
            return Ok(());
        }
        let Some(bid) = cqueue::buffer_select(c.flags) else {
            return Ok(());
        };
        if bid >= self.bufs.count {
            return Ok(());
        }
        let len = (c.result as usize).min(RECV_BUF_LEN);
        let base = self.bufs.buffer(bid);
        // SAFETY: this completion hands buffer `bid` (RECV_BUF_LEN bytes inside `bufs`) back
        // to us; the kernel will not touch it until we `put` it back below, so this is the
        // only reference to those bytes.
        let buf = unsafe { std::slice::from_raw_parts_mut(base, len) };
        let parsed = RecvMsgOut::parse(buf, &self.msghdr.get()).ok().map(|out| {
            let mut storage = zeroed_storage();
            let name = out.name_data();
            let n = name
                .len()
                .min(std::mem::size_of::<libc::sockaddr_storage>());
            // SAFETY: copying n bytes into a sockaddr_storage of at least n bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    name.as_ptr(),
                    (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                    n,
                );
            }
            (
                sockaddr::from_storage(&storage),
                out.payload_data().len(),
                out.is_payload_truncated(),
            )
        });
        self.stats.datagrams_received += 1;
        let mut handled = false;
        if let (Some((Some(source), payload_len, truncated)), Some(core)) = (parsed, core) {
            if truncated || payload_len > MAX_DATAGRAM_LEN {
                self.stats.truncated += 1;
            } else {
                let payload = &mut buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + payload_len];
                core.handle_datagram(now, local, source, payload);
                handled = true;
            }
            // The core is done with the bytes: back to the shared ring at once.
            self.bufs.put(bid);
            self.bufs.publish();
            if handled {
                self.drain(core)?;
            }
        } else {
            self.bufs.put(bid);
            self.bufs.publish();
        }
        Ok(())
    }

    fn complete_send(&mut self, slot: usize, result: i32, core: Option<&mut Forwarder>) {
        if slot >= self.pool.destinations.len() {
            return;
        }
        if result < 0 {
            self.stats.send_failures += 1;
            if let Some(core) = core {
                core.note_send_failure(self.pool.destinations[slot]);
            }
            debug!(
                error = %io::Error::from_raw_os_error(-result),
                destination = %self.pool.destinations[slot],
                "send failed"
            );
        } else {
            self.stats.datagrams_sent += 1;
        }
        self.pool.free.push(slot as u32);
    }

    /// Move every pending transmit of the core into send slots and queue their SQEs;
    /// log the core's events.
    fn drain(&mut self, core: &mut Forwarder) -> io::Result<()> {
        loop {
            let Some(slot) = self.pool.free.pop() else {
                self.wait_for_slot(core)?;
                continue;
            };
            let slot_ptr = self.pool.slots.ptr(slot as usize);
            // SAFETY: the slot was on the free list, so no SQE refers to it and the kernel
            // does not read it; this is the only reference to its buffer.
            let buf = unsafe { &mut (*slot_ptr).buf };
            let Some(transmit) = core.poll_transmit(buf) else {
                self.pool.free.push(slot);
                break;
            };
            let socket = transmit
                .source
                .and_then(|src| self.by_local.get(&src).copied())
                .unwrap_or(0);
            self.pool.destinations[slot as usize] = transmit.destination;
            // SAFETY: as above, the slot is ours until the SQE below is submitted, and from
            // then on it is only read (by the kernel) until its completion puts it back on
            // the free list. The pointers refer to fields of the same stable slot.
            let msg = unsafe {
                let s = &mut *slot_ptr;
                let name_len = sockaddr::to_storage(&transmit.destination, &mut s.addr);
                s.iov = libc::iovec {
                    iov_base: s.buf.as_mut_ptr().cast(),
                    iov_len: transmit.len.min(MIN_TRANSMIT_BUFFER_LEN),
                };
                s.msg = std::mem::zeroed();
                s.msg.msg_name = (&mut s.addr as *mut libc::sockaddr_storage).cast();
                s.msg.msg_namelen = name_len;
                s.msg.msg_iov = &mut s.iov;
                s.msg.msg_iovlen = 1;
                &s.msg as *const libc::msghdr
            };
            let entry = opcode::SendMsg::new(Fixed(socket), msg)
                .flags(libc::MSG_DONTWAIT as u32)
                .build()
                .user_data(OP_SEND | u64::from(slot));
            // SAFETY: the slot stays allocated and untouched until its completion (above).
            unsafe { push(&mut self.ring, &entry) }?;
            self.sends_queued += 1;
        }
        drain_events(
            core,
            self.events.as_ref(),
            self.peer_sync.as_mut(),
            self.recorder.as_mut(),
            &mut self.stats,
        );
        Ok(())
    }

    /// The pool is empty: submit the queued sends and reap until a slot is free. Other
    /// completions wait in `pending`, in order.
    fn wait_for_slot(&mut self, core: &mut Forwarder) -> io::Result<()> {
        while self.pool.free.is_empty() {
            // Every slot is queued or in flight, so a completion is coming: sends with
            // MSG_DONTWAIT complete during the submission itself.
            self.enter(Some(None))?;
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.extend(self.ring.completion().map(|cqe| Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            }));
            for c in scratch.drain(..) {
                if c.user_data & !INDEX_MASK == OP_SEND {
                    let slot = (c.user_data & INDEX_MASK) as usize;
                    self.complete_send(slot, c.result, Some(core));
                } else {
                    self.pending.push_back(c);
                }
            }
            self.scratch = scratch;
        }
        Ok(())
    }

    /// Cancel what is armed and reap until the kernel holds none of our memory. Returns
    /// false if that did not happen within `limit`.
    fn quiesce(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        // Sockets still waiting to be armed have nothing in the kernel.
        for i in self.to_arm.drain(..) {
            self.sockets[i as usize].armed = false;
        }
        let cancel_targets: Vec<u64> = self
            .sockets
            .iter()
            .enumerate()
            .filter(|(_, s)| s.armed)
            .map(|(i, _)| OP_RECV | i as u64)
            .chain(self.wake_armed.then_some(OP_WAKE))
            .collect();
        for target in cancel_targets {
            let entry = opcode::AsyncCancel::new(target)
                .build()
                .user_data(OP_CANCEL);
            // SAFETY: AsyncCancel points at no memory.
            if unsafe { push(&mut self.ring, &entry) }.is_err() {
                return false;
            }
        }
        let now = Instant::now();
        loop {
            while let Some(c) = self.pending.pop_front() {
                let _ = self.complete(c, now, None);
            }
            let busy = self.sockets.iter().any(|s| s.armed)
                || self.wake_armed
                || self.pool.in_flight() > 0;
            if !busy {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            let _ = self.enter(Some(Some(Instant::now() + Duration::from_millis(50))));
            self.reap();
        }
    }
}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    unsafe { std::mem::zeroed() }
}

impl UringDriver {
    /// Cancel and reap every operation, and unregister buffers and files. Done by `run`
    /// on its way out, on the thread that issued everything: a single-issuer ring refuses
    /// submissions and registrations from any other thread, and the driver may be dropped
    /// elsewhere.
    fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        if self.quiesce(Duration::from_secs(1)) {
            let _ = self.ring.submitter().unregister_buf_ring(self.bufs.bgid);
            // The registered file table holds a reference to every socket; the ring's own
            // teardown is asynchronous, so without this the ports stay bound for a moment
            // after the driver (or the process) is gone, and a restart fails to bind.
            let _ = self.ring.submitter().unregister_files();
        } else {
            warn!("io_uring operations still in flight at shutdown; leaking their buffers");
            self.bufs.leak();
            self.msghdr.0.leak();
            self.pool.slots.leak();
            self.wake_buf.leak();
        }
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        self.release();
    }
}

impl super::Driver for UringDriver {
    fn kind(&self) -> super::DriverKind {
        super::DriverKind::Uring
    }
    fn serve_metrics(&mut self, exchange: Arc<MetricsExchange>) -> Arc<dyn Wake> {
        UringDriver::serve_metrics(self, exchange)
    }
    fn set_progress_interval(&mut self, interval: Option<Duration>) {
        UringDriver::set_progress_interval(self, interval)
    }
    fn set_event_sink(&mut self, sink: EventSink) {
        UringDriver::set_event_sink(self, sink)
    }

    fn set_peer_sync(&mut self, sync: PeerSync) {
        self.peer_sync = Some(sync);
    }

    fn set_recorder(&mut self, tap: RecorderTap) {
        self.recorder = Some(tap);
    }
    fn stop_handle(&self) -> StopHandle {
        UringDriver::stop_handle(self)
    }
    fn handle(&self) -> DriverHandle {
        UringDriver::handle(self)
    }
    fn local_addrs(&self) -> Vec<SocketAddr> {
        UringDriver::local_addrs(self)
    }
    fn stats(&self) -> DriverStats {
        UringDriver::stats(self)
    }
    fn traffic(&self) -> Arc<super::TrafficCounters> {
        self.progress.traffic()
    }
    fn run(&mut self, core: &mut Forwarder) -> io::Result<()> {
        UringDriver::run(self, core)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::ForwarderConfig;

    fn driver() -> Option<UringDriver> {
        if let Err(reason) = probe() {
            eprintln!("SKIPPED: io_uring unavailable: {reason}");
            return None;
        }
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        Some(UringDriver::new(vec![socket]).unwrap())
    }

    #[test]
    fn commands_run_on_the_driver_thread_in_order() {
        let Some(driver) = driver() else { return };
        crate::driver::common::conformance::commands_run_on_the_driver_thread_in_order(driver);
    }

    #[test]
    fn drop_after_run_quiesces() {
        let Some(mut driver) = driver() else { return };
        let stop = driver.stop_handle();
        stop.stop();
        let mut core = Forwarder::new(ForwarderConfig::default(), Instant::now());
        driver.run(&mut core).unwrap();
        assert!(
            driver.released,
            "run releases what the kernel holds on its way out"
        );
        assert!(driver.quiesce(Duration::from_secs(1)));
        assert!(
            driver.run(&mut core).is_err(),
            "a released driver does not run again"
        );
    }

    #[test]
    fn socket_count_and_ring_size_are_checked() {
        if let Err(reason) = probe() {
            eprintln!("SKIPPED: io_uring unavailable: {reason}");
            return;
        }
        let bind = || UdpSocket::bind("127.0.0.1:0").unwrap();
        let too_many: Vec<_> = (0..=MAX_SOCKETS).map(|_| bind()).collect();
        let error = UringDriver::new(too_many).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("4096"), "{error}");
        assert!(UringDriver::new(Vec::new()).is_err());
        let error = UringDriver::with_recv_buffers(vec![bind()], 3).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn buffer_layout() {
        assert!(NAME_LEN >= std::mem::size_of::<libc::sockaddr_in6>());
        assert_eq!(PAYLOAD_OFFSET % 16, 0);
    }
}
