//! SIGKILL the real `fanout-recorder` in the middle of a recording, tear the last record
//! of the chunk it left open (as a kill in the middle of a write would), start it again on
//! the same spool: what was stored before the kill is intact, the open chunk is uploaded
//! cut to its whole records, and the only packets missing are of that open chunk.

mod common;

use common::{packet, stored_chunks, stored_packets, Recorder, SentPacket, TapSender};
use fanout_recorder::chunk::ChunkTail;
use fanout_recorder::store::RecordingStore;

const RECORDING: &str = "rec-crash";
/// Packets stored in closed chunks before the kill.
const STORED_BEFORE: u32 = 100;
/// Packets sent into the chunk that is open at the kill.
const OPEN_AT_KILL: u32 = 50;
/// Packets after the restart.
const AFTER_RESTART: u32 = 50;

#[test]
fn a_killed_recorder_loses_at_most_its_open_chunk() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tap.sock");
    let spool = dir.path().join("spool");
    let store_dir = dir.path().join("store");
    let store = RecordingStore::local(&store_dir).unwrap();
    let args = [
        "--socket".to_owned(),
        socket.display().to_string(),
        "--spool".into(),
        spool.display().to_string(),
        "--store".into(),
        store_dir.display().to_string(),
        "--instance".into(),
        "rec-crash-test".into(),
        // Long enough that the kill comes well before the open chunk's deadline.
        "--chunk-seconds".into(),
        "3".into(),
    ];
    let sent: Vec<SentPacket> = (0..STORED_BEFORE + OPEN_AT_KILL + AFTER_RESTART)
        .map(|i| packet(RECORDING, i))
        .collect();
    let (before, rest) = sent.split_at(STORED_BEFORE as usize);
    let (open_at_kill, after_restart) = rest.split_at(OPEN_AT_KILL as usize);

    let recorder = Recorder::start(&args, &[]);
    let mut tap = TapSender::new(&socket);
    for p in before {
        tap.packet(p);
    }
    // The first chunk closes at its deadline and is stored.
    common::wait_for("the first packets stored", || {
        let stored = stored_packets(&stored_chunks(&runtime, &store, RECORDING));
        (stored.len() == before.len()).then_some(())
    });
    // Counted once it has left the spool.
    recorder.wait_metric("fanout_recorder_chunks_uploaded_total", 1);
    let stored_before_kill: Vec<_> = runtime
        .block_on(store.list_chunks(RECORDING))
        .unwrap()
        .into_iter()
        .map(|key| {
            let bytes = runtime.block_on(store.get_chunk(&key)).unwrap();
            (key, bytes)
        })
        .collect();

    // A new chunk opens for these; the recorder dies while it is open.
    for p in open_at_kill {
        tap.packet(p);
    }
    recorder.wait_metric(
        "fanout_recorder_packets_total",
        sent.len() as u64 - u64::from(AFTER_RESTART),
    );
    assert_eq!(recorder.metric("fanout_recorder_open_recordings"), 1);
    recorder.signal(libc::SIGKILL);
    let status = recorder.wait_exit();
    assert!(!status.success());
    let spooled = common::spooled_chunks(&spool);
    assert_eq!(
        spooled.len(),
        1,
        "the open chunk's file is left in the spool"
    );
    // As if the kill had come in the middle of writing the last record: cut it.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&spooled[0])
        .unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len - 10).unwrap();
    drop(file);

    // The restart uploads the open chunk first, then records on.
    let recorder = Recorder::start(&args, &[]);
    let recovered = recorder.metric("fanout_recorder_chunks_recovered_total");
    assert!(recovered <= 1);
    recorder.wait_metric("fanout_recorder_chunks_uploaded_total", recovered);
    let mut tap = TapSender::new(&socket);
    for p in after_restart {
        tap.packet(p);
    }
    tap.end(RECORDING);
    recorder.wait_metric("fanout_recorder_chunks_closed_total{reason=\"end\"}", 1);
    recorder.signal(libc::SIGTERM);
    let status = recorder.wait_exit();
    assert!(status.success(), "{status:?}");

    // What was stored before the kill is still there, byte for byte.
    for (key, bytes) in &stored_before_kill {
        let now = runtime.block_on(store.get_chunk(key)).unwrap();
        assert_eq!(&now, bytes, "{key} changed");
    }
    let chunks = stored_chunks(&runtime, &store, RECORDING);
    let unclosed: Vec<_> = chunks
        .iter()
        .filter(|(_, chunk)| chunk.tail != ChunkTail::Closed)
        .collect();
    assert_eq!(
        unclosed.len() as u64,
        recovered,
        "only the recovered chunk lacks its trailer"
    );
    for (key, chunk) in &unclosed {
        assert_eq!(
            chunk.tail,
            ChunkTail::Unclosed,
            "{key}: cut to whole records"
        );
    }

    // Stored = sent, less a run of packets that were all in the chunk open at the kill.
    let stored = stored_packets(&chunks);
    let kept = stored
        .iter()
        .zip(&sent)
        .take_while(|(stored, sent)| stored == sent)
        .count();
    let after_gap = &stored[kept..];
    let resumed = sent.len() - after_gap.len();
    assert!(
        resumed >= kept,
        "more packets stored than sent: {} of {}",
        stored.len(),
        sent.len()
    );
    assert!(
        sent[resumed..] == *after_gap,
        "after the gap, the stored packets are not the last ones sent"
    );
    let missing = kept..resumed;
    assert!(
        !missing.is_empty(),
        "the torn last record cannot have been stored"
    );
    let open_chunk = before.len()..before.len() + open_at_kill.len();
    assert!(
        missing.is_empty() || (open_chunk.start <= missing.start && missing.end <= open_chunk.end),
        "missing packets {missing:?} outside the chunk open at the kill {open_chunk:?}"
    );
    eprintln!(
        "recovered chunks: {recovered}; packets of the open chunk kept: {} of {}",
        open_at_kill.len() - missing.len(),
        open_at_kill.len()
    );
    assert_eq!(
        common::spooled_chunks(&spool),
        Vec::<std::path::PathBuf>::new()
    );
}
