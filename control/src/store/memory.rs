//! [`MemoryStore`]: the [`Store`] model in one process, the embedded default for a
//! single-machine deployment (and a fast stand-in for etcd in tests).
//!
//! # How it works
//!
//! All state sits behind one `std::sync::Mutex`, taken once per operation and never held
//! across an `.await`, so every operation (a whole transaction, a lease expiry) is atomic and
//! gets one revision, exactly like etcd's.
//!
//! **Watchers** are not fed through per-watcher channels. Every event is appended to one
//! bounded history ring (the last [`MemoryConfig::history_limit`] events) and a
//! `tokio::sync::watch` channel announces the newest revision. Each watch stream keeps a
//! cursor into the ring and copies out the events matching its prefix when woken. So:
//! * a writer never blocks and never does per-watcher work beyond one notification, however
//!   slow a watcher is;
//! * memory is bounded by the ring, not by the slowest watcher;
//! * a watcher that falls more than a ring behind (or asks to start before the ring's oldest
//!   revision) gets [`StoreError::Compacted`] and its stream ends, which is what etcd does to a
//!   watcher that needs compacted history. Its owner re-reads with `range` and watches again.
//!
//! This is etcd's own design (watchers read the MVCC history; slow ones become "unsynced" and
//! catch up from it), with the ring playing etcd's compaction.
//!
//! **Leases** expire on tokio time (`tokio::time::Instant`, so paused-clock tests work). A
//! lease whose deadline has passed is expired at the start of every operation, so no read
//! ever sees a key whose lease is over. A reaper task, spawned on the first `grant_lease`,
//! wakes at the earliest deadline so that expiry (and the watchers' Delete events) happens on
//! time even when nobody calls the store. Unlike etcd, TTLs are not rounded to seconds.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::StreamExt;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{
    check_key, check_txn, CompareOp, CompareTarget, KeyValue, LeaseId, Op, Revision, Store,
    StoreError, Txn, TxnResponse, WatchEvent, WatchEventKind, WatchStream,
};

/// Tuning of a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Events kept for watchers that start in the past or fall behind. A watcher further
    /// behind than this gets [`StoreError::Compacted`].
    pub history_limit: usize,
    /// Most events a watch stream copies out per lock acquisition: bounds the time a
    /// catching-up watcher holds the lock against writers.
    pub watch_batch: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            history_limit: 10_000,
            watch_batch: 256,
        }
    }
}

/// The in-process [`Store`]; cheap to clone (clones share the same state).
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A summary: the whole map would flood any log that prints the store.
        let st = lock(&self.shared.state);
        f.debug_struct("MemoryStore")
            .field("revision", &st.revision)
            .field("keys", &st.kvs.len())
            .field("leases", &st.leases.len())
            .field("history", &st.history.len())
            .field("compacted", &st.compacted)
            .finish()
    }
}

struct Shared {
    state: Mutex<State>,
    /// The newest revision, for watch streams to wait on.
    revision_tx: watch::Sender<Revision>,
    /// Wakes the reaper when a lease gets an earlier deadline than it sleeps towards, and
    /// when the store is dropped. Not inside `State`: the reaper holds it without the store.
    reaper_wake: Arc<Notify>,
    reaper: Mutex<Option<JoinHandle<()>>>,
    watch_batch: usize,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Let the reaper notice the store is gone instead of sleeping until a deadline.
        self.reaper_wake.notify_one();
    }
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct State {
    revision: Revision,
    kvs: BTreeMap<String, KeyValue>,
    leases: HashMap<LeaseId, Lease>,
    /// Lease deadlines in order, to expire the overdue ones cheaply.
    deadlines: BTreeSet<(Instant, LeaseId)>,
    next_lease: i64,
    /// The last `history_limit` events; `history_start` is the sequence number of the first.
    history: VecDeque<WatchEvent>,
    history_start: u64,
    history_limit: usize,
    /// Every revision <= this one has lost (some of) its events from the history.
    compacted: Revision,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock can only come from a bug in this file (no user code runs
    // under it); carrying on with the state is better than poisoning every later call.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::default())
    }

    pub fn with_config(config: MemoryConfig) -> Self {
        // Like etcd, an empty store is at revision 1: the first write gets revision 2.
        let (revision_tx, _) = watch::channel(1);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    revision: 1,
                    kvs: BTreeMap::new(),
                    leases: HashMap::new(),
                    deadlines: BTreeSet::new(),
                    next_lease: 1,
                    history: VecDeque::new(),
                    history_start: 0,
                    history_limit: config.history_limit.max(1),
                    compacted: 0,
                }),
                revision_tx,
                reaper_wake: Arc::new(Notify::new()),
                reaper: Mutex::new(None),
                watch_batch: config.watch_batch.max(1),
            }),
        }
    }

    /// Lock the state with overdue leases already expired.
    fn state(&self) -> MutexGuard<'_, State> {
        let mut st = lock(&self.shared.state);
        if st.expire_overdue(Instant::now()) {
            self.shared.revision_tx.send_replace(st.revision);
        }
        st
    }

    /// Start the reaper if it is not running (first lease, or its runtime went away: each
    /// `#[tokio::test]` has its own runtime, and a store may outlive one).
    fn ensure_reaper(&self) {
        let mut reaper = lock(&self.shared.reaper);
        if reaper.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let weak = Arc::downgrade(&self.shared);
        let wake = Arc::clone(&self.shared.reaper_wake);
        *reaper = Some(tokio::spawn(reap(weak, wake)));
    }

    /// Run a transaction; also says whether it wrote anything.
    fn txn_now(&self, txn: Txn) -> Result<(TxnResponse, bool), StoreError> {
        check_txn(&txn)?;
        let mut st = self.state();
        let succeeded = txn.compares.iter().all(|c| st.compare(c));
        let ops = if succeeded { txn.success } else { txn.failure };
        let before = st.revision;
        let gets = st.apply(ops)?;
        let changed = st.revision != before;
        if changed {
            self.shared.revision_tx.send_replace(st.revision);
        }
        let resp = TxnResponse {
            succeeded,
            revision: st.revision,
            gets,
        };
        Ok((resp, changed))
    }
}

/// Expire leases at their deadlines. Holds only a `Weak` so that it never keeps a dropped
/// store alive; `Shared::drop` wakes it to exit.
async fn reap(store: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(shared) = store.upgrade() else {
                return;
            };
            let mut st = lock(&shared.state);
            if st.expire_overdue(Instant::now()) {
                shared.revision_tx.send_replace(st.revision);
            }
            st.deadlines.first().map(|&(deadline, _)| deadline)
        };
        // A grant between the lock above and the await below is not lost: `notify_one`
        // stores a permit when nobody is waiting.
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

impl State {
    /// Revoke every lease whose deadline is <= `now`, each at its own revision as etcd does.
    /// Returns whether the revision moved.
    fn expire_overdue(&mut self, now: Instant) -> bool {
        let before = self.revision;
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.revoke(id);
        }
        self.revision != before
    }

    /// Remove a lease and delete its keys at one new revision (none if it had no keys).
    fn revoke(&mut self, id: LeaseId) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        self.deadlines.remove(&(lease.deadline, id));
        if !lease.keys.is_empty() {
            let rev = self.revision + 1;
            for key in lease.keys {
                // The lease was removed above, so `delete_key` does not touch its key set.
                self.delete_key(&key, rev);
            }
            self.revision = rev;
        }
        true
    }

    fn compare(&self, c: &super::Compare) -> bool {
        let kv = self.kvs.get(&c.key);
        let ord = match (&c.target, kv) {
            // etcd: "nil == empty string in grpc; no way to represent missing value", so a
            // value comparison on an absent key is false whatever the operator.
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
            (CompareTarget::Version(v), kv) => kv.map_or(0, |kv| kv.version).cmp(v),
            (CompareTarget::CreateRevision(r), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(r),
            (CompareTarget::ModRevision(r), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(r),
        };
        match c.op {
            CompareOp::Equal => ord.is_eq(),
            CompareOp::NotEqual => ord.is_ne(),
            CompareOp::Less => ord.is_lt(),
            CompareOp::Greater => ord.is_gt(),
        }
    }

    /// Run one branch at revision `self.revision + 1`, moving the revision only if something
    /// changed. Leases are checked before anything is written, so a failed branch writes
    /// nothing.
    fn apply(&mut self, ops: Vec<Op>) -> Result<Vec<Option<KeyValue>>, StoreError> {
        for op in &ops {
            if let Op::Put {
                lease: Some(id), ..
            } = op
            {
                if !self.leases.contains_key(id) {
                    return Err(StoreError::LeaseNotFound);
                }
            }
        }
        let rev = self.revision + 1;
        let mut changed = false;
        let mut gets = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    self.put_key(key, value, lease, rev);
                    changed = true;
                }
                Op::Delete { key } => changed |= self.delete_key(&key, rev),
                Op::DeletePrefix { prefix } => {
                    let keys: Vec<String> = self
                        .kvs
                        .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                        .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in keys {
                        changed |= self.delete_key(&key, rev);
                    }
                }
                Op::Get { key } => gets.push(self.kvs.get(&key).cloned()),
            }
        }
        if changed {
            self.revision = rev;
        }
        Ok(gets)
    }

    fn put_key(&mut self, key: String, value: Vec<u8>, lease: Option<LeaseId>, rev: Revision) {
        let (create_revision, version, old_lease) = match self.kvs.get(&key) {
            Some(old) => (old.create_revision, old.version + 1, old.lease),
            None => (rev, 1, None),
        };
        if old_lease != lease {
            if let Some(l) = old_lease.and_then(|id| self.leases.get_mut(&id)) {
                l.keys.remove(&key);
            }
            if let Some(l) = lease.and_then(|id| self.leases.get_mut(&id)) {
                l.keys.insert(key.clone());
            }
        }
        let kv = KeyValue {
            key: key.clone(),
            value,
            create_revision,
            mod_revision: rev,
            version,
            lease,
        };
        self.record(WatchEvent {
            kind: WatchEventKind::Put,
            kv: kv.clone(),
            revision: rev,
        });
        self.kvs.insert(key, kv);
    }

    fn delete_key(&mut self, key: &str, rev: Revision) -> bool {
        let Some(old) = self.kvs.remove(key) else {
            return false;
        };
        if let Some(l) = old.lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.remove(key);
        }
        self.record(WatchEvent {
            kind: WatchEventKind::Delete,
            kv: KeyValue {
                key: old.key,
                value: Vec::new(),
                create_revision: 0,
                mod_revision: rev,
                version: 0,
                lease: None,
            },
            revision: rev,
        });
        true
    }

    fn record(&mut self, event: WatchEvent) {
        self.history.push_back(event);
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.history_start += 1;
                // Other events of this revision may remain, but the revision is no longer
                // complete, so nobody may start watching at it.
                self.compacted = self.compacted.max(old.revision);
            }
        }
    }

    /// Sequence number (position in the history) of the first event with revision >= `rev`.
    fn seq_of_revision(&self, rev: Revision) -> u64 {
        let idx = self.history.partition_point(|e| e.revision < rev);
        self.history_start + idx as u64
    }

    fn history_end(&self) -> u64 {
        self.history_start + self.history.len() as u64
    }

    fn compacted_error(&self) -> StoreError {
        StoreError::Compacted {
            oldest: self.compacted + 1,
        }
    }
}

/// A watch stream's position and filter.
struct Cursor {
    shared: Arc<Shared>,
    revision_rx: watch::Receiver<Revision>,
    prefix: String,
    /// Sequence number of the next history event to look at.
    next: u64,
    /// An error to yield first: the start revision was already compacted. Reported in the
    /// stream rather than by `watch()` so that both stores behave alike (etcd only reports
    /// compaction after the watch is created).
    failed: Option<StoreError>,
    ready: VecDeque<WatchEvent>,
    done: bool,
}

impl Cursor {
    /// Copy the next matching events out of the history, or the error if the cursor fell out
    /// of the ring. Bounded work per lock (`watch_batch` matches, 16x that scanned) so that a
    /// catching-up watcher does not hold writers off. Returns whether it reached the end.
    fn fill(&mut self) -> Result<bool, StoreError> {
        let st = lock(&self.shared.state);
        if self.next < st.history_start {
            return Err(st.compacted_error());
        }
        let from = usize::try_from(self.next - st.history_start).unwrap_or(usize::MAX);
        let scan_limit = self.shared.watch_batch.saturating_mul(16);
        let (mut taken, mut scanned) = (0, 0);
        for e in st.history.range(from.min(st.history.len())..) {
            if taken >= self.shared.watch_batch || scanned >= scan_limit {
                return Ok(false);
            }
            self.next += 1;
            scanned += 1;
            if e.kv.key.starts_with(self.prefix.as_str()) {
                self.ready.push_back(e.clone());
                taken += 1;
            }
        }
        Ok(true)
    }

    async fn next_item(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        if self.done {
            return None;
        }
        if let Some(err) = self.failed.take() {
            self.done = true;
            return Some(Err(err));
        }
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(Ok(e));
            }
            // Mark the current revision seen *before* scanning: a write after the scan then
            // makes `changed()` return at once, so no wake-up is lost.
            self.revision_rx.borrow_and_update();
            let at_end = match self.fill() {
                Ok(at_end) => at_end,
                Err(err) => {
                    self.done = true;
                    return Some(Err(err));
                }
            };
            if self.ready.is_empty() && at_end && self.revision_rx.changed().await.is_err() {
                // The sender lives in `Shared`, which this cursor keeps alive: unreachable in
                // practice, but ending the stream is the right answer if it ever happens.
                self.done = true;
                return None;
            }
        }
    }
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>> {
        Box::pin(async move {
            check_key(key)?;
            Ok(self.state().kvs.get(key).cloned())
        })
    }

    fn range<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<(Vec<KeyValue>, Revision), StoreError>> {
        Box::pin(async move {
            let st = self.state();
            let kvs = st
                .kvs
                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, kv)| kv.clone())
                .collect();
            Ok((kvs, st.revision))
        })
    }

    fn count<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(u64, Revision), StoreError>> {
        Box::pin(async move {
            let st = self.state();
            let n = st
                .kvs
                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .count();
            Ok((n as u64, st.revision))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<Revision, StoreError>> {
        Box::pin(async move {
            let op = Op::Put {
                key: key.to_owned(),
                value,
                lease,
            };
            Ok(self.txn_now(Txn::new().and_then([op]))?.0.revision)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Revision>, StoreError>> {
        Box::pin(async move {
            let (resp, deleted) = self.txn_now(Txn::new().and_then([Op::delete(key)]))?;
            Ok(deleted.then_some(resp.revision))
        })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse, StoreError>> {
        Box::pin(async move { Ok(self.txn_now(txn)?.0) })
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        Box::pin(async move {
            let id = {
                let mut st = self.state();
                let id = LeaseId(st.next_lease);
                st.next_lease += 1;
                let deadline = Instant::now() + ttl;
                let earliest = st.deadlines.first().is_none_or(|&(d, _)| deadline < d);
                st.deadlines.insert((deadline, id));
                st.leases.insert(
                    id,
                    Lease {
                        ttl,
                        deadline,
                        keys: BTreeSet::new(),
                    },
                );
                if earliest {
                    self.shared.reaper_wake.notify_one();
                }
                id
            };
            self.ensure_reaper();
            Ok(id)
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<Duration, StoreError>> {
        Box::pin(async move {
            // `state()` expires overdue leases first: a lease past its deadline is gone even
            // if the reaper has not run yet, as etcd answers "not found" for it.
            let mut st = self.state();
            let st = &mut *st;
            let l = st.leases.get_mut(&lease).ok_or(StoreError::LeaseNotFound)?;
            st.deadlines.remove(&(l.deadline, lease));
            l.deadline = Instant::now() + l.ttl;
            st.deadlines.insert((l.deadline, lease));
            // The reaper may now wake early for the old deadline; it finds nothing overdue
            // and sleeps again, which is cheaper than waking it on every keep-alive.
            Ok(l.ttl)
        })
    }

    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut st = self.state();
            let before = st.revision;
            if !st.revoke(lease) {
                return Err(StoreError::LeaseNotFound);
            }
            if st.revision != before {
                self.shared.revision_tx.send_replace(st.revision);
            }
            Ok(())
        })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        start_revision: Option<Revision>,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>> {
        Box::pin(async move {
            let st = self.state();
            let (next, failed) = match start_revision {
                Some(rev) if rev > 0 => {
                    if rev <= st.compacted {
                        (st.history_end(), Some(st.compacted_error()))
                    } else {
                        (st.seq_of_revision(rev), None)
                    }
                }
                _ => (st.history_end(), None),
            };
            let cursor = Cursor {
                shared: Arc::clone(&self.shared),
                revision_rx: self.shared.revision_tx.subscribe(),
                prefix: prefix.to_owned(),
                next,
                failed,
                ready: VecDeque::new(),
                done: false,
            };
            drop(st);
            let stream = futures::stream::unfold(cursor, |mut c| async move {
                let item = c.next_item().await?;
                Some((item, c))
            });
            Ok(stream.boxed())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(history_limit: usize) -> MemoryStore {
        MemoryStore::with_config(MemoryConfig {
            history_limit,
            watch_batch: 2,
        })
    }

    async fn next(stream: &mut WatchStream) -> Result<WatchEvent, StoreError> {
        // Longer than any lease in these tests: on a paused clock the timeout must not be the
        // first timer to fire.
        match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => panic!("stream ended"),
            Err(_) => panic!("no item within 60 s"),
        }
    }

    #[tokio::test]
    async fn revisions_start_like_etcd() {
        let s = MemoryStore::new();
        assert_eq!(s.range("").await.expect("range").1, 1);
        assert_eq!(s.put("a", vec![], None).await.expect("put"), 2);
    }

    #[tokio::test]
    async fn watch_older_than_history_is_compacted() {
        let s = small(4);
        let mut revs = Vec::new();
        for i in 0..6u8 {
            revs.push(s.put(&format!("k{i}"), vec![i], None).await.expect("put"));
        }
        // History holds the last 4 events: revisions revs[2..].
        let mut w = s.watch("", Some(revs[1])).await.expect("watch");
        match next(&mut w).await {
            Err(StoreError::Compacted { oldest }) => assert_eq!(oldest, revs[2]),
            other => panic!("expected Compacted, got {other:?}"),
        }
        assert!(w.next().await.is_none(), "the stream ends after the error");

        // The oldest revision still held replays fine (in batches of `watch_batch`).
        let mut w = s.watch("", Some(revs[2])).await.expect("watch");
        for &rev in &revs[2..] {
            assert_eq!(next(&mut w).await.expect("event").revision, rev);
        }
    }

    #[tokio::test]
    async fn partly_evicted_revision_is_compacted() {
        let s = small(3);
        let txn = Txn::new().and_then([Op::put("a", "1"), Op::put("b", "1"), Op::put("c", "1")]);
        let r1 = s.txn(txn).await.expect("txn").revision;
        let r2 = s.put("d", vec![], None).await.expect("put");
        // "a" of r1 was evicted: r1 may not be replayed half, r2 can be.
        let mut w = s.watch("", Some(r1)).await.expect("watch");
        assert!(
            matches!(next(&mut w).await, Err(StoreError::Compacted { oldest }) if oldest == r2)
        );
        let mut w = s.watch("", Some(r2)).await.expect("watch");
        assert_eq!(next(&mut w).await.expect("event").kv.key, "d");
    }

    #[tokio::test]
    async fn slow_watcher_is_compacted_not_blocking() {
        let s = small(4);
        let mut w = s.watch("", None).await.expect("watch");
        // The writer never waits for the watcher, which falls a whole history behind.
        for i in 0..10u8 {
            s.put("k", vec![i], None).await.expect("put");
        }
        assert!(matches!(
            next(&mut w).await,
            Err(StoreError::Compacted { .. })
        ));
        assert!(w.next().await.is_none());
    }

    #[tokio::test]
    async fn watcher_within_history_catches_up() {
        let s = small(100);
        let mut w = s.watch("p/", None).await.expect("watch");
        for i in 0..50u8 {
            s.put(&format!("p/{i}"), vec![i], None).await.expect("put");
            s.put("q/noise", vec![i], None).await.expect("put");
        }
        for i in 0..50u8 {
            let e = next(&mut w).await.expect("event");
            assert_eq!(e.kv.key, format!("p/{i}"));
        }
        // A long run of other keys (more than one scan's worth) before the next match.
        let mut w = s.watch("p/", None).await.expect("watch");
        for i in 0..90u8 {
            s.put("q/noise", vec![i], None).await.expect("put");
        }
        s.put("p/last", vec![], None).await.expect("put");
        assert_eq!(next(&mut w).await.expect("event").kv.key, "p/last");
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expires_on_tokio_time() {
        let s = MemoryStore::new();
        let start = Instant::now();
        let lease = s.grant_lease(Duration::from_secs(10)).await.expect("grant");
        s.put("k", vec![], Some(lease)).await.expect("put");
        let mut w = s.watch("", None).await.expect("watch");
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(
            s.keep_alive(lease).await.expect("keep_alive"),
            Duration::from_secs(10)
        );
        // The paused clock jumps to the reaper's deadline: exactly 9 s + 10 s.
        let e = next(&mut w).await.expect("event");
        assert_eq!((e.kind, e.kv.key.as_str()), (WatchEventKind::Delete, "k"));
        assert_eq!(start.elapsed(), Duration::from_secs(19));
        assert!(matches!(
            s.keep_alive(lease).await,
            Err(StoreError::LeaseNotFound)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn overdue_lease_is_gone_before_the_reaper_runs() {
        let s = MemoryStore::new();
        let lease = s.grant_lease(Duration::from_secs(1)).await.expect("grant");
        s.put("k", vec![], Some(lease)).await.expect("put");
        let mut w = s.watch("", None).await.expect("watch");
        // Stand for a reaper that is late (a busy runtime): stop it.
        let reaper = lock(&s.shared.reaper)
            .take()
            .expect("reaper started by the grant");
        reaper.abort();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(s.get("k").await.expect("get"), None);
        // The expiry done by `get` reached the watchers too.
        let e = next(&mut w).await.expect("event");
        assert_eq!((e.kind, e.kv.key.as_str()), (WatchEventKind::Delete, "k"));
    }

    #[tokio::test]
    async fn reaper_exits_when_store_is_dropped() {
        let s = MemoryStore::new();
        s.grant_lease(Duration::from_secs(3600))
            .await
            .expect("grant");
        let reaper = lock(&s.shared.reaper)
            .take()
            .expect("reaper started by the grant");
        drop(s);
        tokio::time::timeout(Duration::from_secs(5), reaper)
            .await
            .expect("reaper exited")
            .expect("reaper did not panic");
    }
}
