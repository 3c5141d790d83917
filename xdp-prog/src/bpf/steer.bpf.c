// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * XDP steering for espd (see ../lib.rs for the contract).
 *
 * xdp_outside: ESP (IP protocol 50), ESP-in-UDP 4500 (RFC 3948 section 2.2: the first four
 *   payload bytes are a non-zero SPI) and outer IPv4/IPv6 fragments of ESP go to the AF_XDP
 *   socket of the receiving queue. IKE (UDP 500, UDP 4500 with the four-byte zero non-ESP
 *   marker), NAT keepalives (one 0xff byte, RFC 3948 section 2.3) and everything else pass
 *   to the kernel.
 * xdp_inside: IPv4/IPv6 packets whose destination matches a tunnel selector (LPM tries) and
 *   is not one of the gateway's own addresses, nor multicast/broadcast, go to the socket;
 *   ARP, neighbour discovery and traffic for the gateway pass to the kernel.
 *
 * A queue without a socket falls back to the kernel (XDP_PASS flag of bpf_redirect_map).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Verdict counters (index into `stats`); keep in sync with `Verdict` in lib.rs. */
enum verdict {
	V_XSK_ESP = 0,
	V_XSK_NATT,
	V_XSK_FRAG,
	V_XSK_INSIDE,
	V_PASS_IKE,
	V_PASS_KEEPALIVE,
	V_PASS_LOCAL,
	V_PASS_NON_IP,
	V_PASS_OTHER,
	V_PASS_MALFORMED,
	V_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, V_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct lpm_v4 {
	__u32 prefixlen;
	__u32 addr; /* network order */
};

struct lpm_v6 {
	__u32 prefixlen;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__type(key, struct lpm_v4);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} sel_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__type(key, struct lpm_v6);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} sel_v6 SEC(".maps");

/* The gateway's own addresses on this interface (traffic for them goes to the kernel). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
} local_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct in6_addr);
	__type(value, __u8);
} local_v6 SEC(".maps");

static __always_inline int count(__u32 v, int action)
{
	__u64 *c = bpf_map_lookup_elem(&stats, &v);
	if (c)
		*c += 1;
	return action;
}

static __always_inline int to_xsk(struct xdp_md *ctx, __u32 v)
{
	count(v, 0);
	return bpf_redirect_map(&xsks_map, ctx->rx_queue_index, XDP_PASS);
}

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define NEXTHDR_FRAGMENT 44
#define IPPROTO_ESP_ 50

/* UDP to port 4500: ESP unless it is the non-ESP marker or a NAT keepalive. */
static __always_inline int udp_4500(struct xdp_md *ctx, struct udphdr *udp, void *end)
{
	__u8 *pl = (__u8 *)(udp + 1);
	if ((void *)(pl + 1) > end)
		return count(V_PASS_MALFORMED, XDP_PASS);
	if ((void *)(pl + 4) > end) /* 1..3 bytes: a keepalive (0xff) or junk */
		return count(pl[0] == 0xff ? V_PASS_KEEPALIVE : V_PASS_OTHER, XDP_PASS);
	if (pl[0] == 0 && pl[1] == 0 && pl[2] == 0 && pl[3] == 0)
		return count(V_PASS_IKE, XDP_PASS);
	return to_xsk(ctx, V_XSK_NATT);
}

SEC("xdp")
int xdp_outside(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 proto;
	void *l4;

	if ((void *)(eth + 1) > end)
		return count(V_PASS_MALFORMED, XDP_PASS);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return count(V_PASS_MALFORMED, XDP_PASS);
		proto = ip->protocol;
		if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
			if (proto == IPPROTO_ESP_)
				return to_xsk(ctx, V_XSK_FRAG);
			return count(V_PASS_OTHER, XDP_PASS);
		}
		l4 = (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return count(V_PASS_MALFORMED, XDP_PASS);
		proto = ip6->nexthdr;
		l4 = ip6 + 1;
		if (proto == NEXTHDR_FRAGMENT) {
			__u8 *fh = l4;
			if ((void *)(fh + 8) > end)
				return count(V_PASS_MALFORMED, XDP_PASS);
			if (fh[0] == IPPROTO_ESP_)
				return to_xsk(ctx, V_XSK_FRAG);
			return count(V_PASS_OTHER, XDP_PASS);
		}
	} else {
		return count(V_PASS_NON_IP, XDP_PASS);
	}
	if (proto == IPPROTO_ESP_)
		return to_xsk(ctx, V_XSK_ESP);
	if (proto == IPPROTO_UDP) {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > end)
			return count(V_PASS_MALFORMED, XDP_PASS);
		if (udp->dest == bpf_htons(4500))
			return udp_4500(ctx, udp, end);
		if (udp->dest == bpf_htons(500))
			return count(V_PASS_IKE, XDP_PASS);
	}
	return count(V_PASS_OTHER, XDP_PASS);
}

SEC("xdp")
int xdp_inside(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return count(V_PASS_MALFORMED, XDP_PASS);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return count(V_PASS_MALFORMED, XDP_PASS);
		__u32 dst = ip->daddr;
		/* multicast 224/4, limited broadcast */
		if ((dst & bpf_htonl(0xf0000000)) == bpf_htonl(0xe0000000) || dst == 0xffffffff)
			return count(V_PASS_LOCAL, XDP_PASS);
		if (bpf_map_lookup_elem(&local_v4, &dst))
			return count(V_PASS_LOCAL, XDP_PASS);
		struct lpm_v4 k = { .prefixlen = 32, .addr = dst };
		if (bpf_map_lookup_elem(&sel_v4, &k))
			return to_xsk(ctx, V_XSK_INSIDE);
		return count(V_PASS_OTHER, XDP_PASS);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return count(V_PASS_MALFORMED, XDP_PASS);
		/* multicast ff00::/8 and link-local fe80::/10 (neighbour discovery lives there) */
		__u8 b0 = ip6->daddr.in6_u.u6_addr8[0];
		__u8 b1 = ip6->daddr.in6_u.u6_addr8[1];
		if (b0 == 0xff || (b0 == 0xfe && (b1 & 0xc0) == 0x80))
			return count(V_PASS_LOCAL, XDP_PASS);
		struct in6_addr dst = ip6->daddr;
		if (bpf_map_lookup_elem(&local_v6, &dst))
			return count(V_PASS_LOCAL, XDP_PASS);
		struct lpm_v6 k = { .prefixlen = 128 };
		__builtin_memcpy(k.addr, &ip6->daddr, 16);
		if (bpf_map_lookup_elem(&sel_v6, &k))
			return to_xsk(ctx, V_XSK_INSIDE);
		return count(V_PASS_OTHER, XDP_PASS);
	}
	return count(V_PASS_NON_IP, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
