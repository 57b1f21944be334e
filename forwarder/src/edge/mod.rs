//! The forwarder's edge in the kernel: the XDP port guard (ebpf/fanout_xdp.c), loaded and
//! attached through aya, and every map it shares with user space behind typed calls.
//!
//! The guard sits on the interface in front of the forwarder's UDP ports and drops, before
//! any socket sees them: fragments, packets whose first byte is not STUN, DTLS or RTP/RTCP
//! (RFC 7983), RTP/RTCP from sources that are not a leg's remote address (unless a leg is
//! still waiting to learn its address), and unknown sources beyond a per-source and a
//! per-CPU flood budget. It can also hand allowed packets to AF_XDP sockets (the afxdp
//! driver). Its verdicts are counted per CPU and exported as `fanout_xdp_*` metrics.
//!
//! * [`layout`]: the `#[repr(C)]` mirrors of ebpf/fanout_xdp.h.
//! * [`XdpGuard`]: load, attach (native mode, generic as fallback), the port set, the
//!   allowlist of peers, the flags, the counters. Attached through a BPF link: when the
//!   process ends, however it ends, the kernel detaches the program, so a crashed forwarder
//!   never leaves its ports closed, and a restarted one attaches afresh.
//! * [`PeerSync`]: one per shard; keeps the allowlist equal to the remote addresses of the
//!   shard's core (configured, learned, moved, removed legs and relay links).

pub mod layout;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, XskMap};
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;
use tracing::{info, warn};

use crate::sfu::Forwarder;
use layout::{Config, Counter, Peer, Port, Verdict, FLAG_LATCHING_OPEN, FLAG_REDIRECT_XSK};

/// How to attach (`--xdp-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// Native (driver) mode, generic (skb) mode where the driver has none.
    #[default]
    Auto,
    /// In the driver, before any socket buffer is allocated: fastest; fails where the
    /// driver has no XDP support.
    Native,
    /// After the driver, on the kernel's socket buffer: works on every interface.
    Generic,
}

/// Which unknown sources may send RTP/RTCP (`--xdp-unknown-media`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownMedia {
    /// Only while some leg waits to learn its remote address from its first packet. Once
    /// every leg has its address, RTP/RTCP from anyone else is dropped in the kernel: a
    /// plain-SRTP peer whose NAT rebinds mid-call is then dropped too (ICE peers move with
    /// STUN, which always may make first contact).
    #[default]
    WhileLatching,
    /// Always, within the unknown-source budgets (NAT rebinding keeps working; spoofed
    /// RTP reaches user space at the flood budget's rate and is dropped there by SRTP
    /// authentication).
    Always,
}

/// What the guard is asked to do. Budgets apply to sources not in the allowlist.
#[derive(Debug, Clone)]
pub struct GuardOptions {
    pub interface: String,
    pub mode: AttachMode,
    /// The forwarder's UDP ports (destination ports the guard applies to).
    pub ports: Vec<u16>,
    pub unknown_media: UnknownMedia,
    /// Packets per second one unknown source address may send.
    pub source_rate: u32,
    pub source_burst: u32,
    /// Packets per second all unknown sources together may send, per receiving CPU.
    pub flood_rate: u32,
    pub flood_burst: u32,
}

impl GuardOptions {
    /// Defaults sized for ICE and latching: a handshake is a few packets, a browser's STUN
    /// checks are tens per second at most.
    pub fn new(interface: impl Into<String>, ports: Vec<u16>) -> GuardOptions {
        GuardOptions {
            interface: interface.into(),
            mode: AttachMode::Auto,
            ports,
            unknown_media: UnknownMedia::WhileLatching,
            source_rate: 50,
            source_burst: 20,
            flood_rate: 5_000,
            flood_burst: 500,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(
        "this forwarder was built without the XDP port guard (clang was missing at build \
         time): run scripts/install-deps.sh and rebuild"
    )]
    NotBuilt,
    #[error("cannot load the XDP port guard: {0}")]
    Load(String),
    #[error("cannot attach the XDP port guard to {interface}: {reason}")]
    Attach { interface: String, reason: String },
    #[error("no network interface named {0}")]
    NoSuchInterface(String),
    #[error("XDP map {map}: {reason}")]
    Map { map: &'static str, reason: String },
}

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> EdgeError {
    move |e| EdgeError::Map {
        map,
        reason: e.to_string(),
    }
}

/// The guard's object file, compiled by build.rs.
#[cfg(fanout_xdp)]
fn object() -> Result<&'static [u8], EdgeError> {
    Ok(aya::include_bytes_aligned!(concat!(
        env!("OUT_DIR"),
        "/fanout_xdp.o"
    )))
}

#[cfg(not(fanout_xdp))]
fn object() -> Result<&'static [u8], EdgeError> {
    Err(EdgeError::NotBuilt)
}

/// The loaded guard: its program (attached or not) and maps. Shared by the shards (and
/// the AF_XDP driver) as `Arc<XdpGuard>`; map updates are system calls behind one lock.
#[derive(Debug)]
pub struct XdpGuard {
    interface: String,
    interface_index: u32,
    /// The mode asked for.
    mode: AttachMode,
    /// How many ports it guards.
    ports: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Owns the program and its link: dropping it detaches.
    ebpf: Ebpf,
    /// The mode the program got (`None`: loaded, not attached, as in the classifier tests).
    attached: Option<AttachMode>,
    config_map: Array<MapData, Config>,
    config: Config,
    peers: BpfHashMap<MapData, Peer, u32>,
    counters: PerCpuArray<MapData, Counter>,
    xsks: XskMap<MapData>,
    /// How many shards hold each allowed peer (a peer is in the map while one does).
    peer_holders: HashMap<Peer, u32>,
    /// Shards whose core has a leg waiting to learn its address.
    latching_shards: HashSet<usize>,
    unknown_media: UnknownMedia,
    /// Allowlist updates the kernel refused (map full): those peers are dropped.
    peer_update_failures: u64,
}

impl XdpGuard {
    /// Attach the loaded guard to its interface, in the mode the options asked for. Call
    /// it after each shard's first [`PeerSync::sync`], so that no packet of a known peer,
    /// nor of a leg still latching, meets an empty allowlist.
    pub fn start(&self) -> Result<AttachMode, EdgeError> {
        let mut inner = self.lock();
        let interface = &self.interface;
        let index = self.interface_index;
        let program = program(&mut inner.ebpf)?;
        let mut attach = |mode| {
            program
                .attach_to_if_index(index, mode)
                .map_err(|e| EdgeError::Attach {
                    interface: interface.clone(),
                    reason: error_chain(&e),
                })
        };
        let mode = match self.mode {
            AttachMode::Native => attach(XdpMode::Driver).map(|_| AttachMode::Native)?,
            AttachMode::Generic => attach(XdpMode::Skb).map(|_| AttachMode::Generic)?,
            AttachMode::Auto => match attach(XdpMode::Driver) {
                Ok(_) => AttachMode::Native,
                Err(native) => {
                    warn!(%interface, error = %native, "no native XDP on this interface; attaching in generic (skb) mode");
                    attach(XdpMode::Skb).map(|_| AttachMode::Generic)?
                }
            },
        };
        inner.attached = Some(mode);
        info!(
            %interface,
            mode = ?mode,
            ports = self.ports,
            peers = inner.peer_holders.len(),
            "XDP port guard attached"
        );
        Ok(mode)
    }

    /// Load the guard and fill its maps without attaching it anywhere (for running it on
    /// crafted packets with `BPF_PROG_TEST_RUN`). `options.interface` must still exist.
    pub fn load(options: &GuardOptions) -> Result<XdpGuard, EdgeError> {
        let interface_index = interface_index(&options.interface)?;
        let mut ebpf = Ebpf::load(object()?).map_err(|e| EdgeError::Load(error_chain(&e)))?;
        program(&mut ebpf)?
            .load()
            .map_err(|e| EdgeError::Load(error_chain(&e)))?;
        let mut take = |name: &'static str| {
            ebpf.take_map(name).ok_or(EdgeError::Map {
                map: name,
                reason: "not in the object".into(),
            })
        };
        let mut ports: BpfHashMap<MapData, u16, Port> =
            BpfHashMap::try_from(take(layout::MAP_PORTS)?).map_err(map_error(layout::MAP_PORTS))?;
        let config_map =
            Array::try_from(take(layout::MAP_CONFIG)?).map_err(map_error(layout::MAP_CONFIG))?;
        let peers =
            BpfHashMap::try_from(take(layout::MAP_PEERS)?).map_err(map_error(layout::MAP_PEERS))?;
        let counters = PerCpuArray::try_from(take(layout::MAP_COUNTERS)?)
            .map_err(map_error(layout::MAP_COUNTERS))?;
        let xsks =
            XskMap::try_from(take(layout::MAP_XSKS)?).map_err(map_error(layout::MAP_XSKS))?;
        for &port in &options.ports {
            ports
                .insert(port, Port::default(), 0)
                .map_err(map_error(layout::MAP_PORTS))?;
        }
        // The port map is only written here; dropping our handle leaves it to the program.
        drop(ports);
        let config = Config {
            source_interval_ns: interval_ns(options.source_rate),
            source_burst: u64::from(options.source_burst.max(1)),
            flood_interval_ns: interval_ns(options.flood_rate),
            flood_burst: u64::from(options.flood_burst.max(1)),
            flags: 0,
            _pad: 0,
        };
        let mut inner = Inner {
            ebpf,
            attached: None,
            config_map,
            config,
            peers,
            counters,
            xsks,
            peer_holders: HashMap::new(),
            latching_shards: HashSet::new(),
            unknown_media: options.unknown_media,
            peer_update_failures: 0,
        };
        inner.write_config()?;
        Ok(XdpGuard {
            interface: options.interface.clone(),
            interface_index,
            mode: options.mode,
            ports: options.ports.len(),
            inner: Mutex::new(inner),
        })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn interface_index(&self) -> u32 {
        self.interface_index
    }

    /// The mode the program was attached in, `None` if only loaded.
    pub fn attached(&self) -> Option<AttachMode> {
        self.lock().attached
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Put the AF_XDP socket of receive queue `queue` into the redirect map and turn
    /// redirection on: allowed packets of that queue go to the socket from now on.
    pub fn register_xsk(&self, queue: u32, socket: BorrowedFd<'_>) -> Result<(), EdgeError> {
        let mut inner = self.lock();
        inner
            .xsks
            .set(queue, socket.as_raw_fd(), 0)
            .map_err(map_error(layout::MAP_XSKS))?;
        inner.config.flags |= FLAG_REDIRECT_XSK;
        inner.write_config()
    }

    /// Allow `peer`. Shards share the map and count their holds: a peer stays while any
    /// shard holds it.
    pub fn allow(&self, peer: SocketAddr) {
        self.lock().hold(Peer::from(peer));
    }

    /// Release one hold on `peer`; its packets are dropped in the kernel once nobody
    /// holds it.
    pub fn forget(&self, peer: SocketAddr) {
        self.lock().release(Peer::from(peer));
    }

    /// Whether `shard` has a leg waiting to learn its address (opens first contact for
    /// RTP/RTCP while any shard has).
    pub fn set_latching(&self, shard: usize, latching: bool) {
        let mut inner = self.lock();
        let changed = if latching {
            inner.latching_shards.insert(shard)
        } else {
            inner.latching_shards.remove(&shard)
        };
        if changed {
            if let Err(e) = inner.write_config() {
                warn!(error = %e, "cannot update the XDP guard's flags");
            }
        }
    }

    /// Packets and bytes per verdict, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Verdict, Counter)>, EdgeError> {
        let inner = self.lock();
        Verdict::ALL
            .iter()
            .map(|&verdict| {
                let per_cpu = inner
                    .counters
                    .get(&(verdict as u32), 0)
                    .map_err(map_error(layout::MAP_COUNTERS))?;
                let sum = per_cpu.iter().fold(Counter::default(), |sum, c| Counter {
                    packets: sum.packets + c.packets,
                    bytes: sum.bytes + c.bytes,
                });
                Ok((verdict, sum))
            })
            .collect()
    }

    /// The peers in the allowlist.
    pub fn peers(&self) -> Vec<SocketAddr> {
        let inner = self.lock();
        inner
            .peer_holders
            .keys()
            .map(|&p| SocketAddr::from(p))
            .collect()
    }

    /// Prometheus text for the guard: verdict counters, allowlist size, attach mode.
    pub fn write_metrics(&self, out: &mut String) {
        let counters = match self.counters() {
            Ok(counters) => counters,
            Err(e) => {
                warn!(error = %e, "cannot read the XDP guard's counters");
                return;
            }
        };
        let _ = writeln!(
            out,
            "# HELP fanout_xdp_packets_total Packets the XDP port guard saw, by verdict \
             (drop_* never reached user space).\n# TYPE fanout_xdp_packets_total counter"
        );
        for (verdict, counter) in &counters {
            let _ = writeln!(
                out,
                "fanout_xdp_packets_total{{verdict=\"{}\"}} {}",
                verdict.name(),
                counter.packets
            );
        }
        let _ = writeln!(
            out,
            "# HELP fanout_xdp_bytes_total Bytes the XDP port guard saw, by verdict.\n\
             # TYPE fanout_xdp_bytes_total counter"
        );
        for (verdict, counter) in &counters {
            let _ = writeln!(
                out,
                "fanout_xdp_bytes_total{{verdict=\"{}\"}} {}",
                verdict.name(),
                counter.bytes
            );
        }
        let inner = self.lock();
        let _ = writeln!(
            out,
            "# HELP fanout_xdp_peers Remote addresses in the XDP guard's allowlist.\n\
             # TYPE fanout_xdp_peers gauge\nfanout_xdp_peers {}",
            inner.peer_holders.len()
        );
        let _ = writeln!(
            out,
            "# HELP fanout_xdp_peer_update_failures_total Allowlist insertions the kernel \
             refused (map full): those peers are dropped.\n\
             # TYPE fanout_xdp_peer_update_failures_total counter\n\
             fanout_xdp_peer_update_failures_total {}",
            inner.peer_update_failures
        );
        let _ = writeln!(
            out,
            "# HELP fanout_xdp_latching_open Whether unknown sources may send RTP/RTCP (a leg \
             waits to learn its address).\n# TYPE fanout_xdp_latching_open gauge\n\
             fanout_xdp_latching_open {}",
            u8::from(inner.config.flags & FLAG_LATCHING_OPEN != 0)
        );
        let mode = match inner.attached {
            Some(AttachMode::Native) => "native",
            Some(AttachMode::Generic) => "generic",
            Some(AttachMode::Auto) | None => "none",
        };
        let _ = writeln!(
            out,
            "# HELP fanout_xdp_attached The XDP guard's interface and attach mode.\n\
             # TYPE fanout_xdp_attached gauge\n\
             fanout_xdp_attached{{interface=\"{}\",mode=\"{mode}\"}} 1",
            self.interface
        );
    }

    /// Run the guard once on `frame` (an Ethernet frame) with `BPF_PROG_TEST_RUN` and
    /// return the XDP action (`XDP_DROP` = 1, `XDP_PASS` = 2, `XDP_REDIRECT` = 4).
    pub fn run_on(&self, frame: &[u8]) -> Result<u32, EdgeError> {
        use aya::programs::{TestRun, TestRunOptions};
        let mut inner = self.lock();
        let program = program(&mut inner.ebpf)?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .map_err(|e| EdgeError::Load(error_chain(&e)))?;
        Ok(result.return_value)
    }
}

impl crate::exporter::ProcessMetrics for XdpGuard {
    fn write_metrics(&self, out: &mut String) {
        XdpGuard::write_metrics(self, out)
    }
}

impl Drop for XdpGuard {
    fn drop(&mut self) {
        let attached = self
            .inner
            .get_mut()
            .map_or(true, |inner| inner.attached.is_some());
        if attached {
            // Dropping the Ebpf (in `inner`) closes the link: the kernel detaches.
            info!(interface = %self.interface, "XDP port guard detached");
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("config", &self.config)
            .field("peers", &self.peer_holders.len())
            .field("latching_shards", &self.latching_shards)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn write_config(&mut self) -> Result<(), EdgeError> {
        let open = self.unknown_media == UnknownMedia::Always || !self.latching_shards.is_empty();
        if open {
            self.config.flags |= FLAG_LATCHING_OPEN;
        } else {
            self.config.flags &= !FLAG_LATCHING_OPEN;
        }
        self.config_map
            .set(0, self.config, 0)
            .map_err(map_error(layout::MAP_CONFIG))
    }

    fn hold(&mut self, peer: Peer) {
        let holders = self.peer_holders.entry(peer).or_insert(0);
        *holders += 1;
        if *holders == 1 {
            if let Err(e) = self.peers.insert(peer, 0, 0) {
                self.peer_update_failures += 1;
                warn!(peer = %SocketAddr::from(peer), error = %e, "cannot allow a peer in the XDP guard: its packets will be dropped");
            }
        }
    }

    fn release(&mut self, peer: Peer) {
        let Some(holders) = self.peer_holders.get_mut(&peer) else {
            return;
        };
        *holders -= 1;
        if *holders == 0 {
            self.peer_holders.remove(&peer);
            // Absent when its insertion failed: nothing to undo.
            let _ = self.peers.remove(&peer);
        }
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, EdgeError> {
    ebpf.program_mut(layout::PROGRAM)
        .ok_or_else(|| EdgeError::Load(format!("no program {} in the object", layout::PROGRAM)))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| EdgeError::Load(error_chain(&e)))
}

fn interface_index(name: &str) -> Result<u32, EdgeError> {
    let c_name =
        std::ffi::CString::new(name).map_err(|_| EdgeError::NoSuchInterface(name.to_owned()))?;
    // SAFETY: `c_name` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        Err(EdgeError::NoSuchInterface(name.to_owned()))
    } else {
        Ok(index)
    }
}

fn interval_ns(per_second: u32) -> u64 {
    if per_second == 0 {
        // No budget at all: an interval no burst can cover.
        u64::MAX / u64::from(u32::MAX)
    } else {
        Duration::from_secs(1).as_nanos() as u64 / u64::from(per_second)
    }
}

/// An error and its sources on one line (aya nests the kernel's reason).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// Keeps the guard's allowlist equal to one shard's remote addresses. The driver calls
/// [`PeerSync::sync`] after each batch of inputs; it costs a comparison unless the core's
/// addresses changed.
#[derive(Debug)]
pub struct PeerSync {
    guard: Arc<XdpGuard>,
    shard: usize,
    seen: Option<u64>,
    held: HashSet<SocketAddr>,
    scratch: HashSet<SocketAddr>,
}

impl PeerSync {
    pub fn new(guard: Arc<XdpGuard>, shard: usize) -> PeerSync {
        PeerSync {
            guard,
            shard,
            seen: None,
            held: HashSet::new(),
            scratch: HashSet::new(),
        }
    }

    pub fn sync(&mut self, core: &Forwarder) {
        let generation = core.peers_generation();
        if self.seen == Some(generation) {
            return;
        }
        self.seen = Some(generation);
        self.scratch.clear();
        self.scratch.extend(core.peer_addresses());
        for &added in self.scratch.difference(&self.held) {
            self.guard.allow(added);
        }
        for &gone in self.held.difference(&self.scratch) {
            self.guard.forget(gone);
        }
        std::mem::swap(&mut self.held, &mut self.scratch);
        self.guard
            .set_latching(self.shard, core.legs_awaiting_address() > 0);
    }
}

impl Drop for PeerSync {
    fn drop(&mut self) {
        for &peer in &self.held {
            self.guard.forget(peer);
        }
        self.guard.set_latching(self.shard, false);
    }
}
