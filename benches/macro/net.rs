//! Thin wrappers over the Linux calls the harness needs: `sendmmsg`, `recvmmsg`, `epoll`,
//! forced socket buffers, RLIMIT_NOFILE, per-thread CPU time. Every `unsafe` block of the
//! harness is here.

use std::io;
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr;

/// Most datagrams per `sendmmsg`/`recvmmsg` (the forwarder's mio driver batches 64 too).
pub const BATCH: usize = 64;
/// Receive buffer per datagram: larger than any packet the harness or forwarder sends.
pub const RECV_BUF: usize = 2048;

/// A UDP socket bound to `bind` with SO_RCVBUF/SO_SNDBUF of `buffer_bytes`, forced beyond
/// `net.core.rmem_max` when running as root (SO_*BUFFORCE), as the forwarder does.
pub fn udp_socket(bind: SocketAddrV4, buffer_bytes: usize) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(bind)?;
    let fd = socket.as_raw_fd();
    let size = libc::c_int::try_from(buffer_bytes).unwrap_or(libc::c_int::MAX);
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, force, size).is_err() {
            // Not root: the kernel caps the plain option at rmem_max/wmem_max.
            setsockopt_int(fd, plain, size)?;
        }
    }
    Ok(socket)
}

fn setsockopt_int(fd: RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` lives across the call and its size is passed; `fd` is an open socket.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The kernel form of an IPv4 socket address, for `sendmmsg` destinations.
pub fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Sends every datagram of `packets` (at most [`BATCH`]) with as few `sendmmsg` calls as
/// the kernel allows. `dests[i]` is the destination of `packets[i]`; with `dests` empty the
/// socket must be connected. A datagram the kernel refuses (ECONNREFUSED after an ICMP
/// error, ENOBUFS) is skipped and counted. Returns (sent, failed, system calls).
pub fn send_batch(
    fd: RawFd,
    packets: &[&[u8]],
    dests: &[libc::sockaddr_in],
) -> (usize, usize, usize) {
    debug_assert!(packets.len() <= BATCH);
    debug_assert!(dests.is_empty() || dests.len() == packets.len());
    let n = packets.len().min(BATCH);
    // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is a valid value.
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iovs[i] = libc::iovec {
            iov_base: packets[i].as_ptr() as *mut libc::c_void,
            iov_len: packets[i].len(),
        };
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        if let Some(dest) = dests.get(i) {
            hdrs[i].msg_hdr.msg_name = dest as *const libc::sockaddr_in as *mut libc::c_void;
            hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        }
    }
    let (mut done, mut failed, mut calls) = (0, 0, 0);
    while done < n {
        calls += 1;
        // SAFETY: hdrs[done..n] point at iovecs and addresses that outlive the call, the
        // iovecs at the caller's packets (read only by the kernel); the count is in bounds.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr().add(done),
                (n - done) as libc::c_uint,
                0,
            )
        };
        if r > 0 {
            done += r as usize;
        } else {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                // The first remaining datagram failed: skip it.
                done += 1;
                failed += 1;
            }
        }
    }
    (n - failed, failed, calls)
}

/// Preallocated `recvmmsg` state for one thread: [`BATCH`] buffers of [`RECV_BUF`] bytes.
pub struct RecvBatch {
    bufs: Box<[[u8; RECV_BUF]]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").finish_non_exhaustive()
    }
}

impl RecvBatch {
    pub fn new() -> Self {
        let mut bufs = vec![[0u8; RECV_BUF]; BATCH].into_boxed_slice();
        let mut iovs: Box<[libc::iovec]> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: RECV_BUF,
            })
            .collect();
        let hdrs = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is a plain C struct for which all-zero is a valid value.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // The boxes' heap blocks never move, so the pointers above stay valid for the
        // life of `self`.
        RecvBatch { bufs, iovs, hdrs }
    }

    /// One non-blocking `recvmmsg`; returns how many datagrams arrived (0 if none).
    pub fn recv(&mut self, fd: RawFd) -> usize {
        debug_assert_eq!(self.iovs.len(), BATCH);
        // SAFETY: every header points at an iovec of `self.iovs`, each at a RECV_BUF-byte
        // buffer of `self.bufs`; all live as long as `self` and nothing else aliases them
        // during the call.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        if r > 0 {
            r as usize
        } else {
            0
        }
    }

    /// Datagram `i` of the last [`RecvBatch::recv`] (truncated ones are cut to RECV_BUF).
    pub fn datagram(&mut self, i: usize) -> &mut [u8] {
        let len = (self.hdrs[i].msg_len as usize).min(RECV_BUF);
        &mut self.bufs[i][..len]
    }
}

/// An epoll instance watching sockets for readability (level-triggered).
#[derive(Debug)]
pub struct Epoll {
    fd: RawFd,
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain system call; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll { fd })
    }

    /// Watches `fd` for input; `token` comes back with its events.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        let r = unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut event) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Waits up to `timeout_ms` and writes the ready tokens into `tokens`; returns how many.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        // SAFETY: the kernel writes at most `events.len()` entries into `events`.
        let r = unsafe {
            libc::epoll_wait(
                self.fd,
                events.as_mut_ptr(),
                events.len().min(i32::MAX as usize) as i32,
                timeout_ms,
            )
        };
        if r > 0 {
            r as usize
        } else {
            0
        }
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: `self.fd` is an epoll descriptor this struct owns and closes once.
        unsafe { libc::close(self.fd) };
    }
}

/// The calling thread's kernel id, to find its CPU time in /proc/self/task/TID/stat.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Clock ticks per second, the unit of utime/stime in /proc/PID/stat.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}
