package bpf

// The XDP program is compiled ahead of time and its bpf2go output
// (synguard_bpfel.go, synguard_bpfel.o) is committed, so building needs only
// Go. Regenerate with `make generate` (needs Debian clang 14, llvm-strip and
// libbpf-dev); the output is byte-identical for the same clang.
//
// -mcpu=v3 gives the atomic fetch-add and compare-and-swap instructions
// (kernel >= 5.12).

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel -type source_stats -type service_key -type service_stats -type lpm_key -type ban_ref -type ban_hits -type global_counters -type protection synguard synguard.c -- -I/usr/include/x86_64-linux-gnu
