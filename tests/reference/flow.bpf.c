// SPDX-License-Identifier: GPL-2.0
// The flow benchmark's C reference (tests/benches/flows.rs): the textbook flow counter that
// oxeye's XDP program is measured against. Ethernet (one VLAN tag), IPv4/IPv6, TCP/UDP ports,
// counters in a per-CPU LRU hash keyed by the 5-tuple, first/last seen from the monotonic clock.
// Built by the benchmark with Debian's clang and libbpf headers:
//   clang -O2 -g -target bpf -I/usr/include/$(uname -m)-linux-gnu -c flow.bpf.c -o flow.bpf.o
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct flow_key {
	__u8 src[16];
	__u8 dst[16];
	__u32 ifindex;
	__u16 src_port;
	__u16 dst_port;
	__u16 ether_type;
	__u8 proto;
	__u8 pad;
};

struct flow_stats {
	__u64 packets;
	__u64 bytes;
	__u64 first_seen;
	__u64 last_seen;
	__u8 tcp_flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow_stats);
} ref_flows SEC(".maps");

SEC("xdp")
int ref_flow(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct flow_key key = {};
	struct ethhdr *eth = data;
	void *l4;
	__u8 flags = 0;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	key.ifindex = ctx->ingress_ifindex;
	key.ether_type = bpf_ntohs(eth->h_proto);
	l4 = eth + 1;
	if (key.ether_type == ETH_P_8021Q) {
		__u16 *tag = l4;
		if ((void *)(tag + 2) > end)
			return XDP_PASS;
		key.ether_type = bpf_ntohs(tag[1]);
		l4 = tag + 2;
	}
	if (key.ether_type == ETH_P_IP) {
		struct iphdr *ip = l4;
		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return XDP_PASS;
		__builtin_memcpy(key.src, &ip->saddr, 4);
		__builtin_memcpy(key.dst, &ip->daddr, 4);
		key.proto = ip->protocol;
		l4 = (void *)ip + ip->ihl * 4;
	} else if (key.ether_type == ETH_P_IPV6) {
		struct ipv6hdr *ip6 = l4;
		if ((void *)(ip6 + 1) > end)
			return XDP_PASS;
		__builtin_memcpy(key.src, &ip6->saddr, 16);
		__builtin_memcpy(key.dst, &ip6->daddr, 16);
		key.proto = ip6->nexthdr;
		l4 = ip6 + 1;
	}
	if (key.proto == IPPROTO_TCP) {
		struct tcphdr *t = l4;
		if ((void *)(t + 1) > end)
			return XDP_PASS;
		key.src_port = bpf_ntohs(t->source);
		key.dst_port = bpf_ntohs(t->dest);
		flags = ((__u8 *)t)[13];
	} else if (key.proto == IPPROTO_UDP) {
		struct udphdr *u = l4;
		if ((void *)(u + 1) > end)
			return XDP_PASS;
		key.src_port = bpf_ntohs(u->source);
		key.dst_port = bpf_ntohs(u->dest);
	}

	__u64 now = bpf_ktime_get_ns();
	__u64 len = end - data;
	struct flow_stats *s = bpf_map_lookup_elem(&ref_flows, &key);
	if (s) {
		s->packets++;
		s->bytes += len;
		s->last_seen = now;
		s->tcp_flags |= flags;
	} else {
		struct flow_stats init = {
			.packets = 1, .bytes = len, .first_seen = now, .last_seen = now, .tcp_flags = flags,
		};
		bpf_map_update_elem(&ref_flows, &key, &init, BPF_NOEXIST);
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
