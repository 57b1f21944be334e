//! Where the forwarder under test sits on the network: on loopback with its peers, or in a
//! network namespace of its own behind a veth pair, so that every datagram between the
//! forwarder and its peers crosses a real (virtual) interface. Kernel-bypass drivers
//! (AF_XDP) only see packets that do.
//!
//! The topology is chosen by the environment ([`Topology::from_env`]):
//!
//! * `FANOUT_TOPOLOGY=loopback` (the default): the forwarder and its peers on 127.0.0.1,
//!   the forwarder started as it always was.
//! * `FANOUT_TOPOLOGY=veth`: each forwarder the harness starts gets a fresh namespace
//!   `fanout-t-<pid>-<n>` joined to the root namespace by a veth pair on a private /30 of
//!   10.214.0.0/16 (one per forwarder, picked under a machine-wide lock among the
//!   prefixes not in use): root side `ft<pid>-<n>` with the peers' address (`.1`),
//!   namespace side [`FORWARDER_LINK`] with the forwarder's (`.2`). The forwarder runs as
//!   `ip netns exec NS fanout-forwarder ...` and binds its media and metrics on its
//!   address; the peers (FFmpeg, GStreamer, the tests' own sockets) stay in the root
//!   namespace and are reached at the root side's address.
//! * `FANOUT_IO=afxdp` (the forwarder reads the same variable) implies `veth`, and gives
//!   the forwarder `--xdp` [`FORWARDER_LINK`]. With `FANOUT_TOPOLOGY=loopback` it is an
//!   error: AF_XDP would see nothing.
//!
//! The veth pair is made so that a driver which builds its own frames needs nothing from
//! the kernel's stack, and the same for every driver: each end's MAC address is derived
//! from its IPv4 address ([`mac_of`]), each side has a permanent neighbour entry for the
//! other (no ARP needed, none to answer), and the root side computes UDP checksums in
//! software (TX checksum offload off: PLATFORM.md's veth trap, a datagram from a local
//! socket otherwise reaches the namespace with a partial checksum).
//!
//! A [`ForwarderNetwork`] is one forwarder's place in the topology: every address a test
//! configures (the forwarder's `listen`, each leg's `remote`, the addresses in the peers'
//! SDP and pipelines, the metrics endpoint) comes from it. Dropping it removes the veth
//! pair and the namespace; namespaces and links left by an earlier run that was killed
//! (their creator's pid is gone) are removed by the next one.

use std::fmt;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::process;

/// Namespaces are `fanout-t-<pid>-<n>`.
pub const NAMESPACE_PREFIX: &str = "fanout-t-";
/// Root-side veths are `ft<pid>-<n>` (interface names have 15 characters at most: 2 + 7
/// digits of pid + 1 + up to 5 digits of n).
pub const ROOT_LINK_PREFIX: &str = "ft";
/// The namespace side of every forwarder's veth (created directly in its namespace, so
/// the name never meets another forwarder's): the interface `--xdp` names.
pub const FORWARDER_LINK: &str = "fanout0";
/// Forwarder subnets are /30s of 10.214.0.0/16: private, and beside the load generator's
/// 10.213.0.0/16 and the macro benchmark's 10.251.0.0/16.
const BASE: [u8; 2] = [10, 214];
const SUBNETS: u32 = 1 << 14;
/// Held while a process sweeps stale namespaces and picks and creates its own, so that
/// concurrent test processes neither pick the same subnet nor sweep each other.
const LOCK_FILE: &str = "/run/fanout-tests-netns.lock";
const NETNS_DIR: &str = "/run/netns";
/// Bound on one `ip` command.
const IP_TIMEOUT: Duration = Duration::from_secs(30);

/// Which network the harness puts between the forwarder and its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Everything on 127.0.0.1.
    Loopback,
    /// Each forwarder in its own network namespace behind a veth pair.
    Veth,
}

/// The topology and driver the environment asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub topology: Topology,
    /// `FANOUT_IO=afxdp`: the forwarder needs the interface to bind (`--xdp`).
    pub afxdp: bool,
}

impl Settings {
    /// The settings of `FANOUT_TOPOLOGY` and `FANOUT_IO`.
    pub fn from_env() -> Result<Settings> {
        let var = |name: &str| match std::env::var(name) {
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => Err(anyhow!("{name}: {e}")),
        };
        Settings::parse(
            var("FANOUT_TOPOLOGY")?.as_deref(),
            var("FANOUT_IO")?.as_deref(),
        )
    }

    /// The settings of the values of `FANOUT_TOPOLOGY` and `FANOUT_IO` (`None`: unset).
    pub fn parse(topology: Option<&str>, io: Option<&str>) -> Result<Settings> {
        // The forwarder itself validates FANOUT_IO; only afxdp matters here.
        let afxdp = io.is_some_and(|io| io.trim().eq_ignore_ascii_case("afxdp"));
        let topology = match topology.map(str::trim) {
            None | Some("") if afxdp => Topology::Veth,
            None | Some("") => Topology::Loopback,
            Some(t) if t.eq_ignore_ascii_case("veth") => Topology::Veth,
            Some(t) if t.eq_ignore_ascii_case("loopback") => {
                if afxdp {
                    bail!(
                        "FANOUT_TOPOLOGY=loopback with FANOUT_IO=afxdp: AF_XDP only sees \
                         packets that cross a real interface; use FANOUT_TOPOLOGY=veth (or \
                         leave it unset)"
                    );
                }
                Topology::Loopback
            }
            Some(other) => bail!("FANOUT_TOPOLOGY={other}: expected `loopback` or `veth`"),
        };
        Ok(Settings { topology, afxdp })
    }
}

/// One forwarder's place in the topology: its address, its peers' address, and in veth
/// mode the namespace and veth pair it owns (removed on drop).
#[derive(Debug)]
pub struct ForwarderNetwork {
    forwarder_ip: Ipv4Addr,
    peer_ip: Ipv4Addr,
    afxdp: bool,
    veth: Option<VethNamespace>,
}

impl ForwarderNetwork {
    /// The network the environment asks for ([`Settings::from_env`]): in veth mode, a
    /// fresh namespace and veth pair.
    pub fn from_env() -> Result<ForwarderNetwork> {
        let settings = Settings::from_env()?;
        match settings.topology {
            Topology::Loopback => Ok(ForwarderNetwork::loopback()),
            Topology::Veth => ForwarderNetwork::veth(settings.afxdp),
        }
    }

    /// The forwarder and its peers on 127.0.0.1.
    pub fn loopback() -> ForwarderNetwork {
        ForwarderNetwork {
            forwarder_ip: Ipv4Addr::LOCALHOST,
            peer_ip: Ipv4Addr::LOCALHOST,
            afxdp: false,
            veth: None,
        }
    }

    /// A fresh namespace for the forwarder and a veth pair to it. Needs root
    /// (CAP_NET_ADMIN, CAP_SYS_ADMIN for `ip netns`) and `ip` from iproute2. `afxdp`: the
    /// forwarder runs the AF_XDP driver on [`FORWARDER_LINK`].
    pub fn veth(afxdp: bool) -> Result<ForwarderNetwork> {
        let veth = VethNamespace::create(afxdp)?;
        Ok(ForwarderNetwork {
            forwarder_ip: veth.forwarder_ip,
            peer_ip: veth.peer_ip,
            afxdp,
            veth: Some(veth),
        })
    }

    pub fn topology(&self) -> Topology {
        if self.veth.is_some() {
            Topology::Veth
        } else {
            Topology::Loopback
        }
    }

    /// The address the forwarder binds (media and metrics) and the peers send to.
    pub fn forwarder_ip(&self) -> IpAddr {
        self.forwarder_ip.into()
    }

    /// The address the peers are reached at (where the forwarder sends), in the root
    /// namespace.
    pub fn peer_ip(&self) -> IpAddr {
        self.peer_ip.into()
    }

    /// The forwarder's address with `port`: its `listen`.
    pub fn forwarder_address(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.forwarder_ip(), port)
    }

    /// A peer's address with `port`: a leg's `remote`.
    pub fn peer_address(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.peer_ip(), port)
    }

    /// What the forwarder's `--metrics` binds: its own address, any port (the forwarder
    /// logs the one it got). In veth mode the scrapes cross the veth too.
    pub fn metrics_bind(&self) -> SocketAddr {
        self.forwarder_address(0)
    }

    /// A command running `program` where the forwarder lives: as is on loopback, under
    /// `ip netns exec NS` in veth mode (which enters the namespace and execs `program`,
    /// so the child is the forwarder itself: signals and its exit status are its own).
    /// `ip netns exec` also gives the child a mount namespace of its own with the
    /// namespace's sysfs on /sys: /sys/class/net shows the namespace's links, and what
    /// is mounted under /sys in the root namespace (a bpffs at /sys/fs/bpf) is not there.
    pub fn command(&self, program: &Path) -> Command {
        match &self.veth {
            None => Command::new(program),
            Some(veth) => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", &veth.namespace])
                    .arg(program);
                command
            }
        }
    }

    /// The interface the forwarder's AF_XDP driver binds (`--xdp`), under
    /// `FANOUT_IO=afxdp` only.
    pub fn xdp_interface(&self) -> Option<&str> {
        self.veth
            .as_ref()
            .filter(|_| self.afxdp)
            .map(|_| FORWARDER_LINK)
    }

    /// The forwarder's namespace, in veth mode.
    pub fn namespace(&self) -> Option<&str> {
        self.veth.as_ref().map(|v| v.namespace.as_str())
    }

    /// The root-side veth, in veth mode.
    pub fn root_link(&self) -> Option<&str> {
        self.veth.as_ref().map(|v| v.root_link.as_str())
    }

    /// Packets the veth pair carried so far, in veth mode (from the root side's counters).
    pub fn veth_traffic(&self) -> Result<Option<VethTraffic>> {
        let Some(veth) = &self.veth else {
            return Ok(None);
        };
        let counter = |name: &str| -> Result<u64> {
            let path = Path::new("/sys/class/net")
                .join(&veth.root_link)
                .join("statistics")
                .join(name);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            text.trim()
                .parse()
                .with_context(|| format!("bad counter in {}", path.display()))
        };
        Ok(Some(VethTraffic {
            to_forwarder: counter("tx_packets")?,
            from_forwarder: counter("rx_packets")?,
        }))
    }
}

impl fmt::Display for ForwarderNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.veth {
            None => write!(f, "loopback (127.0.0.1)"),
            Some(veth) => write!(
                f,
                "veth: forwarder {} on {FORWARDER_LINK} in namespace {}, peers {} on {}{}",
                veth.forwarder_ip,
                veth.namespace,
                veth.peer_ip,
                veth.root_link,
                if self.afxdp { ", AF_XDP" } else { "" }
            ),
        }
    }
}

/// Packets through a forwarder's veth pair, counted on the root side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VethTraffic {
    /// Sent by the root namespace towards the forwarder (the root side's tx).
    pub to_forwarder: u64,
    /// Sent by the forwarder's namespace to the root namespace (the root side's rx).
    pub from_forwarder: u64,
}

/// A namespace and the veth pair to it, owned from creation: dropping it deletes both.
#[derive(Debug)]
struct VethNamespace {
    namespace: String,
    root_link: String,
    forwarder_ip: Ipv4Addr,
    peer_ip: Ipv4Addr,
}

/// Numbers the namespaces of this process.
static NEXT: AtomicU32 = AtomicU32::new(0);

impl VethNamespace {
    fn create(afxdp: bool) -> Result<VethNamespace> {
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let namespace = namespace_name(pid, n);
        let root_link = root_link_name(pid, n);
        if root_link.len() > 15 {
            bail!("interface name {root_link} is longer than 15 characters");
        }
        let _lock = MachineLock::acquire()?;
        sweep_stale_locked();
        // This process never makes the same name twice: one that exists was left by a
        // killed process that had this pid before (the sweep spares our pid's names).
        if Path::new("/sys/class/net").join(&root_link).exists() {
            ip(&["link", "del", &root_link])?;
        }
        if Path::new(NETNS_DIR).join(&namespace).exists() {
            remove_namespace(&namespace);
        }
        let used = prefixes_in_use()?;
        let subnet = free_subnet(&used).context("no free /30 left in 10.214.0.0/16")?;
        let [a, b, c, d] = subnet.octets();
        let peer_ip = Ipv4Addr::new(a, b, c, d + 1);
        let forwarder_ip = Ipv4Addr::new(a, b, c, d + 2);
        ip(&["netns", "add", &namespace])
            .context("network namespaces need root and iproute2 (`ip netns add`)")?;
        // Owned from here on: a failure half-way still removes what was made.
        let veth = VethNamespace {
            namespace,
            root_link,
            forwarder_ip,
            peer_ip,
        };
        let (ns, root) = (veth.namespace.as_str(), veth.root_link.as_str());
        let (peer_cidr, peer_mac) = (format!("{peer_ip}/30"), mac_of(peer_ip));
        let (forwarder_cidr, forwarder_mac) = (format!("{forwarder_ip}/30"), mac_of(forwarder_ip));
        let (peer_ip, forwarder_ip) = (peer_ip.to_string(), forwarder_ip.to_string());
        for args in [
            // The namespace side is created in the namespace: its fixed name never
            // exists in the root namespace, where concurrent forwarders would collide.
            &[
                "link",
                "add",
                root,
                "address",
                &peer_mac,
                "type",
                "veth",
                "peer",
                "name",
                FORWARDER_LINK,
                "address",
                &forwarder_mac,
                "netns",
                ns,
            ][..],
            &["addr", "add", &peer_cidr, "dev", root],
            &["link", "set", root, "up"],
            &[
                "-n",
                ns,
                "addr",
                "add",
                &forwarder_cidr,
                "dev",
                FORWARDER_LINK,
            ],
            &["-n", ns, "link", "set", FORWARDER_LINK, "up"],
            &["-n", ns, "link", "set", "lo", "up"],
            &[
                "neigh",
                "replace",
                &forwarder_ip,
                "lladdr",
                &forwarder_mac,
                "dev",
                root,
                "nud",
                "permanent",
            ],
            &[
                "-n",
                ns,
                "neigh",
                "replace",
                &peer_ip,
                "lladdr",
                &peer_mac,
                "dev",
                FORWARDER_LINK,
                "nud",
                "permanent",
            ],
        ] {
            ip(args)?;
        }
        set_tx_checksum_offload(root, false)
            .with_context(|| format!("cannot turn TX checksum offload off on {root}"))?;
        if afxdp {
            veth.attach_root_side_xdp_pass()?;
        }
        Ok(veth)
    }

    /// HOOK for the AF_XDP driver (PLATFORM.md, "veth traps"): a frame that XDP sends into
    /// a veth (XDP_TX, or a redirect into it) is only received by the peer veth if the
    /// peer has an XDP program attached, an XDP_PASS program being enough. The peer of
    /// the forwarder's [`FORWARDER_LINK`] is this pair's root side, [`Self::root_link`].
    ///
    /// Called under `FANOUT_IO=afxdp` once the pair is up, before the forwarder starts.
    /// It attaches nothing: AF_XDP copy-mode transmission goes through the veth's normal
    /// transmit path (xsk_generic_xmit, then the veth's ndo_start_xmit), which the peer
    /// receives without a program. Seen working: the FFmpeg and GStreamer interop tests
    /// pass with nothing attached here under the AF_XDP driver of the `afxdp` branch
    /// (commit 588c222, which also puts its XDP guard on [`FORWARDER_LINK`]). If the
    /// driver ends up transmitting by XDP_TX or redirect, attach the project's trivial
    /// XDP_PASS program (from `ebpf/`, through its loader) to `self.root_link` here,
    /// entering no namespace (the root side lives in the root namespace); the program
    /// goes away with the link at teardown.
    fn attach_root_side_xdp_pass(&self) -> Result<()> {
        Ok(())
    }
}

impl Drop for VethNamespace {
    fn drop(&mut self) {
        // Deleting the root side deletes the pair at once (deleting the namespace would
        // take it along too, but asynchronously).
        if let Err(e) = ip(&["link", "del", &self.root_link]) {
            if Path::new("/sys/class/net").join(&self.root_link).exists() {
                eprintln!("topology: cannot remove {}: {e:#}", self.root_link);
            }
        }
        remove_namespace(&self.namespace);
    }
}

/// Kills what still runs in `namespace` (only processes this harness started can be in
/// a namespace it created) and deletes it. Whether it did.
fn remove_namespace(namespace: &str) -> bool {
    if let Ok(pids) = ip(&["netns", "pids", namespace]) {
        for pid in pids
            .lines()
            .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
        {
            // SAFETY: kill(2) takes plain integers; the pid was just listed as running
            // in our own namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    match ip(&["netns", "del", namespace]) {
        Ok(_) => true,
        Err(e) => {
            if Path::new(NETNS_DIR).join(namespace).exists() {
                eprintln!("topology: cannot remove namespace {namespace}: {e:#}");
            }
            false
        }
    }
}

/// The MAC address of the veth end with `ip`: locally administered, unicast, and as
/// unique as the address (`02:00:` and its four octets).
pub fn mac_of(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Turns TX checksum offload of `link` (in the calling thread's namespace) on or off with
/// the ethtool ioctl (there is no `ethtool` here), and reads the setting back.
pub fn set_tx_checksum_offload(link: &str, on: bool) -> Result<()> {
    ethtool_value(link, ETHTOOL_STXCSUM, u32::from(on))?;
    let now = tx_checksum_offload(link)?;
    if now != on {
        bail!("TX checksum offload of {link} is still {now} after setting it to {on}");
    }
    Ok(())
}

/// Whether TX checksum offload of `link` (in the calling thread's namespace) is on.
pub fn tx_checksum_offload(link: &str) -> Result<bool> {
    Ok(ethtool_value(link, ETHTOOL_GTXCSUM, 0)? != 0)
}

/// `ETHTOOL_GTXCSUM` and `ETHTOOL_STXCSUM` of linux/ethtool.h.
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// One `struct ethtool_value` command through SIOCETHTOOL; the value it returns.
fn ethtool_value(link: &str, cmd: u32, data: u32) -> Result<u32> {
    /// linux/ethtool.h's `struct ethtool_value`.
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let name = link.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        bail!("bad interface name {link:?}");
    }
    // SAFETY: socket(2) takes plain integers; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot open a socket for ethtool");
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: ifreq is plain old data (a name and a union of integers and pointers), for
    // which all-zero is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(name) {
        *to = *from as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: SIOCETHTOOL reads the NUL-terminated name (the name is shorter than
    // IFNAMSIZ and the rest is zero) and reads and writes the `struct ethtool_value` that
    // `ifru_data` points to, which outlives the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("SIOCETHTOOL command {cmd:#x} on {link}"));
    }
    Ok(value.data)
}

/// The name of this process's `n`th namespace.
pub fn namespace_name(pid: u32, n: u32) -> String {
    format!("{NAMESPACE_PREFIX}{pid}-{n}")
}

/// The name of this process's `n`th root-side veth.
pub fn root_link_name(pid: u32, n: u32) -> String {
    format!("{ROOT_LINK_PREFIX}{pid}-{n}")
}

/// The pid of the process that created namespace or root-side link `name`, if the name is
/// one of this harness's.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix(NAMESPACE_PREFIX)
        .or_else(|| name.strip_prefix(ROOT_LINK_PREFIX))?;
    let (pid, n) = rest.split_once('-')?;
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` runs (a zombie does not: a killed test process whose parent has
/// not reaped it yet).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "PID (COMM) S ...": COMM may hold spaces and parentheses, the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X'))
}

/// Removes the namespaces and root-side links of test processes that are gone (done by
/// every [`ForwarderNetwork::veth`] first). Returns what it removed.
pub fn sweep_stale() -> Result<Vec<String>> {
    let _lock = MachineLock::acquire()?;
    Ok(sweep_stale_locked())
}

/// [`sweep_stale`], with the machine lock held.
fn sweep_stale_locked() -> Vec<String> {
    let own = std::process::id();
    let stale = |name: &str| owner_pid(name).is_some_and(|pid| pid != own && !alive(pid));
    let mut removed = Vec::new();
    // Root-side links first: deleting one removes its pair at once.
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for line in links.lines() {
            // "12: ft123-0@if3: <BROADCAST,...".
            let Some(name) = line.split_whitespace().nth(1) else {
                continue;
            };
            let name = name.trim_end_matches(':');
            let name = name.split_once('@').map_or(name, |(name, _)| name);
            if stale(name) {
                match ip(&["link", "del", name]) {
                    Ok(_) => removed.push(name.to_owned()),
                    Err(_) if !Path::new("/sys/class/net").join(name).exists() => {}
                    Err(e) => eprintln!("topology: cannot remove a stale veth: {e:#}"),
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(NAMESPACE_PREFIX) && stale(&name) && remove_namespace(&name) {
                removed.push(name);
            }
        }
    }
    if !removed.is_empty() {
        eprintln!("topology: removed what killed test runs left: {removed:?}");
    }
    removed
}

/// An IPv4 prefix in use on this machine (an address's subnet or a route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub network: Ipv4Addr,
    pub len: u8,
}

impl Prefix {
    /// `A.B.C.D/L`, or `A.B.C.D` for a /32.
    pub fn parse(text: &str) -> Option<Prefix> {
        let (address, len) = match text.split_once('/') {
            Some((address, len)) => (address, len.parse().ok().filter(|l| *l <= 32)?),
            None => (text, 32),
        };
        Some(Prefix {
            network: address.parse().ok()?,
            len,
        })
    }

    fn mask(len: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
    }

    /// Whether the two share an address.
    pub fn overlaps(&self, other: &Prefix) -> bool {
        let mask = Prefix::mask(self.len.min(other.len));
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }
}

/// The root namespace's addresses (with their subnets) and main-table routes. The root
/// sides of every live forwarder veth are among them, whichever process made them.
fn prefixes_in_use() -> Result<Vec<Prefix>> {
    let mut used = Vec::new();
    // "4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0 ...".
    for line in ip(&["-o", "-4", "addr", "show"])?.lines() {
        let mut words = line.split_whitespace();
        if words.any(|w| w == "inet") {
            used.extend(words.next().and_then(Prefix::parse));
        }
    }
    // "10.0.0.0/8 via 10.1.1.1 dev eth1", "default via ..." (not a subnet in use).
    for line in ip(&["-4", "route", "show"])?.lines() {
        used.extend(line.split_whitespace().next().and_then(Prefix::parse));
    }
    Ok(used)
}

/// The first /30 of 10.214.0.0/16 that overlaps nothing in `used`.
pub fn free_subnet(used: &[Prefix]) -> Option<Ipv4Addr> {
    (0..SUBNETS)
        .map(|i| {
            let offset = i << 2;
            Ipv4Addr::new(BASE[0], BASE[1], (offset >> 8) as u8, (offset & 0xff) as u8)
        })
        .find(|&network| {
            let candidate = Prefix { network, len: 30 };
            !used.iter().any(|u| u.overlaps(&candidate))
        })
}

/// An exclusive flock(2) on [`LOCK_FILE`], released on drop (closing the file).
#[derive(Debug)]
struct MachineLock {
    _file: File,
}

impl MachineLock {
    fn acquire() -> Result<MachineLock> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .with_context(|| format!("cannot open {LOCK_FILE}: veth mode needs root"))?;
        // SAFETY: flock(2) on a descriptor that `file` keeps open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot lock {LOCK_FILE}"));
        }
        Ok(MachineLock { _file: file })
    }
}

/// Runs `ip ARGS`; its standard output, or an error with what it said.
fn ip(args: &[&str]) -> Result<String> {
    let mut command = Command::new("ip");
    command.args(args);
    let name = format!("ip {}", args.join(" "));
    Ok(process::run(&name, command, IP_TIMEOUT)?.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_picks_the_topology() {
        let parse = |t, io| Settings::parse(t, io).map_err(|e| e.to_string());
        let loopback = Settings {
            topology: Topology::Loopback,
            afxdp: false,
        };
        let veth = Settings {
            topology: Topology::Veth,
            afxdp: false,
        };
        let afxdp = Settings {
            topology: Topology::Veth,
            afxdp: true,
        };
        assert_eq!(parse(None, None), Ok(loopback));
        assert_eq!(parse(Some(""), Some("mio")), Ok(loopback));
        assert_eq!(parse(Some("loopback"), Some("uring")), Ok(loopback));
        assert_eq!(parse(Some("veth"), None), Ok(veth));
        assert_eq!(parse(Some("veth"), Some("mio")), Ok(veth));
        assert_eq!(parse(None, Some("afxdp")), Ok(afxdp));
        assert_eq!(parse(Some("veth"), Some("afxdp")), Ok(afxdp));
        assert!(parse(Some("loopback"), Some("afxdp")).is_err());
        assert!(parse(Some("tun"), None).is_err());
    }

    #[test]
    fn loopback_is_what_the_tests_always_ran() {
        let network = ForwarderNetwork::loopback();
        assert_eq!(network.topology(), Topology::Loopback);
        assert_eq!(
            network.forwarder_address(5004),
            "127.0.0.1:5004".parse().unwrap()
        );
        assert_eq!(
            network.peer_address(6004),
            "127.0.0.1:6004".parse().unwrap()
        );
        assert_eq!(network.metrics_bind(), "127.0.0.1:0".parse().unwrap());
        assert_eq!(network.xdp_interface(), None);
        assert_eq!(network.veth_traffic().unwrap(), None);
        let command = network.command(Path::new("/bin/fanout-forwarder"));
        assert_eq!(command.get_program(), "/bin/fanout-forwarder");
        assert_eq!(command.get_args().count(), 0);
    }

    #[test]
    fn names_carry_the_owner_pid() {
        assert_eq!(namespace_name(4194304, 12), "fanout-t-4194304-12");
        assert_eq!(root_link_name(4194304, 99999).len(), 15);
        assert_eq!(owner_pid(&namespace_name(123, 4)), Some(123));
        assert_eq!(owner_pid(&root_link_name(123, 4)), Some(123));
        for other in [
            "fanout-t-",
            "fanout-t-12",
            "fanout-t-x-1",
            "ft-1",
            "ft12-",
            "eth0",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
        // The load generator's and the macro benchmark's names are not ours.
        for other in ["fanout-lg123-0", "flg123r0", "fbh123", "fanout-bench-123"] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }

    #[test]
    fn subnets_avoid_what_is_in_use() {
        let p = |s| Prefix::parse(s).unwrap();
        assert_eq!(free_subnet(&[]), Some(Ipv4Addr::new(10, 214, 0, 0)));
        assert_eq!(
            free_subnet(&[p("10.214.0.1/30"), p("10.214.0.6")]),
            Some(Ipv4Addr::new(10, 214, 0, 8))
        );
        assert_eq!(
            free_subnet(&[p("10.214.0.0/24"), p("192.0.2.2/24")]),
            Some(Ipv4Addr::new(10, 214, 1, 0))
        );
        assert_eq!(free_subnet(&[p("10.0.0.0/8")]), None);
        assert!(p("0.0.0.0/0").overlaps(&p("10.214.0.0/30")));
        assert!(!p("10.214.0.4/30").overlaps(&p("10.214.0.0/30")));
        assert_eq!(Prefix::parse("10.1.2.3/33"), None);
        assert_eq!(Prefix::parse("default"), None);
    }
}
