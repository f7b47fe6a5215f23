/* bpfleet policy "edge-web", rendered by bpfleet.core 0.1.0.
 * Generated: edit the policy, not this file. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#define PIN_DIR "/sys/fs/bpf/bpfleet/edge-web/maps/"

/* Filter: the action for an IP packet that no list matches. */
#define DEFAULT_XDP_VERDICT XDP_PASS
#define DEFAULT_ACTION ACTION_PASS

/* Logging. */
#define LOG_INGRESS 1
#define LOG_EGRESS 1
#define LOG_SAMPLE_EVERY 100
#define RINGBUF_BYTES (4194304)
/* Records are submitted without a wakeup and the agent polls on a short timer: a wakeup per
 * record costs about 5.7 us (LAB-NOTES). A burst still wakes the agent every WAKEUP_EVERY. */
#define WAKEUP_EVERY 64

/* Map capacities: fixed, so the pinned maps keep their shape across policy edits. */
#define DENY_V4_MAX 1048576
#define DENY_V6_MAX 131072
#define ALLOW_V4_MAX 65536
#define ALLOW_V6_MAX 65536
#define STATS_MAX 8
#define RULE_STATS_MAX 64
#define EVENTS_MAX 4194304

/* Header record shared by the kernel programs and bpfleet-agent.
 * The layout is a contract (docs/architecture.md): change BPFLEET_RECORD_VERSION with it. */
#define BPFLEET_RECORD_VERSION 1

#define DIR_INGRESS 0
#define DIR_EGRESS 1

#define ACTION_PASS 0
#define ACTION_DROP 1
#define ACTION_RATE_LIMITED 2

/* Rule ids; names travel to user space in state.json. */
#define RULE_DEFAULT 0
#define RULE_DENY 1
#define RULE_ALLOW 2
#define RULE_NONE 0xffff /* egress: no filter rule applies */

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
    u8 _pad[8];
};

_Static_assert(sizeof(struct bpfleet_record) == 88, "record layout is a user-space contract");

/* Slots of the `stats` per-CPU array. */
#define STAT_XDP_SEEN 0
#define STAT_XDP_PASSED 1
#define STAT_XDP_DROPPED 2
#define STAT_RECORDS_EMITTED 3
#define STAT_RECORDS_LOST 4
#define STAT_TC_INGRESS_SEEN 5
#define STAT_TC_EGRESS_SEEN 6
#define STAT_SLOTS 8

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

struct vlan_hdr_t {
    __be16 tci;
    __be16 encapsulated_proto;
};

struct packet_info {
    u16 vlan;
    u16 eth_proto;  /* network order */
    u8 ip_ver;
    u8 proto;
    u8 ttl;
    u8 tcp_flags;
    u16 src_port;   /* host order */
    u16 dst_port;
    u8 src_ip[16];
    u8 dst_ip[16];
    u8 src_mac[6];
    u8 dst_mac[6];
};

/* Ports of a later IPv4 fragment are not in the packet: report them as 0 rather than
 * reading payload bytes as a port. IPv6 extension headers are not walked; `proto` is then
 * the first next-header value (documented in docs/policy.md). */
static __always_inline int parse_l4(void *l4, void *data_end, u8 proto, struct packet_info *pkt)
{
    if (proto == IPPROTO_TCP) {
        struct tcphdr *tcp = l4;
        if ((void *)(tcp + 1) > data_end)
            return 0;
        pkt->src_port = bpf_ntohs(tcp->source);
        pkt->dst_port = bpf_ntohs(tcp->dest);
        pkt->tcp_flags = ((u8 *)tcp)[13];
    } else if (proto == IPPROTO_UDP) {
        struct udphdr *udp = l4;
        if ((void *)(udp + 1) > data_end)
            return 0;
        pkt->src_port = bpf_ntohs(udp->source);
        pkt->dst_port = bpf_ntohs(udp->dest);
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
        return parse_l4((u8 *)ip + ip->ihl * 4, data_end, ip->protocol, pkt);
    }
    if (proto == ETH_P_IPV6_BE) {
        struct ipv6hdr *ip6 = cursor;
        if ((void *)(ip6 + 1) > data_end)
            return -1;
        pkt->ip_ver = 6;
        pkt->proto = ip6->nexthdr;
        pkt->ttl = ip6->hop_limit;
        __builtin_memcpy(pkt->src_ip, &ip6->saddr, 16);
        __builtin_memcpy(pkt->dst_ip, &ip6->daddr, 16);
        return parse_l4(ip6 + 1, data_end, ip6->nexthdr, pkt);
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
BPF_TABLE_PINNED("percpu_array", u32, struct counter, rule_stats, RULE_STATS_MAX, PIN_DIR "rule_stats");
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

static __always_inline void count_rule(u32 rule, u32 bytes)
{
    struct counter *c = rule_stats.lookup(&rule);
    if (c) {
        c->packets++;
        c->bytes += bytes;
    }
}

/* The filter decision: an allow entry is an exception to the deny list; a packet that no
 * list matches gets the policy's default. The value stored with a prefix is its rule id. */
static __always_inline u16 decide(struct packet_info *pkt, u8 *action)
{
    u32 *rule;
    if (pkt->ip_ver == 4) {
        struct lpm_v4_key key = {.prefixlen = 32};
        __builtin_memcpy(key.addr, pkt->src_ip, 4);
        rule = allow_v4.lookup(&key);
        if (rule) {
            *action = ACTION_PASS;
            return *rule;
        }
        rule = deny_v4.lookup(&key);
        if (rule) {
            *action = ACTION_DROP;
            return *rule;
        }
    } else {
        struct lpm_v6_key key = {.prefixlen = 128};
        __builtin_memcpy(key.addr, pkt->src_ip, 16);
        rule = allow_v6.lookup(&key);
        if (rule) {
            *action = ACTION_PASS;
            return *rule;
        }
        rule = deny_v6.lookup(&key);
        if (rule) {
            *action = ACTION_DROP;
            return *rule;
        }
    }
    *action = DEFAULT_ACTION;
    return RULE_DEFAULT;
}

#if LOG_INGRESS || LOG_EGRESS
static __always_inline void emit_record(struct packet_info *pkt, u32 ifindex, u32 len, u8 dir, u8 action, u16 rule)
{
#if LOG_SAMPLE_EVERY > 1
    if (bpf_get_prandom_u32() % LOG_SAMPLE_EVERY)
        return;
#endif
    struct bpfleet_record *rec = events.ringbuf_reserve(sizeof(struct bpfleet_record));
    if (!rec) {
        count(STAT_RECORDS_LOST, 0);
        return;
    }
    __builtin_memset(rec, 0, sizeof(*rec));
    rec->ts_boot_ns = bpf_ktime_get_boot_ns();
    rec->ifindex = ifindex;
    rec->pkt_len = len;
    rec->dir = dir;
    rec->action = action;
    rec->rule = rule;
    rec->vlan = pkt->vlan;
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

    struct counter *emitted = count(STAT_RECORDS_EMITTED, 0);
    u64 wakeup = BPF_RB_NO_WAKEUP;
    if (emitted && (emitted->packets % WAKEUP_EVERY) == 0)
        wakeup = BPF_RB_FORCE_WAKEUP;
    events.ringbuf_submit(rec, wakeup);
}
#endif

int bpfleet_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    u32 len = data_end - data;
    struct packet_info pkt = {};

    count(STAT_XDP_SEEN, len);
    /* Non-IP frames (ARP) and truncated ones go to the stack, which owns their handling;
     * the policy speaks about IP sources. */
    if (parse_packet(data, data_end, &pkt) != 0) {
        count(STAT_XDP_PASSED, len);
        return XDP_PASS;
    }

    u8 action;
    u16 rule = decide(&pkt, &action);
    count_rule(rule, len);
    if (action == ACTION_DROP) {
        count(STAT_XDP_DROPPED, len);
#if LOG_INGRESS
        emit_record(&pkt, ctx->ingress_ifindex, len, DIR_INGRESS, ACTION_DROP, rule);
#endif
        return XDP_DROP;
    }
    count(STAT_XDP_PASSED, len);
    return XDP_PASS;
}

#if LOG_INGRESS || LOG_EGRESS
/* Loggers run at tc clsact, after XDP on ingress: what they see has passed the filter. */
static __always_inline int log_skb(struct __sk_buff *skb, u8 dir)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct packet_info pkt = {};

    count(dir == DIR_INGRESS ? STAT_TC_INGRESS_SEEN : STAT_TC_EGRESS_SEEN, skb->len);
    if (parse_packet(data, data_end, &pkt) != 0)
        return TC_ACT_OK;

    u8 action = ACTION_PASS;
    u16 rule = RULE_NONE;
    if (dir == DIR_INGRESS)
        rule = decide(&pkt, &action); /* which rule let it through */
    emit_record(&pkt, skb->ifindex, skb->len, dir, ACTION_PASS, rule);
    return TC_ACT_OK;
}
#endif

#if LOG_INGRESS
int bpfleet_ingress(struct __sk_buff *skb)
{
    return log_skb(skb, DIR_INGRESS);
}
#endif

#if LOG_EGRESS
int bpfleet_egress(struct __sk_buff *skb)
{
    return log_skb(skb, DIR_EGRESS);
}
#endif
