/* Header record shared by the kernel programs and bpfleet-agent.
 * The layout is a contract (docs/architecture.md): change BPFLEET_RECORD_VERSION with it. */
#define BPFLEET_RECORD_VERSION 1

#define DIR_INGRESS 0
#define DIR_EGRESS 1

#define ACTION_PASS 0
#define ACTION_DROP 1
#define ACTION_RATE_LIMITED 2

/* Rule ids; names travel to user space in state.json. Port rules are 16 + their index in
 * filter.ports, rate limits 128 + their index in filter.rate_limit. */
#define RULE_DEFAULT 0
#define RULE_DENY 1
#define RULE_ALLOW 2
#define RULE_NONE 0xffff /* egress: no filter rule applies */

/* Record flags: what the payload after the record is (docs/logging-http.md). */
#define PAYLOAD_TRUNCATED 0x01 /* the end of the request headers is not in the payload */
#define PAYLOAD_REDACTED 0x02  /* the kernel scanned the payload and blanked sensitive values */
#define PAYLOAD_CUT 0x04       /* the segment had more bytes than HTTP_MAX_BYTES */

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

/* Slots of the `stats` per-CPU array. */
#define STAT_XDP_SEEN 0
#define STAT_XDP_PASSED 1
#define STAT_XDP_DROPPED 2
#define STAT_RECORDS_EMITTED 3
#define STAT_RECORDS_LOST 4
#define STAT_TC_INGRESS_SEEN 5
#define STAT_TC_EGRESS_SEEN 6
#define STAT_XDP_RATE_LIMITED 7
#define STAT_TC_EGRESS_DROPPED 8
#define STAT_SLOTS 16

struct counter {
    u64 packets;
    u64 bytes;
};
