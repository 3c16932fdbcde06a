package synproxy

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/testbed"
)

// BenchmarkConntrackCost measures what enforce mode with protection.cookies
// costs traffic that is not under attack: Prepare's table makes conntrack
// track every connection in the namespace (see the package doc). Each
// iteration opens a TCP connection from a client namespace to a listener in
// the server namespace and reads its greeting, once with conntrack off
// (Unprepare) and once with it on (Prepare), in alternating rounds so that
// drift hits both alike. It reports ns per connection for each and their
// ratio (x-off):
//
//	go test -run '^$' -bench ConntrackCost -count 6 ./internal/synproxy/
//
// Prefix "sgpc", 10.200.53.0/24.
func BenchmarkConntrackCost(b *testing.B) {
	testbed.RequireRoot(b)
	bed, err := testbed.New(b, testbed.Config{Prefix: "sgpc", Subnet: 53, Hosts: []string{"cli"}})
	if err != nil {
		b.Fatal(err)
	}
	srv, cli := bed.Server, bed.Host("cli")
	const port = 8080
	stop, err := srv.ServeGreeting(port)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(stop)
	ctx := context.Background()
	m, err := New(Options{Run: srv.RunInput})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Unprepare(ctx) })
	svc := netip.AddrPortFrom(srv.Addr4, port)

	const rounds = 8
	var took [2]time.Duration // [conntrack off, on]
	b.ResetTimer()
	for left := b.N; left > 0; {
		n := min((b.N+rounds-1)/rounds, left)
		for i, tracked := range []bool{false, true} {
			b.StopTimer()
			toggle := m.Unprepare
			if tracked {
				toggle = m.Prepare
			}
			if err := toggle(ctx); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			start := time.Now()
			for range n {
				if ok, why := cli.DialGreeting(svc, 2*time.Second); !ok {
					b.Fatalf("connection (conntrack %v) failed: %s", tracked, why)
				}
			}
			took[i] += time.Since(start)
		}
		left -= n
	}
	b.StopTimer()
	off := float64(took[0].Nanoseconds()) / float64(b.N)
	on := float64(took[1].Nanoseconds()) / float64(b.N)
	b.ReportMetric(off, "off-ns/conn")
	b.ReportMetric(on, "on-ns/conn")
	b.ReportMetric(on/off, "x-off")
}
