//! What every driver shares: the command queue and its handle, the stop handle, the
//! driver's counters and their Prometheus rendering, progress lines and event logging.
//!
//! Drivers differ in how they wait (epoll, io_uring), so the wake-up is abstracted as an
//! [`exporter::Wake`](crate::exporter::Wake): a mio `Waker` for the mio driver, an eventfd
//! for the io_uring driver. Everything else is the same code.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::recorder::RecorderTap;
use crate::edge::PeerSync;
use crate::exporter::Wake;
use crate::sfu::{Event, Forwarder};

/// Commands that may wait in a driver's queue; more are refused with
/// [`CommandError::QueueFull`] (a stuck driver must not grow memory without bound).
pub const COMMAND_QUEUE_CAPACITY: usize = 1024;

/// A change to the core, run on the driver thread between batches.
pub type Command = Box<dyn FnOnce(&mut Forwarder) + Send>;

/// Why [`DriverHandle::send`] refused a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    #[error("the driver's command queue is full ({COMMAND_QUEUE_CAPACITY} commands)")]
    QueueFull,
}

/// The queue behind [`DriverHandle`]: `pending` lets the loop skip the lock when empty.
#[derive(Default)]
pub(crate) struct CommandQueue {
    pending: AtomicBool,
    commands: Mutex<VecDeque<Command>>,
}

impl CommandQueue {
    /// Run the queued commands, if any. One atomic load when there are none.
    pub(crate) fn run(&self, core: &mut Forwarder) {
        if !self.pending.load(Ordering::Acquire) {
            return;
        }
        let commands = {
            let mut queue = self.commands.lock().unwrap_or_else(PoisonError::into_inner);
            self.pending.store(false, Ordering::Release);
            std::mem::take(&mut *queue)
        };
        for command in commands {
            command(core);
        }
    }
}

/// Sends commands to a driver's core from other threads (a signal handler's thread, an
/// HTTP server). Commands run in the order sent, on the driver thread, between batches.
#[derive(Clone)]
pub struct DriverHandle {
    queue: Arc<CommandQueue>,
    wake: Arc<dyn Wake>,
}

impl std::fmt::Debug for DriverHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverHandle").finish_non_exhaustive()
    }
}

impl DriverHandle {
    pub(crate) fn new(queue: Arc<CommandQueue>, wake: Arc<dyn Wake>) -> Self {
        DriverHandle { queue, wake }
    }

    /// Queue `command` and wake the driver. A command sent before the driver runs runs
    /// when its loop starts.
    pub fn send(&self, command: Command) -> Result<(), CommandError> {
        let mut commands = self
            .queue
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if commands.len() >= COMMAND_QUEUE_CAPACITY {
            return Err(CommandError::QueueFull);
        }
        commands.push_back(command);
        self.queue.pending.store(true, Ordering::Release);
        drop(commands);
        self.wake.wake();
        Ok(())
    }
}

/// Stops a running driver from another thread or a signal handler's thread.
#[derive(Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    wake: Arc<dyn Wake>,
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopHandle")
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

impl StopHandle {
    pub(crate) fn new(stop: Arc<AtomicBool>, wake: Arc<dyn Wake>) -> Self {
        StopHandle { stop, wake }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.wake();
    }

    /// The flag, for `signal_hook::flag::register`; pair it with a wake-up of the driver.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }
}

/// Counters of the driver itself. The mio driver counts `recvmmsg`/`sendmmsg` calls as
/// system calls; the io_uring driver counts `io_uring_enter` calls that reaped datagrams
/// (receive) or submitted sends (send).
#[derive(Debug, Default, Clone, Copy)]
pub struct DriverStats {
    pub recv_syscalls: u64,
    pub send_syscalls: u64,
    pub datagrams_received: u64,
    pub datagrams_sent: u64,
    /// Datagrams larger than the receive buffer (the kernel truncated them).
    pub truncated: u64,
    /// Datagrams the kernel refused or that were dropped after the send buffer stayed full.
    pub send_failures: u64,
    /// io_uring only: multishot receives armed again after the kernel ended them (no
    /// provided buffer left, or an error).
    pub recv_rearms: u64,
    /// Events the [`EventSink`] had no room for.
    pub events_dropped: u64,
    /// Recording tap messages handed to the recorder, and those lost (the recorder was
    /// behind or absent).
    pub tap_sent: u64,
    pub tap_dropped: u64,
}

/// The driver's datagram counters as other threads see them (the control-plane client
/// reports packets per second from them). Published once per turn of the driver's loop:
/// two relaxed stores, never a lock on the packet path.
#[derive(Debug, Default)]
pub struct TrafficCounters {
    received: AtomicU64,
    sent: AtomicU64,
}

impl TrafficCounters {
    /// Datagrams received and sent since the driver started, as of its last turn.
    pub fn get(&self) -> (u64, u64) {
        (
            self.received.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
        )
    }

    fn publish(&self, stats: &DriverStats) {
        self.received
            .store(stats.datagrams_received, Ordering::Relaxed);
        self.sent.store(stats.datagrams_sent, Ordering::Relaxed);
    }
}

/// When to log the next progress line; also publishes the [`TrafficCounters`] every turn.
#[derive(Debug)]
pub(crate) struct Progress {
    interval: Option<Duration>,
    next: Option<Instant>,
    traffic: Arc<TrafficCounters>,
}

impl Progress {
    pub(crate) fn new(interval: Option<Duration>) -> Self {
        Progress {
            interval,
            next: None,
            traffic: Arc::default(),
        }
    }

    pub(crate) fn traffic(&self) -> Arc<TrafficCounters> {
        self.traffic.clone()
    }

    pub(crate) fn set_interval(&mut self, interval: Option<Duration>) {
        self.interval = interval.filter(|d| !d.is_zero());
        self.next = None;
    }

    /// Start the clock (at the start of `run`).
    pub(crate) fn start(&mut self, now: Instant) {
        self.next = self.interval.map(|i| now + i);
    }

    /// When the next line is due, to bound the driver's sleep.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.next
    }

    /// Log a progress line if one is due.
    pub(crate) fn tick(&mut self, now: Instant, stats: &DriverStats, core: &Forwarder) {
        self.traffic.publish(stats);
        if let (Some(due), Some(interval)) = (self.next, self.interval) {
            if now >= due {
                log_progress(stats, core);
                self.next = Some(now + interval);
            }
        }
    }
}

fn log_progress(stats: &DriverStats, core: &Forwarder) {
    let drops = core.total_drops();
    info!(
        received = stats.datagrams_received,
        sent = stats.datagrams_sent,
        dropped = drops.total(),
        send_failures = stats.send_failures,
        legs = core.leg_count(),
        subscriptions = core.subscription_count(),
        "progress"
    );
}

/// Where a driver hands the core events another thread acts on (the control-plane
/// client): a bounded queue the driver never waits on. Only [`Event::DominantSpeaker`] is
/// handed over; when the queue is full the event is dropped and counted
/// ([`DriverStats::events_dropped`]), since a stuck reader must not slow the packet path
/// or grow memory. Clones share the queue (one sink for every shard).
#[derive(Debug, Clone)]
pub struct EventSink {
    queue: SyncSender<Event>,
}

impl EventSink {
    /// A sink holding at most `capacity` events, and the receiving end.
    pub fn bounded(capacity: usize) -> (EventSink, Receiver<Event>) {
        let (queue, events) = mpsc::sync_channel(capacity);
        (EventSink { queue }, events)
    }

    /// Whether the sink wants `event` at all.
    fn wants(event: &Event) -> bool {
        matches!(event, Event::DominantSpeaker { .. })
    }

    /// Hand `event` over without waiting. `false` if it was dropped: the queue is full, or
    /// the reader is gone.
    fn offer(&self, event: Event) -> bool {
        match self.queue.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// Log every pending event of the core, and hand those the sink wants to it.
pub(crate) fn drain_events(
    core: &mut Forwarder,
    sink: Option<&EventSink>,
    peers: Option<&mut PeerSync>,
    recorder: Option<&mut RecorderTap>,
    stats: &mut DriverStats,
) {
    if let Some(recorder) = recorder {
        recorder.drain(core, stats);
    }
    while let Some(event) = core.poll_event() {
        log_event(&event);
        if let Some(sink) = sink {
            hand_over(sink, event, stats);
        }
    }
    // After every input: a leg that came, learned its address or left changes the edge's
    // allowlist now, not at the next timer.
    if let Some(peers) = peers {
        peers.sync(core);
    }
}

/// Give `event` to `sink` if it wants it, counting what it has no room for.
fn hand_over(sink: &EventSink, event: Event, stats: &mut DriverStats) {
    if EventSink::wants(&event) && !sink.offer(event) {
        stats.events_dropped += 1;
    }
}

pub(crate) fn log_event(event: &Event) {
    match event {
        Event::RemoteAddressLearned {
            meeting,
            participant,
            leg,
            kind,
            address,
            previous,
        } => {
            info!(%meeting, %participant, %leg, ?kind, %address, ?previous, "remote address learned")
        }
        Event::LegInactive {
            meeting,
            participant,
            leg,
        } => info!(%meeting, %participant, %leg, "leg inactive"),
        Event::DominantSpeaker {
            meeting,
            participant,
        } => info!(%meeting, participant = ?participant.as_ref().map(|p| &p.0), "dominant speaker"),
        Event::LegActive {
            meeting,
            participant,
            leg,
        } => info!(%meeting, %participant, %leg, "leg active again"),
        Event::ConsentLost {
            meeting,
            participant,
            leg,
            address,
        } => {
            warn!(%meeting, %participant, %leg, %address, "ICE consent lost: media to the leg stopped")
        }
    }
}

/// Render the core's metrics and the driver's counters, if a scraper is waiting.
pub(crate) fn serve_metrics(
    exchange: Option<&crate::exporter::MetricsExchange>,
    core: &Forwarder,
    stats: &DriverStats,
) {
    if let Some(exchange) = exchange {
        exchange.serve(|out| {
            core.write_metrics(out);
            write_driver_metrics(stats, out);
        });
    }
}

pub(crate) fn write_driver_metrics(stats: &DriverStats, out: &mut String) {
    use std::fmt::Write;
    for (name, help, value) in [
        (
            "fanout_driver_recv_syscalls_total",
            "Receive system calls that returned datagrams (recvmmsg, or io_uring_enter)",
            stats.recv_syscalls,
        ),
        (
            "fanout_driver_send_syscalls_total",
            "Send system calls (sendmmsg, or io_uring_enter submitting sends)",
            stats.send_syscalls,
        ),
        (
            "fanout_driver_datagrams_received_total",
            "Datagrams received from the kernel",
            stats.datagrams_received,
        ),
        (
            "fanout_driver_datagrams_sent_total",
            "Datagrams handed to the kernel",
            stats.datagrams_sent,
        ),
        (
            "fanout_driver_truncated_total",
            "Datagrams dropped because they exceeded the receive buffer",
            stats.truncated,
        ),
        (
            "fanout_driver_send_failures_total",
            "Datagrams the kernel refused or that found the send buffer full",
            stats.send_failures,
        ),
        (
            "fanout_driver_recv_rearms_total",
            "Multishot receives armed again after the kernel ended them (io_uring)",
            stats.recv_rearms,
        ),
        (
            "fanout_driver_events_dropped_total",
            "Core events (dominant speaker) dropped because the control client's queue was full",
            stats.events_dropped,
        ),
        (
            "fanout_driver_recording_sent_total",
            "Recording tap messages handed to the recorder's socket",
            stats.tap_sent,
        ),
        (
            "fanout_driver_recording_dropped_total",
            "Recording tap messages lost because the recorder was behind or unreachable (live media unaffected)",
            stats.tap_dropped,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
}

/// Checks every driver must pass, shared by the drivers' unit tests.
#[cfg(test)]
pub(crate) mod conformance {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use crate::driver::Driver;
    use crate::sfu::{Forwarder, ForwarderConfig};

    /// Commands sent from another thread run on the driver's thread, in order.
    pub(crate) fn commands_run_on_the_driver_thread_in_order<D: Driver + 'static>(mut driver: D) {
        let handle = driver.handle();
        let stop = driver.stop_handle();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let driver_thread = std::thread::spawn(move || {
            let mut core = Forwarder::new(ForwarderConfig::default(), Instant::now());
            driver.run(&mut core).unwrap();
            core
        });
        for i in 0..3 {
            let seen = seen.clone();
            handle
                .send(Box::new(move |core| {
                    core.add_meeting(format!("m{i}").as_str().into()).unwrap();
                    seen.lock().unwrap().push(i);
                }))
                .unwrap();
        }
        // The last command stops the loop, so every command before it has run.
        handle.send(Box::new(move |_| stop.stop())).unwrap();
        let mut core = driver_thread.join().unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![0, 1, 2]);
        assert!(core.add_meeting("m2".into()).is_err(), "m2 was added");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MeetingId, ParticipantId};

    fn speaker(meeting: &str, who: Option<&str>) -> Event {
        Event::DominantSpeaker {
            meeting: MeetingId(meeting.into()),
            participant: who.map(|p| ParticipantId(p.into())),
        }
    }

    #[test]
    fn the_sink_takes_speakers_only_and_drops_what_does_not_fit() {
        let (sink, events) = EventSink::bounded(2);
        let mut stats = DriverStats::default();
        let inactive = Event::LegInactive {
            meeting: MeetingId("m".into()),
            participant: ParticipantId("p".into()),
            leg: "srtp".into(),
        };
        hand_over(&sink, inactive, &mut stats);
        for who in ["a", "b", "c"] {
            hand_over(&sink, speaker("m", Some(who)), &mut stats);
        }
        assert_eq!(
            stats.events_dropped, 1,
            "the third speaker found the queue full"
        );
        assert_eq!(events.try_recv().unwrap(), speaker("m", Some("a")));
        assert_eq!(events.try_recv().unwrap(), speaker("m", Some("b")));
        assert!(
            events.try_recv().is_err(),
            "the leg event was not handed over"
        );
        drop(events);
        hand_over(&sink, speaker("m", None), &mut stats);
        assert_eq!(stats.events_dropped, 2, "nobody reads any more");
    }
}
