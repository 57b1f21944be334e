//! The forwarder registry, and the live set every control instance caches.
//!
//! # Liveness is a lease
//!
//! A forwarder registers once ([`ForwarderRegistry::register`]): the control plane grants a
//! lease (TTL 3 s by default, [`RegistryConfig::lease_ttl_ms`]) and writes, in one
//! transaction, the registration (`v1/forwarders/{id}`) and a first load report
//! (`v1/load/{id}`), both attached to the lease. The forwarder then heartbeats every third of
//! the TTL ([`ForwarderRegistry::heartbeat`]): a keep-alive and a fresh load report. When the
//! heartbeats stop (crash, partition), the lease expires and the store deletes both keys at
//! one revision; every watcher sees the Delete of the registration, which is what failover
//! reacts to. A clean shutdown ([`ForwarderRegistry::deregister`]) revokes the lease, with the
//! same effect at once.
//!
//! # One live registration per id
//!
//! The registration is created only if its key is absent, and a key attached to an expired
//! lease is absent (the store deleted it). So a second process registering an id whose lease
//! is alive gets [`ServiceError::AlreadyRegistered`] (`ALREADY_EXISTS`) and nothing changes:
//! it may not silently take over the meetings of a process that is still running. A forwarder
//! restarted after a crash is in that position until its old lease expires (at most one TTL,
//! plus the store's expiry granularity: 500 ms on etcd). It retries every heartbeat interval
//! and succeeds once the old registration is gone; meanwhile failover moves its meetings
//! elsewhere, which is right: the new process starts empty.
//!
//! Heartbeats are tied to the registration they belong to (its create revision, kept in the
//! [`Session`]), so a process whose lease ended gets [`ServiceError::NotRegistered`]
//! (`FAILED_PRECONDITION`: register again) and can never refresh a record that a later
//! registration of the same id wrote.
//!
//! # The live set
//!
//! [`LiveForwarders`] caches registrations and loads by range-then-watch: `range(prefix)`
//! at revision `R`, then `watch(prefix, R + 1)`. When the watch breaks (compaction, lost
//! connection) it re-reads and diffs, so a registration that vanished during the gap is still
//! reported as a death ([`LiveForwarders::deaths`]). The cache lags the store by a watch round
//! trip; everything that decides on it (placement, failover) compares in its transaction what
//! it assumed, so a stale cache costs a retry, never a wrong write.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use futures::StreamExt as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::{keys, ServiceError};
use crate::domain::{ForwarderId, MeetingId};
use crate::store::{
    Compare, CompareOp, KeyValue, LeaseId, Op, Revision, Store, StoreError, Txn, WatchEvent,
    WatchEventKind,
};

/// Format version of every record written by the registry and placement
/// (docs/control-plane.md: values are JSON with a `version` field).
pub const RECORD_VERSION: u32 = 1;

/// The default lease TTL: a dead forwarder is noticed 3 s (plus the store's expiry
/// granularity) after its last heartbeat.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);

/// Longest region name accepted.
const MAX_REGION_LEN: usize = 64;

fn default_lease_ttl_ms() -> u64 {
    // 3 s fits in u64 milliseconds; `as_millis` is u128 only because Durations can be huge.
    DEFAULT_LEASE_TTL.as_secs() * 1000
}

/// Tuning of the [`ForwarderRegistry`], loaded from TOML.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// TTL of a forwarder's lease, in milliseconds: how long after its last heartbeat a
    /// silent forwarder counts as dead. Heartbeats go every third of it. etcd rounds it up
    /// to whole seconds, and to at least its minimum TTL.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            lease_ttl_ms: default_lease_ttl_ms(),
        }
    }
}

impl RegistryConfig {
    /// The lease TTL (at least 1 ms: a zero TTL would expire before the first heartbeat).
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms.max(1))
    }
}

/// What a forwarder can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Legs (one participant's media connection) it accepts in all.
    pub max_legs: u32,
    /// Packets per second it forwards in all (informational for now: placement counts legs).
    pub max_packets_per_second: u64,
}

/// A forwarder's registration: what placement needs to send meetings to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwarderInfo {
    pub id: ForwarderId,
    /// Region name, matched against [`super::PlacementHint::region`] and the latency matrix.
    pub region: String,
    /// An IP address (v4 or v6) the participants can reach.
    pub public_ip: String,
    /// Ports meetings may get, inclusive: each meeting placed here gets its own
    /// (docs/architecture.md, "Shards": the port steers the meeting to a shard).
    pub port_range: (u16, u16),
    pub capacity: Capacity,
    /// Its DTLS certificate's fingerprint (RFC 8122 form) for browsers' SDP; empty: it
    /// cannot serve browsers.
    #[serde(default)]
    pub dtls_fingerprint: String,
}

impl ForwarderInfo {
    /// Checks what the registry relies on: a parseable IP, a non-empty port range that
    /// excludes port 0, a region name, some capacity.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let bad = |why: String| Err(ServiceError::InvalidArgument(why));
        if self.public_ip.parse::<IpAddr>().is_err() {
            return bad(format!(
                "public_ip {:?} is not an IP address",
                self.public_ip
            ));
        }
        let (lo, hi) = self.port_range;
        if lo == 0 || lo > hi {
            return bad(format!(
                "port_range {lo}..={hi} is empty or includes port 0"
            ));
        }
        if self.region.is_empty() || self.region.len() > MAX_REGION_LEN {
            return bad(format!(
                "region must be 1..={MAX_REGION_LEN} bytes, got {}",
                self.region.len()
            ));
        }
        if self.capacity.max_legs == 0 {
            return bad("capacity.max_legs is 0".to_owned());
        }
        Ok(())
    }

    /// `host:port` of a meeting on `port` (IPv6 in brackets).
    pub fn address(&self, port: u16) -> String {
        match self.public_ip.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port).to_string(),
            // Registration validates the IP; a record written otherwise is shown as is.
            Err(_) => format!("{}:{port}", self.public_ip),
        }
    }

    /// How many ports the range holds.
    pub fn port_count(&self) -> u32 {
        let (lo, hi) = self.port_range;
        u32::from(hi.saturating_sub(lo)) + 1
    }
}

/// A forwarder's last heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Legs connected now, in all.
    pub legs: u32,
    pub packets_in_per_second: u64,
    pub packets_out_per_second: u64,
    /// CPU use, 0.0..=1.0 per core summed (informational).
    pub cpu: f32,
    /// Legs per meeting it runs (meetings with at least one leg). Placement uses it to tell
    /// meetings that have reported (their legs are in `legs`) from those placed here whose
    /// participants have not arrived yet (their expected participants are reserved). An
    /// empty map is allowed: every recent placement then counts as not yet reported.
    #[serde(default)]
    pub meetings: BTreeMap<MeetingId, u32>,
}

/// What a successful [`ForwarderRegistry::register`] hands back to the forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The lease its registration and load live on.
    pub lease: LeaseId,
    /// The revision that created the registration: heartbeats compare it, so they refresh
    /// this registration and no later one of the same id.
    pub registration: Revision,
    /// The TTL asked for (the store may round it up, which only adds slack).
    pub ttl: Duration,
    /// How often to call [`ForwarderRegistry::heartbeat`]: a third of the TTL, so that one
    /// lost heartbeat does not kill the lease.
    pub heartbeat_interval: Duration,
}

/// Registration and heartbeats of forwarders.
#[derive(Debug, Clone)]
pub struct ForwarderRegistry {
    store: Arc<dyn Store>,
    config: RegistryConfig,
}

impl ForwarderRegistry {
    pub fn new(store: Arc<dyn Store>, config: RegistryConfig) -> Self {
        Self { store, config }
    }

    /// Register a forwarder under a fresh lease. [`ServiceError::AlreadyRegistered`] if the
    /// id has a live registration (see the module docs: retry after a TTL).
    pub async fn register(&self, info: ForwarderInfo) -> Result<Session, ServiceError> {
        info.validate()?;
        let ttl = self.config.lease_ttl();
        let key = keys::forwarder(&info.id);
        let load_key = keys::load(&info.id);
        let record = encode(&key, &info)?;
        let load = encode(&load_key, &Load::default())?;
        let lease = self.store.grant_lease(ttl).await?;
        let txn = Txn::new().when([Compare::absent(key.clone())]).and_then([
            Op::put_with_lease(key, record, lease),
            Op::put_with_lease(load_key, load, lease),
        ]);
        let resp = match self.store.txn(txn).await {
            Ok(resp) => resp,
            Err(e) => {
                // Even if a timed-out write did land, revoking undoes it: the caller retries
                // from scratch rather than holding a registration it does not know about.
                self.revoke_quietly(lease).await;
                return Err(e.into());
            }
        };
        if !resp.succeeded {
            self.revoke_quietly(lease).await;
            return Err(ServiceError::AlreadyRegistered(info.id));
        }
        tracing::info!(forwarder = %info.id, region = %info.region, %lease, "forwarder registered");
        Ok(Session {
            lease,
            registration: resp.revision,
            ttl,
            heartbeat_interval: ttl / 3,
        })
    }

    /// Keep the registration alive and store the load report.
    /// [`ServiceError::NotRegistered`] if the lease or the registration is gone: the
    /// forwarder must register again.
    pub async fn heartbeat(
        &self,
        id: &ForwarderId,
        session: &Session,
        load: &Load,
    ) -> Result<(), ServiceError> {
        match self.store.keep_alive(session.lease).await {
            Ok(_) => {}
            Err(StoreError::LeaseNotFound) => return Err(ServiceError::NotRegistered(id.clone())),
            Err(e) => return Err(e.into()),
        }
        let load_key = keys::load(id);
        let value = encode(&load_key, load)?;
        let txn = Txn::new()
            .when([Compare::create_revision(
                keys::forwarder(id),
                CompareOp::Equal,
                session.registration,
            )])
            .and_then([Op::put_with_lease(load_key, value, session.lease)]);
        match self.store.txn(txn).await {
            Ok(resp) if resp.succeeded => Ok(()),
            // The registration was deleted (or the lease ended between the two calls).
            Ok(_) | Err(StoreError::LeaseNotFound) => Err(ServiceError::NotRegistered(id.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Clean shutdown: revoke the lease, deleting the registration at once so that failover
    /// moves the forwarder's meetings without waiting for the TTL. Idempotent.
    pub async fn deregister(
        &self,
        id: &ForwarderId,
        session: &Session,
    ) -> Result<(), ServiceError> {
        match self.store.revoke_lease(session.lease).await {
            Ok(()) | Err(StoreError::LeaseNotFound) => {
                tracing::info!(forwarder = %id, "forwarder deregistered");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A forwarder's registration as stored now.
    pub async fn get(&self, id: &ForwarderId) -> Result<Option<ForwarderInfo>, ServiceError> {
        match self.store.get(&keys::forwarder(id)).await? {
            Some(kv) => Ok(Some(decode_forwarder(&kv)?)),
            None => Ok(None),
        }
    }

    async fn revoke_quietly(&self, lease: LeaseId) {
        if let Err(e) = self.store.revoke_lease(lease).await {
            // The lease expires on its own within a TTL; nothing else to do.
            tracing::debug!(%lease, error = %e, "could not revoke an unused lease");
        }
    }
}

// ---- Stored records ----

#[derive(Serialize)]
struct VersionedRef<'a, T> {
    version: u32,
    #[serde(flatten)]
    body: &'a T,
}

#[derive(Deserialize)]
struct Versioned<T> {
    version: u32,
    #[serde(flatten)]
    body: T,
}

/// `body` as JSON with `"version": RECORD_VERSION` beside its fields.
pub(crate) fn encode<T: Serialize>(key: &str, body: &T) -> Result<Vec<u8>, ServiceError> {
    serde_json::to_vec(&VersionedRef {
        version: RECORD_VERSION,
        body,
    })
    .map_err(|e| ServiceError::Corrupt {
        key: key.to_owned(),
        reason: format!("cannot encode: {e}"),
    })
}

/// The inverse of [`encode`]; another version is refused rather than guessed at.
pub(crate) fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, ServiceError> {
    let corrupt = |reason: String| ServiceError::Corrupt {
        key: kv.key.clone(),
        reason,
    };
    let v: Versioned<T> = serde_json::from_slice(&kv.value).map_err(|e| corrupt(e.to_string()))?;
    if v.version != RECORD_VERSION {
        return Err(corrupt(format!(
            "version {} (this build reads {RECORD_VERSION})",
            v.version
        )));
    }
    Ok(v.body)
}

/// A registration, checked to be stored under its own id.
fn decode_forwarder(kv: &KeyValue) -> Result<ForwarderInfo, ServiceError> {
    let info: ForwarderInfo = decode(kv)?;
    if kv.key != keys::forwarder(&info.id) {
        return Err(ServiceError::Corrupt {
            key: kv.key.clone(),
            reason: format!("holds the registration of {}", info.id),
        });
    }
    Ok(info)
}

// ---- A cache of one prefix, kept by range-then-watch ----

/// One key of a cached prefix, as last seen.
#[derive(Debug, Clone)]
pub struct Cached<T> {
    pub value: T,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub lease: Option<LeaseId>,
}

/// A change a [`PrefixCache`] applied, for subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Put(String),
    Delete(String),
}

/// Changes kept for a slow subscriber before it is told it lagged.
const CHANGES_CAPACITY: usize = 4096;
/// Pause after a failed watch or read, doubled up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

type Decoder<T> = fn(&KeyValue) -> Result<T, ServiceError>;

struct CacheState<T> {
    entries: BTreeMap<String, Cached<T>>,
    /// The revision the entries are complete up to (the range's, then each event's).
    revision: Revision,
}

struct CacheShared<T> {
    prefix: String,
    state: RwLock<CacheState<T>>,
    changes: broadcast::Sender<Change>,
    decode: Decoder<T>,
}

/// Aborts the follower task when the last handle to a cache is dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Every key under a prefix, decoded, kept fresh by a background task; cheap to clone.
pub(crate) struct PrefixCache<T> {
    shared: Arc<CacheShared<T>>,
    _task: Arc<AbortOnDrop>,
}

impl<T> Clone for PrefixCache<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _task: Arc::clone(&self._task),
        }
    }
}

impl<T> std::fmt::Debug for PrefixCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.read();
        f.debug_struct("PrefixCache")
            .field("prefix", &self.shared.prefix)
            .field("keys", &st.entries.len())
            .field("revision", &st.revision)
            .finish()
    }
}

impl<T> CacheShared<T> {
    fn read(&self) -> RwLockReadGuard<'_, CacheState<T>> {
        // Nothing under the lock can panic but a bug here; carry on with the state.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, CacheState<T>> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, change: Change) {
        // No subscriber is not an error.
        let _ = self.changes.send(change);
    }

    fn apply(&self, event: &WatchEvent) {
        let key = &event.kv.key;
        let change = {
            let mut st = self.write();
            st.revision = st.revision.max(event.revision);
            // A write of this process already noted (`note_put`) is newer than the event.
            if st
                .entries
                .get(key)
                .is_some_and(|c| c.mod_revision > event.revision)
            {
                return;
            }
            match event.kind {
                WatchEventKind::Put => match (self.decode)(&event.kv) {
                    Ok(value) => {
                        st.entries.insert(key.clone(), cached(&event.kv, value));
                        Change::Put(key.clone())
                    }
                    Err(e) => {
                        // Unusable, so treated as absent; not reported as a change, since
                        // nothing it described ended.
                        tracing::warn!(key = %key, error = %e, "ignoring an unreadable record");
                        st.entries.remove(key);
                        return;
                    }
                },
                WatchEventKind::Delete => {
                    if st.entries.remove(key).is_none() {
                        return;
                    }
                    Change::Delete(key.clone())
                }
            }
        };
        self.send(change);
    }

    /// Replace everything with a fresh read, reporting what changed meanwhile.
    fn resync(&self, kvs: &[KeyValue], revision: Revision) {
        let fresh = decode_all(kvs, self.decode);
        let changes = {
            let mut st = self.write();
            let mut changes = Vec::new();
            for key in st.entries.keys() {
                if !fresh.contains_key(key) {
                    changes.push(Change::Delete(key.clone()));
                }
            }
            for (key, c) in &fresh {
                if st
                    .entries
                    .get(key)
                    .is_none_or(|old| old.mod_revision != c.mod_revision)
                {
                    changes.push(Change::Put(key.clone()));
                }
            }
            st.entries = fresh;
            st.revision = revision;
            changes
        };
        for change in changes {
            self.send(change);
        }
    }
}

fn cached<T>(kv: &KeyValue, value: T) -> Cached<T> {
    Cached {
        value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        lease: kv.lease,
    }
}

fn decode_all<T>(kvs: &[KeyValue], decode: Decoder<T>) -> BTreeMap<String, Cached<T>> {
    let mut entries = BTreeMap::new();
    for kv in kvs {
        match decode(kv) {
            Ok(value) => {
                entries.insert(kv.key.clone(), cached(kv, value));
            }
            Err(e) => tracing::warn!(key = %kv.key, error = %e, "ignoring an unreadable record"),
        }
    }
    entries
}

impl<T: Send + Sync + 'static> PrefixCache<T> {
    /// Read the prefix, then follow it in a background task (aborted when the last clone is
    /// dropped). Fails only if the first read does.
    pub(crate) async fn start(
        store: Arc<dyn Store>,
        prefix: String,
        decode: Decoder<T>,
    ) -> Result<Self, ServiceError> {
        let (kvs, revision) = store.range(&prefix).await?;
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        let shared = Arc::new(CacheShared {
            state: RwLock::new(CacheState {
                entries: decode_all(&kvs, decode),
                revision,
            }),
            prefix,
            changes,
            decode,
        });
        let task = tokio::spawn(follow(store, Arc::clone(&shared)));
        Ok(Self {
            shared,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }

    /// Look at the entries under the read lock (keep `f` short: the follower waits).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&BTreeMap<String, Cached<T>>) -> R) -> R {
        f(&self.shared.read().entries)
    }

    /// Changes applied from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.shared.changes.subscribe()
    }

    /// Record a put this process just made at `revision`, so that its next decision sees it
    /// without waiting for the watch. Ignored if the watch has already gone past it (it then
    /// applied the put, and maybe a later change of the key).
    pub(crate) fn note_put(
        &self,
        key: String,
        value: T,
        revision: Revision,
        create_revision: Revision,
    ) {
        {
            let mut st = self.shared.write();
            if st.revision >= revision {
                return;
            }
            st.entries.insert(
                key.clone(),
                Cached {
                    value,
                    create_revision,
                    mod_revision: revision,
                    lease: None,
                },
            );
        }
        self.shared.send(Change::Put(key));
    }
}

/// The follower: watch from the cache's revision + 1; whenever the watch ends, re-read.
async fn follow<T>(store: Arc<dyn Store>, shared: Arc<CacheShared<T>>) {
    let mut pause = RETRY_MIN;
    loop {
        let from = shared.read().revision + 1;
        let mut progressed = false;
        match store.watch(&shared.prefix, Some(from)).await {
            Ok(mut stream) => {
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(event) => {
                            shared.apply(&event);
                            progressed = true;
                        }
                        Err(StoreError::Compacted { oldest }) => {
                            // Normal for a watcher that fell behind: a fresh read replaces
                            // the missed history.
                            tracing::debug!(prefix = %shared.prefix, oldest, "watch compacted");
                            progressed = true;
                        }
                        Err(e) => {
                            tracing::warn!(prefix = %shared.prefix, error = %e, "watch ended")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(prefix = %shared.prefix, error = %e, "cannot watch"),
        }
        if progressed {
            pause = RETRY_MIN;
        } else {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
        // The events after the last one applied may be incomplete (a revision's events can
        // span the break): a fresh read is the only safe restart.
        loop {
            match store.range(&shared.prefix).await {
                Ok((kvs, revision)) => {
                    shared.resync(&kvs, revision);
                    break;
                }
                Err(e) => {
                    tracing::warn!(prefix = %shared.prefix, error = %e, "cannot re-read");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

// ---- The live set ----

/// A registered forwarder with its last load report.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveForwarder {
    pub info: ForwarderInfo,
    /// The revision that created the registration: placement compares it, so it never
    /// writes to a forwarder that died (or died and re-registered) since it looked.
    pub registered: Revision,
    pub lease: Option<LeaseId>,
    /// The last heartbeat's report, if the cache has seen one.
    pub load: Option<Load>,
}

/// Registrations and loads of every live forwarder, cached (see the module docs); cheap to
/// clone, and the followers stop when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct LiveForwarders {
    registrations: PrefixCache<ForwarderInfo>,
    loads: PrefixCache<Load>,
}

/// What [`Deaths::recv`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Death {
    /// The forwarder's registration was deleted: its lease expired or was revoked.
    Died(ForwarderId),
    /// Deaths were missed (the receiver fell behind): compare the live set with what you
    /// hold instead.
    Missed,
}

/// A stream of forwarder deaths, from [`LiveForwarders::deaths`].
#[derive(Debug)]
pub struct Deaths {
    rx: broadcast::Receiver<Change>,
}

impl Deaths {
    /// The next death; `None` once the live set has been dropped.
    pub async fn recv(&mut self) -> Option<Death> {
        let prefix = keys::forwarders();
        loop {
            match self.rx.recv().await {
                Ok(Change::Delete(key)) => {
                    let Some(id) = key
                        .strip_prefix(prefix.as_str())
                        .and_then(|s| ForwarderId::new(s).ok())
                    else {
                        continue;
                    };
                    return Some(Death::Died(id));
                }
                Ok(Change::Put(_)) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return Some(Death::Missed),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl LiveForwarders {
    /// Read registrations and loads, then follow them. Fails only if the first reads do.
    pub async fn start(store: Arc<dyn Store>) -> Result<Self, ServiceError> {
        let registrations =
            PrefixCache::start(Arc::clone(&store), keys::forwarders(), decode_forwarder).await?;
        let loads = PrefixCache::start(store, keys::loads(), decode::<Load>).await?;
        Ok(Self {
            registrations,
            loads,
        })
    }

    /// Every live forwarder now, by id.
    pub fn snapshot(&self) -> BTreeMap<ForwarderId, LiveForwarder> {
        let mut live = self.registrations.read(|entries| {
            entries
                .values()
                .map(|c| {
                    let f = LiveForwarder {
                        info: c.value.clone(),
                        registered: c.create_revision,
                        lease: c.lease,
                        load: None,
                    };
                    (c.value.id.clone(), f)
                })
                .collect::<BTreeMap<_, _>>()
        });
        self.loads.read(|entries| {
            for (id, f) in &mut live {
                f.load = entries.get(&keys::load(id)).map(|c| c.value.clone());
            }
        });
        live
    }

    /// One live forwarder.
    pub fn get(&self, id: &ForwarderId) -> Option<LiveForwarder> {
        let mut f = self.registrations.read(|entries| {
            entries.get(&keys::forwarder(id)).map(|c| LiveForwarder {
                info: c.value.clone(),
                registered: c.create_revision,
                lease: c.lease,
                load: None,
            })
        })?;
        f.load = self
            .loads
            .read(|entries| entries.get(&keys::load(id)).map(|c| c.value.clone()));
        Some(f)
    }

    /// Whether the forwarder is registered (as far as the cache knows).
    pub fn contains(&self, id: &ForwarderId) -> bool {
        self.registrations
            .read(|entries| entries.contains_key(&keys::forwarder(id)))
    }

    /// Deaths from now on: every Delete of a registration, including those found missing
    /// when the cache re-reads after a broken watch.
    pub fn deaths(&self) -> Deaths {
        Deaths {
            rx: self.registrations.subscribe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn info(id: &str, region: &str) -> ForwarderInfo {
        ForwarderInfo {
            id: ForwarderId::new(id).unwrap(),
            region: region.to_owned(),
            public_ip: "192.0.2.1".to_owned(),
            port_range: (20_000, 20_009),
            capacity: Capacity {
                max_legs: 100,
                max_packets_per_second: 1_000_000,
            },
            dtls_fingerprint: String::new(),
        }
    }

    fn registry(store: &MemoryStore, ttl_ms: u64) -> ForwarderRegistry {
        ForwarderRegistry::new(
            Arc::new(store.clone()),
            RegistryConfig {
                lease_ttl_ms: ttl_ms,
            },
        )
    }

    /// Poll `cond` on the (virtual) clock: the caches follow the store asynchronously.
    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[test]
    fn config_from_toml() {
        let c: RegistryConfig = toml::from_str("lease_ttl_ms = 6000").unwrap();
        assert_eq!(c.lease_ttl(), Duration::from_secs(6));
        let c: RegistryConfig = toml::from_str("").unwrap();
        assert_eq!(c.lease_ttl(), DEFAULT_LEASE_TTL);
        assert!(toml::from_str::<RegistryConfig>("ttl = 1").is_err());
    }

    #[test]
    fn records_carry_a_version_and_round_trip() {
        let mut load = Load {
            legs: 3,
            cpu: 0.5,
            ..Load::default()
        };
        load.meetings.insert(MeetingId::new("m").unwrap(), 3);
        let bytes = encode("k", &load).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(json["meetings"]["m"], 3);
        let kv = KeyValue {
            key: "k".to_owned(),
            value: bytes,
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            lease: None,
        };
        assert_eq!(decode::<Load>(&kv).unwrap(), load);

        let f = info("f1", "eu");
        let kv = KeyValue {
            key: keys::forwarder(&f.id),
            value: encode("k", &f).unwrap(),
            ..kv
        };
        assert_eq!(decode_forwarder(&kv).unwrap(), f);
        let elsewhere = KeyValue {
            key: keys::forwarder(&ForwarderId::new("f2").unwrap()),
            ..kv.clone()
        };
        assert!(matches!(
            decode_forwarder(&elsewhere),
            Err(ServiceError::Corrupt { .. })
        ));
        let future = KeyValue {
            value: br#"{"version":2,"legs":1}"#.to_vec(),
            ..kv
        };
        assert!(matches!(
            decode::<Load>(&future),
            Err(ServiceError::Corrupt { .. })
        ));
    }

    #[test]
    fn validation_and_addresses() {
        let mut f = info("f", "eu");
        assert!(f.validate().is_ok());
        assert_eq!(f.address(20_000), "192.0.2.1:20000");
        assert_eq!(f.port_count(), 10);
        f.public_ip = "2001:db8::1".to_owned();
        assert_eq!(f.address(5), "[2001:db8::1]:5");
        for bad in [
            ForwarderInfo {
                public_ip: "example.org".to_owned(),
                ..info("f", "eu")
            },
            ForwarderInfo {
                port_range: (10, 9),
                ..info("f", "eu")
            },
            ForwarderInfo {
                port_range: (0, 9),
                ..info("f", "eu")
            },
            ForwarderInfo {
                region: String::new(),
                ..info("f", "eu")
            },
        ] {
            let err = bad.validate().unwrap_err();
            assert_eq!(err.code(), super::super::Code::InvalidArgument, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn second_live_registration_is_refused_until_the_lease_expires() {
        let store = MemoryStore::new();
        let reg = registry(&store, 3000);
        let f = info("f1", "eu");
        let session = reg.register(f.clone()).await.unwrap();
        assert_eq!(session.heartbeat_interval, Duration::from_secs(1));

        let err = reg.register(f.clone()).await.unwrap_err();
        assert!(matches!(err, ServiceError::AlreadyRegistered(_)), "{err:?}");
        assert_eq!(err.code(), super::super::Code::AlreadyExists);
        // The refused attempt changed nothing.
        assert_eq!(reg.get(&f.id).await.unwrap(), Some(f.clone()));

        // Heartbeats keep it alive past several TTLs.
        for _ in 0..10 {
            tokio::time::sleep(session.heartbeat_interval).await;
            reg.heartbeat(&f.id, &session, &Load::default())
                .await
                .unwrap();
        }
        assert!(reg.get(&f.id).await.unwrap().is_some());

        // Silence: gone after the TTL, and the id can be registered again.
        tokio::time::sleep(Duration::from_millis(3001)).await;
        assert_eq!(reg.get(&f.id).await.unwrap(), None);
        let err = reg
            .heartbeat(&f.id, &session, &Load::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::NotRegistered(_)), "{err:?}");
        assert_eq!(err.code(), super::super::Code::FailedPrecondition);
        let again = reg.register(f.clone()).await.unwrap();
        assert_ne!(again.lease, session.lease);
        assert!(again.registration > session.registration);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_of_an_old_session_cannot_refresh_a_new_registration() {
        let store = MemoryStore::new();
        let reg = registry(&store, 3000);
        let f = info("f1", "eu");
        let old = reg.register(f.clone()).await.unwrap();
        // Someone deletes the registration by hand; the old lease is still alive.
        store.delete(&keys::forwarder(&f.id)).await.unwrap();
        let new = reg.register(f.clone()).await.unwrap();
        let err = reg
            .heartbeat(&f.id, &old, &Load::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::NotRegistered(_)), "{err:?}");
        reg.heartbeat(&f.id, &new, &Load::default()).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn live_set_follows_registrations_loads_and_deaths() {
        let store = MemoryStore::new();
        let reg = registry(&store, 3000);
        let live = LiveForwarders::start(Arc::new(store.clone()))
            .await
            .unwrap();
        let mut deaths = live.deaths();
        let a = reg.register(info("a", "eu")).await.unwrap();
        let b = reg.register(info("b", "us")).await.unwrap();
        let id_a = ForwarderId::new("a").unwrap();
        let id_b = ForwarderId::new("b").unwrap();
        eventually("both registrations", || live.snapshot().len() == 2).await;
        let load = Load {
            legs: 7,
            ..Load::default()
        };
        reg.heartbeat(&id_a, &a, &load).await.unwrap();
        eventually("a's load", || {
            live.get(&id_a).and_then(|f| f.load).map(|l| l.legs) == Some(7)
        })
        .await;
        assert_eq!(live.get(&id_a).unwrap().registered, a.registration);

        reg.deregister(&id_b, &b).await.unwrap();
        assert_eq!(deaths.recv().await, Some(Death::Died(id_b.clone())));
        assert!(!live.contains(&id_b));
        // a expires: no heartbeat for a TTL.
        assert_eq!(deaths.recv().await, Some(Death::Died(id_a.clone())));
        assert!(live.snapshot().is_empty());
    }

    #[tokio::test]
    async fn cache_resyncs_after_compaction_and_reports_missed_deaths() {
        // A tiny history: the follower's watch gets compacted while it is not polled.
        let store = MemoryStore::with_config(crate::store::MemoryConfig {
            history_limit: 2,
            watch_batch: 1,
        });
        let reg = registry(&store, 60_000);
        let x = reg.register(info("x", "eu")).await.unwrap();
        let live = LiveForwarders::start(Arc::new(store.clone()))
            .await
            .unwrap();
        let mut deaths = live.deaths();
        let id_x = ForwarderId::new("x").unwrap();
        // Many writes in a row without yielding, then the death of x.
        for i in 0..20 {
            store
                .put(
                    &keys::load(&ForwarderId::new(format!("n{i}")).unwrap()),
                    b"{}".to_vec(),
                    None,
                )
                .await
                .unwrap();
        }
        reg.deregister(&id_x, &x).await.unwrap();
        let death = tokio::time::timeout(Duration::from_secs(10), deaths.recv())
            .await
            .unwrap();
        assert_eq!(death, Some(Death::Died(id_x)));
        assert!(live.snapshot().is_empty());
    }
}
