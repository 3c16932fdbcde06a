#!/usr/bin/env bash
# Records the launch-day captures in this directory with real tools on a
# throw-away network-namespace test bed, so that `go test ./internal/replay`
# replays traffic that real clients and real flood tools produced.
#
#   sudo ./record.sh            # all four captures
#   sudo ./record.sh slow-bots  # one of them
#
# Needs root, iproute2, nftables, python3, curl, wrk, hping3 and tcpdump
# (Debian: apt-get install iproute2 nftables python3 curl wrk hping3 tcpdump).
#
# The bed (prefix sgr, 10.200.90.0/24 and 10.200.91-92.0/24):
#   sgr-srv  the server: bridge sgr-br 10.200.90.1, python3 http.server on
#            port 80 (its listen backlog is 5: a small portal), tcpdump on
#            the bridge (Ethernet frames, both directions, 128 bytes)
#   sgr-cli  legitimate clients: 10.200.90.10-14 and, for the flash crowd,
#            160 more on 10.200.91.1-160; curl and wrk
#   sgr-atk  the attacker 10.200.90.66 and 40 bots on 10.200.92.1-40;
#            hping3, its outgoing RSTs dropped as a raw flood tool's are
# Every flood is bounded by a count; everything is deleted on exit, also
# after a failure or ^C. No interface outside the bed is touched.
set -euo pipefail
cd "$(dirname "$0")"

need=(ip nft python3 curl wrk hping3 tcpdump)
missing=()
for c in "${need[@]}"; do command -v "$c" >/dev/null || missing+=("$c"); done
if [ "${#missing[@]}" -gt 0 ]; then
	echo "record.sh: missing: ${missing[*]} (Debian: apt-get install iproute2 nftables python3 curl wrk hping3 tcpdump)" >&2
	exit 1
fi
[ "$(id -u)" = 0 ] || { echo "record.sh: needs root (network namespaces, raw sockets)" >&2; exit 1; }

P=sgr
SRV=10.200.90.1
in_ns() { ip netns exec "$P-$1" "${@:2}"; }

cleanup() {
	set +e
	for ns in srv cli atk; do
		ip netns pids "$P-$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
		ip netns del "$P-$ns" 2>/dev/null
	done
}
trap cleanup EXIT INT TERM

bed() {
	cleanup
	for ns in srv cli atk; do ip netns add "$P-$ns"; done
	in_ns srv ip link add "$P-br" type bridge
	for h in cli atk; do
		ip link add "$P-$h" netns "$P-$h" type veth peer name "$P-s$h" netns "$P-srv"
		in_ns srv ip link set "$P-s$h" master "$P-br" up
		in_ns "$h" ip link set "$P-$h" up
		in_ns "$h" ip link set lo up
	done
	in_ns srv ip addr add "$SRV/16" dev "$P-br"
	in_ns srv ip link set "$P-br" up
	in_ns srv ip link set lo up
	for i in 10 11 12 13 14; do in_ns cli ip addr add "10.200.90.$i/16" dev "$P-cli"; done
	for i in $(seq 1 160); do in_ns cli ip addr add "10.200.91.$i/16" dev "$P-cli"; done
	in_ns atk ip addr add 10.200.90.66/16 dev "$P-atk"
	for i in $(seq 1 40); do in_ns atk ip addr add "10.200.92.$i/16" dev "$P-atk"; done
	in_ns atk nft "add table inet sgr_norst; add chain inet sgr_norst out { type filter hook output priority 0; policy accept; }; add rule inet sgr_norst out tcp flags & rst == rst drop"
	in_ns atk nft list table inet sgr_norst | grep -q drop
	mkdir -p /tmp/sgr-www && echo "booking page" >/tmp/sgr-www/index.html
	ip netns exec "$P-srv" python3 -m http.server 80 --bind "$SRV" --directory /tmp/sgr-www >/dev/null 2>&1 &
	for _ in $(seq 50); do in_ns cli curl -s -o /dev/null --max-time 1 "http://$SRV/" && return 0; sleep 0.1; done
	echo "record.sh: the server did not come up" >&2
	exit 1
}

# capture NAME: starts tcpdump on the bridge into NAME.pcap.
capture() {
	# Not through in_ns: a backgrounded function is a subshell, and the
	# SIGINT that makes tcpdump flush must reach tcpdump itself.
	ip netns exec "$P-srv" tcpdump -q -U -i "$P-br" -s 128 -w "$1.pcap" tcp >/dev/null 2>&1 &
	TCPDUMP=$!
	sleep 1
}
stop_capture() {
	sleep 1
	kill -INT "$TCPDUMP"
	wait "$TCPDUMP" 2>/dev/null || true
}

# Jobs to wait for (a bare wait would wait for the server too).
JOBS=()
wait_jobs() {
	for j in "${JOBS[@]}"; do wait "$j" || true; done
	JOBS=()
}

# clients SECONDS: the five regular clients fetch the page every 200 ms.
clients() {
	local end=$((SECONDS + $1))
	for i in 10 11 12 13 14; do
		(while [ "$SECONDS" -lt "$end" ]; do
			in_ns cli curl -s -o /dev/null --max-time 3 --interface "10.200.90.$i" "http://$SRV/" || true
			sleep 0.2
		done) &
		JOBS+=($!)
	done
}

flood_first_second() {
	bed
	capture flood-first-second
	# The flood and the service's first ever SYN come together.
	in_ns atk hping3 -q -S -p 80 --rand-source -i u500 -c 4000 "$SRV" >/dev/null 2>&1 &
	JOBS+=($!)
	clients 4
	wait_jobs
	sleep 2
	stop_capture
}

flash_crowd() {
	bed
	capture flash-crowd
	clients 6
	sleep 2
	# 160 clients never seen before arrive within a second; each fetches
	# the page twice. The backlog of 5 overflows; the kernel's SYN cookies
	# (on by default) and retransmissions let them all in.
	for i in $(seq 1 160); do
		(in_ns cli curl -s -o /dev/null -o /dev/null --max-time 10 --interface "10.200.91.$i" "http://$SRV/" "http://$SRV/" || true) &
		JOBS+=($!)
		sleep 0.006
	done
	wait_jobs
	stop_capture
}

slow_bots() {
	bed
	capture slow-bots
	clients 12
	sleep 2
	# 40 real hosts at 25 SYN/s each (1,000 SYN/s together, each below the
	# per-source bar), never completing a handshake, for 8 s.
	for i in $(seq 1 40); do
		in_ns atk hping3 -q -S -p 80 -a "10.200.92.$i" -i u40000 -c 200 "$SRV" >/dev/null 2>&1 &
		JOBS+=($!)
	done
	wait_jobs
	stop_capture
}

spoofed_after_normal() {
	bed
	capture spoofed-after-normal
	# 70 s of normal traffic, with a wrk burst in the middle, so that the
	# service's baseline is learned; then a spoofed flood.
	clients 76
	sleep 30
	in_ns cli wrk -t1 -c2 -d1s "http://$SRV/" >/dev/null 2>&1 || true
	sleep 40
	in_ns atk hping3 -q -S -p 80 --rand-source -i u500 -c 6000 "$SRV" >/dev/null 2>&1 || true
	wait_jobs
	stop_capture
}

names=("$@")
[ "${#names[@]}" -gt 0 ] || names=(flood-first-second flash-crowd slow-bots spoofed-after-normal)
for n in "${names[@]}"; do
	echo "recording $n.pcap"
	"${n//-/_}"
	cleanup
	ls -l "$n.pcap"
done
