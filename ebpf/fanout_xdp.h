/* Types and map names shared by the XDP port guard (fanout_xdp.c) and the forwarder.
 *
 * Mirrored, field for field, by forwarder/src/edge/layout.rs (`#[repr(C)]` types whose
 * sizes and offsets a test checks against the object's BTF). Keep both in step: explicit
 * padding, fixed-width fields, no bool. Multi-byte fields are in host byte order unless
 * the name says `_be` (network order, as on the wire).
 */
#ifndef FANOUT_XDP_H
#define FANOUT_XDP_H

#include <linux/types.h>

/* Map names, as aya finds them in the object. */
#define FANOUT_MAP_CONFIG "fanout_config"
#define FANOUT_MAP_PORTS "fanout_ports"
#define FANOUT_MAP_PEERS "fanout_peers"
#define FANOUT_MAP_SOURCE_BUCKETS "fanout_buckets"
#define FANOUT_MAP_FLOOD_BUCKET "fanout_flood"
#define FANOUT_MAP_COUNTERS "fanout_counters"
#define FANOUT_MAP_XSKS "fanout_xsks"

/* Capacities (user space sizes nothing: the object defines them). */
#define FANOUT_MAX_PORTS 65536
#define FANOUT_MAX_PEERS 262144
#define FANOUT_MAX_BUCKETS 65536
#define FANOUT_MAX_QUEUES 256

/* fanout_config.flags */
/* Some leg still waits to learn its remote address from its first authenticated packet
 * (RFC 4568 legs without a configured remote): RTP/RTCP from unknown sources may pass,
 * within the unknown-source budgets. Without it, only STUN and DTLS may make first contact. */
#define FANOUT_FLAG_LATCHING_OPEN (1u << 0)
/* Redirect allowed packets to the AF_XDP socket of their receive queue (when one is
 * registered in fanout_xsks) instead of passing them to the kernel stack. */
#define FANOUT_FLAG_REDIRECT_XSK (1u << 1)

/* The one entry of fanout_config (an array map of size 1). Rates are GCRA parameters: one
 * packet every `*_interval_ns`, bursts of up to `*_burst` packets. The flood bucket is per
 * CPU (its rate applies to each CPU that receives). */
struct fanout_config {
	__u64 source_interval_ns;
	__u64 source_burst;
	__u64 flood_interval_ns;
	__u64 flood_burst;
	__u32 flags;
	__u32 _pad;
};

/* fanout_ports: key __u16 UDP port (host order) -> value struct fanout_port. */
struct fanout_port {
	__u32 flags; /* reserved, 0 */
};

/* A remote transport address. IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), RFC 4291 2.5.5.2.
 * fanout_peers: key struct fanout_peer -> value __u32 (reserved, 0). */
struct fanout_peer {
	__u8 addr[16];
	__u16 port_be;
	__u16 _pad;
};

/* fanout_buckets (LRU hash): key struct fanout_source (address only: a spoofer varying
 * ports still shares one bucket) -> value struct fanout_bucket. */
struct fanout_source {
	__u8 addr[16];
};

/* GCRA state: the theoretical arrival time of the next conforming packet. */
struct fanout_bucket {
	__u64 tat_ns;
};

/* fanout_counters: per-CPU array indexed by enum fanout_verdict. */
struct fanout_counter {
	__u64 packets;
	__u64 bytes;
};

enum fanout_verdict {
	/* Not for a guarded port (or not IP/UDP): the kernel stack decides. */
	FANOUT_PASS_NOT_GUARDED = 0,
	/* From a known peer (in fanout_peers). */
	FANOUT_PASS_KNOWN_PEER = 1,
	/* First contact from an unknown source, within its budgets. */
	FANOUT_PASS_FIRST_CONTACT = 2,
	/* Handed to an AF_XDP socket (counted in addition to one of the two above). */
	FANOUT_REDIRECT_XSK = 3,
	/* Truncated or inconsistent Ethernet/IP/UDP headers, or an empty UDP payload. */
	FANOUT_DROP_MALFORMED = 4,
	/* An IP fragment addressed to a guarded port: media never fragments. */
	FANOUT_DROP_FRAGMENT = 5,
	/* First byte outside STUN, DTLS and RTP/RTCP (RFC 7983 section 7). */
	FANOUT_DROP_NOT_MEDIA = 6,
	/* RTP/RTCP from an unknown source while no leg is waiting to learn its address. */
	FANOUT_DROP_UNKNOWN_SOURCE = 7,
	/* Unknown source over its own budget. */
	FANOUT_DROP_SOURCE_RATE = 8,
	/* Unknown sources together over the flood budget. */
	FANOUT_DROP_FLOOD = 9,
	FANOUT_VERDICTS = 10,
};

#endif /* FANOUT_XDP_H */
