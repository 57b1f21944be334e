//! A user-space UDP proxy between one participant's FFmpeg and its forwarder: the "network"
//! of the recording tests (this kernel has no netem, PLATFORM.md).
//!
//! FFmpeg sends each stream from its own socket to its own port (and RTCP to another);
//! the proxy takes them on ports of its own and sends everything to the forwarder from
//! ONE socket, as a participant behind a NAT would: the forwarder learns one address per
//! participant from the first packet that authenticates, and its media for the
//! participant comes back to that socket. On the way to the forwarder it drops and
//! reorders RTP packets at random (seeded, so a failure replays), and it writes down the
//! fate of every packet FFmpeg sent: the oracle the tests compare the recording with.
//! The RTP header is in the clear in SRTP (RFC 3711 §3.1); the proxy also decrypts a copy
//! of each packet with the participant's send key, only to see which VP8 packets start a
//! key frame. Packets coming back from the forwarder are authenticated with the
//! participant's receive key and their arrival times logged: what a subscriber received.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fanout_forwarder::srtp::{MasterKey, SrtpContext, SrtpProfile};

/// How long a thread waits in `recv` before looking at its stop flag and releasing a
/// packet it held back for reordering.
const READ_TIMEOUT: Duration = Duration::from_millis(30);

pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What the proxy does to RTP on its way to the forwarder.
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// Percent of RTP packets dropped.
    pub loss_percent: u64,
    /// Percent of RTP packets held back and sent after the next 1-3 packets.
    pub reorder_percent: u64,
    pub seed: u64,
}

impl Impairment {
    pub const NONE: Impairment = Impairment {
        loss_percent: 0,
        reorder_percent: 0,
        seed: 1,
    };
}

/// What became of one RTP packet FFmpeg sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Still held back for reordering (only while the proxy runs).
    Held,
    Dropped,
    /// Sent on to the forwarder at `to`, at `at_us` (unix µs).
    Forwarded {
        at_us: u64,
        to: SocketAddr,
    },
}

/// One RTP packet as FFmpeg sent it, in the order the proxy got it (loopback keeps a
/// socket's order).
#[derive(Debug, Clone, Copy)]
pub struct SentPacket {
    pub ssrc: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    /// VP8 (RFC 7741): the packet starts a key frame. False for audio.
    pub keyframe_start: bool,
    pub fate: Fate,
}

impl SentPacket {
    pub fn forwarded_at(&self) -> Option<u64> {
        match self.fate {
            Fate::Forwarded { at_us, .. } => Some(at_us),
            _ => None,
        }
    }
}

/// An authenticated RTP packet the forwarder sent to this participant.
#[derive(Debug, Clone, Copy)]
pub struct ReceivedPacket {
    pub at_us: u64,
    pub from: SocketAddr,
}

#[derive(Debug, Default)]
struct Log {
    sent: Vec<SentPacket>,
    received: Vec<ReceivedPacket>,
    /// Datagrams from the forwarder that did not authenticate as RTP (RTCP, mostly).
    other_from_forwarder: u64,
    /// FFmpeg's packets that did not authenticate with the join's send key (the forwarder
    /// would drop them too): must stay 0, or the oracle's key frames are unknown.
    undecryptable: u64,
}

/// A running proxy for one participant. Stops its threads on drop.
#[derive(Debug)]
pub struct Proxy {
    /// The ports FFmpeg sends to: video RTP, video RTCP, audio RTP, audio RTCP.
    pub video_port: u16,
    pub video_rtcp_port: u16,
    pub audio_port: u16,
    pub audio_rtcp_port: u16,
    upstream: Arc<UdpSocket>,
    target: Arc<Mutex<SocketAddr>>,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// A datagram no protocol the forwarder speaks starts with (RFC 7983's first byte 64-127
/// is none of STUN, DTLS, TURN channels or RTP/RTCP): dropped and counted as malformed.
pub const BARRIER: &[u8] = b"fanout-test-barrier";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bind_loopback() -> UdpSocket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .expect("a UDP socket");
    // A key frame is a burst of dozens of packets; a small default buffer would lose some
    // of them here, which the oracle would then not know about.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    let address: SocketAddr = "127.0.0.1:0".parse().expect("a socket address");
    socket.bind(&address.into()).expect("bind on loopback");
    let socket: UdpSocket = socket.into();
    socket
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("a read timeout");
    socket
}

/// A small deterministic generator (xorshift64*), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The fields of an RTP header the oracle needs (RFC 3550 §5.1), and where the payload
/// starts; `None` if it is not RTP.
pub fn rtp_fields(packet: &[u8]) -> Option<(u32, u16, u32, bool, usize)> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return None;
    }
    let csrcs = usize::from(packet[0] & 0x0f);
    let mut offset = 12 + 4 * csrcs;
    if packet[0] & 0x10 != 0 {
        let words = packet.get(offset + 2..offset + 4)?;
        offset += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    if offset > packet.len() {
        return None;
    }
    Some((
        u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
        u16::from_be_bytes([packet[2], packet[3]]),
        u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        packet[1] & 0x80 != 0,
        offset,
    ))
}

/// Whether a VP8 RTP payload starts a key frame (RFC 7741 §4.2: S=1 and partition 0 start
/// the frame; skip the descriptor's optional fields; §4.3: bit 0 of the frame tag, P, is 0
/// on key frames). Written here from the RFC, apart from the stitcher's depacketizer.
pub fn vp8_keyframe_start(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let start_of_partition_0 = first & 0x10 != 0 && first & 0x07 == 0;
    let mut at = 1;
    if first & 0x80 != 0 {
        let Some(&x) = payload.get(1) else {
            return false;
        };
        at = 2;
        if x & 0x80 != 0 {
            // PictureID: 15 bits when M is set, else 7.
            let Some(&pid) = payload.get(at) else {
                return false;
            };
            at += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            at += 1; // TID/Y/KEYIDX
        }
    }
    start_of_partition_0 && payload.get(at).is_some_and(|tag| tag & 0x01 == 0)
}

fn is_rtcp(packet: &[u8]) -> bool {
    // RFC 5761 §4: RTCP packet types 192-223 in the second byte.
    packet.len() >= 2 && (192..=223).contains(&packet[1])
}

impl Proxy {
    /// A proxy for a participant with `send_key`/`receive_key` (RFC 4568 `inline:`) of
    /// `profile`, sending to the forwarder at `target`, impairing RTP by `impairment`.
    pub fn start(
        profile: SrtpProfile,
        send_key: &str,
        receive_key: &str,
        target: SocketAddr,
        impairment: Impairment,
    ) -> Proxy {
        let upstream = Arc::new(bind_loopback());
        let target = Arc::new(Mutex::new(target));
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let send_key = MasterKey::from_inline(profile, send_key).expect("the join's send key");
        let receive_key =
            MasterKey::from_inline(profile, receive_key).expect("the join's receive key");
        let mut threads = Vec::new();
        let mut ports = Vec::new();
        for (stream, video) in [(0u64, true), (1, false)] {
            let media = bind_loopback();
            let rtcp = bind_loopback();
            ports.push(media.local_addr().expect("bound").port());
            ports.push(rtcp.local_addr().expect("bound").port());
            let mut forward = Forwarding {
                upstream: upstream.clone(),
                target: target.clone(),
                log: log.clone(),
                rng: Rng(impairment.seed.wrapping_add(stream).max(1)),
                impairment,
                decrypt: SrtpContext::new(&send_key),
                video,
                held: None,
            };
            let stop_media = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop_media.load(Ordering::Relaxed) {
                    match media.recv_from(&mut buf) {
                        Ok((n, _)) => forward.packet(&buf[..n]),
                        Err(_) => forward.release_held(),
                    }
                }
                forward.release_held();
            }));
            // RTCP (FFmpeg's sender reports) goes on unimpaired: the forwarder relays
            // them to subscribers, as it would from a real peer.
            let (upstream_rtcp, target_rtcp, stop_rtcp) =
                (upstream.clone(), target.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop_rtcp.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = rtcp.recv_from(&mut buf) {
                        let to = *lock(&target_rtcp);
                        let _ = upstream_rtcp.send_to(&buf[..n], to);
                    }
                }
            }));
        }
        // What the forwarder sends the participant: its subscriptions' media. A fresh
        // receive context per forwarder address: a new forwarder after a failover starts
        // its own SRTP streams (sequence numbers and rollover counters) with the same key.
        let (log_in, stop_in, upstream_in) = (log.clone(), stop.clone(), upstream.clone());
        threads.push(std::thread::spawn(move || {
            let upstream = upstream_in;
            let mut contexts: HashMap<SocketAddr, SrtpContext> = HashMap::new();
            let mut buf = [0u8; 2048];
            while !stop_in.load(Ordering::Relaxed) {
                let Ok((n, from)) = upstream.recv_from(&mut buf) else {
                    continue;
                };
                let at_us = unix_micros();
                let context = contexts
                    .entry(from)
                    .or_insert_with(|| SrtpContext::new(&receive_key));
                let authenticated = !is_rtcp(&buf[..n])
                    && context
                        .unprotect_rtp(&mut buf[..n])
                        .ok()
                        .and_then(|len| rtp_fields(&buf[..len]))
                        .is_some();
                let mut log = lock(&log_in);
                if authenticated {
                    log.received.push(ReceivedPacket { at_us, from });
                } else {
                    log.other_from_forwarder += 1;
                }
            }
        }));
        Proxy {
            video_port: ports[0],
            video_rtcp_port: ports[1],
            audio_port: ports[2],
            audio_rtcp_port: ports[3],
            upstream,
            target,
            log,
            stop,
            threads,
        }
    }

    /// Sends everything to `target` from now on (the meeting moved to another forwarder).
    pub fn point_to(&self, target: SocketAddr) {
        *lock(&self.target) = target;
    }

    /// Every RTP packet FFmpeg sent so far, with its fate.
    pub fn sent(&self) -> Vec<SentPacket> {
        lock(&self.log).sent.clone()
    }

    /// The authenticated RTP packets the forwarder sent this participant so far.
    pub fn received(&self) -> Vec<ReceivedPacket> {
        lock(&self.log).received.clone()
    }

    /// FFmpeg's packets that did not authenticate with the participant's send key.
    pub fn undecryptable(&self) -> u64 {
        lock(&self.log).undecryptable
    }

    /// RTP packets sent on to `to`.
    pub fn forwarded_to(&self, to: SocketAddr) -> u64 {
        lock(&self.log)
            .sent
            .iter()
            .filter(|p| matches!(p.fate, Fate::Forwarded { to: t, .. } if t == to))
            .count() as u64
    }

    /// Sends [`BARRIER`] after everything sent so far. Loopback keeps the order of one
    /// socket's datagrams, and the forwarder (one shard) handles them in order: once it
    /// has counted the barrier as malformed, it has handled every packet before it.
    pub fn send_barrier(&self) {
        let to = *lock(&self.target);
        self.upstream
            .send_to(BARRIER, to)
            .expect("a datagram on loopback");
    }

    /// Stops the threads (releasing held packets first); the logs stay readable.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One RTP stream's way through the proxy.
struct Forwarding {
    upstream: Arc<UdpSocket>,
    target: Arc<Mutex<SocketAddr>>,
    log: Arc<Mutex<Log>>,
    rng: Rng,
    impairment: Impairment,
    decrypt: SrtpContext,
    video: bool,
    /// A packet held back, its index in the log, and how many packets go before it.
    held: Option<(Vec<u8>, usize, u64)>,
}

impl Forwarding {
    fn packet(&mut self, datagram: &[u8]) {
        let Some((ssrc, seq, timestamp, marker, _)) = rtp_fields(datagram) else {
            return;
        };
        let keyframe_start = self.video && {
            let mut copy = datagram.to_vec();
            match self.decrypt.unprotect_rtp(&mut copy) {
                Ok(len) => rtp_fields(&copy[..len])
                    .is_some_and(|(.., offset)| vp8_keyframe_start(&copy[offset..len])),
                Err(_) => {
                    lock(&self.log).undecryptable += 1;
                    false
                }
            }
        };
        let dropped = self.rng.chance(self.impairment.loss_percent);
        let index = {
            let mut log = lock(&self.log);
            log.sent.push(SentPacket {
                ssrc,
                seq,
                timestamp,
                marker,
                keyframe_start,
                fate: if dropped { Fate::Dropped } else { Fate::Held },
            });
            log.sent.len() - 1
        };
        if dropped {
            return;
        }
        if self.held.is_none() && self.rng.chance(self.impairment.reorder_percent) {
            let after = 1 + self.rng.next() % 3;
            self.held = Some((datagram.to_vec(), index, after));
            return;
        }
        self.send(datagram, index);
        if let Some((_, _, after)) = &mut self.held {
            *after -= 1;
            if *after == 0 {
                self.release_held();
            }
        }
    }

    fn release_held(&mut self) {
        if let Some((datagram, index, _)) = self.held.take() {
            self.send(&datagram, index);
        }
    }

    fn send(&self, datagram: &[u8], index: usize) {
        let to = *lock(&self.target);
        // A send to a forwarder that just died may fail (an ICMP error reported on the
        // socket): the packet is lost, as on a real network; it still counts as sent on,
        // since it left the participant's side.
        let _ = self.upstream.send_to(datagram, to);
        let at_us = unix_micros();
        lock(&self.log).sent[index].fate = Fate::Forwarded { at_us, to };
    }
}
