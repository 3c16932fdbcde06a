package daemon

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"testing"

	"github.com/vishvananda/netns"
)

func TestSSHPeersProtected(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			c.Read(make([]byte, 1))
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := HostProtected(false, []int{port})()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(got, netip.MustParsePrefix("127.0.0.1/32")) {
		t.Errorf("peers of port %d = %v, want 127.0.0.1/32 (an established session)", port, got)
	}
	other, _ := HostProtected(false, []int{port + 1})()
	if slices.Contains(other, netip.MustParsePrefix("127.0.0.1/32")) && port+1 != 22 {
		t.Errorf("peers of port %d include a session to port %d", port+1, port)
	}
}

func TestDefaultGatewaysProtected(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	const ns = "sgd-gw"
	exec.Command("ip", "netns", "del", ns).Run()
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	for _, args := range [][]string{
		{"netns", "add", ns},
		{"-n", ns, "link", "add", "sgd-g0", "type", "veth", "peer", "name", "sgd-g1"},
		{"-n", ns, "addr", "add", "10.200.30.1/24", "dev", "sgd-g0"},
		{"-n", ns, "link", "set", "sgd-g0", "up"},
		{"-n", ns, "link", "set", "sgd-g1", "up"},
		{"-n", ns, "route", "add", "default", "via", "10.200.30.254"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	type res struct {
		p   []netip.Prefix
		err error
	}
	ch := make(chan res)
	go func() {
		// This thread switches namespace and is never unlocked, so the
		// runtime discards it afterwards.
		runtime.LockOSThread()
		h, err := netns.GetFromName(ns)
		if err != nil {
			ch <- res{err: err}
			return
		}
		if err := netns.Set(h); err != nil {
			ch <- res{err: err}
			return
		}
		p, err := HostProtected(true, nil)()
		ch <- res{p, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !slices.Equal(r.p, []netip.Prefix{netip.MustParsePrefix("10.200.30.254/32")}) {
		t.Errorf("protected in %s = %v, want the default gateway 10.200.30.254/32", ns, r.p)
	}
}
