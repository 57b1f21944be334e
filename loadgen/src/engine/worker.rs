//! A worker thread's loop: readiness from `mio`, timers from a heap, commands from the
//! run.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{Context, Result};
use fanout_forwarder::driver::mio::RecvBatch;
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};

use super::participant::{Participant, ParticipantKey, Scratch, Work, DATAGRAM};
use super::{Clock, Command, EngineResults, ParticipantOutcome, Progress};
use crate::report::latency_histogram;
use crate::Micros;

/// The waker's token; participants use their slot index.
pub const WAKER: Token = Token(usize::MAX);

/// Datagrams read from a socket per `recvmmsg`. A participant's socket seldom holds more
/// than one or two (a keyframe, a retransmission burst): a small batch keeps the call's
/// set-up cheap, and a full one is simply read again.
const RECV_BATCH: usize = 8;

/// How often a worker publishes its windowed latency p99 and counters.
const PROGRESS_EVERY_US: Micros = 1_000_000;

/// A participant in its slot, and the generation that tells its timer entries from those
/// of a former occupant.
struct Slot {
    participant: Option<Participant>,
    generation: u32,
}

pub struct Worker {
    index: usize,
    poll: Poll,
    inbox: mpsc::Receiver<Command>,
    clock: Clock,
    progress: Arc<Progress>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    by_key: HashMap<ParticipantKey, usize>,
    /// (due, slot, generation); entries of removed participants or superseded by an
    /// earlier wake are skipped when they surface.
    timers: BinaryHeap<Reverse<(Micros, usize, u32)>>,
    latency: Histogram<u64>,
    window: Histogram<u64>,
    pool: Vec<Vec<u8>>,
    pending: Work,
    next_progress: Micros,
}

impl Worker {
    pub fn new(
        index: usize,
        poll: Poll,
        inbox: mpsc::Receiver<Command>,
        clock: Clock,
        progress: Arc<Progress>,
    ) -> Worker {
        Worker {
            index,
            poll,
            inbox,
            clock,
            progress,
            slots: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            timers: BinaryHeap::new(),
            latency: latency_histogram(),
            window: latency_histogram(),
            pool: Vec::new(),
            pending: Work::default(),
            next_progress: 0,
        }
    }

    pub fn run(mut self) -> Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut buf = Box::new([0u8; DATAGRAM]);
        let mut recv = RecvBatch::with_capacity(RECV_BATCH);
        loop {
            let now = self.clock.now();
            let timeout = self
                .timers
                .peek()
                .map(|Reverse((due, _, _))| Duration::from_micros(due.saturating_sub(now)));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("poll failed"),
            }
            let now = self.clock.now();
            for event in events.iter() {
                if event.token() == WAKER {
                    continue;
                }
                let slot = event.token().0;
                let Some(participant) = self
                    .slots
                    .get_mut(slot)
                    .and_then(|s| s.participant.as_mut())
                else {
                    continue;
                };
                let mut scratch = Scratch {
                    buf: &mut buf,
                    recv: &mut recv,
                    pool: &mut self.pool,
                    latency: &mut self.latency,
                    window: &mut self.window,
                };
                let work = participant.on_readable(now, &mut scratch);
                self.pending.add(work);
                self.reschedule(slot);
            }
            // Commands after readiness: a Finish sees every datagram already read.
            loop {
                match self.inbox.try_recv() {
                    Ok(Command::Finish(reply)) => {
                        let _ = reply.send(self.finish());
                        return Ok(());
                    }
                    Ok(command) => self.command(command)?,
                    Err(mpsc::TryRecvError::Empty) => break,
                    // The engine is gone: nobody wants the results.
                    Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
                }
            }
            self.fire_timers(&mut buf, &mut recv);
            self.publish_progress();
        }
    }

    fn fire_timers(&mut self, buf: &mut Box<[u8; DATAGRAM]>, recv: &mut RecvBatch) {
        let now = self.clock.now();
        while let Some(&Reverse((due, slot, generation))) = self.timers.peek() {
            if due > now {
                break;
            }
            self.timers.pop();
            let Some(entry) = self.slots.get_mut(slot) else {
                continue;
            };
            if entry.generation != generation {
                continue;
            }
            let Some(participant) = entry.participant.as_mut() else {
                continue;
            };
            if participant.scheduled != due {
                continue;
            }
            let mut scratch = Scratch {
                buf,
                recv,
                pool: &mut self.pool,
                latency: &mut self.latency,
                window: &mut self.window,
            };
            let work = participant.on_timer(now, &mut scratch);
            participant.scheduled = Micros::MAX;
            self.pending.add(work);
            self.reschedule(slot);
        }
    }

    /// Make sure the heap holds an entry at the participant's next wake. Only an earlier
    /// wake pushes a new entry; a later one is found when the earlier entry fires.
    fn reschedule(&mut self, slot: usize) {
        let entry = &mut self.slots[slot];
        let Some(participant) = entry.participant.as_mut() else {
            return;
        };
        if let Some(wake) = participant.next_wake() {
            if wake < participant.scheduled {
                participant.scheduled = wake;
                self.timers.push(Reverse((wake, slot, entry.generation)));
            }
        }
    }

    fn command(&mut self, command: Command) -> Result<()> {
        let now = self.clock.now();
        match command {
            Command::Add(setup, mut socket) => {
                let slot = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(Slot {
                        participant: None,
                        generation: 0,
                    });
                    self.slots.len() - 1
                });
                if let Err(e) =
                    self.poll
                        .registry()
                        .register(&mut socket, Token(slot), Interest::READABLE)
                {
                    // The participant goes without media (the report counts it); the
                    // worker and everyone else on it go on.
                    tracing::warn!(participant = setup.key.0, "cannot register its socket: {e}");
                    self.free.push(slot);
                    return Ok(());
                }
                let key = setup.key;
                let mut participant = Participant::new(*setup, socket, now);
                participant.scheduled = Micros::MAX;
                self.slots[slot].participant = Some(participant);
                if let Some(previous) = self.by_key.insert(key, slot) {
                    // The same key twice: the run rejoined without removing; keep the new one.
                    self.vacate(previous, now);
                }
                self.progress.participants.fetch_add(1, Ordering::Relaxed);
                self.reschedule(slot);
            }
            Command::Remove(key, reply) => {
                let outcome = self
                    .by_key
                    .remove(&key)
                    .and_then(|slot| self.vacate(slot, now));
                let _ = reply.send(outcome);
            }
            Command::Move(key, forwarder) => {
                if let Some(&slot) = self.by_key.get(&key) {
                    if let Some(participant) = self.slots[slot].participant.as_mut() {
                        participant.move_to(forwarder, now);
                    }
                    self.reschedule(slot);
                }
            }
            Command::StopPublishing => {
                for slot in 0..self.slots.len() {
                    if let Some(participant) = self.slots[slot].participant.as_mut() {
                        participant.stop_publishing();
                    }
                }
            }
            Command::ResetLatency => self.latency.reset(),
            Command::Finish(_) => unreachable!("handled by the loop"),
        }
        Ok(())
    }

    /// Empty a slot: deregister, settle, and recycle it under a new generation.
    fn vacate(&mut self, slot: usize, now: Micros) -> Option<ParticipantOutcome> {
        let entry = &mut self.slots[slot];
        let mut participant = entry.participant.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        let _ = self.poll.registry().deregister(participant.socket_mut());
        self.free.push(slot);
        self.progress.participants.fetch_sub(1, Ordering::Relaxed);
        Some(participant.finish(now))
    }

    fn finish(&mut self) -> EngineResults {
        let now = self.clock.now();
        let slots: Vec<usize> = self.by_key.drain().map(|(_, slot)| slot).collect();
        let participants = slots
            .into_iter()
            .filter_map(|slot| self.vacate(slot, now))
            .collect();
        self.publish_progress();
        EngineResults {
            participants,
            latency: std::mem::replace(&mut self.latency, latency_histogram()),
        }
    }

    fn publish_progress(&mut self) {
        let work = std::mem::take(&mut self.pending);
        self.progress
            .packets_out
            .fetch_add(work.sent, Ordering::Relaxed);
        self.progress
            .packets_in
            .fetch_add(work.received, Ordering::Relaxed);
        self.progress
            .rejected
            .fetch_add(work.rejected, Ordering::Relaxed);
        let now = self.clock.now();
        if now >= self.next_progress {
            self.next_progress = now + PROGRESS_EVERY_US;
            let p99 = if self.window.is_empty() {
                0
            } else {
                self.window.value_at_quantile(0.99)
            };
            self.progress.window_p99_us[self.index].store(p99, Ordering::Relaxed);
            self.window.reset();
            let (mut expected, mut lost) = (0, 0);
            for participant in self.slots.iter().filter_map(|s| s.participant.as_ref()) {
                let stats = participant.receiver_stats();
                expected += stats.expected;
                lost += stats.lost_before_rtx;
            }
            self.progress.video_expected[self.index].store(expected, Ordering::Relaxed);
            self.progress.video_lost[self.index].store(lost, Ordering::Relaxed);
        }
    }
}

impl Work {
    fn add(&mut self, other: Work) {
        self.sent += other.sent;
        self.received += other.received;
        self.rejected += other.rejected;
        self.replayed += other.replayed;
    }
}
