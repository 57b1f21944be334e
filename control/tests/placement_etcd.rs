//! The forwarder registry, placement and failover on a real etcd ([`EtcdServer`]), with
//! several control instances (each its own [`EtcdStore`] client, live set and placer)
//! racing as they would in production.
//!
//! Timing: forwarder leases are 1 s (the test server's minimum TTL); etcd's leader checks
//! expiry every 500 ms, so a lease ends 1.0-1.5 s after its last keep-alive. Tests never
//! sleep to synchronise: they poll the store or the caches with a deadline.
//!
//! `expect`/`unwrap` in this file are assertions: a failure is the test failing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_control::domain::{ForwarderId, MeetingEvent, MeetingId};
use fanout_control::service::failover::{Failover, FailoverConfig};
use fanout_control::service::forwarders::{
    Capacity, Death, ForwarderInfo, ForwarderRegistry, LiveForwarders, Load, RegistryConfig,
    Session,
};
use fanout_control::service::keys;
use fanout_control::service::placement::{
    PlacementConfig, PlacementRecord, RegionLatency, StorePlacer,
};
use fanout_control::service::{PlacementHint, Placer, ServiceError};
use fanout_control::store::Store;
use fanout_control::testing::EtcdServer;
use tokio::task::JoinHandle;

const TTL_MS: u64 = 1000;
/// Longest a lease may outlive its TTL on etcd (expiry is checked every 500 ms), with slack
/// for a loaded machine.
const EXPIRY_SLACK: Duration = Duration::from_millis(1000);

/// One control instance: its own etcd client and caches.
struct Control {
    store: Arc<dyn Store>,
    registry: ForwarderRegistry,
    live: LiveForwarders,
    placer: Arc<StorePlacer>,
}

async fn control(server: &EtcdServer, root: &str, config: PlacementConfig) -> Control {
    let store: Arc<dyn Store> = Arc::new(server.store(root).await.expect("etcd client"));
    let registry = ForwarderRegistry::new(
        Arc::clone(&store),
        RegistryConfig {
            lease_ttl_ms: TTL_MS,
        },
    );
    let live = LiveForwarders::start(Arc::clone(&store))
        .await
        .expect("live set");
    let placer = StorePlacer::start(Arc::clone(&store), live.clone(), config)
        .await
        .expect("placer");
    Control {
        store,
        registry,
        live,
        placer: Arc::new(placer),
    }
}

async fn etcd() -> EtcdServer {
    EtcdServer::start()
        .await
        .expect("etcd must be installed and start (scripts/install-deps.sh installs it)")
}

fn fid(s: &str) -> ForwarderId {
    ForwarderId::new(s).unwrap()
}

fn mid(s: &str) -> MeetingId {
    MeetingId::new(s).unwrap()
}

fn fwd(id: &str, region: &str, max_legs: u32, ports: (u16, u16)) -> ForwarderInfo {
    ForwarderInfo {
        id: fid(id),
        region: region.to_owned(),
        public_ip: "192.0.2.10".to_owned(),
        port_range: ports,
        capacity: Capacity {
            max_legs,
            max_packets_per_second: 1_000_000,
        },
        dtls_fingerprint: String::new(),
    }
}

fn hint(region: Option<&str>, expected: u32) -> PlacementHint {
    PlacementHint {
        region: region.map(str::to_owned),
        expected_participants: expected,
        window: None,
    }
}

/// Heartbeat with `load` until the handle is aborted.
fn heartbeats(
    registry: ForwarderRegistry,
    id: &str,
    session: Session,
    load: Load,
) -> JoinHandle<()> {
    let id = fid(id);
    tokio::spawn(async move {
        loop {
            registry
                .heartbeat(&id, &session, &load)
                .await
                .unwrap_or_else(|e| panic!("heartbeat of {id}: {e}"));
            tokio::time::sleep(session.heartbeat_interval).await;
        }
    })
}

async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn placements(store: &dyn Store) -> BTreeMap<String, PlacementRecord> {
    let (kvs, _) = store.range(&keys::placements()).await.unwrap();
    kvs.into_iter()
        .map(|kv| {
            let json: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
            assert_eq!(json["version"], 1);
            let record: PlacementRecord = serde_json::from_value(json).unwrap();
            (kv.key, record)
        })
        .collect()
}

/// Every (forwarder, port) is held by one placement and claimed by one port key.
async fn assert_ports_unique(store: &dyn Store) {
    let all = placements(store).await;
    let mut held = BTreeSet::new();
    for r in all.values() {
        assert!(
            held.insert((r.forwarder.clone(), r.port)),
            "port {} of {} given twice",
            r.port,
            r.forwarder
        );
        assert_eq!(r.address, format!("192.0.2.10:{}", r.port));
    }
    let (claims, _) = store.range("v1/ports/").await.unwrap();
    let claimed: BTreeSet<(ForwarderId, u16)> = claims
        .iter()
        .map(|kv| {
            let rest = kv.key.strip_prefix("v1/ports/").unwrap();
            let (f, p) = rest.split_once('/').unwrap();
            (fid(f), p.parse().unwrap())
        })
        .collect();
    assert_eq!(claimed, held, "port claims and placements disagree");
}

#[tokio::test]
async fn registration_is_exclusive_and_ends_with_the_lease() {
    let server = etcd().await;
    let c = control(&server, "/reg/", PlacementConfig::default()).await;
    let mut deaths = c.live.deaths();
    let info = fwd("f1", "eu", 100, (10_000, 10_099));
    let session = c.registry.register(info.clone()).await.unwrap();
    assert_eq!(
        session.heartbeat_interval,
        Duration::from_millis(TTL_MS) / 3
    );

    // A second process with the same id is refused while the first is alive.
    let err = c.registry.register(info.clone()).await.unwrap_err();
    assert!(matches!(err, ServiceError::AlreadyRegistered(_)), "{err:?}");

    let load = Load {
        legs: 12,
        ..Load::default()
    };
    let beat = heartbeats(c.registry.clone(), "f1", session, load.clone());
    eventually("the load in the live set", Duration::from_secs(5), || {
        c.live.get(&fid("f1")).and_then(|f| f.load) == Some(load.clone())
    })
    .await;
    // Alive well past its TTL thanks to heartbeats.
    tokio::time::sleep(Duration::from_millis(TTL_MS * 2)).await;
    assert!(c.registry.get(&fid("f1")).await.unwrap().is_some());

    beat.abort();
    let stopped = Instant::now();
    let death = tokio::time::timeout(
        Duration::from_millis(TTL_MS) + EXPIRY_SLACK + Duration::from_secs(1),
        deaths.recv(),
    )
    .await
    .expect("death reported");
    assert_eq!(death, Some(Death::Died(fid("f1"))));
    assert!(stopped.elapsed() >= Duration::from_millis(TTL_MS / 2));
    assert!(c.registry.get(&fid("f1")).await.unwrap().is_none());
    assert!(c
        .store
        .get(&keys::load(&fid("f1")))
        .await
        .unwrap()
        .is_none());
    let err = c
        .registry
        .heartbeat(&fid("f1"), &session, &Load::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::NotRegistered(_)), "{err:?}");

    // The restarted process can register again.
    c.registry.register(info).await.unwrap();
}

#[tokio::test]
async fn placement_by_region_then_headroom_until_full() {
    let server = etcd().await;
    let config = PlacementConfig {
        region_latency: vec![RegionLatency {
            from: "eu".into(),
            to: "us".into(),
            ms: 80,
        }],
        ..PlacementConfig::default()
    };
    let c = control(&server, "/place/", config).await;
    let mut beats = Vec::new();
    for (id, region, max, legs) in [
        ("eu-1", "eu", 20, 0),
        ("eu-2", "eu", 20, 15),
        ("us-1", "us", 30, 0),
    ] {
        let s = c
            .registry
            .register(fwd(id, region, max, (10_000, 10_099)))
            .await
            .unwrap();
        let load = Load {
            legs,
            ..Load::default()
        };
        beats.push(heartbeats(c.registry.clone(), id, s, load));
    }
    eventually("loads", Duration::from_secs(5), || {
        c.live
            .snapshot()
            .values()
            .filter(|f| f.load.is_some())
            .count()
            == 3
            && c.live
                .get(&fid("eu-2"))
                .and_then(|f| f.load)
                .map(|l| l.legs)
                == Some(15)
    })
    .await;

    // eu first; eu-1 has more room than eu-2 (20 vs 5).
    let p = c
        .placer
        .place(&mid("a"), &hint(Some("eu"), 10))
        .await
        .unwrap();
    assert_eq!(p.forwarder, fid("eu-1"));
    // eu-1 now has 10 left, eu-2 5: a meeting of 8 still goes to eu-1.
    let p = c
        .placer
        .place(&mid("b"), &hint(Some("eu"), 8))
        .await
        .unwrap();
    assert_eq!(p.forwarder, fid("eu-1"));
    // eu-1: 2 left, eu-2: 5 → eu-2 for 4.
    let p = c
        .placer
        .place(&mid("c"), &hint(Some("eu"), 4))
        .await
        .unwrap();
    assert_eq!(p.forwarder, fid("eu-2"));
    // No room in eu for 5: us, 80 ms away.
    let p = c
        .placer
        .place(&mid("d"), &hint(Some("eu"), 5))
        .await
        .unwrap();
    assert_eq!(p.forwarder, fid("us-1"));
    let p = c
        .placer
        .place(&mid("e"), &hint(Some("us"), 25))
        .await
        .unwrap();
    assert_eq!(p.forwarder, fid("us-1"));
    // Everything is full now (eu-1: 2, eu-2: 1, us-1: 0 left).
    let err = c.placer.place(&mid("f"), &hint(None, 3)).await.unwrap_err();
    assert!(matches!(err, ServiceError::NoCapacity(_)), "{err:?}");
    assert_eq!(c.placer.placement(&mid("f")).await.unwrap(), None);
    // The same meeting again: the same answer, no new port.
    let again = c
        .placer
        .place(&mid("a"), &hint(Some("us"), 1))
        .await
        .unwrap();
    assert_eq!(again, c.placer.placement(&mid("a")).await.unwrap().unwrap());
    assert_eq!(again.forwarder, fid("eu-1"));
    assert_ports_unique(c.store.as_ref()).await;
    for b in beats {
        b.abort();
    }
}

#[tokio::test]
async fn two_instances_racing_place_each_meeting_once_with_unique_ports() {
    let server = etcd().await;
    let a = control(&server, "/race/", PlacementConfig::default()).await;
    let b = control(&server, "/race/", PlacementConfig::default()).await;
    let mut beats = Vec::new();
    for id in ["f1", "f2", "f3"] {
        let s = a
            .registry
            .register(fwd(id, "eu", 1_000_000, (20_000, 20_999)))
            .await
            .unwrap();
        beats.push(heartbeats(a.registry.clone(), id, s, Load::default()));
    }
    eventually("both live sets", Duration::from_secs(5), || {
        a.live.snapshot().len() == 3 && b.live.snapshot().len() == 3
    })
    .await;

    let started = Instant::now();
    for round in 0..5 {
        let meetings: Vec<MeetingId> = (0..50).map(|i| mid(&format!("r{round}-m{i}"))).collect();
        let h = hint(Some("eu"), 4);
        let from_a = futures::future::join_all(meetings.iter().map(|m| a.placer.place(m, &h)));
        let from_b = futures::future::join_all(meetings.iter().map(|m| b.placer.place(m, &h)));
        let (from_a, from_b) = tokio::join!(from_a, from_b);
        for ((m, x), y) in meetings.iter().zip(from_a).zip(from_b) {
            let (x, y) = (x.unwrap(), y.unwrap());
            assert_eq!(x, y, "round {round}: {m} placed twice");
            assert_eq!(x.epoch, 1);
        }
        let all = placements(a.store.as_ref()).await;
        assert_eq!(all.len(), 50 * (round + 1));
        assert_ports_unique(a.store.as_ref()).await;
    }
    eprintln!("5 rounds of 50 racing placements: {:?}", started.elapsed());
    for b in beats {
        b.abort();
    }
}

#[tokio::test]
async fn failover_moves_every_meeting_once_within_five_seconds() {
    let server = etcd().await;
    let a = control(&server, "/failover/", PlacementConfig::default()).await;
    let b = control(&server, "/failover/", PlacementConfig::default()).await;
    // "dying" has the most room in eu, so it gets every meeting; "spare" is the nearest
    // other, "far" is in another region.
    let dying = a
        .registry
        .register(fwd("dying", "eu", 100_000, (30_000, 30_999)))
        .await
        .unwrap();
    let spare = a
        .registry
        .register(fwd("spare", "eu", 10_000, (30_000, 30_999)))
        .await
        .unwrap();
    let far = a
        .registry
        .register(fwd("far", "us", 100_000, (30_000, 30_999)))
        .await
        .unwrap();
    let beat_dying = heartbeats(a.registry.clone(), "dying", dying, Load::default());
    let beat_spare = heartbeats(a.registry.clone(), "spare", spare, Load::default());
    let beat_far = heartbeats(a.registry.clone(), "far", far, Load::default());
    eventually("both live sets", Duration::from_secs(5), || {
        a.live.snapshot().len() == 3 && b.live.snapshot().len() == 3
    })
    .await;

    let meetings: Vec<MeetingId> = (0..50).map(|i| mid(&format!("m{i}"))).collect();
    for m in &meetings {
        let p = a.placer.place(m, &hint(Some("eu"), 10)).await.unwrap();
        assert_eq!(p.forwarder, fid("dying"));
    }
    let failovers: Vec<JoinHandle<()>> = [&a, &b]
        .into_iter()
        .map(|c| {
            tokio::spawn(
                Failover::new(
                    Arc::clone(&c.store),
                    Arc::clone(&c.placer),
                    c.live.clone(),
                    FailoverConfig::default(),
                )
                .run(),
            )
        })
        .collect();

    beat_dying.abort();
    let stopped = Instant::now();
    let mut expired_at = None;
    let deadline = stopped + Duration::from_millis(TTL_MS) + EXPIRY_SLACK + Duration::from_secs(5);
    loop {
        if expired_at.is_none() && a.registry.get(&fid("dying")).await.unwrap().is_none() {
            expired_at = Some(Instant::now());
        }
        let all = placements(a.store.as_ref()).await;
        let moved = all.values().filter(|r| r.forwarder != fid("dying")).count();
        if moved == meetings.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{moved} of {} moved by {:?} after the last heartbeat",
            meetings.len(),
            stopped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expired_at = expired_at.unwrap_or_else(Instant::now);
    eprintln!(
        "lease ended {:?} after the last heartbeat; all moved {:?} after that",
        expired_at - stopped,
        expired_at.elapsed()
    );
    assert!(expired_at.elapsed() < Duration::from_secs(5));

    // Let both failover tasks sweep again: nothing more may happen.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = placements(a.store.as_ref()).await;
    for m in &meetings {
        let r = &all[&keys::placement(m)];
        assert_eq!(r.epoch, 2, "{m} moved more than once, or not at all");
        assert_eq!(r.forwarder, fid("spare"), "{m}: the nearest live forwarder");
        let (events, _) = a.store.range(&keys::events(m)).await.unwrap();
        assert_eq!(events.len(), 1, "{m}: {} events", events.len());
        assert!(events[0].lease.is_some(), "events live on a lease");
        let stored: serde_json::Value = serde_json::from_slice(&events[0].value).unwrap();
        assert_eq!(stored["version"], 1);
        let e: MeetingEvent = serde_json::from_value(stored["event"].clone()).unwrap();
        assert_eq!(
            e,
            MeetingEvent::ForwarderChanged {
                participant: None,
                forwarder: r.forwarder.clone(),
                address: r.address.clone(),
            }
        );
    }
    assert_ports_unique(a.store.as_ref()).await;
    for h in failovers {
        h.abort();
    }
    beat_spare.abort();
    beat_far.abort();
}
