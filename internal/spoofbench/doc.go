// Package spoofbench measures, live in network namespaces, whether real
// users still get through to an overloaded server during a random-source
// (spoofed) SYN flood, without and with synguard's service protection, in
// the same run on the same bed. It holds only the measurement
// (spoofbench_test.go); run it as root with
//
//	go test -count=1 -v -run TestSpoofedFlood ./internal/spoofbench/
//
// The server namespace has SYN cookies off, somaxconn, tcp_max_syn_backlog
// and the listen backlog at 64 and tcp_no_metrics_save=1; its default route
// goes through the bed's router namespace, which blackholes what it would
// route, so SYN-ACKs to spoofed sources die silently (internal/testbed,
// prefix "sgp", 10.200.50.0/24). Each phase floods for 10 s with hping3
// --flood --rand-source (bounded by timeout) and two clients start a new
// connection every 100 ms, each with a 1 s timeout, success meaning the
// listener's greeting arrived: "old" made one connection before the flood,
// "new" connects first during it. SYNs reaching the server's TCP stack are
// counted by an nftables rule at the end of the input hook (after
// SYNPROXY), SYNs entering IP by one at the start of prerouting.
//
// Phases: without synguard; with the XDP program in native and in generic
// mode, the service protected with XDP SYN cookies and nftables SYNPROXY
// (internal/synproxy); and the fallback for hosts where that is impossible
// (kernel SYN cookies on, XDP budget only), without and with a budget.
// Protection starts as the flood starts (the daemon's detection delay is
// not part of this measurement).
package spoofbench
