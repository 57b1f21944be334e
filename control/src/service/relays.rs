//! Webinar relay trees: which forwarder each viewer of a webinar receives from.
//!
//! # The model
//!
//! A webinar's *origin* is the forwarder its meeting is placed on ([`Placer::place`]): the
//! hosts and panelists publish there. Viewers (attendees) never connect to the origin;
//! each is assigned to a *relay node* of the webinar in its region. A relay node is one
//! record, `v1/relays/{meeting}/{relay}`, that runs on one forwarder (its own port there,
//! claimed at `v1/ports/{forwarder}/{port}` like a placement's) and receives the webinar's
//! tracks over a *relay link* from its parent:
//!
//! * the first relay of a region, its **ingress**, is fed by the origin;
//! * every other relay of the region is fed by the ingress,
//!
//! so every track crosses each region boundary once (origin → ingress) and fans out inside
//! the region. The tree is two levels deep.
//!
//! A node's id ([`RelayId`], `{region}-{index}`) is not its forwarder: when failover moves
//! a node to another forwarder, its viewers and children stay assigned to the node, which
//! now points at the new forwarder. The index a new node gets is the smallest one unused in
//! its region, so joiners racing to grow the same region pick the same id, one creates it,
//! and the others join it instead of each creating a relay.
//!
//! # Assigning a viewer ([`RelayPlanner::assign_viewer`])
//!
//! Regions are tried nearest first (the latency matrix of [`PlacementConfig`], the
//! viewer's own region at 0 ms); in each:
//!
//! 1. a node of this webinar in the region with a free seat (of `max_viewers_per_relay`,
//!    default 1,000) takes the viewer: nodes on live forwarders first, the newest first
//!    (during a burst the one filling up), a free seat at random (see below);
//! 2. else a new node is created on a live forwarder of the region: the one with the most
//!    headroom, where a forwarder's headroom is `max_legs − reported legs − the empty seats
//!    of the relays it runs` (a relay reserves `max_viewers_per_relay + 1` legs: it is
//!    expected to fill up). The origin's own forwarder is taken only when no other
//!    forwarder of the region has room: a relay there costs a loopback link, but a
//!    single-forwarder deployment has nowhere else. The port is the *highest* free one of
//!    the forwarder's range (placements take the lowest), read from `v1/ports/{forwarder}/`
//!    and claimed in the creating transaction;
//! 3. else (no live forwarder in the region, or none with room) the next region.
//!
//! # Exact counts: seats
//!
//! A node has `max_viewers_per_relay` numbered seats, `v1/relay_seats/{meeting}/{relay}/{n}`.
//! A join creates one seat key (compare-absent) and the viewer's assignment
//! `v1/relay_viewers/{meeting}/{relay}/{participant}` in one transaction that also compares
//! the node's record unchanged; the record itself is not written. Joins to one node do
//! not share a counter: each creates distinct keys, and two collide only when they pick the
//! same seat (the loser tries another at once). Seats are picked at random among those free
//! in this process's view: a watch-fed cache of every seat, minus the seats this process's
//! joins are claiming now and those a join found taken. The seat numbers bound a node's
//! viewers exactly, the viewers are the assignment keys (one seat each), and the record's
//! `children` count still changes by compare-and-swap.
//!
//! A node is created only when every seat of the region is taken or being claimed in this
//! view, by other viewers than the joiner, so N viewers of a region never make more than
//! ceil(N / max) nodes.
//!
//! Removing an empty node without a join slipping in: the release that left it without
//! seats marks the record `closing` (a write, so a join that read the node before fails its
//! compare; joins skip closing nodes), then counts the seats again. A join that committed
//! before the mark is counted; none can commit after it. Seats left: the mark is lifted.
//! None: the node goes, comparing the marked record unchanged. A process dying between
//! mark and removal leaves a closing node that keeps its viewers but takes no new ones
//! until a release there or the meeting's end removes it.
//!
//! # Releasing ([`RelayPlanner::release_viewer`])
//!
//! The assignment and its seat go (comparing only the assignment); a node left with no
//! seats and no children is removed with its port claim as above, and its parent's
//! `children` drops in the same transaction (an ingress left empty by that goes too). Children never change parent: a
//! node with children stays, even without viewers of its own.
//!
//! # Links and keys
//!
//! Each node holds the SRTP keys (AEAD_AES_128_GCM, RFC 7714) of the link to its parent,
//! fresh per link: [`RelayTree::links`] gives each end its view of it. The keys are bound
//! to both ends' processes: when either end moves to another forwarder (failover), its
//! SRTP contexts restart, and reusing a GCM key with restarted sequence numbers would
//! reuse nonces, so the link gets new keys ([`RelayPlanner::rekey`]; `parent_epoch`
//! records which incarnation of the parent the keys were made for).
//!
//! # Failover
//!
//! [`super::failover::Failover`] calls [`RelayPlanner::sweep`]: a node whose forwarder is
//! not live is moved, like a placement, to a forwarder of the same region if one has room,
//! else the nearest, with one transaction comparing the node unchanged, the old forwarder
//! gone, the new one registered and its port free; the node's epoch is bumped and its link
//! re-keyed, then its children's links. Its viewers are told with one `FORWARDER_CHANGED`
//! event each, naming them (`participant: Some(..)`, audience scope, so only they and the
//! hosts see it). A `FORWARDER_CHANGED` with `participant: None` keeps its meaning: the
//! meeting's origin moved, which concerns those on the stage; viewers are never on the
//! origin, so a client in a webinar's audience acts only on events that name it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use rand::seq::SliceRandom as _;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use super::forwarders::{decode, encode, Cached, LiveForwarder, LiveForwarders, PrefixCache};
use super::keys::{self, EventScope};
use super::meetings::SrtpTransport;
use super::placement::{
    relocation_txn, system_clock, Clock, LatencyMatrix, PlacementConfig, PlacementRecord,
    StorePlacer,
};
use super::{Placement, PlacementHint, Placer, ServiceError};
use crate::domain::{ForwarderId, MeetingEvent, MeetingId, ParticipantId, UnixMillis};
use crate::store::{Compare, CompareOp, KeyValue, LeaseId, Op, Revision, Store, Txn};

/// Viewers one relay serves by default.
pub const DEFAULT_MAX_VIEWERS_PER_RELAY: u32 = 1000;
/// Transactions one assignment or release may try before [`ServiceError::Contention`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 400;
/// The SRTP profile of relay links (RFC 7714).
pub const RELAY_SRTP_PROFILE: &str = "AEAD_AES_128_GCM";
/// Record ops per transaction: etcd refuses more than 128 (`--max-txn-ops`).
const OPS_PER_TXN: usize = 100;

fn default_max_viewers() -> u32 {
    DEFAULT_MAX_VIEWERS_PER_RELAY
}

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

/// Tuning of the [`RelayPlanner`], loaded from TOML.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Viewers one relay serves at most.
    #[serde(default = "default_max_viewers")]
    pub max_viewers_per_relay: u32,
    /// Transactions one assignment or release may try.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_viewers_per_relay: DEFAULT_MAX_VIEWERS_PER_RELAY,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// A relay node's id within its webinar: `{region}-{index}`, the region reduced to the
/// characters a key segment may hold.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RelayId(String);

impl RelayId {
    fn new(region: &str, index: u32) -> Self {
        let region: String = region
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        RelayId(format!("{region}-{index}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RelayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a relay node receives the webinar from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RelayParent {
    /// The meeting's placement: this node is its region's ingress.
    Origin,
    /// The ingress of this node's region.
    Relay { relay: RelayId },
}

/// What `v1/relays/{meeting}/{relay}` holds (with `"version": 1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRecord {
    pub meeting: MeetingId,
    pub relay: RelayId,
    /// The region the node serves (its forwarder's, unless failover had to move it away).
    pub region: String,
    pub parent: RelayParent,
    pub forwarder: ForwarderId,
    /// `host:port` viewers send to and the parent's link reaches.
    pub address: String,
    /// Claimed at `v1/ports/{forwarder}/{port}`.
    pub port: u16,
    /// 1 when created, +1 per failover.
    pub epoch: u64,
    /// Relays fed by this one. (Viewers are not counted here: they are the node's seat
    /// keys, `v1/relay_seats/{meeting}/{relay}/`.)
    pub children: u32,
    /// Being removed: set by a release that found the node empty, before it counts the
    /// seats a last time. Joins skip a closing node, and the write makes any join that read
    /// the node before it fail its compare.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closing: bool,
    /// Keys of the link to the parent: `send_key` protects what this node sends up
    /// (feedback), `receive_key` what the parent sends down (the tracks).
    pub link: SrtpTransport,
    /// The parent's epoch (the origin placement's, or the parent relay's) the link keys
    /// were made for.
    pub parent_epoch: u64,
    pub created_at: UnixMillis,
    pub placed_at: UnixMillis,
}

impl RelayRecord {
    /// What a viewer assigned here is told.
    pub fn placement(&self) -> Placement {
        Placement {
            forwarder: self.forwarder.clone(),
            address: self.address.clone(),
            epoch: self.epoch,
        }
    }
}

/// What `v1/relay_viewers/{meeting}/{relay}/{participant}` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ViewerRecord {
    participant: ParticipantId,
    /// The seat the viewer holds (`v1/relay_seats/{meeting}/{relay}/{seat}`).
    #[serde(default)]
    seat: Option<u32>,
    assigned_at: UnixMillis,
}

/// What `v1/relay_seats/{meeting}/{relay}/{seat}` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SeatRecord {
    participant: ParticipantId,
}

/// What a relay's `v1/ports/{forwarder}/{port}` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RelayPortClaim {
    meeting: MeetingId,
    relay: RelayId,
}

/// The event shape `WatchMeeting` reads.
#[derive(Serialize)]
struct StoredEventRef<'a> {
    version: u32,
    event: &'a MeetingEvent,
}

/// One node of a [`RelayTree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayNode {
    pub relay: RelayId,
    pub forwarder: ForwarderId,
    pub region: String,
    pub parent: RelayParent,
    pub address: String,
    pub epoch: u64,
    pub viewers: u32,
    pub children: u32,
    /// Keys of the link to the parent (see [`RelayRecord::link`]).
    pub link: SrtpTransport,
}

/// Which way a link end carries the webinar's tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkDirection {
    /// This forwarder receives the tracks from the peer.
    Upstream,
    /// This forwarder sends the tracks to the peer.
    Downstream,
}

/// One end of a relay link, as the forwarder at that end should hold it (the
/// `RelayLink` message of control.proto).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLinkEnd {
    /// The child node the link feeds; with the meeting, the link's id.
    pub relay: RelayId,
    pub meeting: MeetingId,
    /// The forwarder holding this end.
    pub forwarder: ForwarderId,
    pub peer_forwarder: ForwarderId,
    pub peer_address: String,
    pub direction: LinkDirection,
    /// The plan on this end's forwarder the link belongs to: upstream, the child node
    /// (`{meeting}/{relay}`); downstream, what feeds it (the meeting itself at the origin,
    /// `{meeting}/{parent}` at a relay).
    pub local_plan: String,
    /// This end's keys: `send_key` protects what it sends, `receive_key` what it gets.
    pub srtp: SrtpTransport,
}

/// A webinar's relay tree, for the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayTree {
    pub meeting: MeetingId,
    /// The origin's placement, if the meeting is placed.
    pub origin: Option<Placement>,
    pub nodes: Vec<RelayNode>,
}

impl RelayTree {
    /// Both ends of every link: for each node, its upstream end (at the node, from its
    /// parent) and the parent's downstream end (towards the node). Links whose parent is
    /// unknown (an unplaced origin, a missing parent) are left out.
    pub fn links(&self) -> Vec<RelayLinkEnd> {
        let by_id: HashMap<&RelayId, &RelayNode> =
            self.nodes.iter().map(|n| (&n.relay, n)).collect();
        let mut out = Vec::new();
        for n in &self.nodes {
            let parent = match &n.parent {
                RelayParent::Origin => self
                    .origin
                    .as_ref()
                    .map(|o| (&o.forwarder, &o.address, self.meeting.to_string())),
                RelayParent::Relay { relay } => by_id.get(relay).map(|p| {
                    (
                        &p.forwarder,
                        &p.address,
                        format!("{}/{}", self.meeting, relay),
                    )
                }),
            };
            let Some((pf, pa, parent_plan)) = parent else {
                continue;
            };
            out.push(RelayLinkEnd {
                relay: n.relay.clone(),
                meeting: self.meeting.clone(),
                forwarder: n.forwarder.clone(),
                peer_forwarder: pf.clone(),
                peer_address: pa.clone(),
                direction: LinkDirection::Upstream,
                local_plan: format!("{}/{}", self.meeting, n.relay),
                srtp: n.link.clone(),
            });
            out.push(RelayLinkEnd {
                relay: n.relay.clone(),
                meeting: self.meeting.clone(),
                forwarder: pf.clone(),
                peer_forwarder: n.forwarder.clone(),
                peer_address: n.address.clone(),
                direction: LinkDirection::Downstream,
                local_plan: parent_plan,
                srtp: SrtpTransport {
                    profile: n.link.profile.clone(),
                    send_key: n.link.receive_key.clone(),
                    receive_key: n.link.send_key.clone(),
                },
            });
        }
        out
    }
}

/// Transactions tried and lost by a planner, for measurement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub txns: u64,
    pub conflicts: u64,
}

/// What one relay sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelaySweep {
    pub moved: usize,
    pub moved_elsewhere: usize,
    pub stuck: usize,
}

/// A node as read, with its record's revisions.
#[derive(Debug, Clone)]
struct Node {
    record: RelayRecord,
    mod_revision: Revision,
    create_revision: Revision,
}

/// What one join's earlier attempts found out.
#[derive(Debug, Default)]
struct Tried {
    /// Forwarders gone or re-registered.
    exclude: BTreeSet<ForwarderId>,
    /// Ports found claimed, per forwarder.
    taken: HashMap<ForwarderId, BTreeSet<u16>>,
    /// Seats found taken by others that this process's cache did not show yet.
    collided: BTreeSet<String>,
}

/// What to do for a join, decided on a read of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seat {
    /// Claim seat `seat` of node `node`.
    Take { node: usize, seat: u32 },
}

/// What to do for a join, decided on a read of the tree.
enum Step {
    Join(Seat),
    /// The region's ingress is being removed: wait for that to settle.
    Wait,
    Create {
        /// Boxed: a record is large next to an index.
        record: Box<RelayRecord>,
        registered: Revision,
        parent: Option<usize>,
    },
}

/// The relay planner on the store; see the module docs.
pub struct RelayPlanner {
    store: Arc<dyn Store>,
    placer: Arc<StorePlacer>,
    live: LiveForwarders,
    latency: LatencyMatrix,
    /// Every relay of every webinar: headroom and failover read it.
    relays: PrefixCache<RelayRecord>,
    config: RelayConfig,
    /// Every seat of every webinar's relays: joins pick free seats from it.
    seats: PrefixCache<()>,
    /// Seat keys this process's joins are claiming now: not offered to another join.
    claiming: std::sync::Mutex<std::collections::HashSet<String>>,
    /// One join per webinar in this process creates a node at a time: when a node fills
    /// up, every join in flight wants to create the next one, and all but one would lose.
    creators: std::sync::Mutex<HashMap<MeetingId, Arc<tokio::sync::Mutex<()>>>>,
    clock: Clock,
    txns: AtomicU64,
    conflicts: AtomicU64,
}

impl fmt::Debug for RelayPlanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayPlanner")
            .field("relays", &self.relays)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RelayPlanner {
    /// Read every relay and follow them. `placement` is the placer's configuration (for
    /// its latency matrix).
    pub async fn start(
        store: Arc<dyn Store>,
        placer: Arc<StorePlacer>,
        placement: &PlacementConfig,
        config: RelayConfig,
    ) -> Result<Self, ServiceError> {
        if config.max_viewers_per_relay == 0 {
            return Err(ServiceError::InvalidArgument(
                "max_viewers_per_relay is 0".to_owned(),
            ));
        }
        let relays = PrefixCache::start(
            Arc::clone(&store),
            keys::all_relays(),
            decode::<RelayRecord>,
        )
        .await?;
        // Only the keys matter: a seat's value is not read back.
        let seats =
            PrefixCache::start(Arc::clone(&store), keys::all_relay_seats(), |_| Ok(())).await?;
        Ok(Self {
            store,
            live: placer.live().clone(),
            placer,
            latency: LatencyMatrix::new(&placement.region_latency, placement.default_latency_ms),
            relays,
            seats,
            claiming: std::sync::Mutex::new(std::collections::HashSet::new()),
            creators: std::sync::Mutex::new(HashMap::new()),
            config,
            clock: system_clock(),
            txns: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
        })
    }

    /// Read the time from `clock` instead of the wall clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Transactions this planner ran and lost so far.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            txns: self.txns.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
        }
    }

    /// Take this process's creator slot for `meeting` (see [`RelayPlanner::creators`]).
    async fn creator(&self, meeting: &MeetingId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut creators = self
                .creators
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Forget webinars nobody is growing, so the map stays small.
            creators.retain(|_, l| Arc::strong_count(l) > 1);
            Arc::clone(creators.entry(meeting.clone()).or_default())
        };
        lock.lock_owned().await
    }

    fn claiming(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.claiming
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The seats of one node as cached (claimed, maybe not yet seen by the watch, aside).
    fn cached_seats(&self, meeting: &MeetingId, relay: &RelayId) -> Vec<u32> {
        let prefix = keys::relay_seats_of(meeting, relay.as_str());
        self.seats.read(|entries| {
            entries
                .range::<str, _>((
                    std::ops::Bound::Included(prefix.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                .filter_map(|(k, _)| k[prefix.len()..].parse().ok())
                .collect()
        })
    }

    /// A free seat of `node` by this process's view: not cached as taken, not being claimed
    /// here, not in `collided`; one at random, so joins from several processes seldom pick
    /// the same. Marked as being claimed.
    fn pick_seat(
        &self,
        meeting: &MeetingId,
        relay: &RelayId,
        collided: &BTreeSet<String>,
    ) -> Option<u32> {
        let max = self.config.max_viewers_per_relay as usize;
        let mut taken = vec![false; max];
        for s in self.cached_seats(meeting, relay) {
            if let Some(t) = taken.get_mut(s as usize) {
                *t = true;
            }
        }
        let prefix = keys::relay_seats_of(meeting, relay.as_str());
        let mut claiming = self.claiming();
        // Both sets are small (joins in flight, seats lost): no key made per free seat.
        for key in claiming.iter().chain(collided) {
            if let Some(s) = key
                .strip_prefix(prefix.as_str())
                .and_then(|s| s.parse::<usize>().ok())
            {
                if let Some(t) = taken.get_mut(s) {
                    *t = true;
                }
            }
        }
        let free: Vec<u32> = (0..self.config.max_viewers_per_relay)
            .filter(|&s| !taken[s as usize])
            .collect();
        let seat = *free.choose(&mut rand::thread_rng())?;
        claiming.insert(keys::relay_seat(meeting, relay.as_str(), seat));
        Some(seat)
    }

    /// Seats per node of every webinar, as cached.
    fn seat_counts(&self) -> HashMap<String, u32> {
        let root = keys::all_relay_seats();
        self.seats.read(|entries| {
            let mut out: HashMap<String, u32> = HashMap::new();
            for k in entries.keys() {
                // `{meeting}/{relay}/{seat}`: count under `{meeting}/{relay}`.
                let Some(rest) = k.strip_prefix(root.as_str()) else {
                    continue;
                };
                if let Some((node, _)) = rest.rsplit_once('/') {
                    *out.entry(node.to_owned()).or_default() += 1;
                }
            }
            out
        })
    }

    async fn txn(&self, txn: Txn) -> Result<crate::store::TxnResponse, ServiceError> {
        self.txns.fetch_add(1, Ordering::Relaxed);
        let resp = self.store.txn(txn).await?;
        if !resp.succeeded {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        Ok(resp)
    }

    async fn backoff(&self, attempt: u32) {
        // Up to 1, 2, 4 ... 32 ms: spreads the retries of joins that collided on a node.
        let cap = 1u64 << attempt.min(5);
        let ms = rand::thread_rng().gen_range(0..=cap);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// The webinar's nodes as stored now.
    async fn nodes(&self, meeting: &MeetingId) -> Result<Vec<Node>, ServiceError> {
        let (kvs, _) = self.store.range(&keys::relays(meeting)).await?;
        kvs.iter()
            .map(|kv| {
                Ok(Node {
                    record: decode(kv)?,
                    mod_revision: kv.mod_revision,
                    create_revision: kv.create_revision,
                })
            })
            .collect()
    }

    /// The webinar's nodes as cached (maybe behind the store by the watch's delay).
    fn cached_nodes(&self, meeting: &MeetingId) -> Vec<Node> {
        let prefix = keys::relays(meeting);
        self.relays.read(|entries| {
            entries
                .range::<str, _>((
                    std::ops::Bound::Included(prefix.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                .map(|(_, c)| Node {
                    record: c.value.clone(),
                    mod_revision: c.mod_revision,
                    create_revision: c.create_revision,
                })
                .collect()
        })
    }

    /// The node `participant` is assigned to, if any: one transaction of gets.
    async fn find_viewer(
        &self,
        meeting: &MeetingId,
        nodes: &[Node],
        participant: &ParticipantId,
    ) -> Result<Option<(usize, KeyValue)>, ServiceError> {
        for (chunk_no, chunk) in nodes.chunks(OPS_PER_TXN).enumerate() {
            let gets: Vec<Op> = chunk
                .iter()
                .map(|n| {
                    Op::get(keys::relay_viewer(
                        meeting,
                        n.record.relay.as_str(),
                        participant,
                    ))
                })
                .collect();
            let resp = self.store.txn(Txn::new().and_then(gets)).await?;
            if let Some((i, Some(kv))) =
                resp.gets.into_iter().enumerate().find(|(_, g)| g.is_some())
            {
                return Ok(Some((chunk_no * OPS_PER_TXN + i, kv)));
            }
        }
        Ok(None)
    }

    /// The origin: the meeting's placement, placed now (near `region`) if it has none.
    async fn origin(
        &self,
        meeting: &MeetingId,
        region: Option<&str>,
    ) -> Result<PlacementRecord, ServiceError> {
        if let Some(r) = self.placer.record(meeting).await? {
            return Ok(r);
        }
        let hint = PlacementHint {
            region: region.map(str::to_owned),
            expected_participants: 1,
            window: None,
        };
        self.placer.place(meeting, &hint).await?;
        self.placer
            .record(meeting)
            .await?
            .ok_or_else(|| ServiceError::Contention(keys::placement(meeting)))
    }

    /// Assign a viewer of `meeting` in `region` (`None`: the origin's) to a relay node,
    /// creating one if needed; see the module docs. Idempotent: a viewer already assigned
    /// gets its node's placement.
    pub async fn assign_viewer(
        &self,
        meeting: &MeetingId,
        participant: &ParticipantId,
        region: Option<&str>,
    ) -> Result<Placement, ServiceError> {
        let origin = self.origin(meeting, region).await?;
        let region = region.unwrap_or(&origin.region).to_owned();
        let mut tried = Tried::default();
        let viewer_value = |key: &str, seat: u32| {
            encode(
                key,
                &ViewerRecord {
                    participant: participant.clone(),
                    seat: Some(seat),
                    assigned_at: (self.clock)(),
                },
            )
        };
        let seat_value = |key: &str| {
            encode(
                key,
                &SeatRecord {
                    participant: participant.clone(),
                },
            )
        };
        // The cache first (no read per join); the store after a compare failed on a node.
        let mut fresh = false;
        let mut creator = None;
        let nodes = self.cached_nodes(meeting);
        if let Some((i, _)) = self.find_viewer(meeting, &nodes, participant).await? {
            return Ok(nodes[i].record.placement());
        }
        for attempt in 0..self.config.max_attempts.max(1) {
            let nodes = if fresh {
                self.nodes(meeting).await?
            } else {
                self.cached_nodes(meeting)
            };
            fresh = false;
            let step = self
                .plan_join(meeting, &region, &origin, &nodes, &tried)
                .await?;
            match step {
                Step::Join(Seat::Take { node: i, seat }) => {
                    creator = None;
                    let node = &nodes[i];
                    let relay = node.record.relay.as_str();
                    let key = keys::relay(meeting, relay);
                    let skey = keys::relay_seat(meeting, relay, seat);
                    let vkey = keys::relay_viewer(meeting, relay, participant);
                    // The node unchanged: not closing, removed or moved since it was read.
                    // Unmarked however this ends, a cancelled join included.
                    let _claim = Claim {
                        planner: self,
                        key: skey.clone(),
                    };
                    let txn = Txn::new()
                        .when([
                            Compare::mod_revision(key.clone(), CompareOp::Equal, node.mod_revision),
                            Compare::absent(skey.clone()),
                            Compare::absent(vkey.clone()),
                        ])
                        .and_then([
                            Op::put(skey.clone(), seat_value(&skey)?),
                            Op::put(vkey.clone(), viewer_value(&vkey, seat)?),
                        ])
                        .or_else([Op::get(key), Op::get(skey.clone()), Op::get(vkey)]);
                    let resp = self.txn(txn).await?;
                    if resp.succeeded {
                        // Noted before the claim goes, so no join here offers it again.
                        self.seats
                            .note_put(skey.clone(), (), resp.revision, resp.revision);
                        return Ok(node.record.placement());
                    }
                    if got(&resp, 2).is_some() {
                        // Assigned here by a concurrent call for the same viewer.
                        return Ok(node.record.placement());
                    }
                    if got(&resp, 0).is_some_and(|kv| kv.mod_revision == node.mod_revision) {
                        // Only the seat was taken, by a join this cache has not seen yet:
                        // try another at once.
                        tried.collided.insert(skey);
                        continue;
                    }
                    fresh = true;
                }
                Step::Wait => fresh = true,
                Step::Create { .. } if creator.is_none() => {
                    // One creation at a time per webinar in this process: the others wait,
                    // then most find the new node on their re-read and join it.
                    // The cache has what a creator in this process wrote (noted at once); a
                    // node created elsewhere shows when creating it fails.
                    creator = Some(self.creator(meeting).await);
                    continue;
                }
                Step::Create {
                    record,
                    registered,
                    parent,
                } => {
                    let key = keys::relay(meeting, record.relay.as_str());
                    let fwd_key = keys::forwarder(&record.forwarder);
                    let port_key = keys::port(&record.forwarder, record.port);
                    let skey = keys::relay_seat(meeting, record.relay.as_str(), 0);
                    let vkey = keys::relay_viewer(meeting, record.relay.as_str(), participant);
                    let claim = RelayPortClaim {
                        meeting: meeting.clone(),
                        relay: record.relay.clone(),
                    };
                    let mut compares = vec![
                        Compare::absent(key.clone()),
                        Compare::create_revision(fwd_key.clone(), CompareOp::Equal, registered),
                        Compare::absent(port_key.clone()),
                    ];
                    let mut ops = vec![
                        Op::put(key.clone(), encode(&key, &record)?),
                        Op::put(port_key.clone(), encode(&port_key, &claim)?),
                        Op::put(skey.clone(), seat_value(&skey)?),
                        Op::put(vkey.clone(), viewer_value(&vkey, 0)?),
                    ];
                    if let Some(p) = parent {
                        let parent = &nodes[p];
                        let pkey = keys::relay(meeting, parent.record.relay.as_str());
                        let mut up = parent.record.clone();
                        up.children += 1;
                        compares.push(Compare::mod_revision(
                            pkey.clone(),
                            CompareOp::Equal,
                            parent.mod_revision,
                        ));
                        ops.push(Op::put(pkey.clone(), encode(&pkey, &up)?));
                    }
                    let txn = Txn::new().when(compares).and_then(ops).or_else([
                        Op::get(key.clone()),
                        Op::get(fwd_key),
                        Op::get(port_key),
                    ]);
                    let resp = self.txn(txn).await?;
                    if resp.succeeded {
                        tracing::info!(%meeting, relay = %record.relay, forwarder = %record.forwarder,
                            address = %record.address, "relay created");
                        // The next joins here see the node and its first seat at once.
                        self.seats.note_put(skey, (), resp.revision, resp.revision);
                        let placement = record.placement();
                        self.relays
                            .note_put(key, *record, resp.revision, resp.revision);
                        return Ok(placement);
                    }
                    fresh = true;
                    if got(&resp, 0).is_none() {
                        if got(&resp, 1).is_none_or(|kv| kv.create_revision != registered) {
                            tried.exclude.insert(record.forwarder.clone());
                            continue;
                        }
                        if got(&resp, 2).is_some() {
                            tried
                                .taken
                                .entry(record.forwarder.clone())
                                .or_default()
                                .insert(record.port);
                            continue;
                        }
                    }
                    if got(&resp, 0).is_some() {
                        // Someone created this node first: join it, no need to wait.
                        continue;
                    }
                    // The parent changed: re-read.
                }
            }
            self.backoff(attempt).await;
        }
        Err(ServiceError::Contention(keys::relays(meeting)))
    }

    /// Decide a join on one read of the tree (see the module docs).
    async fn plan_join(
        &self,
        meeting: &MeetingId,
        region: &str,
        origin: &PlacementRecord,
        nodes: &[Node],
        tried: &Tried,
    ) -> Result<Step, ServiceError> {
        let Tried {
            exclude,
            taken,
            collided,
        } = tried;
        let live = self.live.snapshot();
        let max = self.config.max_viewers_per_relay;
        let mut regions: BTreeSet<&str> = live.values().map(|f| f.info.region.as_str()).collect();
        regions.extend(nodes.iter().map(|n| n.record.region.as_str()));
        let mut order: Vec<(u32, &str)> = regions
            .into_iter()
            .map(|r| (self.latency.latency(region, r), r))
            .collect();
        order.sort();
        for (_, r) in order {
            // Nodes on a live forwarder first (a viewer sent to a dead one would be moved
            // again at once), then the newest first: during a burst it is the one with
            // room, so a join looks at one node's seats, not every full one's.
            let mut open: Vec<usize> = (0..nodes.len())
                .filter(|&i| nodes[i].record.region == r && !nodes[i].record.closing)
                .collect();
            open.sort_by_key(|&i| {
                (
                    !live.contains_key(&nodes[i].record.forwarder),
                    Reverse(nodes[i].create_revision),
                )
            });
            for i in open {
                if let Some(seat) = self.pick_seat(meeting, &nodes[i].record.relay, collided) {
                    return Ok(Step::Join(Seat::Take { node: i, seat }));
                }
            }
            let ingress = nodes
                .iter()
                .position(|n| n.record.region == r && n.record.parent == RelayParent::Origin);
            if ingress.is_some_and(|i| nodes[i].record.closing) {
                return Ok(Step::Wait);
            }
            let need = max.saturating_add(1);
            let candidates =
                self.candidates(&live, r, Some(r), need, exclude, Some(&origin.forwarder));
            for f in candidates {
                let none = BTreeSet::new();
                let Some(port) = self
                    .free_port(&f, taken.get(&f.info.id).unwrap_or(&none))
                    .await?
                else {
                    continue;
                };
                let (parent, parent_epoch) = match ingress {
                    Some(i) => (
                        RelayParent::Relay {
                            relay: nodes[i].record.relay.clone(),
                        },
                        nodes[i].record.epoch,
                    ),
                    None => (RelayParent::Origin, origin.epoch),
                };
                let ids: BTreeSet<&RelayId> = nodes.iter().map(|n| &n.record.relay).collect();
                let relay = (0..)
                    .map(|i| RelayId::new(r, i))
                    .find(|id| !ids.contains(id))
                    .unwrap_or_else(|| RelayId::new(r, u32::MAX));
                let now = (self.clock)();
                let record = RelayRecord {
                    meeting: meeting.clone(),
                    relay,
                    region: r.to_owned(),
                    parent,
                    forwarder: f.info.id.clone(),
                    address: f.info.address(port),
                    port,
                    epoch: 1,
                    children: 0,
                    closing: false,
                    link: SrtpTransport::generate(RELAY_SRTP_PROFILE)?,
                    parent_epoch,
                    created_at: now,
                    placed_at: now,
                };
                return Ok(Step::Create {
                    record: Box::new(record),
                    registered: f.registered,
                    parent: ingress,
                });
            }
        }
        Err(ServiceError::NoCapacity(format!(
            "no relay of webinar {meeting} has room and no live forwarder can run a new one \
             for {need} viewers",
            need = max
        )))
    }

    /// Live forwarders able to run a relay needing `need` legs: in `only` region if given,
    /// nearest to `from` first, then `avoid` (the origin's forwarder) last, then by
    /// headroom, then id.
    fn candidates(
        &self,
        live: &BTreeMap<ForwarderId, LiveForwarder>,
        from: &str,
        only: Option<&str>,
        need: u32,
        exclude: &BTreeSet<ForwarderId>,
        avoid: Option<&ForwarderId>,
    ) -> Vec<LiveForwarder> {
        let reserve = i64::from(self.config.max_viewers_per_relay) + 1;
        let seats = self.seat_counts();
        let reserved: HashMap<ForwarderId, i64> = self.relays.read(|entries| {
            let mut out: HashMap<ForwarderId, i64> = HashMap::new();
            for c in entries.values() {
                let node = format!("{}/{}", c.value.meeting, c.value.relay);
                let viewers = seats.get(&node).copied().unwrap_or(0);
                let empty = reserve - i64::from(viewers) - i64::from(c.value.children);
                *out.entry(c.value.forwarder.clone()).or_default() += empty.max(0);
            }
            out
        });
        let mut list: Vec<(u32, bool, Reverse<i64>, ForwarderId)> = Vec::new();
        for (id, f) in live {
            if exclude.contains(id) || only.is_some_and(|r| r != f.info.region) {
                continue;
            }
            let legs = f.load.as_ref().map_or(0, |l| i64::from(l.legs));
            let headroom =
                i64::from(f.info.capacity.max_legs) - legs - reserved.get(id).copied().unwrap_or(0);
            if headroom < i64::from(need) {
                continue;
            }
            let latency = self.latency.latency(from, &f.info.region);
            list.push((latency, avoid == Some(id), Reverse(headroom), id.clone()));
        }
        list.sort();
        list.into_iter()
            .filter_map(|(_, _, _, id)| live.get(&id).cloned())
            .collect()
    }

    /// The highest port of `f`'s range no claim holds and not in `taken`.
    async fn free_port(
        &self,
        f: &LiveForwarder,
        taken: &BTreeSet<u16>,
    ) -> Result<Option<u16>, ServiceError> {
        let prefix = keys::ports(&f.info.id);
        let (kvs, _) = self.store.range(&prefix).await?;
        let used: BTreeSet<u16> = kvs
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(prefix.as_str())?.parse().ok())
            .collect();
        let (lo, hi) = f.info.port_range;
        Ok((lo..=hi)
            .rev()
            .find(|p| !used.contains(p) && !taken.contains(p)))
    }

    /// Drop a viewer's assignment; see the module docs. `false` if it had none.
    pub async fn release_viewer(
        &self,
        meeting: &MeetingId,
        participant: &ParticipantId,
    ) -> Result<bool, ServiceError> {
        for attempt in 0..self.config.max_attempts.max(1) {
            let nodes = self.nodes(meeting).await?;
            if nodes.is_empty() {
                return Ok(false);
            }
            let Some((i, kv)) = self.find_viewer(meeting, &nodes, participant).await? else {
                return Ok(false);
            };
            let relay = &nodes[i].record.relay;
            let viewer: ViewerRecord = decode(&kv)?;
            let mut ops = vec![Op::delete(kv.key.clone())];
            if let Some(seat) = viewer.seat {
                ops.push(Op::delete(keys::relay_seat(meeting, relay.as_str(), seat)));
            }
            // Only the assignment is compared: a release never waits for joins.
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    kv.key.clone(),
                    CompareOp::Equal,
                    kv.mod_revision,
                )])
                .and_then(ops);
            if self.txn(txn).await?.succeeded {
                self.remove_if_empty(meeting, relay).await?;
                return Ok(true);
            }
            self.backoff(attempt).await;
        }
        Err(ServiceError::Contention(keys::relays(meeting)))
    }

    /// Remove `relay` if it has no seats and no children, then its parent if that left it
    /// empty in turn. A removal first marks the node `closing` (so joins skip it, and any
    /// join that read it before fails its compare), then counts its seats: a join that
    /// committed before the mark is counted, none can commit after it. Seats found: the
    /// mark is lifted. No seats: the node goes with its port claim, counted out of its
    /// parent, comparing the marked record unchanged.
    async fn remove_if_empty(
        &self,
        meeting: &MeetingId,
        relay: &RelayId,
    ) -> Result<(), ServiceError> {
        let mut relay = relay.clone();
        let mut attempt = 0;
        while attempt < self.config.max_attempts.max(1) {
            attempt += 1;
            let key = keys::relay(meeting, relay.as_str());
            let Some(kv) = self.store.get(&key).await? else {
                return Ok(());
            };
            let mut record: RelayRecord = decode(&kv)?;
            if record.children > 0 {
                return Ok(());
            }
            let seats = keys::relay_seats_of(meeting, relay.as_str());
            let mut revision = kv.mod_revision;
            if !record.closing {
                // Cheap check first: most releases leave viewers behind.
                if self.store.count(&seats).await?.0 > 0 {
                    return Ok(());
                }
                record.closing = true;
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        revision,
                    )])
                    .and_then([Op::put(key.clone(), encode(&key, &record)?)]);
                let resp = self.txn(txn).await?;
                if !resp.succeeded {
                    self.backoff(attempt).await;
                    continue;
                }
                revision = resp.revision;
            }
            if self.store.count(&seats).await?.0 > 0 {
                record.closing = false;
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        revision,
                    )])
                    .and_then([Op::put(key.clone(), encode(&key, &record)?)]);
                // Lost: someone else changed the node, and decides in turn.
                self.txn(txn).await?;
                return Ok(());
            }
            let mut compares = vec![Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )];
            let mut ops = vec![
                Op::delete(key.clone()),
                Op::delete(keys::port(&record.forwarder, record.port)),
            ];
            let mut parent = None;
            if let RelayParent::Relay { relay: p } = &record.parent {
                let pkey = keys::relay(meeting, p.as_str());
                // A missing parent (a corrupt tree) has nothing to count out.
                if let Some(pkv) = self.store.get(&pkey).await? {
                    let mut up: RelayRecord = decode(&pkv)?;
                    up.children = up.children.saturating_sub(1);
                    compares.push(Compare::mod_revision(
                        pkey.clone(),
                        CompareOp::Equal,
                        pkv.mod_revision,
                    ));
                    ops.push(Op::put(pkey.clone(), encode(&pkey, &up)?));
                    parent = (up.children == 0).then(|| p.clone());
                }
            }
            if !self
                .txn(Txn::new().when(compares).and_then(ops))
                .await?
                .succeeded
            {
                self.backoff(attempt).await;
                continue;
            }
            tracing::info!(%meeting, %relay, "relay removed: no viewers, no children");
            match parent {
                Some(p) => relay = p,
                None => return Ok(()),
            }
        }
        Err(ServiceError::Contention(keys::relays(meeting)))
    }

    /// Remove every relay of a meeting, their port claims and assignments (the meeting
    /// ended). Each removal compares the node unchanged, so a port is freed only while it
    /// is still this node's.
    pub async fn end_meeting(&self, meeting: &MeetingId) -> Result<(), ServiceError> {
        for attempt in 0..self.config.max_attempts.max(1) {
            let nodes = self.nodes(meeting).await?;
            let mut clean = true;
            for chunk in nodes.chunks(OPS_PER_TXN / 2) {
                let mut compares = Vec::new();
                let mut ops = Vec::new();
                for n in chunk {
                    let key = keys::relay(meeting, n.record.relay.as_str());
                    compares.push(Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        n.mod_revision,
                    ));
                    ops.push(Op::delete(key));
                    ops.push(Op::delete(keys::port(&n.record.forwarder, n.record.port)));
                }
                clean &= self
                    .txn(Txn::new().when(compares).and_then(ops))
                    .await?
                    .succeeded;
            }
            if clean {
                self.store
                    .txn(Txn::new().and_then([
                        Op::delete_prefix(keys::relay_viewers(meeting)),
                        Op::delete_prefix(keys::relay_seats(meeting)),
                    ]))
                    .await?;
                return Ok(());
            }
            self.backoff(attempt).await;
        }
        Err(ServiceError::Contention(keys::relays(meeting)))
    }

    /// The webinar's relay tree as stored now.
    pub async fn tree(&self, meeting: &MeetingId) -> Result<RelayTree, ServiceError> {
        let nodes = self.nodes(meeting).await?;
        let origin = self.placer.record(meeting).await?.map(|r| r.placement());
        let counts = futures::future::try_join_all(nodes.iter().map(|n| async move {
            let prefix = keys::relay_viewers_of(meeting, n.record.relay.as_str());
            self.store.count(&prefix).await
        }))
        .await?;
        Ok(RelayTree {
            meeting: meeting.clone(),
            origin,
            nodes: nodes
                .into_iter()
                .zip(counts)
                .map(|(n, (viewers, _))| {
                    let r = n.record;
                    RelayNode {
                        relay: r.relay,
                        forwarder: r.forwarder,
                        region: r.region,
                        parent: r.parent,
                        address: r.address,
                        epoch: r.epoch,
                        viewers: u32::try_from(viewers).unwrap_or(u32::MAX),
                        children: r.children,
                        link: r.link,
                    }
                })
                .collect(),
        })
    }

    /// The viewers assigned to one node.
    pub async fn viewers_of(
        &self,
        meeting: &MeetingId,
        relay: &RelayId,
    ) -> Result<Vec<ParticipantId>, ServiceError> {
        let (kvs, _) = self
            .store
            .range(&keys::relay_viewers_of(meeting, relay.as_str()))
            .await?;
        kvs.iter()
            .map(|kv| Ok(decode::<ViewerRecord>(kv)?.participant))
            .collect()
    }

    /// Give new keys to every link of the webinar whose parent moved since its keys were
    /// made (its epoch is not the link's `parent_epoch`). Failover calls it after moving
    /// the origin or a relay. Returns the links re-keyed.
    pub async fn rekey(&self, meeting: &MeetingId) -> Result<usize, ServiceError> {
        let mut done = 0;
        for attempt in 0..self.config.max_attempts.max(1) {
            let nodes = self.nodes(meeting).await?;
            let origin_epoch = self.placer.record(meeting).await?.map(|r| r.epoch);
            let epochs: HashMap<&RelayId, u64> = nodes
                .iter()
                .map(|n| (&n.record.relay, n.record.epoch))
                .collect();
            let mut stale = false;
            for n in &nodes {
                let current = match &n.record.parent {
                    RelayParent::Origin => origin_epoch,
                    RelayParent::Relay { relay } => epochs.get(relay).copied(),
                };
                let Some(current) = current else { continue };
                if current == n.record.parent_epoch {
                    continue;
                }
                let mut record = n.record.clone();
                record.parent_epoch = current;
                record.link = SrtpTransport::generate(RELAY_SRTP_PROFILE)?;
                let key = keys::relay(meeting, record.relay.as_str());
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        n.mod_revision,
                    )])
                    .and_then([Op::put(key.clone(), encode(&key, &record)?)]);
                if self.txn(txn).await?.succeeded {
                    done += 1;
                } else {
                    stale = true;
                }
            }
            if !stale {
                return Ok(done);
            }
            self.backoff(attempt).await;
        }
        Err(ServiceError::Contention(keys::relays(meeting)))
    }

    /// Relays whose forwarder is not in the live set (as cached): failover's work.
    fn orphans(&self) -> Vec<Cached<RelayRecord>> {
        let live = self.live.snapshot();
        self.relays.read(|entries| {
            entries
                .values()
                .filter(|c| !live.contains_key(&c.value.forwarder))
                .cloned()
                .collect()
        })
    }

    /// Move every relay whose forwarder died (see the module docs), `concurrency` at a
    /// time; events go on `event_lease`.
    pub async fn sweep(&self, event_lease: LeaseId, concurrency: usize) -> RelaySweep {
        let mut orphans = self.orphans();
        let mut report = RelaySweep::default();
        if orphans.is_empty() {
            return report;
        }
        orphans.shuffle(&mut rand::thread_rng());
        let results: Vec<_> = futures::stream::iter(orphans)
            .map(|current| async move {
                let result = self.move_off(&current, event_lease).await;
                (current, result)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        for (current, result) in results {
            let old = &current.value;
            match result {
                Ok(Some(new)) => {
                    tracing::info!(meeting = %old.meeting, relay = %old.relay, from = %old.forwarder,
                        to = %new.forwarder, address = %new.address, "failover: relay moved");
                    report.moved += 1;
                }
                Ok(None) => report.moved_elsewhere += 1,
                Err(e) => {
                    tracing::warn!(meeting = %old.meeting, relay = %old.relay, from = %old.forwarder,
                        error = %e, "failover: cannot move relay");
                    report.stuck += 1;
                }
            }
        }
        report
    }

    /// Failover of one node: `Some(new record)` if this call moved it, `None` if it was
    /// moved or removed by someone else, or its forwarder is registered after all.
    async fn move_off(
        &self,
        current: &Cached<RelayRecord>,
        event_lease: LeaseId,
    ) -> Result<Option<RelayRecord>, ServiceError> {
        let old = &current.value;
        let meeting = &old.meeting;
        let key = keys::relay(meeting, old.relay.as_str());
        let (viewers, _) = self
            .store
            .count(&keys::relay_seats_of(meeting, old.relay.as_str()))
            .await?;
        let need = u32::try_from(viewers)
            .unwrap_or(u32::MAX)
            .saturating_add(old.children)
            .saturating_add(1);
        let mut exclude = BTreeSet::from([old.forwarder.clone()]);
        let mut taken: HashMap<ForwarderId, BTreeSet<u16>> = HashMap::new();
        let origin = self.placer.record(meeting).await?;
        let avoid = origin.as_ref().map(|o| &o.forwarder);
        let parent_epoch = match &old.parent {
            RelayParent::Origin => origin.as_ref().map(|r| r.epoch),
            RelayParent::Relay { relay } => self
                .store
                .get(&keys::relay(meeting, relay.as_str()))
                .await?
                .map(|kv| decode::<RelayRecord>(&kv).map(|r| r.epoch))
                .transpose()?,
        }
        .unwrap_or(old.parent_epoch);
        for _ in 0..self.config.max_attempts.max(1) {
            let live = self.live.snapshot();
            // The same region first (latency 0), then the nearest.
            let mut chosen = None;
            for f in self.candidates(&live, &old.region, None, need, &exclude, avoid) {
                let none = BTreeSet::new();
                if let Some(port) = self
                    .free_port(&f, taken.get(&f.info.id).unwrap_or(&none))
                    .await?
                {
                    chosen = Some((f, port));
                    break;
                }
            }
            let Some((f, port)) = chosen else {
                return Err(ServiceError::NoCapacity(format!(
                    "no live forwarder can take relay {} of {meeting}",
                    old.relay
                )));
            };
            let now = (self.clock)();
            let record = RelayRecord {
                forwarder: f.info.id.clone(),
                address: f.info.address(port),
                port,
                epoch: old.epoch + 1,
                link: SrtpTransport::generate(RELAY_SRTP_PROFILE)?,
                parent_epoch,
                placed_at: now,
                ..old.clone()
            };
            let port_key = keys::port(&f.info.id, port);
            let claim = RelayPortClaim {
                meeting: meeting.clone(),
                relay: old.relay.clone(),
            };
            let txn = relocation_txn(
                &key,
                current.mod_revision,
                (&old.forwarder, old.port),
                (&f.info.id, f.registered, port),
                (encode(&key, &record)?, encode(&port_key, &claim)?),
                Vec::new(),
            );
            let resp = self.txn(txn).await?;
            if resp.succeeded {
                self.relays
                    .note_put(key, record.clone(), resp.revision, current.create_revision);
                // The node's children now hear from a new process: new keys for their links.
                self.rekey(meeting).await?;
                self.tell_viewers(&record, event_lease).await?;
                return Ok(Some(record));
            }
            if got(&resp, 0).is_none_or(|kv| kv.mod_revision != current.mod_revision) {
                return Ok(None);
            }
            if got(&resp, 1).is_some() {
                return Ok(None);
            }
            if got(&resp, 2).is_none_or(|kv| kv.create_revision != f.registered) {
                exclude.insert(f.info.id.clone());
            } else if got(&resp, 3).is_some() {
                taken.entry(f.info.id.clone()).or_default().insert(port);
            }
        }
        Err(ServiceError::Contention(key))
    }

    /// One `FORWARDER_CHANGED` naming each viewer of a moved node, in the audience scope
    /// (only they and the hosts see them), in transactions of at most [`OPS_PER_TXN`] puts.
    /// Written after the move: a process dying in between leaves viewers to find out by
    /// their media stopping and rejoining.
    async fn tell_viewers(
        &self,
        record: &RelayRecord,
        event_lease: LeaseId,
    ) -> Result<(), ServiceError> {
        let viewers = self.viewers_of(&record.meeting, &record.relay).await?;
        for chunk in viewers.chunks(OPS_PER_TXN) {
            let mut ops = Vec::with_capacity(chunk.len());
            for p in chunk {
                let event = MeetingEvent::ForwarderChanged {
                    participant: Some(p.clone()),
                    forwarder: record.forwarder.clone(),
                    address: record.address.clone(),
                };
                let key = keys::event(&record.meeting, EventScope::Audience, &event_id());
                let value = serde_json::to_vec(&StoredEventRef {
                    version: super::forwarders::RECORD_VERSION,
                    event: &event,
                })
                .map_err(|e| ServiceError::Corrupt {
                    key: key.clone(),
                    reason: format!("cannot encode: {e}"),
                })?;
                ops.push(Op::put_with_lease(key, value, event_lease));
            }
            self.store.txn(Txn::new().and_then(ops)).await?;
        }
        Ok(())
    }
}

/// A seat marked as being claimed by a join of this process ([`RelayPlanner::pick_seat`]),
/// unmarked when the join's attempt ends.
struct Claim<'a> {
    planner: &'a RelayPlanner,
    key: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.planner.claiming().remove(&self.key);
    }
}

/// A viewer's assignment made for a join still in progress: released (in a spawned task)
/// when dropped, unless [`ViewerSeat::keep`] says the join went through. So a join that
/// fails after the assignment, by an error or a panic, does not leave a seat taken.
#[derive(Debug)]
pub struct ViewerSeat {
    planner: Arc<RelayPlanner>,
    meeting: MeetingId,
    participant: ParticipantId,
    placement: Placement,
    armed: bool,
}

impl ViewerSeat {
    /// [`RelayPlanner::assign_viewer`], released on drop.
    pub async fn assign(
        planner: &Arc<RelayPlanner>,
        meeting: &MeetingId,
        participant: &ParticipantId,
        region: Option<&str>,
    ) -> Result<Self, ServiceError> {
        let placement = planner.assign_viewer(meeting, participant, region).await?;
        Ok(Self {
            planner: Arc::clone(planner),
            meeting: meeting.clone(),
            participant: participant.clone(),
            placement,
            armed: true,
        })
    }

    /// The relay node's placement.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The join succeeded: keep the assignment.
    pub fn keep(mut self) -> Placement {
        self.armed = false;
        self.placement.clone()
    }
}

impl Drop for ViewerSeat {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(meeting = %self.meeting, participant = %self.participant,
                "relay seat of a failed join not released: no runtime");
            return;
        };
        let planner = Arc::clone(&self.planner);
        let meeting = self.meeting.clone();
        let participant = self.participant.clone();
        runtime.spawn(async move {
            if let Err(e) = planner.release_viewer(&meeting, &participant).await {
                tracing::warn!(%meeting, %participant, error = %e,
                    "relay seat of a failed join not released");
            }
        });
    }
}

/// The `i`th `Get` of the branch that ran.
fn got(resp: &crate::store::TxnResponse, i: usize) -> Option<&KeyValue> {
    resp.gets.get(i).and_then(Option::as_ref)
}

/// A fresh event id: 128 random bits in hex (the key's revision orders events).
fn event_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MeetingKind, MeetingSpec, PasscodeCost, TokenKey};
    use crate::service::desired::{
        DesiredChange, DesiredMeeting, DesiredState, DesiredStates, DesiredUpdate,
    };
    use crate::service::failover::{Failover, FailoverConfig};
    use crate::service::forwarders::{
        Capacity, ForwarderInfo, ForwarderRegistry, Load, RegistryConfig, Session,
    };
    use crate::service::meetings::{Caller, JoinInput, MeetingService, MeetingsConfig};
    use crate::service::placement::RegionLatency;
    use crate::store::MemoryStore;
    use tokio::time::Instant;

    fn fwd(id: &str, region: &str, max_legs: u32) -> ForwarderInfo {
        ForwarderInfo {
            id: ForwarderId::new(id).unwrap(),
            region: region.to_owned(),
            public_ip: "198.51.100.7".to_owned(),
            port_range: (6000, 6099),
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

    fn webinar_spec() -> MeetingSpec {
        MeetingSpec {
            kind: MeetingKind::Webinar,
            title: "Launch".into(),
            schedule: None,
            passcode: None,
            host_key: None,
            waiting_room: false,
            limits: None,
        }
    }

    fn pid(i: usize) -> ParticipantId {
        ParticipantId::new(format!("v{i}")).unwrap()
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

    struct Fixture {
        store: MemoryStore,
        reg: ForwarderRegistry,
        placer: Arc<StorePlacer>,
        relays: Arc<RelayPlanner>,
    }

    impl Fixture {
        /// `ttl_ms`: forwarder leases (tests without failover use a long one).
        async fn new(ttl_ms: u64, max_viewers: u32, latency: Vec<RegionLatency>) -> Self {
            let store = MemoryStore::new();
            let s: Arc<dyn Store> = Arc::new(store.clone());
            let reg = ForwarderRegistry::new(
                Arc::clone(&s),
                RegistryConfig {
                    lease_ttl_ms: ttl_ms,
                },
            );
            let live = LiveForwarders::start(Arc::clone(&s)).await.unwrap();
            let pconfig = PlacementConfig {
                region_latency: latency,
                ..PlacementConfig::default()
            };
            let placer = Arc::new(
                StorePlacer::start(Arc::clone(&s), live, pconfig.clone())
                    .await
                    .unwrap(),
            );
            let relays = RelayPlanner::start(
                s,
                Arc::clone(&placer),
                &pconfig,
                RelayConfig {
                    max_viewers_per_relay: max_viewers,
                    ..RelayConfig::default()
                },
            )
            .await
            .unwrap();
            Self {
                store,
                reg,
                placer,
                relays: Arc::new(relays),
            }
        }

        /// The meeting service over this fixture's store, placer and relays.
        fn meeting_service(&self) -> MeetingService {
            MeetingService::new(
                Arc::new(self.store.clone()),
                TokenKey::generate().unwrap(),
                Arc::clone(&self.placer) as Arc<dyn Placer>,
                MeetingsConfig {
                    passcode_cost: PasscodeCost::INSECURE_FOR_TESTS,
                    ..MeetingsConfig::default()
                },
            )
            .with_relays(Arc::clone(&self.relays))
        }

        async fn register(&self, info: ForwarderInfo) -> Session {
            let id = info.id.clone();
            let s = self.reg.register(info).await.unwrap();
            eventually("registration", || self.placer.live().contains(&id)).await;
            s
        }

        async fn origin(&self, m: &MeetingId, region: &str) -> Placement {
            let hint = PlacementHint {
                region: Some(region.to_owned()),
                expected_participants: 10,
                window: None,
            };
            self.placer.place(m, &hint).await.unwrap()
        }

        /// The tree, checked against the assignment keys: every node's `viewers` is its
        /// keys' count, `children` the nodes naming it, and at most the configured max.
        async fn checked_tree(&self, m: &MeetingId) -> RelayTree {
            let tree = self.relays.tree(m).await.unwrap();
            let max = self.relays.config().max_viewers_per_relay;
            for n in &tree.nodes {
                let (count, _) = self
                    .store
                    .count(&keys::relay_viewers_of(m, n.relay.as_str()))
                    .await
                    .unwrap();
                assert_eq!(u64::from(n.viewers), count, "{}", n.relay);
                let (seats, _) = self
                    .store
                    .count(&keys::relay_seats_of(m, n.relay.as_str()))
                    .await
                    .unwrap();
                assert_eq!(seats, count, "{}: one seat per viewer", n.relay);
                assert!(n.viewers <= max, "{} has {}", n.relay, n.viewers);
                let children = tree
                    .nodes
                    .iter()
                    .filter(|c| {
                        c.parent
                            == RelayParent::Relay {
                                relay: n.relay.clone(),
                            }
                    })
                    .count();
                assert_eq!(n.children as usize, children, "{}", n.relay);
                assert!(
                    n.viewers > 0 || n.children > 0,
                    "{} should be gone",
                    n.relay
                );
            }
            tree
        }
    }

    fn in_region<'a>(tree: &'a RelayTree, region: &str) -> Vec<&'a RelayNode> {
        tree.nodes.iter().filter(|n| n.region == region).collect()
    }

    /// Per region: one ingress fed by the origin, the others fed by the ingress.
    fn assert_shape(tree: &RelayTree, region: &str, relays: usize) {
        let nodes = in_region(tree, region);
        assert_eq!(nodes.len(), relays, "{region}: {nodes:?}");
        let ingress: Vec<_> = nodes
            .iter()
            .filter(|n| n.parent == RelayParent::Origin)
            .collect();
        assert_eq!(ingress.len(), 1, "{region}");
        for n in &nodes {
            if n.relay != ingress[0].relay {
                assert_eq!(
                    n.parent,
                    RelayParent::Relay {
                        relay: ingress[0].relay.clone()
                    }
                );
            }
        }
    }

    #[test]
    fn config_from_toml_and_relay_ids() {
        let c: RelayConfig = toml::from_str("max_viewers_per_relay = 500").unwrap();
        assert_eq!(c.max_viewers_per_relay, 500);
        assert_eq!(c.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(
            toml::from_str::<RelayConfig>("").unwrap(),
            RelayConfig::default()
        );
        assert!(toml::from_str::<RelayConfig>("viewers = 1").is_err());
        assert_eq!(RelayId::new("eu-west", 3).as_str(), "eu-west-3");
        assert_eq!(RelayId::new("a/b c", 0).as_str(), "a_b_c-0");
    }

    /// The acceptance figure: 5,000 viewers over two regions use ceil(n / 1000) relays per
    /// region, one ingress each fed by the origin; leaving shrinks the tree to nothing.
    #[tokio::test]
    async fn five_thousand_viewers_over_two_regions() {
        let fx = Fixture::new(3_600_000, 1000, Vec::new()).await;
        for (id, region) in [
            ("eu-1", "eu"),
            ("eu-2", "eu"),
            ("us-1", "us"),
            ("us-2", "us"),
        ] {
            fx.register(fwd(id, region, 100_000)).await;
        }
        let m = mid("webinar");
        let origin = fx.origin(&m, "eu").await;
        let mut assigned = Vec::new();
        for i in 0..5000 {
            let region = if i % 5 < 3 { "eu" } else { "us" };
            let p = fx
                .relays
                .assign_viewer(&m, &pid(i), Some(region))
                .await
                .unwrap();
            // A viewer is never sent to the origin's address.
            assert_ne!(p.address, origin.address);
            assigned.push((pid(i), region, p));
        }
        // Assigning again is idempotent.
        let again = fx
            .relays
            .assign_viewer(&m, &pid(0), Some("eu"))
            .await
            .unwrap();
        assert_eq!(again, assigned[0].2);

        let tree = fx.checked_tree(&m).await;
        assert_shape(&tree, "eu", 3);
        assert_shape(&tree, "us", 2);
        let total: u32 = tree.nodes.iter().map(|n| n.viewers).sum();
        assert_eq!(total, 5000);
        for n in &tree.nodes {
            let f = fx.placer.live().get(&n.forwarder).unwrap();
            assert_eq!(f.info.region, n.region);
            assert_eq!(n.link.profile, RELAY_SRTP_PROFILE);
        }
        // Two links per node, distinct keys per link.
        let links = tree.links();
        assert_eq!(links.len(), 10);
        let keys: BTreeSet<&str> = tree
            .nodes
            .iter()
            .map(|n| n.link.receive_key.as_str())
            .collect();
        assert_eq!(keys.len(), 5);
        let up = links
            .iter()
            .find(|l| l.direction == LinkDirection::Upstream && l.peer_address == origin.address)
            .unwrap();
        let down = links
            .iter()
            .find(|l| l.direction == LinkDirection::Downstream && l.relay == up.relay)
            .unwrap();
        assert_eq!(down.forwarder, origin.forwarder);
        assert_eq!(up.srtp.send_key, down.srtp.receive_key);
        assert_eq!(up.srtp.receive_key, down.srtp.send_key);
        // Each end names the plan it belongs to on its forwarder: the node it feeds, the
        // meeting (or parent node) it sends.
        assert_eq!(up.local_plan, format!("{}/{}", tree.meeting, up.relay));
        assert_eq!(down.local_plan, tree.meeting.to_string());
        for l in links
            .iter()
            .filter(|l| l.direction == LinkDirection::Downstream)
        {
            let node = tree.nodes.iter().find(|n| n.relay == l.relay).unwrap();
            match &node.parent {
                RelayParent::Origin => assert_eq!(l.local_plan, tree.meeting.to_string()),
                RelayParent::Relay { relay } => {
                    assert_eq!(l.local_plan, format!("{}/{relay}", tree.meeting))
                }
            }
        }
        // Ports of relays never clash with placements or each other.
        let (ports, _) = fx.store.range("v1/ports/").await.unwrap();
        assert_eq!(ports.len(), 6);

        // Everyone of a non-ingress relay of us leaves: it goes, its ingress loses a child.
        let us_leaf = in_region(&tree, "us")
            .into_iter()
            .find(|n| n.parent != RelayParent::Origin)
            .unwrap()
            .clone();
        for (p, _, placement) in &assigned {
            if placement.address == us_leaf.address && placement.forwarder == us_leaf.forwarder {
                assert!(fx.relays.release_viewer(&m, p).await.unwrap());
            }
        }
        let tree = fx.checked_tree(&m).await;
        assert_shape(&tree, "us", 1);
        assert_shape(&tree, "eu", 3);
        // Releasing twice is a no-op.
        let gone = assigned
            .iter()
            .find(|(_, _, p)| p.address == us_leaf.address && p.forwarder == us_leaf.forwarder)
            .unwrap();
        assert!(!fx.relays.release_viewer(&m, &gone.0).await.unwrap());

        // The eu ingress's own viewers leave: it stays, it feeds the other eu relays.
        let eu_ingress = in_region(&tree, "eu")
            .into_iter()
            .find(|n| n.parent == RelayParent::Origin)
            .unwrap()
            .clone();
        for (p, _, placement) in &assigned {
            if placement.address == eu_ingress.address
                && placement.forwarder == eu_ingress.forwarder
            {
                fx.relays.release_viewer(&m, p).await.unwrap();
            }
        }
        let tree = fx.checked_tree(&m).await;
        let ingress = tree
            .nodes
            .iter()
            .find(|n| n.relay == eu_ingress.relay)
            .unwrap();
        assert_eq!((ingress.viewers, ingress.children), (0, 2));

        // Everyone leaves: nothing left but the origin's placement and port.
        for (p, _, _) in &assigned {
            fx.relays.release_viewer(&m, p).await.unwrap();
        }
        assert!(fx.relays.tree(&m).await.unwrap().nodes.is_empty());
        let (ports, _) = fx.store.range("v1/ports/").await.unwrap();
        assert_eq!(ports.len(), 1);
        let (viewers, _) = fx.store.range(&keys::relay_viewers(&m)).await.unwrap();
        assert!(viewers.is_empty());
        let (seats, _) = fx.store.range(&keys::relay_seats(&m)).await.unwrap();
        assert!(seats.is_empty());
    }

    /// 200 joins at once (two worker threads, two planners as two control instances):
    /// every relay ends with exactly the configured maximum, and counts equal keys.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_joins_keep_counts_exact() {
        let fx = Fixture::new(3_600_000, 50, Vec::new()).await;
        fx.register(fwd("eu-1", "eu", 100_000)).await;
        fx.register(fwd("eu-2", "eu", 100_000)).await;
        let m = mid("w");
        fx.origin(&m, "eu").await;
        let s: Arc<dyn Store> = Arc::new(fx.store.clone());
        let other = Arc::new(
            RelayPlanner::start(
                s,
                Arc::clone(&fx.placer),
                &PlacementConfig::default(),
                fx.relays.config().clone(),
            )
            .await
            .unwrap(),
        );
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let planner = if i % 2 == 0 {
                    Arc::clone(&fx.relays)
                } else {
                    Arc::clone(&other)
                };
                let m = m.clone();
                tokio::spawn(async move { planner.assign_viewer(&m, &pid(i), Some("eu")).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let elapsed = started.elapsed();
        let tree = fx.checked_tree(&m).await;
        assert_shape(&tree, "eu", 4);
        assert!(tree.nodes.iter().all(|n| n.viewers == 50), "{tree:?}");
        let (a, b) = (fx.relays.stats(), other.stats());
        eprintln!(
            "200 concurrent joins (memory store): {elapsed:?}, {} txns, {} lost",
            a.txns + b.txns,
            a.conflicts + b.conflicts
        );
    }

    /// A region without a forwarder is served from the nearest one.
    #[tokio::test]
    async fn viewers_of_a_region_without_forwarders_go_to_the_nearest() {
        let latency = vec![
            RegionLatency {
                from: "asia".into(),
                to: "us".into(),
                ms: 90,
            },
            RegionLatency {
                from: "asia".into(),
                to: "eu".into(),
                ms: 200,
            },
        ];
        let fx = Fixture::new(3_600_000, 1000, latency).await;
        fx.register(fwd("eu-1", "eu", 100_000)).await;
        fx.register(fwd("us-1", "us", 100_000)).await;
        let m = mid("w");
        fx.origin(&m, "eu").await;
        let p = fx
            .relays
            .assign_viewer(&m, &pid(1), Some("asia"))
            .await
            .unwrap();
        assert_eq!(p.forwarder.as_str(), "us-1");
        // A us viewer shares that relay; no region is used twice.
        let q = fx
            .relays
            .assign_viewer(&m, &pid(2), Some("us"))
            .await
            .unwrap();
        assert_eq!(p, q);
        // An eu viewer gets the origin's forwarder: the only one in eu, with room.
        let e = fx
            .relays
            .assign_viewer(&m, &pid(3), Some("eu"))
            .await
            .unwrap();
        assert_eq!(e.forwarder.as_str(), "eu-1");
        let tree = fx.checked_tree(&m).await;
        assert_shape(&tree, "us", 1);
        assert_shape(&tree, "eu", 1);
        // No forwarder anywhere can take a relay: NoCapacity, nothing written.
        let fx = Fixture::new(3_600_000, 1000, Vec::new()).await;
        fx.register(fwd("tiny", "eu", 10)).await;
        let m = mid("w");
        fx.origin(&m, "eu").await;
        let err = fx
            .relays
            .assign_viewer(&m, &pid(1), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::NoCapacity(_)), "{err:?}");
        assert!(fx.relays.tree(&m).await.unwrap().nodes.is_empty());
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
                reg.heartbeat(&id, &session, &Load::default())
                    .await
                    .unwrap();
            }
        })
    }

    /// A relay forwarder stops heartbeating: both its relays move to the other forwarder
    /// of the region within 5 s of the lease's expiry, keep their viewers and children,
    /// get new link keys, and each viewer is told with an event naming it.
    #[tokio::test(start_paused = true)]
    async fn relays_of_a_dead_forwarder_move_within_the_region() {
        let fx = Fixture::new(3000, 2, Vec::new()).await;
        let s1 = fx.register(fwd("eu-origin", "eu", 2000)).await;
        let s2 = fx.register(fwd("eu-big", "eu", 1000)).await;
        let s3 = fx.register(fwd("eu-small", "eu", 500)).await;
        let s4 = fx.register(fwd("us-1", "us", 100_000)).await;
        let _b1 = keep_alive(fx.reg.clone(), "eu-origin", s1);
        let beat = keep_alive(fx.reg.clone(), "eu-big", s2);
        let _b3 = keep_alive(fx.reg.clone(), "eu-small", s3);
        let _b4 = keep_alive(fx.reg.clone(), "us-1", s4);
        let m = mid("w");
        let origin = fx.origin(&m, "eu").await;
        assert_eq!(origin.forwarder.as_str(), "eu-origin");
        for i in 0..4 {
            let p = fx
                .relays
                .assign_viewer(&m, &pid(i), Some("eu"))
                .await
                .unwrap();
            assert_eq!(p.forwarder.as_str(), "eu-big");
        }
        let before = fx.checked_tree(&m).await;
        assert_shape(&before, "eu", 2);
        let s: Arc<dyn Store> = Arc::new(fx.store.clone());
        let failover = Failover::new(
            s,
            Arc::clone(&fx.placer),
            fx.placer.live().clone(),
            FailoverConfig::default(),
        )
        .with_relays(Arc::clone(&fx.relays));
        let _f = tokio::spawn(failover.run());

        beat.abort();
        let deadline = Instant::now() + Duration::from_millis(3000) + Duration::from_secs(5);
        let after = loop {
            let tree = fx.relays.tree(&m).await.unwrap();
            if tree.nodes.iter().all(|n| n.forwarder.as_str() != "eu-big") {
                break tree;
            }
            assert!(Instant::now() < deadline, "not moved: {tree:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = {
            let t = fx.checked_tree(&m).await;
            assert_eq!(t.nodes.len(), after.nodes.len());
            t
        };
        assert_shape(&after, "eu", 2);
        for (old, new) in before.nodes.iter().zip(&after.nodes) {
            assert_eq!(old.relay, new.relay);
            assert_eq!(new.forwarder.as_str(), "eu-small", "same region first");
            assert_eq!(new.epoch, old.epoch + 1);
            assert_eq!((new.viewers, new.children), (old.viewers, old.children));
            assert_eq!(new.parent, old.parent);
            assert_ne!(new.link.receive_key, old.link.receive_key, "re-keyed");
        }
        // The child's keys are bound to its parent's new incarnation.
        let (kvs, _) = fx.store.range(&keys::relays(&m)).await.unwrap();
        for kv in &kvs {
            let r: RelayRecord = decode(kv).unwrap();
            if let RelayParent::Relay { .. } = r.parent {
                assert_eq!(r.parent_epoch, 2);
            }
        }
        // One event per viewer, naming them, with their node's new address.
        let (events, _) = fx
            .store
            .range(&keys::events_in(&m, EventScope::Audience))
            .await
            .unwrap();
        assert_eq!(events.len(), 4);
        let mut named = BTreeSet::new();
        for kv in &events {
            let v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
            let e: MeetingEvent = serde_json::from_value(v["event"].clone()).unwrap();
            let MeetingEvent::ForwarderChanged {
                participant: Some(p),
                forwarder,
                address,
            } = e
            else {
                panic!("{e:?}");
            };
            assert_eq!(forwarder.as_str(), "eu-small");
            assert!(after.nodes.iter().any(|n| n.address == address));
            named.insert(p);
        }
        assert_eq!(named.len(), 4);
        let (old_ports, _) = fx
            .store
            .range(&keys::ports(&ForwarderId::new("eu-big").unwrap()))
            .await
            .unwrap();
        assert!(old_ports.is_empty());
    }

    /// A webinar created through the meeting service, with two eu forwarders whose relay
    /// nodes seat `max_viewers` each; and the time the test runs at.
    async fn eu_webinar(max_viewers: u32) -> (Fixture, MeetingService, MeetingId, UnixMillis) {
        let fx = Fixture::new(3_600_000, max_viewers, Vec::new()).await;
        fx.register(fwd("eu-1", "eu", 100_000)).await;
        fx.register(fwd("eu-2", "eu", 100_000)).await;
        let svc = fx.meeting_service();
        let now = UnixMillis(1_700_000_000_000);
        let m = mid("launch");
        svc.create(Some(m.clone()), webinar_spec(), now)
            .await
            .unwrap();
        (fx, svc, m, now)
    }

    /// A join from eu.
    fn eu_join(name: &str) -> JoinInput {
        JoinInput {
            display_name: name.into(),
            region: Some("eu".into()),
            ..JoinInput::default()
        }
    }

    /// Through the meeting service: hosts get the origin, attendees a relay; leaving,
    /// denial and the end release.
    #[tokio::test]
    async fn webinar_attendees_join_through_relays() {
        let (fx, svc, m, now) = eu_webinar(1000).await;
        let join = eu_join;
        let host = svc.join(&m, join("Host"), now).await.unwrap();
        let origin = fx.placer.placement(&m).await.unwrap().unwrap();
        assert_eq!(host.placement, origin);
        let a = svc.join(&m, join("A"), now).await.unwrap();
        let b = svc.join(&m, join("B"), now).await.unwrap();
        assert_ne!(a.placement.address, origin.address);
        assert_eq!(a.placement, b.placement);
        let tree = fx.checked_tree(&m).await;
        assert_eq!(tree.nodes[0].viewers, 2);
        // The forwarders hold the viewers' legs on the relay node, not on the origin.
        let desired =
            DesiredStates::new(Arc::new(fx.store.clone())).with_relays(Arc::clone(&fx.relays));
        let legs_of = |state: &DesiredState, plan: &str| -> BTreeSet<ParticipantId> {
            state.meetings[plan].legs.keys().cloned().collect()
        };
        let (at_origin, _) = desired.read(&origin.forwarder).await.unwrap();
        assert_eq!(
            legs_of(&at_origin, m.as_str()),
            BTreeSet::from([host.participant.clone()])
        );
        let (at_relay, _) = desired.read(&a.placement.forwarder).await.unwrap();
        let plan = format!("{m}/{}", tree.nodes[0].relay.as_str());
        assert_eq!(
            legs_of(&at_relay, &plan),
            BTreeSet::from([a.participant.clone(), b.participant.clone()])
        );

        let caller = |token: &str| svc.authenticate(token, now).unwrap();
        svc.leave(&caller(&a.token), now).await.unwrap();
        assert_eq!(fx.checked_tree(&m).await.nodes[0].viewers, 1);
        let host_caller = caller(&host.token);
        assert!(matches!(host_caller, Caller::Participant(_)));
        svc.end(&host_caller, &m, now).await.unwrap();
        assert!(fx.relays.tree(&m).await.unwrap().nodes.is_empty());
        let (ports, _) = fx.store.range("v1/ports/").await.unwrap();
        assert_eq!(ports.len(), 1, "only the origin's");
    }

    /// The stream a relay forwarder watches stays what a fresh read gives, through
    /// joins that fill a node and open another, and a leave; a join touches only its own
    /// viewer's leg.
    #[tokio::test]
    async fn a_relay_forwarders_stream_follows_joins_node_by_node() {
        use futures::StreamExt;

        let (fx, svc, m, now) = eu_webinar(2).await;
        let join = eu_join;
        svc.join(&m, join("Host"), now).await.unwrap();
        let a = svc.join(&m, join("A"), now).await.unwrap();
        let relay_forwarder = a.placement.forwarder.clone();
        let desired =
            DesiredStates::new(Arc::new(fx.store.clone())).with_relays(Arc::clone(&fx.relays));
        let mut stream = desired.watch(relay_forwarder.clone());
        let Some(Ok(DesiredUpdate::Snapshot { mut state, .. })) = stream.next().await else {
            panic!("no snapshot");
        };

        // Apply the stream's changes until the state is what a fresh read gives; returns
        // the changes applied.
        let mut follow = async |state: &mut DesiredState| -> Vec<DesiredChange> {
            let (expected, _) = desired.read(&relay_forwarder).await.unwrap();
            let mut applied = Vec::new();
            while *state != expected {
                let update = tokio::time::timeout(Duration::from_secs(5), stream.next())
                    .await
                    .unwrap_or_else(|_| panic!("stream stalled at {state:?}, want {expected:?}"))
                    .expect("stream ended")
                    .unwrap();
                let DesiredUpdate::Changes { changes, .. } = update else {
                    panic!("a second snapshot");
                };
                for change in &changes {
                    apply(state, change.clone());
                }
                applied.extend(changes);
            }
            applied
        };

        let b = svc.join(&m, join("B"), now).await.unwrap();
        assert_eq!(b.placement, a.placement, "A's node has a seat left");
        let changes = follow(&mut state).await;
        assert!(
            matches!(&changes[..], [DesiredChange::LegUpserted(leg)] if leg.participant == b.participant),
            "{changes:?}"
        );
        // A's node is full: C and D open another node, here or on the other forwarder.
        svc.join(&m, join("C"), now).await.unwrap();
        svc.join(&m, join("D"), now).await.unwrap();
        follow(&mut state).await;
        let caller = svc.authenticate(&a.token, now).unwrap();
        svc.leave(&caller, now).await.unwrap();
        let changes = follow(&mut state).await;
        assert!(changes
            .iter()
            .any(|c| matches!(c, DesiredChange::LegRemoved(_, p) if *p == a.participant)));
        let plan = format!("{m}/{}", fx.checked_tree(&m).await.nodes[0].relay.as_str());
        let legs: BTreeSet<_> = state.meetings[&plan].legs.keys().cloned().collect();
        assert_eq!(legs, BTreeSet::from([b.participant.clone()]));
    }

    /// A change applied as a forwarder applies it.
    fn apply(state: &mut DesiredState, change: DesiredChange) {
        match change {
            DesiredChange::MeetingUpserted(meeting) => {
                let legs = state
                    .meetings
                    .remove(&meeting.id)
                    .map(|m| m.legs)
                    .unwrap_or_default();
                state
                    .meetings
                    .insert(meeting.id.clone(), DesiredMeeting { legs, ..meeting });
            }
            DesiredChange::MeetingRemoved(id) => {
                state.meetings.remove(&id);
            }
            DesiredChange::LegUpserted(leg) => {
                let meeting = state
                    .meetings
                    .get_mut(&leg.meeting)
                    .expect("leg of a known plan");
                meeting.legs.insert(leg.participant.clone(), *leg);
            }
            DesiredChange::LegRemoved(plan, participant) => {
                if let Some(meeting) = state.meetings.get_mut(&plan) {
                    meeting.legs.remove(&participant);
                }
            }
            DesiredChange::LinkUpserted(link) => {
                state.links.insert(link.id.clone(), link);
            }
            DesiredChange::LinkRemoved(id) => {
                state.links.remove(&id);
            }
        }
    }
}
