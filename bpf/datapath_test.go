package bpf

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/synguard/synguard/internal/frame"
)

// XDP attach modes as netlink reports them (IFLA_XDP_ATTACHED).
const (
	xdpAttachedDrv = 1
	xdpAttachedSKB = 2
)

// Names for live pieces of these tests: our prefix sgdp.
const (
	testNetns = "sgdp-dp"
	testVethA = "sgdp0a"
	testVethB = "sgdp0b"
)

// withVeth runs fn on an OS thread switched into a fresh network namespace
// (sgdp-dp) holding an up veth pair sgdp0a/sgdp0b, and deletes the
// namespace afterwards (leftovers of a killed run are removed first). XDP
// attach and interface lookups inside fn resolve in that namespace. fn
// must report with t.Errorf, not t.Fatal (it is not the test goroutine).
func withVeth(t *testing.T, fn func()) {
	t.Helper()
	requireRoot(t)
	_ = netns.DeleteNamed(testNetns)
	t.Cleanup(func() { _ = netns.DeleteNamed(testNetns) })

	done := make(chan struct{})
	go func() {
		defer close(done)
		// Never unlocked: the thread exits with the goroutine, so no other
		// goroutine ever runs in the test namespace.
		runtime.LockOSThread()
		ns, err := netns.NewNamed(testNetns)
		if err != nil {
			t.Errorf("create netns %s: %v", testNetns, err)
			return
		}
		defer ns.Close()
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: testVethA}, PeerName: testVethB}
		if err := netlink.LinkAdd(veth); err != nil {
			t.Errorf("create veth %s/%s: %v", testVethA, testVethB, err)
			return
		}
		for _, name := range []string{testVethA, testVethB} {
			l, err := netlink.LinkByName(name)
			if err == nil {
				err = netlink.LinkSetUp(l)
			}
			if err != nil {
				t.Errorf("set %s up: %v", name, err)
				return
			}
		}
		fn()
	}()
	<-done
}

// xdpState reports the XDP program id and attach mode netlink sees on name
// (in the calling thread's namespace).
func xdpState(name string) (progID uint32, mode uint32, err error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0, 0, err
	}
	x := l.Attrs().Xdp
	if x == nil || !x.Attached {
		return 0, 0, nil
	}
	return x.ProgId, x.AttachMode, nil
}

func progID(d *Datapath) uint32 {
	info, err := d.program().Info()
	if err != nil {
		return 0
	}
	id, _ := info.ID()
	return uint32(id)
}

func testOptions(dir string) Options {
	return Options{PinDir: dir, MaxSources: testMaxSources, MaxServices: testMaxServices,
		MaxBans: testMaxBans, MaxAllows: testMaxAllows}
}

// Protection and bans outlive the process: a fresh Datapath on the same
// PinDir re-opens the maps and the link and swaps its program in.
func TestPinAndReopen(t *testing.T) {
	dir := testPinDir(t)
	withVeth(t, func() {
		d1, err := Load(testOptions(dir))
		if err != nil {
			t.Errorf("load: %v", err)
			return
		}
		mode, err := d1.Attach(testVethA, AttachAuto)
		if err != nil || mode != AttachNative {
			t.Errorf("attach auto: %v %v, want native (veth supports it)", mode, err)
			d1.Close()
			return
		}
		if err := d1.SetMode(ModeEnforce); err != nil {
			t.Errorf("set mode: %v", err)
		}
		ban := mustPrefix("10.200.10.0/25")
		if err := d1.Block(ban, time.Hour); err != nil {
			t.Errorf("block: %v", err)
		}
		if err := d1.Allow(mustPrefix("10.200.10.100/32")); err != nil {
			t.Errorf("allow: %v", err)
		}
		for i := 0; i < 4; i++ {
			if a := runFrame(t, d1, frame.SYN(cli4, srv4)); a != xdpDrop {
				t.Errorf("d1 banned syn: %v", a)
			}
		}
		runFrame(t, d1, frame.SYN(netip.MustParseAddrPort("10.200.10.200:1"), srv4))
		before := counters(t, d1)
		firstID := progID(d1)
		if err := d1.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if id, m, err := xdpState(testVethA); err != nil || id != firstID || m != xdpAttachedDrv {
			t.Errorf("after close: prog %d mode %d err %v, want prog %d native: the pinned link keeps it attached", id, m, err, firstID)
		}

		d2, err := Load(testOptions(dir))
		if err != nil {
			t.Errorf("reload: %v", err)
			return
		}
		defer d2.Close()
		if iface, m, ok := d2.Attached(); !ok || iface != testVethA || m != AttachNative {
			t.Errorf("reopened attachment %q %q %v, want %s native", iface, m, ok, testVethA)
		}
		if id, _, _ := xdpState(testVethA); id != progID(d2) || id == firstID {
			t.Errorf("attached prog %d, want the new program %d (link.Update)", id, progID(d2))
		}
		if m, _ := d2.Mode(); m != ModeEnforce {
			t.Errorf("mode %v, want enforce kept in the pinned config", m)
		}
		bans, err := d2.Bans()
		if err != nil || len(bans) != 1 || bans[0].Prefix != ban || bans[0].Dropped != 4 {
			t.Errorf("bans %+v err %v, want %v with 4 drops", bans, err, ban)
		}
		if allows, _ := d2.Allows(); len(allows) != 1 {
			t.Errorf("allows %v", allows)
		}
		// The veth may carry the stack's own IPv6 chatter (NonTCP), so
		// compare the TCP side only.
		if c := counters(t, d2); c.SYN != before.SYN || c.Dropped != before.Dropped || c.Frames < before.Frames {
			t.Errorf("counters %+v, want the pinned %+v", c, before)
		}
		if s, ok, _ := d2.Source(netip.MustParseAddr("10.200.10.200")); !ok || s.SYN != 1 {
			t.Errorf("pinned source entry %+v ok=%v", s, ok)
		}
		// The new program uses the pinned maps, verdict cache included.
		if a := runFrame(t, d2, frame.SYN(cli4, srv4)); a != xdpDrop {
			t.Errorf("d2 banned syn: %v", a)
		}
		if a := runFrame(t, d2, frame.SYN(netip.MustParseAddrPort("10.200.10.100:1"), srv4)); a != xdpPass {
			t.Errorf("d2 allowlisted syn: %v", a)
		}

		// Open (the CLI's way in) sees the attachment and swaps nothing.
		o, err := Open(dir)
		if err != nil {
			t.Errorf("open: %v", err)
		} else {
			if iface, m, ok := o.Attached(); !ok || iface != testVethA || m != AttachNative {
				t.Errorf("open: attachment %q %q %v", iface, m, ok)
			}
			if id, _, _ := xdpState(testVethA); id != progID(d2) {
				t.Errorf("open replaced the program: attached %d, want %d", id, progID(d2))
			}
			o.Close()
		}

		// Same interface again is a no-op; another one needs Detach first.
		if m, err := d2.Attach(testVethA, AttachAuto); err != nil || m != AttachNative {
			t.Errorf("re-attach same iface: %v %v", m, err)
		}
		if _, err := d2.Attach(testVethB, AttachAuto); err == nil || !strings.Contains(err.Error(), "detach first") {
			t.Errorf("attach to a second iface: %v, want 'detach first'", err)
		}
		if err := d2.Detach(); err != nil {
			t.Errorf("detach: %v", err)
		}
		if id, _, _ := xdpState(testVethA); id != 0 {
			t.Errorf("after detach prog %d still attached", id)
		}
		if _, err := os.Stat(filepath.Join(dir, linkPinName)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("link pin after detach: %v", err)
		}
		if _, _, ok := d2.Attached(); ok {
			t.Error("Attached() after detach")
		}

		// Generic mode, recorded and re-opened as generic.
		if m, err := d2.Attach(testVethB, AttachGeneric); err != nil || m != AttachGeneric {
			t.Errorf("attach generic: %v %v", m, err)
		}
		if _, m, _ := xdpState(testVethB); m != xdpAttachedSKB {
			t.Errorf("netlink attach mode %d, want skb (%d)", m, xdpAttachedSKB)
		}
		d3, err := Load(testOptions(dir))
		if err != nil {
			t.Errorf("load 3: %v", err)
			return
		}
		if iface, m, ok := d3.Attached(); !ok || iface != testVethB || m != AttachGeneric {
			t.Errorf("d3 attachment %q %q %v, want %s generic", iface, m, ok, testVethB)
		}
		d3.Close()
		if err := Remove(dir); err != nil {
			t.Errorf("remove: %v", err)
		}
		if id, _, _ := xdpState(testVethB); id != 0 {
			t.Errorf("after Remove prog %d still attached", id)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pin dir after Remove: %v", err)
		}
	})
}

// A pinned link whose interface disappeared is dropped on Load.
func TestReopenLinkOfDeletedInterface(t *testing.T) {
	dir := testPinDir(t)
	withVeth(t, func() {
		d, err := Load(testOptions(dir))
		if err != nil {
			t.Errorf("load: %v", err)
			return
		}
		if _, err := d.Attach(testVethA, AttachNative); err != nil {
			t.Errorf("attach: %v", err)
		}
		d.Close()
		l, err := netlink.LinkByName(testVethA)
		if err == nil {
			err = netlink.LinkDel(l)
		}
		if err != nil {
			t.Errorf("delete veth: %v", err)
			return
		}
		d, err = Load(testOptions(dir))
		if err != nil {
			t.Errorf("load after veth deleted: %v", err)
			return
		}
		defer d.Close()
		if _, _, ok := d.Attached(); ok {
			t.Error("attached to a deleted interface")
		}
		if !strings.Contains(strings.Join(d.Migrations(), "\n"), "gone") {
			t.Errorf("migrations %q, want a note about the dropped link", d.Migrations())
		}
	})
}

// Changing sizes against existing pins migrates bans and allows and
// recreates statistics; live bans that do not fit are refused, pins intact.
func TestMigrateOnResize(t *testing.T) {
	dir := testPinDir(t)
	opts := testOptions(dir)
	opts.MaxBans = 16
	d1, err := Load(opts)
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(d1.SetMode(ModeEnforce))
	must(d1.Block(mustPrefix("10.200.10.0/28"), time.Hour))
	must(d1.Block(mustPrefix("2001:db8:10::/64"), time.Hour))
	must(d1.Block(mustPrefix("10.200.10.64/26"), 200*time.Millisecond))
	must(d1.Allow(mustPrefix("10.200.10.5/32")))
	for i := 0; i < 3; i++ {
		runFrame(t, d1, frame.SYN(cli4, srv4))
		runFrame(t, d1, frame.SYN(cli6, srv6))
	}
	runFrame(t, d1, frame.SYN(cli6, srv6))
	all, err := d1.Bans()
	must(err)
	var want []Ban
	for _, b := range all {
		if b.Prefix != mustPrefix("10.200.10.64/26") {
			want = append(want, b)
		}
	}
	d1.Close()
	time.Sleep(250 * time.Millisecond) // the /26 expires: not migrated

	opts.MaxBans = 64
	opts.MaxAllows = 8
	opts.MaxSources = testMaxSources / 2
	d2, err := Load(opts)
	must(err)
	notes := strings.Join(d2.Migrations(), "\n")
	for _, w := range []string{"blocklist: migrated 2 live bans", "sources:", "recreated empty", "allowlist: migrated 1"} {
		if !strings.Contains(notes, w) {
			t.Errorf("migrations %q: missing %q", notes, w)
		}
	}
	got, err := d2.Bans()
	must(err)
	near := func(a, b time.Time) bool { return a.Sub(b).Abs() < 10*time.Millisecond }
	if len(got) != 2 || len(want) != 2 || got[0].Prefix != want[0].Prefix || got[0].Dropped != 3 || got[1].Prefix != want[1].Prefix ||
		got[1].Dropped != 4 || !near(got[0].Until, want[0].Until) || !near(got[1].Until, want[1].Until) {
		t.Errorf("migrated bans %+v, want %+v without the expired /26", got, want)
	}
	if m, _ := d2.Mode(); m != ModeEnforce {
		t.Errorf("mode %v after migration", m)
	}
	if a := runFrame(t, d2, frame.SYN(cli4, srv4)); a != xdpDrop {
		t.Errorf("migrated ban: %v, want DROP", a)
	}
	if a := runFrame(t, d2, frame.SYN(netip.MustParseAddrPort("10.200.10.5:1"), srv4)); a != xdpPass {
		t.Errorf("migrated allow: %v, want PASS", a)
	}
	if srcs, _ := d2.Sources(); len(srcs) != 2 {
		t.Errorf("sources after recreate: %d entries, want only the 2 seen since", len(srcs))
	}
	d2.Close()

	opts.MaxBans = 1
	if _, err := Load(opts); err == nil || !strings.Contains(err.Error(), "raise max bans") {
		t.Errorf("load with max bans 1 under 2 live bans: %v, want a 'raise max bans' error", err)
	}
	opts.MaxBans = 64
	d3, err := Load(opts)
	must(err)
	defer d3.Close()
	if bans, _ := d3.Bans(); len(bans) != 2 {
		t.Errorf("after refused migration: bans %+v, want both kept", bans)
	}
	if len(d3.Migrations()) != 0 {
		t.Errorf("nothing to migrate, got %q", d3.Migrations())
	}
}

// Bad arguments give errors that name the input and change nothing.
func TestBadArguments(t *testing.T) {
	d := loadForTest(t, Options{})
	if err := d.Block(mustPrefix("10.200.10.0/24"), time.Hour); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		call func() error
		want string
		is   error
	}{
		{"block invalid prefix", func() error { return d.Block(netip.Prefix{}, time.Hour) }, "invalid prefix", nil},
		{"block zero ttl", func() error { return d.Block(mustPrefix("10.200.10.1/32"), 0) }, "10.200.10.1/32: ttl 0s: must be positive", nil},
		{"block negative ttl", func() error { return d.Block(mustPrefix("10.200.10.1/32"), -time.Second) }, "must be positive", nil},
		{"unblock invalid", func() error { return d.Unblock(netip.Prefix{}) }, "invalid prefix", nil},
		{"unblock not blocked", func() error { return d.Unblock(mustPrefix("192.0.2.0/24")) }, "unblock 192.0.2.0/24", ErrNotFound},
		{"unblock inside a ban", func() error { return d.Unblock(mustPrefix("10.200.10.1/32")) }, "unblock 10.200.10.1/32", ErrNotFound},
		{"allow invalid", func() error { return d.Allow(netip.Prefix{}) }, "invalid prefix", nil},
		{"disallow not allowed", func() error { return d.Disallow(mustPrefix("2001:db8::/32")) }, "disallow 2001:db8::/32", ErrNotFound},
		{"set mode 7", func() error { return d.SetMode(7) }, "want observe (0) or enforce (1)", nil},
		{"attach unknown interface", func() error { _, err := d.Attach("sgdp-nosuch", AttachAuto); return err }, "sgdp-nosuch", nil},
		{"attach bad mode", func() error { _, err := d.Attach("lo", "turbo"); return err }, `attach mode "turbo": want auto, native or generic`, nil},
		{"pin dir not on bpffs", func() error { _, err := Load(Options{PinDir: "/tmp/sgdp-not-bpffs/x"}); return err }, "not on a bpf filesystem", nil},
		{"relative pin dir", func() error { _, err := Load(Options{PinDir: "sys/fs/bpf/x"}); return err }, "must be an absolute path", nil},
		{"huge max bans", func() error { _, err := Load(Options{MaxBans: 1 << 30}); return err }, "max bans 1073741824", nil},
		{"negative interval", func() error { _, err := Load(Options{SuspectInterval: -time.Second}); return err }, "suspect interval -1s", nil},
		{"parse mode", func() error { _, err := ParseMode("drop"); return err }, `mode "drop": want observe or enforce`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to contain %q", err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %q does not wrap %v", err, tt.is)
			}
		})
	}
	// Nothing changed.
	if bans, _ := d.Bans(); len(bans) != 1 || bans[0].Prefix != mustPrefix("10.200.10.0/24") {
		t.Errorf("bans %+v", bans)
	}
	if allows, _ := d.Allows(); len(allows) != 0 {
		t.Errorf("allows %v", allows)
	}
	if m, _ := d.Mode(); m != ModeObserve {
		t.Errorf("mode %v", m)
	}
	if _, err := os.Stat("/tmp/sgdp-not-bpffs"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused pin dir was created: %v", err)
	}
	if _, _, ok := d.Attached(); ok {
		t.Error("attached after failed attaches")
	}
	// Accepted at this layer (policy belongs to the CLI): /0 allows.
	if err := d.Allow(mustPrefix("0.0.0.0/0")); err != nil {
		t.Errorf("allow 0.0.0.0/0: %v", err)
	}
}

func TestBlocklistFull(t *testing.T) {
	d := loadForTest(t, Options{MaxBans: 4})
	for i := 0; i < 4; i++ {
		ttl := time.Hour
		if i == 0 {
			ttl = time.Second // long enough for the 5th Block below to find it live
		}
		if err := d.Block(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, 10, byte(i)}), 32), ttl); err != nil {
			t.Fatal(err)
		}
	}
	err := d.Block(mustPrefix("10.200.10.9/32"), time.Hour)
	if err == nil || !strings.Contains(err.Error(), "blocklist full") {
		t.Fatalf("5th ban in 4 slots: %v, want 'blocklist full'", err)
	}
	time.Sleep(1100 * time.Millisecond)
	// The expired ban's slot is reclaimed.
	if err := d.Block(mustPrefix("10.200.10.9/32"), time.Hour); err != nil {
		t.Fatalf("after one expired: %v", err)
	}
	if bans, _ := d.Bans(); len(bans) != 4 {
		t.Errorf("bans %+v, want 4", bans)
	}
}

// Sources walks more than one batch, and copes with the LRU changing under
// it: no error, no duplicate.
func TestSourcesBatchWalk(t *testing.T) {
	d := loadForTest(t, Options{MaxSources: 16384})
	const n = 10000 // > 2 batches of 4096
	addr := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0x10, 14: byte(i >> 8), 15: byte(i)}), 1000)
	}
	for i := 0; i < n; i++ {
		runFrame(t, d, frame.SYN(addr(i), srv6))
	}
	srcs, err := d.Sources()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]bool{}
	for _, s := range srcs {
		if seen[s.Addr] || s.SYN != 1 {
			t.Fatalf("entry %+v (duplicate=%v)", s, seen[s.Addr])
		}
		seen[s.Addr] = true
	}
	if len(seen) != n {
		t.Fatalf("%d sources, want %d", len(seen), n)
	}

	// Churn: a writer keeps inserting new sources (evicting old ones in a
	// smaller LRU) while we walk.
	small := loadForTest(t, Options{MaxSources: 4096})
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 1)
			if _, err := tryRunFrame(small, frame.SYN(a, srv4)); err != nil {
				t.Errorf("writer: %v", err)
				return
			}
		}
	}()
	deadline := time.Now().Add(time.Second)
	walks := 0
	for time.Now().Before(deadline) {
		srcs, err := small.Sources()
		if err != nil {
			t.Fatalf("walk %d under churn: %v", walks, err)
		}
		dup := map[netip.Addr]bool{}
		for _, s := range srcs {
			if dup[s.Addr] {
				t.Fatalf("walk %d: %v twice", walks, s.Addr)
			}
			dup[s.Addr] = true
		}
		if len(srcs) > 4096+256 {
			t.Fatalf("walk %d: %d entries in a 4096-entry LRU", walks, len(srcs))
		}
		walks++
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d walks under churn", walks)
}

func TestModeStrings(t *testing.T) {
	for _, m := range []Mode{ModeObserve, ModeEnforce} {
		p, err := ParseMode(strings.ToUpper(m.String()))
		if err != nil || p != m {
			t.Errorf("ParseMode(%q) = %v, %v", m, p, err)
		}
	}
	for in, want := range map[string]AttachMode{"": AttachAuto, "auto": AttachAuto, "Native": AttachNative, "generic": AttachGeneric} {
		if got, err := ParseAttachMode(in); err != nil || got != want {
			t.Errorf("ParseAttachMode(%q) = %q, %v", in, got, err)
		}
	}
	if s := Mode(9).String(); s != "mode(9)" {
		t.Errorf("Mode(9) = %q", s)
	}
}

// Open shares the daemon's pinned state without loading a program.
func TestOpenPinned(t *testing.T) {
	dir := testPinDir(t)
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "nothing pinned") {
		t.Errorf("open before load: %v, want 'nothing pinned'", err)
	}
	d, err := Load(testOptions(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Block(mustPrefix("10.200.10.0/24"), time.Hour); err != nil {
		t.Fatal(err)
	}
	runFrame(t, d, frame.SYN(cli4, srv4))

	o, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if bans, _ := o.Bans(); len(bans) != 1 || bans[0].WouldDrop != 1 {
		t.Errorf("open: bans %+v", bans)
	}
	if c := counters(t, o); c.SYN != 1 || c.WouldDrop != 1 {
		t.Errorf("open: counters %+v", c)
	}
	// Steering through Open acts on the loaded program at once.
	if err := o.SetMode(ModeEnforce); err != nil {
		t.Fatal(err)
	}
	if err := o.Block(netip.PrefixFrom(cli6.Addr(), 128), time.Hour); err != nil {
		t.Fatal(err)
	}
	if a := runFrame(t, d, frame.SYN(cli6, srv6)); a != xdpDrop {
		t.Errorf("ban added through Open: %v, want DROP", a)
	}
	if _, err := o.Attach("lo", AttachAuto); err == nil || !strings.Contains(err.Error(), "use Load") {
		t.Errorf("attach from Open: %v", err)
	}
	if _, err := o.Suspects(); err == nil {
		t.Error("suspect events from Open")
	}
	if _, _, ok := o.Attached(); ok {
		t.Error("attached without a link")
	}
}
