// Command resources measures what the synguard daemon itself costs
// (`make bench-resources`, needs root), in two phases per repetition, each
// on a fresh daemon with fresh pins:
//
//   - CPU: the daemon's utime+stime (/proc/PID/stat) over a random-source
//     SYN flood, as a share of one core, against an idle window of the same
//     daemon just before (the baseline). The flood is spoofed IPv4 SYNs with
//     a fresh random source each, written with AF_PACKET sockets from an
//     attacker namespace at a paced rate (default 100k/s), bounded by count;
//     the achieved rate is measured at the sender and by the XDP program's
//     SYN counter, and reported as is.
//   - memory: the daemon's VmRSS and VmHWM (/proc/PID/status) once the
//     kernel's per-source map holds about a million sources that the daemon
//     scans and tracks (each has 5 SYNs, the daemon's full-scan bar; filled
//     by running the daemon's own XDP program with BPF_PROG_RUN, see fill),
//     after a full scan; and again after `synguard top --once`, which reads
//     every source on demand. A sample of sources is checked with
//     `synguard explain` to confirm the detector tracks them.
//
// The daemon is the real binary (go build ./cmd/synguard) in enforce mode
// with the default configuration (poll_interval 1s, full_scan_interval 10s,
// datapath.max_sources 1048576), on a test bed with prefix "sgr" and subnet
// 10.200.63.0/24, pins under /sys/fs/bpf/synguard-bench-resources. Medians
// over the repetitions are reported with every repetition's figures.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

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
	senders  int
	sources  int
	syns     int
}

// sample is one repetition's figures.
type sample struct {
	// CPU phase.
	idleCPU, floodCPU  float64 // % of one core
	sent               int
	sendRate, xdpRate  float64 // SYN/s
	floodFrom, floodTo time.Time
	cpuSlowPolls       int
	cpuLog             string // daemon warnings and errors
	// Memory phase.
	entries          int           // per-source map entries after the fill
	fillTook         time.Duration // BPF_PROG_RUN fill
	scanWait         time.Duration // fill end to the end of a full scan; <0: none
	sampled, tracked int           // sources asked about with explain, and tracked by the detector
	scanned          int           // largest full-scan snapshot in the daemon's log (slow polls only)
	rss, hwm         float64       // MiB, after the full scan
	rssTop, hwmTop   float64       // MiB, after `synguard top --once`
	heapInuse        float64       // MiB, Go heap in use after the scan (go_memstats_heap_inuse_bytes)
	heapHeld         float64       // MiB, idle heap not yet returned to the OS
	topTook          time.Duration
	topErr           string
	memLog           string
}

func main() {
	var o options
	flag.IntVar(&o.reps, "reps", 3, "repetitions (fresh daemon and pins for each phase)")
	flag.Float64Var(&o.rate, "rate", 100000, "target flood rate, SYN/s")
	flag.IntVar(&o.senders, "senders", 2, "AF_PACKET sender threads (the rate is split between them)")
	flag.DurationVar(&o.window, "window", 30*time.Second, "flood (CPU measurement) window; window*rate SYNs are sent")
	flag.DurationVar(&o.idle, "idle", 5*time.Second, "idle baseline window before the flood")
	flag.IntVar(&o.sources, "sources", 1<<20, "distinct sources for the memory phase (the map holds 1048576)")
	flag.IntVar(&o.syns, "syns", 5, "SYNs per source in the memory phase (the daemon's full scans skip sources with fewer than 5)")
	flag.DurationVar(&o.scanWait, "scan-wait", 60*time.Second, "how long to wait for a full scan after the fill")
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
	fmt.Printf("daemon: synguard run, enforce mode, default config (poll_interval 1s, full_scan_interval 10s), on %s\n", bed.Server.Iface)
	fmt.Printf("CPU phase: AF_PACKET random-source SYNs from %s, %d sender(s), target %.0f/s for %v (%d SYNs)\n",
		bed.Host("atk").Name, o.senders, o.rate, o.window, int(o.rate*o.window.Seconds()))
	fmt.Printf("memory phase: %d distinct sources x %d SYNs through the daemon's XDP program (BPF_PROG_RUN), then a full scan\n\n", o.sources, o.syns)
	fmt.Printf("%-4s %7s %7s %9s %9s | %9s %6s %7s %8s %8s %8s %8s %8s\n", "rep", "idle%", "flood%", "sent/s", "xdp SYN/s",
		"entries", "scan", "tracked", "RSS MiB", "HWM MiB", "RSS top", "HWM top", "top")
	var all []sample
	for i := 1; i <= o.reps; i++ {
		var sm sample
		rdir := filepath.Join(dir, strconv.Itoa(i))
		if err := cpuPhase(ctx, bed, bin, rdir+"c", o, tck, &sm); err != nil {
			return fmt.Errorf("repetition %d, CPU phase: %w", i, err)
		}
		if err := memPhase(ctx, bed, bin, rdir+"m", o, &sm); err != nil {
			return fmt.Errorf("repetition %d, memory phase: %w", i, err)
		}
		all = append(all, sm)
		scan := "none"
		if sm.scanWait >= 0 {
			scan = sm.scanWait.Round(time.Second).String()
		}
		fmt.Printf("%-4d %7.2f %7.2f %9.0f %9.0f | %9d %6s %4d/%-2d %8.1f %8.1f %8.1f %8.1f %8v\n", i, sm.idleCPU, sm.floodCPU, sm.sendRate, sm.xdpRate,
			sm.entries, scan, sm.tracked, sm.sampled, sm.rss, sm.hwm, sm.rssTop, sm.hwmTop, sm.topTook.Round(time.Millisecond))
		fmt.Printf("     flood %s .. %s UTC, %d slow polls; fill took %v; largest full-scan snapshot %d sources\n", sm.floodFrom.UTC().Format("15:04:05.000"),
			sm.floodTo.UTC().Format("15:04:05.000"), sm.cpuSlowPolls, sm.fillTook.Round(time.Millisecond), sm.scanned)
		fmt.Printf("     daemon Go heap after the scan: %.1f MiB in use, %.1f MiB idle and not yet released\n", sm.heapInuse, sm.heapHeld)
		if sm.topErr != "" {
			fmt.Printf("     synguard top --once FAILED: %s\n", sm.topErr)
		}
		if sm.cpuLog != "" {
			fmt.Printf("     daemon warnings, CPU phase:\n%s", sm.cpuLog)
		}
		if sm.memLog != "" {
			fmt.Printf("     daemon warnings, memory phase:\n%s", sm.memLog)
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
	fmt.Printf("\nmedians over %d repetitions:\n", len(all))
	fmt.Printf("  achieved flood rate: %.0f SYN/s sent, %.0f SYN/s seen by XDP (target %.0f)\n",
		med(func(s sample) float64 { return s.sendRate }), med(func(s sample) float64 { return s.xdpRate }), o.rate)
	fmt.Printf("  daemon CPU during the flood: %.2f%% of one core (target < 5%%); idle baseline %.2f%%, ratio %.1fx\n",
		floodCPU, idleCPU, floodCPU/max(idleCPU, 0.01))
	fmt.Printf("  per-source map entries after the fill: %.0f; detector tracked %.0f of %d sampled\n",
		med(func(s sample) float64 { return float64(s.entries) }), med(func(s sample) float64 { return float64(s.tracked) }), all[0].sampled)
	fmt.Printf("  daemon memory after a full scan of them: VmRSS %.1f MiB, VmHWM %.1f MiB (target < 150 MiB)\n",
		med(func(s sample) float64 { return s.rss }), med(func(s sample) float64 { return s.hwm }))
	fmt.Printf("  of which Go heap in use %.1f MiB, idle not released %.1f MiB\n",
		med(func(s sample) float64 { return s.heapInuse }), med(func(s sample) float64 { return s.heapHeld }))
	fmt.Printf("  after `synguard top --once`: VmRSS %.1f MiB, VmHWM %.1f MiB (top took %v)\n",
		med(func(s sample) float64 { return s.rssTop }), med(func(s sample) float64 { return s.hwmTop }),
		time.Duration(med(func(s sample) float64 { return float64(s.topTook) })).Round(time.Millisecond))
	return nil
}

// startDaemon starts a fresh daemon on fresh pins; the returned close
// function kills it and removes the pins.
func startDaemon(ctx context.Context, bed *testbed.Bed, bin, dir string) (*e2e.Env, *e2e.Daemon, func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, nil, err
	}
	rs := &testbed.Standalone{Log: func(string, ...any) {}}
	env, err := e2e.NewEnv(rs, e2e.Options{Bed: bed, Bin: bin, Dir: dir, BPFFS: pinDir, Mode: "enforce", PollInterval: time.Second})
	if err != nil {
		rs.Close()
		return nil, nil, nil, err
	}
	d, err := env.Start(ctx)
	if err != nil {
		rs.Close()
		return nil, nil, nil, err
	}
	return env, d, func() { d.Kill(); rs.Close() }, nil
}

// cpuPhase: idle baseline, then the paced random-source flood.
func cpuPhase(ctx context.Context, bed *testbed.Bed, bin, dir string, o options, tck float64, sm *sample) error {
	env, d, stop, err := startDaemon(ctx, bed, bin, dir)
	if err != nil {
		return err
	}
	defer stop()
	if err := sleep(ctx, 3*time.Second); err != nil { // start-up: first full scan, protected peers
		return err
	}
	kern, err := env.Kernel()
	if err != nil {
		return err
	}
	defer kern.Close()

	c0, err := cpuTicks(d.PID)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := sleep(ctx, o.idle); err != nil {
		return err
	}
	c1, err := cpuTicks(d.PID)
	if err != nil {
		return err
	}
	sm.idleCPU = 100 * (c1 - c0) / tck / time.Since(t0).Seconds()

	var snds []*sender
	defer func() {
		for _, s := range snds {
			s.Close()
		}
	}()
	for i := 0; i < o.senders; i++ {
		snd, err := newSender(bed.Host("atk"), bed.Server, 80, bed.Config.Prefix4())
		if err != nil {
			return err
		}
		snd.rng += uint64(i) * 0x9e3779b97f4a7c15
		snds = append(snds, snd)
	}
	k0, err := kern.Counters()
	if err != nil {
		return err
	}
	if c0, err = cpuTicks(d.PID); err != nil {
		return err
	}
	t0 = time.Now()
	type res struct {
		sent int
		took time.Duration
		err  error
	}
	rc := make(chan res, len(snds))
	per := int(o.rate * o.window.Seconds() / float64(len(snds)))
	for _, s := range snds {
		go func() {
			n, took, err := s.flood(ctx, per, o.rate/float64(len(snds)))
			rc <- res{n, took, err}
		}()
	}
	var took time.Duration
	for range snds {
		r := <-rc
		if r.err != nil {
			return r.err
		}
		sm.sent += r.sent
		took = max(took, r.took)
	}
	if c1, err = cpuTicks(d.PID); err != nil {
		return err
	}
	wall := time.Since(t0).Seconds()
	sm.floodFrom, sm.floodTo = t0, time.Now()
	k1, err := kern.Counters()
	if err != nil {
		return err
	}
	sm.floodCPU = 100 * (c1 - c0) / tck / wall
	sm.sendRate = float64(sm.sent) / took.Seconds()
	sm.xdpRate = float64(k1.SYN-k0.SYN) / wall
	if d.Exited() {
		return fmt.Errorf("daemon exited during the flood:\n%s", d.Output())
	}
	sm.cpuSlowPolls, sm.cpuLog = warnings(d.Output())
	return nil
}

// memPhase: fill the per-source map with distinct sources that pass the
// daemon's scan bar, wait for a full scan, read the daemon's memory.
func memPhase(ctx context.Context, bed *testbed.Bed, bin, dir string, o options, sm *sample) error {
	env, d, stop, err := startDaemon(ctx, bed, bin, dir)
	if err != nil {
		return err
	}
	defer stop()
	if err := sleep(ctx, 2*time.Second); err != nil {
		return err
	}
	t0 := time.Now()
	if err := fill(filepath.Join(pinDir, bed.Server.Iface), bed.Server.Addr4, o.sources, o.syns); err != nil {
		return err
	}
	sm.fillTook = time.Since(t0)
	fillEnd := time.Now()
	m0, err := env.Metrics(ctx)
	if err != nil {
		return err
	}
	// Wait for a full scan to end after the fill. (Waiting for one to start
	// after it could take minutes: the daemon stretches the interval when
	// scans are expensive.) The scans' snapshot sizes are reported.
	sm.scanWait = -1
	for deadline := time.Now().Add(o.scanWait); time.Now().Before(deadline); {
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
		m, err := env.Metrics(ctx)
		if err != nil {
			return err
		}
		if m["synguard_full_scans_total"]-m0["synguard_full_scans_total"] >= 1 {
			sm.scanWait = time.Since(fillEnd)
			break
		}
	}
	kern, err := env.Kernel()
	if err != nil {
		return err
	}
	srcs, err := kern.Sources()
	kern.Close()
	if err != nil {
		return err
	}
	sm.entries = len(srcs)
	if sm.rss, sm.hwm, err = memory(d.PID); err != nil {
		return err
	}
	// Where the memory is, per the daemon's own Go runtime metrics.
	if m, err := env.Metrics(ctx); err == nil {
		sm.heapInuse = m["go_memstats_heap_inuse_bytes"] / (1 << 20)
		sm.heapHeld = (m["go_memstats_heap_idle_bytes"] - m["go_memstats_heap_released_bytes"]) / (1 << 20)
	}
	// Does the detector hold figures for the sources in the map? Ask it
	// about a spread-out sample through `synguard explain`.
	for i := 0; i < len(srcs) && sm.sampled < 20; i += max(len(srcs)/20, 1) {
		ex, err := env.Explain(ctx, srcs[i].Addr.Unmap().String())
		if err != nil {
			return err
		}
		var det struct {
			Tracked bool `json:"tracked"`
		}
		if b, err := json.Marshal(ex.Details); err == nil {
			_ = json.Unmarshal(b, &det)
		}
		sm.sampled++
		if det.Tracked {
			sm.tracked++
		}
	}
	srcs = nil
	t0 = time.Now()
	r, err := env.CLI(ctx, "top", "--once", "-n", "5")
	if err != nil {
		return err
	}
	sm.topTook = time.Since(t0)
	if r.Code != 0 {
		sm.topErr = fmt.Sprintf("exit %d after %v: %s", r.Code, sm.topTook.Round(time.Millisecond), strings.TrimSpace(string(r.Stderr)))
	}
	if sm.rssTop, sm.hwmTop, err = memory(d.PID); err != nil {
		return err
	}
	if d.Exited() {
		return fmt.Errorf("daemon exited:\n%s", d.Output())
	}
	_, sm.memLog = warnings(d.Output())
	for _, m := range scanSources.FindAllStringSubmatch(d.Output(), -1) {
		n, _ := strconv.Atoi(m[1])
		sm.scanned = max(sm.scanned, n)
	}
	return nil
}

// scanSources finds the snapshot size of a slow full-scan poll in the
// daemon's log.
var scanSources = regexp.MustCompile(`sources=(\d+) full_scan=true`)

// warnings counts "slow poll" lines and collects WARN/ERROR lines (but
// incident openings, which are expected here) of a daemon log.
func warnings(out string) (slow int, lines string) {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "slow poll") {
			slow++
		}
		if (strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR")) && !strings.Contains(l, "incident opened") {
			lines += "       " + l + "\n"
		}
	}
	return slow, lines
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
