//! Newtypes for the identifiers that cross the core's API.
//!
//! External names (`MeetingId`, `ParticipantId`, and the names of legs, tracks and
//! subscriptions) are strings chosen by whoever configures the forwarder: the standalone
//! config file today, the control plane later. Internally the core addresses its objects by
//! dense handles ([`LegId`], [`TrackId`], [`SubscriptionId`]) so that the per-packet path
//! indexes vectors instead of hashing strings.

use std::fmt;

/// RTP synchronization source identifier (RFC 3550 §3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Ssrc(pub u32);

impl fmt::Debug for Ssrc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ssrc({:#010x})", self.0)
    }
}

impl fmt::Display for Ssrc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

impl From<u32> for Ssrc {
    fn from(v: u32) -> Self {
        Ssrc(v)
    }
}

/// RTP sequence number (RFC 3550 §5.1): 16 bits that wrap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct SeqNo(pub u16);

impl SeqNo {
    /// Signed distance from `self` to `later`, modulo 2^16 (RFC 1982 serial arithmetic).
    pub fn delta_to(self, later: SeqNo) -> i16 {
        later.0.wrapping_sub(self.0) as i16
    }
}

impl fmt::Display for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $name(pub String);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_owned())
            }
        }
    };
}

string_id!(
    /// A meeting (a room): the unit that owns a forwarding table.
    MeetingId
);
string_id!(
    /// One remote peer within a meeting.
    ParticipantId
);

macro_rules! handle {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $name(pub(crate) u32);

        impl $name {
            pub(crate) fn index(self) -> usize {
                self.0 as usize
            }
        }
    };
}

handle!(
    /// A plain SRTP transport of a participant (one remote address, one key pair).
    LegId
);
handle!(
    /// A published source (audio, camera, screen share).
    TrackId
);
handle!(
    /// One outbound copy of a track to one participant's leg.
    SubscriptionId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_delta_wraps() {
        assert_eq!(SeqNo(65535).delta_to(SeqNo(0)), 1);
        assert_eq!(SeqNo(0).delta_to(SeqNo(65535)), -1);
        assert_eq!(SeqNo(10).delta_to(SeqNo(20)), 10);
    }
}
