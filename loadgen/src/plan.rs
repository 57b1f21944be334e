//! Capacity planning: how many forwarders and webinar relays an event needs, from what
//! one forwarder was measured to sustain.
//!
//! `fanout-loadgen calibrate` measures one forwarder on this kind of machine and writes a
//! [`Calibration`] (JSON): the egress packets and bits per second it sustains with p99
//! latency under a bound. An [`Event`] (TOML, see `loadgen/events/`) describes the
//! webinar to serve: presenters, viewers per region, the media, which simulcast layers
//! viewers watch. [`plan`] combines them:
//!
//! * A viewer costs the packets of what it receives: every presenter's audio and the
//!   simulcast layer it watches (weighted by the layer mix), plus one screen share. A
//!   layer's packet rate is its bitrate in ~1,100-byte packets, and at least its frame
//!   rate.
//! * A relay link (origin → region ingress → edge relay) carries every layer: it costs as
//!   much as one viewer receiving all of them.
//! * Only `headroom` (default 70%) of the calibrated capacity is planned for.
//! * A region with `V` viewers gets at least
//!   `max(ceil(V / max_viewers_per_relay), ceil(V × viewer cost / usable capacity))`
//!   relay nodes, arranged as a tree: the region's ingress (fed by the origin) feeds the
//!   edge relays, and a node that feeds `c` children seats `c` link costs fewer viewers.
//!   When the ingress cannot feed every edge relay, the tree grows a level.
//! * Relay nodes are packed onto forwarders (first fit, largest first) within usable
//!   capacity and the calibrated `max_legs`; the origin goes to its region's forwarders.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::report::count;
use crate::scenario::{deserialize_toml, locate, located, name_from_origin, SimulcastLayer};

/// Version of the calibration file format.
pub const CALIBRATION_VERSION: u32 = 1;
/// Average video packet payload the packet rate of a layer is computed with.
pub const VIDEO_PACKET_BYTES: f64 = 1100.0;
/// Bytes each packet adds on the wire to its media payload, counted in bit rates: RTP
/// header (12), header extensions (8), SRTP authentication tag (16). The calibration's
/// `egress_bits_per_s` counts UDP payload the same way.
pub const PACKET_OVERHEAD_BYTES: f64 = 36.0;
/// Most relay nodes one region may need before planning gives up (a sign of nonsense
/// input, such as a link costing as much as a whole node).
const MAX_RELAYS_PER_REGION: usize = 100_000;

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error("{origin}: cannot read: {source}")]
    Io {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML/JSON, a wrong type, a missing field or an unknown key.
    #[error("{}", located(origin, *line, *column, field, reason))]
    Parse {
        origin: String,
        line: Option<usize>,
        column: Option<usize>,
        field: String,
        reason: String,
    },
    /// A value that makes no sense (zero capacity, shares not adding up to 1, ...).
    #[error("{}", located(origin, *line, *column, field, reason))]
    Invalid {
        origin: String,
        line: Option<usize>,
        column: Option<usize>,
        field: String,
        reason: String,
    },
    /// The inputs are valid but cannot be served (one viewer exceeds a forwarder).
    #[error("cannot plan: {0}")]
    Infeasible(String),
}

impl PlanError {
    /// The field path the error is about, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            PlanError::Parse { field, .. } | PlanError::Invalid { field, .. } => {
                Some(field.as_str()).filter(|f| !f.is_empty())
            }
            _ => None,
        }
    }

    fn invalid(origin: &str, text: Option<&str>, field: &str, reason: String) -> PlanError {
        let (line, column) = text.and_then(|t| locate(t, field)).unzip();
        PlanError::Invalid {
            origin: origin.to_owned(),
            line,
            column,
            field: field.to_owned(),
            reason,
        }
    }
}

/// What one forwarder sustains, measured by `fanout-loadgen calibrate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// [`CALIBRATION_VERSION`].
    pub version: u32,
    pub forwarder: ForwarderCapacity,
    pub measured_with: MeasuredWith,
    pub machine: Machine,
}

/// One forwarder's sustained egress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwarderCapacity {
    /// Shards (cores) it ran with.
    pub shards: u32,
    /// Packets per second sent, sustained with p99 latency under the bound.
    pub egress_packets_per_s: f64,
    /// Bits per second of UDP payload sent at that rate.
    pub egress_bits_per_s: f64,
    /// Participant legs (viewers and relay links) it accepts.
    pub max_legs: u32,
    /// The p99 latency it was held to.
    pub latency_p99_ms: f64,
}

/// How the calibration was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasuredWith {
    pub srtp_profile: String,
    /// RTP payload bytes per packet.
    pub packet_bytes: u32,
    pub subscribers: u32,
    pub duration_s: f64,
    /// What the forwarder sent in the step that set the capacity, and the share of its
    /// shards' cores it used doing so (CPU time over wall time): the capacity is the
    /// measured egress scaled to full cores, because on a machine that also runs the load
    /// generator the forwarder is rarely the first to run out. 0 when not measured.
    #[serde(default)]
    pub egress_packets_per_s: f64,
    #[serde(default)]
    pub forwarder_cpu: f64,
}

/// The machine the calibration ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: u32,
}

impl Calibration {
    /// Read and check a calibration file.
    pub fn load(path: impl AsRef<Path>) -> Result<Calibration, PlanError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Io {
            origin: origin.clone(),
            source,
        })?;
        Calibration::from_json(&text, &origin)
    }

    /// Parse and check a calibration; `origin` prefixes errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Calibration, PlanError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let calibration: Calibration = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            PlanError::Parse {
                origin: origin.to_owned(),
                line: Some(inner.line()),
                column: Some(inner.column()),
                field: if field == "." { String::new() } else { field },
                reason: inner.to_string(),
            }
        })?;
        calibration.validate(origin)?;
        Ok(calibration)
    }

    /// Check the numbers make sense.
    pub fn validate(&self, origin: &str) -> Result<(), PlanError> {
        let bad =
            |field: &str, reason: String| Err(PlanError::invalid(origin, None, field, reason));
        if self.version != CALIBRATION_VERSION {
            return bad(
                "version",
                format!(
                    "version {} is not supported (expected {CALIBRATION_VERSION}); run `fanout-loadgen calibrate` again",
                    self.version
                ),
            );
        }
        let f = &self.forwarder;
        for (field, v) in [
            ("forwarder.egress_packets_per_s", f.egress_packets_per_s),
            ("forwarder.egress_bits_per_s", f.egress_bits_per_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(
                    field,
                    format!("a forwarder capacity must be above 0, not {v}"),
                );
            }
        }
        if f.max_legs < 2 {
            return bad(
                "forwarder.max_legs",
                format!("{} legs cannot carry a relay link and a viewer", f.max_legs),
            );
        }
        if f.shards == 0 {
            return bad("forwarder.shards", "at least 1 shard".to_owned());
        }
        Ok(())
    }

    /// Pretty JSON, as `calibrate` writes it.
    pub fn to_json(&self) -> String {
        // Numbers and strings only: serialization cannot fail.
        serde_json::to_string_pretty(self).expect("a calibration serializes")
    }
}

/// An event to plan for: one webinar and its audience.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Event {
    /// Name shown in the plan. Default: the file name without `.toml`.
    pub name: String,
    /// Presenters: each sends audio and simulcast video. Default 1.
    pub presenters: u32,
    /// Viewers per region (`[viewers]` table of region = count). Required.
    pub viewers: BTreeMap<String, u64>,
    /// Region of the presenters and the origin of the relay tree. Default: the region
    /// with the most viewers.
    pub origin: Option<String>,
    pub media: EventMedia,
    /// Share of viewers watching each simulcast layer, lowest first; adds up to 1.
    /// Default: everybody on the highest layer (the worst case).
    pub layer_mix: Vec<f64>,
    /// Viewers one relay node seats (the control plane's setting). Default 1000.
    pub max_viewers_per_relay: u32,
    /// Share of the calibrated capacity to plan for, in (0, 1]. Default 0.7.
    pub headroom: f64,
}

impl Default for Event {
    fn default() -> Self {
        Event {
            name: String::new(),
            presenters: 1,
            viewers: BTreeMap::new(),
            origin: None,
            media: EventMedia::default(),
            layer_mix: Vec::new(),
            max_viewers_per_relay: 1000,
            headroom: 0.7,
        }
    }
}

/// `[media]` of an event.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventMedia {
    pub audio: EventAudio,
    pub video: EventVideo,
    pub screen: EventScreen,
}

/// `[media.audio]`: each presenter's audio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventAudio {
    /// Default true.
    pub enabled: bool,
    /// Bitrate in kbit/s. Default 32.
    pub kbps: f64,
    /// Packets per second. Default 50.
    pub packets_per_s: f64,
}

impl Default for EventAudio {
    fn default() -> Self {
        EventAudio {
            enabled: true,
            kbps: 32.0,
            packets_per_s: 50.0,
        }
    }
}

/// `[media.video]`: each presenter's camera.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventVideo {
    /// Default true.
    pub enabled: bool,
    /// Simulcast layers, lowest first. Default 150 kbit/s at 7.5 fps, 500 at 15, 1500
    /// at 30.
    pub simulcast: Vec<SimulcastLayer>,
}

impl Default for EventVideo {
    fn default() -> Self {
        EventVideo {
            enabled: true,
            simulcast: crate::scenario::VideoSpec::default().simulcast,
        }
    }
}

/// `[media.screen]`: one screen share (whoever presents).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventScreen {
    /// Default false.
    pub enabled: bool,
    /// Default 800.
    pub bitrate_kbps: f64,
    /// Default 5.
    pub fps: f64,
}

impl Default for EventScreen {
    fn default() -> Self {
        EventScreen {
            enabled: false,
            bitrate_kbps: 800.0,
            fps: 5.0,
        }
    }
}

impl Event {
    /// Read and check an event file.
    pub fn load(path: impl AsRef<Path>) -> Result<Event, PlanError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Io {
            origin: origin.clone(),
            source,
        })?;
        Event::from_toml_str(&text, &origin)
    }

    /// Parse and check an event; `origin` prefixes errors and names an unnamed event.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Event, PlanError> {
        let mut event: Event = deserialize_toml(text).map_err(|e| PlanError::Parse {
            origin: origin.to_owned(),
            line: e.line,
            column: e.column,
            field: e.field,
            reason: e.reason,
        })?;
        if event.name.is_empty() {
            event.name = name_from_origin(origin);
        }
        event
            .check()
            .map_err(|(field, reason)| PlanError::invalid(origin, Some(text), &field, reason))?;
        Ok(event)
    }

    /// Check an event built in code.
    pub fn validate(&self, origin: &str) -> Result<(), PlanError> {
        self.check()
            .map_err(|(field, reason)| PlanError::invalid(origin, None, &field, reason))
    }

    /// Viewers over all regions.
    pub fn total_viewers(&self) -> u64 {
        self.viewers.values().sum()
    }

    /// The origin region: as given, or the region with the most viewers (the first by
    /// name among equals).
    pub fn origin_region(&self) -> String {
        self.origin.clone().unwrap_or_else(|| {
            let mut best: Option<(&String, u64)> = None;
            for (region, &n) in &self.viewers {
                if best.is_none_or(|(_, b)| n > b) {
                    best = Some((region, n));
                }
            }
            best.map_or_else(|| "origin".to_owned(), |(r, _)| r.clone())
        })
    }

    fn check(&self) -> Result<(), (String, String)> {
        let fail = |field: &str, reason: String| Err((field.to_owned(), reason));
        if self.presenters == 0 {
            return fail("presenters", "an event needs at least 1 presenter".into());
        }
        if self.viewers.is_empty() || self.total_viewers() == 0 {
            return fail(
                "viewers",
                "no viewers: give a [viewers] table of region = count".into(),
            );
        }
        if let Some(r) = &self.origin {
            if r.trim().is_empty() {
                return fail("origin", "an empty region name".into());
            }
        }
        if !(self.headroom.is_finite() && self.headroom > 0.0 && self.headroom <= 1.0) {
            return fail(
                "headroom",
                format!(
                    "{} is not a share of capacity in (0, 1] (0.7 plans to 70%)",
                    self.headroom
                ),
            );
        }
        if self.max_viewers_per_relay == 0 {
            return fail(
                "max_viewers_per_relay",
                "a relay must seat at least 1 viewer".into(),
            );
        }
        let audio = &self.media.audio;
        if audio.enabled {
            for (field, v) in [
                ("media.audio.kbps", audio.kbps),
                ("media.audio.packets_per_s", audio.packets_per_s),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    return fail(field, format!("{v} must be above 0"));
                }
            }
        }
        let video = &self.media.video;
        if video.enabled {
            if video.simulcast.is_empty() {
                return fail("media.video.simulcast", "no layers".into());
            }
            for (i, l) in video.simulcast.iter().enumerate() {
                if l.bitrate_kbps == 0 {
                    return fail(
                        &format!("media.video.simulcast[{i}].bitrate_kbps"),
                        "must be above 0".into(),
                    );
                }
                if !(l.fps.is_finite() && l.fps > 0.0) {
                    return fail(
                        &format!("media.video.simulcast[{i}].fps"),
                        format!("{} must be above 0", l.fps),
                    );
                }
            }
            if !self.layer_mix.is_empty() {
                if self.layer_mix.len() != video.simulcast.len() {
                    return fail(
                        "layer_mix",
                        format!(
                            "{} shares for {} simulcast layers",
                            self.layer_mix.len(),
                            video.simulcast.len()
                        ),
                    );
                }
                if self.layer_mix.iter().any(|s| !(0.0..=1.0).contains(s)) {
                    return fail("layer_mix", "each share is between 0 and 1".into());
                }
                let sum: f64 = self.layer_mix.iter().sum();
                if (sum - 1.0).abs() > 1e-3 {
                    return fail("layer_mix", format!("the shares add up to {sum}, not 1"));
                }
            }
        }
        let screen = &self.media.screen;
        if screen.enabled {
            for (field, v) in [
                ("media.screen.bitrate_kbps", screen.bitrate_kbps),
                ("media.screen.fps", screen.fps),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    return fail(field, format!("{v} must be above 0"));
                }
            }
        }
        if !(audio.enabled || video.enabled || screen.enabled) {
            return fail("media", "the event sends no media".into());
        }
        Ok(())
    }

    /// One viewer's egress cost: every presenter's audio and the layer mix of their
    /// video, plus the screen share.
    pub fn viewer_load(&self) -> Load {
        let mut load = self.audio_load().scale(f64::from(self.presenters));
        let layers = self.layer_loads();
        if let Some(top) = layers.last() {
            let video = if self.layer_mix.is_empty() {
                *top
            } else {
                layers
                    .iter()
                    .zip(&self.layer_mix)
                    .fold(Load::ZERO, |acc, (l, share)| acc.add(l.scale(*share)))
            };
            load = load.add(video.scale(f64::from(self.presenters)));
        }
        load.add(self.screen_load())
    }

    /// One relay link's cost: every layer of every presenter, and the screen share.
    pub fn link_load(&self) -> Load {
        let per_presenter = self
            .layer_loads()
            .iter()
            .fold(self.audio_load(), |acc, l| acc.add(*l));
        per_presenter
            .scale(f64::from(self.presenters))
            .add(self.screen_load())
    }

    /// What the origin sends presenters: each sees the others' audio and top layer, and
    /// the screen share.
    fn presenters_load(&self) -> Load {
        let others = f64::from(self.presenters - 1);
        let top = self.layer_loads().last().copied().unwrap_or(Load::ZERO);
        self.audio_load()
            .add(top)
            .scale(others * f64::from(self.presenters))
            .add(self.screen_load().scale(others))
    }

    fn audio_load(&self) -> Load {
        let a = &self.media.audio;
        if a.enabled {
            Load::media(a.kbps * 1000.0, a.packets_per_s)
        } else {
            Load::ZERO
        }
    }

    fn layer_loads(&self) -> Vec<Load> {
        if !self.media.video.enabled {
            return Vec::new();
        }
        self.media
            .video
            .simulcast
            .iter()
            .map(|l| Load::video(f64::from(l.bitrate_kbps) * 1000.0, l.fps))
            .collect()
    }

    fn screen_load(&self) -> Load {
        let s = &self.media.screen;
        if s.enabled {
            Load::video(s.bitrate_kbps * 1000.0, s.fps)
        } else {
            Load::ZERO
        }
    }
}

/// Egress: packets and bits per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub pps: f64,
    pub bps: f64,
}

impl Load {
    const ZERO: Load = Load { pps: 0.0, bps: 0.0 };

    /// A stream of `media_bps` in `pps` packets, with per-packet overhead.
    fn media(media_bps: f64, pps: f64) -> Load {
        Load {
            pps,
            bps: media_bps + pps * PACKET_OVERHEAD_BYTES * 8.0,
        }
    }

    /// A video stream: packets of ~[`VIDEO_PACKET_BYTES`], at least one per frame.
    fn video(media_bps: f64, fps: f64) -> Load {
        Load::media(media_bps, (media_bps / 8.0 / VIDEO_PACKET_BYTES).max(fps))
    }

    fn add(self, o: Load) -> Load {
        Load {
            pps: self.pps + o.pps,
            bps: self.bps + o.bps,
        }
    }

    fn scale(self, k: f64) -> Load {
        Load {
            pps: self.pps * k,
            bps: self.bps * k,
        }
    }

    fn fits(self, cap: Load) -> bool {
        // A little slack for float rounding of sums that are exactly at capacity.
        self.pps <= cap.pps * (1.0 + 1e-9) && self.bps <= cap.bps * (1.0 + 1e-9)
    }

    /// How many of `self` fit in `cap`.
    fn times_in(self, cap: Load) -> u64 {
        let by = |c: f64, x: f64| {
            if x > 0.0 {
                (c / x + 1e-9).floor().max(0.0)
            } else {
                f64::INFINITY
            }
        };
        let n = by(cap.pps, self.pps).min(by(cap.bps, self.bps));
        if n.is_infinite() {
            u64::MAX
        } else {
            n as u64
        }
    }

    fn minus(self, o: Load) -> Load {
        Load {
            pps: (self.pps - o.pps).max(0.0),
            bps: (self.bps - o.bps).max(0.0),
        }
    }
}

/// One node of the distribution tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeNode {
    /// `origin`, or `{region}-{index}` (index 0 is the region's ingress).
    pub id: String,
    pub region: String,
    /// The node feeding this one (`None` for the origin).
    pub parent: Option<String>,
    /// Level below the origin: 1 for a region's ingress.
    pub depth: u32,
    pub viewers: u64,
    /// Relay links this node feeds.
    pub children: u32,
    /// The forwarder it is placed on: `{region}/fwd-{n}`.
    pub forwarder: String,
    pub egress_pps: f64,
    pub egress_bps: f64,
}

/// One region's share of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionPlan {
    pub region: String,
    pub viewers: u64,
    /// Relay nodes (the ingress included); 0 for a region without viewers.
    pub relays: usize,
    /// Forwarders to run in the region (the origin's included in its region).
    pub forwarders: usize,
    /// Relay levels: 1 = ingress only, 2 = ingress and edge relays, ...
    pub depth: u32,
    /// Most viewers on one relay node.
    pub viewers_per_relay_max: u64,
    /// Largest egress of one relay node.
    pub egress_pps_per_node: f64,
    pub egress_bps_per_node: f64,
    /// Largest egress of one forwarder.
    pub egress_pps_per_forwarder: f64,
    pub egress_bps_per_forwarder: f64,
    /// What crosses into the region: one relay link from the origin.
    pub ingress_link_pps: f64,
    pub ingress_link_bps: f64,
}

/// Forwarders and relays for an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub event: String,
    pub origin: String,
    pub presenters: u32,
    pub total_viewers: u64,
    pub headroom: f64,
    /// Calibrated capacity of one forwarder, and the share of it planned for.
    pub capacity_pps: f64,
    pub capacity_bps: f64,
    pub usable_pps: f64,
    pub usable_bps: f64,
    pub max_legs: u32,
    /// What one viewer and one relay link cost.
    pub viewer_pps: f64,
    pub viewer_bps: f64,
    pub link_pps: f64,
    pub link_bps: f64,
    /// Viewers one relay node with no children can seat, and links one node can feed.
    pub seats_per_relay: u64,
    pub max_fanout: u64,
    pub regions: Vec<RegionPlan>,
    pub total_relays: usize,
    pub total_forwarders: usize,
    /// Every node, origin first, then each region's in breadth-first order.
    pub tree: Vec<TreeNode>,
}

/// Plan forwarders and relays for `event` from `calibration`.
pub fn plan(event: &Event, calibration: &Calibration) -> Result<Plan, PlanError> {
    event.validate("event")?;
    calibration.validate("calibration")?;
    let f = &calibration.forwarder;
    let usable = Load {
        pps: f.egress_packets_per_s * event.headroom,
        bps: f.egress_bits_per_s * event.headroom,
    };
    // One leg is the node's own parent link.
    let max_legs = u64::from(f.max_legs);
    let viewer = event.viewer_load();
    let link = event.link_load();
    let seats = viewer
        .times_in(usable)
        .min(u64::from(event.max_viewers_per_relay))
        .min(max_legs - 1);
    if seats == 0 {
        return Err(PlanError::Infeasible(format!(
            "one viewer needs {:.0} pkt/s and {:.2} Mbit/s, more than {:.0}% of a forwarder ({:.0} pkt/s, {:.2} Mbit/s)",
            viewer.pps,
            viewer.bps / 1e6,
            event.headroom * 100.0,
            usable.pps,
            usable.bps / 1e6
        )));
    }
    let fanout = link.times_in(usable).min(max_legs - 1);
    if fanout == 0 {
        return Err(PlanError::Infeasible(format!(
            "one relay link needs {:.0} pkt/s and {:.2} Mbit/s, more than {:.0}% of a forwarder",
            link.pps,
            link.bps / 1e6,
            event.headroom * 100.0
        )));
    }

    let origin_region = event.origin_region();
    let feeding = event.viewers.values().filter(|v| **v > 0).count() as u64;
    let origin_load = link.scale(feeding as f64).add(event.presenters_load());
    let origin_legs = feeding + u64::from(event.presenters);
    if !origin_load.fits(usable) || origin_legs > max_legs {
        return Err(PlanError::Infeasible(format!(
            "the origin cannot feed {feeding} regions ({:.0} pkt/s, {:.2} Mbit/s, {origin_legs} legs) within {:.0}% of a forwarder",
            origin_load.pps,
            origin_load.bps / 1e6,
            event.headroom * 100.0
        )));
    }
    let origin_node = TreeNode {
        id: "origin".to_owned(),
        region: origin_region.clone(),
        parent: None,
        depth: 0,
        viewers: 0,
        children: feeding as u32,
        forwarder: String::new(),
        egress_pps: origin_load.pps,
        egress_bps: origin_load.bps,
    };

    let mut regions = Vec::new();
    let mut tree = vec![origin_node];
    let mut names: Vec<&String> = event.viewers.keys().collect();
    if !event.viewers.contains_key(&origin_region) {
        names.push(&origin_region);
    }
    for region in names {
        let viewers = event.viewers.get(region).copied().unwrap_or(0);
        let mut nodes = region_tree(
            region, viewers, viewer, link, usable, seats, fanout, max_legs,
        )?;
        let with_origin = *region == origin_region;
        // Pack onto forwarders: (load, legs) per forwarder.
        let mut order: Vec<usize> = (0..nodes.len()).collect();
        order.sort_by(|a, b| nodes[*b].egress_pps.total_cmp(&nodes[*a].egress_pps));
        let mut bins: Vec<(Load, u64)> = Vec::new();
        let mut place = |load: Load, legs: u64| -> usize {
            let fit = bins
                .iter()
                .position(|(l, n)| l.add(load).fits(usable) && n + legs <= max_legs);
            match fit {
                Some(i) => {
                    bins[i].0 = bins[i].0.add(load);
                    bins[i].1 += legs;
                    i
                }
                None => {
                    bins.push((load, legs));
                    bins.len() - 1
                }
            }
        };
        if with_origin {
            let bin = place(origin_load, origin_legs);
            tree[0].forwarder = format!("{region}/fwd-{}", bin + 1);
        }
        for i in order {
            let n = &nodes[i];
            let load = Load {
                pps: n.egress_pps,
                bps: n.egress_bps,
            };
            let bin = place(load, n.viewers + u64::from(n.children) + 1);
            nodes[i].forwarder = format!("{region}/fwd-{}", bin + 1);
        }
        let max_of = |key: fn(&TreeNode) -> f64| nodes.iter().map(key).fold(0.0, f64::max);
        regions.push(RegionPlan {
            region: region.clone(),
            viewers,
            relays: nodes.len(),
            forwarders: bins.len(),
            depth: nodes.iter().map(|n| n.depth).max().unwrap_or(0),
            viewers_per_relay_max: nodes.iter().map(|n| n.viewers).max().unwrap_or(0),
            egress_pps_per_node: max_of(|n| n.egress_pps),
            egress_bps_per_node: max_of(|n| n.egress_bps),
            egress_pps_per_forwarder: bins.iter().map(|b| b.0.pps).fold(0.0, f64::max),
            egress_bps_per_forwarder: bins.iter().map(|b| b.0.bps).fold(0.0, f64::max),
            ingress_link_pps: if viewers > 0 { link.pps } else { 0.0 },
            ingress_link_bps: if viewers > 0 { link.bps } else { 0.0 },
        });
        tree.extend(nodes);
    }

    Ok(Plan {
        event: event.name.clone(),
        origin: origin_region,
        presenters: event.presenters,
        total_viewers: event.total_viewers(),
        headroom: event.headroom,
        capacity_pps: f.egress_packets_per_s,
        capacity_bps: f.egress_bits_per_s,
        usable_pps: usable.pps,
        usable_bps: usable.bps,
        max_legs: f.max_legs,
        viewer_pps: viewer.pps,
        viewer_bps: viewer.bps,
        link_pps: link.pps,
        link_bps: link.bps,
        seats_per_relay: seats,
        max_fanout: fanout,
        total_relays: regions.iter().map(|r| r.relays).sum(),
        total_forwarders: regions.iter().map(|r| r.forwarders).sum(),
        regions,
        tree,
    })
}

/// The relay nodes of one region: the fewest nodes, in a complete `fanout`-ary tree
/// under the ingress, whose seats (fewer on nodes that feed children) hold `viewers`.
#[allow(clippy::too_many_arguments)]
fn region_tree(
    region: &str,
    viewers: u64,
    viewer: Load,
    link: Load,
    usable: Load,
    seats: u64,
    fanout: u64,
    max_legs: u64,
) -> Result<Vec<TreeNode>, PlanError> {
    if viewers == 0 {
        return Ok(Vec::new());
    }
    let fanout = fanout as usize;
    let mut n = viewers.div_ceil(seats) as usize;
    loop {
        // Node i's children are fanout*i+1 ..= fanout*i+fanout (breadth-first order).
        let children: Vec<usize> = (0..n)
            .map(|i| n.saturating_sub(fanout * i + 1).min(fanout))
            .collect();
        let capacity: Vec<u64> = children
            .iter()
            .map(|&c| {
                viewer
                    .times_in(usable.minus(link.scale(c as f64)))
                    .min(seats)
                    .min((max_legs - 1).saturating_sub(c as u64))
            })
            .collect();
        if capacity.iter().sum::<u64>() >= viewers {
            let assigned = water_fill(viewers, &capacity);
            let mut depth = vec![1u32; n];
            let mut nodes = Vec::with_capacity(n);
            for i in 0..n {
                let parent = if i == 0 {
                    "origin".to_owned()
                } else {
                    let p = (i - 1) / fanout;
                    depth[i] = depth[p] + 1;
                    format!("{region}-{p}")
                };
                let load = viewer
                    .scale(assigned[i] as f64)
                    .add(link.scale(children[i] as f64));
                nodes.push(TreeNode {
                    id: format!("{region}-{i}"),
                    region: region.to_owned(),
                    parent: Some(parent),
                    depth: depth[i],
                    viewers: assigned[i],
                    children: children[i] as u32,
                    forwarder: String::new(),
                    egress_pps: load.pps,
                    egress_bps: load.bps,
                });
            }
            return Ok(nodes);
        }
        n += 1;
        if n > MAX_RELAYS_PER_REGION {
            return Err(PlanError::Infeasible(format!(
                "region {region} would need more than {MAX_RELAYS_PER_REGION} relays: a relay link costs nearly as much as a full relay"
            )));
        }
    }
}

/// Spread `total` over slots of the given capacities as evenly as they allow.
fn water_fill(total: u64, capacity: &[u64]) -> Vec<u64> {
    let mut order: Vec<usize> = (0..capacity.len()).collect();
    order.sort_by_key(|&i| (capacity[i], i));
    let mut out = vec![0; capacity.len()];
    let mut remaining = total;
    for (k, &i) in order.iter().enumerate() {
        let left = (capacity.len() - k) as u64;
        let give = remaining.div_ceil(left).min(capacity[i]);
        out[i] = give;
        remaining -= give;
    }
    debug_assert_eq!(remaining, 0, "capacities were checked to hold the total");
    out
}

impl Plan {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // Numbers and strings only: serialization cannot fail.
        serde_json::to_string_pretty(self).expect("a plan serializes")
    }

    /// The plan for people: the inputs that drive it, a table of regions, and the tree.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Capacity plan: {} (origin {}, {} presenter(s), {} viewers)",
            self.event,
            self.origin,
            self.presenters,
            count(self.total_viewers)
        );
        let row = |out: &mut String, label: &str, value: String| {
            let _ = writeln!(out, "  {label:<22}{value}");
        };
        row(
            &mut out,
            "forwarder capacity",
            format!(
                "{} pkt/s, {} Mbit/s, {} legs; planned to {:.0}%: {} pkt/s, {} Mbit/s",
                count(self.capacity_pps.round() as u64),
                mbit(self.capacity_bps),
                count(u64::from(self.max_legs)),
                self.headroom * 100.0,
                count(self.usable_pps.round() as u64),
                mbit(self.usable_bps),
            ),
        );
        row(
            &mut out,
            "one viewer",
            format!(
                "{:.1} pkt/s, {} Mbit/s",
                self.viewer_pps,
                mbit(self.viewer_bps)
            ),
        );
        row(
            &mut out,
            "one relay link",
            format!("{:.1} pkt/s, {} Mbit/s", self.link_pps, mbit(self.link_bps)),
        );
        row(
            &mut out,
            "per relay node",
            format!(
                "up to {} viewers, or up to {} child links",
                count(self.seats_per_relay),
                count(self.max_fanout)
            ),
        );
        let _ = writeln!(
            out,
            "\n  {:<14}{:>9}{:>8}{:>12}{:>7}{:>15}{:>15}{:>16}",
            "region",
            "viewers",
            "relays",
            "forwarders",
            "depth",
            "viewers/relay",
            "pkt/s per fwd",
            "Mbit/s per fwd"
        );
        for r in &self.regions {
            let _ = writeln!(
                out,
                "  {:<14}{:>9}{:>8}{:>12}{:>7}{:>15}{:>15}{:>16}",
                r.region,
                count(r.viewers),
                r.relays,
                r.forwarders,
                r.depth,
                count(r.viewers_per_relay_max),
                count(r.egress_pps_per_forwarder.round() as u64),
                mbit(r.egress_bps_per_forwarder),
            );
        }
        let _ = writeln!(
            out,
            "  {:<14}{:>9}{:>8}{:>12}",
            "total",
            count(self.total_viewers),
            self.total_relays,
            self.total_forwarders
        );
        out.push_str("\nTree\n");
        for node in &self.tree {
            // Print the origin, each ingress and each node with children in full; count
            // the leaves under their parent.
            if node.depth <= 1 || node.children > 0 {
                let indent = "  ".repeat(node.depth as usize + 1);
                let leaves = self
                    .tree
                    .iter()
                    .filter(|c| {
                        c.parent.as_deref() == Some(&node.id) && c.children == 0 && c.depth > 1
                    })
                    .collect::<Vec<_>>();
                let _ = write!(
                    out,
                    "{indent}{} [{}] {} viewers, {} links, {} pkt/s",
                    node.id,
                    node.forwarder,
                    count(node.viewers),
                    node.children,
                    count(node.egress_pps.round() as u64)
                );
                if let (Some(lo), Some(hi)) = (
                    leaves.iter().map(|l| l.viewers).min(),
                    leaves.iter().map(|l| l.viewers).max(),
                ) {
                    let _ = write!(
                        out,
                        "\n{indent}  + {} edge relays of {} viewers",
                        leaves.len(),
                        if lo == hi {
                            count(lo)
                        } else {
                            format!("{}-{}", count(lo), count(hi))
                        }
                    );
                }
                out.push('\n');
            }
        }
        out
    }
}

fn mbit(bps: f64) -> String {
    format!("{:.1}", bps / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calibration(pps: f64) -> Calibration {
        Calibration {
            version: 1,
            forwarder: ForwarderCapacity {
                shards: 2,
                egress_packets_per_s: pps,
                egress_bits_per_s: 100e9,
                max_legs: 10_000,
                latency_p99_ms: 20.0,
            },
            measured_with: MeasuredWith {
                srtp_profile: "AEAD_AES_128_GCM".into(),
                packet_bytes: 1100,
                subscribers: 1000,
                duration_s: 30.0,
                egress_packets_per_s: 200_000.0,
                forwarder_cpu: 1.0,
            },
            machine: Machine {
                cpu_model: "test".into(),
                cores: 2,
            },
        }
    }

    /// One presenter, audio 50 pkt/s and one video layer of `video_pps` packets: a
    /// viewer and a relay link both cost 50 + video_pps packets per second.
    fn event(video_pps: f64, viewers: &[(&str, u64)]) -> Event {
        Event {
            name: "test".into(),
            viewers: viewers.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect(),
            media: EventMedia {
                video: EventVideo {
                    enabled: true,
                    simulcast: vec![SimulcastLayer {
                        bitrate_kbps: (video_pps * VIDEO_PACKET_BYTES * 8.0 / 1000.0) as u32,
                        fps: 25.0,
                    }],
                },
                ..EventMedia::default()
            },
            ..Event::default()
        }
    }

    const REGIONS: &[(&str, u64)] = &[("us", 30_000), ("eu", 15_000), ("ap", 5_000)];

    fn region<'a>(p: &'a Plan, name: &str) -> &'a RegionPlan {
        p.regions.iter().find(|r| r.region == name).unwrap()
    }

    fn check_invariants(p: &Plan, e: &Event) {
        let usable = Load {
            pps: p.usable_pps,
            bps: p.usable_bps,
        };
        for n in &p.tree {
            assert!(
                Load {
                    pps: n.egress_pps,
                    bps: n.egress_bps
                }
                .fits(usable),
                "node {} over capacity: {} > {}",
                n.id,
                n.egress_pps,
                p.usable_pps
            );
            assert!(n.viewers <= u64::from(e.max_viewers_per_relay));
            assert!(!n.forwarder.is_empty(), "{} not placed", n.id);
        }
        for r in &p.regions {
            let seated: u64 = p
                .tree
                .iter()
                .filter(|n| n.region == r.region)
                .map(|n| n.viewers)
                .sum();
            assert_eq!(seated, r.viewers, "{}", r.region);
            assert!(r.egress_pps_per_forwarder <= p.usable_pps * (1.0 + 1e-9));
            if r.viewers == 0 {
                assert_eq!(r.relays, 0, "{}", r.region);
            }
        }
        // Every node but the origin has a parent in the tree.
        for n in &p.tree[1..] {
            let parent = n.parent.as_deref().unwrap();
            assert!(
                p.tree.iter().any(|m| m.id == parent),
                "{} has no parent",
                n.id
            );
        }
    }

    #[test]
    fn layer_packet_rates() {
        let e = Event::default();
        // 150 kbit/s in 1,100-byte packets is 17 pkt/s (more than 7.5 fps); 1,500 is 170.
        let layers = e.layer_loads();
        assert!((layers[0].pps - 150_000.0 / 8.0 / 1100.0).abs() < 1e-9);
        assert!((layers[2].pps - 1_500_000.0 / 8.0 / 1100.0).abs() < 1e-9);
        // A low bitrate at a high frame rate: one packet per frame at least.
        assert_eq!(Load::video(10_000.0, 30.0).pps, 30.0);
        // Default mix: everybody on the top layer, plus audio.
        assert!((e.viewer_load().pps - (50.0 + layers[2].pps)).abs() < 1e-9);
        // A link carries all layers.
        let all: f64 = 50.0 + layers.iter().map(|l| l.pps).sum::<f64>();
        assert!((e.link_load().pps - all).abs() < 1e-9);
        // A mix weighs the layers.
        let mixed = Event {
            layer_mix: vec![0.5, 0.5, 0.0],
            ..Event::default()
        };
        let expect = 50.0 + 0.5 * layers[0].pps + 0.5 * layers[1].pps;
        assert!((mixed.viewer_load().pps - expect).abs() < 1e-9);
        // Bits include the per-packet overhead.
        let a = Event::default().audio_load();
        assert_eq!(a.bps, 32_000.0 + 50.0 * 36.0 * 8.0);
    }

    /// 50,000 viewers in 3 regions, 200k pkt/s per forwarder planned to 70% = 140k, 100
    /// pkt/s per viewer: 1,000 seats per relay (the relay limit, not egress: 1,400 would
    /// fit), so 30 + 15 + 5 relays, one per forwarder (two full ones are 200k > 140k).
    #[test]
    fn relays_bounded_by_seats() {
        let e = event(50.0, REGIONS);
        assert!((e.viewer_load().pps - 100.0).abs() < 0.01);
        let p = plan(&e, &calibration(200_000.0)).unwrap();
        check_invariants(&p, &e);
        assert_eq!(p.seats_per_relay, 1000);
        assert_eq!(region(&p, "us").relays, 30);
        assert_eq!(region(&p, "eu").relays, 15);
        assert_eq!(region(&p, "ap").relays, 5);
        assert_eq!(p.total_relays, 50);
        assert_eq!(p.total_forwarders, 50, "the origin shares a forwarder");
        assert_eq!(p.origin, "us");
        assert_eq!(region(&p, "us").depth, 2);
        assert_eq!(p.tree[0].id, "origin");
        assert_eq!(p.tree[0].children, 3);
        let ingress = p.tree.iter().find(|n| n.id == "eu-0").unwrap();
        assert_eq!(ingress.parent.as_deref(), Some("origin"));
        assert_eq!(ingress.children, 14);
        let edge = p.tree.iter().find(|n| n.id == "eu-7").unwrap();
        assert_eq!(edge.parent.as_deref(), Some("eu-0"));
        assert_eq!(edge.viewers, 1000);
    }

    /// 300 pkt/s per viewer: egress binds. 140,000 / 300 = 466 seats; us needs
    /// max(30, ceil(30,000 × 300 / 140,000) = 65) = 65 relays, eu 33, ap 11.
    #[test]
    fn relays_bounded_by_egress() {
        let e = event(250.0, REGIONS);
        let p = plan(&e, &calibration(200_000.0)).unwrap();
        check_invariants(&p, &e);
        assert_eq!(p.seats_per_relay, 466);
        assert_eq!(region(&p, "us").relays, 65);
        assert_eq!(region(&p, "eu").relays, 33);
        assert_eq!(region(&p, "ap").relays, 11);
        assert_eq!(p.total_relays, 109);
        // No forwarder holds two relays of ~140k pkt/s.
        assert_eq!(p.total_forwarders, 109);
    }

    #[test]
    fn headroom_is_respected() {
        let e70 = event(250.0, REGIONS);
        let e100 = Event {
            headroom: 1.0,
            ..e70.clone()
        };
        let p70 = plan(&e70, &calibration(200_000.0)).unwrap();
        let p100 = plan(&e100, &calibration(200_000.0)).unwrap();
        check_invariants(&p100, &e100);
        // 200,000 / 300 = 666 seats: us needs ceil(30,000 / 666) = 46.
        assert_eq!(p100.seats_per_relay, 666);
        assert_eq!(region(&p100, "us").relays, 46);
        assert!(p70.total_forwarders > p100.total_forwarders);
        for n in &p70.tree {
            assert!(
                n.egress_pps <= 140_000.0 + 1e-6,
                "{} at {}",
                n.id,
                n.egress_pps
            );
        }
    }

    #[test]
    fn small_audiences_share_forwarders() {
        // Audio only (50 pkt/s): 10 relays of 1,000 in one region fit 2 per forwarder
        // (2 × 50,000 ≤ 140,000; 3 × 50,000 does not).
        let mut e = event(50.0, &[("eu", 10_000)]);
        e.media.video.enabled = false;
        let p = plan(&e, &calibration(200_000.0)).unwrap();
        check_invariants(&p, &e);
        assert_eq!(p.total_relays, 10);
        assert_eq!(p.total_forwarders, 5);
    }

    #[test]
    fn deep_tree_when_the_ingress_cannot_feed_every_relay() {
        // A link costs 100 pkt/s and a forwarder has 1,400 usable: fan-out 14. With 10
        // seats per relay, 1,000 viewers need > 100 relays: a third level.
        let mut e = event(50.0, &[("eu", 1000)]);
        e.max_viewers_per_relay = 10;
        let p = plan(&e, &calibration(2000.0)).unwrap();
        check_invariants(&p, &e);
        assert_eq!(p.max_fanout, 14);
        let eu = region(&p, "eu");
        assert_eq!(eu.depth, 3);
        assert!(eu.relays >= 100);
        assert!(p.tree.iter().all(|n| n.children <= 14));
    }

    #[test]
    fn regions_without_viewers_get_no_relays() {
        let e = event(50.0, &[("us", 3000), ("ap", 0)]);
        let p = plan(&e, &calibration(200_000.0)).unwrap();
        check_invariants(&p, &e);
        let ap = region(&p, "ap");
        assert_eq!((ap.relays, ap.forwarders), (0, 0));
        assert!(p.tree.iter().all(|n| n.region != "ap"));
        assert_eq!(p.tree[0].children, 1);
        // An origin region without viewers still runs the origin.
        let e = Event {
            origin: Some("hq".into()),
            ..e
        };
        let p = plan(&e, &calibration(200_000.0)).unwrap();
        let hq = region(&p, "hq");
        assert_eq!((hq.relays, hq.forwarders), (0, 1));
        assert_eq!(p.tree[0].forwarder, "hq/fwd-1");
    }

    #[test]
    fn nonsense_is_refused() {
        let e = event(50.0, REGIONS);
        let err = plan(&e, &calibration(0.0)).unwrap_err();
        assert_eq!(err.field(), Some("forwarder.egress_packets_per_s"), "{err}");
        let err = plan(&e, &calibration(f64::NAN)).unwrap_err();
        assert!(matches!(err, PlanError::Invalid { .. }), "{err}");
        // A viewer needs more than a forwarder.
        let err = plan(&e, &calibration(100.0)).unwrap_err();
        assert!(matches!(err, PlanError::Infeasible(_)), "{err}");
        let bad = |e: Event, field: &str| {
            let err = plan(&e, &calibration(200_000.0)).unwrap_err();
            assert_eq!(err.field(), Some(field), "{err}");
        };
        bad(
            Event {
                headroom: 0.0,
                ..e.clone()
            },
            "headroom",
        );
        bad(
            Event {
                headroom: 1.5,
                ..e.clone()
            },
            "headroom",
        );
        bad(event(50.0, &[]), "viewers");
        bad(event(50.0, &[("us", 0)]), "viewers");
        bad(
            Event {
                layer_mix: vec![0.5, 0.5],
                ..e.clone()
            },
            "layer_mix",
        );
        bad(
            Event {
                layer_mix: vec![0.5],
                ..e.clone()
            },
            "layer_mix",
        );
        bad(
            Event {
                presenters: 0,
                ..e.clone()
            },
            "presenters",
        );
        let mut version = calibration(200_000.0);
        version.version = 2;
        assert_eq!(plan(&e, &version).unwrap_err().field(), Some("version"));
    }

    #[test]
    fn calibration_json_round_trip_and_errors() {
        let c = calibration(200_000.0);
        let back = Calibration::from_json(&c.to_json(), "c.json").unwrap();
        assert_eq!(back, c);
        let text = c.to_json().replace("\"max_legs\"", "\"max_leg\"");
        let err = Calibration::from_json(&text, "c.json").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("c.json:"), "{msg}");
        assert!(msg.contains("forwarder.max_leg"), "{msg}");
        let text = c.to_json().replace("200000.0", "0.0");
        let err = Calibration::from_json(&text, "c.json").unwrap_err();
        assert_eq!(err.field(), Some("forwarder.egress_packets_per_s"), "{err}");
    }

    #[test]
    fn event_toml_errors_point_at_the_line() {
        let err = Event::from_toml_str(
            "presenters = 1\nheadroom = 7\n[viewers]\neu = 100\n",
            "e.toml",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string().split(": ").next(),
            Some("e.toml:2:1"),
            "{err}"
        );
        let err = Event::from_toml_str("[viewers]\neu = \"many\"\n", "e.toml").unwrap_err();
        assert_eq!(err.field(), Some("viewers.eu"), "{err}");
        assert!(err.to_string().starts_with("e.toml:2:6"), "{err}");
        let err = Event::from_toml_str("viewer = 1\n", "e.toml").unwrap_err();
        assert!(err.to_string().contains("unknown field `viewer`"), "{err}");
    }

    #[test]
    fn human_and_json() {
        let e = event(250.0, REGIONS);
        let p = plan(&e, &calibration(200_000.0)).unwrap();
        let text = p.human();
        for needle in [
            "Capacity plan: test (origin us, 1 presenter(s), 50,000 viewers)",
            "planned to 70%: 140,000 pkt/s",
            "up to 466 viewers",
            "total",
            "109",
            "us-0 [us/fwd-",
            "edge relays of",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        let v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        for k in [
            "origin",
            "regions",
            "total_forwarders",
            "total_relays",
            "tree",
        ] {
            assert!(!v[k].is_null(), "{k}");
        }
        for k in [
            "region",
            "viewers",
            "relays",
            "forwarders",
            "depth",
            "egress_pps_per_node",
        ] {
            assert!(!v["regions"][0][k].is_null(), "regions[0].{k}");
        }
        for k in [
            "id",
            "region",
            "parent",
            "viewers",
            "children",
            "egress_pps",
            "egress_bps",
        ] {
            assert!(v["tree"][1].get(k).is_some(), "tree[1].{k}");
        }
        let back: Plan = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(back, p);
    }

    /// Every example event in `loadgen/events/` loads and plans against a calibration
    /// of this machine's order of magnitude.
    #[test]
    fn example_events_plan() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("events");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let e = Event::load(&path).unwrap_or_else(|err| panic!("{err}"));
                let mut c = calibration(200_000.0);
                c.forwarder.egress_bits_per_s = 2e9;
                let p = plan(&e, &c).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
                check_invariants(&p, &e);
                assert!(p.total_forwarders > 0);
                seen += 1;
            }
        }
        assert!(seen >= 1, "expected example events in {}", dir.display());
    }
}
