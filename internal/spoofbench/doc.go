// Package spoofbench measures, live in network namespaces, whether real
// users still get through to an overloaded server during a random-source
// (spoofed) SYN flood, without and with synguard's service protection, in
// the same run. It holds only the measurement (spoofbench_test.go); run it
// as root with
//
//	go test -count=1 -v -run TestSpoofedFlood ./internal/spoofbench/
//
// The server namespace has SYN cookies off, somaxconn, tcp_max_syn_backlog
// and the listen backlog at 64 and tcp_no_metrics_save=1; its default route
// goes through the bed's router namespace, which blackholes what it would
// route, so SYN-ACKs to spoofed sources die silently (internal/testbed).
// hping3 floods from an attacker namespace at its top rate with random
// sources; two clients make new connections (1 s timeout each, success =
// the listener's greeting arrived): "old" connected once before the flood,
// "new" connects first during it. SYNs reaching the server's TCP stack are
// counted by an nftables rule at the end of the input hook (after
// SYNPROXY), so SYNs that XDP dropped or answered, or that SYNPROXY
// answered, are not counted.
package spoofbench
