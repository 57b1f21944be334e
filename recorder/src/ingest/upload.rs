//! Background uploads of closed chunks: sync, upload, retry with backoff, then remove from
//! the spool. Runs on a small tokio runtime of its own, beside the synchronous receive
//! loop, which hands it chunks through a channel and never waits for it.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::metrics::IngestMetrics;
use super::spool::SpooledChunk;
use crate::store::{RecordingStore, StoreError};

/// How uploads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadSettings {
    /// Chunks uploaded at once.
    pub concurrency: usize,
    /// The wait after a first failure; doubled after each further one...
    pub first_backoff: Duration,
    /// ...up to this.
    pub max_backoff: Duration,
}

impl Default for UploadSettings {
    fn default() -> Self {
        UploadSettings {
            concurrency: 4,
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl UploadSettings {
    /// The wait before attempt `failures + 1`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.first_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Takes closed chunks and stores them.
#[derive(Debug)]
pub struct Uploader {
    queue: mpsc::UnboundedSender<SpooledChunk>,
    dispatcher: tokio::task::JoinHandle<()>,
    metrics: Arc<IngestMetrics>,
}

impl Uploader {
    /// Start uploading on `runtime`.
    pub fn start(
        runtime: &Runtime,
        store: RecordingStore,
        settings: UploadSettings,
        metrics: Arc<IngestMetrics>,
    ) -> Uploader {
        let (queue, receiver) = mpsc::unbounded_channel();
        let dispatcher = runtime.spawn(dispatch(receiver, store, settings, metrics.clone()));
        Uploader {
            queue,
            dispatcher,
            metrics,
        }
    }

    /// Queue a closed chunk. Never blocks: the spool is the buffer.
    pub fn submit(&self, chunk: SpooledChunk) {
        self.metrics.spool_backlog.fetch_add(1, Ordering::Relaxed);
        if let Err(refused) = self.queue.send(chunk) {
            // Only after finish(), which consumes self: cannot happen. The file stays in
            // the spool for the next run either way.
            warn!(file = %refused.0.path.display(), "upload queue closed; chunk left in the spool");
            IngestMetrics::decrement(&self.metrics.spool_backlog);
        }
    }

    /// No more chunks: wait up to `timeout` for the queued ones to be stored. Returns how
    /// many were not; they stay in the spool, and the next run uploads them.
    pub fn finish(self, runtime: &Runtime, timeout: Duration) -> u64 {
        drop(self.queue);
        let dispatcher = self.dispatcher;
        let done = runtime.block_on(async move { tokio::time::timeout(timeout, dispatcher).await });
        let left = self.metrics.spool_backlog.load(Ordering::Relaxed);
        if done.is_err() {
            self.metrics
                .chunks_failed
                .fetch_add(left, Ordering::Relaxed);
            warn!(
                left,
                "uploads still pending at the shutdown timeout; left in the spool for the next run"
            );
        }
        left
    }
}

async fn dispatch(
    mut receiver: mpsc::UnboundedReceiver<SpooledChunk>,
    store: RecordingStore,
    settings: UploadSettings,
    metrics: Arc<IngestMetrics>,
) {
    let permits = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let mut uploads = JoinSet::new();
    while let Some(chunk) = receiver.recv().await {
        // Never closed: the semaphore lives in this function.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (store, metrics) = (store.clone(), metrics.clone());
        uploads.spawn(async move {
            upload_until_stored(&store, &chunk, settings, &metrics).await;
            drop(permit);
        });
        while uploads.try_join_next().is_some() {}
    }
    while uploads.join_next().await.is_some() {}
}

/// Upload one chunk, retrying until it is stored (or the runtime is shut down).
async fn upload_until_stored(
    store: &RecordingStore,
    chunk: &SpooledChunk,
    settings: UploadSettings,
    metrics: &IngestMetrics,
) {
    let mut failures = 0u32;
    loop {
        match upload_once(store, chunk).await {
            Ok(bytes) => {
                if let Err(e) = std::fs::remove_file(&chunk.path) {
                    // Stored; a later start uploads it again, which is harmless.
                    warn!(file = %chunk.path.display(), error = %e, "cannot remove an uploaded chunk");
                }
                // Counted once out of the spool: a chunk counted as uploaded is gone from it.
                IngestMetrics::decrement(&metrics.spool_backlog);
                metrics.chunks_uploaded.fetch_add(1, Ordering::Relaxed);
                metrics.uploaded_bytes.fetch_add(bytes, Ordering::Relaxed);
                debug!(key = %chunk.key, bytes, records = chunk.records, "chunk stored");
                if failures > 0 {
                    info!(key = %chunk.key, failures, "chunk stored after retries");
                }
                return;
            }
            Err(UploadError::Unreadable(e)) => {
                IngestMetrics::decrement(&metrics.spool_backlog);
                metrics.chunks_failed.fetch_add(1, Ordering::Relaxed);
                error!(file = %chunk.path.display(), error = %e, "cannot read a spooled chunk; not uploaded");
                return;
            }
            Err(UploadError::Store(e)) => {
                failures += 1;
                metrics.upload_retries.fetch_add(1, Ordering::Relaxed);
                let wait = settings.backoff(failures);
                warn!(key = %chunk.key, failures, error = %e, retry_in = ?wait, "chunk upload failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[derive(Debug)]
enum UploadError {
    /// The spool file is gone or unreadable: retrying will not help.
    Unreadable(std::io::Error),
    Store(StoreError),
}

async fn upload_once(store: &RecordingStore, chunk: &SpooledChunk) -> Result<u64, UploadError> {
    let path = chunk.path.clone();
    let len = chunk.len;
    let bytes = tokio::task::spawn_blocking(move || read_synced(&path, len))
        .await
        .map_err(|e| UploadError::Unreadable(std::io::Error::other(e)))?
        .map_err(UploadError::Unreadable)?;
    let size = bytes.len() as u64;
    store
        .put_chunk(&chunk.key, bytes)
        .await
        .map_err(UploadError::Store)?;
    Ok(size)
}

/// Sync the file to disk (so the spool copy survives a power loss until it is stored),
/// then read its first `len` bytes.
fn read_synced(path: &Path, len: u64) -> std::io::Result<Bytes> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    file.sync_all()?;
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(len).read_to_end(&mut bytes)?;
    if (bytes.len() as u64) < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{} is shorter than its {len} good bytes", path.display()),
        ));
    }
    Ok(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkHeader, ChunkTail};
    use crate::ingest::spool::Spool;
    use crate::store::ChunkKey;
    use object_store::memory::InMemory;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let settings = UploadSettings {
            concurrency: 1,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let waits: Vec<_> = (1..=6).map(|f| settings.backoff(f).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(settings.backoff(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn stored_chunks_leave_the_spool_and_failures_retry() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let header = ChunkHeader {
            recording_id: "r".into(),
            instance: "i".into(),
            seq: 3,
            start_us: 0,
        };
        let (path, writer) = spool.create(&header).unwrap();
        writer.close().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        let memory = Arc::new(InMemory::new());
        let store = RecordingStore::from_object_store(memory, "memory");
        let metrics = Arc::new(IngestMetrics::default());
        let settings = UploadSettings {
            concurrency: 2,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        };
        let uploader = Uploader::start(&runtime, store.clone(), settings, metrics.clone());
        let key = ChunkKey {
            recording_id: "r".into(),
            instance: "i".into(),
            seq: 3,
        };
        uploader.submit(SpooledChunk {
            path: path.clone(),
            key: key.clone(),
            len,
            records: 0,
            tail: ChunkTail::Closed,
        });
        // A chunk whose file vanished is given up on, not retried forever.
        uploader.submit(SpooledChunk {
            path: dir.path().join("gone.chunk"),
            key: ChunkKey {
                seq: 4,
                ..key.clone()
            },
            len: 10,
            records: 1,
            tail: ChunkTail::Closed,
        });
        assert_eq!(uploader.finish(&runtime, Duration::from_secs(10)), 0);
        assert!(!path.exists());
        let stored = runtime.block_on(store.get_chunk(&key)).unwrap();
        assert_eq!(stored.len() as u64, len);
        assert_eq!(metrics.chunks_uploaded.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.chunks_failed.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.spool_backlog.load(Ordering::Relaxed), 0);

        // A store that fails (its root is a file, not a directory) is retried with
        // backoff; once it works again the chunk is stored.
        let root = dir.path().join("store");
        let store = RecordingStore::local(&root).unwrap();
        std::fs::remove_dir(&root).unwrap();
        std::fs::write(&root, b"in the way").unwrap();
        let (path, writer) = spool
            .create(&ChunkHeader {
                seq: 5,
                ..header.clone()
            })
            .unwrap();
        writer.close().unwrap();
        let key5 = ChunkKey {
            seq: 5,
            ..key.clone()
        };
        let uploader = Uploader::start(&runtime, store.clone(), settings, metrics.clone());
        let chunk = SpooledChunk {
            path: path.clone(),
            key: key5.clone(),
            len,
            records: 0,
            tail: ChunkTail::Closed,
        };
        uploader.submit(chunk.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metrics.upload_retries.load(Ordering::Relaxed) < 3 {
            assert!(std::time::Instant::now() < deadline, "no retries");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(path.exists(), "kept while not stored");
        std::fs::remove_file(&root).unwrap();
        std::fs::create_dir(&root).unwrap();
        assert_eq!(uploader.finish(&runtime, Duration::from_secs(10)), 0);
        assert!(!path.exists());
        assert_eq!(
            runtime.block_on(store.get_chunk(&key5)).unwrap().len() as u64,
            len
        );

        // Still failing at the shutdown timeout: the file stays for the next run.
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::write(&root, b"in the way").unwrap();
        let (path, writer) = spool.create(&ChunkHeader { seq: 6, ..header }).unwrap();
        writer.close().unwrap();
        let uploader = Uploader::start(&runtime, store, settings, metrics.clone());
        uploader.submit(SpooledChunk {
            path: path.clone(),
            key: ChunkKey { seq: 6, ..key },
            ..chunk
        });
        assert_eq!(uploader.finish(&runtime, Duration::from_millis(100)), 1);
        assert!(path.exists());
        assert_eq!(metrics.chunks_failed.load(Ordering::Relaxed), 2);
    }
}
