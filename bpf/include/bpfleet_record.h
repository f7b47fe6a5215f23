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
