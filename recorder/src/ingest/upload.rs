//! Background uploads of closed chunks: sync, upload, retry with backoff, then remove from
//! the spool. Runs on a small tokio runtime of its own, beside the synchronous receive
//! loop, which hands it chunks through a channel and never waits for it.
//!
//! Seals go the same way, but only once every chunk of their recording queued before
//! them is done ([`SealBook`]): a seal that waits for nothing is queued at once; one that
//! waits is stored by the upload that finishes the last chunk it waits for, in that
//! upload's task, so a stop's wait for the uploads covers the seals they release.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::metrics::IngestMetrics;
use super::seal::SealBook;
use super::spool::SpooledChunk;
use crate::store::{RecordingStore, SealKey, StoreError};

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

/// What the uploader stores.
#[derive(Debug)]
enum Upload {
    Chunk(SpooledChunk),
    /// A seal that waits for no chunk.
    Seal(SealKey),
}

/// Takes closed chunks and seals, and stores them.
#[derive(Debug)]
pub struct Uploader {
    queue: mpsc::UnboundedSender<Upload>,
    dispatcher: tokio::task::JoinHandle<()>,
    metrics: Arc<IngestMetrics>,
    seals: Arc<Mutex<SealBook>>,
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
        let seals = Arc::new(Mutex::new(SealBook::default()));
        let shared = Shared {
            store,
            settings,
            metrics: metrics.clone(),
            seals: seals.clone(),
        };
        let dispatcher = runtime.spawn(dispatch(receiver, shared));
        Uploader {
            queue,
            dispatcher,
            metrics,
            seals,
        }
    }

    /// Queue a closed chunk. Never blocks: the spool is the buffer.
    pub fn submit(&self, chunk: SpooledChunk) {
        self.metrics.spool_backlog.fetch_add(1, Ordering::Relaxed);
        // Booked before the chunk is queued, and on this thread, so that a seal asked
        // for later (on this thread too) waits for it.
        lock(&self.seals).chunk_queued(&chunk.key);
        if let Err(refused) = self.queue.send(Upload::Chunk(chunk)) {
            // Only after finish(), which consumes self: cannot happen. The file stays in
            // the spool for the next run either way.
            if let Upload::Chunk(chunk) = refused.0 {
                warn!(file = %chunk.path.display(), "upload queue closed; chunk left in the spool");
            }
            IngestMetrics::decrement(&self.metrics.spool_backlog);
        }
    }

    /// Store `key` once every chunk of its recording queued so far is done. Never blocks.
    pub fn seal(&self, key: SealKey) {
        self.metrics.seals_waiting.fetch_add(1, Ordering::Relaxed);
        let ready = lock(&self.seals).seal(key.clone());
        match ready {
            Some(key) => {
                if self.queue.send(Upload::Seal(key)).is_err() {
                    // As in submit: cannot happen.
                    IngestMetrics::decrement(&self.metrics.seals_waiting);
                }
            }
            None => debug!(seal = %key, "seal waits for the recording's chunks to be stored"),
        }
    }

    /// No more chunks: wait up to `timeout` for the queued ones to be stored. Returns how
    /// many were not; they stay in the spool, and the next run uploads them.
    pub fn finish(self, runtime: &Runtime, timeout: Duration) -> u64 {
        drop(self.queue);
        let dispatcher = self.dispatcher;
        let done = runtime.block_on(async move { tokio::time::timeout(timeout, dispatcher).await });
        let left = self.metrics.spool_backlog.load(Ordering::Relaxed);
        let seals = self.metrics.seals_waiting.load(Ordering::Relaxed);
        if done.is_err() {
            self.metrics
                .chunks_failed
                .fetch_add(left, Ordering::Relaxed);
            warn!(
                left,
                "uploads still pending at the shutdown timeout; left in the spool for the next run"
            );
        }
        if seals > 0 {
            // Not kept anywhere: those recordings' jobs wait for their settle time.
            warn!(
                seals,
                "ended recordings not sealed at the stop: their chunks were not all stored"
            );
        }
        left
    }
}

/// What every upload task needs.
#[derive(Debug, Clone)]
struct Shared {
    store: RecordingStore,
    settings: UploadSettings,
    metrics: Arc<IngestMetrics>,
    seals: Arc<Mutex<SealBook>>,
}

fn lock(book: &Mutex<SealBook>) -> std::sync::MutexGuard<'_, SealBook> {
    // The book is consistent between calls (no call panics half way).
    book.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn dispatch(mut receiver: mpsc::UnboundedReceiver<Upload>, shared: Shared) {
    let permits = Arc::new(Semaphore::new(shared.settings.concurrency.max(1)));
    let mut uploads = JoinSet::new();
    while let Some(upload) = receiver.recv().await {
        // Never closed: the semaphore lives in this function.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let shared = shared.clone();
        uploads.spawn(async move {
            match upload {
                Upload::Chunk(chunk) => {
                    upload_until_stored(&shared.store, &chunk, shared.settings, &shared.metrics)
                        .await;
                    let ready = lock(&shared.seals).chunk_done(&chunk.key);
                    for seal in ready {
                        store_seal(&shared, &seal).await;
                    }
                }
                Upload::Seal(seal) => store_seal(&shared, &seal).await,
            }
            drop(permit);
        });
        while uploads.try_join_next().is_some() {}
    }
    while uploads.join_next().await.is_some() {}
}

/// Store a seal, retrying until it is stored (or the runtime is shut down).
async fn store_seal(shared: &Shared, seal: &SealKey) {
    let metrics = &shared.metrics;
    let mut failures = 0u32;
    loop {
        match shared.store.put_seal(seal).await {
            Ok(()) => {
                IngestMetrics::decrement(&metrics.seals_waiting);
                metrics.seals_stored.fetch_add(1, Ordering::Relaxed);
                info!(recording = %seal.recording_id, seal = %seal, failures, "recording sealed: every chunk of it is stored");
                return;
            }
            Err(e) => {
                failures += 1;
                metrics.upload_retries.fetch_add(1, Ordering::Relaxed);
                let wait = shared.settings.backoff(failures);
                warn!(seal = %seal, failures, error = %e, retry_in = ?wait, "seal upload failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
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
    use object_store::ObjectStore;

    /// An in-memory store that writes down every put as it starts and ends, in order, and
    /// holds the puts of the chunks `gated` selects until [`Gated::open`].
    #[derive(Debug)]
    struct Gated {
        inner: InMemory,
        gated: fn(&str) -> bool,
        open: tokio::sync::watch::Receiver<bool>,
        log: tokio::sync::watch::Sender<Vec<String>>,
    }

    impl std::fmt::Display for Gated {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("gated")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Gated {
        async fn put_opts(
            &self,
            location: &object_store::path::Path,
            payload: object_store::PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.log
                .send_modify(|l| l.push(format!("start {location}")));
            if (self.gated)(location.as_ref()) {
                let mut open = self.open.clone();
                let _ = open.wait_for(|open| *open).await;
            }
            let result = self.inner.put_opts(location, payload, opts).await;
            self.log.send_modify(|l| l.push(format!("done {location}")));
            result
        }

        async fn put_multipart_opts(
            &self,
            location: &object_store::path::Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &object_store::path::Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<
                'static,
                object_store::Result<object_store::path::Path>,
            >,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>
        {
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &object_store::path::Path,
            to: &object_store::path::Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    #[test]
    fn a_seal_is_stored_only_after_every_earlier_chunk_of_its_recording() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (open, gate) = tokio::sync::watch::channel(false);
        let (log, mut watch) = tokio::sync::watch::channel(Vec::new());
        let gated = Arc::new(Gated {
            inner: InMemory::new(),
            // R's chunks hang until the gate opens; S's go through.
            gated: |path| path.starts_with("recordings/R/") && path.ends_with(".chunk"),
            open: gate,
            log,
        });
        let store = RecordingStore::from_object_store(gated.clone(), "gated");
        let metrics = Arc::new(IngestMetrics::default());
        let settings = UploadSettings {
            concurrency: 4,
            ..UploadSettings::default()
        };
        let uploader = Uploader::start(&runtime, store.clone(), settings, metrics.clone());
        let chunk = |recording: &str, seq: u64| {
            let header = ChunkHeader {
                recording_id: recording.into(),
                instance: "i".into(),
                seq,
                start_us: 0,
            };
            let (path, writer) = spool.create(&header).unwrap();
            writer.close().unwrap();
            SpooledChunk {
                len: std::fs::metadata(&path).unwrap().len(),
                path,
                key: ChunkKey {
                    recording_id: recording.into(),
                    instance: "i".into(),
                    seq,
                },
                records: 0,
                tail: ChunkTail::Closed,
            }
        };
        let seal = |recording: &str, seq: u64| SealKey {
            recording_id: recording.into(),
            instance: "i".into(),
            seq,
        };
        uploader.submit(chunk("R", 1));
        uploader.submit(chunk("R", 2));
        // Unreadable: given up on, so it holds no seal forever.
        uploader.submit(SpooledChunk {
            path: dir.path().join("gone.chunk"),
            ..chunk("R", 3)
        });
        uploader.seal(seal("R", 4));
        uploader.submit(chunk("S", 5));
        uploader.seal(seal("S", 6));
        assert_eq!(metrics.seals_waiting.load(Ordering::Relaxed), 2);

        // S is sealed while R's chunks hang: a seal waits for its own recording only.
        let s_sealed = format!("done {}", seal("S", 6));
        runtime.block_on(async {
            let wait = watch.wait_for(|log| log.contains(&s_sealed));
            tokio::time::timeout(Duration::from_secs(10), wait)
                .await
                .expect("S sealed")
                .unwrap();
        });
        let r_seal = format!("start {}", seal("R", 4));
        assert!(!watch.borrow().contains(&r_seal), "{:?}", *watch.borrow());

        open.send_replace(true);
        assert_eq!(uploader.finish(&runtime, Duration::from_secs(10)), 0);
        let log = watch.borrow().clone();
        let at = |entry: &str| {
            log.iter()
                .position(|l| l == entry)
                .unwrap_or_else(|| panic!("{entry} not in {log:?}"))
        };
        let sealed_at = at(&r_seal);
        for seq in [1, 2] {
            let key = chunk("R", seq).key;
            assert!(at(&format!("done {key}")) < sealed_at, "{log:?}");
        }
        let objects = runtime.block_on(store.list_recording("R")).unwrap();
        assert_eq!(objects.seals, [seal("R", 4)]);
        assert_eq!(objects.chunks.len(), 2);
        assert_eq!(metrics.seals_stored.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.seals_waiting.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.chunks_failed.load(Ordering::Relaxed), 1);
    }

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
