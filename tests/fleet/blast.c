// SPDX-License-Identifier: GPL-3.0-or-later
/*
 * bpfleet-blast: a fast UDP flood sender for the lab fleet (benchmarks and flood tests).
 *
 *   bpfleet-blast --iface eth0 --src 198.51.100.11 --dst 203.0.113.12 \
 *                 --dst-mac 02:62:66:6c:00:02 [--src-mac MAC] [--dport 9] \
 *                 [--sport 40000] [--sports 1] [--size 64] [--seq-start 0] \
 *                 [--count N] [--duration S] [--rate PPS] [--batch 64] \
 *                 [--mode packet|xdp]
 *
 * Builds one Ethernet/IPv4-or-IPv6/UDP frame and sends it over and over, straight to the
 * driver of IFACE:
 *   packet  AF_PACKET socket with PACKET_QDISC_BYPASS, frames handed over in batches with
 *           sendmmsg(). Paced when --rate is given.
 *   xdp     BPF_PROG_TEST_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES): the kernel
 *           runs a tiny XDP program (assembled below, no compiler needed) on a page pool of
 *           copies of the frame; it stamps the sequence number and source port, fixes the UDP
 *           checksum and returns XDP_TX, which test_run turns into a redirect out of IFACE.
 *           While it runs, the same program is attached to IFACE through a BPF link (see
 *           warm_dispatcher; --cold leaves IFACE alone, at a fraction of the rate). Not
 *           paced: --rate is refused in this mode.
 *
 * Every frame carries, at the start of the UDP payload, a 32-bit sequence number (network
 * byte order, from --seq-start, +1 per frame) followed by the magic "BPFB", so a receiver can
 * count exactly which frames arrived. The source port is sport + (seq mod sports). UDP
 * checksums are valid (IPv6 requires them).
 *
 * Stops after --count frames or --duration seconds (whichever comes first; at least one is
 * required, at most one hour), or on SIGINT/SIGTERM, then prints one JSON line:
 *   {"sent": N, "seconds": S, "pps": X, "mode": "packet", "first_seq": A, "last_seq": B,
 *    "retries": R, "warm": W}
 * "sent" counts frames the kernel accepted for transmission; a frame the interface refused
 * (ENOBUFS: the veth peer's queue was full) is retried and counted in "retries", so sequence
 * numbers stay contiguous. What the receiver got is for the receiver to count.
 *
 * Destinations are limited to the documentation ranges the lab uses (192.0.2.0/24,
 * 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32). Needs CAP_NET_RAW (packet) or
 * CAP_BPF+CAP_NET_ADMIN (xdp). Built by tests/fleet/blast.py.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <linux/bpf.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <netinet/udp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_FRAME 1514
#define MAX_BATCH 1024
#define MAX_DURATION 3600.0
#define PAYLOAD_MAGIC "BPFB"
#define PAYLOAD_MAGIC_LE 0x42465042	/* "BPFB" loaded as a little-endian u32 */
#define SEQ_BYTES 4
#define MIN_PAYLOAD (SEQ_BYTES + 4)
/* Frames per BPF_PROG_TEST_RUN call: the first call, then sized so a call lasts about
 * XDP_CALL_SECONDS (each call sets up a page pool; short calls would waste time on that). */
#define XDP_FIRST_CHUNK 65536
#define XDP_MAX_CHUNK (1u << 24)
#define XDP_CALL_SECONDS 0.1

struct options {
	const char *iface;
	const char *mode;
	int family;
	struct in_addr src4, dst4;
	struct in6_addr src6, dst6;
	bool have_src, have_dst, have_src_mac, have_dst_mac, cold;
	uint8_t src_mac[ETH_ALEN], dst_mac[ETH_ALEN];
	uint16_t dport, sport, sports;
	unsigned int size, batch;
	uint32_t seq_start;
	uint64_t count;
	double duration, rate;
};

struct frame_layout {
	unsigned int length;
	unsigned int sport_offset;
	unsigned int checksum_offset;
	unsigned int seq_offset;
	/* One's-complement sum (not folded) of the UDP pseudo-header, header and payload with
	 * the source port, checksum and sequence number all zero. */
	uint32_t base_sum;
};

static volatile sig_atomic_t stop_requested;

static void on_signal(int signum)
{
	(void)signum;
	stop_requested = 1;
}

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	fputs("bpfleet-blast: error: ", stderr);
	vfprintf(stderr, fmt, args);
	fputc('\n', stderr);
	va_end(args);
	exit(2);
}

static double now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------ argument checks */

static bool parse_mac(const char *text, uint8_t mac[ETH_ALEN])
{
	unsigned int b[ETH_ALEN];
	char tail;

	if (sscanf(text, "%x:%x:%x:%x:%x:%x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6)
		return false;
	for (int i = 0; i < ETH_ALEN; i++) {
		if (b[i] > 0xff)
			return false;
		mac[i] = (uint8_t)b[i];
	}
	return true;
}

static double parse_number(const char *name, const char *text, double min, double max)
{
	char *end;
	double value;

	errno = 0;
	value = strtod(text, &end);
	if (errno || end == text || *end || value < min || value > max)
		fail("--%s: expected a number between %g and %g, got '%s'", name, min, max, text);
	return value;
}

/* The lab's networks only: a flood must never leave the documentation ranges. */
static bool is_lab_destination(const struct options *opt)
{
	if (opt->family == AF_INET) {
		uint32_t dst = ntohl(opt->dst4.s_addr);

		return (dst >> 8) == 0xc00002 ||	/* 192.0.2.0/24 */
		       (dst >> 8) == 0xc63364 ||	/* 198.51.100.0/24 */
		       (dst >> 8) == 0xcb0071;		/* 203.0.113.0/24 */
	}
	return opt->dst6.s6_addr[0] == 0x20 && opt->dst6.s6_addr[1] == 0x01 &&
	       opt->dst6.s6_addr[2] == 0x0d && opt->dst6.s6_addr[3] == 0xb8;
}

static void parse_address(const char *name, const char *text, struct options *opt, bool is_src)
{
	int family = strchr(text, ':') ? AF_INET6 : AF_INET;
	void *target;

	if (opt->family && opt->family != family)
		fail("--src and --dst must be the same address family");
	opt->family = family;
	if (family == AF_INET)
		target = is_src ? (void *)&opt->src4 : (void *)&opt->dst4;
	else
		target = is_src ? (void *)&opt->src6 : (void *)&opt->dst6;
	if (inet_pton(family, text, target) != 1)
		fail("--%s: not an IP address: '%s'", name, text);
}

static void usage(void)
{
	fputs("usage: bpfleet-blast --iface IFACE --src IP --dst IP --dst-mac MAC [--src-mac MAC]\n"
	      "         [--dport 9] [--sport 40000] [--sports 1] [--size 64] [--seq-start 0]\n"
	      "         [--count N] [--duration S] [--rate PPS] [--batch 64] [--mode packet|xdp] [--cold]\n"
	      "At least one of --count and --duration. --rate 0 (default) = as fast as possible.\n",
	      stderr);
}

static void parse_options(int argc, char **argv, struct options *opt)
{
	static const struct option longopts[] = {
		{"iface", required_argument, NULL, 'i'},   {"src", required_argument, NULL, 's'},
		{"dst", required_argument, NULL, 'd'},     {"src-mac", required_argument, NULL, 'S'},
		{"dst-mac", required_argument, NULL, 'D'}, {"dport", required_argument, NULL, 'p'},
		{"sport", required_argument, NULL, 'P'},   {"sports", required_argument, NULL, 'n'},
		{"size", required_argument, NULL, 'z'},    {"seq-start", required_argument, NULL, 'q'},
		{"count", required_argument, NULL, 'c'},   {"duration", required_argument, NULL, 't'},
		{"rate", required_argument, NULL, 'r'},    {"batch", required_argument, NULL, 'b'},
		{"mode", required_argument, NULL, 'm'},    {"cold", no_argument, NULL, 'C'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int c;

	*opt = (struct options){.mode = "packet", .dport = 9, .sport = 40000, .sports = 1, .batch = 64};
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'i': opt->iface = optarg; break;
		case 's': parse_address("src", optarg, opt, true); opt->have_src = true; break;
		case 'd': parse_address("dst", optarg, opt, false); opt->have_dst = true; break;
		case 'S':
			if (!parse_mac(optarg, opt->src_mac))
				fail("--src-mac: not a MAC address: '%s'", optarg);
			opt->have_src_mac = true;
			break;
		case 'D':
			if (!parse_mac(optarg, opt->dst_mac))
				fail("--dst-mac: not a MAC address: '%s'", optarg);
			opt->have_dst_mac = true;
			break;
		case 'p': opt->dport = (uint16_t)parse_number("dport", optarg, 1, 65535); break;
		case 'P': opt->sport = (uint16_t)parse_number("sport", optarg, 1, 65535); break;
		case 'n': opt->sports = (uint16_t)parse_number("sports", optarg, 1, 65535); break;
		case 'z': opt->size = (unsigned int)parse_number("size", optarg, 1, MAX_FRAME); break;
		case 'q': opt->seq_start = (uint32_t)parse_number("seq-start", optarg, 0, UINT32_MAX); break;
		case 'c': opt->count = (uint64_t)parse_number("count", optarg, 0, 1e12); break;
		case 't': opt->duration = parse_number("duration", optarg, 0, MAX_DURATION); break;
		case 'r': opt->rate = parse_number("rate", optarg, 0, 1e9); break;
		case 'b': opt->batch = (unsigned int)parse_number("batch", optarg, 1, MAX_BATCH); break;
		case 'm': opt->mode = optarg; break;
		case 'C': opt->cold = true; break;
		case 'h': usage(); exit(0);
		default: usage(); exit(2);
		}
	}
	if (optind != argc)
		fail("unexpected argument '%s'", argv[optind]);
	if (!opt->iface || !opt->have_src || !opt->have_dst || !opt->have_dst_mac) {
		usage();
		fail("--iface, --src, --dst and --dst-mac are required");
	}
	if (strcmp(opt->mode, "packet") && strcmp(opt->mode, "xdp"))
		fail("--mode: packet or xdp, got '%s'", opt->mode);
	if (!opt->count && opt->duration <= 0)
		fail("give --count or --duration (a flood must end by itself)");
	if (opt->duration <= 0 || opt->duration > MAX_DURATION)
		opt->duration = MAX_DURATION;
	if (!strcmp(opt->mode, "xdp") && opt->rate > 0)
		fail("--rate needs --mode packet (xdp mode sends as fast as it can)");
	if (!is_lab_destination(opt))
		fail("--dst is outside the lab networks (192.0.2.0/24, 198.51.100.0/24, "
		     "203.0.113.0/24, 2001:db8::/32)");
	if (opt->sport + opt->sports - 1 > 65535)
		fail("--sport + --sports - 1 must be at most 65535");
}

/* ------------------------------------------------------------------ the frame */

static uint32_t sum_words(const void *data, size_t length, uint32_t sum)
{
	const uint8_t *bytes = data;

	/* Big-endian words: the sum is then the checksum's value in host order. */
	for (size_t i = 0; i + 1 < length; i += 2)
		sum += (uint32_t)bytes[i] << 8 | bytes[i + 1];
	if (length & 1)
		sum += (uint32_t)bytes[length - 1] << 8;
	return sum;
}

static uint16_t fold_checksum(uint32_t sum)
{
	uint16_t checksum;

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	checksum = (uint16_t)~sum;
	/* 0 means "no checksum" for UDP over IPv4 and is invalid over IPv6. */
	return checksum ? checksum : 0xffff;
}

static unsigned int build_frame(const struct options *opt, uint8_t *frame, struct frame_layout *layout)
{
	unsigned int l3_offset = sizeof(struct ether_header);
	unsigned int ip_length = opt->family == AF_INET ? sizeof(struct iphdr) : sizeof(struct ip6_hdr);
	unsigned int headers = l3_offset + ip_length + sizeof(struct udphdr);
	unsigned int length = opt->size ? opt->size : 64;
	struct ether_header *eth = (struct ether_header *)frame;
	struct udphdr *udp = (struct udphdr *)(frame + l3_offset + ip_length);
	uint8_t *payload = frame + headers;
	uint16_t udp_length;
	uint32_t sum = 0;

	if (length < headers + MIN_PAYLOAD) {
		if (opt->size)
			fail("--size %u is too small: at least %u bytes for this address family",
			     opt->size, headers + MIN_PAYLOAD);
		length = headers + MIN_PAYLOAD;
	}
	memset(frame, 0, length);
	memcpy(eth->ether_dhost, opt->dst_mac, ETH_ALEN);
	memcpy(eth->ether_shost, opt->src_mac, ETH_ALEN);
	udp_length = (uint16_t)(length - l3_offset - ip_length);

	if (opt->family == AF_INET) {
		struct iphdr *ip = (struct iphdr *)(frame + l3_offset);

		eth->ether_type = htons(ETHERTYPE_IP);
		ip->version = 4;
		ip->ihl = 5;
		ip->tot_len = htons((uint16_t)(length - l3_offset));
		ip->frag_off = htons(IP_DF);
		ip->ttl = 64;
		ip->protocol = IPPROTO_UDP;
		ip->saddr = opt->src4.s_addr;
		ip->daddr = opt->dst4.s_addr;
		ip->check = htons(fold_checksum(sum_words(ip, sizeof(*ip), 0)));
		sum = sum_words(&ip->saddr, 8, sum);
	} else {
		struct ip6_hdr *ip6 = (struct ip6_hdr *)(frame + l3_offset);

		eth->ether_type = htons(ETHERTYPE_IPV6);
		ip6->ip6_flow = htonl(6u << 28);
		ip6->ip6_plen = htons(udp_length);
		ip6->ip6_nxt = IPPROTO_UDP;
		ip6->ip6_hlim = 64;
		ip6->ip6_src = opt->src6;
		ip6->ip6_dst = opt->dst6;
		sum = sum_words(&ip6->ip6_src, 32, sum);
	}
	sum += IPPROTO_UDP + udp_length;

	udp->dest = htons(opt->dport);
	udp->len = htons(udp_length);
	memcpy(payload + SEQ_BYTES, PAYLOAD_MAGIC, 4);
	sum = sum_words(udp, udp_length, sum);

	layout->length = length;
	layout->sport_offset = l3_offset + ip_length + offsetof(struct udphdr, source);
	layout->checksum_offset = l3_offset + ip_length + offsetof(struct udphdr, check);
	layout->seq_offset = headers;
	layout->base_sum = sum;
	return length;
}

static uint16_t source_port(const struct options *opt, uint32_t seq)
{
	return (uint16_t)(opt->sport + seq % opt->sports);
}

static void stamp_frame(const struct options *opt, const struct frame_layout *layout, uint8_t *frame,
			uint32_t seq)
{
	uint16_t sport = source_port(opt, seq);
	uint32_t sum = layout->base_sum + sport + (seq >> 16) + (seq & 0xffff);
	uint32_t seq_be = htonl(seq);
	uint16_t value;

	memcpy(frame + layout->seq_offset, &seq_be, sizeof(seq_be));
	value = htons(sport);
	memcpy(frame + layout->sport_offset, &value, sizeof(value));
	value = htons(fold_checksum(sum));
	memcpy(frame + layout->checksum_offset, &value, sizeof(value));
}

/* ------------------------------------------------------------------ interface */

static int interface_index(const char *iface)
{
	unsigned int index = if_nametoindex(iface);

	if (!index)
		fail("no interface '%s' here: %s", iface, strerror(errno));
	return (int)index;
}

static void interface_mac(const char *iface, uint8_t mac[ETH_ALEN])
{
	struct ifreq request = {0};
	int fd = socket(AF_INET, SOCK_DGRAM, 0);

	if (fd < 0)
		fail("socket: %s", strerror(errno));
	snprintf(request.ifr_name, sizeof(request.ifr_name), "%s", iface);
	if (ioctl(fd, SIOCGIFHWADDR, &request) < 0)
		fail("reading the MAC address of %s: %s", iface, strerror(errno));
	memcpy(mac, request.ifr_hwaddr.sa_data, ETH_ALEN);
	close(fd);
}

/* ------------------------------------------------------------------ results */

struct result {
	uint64_t sent;
	uint64_t retries;
	double seconds;
	bool warm;	/* xdp mode: the program was also attached (see warm_dispatcher) */
};

static uint64_t frame_budget(const struct options *opt)
{
	return opt->count ? opt->count : UINT64_MAX;
}

static void print_result(const struct options *opt, const struct result *res)
{
	double pps = res->seconds > 0 ? res->sent / res->seconds : 0;

	printf("{\"sent\": %llu, \"seconds\": %.6f, \"pps\": %.1f, \"mode\": \"%s\", \"first_seq\": %u, "
	       "\"last_seq\": %u, \"retries\": %llu, \"warm\": %s}\n",
	       (unsigned long long)res->sent, res->seconds, pps, opt->mode, opt->seq_start,
	       (uint32_t)(opt->seq_start + res->sent - (res->sent ? 1 : 0)),
	       (unsigned long long)res->retries, res->warm ? "true" : "false");
	fflush(stdout);
}

/* ------------------------------------------------------------------ AF_PACKET sender */

static void send_packet_mode(const struct options *opt, struct result *res)
{
	static uint8_t frames[MAX_BATCH][MAX_FRAME];
	static struct mmsghdr messages[MAX_BATCH];
	static struct iovec vectors[MAX_BATCH];
	struct frame_layout layout;
	struct sockaddr_ll address = {0};
	uint64_t budget = frame_budget(opt);
	unsigned int batch = opt->batch;
	int one = 1, fd;
	double started, deadline;

	fd = socket(AF_PACKET, SOCK_RAW, 0);	/* protocol 0: this socket receives nothing */
	if (fd < 0)
		fail("AF_PACKET socket: %s (needs CAP_NET_RAW)", strerror(errno));
	if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) < 0)
		fail("PACKET_QDISC_BYPASS: %s", strerror(errno));
	address.sll_family = AF_PACKET;
	address.sll_ifindex = interface_index(opt->iface);
	address.sll_halen = ETH_ALEN;
	memcpy(address.sll_addr, opt->dst_mac, ETH_ALEN);
	if (bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0)
		fail("bind to %s: %s", opt->iface, strerror(errno));

	/* Paced floods go out in bursts of at most 1 ms worth of frames. */
	if (opt->rate > 0 && opt->rate / 1000 < batch)
		batch = opt->rate >= 1000 ? (unsigned int)(opt->rate / 1000) : 1;
	for (unsigned int i = 0; i < MAX_BATCH; i++) {
		build_frame(opt, frames[i], &layout);
		vectors[i] = (struct iovec){.iov_base = frames[i], .iov_len = layout.length};
		messages[i].msg_hdr = (struct msghdr){.msg_iov = &vectors[i], .msg_iovlen = 1};
	}

	started = now_seconds();
	deadline = started + opt->duration;
	while (res->sent < budget && !stop_requested) {
		unsigned int todo = budget - res->sent < batch ? (unsigned int)(budget - res->sent) : batch;
		unsigned int done = 0;
		double now = now_seconds();

		if (now >= deadline)
			break;
		if (opt->rate > 0) {
			double due = started + res->sent / opt->rate;

			if (due > now) {
				double wait = due - now;
				struct timespec pause = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};

				nanosleep(&pause, NULL);
				continue;
			}
		}
		for (unsigned int i = 0; i < todo; i++)
			stamp_frame(opt, &layout, frames[i], opt->seq_start + (uint32_t)(res->sent + i));
		while (done < todo && !stop_requested) {
			int n = sendmmsg(fd, messages + done, todo - done, 0);

			if (n > 0) {
				done += n;
				continue;
			}
			if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR) {
				/* The peer's queue is full: let its softirq drain it, then resend. */
				res->retries++;
				sched_yield();
				if (now_seconds() >= deadline)
					break;
				continue;
			}
			fail("sendmmsg on %s: %s", opt->iface, strerror(errno));
		}
		res->sent += done;
	}
	res->seconds = now_seconds() - started;
	close(fd);
}

/* ------------------------------------------------------------------ XDP live-frames sender */

/* Instruction builders in the style of the kernel's samples/bpf/bpf_insn.h. */
#define INSN(CODE, DST, SRC, OFF, IMM) \
	((struct bpf_insn){.code = (CODE), .dst_reg = (DST), .src_reg = (SRC), .off = (OFF), .imm = (IMM)})
#define MOV64_REG(DST, SRC) INSN(BPF_ALU64 | BPF_MOV | BPF_X, DST, SRC, 0, 0)
#define MOV64_IMM(DST, IMM) INSN(BPF_ALU64 | BPF_MOV | BPF_K, DST, 0, 0, IMM)
#define ALU64_IMM(OP, DST, IMM) INSN(BPF_ALU64 | (OP) | BPF_K, DST, 0, 0, IMM)
#define ALU64_REG(OP, DST, SRC) INSN(BPF_ALU64 | (OP) | BPF_X, DST, SRC, 0, 0)
#define LDX_MEM(SIZE, DST, SRC, OFF) INSN(BPF_LDX | BPF_MEM | (SIZE), DST, SRC, OFF, 0)
#define STX_MEM(SIZE, DST, SRC, OFF) INSN(BPF_STX | BPF_MEM | (SIZE), DST, SRC, OFF, 0)
#define ST_MEM(SIZE, DST, OFF, IMM) INSN(BPF_ST | BPF_MEM | (SIZE), DST, 0, OFF, IMM)
#define JMP_REG(OP, DST, SRC, OFF) INSN(BPF_JMP | (OP) | BPF_X, DST, SRC, OFF, 0)
#define JMP_IMM(OP, DST, IMM, OFF) INSN(BPF_JMP | (OP) | BPF_K, DST, 0, OFF, IMM)
#define TO_BE(DST, BITS) INSN(BPF_ALU | BPF_END | BPF_TO_BE, DST, 0, 0, BITS)
#define CALL(HELPER) INSN(BPF_JMP | BPF_CALL, 0, 0, 0, HELPER)
#define EXIT() INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
#define LD_MAP_FD(DST, FD) \
	INSN(BPF_LD | BPF_DW | BPF_IMM, DST, BPF_PSEUDO_MAP_FD, 0, FD), INSN(0, 0, 0, 0, 0)

static long bpf_call(int command, union bpf_attr *attr)
{
	return syscall(__NR_bpf, command, attr, sizeof(*attr));
}

static int create_counter_map(void)
{
	union bpf_attr attr = {0};
	int fd;

	attr.map_type = BPF_MAP_TYPE_ARRAY;
	attr.key_size = 4;
	attr.value_size = 8;
	attr.max_entries = 1;
	fd = (int)bpf_call(BPF_MAP_CREATE, &attr);
	if (fd < 0)
		fail("creating the sequence counter map: %s (needs CAP_BPF)", strerror(errno));
	return fd;
}

/*
 * The XDP program run on each live frame. In C it would read:
 *
 *	if (data + layout.length != data_end || magic != "BPFB") return XDP_PASS;
 *	seq = counter[0]++;                      // one CPU runs test_run: no atomics needed
 *	sport = opt.sport + seq % opt.sports;
 *	*(be32 *)(data + seq_offset) = htonl(seq);
 *	*(be16 *)(data + sport_offset) = htons(sport);
 *	sum = base_sum + sport + (seq >> 16) + (seq & 0xffff);  fold twice; csum = ~sum or 0xffff
 *	*(be16 *)(data + checksum_offset) = htons(csum);
 *	return XDP_TX;                           // test_run redirects it out of ingress_ifindex
 *
 * The counter holds the absolute sequence number (seq-start is stored there first).
 */
static int load_stamp_program(const struct options *opt, const struct frame_layout *layout, int map_fd)
{
	enum { R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 };
	struct bpf_insn code[80];
	unsigned int n = 0, to_pass[4], pass_at;
	static char log[65536];
	union bpf_attr attr = {0};
	int fd;

#define EMIT(...) do { struct bpf_insn many[] = {__VA_ARGS__}; \
		memcpy(code + n, many, sizeof(many)); n += sizeof(many) / sizeof(many[0]); } while (0)
	EMIT(LDX_MEM(BPF_W, R6, R1, offsetof(struct xdp_md, data)));
	EMIT(LDX_MEM(BPF_W, R7, R1, offsetof(struct xdp_md, data_end)));
	/* Only our own frame, exactly: when the program is also attached to the interface
	 * (see warm_dispatcher), what the interface receives must pass untouched. */
	EMIT(MOV64_REG(R2, R6), ALU64_IMM(BPF_ADD, R2, (int)layout->length));
	to_pass[0] = n;
	EMIT(JMP_REG(BPF_JGT, R2, R7, 0));	/* the bounds check the verifier follows */
	to_pass[1] = n;
	EMIT(JMP_REG(BPF_JNE, R2, R7, 0));
	EMIT(LDX_MEM(BPF_W, R2, R6, (short)(layout->seq_offset + SEQ_BYTES)));
	to_pass[2] = n;
	EMIT(JMP_IMM(BPF_JNE, R2, PAYLOAD_MAGIC_LE, 0));
	/* r8 = counter[0]++ */
	EMIT(ST_MEM(BPF_W, R10, -4, 0), LD_MAP_FD(R1, map_fd), MOV64_REG(R2, R10), ALU64_IMM(BPF_ADD, R2, -4));
	EMIT(CALL(BPF_FUNC_map_lookup_elem));
	to_pass[3] = n;
	EMIT(JMP_IMM(BPF_JEQ, R0, 0, 0));
	EMIT(LDX_MEM(BPF_DW, R8, R0, 0), MOV64_REG(R1, R8), ALU64_IMM(BPF_ADD, R1, 1), STX_MEM(BPF_DW, R0, R1, 0));
	EMIT(INSN(BPF_ALU | BPF_MOV | BPF_X, R8, R8, 0, 0));	/* 32-bit move: r8 = (u32)seq */
	/* r9 = opt.sport + seq % opt.sports */
	EMIT(MOV64_REG(R9, R8), INSN(BPF_ALU | BPF_MOD | BPF_K, R9, 0, 0, opt->sports),
	     ALU64_IMM(BPF_ADD, R9, opt->sport));
	/* payload: seq, big-endian; UDP source port, big-endian */
	EMIT(MOV64_REG(R1, R8), TO_BE(R1, 32), STX_MEM(BPF_W, R6, R1, (short)layout->seq_offset));
	EMIT(MOV64_REG(R1, R9), TO_BE(R1, 16), STX_MEM(BPF_H, R6, R1, (short)layout->sport_offset));
	/* r2 = base_sum + sport + (seq >> 16) + (seq & 0xffff), folded twice and complemented */
	EMIT(MOV64_REG(R2, R8), ALU64_IMM(BPF_RSH, R2, 16), MOV64_REG(R3, R8), ALU64_IMM(BPF_AND, R3, 0xffff),
	     ALU64_REG(BPF_ADD, R2, R3), ALU64_REG(BPF_ADD, R2, R9));
	EMIT(INSN(BPF_LD | BPF_DW | BPF_IMM, R3, 0, 0, (int)layout->base_sum), INSN(0, 0, 0, 0, 0));
	EMIT(ALU64_REG(BPF_ADD, R2, R3));
	for (int fold = 0; fold < 2; fold++)
		EMIT(MOV64_REG(R3, R2), ALU64_IMM(BPF_RSH, R3, 16), ALU64_IMM(BPF_AND, R2, 0xffff),
		     ALU64_REG(BPF_ADD, R2, R3));
	EMIT(ALU64_IMM(BPF_XOR, R2, 0xffff), JMP_IMM(BPF_JNE, R2, 0, 1), MOV64_IMM(R2, 0xffff));
	EMIT(TO_BE(R2, 16), STX_MEM(BPF_H, R6, R2, (short)layout->checksum_offset));
	EMIT(MOV64_IMM(R0, XDP_TX), EXIT());
	pass_at = n;
	EMIT(MOV64_IMM(R0, XDP_PASS), EXIT());
#undef EMIT
	for (unsigned int i = 0; i < 4; i++)
		code[to_pass[i]].off = (short)(pass_at - to_pass[i] - 1);

	attr.prog_type = BPF_PROG_TYPE_XDP;
	attr.insns = (uint64_t)(uintptr_t)code;
	attr.insn_cnt = n;
	attr.license = (uint64_t)(uintptr_t)"GPL";
	attr.log_buf = (uint64_t)(uintptr_t)log;
	attr.log_size = sizeof(log);
	attr.log_level = 1;
	memcpy(attr.prog_name, "bpfleet_blast", sizeof("bpfleet_blast"));
	fd = (int)bpf_call(BPF_PROG_LOAD, &attr);
	if (fd < 0)
		fail("loading the XDP stamp program: %s\n%s", strerror(errno), log);
	return fd;
}

/*
 * Attach the stamp program to the interface itself through a BPF link (gone when this
 * process exits, however it exits). Not to filter anything: the kernel's XDP dispatcher then
 * already knows the program, and each BPF_PROG_TEST_RUN call skips the dispatcher update that
 * otherwise waits for an RCU grace period (about 18 ms a call here, LAB-NOTES). The program
 * passes every frame that is not exactly ours. Best effort: returns -1 when the interface
 * already has an XDP program or refuses native mode.
 */
static int warm_dispatcher(int prog_fd, int ifindex)
{
	union bpf_attr attr = {0};

	attr.link_create.prog_fd = prog_fd;
	attr.link_create.target_ifindex = ifindex;
	attr.link_create.attach_type = BPF_XDP;
	attr.link_create.flags = 1U << 2;	/* XDP_FLAGS_DRV_MODE */
	return (int)bpf_call(BPF_LINK_CREATE, &attr);
}

static void send_xdp_mode(const struct options *opt, struct result *res)
{
	static uint8_t frame[MAX_FRAME];
	struct frame_layout layout;
	struct xdp_md context = {0};
	uint64_t budget = frame_budget(opt);
	uint64_t counter = opt->seq_start;
	uint32_t key = 0;
	union bpf_attr attr = {0};
	int map_fd, prog_fd, link_fd;
	uint32_t chunk = XDP_FIRST_CHUNK;
	double started, deadline;

	build_frame(opt, frame, &layout);
	map_fd = create_counter_map();
	attr.map_fd = map_fd;
	attr.key = (uint64_t)(uintptr_t)&key;
	attr.value = (uint64_t)(uintptr_t)&counter;
	if (bpf_call(BPF_MAP_UPDATE_ELEM, &attr) < 0)
		fail("setting the sequence counter: %s", strerror(errno));
	prog_fd = load_stamp_program(opt, &layout, map_fd);
	context.ingress_ifindex = interface_index(opt->iface);
	context.data_end = layout.length;	/* test_run insists: data_end is the frame's size */
	link_fd = opt->cold ? -1 : warm_dispatcher(prog_fd, (int)context.ingress_ifindex);
	res->warm = link_fd >= 0;

	started = now_seconds();
	deadline = started + opt->duration;
	while (res->sent < budget && !stop_requested) {
		double call_started = now_seconds(), left_seconds = deadline - call_started;
		uint64_t before = res->sent;

		if (left_seconds <= 0)
			break;
		if (chunk > budget - res->sent)
			chunk = (uint32_t)(budget - res->sent);
		memset(&attr, 0, sizeof(attr));
		attr.test.prog_fd = prog_fd;
		attr.test.data_in = (uint64_t)(uintptr_t)frame;
		attr.test.data_size_in = layout.length;
		attr.test.ctx_in = (uint64_t)(uintptr_t)&context;
		attr.test.ctx_size_in = sizeof(context);
		attr.test.repeat = chunk;
		attr.test.flags = BPF_F_TEST_XDP_LIVE_FRAMES;
		if (bpf_call(BPF_PROG_TEST_RUN, &attr) < 0) {
			if (errno == EINTR)
				continue;
			fail("BPF_PROG_TEST_RUN (live frames) on %s: %s", opt->iface, strerror(errno));
		}
		/* The counter is the truth: a signal may cut a call short. */
		memset(&attr, 0, sizeof(attr));
		attr.map_fd = map_fd;
		attr.key = (uint64_t)(uintptr_t)&key;
		attr.value = (uint64_t)(uintptr_t)&counter;
		if (bpf_call(BPF_MAP_LOOKUP_ELEM, &attr) < 0)
			fail("reading the sequence counter: %s", strerror(errno));
		res->sent = counter - opt->seq_start;

		/* Next call: about XDP_CALL_SECONDS at the rate just seen, never past the deadline. */
		double call_seconds = now_seconds() - call_started, rate;

		if (call_seconds <= 0 || res->sent == before)
			continue;
		rate = (res->sent - before) / call_seconds;
		left_seconds = deadline - now_seconds();
		double next = rate * (left_seconds < XDP_CALL_SECONDS ? left_seconds : XDP_CALL_SECONDS);
		chunk = next < 1 ? 1 : next > XDP_MAX_CHUNK ? XDP_MAX_CHUNK : (uint32_t)next;
	}
	res->seconds = now_seconds() - started;
	if (link_fd >= 0)
		close(link_fd);
	close(prog_fd);
	close(map_fd);
}

int main(int argc, char **argv)
{
	struct options opt;
	struct result res = {0};
	struct sigaction action = {.sa_handler = on_signal};

	parse_options(argc, argv, &opt);
	if (!opt.have_src_mac)
		interface_mac(opt.iface, opt.src_mac);
	sigaction(SIGINT, &action, NULL);
	sigaction(SIGTERM, &action, NULL);
	if (!strcmp(opt.mode, "xdp"))
		send_xdp_mode(&opt, &res);
	else
		send_packet_mode(&opt, &res);
	print_result(&opt, &res);
	return 0;
}
