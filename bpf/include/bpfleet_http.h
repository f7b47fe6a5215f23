{#-
  Rendered as part of bpfleet.c.j2 (it is a Jinja2 template like it) when the policy has
  log.http; `http` comes from plugins/plugin_utils/_render.py:kernel_http().
#}
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
{% for state in http.states %}
    HTTP_{{ state }} = {{ loop.index0 }},
{% endfor %}
};
#define HTTP_SCAN_STATES {{ http.states | length }}

/* Byte classes (_http.SCAN_CLASSES): the bytes the automaton tells apart. */
enum http_class {
{% for cls in http.classes %}
    HTTP_CLASS_{{ cls }} = {{ loop.index0 }},
{% endfor %}
};
#define HTTP_SCAN_WIDTH {{ http.width }}

/* Actions of a transition, applied in this order (_http.SCAN_ACTIONS). */
{% for name, bit in http.actions %}
#define HTTP_{{ name }} {{ bit }}
{% endfor %}

#define HTTP_DOES(action, which) (((action) / (which)) & 1)
/* Eight bytes as one little-endian word, for comparing a method or a version at once. */
#define HTTP_WORD(a, b, c, d, e, f, g, h)                                                     \
    ((u64)(a) | (u64)(b) << 8 | (u64)(c) << 16 | (u64)(d) << 24 | (u64)(e) << 32 |           \
     (u64)(f) << 40 | (u64)(g) << 48 | (u64)(h) << 56)
#define HTTP_FIRST_BYTES(n) ((1ULL << (8 * (n))) - 1)

#define HTTP_NAME_SLOT_BITS {{ http.name_slot_bits }}
#define HTTP_NAME_MULTIPLIER {{ http.name_multiplier }}ULL

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
    return {% for port in http.ports %}port == {{ port }}{{ " || " if not loop.last }}{% endfor %};
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
{% for part in http.tails %}
    {{ "return (" if loop.first else "            " }}(((tail & {{ part.mask }}ULL) ^ {{ part.value }}ULL) - 1){{ ") >> 63;" if loop.last else " |" }} /* {{ part.text }} */
{% endfor %}
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
{% for cls, byte in http.class_bytes %}
    tables->byte_class[{{ byte }}] = HTTP_CLASS_{{ cls }};
{% endfor %}
    /* By default a byte leaves the state as it is and does nothing. */
    for (u32 state = 0; state < HTTP_SCAN_STATES; state++) {
        for (u32 cls = 0; cls < HTTP_SCAN_WIDTH; cls++) {
            tables->next_state[state * HTTP_SCAN_WIDTH + cls] = state;
            tables->action[state * HTTP_SCAN_WIDTH + cls] = 0;
        }
    }
{% for t in http.transitions %}
    tables->next_state[HTTP_{{ t.state }} * HTTP_SCAN_WIDTH + HTTP_CLASS_{{ t["class"] }}] = HTTP_{{ t.next }};
{% if t.actions %}
    tables->action[HTTP_{{ t.state }} * HTTP_SCAN_WIDTH + HTTP_CLASS_{{ t["class"] }}] = {% for a in t.actions %}HTTP_{{ a }}{{ " | " if not loop.last }}{% endfor %};
{% endif %}
{% endfor %}
    for (u32 slot = 0; slot < (1 << HTTP_NAME_SLOT_BITS); slot++)
        tables->name_slots[slot] = 0;
{% for slot in http.name_slots %}
    tables->name_slots[{{ slot.index }}] = {{ slot.hash }}ULL; /* {{ slot.text }} */
{% endfor %}
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
