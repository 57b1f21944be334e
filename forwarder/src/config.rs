//! The standalone configuration file: meetings, participants, legs with their SRTP keys,
//! tracks and subscriptions, declared in TOML so a forwarder can run with no control plane.
//!
//! ```toml
//! [forwarder]
//! listen = "0.0.0.0:40000"          # RTP, and RTCP from peers that mux it (RFC 5761)
//! # rtcp_listen = "0.0.0.0:40001"   # RTCP from peers that don't; default: listen port + 1
//! # metrics = "127.0.0.1:9464"      # Prometheus text at http://ADDR/metrics
//!
//! [[meeting]]
//! id = "demo"
//!
//! [[meeting.participant]]
//! id = "alice"
//!
//! [[meeting.participant.leg]]
//! name = "video"
//! profile = "AES_CM_128_HMAC_SHA1_80"
//! receive_key = "inline:..."        # what alice encrypts with (RFC 4568 key-params)
//! send_key = "inline:..."           # what the forwarder encrypts with towards alice
//! # remote = "192.0.2.7:5004"       # omit to learn it from alice's first authenticated packet
//!
//! [[meeting.participant.track]]
//! name = "camera"
//! kind = "video"                    # audio | video | screen
//! leg = "video"
//! ssrc = 0x11111111
//!
//! [[meeting.participant]]
//! id = "bob"
//!
//! [[meeting.participant.leg]]
//! name = "video"
//! profile = "AES_CM_128_HMAC_SHA1_80"
//! receive_key = "inline:..."
//! send_key = "inline:..."
//! remote = "198.51.100.9:6004"
//!
//! [[meeting.participant.subscription]]
//! track = "alice/camera"            # participant/track
//! leg = "video"
//! ```
//!
//! Every error names the file, the line and column, and the field
//! (`meeting[0].participant[1].leg[0].send_key`).
//!
//! # Reloading (SIGHUP)
//!
//! `fanout-forwarder` re-reads its file on SIGHUP. The file is parsed and validated in
//! full, off the forwarding thread; an invalid file is logged with its error and changes
//! nothing. A valid one is compared with what the forwarder runs by [`Settings::diff`]:
//! meetings and participants are matched by id, legs and tracks by name, and
//! subscriptions by their position among their participant's subscriptions (the same
//! position must keep its `track`, `leg`, `ssrc` and `payload_type`).
//!
//! * Applied at once, each logged: the subscriptions' layer limits (`max_encoding`,
//!   `max_spatial_layer`, `max_temporal_layer`), as [`LayerChange`]s run on the driver
//!   thread. A new encoding starts at its next keyframe, which the forwarder requests.
//! * Logged as a warning that it needs a restart, and not applied: anything else —
//!   `[forwarder]` settings, meetings, participants, legs (keys, addresses), tracks, and
//!   subscriptions added, removed, reordered or re-pointed.
//!
//! The comparison is with what runs, not with the previous file: a difference that needs
//! a restart is reported again at every reload until the forwarder restarts.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Deserialize;
use toml::Spanned;

use crate::codec::Codec;
use crate::edge::{AttachMode, GuardOptions, UnknownMedia};
use crate::ids::{MeetingId, ParticipantId, Ssrc};
use crate::sfu::{
    ConfigureError, Forwarder, ForwarderConfig, Layers, LegConfig, LegSecurity, SubscriptionConfig,
    TrackConfig, TrackKind,
};
use crate::srtp::{MasterKey, SrtpProfile};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub forwarder: ForwarderSection,
    #[serde(default)]
    pub meeting: Vec<MeetingSection>,
    /// Control mode (`fanout-forwarder --control URL`): how to join the control plane.
    /// Command-line flags take precedence; see docs/forwarder-control.md.
    pub control: Option<ControlSection>,
}

/// `[control]`: the forwarder takes its meetings from a control plane instead of this
/// file, which may then hold no `[[meeting]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// `http://host:port` or `https://host:port` of `fanout-control`.
    pub url: Option<String>,
    /// PEM CA certificate(s) to trust for `https`.
    pub ca_file: Option<PathBuf>,
    /// Default: the host name.
    pub forwarder_id: Option<String>,
    pub region: Option<String>,
    /// The IP participants send media to; default: the listen IP.
    pub media_ip: Option<String>,
    /// `START-END`; default 40100-40199.
    pub port_range: Option<String>,
    /// File holding the enrolment credential (never put the credential itself here).
    pub enrolment_token_file: Option<PathBuf>,
    pub max_legs: Option<u32>,
    /// The Unix datagram socket of the `fanout-recorder` next to this forwarder
    /// (`fanout-recorder run --socket`): where recorded meetings' media goes.
    pub recorder_socket: Option<PathBuf>,
}

/// A file read for control mode: its network settings and its `[control]` section.
#[derive(Debug)]
pub struct ControlFile {
    pub network: NetworkSettings,
    pub control: ControlSection,
}

/// Read a file for control mode: `[forwarder]` and `[control]`; `[[meeting]]` is refused
/// (meetings come from the control plane).
pub fn load_control(path: &Path, overrides: Overrides) -> Result<ControlFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        position: None,
        field: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    let locate = Locator {
        file: path,
        text: &text,
    };
    let file: ConfigFile = toml::from_str(&text).map_err(|e| {
        locate.error(
            e.span().unwrap_or(0..0),
            String::new(),
            e.message().to_owned(),
        )
    })?;
    if let Some(first) = file.meeting.first() {
        return Err(locate.error(
            first.id.span(),
            "meeting[0]".into(),
            "in control mode meetings come from the control plane; remove [[meeting]]",
        ));
    }
    let builder = Builder {
        locate,
        now: Instant::now(),
        overrides,
        shards: Vec::new(),
        shard: 0,
    };
    let network = builder.network(&file.forwarder)?;
    Ok(ControlFile {
        network,
        control: file.control.unwrap_or_default(),
    })
}

/// Whether a file asks for control mode (`[control] url`), without validating the rest.
pub fn wants_control(path: &Path) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        control: Option<toml::Value>,
    }
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| toml::from_str::<Probe>(&text).ok())
        .and_then(|p| p.control)
        .is_some_and(|c| c.get("url").is_some())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwarderSection {
    /// RTP (and muxed RTCP) address.
    #[serde(default = "default_listen")]
    pub listen: Spanned<String>,
    /// Non-muxed RTCP address; default: the RTP port plus one (RFC 3550 §11).
    pub rtcp_listen: Option<Spanned<String>>,
    /// Prometheus endpoint.
    pub metrics: Option<Spanned<String>>,
    /// Kernel socket buffer size in bytes (SO_RCVBUF/SO_SNDBUF).
    #[serde(default = "default_socket_buffer")]
    pub socket_buffer_bytes: usize,
    /// Forwarding threads (shards), each pinned to a core; absent: one per available
    /// core. Meetings reached at the same address share a shard; see [`ShardSetup`].
    pub shards: Option<Spanned<usize>>,
    /// The XDP port guard in front of the forwarder's ports (`--xdp` and friends
    /// override it).
    pub xdp: Option<XdpSection>,
}

/// `[forwarder.xdp]`: see [`crate::edge`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpSection {
    /// The interface the forwarder's media arrives on.
    pub interface: String,
    #[serde(default)]
    pub mode: AttachMode,
    #[serde(default)]
    pub unknown_media: UnknownMedia,
    /// Packets per second one unknown source may send (first contact: STUN, DTLS, and
    /// RTP/RTCP while a leg learns its address).
    pub source_rate: Option<u32>,
    pub source_burst: Option<u32>,
    /// Packets per second all unknown sources together may send, per receiving CPU.
    pub flood_rate: Option<u32>,
    pub flood_burst: Option<u32>,
}

impl XdpSection {
    /// The guard's options, for the forwarder's `ports`.
    pub fn options(&self, ports: Vec<u16>) -> GuardOptions {
        let mut options = GuardOptions::new(self.interface.clone(), ports);
        options.mode = self.mode;
        options.unknown_media = self.unknown_media;
        options.source_rate = self.source_rate.unwrap_or(options.source_rate);
        options.source_burst = self.source_burst.unwrap_or(options.source_burst);
        options.flood_rate = self.flood_rate.unwrap_or(options.flood_rate);
        options.flood_burst = self.flood_burst.unwrap_or(options.flood_burst);
        options
    }
}

impl Default for ForwarderSection {
    fn default() -> Self {
        ForwarderSection {
            listen: default_listen(),
            rtcp_listen: None,
            metrics: None,
            socket_buffer_bytes: default_socket_buffer(),
            shards: None,
            xdp: None,
        }
    }
}

fn default_listen() -> Spanned<String> {
    Spanned::new(0..0, "0.0.0.0:40000".to_owned())
}

fn default_socket_buffer() -> usize {
    4 << 20
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeetingSection {
    pub id: Spanned<String>,
    /// The meeting's own RTP (and muxed RTCP) address. Absent: `forwarder.listen`. A
    /// meeting with its own port can run on its own shard.
    pub listen: Option<Spanned<String>>,
    /// The meeting's non-muxed RTCP address; default: its `listen` port plus one.
    pub rtcp_listen: Option<Spanned<String>>,
    #[serde(default)]
    pub participant: Vec<ParticipantSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantSection {
    pub id: Spanned<String>,
    #[serde(default)]
    pub leg: Vec<LegSection>,
    #[serde(default)]
    pub track: Vec<TrackSection>,
    #[serde(default)]
    pub subscription: Vec<SubscriptionSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegSection {
    pub name: Spanned<String>,
    pub profile: Spanned<String>,
    pub receive_key: Spanned<String>,
    pub send_key: Spanned<String>,
    pub remote: Option<Spanned<String>>,
    pub remote_rtcp: Option<Spanned<String>>,
    #[serde(default)]
    pub rtcp_mux: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackSection {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    pub leg: Spanned<String>,
    /// The SSRC of a single-encoding track...
    pub ssrc: Option<Spanned<u32>>,
    /// ...or the SSRCs of a simulcast track's encodings, lowest quality first.
    pub encodings: Option<Spanned<Vec<u32>>>,
    pub clock_rate: Option<Spanned<u32>>,
    /// The payload format's encoding name (`VP8`, `VP9`, `H264`, `opus`, ...): the
    /// forwarder reads VP8, VP9 and H.264 payload descriptors to find keyframes and
    /// layers; anything else is forwarded as is.
    pub codec: Option<Spanned<String>>,
    /// Audio: the RFC 8285 id of the RFC 6464 audio level extension, for dominant
    /// speaker detection.
    pub audio_level_extension: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSection {
    /// `participant/track`.
    pub track: Spanned<String>,
    pub leg: Spanned<String>,
    pub ssrc: Option<Spanned<u32>>,
    pub payload_type: Option<Spanned<u8>>,
    /// The highest simulcast encoding (0 = lowest), spatial and temporal layer to send.
    pub max_encoding: Option<u8>,
    pub max_spatial_layer: Option<u8>,
    pub max_temporal_layer: Option<u8>,
}

impl SubscriptionSection {
    /// The limits the section asks for; an absent field is no limit.
    fn max_layers(&self) -> Layers {
        Layers {
            encoding: self.max_encoding.unwrap_or(u8::MAX),
            spatial: self.max_spatial_layer.unwrap_or(u8::MAX),
            temporal: self.max_temporal_layer.unwrap_or(u8::MAX),
        }
    }
}

/// A configuration error, located in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when the error has a place in the file.
    pub position: Option<(usize, usize)>,
    /// Dotted path of the field, such as `meeting[0].participant[1].leg[0].send_key`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The network settings of a loaded file, resolved to addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    pub listen: SocketAddr,
    pub rtcp_listen: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub socket_buffer_bytes: usize,
    /// How many shards were asked for (the file, or `--shards`); `None`: one per
    /// available core.
    pub shards: Option<usize>,
    /// `[forwarder.xdp]`, if the file has it.
    pub xdp: Option<XdpSection>,
}

/// Command-line settings that take precedence over the file's `[forwarder]` section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `forwarder.listen`; `forwarder.rtcp_listen` becomes its port plus one.
    pub listen: Option<SocketAddr>,
    pub shards: Option<usize>,
}

/// One shard: the sockets it owns and a core holding the meetings reached through them.
///
/// Steering is by address: every leg of a meeting sends to the meeting's address (its own
/// `listen`, or `forwarder.listen`), that address is one socket, and the socket belongs to
/// exactly one shard. The kernel's socket lookup does the steering; no packet is ever
/// handed between threads (docs/architecture.md explains the choice).
#[derive(Debug)]
pub struct ShardSetup {
    /// The addresses to bind. The first is the shard's default for transmits that name no
    /// source; it is `forwarder.listen` in the shard that holds it.
    pub listen: Vec<SocketAddr>,
    pub meetings: Vec<MeetingId>,
    pub forwarder: Forwarder,
}

/// A validated configuration: the network settings, and the shards, each with a core
/// holding its meetings with every participant, leg, track and subscription added.
#[derive(Debug)]
pub struct Loaded {
    pub network: NetworkSettings,
    /// At least one; no more than asked for, nor than there are distinct meeting
    /// addresses.
    pub shards: Vec<ShardSetup>,
    /// What the file says, kept to compare a reloaded file with (see [`Settings::diff`]).
    pub settings: Settings,
}

/// Read, parse and validate a configuration file.
pub fn load(path: &Path, now: Instant, overrides: Overrides) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        position: None,
        field: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    parse(path, &text, now, overrides)
}

/// Parse and validate configuration text; `path` is only used in error messages.
pub fn parse(
    path: &Path,
    text: &str,
    now: Instant,
    overrides: Overrides,
) -> Result<Loaded, ConfigError> {
    let locate = Locator { file: path, text };
    let deserializer = toml::Deserializer::new(text);
    let file: ConfigFile = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        // Spanned<T> fields add a private path segment; it means nothing to a reader.
        let field = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let inner = e.into_inner();
        ConfigError {
            file: path.to_owned(),
            position: inner.span().map(|s| locate.position(s.start)),
            field: if field == "." { String::new() } else { field },
            message: inner.message().to_owned(),
        }
    })?;
    Builder {
        locate,
        now,
        overrides,
        shards: Vec::new(),
        shard: 0,
    }
    .build(&file)
}

struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    /// 1-based line and column of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rfind('\n')
            .map_or(before.len(), |nl| before.len() - nl - 1)
            + 1;
        (line, column)
    }

    fn error(&self, span: Range<usize>, field: String, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            position: (span != (0..0)).then(|| self.position(span.start)),
            field,
            message: message.into(),
        }
    }
}

/// The addresses some meetings are reached at, and so one unit of placement on shards.
#[derive(Debug)]
struct PortGroup {
    listen: SocketAddr,
    rtcp_listen: Option<SocketAddr>,
    /// A meeting's own `listen` (legs send from it), not `forwarder.listen`.
    own: bool,
    /// Roughly the packets per second it will cost: streams in plus streams out.
    weight: usize,
    meetings: Vec<usize>,
}

impl PortGroup {
    fn addresses(&self) -> impl Iterator<Item = SocketAddr> {
        std::iter::once(self.listen).chain(self.rtcp_listen)
    }
}

/// Spread port groups over at most `shards` shards, heaviest first onto the least loaded
/// (LPT scheduling: within 4/3 of the best balance). Returns each group's shard.
fn place_groups(groups: &[PortGroup], shards: usize) -> Vec<usize> {
    let shards = shards.clamp(1, groups.len().max(1));
    let mut order: Vec<usize> = (0..groups.len()).collect();
    // Stable: equal weights keep file order, so a file always gives the same placement.
    order.sort_by_key(|&g| std::cmp::Reverse(groups[g].weight));
    let mut load = vec![0usize; shards];
    let mut placed = vec![0; groups.len()];
    for g in order {
        let (shard, _) = load
            .iter()
            .enumerate()
            .min_by_key(|&(i, l)| (*l, i))
            .unwrap_or((0, &0));
        placed[g] = shard;
        load[shard] += groups[g].weight;
    }
    placed
}

struct Builder<'a> {
    locate: Locator<'a>,
    now: Instant,
    overrides: Overrides,
    shards: Vec<Forwarder>,
    /// The shard of the meeting being added.
    shard: usize,
}

impl Builder<'_> {
    fn build(mut self, file: &ConfigFile) -> Result<Loaded, ConfigError> {
        let network = self.network(&file.forwarder)?;
        let groups = self.port_groups(file, &network)?;
        let requested = network.shards.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let placed = place_groups(&groups, requested);
        let shard_count = placed.iter().max().map_or(1, |&s| s + 1);
        self.shards = (0..shard_count)
            .map(|_| Forwarder::new(ForwarderConfig::default(), self.now))
            .collect();
        let mut setups: Vec<(Vec<SocketAddr>, Vec<MeetingId>)> =
            vec![(Vec::new(), Vec::new()); shard_count];
        // Group 0 is `forwarder.listen`: listed first, it is its shard's default socket.
        for (group, &shard) in groups.iter().zip(&placed) {
            setups[shard].0.extend(group.addresses());
        }
        let group_of: HashMap<usize, usize> = groups
            .iter()
            .enumerate()
            .flat_map(|(g, group)| group.meetings.iter().map(move |&m| (m, g)))
            .collect();
        // Subscriptions refer to tracks of other participants, so they are added after
        // every participant's legs and tracks.
        for (mi, meeting) in file.meeting.iter().enumerate() {
            let at = format!("meeting[{mi}]");
            let id = MeetingId(meeting.id.get_ref().clone());
            let group = &groups[group_of[&mi]];
            self.shard = placed[group_of[&mi]];
            // A meeting declared twice may land on two shards: check across all of them.
            let result = match self.shards.iter().any(|core| core.meeting_exists(&id)) {
                true => Err(ConfigureError::MeetingExists(id.clone())),
                false => self.shards[self.shard].add_meeting(id.clone()),
            };
            self.check(result, &meeting.id, format!("{at}.id"))?;
            setups[self.shard].1.push(id.clone());
            let local = group.own.then_some((group.listen, group.rtcp_listen));
            for (pi, participant) in meeting.participant.iter().enumerate() {
                let at = format!("{at}.participant[{pi}]");
                self.participant(&id, participant, local, &at)?;
            }
            for (pi, participant) in meeting.participant.iter().enumerate() {
                let pid = ParticipantId(participant.id.get_ref().clone());
                for (si, sub) in participant.subscription.iter().enumerate() {
                    let at = format!("{at}.participant[{pi}].subscription[{si}]");
                    self.subscription(&id, &pid, sub, &at)?;
                }
            }
        }
        self.reject_key_reuse(file)?;
        let shards = setups
            .into_iter()
            .zip(self.shards)
            .map(|((listen, meetings), forwarder)| ShardSetup {
                listen,
                meetings,
                forwarder,
            })
            .collect();
        Ok(Loaded {
            settings: Settings::from_file(file, &network),
            network,
            shards,
        })
    }

    /// Group meetings by the address they are reached at. Group 0 is `forwarder.listen`,
    /// always bound even if no meeting uses it. Two groups may not share an address.
    fn port_groups(
        &self,
        file: &ConfigFile,
        network: &NetworkSettings,
    ) -> Result<Vec<PortGroup>, ConfigError> {
        let mut groups = vec![PortGroup {
            listen: network.listen,
            rtcp_listen: network.rtcp_listen,
            own: false,
            weight: 0,
            meetings: Vec::new(),
        }];
        for (mi, meeting) in file.meeting.iter().enumerate() {
            let at = format!("meeting[{mi}]");
            let weight = 1 + meeting
                .participant
                .iter()
                .map(|p| p.leg.len() + p.subscription.len())
                .sum::<usize>();
            let Some(listen_field) = &meeting.listen else {
                if let Some(rtcp) = &meeting.rtcp_listen {
                    return Err(self.locate.error(
                        rtcp.span(),
                        format!("{at}.rtcp_listen"),
                        "`rtcp_listen` needs the meeting's own `listen`",
                    ));
                }
                groups[0].meetings.push(mi);
                groups[0].weight += weight;
                continue;
            };
            let listen = self.address(listen_field, format!("{at}.listen"))?;
            if listen.port() == 0 {
                return Err(self.locate.error(
                    listen_field.span(),
                    format!("{at}.listen"),
                    "a meeting's port must be given (not 0): its participants are told it",
                ));
            }
            let rtcp_listen = match &meeting.rtcp_listen {
                Some(s) => Some(self.address(s, format!("{at}.rtcp_listen"))?),
                None => listen
                    .port()
                    .checked_add(1)
                    .map(|p| SocketAddr::new(listen.ip(), p)),
            };
            let same = groups.iter().position(|g| g.listen == listen);
            if let Some(g) = same {
                if groups[g].rtcp_listen != rtcp_listen {
                    return Err(self.locate.error(
                        listen_field.span(),
                        format!("{at}.rtcp_listen"),
                        format!(
                            "meetings reached at {listen} must share their RTCP address too                              ({:?} elsewhere, {rtcp_listen:?} here)",
                            groups[g].rtcp_listen
                        ),
                    ));
                }
                groups[g].meetings.push(mi);
                groups[g].weight += weight;
                continue;
            }
            let mine = PortGroup {
                listen,
                rtcp_listen,
                own: true,
                weight,
                meetings: vec![mi],
            };
            if let Some(clash) = mine
                .addresses()
                .find(|a| groups.iter().any(|g| g.addresses().any(|b| b == *a)))
            {
                return Err(self.locate.error(
                    listen_field.span(),
                    format!("{at}.listen"),
                    format!(
                        "{clash} is already another meeting's or the forwarder's address                          (RTP or RTCP)"
                    ),
                ));
            }
            groups.push(mine);
        }
        Ok(groups)
    }

    fn network(&self, section: &ForwarderSection) -> Result<NetworkSettings, ConfigError> {
        let plus_one = |listen: SocketAddr| {
            listen
                .port()
                .checked_add(1)
                .map(|p| SocketAddr::new(listen.ip(), p))
        };
        let (listen, rtcp_listen) = match self.overrides.listen {
            Some(listen) => (listen, plus_one(listen)),
            None => {
                let listen = self.address(&section.listen, "forwarder.listen".into())?;
                let rtcp_listen = match &section.rtcp_listen {
                    Some(s) => Some(self.address(s, "forwarder.rtcp_listen".into())?),
                    None => plus_one(listen),
                };
                (listen, rtcp_listen)
            }
        };
        let shards = match (self.overrides.shards, &section.shards) {
            (Some(n), _) => Some(n),
            (None, Some(field)) => Some(*field.get_ref()),
            (None, None) => None,
        };
        if shards == Some(0) {
            let span = section.shards.as_ref().map_or(0..0, Spanned::span);
            return Err(self.locate.error(
                span,
                "forwarder.shards".into(),
                "at least one shard is needed",
            ));
        }
        let metrics = section
            .metrics
            .as_ref()
            .map(|s| self.address(s, "forwarder.metrics".into()))
            .transpose()?;
        Ok(NetworkSettings {
            listen,
            rtcp_listen,
            metrics,
            socket_buffer_bytes: section.socket_buffer_bytes,
            shards,
            xdp: section.xdp.clone(),
        })
    }

    /// Add a participant with its legs and tracks. `local`: the meeting's own RTP and
    /// RTCP addresses, which its legs send from.
    fn participant(
        &mut self,
        meeting: &MeetingId,
        section: &ParticipantSection,
        local: Option<(SocketAddr, Option<SocketAddr>)>,
        at: &str,
    ) -> Result<(), ConfigError> {
        let pid = ParticipantId(section.id.get_ref().clone());
        let result = self.shards[self.shard].add_participant(meeting, pid.clone());
        self.check(result, &section.id, format!("{at}.id"))?;
        for (li, leg) in section.leg.iter().enumerate() {
            let at = format!("{at}.leg[{li}]");
            let profile_name = leg.profile.get_ref();
            let profile = SrtpProfile::from_name(profile_name).ok_or_else(|| {
                self.locate.error(
                    leg.profile.span(),
                    format!("{at}.profile"),
                    format!(
                        "unknown SRTP profile `{profile_name}`; expected one of {}",
                        SrtpProfile::ALL.map(|p| p.name()).join(", ")
                    ),
                )
            })?;
            let key = |field: &Spanned<String>, name: &str| {
                MasterKey::from_inline(profile, field.get_ref()).map_err(|e| {
                    self.locate
                        .error(field.span(), format!("{at}.{name}"), format!("{e}"))
                })
            };
            let config = LegConfig {
                name: leg.name.get_ref().clone(),
                security: LegSecurity::Sdes {
                    receive_key: key(&leg.receive_key, "receive_key")?,
                    send_key: key(&leg.send_key, "send_key")?,
                },
                remote: leg
                    .remote
                    .as_ref()
                    .map(|s| self.address(s, format!("{at}.remote")))
                    .transpose()?,
                remote_rtcp: leg
                    .remote_rtcp
                    .as_ref()
                    .map(|s| self.address(s, format!("{at}.remote_rtcp")))
                    .transpose()?,
                rtcp_mux: leg.rtcp_mux,
                local: local.map(|(rtp, _)| rtp),
                local_rtcp: local
                    .and_then(|(rtp, rtcp)| if leg.rtcp_mux { Some(rtp) } else { rtcp }),
            };
            let result = self.shards[self.shard].add_leg(meeting, &pid, config);
            self.check(result, &leg.name, format!("{at}.name"))?;
        }
        for (ti, track) in section.track.iter().enumerate() {
            let at = format!("{at}.track[{ti}]");
            let kind = match track.kind.get_ref().as_str() {
                "audio" => TrackKind::Audio,
                "video" => TrackKind::Video,
                "screen" => TrackKind::Screen,
                other => {
                    return Err(self.locate.error(
                        track.kind.span(),
                        format!("{at}.kind"),
                        format!("unknown track kind `{other}`; expected audio, video or screen"),
                    ))
                }
            };
            let leg = self.shards[self.shard]
                .leg_id(meeting, &pid, track.leg.get_ref())
                .ok_or_else(|| {
                    self.locate.error(
                        track.leg.span(),
                        format!("{at}.leg"),
                        format!("participant `{pid}` has no leg `{}`", track.leg.get_ref()),
                    )
                })?;
            let (encodings, encodings_span, encodings_field) = match (&track.ssrc, &track.encodings)
            {
                (Some(ssrc), None) => (vec![Ssrc(*ssrc.get_ref())], ssrc.span(), "ssrc"),
                (None, Some(list)) => (
                    list.get_ref().iter().map(|&s| Ssrc(s)).collect(),
                    list.span(),
                    "encodings",
                ),
                _ => {
                    return Err(self.locate.error(
                        track.name.span(),
                        at.clone(),
                        "give either `ssrc` (one encoding) or `encodings` (simulcast SSRCs, \
                         lowest quality first)",
                    ))
                }
            };
            let config = TrackConfig {
                name: track.name.get_ref().clone(),
                kind,
                codec: track
                    .codec
                    .as_ref()
                    .map_or(Codec::Opaque, |c| Codec::from_encoding_name(c.get_ref())),
                audio_level_extension: track.audio_level_extension,
                stream_ids: None,
                encodings,
                leg,
                clock_rate: track.clock_rate.as_ref().map(|c| *c.get_ref()),
            };
            if let Some(rate) = &track.clock_rate {
                if *rate.get_ref() == 0 {
                    return Err(self.locate.error(
                        rate.span(),
                        format!("{at}.clock_rate"),
                        "the clock rate must be positive",
                    ));
                }
            }
            let result = self.shards[self.shard].add_track(meeting, &pid, config);
            result.map_err(|e| {
                self.locate.error(
                    encodings_span,
                    format!("{at}.{encodings_field}"),
                    e.to_string(),
                )
            })?;
        }
        Ok(())
    }

    fn subscription(
        &mut self,
        meeting: &MeetingId,
        subscriber: &ParticipantId,
        section: &SubscriptionSection,
        at: &str,
    ) -> Result<(), ConfigError> {
        let reference = section.track.get_ref();
        let track = reference
            .split_once('/')
            .and_then(|(p, t)| {
                self.shards[self.shard].track_id(meeting, &ParticipantId(p.into()), t)
            })
            .ok_or_else(|| {
                self.locate.error(
                    section.track.span(),
                    format!("{at}.track"),
                    format!(
                        "no track `{reference}` in meeting `{meeting}` (write it as \
                         `participant/track`)"
                    ),
                )
            })?;
        let leg = self.shards[self.shard]
            .leg_id(meeting, subscriber, section.leg.get_ref())
            .ok_or_else(|| {
                self.locate.error(
                    section.leg.span(),
                    format!("{at}.leg"),
                    format!(
                        "participant `{subscriber}` has no leg `{}`",
                        section.leg.get_ref()
                    ),
                )
            })?;
        let config = SubscriptionConfig {
            track,
            leg,
            max_layers: section.max_layers(),
            ssrc: section.ssrc.as_ref().map(|s| Ssrc(*s.get_ref())),
            payload_type: section.payload_type.as_ref().map(|p| *p.get_ref()),
        };
        if let Some(pt) = &section.payload_type {
            if *pt.get_ref() > 127 {
                return Err(self.locate.error(
                    pt.span(),
                    format!("{at}.payload_type"),
                    "an RTP payload type is 7 bits (0-127)",
                ));
            }
        }
        let result = self.shards[self.shard].add_subscription(config);
        self.check(result, &section.track, format!("{at}.track"))
            .map(|_| ())
    }

    /// Two legs sending with one key would reuse SRTP keystream wherever their SSRCs and
    /// sequence numbers meet (RFC 3711 §9.1): every key of the file, in either direction,
    /// must be its own. Compared on the decoded key material, so two spellings of one key
    /// are still caught.
    fn reject_key_reuse(&self, file: &ConfigFile) -> Result<(), ConfigError> {
        use base64::Engine;
        let mut seen: HashMap<Vec<u8>, String> = HashMap::new();
        for (mi, meeting) in file.meeting.iter().enumerate() {
            for (pi, participant) in meeting.participant.iter().enumerate() {
                for (li, leg) in participant.leg.iter().enumerate() {
                    for (name, key) in [
                        ("receive_key", &leg.receive_key),
                        ("send_key", &leg.send_key),
                    ] {
                        let at = format!("meeting[{mi}].participant[{pi}].leg[{li}].{name}");
                        let text = key.get_ref().trim();
                        let text = text.strip_prefix("inline:").unwrap_or(text);
                        let text = text.split('|').next().unwrap_or(text);
                        // Keys were decoded successfully when their legs were added.
                        let Ok(material) = base64::engine::general_purpose::STANDARD.decode(text)
                        else {
                            continue;
                        };
                        if let Some(first) = seen.insert(material, at.clone()) {
                            return Err(self.locate.error(
                                key.span(),
                                at,
                                format!(
                                    "the same key is already used as {first}: every leg and \
                                     direction needs its own key, or SRTP keystream is reused"
                                ),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn address(&self, field: &Spanned<String>, at: String) -> Result<SocketAddr, ConfigError> {
        field.get_ref().parse().map_err(|e| {
            self.locate.error(
                field.span(),
                at,
                format!("`{}` is not an IP address and port: {e}", field.get_ref()),
            )
        })
    }

    fn check<T, V>(
        &self,
        result: Result<T, ConfigureError>,
        field: &Spanned<V>,
        at: String,
    ) -> Result<T, ConfigError> {
        result.map_err(|e| self.locate.error(field.span(), at, e.to_string()))
    }
}

// ----- reload ---------------------------------------------------------------------------

/// What a configuration file says, without source positions: the state a running
/// forwarder was configured with, compared with a reloaded file by [`Settings::diff`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    network: NetworkSettings,
    meetings: Vec<MeetingSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MeetingSettings {
    id: MeetingId,
    listen: Option<String>,
    rtcp_listen: Option<String>,
    participants: Vec<ParticipantSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ParticipantSettings {
    id: ParticipantId,
    legs: Vec<LegSettings>,
    tracks: Vec<TrackSettings>,
    subscriptions: Vec<SubscriptionSettings>,
}

/// A leg as written. The keys are compared as written (a key re-spelt differently counts
/// as a change) and never printed.
#[derive(Clone, PartialEq, Eq)]
struct LegSettings {
    name: String,
    profile: String,
    receive_key: String,
    send_key: String,
    remote: Option<String>,
    remote_rtcp: Option<String>,
    rtcp_mux: bool,
}

impl fmt::Debug for LegSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegSettings")
            .field("name", &self.name)
            .field("profile", &self.profile)
            .field("remote", &self.remote)
            .field("remote_rtcp", &self.remote_rtcp)
            .field("rtcp_mux", &self.rtcp_mux)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TrackSettings {
    name: String,
    kind: String,
    leg: String,
    ssrc: Option<u32>,
    encodings: Option<Vec<u32>>,
    clock_rate: Option<u32>,
    codec: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SubscriptionSettings {
    track: String,
    leg: String,
    ssrc: Option<u32>,
    payload_type: Option<u8>,
    max_layers: Layers,
}

/// What a reloaded file changes, by [`Settings::diff`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reload {
    /// Changes a running forwarder applies at once, in file order.
    pub layer_changes: Vec<LayerChange>,
    /// Every other difference, one sentence each: these take effect at the next restart.
    pub needs_restart: Vec<String>,
}

impl Reload {
    pub fn is_empty(&self) -> bool {
        self.layer_changes.is_empty() && self.needs_restart.is_empty()
    }
}

/// New layer limits for one subscription, which is named as in the file: the `index`-th
/// subscription of `participant` in `meeting`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerChange {
    pub meeting: MeetingId,
    pub participant: ParticipantId,
    /// Position among the participant's subscriptions, in file order from 0.
    pub index: usize,
    /// The subscribed track, `participant/track`.
    pub track: String,
    pub from: Layers,
    pub to: Layers,
}

impl LayerChange {
    /// Set the new limits on the core; returns the limits it replaced. The subscription
    /// is found the way the file names it, so this works on any core built from a file
    /// with the same subscriptions.
    pub fn apply(&self, core: &mut Forwarder) -> Result<Layers, ConfigureError> {
        let id = core
            .subscriptions_of(&self.meeting, &self.participant)
            .get(self.index)
            .copied()
            .ok_or(ConfigureError::NoSuchSubscription)?;
        let previous = core
            .max_layers(id)
            .ok_or(ConfigureError::NoSuchSubscription)?;
        core.set_max_layers(id, self.to)?;
        Ok(previous)
    }
}

impl fmt::Display for LayerChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "meeting `{}`, participant `{}`, subscription[{}] (`{}`): {} -> {}",
            self.meeting,
            self.participant,
            self.index,
            self.track,
            LayerLimits(self.from),
            LayerLimits(self.to)
        )
    }
}

/// Layer limits as the file writes them: `max_encoding=1 max_spatial_layer=any ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerLimits(pub Layers);

impl fmt::Display for LayerLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Layers {
            encoding,
            spatial,
            temporal,
        } = self.0;
        for (i, (name, value)) in [
            ("max_encoding", encoding),
            ("max_spatial_layer", spatial),
            ("max_temporal_layer", temporal),
        ]
        .into_iter()
        .enumerate()
        {
            let sep = if i == 0 { "" } else { " " };
            if value == u8::MAX {
                write!(f, "{sep}{name}=any")?;
            } else {
                write!(f, "{sep}{name}={value}")?;
            }
        }
        Ok(())
    }
}

impl Settings {
    fn from_file(file: &ConfigFile, network: &NetworkSettings) -> Settings {
        let text = |s: &Spanned<String>| s.get_ref().clone();
        let meetings = file
            .meeting
            .iter()
            .map(|m| MeetingSettings {
                id: MeetingId(text(&m.id)),
                listen: m.listen.as_ref().map(text),
                rtcp_listen: m.rtcp_listen.as_ref().map(text),
                participants: m
                    .participant
                    .iter()
                    .map(|p| ParticipantSettings {
                        id: ParticipantId(text(&p.id)),
                        legs: p
                            .leg
                            .iter()
                            .map(|l| LegSettings {
                                name: text(&l.name),
                                profile: text(&l.profile),
                                receive_key: l.receive_key.get_ref().trim().to_owned(),
                                send_key: l.send_key.get_ref().trim().to_owned(),
                                remote: l.remote.as_ref().map(text),
                                remote_rtcp: l.remote_rtcp.as_ref().map(text),
                                rtcp_mux: l.rtcp_mux,
                            })
                            .collect(),
                        tracks: p
                            .track
                            .iter()
                            .map(|t| TrackSettings {
                                name: text(&t.name),
                                kind: text(&t.kind),
                                leg: text(&t.leg),
                                ssrc: t.ssrc.as_ref().map(|s| *s.get_ref()),
                                encodings: t.encodings.as_ref().map(|e| e.get_ref().clone()),
                                clock_rate: t.clock_rate.as_ref().map(|c| *c.get_ref()),
                                codec: t.codec.as_ref().map(text),
                            })
                            .collect(),
                        subscriptions: p
                            .subscription
                            .iter()
                            .map(|s| SubscriptionSettings {
                                track: text(&s.track),
                                leg: text(&s.leg),
                                ssrc: s.ssrc.as_ref().map(|v| *v.get_ref()),
                                payload_type: s.payload_type.as_ref().map(|v| *v.get_ref()),
                                max_layers: s.max_layers(),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        Settings {
            network: network.clone(),
            meetings,
        }
    }

    /// Compare the running settings (`self`) with a reloaded file's. Meetings and
    /// participants are matched by id, legs and tracks by name, subscriptions by their
    /// position among the participant's subscriptions and must keep their track, leg,
    /// SSRC and payload type. A matched subscription whose only change is its layer
    /// limits yields a [`LayerChange`]; anything else is described in
    /// [`Reload::needs_restart`]. Reordering meetings, participants, legs or tracks is
    /// not a change; reordering subscriptions is.
    pub fn diff(&self, new: &Settings) -> Reload {
        let mut reload = Reload::default();
        let restart = &mut reload.needs_restart;
        let (a, b) = (&self.network, &new.network);
        if a.listen != b.listen {
            restart.push(format!(
                "forwarder.listen changed from {} to {}",
                a.listen, b.listen
            ));
        }
        if a.rtcp_listen != b.rtcp_listen {
            restart.push(format!(
                "forwarder.rtcp_listen changed from {:?} to {:?}",
                a.rtcp_listen, b.rtcp_listen
            ));
        }
        if a.metrics != b.metrics {
            restart.push(format!(
                "forwarder.metrics changed from {:?} to {:?}",
                a.metrics, b.metrics
            ));
        }
        if a.shards != b.shards {
            restart.push(format!(
                "forwarder.shards changed from {:?} to {:?}",
                a.shards, b.shards
            ));
        }
        if a.socket_buffer_bytes != b.socket_buffer_bytes {
            restart.push(format!(
                "forwarder.socket_buffer_bytes changed from {} to {}",
                a.socket_buffer_bytes, b.socket_buffer_bytes
            ));
        }
        if a.xdp != b.xdp {
            restart.push("forwarder.xdp changed".to_owned());
        }
        for paired in pair(&self.meetings, &new.meetings, |m| &m.id) {
            match paired {
                Paired::Removed(m) => reload
                    .needs_restart
                    .push(format!("meeting `{}` removed", m.id)),
                Paired::Added(m) => reload
                    .needs_restart
                    .push(format!("meeting `{}` added", m.id)),
                Paired::Both(old, new) => Self::diff_meeting(old, new, &mut reload),
            }
        }
        reload
    }

    fn diff_meeting(old: &MeetingSettings, new: &MeetingSettings, reload: &mut Reload) {
        let m = &old.id;
        if (&old.listen, &old.rtcp_listen) != (&new.listen, &new.rtcp_listen) {
            reload.needs_restart.push(format!(
                "meeting `{m}`: listen/rtcp_listen changed from {:?}/{:?} to {:?}/{:?}",
                old.listen, old.rtcp_listen, new.listen, new.rtcp_listen
            ));
        }
        for paired in pair(&old.participants, &new.participants, |p| &p.id) {
            match paired {
                Paired::Removed(p) => reload
                    .needs_restart
                    .push(format!("meeting `{m}`: participant `{}` removed", p.id)),
                Paired::Added(p) => reload
                    .needs_restart
                    .push(format!("meeting `{m}`: participant `{}` added", p.id)),
                Paired::Both(old, new) => Self::diff_participant(m, old, new, reload),
            }
        }
    }

    fn diff_participant(
        meeting: &MeetingId,
        old: &ParticipantSettings,
        new: &ParticipantSettings,
        reload: &mut Reload,
    ) {
        let at = format!("meeting `{meeting}`, participant `{}`", old.id);
        let restart = &mut reload.needs_restart;
        for paired in pair(&old.legs, &new.legs, |l| &l.name) {
            let (a, b) = match paired {
                Paired::Removed(l) => {
                    restart.push(format!("{at}: leg `{}` removed", l.name));
                    continue;
                }
                Paired::Added(l) => {
                    restart.push(format!("{at}: leg `{}` added", l.name));
                    continue;
                }
                Paired::Both(a, b) => (a, b),
            };
            let changed = changed_fields(&[
                ("profile", a.profile != b.profile),
                ("receive_key", a.receive_key != b.receive_key),
                ("send_key", a.send_key != b.send_key),
                ("remote", a.remote != b.remote),
                ("remote_rtcp", a.remote_rtcp != b.remote_rtcp),
                ("rtcp_mux", a.rtcp_mux != b.rtcp_mux),
            ]);
            if !changed.is_empty() {
                restart.push(format!("{at}: leg `{}` changed {changed}", a.name));
            }
        }
        for paired in pair(&old.tracks, &new.tracks, |t| &t.name) {
            let (a, b) = match paired {
                Paired::Removed(t) => {
                    restart.push(format!("{at}: track `{}` removed", t.name));
                    continue;
                }
                Paired::Added(t) => {
                    restart.push(format!("{at}: track `{}` added", t.name));
                    continue;
                }
                Paired::Both(a, b) => (a, b),
            };
            let changed = changed_fields(&[
                ("kind", a.kind != b.kind),
                ("leg", a.leg != b.leg),
                ("ssrc", a.ssrc != b.ssrc),
                ("encodings", a.encodings != b.encodings),
                ("clock_rate", a.clock_rate != b.clock_rate),
                ("codec", a.codec != b.codec),
            ]);
            if !changed.is_empty() {
                restart.push(format!("{at}: track `{}` changed {changed}", a.name));
            }
        }
        for (i, (a, b)) in old.subscriptions.iter().zip(&new.subscriptions).enumerate() {
            let changed = changed_fields(&[
                ("track", a.track != b.track),
                ("leg", a.leg != b.leg),
                ("ssrc", a.ssrc != b.ssrc),
                ("payload_type", a.payload_type != b.payload_type),
            ]);
            if !changed.is_empty() {
                restart.push(format!(
                    "{at}: subscription[{i}] (`{}`) changed {changed}",
                    a.track
                ));
            } else if a.max_layers != b.max_layers {
                reload.layer_changes.push(LayerChange {
                    meeting: meeting.clone(),
                    participant: old.id.clone(),
                    index: i,
                    track: a.track.clone(),
                    from: a.max_layers,
                    to: b.max_layers,
                });
            }
        }
        for (i, s) in old
            .subscriptions
            .iter()
            .enumerate()
            .skip(new.subscriptions.len())
        {
            restart.push(format!("{at}: subscription[{i}] (`{}`) removed", s.track));
        }
        for (i, s) in new
            .subscriptions
            .iter()
            .enumerate()
            .skip(old.subscriptions.len())
        {
            restart.push(format!("{at}: subscription[{i}] (`{}`) added", s.track));
        }
    }

    /// The subscribed track (`participant/track`) and layer limits of the `index`-th
    /// subscription of `participant` in `meeting`, if there is one.
    pub fn subscription(
        &self,
        meeting: &MeetingId,
        participant: &ParticipantId,
        index: usize,
    ) -> Option<(&str, Layers)> {
        self.meetings
            .iter()
            .find(|m| m.id == *meeting)?
            .participants
            .iter()
            .find(|p| p.id == *participant)?
            .subscriptions
            .get(index)
            .map(|s| (s.track.as_str(), s.max_layers))
    }

    /// Record a change applied to the running forwarder, so that the next reload is
    /// compared with what runs. Unknown subscriptions are ignored.
    pub fn record(&mut self, change: &LayerChange) {
        let subscription = self
            .meetings
            .iter_mut()
            .find(|m| m.id == change.meeting)
            .and_then(|m| {
                m.participants
                    .iter_mut()
                    .find(|p| p.id == change.participant)
            })
            .and_then(|p| p.subscriptions.get_mut(change.index));
        if let Some(s) = subscription {
            s.max_layers = change.to;
        }
    }
}

/// One item of two lists paired by key, by [`pair`].
enum Paired<'a, T> {
    Removed(&'a T),
    Added(&'a T),
    Both(&'a T, &'a T),
}

/// Pairs the items of two lists by key: the items of `old` in their order (each with its
/// match in `new`, or removed), then the items only in `new` in theirs.
fn pair<'a, T, K: PartialEq + ?Sized>(
    old: &'a [T],
    new: &'a [T],
    key: impl Fn(&T) -> &K,
) -> Vec<Paired<'a, T>> {
    let mut out: Vec<Paired<'a, T>> = old
        .iter()
        .map(|o| match new.iter().find(|n| key(n) == key(o)) {
            Some(n) => Paired::Both(o, n),
            None => Paired::Removed(o),
        })
        .collect();
    out.extend(
        new.iter()
            .filter(|n| !old.iter().any(|o| key(o) == key(n)))
            .map(Paired::Added),
    );
    out
}

/// `profile, send_key` for the fields whose flag is set; empty if none is.
fn changed_fields(fields: &[(&str, bool)]) -> String {
    fields
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(profile: SrtpProfile) -> String {
        MasterKey::generate(profile).to_inline()
    }

    fn sample() -> String {
        let p = SrtpProfile::AesCm128HmacSha1_80;
        format!(
            r#"
[forwarder]
listen = "127.0.0.1:40000"
metrics = "127.0.0.1:9464"

[[meeting]]
id = "demo"

[[meeting.participant]]
id = "alice"

[[meeting.participant.leg]]
name = "video"
profile = "AES_CM_128_HMAC_SHA1_80"
receive_key = "{}"
send_key = "{}"

[[meeting.participant.track]]
name = "camera"
kind = "video"
leg = "video"
ssrc = 0x11111111

[[meeting.participant]]
id = "bob"

[[meeting.participant.leg]]
name = "video"
profile = "AES_CM_128_HMAC_SHA1_80"
receive_key = "{}"
send_key = "{}"
remote = "127.0.0.1:6000"

[[meeting.participant.subscription]]
track = "alice/camera"
leg = "video"
"#,
            key(p),
            key(p),
            key(p),
            key(p)
        )
    }

    fn parse_text(text: &str) -> Result<Loaded, ConfigError> {
        parse(
            Path::new("fanout.toml"),
            text,
            Instant::now(),
            Overrides::default(),
        )
    }

    #[test]
    fn a_valid_file_configures_the_core() {
        let loaded = parse_text(&sample()).unwrap();
        assert_eq!(loaded.network.listen, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(
            loaded.network.rtcp_listen,
            Some("127.0.0.1:40001".parse().unwrap())
        );
        assert_eq!(
            loaded.network.metrics,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(loaded.shards[0].forwarder.leg_count(), 2);
        assert_eq!(loaded.shards[0].forwarder.subscription_count(), 1);
        let bob = loaded.shards[0]
            .forwarder
            .leg_id(&"demo".into(), &"bob".into(), "video")
            .unwrap();
        assert_eq!(
            loaded.shards[0].forwarder.leg_remote(bob),
            Some("127.0.0.1:6000".parse().unwrap())
        );
    }

    fn error_for(text: &str) -> ConfigError {
        parse_text(text).expect_err("the file should be rejected")
    }

    #[test]
    fn the_xdp_section_sets_the_guard_and_defaults_the_rest() {
        let with = |section: &str| {
            sample().replacen(
                "metrics = \"127.0.0.1:9464\"\n",
                &format!("metrics = \"127.0.0.1:9464\"\n\n[forwarder.xdp]\n{section}\n"),
                1,
            )
        };
        assert_eq!(parse_text(&sample()).unwrap().network.xdp, None);
        let loaded = parse_text(&with(
            "interface = \"eth1\"\nmode = \"generic\"\nunknown_media = \"always\"\nflood_rate = 100",
        ))
        .unwrap();
        let options = loaded.network.xdp.unwrap().options(vec![40000]);
        assert_eq!(options.interface, "eth1");
        assert_eq!(options.mode, AttachMode::Generic);
        assert_eq!(options.unknown_media, UnknownMedia::Always);
        assert_eq!(options.flood_rate, 100);
        let defaults = GuardOptions::new("eth1", vec![40000]);
        assert_eq!(options.flood_burst, defaults.flood_burst);
        assert_eq!(options.source_rate, defaults.source_rate);
        assert_eq!(options.ports, vec![40000]);

        let error = error_for(&with("interface = \"eth1\"\nmode = \"fast\""));
        assert!(error.to_string().contains("fast"), "{error}");
        let error = error_for(&with("interface = \"eth1\"\nports = [1]"));
        assert!(error.to_string().contains("ports"), "{error}");
        let error = error_for(&with("mode = \"native\""));
        assert!(error.to_string().contains("interface"), "{error}");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let text = sample().replace("ssrc = 0x11111111", "ssrc = \"x\"");
        let e = error_for(&text);
        assert_eq!(e.field, "meeting[0].participant[0].track[0].ssrc");
        let line = text
            .lines()
            .position(|l| l.starts_with("ssrc = \"x\""))
            .unwrap()
            + 1;
        assert_eq!(e.position.map(|p| p.0), Some(line));
        assert!(
            e.to_string().starts_with(&format!("fanout.toml:{line}:")),
            "{e}"
        );

        let e = error_for(&sample().replace("kind = \"video\"", "kind = \"hologram\""));
        assert_eq!(e.field, "meeting[0].participant[0].track[0].kind");
        assert!(e.message.contains("hologram"), "{e}");

        let e = error_for(&sample().replace("track = \"alice/camera\"", "track = \"alice/mic\""));
        assert_eq!(e.field, "meeting[0].participant[1].subscription[0].track");

        let e =
            error_for(&sample().replace("remote = \"127.0.0.1:6000\"", "remote = \"localhost\""));
        assert_eq!(e.field, "meeting[0].participant[1].leg[0].remote");

        let e = error_for(&sample().replacen(
            "profile = \"AES_CM_128_HMAC_SHA1_80\"",
            "profile = \"AES_CM_128_HMAC_SHA1_80\"\ncolour = 1",
            1,
        ));
        assert_eq!(e.field, "meeting[0].participant[0].leg[0].colour");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn keys_are_checked_against_their_profile() {
        let gcm = key(SrtpProfile::AeadAes128Gcm);
        let text = sample();
        let first_key = text
            .lines()
            .find_map(|l| l.strip_prefix("receive_key = \""))
            .unwrap()
            .trim_end_matches('"')
            .to_owned();
        let e = error_for(&text.replacen(&first_key, &gcm, 1));
        assert_eq!(e.field, "meeting[0].participant[0].leg[0].receive_key");
    }

    #[test]
    fn reused_keys_are_refused() {
        let text = sample();
        let keys: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("send_key = \""))
            .map(|k| k.trim_end_matches('"').to_owned())
            .collect();
        let e = error_for(&text.replacen(&keys[1], &keys[0], 1));
        assert_eq!(e.field, "meeting[0].participant[1].leg[0].send_key");
        assert!(e.message.contains("keystream"), "{e}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let e = error_for(&sample().replace("id = \"bob\"", "id = \"alice\""));
        assert_eq!(e.field, "meeting[0].participant[1].id");
    }

    /// Alice publishes a simulcast camera and a microphone; bob subscribes to both. The
    /// markers `#CAMERA` and `#MIC` sit in bob's two subscriptions, for replacements.
    fn simulcast_sample() -> String {
        let p = SrtpProfile::AesCm128HmacSha1_80;
        format!(
            r#"
[forwarder]
listen = "127.0.0.1:40000"

[[meeting]]
id = "demo"

[[meeting.participant]]
id = "alice"

[[meeting.participant.leg]]
name = "main"
profile = "AES_CM_128_HMAC_SHA1_80"
receive_key = "{}"
send_key = "{}"

[[meeting.participant.track]]
name = "camera"
kind = "video"
leg = "main"
codec = "VP8"
encodings = [0x1111, 0x2222]

[[meeting.participant.track]]
name = "mic"
kind = "audio"
leg = "main"
ssrc = 0x3333

[[meeting.participant]]
id = "bob"

[[meeting.participant.leg]]
name = "main"
profile = "AES_CM_128_HMAC_SHA1_80"
receive_key = "{}"
send_key = "{}"
remote = "127.0.0.1:6000"

[[meeting.participant.subscription]]
track = "alice/camera"
leg = "main"
max_encoding = 0 #CAMERA

[[meeting.participant.subscription]]
track = "alice/mic"
leg = "main" #MIC
"#,
            key(p),
            key(p),
            key(p),
            key(p)
        )
    }

    fn settings(text: &str) -> Settings {
        parse_text(text).unwrap().settings
    }

    #[test]
    fn the_same_file_reloads_to_nothing() {
        let text = simulcast_sample();
        let reload = settings(&text).diff(&settings(&text));
        assert!(reload.is_empty(), "{reload:?}");
    }

    #[test]
    fn layer_limits_change_live() {
        let text = simulcast_sample();
        let mut loaded = parse_text(&text).unwrap();
        let edited = text.replace(
            "max_encoding = 0 #CAMERA",
            "max_encoding = 1\nmax_temporal_layer = 2",
        );
        let reload = loaded.settings.diff(&settings(&edited));
        assert!(reload.needs_restart.is_empty(), "{reload:?}");
        let expected = LayerChange {
            meeting: "demo".into(),
            participant: "bob".into(),
            index: 0,
            track: "alice/camera".into(),
            from: Layers {
                encoding: 0,
                ..Layers::ALL
            },
            to: Layers {
                encoding: 1,
                temporal: 2,
                ..Layers::ALL
            },
        };
        assert_eq!(reload.layer_changes, vec![expected.clone()]);
        assert_eq!(
            expected.to_string(),
            "meeting `demo`, participant `bob`, subscription[0] (`alice/camera`): \
             max_encoding=0 max_spatial_layer=any max_temporal_layer=any -> \
             max_encoding=1 max_spatial_layer=any max_temporal_layer=2"
        );

        // Applied to the running core, found the way the file names it.
        let core = &mut loaded.shards[0].forwarder;
        let bob = core.subscriptions_of(&"demo".into(), &"bob".into());
        assert_eq!(bob.len(), 2);
        assert_eq!(expected.apply(core), Ok(expected.from));
        assert_eq!(core.max_layers(bob[0]), Some(expected.to));
        assert_eq!(core.max_layers(bob[1]), Some(Layers::ALL));

        // Once recorded, the same file is no change; going back is one.
        loaded.settings.record(&expected);
        assert!(loaded.settings.diff(&settings(&edited)).is_empty());
        let back = loaded.settings.diff(&settings(&text));
        assert_eq!(back.layer_changes.len(), 1);
        assert_eq!(back.layer_changes[0].from, expected.to);
        assert_eq!(back.layer_changes[0].to, expected.from);
    }

    #[test]
    fn subscriptions_are_matched_by_position() {
        let text = simulcast_sample();
        let edited = text.replace(
            "leg = \"main\" #MIC",
            "leg = \"main\"\nmax_temporal_layer = 0",
        );
        let reload = settings(&text).diff(&settings(&edited));
        assert!(reload.needs_restart.is_empty(), "{reload:?}");
        assert_eq!(reload.layer_changes.len(), 1);
        assert_eq!(reload.layer_changes[0].index, 1);
        assert_eq!(reload.layer_changes[0].track, "alice/mic");

        // A subscription that now names another track is another subscription: its new
        // limits are not applied to the old one.
        let edited = text
            .replace("track = \"alice/camera\"", "track = \"alice/mic\"")
            .replace(
                "track = \"alice/mic\"\nleg = \"main\" #MIC",
                "track = \"alice/camera\"\nleg = \"main\"",
            );
        let reload = settings(&text).diff(&settings(&edited));
        assert!(reload.layer_changes.is_empty(), "{reload:?}");
        assert_eq!(
            reload.needs_restart,
            vec![
                "meeting `demo`, participant `bob`: subscription[0] (`alice/camera`) changed track",
                "meeting `demo`, participant `bob`: subscription[1] (`alice/mic`) changed track",
            ]
        );
    }

    #[test]
    fn other_changes_need_a_restart() {
        let text = simulcast_sample();
        let removed_mic = text.replace(
            "[[meeting.participant.subscription]]\ntrack = \"alice/mic\"\nleg = \"main\" #MIC",
            "",
        );
        let edited = removed_mic
            .replace("remote = \"127.0.0.1:6000\"", "remote = \"127.0.0.1:6002\"")
            .replace(
                "encodings = [0x1111, 0x2222]",
                "encodings = [0x1111, 0x2224]",
            )
            .replace(
                "listen = \"127.0.0.1:40000\"",
                "listen = \"127.0.0.1:40010\"",
            )
            .replace("max_encoding = 0 #CAMERA", "max_encoding = 1")
            + "\n[[meeting]]\nid = \"second\"\n";
        let reload = settings(&text).diff(&settings(&edited));
        assert_eq!(
            reload.needs_restart,
            vec![
                "forwarder.listen changed from 127.0.0.1:40000 to 127.0.0.1:40010",
                "forwarder.rtcp_listen changed from Some(127.0.0.1:40001) to Some(127.0.0.1:40011)",
                "meeting `demo`, participant `alice`: track `camera` changed encodings",
                "meeting `demo`, participant `bob`: leg `main` changed remote",
                "meeting `demo`, participant `bob`: subscription[1] (`alice/mic`) removed",
                "meeting `second` added",
            ]
        );
        // What can change live still does, next to what cannot.
        assert_eq!(reload.layer_changes.len(), 1);
        assert_eq!(reload.layer_changes[0].to.encoding, 1);
    }

    #[test]
    fn reordering_participants_is_no_change() {
        let text = simulcast_sample();
        let bob_at = text.find("[[meeting.participant]]\nid = \"bob\"").unwrap();
        let alice_at = text
            .find("[[meeting.participant]]\nid = \"alice\"")
            .unwrap();
        let reordered = format!(
            "{}{}{}",
            &text[..alice_at],
            &text[bob_at..],
            &text[alice_at..bob_at]
        );
        assert!(settings(&text).diff(&settings(&reordered)).is_empty());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let text = simulcast_sample();
        let debug = format!("{:?}", settings(&text));
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("send_key = \"inline:"))
            .unwrap()
            .trim_end_matches('"');
        assert!(!debug.contains(key), "{debug}");
    }

    /// `sample()` with three more meetings, `m1` and `m2` at their own ports and `m3`
    /// sharing `m2`'s, each a copy of `demo` with fresh keys.
    fn sharded_sample(shards: &str) -> String {
        let mut text = sample().replacen(
            "metrics = \"127.0.0.1:9464\"",
            &format!("metrics = \"127.0.0.1:9464\"\n{shards}"),
            1,
        );
        let meeting_at = text.find("[[meeting]]").unwrap();
        let demo = text[meeting_at..].to_owned();
        for (i, (id, listen)) in [
            ("m1", "127.0.0.1:41000"),
            ("m2", "127.0.0.1:42000"),
            ("m3", "127.0.0.1:42000"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut copy = demo.replacen(
                "id = \"demo\"",
                &format!("id = \"{id}\"\nlisten = \"{listen}\""),
                1,
            );
            let mut from = 0;
            while let Some(found) = copy[from..].find("key = \"inline:") {
                let at = from + found + "key = \"".len();
                let end = at + copy[at..].find('"').unwrap();
                copy.replace_range(at..end, &key(SrtpProfile::AesCm128HmacSha1_80));
                from = at;
            }
            // One remote per leg and shard: give bob other RTP and RTCP ports.
            copy = copy.replace("127.0.0.1:6000", &format!("127.0.0.1:{}", 6002 + 2 * i));
            text.push_str(&copy);
        }
        text
    }

    fn shard_of(loaded: &Loaded, meeting: &str) -> usize {
        loaded
            .shards
            .iter()
            .position(|s| s.meetings.contains(&MeetingId(meeting.into())))
            .unwrap()
    }

    #[test]
    fn meetings_at_their_own_ports_spread_over_shards() {
        let loaded = parse_text(&sharded_sample("shards = 2")).unwrap();
        assert_eq!(loaded.shards.len(), 2);
        // Three port groups (forwarder.listen with demo, m1, m2+m3) of which m2+m3 weighs
        // most: it gets a shard; the lighter two share the other.
        let (demo, m1, m2, m3) = (
            shard_of(&loaded, "demo"),
            shard_of(&loaded, "m1"),
            shard_of(&loaded, "m2"),
            shard_of(&loaded, "m3"),
        );
        assert_eq!(m2, m3, "one address, one shard");
        assert_ne!(m2, demo);
        assert_eq!(m1, demo);
        let addr = |s: &str| -> SocketAddr { s.parse().unwrap() };
        // forwarder.listen leads its shard's sockets: it is the default for transmits.
        assert_eq!(
            loaded.shards[demo].listen,
            [
                addr("127.0.0.1:40000"),
                addr("127.0.0.1:40001"),
                addr("127.0.0.1:41000"),
                addr("127.0.0.1:41001")
            ]
        );
        assert_eq!(
            loaded.shards[m2].listen,
            [addr("127.0.0.1:42000"), addr("127.0.0.1:42001")]
        );
        // Legs of a meeting at its own port send from it; the others from the default.
        let core = &loaded.shards[m1].forwarder;
        let bob = core.leg_id(&"m1".into(), &"bob".into(), "video").unwrap();
        assert_eq!(core.leg_local(bob), Some(addr("127.0.0.1:41000")));
        let bob = core.leg_id(&"demo".into(), &"bob".into(), "video").unwrap();
        assert_eq!(core.leg_local(bob), None);
        // Each core holds its own meetings only.
        assert_eq!(core.leg_count(), 4);
        assert_eq!(loaded.shards[m2].forwarder.leg_count(), 4);
    }

    #[test]
    fn shards_are_capped_by_addresses_and_overridable() {
        let one = parse_text(&sample()).unwrap();
        assert_eq!(
            one.shards.len(),
            1,
            "one address, one shard, whatever the cores"
        );
        let text = sharded_sample("shards = 8");
        assert_eq!(parse_text(&text).unwrap().shards.len(), 3);
        let overridden = parse(
            Path::new("fanout.toml"),
            &text,
            Instant::now(),
            Overrides {
                shards: Some(1),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(overridden.shards.len(), 1);
        assert_eq!(overridden.shards[0].meetings.len(), 4);
    }

    #[test]
    fn meeting_addresses_are_checked() {
        let text = sharded_sample("");
        for (from, to, field, message) in [
            (
                "listen = \"127.0.0.1:41000\"",
                "listen = \"127.0.0.1:0\"",
                "meeting[1].listen",
                "not 0",
            ),
            (
                "listen = \"127.0.0.1:41000\"",
                "listen = \"127.0.0.1:40001\"",
                "meeting[1].listen",
                "already another meeting's",
            ),
            (
                "listen = \"127.0.0.1:41000\"",
                "listen = \"127.0.0.1:41999\"",
                "meeting[2].listen",
                "already another meeting's",
            ),
            (
                "listen = \"127.0.0.1:41000\"",
                "listen = \"nowhere\"",
                "meeting[1].listen",
                "not an IP address",
            ),
            (
                "id = \"m1\"",
                "id = \"demo\"",
                "meeting[1].id",
                "already exists",
            ),
            (
                "id = \"m2\"",
                "id = \"demo\"",
                "meeting[2].id",
                "already exists",
            ),
            (
                "shards = 8",
                "shards = 0",
                "forwarder.shards",
                "at least one",
            ),
        ] {
            let text = if from == "shards = 8" {
                sharded_sample("shards = 8")
            } else {
                text.clone()
            };
            let e = error_for(&text.replacen(from, to, 1));
            assert_eq!(e.field, field, "{to}: {e}");
            assert!(e.message.contains(message), "{to}: {e}");
        }
        let e = error_for(&sample().replacen(
            "id = \"demo\"",
            "id = \"demo\"\nrtcp_listen = \"127.0.0.1:5\"",
            1,
        ));
        assert_eq!(e.field, "meeting[0].rtcp_listen");
    }

    #[test]
    fn a_meeting_address_change_needs_a_restart() {
        let text = sharded_sample("");
        let moved = text.replacen("127.0.0.1:41000", "127.0.0.1:43000", 1);
        let reload = settings(&text).diff(&settings(&moved));
        assert!(reload.layer_changes.is_empty());
        assert_eq!(reload.needs_restart.len(), 1, "{:?}", reload.needs_restart);
        assert!(reload.needs_restart[0].starts_with("meeting `m1`: listen/rtcp_listen changed"));
    }
}
