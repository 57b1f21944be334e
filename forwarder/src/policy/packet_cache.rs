//! Bounded per-track retransmission cache, to answer NACKs (RFC 4585 §6.2.1) from the
//! forwarder instead of forwarding them to the publisher.
//!
//! A subscriber that lost a packet on its downlink sends a generic NACK; the forwarder
//! looks the packet up here (by the publisher's sequence number, after undoing the
//! subscription's rewrite) and resends it, as a plain copy or wrapped in RTX (RFC 4588).
//! Only the most recent packets are worth keeping: a retransmission that arrives after the
//! receiver's jitter buffer gave up on the packet is wasted bandwidth.
//!
//! # Layout and memory
//!
//! A ring of `capacity` slots indexed by `seq % capacity` (capacity a power of two), each
//! slot holding the full sequence number so that a lookup for a sequence number that was
//! since overwritten by `seq ± k·capacity` misses instead of returning the wrong packet.
//! Packet bytes live in one buffer of `capacity × max_packet_len` bytes allocated at
//! construction; nothing is allocated afterwards. Memory is
//! `capacity × (max_packet_len + size_of::<Slot>())`, see [`PacketCache::memory_bytes`];
//! with the default [`DEFAULT_MAX_PACKET_LEN`] of 1500 bytes and [`PacketMeta`] (32-byte
//! slot):
//!
//! | preset | capacity | memory per track |
//! |---|---|---|
//! | [`PacketCacheConfig::video`] | 512 | 766 KiB (784,384 bytes) |
//! | [`PacketCacheConfig::screen`] | 2048 | 3.0 MiB (3,137,536 bytes) |
//! | [`PacketCacheConfig::audio`] | 0 | nothing |
//!
//! So a meeting with 50 camera publishers holds about 37 MiB of cache.

use std::time::{Duration, Instant};

use crate::ids::SeqNo;

/// Largest plaintext RTP packet the cache stores, in bytes. 1500 covers every packet that
/// travels in one Ethernet-MTU datagram (1500 − 20 IP − 8 UDP leaves 1472 bytes of SRTP,
/// of which at least 10 are the authentication tag), and WebRTC senders stay well below
/// it (libwebrtc packetizes video to 1200 bytes). Larger packets are not cached
/// ([`Insert::TooLarge`]): NACKs for them go unanswered.
pub const DEFAULT_MAX_PACKET_LEN: usize = 1500;

/// Oldest packet worth resending. A retransmission only helps if it reaches the receiver
/// before its jitter buffer plays out past the packet; 1 s is above any interactive
/// jitter-buffer target plus one RTT on a sane path (mediasoup keeps 1 s for audio and
/// 2 s for video in its retransmission buffer; libwebrtc's receiver stops NACKing a
/// packet after 10 tries at one RTT each).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(1);

/// Camera video: at 2.5 Mbit/s of 1200-byte packets (about 260 packets/s) 512 packets
/// hold about 2 s, twice [`DEFAULT_MAX_AGE`], so the age limit, not the ring, decides
/// what can still be resent at usual camera rates up to about 5 Mbit/s.
pub const VIDEO_CAPACITY: usize = 512;

/// Screen share: its keyframes are large (a 1080p text-heavy frame is 100–300 KB, up to
/// 250 packets in one burst) and its rate spikes to several Mbit/s on scrolling; 2048
/// packets keep one second of a 15 Mbit/s burst.
pub const SCREEN_CAPACITY: usize = 2048;

/// Audio: none by default. libwebrtc does not negotiate NACK for Opus (it relies on Opus
/// in-band FEC and its jitter buffer's concealment); if a deployment negotiates it, 64
/// packets hold 1.28 s of 20 ms frames.
pub const AUDIO_CAPACITY: usize = 0;

/// Largest capacity: half the 16-bit sequence space, so that "newer than" between two
/// sequence numbers in the ring is always decided correctly by serial arithmetic
/// (RFC 1982, [`SeqNo::delta_to`]).
pub const MAX_CAPACITY: usize = 1 << 15;

/// Per-packet facts the forwarder needs when it resends a packet, so that a retransmission
/// can be filtered by the subscription's current layer without parsing the payload again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketMeta {
    /// The packet belongs to a keyframe.
    pub keyframe: bool,
    /// Temporal layer id, if the payload or a header extension carries one.
    pub temporal: Option<u8>,
    /// Spatial layer id (or simulcast encoding index), if known.
    pub spatial: Option<u8>,
}

/// Sizing of a [`PacketCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketCacheConfig {
    /// Number of packets kept; rounded up to a power of two and capped at
    /// [`MAX_CAPACITY`]. 0 disables the cache.
    pub capacity: usize,
    /// Largest packet stored, in bytes; capped at 65535.
    pub max_packet_len: usize,
    /// Packets older than this are not returned.
    pub max_age: Duration,
}

impl PacketCacheConfig {
    /// Camera video: [`VIDEO_CAPACITY`] packets.
    pub fn video() -> Self {
        Self::with_capacity(VIDEO_CAPACITY)
    }

    /// Screen share: [`SCREEN_CAPACITY`] packets.
    pub fn screen() -> Self {
        Self::with_capacity(SCREEN_CAPACITY)
    }

    /// Audio: [`AUDIO_CAPACITY`] packets (disabled).
    pub fn audio() -> Self {
        Self::with_capacity(AUDIO_CAPACITY)
    }

    /// `capacity` packets with the default packet size and age.
    pub fn with_capacity(capacity: usize) -> Self {
        PacketCacheConfig {
            capacity,
            max_packet_len: DEFAULT_MAX_PACKET_LEN,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

/// What [`PacketCache::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// The packet is stored.
    Stored,
    /// Longer than the configured maximum; not stored.
    TooLarge,
    /// Its slot holds a newer packet that is still fresh (the packet is at least
    /// `capacity` sequence numbers late); not stored, the newer one is kept.
    Stale,
    /// The cache has capacity 0.
    Disabled,
}

/// A packet found by [`PacketCache::get`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cached<'a, M> {
    /// The plaintext RTP packet as inserted.
    pub packet: &'a [u8],
    /// When it arrived.
    pub arrival: Instant,
    /// The caller's metadata.
    pub meta: M,
}

#[derive(Debug, Clone, Copy)]
struct Slot<M> {
    seq: SeqNo,
    len: u16,
    /// `None`: the slot never held a packet (or was cleared).
    arrival: Option<Instant>,
    meta: M,
}

/// The most recent packets of one track, keyed by sequence number (see the module docs).
///
/// Generic over the per-packet metadata `M` (by default [`PacketMeta`]).
pub struct PacketCache<M = PacketMeta> {
    /// `slots.len() × max_len` bytes; slot `i` owns `data[i × max_len..][..max_len]`.
    data: Box<[u8]>,
    slots: Box<[Slot<M>]>,
    max_len: usize,
    max_age: Duration,
}

impl<M> std::fmt::Debug for PacketCache<M> {
    // Not derived: the buffer is hundreds of kilobytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketCache")
            .field("capacity", &self.slots.len())
            .field("max_len", &self.max_len)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl<M: Copy + Default> PacketCache<M> {
    /// Allocates the whole cache (see the module docs for the size).
    pub fn new(config: PacketCacheConfig) -> Self {
        let capacity = if config.capacity == 0 {
            0
        } else {
            config.capacity.min(MAX_CAPACITY).next_power_of_two()
        };
        let max_len = config.max_packet_len.min(usize::from(u16::MAX));
        let empty = Slot {
            seq: SeqNo(0),
            len: 0,
            arrival: None,
            meta: M::default(),
        };
        PacketCache {
            data: vec![0; capacity * max_len].into_boxed_slice(),
            slots: vec![empty; capacity].into_boxed_slice(),
            max_len,
            max_age: config.max_age,
        }
    }

    /// Number of packets the cache holds at most (a power of two, or 0).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Bytes the cache occupies on the heap.
    pub fn memory_bytes(&self) -> usize {
        self.data.len() + std::mem::size_of_val::<[Slot<M>]>(&self.slots)
    }

    fn index(&self, seq: SeqNo) -> usize {
        // capacity is a power of two (or 0, where callers return before indexing).
        usize::from(seq.0) & self.slots.len().wrapping_sub(1)
    }

    fn is_fresh(&self, arrival: Instant, now: Instant) -> bool {
        now.saturating_duration_since(arrival) < self.max_age
    }

    /// Stores a copy of `packet` (a plaintext RTP packet with sequence number `seq`),
    /// replacing whatever its slot held unless that is a newer, still fresh packet.
    pub fn insert(&mut self, seq: SeqNo, packet: &[u8], now: Instant, meta: M) -> Insert {
        if self.slots.is_empty() {
            return Insert::Disabled;
        }
        if packet.len() > self.max_len {
            return Insert::TooLarge;
        }
        let index = self.index(seq);
        let max_len = self.max_len;
        let Some(slot) = self.slots.get(index).copied() else {
            return Insert::Disabled;
        };
        if let Some(arrival) = slot.arrival {
            if slot.seq != seq && seq.delta_to(slot.seq) > 0 && self.is_fresh(arrival, now) {
                return Insert::Stale;
            }
        }
        let Some(buf) = self
            .data
            .get_mut(index * max_len..index * max_len + packet.len())
        else {
            return Insert::Disabled;
        };
        buf.copy_from_slice(packet);
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = Slot {
                seq,
                // packet.len() <= max_len <= u16::MAX, checked above.
                len: packet.len() as u16,
                arrival: Some(now),
                meta,
            };
        }
        Insert::Stored
    }

    /// The packet with sequence number `seq`, if the cache holds exactly that one and it
    /// is younger than the configured maximum age at `now`.
    pub fn get(&self, seq: SeqNo, now: Instant) -> Option<Cached<'_, M>> {
        if self.slots.is_empty() {
            return None;
        }
        let index = self.index(seq);
        let slot = self.slots.get(index)?;
        let arrival = slot.arrival?;
        if slot.seq != seq || !self.is_fresh(arrival, now) {
            return None;
        }
        let start = index * self.max_len;
        let packet = self.data.get(start..start + usize::from(slot.len))?;
        Some(Cached {
            packet,
            arrival,
            meta: slot.meta,
        })
    }

    /// Whether `seq` is behind what the cache can answer: it held that packet (now too
    /// old) or has since stored a newer one in its slot. A relay's parent keeps packets
    /// no longer than the relay does, so asking it for such a packet is futile; a packet
    /// that is not behind was never here (lost on the way in).
    pub fn is_behind(&self, seq: SeqNo) -> bool {
        let Some(slot) = self.slots.get(self.index(seq)) else {
            return false;
        };
        slot.arrival.is_some() && (slot.seq == seq || seq.delta_to(slot.seq) > 0)
    }

    /// Forgets every packet (for example when the publisher's stream restarts with a new
    /// SSRC and its sequence numbers start over).
    pub fn clear(&mut self) {
        for slot in self.slots.iter_mut() {
            slot.arrival = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn pkt(seq: u16, len: usize) -> Vec<u8> {
        let mut p = vec![0x80, 96, 0, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.resize(len.max(4), seq as u8);
        p
    }

    fn cache(capacity: usize) -> PacketCache {
        PacketCache::new(PacketCacheConfig::with_capacity(capacity))
    }

    #[test]
    fn round_trip_with_meta() {
        let t0 = Instant::now();
        let mut c = cache(VIDEO_CAPACITY);
        let meta = PacketMeta {
            keyframe: true,
            temporal: Some(1),
            spatial: Some(2),
        };
        assert_eq!(c.insert(SeqNo(7), &pkt(7, 1200), t0, meta), Insert::Stored);
        let got = c.get(SeqNo(7), t0 + Duration::from_millis(100)).unwrap();
        assert_eq!(got.packet, &pkt(7, 1200)[..]);
        assert_eq!(got.arrival, t0);
        assert_eq!(got.meta, meta);
        assert!(c.get(SeqNo(8), t0).is_none());
    }

    #[test]
    fn overwritten_slot_misses_for_the_old_sequence_number() {
        let t0 = Instant::now();
        let mut c = cache(4);
        c.insert(SeqNo(1), &pkt(1, 100), t0, PacketMeta::default());
        c.insert(SeqNo(5), &pkt(5, 100), t0, PacketMeta::default());
        assert!(c.get(SeqNo(1), t0).is_none());
        assert_eq!(c.get(SeqNo(5), t0).unwrap().packet, &pkt(5, 100)[..]);
    }

    #[test]
    fn late_packet_does_not_evict_a_newer_one() {
        let t0 = Instant::now();
        let mut c = cache(4);
        c.insert(SeqNo(5), &pkt(5, 100), t0, PacketMeta::default());
        assert_eq!(
            c.insert(SeqNo(1), &pkt(1, 100), t0, PacketMeta::default()),
            Insert::Stale
        );
        assert!(c.get(SeqNo(5), t0).is_some());
        // Once the newer packet is too old to matter, the slot is reused.
        let later = t0 + DEFAULT_MAX_AGE;
        assert_eq!(
            c.insert(SeqNo(1), &pkt(1, 100), later, PacketMeta::default()),
            Insert::Stored
        );
    }

    #[test]
    fn behind_means_held_once_or_overwritten_by_newer() {
        let mut cache: PacketCache = PacketCache::new(PacketCacheConfig {
            capacity: 4,
            max_packet_len: 100,
            max_age: Duration::from_millis(100),
        });
        let t0 = Instant::now();
        assert!(!cache.is_behind(SeqNo(10)), "empty: never held");
        cache.insert(SeqNo(10), &pkt(10, 20), t0, PacketMeta::default());
        assert!(cache.is_behind(SeqNo(10)));
        let later = t0 + Duration::from_secs(1);
        assert!(cache.get(SeqNo(10), later).is_none(), "expired");
        assert!(cache.is_behind(SeqNo(10)), "expired, still known");
        // 14 shares 10's slot: 10 and 6 (older) are behind, 18 (newer) was never here.
        cache.insert(SeqNo(14), &pkt(14, 20), later, PacketMeta::default());
        assert!(cache.is_behind(SeqNo(10)));
        assert!(cache.is_behind(SeqNo(6)));
        assert!(!cache.is_behind(SeqNo(18)));
        assert!(!cache.is_behind(SeqNo(11)), "a slot never filled");
        cache.clear();
        assert!(!cache.is_behind(SeqNo(14)));
    }

    #[test]
    fn expires_after_max_age() {
        let t0 = Instant::now();
        let mut c = cache(16);
        c.insert(SeqNo(3), &pkt(3, 50), t0, PacketMeta::default());
        assert!(c.get(SeqNo(3), t0 + Duration::from_millis(999)).is_some());
        assert!(c.get(SeqNo(3), t0 + DEFAULT_MAX_AGE).is_none());
    }

    #[test]
    fn wraps_around_the_sequence_space() {
        let t0 = Instant::now();
        let mut c = cache(8);
        for s in [65533u16, 65534, 65535, 0, 1, 2] {
            assert_eq!(
                c.insert(SeqNo(s), &pkt(s, 20), t0, PacketMeta::default()),
                Insert::Stored
            );
        }
        for s in [65533u16, 65534, 65535, 0, 1, 2] {
            assert_eq!(c.get(SeqNo(s), t0).unwrap().packet, &pkt(s, 20)[..]);
        }
    }

    #[test]
    fn refuses_oversized_packets_and_works_disabled() {
        let t0 = Instant::now();
        let mut c = cache(16);
        assert_eq!(
            c.insert(SeqNo(1), &pkt(1, 1501), t0, PacketMeta::default()),
            Insert::TooLarge
        );
        assert!(c.get(SeqNo(1), t0).is_none());
        let mut off = PacketCache::<PacketMeta>::new(PacketCacheConfig::audio());
        assert_eq!(off.capacity(), 0);
        assert_eq!(off.memory_bytes(), 0);
        assert_eq!(
            off.insert(SeqNo(1), &pkt(1, 10), t0, PacketMeta::default()),
            Insert::Disabled
        );
        assert!(off.get(SeqNo(1), t0).is_none());
    }

    #[test]
    fn capacity_rounds_up_and_memory_is_as_documented() {
        assert_eq!(cache(300).capacity(), 512);
        assert_eq!(cache(1 << 20).capacity(), MAX_CAPACITY);
        assert_eq!(std::mem::size_of::<Slot<PacketMeta>>(), 32);
        assert_eq!(cache(VIDEO_CAPACITY).memory_bytes(), 512 * (1500 + 32));
        assert_eq!(cache(SCREEN_CAPACITY).memory_bytes(), 2048 * (1500 + 32));
    }

    #[test]
    fn clear_forgets_everything() {
        let t0 = Instant::now();
        let mut c = cache(16);
        c.insert(SeqNo(3), &pkt(3, 50), t0, PacketMeta::default());
        c.clear();
        assert!(c.get(SeqNo(3), t0).is_none());
    }

    #[test]
    fn generic_metadata() {
        let t0 = Instant::now();
        let mut c = PacketCache::<u32>::new(PacketCacheConfig::with_capacity(8));
        c.insert(SeqNo(2), &[1, 2, 3], t0, 42);
        assert_eq!(c.get(SeqNo(2), t0).unwrap().meta, 42);
    }

    proptest! {
        /// Whatever the order, size and timing of inserts, `get` only ever returns the
        /// bytes last stored for exactly that sequence number, and only while fresh.
        #[test]
        fn never_returns_another_packet(
            capacity in 0usize..64,
            ops in proptest::collection::vec((any::<u16>(), 0usize..1600, 0u64..300, any::<bool>()), 1..400),
        ) {
            let t0 = Instant::now();
            let mut c = cache(capacity);
            let mut now = t0;
            let mut model: HashMap<u16, (Vec<u8>, Instant)> = HashMap::new();
            for (seq, len, step_ms, lookup) in ops {
                now += Duration::from_millis(step_ms);
                // Narrow the sequence numbers so that slots collide and get reused.
                let seq = seq % 256;
                if lookup {
                    if let Some(got) = c.get(SeqNo(seq), now) {
                        let (bytes, at) = model.get(&seq).expect("returned a never-stored packet");
                        prop_assert_eq!(got.packet, &bytes[..]);
                        prop_assert_eq!(got.arrival, *at);
                        prop_assert_eq!(&got.packet[2..4], &seq.to_be_bytes()[..]);
                        prop_assert!(now.duration_since(*at) < DEFAULT_MAX_AGE);
                    }
                } else {
                    let p = pkt(seq, len);
                    if c.insert(SeqNo(seq), &p, now, PacketMeta::default()) == Insert::Stored {
                        model.insert(seq, (p, now));
                    }
                }
            }
        }
    }
}
