//! The I/O engine: simulated participants on real UDP sockets, many per worker thread.
//!
//! Each participant is the sans-IO [`media`](crate::media) pair (a [`Publisher`] if it
//! publishes, always a [`Receiver`]) behind two SRTP contexts and, where the scenario
//! impairs its region, two [`Impairment`] queues (up and down). The engine gives them
//! time, sockets and a timer; it decides nothing about media.
//!
//! One UDP socket per participant: the forwarder tells legs apart by source address (it
//! learns a leg's address from the first packet that authenticates), so participants
//! cannot share a socket. The descriptor limit is raised to match
//! ([`fanout_forwarder::driver::os::raise_nofile`]). A worker thread owns its sockets,
//! registered edge-triggered in one `mio::Poll`, and a timer heap; commands (add, remove,
//! move, finish) reach it over a channel and a `mio::Waker`. A readable socket is read with
//! one `recvmmsg` (the forwarder's [`RecvBatch`]): a batch that comes back short proves the
//! socket empty, where reading until `EWOULDBLOCK` cost a second system call per datagram.
//!
//! [`RecvBatch`]: fanout_forwarder::driver::mio::RecvBatch
//!
//! [`Publisher`]: crate::media::Publisher
//! [`Receiver`]: crate::media::Receiver
//! [`Impairment`]: crate::impair::Impairment

mod participant;
mod worker;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use fanout_forwarder::srtp::MasterKey;
use hdrhistogram::Histogram;

use crate::impair::ImpairmentSpec;
use crate::media::{PublisherConfig, ReceiverConfig};
use crate::stats::{PublisherStats, ReceiverStats};
use crate::Micros;

pub use participant::ParticipantKey;

/// The run's time base: every [`Micros`] is measured from one `Instant`, shared by all
/// threads, so a probe stamped on one worker is read on another.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    pub fn now(&self) -> Micros {
        self.epoch.elapsed().as_micros() as Micros
    }

    /// The epoch in CLOCK_MONOTONIC nanoseconds (the clock `Instant` reads on Linux): the
    /// same in every process of this machine, so that a run spread over processes shares
    /// one time base (a probe stamped by a publisher in one process is read by receivers
    /// in the others).
    pub fn monotonic_epoch_ns(&self) -> u64 {
        monotonic_ns().saturating_sub(self.epoch.elapsed().as_nanos() as u64)
    }

    /// The clock whose epoch another process of this machine gave as
    /// [`monotonic_epoch_ns`](Clock::monotonic_epoch_ns).
    pub fn from_monotonic_epoch_ns(epoch_ns: u64) -> Clock {
        let now = Instant::now();
        let ago = std::time::Duration::from_nanos(monotonic_ns().saturating_sub(epoch_ns));
        Clock {
            epoch: now.checked_sub(ago).unwrap_or(now),
        }
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the kernel to fill; CLOCK_MONOTONIC always
    // exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Everything a worker needs to run one participant.
#[derive(Debug)]
pub struct ParticipantSetup {
    pub key: ParticipantKey,
    /// Where its media goes (the forwarder's media address; for the loopback self-test,
    /// the other participant's socket).
    pub forwarder: SocketAddr,
    /// The local address to bind (port 0).
    pub bind: IpAddr,
    /// What it protects with, and what packets to it are protected with.
    pub send_key: MasterKey,
    pub receive_key: MasterKey,
    pub publisher: Option<PublisherConfig>,
    pub receiver: ReceiverConfig,
    /// The network between it and the forwarder, each way.
    pub up: ImpairmentSpec,
    pub down: ImpairmentSpec,
    pub seed: u64,
}

/// What one participant measured from its start to its removal.
#[derive(Debug, Clone, Copy)]
pub struct ParticipantOutcome {
    pub key: ParticipantKey,
    pub receiver: ReceiverStats,
    pub publisher: Option<PublisherStats>,
    /// How long it was in the engine.
    pub connected_us: Micros,
    /// Datagrams that failed SRTP (authentication, replay) or came from another address
    /// than its forwarder's.
    pub rejected: u64,
}

/// What the engine measured when it finished.
#[derive(Debug)]
pub struct EngineResults {
    pub participants: Vec<ParticipantOutcome>,
    /// One-way media latency of every packet delivered, in microseconds.
    pub latency: Histogram<u64>,
}

/// Live counters for the progress line, shared with the workers.
#[derive(Debug, Default)]
pub struct Progress {
    pub packets_out: AtomicU64,
    pub packets_in: AtomicU64,
    pub rejected: AtomicU64,
    pub participants: AtomicU64,
    /// Each worker's latency p99 over its last second, in µs; the line shows the largest.
    pub window_p99_us: Vec<AtomicU64>,
    /// Each worker's video packets expected and lost before retransmission so far, by its
    /// current participants (refreshed every second).
    pub video_expected: Vec<AtomicU64>,
    pub video_lost: Vec<AtomicU64>,
}

impl Progress {
    pub fn window_p99_us(&self) -> u64 {
        self.window_p99_us
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// Video loss before retransmission so far, as a fraction.
    pub fn loss(&self) -> f64 {
        let sum = |v: &[AtomicU64]| v.iter().map(|a| a.load(Ordering::Relaxed)).sum::<u64>();
        let expected = sum(&self.video_expected);
        if expected == 0 {
            0.0
        } else {
            sum(&self.video_lost) as f64 / expected as f64
        }
    }
}

enum Command {
    Add(Box<ParticipantSetup>, mio::net::UdpSocket),
    Remove(
        ParticipantKey,
        tokio::sync::oneshot::Sender<Option<ParticipantOutcome>>,
    ),
    Move(ParticipantKey, SocketAddr),
    StopPublishing,
    ResetLatency,
    Finish(tokio::sync::oneshot::Sender<EngineResults>),
}

struct WorkerHandle {
    commands: mpsc::Sender<Command>,
    waker: Arc<mio::Waker>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl WorkerHandle {
    fn send(&self, command: Command) -> Result<()> {
        self.commands
            .send(command)
            .map_err(|_| anyhow!("a load-generator worker thread has stopped"))?;
        self.waker.wake().context("cannot wake a worker thread")
    }
}

/// The running engine: a handle on its worker threads. Participants go to the worker
/// their key hashes to.
pub struct Engine {
    clock: Clock,
    workers: Vec<WorkerHandle>,
    progress: Arc<Progress>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Start `threads` worker threads (at least one).
    pub fn start(threads: usize, clock: Clock) -> Result<Engine> {
        let threads = threads.max(1);
        let progress = Arc::new(Progress {
            window_p99_us: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            video_expected: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            video_lost: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            ..Progress::default()
        });
        let mut workers = Vec::with_capacity(threads);
        for index in 0..threads {
            let poll = mio::Poll::new().context("cannot create a poller")?;
            let waker = Arc::new(
                mio::Waker::new(poll.registry(), worker::WAKER).context("cannot create a waker")?,
            );
            let (commands, inbox) = mpsc::channel();
            let progress = Arc::clone(&progress);
            let thread = std::thread::Builder::new()
                .name(format!("loadgen-{index}"))
                .spawn(move || {
                    fanout_forwarder::driver::os::precise_sleeps();
                    if let Err(e) = worker::Worker::new(index, poll, inbox, clock, progress).run() {
                        tracing::error!(worker = index, "load-generator worker failed: {e:#}");
                    }
                })
                .context("cannot spawn a worker thread")?;
            workers.push(WorkerHandle {
                commands,
                waker,
                thread: std::sync::Mutex::new(Some(thread)),
            });
        }
        Ok(Engine {
            clock,
            workers,
            progress,
        })
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    fn worker(&self, key: ParticipantKey) -> &WorkerHandle {
        &self.workers[(key.0 as usize) % self.workers.len()]
    }

    /// Add a participant on a socket of its own; returns the socket's local address.
    pub fn add(&self, setup: ParticipantSetup) -> Result<SocketAddr> {
        let socket = bind_socket(SocketAddr::new(setup.bind, 0))?;
        self.add_on(setup, socket)
    }

    /// Add a participant on a socket bound by [`bind_socket`] (for peers that must know
    /// each other's address before either starts).
    pub fn add_on(
        &self,
        setup: ParticipantSetup,
        socket: mio::net::UdpSocket,
    ) -> Result<SocketAddr> {
        let local = socket.local_addr()?;
        self.worker(setup.key)
            .send(Command::Add(Box::new(setup), socket))?;
        Ok(local)
    }

    /// Remove a participant (it leaves, or its run ends) and get what it measured.
    pub async fn remove(&self, key: ParticipantKey) -> Result<Option<ParticipantOutcome>> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        self.worker(key).send(Command::Remove(key, reply))?;
        outcome
            .await
            .map_err(|_| anyhow!("a load-generator worker thread has stopped"))
    }

    /// Point a participant's media at another forwarder (the control plane moved it).
    pub fn move_to(&self, key: ParticipantKey, forwarder: SocketAddr) -> Result<()> {
        self.worker(key).send(Command::Move(key, forwarder))
    }

    /// Forget the latency measured so far: the run's steady state begins (the joins'
    /// keyframe storms are measured by their own figures, not the latency's).
    pub fn reset_latency(&self) -> Result<()> {
        for worker in &self.workers {
            worker.send(Command::ResetLatency)?;
        }
        Ok(())
    }

    /// Silence every publisher (they still answer NACKs): the end of a run, so that what
    /// is still in flight can be repaired before the receivers are read.
    pub fn stop_publishing(&self) -> Result<()> {
        for worker in &self.workers {
            worker.send(Command::StopPublishing)?;
        }
        Ok(())
    }

    /// Stop every participant and the workers; returns everything measured. Commands
    /// after this fail.
    pub async fn finish(&self) -> Result<EngineResults> {
        let mut replies = Vec::with_capacity(self.workers.len());
        for worker in &self.workers {
            let (reply, results) = tokio::sync::oneshot::channel();
            worker.send(Command::Finish(reply))?;
            replies.push(results);
        }
        let mut all = EngineResults {
            participants: Vec::new(),
            latency: crate::report::latency_histogram(),
        };
        for results in replies {
            let results = results
                .await
                .map_err(|_| anyhow!("a load-generator worker thread has stopped"))?;
            all.participants.extend(results.participants);
            all.latency
                .add(&results.latency)
                .context("cannot merge latency histograms")?;
        }
        for worker in &self.workers {
            let thread = worker
                .thread
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(thread) = thread {
                // It has replied: it is returning.
                let _ = thread.join();
            }
        }
        Ok(all)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // A run that failed midway still stops its threads (dropping the channel ends them).
        for worker in &self.workers {
            let (reply, _) = tokio::sync::oneshot::channel();
            let _ = worker.send(Command::Finish(reply));
        }
    }
}

/// A non-blocking UDP socket with buffers sized for bursts (a keyframe, a NACK storm).
pub fn bind_socket(addr: SocketAddr) -> Result<mio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(|e| {
            if e.raw_os_error() == Some(libc::EMFILE) {
                anyhow!(
                    "out of file descriptors (one socket per participant): {e}; raise `ulimit -n`"
                )
            } else {
                anyhow!("cannot create a UDP socket: {e}")
            }
        })?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(256 * 1024);
    let _ = socket.set_send_buffer_size(256 * 1024);
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot bind a UDP socket to {addr}"))?;
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}
