//! The bounded rate search and the loss accounting, free of I/O so they can be tested.

/// Finds the highest passing rate: start, double until a step fails, then bisect between
/// the highest pass and the lowest failure until they are within `resolution` of each
/// other or `max_steps` steps have run. A failing start halves downwards instead.
#[derive(Debug, Clone)]
pub struct Search {
    start: f64,
    max_rate: f64,
    min_rate: f64,
    resolution: f64,
    max_steps: usize,
    steps: usize,
    /// Highest rate that passed.
    pub pass: Option<f64>,
    /// Lowest rate that failed.
    pub fail: Option<f64>,
}

impl Search {
    pub fn new(start: f64, max_rate: f64, resolution: f64, max_steps: usize) -> Self {
        Search {
            start: start.min(max_rate),
            max_rate,
            min_rate: start / 64.0,
            resolution,
            max_steps,
            steps: 0,
            pass: None,
            fail: None,
        }
    }

    /// The next rate to try, or None when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        if self.steps >= self.max_steps {
            return None;
        }
        match (self.pass, self.fail) {
            (None, None) => Some(self.start),
            (Some(p), None) => (p < self.max_rate).then(|| (p * 2.0).min(self.max_rate)),
            (None, Some(f)) => (f / 2.0 >= self.min_rate).then_some(f / 2.0),
            (Some(p), Some(f)) => (f / p - 1.0 > self.resolution).then_some((p + f) / 2.0),
        }
    }

    /// Records the outcome of a step at `rate`.
    pub fn record(&mut self, rate: f64, passed: bool) {
        self.steps += 1;
        if passed {
            self.pass = Some(self.pass.map_or(rate, |p| p.max(rate)));
        } else {
            self.fail = Some(self.fail.map_or(rate, |f| f.min(rate)));
        }
    }

    #[cfg(test)]
    pub fn steps(&self) -> usize {
        self.steps
    }
}

/// Loss over a window in which every subscriber should have received `ids` packets:
/// (overall fraction lost, worst subscriber's fraction lost).
///
/// Packets are counted by the id they carry, not by when they arrive, and the counts are
/// read only after the sender stopped and the receivers drained: a packet in flight at
/// either edge of the window is counted once, in the window it was sent in.
pub fn loss(ids: u64, per_subscriber: &[u64]) -> (f64, f64) {
    if ids == 0 || per_subscriber.is_empty() {
        return (0.0, 0.0);
    }
    let expected = ids as f64 * per_subscriber.len() as f64;
    let received: u64 = per_subscriber.iter().map(|&c| c.min(ids)).sum();
    let worst = per_subscriber
        .iter()
        .map(|&c| c.min(ids))
        .min()
        .unwrap_or(0);
    (
        1.0 - received as f64 / expected,
        1.0 - worst as f64 / ids as f64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(capacity: f64) -> (Option<f64>, usize) {
        run_capped(capacity, 4_000_000.0)
    }

    fn run_capped(capacity: f64, cap: f64) -> (Option<f64>, usize) {
        let mut s = Search::new(20_000.0, cap, 0.05, 8);
        while let Some(rate) = s.next_rate() {
            s.record(rate, rate <= capacity);
        }
        (s.pass, s.steps())
    }

    #[test]
    fn doubles_then_bisects_within_the_step_budget() {
        let (pass, steps) = run(150_000.0);
        let pass = pass.unwrap();
        assert!(steps <= 8);
        // 20k, 40k, 80k, 160k (fail), 120k, 140k, 150k, 155k (fail): within 5%.
        assert!((140_000.0..=150_000.0).contains(&pass), "{pass}");
    }

    #[test]
    fn failing_start_halves_down() {
        // 20k and 10k fail, 5k passes, then bisection towards 7k.
        let pass = run(7_000.0).0.unwrap();
        assert!((6_650.0..=7_000.0).contains(&pass), "{pass}");
        let (pass, steps) = run(1.0);
        assert_eq!(pass, None);
        assert!(steps <= 7);
    }

    #[test]
    fn stops_at_the_cap() {
        let (pass, steps) = run_capped(1e9, 100_000.0);
        assert_eq!(pass, Some(100_000.0));
        assert_eq!(steps, 4);
    }

    #[test]
    fn loss_counts_per_subscriber() {
        assert_eq!(loss(100, &[100, 100]), (0.0, 0.0));
        let (all, worst) = loss(100, &[100, 90]);
        assert!((all - 0.05).abs() < 1e-12 && (worst - 0.1).abs() < 1e-12);
        // A duplicate never hides a loss elsewhere.
        assert_eq!(loss(10, &[12, 10]), (0.0, 0.0));
        assert_eq!(loss(0, &[]), (0.0, 0.0));
    }
}
