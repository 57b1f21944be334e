//! What a run plays: a scenario file (TOML), its validation, and its expansion into the
//! meetings and participants to create.
//!
//! A scenario names meetings (`[[meetings]]`, everybody may publish) and webinars
//! (`[[webinars]]`, presenters publish, viewers watch through relay trees), the media each
//! publisher sends, how receivers behave, the network impairments to emulate per region,
//! the failures to inject, and, for `--local` runs, the deployment to start.
//!
//! Every table refuses unknown keys, so a typo is an error, and every error names the
//! file, the line and column, the field path (`meetings[1].participants`) and the reason:
//!
//! ```text
//! scenarios/smoke.toml:7:16: meetings[1].publishers: 12 publishers but only 10 participants
//! ```
//!
//! [`Scenario::expand`] turns the counts into a deterministic list of
//! [`PlannedMeeting`]s: the same file always gives the same meeting ids
//! (`m-0001`, `w-0001`), participant names, regions and roles.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use fanout_forwarder::sfu::MAX_ENCODINGS;
use fanout_forwarder::srtp::SrtpProfile;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The region participants are in when a scenario names none.
pub const DEFAULT_REGION: &str = "local";

/// The scenario and event file formats, in Markdown (for `docs/loadgen.md` and
/// `fanout-loadgen run --help-scenario`).
pub const SCENARIO_REFERENCE: &str = include_str!("../../docs/loadgen-reference.md");

/// Why a scenario cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{origin}: cannot read the scenario: {source}")]
    Io {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, a wrong type, a missing required field or an unknown key.
    #[error("{}", located(origin, *line, *column, field, reason))]
    Parse {
        origin: String,
        line: Option<usize>,
        column: Option<usize>,
        /// The field path, e.g. `meetings[1].participants` (empty for a syntax error
        /// outside any field).
        field: String,
        reason: String,
    },
    /// Well-formed but meaningless: more publishers than participants, a loss rate above
    /// 1, an impairment for a region nobody is in, ...
    #[error("{}", located(origin, *line, *column, field, reason))]
    Invalid {
        origin: String,
        line: Option<usize>,
        column: Option<usize>,
        field: String,
        reason: String,
    },
}

impl ScenarioError {
    /// The field path the error is about (`meetings[1].participants`), if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ScenarioError::Io { .. } => None,
            ScenarioError::Parse { field, .. } | ScenarioError::Invalid { field, .. } => {
                Some(field).filter(|f| !f.is_empty()).map(String::as_str)
            }
        }
    }

    /// The 1-based line of the source the error points at, if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ScenarioError::Io { .. } => None,
            ScenarioError::Parse { line, .. } | ScenarioError::Invalid { line, .. } => *line,
        }
    }

    /// The reason, without the location.
    pub fn reason(&self) -> String {
        match self {
            ScenarioError::Io { source, .. } => source.to_string(),
            ScenarioError::Parse { reason, .. } | ScenarioError::Invalid { reason, .. } => {
                reason.clone()
            }
        }
    }
}

pub(crate) fn located(
    origin: &str,
    line: Option<usize>,
    column: Option<usize>,
    field: &str,
    reason: &str,
) -> String {
    let mut out = origin.to_owned();
    if let Some(line) = line {
        out.push_str(&format!(":{line}"));
        if let Some(column) = column {
            out.push_str(&format!(":{column}"));
        }
    }
    out.push_str(": ");
    if !field.is_empty() {
        out.push_str(field);
        out.push_str(": ");
    }
    out.push_str(reason);
    out
}

/// A load-test scenario: what to create, what to send, what to break.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Name of the scenario, shown in reports. Default: the file name without `.toml`.
    pub name: String,
    /// How long media flows after the last join, in seconds. Required, above 0.
    pub duration_s: f64,
    /// Seconds at the start of `duration_s` whose latency is not measured: the last
    /// joiners' keyframe requests settle. Below `duration_s`; default
    /// [`Scenario::warmup_s`].
    pub warmup_s: Option<f64>,
    /// Seed of every random choice (payload sizes, loss, jitter, churn): the same seed
    /// replays the same run. Default 1.
    pub seed: u64,
    /// SRTP protection profile every participant asks for: `AEAD_AES_128_GCM` (default),
    /// `AEAD_AES_256_GCM`, `AES_CM_128_HMAC_SHA1_80` or `AES_CM_128_HMAC_SHA1_32`.
    #[serde(with = "profile_serde")]
    pub srtp_profile: SrtpProfile,
    /// Record every meeting and webinar (StartRecording once created, StopRecording at
    /// the end; `--local` also starts a recorder beside each forwarder). Each
    /// `[[meetings]]` or `[[webinars]]` entry may say otherwise with its own `record`.
    /// Default false.
    pub record: bool,
    /// How fast participants join.
    pub join: JoinSpec,
    /// Participants leaving and rejoining during the run.
    pub churn: ChurnSpec,
    /// Groups of identical meetings.
    pub meetings: Vec<MeetingSpec>,
    /// Groups of identical webinars.
    pub webinars: Vec<WebinarSpec>,
    /// What publishers send.
    pub media: MediaSpec,
    /// How receivers behave.
    pub receivers: ReceiverSpec,
    /// Network impairments, emulated in the load generator per region and direction.
    pub impairments: Vec<Impairment>,
    /// Processes to kill during the run (`--local` only).
    pub failures: Vec<FailureSpec>,
    /// The deployment `--local` starts on this machine.
    pub local: LocalSpec,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: String::new(),
            duration_s: 0.0,
            warmup_s: None,
            seed: 1,
            srtp_profile: SrtpProfile::AeadAes128Gcm,
            record: false,
            join: JoinSpec::default(),
            churn: ChurnSpec::default(),
            meetings: Vec::new(),
            webinars: Vec::new(),
            media: MediaSpec::default(),
            receivers: ReceiverSpec::default(),
            impairments: Vec::new(),
            failures: Vec::new(),
            local: LocalSpec::default(),
        }
    }
}

/// `[join]`: the join ramp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JoinSpec {
    /// Joins started per second, all meetings together. Default 200.
    pub rate_per_s: f64,
    /// Joins in flight at once (calls to `JoinMeeting` not yet answered). Default 64.
    pub concurrency: u32,
}

impl Default for JoinSpec {
    fn default() -> Self {
        JoinSpec {
            rate_per_s: 200.0,
            concurrency: 64,
        }
    }
}

/// `[churn]`: participants leaving and joining again while media flows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChurnSpec {
    /// How many participants leave (and rejoin) per minute: an integer is a count
    /// (`leave_rejoin_per_min = 20`), a float below 1 a fraction of all participants
    /// (`leave_rejoin_per_min = 0.05` is 5% per minute). Default 0: no churn.
    pub leave_rejoin_per_min: ChurnRate,
    /// Seconds a participant stays away before joining again. Default 5.
    pub rejoin_after_s: f64,
}

impl Default for ChurnSpec {
    fn default() -> Self {
        ChurnSpec {
            leave_rejoin_per_min: ChurnRate::Count(0),
            rejoin_after_s: 5.0,
        }
    }
}

/// A churn rate: a count per minute or a fraction of the participants per minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ChurnRate {
    /// This many participants per minute.
    Count(u64),
    /// This share of all participants per minute, in `0..1`.
    Fraction(f64),
}

impl ChurnRate {
    /// Participants leaving per minute out of `participants`.
    pub fn per_minute(self, participants: usize) -> f64 {
        match self {
            ChurnRate::Count(n) => n as f64,
            ChurnRate::Fraction(f) => f * participants as f64,
        }
    }
}

impl Serialize for ChurnRate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            ChurnRate::Count(n) => s.serialize_u64(n),
            ChurnRate::Fraction(f) => s.serialize_f64(f),
        }
    }
}

impl<'de> Deserialize<'de> for ChurnRate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RateVisitor;
        impl Visitor<'_> for RateVisitor {
            type Value = ChurnRate;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer count or a fraction below 1 (e.g. 0.05)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ChurnRate, E> {
                Ok(ChurnRate::Count(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ChurnRate, E> {
                u64::try_from(v)
                    .map(ChurnRate::Count)
                    .map_err(|_| E::custom(format!("a churn rate cannot be negative ({v})")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ChurnRate, E> {
                if (0.0..1.0).contains(&v) {
                    Ok(ChurnRate::Fraction(v))
                } else {
                    Err(E::custom(format!(
                        "{v} is not a fraction in 0..1; write an integer for a count per minute"
                    )))
                }
            }
        }
        d.deserialize_any(RateVisitor)
    }
}

/// `[[meetings]]`: `count` identical meetings where everybody may publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeetingSpec {
    /// How many meetings of this shape. Default 1.
    pub count: u32,
    /// Participants per meeting. Required, at least 1.
    pub participants: u32,
    /// How many of them publish a camera (simulcast video). Default: all of them.
    pub publishers: Option<u32>,
    /// How many of them share their screen: 0 (default) or 1, as a room has one share
    /// at a time.
    pub screen_sharers: u32,
    /// How many of them publish audio. Default: as many as `publishers`.
    pub audio_publishers: Option<u32>,
    /// Regions the participants are in, assigned round-robin (the first participant,
    /// who places the meeting, is in the first region). Default `["local"]`.
    pub regions: Vec<String>,
    /// Passcode the meetings are created with and participants join with.
    pub passcode: Option<String>,
    /// Record these meetings. Default: the scenario's `record`.
    pub record: Option<bool>,
}

impl Default for MeetingSpec {
    fn default() -> Self {
        MeetingSpec {
            count: 1,
            participants: 0,
            publishers: None,
            screen_sharers: 0,
            audio_publishers: None,
            regions: Vec::new(),
            passcode: None,
            record: None,
        }
    }
}

impl MeetingSpec {
    /// Camera publishers per meeting.
    pub fn camera_publishers(&self) -> u32 {
        self.publishers.unwrap_or(self.participants)
    }

    /// Audio publishers per meeting.
    pub fn audio_publishers(&self) -> u32 {
        self.audio_publishers
            .unwrap_or_else(|| self.camera_publishers())
    }
}

/// `[[webinars]]`: `count` identical webinars: presenters publish, viewers watch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebinarSpec {
    /// How many webinars of this shape. Default 1.
    pub count: u32,
    /// Presenters per webinar: each publishes audio and camera, and the screen when
    /// `screen_share` is set. Default 1.
    pub presenters: u32,
    /// Viewers per webinar. Required when `regions` is a list; with a table it defaults
    /// to the table's sum and, if given, must equal it.
    pub viewers: Option<u32>,
    /// Where the viewers are: a list (`["eu", "us"]`, viewers spread evenly
    /// round-robin) or a table of counts (`{ eu = 3000, us = 2000 }`). Default
    /// `["local"]`.
    pub regions: WebinarRegions,
    /// Region of the presenters (which places the webinar). Default: the first region.
    pub presenter_region: Option<String>,
    /// The first presenter also shares its screen (a room has one share at a time).
    /// Default false.
    pub screen_share: bool,
    /// Passcode the webinars are created with and participants join with.
    pub passcode: Option<String>,
    /// Record these webinars (the presenters' media, on the forwarder that holds the
    /// stage; relay nodes record nothing). Default: the scenario's `record`.
    pub record: Option<bool>,
}

impl Default for WebinarSpec {
    fn default() -> Self {
        WebinarSpec {
            count: 1,
            presenters: 1,
            viewers: None,
            regions: WebinarRegions::List(Vec::new()),
            presenter_region: None,
            screen_share: false,
            passcode: None,
            record: None,
        }
    }
}

impl WebinarSpec {
    /// Viewers per webinar (the table's sum when `viewers` is not given).
    pub fn viewer_count(&self) -> u32 {
        match (&self.regions, self.viewers) {
            (_, Some(v)) => v,
            (WebinarRegions::Counts(counts), None) => counts.iter().map(|(_, n)| *n).sum(),
            (WebinarRegions::List(_), None) => 0,
        }
    }

    /// The regions named, in file order (`["local"]` when none).
    pub fn region_names(&self) -> Vec<String> {
        let names: Vec<String> = match &self.regions {
            WebinarRegions::List(list) => list.clone(),
            WebinarRegions::Counts(counts) => counts.iter().map(|(r, _)| r.clone()).collect(),
        };
        if names.is_empty() {
            vec![DEFAULT_REGION.to_owned()]
        } else {
            names
        }
    }

    /// The presenters' region.
    pub fn presenter_region(&self) -> String {
        self.presenter_region
            .clone()
            .unwrap_or_else(|| self.region_names().swap_remove(0))
    }

    /// The region of each viewer, in order.
    fn viewer_regions(&self) -> Vec<String> {
        match &self.regions {
            WebinarRegions::Counts(counts) if !counts.is_empty() => counts
                .iter()
                .flat_map(|(r, n)| std::iter::repeat_n(r.clone(), *n as usize))
                .collect(),
            _ => {
                let names = self.region_names();
                (0..self.viewer_count() as usize)
                    .map(|i| names[i % names.len()].clone())
                    .collect()
            }
        }
    }
}

/// Where a webinar's viewers are.
#[derive(Debug, Clone, PartialEq)]
pub enum WebinarRegions {
    /// Viewers spread evenly over these regions.
    List(Vec<String>),
    /// So many viewers in each region, in file order.
    Counts(Vec<(String, u32)>),
}

impl Default for WebinarRegions {
    fn default() -> Self {
        WebinarRegions::List(Vec::new())
    }
}

impl Serialize for WebinarRegions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            WebinarRegions::List(list) => list.serialize(s),
            WebinarRegions::Counts(counts) => {
                let mut map = s.serialize_map(Some(counts.len()))?;
                for (region, n) in counts {
                    map.serialize_entry(region, n)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for WebinarRegions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RegionsVisitor;
        impl<'de> Visitor<'de> for RegionsVisitor {
            type Value = WebinarRegions;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of regions or a table of region = viewer count")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut list = Vec::new();
                while let Some(region) = seq.next_element::<String>()? {
                    list.push(region);
                }
                Ok(WebinarRegions::List(list))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut counts: Vec<(String, u32)> = Vec::new();
                while let Some((region, n)) = map.next_entry::<String, u32>()? {
                    if counts.iter().any(|(r, _)| *r == region) {
                        return Err(de::Error::custom(format!("region {region} twice")));
                    }
                    counts.push((region, n));
                }
                Ok(WebinarRegions::Counts(counts))
            }
        }
        d.deserialize_any(RegionsVisitor)
    }
}

/// `[media]`: what publishers send.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSpec {
    pub audio: AudioSpec,
    pub video: VideoSpec,
    pub screen: ScreenSpec,
}

/// `[media.audio]`: an Opus-like audio stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AudioSpec {
    /// Audio publishers send audio. Default true.
    pub enabled: bool,
    /// Packets per second (50 = 20 ms frames). Default 50.
    pub packets_per_s: u32,
    /// RTP payload bytes per packet. Default 100.
    pub payload_bytes: u32,
    /// Send the RFC 6464 audio-level header extension (the forwarder's active-speaker
    /// detection reads it). Default true.
    pub audio_level: bool,
}

impl Default for AudioSpec {
    fn default() -> Self {
        AudioSpec {
            enabled: true,
            packets_per_s: 50,
            payload_bytes: 100,
            audio_level: true,
        }
    }
}

/// One simulcast encoding.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulcastLayer {
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// Frames per second.
    pub fps: f64,
}

/// `[media.video]`: a VP8-like simulcast camera.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VideoSpec {
    /// Camera publishers send video. Default true.
    pub enabled: bool,
    /// Simulcast encodings, lowest first, 1 to 3. Default 150 kbit/s at 7.5 fps, 500 at
    /// 15, 1500 at 30.
    pub simulcast: Vec<SimulcastLayer>,
    /// Temporal layers in each encoding (1 to 4). Default 3.
    pub temporal_layers: u8,
    /// Seconds between periodic keyframes. Default 10.
    pub keyframe_interval_s: f64,
}

impl Default for VideoSpec {
    fn default() -> Self {
        VideoSpec {
            enabled: true,
            simulcast: vec![
                SimulcastLayer {
                    bitrate_kbps: 150,
                    fps: 7.5,
                },
                SimulcastLayer {
                    bitrate_kbps: 500,
                    fps: 15.0,
                },
                SimulcastLayer {
                    bitrate_kbps: 1500,
                    fps: 30.0,
                },
            ],
            temporal_layers: 3,
            keyframe_interval_s: 10.0,
        }
    }
}

/// `[media.screen]`: a screen share: few frames, bursts of packets on slide changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScreenSpec {
    /// Screen sharers send a screen track. Default true.
    pub enabled: bool,
    /// Frames per second. Default 5.
    pub fps: f64,
    /// Average bitrate in kbit/s. Default 800.
    pub bitrate_kbps: u32,
    /// Seconds between bursts (a slide change: a large frame). 0: no bursts. Default 10.
    pub burst_every_s: f64,
    /// Packets in one burst. Default 40.
    pub burst_packets: u32,
}

impl Default for ScreenSpec {
    fn default() -> Self {
        ScreenSpec {
            enabled: true,
            fps: 5.0,
            bitrate_kbps: 800,
            burst_every_s: 10.0,
            burst_packets: 40,
        }
    }
}

/// `[receivers]`: how every subscriber behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReceiverSpec {
    /// Ask for retransmission of lost video packets (RFC 4585 generic NACK). Default true.
    pub nack: bool,
    /// Ask for a keyframe when a frame cannot be decoded (RFC 4585 PLI). Default true.
    pub pli: bool,
    /// Milliseconds between receiver reports. Default 1000.
    pub rtcp_interval_ms: u32,
    /// Bandwidth estimate to announce (REMB), in kbit/s: the forwarder picks simulcast
    /// layers that fit it. Default: none sent.
    pub remb_kbps: Option<u32>,
    /// Estimates handed out in turn to the participants (in kbit/s, instead of
    /// `remb_kbps`): receivers on different downlinks, each to get its own layers.
    pub remb_kbps_mix: Vec<u32>,
    /// Jitter buffer bounds in milliseconds: the playout delay adapts between them.
    /// Defaults 20 and 400.
    pub jitter_buffer_min_ms: u32,
    pub jitter_buffer_max_ms: u32,
}

impl Default for ReceiverSpec {
    fn default() -> Self {
        ReceiverSpec {
            nack: true,
            pli: true,
            rtcp_interval_ms: 1000,
            remb_kbps: None,
            remb_kbps_mix: Vec::new(),
            jitter_buffer_min_ms: 20,
            jitter_buffer_max_ms: 400,
        }
    }
}

/// Which way an impairment applies, seen from the participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Participant to forwarder.
    Up,
    /// Forwarder to participant.
    Down,
    Both,
}

/// `[[impairments]]`: a network path to emulate for the participants of a region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Impairment {
    /// The region whose participants suffer it, or `"*"` for all. Default `"*"`.
    pub region: String,
    /// `"up"`, `"down"` or `"both"`. Default `"both"`.
    pub direction: Direction,
    /// Probability that a packet is dropped, 0 to 1. Default 0.
    pub loss: f64,
    /// Added one-way delay in milliseconds. Default 0.
    pub delay_ms: f64,
    /// Random extra delay, uniform in 0 to `jitter_ms` milliseconds. Default 0.
    pub jitter_ms: f64,
    /// Probability that a packet is held back behind the next one, 0 to 1. Default 0.
    pub reorder: f64,
}

impl Default for Impairment {
    fn default() -> Self {
        Impairment {
            region: "*".to_owned(),
            direction: Direction::Both,
            loss: 0.0,
            delay_ms: 0.0,
            jitter_ms: 0.0,
            reorder: 0.0,
        }
    }
}

impl Impairment {
    /// Applies to participants of `region`.
    pub fn applies_to(&self, region: &str) -> bool {
        self.region == "*" || self.region == region
    }
}

/// What a failure kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kill {
    Forwarder,
    Control,
    /// A forwarder that runs webinar relay nodes and feeds no other relay: a leaf of a
    /// relay tree, so that only its own viewers lose media. The one serving the most
    /// participants, found from the forwarders' relay-link metrics.
    Relay,
}

/// Which process a failure kills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureTarget {
    /// By id (`target = "fwd-2"`).
    Id(String),
    /// By index among the `[local]` processes, from 0 (`target = 1`).
    Index(usize),
}

impl Serialize for FailureTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FailureTarget::Id(id) => s.serialize_str(id),
            FailureTarget::Index(i) => s.serialize_u64(*i as u64),
        }
    }
}

impl<'de> Deserialize<'de> for FailureTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TargetVisitor;
        impl Visitor<'_> for TargetVisitor {
            type Value = FailureTarget;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a process id (string) or index (integer from 0)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FailureTarget, E> {
                usize::try_from(v)
                    .map(FailureTarget::Index)
                    .map_err(|_| E::custom("index too large"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FailureTarget, E> {
                usize::try_from(v)
                    .map(FailureTarget::Index)
                    .map_err(|_| E::custom(format!("an index cannot be negative ({v})")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FailureTarget, E> {
                Ok(FailureTarget::Id(v.to_owned()))
            }
        }
        d.deserialize_any(TargetVisitor)
    }
}

/// `[[failures]]`: kill a process during the run and measure the recovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureSpec {
    /// Seconds after media starts. Required, below `duration_s`.
    pub at_s: f64,
    /// `"forwarder"`, `"control"` or `"relay"` (a leaf relay forwarder). Required.
    pub kill: Kill,
    /// Which one: an id (`"fwd-2"`) or an index into the `[local]` processes. Default:
    /// the forwarder serving the most participants (for `control`, the last instance: the
    /// forwarders talk to the first).
    #[serde(default)]
    pub target: Option<FailureTarget>,
}

/// `[local]`: the deployment `--local` starts on this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalSpec {
    /// Forwarder processes. Default 1.
    pub forwarders: u32,
    /// Regions the forwarders register in, assigned round-robin. Default: every region
    /// the scenario names.
    pub regions: Vec<String>,
    /// Shards (cores) per forwarder. Default 1.
    pub shards: u32,
    /// Participant legs one forwarder accepts. Default: the forwarder's own (1,000), or
    /// enough for one full relay node and a small stage if that is more.
    pub max_legs: Option<u32>,
    /// Put each region (of `regions` and of the participants) in its own network
    /// namespace, with veth pairs to the root namespace and between regions; the region's
    /// forwarders and participants' sockets live there (see [`crate::netns`]). Needs root.
    /// Default false: every region shares loopback.
    pub netns: bool,
    /// Viewers per webinar relay node. Default 1000.
    pub max_viewers_per_relay: u32,
    /// Control-plane instances; 2 or more share an etcd store. Default 1 (memory store).
    pub controls: u32,
    /// How long the control plane keeps a silent forwarder registered, in milliseconds:
    /// the detection part of failover time. Default 3000 (the control plane's default).
    pub lease_ttl_ms: u32,
    /// Start a `fanout-recorder` beside each forwarder (and give the forwarder
    /// `--recorder-socket`). Default: when the scenario records. `true` without recording
    /// is the deployment as it runs in production, recorder idle: the baseline that
    /// isolates what recording a meeting costs from what deploying a recorder costs.
    pub recorders: Option<bool>,
}

impl Default for LocalSpec {
    fn default() -> Self {
        LocalSpec {
            forwarders: 1,
            regions: Vec::new(),
            shards: 1,
            max_legs: None,
            netns: false,
            max_viewers_per_relay: 1000,
            controls: 1,
            lease_ttl_ms: 3000,
            recorders: None,
        }
    }
}

/// What a participant is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Publishes in a webinar.
    Presenter,
    /// A meeting participant (publishes or not, as planned).
    Attendee,
    /// Watches a webinar.
    Viewer,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Presenter => "presenter",
            Role::Attendee => "attendee",
            Role::Viewer => "viewer",
        })
    }
}

/// One participant to join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedParticipant {
    /// Display name, unique in the run: `m-0003-p0007`, `w-0001-presenter1`,
    /// `w-0001-v00042`.
    pub name: String,
    pub region: String,
    pub role: Role,
    /// What it publishes (already off when the media kind is disabled).
    pub audio: bool,
    pub camera: bool,
    pub screen: bool,
}

impl PlannedParticipant {
    /// Publishes anything.
    pub fn publishes(&self) -> bool {
        self.audio || self.camera || self.screen
    }
}

/// One meeting or webinar to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedMeeting {
    /// `m-0001`, `m-0002`, ... for meetings, `w-0001`, ... for webinars.
    pub id: String,
    pub webinar: bool,
    pub passcode: Option<String>,
    /// Recorded: the run starts recording it once created and stops at the end.
    pub record: bool,
    /// In join order (the first places the meeting).
    pub participants: Vec<PlannedParticipant>,
}

impl PlannedMeeting {
    /// Whether participant `index` should receive any media: somebody else in the
    /// meeting publishes. (A lone publisher expects nothing.)
    pub fn expects_media(&self, index: usize) -> bool {
        self.participants
            .iter()
            .enumerate()
            .any(|(i, p)| i != index && p.publishes())
    }
}

/// A scenario's meetings and participants, spelt out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expanded {
    pub meetings: Vec<PlannedMeeting>,
    pub total_participants: usize,
}

/// Where and why a TOML file did not deserialize.
#[derive(Debug)]
pub(crate) struct TomlError {
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The field's path (`meetings[1].participants`); empty for the whole file.
    pub field: String,
    pub reason: String,
}

/// Deserialize a TOML file, locating an error by toml's span or, when it has none (a
/// missing field), by the field's path.
pub(crate) fn deserialize_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, TomlError> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        let inner = e.into_inner();
        let (line, column) = match inner.span() {
            Some(span) => {
                let (l, c) = line_col(text, span.start);
                (Some(l), Some(c))
            }
            None => locate(text, &field).unzip(),
        };
        TomlError {
            line,
            column,
            field,
            reason: inner
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
        }
    })
}

/// The name of something read from `origin`: the file name without its extension.
pub(crate) fn name_from_origin(origin: &str) -> String {
    Path::new(origin)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| origin.to_owned())
}

impl Scenario {
    /// The warm-up in force: `warmup_s`, or 2 s (a quarter of a shorter run).
    pub fn warmup_s(&self) -> f64 {
        self.warmup_s.unwrap_or((self.duration_s / 4.0).min(2.0))
    }

    /// Read and validate a scenario file.
    pub fn load(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            origin: origin.clone(),
            source,
        })?;
        Scenario::from_toml_str(&text, &origin)
    }

    /// Parse and validate a scenario; `origin` (a file name) prefixes error messages and
    /// names the scenario when it has no `name`.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let mut scenario: Scenario = deserialize_toml(text).map_err(|e| ScenarioError::Parse {
            origin: origin.to_owned(),
            line: e.line,
            column: e.column,
            field: e.field,
            reason: e.reason,
        })?;
        if scenario.name.is_empty() {
            scenario.name = name_from_origin(origin);
        }
        if let Err((field, mut reason)) = scenario.check() {
            let (line, column) = locate(text, &field).unzip();
            if field == "duration_s" && line.is_none() {
                // Defaults fill every field; the one that has none worth having is
                // reported as missing rather than as 0.
                reason = "missing: how many seconds media flows (duration_s = 30)".to_owned();
            }
            return Err(ScenarioError::Invalid {
                origin: origin.to_owned(),
                line,
                column,
                field,
                reason,
            });
        }
        Ok(scenario)
    }

    /// Validate a scenario built in code (from command-line flags); `origin` prefixes
    /// the error.
    pub fn validate(&self, origin: &str) -> Result<(), ScenarioError> {
        self.check()
            .map_err(|(field, reason)| ScenarioError::Invalid {
                origin: origin.to_owned(),
                line: None,
                column: None,
                field,
                reason,
            })
    }

    /// Every region participants are in, in order of first mention.
    pub fn regions(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |r: &str| {
            if !out.iter().any(|o| o == r) {
                out.push(r.to_owned());
            }
        };
        for m in &self.meetings {
            if m.regions.is_empty() {
                add(DEFAULT_REGION);
            }
            m.regions.iter().for_each(|r| add(r));
        }
        for w in &self.webinars {
            if let Some(r) = &w.presenter_region {
                add(r);
            }
            w.region_names().iter().for_each(|r| add(r));
        }
        out
    }

    /// Regions the `[local]` forwarders register in.
    pub fn local_regions(&self) -> Vec<String> {
        if self.local.regions.is_empty() {
            let named = self.regions();
            if named.is_empty() {
                vec![DEFAULT_REGION.to_owned()]
            } else {
                named
            }
        } else {
            self.local.regions.clone()
        }
    }

    /// Whether `--local` starts recorders: `[local] recorders`, or whether anything is
    /// recorded.
    pub fn local_recorders(&self) -> bool {
        self.local.recorders.unwrap_or_else(|| self.records())
    }

    /// Whether any meeting or webinar is recorded.
    pub fn records(&self) -> bool {
        self.meetings
            .iter()
            .any(|m| m.record.unwrap_or(self.record))
            || self
                .webinars
                .iter()
                .any(|w| w.record.unwrap_or(self.record))
    }

    /// Participants over all meetings and webinars.
    pub fn total_participants(&self) -> usize {
        let meetings: usize = self
            .meetings
            .iter()
            .map(|m| m.count as usize * m.participants as usize)
            .sum();
        let webinars: usize = self
            .webinars
            .iter()
            .map(|w| w.count as usize * (w.presenters as usize + w.viewer_count() as usize))
            .sum();
        meetings + webinars
    }

    /// The meetings and participants to create, deterministically: meetings first
    /// (`m-0001`...), then webinars (`w-0001`...), each in file order.
    pub fn expand(&self) -> Expanded {
        let audio_on = self.media.audio.enabled;
        let video_on = self.media.video.enabled;
        let screen_on = self.media.screen.enabled;
        let mut meetings = Vec::new();
        let mut n = 0;
        for spec in &self.meetings {
            let regions = if spec.regions.is_empty() {
                vec![DEFAULT_REGION.to_owned()]
            } else {
                spec.regions.clone()
            };
            for _ in 0..spec.count {
                n += 1;
                let id = format!("m-{n:04}");
                let participants = (0..spec.participants)
                    .map(|i| PlannedParticipant {
                        name: format!("{id}-p{:04}", i + 1),
                        region: regions[i as usize % regions.len()].clone(),
                        role: Role::Attendee,
                        audio: audio_on && i < spec.audio_publishers(),
                        camera: video_on && i < spec.camera_publishers(),
                        screen: screen_on && i < spec.screen_sharers,
                    })
                    .collect();
                meetings.push(PlannedMeeting {
                    id,
                    webinar: false,
                    passcode: spec.passcode.clone(),
                    record: spec.record.unwrap_or(self.record),
                    participants,
                });
            }
        }
        let mut n = 0;
        for spec in &self.webinars {
            let presenter_region = spec.presenter_region();
            let viewer_regions = spec.viewer_regions();
            for _ in 0..spec.count {
                n += 1;
                let id = format!("w-{n:04}");
                let mut participants =
                    Vec::with_capacity(spec.presenters as usize + viewer_regions.len());
                for i in 0..spec.presenters {
                    participants.push(PlannedParticipant {
                        name: format!("{id}-presenter{}", i + 1),
                        region: presenter_region.clone(),
                        role: Role::Presenter,
                        audio: audio_on,
                        camera: video_on,
                        screen: screen_on && spec.screen_share && i == 0,
                    });
                }
                for (i, region) in viewer_regions.iter().enumerate() {
                    participants.push(PlannedParticipant {
                        name: format!("{id}-v{:05}", i + 1),
                        region: region.clone(),
                        role: Role::Viewer,
                        audio: false,
                        camera: false,
                        screen: false,
                    });
                }
                meetings.push(PlannedMeeting {
                    id,
                    webinar: true,
                    passcode: spec.passcode.clone(),
                    record: spec.record.unwrap_or(self.record),
                    participants,
                });
            }
        }
        let total_participants = meetings.iter().map(|m| m.participants.len()).sum();
        Expanded {
            meetings,
            total_participants,
        }
    }

    /// Semantic checks: `Err((field path, reason))` for the first problem.
    fn check(&self) -> Result<(), (String, String)> {
        fn fail<T>(
            field: impl Into<String>,
            reason: impl Into<String>,
        ) -> Result<T, (String, String)> {
            Err((field.into(), reason.into()))
        }
        fn fraction(field: String, v: f64) -> Result<(), (String, String)> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                fail(field, format!("{v} is not a probability between 0 and 1"))
            }
        }
        fn non_negative(field: String, v: f64) -> Result<(), (String, String)> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                fail(field, format!("{v} must be a finite number of at least 0"))
            }
        }
        fn positive(field: String, v: f64) -> Result<(), (String, String)> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                fail(field, format!("{v} must be above 0"))
            }
        }
        fn region_names(field: &str, regions: &[String]) -> Result<(), (String, String)> {
            for (i, r) in regions.iter().enumerate() {
                if r.trim().is_empty() {
                    return fail(format!("{field}[{i}]"), "a region name cannot be empty");
                }
                if r == "*" {
                    return fail(format!("{field}[{i}]"), "\"*\" is not a region name");
                }
            }
            Ok(())
        }

        if self.name.trim().is_empty() {
            return fail("name", "the scenario needs a name");
        }
        if !(self.duration_s.is_finite() && self.duration_s > 0.0) {
            return fail(
                "duration_s",
                format!("the run must last more than 0 s (got {})", self.duration_s),
            );
        }
        if let Some(warmup) = self.warmup_s {
            non_negative("warmup_s".into(), warmup)?;
            if warmup >= self.duration_s {
                return fail(
                    "warmup_s",
                    format!(
                        "{warmup} s of warm-up leave nothing of the run to measure (duration_s = {})",
                        self.duration_s
                    ),
                );
            }
        }
        positive("join.rate_per_s".into(), self.join.rate_per_s)?;
        if self.join.concurrency == 0 {
            return fail(
                "join.concurrency",
                "at least 1 join must be allowed in flight",
            );
        }
        non_negative("churn.rejoin_after_s".into(), self.churn.rejoin_after_s)?;

        for (i, m) in self.meetings.iter().enumerate() {
            let f = |k: &str| format!("meetings[{i}].{k}");
            if m.count == 0 {
                return fail(
                    f("count"),
                    "count must be at least 1 (remove the entry instead)",
                );
            }
            if m.participants == 0 {
                return fail(f("participants"), "a meeting needs at least 1 participant");
            }
            if m.camera_publishers() > m.participants {
                return fail(
                    f("publishers"),
                    format!(
                        "{} publishers but only {} participants",
                        m.camera_publishers(),
                        m.participants
                    ),
                );
            }
            if m.audio_publishers() > m.participants {
                return fail(
                    f("audio_publishers"),
                    format!(
                        "{} audio publishers but only {} participants",
                        m.audio_publishers(),
                        m.participants
                    ),
                );
            }
            if m.participants > fanout_control::domain::MAX_MEETING_PARTICIPANTS {
                return fail(
                    f("participants"),
                    format!(
                        "the control plane holds at most {} participants in a meeting (a \
                         larger audience is a webinar)",
                        fanout_control::domain::MAX_MEETING_PARTICIPANTS
                    ),
                );
            }
            if m.screen_sharers > 1 {
                return fail(
                    f("screen_sharers"),
                    format!(
                        "{} screen sharers, but a room has one share at a time",
                        m.screen_sharers
                    ),
                );
            }
            region_names(&f("regions"), &m.regions)?;
        }

        for (i, w) in self.webinars.iter().enumerate() {
            let f = |k: &str| format!("webinars[{i}].{k}");
            if w.count == 0 {
                return fail(
                    f("count"),
                    "count must be at least 1 (remove the entry instead)",
                );
            }
            if w.presenters == 0 {
                return fail(f("presenters"), "a webinar needs at least 1 presenter");
            }
            match &w.regions {
                WebinarRegions::List(list) => {
                    region_names(&f("regions"), list)?;
                    if w.viewers.is_none() {
                        return fail(
                            f("viewers"),
                            "viewers is required when regions is a list (or give regions \
                             as a table of counts)",
                        );
                    }
                }
                WebinarRegions::Counts(counts) => {
                    if counts.is_empty() {
                        return fail(f("regions"), "the table of viewers per region is empty");
                    }
                    for (region, _) in counts {
                        if region.trim().is_empty() || region == "*" {
                            return fail(f("regions"), format!("{region:?} is not a region name"));
                        }
                    }
                    let sum: u64 = counts.iter().map(|(_, n)| u64::from(*n)).sum();
                    if let Some(v) = w.viewers {
                        if u64::from(v) != sum {
                            return fail(
                                f("viewers"),
                                format!("{v} viewers, but the regions table adds up to {sum}"),
                            );
                        }
                    } else if sum > u64::from(u32::MAX) {
                        return fail(f("regions"), "too many viewers");
                    }
                }
            }
            if let Some(r) = &w.presenter_region {
                if r.trim().is_empty() || r == "*" {
                    return fail(f("presenter_region"), format!("{r:?} is not a region name"));
                }
            }
        }

        if self.total_participants() == 0 {
            return fail(
                "meetings",
                "the scenario has no participants: add [[meetings]] or [[webinars]]",
            );
        }

        let audio = &self.media.audio;
        if audio.enabled {
            if !(1..=1000).contains(&audio.packets_per_s) {
                return fail(
                    "media.audio.packets_per_s",
                    format!("{} is not between 1 and 1000", audio.packets_per_s),
                );
            }
            if !(1..=1200).contains(&audio.payload_bytes) {
                return fail(
                    "media.audio.payload_bytes",
                    format!("{} is not between 1 and 1200", audio.payload_bytes),
                );
            }
        }
        let video = &self.media.video;
        if video.enabled {
            if video.simulcast.is_empty() || video.simulcast.len() > MAX_ENCODINGS {
                return fail(
                    "media.video.simulcast",
                    format!(
                        "a camera has 1 to {MAX_ENCODINGS} simulcast layers, not {}",
                        video.simulcast.len()
                    ),
                );
            }
            for (i, layer) in video.simulcast.iter().enumerate() {
                if layer.bitrate_kbps == 0 {
                    return fail(
                        format!("media.video.simulcast[{i}].bitrate_kbps"),
                        "a layer's bitrate must be above 0",
                    );
                }
                if !(layer.fps.is_finite() && layer.fps > 0.0 && layer.fps <= 120.0) {
                    return fail(
                        format!("media.video.simulcast[{i}].fps"),
                        format!("{} is not a frame rate in (0, 120]", layer.fps),
                    );
                }
                if i > 0 && layer.bitrate_kbps <= video.simulcast[i - 1].bitrate_kbps {
                    return fail(
                        format!("media.video.simulcast[{i}].bitrate_kbps"),
                        "layers go lowest first: each bitrate must exceed the previous one",
                    );
                }
            }
            if !(1..=4).contains(&video.temporal_layers) {
                return fail(
                    "media.video.temporal_layers",
                    format!("{} is not between 1 and 4", video.temporal_layers),
                );
            }
            positive(
                "media.video.keyframe_interval_s".into(),
                video.keyframe_interval_s,
            )?;
        }
        let screen = &self.media.screen;
        if screen.enabled {
            if !(screen.fps.is_finite() && screen.fps > 0.0 && screen.fps <= 60.0) {
                return fail(
                    "media.screen.fps",
                    format!("{} is not a frame rate in (0, 60]", screen.fps),
                );
            }
            if screen.bitrate_kbps == 0 {
                return fail("media.screen.bitrate_kbps", "the bitrate must be above 0");
            }
            non_negative("media.screen.burst_every_s".into(), screen.burst_every_s)?;
        }

        let rx = &self.receivers;
        if rx.rtcp_interval_ms < 10 {
            return fail(
                "receivers.rtcp_interval_ms",
                format!("{} ms is too short: at least 10", rx.rtcp_interval_ms),
            );
        }
        if rx.remb_kbps == Some(0) {
            return fail(
                "receivers.remb_kbps",
                "an estimate of 0 kbit/s stops all video",
            );
        }
        if let Some(i) = rx.remb_kbps_mix.iter().position(|&kbps| kbps == 0) {
            return fail(
                format!("receivers.remb_kbps_mix[{i}]"),
                "an estimate of 0 kbit/s stops all video",
            );
        }
        if rx.remb_kbps.is_some() && !rx.remb_kbps_mix.is_empty() {
            return fail(
                "receivers.remb_kbps_mix",
                "give remb_kbps (every receiver) or remb_kbps_mix (in turn), not both",
            );
        }
        if rx.jitter_buffer_min_ms > rx.jitter_buffer_max_ms {
            return fail(
                "receivers.jitter_buffer_min_ms",
                format!(
                    "{} ms is above jitter_buffer_max_ms ({} ms)",
                    rx.jitter_buffer_min_ms, rx.jitter_buffer_max_ms
                ),
            );
        }

        let mut known: BTreeSet<String> = self.regions().into_iter().collect();
        known.extend(self.local.regions.iter().cloned());
        for (i, imp) in self.impairments.iter().enumerate() {
            let f = |k: &str| format!("impairments[{i}].{k}");
            if imp.region != "*" && !known.contains(&imp.region) {
                let names: Vec<&str> = known.iter().map(String::as_str).collect();
                return fail(
                    f("region"),
                    format!(
                        "no participant is in region {:?} (regions: {}; or \"*\" for all)",
                        imp.region,
                        names.join(", ")
                    ),
                );
            }
            fraction(f("loss"), imp.loss)?;
            fraction(f("reorder"), imp.reorder)?;
            non_negative(f("delay_ms"), imp.delay_ms)?;
            non_negative(f("jitter_ms"), imp.jitter_ms)?;
        }

        for (i, failure) in self.failures.iter().enumerate() {
            let f = |k: &str| format!("failures[{i}].{k}");
            non_negative(f("at_s"), failure.at_s)?;
            if failure.at_s >= self.duration_s {
                return fail(
                    f("at_s"),
                    format!(
                        "{} s is not before the end of the run (duration_s = {})",
                        failure.at_s, self.duration_s
                    ),
                );
            }
            let processes = match failure.kill {
                Kill::Forwarder => self.local.forwarders,
                Kill::Control => self.local.controls,
                Kill::Relay if failure.target.is_some() => {
                    return fail(
                        f("target"),
                        "the run picks the relay to kill; name a forwarder with kill = \"forwarder\"",
                    );
                }
                Kill::Relay => self.local.forwarders,
            };
            match &failure.target {
                Some(FailureTarget::Index(n)) if *n >= processes as usize => {
                    return fail(
                        f("target"),
                        format!(
                            "index {n} is out of range: [local] starts {processes} {}",
                            match failure.kill {
                                Kill::Forwarder | Kill::Relay => "forwarder(s)",
                                Kill::Control => "control instance(s)",
                            }
                        ),
                    );
                }
                Some(FailureTarget::Id(id)) if id.trim().is_empty() => {
                    return fail(f("target"), "an empty id");
                }
                _ => {}
            }
        }

        let local = &self.local;
        if local.forwarders == 0 {
            return fail("local.forwarders", "at least 1 forwarder");
        }
        if local.shards == 0 {
            return fail("local.shards", "at least 1 shard per forwarder");
        }
        if local.controls == 0 {
            return fail("local.controls", "at least 1 control-plane instance");
        }
        if local.max_legs == Some(0) {
            return fail("local.max_legs", "a forwarder must accept at least 1 leg");
        }
        if local.max_viewers_per_relay == 0 {
            return fail(
                "local.max_viewers_per_relay",
                "a relay must seat at least 1 viewer",
            );
        }
        if local.lease_ttl_ms < 100 {
            return fail(
                "local.lease_ttl_ms",
                format!(
                    "{} ms is too short: heartbeats could not keep up (at least 100)",
                    local.lease_ttl_ms
                ),
            );
        }
        region_names("local.regions", &local.regions)?;
        Ok(())
    }
}

/// Serde for [`SrtpProfile`] as its SDES name.
mod profile_serde {
    use super::*;

    pub fn serialize<S: Serializer>(p: &SrtpProfile, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SrtpProfile, D::Error> {
        let name = String::deserialize(d)?;
        SrtpProfile::from_str(&name).map_err(|_| {
            let names: Vec<&str> = SrtpProfile::ALL.iter().map(|p| p.name()).collect();
            de::Error::custom(format!(
                "unknown SRTP profile {name:?}; expected one of {}",
                names.join(", ")
            ))
        })
    }
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    // Back off to a char boundary: a span never splits a character, but be safe.
    let offset = (0..=offset)
        .rev()
        .find(|o| text.is_char_boundary(*o))
        .unwrap_or(0);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Seg {
    Key(String),
    Index(usize),
}

/// `meetings[1].participants` → [Key(meetings), Index(1), Key(participants)].
fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                segs.push(Seg::Key(rest[..open].to_owned()));
            }
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else {
                    break;
                };
                if let Ok(i) = stripped[..close].parse() {
                    segs.push(Seg::Index(i));
                }
                rest = &stripped[close + 1..];
            }
        } else {
            segs.push(Seg::Key(rest.to_owned()));
        }
    }
    segs
}

fn key_parts(key: &str) -> Vec<String> {
    key.split('.')
        .map(|k| k.trim().trim_matches('"').trim_matches('\'').to_owned())
        .collect()
}

/// Best-effort position (1-based line, column) of the field `path` in a TOML source:
/// follows `[table]` and `[[array]]` headers and `key =` lines, and looks inside inline
/// tables and arrays for the rest. Falls back to the longest prefix of the path found
/// (for a field left at its default: the table it belongs to).
pub(crate) fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let target = parse_path(path);
    if target.is_empty() {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut table: Vec<Seg> = Vec::new();
    let mut array_counts: HashMap<Vec<Seg>, usize> = HashMap::new();
    // (matched segments, line index, column, segments the line's path has)
    let mut best: Option<(usize, usize, usize, usize)> = None;
    let mut consider = |segs: &[Seg], line: usize, column: usize| {
        let matched = segs.iter().zip(&target).take_while(|(a, b)| a == b).count();
        // A line deeper than the target that diverges is no better than its parent.
        if matched == 0 || (matched < segs.len() && matched < target.len()) {
            return;
        }
        if best.is_none_or(|(m, ..)| matched > m) {
            best = Some((matched, line, column, segs.len()));
        }
    };
    // Resolve a header's dotted keys, indexing into arrays of tables seen so far.
    let resolve = |keys: &[String], counts: &HashMap<Vec<Seg>, usize>| {
        let mut segs = Vec::new();
        for k in keys {
            segs.push(Seg::Key(k.clone()));
            if let Some(n) = counts.get(&segs) {
                segs.push(Seg::Index(n - 1));
            }
        }
        segs
    };
    for (n, raw) in lines.iter().enumerate() {
        let trimmed = raw.trim_start();
        let indent = raw.len() - trimmed.len();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        if let Some(inner) = trimmed.strip_prefix("[[") {
            let name = inner.split("]]").next().unwrap_or("");
            let keys = key_parts(name);
            let (last, parents) = keys.split_last()?;
            let mut segs = resolve(parents, &array_counts);
            segs.push(Seg::Key(last.clone()));
            let count = array_counts.entry(segs.clone()).or_insert(0);
            *count += 1;
            segs.push(Seg::Index(*count - 1));
            consider(&segs, n, indent + 1);
            table = segs;
            continue;
        }
        if let Some(inner) = trimmed.strip_prefix('[') {
            let name = inner.split(']').next().unwrap_or("");
            table = resolve(&key_parts(name), &array_counts);
            consider(&table, n, indent + 1);
            continue;
        }
        let Some(eq) = trimmed.find('=') else {
            continue;
        };
        let mut segs = table.clone();
        segs.extend(key_parts(&trimmed[..eq]).into_iter().map(Seg::Key));
        consider(&segs, n, indent + 1);
    }
    let (matched, line, column, _) = best?;
    if matched == target.len() {
        return Some((line + 1, column));
    }
    // Look inside the value for the rest of the path: `{ key = ... }` and `[{...}, {...}]`.
    refine(&lines, line, &target[matched..]).or(Some((line + 1, column)))
}

/// Find the remaining segments of a path inside an inline value starting on `line`.
fn refine(lines: &[&str], line: usize, rest: &[Seg]) -> Option<(usize, usize)> {
    // The value extends to the next header or the end of the file.
    let end = lines[line + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .map_or(lines.len(), |p| line + 1 + p);
    let mut pos = (line, lines[line].find('=').map_or(0, |i| i + 1));
    for seg in rest {
        match seg {
            Seg::Index(i) => {
                // The (i+1)-th element: count `{` openings (arrays of inline tables).
                let mut seen = 0;
                let mut found = None;
                'outer: for (l, text) in lines.iter().enumerate().take(end).skip(pos.0) {
                    let from = if l == pos.0 { pos.1 } else { 0 };
                    for (c, ch) in text.char_indices().filter(|(c, _)| *c >= from) {
                        if ch == '{' {
                            if seen == *i {
                                found = Some((l, c + 1));
                                break 'outer;
                            }
                            seen += 1;
                        }
                    }
                }
                pos = found?;
            }
            Seg::Key(k) => {
                let mut found = None;
                for (l, text) in lines.iter().enumerate().take(end).skip(pos.0) {
                    let from = if l == pos.0 { pos.1 } else { 0 };
                    if let Some(c) = find_key(&text[from.min(text.len())..], k) {
                        found = Some((l, from + c));
                        break;
                    }
                }
                pos = found?;
            }
        }
    }
    let col = lines[pos.0][..pos.1.min(lines[pos.0].len())]
        .chars()
        .count()
        + 1;
    Some((pos.0 + 1, col))
}

/// Byte offset of `key` used as a key (`key =`) in `text`.
fn find_key(text: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find(key) {
        let at = from + i;
        let before_ok = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-'));
        let after = text[at + key.len()..].trim_start();
        if before_ok && after.starts_with('=') {
            return Some(at);
        }
        from = at + key.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::from_toml_str(text, "test.toml")
    }

    const SMALL: &str = r#"
name = "small"
duration_s = 5

[[meetings]]
count = 2
participants = 3
publishers = 2
regions = ["eu", "us"]

[[meetings]]
participants = 10
publishers = 4
screen_sharers = 1
"#;

    #[test]
    fn defaults_apply() {
        let s = parse(SMALL).unwrap();
        assert_eq!(s.name, "small");
        assert_eq!(s.seed, 1);
        assert_eq!(s.srtp_profile, SrtpProfile::AeadAes128Gcm);
        assert_eq!(s.join.rate_per_s, 200.0);
        assert_eq!(s.join.concurrency, 64);
        assert_eq!(s.media.audio.packets_per_s, 50);
        assert_eq!(s.media.video.simulcast.len(), 3);
        assert_eq!(s.receivers.jitter_buffer_max_ms, 400);
        assert_eq!(s.local.max_viewers_per_relay, 1000);
        assert_eq!(s.meetings[1].count, 1);
        assert_eq!(s.meetings[1].audio_publishers(), 4);
        assert_eq!(s.regions(), vec!["eu", "us", "local"]);
        assert_eq!(s.local_regions(), vec!["eu", "us", "local"]);
    }

    #[test]
    fn name_defaults_to_file_stem() {
        let s = Scenario::from_toml_str(
            "duration_s = 1\n[[meetings]]\nparticipants = 2\n",
            "scenarios/tiny.toml",
        )
        .unwrap();
        assert_eq!(s.name, "tiny");
    }

    #[test]
    fn expand_is_deterministic_and_complete() {
        let s = parse(SMALL).unwrap();
        let e = s.expand();
        assert_eq!(e, s.expand());
        assert_eq!(e.total_participants, 16);
        let ids: Vec<&str> = e.meetings.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["m-0001", "m-0002", "m-0003"]);
        let m1 = &e.meetings[0];
        assert_eq!(m1.participants[0].name, "m-0001-p0001");
        let regions: Vec<&str> = m1.participants.iter().map(|p| p.region.as_str()).collect();
        assert_eq!(regions, ["eu", "us", "eu"]);
        let cams: Vec<bool> = m1.participants.iter().map(|p| p.camera).collect();
        assert_eq!(cams, [true, true, false]);
        assert!(m1.participants.iter().all(|p| p.role == Role::Attendee));
        let m3 = &e.meetings[2];
        assert_eq!(m3.participants[0].region, "local");
        assert!(m3.participants[0].screen);
        assert!(!m3.participants[1].screen);
        // Everybody sees somebody else's media.
        assert!((0..3).all(|i| m1.expects_media(i)));
    }

    #[test]
    fn lone_publisher_expects_no_media() {
        let s = parse("duration_s = 1\n[[meetings]]\nparticipants = 1\n").unwrap();
        let e = s.expand();
        assert!(!e.meetings[0].expects_media(0));
    }

    #[test]
    fn a_meeting_holds_at_most_what_the_control_plane_allows() {
        assert!(
            parse("duration_s = 1\n[[meetings]]\nparticipants = 1000\npublishers = 2\n").is_ok()
        );
        let e = parse("duration_s = 1\n[[meetings]]\nparticipants = 1001\npublishers = 2\n")
            .unwrap_err();
        assert_eq!(e.field(), Some("meetings[0].participants"));
        assert!(e.to_string().contains("at most 1000"), "{e}");
    }

    #[test]
    fn record_defaults_to_the_scenario_and_entries_override_it() {
        let s = parse(SMALL).unwrap();
        assert!(!s.records());
        assert!(s.expand().meetings.iter().all(|m| !m.record));

        let s = parse(&format!("record = true\n{SMALL}")).unwrap();
        assert!(s.records());
        assert!(s.expand().meetings.iter().all(|m| m.record));

        let s = parse(
            "duration_s = 1\n[[meetings]]\ncount = 2\nparticipants = 2\nrecord = true\n\
             [[meetings]]\nparticipants = 2\n[[webinars]]\nviewers = 2\nrecord = false\n",
        )
        .unwrap();
        assert!(s.records());
        let recorded: Vec<bool> = s.expand().meetings.iter().map(|m| m.record).collect();
        assert_eq!(recorded, [true, true, false, false]);

        // The scenario records, but every entry opted out.
        let s = parse(
            "duration_s = 1\nrecord = true\n[[meetings]]\nparticipants = 2\nrecord = false\n",
        )
        .unwrap();
        assert!(!s.records());
        assert!(!s.local_recorders());

        // Recorders follow recording unless [local] says.
        let s = parse(&format!("record = true\n{SMALL}")).unwrap();
        assert!(s.local_recorders());
        let s = parse(&format!("{SMALL}\n[local]\nrecorders = true\n")).unwrap();
        assert!(!s.records() && s.local_recorders());
        let s = parse(&format!(
            "record = true\n{SMALL}\n[local]\nrecorders = false\n"
        ))
        .unwrap();
        assert!(s.records() && !s.local_recorders());
    }

    #[test]
    fn webinar_regions_list_and_table() {
        let s = parse(
            r#"
duration_s = 10
[[webinars]]
viewers = 5
regions = ["eu", "us"]
screen_share = true

[[webinars]]
presenters = 2
regions = { us = 3, eu = 1 }
"#,
        )
        .unwrap();
        let e = s.expand();
        assert_eq!(e.total_participants, 6 + 6);
        let w1 = &e.meetings[0];
        assert!(w1.webinar);
        assert_eq!(w1.id, "w-0001");
        assert_eq!(w1.participants[0].role, Role::Presenter);
        assert!(w1.participants[0].screen && w1.participants[0].camera);
        assert_eq!(w1.participants[0].region, "eu");
        let viewers: Vec<&str> = w1.participants[1..]
            .iter()
            .map(|p| p.region.as_str())
            .collect();
        assert_eq!(viewers, ["eu", "us", "eu", "us", "eu"]);
        assert!(w1.participants[1..]
            .iter()
            .all(|p| p.role == Role::Viewer && !p.publishes()));
        let w2 = &e.meetings[1];
        assert_eq!(w2.participants[0].region, "us", "table order is kept");
        assert!(!w2.participants[0].screen);
        let presenters = s.webinars[1].presenters as usize;
        let mut both_share = s.clone();
        both_share.webinars[1].screen_share = true;
        let sharing: Vec<bool> = both_share.expand().meetings[1].participants[..presenters]
            .iter()
            .map(|p| p.screen)
            .collect();
        assert_eq!(
            sharing,
            [true, false],
            "one share per room: the first presenter's"
        );
        let us = w2
            .participants
            .iter()
            .filter(|p| p.role == Role::Viewer && p.region == "us");
        assert_eq!(us.count(), 3);
        assert_eq!(w2.participants[5].name, "w-0002-v00004");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = parse("duration_s = 5\n[[meetings]]\nparticipants = = 3\n").unwrap_err();
        assert!(matches!(err, ScenarioError::Parse { .. }), "{err}");
        assert_eq!(err.line(), Some(3), "{err}");
        assert!(err.to_string().starts_with("test.toml:3:"), "{err}");
    }

    #[test]
    fn type_error_names_field_and_line() {
        let text = "duration_s = 5\n[[meetings]]\nparticipants = 2\n\n[[meetings]]\nparticipants = \"ten\"\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.field(), Some("meetings[1].participants"), "{err}");
        assert_eq!(err.line(), Some(6), "{err}");
        assert!(
            err.to_string()
                .contains("test.toml:6:16: meetings[1].participants:"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err =
            parse("duration_s = 5\n[[meetings]]\nparticipants = 2\npublisher = 1\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("publisher"), "{text}");
        assert_eq!(err.line(), Some(4), "{text}");
        let err =
            parse("duration_s = 5\n[[meetings]]\nparticipants = 2\n[media.vidoe]\n").unwrap_err();
        assert!(err.to_string().contains("vidoe"), "{err}");
    }

    #[test]
    fn missing_required_field() {
        let err = parse("duration_s = 5\n[[failures]]\nkill = \"forwarder\"\n").unwrap_err();
        assert!(err.to_string().contains("at_s"), "{err}");
    }

    #[test]
    fn bad_profile_lists_the_valid_ones() {
        let err =
            parse("duration_s = 5\nsrtp_profile = \"NULL\"\n[[meetings]]\nparticipants = 2\n")
                .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.line(), Some(2), "{text}");
        assert!(text.contains("AES_CM_128_HMAC_SHA1_80"), "{text}");
        let ok = parse(
            "duration_s = 5\nsrtp_profile = \"AES_CM_128_HMAC_SHA1_80\"\n[[meetings]]\nparticipants = 2\n",
        )
        .unwrap();
        assert_eq!(ok.srtp_profile, SrtpProfile::AesCm128HmacSha1_80);
    }

    #[test]
    fn semantic_errors_name_field_and_line() {
        let text = "duration_s = 5\n\n[[meetings]]\nparticipants = 2\n\n[[meetings]]\nparticipants = 10\npublishers = 12\n";
        let err = parse(text).unwrap_err();
        assert!(matches!(err, ScenarioError::Invalid { .. }));
        assert_eq!(err.field(), Some("meetings[1].publishers"));
        assert_eq!(err.line(), Some(8));
        assert_eq!(
            err.to_string(),
            "test.toml:8:1: meetings[1].publishers: 12 publishers but only 10 participants"
        );

        let cases: &[(&str, &str, Option<usize>)] = &[
            ("duration_s = 0\n[[meetings]]\nparticipants = 2\n", "duration_s", Some(1)),
            (
                "duration_s = 5\n[[meetings]]\nparticipants = 2\n[[impairments]]\nloss = 1.5\n",
                "impairments[0].loss",
                Some(5),
            ),
            (
                "duration_s = 5\n[[meetings]]\nparticipants = 2\nregions = [\"eu\"]\n[[impairments]]\nregion = \"us\"\nloss = 0.1\n",
                "impairments[0].region",
                Some(6),
            ),
            (
                "duration_s = 5\n[[meetings]]\nparticipants = 2\n[[failures]]\nat_s = 9\nkill = \"forwarder\"\n",
                "failures[0].at_s",
                Some(5),
            ),
            (
                "duration_s = 5\n[[meetings]]\nparticipants = 2\n[[failures]]\nat_s = 1\nkill = \"forwarder\"\ntarget = 1\n",
                "failures[0].target",
                Some(7),
            ),
            (
                "duration_s = 5\n[[webinars]]\nviewers = 3\nregions = { eu = 1, us = 1 }\n",
                "webinars[0].viewers",
                Some(3),
            ),
            ("duration_s = 5\n[[webinars]]\nregions = [\"eu\"]\n", "webinars[0].viewers", Some(2)),
            (
                "duration_s = 5\n[[meetings]]\nparticipants = 2\n[media.video]\nsimulcast = [\n  { bitrate_kbps = 500, fps = 15 },\n  { bitrate_kbps = 400, fps = 30 },\n]\n",
                "media.video.simulcast[1].bitrate_kbps",
                Some(7),
            ),
            (
                "duration_s = 5\n[[meetings]]\nparticipants = 2\n[receivers]\njitter_buffer_min_ms = 500\n",
                "receivers.jitter_buffer_min_ms",
                Some(5),
            ),
            ("duration_s = 5\n", "meetings", None),
            ("[[meetings]]\nparticipants = 2\n", "duration_s", None),
            (
                "duration_s = 5\njoin = { rate_per_s = 0 }\n[[meetings]]\nparticipants = 2\n",
                "join.rate_per_s",
                Some(2),
            ),
            (
                "duration_s = 5\n[[meetings]]\nparticipants = 2\n[local]\nforwarders = 0\n",
                "local.forwarders",
                Some(5),
            ),
            (
                "duration_s = 5\n[[meetings]]\nparticipants = 3\nscreen_sharers = 2\n",
                "meetings[0].screen_sharers",
                Some(4),
            ),
        ];
        for (text, field, line) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.field(), Some(*field), "{err}\n---\n{text}");
            assert_eq!(err.line(), *line, "{err}\n---\n{text}");
        }
    }

    #[test]
    fn join_inline_table_column() {
        let err =
            parse("duration_s = 5\njoin = { rate_per_s = 0 }\n[[meetings]]\nparticipants = 2\n")
                .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("test.toml:2:10: join.rate_per_s:"),
            "{err}"
        );
    }

    #[test]
    fn churn_rate_count_or_fraction() {
        let base = "duration_s = 5\n[[meetings]]\nparticipants = 100\n[churn]\n";
        let s = parse(&format!("{base}leave_rejoin_per_min = 20\n")).unwrap();
        assert_eq!(s.churn.leave_rejoin_per_min, ChurnRate::Count(20));
        let s = parse(&format!("{base}leave_rejoin_per_min = 0.05\n")).unwrap();
        assert_eq!(s.churn.leave_rejoin_per_min.per_minute(100), 5.0);
        let err = parse(&format!("{base}leave_rejoin_per_min = 2.5\n")).unwrap_err();
        assert_eq!(err.field(), Some("churn.leave_rejoin_per_min"), "{err}");
        assert_eq!(err.line(), Some(5), "{err}");
    }

    #[test]
    fn failure_target_id_or_index() {
        let s = parse(
            "duration_s = 20\n[[meetings]]\nparticipants = 2\n[local]\nforwarders = 2\n\
             [[failures]]\nat_s = 10\nkill = \"forwarder\"\ntarget = 1\n\
             [[failures]]\nat_s = 12\nkill = \"forwarder\"\ntarget = \"fwd-1\"\n",
        )
        .unwrap();
        assert_eq!(s.failures[0].target, Some(FailureTarget::Index(1)));
        assert_eq!(
            s.failures[1].target,
            Some(FailureTarget::Id("fwd-1".into()))
        );
    }

    #[test]
    fn serializes_back_to_an_equal_scenario() {
        let s = parse(SMALL).unwrap();
        let text = toml::to_string(&s).unwrap();
        let again = parse(&text).unwrap();
        assert_eq!(s, again);
    }

    #[test]
    fn code_built_scenario_validates() {
        let mut s = Scenario {
            name: "flags".into(),
            duration_s: 10.0,
            ..Scenario::default()
        };
        assert!(s.validate("flags").is_err());
        s.meetings.push(MeetingSpec {
            participants: 4,
            ..MeetingSpec::default()
        });
        s.validate("flags").unwrap();
        assert_eq!(s.expand().total_participants, 4);
    }

    #[test]
    fn locate_paths() {
        let text = "a = 1\n[[m]]\nx = 1\n[[m]]\nx = 2\ny = [{ z = 1 }, { z = 2 }]\n[t]\nk.j = 3\n";
        assert_eq!(locate(text, "m[1].x"), Some((5, 1)));
        assert_eq!(locate(text, "m[1].y[1].z"), Some((6, 19)));
        assert_eq!(locate(text, "t.k.j"), Some((8, 1)));
        assert_eq!(locate(text, "t.q"), Some((7, 1)));
        assert_eq!(locate(text, "nothing"), None);
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    /// The reference documents every key a scenario can have.
    #[test]
    fn reference_names_every_key() {
        let mut s = Scenario {
            name: "all".into(),
            duration_s: 10.0,
            ..Scenario::default()
        };
        s.meetings.push(MeetingSpec {
            participants: 2,
            publishers: Some(1),
            audio_publishers: Some(1),
            passcode: Some("x".into()),
            ..MeetingSpec::default()
        });
        s.webinars.push(WebinarSpec {
            viewers: Some(1),
            presenter_region: Some("local".into()),
            passcode: Some("x".into()),
            ..WebinarSpec::default()
        });
        s.receivers.remb_kbps = Some(1000);
        s.impairments.push(Impairment::default());
        s.failures.push(FailureSpec {
            at_s: 1.0,
            kill: Kill::Forwarder,
            target: Some(FailureTarget::Index(0)),
        });
        s.local.max_legs = Some(10);
        fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        out.push(k.clone());
                        keys(&format!("{prefix}.{k}"), v, out);
                    }
                }
                toml::Value::Array(a) => a.iter().for_each(|v| keys(prefix, v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        keys("", &toml::Value::try_from(&s).unwrap(), &mut all);
        assert!(all.len() > 50);
        for k in all {
            assert!(
                SCENARIO_REFERENCE.contains(&format!("`{k}`"))
                    || SCENARIO_REFERENCE.contains(&format!("[{k}]"))
                    || SCENARIO_REFERENCE.contains(&format!(".{k}]"))
                    || SCENARIO_REFERENCE.contains(&format!("[{k}.")),
                "{k} is not documented"
            );
        }
    }

    /// Every example scenario in `loadgen/scenarios/` loads, validates and expands.
    #[test]
    fn example_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                let e = s.expand();
                assert_eq!(
                    e.total_participants,
                    s.total_participants(),
                    "{}",
                    path.display()
                );
                assert!(e.total_participants > 0);
                seen += 1;
            }
        }
        assert!(
            seen >= 6,
            "expected the example scenarios in {}",
            dir.display()
        );
    }
}
