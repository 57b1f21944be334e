//! Placement: which forwarder, and which port on it, a meeting runs on.
//!
//! # The rule
//!
//! Among the live forwarders ([`LiveForwarders`]) with room for the meeting, take the one
//! nearest to the asking participant's region, then the one with the most headroom (ties:
//! the smallest id, so that the choice is deterministic):
//!
//! * **Nearest** is the latency matrix of [`PlacementConfig::region_latency`] (symmetric
//!   unless both directions are given; same region 0 ms; any other missing pair
//!   [`PlacementConfig::default_latency_ms`]). Without a region in the hint every forwarder
//!   is equally near.
//! * **Headroom** is `capacity.max_legs − legs − pending`: `legs` from the forwarder's last
//!   heartbeat, and `pending` the participants expected by meetings placed on it that are not
//!   there yet. A meeting counts as pending for `expected − legs it reported` (the heartbeat
//!   lists legs per meeting, [`Load::meetings`]) while it is *active*: an unscheduled one for
//!   [`PlacementConfig::unreported_grace_ms`] after it was placed (its participants are on
//!   their way; after that, its legs are what it uses), a scheduled one while its window
//!   overlaps now or the window being placed (a reservation). A forwarder needs headroom for
//!   the hint's `expected_participants` (at least 1) and a free port, else it is no
//!   candidate; no candidate is [`ServiceError::NoCapacity`].
//!
//! Headroom is advisory: two control instances placing at the same moment may both count
//! the same room. What must never be shared is exact, and decided by the store:
//!
//! # One transaction per placement
//!
//! A placement gets the lowest port of the forwarder's range that no other placement on it
//! holds, and is written with one transaction that compares
//! * `v1/placements/{meeting}` absent (a meeting is placed once: a racing caller reads and
//!   returns the winner's placement),
//! * `v1/forwarders/{chosen}` still the registration the choice was made on (same create
//!   revision: never place on a forwarder that just died, or died and came back as a new
//!   process),
//! * `v1/ports/{chosen}/{port}` absent (two meetings racing onto one forwarder cannot get one
//!   port: the loser retries with the next port),
//!
//! and creates the placement and the port claim together. Anything that moves or removes a
//! placement moves or removes its port claim in the same transaction, so "port claimed" and
//! "a placement holds the port" are one fact. Placements are read from a cache (range then
//! watch, like the live set); this process's own writes enter it at once, and its
//! concurrent calls reserve their ports in memory, so it races only with other processes.
//!
//! Failover ([`super::failover`]) re-places the meetings of a dead forwarder with the same
//! choice and the same kind of transaction.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::forwarders::{
    decode, encode, Cached, LiveForwarder, LiveForwarders, PrefixCache, RECORD_VERSION,
};
use super::keys::{self, EventScope};
use super::{Placement, PlacementHint, Placer, ServiceError};
use crate::domain::{ForwarderId, MeetingEvent, MeetingId, UnixMillis};
use crate::store::{Compare, CompareOp, KeyValue, LeaseId, Op, Store, Txn, TxnResponse};

/// Latency assumed between two different regions the matrix does not list.
pub const DEFAULT_LATENCY_MS: u32 = 100;
/// How long an unscheduled meeting's expected participants are reserved on its forwarder
/// before only its reported legs count.
pub const DEFAULT_UNREPORTED_GRACE: Duration = Duration::from_secs(120);
/// Transactions one placement may try (each lost race on a port or a dying forwarder costs
/// one) before giving up with [`ServiceError::Contention`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 64;

fn default_latency_ms() -> u32 {
    DEFAULT_LATENCY_MS
}

fn default_unreported_grace_ms() -> u64 {
    DEFAULT_UNREPORTED_GRACE.as_secs() * 1000
}

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

/// One entry of the latency matrix (`[[region_latency]] from = "eu" to = "us" ms = 80`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionLatency {
    pub from: String,
    pub to: String,
    pub ms: u32,
}

/// Tuning of the [`StorePlacer`], loaded from TOML.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementConfig {
    /// Round-trip latencies between regions, in ms. An entry counts for both directions
    /// unless the other direction has its own.
    #[serde(default)]
    pub region_latency: Vec<RegionLatency>,
    /// Latency between two different regions not in the matrix.
    #[serde(default = "default_latency_ms")]
    pub default_latency_ms: u32,
    /// How long, in ms, a new unscheduled meeting's expected participants stay reserved on
    /// its forwarder while they have not all arrived.
    #[serde(default = "default_unreported_grace_ms")]
    pub unreported_grace_ms: u64,
    /// Transactions one placement may try before [`ServiceError::Contention`].
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            region_latency: Vec::new(),
            default_latency_ms: DEFAULT_LATENCY_MS,
            unreported_grace_ms: default_unreported_grace_ms(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// Latency between regions, from [`PlacementConfig`].
#[derive(Debug, Clone, Default)]
pub struct LatencyMatrix {
    pairs: HashMap<(String, String), u32>,
    default_ms: u32,
}

impl LatencyMatrix {
    pub fn new(entries: &[RegionLatency], default_ms: u32) -> Self {
        let mut pairs = HashMap::new();
        for e in entries {
            pairs.insert((e.from.clone(), e.to.clone()), e.ms);
        }
        // The reverse direction only where it was not given itself.
        for e in entries {
            pairs.entry((e.to.clone(), e.from.clone())).or_insert(e.ms);
        }
        Self { pairs, default_ms }
    }

    /// Latency from `from` to `to` in ms.
    pub fn latency(&self, from: &str, to: &str) -> u32 {
        match self.pairs.get(&(from.to_owned(), to.to_owned())) {
            Some(&ms) => ms,
            None if from == to => 0,
            None => self.default_ms,
        }
    }
}

/// What `v1/placements/{meeting}` holds (with `"version": 1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRecord {
    pub meeting: MeetingId,
    pub forwarder: ForwarderId,
    /// The forwarder's region: failover looks for a replacement near it.
    pub region: String,
    /// `host:port` participants send media to.
    pub address: String,
    /// The meeting's own port on the forwarder (also claimed at `v1/ports/{forwarder}/{port}`).
    pub port: u16,
    /// 1 when first placed, +1 per failover.
    pub epoch: u64,
    /// When the meeting was first placed.
    pub created_at: UnixMillis,
    /// When it was placed on this forwarder.
    pub placed_at: UnixMillis,
    /// Participants expected (the hint's), reserved while the meeting is active.
    pub expected_participants: u32,
    /// A scheduled meeting's window, start inclusive, end exclusive.
    #[serde(default)]
    pub window: Option<(UnixMillis, UnixMillis)>,
}

impl PlacementRecord {
    /// What callers of [`Placer`] see.
    pub fn placement(&self) -> Placement {
        Placement {
            forwarder: self.forwarder.clone(),
            address: self.address.clone(),
            epoch: self.epoch,
        }
    }
}

/// What `v1/ports/{forwarder}/{port}` holds: who has the port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PortClaim {
    meeting: MeetingId,
}

/// What `v1/events/{meeting}/{scope}/{id}` holds: the shape `WatchMeeting` reads
/// (`meetings::StoredEvent`), `{"version": 1, "event": {"type": "FORWARDER_CHANGED", ..}}`.
#[derive(Serialize)]
struct StoredEventRef<'a> {
    version: u32,
    event: &'a MeetingEvent,
}

/// Where a [`StorePlacer`] reads the time (wall clock; tests pass their own).
pub type Clock = Arc<dyn Fn() -> UnixMillis + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| UnixMillis::from_system_time(SystemTime::now()))
}

/// What one placement decision needs.
struct Request<'a> {
    region: Option<&'a str>,
    /// Headroom required (at least 1).
    need: u32,
    window: Option<(UnixMillis, UnixMillis)>,
    now: UnixMillis,
}

/// What a [`StorePlacer::move_off`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Moved {
    /// Re-placed here, with the event written.
    To(PlacementRecord),
    /// Someone else moved or removed the placement first.
    Elsewhere,
    /// The old forwarder's registration is back (the cache was stale): nothing to do.
    StillAlive,
}

/// A port this process is trying to claim; released from [`StorePlacer::inflight`] on drop.
struct PortReservation<'a> {
    inflight: &'a Mutex<HashMap<ForwarderId, BTreeSet<u16>>>,
    forwarder: ForwarderId,
    port: u16,
}

impl Drop for PortReservation<'_> {
    fn drop(&mut self) {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ports) = inflight.get_mut(&self.forwarder) {
            ports.remove(&self.port);
            if ports.is_empty() {
                inflight.remove(&self.forwarder);
            }
        }
    }
}

/// Per-forwarder facts gathered from the placements.
#[derive(Default)]
struct Usage {
    ports: BTreeSet<u16>,
    pending: u64,
}

/// [`Placer`] on the store; see the module docs.
pub struct StorePlacer {
    store: Arc<dyn Store>,
    live: LiveForwarders,
    placements: PrefixCache<PlacementRecord>,
    config: PlacementConfig,
    latency: LatencyMatrix,
    clock: Clock,
    /// Ports this process's calls are claiming right now, so that they do not race each
    /// other for one port.
    inflight: Mutex<HashMap<ForwarderId, BTreeSet<u16>>>,
}

impl std::fmt::Debug for StorePlacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorePlacer")
            .field("placements", &self.placements)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl StorePlacer {
    /// Read the placements and follow them; `live` is the live set to place on.
    pub async fn start(
        store: Arc<dyn Store>,
        live: LiveForwarders,
        config: PlacementConfig,
    ) -> Result<Self, ServiceError> {
        let placements = PrefixCache::start(
            Arc::clone(&store),
            keys::placements(),
            decode::<PlacementRecord>,
        )
        .await?;
        Ok(Self {
            store,
            live,
            placements,
            latency: LatencyMatrix::new(&config.region_latency, config.default_latency_ms),
            config,
            clock: system_clock(),
            inflight: Mutex::new(HashMap::new()),
        })
    }

    /// Read the time from `clock` instead of the wall clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The live set this placer uses.
    pub fn live(&self) -> &LiveForwarders {
        &self.live
    }

    /// The stored placement record of a meeting.
    pub async fn record(
        &self,
        meeting: &MeetingId,
    ) -> Result<Option<PlacementRecord>, ServiceError> {
        match self.store.get(&keys::placement(meeting)).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    /// Every cached placement on `forwarder`.
    pub fn placements_on(&self, forwarder: &ForwarderId) -> Vec<PlacementRecord> {
        self.placements.read(|entries| {
            entries
                .values()
                .filter(|c| &c.value.forwarder == forwarder)
                .map(|c| c.value.clone())
                .collect()
        })
    }

    /// Remove a meeting's placement and free its port (the meeting ended). `false` if it
    /// had none.
    pub async fn release(&self, meeting: &MeetingId) -> Result<bool, ServiceError> {
        let key = keys::placement(meeting);
        for _ in 0..self.config.max_attempts {
            let Some(kv) = self.store.get(&key).await? else {
                return Ok(false);
            };
            let record: PlacementRecord = decode(&kv)?;
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    kv.mod_revision,
                )])
                .and_then([
                    Op::delete(key.clone()),
                    Op::delete(keys::port(&record.forwarder, record.port)),
                ]);
            if self.store.txn(txn).await?.succeeded {
                return Ok(true);
            }
        }
        Err(ServiceError::Contention(key))
    }

    /// Placements whose forwarder is not in the live set (as cached): failover's work.
    pub(crate) fn orphans(&self) -> Vec<Cached<PlacementRecord>> {
        let live = self.live.snapshot();
        self.placements.read(|entries| {
            entries
                .values()
                .filter(|c| !live.contains_key(&c.value.forwarder))
                .cloned()
                .collect()
        })
    }

    /// Pick the best forwarder with room and a free port, and reserve the port in memory.
    fn choose(
        &self,
        req: &Request<'_>,
        exclude: &BTreeSet<ForwarderId>,
        taken: &HashMap<ForwarderId, BTreeSet<u16>>,
    ) -> Result<(LiveForwarder, PortReservation<'_>), ServiceError> {
        let live = self.live.snapshot();
        let grace = Duration::from_millis(self.config.unreported_grace_ms);
        let mut usage = self.usage(&live, req, grace);
        let mut candidates: Vec<(u32, Reverse<i64>, ForwarderId)> = Vec::new();
        for (id, f) in &live {
            if exclude.contains(id) {
                continue;
            }
            let legs = f.load.as_ref().map_or(0, |l| i64::from(l.legs));
            let pending = usage
                .get(id)
                .map_or(0, |u| i64::try_from(u.pending).unwrap_or(i64::MAX));
            let headroom = i64::from(f.info.capacity.max_legs) - legs - pending;
            if headroom < i64::from(req.need) {
                continue;
            }
            let latency = req
                .region
                .map_or(0, |from| self.latency.latency(from, &f.info.region));
            candidates.push((latency, Reverse(headroom), id.clone()));
        }
        candidates.sort();
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, _, id) in candidates {
            let Some(f) = live.get(&id) else { continue };
            let used = usage.remove(&id).map(|u| u.ports).unwrap_or_default();
            let busy = inflight.entry(id.clone()).or_default();
            let none = BTreeSet::new();
            let lost = taken.get(&id).unwrap_or(&none);
            let (lo, hi) = f.info.port_range;
            let free =
                (lo..=hi).find(|p| !used.contains(p) && !busy.contains(p) && !lost.contains(p));
            let Some(port) = free else {
                if busy.is_empty() {
                    inflight.remove(&id);
                }
                continue;
            };
            busy.insert(port);
            return Ok((
                f.clone(),
                PortReservation {
                    inflight: &self.inflight,
                    forwarder: id,
                    port,
                },
            ));
        }
        Err(ServiceError::NoCapacity(format!(
            "no live forwarder{} has room for {} participants and a free port",
            if exclude.is_empty() {
                ""
            } else {
                " (other than those just found dead)"
            },
            req.need
        )))
    }

    /// Ports held and participants pending per forwarder, from the cached placements.
    fn usage(
        &self,
        live: &BTreeMap<ForwarderId, LiveForwarder>,
        req: &Request<'_>,
        grace: Duration,
    ) -> HashMap<ForwarderId, Usage> {
        let overlaps =
            |a: (UnixMillis, UnixMillis), b: (UnixMillis, UnixMillis)| a.0 < b.1 && b.0 < a.1;
        let now = req.now;
        self.placements.read(|entries| {
            let mut usage: HashMap<ForwarderId, Usage> = HashMap::new();
            for c in entries.values() {
                let p = &c.value;
                let u = usage.entry(p.forwarder.clone()).or_default();
                u.ports.insert(p.port);
                let active = match p.window {
                    Some(w) => {
                        (w.0 <= now && now < w.1) || req.window.is_some_and(|r| overlaps(w, r))
                    }
                    None => now < p.placed_at.saturating_add(grace),
                };
                if active {
                    let reported = live
                        .get(&p.forwarder)
                        .and_then(|f| f.load.as_ref())
                        .and_then(|l| l.meetings.get(&p.meeting))
                        .copied()
                        .unwrap_or(0);
                    u.pending += u64::from(p.expected_participants.saturating_sub(reported));
                }
            }
            usage
        })
    }

    async fn place_new(
        &self,
        meeting: &MeetingId,
        hint: &PlacementHint,
    ) -> Result<Placement, ServiceError> {
        if let Some((start, end)) = hint.window {
            if start >= end {
                return Err(ServiceError::InvalidArgument(format!(
                    "placement window ends ({end}) before it starts ({start})"
                )));
            }
        }
        let key = keys::placement(meeting);
        if let Some(kv) = self.store.get(&key).await? {
            return Ok(decode::<PlacementRecord>(&kv)?.placement());
        }
        let now = (self.clock)();
        let req = Request {
            region: hint.region.as_deref(),
            need: hint.expected_participants.max(1),
            window: hint.window,
            now,
        };
        let mut exclude = BTreeSet::new();
        let mut taken: HashMap<ForwarderId, BTreeSet<u16>> = HashMap::new();
        for _ in 0..self.config.max_attempts.max(1) {
            let (f, port) = self.choose(&req, &exclude, &taken)?;
            let id = f.info.id.clone();
            let record = PlacementRecord {
                meeting: meeting.clone(),
                forwarder: id.clone(),
                region: f.info.region.clone(),
                address: f.info.address(port.port),
                port: port.port,
                epoch: 1,
                created_at: now,
                placed_at: now,
                expected_participants: hint.expected_participants,
                window: hint.window,
            };
            let fwd_key = keys::forwarder(&id);
            let port_key = keys::port(&id, port.port);
            let claim = PortClaim {
                meeting: meeting.clone(),
            };
            let txn = Txn::new()
                .when([
                    Compare::absent(key.clone()),
                    Compare::create_revision(fwd_key.clone(), CompareOp::Equal, f.registered),
                    Compare::absent(port_key.clone()),
                ])
                .and_then([
                    Op::put(key.clone(), encode(&key, &record)?),
                    Op::put(port_key.clone(), encode(&port_key, &claim)?),
                ])
                .or_else([Op::get(key.clone()), Op::get(fwd_key), Op::get(port_key)]);
            let resp = self.store.txn(txn).await?;
            if resp.succeeded {
                // Into the cache before the reservation ends, so the port is never seen free.
                self.placements
                    .note_put(key, record.clone(), resp.revision, resp.revision);
                drop(port);
                tracing::info!(%meeting, forwarder = %id, address = %record.address, "meeting placed");
                return Ok(record.placement());
            }
            if let Some(existing) = got(&resp, 0) {
                // Another caller placed it first: theirs is the answer.
                return Ok(decode::<PlacementRecord>(existing)?.placement());
            }
            if got(&resp, 1).is_none_or(|kv| kv.create_revision != f.registered) {
                tracing::debug!(forwarder = %id, "forwarder gone or re-registered; choosing again");
                exclude.insert(id);
            } else if got(&resp, 2).is_some() {
                taken.entry(id).or_default().insert(port.port);
            }
        }
        Err(ServiceError::Contention(key))
    }

    /// Failover of one placement whose forwarder died: choose again near the old region,
    /// and in one transaction (compare: placement unchanged since `current`, old forwarder
    /// absent, new one as chosen, new port free) write the placement with epoch + 1, move
    /// the port claim, and put a `FORWARDER_CHANGED` stage event on `event_lease`.
    pub(crate) async fn move_off(
        &self,
        current: &Cached<PlacementRecord>,
        event_lease: LeaseId,
    ) -> Result<Moved, ServiceError> {
        let old = &current.value;
        let key = keys::placement(&old.meeting);
        let now = (self.clock)();
        let req = Request {
            region: Some(old.region.as_str()),
            need: old.expected_participants.max(1),
            window: old.window,
            now,
        };
        let mut exclude = BTreeSet::from([old.forwarder.clone()]);
        let mut taken: HashMap<ForwarderId, BTreeSet<u16>> = HashMap::new();
        for _ in 0..self.config.max_attempts.max(1) {
            let (f, port) = self.choose(&req, &exclude, &taken)?;
            let id = f.info.id.clone();
            let record = PlacementRecord {
                forwarder: id.clone(),
                region: f.info.region.clone(),
                address: f.info.address(port.port),
                port: port.port,
                epoch: old.epoch + 1,
                placed_at: now,
                ..old.clone()
            };
            let event = MeetingEvent::ForwarderChanged {
                participant: None,
                forwarder: id.clone(),
                address: record.address.clone(),
            };
            let event_key = keys::event(&old.meeting, EventScope::Stage, &event_id());
            let stored = StoredEventRef {
                version: RECORD_VERSION,
                event: &event,
            };
            let event_json = serde_json::to_vec(&stored).map_err(|e| ServiceError::Corrupt {
                key: event_key.clone(),
                reason: format!("cannot encode: {e}"),
            })?;
            let port_key = keys::port(&id, port.port);
            let claim = PortClaim {
                meeting: old.meeting.clone(),
            };
            let txn = relocation_txn(
                &key,
                current.mod_revision,
                (&old.forwarder, old.port),
                (&id, f.registered, port.port),
                (encode(&key, &record)?, encode(&port_key, &claim)?),
                vec![Op::put_with_lease(event_key, event_json, event_lease)],
            );
            let resp = self.store.txn(txn).await?;
            if resp.succeeded {
                self.placements.note_put(
                    key,
                    record.clone(),
                    resp.revision,
                    current.create_revision,
                );
                drop(port);
                return Ok(Moved::To(record));
            }
            if got(&resp, 0).is_none_or(|kv| kv.mod_revision != current.mod_revision) {
                return Ok(Moved::Elsewhere);
            }
            if got(&resp, 1).is_some() {
                return Ok(Moved::StillAlive);
            }
            if got(&resp, 2).is_none_or(|kv| kv.create_revision != f.registered) {
                exclude.insert(id);
            } else if got(&resp, 3).is_some() {
                taken.entry(id).or_default().insert(port.port);
            }
        }
        Err(ServiceError::Contention(key))
    }
}

/// The `i`th `Get` of the branch that ran.
fn got(resp: &TxnResponse, i: usize) -> Option<&KeyValue> {
    resp.gets.get(i).and_then(Option::as_ref)
}

/// A fresh event id: 128 random bits in hex (the key's revision orders events; the id only
/// has to be unique).
fn event_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Placer for StorePlacer {
    fn place<'a>(
        &'a self,
        meeting: &'a MeetingId,
        hint: &'a PlacementHint,
    ) -> BoxFuture<'a, Result<Placement, ServiceError>> {
        Box::pin(self.place_new(meeting, hint))
    }

    fn placement<'a>(
        &'a self,
        meeting: &'a MeetingId,
    ) -> BoxFuture<'a, Result<Option<Placement>, ServiceError>> {
        Box::pin(async move { Ok(self.record(meeting).await?.map(|r| r.placement())) })
    }
}

/// The transaction that moves something holding a port of a forwarder (a placement, a
/// relay node) off a dead forwarder. It applies only if the record at `key` is unchanged
/// since it was read (`read_revision`), the old forwarder is still gone, the new one still
/// has the registration it was chosen on, and the new port is free; then it writes the
/// record, releases the old port, claims the new one, and runs `extra` (an event). The
/// failure branch reads the record, the old and new registrations and the new port back,
/// in that order, so the caller can tell which condition failed.
pub(crate) fn relocation_txn(
    key: &str,
    read_revision: crate::store::Revision,
    from: (&ForwarderId, u16),
    to: (&ForwarderId, crate::store::Revision, u16),
    writes: (Vec<u8>, Vec<u8>),
    extra: Vec<Op>,
) -> Txn {
    let (old_forwarder, old_port) = from;
    let (forwarder, registered, port) = to;
    let (record, claim) = writes;
    let old_fwd_key = keys::forwarder(old_forwarder);
    let fwd_key = keys::forwarder(forwarder);
    let port_key = keys::port(forwarder, port);
    let mut ops = vec![
        Op::put(key.to_owned(), record),
        Op::delete(keys::port(old_forwarder, old_port)),
        Op::put(port_key.clone(), claim),
    ];
    ops.extend(extra);
    Txn::new()
        .when([
            Compare::mod_revision(key.to_owned(), CompareOp::Equal, read_revision),
            Compare::absent(old_fwd_key.clone()),
            Compare::create_revision(fwd_key.clone(), CompareOp::Equal, registered),
            Compare::absent(port_key.clone()),
        ])
        .and_then(ops)
        .or_else([
            Op::get(key.to_owned()),
            Op::get(old_fwd_key),
            Op::get(fwd_key),
            Op::get(port_key),
        ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::forwarders::{
        Capacity, ForwarderInfo, ForwarderRegistry, Load, RegistryConfig, Session,
    };
    use crate::service::Code;
    use crate::store::MemoryStore;
    use std::sync::atomic::{AtomicU64, Ordering};

    const T0: u64 = 1_800_000_000_000;

    fn fwd(id: &str, region: &str, max_legs: u32, ports: (u16, u16)) -> ForwarderInfo {
        ForwarderInfo {
            id: ForwarderId::new(id).unwrap(),
            region: region.to_owned(),
            public_ip: "198.51.100.7".to_owned(),
            port_range: ports,
            capacity: Capacity {
                max_legs,
                max_packets_per_second: 1_000_000,
            },
            dtls_fingerprint: String::new(),
        }
    }

    fn mid(s: &str) -> MeetingId {
        MeetingId::new(s).unwrap()
    }

    fn hint(region: Option<&str>, expected: u32) -> PlacementHint {
        PlacementHint {
            region: region.map(str::to_owned),
            expected_participants: expected,
            window: None,
        }
    }

    struct Fixture {
        store: MemoryStore,
        reg: ForwarderRegistry,
        live: LiveForwarders,
        placer: StorePlacer,
        now: Arc<AtomicU64>,
    }

    impl Fixture {
        async fn new(config: PlacementConfig) -> Self {
            let store = MemoryStore::new();
            let dyn_store: Arc<dyn Store> = Arc::new(store.clone());
            let reg = ForwarderRegistry::new(Arc::clone(&dyn_store), RegistryConfig::default());
            let live = LiveForwarders::start(Arc::clone(&dyn_store)).await.unwrap();
            let now = Arc::new(AtomicU64::new(T0));
            let clock_now = Arc::clone(&now);
            let placer = StorePlacer::start(dyn_store, live.clone(), config)
                .await
                .unwrap()
                .with_clock(Arc::new(move || {
                    UnixMillis(clock_now.load(Ordering::Relaxed))
                }));
            Self {
                store,
                reg,
                live,
                placer,
                now,
            }
        }

        async fn register(&self, info: ForwarderInfo) -> Session {
            let id = info.id.clone();
            let s = self.reg.register(info).await.unwrap();
            eventually("registration in the live set", || self.live.contains(&id)).await;
            s
        }

        async fn report(&self, id: &str, session: &Session, load: Load) {
            let id = ForwarderId::new(id).unwrap();
            self.reg.heartbeat(&id, session, &load).await.unwrap();
            eventually("load in the live set", || {
                self.live.get(&id).and_then(|f| f.load) == Some(load.clone())
            })
            .await;
        }

        async fn place(&self, m: &str, h: &PlacementHint) -> Result<Placement, ServiceError> {
            self.placer.place(&mid(m), h).await
        }
    }

    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..2000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[test]
    fn latency_matrix_is_symmetric_with_defaults() {
        let m = LatencyMatrix::new(
            &[
                RegionLatency {
                    from: "eu".into(),
                    to: "us".into(),
                    ms: 80,
                },
                RegionLatency {
                    from: "us".into(),
                    to: "eu".into(),
                    ms: 90,
                },
                RegionLatency {
                    from: "eu".into(),
                    to: "asia".into(),
                    ms: 150,
                },
            ],
            100,
        );
        assert_eq!(m.latency("eu", "us"), 80);
        assert_eq!(m.latency("us", "eu"), 90);
        assert_eq!(m.latency("asia", "eu"), 150);
        assert_eq!(m.latency("asia", "us"), 100);
        assert_eq!(m.latency("us", "us"), 0);
    }

    #[test]
    fn config_from_toml() {
        let c: PlacementConfig = toml::from_str(
            r#"
            default_latency_ms = 120
            [[region_latency]]
            from = "eu"
            to = "us"
            ms = 80
            "#,
        )
        .unwrap();
        assert_eq!(c.region_latency.len(), 1);
        assert_eq!(c.default_latency_ms, 120);
        assert_eq!(c.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(
            toml::from_str::<PlacementConfig>("").unwrap(),
            PlacementConfig::default()
        );
        assert!(toml::from_str::<PlacementConfig>("latency = 1").is_err());
        assert!(toml::from_str::<PlacementConfig>(
            "[[region_latency]]\nfrom = \"a\"\nto = \"b\"\nms = 1\nextra = 2"
        )
        .is_err());
    }

    #[test]
    fn record_round_trips_with_a_version() {
        let r = PlacementRecord {
            meeting: mid("m"),
            forwarder: ForwarderId::new("f").unwrap(),
            region: "eu".into(),
            address: "198.51.100.7:5000".into(),
            port: 5000,
            epoch: 3,
            created_at: UnixMillis(1),
            placed_at: UnixMillis(2),
            expected_participants: 9,
            window: Some((UnixMillis(10), UnixMillis(20))),
        };
        let kv = KeyValue {
            key: keys::placement(&r.meeting),
            value: encode("k", &r).unwrap(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            lease: None,
        };
        let json: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(decode::<PlacementRecord>(&kv).unwrap(), r);
    }

    #[tokio::test(start_paused = true)]
    async fn region_first_then_headroom() {
        let config = PlacementConfig {
            region_latency: vec![RegionLatency {
                from: "eu".into(),
                to: "asia".into(),
                ms: 150,
            }],
            ..PlacementConfig::default()
        };
        let fx = Fixture::new(config).await;
        let _eu1 = fx.register(fwd("eu-1", "eu", 100, (5000, 5099))).await;
        let eu2 = fx.register(fwd("eu-2", "eu", 100, (5000, 5099))).await;
        let _us1 = fx.register(fwd("us-1", "us", 1000, (5000, 5099))).await;
        fx.report(
            "eu-2",
            &eu2,
            Load {
                legs: 60,
                ..Load::default()
            },
        )
        .await;

        // Nearest first: eu, and of the two the one with more headroom.
        let p = fx.place("m1", &hint(Some("eu"), 10)).await.unwrap();
        assert_eq!(p.forwarder.as_str(), "eu-1");
        assert_eq!(p.address, "198.51.100.7:5000");
        assert_eq!(p.epoch, 1);
        let p = fx.place("m2", &hint(Some("us"), 10)).await.unwrap();
        assert_eq!(p.forwarder.as_str(), "us-1");
        // asia: eu is 150 ms away, us the default 100 ms.
        let p = fx.place("m3", &hint(Some("asia"), 10)).await.unwrap();
        assert_eq!(p.forwarder.as_str(), "us-1");
        // No region: most headroom.
        let p = fx.place("m4", &hint(None, 10)).await.unwrap();
        assert_eq!(p.forwarder.as_str(), "us-1");
        // Too big for eu-1 now (90 left: 100 − m1's 10) and eu-2 (40): the far one.
        let p = fx.place("m5", &hint(Some("eu"), 95)).await.unwrap();
        assert_eq!(p.forwarder.as_str(), "us-1");
        // eu-1 has 90 left: still preferred over us-1's larger room.
        let p = fx.place("m6", &hint(Some("eu"), 90)).await.unwrap();
        assert_eq!(p.forwarder.as_str(), "eu-1");
        assert_eq!(p.address, "198.51.100.7:5001");
    }

    #[tokio::test(start_paused = true)]
    async fn unreported_meetings_count_until_they_report_or_the_grace_ends() {
        let fx = Fixture::new(PlacementConfig::default()).await;
        let s = fx.register(fwd("f", "eu", 10, (5000, 5099))).await;
        fx.place("m1", &hint(None, 6)).await.unwrap();
        let err = fx.place("m2", &hint(None, 6)).await.unwrap_err();
        assert!(matches!(err, ServiceError::NoCapacity(_)), "{err:?}");
        assert_eq!(err.code(), Code::Unavailable);
        // m1 reports 2 of its 6: 2 legs + 4 pending leave 4.
        let mut load = Load {
            legs: 2,
            ..Load::default()
        };
        load.meetings.insert(mid("m1"), 2);
        fx.report("f", &s, load).await;
        assert!(fx.place("m2", &hint(None, 5)).await.is_err());
        fx.place("m2", &hint(None, 4)).await.unwrap();
        assert!(fx.place("m3", &hint(None, 1)).await.is_err());
        // After the grace, only reported legs count: 10 − 2.
        fx.now
            .fetch_add(DEFAULT_UNREPORTED_GRACE.as_secs() * 1000, Ordering::Relaxed);
        fx.place("m3", &hint(None, 8)).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn ports_are_the_lowest_free_and_freed_by_release() {
        let fx = Fixture::new(PlacementConfig::default()).await;
        fx.register(fwd("f", "eu", 1000, (5000, 5002))).await;
        for (m, port) in [("a", 5000), ("b", 5001), ("c", 5002)] {
            let p = fx.place(m, &hint(None, 1)).await.unwrap();
            assert_eq!(p.address, format!("198.51.100.7:{port}"));
        }
        // Out of ports is out of capacity.
        let err = fx.place("d", &hint(None, 1)).await.unwrap_err();
        assert!(matches!(err, ServiceError::NoCapacity(_)), "{err:?}");
        assert!(fx.placer.release(&mid("b")).await.unwrap());
        assert!(!fx.placer.release(&mid("b")).await.unwrap());
        assert_eq!(fx.placer.placement(&mid("b")).await.unwrap(), None);
        let f = ForwarderId::new("f").unwrap();
        eventually("release seen by the cache", || {
            fx.placer.placements_on(&f).len() == 2
        })
        .await;
        let p = fx.place("d", &hint(None, 1)).await.unwrap();
        assert_eq!(p.address, "198.51.100.7:5001");
    }

    #[tokio::test(start_paused = true)]
    async fn placing_twice_returns_the_first_placement() {
        let fx = Fixture::new(PlacementConfig::default()).await;
        fx.register(fwd("f", "eu", 1000, (5000, 5099))).await;
        fx.register(fwd("g", "eu", 1000, (5000, 5099))).await;
        let other = StorePlacer::start(
            Arc::new(fx.store.clone()),
            fx.live.clone(),
            PlacementConfig::default(),
        )
        .await
        .unwrap();
        let m = mid("m");
        let h = hint(Some("eu"), 3);
        let (a, b) = tokio::join!(fx.placer.place(&m, &h), other.place(&m, &h));
        assert_eq!(a.unwrap(), b.as_ref().unwrap().clone());
        assert_eq!(fx.placer.place(&m, &h).await.unwrap(), b.unwrap());
        let (ports, _) = fx.store.range("v1/ports/").await.unwrap();
        assert_eq!(ports.len(), 1);
    }

    #[tokio::test]
    async fn racing_placers_give_every_meeting_one_placement_and_unique_ports() {
        let fx = Fixture::new(PlacementConfig::default()).await;
        for id in ["f", "g", "h"] {
            fx.register(fwd(id, "eu", 100_000, (5000, 5999))).await;
        }
        let other = StorePlacer::start(
            Arc::new(fx.store.clone()),
            fx.live.clone(),
            PlacementConfig::default(),
        )
        .await
        .unwrap();
        let meetings: Vec<MeetingId> = (0..50).map(|i| mid(&format!("m{i}"))).collect();
        let h = hint(Some("eu"), 5);
        let a = futures::future::join_all(meetings.iter().map(|m| fx.placer.place(m, &h)));
        let b = futures::future::join_all(meetings.iter().map(|m| other.place(m, &h)));
        let (a, b) = tokio::join!(a, b);
        let mut seen = BTreeSet::new();
        for (x, y) in a.into_iter().zip(b) {
            let (x, y) = (x.unwrap(), y.unwrap());
            assert_eq!(x, y);
            assert!(
                seen.insert(x.address.clone() + x.forwarder.as_str()),
                "{x:?} twice"
            );
        }
        let (ports, _) = fx.store.range("v1/ports/").await.unwrap();
        assert_eq!(ports.len(), 50);
    }

    #[tokio::test(start_paused = true)]
    async fn scheduled_windows_reserve_capacity() {
        let fx = Fixture::new(PlacementConfig::default()).await;
        fx.register(fwd("f", "eu", 100, (5000, 5099))).await;
        let hour = 3_600_000;
        let window =
            |from: u64, to: u64| Some((UnixMillis(T0 + from * hour), UnixMillis(T0 + to * hour)));
        let scheduled = |expected, w| PlacementHint {
            region: None,
            expected_participants: expected,
            window: w,
        };
        fx.place("s1", &scheduled(80, window(1, 2))).await.unwrap();
        // Now is outside s1's window: an unscheduled meeting may use the room meanwhile.
        fx.place("now", &hint(None, 50)).await.unwrap();
        // Overlapping s1: 80 reserved + 50 pending leave nothing.
        let err = fx
            .place("s2", &scheduled(30, window(1, 3)))
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::NoCapacity(_)), "{err:?}");
        // After s1's window: only the 50 still on their way.
        fx.place("s3", &scheduled(40, window(2, 4))).await.unwrap();
        // Inside s1's window (and after the grace of "now"): s1's 80 count, s3 is not active.
        fx.now.store(T0 + hour + hour / 2, Ordering::Relaxed);
        assert!(fx.place("x", &hint(None, 21)).await.is_err());
        fx.place("x", &hint(None, 20)).await.unwrap();
        let err = fx
            .place("bad", &scheduled(1, window(2, 1)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn never_places_on_a_forwarder_that_just_died() {
        let fx = Fixture::new(PlacementConfig::default()).await;
        let big = fx.register(fwd("big", "eu", 1000, (5000, 5099))).await;
        fx.register(fwd("small", "eu", 100, (5000, 5099))).await;
        // Kill "big" and place at once, before the live set's follower runs: the choice
        // falls on "big", the transaction refuses it, and the next try takes "small".
        fx.store.revoke_lease(big.lease).await.unwrap();
        assert!(fx.live.contains(&ForwarderId::new("big").unwrap()));
        let p = fx.place("m", &hint(None, 1)).await.unwrap();
        assert_eq!(p.forwarder.as_str(), "small");
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_live_is_no_capacity() {
        let fx = Fixture::new(PlacementConfig::default()).await;
        let err = fx.place("m", &hint(Some("eu"), 1)).await.unwrap_err();
        assert!(matches!(err, ServiceError::NoCapacity(_)), "{err:?}");
        assert_eq!(fx.placer.placement(&mid("m")).await.unwrap(), None);
    }
}
