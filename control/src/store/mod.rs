//! Where the control plane's state lives: one [`Store`] trait with etcd's semantics, and two
//! implementations of it.
//!
//! * [`EtcdStore`] talks to a real etcd cluster (production, several control-plane nodes).
//! * [`MemoryStore`] is the embedded default for one machine: the same model in one process.
//!
//! One conformance suite (`control/tests/store_conformance.rs`) runs against both, so code
//! written against the trait behaves the same on either.
//!
//! # The model (etcd v3's, see <https://etcd.io/docs/v3.4/learning/data_model/>)
//!
//! * A flat, ordered map from string keys to byte values.
//! * One global **revision** counter for the whole store. An empty store is at revision 1;
//!   every write (a put, a delete that deletes something, a transaction that changes
//!   anything, a lease expiry that deletes keys) bumps it by exactly one, whatever the number
//!   of keys it touches. Reads never bump it.
//! * Every key carries `create_revision` (revision of the write that created it),
//!   `mod_revision` (revision of its last write) and `version` (number of writes since it was
//!   created, 1 after creation). An absent key compares as version 0, create/mod revision 0.
//!   Deleting a key and putting it again starts a new life: new create_revision, version 1.
//! * **Transactions** ([`Txn`]): if every [`Compare`] holds, run the `success` ops, else the
//!   `failure` ops, all atomically at one revision. Create-if-absent is
//!   `Compare::absent(key)`; compare-and-swap is `Compare::mod_revision(key, Equal, r)`.
//!   As in etcd, a transaction may not write the same key twice (two puts of one key, or a put
//!   inside a deleted range): that is rejected with [`StoreError::Other`].
//! * **Leases** expire after their TTL unless kept alive; expiry or revocation deletes every
//!   key attached to the lease, at one revision, and watchers see the deletes. Liveness of a
//!   forwarder or a control-plane node is a key attached to its lease.
//! * **Watches** deliver every change under a prefix, in revision order, starting at a chosen
//!   revision. The no-gap pattern: `range(prefix)` returns the revision `R` it read at; then
//!   `watch(prefix, Some(R + 1))` delivers exactly the changes after that snapshot. A watch
//!   from a revision the store no longer has history for fails with
//!   [`StoreError::Compacted`]: re-read with `range` and watch again.
//!
//! # Errors
//!
//! [`StoreError::Unavailable`] is the only retryable error (the connection to etcd broke, a
//! request timed out). Compaction is reported as an item of the watch stream (then the stream
//! ends), never by [`Store::watch`] itself: etcd only discovers it after the watch is created.

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

pub mod etcd;
pub mod memory;

pub use etcd::{EtcdConfig, EtcdStore};
pub use memory::{MemoryConfig, MemoryStore};

/// etcd's revision: a store-wide counter, 1 for an empty store, +1 per write.
///
/// A plain `i64` (as on etcd's wire) so that `R + 1` reads naturally in the range-then-watch
/// pattern.
pub type Revision = i64;

/// A lease: keys attached to it are deleted when it expires or is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // etcdctl prints lease ids in hex; do the same so logs can be matched against it.
        write!(f, "{:x}", self.0)
    }
}

/// One key with its value and etcd's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, relative to the store's root (an [`EtcdStore`] strips its root prefix).
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created this key (in its current life).
    pub create_revision: Revision,
    /// Revision of the last write to this key; for a delete event, the revision of the delete.
    pub mod_revision: Revision,
    /// Writes since creation: 1 after the creating put. 0 in a delete event.
    pub version: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// How a [`Compare`] relates the key's current field to the given operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    /// The key's field is less than the operand (values: bytewise lexicographic).
    Less,
    /// The key's field is greater than the operand.
    Greater,
}

/// Which field of a key a [`Compare`] looks at, with the operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// As in etcd, any comparison on the value of an absent key is false.
    Value(Vec<u8>),
    /// An absent key has version 0.
    Version(i64),
    /// An absent key has create_revision 0.
    CreateRevision(Revision),
    /// An absent key has mod_revision 0.
    ModRevision(Revision),
}

/// One condition of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    /// True when `key` does not exist (etcd's `version == 0` idiom).
    pub fn absent(key: impl Into<String>) -> Self {
        Self::version(key, CompareOp::Equal, 0)
    }

    /// True when `key` exists.
    pub fn present(key: impl Into<String>) -> Self {
        Self::version(key, CompareOp::Greater, 0)
    }

    pub fn value(key: impl Into<String>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            op,
            target: CompareTarget::Value(value.into()),
        }
    }

    pub fn version(key: impl Into<String>, op: CompareOp, version: i64) -> Self {
        Self {
            key: key.into(),
            op,
            target: CompareTarget::Version(version),
        }
    }

    pub fn create_revision(key: impl Into<String>, op: CompareOp, revision: Revision) -> Self {
        Self {
            key: key.into(),
            op,
            target: CompareTarget::CreateRevision(revision),
        }
    }

    /// With [`CompareOp::Equal`] and the `mod_revision` last read: compare-and-swap.
    pub fn mod_revision(key: impl Into<String>, op: CompareOp, revision: Revision) -> Self {
        Self {
            key: key.into(),
            op,
            target: CompareTarget::ModRevision(revision),
        }
    }
}

/// One operation of a [`Txn`] branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or overwrite `key`. Without a lease, a key that had one is detached from it.
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    /// Delete `key` if present.
    Delete { key: String },
    /// Delete every key starting with `prefix`.
    DeletePrefix { prefix: String },
    /// Read `key` as it is at this point of the transaction (after the ops before it): the
    /// result lands in [`TxnResponse::gets`].
    Get { key: String },
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    pub fn put_with_lease(
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }

    pub fn delete_prefix(prefix: impl Into<String>) -> Self {
        Op::DeletePrefix {
            prefix: prefix.into(),
        }
    }

    pub fn get(key: impl Into<String>) -> Self {
        Op::Get { key: key.into() }
    }
}

/// An atomic if-then-else, as etcd's `Txn`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// All must hold for `success` to run; an empty list holds.
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn when(mut self, compares: impl Into<Vec<Compare>>) -> Self {
        self.compares = compares.into();
        self
    }

    pub fn and_then(mut self, ops: impl Into<Vec<Op>>) -> Self {
        self.success = ops.into();
        self
    }

    pub fn or_else(mut self, ops: impl Into<Vec<Op>>) -> Self {
        self.failure = ops.into();
        self
    }
}

/// What a [`Txn`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (and `success` ran) or not (`failure` ran).
    pub succeeded: bool,
    /// The store's revision after the transaction: the transaction's own revision if it
    /// wrote anything.
    pub revision: Revision,
    /// One entry per [`Op::Get`] of the branch that ran, in order; `None` for an absent key.
    pub gets: Vec<Option<KeyValue>>,
}

/// Whether a [`WatchEvent`] is a put or a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEventKind {
    Put,
    Delete,
}

/// One change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: WatchEventKind,
    /// For a put: the key as written. For a delete: only `key` and `mod_revision` (the
    /// revision of the delete) are meaningful, the rest is empty/zero, as in etcd.
    pub kv: KeyValue,
    /// The revision of the write that caused the event (equals `kv.mod_revision`). Several
    /// events share a revision when one transaction or lease expiry touched several keys.
    pub revision: Revision,
}

/// The stream returned by [`Store::watch`]: events in revision order. It ends after an
/// `Err` item ([`StoreError::Compacted`], or [`StoreError::Unavailable`] when the watch was
/// cancelled or the connection lost); the caller then re-reads with `range` and watches again.
pub type WatchStream = BoxStream<'static, Result<WatchEvent, StoreError>>;

/// Everything that can go wrong in a [`Store`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or did not answer in time. Retryable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The lease does not exist: it expired, was revoked, or never existed.
    #[error("lease not found (expired or revoked)")]
    LeaseNotFound,
    /// A watch asked for a revision whose history is gone. `oldest` is the oldest revision
    /// still available (informational: the right recovery is a fresh `range` + `watch`).
    #[error("requested revision is compacted; oldest available revision is {oldest}")]
    Compacted { oldest: Revision },
    /// Anything else: an invalid request (empty key, duplicate key in a txn), a response that
    /// does not fit the model (a key outside the root prefix, not UTF-8).
    #[error("store error: {0}")]
    Other(String),
}

impl StoreError {
    /// Whether trying the same call again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// A key-value store with etcd's semantics; see the [module docs](self) for the model.
///
/// Object safe so that the control plane holds an `Arc<dyn Store>` and picks the
/// implementation at startup: methods return boxed futures rather than being `async fn`.
pub trait Store: Send + Sync + fmt::Debug {
    /// The current value of `key`, if present.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>>;

    /// Every key starting with `prefix`, in key order, and the revision the read was at.
    /// An empty prefix reads everything.
    fn range<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<(Vec<KeyValue>, Revision), StoreError>>;

    /// How many keys start with `prefix`, and the revision the count was at. Sends no keys
    /// or values (etcd counts server-side with `count_only`), so it is how the control
    /// plane sizes a large prefix such as a webinar's audience.
    fn count<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(u64, Revision), StoreError>>;

    /// Create or overwrite `key`; returns the revision of the write. With `Some(lease)` the
    /// key is deleted when the lease ends ([`StoreError::LeaseNotFound`] if it already has).
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<Revision, StoreError>>;

    /// Delete `key`: `Some(revision of the delete)`, or `None` if it was absent (and the
    /// revision did not move).
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Revision>, StoreError>>;

    /// Run a transaction atomically.
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse, StoreError>>;

    /// Create a lease that ends `ttl` after the last keep-alive. The store may round the TTL
    /// up (etcd: to whole seconds, and to at least its minimum TTL, 1.5 x the election
    /// timeout); [`Store::keep_alive`] returns the TTL actually in force.
    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>>;

    /// Restart the lease's TTL; returns that TTL. [`StoreError::LeaseNotFound`] if the
    /// lease has already ended. Call it well within the TTL (a third of it is customary).
    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<Duration, StoreError>>;

    /// End the lease now, deleting its keys. [`StoreError::LeaseNotFound`] if it had already
    /// ended.
    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Every change to keys starting with `prefix` with revision >= `start_revision`, in
    /// order; `None` (or a revision <= 0) means changes after now. Starting in the past
    /// replays history; see [`WatchStream`] for how the stream ends.
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        start_revision: Option<Revision>,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>>;
}

/// etcd rejects empty keys; so do both stores, so that code is not surprised by one of them.
fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        Err(StoreError::Other("empty key".to_owned()))
    } else {
        Ok(())
    }
}

/// etcd's rule for one transaction branch: a key may be put at most once, and not put inside
/// a range the same branch deletes ("duplicate key given in txn request"). Checked on both
/// branches before the compares are evaluated, as etcd does.
fn check_txn_writes(ops: &[Op]) -> Result<(), StoreError> {
    let mut puts = std::collections::BTreeSet::new();
    for op in ops {
        match op {
            Op::Put { key, .. } => {
                check_key(key)?;
                if !puts.insert(key.as_str()) {
                    return Err(StoreError::Other(format!(
                        "duplicate key given in txn request: {key}"
                    )));
                }
            }
            Op::Delete { key } | Op::Get { key } => check_key(key)?,
            Op::DeletePrefix { .. } => {}
        }
    }
    for op in ops {
        let hit = match op {
            Op::Delete { key } => puts.contains(key.as_str()),
            Op::DeletePrefix { prefix } => puts.iter().any(|k| k.starts_with(prefix.as_str())),
            Op::Put { .. } | Op::Get { .. } => false,
        };
        if hit {
            return Err(StoreError::Other(
                "duplicate key given in txn request: a put inside a deleted range".to_owned(),
            ));
        }
    }
    Ok(())
}

fn check_txn(txn: &Txn) -> Result<(), StoreError> {
    for c in &txn.compares {
        check_key(&c.key)?;
    }
    check_txn_writes(&txn.success)?;
    check_txn_writes(&txn.failure)
}
