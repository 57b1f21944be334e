//! The `#[repr(C)]` mirrors of ebpf/fanout_xdp.h: map names, keys, values, flags and
//! verdicts, field for field. `layout_matches_the_c_header` compares them with the layout
//! the C compiler gives the header (printed at build time by ebpf/layout.c).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

pub const MAP_CONFIG: &str = "fanout_config";
pub const MAP_PORTS: &str = "fanout_ports";
pub const MAP_PEERS: &str = "fanout_peers";
pub const MAP_COUNTERS: &str = "fanout_counters";
pub const MAP_XSKS: &str = "fanout_xsks";
/// The program's name in the object (its function name).
pub const PROGRAM: &str = "fanout_guard";

/// Some leg still waits to learn its remote address: RTP/RTCP from unknown sources may
/// make first contact (within the budgets).
pub const FLAG_LATCHING_OPEN: u32 = 1 << 0;
/// Allowed packets go to the AF_XDP socket of their queue, when one is registered.
pub const FLAG_REDIRECT_XSK: u32 = 1 << 1;

/// `struct fanout_config`, the one entry of `fanout_config`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Config {
    pub source_interval_ns: u64,
    pub source_burst: u64,
    pub flood_interval_ns: u64,
    pub flood_burst: u64,
    pub flags: u32,
    pub _pad: u32,
}

/// `struct fanout_port`, the value of `fanout_ports` (key: the port, host order).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Port {
    pub flags: u32,
}

/// `struct fanout_peer`: a remote transport address, the key of `fanout_peers`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Peer {
    /// IPv6, or IPv4 mapped into IPv6 (`::ffff:a.b.c.d`).
    pub addr: [u8; 16],
    /// Network byte order, as in the UDP header.
    pub port_be: u16,
    pub _pad: u16,
}

impl From<SocketAddr> for Peer {
    fn from(address: SocketAddr) -> Peer {
        let ip = match address.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            // An IPv4-mapped address on an IPv6 socket is the same peer as its IPv4 form.
            IpAddr::V6(v6) => v6,
        };
        Peer {
            addr: ip.octets(),
            port_be: address.port().to_be(),
            _pad: 0,
        }
    }
}

impl From<Peer> for SocketAddr {
    fn from(peer: Peer) -> SocketAddr {
        let v6 = Ipv6Addr::from(peer.addr);
        let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
        SocketAddr::new(ip, u16::from_be(peer.port_be))
    }
}

/// `struct fanout_counter`, per CPU, one per [`Verdict`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// `struct fanout_bucket` (GCRA state), for completeness of the layout check: user space
/// never reads the buckets.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    pub tat_ns: u64,
}

/// `struct fanout_source`, the key of the per-source buckets.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Source {
    pub addr: [u8; 16],
}

// SAFETY: plain data of fixed-width integers and byte arrays, `#[repr(C)]` with explicit
// padding fields: every bit pattern is valid and there are no implicit padding bytes.
unsafe impl aya::Pod for Config {}
// SAFETY: as above.
unsafe impl aya::Pod for Port {}
// SAFETY: as above.
unsafe impl aya::Pod for Peer {}
// SAFETY: as above.
unsafe impl aya::Pod for Counter {}

/// `enum fanout_verdict`: what the guard did with a packet, the index of its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Verdict {
    PassNotGuarded = 0,
    PassKnownPeer = 1,
    PassFirstContact = 2,
    RedirectXsk = 3,
    DropMalformed = 4,
    DropFragment = 5,
    DropNotMedia = 6,
    DropUnknownSource = 7,
    DropSourceRate = 8,
    DropFlood = 9,
}

impl Verdict {
    pub const ALL: [Verdict; 10] = [
        Verdict::PassNotGuarded,
        Verdict::PassKnownPeer,
        Verdict::PassFirstContact,
        Verdict::RedirectXsk,
        Verdict::DropMalformed,
        Verdict::DropFragment,
        Verdict::DropNotMedia,
        Verdict::DropUnknownSource,
        Verdict::DropSourceRate,
        Verdict::DropFlood,
    ];

    /// The label value in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::PassNotGuarded => "pass_not_guarded",
            Verdict::PassKnownPeer => "pass_known_peer",
            Verdict::PassFirstContact => "pass_first_contact",
            Verdict::RedirectXsk => "redirect_xsk",
            Verdict::DropMalformed => "drop_malformed",
            Verdict::DropFragment => "drop_fragment",
            Verdict::DropNotMedia => "drop_not_media",
            Verdict::DropUnknownSource => "drop_unknown_source",
            Verdict::DropSourceRate => "drop_source_rate",
            Verdict::DropFlood => "drop_flood",
        }
    }

    pub fn is_drop(self) -> bool {
        (self as u32) >= Verdict::DropMalformed as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::mem::{offset_of, size_of};

    #[cfg(fanout_xdp)]
    #[test]
    fn layout_matches_the_c_header() {
        let printed = include_str!(concat!(env!("OUT_DIR"), "/fanout_xdp_layout.txt"));
        let c: HashMap<&str, usize> = printed
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(name, value)| (name, value.parse().expect("a number")))
            .collect();
        let rust: [(&str, usize); 24] = [
            ("fanout_config", size_of::<Config>()),
            (
                "fanout_config.source_interval_ns",
                offset_of!(Config, source_interval_ns),
            ),
            (
                "fanout_config.source_burst",
                offset_of!(Config, source_burst),
            ),
            (
                "fanout_config.flood_interval_ns",
                offset_of!(Config, flood_interval_ns),
            ),
            ("fanout_config.flood_burst", offset_of!(Config, flood_burst)),
            ("fanout_config.flags", offset_of!(Config, flags)),
            ("fanout_port", size_of::<Port>()),
            ("fanout_port.flags", offset_of!(Port, flags)),
            ("fanout_peer", size_of::<Peer>()),
            ("fanout_peer.addr", offset_of!(Peer, addr)),
            ("fanout_peer.port_be", offset_of!(Peer, port_be)),
            ("fanout_source", size_of::<Source>()),
            ("fanout_source.addr", offset_of!(Source, addr)),
            ("fanout_bucket", size_of::<Bucket>()),
            ("fanout_bucket.tat_ns", offset_of!(Bucket, tat_ns)),
            ("fanout_counter", size_of::<Counter>()),
            ("fanout_counter.packets", offset_of!(Counter, packets)),
            ("fanout_counter.bytes", offset_of!(Counter, bytes)),
            ("FANOUT_FLAG_LATCHING_OPEN", FLAG_LATCHING_OPEN as usize),
            ("FANOUT_FLAG_REDIRECT_XSK", FLAG_REDIRECT_XSK as usize),
            ("FANOUT_VERDICTS", Verdict::ALL.len()),
            ("FANOUT_DROP_FLOOD", Verdict::DropFlood as usize),
            ("fanout_config", 40),
            ("fanout_peer", 20),
        ];
        for (name, value) in rust {
            assert_eq!(
                c.get(name),
                Some(&value),
                "{name}: C says {:?}, Rust {value}",
                c.get(name)
            );
        }
        // Every line the C side prints is checked above.
        for name in c.keys() {
            assert!(
                rust.iter().any(|(n, _)| n == name),
                "{name} has no Rust mirror check"
            );
        }
    }

    #[test]
    fn peers_map_both_families_and_round_trip() {
        let v4: SocketAddr = "192.0.2.7:5004".parse().unwrap();
        let peer = Peer::from(v4);
        assert_eq!(
            &peer.addr[..12],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
        );
        assert_eq!(&peer.addr[12..], &[192, 0, 2, 7]);
        assert_eq!(peer.port_be.to_ne_bytes(), 5004u16.to_be_bytes());
        assert_eq!(SocketAddr::from(peer), v4);
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:5004".parse().unwrap();
        assert_eq!(
            Peer::from(mapped),
            peer,
            "a v4-mapped peer is its IPv4 self"
        );
        let v6: SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
        assert_eq!(SocketAddr::from(Peer::from(v6)), v6);
    }

    #[test]
    fn verdict_indexes_follow_the_c_enum_order() {
        for (index, verdict) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*verdict as usize, index);
        }
        assert!(!Verdict::RedirectXsk.is_drop());
        assert!(Verdict::DropMalformed.is_drop());
    }
}
