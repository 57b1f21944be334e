//! Seals wait for their chunks: a recording's seal is stored only once every chunk of it
//! handed to the uploader before the seal was asked for is stored (or given up as
//! unreadable: waiting would not bring it back). Chunks upload concurrently and in any
//! order, so "the last upload before the End" is not enough; the book counts them.
//!
//! Sans-IO: the uploader tells it what was queued and what finished, and stores the seals
//! it returns.

use std::collections::{BTreeMap, HashMap};

use crate::store::{ChunkKey, SealKey};

/// Chunks not yet stored and seals waiting for them, per recording.
#[derive(Debug, Default)]
pub struct SealBook {
    recordings: HashMap<String, Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    /// Sequence numbers of chunks queued and not yet done, with how many (recovered
    /// chunks of another instance name may share a number).
    chunks: BTreeMap<u64, u32>,
    /// Seals asked for, in the order asked (so by growing number).
    seals: Vec<SealKey>,
}

impl Waiting {
    /// Whether `seal` waits for nothing: no chunk numbered below it is pending.
    fn clear_for(&self, seal: &SealKey) -> bool {
        self.chunks.range(..seal.seq).next().is_none()
    }
}

impl SealBook {
    /// A chunk was handed to the uploader: seals asked for from now on wait for it.
    pub fn chunk_queued(&mut self, key: &ChunkKey) {
        let waiting = self.recordings.entry(key.recording_id.clone()).or_default();
        *waiting.chunks.entry(key.seq).or_default() += 1;
    }

    /// A chunk was stored, or given up on. Returns the seals that wait for nothing any
    /// more, in order.
    pub fn chunk_done(&mut self, key: &ChunkKey) -> Vec<SealKey> {
        let Some(waiting) = self.recordings.get_mut(&key.recording_id) else {
            return Vec::new();
        };
        if let Some(count) = waiting.chunks.get_mut(&key.seq) {
            *count -= 1;
            if *count == 0 {
                waiting.chunks.remove(&key.seq);
            }
        }
        let ready = waiting
            .seals
            .iter()
            .take_while(|seal| waiting.clear_for(seal))
            .count();
        let ready: Vec<SealKey> = waiting.seals.drain(..ready).collect();
        if waiting.chunks.is_empty() && waiting.seals.is_empty() {
            self.recordings.remove(&key.recording_id);
        }
        ready
    }

    /// A seal is asked for (the recording ended). Returns it if it waits for nothing;
    /// otherwise keeps it until [`chunk_done`](Self::chunk_done) returns it.
    pub fn seal(&mut self, key: SealKey) -> Option<SealKey> {
        match self.recordings.get_mut(&key.recording_id) {
            // An earlier seal still waits: this one comes after it.
            Some(waiting) if !waiting.seals.is_empty() || !waiting.clear_for(&key) => {
                waiting.seals.push(key);
                None
            }
            _ => Some(key),
        }
    }

    /// Seals waiting for chunks.
    pub fn waiting(&self) -> usize {
        self.recordings.values().map(|w| w.seals.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(recording: &str, seq: u64) -> ChunkKey {
        ChunkKey {
            recording_id: recording.into(),
            instance: "i".into(),
            seq,
        }
    }

    fn seal(recording: &str, seq: u64) -> SealKey {
        SealKey {
            recording_id: recording.into(),
            instance: "i".into(),
            seq,
        }
    }

    #[test]
    fn a_seal_waits_for_every_earlier_chunk_in_any_order() {
        let mut book = SealBook::default();
        for seq in [1, 2, 3] {
            book.chunk_queued(&chunk("R", seq));
        }
        assert_eq!(book.seal(seal("R", 4)), None);
        assert_eq!(book.waiting(), 1);
        // Uploads finish out of order: the seal waits for the last of them.
        assert_eq!(book.chunk_done(&chunk("R", 3)), []);
        assert_eq!(book.chunk_done(&chunk("R", 1)), []);
        assert_eq!(book.chunk_done(&chunk("R", 2)), [seal("R", 4)]);
        assert_eq!(book.waiting(), 0);
        assert!(
            book.recordings.is_empty(),
            "nothing kept for a sealed recording"
        );
    }

    #[test]
    fn a_seal_with_nothing_pending_is_ready_at_once() {
        let mut book = SealBook::default();
        assert_eq!(book.seal(seal("R", 1)), Some(seal("R", 1)));
        book.chunk_queued(&chunk("R", 2));
        book.chunk_done(&chunk("R", 2));
        assert_eq!(book.seal(seal("R", 3)), Some(seal("R", 3)));
    }

    #[test]
    fn only_earlier_chunks_of_the_same_recording_hold_a_seal() {
        let mut book = SealBook::default();
        book.chunk_queued(&chunk("R", 1));
        book.chunk_queued(&chunk("S", 2));
        assert_eq!(book.seal(seal("S", 3)), None);
        // A late packet's chunk of S, after the End: numbered above the seal.
        book.chunk_queued(&chunk("S", 4));
        assert_eq!(book.chunk_done(&chunk("S", 2)), [seal("S", 3)]);
        // R's pending chunk never held S's seal; R seals when its chunk is done.
        assert_eq!(book.seal(seal("R", 5)), None);
        assert_eq!(book.chunk_done(&chunk("R", 1)), [seal("R", 5)]);
        assert_eq!(book.chunk_done(&chunk("S", 4)), []);
        assert!(book.recordings.is_empty());
    }

    #[test]
    fn seals_of_one_recording_keep_their_order() {
        let mut book = SealBook::default();
        book.chunk_queued(&chunk("R", 1));
        assert_eq!(book.seal(seal("R", 2)), None);
        book.chunk_queued(&chunk("R", 3));
        assert_eq!(book.seal(seal("R", 4)), None);
        // The later seal's chunk is done first: it still waits for the earlier seal's.
        assert_eq!(book.chunk_done(&chunk("R", 3)), []);
        assert_eq!(
            book.chunk_done(&chunk("R", 1)),
            [seal("R", 2), seal("R", 4)]
        );
    }

    #[test]
    fn chunks_sharing_a_number_are_each_waited_for() {
        let mut book = SealBook::default();
        // Recovered chunks written under another instance name may share a number.
        book.chunk_queued(&chunk("R", 1));
        book.chunk_queued(&ChunkKey {
            instance: "old-name".into(),
            ..chunk("R", 1)
        });
        assert_eq!(book.seal(seal("R", 2)), None);
        assert_eq!(book.chunk_done(&chunk("R", 1)), []);
        assert_eq!(book.chunk_done(&chunk("R", 1)), [seal("R", 2)]);
        // Done twice, or never queued: nothing breaks.
        assert_eq!(book.chunk_done(&chunk("R", 1)), []);
        assert_eq!(book.chunk_done(&chunk("X", 9)), []);
    }
}
