//! One simulated participant as the worker drives it: its socket, its SRTP contexts, the
//! sans-IO publisher and receiver, and the impaired path each way.

use std::io;
use std::net::SocketAddr;

use fanout_forwarder::ids::Ssrc;
use fanout_forwarder::rtcp;
use fanout_forwarder::srtp::{SrtpContext, SrtpError};
use hdrhistogram::Histogram;

use super::{ParticipantOutcome, ParticipantSetup};
use crate::impair::Impairment;
use crate::media::{Publisher, Receiver};
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

/// A datagram held by an impairment queue.
pub struct Datagram {
    pub bytes: Vec<u8>,
    pub from: SocketAddr,
}

pub struct Participant {
    pub key: ParticipantKey,
    pub socket: mio::net::UdpSocket,
    forwarder: SocketAddr,
    send: SrtpContext,
    receive: SrtpContext,
    receive_key: fanout_forwarder::srtp::MasterKey,
    publisher: Option<Publisher>,
    receiver: Receiver,
    up: Option<Impairment<Datagram>>,
    down: Option<Impairment<Datagram>>,
    hello_ssrc: u32,
    /// When to say hello next; `None` once media has arrived.
    next_hello: Option<Micros>,
    started_at: Micros,
    rejected: u64,
    /// Copies SRTP's replay protection refused: retransmissions that crossed the original.
    replayed: u64,
    /// The time of the earliest timer entry this participant has in the heap.
    pub scheduled: Micros,
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
    pub buf: &'a mut [u8; DATAGRAM],
    pub pool: &'a mut Vec<Vec<u8>>,
    pub latency: &'a mut Histogram<u64>,
    pub window: &'a mut Histogram<u64>,
}

impl Participant {
    pub fn new(setup: ParticipantSetup, socket: mio::net::UdpSocket, now: Micros) -> Participant {
        let hello_ssrc = setup.receiver.rtcp_ssrc;
        let impairment = |spec: crate::impair::ImpairmentSpec, salt: u64| {
            (!spec.is_passthrough()).then(|| Impairment::new(spec, setup.seed ^ salt))
        };
        Participant {
            key: setup.key,
            socket,
            forwarder: setup.forwarder,
            send: SrtpContext::new(&setup.send_key),
            receive: SrtpContext::new(&setup.receive_key),
            receive_key: setup.receive_key.clone(),
            publisher: setup.publisher.map(Publisher::new),
            receiver: Receiver::new(setup.receiver),
            up: impairment(setup.up, 0x5570),
            down: impairment(setup.down, 0xd0d0),
            hello_ssrc,
            next_hello: Some(now),
            started_at: now,
            rejected: 0,
            replayed: 0,
            scheduled: now,
        }
    }

    /// The forwarder moved: media now goes to (and comes from) `forwarder`. The new
    /// forwarder's SRTP state starts afresh, so ours does too, and we say hello again.
    pub fn move_to(&mut self, forwarder: SocketAddr, now: Micros) {
        self.forwarder = forwarder;
        self.receive = SrtpContext::new(&self.receive_key);
        self.next_hello = Some(now);
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
            self.receiver.poll_timeout(),
            self.up.as_ref().and_then(Impairment::poll_timeout),
            self.down.as_ref().and_then(Impairment::poll_timeout),
            self.next_hello,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Read everything the socket holds.
    pub fn on_readable(&mut self, now: Micros, scratch: &mut Scratch<'_>) -> Work {
        let mut work = Work::default();
        loop {
            let (len, from) = match self.socket.recv_from(scratch.buf.as_mut_slice()) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP errors surface here on some kernels; nothing to read.
                Err(_) => break,
            };
            match &mut self.down {
                Some(down) => {
                    let mut bytes = scratch.pool.pop().unwrap_or_default();
                    bytes.clear();
                    bytes.extend_from_slice(&scratch.buf[..len]);
                    down.push(now, Datagram { bytes, from });
                }
                None => {
                    let buf = &mut scratch.buf[..len];
                    self.handle_datagram(
                        now,
                        buf,
                        from,
                        scratch.latency,
                        scratch.window,
                        &mut work,
                    );
                }
            }
        }
        self.rejected += work.rejected;
        self.replayed += work.replayed;
        work
    }

    /// Do what is due at `now`: impaired arrivals, timers, RTCP, media, hellos.
    pub fn on_timer(&mut self, now: Micros, scratch: &mut Scratch<'_>) -> Work {
        let mut work = Work::default();
        if let Some(down) = &mut self.down {
            while let Some(mut datagram) = down.pop_ready(now) {
                let from = datagram.from;
                let len = datagram.bytes.len();
                Self::dispatch(
                    &mut self.receive,
                    &mut self.receiver,
                    &mut self.publisher,
                    self.forwarder,
                    now,
                    &mut datagram.bytes[..len],
                    from,
                    scratch.latency,
                    scratch.window,
                    &mut work,
                    &mut self.next_hello,
                );
                scratch.pool.push(datagram.bytes);
            }
        }
        self.receiver.handle_timeout(now);
        while let Some(len) = self.receiver.poll_rtcp(now, &mut scratch.buf[..]) {
            self.send_rtcp(now, len, scratch, &mut work);
        }
        if let Some(publisher) = &mut self.publisher {
            while let Some(transmit) = publisher.poll_transmit(now, &mut scratch.buf[..]) {
                let protected = if transmit.is_rtcp {
                    self.send.protect_rtcp(&mut scratch.buf[..], transmit.len)
                } else {
                    self.send.protect_rtp(&mut scratch.buf[..], transmit.len)
                };
                if let Ok(len) = protected {
                    Self::transmit(
                        &self.socket,
                        &mut self.up,
                        self.forwarder,
                        now,
                        &scratch.buf[..len],
                        scratch.pool,
                        &mut work,
                    );
                }
            }
        }
        if let Some(due) = self.next_hello {
            if due <= now {
                if let Ok(len) =
                    rtcp::write_receiver_report(&mut scratch.buf[..], Ssrc(self.hello_ssrc), &[])
                {
                    self.send_rtcp(now, len, scratch, &mut work);
                }
                self.next_hello = Some(now + HELLO_INTERVAL_US);
            }
        }
        if let Some(up) = &mut self.up {
            while let Some(datagram) = up.pop_ready(now) {
                if send(&self.socket, &datagram.bytes, datagram.from) {
                    work.sent += 1;
                }
                scratch.pool.push(datagram.bytes);
            }
        }
        self.rejected += work.rejected;
        self.replayed += work.replayed;
        work
    }

    fn send_rtcp(&mut self, now: Micros, len: usize, scratch: &mut Scratch<'_>, work: &mut Work) {
        if let Ok(len) = self.send.protect_rtcp(&mut scratch.buf[..], len) {
            Self::transmit(
                &self.socket,
                &mut self.up,
                self.forwarder,
                now,
                &scratch.buf[..len],
                scratch.pool,
                work,
            );
        }
    }

    /// Send now, or queue on the impaired path (which sends when due).
    fn transmit(
        socket: &mio::net::UdpSocket,
        up: &mut Option<Impairment<Datagram>>,
        to: SocketAddr,
        now: Micros,
        packet: &[u8],
        pool: &mut Vec<Vec<u8>>,
        work: &mut Work,
    ) {
        match up {
            Some(up) => {
                let mut bytes = pool.pop().unwrap_or_default();
                bytes.clear();
                bytes.extend_from_slice(packet);
                up.push(now, Datagram { bytes, from: to });
            }
            None => {
                if send(socket, packet, to) {
                    work.sent += 1;
                }
            }
        }
    }

    fn handle_datagram(
        &mut self,
        now: Micros,
        buf: &mut [u8],
        from: SocketAddr,
        latency: &mut Histogram<u64>,
        window: &mut Histogram<u64>,
        work: &mut Work,
    ) {
        Self::dispatch(
            &mut self.receive,
            &mut self.receiver,
            &mut self.publisher,
            self.forwarder,
            now,
            buf,
            from,
            latency,
            window,
            work,
            &mut self.next_hello,
        );
    }

    /// Authenticate a datagram from the forwarder and hand it to the media side: RTP to the
    /// receiver, RTCP to both (NACK and PLI concern the publisher, sender reports the
    /// receiver). RTP and RTCP share the port; RFC 5761 tells them apart by payload type.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        receive: &mut SrtpContext,
        receiver: &mut Receiver,
        publisher: &mut Option<Publisher>,
        forwarder: SocketAddr,
        now: Micros,
        buf: &mut [u8],
        from: SocketAddr,
        latency: &mut Histogram<u64>,
        window: &mut Histogram<u64>,
        work: &mut Work,
        next_hello: &mut Option<Micros>,
    ) {
        if from != forwarder || buf.len() < 2 {
            work.rejected += 1;
            return;
        }
        let is_rtcp = (192..=223).contains(&buf[1]);
        if is_rtcp {
            match receive.unprotect_rtcp(buf) {
                Ok(len) => {
                    let plain = &buf[..len];
                    receiver.handle_rtcp(now, plain);
                    if let Some(publisher) = publisher {
                        publisher.handle_rtcp(now, plain);
                    }
                }
                Err(_) => work.rejected += 1,
            }
            return;
        }
        match receive.unprotect_rtp(buf) {
            Ok(len) => {
                work.received += 1;
                *next_hello = None;
                if let Some(delivery) = receiver.handle_rtp(now, &buf[..len]) {
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

    pub fn receiver_stats(&self) -> crate::stats::ReceiverStats {
        self.receiver.stats()
    }

    /// Settle and report what this participant measured.
    pub fn finish(mut self, now: Micros) -> ParticipantOutcome {
        let mut receiver = self.receiver.finish(now);
        receiver.invalid += self.rejected;
        receiver.duplicates += self.replayed;
        ParticipantOutcome {
            key: self.key,
            receiver,
            publisher: self.publisher.as_ref().map(Publisher::stats),
            connected_us: now.saturating_sub(self.started_at),
            rejected: std::mem::take(&mut self.rejected),
        }
    }
}

/// Send one datagram; a full socket buffer drops it like a full NIC queue would.
fn send(socket: &mio::net::UdpSocket, packet: &[u8], to: SocketAddr) -> bool {
    socket.send_to(packet, to).is_ok()
}
