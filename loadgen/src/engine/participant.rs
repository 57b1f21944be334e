//! One simulated participant as the worker drives it: its path to the forwarder (socket,
//! impairments each way), its outbound SRTP and publisher, and its inbound side (SRTP,
//! receiver, hellos).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use fanout_forwarder::driver::mio::RecvBatch;
use fanout_forwarder::ids::Ssrc;
use fanout_forwarder::rtcp;
use fanout_forwarder::srtp::{MasterKey, SrtpContext, SrtpError};
use hdrhistogram::Histogram;

use super::{ParticipantOutcome, ParticipantSetup};
use crate::impair::{Impairment, ImpairmentSpec};
use crate::media::{Publisher, Receiver};
use crate::stats::ReceiverStats;
use crate::Micros;

/// Identifies a participant across joins: the run's index for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantKey(pub u64);

/// Until media arrives, a participant says hello (an empty receiver report) this often:
/// the forwarder learns a leg's address from its first authenticated packet, and a viewer
/// that publishes nothing would otherwise never be heard. Repeated because the path may
/// lose it.
const HELLO_INTERVAL_US: Micros = 200_000;

/// Room for a datagram: an MTU-sized packet and the SRTP trailer.
pub const DATAGRAM: usize = 1600;

/// A datagram held by an impairment queue, with its peer (source or destination).
pub struct Datagram {
    pub bytes: Vec<u8>,
    pub peer: SocketAddr,
}

/// What a participant's work produced for the worker's counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Work {
    pub sent: u64,
    pub received: u64,
    pub rejected: u64,
    pub replayed: u64,
}

/// Buffers and sinks the worker lends a participant for one call.
pub struct Scratch<'a> {
    /// What is built and sent.
    pub buf: &'a mut [u8; DATAGRAM],
    /// What is read: one `recvmmsg` takes everything a socket holds, up to its capacity.
    pub recv: &'a mut RecvBatch,
    pub pool: &'a mut Vec<Vec<u8>>,
    pub latency: &'a mut Histogram<u64>,
    pub window: &'a mut Histogram<u64>,
}

/// The network between a participant and its forwarder.
struct Path {
    socket: mio::net::UdpSocket,
    forwarder: SocketAddr,
    up: Option<Impairment<Datagram>>,
    down: Option<Impairment<Datagram>>,
}

impl Path {
    /// Send now, or queue on the impaired path (sent by [`Path::flush_up`] when due).
    fn transmit(&mut self, now: Micros, packet: &[u8], pool: &mut Vec<Vec<u8>>, work: &mut Work) {
        match &mut self.up {
            Some(up) => up.push(now, pooled(pool, packet, self.forwarder)),
            None => work.sent += u64::from(send(&self.socket, packet, self.forwarder)),
        }
    }

    fn flush_up(&mut self, now: Micros, pool: &mut Vec<Vec<u8>>, work: &mut Work) {
        if let Some(up) = &mut self.up {
            while let Some(datagram) = up.pop_ready(now) {
                work.sent += u64::from(send(&self.socket, &datagram.bytes, datagram.peer));
                pool.push(datagram.bytes);
            }
        }
    }
}

/// What arrives: authenticated, decrypted and handed to the media side.
struct Inbound {
    srtp: SrtpContext,
    /// To start the SRTP state afresh when the forwarder changes.
    key: MasterKey,
    receiver: Receiver,
    hello_ssrc: u32,
    /// When to say hello next; `None` once media has arrived.
    next_hello: Option<Micros>,
    rejected: u64,
    /// Copies SRTP's replay protection refused: retransmissions that crossed the original.
    replayed: u64,
}

impl Inbound {
    /// Authenticate a datagram from the forwarder and hand it to the media side: RTP to the
    /// receiver, RTCP to both (NACK and PLI concern the publisher, sender reports the
    /// receiver). RTP and RTCP share the port; RFC 5761 tells them apart by payload type.
    fn dispatch(
        &mut self,
        publisher: &mut Option<Publisher>,
        now: Micros,
        datagram: (&mut [u8], SocketAddr, SocketAddr),
        latency: &mut Histogram<u64>,
        window: &mut Histogram<u64>,
        work: &mut Work,
    ) {
        let (buf, from, forwarder) = datagram;
        if from != forwarder || buf.len() < 2 {
            work.rejected += 1;
            return;
        }
        if (192..=223).contains(&buf[1]) {
            match self.srtp.unprotect_rtcp(buf) {
                Ok(len) => {
                    let plain = &buf[..len];
                    self.receiver.handle_rtcp(now, plain);
                    if let Some(publisher) = publisher {
                        publisher.handle_rtcp(now, plain);
                    }
                }
                Err(_) => work.rejected += 1,
            }
            return;
        }
        match self.srtp.unprotect_rtp(buf) {
            Ok(len) => {
                work.received += 1;
                self.next_hello = None;
                if let Some(delivery) = self.receiver.handle_rtp(now, &buf[..len]) {
                    let _ = latency.record(delivery.latency_us.max(1));
                    let _ = window.record(delivery.latency_us.max(1));
                }
            }
            // A second copy (the original and a retransmission both arrived): SRTP's
            // replay window stops it before the receiver sees it, so count it here.
            Err(SrtpError::Replayed) => work.replayed += 1,
            Err(_) => work.rejected += 1,
        }
    }
}

pub struct Participant {
    pub key: ParticipantKey,
    /// The time of the earliest timer entry this participant has in the heap.
    pub scheduled: Micros,
    started_at: Micros,
    path: Path,
    outbound: SrtpContext,
    publisher: Option<Publisher>,
    inbound: Inbound,
}

impl Participant {
    pub fn new(setup: ParticipantSetup, socket: mio::net::UdpSocket, now: Micros) -> Participant {
        let impairment = |spec: ImpairmentSpec, salt: u64| {
            (!spec.is_passthrough()).then(|| Impairment::new(spec, setup.seed ^ salt))
        };
        Participant {
            key: setup.key,
            scheduled: now,
            started_at: now,
            path: Path {
                socket,
                forwarder: setup.forwarder,
                up: impairment(setup.up, 0x5570),
                down: impairment(setup.down, 0xd0d0),
            },
            outbound: SrtpContext::new(&setup.send_key),
            publisher: setup.publisher.map(Publisher::new),
            inbound: Inbound {
                srtp: SrtpContext::new(&setup.receive_key),
                key: setup.receive_key,
                hello_ssrc: setup.receiver.rtcp_ssrc,
                receiver: Receiver::new(setup.receiver),
                next_hello: Some(now),
                rejected: 0,
                replayed: 0,
            },
        }
    }

    pub fn socket_mut(&mut self) -> &mut mio::net::UdpSocket {
        &mut self.path.socket
    }

    /// The forwarder moved: media now goes to (and comes from) `forwarder`. The new
    /// forwarder's SRTP state starts afresh, so ours does too, and we say hello again.
    pub fn move_to(&mut self, forwarder: SocketAddr, now: Micros) {
        self.path.forwarder = forwarder;
        self.inbound.srtp = SrtpContext::new(&self.inbound.key);
        self.inbound.receiver.transport_changed(now);
        self.inbound.next_hello = Some(now);
    }

    /// No more new media; retransmissions and RTCP go on.
    pub fn stop_publishing(&mut self) {
        if let Some(publisher) = &mut self.publisher {
            publisher.stop_publishing();
        }
    }

    /// The earliest time anything of this participant is due.
    pub fn next_wake(&self) -> Option<Micros> {
        [
            self.publisher.as_ref().and_then(Publisher::poll_timeout),
            self.inbound.receiver.poll_timeout(),
            self.path.up.as_ref().and_then(Impairment::poll_timeout),
            self.path.down.as_ref().and_then(Impairment::poll_timeout),
            self.inbound.next_hello,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Read everything the socket holds: one `recvmmsg` per readiness as a rule (a
    /// participant rarely has more than a datagram waiting), another only when it filled
    /// the batch.
    pub fn on_readable(&mut self, now: Micros, scratch: &mut Scratch<'_>) -> Work {
        let mut work = Work::default();
        let fd = self.path.socket.as_raw_fd();
        loop {
            let got = match scratch.recv.recv(fd) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: drained. ICMP errors surface here on some kernels; nothing
                // to read.
                Err(_) => break,
            };
            for i in 0..got {
                let Some((from, datagram)) = scratch.recv.datagram_mut(i) else {
                    work.rejected += 1;
                    continue;
                };
                match &mut self.path.down {
                    Some(down) => down.push(now, pooled(scratch.pool, datagram, from)),
                    None => self.inbound.dispatch(
                        &mut self.publisher,
                        now,
                        (datagram, from, self.path.forwarder),
                        scratch.latency,
                        scratch.window,
                        &mut work,
                    ),
                }
            }
            if got < scratch.recv.capacity() {
                break;
            }
        }
        self.tally(work)
    }

    /// Do what is due at `now`: impaired arrivals, timers, RTCP, media, hellos.
    pub fn on_timer(&mut self, now: Micros, scratch: &mut Scratch<'_>) -> Work {
        let mut work = Work::default();
        if let Some(down) = &mut self.path.down {
            while let Some(mut datagram) = down.pop_ready(now) {
                self.inbound.dispatch(
                    &mut self.publisher,
                    now,
                    (&mut datagram.bytes[..], datagram.peer, self.path.forwarder),
                    scratch.latency,
                    scratch.window,
                    &mut work,
                );
                scratch.pool.push(datagram.bytes);
            }
        }
        self.inbound.receiver.handle_timeout(now);
        while let Some(len) = self.inbound.receiver.poll_rtcp(now, &mut scratch.buf[..]) {
            self.send_protected(now, len, true, scratch, &mut work);
        }
        while let Some(transmit) = self
            .publisher
            .as_mut()
            .and_then(|p| p.poll_transmit(now, &mut scratch.buf[..]))
        {
            self.send_protected(now, transmit.len, transmit.is_rtcp, scratch, &mut work);
        }
        if self.inbound.next_hello.is_some_and(|due| due <= now) {
            let ssrc = Ssrc(self.inbound.hello_ssrc);
            if let Ok(len) = rtcp::write_receiver_report(&mut scratch.buf[..], ssrc, &[]) {
                self.send_protected(now, len, true, scratch, &mut work);
            }
            self.inbound.next_hello = Some(now + HELLO_INTERVAL_US);
        }
        self.path.flush_up(now, scratch.pool, &mut work);
        self.tally(work)
    }

    /// Protect the plain packet of `len` bytes in the scratch buffer and send it.
    fn send_protected(
        &mut self,
        now: Micros,
        len: usize,
        is_rtcp: bool,
        scratch: &mut Scratch<'_>,
        work: &mut Work,
    ) {
        let protected = if is_rtcp {
            self.outbound.protect_rtcp(&mut scratch.buf[..], len)
        } else {
            self.outbound.protect_rtp(&mut scratch.buf[..], len)
        };
        if let Ok(len) = protected {
            self.path
                .transmit(now, &scratch.buf[..len], scratch.pool, work);
        }
    }

    fn tally(&mut self, work: Work) -> Work {
        self.inbound.rejected += work.rejected;
        self.inbound.replayed += work.replayed;
        work
    }

    pub fn receiver_stats(&self) -> ReceiverStats {
        self.inbound.receiver.stats()
    }

    /// Settle and report what this participant measured.
    pub fn finish(mut self, now: Micros) -> ParticipantOutcome {
        let mut receiver = self.inbound.receiver.finish(now);
        receiver.invalid += self.inbound.rejected;
        receiver.duplicates += self.inbound.replayed;
        ParticipantOutcome {
            key: self.key,
            receiver,
            publisher: self.publisher.as_ref().map(Publisher::stats),
            connected_us: now.saturating_sub(self.started_at),
            rejected: self.inbound.rejected,
        }
    }
}

/// A copy of `bytes` in a buffer from the pool.
fn pooled(pool: &mut Vec<Vec<u8>>, bytes: &[u8], peer: SocketAddr) -> Datagram {
    let mut buffer = pool.pop().unwrap_or_default();
    buffer.clear();
    buffer.extend_from_slice(bytes);
    Datagram {
        bytes: buffer,
        peer,
    }
}

/// Send one datagram; a full socket buffer drops it like a full NIC queue would.
fn send(socket: &mio::net::UdpSocket, packet: &[u8], to: SocketAddr) -> bool {
    socket.send_to(packet, to).is_ok()
}
