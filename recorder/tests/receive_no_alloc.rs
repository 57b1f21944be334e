//! The per-packet path of the tap, end to end minus the socket, does not allocate once a
//! recording's chunk is open: the forwarder's `encode_packet`, the recorder's `decode`,
//! the ingest core's choice of chunk, and the append to the chunk file's buffered writer
//! (flushed to the kernel as the daemon does when the socket is empty).
//!
//! Its own test binary, for the counting global allocator (shared with the forwarder's
//! allocation tests).

#[path = "../../forwarder/tests/common/counting_alloc.rs"]
mod counting_alloc;

use std::time::Duration;

use counting_alloc::allocations_in;
use fanout_forwarder::recording::{self, MediaCodec, TapMessage, TapPacket, MAX_MESSAGE_LEN};
use fanout_forwarder::sfu::TrackKind;
use fanout_recorder::chunk::record_len;
use fanout_recorder::ingest::spool::Spool;
use fanout_recorder::ingest::{ChunkPolicy, IngestAction, IngestCore, Now};

const RECORDINGS: [&str; 3] = ["rec-1", "rec-2", "rec-3"];

#[test]
fn tapped_packets_reach_their_chunk_without_allocating() {
    assert!(allocations_in(|| drop(std::hint::black_box(Vec::<u8>::with_capacity(64)))) > 0);
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let policy = ChunkPolicy {
        duration: Duration::from_secs(3600),
        max_bytes: 1 << 30,
    };
    let mut core = IngestCore::new("rec-a", policy, 0);
    let mut writers: Vec<Option<_>> = (0..RECORDINGS.len()).map(|_| None).collect();
    let mut wire = vec![0u8; MAX_MESSAGE_LEN];
    let mut rtp = vec![0x80u8, 111, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
    rtp.extend((0..1100).map(|i| i as u8));
    let now = Now::read();

    let mut one_packet = |i: usize, wire: &mut [u8], rtp: &mut [u8]| {
        rtp[2..4].copy_from_slice(&(i as u16).to_be_bytes());
        let packet = TapPacket {
            recording_id: RECORDINGS[i % RECORDINGS.len()],
            meeting_id: "standup",
            participant_id: "alice",
            track: TrackKind::Video,
            encoding: 1,
            codec: MediaCodec::Vp8,
            clock_rate: 90_000,
            arrival_us: now.unix_us + i as u64,
            rtp,
        };
        let len = recording::encode_packet(&packet, wire).unwrap();
        let Ok(TapMessage::Packet(packet)) = recording::decode(&wire[..len]) else {
            panic!("decodes");
        };
        let slot = core.handle_packet(now, packet.recording_id, record_len(&packet));
        while let Some(action) = core.poll_action() {
            // Opening is the one allocating step: a chunk per recording, here once.
            let IngestAction::Open { slot, header } = action else {
                panic!("no chunk closes in this test: {action:?}");
            };
            writers[slot] = Some(spool.create(&header).unwrap().1);
        }
        let writer = writers[slot].as_mut().unwrap();
        writer.append(&packet).unwrap();
        if i % 64 == 63 {
            writer.flush().unwrap();
        }
    };

    // Warm-up: opens the three chunks.
    for i in 0..RECORDINGS.len() {
        one_packet(i, &mut wire, &mut rtp);
    }
    let allocations = allocations_in(|| {
        for i in RECORDINGS.len()..20_000 {
            one_packet(i, &mut wire, &mut rtp);
        }
    });
    assert_eq!(allocations, 0, "allocations on the per-packet path");
    assert_eq!(core.open_chunks(), RECORDINGS.len());
}
