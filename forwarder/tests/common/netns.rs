//! A network namespace joined to the root namespace by a veth pair, for tests where
//! packets must cross a real interface (XDP, AF_XDP). Created with `ip` (iproute2), removed
//! on drop, even when the test panics. Needs root.

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use fanout_forwarder::driver::os::enter_network_namespace;

/// Whether this process may create namespaces and attach programs (CI runs as root).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The root side (`host`, in this process's namespace) and the far side (`peer`, in
/// namespace `ns`) of one veth pair, with a /30 between them.
#[derive(Debug)]
pub struct VethPair {
    pub ns: String,
    pub host_if: String,
    pub peer_if: String,
    pub host_ip: Ipv4Addr,
    pub peer_ip: Ipv4Addr,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (install iproute2): {e}"));
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl VethPair {
    /// A fresh pair; `tag` (a letter or two) tells the tests' interfaces apart.
    pub fn create(tag: &str) -> VethPair {
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{tag}{}{n}", pid % 100_000);
        // A /30 per pair: 10.202.<pid>.<n*4>.
        let base = [10, 202, (pid & 0xff) as u8, ((n & 0x3f) << 2) as u8];
        let pair = VethPair {
            ns: format!("fanout-x{id}"),
            host_if: format!("fx{id}h"),
            peer_if: format!("fx{id}p"),
            host_ip: Ipv4Addr::new(base[0], base[1], base[2], base[3] + 1),
            peer_ip: Ipv4Addr::new(base[0], base[1], base[2], base[3] + 2),
        };
        // Leftovers of an earlier run with the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &pair.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &pair.host_if])
            .output();
        ip(&["netns", "add", &pair.ns]);
        ip(&[
            "link",
            "add",
            &pair.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &pair.peer_if,
        ]);
        ip(&["link", "set", &pair.peer_if, "netns", &pair.ns]);
        let host_cidr = format!("{}/30", pair.host_ip);
        let peer_cidr = format!("{}/30", pair.peer_ip);
        ip(&["addr", "add", &host_cidr, "dev", &pair.host_if]);
        ip(&["link", "set", &pair.host_if, "up"]);
        ip(&[
            "-n",
            &pair.ns,
            "addr",
            "add",
            &peer_cidr,
            "dev",
            &pair.peer_if,
        ]);
        ip(&["-n", &pair.ns, "link", "set", &pair.peer_if, "up"]);
        ip(&["-n", &pair.ns, "link", "set", "lo", "up"]);
        pair
    }

    /// Run `f` on a thread inside the peer namespace. Sockets it creates stay in that
    /// namespace for their whole life, wherever they are used afterwards.
    pub fn in_peer<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.ns);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                    // setns changes only the calling thread, which ends with this closure.
                    enter_network_namespace(&ns).expect("setns into the peer namespace");
                    f()
                })
                .join()
                .expect("the thread in the peer namespace panicked")
        })
    }

    /// Whether an XDP program is attached to the root-side interface.
    pub fn host_has_xdp(&self) -> bool {
        let output = Command::new("ip")
            .args(["-d", "link", "show", "dev", &self.host_if])
            .output()
            .expect("ip link show");
        let text = String::from_utf8_lossy(&output.stdout);
        text.contains("prog/xdp") || text.contains(" xdp") || text.contains("xdpgeneric")
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it the root end.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}
