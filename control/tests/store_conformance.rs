//! One conformance suite for the [`Store`] trait, run against [`MemoryStore`] and against
//! [`EtcdStore`] on a real etcd ([`EtcdServer`]).
//!
//! Each case is a plain async function over a [`Backend`]; the `conformance!` macro at the
//! bottom instantiates every case once per store (`memory::case`, `etcd::case`). Each etcd
//! case starts its own etcd (~0.1 s here), so revisions are exact and cases run in parallel;
//! every case also uses its own key prefix, so they could share one server as well.
//!
//! Timing: cases never sleep to synchronise; they await watch events with a timeout. The only
//! sleeps let a lease's TTL pass, which is the behaviour under test. etcd leases are whole
//! seconds (the test server's minimum is 1 s) and its leader checks expiry every 500 ms, so
//! an etcd lease ends 1.0-1.5 s after its last keep-alive; memory leases use 300 ms.
//!
//! `expect` in this file is an assertion: a failure is the test failing.

use std::sync::Arc;
use std::time::Duration;

use fanout_control::store::{
    Compare, CompareOp, EtcdConfig, EtcdStore, LeaseId, MemoryStore, Op, Revision, Store,
    StoreError, Txn, WatchEvent, WatchEventKind, WatchStream,
};
use fanout_control::testing::EtcdServer;
use futures::StreamExt;

/// A store under test, with what differs between implementations.
struct Backend {
    store: Arc<dyn Store>,
    /// TTL to ask for in lease tests: short, but at least what the store honours.
    lease_ttl: Duration,
    /// Slack on top of the granted TTL before a lease must have ended (etcd checks expiry
    /// every 500 ms).
    expiry_slack: Duration,
    /// Keeps the etcd process alive for the test; `None` for memory.
    _server: Option<EtcdServer>,
}

fn memory_backend() -> Backend {
    Backend {
        store: Arc::new(MemoryStore::new()),
        lease_ttl: Duration::from_millis(300),
        expiry_slack: Duration::from_millis(200),
        _server: None,
    }
}

async fn etcd_backend(case: &str) -> Backend {
    let server = EtcdServer::start()
        .await
        .expect("etcd must be installed and start (scripts/install-deps.sh installs it)");
    let store = server
        .store(&format!("/conformance/{case}/"))
        .await
        .expect("connecting to the test etcd");
    Backend {
        store: Arc::new(store),
        lease_ttl: Duration::from_secs(1),
        expiry_slack: Duration::from_millis(1500),
        _server: Some(server),
    }
}

/// Generous bound on waiting for an event that must come.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

async fn next_event(stream: &mut WatchStream, within: Duration) -> WatchEvent {
    match tokio::time::timeout(within, stream.next()).await {
        Ok(Some(Ok(e))) => e,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch stream ended"),
        Err(_) => panic!("no watch event within {within:?}"),
    }
}

/// Assert that no event arrives for a short while (used after the last expected event, to
/// catch duplicates; not a synchronisation).
async fn assert_quiet(stream: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

async fn current_revision(store: &dyn Store) -> Revision {
    store.range("").await.expect("range").1
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

/// put/get/delete/range and their revisions: one revision per write, create_revision kept
/// across updates, version counting writes, delete of an absent key changing nothing.
async fn kv_revisions(b: &Backend) {
    let s = &*b.store;
    let r0 = current_revision(s).await;

    let r1 = s.put("kv/a", b"1".to_vec(), None).await.expect("put");
    assert_eq!(r1, r0 + 1);
    let a = s.get("kv/a").await.expect("get").expect("kv/a present");
    assert_eq!(
        (
            a.key.as_str(),
            a.value.as_slice(),
            a.create_revision,
            a.mod_revision,
            a.version
        ),
        ("kv/a", &b"1"[..], r1, r1, 1)
    );
    assert_eq!(a.lease, None);

    let r2 = s.put("kv/a", b"2".to_vec(), None).await.expect("put");
    assert_eq!(r2, r1 + 1);
    let a = s.get("kv/a").await.expect("get").expect("kv/a present");
    assert_eq!((a.create_revision, a.mod_revision, a.version), (r1, r2, 2));
    assert_eq!(a.value, b"2");

    let r3 = s.put("kv/b", b"3".to_vec(), None).await.expect("put");
    s.put("other/c", b"x".to_vec(), None).await.expect("put");
    let r4 = r3 + 1;

    let (kvs, at) = s.range("kv/").await.expect("range");
    assert_eq!(at, r4, "range reports the store revision it read at");
    let keys: Vec<_> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["kv/a", "kv/b"], "prefix range, in key order");
    let (kvs, _) = s.range("kv/b").await.expect("range");
    assert_eq!(kvs.len(), 1);
    let (kvs, _) = s.range("nothing/").await.expect("range");
    assert!(kvs.is_empty());

    assert_eq!(s.delete("kv/a").await.expect("delete"), Some(r4 + 1));
    assert_eq!(s.get("kv/a").await.expect("get"), None);
    assert_eq!(s.delete("kv/a").await.expect("delete"), None, "absent key");
    assert_eq!(
        current_revision(s).await,
        r4 + 1,
        "deleting nothing is not a write"
    );

    // A new life: fresh create_revision, version 1.
    let r6 = s.put("kv/a", b"again".to_vec(), None).await.expect("put");
    let a = s.get("kv/a").await.expect("get").expect("kv/a present");
    assert_eq!((a.create_revision, a.version), (r6, 1));

    assert!(matches!(
        s.put("", vec![], None).await,
        Err(StoreError::Other(_))
    ));
    assert!(matches!(s.get("").await, Err(StoreError::Other(_))));
}

/// Create-if-absent: 20 tasks race to create the same key; exactly one wins, every loser's
/// failure branch reads the winner's value. Several rounds.
async fn txn_create_if_absent_race(b: &Backend) {
    for round in 0..5 {
        let key = format!("race/{round}");
        let tasks: Vec<_> = (0..20)
            .map(|task| {
                let store = Arc::clone(&b.store);
                let key = key.clone();
                tokio::spawn(async move {
                    let txn = Txn::new()
                        .when([Compare::absent(key.as_str())])
                        .and_then([Op::put(key.as_str(), format!("task-{task}"))])
                        .or_else([Op::get(key.as_str())]);
                    (task, store.txn(txn).await.expect("txn"))
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut seen_by_losers = Vec::new();
        for t in tasks {
            let (task, resp) = t.await.expect("task panicked");
            if resp.succeeded {
                assert!(resp.gets.is_empty());
                winners.push(task);
            } else {
                assert_eq!(resp.gets.len(), 1, "the failure branch's get");
                let kv = resp.gets[0].clone().expect("the winner's key");
                seen_by_losers.push(kv.value);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let expected = format!("task-{}", winners[0]).into_bytes();
        assert!(seen_by_losers.iter().all(|v| *v == expected));
        let kv = b.store.get(&key).await.expect("get").expect("created");
        assert_eq!((kv.value, kv.version), (expected, 1));
    }
}

/// Compare-and-swap on mod_revision, plus the other compare targets and txn rules.
async fn txn_compare_and_swap(b: &Backend) {
    let s = &*b.store;
    let r1 = s.put("cas/k", b"v1".to_vec(), None).await.expect("put");

    let swap = |expected: Revision, value: &str| {
        Txn::new()
            .when([Compare::mod_revision("cas/k", CompareOp::Equal, expected)])
            .and_then([Op::put("cas/k", value), Op::get("cas/k")])
            .or_else([Op::get("cas/k")])
    };
    let resp = s.txn(swap(r1, "v2")).await.expect("txn");
    assert!(resp.succeeded);
    assert_eq!(resp.revision, r1 + 1, "a txn is one revision");
    let r2 = resp.revision;
    let after = resp.gets[0].clone().expect("get after put, inside the txn");
    assert_eq!(
        (after.value.as_slice(), after.mod_revision),
        (&b"v2"[..], r2)
    );

    // A stale revision loses and sees the current value; nothing is written.
    let resp = s.txn(swap(r1, "v3")).await.expect("txn");
    assert!(!resp.succeeded);
    assert_eq!(
        resp.revision, r2,
        "a failed txn with only reads is not a write"
    );
    let current = resp.gets[0].clone().expect("current value");
    assert_eq!(
        (current.value.as_slice(), current.mod_revision),
        (&b"v2"[..], r2)
    );

    // The other targets and operators.
    let holds = |c: Compare| async move {
        let resp = s.txn(Txn::new().when([c])).await.expect("txn");
        resp.succeeded
    };
    assert!(holds(Compare::value("cas/k", CompareOp::Equal, "v2")).await);
    assert!(holds(Compare::value("cas/k", CompareOp::Greater, "v1")).await);
    assert!(holds(Compare::value("cas/k", CompareOp::Less, "v3")).await);
    assert!(holds(Compare::value("cas/k", CompareOp::NotEqual, "v1")).await);
    assert!(holds(Compare::version("cas/k", CompareOp::Equal, 2)).await);
    assert!(holds(Compare::present("cas/k")).await);
    assert!(holds(Compare::create_revision("cas/k", CompareOp::Equal, r1)).await);
    assert!(holds(Compare::mod_revision("cas/k", CompareOp::Less, r2 + 1)).await);
    assert!(holds(Compare::absent("cas/missing")).await);
    assert!(holds(Compare::mod_revision("cas/missing", CompareOp::Equal, 0)).await);
    // etcd: any value comparison on an absent key is false.
    assert!(!holds(Compare::value("cas/missing", CompareOp::NotEqual, "x")).await);
    assert!(!holds(Compare::value("cas/missing", CompareOp::Equal, "")).await);
    // All compares must hold.
    assert!(
        !s.txn(Txn::new().when([Compare::present("cas/k"), Compare::present("cas/missing")]))
            .await
            .expect("txn")
            .succeeded
    );

    // etcd's rule: no key written twice in one branch.
    let dup = Txn::new().and_then([Op::put("cas/d", "1"), Op::put("cas/d", "2")]);
    assert!(matches!(s.txn(dup).await, Err(StoreError::Other(_))));
    let dup = Txn::new().and_then([Op::delete_prefix("cas/"), Op::put("cas/d", "2")]);
    assert!(matches!(s.txn(dup).await, Err(StoreError::Other(_))));
    assert_eq!(current_revision(s).await, r2, "rejected txns write nothing");

    // A put on a lease that does not exist fails the whole txn.
    let lease = s.grant_lease(Duration::from_secs(30)).await.expect("grant");
    s.revoke_lease(lease).await.expect("revoke");
    let txn = Txn::new().and_then([
        Op::put("cas/x", "1"),
        Op::put_with_lease("cas/y", "1", lease),
    ]);
    assert!(matches!(s.txn(txn).await, Err(StoreError::LeaseNotFound)));
    assert_eq!(
        s.get("cas/x").await.expect("get"),
        None,
        "nothing of the txn applied"
    );
}

/// DeletePrefix deletes exactly the keys under the prefix, at one revision.
async fn txn_delete_prefix(b: &Backend) {
    let s = &*b.store;
    for key in ["dp/a/1", "dp/a/2", "dp/ab", "dp/b"] {
        s.put(key, b"x".to_vec(), None).await.expect("put");
    }
    let mut watch = s.watch("dp/", None).await.expect("watch");
    let resp = s
        .txn(Txn::new().and_then([Op::delete_prefix("dp/a/")]))
        .await
        .expect("txn");
    let (kvs, _) = s.range("dp/").await.expect("range");
    let keys: Vec<_> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["dp/ab", "dp/b"]);
    for key in ["dp/a/1", "dp/a/2"] {
        let e = next_event(&mut watch, EVENT_TIMEOUT).await;
        assert_eq!((e.kind, e.kv.key.as_str()), (WatchEventKind::Delete, key));
        assert_eq!(
            (e.revision, e.kv.mod_revision),
            (resp.revision, resp.revision)
        );
    }
    assert_quiet(&mut watch).await;
    // Nothing to delete: not a write.
    let again = s
        .txn(Txn::new().and_then([Op::delete_prefix("dp/a/")]))
        .await
        .expect("txn");
    assert_eq!(again.revision, resp.revision);
}

/// `count` counts exactly the keys under a prefix (not a sibling sharing its first
/// characters), at the store's current revision, and does not write.
async fn count_prefix(b: &Backend) {
    let s = &*b.store;
    assert_eq!(s.count("cnt/").await.expect("count").0, 0);
    for key in ["cnt/a/1", "cnt/a/2", "cnt/a/3", "cnt/ab", "cnt/b"] {
        s.put(key, b"x".to_vec(), None).await.expect("put");
    }
    let r = current_revision(s).await;
    assert_eq!(s.count("cnt/a/").await.expect("count"), (3, r));
    assert_eq!(s.count("cnt/").await.expect("count"), (5, r));
    assert_eq!(s.count("cnt/zz/").await.expect("count"), (0, r));
    s.delete("cnt/a/2").await.expect("delete");
    assert_eq!(s.count("cnt/a/").await.expect("count"), (2, r + 1));
    assert_eq!(current_revision(s).await, r + 1, "count is not a write");
}

/// A lease that is not kept alive ends: its key goes and a watcher sees the Delete. Then
/// keep_alive and put on it fail with LeaseNotFound.
async fn lease_expiry_deletes_key(b: &Backend) {
    let s = &*b.store;
    let lease = s.grant_lease(b.lease_ttl).await.expect("grant");
    let granted = s.keep_alive(lease).await.expect("keep_alive");
    assert!(
        granted >= b.lease_ttl,
        "granted {granted:?} < asked {:?}",
        b.lease_ttl
    );
    let rev = s
        .put("exp/k", b"x".to_vec(), Some(lease))
        .await
        .expect("put");
    s.put("exp/plain", b"x".to_vec(), None).await.expect("put");
    let kv = s.get("exp/k").await.expect("get").expect("present");
    assert_eq!(kv.lease, Some(lease));

    let mut watch = s.watch("exp/", Some(rev + 2)).await.expect("watch");
    let started = tokio::time::Instant::now();
    let e = next_event(&mut watch, granted + b.expiry_slack + EVENT_TIMEOUT).await;
    let took = started.elapsed();
    eprintln!(
        "lease asked {:?}, granted {granted:?}, key deleted after {took:?}",
        b.lease_ttl
    );
    assert_eq!(
        (e.kind, e.kv.key.as_str()),
        (WatchEventKind::Delete, "exp/k")
    );
    assert!(e.revision > rev + 1);
    assert!(
        took + Duration::from_millis(50) >= granted,
        "expired early: {took:?} < {granted:?}"
    );
    assert!(took <= granted + b.expiry_slack, "expired late: {took:?}");

    assert_eq!(s.get("exp/k").await.expect("get"), None);
    assert!(s.get("exp/plain").await.expect("get").is_some());
    assert!(matches!(
        s.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound)
    ));
    assert!(matches!(
        s.put("exp/k", vec![], Some(lease)).await,
        Err(StoreError::LeaseNotFound)
    ));
    assert!(matches!(
        s.revoke_lease(lease).await,
        Err(StoreError::LeaseNotFound)
    ));
}

/// keep_alive after the TTL passed without one: LeaseNotFound (also when the store has not
/// yet got round to deleting the lease's keys).
async fn keep_alive_after_ttl_fails(b: &Backend) {
    let s = &*b.store;
    let lease = s.grant_lease(b.lease_ttl).await.expect("grant");
    let granted = s.keep_alive(lease).await.expect("keep_alive");
    s.put("late/k", b"x".to_vec(), Some(lease))
        .await
        .expect("put");
    // Letting the TTL pass is the behaviour under test.
    tokio::time::sleep(granted + Duration::from_millis(100)).await;
    assert!(matches!(
        s.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound)
    ));
    assert_eq!(s.get("late/k").await.expect("get"), None);
}

/// Regular keep-alives keep a leased key well past its TTL.
async fn keep_alive_extends_lease(b: &Backend) {
    let s = &*b.store;
    let lease = s.grant_lease(b.lease_ttl).await.expect("grant");
    let ttl = s.keep_alive(lease).await.expect("keep_alive");
    let rev = s
        .put("alive/k", b"x".to_vec(), Some(lease))
        .await
        .expect("put");
    let mut watch = s.watch("alive/", Some(rev + 1)).await.expect("watch");
    let until = tokio::time::Instant::now() + ttl * 5 / 2;
    while tokio::time::Instant::now() < until {
        // Paces the keep-alives (a third of the TTL, as a real client would).
        tokio::time::sleep(ttl / 3).await;
        assert_eq!(s.keep_alive(lease).await.expect("keep_alive"), ttl);
    }
    let kv = s
        .get("alive/k")
        .await
        .expect("get")
        .expect("still there after 2.5 TTLs");
    assert_eq!(kv.mod_revision, rev, "keep-alive is not a write");
    assert_quiet(&mut watch).await;
    s.revoke_lease(lease).await.expect("revoke");
}

/// Revoking deletes every key of the lease at once (one revision, one Delete each).
async fn revoke_deletes_at_once(b: &Backend) {
    let s = &*b.store;
    let lease = s.grant_lease(Duration::from_secs(60)).await.expect("grant");
    s.put("rev/a", b"x".to_vec(), Some(lease))
        .await
        .expect("put");
    s.put("rev/b", b"x".to_vec(), Some(lease))
        .await
        .expect("put");
    // A key moved off the lease by a plain put is not deleted with it.
    s.put("rev/c", b"x".to_vec(), Some(lease))
        .await
        .expect("put");
    s.put("rev/c", b"y".to_vec(), None).await.expect("put");
    let mut watch = s.watch("rev/", None).await.expect("watch");
    let before = current_revision(s).await;

    s.revoke_lease(lease).await.expect("revoke");
    assert_eq!(s.get("rev/a").await.expect("get"), None);
    assert_eq!(s.get("rev/b").await.expect("get"), None);
    assert!(s.get("rev/c").await.expect("get").is_some());
    assert_eq!(
        current_revision(s).await,
        before + 1,
        "one revision for the revoke"
    );
    for key in ["rev/a", "rev/b"] {
        let e = next_event(&mut watch, EVENT_TIMEOUT).await;
        assert_eq!((e.kind, e.kv.key.as_str()), (WatchEventKind::Delete, key));
        assert_eq!(e.revision, before + 1);
    }
    assert_quiet(&mut watch).await;
    assert!(matches!(
        s.revoke_lease(lease).await,
        Err(StoreError::LeaseNotFound)
    ));
    assert!(matches!(
        s.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound)
    ));
    assert!(matches!(
        s.revoke_lease(LeaseId(0x7fff_0000)).await,
        Err(StoreError::LeaseNotFound)
    ));
}

/// The no-gap pattern: `range` at R, then `watch(prefix, R + 1)` sees exactly the changes
/// after R, in order, while a writer keeps writing. Also: replay from the past, prefix
/// filtering, and "from now".
async fn watch_after_range_has_no_gap(b: &Backend) {
    let s = &*b.store;
    let first = s.put("gap/seed", b"0".to_vec(), None).await.expect("put");

    let (midway_tx, midway_rx) = tokio::sync::oneshot::channel();
    let writer = {
        let store = Arc::clone(&b.store);
        tokio::spawn(async move {
            let mut writes = Vec::new();
            let mut midway = Some(midway_tx);
            for i in 0..60 {
                if i == 20 {
                    // Let the reader take its snapshot while writes continue.
                    if let Some(tx) = midway.take() {
                        let _ = tx.send(());
                    }
                }
                let key = format!("gap/w{}", i % 7);
                let rev = if i % 5 == 4 {
                    store
                        .delete(&key)
                        .await
                        .expect("delete")
                        .map(|r| (r, key, WatchEventKind::Delete))
                } else {
                    let r = store.put(&key, vec![i], None).await.expect("put");
                    Some((r, key, WatchEventKind::Put))
                };
                writes.extend(rev);
                // Writes elsewhere must not show up.
                store
                    .put("gapless/noise", vec![i], None)
                    .await
                    .expect("put");
                tokio::task::yield_now().await;
            }
            writes
        })
    };
    // Read a snapshot in the middle of the writes.
    midway_rx.await.expect("writer reached midway");
    let (snapshot, at) = s.range("gap/").await.expect("range");
    let mut watch = s.watch("gap/", Some(at + 1)).await.expect("watch");
    let writes = writer.await.expect("writer panicked");

    let expected: Vec<_> = writes.iter().filter(|(r, _, _)| *r > at).collect();
    eprintln!(
        "snapshot at {at}: {} keys; {} writes after it",
        snapshot.len(),
        expected.len()
    );
    for (rev, key, kind) in expected {
        let e = next_event(&mut watch, EVENT_TIMEOUT).await;
        assert_eq!(
            (e.revision, e.kv.key.as_str(), e.kind),
            (*rev, key.as_str(), *kind)
        );
        assert_eq!(e.kv.mod_revision, *rev);
        if e.kind == WatchEventKind::Put {
            assert!(e.kv.version >= 1 && e.kv.create_revision <= *rev);
        }
    }
    assert_quiet(&mut watch).await;

    // Snapshot + events = final state: replay everything from the first write instead.
    let mut replay = s.watch("gap/", Some(first)).await.expect("watch");
    let seed = next_event(&mut replay, EVENT_TIMEOUT).await;
    assert_eq!((seed.revision, seed.kv.key.as_str()), (first, "gap/seed"));
    for (rev, key, _) in &writes {
        let e = next_event(&mut replay, EVENT_TIMEOUT).await;
        assert_eq!((e.revision, e.kv.key.as_str()), (*rev, key.as_str()));
    }

    // "From now": only what happens after the call.
    let mut now = s.watch("gap/", None).await.expect("watch");
    let r = s.put("gap/last", b"x".to_vec(), None).await.expect("put");
    let e = next_event(&mut now, EVENT_TIMEOUT).await;
    assert_eq!((e.revision, e.kv.key.as_str()), (r, "gap/last"));
    assert_eq!(e.kv.value, b"x");
}

// ---------------------------------------------------------------------------------------------
// One test per case and store
// ---------------------------------------------------------------------------------------------

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::memory_backend()).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::etcd_backend(stringify!($case)).await).await;
                }
            )*
        }
    };
}

conformance!(
    kv_revisions,
    txn_create_if_absent_race,
    txn_compare_and_swap,
    txn_delete_prefix,
    count_prefix,
    lease_expiry_deletes_key,
    keep_alive_after_ttl_fails,
    keep_alive_extends_lease,
    revoke_deletes_at_once,
    watch_after_range_has_no_gap,
);

/// etcd only: a watch from a compacted revision ends with `Compacted` (the memory store's
/// history bound is tested in its unit tests; the trait has no compaction call).
#[tokio::test]
async fn etcd_watch_from_compacted_revision() {
    let server = EtcdServer::start().await.expect("etcd");
    let store = server.store("/compacted/").await.expect("connect");
    let r1 = store.put("k", b"1".to_vec(), None).await.expect("put");
    let r2 = store.put("k", b"2".to_vec(), None).await.expect("put");
    store.put("k", b"3".to_vec(), None).await.expect("put");
    let mut client = etcd_client::Client::connect([server.endpoint()], None)
        .await
        .expect("client");
    client.compact(r2, None).await.expect("compact");

    let mut watch = store.watch("", Some(r1)).await.expect("watch is created");
    match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
        Ok(Some(Err(StoreError::Compacted { oldest }))) => assert_eq!(oldest, r2),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(
        watch.next().await.is_none(),
        "the stream ends after the error"
    );

    // From the compaction revision on, history is there.
    let mut watch = store.watch("", Some(r2)).await.expect("watch");
    let e = next_event(&mut watch, EVENT_TIMEOUT).await;
    assert_eq!((e.revision, e.kv.value.as_slice()), (r2, &b"2"[..]));
}

/// etcd only: an unreachable etcd is `Unavailable` (retryable) at connect, within the
/// connect timeout.
#[tokio::test]
async fn etcd_unreachable_is_unavailable() {
    // Bind then drop a listener: a loopback port that refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut config = EtcdConfig::new([format!("http://127.0.0.1:{port}")]);
    config.connect_timeout = Duration::from_millis(500);
    let started = tokio::time::Instant::now();
    match EtcdStore::connect(config).await {
        Err(e @ StoreError::Unavailable(_)) => assert!(e.is_retryable()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// etcd only: when etcd goes away, an open watch ends with an `Unavailable` item rather than
/// hanging, and calls fail with `Unavailable`.
#[tokio::test]
async fn etcd_lost_server_ends_watch_with_error() {
    let server = EtcdServer::start().await.expect("etcd");
    let mut config = EtcdConfig::new([server.endpoint()]).with_root("/lost/");
    config.request_timeout = Duration::from_secs(1);
    let store = EtcdStore::connect(config).await.expect("connect");
    let mut watch = store.watch("", None).await.expect("watch");
    drop(server); // kills etcd
    match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
        Ok(Some(Err(e @ StoreError::Unavailable(_)))) => assert!(e.is_retryable()),
        other => panic!("expected an Unavailable item, got {other:?}"),
    }
    assert!(
        watch.next().await.is_none(),
        "the stream ends after the error"
    );
    assert!(matches!(
        store.get("k").await,
        Err(StoreError::Unavailable(_))
    ));
}
