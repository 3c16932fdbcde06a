#!/bin/sh
# Resource benchmark of the synguard daemon: CPU during a random-source SYN
# flood, resident memory with a million tracked sources. Needs root, creates
# and removes its own test bed (namespaces sgr-*, 10.200.63.0/24, pins under
# /sys/fs/bpf/synguard-bench-resources). Takes about 4 minutes with the
# defaults. Flags go to the Go program, e.g.:
#     bench/resources.sh -reps 5 -rate 100000 -window 15s -senders 2
# See `go doc ./bench/resources` for what is measured and how.
set -eu
if [ "$(id -u)" != 0 ]; then
	echo "bench/resources.sh: needs root (network namespaces, XDP)" >&2
	exit 2
fi
cd "$(dirname "$0")/.."
# Built, then exec'd (not `go run`), so that SIGINT/SIGTERM reach the
# benchmark itself and it cleans up.
bin="${TMPDIR:-/tmp}/synguard-bench-resources"
"${GO:-go}" build -o "$bin" ./bench/resources
exec "$bin" "$@"
