// Package bpf owns synguard's XDP program (synguard.c) and the Go API the
// daemon and CLI use to load it, attach it to an interface, steer its
// blocklist, allowlist and mode, and read its counters.
//
// The package knows nothing about policy: it counts, drops what the
// blocklist says, and reports. Deciding whom to ban lives in package
// detector.
//
// # Service protection
//
// Against a flood from random spoofed sources bans are useless. Protect
// puts one service (local address and port) under protection: SYNs from
// verified sources (a handshake completed within Options.VerifiedTTL,
// learnt by the program from handshake-completing ACKs; Verify adds
// addresses by hand) and allowlisted ones pass; SYNs from unverified
// sources are answered from XDP with a SYN cookie (Protection.Cookies,
// which needs the nftables SYNPROXY rules of internal/synproxy to complete
// the connection) or share a per-second budget, the excess dropped.
// Protections and VerifiedSources report what it did. The cookie helpers
// need Linux 6.0; native XDP_TX on a veth needs an XDP program (or GRO) on
// the peer, or the frames vanish.
//
// # State and pinning
//
// With Options.PinDir set (the daemon uses /sys/fs/bpf/synguard/<iface>/),
// the XDP link and every map except the suspect ring buffer and the per-CPU
// ban cache are pinned there, so protection, bans and counters outlive the
// process. Load re-opens the
// pins; when a pinned link exists, Load swaps the freshly loaded program into
// it with link.Update, so a restart or upgrade never leaves the interface
// unprotected. One PinDir per interface: several interfaces are several
// Datapaths.
//
// When a pinned map no longer matches what Options ask for (for example a
// different MaxBans), Load migrates instead of failing: bans (with their
// expiry and drop counts), allowlist entries, the mode and the attach mode
// are copied into maps of the new size (the list generation starts afresh);
// the statistics maps (sources, services, counters, and the protected and
// verified tables) are recreated empty: the detector re-learns counters
// within seconds, and the daemon re-enters protection at its next detection. Migrations reports what
// was done. Load refuses, with a message that says what to do, only when
// live bans or allowlist entries do not fit the new size or a map's layout
// changed in a way it cannot convert.
//
// # Clocks
//
// The kernel stamps everything with bpf_ktime_get_coarse_ns (CLOCK_MONOTONIC
// at tick resolution): reading the precise clock costs about as much as the
// rest of a drop on a VM. The Go API converts those stamps to wall-clock
// time.Time values at the moment of the call, so a wall-clock step shifts
// reported times but never a ban's kernel-side lifetime. CLOCK_MONOTONIC
// stops during suspend: a ban's lifetime does not count time suspended.
// The per-CPU ban cache also reads jiffies, but only to tell whether a
// cached drop was decided in the current tick; no jiffies value leaves the
// kernel.
//
// # Concurrency
//
// A Datapath is safe for concurrent use. Only the daemon Loads a PinDir
// (Load swaps its own program into the pinned link); other processes (CLI,
// status) use Open, which shares the pinned maps without touching the
// program. List changes (Block, Unblock, Allow, Disallow) should come from
// one process per PinDir (the daemon), because ban slots are allocated
// without a cross-process lock.
package bpf
