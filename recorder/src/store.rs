//! Where recordings live: chunks as the ingest daemon uploads them, and the stitched
//! result, in one object store (docs/recording.md, "Object storage").
//!
//! [`RecordingStore`] is a small typed layer over the `object_store` crate, so the same
//! code runs against
//!
//! * a local directory, the embedded default (`file:///var/lib/fanout/recordings` or a
//!   plain path): one machine, tests, development;
//! * any S3-compatible store (`s3://bucket` or `s3://bucket/prefix`), with an endpoint,
//!   region and credentials from the configuration or the usual `AWS_*` environment
//!   variables. Plain `http://` endpoints are allowed for loopback hosts (a local MinIO,
//!   moto or s3s) and elsewhere only with `allow_http = true`.
//!
//! Keys, under the store's root (or the URL's prefix):
//!
//! ```text
//! recordings/{recording_id}/chunks/{instance}-{seq:010}.chunk   one per closed chunk
//! recordings/{recording_id}/chunks/{instance}-{seq:010}.sealed  a recorder's seal
//! recordings/{recording_id}/output.webm                         the stitched result
//! ```
//!
//! Recording ids and instance names use the tap's alphabet (letters, digits, `.`, `_`,
//! `-`, not starting with `.`), so a key can neither escape its recording's prefix nor
//! parse two ways: the sequence number is the digits after the last `-`.
//!
//! # Seals
//!
//! A recorder that gets the forwarder's End for a recording stores a seal (an empty
//! object) once every chunk of that recording it opened before the End is stored. Its
//! sequence number comes from the counter that numbers the recorder's chunks, so it is
//! above every chunk the seal covers and below every chunk opened after it. One listing
//! of `recordings/{id}/chunks/` therefore says whether the recording is complete in the
//! store ([`RecordingObjects::sealing`]): every instance with chunks has a seal above its
//! newest chunk. The control plane makes the stitching job due on that, before its
//! settle time (docs/recording.md, "Sealing").

use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use fanout_forwarder::recording::is_valid_recording_id;

/// Where the recordings are kept: the `[store]` section of the recorder's file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `file:///path`, a plain path, or `s3://bucket[/prefix]`.
    pub url: String,
    /// S3: the endpoint of a non-AWS store, e.g. `http://127.0.0.1:9000` (or
    /// `AWS_ENDPOINT`).
    pub endpoint: Option<String>,
    /// S3: the region (or `AWS_REGION`; default `us-east-1`).
    pub region: Option<String>,
    /// S3: the access key id (or `AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// S3: a file holding the secret access key (or `AWS_SECRET_ACCESS_KEY`). The secret
    /// itself never goes in the configuration file.
    pub secret_access_key_file: Option<PathBuf>,
    /// S3: allow a plain-HTTP endpoint that is not on a loopback address.
    pub allow_http: Option<bool>,
}

/// Why a store operation failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store configuration: {0}")]
    Config(String),
    /// A recording id or instance name outside the key alphabet.
    #[error("invalid id for an object key: {0:?}")]
    InvalidId(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error(transparent)]
    ObjectStore(object_store::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<object_store::Error> for StoreError {
    fn from(error: object_store::Error) -> Self {
        match error {
            object_store::Error::NotFound { path, .. } => StoreError::NotFound(path),
            error => StoreError::ObjectStore(error),
        }
    }
}

/// Names one chunk object: `recordings/{recording_id}/chunks/{instance}-{seq:010}.chunk`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkKey {
    pub recording_id: String,
    pub instance: String,
    pub seq: u64,
}

impl ChunkKey {
    /// The object path, or an error for ids outside the key alphabet.
    pub fn path(&self) -> Result<Path, StoreError> {
        check_id(&self.recording_id)?;
        check_id(&self.instance)?;
        Ok(Path::from(format!(
            "recordings/{}/chunks/{}-{:010}.chunk",
            self.recording_id, self.instance, self.seq
        )))
    }

    /// The key a chunk object's path stands for; `None` for anything else.
    pub fn parse(path: &Path) -> Option<ChunkKey> {
        let (recording_id, instance, seq) = parse_numbered(path, ".chunk")?;
        Some(ChunkKey {
            recording_id,
            instance,
            seq,
        })
    }
}

impl fmt::Display for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "recordings/{}/chunks/{}-{:010}.chunk",
            self.recording_id, self.instance, self.seq
        )
    }
}

/// Names one seal: `recordings/{recording_id}/chunks/{instance}-{seq:010}.sealed`. The
/// recorder `instance` stored every chunk of the recording it numbered below `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SealKey {
    pub recording_id: String,
    pub instance: String,
    pub seq: u64,
}

impl SealKey {
    /// The object path, or an error for ids outside the key alphabet.
    pub fn path(&self) -> Result<Path, StoreError> {
        check_id(&self.recording_id)?;
        check_id(&self.instance)?;
        Ok(Path::from(self.to_string()))
    }

    /// The key a seal object's path stands for; `None` for anything else.
    pub fn parse(path: &Path) -> Option<SealKey> {
        let (recording_id, instance, seq) = parse_numbered(path, ".sealed")?;
        Some(SealKey {
            recording_id,
            instance,
            seq,
        })
    }
}

impl fmt::Display for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "recordings/{}/chunks/{}-{:010}.sealed",
            self.recording_id, self.instance, self.seq
        )
    }
}

/// `recordings/{recording}/chunks/{instance}-{seq}{suffix}`, checked, in parts.
fn parse_numbered(path: &Path, suffix: &str) -> Option<(String, String, u64)> {
    let mut parts = path.parts();
    let (top, recording_id, chunks, file) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if top.as_ref() != "recordings" || chunks.as_ref() != "chunks" || parts.next().is_some() {
        return None;
    }
    let (instance, seq) = file.as_ref().strip_suffix(suffix)?.rsplit_once('-')?;
    let recording_id = recording_id.as_ref();
    let valid = is_valid_recording_id(recording_id)
        && is_valid_recording_id(instance)
        && seq.len() >= 10
        && seq.bytes().all(|b| b.is_ascii_digit());
    if !valid {
        return None;
    }
    Some((
        recording_id.to_owned(),
        instance.to_owned(),
        seq.parse().ok()?,
    ))
}

/// One listing of a recording's `chunks/`: its chunks and its seals, each sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordingObjects {
    pub chunks: Vec<ChunkKey>,
    pub seals: Vec<SealKey>,
}

/// Whether a recording is complete in the store, by its seals ([`RecordingObjects::sealing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sealing {
    /// No recorder has sealed it.
    NoSeal,
    /// These instances stored chunks that no seal of theirs covers (no seal, or chunks
    /// opened after it): they may still be uploading.
    Unsealed(Vec<String>),
    /// Every instance that stored chunks sealed it after its newest chunk; `recorders`
    /// instances sealed it.
    Sealed { recorders: usize },
}

impl RecordingObjects {
    /// Sealed when at least one recorder sealed the recording and every instance that
    /// stored chunks of it has a seal numbered above its newest chunk. A recorder whose
    /// chunks are all still in its spool cannot be seen here: the control plane only
    /// trusts this when one forwarder (so one recorder) recorded the recording from its
    /// start to its stop.
    pub fn sealing(&self) -> Sealing {
        use std::collections::BTreeMap;
        let mut newest_seal: BTreeMap<&str, u64> = BTreeMap::new();
        for seal in &self.seals {
            let seq = newest_seal.entry(&seal.instance).or_default();
            *seq = (*seq).max(seal.seq);
        }
        if newest_seal.is_empty() {
            return Sealing::NoSeal;
        }
        let mut newest_chunk: BTreeMap<&str, u64> = BTreeMap::new();
        for chunk in &self.chunks {
            let seq = newest_chunk.entry(&chunk.instance).or_default();
            *seq = (*seq).max(chunk.seq);
        }
        let unsealed: Vec<String> = newest_chunk
            .iter()
            .filter(|(instance, chunk)| newest_seal.get(*instance).is_none_or(|s| s <= chunk))
            .map(|(instance, _)| (*instance).to_owned())
            .collect();
        if unsealed.is_empty() {
            Sealing::Sealed {
                recorders: newest_seal.len(),
            }
        } else {
            Sealing::Unsealed(unsealed)
        }
    }
}

fn check_id(id: &str) -> Result<(), StoreError> {
    if is_valid_recording_id(id) {
        Ok(())
    } else {
        Err(StoreError::InvalidId(id.to_owned()))
    }
}

fn output_path(recording_id: &str) -> Result<Path, StoreError> {
    check_id(recording_id)?;
    Ok(Path::from(output_key(recording_id)))
}

/// The object key of a recording's stitched file (what the control plane reports).
pub fn output_key(recording_id: &str) -> String {
    format!("recordings/{recording_id}/output.webm")
}

/// The recordings' object store. Cheap to clone: clones share one client.
#[derive(Clone)]
pub struct RecordingStore {
    store: Arc<dyn ObjectStore>,
    description: String,
}

impl fmt::Debug for RecordingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingStore")
            .field("store", &self.description)
            .finish()
    }
}

impl fmt::Display for RecordingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

/// A recording's stitched file being read: its size, and its bytes in order in the pieces
/// the store delivers (a few KiB each from a directory, HTTP body frames from S3).
pub struct OutputStream {
    /// Bytes in the object: what `pieces` carries, unless the read fails part way.
    pub size: u64,
    pub pieces: BoxStream<'static, Result<Bytes, StoreError>>,
}

impl fmt::Debug for OutputStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputStream")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Multipart uploads of a result file go in parts of this size (S3's minimum is 5 MiB
/// for every part but the last).
const OUTPUT_PART_BYTES: usize = 8 << 20;

impl RecordingStore {
    /// The store `config` describes.
    pub fn open(config: &StoreConfig) -> Result<RecordingStore, StoreError> {
        let url = config.url.trim();
        if let Some(rest) = url.strip_prefix("s3://") {
            return Self::s3(rest, config);
        }
        let directory = match url.strip_prefix("file://") {
            Some(path) => PathBuf::from(path),
            None if url.contains("://") => {
                return Err(StoreError::Config(format!(
                    "unsupported store URL {url:?}: use file:///path, a path, or s3://bucket"
                )))
            }
            None if url.is_empty() => {
                return Err(StoreError::Config("the store URL is empty".into()))
            }
            None => PathBuf::from(url),
        };
        Self::local(&directory)
    }

    /// A local directory (created if missing).
    pub fn local(directory: &FsPath) -> Result<RecordingStore, StoreError> {
        std::fs::create_dir_all(directory)?;
        // Absolute, so a later change of working directory changes nothing.
        let directory = std::fs::canonicalize(directory)?;
        let store = LocalFileSystem::new_with_prefix(&directory)?;
        Ok(RecordingStore {
            store: Arc::new(store),
            description: format!("file://{}", directory.display()),
        })
    }

    fn s3(bucket_and_prefix: &str, config: &StoreConfig) -> Result<RecordingStore, StoreError> {
        let (bucket, prefix) = bucket_and_prefix
            .split_once('/')
            .unwrap_or((bucket_and_prefix, ""));
        if bucket.is_empty() {
            return Err(StoreError::Config("s3:// URL without a bucket".into()));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let endpoint = config
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT").ok());
        let allow_http = config
            .allow_http
            .unwrap_or_else(|| endpoint.as_deref().is_some_and(is_loopback_http));
        // Refused here rather than at the first upload, minutes into a recording.
        if let Some(endpoint) = endpoint.as_deref() {
            if endpoint.starts_with("http://") && !allow_http {
                return Err(StoreError::Config(format!(
                    "plain-HTTP endpoint {endpoint} is not on a loopback address: \
                     use https, or set allow_http = true"
                )));
            }
        }
        builder = builder.with_allow_http(allow_http);
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &config.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(file) = &config.secret_access_key_file {
            let secret = std::fs::read_to_string(file)
                .map_err(|e| StoreError::Config(format!("cannot read {}: {e}", file.display())))?;
            builder = builder.with_secret_access_key(secret.trim());
        }
        let store: Arc<dyn ObjectStore> = Arc::new(builder.build()?);
        let prefix = prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            store
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        };
        let description = match &endpoint {
            Some(endpoint) => format!("s3://{bucket_and_prefix} at {endpoint}"),
            None => format!("s3://{bucket_and_prefix}"),
        };
        Ok(RecordingStore { store, description })
    }

    /// Any object store (tests use `object_store::memory::InMemory`).
    pub fn from_object_store(store: Arc<dyn ObjectStore>, description: &str) -> RecordingStore {
        RecordingStore {
            store,
            description: description.to_owned(),
        }
    }

    /// Store a closed chunk (replacing an object of the same key: an upload that is
    /// retried after a lost answer writes the same bytes again).
    pub async fn put_chunk(&self, key: &ChunkKey, chunk: Bytes) -> Result<(), StoreError> {
        self.store
            .put(&key.path()?, PutPayload::from_bytes(chunk))
            .await?;
        Ok(())
    }

    /// The chunks of a recording, ordered by instance, then sequence number. Objects
    /// under the recording's `chunks/` that are not chunk keys are skipped.
    pub async fn list_chunks(&self, recording_id: &str) -> Result<Vec<ChunkKey>, StoreError> {
        Ok(self.list_recording(recording_id).await?.chunks)
    }

    /// A recording's chunks and seals, in one listing, each ordered by instance, then
    /// sequence number. Other objects under its `chunks/` are skipped.
    pub async fn list_recording(&self, recording_id: &str) -> Result<RecordingObjects, StoreError> {
        check_id(recording_id)?;
        let prefix = Path::from(format!("recordings/{recording_id}/chunks"));
        let mut objects = RecordingObjects::default();
        let mut listing = self.store.list(Some(&prefix));
        while let Some(meta) = listing.try_next().await? {
            if let Some(key) = ChunkKey::parse(&meta.location) {
                objects.chunks.push(key);
            } else if let Some(key) = SealKey::parse(&meta.location) {
                objects.seals.push(key);
            } else {
                debug!(object = %meta.location, "neither a chunk nor a seal; skipped");
            }
        }
        objects.chunks.sort();
        objects.seals.sort();
        Ok(objects)
    }

    /// Store a seal: an empty object, whose key says everything. Storing it again
    /// (a retry after a lost answer) changes nothing.
    pub async fn put_seal(&self, key: &SealKey) -> Result<(), StoreError> {
        self.store.put(&key.path()?, PutPayload::new()).await?;
        Ok(())
    }

    /// The bytes of one chunk.
    pub async fn get_chunk(&self, key: &ChunkKey) -> Result<Bytes, StoreError> {
        Ok(self.store.get(&key.path()?).await?.bytes().await?)
    }

    /// Store the stitched result of a recording from memory.
    pub async fn put_output(&self, recording_id: &str, output: Bytes) -> Result<(), StoreError> {
        self.store
            .put(&output_path(recording_id)?, PutPayload::from_bytes(output))
            .await?;
        Ok(())
    }

    /// Store the stitched result of a recording from a file, in parts (a recording of
    /// hours does not fit in memory comfortably). Returns the bytes uploaded.
    pub async fn put_output_file(
        &self,
        recording_id: &str,
        file: &FsPath,
    ) -> Result<u64, StoreError> {
        let location = output_path(recording_id)?;
        let mut input = tokio::fs::File::open(file).await?;
        let upload = self.store.put_multipart(&location).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, OUTPUT_PART_BYTES);
        let mut buffer = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let read = match input.read(&mut buffer).await {
                Ok(0) => break,
                Ok(read) => read,
                Err(e) => {
                    // Leave no half-written upload behind; the read error is the news.
                    let _ = writer.abort().await;
                    return Err(e.into());
                }
            };
            writer.write(&buffer[..read]);
            total += read as u64;
            // At most two parts in flight: bounded memory, some overlap.
            if let Err(e) = writer.wait_for_capacity(2).await {
                return Err(e.into());
            }
        }
        writer.finish().await?;
        Ok(total)
    }

    /// The stitched result of a recording, in memory.
    pub async fn get_output(&self, recording_id: &str) -> Result<Bytes, StoreError> {
        Ok(self
            .store
            .get(&output_path(recording_id)?)
            .await?
            .bytes()
            .await?)
    }

    /// The stitched result of a recording as it streams from the store, for serving it
    /// (the control plane's downloads) without holding it whole in memory.
    pub async fn get_output_stream(&self, recording_id: &str) -> Result<OutputStream, StoreError> {
        let result = self.store.get(&output_path(recording_id)?).await?;
        Ok(OutputStream {
            size: result.meta.size,
            pieces: result.into_stream().map_err(StoreError::from).boxed(),
        })
    }

    /// The stitched result of a recording, streamed into `file` (created or replaced).
    /// Returns the bytes written.
    pub async fn get_output_to_file(
        &self,
        recording_id: &str,
        file: &FsPath,
    ) -> Result<u64, StoreError> {
        let mut stream = self
            .store
            .get(&output_path(recording_id)?)
            .await?
            .into_stream();
        let mut output = tokio::fs::File::create(file).await?;
        let mut total = 0u64;
        while let Some(bytes) = stream.try_next().await? {
            output.write_all(&bytes).await?;
            total += bytes.len() as u64;
        }
        output.flush().await?;
        output.sync_all().await?;
        Ok(total)
    }
}

/// `http://` to a loopback host: a store on this machine, where TLS buys nothing.
fn is_loopback_http(endpoint: &str) -> bool {
    let Ok(url) = url::Url::parse(endpoint) else {
        return false;
    };
    url.scheme() == "http"
        && match url.host() {
            Some(url::Host::Domain(name)) => name == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(recording: &str, instance: &str, seq: u64) -> ChunkKey {
        ChunkKey {
            recording_id: recording.into(),
            instance: instance.into(),
            seq,
        }
    }

    #[test]
    fn chunk_keys_are_the_documented_ones_and_parse_back() {
        let k = key("rec-1", "rec-host-a", 42);
        let path = k.path().unwrap();
        assert_eq!(
            path.as_ref(),
            "recordings/rec-1/chunks/rec-host-a-0000000042.chunk"
        );
        assert_eq!(k.to_string(), path.as_ref());
        assert_eq!(ChunkKey::parse(&path), Some(k));
        // Sequence numbers wider than 10 digits stay one key.
        let wide = key("r", "i", 1_790_000_000_000);
        assert_eq!(ChunkKey::parse(&wide.path().unwrap()), Some(wide));
    }

    #[test]
    fn foreign_objects_are_not_chunk_keys() {
        for path in [
            "recordings/r/output.webm",
            "recordings/r/chunks/i-12.chunk",
            "recordings/r/chunks/i-0000000012.tmp",
            "recordings/r/chunks/-0000000012.chunk",
            "recordings/r/chunks/i-00000000x2.chunk",
            "recordings/r/chunks/sub/i-0000000012.chunk",
            "other/r/chunks/i-0000000012.chunk",
            "recordings/.r/chunks/i-0000000012.chunk",
        ] {
            assert_eq!(ChunkKey::parse(&Path::from(path)), None, "{path}");
        }
    }

    fn seal(recording: &str, instance: &str, seq: u64) -> SealKey {
        SealKey {
            recording_id: recording.into(),
            instance: instance.into(),
            seq,
        }
    }

    #[test]
    fn seal_keys_sit_next_to_the_chunks_and_are_not_chunk_keys() {
        let s = seal("rec-1", "rec-host-a", 43);
        let path = s.path().unwrap();
        assert_eq!(
            path.as_ref(),
            "recordings/rec-1/chunks/rec-host-a-0000000043.sealed"
        );
        assert_eq!(SealKey::parse(&path), Some(s));
        assert_eq!(ChunkKey::parse(&path), None);
        assert_eq!(SealKey::parse(&key("rec-1", "i", 1).path().unwrap()), None);
        for path in [
            "recordings/r/chunks/i-12.sealed",
            "recordings/r/chunks/-0000000012.sealed",
            "recordings/r/sealed/i-0000000012.sealed",
        ] {
            assert_eq!(SealKey::parse(&Path::from(path)), None, "{path}");
        }
        assert!(matches!(
            seal("r", "../i", 1).path(),
            Err(StoreError::InvalidId(_))
        ));
    }

    #[test]
    fn sealed_once_every_instance_with_chunks_sealed_after_its_newest() {
        let objects = |chunks: &[(&str, u64)], seals: &[(&str, u64)]| RecordingObjects {
            chunks: chunks.iter().map(|(i, s)| key("r", i, *s)).collect(),
            seals: seals.iter().map(|(i, s)| seal("r", i, *s)).collect(),
        };
        assert_eq!(objects(&[], &[]).sealing(), Sealing::NoSeal);
        assert_eq!(objects(&[("a", 1)], &[]).sealing(), Sealing::NoSeal);
        assert_eq!(
            objects(&[("a", 1), ("a", 2)], &[("a", 3)]).sealing(),
            Sealing::Sealed { recorders: 1 }
        );
        // An End with nothing recorded still seals (nobody published).
        assert_eq!(
            objects(&[], &[("a", 3)]).sealing(),
            Sealing::Sealed { recorders: 1 }
        );
        // A chunk opened after the seal (packets after the End) is not covered...
        assert_eq!(
            objects(&[("a", 1), ("a", 4)], &[("a", 3)]).sealing(),
            Sealing::Unsealed(vec!["a".into()])
        );
        // ...until a later End seals again.
        assert_eq!(
            objects(&[("a", 1), ("a", 4)], &[("a", 3), ("a", 5)]).sealing(),
            Sealing::Sealed { recorders: 1 }
        );
        // Another recorder's chunks need that recorder's seal.
        assert_eq!(
            objects(&[("a", 1), ("b", 2)], &[("a", 3)]).sealing(),
            Sealing::Unsealed(vec!["b".into()])
        );
        assert_eq!(
            objects(&[("a", 1), ("b", 2)], &[("a", 3), ("b", 4)]).sealing(),
            Sealing::Sealed { recorders: 2 }
        );
        // A seal covers only chunks numbered below it.
        assert_eq!(
            objects(&[("a", 7)], &[("a", 7)]).sealing(),
            Sealing::Unsealed(vec!["a".into()])
        );
    }

    #[test]
    fn ids_that_could_escape_their_prefix_are_refused() {
        assert!(matches!(
            key("../x", "i", 1).path(),
            Err(StoreError::InvalidId(_))
        ));
        assert!(matches!(
            key("r", "a/b", 1).path(),
            Err(StoreError::InvalidId(_))
        ));
        assert!(matches!(output_path(""), Err(StoreError::InvalidId(_))));
    }

    #[test]
    fn plain_http_only_on_loopback_by_default() {
        assert!(is_loopback_http("http://127.0.0.1:9000"));
        assert!(is_loopback_http("http://localhost:9000/"));
        assert!(is_loopback_http("http://[::1]:9000"));
        assert!(!is_loopback_http("http://192.0.2.1:9000"));
        assert!(!is_loopback_http("https://127.0.0.1:9000"));
        assert!(!is_loopback_http("not a url"));
    }

    #[test]
    fn store_urls() {
        let dir = tempfile::tempdir().unwrap();
        let open = |url: String| {
            RecordingStore::open(&StoreConfig {
                url,
                ..Default::default()
            })
        };
        let plain = open(dir.path().join("a").display().to_string()).unwrap();
        assert!(plain.to_string().starts_with("file:///"));
        assert!(dir.path().join("a").is_dir());
        open(format!("file://{}", dir.path().join("b").display())).unwrap();
        assert!(dir.path().join("b").is_dir());
        assert!(matches!(
            open("gs://bucket".into()),
            Err(StoreError::Config(_))
        ));
        assert!(matches!(open("".into()), Err(StoreError::Config(_))));
        assert!(matches!(open("s3://".into()), Err(StoreError::Config(_))));
        let s3 = |endpoint: &str, allow_http| {
            RecordingStore::open(&StoreConfig {
                url: "s3://bucket/prefix".into(),
                endpoint: Some(endpoint.into()),
                region: Some("us-east-1".into()),
                allow_http,
                ..Default::default()
            })
        };
        assert!(s3("http://127.0.0.1:9000", None).is_ok());
        assert!(s3("https://192.0.2.1:9000", None).is_ok());
        assert!(matches!(
            s3("http://192.0.2.1:9000", None),
            Err(StoreError::Config(_))
        ));
        assert!(s3("http://192.0.2.1:9000", Some(true)).is_ok());
    }
}
