//! Local ports: free RTP/RTCP port pairs, and waiting until a peer has bound its ports.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{tail, Proc};

/// Ports this process has handed out, so that concurrent tests never get the same pair
/// (the probe sockets are closed before the peer binds the port).
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A UDP port `P` such that `P` and `P + 1` are both free (RTP and RTCP, RFC 3550 §11).
pub fn free_udp_port_pair() -> Result<u16> {
    for _ in 0..1000 {
        let first = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
            .context("cannot bind a probe UDP socket")?;
        let port = first.local_addr()?.port();
        let Some(next) = port.checked_add(1) else {
            continue;
        };
        if UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, next)).is_err() {
            continue;
        }
        let mut handed = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        let handed = handed.get_or_insert_with(HashSet::new);
        if handed.contains(&port) || handed.contains(&next) {
            continue;
        }
        handed.insert(port);
        handed.insert(next);
        return Ok(port);
    }
    bail!("no free UDP port pair found in 1000 attempts")
}

/// UDP ports with a bound socket on this host, from /proc/net/udp and /proc/net/udp6.
///
/// Reading the kernel's table instead of probing with bind() never steals a port from a
/// peer that is about to bind it.
pub fn bound_udp_ports() -> Result<HashSet<u16>> {
    let mut ports = HashSet::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {table}")),
        };
        // "  sl  local_address rem_address ...", local_address is "HEXADDR:HEXPORT".
        for line in text.lines().skip(1) {
            let port = line
                .split_whitespace()
                .nth(1)
                .and_then(|local| local.rsplit_once(':'))
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok());
            if let Some(port) = port {
                ports.insert(port);
            }
        }
    }
    Ok(ports)
}

/// Waits until every port of `ports` is bound (the peer `proc` is listening), up to
/// `timeout`. Fails early, with the peer's stderr, if the peer exits first.
pub fn wait_udp_bound(proc: &mut Proc, ports: &[u16], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let bound = bound_udp_ports()?;
        let missing: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|p| !bound.contains(p))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if let Some(status) = proc.try_status() {
            bail!(
                "{} exited ({status}) before binding UDP ports {missing:?}; stderr:\n{}",
                proc.name(),
                tail(&proc.stderr())
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not bind UDP ports {missing:?} within {timeout:?}; stderr:\n{}",
                proc.name(),
                tail(&proc.stderr())
            );
        }
        // Polling the kernel's socket table: the wait ends as soon as the ports appear.
        thread::sleep(Duration::from_millis(10));
    }
}
