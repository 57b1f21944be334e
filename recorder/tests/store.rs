//! One conformance suite for `RecordingStore`, run against each backend: a local
//! directory, object_store's in-memory store, and a real S3-compatible server (moto).

mod common;

use std::sync::Arc;

use bytes::Bytes;
use fanout_recorder::store::{ChunkKey, RecordingStore, SealKey, Sealing, StoreError};
use futures::TryStreamExt;

fn key(recording: &str, instance: &str, seq: u64) -> ChunkKey {
    ChunkKey {
        recording_id: recording.into(),
        instance: instance.into(),
        seq,
    }
}

async fn conformance(store: &RecordingStore, scratch: &std::path::Path) {
    // Chunks of one recording from two instances, stored out of order, list in order
    // (instance, then sequence number, as numbers: 9 before 10).
    let keys = [
        key("rec-1", "rec-b", 10),
        key("rec-1", "rec-a", 1_790_000_000_123),
        key("rec-1", "rec-b", 9),
        key("rec-1", "rec-a", 5),
    ];
    for (i, k) in keys.iter().enumerate() {
        store
            .put_chunk(k, Bytes::from(format!("chunk {i} of {k}")))
            .await
            .unwrap();
    }
    store
        .put_chunk(&key("rec-10", "rec-a", 1), Bytes::from_static(b"other"))
        .await
        .unwrap();
    let listed = store.list_chunks("rec-1").await.unwrap();
    assert_eq!(
        listed,
        [
            key("rec-1", "rec-a", 5),
            key("rec-1", "rec-a", 1_790_000_000_123),
            key("rec-1", "rec-b", 9),
            key("rec-1", "rec-b", 10),
        ],
        "{store}"
    );
    assert_eq!(
        store.list_chunks("rec-10").await.unwrap().len(),
        1,
        "no prefix bleed"
    );
    assert!(store.list_chunks("nothing").await.unwrap().is_empty());
    for (i, k) in keys.iter().enumerate() {
        let bytes = store.get_chunk(k).await.unwrap();
        assert_eq!(bytes, format!("chunk {i} of {k}").as_bytes(), "{store}");
    }
    // A retried upload replaces the object.
    store
        .put_chunk(&keys[0], Bytes::from_static(b"again"))
        .await
        .unwrap();
    assert_eq!(store.get_chunk(&keys[0]).await.unwrap(), &b"again"[..]);
    assert!(matches!(
        store.get_chunk(&key("rec-1", "rec-a", 6)).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.list_chunks("../rec-1").await,
        Err(StoreError::InvalidId(_))
    ));

    // Seals sit next to the chunks: one listing has both, and chunk listings skip them.
    let seal = |instance: &str, seq| SealKey {
        recording_id: "rec-1".into(),
        instance: instance.into(),
        seq,
    };
    store
        .put_seal(&seal("rec-a", 1_790_000_000_124))
        .await
        .unwrap();
    store
        .put_seal(&seal("rec-a", 1_790_000_000_124))
        .await
        .unwrap();
    let objects = store.list_recording("rec-1").await.unwrap();
    assert_eq!(objects.chunks, listed, "{store}");
    assert_eq!(objects.seals, [seal("rec-a", 1_790_000_000_124)], "{store}");
    assert_eq!(objects.sealing(), Sealing::Unsealed(vec!["rec-b".into()]));
    store.put_seal(&seal("rec-b", 11)).await.unwrap();
    let objects = store.list_recording("rec-1").await.unwrap();
    assert_eq!(
        objects.sealing(),
        Sealing::Sealed { recorders: 2 },
        "{store}"
    );
    assert_eq!(store.list_chunks("rec-1").await.unwrap(), listed);
    assert!(store
        .list_recording("rec-10")
        .await
        .unwrap()
        .seals
        .is_empty());

    // The result, from memory and from a file large enough for two parts.
    assert!(matches!(
        store.get_output("rec-1").await,
        Err(StoreError::NotFound(_))
    ));
    store
        .put_output("rec-1", Bytes::from_static(b"webm bytes"))
        .await
        .unwrap();
    assert_eq!(store.get_output("rec-1").await.unwrap(), &b"webm bytes"[..]);
    let big: Vec<u8> = (0..(11 << 20) as u32)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let input = scratch.join("output.webm");
    std::fs::write(&input, &big).unwrap();
    assert_eq!(
        store.put_output_file("rec-2", &input).await.unwrap(),
        big.len() as u64
    );
    let output = scratch.join("fetched.webm");
    assert_eq!(
        store.get_output_to_file("rec-2", &output).await.unwrap(),
        big.len() as u64
    );
    assert!(
        std::fs::read(&output).unwrap() == big,
        "{store}: result differs"
    );
    // Streamed: the size up front, then every byte in order.
    let streamed = store.get_output_stream("rec-2").await.unwrap();
    assert_eq!(streamed.size, big.len() as u64);
    let pieces: Vec<Bytes> = streamed.pieces.try_collect().await.unwrap();
    assert!(pieces.concat() == big, "{store}: streamed result differs");
    assert!(matches!(
        store.get_output_stream("rec-3").await,
        Err(StoreError::NotFound(_))
    ));
    // Outputs are not chunks.
    assert!(store.list_chunks("rec-2").await.unwrap().is_empty());
}

#[tokio::test]
async fn local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = RecordingStore::local(&dir.path().join("store")).unwrap();
    conformance(&store, dir.path()).await;
    // The layout on disk is the documented key layout.
    assert!(dir
        .path()
        .join("store/recordings/rec-1/chunks/rec-b-0000000009.chunk")
        .is_file());
    assert!(dir
        .path()
        .join("store/recordings/rec-1/output.webm")
        .is_file());
    // A file is read in pieces, not into one buffer.
    let streamed = store.get_output_stream("rec-2").await.unwrap();
    let largest = streamed
        .pieces
        .try_fold(
            0,
            |largest, piece| async move { Ok(largest.max(piece.len())) },
        )
        .await
        .unwrap();
    assert!(largest > 0 && (largest as u64) < streamed.size);
}

#[tokio::test]
async fn in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = RecordingStore::from_object_store(
        Arc::new(object_store::memory::InMemory::new()),
        "memory",
    );
    conformance(&store, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_compatible_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("s3");
    let Some(s3) = tokio::task::spawn_blocking(move || common::S3Server::start(&data))
        .await
        .unwrap()
    else {
        return;
    };
    let store = RecordingStore::open(&s3.store_config(dir.path())).unwrap();
    conformance(&store, dir.path()).await;
    // Under a prefix: the same keys below it, and nothing outside it.
    let mut config = s3.store_config(dir.path());
    config.url = format!("s3://{}/tenant-7/", s3.bucket);
    let prefixed = RecordingStore::open(&config).unwrap();
    prefixed
        .put_chunk(&key("rec-9", "rec-a", 1), Bytes::from_static(b"p"))
        .await
        .unwrap();
    assert_eq!(prefixed.list_chunks("rec-9").await.unwrap().len(), 1);
    assert!(store.list_chunks("rec-9").await.unwrap().is_empty());
    assert_eq!(prefixed.list_chunks("rec-1").await.unwrap().len(), 0);
}
