/* Packet parsing shared by the XDP filter and the tc loggers.
 * Every header access is bounds-checked right where it happens, so the verifier can follow
 * it and a reader can see it; the parser never reads past data_end. */

#define ETH_P_IP_BE 0x0008     /* htons(ETH_P_IP) */
#define ETH_P_IPV6_BE 0xDD86   /* htons(ETH_P_IPV6) */
#define ETH_P_8021Q_BE 0x0081  /* htons(ETH_P_8021Q) */
#define ETH_P_8021AD_BE 0xA888 /* htons(ETH_P_8021AD) */
#define VLAN_MAX_DEPTH 2
#define IPV6_FRAG_OFFSET_MASK 0xFFF8
/* Hop-by-hop, routing, fragment and destination options before the transport header: real
 * traffic carries at most two or three; a packet with more is judged by its addresses only. */
#define IPV6_EXT_MAX 4
#define ICMPV6_NDP_FIRST 133 /* router solicitation ... */
#define ICMPV6_NDP_LAST 137  /* ... redirect: neighbour discovery, which IPv6 cannot live without */

struct vlan_hdr_t {
    __be16 tci;
    __be16 encapsulated_proto;
};

struct ipv6_fragment_hdr {
    u8 nexthdr;
    u8 reserved;
    __be16 frag_off;
    __be32 identification;
};

struct packet_info {
    u16 vlan;
    u16 eth_proto;  /* network order */
    u8 ip_ver;
    u8 proto;
    u8 ttl;
    u8 tcp_flags;
    u8 icmp_type;   /* ICMP or ICMPv6 type, when proto is one of them */
    u8 has_ports;   /* 1 when src_port/dst_port came from a TCP or UDP header */
    u16 src_port;   /* host order */
    u16 dst_port;
    u8 src_ip[16];
    u8 dst_ip[16];
    u8 src_mac[6];
    u8 dst_mac[6];
    u16 rewrite;    /* id of the first rewrite rule that matched (tc only); 0 when none */
    u16 l3_offset;  /* from the start of the frame to the IP header; 0 for a non-IP frame */
    u16 l4_offset;  /* from the start of the frame; 0 when there is no L4 header */
    u16 l3_end;     /* where the IP packet ends by its own length field; 0 when it does not say */
};

/* Ports of a later fragment are not in the packet: they stay 0 (has_ports 0) rather than
 * reading payload bytes as a port, so port rules never match such a fragment while the
 * address lists still do (docs/filter.md). */
static __always_inline int parse_l4(void *l4, void *data_end, u8 proto, struct packet_info *pkt)
{
    if (proto == IPPROTO_TCP) {
        struct tcphdr *tcp = l4;
        if ((void *)(tcp + 1) > data_end)
            return 0;
        pkt->src_port = bpf_ntohs(tcp->source);
        pkt->dst_port = bpf_ntohs(tcp->dest);
        pkt->tcp_flags = ((u8 *)tcp)[13];
        pkt->has_ports = 1;
    } else if (proto == IPPROTO_UDP) {
        struct udphdr *udp = l4;
        if ((void *)(udp + 1) > data_end)
            return 0;
        pkt->src_port = bpf_ntohs(udp->source);
        pkt->dst_port = bpf_ntohs(udp->dest);
        pkt->has_ports = 1;
    } else if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
        u8 *type = l4;
        if ((void *)(type + 1) > data_end)
            return 0;
        pkt->icmp_type = *type;
    }
    return 0;
}

/* Returns 0 for a parsed IP packet, 1 for a non-IP frame, -1 for a truncated frame. */
static __always_inline int parse_packet(void *data, void *data_end, struct packet_info *pkt)
{
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return -1;
    __builtin_memcpy(pkt->dst_mac, eth->h_dest, 6);
    __builtin_memcpy(pkt->src_mac, eth->h_source, 6);

    void *cursor = eth + 1;
    __be16 proto = eth->h_proto;
#pragma unroll
    for (int depth = 0; depth < VLAN_MAX_DEPTH; depth++) {
        if (proto != ETH_P_8021Q_BE && proto != ETH_P_8021AD_BE)
            break;
        struct vlan_hdr_t *vlan = cursor;
        if ((void *)(vlan + 1) > data_end)
            return -1;
        if (!pkt->vlan)
            pkt->vlan = bpf_ntohs(vlan->tci) & 0x0fff;
        proto = vlan->encapsulated_proto;
        cursor = vlan + 1;
    }
    pkt->eth_proto = proto;
    pkt->l3_offset = (u8 *)cursor - (u8 *)data;

    if (proto == ETH_P_IP_BE) {
        struct iphdr *ip = cursor;
        if ((void *)(ip + 1) > data_end)
            return -1;
        if (ip->ihl < 5)
            return -1;
        pkt->ip_ver = 4;
        pkt->proto = ip->protocol;
        pkt->ttl = ip->ttl;
        __builtin_memcpy(pkt->src_ip, &ip->saddr, 4);
        __builtin_memcpy(pkt->dst_ip, &ip->daddr, 4);
        if (ip->frag_off & bpf_htons(0x1FFF))
            return 0; /* not the first fragment: no L4 header here */
        pkt->l4_offset = (u8 *)cursor - (u8 *)data + ip->ihl * 4;
        if (ip->tot_len) /* 0 in a GSO packet over 64 KiB */
            pkt->l3_end = (u8 *)cursor - (u8 *)data + bpf_ntohs(ip->tot_len);
        return parse_l4((u8 *)ip + ip->ihl * 4, data_end, ip->protocol, pkt);
    }
    if (proto == ETH_P_IPV6_BE) {
        struct ipv6hdr *ip6 = cursor;
        if ((void *)(ip6 + 1) > data_end)
            return -1;
        pkt->ip_ver = 6;
        pkt->ttl = ip6->hop_limit;
        __builtin_memcpy(pkt->src_ip, &ip6->saddr, 16);
        __builtin_memcpy(pkt->dst_ip, &ip6->daddr, 16);

        u8 nexthdr = ip6->nexthdr;
        void *l4 = ip6 + 1;
        for (int depth = 0; depth < IPV6_EXT_MAX; depth++) {
            if (nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING || nexthdr == IPPROTO_DSTOPTS) {
                struct ipv6_opt_hdr *opt = l4;
                if ((void *)(opt + 1) > data_end)
                    break;
                nexthdr = opt->nexthdr;
                l4 = (u8 *)l4 + (opt->hdrlen + 1) * 8;
            } else if (nexthdr == IPPROTO_FRAGMENT) {
                struct ipv6_fragment_hdr *frag = l4;
                if ((void *)(frag + 1) > data_end)
                    break;
                nexthdr = frag->nexthdr;
                l4 = frag + 1;
                if (frag->frag_off & bpf_htons(IPV6_FRAG_OFFSET_MASK)) {
                    pkt->proto = nexthdr;
                    return 0; /* not the first fragment: no transport header here */
                }
            } else {
                break;
            }
        }
        pkt->proto = nexthdr;
        pkt->l4_offset = (u8 *)l4 - (u8 *)data;
        if (ip6->payload_len)
            pkt->l3_end = (u8 *)(ip6 + 1) - (u8 *)data + bpf_ntohs(ip6->payload_len);
        return parse_l4(l4, data_end, nexthdr, pkt);
    }
    return 1;
}
