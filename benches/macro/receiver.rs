//! The subscribers: N UDP sockets on 127.0.0.1 read by receiver threads with epoll and
//! `recvmmsg`, counting packets per subscriber and sampling the one-way latency.

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use fanout_forwarder::srtp::{MasterKey, SrtpContext};
use hdrhistogram::Histogram;

use crate::clock;
use crate::net::{self, Epoll, RecvBatch};
use crate::packet::{self, RAW_SSRC};
use crate::topology::Topology;

/// Counters of one subscriber for the current step.
#[derive(Debug, Default)]
pub struct SubscriberCounters {
    /// Packets of the step (id at or above the step's first id).
    pub step: AtomicU64,
    /// Packets whose id is in the measurement window.
    pub window: AtomicU64,
}

/// What the receivers count in the current step; set by the coordinator between steps.
#[derive(Debug, Default)]
pub struct StepIds {
    pub first: AtomicU64,
    pub window_start: AtomicU64,
    pub window_end: AtomicU64,
}

/// Everything the receiver threads share with the coordinator.
#[derive(Debug)]
pub struct Shared {
    pub counters: Vec<SubscriberCounters>,
    pub ids: StepIds,
    /// One-way latency of the sampled window packets, in nanoseconds.
    pub latency: Mutex<Histogram<u64>>,
    /// Sampled SRTP packets that failed to unprotect (wrong key, corrupted, replayed).
    pub auth_failures: AtomicU64,
    /// Sampled packets that unprotected and carried a sane timestamp.
    pub verified: AtomicU64,
    /// RTCP datagrams the forwarder sent the subscribers (ignored otherwise).
    pub rtcp: AtomicU64,
    /// Every datagram received, of any step: the drain waits until it stops moving.
    pub all: AtomicU64,
    /// Kernel thread ids of the receiver threads, for their CPU time.
    pub tids: Vec<AtomicI32>,
    stop: AtomicBool,
}

impl Shared {
    pub fn reset_step(&self, first: u64, window_start: u64, window_end: u64) -> Result<()> {
        for c in &self.counters {
            c.step.store(0, Relaxed);
            c.window.store(0, Relaxed);
        }
        self.ids.window_start.store(window_start, Relaxed);
        self.ids.window_end.store(window_end, Relaxed);
        // Written last: a receiver that sees the new first id also sees the window.
        self.ids
            .first
            .store(first, std::sync::atomic::Ordering::Release);
        self.latency
            .lock()
            .map_err(|_| anyhow::anyhow!("a receiver thread panicked"))?
            .reset();
        Ok(())
    }

    pub fn window_counts(&self) -> Vec<u64> {
        self.counters
            .iter()
            .map(|c| c.window.load(Relaxed))
            .collect()
    }
}

/// The subscriber sockets and the threads reading them; stops and joins on drop.
#[derive(Debug)]
pub struct Receivers {
    pub shared: Arc<Shared>,
    pub addrs: Vec<SocketAddrV4>,
    threads: Vec<JoinHandle<()>>,
}

impl Receivers {
    /// Binds one socket per key (subscriber) on `bind_ip` (inside `topology`'s peer
    /// namespace) and starts `threads` readers,
    /// each owning an equal share of the sockets. `sample_every`: decrypt and time one
    /// packet in that many per subscriber.
    pub fn start(
        topology: &Topology,
        keys: Vec<MasterKey>,
        threads: usize,
        buffer_bytes: usize,
        sample_every: u64,
    ) -> Result<Self> {
        let n = keys.len();
        let (sockets, addrs) = topology.in_peer_namespace(|| {
            let mut sockets = Vec::with_capacity(n);
            let mut addrs = Vec::with_capacity(n);
            for i in 0..n {
                let s = net::udp_socket(SocketAddrV4::new(topology.peer_ip, 0), buffer_bytes)
                    .with_context(|| format!("cannot bind subscriber socket {i}"))?;
                match s.local_addr()? {
                    std::net::SocketAddr::V4(a) => addrs.push(a),
                    other => anyhow::bail!("unexpected local address {other}"),
                }
                sockets.push(s);
            }
            Ok((sockets, addrs))
        })?;
        let threads = threads.clamp(1, n.max(1));
        let shared = Arc::new(Shared {
            counters: (0..n).map(|_| SubscriberCounters::default()).collect(),
            ids: StepIds::default(),
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000_000, 3)
                    .context("cannot create the latency histogram")?,
            ),
            auth_failures: AtomicU64::new(0),
            verified: AtomicU64::new(0),
            rtcp: AtomicU64::new(0),
            all: AtomicU64::new(0),
            tids: (0..threads).map(|_| AtomicI32::new(0)).collect(),
            stop: AtomicBool::new(false),
        });
        // Deal subscribers round-robin to the threads.
        let mut shares: Vec<Vec<Subscriber>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, (socket, key)) in sockets.into_iter().zip(keys).enumerate() {
            shares[i % threads].push(Subscriber {
                index: i,
                socket,
                context: SrtpContext::new(&key),
            });
        }
        let mut handles = Vec::with_capacity(threads);
        for (t, share) in shares.into_iter().enumerate() {
            let shared = shared.clone();
            let epoll = Epoll::new().context("epoll_create1")?;
            for (k, s) in share.iter().enumerate() {
                epoll.add(s.socket.as_raw_fd(), k as u64)?;
            }
            handles.push(
                std::thread::Builder::new()
                    .name(format!("receiver-{t}"))
                    .spawn(move || receive_loop(t, epoll, share, &shared, sample_every))
                    .context("cannot start a receiver thread")?,
            );
        }
        Ok(Receivers {
            shared,
            addrs,
            threads: handles,
        })
    }
}

impl Drop for Receivers {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct Subscriber {
    index: usize,
    socket: UdpSocket,
    context: SrtpContext,
}

fn receive_loop(
    thread: usize,
    epoll: Epoll,
    mut subs: Vec<Subscriber>,
    shared: &Shared,
    sample_every: u64,
) {
    shared.tids[thread].store(net::gettid(), Relaxed);
    let mut batch = RecvBatch::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 512];
    let sample_every = sample_every.max(1);
    while !shared.stop.load(Relaxed) {
        let ready = epoll.wait(&mut events, 20);
        let first = shared.ids.first.load(std::sync::atomic::Ordering::Acquire);
        let window_start = shared.ids.window_start.load(Relaxed);
        let window_end = shared.ids.window_end.load(Relaxed);
        for event in &events[..ready] {
            let Some(sub) = subs.get_mut(event.u64 as usize) else {
                continue;
            };
            let counters = &shared.counters[sub.index];
            let fd = sub.socket.as_raw_fd();
            loop {
                let got = batch.recv(fd);
                if got == 0 {
                    break;
                }
                let now = clock::now_ns();
                shared.all.fetch_add(got as u64, Relaxed);
                let (mut step, mut window) = (0, 0);
                for i in 0..got {
                    let d = batch.datagram(i);
                    let Some(h) = packet::parse(d) else {
                        continue;
                    };
                    if h.rtcp {
                        shared.rtcp.fetch_add(1, Relaxed);
                        continue;
                    }
                    let id = u64::from(h.id);
                    if id < first {
                        continue; // a late packet of an earlier step
                    }
                    step += 1;
                    let in_window = id >= window_start && id < window_end;
                    if in_window {
                        window += 1;
                    }
                    if !(id + sub.index as u64).is_multiple_of(sample_every) {
                        continue;
                    }
                    let sent = if h.ssrc == RAW_SSRC {
                        packet::read_send_time(&d[h.header_len..])
                    } else {
                        match sub.context.unprotect_rtp(d) {
                            Ok(len) if len >= h.header_len => {
                                packet::read_send_time(&d[h.header_len..len])
                            }
                            _ => {
                                shared.auth_failures.fetch_add(1, Relaxed);
                                None
                            }
                        }
                    };
                    if let Some(sent) = sent {
                        shared.verified.fetch_add(1, Relaxed);
                        if in_window && now >= sent {
                            if let Ok(mut hist) = shared.latency.lock() {
                                hist.saturating_record(now - sent);
                            }
                        }
                    }
                }
                counters.step.fetch_add(step, Relaxed);
                counters.window.fetch_add(window, Relaxed);
                if got < net::BATCH {
                    break;
                }
            }
        }
    }
}
