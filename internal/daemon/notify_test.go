package daemon

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

func listenGram(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readGram(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no sd_notify datagram: %v", err)
	}
	return string(buf[:n])
}

func TestNotifyPathSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	c := listenGram(t, path)
	sent, err := NotifySocket(path, "READY=1\nSTATUS=observe mode")
	if err != nil || !sent {
		t.Fatalf("NotifySocket = %v, %v", sent, err)
	}
	if got := readGram(t, c); got != "READY=1\nSTATUS=observe mode" {
		t.Errorf("datagram %q", got)
	}
}

func TestNotifyAbstractSocket(t *testing.T) {
	name := "sgd-notify-test-" + time.Now().Format("150405.000000000")
	c := listenGram(t, "\x00"+name)
	if sent, err := NotifySocket("@"+name, "STOPPING=1"); err != nil || !sent {
		t.Fatalf("NotifySocket(@%s) = %v, %v", name, sent, err)
	}
	if got := readGram(t, c); got != "STOPPING=1" {
		t.Errorf("datagram %q", got)
	}
}

func TestNotifyWithoutSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := Notify("READY=1"); sent || err != nil {
		t.Errorf("Notify without NOTIFY_SOCKET = %v, %v; want a silent no-op", sent, err)
	}
	if _, err := NotifySocket("relative", "READY=1"); err == nil {
		t.Error("relative NOTIFY_SOCKET accepted")
	}
}
