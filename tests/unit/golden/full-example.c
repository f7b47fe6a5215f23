/* bpfleet policy "edge-web", rendered by bpfleet.core 0.1.0.
 * Generated: edit the policy, not this file. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

/* HAVE_* macros: what this host's kernel offers, probed on the host when the program is
 * compiled (plugins/module_utils/_features.py). Every optional feature has a fallback below. */
#include "bpfleet_features.h"

#define PIN_DIR "/sys/fs/bpf/bpfleet/edge-web/maps/"

/* Filter: the action for an IP packet that no list matches. */
#define DEFAULT_XDP_VERDICT XDP_PASS
#define DEFAULT_ACTION ACTION_PASS

/* Port rules (filter.ports) and per-source rate limits (filter.rate_limit) are compiled in:
 * they change rarely and a compiled-in comparison costs a few instructions, where a map
 * lookup would cost tens of nanoseconds. */
#define INGRESS_PORT_RULES 4
#define EGRESS_PORT_RULES 1
#define RATE_LIMITS 2

/* Logging. */
#define LOG_INGRESS 1
#define LOG_EGRESS 1
#define LOG_RULES 1
#define FILTER_EGRESS (EGRESS_PORT_RULES > 0)
#define LOG_SAMPLE_EVERY 100
#define LOG_MATCH_RULES 4
#define HTTP_CAPTURE 1
/* Header rewrites (policy `rewrite`, docs/rewrite.md), at tc. */
#define REWRITE_INGRESS_RULES 1
#define REWRITE_EGRESS_RULES 3
#define HTTP_REQUESTS_ONLY 0
#define HTTP_MAX_BYTES 1024
#define RINGBUF_BYTES (4194304)
/* Records are submitted without a wakeup and the agent polls on a short timer: a wakeup per
 * record costs about 5.7 us (LAB-NOTES). A burst still wakes the agent every WAKEUP_EVERY
 * records, about 2 % of the ring; every 64th record cost 80 ns per record in BPF_PROG_TEST_RUN,
 * every 1024th 7 ns (docs/benchmarks.md). */
#define WAKEUP_EVERY 1024

/* Map capacities: fixed, so the pinned maps keep their shape across policy edits. */
#define DENY_V4_MAX 1048576
#define DENY_V6_MAX 131072
#define ALLOW_V4_MAX 65536
#define ALLOW_V6_MAX 65536
#define STATS_MAX 16
#define RULE_STATS_MAX 16384
#define RATE_BUCKETS_MAX 131072
#define EVENTS_MAX 4194304

/* The kernel/user-space contract, written from plugins/module_utils/_contract.py (which the
 * host modules, the facts and bpfleet-agent import): rule ids, actions, directions, record
 * flags and the slots of the stats array. */
#define BPFLEET_RECORD_VERSION 1 /* record layout version */
#define DIR_INGRESS 0
#define DIR_EGRESS 1
#define ACTION_PASS 0
#define ACTION_DROP 1
#define ACTION_RATE_LIMITED 2
#define RULE_DEFAULT 0
#define RULE_DENY 1
#define RULE_ALLOW 2
#define RULE_NONE 0xffff /* egress: no filter rule applies */
#define PAYLOAD_TRUNCATED 0x01 /* the end of the request headers is not in the payload */
#define PAYLOAD_REDACTED 0x02 /* the kernel blanked sensitive values */
#define PAYLOAD_CUT 0x04 /* the segment had more bytes than HTTP_MAX_BYTES */
#define STAT_XDP_SEEN 0
#define STAT_XDP_PASSED 1
#define STAT_XDP_DROPPED 2
#define STAT_RECORDS_EMITTED 3
#define STAT_RECORDS_LOST 4
#define STAT_TC_INGRESS_SEEN 5
#define STAT_TC_EGRESS_SEEN 6
#define STAT_XDP_RATE_LIMITED 7
#define STAT_TC_EGRESS_DROPPED 8
#define STAT_SLOTS 16 /* size of the stats array */

/* Header record shared by the kernel programs and bpfleet-agent.
 * The layout is a contract (docs/architecture.md, _contract.RECORD_FORMAT): change
 * BPFLEET_RECORD_VERSION (_contract.RECORD_VERSION) with it. The #defines of the contract
 * (rule ids, actions, directions, flags, stats slots) come before this file, written from
 * plugins/module_utils/_contract.py by the renderer. */

struct bpfleet_record {
    u64 ts_boot_ns;
    u32 ifindex;
    u32 pkt_len;
    u8 dir;
    u8 action;
    u16 rule;
    u16 vlan;
    u16 eth_proto;
    u8 src_mac[6];
    u8 dst_mac[6];
    u8 ip_ver;
    u8 proto;
    u8 ttl;
    u8 tcp_flags;
    u16 src_port;
    u16 dst_port;
    u8 src_ip[16];
    u8 dst_ip[16];
    u16 payload_len;
    u8 flags;
    u8 version;
    u16 rewrite; /* rule id of the rewrite applied after the record was taken; 0: none */
    u8 _pad[6];
};

_Static_assert(sizeof(struct bpfleet_record) == 88, "record layout is a user-space contract");

struct counter {
    u64 packets;
    u64 bytes;
};

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

struct lpm_v4_key {
    u32 prefixlen;
    u8 addr[4];
};

struct lpm_v6_key {
    u32 prefixlen;
    u8 addr[16];
};

/* Per-rule counters are kept per interface: one policy may cover several interfaces. */
struct rule_key {
    u32 ifindex;
    u32 rule;
};

/* A source's token bucket; `tokens` counts nano-packets (1e9 per packet), so refilling is
 * one multiplication of the elapsed nanoseconds by the rate in packets per second. */
struct rate_key {
    u32 rule;
    u8 ip_ver;
    u8 _pad[3];
    u8 addr[16];
};

struct rate_bucket {
    u64 tokens;
    u64 last_ns;
};

#define NANO_PACKET 1000000000ULL

/* What the filter decided for a packet, and the first `log` port rule it matched. */
struct verdict {
    u8 action;
    u16 rule;
    u16 log_rule;
};

/* BCC's BPF_RINGBUF_OUTPUT cannot be pinned; this is the same table with a pin path, so
 * the ring buffer outlives a recompile and the agent keeps reading the same map. */
#define RINGBUF_PINNED(_name, _bytes, _pin)                  \
    struct _name##_table_t {                                 \
        int key;                                             \
        u32 leaf;                                            \
        int (*ringbuf_output)(void *, u64, u64);             \
        void *(*ringbuf_reserve)(u64);                       \
        void (*ringbuf_discard)(void *, u64);                \
        void (*ringbuf_submit)(void *, u64);                 \
        u32 max_entries;                                     \
    };                                                       \
    __attribute__((section("maps/ringbuf:" _pin)))           \
    struct _name##_table_t _name = {.max_entries = (_bytes)}

BPF_TABLE_PINNED("lpm_trie", struct lpm_v4_key, u32, deny_v4, DENY_V4_MAX, PIN_DIR "deny_v4", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct lpm_v6_key, u32, deny_v6, DENY_V6_MAX, PIN_DIR "deny_v6", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct lpm_v4_key, u32, allow_v4, ALLOW_V4_MAX, PIN_DIR "allow_v4", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct lpm_v6_key, u32, allow_v6, ALLOW_V6_MAX, PIN_DIR "allow_v6", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("percpu_array", u32, struct counter, stats, STATS_MAX, PIN_DIR "stats");
BPF_TABLE_PINNED("percpu_hash", struct rule_key, struct counter, rule_stats, RULE_STATS_MAX, PIN_DIR "rule_stats");
BPF_TABLE_PINNED("lru_hash", struct rate_key, struct rate_bucket, rate_buckets, RATE_BUCKETS_MAX, PIN_DIR "rate_buckets");
RINGBUF_PINNED(events, RINGBUF_BYTES, PIN_DIR "events");

static __always_inline struct counter *count(u32 slot, u32 bytes)
{
    struct counter *c = stats.lookup(&slot);
    if (c) {
        c->packets++;
        c->bytes += bytes;
    }
    return c;
}

static __always_inline void count_rule(u32 ifindex, u32 rule, u32 bytes)
{
    struct rule_key key = {.ifindex = ifindex, .rule = rule};
    struct counter *c = rule_stats.lookup(&key);
    if (!c) {
        /* First packet of this rule on this interface. insert() fails if another CPU got
         * there first; the lookup after it then finds that CPU's entry. */
        struct counter first = {};
        rule_stats.insert(&key, &first);
        c = rule_stats.lookup(&key);
        if (!c)
            return;
    }
    c->packets++;
    c->bytes += bytes;
}

static __always_inline int port_in(struct packet_info *pkt, u16 low, u16 high)
{
    return pkt->has_ports && pkt->dst_port >= low && pkt->dst_port <= high;
}

static __always_inline int is_icmp(struct packet_info *pkt)
{
    if (pkt->ip_ver == 4)
        return pkt->proto == IPPROTO_ICMP;
    return pkt->proto == IPPROTO_ICMPV6 && !(pkt->icmp_type >= ICMPV6_NDP_FIRST && pkt->icmp_type <= ICMPV6_NDP_LAST);
}

static __always_inline int is_neighbour_discovery(struct packet_info *pkt)
{
    return pkt->ip_ver == 6 && pkt->proto == IPPROTO_ICMPV6 && pkt->icmp_type >= ICMPV6_NDP_FIRST &&
           pkt->icmp_type <= ICMPV6_NDP_LAST;
}

/* The address lists: an allow entry is an exception to the deny list. The value stored with
 * a prefix is its rule id. Returns 1 when a list decided. */
static __always_inline int check_lists(struct packet_info *pkt, struct verdict *v)
{
    u32 *rule;
    if (pkt->ip_ver == 4) {
        struct lpm_v4_key key = {.prefixlen = 32};
        __builtin_memcpy(key.addr, pkt->src_ip, 4);
        rule = allow_v4.lookup(&key);
        if (rule) {
            v->action = ACTION_PASS;
            v->rule = *rule;
            return 1;
        }
        rule = deny_v4.lookup(&key);
        if (rule) {
            v->action = ACTION_DROP;
            v->rule = *rule;
            return 1;
        }
    } else {
        struct lpm_v6_key key = {.prefixlen = 128};
        __builtin_memcpy(key.addr, pkt->src_ip, 16);
        rule = allow_v6.lookup(&key);
        if (rule) {
            v->action = ACTION_PASS;
            v->rule = *rule;
            return 1;
        }
        rule = deny_v6.lookup(&key);
        if (rule) {
            v->action = ACTION_DROP;
            v->rule = *rule;
            return 1;
        }
    }
    return 0;
}

/* Ingress port rules in policy order: the first drop or pass rule decides; a log rule only
 * marks the packet for a record. Returns 1 when a rule decided. */
static __always_inline int check_ingress_ports(struct packet_info *pkt, struct verdict *v)
{
    /* no-telnet: tcp port 23 -> drop */
    if (pkt->proto == IPPROTO_TCP && port_in(pkt, 23, 23)) {
        v->action = ACTION_DROP;
        v->rule = 16;
        return 1;
    }
    /* ports[1]: udp port 6000-6100 -> drop */
    if (pkt->proto == IPPROTO_UDP && port_in(pkt, 6000, 6100)) {
        v->action = ACTION_DROP;
        v->rule = 17;
        return 1;
    }
    /* dns-queries: udp port 53 -> log */
    if (pkt->proto == IPPROTO_UDP && port_in(pkt, 53, 53)) {
        if (v->log_rule == RULE_NONE)
            v->log_rule = 18;
    }
    /* ports[3]: icmp -> pass */
    if (is_icmp(pkt)) {
        v->action = ACTION_PASS;
        v->rule = 19;
        return 1;
    }
    return 0;
}

/* The filter's decision without side effects: the XDP program acts on it, the tc ingress
 * logger repeats it to name the rule that let a packet through. */
static __always_inline void classify(struct packet_info *pkt, struct verdict *v)
{
    v->log_rule = RULE_NONE;
    if (is_neighbour_discovery(pkt)) {
        /* IPv6 cannot resolve neighbours without it, whatever the lists say. */
        v->action = ACTION_PASS;
        v->rule = RULE_DEFAULT;
        return;
    }
    if (check_lists(pkt, v))
        return;
    if (check_ingress_ports(pkt, v))
        return;
    v->action = DEFAULT_ACTION;
    v->rule = RULE_DEFAULT;
}

#if RATE_LIMITS
/* Takes one token from the source's bucket of a rate limit; 0 when the bucket is empty.
 * Two CPUs may race on one bucket and let a packet or two more through: a per-source limit
 * meant for floods can afford that, a lock per packet it cannot. */
static __always_inline int take_token(struct packet_info *pkt, u32 rule, u64 rate, u64 burst_nano, u64 fill_ns)
{
    struct rate_key key = {.rule = rule, .ip_ver = pkt->ip_ver};
    __builtin_memcpy(key.addr, pkt->src_ip, 16);
    u64 now = bpf_ktime_get_ns();
    struct rate_bucket *bucket = rate_buckets.lookup(&key);
    if (!bucket) {
        struct rate_bucket fresh = {.tokens = burst_nano - NANO_PACKET, .last_ns = now};
        rate_buckets.update(&key, &fresh);
        return 1;
    }
    u64 elapsed = now - bucket->last_ns;
    u64 tokens = elapsed >= fill_ns ? burst_nano : bucket->tokens + elapsed * rate;
    if (tokens > burst_nano)
        tokens = burst_nano;
    bucket->last_ns = now;
    if (tokens < NANO_PACKET) {
        bucket->tokens = tokens;
        return 0;
    }
    bucket->tokens = tokens - NANO_PACKET;
    return 1;
}

/* Every matching limit takes a token; the first empty bucket drops the packet. */
static __always_inline int check_rate_limits(struct packet_info *pkt, struct verdict *v)
{
    /* http-per-client: tcp port 80, 2000 packets/s per source, burst 4000 */
    if (pkt->proto == IPPROTO_TCP && port_in(pkt, 80, 80) && !take_token(pkt, 128, 2000ULL, 4000ULL * NANO_PACKET, 2000000000ULL)) {
        v->action = ACTION_RATE_LIMITED;
        v->rule = 128;
        return 1;
    }
    /* rate_limit[1]: any, 20000 packets/s per source, burst 20000 */
    if (1 && !take_token(pkt, 129, 20000ULL, 20000ULL * NANO_PACKET, 1000000000ULL)) {
        v->action = ACTION_RATE_LIMITED;
        v->rule = 129;
        return 1;
    }
    return 0;
}
#endif

#if FILTER_EGRESS
/* Egress port rules in policy order, on packets this host sends. Returns 1 when one decided. */
static __always_inline int check_egress_ports(struct packet_info *pkt, struct verdict *v)
{
    v->log_rule = RULE_NONE;
    /* no-smtp-out: tcp port 25 -> drop */
    if (pkt->proto == IPPROTO_TCP && port_in(pkt, 25, 25)) {
        v->action = ACTION_DROP;
        v->rule = 20;
        return 1;
    }
    return 0;
}
#endif

#if LOG_INGRESS || LOG_EGRESS || LOG_RULES
/* log.match: the packets the loggers record, before sampling. */
static __always_inline int log_match(struct packet_info *pkt)
{
    if (pkt->proto == IPPROTO_TCP && pkt->has_ports && (pkt->dst_port >= 8000 && pkt->dst_port <= 8099))
        return 1;
    if (pkt->proto == IPPROTO_TCP && pkt->has_ports && (pkt->src_port == 80 || pkt->dst_port == 80))
        return 1;
    if (is_icmp(pkt))
        return 1;
    if (pkt->proto == IPPROTO_UDP && pkt->has_ports && pkt->src_port == 53)
        return 1;
    return 0;
}

/* Whether the loggers record this packet: log.match first (exact and cheap), then sampling. */
static __always_inline int should_log(struct packet_info *pkt)
{
#if LOG_MATCH_RULES
    if (!log_match(pkt))
        return 0;
#endif
#if LOG_SAMPLE_EVERY > 1
    if (bpf_get_prandom_u32() % LOG_SAMPLE_EVERY)
        return 0;
#endif
    return 1;
}

static __always_inline void fill_record(struct bpfleet_record *rec, struct packet_info *pkt, u32 ifindex, u32 len,
                                        u8 dir, struct verdict *v)
{
    __builtin_memset(rec, 0, sizeof(*rec));
#if HAVE_KTIME_GET_BOOT_NS
    rec->ts_boot_ns = bpf_ktime_get_boot_ns();
#else
    rec->ts_boot_ns = bpf_ktime_get_ns(); /* before 5.8: monotonic, stops during suspend */
#endif
    rec->ifindex = ifindex;
    rec->pkt_len = len;
    rec->dir = dir;
    rec->action = v->action;
    rec->rule = v->rule;
    rec->vlan = pkt->vlan;
    rec->rewrite = pkt->rewrite;
    rec->eth_proto = bpf_ntohs(pkt->eth_proto);
    __builtin_memcpy(rec->src_mac, pkt->src_mac, 6);
    __builtin_memcpy(rec->dst_mac, pkt->dst_mac, 6);
    rec->ip_ver = pkt->ip_ver;
    rec->proto = pkt->proto;
    rec->ttl = pkt->ttl;
    rec->tcp_flags = pkt->tcp_flags;
    rec->src_port = pkt->src_port;
    rec->dst_port = pkt->dst_port;
    __builtin_memcpy(rec->src_ip, pkt->src_ip, 16);
    __builtin_memcpy(rec->dst_ip, pkt->dst_ip, 16);
    rec->version = BPFLEET_RECORD_VERSION;
}

/* BPF_RB_NO_WAKEUP, except for every WAKEUP_EVERY-th record. */
static __always_inline u64 wakeup_for_next_record(void)
{
    u32 slot = STAT_RECORDS_EMITTED;
    struct counter *emitted = stats.lookup(&slot);
    if (emitted && ((emitted->packets + 1) % WAKEUP_EVERY) == 0)
        return BPF_RB_FORCE_WAKEUP;
    return BPF_RB_NO_WAKEUP;
}

/* One header record to the ring buffer. */
static __always_inline void write_record(struct packet_info *pkt, u32 ifindex, u32 len, u8 dir, struct verdict *v)
{
    struct bpfleet_record *rec = events.ringbuf_reserve(sizeof(struct bpfleet_record));
    if (!rec) {
        count(STAT_RECORDS_LOST, 0);
        return;
    }
    fill_record(rec, pkt, ifindex, len, dir, v);
    u64 wakeup = wakeup_for_next_record();
    count(STAT_RECORDS_EMITTED, 0);
    events.ringbuf_submit(rec, wakeup);
}

/* A record when should_log() says so. `always` bypasses log.match and sampling: a `log`
 * port rule asked for every packet it matches. */
static __always_inline void emit_record(struct packet_info *pkt, u32 ifindex, u32 len, u8 dir, struct verdict *v,
                                        int always)
{
    if (always || should_log(pkt))
        write_record(pkt, ifindex, len, dir, v);
}
#if LOG_INGRESS && HAVE_XDP_ADJUST_META
/* The XDP program hands its verdict to the tc ingress logger in the frame's metadata area
 * (the bytes before the packet that the stack keeps with the skb, as Cilium hands over
 * identities), so tc does not repeat the list lookups for every packet it records. Where a
 * driver has no metadata area, bpf_xdp_adjust_meta() fails and tc classifies again; where
 * the kernel refuses the helper in XDP programs (HAVE_XDP_ADJUST_META 0), tc always does. */
#define VERDICT_MAGIC 0xbf1e

struct verdict_meta {
    u16 magic;
    u8 action;
    u8 _pad;
    u16 rule;
    u16 log_rule;
};

static __always_inline void hand_over_verdict(struct xdp_md *ctx, struct verdict *v)
{
    if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct verdict_meta)) != 0)
        return;
    void *data = (void *)(long)ctx->data;
    struct verdict_meta *meta = (void *)(long)ctx->data_meta;
    if ((void *)(meta + 1) > data)
        return;
    meta->magic = VERDICT_MAGIC;
    meta->action = v->action;
    meta->_pad = 0;
    meta->rule = v->rule;
    meta->log_rule = v->log_rule;
}

/* 1 when the XDP program left its verdict for this packet. */
static __always_inline int verdict_from_xdp(struct __sk_buff *skb, struct verdict *v)
{
    void *data = (void *)(long)skb->data;
    struct verdict_meta *meta = (void *)(long)skb->data_meta;
    if ((void *)(meta + 1) > data || meta->magic != VERDICT_MAGIC)
        return 0;
    v->action = meta->action;
    v->rule = meta->rule;
    v->log_rule = meta->log_rule;
    return 1;
}
#elif LOG_INGRESS
static __always_inline void hand_over_verdict(struct xdp_md *ctx, struct verdict *v)
{
}

static __always_inline int verdict_from_xdp(struct __sk_buff *skb, struct verdict *v)
{
    return 0;
}
#endif


/* HTTP/1.x request capture for the tc loggers (log.http in the policy; docs/logging-http.md).
 *
 * A TCP segment to one of the policy's HTTP ports whose payload starts with a request line
 * is copied, up to HTTP_MAX_BYTES, into a per-CPU scratch record behind the usual header
 * record. The copy is scanned and the value of every sensitive header and query parameter
 * is overwritten with HTTP_FILLER before the record goes to the ring buffer: a bearer token
 * never reaches user space. The packet itself is never modified. The agent applies the same
 * rules again (plugins/module_utils/_http.py) to whatever the kernel hands over.
 *
 * The scanner is an automaton driven by tables, one lookup per byte, and its loop has no
 * branch except the exits. That is for the verifier: it walks a bounded loop once per
 * iteration, and a branch inside would send it through the rest of the loop once per
 * outcome (the checkpoint that could merge the two paths is evicted long before the second
 * one arrives). Branch-free, the cost is HTTP_MAX_BYTES times the loop body. The automaton,
 * the tables and a byte-for-byte Python model of this loop (scan_like_the_kernel, run by the
 * unit tests) are in _http.py.
 */

#define HTTP_FILLER '*'
#define HTTP_NAME_HASH_SEED 0xcbf29ce484222325ULL  /* FNV-1a 64, as _http.kernel_name_hash */
#define HTTP_NAME_HASH_PRIME 0x100000001b3ULL
#define HTTP_REQUEST_MIN_BYTES 8                    /* the longest method and its space */
#define HTTP_TABLES_READY 0x68747470                /* "http": the tables of this CPU are filled */

/* Scanner states (_http.SCAN_STATES). */
enum http_state {
    HTTP_METHOD = 0,
    HTTP_TARGET = 1,
    HTTP_QUERY_NAME = 2,
    HTTP_QUERY_VALUE = 3,
    HTTP_QUERY_SECRET = 4,
    HTTP_VERSION = 5,
    HTTP_LINE = 6,
    HTTP_LINE_CR = 7,
    HTTP_LINE_VALUE = 8,
    HTTP_LINE_VALUE_CR = 9,
    HTTP_LINE_SECRET = 10,
    HTTP_LINE_SECRET_CR = 11,
    HTTP_NAME = 12,
    HTTP_VALUE = 13,
    HTTP_SECRET = 14,
    HTTP_DONE = 15,
};
#define HTTP_SCAN_STATES 16

/* Byte classes (_http.SCAN_CLASSES): the bytes the automaton tells apart. */
enum http_class {
    HTTP_CLASS_OTHER = 0,
    HTTP_CLASS_LF = 1,
    HTTP_CLASS_CR = 2,
    HTTP_CLASS_SPACE = 3,
    HTTP_CLASS_TAB = 4,
    HTTP_CLASS_COLON = 5,
    HTTP_CLASS_QUESTION = 6,
    HTTP_CLASS_AMPERSAND = 7,
    HTTP_CLASS_EQUALS = 8,
};
#define HTTP_SCAN_WIDTH 16

/* Actions of a transition, applied in this order (_http.SCAN_ACTIONS). */
#define HTTP_RESET 1
#define HTTP_FEED 2
#define HTTP_DECIDE 4
#define HTTP_BLANK 8
#define HTTP_REQUEST_END 16

#define HTTP_DOES(action, which) (((action) / (which)) & 1)
/* Eight bytes as one little-endian word, for comparing a method or a version at once. */
#define HTTP_WORD(a, b, c, d, e, f, g, h)                                                     \
    ((u64)(a) | (u64)(b) << 8 | (u64)(c) << 16 | (u64)(d) << 24 | (u64)(e) << 32 |           \
     (u64)(f) << 40 | (u64)(g) << 48 | (u64)(h) << 56)
#define HTTP_FIRST_BYTES(n) ((1ULL << (8 * (n))) - 1)

#define HTTP_NAME_SLOT_BITS 4
#define HTTP_NAME_MULTIPLIER 0x3c6ef372fe94f82bULL

struct http_tables {
    u8 byte_class[256];
    u8 normalized[256];  /* names compare lowercase, '_' read as '-', bytes over 0x7f as 0x7f */
    u8 next_state[HTTP_SCAN_STATES * HTTP_SCAN_WIDTH];
    u8 action[HTTP_SCAN_STATES * HTTP_SCAN_WIDTH];
    u64 name_slots[1 << HTTP_NAME_SLOT_BITS];  /* hashes of the exact sensitive names, 0 when free */
    u32 ready;
};

/* The record as it goes to the ring buffer: the header, then payload_len captured bytes. */
struct http_capture {
    struct bpfleet_record rec;
    u8 payload[HTTP_MAX_BYTES];
    struct http_tables tables;
    u64 length;          /* captured bytes, read back after the scan (see http_scan) */
    u64 end;             /* bytes up to the end of the headers, 0 until they end */
};

BPF_PERCPU_ARRAY(http_scratch, struct http_capture, 1);

/* log.http.ports: TCP destination ports of the requests to capture. */
static __always_inline int http_port(u16 port)
{
    return port == 80 || port == 8080;
}

/* Keeps the compiler from reasoning about a value: it can then neither turn arithmetic back
 * into a branch nor check a bound on one copy of a register and use another. */
static __always_inline u64 http_opaque(u64 value)
{
    asm volatile("" : "+r"(value));
    return value;
}

/* if_set when bit is 1, if_clear when it is 0, without a branch. */
static __always_inline u64 http_select(u64 bit, u64 if_set, u64 if_clear)
{
    return if_clear ^ ((if_set ^ if_clear) & -http_opaque(bit));
}

/* The name read so far ends with a sensitive part (defaults and log.http.redact_containing):
 * its last bytes, newest in the low byte, against each part (_http.kernel_tail_pattern).
 * Normalized bytes are below 0x80, so each difference is below 2^63 and is 0 exactly when
 * its 'difference - 1' has the top bit set: one shift tests all parts. */
static __always_inline u64 http_tail_is_sensitive(u64 tail)
{
    tail = http_opaque(tail);
    return ((((tail & 0xffffffffffffffULL) ^ 0x6170692d6b6579ULL) - 1) | /* api-key */
                (((tail & 0xffffffffffffULL) ^ 0x6170696b6579ULL) - 1) | /* apikey */
                (((tail & 0xffffffffffffffffULL) ^ 0x70617373776f7264ULL) - 1) | /* password */
                (((tail & 0xffffffffffffULL) ^ 0x736563726574ULL) - 1) | /* secret */
                (((tail & 0xffffffffffffffffULL) ^ 0x69676e6174757265ULL) - 1) | /* signature */
                (((tail & 0xffffffffffULL) ^ 0x746f6b656eULL) - 1)) >> 63; /* token */
}

/* The name is one of the exact sensitive names (defaults and log.http.redact), by its hash
 * (the lowest bit is not compared, which keeps the test to three instructions). */
static __always_inline u64 http_hash_is_sensitive(struct http_tables *tables, u64 hash)
{
    u64 slot = (hash * HTTP_NAME_MULTIPLIER) >> (64 - HTTP_NAME_SLOT_BITS);
    return ((http_opaque(tables->name_slots[slot] ^ hash) >> 1) - 1) >> 63;
}

/* Fills this CPU's tables on its first capture (the scratch map is new with each program). */
static __always_inline void http_tables_fill(struct http_tables *tables)
{
    for (u32 byte = 0; byte < 256; byte++) {
        tables->byte_class[byte] = HTTP_CLASS_OTHER;
        tables->normalized[byte] = byte < 0x80 ? byte : 0x7f;
    }
    for (u32 byte = 'A'; byte <= 'Z'; byte++)
        tables->normalized[byte] = byte + ('a' - 'A');
    tables->normalized['_'] = '-';
    tables->byte_class[38] = HTTP_CLASS_AMPERSAND;
    tables->byte_class[58] = HTTP_CLASS_COLON;
    tables->byte_class[13] = HTTP_CLASS_CR;
    tables->byte_class[61] = HTTP_CLASS_EQUALS;
    tables->byte_class[10] = HTTP_CLASS_LF;
    tables->byte_class[63] = HTTP_CLASS_QUESTION;
    tables->byte_class[32] = HTTP_CLASS_SPACE;
    tables->byte_class[9] = HTTP_CLASS_TAB;
    /* By default a byte leaves the state as it is and does nothing. */
    for (u32 state = 0; state < HTTP_SCAN_STATES; state++) {
        for (u32 cls = 0; cls < HTTP_SCAN_WIDTH; cls++) {
            tables->next_state[state * HTTP_SCAN_WIDTH + cls] = state;
            tables->action[state * HTTP_SCAN_WIDTH + cls] = 0;
        }
    }
    tables->next_state[HTTP_METHOD * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_LINE;
    tables->action[HTTP_METHOD * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_REQUEST_END;
    tables->next_state[HTTP_METHOD * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_LINE_CR;
    tables->action[HTTP_METHOD * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_REQUEST_END;
    tables->next_state[HTTP_METHOD * HTTP_SCAN_WIDTH + HTTP_CLASS_SPACE] = HTTP_TARGET;
    tables->next_state[HTTP_TARGET * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_LINE;
    tables->action[HTTP_TARGET * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_REQUEST_END;
    tables->next_state[HTTP_TARGET * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_LINE_CR;
    tables->action[HTTP_TARGET * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_REQUEST_END;
    tables->next_state[HTTP_TARGET * HTTP_SCAN_WIDTH + HTTP_CLASS_SPACE] = HTTP_VERSION;
    tables->next_state[HTTP_TARGET * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_QUERY_NAME;
    tables->action[HTTP_TARGET * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_RESET;
    tables->next_state[HTTP_QUERY_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_QUERY_NAME;
    tables->action[HTTP_QUERY_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_FEED;
    tables->next_state[HTTP_QUERY_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_LINE;
    tables->action[HTTP_QUERY_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_REQUEST_END;
    tables->next_state[HTTP_QUERY_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_LINE_CR;
    tables->action[HTTP_QUERY_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_REQUEST_END;
    tables->next_state[HTTP_QUERY_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_SPACE] = HTTP_VERSION;
    tables->next_state[HTTP_QUERY_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_QUERY_NAME;
    tables->action[HTTP_QUERY_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_FEED;
    tables->next_state[HTTP_QUERY_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_QUERY_NAME;
    tables->action[HTTP_QUERY_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_FEED;
    tables->next_state[HTTP_QUERY_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_QUERY_NAME;
    tables->action[HTTP_QUERY_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_RESET;
    tables->next_state[HTTP_QUERY_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_QUERY_VALUE;
    tables->action[HTTP_QUERY_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_DECIDE;
    tables->next_state[HTTP_QUERY_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_LINE;
    tables->action[HTTP_QUERY_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_REQUEST_END;
    tables->next_state[HTTP_QUERY_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_LINE_CR;
    tables->action[HTTP_QUERY_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_REQUEST_END;
    tables->next_state[HTTP_QUERY_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_SPACE] = HTTP_VERSION;
    tables->next_state[HTTP_QUERY_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_QUERY_NAME;
    tables->action[HTTP_QUERY_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_RESET;
    tables->next_state[HTTP_QUERY_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_QUERY_SECRET;
    tables->action[HTTP_QUERY_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_BLANK;
    tables->next_state[HTTP_QUERY_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_LINE;
    tables->action[HTTP_QUERY_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_REQUEST_END;
    tables->next_state[HTTP_QUERY_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_LINE_CR;
    tables->action[HTTP_QUERY_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_REQUEST_END;
    tables->next_state[HTTP_QUERY_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_SPACE] = HTTP_VERSION;
    tables->next_state[HTTP_QUERY_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_TAB] = HTTP_QUERY_SECRET;
    tables->action[HTTP_QUERY_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_TAB] = HTTP_BLANK;
    tables->next_state[HTTP_QUERY_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_QUERY_SECRET;
    tables->action[HTTP_QUERY_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_BLANK;
    tables->next_state[HTTP_QUERY_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_QUERY_SECRET;
    tables->action[HTTP_QUERY_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_BLANK;
    tables->next_state[HTTP_QUERY_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_QUERY_NAME;
    tables->action[HTTP_QUERY_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_RESET;
    tables->next_state[HTTP_QUERY_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_QUERY_SECRET;
    tables->action[HTTP_QUERY_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_BLANK;
    tables->next_state[HTTP_VERSION * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_LINE;
    tables->action[HTTP_VERSION * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_REQUEST_END;
    tables->next_state[HTTP_VERSION * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_LINE_CR;
    tables->action[HTTP_VERSION * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_REQUEST_END;
    tables->next_state[HTTP_LINE * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_NAME;
    tables->action[HTTP_LINE * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_DONE;
    tables->next_state[HTTP_LINE * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_DONE;
    tables->next_state[HTTP_LINE * HTTP_SCAN_WIDTH + HTTP_CLASS_SPACE] = HTTP_NAME;
    tables->action[HTTP_LINE * HTTP_SCAN_WIDTH + HTTP_CLASS_SPACE] = HTTP_RESET;
    tables->next_state[HTTP_LINE * HTTP_SCAN_WIDTH + HTTP_CLASS_TAB] = HTTP_NAME;
    tables->action[HTTP_LINE * HTTP_SCAN_WIDTH + HTTP_CLASS_TAB] = HTTP_RESET;
    tables->next_state[HTTP_LINE * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_VALUE;
    tables->action[HTTP_LINE * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_RESET | HTTP_DECIDE;
    tables->next_state[HTTP_LINE * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_NAME;
    tables->action[HTTP_LINE * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_NAME;
    tables->action[HTTP_LINE * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_NAME;
    tables->action[HTTP_LINE * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_NAME;
    tables->action[HTTP_LINE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_LINE;
    tables->next_state[HTTP_LINE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_DONE;
    tables->next_state[HTTP_LINE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_SPACE] = HTTP_NAME;
    tables->action[HTTP_LINE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_SPACE] = HTTP_RESET;
    tables->next_state[HTTP_LINE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_TAB] = HTTP_NAME;
    tables->action[HTTP_LINE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_TAB] = HTTP_RESET;
    tables->next_state[HTTP_LINE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_VALUE;
    tables->action[HTTP_LINE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_RESET | HTTP_DECIDE;
    tables->next_state[HTTP_LINE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_NAME;
    tables->action[HTTP_LINE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_NAME;
    tables->action[HTTP_LINE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_NAME;
    tables->action[HTTP_LINE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_NAME;
    tables->action[HTTP_LINE_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_DONE;
    tables->next_state[HTTP_LINE_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_DONE;
    tables->next_state[HTTP_LINE_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_SPACE] = HTTP_VALUE;
    tables->next_state[HTTP_LINE_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_TAB] = HTTP_VALUE;
    tables->next_state[HTTP_LINE_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_VALUE;
    tables->action[HTTP_LINE_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_RESET | HTTP_DECIDE;
    tables->next_state[HTTP_LINE_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_NAME;
    tables->action[HTTP_LINE_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_NAME;
    tables->action[HTTP_LINE_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_NAME;
    tables->action[HTTP_LINE_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_VALUE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_NAME;
    tables->action[HTTP_LINE_VALUE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_VALUE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_LINE_VALUE;
    tables->next_state[HTTP_LINE_VALUE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_DONE;
    tables->next_state[HTTP_LINE_VALUE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_SPACE] = HTTP_VALUE;
    tables->next_state[HTTP_LINE_VALUE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_TAB] = HTTP_VALUE;
    tables->next_state[HTTP_LINE_VALUE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_VALUE;
    tables->action[HTTP_LINE_VALUE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_RESET | HTTP_DECIDE;
    tables->next_state[HTTP_LINE_VALUE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_NAME;
    tables->action[HTTP_LINE_VALUE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_VALUE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_NAME;
    tables->action[HTTP_LINE_VALUE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_VALUE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_NAME;
    tables->action[HTTP_LINE_VALUE_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_NAME;
    tables->action[HTTP_LINE_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_DONE;
    tables->next_state[HTTP_LINE_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_DONE;
    tables->next_state[HTTP_LINE_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_SPACE] = HTTP_SECRET;
    tables->action[HTTP_LINE_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_SPACE] = HTTP_BLANK;
    tables->next_state[HTTP_LINE_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_TAB] = HTTP_SECRET;
    tables->action[HTTP_LINE_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_TAB] = HTTP_BLANK;
    tables->next_state[HTTP_LINE_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_VALUE;
    tables->action[HTTP_LINE_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_RESET | HTTP_DECIDE;
    tables->next_state[HTTP_LINE_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_NAME;
    tables->action[HTTP_LINE_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_NAME;
    tables->action[HTTP_LINE_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_NAME;
    tables->action[HTTP_LINE_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_SECRET_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_NAME;
    tables->action[HTTP_LINE_SECRET_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_SECRET_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_LINE_SECRET;
    tables->next_state[HTTP_LINE_SECRET_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_DONE;
    tables->next_state[HTTP_LINE_SECRET_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_SPACE] = HTTP_SECRET;
    tables->action[HTTP_LINE_SECRET_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_SPACE] = HTTP_BLANK;
    tables->next_state[HTTP_LINE_SECRET_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_TAB] = HTTP_SECRET;
    tables->action[HTTP_LINE_SECRET_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_TAB] = HTTP_BLANK;
    tables->next_state[HTTP_LINE_SECRET_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_VALUE;
    tables->action[HTTP_LINE_SECRET_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_RESET | HTTP_DECIDE;
    tables->next_state[HTTP_LINE_SECRET_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_NAME;
    tables->action[HTTP_LINE_SECRET_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_SECRET_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_NAME;
    tables->action[HTTP_LINE_SECRET_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_LINE_SECRET_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_NAME;
    tables->action[HTTP_LINE_SECRET_CR * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_RESET | HTTP_FEED;
    tables->next_state[HTTP_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_NAME;
    tables->action[HTTP_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_FEED;
    tables->next_state[HTTP_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_LINE;
    tables->next_state[HTTP_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_LINE_CR;
    tables->next_state[HTTP_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_VALUE;
    tables->action[HTTP_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_DECIDE;
    tables->next_state[HTTP_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_NAME;
    tables->action[HTTP_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_FEED;
    tables->next_state[HTTP_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_NAME;
    tables->action[HTTP_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_FEED;
    tables->next_state[HTTP_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_NAME;
    tables->action[HTTP_NAME * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_FEED;
    tables->next_state[HTTP_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_LINE_VALUE;
    tables->next_state[HTTP_VALUE * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_LINE_VALUE_CR;
    tables->next_state[HTTP_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_SECRET;
    tables->action[HTTP_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_OTHER] = HTTP_BLANK;
    tables->next_state[HTTP_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_LF] = HTTP_LINE_SECRET;
    tables->next_state[HTTP_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_CR] = HTTP_LINE_SECRET_CR;
    tables->next_state[HTTP_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_SPACE] = HTTP_SECRET;
    tables->action[HTTP_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_SPACE] = HTTP_BLANK;
    tables->next_state[HTTP_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_TAB] = HTTP_SECRET;
    tables->action[HTTP_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_TAB] = HTTP_BLANK;
    tables->next_state[HTTP_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_SECRET;
    tables->action[HTTP_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_COLON] = HTTP_BLANK;
    tables->next_state[HTTP_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_SECRET;
    tables->action[HTTP_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_QUESTION] = HTTP_BLANK;
    tables->next_state[HTTP_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_SECRET;
    tables->action[HTTP_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_AMPERSAND] = HTTP_BLANK;
    tables->next_state[HTTP_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_SECRET;
    tables->action[HTTP_SECRET * HTTP_SCAN_WIDTH + HTTP_CLASS_EQUALS] = HTTP_BLANK;
    for (u32 slot = 0; slot < (1 << HTTP_NAME_SLOT_BITS); slot++)
        tables->name_slots[slot] = 0;
    tables->name_slots[0] = 0xff974ce1fd18159eULL; /* authorization */
    tables->name_slots[1] = 0x414580a58be797ccULL; /* x-api-key */
    tables->name_slots[5] = 0x9743b29f3fb37e38ULL; /* set-cookie */
    tables->name_slots[6] = 0x5bae9ac1094f949bULL; /* proxy-authorization */
    tables->name_slots[12] = 0x46726d6ad9e9607fULL; /* cookie */
    tables->name_slots[15] = 0x0cad6715ff7c4cd8ULL; /* x-session-id */
    tables->ready = HTTP_TABLES_READY;
}

/* Blanks the sensitive values of a captured request in place; returns how many bytes go to
 * user space: up to the blank line that ends the headers (the body stays here), or all of
 * them when it is not among the captured bytes; 0 when the payload is not a request. */
static __always_inline u64 http_scan(struct http_capture *cap, u64 length, u8 *flags)
{
    struct http_tables *tables = &cap->tables;
    u64 state = HTTP_METHOD, name_hash = HTTP_NAME_HASH_SEED, name_tail = 0, name_hit = 0, request_end = 0;

    /* Each iteration's exit narrows what the verifier knows of `length` (length <= i); a copy
     * read back from memory after the loop carries none of that, so the code after the loop
     * is verified once, not once per iteration. */
    *(volatile u64 *)&cap->length = length;
    *(volatile u64 *)&cap->end = 0;

    /* One more round than bytes: the blank line may end on the last one. */
#pragma clang loop unroll(disable)
    for (u32 i = 0; i <= HTTP_MAX_BYTES; i++) {
        if (state == HTTP_DONE) {
            /* In memory, like the length: the code after the loop must not see i. */
            *(volatile u64 *)&cap->end = i;
            break;
        }
        if (i >= length)
            break;
        u64 byte = cap->payload[i];
        u32 index = (state & (HTTP_SCAN_STATES - 1)) * HTTP_SCAN_WIDTH +
                    (tables->byte_class[byte] & (HTTP_SCAN_WIDTH - 1));
        u64 next = tables->next_state[index];
        u64 action = tables->action[index];

        u64 reset = HTTP_DOES(action, HTTP_RESET), feed = HTTP_DOES(action, HTTP_FEED);
        u64 decide = HTTP_DOES(action, HTTP_DECIDE), blank = HTTP_DOES(action, HTTP_BLANK);
        name_hash = http_select(reset, HTTP_NAME_HASH_SEED, name_hash);
        name_tail = http_select(reset, 0, name_tail);
        name_hit &= reset ^ 1;

        u64 lowered = tables->normalized[byte];
        name_hash = http_select(feed, (name_hash ^ lowered) * HTTP_NAME_HASH_PRIME, name_hash);
        name_tail = http_select(feed, (name_tail << 8) | lowered, name_tail);
        name_hit |= feed & http_tail_is_sensitive(name_tail);

        /* ':' or '=': the value that follows is blanked (VALUE + 1 is SECRET) when the name is sensitive */
        next += decide & (name_hit | http_hash_is_sensitive(tables, name_hash));

        cap->payload[i] = http_select(blank, HTTP_FILLER, byte);
        request_end = http_select(HTTP_DOES(action, HTTP_REQUEST_END), i, request_end);
        state = next;
    }

    /* A segment that merely starts with a method word (the rest of a header split across
     * segments, say) is no request: its first line must end with " HTTP/1.x". A request line
     * cut by the capture is taken on trust; the agent checks it again. */
    if (request_end) {
        if (request_end < sizeof(u64) + 1 || request_end > HTTP_MAX_BYTES)
            return 0;
        u64 version;
        __builtin_memcpy(&version, cap->payload + request_end - sizeof(u64) - 1, sizeof(u64));
        if (version != HTTP_WORD(' ', 'H', 'T', 'T', 'P', '/', '1', '.'))
            return 0;
    }

    *flags = PAYLOAD_REDACTED;
    u64 end = *(volatile u64 *)&cap->end;
    if (!end) {
        end = *(volatile u64 *)&cap->length;
        *flags |= PAYLOAD_TRUNCATED;
    }
    return end;
}

/* The first bytes of a TCP payload (little endian) start with a request method and a space. */
static __always_inline int http_is_request_start(u64 head)
{
    u64 four = head & HTTP_FIRST_BYTES(4), five = head & HTTP_FIRST_BYTES(5);
    u64 six = head & HTTP_FIRST_BYTES(6), seven = head & HTTP_FIRST_BYTES(7);
    return four == HTTP_WORD('G', 'E', 'T', ' ', 0, 0, 0, 0) ||
           four == HTTP_WORD('P', 'U', 'T', ' ', 0, 0, 0, 0) ||
           five == HTTP_WORD('P', 'O', 'S', 'T', ' ', 0, 0, 0) ||
           five == HTTP_WORD('H', 'E', 'A', 'D', ' ', 0, 0, 0) ||
           six == HTTP_WORD('P', 'A', 'T', 'C', 'H', ' ', 0, 0) ||
           six == HTTP_WORD('T', 'R', 'A', 'C', 'E', ' ', 0, 0) ||
           seven == HTTP_WORD('D', 'E', 'L', 'E', 'T', 'E', ' ', 0) ||
           head == HTTP_WORD('O', 'P', 'T', 'I', 'O', 'N', 'S', ' ') ||
           head == HTTP_WORD('C', 'O', 'N', 'N', 'E', 'C', 'T', ' ');
}

/* A TCP segment to an HTTP port: worth looking at its payload. */
static __always_inline int http_candidate(struct packet_info *pkt)
{
    return pkt->proto == IPPROTO_TCP && pkt->l4_offset && http_port(pkt->dst_port);
}

/* Emits the record of an HTTP request segment with its redacted headers. Returns 0, and
 * emits nothing, when the payload does not start a request: the caller then writes the
 * plain record. */
static __always_inline int emit_http_record(struct __sk_buff *skb, struct packet_info *pkt, u8 dir,
                                            struct verdict *v)
{
    u8 data_offset;
    if (bpf_skb_load_bytes(skb, pkt->l4_offset + 12, &data_offset, 1) < 0)
        return 0;
    u32 payload_offset = pkt->l4_offset + (data_offset >> 4) * 4;
    u32 payload_end = skb->len;
    /* The IP length leaves out the padding of short frames. */
    if (pkt->l3_end && pkt->l3_end < payload_end)
        payload_end = pkt->l3_end;
    if ((data_offset >> 4) < 5 || payload_end < payload_offset + HTTP_REQUEST_MIN_BYTES)
        return 0;
    u64 head;
    if (bpf_skb_load_bytes(skb, payload_offset, &head, sizeof(head)) < 0 || !http_is_request_start(head))
        return 0;

    u32 zero = 0;
    struct http_capture *cap = http_scratch.lookup(&zero);
    if (!cap)
        return 0;
    if (cap->tables.ready != HTTP_TABLES_READY)
        http_tables_fill(&cap->tables);
    u64 available = payload_end - payload_offset;
    /* min(available, HTTP_MAX_BYTES) without a branch: with one, the verifier would walk the
     * scan twice, for a length of exactly HTTP_MAX_BYTES and for a shorter one. */
    u64 shorter = (available - HTTP_MAX_BYTES) >> 63;
    u64 length = http_select(shorter, available, HTTP_MAX_BYTES);
    if (length > HTTP_MAX_BYTES)
        return 0;
    length = http_opaque(length);
    if (length < HTTP_REQUEST_MIN_BYTES)
        return 0;
    if (bpf_skb_load_bytes(skb, payload_offset, cap->payload, length) < 0)
        return 0;

    u8 flags;
    u64 size = http_opaque(http_scan(cap, length, &flags));
    if (size == 0 || size > HTTP_MAX_BYTES)
        return 0;
    if (available > HTTP_MAX_BYTES)
        flags |= PAYLOAD_CUT;
    fill_record(&cap->rec, pkt, skb->ifindex, skb->len, dir, v);
    cap->rec.payload_len = size;
    cap->rec.flags = flags;
    if (events.ringbuf_output(cap, sizeof(struct bpfleet_record) + size, wakeup_for_next_record()) < 0)
        count(STAT_RECORDS_LOST, 0);
    else
        count(STAT_RECORDS_EMITTED, 0);
    return 1;
}

#endif

#if REWRITE_INGRESS_RULES || REWRITE_EGRESS_RULES
/* Sets the DSCP and keeps the ECN bits. IPv4: the TOS byte, with the header checksum updated
 * incrementally over the 16-bit word that holds it. IPv6: the traffic class, split across the
 * first two bytes; IPv6 has no header checksum and the transport checksums do not cover it. */
static __always_inline void set_dscp(struct __sk_buff *skb, struct packet_info *pkt, u8 dscp)
{
    u32 off = pkt->l3_offset;
    u8 head[2];
    if (!off || bpf_skb_load_bytes(skb, off, head, 2) < 0)
        return;
    u8 old[2] = {head[0], head[1]};
    if (pkt->ip_ver == 4) {
        head[1] = (u8)((dscp << 2) | (head[1] & 0x03));
        if (head[1] == old[1])
            return;
        u16 from, to;
        __builtin_memcpy(&from, old, 2);
        __builtin_memcpy(&to, head, 2);
        if (bpf_l3_csum_replace(skb, off + 10, from, to, 2) < 0)
            return;
    } else if (pkt->ip_ver == 6) {
        u8 tclass = (u8)(((head[0] & 0x0f) << 4) | (head[1] >> 4));
        tclass = (u8)((dscp << 2) | (tclass & 0x03));
        head[0] = (u8)((head[0] & 0xf0) | (tclass >> 4));
        head[1] = (u8)(((tclass & 0x0f) << 4) | (head[1] & 0x0f));
        if (head[0] == old[0] && head[1] == old[1])
            return;
    } else {
        return;
    }
    bpf_skb_store_bytes(skb, off, head, 2, 0);
}
#endif

/* The ingress rewrite rules, compiled in like the port rules: changes the packet and
 * returns the first rule that matched. DSCP first, then the VLAN tag, because
 * popping an in-frame tag moves the IP header the DSCP offset points at. Every matching rule
 * applies (the validator refuses two overlapping rules that set the same thing). */
static __always_inline u16 rewrite_ingress(struct __sk_buff *skb, struct packet_info *pkt)
{
    u16 first = RULE_NONE;
    u32 len_before = skb->len;
    /* untag-uplink */
    if (pkt->ip_ver != 0) {
        if (first == RULE_NONE)
            first = 192;
        bpf_skb_vlan_pop(skb);
        count_rule(skb->ifindex, 192, skb->len);
    }
    /* A tag moved between the skb's metadata and the frame (an in-frame tag popped, or an
     * offloaded one pushed into the frame by a second push) shifts the IP header: keep the
     * parsed offsets right for the HTTP capture that may follow. */
    if (first != RULE_NONE && skb->len != len_before) {
        s32 delta = (s32)skb->len - (s32)len_before;
        if (pkt->l3_offset)
            pkt->l3_offset += delta;
        if (pkt->l4_offset)
            pkt->l4_offset += delta;
        if (pkt->l3_end)
            pkt->l3_end += delta;
    }
    return first;
}

/* The egress rewrite rules, compiled in like the port rules: changes the packet and
 * returns the first rule that matched. DSCP first, then the VLAN tag, because
 * popping an in-frame tag moves the IP header the DSCP offset points at. Every matching rule
 * applies (the validator refuses two overlapping rules that set the same thing). */
static __always_inline u16 rewrite_egress(struct __sk_buff *skb, struct packet_info *pkt)
{
    u16 first = RULE_NONE;
    u32 len_before = skb->len;
    /* tag-tenant */
    if (pkt->ip_ver == 4 && pkt->dst_ip[0] == 0x0a && pkt->dst_ip[1] == 0x14) {
        if (first == RULE_NONE)
            first = 193;
        bpf_skb_vlan_push(skb, ETH_P_8021Q_BE, 24696); /* id 120, pcp 3 */
        count_rule(skb->ifindex, 193, skb->len);
    }
    /* voice */
    if (pkt->proto == IPPROTO_UDP && pkt->has_ports && pkt->dst_port >= 5060 && pkt->dst_port <= 5080) {
        if (first == RULE_NONE)
            first = 194;
        set_dscp(skb, pkt, 46);
        count_rule(skb->ifindex, 194, skb->len);
    }
    /* bulk-v6 */
    if (pkt->proto == IPPROTO_TCP && pkt->ip_ver == 6 && pkt->dst_ip[0] == 0x20 && pkt->dst_ip[1] == 0x01 && pkt->dst_ip[2] == 0x0d && pkt->dst_ip[3] == 0xb8 && pkt->dst_ip[4] == 0x02) {
        if (first == RULE_NONE)
            first = 195;
        set_dscp(skb, pkt, 10);
        count_rule(skb->ifindex, 195, skb->len);
    }
    /* A tag moved between the skb's metadata and the frame (an in-frame tag popped, or an
     * offloaded one pushed into the frame by a second push) shifts the IP header: keep the
     * parsed offsets right for the HTTP capture that may follow. */
    if (first != RULE_NONE && skb->len != len_before) {
        s32 delta = (s32)skb->len - (s32)len_before;
        if (pkt->l3_offset)
            pkt->l3_offset += delta;
        if (pkt->l4_offset)
            pkt->l4_offset += delta;
        if (pkt->l3_end)
            pkt->l3_end += delta;
    }
    return first;
}


int bpfleet_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    u32 len = data_end - data;
    u32 ifindex = ctx->ingress_ifindex;
    struct packet_info pkt = {};

    count(STAT_XDP_SEEN, len);
    /* Non-IP frames (ARP) and truncated ones go to the stack, which owns their handling;
     * the policy speaks about IP packets. */
    if (parse_packet(data, data_end, &pkt) != 0) {
        count(STAT_XDP_PASSED, len);
        return XDP_PASS;
    }

    struct verdict v;
    classify(&pkt, &v);
#if RATE_LIMITS
    /* Allow-listed sources are exempt; a dropped packet needs no token. */
    if (v.action == ACTION_PASS && v.rule != RULE_ALLOW)
        check_rate_limits(&pkt, &v);
#endif
    count_rule(ifindex, v.rule, len);
#if LOG_RULES
    if (v.log_rule != RULE_NONE) {
        count_rule(ifindex, v.log_rule, len);
        emit_record(&pkt, ifindex, len, DIR_INGRESS, &v, 1);
    }
#endif
    if (v.action == ACTION_PASS) {
        count(STAT_XDP_PASSED, len);
#if LOG_INGRESS
        hand_over_verdict(ctx, &v);
#endif
        return XDP_PASS;
    }
    count(v.action == ACTION_RATE_LIMITED ? STAT_XDP_RATE_LIMITED : STAT_XDP_DROPPED, len);
#if LOG_INGRESS
    if (v.log_rule == RULE_NONE)
        emit_record(&pkt, ifindex, len, DIR_INGRESS, &v, 0);
#endif
    return XDP_DROP;
}

#if LOG_INGRESS || LOG_EGRESS || FILTER_EGRESS || REWRITE_INGRESS_RULES || REWRITE_EGRESS_RULES
/* A NIC (or a veth behind a bridge) with VLAN offload strips the 802.1Q tag from the frame
 * into the skb's metadata: XDP then sees an untagged frame, tc can still read the tag. */
static __always_inline void vlan_from_skb(struct __sk_buff *skb, struct packet_info *pkt)
{
    if (!pkt->vlan && skb->vlan_present)
        pkt->vlan = skb->vlan_tci & 0x0fff;
}
#endif

#if LOG_INGRESS || LOG_EGRESS
/* The record of a packet the tc loggers see pass, with the request headers of an HTTP
 * request segment when log.http asks for them. */
static __always_inline void emit_skb_record(struct __sk_buff *skb, struct packet_info *pkt, u8 dir, struct verdict *v)
{
    if (!should_log(pkt))
        return;
#if HTTP_CAPTURE
    if (http_candidate(pkt) && emit_http_record(skb, pkt, dir, v))
        return;
#endif
#if HTTP_REQUESTS_ONLY
    /* log.http.requests_only: a request log, not a packet log. */
    return;
#endif
    write_record(pkt, skb->ifindex, skb->len, dir, v);
}
#endif

#if LOG_INGRESS || REWRITE_INGRESS_RULES
/* Runs at tc ingress, after XDP: what it sees has passed the filter. The rule that let the
 * packet through comes from XDP's metadata, or, where the driver keeps none, from the
 * classification repeated (lookups only, no tokens taken). Rewrites come first; the record
 * keeps the header fields as parsed before them and names the rewrite. They run before the
 * HTTP capture, not after it: placed after, the verifier walked them once for every state
 * the scanner leaves and refused such programs as too complex (E2BIG). Rewrites are here
 * and not in XDP because a NIC or veth with VLAN offload has already moved the tag out of the
 * frame before XDP runs; tc sees it either way. */
int bpfleet_ingress(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct packet_info pkt = {};

    count(STAT_TC_INGRESS_SEEN, skb->len);
    if (parse_packet(data, data_end, &pkt) != 0)
        return TC_ACT_OK;
    vlan_from_skb(skb, &pkt);
#if REWRITE_INGRESS_RULES
    u16 rewrite = rewrite_ingress(skb, &pkt);
    if (rewrite != RULE_NONE)
        pkt.rewrite = rewrite;
#endif
#if LOG_INGRESS
    struct verdict v;
    if (!verdict_from_xdp(skb, &v))
        classify(&pkt, &v);
    if (v.log_rule == RULE_NONE) { /* else XDP already wrote its record */
        v.action = ACTION_PASS;
        emit_skb_record(skb, &pkt, DIR_INGRESS, &v);
    }
#endif
    return TC_ACT_OK;
}
#endif

#if LOG_EGRESS || FILTER_EGRESS || REWRITE_EGRESS_RULES
/* Runs at tc egress: egress port rules, the rewrites of what passes, then the record of what
 * leaves (header fields as parsed before the rewrite, and the rewrite's name). */
int bpfleet_egress(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct packet_info pkt = {};

    count(STAT_TC_EGRESS_SEEN, skb->len);
    if (parse_packet(data, data_end, &pkt) != 0)
        return TC_ACT_OK;
    vlan_from_skb(skb, &pkt);
    struct verdict v = {.action = ACTION_PASS, .rule = RULE_NONE, .log_rule = RULE_NONE};
#if FILTER_EGRESS
    if (check_egress_ports(&pkt, &v))
        count_rule(skb->ifindex, v.rule, skb->len);
    if (v.log_rule != RULE_NONE) {
        count_rule(skb->ifindex, v.log_rule, skb->len);
        emit_record(&pkt, skb->ifindex, skb->len, DIR_EGRESS, &v, 1);
    }
    if (v.action == ACTION_DROP) {
        count(STAT_TC_EGRESS_DROPPED, skb->len);
#if LOG_EGRESS
        if (v.log_rule == RULE_NONE)
            emit_record(&pkt, skb->ifindex, skb->len, DIR_EGRESS, &v, 0);
#endif
        return TC_ACT_SHOT;
    }
#endif
#if REWRITE_EGRESS_RULES
    /* Only what passes is rewritten (a `log` port rule's record above shows it unchanged). */
    u16 rewrite = rewrite_egress(skb, &pkt);
    if (rewrite != RULE_NONE)
        pkt.rewrite = rewrite;
#endif
#if LOG_EGRESS
    if (v.log_rule == RULE_NONE)
        emit_skb_record(skb, &pkt, DIR_EGRESS, &v);
#endif
    return TC_ACT_OK;
}
#endif
