//! What a correct recording holds, worked out apart from the code under test: which
//! packets the stored chunks must contain (from the proxy's record of what it sent on),
//! and how many video frames a stitcher that writes only complete, decodable frames must
//! write (from FFmpeg's packets as the proxy saw them, and which of them were stored).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use fanout_recorder::chunk::{read_chunk, ChunkTail};

use super::proxy::{rtp_fields, SentPacket};

/// One chunk object of the store.
#[derive(Debug, Clone)]
pub struct StoredChunk {
    pub instance: String,
    pub seq: u64,
    pub start_us: u64,
    pub tail: ChunkTail,
    pub records: usize,
}

/// Everything stored for one recording.
#[derive(Debug, Default)]
pub struct Stored {
    pub chunks: Vec<StoredChunk>,
    /// Per (participant, SSRC): sequence number → the forwarder's arrival time, for every
    /// RTP packet in any chunk.
    pub packets: HashMap<(String, u32), BTreeMap<u16, u64>>,
    /// Records of a packet already seen in another record.
    pub duplicates: u64,
}

impl Stored {
    pub fn records(&self) -> usize {
        self.chunks.iter().map(|c| c.records).sum()
    }

    pub fn contains(&self, participant: &str, ssrc: u32, seq: u16) -> bool {
        self.packets
            .get(&(participant.to_owned(), ssrc))
            .is_some_and(|s| s.contains_key(&seq))
    }

    pub fn instances(&self) -> Vec<String> {
        let mut names: Vec<String> = self.chunks.iter().map(|c| c.instance.clone()).collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Reads every chunk of `recording` in a local-directory store (docs/recording.md: keys
/// `recordings/{id}/chunks/{instance}-{seq:010}.chunk`), checking that each header names
/// the recording and the instance and sequence number of its key.
pub fn read_store(store: &Path, recording: &str) -> Stored {
    let dir = store.join("recordings").join(recording).join("chunks");
    let mut stored = Stored::default();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return stored;
    };
    let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    for file in files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let Some(stem) = name.strip_suffix(".chunk") else {
            continue;
        };
        let (instance, seq) = stem.rsplit_once('-').expect("a chunk key has instance-seq");
        let bytes = std::fs::read(&file).expect("a stored chunk reads");
        let chunk = read_chunk(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(chunk.header.recording_id, recording, "{name}");
        assert_eq!(chunk.header.instance, instance, "{name}");
        assert_eq!(chunk.header.seq, seq.parse::<u64>().unwrap(), "{name}");
        for record in &chunk.records {
            let (ssrc, seq, ..) = rtp_fields(&record.rtp).expect("a stored record is RTP");
            let previous = stored
                .packets
                .entry((record.participant_id.clone(), ssrc))
                .or_default()
                .insert(seq, record.arrival_us);
            if previous.is_some() {
                stored.duplicates += 1;
            }
        }
        stored.chunks.push(StoredChunk {
            instance: instance.to_owned(),
            seq: chunk.header.seq,
            start_us: chunk.header.start_us,
            tail: chunk.tail,
            records: chunk.records.len(),
        });
    }
    stored
        .chunks
        .sort_by_key(|c| (c.start_us, c.instance.clone(), c.seq));
    stored
}

/// The packets of one SSRC in the proxy's record.
pub fn stream(sent: &[SentPacket], ssrc: u32) -> Vec<SentPacket> {
    sent.iter().filter(|p| p.ssrc == ssrc).copied().collect()
}

/// Sequence numbers extended past 16 bits (RFC 3550 A.1), for packets in send order.
fn extended(packets: &[SentPacket]) -> Vec<u64> {
    let mut out = Vec::with_capacity(packets.len());
    let mut last: Option<(u16, u64)> = None;
    for p in packets {
        let ext = match last {
            None => u64::from(p.seq) + (1 << 16),
            Some((raw, ext)) => ext.wrapping_add_signed(i64::from(p.seq.wrapping_sub(raw) as i16)),
        };
        last = Some((p.seq, ext));
        out.push(ext);
    }
    out
}

/// What a stitcher must do with one video stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameExpectation {
    /// Frames FFmpeg sent (runs of packets with one timestamp, ended by the marker).
    pub frames: u64,
    /// Frames whose every packet is in the recording.
    pub complete: u64,
    /// Complete frames a decoder can take: from a key frame on, and after an incomplete
    /// frame only from the next key frame (no frame whose references are missing).
    pub written: u64,
}

/// Counts the frames of one video stream: `sent` is every packet FFmpeg sent on it, in
/// order; `present` says whether a packet (by sequence number) is in the recording.
pub fn expected_frames(sent: &[SentPacket], present: impl Fn(u16) -> bool) -> FrameExpectation {
    let ext = extended(sent);
    assert!(
        ext.windows(2).all(|w| w[1] == w[0] + 1),
        "the proxy missed some of FFmpeg's packets: the oracle needs all of them"
    );
    assert!(sent.len() < 1 << 16, "sequence numbers must not repeat");
    let mut expectation = FrameExpectation::default();
    let mut waiting_for_keyframe = true;
    // The frame being read: (timestamp, every packet present so far, starts a key frame).
    let mut current: Option<(u32, bool, bool)> = None;
    let mut close = |(_, complete, keyframe): (u32, bool, bool), e: &mut FrameExpectation| {
        e.frames += 1;
        if !complete {
            waiting_for_keyframe = true;
            return;
        }
        e.complete += 1;
        if waiting_for_keyframe && !keyframe {
            return;
        }
        waiting_for_keyframe = false;
        e.written += 1;
    };
    for p in sent {
        let here = present(p.seq);
        match &mut current {
            Some(frame) if frame.0 == p.timestamp => frame.1 &= here,
            _ => {
                if let Some(frame) = current.take() {
                    // A frame without its marker packet: its end is unknown.
                    close((frame.0, false, frame.2), &mut expectation);
                }
                current = Some((p.timestamp, here, p.keyframe_start));
            }
        }
        if p.marker {
            if let Some(frame) = current.take() {
                close(frame, &mut expectation);
            }
        }
    }
    if let Some(frame) = current.take() {
        close((frame.0, false, frame.2), &mut expectation);
    }
    expectation
}

/// How the stored packets of one SSRC compare with what the proxy sent on.
#[derive(Debug, Default)]
pub struct Coverage {
    pub forwarded: u64,
    pub stored: u64,
    /// Forward times (unix µs) of the packets sent on but not stored, in order.
    pub missing_at: Vec<u64>,
    /// The same packets: (index in what FFmpeg sent, sequence number), in send order.
    pub missing: Vec<(usize, u16)>,
    /// Stored packets the proxy never sent on (dropped, or never sent): must be none.
    pub unexpected: Vec<u16>,
}

pub fn coverage(sent: &[SentPacket], stored: Option<&BTreeMap<u16, u64>>) -> Coverage {
    let empty = BTreeMap::new();
    let stored = stored.unwrap_or(&empty);
    let mut c = Coverage {
        stored: stored.len() as u64,
        ..Coverage::default()
    };
    let mut forwarded = std::collections::HashSet::new();
    for (i, p) in sent.iter().enumerate() {
        if let Some(at) = p.forwarded_at() {
            c.forwarded += 1;
            forwarded.insert(p.seq);
            if !stored.contains_key(&p.seq) {
                c.missing_at.push(at);
                c.missing.push((i, p.seq));
            }
        }
    }
    c.missing_at.sort_unstable();
    c.unexpected = stored
        .keys()
        .filter(|s| !forwarded.contains(s))
        .copied()
        .collect();
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Fate;

    fn packet(seq: u16, timestamp: u32, marker: bool, key: bool) -> SentPacket {
        SentPacket {
            ssrc: 1,
            seq,
            timestamp,
            marker,
            keyframe_start: key,
            fate: Fate::Dropped,
        }
    }

    #[test]
    fn frames_after_a_loss_wait_for_the_next_key_frame() {
        // Key frame (2 packets), delta, delta (loses a packet), delta, key frame, delta;
        // sequence numbers wrap on the way.
        let sent = [
            packet(65534, 0, false, true),
            packet(65535, 0, true, false),
            packet(0, 1, true, false),
            packet(1, 2, false, false),
            packet(2, 2, true, false),
            packet(3, 3, true, false),
            packet(4, 4, true, true),
            packet(5, 5, true, false),
        ];
        let e = expected_frames(&sent, |seq| seq != 1);
        assert_eq!(
            e,
            FrameExpectation {
                frames: 6,
                complete: 5,
                written: 4
            }
        );
        // Nothing before the first key frame is written.
        let e = expected_frames(&sent, |seq| seq != 65534);
        assert_eq!((e.complete, e.written), (5, 2));
    }
}
