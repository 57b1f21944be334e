//! The paced senders: the SRTP publisher that feeds the forwarder, and the raw sender that
//! sends the same datagrams straight to every subscriber socket (the machine's ceiling).
//!
//! Both stamp each packet with the shared clock as they build it, so packets are made on
//! the fly rather than ahead of time. The publisher protects each packet just before it
//! sends it: at most one packet per input id, i.e. 1/N of the egress rate, at ~0.3 µs
//! (AEAD_AES_128_GCM) to ~1.1 µs (CM-80) each, far below the forwarder's per-copy cost.
//! The publisher's SRTP context lives for the whole configuration, so sequence numbers
//! keep increasing across steps and the forwarder's replay protection never trips.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::Relaxed};
use std::time::Duration;

use fanout_forwarder::srtp::SrtpContext;

use crate::clock;
use crate::net::{self, BATCH};
use crate::packet::{self, RAW_SSRC, TRACK_SSRC};

/// Which ids a step sends, at what rate, and which of them form the measured window.
#[derive(Debug, Clone, Copy)]
pub struct StepPlan {
    pub first_id: u64,
    pub count: u64,
    pub window_start: u64,
    pub window_end: u64,
    /// Ids per second (the input rate; each id becomes N egress datagrams).
    pub ids_per_second: f64,
}

/// What a sender did in one step.
#[derive(Debug, Default, Clone, Copy)]
pub struct SendReport {
    pub ids_sent: u64,
    pub datagrams_sent: u64,
    pub datagrams_failed: u64,
    pub syscalls: u64,
    /// Clock of the first and last window id's send.
    pub window_first_ns: Option<u64>,
    pub window_last_ns: Option<u64>,
}

impl SendReport {
    /// Ids per second achieved across the window, if it was sent.
    pub fn window_rate(&self, plan: &StepPlan) -> Option<f64> {
        let (a, b) = (self.window_first_ns?, self.window_last_ns?);
        let ids = plan.window_end - plan.window_start;
        if ids < 2 || b <= a {
            return None;
        }
        Some((ids - 1) as f64 * 1e9 / (b - a) as f64)
    }
}

/// A paced sender of one kind.
#[derive(Debug)]
pub enum Sender {
    /// Sends SRTP to the forwarder: every id once to each meeting, from one connected
    /// socket per meeting with that meeting's publisher key.
    Publisher {
        meetings: Vec<(UdpSocket, Box<SrtpContext>)>,
        payload_len: usize,
        bufs: Vec<Vec<u8>>,
    },
    /// Sends clear RTP of the forwarder's output size to every subscriber.
    Raw {
        socket: UdpSocket,
        dests: Vec<libc::sockaddr_in>,
        payload_len: usize,
        bufs: Vec<Vec<u8>>,
    },
}

fn buffers() -> Vec<Vec<u8>> {
    (0..BATCH)
        .map(|_| {
            let mut b = vec![0u8; net::RECV_BUF];
            packet::fill(&mut b);
            b
        })
        .collect()
}

impl Sender {
    /// A publisher per meeting: `meetings` holds each meeting's address and publisher
    /// context. Sockets are bound to `bind_ip`.
    pub fn publisher(
        bind_ip: Ipv4Addr,
        meetings: Vec<(SocketAddrV4, SrtpContext)>,
        payload_len: usize,
        buffer_bytes: usize,
    ) -> std::io::Result<Self> {
        let meetings = meetings
            .into_iter()
            .map(|(forwarder, context)| {
                let socket = net::udp_socket(SocketAddrV4::new(bind_ip, 0), buffer_bytes)?;
                socket.connect(forwarder)?;
                Ok((socket, Box::new(context)))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Sender::Publisher {
            meetings,
            payload_len,
            bufs: buffers(),
        })
    }

    /// `trailer` is the SRTP trailer length of the profile compared, so the raw datagrams
    /// have exactly the size of the forwarder's.
    pub fn raw(
        bind_ip: Ipv4Addr,
        dests: &[SocketAddrV4],
        payload_len: usize,
        trailer: usize,
        buffer_bytes: usize,
    ) -> std::io::Result<Self> {
        let socket = net::udp_socket(SocketAddrV4::new(bind_ip, 0), buffer_bytes)?;
        Ok(Sender::Raw {
            socket,
            dests: dests.iter().map(|a| net::sockaddr(*a)).collect(),
            payload_len: payload_len + trailer,
            bufs: buffers(),
        })
    }

    /// Sends `plan` paced at its rate; stops early when `stop` is set.
    pub fn run(&mut self, plan: &StepPlan, tid: &AtomicI32, stop: &AtomicBool) -> SendReport {
        fanout_forwarder::driver::os::precise_sleeps();
        tid.store(net::gettid(), Relaxed);
        let mut report = SendReport::default();
        let rate = plan.ids_per_second.max(1e-3);
        let start = clock::now_ns();
        let mut next = 0u64;
        while next < plan.count && !stop.load(Relaxed) {
            let elapsed = clock::now_ns().saturating_sub(start);
            // Id k is due k/rate seconds after the start.
            let due = ((elapsed as f64 * rate / 1e9) as u64 + 1).min(plan.count);
            if due > next {
                let upto = due.min(next + BATCH as u64);
                self.emit(
                    plan,
                    plan.first_id + next,
                    plan.first_id + upto,
                    &mut report,
                );
                next = upto;
            } else {
                let at = (next as f64 * 1e9 / rate) as u64;
                let wait = at.saturating_sub(elapsed).min(1_000_000);
                std::thread::sleep(Duration::from_nanos(wait));
            }
        }
        report.ids_sent = next;
        report
    }

    fn emit(&mut self, plan: &StepPlan, from: u64, to: u64, report: &mut SendReport) {
        let mark = |id: u64, report: &mut SendReport, now: u64| {
            if id == plan.window_start {
                report.window_first_ns = Some(now);
            }
            if id + 1 == plan.window_end {
                report.window_last_ns = Some(now);
            }
        };
        match self {
            Sender::Publisher {
                meetings,
                payload_len,
                bufs,
            } => {
                for (m, (socket, context)) in meetings.iter_mut().enumerate() {
                    let mut lens = [0usize; BATCH];
                    let mut n = 0;
                    for id in from..to {
                        let now = clock::now_ns();
                        if m == 0 {
                            mark(id, report, now);
                        }
                        let buf = &mut bufs[n];
                        let len = packet::write(buf, TRACK_SSRC, id as u32, now, *payload_len);
                        match context.protect_rtp(buf, len) {
                            Ok(len) => {
                                lens[n] = len;
                                n += 1;
                            }
                            Err(_) => report.datagrams_failed += 1,
                        }
                    }
                    let slices: Vec<&[u8]> = bufs[..n]
                        .iter()
                        .zip(&lens[..n])
                        .map(|(b, &l)| &b[..l])
                        .collect();
                    let (sent, failed, calls) = net::send_batch(socket.as_raw_fd(), &slices, &[]);
                    report.datagrams_sent += sent as u64;
                    report.datagrams_failed += failed as u64;
                    report.syscalls += calls as u64;
                }
            }
            Sender::Raw {
                socket,
                dests,
                payload_len,
                bufs,
            } => {
                let fd = socket.as_raw_fd();
                let mut msgs: Vec<(usize, usize)> = Vec::with_capacity(BATCH);
                let mut lens = [0usize; BATCH];
                let mut slot = 0;
                let flush = |msgs: &mut Vec<(usize, usize)>,
                             lens: &[usize; BATCH],
                             bufs: &[Vec<u8>],
                             report: &mut SendReport| {
                    if msgs.is_empty() {
                        return;
                    }
                    let slices: Vec<&[u8]> =
                        msgs.iter().map(|&(s, _)| &bufs[s][..lens[s]]).collect();
                    let to: Vec<libc::sockaddr_in> = msgs.iter().map(|&(_, d)| dests[d]).collect();
                    let (sent, failed, calls) = net::send_batch(fd, &slices, &to);
                    report.datagrams_sent += sent as u64;
                    report.datagrams_failed += failed as u64;
                    report.syscalls += calls as u64;
                    msgs.clear();
                };
                for id in from..to {
                    let now = clock::now_ns();
                    mark(id, report, now);
                    lens[slot] =
                        packet::write(&mut bufs[slot], RAW_SSRC, id as u32, now, *payload_len);
                    for d in 0..dests.len() {
                        msgs.push((slot, d));
                        if msgs.len() == BATCH {
                            flush(&mut msgs, &lens, bufs, report);
                        }
                    }
                    slot += 1;
                    if slot == BATCH {
                        // Every slot is referenced by at most the pending messages: send
                        // them before reusing the slots.
                        flush(&mut msgs, &lens, bufs, report);
                        slot = 0;
                    }
                }
                flush(&mut msgs, &lens, bufs, report);
            }
        }
    }
}
