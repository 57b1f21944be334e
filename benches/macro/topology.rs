//! Where the harness's peers (the publisher, the subscribers, the raw sender) sit relative
//! to the forwarder: on loopback with it, or in their own network namespace behind a veth
//! pair, so every datagram crosses a real (virtual) interface in both directions.

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The network of one run.
#[derive(Debug)]
pub struct Topology {
    /// The address the forwarder listens on.
    pub forwarder_ip: Ipv4Addr,
    /// The address the peers bind.
    pub peer_ip: Ipv4Addr,
    veth: Option<Veth>,
}

impl Topology {
    pub fn loopback() -> Topology {
        Topology {
            forwarder_ip: Ipv4Addr::LOCALHOST,
            peer_ip: Ipv4Addr::LOCALHOST,
            veth: None,
        }
    }

    /// A fresh namespace for the peers and a veth pair to it, removed on drop. Needs root
    /// (CAP_NET_ADMIN) and `ip` from iproute2.
    pub fn veth() -> Result<Topology> {
        let id = std::process::id();
        // A /30 per process, so concurrent runs do not collide.
        let subnet = [10, 251, (id >> 6) as u8, ((id & 0x3f) << 2) as u8];
        let forwarder_ip = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], subnet[3] + 1);
        let peer_ip = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], subnet[3] + 2);
        let (ns, host, peer) = (
            format!("fanout-bench-{id}"),
            format!("fbh{id}"),
            format!("fbp{id}"),
        );
        // Owned from the first command on, so a failure half-way still cleans up.
        let mut veth = Veth {
            netns: ns.clone(),
            host_if: host.clone(),
            netns_file: None,
        };
        for args in [
            vec!["netns", "add", &ns],
            vec!["link", "add", &host, "type", "veth", "peer", "name", &peer],
            vec!["link", "set", &peer, "netns", &ns],
            vec!["addr", "add", &format!("{forwarder_ip}/30"), "dev", &host],
            vec!["link", "set", &host, "up"],
            vec![
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{peer_ip}/30"),
                "dev",
                &peer,
            ],
            vec!["-n", &ns, "link", "set", &peer, "up"],
            vec!["-n", &ns, "link", "set", "lo", "up"],
        ] {
            ip(&args)?;
        }
        let path = format!("/var/run/netns/{ns}");
        veth.netns_file = Some(File::open(&path).with_context(|| format!("cannot open {path}"))?);
        Ok(Topology {
            forwarder_ip,
            peer_ip,
            veth: Some(veth),
        })
    }

    /// The root-side interface of the veth pair (where the forwarder's XDP guard and
    /// AF_XDP sockets go), `None` on loopback.
    pub fn host_interface(&self) -> Option<&str> {
        self.veth.as_ref().map(|v| v.host_if.as_str())
    }

    pub fn name(&self) -> &'static str {
        if self.veth.is_some() {
            "veth"
        } else {
            "loopback"
        }
    }

    /// Run `f` in the peers' namespace: the sockets it creates live there for good.
    pub fn in_peer_namespace<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let Some(file) = self.veth.as_ref().and_then(|v| v.netns_file.as_ref()) else {
            return f();
        };
        // setns changes the calling thread only: a scoped thread enters and dies there.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    fanout_forwarder::driver::os::enter_network_namespace(file)
                        .context("cannot enter the peers' network namespace")?;
                    f()
                })
                .join()
                .map_err(|_| anyhow::anyhow!("a thread panicked in the peers' namespace"))?
        })
    }
}

#[derive(Debug)]
struct Veth {
    netns: String,
    host_if: String,
    netns_file: Option<File>,
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Deleting the namespace deletes the peer end, and with it the pair.
        let _ = ip(&["netns", "del", &self.netns]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !output.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
