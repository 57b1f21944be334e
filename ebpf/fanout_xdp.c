// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* The forwarder's XDP port guard.
 *
 * For UDP datagrams addressed to a guarded port (fanout_ports), in this order:
 *   1. fragments are dropped (media never fragments, and a non-first fragment carries no
 *      port, so a fragmented datagram could otherwise be reassembled behind the guard);
 *   2. the first payload byte must be STUN, DTLS or RTP/RTCP (RFC 7983 section 7), else drop;
 *   3. a known peer (fanout_peers, kept by the forwarder as legs join and leave) passes;
 *   4. an unknown source may make first contact: STUN and DTLS always, RTP/RTCP only while
 *      some leg waits to learn its address (FANOUT_FLAG_LATCHING_OPEN); within a per-source
 *      budget and a per-CPU flood budget, so spoofed sources cannot reach user space;
 *   5. what passes goes to the AF_XDP socket of its queue when one is registered and
 *      FANOUT_FLAG_REDIRECT_XSK is set, else to the kernel stack.
 * Everything else (other ports, other protocols, non-IP) passes untouched. Each verdict is
 * counted in a per-CPU array that the forwarder exports as Prometheus metrics.
 *
 * Packet parsing reads only the packet (no kernel structures), so the program needs no
 * CO-RE relocations: the UAPI headers describe everything it touches.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fanout_xdp.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fanout_config);
} fanout_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FANOUT_MAX_PORTS);
	__type(key, __u16);
	__type(value, struct fanout_port);
} fanout_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FANOUT_MAX_PEERS);
	__type(key, struct fanout_peer);
	__type(value, __u32);
} fanout_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FANOUT_MAX_BUCKETS);
	__type(key, struct fanout_source);
	__type(value, struct fanout_bucket);
} fanout_buckets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fanout_bucket);
} fanout_flood SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FANOUT_VERDICTS);
	__type(key, __u32);
	__type(value, struct fanout_counter);
} fanout_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, FANOUT_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} fanout_xsks SEC(".maps");

#define VLAN_HLEN 4
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define IPV6_EXTENSIONS_MAX 4

struct vlan_hdr {
	__be16 tci;
	__be16 encapsulated_proto;
};

struct ipv6_fragment {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

/* What the network layer said about the datagram. */
struct datagram {
	struct fanout_peer source;
	struct udphdr *udp;
	__u8 *ip_end; /* one past the IP payload, as the IP length says */
	int fragment;
};

static __always_inline int verdict(__u32 which, __u64 bytes, int action)
{
	struct fanout_counter *counter = bpf_map_lookup_elem(&fanout_counters, &which);

	if (counter) {
		counter->packets += 1;
		counter->bytes += bytes;
	}
	return action;
}

/* Generic cell rate algorithm: a packet conforms while the theoretical arrival time is at
 * most `burst - 1` intervals ahead of now, so `burst` packets pass at once and then one per
 * interval (user space keeps burst >= 1). Updates race benignly between CPUs (a lost update
 * admits one packet more or less). */
static __always_inline int conforms(struct fanout_bucket *bucket, __u64 now, __u64 interval,
				    __u64 burst)
{
	__u64 tat = bucket->tat_ns > now ? bucket->tat_ns : now;

	if (tat - now > interval * (burst - 1))
		return 0;
	bucket->tat_ns = tat + interval;
	return 1;
}

static __always_inline int first_contact_allowed(struct fanout_config *config,
						 struct datagram *d)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 zero = 0;
	struct fanout_source source = {};
	struct fanout_bucket *bucket;

	__builtin_memcpy(source.addr, d->source.addr, sizeof(source.addr));
	bucket = bpf_map_lookup_elem(&fanout_buckets, &source);
	if (!bucket) {
		/* A fresh source starts with a full burst; the insert itself is its first packet.
		 * Inserts into an LRU map evict the coldest source, so a spoofer cycling through
		 * addresses cannot grow the map. */
		struct fanout_bucket fresh = { .tat_ns = now + config->source_interval_ns };

		bpf_map_update_elem(&fanout_buckets, &source, &fresh, BPF_ANY);
	} else if (!conforms(bucket, now, config->source_interval_ns, config->source_burst)) {
		return FANOUT_DROP_SOURCE_RATE;
	}
	bucket = bpf_map_lookup_elem(&fanout_flood, &zero);
	if (!bucket || !conforms(bucket, now, config->flood_interval_ns, config->flood_burst))
		return FANOUT_DROP_FLOOD;
	return FANOUT_PASS_FIRST_CONTACT;
}

static __always_inline int parse_ipv4(void *at, void *end, struct datagram *d)
{
	struct iphdr *ip = at;
	__u32 header;

	if ((void *)(ip + 1) > end)
		return -1;
	header = ip->ihl * 4;
	if (ip->version != 4 || header < sizeof(*ip))
		return -1;
	if (ip->protocol != IPPROTO_UDP)
		return 1;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
		/* Only the first fragment has a UDP header to tell the port. */
		d->fragment = 1;
		if (ip->frag_off & bpf_htons(IP_OFFSET))
			return 1;
	}
	/* IPv4-mapped IPv6 address, ::ffff:a.b.c.d */
	__builtin_memset(d->source.addr, 0, 10);
	d->source.addr[10] = 0xff;
	d->source.addr[11] = 0xff;
	__builtin_memcpy(&d->source.addr[12], &ip->saddr, 4);
	if (bpf_ntohs(ip->tot_len) < header)
		return -1;
	d->udp = at + header;
	d->ip_end = at + bpf_ntohs(ip->tot_len);
	return 0;
}

static __always_inline int parse_ipv6(void *at, void *end, struct datagram *d)
{
	struct ipv6hdr *ip = at;
	__u8 next;
	void *cursor;
	int i;

	if ((void *)(ip + 1) > end)
		return -1;
	if (ip->version != 6)
		return -1;
	next = ip->nexthdr;
	cursor = ip + 1;
	d->ip_end = cursor + bpf_ntohs(ip->payload_len);
	for (i = 0; i < IPV6_EXTENSIONS_MAX; i++) {
		if (next == IPPROTO_UDP)
			break;
		if (next == IPPROTO_FRAGMENT) {
			struct ipv6_fragment *fragment = cursor;

			if ((void *)(fragment + 1) > end)
				return -1;
			d->fragment = 1;
			if (fragment->frag_off & bpf_htons(0xfff8))
				return 1; /* not the first fragment: no port to tell */
			next = fragment->nexthdr;
			cursor = fragment + 1;
		} else if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING ||
			   next == IPPROTO_DSTOPTS) {
			__u8 *option = cursor;

			if ((void *)(option + 2) > end)
				return -1;
			next = option[0];
			cursor += (option[1] + 1) * 8;
		} else {
			return 1;
		}
	}
	if (next != IPPROTO_UDP)
		return 1;
	__builtin_memcpy(d->source.addr, &ip->saddr, 16);
	d->udp = cursor;
	return 0;
}

SEC("xdp")
int fanout_guard(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u64 bytes = end - data;
	struct ethhdr *eth = data;
	struct datagram d = {};
	struct fanout_config *config;
	struct udphdr *udp;
	__u16 proto, port;
	__u32 zero = 0, which;
	__u8 first;
	void *at;
	int parsed, i;

	if ((void *)(eth + 1) > end)
		return verdict(FANOUT_PASS_NOT_GUARDED, bytes, XDP_PASS);
	proto = eth->h_proto;
	at = eth + 1;
	for (i = 0; i < 2; i++) {
		struct vlan_hdr *vlan = at;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vlan + 1) > end)
			return verdict(FANOUT_PASS_NOT_GUARDED, bytes, XDP_PASS);
		proto = vlan->encapsulated_proto;
		at = vlan + 1;
	}
	if (proto == bpf_htons(ETH_P_IP))
		parsed = parse_ipv4(at, end, &d);
	else if (proto == bpf_htons(ETH_P_IPV6))
		parsed = parse_ipv6(at, end, &d);
	else
		return verdict(FANOUT_PASS_NOT_GUARDED, bytes, XDP_PASS);
	/* A truncated IP header cannot be for us or for anyone: the stack drops it too. */
	if (parsed != 0)
		return verdict(FANOUT_PASS_NOT_GUARDED, bytes, XDP_PASS);

	udp = d.udp;
	if ((void *)(udp + 1) > end)
		return verdict(FANOUT_PASS_NOT_GUARDED, bytes, XDP_PASS);
	port = bpf_ntohs(udp->dest);
	if (!bpf_map_lookup_elem(&fanout_ports, &port))
		return verdict(FANOUT_PASS_NOT_GUARDED, bytes, XDP_PASS);

	if (d.fragment)
		return verdict(FANOUT_DROP_FRAGMENT, bytes, XDP_DROP);
	/* The UDP length must cover its header and a first byte, and fit in the IP payload
	 * and in the frame. */
	if (bpf_ntohs(udp->len) < sizeof(*udp) + 1 ||
	    (void *)udp + bpf_ntohs(udp->len) > (void *)d.ip_end || d.ip_end > (__u8 *)end ||
	    (void *)(udp + 1) + 1 > end)
		return verdict(FANOUT_DROP_MALFORMED, bytes, XDP_DROP);
	first = *(__u8 *)(udp + 1);

	config = bpf_map_lookup_elem(&fanout_config, &zero);
	if (!config)
		return verdict(FANOUT_PASS_NOT_GUARDED, bytes, XDP_PASS);

	/* RFC 7983 section 7: 0-3 STUN, 20-63 DTLS, 128-191 RTP/RTCP; ZRTP (16-19) and TURN
	 * channels (64-79) are not served on these ports. */
	if (!(first <= 3 || (first >= 20 && first <= 63) || (first >= 128 && first <= 191)))
		return verdict(FANOUT_DROP_NOT_MEDIA, bytes, XDP_DROP);

	which = FANOUT_PASS_KNOWN_PEER;
	d.source.port_be = udp->source;
	if (!bpf_map_lookup_elem(&fanout_peers, &d.source)) {
		if (first >= 128 && !(config->flags & FANOUT_FLAG_LATCHING_OPEN))
			return verdict(FANOUT_DROP_UNKNOWN_SOURCE, bytes, XDP_DROP);
		which = first_contact_allowed(config, &d);
		if (which != FANOUT_PASS_FIRST_CONTACT)
			return verdict(which, bytes, XDP_DROP);
	}
	verdict(which, bytes, XDP_PASS);

	if (config->flags & FANOUT_FLAG_REDIRECT_XSK) {
		/* XDP_PASS in the flags: no socket on this queue means the kernel stack. */
		long action = bpf_redirect_map(&fanout_xsks, ctx->rx_queue_index, XDP_PASS);

		if (action == XDP_REDIRECT)
			verdict(FANOUT_REDIRECT_XSK, bytes, 0);
		return action;
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
