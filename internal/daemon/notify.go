package daemon

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// Notify sends one sd_notify message ("READY=1", "STATUS=...",
// "STOPPING=1") to the socket named by $NOTIFY_SOCKET, as systemd expects
// from a Type=notify service. Without $NOTIFY_SOCKET (not under systemd) it
// does nothing and returns false.
func Notify(state string) (bool, error) {
	return NotifySocket(os.Getenv("NOTIFY_SOCKET"), state)
}

// NotifySocket sends state to the datagram socket at path; a leading '@'
// names a socket in the abstract namespace.
func NotifySocket(path, state string) (bool, error) {
	if path == "" {
		return false, nil
	}
	if path[0] != '/' && path[0] != '@' {
		return false, fmt.Errorf("NOTIFY_SOCKET %q: want an absolute path or @abstract name", path)
	}
	name := path
	if strings.HasPrefix(name, "@") {
		name = "\x00" + name[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("sd_notify %s: %w", path, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("sd_notify %s: %w", path, err)
	}
	return true, nil
}
