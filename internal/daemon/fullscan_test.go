package daemon

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/api"
)

// walkPlane streams a fakePlane's sources in batches of 3, as
// BPFPlane.WalkSources streams the kernel table; with hold set, the walk
// stops after its first batch until hold is closed (held is closed then).
type walkPlane struct {
	*fakePlane
	batches    int
	hold, held chan struct{}
}

func (p *walkPlane) WalkSources(fn func([]api.Source) error) error {
	all, err := p.fakePlane.Sources()
	if err != nil {
		return err
	}
	slices.SortFunc(all, func(a, b api.Source) int { return a.Addr.Compare(b.Addr) })
	buf := make([]api.Source, 0, 3)
	for i := 0; i < len(all); i += 3 {
		buf = append(buf[:0], all[i:min(i+3, len(all))]...)
		if err := fn(buf); err != nil {
			return err
		}
		clear(buf) // the daemon must not keep a batch
		p.batches++
		if i == 0 && p.hold != nil {
			close(p.held)
			<-p.hold
		}
	}
	return nil
}

// A full scan streams the plane's sources into the detector batch by batch
// (never Sources as one slice), every source that moved reaches the
// detector with its counters, and between batches the daemon's lock is
// free: an early warning bans and the API answers while the walk is held
// in the middle of the table.
func TestFullScanStreamsBatches(t *testing.T) {
	h := newHarness(t, "enforce")
	wp := &walkPlane{fakePlane: h.plane}
	d, err := New(Deps{Config: h.cfg, Plane: wp, NewEngine: NewDetector, Alerts: h.rec, Store: h.store,
		Clock: h.clk.now, Metrics: NewMetrics("test"), Host: "test", Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	h.d = d
	var srcs []netip.Addr
	for i := range 50 {
		srcs = append(srcs, netip.AddrFrom4([4]byte{100, 64, 0, byte(i)}))
	}
	traffic := func() {
		for _, a := range srcs {
			h.plane.send(a, 10, 30)
		}
	}
	traffic()
	h.second(0) // first poll: a full scan (the detector's baseline)
	for range 2 {
		h.clk.step(10 * time.Second)
		traffic()
		d.mu.Lock()
		d.fullNext = true
		d.mu.Unlock()
		d.Poll(h.clk.now())
	}
	if wp.batches < 3*len(srcs)/3 {
		t.Errorf("%d batches over three scans of %d sources: the scan did not stream", wp.batches, len(srcs))
	}
	d.mu.Lock()
	for _, a := range srcs {
		if ex := d.engine.Explain(a); !ex.Tracked || ex.SYN != 30 || ex.ACK != 90 {
			t.Errorf("%v after three scans: tracked %v, SYN %d, ACK %d; want true, 30, 90", a, ex.Tracked, ex.SYN, ex.ACK)
		}
	}
	d.mu.Unlock()

	// Hold the next scan after its first batch.
	wp.hold, wp.held = make(chan struct{}), make(chan struct{})
	h.clk.step(10 * time.Second)
	traffic()
	d.mu.Lock()
	d.fullNext = true
	d.mu.Unlock()
	done := make(chan struct{})
	go func() { d.Poll(h.clk.now()); close(done) }()
	select {
	case <-wp.held:
	case <-time.After(5 * time.Second):
		t.Fatal("the full scan did not start")
	}
	// 100k SYNs without an ACK since the last complete snapshot (20 s).
	handled := make(chan struct{})
	go func() {
		d.HandleSuspect(Suspect{Addr: attacker, SYNs: 100_000, Time: h.clk.step(300 * time.Millisecond)})
		close(handled)
	}()
	select {
	case <-handled:
	case <-time.After(5 * time.Second):
		close(wp.hold)
		t.Fatal("early warning blocked by a held full scan: the scan holds the daemon's lock")
	}
	if _, ok := h.plane.ban("203.0.113.66/32"); !ok {
		t.Error("early warning during a held full scan did not ban")
	}
	if st, err := d.Status(context.Background()); err != nil || st.Bans != 1 {
		t.Errorf("status during a held full scan: %+v, %v", st, err)
	}
	close(wp.hold)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the held full scan did not finish")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, a := range srcs {
		if ex := d.engine.Explain(a); ex.SYN != 40 {
			t.Errorf("%v after the held scan: SYN %d, want 40", a, ex.SYN)
		}
	}
	if d.lastFull.IsZero() || d.fullNext {
		t.Error("a finished full scan is not recorded as done")
	}
}

// top ranks while streaming, holding 2k rows at most: the k rows it returns
// are exactly the first k of ranking every source at once.
func TestTopScanMatchesFullRanking(t *testing.T) {
	h := newHarness(t, "enforce")
	wp := &walkPlane{fakePlane: h.plane}
	h.d.deps.Plane = wp
	for i := range 500 {
		a := netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)})
		h.plane.send(a, uint64(i*7919%251), uint64(i%13))
	}
	h.clk.step(3 * time.Second)
	const k = 10
	got, err := h.d.topScan(k)
	if err != nil {
		t.Fatal(err)
	}
	all, _ := h.plane.Sources()
	var want []api.SourceRow
	for _, s := range all {
		r := api.SourceRow{Addr: s.Addr, SYN: s.SYN, ACK: s.ACK, RST: s.RST, HalfOpenShare: halfOpen(s.SYN, s.ACK), LastSeen: s.LastSeen}
		if life := s.LastSeen.Sub(s.FirstSeen).Seconds(); life > 1 {
			r.SYNPerSecond = float64(s.SYN) / life
		} else {
			r.SYNPerSecond = float64(s.SYN)
		}
		want = append(want, r)
	}
	sortRows(want)
	if !slices.Equal(got, want[:k]) {
		t.Errorf("top %d while streaming:\n%v\nranking all at once:\n%v", k, got, want[:k])
	}
	if wp.batches < 100 {
		t.Errorf("top read %d batches of 500 sources: it did not stream", wp.batches)
	}
}

// Several `top` users share one scan, also when the table has fewer busy
// sources than they ask for.
func TestTopSharesOneScan(t *testing.T) {
	h := newHarness(t, "enforce")
	h.plane.send(attacker, 500, 0)
	h.clk.step(time.Second)
	before := h.plane.fullReads
	for range 5 {
		rows, err := h.d.Top(context.Background(), 20)
		if err != nil || len(rows) != 1 || rows[0].Addr != attacker {
			t.Fatalf("top: %+v %v, want the one source", rows, err)
		}
	}
	if n := h.plane.fullReads - before; n != 1 {
		t.Errorf("5 calls of Top(20) within a second read the table %d times, want 1", n)
	}
}
