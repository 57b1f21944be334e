//! The bounded queue of received packets waiting to be fanned out.
//!
//! Each slot owns a buffer allocated once, at start: queueing a packet is a copy, never an
//! allocation. The core keeps two queues, so that screen share is sent before camera video
//! and audio when both wait (a shared screen is what a viewer reads).

use std::time::Instant;

use crate::codec::FrameInfo;
use crate::ids::{SeqNo, Ssrc, TrackId};

use super::MAX_DATAGRAM_LEN;

/// A received packet waiting to be fanned out.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) track: TrackId,
    /// Which encoding of the track, and what its payload descriptor says.
    pub(crate) encoding: u8,
    pub(crate) info: FrameInfo,
    pub(crate) ssrc: Ssrc,
    pub(crate) sequence: SeqNo,
    pub(crate) timestamp: u32,
    pub(crate) arrival: Instant,
    pub(crate) len: usize,
    pub(crate) header_len: usize,
    /// Where the payload (after the RTP header) starts and ends, padding excluded.
    pub(crate) payload: std::ops::Range<usize>,
    /// Next position in the track's subscriber list.
    pub(crate) next: usize,
    pub(crate) data: Box<[u8; MAX_DATAGRAM_LEN]>,
}

/// Bounded ring of [`Pending`] packets whose buffers are allocated once.
#[derive(Debug)]
pub(crate) struct FanoutQueue {
    slots: Vec<Pending>,
    head: usize,
    len: usize,
}

impl FanoutQueue {
    pub(crate) fn new(capacity: usize, now: Instant) -> Self {
        let slots = (0..capacity.max(1))
            .map(|_| Pending {
                track: TrackId(0),
                encoding: 0,
                info: FrameInfo::default(),
                payload: 0..0,
                ssrc: Ssrc(0),
                sequence: SeqNo(0),
                timestamp: 0,
                arrival: now,
                len: 0,
                header_len: 0,
                next: 0,
                data: Box::new([0; MAX_DATAGRAM_LEN]),
            })
            .collect();
        FanoutQueue {
            slots,
            head: 0,
            len: 0,
        }
    }

    /// A free slot at the tail, if any; it becomes queued by [`FanoutQueue::commit`].
    pub(crate) fn tail(&mut self) -> Option<&mut Pending> {
        if self.len == self.slots.len() {
            return None;
        }
        let i = (self.head + self.len) % self.slots.len();
        Some(&mut self.slots[i])
    }

    pub(crate) fn commit(&mut self) {
        debug_assert!(self.len < self.slots.len());
        self.len += 1;
    }

    pub(crate) fn front(&mut self) -> Option<&mut Pending> {
        if self.len == 0 {
            return None;
        }
        Some(&mut self.slots[self.head])
    }

    pub(crate) fn pop(&mut self) {
        if self.len > 0 {
            self.head = (self.head + 1) % self.slots.len();
            self.len -= 1;
        }
    }
}
