//! The ingest daemon (`fanout-recorder run`): tap datagrams in, chunks out to the store.
//!
//! A forwarder sends every recorded packet to the recorder's Unix datagram socket
//! ([`fanout_forwarder::recording`]). The recorder keeps one open chunk per recording in
//! a local spool directory, appends each packet to its recording's chunk, closes the chunk
//! every `chunk_seconds`, at a size limit, or when the recording ends, and uploads closed
//! chunks to the store in the background, deleting them from the spool only once they are
//! stored. When a recording ends (the forwarder's End), it also stores a seal once every
//! chunk of that recording is stored ([`seal`]), so that the stitching job knows it has
//! everything this recorder had. A crash therefore loses at most what the open chunks had not yet handed to the
//! kernel: on start the daemon first queues whatever the spool holds, each file cut to its
//! last whole record.
//!
//! # Shape
//!
//! * [`IngestCore`] (this module) decides, sans-IO: which chunk a packet goes to, when a
//!   chunk opens and closes, and its sequence number. Time is an input. The contract is the
//!   forwarder's: after every input (`handle_packet`, `handle_end`, `handle_timeout`,
//!   `close_all`) drain [`IngestCore::poll_action`] and carry out each action in order,
//!   then (for a packet) append it to the slot `handle_packet` returned; wait at most until
//!   [`IngestCore::poll_timeout`].
//! * [`spool`] owns the spool directory: chunk files, and what a previous run left.
//! * [`upload`] uploads closed chunks with retries, on a small tokio runtime, and the
//!   seals once the chunks before them are stored ([`seal::SealBook`]).
//! * [`daemon`] is the thin driver: the socket, the loop, signals and metrics.
//!
//! # Sequence numbers
//!
//! A chunk's sequence number orders it among its recording's chunks from the same
//! instance, and names its object, so it must never repeat, across restarts too. It is the
//! chunk's opening time in milliseconds since the Unix epoch, raised when needed to one
//! more than the last number this process gave (any recording) and than the highest found
//! in the spool at start. Numbers therefore grow within a run; a new run starts above the
//! old one's because time has passed, and above whatever the old run left unfinished in
//! the spool (its open chunks). They would only repeat if the wall clock went back by more
//! than the time between the two runs *and* the spool was lost.
//!
//! A seal takes its number from the same counter: above every chunk of the recording
//! opened before the End, below every chunk opened after it (late packets, which a
//! later End seals again).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use slab::Slab;

use crate::chunk::ChunkHeader;
use crate::store::SealKey;

pub mod daemon;
pub mod metrics;
pub mod seal;
pub mod spool;
pub mod upload;

/// When chunks close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPolicy {
    /// A chunk closes this long after it opened, whatever arrives.
    pub duration: Duration,
    /// A chunk closes before a packet would take it past this size (a chunk always
    /// takes at least one packet).
    pub max_bytes: u64,
}

impl Default for ChunkPolicy {
    fn default() -> Self {
        ChunkPolicy {
            duration: Duration::from_secs(4),
            max_bytes: 32 << 20,
        }
    }
}

/// The present, as the driver reads it: a monotonic instant for deadlines, and wall-clock
/// time for what is written down (chunk start times, sequence numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub monotonic: Instant,
    /// Microseconds since the Unix epoch.
    pub unix_us: u64,
}

impl Now {
    /// Read both clocks.
    pub fn read() -> Now {
        Now {
            monotonic: Instant::now(),
            unix_us: unix_micros(std::time::SystemTime::now()),
        }
    }
}

/// Microseconds since the Unix epoch (0 before it).
pub fn unix_micros(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Where an open chunk lives in the driver: an index into its table of writers.
pub type Slot = usize;

/// Why a chunk closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// `chunk_seconds` passed.
    Deadline,
    /// The next packet would have taken it past `max_chunk_bytes`.
    Size,
    /// The forwarder said the recording ended.
    End,
    /// The daemon is stopping.
    Shutdown,
    /// The driver could not write to it.
    WriteError,
}

impl CloseReason {
    pub const ALL: [CloseReason; 5] = [
        CloseReason::Deadline,
        CloseReason::Size,
        CloseReason::End,
        CloseReason::Shutdown,
        CloseReason::WriteError,
    ];

    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Deadline => "deadline",
            CloseReason::Size => "size",
            CloseReason::End => "end",
            CloseReason::Shutdown => "shutdown",
            CloseReason::WriteError => "write_error",
        }
    }
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestAction {
    /// Create the chunk file for `slot` and write `header` to it.
    Open { slot: Slot, header: ChunkHeader },
    /// Close the chunk in `slot` (trailer, flush) and hand it to the uploader. The slot
    /// may be opened again by a later action.
    Close { slot: Slot, reason: CloseReason },
    /// The recording ended: store `key` once every chunk of the recording handed to the
    /// uploader before it is stored.
    Seal { key: SealKey },
}

#[derive(Debug)]
struct OpenChunk {
    recording_id: String,
    deadline: Instant,
    bytes: u64,
    records: u64,
}

/// The sans-IO core of the ingest daemon: open chunks and when they close.
#[derive(Debug)]
pub struct IngestCore {
    instance: String,
    policy: ChunkPolicy,
    /// Recording id to the slot of its open chunk. Only recordings with an open chunk are
    /// here, so an idle recording costs nothing once its chunk closed.
    open: HashMap<String, Slot>,
    chunks: Slab<OpenChunk>,
    /// The lowest sequence number the next chunk may take.
    next_seq: u64,
    actions: VecDeque<IngestAction>,
}

impl IngestCore {
    /// `instance` names this recorder in chunk headers and keys; `seq_floor` is the
    /// lowest sequence number to give (one more than the highest found in the spool).
    pub fn new(instance: &str, policy: ChunkPolicy, seq_floor: u64) -> IngestCore {
        IngestCore {
            instance: instance.to_owned(),
            policy,
            open: HashMap::new(),
            chunks: Slab::new(),
            next_seq: seq_floor,
            actions: VecDeque::new(),
        }
    }

    /// A packet of `recording_id` that takes `record_len` bytes in a chunk
    /// ([`crate::chunk::record_len`]). Returns the slot to append it to, once the actions
    /// queued have been carried out. No allocation unless a chunk opens.
    pub fn handle_packet(&mut self, now: Now, recording_id: &str, record_len: usize) -> Slot {
        if let Some(&slot) = self.open.get(recording_id) {
            let chunk = &mut self.chunks[slot];
            let full = chunk.records > 0
                && chunk.bytes.saturating_add(record_len as u64) > self.policy.max_bytes;
            if !full {
                chunk.bytes += record_len as u64;
                chunk.records += 1;
                return slot;
            }
            self.close(slot, CloseReason::Size);
        }
        let slot = self.open_chunk(now, recording_id);
        let chunk = &mut self.chunks[slot];
        chunk.bytes += record_len as u64;
        chunk.records += 1;
        slot
    }

    /// The recording ended on the forwarder: close its chunk now, then seal the
    /// recording (also when it has no open chunk: its chunks may still be uploading, or
    /// nothing was recorded). The seal's number is above every chunk number given so far.
    pub fn handle_end(&mut self, now: Now, recording_id: &str) {
        if let Some(&slot) = self.open.get(recording_id) {
            self.close(slot, CloseReason::End);
        }
        let key = SealKey {
            recording_id: recording_id.to_owned(),
            instance: self.instance.clone(),
            seq: self.take_seq(now),
        };
        self.actions.push_back(IngestAction::Seal { key });
    }

    /// Close the chunks whose time is up.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<Slot> = self
            .chunks
            .iter()
            .filter(|(_, chunk)| chunk.deadline <= now)
            .map(|(slot, _)| slot)
            .collect();
        for slot in due {
            self.close(slot, CloseReason::Deadline);
        }
    }

    /// The driver could not write to the chunk in `slot`: close it (what it holds up to
    /// the failed write is still read back) so the next packet starts a fresh one.
    pub fn handle_write_error(&mut self, slot: Slot) {
        if self.chunks.contains(slot) {
            self.close(slot, CloseReason::WriteError);
        }
    }

    /// Stopping: close every open chunk.
    pub fn close_all(&mut self) {
        let slots: Vec<Slot> = self.chunks.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            self.close(slot, CloseReason::Shutdown);
        }
    }

    /// The next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<IngestAction> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due: the earliest deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.chunks.iter().map(|(_, chunk)| chunk.deadline).min()
    }

    /// Recordings with an open chunk.
    pub fn open_chunks(&self) -> usize {
        self.chunks.len()
    }

    /// The next number for a chunk or a seal: the time in ms, above every number given.
    fn take_seq(&mut self, now: Now) -> u64 {
        let seq = self.next_seq.max(now.unix_us / 1000);
        self.next_seq = seq + 1;
        seq
    }

    fn open_chunk(&mut self, now: Now, recording_id: &str) -> Slot {
        let seq = self.take_seq(now);
        let header = ChunkHeader {
            recording_id: recording_id.to_owned(),
            instance: self.instance.clone(),
            seq,
            start_us: now.unix_us,
        };
        let slot = self.chunks.insert(OpenChunk {
            recording_id: recording_id.to_owned(),
            deadline: now.monotonic + self.policy.duration,
            bytes: header.encoded_len() as u64,
            records: 0,
        });
        self.open.insert(recording_id.to_owned(), slot);
        self.actions.push_back(IngestAction::Open { slot, header });
        slot
    }

    fn close(&mut self, slot: Slot, reason: CloseReason) {
        let chunk = self.chunks.remove(slot);
        self.open.remove(&chunk.recording_id);
        self.actions.push_back(IngestAction::Close { slot, reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND_US: u64 = 1_000_000;

    /// The size of a record of `rtp_len` bytes of RTP with these ids, by the format.
    fn record_len_for(meeting: &str, participant: &str, rtp_len: usize) -> usize {
        crate::chunk::RECORD_PREFIX_LEN + 17 + meeting.len() + participant.len() + rtp_len
    }

    struct Clock {
        start: Instant,
        unix_start_us: u64,
    }

    impl Clock {
        fn new() -> Clock {
            Clock {
                start: Instant::now(),
                unix_start_us: 1_790_000_000 * SECOND_US,
            }
        }

        fn at(&self, offset: Duration) -> Now {
            Now {
                monotonic: self.start + offset,
                unix_us: self.unix_start_us + offset.as_micros() as u64,
            }
        }
    }

    fn policy() -> ChunkPolicy {
        ChunkPolicy {
            duration: Duration::from_secs(4),
            max_bytes: 10_000,
        }
    }

    fn drain(core: &mut IngestCore) -> Vec<IngestAction> {
        std::iter::from_fn(|| core.poll_action()).collect()
    }

    fn opened(actions: &[IngestAction]) -> Vec<(Slot, String, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                IngestAction::Open { slot, header } => {
                    Some((*slot, header.recording_id.clone(), header.seq))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_chunk_per_recording_until_its_deadline() {
        let clock = Clock::new();
        let mut core = IngestCore::new("rec-a", policy(), 0);
        let a = core.handle_packet(clock.at(Duration::ZERO), "A", 100);
        let b = core.handle_packet(clock.at(Duration::from_millis(5)), "B", 100);
        let actions = drain(&mut core);
        assert_eq!(
            opened(&actions),
            [
                (a, "A".into(), 1_790_000_000_000),
                (b, "B".into(), 1_790_000_000_005)
            ]
        );
        let IngestAction::Open { header, .. } = &actions[0] else {
            panic!()
        };
        assert_eq!(header.instance, "rec-a");
        assert_eq!(header.start_us, 1_790_000_000 * SECOND_US);
        assert_ne!(a, b);
        for ms in [10, 1000, 3999] {
            let now = clock.at(Duration::from_millis(ms));
            assert_eq!(core.handle_packet(now, "A", 100), a);
            core.handle_timeout(now.monotonic);
        }
        assert!(drain(&mut core).is_empty(), "nothing closes before 4 s");
        assert_eq!(
            core.poll_timeout(),
            Some(clock.at(Duration::from_secs(4)).monotonic)
        );
        core.handle_timeout(clock.at(Duration::from_secs(4)).monotonic);
        assert_eq!(
            drain(&mut core),
            [IngestAction::Close {
                slot: a,
                reason: CloseReason::Deadline
            }]
        );
        assert_eq!(core.open_chunks(), 1);
        // B's deadline is 5 ms later.
        core.handle_timeout(clock.at(Duration::from_millis(4005)).monotonic);
        assert_eq!(
            drain(&mut core),
            [IngestAction::Close {
                slot: b,
                reason: CloseReason::Deadline
            }]
        );
        assert_eq!(core.poll_timeout(), None);
        // The next packet of A opens a new chunk with a later number.
        let now = clock.at(Duration::from_secs(5));
        let slot = core.handle_packet(now, "A", 100);
        assert_eq!(
            opened(&drain(&mut core)),
            [(slot, "A".into(), 1_790_000_005_000)]
        );
    }

    #[test]
    fn a_chunk_closes_before_it_would_pass_its_size() {
        let clock = Clock::new();
        let mut core = IngestCore::new("i", policy(), 0);
        let now = clock.at(Duration::ZERO);
        let header_len = 27 + 1 + 1;
        let record = 1000;
        let first = core.handle_packet(now, "A", record);
        drain(&mut core);
        // 9 records fit with the header (27 + 2 + 9 * 1000 <= 10 000); the 10th does not.
        for _ in 1..9 {
            assert_eq!(core.handle_packet(now, "A", record), first);
        }
        assert!(drain(&mut core).is_empty());
        assert!(header_len + 9 * record <= 10_000 && header_len + 10 * record > 10_000);
        let second = core.handle_packet(now, "A", record);
        let actions = drain(&mut core);
        assert_eq!(
            actions[0],
            IngestAction::Close {
                slot: first,
                reason: CloseReason::Size
            }
        );
        assert_eq!(
            opened(&actions[1..]),
            [(second, "A".into(), 1_790_000_000_001)]
        );
        // A record larger than the limit still gets a chunk of its own.
        let mut core = IngestCore::new("i", policy(), 0);
        core.handle_packet(now, "A", 20_000);
        assert_eq!(opened(&drain(&mut core)).len(), 1);
    }

    #[test]
    fn end_closes_at_once_and_late_packets_open_a_new_chunk() {
        let clock = Clock::new();
        let mut core = IngestCore::new("i", policy(), 0);
        let now = clock.at(Duration::ZERO);
        let a = core.handle_packet(now, "A", 100);
        let b = core.handle_packet(now, "B", 100);
        drain(&mut core);
        core.handle_end(now, "A");
        core.handle_end(now, "nobody");
        let seal = |recording: &str, seq| IngestAction::Seal {
            key: SealKey {
                recording_id: recording.into(),
                instance: "i".into(),
                seq,
            },
        };
        // A's chunk was 1_790_000_000_000, B's the next number: the seals come after both.
        assert_eq!(
            drain(&mut core),
            [
                IngestAction::Close {
                    slot: a,
                    reason: CloseReason::End
                },
                seal("A", 1_790_000_000_002),
                seal("nobody", 1_790_000_000_003),
            ]
        );
        assert_eq!(core.open_chunks(), 1);
        let late = core.handle_packet(now, "A", 100);
        let actions = drain(&mut core);
        assert_eq!(
            opened(&actions),
            [(late, "A".into(), 1_790_000_000_004)],
            "a late packet's chunk is numbered after the seal"
        );
        assert_ne!(late, b);
        core.close_all();
        let mut closed: Vec<_> = drain(&mut core);
        closed.sort_by_key(|a| match a {
            IngestAction::Close { slot, .. } | IngestAction::Open { slot, .. } => *slot,
            IngestAction::Seal { .. } => Slot::MAX,
        });
        let mut expected = vec![
            IngestAction::Close {
                slot: late,
                reason: CloseReason::Shutdown,
            },
            IngestAction::Close {
                slot: b,
                reason: CloseReason::Shutdown,
            },
        ];
        expected.sort_by_key(|a| match a {
            IngestAction::Close { slot, .. } | IngestAction::Open { slot, .. } => *slot,
            IngestAction::Seal { .. } => Slot::MAX,
        });
        assert_eq!(closed, expected);
        assert_eq!(core.open_chunks(), 0);
    }

    #[test]
    fn sequence_numbers_never_repeat_or_go_back() {
        let clock = Clock::new();
        // A floor above the clock (a previous run that ran ahead) wins...
        let floor = 1_790_000_000_000 + 50;
        let mut core = IngestCore::new("i", policy(), floor);
        let now = clock.at(Duration::ZERO);
        let mut seqs = Vec::new();
        // ...and many chunks within one millisecond (End after each packet) still get
        // distinct, growing numbers.
        for i in 0..20 {
            let id = format!("R{}", i % 3);
            core.handle_packet(now, &id, 100);
            core.handle_end(now, &id);
            seqs.extend(drain(&mut core).into_iter().filter_map(|a| match a {
                IngestAction::Open { header, .. } => Some(header.seq),
                IngestAction::Seal { key } => Some(key.seq),
                IngestAction::Close { .. } => None,
            }));
        }
        // A chunk and a seal each time.
        assert_eq!(seqs.len(), 40);
        assert_eq!(seqs[0], floor);
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        // Once the clock passes the numbers given, they follow the clock again.
        let later = clock.at(Duration::from_secs(1));
        core.handle_packet(later, "R0", 100);
        assert_eq!(
            opened(&drain(&mut core))[0].2,
            1_790_000_001_000,
            "clock time in ms"
        );
        // A clock that steps back does not take the numbers with it.
        let back = Now {
            unix_us: clock.unix_start_us - 10 * SECOND_US,
            ..later
        };
        core.handle_end(back, "R0");
        drain(&mut core);
        core.handle_packet(back, "R0", 100);
        assert_eq!(opened(&drain(&mut core))[0].2, 1_790_000_001_002);
    }

    #[test]
    fn write_errors_close_the_chunk() {
        let clock = Clock::new();
        let mut core = IngestCore::new("i", policy(), 0);
        let now = clock.at(Duration::ZERO);
        let a = core.handle_packet(now, "A", 100);
        drain(&mut core);
        core.handle_write_error(a);
        core.handle_write_error(a);
        assert_eq!(
            drain(&mut core),
            [IngestAction::Close {
                slot: a,
                reason: CloseReason::WriteError
            }]
        );
        assert_eq!(core.handle_packet(now, "A", 100), a, "the slot is reused");
        assert_eq!(opened(&drain(&mut core)).len(), 1);
    }

    #[test]
    fn record_sizes_match_the_chunk_format() {
        use fanout_forwarder::recording::{MediaCodec, TapPacket};
        use fanout_forwarder::sfu::TrackKind;
        let rtp = [0x80u8; 100];
        let packet = TapPacket {
            recording_id: "r",
            meeting_id: "meet",
            participant_id: "alice",
            track: TrackKind::Audio,
            encoding: 0,
            codec: MediaCodec::Opus,
            clock_rate: 48_000,
            arrival_us: 0,
            rtp: &rtp,
        };
        assert_eq!(
            crate::chunk::record_len(&packet),
            record_len_for("meet", "alice", 100)
        );
    }
}
