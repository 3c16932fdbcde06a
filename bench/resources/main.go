// Command resources measures what the synguard daemon itself costs under a
// random-source SYN flood (`make bench-resources`, needs root):
//
//   - CPU: the daemon's utime+stime (/proc/PID/stat) over the flood window,
//     as a share of one core, against an idle window of the same daemon
//     measured just before (the baseline);
//   - memory: the daemon's VmRSS and VmHWM (/proc/PID/status) once the
//     kernel's per-source map holds about a million sources and the daemon
//     has scanned them (a full scan after the flood), and again after a
//     `synguard top`, which reads every source on demand.
//
// The flood is spoofed IPv4 SYNs with a fresh random source each, written
// with an AF_PACKET socket from an attacker namespace at a paced rate
// (default 100k/s), bounded by count; the achieved rate is measured both at
// the sender and by the XDP program's SYN counter, and reported as is.
//
// The daemon is the real binary (go build ./cmd/synguard) in enforce mode
// with the default configuration (poll_interval 1s, full_scan_interval 10s,
// datapath.max_sources 1048576), on a test bed with prefix "sgr" and subnet
// 10.200.63.0/24, pins under /sys/fs/bpf/synguard-bench-resources. Each
// repetition starts a fresh daemon on fresh pins; medians are reported.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/synguard/synguard/bpf"
	"github.com/synguard/synguard/internal/e2e"
	"github.com/synguard/synguard/internal/testbed"
)

const (
	prefix = "sgr"
	subnet = 63
	pinDir = "/sys/fs/bpf/synguard-bench-resources"
)

type options struct {
	reps     int
	rate     float64
	window   time.Duration
	idle     time.Duration
	scanWait time.Duration
	probe    bool
}

// sample is one repetition's figures.
type sample struct {
	idleCPU, floodCPU   float64 // % of one core
	sent                int
	sendRate, xdpRate   float64 // SYN/s
	entries             int     // per-source map entries after the flood
	scans               float64 // full scans between flood end and the RSS read
	rss, hwm            float64 // MiB, after the post-flood full scan
	rssTop, hwmTop      float64 // MiB, after `synguard top --once`
	topTook             time.Duration
	topErr              string
	scanWait            time.Duration // flood end to the first full scan
	log                 string        // daemon warnings and errors
	slowPolls, pollErrs int
}

func main() {
	var o options
	flag.IntVar(&o.reps, "reps", 3, "repetitions (fresh daemon each)")
	flag.Float64Var(&o.rate, "rate", 100000, "target flood rate, SYN/s")
	flag.DurationVar(&o.window, "window", 15*time.Second, "flood (CPU measurement) window; window*rate SYNs are sent")
	flag.DurationVar(&o.idle, "idle", 5*time.Second, "idle baseline window before the flood")
	flag.DurationVar(&o.scanWait, "scan-wait", 120*time.Second, "how long to wait for a full scan after the flood")
	flag.BoolVar(&o.probe, "probe", false, "also read the per-source map from this process during the flood and print what it returns")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench-resources: needs root (network namespaces, XDP)")
		os.Exit(2)
	}
	s := &testbed.Standalone{Log: func(string, ...any) {}}
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- run(ctx, s, o) }()
	var err error
	select {
	case err = <-done:
	case sig := <-sigs:
		fmt.Fprintf(os.Stderr, "\n%s: cleaning up\n", sig)
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
		err = fmt.Errorf("interrupted")
	}
	cancel()
	s.Close()
	_ = e2e.CleanPins(pinDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-resources:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, s *testbed.Standalone, o options) error {
	if err := e2e.CleanPins(pinDir); err != nil {
		return err
	}
	tck, err := clockTicks()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "synguard-bench-")
	if err != nil {
		return err
	}
	s.Cleanup(func() { os.RemoveAll(dir) })
	bin, err := e2e.Build(ctx, dir)
	if err != nil {
		return err
	}
	bed, err := testbed.New(s, testbed.Config{Prefix: prefix, Subnet: subnet, Hosts: []string{"atk"}})
	if err != nil {
		return err
	}
	fmt.Printf("command: %s\n", strings.Join(os.Args, " "))
	fmt.Printf("daemon: %s run (enforce, default config) on %s; flood: AF_PACKET random-source SYNs from %s, target %.0f/s for %v (%d SYNs)\n",
		bin, bed.Server.Iface, bed.Host("atk").Name, o.rate, o.window, int(o.rate*o.window.Seconds()))
	fmt.Printf("%-4s %9s %9s %10s %10s %10s %9s %6s %9s %9s %9s %9s %8s\n", "rep", "idle%", "flood%", "sent/s", "xdp SYN/s",
		"entries", "scans", "slow", "RSS MiB", "HWM MiB", "RSS top", "HWM top", "top")
	var all []sample
	for i := 1; i <= o.reps; i++ {
		sm, err := rep(ctx, bed, bin, filepath.Join(dir, strconv.Itoa(i)), o, tck)
		if err != nil {
			return fmt.Errorf("repetition %d: %w", i, err)
		}
		all = append(all, sm)
		fmt.Printf("%-4d %9.2f %9.2f %10.0f %10.0f %10d %9.0f %6d %9.1f %9.1f %9.1f %9.1f %8v\n", i, sm.idleCPU, sm.floodCPU, sm.sendRate, sm.xdpRate,
			sm.entries, sm.scans, sm.slowPolls, sm.rss, sm.hwm, sm.rssTop, sm.hwmTop, sm.topTook.Round(time.Millisecond))
		if sm.scanWait < 0 {
			fmt.Printf("     NO full scan within %v after the flood ended; %d slow polls, %d failed polls\n", o.scanWait, sm.slowPolls, sm.pollErrs)
		} else {
			fmt.Printf("     first full scan %v after the flood ended; %d slow polls, %d failed polls\n", sm.scanWait.Round(time.Second), sm.slowPolls, sm.pollErrs)
		}
		if sm.topErr != "" {
			fmt.Printf("     synguard top --once FAILED: %s\n", sm.topErr)
		}
		if sm.log != "" {
			fmt.Printf("     daemon warnings:\n%s", sm.log)
		}
	}
	med := func(f func(sample) float64) float64 {
		v := make([]float64, len(all))
		for i, s := range all {
			v[i] = f(s)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	floodCPU := med(func(s sample) float64 { return s.floodCPU })
	idleCPU := med(func(s sample) float64 { return s.idleCPU })
	hwm := med(func(s sample) float64 { return s.hwm })
	fmt.Printf("\nmedians over %d repetitions:\n", len(all))
	fmt.Printf("  achieved flood rate: %.0f SYN/s sent, %.0f SYN/s seen by XDP (target %.0f)\n",
		med(func(s sample) float64 { return s.sendRate }), med(func(s sample) float64 { return s.xdpRate }), o.rate)
	fmt.Printf("  daemon CPU: %.2f%% of one core during the flood (target < 5%%), %.2f%% idle; ratio %.1fx\n",
		floodCPU, idleCPU, floodCPU/max(idleCPU, 0.01))
	fmt.Printf("  per-source map entries after the flood: %.0f\n", med(func(s sample) float64 { return float64(s.entries) }))
	fmt.Printf("  daemon memory after a full scan of them: VmRSS %.1f MiB, VmHWM %.1f MiB (target < 150 MiB)\n",
		med(func(s sample) float64 { return s.rss }), hwm)
	fmt.Printf("  after `synguard top --once`: VmRSS %.1f MiB, VmHWM %.1f MiB (top took %v)\n",
		med(func(s sample) float64 { return s.rssTop }), med(func(s sample) float64 { return s.hwmTop }),
		time.Duration(med(func(s sample) float64 { return float64(s.topTook) })).Round(time.Millisecond))
	return nil
}

// rep runs one repetition on a fresh daemon and fresh pins.
func rep(ctx context.Context, bed *testbed.Bed, bin, dir string, o options, tck float64) (sample, error) {
	var sm sample
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return sm, err
	}
	rs := &testbed.Standalone{Log: func(string, ...any) {}}
	defer rs.Close()
	env, err := e2e.NewEnv(rs, e2e.Options{Bed: bed, Bin: bin, Dir: dir, BPFFS: pinDir, Mode: "enforce", PollInterval: time.Second})
	if err != nil {
		return sm, err
	}
	d, err := env.Start(ctx)
	if err != nil {
		return sm, err
	}
	defer d.Kill()
	if err := sleep(ctx, 3*time.Second); err != nil { // start-up: first full scan, protected peers
		return sm, err
	}
	kern, err := env.Kernel()
	if err != nil {
		return sm, err
	}
	defer kern.Close()

	c0, err := cpuTicks(d.PID)
	if err != nil {
		return sm, err
	}
	t0 := time.Now()
	if err := sleep(ctx, o.idle); err != nil {
		return sm, err
	}
	c1, err := cpuTicks(d.PID)
	if err != nil {
		return sm, err
	}
	sm.idleCPU = 100 * (c1 - c0) / tck / time.Since(t0).Seconds()

	snd, err := newSender(bed.Host("atk"), bed.Server, 80, bed.Config.Prefix4())
	if err != nil {
		return sm, err
	}
	defer snd.Close()
	k0, err := kern.Counters()
	if err != nil {
		return sm, err
	}
	c0, err = cpuTicks(d.PID)
	if err != nil {
		return sm, err
	}
	t0 = time.Now()
	if o.probe {
		go probe(kern, o.window*2/5)
	}
	sent, took, err := snd.flood(ctx, int(o.rate*o.window.Seconds()), o.rate)
	if err != nil {
		return sm, err
	}
	c1, err = cpuTicks(d.PID)
	if err != nil {
		return sm, err
	}
	wall := time.Since(t0).Seconds()
	k1, err := kern.Counters()
	if err != nil {
		return sm, err
	}
	sm.floodCPU = 100 * (c1 - c0) / tck / wall
	sm.sent, sm.sendRate = sent, float64(sent)/took.Seconds()
	sm.xdpRate = float64(k1.SYN-k0.SYN) / wall

	// Memory: once the daemon has scanned the full table after the flood.
	m0, err := env.Metrics(ctx)
	if err != nil {
		return sm, err
	}
	floodEnd := time.Now()
	for deadline := time.Now().Add(o.scanWait); ; {
		if err := sleep(ctx, time.Second); err != nil {
			return sm, err
		}
		m, err := env.Metrics(ctx)
		if err != nil {
			return sm, err
		}
		if sm.scans = m["synguard_full_scans_total"] - m0["synguard_full_scans_total"]; sm.scans >= 1 {
			sm.scanWait = time.Since(floodEnd)
			break
		}
		if time.Now().After(deadline) {
			sm.scanWait = -1 // reported; memory is read anyway
			break
		}
	}
	srcs, err := kern.Sources()
	if err != nil {
		return sm, err
	}
	sm.entries = len(srcs)
	srcs = nil
	if sm.rss, sm.hwm, err = memory(d.PID); err != nil {
		return sm, err
	}
	t0 = time.Now()
	r, err := env.CLI(ctx, "top", "--once", "-n", "5")
	if err != nil {
		return sm, err
	}
	sm.topTook = time.Since(t0)
	if r.Code != 0 {
		sm.topErr = fmt.Sprintf("exit %d after %v: %s", r.Code, sm.topTook.Round(time.Millisecond), strings.TrimSpace(string(r.Stderr)))
	}
	if sm.rssTop, sm.hwmTop, err = memory(d.PID); err != nil {
		return sm, err
	}
	out := d.Output()
	sm.slowPolls = strings.Count(out, "slow poll")
	sm.pollErrs = strings.Count(out, "poll failed")
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			sm.log += "    " + l + "\n"
		}
	}
	if d.Exited() {
		return sm, fmt.Errorf("daemon exited during the run:\n%s", out)
	}
	return sm, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// cpuTicks is utime+stime of pid in clock ticks (/proc/PID/stat fields 14
// and 15, counted after the parenthesised command name).
func cpuTicks(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	ut, err1 := strconv.ParseFloat(f[11], 64) // field 14
	st, err2 := strconv.ParseFloat(f[12], 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat utime %q stime %q", pid, f[11], f[12])
	}
	return ut + st, nil
}

// memory is VmRSS and VmHWM of pid in MiB.
func memory(pid int) (rss, hwm float64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/status %s: %q", pid, k, v)
		}
		if k == "VmRSS" {
			rss = kb / 1024
		} else {
			hwm = kb / 1024
		}
	}
	return rss, hwm, sc.Err()
}

// clockTicks is CLK_TCK, the unit of /proc/PID/stat times.
func clockTicks() (float64, error) {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return 0, fmt.Errorf("getconf CLK_TCK: %w", err)
	}
	return strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
}

// probe reads the per-source map once, after, during the flood, the way
// the daemon's full scan does, and prints what came back.
func probe(kern interface {
	Sources() ([]bpf.Source, error)
}, after time.Duration) {
	time.Sleep(after)
	t0 := time.Now()
	srcs, err := kern.Sources()
	took := time.Since(t0)
	var minSeen, maxSeen time.Time
	for _, s := range srcs {
		if minSeen.IsZero() || s.LastSeen.Before(minSeen) {
			minSeen = s.LastSeen
		}
		if s.LastSeen.After(maxSeen) {
			maxSeen = s.LastSeen
		}
	}
	fmt.Printf("     probe: Sources() during the flood returned %d entries in %v (err %v); last seen %v .. %v ago\n",
		len(srcs), took.Round(time.Millisecond), err, time.Since(maxSeen).Round(time.Millisecond), time.Since(minSeen).Round(time.Millisecond))
}
