//! The real `fanout-recorder run` binary, fed tap datagrams for two recordings over its
//! socket (encoded by the forwarder's `recording::encode_packet`), with malformed ones
//! mixed in: End closes one recording's chunk at once and seals it once its chunks are
//! stored, SIGTERM closes the other's (no seal), and the store holds exactly what was
//! sent, in order, for a local directory and for S3 (moto).

mod common;

use std::path::Path;

use common::{packet, stored_chunks, stored_packets, Recorder, S3Server, SentPacket, TapSender};
use fanout_recorder::chunk::ChunkTail;
use fanout_recorder::store::{RecordingStore, Sealing};

const PACKETS: u32 = 240;
/// Chunks close by size here (their deadline is far), so where they close is decided by
/// the packets alone: about 60 packets each.
const MAX_CHUNK_BYTES: u32 = 40_000;

/// Drive one recorder through the scenario and check the store it wrote to.
fn scenario(dir: &Path, store_args: &[String], env: &[(&str, &str)], store: &RecordingStore) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let socket = dir.join("tap.sock");
    let spool = dir.join("spool");
    let mut args = vec![
        "--socket".to_owned(),
        socket.display().to_string(),
        "--spool".into(),
        spool.display().to_string(),
        "--instance".into(),
        "rec-test-1".into(),
        "--chunk-seconds".into(),
        "600".into(),
        "--max-chunk-bytes".into(),
        MAX_CHUNK_BYTES.to_string(),
    ];
    args.extend_from_slice(store_args);
    let recorder = Recorder::start(&args, env);
    // A second recorder on the same socket and spool is refused, and touches nothing.
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_fanout-recorder"))
        .arg("run")
        .args(&args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let error = String::from_utf8_lossy(&second.stderr);
    assert!(error.contains("in use by another recorder"), "{error}");
    let mut tap = TapSender::new(&socket);

    let mut sent_a = Vec::new();
    let mut sent_b = Vec::new();
    let mut malformed = 0;
    for i in 0..PACKETS {
        let (a, b) = (packet("rec-A", i), packet("rec-B", i));
        tap.packet(&a);
        tap.packet(&b);
        sent_a.push(a);
        sent_b.push(b);
        if i.is_multiple_of(25) {
            // Dropped and counted; never in a chunk.
            tap.raw(b"definitely not a tap message");
            tap.raw(&[b'F', b'T', 1, 1, 9]);
            malformed += 2;
        }
    }
    recorder.wait_metric("fanout_recorder_packets_total", u64::from(2 * PACKETS));
    let by_size = recorder.metric("fanout_recorder_chunks_closed_total{reason=\"size\"}");
    assert!(by_size >= 6, "{by_size} chunks closed by size");

    // rec-A ends: its last chunk closes and is stored before any shutdown.
    let tail_a = packet("rec-A", PACKETS);
    tap.packet(&tail_a);
    sent_a.push(tail_a);
    tap.end("rec-A");
    recorder.wait_metric("fanout_recorder_chunks_closed_total{reason=\"end\"}", 1);
    // Sealed once its chunks are stored: the seal says the store holds all of rec-A.
    recorder.wait_metric("fanout_recorder_seals_stored_total", 1);
    let objects = runtime.block_on(store.list_recording("rec-A")).unwrap();
    let stored = stored_packets(&stored_chunks(&runtime, store, "rec-A"));
    assert_eq!(
        stored.len(),
        sent_a.len(),
        "every chunk is stored before the seal"
    );
    assert_eq!(objects.seals.len(), 1);
    assert_eq!(objects.seals[0].instance, "rec-test-1");
    assert_eq!(objects.sealing(), Sealing::Sealed { recorders: 1 });
    assert_eq!(recorder.metric("fanout_recorder_seals_waiting"), 0);

    // rec-B's last packets go into a chunk that only the stop closes.
    for i in PACKETS..PACKETS + 7 {
        let b = packet("rec-B", i);
        tap.packet(&b);
        sent_b.push(b);
    }
    let total = (sent_a.len() + sent_b.len()) as u64;
    recorder.wait_metric("fanout_recorder_packets_total", total);
    assert_eq!(
        recorder.metric("fanout_recorder_malformed_total{reason=\"bad_magic\"}"),
        malformed / 2
    );
    assert_eq!(
        recorder.metric("fanout_recorder_malformed_total{reason=\"unknown_track_kind\"}"),
        malformed / 2
    );
    assert_eq!(recorder.metric("fanout_recorder_ends_total"), 1);
    assert_eq!(
        recorder.metric("fanout_recorder_open_recordings"),
        1,
        "rec-B only"
    );
    assert_eq!(
        recorder.metric("fanout_recorder_chunks_closed_total{reason=\"deadline\"}"),
        0
    );

    recorder.signal(libc::SIGTERM);
    let status = recorder.wait_exit();
    assert!(status.success(), "{status:?}");

    for (recording, sent) in [("rec-A", &sent_a), ("rec-B", &sent_b)] {
        let chunks = stored_chunks(&runtime, store, recording);
        assert!(chunks.len() >= 4, "{recording}: {} chunks", chunks.len());
        for (key, chunk) in &chunks {
            assert_eq!(chunk.tail, ChunkTail::Closed, "{key}");
            assert!(!chunk.records.is_empty(), "{key}");
            // The size limit counts the header and records; the trailer comes on top.
            assert!(
                chunk.valid_len <= u64::from(MAX_CHUNK_BYTES) + 8,
                "{key}: {}",
                chunk.valid_len
            );
        }
        let seqs: Vec<u64> = chunks.iter().map(|(k, _)| k.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let stored: Vec<SentPacket> = stored_packets(&chunks);
        assert_eq!(stored.len(), sent.len(), "{recording}: packet count");
        assert!(
            stored == *sent,
            "{recording}: stored packets differ from those sent"
        );
    }
    // A stop closes rec-B's chunk but does not seal it: only the forwarder's End does.
    let objects = runtime.block_on(store.list_recording("rec-B")).unwrap();
    assert!(objects.seals.is_empty(), "{:?}", objects.seals);
    assert_eq!(objects.sealing(), Sealing::NoSeal);
    let left = common::spooled_chunks(&spool);
    assert!(
        left.is_empty(),
        "spool not empty after a clean stop: {left:?}"
    );
    assert!(!socket.exists(), "the socket file is removed at stop");
}

#[test]
fn local_store_holds_exactly_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = RecordingStore::local(&store_dir).unwrap();
    let args = [
        "--store".to_owned(),
        format!("file://{}", store_dir.display()),
    ];
    scenario(dir.path(), &args, &[], &store);
}

#[test]
fn s3_store_holds_exactly_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = S3Server::start(&dir.path().join("s3")) else {
        return;
    };
    let store = RecordingStore::open(&s3.store_config(dir.path())).unwrap();
    // The binary gets its credentials from the environment, as deployments often do.
    let args = [
        "--store".to_owned(),
        format!("s3://{}", s3.bucket),
        "--s3-endpoint".into(),
        s3.endpoint.clone(),
        "--s3-region".into(),
        "us-east-1".into(),
    ];
    let env = [
        ("AWS_ACCESS_KEY_ID", common::ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", common::SECRET_KEY),
    ];
    scenario(dir.path(), &args, &env, &store);
}
