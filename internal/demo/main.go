// Command demo (`make demo`, needs root) shows synguard stopping a SYN
// flood on a throw-away network-namespace test bed, in well under a minute:
// it builds synguard, starts it in enforce mode on the bed's server, floods
// the server with hping3 from an attacker namespace while a legitimate
// client keeps making HTTP requests from another, shows `synguard status`
// and `synguard top` during the flood, and sums up what happened.
//
// Everything it creates (namespaces "sgx-*", subnet 10.200.62.0/24, pins
// under /sys/fs/bpf/synguard-demo) is removed at the end, on Ctrl-C or
// SIGTERM, and at the start of the next run if a previous one was killed.
package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/synguard/synguard/internal/api"
	"github.com/synguard/synguard/internal/e2e"
	"github.com/synguard/synguard/internal/testbed"
)

const (
	prefix = "sgx"
	subnet = 62
	pinDir = "/sys/fs/bpf/synguard-demo"
	// The flood: 8000 SYNs, one every 250 µs (hping3 paces at about
	// 2-4k SYN/s here), bounded by count and by timeout.
	floodCount    = 8000
	floodInterval = 250 * time.Microsecond
)

func main() {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root (creates network namespaces and attaches XDP); run `sudo make demo`")
		os.Exit(2)
	}
	s := &testbed.Standalone{Log: func(string, ...any) {}}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, s) }()
	select {
	case err := <-done:
		s.Close()
		if err != nil {
			fmt.Fprintln(os.Stderr, "demo failed:", err)
			os.Exit(1)
		}
		fmt.Println("\nTest bed removed. Done.")
	case sig := <-sigs:
		fmt.Printf("\n%s: stopping and cleaning up the test bed...\n", sig)
		// Cancelling stops the build, the flood and the CLI calls; give run
		// a moment to return so nothing writes into what Close removes.
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
		s.Close()
		fmt.Println("Test bed removed.")
		os.Exit(130)
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run(ctx context.Context, s *testbed.Standalone) error {
	t0 := time.Now()
	// Leftovers of a killed run (New also removes old sgx-* namespaces).
	if err := e2e.CleanPins(pinDir); err != nil {
		return err
	}

	step("Building synguard (go build ./cmd/synguard)")
	dir, err := os.MkdirTemp("", "synguard-demo-")
	if err != nil {
		return err
	}
	s.Cleanup(func() { os.RemoveAll(dir) })
	bin, err := e2e.Build(ctx, dir)
	if err != nil {
		return err
	}

	step("Creating a test bed of network namespaces (10.200.%d.0/24)", subnet)
	bed, err := testbed.New(s, testbed.Config{Prefix: prefix, Subnet: subnet, Hosts: []string{"cli", "atk"}})
	if err != nil {
		return err
	}
	srv, cli, atk := bed.Server, bed.Host("cli"), bed.Host("atk")
	fmt.Printf("    server   %-12s %s  (web server on port 80; synguard protects its interface %s)\n", srv.Name, srv.Addr4, srv.Iface)
	fmt.Printf("    client   %-12s %s  (a legitimate user: one HTTP request every 20 ms)\n", cli.Name, cli.Addr4)
	fmt.Printf("    attacker %-12s %s  (hping3 SYN flood, never completes a handshake)\n", atk.Name, atk.Addr4)
	if _, err := srv.ServeHTTP(80, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from the protected server")
	})); err != nil {
		return err
	}
	hook, err := e2e.StartWebhook(s, srv, dir)
	if err != nil {
		return err
	}

	step("Starting `synguard run` in enforce mode on %s", srv.Iface)
	env, err := e2e.NewEnv(s, e2e.Options{Bed: bed, Bin: bin, Dir: dir, BPFFS: pinDir, Mode: "enforce",
		PollInterval: 250 * time.Millisecond, Extra: hook.SinkYAML()})
	if err != nil {
		return err
	}
	d, err := env.Start(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("    pid %d, config %s, alerts go to a local signed webhook\n", d.PID, env.ConfigPath)

	url := fmt.Sprintf("http://%s/", srv.Addr4)
	client := e2e.StartClient(cli, url, 20*time.Millisecond, 3*time.Second)
	defer client.Stop()
	if err := sleep(ctx, time.Second); err != nil {
		return err
	}

	step("Flooding %s:80 from %s: hping3 -S -p 80 -i u%d -c %d (bounded by count and timeout)", srv.Addr4, atk.Addr4, floodInterval.Microseconds(), floodCount)
	if err := atk.DropOutgoingRST(); err != nil { // as a raw flood tool's stack would
		return err
	}
	type result struct {
		sent int
		err  error
	}
	done := make(chan result, 1)
	floodStart := time.Now()
	go func() {
		n, err := atk.Flood(ctx, testbed.Flood{To: netip.AddrPortFrom(srv.Addr4, 80), Count: floodCount, Interval: floodInterval, Timeout: 20 * time.Second})
		done <- result{n, err}
	}()
	atkPrefix := netip.PrefixFrom(atk.Addr4, 32)
	var banAfter time.Duration
	for deadline := floodStart.Add(10 * time.Second); banAfter == 0 && time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(25 * time.Millisecond) {
		bans, _, err := env.Bans(ctx, false)
		if err != nil {
			return err
		}
		if slices.ContainsFunc(bans, func(b api.Ban) bool { return b.Prefix == atkPrefix }) {
			banAfter = time.Since(floodStart)
			fmt.Printf("    %s banned %v after the flood started\n", atk.Addr4, banAfter.Round(time.Millisecond))
		}
	}
	if banAfter == 0 {
		fmt.Println("    the attacker was NOT banned within 10 s (see the daemon log below)")
	}
	if err := sleep(ctx, 500*time.Millisecond); err != nil {
		return err
	}
	step("During the flood: synguard status")
	if err := show(ctx, env, "status"); err != nil {
		return err
	}
	step("During the flood: synguard top --once -n 5")
	if err := show(ctx, env, "top", "--once", "-n", "5"); err != nil {
		return err
	}
	fmt.Println("    (a banned source's SYN/s reads 0: XDP drops its packets before counting them)")

	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	floodEnd := time.Now()
	if r.err != nil {
		return fmt.Errorf("flood: %w", r.err)
	}
	if err := sleep(ctx, 500*time.Millisecond); err != nil {
		return err
	}
	reqs := client.Stop()
	n, ok, errs := e2e.Tally(reqs, floodStart, floodEnd)
	if err := sleep(ctx, 2*env.PollInterval); err != nil {
		return err
	}

	step("After the flood: synguard list bans")
	if err := show(ctx, env, "list", "bans"); err != nil {
		return err
	}
	step("synguard explain %s", atk.Addr4)
	if err := show(ctx, env, "explain", atk.Addr4.String()); err != nil {
		return err
	}

	st, err := env.Status(ctx)
	if err != nil {
		return err
	}
	step("What happened")
	fmt.Printf("    flood:            %d SYNs from %s in %v\n", r.sent, atk.Addr4, floodEnd.Sub(floodStart).Round(time.Millisecond))
	if banAfter > 0 {
		fmt.Printf("    time to ban:      %v after hping3 started (the XDP program raised an early warning\n", banAfter.Round(time.Millisecond))
		fmt.Printf("                      after 100 unanswered SYNs; the daemon banned the source in the kernel)\n")
	}
	fmt.Printf("    dropped in XDP:   %d packets (%.1f%% of the flood never reached the server's TCP stack)\n",
		st.Counters.Dropped, 100*float64(st.Counters.Dropped)/float64(max(r.sent, 1)))
	fmt.Printf("    legitimate user:  %d of %d HTTP requests during the flood succeeded (%.2f%%)\n", ok, n, 100*float64(ok)/float64(max(n, 1)))
	for _, e := range errs {
		fmt.Printf("                      failed: %v\n", e)
	}
	for _, m := range hook.Messages() {
		fmt.Printf("    alert delivered:  %s (webhook %s, signature %s)\n", m.Summary, m.ID, verdict(m.VerifyErr))
	}
	fmt.Printf("    demo took %v\n", time.Since(t0).Round(100*time.Millisecond))
	if banAfter == 0 {
		fmt.Printf("\ndaemon log:\n%s", d.Output())
		return fmt.Errorf("attacker not banned")
	}
	return nil
}

// show runs a synguard command the way an operator would and prints it.
func show(ctx context.Context, env *e2e.Env, args ...string) error {
	fmt.Printf("    $ synguard %s\n", strings.Join(args, " "))
	r, err := env.CLI(ctx, args...)
	if err != nil {
		return err
	}
	out := bytes.TrimRight(append(r.Stdout, r.Stderr...), "\n")
	for _, l := range strings.Split(string(out), "\n") {
		fmt.Printf("    | %s\n", l)
	}
	if r.Code != 0 {
		return fmt.Errorf("synguard %s: exit %d", strings.Join(args, " "), r.Code)
	}
	return nil
}

func verdict(err error) string {
	if err != nil {
		return "INVALID: " + err.Error()
	}
	return "verified"
}
