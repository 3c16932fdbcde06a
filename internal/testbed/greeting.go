package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// Greeting is what ServeGreeting writes to every connection.
const Greeting = "ok\n"

// ServeGreeting listens on TCP port in the namespace, writes Greeting to
// every connection and closes it. A client that reads the greeting proves
// the listener itself answered: with SYN cookies answered from XDP, a
// completed handshake alone proves nothing. stop closes the listener and
// waits for the accept loop to end.
func (n *NS) ServeGreeting(port uint16) (stop func(), err error) {
	l, err := n.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, Greeting)
			c.Close()
		}
	}()
	return func() { l.Close(); <-done }, nil
}

// DialGreeting makes one new IPv4 connection from the namespace to `to` and
// reports whether ServeGreeting's greeting arrived within timeout; when it
// did not, why says where and how it failed ("dial: timeout", "read: eof").
func (n *NS) DialGreeting(to netip.AddrPort, timeout time.Duration) (ok bool, why string) {
	deadline := time.Now().Add(timeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	c, err := n.DialContext(ctx, "tcp4", to.String())
	if err != nil {
		return false, "dial: " + failure(err)
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	buf := make([]byte, len(Greeting))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != Greeting {
		return false, "read: " + failure(err)
	}
	return true, ""
}

// failure names a connection failure in a word, so tallies of many
// attempts stay short.
func failure(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return "bad greeting"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	}
	return err.Error()
}
