//! Time as the domain sees it: a number handed in by the caller, never read from a clock.
//!
//! Keeping the clock out lets every rule that depends on time (schedule windows, token
//! expiry, who joined first) be tested on a virtual clock, and lets the API layer use one
//! `now` for a whole request so that a retried compare-and-swap sees the same instant.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (UTC). Stored as a plain JSON number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// Converts a wall-clock instant the caller read. Instants before the epoch clamp to 0
    /// and instants past `u64::MAX` milliseconds (year 584 million) clamp to the maximum,
    /// so the conversion cannot fail.
    pub fn from_system_time(t: SystemTime) -> Self {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        UnixMillis(ms)
    }

    /// The inverse of [`UnixMillis::from_system_time`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// `self + d`, saturating: an absurd TTL makes a far-future expiry, never a wrap to the
    /// past (which would turn a long-lived token into an already-expired one, or worse the
    /// reverse).
    pub fn saturating_add(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        UnixMillis(self.0.saturating_add(ms))
    }

    /// `self - d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        UnixMillis(self.0.saturating_sub(ms))
    }
}

impl std::fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_time_round_trip_and_clamps() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(UnixMillis::from_system_time(t).0, 1_700_000_000_123);
        assert_eq!(UnixMillis::from_system_time(t).to_system_time(), t);
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(UnixMillis::from_system_time(before).0, 0);
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(
            UnixMillis(u64::MAX - 1).saturating_add(Duration::from_secs(1)),
            UnixMillis(u64::MAX)
        );
        assert_eq!(
            UnixMillis(10).saturating_sub(Duration::from_secs(1)),
            UnixMillis(0)
        );
        assert_eq!(
            UnixMillis(10).saturating_add(Duration::MAX),
            UnixMillis(u64::MAX)
        );
    }
}
