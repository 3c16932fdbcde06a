//go:build ignore

/*
 * synguard XDP program: counts SYNs against handshake-completing ACKs per
 * source and per local service, drops TCP from banned prefixes (bans expire
 * here, in the kernel) and never drops allowlisted prefixes. Everything it
 * cannot parse passes: the program fails open.
 *
 * CONTRACT (the Go side in package bpf and internal/classify rely on it)
 *
 * Classification: every frame gets exactly one kind (enum kind below).
 *   Ethernet: < 14 bytes -> MALFORMED. Up to two VLAN tags (0x8100/0x88a8, any
 *   order); a truncated tag or a third tag -> MALFORMED. EtherType other than
 *   IPv4/IPv6 -> NON_IP.
 *   IPv4: 20 bytes, version 4, IHL >= 5 and IHL*4 bytes present, else
 *   MALFORMED; total length is not checked. Fragment offset != 0 -> FRAGMENT;
 *   protocol != TCP -> NON_TCP.
 *   IPv6: 40 bytes and version 6, else MALFORMED. At most 6 extension headers
 *   among hop-by-hop, routing, destination options ((len+1)*8 bytes) and
 *   fragment (8 bytes); truncated -> MALFORMED; a 7th -> MALFORMED; fragment
 *   offset != 0 -> FRAGMENT. Final next header != TCP -> NON_TCP.
 *   TCP: 20 bytes, data offset >= 5 and doff*4 bytes present, else MALFORMED.
 *   RST -> RST; else SYN without ACK -> SYN; SYN+ACK -> SYNACK; ACK -> ACK;
 *   anything else -> TCP_OTHER.
 *
 * Policy applies to TCP kinds only (SYN, SYNACK, ACK, RST, TCP_OTHER): a
 * source covered by a live ban and not allowlisted is dropped in enforce mode
 * and counted as would-drop (and passed) in observe mode. Non-TCP, fragments
 * and malformed frames always pass. The longest live ban counts; expired
 * bans covering the source are skipped (at most BAN_RETRIES deep, beyond
 * that the source passes until userspace prunes expired bans).
 *
 * Maps (all sizes set by the loader; pinned by name except suspects):
 *   config       ARRAY[4] of u64. [0] mode (0 observe, 1 enforce);
 *                [1] list generation: a value userspace changes after every
 *                blocklist/allowlist change (u32 range, never 0 after the
 *                first change); [2] attach mode recorded by the loader
 *                (1 native, 2 generic); [3] reserved.
 *   sources      LRU_HASH key: 16-byte source address (IPv4 as ::ffff:a.b.c.d)
 *                value: struct source_stats. syn/ack/rst count SYN, ACK and
 *                RST frames that were not dropped; first_seen/last_seen are
 *                kernel times (see Clock) of the first frame and the last
 *                counted frame; syn_mark is the value of syn at
 *                the last ACK; last_event is when the last suspect event was
 *                emitted; verdict caches the policy result (see
 *                verdict_word()). An entry is created by a counted SYN, ACK or
 *                RST, or by any TCP frame a ban matched (to cache the verdict;
 *                its counters then stay at 0).
 *   services     LRU_HASH key: struct service_key (destination address,
 *                destination port in network order, 2 bytes zero padding)
 *                value: struct service_stats: SYN and ACK frames not dropped.
 *   blocklist    LPM_TRIE key: struct lpm_key, value: struct ban_ref (the
 *                ban's slot, and the entry's own prefixlen so an expired
 *                match can be retried with a shorter prefix).
 *   allowlist    LPM_TRIE key: struct lpm_key, value: u32 (unused, 1).
 *   ban_expiry   ARRAY[max bans] of u64: expiry (kernel time) per ban slot;
 *                a ban is live while expiry > now. 0 = slot free.
 *   ban_counters PERCPU_ARRAY[max bans] of struct ban_hits: frames each ban
 *                dropped (enforce) or would have dropped (observe).
 *   counters     PERCPU_ARRAY[1] of struct global_counters: frames counts
 *                every frame; kind[k] counts frames classified as k (so
 *                frames == sum of kind[]); dropped/would_drop count ban hits
 *                by mode; allowlisted counts TCP frames a live ban matched
 *                but the allowlist passed; suspects_lost counts suspect
 *                events lost to a full ring buffer.
 *   suspects     RINGBUF of struct suspect_event: a source sent more than
 *                suspect_syns SYNs since its last ACK; at most one event per
 *                source per suspect_interval_ns.
 *
 * Clock: every time here (first/last seen, ban expiry, suspect events) is
 * bpf_ktime_get_coarse_ns(): CLOCK_MONOTONIC at tick resolution (4 ms at
 * HZ=250). bpf_ktime_get_boot_ns() reads the clocksource and costs ~31 ns
 * per call under kvm-clock, half the cost of a drop; the coarse clock costs
 * ~3 ns. Userspace converts with CLOCK_MONOTONIC.
 *
 * LPM keys: prefixlen counts the 32-bit family word too: IPv4 a.b.c.d/n is
 * {32 + n, 4, a.b.c.d, 12 zero bytes}; IPv6 x/n is {32 + n, 6, x}. The family
 * word keeps ::/0 from covering IPv4 and 0.0.0.0/0 from covering IPv6.
 */

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Tunables, set by the loader through spec.Variables before loading. */
volatile const __u32 suspect_syns = 100;
volatile const __u64 suspect_interval_ns = 1000000000ULL;

enum kind {
	KIND_NON_IP,
	KIND_NON_TCP,
	KIND_FRAGMENT,
	KIND_MALFORMED,
	KIND_SYN,
	KIND_SYNACK,
	KIND_ACK,
	KIND_RST,
	KIND_TCP_OTHER,
	KIND_COUNT,
};

enum config_index {
	CONFIG_MODE,
	CONFIG_LIST_GEN,
	CONFIG_ATTACH_MODE,
	CONFIG_RESERVED,
	CONFIG_COUNT,
};

enum mode {
	MODE_OBSERVE,
	MODE_ENFORCE,
};

enum verdict {
	VERDICT_NONE,  /* nothing cached */
	VERDICT_PASS,  /* no live ban covers the source */
	VERDICT_BAN,   /* a live ban covers it, the allowlist does not */
	VERDICT_ALLOW, /* a live ban covers it, the allowlist overrides */
};

#define VERDICT_SLOT_BITS 30
#define VERDICT_SLOT_MASK ((1U << VERDICT_SLOT_BITS) - 1)
#define LPM_FAMILY_BITS 32
#define BAN_RETRIES 8
#define IPV6_MAX_EXT 6

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

struct source_stats {
	__u64 syn;
	__u64 ack;
	__u64 rst;
	__u64 first_seen;
	__u64 last_seen;
	__u64 syn_mark;
	__u64 last_event;
	__u64 verdict;
};

struct service_key {
	__u8 addr[16];
	__be16 port;
	__u16 pad;
} __attribute__((aligned(4)));

struct service_stats {
	__u64 syn;
	__u64 ack;
};

struct lpm_key {
	__u32 prefixlen;
	__u32 family;
	__u8 addr[16];
};

struct ban_ref {
	__u32 slot;
	__u32 prefixlen;
};

struct ban_hits {
	__u64 dropped;
	__u64 would_drop;
};

struct global_counters {
	__u64 frames;
	__u64 kind[KIND_COUNT];
	__u64 dropped;
	__u64 would_drop;
	__u64 allowlisted;
	__u64 suspects_lost;
};

struct suspect_event {
	__u8 addr[16];
	__u32 syns;
	__u32 pad;
	__u64 time;
};

/* What the parser extracts for the policy and accounting stages. */
struct packet {
	__u8 src[16];
	struct service_key svc;
	__u32 v6;
} __attribute__((aligned(8)));

struct vlan_tag {
	__be16 tci;
	__be16 encap_proto;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CONFIG_COUNT);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 20);
	__type(key, __u8[16]);
	__type(value, struct source_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sources SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct service_key);
	__type(value, struct service_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, struct ban_ref);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} blocklist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} allowlist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ban_expiry SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct ban_hits);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ban_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct global_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} suspects SEC(".maps");

/* ---- parsing ---------------------------------------------------------- */

static __always_inline void addr_from_v4(__u8 *dst, __be32 a)
{
	__u32 *w = (__u32 *)dst;

	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0xffff);
	w[3] = a;
}

static __always_inline enum kind parse_tcp(void *pos, void *end,
					   struct packet *p)
{
	__u8 *th = pos;
	__u32 doff;
	__u8 flags;

	if (pos + 20 > end)
		return KIND_MALFORMED;
	doff = th[12] >> 4;
	if (doff < 5 || pos + doff * 4 > end)
		return KIND_MALFORMED;
	p->svc.port = *(__be16 *)(th + 2);
	flags = th[13];
	if (flags & TCP_FLAG_RST)
		return KIND_RST;
	if (flags & TCP_FLAG_SYN)
		return (flags & TCP_FLAG_ACK) ? KIND_SYNACK : KIND_SYN;
	if (flags & TCP_FLAG_ACK)
		return KIND_ACK;
	return KIND_TCP_OTHER;
}

static __always_inline enum kind parse_ipv4(void *pos, void *end,
					    struct packet *p)
{
	struct iphdr *ip = pos;
	__u32 ihl;

	if ((void *)(ip + 1) > end)
		return KIND_MALFORMED;
	if ((*(__u8 *)ip >> 4) != 4)
		return KIND_MALFORMED;
	ihl = *(__u8 *)ip & 0x0f;
	if (ihl < 5 || pos + ihl * 4 > end)
		return KIND_MALFORMED;
	if (ip->frag_off & bpf_htons(0x1fff))
		return KIND_FRAGMENT;
	if (ip->protocol != IPPROTO_TCP)
		return KIND_NON_TCP;
	addr_from_v4(p->src, ip->saddr);
	addr_from_v4(p->svc.addr, ip->daddr);
	return parse_tcp(pos + ihl * 4, end, p);
}

static __always_inline int ipv6_ext(__u8 nh)
{
	return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING ||
	       nh == IPPROTO_DSTOPTS || nh == IPPROTO_FRAGMENT;
}

static __always_inline enum kind parse_ipv6(void *pos, void *end,
					    struct packet *p)
{
	struct ipv6hdr *ip6 = pos;
	__u8 nh;
	int i;

	if ((void *)(ip6 + 1) > end)
		return KIND_MALFORMED;
	if ((*(__u8 *)ip6 >> 4) != 6)
		return KIND_MALFORMED;
	nh = ip6->nexthdr;
	pos = ip6 + 1;

#pragma unroll
	for (i = 0; i < IPV6_MAX_EXT; i++) {
		__u8 *h = pos;

		if (!ipv6_ext(nh))
			break;
		if (pos + 8 > end)
			return KIND_MALFORMED;
		if (nh == IPPROTO_FRAGMENT) {
			/* Offset is the upper 13 bits of bytes 2-3. */
			if (*(__be16 *)(h + 2) & bpf_htons(0xfff8))
				return KIND_FRAGMENT;
			nh = h[0];
			pos += 8;
		} else {
			__u32 len = ((__u32)h[1] + 1) * 8;

			if (pos + len > end)
				return KIND_MALFORMED;
			nh = h[0];
			pos += len;
		}
	}
	if (ipv6_ext(nh))
		return KIND_MALFORMED;
	if (nh != IPPROTO_TCP)
		return KIND_NON_TCP;
	__builtin_memcpy(p->src, &ip6->saddr, 16);
	__builtin_memcpy(p->svc.addr, &ip6->daddr, 16);
	p->v6 = 1;
	return parse_tcp(pos, end, p);
}

/* classify gives the frame its kind and, for TCP kinds, fills p. */
static __always_inline enum kind classify(void *data, void *end,
					  struct packet *p)
{
	struct ethhdr *eth = data;
	void *pos = eth + 1;
	__be16 proto;
	int i;

	if (pos > end)
		return KIND_MALFORMED;
	proto = eth->h_proto;

#pragma unroll
	for (i = 0; i < 2; i++) {
		struct vlan_tag *tag = pos;

		if (proto != bpf_htons(ETH_P_8021Q) &&
		    proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(tag + 1) > end)
			return KIND_MALFORMED;
		proto = tag->encap_proto;
		pos = tag + 1;
	}
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		return KIND_MALFORMED;
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(pos, end, p);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(pos, end, p);
	return KIND_NON_IP;
}

/* ---- policy ----------------------------------------------------------- */

static __always_inline __u64 config_get(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&config, &idx);

	return v ? *v : 0;
}

/*
 * A verdict word caches the policy result in the per-source entry:
 * bits 63-32 the list generation it was computed under, bits 31-30 the
 * verdict, bits 29-0 the matching ban's slot. It is stored and loaded as one
 * 64-bit word, so concurrent CPUs never see a torn verdict.
 */
static __always_inline __u64 verdict_word(__u32 gen, enum verdict v, __u32 slot)
{
	return ((__u64)gen << 32) | ((__u64)v << VERDICT_SLOT_BITS) |
	       (slot & VERDICT_SLOT_MASK);
}

static __always_inline enum verdict word_verdict(__u64 w)
{
	return (w >> VERDICT_SLOT_BITS) & 3;
}

static __always_inline __u32 word_slot(__u64 w)
{
	return w & VERDICT_SLOT_MASK;
}

static __always_inline int ban_live(__u32 slot, __u64 now)
{
	__u64 *until = bpf_map_lookup_elem(&ban_expiry, &slot);

	return until && *until > now;
}

/* cache_valid: computed under the current lists, and its ban still live. */
static __always_inline int cache_valid(__u64 w, __u32 gen, __u64 now)
{
	enum verdict v = word_verdict(w);

	if ((__u32)(w >> 32) != gen || v == VERDICT_NONE)
		return 0;
	return v == VERDICT_PASS || ban_live(word_slot(w), now);
}

/*
 * lookup_verdict walks the prefix tables: the longest live ban covering the
 * source (an expired longer match is retried with a shorter prefix), then the
 * allowlist only when a ban matched.
 */
static __always_inline __u64 lookup_verdict(const struct packet *p, __u32 gen,
					    __u64 now)
{
	struct lpm_key key = {};
	struct ban_ref *ban;
	__u32 slot = 0;
	int found = 0;
	int i;

	if (p->v6) {
		key.family = 6;
		key.prefixlen = LPM_FAMILY_BITS + 128;
		__builtin_memcpy(key.addr, p->src, 16);
	} else {
		key.family = 4;
		key.prefixlen = LPM_FAMILY_BITS + 32;
		__builtin_memcpy(key.addr, p->src + 12, 4);
	}

	for (i = 0; i < BAN_RETRIES; i++) {
		ban = bpf_map_lookup_elem(&blocklist, &key);
		if (!ban)
			break;
		if (ban_live(ban->slot, now)) {
			slot = ban->slot;
			found = 1;
			break;
		}
		if (ban->prefixlen <= LPM_FAMILY_BITS)
			break;
		key.prefixlen = ban->prefixlen - 1;
	}
	if (!found)
		return verdict_word(gen, VERDICT_PASS, 0);

	key.prefixlen = p->v6 ? LPM_FAMILY_BITS + 128 : LPM_FAMILY_BITS + 32;
	if (bpf_map_lookup_elem(&allowlist, &key))
		return verdict_word(gen, VERDICT_ALLOW, slot);
	return verdict_word(gen, VERDICT_BAN, slot);
}

/* ---- accounting ------------------------------------------------------- */

static __always_inline void emit_suspect(const struct packet *p,
					 struct source_stats *s, __u64 syns,
					 __u64 now, struct global_counters *c)
{
	struct suspect_event *ev;
	__u64 last = s->last_event;

	if (last && now - last < suspect_interval_ns)
		return;
	/* One CPU wins the interval; the others see a changed last_event. */
	if (__sync_val_compare_and_swap(&s->last_event, last, now) != last)
		return;
	ev = bpf_ringbuf_reserve(&suspects, sizeof(*ev), 0);
	if (!ev) {
		c->suspects_lost++;
		return;
	}
	__builtin_memcpy(ev->addr, p->src, 16);
	ev->syns = syns > 0xffffffff ? 0xffffffff : syns;
	ev->pad = 0;
	ev->time = now;
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline void count_source(const struct packet *p,
					 struct source_stats *s, enum kind k,
					 __u64 word, __u64 now,
					 struct global_counters *c)
{
	__u64 n, mark;

	if (!s) {
		struct source_stats init = {
			.syn = k == KIND_SYN,
			.ack = k == KIND_ACK,
			.rst = k == KIND_RST,
			.first_seen = now,
			.last_seen = now,
			.verdict = word,
		};

		if (!bpf_map_update_elem(&sources, p->src, &init, BPF_NOEXIST))
			return;
		/* Another CPU created it first: count into its entry. */
		s = bpf_map_lookup_elem(&sources, p->src);
		if (!s)
			return;
	}

	switch (k) {
	case KIND_SYN:
		n = __sync_fetch_and_add(&s->syn, 1) + 1;
		mark = s->syn_mark;
		if (n > mark && n - mark > suspect_syns)
			emit_suspect(p, s, n - mark, now, c);
		break;
	case KIND_ACK:
		__sync_fetch_and_add(&s->ack, 1);
		s->syn_mark = s->syn;
		break;
	default:
		__sync_fetch_and_add(&s->rst, 1);
		break;
	}
	s->last_seen = now;
}

static __always_inline void count_service(struct packet *p, enum kind k)
{
	struct service_stats *v;
	struct service_stats init = {
		.syn = k == KIND_SYN,
		.ack = k == KIND_ACK,
	};

	v = bpf_map_lookup_elem(&services, &p->svc);
	if (!v) {
		if (!bpf_map_update_elem(&services, &p->svc, &init,
					 BPF_NOEXIST))
			return;
		v = bpf_map_lookup_elem(&services, &p->svc);
		if (!v)
			return;
	}
	if (k == KIND_SYN)
		__sync_fetch_and_add(&v->syn, 1);
	else
		__sync_fetch_and_add(&v->ack, 1);
}

/* cache_only creates an uncounted entry so a banned source's next frames
 * find their verdict with one hash lookup. */
static __always_inline void cache_only(const struct packet *p, __u64 word,
				       __u64 now)
{
	struct source_stats init = {
		.first_seen = now,
		.last_seen = now,
		.verdict = word,
	};

	bpf_map_update_elem(&sources, p->src, &init, BPF_NOEXIST);
}

/*
 * drop_cached_ban is the flood's fast path: a source whose entry caches a
 * ban verdict under the current lists, whose ban is still live, in enforce
 * mode, is counted (frames, its kind, dropped, the ban's drop counter:
 * exactly what handle_tcp would count) and dropped without any other work.
 * It returns 0, having counted nothing, in every other case; handle_tcp
 * then decides as usual. Measured: about 3 ns (12%) less per dropped frame
 * than going through handle_tcp.
 */
static __always_inline int drop_cached_ban(const struct source_stats *s,
					   enum kind k)
{
	__u64 word = s->verdict;
	struct global_counters *c;
	struct ban_hits *hits;
	__u32 zero = 0;
	__u32 slot;

	if (word_verdict(word) != VERDICT_BAN)
		return 0;
	if ((__u32)(word >> 32) != config_get(CONFIG_LIST_GEN))
		return 0;
	if (config_get(CONFIG_MODE) != MODE_ENFORCE)
		return 0;
	slot = word_slot(word);
	if (!ban_live(slot, bpf_ktime_get_coarse_ns()))
		return 0;
	c = bpf_map_lookup_elem(&counters, &zero);
	if (c) {
		c->frames++;
		c->kind[k]++;
		c->dropped++;
	}
	hits = bpf_map_lookup_elem(&ban_counters, &slot);
	if (hits)
		hits->dropped++;
	return 1;
}

/*
 * handle_tcp runs the policy and accounting stages for a TCP frame whose
 * per-source entry is s (NULL when it has none). Later stages (verified
 * sources, SYN cookies per service) slot in between the verdict and the
 * accounting.
 */
static __always_inline int handle_tcp(struct packet *p, enum kind k,
				      struct global_counters *c,
				      struct source_stats *s)
{
	__u64 now = bpf_ktime_get_coarse_ns();
	__u32 gen = config_get(CONFIG_LIST_GEN);
	struct ban_hits *hits;
	__u32 slot;
	__u64 word;
	int counted = k == KIND_SYN || k == KIND_ACK || k == KIND_RST;

	if (s) {
		word = s->verdict;
		if (!cache_valid(word, gen, now)) {
			word = lookup_verdict(p, gen, now);
			s->verdict = word;
		}
	} else {
		word = lookup_verdict(p, gen, now);
	}

	switch (word_verdict(word)) {
	case VERDICT_BAN:
		slot = word_slot(word);
		hits = bpf_map_lookup_elem(&ban_counters, &slot);
		if (config_get(CONFIG_MODE) == MODE_ENFORCE) {
			c->dropped++;
			if (hits)
				hits->dropped++;
			if (!s)
				cache_only(p, word, now);
			return XDP_DROP;
		}
		c->would_drop++;
		if (hits)
			hits->would_drop++;
		break;
	case VERDICT_ALLOW:
		c->allowlisted++;
		break;
	default:
		break;
	}

	if (counted)
		count_source(p, s, k, word, now, c);
	else if (!s && word_verdict(word) != VERDICT_PASS)
		cache_only(p, word, now);
	if (k == KIND_SYN || k == KIND_ACK)
		count_service(p, k);
	return XDP_PASS;
}

SEC("xdp.frags")
int synguard_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct source_stats *s = NULL;
	struct global_counters *c;
	struct packet p;
	__u32 zero = 0;
	enum kind k;

	/* Not zeroed as a whole (a measurable share of the drop path): the
	 * parser writes every byte the policy and accounting stages read. */
	p.svc.pad = 0;
	p.v6 = 0;
	k = classify(data, end, &p);
	if (k >= KIND_SYN && k < KIND_COUNT) {
		s = bpf_map_lookup_elem(&sources, p.src);
		if (s && drop_cached_ban(s, k))
			return XDP_DROP;
	}
	c = bpf_map_lookup_elem(&counters, &zero);
	if (!c)
		return XDP_PASS;
	c->frames++;
	if (k >= KIND_COUNT)
		return XDP_PASS;
	c->kind[k]++;
	if (k < KIND_SYN)
		return XDP_PASS;
	return handle_tcp(&p, k, c, s);
}
