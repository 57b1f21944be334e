//! I/O drivers: thin loops that move datagrams between kernel sockets and the sans-IO
//! [`Forwarder`](crate::sfu::Forwarder). Every `unsafe` block of the crate lives here.
//!
//! * [`mio`]: the portable driver. Readiness from epoll (via mio), batched receive with
//!   `recvmmsg` and batched send with `sendmmsg`.
//! * [`uring`]: the io_uring driver. Multishot receive into a provided buffer ring, and
//!   one submission for the whole fan-out of a receive batch.
//! * [`afxdp`]: AF_XDP sockets on the XDP guard's interface, Ethernet/IP/UDP written by
//!   the driver, the kernel sockets as the slow path (`--io afxdp --xdp IFACE`).
//!
//! All offer the same surface, the [`Driver`] trait, and share their command queue, stop
//! handle, counters, progress lines and metrics rendering (`common`). [`select`] picks one
//! at start from an [`IoSelection`] (`--io auto|uring|mio|afxdp`), probing the kernel for
//! io_uring; [`new_driver`] builds it ([`new_afxdp_driver`] for AF_XDP, which needs the
//! guard). All feed the same core through the same four calls (`handle_datagram`,
//! `poll_transmit`, `poll_timeout`, `handle_timeout`).

pub mod afxdp;
mod common;
pub mod mio;
pub mod os;
mod recorder;
mod sockaddr;
pub mod uring;

pub use common::{
    Command, CommandError, DriverHandle, DriverStats, EventSink, StopHandle, TrafficCounters,
    COMMAND_QUEUE_CAPACITY,
};
pub use recorder::RecorderTap;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use crate::exporter::{MetricsExchange, Wake};
use crate::sfu::Forwarder;

use socket2::{Domain, Protocol, Socket, Type};

/// What a driver offers the process: main.rs picks one at start and does not care which.
pub trait Driver: Send + std::fmt::Debug {
    /// Which driver this is.
    fn kind(&self) -> DriverKind;
    /// Answer metric scrapes through `exchange`; returns the wake-up the scraper must use.
    fn serve_metrics(&mut self, exchange: Arc<MetricsExchange>) -> Arc<dyn Wake>;
    /// Log a progress line (datagrams in and out, drops) this often; `None` turns it off.
    fn set_progress_interval(&mut self, interval: Option<Duration>);
    /// Hand the core's dominant-speaker events to `sink` as well as logging them (set
    /// before `run`). The driver never waits on it: a full sink drops and counts.
    fn set_event_sink(&mut self, sink: EventSink);
    /// Keep an XDP guard's allowlist equal to this shard's peers (set before `run`).
    fn set_peer_sync(&mut self, sync: crate::edge::PeerSync);
    /// Hand the media of recorded meetings to the recorder (set before `run`).
    fn set_recorder(&mut self, tap: RecorderTap);
    fn stop_handle(&self) -> StopHandle;
    /// A handle to send commands to the core from other threads.
    fn handle(&self) -> DriverHandle;
    fn local_addrs(&self) -> Vec<SocketAddr>;
    fn stats(&self) -> DriverStats;
    /// The datagram counters, readable from other threads while the driver runs.
    fn traffic(&self) -> Arc<TrafficCounters>;
    /// Run until stopped. Events of the core are logged (and some handed to the sink).
    fn run(&mut self, core: &mut Forwarder) -> io::Result<()>;
}

/// The drivers this build has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    Mio,
    Uring,
    /// AF_XDP sockets on the XDP guard's interface ([`afxdp`]); built with
    /// [`new_afxdp_driver`], since it needs the guard.
    AfXdp,
}

impl DriverKind {
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Mio => "mio",
            DriverKind::Uring => "io_uring",
            DriverKind::AfXdp => "afxdp",
        }
    }
}

impl std::fmt::Display for DriverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the operator asked for (`--io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoSelection {
    /// io_uring when the kernel has what the driver needs, else mio (logged with why).
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    Mio,
    /// AF_XDP (`--io afxdp --xdp IFACE`); the kernel's support is checked when the
    /// driver is built.
    AfXdp,
}

/// `--io uring` on a kernel (or in a sandbox) without the io_uring features the driver
/// needs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("io_uring driver requested but unavailable: {0}")]
pub struct UringUnavailable(pub String);

/// Pick the driver for `selection`, probing the kernel for io_uring unless mio was asked
/// for. `Auto` falls back to mio with a logged reason.
pub fn select(selection: IoSelection) -> Result<DriverKind, UringUnavailable> {
    match selection {
        IoSelection::Mio => Ok(DriverKind::Mio),
        IoSelection::AfXdp => Ok(DriverKind::AfXdp),
        IoSelection::Uring => uring::probe()
            .map(|()| DriverKind::Uring)
            .map_err(UringUnavailable),
        IoSelection::Auto => match uring::probe() {
            Ok(()) => Ok(DriverKind::Uring),
            Err(reason) => {
                tracing::warn!(%reason, "io_uring unavailable; falling back to the mio driver");
                Ok(DriverKind::Mio)
            }
        },
    }
}

/// Build the driver of `kind` over bound sockets (the first is the default for transmits
/// that name no source).
pub fn new_driver(kind: DriverKind, sockets: Vec<UdpSocket>) -> io::Result<Box<dyn Driver>> {
    Ok(match kind {
        DriverKind::Mio => Box::new(mio::MioDriver::new(sockets)?),
        DriverKind::Uring => Box::new(uring::UringDriver::new(sockets)?),
        DriverKind::AfXdp => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the AF_XDP driver needs the XDP guard: build it with new_afxdp_driver",
            ))
        }
    })
}

/// Build the AF_XDP driver over bound sockets, on the interface of `guard`, whose program
/// it asks to redirect each receive queue to the driver's AF_XDP socket.
pub fn new_afxdp_driver(
    sockets: Vec<UdpSocket>,
    guard: Arc<dyn afxdp::XskRegistry>,
) -> io::Result<Box<dyn Driver>> {
    Ok(Box::new(afxdp::AfXdpDriver::new(sockets, guard)?))
}

/// Bind a non-blocking UDP socket with the given kernel buffer sizes. Buffers larger than
/// `net.core.rmem_max` are forced when running as root (SO_RCVBUFFORCE), else capped by
/// the kernel; the size obtained is logged.
pub fn bind_udp(address: SocketAddr, buffer_bytes: usize) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_nonblocking(true)?;
    if buffer_bytes > 0 {
        set_buffers(&socket, buffer_bytes);
    }
    socket.bind(&address.into())?;
    Ok(socket.into())
}

fn set_buffers(socket: &Socket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    for (force, plain, name) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "receive"),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "send"),
    ] {
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: fd is a valid socket owned by `socket` for the duration of the call, and
        // the option value points at a live c_int of the size passed.
        let forced = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                force,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        if !forced {
            let result = if plain == libc::SO_RCVBUF {
                socket.set_recv_buffer_size(bytes)
            } else {
                socket.set_send_buffer_size(bytes)
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "cannot set the socket {name} buffer");
            }
        }
        let got = if plain == libc::SO_RCVBUF {
            socket.recv_buffer_size()
        } else {
            socket.send_buffer_size()
        };
        if let Ok(got) = got {
            // Linux reports twice the requested size (it counts its bookkeeping).
            if got < bytes {
                tracing::warn!(requested = bytes, obtained = got, "socket {name} buffer is smaller than configured; raise net.core.{}mem_max or run as root", if plain == libc::SO_RCVBUF { "r" } else { "w" });
            }
        }
    }
}

/// The CPUs this process may run on (its affinity mask, as set by `taskset` or a cgroup's
/// cpuset), lowest first. Empty if the kernel will not say.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data for which all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t of the size passed; pid 0 is the calling thread.
    let got = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if got != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the number of CPUs a cpu_set_t holds.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pin the calling thread to one CPU, so a shard keeps its caches and never migrates.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is beyond CPU_SETSIZE"),
        ));
    }
    // SAFETY: all-zero is an empty cpu_set_t; `cpu` was checked against CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above, `cpu` < CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a live cpu_set_t of the size passed; pid 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
