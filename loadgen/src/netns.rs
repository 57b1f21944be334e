//! Regions on one machine (`[local] netns = true`): every region of a local deployment in
//! its own network namespace, so a run's media crosses real (virtual) interfaces between
//! real forwarder processes instead of one loopback.
//!
//! The network of a run with regions 0..N (owner: this process, pid P):
//!
//! * Namespace `fanout-lgP-r` per region r, `lo` up, and a veth pair to the root namespace:
//!   root side `flgPrR` with 10.213.X.1/24, namespace side `to-root` with 10.213.X.2/24 (X
//!   a free /24 of 10.213.0.0/16, one per region). The namespace's address is where its
//!   forwarders listen and its participants' sockets are bound; its default route points
//!   at the root side, which delivers what is addressed to the root namespace (the control
//!   plane) and forwards nothing.
//! * A full mesh of veth pairs between region namespaces (`to-rS` in namespace R faces
//!   `to-rR` in namespace S), unnumbered, with a /32 host route to the other region's
//!   address on each end: region-to-region traffic (relay links, a viewer served by
//!   another region's forwarder) goes straight across, so no namespace routes for another
//!   and no `ip_forward` changes anywhere, least of all in the root namespace.
//!
//! Inter-region delay is not added here (this kernel has no netem): the load generator's
//! [`impairments`](crate::impair) delay, jitter and drop packets in user space, per
//! participant region.
//!
//! Everything is removed when [`RegionNetworks`] is dropped, however the run ends; what a
//! killed load generator left behind is removed by the next one (names carry the owner's
//! pid).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context, Result};
use tracing::{debug, info, warn};

/// Namespaces are `fanout-lg<pid>-<region index>`.
pub const NAMESPACE_PREFIX: &str = "fanout-lg";
/// Root-side veths are `flg<pid>r<region index>` (interface names have 15 characters at
/// most: 3 + 7 digits of pid + 1 + up to 4 digits of index).
pub const LINK_PREFIX: &str = "flg";
/// The namespace side of the veth to the root namespace.
pub const ROOT_FACING_LINK: &str = "to-root";
/// Region subnets are /24s of 10.213.0.0/16: private, and unlikely to be in use.
const BASE: [u8; 2] = [10, 213];
/// Ephemeral ports inside a region namespace: a 50,000-viewer run puts ~25,000 sockets on
/// one region's address, nearly the default range (32768-60999) and more than it leaves
/// free beside a forwarder. Its forwarders bind their ports before any participant does,
/// so the wide range cannot take theirs.
const LOCAL_PORT_RANGE: &str = "1024 65535";
/// Held while a run sweeps stale networks and picks and creates its own, so two runs
/// starting together neither pick the same subnets nor sweep each other.
const LOCK_FILE: &str = "/run/fanout-loadgen-netns.lock";
const NETNS_DIR: &str = "/run/netns";

/// The name of region `index`'s namespace.
pub fn namespace_name(pid: u32, index: usize) -> String {
    format!("{NAMESPACE_PREFIX}{pid}-{index}")
}

/// The name of region `index`'s root-side veth.
pub fn root_link_name(pid: u32, index: usize) -> String {
    format!("{LINK_PREFIX}{pid}r{index}")
}

/// The name, inside one region's namespace, of the veth facing region `index`.
pub fn mesh_link_name(index: usize) -> String {
    format!("to-r{index}")
}

/// The pid of the load generator that created namespace or root-side link `name`, if the
/// name is one of ours.
pub fn owner_pid(name: &str) -> Option<u32> {
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let (pid, index) = if let Some(rest) = name.strip_prefix(NAMESPACE_PREFIX) {
        rest.split_once('-')?
    } else {
        name.strip_prefix(LINK_PREFIX)?.split_once('r')?
    };
    if !digits(pid) || !digits(index) {
        return None;
    }
    pid.parse().ok()
}

/// One region's place in the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionPlan {
    pub index: usize,
    pub region: String,
    pub namespace: String,
    pub root_link: String,
    /// The root side of the region's veth.
    pub root_ip: Ipv4Addr,
    /// The namespace side: its forwarders' and participants' address.
    pub ip: Ipv4Addr,
}

/// An IPv4 prefix in use on this machine (an address's subnet or a route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub network: Ipv4Addr,
    pub len: u8,
}

impl Prefix {
    fn mask(len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len.min(32)))
        }
    }

    /// Whether the two share an address.
    pub fn overlaps(&self, other: &Prefix) -> bool {
        let mask = Prefix::mask(self.len.min(other.len));
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }

    /// `10.1.2.3/24` or `10.1.2.3` (a host).
    pub fn parse(text: &str) -> Option<Prefix> {
        let (address, len) = match text.split_once('/') {
            Some((address, len)) => (address, len.parse().ok()?),
            None => (text, 32),
        };
        (len <= 32).then_some(())?;
        Some(Prefix {
            network: address.parse().ok()?,
            len,
        })
    }
}

/// The prefixes `ip -o -4 addr show` and `ip -4 route show table all` list (a default
/// route is no conflict: a more specific route wins over it).
pub fn prefixes_in_use(addresses: &str, routes: &str) -> Vec<Prefix> {
    // `ip -o -4 addr`: "4: eth0    inet 192.0.2.2/24 brd ... scope global eth0 ...".
    let from_addresses = addresses.lines().filter_map(|line| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == "inet")?;
        Prefix::parse(words.next()?)
    });
    // `ip -4 route show table all`: "[type] PREFIX ...", the type left out for unicast.
    const TYPES: [&str; 10] = [
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "anycast",
        "blackhole",
        "unreachable",
        "prohibit",
        "throw",
        "nat",
    ];
    let from_routes = routes.lines().filter_map(|line| {
        let mut words = line.split_whitespace();
        let mut first = words.next()?;
        if TYPES.contains(&first) {
            first = words.next()?;
        }
        Prefix::parse(first)
    });
    from_addresses
        .chain(from_routes)
        .filter(|p| p.len > 0)
        .collect()
}

/// Addresses and names for `regions`: a /24 of 10.213.0.0/16 each that overlaps nothing in
/// `taken`, searched from a point that depends on `pid` (concurrent runs on machines
/// without the lock's /run would still rarely meet).
pub fn plan(regions: &[String], pid: u32, taken: &[Prefix]) -> Result<Vec<RegionPlan>> {
    let start = (pid % 256) as usize;
    let mut free = (0..256)
        .map(|i| ((start + i) % 256) as u8)
        .filter(|&octet| {
            let subnet = Prefix {
                network: Ipv4Addr::new(BASE[0], BASE[1], octet, 0),
                len: 24,
            };
            !taken.iter().any(|t| t.overlaps(&subnet))
        });
    regions
        .iter()
        .enumerate()
        .map(|(index, region)| {
            let octet = free.next().ok_or_else(|| {
                anyhow!(
                    "no free /24 left in {}.{}.0.0/16 for region {region:?} ({} regions)",
                    BASE[0],
                    BASE[1],
                    regions.len()
                )
            })?;
            Ok(RegionPlan {
                index,
                region: region.clone(),
                namespace: namespace_name(pid, index),
                root_link: root_link_name(pid, index),
                root_ip: Ipv4Addr::new(BASE[0], BASE[1], octet, 1),
                ip: Ipv4Addr::new(BASE[0], BASE[1], octet, 2),
            })
        })
        .collect()
}

/// Run `ip ARGS`; its standard output, or an error with what it said.
fn ip(args: &[&str]) -> Result<String> {
    let output = Command::new("ip").args(args).output().map_err(|e| {
        anyhow!("cannot run `ip` ({e}): [local] netns = true needs iproute2 installed")
    })?;
    if !output.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether process `pid` runs (a zombie does not: a killed load generator whose parent
/// has not reaped it yet).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    !matches!(process_state(&stat), Some('Z' | 'X'))
}

/// The state letter of a /proc/PID/stat line ("PID (COMM) S ..."; COMM may hold spaces
/// and parentheses, so the state follows the last ')').
fn process_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Remove the namespaces and root-side links of load generators that are gone.
fn sweep_stale() {
    let own = std::process::id();
    let stale = |name: &str| owner_pid(name).is_some_and(|pid| pid != own && !alive(pid));
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(NAMESPACE_PREFIX) && stale(&name) {
                // What still runs in it is a killed run's forwarder (they outlive a
                // SIGKILLed load generator) and would keep the namespace alive unnamed.
                if let Ok(pids) = ip(&["netns", "pids", &name]) {
                    for pid in pids.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                        fanout_forwarder::driver::os::kill(pid, libc::SIGKILL);
                    }
                }
                match ip(&["netns", "del", &name]) {
                    Ok(_) => info!(namespace = %name, "removed a stale namespace"),
                    Err(e) => warn!("cannot remove a stale namespace: {e:#}"),
                }
            }
        }
    }
    // Deleting a namespace takes the links inside with it and their root-side peers; a
    // root-side link whose namespace was deleted by hand is still swept here.
    let Ok(links) = ip(&["-o", "link", "show"]) else {
        return;
    };
    for line in links.lines() {
        // "12: flg123r0@if3: <BROADCAST,...".
        let Some(name) = line.split_whitespace().nth(1) else {
            continue;
        };
        let name = name.trim_end_matches(':');
        let name = name.split_once('@').map_or(name, |(name, _)| name);
        if name.starts_with(LINK_PREFIX) && stale(name) {
            match ip(&["link", "del", name]) {
                Ok(_) => info!(link = %name, "removed a stale veth"),
                // Gone meanwhile with its namespace (that happens asynchronously).
                Err(_) if !Path::new("/sys/class/net").join(name).exists() => {}
                Err(e) => warn!("cannot remove a stale veth: {e:#}"),
            }
        }
    }
}

/// A socket request: where to bind, and where to send the socket.
type SocketRequest = (
    SocketAddr,
    tokio::sync::oneshot::Sender<Result<mio::net::UdpSocket>>,
);

/// A thread that lives in one region's namespace and creates sockets there on request: a
/// socket belongs to the namespace of the thread that creates it, for good, and no
/// tokio or engine thread ever leaves the root namespace.
#[derive(Debug)]
struct SocketThread {
    region: String,
    ip: Ipv4Addr,
    /// The namespace's name (its file is in [`NETNS_DIR`]).
    namespace: String,
    requests: Mutex<Option<mpsc::Sender<SocketRequest>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl SocketThread {
    /// Enter `namespace` on a new thread, set the namespace's sysctls from there (writes
    /// to /proc/sys/net go to the writer's namespace) if `fresh`, and serve socket
    /// requests.
    fn start(plan: &RegionPlan, namespace: File, fresh: bool) -> Result<SocketThread> {
        let (requests, inbox) = mpsc::channel::<SocketRequest>();
        let (ready_tx, ready) = mpsc::channel::<Result<()>>();
        let name = plan.namespace.clone();
        let thread = std::thread::Builder::new()
            .name(format!("netns-{}", plan.index))
            .spawn(move || {
                let entered = fanout_forwarder::driver::os::enter_network_namespace(&namespace)
                    .with_context(|| format!("cannot enter the network namespace {name}"))
                    .and_then(|()| {
                        if fresh {
                            namespace_sysctls(&name)
                        } else {
                            Ok(())
                        }
                    });
                let failed = entered.is_err();
                let _ = ready_tx.send(entered);
                if failed {
                    return;
                }
                while let Ok((addr, reply)) = inbox.recv() {
                    let _ = reply.send(crate::engine::bind_socket(addr));
                }
            })
            .context("cannot spawn a namespace thread")?;
        let entered = ready
            .recv()
            .map_err(|_| anyhow!("the thread of namespace {} died", plan.namespace));
        let started = SocketThread {
            region: plan.region.clone(),
            ip: plan.ip,
            namespace: plan.namespace.clone(),
            requests: Mutex::new(Some(requests)),
            thread: Mutex::new(Some(thread)),
        };
        // On failure, `started` is dropped and its thread joined.
        entered??;
        Ok(started)
    }

    fn stop(&self) {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            // Its channel is closed: it is returning.
            let _ = thread.join();
        }
    }
}

impl Drop for SocketThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Settings of a fresh region namespace, written from a thread inside it.
fn namespace_sysctls(namespace: &str) -> Result<()> {
    let settings = [
        ("net/ipv4/ip_local_port_range", LOCAL_PORT_RANGE),
        // The routes are symmetric, so even strict reverse-path filtering would pass every
        // packet; it is off anyway so that a host whose namespaces inherit its settings
        // (net.core.devconf_inherit_init_net) cannot drop traffic on the unnumbered mesh
        // links. `default` must be set before the links arrive: a link takes it when it
        // enters the namespace.
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("net/ipv4/conf/default/rp_filter", "0"),
    ];
    for (key, value) in settings {
        let path = Path::new("/proc/sys").join(key);
        std::fs::write(&path, value).with_context(|| {
            format!(
                "cannot set {} in namespace {namespace}",
                key.replace('/', ".")
            )
        })?;
    }
    Ok(())
}

/// Sockets in the region namespaces: where participants' sockets are made.
#[derive(Debug)]
pub struct RegionSockets {
    threads: Vec<SocketThread>,
}

/// A region's namespace as another process of the run finds it: to make its
/// participants' sockets in the same namespaces (`run --processes`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegionNamespace {
    pub region: String,
    /// The namespace's name, in /run/netns.
    pub namespace: String,
    /// The region's address in it.
    pub ip: Ipv4Addr,
}

impl RegionSockets {
    /// Socket threads in namespaces another process made (and keeps): `run --processes`'
    /// children, whose participants live in the parent's region namespaces.
    pub fn enter(namespaces: &[RegionNamespace]) -> Result<RegionSockets> {
        let mut threads = Vec::new();
        for (index, region) in namespaces.iter().enumerate() {
            let path = Path::new(NETNS_DIR).join(&region.namespace);
            let file =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            let plan = RegionPlan {
                index,
                region: region.region.clone(),
                namespace: region.namespace.clone(),
                ip: region.ip,
                // Links are the parent's business.
                root_link: String::new(),
                root_ip: Ipv4Addr::UNSPECIFIED,
            };
            threads.push(SocketThread::start(&plan, file, false)?);
        }
        Ok(RegionSockets { threads })
    }

    /// The namespaces the sockets are made in.
    pub fn namespaces(&self) -> Vec<RegionNamespace> {
        self.threads
            .iter()
            .map(|t| RegionNamespace {
                region: t.region.clone(),
                namespace: t.namespace.clone(),
                ip: t.ip,
            })
            .collect()
    }

    /// A UDP socket (as [`crate::engine::bind_socket`] makes them) in `region`'s namespace,
    /// bound to the namespace's address on an ephemeral port.
    pub async fn bind(&self, region: &str) -> Result<mio::net::UdpSocket> {
        let thread = self
            .threads
            .iter()
            .find(|t| t.region == region)
            .ok_or_else(|| anyhow!("region {region:?} has no network namespace"))?;
        let (reply, socket) = tokio::sync::oneshot::channel();
        let gone = || anyhow!("the namespace thread of region {region:?} has stopped");
        thread
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .ok_or_else(gone)?
            .send((SocketAddr::new(IpAddr::V4(thread.ip), 0), reply))
            .map_err(|_| gone())?;
        socket.await.map_err(|_| gone())?
    }

    fn stop(&self) {
        for thread in &self.threads {
            thread.stop();
        }
    }
}

/// The region networks of a local deployment; everything is removed on drop.
#[derive(Debug)]
pub struct RegionNetworks {
    regions: Vec<Region>,
    sockets: Arc<RegionSockets>,
}

#[derive(Debug)]
struct Region {
    plan: RegionPlan,
    /// Open for as long as the deployment runs: forwarders enter the namespace through it.
    namespace: File,
}

impl RegionNetworks {
    /// Create a namespace per region in `regions` (names unique) and the links between
    /// them. Blocking (runs `ip`). Fails with what is missing when this machine cannot
    /// (not root, no iproute2, no network namespaces or veth in the kernel).
    pub fn create(regions: &[String]) -> Result<RegionNetworks> {
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .with_context(|| format!("cannot open {LOCK_FILE}: [local] netns = true needs root"))?;
        lock.lock()
            .with_context(|| format!("cannot lock {LOCK_FILE}"))?;
        sweep_stale();
        let taken = prefixes_in_use(
            &ip(&["-o", "-4", "addr", "show"])?,
            &ip(&["-4", "route", "show", "table", "all"])?,
        );
        let plans = plan(regions, std::process::id(), &taken)?;
        // Owned from the first namespace on, so a failure half-way removes what was made.
        let mut networks = RegionNetworks {
            regions: Vec::new(),
            sockets: Arc::new(RegionSockets {
                threads: Vec::new(),
            }),
        };
        let mut threads = Vec::new();
        for plan in &plans {
            threads.push(networks.add_region(plan)?);
        }
        networks.sockets = Arc::new(RegionSockets { threads });
        for (a, first) in plans.iter().enumerate() {
            for second in &plans[a + 1..] {
                link_regions(first, second)?;
            }
        }
        for plan in &plans {
            info!(
                region = %plan.region,
                namespace = %plan.namespace,
                address = %plan.ip,
                root_link = %plan.root_link,
                root_address = %plan.root_ip,
                "region network: namespace with a veth to the root namespace and to every other region"
            );
        }
        drop(lock);
        Ok(networks)
    }

    /// Create one region's namespace, its veth to the root namespace and its socket thread.
    fn add_region(&mut self, plan: &RegionPlan) -> Result<SocketThread> {
        ip(&["netns", "add", &plan.namespace]).map_err(|e| {
            e.context(
                "cannot create a network namespace: [local] netns = true needs root \
                 (CAP_SYS_ADMIN and CAP_NET_ADMIN) and a kernel with network namespaces",
            )
        })?;
        let path = Path::new(NETNS_DIR).join(&plan.namespace);
        let opened = File::open(&path);
        let namespace = match opened {
            Ok(file) => file,
            Err(e) => {
                let _ = ip(&["netns", "del", &plan.namespace]);
                return Err(anyhow!("cannot open {}: {e}", path.display()));
            }
        };
        let handle = namespace
            .try_clone()
            .context("cannot duplicate a namespace descriptor")?;
        self.regions.push(Region {
            plan: plan.clone(),
            namespace,
        });
        // Before any link enters (see namespace_sysctls).
        let thread = SocketThread::start(plan, handle, true)?;
        let ns = plan.namespace.as_str();
        let root_address = format!("{}/24", plan.root_ip);
        let address = format!("{}/24", plan.ip);
        let root_ip = plan.root_ip.to_string();
        ip(&[
            "link",
            "add",
            &plan.root_link,
            "type",
            "veth",
            "peer",
            "name",
            ROOT_FACING_LINK,
            "netns",
            ns,
        ])
        .map_err(|e| e.context("cannot create a veth pair (does the kernel have veth?)"))?;
        for args in [
            vec!["addr", "add", &root_address, "dev", &plan.root_link],
            vec!["link", "set", &plan.root_link, "up"],
            vec!["-n", ns, "link", "set", "lo", "up"],
            vec!["-n", ns, "addr", "add", &address, "dev", ROOT_FACING_LINK],
            vec!["-n", ns, "link", "set", ROOT_FACING_LINK, "up"],
            vec!["-n", ns, "route", "add", "default", "via", &root_ip],
        ] {
            ip(&args)?;
        }
        Ok(thread)
    }

    /// Where participants' sockets are made.
    pub fn sockets(&self) -> Arc<RegionSockets> {
        Arc::clone(&self.sockets)
    }

    /// The namespace of `region`, to start a forwarder in, and its address.
    pub fn region(&self, region: &str) -> Option<(&File, Ipv4Addr)> {
        self.regions
            .iter()
            .find(|r| r.plan.region == region)
            .map(|r| (&r.namespace, r.plan.ip))
    }

    /// Where the control plane listens: the root side of the first region's veth. Every
    /// namespace reaches it through its own veth (the root namespace delivers locally what
    /// is addressed to any of its addresses), and nothing outside this machine does, as it
    /// would with 0.0.0.0.
    pub fn control_ip(&self) -> Option<Ipv4Addr> {
        self.regions.first().map(|r| r.plan.root_ip)
    }

    /// Packets each region's veths carried (received, sent), for the log at the end.
    fn log_traffic(&self) {
        for region in &self.regions {
            let Ok(text) = ip(&["-n", &region.plan.namespace, "-s", "-j", "link", "show"]) else {
                continue;
            };
            let Ok(links) = serde_json::from_str::<Vec<serde_json::Value>>(&text) else {
                continue;
            };
            let packets = |link: &serde_json::Value, way: &str| {
                link["stats64"][way]["packets"].as_u64().unwrap_or(0)
            };
            let (mut root, mut mesh) = ((0, 0), (0, 0));
            for link in &links {
                let counters = match link["ifname"].as_str() {
                    Some(ROOT_FACING_LINK) => &mut root,
                    Some(name) if name.starts_with("to-r") => &mut mesh,
                    _ => continue,
                };
                counters.0 += packets(link, "rx");
                counters.1 += packets(link, "tx");
            }
            info!(
                region = %region.plan.region,
                root_rx = root.0,
                root_tx = root.1,
                regions_rx = mesh.0,
                regions_tx = mesh.1,
                "region network traffic (packets over its veths)"
            );
        }
    }
}

/// A veth pair between two region namespaces, with a host route to the other's address on
/// each end.
fn link_regions(a: &RegionPlan, b: &RegionPlan) -> Result<()> {
    let (a_link, b_link) = (mesh_link_name(b.index), mesh_link_name(a.index));
    let (a_ip, b_ip) = (a.ip.to_string(), b.ip.to_string());
    let (a_host, b_host) = (format!("{}/32", a.ip), format!("{}/32", b.ip));
    ip(&[
        "link",
        "add",
        &a_link,
        "netns",
        &a.namespace,
        "type",
        "veth",
        "peer",
        "name",
        &b_link,
        "netns",
        &b.namespace,
    ])?;
    for args in [
        vec!["-n", &a.namespace, "link", "set", &a_link, "up"],
        vec!["-n", &b.namespace, "link", "set", &b_link, "up"],
        vec![
            "-n",
            &a.namespace,
            "route",
            "add",
            &b_host,
            "dev",
            &a_link,
            "src",
            &a_ip,
        ],
        vec![
            "-n",
            &b.namespace,
            "route",
            "add",
            &a_host,
            "dev",
            &b_link,
            "src",
            &b_ip,
        ],
    ] {
        ip(&args)?;
    }
    Ok(())
}

impl Drop for RegionNetworks {
    fn drop(&mut self) {
        self.log_traffic();
        // A thread inside a namespace would keep it (unnamed) alive.
        self.sockets.stop();
        for region in &self.regions {
            // The namespace itself goes when its last process and socket do, and the links
            // inside with it; the root side is deleted now so nothing named stays.
            if let Err(e) = ip(&["netns", "del", &region.plan.namespace]) {
                warn!("{e:#}");
            }
            if let Err(e) = ip(&["link", "del", &region.plan.root_link]) {
                debug!("{e:#}");
            }
        }
        if !self.regions.is_empty() {
            info!(regions = self.regions.len(), "region networks removed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_owner_pid_and_fit_interface_names() {
        let pid = 4_194_304; // the largest pid Linux hands out
        assert_eq!(owner_pid(&namespace_name(pid, 3)), Some(pid));
        assert_eq!(owner_pid(&root_link_name(pid, 12)), Some(pid));
        assert!(root_link_name(pid, 9999).len() <= 15);
        assert_eq!(owner_pid("fanout-lg77-0"), Some(77));
        assert_eq!(owner_pid("flg77r0"), Some(77));
        for other in [
            "fanout-lg",
            "fanout-lg77",
            "fanout-lg77-",
            "fanout-lgx-0",
            "fanout-lg77-0a",
            "flg77",
            "flg77r",
            "flgr0",
            "flg7x7r0",
            "fanout-bench-5",
            "eth0",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }

    #[test]
    fn a_zombie_is_not_alive() {
        assert_eq!(process_state("77 (fanout-loadgen) Z 1 77"), Some('Z'));
        assert_eq!(process_state("78 (a) b) c) S 1 78"), Some('S'));
        assert_eq!(process_state("garbage"), None);
        assert!(alive(std::process::id()));
    }

    #[test]
    fn prefixes_come_from_addresses_and_routes() {
        let addresses = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                         4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\n";
        let routes = "default via 192.0.2.1 dev eth0\n\
                      10.213.7.0/24 dev tun0 proto kernel scope link\n\
                      local 10.213.9.1 dev x table local proto kernel scope host\n\
                      broadcast 127.255.255.255 dev lo table local\n";
        let found = prefixes_in_use(addresses, routes);
        let want = [
            "127.0.0.1/8",
            "192.0.2.2/24",
            "10.213.7.0/24",
            "10.213.9.1/32",
            "127.255.255.255/32",
        ]
        .map(|p| Prefix::parse(p).unwrap());
        assert_eq!(found, want);
    }

    #[test]
    fn overlap_is_by_the_shorter_prefix() {
        let p = |t: &str| Prefix::parse(t).unwrap();
        assert!(p("10.0.0.0/8").overlaps(&p("10.213.4.0/24")));
        assert!(p("10.213.4.0/24").overlaps(&p("10.213.4.9")));
        assert!(!p("10.213.4.0/24").overlaps(&p("10.213.5.0/24")));
        assert!(p("0.0.0.0/0").overlaps(&p("1.2.3.4")));
        assert_eq!(Prefix::parse("10.0.0.0/33"), None);
        assert_eq!(Prefix::parse("nonsense/8"), None);
    }

    #[test]
    fn the_plan_skips_subnets_in_use_and_names_every_region() {
        let regions: Vec<String> = ["eu", "us", "ap"].map(String::from).to_vec();
        let taken = [
            Prefix::parse("10.213.5.0/24").unwrap(),
            Prefix::parse("10.213.6.7").unwrap(),
        ];
        let plans = plan(&regions, 256 + 4, &taken).unwrap();
        let octets: Vec<u8> = plans.iter().map(|p| p.ip.octets()[2]).collect();
        assert_eq!(octets, [4, 7, 8]);
        assert_eq!(plans[1].region, "us");
        assert_eq!(plans[1].namespace, "fanout-lg260-1");
        assert_eq!(plans[1].root_link, "flg260r1");
        assert_eq!(plans[1].root_ip, Ipv4Addr::new(10, 213, 7, 1));
        assert_eq!(plans[1].ip, Ipv4Addr::new(10, 213, 7, 2));
    }

    #[test]
    fn the_plan_wraps_around_and_fails_when_the_range_is_full() {
        let regions: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let plans = plan(&regions, 255, &[]).unwrap();
        assert_eq!(plans[0].ip, Ipv4Addr::new(10, 213, 255, 2));
        assert_eq!(plans[1].ip, Ipv4Addr::new(10, 213, 0, 2));
        let everything = [Prefix::parse("10.213.0.0/16").unwrap()];
        let error = plan(&regions, 1, &everything).unwrap_err();
        assert!(error.to_string().contains("no free /24"), "{error}");
    }
}
