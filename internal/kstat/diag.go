package kstat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/detector"
)

// TCP states as inet_diag numbers them (include/net/tcp_states.h).
const (
	tcpEstablished = 1
	tcpListen      = 10
)

// Sizes of the inet_diag structures (include/uapi/linux/inet_diag.h).
const (
	sizeofSockID  = 48
	sizeofReqV2   = 8 + sizeofSockID
	sizeofDiagMsg = 4 + sizeofSockID + 20
)

// Socket is one TCP socket as sock_diag reports it.
type Socket struct {
	Local, Remote netip.AddrPort
	State         uint8
	// RQueue and WQueue are, for a LISTEN socket, the accept queue length
	// and the listen() backlog; otherwise the bytes queued.
	RQueue, WQueue uint32
}

// Listeners returns the accept-queue state of every LISTEN TCP socket
// (IPv4 and IPv6) of the calling thread's network namespace.
func Listeners() ([]detector.Listener, error) {
	var r []detector.Listener
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := Sockets(fam, 1<<tcpListen)
		if err != nil {
			return nil, err
		}
		for _, s := range socks {
			r = append(r, detector.Listener{Addr: s.Local, Backlog: s.RQueue, MaxBacklog: s.WQueue})
		}
	}
	slices.SortFunc(r, func(a, b detector.Listener) int { return a.Addr.Compare(b.Addr) })
	return r, nil
}

// EstablishedPeers returns the remote addresses of ESTABLISHED TCP
// connections to the given local ports: the peers of management (SSH)
// sessions, which the detector must never ban.
func EstablishedPeers(ports []uint16) ([]netip.Addr, error) {
	seen := map[netip.Addr]bool{}
	var r []netip.Addr
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := Sockets(fam, 1<<tcpEstablished)
		if err != nil {
			return nil, err
		}
		for _, s := range socks {
			a := s.Remote.Addr().Unmap()
			if slices.Contains(ports, s.Local.Port()) && !seen[a] {
				seen[a] = true
				r = append(r, a)
			}
		}
	}
	slices.SortFunc(r, func(a, b netip.Addr) int { return a.Compare(b) })
	return r, nil
}

// Sockets dumps the TCP sockets of one family whose state is in the
// bitmask states (1<<state), through NETLINK_SOCK_DIAG; the kernel filters
// the states, so a server with a million connections costs nothing when
// only listeners are asked for.
func Sockets(family uint8, states uint32) ([]Socket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag: open netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag: bind: %w", err)
	}

	req := make([]byte, unix.SizeofNlMsghdr+sizeofReqV2)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1) // sequence
	b := req[unix.SizeofNlMsghdr:]
	b[0], b[1] = family, unix.IPPROTO_TCP
	ne.PutUint32(b[4:], states)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag: send dump request: %w", err)
	}

	var out []Socket
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return nil, fmt.Errorf("sock_diag: receive: %w", err)
		}
		msgs, err := parseMessages(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			switch m.typ {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.data) >= 4 {
					if errno := int32(ne.Uint32(m.data)); errno != 0 {
						return nil, fmt.Errorf("sock_diag: dump family %d: %w", family, unix.Errno(-errno))
					}
				}
				return out, nil
			case unix.SOCK_DIAG_BY_FAMILY:
				s, err := parseDiagMsg(m.data)
				if err != nil {
					return nil, err
				}
				out = append(out, s)
			}
		}
	}
}

type nlmsg struct {
	typ  uint16
	data []byte
}

func parseMessages(b []byte) ([]nlmsg, error) {
	var r []nlmsg
	ne := binary.NativeEndian
	for len(b) >= unix.SizeofNlMsghdr {
		l := int(ne.Uint32(b))
		if l < unix.SizeofNlMsghdr || l > len(b) {
			return nil, fmt.Errorf("sock_diag: netlink message of %d bytes in a %d-byte buffer", l, len(b))
		}
		r = append(r, nlmsg{typ: ne.Uint16(b[4:]), data: b[unix.SizeofNlMsghdr:l]})
		l = (l + 3) &^ 3
		if l > len(b) {
			break
		}
		b = b[l:]
	}
	return r, nil
}

// parseDiagMsg decodes struct inet_diag_msg. Ports and addresses are in
// network byte order, the queue lengths in host order.
func parseDiagMsg(b []byte) (Socket, error) {
	if len(b) < sizeofDiagMsg {
		return Socket{}, fmt.Errorf("sock_diag: inet_diag_msg of %d bytes, want %d", len(b), sizeofDiagMsg)
	}
	family, state := b[0], b[1]
	id := b[4 : 4+sizeofSockID]
	sport := binary.BigEndian.Uint16(id[0:])
	dport := binary.BigEndian.Uint16(id[2:])
	var src, dst netip.Addr
	if family == unix.AF_INET {
		src = netip.AddrFrom4([4]byte(id[4:8]))
		dst = netip.AddrFrom4([4]byte(id[20:24]))
	} else {
		src = netip.AddrFrom16([16]byte(id[4:20])).Unmap()
		dst = netip.AddrFrom16([16]byte(id[20:36])).Unmap()
	}
	rest := b[4+sizeofSockID:]
	ne := binary.NativeEndian
	return Socket{
		Local:  netip.AddrPortFrom(src, sport),
		Remote: netip.AddrPortFrom(dst, dport),
		State:  state,
		RQueue: ne.Uint32(rest[4:]),
		WQueue: ne.Uint32(rest[8:]),
	}, nil
}
