//! [`EtcdStore`]: the [`Store`] trait on a real etcd cluster (v3 API, via `etcd-client`).
//!
//! Every key is stored under a root prefix ([`EtcdConfig::root`], `/fanout/` by default) so
//! that several deployments, or many tests, can share one etcd; keys handed to and returned
//! by the trait are relative to it. etcd's generated types stay in this file.
//!
//! Mapping to etcd:
//! * `get`/`range`/`put`/`delete` are KV Range/Put/DeleteRange; `txn` is one Txn request
//!   (Compare + RequestOp), so its atomicity and single revision are etcd's own.
//! * Leases are etcd leases. TTLs are whole seconds on the wire: a `Duration` is rounded up,
//!   and the server raises anything below its minimum TTL (1.5 x election timeout rounded up
//!   to seconds: 2 s with etcd's default 1 s election timeout). Expiry is checked by the
//!   leader every 500 ms, so a key outlives its TTL by up to that much.
//! * `keep_alive` opens a LeaseKeepAlive stream per call rather than keeping one per lease:
//!   nothing to clean up when a caller forgets a lease, at the cost of two round trips on one
//!   HTTP/2 stream (etcd-client consumes the first response, which carries the TTL, inside
//!   its own call, so a second renewal fetches it). Keep-alives run every TTL/3 per lease,
//!   so this is noise.
//! * `watch` is one Watch stream per call, created with the prefix and start revision.
//!   `watch()` returns once etcd has confirmed the watcher (so "from now" means from the
//!   return of the call); compaction (`compact_revision` in a response) becomes
//!   [`StoreError::Compacted`], any other cancellation or a broken stream
//!   [`StoreError::Unavailable`], and the stream ends after that item.
//! * Unary calls are bounded by [`EtcdConfig::request_timeout`] (the watch stream itself is
//!   not, only its creation); transport errors and timeouts map to
//!   [`StoreError::Unavailable`].

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions, TxnOp, TxnOpResponse,
    WatchOptions,
};
use futures::future::BoxFuture;
use futures::stream::StreamExt;

use super::{
    check_key, check_txn, CompareOp, CompareTarget, KeyValue, LeaseId, Op, Revision, Store,
    StoreError, Txn, TxnResponse, WatchEvent, WatchEventKind, WatchStream,
};

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://host:port` (or bare `host:port`) of each member.
    pub endpoints: Vec<String>,
    /// Prefix of every key this store touches. Must not be empty.
    pub root: String,
    /// Bound on establishing the connection and on the first request in [`EtcdStore::connect`].
    pub connect_timeout: Duration,
    /// Bound on each unary request and on the creation of a watch.
    pub request_timeout: Duration,
    /// HTTP/2 ping interval: without pings a watch on a silently dead connection would wait
    /// forever.
    pub keep_alive_interval: Duration,
    /// How long a ping may go unanswered before the connection is declared dead.
    pub keep_alive_timeout: Duration,
}

impl EtcdConfig {
    /// Defaults for `endpoints`: root `/fanout/`, 5 s timeouts, pings every 10 s.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            root: "/fanout/".to_owned(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
        }
    }

    pub fn with_root(mut self, root: impl Into<String>) -> Self {
        self.root = root.into();
        self
    }
}

/// The etcd-backed [`Store`]; cheap to clone (clones share one connection).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    root: String,
    request_timeout: Duration,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // etcd_client::Client is not Debug.
        f.debug_struct("EtcdStore")
            .field("root", &self.root)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// gRPC status codes (<https://grpc.github.io/grpc/core/md_doc_statuscodes.html>), compared as
/// numbers so that this crate needs no direct dependency on tonic.
mod grpc_code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const UNAVAILABLE: i32 = 14;
}

fn map_err(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::EndpointError(_) => {
            StoreError::Unavailable(e.to_string())
        }
        // etcd-client's own words when the first keep-alive answer has TTL <= 0.
        E::LeaseKeepAliveError(msg) if msg.contains("not found") => StoreError::LeaseNotFound,
        E::LeaseKeepAliveError(msg) => StoreError::Unavailable(msg),
        E::GRpcStatus(status) => {
            let code: i32 = status.code().into();
            let msg = status.message();
            match code {
                // "etcdserver: requested lease not found"
                grpc_code::NOT_FOUND if msg.contains("lease not found") => {
                    StoreError::LeaseNotFound
                }
                // "mvcc: required revision has been compacted" (the oldest revision is not in
                // the message; 0 says "unknown").
                grpc_code::OUT_OF_RANGE if msg.contains("compacted") => {
                    StoreError::Compacted { oldest: 0 }
                }
                // UNKNOWN is what a connection reset mid-call often surfaces as.
                grpc_code::UNAVAILABLE
                | grpc_code::DEADLINE_EXCEEDED
                | grpc_code::CANCELLED
                | grpc_code::UNKNOWN => StoreError::Unavailable(status.to_string()),
                _ => StoreError::Other(status.to_string()),
            }
        }
        other => StoreError::Other(other.to_string()),
    }
}

fn missing_header() -> StoreError {
    StoreError::Other("etcd response without a header".to_owned())
}

/// etcd wants whole seconds; round up so a lease never lives shorter than asked.
fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

fn compare_op(op: CompareOp) -> etcd_client::CompareOp {
    match op {
        CompareOp::Equal => etcd_client::CompareOp::Equal,
        CompareOp::NotEqual => etcd_client::CompareOp::NotEqual,
        CompareOp::Less => etcd_client::CompareOp::Less,
        CompareOp::Greater => etcd_client::CompareOp::Greater,
    }
}

impl EtcdStore {
    /// Connect and check that etcd answers (one read, bounded by `connect_timeout`), so a
    /// wrong endpoint fails at startup with [`StoreError::Unavailable`] rather than on the
    /// first real request.
    pub async fn connect(config: EtcdConfig) -> Result<Self, StoreError> {
        if config.root.is_empty() {
            return Err(StoreError::Other(
                "etcd root prefix must not be empty".to_owned(),
            ));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(config.keep_alive_interval, config.keep_alive_timeout)
            .with_keep_alive_while_idle(true);
        let timeout = config.connect_timeout;
        let connect = async {
            let mut client = Client::connect(&config.endpoints, Some(options)).await?;
            client
                .get(
                    config.root.as_str(),
                    Some(GetOptions::new().with_keys_only()),
                )
                .await?;
            Ok::<_, etcd_client::Error>(client)
        };
        let client = match tokio::time::timeout(timeout, connect).await {
            Ok(r) => r.map_err(map_err)?,
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "etcd at {:?} did not answer within {timeout:?}",
                    config.endpoints
                )))
            }
        };
        Ok(Self {
            client,
            root: config.root,
            request_timeout: config.request_timeout,
        })
    }

    /// The root prefix every key lives under.
    pub fn root(&self) -> &str {
        &self.root
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    /// Run one etcd call under the request timeout.
    async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(r) => r.map_err(map_err),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd request timed out after {:?}",
                self.request_timeout
            ))),
        }
    }

    fn txn_op(&self, op: Op) -> TxnOp {
        match op {
            Op::Put { key, value, lease } => TxnOp::put(
                self.full(&key),
                value,
                lease.map(|l| PutOptions::new().with_lease(l.0)),
            ),
            Op::Delete { key } => TxnOp::delete(self.full(&key), None),
            Op::DeletePrefix { prefix } => {
                TxnOp::delete(self.full(&prefix), Some(DeleteOptions::new().with_prefix()))
            }
            Op::Get { key } => TxnOp::get(self.full(&key), None),
        }
    }

    fn compare(&self, c: super::Compare) -> etcd_client::Compare {
        let key = self.full(&c.key);
        let op = compare_op(c.op);
        match c.target {
            CompareTarget::Value(v) => etcd_client::Compare::value(key, op, v),
            CompareTarget::Version(v) => etcd_client::Compare::version(key, op, v),
            CompareTarget::CreateRevision(r) => etcd_client::Compare::create_revision(key, op, r),
            CompareTarget::ModRevision(r) => etcd_client::Compare::mod_revision(key, op, r),
        }
    }
}

/// Convert etcd's key-value, stripping the root prefix.
fn convert_kv(root: &str, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    let key = kv
        .key()
        .strip_prefix(root.as_bytes())
        .ok_or_else(|| StoreError::Other("etcd returned a key outside the root".to_owned()))?;
    let key = String::from_utf8(key.to_vec())
        .map_err(|_| StoreError::Other("etcd returned a key that is not UTF-8".to_owned()))?;
    Ok(KeyValue {
        key,
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        // etcd's "no lease" is lease id 0.
        lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
    })
}

impl Store for EtcdStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>> {
        Box::pin(async move {
            check_key(key)?;
            let mut client = self.client.clone();
            let resp = self.call(client.get(self.full(key), None)).await?;
            resp.kvs()
                .first()
                .map(|kv| convert_kv(&self.root, kv))
                .transpose()
        })
    }

    fn range<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<(Vec<KeyValue>, Revision), StoreError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let opts = GetOptions::new().with_prefix();
            let resp = self.call(client.get(self.full(prefix), Some(opts))).await?;
            let revision = resp.header().ok_or_else(missing_header)?.revision();
            let kvs = resp
                .kvs()
                .iter()
                .map(|kv| convert_kv(&self.root, kv))
                .collect::<Result<_, _>>()?;
            Ok((kvs, revision))
        })
    }

    fn count<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(u64, Revision), StoreError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let opts = GetOptions::new().with_prefix().with_count_only();
            let resp = self.call(client.get(self.full(prefix), Some(opts))).await?;
            let revision = resp.header().ok_or_else(missing_header)?.revision();
            let count = u64::try_from(resp.count())
                .map_err(|_| StoreError::Other("etcd returned a negative count".to_owned()))?;
            Ok((count, revision))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<Revision, StoreError>> {
        Box::pin(async move {
            check_key(key)?;
            let mut client = self.client.clone();
            let opts = lease.map(|l| PutOptions::new().with_lease(l.0));
            let resp = self.call(client.put(self.full(key), value, opts)).await?;
            Ok(resp.header().ok_or_else(missing_header)?.revision())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Revision>, StoreError>> {
        Box::pin(async move {
            check_key(key)?;
            let mut client = self.client.clone();
            let resp = self.call(client.delete(self.full(key), None)).await?;
            let revision = resp.header().ok_or_else(missing_header)?.revision();
            Ok((resp.deleted() > 0).then_some(revision))
        })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse, StoreError>> {
        Box::pin(async move {
            // etcd checks the same rules, but checking here gives both stores the same error.
            check_txn(&txn)?;
            let compares: Vec<_> = txn.compares.into_iter().map(|c| self.compare(c)).collect();
            let success: Vec<_> = txn.success.into_iter().map(|o| self.txn_op(o)).collect();
            let failure: Vec<_> = txn.failure.into_iter().map(|o| self.txn_op(o)).collect();
            let request = etcd_client::Txn::new()
                .when(compares)
                .and_then(success)
                .or_else(failure);
            let mut client = self.client.clone();
            let resp = self.call(client.txn(request)).await?;
            let revision = resp.header().ok_or_else(missing_header)?.revision();
            let mut gets = Vec::new();
            for op in resp.op_responses() {
                if let TxnOpResponse::Get(get) = op {
                    let kv = get.kvs().first().map(|kv| convert_kv(&self.root, kv));
                    gets.push(kv.transpose()?);
                }
            }
            Ok(TxnResponse {
                succeeded: resp.succeeded(),
                revision,
                gets,
            })
        })
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let resp = self.call(client.lease_grant(ttl_secs(ttl), None)).await?;
            if !resp.error().is_empty() {
                return Err(StoreError::Other(resp.error().to_owned()));
            }
            Ok(LeaseId(resp.id()))
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<Duration, StoreError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            self.call(async move {
                // The first renewal happens inside `lease_keep_alive` (which fails with "lease
                // not found" if the lease is gone); its TTL is not handed back, so renew once
                // more on the same stream to learn it.
                let (mut keeper, mut responses) = client.lease_keep_alive(lease.0).await?;
                keeper.keep_alive().await?;
                match responses.message().await? {
                    Some(resp) => Ok(resp.ttl()),
                    None => Err(etcd_client::Error::LeaseKeepAliveError(
                        "keep-alive stream closed".to_owned(),
                    )),
                }
            })
            .await
            .and_then(|ttl| match u64::try_from(ttl) {
                // etcd answers TTL <= 0 for a lease that expired between the two renewals.
                Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
                _ => Err(StoreError::LeaseNotFound),
            })
        })
    }

    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            self.call(client.lease_revoke(lease.0)).await?;
            Ok(())
        })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        start_revision: Option<Revision>,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>> {
        Box::pin(async move {
            let mut options = WatchOptions::new().with_prefix();
            if let Some(rev) = start_revision.filter(|&r| r > 0) {
                options = options.with_start_revision(rev);
            }
            let mut client = self.client.clone();
            let key = self.full(prefix);
            let stream = self
                .call(async move {
                    let mut stream = client.watch(key, Some(options)).await?;
                    // Wait for etcd to confirm the watcher, so that events after this call
                    // returns are never missed by a "from now" watch.
                    let created = stream.message().await?;
                    Ok((stream, created))
                })
                .await
                .and_then(|(stream, created)| match created {
                    Some(resp) if resp.created() && !resp.canceled() => Ok(stream),
                    Some(resp) => Err(StoreError::Other(format!(
                        "etcd refused the watch: {}",
                        resp.cancel_reason()
                    ))),
                    None => Err(StoreError::Unavailable(
                        "watch stream closed before it was created".to_owned(),
                    )),
                })?;
            let state = WatchState {
                root: self.root.clone(),
                ready: VecDeque::new(),
                done: false,
            };
            // The etcd stream (request half included: dropping it could end the watch) lives
            // in the unfold state, so dropping our stream cancels the watch.
            let events =
                futures::stream::unfold((stream, state), |(mut stream, mut state)| async move {
                    let item = state.next_item(&mut stream).await?;
                    Some((item, (stream, state)))
                });
            Ok(events.boxed())
        })
    }
}

struct WatchState {
    root: String,
    ready: VecDeque<WatchEvent>,
    done: bool,
}

impl WatchState {
    async fn next_item(
        &mut self,
        stream: &mut etcd_client::WatchStream,
    ) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(Ok(e));
            }
            if self.done {
                return None;
            }
            match self.poll_response(stream).await {
                Ok(()) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }

    /// Read one response; queue its events or turn it into the stream's final error.
    async fn poll_response(
        &mut self,
        stream: &mut etcd_client::WatchStream,
    ) -> Result<(), StoreError> {
        let resp =
            stream.message().await.map_err(map_err)?.ok_or_else(|| {
                StoreError::Unavailable("etcd closed the watch stream".to_owned())
            })?;
        if resp.compact_revision() > 0 {
            return Err(StoreError::Compacted {
                oldest: resp.compact_revision(),
            });
        }
        if resp.canceled() {
            return Err(StoreError::Unavailable(format!(
                "etcd cancelled the watch: {}",
                resp.cancel_reason()
            )));
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let kv = convert_kv(&self.root, kv)?;
            let kind = match event.event_type() {
                EventType::Put => WatchEventKind::Put,
                EventType::Delete => WatchEventKind::Delete,
            };
            let revision = kv.mod_revision;
            self.ready.push_back(WatchEvent { kind, kv, revision });
        }
        Ok(())
    }
}
