//! A network emulator for scenario tests: a one-way link with random loss, a fixed delay
//! and uniform jitter, on the virtual clock, seeded so every run is the same.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Impairments of one direction of a path.
#[derive(Debug, Clone, Copy)]
pub struct Impairments {
    /// Probability that a datagram is lost, 0.0 to 1.0.
    pub loss: f64,
    pub delay: Duration,
    /// Each datagram is delayed by an extra uniform amount in 0..jitter (so it may reorder).
    pub jitter: Duration,
}

/// One direction of a path: datagrams go in with `send` and come out, when due, from
/// `receive`.
pub struct Link {
    impairments: Impairments,
    rng: StdRng,
    /// Datagrams in flight by arrival time; the counter keeps equal times in send order.
    in_flight: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>,
    sent: u64,
    pub lost: u64,
}

impl Link {
    pub fn new(impairments: Impairments, seed: u64) -> Self {
        Link {
            impairments,
            rng: StdRng::seed_from_u64(seed),
            in_flight: BinaryHeap::new(),
            sent: 0,
            lost: 0,
        }
    }

    pub fn send(&mut self, now: Instant, datagram: Vec<u8>) {
        self.sent += 1;
        if self.rng.gen_bool(self.impairments.loss) {
            self.lost += 1;
            return;
        }
        let jitter = self.impairments.jitter.as_secs_f64() * self.rng.gen::<f64>();
        let at = now + self.impairments.delay + Duration::from_secs_f64(jitter);
        self.in_flight.push(Reverse((at, self.sent, datagram)));
    }

    /// The next datagram due by `now`, if any.
    pub fn receive(&mut self, now: Instant) -> Option<Vec<u8>> {
        match self.in_flight.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                self.in_flight.pop().map(|Reverse((_, _, d))| d)
            }
            _ => None,
        }
    }

    /// When the next datagram arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.peek().map(|Reverse((at, _, _))| *at)
    }
}
