//! Failover: when a forwarder dies, move its meetings to live forwarders.
//!
//! A forwarder is dead when its registration is gone (its lease expired or was revoked,
//! [`super::forwarders`]). [`Failover::run`] sweeps the placements whose forwarder is not
//! in the live set, at once when a death is reported and every
//! [`FailoverConfig::scan_interval_ms`] regardless (a death missed while the watch was
//! broken, or before this process started, is found by the next sweep). Each meeting is
//! re-placed by [`StorePlacer`]'s rule, near the dead forwarder's region, with one
//! transaction that compares
//! * the placement's `mod_revision` as read (so that of several control instances running
//!   failover at once exactly one moves each meeting; the others see it moved and skip it),
//! * the dead forwarder's registration absent (a stale cache never moves a live meeting),
//! * the chosen forwarder's registration and the new port's claim, as placement does,
//!
//! and writes the placement with its epoch bumped, moves the port claim, and puts a
//! `FORWARDER_CHANGED` event for the whole meeting (`participant: None`) under
//! `v1/events/{meeting}/stage/{id}`, attached to an event lease of
//! [`FailoverConfig::event_ttl_ms`] (10 minutes, docs/control-plane.md). One lease serves
//! many events: it is replaced by a fresh one after a tenth of its TTL, so every event lives
//! between 90 % and 100 % of the TTL.
//!
//! Timing: the store deletes the registration at lease expiry (etcd: up to 500 ms late),
//! the live set's watch reports it within a round trip, and the sweep moves meetings with a
//! few transactions in flight at a time ([`FailoverConfig::concurrency`]); instances shuffle
//! their sweeps so that they mostly take different meetings. If no forwarder can take a
//! meeting, the sweep logs it and tries again with a growing pause, up to
//! [`FailoverConfig::max_backoff_ms`].
//!
//! # Relays
//!
//! With a [`RelayPlanner`] ([`Failover::with_relays`]) each sweep also moves the webinar
//! relay nodes of dead forwarders ([`RelayPlanner::sweep`]: same region first, viewers and
//! child relays stay on the node, each viewer gets a `FORWARDER_CHANGED` naming it), and
//! after moving a webinar's origin re-keys the relay links it feeds
//! ([`RelayPlanner::rekey`]).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use rand::seq::SliceRandom as _;
use serde::Deserialize;
use tokio::time::Instant;

use super::forwarders::{Death, LiveForwarders};
use super::placement::{Moved, StorePlacer};
use super::relays::{RelayPlanner, RelaySweep};
use super::ServiceError;
use crate::store::{LeaseId, Store, StoreError};

/// How long failover events live (docs/control-plane.md).
pub const DEFAULT_EVENT_TTL: Duration = Duration::from_secs(600);

fn default_scan_interval_ms() -> u64 {
    1000
}

fn default_event_ttl_ms() -> u64 {
    DEFAULT_EVENT_TTL.as_secs() * 1000
}

fn default_max_backoff_ms() -> u64 {
    5000
}

fn default_concurrency() -> usize {
    8
}

/// First pause after a sweep that left meetings without a forwarder.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Tuning of [`Failover`], loaded from TOML.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    /// Sweep at least this often, in ms, even when no death was reported.
    #[serde(default = "default_scan_interval_ms")]
    pub scan_interval_ms: u64,
    /// TTL of the lease failover events are attached to, in ms.
    #[serde(default = "default_event_ttl_ms")]
    pub event_ttl_ms: u64,
    /// Longest pause, in ms, between sweeps that find no forwarder for some meetings.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Moves in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            scan_interval_ms: default_scan_interval_ms(),
            event_ttl_ms: default_event_ttl_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            concurrency: default_concurrency(),
        }
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Meetings this process moved.
    pub moved: usize,
    /// Meetings another process moved (or removed) first.
    pub moved_elsewhere: usize,
    /// Meetings whose forwarder turned out to be registered after all.
    pub still_alive: usize,
    /// Meetings left where they are: no forwarder could take them, or the store failed.
    /// Relays left where they are count here too.
    pub stuck: usize,
    /// What the relay sweep did (all zero without a relay planner).
    pub relays: RelaySweep,
}

/// The failover task of one control instance; see the module docs.
#[derive(Debug)]
pub struct Failover {
    store: Arc<dyn Store>,
    placer: Arc<StorePlacer>,
    live: LiveForwarders,
    config: FailoverConfig,
    /// The lease events go on now, and when it was granted.
    event_lease: Option<(LeaseId, Instant)>,
    /// Webinar relays to move too.
    relays: Option<Arc<RelayPlanner>>,
}

impl Failover {
    pub fn new(
        store: Arc<dyn Store>,
        placer: Arc<StorePlacer>,
        live: LiveForwarders,
        config: FailoverConfig,
    ) -> Self {
        Self {
            store,
            placer,
            live,
            config,
            event_lease: None,
            relays: None,
        }
    }

    /// Move the relays of dead forwarders too (see the module docs).
    pub fn with_relays(mut self, relays: Arc<RelayPlanner>) -> Self {
        self.relays = Some(relays);
        self
    }

    /// Sweep forever: on every death, every scan interval, and with backoff while meetings
    /// are stuck. Spawn it; abort the task to stop.
    pub async fn run(mut self) {
        let mut deaths = self.live.deaths();
        let mut deaths_open = true;
        let interval = Duration::from_millis(self.config.scan_interval_ms.max(1));
        let max_backoff = Duration::from_millis(self.config.max_backoff_ms.max(1));
        let mut backoff: Option<Duration> = None;
        loop {
            let report = self.sweep().await;
            let pause = if report.stuck > 0 {
                let b = backoff.map_or(FIRST_BACKOFF, |b| b * 2).min(max_backoff);
                backoff = Some(b);
                tracing::warn!(
                    stuck = report.stuck,
                    retry_in = ?b,
                    "failover: meetings of dead forwarders could not be moved"
                );
                b
            } else {
                backoff = None;
                interval
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                death = deaths.recv(), if deaths_open => match death {
                    Some(Death::Died(id)) => tracing::info!(forwarder = %id, "forwarder died"),
                    Some(Death::Missed) => {}
                    None => deaths_open = false,
                },
            }
        }
    }

    /// Move every placement, then every relay, whose forwarder is not live (as cached).
    /// Errors are counted as `stuck` and logged: the next sweep tries again.
    pub async fn sweep(&mut self) -> SweepReport {
        let mut report = self.sweep_placements().await;
        if let Some(relays) = self.relays.clone() {
            report.relays = self.sweep_relays(&relays).await;
            report.stuck += report.relays.stuck;
        }
        report
    }

    async fn sweep_relays(&mut self, relays: &RelayPlanner) -> RelaySweep {
        let lease = match self.event_lease().await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(error = %e, "failover: cannot get a lease for events");
                return RelaySweep {
                    stuck: 1,
                    ..RelaySweep::default()
                };
            }
        };
        let report = relays.sweep(lease, self.config.concurrency).await;
        if report.stuck > 0 {
            // The lease may be the cause (revoked by hand?): a new one next sweep.
            self.event_lease = None;
        }
        report
    }

    async fn sweep_placements(&mut self) -> SweepReport {
        let mut orphans = self.placer.orphans();
        let mut report = SweepReport::default();
        if orphans.is_empty() {
            return report;
        }
        let lease = match self.event_lease().await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(error = %e, "failover: cannot get a lease for events");
                report.stuck = orphans.len();
                return report;
            }
        };
        // Several instances sweep the same orphans: in different orders, they mostly take
        // different meetings instead of losing the same races in lockstep.
        orphans.shuffle(&mut rand::thread_rng());
        let placer = &self.placer;
        let results: Vec<_> = futures::stream::iter(orphans)
            .map(|current| async move {
                let result = placer.move_off(&current, lease).await;
                (current, result)
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await;
        for (current, result) in results {
            let old = &current.value;
            match result {
                Ok(Moved::To(new)) => {
                    tracing::info!(
                        meeting = %old.meeting,
                        from = %old.forwarder,
                        to = %new.forwarder,
                        address = %new.address,
                        epoch = new.epoch,
                        "failover: meeting moved"
                    );
                    report.moved += 1;
                    if let Some(relays) = &self.relays {
                        // The links from the origin restart in a new process: new keys.
                        if let Err(e) = relays.rekey(&old.meeting).await {
                            tracing::warn!(meeting = %old.meeting, error = %e, "failover: cannot re-key relay links");
                        }
                    }
                }
                Ok(Moved::Elsewhere) => report.moved_elsewhere += 1,
                Ok(Moved::StillAlive) => report.still_alive += 1,
                Err(e) => {
                    if matches!(e, ServiceError::Store(StoreError::LeaseNotFound)) {
                        // The event lease is gone (revoked by hand?): a new one next sweep.
                        self.event_lease = None;
                    }
                    tracing::warn!(meeting = %old.meeting, from = %old.forwarder, error = %e, "failover: cannot move meeting");
                    report.stuck += 1;
                }
            }
        }
        report
    }

    /// The lease for events, replaced after a tenth of its TTL.
    async fn event_lease(&mut self) -> Result<LeaseId, ServiceError> {
        let ttl = Duration::from_millis(self.config.event_ttl_ms.max(1000));
        if let Some((lease, granted)) = self.event_lease {
            if granted.elapsed() < ttl / 10 {
                return Ok(lease);
            }
        }
        let lease = self.store.grant_lease(ttl).await?;
        self.event_lease = Some((lease, Instant::now()));
        Ok(lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ForwarderId, MeetingEvent, MeetingId};
    use crate::service::forwarders::{
        Capacity, ForwarderInfo, ForwarderRegistry, Load, RegistryConfig, Session,
    };
    use crate::service::placement::PlacementConfig;
    use crate::service::{keys, PlacementHint, Placer};
    use crate::store::MemoryStore;
    use std::collections::{BTreeMap, BTreeSet};

    fn fwd(id: &str, region: &str, max_legs: u32) -> ForwarderInfo {
        ForwarderInfo {
            id: ForwarderId::new(id).unwrap(),
            region: region.to_owned(),
            public_ip: "203.0.113.9".to_owned(),
            port_range: (7000, 7999),
            capacity: Capacity {
                max_legs,
                max_packets_per_second: 1_000_000,
            },
            dtls_fingerprint: String::new(),
        }
    }

    /// Heartbeat until aborted.
    fn keep_alive(
        reg: ForwarderRegistry,
        id: &str,
        session: Session,
    ) -> tokio::task::JoinHandle<()> {
        let id = ForwarderId::new(id).unwrap();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(session.heartbeat_interval).await;
                if let Err(e) = reg.heartbeat(&id, &session, &Load::default()).await {
                    panic!("heartbeat of {id}: {e}");
                }
            }
        })
    }

    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..4000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    }

    struct Instance {
        placer: Arc<StorePlacer>,
        live: LiveForwarders,
    }

    async fn instance(store: &MemoryStore) -> Instance {
        let s: Arc<dyn Store> = Arc::new(store.clone());
        let live = LiveForwarders::start(Arc::clone(&s)).await.unwrap();
        let placer = StorePlacer::start(s, live.clone(), PlacementConfig::default())
            .await
            .unwrap();
        Instance {
            placer: Arc::new(placer),
            live,
        }
    }

    fn spawn_failover(store: &MemoryStore, i: &Instance) -> tokio::task::JoinHandle<()> {
        let f = Failover::new(
            Arc::new(store.clone()),
            Arc::clone(&i.placer),
            i.live.clone(),
            FailoverConfig::default(),
        );
        tokio::spawn(f.run())
    }

    #[test]
    fn config_from_toml() {
        let c: FailoverConfig = toml::from_str("scan_interval_ms = 250").unwrap();
        assert_eq!(c.scan_interval_ms, 250);
        assert_eq!(c.event_ttl_ms, 600_000);
        assert!(toml::from_str::<FailoverConfig>("scan = 1").is_err());
    }

    /// Two failover tasks, 30 meetings on a forwarder that stops heartbeating: every
    /// meeting moves once, within 5 s of the lease's expiry, with one event each.
    #[tokio::test(start_paused = true)]
    async fn dead_forwarders_meetings_move_once_each() {
        let store = MemoryStore::new();
        let reg = ForwarderRegistry::new(Arc::new(store.clone()), RegistryConfig::default());
        let a = instance(&store).await;
        let b = instance(&store).await;
        // eu-a has the most room, so it gets every meeting; eu-b is the nearest other.
        let sa = reg.register(fwd("eu-a", "eu", 10_000)).await.unwrap();
        let sb = reg.register(fwd("eu-b", "eu", 2_000)).await.unwrap();
        let sc = reg.register(fwd("us-c", "us", 50_000)).await.unwrap();
        let beat_a = keep_alive(reg.clone(), "eu-a", sa);
        let _beat_b = keep_alive(reg.clone(), "eu-b", sb);
        let _beat_c = keep_alive(reg.clone(), "us-c", sc);
        eventually("three forwarders", || a.live.snapshot().len() == 3).await;
        eventually("three forwarders", || b.live.snapshot().len() == 3).await;

        let meetings: Vec<MeetingId> = (0..30)
            .map(|i| MeetingId::new(format!("m{i}")).unwrap())
            .collect();
        let hint = PlacementHint {
            region: Some("eu".into()),
            expected_participants: 10,
            window: None,
        };
        for m in &meetings {
            let p = a.placer.place(m, &hint).await.unwrap();
            assert_eq!(p.forwarder.as_str(), "eu-a");
        }
        let _fa = spawn_failover(&store, &a);
        let _fb = spawn_failover(&store, &b);

        beat_a.abort();
        let stopped = Instant::now();
        let ttl = RegistryConfig::default().lease_ttl();
        let deadline = stopped + ttl + Duration::from_secs(5);
        loop {
            let (kvs, _) = store.range(&keys::placements()).await.unwrap();
            let moved = kvs
                .iter()
                .filter(|kv| !String::from_utf8_lossy(&kv.value).contains("\"eu-a\""))
                .count();
            if moved == meetings.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {moved} moved by the deadline"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Let any straggling sweep run, then count.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut ports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for m in &meetings {
            let r = a.placer.record(m).await.unwrap().unwrap();
            assert_eq!(r.epoch, 2, "{m}");
            // Near the old region: eu-b, not us-c.
            assert_eq!(r.forwarder.as_str(), "eu-b", "{m}");
            assert!(ports
                .entry(r.forwarder.to_string())
                .or_default()
                .insert(r.address.clone()));
            let (events, _) = store.range(&keys::events(m)).await.unwrap();
            assert_eq!(events.len(), 1, "{m}: {events:?}");
            assert!(events[0].lease.is_some());
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
            assert_eq!(a.placer.placement(m).await.unwrap().unwrap().epoch, 2);
        }
        let (old_ports, _) = store
            .range(&keys::ports(&ForwarderId::new("eu-a").unwrap()))
            .await
            .unwrap();
        assert!(old_ports.is_empty(), "{old_ports:?}");
        let (new_ports, _) = store
            .range(&keys::ports(&ForwarderId::new("eu-b").unwrap()))
            .await
            .unwrap();
        assert_eq!(new_ports.len(), meetings.len());
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_a_live_forwarder() {
        let store = MemoryStore::new();
        let reg = ForwarderRegistry::new(Arc::new(store.clone()), RegistryConfig::default());
        let a = instance(&store).await;
        let sa = reg.register(fwd("only", "eu", 100)).await.unwrap();
        eventually("registration", || {
            a.live.contains(&ForwarderId::new("only").unwrap())
        })
        .await;
        let m = MeetingId::new("m").unwrap();
        a.placer.place(&m, &PlacementHint::default()).await.unwrap();
        let _f = spawn_failover(&store, &a);
        reg.deregister(&ForwarderId::new("only").unwrap(), &sa)
            .await
            .unwrap();
        // Nowhere to go for a while: the placement stays.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(a.placer.record(&m).await.unwrap().unwrap().epoch, 1);
        let sn = reg.register(fwd("new", "us", 100)).await.unwrap();
        let _beat = keep_alive(reg.clone(), "new", sn);
        let started = Instant::now();
        loop {
            let r = a.placer.record(&m).await.unwrap().unwrap();
            if r.epoch == 2 {
                assert_eq!(r.forwarder.as_str(), "new");
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(6), "not moved");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
