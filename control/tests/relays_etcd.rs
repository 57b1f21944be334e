//! Webinar relay trees on a real etcd ([`EtcdServer`]): exact viewer counts under a burst
//! of concurrent joins (with the figures docs/control-plane.md quotes), and relay failover
//! within 5 s of a forwarder's lease expiry.
//!
//! Timing: forwarder leases are 1 s (the test server's minimum TTL); etcd checks expiry
//! every 500 ms. Tests poll with deadlines rather than sleep to synchronise.
//!
//! `expect`/`unwrap` in this file are assertions: a failure is the test failing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_control::domain::{ForwarderId, MeetingEvent, MeetingId, ParticipantId};
use fanout_control::service::failover::{Failover, FailoverConfig};
use fanout_control::service::forwarders::{
    Capacity, ForwarderInfo, ForwarderRegistry, LiveForwarders, Load, RegistryConfig, Session,
};
use fanout_control::service::keys::{self, EventScope};
use fanout_control::service::placement::{PlacementConfig, StorePlacer};
use fanout_control::service::relays::{RelayConfig, RelayParent, RelayPlanner, RelayTree};
use fanout_control::service::{PlacementHint, Placer};
use fanout_control::store::{Compare, CompareOp, Op, Store, Txn};
use fanout_control::testing::EtcdServer;
use tokio::task::JoinHandle;

const TTL_MS: u64 = 1000;

struct Control {
    store: Arc<dyn Store>,
    registry: ForwarderRegistry,
    live: LiveForwarders,
    placer: Arc<StorePlacer>,
    relays: Arc<RelayPlanner>,
}

async fn control(server: &EtcdServer, root: &str, max_viewers: u32) -> Control {
    let store: Arc<dyn Store> = Arc::new(server.store(root).await.expect("etcd client"));
    let registry = ForwarderRegistry::new(
        Arc::clone(&store),
        RegistryConfig {
            lease_ttl_ms: TTL_MS,
        },
    );
    let live = LiveForwarders::start(Arc::clone(&store)).await.unwrap();
    let config = PlacementConfig::default();
    let placer = Arc::new(
        StorePlacer::start(Arc::clone(&store), live.clone(), config.clone())
            .await
            .unwrap(),
    );
    let relays = RelayPlanner::start(
        Arc::clone(&store),
        Arc::clone(&placer),
        &config,
        RelayConfig {
            max_viewers_per_relay: max_viewers,
            ..RelayConfig::default()
        },
    )
    .await
    .unwrap();
    Control {
        store,
        registry,
        live,
        placer,
        relays: Arc::new(relays),
    }
}

fn fwd(id: &str, region: &str, max_legs: u32) -> ForwarderInfo {
    ForwarderInfo {
        id: ForwarderId::new(id).unwrap(),
        region: region.to_owned(),
        public_ip: "192.0.2.10".to_owned(),
        port_range: (20_000, 20_099),
        capacity: Capacity {
            max_legs,
            max_packets_per_second: 1_000_000,
        },
        dtls_fingerprint: String::new(),
    }
}

fn pid(i: usize) -> ParticipantId {
    ParticipantId::new(format!("v{i}")).unwrap()
}

fn heartbeats(registry: ForwarderRegistry, id: &str, session: Session) -> JoinHandle<()> {
    let id = ForwarderId::new(id).unwrap();
    tokio::spawn(async move {
        loop {
            // Ends quietly when the server stops at the end of the test.
            if registry
                .heartbeat(&id, &session, &Load::default())
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(session.heartbeat_interval).await;
        }
    })
}

async fn register(c: &Control, info: ForwarderInfo) -> JoinHandle<()> {
    let id = info.id.clone();
    let session = c.registry.register(info).await.unwrap();
    let beat = heartbeats(c.registry.clone(), id.as_str(), session);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.live.contains(&id) {
        assert!(Instant::now() < deadline, "{id} never live");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    beat
}

async fn place(c: &Control, m: &MeetingId) {
    let hint = PlacementHint {
        region: Some("eu".into()),
        expected_participants: 10,
        window: None,
    };
    c.placer.place(m, &hint).await.unwrap();
}

/// Every node's counts equal its keys and stay within the limit.
async fn check(c: &Control, m: &MeetingId, max: u32) -> RelayTree {
    let tree = c.relays.tree(m).await.unwrap();
    for n in &tree.nodes {
        let (count, _) = c
            .store
            .count(&keys::relay_viewers_of(m, n.relay.as_str()))
            .await
            .unwrap();
        assert_eq!(u64::from(n.viewers), count, "{}", n.relay);
        assert!(n.viewers <= max);
    }
    tree
}

/// 200 joins at once through two control instances: the seat design (the one
/// implemented: exact) against the keys-only alternative, simulated at the store level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_keep_counts_exact() {
    let server = EtcdServer::start().await.expect("etcd must be installed");
    let a = control(&server, "/relays/", 1000).await;
    let b = control(&server, "/relays/", 1000).await;
    let _f1 = register(&a, fwd("eu-1", "eu", 100_000)).await;
    let _f2 = register(&a, fwd("eu-2", "eu", 100_000)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.live.snapshot().len() < 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Every join lands on one node (limit 1,000 > 200), then on 4 nodes of 50 seats.
    for (label, m, max) in [("one node", "w1", 1000u32), ("4 nodes of 50", "w2", 50)] {
        let m = MeetingId::new(m).unwrap();
        place(&a, &m).await;
        let (a_relays, b_relays) = if max == 1000 {
            (Arc::clone(&a.relays), Arc::clone(&b.relays))
        } else {
            let a50 = control(&server, "/relays/", 50).await;
            let b50 = control(&server, "/relays/", 50).await;
            while a50.live.snapshot().len() < 2 || b50.live.snapshot().len() < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (a50.relays, b50.relays)
        };
        let before = (a_relays.stats(), b_relays.stats());
        let started = Instant::now();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let p = if i % 2 == 0 {
                    Arc::clone(&a_relays)
                } else {
                    Arc::clone(&b_relays)
                };
                let m = m.clone();
                tokio::spawn(async move {
                    let t = Instant::now();
                    p.assign_viewer(&m, &pid(i), Some("eu")).await.unwrap();
                    t.elapsed()
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.push(t.await.unwrap());
        }
        let elapsed = started.elapsed();
        latencies.sort();
        let tree = check(&a, &m, max).await;
        let total: u32 = tree.nodes.iter().map(|n| n.viewers).sum();
        assert_eq!(total, 200);
        assert_eq!(tree.nodes.len(), (200 / max.min(200)) as usize);
        let after = (a_relays.stats(), b_relays.stats());
        let txns = after.0.txns + after.1.txns - before.0.txns - before.1.txns;
        let lost = after.0.conflicts + after.1.conflicts - before.0.conflicts - before.1.conflicts;
        eprintln!(
            "seats, {label}: 200 joins in {elapsed:?}, p50 {:?}, p99 {:?}, {txns} txns ({lost} lost)",
            latencies[100], latencies[197]
        );
    }

    // The alternative: no counter; each join counts the node's keys and creates its own
    // key comparing the node record unchanged (which joins never write). No join waits
    // for another, but all count before any writes: the limit is not enforced.
    let m = MeetingId::new("w3").unwrap();
    let relay_key = keys::relay(&m, "eu-0");
    a.store.put(&relay_key, b"{}".to_vec(), None).await.unwrap();
    let rev = a.store.get(&relay_key).await.unwrap().unwrap().mod_revision;
    let limit = 150u64;
    let started = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = if i % 2 == 0 {
                Arc::clone(&a.store)
            } else {
                Arc::clone(&b.store)
            };
            let m = m.clone();
            let relay_key = relay_key.clone();
            tokio::spawn(async move {
                let mut txns = 0u32;
                loop {
                    let (n, _) = store
                        .count(&keys::relay_viewers_of(&m, "eu-0"))
                        .await
                        .unwrap();
                    if n >= limit {
                        return (false, txns);
                    }
                    let key = keys::relay_viewer(&m, "eu-0", &pid(i));
                    let txn = Txn::new()
                        .when([
                            Compare::mod_revision(relay_key.clone(), CompareOp::Equal, rev),
                            Compare::absent(key.clone()),
                        ])
                        .and_then([Op::put(key, b"{}".to_vec())]);
                    txns += 1;
                    if store.txn(txn).await.unwrap().succeeded {
                        return (true, txns);
                    }
                }
            })
        })
        .collect();
    let mut joined = 0;
    let mut txns = 0;
    for t in tasks {
        let (ok, n) = t.await.unwrap();
        joined += u64::from(ok);
        txns += n;
    }
    let (count, _) = a
        .store
        .count(&keys::relay_viewers_of(&m, "eu-0"))
        .await
        .unwrap();
    assert_eq!(count, joined, "keys are exact by construction");
    eprintln!(
        "keys only, limit {limit}: 200 joins in {:?}, {txns} txns, {joined} admitted (overshoot {})",
        started.elapsed(),
        joined.saturating_sub(limit)
    );
}

/// A relay forwarder dies: its relays are re-placed in the same region within 5 s of the
/// lease's expiry, keep their viewers, and each viewer gets an event naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_failover_within_five_seconds_of_lease_expiry() {
    let server = EtcdServer::start().await.expect("etcd must be installed");
    let c = control(&server, "/failover/", 3).await;
    let _o = register(&c, fwd("eu-origin", "eu", 5000)).await;
    let doomed = register(&c, fwd("eu-big", "eu", 1000)).await;
    let _s = register(&c, fwd("eu-small", "eu", 500)).await;
    let _u = register(&c, fwd("us-1", "us", 100_000)).await;
    let m = MeetingId::new("w").unwrap();
    place(&c, &m).await;
    for i in 0..6 {
        let p = c
            .relays
            .assign_viewer(&m, &pid(i), Some("eu"))
            .await
            .unwrap();
        assert_eq!(p.forwarder.as_str(), "eu-big");
    }
    let before = check(&c, &m, 3).await;
    assert_eq!(before.nodes.len(), 2);
    let failover = Failover::new(
        Arc::clone(&c.store),
        Arc::clone(&c.placer),
        c.live.clone(),
        FailoverConfig::default(),
    )
    .with_relays(Arc::clone(&c.relays));
    let _f = tokio::spawn(failover.run());

    doomed.abort();
    let stopped = Instant::now();
    // The lease ends at most TTL + 500 ms (etcd's expiry check) after the last heartbeat.
    let deadline = stopped + Duration::from_millis(TTL_MS + 500) + Duration::from_secs(5);
    let after = loop {
        let tree = c.relays.tree(&m).await.unwrap();
        if tree
            .nodes
            .iter()
            .all(|n| n.forwarder.as_str() == "eu-small")
        {
            break tree;
        }
        assert!(Instant::now() < deadline, "not moved in time: {tree:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "relays moved {:?} after the last heartbeat",
        stopped.elapsed()
    );
    for (old, new) in before.nodes.iter().zip(&after.nodes) {
        assert_eq!(old.relay, new.relay);
        assert_eq!(new.epoch, 2);
        assert_eq!(new.viewers, old.viewers);
        assert_eq!(new.parent, old.parent);
    }
    assert_eq!(
        after
            .nodes
            .iter()
            .filter(|n| n.parent == RelayParent::Origin)
            .count(),
        1
    );
    // Viewer events come after the move; give them a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (events, _) = c
            .store
            .range(&keys::events_in(&m, EventScope::Audience))
            .await
            .unwrap();
        let named: BTreeSet<ParticipantId> = events
            .iter()
            .filter_map(|kv| {
                let v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
                match serde_json::from_value(v["event"].clone()).unwrap() {
                    MeetingEvent::ForwarderChanged {
                        participant: Some(p),
                        ..
                    } => Some(p),
                    _ => None,
                }
            })
            .collect();
        if named.len() == 6 {
            break;
        }
        assert!(Instant::now() < deadline, "events: {named:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check(&c, &m, 3).await;
}
