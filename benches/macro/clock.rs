//! One monotonic nanosecond clock for the whole process: senders stamp packets with it and
//! receivers subtract it, so the latency needs no clock synchronisation.

use std::sync::OnceLock;
use std::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call in this process (CLOCK_MONOTONIC underneath).
pub fn now_ns() -> u64 {
    let base = BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
