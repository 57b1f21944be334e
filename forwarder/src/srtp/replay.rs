//! Sliding replay window (RFC 3711 §3.3.2) and the RTP rollover-counter estimate
//! (RFC 3711 §3.3.1, Appendix A).

use super::SrtpError;

/// Number of packet indices the replay window remembers. RFC 3711 §3.3.2 requires at least
/// 64; libsrtp uses 128, and video bursts reorder more than audio.
pub(crate) const REPLAY_WINDOW: u64 = 128;

/// A bitmap of the last [`REPLAY_WINDOW`] indices below and including the highest index
/// received (RFC 3711 §3.3.2). Bit `i` set means `highest - i` was received.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ReplayWindow {
    highest: u64,
    bitmap: u128,
}

impl ReplayWindow {
    /// A window whose only received index is `index`.
    pub(crate) fn starting_at(index: u64) -> Self {
        ReplayWindow {
            highest: index,
            bitmap: 1,
        }
    }

    /// Whether `index` may be accepted. Does not change the window: it is only updated by
    /// [`ReplayWindow::accept`] once the packet authenticated.
    pub(crate) fn check(&self, index: u64) -> Result<(), SrtpError> {
        if index > self.highest {
            return Ok(());
        }
        let delta = self.highest - index;
        if delta >= REPLAY_WINDOW {
            return Err(SrtpError::TooOld);
        }
        if self.bitmap & (1u128 << delta) != 0 {
            return Err(SrtpError::Replayed);
        }
        Ok(())
    }

    /// Records an authenticated index (which passed [`ReplayWindow::check`]).
    pub(crate) fn accept(&mut self, index: u64) {
        if index > self.highest {
            let shift = index - self.highest;
            self.bitmap = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.bitmap << shift
            };
            self.bitmap |= 1;
            self.highest = index;
        } else {
            let delta = self.highest - index;
            if delta < REPLAY_WINDOW {
                self.bitmap |= 1u128 << delta;
            }
        }
    }
}

/// Estimates the rollover counter of a packet with sequence number `seq`, given the stream's
/// current ROC and highest sequence number `s_l` (RFC 3711 Appendix A).
///
/// Returns `None` when the estimate falls outside the 32-bit ROC: a packet from "before"
/// ROC 0 (it cannot exist, and treating it as ROC 0 would make it look 64k packets
/// ahead), or a wrap past ROC 2^32-1 (the index space is exhausted).
pub(crate) fn estimate_roc(roc: u32, s_l: u16, seq: u16) -> Option<u32> {
    const HALF: u16 = 0x8000;
    if s_l < HALF {
        if seq > s_l && seq - s_l > HALF {
            roc.checked_sub(1)
        } else {
            Some(roc)
        }
    } else if s_l - HALF > seq {
        roc.checked_add(1)
    } else {
        Some(roc)
    }
}

/// The 48-bit SRTP packet index `i = 2^16 * ROC + SEQ` (RFC 3711 §3.3.1).
pub(crate) fn packet_index(roc: u32, seq: u16) -> u64 {
    (u64::from(roc) << 16) | u64::from(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_basics() {
        let mut w = ReplayWindow::starting_at(1000);
        assert_eq!(w.check(1000), Err(SrtpError::Replayed));
        assert_eq!(w.check(999), Ok(()));
        w.accept(999);
        assert_eq!(w.check(999), Err(SrtpError::Replayed));
        assert_eq!(w.check(1000 - 127), Ok(()));
        assert_eq!(w.check(1000 - 128), Err(SrtpError::TooOld));
        w.accept(1200);
        assert_eq!(w.check(1000), Err(SrtpError::TooOld));
        assert_eq!(w.check(1100), Ok(()));
        assert_eq!(w.check(1200), Err(SrtpError::Replayed));
        w.accept(1201);
        assert_eq!(w.check(1200), Err(SrtpError::Replayed));
        w.accept(1201 + 500);
        assert_eq!(w.check(1201), Err(SrtpError::TooOld));
        assert_eq!(w.check(1201 + 499), Ok(()));
    }

    #[test]
    fn roc_estimate() {
        // Appendix A cases.
        assert_eq!(estimate_roc(0, 100, 101), Some(0));
        assert_eq!(estimate_roc(5, 65530, 3), Some(6));
        assert_eq!(estimate_roc(6, 3, 65530), Some(5));
        assert_eq!(estimate_roc(0, 3, 65530), None);
        assert_eq!(estimate_roc(u32::MAX, 65530, 3), None);
        assert_eq!(estimate_roc(2, 40000, 40001), Some(2));
        assert_eq!(estimate_roc(2, 40000, 7233), Some(2));
        assert_eq!(estimate_roc(2, 40000, 7231), Some(3));
        assert_eq!(estimate_roc(2, 100, 32868), Some(2));
        assert_eq!(estimate_roc(2, 100, 32869), Some(1));
    }
}
