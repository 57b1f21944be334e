//! I/O drivers: thin loops that move datagrams between kernel sockets and the sans-IO
//! [`Forwarder`](crate::sfu::Forwarder). Every `unsafe` block of the crate lives here.
//!
//! * [`mio`]: the portable driver. Readiness from epoll (via mio), batched receive with
//!   `recvmmsg` and batched send with `sendmmsg`.
//!
//! The io_uring and AF_XDP drivers are separate issues; they plug into the same core
//! through the same four calls (`handle_datagram`, `poll_transmit`, `poll_timeout`,
//! `handle_timeout`).

pub mod mio;
mod sockaddr;

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

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
