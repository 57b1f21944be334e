//! Test support: a real, throwaway etcd server, a store wrapper that lines up racing
//! transactions ([`TxnGate`]), and a placer that puts every meeting on one forwarder
//! ([`OneForwarderPlacer`]).
//!
//! [`EtcdServer::start`] runs the `etcd` binary (Debian's `etcd-server`, etcd 3.4; installed
//! by `scripts/install-deps.sh`) as a single-member cluster on a fresh data directory and two
//! free loopback ports, and returns once it answers a real request. Dropping the handle kills
//! the process, reaps it and removes the directory.
//!
//! A missing binary is an error, not a skip: CI installs etcd, and a silently skipped
//! conformance suite would hide a broken store.
//!
//! The server runs with a 10 ms heartbeat and a 100 ms election timeout (loopback, one
//! member): it becomes leader in ~50 ms instead of ~1 s, and its minimum lease TTL (1.5 x the
//! election timeout, rounded up to whole seconds) is 1 s instead of 2 s, which halves the
//! time lease tests spend waiting.
//!
//! Errors are `anyhow`: they are for a human reading a failed test, not for code to match.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use etcd_client::{Client, ConnectOptions};
use futures::future::BoxFuture;

use crate::store::{EtcdConfig, EtcdStore, StoreError};

/// How long etcd may take to answer after being started (it takes ~50 ms here; a loaded CI
/// machine may be much slower).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts with fresh ports when another process grabbed one between our probe and etcd's
/// bind.
const PORT_ATTEMPTS: usize = 5;

/// A running etcd, killed on drop.
#[derive(Debug)]
pub struct EtcdServer {
    child: Child,
    /// Holds `data/` (etcd's data dir) and `etcd.log`; removed on drop.
    dir: PathBuf,
    endpoint: String,
}

impl EtcdServer {
    /// Start etcd and wait until it serves requests.
    pub async fn start() -> anyhow::Result<Self> {
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            match Self::try_start().await {
                Ok(server) => return Ok(server),
                Err(StartError::PortClash(e)) => last_err = Some(e),
                Err(StartError::Fatal(e)) => return Err(e),
            }
        }
        Err(last_err
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context(format!(
                "etcd: ports kept clashing after {PORT_ATTEMPTS} attempts"
            )))
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The etcd process id (for its memory and CPU in benchmarks).
    pub fn pid(&self) -> Option<u32> {
        Some(self.child.id())
    }

    /// An [`EtcdStore`] on this server with every key under `root`.
    pub async fn store(&self, root: &str) -> anyhow::Result<EtcdStore> {
        let config = EtcdConfig::new([self.endpoint.clone()]).with_root(root);
        EtcdStore::connect(config)
            .await
            .with_context(|| format!("connecting to etcd at {}", self.endpoint))
    }

    async fn try_start() -> Result<Self, StartError> {
        let dir = unique_dir().map_err(StartError::Fatal)?;
        // Bind both before releasing either, so the two ports differ.
        let ports = (|| -> io::Result<(u16, u16)> {
            let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            let b = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            Ok((a.local_addr()?.port(), b.local_addr()?.port()))
        })();
        let (client_port, peer_port) = match ports {
            Ok(p) => p,
            Err(e) => {
                remove_dir(&dir);
                return Err(StartError::Fatal(
                    anyhow::Error::new(e).context("finding free ports"),
                ));
            }
        };
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log_path = dir.join("etcd.log");
        let spawned = fs::File::create(&log_path).and_then(|log| {
            Command::new(etcd_binary())
                .arg("--name")
                .arg("default")
                .arg("--data-dir")
                .arg(dir.join("data"))
                .args(["--listen-client-urls", &endpoint])
                .args(["--advertise-client-urls", &endpoint])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("default={peer}")])
                .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
        });
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                remove_dir(&dir);
                let err = if e.kind() == io::ErrorKind::NotFound {
                    anyhow::anyhow!(
                        "the etcd binary ({}) is not installed: run scripts/install-deps.sh \
                         (Debian package etcd-server)",
                        etcd_binary()
                    )
                } else {
                    anyhow::Error::new(e).context("starting etcd")
                };
                return Err(StartError::Fatal(err));
            }
        };
        // From here on, Drop cleans up on every early return.
        let mut server = EtcdServer {
            child,
            dir,
            endpoint,
        };
        server.wait_ready(&log_path).await?;
        Ok(server)
    }

    /// Poll the client port with a real request until etcd answers, it exits, or
    /// [`STARTUP_TIMEOUT`] passes.
    async fn wait_ready(&mut self, log_path: &Path) -> Result<(), StartError> {
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        // Start polling fast (etcd is usually up in ~50 ms), back off to 100 ms.
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|e| StartError::Fatal(anyhow::Error::new(e).context("waiting for etcd")))?
            {
                let log = fs::read_to_string(log_path).unwrap_or_default();
                let err = anyhow::anyhow!("etcd exited with {status}; log:\n{}", tail(&log));
                return Err(if log.contains("address already in use") {
                    StartError::PortClash(err)
                } else {
                    StartError::Fatal(err)
                });
            }
            if self.answers().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let log = fs::read_to_string(log_path).unwrap_or_default();
                return Err(StartError::Fatal(anyhow::anyhow!(
                    "etcd did not answer within {STARTUP_TIMEOUT:?}; log:\n{}",
                    tail(&log)
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// One status request, bounded so a hung server cannot stall the poll loop.
    async fn answers(&self) -> bool {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_secs(1));
        let probe = async {
            let mut client = Client::connect([self.endpoint.as_str()], Some(options)).await?;
            client.status().await
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Ok(_))
        )
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // SIGKILL: the data is throwaway, so there is nothing for a clean shutdown to save.
        // Errors mean it already exited; `wait` reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_dir(&self.dir);
    }
}

enum StartError {
    /// etcd could not bind a port we thought free: worth another attempt with new ports.
    PortClash(anyhow::Error),
    Fatal(anyhow::Error),
}

impl From<StartError> for anyhow::Error {
    fn from(e: StartError) -> Self {
        match e {
            StartError::PortClash(e) | StartError::Fatal(e) => e,
        }
    }
}

/// `$ETCD_BIN` if set (a locally built etcd), else `etcd` from `PATH`.
fn etcd_binary() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".to_owned())
}

/// A new, empty directory under the system temp dir. `create_dir` fails if the name exists,
/// so two concurrent tests (or processes) never share one.
fn unique_dir() -> anyhow::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("fanout-etcd-{}-{nanos}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("creating {}", dir.display())))
            }
        }
    }
}

fn remove_dir(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove etcd test dir");
    }
}

/// The last lines of etcd's log: enough to see why it failed without flooding the output.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Holds the next `n` transactions of every [`GatedStore`] sharing it until all `n` are
/// waiting, then lets them go together. Racing writers have then all read before any of
/// them writes, so a race test exercises the compare-and-swap instead of depending on how
/// the scheduler happened to interleave the racers (which, on a fast store, tends to run
/// one to completion before the next starts).
#[derive(Debug, Default)]
pub struct TxnGate {
    armed: std::sync::Mutex<Option<(std::sync::Arc<tokio::sync::Barrier>, usize)>>,
}

impl TxnGate {
    pub fn new() -> std::sync::Arc<TxnGate> {
        std::sync::Arc::new(TxnGate::default())
    }

    /// Gate the next `n` transactions; later ones pass at once.
    pub fn arm(&self, n: usize) {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
        *self
            .armed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((barrier, n));
    }

    /// The barrier this transaction must wait at, if it is one of the gated ones.
    fn take(&self) -> Option<std::sync::Arc<tokio::sync::Barrier>> {
        let mut armed = self
            .armed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (barrier, left) = armed.as_mut()?;
        let barrier = barrier.clone();
        *left -= 1;
        if *left == 0 {
            *armed = None;
        }
        Some(barrier)
    }
}

/// A [`Store`](crate::store::Store) whose transactions pass a [`TxnGate`]; everything else
/// goes straight to `inner`.
#[derive(Debug)]
pub struct GatedStore {
    inner: std::sync::Arc<dyn crate::store::Store>,
    gate: std::sync::Arc<TxnGate>,
}

impl GatedStore {
    pub fn new(
        inner: std::sync::Arc<dyn crate::store::Store>,
        gate: std::sync::Arc<TxnGate>,
    ) -> GatedStore {
        GatedStore { inner, gate }
    }
}

impl crate::store::Store for GatedStore {
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<crate::store::KeyValue>, StoreError>> {
        self.inner.get(key)
    }

    fn range<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<(Vec<crate::store::KeyValue>, crate::store::Revision), StoreError>>
    {
        self.inner.range(prefix)
    }

    fn count<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<(u64, crate::store::Revision), StoreError>> {
        self.inner.count(prefix)
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        lease: Option<crate::store::LeaseId>,
    ) -> BoxFuture<'a, Result<crate::store::Revision, StoreError>> {
        self.inner.put(key, value, lease)
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<crate::store::Revision>, StoreError>> {
        self.inner.delete(key)
    }

    fn txn(
        &self,
        txn: crate::store::Txn,
    ) -> BoxFuture<'_, Result<crate::store::TxnResponse, StoreError>> {
        Box::pin(async move {
            if let Some(barrier) = self.gate.take() {
                barrier.wait().await;
            }
            self.inner.txn(txn).await
        })
    }

    fn grant_lease(
        &self,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<crate::store::LeaseId, StoreError>> {
        self.inner.grant_lease(ttl)
    }

    fn keep_alive(
        &self,
        lease: crate::store::LeaseId,
    ) -> BoxFuture<'_, Result<Duration, StoreError>> {
        self.inner.keep_alive(lease)
    }

    fn revoke_lease(&self, lease: crate::store::LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.revoke_lease(lease)
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        start_revision: Option<crate::store::Revision>,
    ) -> BoxFuture<'a, Result<crate::store::WatchStream, StoreError>> {
        self.inner.watch(prefix, start_revision)
    }
}

/// A [`Placer`](crate::service::Placer) for service tests: every meeting goes to forwarder
/// `fwd-1` at 192.0.2.1:40000 (epoch 1), and nothing is placed until asked. Counts the
/// calls to `place`.
#[derive(Debug, Default)]
pub struct OneForwarderPlacer {
    calls: AtomicUsize,
}

impl OneForwarderPlacer {
    /// How many times `place` was called.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

impl crate::service::Placer for OneForwarderPlacer {
    fn place<'a>(
        &'a self,
        _meeting: &'a crate::domain::MeetingId,
        _hint: &'a crate::service::PlacementHint,
    ) -> BoxFuture<'a, Result<crate::service::Placement, crate::service::ServiceError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async {
            Ok(crate::service::Placement {
                forwarder: crate::domain::ForwarderId::new("fwd-1").expect("a valid id"),
                address: "192.0.2.1:40000".into(),
                epoch: 1,
            })
        })
    }

    fn placement<'a>(
        &'a self,
        _meeting: &'a crate::domain::MeetingId,
    ) -> BoxFuture<'a, Result<Option<crate::service::Placement>, crate::service::ServiceError>>
    {
        Box::pin(async { Ok(None) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_answers_and_cleans_up() -> anyhow::Result<()> {
        let server = EtcdServer::start().await?;
        let dir = server.dir.clone();
        let mut client = Client::connect([server.endpoint()], None).await?;
        client.put("k", "v", None).await?;
        drop(server);
        assert!(!dir.exists(), "data dir {} left behind", dir.display());
        Ok(())
    }
}
