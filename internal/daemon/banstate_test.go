package daemon

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
)

// Issue 12: bans have a single source of truth. After any sequence of
// block, unblock, allow, disallow, detector bans, expiry, reload and
// restart (clean or kill -9), these agree: the kernel's blocklist, the
// daemon's ban records, the detector, `list bans` and `explain`.
func TestPropertyBanStateAgreesEverywhere(t *testing.T) {
	pool := []netip.Addr{
		netip.MustParseAddr("203.0.113.66"), netip.MustParseAddr("203.0.113.67"), netip.MustParseAddr("203.0.113.200"),
		netip.MustParseAddr("198.51.100.20"), netip.MustParseAddr("192.0.2.9"),
	}
	prefixes := []netip.Prefix{
		netip.MustParsePrefix("203.0.113.66/32"), netip.MustParsePrefix("203.0.113.67/32"),
		netip.MustParsePrefix("203.0.113.64/30"), netip.MustParsePrefix("198.51.100.20/32"),
		netip.MustParsePrefix("192.0.2.0/24"),
	}
	for seed := range uint64(40) {
		r := rand.New(rand.NewPCG(seed, 99))
		h := newHarness(t, "enforce")
		var log []string
		for step := range 40 {
			var op string
			switch r.IntN(9) {
			case 0, 1:
				p := prefixes[r.IntN(len(prefixes))]
				ttl := time.Duration(1+r.IntN(600)) * time.Second
				_, err := h.d.Block(context.Background(), p, ttl, fmt.Sprintf("step %d", step))
				op = fmt.Sprintf("block %s %v: %v", p, ttl, errOK(err))
			case 2:
				p := prefixes[r.IntN(len(prefixes))]
				op = fmt.Sprintf("unblock %s: %v", p, errOK(h.d.Unblock(context.Background(), p)))
			case 3:
				p := prefixes[r.IntN(len(prefixes))]
				_, err := h.d.Allow(context.Background(), p)
				op = fmt.Sprintf("allow %s: %v", p, errOK(err))
			case 4:
				p := prefixes[r.IntN(len(prefixes))]
				op = fmt.Sprintf("disallow %s: %v", p, errOK(h.d.Disallow(context.Background(), p)))
			case 5, 6:
				a := pool[r.IntN(len(pool))]
				secs := 1 + r.IntN(3)
				for range secs {
					for range 10 {
						h.clk.step(100 * time.Millisecond)
						h.plane.send(a, 50, 0)
						h.drain()
					}
					h.d.Poll(h.clk.now())
				}
				op = fmt.Sprintf("flood from %s for %ds", a, secs)
			case 7:
				secs := 1 + r.IntN(200)
				for range secs {
					h.clk.step(time.Second)
					h.d.Poll(h.clk.now())
				}
				op = fmt.Sprintf("%ds quiet", secs)
			case 8:
				switch r.IntN(3) {
				case 0:
					// A changed detector key, so that the reload rebuilds the
					// detector from its State (an unchanged file keeps it).
					cfg := *h.cfg
					cfg.Detector.TopSources = 10 + step%2
					h.cfg = &cfg
					op = fmt.Sprintf("reload (top_sources %d): %v", cfg.Detector.TopSources, errOK(h.d.Reload(h.cfg)))
				case 1:
					h.d.Shutdown()
					h.clk.step(time.Duration(r.IntN(30)) * time.Second)
					h.start()
					op = "clean restart"
				default:
					h.clk.step(time.Duration(r.IntN(30)) * time.Second)
					h.start() // kill -9: no Shutdown
					op = "kill -9 and restart"
				}
			}
			log = append(log, op)
			h.clk.step(time.Second)
			h.d.Poll(h.clk.now())
			if why := banStateDisagreement(h, pool); why != "" {
				t.Fatalf("seed %d, after step %d: %s\nsteps:\n  %s", seed, step, why, strings.Join(log, "\n  "))
			}
		}
	}
}

// errOK prints an expected refusal (not found, conflict) as such and any
// other error in full.
func errOK(err error) string {
	var ae *api.Error
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &ae) && (ae.Code == 404 || ae.Code == 409):
		return fmt.Sprintf("refused (%d)", ae.Code)
	}
	return "ERROR " + err.Error()
}

// banStateDisagreement returns how the views of the bans disagree, or "".
func banStateDisagreement(h *harness, pool []netip.Addr) string {
	kernel, _ := h.plane.Bans()
	var inKernel []netip.Prefix
	for _, b := range kernel {
		inKernel = append(inKernel, b.Prefix)
	}
	listed, err := h.d.Bans(context.Background())
	if err != nil {
		return "list bans: " + err.Error()
	}
	var inList []netip.Prefix
	for _, b := range listed {
		inList = append(inList, b.Prefix)
	}
	sortPrefixes(inKernel)
	sortPrefixes(inList)
	if !slices.Equal(inKernel, inList) {
		return fmt.Sprintf("kernel blocklist %v, list bans %v", inKernel, inList)
	}
	h.d.mu.Lock()
	var records []netip.Prefix
	for p := range h.d.st.Bans {
		records = append(records, p)
	}
	ds := h.d.engine.State()
	h.d.mu.Unlock()
	sortPrefixes(records)
	if !slices.Equal(records, inKernel) {
		return fmt.Sprintf("daemon ban records %v, kernel %v", records, inKernel)
	}
	detectorBans := map[netip.Prefix]bool{}
	for _, b := range ds.Bans {
		detectorBans[b.Prefix] = true
		if !slices.Contains(inKernel, b.Prefix) {
			return fmt.Sprintf("the detector holds a ban on %s the kernel does not have (kernel %v)", b.Prefix, inKernel)
		}
	}
	for _, b := range listed {
		if b.Origin == api.OriginDetector && !detectorBans[b.Prefix] {
			return fmt.Sprintf("list bans shows detector ban %s the detector does not hold", b.Prefix)
		}
	}
	for _, a := range pool {
		ex, err := h.d.Explain(context.Background(), a)
		if err != nil {
			return "explain: " + err.Error()
		}
		covered := slices.ContainsFunc(inKernel, func(p netip.Prefix) bool { return p.Contains(a) })
		if (ex.Ban != nil) != covered {
			return fmt.Sprintf("explain %s: ban %+v, kernel bans %v", a, ex.Ban, inKernel)
		}
		if det, ok := ex.Details.(detector.Explanation); ok && det.Ban != nil && !slices.Contains(inKernel, det.Ban.Prefix) {
			return fmt.Sprintf("explain %s: the detector reports ban %s, not in the kernel %v", a, det.Ban.Prefix, inKernel)
		}
	}
	return ""
}

func sortPrefixes(ps []netip.Prefix) {
	slices.SortFunc(ps, func(a, b netip.Prefix) int { return a.Compare(b) })
}
