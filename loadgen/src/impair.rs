//! A network path emulated in user space: loss, delay, jitter and reordering, for the
//! machines this project runs on, which have no netem (see PLATFORM.md).
//!
//! [`Impairment`] is a sans-IO queue like the rest of the participant: `push` what the
//! sender sent at `now`, `pop_ready(now)` what the path delivers by then, and wake at
//! `poll_timeout`. Random draws come from a seeded generator, so a run replays exactly.
//!
//! It follows netem's model:
//!
//! * **loss**: each item is dropped with probability `loss`, independently.
//! * **delay and jitter**: each item is held `delay ± jitter` (uniform, never below
//!   zero). Jitter alone does not reorder: an item is never released before the one pushed
//!   before it (release = max(previous release, now + delay + sample)), as netem behaves
//!   with a rate or a FIFO child qdisc, and as a real path mostly does.
//! * **reorder**: with probability `reorder` an item skips the delay and is released at
//!   once, overtaking the items held (netem's `reorder`). So reordering needs a delay.
//! * The queue is bounded ([`DEFAULT_QUEUE_LIMIT`]); items past it are dropped and counted,
//!   like a full router buffer.
//!
//! A zero spec is a passthrough: an item pushed at `now` is ready at `now`.

use std::collections::VecDeque;
use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::Micros;

/// Items held at most before new ones are dropped: ten seconds of a 1,000 packet/s
/// participant.
pub const DEFAULT_QUEUE_LIMIT: usize = 10_000;

/// What the path does to what crosses it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ImpairmentSpec {
    /// Probability (0..=1) that an item is dropped.
    pub loss: f64,
    /// Fixed one-way delay.
    pub delay_us: Micros,
    /// Uniform variation around the delay (± this).
    pub jitter_us: Micros,
    /// Probability (0..=1) that an item skips the delay and overtakes the ones held.
    pub reorder: f64,
}

impl ImpairmentSpec {
    /// Nothing to emulate: callers can skip the queue altogether.
    pub fn is_passthrough(&self) -> bool {
        // NaN probabilities count as zero, as `Impairment::new` clamps them.
        let none = |p: f64| p.is_nan() || p <= 0.0;
        none(self.loss) && self.delay_us == 0 && self.jitter_us == 0 && none(self.reorder)
    }
}

/// What an [`Impairment`] did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImpairmentStats {
    pub pushed: u64,
    /// Dropped by the loss draw.
    pub lost: u64,
    /// Dropped because the queue was full.
    pub overflowed: u64,
    /// Sent ahead of the delay.
    pub reordered: u64,
    pub delivered: u64,
}

#[derive(Debug)]
struct Held<T> {
    release_at: Micros,
    item: T,
}

/// An emulated one-way path. See the module docs.
pub struct Impairment<T> {
    spec: ImpairmentSpec,
    rng: StdRng,
    /// Delayed items; release times never decrease along it.
    delayed: VecDeque<Held<T>>,
    /// Items that skipped the delay; release times never decrease along it either
    /// (they are pushed with `now`, and time does not go back).
    express: VecDeque<Held<T>>,
    last_release: Micros,
    limit: usize,
    stats: ImpairmentStats,
}

impl<T> fmt::Debug for Impairment<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Impairment")
            .field("spec", &self.spec)
            .field("held", &(self.delayed.len() + self.express.len()))
            .field("stats", &self.stats)
            .finish()
    }
}

/// A probability usable by `gen_bool`-style draws: NaN and out-of-range values clamp.
fn probability(p: f64) -> f64 {
    if p.is_nan() {
        0.0
    } else {
        p.clamp(0.0, 1.0)
    }
}

impl<T> Impairment<T> {
    pub fn new(spec: ImpairmentSpec, seed: u64) -> Impairment<T> {
        Impairment::with_limit(spec, seed, DEFAULT_QUEUE_LIMIT)
    }

    /// Like [`Impairment::new`] with a queue of at most `limit` items (at least 1).
    pub fn with_limit(spec: ImpairmentSpec, seed: u64, limit: usize) -> Impairment<T> {
        let spec = ImpairmentSpec {
            loss: probability(spec.loss),
            reorder: probability(spec.reorder),
            ..spec
        };
        Impairment {
            spec,
            rng: StdRng::seed_from_u64(seed),
            delayed: VecDeque::new(),
            express: VecDeque::new(),
            last_release: 0,
            limit: limit.max(1),
            stats: ImpairmentStats::default(),
        }
    }

    pub fn spec(&self) -> ImpairmentSpec {
        self.spec
    }

    pub fn stats(&self) -> ImpairmentStats {
        self.stats
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.delayed.len() + self.express.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sender sent `item` at `now`: drop it, or hold it until its release time.
    pub fn push(&mut self, now: Micros, item: T) {
        self.stats.pushed += 1;
        if self.spec.loss > 0.0 && self.rng.gen::<f64>() < self.spec.loss {
            self.stats.lost += 1;
            return;
        }
        if self.len() >= self.limit {
            self.stats.overflowed += 1;
            return;
        }
        if self.spec.reorder > 0.0 && self.rng.gen::<f64>() < self.spec.reorder {
            self.stats.reordered += 1;
            self.express.push_back(Held {
                release_at: now,
                item,
            });
            return;
        }
        let delay = if self.spec.jitter_us > 0 {
            let jitter = self.spec.jitter_us.min(i64::MAX as u64 / 4) as i64;
            let sample = self.rng.gen_range(-jitter..=jitter);
            (self.spec.delay_us.min(i64::MAX as u64 / 4) as i64 + sample).max(0) as Micros
        } else {
            self.spec.delay_us
        };
        let release_at = now.saturating_add(delay).max(self.last_release);
        self.last_release = release_at;
        self.delayed.push_back(Held { release_at, item });
    }

    /// When the next held item is due.
    pub fn poll_timeout(&self) -> Option<Micros> {
        let delayed = self.delayed.front().map(|h| h.release_at);
        let express = self.express.front().map(|h| h.release_at);
        delayed.into_iter().chain(express).min()
    }

    /// The next item due by `now`, earliest first.
    pub fn pop_ready(&mut self, now: Micros) -> Option<T> {
        let delayed = self.delayed.front().map(|h| h.release_at);
        let express = self.express.front().map(|h| h.release_at);
        let queue = match (delayed, express) {
            // Ties go to the express item: it was meant to overtake.
            (Some(d), Some(e)) if e <= d => &mut self.express,
            (Some(_), _) => &mut self.delayed,
            (None, Some(_)) => &mut self.express,
            (None, None) => return None,
        };
        if queue.front()?.release_at > now {
            return None;
        }
        self.stats.delivered += 1;
        queue.pop_front().map(|h| h.item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(loss: f64, delay_us: Micros, jitter_us: Micros, reorder: f64) -> ImpairmentSpec {
        ImpairmentSpec {
            loss,
            delay_us,
            jitter_us,
            reorder,
        }
    }

    /// Pushes `n` items 1 ms apart, pops at every timeout, returns (item, push, pop).
    fn run(imp: &mut Impairment<u64>, n: u64, spacing: Micros) -> Vec<(u64, Micros, Micros)> {
        let mut out = Vec::new();
        let mut pushed_at = Vec::new();
        let mut next_push = 0;
        let mut i = 0;
        loop {
            let now = match (i < n, imp.poll_timeout()) {
                (true, Some(t)) => t.min(next_push),
                (true, None) => next_push,
                (false, Some(t)) => t,
                (false, None) => break,
            };
            if i < n && now == next_push {
                pushed_at.push(now);
                imp.push(now, i);
                i += 1;
                next_push += spacing;
            }
            while let Some(item) = imp.pop_ready(now) {
                out.push((item, pushed_at[item as usize], now));
            }
        }
        out
    }

    #[test]
    fn zero_spec_is_a_passthrough() {
        let s = ImpairmentSpec::default();
        assert!(s.is_passthrough());
        let mut imp = Impairment::new(s, 1);
        imp.push(5, "a");
        imp.push(5, "b");
        assert_eq!(imp.poll_timeout(), Some(5));
        assert_eq!(imp.pop_ready(5), Some("a"));
        assert_eq!(imp.pop_ready(5), Some("b"));
        assert_eq!(imp.pop_ready(5), None);
        assert_eq!(imp.poll_timeout(), None);
        assert!(!spec(0.01, 0, 0, 0.0).is_passthrough());
        assert!(!spec(0.0, 0, 0, 0.5).is_passthrough());
    }

    #[test]
    fn loss_rate_is_close_to_the_spec() {
        let mut imp = Impairment::new(spec(0.02, 0, 0, 0.0), 7);
        let n = 100_000;
        for i in 0..n {
            imp.push(i, i);
            while imp.pop_ready(i).is_some() {}
        }
        let lost = imp.stats().lost as f64 / n as f64;
        // Binomial: sd = sqrt(0.02 * 0.98 / 1e5) = 0.00044; allow 5 sd.
        assert!((lost - 0.02).abs() < 0.0023, "{lost}");
        assert_eq!(imp.stats().delivered + imp.stats().lost, n);
    }

    #[test]
    fn fixed_delay_is_exact() {
        let mut imp = Impairment::new(spec(0.0, 20_000, 0, 0.0), 1);
        for (item, pushed, popped) in run(&mut imp, 1000, 1000) {
            assert_eq!(popped - pushed, 20_000, "item {item}");
        }
    }

    #[test]
    fn jitter_stays_in_bounds_and_never_reorders() {
        let mut imp = Impairment::new(spec(0.0, 20_000, 15_000, 0.0), 3);
        let out = run(&mut imp, 20_000, 500);
        assert_eq!(out.len(), 20_000);
        let mut previous = None;
        let mut sum = 0;
        for &(item, pushed, popped) in &out {
            let delay = popped - pushed;
            assert!((5_000..=35_000).contains(&delay), "item {item}: {delay}");
            if let Some(p) = previous {
                assert_eq!(item, p + 1);
            }
            previous = Some(item);
            sum += delay;
        }
        // The FIFO holds items behind slower ones: with items much closer together than
        // the jitter, most wait for the slowest recent draw, so the mean sits near the
        // top of the range (as netem's does with a rate).
        let mean = sum / out.len() as u64;
        assert!((20_000..=35_000).contains(&mean), "{mean}");
    }

    #[test]
    fn reorder_lets_items_overtake() {
        let mut imp = Impairment::new(spec(0.0, 20_000, 0, 0.1), 5);
        let out = run(&mut imp, 10_000, 1000);
        assert_eq!(out.len(), 10_000);
        let overtaking = out.windows(2).filter(|w| w[1].0 < w[0].0).count();
        assert!(overtaking > 500, "{overtaking}");
        let fraction = imp.stats().reordered as f64 / 10_000.0;
        assert!((fraction - 0.1).abs() < 0.02, "{fraction}");
        for &(_, pushed, popped) in &out {
            assert!(popped - pushed == 0 || popped - pushed == 20_000);
        }
    }

    #[test]
    fn queue_is_bounded() {
        let mut imp = Impairment::with_limit(spec(0.0, 1_000_000, 0, 0.0), 1, 10);
        for i in 0..15 {
            imp.push(i, i);
        }
        assert_eq!(imp.len(), 10);
        assert_eq!(imp.stats().overflowed, 5);
        let out: Vec<_> = std::iter::from_fn(|| imp.pop_ready(2_000_000)).collect();
        assert_eq!(out, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn same_seed_same_run() {
        let s = spec(0.05, 10_000, 8_000, 0.05);
        let a = run(&mut Impairment::new(s, 11), 5_000, 300);
        let b = run(&mut Impairment::new(s, 11), 5_000, 300);
        let c = run(&mut Impairment::new(s, 12), 5_000, 300);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn odd_specs_do_not_panic() {
        for s in [
            spec(f64::NAN, 0, 0, f64::NAN),
            spec(-1.0, u64::MAX, u64::MAX, 2.0),
            spec(1.0, 0, 0, 0.0),
        ] {
            let mut imp = Impairment::new(s, 1);
            for i in 0..100 {
                imp.push(i, i);
                let _ = imp.pop_ready(i);
                let _ = imp.poll_timeout();
            }
        }
    }
}
