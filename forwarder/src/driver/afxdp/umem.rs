//! One AF_XDP socket on one receive queue: its UMEM (the packet memory shared with the
//! kernel), its four rings (fill, completion, RX, TX) through `xdpilone`, and the
//! bookkeeping of which frame belongs to whom.
//!
//! Every frame of the UMEM is, at any moment, in exactly one place:
//! * RX frames (the first [`RX_FRAMES`]): in the fill ring or the RX ring (the kernel's),
//!   or in the driver's hands between [`XskQueue::receive`] and [`XskQueue::recycle`];
//! * TX frames (the rest): on the free list, in the driver's hands while a frame is being
//!   written, or in the TX/completion rings (the kernel's) until reaped.
//!
//! The counts are checked in debug builds and by the tests; a frame is never lost, so the
//! fill ring never starves for lack of frames, only if the driver falls behind.

use std::io;
use std::num::NonZeroU32;
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;

use xdpilone::xdp::{XdpDesc, XdpStatisticsV2};
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};

/// Bytes per UMEM frame: a page, so a frame never straddles two (copy and zero-copy
/// modes both accept it), and room for the largest datagram the core writes
/// ([`MIN_TRANSMIT_BUFFER_LEN`](crate::sfu::MIN_TRANSMIT_BUFFER_LEN)) behind the largest
/// header, and for the kernel's 256 bytes of XDP headroom on receive.
pub const FRAME_SIZE: u32 = 4096;
/// Frames given to the kernel for receiving (the fill ring holds them all).
pub const RX_FRAMES: u32 = 1024;
/// Frames for transmitting (the completion ring holds them all, so it never overflows).
pub const TX_FRAMES: u32 = 1024;
const FRAMES: u32 = RX_FRAMES + TX_FRAMES;
/// Descriptors of the RX and TX rings.
const RING_SIZE: u32 = 1024;

/// Send buffer of each AF_XDP socket. In copy mode every frame in flight is a socket
/// buffer charged to the socket until the receiver frees it (over a veth, when the
/// receiving application has read it), and the kernel refuses to build more (EAGAIN)
/// past the send buffer: the default (about 200 KiB, some 90 frames) would cap the frames
/// in flight far below the UMEM's, and the TX ring would fill behind it. Room for every
/// TX frame at its true size (frame, skb overhead) instead.
const SEND_BUFFER_BYTES: usize = TX_FRAMES as usize * (FRAME_SIZE as usize + 1024);

/// Raise the socket's send buffer to [`SEND_BUFFER_BYTES`] (forced past `wmem_max` when
/// allowed, CAP_NET_ADMIN); a failure only costs throughput, so it is logged, not fatal.
fn raise_send_buffer(fd: RawFd) {
    let value = libc::c_int::try_from(SEND_BUFFER_BYTES).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
        // SAFETY: `fd` is an open socket owned by the caller; the value points at a live
        // c_int of the size passed.
        let set = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set == 0 {
            return;
        }
    }
    tracing::warn!(
        error = %io::Error::last_os_error(),
        "cannot raise the AF_XDP socket's send buffer: fewer frames can be in flight"
    );
}

/// How the socket ended up bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    ZeroCopy,
    Copy,
}

/// The UMEM's memory: an anonymous, page-aligned mapping, unmapped on drop.
#[derive(Debug)]
struct Area {
    base: NonNull<u8>,
    len: usize,
}

impl Area {
    fn new(len: usize) -> io::Result<Area> {
        // SAFETY: an anonymous private mapping at an address the kernel chooses touches no
        // existing memory; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Area { base, len })
    }

    fn as_slice_ptr(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.base, self.len)
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: `base..base+len` is the mapping made in `new`, unmapped only here. The
        // sockets that registered it are closed before (field order of `XskQueue`); pages
        // the kernel still pins stay alive until it unpins them.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

// SAFETY: the mapping is plain memory owned by the area; moving the owner to another thread
// moves the ownership with it.
unsafe impl Send for Area {}

/// Counters of one queue.
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueStats {
    /// Frames read from the RX ring.
    pub rx_frames: u64,
    /// Refills that found the kernel had used every frame of the fill ring: it may have
    /// dropped packets for want of a frame since.
    pub fill_starved: u64,
    /// Frames put on the TX ring.
    pub tx_frames: u64,
    /// Times the TX ring had no room (the frames went the slow way).
    pub tx_ring_full: u64,
    /// Times no TX frame was free (the datagram went the slow way).
    pub tx_frames_exhausted: u64,
    /// `sendto` kicks of the TX ring (copy mode transmits only when asked).
    pub tx_kicks: u64,
    /// Kicks the kernel failed with an error other than "try again".
    pub tx_kick_errors: u64,
    /// Kicks answered "try again" (per-call budget spent, or back-pressure).
    pub tx_kick_again: u64,
    /// Kicks that reported a frame dropped by the device.
    pub tx_device_drops: u64,
    /// Flushes that gave up kicking with frames still on the TX ring (retried later).
    pub tx_kick_budget_spent: u64,
    /// Descriptors from the kernel pointing outside the UMEM (never seen; a kernel bug).
    pub bad_descriptors: u64,
}

/// One receive queue's AF_XDP socket and its UMEM.
///
/// Field order is drop order: rings and sockets close before the UMEM registration, and
/// the memory is unmapped last.
pub struct XskQueue {
    queue: u32,
    mode: Mode,
    rx: RingRx,
    tx: RingTx,
    device: DeviceQueue,
    user: User,
    _umem: Umem,
    area: Area,
    /// TX frames (their UMEM offsets) not in use.
    free_tx: Vec<u64>,
    /// RX frames back from the driver, waiting for room in the fill ring.
    to_fill: Vec<u64>,
    /// Descriptors written but not yet put on the TX ring.
    tx_batch: Vec<XdpDesc>,
    pub stats: QueueStats,
}

impl std::fmt::Debug for XskQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskQueue")
            .field("queue", &self.queue)
            .field("mode", &self.mode)
            .field("free_tx", &self.free_tx.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

// SAFETY: `xdpilone::Umem` is not Send only because it keeps a raw pointer to the area;
// the queue owns that area, the rings and the descriptors outright and shares none of them
// (the device registry inside xdpilone is behind an Arc of a Sync lock), so moving the
// whole queue to the driver thread moves everything it points to along with it.
unsafe impl Send for XskQueue {}

fn errno(e: xdpilone::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.get_raw())
}

impl XskQueue {
    /// An AF_XDP socket on queue `queue` of interface `interface` (an index in the calling
    /// thread's namespace): zero-copy if the driver offers it, else copy mode.
    pub fn open(interface: u32, queue: u32) -> io::Result<XskQueue> {
        match Self::open_mode(interface, queue, Mode::ZeroCopy) {
            Ok(xsk) => Ok(xsk),
            // EOPNOTSUPP or EINVAL: the driver has no zero-copy (veth, most virtual NICs).
            Err(zero_copy) => Self::open_mode(interface, queue, Mode::Copy).map_err(|copy| {
                io::Error::new(
                    copy.kind(),
                    format!(
                        "cannot bind an AF_XDP socket to queue {queue} of interface \
                         {interface}: {copy} (zero-copy: {zero_copy})"
                    ),
                )
            }),
        }
    }

    fn open_mode(interface: u32, queue: u32, mode: Mode) -> io::Result<XskQueue> {
        let area = Area::new((FRAMES * FRAME_SIZE) as usize)?;
        let config = UmemConfig {
            fill_size: RX_FRAMES,
            complete_size: TX_FRAMES,
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: the area is page aligned (mmap), valid for its whole length, and outlives
        // the Umem (declared after it in XskQueue, so dropped after it).
        let umem = unsafe { Umem::new(config, area.as_slice_ptr()) }.map_err(errno)?;
        let mut info = IfInfo::invalid();
        info.from_ifindex(interface).map_err(errno)?;
        info.set_queue(queue);
        let socket = Socket::with_shared(&info, &umem).map_err(errno)?;
        let mut device = umem.fq_cq(&socket).map_err(errno)?;
        let bind_flags = match mode {
            Mode::ZeroCopy => SocketConfig::XDP_BIND_ZEROCOPY,
            Mode::Copy => SocketConfig::XDP_BIND_COPY,
        } | SocketConfig::XDP_BIND_NEED_WAKEUP;
        let user = umem
            .rx_tx(
                &socket,
                &SocketConfig {
                    rx_size: NonZeroU32::new(RING_SIZE),
                    tx_size: NonZeroU32::new(RING_SIZE),
                    bind_flags,
                },
            )
            .map_err(errno)?;
        let rx = user.map_rx().map_err(errno)?;
        let tx = user.map_tx().map_err(errno)?;
        // Hand every RX frame to the kernel before binding, so the first packet finds one.
        {
            let mut fill = device.fill(RX_FRAMES);
            let filled = fill.insert((0..RX_FRAMES).map(|i| u64::from(i * FRAME_SIZE)));
            fill.commit();
            debug_assert_eq!(filled, RX_FRAMES, "the fill ring holds every RX frame");
        }
        umem.bind(&user).map_err(errno)?;
        raise_send_buffer(user.as_raw_fd());
        Ok(XskQueue {
            queue,
            mode,
            rx,
            tx,
            device,
            user,
            _umem: umem,
            area,
            free_tx: (RX_FRAMES..FRAMES)
                .map(|i| u64::from(i * FRAME_SIZE))
                .rev()
                .collect(),
            to_fill: Vec::with_capacity(RX_FRAMES as usize),
            tx_batch: Vec::with_capacity(RING_SIZE as usize),
            stats: QueueStats::default(),
        })
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The socket, for the XSKMAP and for epoll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor is owned by `self.user` (shared with the UMEM), open for
        // as long as `self` lives, which bounds the returned borrow.
        unsafe { BorrowedFd::borrow_raw(self.raw_fd()) }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.user.as_raw_fd()
    }

    /// The kernel's counters for this socket (drops for want of RX ring room or of fill
    /// frames, invalid descriptors).
    pub fn kernel_stats(&self) -> Option<XdpStatisticsV2> {
        self.device.statistics_v2().ok()
    }

    /// Whether the RX ring has frames waiting.
    pub fn rx_pending(&self) -> bool {
        self.rx.available() > 0
    }

    /// Take up to `max` received frames: their descriptors go into `out`. The frames are
    /// the caller's until given back with [`XskQueue::recycle`].
    pub fn receive(&mut self, max: u32, out: &mut Vec<XdpDesc>) {
        let mut reader = self.rx.receive(max);
        while let Some(desc) = reader.read() {
            out.push(desc);
        }
        reader.release();
        self.stats.rx_frames += out.len() as u64;
    }

    /// The bytes of a received frame, `None` (counted) if the kernel's descriptor points
    /// outside the UMEM. Only for frames taken with `receive` and not yet recycled.
    pub fn rx_frame(&mut self, desc: &XdpDesc) -> Option<&mut [u8]> {
        let start = desc.addr as usize;
        let end = start.checked_add(desc.len as usize)?;
        // A frame never extends past its chunk; a descriptor that does is not ours to read.
        let chunk_end = (start & !(FRAME_SIZE as usize - 1)) + FRAME_SIZE as usize;
        if end > chunk_end || end > self.area.len {
            self.stats.bad_descriptors += 1;
            return None;
        }
        // SAFETY: `start..end` lies within the mapping (checked above). The kernel wrote this
        // frame and handed it over through the RX ring; it will not touch it again until it
        // comes back through the fill ring, and `&mut self` keeps any other slice of the
        // UMEM from being alive meanwhile.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.area.base.as_ptr().add(start), end - start)
        })
    }

    /// Give received frames back to the kernel through the fill ring. A descriptor
    /// outside the UMEM (see `rx_frame`) names no frame of ours and is not passed on.
    pub fn recycle(&mut self, received: &[XdpDesc]) {
        let chunk = !(u64::from(FRAME_SIZE) - 1);
        let len = self.area.len as u64;
        self.to_fill.extend(
            received
                .iter()
                .map(|desc| desc.addr & chunk)
                .filter(|&frame| frame < len),
        );
        self.refill();
    }

    fn refill(&mut self) {
        if self.to_fill.is_empty() {
            return;
        }
        if self.device.pending() == 0 {
            self.stats.fill_starved += 1;
        }
        // xdpilone serves a reservation from its cached view of the kernel's consumer
        // while that shows any room at all, so one call may offer less than is free: ask
        // again until everything is in or a fresh look finds the ring full.
        let mut filled = 0;
        while filled < self.to_fill.len() {
            let mut fill = self.device.fill((self.to_fill.len() - filled) as u32);
            let n = fill.insert(self.to_fill[filled..].iter().copied()) as usize;
            fill.commit();
            if n == 0 {
                break;
            }
            filled += n;
        }
        self.to_fill.drain(..filled);
        if self.device.needs_wakeup() {
            self.device.wake();
        }
    }

    /// A free TX frame to write into, reaping completions if none is free. `None` (counted)
    /// when every TX frame is in flight.
    pub fn take_tx_frame(&mut self) -> Option<u64> {
        if self.free_tx.is_empty() {
            self.reap_completions();
        }
        let frame = self.free_tx.pop();
        if frame.is_none() {
            self.stats.tx_frames_exhausted += 1;
        }
        frame
    }

    /// Give back a TX frame that was not sent after all.
    pub fn return_tx_frame(&mut self, frame: u64) {
        self.free_tx.push(frame);
    }

    /// The whole of TX frame `frame`, to write headers and payload into.
    pub fn tx_frame(&mut self, frame: u64) -> &mut [u8] {
        let start = frame as usize;
        assert!(
            start.is_multiple_of(FRAME_SIZE as usize)
                && start + FRAME_SIZE as usize <= self.area.len,
            "TX frames come from the free list, which holds chunk offsets within the UMEM"
        );
        // SAFETY: the chunk lies within the mapping (asserted). It came off the free list:
        // the kernel is done with it (its completion was reaped, or it was never
        // submitted) and nothing else refers to it; `&mut self` bounds the slice.
        unsafe {
            std::slice::from_raw_parts_mut(self.area.base.as_ptr().add(start), FRAME_SIZE as usize)
        }
    }

    /// Queue `len` bytes at offset `start` of TX frame `frame` for transmission. Call
    /// [`XskQueue::flush`] to hand the batch to the kernel.
    pub fn push_tx(&mut self, frame: u64, start: usize, len: usize) {
        self.tx_batch.push(XdpDesc {
            addr: frame + start as u64,
            len: len as u32,
            options: 0,
        });
    }

    /// Descriptors on the TX ring the kernel has not taken yet.
    pub fn tx_ring_pending(&self) -> u32 {
        self.tx.pending()
    }

    /// Descriptors queued by `push_tx` and not yet flushed.
    pub fn tx_batched(&self) -> usize {
        self.tx_batch.len()
    }

    /// Put the queued descriptors on the TX ring and kick the kernel. Those the ring has
    /// no room for are returned (their frames still the caller's: send them another way,
    /// then give them back with `return_tx_frame`).
    pub fn flush(&mut self, refused: &mut Vec<XdpDesc>) {
        if !self.tx_batch.is_empty() {
            // As for the fill ring: one reservation may offer less than is free.
            let mut written = 0;
            while written < self.tx_batch.len() {
                let mut writer = self.tx.transmit((self.tx_batch.len() - written) as u32);
                let n = writer.insert(self.tx_batch[written..].iter().copied()) as usize;
                writer.commit();
                if n == 0 {
                    break;
                }
                written += n;
            }
            self.stats.tx_frames += written as u64;
            if written < self.tx_batch.len() {
                self.stats.tx_ring_full += 1;
                refused.extend_from_slice(&self.tx_batch[written..]);
            }
            self.tx_batch.clear();
        }
        self.kick();
        self.reap_completions();
    }

    /// Make the kernel transmit what is on the TX ring. In copy mode it does so only inside
    /// `sendto`, a bounded number of frames per call (32 on Linux), and answers EAGAIN
    /// while frames remain; zero-copy drivers transmit on their own once woken.
    fn kick(&mut self) {
        // Enough calls for a full ring at 32 frames per call, plus one.
        let mut budget = RING_SIZE / 32 + 1;
        while self.tx.pending() > 0 && budget > 0 {
            if self.mode == Mode::ZeroCopy && !self.tx.needs_wakeup() {
                return;
            }
            budget -= 1;
            self.stats.tx_kicks += 1;
            // SAFETY: a zero-length sendto on an AF_XDP socket we own; no buffer is read.
            let sent = unsafe {
                libc::sendto(
                    self.raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if sent >= 0 {
                continue;
            }
            if budget == 0 {
                self.stats.tx_kick_budget_spent += 1;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => {}
                // The per-call budget is spent, or back-pressure: the send buffer is full
                // of frames in flight, the completion ring has no room, or the device is
                // busy. Reap what completed and try again.
                Some(libc::EAGAIN | libc::ENOBUFS) => {
                    self.stats.tx_kick_again += 1;
                    self.reap_completions();
                }
                // The device dropped the frame it was given (NET_XMIT_DROP); the frame
                // completes, the datagram is lost, like a full queue of a kernel socket.
                Some(libc::EBUSY) => {
                    self.stats.tx_device_drops += 1;
                    self.reap_completions();
                }
                other => {
                    self.stats.tx_kick_errors += 1;
                    tracing::debug!(queue = self.queue, errno = ?other, "AF_XDP TX kick failed");
                    return;
                }
            }
        }
    }

    /// Move transmitted frames from the completion ring back to the free list.
    pub fn reap_completions(&mut self) {
        let chunk = !(u64::from(FRAME_SIZE) - 1);
        let mut reader = self.device.complete(TX_FRAMES);
        while let Some(addr) = reader.read() {
            self.free_tx.push(addr & chunk);
        }
        reader.release();
    }

    /// TX frames not on the free list (in the kernel's rings or in the caller's hands).
    pub fn tx_in_flight(&self) -> usize {
        TX_FRAMES as usize - self.free_tx.len()
    }
}
